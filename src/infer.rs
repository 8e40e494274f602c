//! `kdet infer`: run a model on image files or folders. A detector's boxes are drawn with class
//! names and scores (bundled DejaVu Sans) and written as one COCO results JSON
//! (`detections.json`); a classifier's top-k classes per image are printed and written as
//! `predictions.json`. What is written follows what the model predicts.

use std::path::{Path, PathBuf};

use ab_glyph::{FontRef, PxScale};
use candle_core::Device;
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut, draw_text_mut};
use imageproc::rect::Rect;
use serde::Serialize;

use crate::data::loader::{collate, Sample, Target};
use crate::data::transforms::{normalize, resize_bilinear, ImageF32, InputConfig};
use crate::error::{Error, Result};
use crate::models::contract::{Detections, Model, Predictions};

/// Image files under the given files and folders (JPEG/PNG, sorted within a folder).
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for p in inputs {
        if p.is_dir() {
            // Each image once (links to one already read are skipped), hidden files left out.
            let mut walk = crate::data::folder::Walk::default();
            out.extend(walk.entries(p)?.1);
            walk.warn(p);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::msg(format!(
                "{}: no such image file or folder",
                p.display()
            )));
        }
    }
    if out.is_empty() {
        return Err(Error::msg("no JPEG or PNG images found in the inputs"));
    }
    Ok(out)
}

/// One detection of `kdet infer`'s JSON output (COCO results, plus the file and class name).
#[derive(Debug, Serialize)]
pub struct InferRecord {
    pub image_id: u64,
    pub file_name: String,
    /// The drawing of its image in the output folder.
    pub drawing: String,
    pub category_id: u64,
    pub category: String,
    pub bbox: [f64; 4],
    pub score: f64,
}

const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// One image's top classes (`kdet infer` with a classifier).
#[derive(Debug, Serialize)]
pub struct ClassRecord {
    pub image_id: u64,
    pub file_name: String,
    /// The most probable classes, most probable first.
    pub top: Vec<TopClass>,
}

#[derive(Debug, Serialize)]
pub struct TopClass {
    pub category_id: u64,
    pub category: String,
    pub score: f64,
}

/// What `kdet infer` found: detections (a detector) or top classes (a classifier).
#[derive(Debug, Default)]
pub struct InferOutput {
    pub detections: Vec<InferRecord>,
    pub classes: Vec<ClassRecord>,
}

/// Draw detections on an image.
pub fn draw(img: &mut RgbImage, d: &Detections, names: &[String], score_thr: f32) -> Result<()> {
    let font = FontRef::try_from_slice(crate::plot::FONT)
        .map_err(|e| Error::msg(format!("bundled font: {e}")))?;
    let scale = PxScale::from((img.height().min(img.width()) as f32 / 28.0).clamp(10.0, 24.0));
    for ((b, &s), &l) in d.boxes.iter().zip(&d.scores).zip(&d.labels) {
        if s < score_thr {
            continue;
        }
        let c = Rgb(PALETTE[(l as usize) % PALETTE.len()]);
        let (x, y) = (b[0].max(0.0) as i32, b[1].max(0.0) as i32);
        let (w, h) = ((b[2] - b[0]).max(1.0) as u32, (b[3] - b[1]).max(1.0) as u32);
        draw_hollow_rect_mut(img, Rect::at(x, y).of_size(w, h), c);
        if w > 2 && h > 2 {
            draw_hollow_rect_mut(img, Rect::at(x + 1, y + 1).of_size(w - 2, h - 2), c);
        }
        let name = names.get(l as usize - 1).map(String::as_str).unwrap_or("?");
        let text = format!("{name} {s:.2}");
        let (tw, th) = imageproc::drawing::text_size(scale, &font, &text);
        let ty = (y - th as i32 - 2).max(0);
        draw_filled_rect_mut(img, Rect::at(x, ty).of_size(tw + 4, th + 2), c);
        draw_text_mut(img, Rgb([0, 0, 0]), x + 2, ty, scale, &font, &text);
    }
    Ok(())
}

/// The drawing's file name of each image: `<stem>.png`, or `<stem>-<n>.png` (`n` the image's
/// 1-based position, its detections' `image_id`) when several inputs share the stem
/// (`d1/x.png d2/x.png`, `x.jpg x.png`), so no drawing overwrites another.
pub fn drawing_names(images: &[PathBuf]) -> Vec<String> {
    let stem = |p: &PathBuf| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("image")
            .to_string()
    };
    let mut count = std::collections::HashMap::new();
    for p in images {
        *count.entry(stem(p)).or_insert(0usize) += 1;
    }
    let mut used = std::collections::HashSet::new();
    images
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let s = stem(p);
            let mut name = if count[&s] > 1 {
                format!("{s}-{}", i + 1)
            } else {
                s
            };
            // An input may itself be called `x-2`: extend until unique.
            while !used.insert(name.clone()) {
                name.push('_');
            }
            format!("{name}.png")
        })
        .collect()
}

/// Run the model on each image. A detector: `DIR/<name>.png` drawings (see [`drawing_names`]) and
/// `DIR/detections.json` (detections scoring at least `score_thr`); a classifier: the `top_k`
/// classes of each image in `DIR/predictions.json`. `category_ids[l-1]` and `names[l-1]`
/// describe label `l`.
#[allow(clippy::too_many_arguments)]
pub fn infer(
    model: &dyn Model,
    input: &InputConfig,
    names: &[String],
    category_ids: &[u64],
    images: &[PathBuf],
    out: &Path,
    score_thr: f32,
    top_k: usize,
    device: &Device,
) -> Result<InferOutput> {
    if names.len() != category_ids.len() {
        return Err(Error::msg(format!(
            "{} class names but {} category ids: the model's class list is inconsistent",
            names.len(),
            category_ids.len()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let drawings = drawing_names(images);
    let mut recs = vec![];
    let mut classes = vec![];
    for (i, path) in images.iter().enumerate() {
        let rgb = crate::data::decode_image(path)?.to_rgb8();
        let mut x = ImageF32::from_rgb(&rgb);
        let orig = (x.h, x.w);
        normalize(&mut x, &input.mean, &input.std);
        let (nh, nw) = input.output_size(x.h, x.w);
        let x = resize_bilinear(&x, nh, nw);
        let sample = Sample {
            image_id: i as u64 + 1,
            image: x,
            target: Target {
                boxes: vec![],
                labels: vec![],
                crowd: vec![],
            },
            original_size: orig,
            flipped: false,
        };
        let batch = collate(vec![sample], input.size_divisible as usize, device)?;
        let d = match model.predict(&batch)? {
            Predictions::Classes(mut p) => {
                let p = p.remove(0);
                if p.len() != names.len() {
                    return Err(Error::msg(format!(
                        "the model scores {} classes but its class list has {}",
                        p.len(),
                        names.len()
                    )));
                }
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
                classes.push(ClassRecord {
                    image_id: i as u64 + 1,
                    file_name: path.display().to_string(),
                    top: order
                        .into_iter()
                        .take(top_k.max(1))
                        .map(|k| TopClass {
                            category_id: category_ids[k],
                            category: names[k].clone(),
                            score: p[k] as f64,
                        })
                        .collect(),
                });
                continue;
            }
            other => other.into_detections()?.remove(0),
        };
        // Small images are enlarged (nearest) so that labels stay readable.
        let k = (384 / rgb.width().min(rgb.height()).max(1)).max(1);
        let mut canvas = image::imageops::resize(
            &rgb,
            rgb.width() * k,
            rgb.height() * k,
            image::imageops::FilterType::Nearest,
        );
        let mut shown = d.clone();
        shown
            .boxes
            .iter_mut()
            .for_each(|b| b.iter_mut().for_each(|v| *v *= k as f32));
        draw(&mut canvas, &shown, names, score_thr)?;
        let dst = out.join(&drawings[i]);
        canvas
            .save(&dst)
            .map_err(|e| Error::msg(format!("{}: {e}", dst.display())))?;
        for b in d.to_coco(category_ids, score_thr)? {
            recs.push(InferRecord {
                image_id: i as u64 + 1,
                file_name: path.display().to_string(),
                drawing: drawings[i].clone(),
                category_id: b.category_id,
                category: names[b.label as usize - 1].clone(),
                bbox: b.bbox,
                score: b.score,
            });
        }
    }
    if classes.is_empty() {
        crate::util::write_atomic(
            &out.join("detections.json"),
            &serde_json::to_vec_pretty(&recs).expect("json"),
        )?;
    } else {
        crate::util::write_atomic(
            &out.join("predictions.json"),
            &serde_json::to_vec_pretty(&classes).expect("json"),
        )?;
    }
    Ok(InferOutput {
        detections: recs,
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_folder_gives_each_image_once_and_no_hidden_file() {
        let d = tempfile::tempdir().unwrap();
        let png = d.path().join("a.png");
        image::RgbImage::new(2, 2).save(&png).unwrap();
        std::os::unix::fs::symlink(&png, d.path().join("b.png")).unwrap();
        std::fs::copy(&png, d.path().join(".hidden.png")).unwrap();
        let got = collect_images(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(got, [png]);
    }

    #[test]
    fn drawings_never_share_a_name() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            drawing_names(&[p("d1/x.png"), p("d2/x.png"), p("y.jpg")]),
            ["x-1.png", "x-2.png", "y.png"]
        );
        // An input already named like a disambiguated drawing.
        assert_eq!(
            drawing_names(&[p("a/x.png"), p("b/x.jpg"), p("x-2.png")]),
            ["x-1.png", "x-2.png", "x-2_.png"]
        );
    }
}
