//! The losses torchvision's Faster R-CNN uses, numerically stable.

use candle_core::{Tensor, D};

/// Σ smooth-L1 with transition `beta` (torchvision uses β = 1/9 in both RPN and box head):
/// `0.5·x²/β` for |x| < β, `|x| − 0.5·β` above.
pub fn smooth_l1_sum(pred: &Tensor, target: &Tensor, beta: f64) -> candle_core::Result<Tensor> {
    let d = (pred - target)?.abs()?;
    let quad = (d.sqr()? * (0.5 / beta))?;
    let lin = (&d - 0.5 * beta)?;
    d.lt(beta)?.where_cond(&quad, &lin)?.sum_all()
}

/// Mean binary cross-entropy with logits: `max(x, 0) − x·z + log(1 + e^{−|x|})`.
pub fn bce_with_logits_mean(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let pos = logits.relu()?;
    let soft = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((pos - (logits * targets)?)? + soft)?.mean_all()
}

/// Mean cross-entropy of `logits` (`K × C`) against class indices (`K`, u32).
pub fn cross_entropy_mean(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    logp.gather(&labels.unsqueeze(1)?, 1)?.neg()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn hand_values() {
        let d = Device::Cpu;
        let p = Tensor::new(&[0.05f32, 1.0, -2.0], &d).unwrap();
        let t = Tensor::new(&[0.0f32, 0.0, 0.0], &d).unwrap();
        let b = 1.0 / 9.0;
        let want = 0.5 * 0.05f64.powi(2) / b + (1.0 - 0.5 * b) + (2.0 - 0.5 * b);
        assert!(
            (smooth_l1_sum(&p, &t, b)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
                - want)
                .abs()
                < 1e-5
        );
        let x = Tensor::new(&[100f32, -100.0, 0.0], &d).unwrap();
        let z = Tensor::new(&[1f32, 1.0, 0.0], &d).unwrap();
        // 0 + 100 + ln 2, over 3.
        let want = (100.0 + 2f64.ln()) / 3.0;
        assert!(
            (bce_with_logits_mean(&x, &z)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
                - want)
                .abs()
                < 1e-4
        );
        let l = Tensor::new(&[[0f32, 0.0], [10.0, 0.0]], &d).unwrap();
        let y = Tensor::new(&[1u32, 0], &d).unwrap();
        let want = (2f64.ln() + (1.0 + (-10f64).exp()).ln()) / 2.0;
        assert!(
            (cross_entropy_mean(&l, &y)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
                - want)
                .abs()
                < 1e-5
        );
    }
}
