//! The `data` section of a run config: where the train/val splits are (COCO files or a
//! synthetic spec), augmentation and the loader's threads. The sampler and the synthetic spec
//! are defined beside their code ([`super::loader::SamplerKind`], [`super::synth::SynthSpec`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::loader::SamplerKind;
use super::synth::SynthSpec;
use crate::error::{invalid, nonneg, unit, Check};

/// A detection split on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// COCO instances JSON (relative to the config file's folder, or absolute).
    pub annotations: PathBuf,
    /// Folder holding the images named by `images[].file_name`.
    pub images: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    pub train: Option<SplitConfig>,
    pub val: Option<SplitConfig>,
    /// Use a generated dataset instead of `train`/`val`.
    pub synthetic: Option<SynthSpec>,
    /// Horizontal flip probability in training. references: 0.5 (`--data-augmentation hflip`).
    pub flip_prob: f32,
    /// Training boxes whose width or height is ≤ this (pixels) are dropped with a counted
    /// warning. references: 0 (ConvertCocoPolysToMask keeps x2 > x1 and y2 > y1).
    pub min_box_size: f64,
    /// Decoding threads. references: `--workers 4`; 2 here to match a 2-core CPU.
    pub workers: usize,
    /// Batches each worker may prepare ahead.
    pub prefetch: usize,
    pub sampler: SamplerKind,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: None,
            val: None,
            synthetic: None,
            flip_prob: 0.5,
            min_box_size: 0.0,
            workers: 2,
            prefetch: 2,
            sampler: SamplerKind::Instance,
        }
    }
}

impl DataConfig {
    /// Ranges and exclusive fields of the `data` section.
    pub fn validate(&self) -> Check {
        unit("data.flip_prob", self.flip_prob as f64)?;
        nonneg("data.min_box_size", self.min_box_size)?;
        if self.workers == 0 {
            return Err(invalid("data.workers", "must be >= 1"));
        }
        if self.prefetch == 0 {
            return Err(invalid("data.prefetch", "must be >= 1"));
        }
        if self.synthetic.is_some() && (self.train.is_some() || self.val.is_some()) {
            return Err(invalid(
                "data.synthetic",
                "give either `synthetic` or `train`/`val`, not both",
            ));
        }
        if let Some(s) = &self.synthetic {
            s.validate("data.synthetic")?;
        }
        Ok(())
    }
}
