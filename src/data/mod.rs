//! Datasets: the `data` config section ([`config`]), COCO parsing and validation ([`coco`]),
//! transforms and the `model.input` section ([`transforms`]), threaded batching and samplers
//! ([`loader`]), and the synthetic shapes dataset ([`synth`]).

pub mod coco;
pub mod config;
pub mod loader;
pub mod synth;
pub mod transforms;

/// A split on disk: (annotations JSON, image folder).
pub type SplitPaths = (std::path::PathBuf, std::path::PathBuf);
