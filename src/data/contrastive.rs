//! SimCLR's two-view augmentation (Chen et al. 2020, "A Simple Framework for Contrastive Learning
//! of Visual Representations" §3 and Appendix A; google-research/simclr `tf2/data_util.py`):
//! each view is, in this order,
//!
//! 1. a random resized crop: area share `U(0.08, 1)`, aspect ratio log-uniform in `(3/4, 4/3)`,
//!    resized to the network's input side (torchvision's `RandomResizedCrop` sampling: 10
//!    attempts, then a centre crop; the official code draws with TF's
//!    `sample_distorted_bounding_box`, 100 attempts, and resizes bicubic — kdet resizes
//!    bilinear);
//! 2. a horizontal flip with p = 0.5;
//! 3. with p = 0.8, colour jitter of strength s — brightness (a factor in
//!    `[max(0, 1 − 0.8s), 1 + 0.8s]`, SimCLRv2's multiplicative `random_brightness`), contrast
//!    (`(x − mean_c)·f + mean_c` per channel, f in `[1 − 0.8s, 1 + 0.8s]`, TF's
//!    `adjust_contrast`), saturation (HSV saturation × f, f in the same range) and hue (HSV hue
//!    shifted by `U(−0.2s, 0.2s)` turns) in a random order, clipped to [0, 1] after each;
//! 4. grayscale with p = 0.2 (TF's `rgb_to_grayscale` weights, three equal channels);
//! 5. a Gaussian blur with p = 0.5: σ ~ `U(0.1, 2.0)`, kernel `2·⌊(side/10)/2⌋ + 1` taps
//!    (`kernel_size = height // 10`, made odd as the official `gaussian_blur`), separable, zero
//!    padding (TF's `SAME`).
//!
//! Every random parameter is drawn from the sample's RNG (seeded by (seed, epoch, position) in
//! the loader), view 1's before view 2's, so a view is a function of the seed alone. Each step's
//! parameters are drawn by a `sample_*` function returning them, which the tests check against
//! their ranges.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::transforms::{hflip, resize_bilinear, ImageF32};
use crate::error::{invalid, unit, Check};

/// The augmentation of a contrastive method (`method.augment`). Defaults: SimCLR on ImageNet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ContrastiveAugConfig {
    /// Range of the crop's share of the image area. SimCLR: (0.08, 1).
    pub crop_scale: [f32; 2],
    /// Range of the crop's aspect ratio (width / height). SimCLR: (3/4, 4/3).
    pub crop_ratio: [f32; 2],
    /// Horizontal flip probability. SimCLR: 0.5.
    pub flip_prob: f32,
    /// Colour distortion strength s. SimCLR / SimCLRv2 on ImageNet: 1.0 (`color_jitter_strength`
    /// flag); the official CIFAR-10 recipe: 0.5.
    pub strength: f32,
    /// Probability of the colour jitter. SimCLR: 0.8.
    pub jitter_prob: f32,
    /// Probability of grayscale. SimCLR: 0.2.
    pub gray_prob: f32,
    /// Probability of the Gaussian blur. SimCLR on ImageNet: 0.5; the CIFAR-10 recipe: none
    /// (`--use_blur=False`).
    pub blur_prob: f32,
    /// Range of the blur's σ, pixels. SimCLR: (0.1, 2.0).
    pub blur_sigma: [f32; 2],
}

impl Default for ContrastiveAugConfig {
    fn default() -> Self {
        Self {
            crop_scale: [0.08, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_prob: 0.5,
            strength: 1.0,
            jitter_prob: 0.8,
            gray_prob: 0.2,
            blur_prob: 0.5,
            blur_sigma: [0.1, 2.0],
        }
    }
}

impl ContrastiveAugConfig {
    /// `p` is the section's JSON path (`method.augment`).
    pub fn validate(&self, p: &str) -> Check {
        let [a, b] = self.crop_scale;
        if !(a > 0.0 && a <= b && b <= 1.0) {
            return Err(invalid(
                format!("{p}.crop_scale"),
                format!("[{a}, {b}] must satisfy 0 < min <= max <= 1"),
            ));
        }
        let [a, b] = self.crop_ratio;
        if !(a > 0.0 && a <= b && b.is_finite()) {
            return Err(invalid(
                format!("{p}.crop_ratio"),
                format!("[{a}, {b}] must satisfy 0 < min <= max"),
            ));
        }
        let [a, b] = self.blur_sigma;
        if !(a > 0.0 && a <= b && b.is_finite()) {
            return Err(invalid(
                format!("{p}.blur_sigma"),
                format!("[{a}, {b}] must satisfy 0 < min <= max"),
            ));
        }
        if !(self.strength >= 0.0 && self.strength.is_finite()) {
            return Err(invalid(format!("{p}.strength"), "must be >= 0"));
        }
        for (k, v) in [
            ("flip_prob", self.flip_prob),
            ("jitter_prob", self.jitter_prob),
            ("gray_prob", self.gray_prob),
            ("blur_prob", self.blur_prob),
        ] {
            unit(&format!("{p}.{k}"), v as f64)?;
        }
        Ok(())
    }
}

/// A crop `(top, left, height, width)` in pixels.
pub type CropBox = (usize, usize, usize, usize);

/// torchvision's `RandomResizedCrop.get_params`: up to 10 draws of an area share in `scale` and
/// a log-uniform aspect ratio in `ratio` whose box fits; else the centre crop with the ratio
/// clamped to `ratio`.
pub fn sample_crop(
    h: usize,
    w: usize,
    scale: [f32; 2],
    ratio: [f32; 2],
    rng: &mut impl Rng,
) -> CropBox {
    let area = (h * w) as f64;
    let (lr0, lr1) = ((ratio[0] as f64).ln(), (ratio[1] as f64).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale[0] as f64..=scale[1] as f64);
        let r = rng.random_range(lr0..=lr1).exp();
        let cw = (target * r).sqrt().round() as usize;
        let ch = (target / r).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio[0] as f64 {
        ((w as f64 / ratio[0] as f64).round() as usize, w)
    } else if in_ratio > ratio[1] as f64 {
        (h, (h as f64 * ratio[1] as f64).round() as usize)
    } else {
        (h, w)
    };
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// The pixels of `b` from `img`.
pub fn crop(img: &ImageF32, b: CropBox) -> ImageF32 {
    let (top, left, ch, cw) = b;
    let mut data = Vec::with_capacity(img.c * ch * cw);
    for c in 0..img.c {
        for y in top..top + ch {
            let s = (c * img.h + y) * img.w + left;
            data.extend_from_slice(&img.data[s..s + cw]);
        }
    }
    ImageF32 {
        c: img.c,
        h: ch,
        w: cw,
        data,
    }
}

/// One draw of the colour jitter: the order of (brightness, contrast, saturation, hue) and
/// their factors / shift.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterParams {
    /// 0 brightness, 1 contrast, 2 saturation, 3 hue.
    pub order: [usize; 4],
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// Hue shift in turns.
    pub hue: f32,
}

/// Draw SimCLR's colour-jitter parameters at strength `s` (module doc).
pub fn sample_jitter(s: f32, rng: &mut impl Rng) -> JitterParams {
    let (b, c, sat, hue) = (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s);
    let mut order = [0, 1, 2, 3];
    order.shuffle(rng);
    let mut f = |d: f32| rng.random_range((1.0 - d).max(0.0)..=1.0 + d);
    let (brightness, contrast, saturation) = (f(b), f(c), f(sat));
    let hue = rng.random_range(-hue..=hue);
    JitterParams {
        order,
        brightness,
        contrast,
        saturation,
        hue,
    }
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let s = if max > 0.0 { d / max } else { 0.0 };
    let h = if d <= 0.0 {
        0.0
    } else if max == r {
        ((g - b) / d).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / d + 2.0) / 6.0
    } else {
        ((r - g) / d + 4.0) / 6.0
    };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Apply `f` to every pixel's HSV.
fn map_hsv(img: &mut ImageF32, f: impl Fn(f32, f32, f32) -> (f32, f32, f32)) {
    let hw = img.h * img.w;
    for i in 0..hw {
        let (h, s, v) = rgb_to_hsv(img.data[i], img.data[hw + i], img.data[2 * hw + i]);
        let (h, s, v) = f(h, s, v);
        let (r, g, b) = hsv_to_rgb(h, s, v);
        img.data[i] = r;
        img.data[hw + i] = g;
        img.data[2 * hw + i] = b;
    }
}

fn clip(img: &mut ImageF32) {
    for v in &mut img.data {
        *v = v.clamp(0.0, 1.0);
    }
}

/// Apply a colour-jitter draw to a `[0, 1]` RGB image (module doc), clipping after each step.
pub fn apply_jitter(img: &mut ImageF32, p: &JitterParams) {
    let hw = img.h * img.w;
    for &k in &p.order {
        match k {
            0 => img.data.iter_mut().for_each(|v| *v *= p.brightness),
            1 => {
                for c in 0..img.c {
                    let ch = &mut img.data[c * hw..(c + 1) * hw];
                    let mean = ch.iter().sum::<f32>() / hw.max(1) as f32;
                    ch.iter_mut()
                        .for_each(|v| *v = (*v - mean) * p.contrast + mean);
                }
            }
            2 => map_hsv(img, |h, s, v| (h, (s * p.saturation).clamp(0.0, 1.0), v)),
            _ => map_hsv(img, |h, s, v| (h + p.hue, s, v)),
        }
        clip(img);
    }
}

/// TF's `rgb_to_grayscale` (0.2989, 0.5870, 0.1140), kept as three equal channels.
pub fn grayscale(img: &mut ImageF32) {
    let hw = img.h * img.w;
    for i in 0..hw {
        let g = 0.2989 * img.data[i] + 0.5870 * img.data[hw + i] + 0.1140 * img.data[2 * hw + i];
        for c in 0..3 {
            img.data[c * hw + i] = g;
        }
    }
}

/// The blur's σ, drawn uniformly from `range`.
pub fn sample_blur_sigma(range: [f32; 2], rng: &mut impl Rng) -> f32 {
    rng.random_range(range[0]..=range[1])
}

/// The official `gaussian_blur`'s normalised 1-D kernel for an image side `side`:
/// radius `⌊(side / 10) / 2⌋`, `2·radius + 1` taps.
pub fn blur_kernel(side: usize, sigma: f32) -> Vec<f32> {
    let r = (side / 10 / 2) as i64;
    let k: Vec<f32> = (-r..=r)
        .map(|x| (-((x * x) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    k.into_iter().map(|v| v / s).collect()
}

/// Separable blur with `kernel`, zero padding (TF's `SAME`), horizontal then vertical.
pub fn blur(img: &mut ImageF32, kernel: &[f32]) {
    let r = (kernel.len() / 2) as i64;
    if r == 0 {
        return;
    }
    let (h, w) = (img.h as i64, img.w as i64);
    let mut tmp = vec![0f32; img.data.len()];
    for c in 0..img.c as i64 {
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0f32;
                for (t, kv) in kernel.iter().enumerate() {
                    let xx = x + t as i64 - r;
                    if (0..w).contains(&xx) {
                        acc += kv * img.data[((c * h + y) * w + xx) as usize];
                    }
                }
                tmp[((c * h + y) * w + x) as usize] = acc;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0f32;
                for (t, kv) in kernel.iter().enumerate() {
                    let yy = y + t as i64 - r;
                    if (0..h).contains(&yy) {
                        acc += kv * tmp[((c * h + yy) * w + x) as usize];
                    }
                }
                img.data[((c * h + y) * w + x) as usize] = acc;
            }
        }
    }
}

/// What one view drew, for tests and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewParams {
    pub crop: CropBox,
    pub flipped: bool,
    pub jitter: Option<JitterParams>,
    pub gray: bool,
    pub blur_sigma: Option<f32>,
}

impl ContrastiveAugConfig {
    /// One view of a `[0, 1]` RGB image, `side × side`, still in `[0, 1]` (normalisation
    /// follows), with what was drawn.
    pub fn view(&self, img: &ImageF32, side: usize, rng: &mut impl Rng) -> (ImageF32, ViewParams) {
        let b = sample_crop(img.h, img.w, self.crop_scale, self.crop_ratio, rng);
        let mut v = resize_bilinear(&crop(img, b), side, side);
        let flipped = rng.random::<f32>() < self.flip_prob;
        if flipped {
            hflip(&mut v);
        }
        let jitter =
            (rng.random::<f32>() < self.jitter_prob).then(|| sample_jitter(self.strength, rng));
        if let Some(j) = &jitter {
            if v.c == 3 {
                apply_jitter(&mut v, j);
            }
        }
        let gray = rng.random::<f32>() < self.gray_prob;
        if gray && v.c == 3 {
            grayscale(&mut v);
        }
        let blur_sigma =
            (rng.random::<f32>() < self.blur_prob).then(|| sample_blur_sigma(self.blur_sigma, rng));
        if let Some(s) = blur_sigma {
            blur(&mut v, &blur_kernel(side, s));
        }
        clip(&mut v);
        (
            v,
            ViewParams {
                crop: b,
                flipped,
                jitter,
                gray,
                blur_sigma,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn image(h: usize, w: usize) -> ImageF32 {
        let data = (0..3 * h * w)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        ImageF32 { c: 3, h, w, data }
    }

    #[test]
    fn crops_stay_in_the_image_and_their_ranges() {
        let (scale, ratio) = ([0.08f32, 1.0], [0.75f32, 4.0 / 3.0]);
        for seed in 0..500 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (h, w) = (40 + (seed as usize % 30), 50);
            let (t, l, ch, cw) = sample_crop(h, w, scale, ratio, &mut rng);
            assert!(t + ch <= h && l + cw <= w && ch > 0 && cw > 0);
            let share = (ch * cw) as f32 / (h * w) as f32;
            let r = cw as f32 / ch as f32;
            // Rounding of the sides moves share and ratio a little past the drawn values.
            let tol = 1.0 / ch.min(cw) as f32 * 2.5;
            assert!(share >= scale[0] * (1.0 - tol) && share <= 1.0, "{share}");
            assert!(
                r >= ratio[0] * (1.0 - tol) && r <= ratio[1] * (1.0 + tol),
                "{r}"
            );
            // Same seed, same crop.
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            assert_eq!(sample_crop(h, w, scale, ratio, &mut rng), (t, l, ch, cw));
        }
        // An image too elongated for any draw falls back to the centre crop at the ratio limit.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(
            sample_crop(10, 100, [1.0, 1.0], ratio, &mut rng),
            (0, 43, 10, 13)
        );
        let img = image(4, 5);
        let c = crop(&img, (1, 2, 2, 3));
        assert_eq!(c.at(1, 0, 0), img.at(1, 1, 2));
        assert_eq!(c.at(2, 1, 2), img.at(2, 2, 4));
    }

    #[test]
    fn jitter_parameters_in_range_and_seeded() {
        for s in [0.5f32, 1.0] {
            for seed in 0..300 {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let p = sample_jitter(s, &mut rng);
                let mut o = p.order;
                o.sort();
                assert_eq!(o, [0, 1, 2, 3]);
                for f in [p.brightness, p.contrast, p.saturation] {
                    assert!(f >= (1.0 - 0.8 * s).max(0.0) && f <= 1.0 + 0.8 * s, "{f}");
                }
                assert!(p.hue.abs() <= 0.2 * s);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                assert_eq!(sample_jitter(s, &mut rng), p);
            }
        }
    }

    #[test]
    fn colour_operations_by_hand() {
        // Brightness 0.5 alone halves; contrast 0 gives each channel's mean.
        let mut img = image(2, 3);
        let orig = img.clone();
        let id = JitterParams {
            order: [0, 1, 2, 3],
            brightness: 0.5,
            contrast: 1.0,
            saturation: 1.0,
            hue: 0.0,
        };
        apply_jitter(&mut img, &id);
        for (a, b) in img.data.iter().zip(&orig.data) {
            assert!((a - b * 0.5).abs() < 1e-5, "{a} {b}");
        }
        let mut img = orig.clone();
        apply_jitter(
            &mut img,
            &JitterParams {
                brightness: 1.0,
                contrast: 0.0,
                ..id
            },
        );
        for c in 0..3 {
            let m: f32 = orig.data[c * 6..(c + 1) * 6].iter().sum::<f32>() / 6.0;
            assert!(img.data[c * 6..(c + 1) * 6]
                .iter()
                .all(|v| (v - m).abs() < 1e-5));
        }
        // Saturation 0 is grey at the pixel's max (HSV value); hue 1/3 turn maps red to green.
        let mut red = ImageF32 {
            c: 3,
            h: 1,
            w: 1,
            data: vec![0.8, 0.2, 0.2],
        };
        let mut r2 = red.clone();
        apply_jitter(
            &mut red,
            &JitterParams {
                brightness: 1.0,
                saturation: 0.0,
                ..id
            },
        );
        assert!(
            red.data.iter().all(|v| (v - 0.8).abs() < 1e-5),
            "{:?}",
            red.data
        );
        apply_jitter(
            &mut r2,
            &JitterParams {
                brightness: 1.0,
                hue: 1.0 / 3.0,
                ..id
            },
        );
        let want = [0.2, 0.8, 0.2];
        assert!(
            r2.data.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
            "{:?}",
            r2.data
        );
        // HSV round trip.
        for (r, g, b) in [
            (0.1, 0.5, 0.9),
            (0.9, 0.9, 0.1),
            (0.3, 0.3, 0.3),
            (0.7, 0.1, 0.4),
        ] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() + (g - g2).abs() + (b - b2).abs() < 1e-5);
        }
        // Grayscale: TF's weights, three equal channels.
        let mut px = ImageF32 {
            c: 3,
            h: 1,
            w: 1,
            data: vec![1.0, 0.0, 0.0],
        };
        grayscale(&mut px);
        assert!(px.data.iter().all(|v| (v - 0.2989).abs() < 1e-6));
    }

    #[test]
    fn blur_kernel_and_blur() {
        // Side 32: kernel_size 3 → radius 1, 3 taps; side 224: 22 → radius 11, 23 taps.
        assert_eq!(blur_kernel(32, 1.0).len(), 3);
        assert_eq!(blur_kernel(224, 1.0).len(), 23);
        assert_eq!(blur_kernel(19, 1.0), vec![1.0]);
        let k = blur_kernel(32, 1.0);
        let e = (-0.5f32).exp();
        let want = [
            e / (1.0 + 2.0 * e),
            1.0 / (1.0 + 2.0 * e),
            e / (1.0 + 2.0 * e),
        ];
        assert!(k.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6));
        // A constant image keeps its value inside, darkens at the zero-padded border.
        let mut img = ImageF32 {
            c: 1,
            h: 3,
            w: 3,
            data: vec![1.0; 9],
        };
        blur(&mut img, &k);
        assert!((img.data[4] - 1.0).abs() < 1e-6);
        assert!((img.data[1] - (1.0 - want[0])).abs() < 1e-6);
        assert!((img.data[0] - (1.0 - want[0]).powi(2)).abs() < 1e-6);
        for seed in 0..100 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let s = sample_blur_sigma([0.1, 2.0], &mut rng);
            assert!((0.1..=2.0).contains(&s));
        }
    }

    #[test]
    fn views_are_seeded_sized_and_differ() {
        let aug = ContrastiveAugConfig::default();
        let img = image(40, 30);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (a, pa) = aug.view(&img, 16, &mut rng);
        let (b, pb) = aug.view(&img, 16, &mut rng);
        assert_eq!((a.c, a.h, a.w), (3, 16, 16));
        assert!(a.data.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(a != b && pa != pb);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(aug.view(&img, 16, &mut rng), (a, pa));
        // Over many draws each random step happens about as often as its probability.
        let mut counts = [0usize; 4];
        let n = 2000;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..n {
            let (_, p) = aug.view(&image(8, 8), 4, &mut rng);
            counts[0] += p.flipped as usize;
            counts[1] += p.jitter.is_some() as usize;
            counts[2] += p.gray as usize;
            counts[3] += p.blur_sigma.is_some() as usize;
        }
        for (c, want) in counts.iter().zip([0.5, 0.8, 0.2, 0.5]) {
            let f = *c as f64 / n as f64;
            assert!((f - want).abs() < 0.04, "{f} vs {want}");
        }
    }

    #[test]
    fn located_config_errors() {
        let mut c = ContrastiveAugConfig {
            crop_scale: [0.0, 1.0],
            ..Default::default()
        };
        assert_eq!(c.validate("m").unwrap_err().path, "m.crop_scale");
        c.crop_scale = [0.08, 1.0];
        c.gray_prob = 1.5;
        assert_eq!(c.validate("m").unwrap_err().path, "m.gray_prob");
        c.gray_prob = 0.2;
        c.blur_sigma = [2.0, 0.1];
        assert_eq!(c.validate("m").unwrap_err().path, "m.blur_sigma");
    }
}
