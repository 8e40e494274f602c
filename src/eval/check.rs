//! `kdet data check`: kdet's located validation, then hotcoco's healthcheck (degenerate boxes,
//! duplicates, out-of-image boxes, imbalance …) and a summary of what the dataset holds.

use std::path::Path;

use crate::data::coco::{image_file_errors, load_ground_truth, CategoryMap, ImageCheck, Purpose};
use crate::error::Result;

/// The outcome of a dataset check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataReport {
    pub images: usize,
    pub annotations: usize,
    pub crowd: usize,
    pub images_without_annotations: usize,
    /// (category id, name, boxes, images).
    pub per_class: Vec<(u64, String, usize, usize)>,
    /// Non-crowd boxes by COCO area range: small (< 32²), medium, large (≥ 96²).
    pub sizes: [usize; 3],
    /// Image files missing, undecodable or of another size than stated (`--images`), each
    /// located by its index in `images`.
    pub bad_images: Vec<String>,
    /// Healthcheck errors (`code: message`).
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl DataReport {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "images: {}  annotations: {} (crowd {})  images without annotations: {}\n\
             sizes (COCO area ranges): small {}  medium {}  large {}\n\n| id | class | boxes | images |\n|---:|---|---:|---:|\n",
            self.images, self.annotations, self.crowd, self.images_without_annotations,
            self.sizes[0], self.sizes[1], self.sizes[2]
        );
        for (id, n, b, i) in &self.per_class {
            s.push_str(&format!("| {id} | {n} | {b} | {i} |\n"));
        }
        for e in self.bad_images.iter().chain(&self.errors) {
            s.push_str(&format!("error: {e}\n"));
        }
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    }
}

/// Validate `ann` (and its images when `images_dir` is given: each decoded in full, in parallel)
/// and summarise it. Located errors in the JSON come back as `Err`; bad image files and
/// healthcheck findings land in the report, every one of them.
pub fn check_dataset(ann: &Path, images_dir: Option<&Path>) -> Result<DataReport> {
    let gt = load_ground_truth(ann, Purpose::Eval)?;
    let ds = &gt.dataset;
    let bad_images = images_dir
        .map(|dir| image_file_errors(ann, ds, dir, ImageCheck::Decode))
        .unwrap_or_default()
        .iter()
        .map(|e| e.to_string())
        .collect();
    let cats = CategoryMap::new(&ds.categories);
    let mut boxes = vec![0usize; cats.len()];
    let mut imgs: Vec<std::collections::HashSet<u64>> = vec![Default::default(); cats.len()];
    let mut sizes = [0usize; 3];
    let mut crowd = 0;
    let mut with_ann = std::collections::HashSet::new();
    for a in &ds.annotations {
        with_ann.insert(a.image_id);
        if a.iscrowd {
            crowd += 1;
            continue;
        }
        let l = cats.label(a.category_id).expect("validated") - 1;
        boxes[l] += 1;
        imgs[l].insert(a.image_id);
        let [_, _, w, h] = a.bbox.expect("validated");
        let area = a.area.unwrap_or(w * h);
        sizes[if area < 32.0 * 32.0 {
            0
        } else if area < 96.0 * 96.0 {
            1
        } else {
            2
        }] += 1;
    }
    let health = hotcoco::quality::healthcheck::healthcheck(ds);
    let fmt = |f: &hotcoco::Finding| format!("{}: {}", f.code, f.message);
    Ok(DataReport {
        images: ds.images.len(),
        annotations: ds.annotations.len(),
        crowd,
        images_without_annotations: ds.images.len() - with_ann.len(),
        per_class: (0..cats.len())
            .map(|i| (cats.ids[i], cats.names[i].clone(), boxes[i], imgs[i].len()))
            .collect(),
        sizes,
        bad_images,
        errors: health.errors.iter().map(fmt).collect(),
        warnings: health.warnings.iter().map(fmt).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_fixture() {
        let d = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval");
        let r = check_dataset(&d.join("crowd.gt.json"), None).unwrap();
        assert!(r.crowd > 0);
        assert_eq!(r.sizes.iter().sum::<usize>() + r.crowd, r.annotations);
        assert_eq!(
            r.per_class.iter().map(|c| c.2).sum::<usize>() + r.crowd,
            r.annotations
        );
        assert!(r.to_text().contains("| class | boxes | images |"));
        assert!(r.bad_images.is_empty());
    }
}
