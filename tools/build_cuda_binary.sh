#!/usr/bin/env bash
# Build a linked `kdet` with `--features cuda` on a machine without a GPU, a driver or a CUDA
# toolkit, to carry to a GPU machine (which needs no Rust toolchain and no network):
#
#   tools/build_cuda_binary.sh [OUT]     # OUT defaults to $CARGO_TARGET_DIR/kdet-cuda
#
# Writes OUT and OUT.gz: carry OUT.gz (tools/gpu_check.sh unpacks it). Stripped, the binary is
# about 66 MiB, over the 64 MiB that travel to the GPU machine with the working tree, because
# candle-kernels links its MoE/GGUF kernels as compiled GPU code for the target (33 MB of
# .nv_fatbin that kdet never calls but cannot leave out); gzip takes it to about 19 MB.
#
# ~20-40 min from scratch on 2 cores (most of it ptxas on candle's kernels); a rerun only
# rebuilds what changed. Idempotent: the venv, the patched cudarc and the build are reused.
#
# What it does:
# 1. nvcc, the CUDA runtime headers and CCCL from PyPI's CUDA 13.0 wheels into a venv
#    (CUDA_VENV, default target/cuda-venv). 13.0, not the newest: the PTX that nvcc writes for
#    candle's kernels must be loadable by the GPU machine's driver, and a driver loads PTX of
#    its own CUDA version or older; cudarc's 13.0 bindings (CUDARC_CUDA_VERSION=13000) likewise
#    call only driver functions every CUDA 13 driver has.
# 2. The CUDA libraries are loaded at run time, not linked: candle-core turns on cudarc's
#    `dynamic-linking` feature (which puts -lcuda -lcublas -lcublasLt -lcurand -lnvrtc on the
#    link line, and libcuda comes only with the NVIDIA driver), and cargo features only add up,
#    so kdet cannot switch it off; enabling `dynamic-loading` beside it makes cudarc's build
#    script panic ("Both `dynamic-loading` and `dynamic-linking` features are active"). cudarc's
#    source switches on the cfg `feature = "dynamic-loading"` alone, so a copy of cudarc whose
#    build script sets that cfg instead of emitting the link lines is patched in for this build
#    only (`cargo --config patch...`; Cargo.lock is restored afterwards). The binary then starts
#    on any machine; `--device cuda` opens libcuda.so.1 and the CUDA 13 libraries when asked,
#    and kdet names the ones that are missing (src/device.rs). candle-kernels also links its
#    MoE kernels (libmoe.a, object code calling the CUDA runtime) with `-lcudart`: the link of
#    the binary alone (`cargo rustc ... -- -L`, so no dependency is rebuilt) is pointed at a
#    folder where libcudart is the wheel's static libcudart_static.a, so the binary needs no
#    libcudart.so either (the runtime itself opens the driver only when first used, and kdet
#    never calls those kernels).
# 3. The binary, stripped, to OUT and gzipped to OUT.gz; sizes and `ldd` are printed.
#
# Environment: CUDA_VENV, CARGO_TARGET_DIR (default target/cuda-target, apart from the CPU
# build), CUDA_COMPUTE_CAP (default 90: H100/H200; there is no GPU here for nvidia-smi to ask).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${CUDA_VENV:-target/cuda-venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda-target}
mkdir -p "$CARGO_TARGET_DIR"
CARGO_TARGET_DIR=$(cd "$CARGO_TARGET_DIR" && pwd)
out=${1:-$CARGO_TARGET_DIR/kdet-cuda}

[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
# Only the CUDA 13 wheel of nvidia-cuda-nvcc ships bin/nvcc (the -cu12 ones ship ptxas only).
# nvcc's own front end (nvvm) and headers (crt) are wheels of their own, pinned too: unpinned,
# pip takes the newest, whose PTX (.version 9.5 for 13.5) the 13.0 ptxas and drivers refuse.
"$venv/bin/pip" install --quiet 'nvidia-cuda-nvcc==13.0.*' 'nvidia-nvvm==13.0.*' \
  'nvidia-cuda-crt==13.0.*' 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*'
cuda=$(echo "$(cd "$venv" && pwd)"/lib/python3*/site-packages/nvidia/cu13)
[ -x "$cuda/bin/nvcc" ] || { echo "no nvcc under $cuda" >&2; exit 1; }
"$cuda/bin/nvcc" --version | tail -1
export PATH=$cuda/bin:$PATH CUDA_ROOT=$cuda CUDA_PATH=$cuda
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13000

# cudarc, patched to load the libraries at run time (see 2. above).
ver=$(awk '$0 == "name = \"cudarc\"" { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
[ -n "$ver" ] || { echo "Cargo.lock names no cudarc" >&2; exit 1; }
patched=$CARGO_TARGET_DIR/cudarc-$ver-dynamic-loading
if [ ! -f "$patched/.kdet-patched" ]; then
  cargo fetch --quiet
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$ver" | head -1)
  rm -rf "$patched"
  cp -r "$src" "$patched"
  python3 - "$patched/build.rs" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
old = "    dynamic_linking(major, minor);\n"
new = '    println!("cargo:rustc-cfg=feature=\\"dynamic-loading\\""); // kdet: load at run time\n'
if text.count(old) != 1:
    sys.exit(f"{path}: expected one `dynamic_linking(major, minor);` call, found {text.count(old)}")
open(path, "w").write(text.replace(old, new))
PY
  touch "$patched/.kdet-patched"
fi

# -lcudart resolves to the static runtime: the folder holds libcudart.a and no libcudart.so.
link=$CARGO_TARGET_DIR/cuda-link
mkdir -p "$link"
ln -sf "$cuda/lib/libcudart_static.a" "$link/libcudart.a"

cp Cargo.lock "$CARGO_TARGET_DIR/Cargo.lock.kdet"
trap 'cp "$CARGO_TARGET_DIR/Cargo.lock.kdet" "$root/Cargo.lock"' EXIT
start=$(date +%s)
cargo rustc --release --features cuda --bin kdet \
  --config "patch.crates-io.cudarc.path=\"$patched\"" -- -L "native=$link"
echo "kdet with --features cuda built in $(( $(date +%s) - start )) s"

mkdir -p "$(dirname "$out")"
strip -o "$out" "$CARGO_TARGET_DIR/release/kdet"
echo "$out: $(( $(stat -c %s "$out") / 1024 / 1024 )) MiB ($(stat -c %s "$out") bytes), stripped"
gzip -9 -c "$out" > "$out.gz.tmp" && mv "$out.gz.tmp" "$out.gz"
echo "$out.gz: $(( $(stat -c %s "$out.gz") / 1024 / 1024 )) MiB ($(stat -c %s "$out.gz") bytes): carry this one"
ldd "$out"
if ldd "$out" | grep -Eq 'lib(cuda|cudart|cublas|cublasLt|curand|nvrtc)\.so'; then
  echo "$out links a CUDA library dynamically: it would not start without one" >&2
  exit 1
fi
