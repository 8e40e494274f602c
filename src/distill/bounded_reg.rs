//! Teacher-bounded L2 regression (Chen et al. 2017, Eq. 4): for each positive sample,
//! `L_b = ‖R_s − y‖²` if `‖R_s − y‖² + m > ‖R_t − y‖²`, else 0 — the student is pushed towards the
//! ground truth only while it is not at least `m` better than the teacher. Summed over the
//! positives and divided by `normalizer` — the number of sampled anchors or RoIs, as the paper's
//! `(1/N) Σ_j L_reg(j)` (Eq. 1) and torchvision's smooth-L1 box loss, so the two regression terms
//! are on one scale. The weight ν is applied by the caller.

use candle_core::Tensor;

/// `student`, `teacher`, `target`: `K × 4` deltas of the positive samples.
pub fn bounded_l2(
    student: &Tensor,
    teacher: &Tensor,
    target: &Tensor,
    margin: f64,
    normalizer: f64,
) -> candle_core::Result<Tensor> {
    if student.dim(0)? == 0 {
        return student.sum_all()? * 0.0;
    }
    let es = (student - target)?.sqr()?.sum(1)?;
    let et = (teacher.detach() - target)?.sqr()?.sum(1)?;
    let active = (&es + margin)?.gt(&et)?.to_dtype(es.dtype())?;
    (es * active)?.sum_all()? / normalizer.max(1.0)
}

/// Plain L2 regression distillation, `‖R_s − R_t‖²` over the positives / `normalizer`: the teacher's output
/// used as the target (the "L2" row of Chen et al. 2017 Table 4; it hurt there, because the
/// teacher's regression can point the wrong way — the reason for the bound).
pub fn plain_l2(
    student: &Tensor,
    teacher: &Tensor,
    normalizer: f64,
) -> candle_core::Result<Tensor> {
    if student.dim(0)? == 0 {
        return student.sum_all()? * 0.0;
    }
    (student - teacher.detach())?.sqr()?.sum_all()? / normalizer.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn bound_switches_the_loss_off() {
        let d = Device::Cpu;
        let y = Tensor::new(&[[0f32, 0., 0., 0.], [0., 0., 0., 0.]], &d).unwrap();
        // Sample 0: student error 1, teacher error 4 → student better → 0.
        // Sample 1: student error 4 (2²), teacher error 1 → 4.
        let s = Var::new(&[[1f32, 0., 0., 0.], [0., 2., 0., 0.]], &d).unwrap();
        let t = Tensor::new(&[[2f32, 0., 0., 0.], [0., 1., 0., 0.]], &d).unwrap();
        let l = bounded_l2(&s, &t, &y, 0.0, 2.0).unwrap();
        assert_eq!(l.to_scalar::<f32>().unwrap(), 2.0);
        // Divided by the number of sampled boxes, positives or not (here 8).
        assert_eq!(
            bounded_l2(&s, &t, &y, 0.0, 8.0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.5
        );
        // A margin of 3.5 makes sample 0 active too: (1 + 4) / 2.
        assert_eq!(
            bounded_l2(&s, &t, &y, 3.5, 2.0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            2.5
        );
        // Zero when the student is below the teacher's error minus the margin everywhere.
        let good = Tensor::new(&[[0.1f32, 0., 0., 0.], [0., 0.1, 0., 0.]], &d).unwrap();
        assert_eq!(
            bounded_l2(&good, &t, &y, 0.0, 2.0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let g = l.backward().unwrap();
        let gv = g.get(&s).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(gv, vec![vec![0., 0., 0., 0.], vec![0., 2., 0., 0.]]);
        // Plain L2 to the teacher: (1² + 1²) / 2.
        assert_eq!(
            plain_l2(&s, &t, 2.0).unwrap().to_scalar::<f32>().unwrap(),
            1.0
        );
    }
}
