//! The `kdet` command line: the flags (clap), one module per subcommand with its flags and its
//! `run`, and the helpers several share (configs with `--device`, weights and class names).

mod bench;
mod compare;
mod data;
mod eval;
mod export;
mod fed;
mod infer;
mod online;
mod plot;
mod synth;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use kdet::config::LoadedConfig;
use kdet::data::synth::SynthSpec;

#[derive(Parser)]
#[command(
    name = "kdet",
    version,
    about = "Knowledge distillation of object detectors on candle"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Where models run: cpu, cuda, cuda:N or metal (overrides the config's `device`; teachers
    /// and student share it).
    #[arg(long, global = true)]
    device: Option<String>,
}

/// Load a config, with `--device` replacing its `device`.
fn load_config(path: &std::path::Path, device: &Option<String>) -> anyhow::Result<LoadedConfig> {
    let mut cfg = kdet::config::load(path)?;
    if let Some(d) = device {
        kdet::device::parse_device(d).map_err(|e| anyhow::anyhow!("--device {e}"))?;
        cfg.config.device = d.clone();
    }
    Ok(cfg)
}

/// A finite number: clap reads `NaN` and `inf` as floats, and no kdet flag means them.
fn finite_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("must be a finite number, got {s}"))
    }
}

/// A score threshold: finite and in [0, 1].
fn score_threshold(s: &str) -> Result<f32, String> {
    let v = finite_f64(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v as f32)
    } else {
        Err(format!("must be in [0, 1], got {s}"))
    }
}

/// Class names to use when the weights carry none.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum ClassList {
    /// torchvision's COCO categories: 91 indices (background, 80 classes, 10 `N/A` gaps),
    /// label = COCO category id, as torchvision's COCO-trained detectors predict.
    Coco,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Train a detector, alone or distilled from frozen teachers, from a JSON config.
    Train(train::TrainArgs),
    /// COCO bbox evaluation (pycocotools-identical numbers via hotcoco).
    Eval(eval::EvalArgs),
    /// Compare runs on the same val set: per-metric and per-class deltas of each run against
    /// the first, with bootstrap confidence intervals; markdown table and PNG chart.
    Compare(compare::CompareArgs),
    /// Detect objects in images: draws boxes, class names and scores, and writes one COCO
    /// results JSON for all images.
    Infer(infer::InferArgs),
    /// Online distillation on a video stream (Mullapudi et al. 2019): the student predicts
    /// every frame and learns from the teacher on key frames whose spacing adapts to how well
    /// it agrees; writes its detections, per-frame metrics and the cost against the teacher.
    Online(online::OnlineArgs),
    /// Export student weights as safetensors (+ sidecar JSON) that PyTorch can load.
    Export(export::ExportArgs),
    /// Write a deterministic synthetic dataset (same seed ⇒ same bytes): COCO-style detection,
    /// ImageFolder classification crops (`--task classification`), or a fixed-camera video
    /// with ground truth for every frame (`--task video`, for `kdet online`).
    Synth(synth::SynthArgs),
    /// Dataset tools.
    Data(data::DataArgs),
    /// Speed benchmarks: `ops` (kdet's ops against candle's built-ins, in one process), `row
    /// NAME` (one row of docs/benchmarks.md: a training, distillation or inference step or a
    /// kernel, median and peak RSS), `list` (the rows). tools/bench.sh runs every row against
    /// PyTorch.
    Bench(bench::BenchArgs),
    /// Draw a run's loss / lr / mAP curves to PNG.
    Plot(plot::PlotArgs),
    /// One piece of a federated run at a time (initial state, a round's clients, a client's
    /// local training, evaluation), for an outside driver such as the Flower app
    /// (tools/flower/); `kdet train` runs the whole simulation.
    Fed(fed::FedArgs),
}

/// Run the subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let device = &cli.device;
    match cli.cmd {
        Cmd::Train(a) => train::run(a, device),
        Cmd::Eval(a) => eval::run(a, device),
        Cmd::Compare(a) => compare::run(a),
        Cmd::Infer(a) => infer::run(a, device),
        Cmd::Online(a) => online::run(a, device),
        Cmd::Export(a) => export::run(a, device),
        Cmd::Synth(a) => synth::run(a),
        Cmd::Data(a) => data::run(a),
        Cmd::Bench(a) => bench::run(a, device),
        Cmd::Plot(a) => plot::run(a),
        Cmd::Fed(a) => fed::run(a, device),
    }
}

/// A `--weights` argument as a local file: `hf://…` from the Hugging Face cache (downloaded
/// unless offline), a folder refused as such.
fn local_weights(w: &std::path::Path) -> anyhow::Result<PathBuf> {
    let p = match w.to_str() {
        Some(s) if kdet::hub::is_hub(s) => kdet::hub::resolve(s)?,
        _ => w.to_path_buf(),
    };
    if p.is_dir() {
        bail!("--weights {}: is a folder, not a weights file", w.display());
    }
    if !p.exists() {
        bail!("--weights {}: no such file", w.display());
    }
    Ok(p)
}

/// Class names and category ids of trained weights: `--classes`, else the sidecar beside them
/// (written by `kdet train` and `kdet export`), else the config's training annotations. When
/// none of these exists and the weights fit the model with torchvision's 91 COCO outputs, the
/// built-in COCO list (said on stderr). Returns the network too when that check loaded it.
fn read_classes(
    cfg: &LoadedConfig,
    weights: &std::path::Path,
    classes: Option<ClassList>,
    model: &kdet::models::config::ModelConfig,
) -> anyhow::Result<(Vec<String>, Vec<u64>, Option<kdet::models::build::Network>)> {
    if classes == Some(ClassList::Coco) {
        let (n, i) = kdet::data::torchvision_coco::classes();
        return Ok((n, i, None));
    }
    if let Some(s) = kdet::models::sidecar::Sidecar::find(weights)? {
        return Ok((s.field("classes")?, s.field("category_ids")?, None));
    }
    // The training data's classes, or why there are none (no training data, a missing file).
    let missing = match cfg.train_classes() {
        Ok((n, i)) => return Ok((n, i, None)),
        Err(e) => e.to_string(),
    };
    let (names, ids) = kdet::data::torchvision_coco::classes();
    match kdet::models::build::Network::load(model, names.len(), weights, &cfg.device()?) {
        Ok(net) => {
            eprintln!(
                "note: no class names beside {} and {missing}; the weights have torchvision's \
                 91 COCO outputs, so torchvision's COCO category names are used",
                weights.display()
            );
            Ok((names, ids, Some(net)))
        }
        Err(_) => {
            let [a, b] = kdet::models::sidecar::Sidecar::candidates(weights);
            bail!(
                "no class names for {}: no sidecar ({} or {}), and {missing} \
                 (for torchvision's COCO weights, pass --classes coco)",
                weights.display(),
                a.display(),
                b.display()
            )
        }
    }
}

/// Trained weights as a model of the config's `model` section (or, with `network`, of the
/// section of that network of a multi-network method), with its class names / category ids.
fn load_model(
    cfg: &LoadedConfig,
    weights: &std::path::Path,
    network: Option<&str>,
    classes: Option<ClassList>,
) -> anyhow::Result<(kdet::models::build::Network, Vec<String>, Vec<u64>)> {
    let network = network
        .map(String::from)
        .or_else(|| default_network(cfg, weights));
    let model = model_section(cfg, network.as_deref())?;
    let (names, ids, net) = read_classes(cfg, weights, classes, &model)?;
    let net = match net {
        Some(n) => n,
        None => load_network(
            &model,
            names.len(),
            weights,
            network.as_deref(),
            &cfg.device()?,
        )?,
    };
    Ok((net, names, ids))
}

/// The config's `model`, or the section of `network` (`net1`, `net2` of Co-LAD).
fn model_section(
    cfg: &LoadedConfig,
    network: Option<&str>,
) -> anyhow::Result<kdet::models::config::ModelConfig> {
    Ok(match network {
        Some(n) => cfg.network_model(n)?,
        None => cfg.config.model.clone(),
    })
}

/// The network `--weights` are, when `--network` is not given and the config trains several:
/// the one whose architecture the weights' sidecar records (`net1.json` beside
/// `net1.safetensors`), else the one the method evaluates (`model.safetensors`, and what a
/// checkpoint exports by default).
fn default_network(cfg: &LoadedConfig, weights: &std::path::Path) -> Option<String> {
    let evaluated = cfg.evaluated_network()?;
    let recorded = kdet::models::sidecar::Sidecar::find(weights)
        .ok()
        .flatten()
        .and_then(|s| s.field::<kdet::models::config::ModelConfig>("model").ok());
    let named = cfg
        .network_names()
        .into_iter()
        .find(|n| recorded.is_some() && cfg.network_model(n).ok().as_ref() == recorded.as_ref());
    Some(named.unwrap_or_else(|| evaluated.to_string()))
}

/// A model's tensors from a model file or, for a kdet training checkpoint, its network's
/// (`network` of a multi-network run) without the optimizer state and the method's own
/// variables, so eval, infer and export all accept either file.
fn load_network(
    model: &kdet::models::config::ModelConfig,
    classes: usize,
    weights: &std::path::Path,
    network: Option<&str>,
    device: &candle_core::Device,
) -> anyhow::Result<kdet::models::build::Network> {
    if !kdet::engine::checkpoint::is_checkpoint_file(weights) {
        return Ok(kdet::models::build::Network::load(
            model, classes, weights, device,
        )?);
    }
    let (tensors, _) = kdet::export::read_model_tensors(weights, network)?;
    let net = kdet::models::build::Network::new(model, classes, 0, device)?;
    let r = kdet::models::weights::load_tensors(&net.vars.varmap, &tensors)?;
    if !r.is_clean() {
        bail!(
            "{}: the checkpoint's network does not fit the config's model: {}",
            weights.display(),
            r.describe()
        );
    }
    Ok(net)
}
