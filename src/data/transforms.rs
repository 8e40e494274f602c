//! Image transforms, mirroring torchvision's `GeneralizedRCNNTransform`: normalise, resize keeping
//! aspect (shorter side to `min_size`, longer side capped at `max_size`, bilinear with
//! `align_corners=False`), and pad the batch to a multiple of `size_divisible`. Horizontal flip
//! for training. Boxes follow the image exactly. [`InputConfig`] is the config section that
//! sets them (`model.input`).

use serde::{Deserialize, Serialize};

use crate::error::{invalid, positive, Check};

/// The largest image side a model may resize to.
pub const MAX_SIDE: u32 = 8192;

/// The input transform of a model (torchvision's `GeneralizedRCNNTransform`). Defaults are
/// torchvision's `fasterrcnn_resnet50_fpn`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Shorter side after resize. torchvision: 800.
    pub min_size: u32,
    /// Cap on the longer side. torchvision: 1333.
    pub max_size: u32,
    /// Per-channel mean of RGB in [0,1]. torchvision: ImageNet [0.485, 0.456, 0.406].
    pub mean: [f32; 3],
    /// Per-channel std. torchvision: ImageNet [0.229, 0.224, 0.225].
    pub std: [f32; 3],
    /// Batch padded to a multiple of this. torchvision: 32.
    pub size_divisible: u32,
    /// Resize to `min_size × min_size` whatever the aspect (an image classifier's fixed input,
    /// timm's `Resize((s, s))`); false: the detection rule above.
    #[serde(default, skip_serializing_if = "is_false")]
    pub square: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            min_size: 800,
            max_size: 1333,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            size_divisible: 32,
            square: false,
        }
    }
}

impl InputConfig {
    /// Ranges; `p` is the section's JSON path (`model.input`).
    pub fn validate(&self, p: &str) -> Check {
        if self.min_size == 0 {
            return Err(invalid(format!("{p}.min_size"), "must be >= 1"));
        }
        // The stem's output alone is 64 channels × (side/2)² floats per image: 4.3 GB at 8192,
        // so a larger side cannot be what was meant (it aborted in the allocator).
        for (k, v) in [("min_size", self.min_size), ("max_size", self.max_size)] {
            if v > MAX_SIDE {
                let stem = crate::util::gigabytes(64.0 * (v as f64 / 2.0).powi(2) * 4.0);
                return Err(invalid(
                    format!("{p}.{k}"),
                    format!(
                        "{v} pixels is above kdet's limit of {MAX_SIDE}: the first convolution's output alone would take {stem} per image"
                    ),
                ));
            }
        }
        if self.max_size < self.min_size {
            return Err(invalid(
                format!("{p}.max_size"),
                format!("{} is below min_size {}", self.max_size, self.min_size),
            ));
        }
        for (k, s) in self.std.iter().enumerate() {
            positive(&format!("{p}.std[{k}]"), *s as f64)?;
        }
        if self.size_divisible == 0 {
            return Err(invalid(format!("{p}.size_divisible"), "must be >= 1"));
        }
        Ok(())
    }

    /// The size an `h × w` image is resized to.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        if self.square {
            (self.min_size as usize, self.min_size as usize)
        } else {
            resize_size(h, w, self.min_size, self.max_size)
        }
    }
}

/// Colour jitter on `[0, 1]` RGB before normalisation, SimCLR's `color_jitter` without hue
/// (CBD's `data_aug` teachers use SimCLR's augmentation code): brightness, contrast and
/// saturation factors each drawn from `[1 − s, 1 + s]`, applied in that order, clamped to
/// `[0, 1]`. `s = 0` leaves the image unchanged.
pub fn color_jitter(img: &mut ImageF32, s: f32, rng: &mut impl rand::Rng) {
    if s <= 0.0 || img.c != 3 {
        return;
    }
    let mut f = || rng.random_range((1.0 - s).max(0.0)..=1.0 + s);
    let (b, c, sat) = (f(), f(), f());
    let hw = img.h * img.w;
    for v in &mut img.data {
        *v = (*v * b).clamp(0.0, 1.0);
    }
    // Contrast: blend with the mean grey level (torchvision's adjust_contrast).
    let grey = |d: &[f32], i: usize| 0.299 * d[i] + 0.587 * d[hw + i] + 0.114 * d[2 * hw + i];
    let mean = (0..hw).map(|i| grey(&img.data, i)).sum::<f32>() / hw.max(1) as f32;
    for v in &mut img.data {
        *v = (mean + c * (*v - mean)).clamp(0.0, 1.0);
    }
    // Saturation: blend each pixel with its own grey level.
    for i in 0..hw {
        let g = grey(&img.data, i);
        for ch in 0..3 {
            let v = &mut img.data[ch * hw + i];
            *v = (g + sat * (*v - g)).clamp(0.0, 1.0);
        }
    }
}

/// A float image, channels-first (`C × H × W`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageF32 {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl ImageF32 {
    /// RGB bytes → `[0, 1]` floats, CHW (torchvision's `to_tensor`).
    pub fn from_rgb(img: &image::RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut data = vec![0f32; 3 * h * w];
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                data[c * h * w + i] = p.0[c] as f32 / 255.0;
            }
        }
        Self { c: 3, h, w, data }
    }

    #[inline]
    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.h + y) * self.w + x]
    }
}

/// `(x - mean) / std` per channel, in place.
pub fn normalize(img: &mut ImageF32, mean: &[f32; 3], std: &[f32; 3]) {
    let hw = img.h * img.w;
    for c in 0..img.c {
        let (m, s) = (mean[c % 3], std[c % 3]);
        for v in &mut img.data[c * hw..(c + 1) * hw] {
            *v = (*v - m) / s;
        }
    }
}

/// The scale torchvision's `_resize_image_and_masks` uses:
/// `min(min_size / shorter, max_size / longer)`, and the output size `floor(side * scale)`.
pub fn resize_size(h: usize, w: usize, min_size: u32, max_size: u32) -> (usize, usize) {
    let (short, long) = (h.min(w) as f64, h.max(w) as f64);
    let scale = (min_size as f64 / short).min(max_size as f64 / long);
    // F.interpolate(recompute_scale_factor=True): floor(in * scale), in double precision.
    (
        ((h as f64) * scale).floor().max(1.0) as usize,
        ((w as f64) * scale).floor().max(1.0) as usize,
    )
}

/// Bilinear resize with PyTorch's `align_corners=False` rule: source coordinate
/// `(dst + 0.5) * in / out - 0.5`, clamped at 0, neighbours clamped at the border.
pub fn resize_bilinear(img: &ImageF32, out_h: usize, out_w: usize) -> ImageF32 {
    let taps = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|d| {
                let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let ys = taps(img.h, out_h);
    let xs = taps(img.w, out_w);
    let mut data = vec![0f32; img.c * out_h * out_w];
    for c in 0..img.c {
        for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
            let row = &mut data[(c * out_h + oy) * out_w..(c * out_h + oy + 1) * out_w];
            for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
                let top = (1.0 - lx) * img.at(c, y0, x0) + lx * img.at(c, y0, x1);
                let bot = (1.0 - lx) * img.at(c, y1, x0) + lx * img.at(c, y1, x1);
                row[ox] = (1.0 - ly) * top + ly * bot;
            }
        }
    }
    ImageF32 {
        c: img.c,
        h: out_h,
        w: out_w,
        data,
    }
}

/// Scale boxes from an `(h, w)` image to `(new_h, new_w)` (torchvision's `resize_boxes`).
pub fn resize_boxes(boxes: &mut [[f32; 4]], from: (usize, usize), to: (usize, usize)) {
    let ry = to.0 as f32 / from.0 as f32;
    let rx = to.1 as f32 / from.1 as f32;
    for b in boxes {
        b[0] *= rx;
        b[2] *= rx;
        b[1] *= ry;
        b[3] *= ry;
    }
}

/// Mirror the image left–right.
pub fn hflip(img: &mut ImageF32) {
    let w = img.w;
    for row in img.data.chunks_mut(w) {
        row.reverse();
    }
}

/// Mirror boxes in an image of width `w`: `x1' = w - x2`, `x2' = w - x1`.
pub fn hflip_boxes(boxes: &mut [[f32; 4]], w: usize) {
    let w = w as f32;
    for b in boxes {
        let (x1, x2) = (b[0], b[2]);
        b[0] = w - x2;
        b[2] = w - x1;
    }
}

/// Stack images into one zero-padded `B × C × H × W` buffer, `H` and `W` rounded up to a multiple
/// of `size_divisible` (torchvision's `batch_images`). Returns the buffer and `(H, W)`.
pub fn pad_batch(images: &[ImageF32], size_divisible: usize) -> (Vec<f32>, usize, usize) {
    let c = images.first().map_or(3, |i| i.c);
    let round = |v: usize| v.div_ceil(size_divisible) * size_divisible;
    let h = round(images.iter().map(|i| i.h).max().unwrap_or(0));
    let w = round(images.iter().map(|i| i.w).max().unwrap_or(0));
    let mut out = vec![0f32; images.len() * c * h * w];
    for (b, img) in images.iter().enumerate() {
        for ch in 0..c {
            for y in 0..img.h {
                let dst = ((b * c + ch) * h + y) * w;
                let src = (ch * img.h + y) * img.w;
                out[dst..dst + img.w].copy_from_slice(&img.data[src..src + img.w]);
            }
        }
    }
    (out, h, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> ImageF32 {
        let data = (0..3 * h * w).map(|i| i as f32).collect();
        ImageF32 { c: 3, h, w, data }
    }

    #[test]
    fn resize_size_matches_torchvision_rule() {
        // 480×640 at (800, 1333): scale = 800/480 → 800×1066.
        assert_eq!(resize_size(480, 640, 800, 1333), (800, 1066));
        // Very wide image: the long side caps: 1333/2000 → 266×1333.
        assert_eq!(resize_size(400, 2000, 800, 1333), (266, 1333));
    }

    #[test]
    fn bilinear_matches_hand_values() {
        // 1×2 → 1×4, align_corners=False: sources -0.25→0, 0.25, 0.75, 1.25→clamped neighbour.
        let img = ImageF32 {
            c: 1,
            h: 1,
            w: 2,
            data: vec![0.0, 4.0],
        };
        let r = resize_bilinear(&img, 1, 4);
        assert_eq!(r.data, vec![0.0, 1.0, 3.0, 4.0]);
        // Identity size is exact.
        let img = ramp(5, 7);
        assert_eq!(resize_bilinear(&img, 5, 7), img);
    }

    #[test]
    fn boxes_follow_resize_and_flip() {
        // A bright rectangle at rows 2..4, cols 2..6 of an 8×12 image; box [2,2,6,4].
        let (h, w) = (8, 12);
        let mut img = ImageF32 {
            c: 1,
            h,
            w,
            data: vec![0.0; h * w],
        };
        for y in 2..4 {
            for x in 2..6 {
                img.data[y * w + x] = 1.0;
            }
        }
        let mut boxes = vec![[2.0, 2.0, 6.0, 4.0]];
        let (nh, nw) = (16, 24);
        let mut r = resize_bilinear(&img, nh, nw);
        resize_boxes(&mut boxes, (h, w), (nh, nw));
        assert_eq!(boxes[0], [4.0, 4.0, 12.0, 8.0]);
        hflip(&mut r);
        hflip_boxes(&mut boxes, nw);
        assert_eq!(boxes[0], [12.0, 4.0, 20.0, 8.0]);
        // The bright region's extent after flip equals the box (pixels with value > 0.5).
        let (mut x1, mut x2, mut y1, mut y2) = (usize::MAX, 0, usize::MAX, 0);
        for y in 0..nh {
            for x in 0..nw {
                if r.data[y * nw + x] > 0.5 {
                    x1 = x1.min(x);
                    x2 = x2.max(x + 1);
                    y1 = y1.min(y);
                    y2 = y2.max(y + 1);
                }
            }
        }
        assert_eq!([x1, y1, x2, y2].map(|v| v as f32), boxes[0]);
        // An asymmetric box flips to the mirrored side.
        let mut b = vec![[1.0, 0.0, 3.0, 1.0]];
        hflip_boxes(&mut b, 10);
        assert_eq!(b[0], [7.0, 0.0, 9.0, 1.0]);
    }

    #[test]
    fn normalize_and_pad() {
        let mut img = ImageF32 {
            c: 3,
            h: 1,
            w: 1,
            data: vec![0.485, 0.456 + 0.224, 0.0],
        };
        normalize(&mut img, &[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225]);
        assert!(img.data[0].abs() < 1e-6 && (img.data[1] - 1.0).abs() < 1e-6);
        let a = ramp(3, 5);
        let b = ramp(33, 2);
        let (buf, h, w) = pad_batch(&[a.clone(), b.clone()], 32);
        assert_eq!((h, w), (64, 32));
        assert_eq!(buf.len(), 2 * 3 * 64 * 32);
        assert_eq!(buf[(2 * 64 + 1) * 32 + 4], a.at(2, 1, 4));
        assert_eq!(buf[(2 * 64 + 1) * 32 + 5], 0.0);
        assert_eq!(buf[((3 + 1) * 64 + 32) * 32 + 1], b.at(1, 32, 1));
    }
}
