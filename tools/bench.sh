#!/usr/bin/env bash
# Every benchmark row of docs/benchmarks.md, kdet against PyTorch on this CPU, one command:
# each row runs in its own process on each side (so peak RSS is the row's), PyTorch first, a
# pause, then kdet (`kdet bench row NAME --json`); the inference rows share the PyTorch model's
# weights. With ROUNDS > 1 the whole sequence repeats, so the two sides alternate, interleaved,
# ROUNDS times per row; each round gives one ratio kdet / PyTorch of the two medians. Prints the
# markdown table: median ms of each side over the rounds, the median ratio with its spread (the
# lowest and highest round), images/s for the rows that process images, peak RSS of both.
#
#   tools/bench.sh [PYTHON] [ROW...]     # PYTHON defaults to /work/venv-paa/bin/python
# PYTHON: a venv with torch, torchvision, numpy and safetensors (the current release, e.g. torch
# 2.15.0 + torchvision 0.29.2 from PyPI; earlier tables used torch 2.4.1 + torchvision 0.19.1)
# and, for the PAA row, mmdetection 3.3.0 (made as tools/make_paa_fixture.py's header says).
# Environment: RUNS (default 10), WARMUP (3), THREADS (2), PAUSE seconds between runs (10),
# ROUNDS (1), KDET (a kdet binary to time instead of building target/release/kdet). Run on an
# otherwise idle machine; on a loaded one use THREADS=1 (with 2 threads and other processes on
# the cores, PyTorch's OpenMP workers spin-wait for each other: its classifier step went from 66
# to 2,321 ms) and ROUNDS >= 5, and say so beside the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-/work/venv-paa/bin/python}
shift || true
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
PAUSE=${PAUSE:-10}
ROUNDS=${ROUNDS:-1}
if [ -z "${KDET:-}" ]; then
  cargo build --release --quiet
  KDET=target/release/kdet
fi
rows=("$@")
[ ${#rows[@]} -gt 0 ] || mapfile -t rows < <($KDET bench list | cut -f1)
out=$(mktemp -d)
for round in $(seq 1 "$ROUNDS"); do
  for row in "${rows[@]}"; do
    extra=()
    case "$row" in infer_*) extra=(--save-weights "$out/$row.safetensors");; esac
    "$py" tools/bench_torch.py --row "$row" --runs "$RUNS" --warmup "$WARMUP" --threads "$THREADS" \
      --json "${extra[@]}" > "$out/$row.$round.torch.json" || echo "{\"name\": \"$row\", \"error\": true}" > "$out/$row.$round.torch.json"
    sleep "$PAUSE"
    kextra=()
    case "$row" in infer_*) kextra=(--weights "$out/$row.safetensors");; esac
    RAYON_NUM_THREADS=$THREADS $KDET bench row "$row" --runs "$RUNS" --warmup "$WARMUP" --json "${kextra[@]}" \
      > "$out/$row.$round.kdet.json"
    sleep "$PAUSE"
  done
  echo "round $round of $ROUNDS done" >&2
done
python3 - "$out" "$ROUNDS" "$KDET" "${rows[@]}" <<'PY'
import json, statistics, subprocess, sys
out, rounds, kdet, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
desc = dict(l.split("\t", 1) for l in subprocess.run(
    [kdet, "bench", "list"], capture_output=True, text=True).stdout.splitlines())
med = statistics.median
print("| row | kdet ms | PyTorch ms | kdet / PyTorch: median [lowest, highest round] | kdet images/s | PyTorch images/s | kdet peak RSS MiB | PyTorch peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
versions = None
for r in rows:
    ks = [json.load(open(f"{out}/{r}.{i}.kdet.json")) for i in range(1, rounds + 1)]
    ts = [json.load(open(f"{out}/{r}.{i}.torch.json")) for i in range(1, rounds + 1)]
    k_ms = med([k["median_ms"] for k in ks])
    k_rss = med([k["peak_rss_mb"] for k in ks])
    n_img = ks[0].get("images", 0)
    ips = lambda ms: f"{n_img / (ms / 1e3):.1f}" if n_img else "–"
    if any(t.get("error") for t in ts):
        print(f"| {desc[r].strip()} | {k_ms:.1f} | – | – | {ips(k_ms)} | – | {k_rss:.0f} | – |")
        continue
    versions = versions or (ts[0]["torch"], ts[0]["torchvision"], ts[0]["threads"])
    t_ms = med([t["median_ms"] for t in ts])
    ratios = [k["median_ms"] / t["median_ms"] for k, t in zip(ks, ts)]
    spread = f" [{min(ratios):.2f}, {max(ratios):.2f}]" if rounds > 1 else ""
    print(f"| {desc[r].strip()} | {k_ms:.1f} | {t_ms:.1f} | {med(ratios):.2f}{spread} | {ips(k_ms)} | {ips(t_ms)} | {k_rss:.0f} | {med([t['peak_rss_mb'] for t in ts]):.0f} |")
if versions:
    print(f"\ntorch {versions[0]}, torchvision {versions[1]}, {versions[2]} threads; kdet RAYON_NUM_THREADS as threads; {rounds} round(s), interleaved.")
PY
