//! `kdet plot`.

use super::*;

/// The flags of `kdet plot`.
#[derive(clap::Args)]
pub struct PlotArgs {
    /// Run directory (with metrics.jsonl).
    pub run: PathBuf,
}

pub fn run(args: PlotArgs) -> anyhow::Result<ExitCode> {
    let PlotArgs { run } = args;
    for p in kdet::engine::metrics::plot_run(&run)? {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
