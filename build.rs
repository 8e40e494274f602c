//! With the `cuda` feature: kdet's CUDA kernels (src/ops/kernels.cu) compiled to PTX with nvcc,
//! as candle compiles its own (candle-kernels), into `$OUT_DIR/kdet_kernels.ptx`, which
//! src/ops/cuda.rs embeds and loads at run time. Without it: nothing.
//!
//! `CUDA_COMPUTE_CAP` (e.g. 90 for H100/H200) names the target; unset, nvidia-smi is asked, as
//! candle-kernels' build does. `NVCC` names the compiler (default `nvcc` on PATH).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=src/ops/kernels.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    let cap = match std::env::var("CUDA_COMPUTE_CAP") {
        Ok(c) => c.trim().replace('.', ""),
        Err(_) => {
            let out = Command::new("nvidia-smi")
                .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .unwrap_or_else(|| {
                    panic!(
                        "the cuda feature compiles kdet's kernels for one GPU generation: set \
                         CUDA_COMPUTE_CAP (90 for H100/H200, 80 for A100); nvidia-smi, which \
                         would tell, did not run"
                    )
                });
            let s = String::from_utf8_lossy(&out.stdout);
            s.lines().next().unwrap_or("").trim().replace('.', "")
        }
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out.join("kdet_kernels.ptx");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("--gpu-architecture=compute_{cap}")])
        .arg("src/ops/kernels.cu")
        .arg("-o")
        .arg(&ptx)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {nvcc} for src/ops/kernels.cu: {e}"));
    assert!(
        status.success(),
        "{nvcc} failed on src/ops/kernels.cu (compute_{cap}): {status}"
    );
}
