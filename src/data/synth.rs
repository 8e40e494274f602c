//! A deterministic synthetic COCO-style detection dataset: coloured shapes (circle, square,
//! triangle, …) of varied sizes and aspect ratios, partially overlapping, on textured
//! backgrounds, so that a detector must learn shape, not colour or position. Same spec ⇒
//! byte-identical files.
//!
//! Size buckets follow COCO's small/medium/large thresholds (32 and 96 px sides) scaled from a
//! 320 px image to the image side: small < 10 %, medium 10–30 %, large ≥ 30 % of the side.
//! (Scaling from COCO's typical 640 px would make "small" objects 6 px wide at 128 px, below what
//! a stride-4 feature map can localise.) Box `area` is the shape's own pixel area, as COCO's
//! segmentation area, so it differs from w×h.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::json;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Check, Error, Result};

/// Shape classes in category-id order (id = index + 1).
pub const SHAPES: [&str; 8] = [
    "circle", "square", "triangle", "cross", "ring", "diamond", "hexagon", "star",
];

/// Colour families of the classification task's classes (hue in degrees), each class a shape
/// of one colour: `red_circle`, …, `yellow_star`.
pub const COLOURS: [(&str, f64); 4] = [
    ("red", 0.0),
    ("green", 120.0),
    ("blue", 230.0),
    ("yellow", 55.0),
];

/// What a synthetic dataset is for.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SynthTask {
    /// COCO-style detection: several shapes per image, boxes.
    #[default]
    Detection,
    /// ImageFolder classification: one object crop per image, class = shape × colour.
    Classification,
    /// A stream of frames from one fixed camera (`data::video`, `kdet online`); `kdet synth`
    /// only, not a training set.
    Video,
}

/// A synthetic dataset generated on first use (`data.synthetic`; `kdet synth`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SynthSpec {
    pub task: SynthTask,
    pub seed: u64,
    /// Number of training images.
    pub train: usize,
    /// Number of validation images.
    pub val: usize,
    /// Side of the square images in pixels.
    pub size: u32,
    /// Number of classes: shapes (detection, at most 8) or shape × colour pairs
    /// (classification, at most 32).
    pub classes: usize,
    /// Imbalance ratio (most / least frequent class); 1 = balanced. Classification: training
    /// split only (val is balanced), classes ranked by a seeded shuffle.
    pub long_tail: f64,
    /// Classification: images without labels (`unlabeled/`), drawn with the training split's
    /// class frequencies.
    pub unlabeled: usize,
    /// Cache folder; the dataset lands in a sub-folder named by the spec's hash.
    pub cache_dir: PathBuf,
}

impl Default for SynthSpec {
    /// 512 train / 128 val images of 128 px with 5 balanced classes: a detector trains on them
    /// in minutes on a CPU.
    fn default() -> Self {
        Self {
            task: SynthTask::Detection,
            seed: 0,
            train: 512,
            val: 128,
            size: 128,
            classes: 5,
            long_tail: 1.0,
            unlabeled: 0,
            cache_dir: PathBuf::from(".cache/kdet"),
        }
    }
}

/// The largest synthetic image side.
const MAX_SYNTH_SIZE: u32 = 4096;

impl SynthSpec {
    /// Ranges; `p` is the section's JSON path (`data.synthetic`).
    pub fn validate(&self, p: &str) -> Check {
        if self.train == 0 {
            return Err(invalid(format!("{p}.train"), "must be >= 1"));
        }
        let (min_size, max_classes) =
            match self.task {
                SynthTask::Video => return Err(invalid(
                    format!("{p}.task"),
                    "`video` is a stream of frames for `kdet online`, made by `kdet synth --task \
                     video`, not a training set; use `detection` or `classification`",
                )),
                SynthTask::Detection => (32, SHAPES.len()),
                SynthTask::Classification => (16, SHAPES.len() * COLOURS.len()),
            };
        if self.size < min_size {
            return Err(invalid(
                format!("{p}.size"),
                format!("must be >= {min_size} pixels"),
            ));
        }
        // Each image is size² × 3 bytes while drawn and decoded, several at once: 4096 is
        // 50 MB; 100000 (30 GB) aborted in the allocator.
        if self.size > MAX_SYNTH_SIZE {
            return Err(invalid(
                format!("{p}.size"),
                format!(
                    "{} pixels is above the limit of {MAX_SYNTH_SIZE} ({} per image)",
                    self.size,
                    crate::util::gigabytes(3.0 * (self.size as f64).powi(2))
                ),
            ));
        }
        if self.classes == 0 || self.classes > max_classes {
            return Err(invalid(
                format!("{p}.classes"),
                format!("must be in 1..={max_classes}"),
            ));
        }
        if self.task == SynthTask::Detection && self.unlabeled > 0 {
            return Err(invalid(
                format!("{p}.unlabeled"),
                "unlabeled images are made for the classification task only",
            ));
        }
        if self.task == SynthTask::Classification && self.val > 0 && self.val < self.classes {
            return Err(invalid(
                format!("{p}.val"),
                format!(
                    "a balanced val split needs at least one image per class ({})",
                    self.classes
                ),
            ));
        }
        if self.long_tail.is_nan() || self.long_tail < 1.0 {
            return Err(invalid(
                format!("{p}.long_tail"),
                "must be >= 1 (1 = balanced)",
            ));
        }
        Ok(())
    }
}

/// Relative side ranges of the small / medium / large buckets and how often each is drawn.
const BUCKETS: [(f64, f64, f64); 3] = [(0.07, 0.10, 0.3), (0.10, 0.30, 0.45), (0.30, 0.55, 0.25)];

/// Where a generated dataset lies.
#[derive(Debug, Clone)]
pub struct SynthPaths {
    pub root: PathBuf,
    pub images: PathBuf,
    pub train: PathBuf,
    pub val: PathBuf,
}

impl SynthPaths {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            images: root.join("images"),
            train: root.join("annotations/train.json"),
            val: root.join("annotations/val.json"),
        }
    }
}

/// Is `(u, v)` in `[-1, 1]²` inside shape `k`?
fn inside(k: usize, u: f64, v: f64) -> bool {
    let (au, av) = (u.abs(), v.abs());
    let r2 = u * u + v * v;
    match k {
        0 => r2 <= 1.0,
        1 => au <= 1.0 && av <= 1.0,
        2 => (-1.0..=1.0).contains(&v) && au <= (v + 1.0) / 2.0,
        3 => au <= 1.0 && av <= 1.0 && (au <= 0.33 || av <= 0.33),
        4 => (0.3025..=1.0).contains(&r2),
        5 => au + av <= 1.0,
        6 => av <= 1.0 && au <= 1.0 - 0.5 * av,
        _ => {
            // Five-pointed star: radius swings between 0.42 and 1 with the angle.
            let t = v.atan2(u) + std::f64::consts::FRAC_PI_2;
            let phase = (t * 5.0 / (2.0 * std::f64::consts::PI)).rem_euclid(1.0);
            let tri = 1.0 - 2.0 * (phase - 0.5).abs(); // 0 at the points, 1 between
            r2.sqrt() <= 1.0 - 0.58 * tri
        }
    }
}

struct Object {
    class: usize,
    bbox: [f64; 4],
    area: f64,
}

/// Class probabilities: geometric decay so that first / last = `ratio`.
pub(crate) fn class_weights(k: usize, ratio: f64) -> Vec<f64> {
    (0..k)
        .map(|i| {
            if k == 1 {
                1.0
            } else {
                ratio.powf(-(i as f64) / (k - 1) as f64)
            }
        })
        .collect()
}

pub(crate) fn pick(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let ix = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let iy = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    if ix <= 0.0 || iy <= 0.0 {
        return 0.0;
    }
    let inter = ix * iy;
    inter / (a[2] * a[3] + b[2] * b[3] - inter)
}

/// A textured background: a two-colour gradient with low-contrast stripes (the video stream
/// shifts it slowly and scales its light, `data::video`).
#[derive(Debug, Clone)]
pub(crate) struct Background {
    pub c0: [f64; 3],
    pub c1: [f64; 3],
    gx: f64,
    gy: f64,
    freq: f64,
    stripe_amp: f64,
    angle: f64,
}

impl Background {
    /// A random background (the draws in the order the dataset has always made them).
    pub(crate) fn random(rng: &mut ChaCha8Rng) -> Self {
        Self {
            c0: std::array::from_fn(|_| rng.random_range(40.0..215.0)),
            c1: std::array::from_fn(|_| rng.random_range(40.0..215.0)),
            gx: rng.random_range(-1.0..1.0),
            gy: rng.random_range(-1.0..1.0),
            freq: rng.random_range(0.05..0.4),
            stripe_amp: rng.random_range(0.0..18.0),
            angle: rng.random_range(0.0..std::f64::consts::PI),
        }
    }

    /// Its `s × s` pixels (row-major RGB in [0, 255] before rounding), each with per-pixel
    /// noise in ±10, scaled by `gain` (the light).
    pub(crate) fn paint(&self, s: usize, gain: f64, rng: &mut ChaCha8Rng) -> Vec<[f64; 3]> {
        let mut px = vec![[0f64; 3]; s * s];
        for y in 0..s {
            for x in 0..s {
                let (fx, fy) = (x as f64 / s as f64, y as f64 / s as f64);
                let t = ((self.gx * (fx - 0.5) + self.gy * (fy - 0.5)) + 0.5).clamp(0.0, 1.0);
                let stripe = self.stripe_amp
                    * ((x as f64 * self.angle.cos() + y as f64 * self.angle.sin()) * self.freq)
                        .sin();
                for (c, p) in px[y * s + x].iter_mut().enumerate() {
                    let v = self.c0[c] * (1.0 - t)
                        + self.c1[c] * t
                        + stripe
                        + rng.random_range(-10.0..10.0);
                    *p = if gain == 1.0 { v } else { v * gain };
                }
            }
        }
        px
    }
}

/// A colour whose grey level differs by more than 60 from the background's at the centre of
/// box `[x, y, w, h]`, so the shape stands out.
pub(crate) fn contrasting_colour(
    px: &[[f64; 3]],
    s: usize,
    b: [f64; 4],
    rng: &mut ChaCha8Rng,
) -> [f64; 3] {
    let [x, y, w, h] = b;
    let (cx, cy) = (
        ((x + w / 2.0).max(0.0) as usize).min(s - 1),
        ((y + h / 2.0).max(0.0) as usize).min(s - 1),
    );
    let bg = px[cy * s + cx];
    let bg_l = (bg[0] + bg[1] + bg[2]) / 3.0;
    loop {
        let c: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
        if ((c[0] + c[1] + c[2]) / 3.0 - bg_l).abs() > 60.0 {
            break c;
        }
    }
}

/// Rasterise shape `class` filling box `[x, y, w, h]` (which may reach outside the image) in
/// `colour` with 2×2 supersampling and per-pixel noise. Returns the tight box `[x, y, w, h]`
/// of the pixels at least half covered and the covered area, or `None` when no pixel is.
pub(crate) fn draw_shape(
    px: &mut [[f64; 3]],
    s: usize,
    class: usize,
    b: [f64; 4],
    colour: [f64; 3],
    rng: &mut ChaCha8Rng,
) -> Option<([f64; 4], f64)> {
    let [x, y, w, h] = b;
    let (mut x1, mut y1, mut x2, mut y2, mut area) = (usize::MAX, usize::MAX, 0, 0, 0.0);
    for py in (y.floor().max(0.0) as usize)..((y + h).ceil().max(0.0) as usize).min(s) {
        for pxi in (x.floor().max(0.0) as usize)..((x + w).ceil().max(0.0) as usize).min(s) {
            let mut cov = 0.0;
            for (oy, ox) in [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)] {
                let u = ((pxi as f64 + ox) - x) / w * 2.0 - 1.0;
                let v = ((py as f64 + oy) - y) / h * 2.0 - 1.0;
                if inside(class, u, v) {
                    cov += 0.25;
                }
            }
            if cov == 0.0 {
                continue;
            }
            let noise = rng.random_range(-12.0..12.0);
            let p = &mut px[py * s + pxi];
            for c in 0..3 {
                p[c] = p[c] * (1.0 - cov) + (colour[c] + noise) * cov;
            }
            area += cov;
            if cov >= 0.5 {
                x1 = x1.min(pxi);
                y1 = y1.min(py);
                x2 = x2.max(pxi + 1);
                y2 = y2.max(py + 1);
            }
        }
    }
    (x2 > x1 && y2 > y1).then(|| {
        let bbox = [x1 as f64, y1 as f64, (x2 - x1) as f64, (y2 - y1) as f64];
        (bbox, area)
    })
}

/// Pixels (as [`Background::paint`] makes them) → an 8-bit image.
pub(crate) fn to_image(px: &[[f64; 3]], size: u32) -> image::RgbImage {
    let s = size as usize;
    image::RgbImage::from_fn(size, size, |x, y| {
        let p = px[y as usize * s + x as usize];
        image::Rgb(p.map(|v| v.round().clamp(0.0, 255.0) as u8))
    })
}

/// Render one image and its objects.
fn render(size: u32, rng: &mut ChaCha8Rng, weights: &[f64]) -> (image::RgbImage, Vec<Object>) {
    let s = size as usize;
    let mut px = Background::random(rng).paint(s, 1.0, rng);
    let n_obj = rng.random_range(1..=6);
    let mut objects: Vec<Object> = Vec::new();
    for _ in 0..n_obj {
        let class = pick(rng, weights);
        let bucket = pick(rng, &BUCKETS.map(|b| b.2));
        let (lo, hi, _) = BUCKETS[bucket];
        let side = rng.random_range(lo..hi) * size as f64;
        let aspect: f64 = rng.random_range(0.7..1.4);
        let (w, h) = (
            (side * aspect.sqrt()).max(4.0),
            (side / aspect.sqrt()).max(4.0),
        );
        // Place without heavy overlap (IoU ≤ 0.3 with every earlier object).
        let placed = (0..20).find_map(|_| {
            let x = rng.random_range(0.0..(size as f64 - w).max(1.0));
            let y = rng.random_range(0.0..(size as f64 - h).max(1.0));
            let b = [x, y, w, h];
            objects.iter().all(|o| iou(&o.bbox, &b) <= 0.3).then_some(b)
        });
        let Some(b) = placed else { continue };
        let colour = contrasting_colour(&px, s, b, rng);
        if let Some((bbox, area)) = draw_shape(&mut px, s, class, b, colour, rng) {
            objects.push(Object { class, bbox, area });
        }
    }
    (to_image(&px, size), objects)
}

/// The COCO categories of the first `k` shapes (id = index + 1).
pub(crate) fn shape_categories(k: usize) -> Vec<serde_json::Value> {
    SHAPES[..k]
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i + 1, "name": s, "supercategory": "shape"}))
        .collect()
}

/// Seed of image `index` of `split` (0 = train, 1 = val).
fn image_seed(seed: u64, split: u64, index: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (split << 40)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// Write the dataset described by `spec` to `root` (images/ and annotations/{train,val}.json).
pub fn generate(spec: &SynthSpec, root: &Path) -> Result<SynthPaths> {
    let paths = SynthPaths::new(root);
    for d in [&paths.images, &root.join("annotations")] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let weights = class_weights(spec.classes, spec.long_tail);
    for (split, name, n, out) in [
        (0u64, "train", spec.train, &paths.train),
        (1, "val", spec.val, &paths.val),
    ] {
        let rendered: Vec<(String, Vec<Object>)> = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(image_seed(spec.seed, split, i as u64));
                let (img, objs) = render(spec.size, &mut rng, &weights);
                let file = format!("{name}_{:06}.png", i + 1);
                let p = paths.images.join(&file);
                img.save(&p)
                    .map_err(|e| Error::msg(format!("{}: {e}", p.display())))?;
                Ok((file, objs))
            })
            .collect::<Result<_>>()?;
        let mut images = Vec::new();
        let mut anns = Vec::new();
        for (i, (file, objs)) in rendered.iter().enumerate() {
            images.push(
                json!({"id": i + 1, "file_name": file, "width": spec.size, "height": spec.size}),
            );
            for o in objs {
                anns.push(json!({
                    "id": anns.len() + 1,
                    "image_id": i + 1,
                    "category_id": o.class + 1,
                    "bbox": o.bbox,
                    "area": o.area,
                    "iscrowd": 0,
                }));
            }
        }
        let categories = shape_categories(spec.classes);
        let doc = json!({
            "info": {"description": format!("kdet synthetic shapes ({name})"), "version": "1"},
            "images": images,
            "annotations": anns,
            "categories": categories,
        });
        let text = serde_json::to_vec(&doc).map_err(|e| Error::msg(e.to_string()))?;
        crate::util::write_atomic(out, &text)?;
    }
    Ok(paths)
}

/// The cached dataset for `spec` (generated on first use). The folder is named by a hash of the
/// spec and is renamed into place only when complete, so a crash never leaves a half dataset.
pub fn ensure(spec: &SynthSpec, cache_dir: &Path) -> Result<SynthPaths> {
    let root = cached_root(spec, cache_dir)?;
    let paths = SynthPaths::new(&root);
    if paths.train.is_file() && paths.val.is_file() {
        return Ok(paths);
    }
    fill_cache(&root, cache_dir, |tmp| generate(spec, tmp).map(|_| ()))?;
    Ok(paths)
}

/// The cache folder of `spec` (a hash of everything that changes the images; the detection
/// task's key is the one kdet used before the classification task existed).
fn cached_root(spec: &SynthSpec, cache_dir: &Path) -> Result<PathBuf> {
    let key = match spec.task {
        SynthTask::Detection => serde_json::to_string(&(
            spec.seed,
            spec.train,
            spec.val,
            spec.size,
            spec.classes,
            spec.long_tail,
        )),
        // Refused by `validate`: a stream is written where `kdet synth` is told, never cached.
        SynthTask::Video => return Err(Error::msg("a synthetic video is not a cached dataset")),
        SynthTask::Classification => serde_json::to_string(&(
            "classification",
            spec.seed,
            spec.train,
            spec.val,
            spec.size,
            spec.classes,
            spec.long_tail,
            spec.unlabeled,
        )),
    }
    .map_err(|e| Error::msg(e.to_string()))?;
    Ok(cache_dir.join(format!("synth-{:016x}", fnv1a(key.as_bytes()))))
}

/// Generate into a temporary folder, then rename it into place, so a crash never leaves a
/// half dataset.
fn fill_cache(root: &Path, cache_dir: &Path, make: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    remove_stale_generations(cache_dir);
    let tmp = cache_dir.join(format!("synth-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    make(&tmp)?;
    std::fs::rename(&tmp, root).map_err(|e| Error::io(root, e))
}

/// Where a generated classification dataset lies: ImageFolder `train/` and `val/`, and
/// `unlabeled/` (present when the spec asks for unlabeled images).
#[derive(Debug, Clone)]
pub struct FolderPaths {
    pub train: PathBuf,
    pub val: PathBuf,
    pub unlabeled: PathBuf,
}

impl FolderPaths {
    pub fn new(root: &Path) -> Self {
        Self {
            train: root.join("train"),
            val: root.join("val"),
            unlabeled: root.join("unlabeled"),
        }
    }
}

/// The cached classification dataset for `spec` (generated on first use).
pub fn ensure_classification(spec: &SynthSpec, cache_dir: &Path) -> Result<FolderPaths> {
    let root = cached_root(spec, cache_dir)?;
    let paths = FolderPaths::new(&root);
    if paths.train.is_dir() && paths.val.is_dir() {
        return Ok(paths);
    }
    fill_cache(&root, cache_dir, |tmp| {
        generate_classification(spec, tmp).map(|_| ())
    })?;
    Ok(paths)
}

/// Class names of the classification task, in label order: colour-major (`red_circle`, …,
/// `red_star`, `green_circle`, …).
pub fn classification_classes(k: usize) -> Vec<String> {
    (0..k)
        .map(|c| {
            format!(
                "{}_{}",
                COLOURS[c / SHAPES.len()].0,
                SHAPES[c % SHAPES.len()]
            )
        })
        .collect()
}

/// Training images per class: `total` spread over the classes with geometric decay so that the
/// most / least frequent = `ratio`, the classes ranked by a shuffle seeded by `seed` (so rare
/// classes are of every shape and colour), each class at least one image.
pub fn long_tail_counts(k: usize, total: usize, ratio: f64, seed: u64) -> Vec<usize> {
    let w = class_weights(k, ratio);
    let sum: f64 = w.iter().sum();
    let mut rank: Vec<usize> = (0..k).collect();
    {
        use rand::seq::SliceRandom;
        rank.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_C1A5));
    }
    let mut counts = vec![0; k];
    for (r, &c) in rank.iter().enumerate() {
        counts[c] = ((total as f64 * w[r] / sum).round() as usize).max(1);
    }
    counts
}

/// HSV (h in degrees, s, v in [0, 1]) → RGB in [0, 255].
fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

/// One object crop of class `class` (shape × colour) on a textured background: the shape fills
/// 45–85 % of the side, aspect 0.75–1.33, anywhere inside; its hue within ±12° of the colour
/// family, saturation and value 0.55–1; the background a low-saturation gradient with stripes
/// and noise (so colour alone never gives the class away to a background cue).
fn render_crop(size: u32, class: usize, rng: &mut ChaCha8Rng) -> image::RgbImage {
    let s = size as usize;
    let c0: [f64; 3] = hsv(
        rng.random_range(0.0..360.0),
        rng.random_range(0.0..0.35),
        rng.random_range(0.2..0.9),
    );
    let c1: [f64; 3] = hsv(
        rng.random_range(0.0..360.0),
        rng.random_range(0.0..0.35),
        rng.random_range(0.2..0.9),
    );
    let (gx, gy) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
    let freq = rng.random_range(0.2..1.2);
    let stripe_amp = rng.random_range(0.0..25.0);
    let angle: f64 = rng.random_range(0.0..std::f64::consts::PI);
    let mut px = vec![[0f64; 3]; s * s];
    for y in 0..s {
        for x in 0..s {
            let (fx, fy) = (x as f64 / s as f64, y as f64 / s as f64);
            let t = ((gx * (fx - 0.5) + gy * (fy - 0.5)) + 0.5).clamp(0.0, 1.0);
            let stripe =
                stripe_amp * ((x as f64 * angle.cos() + y as f64 * angle.sin()) * freq).sin();
            for c in 0..3 {
                px[y * s + x][c] =
                    c0[c] * (1.0 - t) + c1[c] * t + stripe + rng.random_range(-12.0..12.0);
            }
        }
    }
    let (shape, colour) = (class % SHAPES.len(), class / SHAPES.len());
    let side = rng.random_range(0.45..0.85) * size as f64;
    let aspect: f64 = rng.random_range(0.75..1.33);
    let (w, h) = (
        (side * aspect.sqrt()).min(size as f64),
        (side / aspect.sqrt()).min(size as f64),
    );
    let x = rng.random_range(0.0..=(size as f64 - w).max(0.0));
    let y = rng.random_range(0.0..=(size as f64 - h).max(0.0));
    let fill = hsv(
        COLOURS[colour].1 + rng.random_range(-12.0..12.0),
        rng.random_range(0.55..1.0),
        rng.random_range(0.55..1.0),
    );
    for py in (y.floor() as usize)..((y + h).ceil() as usize).min(s) {
        for pxi in (x.floor() as usize)..((x + w).ceil() as usize).min(s) {
            let mut cov = 0.0;
            for (oy, ox) in [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)] {
                let u = ((pxi as f64 + ox) - x) / w * 2.0 - 1.0;
                let v = ((py as f64 + oy) - y) / h * 2.0 - 1.0;
                if inside(shape, u, v) {
                    cov += 0.25;
                }
            }
            if cov == 0.0 {
                continue;
            }
            let noise = rng.random_range(-10.0..10.0);
            let p = &mut px[py * s + pxi];
            for c in 0..3 {
                p[c] = p[c] * (1.0 - cov) + (fill[c] + noise) * cov;
            }
        }
    }
    image::RgbImage::from_fn(size, size, |x, y| {
        let p = px[y as usize * s + x as usize];
        image::Rgb(p.map(|v| v.round().clamp(0.0, 255.0) as u8))
    })
}

/// Write the classification dataset `spec` describes to `root`: `train/<class>/*.png` (long
/// tail per `long_tail`), `val/<class>/*.png` (balanced: `val / classes` per class) and, when
/// `unlabeled > 0`, `unlabeled/*.png`.
pub fn generate_classification(spec: &SynthSpec, root: &Path) -> Result<FolderPaths> {
    let paths = FolderPaths::new(root);
    let names = classification_classes(spec.classes);
    let counts = long_tail_counts(spec.classes, spec.train, spec.long_tail, spec.seed);
    let per_val = if spec.val > 0 {
        spec.val / spec.classes
    } else {
        0
    };
    // (split code, folder, class, index in the split)
    let mut jobs: Vec<(u64, PathBuf, usize, usize)> = vec![];
    let mut n = 0;
    for (c, &k) in counts.iter().enumerate() {
        for _ in 0..k {
            jobs.push((0, paths.train.join(&names[c]), c, n));
            n += 1;
        }
    }
    for (c, name) in names.iter().enumerate() {
        for i in 0..per_val {
            jobs.push((1, paths.val.join(name), c, c * per_val + i));
        }
    }
    let mut label_rng = ChaCha8Rng::seed_from_u64(image_seed(spec.seed, 3, 0));
    let w: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    for i in 0..spec.unlabeled {
        jobs.push((2, paths.unlabeled.clone(), pick(&mut label_rng, &w), i));
    }
    for d in jobs
        .iter()
        .map(|j| &j.1)
        .collect::<std::collections::BTreeSet<_>>()
    {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    jobs.par_iter()
        .map(|(split, dir, class, i)| {
            let mut rng = ChaCha8Rng::seed_from_u64(image_seed(spec.seed, 10 + split, *i as u64));
            let img = render_crop(spec.size, *class, &mut rng);
            let p = dir.join(format!("{:06}.png", i + 1));
            img.save(&p)
                .map_err(|e| Error::msg(format!("{}: {e}", p.display())))
        })
        .collect::<Result<Vec<()>>>()?;
    Ok(paths)
}

/// Remove `synth-tmp-<pid>` folders of generations a killed process left in `cache_dir` (those
/// of a live process are being written).
fn remove_stale_generations(cache_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("synth-tmp-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !crate::util::process_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_generations_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let dead = d.path().join("synth-tmp-999999999");
        std::fs::create_dir_all(dead.join("images")).unwrap();
        let mine = d.path().join("notes");
        std::fs::create_dir_all(&mine).unwrap();
        remove_stale_generations(d.path());
        assert!(!dead.exists() && mine.exists());
    }
    use crate::data::coco::{load_split, Purpose};

    fn spec(seed: u64) -> SynthSpec {
        SynthSpec {
            seed,
            train: 6,
            val: 3,
            size: 64,
            classes: 5,
            long_tail: 1.0,
            cache_dir: ".".into(),
            ..Default::default()
        }
    }

    fn read_all(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![];
        for sub in ["images", "annotations"] {
            let mut names: Vec<_> = std::fs::read_dir(root.join(sub))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for p in names {
                out.push((
                    p.file_name().unwrap().to_string_lossy().into(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
        out
    }

    #[test]
    fn same_seed_same_bytes_and_parses() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let pa = generate(&spec(1), a.path()).unwrap();
        generate(&spec(1), b.path()).unwrap();
        generate(&spec(2), c.path()).unwrap();
        assert_eq!(read_all(a.path()), read_all(b.path()));
        assert_ne!(read_all(a.path()), read_all(c.path()));
        let d = load_split(&pa.train, &pa.images, Purpose::Eval).unwrap();
        assert_eq!(d.records.len(), 6);
        assert_eq!(d.categories.names, SHAPES[..5].to_vec());
        assert!(d.records.iter().map(|r| r.boxes.len()).sum::<usize>() >= 6);
        for r in &d.records {
            for b in &r.boxes {
                assert!(
                    b[0] >= 0.0
                        && b[1] >= 0.0
                        && b[2] <= 64.0
                        && b[3] <= 64.0
                        && b[2] > b[0]
                        && b[3] > b[1]
                );
            }
        }
        // Areas are shape areas, not w×h (a circle covers ~π/4 of its box).
        let circle = d.gt.dataset.annotations.iter().find(|a| a.category_id == 1);
        if let Some(a) = circle {
            let [_, _, w, h] = a.bbox.unwrap();
            assert!(a.area.unwrap() < w * h * 0.95);
        }
        // And hotcoco takes the dataset as is.
        let _ = hotcoco::COCO::from_dataset(d.gt.dataset.clone());
    }

    #[test]
    fn long_tail_skews_classes() {
        let w = class_weights(5, 100.0);
        assert!((w[0] / w[4] - 100.0).abs() < 1e-9);
        let s = SynthSpec {
            train: 60,
            val: 1,
            long_tail: 50.0,
            ..spec(3)
        };
        let dir = tempfile::tempdir().unwrap();
        let p = generate(&s, dir.path()).unwrap();
        let d = load_split(&p.train, &p.images, Purpose::Eval).unwrap();
        let count = |c: u64| {
            d.gt.dataset
                .annotations
                .iter()
                .filter(|a| a.category_id == c)
                .count()
        };
        assert!(
            count(1) > 4 * count(5).max(1),
            "{} vs {}",
            count(1),
            count(5)
        );
    }

    #[test]
    fn ensure_caches() {
        let dir = tempfile::tempdir().unwrap();
        let p1 = ensure(&spec(4), dir.path()).unwrap();
        let t1 = std::fs::metadata(&p1.train).unwrap().modified().unwrap();
        let p2 = ensure(&spec(4), dir.path()).unwrap();
        assert_eq!(p1.root, p2.root);
        assert_eq!(
            std::fs::metadata(&p2.train).unwrap().modified().unwrap(),
            t1
        );
        assert_ne!(ensure(&spec(5), dir.path()).unwrap().root, p1.root);
    }

    #[test]
    fn classification_long_tail_balanced_val_and_unlabeled() {
        let s = SynthSpec {
            task: SynthTask::Classification,
            seed: 1,
            train: 300,
            val: 40,
            size: 24,
            classes: 20,
            long_tail: 100.0,
            unlabeled: 7,
            cache_dir: ".".into(),
        };
        s.validate("s").unwrap();
        let big = long_tail_counts(20, 5000, 100.0, 1);
        let (max, min) = (*big.iter().max().unwrap(), *big.iter().min().unwrap());
        assert!((max as f64 / min as f64 - 100.0).abs() < 10.0, "{big:?}");
        assert!((big.iter().sum::<usize>() as i64 - 5000).abs() < 20);
        let counts = long_tail_counts(20, 300, 100.0, 1);
        let dir = tempfile::tempdir().unwrap();
        let p = generate_classification(&s, dir.path()).unwrap();
        let t = crate::data::folder::load_folder(&p.train, None).unwrap();
        // ImageFolder orders classes by folder name.
        let mut names = classification_classes(20);
        assert_eq!(names[9], "green_square");
        let by_name: std::collections::HashMap<String, usize> =
            names.iter().cloned().zip(counts.iter().copied()).collect();
        names.sort();
        assert_eq!(t.categories.names, names);
        let got: Vec<usize> = names.iter().map(|n| by_name[n]).collect();
        assert_eq!(t.class_counts(), got);
        let v = crate::data::folder::load_folder(&p.val, Some(&t.categories.names)).unwrap();
        assert!(v.class_counts().iter().all(|&c| c == 2));
        assert_eq!(
            crate::data::folder::load_unlabeled(&p.unlabeled, 1)
                .unwrap()
                .len(),
            7
        );
        // Same spec, same bytes.
        let d2 = tempfile::tempdir().unwrap();
        generate_classification(&s, d2.path()).unwrap();
        let a = std::fs::read(p.train.join("red_circle/000001.png")).ok();
        let b = std::fs::read(d2.path().join("train/red_circle/000001.png")).ok();
        assert_eq!(a, b);
        // More classes than shape × colour pairs are refused, located.
        let e = SynthSpec { classes: 33, ..s }
            .validate("data.synthetic")
            .unwrap_err();
        assert_eq!(e.path, "data.synthetic.classes");
    }
}
