//! Non-maximum suppression as torchvision's `nms` / `batched_nms`: greedy in decreasing score
//! order, a box is dropped when its IoU with a kept box is **greater** than the threshold; the
//! batched form runs it per class (`_batched_nms_vanilla`) and returns indices by decreasing score.

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

    #[test]
    fn batched_keeps_classes_apart() {
        let boxes = [[0., 0., 10., 10.], [0., 0., 10., 10.], [0., 0., 10., 10.]];
        let scores = [0.5, 0.9, 0.7];
        assert_eq!(batched_nms(&boxes, &scores, &[0, 1, 0], 0.5), vec![1, 2]);
    }
}
