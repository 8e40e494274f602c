//! CWD — channel-wise distillation (Shu et al., ICCV 2021, "Channel-wise Knowledge Distillation
//! for Dense Prediction"): each channel of a map becomes a distribution over its `H·W` positions,
//! `softmax(x_c / τ)`, and the student's follows the teacher's by `KL(teacher ‖ student)`, summed
//! over positions and channels, times τ², divided by `N·C` — as both the official code
//! (irfanICMLL/TorchDistiller `SemSeg-distill/utils/criterion.py`, `CriterionCWD` with
//! `norm_type='channel'`, `divergence='kl'`) and MMRazor's `ChannelWiseDivergence`
//! (`mmrazor/models/losses/cwd.py`) compute it. Defaults τ = 1, weight 10: MMRazor's Faster R-CNN
//! FPN config (`cwd_fpn_frcnn_r101_frcnn_r50_1x_coco.py`: `tau=1, loss_weight=10` per level).

use candle_core::Tensor;
use candle_nn::ops::{log_softmax, softmax};

/// CWD loss between the (aligned) student map and the teacher map (both N×C×H×W, same size),
/// unweighted: `τ² / (N·C) · Σ_{n,c} Σ_p p_t log(p_t / p_s)`.
pub fn cwd_loss(student: &Tensor, teacher: &Tensor, tau: f64) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = student.dims4()?;
    let s = (student.reshape((n * c, h * w))? / tau)?;
    let t = (teacher.detach().reshape((n * c, h * w))? / tau)?;
    let pt = softmax(&t, 1)?;
    let kl = (&pt * (log_softmax(&t, 1)? - log_softmax(&s, 1)?)?)?.sum_all()?;
    kl * (tau * tau / (n * c) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, Var};
    use candle_nn::{VarBuilder, VarMap};

    /// KL(p‖q) of two small distributions, in f64, from their logits.
    fn kl(t: &[f64], s: &[f64]) -> f64 {
        let sm = |x: &[f64]| {
            let z: f64 = x.iter().map(|v| v.exp()).sum();
            x.iter().map(|v| v.exp() / z).collect::<Vec<_>>()
        };
        let (p, q) = (sm(t), sm(s));
        p.iter().zip(&q).map(|(a, b)| a * (a / b).ln()).sum()
    }

    #[test]
    fn kl_over_positions_times_tau_squared_over_n_c() {
        let d = Device::Cpu;
        // One channel, two positions: student uniform, teacher (1/4, 3/4).
        let s = Tensor::new(&[[[[0f32, 0.0]]]], &d).unwrap();
        let t = Tensor::new(&[[[[0f32, 3f32.ln()]]]], &d).unwrap();
        let want = 0.25 * (0.5f64).ln() + 0.75 * (1.5f64).ln(); // 0.130812…
        let l = cwd_loss(&s, &t, 1.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((l as f64 - want).abs() < 1e-6, "{l} vs {want}");
        // τ = 2: logits halved, KL times 4.
        let want2 = 4.0 * kl(&[0.0, 3f64.ln() / 2.0], &[0.0, 0.0]);
        let l2 = cwd_loss(&s, &t, 2.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((l2 as f64 - want2).abs() < 1e-6, "{l2} vs {want2}");
        // Two images × two channels, one of them with a matching student: mean over the four.
        let s4 = Tensor::new(
            &[[[[0f32, 0.0]], [[1.0, 2.0]]], [[[0.0, 0.0]], [[1.0, 2.0]]]],
            &d,
        )
        .unwrap();
        let t4 = Tensor::new(
            &[
                [[[0f32, 3f32.ln()]], [[1.0, 2.0]]],
                [[[0.0, 3f32.ln()]], [[1.0, 2.0]]],
            ],
            &d,
        )
        .unwrap();
        let l4 = cwd_loss(&s4, &t4, 1.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((l4 as f64 - want / 2.0).abs() < 1e-6, "{l4}");
    }

    #[test]
    fn gradient_reaches_align_and_student_not_teacher() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let a = crate::distill::align::Align::new(vb.pp("align"), 2, 3).unwrap();
        let s = Var::rand(-1f32, 1.0, (2, 2, 3, 3), &Device::Cpu).unwrap();
        let t = Var::rand(-1f32, 1.0, (2, 3, 3, 3), &Device::Cpu).unwrap();
        let g = cwd_loss(&a.forward(&s).unwrap(), &t, 1.0)
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&s).is_some());
        assert!(g.get(&vm.data().lock().unwrap()["align.weight"]).is_some());
        assert!(g.get(&t).is_none());
    }
}
