//! The CUDA kernels' source (src/ops/kernels.cu) checked without a GPU: compiled as C++ for
//! the host with a shim for CUDA's built-ins (one block of one thread: the kernels' grid-stride
//! loops then visit every element in order, and `atomicAdd` is a plain add), run on the inputs
//! the CPU kernels get, and compared with them. This checks the kernels' arithmetic and
//! indexing here; tools/gpu_check.sh (`kdet bench check`) compares the compiled kernels on a GPU.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor, Var};

use super::roi_align::{roi_align, RoiAlignParams};

/// CUDA's built-ins for one host thread.
const SHIM: &str = r#"
#include <math.h>
#include <string.h>
#include <algorithm>
#define __global__
#define __device__
#define __forceinline__ inline
struct KdetDim3 { long long x, y, z; };
static KdetDim3 blockIdx{0, 0, 0}, threadIdx{0, 0, 0}, blockDim{1, 1, 1}, gridDim{1, 1, 1};
inline float atomicAdd(float* p, float v) { float o = *p; *p += v; return o; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
using std::max;
using std::min;
"#;

/// RoIAlign: reads `n c h w k o ratio scale`, x, rois and dy from stdin (raw f32 after 7 i32
/// and one f32), writes the forward output then the features' gradient to stdout. With an
/// argument, NMS: reads `n thresh` and the boxes, writes the mask (n · ⌈n/64⌉ u64).
const DRIVER: &str = r#"
#include <stdio.h>
#include <vector>
extern "C" void kdet_roi_align_fwd(const float*, const float*, float*, int, int, int, int, int, int, float, int);
extern "C" void kdet_roi_align_bwd(const float*, const float*, float*, int, int, int, int, int, int, float, int);
extern "C" void kdet_nms_mask(const float*, unsigned long long*, int, float);
template <class T> void get(std::vector<T>& v) { if (fread(v.data(), sizeof(T), v.size(), stdin) != v.size()) throw 1; }
int main(int argc, char**) {
  if (argc > 1) {
    std::vector<int> n(1); get(n);
    std::vector<float> t(1); get(t);
    std::vector<float> b((size_t)n[0] * 4); get(b);
    std::vector<unsigned long long> m((size_t)n[0] * ((n[0] + 63) / 64));
    kdet_nms_mask(b.data(), m.data(), n[0], t[0]);
    fwrite(m.data(), 8, m.size(), stdout);
    return 0;
  }
  std::vector<int> d(7); get(d);
  std::vector<float> s(1); get(s);
  int n = d[0], c = d[1], h = d[2], w = d[3], k = d[4], o = d[5], ratio = d[6];
  std::vector<float> x((size_t)n * c * h * w), rois((size_t)k * 5), dy((size_t)k * c * o * o);
  get(x); get(rois); get(dy);
  std::vector<float> y(dy.size()), dx(x.size(), 0.0f);
  kdet_roi_align_fwd(x.data(), rois.data(), y.data(), n, c, h, w, k, o, s[0], ratio);
  kdet_roi_align_bwd(dy.data(), rois.data(), dx.data(), n, c, h, w, k, o, s[0], ratio);
  fwrite(y.data(), 4, y.size(), stdout);
  fwrite(dx.data(), 4, dx.size(), stdout);
}
"#;

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// kernels.cu and the driver built for the host in a fresh folder named `tag`.
fn host_kernels(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("kdet-kernels-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shim.h"), SHIM).unwrap();
    std::fs::write(dir.join("driver.cpp"), DRIVER).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ops/kernels.cu");
    let exe = dir.join("kernels");
    let built = Command::new("c++")
        .args(["-O1", "-ffp-contract=off", "-include"])
        .arg(dir.join("shim.h"))
        .args(["-x", "c++"])
        .arg(&src)
        .args(["-x", "none"])
        .arg(dir.join("driver.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("a C++ compiler (c++) on PATH");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    (dir, exe)
}

/// Run the host build with `input` on stdin (and `args`), its stdout.
fn run_host(exe: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn roi_align_kernels_match_the_cpu_kernels_on_the_host() {
    let (dir, exe) = host_kernels("roi");
    let (n, c, h, w, o) = (2usize, 3usize, 9usize, 11usize, 3usize);
    let xv: Vec<f32> = (0..n * c * h * w)
        .map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0)
        .collect();
    // Inside, reaching outside, degenerate (widened to 1 × 1), tiny, and large RoIs.
    let rois: Vec<f32> = vec![
        1.0, 1.3, 0.7, 9.9, 8.2, //
        0.0, -2.0, 3.0, 5.0, 20.0, //
        1.0, 4.0, 4.0, 4.0, 4.0, //
        0.0, 6.1, 2.2, 6.4, 2.9, //
        1.0, -30.0, -30.0, 60.0, 50.0,
    ];
    let k = rois.len() / 5;
    let dyv: Vec<f32> = (0..k * c * o * o)
        .map(|i| ((i * 104_729) % 97) as f32 / 30.0 - 1.5)
        .collect();
    for (ratio, scale) in [(2usize, 0.5f32), (0, 0.5), (0, 1.3)] {
        let mut input = Vec::new();
        for d in [n, c, h, w, k, o, ratio] {
            input.extend((d as i32).to_le_bytes());
        }
        input.extend(scale.to_le_bytes());
        for v in xv.iter().chain(&rois).chain(&dyv) {
            input.extend(v.to_le_bytes());
        }
        let got: Vec<f32> = run_host(&exe, &[], &input)
            .chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got.len(), dyv.len() + xv.len());

        let x =
            Var::from_tensor(&Tensor::from_vec(xv.clone(), (n, c, h, w), &Device::Cpu).unwrap())
                .unwrap();
        let r = Tensor::from_vec(rois.clone(), (k, 5), &Device::Cpu).unwrap();
        let p = RoiAlignParams {
            output_size: o,
            spatial_scale: scale,
            sampling_ratio: ratio,
        };
        let y = roi_align(x.as_tensor(), &r, p).unwrap();
        let dy = Tensor::from_vec(dyv.clone(), (k, c, o, o), &Device::Cpu).unwrap();
        let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(x.as_tensor()).unwrap();
        let close = |a: &[f32], b: &[f32], what: &str| {
            for (i, (u, v)) in a.iter().zip(b).enumerate() {
                assert!(
                    (u - v).abs() <= 1e-5 * u.abs().max(1.0),
                    "{what}[{i}]: kernel {u}, CPU {v} (ratio {ratio}, scale {scale})"
                );
            }
        };
        close(&got[..dyv.len()], &values(&y), "forward");
        close(&got[dyv.len()..], &values(dx), "backward");
        assert!(values(dx).iter().any(|v| *v != 0.0));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn nms_mask_kernel_matches_the_cpu_mask_on_the_host() {
    use rand::{Rng, SeedableRng};
    let (dir, exe) = host_kernels("nms");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    // 150 boxes: three 64-box words per row, the last one partly filled.
    let n = 150usize;
    let boxes: Vec<f32> = (0..n)
        .flat_map(|_| {
            let (x, y) = (
                rng.random_range(0.0..100.0f32),
                rng.random_range(0.0..80.0f32),
            );
            [
                x,
                y,
                x + rng.random_range(2.0..50.0),
                y + rng.random_range(2.0..40.0),
            ]
        })
        .collect();
    let t = Tensor::from_vec(boxes.clone(), (n, 4), &Device::Cpu).unwrap();
    for thresh in [0.2f32, 0.5] {
        let mut input = (n as i32).to_le_bytes().to_vec();
        input.extend(thresh.to_le_bytes());
        for v in &boxes {
            input.extend(v.to_le_bytes());
        }
        let got = run_host(&exe, &["nms"], &input);
        let cpu = t
            .apply_op1_no_bwd(&super::nms::NmsMask(thresh))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        let want: Vec<u8> = cpu.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(got, want, "threshold {thresh}");
        assert!(cpu.iter().any(|w| *w != 0));
    }
    std::fs::remove_dir_all(&dir).ok();
}
