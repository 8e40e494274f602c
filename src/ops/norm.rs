//! Fused normalisation ops over the channel axis of `N×C×H×W` tensors.
//!
//! - [`batch_norm_train`]: BatchNorm in training mode, one forward op (statistics + normalise +
//!   affine) and one backward with the standard closed form (Ioffe & Szegedy 2015, §3):
//!   `dx = γ·σ⁻¹/M · (M·dy − Σdy − x̂·Σ(dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`, with `M = N·H·W`.
//!   It returns the batch mean and unbiased variance for the running statistics, as PyTorch.
//! - [`channel_affine`]: `y = x·s + t` with per-channel constants (FrozenBatchNorm2d, BatchNorm in
//!   eval mode), gradient to `x` only.
//!
//! candle's BatchNorm runs a dozen full-size ops (transpose, copy, mean, sub, sqr, div, …) and as
//! many in backward; these are two passes each way.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, to_f32_vec, with_f32, OutBuf};

/// Per-channel mean and inverse std of the last forward, for backward and running statistics.
#[derive(Debug, Default, Clone)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    /// Unbiased variance (PyTorch's running_var update uses it).
    pub var_unbiased: Vec<f32>,
}

struct BnTrain {
    eps: f64,
    stats: Arc<Mutex<BatchStats>>,
}

fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (n, c, h, w) = l.shape().dims4()?;
    Ok((n, c, h * w))
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "kdet-batch-norm-train"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, p) = dims(l1)?;
        let (x, gamma, beta) = (
            cpu_f32(s1, l1, "batch_norm")?,
            cpu_f32(s2, l2, "batch_norm")?,
            cpu_f32(s3, l3, "batch_norm")?,
        );
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!("batch_norm: weight/bias must have {c} elements")
        }
        let m = (n * p) as f64;
        if m < 2.0 {
            candle_core::bail!(
                "batch_norm: training needs more than one value per channel, got input {:?}",
                l1.dims()
            )
        }
        let mut y = OutBuf::new(x.len());
        let yp = y.sync_ptr();
        let stats: Vec<(f32, f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let planes = || (0..n).map(move |i| (i * c + ch) * p);
                // Two passes in f64 for the statistics, as exact as PyTorch's Welford on f32 data.
                let sum: f64 = planes()
                    .map(|o| x[o..o + p].iter().map(|&v| v as f64).sum::<f64>())
                    .sum();
                let mean = sum / m;
                let ss: f64 = planes()
                    .map(|o| {
                        x[o..o + p]
                            .iter()
                            .map(|&v| (v as f64 - mean).powi(2))
                            .sum::<f64>()
                    })
                    .sum();
                let var = ss / m;
                let invstd = 1.0 / (var + self.eps).sqrt();
                let (a, b) = (
                    (gamma[ch] as f64 * invstd) as f32,
                    (beta[ch] as f64 - mean * gamma[ch] as f64 * invstd) as f32,
                );
                for o in planes() {
                    // SAFETY: channel `ch` owns these index ranges of Y.
                    let out = unsafe { yp.uninit(o, p) };
                    for (dst, &v) in out.iter_mut().zip(&x[o..o + p]) {
                        dst.write(v * a + b);
                    }
                }
                (mean as f32, invstd as f32, (ss / (m - 1.0)) as f32)
            })
            .collect();
        let mut st = self.stats.lock().expect("stats lock");
        st.mean = stats.iter().map(|s| s.0).collect();
        st.invstd = stats.iter().map(|s| s.1).collect();
        st.var_unbiased = stats.iter().map(|s| s.2).collect();
        // SAFETY: the channel tasks wrote every plane of every channel.
        Ok((
            CpuStorage::F32(unsafe { y.assume_init() }),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let p = h * w;
        let g = to_f32_vec(gamma)?;
        let st = self.stats.lock().expect("stats lock").clone();
        let (dx, sums) = with_f32(x, |xv| {
            with_f32(dy, |dyv| bn_backward(xv, dyv, &g, &st, n, c, p))
        })??;
        let dev = x.device();
        let dgamma = Tensor::from_vec(
            sums.iter().map(|s| s.0).collect::<Vec<_>>(),
            gamma.dims(),
            dev,
        )?;
        let dbeta = Tensor::from_vec(
            sums.iter().map(|s| s.1).collect::<Vec<_>>(),
            beta.dims(),
            dev,
        )?;
        Ok((
            Some(Tensor::from_vec(dx, x.dims(), dev)?),
            Some(dgamma),
            Some(dbeta),
        ))
    }
}

/// dX and per-channel (Σ dy·x̂, Σ dy) of BatchNorm's backward.
fn bn_backward(
    xv: &[f32],
    dyv: &[f32],
    g: &[f32],
    st: &BatchStats,
    n: usize,
    c: usize,
    p: usize,
) -> (Vec<f32>, Vec<(f32, f32)>) {
    let m = (n * p) as f32;
    let mut dx = OutBuf::new(xv.len());
    let dxp = dx.sync_ptr();
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, inv) = (st.mean[ch], st.invstd[ch]);
            let (mut sdy, mut sdyx) = (0f64, 0f64);
            for i in 0..n {
                let o = (i * c + ch) * p;
                for (&v, &d) in xv[o..o + p].iter().zip(&dyv[o..o + p]) {
                    sdy += d as f64;
                    sdyx += (d * (v - mean) * inv) as f64;
                }
            }
            let (sdy, sdyx) = (sdy as f32, sdyx as f32);
            let k = g[ch] * inv / m;
            for i in 0..n {
                let o = (i * c + ch) * p;
                // SAFETY: channel `ch` owns these index ranges of dX.
                let out = unsafe { dxp.uninit(o, p) };
                for ((dst, &v), &d) in out.iter_mut().zip(&xv[o..o + p]).zip(&dyv[o..o + p]) {
                    let xhat = (v - mean) * inv;
                    dst.write(k * (m * d - sdy - xhat * sdyx));
                }
            }
            (sdyx, sdy)
        })
        .collect();
    // SAFETY: the channel tasks wrote every plane of every channel.
    (unsafe { dx.assume_init() }, sums)
}

/// BatchNorm over `N×C×H×W` in training mode. Returns the output and the batch statistics (mean,
/// unbiased variance) for the running-average update. CPU f32 only (callers fall back to
/// candle-nn's BatchNorm elsewhere).
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, BatchStats)> {
    let stats = Arc::new(Mutex::new(BatchStats::default()));
    let y = x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        BnTrain {
            eps,
            stats: stats.clone(),
        },
    )?;
    let st = stats.lock().expect("stats lock").clone();
    Ok((y, st))
}

struct ChannelAffine {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl CustomOp1 for ChannelAffine {
    fn name(&self) -> &'static str {
        "kdet-channel-affine"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, p) = dims(l)?;
        let x = cpu_f32(s, l, "channel_affine")?;
        let mut y = OutBuf::new(x.len());
        y.slots()
            .par_chunks_mut(p)
            .zip(x.par_chunks(p))
            .enumerate()
            .for_each(|(i, (o, xi))| {
                let ch = i % c;
                let (a, b) = (self.scale[ch], self.shift[ch]);
                for (o, &v) in o.iter_mut().zip(xi) {
                    o.write(v * a + b);
                }
            });
        // SAFETY: the chunks cover the whole buffer.
        Ok((
            CpuStorage::F32(unsafe { y.assume_init() }),
            l.shape().clone(),
        ))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, c, h, w) = x.dims4()?;
        let g = with_f32(dy, |d| {
            let mut g = OutBuf::new(d.len());
            g.slots()
                .par_chunks_mut(h * w)
                .zip(d.par_chunks(h * w))
                .enumerate()
                .for_each(|(i, (o, d))| {
                    let a = self.scale[i % c];
                    o.iter_mut().zip(d).for_each(|(o, &d)| {
                        o.write(d * a);
                    });
                });
            // SAFETY: the chunks cover the whole buffer.
            unsafe { g.assume_init() }
        })?;
        Ok(Some(Tensor::from_vec(g, x.dims(), x.device())?))
    }
}

/// `y[:, c] = x[:, c] · scale[c] + shift[c]`; the gradient flows to `x` only.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> candle_core::Result<Tensor> {
    let c = scale.elem_count();
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let op = ChannelAffine {
            scale: to_f32_vec(scale)?,
            shift: to_f32_vec(shift)?,
        };
        return x.contiguous()?.apply_op1(op);
    }
    x.broadcast_mul(&scale.detach().reshape((1, c, 1, 1))?)?
        .broadcast_add(&shift.detach().reshape((1, c, 1, 1))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::assert_grad_matches_fd;
    use candle_core::{Device, ModuleT, Var};

    fn t(shape: &[usize], seed: usize) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i + seed) * 7919 % 1009) as f32 / 1009.0 - 0.5) * 3.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn batch_norm_matches_candle_nn() {
        let shape = [3, 4, 5, 7];
        let x = Var::from_tensor(&t(&shape, 1)).unwrap();
        let w = Var::from_tensor(&(t(&[4], 3) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&t(&[4], 5)).unwrap();
        let r = t(&shape, 9);
        let (y, st) = batch_norm_train(&x, &w, &b, 1e-5).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        // Reference: candle-nn's BatchNorm in train mode on the same data.
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let bn = candle_nn::batch_norm(4, candle_nn::BatchNormConfig::default(), vb).unwrap();
        {
            let d = vm.data().lock().unwrap();
            d["weight"].set(w.as_tensor()).unwrap();
            d["bias"].set(b.as_tensor()).unwrap();
        }
        let x2 = Var::from_tensor(x.as_tensor()).unwrap();
        let y2 = bn.forward_t(&x2, true).unwrap();
        let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        close(&y, &y2, 1e-5, "y");
        close(g.get(&x).unwrap(), g2.get(&x2).unwrap(), 1e-4, "dx");
        let d = vm.data().lock().unwrap();
        close(
            g.get(&w).unwrap(),
            g2.get(&d["weight"]).unwrap(),
            1e-4,
            "dw",
        );
        close(g.get(&b).unwrap(), g2.get(&d["bias"]).unwrap(), 1e-4, "db");
        // candle-nn's running_var after one step from 1: 0.9 + 0.1 · unbiased var.
        let rv = d["running_var"].as_tensor().to_vec1::<f32>().unwrap();
        for (c, v) in rv.iter().enumerate() {
            assert!((v - (0.9 + 0.1 * st.var_unbiased[c])).abs() < 1e-5);
        }
    }

    #[test]
    fn batch_norm_gradient_finite_differences() {
        let shape = [2, 2, 3, 3];
        let x = t(&shape, 2);
        let w = Tensor::new(&[1.5f32, -0.5], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.1f32, 0.2], &Device::Cpu).unwrap();
        assert_grad_matches_fd(
            |v| batch_norm_train(v, &w, &b, 1e-5).unwrap().0,
            &x,
            1e-2,
            5e-3,
            "batch_norm dx",
        );
    }

    #[test]
    fn channel_affine_matches_broadcast() {
        let x = Var::from_tensor(&t(&[2, 3, 4, 5], 1)).unwrap();
        let s = t(&[3], 2);
        let sh = t(&[3], 3);
        let r = t(&[2, 3, 4, 5], 4);
        let a = channel_affine(&x, &s, &sh).unwrap();
        let b = x
            .broadcast_mul(&s.reshape((1, 3, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&sh.reshape((1, 3, 1, 1)).unwrap())
            .unwrap();
        close(&a, &b, 1e-6, "y");
        let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        close(ga.get(&x).unwrap(), gb.get(&x).unwrap(), 1e-6, "dx");
    }
}
