//! Test helper: an op's analytic gradient against central finite differences.

use candle_core::{Device, Tensor, Var};

/// For `loss(x) = Σ r ⊙ op(x)` with fixed pseudo-random weights `r`, assert that the gradient
/// autograd computes for `x` equals `(loss(x + h·eᵢ) − loss(x − h·eᵢ)) / 2h` for every element,
/// within `tol · (1 + |gᵢ|)`. `what` names the case in failures.
pub fn assert_grad_matches_fd(
    op: impl Fn(&Tensor) -> Tensor,
    x: &Tensor,
    h: f32,
    tol: f32,
    what: &str,
) {
    let var = Var::from_tensor(x).unwrap();
    let y = op(&var);
    let n = y.elem_count();
    let r: Vec<f32> = (0..n)
        .map(|i| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let r = Tensor::from_vec(r, y.dims(), &Device::Cpu).unwrap();
    let loss = |t: &Tensor| {
        (op(t) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let grad = g
        .get(&var)
        .expect("x receives a gradient")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let base = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for i in 0..base.len() {
        let at = |d: f32| {
            let mut v = base.clone();
            v[i] += d;
            loss(&Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap())
        };
        let num = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (num - grad[i]).abs() < tol * (1.0 + grad[i].abs()),
            "{what}[{i}]: analytic {} vs numeric {num}",
            grad[i]
        );
    }
}
