#!/usr/bin/env bash
# Every benchmark row of docs/benchmarks.md, kdet against PyTorch on this CPU, one command:
# each row runs in its own process on each side (so peak RSS is the row's), PyTorch first, a
# pause, then kdet (`kdet bench row NAME --json`); the inference rows share the PyTorch model's
# weights. Prints the markdown table (median ms, ratio kdet / PyTorch, peak RSS of both).
#
#   tools/bench.sh [PYTHON] [ROW...]     # PYTHON defaults to /work/venv-paa/bin/python
# PYTHON: a venv with torch 2.4.1, torchvision 0.19.1 and, for the PAA row, mmdetection 3.3.0
# (made as tools/make_paa_fixture.py's header says).
# Environment: RUNS (default 10), WARMUP (3), THREADS (2), PAUSE seconds between runs (10).
# Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-/work/venv-paa/bin/python}
shift || true
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
PAUSE=${PAUSE:-10}
cargo build --release --quiet
KDET=target/release/kdet
rows=("$@")
[ ${#rows[@]} -gt 0 ] || mapfile -t rows < <($KDET bench list | cut -f1)
out=$(mktemp -d)
for row in "${rows[@]}"; do
  extra=()
  case "$row" in infer_*) extra=(--save-weights "$out/$row.safetensors");; esac
  "$py" tools/bench_torch.py --row "$row" --runs "$RUNS" --warmup "$WARMUP" --threads "$THREADS" \
    --json "${extra[@]}" > "$out/$row.torch.json" || echo "{\"name\": \"$row\", \"error\": true}" > "$out/$row.torch.json"
  sleep "$PAUSE"
  kextra=()
  case "$row" in infer_*) kextra=(--weights "$out/$row.safetensors");; esac
  RAYON_NUM_THREADS=$THREADS $KDET bench row "$row" --runs "$RUNS" --warmup "$WARMUP" --json "${kextra[@]}" \
    > "$out/$row.kdet.json"
  sleep "$PAUSE"
done
python3 - "$out" "${rows[@]}" <<'PY'
import json, sys
out, rows = sys.argv[1], sys.argv[2:]
desc = dict(l.split("\t", 1) for l in __import__("subprocess").run(
    ["target/release/kdet", "bench", "list"], capture_output=True, text=True).stdout.splitlines())
print("| row | kdet ms | PyTorch ms | kdet / PyTorch | kdet peak RSS MiB | PyTorch peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|")
versions = None
for r in rows:
    k = json.load(open(f"{out}/{r}.kdet.json"))
    t = json.load(open(f"{out}/{r}.torch.json"))
    if t.get("error"):
        print(f"| {desc[r].strip()} | {k['median_ms']:.1f} | – | – | {k['peak_rss_mb']:.0f} | – |")
        continue
    versions = versions or (t["torch"], t["torchvision"], t["threads"])
    print(f"| {desc[r].strip()} | {k['median_ms']:.1f} | {t['median_ms']:.1f} | {k['median_ms'] / t['median_ms']:.2f} | {k['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} |")
if versions:
    print(f"\ntorch {versions[0]}, torchvision {versions[1]}, {versions[2]} threads; kdet RAYON_NUM_THREADS as threads.")
PY
