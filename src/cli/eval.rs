//! `kdet eval`.

use super::*;

/// The flags of `kdet eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Ground truth: COCO instances JSON.
    #[arg(long, requires = "dt", conflicts_with = "config")]
    pub gt: Option<PathBuf>,
    /// Detections: COCO results JSON (list of {image_id, category_id, bbox, score}).
    #[arg(long, requires = "gt")]
    pub dt: Option<PathBuf>,
    /// Evaluate a model instead: its config (val set) …
    #[arg(long, requires = "weights")]
    pub config: Option<PathBuf>,
    /// … and its weights (safetensors or PyTorch, local or `hf://owner/repo/file@rev`).
    #[arg(long, requires = "config")]
    pub weights: Option<PathBuf>,
    /// Class names when the weights have no sidecar and the config no training annotations
    /// (see `kdet infer --help`).
    #[arg(long, value_enum, requires = "config")]
    pub classes: Option<ClassList>,
    /// With a config training several networks (Co-LAD, DML, DCM): which one the weights are,
    /// `net1` (the config's `model`), `net2` (`method.partner`, DML's first peer), …; by
    /// default the one the weights' sidecar records, else the evaluated one.
    #[arg(long, requires = "config")]
    pub network: Option<String>,
    /// `text`: pycocotools' 12 summary lines (+ per-class table with --per-class);
    /// `json`: {"stats": [12 numbers], "per_class": [{category_id, name, ap, ap50}]}.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Print per-class AP and AP50 in text output.
    #[arg(long)]
    pub per_class: bool,
}

pub fn run(args: EvalArgs, device: &Option<String>) -> anyhow::Result<ExitCode> {
    let EvalArgs {
        gt,
        dt,
        config,
        weights,
        classes,
        network,
        format,
        per_class,
    } = args;
    let s = match (config, weights) {
        (Some(c), Some(w)) => eval_model(&c, &w, network.as_deref(), classes, device)?,
        _ => {
            let gt = gt.context("give --gt and --dt, or --config and --weights")?;
            let dt = dt.context("--dt is required")?;
            kdet::engine::evaluator::Evaluation::Detection(kdet::eval::evaluate_files(&gt, &dt)?)
        }
    };
    match format {
        Format::Text => print!("{}", s.to_text(per_class)),
        Format::Json => println!("{}", s.to_json()),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, ValueEnum)]
/// How `kdet eval` prints.
pub enum Format {
    Text,
    Json,
}

/// `kdet eval --config --weights`: the model over the config's val split.
fn eval_model(
    config: &std::path::Path,
    weights: &std::path::Path,
    network: Option<&str>,
    classes: Option<ClassList>,
    device: &Option<String>,
) -> anyhow::Result<kdet::engine::evaluator::Evaluation> {
    let cfg = load_config(config, device)?;
    let weights = local_weights(weights)?;
    let (net, _, _) = load_model(&cfg, &weights, network, classes)?;
    let run = kdet::engine::method::RunData::load(&cfg)?;
    let val = run
        .val
        .as_ref()
        .context("the config has no val split to evaluate on")?;
    let (mut s, _) = kdet::engine::evaluator::evaluate(
        &*net.model,
        val,
        net.config.input(),
        cfg.config.solver.batch_size,
        &net.device,
        None,
        &run.train_counts(),
    )?;
    kdet::engine::evaluator::add_representation(&mut s, &*net.model, &run, net.config.input())?;
    if let (kdet::engine::evaluator::Evaluation::Classification(c), Some(m)) =
        (&mut s, &cfg.config.method)
    {
        c.self_supervised = m.self_supervised();
    }
    Ok(s)
}
