//! Box utilities in torchvision's conventions (`torchvision/ops/boxes.py`,
//! `models/detection/_utils.py`): boxes are `x1,y1,x2,y2` in pixels, widths are `x2 − x1` (no
//! +1), and the box coder's arithmetic follows torchvision's in f32 so decoded boxes match it.

/// `x1, y1, x2, y2`.
pub type Box4 = [f32; 4];

pub fn area(b: &Box4) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// IoU of two boxes, as `box_iou` computes it (`inter / (area_a + area_b − inter)`).
pub fn iou(a: &Box4, b: &Box4) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / (area(a) + area(b) - inter)
}

/// Pairwise IoU, `a.len() × b.len()`, row-major.
pub fn iou_matrix(a: &[Box4], b: &[Box4]) -> Vec<f32> {
    let mut m = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            m.push(iou(x, y));
        }
    }
    m
}

/// Clamp boxes to an image of `(h, w)` (torchvision's `clip_boxes_to_image`).
pub fn clip_to_image(b: &mut Box4, (h, w): (usize, usize)) {
    let (h, w) = (h as f32, w as f32);
    b[0] = b[0].clamp(0.0, w);
    b[2] = b[2].clamp(0.0, w);
    b[1] = b[1].clamp(0.0, h);
    b[3] = b[3].clamp(0.0, h);
}

/// Whether a box is at least `min_size` wide and high (torchvision's `remove_small_boxes`).
pub fn is_large_enough(b: &Box4, min_size: f32) -> bool {
    b[2] - b[0] >= min_size && b[3] - b[1] >= min_size
}

/// Encodes boxes as deltas `(dx, dy, dw, dh)` relative to reference boxes, weighted
/// (torchvision's `BoxCoder`; RPN weights (1,1,1,1), box head (10,10,5,5)).
#[derive(Debug, Clone, Copy)]
pub struct BoxCoder {
    pub weights: [f32; 4],
    /// Upper clamp of `dw`, `dh` before `exp`: `ln(1000 / 16)`.
    pub clip: f32,
}

impl BoxCoder {
    pub fn new(weights: [f32; 4]) -> Self {
        Self {
            weights,
            clip: (1000.0f32 / 16.0).ln(),
        }
    }

    /// Deltas that move `reference` onto `target`.
    pub fn encode(&self, target: &Box4, reference: &Box4) -> [f32; 4] {
        let [wx, wy, ww, wh] = self.weights;
        let ex_w = reference[2] - reference[0];
        let ex_h = reference[3] - reference[1];
        let ex_x = reference[0] + 0.5 * ex_w;
        let ex_y = reference[1] + 0.5 * ex_h;
        let gt_w = target[2] - target[0];
        let gt_h = target[3] - target[1];
        let gt_x = target[0] + 0.5 * gt_w;
        let gt_y = target[1] + 0.5 * gt_h;
        [
            wx * (gt_x - ex_x) / ex_w,
            wy * (gt_y - ex_y) / ex_h,
            ww * (gt_w / ex_w).ln(),
            wh * (gt_h / ex_h).ln(),
        ]
    }

    /// Apply deltas to a reference box.
    pub fn decode(&self, d: &[f32; 4], reference: &Box4) -> Box4 {
        let [wx, wy, ww, wh] = self.weights;
        let w = reference[2] - reference[0];
        let h = reference[3] - reference[1];
        let cx = reference[0] + 0.5 * w;
        let cy = reference[1] + 0.5 * h;
        let dx = d[0] / wx;
        let dy = d[1] / wy;
        let dw = (d[2] / ww).min(self.clip);
        let dh = (d[3] / wh).min(self.clip);
        let pcx = dx * w + cx;
        let pcy = dy * h + cy;
        let pw = dw.exp() * w;
        let ph = dh.exp() * h;
        [
            pcx - 0.5 * pw,
            pcy - 0.5 * ph,
            pcx + 0.5 * pw,
            pcy + 0.5 * ph,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_hand_cases() {
        assert_eq!(iou(&[0., 0., 2., 2.], &[1., 1., 3., 3.]), 1.0 / 7.0);
        assert_eq!(iou(&[0., 0., 1., 1.], &[2., 2., 3., 3.]), 0.0);
        assert_eq!(iou(&[0., 0., 4., 2.], &[0., 0., 4., 2.]), 1.0);
        assert_eq!(
            iou_matrix(&[[0., 0., 2., 2.]], &[[0., 0., 1., 2.], [0., 0., 2., 1.]]),
            vec![0.5, 0.5]
        );
    }

    #[test]
    fn coder_round_trip_and_hand_values() {
        let c = BoxCoder::new([10., 10., 5., 5.]);
        let r = [10., 20., 30., 60.];
        let t = [12., 18., 36., 70.];
        let d = c.encode(&t, &r);
        // centre (20, 40) → (24, 44): dx = 10·4/20 = 2, dy = 10·4/40 = 1; dw = 5·ln(24/20).
        assert!((d[0] - 2.0).abs() < 1e-6 && (d[1] - 1.0).abs() < 1e-6);
        assert!(
            (d[2] - 5.0 * (1.2f32).ln()).abs() < 1e-6
                && (d[3] - 5.0 * (52.0f32 / 40.0).ln()).abs() < 1e-6
        );
        let back = c.decode(&d, &r);
        for k in 0..4 {
            assert!((back[k] - t[k]).abs() < 1e-4, "{back:?}");
        }
        // Huge dw is clamped at ln(1000/16).
        let b = BoxCoder::new([1., 1., 1., 1.]).decode(&[0., 0., 100., 0.], &[0., 0., 1., 1.]);
        assert!((b[2] - b[0] - 62.5).abs() < 1e-3);
    }

    #[test]
    fn clip_and_small() {
        let mut b = [-5., 3., 120., 90.];
        clip_to_image(&mut b, (80, 100));
        assert_eq!(b, [0., 3., 100., 80.]);
        assert!(is_large_enough(&[0., 0., 1., 1.], 1.0));
        assert!(!is_large_enough(&[0., 0., 0.5, 1.], 1e-3 + 0.5));
    }
}
