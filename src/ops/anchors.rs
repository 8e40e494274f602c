//! Anchors as torchvision's `AnchorGenerator`: per level, base anchors `[-w, -h, w, h] / 2`
//! rounded (half to even, like `torch.round`) for each aspect ratio × size, then shifted over the
//! feature grid with stride `image_size // feature_size`, ordered (y, x, anchor).

use super::boxes::Box4;

/// Anchor sizes per level (one size each, as in torchvision's FPN default) and aspect ratios.
#[derive(Debug, Clone)]
pub struct AnchorGenerator {
    pub sizes: Vec<f32>,
    pub aspect_ratios: Vec<f32>,
}

impl AnchorGenerator {
    pub fn num_anchors_per_location(&self) -> usize {
        self.aspect_ratios.len()
    }

    /// The zero-centred anchors of one level.
    pub fn cell_anchors(&self, size: f32) -> Vec<Box4> {
        // ws = (w_ratios[:, None] * scales[None, :]).view(-1): ratio-major, one scale here.
        self.aspect_ratios
            .iter()
            .map(|&ar| {
                let h_ratio = ar.sqrt();
                let w_ratio = 1.0 / h_ratio;
                let (ws, hs) = (w_ratio * size, h_ratio * size);
                [-ws / 2.0, -hs / 2.0, ws / 2.0, hs / 2.0].map(f32::round_ties_even)
            })
            .collect()
    }

    /// Anchors of every level for a padded batch of `image_size`, given each level's feature
    /// size `(h, w)`; concatenated level by level.
    pub fn anchors(
        &self,
        image_size: (usize, usize),
        feature_sizes: &[(usize, usize)],
    ) -> Vec<Vec<Box4>> {
        feature_sizes
            .iter()
            .zip(&self.sizes)
            .map(|(&(fh, fw), &size)| {
                let (sy, sx) = ((image_size.0 / fh) as f32, (image_size.1 / fw) as f32);
                let base = self.cell_anchors(size);
                let mut out = Vec::with_capacity(fh * fw * base.len());
                for y in 0..fh {
                    for x in 0..fw {
                        let (ox, oy) = (x as f32 * sx, y as f32 * sy);
                        for b in &base {
                            out.push([b[0] + ox, b[1] + oy, b[2] + ox, b[3] + oy]);
                        }
                    }
                }
                out
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_base_anchors() {
        let g = AnchorGenerator {
            sizes: vec![32.0],
            aspect_ratios: vec![0.5, 1.0, 2.0],
        };
        // torchvision: AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),)).cell_anchors[0]
        assert_eq!(
            g.cell_anchors(32.0),
            vec![
                [-23., -11., 23., 11.],
                [-16., -16., 16., 16.],
                [-11., -23., 11., 23.]
            ]
        );
        let a = g.anchors((64, 96), &[(2, 3)]);
        assert_eq!(a[0].len(), 2 * 3 * 3);
        // Position (y=1, x=2), stride 32: shift (64, 32).
        assert_eq!(a[0][(3 + 2) * 3 + 1], [48., 16., 80., 48.]);
    }
}
