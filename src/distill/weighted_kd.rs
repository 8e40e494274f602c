//! Weighted soft cross-entropy (Chen et al. 2017, Eq. 3): `L_soft = −Σ_c w_c · P_t(c) · log P_s(c)`
//! with `P = softmax(Z / T)`, `w_0` (background) = 1.5 on PASCAL and 1 for every other class; no
//! T² factor (docs/methods.md). Combined with the hard loss as
//! `μ · L_hard + (1 − μ) · L_soft` (Eq. 2) by the caller. Averaged over samples.

use candle_core::{Tensor, D};

/// RCN form: `student`, `teacher` are `K × C` logits with class 0 = background.
pub fn weighted_soft_ce(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
    background_weight: f64,
) -> candle_core::Result<Tensor> {
    let c = student.dim(1)?;
    let pt = candle_nn::ops::softmax(&(teacher.detach() / temperature)?, D::Minus1)?;
    let log_ps = candle_nn::ops::log_softmax(&(student / temperature)?, D::Minus1)?;
    let mut w = vec![1f32; c];
    w[0] = background_weight as f32;
    let w = Tensor::from_vec(w, (1, c), student.device())?.to_dtype(student.dtype())?;
    (pt.broadcast_mul(&w)? * log_ps)?.sum(1)?.neg()?.mean_all()
}

/// RPN form: objectness logits (`K`), foreground = sigmoid; the background probability
/// `1 − σ(z/T)` carries the background weight.
pub fn weighted_soft_bce(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
    background_weight: f64,
) -> candle_core::Result<Tensor> {
    let pt = candle_nn::ops::sigmoid(&(teacher.detach() / temperature)?)?;
    let zs = (student / temperature)?;
    // log σ(z) = −softplus(−z), log(1 − σ(z)) = −softplus(z), stable forms.
    let softplus = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
    };
    let log_fg = softplus(&zs.neg()?)?.neg()?;
    let log_bg = softplus(&zs)?.neg()?;
    let fg = (&pt * log_fg)?;
    let bg = ((pt.neg()? + 1.0)? * log_bg)?;
    (fg + (bg * background_weight)?)?.neg()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn hand_computed_rcn() {
        let d = Device::Cpu;
        let s = Tensor::new(&[[0f32, (2f32).ln()]], &d).unwrap(); // P_s = (1/3, 2/3)
        let t = Tensor::new(&[[(3f32).ln(), 0.0]], &d).unwrap(); // P_t = (3/4, 1/4)
        let want = -(1.5 * 0.75 * (1.0f64 / 3.0).ln() + 0.25 * (2.0f64 / 3.0).ln());
        let got = weighted_soft_ce(&s, &t, 1.0, 1.5)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // T = 2 halves the logits: P_s = softmax(0, ln2/2), no T² factor.
        let ps1 = 1.0 / (1.0 + 2f64.sqrt());
        let pt0 = 3f64.sqrt() / (1.0 + 3f64.sqrt());
        let want = -(1.5 * pt0 * ps1.ln() + (1.0 - pt0) * (1.0 - ps1).ln());
        let got = weighted_soft_ce(&s, &t, 2.0, 1.5)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!((got - want).abs() < 1e-6);
    }

    #[test]
    fn hand_computed_rpn_and_gradients_reach_student_only() {
        let d = Device::Cpu;
        let s = Var::new(&[0f32, 2.0], &d).unwrap();
        let t = Var::new(&[1f32, -1.0], &d).unwrap();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let term = |zs: f64, zt: f64| {
            -(sig(zt) * sig(zs).ln() + 1.5 * (1.0 - sig(zt)) * (1.0 - sig(zs)).ln())
        };
        let want = (term(0.0, 1.0) + term(2.0, -1.0)) / 2.0;
        let loss = weighted_soft_bce(&s, &t, 1.0, 1.5).unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
        let g = loss.backward().unwrap();
        assert!(g.get(&s).is_some());
        assert!(
            g.get(&t).is_none(),
            "the teacher must not receive a gradient"
        );
        // With equal logits and no background weight, the gradient is zero (minimum of CE).
        let s2 = Var::new(&[[0.3f32, -0.2, 1.0]], &d).unwrap();
        let g = weighted_soft_ce(&s2, &s2.as_tensor().clone(), 1.0, 1.0)
            .unwrap()
            .backward()
            .unwrap();
        let gv = g
            .get(&s2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(gv.iter().all(|v| v.abs() < 1e-6), "{gv:?}");
    }
}
