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
use crate::manifest::{same_file, Manifest};
use crate::models::contract::{Detections, Model, Predictions};

/// The manifest of an infer output folder: the drawings and JSON this infer wrote there.
pub const MANIFEST: &str = "kdet-infer.json";

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

/// `rgb` with the detections scoring at least `score_thr` drawn; a small image is enlarged
/// (nearest) first, so that the labels stay readable.
pub fn drawing(
    rgb: &RgbImage,
    d: &Detections,
    names: &[String],
    score_thr: f32,
) -> Result<RgbImage> {
    let k = (384 / rgb.width().min(rgb.height()).max(1)).max(1);
    let mut canvas = image::imageops::resize(
        rgb,
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
    Ok(canvas)
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

/// Take `out` for an infer writing `files`: it must be a new or empty folder, or one an
/// earlier infer wrote (its manifest), whose listed files are removed — they are stale. No
/// file written or removed may be one of the input `images`. Writes the manifest listing
/// `files` before anything else; returns the files removed.
pub fn claim_output(out: &Path, images: &[PathBuf], files: &[String]) -> Result<Vec<PathBuf>> {
    if out.exists() && !out.is_dir() {
        return Err(Error::msg(format!(
            "--out {}: is a file, not a folder",
            out.display()
        )));
    }
    let earlier = match Manifest::read(out, MANIFEST)? {
        Some(m) if m.kind == "infer" => m.files,
        Some(m) => {
            return Err(Error::msg(format!(
                "--out {}: its {MANIFEST} is of a `{}`, not of an infer: name a new folder",
                out.display(),
                m.kind
            )))
        }
        None => {
            refuse_unknown_contents(out)?;
            Default::default()
        }
    };
    let touched = earlier.iter().chain(files).map(String::as_str);
    for name in touched.chain([MANIFEST]) {
        if let Some(img) = images.iter().find(|i| same_file(i, &out.join(name))) {
            return Err(Error::msg(format!(
                "--out {}: {} is an input image, and this infer would replace it (as {name}): \
                 name another folder as --out",
                out.display(),
                img.display()
            )));
        }
    }
    let all = earlier.iter().cloned().chain(files.iter().cloned());
    Manifest::new("infer", all).write(out, MANIFEST)?;
    let mut removed = vec![];
    for path in Manifest::new("infer", earlier).present(out) {
        if path.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed.push(path);
        }
    }
    Manifest::new("infer", files.iter().cloned()).write(out, MANIFEST)?;
    Ok(removed)
}

/// Refuse a folder that holds anything: with no infer manifest, nothing there is kdet's.
fn refuse_unknown_contents(out: &Path) -> Result<()> {
    let mut names: Vec<String> = match std::fs::read_dir(out) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(out, e)),
    };
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let more = if names.len() > 5 {
        format!(" … ({} in all)", names.len())
    } else {
        String::new()
    };
    let run = if out.join(crate::engine::rundir::MANIFEST).exists() {
        " (a training run's folder)"
    } else {
        ""
    };
    Err(Error::msg(format!(
        "--out {}: the folder is not empty{run} ({}{more}) and no earlier `kdet infer` wrote it \
         (no {MANIFEST}): infer writes only into a new or empty folder, or one of an earlier \
         infer, so that it never overwrites files it did not write. Name a new folder",
        out.display(),
        names[..names.len().min(5)].join(", ")
    )))
}

/// A batch of one image as a network with `input` sees it at inference: normalised, resized
/// (no flip), padded; no targets.
pub fn image_batch(
    rgb: &RgbImage,
    image_id: u64,
    input: &InputConfig,
    device: &Device,
) -> Result<crate::data::loader::Batch> {
    let mut x = ImageF32::from_rgb(rgb);
    let orig = (x.h, x.w);
    normalize(&mut x, &input.mean, &input.std);
    let (nh, nw) = input.output_size(x.h, x.w);
    let sample = Sample {
        image_id,
        image: resize_bilinear(&x, nh, nw),
        target: Target {
            boxes: vec![],
            labels: vec![],
            crowd: vec![],
        },
        original_size: orig,
        flipped: false,
    };
    collate(vec![sample], input.size_divisible as usize, device)
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
    let drawings = drawing_names(images);
    let mut files = drawings.clone();
    files.extend(["detections.json".into(), "predictions.json".into()]);
    let stale = claim_output(out, images, &files)?;
    if !stale.is_empty() {
        eprintln!(
            "removed {} file(s) of the earlier infer into {}",
            stale.len(),
            out.display()
        );
    }
    let mut recs = vec![];
    let mut classes = vec![];
    for (i, path) in images.iter().enumerate() {
        let rgb = crate::data::decode_image(path)?.to_rgb8();
        let batch = image_batch(&rgb, i as u64 + 1, input, device)?;
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
        let canvas = drawing(&rgb, &d, names, score_thr)?;
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
    let written: Vec<String> = if classes.is_empty() {
        crate::util::write_atomic(
            &out.join("detections.json"),
            &serde_json::to_vec_pretty(&recs).expect("json"),
        )?;
        drawings
            .into_iter()
            .chain(["detections.json".into()])
            .collect()
    } else {
        crate::util::write_atomic(
            &out.join("predictions.json"),
            &serde_json::to_vec_pretty(&classes).expect("json"),
        )?;
        vec!["predictions.json".into()]
    };
    // What was written, exactly: the next infer into this folder removes these and only these.
    Manifest::new("infer", written).write(out, MANIFEST)?;
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

    #[test]
    fn infer_writes_only_into_its_own_folders() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // A new folder, then an earlier infer's: its listed files go, the rest stays.
        claim_output(&out, &[], &s(&["a.png", "b.png", "detections.json"])).unwrap();
        for f in ["a.png", "b.png", "detections.json", "notes.txt"] {
            std::fs::write(out.join(f), b"x").unwrap();
        }
        let removed = claim_output(&out, &[], &s(&["c.png", "detections.json"])).unwrap();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(out.join("notes.txt").is_file() && !out.join("a.png").exists());
        // A drawing of an earlier infer given as an input is never replaced nor removed.
        std::fs::write(out.join("c.png"), b"x").unwrap();
        let e = claim_output(&out, &[out.join("c.png")], &s(&["c.png"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is an input image") && e.contains("(as c.png)"),
            "{e}"
        );
        assert!(out.join("c.png").is_file());
        // A folder of other files: refused, untouched.
        let mine = d.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("x.png"), b"x").unwrap();
        let e = claim_output(&mine, &[mine.join("x.png")], &s(&["x.png"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the folder is not empty (x.png)"), "{e}");
        assert_eq!(std::fs::read(mine.join("x.png")).unwrap(), b"x");
        assert!(!mine.join(MANIFEST).exists());
    }
}
