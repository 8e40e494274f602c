#!/usr/bin/env bash
# kdet's CPU ops against candle's built-ins and PyTorch on this machine, in one go:
#   1. PyTorch reference (tools/bench_ops_torch.py, 2 threads) → JSON
#   2. pause, so the CPU is back at its idle clock (back-to-back heavy runs measured up to 25 % slower)
#   3. `kdet bench ops --torch JSON`: kdet vs candle in one process, with PyTorch's times and ratios
# Usage: tools/bench_ops.sh [PYTHON]   (PYTHON defaults to /work/venv-torch/bin/python; see
# tools/bench_ops_torch.py for making that environment). Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-/work/venv-torch/bin/python}
cargo build --release --quiet
json=$(mktemp)
"$py" tools/bench_ops_torch.py --json "$json"
sleep 30
./target/release/kdet bench ops --runs 30 --torch "$json"
