//! `kdet bench check`: what a device computes against the CPU on the same inputs, for
//! tools/gpu_check.sh — RoIAlign forward and backward (one level with a fixed and an adaptive
//! sampling ratio, and the four-level pooling of the R50-FPN RoI head), batched NMS, and the
//! shipped synthetic teacher in f16 and bf16 against f32 on the device. In a `cuda` build the
//! GPU side of RoIAlign and NMS is kdet's CUDA kernels (src/ops/kernels.cu). Each check gives
//! the largest absolute difference (or relative L2 error, or count of differing boxes), its
//! tolerance and whether it passed.
//!
//! Tolerances: RoIAlign is the same bilinear arithmetic in f32 on both sides; a GPU kernel may
//! contract multiply-adds (FMA) and its backward adds RoIs' contributions in another order, so
//! the bound is 1e-4 of the reference's largest magnitude (at least 1e-4). A half-precision
//! teacher is compared by the relative L2 error of each FPN output (`‖x − x_f32‖ / ‖x_f32‖`):
//! f16 keeps 11 significant bits (≈ 5e-4 per rounding), bf16 8 (≈ 4e-3), and the errors of a
//! ResNet-18 + FPN add up over some twenty layers: bounds 1e-2 (f16) and 5e-2 (bf16). NMS
//! makes the same IoU comparisons in f32 on both sides (IEEE division on the GPU too): the kept
//! boxes must be the same, none may differ.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::inputs::{detection_batch, on_device};
use super::randn;
use crate::device::Precision;
use crate::distill::teacher::Teacher;
use crate::error::Result;
use crate::ops::boxes::Box4;
use crate::ops::nms::batched_nms_tensor;
use crate::ops::roi_align::{multi_scale_roi_align, roi_align, RoiAlignParams};

/// One comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// Largest |device − CPU| (or relative L2 error, see `measure`).
    pub value: f64,
    pub tolerance: f64,
    /// What `value` is.
    pub measure: &'static str,
    pub ok: bool,
    /// Why a check did not run (bf16 needs a GPU), or empty.
    pub skipped: String,
}

impl Check {
    fn new(name: &str, value: f64, tolerance: f64, measure: &'static str) -> Self {
        Self {
            name: name.into(),
            value,
            tolerance,
            measure,
            ok: value <= tolerance,
            skipped: String::new(),
        }
    }
}

/// Largest absolute difference of two tensors (on any devices), and the largest |a|.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let a = a.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let b = b.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let mut d = 0f64;
    let mut m = 0f64;
    for (x, y) in a.iter().zip(&b) {
        d = d.max((x - y).abs() as f64);
        m = m.max(x.abs() as f64);
    }
    if a.len() != b.len() {
        d = f64::INFINITY;
    }
    Ok((d, m))
}

/// `1e-4 × max(1, largest |reference|)`: see the module's note.
fn kernel_check(name: &str, (diff, scale): (f64, f64)) -> Check {
    Check::new(name, diff, 1e-4 * scale.max(1.0), "max abs difference")
}

/// `n` RoIs `(b, x1, y1, x2, y2)` over a batch of 2 images of 800 × 1088, with the cases the
/// kernel treats apart: a box reaching outside the image, a degenerate one, a tiny one.
fn rois(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = Vec::with_capacity(5 * (n + 3));
    for i in 0..n {
        let (x, y) = (rng.random_range(0.0..870.0), rng.random_range(0.0..640.0));
        let (w, h) = (rng.random_range(4.0..435.0), rng.random_range(4.0..320.0));
        v.extend([(i % 2) as f32, x, y, x + w, y + h]);
    }
    v.extend([1.0, -40.0, 700.0, 300.0, 900.0]);
    v.extend([0.0, 500.0, 400.0, 500.0, 400.0]);
    v.extend([1.0, 100.3, 200.7, 101.1, 201.2]);
    v
}

/// RoIAlign of one level, forward and the features' gradient under a fixed upstream gradient.
fn roi_align_checks(dev: &Device, sampling_ratio: usize) -> Result<Vec<Check>> {
    let x = randn(&[2, 64, 50, 68], 11)?;
    let r = rois(200, 12);
    let k = r.len() / 5;
    let p = RoiAlignParams {
        output_size: 7,
        spatial_scale: 1.0 / 16.0,
        sampling_ratio,
    };
    let g = randn(&[k, 64, 7, 7], 13)?;
    let run = |d: &Device| -> Result<(Tensor, Tensor)> {
        let xv = Var::from_tensor(&x.to_device(d)?)?;
        let rv = Tensor::from_vec(r.clone(), (k, 5), d)?;
        let y = roi_align(xv.as_tensor(), &rv, p)?;
        let grads = (&y * g.to_device(d)?)?.sum_all()?.backward()?;
        let dx = grads
            .get(xv.as_tensor())
            .ok_or_else(|| crate::Error::msg("roi_align check: no gradient reached the features"))?
            .clone();
        Ok((y, dx))
    };
    let (y_cpu, dx_cpu) = run(&Device::Cpu)?;
    let (y_dev, dx_dev) = run(dev)?;
    Ok(vec![
        kernel_check(
            &format!("roi_align forward, sampling_ratio {sampling_ratio}"),
            max_abs_diff(&y_cpu, &y_dev)?,
        ),
        kernel_check(
            &format!("roi_align backward (dfeatures), sampling_ratio {sampling_ratio}"),
            max_abs_diff(&dx_cpu, &dx_dev)?,
        ),
    ])
}

/// The RoI head's pooling: four FPN levels of an 800 × 1088 batch of 2, 515 RoIs.
fn multi_scale_check(dev: &Device) -> Result<Check> {
    let sizes = [(200, 272), (100, 136), (50, 68), (25, 34)];
    let feats: Vec<Tensor> = sizes
        .iter()
        .enumerate()
        .map(|(i, (h, w))| randn(&[2, 32, *h, *w], 20 + i as u64))
        .collect::<Result<_>>()?;
    let r = rois(512, 21);
    let boxes: Vec<Vec<Box4>> = (0..2)
        .map(|b| {
            r.chunks(5)
                .filter(|c| c[0] as usize == b)
                .map(|c| [c[1], c[2], c[3], c[4]])
                .collect()
        })
        .collect();
    let scales = [0.25, 0.125, 0.0625, 0.03125];
    let y_cpu = multi_scale_roi_align(&feats, &scales, &boxes, 7, 2)?;
    let on: Vec<Tensor> = feats
        .iter()
        .map(|f| f.to_device(dev))
        .collect::<candle_core::Result<_>>()?;
    let y_dev = multi_scale_roi_align(&on, &scales, &boxes, 7, 2)?;
    Ok(kernel_check(
        "multi-scale RoIAlign forward (4 levels, 515 RoIs)",
        max_abs_diff(&y_cpu, &y_dev)?,
    ))
}

/// Batched NMS of the `nms_batched` benchmark's kind (4,000 boxes, 80 classes, IoU 0.5): the
/// boxes kept on the device against those kept on the CPU (indices in either list only).
fn nms_check(dev: &Device) -> Result<Check> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let n = 4000;
    let boxes: Vec<f32> = super::rows::random_boxes(n, 800.0, 1088.0, &mut rng)
        .into_iter()
        .flatten()
        .collect();
    let scores: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    let classes: Vec<usize> = (0..n).map(|_| rng.random_range(0..80)).collect();
    let t = Tensor::from_vec(boxes, (n, 4), &Device::Cpu)?;
    let cpu = batched_nms_tensor(&t, &scores, &classes, 0.5)?;
    let on = batched_nms_tensor(&t.to_device(dev)?, &scores, &classes, 0.5)?;
    let a: std::collections::BTreeSet<usize> = cpu.iter().copied().collect();
    let b: std::collections::BTreeSet<usize> = on.iter().copied().collect();
    let differ = a.symmetric_difference(&b).count() + usize::from(cpu != on && a == b);
    Ok(Check::new(
        &format!("batched NMS (4,000 boxes, 80 classes; {} kept)", cpu.len()),
        differ as f64,
        0.0,
        "boxes kept on one side only (or order)",
    ))
}

/// The shipped synthetic teacher (configs/synth/distill_teacher.json) in `dtype` on `dev`.
fn teacher(dev: &Device, dtype: Precision) -> Result<Teacher> {
    let mut cfg = crate::config::load(&super::repo_file("configs/synth/distill_teacher.json"))?;
    cfg.config.teachers[0].dtype = dtype;
    Teacher::load(&cfg, 0, 5, dev)
}

/// The largest relative L2 error of the teacher's taps in `dtype` against f32, both on `dev`.
fn teacher_check(dev: &Device, dtype: Precision) -> Result<Check> {
    let (name, tol) = match dtype {
        Precision::F16 => ("teacher f16 vs f32 (FPN outputs)", 1e-2),
        _ => ("teacher bf16 vs f32 (FPN outputs)", 5e-2),
    };
    let m = crate::config::load(&super::repo_file("configs/synth/frcnn_student.json"))?
        .config
        .model;
    let b = on_device(
        &detection_batch(4, (128, 128), (128, 128), m.input(), 3)?,
        dev,
    )?;
    let full = teacher(dev, Precision::F32)?.run(&b)?.taps;
    let half = teacher(dev, dtype)?.run(&b)?.taps;
    let mut worst = 0f64;
    for (k, a) in &full {
        let h = half
            .get(k)
            .ok_or_else(|| crate::Error::msg(format!("teacher check: no tap {k} in {dtype:?}")))?
            .to_dtype(candle_core::DType::F32)?;
        let num = (a - &h)?.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
        let den = a.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt().max(1e-12);
        worst = worst.max((num / den) as f64);
    }
    Ok(Check::new(name, worst, tol, "max relative L2 error"))
}

/// Every check on `dev` (on the CPU itself the kernel checks compare the CPU with itself, which
/// exercises this code; bf16 is skipped there: candle has no CPU bf16 matrix multiply).
pub fn run(dev: &Device) -> Result<Vec<Check>> {
    let mut out = roi_align_checks(dev, 2)?;
    out.extend(roi_align_checks(dev, 0)?);
    out.push(multi_scale_check(dev)?);
    out.push(nms_check(dev)?);
    out.push(teacher_check(dev, Precision::F16)?);
    if dev.is_cpu() {
        let mut c = Check::new("teacher bf16 vs f32 (FPN outputs)", 0.0, 5e-2, "");
        c.skipped = "bf16 needs a GPU (candle has no CPU bf16 matrix multiply)".into();
        out.push(c);
    } else {
        out.push(teacher_check(dev, Precision::Bf16)?);
    }
    Ok(out)
}

/// A markdown table of the checks.
pub fn table(checks: &[Check]) -> String {
    let mut s =
        String::from("| check | value | tolerance | measure | result |\n|---|---:|---:|---|---|\n");
    for c in checks {
        let result = if !c.skipped.is_empty() {
            format!("skipped: {}", c.skipped)
        } else if c.ok {
            "ok".into()
        } else {
            "**FAILED**".into()
        };
        s.push_str(&format!(
            "| {} | {:.3e} | {:.1e} | {} | {result} |\n",
            c.name, c.value, c.tolerance, c.measure
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU every kernel check compares the CPU with itself (exactly equal), and the f16
    /// teacher stays within its bound: the checks run and can pass.
    #[test]
    fn checks_run_on_the_cpu() {
        let c = run(&Device::Cpu).unwrap();
        assert_eq!(c.len(), 8);
        for k in &c[..6] {
            assert_eq!(k.value, 0.0, "{k:?}");
            assert!(k.ok);
        }
        assert!(c[6].ok && c[6].value > 0.0, "{:?}", c[6]);
        assert!(!c[7].skipped.is_empty());
        assert!(table(&c).contains("| teacher f16 vs f32 (FPN outputs) |"));
    }

    /// A difference over the tolerance fails the check.
    #[test]
    fn a_difference_over_the_tolerance_fails() {
        let a = Tensor::new(&[1f32, -3.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, -3.01], &Device::Cpu).unwrap();
        let c = kernel_check("x", max_abs_diff(&a, &b).unwrap());
        assert!(
            !c.ok && (c.value - 0.01).abs() < 1e-6 && (c.tolerance - 3e-4).abs() < 1e-12,
            "{c:?}"
        );
        assert!(table(&[c]).contains("**FAILED**"));
    }
}
