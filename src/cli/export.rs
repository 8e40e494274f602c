//! `kdet export`.

use super::*;

/// The flags of `kdet export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Model config.
    #[arg(long)]
    pub config: PathBuf,
    /// Trained weights or checkpoint (local or `hf://owner/repo/file@rev`).
    #[arg(long)]
    pub weights: PathBuf,
    /// Output .safetensors file (the sidecar JSON goes beside it, same stem).
    #[arg(long)]
    pub out: PathBuf,
    /// `torchvision`: loads into torchvision's FasterRCNN with strict=True; `kdet`: for kdet
    /// (no PyTorch-only buffers).
    #[arg(long, value_enum, default_value = "torchvision")]
    pub format: kdet::export::ExportFormat,
    /// Only the ResNet trunk, under torchvision's resnet names (`conv1.weight`, `layer1.…`).
    #[arg(long)]
    pub backbone_only: bool,
    /// Storage type of floating-point tensors.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: kdet::device::Precision,
    /// Of a checkpoint holding several networks (Co-LAD, DML, DCM), this one: `net1`, `net2`,
    /// …; by default the evaluated one.
    #[arg(long)]
    pub network: Option<String>,
    /// Class names when the weights have no sidecar (see `kdet infer --help`).
    #[arg(long, value_enum)]
    pub classes: Option<ClassList>,
}

pub fn run(args: ExportArgs, device: &Option<String>) -> anyhow::Result<ExitCode> {
    let ExportArgs {
        config,
        weights,
        out,
        format,
        backbone_only,
        dtype,
        network,
        classes,
    } = args;
    let cfg = load_config(&config, device)?;
    let weights = local_weights(&weights)?;
    let network = network.or_else(|| default_network(&cfg, &weights));
    let model = model_section(&cfg, network.as_deref())?;
    let (names, ids, _) = read_classes(&cfg, &weights, classes, &model)?;
    let opts = kdet::export::ExportOptions {
        network,
        format,
        backbone_only,
        dtype: dtype.to_candle(),
    };
    let r = kdet::export::export(&cfg, &model, &weights, &names, &ids, &out, &opts)?;
    println!(
        "wrote {} ({} tensors, {} parameters; {} training-only tensors left out) and {}",
        r.weights.display(),
        r.tensors,
        r.parameters,
        r.dropped,
        r.sidecar.display()
    );
    Ok(ExitCode::SUCCESS)
}
