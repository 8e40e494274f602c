//! RoIAlign (He et al. 2017) as torchvision's CPU kernel (`torchvision/csrc/ops/cpu/
//! roi_align_kernel.cpp`) with `aligned=False`: a RoI `(b, x1, y1, x2, y2)` in image pixels is
//! scaled by `spatial_scale`, widened to at least 1×1, split into `out × out` bins, each averaged
//! over `sampling_ratio²` bilinear samples (or `ceil(roi / out)` per side when the ratio is 0).
//! A candle custom op with a CPU forward (parallel over RoIs) and backward (parallel over
//! channels, so the scatter-add of every RoI into the feature gradient never races), and with
//! the `cuda` feature CUDA kernels for both (src/ops/kernels.cu: one thread per output element,
//! the backward scatter-adding with atomics), plus torchvision's `MultiScaleRoIAlign` level
//! assignment.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::boxes::Box4;
use super::{cpu_f32, OutBuf};

/// RoIAlign parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiAlignParams {
    pub output_size: usize,
    pub spatial_scale: f32,
    pub sampling_ratio: usize,
}

/// The bilinear taps of one sample point: four (flat index, weight) pairs, or none outside.
#[inline]
fn taps(h: usize, w: usize, mut y: f32, mut x: f32) -> Option<[(usize, f32); 4]> {
    if y < -1.0 || y > h as f32 || x < -1.0 || x > w as f32 {
        return None;
    }
    if y <= 0.0 {
        y = 0.0;
    }
    if x <= 0.0 {
        x = 0.0;
    }
    let (mut y_low, mut x_low) = (y as usize, x as usize);
    let y_high = if y_low >= h - 1 {
        y_low = h - 1;
        y = y_low as f32;
        y_low
    } else {
        y_low + 1
    };
    let x_high = if x_low >= w - 1 {
        x_low = w - 1;
        x = x_low as f32;
        x_low
    } else {
        x_low + 1
    };
    let (ly, lx) = (y - y_low as f32, x - x_low as f32);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    Some([
        (y_low * w + x_low, hy * hx),
        (y_low * w + x_high, hy * lx),
        (y_high * w + x_low, ly * hx),
        (y_high * w + x_high, ly * lx),
    ])
}

/// The bilinear taps of every sample of each output bin (row-major).
type BinTaps = Vec<Vec<[(usize, f32); 4]>>;

/// Sample geometry of one RoI: its bins' taps and the divisor (samples per bin).
fn roi_samples(roi: &[f32], h: usize, w: usize, p: &RoiAlignParams) -> (BinTaps, f32) {
    let s = p.spatial_scale;
    let (x1, y1, x2, y2) = (roi[1] * s, roi[2] * s, roi[3] * s, roi[4] * s);
    let roi_w = (x2 - x1).max(1.0);
    let roi_h = (y2 - y1).max(1.0);
    let o = p.output_size;
    let bin_h = roi_h / o as f32;
    let bin_w = roi_w / o as f32;
    let grid_h = if p.sampling_ratio > 0 {
        p.sampling_ratio
    } else {
        (roi_h / o as f32).ceil() as usize
    };
    let grid_w = if p.sampling_ratio > 0 {
        p.sampling_ratio
    } else {
        (roi_w / o as f32).ceil() as usize
    };
    let count = (grid_h * grid_w).max(1) as f32;
    let mut bins = Vec::with_capacity(o * o);
    for ph in 0..o {
        for pw in 0..o {
            let mut t = Vec::with_capacity(grid_h * grid_w);
            for iy in 0..grid_h {
                let y = y1 + ph as f32 * bin_h + (iy as f32 + 0.5) * bin_h / grid_h as f32;
                for ix in 0..grid_w {
                    let x = x1 + pw as f32 * bin_w + (ix as f32 + 0.5) * bin_w / grid_w as f32;
                    if let Some(tp) = taps(h, w, y, x) {
                        t.push(tp);
                    }
                }
            }
            bins.push(t);
        }
    }
    (bins, count)
}

struct RoiAlign(RoiAlignParams);

impl CustomOp2 for RoiAlign {
    fn name(&self) -> &'static str {
        "kdet-roi-align"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        check_rois(l2)?;
        let k = l2.shape().dims2()?.0;
        let (x, rois) = (cpu_f32(s1, l1, "roi_align")?, cpu_f32(s2, l2, "roi_align")?);
        let o = self.0.output_size;
        let mut out = OutBuf::new(k * c * o * o);
        let res: candle_core::Result<()> = out
            .slots()
            .par_chunks_mut(c * o * o)
            .enumerate()
            .try_for_each(|(r, dst)| {
                let roi = &rois[r * 5..r * 5 + 5];
                let b = roi[0] as usize;
                if b >= n {
                    candle_core::bail!("roi_align: RoI {r} names image {b} of a batch of {n}")
                }
                let (bins, count) = roi_samples(roi, h, w, &self.0);
                for ch in 0..c {
                    let plane = &x[(b * c + ch) * h * w..(b * c + ch + 1) * h * w];
                    for (bi, taps) in bins.iter().enumerate() {
                        let mut v = 0f32;
                        for t in taps {
                            v += t[0].1 * plane[t[0].0]
                                + t[1].1 * plane[t[1].0]
                                + t[2].1 * plane[t[2].0]
                                + t[3].1 * plane[t[3].0];
                        }
                        dst[ch * o * o + bi].write(v / count);
                    }
                }
                Ok(())
            });
        res?;
        // SAFETY: each RoI task wrote all its c·o·o outputs.
        Ok((
            CpuStorage::F32(unsafe { out.assume_init() }),
            Shape::from((k, c, o, o)),
        ))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        check_rois(l2)?;
        super::cuda::roi_align_fwd((s1, l1), (s2, l2), &self.0)
    }
    fn bwd(
        &self,
        x: &Tensor,
        rois: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = dy.contiguous()?.apply_op2_no_bwd(
            rois,
            &RoiAlignGrad {
                p: self.0,
                dims: x.dims4()?,
            },
        )?;
        Ok((Some(dx), None))
    }
}

fn check_rois(l: &Layout) -> candle_core::Result<()> {
    if l.shape().dims2()?.1 != 5 {
        candle_core::bail!("roi_align: rois must be K×5 (batch index, x1, y1, x2, y2)")
    }
    Ok(())
}

/// RoIAlign's backward as an op of its own, `(dy, rois) → dfeatures`, so that it runs where
/// the tensors are (CPU or GPU kernel) without copying feature-sized gradients.
struct RoiAlignGrad {
    p: RoiAlignParams,
    /// `(n, c, h, w)` of the features.
    dims: (usize, usize, usize, usize),
}

impl CustomOp2 for RoiAlignGrad {
    fn name(&self) -> &'static str {
        "kdet-roi-align-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.dims;
        let o = self.p.output_size;
        let (g, rv) = (cpu_f32(s1, l1, "roi_align")?, cpu_f32(s2, l2, "roi_align")?);
        let k = rv.len() / 5;
        let geo: Vec<(usize, BinTaps, f32)> = (0..k)
            .into_par_iter()
            .map(|r| {
                let roi = &rv[r * 5..r * 5 + 5];
                let (bins, count) = roi_samples(roi, h, w, &self.p);
                (roi[0] as usize, bins, count)
            })
            .collect();
        let mut dx = vec![0f32; n * c * h * w];
        // One task per (image, channel) plane: every RoI of that image adds into it.
        dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, d)| {
            let (b, ch) = (plane / c, plane % c);
            for (r, (rb, bins, count)) in geo.iter().enumerate() {
                if *rb != b {
                    continue;
                }
                for (bi, taps) in bins.iter().enumerate() {
                    let gv = g[(r * c + ch) * o * o + bi] / count;
                    for t in taps {
                        for &(idx, wt) in t {
                            d[idx] += wt * gv;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        check_rois(l2)?;
        super::cuda::roi_align_bwd((s1, l1), (s2, l2), self.dims, &self.p)
    }
}

/// RoIAlign of `rois` (`K×5`: batch index, x1, y1, x2, y2 in image pixels) on `features`
/// (`N×C×H×W`), giving `K×C×out×out`. f32 kernels on the CPU and (the `cuda` feature) on CUDA;
/// other dtypes — an f16 teacher — are pooled in f32 and cast back; features on another device
/// (Metal) are pooled on the CPU and moved back, logged once.
pub fn roi_align(
    features: &Tensor,
    rois: &Tensor,
    p: RoiAlignParams,
) -> candle_core::Result<Tensor> {
    let dev = features.device();
    if dev.is_cpu() || (cfg!(feature = "cuda") && dev.is_cuda()) {
        let f32 = candle_core::DType::F32;
        let y = features.to_dtype(f32)?.contiguous()?.apply_op2(
            &rois.to_device(dev)?.to_dtype(f32)?.contiguous()?,
            RoiAlign(p),
        )?;
        return y.to_dtype(features.dtype());
    }
    static WARN: std::sync::Once = std::sync::Once::new();
    WARN.call_once(|| {
        if features.device().is_cpu() {
            return;
        }
        eprintln!(
            "kdet: roi_align has no {:?} kernel; pooling on the CPU",
            features.device().location()
        )
    });
    let dev = features.device().clone();
    let f = features
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?;
    let r = rois.to_device(&candle_core::Device::Cpu)?;
    f.contiguous()?
        .apply_op2(
            &r.to_dtype(candle_core::DType::F32)?.contiguous()?,
            RoiAlign(p),
        )?
        .to_device(&dev)?
        .to_dtype(features.dtype())
}

/// torchvision's `LevelMapper` (FPN paper Eq. 1): level `floor(4 + log2(sqrt(area) / 224) + 1e-6)`
/// clamped to `[k_min, k_max]`, returned relative to `k_min`.
pub fn map_levels(boxes: &[Box4], k_min: i32, k_max: i32) -> Vec<usize> {
    boxes
        .iter()
        .map(|b| {
            let s = ((b[2] - b[0]) * (b[3] - b[1])).sqrt();
            let lvl = (4.0 + (s / 224.0).log2() + 1e-6f32).floor() as i32;
            (lvl.clamp(k_min, k_max) - k_min) as usize
        })
        .collect()
}

/// torchvision's `MultiScaleRoIAlign`: each RoI pooled from the level its size maps to.
/// `features[l]` has scale `scales[l]` (1/4, 1/8, …); `boxes[i]` are image i's RoIs. Output rows
/// follow the RoIs in image order.
pub fn multi_scale_roi_align(
    features: &[Tensor],
    scales: &[f32],
    boxes: &[Vec<Box4>],
    output_size: usize,
    sampling_ratio: usize,
) -> candle_core::Result<Tensor> {
    let all: Vec<(usize, Box4)> = boxes
        .iter()
        .enumerate()
        .flat_map(|(i, bs)| bs.iter().map(move |b| (i, *b)))
        .collect();
    let dev = features[0].device();
    let c = features[0].dim(1)?;
    if all.is_empty() {
        return Tensor::zeros((0, c, output_size, output_size), features[0].dtype(), dev);
    }
    let k_min = -scales[0].log2().round() as i32;
    let k_max = -scales[scales.len() - 1].log2().round() as i32;
    let levels = map_levels(&all.iter().map(|x| x.1).collect::<Vec<_>>(), k_min, k_max);
    let mut pooled = Vec::new();
    let mut order = Vec::with_capacity(all.len());
    for (l, (f, &scale)) in features.iter().zip(scales).enumerate() {
        let idx: Vec<usize> = (0..all.len()).filter(|&i| levels[i] == l).collect();
        if idx.is_empty() {
            continue;
        }
        let flat: Vec<f32> = idx
            .iter()
            .flat_map(|&i| {
                let (b, bx) = all[i];
                [b as f32, bx[0], bx[1], bx[2], bx[3]]
            })
            .collect();
        let rois = Tensor::from_vec(flat, (idx.len(), 5), dev)?;
        pooled.push(roi_align(
            f,
            &rois,
            RoiAlignParams {
                output_size,
                spatial_scale: scale,
                sampling_ratio,
            },
        )?);
        order.extend(idx);
    }
    let cat = Tensor::cat(&pooled, 0)?;
    // Put rows back in RoI order: row `order[j]` of the result is row j of `cat`.
    let mut inverse = vec![0u32; order.len()];
    for (j, &i) in order.iter().enumerate() {
        inverse[i] = j as u32;
    }
    cat.index_select(&Tensor::from_vec(inverse, all.len(), dev)?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::assert_grad_matches_fd;
    use candle_core::Device;

    fn feat(n: usize, c: usize, h: usize, w: usize) -> Tensor {
        let v: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0)
            .collect();
        Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn constant_and_linear_maps() {
        // On f(y, x) = x the bilinear samples of an interior RoI average to the bin centres.
        let (h, w) = (8, 10);
        let v: Vec<f32> = (0..h * w).map(|i| (i % w) as f32).collect();
        let f = Tensor::from_vec(v, (1, 1, h, w), &Device::Cpu).unwrap();
        let rois = Tensor::new(&[[0f32, 2.0, 1.0, 6.0, 5.0]], &Device::Cpu).unwrap();
        let y = roi_align(
            &f,
            &rois,
            RoiAlignParams {
                output_size: 2,
                spatial_scale: 1.0,
                sampling_ratio: 2,
            },
        )
        .unwrap();
        // Bins of width 2 starting at x = 2: centres 3 and 5.
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![3.0, 5.0, 3.0, 5.0]
        );
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x = feat(2, 3, 6, 7);
        let rois = Tensor::new(
            &[
                [1f32, 1.3, 0.7, 9.9, 8.2],
                [0.0, -2.0, 3.0, 5.0, 20.0],
                [1.0, 4.0, 4.0, 4.5, 4.2],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let p = RoiAlignParams {
            output_size: 3,
            spatial_scale: 0.5,
            sampling_ratio: 0,
        };
        assert_grad_matches_fd(
            |t| roi_align(t, &rois, p).unwrap(),
            &x,
            1e-2,
            2e-3,
            "roi_align dfeatures",
        );
    }

    #[test]
    fn level_mapper_like_torchvision() {
        // sqrt(area) 224 → level 4; 112 → 3; 56 → 2; tiny → clamped to k_min; huge → k_max.
        let b = |s: f32| [0.0, 0.0, s, s];
        assert_eq!(
            map_levels(&[b(224.), b(112.), b(56.), b(2.), b(2000.)], 2, 5),
            vec![2, 1, 0, 0, 3]
        );
    }

    #[test]
    fn multi_scale_keeps_roi_order() {
        let f0 = feat(1, 2, 16, 16);
        let f1 = feat(1, 2, 8, 8);
        let boxes = vec![vec![
            [0., 0., 300., 300.],
            [0., 0., 10., 10.],
            [5., 5., 200., 220.],
        ]];
        let y =
            multi_scale_roi_align(&[f0.clone(), f1.clone()], &[0.25, 0.125], &boxes, 2, 2).unwrap();
        let lone = |f: &Tensor, s: f32, b: [f32; 4]| {
            roi_align(
                f,
                &Tensor::new(&[[0f32, b[0], b[1], b[2], b[3]]], &Device::Cpu).unwrap(),
                RoiAlignParams {
                    output_size: 2,
                    spatial_scale: s,
                    sampling_ratio: 2,
                },
            )
            .unwrap()
        };
        let row = |i: usize| {
            y.get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(
            row(0),
            lone(&f1, 0.125, boxes[0][0])
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        assert_eq!(
            row(1),
            lone(&f0, 0.25, boxes[0][1])
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        assert_eq!(
            row(2),
            lone(&f1, 0.125, boxes[0][2])
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }
}
