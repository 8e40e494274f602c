//! `kdet bench`.

use super::*;

/// The flags of `kdet bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// `ops`, `row`, `list` or `check` (the device's RoIAlign and half-precision teacher
    /// against the CPU's, for tools/gpu_check.sh).
    pub what: String,
    /// The row, for `row`.
    pub name: Option<String>,
    /// Timed repetitions (after warm-up).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Untimed warm-up repetitions (`row`).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// JSON written by tools/bench_ops_torch.py --json: adds PyTorch's times and ratios
    /// (`ops`).
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// Weights for the inference rows (the PyTorch side's, so both score the same boxes).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Print the row (`row`) or the checks (`check`) as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs, device: &Option<String>) -> anyhow::Result<ExitCode> {
    let BenchArgs {
        what,
        name,
        runs,
        warmup,
        torch,
        weights,
        json,
    } = args;
    // `row` and `check` run on `--device`; `ops` compares kdet's CPU kernels with candle's.
    let dev = match device {
        Some(d) if what == "row" || what == "check" => kdet::device::open_named(d)?,
        Some(d) if d != "cpu" => bail!("--device {d}: `bench {what}` runs on the CPU only"),
        _ => candle_core::Device::Cpu,
    };
    match what.as_str() {
        "list" => {
            for (n, d) in kdet::bench::rows::ROWS {
                println!("{n}\t{d}");
            }
            Ok(ExitCode::SUCCESS)
        }
        "row" => {
            let name = name.context("bench row needs a row NAME (see `kdet bench list`)")?;
            if runs == 0 {
                bail!("--runs must be >= 1");
            }
            let timing = kdet::bench::rows::Timing { warmup, runs };
            let r = kdet::bench::rows::run(&name, timing, weights.as_deref(), &dev)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{}: median {:.2} ms over {} runs, peak RSS {:.0} MiB",
                    r.name, r.median_ms, r.runs, r.peak_rss_mb
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        "ops" => {
            let mut reference = std::collections::BTreeMap::new();
            if let Some(t) = &torch {
                let bytes = kdet::error::read_file(t)?;
                let v: serde_json::Value = kdet::error::parse_json(t, &bytes)?;
                for (i, key) in ["conv3x3_fwd", "conv3x3_fwd_bwd", "resnet18_step"]
                    .iter()
                    .enumerate()
                {
                    if let Some(ms) = v.get(key).and_then(|x| x.as_f64()) {
                        reference.insert(i, ms);
                    }
                }
            }
            eprintln!("rayon threads: {}", rayon::current_num_threads());
            let rows = kdet::bench::ops(runs.max(3))?;
            print!("{}", kdet::bench::table(&rows, &reference));
            Ok(ExitCode::SUCCESS)
        }
        "check" => {
            let checks = kdet::bench::check::run(&dev)?;
            if json {
                println!("{}", serde_json::to_string(&checks)?);
            } else {
                print!("{}", kdet::bench::check::table(&checks));
            }
            let failed = checks.iter().any(|c| c.skipped.is_empty() && !c.ok);
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        other => bail!("unknown benchmark `{other}`; available: ops, row, list, check"),
    }
}
