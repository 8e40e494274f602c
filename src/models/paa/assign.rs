//! Probabilistic anchor assignment (Kim & Lee, ECCV 2020), as mmdetection's `PAAHead` computes
//! it (`paa_head.py`: `get_targets` → `get_pos_loss` → `paa_reassign` →
//! `gmm_separation_scheme`), on plain f32 arrays (no gradient is involved):
//!
//! 1. **Candidates** (`MaxIoUAssigner(pos_iou_thr=0.1, neg_iou_thr=0.1, min_pos_iou=0)`): each
//!    valid anchor goes to its highest-IoU box if that IoU reaches 0.1; then, box by box in
//!    order, every anchor tying the box's best IoU goes to it (low-quality matches, all ties,
//!    later boxes overwriting earlier ones).
//! 2. **Cost** of each candidate from the current predictions: the focal loss summed over
//!    classes plus `1.3 · (1 − GIoU)` of its decoded box with its box (the loss weights apply).
//! 3. **Top-k** lowest-cost candidates per box and pyramid level (9), concatenated, sorted.
//! 4. A two-component **GMM** on those costs ([`crate::ops::gmm`], f32 as sklearn sees them);
//!    the candidates of component 0 (initialised at the lowest cost), in ascending cost, up to
//!    the one with the highest likelihood, become positive. Boxes with fewer than 2 top-k
//!    candidates get none. Every other candidate becomes background.
//!
//! The steps are separate so that LAD can run them on a teacher's predictions and Co-LAD can
//! choose, per box and level, which network's costs steps 3–4 use.

use crate::ops::boxes::Box4;
use crate::ops::gmm;

/// `bbox_overlaps`' eps (mmdetection `mmdet/structures/bbox/bbox_overlaps.py`).
const EPS: f32 = 1e-6;
/// `DeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2, 0.2))`.
pub const STDS: [f32; 4] = [0.1, 0.1, 0.2, 0.2];
/// `delta2bbox`'s `wh_ratio_clip = 16/1000`: `|ln(16/1000)|`.
const MAX_RATIO: f32 = 4.135_166_6;

/// Box area, `x2 − x1` widths (no +1).
fn area(b: &Box4) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// IoU as `bbox_overlaps(mode='iou')` computes it in f32 (union floored at eps).
pub fn iou(a: &Box4, b: &Box4) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let overlap = w * h;
    let union = (area(a) + area(b) - overlap).max(EPS);
    overlap / union
}

/// GIoU as `bbox_overlaps(mode='giou')`.
pub fn giou(a: &Box4, b: &Box4) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let overlap = w * h;
    let union = (area(a) + area(b) - overlap).max(EPS);
    let ew = (a[2].max(b[2]) - a[0].min(b[0])).max(0.0);
    let eh = (a[3].max(b[3]) - a[1].min(b[1])).max(0.0);
    let enclose = (ew * eh).max(EPS);
    overlap / union - (enclose - union) / enclose
}

/// `delta2bbox` with means 0 and stds [`STDS`]: deltas `(dx, dy, dw, dh)` applied to `anchor`,
/// `dw`, `dh` clamped to ±ln(1000/16); clipped to `clip = (h, w)` when given (inference).
pub fn decode(anchor: &Box4, d: &[f32], clip: Option<(f32, f32)>) -> Box4 {
    let (dx, dy) = (d[0] * STDS[0], d[1] * STDS[1]);
    let dw = (d[2] * STDS[2]).clamp(-MAX_RATIO, MAX_RATIO);
    let dh = (d[3] * STDS[3]).clamp(-MAX_RATIO, MAX_RATIO);
    let (px, py) = ((anchor[0] + anchor[2]) * 0.5, (anchor[1] + anchor[3]) * 0.5);
    let (pw, ph) = (anchor[2] - anchor[0], anchor[3] - anchor[1]);
    let (gx, gy) = (px + pw * dx, py + ph * dy);
    let (gw, gh) = (pw * dw.exp(), ph * dh.exp());
    let mut b = [gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5];
    if let Some((h, w)) = clip {
        b[0] = b[0].clamp(0.0, w);
        b[2] = b[2].clamp(0.0, w);
        b[1] = b[1].clamp(0.0, h);
        b[3] = b[3].clamp(0.0, h);
    }
    b
}

/// `bbox2delta` with means 0 and stds [`STDS`] (the encoded regression target of a box).
pub fn encode(target: &Box4, anchor: &Box4) -> [f32; 4] {
    let (px, py) = ((anchor[0] + anchor[2]) * 0.5, (anchor[1] + anchor[3]) * 0.5);
    let (pw, ph) = (anchor[2] - anchor[0], anchor[3] - anchor[1]);
    let (gx, gy) = ((target[0] + target[2]) * 0.5, (target[1] + target[3]) * 0.5);
    let (gw, gh) = (target[2] - target[0], target[3] - target[1]);
    [
        (gx - px) / pw / STDS[0],
        (gy - py) / ph / STDS[1],
        (gw / pw).ln() / STDS[2],
        (gh / ph).ln() / STDS[3],
    ]
}

/// The anchors of one image, level by level, each level's locations row by row
/// (mmdetection's `AnchorGenerator` with `center_offset=0`: a square of side `scale · stride`
/// centred on the cell's top-left corner), and how many each level has.
pub fn anchors(sizes: &[(usize, usize)], strides: &[usize], scale: f32) -> (Vec<Box4>, Vec<usize>) {
    let mut all = vec![];
    let mut counts = vec![];
    for (&(h, w), &s) in sizes.iter().zip(strides) {
        let half = 0.5 * scale * s as f32;
        for y in 0..h {
            for x in 0..w {
                let (cx, cy) = ((x * s) as f32, (y * s) as f32);
                all.push([cx - half, cy - half, cx + half, cy + half]);
            }
        }
        counts.push(h * w);
    }
    (all, counts)
}

/// Which anchors of an image whose padded size is `pad = (h, w)` are valid (mmdetection's
/// `valid_flags`: rows below `ceil(pad_h / stride)` and columns left of `ceil(pad_w / stride)`).
pub fn valid_flags(sizes: &[(usize, usize)], strides: &[usize], pad: (usize, usize)) -> Vec<bool> {
    let mut v = vec![];
    for (&(h, w), &s) in sizes.iter().zip(strides) {
        let (vh, vw) = (pad.0.div_ceil(s).min(h), pad.1.div_ceil(s).min(w));
        for y in 0..h {
            for x in 0..w {
                v.push(y < vh && x < vw);
            }
        }
    }
    v
}

/// The candidates of one image: anchors (ascending), the box each was matched to, its level.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidates {
    pub anchor: Vec<usize>,
    pub gt: Vec<usize>,
    pub level: Vec<usize>,
}

/// Step 1 for one image.
pub fn candidates(
    anchors: &[Box4],
    counts: &[usize],
    valid: &[bool],
    gts: &[Box4],
    pos_iou: f32,
) -> Candidates {
    let n = anchors.len();
    let mut assigned: Vec<Option<usize>> = vec![None; n];
    if !gts.is_empty() {
        let ious: Vec<Vec<f32>> = gts
            .iter()
            .map(|g| {
                anchors
                    .iter()
                    .zip(valid)
                    .map(|(a, &ok)| if ok { iou(g, a) } else { -1.0 })
                    .collect()
            })
            .collect();
        for j in (0..n).filter(|&j| valid[j]) {
            // torch.max over boxes: the first of equal maxima.
            let (mut best, mut arg) = (ious[0][j], 0);
            for (g, row) in ious.iter().enumerate().skip(1) {
                if row[j] > best {
                    (best, arg) = (row[j], g);
                }
            }
            if best >= pos_iou {
                assigned[j] = Some(arg);
            }
        }
        // Low-quality matches (min_pos_iou = 0, gt_max_assign_all): every anchor tying a box's
        // best IoU, in box order.
        for (g, row) in ious.iter().enumerate() {
            let gmax = row
                .iter()
                .zip(valid)
                .filter(|(_, &ok)| ok)
                .map(|(&v, _)| v)
                .fold(f32::NEG_INFINITY, f32::max);
            if gmax < 0.0 {
                continue;
            }
            for j in (0..n).filter(|&j| valid[j] && row[j] == gmax) {
                assigned[j] = Some(g);
            }
        }
    }
    let mut level_of = Vec::with_capacity(n);
    for (l, &c) in counts.iter().enumerate() {
        level_of.extend(std::iter::repeat_n(l, c));
    }
    let mut c = Candidates::default();
    for (j, a) in assigned.iter().enumerate() {
        if let Some(g) = a {
            c.anchor.push(j);
            c.gt.push(*g);
            c.level.push(level_of[j]);
        }
    }
    c
}

/// Focal and GIoU weights inside the cost (the loss weights of the config).
#[derive(Debug, Clone, Copy)]
pub struct CostWeights {
    pub gamma: f32,
    pub alpha: f32,
    pub cls: f32,
    pub bbox: f32,
}

/// mmdetection's `py_sigmoid_focal_loss` of one logit, unreduced.
pub fn focal(x: f32, t: f32, gamma: f32, alpha: f32) -> f32 {
    let p = 1.0 / (1.0 + (-x).exp());
    let ce = x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
    let pt = (1.0 - p) * t + p * (1.0 - t);
    let w = alpha * t + (1.0 - alpha) * (1.0 - t);
    ce * w * pt.powf(gamma)
}

/// Step 2 for one image: `cls` is its `A × K` logits, `reg` its `A × 4` deltas, row-major.
#[allow(clippy::too_many_arguments)]
pub fn costs(
    c: &Candidates,
    cls: &[f32],
    reg: &[f32],
    num_classes: usize,
    anchors: &[Box4],
    gts: &[Box4],
    labels: &[usize],
    w: CostWeights,
) -> Vec<f32> {
    c.anchor
        .iter()
        .zip(&c.gt)
        .map(|(&j, &g)| {
            let logits = &cls[j * num_classes..(j + 1) * num_classes];
            let focal_sum: f32 = logits
                .iter()
                .enumerate()
                .map(|(k, &x)| focal(x, (k == labels[g]) as u8 as f32, w.gamma, w.alpha))
                .sum();
            let b = decode(&anchors[j], &reg[j * 4..j * 4 + 4], None);
            w.cls * focal_sum + w.bbox * (1.0 - giou(&b, &gts[g]))
        })
        .collect()
}

/// Steps 3–4 for one image: the positive anchors and the box of each, from the candidates'
/// costs. `skipped` counts boxes whose GMM sklearn would refuse (ill-defined variance), which
/// get no positive, as Co-LAD's released code does.
pub fn select(
    c: &Candidates,
    costs: &[f32],
    num_gts: usize,
    num_levels: usize,
    topk: usize,
) -> (Vec<(usize, usize)>, usize) {
    let mut positives = vec![];
    let mut skipped = 0;
    for g in 0..num_gts {
        let mut chosen: Vec<(f32, usize)> = vec![];
        for l in 0..num_levels {
            let mut lv: Vec<(f32, usize)> = (0..c.anchor.len())
                .filter(|&i| c.gt[i] == g && c.level[i] == l)
                .map(|i| (costs[i], c.anchor[i]))
                .collect();
            lv.sort_by(|a, b| a.0.total_cmp(&b.0));
            lv.truncate(topk);
            chosen.extend(lv);
        }
        if chosen.len() < 2 {
            continue;
        }
        chosen.sort_by(|a, b| a.0.total_cmp(&b.0));
        let x: Vec<f32> = chosen.iter().map(|c| c.0).collect();
        let Ok(fit) = gmm::paa_fit(&x) else {
            skipped += 1;
            continue;
        };
        let comp = fit.predict(&x);
        let score = fit.score_samples(&x);
        let fg: Vec<usize> = (0..x.len()).filter(|&i| comp[i] == 0).collect();
        // torch.topk(1) over the fg samples' likelihoods: the first maximum.
        let Some(best) = fg
            .iter()
            .enumerate()
            .fold(None, |m: Option<(usize, f64)>, (k, &i)| match m {
                Some((_, s)) if s >= score[i] => m,
                _ => Some((k, score[i])),
            })
            .map(|(k, _)| k)
        else {
            continue;
        };
        positives.extend(fg[..=best].iter().map(|&i| (chosen[i].1, g)));
    }
    positives.sort_unstable();
    (positives, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_sit_on_cell_corners_level_by_level() {
        let (a, counts) = anchors(&[(2, 3), (1, 2)], &[8, 16], 4.0);
        assert_eq!(counts, [6, 2]);
        assert_eq!(a[0], [-16.0, -16.0, 16.0, 16.0]);
        // Row-major: index 4 is (y = 1, x = 1).
        assert_eq!(a[4], [-8.0, -8.0, 24.0, 24.0]);
        assert_eq!(a[7], [-16.0, -32.0, 48.0, 32.0]);
        // A 40-px-high image padded to 64 rows: at stride 16 only rows < 4 are valid.
        let v = valid_flags(&[(8, 2)], &[16], (64, 32));
        assert_eq!(v.iter().filter(|&&x| x).count(), 4 * 2);
    }

    #[test]
    fn hand_made_assignment() {
        // Four anchors on one level; box 0 overlaps anchors 0 and 1, box 1 is tiny and only
        // touches anchor 3 (IoU < 0.1: a low-quality match).
        let anchors = vec![
            [0.0, 0.0, 10.0, 10.0],
            [5.0, 0.0, 15.0, 10.0],
            [20.0, 20.0, 30.0, 30.0],
            [40.0, 40.0, 50.0, 50.0],
        ];
        let gts = vec![[2.0, 0.0, 12.0, 10.0], [40.0, 40.0, 42.0, 42.0]];
        let c = candidates(&anchors, &[4], &[true; 4], &gts, 0.1);
        assert_eq!(c.anchor, [0, 1, 3]);
        assert_eq!(c.gt, [0, 0, 1]);
        // Costs: box 0's two candidates fit a GMM; box 1 has one candidate and is skipped.
        let (pos, skipped) = select(&c, &[0.5, 2.0, 0.1], 2, 1, 9);
        assert_eq!(skipped, 0);
        // Component 0 (started at the lower cost) holds anchor 0; the cut at its most likely
        // member keeps only it.
        assert_eq!(pos, [(0, 0)]);
        // Decoding what encoding made returns the box.
        let d = encode(&gts[0], &anchors[1]);
        let b = decode(&anchors[1], &d, None);
        for k in 0..4 {
            assert!((b[k] - gts[0][k]).abs() < 1e-4, "{b:?}");
        }
        assert!((giou(&gts[0], &gts[0]) - 1.0).abs() < 1e-6);
        assert!(giou(&anchors[0], &anchors[3]) < 0.0);
    }
}
