//! Temperature knowledge distillation (Hinton et al. 2015): `T² · KL(softmax(t/T) ‖ softmax(s/T))`
//! averaged over samples; the T² keeps gradient magnitudes comparable across temperatures. For
//! sigmoid classifiers (one-stage detectors' per-class logits) each class is its own Bernoulli:
//! `T² · Σ_c KL(Bern(σ(t_c/T)) ‖ Bern(σ(s_c/T)))`, averaged over samples.

use candle_core::{Tensor, D};

/// `student`, `teacher`: `N × C` logits.
pub fn kd_loss(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> candle_core::Result<Tensor> {
    let log_pt = candle_nn::ops::log_softmax(&(teacher.detach() / temperature)?, D::Minus1)?;
    let log_ps = candle_nn::ops::log_softmax(&(student / temperature)?, D::Minus1)?;
    let kl = (log_pt.exp()? * (log_pt - log_ps)?)?.sum(1)?;
    kl.mean_all()? * (temperature * temperature)
}

/// The sigmoid form: `student`, `teacher` are `N × C` per-class logits.
pub fn kd_sigmoid_loss(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> candle_core::Result<Tensor> {
    // log σ(z) = −softplus(−z), log(1 − σ(z)) = −softplus(z), stable forms.
    let softplus = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
    };
    let zt = (teacher.detach() / temperature)?;
    let zs = (student / temperature)?;
    let pt = candle_nn::ops::sigmoid(&zt)?;
    let (log_pt, log_qt) = (softplus(&zt.neg()?)?.neg()?, softplus(&zt)?.neg()?);
    let (log_ps, log_qs) = (softplus(&zs.neg()?)?.neg()?, softplus(&zs)?.neg()?);
    let kl = ((&pt * (log_pt - log_ps)?)? + ((1.0 - &pt)? * (log_qt - log_qs)?)?)?.sum(1)?;
    kl.mean_all()? * (temperature * temperature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sigmoid_form_is_zero_at_the_teacher_and_hand_computed() {
        let d = Device::Cpu;
        let t = Tensor::new(&[[0f32, 2.0]], &d).unwrap();
        let z = kd_sigmoid_loss(&t, &t, 2.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(z.abs() < 1e-6);
        // One class: teacher p = σ(0) = 1/2, student q = σ(ln 3) = 3/4, T = 1.
        let s = Tensor::new(&[[(3f32).ln()]], &d).unwrap();
        let t = Tensor::new(&[[0f32]], &d).unwrap();
        let want = 0.5 * (0.5f64 / 0.75).ln() + 0.5 * (0.5f64 / 0.25).ln();
        let got = kd_sigmoid_loss(&s, &t, 1.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn hand_computed() {
        let d = Device::Cpu;
        let s = Tensor::new(&[[0f32, 0.0]], &d).unwrap(); // (1/2, 1/2)
        let t = Tensor::new(&[[(3f32).ln(), 0.0]], &d).unwrap(); // (3/4, 1/4)
        let want = 0.75 * (0.75f64 / 0.5).ln() + 0.25 * (0.25f64 / 0.5).ln();
        assert!(
            (kd_loss(&s, &t, 1.0).unwrap().to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6
        );
        assert!(
            kd_loss(&t, &t, 4.0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .abs()
                < 1e-6
        );
    }
}
