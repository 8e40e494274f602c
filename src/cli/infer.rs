//! `kdet infer`.

use super::*;

/// The flags of `kdet infer`.
#[derive(clap::Args)]
pub struct InferArgs {
    /// Model config.
    #[arg(long)]
    pub config: PathBuf,
    /// Model weights (safetensors or PyTorch, local or `hf://owner/repo/file@rev`).
    #[arg(long)]
    pub weights: PathBuf,
    /// Image files or folders. Drawings are named after the image (`x.png`); images whose
    /// names collide (`d1/x.png d2/x.png`) get their index too (`x-1.png`, `x-2.png`).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// A detector: draw and keep detections scoring at least this (in [0, 1]; default
    /// 0.5).
    #[arg(long, value_parser = score_threshold)]
    pub score_thr: Option<f32>,
    /// Class names, when the weights have no sidecar (`<stem>.json` or `model.json`
    /// beside them): `coco` is torchvision's COCO list. Without this flag and without a
    /// sidecar, the names come from the config's training annotations; when those are
    /// not there either and the weights have torchvision's 91 COCO outputs, the COCO list
    /// is used (and said).
    #[arg(long, value_enum)]
    pub classes: Option<ClassList>,
    /// A classifier: how many of the most probable classes to print and write per image.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    pub top_k: usize,
    /// With a config training several networks (Co-LAD, DML, DCM): which one the weights are,
    /// `net1`, `net2`, …; by default the one the weights' sidecar records, else the evaluated
    /// one.
    #[arg(long)]
    pub network: Option<String>,
}

pub fn run(args: InferArgs, device: &Option<String>) -> anyhow::Result<ExitCode> {
    let InferArgs {
        config,
        weights,
        inputs,
        out,
        score_thr,
        classes,
        top_k,
        network,
    } = args;
    let cfg = load_config(&config, device)?;
    let weights = local_weights(&weights)?;
    let (net, names, ids) = load_model(&cfg, &weights, network.as_deref(), classes)?;
    let top_k = if net.config.classifies_images() {
        classifier_flags(top_k, names.len(), score_thr)
    } else {
        top_k
    };
    let score_thr = score_thr.unwrap_or(0.5);
    let images = kdet::infer::collect_images(&inputs)?;
    let r = kdet::infer::infer(
        &*net.model,
        net.config.input(),
        &names,
        &ids,
        &images,
        &out,
        score_thr,
        top_k,
        &net.device,
    )?;
    if r.classes.is_empty() {
        eprintln!(
            "{} detections on {} images; drawings and detections.json in {}",
            r.detections.len(),
            images.len(),
            out.display()
        );
    } else {
        for c in &r.classes {
            let top: Vec<String> = c
                .top
                .iter()
                .map(|t| format!("{} {:.3}", t.category, t.score))
                .collect();
            println!("{}: {}", c.file_name, top.join(", "));
        }
        eprintln!(
            "top-{top_k} classes of {} images in {}",
            images.len(),
            out.join("predictions.json").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A count of at least 1 (`--top-k 0` printed one class and said "top-0").
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}: {s}")),
    }
}

/// `--top-k` for a classifier of `classes` classes: clamped to the class count, said; and
/// `--score-thr`, which only detectors use, said to be ignored when given.
fn classifier_flags(top_k: usize, classes: usize, score_thr: Option<f32>) -> usize {
    if score_thr.is_some() {
        eprintln!("warning: --score-thr applies to detectors; a classifier prints its top-k classes whatever their score (ignored)");
    }
    if top_k > classes {
        eprintln!("warning: --top-k {top_k} is more than the model's {classes} classes; printing all {classes}");
    }
    top_k.min(classes)
}
