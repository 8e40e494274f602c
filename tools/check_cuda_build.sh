#!/usr/bin/env bash
# Compile kdet's `cuda` feature on a machine without a GPU or a CUDA toolkit: nvcc, the CUDA
# runtime headers and CCCL come from PyPI's CUDA 13 wheels into a venv, then
#   cargo build --release --features cuda --lib         (the library: candle's CUDA kernels
#                                                       through nvcc/ptxas, kdet's CUDA paths)
#   cargo check --release --features cuda --all-targets (the binary, tests and benches)
# With --cudnn, the same for the `cudnn` feature.
#
#   tools/check_cuda_build.sh [--cudnn]      # ~20 minutes on 2 cores from scratch
#
# Environment: CUDA_VENV (default target/cuda-venv), CARGO_TARGET_DIR (default
# target/cuda-target, apart from the CPU build), CUDA_COMPUTE_CAP (default 90, H100/H200:
# there is no GPU for nvidia-smi to ask).
#
# A linked binary to carry to a GPU machine: tools/build_cuda_binary.sh (same venv and wheels;
# it patches cudarc, so the two rebuild candle when run one after the other in one target).
#
# CUDA 13.0 wheels (nvcc, nvvm and crt pinned together) and cudarc's 13.0 bindings
# (CUDARC_CUDA_VERSION=13000), as tools/build_cuda_binary.sh explains: a driver loads PTX of
# its own CUDA version or older. (cudarc 0.19 knows CUDA up to 13.4 and panics on a newer
# nvcc unless CUDARC_CUDA_VERSION is set; verified 2026-12-01.)
set -euo pipefail
cd "$(dirname "$0")/.."
features=cuda
[ "${1:-}" = "--cudnn" ] && features=cudnn
venv=${CUDA_VENV:-target/cuda-venv}
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
# Only the CUDA 13 wheel of nvidia-cuda-nvcc ships bin/nvcc (the -cu12 ones ship ptxas only).
"$venv/bin/pip" install --quiet 'nvidia-cuda-nvcc==13.0.*' 'nvidia-nvvm==13.0.*' \
  'nvidia-cuda-crt==13.0.*' 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*'
if [ "$features" = cudnn ]; then
  "$venv/bin/pip" install --quiet nvidia-cudnn-cu13
fi
cuda=$(echo "$(cd "$venv" && pwd)"/lib/python3*/site-packages/nvidia/cu13)
[ -x "$cuda/bin/nvcc" ] || { echo "no nvcc under $cuda" >&2; exit 1; }
"$cuda/bin/nvcc" --version | tail -2
export PATH=$cuda/bin:$PATH CUDA_ROOT=$cuda CUDA_PATH=$cuda
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13000
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target/cuda-target}
start=$(date +%s)
cargo build --release --features "$features" --lib
echo "library with --features $features built in $(( $(date +%s) - start )) s"
cargo check --release --features "$features" --all-targets
echo "--features $features: library built, every target checked ($(( $(date +%s) - start )) s)"
