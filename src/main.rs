//! The `kdet` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use kdet::config::SynthSpec;

#[derive(Parser)]
#[command(
    name = "kdet",
    version,
    about = "Knowledge distillation of object detectors on candle"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum DataCmd {
    /// Validate a COCO instances file (located errors) and summarise it: images, boxes per
    /// class, size distribution, hotcoco healthcheck findings. Exits non-zero on any error.
    Check {
        /// COCO instances JSON.
        annotations: PathBuf,
        /// Image folder: also check that every image exists, decodes and has the stated size.
        #[arg(long)]
        images: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a detector, alone or distilled from frozen teachers, from a JSON config.
    Train {
        /// JSON config (see configs/; `base` inherits from another file).
        config: PathBuf,
        /// Continue from the last checkpoint in the config's output_dir.
        #[arg(long)]
        resume: bool,
        /// Also train the same student without distillation (same seed and schedule) and
        /// print `kdet compare`'s table of the two.
        #[arg(long)]
        baseline: bool,
    },
    /// COCO bbox evaluation (pycocotools-identical numbers via hotcoco).
    Eval {
        /// Ground truth: COCO instances JSON.
        #[arg(long, requires = "dt", conflicts_with = "config")]
        gt: Option<PathBuf>,
        /// Detections: COCO results JSON (list of {image_id, category_id, bbox, score}).
        #[arg(long, requires = "gt")]
        dt: Option<PathBuf>,
        /// Evaluate a model instead: its config (val set) …
        #[arg(long, requires = "weights")]
        config: Option<PathBuf>,
        /// … and its weights (safetensors).
        #[arg(long, requires = "config")]
        weights: Option<PathBuf>,
        /// `text`: pycocotools' 12 summary lines (+ per-class table with --per-class);
        /// `json`: {"stats": [12 numbers], "per_class": [{category_id, name, ap, ap50}]}.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Print per-class AP and AP50 in text output.
        #[arg(long)]
        per_class: bool,
    },
    /// Compare runs on the same val set: per-metric and per-class deltas of each run against
    /// the first, with bootstrap confidence intervals; markdown table and PNG chart.
    Compare {
        /// Run directories (with eval.json) or COCO results files; the first is the baseline.
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
        /// Ground truth (needed when runs are plain results files).
        #[arg(long)]
        gt: Option<PathBuf>,
        /// Bootstrap resamples of the images (0 = no intervals).
        #[arg(long, default_value_t = 1000)]
        bootstrap: usize,
        /// Confidence level of the intervals.
        #[arg(long, default_value_t = 0.95)]
        confidence: f64,
        /// Seed of the bootstrap.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the chart(s) here (compare.png, or compare-N.png for several runs).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print JSON instead of markdown.
        #[arg(long)]
        json: bool,
    },
    /// Detect objects in images: draws boxes, class names and scores, and writes one COCO
    /// results JSON for all images.
    Infer {
        /// Model config.
        #[arg(long)]
        config: PathBuf,
        /// Model weights (safetensors).
        #[arg(long)]
        weights: PathBuf,
        /// Image files or folders.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Draw and keep detections scoring at least this.
        #[arg(long, default_value_t = 0.5)]
        score_thr: f32,
    },
    /// Export student weights as safetensors (+ sidecar JSON) that PyTorch can load.
    Export {
        /// Model config.
        #[arg(long)]
        config: PathBuf,
        /// Trained weights or checkpoint.
        #[arg(long)]
        weights: PathBuf,
        /// Output .safetensors file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a deterministic synthetic COCO-style detection dataset (same seed ⇒ same bytes).
    Synth {
        /// Output folder: DIR/images/*.png and DIR/annotations/{train,val}.json.
        #[arg(long)]
        out: PathBuf,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Number of training images.
        #[arg(long, default_value_t = 512)]
        train: usize,
        /// Number of validation images.
        #[arg(long, default_value_t = 128)]
        val: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 128)]
        size: u32,
        /// Number of shape classes (1–8).
        #[arg(long, default_value_t = 5)]
        classes: usize,
        /// Long-tail imbalance ratio: class frequencies decay geometrically from the first to
        /// the last class by this factor (1 = balanced).
        #[arg(long, default_value_t = 1.0)]
        long_tail: f64,
    },
    /// Dataset tools.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// Speed benchmarks (kdet's ops against candle's built-ins, in one process).
    Bench {
        /// What to benchmark: `ops` (conv 3×3 forward, forward+backward, ResNet-18 SGD step).
        what: String,
        /// Timed repetitions per row (after warm-up).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// JSON written by tools/bench_ops_torch.py --json: adds PyTorch's times and ratios.
        #[arg(long)]
        torch: Option<PathBuf>,
    },
    /// Draw a run's loss / lr / mAP curves to PNG.
    Plot {
        /// Run directory (with metrics.jsonl).
        run: PathBuf,
    },
}

fn not_yet(what: &str, issue: &str) -> anyhow::Result<ExitCode> {
    bail!("`kdet {what}` is not yet available in this version: it arrives with {issue}")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Train { config, .. } => {
            let cfg = kdet::config::load(&config)?;
            let (train, val) = kdet::data::resolve_splits(&cfg)?;
            let data = kdet::data::coco::load_split(
                &train.0,
                &train.1,
                kdet::data::coco::Purpose::Train {
                    min_box_size: cfg.config.data.min_box_size,
                },
            )?;
            eprintln!(
                "config OK; train data: {} images, {} classes{}",
                data.records.len(),
                data.categories.len(),
                val.map(|v| format!("; val: {}", v.0.display()))
                    .unwrap_or_default()
            );
            not_yet("train", "the Faster R-CNN training engine")
        }
        Cmd::Eval {
            gt,
            dt,
            format,
            per_class,
            config,
            ..
        } => {
            if config.is_some() {
                return not_yet("eval --config", "the Faster R-CNN model");
            }
            let (gt, dt) = (
                gt.context("--gt and --dt are required")?,
                dt.context("--dt is required")?,
            );
            let s = kdet::eval::evaluate_files(&gt, &dt)?;
            match format {
                Format::Text => print!("{}", s.to_text(per_class)),
                Format::Json => println!("{}", s.to_json()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compare {
            runs,
            gt,
            bootstrap,
            confidence,
            seed,
            out,
            json,
        } => {
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
        Cmd::Infer { .. } => not_yet("infer", "the Faster R-CNN model"),
        Cmd::Export { .. } => not_yet("export", "the hub/export work"),
        Cmd::Synth {
            out,
            seed,
            train,
            val,
            size,
            classes,
            long_tail,
        } => {
            let spec = SynthSpec {
                seed,
                train,
                val,
                size,
                classes,
                long_tail,
                cache_dir: PathBuf::new(),
            };
            let cfg = kdet::config::from_str(
                "kdet synth",
                &serde_json::json!({"data": {"synthetic": {"seed": seed, "train": train, "val": val,
                    "size": size, "classes": classes, "long_tail": long_tail}}})
                .to_string(),
            );
            cfg.map_err(|e| {
                anyhow::anyhow!(e
                    .to_string()
                    .replace("kdet synth: data.synthetic.", "--")
                    .replace('_', "-"))
            })?;
            let p = kdet::data::synth::generate(&spec, &out)?;
            eprintln!(
                "wrote {} and {} (images in {})",
                p.train.display(),
                p.val.display(),
                p.images.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Data {
            cmd: DataCmd::Check {
                annotations,
                images,
            },
        } => {
            let r = kdet::eval::check::check_dataset(&annotations, images.as_deref())?;
            print!("{}", r.to_text());
            Ok(if r.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Bench { what, runs, torch } => match what.as_str() {
            "ops" => {
                let mut reference = std::collections::BTreeMap::new();
                if let Some(t) = &torch {
                    let bytes = std::fs::read(t).with_context(|| t.display().to_string())?;
                    let v: serde_json::Value =
                        serde_json::from_slice(&bytes).with_context(|| t.display().to_string())?;
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
            other => bail!("unknown benchmark `{other}`; available: ops"),
        },
        Cmd::Plot { .. } => not_yet("plot", "the training engine"),
    }
}

fn main() -> ExitCode {
    kdet::util::tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
