//! `kdet compare`.

use super::*;

/// The flags of `kdet compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// Run directories (with eval.json) or COCO results files; the first is the baseline.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// Ground truth (needed when runs are plain results files).
    #[arg(long)]
    pub gt: Option<PathBuf>,
    /// Bootstrap resamples of the images (0 = no intervals).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Confidence level of the intervals.
    #[arg(long, default_value_t = 0.95, value_parser = finite_f64)]
    pub confidence: f64,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the chart(s) here (compare.png, or compare-N.png for several runs).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let CompareArgs {
        runs,
        gt,
        bootstrap,
        confidence,
        seed,
        out,
        json,
    } = args;
    if !(confidence > 0.0 && confidence < 1.0) {
        bail!("--confidence must be in (0, 1), got {confidence}");
    }
    let inputs = runs
        .iter()
        .map(|r| kdet::eval::compare::RunInput::resolve(r))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = kdet::eval::compare::CompareOptions {
        bootstrap,
        confidence,
        seed,
    };
    let cmps = kdet::eval::compare::compare_runs(&inputs, gt.as_deref(), &opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&cmps)?);
    } else {
        for c in &cmps {
            println!("{}", c.to_markdown());
        }
    }
    if let Some(dir) = out {
        for (i, c) in cmps.iter().enumerate() {
            let name = if cmps.len() == 1 {
                "compare.png".into()
            } else {
                format!("compare-{}.png", i + 1)
            };
            let p = dir.join(name);
            kdet::eval::compare::chart(c, &p)?;
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
