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
