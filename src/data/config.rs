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

/// Image classification splits in torchvision's `ImageFolder` layout (`data::folder`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    /// One sub-folder of images per class (relative to the config file's folder, or absolute).
    pub train: PathBuf,
    /// The same classes, for evaluation.
    #[serde(default)]
    pub val: Option<PathBuf>,
    /// Images without labels (any depth), for methods that learn from them
    /// (`data.use_unlabeled`).
    #[serde(default)]
    pub unlabeled: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    pub train: Option<SplitConfig>,
    pub val: Option<SplitConfig>,
    /// Classification data in ImageFolder directories instead of COCO files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folders: Option<FolderConfig>,
    /// Add the unlabeled images (`folders.unlabeled`, or a synthetic classification set's) to
    /// the training set: they take part in a method's terms (SimCLRv2-style distillation), not
    /// in the cross-entropy.
    #[serde(skip_serializing_if = "is_false")]
    pub use_unlabeled: bool,
    /// Train on this share of the labeled training images, a seeded class-stratified subset
    /// (`ClassificationData::stratified_subset`; SimCLRv2 §2 fine-tunes on 1 % and 10 % of the
    /// labels), in (0, 1]. Absent: all of them. The chosen files are written to the run folder
    /// (`labeled_subset.json`). Classification data only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_fraction: Option<f64>,
    /// Seed of the labeled subset. SimCLRv2's subsets are fixed files: 0 for every run, so that
    /// arms and training seeds fine-tune on the same labels.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub label_seed: u64,
    /// Colour-jitter strength in training (brightness, contrast, saturation factors in
    /// `[1 − s, 1 + s]`; `transforms::color_jitter`). 0: none (the detection references').
    #[serde(skip_serializing_if = "is_zero")]
    pub color_jitter: f32,
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

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: None,
            val: None,
            folders: None,
            use_unlabeled: false,
            label_fraction: None,
            label_seed: 0,
            color_jitter: 0.0,
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
        let sources = [
            self.synthetic.is_some(),
            self.train.is_some() || self.val.is_some(),
            self.folders.is_some(),
        ];
        if sources.iter().filter(|&&x| x).count() > 1 {
            let p = if self.folders.is_some() {
                "data.folders"
            } else {
                "data.synthetic"
            };
            return Err(invalid(
                p,
                "give one of `synthetic`, `train`/`val` (COCO) or `folders`, not several",
            ));
        }
        if let Some(s) = &self.synthetic {
            s.validate("data.synthetic")?;
        }
        unit("data.color_jitter", self.color_jitter as f64)?;
        if let Some(f) = self.label_fraction {
            if !(f > 0.0 && f <= 1.0) {
                return Err(invalid(
                    "data.label_fraction",
                    format!("{f} is outside (0, 1]: the share of labeled training images kept"),
                ));
            }
            let classification = self.folders.is_some()
                || self
                    .synthetic
                    .as_ref()
                    .is_some_and(|s| s.task == super::synth::SynthTask::Classification);
            if !classification {
                return Err(invalid(
                    "data.label_fraction",
                    "subsets the labels of classification data (`folders` or `synthetic.task: classification`)",
                ));
            }
        }
        if self.use_unlabeled {
            let has = match (&self.folders, &self.synthetic) {
                (Some(f), _) => f.unlabeled.is_some(),
                (None, Some(s)) => s.unlabeled > 0,
                _ => false,
            };
            if !has {
                return Err(invalid(
                    "data.use_unlabeled",
                    "true needs unlabeled images: `folders.unlabeled`, or `synthetic.unlabeled` > 0 with `synthetic.task: classification`",
                ));
            }
        }
        Ok(())
    }
}
