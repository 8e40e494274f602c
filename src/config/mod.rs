//! JSON run configuration: the top-level sections, `base` inheritance by deep merge, and
//! validation whose errors name the file and the JSON path (`configs/x.json: solver.lr: must be
//! > 0`).
//!
//! Each section's schema lives with what it configures — `model` with the model families
//! (`models::config`, each family's settings in its folder), `data` with the data pipeline
//! (`data::config`), `solver` and `teachers`/`distill` in this folder ([`solver`],
//! [`distill`]) — and validates itself; this file merges, parses and locates errors. Every
//! default equals the reference implementation's value and its doc comment says where it comes
//! from.

pub mod distill;
mod locate;
pub mod solver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::config::DataConfig;
use crate::data::SplitPaths;
use crate::error::{split_nested, Error, Invalid, Result};
use crate::models::config::ModelConfig;
use distill::{DistillTerm, MethodConfig, TeacherConfig};
use solver::SolverConfig;

/// A whole run: what to train, from what data, how, and where to write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The network being trained (the student when teachers are given).
    #[serde(default)]
    pub model: ModelConfig,
    /// Frozen teachers for distillation; empty for plain training.
    #[serde(default)]
    pub teachers: Vec<TeacherConfig>,
    /// Distillation loss terms, summed with the student's own losses.
    #[serde(default)]
    pub distill: Vec<DistillTerm>,
    /// How the networks train (LAD, Co-LAD); absent: alone, or with `distill` terms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodConfig>,
    /// Datasets and augmentation.
    #[serde(default)]
    pub data: DataConfig,
    /// Optimizer, learning-rate schedule and run length.
    #[serde(default)]
    pub solver: SolverConfig,
    /// `kdet online`'s stream policy (`engine::online`); training ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<crate::engine::online::OnlineConfig>,
    /// Where checkpoints, metrics and plots go.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// `cpu`, `cuda`, `cuda:N` or `metal`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Fixes data order, augmentation and initialisation.
    #[serde(default)]
    pub seed: u64,
    /// Federated training: the training split divided among clients, rounds of local training
    /// and averaging (`src/federated/`). Absent: ordinary training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated: Option<crate::federated::config::FederatedConfig>,
}

/// A run directory of its own, relative to the config.
fn default_output_dir() -> PathBuf {
    PathBuf::from("runs/default")
}
/// kdet's CPU training ops are the reference; GPUs are opt-in.
fn default_device() -> String {
    "cpu".into()
}

impl Default for Config {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default())).expect("defaults deserialize")
    }
}

/// A config as loaded: the merged document, the typed config, and which file set each value.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// The file the user named.
    pub path: PathBuf,
    /// JSON path → the file (after `base` inheritance) that last set it.
    origins: BTreeMap<String, PathBuf>,
}

impl LoadedConfig {
    /// The same run without teachers and distillation terms — same student, data, seed and
    /// schedule — writing to `<output_dir>_baseline` (`kdet train --baseline`).
    pub fn without_distillation(&self) -> LoadedConfig {
        let mut b = self.clone();
        b.config.teachers.clear();
        b.config.distill.clear();
        b.config.method = None;
        // Alone, a student learns nothing from images without labels.
        b.config.data.use_unlabeled = false;
        let mut name = self
            .config
            .output_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push("_baseline");
        b.config.output_dir.set_file_name(name);
        b
    }

    /// The file that set `json_path` (or its nearest parent), for error messages.
    pub fn origin(&self, json_path: &str) -> &Path {
        let mut p = json_path.to_string();
        loop {
            if let Some(f) = self.origins.get(&p) {
                return f;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return &self.path,
            }
        }
    }

    /// A located error about `json_path`, naming the file that set it.
    pub fn error(&self, json_path: &str, msg: impl Into<String>) -> Error {
        Error::located(self.origin(json_path), json_path, msg)
    }

    /// Resolve a path written in the config: relative paths are taken from the folder of the
    /// file that set the value.
    pub fn resolve(&self, json_path: &str, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        let origin = self.origin(json_path);
        origin.parent().unwrap_or(Path::new(".")).join(p)
    }

    /// The local file a weights spec of the config names: an `hf://` file from the Hugging Face
    /// cache (downloaded unless offline), else a path relative to the file that set it.
    pub fn resolve_weights(&self, json_path: &str, spec: &str) -> Result<PathBuf> {
        if crate::hub::is_hub(spec) {
            crate::hub::resolve(spec)
        } else {
            Ok(self.resolve(json_path, Path::new(spec)))
        }
    }

    /// The checkpoint names of the networks a multi-network method trains (`net1` is `model`,
    /// `net2`… Co-LAD's `method.partner`, DML's `method.peers`); empty for a one-network run.
    pub fn network_names(&self) -> Vec<String> {
        match &self.config.method {
            Some(m) if !m.extra_networks().is_empty() => {
                distill::dml_names(m.extra_networks().len() + 1)
            }
            _ => vec![],
        }
    }

    /// The model section of a network a method names (`net1` is `model`, `net2`, `net3`, …
    /// Co-LAD's `method.partner` or DML's `method.peers[i].model`).
    pub fn network_model(&self, name: &str) -> Result<ModelConfig> {
        let extra = self
            .config
            .method
            .as_ref()
            .map(|m| m.extra_networks())
            .unwrap_or_default();
        let index = name
            .strip_prefix("net")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|&i| i >= 1 && i <= extra.len() + 1 && !extra.is_empty());
        match index {
            Some(1) => Ok(self.config.model.clone()),
            Some(i) => Ok(extra[i - 2].1.clone()),
            None => Err(Error::msg(format!(
                "{}: no network `{name}` ({})",
                self.path.display(),
                match self.network_names().as_slice() {
                    [] => "only colad, dcm, dml, dogo and ffsd train several networks".to_string(),
                    names => format!("this config trains {}", names.join(", ")),
                }
            ))),
        }
    }

    /// The network a multi-network method evaluates, writes as `model.safetensors` and
    /// exports by default (Co-LAD's and DML's `method.evaluate`); `None` for a one-network run.
    pub fn evaluated_network(&self) -> Option<&str> {
        match &self.config.method {
            Some(MethodConfig::Colad { evaluate, .. }) => Some(match evaluate {
                distill::ColadNetwork::Net1 => "net1",
                distill::ColadNetwork::Net2 => "net2",
            }),
            Some(MethodConfig::Dml { evaluate, .. })
            | Some(MethodConfig::Dcm { evaluate, .. })
            | Some(MethodConfig::Dogo { evaluate, .. }) => Some(evaluate),
            Some(MethodConfig::Ffsd { evaluate, .. }) => Some(evaluate),
            _ => None,
        }
    }

    /// The device the config (or `--device`) names, opened.
    pub fn device(&self) -> Result<candle_core::Device> {
        crate::device::open_named(&self.config.device)
    }

    /// A validation failure of this config, located in the file that set the value.
    pub fn invalid(&self, e: Invalid) -> Error {
        self.error(&e.path, e.msg)
    }

    /// Where the data are: COCO splits or ImageFolder directories, generating the synthetic
    /// dataset first when the config asks for one.
    pub fn data_sources(&self) -> Result<DataSources> {
        let d = &self.config.data;
        if let Some(spec) = d
            .synthetic
            .as_ref()
            .filter(|s| s.task == crate::data::synth::SynthTask::Classification)
        {
            let cache = self.resolve("data.synthetic.cache_dir", &spec.cache_dir);
            let p = crate::data::synth::ensure_classification(spec, &cache)?;
            return Ok(DataSources::Folders {
                train: p.train,
                val: (spec.val > 0).then_some(p.val),
                unlabeled: (spec.unlabeled > 0).then_some(p.unlabeled),
            });
        }
        if let Some(f) = &d.folders {
            let r = |k: &str, p: &Path| self.resolve(&format!("data.folders.{k}"), p);
            return Ok(DataSources::Folders {
                train: r("train", &f.train),
                val: f.val.as_ref().map(|v| r("val", v)),
                unlabeled: f.unlabeled.as_ref().map(|v| r("unlabeled", v)),
            });
        }
        let (train, val) = self.data_splits()?;
        Ok(DataSources::Coco { train, val })
    }

    /// Class names and category ids of the training data (COCO categories, or ImageFolder
    /// classes).
    pub fn train_classes(&self) -> Result<(Vec<String>, Vec<u64>)> {
        if !self.is_classification() {
            // The annotation file alone: the images need not be there to name the classes.
            let ann = self
                .train_annotations()?
                .ok_or_else(|| self.error("data.train", "the config has no training data"))?;
            let gt = crate::data::coco::load_ground_truth(&ann, crate::data::coco::Purpose::Eval)?;
            let m = crate::data::coco::CategoryMap::new(&gt.dataset.categories);
            return Ok((m.names, m.ids));
        }
        match self.data_sources()? {
            DataSources::Folders { train, .. } => {
                let d = crate::data::folder::load_folder(&train, None)?;
                Ok((d.categories.names, d.categories.ids))
            }
            DataSources::Coco { train, .. } => Err(self.error(
                "data",
                format!(
                    "{}: COCO data where folders were expected",
                    train.0.display()
                ),
            )),
        }
    }

    /// Whether the data are image classification folders (ImageFolder or synthetic crops).
    pub fn is_classification(&self) -> bool {
        let d = &self.config.data;
        d.folders.is_some()
            || d.synthetic
                .as_ref()
                .is_some_and(|s| s.task == crate::data::synth::SynthTask::Classification)
    }

    /// Annotation file and image folder of the train and val splits (COCO data), generating the
    /// synthetic dataset first when the config asks for one.
    pub fn data_splits(&self) -> Result<(SplitPaths, Option<SplitPaths>)> {
        let d = &self.config.data;
        if self.is_classification() {
            return Err(self.error(
                "data",
                "holds image classification data (ImageFolder), not COCO annotations",
            ));
        }
        if let Some(spec) = &d.synthetic {
            let cache = self.resolve("data.synthetic.cache_dir", &spec.cache_dir);
            let p = crate::data::synth::ensure(spec, &cache)?;
            let val = (spec.val > 0).then(|| (p.val.clone(), p.images.clone()));
            return Ok(((p.train, p.images), val));
        }
        let train = d.train.as_ref().ok_or_else(|| {
            self.error(
                "data",
                "needs `train` (annotations + images) or a `synthetic` spec",
            )
        })?;
        let split = |name: &str, s: &crate::data::config::SplitConfig| -> Result<SplitPaths> {
            let images = self.existing(&format!("data.{name}.images"), &s.images, true)?;
            Ok((self.annotations(name, s)?, images))
        };
        let val = d.val.as_ref().map(|v| split("val", v)).transpose()?;
        Ok((split("train", train)?, val))
    }

    /// The training annotation file alone (class names need no images), or `None` when the
    /// config has neither `data.train` nor a synthetic spec.
    pub fn train_annotations(&self) -> Result<Option<PathBuf>> {
        let d = &self.config.data;
        if d.synthetic.is_some() {
            return Ok(Some(self.data_splits()?.0 .0));
        }
        d.train
            .as_ref()
            .map(|t| self.annotations("train", t))
            .transpose()
    }

    /// The annotation file of split `name`, which must exist: a missing one is reported
    /// against the config key that names it.
    fn annotations(&self, name: &str, s: &crate::data::config::SplitConfig) -> Result<PathBuf> {
        self.existing(&format!("data.{name}.annotations"), &s.annotations, false)
    }

    /// The path the config sets at `key`, resolved, which must exist as a folder (`folder`) or
    /// a file: otherwise an error at `key` saying which it is not.
    fn existing(&self, key: &str, p: &Path, folder: bool) -> Result<PathBuf> {
        let p = self.resolve(key, p);
        if (folder && p.is_dir()) || (!folder && p.is_file()) {
            return Ok(p);
        }
        let what = match (p.exists(), folder) {
            (false, _) => "does not exist",
            (true, true) => "is not a folder",
            (true, false) => "is not a file",
        };
        Err(self.error(key, format!("{} {what}", p.display())))
    }
}

/// Where a config's data are.
#[derive(Debug, Clone)]
pub enum DataSources {
    /// COCO annotations + image folders.
    Coco {
        train: SplitPaths,
        val: Option<SplitPaths>,
    },
    /// ImageFolder classification splits.
    Folders {
        train: PathBuf,
        val: Option<PathBuf>,
        unlabeled: Option<PathBuf>,
    },
}

/// Load a config file: follow `base` links (relative to each file), deep-merge, parse, validate.
pub fn load(path: &Path) -> Result<LoadedConfig> {
    let mut origins = BTreeMap::new();
    let mut chain = Vec::new();
    let merged = load_merged(path, &mut origins, &mut chain)?;
    let mut loaded = LoadedConfig {
        config: Config::default(),
        path: path.to_path_buf(),
        origins,
    };
    // From the merged value, not its text: positions in a document no one wrote would mislead.
    loaded.config = match serde_path_to_error::deserialize(&merged) {
        Ok(c) => c,
        Err(e) => {
            let (p, msg) = split_nested(&e.path().to_string(), &e.into_inner().to_string());
            return Err(loaded.merged_error(&locate::locate(&merged, &p, &msg), msg));
        }
    };
    validate(&loaded)?;
    Ok(loaded)
}

impl LoadedConfig {
    /// A located error at `json_path` of the merged document. When the value there was put
    /// together from several files of the `base` chain, all of them are named.
    fn merged_error(&self, json_path: &str, msg: String) -> Error {
        let own = self.origin(json_path);
        let mut others: Vec<String> = self
            .origins
            .iter()
            .filter(|(k, f)| {
                f.as_path() != own
                    && (json_path == "."
                        || k.starts_with(&format!("{json_path}."))
                        || k.starts_with(&format!("{json_path}[")))
            })
            .map(|(_, f)| f.display().to_string())
            .collect();
        others.sort();
        others.dedup();
        if others.is_empty() {
            return self.error(json_path, msg);
        }
        self.error(
            json_path,
            format!(
                "{msg} (this section is merged from this file and {})",
                others.join(", ")
            ),
        )
    }
}

/// Parse a config from a JSON string (no `base` support); for tests and programmatic use.
pub fn from_str(name: &str, text: &str) -> Result<LoadedConfig> {
    let file = PathBuf::from(name);
    let config: Config = crate::error::parse_json(&file, text.as_bytes())?;
    let loaded = LoadedConfig {
        config,
        path: file,
        origins: BTreeMap::new(),
    };
    validate(&loaded)?;
    Ok(loaded)
}

fn load_merged(
    path: &Path,
    origins: &mut BTreeMap<String, PathBuf>,
    chain: &mut Vec<PathBuf>,
) -> Result<Value> {
    let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    if chain.contains(&canon) {
        return Err(Error::located(
            path,
            "base",
            format!(
                "inheritance cycle: {}",
                chain
                    .iter()
                    .chain([&canon])
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        ));
    }
    chain.push(canon);
    let bytes = crate::error::read_file_capped(path, crate::error::MAX_CONFIG_BYTES)?;
    let mut doc: Value = crate::error::parse_json(path, &bytes)?;
    let Value::Object(map) = &mut doc else {
        return Err(Error::located(path, ".", "a config must be a JSON object"));
    };
    let base = map.remove("base");
    let mut merged = match base {
        None => Value::Object(Default::default()),
        Some(Value::String(b)) => {
            let base_path = path.parent().unwrap_or(Path::new(".")).join(&b);
            if !base_path.exists() {
                return Err(Error::located(
                    path,
                    "base",
                    format!("{} does not exist", base_path.display()),
                ));
            }
            load_merged(&base_path, origins, chain)?
        }
        Some(other) => {
            return Err(Error::located(
                path,
                "base",
                format!("must be a string (a relative path), got {other}"),
            ))
        }
    };
    deep_merge(&mut merged, doc, "", path, origins);
    chain.pop();
    Ok(merged)
}

/// Merge `over` into `into`: objects merge key by key, anything else replaces. Records the file
/// that set each path.
fn deep_merge(
    into: &mut Value,
    over: Value,
    prefix: &str,
    file: &Path,
    origins: &mut BTreeMap<String, PathBuf>,
) {
    match (into, over) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match a.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => {
                        deep_merge(slot, v, &p, file, origins)
                    }
                    _ => {
                        // A replaced subtree belongs wholly to this file.
                        origins.retain(|key, _| {
                            !(key == &p
                                || key.starts_with(&format!("{p}."))
                                || key.starts_with(&format!("{p}[")))
                        });
                        origins.insert(p, file.to_path_buf());
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Check value ranges and cross-field rules, section by section; errors name file and JSON
/// path.
pub fn validate(c: &LoadedConfig) -> Result<()> {
    let cfg = &c.config;
    let check = |r: crate::error::Check| r.map_err(|e| c.invalid(e));
    check(cfg.model.validate("model"))?;
    for (i, t) in cfg.teachers.iter().enumerate() {
        check(t.validate(&format!("teachers[{i}]")))?;
    }
    check(distill::validate_terms(
        &cfg.distill,
        &cfg.teachers,
        &cfg.model,
    ))?;
    if let Some(m) = &cfg.method {
        check(m.validate(&cfg.teachers, &cfg.model))?;
    }
    let takes_pretrained = cfg.method.as_ref().is_some_and(|m| m.takes_pretrained());
    for (i, t) in cfg.teachers.iter().enumerate() {
        if t.pretrained.is_some() && !takes_pretrained {
            return Err(c.error(
                &format!("teachers[{i}].pretrained"),
                "a pretrained hub model teaches through features and class logits: use it with method `cbd` or `simclr`",
            ));
        }
    }
    if takes_pretrained && !cfg.distill.is_empty() {
        return Err(c.error(
            "distill",
            "methods `cbd` and `simclr` bring their own loss; `distill` terms are not added to them",
        ));
    }
    check(cfg.data.validate())?;
    check(cfg.solver.validate())?;
    if let Some(o) = &cfg.online {
        check(o.validate("online"))?;
    }
    if cfg.method.as_ref().is_some_and(|m| m.needs_negatives()) && cfg.solver.batch_size < 2 {
        return Err(c.error(
            "solver.batch_size",
            format!(
                "{} is too small for a contrastive loss: each image's negatives are the other images of its batch; at least 2",
                cfg.solver.batch_size
            ),
        ));
    }
    if cfg.output_dir.as_os_str().is_empty() {
        return Err(c.error(
            "output_dir",
            "must not be empty: name the folder the run writes to",
        ));
    }
    crate::device::parse_device(&cfg.device).map_err(|m| c.error("device", m))?;
    crate::federated::validate(c)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, v: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, v).unwrap();
        p
    }

    #[test]
    fn defaults_follow_references() {
        let c = Config::default();
        assert_eq!(c.model.input().min_size, 800);
        let ModelConfig::FasterRcnn(m) = &c.model else {
            panic!("the default model is Faster R-CNN")
        };
        assert_eq!(m.roi_heads.bbox_reg_weights, [10., 10., 5., 5.]);
        assert_eq!(c.solver.lr, 0.02);
        assert_eq!(c.solver.length(), (26, true));
        // The resolved schedule (16/26 and 22/26 of the run) is checked in engine::schedule.
    }

    #[test]
    fn base_deep_merges_and_tracks_origin() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "base.json",
            r#"{"solver": {"lr": 0.01, "momentum": 0.8}, "model": {"backbone": {"depth": 18}}, "seed": 3}"#,
        );
        let child = write(
            d.path(),
            "sub/child.json",
            r#"{"base": "../base.json", "solver": {"lr": 0.05}, "model": {"backbone": {"width": 0.25}}}"#,
        );
        let c = load(&child).unwrap();
        assert_eq!(c.config.solver.lr, 0.05);
        assert_eq!(c.config.solver.momentum, 0.8);
        assert_eq!(c.config.model.backbone().depth, 18);
        assert_eq!(c.config.model.backbone().width, 0.25);
        assert_eq!(c.config.seed, 3);
        assert!(c.origin("solver.momentum").ends_with("base.json"));
        assert!(c.origin("solver.lr").ends_with("child.json"));
        // A bad value set in the base is reported against the base file.
        write(d.path(), "base.json", r#"{"solver": {"momentum": 1.5}}"#);
        let e = load(&child).unwrap_err().to_string();
        assert!(
            e.ends_with("base.json: solver.momentum: must be in [0, 1)"),
            "{e}"
        );
    }

    #[test]
    fn located_errors() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (r#"{"solver": {"lr": 0}}"#, "x.json: solver.lr: must be > 0"),
            (
                r#"{"solver": {"lrr": 0.1}}"#,
                "x.json: solver.lrr: unknown field `lrr`",
            ),
            (
                r#"{"model": {"backbone": {"depth": 42}}}"#,
                "x.json: model.backbone.depth: 42 is not one of 18, 34, 50, 101",
            ),
            (
                r#"{"solver": {"batch_size": "two"}}"#,
                "x.json: solver.batch_size: invalid type: string \"two\"",
            ),
            (
                r#"{"solver": {"iterations": 10, "epochs": 2}}"#,
                "x.json: solver.epochs: give either `iterations` or `epochs`, not both",
            ),
            (
                r#"{"solver": {"iterations": 10, "schedule": {"type": "step", "milestones": [5, 3]}}}"#,
                "x.json: solver.schedule.milestones[1]: milestones must increase",
            ),
            (
                r#"{"solver": {"iterations": 10, "schedule": {"type": "step", "milestones": [50]}}}"#,
                "x.json: solver.schedule.milestones[0]: 50 is beyond the run length 10",
            ),
            (
                r#"{"device": "tpu"}"#,
                "x.json: device: `tpu` is not a device",
            ),
            (
                r#"{"distill": [{"type": "hint", "student": "fpn.p3", "teacher": "fpn.p3"}]}"#,
                "x.json: distill[0]: distillation terms need at least one entry in `teachers`",
            ),
            (
                r#"{"teachers": [{"weights": "t.safetensors"}], "distill": [{"type": "hint", "student": "fpn.p9", "teacher": "fpn.p3"}]}"#,
                "x.json: distill[0].student: `fpn.p9` is not a tap",
            ),
            (
                r#"{"teachers": [{"weights": "t"}], "distill": [{"type": "weighted_kd", "stage": "rpn", "mu": 2}]}"#,
                "x.json: distill[0].mu: must be in [0, 1]",
            ),
            (
                r#"{"teachers": [{"weights": "hf://owner/repo"}]}"#,
                "x.json: teachers[0].weights: hf://owner/repo: names no file",
            ),
            (
                r#"{"teachers": [{"weights": "t.pth", "keys": {"strip_prefixes": [""]}}]}"#,
                "x.json: teachers[0].keys.strip_prefixes[0]: must not be empty",
            ),
            (
                r#"{"teachers": [{"weights": "t.pth", "keys": {"rename": [{"from": "a."}]}}]}"#,
                "x.json: teachers[0].keys.rename[0]: missing field `to`",
            ),
            (
                r#"{"model": {"backbone": {"weights": "hf://o//f.pth"}}}"#,
                "x.json: model.backbone.weights: hf://o//f.pth: empty repo name",
            ),
            (
                r#"{"model": {"backbone": {"weights_keys": {"strip": ["module."]}}}}"#,
                "x.json: model.backbone.weights_keys.strip: unknown field `strip`",
            ),
            (
                r#"{"data": {"synthetic": {"classes": 12}}}"#,
                "x.json: data.synthetic.classes: must be in 1..=8",
            ),
            (
                r#"{"data": {"synthetic": {}, "label_fraction": 0.1}}"#,
                "x.json: data.label_fraction: subsets the labels of classification data",
            ),
            (
                r#"{"data": {"label_fraction": -0.1}}"#,
                "x.json: data.label_fraction: -0.1 is outside (0, 1]",
            ),
            (
                r#"{"model": {"rpn": {"fg_iou_thresh": 1.5}}}"#,
                "x.json: model.rpn.fg_iou_thresh: must be in [0, 1]",
            ),
            (
                r#"{"model": {"rpn": {"anchor_sizes": [32, 64, 128, 256, 512, 1024]}}}"#,
                "x.json: model.rpn.anchor_sizes: has 6 size(s); give exactly one per FPN level: 5",
            ),
            (
                r#"{"model": {"rpn": {"aspect_ratios": []}}}"#,
                "x.json: model.rpn.aspect_ratios: must not be empty",
            ),
            (
                r#"{"teachers": [{"weights": "t"}], "distill": [{"type": "kd", "temperature": 1e-30}]}"#,
                "x.json: distill[0].temperature: 1e-30 is outside [0.001, 1000]",
            ),
            (
                r#"{"teachers": [{"weights": "t"}], "distill": [{"type": "kd", "weight": 1e30}]}"#,
                "x.json: distill[0].weight: 1e30 is above 1e6",
            ),
            (
                r#"{"model": {"arch": "classifier"}, "teachers": [{"weights": "t"}], "method": {"type": "simclr", "temperature": 1e-300}}"#,
                "x.json: method.temperature: 1e-300 is outside",
            ),
            (
                r#"{"model": {"arch": "classifier"}, "teachers": [{"weights": "t"}], "method": {"type": "cbd", "beta": 1e300}}"#,
                "x.json: method.beta: 1e300 is above 1e6",
            ),
            (
                r#"{"model": {"input": {"min_size": 4000000000, "max_size": 4000000000}}}"#,
                "x.json: model.input.min_size: 4000000000 pixels is above kdet's limit of 8192: the first convolution's output alone would take 1.0e12 GB per image",
            ),
            (
                r#"{"model": {"backbone": {"width": 1000}}}"#,
                "x.json: model.backbone.width: 1000 makes a ResNet-50 trunk of about 2.4e13 parameters (9.4e4 GB in f32",
            ),
            (
                r#"{"model": {"fpn": {"out_channels": 100000}}}"#,
                "x.json: model.fpn.out_channels: must be in 1..=4096",
            ),
            (
                r#"{"data": {"synthetic": {"size": 100000}}}"#,
                "x.json: data.synthetic.size: 100000 pixels is above the limit of 4096 (30 GB per image)",
            ),
            (r#"[1]"#, "x.json: .: a config must be a JSON object"),
            (
                r#"{"base": 3}"#,
                "x.json: base: must be a string (a relative path), got 3",
            ),
            (r#"{"base": "nope.json"}"#, "x.json: base: "),
            (
                r#"{"solver": {"lr": 0.1,}}"#,
                "x.json: solver: trailing comma at line 1 column 23",
            ),
            (
                "{\"solver\": {\"lr\": 0.1}}} garbage",
                "x.json: .: trailing characters at line 1 column 24",
            ),
            (
                "{\"seed\": 1}\n{\"seed\": 2}\n",
                "x.json: .: trailing characters at line 2 column 1",
            ),
            (
                r#"{"output_dir": ""}"#,
                "x.json: output_dir: must not be empty",
            ),
            (
                "\u{feff}{\"seed\": 1}",
                "x.json: .: UTF-8 byte-order mark at the start",
            ),
        ];
        for (json, want) in cases {
            let p = write(d.path(), "x.json", json);
            let got = load(&p).unwrap_err().to_string();
            let got = got
                .strip_prefix(&format!("{}/", d.path().display()))
                .unwrap_or(&got)
                .to_string();
            assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn trailing_data_in_a_base_names_the_base() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "base.json", "{\"seed\": 3}\n{\"seed\": 4}");
        let child = write(d.path(), "child.json", r#"{"base": "base.json"}"#);
        let e = load(&child).unwrap_err().to_string();
        assert!(
            e.ends_with("base.json: .: trailing characters at line 2 column 1: only one JSON document is allowed, with nothing after it"),
            "{e}"
        );
    }

    #[test]
    fn errors_inside_tagged_sections_name_the_file_and_path_that_set_them() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "base.json",
            r#"{"seed": 1, "method": {"type": "lad"}}"#,
        );
        let cases = [
            (
                r#"{"base": "base.json", "method": {"type": "lad", "tmperature": 2}}"#,
                "child.json: method.tmperature: unknown field `tmperature`",
            ),
            (
                r#"{"base": "base.json", "method": {"type": "colad", "partner": {"backbone": {"dpth": 3}}}}"#,
                "child.json: method.partner.backbone.dpth: unknown field `dpth`",
            ),
            (
                r#"{"base": "base.json", "teachers": [{"weights": "t"}], "distill": [{"type": "kd", "temperature": "hot"}]}"#,
                "child.json: distill[0].temperature: invalid type: string \"hot\"",
            ),
        ];
        for (json, want) in cases {
            let child = write(d.path(), "child.json", json);
            let e = load(&child).unwrap_err().to_string();
            assert!(e.contains(want), "\n got: {e}\nwant: {want}");
            // Columns of the merged document (which no one wrote) are not shown.
            assert!(!e.contains("column"), "{e}");
        }
    }

    #[test]
    fn a_base_that_is_not_a_regular_file_is_refused_before_reading() {
        let d = tempfile::tempdir().unwrap();
        let child = write(d.path(), "child.json", r#"{"base": "/dev/zero"}"#);
        let e = load(&child).unwrap_err().to_string();
        assert!(e.contains("/dev/zero: is not a regular file"), "{e}");
        let big = write(d.path(), "big.json", &" ".repeat(5 << 20));
        let e = load(&big).unwrap_err().to_string();
        assert!(e.contains("big.json: is larger than 4 MB"), "{e}");
    }

    #[test]
    fn inheritance_cycle_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.json", r#"{"base": "b.json"}"#);
        let b = write(d.path(), "b.json", r#"{"base": "a.json"}"#);
        let e = load(&b).unwrap_err().to_string();
        assert!(e.contains("inheritance cycle"), "{e}");
    }

    #[test]
    fn shipped_configs_load() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for dir in ["synth", "coco"] {
            let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for e in rd {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "json") {
                    load(&p).unwrap_or_else(|e| panic!("{e}"));
                    n += 1;
                }
            }
        }
        assert!(n >= 1, "no configs found");
    }
}
