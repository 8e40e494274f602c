//! `kdet export`: a trained student as a self-contained safetensors file plus a sidecar JSON.
//!
//! The weights are checked strictly against the config's model (so an export never ships a
//! half-loaded network), training-only parts are dropped (the distillation adaptation layers,
//! a checkpoint's optimizer state and counters), and the result is written in one of two forms:
//! - `torchvision`: exactly the tensors of torchvision's `FasterRCNN(...).state_dict()` for the
//!   same architecture — kdet's names already are torchvision's; BatchNorm layers (`norm: bn`)
//!   get their `num_batches_tracked` buffer, which `load_state_dict(strict=True)` requires.
//!   `tools/export_roundtrip.py` loads such a file into torchvision and compares outputs.
//! - `kdet`: the same tensors without PyTorch-only buffers, for `kdet eval/infer` and teachers.
//!
//! `--backbone-only` keeps the ResNet trunk under torchvision's `resnet*` names (`conv1.weight`,
//! `layer1.0.conv1.weight`, …), for initialising another detector or a classifier.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::config::LoadedConfig;
use crate::engine::checkpoint;
use crate::error::{Error, Result};
use crate::manifest::same_file;
use crate::models::build::Network;
use crate::models::config::ModelConfig;
use crate::models::layers::NormKind;
use crate::models::weights::{in_file, load_tensors, write_safetensors};

/// Output layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The PyTorch reference's state_dict: torchvision's for Faster R-CNN, mmdetection's for
    /// PAA (kdet's names are theirs; BatchNorm gains `num_batches_tracked`).
    #[value(alias = "pytorch")]
    Torchvision,
    /// kdet's tensors only.
    Kdet,
}

/// What `export` writes.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Of a checkpoint holding several networks, this one (`net1`, `net2`).
    pub network: Option<String>,
    pub format: ExportFormat,
    pub backbone_only: bool,
    /// Floating-point tensors are stored in this type (f32, f16 or bf16).
    pub dtype: DType,
}

/// What an export did.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub weights: PathBuf,
    pub sidecar: PathBuf,
    pub tensors: usize,
    pub parameters: usize,
    /// Training-only tensors left out (adaptation layers, optimizer state, counters).
    pub dropped: usize,
}

/// Read a model file or a training checkpoint (its network's tensors, without the method's own
/// variables and the optimizer state) as a name → tensor map. A checkpoint of several networks
/// (Co-LAD's `net1`, `net2`) needs `network`. Returns the map and how many tensors were not
/// this model's weights.
pub fn read_model_tensors(
    path: &Path,
    network: Option<&str>,
) -> Result<(HashMap<String, Tensor>, usize)> {
    // The reader of eval and infer: safetensors and PyTorch files alike, told by content.
    let all = crate::models::weights::read_state_dict(path, &Default::default())?;
    let total = all.len();
    let model = if checkpoint::is_checkpoint(&all) {
        let model = checkpoint::from_tensors(path, all)?.model;
        match network {
            None => model,
            Some(n) => {
                let prefix = format!("{n}.");
                let picked: HashMap<String, Tensor> = model
                    .into_iter()
                    .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|k| (k.to_string(), t)))
                    .collect();
                if picked.is_empty() {
                    return Err(Error::msg(format!(
                        "{}: the checkpoint has no network `{n}`",
                        path.display()
                    )));
                }
                picked
            }
        }
    } else {
        // A model file holds one network (`net1.safetensors`); `network` only chose its section.
        all
    };
    let dropped = total - model.len();
    Ok((model, dropped))
}

/// Refuse an `--out` whose sidecar is itself (`x.json`), or that would replace an input: the
/// weights, their sidecar, the config and its `base` files, or any file the config reads.
fn check_out(cfg: &LoadedConfig, weights: &Path, out: &Path, sidecar: &Path) -> Result<()> {
    if out == sidecar {
        return Err(Error::msg(format!(
            "--out {}: the sidecar would be written over the weights (same name): name the \
             weights file with another extension, such as .safetensors",
            out.display()
        )));
    }
    let mut inputs: Vec<(String, PathBuf)> = vec![("--weights".into(), weights.to_path_buf())];
    if let Ok(Some(s)) = crate::models::sidecar::Sidecar::find(weights) {
        inputs.push(("the sidecar of --weights".into(), s.file));
    }
    let run_inputs = crate::engine::rundir::inputs(cfg).into_iter();
    inputs.extend(run_inputs.map(|i| (i.key, i.path)));
    for file in [out, sidecar] {
        if let Some((what, _)) = inputs.iter().find(|(_, p)| same_file(p, file)) {
            return Err(Error::msg(format!(
                "--out {}: {} is {what}, an input of this export, and would be overwritten; \
                 name another file",
                out.display(),
                file.display()
            )));
        }
    }
    Ok(())
}

/// Export `weights` (trained for `model_cfg`, with `classes`/`category_ids`) to `out`; `cfg` is
/// the config the user named (its path must not be overwritten by the sidecar).
#[allow(clippy::too_many_arguments)]
pub fn export(
    cfg: &LoadedConfig,
    model_cfg: &ModelConfig,
    weights: &Path,
    classes: &[String],
    category_ids: &[u64],
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport> {
    if !matches!(opts.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::msg(format!(
            "--dtype {:?}: export writes f32, f16 or bf16",
            opts.dtype
        )));
    }
    let sidecar = out.with_extension("json");
    check_out(cfg, weights, out, &sidecar)?;
    let (tensors, dropped) = read_model_tensors(weights, opts.network.as_deref())?;
    // Strict: every tensor of the architecture present with its shape, nothing left over.
    let net = Network::new(model_cfg, classes.len(), 0, &Device::Cpu)?;
    let report = load_tensors(&net.vars.varmap, &tensors).map_err(|e| in_file(weights, e))?;
    if !report.is_clean() {
        let why = crate::models::sidecar::mismatch_hint(weights, model_cfg)
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        return Err(Error::msg(format!(
            "{}: weights do not fit {}'s model: {}{why}",
            weights.display(),
            cfg.path.display(),
            report.describe()
        )));
    }
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (k, t) in net.named_tensors() {
        let name = if opts.backbone_only {
            match k.strip_prefix(net.model.backbone_prefix()) {
                Some(n) => n.to_string(),
                None => continue,
            }
        } else {
            k
        };
        map.insert(name, t.detach().to_dtype(opts.dtype)?);
    }
    let parameters = map.values().map(|t| t.elem_count()).sum();
    if opts.format == ExportFormat::Torchvision
        && matches!(model_cfg.backbone().norm, NormKind::Bn | NormKind::BnEval)
    {
        let bns: Vec<String> = map
            .keys()
            .filter_map(|k| k.strip_suffix(".running_mean").map(str::to_string))
            .collect();
        for bn in bns {
            map.insert(
                format!("{bn}.num_batches_tracked"),
                Tensor::new(0i64, &Device::Cpu)?,
            );
        }
    }
    write_safetensors(&map, out)?;
    let i = model_cfg.input();
    let v = json!({
        "kdet_version": env!("CARGO_PKG_VERSION"),
        "format": match opts.format { ExportFormat::Torchvision => "torchvision", ExportFormat::Kdet => "kdet" },
        "dtype": format!("{:?}", opts.dtype).to_lowercase(),
        "backbone_only": opts.backbone_only,
        "source": weights,
        "model": model_cfg,
        "num_classes_with_background": classes.len() + 1,
        "classes": classes,
        "category_ids": category_ids,
        "input": {"mean": i.mean, "std": i.std, "min_size": i.min_size, "max_size": i.max_size,
                  "size_divisible": i.size_divisible, "pixel_range": "[0, 1] RGB, CHW"},
    });
    crate::util::write_atomic(
        &sidecar,
        serde_json::to_string_pretty(&v).expect("json").as_bytes(),
    )?;
    Ok(ExportReport {
        weights: out.to_path_buf(),
        sidecar,
        tensors: map.len(),
        parameters,
        dropped,
    })
}
