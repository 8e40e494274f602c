//! Datasets: the `data` config section ([`config`]), COCO parsing and validation ([`coco`]),
//! ImageFolder classification data ([`folder`]), transforms and the `model.input` section
//! ([`transforms`]), threaded batching and samplers ([`loader`]), the synthetic shapes datasets
//! ([`synth`]), torchvision's COCO category list ([`torchvision_coco`]) and SimCLR's two-view
//! augmentation ([`contrastive`]). [`Split`] is either
//! kind of split, as training and evaluation see it.

pub mod coco;
pub mod config;
pub mod contrastive;
pub mod folder;
pub mod loader;
pub mod synth;
pub mod torchvision_coco;
pub mod transforms;

use std::path::Path;

use coco::{CategoryMap, DetectionData, ImageRecord};
use folder::ClassificationData;

/// A split on disk: (annotations JSON, image folder).
pub type SplitPaths = (std::path::PathBuf, std::path::PathBuf);

/// Decode an image file whole, its format told by its contents (as `kdet data check` reads it),
/// not by its extension: a JPEG saved as `.png` decodes here exactly when it passed the check.
pub fn decode_image(path: &std::path::Path) -> crate::Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| crate::Error::io(path, e))?
        .decode()
        .map_err(|e| crate::Error::msg(format!("{}: cannot decode: {e}", path.display())))
}

/// A loaded split: COCO detection data, or classification data (one label per image).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per run: boxing would buy nothing
pub enum Split {
    Detection(DetectionData),
    Classification(ClassificationData),
}

impl Split {
    pub fn records(&self) -> &[ImageRecord] {
        match self {
            Split::Detection(d) => &d.records,
            Split::Classification(c) => &c.records,
        }
    }

    pub fn categories(&self) -> &CategoryMap {
        match self {
            Split::Detection(d) => &d.categories,
            Split::Classification(c) => &c.categories,
        }
    }

    /// SHA-256 identifying the split's training data, recorded in checkpoints so `--resume`
    /// refuses other data under the same name: of the COCO file; of an ImageFolder split's
    /// image paths (relative to its root) and labels, in order.
    pub fn fingerprint(&self) -> crate::Result<String> {
        match self {
            Split::Detection(d) => crate::util::sha256_file(&d.gt.file),
            Split::Classification(c) => {
                use sha2::{Digest, Sha256};
                let mut h = Sha256::new();
                for r in &c.records {
                    let p = r.path.strip_prefix(&c.root).unwrap_or(&r.path);
                    h.update(p.to_string_lossy().as_bytes());
                    for l in &r.labels {
                        h.update(b"\t");
                        h.update(l.to_string().as_bytes());
                    }
                    h.update(b"\n");
                }
                Ok(format!("{:x}", h.finalize()))
            }
        }
    }

    /// Where the split's ground truth is read from: the COCO file, or the ImageFolder root
    /// (`eval.json`'s `gt`, so that `kdet compare` checks runs were evaluated alike).
    pub fn truth(&self) -> &Path {
        match self {
            Split::Detection(d) => &d.gt.file,
            Split::Classification(c) => &c.root,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classification_fingerprint_follows_files_and_labels_not_the_root() {
        let png = |p: &Path| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            image::RgbImage::new(4, 4).save(p).unwrap();
        };
        let fp = |root: &Path| {
            Split::Classification(folder::load_folder(root, None).unwrap())
                .fingerprint()
                .unwrap()
        };
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for r in [&a, &b] {
            png(&r.join("cat/1.png"));
            png(&r.join("dog/2.png"));
        }
        // The same files and labels under another root: the same data.
        assert_eq!(fp(&a), fp(&b));
        // An image moved to another class, or one more image: other data.
        std::fs::rename(b.join("dog/2.png"), b.join("cat/2.png")).unwrap();
        png(&b.join("dog/3.png"));
        assert_ne!(fp(&a), fp(&b));
        png(&a.join("dog/3.png"));
        assert_ne!(fp(&a), fp(&b));
    }
}
