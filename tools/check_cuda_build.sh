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
# Why not a linked binary: linking needs libcuda (it comes with the NVIDIA driver, not with any
# PyPI wheel) besides cublas/curand/nvrtc; on a machine with the driver and the toolkit,
# `cargo build --release --features cuda` is the whole build.
#
# cudarc 0.19 knows CUDA up to 13.4 and panics on a newer nvcc ("Unsupported cuda toolkit
# version"): CUDARC_CUDA_VERSION=13040 selects its 13.4 bindings whatever the wheel's version.
# (Facts verified 2026-12-01 and recorded in the project's research notes on CUDA builds.)
set -euo pipefail
cd "$(dirname "$0")/.."
features=cuda
[ "${1:-}" = "--cudnn" ] && features=cudnn
venv=${CUDA_VENV:-target/cuda-venv}
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
# Only the CUDA 13 wheel of nvidia-cuda-nvcc ships bin/nvcc (the -cu12 ones ship ptxas only).
"$venv/bin/pip" install --quiet nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl
if [ "$features" = cudnn ]; then
  "$venv/bin/pip" install --quiet nvidia-cudnn-cu13
fi
cuda=$(echo "$(cd "$venv" && pwd)"/lib/python3*/site-packages/nvidia/cu13)
[ -x "$cuda/bin/nvcc" ] || { echo "no nvcc under $cuda" >&2; exit 1; }
"$cuda/bin/nvcc" --version | tail -2
export PATH=$cuda/bin:$PATH CUDA_ROOT=$cuda CUDA_PATH=$cuda
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13040
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda-target}
start=$(date +%s)
cargo build --release --features "$features" --lib
echo "library with --features $features built in $(( $(date +%s) - start )) s"
cargo check --release --features "$features" --all-targets
echo "--features $features: library built, every target checked ($(( $(date +%s) - start )) s)"
