//! Datasets: the `data` config section ([`config`]), COCO parsing and validation ([`coco`]),
//! ImageFolder classification data ([`folder`]), transforms and the `model.input` section
//! ([`transforms`]), threaded batching and samplers ([`loader`]), and the synthetic shapes
//! datasets ([`synth`]). [`Split`] is either kind of split, as training and evaluation see it.

pub mod coco;
pub mod config;
pub mod folder;
pub mod loader;
pub mod synth;
pub mod transforms;

use std::path::Path;

use coco::{CategoryMap, DetectionData, ImageRecord};
use folder::ClassificationData;

/// A split on disk: (annotations JSON, image folder).
pub type SplitPaths = (std::path::PathBuf, std::path::PathBuf);

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

    /// Where the split's ground truth is read from: the COCO file, or the ImageFolder root
    /// (`eval.json`'s `gt`, so that `kdet compare` checks runs were evaluated alike).
    pub fn truth(&self) -> &Path {
        match self {
            Split::Detection(d) => &d.gt.file,
            Split::Classification(c) => &c.root,
        }
    }
}
