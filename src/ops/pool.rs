//! 2-D max pooling with padding and overlapping windows (ResNet's 3×3/s2/p1 stem pool), as a candle
//! custom op with a backward that sends each output's gradient to its window's arg-max.
//!
//! candle 0.11's `max_pool2d` has no padding and differentiates only kernel == stride. The arg-max
//! follows PyTorch's CPU kernel: scan the window row-major, take a value when it is `> max` or
//! NaN, so ties go to the first position; padding never wins (it is not read). Output size as
//! PyTorch with `ceil_mode=False`: `(H + 2p - k) / s + 1`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Max-pool window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolParams {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

fn out_size(n: usize, p: &PoolParams) -> candle_core::Result<usize> {
    if p.kernel == 0 || p.stride == 0 || 2 * p.padding > p.kernel || n + 2 * p.padding < p.kernel {
        candle_core::bail!(
            "max_pool2d: invalid window {p:?} for size {n} (PyTorch requires padding <= kernel/2)"
        )
    }
    Ok((n + 2 * p.padding - p.kernel) / p.stride + 1)
}

/// For every output position of one plane, the flat index of its window's arg-max.
fn argmax_plane(
    x: &[f32],
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    p: &PoolParams,
    out: &mut [usize],
) {
    for oy in 0..oh {
        let y0 = (oy * p.stride) as isize - p.padding as isize;
        let (ys, ye) = (
            y0.max(0) as usize,
            ((y0 + p.kernel as isize) as usize).min(h),
        );
        for ox in 0..ow {
            let x0 = (ox * p.stride) as isize - p.padding as isize;
            let (xs, xe) = (
                x0.max(0) as usize,
                ((x0 + p.kernel as isize) as usize).min(w),
            );
            let mut best = ys * w + xs;
            let mut max = f32::NEG_INFINITY;
            for yy in ys..ye {
                for xx in xs..xe {
                    let v = x[yy * w + xx];
                    if v > max || v.is_nan() {
                        max = v;
                        best = yy * w + xx;
                        if v.is_nan() {
                            break;
                        }
                    }
                }
                if max.is_nan() {
                    break;
                }
            }
            out[oy * ow + ox] = best;
        }
    }
}

fn dims4(l: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    super::cpu_f32(s, l, "max_pool2d")
}

struct MaxPool(PoolParams);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "kdet-max-pool2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l)?;
        let (oh, ow) = (out_size(h, &self.0)?, out_size(w, &self.0)?);
        let x = slice(s, l)?;
        let mut y = vec![0f32; n * c * oh * ow];
        y.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each_init(
                || vec![0usize; oh * ow],
                |idx, (yp, xp)| {
                    argmax_plane(xp, h, w, oh, ow, &self.0, idx);
                    for (o, &i) in yp.iter_mut().zip(idx.iter()) {
                        *o = xp[i];
                    }
                },
            );
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.contiguous()?.apply_op2_no_bwd(
            &dy.contiguous()?,
            &MaxPoolGrad(self.0),
        )?))
    }
}

/// `(X, dY) → dX`.
struct MaxPoolGrad(PoolParams);

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "kdet-max-pool2d-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l1)?;
        let (oh, ow) = (out_size(h, &self.0)?, out_size(w, &self.0)?);
        if l2.dims() != [n, c, oh, ow] {
            candle_core::bail!(
                "max_pool2d backward: gradient shape {:?} does not match the output",
                l2.dims()
            )
        }
        let (x, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w).zip(dy.par_chunks(oh * ow)))
            .for_each_init(
                || vec![0usize; oh * ow],
                |idx, (dxp, (xp, dyp))| {
                    argmax_plane(xp, h, w, oh, ow, &self.0, idx);
                    for (&i, g) in idx.iter().zip(dyp) {
                        dxp[i] += g;
                    }
                },
            );
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
}

/// Max-pool `x: N×C×H×W`. On CPU f32 the kdet op (trainable with any window); elsewhere candle's
/// built-in after explicit `-inf` padding (its backward then needs kernel == stride).
pub fn max_pool2d(x: &Tensor, p: PoolParams) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(MaxPool(p));
    }
    let x = if p.padding > 0 {
        let (n, c, h, w) = x.dims4()?;
        let pad = p.padding;
        let ninf = |hh: usize, ww: usize| {
            Tensor::full(f32::NEG_INFINITY, (n, c, hh, ww), x.device())?.to_dtype(x.dtype())
        };
        let x = Tensor::cat(&[&ninf(h, pad)?, x, &ninf(h, pad)?], 3)?;
        Tensor::cat(&[&ninf(pad, w + 2 * pad)?, &x, &ninf(pad, w + 2 * pad)?], 2)?
    } else {
        x.clone()
    };
    x.max_pool2d_with_stride(p.kernel, p.stride)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::assert_grad_matches_fd;
    use candle_core::{Device, Var};

    const STEM: PoolParams = PoolParams {
        kernel: 3,
        stride: 2,
        padding: 1,
    };

    #[test]
    fn forward_and_ties_like_pytorch() {
        // 1×1×4×4 with a tie in the first window: PyTorch picks the first (row-major) maximum.
        let x = Tensor::from_vec(
            vec![
                5., 5., 1., 2., 0., 5., 3., 9., 1., 1., 1., 1., 7., 0., 0., 8f32,
            ],
            (1, 1, 4, 4),
            &Device::Cpu,
        )
        .unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let y = max_pool2d(&xv, STEM).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![5., 9., 7., 9.]
        );
        let g = y.sum_all().unwrap().backward().unwrap();
        let dx = g
            .get(&xv)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Window (0,0) covers rows 0..2, cols 0..2: the first 5 (index 0) wins the tie. The 9 at
        // (1,3) is the maximum of two overlapping windows and collects both gradients.
        assert_eq!(
            dx,
            vec![1., 0., 0., 0., 0., 0., 0., 2., 0., 0., 0., 0., 1., 0., 0., 0.]
        );
        // A constant plane: every window's gradient lands on its first (clipped) element —
        // windows start at rows/cols 0 and 1 (stride 2 from -1, clipped to the image).
        let c = Var::from_tensor(&Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let g = max_pool2d(&c, STEM)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dc = g
            .get(&c)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(dc, vec![1., 1., 0., 1., 1., 0., 0., 0., 0.]);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // Distinct values (no ties) so the function is differentiable at the sample point.
        let (n, c, h, w) = (2, 3, 9, 7);
        let len = n * c * h * w;
        let vals: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % len) as f32 * 0.37 - 20.0)
            .collect();
        let x = Tensor::from_vec(vals, (n, c, h, w), &Device::Cpu).unwrap();
        // Neighbouring values differ by ≥ 0.37, so ±0.1 never changes an arg-max.
        assert_grad_matches_fd(
            |t| max_pool2d(t, STEM).unwrap(),
            &x,
            0.1,
            1e-2,
            "max_pool2d dx",
        );
    }

    #[test]
    fn matches_candle_without_padding() {
        let x = Tensor::from_vec(
            (0..2 * 2 * 8 * 8)
                .map(|i| ((i * 37) % 101) as f32)
                .collect(),
            (2, 2, 8, 8),
            &Device::Cpu,
        )
        .unwrap();
        let p = PoolParams {
            kernel: 2,
            stride: 2,
            padding: 0,
        };
        let a = max_pool2d(&x, p).unwrap();
        let b = x.max_pool2d_with_stride(2, 2).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
