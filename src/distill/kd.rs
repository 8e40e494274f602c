//! Temperature knowledge distillation (Hinton et al. 2015): `T² · KL(softmax(t/T) ‖ softmax(s/T))`
//! averaged over samples; the T² keeps gradient magnitudes comparable across temperatures.

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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
