//! The `kdet` command line: parses arguments and calls the library.

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
struct Cli {
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
        /// Stop after this many iterations (checkpoint written); `--resume` continues.
        #[arg(long)]
        stop_after: Option<u64>,
        /// Start over although output_dir holds a checkpoint (it is replaced).
        #[arg(long, conflicts_with = "resume")]
        fresh: bool,
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
        /// With a config training several networks (Co-LAD): which one the weights are, `net1`
        /// (the config's `model`) or `net2` (`method.partner`).
        #[arg(long, requires = "config")]
        network: Option<String>,
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
        /// A classifier: how many of the most probable classes to print and write per image.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// With a config training several networks (Co-LAD): which one the weights are, `net1`
        /// or `net2`.
        #[arg(long)]
        network: Option<String>,
    },
    /// Export student weights as safetensors (+ sidecar JSON) that PyTorch can load.
    Export {
        /// Model config.
        #[arg(long)]
        config: PathBuf,
        /// Trained weights or checkpoint.
        #[arg(long)]
        weights: PathBuf,
        /// Output .safetensors file (the sidecar JSON goes beside it, same stem).
        #[arg(long)]
        out: PathBuf,
        /// `torchvision`: loads into torchvision's FasterRCNN with strict=True; `kdet`: for kdet
        /// (no PyTorch-only buffers).
        #[arg(long, value_enum, default_value = "torchvision")]
        format: kdet::export::ExportFormat,
        /// Only the ResNet trunk, under torchvision's resnet names (`conv1.weight`, `layer1.…`).
        #[arg(long)]
        backbone_only: bool,
        /// Storage type of floating-point tensors.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: kdet::device::Precision,
        /// Of a checkpoint holding several networks (Co-LAD), this one: `net1` or `net2`.
        #[arg(long)]
        network: Option<String>,
    },
    /// Write a deterministic synthetic dataset (same seed ⇒ same bytes): COCO-style detection,
    /// or ImageFolder classification crops (`--task classification`).
    Synth {
        /// Output folder: DIR/images/*.png and DIR/annotations/{train,val}.json (detection);
        /// DIR/{train,val}/<class>/*.png and DIR/unlabeled/*.png (classification).
        #[arg(long)]
        out: PathBuf,
        /// `detection` or `classification` (one object crop per image, class = shape × colour).
        #[arg(long, value_enum, default_value = "detection")]
        task: kdet::data::synth::SynthTask,
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
        /// Number of classes: shapes (detection, 1–8) or shape × colour pairs (classification,
        /// 1–32).
        #[arg(long, default_value_t = 5)]
        classes: usize,
        /// Long-tail imbalance ratio: class frequencies decay geometrically from the first to
        /// the last class by this factor (1 = balanced). Classification: the training split only
        /// (val stays balanced), classes ranked by a seeded shuffle.
        #[arg(long, default_value_t = 1.0)]
        long_tail: f64,
        /// Classification: images without labels, in DIR/unlabeled.
        #[arg(long, default_value_t = 0)]
        unlabeled: usize,
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

fn print_train_summary(s: &kdet::engine::trainer::TrainSummary, distilled: bool) {
    let done = s.iterations - s.start;
    let resumed = if s.start > 0 {
        format!(" (resumed at {}, now at {})", s.start, s.iterations)
    } else {
        String::new()
    };
    let rate = if done > 0 {
        format!(" ({:.2} s/iter)", s.seconds / done as f64)
    } else {
        String::new()
    };
    println!(
        "trained {done} iterations{resumed} in {:.0} s{rate}; run: {}",
        s.seconds,
        s.output_dir.display()
    );
    for (label, e) in &s.references {
        println!("{label}: val {}", e.headline());
    }
    if let Some(e) = &s.eval {
        let who = if !s.evaluated.is_empty() {
            format!("{} (evaluated)", s.evaluated)
        } else if distilled {
            "distilled student".to_string()
        } else {
            "student".to_string()
        };
        println!("{who}: val {}", e.headline());
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Train {
            config,
            resume,
            baseline,
            stop_after,
            fresh,
        } => {
            let cfg = load_config(&config, &cli.device)?;
            if baseline && cfg.config.teachers.is_empty() && cfg.config.method.is_none() {
                bail!(
                    "{}: --baseline trains the student once more without distillation, but this config has no `teachers`",
                    config.display()
                );
            }
            let opts = kdet::engine::trainer::TrainOptions {
                resume,
                stop_after,
                fresh,
            };
            let train = |cfg: &LoadedConfig, opts| {
                kdet::engine::trainer::train(cfg, kdet::distill::build_method, opts)
            };
            let s = train(&cfg, opts)?;
            print_train_summary(
                &s,
                !cfg.config.teachers.is_empty() || cfg.config.method.is_some(),
            );
            if baseline {
                eprintln!("training the same student without distillation (--baseline)");
                let bcfg = cfg.without_distillation();
                let mut bopts = opts;
                // `--resume` of an interrupted pair: the baseline may not have started yet.
                let bdir = bcfg.resolve("output_dir", &bcfg.config.output_dir);
                if bopts.resume && !bdir.join("checkpoint.safetensors").exists() {
                    bopts.resume = false;
                }
                let b = train(&bcfg, bopts)?;
                print_train_summary(&b, false);
                if s.iterations == b.iterations && s.eval.is_some() && b.eval.is_some() {
                    let runs = [
                        kdet::eval::compare::RunInput::resolve(&b.output_dir)?,
                        kdet::eval::compare::RunInput::resolve(&s.output_dir)?,
                    ];
                    let opts = kdet::eval::compare::CompareOptions::default();
                    for c in kdet::eval::compare::compare_runs(&runs, None, &opts)? {
                        println!("{}", c.to_markdown());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Eval {
            gt,
            dt,
            format,
            per_class,
            config,
            weights,
            network,
        } => {
            let s = match (config, weights) {
                (Some(c), Some(w)) => eval_model(&c, &w, network.as_deref(), &cli.device)?,
                _ => {
                    let gt = gt.context("give --gt and --dt, or --config and --weights")?;
                    let dt = dt.context("--dt is required")?;
                    kdet::engine::evaluator::Evaluation::Detection(kdet::eval::evaluate_files(
                        &gt, &dt,
                    )?)
                }
            };
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
        Cmd::Infer {
            config,
            weights,
            inputs,
            out,
            score_thr,
            top_k,
            network,
        } => {
            let cfg = load_config(&config, &cli.device)?;
            let (net, names, ids) = load_model(&cfg, &weights, network.as_deref())?;
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
        Cmd::Export {
            config,
            weights,
            out,
            format,
            backbone_only,
            dtype,
            network,
        } => {
            let cfg = load_config(&config, &cli.device)?;
            let (names, ids) = read_classes(&cfg, &weights)?;
            let model = model_section(&cfg, network.as_deref())?;
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
        Cmd::Synth {
            out,
            task,
            seed,
            train,
            val,
            size,
            classes,
            long_tail,
            unlabeled,
        } => {
            let spec = SynthSpec {
                task,
                seed,
                train,
                val,
                size,
                classes,
                long_tail,
                unlabeled,
                cache_dir: PathBuf::new(),
            };
            let cfg = kdet::config::from_str(
                "kdet synth",
                &serde_json::json!({"data": {"synthetic": {"task": task, "seed": seed, "train": train, "val": val,
                    "size": size, "classes": classes, "long_tail": long_tail, "unlabeled": unlabeled}}})
                .to_string(),
            );
            cfg.map_err(|e| {
                anyhow::anyhow!(e
                    .to_string()
                    .replace("kdet synth: data.synthetic.", "--")
                    .replace('_', "-"))
            })?;
            if task == kdet::data::synth::SynthTask::Classification {
                let p = kdet::data::synth::generate_classification(&spec, &out)?;
                let counts = kdet::data::synth::long_tail_counts(classes, train, long_tail, seed);
                eprintln!(
                    "wrote {} ({} images, {}–{} per class), {} ({} per class){}",
                    p.train.display(),
                    counts.iter().sum::<usize>(),
                    counts.iter().min().unwrap_or(&0),
                    counts.iter().max().unwrap_or(&0),
                    p.val.display(),
                    val / classes.max(1),
                    if unlabeled > 0 {
                        format!(" and {} ({unlabeled} unlabeled)", p.unlabeled.display())
                    } else {
                        String::new()
                    }
                );
                return Ok(ExitCode::SUCCESS);
            }
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
        Cmd::Plot { run } => {
            for p in kdet::engine::metrics::plot_run(&run)? {
                println!("{}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Class names and category ids of trained weights: from the sidecar beside them (written by
/// `kdet train` and `kdet export`), else from the config's training annotations.
fn read_classes(
    cfg: &LoadedConfig,
    weights: &std::path::Path,
) -> anyhow::Result<(Vec<String>, Vec<u64>)> {
    Ok(kdet::models::sidecar::read_classes(weights, || {
        cfg.train_classes()
    })?)
}

/// Trained weights as a model of the config's `model` section (or, with `network`, of the
/// section of that network of a multi-network method), with its class names / category ids.
fn load_model(
    cfg: &LoadedConfig,
    weights: &std::path::Path,
    network: Option<&str>,
) -> anyhow::Result<(kdet::models::build::Network, Vec<String>, Vec<u64>)> {
    let (names, ids) = read_classes(cfg, weights)?;
    let model = model_section(cfg, network)?;
    let net = kdet::models::build::Network::load(&model, names.len(), weights, &cfg.device()?)?;
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

/// `kdet eval --config --weights`: the model over the config's val split.
fn eval_model(
    config: &std::path::Path,
    weights: &std::path::Path,
    network: Option<&str>,
    device: &Option<String>,
) -> anyhow::Result<kdet::engine::evaluator::Evaluation> {
    let cfg = load_config(config, device)?;
    let (net, _, _) = load_model(&cfg, weights, network)?;
    let run = kdet::engine::method::RunData::load(&cfg)?;
    let val = run
        .val
        .as_ref()
        .context("the config has no val split to evaluate on")?;
    let (s, _) = kdet::engine::evaluator::evaluate(
        &*net.model,
        val,
        net.config.input(),
        cfg.config.solver.batch_size,
        &net.device,
        None,
        &run.train_counts(),
    )?;
    Ok(s)
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
