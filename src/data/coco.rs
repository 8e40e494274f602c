//! The one COCO parser in kdet. Instances JSON (ground truth) and results JSON (detections) are
//! parsed once into hotcoco's own types (`types::Dataset`, `types::Annotation`) — through
//! `serde_path_to_error` when a type error must be located — and then checked for what hotcoco
//! accepts silently: unknown ids, duplicates, negative or non-finite boxes, missing sections,
//! missing or undecodable image files. Each problem is a located error
//! (`train.json: annotations[17].image_id: 99 is not in images`). A box reaching farther outside
//! its image than the image's own size (`[10, 10, 1e308, 5]`) is an error too: no annotation
//! tool writes one, and training on it only surfaces later as a diverging loss. Training data
//! drops degenerate boxes and boxes lying entirely outside their image instead, counted (the
//! reference recipe clamps boxes to the image and then drops empty ones, which removes both).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use hotcoco::types::{Annotation, Category, Dataset, Image, Info, License};
use rayon::prelude::*;
use serde::Deserialize;

use crate::error::{parse_json, read_file, Error, Result};

/// What the data is for: evaluation keeps every box (as pycocotools) and rejects negative sizes;
/// training drops degenerate boxes (width or height ≤ `min_box_size`) and boxes entirely outside
/// their image, counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Purpose {
    Eval,
    Train { min_box_size: f64 },
}

/// The dataset as written, with the top-level sections optional so a missing one is reported
/// rather than read as empty (hotcoco's `Dataset` defaults them).
#[derive(Deserialize)]
struct RawDataset {
    #[serde(default)]
    info: Option<Info>,
    images: Option<Vec<Image>>,
    annotations: Option<Vec<Annotation>>,
    categories: Option<Vec<Category>>,
    #[serde(default)]
    licenses: Option<Vec<License>>,
}

/// A validated ground-truth file.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    pub file: PathBuf,
    pub dataset: Dataset,
    /// Annotations dropped as degenerate (training only).
    pub dropped_boxes: usize,
    /// Annotations dropped for lying entirely outside their image (training only).
    pub outside_boxes: usize,
}

/// Parse and validate a COCO instances JSON file.
pub fn load_ground_truth(file: &Path, purpose: Purpose) -> Result<GroundTruth> {
    let bytes = read_file(file)?;
    ground_truth_from_slice(file, &bytes, purpose)
}

/// As [`load_ground_truth`], from bytes already read; `file` names them in errors.
pub fn ground_truth_from_slice(file: &Path, bytes: &[u8], purpose: Purpose) -> Result<GroundTruth> {
    let raw: RawDataset = parse_json(file, bytes)?;
    let missing = |k: &str| Error::located(file, k, "missing: a COCO instances file needs it");
    let mut dataset = Dataset {
        info: raw.info,
        images: raw.images.ok_or_else(|| missing("images"))?,
        annotations: raw.annotations.unwrap_or_default(),
        categories: raw.categories.ok_or_else(|| missing("categories"))?,
        licenses: raw.licenses.unwrap_or_default(),
    };
    let dropped = validate_ground_truth(file, &mut dataset, purpose)?;
    Ok(GroundTruth {
        file: file.to_path_buf(),
        dataset,
        dropped_boxes: dropped.degenerate,
        outside_boxes: dropped.outside,
    })
}

/// Boxes [`validate_ground_truth`] dropped from training data, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Width or height ≤ `min_box_size`.
    pub degenerate: usize,
    /// Entirely outside their image.
    pub outside: usize,
}

/// Check a parsed dataset; in training, drop degenerate and out-of-image boxes and say how many.
pub fn validate_ground_truth(file: &Path, ds: &mut Dataset, purpose: Purpose) -> Result<Dropped> {
    let err = |p: String, m: String| Error::located(file, p, m);
    if ds.categories.is_empty() {
        return Err(err(
            "categories".into(),
            "must list at least one category".into(),
        ));
    }
    let mut image_index: HashMap<u64, usize> = HashMap::with_capacity(ds.images.len());
    for (i, im) in ds.images.iter().enumerate() {
        if let Some(first) = image_index.insert(im.id, i) {
            return Err(err(
                format!("images[{i}].id"),
                format!("{} is a duplicate of images[{first}].id", im.id),
            ));
        }
        if im.width == 0 {
            return Err(err(format!("images[{i}].width"), "must be > 0".into()));
        }
        if im.height == 0 {
            return Err(err(format!("images[{i}].height"), "must be > 0".into()));
        }
    }
    let mut cat_index: HashMap<u64, usize> = HashMap::with_capacity(ds.categories.len());
    for (i, c) in ds.categories.iter().enumerate() {
        if let Some(first) = cat_index.insert(c.id, i) {
            return Err(err(
                format!("categories[{i}].id"),
                format!("{} is a duplicate of categories[{first}].id", c.id),
            ));
        }
    }
    let mut ann_ids: HashMap<u64, usize> = HashMap::with_capacity(ds.annotations.len());
    let mut keep = vec![true; ds.annotations.len()];
    let mut dropped = Dropped::default();
    for (i, a) in ds.annotations.iter().enumerate() {
        if let Some(first) = ann_ids.insert(a.id, i) {
            return Err(err(
                format!("annotations[{i}].id"),
                format!("{} is a duplicate of annotations[{first}].id", a.id),
            ));
        }
        let Some(&im) = image_index.get(&a.image_id) else {
            return Err(err(
                format!("annotations[{i}].image_id"),
                format!("{} is not in images", a.image_id),
            ));
        };
        let im = &ds.images[im];
        if !cat_index.contains_key(&a.category_id) {
            return Err(err(
                format!("annotations[{i}].category_id"),
                format!("{} is not in categories", a.category_id),
            ));
        }
        if let Some(area) = a.area {
            if !area.is_finite() || area < 0.0 {
                return Err(err(
                    format!("annotations[{i}].area"),
                    format!("must be a finite number >= 0, got {area}"),
                ));
            }
        }
        let Some(b) = a.bbox else {
            return Err(err(format!("annotations[{i}].bbox"), "missing".into()));
        };
        let path = format!("annotations[{i}].bbox");
        check_box(file, &path, &b)?;
        check_extent(file, &path, &b, im)?;
        match purpose {
            Purpose::Eval => {
                check_nonneg_size(file, &path, &b)?;
            }
            Purpose::Train { min_box_size } => {
                if b[2] <= min_box_size || b[3] <= min_box_size {
                    keep[i] = false;
                    dropped.degenerate += 1;
                } else if outside(&b, im) {
                    keep[i] = false;
                    dropped.outside += 1;
                }
            }
        }
    }
    if dropped != Dropped::default() {
        let mut k = keep.into_iter();
        ds.annotations.retain(|_| k.next().unwrap_or(true));
    }
    Ok(dropped)
}

fn check_box(file: &Path, path: &str, b: &[f64; 4]) -> Result<()> {
    if let Some(k) = b.iter().position(|v| !v.is_finite()) {
        return Err(Error::located(
            file,
            format!("{path}[{k}]"),
            format!("must be finite, got {}", b[k]),
        ));
    }
    Ok(())
}

/// A box must stay within one image size of its image: x, y, x + w and y + h in
/// `[-width, 2·width]` and `[-height, 2·height]`. Looser than any annotation tool's rounding,
/// tight enough that no coordinate overflows f32 or dwarfs the image (`[10, 10, 1e308, 5]`).
fn check_extent(file: &Path, path: &str, b: &[f64; 4], im: &Image) -> Result<()> {
    let (w, h) = (im.width as f64, im.height as f64);
    let coords = [
        ("x", b[0], w),
        ("y", b[1], h),
        ("x + width", b[0] + b[2], w),
        ("y + height", b[1] + b[3], h),
    ];
    for (name, v, side) in coords {
        if !(v >= -side && v <= 2.0 * side) {
            return Err(Error::located(
                file,
                path,
                format!(
                    "{name} = {} lies far outside its {}×{} image (image {}): more than the \
                     image's own size beyond its border",
                    short(v),
                    im.width,
                    im.height,
                    im.id
                ),
            ));
        }
    }
    Ok(())
}

/// A number as a message shows it: huge ones in exponent form (Rust prints `1e308` in full).
fn short(v: f64) -> String {
    if v.abs() >= 1e9 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Whether a box (positive size) has no pixel inside its image.
fn outside(b: &[f64; 4], im: &Image) -> bool {
    b[0] + b[2] <= 0.0 || b[1] + b[3] <= 0.0 || b[0] >= im.width as f64 || b[1] >= im.height as f64
}

fn check_nonneg_size(file: &Path, path: &str, b: &[f64; 4]) -> Result<()> {
    if b[2] < 0.0 {
        return Err(Error::located(
            file,
            path,
            format!("width is negative ({})", b[2]),
        ));
    }
    if b[3] < 0.0 {
        return Err(Error::located(
            file,
            path,
            format!("height is negative ({})", b[3]),
        ));
    }
    Ok(())
}

/// Parse and validate a COCO results JSON file (a list of detections) against its ground truth.
pub fn load_detections(file: &Path, gt: &Dataset, gt_file: &Path) -> Result<Vec<Annotation>> {
    let bytes = read_file(file)?;
    detections_from_slice(file, &bytes, gt, gt_file)
}

/// As [`load_detections`], from bytes already read.
pub fn detections_from_slice(
    file: &Path,
    bytes: &[u8],
    gt: &Dataset,
    gt_file: &Path,
) -> Result<Vec<Annotation>> {
    let dets: Vec<Annotation> = parse_json(file, bytes)?;
    let images: HashSet<u64> = gt.images.iter().map(|i| i.id).collect();
    let cats: HashSet<u64> = gt.categories.iter().map(|c| c.id).collect();
    let gt_name = gt_file.display();
    // Validate in parallel; report the first offender in file order.
    let first_bad = dets
        .par_iter()
        .enumerate()
        .filter_map(|(i, d)| {
            check_detection(file, i, d, &images, &cats, &gt_name)
                .err()
                .map(|e| (i, e))
        })
        .min_by_key(|(i, _)| *i);
    if let Some((_, e)) = first_bad {
        return Err(e);
    }
    Ok(dets)
}

fn check_detection(
    file: &Path,
    i: usize,
    d: &Annotation,
    images: &HashSet<u64>,
    cats: &HashSet<u64>,
    gt_name: &impl std::fmt::Display,
) -> Result<()> {
    if !images.contains(&d.image_id) {
        return Err(Error::located(
            file,
            format!("[{i}].image_id"),
            format!("{} is not in {gt_name}'s images", d.image_id),
        ));
    }
    if !cats.contains(&d.category_id) {
        return Err(Error::located(
            file,
            format!("[{i}].category_id"),
            format!("{} is not in {gt_name}'s categories", d.category_id),
        ));
    }
    let Some(b) = d.bbox else {
        return Err(Error::located(file, format!("[{i}].bbox"), "missing"));
    };
    check_box(file, &format!("[{i}].bbox"), &b)?;
    check_nonneg_size(file, &format!("[{i}].bbox"), &b)?;
    match d.score {
        None => Err(Error::located(file, format!("[{i}].score"), "missing")),
        Some(s) if !s.is_finite() => Err(Error::located(
            file,
            format!("[{i}].score"),
            format!("must be finite, got {s}"),
        )),
        Some(_) => Ok(()),
    }
}

/// How much of each image file [`image_file_errors`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageCheck {
    /// The header: format and size (fast: what training checks before it starts).
    Header,
    /// The whole image, decoded (`kdet data check --images`): a truncated or corrupt file
    /// fails here rather than in the middle of training.
    Decode,
}

/// Check that every image file exists, has a readable header and the size the JSON says.
/// Runs in parallel; reports the first offender in file order.
pub fn check_image_files(file: &Path, ds: &Dataset, images_dir: &Path) -> Result<()> {
    match image_file_errors(file, ds, images_dir, ImageCheck::Header)
        .into_iter()
        .next()
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Every image file that is missing, unreadable, fails to decode (to the `depth` asked) or has
/// another size than the JSON says, in file order, each located by its index in `images`.
/// Images are checked in parallel.
pub fn image_file_errors(
    file: &Path,
    ds: &Dataset,
    images_dir: &Path,
    depth: ImageCheck,
) -> Vec<Error> {
    let mut bad: Vec<(usize, Error)> = ds
        .images
        .par_iter()
        .enumerate()
        .filter_map(|(i, im)| {
            check_image_file(file, i, im, images_dir, depth)
                .err()
                .map(|e| (i, e))
        })
        .collect();
    bad.sort_by_key(|(i, _)| *i);
    bad.into_iter().map(|(_, e)| e).collect()
}

fn check_image_file(
    file: &Path,
    i: usize,
    im: &Image,
    dir: &Path,
    depth: ImageCheck,
) -> Result<()> {
    let path = dir.join(&im.file_name);
    let loc = format!("images[{i}].file_name");
    if !path.is_file() {
        return Err(Error::located(
            file,
            loc,
            format!("{} does not exist", path.display()),
        ));
    }
    let reader = image::ImageReader::open(&path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::located(file, &loc, format!("{}: {e}", path.display())))?;
    let cannot = |e: image::ImageError| {
        Error::located(
            file,
            &loc,
            format!("{}: cannot decode: {e}", path.display()),
        )
    };
    let (w, h) = match depth {
        ImageCheck::Header => reader
            .into_decoder()
            .and_then(super::oriented_dimensions)
            .map_err(cannot)?,
        ImageCheck::Decode => {
            let img = reader
                .into_decoder()
                .and_then(super::decode_oriented)
                .map_err(cannot)?;
            (img.width(), img.height())
        }
    };
    if (w, h) != (im.width, im.height) {
        return Err(Error::located(
            file,
            format!("images[{i}]"),
            format!(
                "{} is {w}×{h} but width/height say {}×{}",
                path.display(),
                im.width,
                im.height
            ),
        ));
    }
    Ok(())
}

/// Category ids ↔ contiguous labels. Labels are 1..=K in category-id order; 0 is background
/// (torchvision's convention). PAA subtracts one for its sigmoid classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryMap {
    /// Category ids in label order: `ids[label - 1]`.
    pub ids: Vec<u64>,
    /// Names in label order.
    pub names: Vec<String>,
    index: HashMap<u64, usize>,
}

impl CategoryMap {
    pub fn new(cats: &[Category]) -> Self {
        let mut sorted: Vec<&Category> = cats.iter().collect();
        sorted.sort_by_key(|c| c.id);
        let ids: Vec<u64> = sorted.iter().map(|c| c.id).collect();
        let names = sorted.iter().map(|c| c.name.clone()).collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i + 1)).collect();
        Self { ids, names, index }
    }
    /// Number of foreground classes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Contiguous label (1-based) of a category id.
    pub fn label(&self, cat_id: u64) -> Option<usize> {
        self.index.get(&cat_id).copied()
    }
    /// Category id of a 1-based label.
    pub fn category_id(&self, label: usize) -> Option<u64> {
        label.checked_sub(1).and_then(|i| self.ids.get(i)).copied()
    }
}

/// One image with its boxes, ready for the transforms.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: u64,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Non-crowd boxes, `x1,y1,x2,y2` in pixels.
    pub boxes: Vec<[f32; 4]>,
    /// 1-based labels of `boxes`.
    pub labels: Vec<u32>,
    /// Crowd boxes: ignored by training losses, kept for evaluation.
    pub crowd: Vec<[f32; 4]>,
}

/// A detection split: validated ground truth, labels, and per-image records.
#[derive(Debug, Clone)]
pub struct DetectionData {
    pub gt: GroundTruth,
    pub categories: CategoryMap,
    pub records: Vec<ImageRecord>,
}

/// Load a split for training or evaluation: parse, validate, check the image files, and build
/// per-image records.
pub fn load_split(
    annotations: &Path,
    images_dir: &Path,
    purpose: Purpose,
) -> Result<DetectionData> {
    let gt = load_ground_truth(annotations, purpose)?;
    check_image_files(annotations, &gt.dataset, images_dir)?;
    if gt.dropped_boxes > 0 {
        eprintln!(
            "warning: {}: dropped {} degenerate box(es) (width or height <= min_box_size)",
            annotations.display(),
            gt.dropped_boxes
        );
    }
    if gt.outside_boxes > 0 {
        eprintln!(
            "warning: {}: dropped {} box(es) lying entirely outside their image",
            annotations.display(),
            gt.outside_boxes
        );
    }
    let categories = CategoryMap::new(&gt.dataset.categories);
    let mut by_image: HashMap<u64, Vec<&Annotation>> = HashMap::new();
    for a in &gt.dataset.annotations {
        by_image.entry(a.image_id).or_default().push(a);
    }
    let records = gt
        .dataset
        .images
        .iter()
        .map(|im| {
            let mut rec = ImageRecord {
                id: im.id,
                path: images_dir.join(&im.file_name),
                width: im.width,
                height: im.height,
                boxes: vec![],
                labels: vec![],
                crowd: vec![],
            };
            for a in by_image.get(&im.id).map(|v| v.as_slice()).unwrap_or(&[]) {
                let [x, y, w, h] = a.bbox.expect("validated");
                let b = [x as f32, y as f32, (x + w) as f32, (y + h) as f32];
                if a.iscrowd {
                    rec.crowd.push(b);
                } else {
                    rec.boxes.push(b);
                    rec.labels
                        .push(categories.label(a.category_id).expect("validated") as u32);
                }
            }
            rec
        })
        .collect();
    Ok(DetectionData {
        gt,
        categories,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(json: &str, purpose: Purpose) -> Result<GroundTruth> {
        ground_truth_from_slice(Path::new("train.json"), json.as_bytes(), purpose)
    }

    const GOOD: &str = r#"{"images":[{"id":1,"file_name":"a.png","width":10,"height":8},
        {"id":2,"file_name":"b.png","width":10,"height":8}],
        "categories":[{"id":5,"name":"circle"},{"id":3,"name":"square"}],
        "annotations":[{"id":1,"image_id":1,"category_id":5,"bbox":[1,1,3,3],"area":9,"iscrowd":0},
        {"id":2,"image_id":2,"category_id":3,"bbox":[0,0,0,2],"area":0,"iscrowd":0},
        {"id":3,"image_id":2,"category_id":3,"bbox":[2,2,4,4],"area":16,"iscrowd":1}]}"#;

    fn err_of(json: &str, purpose: Purpose) -> String {
        gt(json, purpose).unwrap_err().to_string()
    }

    #[test]
    fn parses_good_file_and_maps_labels() {
        let g = gt(GOOD, Purpose::Eval).unwrap();
        assert_eq!(g.dataset.annotations.len(), 3);
        let m = CategoryMap::new(&g.dataset.categories);
        assert_eq!(m.ids, vec![3, 5]);
        assert_eq!(m.label(5), Some(2));
        assert_eq!(m.category_id(1), Some(3));
        assert_eq!(m.category_id(0), None);
    }

    #[test]
    fn training_drops_degenerate_boxes_counted() {
        let g = gt(GOOD, Purpose::Train { min_box_size: 0.0 }).unwrap();
        assert_eq!(g.dropped_boxes, 1);
        assert_eq!(g.dataset.annotations.len(), 2);
        let g = gt(GOOD, Purpose::Train { min_box_size: 3.5 }).unwrap();
        assert_eq!(g.dropped_boxes, 2);
    }

    #[test]
    fn boxes_outside_their_image_are_dropped_in_training_counted() {
        // Image 1 is 10×8: [10, 1, 3, 3] starts at its right border, [-4, 0, 4, 2] ends at its
        // left one; [9, 7, 3, 3] overlaps its corner and stays.
        for (b, out) in [
            ("[10,1,3,3]", 1),
            ("[-4,0,4,2]", 1),
            ("[9,7,3,3]", 0),
            ("[1,8,2,2]", 1),
        ] {
            let json = GOOD.replace("[1,1,3,3]", b);
            let g = gt(&json, Purpose::Train { min_box_size: 0.0 }).unwrap();
            assert_eq!((g.outside_boxes, g.dropped_boxes), (out, 1), "{b}");
            assert_eq!(g.dataset.annotations.len(), 2 - out, "{b}");
            // Evaluation keeps them, as pycocotools does.
            let g = gt(&json, Purpose::Eval).unwrap();
            assert_eq!(
                (g.outside_boxes, g.dataset.annotations.len()),
                (0, 3),
                "{b}"
            );
        }
    }

    #[test]
    fn located_errors() {
        let cases: Vec<(String, &str)> = vec![
            (
                GOOD.replace(
                    r#""image_id":2,"category_id":3,"bbox":[0"#,
                    r#""image_id":99,"category_id":3,"bbox":[0"#,
                ),
                "train.json: annotations[1].image_id: 99 is not in images",
            ),
            (
                GOOD.replace(r#""category_id":5,"bbox""#, r#""category_id":7,"bbox""#),
                "train.json: annotations[0].category_id: 7 is not in categories",
            ),
            (
                GOOD.replace(r#"{"id":2,"file_name""#, r#"{"id":1,"file_name""#),
                "train.json: images[1].id: 1 is a duplicate of images[0].id",
            ),
            (
                GOOD.replace(r#"{"id":2,"image_id""#, r#"{"id":1,"image_id""#),
                "train.json: annotations[1].id: 1 is a duplicate of annotations[0].id",
            ),
            (
                GOOD.replace(r#"{"id":3,"name""#, r#"{"id":5,"name""#),
                "train.json: categories[1].id: 5 is a duplicate of categories[0].id",
            ),
            (
                GOOD.replace("[1,1,3,3]", "[1,1,-3,3]"),
                "train.json: annotations[0].bbox: width is negative (-3)",
            ),
            (
                GOOD.replace("[1,1,3,3]", "[1,1,3,-2]"),
                "train.json: annotations[0].bbox: height is negative (-2)",
            ),
            (
                GOOD.replace("[1,1,3,3]", "[1,1,3]"),
                "train.json: annotations[0].bbox: invalid length 3, expected an array of length 4",
            ),
            (
                GOOD.replace("[1,1,3,3]", "[1,1e999,3,3]"),
                "train.json: annotations[0].bbox[1]: number out of range",
            ),
            (
                GOOD.replace("[1,1,3,3]", "[10,10,1e308,5]"),
                "train.json: annotations[0].bbox: x + width = 1e308 lies far outside its 10×8 image (image 1)",
            ),
            (
                GOOD.replace("[1,1,3,3]", "[1,1,3,1e20]"),
                "train.json: annotations[0].bbox: y + height = 1e20 lies far outside its 10×8 image",
            ),
            (
                GOOD.replace("[1,1,3,3]", "[-11,1,3,3]"),
                "train.json: annotations[0].bbox: x = -11 lies far outside",
            ),
            (
                GOOD.replace(r#""width":10,"height":8},"#, r#""width":0,"height":8},"#),
                "train.json: images[0].width: must be > 0",
            ),
            (
                GOOD.replace(r#""area":9"#, r#""area":-9"#),
                "train.json: annotations[0].area: must be a finite number >= 0, got -9",
            ),
            (
                GOOD.replace(r#","bbox":[1,1,3,3]"#, ""),
                "train.json: annotations[0].bbox: missing",
            ),
            (
                r#"{"images":[],"annotations":[]}"#.into(),
                "train.json: categories: missing",
            ),
            (r#"{"categories":[]}"#.into(), "train.json: images: missing"),
            (
                r#"{"images":[],"categories":[]}"#.into(),
                "train.json: categories: must list at least one category",
            ),
            (
                GOOD.replace(r#""file_name":"a.png""#, r#""file_name":3"#),
                "train.json: images[0].file_name: invalid type: integer `3`, expected a string",
            ),
            // `cat small.json full.json`: the second document is not silently ignored.
            (
                format!("{GOOD}\n{GOOD}"),
                "train.json: .: trailing characters at line 7 column 1",
            ),
        ];
        for (json, want) in cases {
            let got = err_of(&json, Purpose::Eval);
            assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn detections_located_errors() {
        let g = gt(GOOD, Purpose::Eval).unwrap();
        let f = Path::new("dt.json");
        let gtf = Path::new("gt.json");
        let ok = r#"[{"image_id":1,"category_id":5,"bbox":[1,1,3,3],"score":0.9}]"#;
        assert_eq!(
            detections_from_slice(f, ok.as_bytes(), &g.dataset, gtf)
                .unwrap()
                .len(),
            1
        );
        let cases = [
            (
                ok.replace(r#""image_id":1"#, r#""image_id":4"#),
                "dt.json: [0].image_id: 4 is not in gt.json's images",
            ),
            (
                ok.replace(r#""category_id":5"#, r#""category_id":6"#),
                "dt.json: [0].category_id: 6 is not in gt.json's categories",
            ),
            (
                ok.replace(r#","score":0.9"#, ""),
                "dt.json: [0].score: missing",
            ),
            (
                ok.replace("[1,1,3,3]", "[1,1,-3,3]"),
                "dt.json: [0].bbox: width is negative (-3)",
            ),
            (
                ok.replace("0.9", "\"high\""),
                "dt.json: [0].score: invalid type: string \"high\"",
            ),
            (
                r#"{"a":1}"#.into(),
                "dt.json: .: invalid type: map, expected a sequence",
            ),
            (
                format!("{ok}\n[]"),
                "dt.json: .: trailing characters at line 2 column 1",
            ),
        ];
        for (json, want) in cases {
            let got = detections_from_slice(f, json.as_bytes(), &g.dataset, gtf)
                .unwrap_err()
                .to_string();
            assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn image_file_checks() {
        let dir = tempfile::tempdir().unwrap();
        let g = gt(GOOD, Purpose::Eval).unwrap();
        let f = Path::new("train.json");
        let e = check_image_files(f, &g.dataset, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("train.json: images[0].file_name: ")
                && e.ends_with("a.png does not exist"),
            "{e}"
        );
        image::RgbImage::new(10, 8)
            .save(dir.path().join("a.png"))
            .unwrap();
        std::fs::write(dir.path().join("b.png"), b"not a png").unwrap();
        let e = check_image_files(f, &g.dataset, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("train.json: images[1].file_name: ") && e.contains("b.png"),
            "{e}"
        );
        image::RgbImage::new(12, 8)
            .save(dir.path().join("b.png"))
            .unwrap();
        let e = check_image_files(f, &g.dataset, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("train.json: images[1]: ")
                && e.ends_with("is 12×8 but width/height say 10×8"),
            "{e}"
        );
        image::RgbImage::new(10, 8)
            .save(dir.path().join("b.png"))
            .unwrap();
        check_image_files(f, &g.dataset, dir.path()).unwrap();
        // A truncated PNG has a good header: only a full decode finds it, and every bad file is
        // reported with its index.
        let mut noisy = image::RgbImage::new(10, 8);
        noisy
            .pixels_mut()
            .enumerate()
            .for_each(|(k, p)| *p = image::Rgb([(k * 37) as u8, (k * 11) as u8, k as u8]));
        noisy.save(dir.path().join("a.png")).unwrap();
        noisy.save(dir.path().join("b.png")).unwrap();
        for n in ["a.png", "b.png"] {
            let bytes = std::fs::read(dir.path().join(n)).unwrap();
            std::fs::write(dir.path().join(n), &bytes[..bytes.len() * 2 / 3]).unwrap();
        }
        assert!(image_file_errors(f, &g.dataset, dir.path(), ImageCheck::Header).is_empty());
        let errs: Vec<String> = image_file_errors(f, &g.dataset, dir.path(), ImageCheck::Decode)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("train.json: images[0].file_name: ")
                && errs[0].contains("a.png: cannot decode")
                && errs[1].starts_with("train.json: images[1].file_name: "),
            "{errs:?}"
        );
        image::RgbImage::new(10, 8)
            .save(dir.path().join("a.png"))
            .unwrap();
        image::RgbImage::new(10, 8)
            .save(dir.path().join("b.png"))
            .unwrap();
        let d =
            load_split(&dir.path().join("missing.json"), dir.path(), Purpose::Eval).unwrap_err();
        assert!(d.to_string().contains("missing.json"));
        check_image_files(f, &g.dataset, dir.path()).unwrap();
    }
}
