//! The JSON beside a weights file that describes it: `<stem>.json` written by `kdet export`, or
//! `model.json` in the run directory of `kdet train` — the architecture, class names and
//! category ids, input normalisation — what `kdet infer`, `kdet export` and a teacher without a
//! `model` section need, without the training data.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::config::ModelConfig;
use crate::error::{split_nested, Error, Result};

/// A sidecar as read from disk.
pub struct Sidecar {
    pub file: PathBuf,
    value: serde_json::Value,
}

impl Sidecar {
    /// Where the sidecar of `weights` may be, in the order looked at.
    pub fn candidates(weights: &Path) -> [PathBuf; 2] {
        [
            weights.with_extension("json"),
            weights.with_file_name("model.json"),
        ]
    }

    /// The first sidecar of `weights` that exists, parsed; `None` when there is none.
    pub fn find(weights: &Path) -> Result<Option<Sidecar>> {
        let Some(file) = Self::candidates(weights).into_iter().find(|p| p.is_file()) else {
            return Ok(None);
        };
        let text = crate::error::read_file_capped(&file, crate::error::MAX_CONFIG_BYTES)?;
        let value = crate::error::parse_json(&file, &text)?;
        Ok(Some(Sidecar { file, value }))
    }

    /// A top-level field, with the file and the field's JSON path named on error.
    pub fn field<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T> {
        serde_path_to_error::deserialize(self.value[key].clone()).map_err(|e| {
            let inner = e.path().to_string();
            let (path, msg) = split_nested(&inner, &e.into_inner().to_string());
            let path = if path == "." {
                key.to_string()
            } else {
                format!("{key}.{path}")
            };
            Error::msg(format!("{}: {path}: {msg}", self.file.display()))
        })
    }

    /// The architecture of the weights, validated as a config's `model` section is, or an
    /// error naming where it was looked for.
    pub fn model_of(weights: &Path) -> Result<ModelConfig> {
        match Self::find(weights)? {
            Some(s) => {
                let m: ModelConfig = s.field("model")?;
                m.validate("model")
                    .map_err(|e| Error::located(&s.file, e.path, e.msg))?;
                Ok(m)
            }
            None => {
                let [a, b] = Self::candidates(weights);
                Err(Error::msg(format!(
                    "neither {} nor {} exists to take it from",
                    a.display(),
                    b.display()
                )))
            }
        }
    }

    /// Write `model.json` of a training run.
    pub fn write(path: &Path, model: &ModelConfig, classes: &[String], ids: &[u64]) -> Result<()> {
        let v = json!({
            "kdet_version": env!("CARGO_PKG_VERSION"),
            "model": model,
            "classes": classes,
            "category_ids": ids,
        });
        crate::util::write_atomic(
            path,
            serde_json::to_string_pretty(&v).expect("json").as_bytes(),
        )
    }
}

/// Why `weights` may not fit `model`, read from their sidecar: the architecture it records when
/// that differs from `model` ("the weights are faster_rcnn ResNet-18 ×0.5 (sidecar x.json) but
/// the config builds faster_rcnn ResNet-18 ×0.25"), or the settings that differ. `None` without
/// a readable sidecar, or when it records `model` itself.
pub fn mismatch_hint(weights: &Path, model: &ModelConfig) -> Option<String> {
    let s = Sidecar::find(weights).ok()??;
    let theirs: ModelConfig = s.field("model").ok()?;
    if &theirs == model {
        return None;
    }
    let (a, b) = (describe(&theirs), describe(model));
    if a != b {
        return Some(format!(
            "the weights are {a} (sidecar {}) but the config builds {b}: use the config (or \
             `model` section) they were trained with",
            s.file.display()
        ));
    }
    let (a, b) = (
        serde_json::to_value(&theirs).ok()?,
        serde_json::to_value(model).ok()?,
    );
    let keys: Vec<String> = a
        .as_object()?
        .iter()
        .filter(|(k, v)| b.get(k.as_str()) != Some(v))
        .map(|(k, _)| format!("model.{k}"))
        .collect();
    Some(format!(
        "the sidecar {} records another model section than the config's (it differs at {}): use \
         the config (or `model` section) the weights were trained with",
        s.file.display(),
        keys.join(", ")
    ))
}

/// "faster_rcnn ResNet-18 ×0.5": family, depth and width.
fn describe(m: &ModelConfig) -> String {
    let arch = serde_json::to_value(m)
        .ok()
        .and_then(|v| v["arch"].as_str().map(str::to_string))
        .unwrap_or_default();
    let b = m.backbone();
    format!("{arch} ResNet-{} ×{}", b.depth, b.width)
}

/// Class names and category ids of trained weights: from their [`Sidecar`], else from
/// `training_classes` (called only then: it may generate a synthetic dataset).
pub fn read_classes(
    weights: &Path,
    training_classes: impl FnOnce() -> Result<(Vec<String>, Vec<u64>)>,
) -> Result<(Vec<String>, Vec<u64>)> {
    if let Some(s) = Sidecar::find(weights)? {
        return Ok((s.field("classes")?, s.field("category_ids")?));
    }
    training_classes()
}
