//! `kdet compare`.

use super::*;

/// The flags of `kdet compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// Run directories (with eval.json), COCO results files or multi-seed run folders
    /// (holding `seed-<k>/` runs, from `kdet train --seeds`); the first is the baseline.
    /// With a multi-seed folder the table is over seeds: each seed's Δ (paired by seed),
    /// the mean Δ and a two-level bootstrap interval over seeds and val images.
    #[arg(required_unless_present = "arm", num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// One arm as a comma-separated list of runs (one per training seed; seeds read from
    /// each run's config.json for pairing), instead of positional runs; give it twice or
    /// more, the first is the baseline: `--arm a0,a1,a2 --arm b0,b1,b2`.
    #[arg(long, conflicts_with = "runs")]
    pub arm: Vec<String>,
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
        arm,
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
    let opts = kdet::eval::compare::CompareOptions {
        bootstrap,
        confidence,
        seed,
    };
    if kdet::eval::multiseed::wants_groups(&runs, &arm) {
        compare_groups(&runs, &arm, gt.as_deref(), &opts, json, out.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    let inputs = runs
        .iter()
        .map(|r| kdet::eval::compare::RunInput::resolve(r))
        .collect::<Result<Vec<_>, _>>()?;
    let cmps = kdet::eval::compare::compare_runs(&inputs, gt.as_deref(), &opts)?;
    print_tables(&cmps, json, |c| c.to_markdown())?;
    if let Some(dir) = out {
        for (i, c) in cmps.iter().enumerate() {
            let p = dir.join(chart_name(i, cmps.len()));
            kdet::eval::compare::chart(c, &p)?;
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kdet compare` over groups of runs (multi-seed folders or `--arm` lists): tables or JSON,
/// and a chart per comparison under `out`.
fn compare_groups(
    runs: &[PathBuf],
    arm: &[String],
    gt: Option<&std::path::Path>,
    opts: &kdet::eval::compare::CompareOptions,
    json: bool,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if !arm.is_empty() && arm.len() < 2 {
        bail!("--arm: give at least two arms (--arm a0,a1,a2 --arm b0,b1,b2)");
    }
    let arms = kdet::eval::multiseed::arms(runs, arm)?;
    let cmps = kdet::eval::multiseed::compare_arms(&arms, gt, opts)?;
    print_tables(&cmps, json, |c| c.to_markdown())?;
    if let Some(dir) = out {
        for (i, c) in cmps.iter().enumerate() {
            let p = dir.join(chart_name(i, cmps.len()));
            kdet::eval::multiseed::chart(c, &p)?;
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}

/// Each comparison as markdown, or all as one JSON document.
fn print_tables<T: serde::Serialize>(
    cmps: &[T],
    json: bool,
    markdown: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(cmps)?);
    } else {
        for c in cmps {
            println!("{}", markdown(c));
        }
    }
    Ok(())
}

/// `compare.png`, or `compare-<i+1>.png` when there are several.
fn chart_name(i: usize, n: usize) -> String {
    match n {
        1 => "compare.png".to_string(),
        _ => format!("compare-{}.png", i + 1),
    }
}
