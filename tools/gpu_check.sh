#!/usr/bin/env bash
# One check of kdet on a device, in minutes, with a carried binary (no Rust toolchain, no
# network): writes OUTDIR/report.json and OUTDIR/report.md (rewritten after every stage, so a
# run cut short still leaves what it measured), each stage's output beside them.
#
#   tools/gpu_check.sh OUTDIR [--device cuda|cuda:N|cpu]      # default --device cuda
#
# Stages, quickest first:
#  1. the machine: nvidia-smi (when present), the binary's version and `ldd`;
#  2. `kdet bench check`: RoIAlign forward and backward and batched NMS on the device against
#     the CPU kernels, and the shipped teacher in f16 and bf16 against f32 (tolerances in
#     src/bench/check.rs);
#  3. the first STEPS (20) steps of the default job (configs/synth/frcnn_distill.json, seed 0)
#     on the CPU and on the device, total loss compared step by step: step 1 (same weights,
#     same batch: only rounding differs) within 1e-3 relative, every step within 5e-2 relative
#     (rounding differences grow as SGD goes on, and can flip a proposal or a sampled RoI);
#  4. `kdet bench row R --device D` beside `tools/bench_torch.py --row R --device D` for the
#     Faster R-CNN training step, the distillation step, the PAA step (its PyTorch side needs
#     mmdetection: an error row where it is missing), inference, and the RoIAlign and NMS
#     kernels (R50-FPN shapes), and the kdet / PyTorch ratio;
#  5. the default job on the device, its AP beside the CPU's (seed 0: student 0.6717, teacher
#     0.6851, docs/results.md): within 0.03 AP, about four standard deviations of the distilled
#     student over training seeds (0.008): another device's rounding is, for training, another
#     draw of the same seed.
# With --device cpu every stage runs on the CPU (the kernel and step comparisons then compare
# the CPU with itself, exactly), which tests this script's own logic on a machine without a GPU.
#
# Environment: KDET (the binary, or it gzipped as tools/build_cuda_binary.sh writes it, unpacked
# into a temporary folder; default target/cuda-target/kdet-cuda, then kdet-cuda.gz there, then
# target/release/kdet),
# PYTHON (one with torch and torchvision for stage 4; default python3), and to shorten a run:
# GPU_CHECK_STEPS (20), GPU_CHECK_ITERS (the default job's iterations; set, the AP is not
# compared with the CPU's), GPU_CHECK_RUNS (10) and GPU_CHECK_WARMUP (3) per benchmark row,
# GPU_CHECK_ROWS (space-separated rows), GPU_CHECK_SKIP (stages to leave out, e.g. "train").
# For --device cuda, folders holding the CUDA 13 libraries kdet loads (libcublas.so.13, …) are
# added to LD_LIBRARY_PATH when the loader does not find them: a CUDA toolkit's lib64 or the
# python's nvidia/*/lib (PyTorch's CUDA wheels).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
[ $# -ge 1 ] || { echo "usage: tools/gpu_check.sh OUTDIR [--device cuda|cuda:N|cpu]" >&2; exit 2; }
out=$1
shift
device=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:?--device needs a value}; shift 2 ;;
    --device=*) device=${1#--device=}; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -z "${KDET:-}" ]; then
  for KDET in target/cuda-target/kdet-cuda target/cuda-target/kdet-cuda.gz target/release/kdet; do
    [ -e "$KDET" ] && break
  done
fi
if [[ "$KDET" == *.gz ]] && [ -f "$KDET" ]; then
  unpacked=$(mktemp -d "${TMPDIR:-/tmp}/kdet-gpu-check.XXXXXX")
  trap 'rm -rf "$unpacked"' EXIT
  gzip -dc "$KDET" > "$unpacked/kdet" && chmod +x "$unpacked/kdet"
  KDET=$unpacked/kdet
fi
[ -x "$KDET" ] || { echo "no kdet binary at $KDET (set KDET)" >&2; exit 2; }
KDET=$(cd "$(dirname "$KDET")" && pwd)/$(basename "$KDET")
PYTHON=${PYTHON:-python3}
steps=${GPU_CHECK_STEPS:-20}
iters=${GPU_CHECK_ITERS:-}
runs=${GPU_CHECK_RUNS:-10}
warmup=${GPU_CHECK_WARMUP:-3}
rows=${GPU_CHECK_ROWS:-frcnn_step_synth_student distill_step_synth paa_step_synth_student infer_synth_student roi_align_fwd_bwd nms_batched}
skip=" ${GPU_CHECK_SKIP:-} "
start=$(date +%s)
cat > "$out/run.json" <<EOF
{"device": "$device", "kdet": "$KDET", "steps": $steps, "iters": "${iters}", "runs": $runs,
 "warmup": $warmup, "rows": "$rows", "started": "$(date -u +%FT%TZ)"}
EOF

# The CUDA libraries kdet opens with dlopen (src/device.rs CUDA_LIBRARIES): add the first
# folder that holds each missing one to LD_LIBRARY_PATH.
find_cuda_libraries() {
  local dirs=(/usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib
    /usr/lib/x86_64-linux-gnu /usr/lib64)
  local py
  py=$("$PYTHON" -c 'import nvidia, os; print("\n".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in sorted(os.listdir(p))))' 2>/dev/null) || true
  [ -n "$py" ] && mapfile -t -O "${#dirs[@]}" dirs <<< "$py"
  for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
    ldconfig -p 2>/dev/null | grep -q "$lib " && continue
    for d in "${dirs[@]}"; do
      if [ -e "$d/$lib" ]; then
        case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac
        break
      fi
    done
  done
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" > "$out/ld_library_path.txt"
}

# A config deriving from the default job: log every step, its own output_dir, maybe fewer
# iterations.
derived() { # NAME ITERATIONS
  local solver='"log_every": 1'
  [ -n "$2" ] && solver="$solver, \"iterations\": $2"
  cat > "$out/$1.json" <<EOF
{"base": "$root/configs/synth/frcnn_distill.json", "solver": {$solver}, "output_dir": "$out/$1"}
EOF
  echo "$out/$1.json"
}

# The report from what the stages left in OUTDIR (python3's standard library only).
report() { python3 - "$out" "$device" "$steps" "${iters}" "$(( $(date +%s) - start ))" <<'PY'
import json, os, sys
out, device, steps, iters, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
AP_CPU, TEACHER_CPU, AP_TOL = 0.6717, 0.6851, 0.03
STEP1_TOL, STEP_TOL = 1e-3, 5e-2
rep = {"device": device, "elapsed_s": elapsed, "stages": {}}
md = [f"# kdet device check: --device {device}", ""]

def read(name):
    p = os.path.join(out, name)
    return open(p).read() if os.path.exists(p) else None

def losses(run):
    p = os.path.join(out, run, "metrics.jsonl")
    if not os.path.exists(p):
        return {}
    got = {}
    for line in open(p):
        r = json.loads(line)
        if "loss" in r and r["iter"] <= steps:
            got[r["iter"]] = r["loss"]
    return got

def last(run, key):
    p = os.path.join(out, run, "metrics.jsonl")
    v = None
    if os.path.exists(p):
        for line in open(p):
            r = json.loads(line)
            if key in r:
                v = r[key]
    return v

smi = read("nvidia-smi.txt")
md += ["## Machine", "", "```", (smi or "nvidia-smi: not present").strip(), (read("version.txt") or "").strip(), "```", ""]
rep["nvidia_smi"] = smi

checks = read("checks.json")
if checks is not None:
    try:
        cs = json.loads(checks)
        rep["stages"]["kernels"] = {"checks": cs, "ok": all(c["ok"] or c["skipped"] for c in cs)}
        md += ["## Kernels and half-precision teacher: device against CPU", "", "| check | value | tolerance | measure | result |", "|---|---:|---:|---|---|"]
        for c in cs:
            res = f"skipped: {c['skipped']}" if c["skipped"] else ("ok" if c["ok"] else "**FAILED**")
            md.append(f"| {c['name']} | {c['value']:.3e} | {c['tolerance']:.1e} | {c['measure']} | {res} |")
        md.append("")
    except ValueError:
        rep["stages"]["kernels"] = {"ok": False, "error": (read("checks.err") or "")[-2000:]}
        md += ["## Kernels", "", "**failed**: see checks.err", ""]

a, b = losses("steps-cpu"), losses("steps-device")
if a or b:
    rows, worst, ok = [], 0.0, len(a) >= steps and len(b) >= steps
    for it in sorted(set(a) | set(b)):
        x, y = a.get(it), b.get(it)
        rel = abs(x - y) / max(abs(x), 1e-12) if x is not None and y is not None else float("inf")
        tol = STEP1_TOL if it == 1 else STEP_TOL
        ok = ok and rel <= tol
        worst = max(worst, rel)
        rows.append({"iter": it, "cpu": x, "device": y, "rel_diff": rel, "tolerance": tol})
    rep["stages"]["steps"] = {"rows": rows, "max_rel_diff": worst, "ok": ok}
    md += [f"## First {steps} steps of the default job, total loss: CPU vs {device} (seed 0)", "",
           f"Tolerance: step 1 within {STEP1_TOL:g} relative, every step within {STEP_TOL:g}. Largest relative difference {worst:.2e}: **{'ok' if ok else 'FAILED'}**.", "",
           "| iter | CPU | device | rel. diff |", "|---:|---:|---:|---:|"]
    g = lambda v: "–" if v is None else f"{v:.6g}"
    md += [f"| {r['iter']} | {g(r['cpu'])} | {g(r['device'])} | {r['rel_diff']:.2e} |" for r in rows]
    md.append("")

bench = []
for name in sorted(os.listdir(out)):
    if name.startswith("bench-") and name.endswith(".kdet.json"):
        row = name[len("bench-"):-len(".kdet.json")]
        def load(side):
            t = read(f"bench-{row}.{side}.json")
            try:
                return json.loads(t) if t else None
            except ValueError:
                return None
        k, t = load("kdet"), load("torch")
        ratio = k["median_ms"] / t["median_ms"] if k and t else None
        bench.append({"row": row, "kdet_ms": k and k["median_ms"], "torch_ms": t and t["median_ms"], "ratio": ratio,
                      "torch_error": None if t else (read(f"bench-{row}.torch.err") or "")[-300:]})
if bench:
    rep["stages"]["bench"] = {"rows": bench}
    md += [f"## Speed on {device}: kdet against PyTorch (median ms)", "", "| row | kdet ms | PyTorch ms | kdet / PyTorch | note |", "|---|---:|---:|---:|---|"]
    for r in bench:
        f = lambda v: "–" if v is None else f"{v:.2f}"
        note = "" if r["torch_ms"] is not None else f"PyTorch side failed: bench-{r['row']}.torch.err"
        if r["kdet_ms"] is None:
            note = f"kdet failed: bench-{r['row']}.kdet.err"
        md.append(f"| {r['row']} | {f(r['kdet_ms'])} | {f(r['torch_ms'])} | {f(r['ratio'])} | {note} |")
    md.append("")

ap = last("default-device", "val/AP")
if ap is not None or read("default.err") is not None:
    tap = last("default-device", "teacher0/AP")
    full = iters == ""
    ok = ap is not None and (abs(ap - AP_CPU) <= AP_TOL if full else True)
    rep["stages"]["default_job"] = {"ap": ap, "teacher_ap": tap, "ap_cpu": AP_CPU if full else None,
                                    "teacher_ap_cpu": TEACHER_CPU, "tolerance": AP_TOL if full else None,
                                    "iterations": iters or "config", "ok": ok}
    md += [f"## The default job on {device}", "",
           f"Student AP {ap if ap is None else round(ap, 4)} (CPU, seed 0: {AP_CPU}), teacher AP {tap if tap is None else round(tap, 4)} (CPU: {TEACHER_CPU}). " +
           (f"Tolerance {AP_TOL} AP: **{'ok' if ok else 'FAILED'}**." if full else f"Iterations reduced to {iters}: not compared with the CPU figure."), ""]

rep["ok"] = all(s.get("ok", True) for s in rep["stages"].values())
md.insert(1, f"\n{elapsed} s; overall: **{'ok' if rep['ok'] else 'FAILED'}** (stages run: {', '.join(rep['stages']) or 'none'})")
json.dump(rep, open(os.path.join(out, "report.json"), "w"), indent=1)
open(os.path.join(out, "report.md"), "w").write("\n".join(md) + "\n")
PY
}

stage() { echo "[gpu_check $(( $(date +%s) - start )) s] $*" >&2; }

# 1. The machine.
stage "machine"
command -v nvidia-smi > /dev/null && nvidia-smi > "$out/nvidia-smi.txt" 2>&1
case "$device" in cuda*) find_cuda_libraries ;; esac
{ "$KDET" --version; ldd "$KDET"; } > "$out/version.txt" 2>&1
report

# 2. Kernels and the half-precision teacher.
if [[ "$skip" != *" check "* ]]; then
  stage "bench check"
  "$KDET" bench check --device "$device" --json > "$out/checks.json" 2> "$out/checks.err"
  report
fi

# 3. The first steps on the CPU and on the device.
if [[ "$skip" != *" steps "* ]]; then
  for side in cpu device; do
    d=cpu
    [ "$side" = device ] && d=$device
    stage "$steps steps on $d"
    "$KDET" train "$(derived "steps-$side" "")" --device "$d" --stop-after "$steps" --fresh \
      > "$out/steps-$side.log" 2>&1
  done
  report
fi

# 4. Speed against PyTorch.
if [[ "$skip" != *" bench "* ]]; then
  for row in $rows; do
    stage "bench $row"
    extra=() kextra=()
    case "$row" in infer_*) extra=(--save-weights "$out/bench-$row.safetensors"); kextra=(--weights "$out/bench-$row.safetensors") ;; esac
    "$PYTHON" tools/bench_torch.py --row "$row" --device "$device" --runs "$runs" --warmup "$warmup" \
      --json "${extra[@]}" > "$out/bench-$row.torch.json" 2> "$out/bench-$row.torch.err"
    [ -s "$out/bench-$row.safetensors" ] || kextra=()
    "$KDET" bench row "$row" --device "$device" --runs "$runs" --warmup "$warmup" --json \
      "${kextra[@]}" > "$out/bench-$row.kdet.json" 2> "$out/bench-$row.kdet.err"
  done
  report
fi

# 5. The default job.
if [[ "$skip" != *" train "* ]]; then
  stage "the default job on $device"
  "$KDET" train "$(derived default-device "$iters")" --device "$device" --fresh \
    > "$out/default-device.log" 2> "$out/default.err"
  report
fi
stage "done: $out/report.md"
cat "$out/report.md"
