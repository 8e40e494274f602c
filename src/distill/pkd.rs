//! PKD (Cao et al., NeurIPS 2022, "PKD: General Distillation Framework for Object Detectors via
//! Pearson Correlation Coefficient"), as MMRazor's `PKDLoss` computes it
//! (`mmrazor/models/losses/pkd_loss.py`): each map is standardised per channel over the batch and
//! all positions (mean and unbiased std of the `N·H·W` values of a channel, `+ 1e-6` on the std),
//! then `MSE(ŝ, t̂) / 2` — equal to `1 − r` per channel, r the Pearson correlation, up to the
//! `(n − 1)/n` of the unbiased std — so the teacher's feature magnitudes no longer matter.
//! When the maps differ in size MMRazor resizes the student (bilinear, `resize_stu=True`); kdet
//! resizes the teacher (MMRazor's `resize_stu=False`), as candle's bilinear resize has no
//! backward pass. Default weight 6: MMRazor's Faster R-CNN config
//! (`pkd_fpn_frcnn_r101_frcnn_r50_2x_coco.py`, `loss_weight=6` per FPN level).

use candle_core::Tensor;

/// Standardise `x` (N×C×H×W) per channel over N, H, W: `(x − μ_c) / (σ_c + 1e-6)`, σ unbiased.
pub fn standardize(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let m = n * h * w;
    let f = x.transpose(0, 1)?.reshape((c, m))?;
    let mean = f.mean_keepdim(1)?;
    let d = f.broadcast_sub(&mean)?;
    // 1e-12 inside the root keeps the gradient finite on a constant channel (torch's std
    // backward is 0/0 there); it changes σ by at most 1e-6.
    let var = (d.sqr()?.sum_keepdim(1)? / (m.max(2) - 1) as f64)?;
    let std = ((var + 1e-12)?.sqrt()? + 1e-6)?;
    d.broadcast_div(&std)?
        .reshape((c, n, h, w))?
        .transpose(0, 1)?
        .contiguous()
}

/// PKD loss between the (aligned) student map and the teacher map of the same size, unweighted.
pub fn pkd_loss(student: &Tensor, teacher: &Tensor) -> candle_core::Result<Tensor> {
    let s = standardize(student)?;
    let t = standardize(&teacher.detach())?;
    (s - t)?.sqr()?.mean_all()? / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, Var};
    use candle_nn::{VarBuilder, VarMap};

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn anti_correlated_maps_give_one_minus_r_and_scaled_copies_zero() {
        let d = Device::Cpu;
        let s = Tensor::new(&[[[[1f32, 2.0], [3.0, 4.0]]]], &d).unwrap();
        let t = Tensor::new(&[[[[4f32, 3.0], [2.0, 1.0]]]], &d).unwrap();
        // r = −1; with the unbiased std, mean(ŝ²) = (n − 1)/n = 3/4, so
        // MSE(ŝ, −ŝ)/2 = 2·3/4 = 1.5 (less a hair for the 1e-6 on σ ≈ 1.29).
        let l = scalar(&pkd_loss(&s, &t).unwrap());
        assert!((l - 1.5).abs() < 1e-5, "{l}");
        // A teacher that is an affine copy with another magnitude costs nothing: the point of
        // PKD.
        let t2 = ((&s * 100.0).unwrap() + 7.0).unwrap();
        assert!(scalar(&pkd_loss(&s, &t2).unwrap()).abs() < 1e-6);
        // Channels are standardised separately, over the batch and positions.
        let s2 = Tensor::cat(&[&s, &(&s * 5.0).unwrap()], 1).unwrap();
        let t3 = Tensor::cat(&[&t, &(&s * 0.1).unwrap()], 1).unwrap();
        let l = scalar(&pkd_loss(&s2, &t3).unwrap());
        assert!((l - 0.75).abs() < 1e-5, "{l}");
    }

    #[test]
    fn standardization_is_over_batch_and_positions_per_channel() {
        let d = Device::Cpu;
        // Two images, one channel: values 0, 2 and 4, 6 — mean 3, unbiased std √(20/3).
        let x = Tensor::new(&[[[[0f32, 2.0]]], [[[4.0, 6.0]]]], &d).unwrap();
        let z = standardize(&x).unwrap().flatten_all().unwrap();
        let sd = (20f32 / 3.0).sqrt() + 1e-6;
        let want = [-3.0 / sd, -1.0 / sd, 1.0 / sd, 3.0 / sd];
        for (a, b) in z.to_vec1::<f32>().unwrap().iter().zip(want) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn gradient_reaches_align_and_student_not_teacher() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let a = crate::distill::align::Align::new(vb.pp("align"), 2, 3).unwrap();
        let s = Var::rand(-1f32, 1.0, (2, 2, 3, 3), &Device::Cpu).unwrap();
        let t = Var::rand(-1f32, 1.0, (2, 3, 3, 3), &Device::Cpu).unwrap();
        let g = pkd_loss(&a.forward(&s).unwrap(), &t)
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&s).is_some());
        assert!(g.get(&vm.data().lock().unwrap()["align.weight"]).is_some());
        assert!(g.get(&t).is_none());
    }
}
