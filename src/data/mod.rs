//! Datasets: COCO parsing and validation ([`coco`]), transforms ([`transforms`]), threaded
//! batching and samplers ([`loader`]), and the synthetic shapes dataset ([`synth`]).

pub mod coco;
pub mod loader;
pub mod synth;
pub mod transforms;

use std::path::PathBuf;

use crate::config::LoadedConfig;
use crate::error::Result;

/// A split on disk: (annotations JSON, image folder).
pub type SplitPaths = (PathBuf, PathBuf);

/// Annotation file and image folder of the train and val splits named by a config, generating
/// the synthetic dataset first when the config asks for one.
pub fn resolve_splits(cfg: &LoadedConfig) -> Result<(SplitPaths, Option<SplitPaths>)> {
    let d = &cfg.config.data;
    if let Some(spec) = &d.synthetic {
        let cache = cfg.resolve("data.synthetic.cache_dir", &spec.cache_dir);
        let p = synth::ensure(spec, &cache)?;
        let val = (spec.val > 0).then(|| (p.val.clone(), p.images.clone()));
        return Ok(((p.train, p.images), val));
    }
    let train = d.train.as_ref().ok_or_else(|| {
        cfg.error(
            "data",
            "needs `train` (annotations + images) or a `synthetic` spec",
        )
    })?;
    let split = |name: &str, s: &crate::config::SplitConfig| {
        (
            cfg.resolve(&format!("data.{name}.annotations"), &s.annotations),
            cfg.resolve(&format!("data.{name}.images"), &s.images),
        )
    };
    let val = d.val.as_ref().map(|v| split("val", v));
    Ok((split("train", train), val))
}
