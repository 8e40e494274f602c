//! Non-maximum suppression as torchvision's `nms` / `batched_nms`: greedy in decreasing score
//! order, a box is dropped when its IoU with a kept box is **greater** than the threshold; the
//! batched form runs it per class (`_batched_nms_vanilla`) and returns indices by decreasing score.
//! [`nms_tensor`] / [`batched_nms_tensor`] take boxes in a tensor and compute the IoU mask
//! where they are (a CUDA kernel on a GPU), as torchvision's CUDA `nms`.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::boxes::{area, Box4};

/// Indices of kept boxes, in decreasing score order.
pub fn nms(boxes: &[Box4], scores: &[f32], thresh: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // Stable sort: equal scores keep their input order.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let areas: Vec<f32> = boxes.iter().map(area).collect();
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i];
        for &j in &order[oi + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            if inter / (areas[i] + areas[j] - inter) > thresh {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// NMS within each group (`idxs[i]` is box i's class or level); kept indices by decreasing score.
///
/// Like torchvision on CPU: up to 1000 boxes it offsets each group by `idx · (max coordinate + 1)`
/// and runs one NMS (`_batched_nms_coordinate_trick`); above, it runs NMS per group
/// (`_batched_nms_vanilla`). Both give the same sets up to float rounding of the offsets, which
/// is why the choice is mirrored exactly.
pub fn batched_nms(boxes: &[Box4], scores: &[f32], idxs: &[usize], thresh: f32) -> Vec<usize> {
    if boxes.is_empty() {
        return vec![];
    }
    if boxes.len() * 4 <= 4000 {
        let max = boxes
            .iter()
            .flat_map(|b| b.iter().copied())
            .fold(f32::NEG_INFINITY, f32::max);
        let shifted: Vec<Box4> = boxes
            .iter()
            .zip(idxs)
            .map(|(b, &g)| {
                let o = g as f32 * (max + 1.0);
                [b[0] + o, b[1] + o, b[2] + o, b[3] + o]
            })
            .collect();
        return nms(&shifted, scores, thresh);
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &g) in idxs.iter().enumerate() {
        groups.entry(g).or_default().push(i);
    }
    let mut keep = Vec::new();
    for members in groups.values() {
        let b: Vec<Box4> = members.iter().map(|&i| boxes[i]).collect();
        let s: Vec<f32> = members.iter().map(|&i| scores[i]).collect();
        keep.extend(nms(&b, &s, thresh).into_iter().map(|k| members[k]));
    }
    keep.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    keep
}

/// NMS's suppression mask of boxes sorted by decreasing score (`N × 4` f32): row i holds
/// `ceil(N / 64)` 64-bit words (as pairs of u32, low word first); bit j of word w is set when
/// box `64·w + j` comes after box i and their IoU is greater than the threshold — torchvision's
/// CUDA `nms_kernel` layout. CPU kernel here, CUDA kernel in kernels.cu (`kdet_nms_mask`).
pub(crate) struct NmsMask(pub(crate) f32);

/// Words of 64 boxes per mask row.
fn mask_words(n: usize) -> usize {
    n.div_ceil(64)
}

impl CustomOp1 for NmsMask {
    fn name(&self) -> &'static str {
        "kdet-nms-mask"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l.shape().dims2()?.0;
        let b = super::cpu_f32(s, l, "nms")?;
        let words = mask_words(n);
        let mut mask = vec![0u32; n * words * 2];
        for i in 0..n {
            let bi: Box4 = [b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]];
            let ai = area(&bi);
            for j in i + 1..n {
                let bj: Box4 = [b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]];
                let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
                let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
                let inter = w * h;
                if inter / (ai + area(&bj) - inter) > self.0 {
                    let bit = j % 64;
                    mask[(i * words + j / 64) * 2 + bit / 32] |= 1 << (bit % 32);
                }
            }
        }
        Ok((CpuStorage::U32(mask), Shape::from((n, words * 2))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::nms_mask(s, l, self.0)
    }
}

/// [`nms`] of boxes held in a tensor (`N × 4`, on any device): the IoU mask is computed where
/// the boxes are (kdet's CUDA kernel on a GPU), the greedy pass over it on the host, as
/// torchvision's CUDA `nms`. Same result as [`nms`] on the same values.
pub fn nms_tensor(boxes: &Tensor, scores: &[f32], thresh: f32) -> candle_core::Result<Vec<usize>> {
    let n = boxes.dim(0)?;
    if n == 0 {
        return Ok(vec![]);
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let idx = Tensor::from_vec(
        order.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        n,
        boxes.device(),
    )?;
    let sorted = boxes
        .to_dtype(candle_core::DType::F32)?
        .index_select(&idx, 0)?
        .contiguous()?;
    let mask = sorted
        .apply_op1_no_bwd(&NmsMask(thresh))?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let words = mask_words(n);
    let mut removed = vec![0u64; words];
    let mut keep = Vec::new();
    for i in 0..n {
        if removed[i / 64] >> (i % 64) & 1 == 1 {
            continue;
        }
        keep.push(order[i]);
        let row = &mask[i * words * 2..(i + 1) * words * 2];
        for (w, r) in removed.iter_mut().enumerate().skip(i / 64) {
            *r |= row[2 * w] as u64 | (row[2 * w + 1] as u64) << 32;
        }
    }
    Ok(keep)
}

/// [`batched_nms`] on a tensor of boxes, with the coordinate offset for every size (torchvision
/// on CUDA uses it up to 5,000 boxes, `boxes.numel() <= 20000`): kept indices by decreasing
/// score.
pub fn batched_nms_tensor(
    boxes: &Tensor,
    scores: &[f32],
    idxs: &[usize],
    thresh: f32,
) -> candle_core::Result<Vec<usize>> {
    if idxs.is_empty() {
        return Ok(vec![]);
    }
    let boxes = boxes.to_dtype(candle_core::DType::F32)?;
    let max = boxes.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let offsets: Vec<f32> = idxs.iter().map(|&g| g as f32 * (max + 1.0)).collect();
    let offsets = Tensor::from_vec(offsets, (idxs.len(), 1), boxes.device())?;
    nms_tensor(&boxes.broadcast_add(&offsets)?, scores, thresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_suppression() {
        let boxes = [
            [0., 0., 10., 10.],
            [1., 1., 11., 11.],
            [20., 20., 30., 30.],
            [0., 0., 10., 9.],
        ];
        let scores = [0.9, 0.8, 0.7, 0.95];
        // Box 3 wins; box 0 overlaps it by 0.9 → dropped; box 1 vs box 3: IoU ≈ 0.59 → dropped.
        assert_eq!(nms(&boxes, &scores, 0.5), vec![3, 2]);
        // At threshold 0.9 exactly, IoU 0.9 is not > 0.9: box 0 survives.
        assert_eq!(nms(&boxes, &scores, 0.9), vec![3, 0, 1, 2]);
    }

    /// The mask op and its greedy pass give [`nms`]'s result, across 64-box words, at several
    /// thresholds; the batched form gives [`batched_nms`]'s under the coordinate offset.
    #[test]
    fn tensor_nms_matches_the_host_nms() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let n = 300;
        let boxes: Vec<Box4> = (0..n)
            .map(|_| {
                let (x, y) = (
                    rng.random_range(0.0..200.0f32),
                    rng.random_range(0.0..150.0f32),
                );
                [
                    x,
                    y,
                    x + rng.random_range(5.0..80.0),
                    y + rng.random_range(5.0..60.0),
                ]
            })
            .collect();
        let mut scores: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        scores[7] = scores[3]; // a tie: both keep their input order
        let classes: Vec<usize> = (0..n).map(|_| rng.random_range(0..4)).collect();
        let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (n, 4), &candle_core::Device::Cpu).unwrap();
        for thresh in [0.3, 0.5, 0.7] {
            assert_eq!(
                nms_tensor(&t, &scores, thresh).unwrap(),
                nms(&boxes, &scores, thresh)
            );
        }
        // Up to 1000 boxes the host form uses the same coordinate offset: identical.
        assert_eq!(
            batched_nms_tensor(&t, &scores, &classes, 0.5).unwrap(),
            batched_nms(&boxes, &scores, &classes, 0.5)
        );
        assert!(nms_tensor(&t.narrow(0, 0, 0).unwrap(), &[], 0.5)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn batched_keeps_classes_apart() {
        let boxes = [[0., 0., 10., 10.], [0., 0., 10., 10.], [0., 0., 10., 10.]];
        let scores = [0.5, 0.9, 0.7];
        assert_eq!(batched_nms(&boxes, &scores, &[0, 1, 0], 0.5), vec![1, 2]);
    }
}
