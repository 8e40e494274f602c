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
enum ClassList {
    /// torchvision's COCO categories: 91 indices (background, 80 classes, 10 `N/A` gaps),
    /// label = COCO category id, as torchvision's COCO-trained detectors predict.
    Coco,
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
        /// Image folder: also check that every image exists, decodes in full (in parallel) and
        /// has the stated size; each bad file is reported with its index in `images`.
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
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
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
        /// … and its weights (safetensors or PyTorch, local or `hf://owner/repo/file@rev`).
        #[arg(long, requires = "config")]
        weights: Option<PathBuf>,
        /// Class names when the weights have no sidecar and the config no training annotations
        /// (see `kdet infer --help`).
        #[arg(long, value_enum, requires = "config")]
        classes: Option<ClassList>,
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
        #[arg(long, default_value_t = 0.95, value_parser = finite_f64)]
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
        /// Model weights (safetensors or PyTorch, local or `hf://owner/repo/file@rev`).
        #[arg(long)]
        weights: PathBuf,
        /// Image files or folders. Drawings are named after the image (`x.png`); images whose
        /// names collide (`d1/x.png d2/x.png`) get their index too (`x-1.png`, `x-2.png`).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Draw and keep detections scoring at least this (in [0, 1]).
        #[arg(long, default_value_t = 0.5, value_parser = score_threshold)]
        score_thr: f32,
        /// Class names, when the weights have no sidecar (`<stem>.json` or `model.json`
        /// beside them): `coco` is torchvision's COCO list. Without this flag and without a
        /// sidecar, the names come from the config's training annotations; when those are
        /// not there either and the weights have torchvision's 91 COCO outputs, the COCO list
        /// is used (and said).
        #[arg(long, value_enum)]
        classes: Option<ClassList>,
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
        /// Trained weights or checkpoint (local or `hf://owner/repo/file@rev`).
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
        /// Class names when the weights have no sidecar (see `kdet infer --help`).
        #[arg(long, value_enum)]
        classes: Option<ClassList>,
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
        #[arg(long, default_value_t = 1.0, value_parser = finite_f64)]
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
    /// Speed benchmarks: `ops` (kdet's ops against candle's built-ins, in one process), `row
    /// NAME` (one row of docs/benchmarks.md: a training, distillation or inference step or a
    /// kernel, median and peak RSS), `list` (the rows). tools/bench.sh runs every row against
    /// PyTorch.
    Bench {
        /// `ops`, `row` or `list`.
        what: String,
        /// The row, for `row`.
        name: Option<String>,
        /// Timed repetitions (after warm-up).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Untimed warm-up repetitions (`row`).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// JSON written by tools/bench_ops_torch.py --json: adds PyTorch's times and ratios
        /// (`ops`).
        #[arg(long)]
        torch: Option<PathBuf>,
        /// Weights for the inference rows (the PyTorch side's, so both score the same boxes).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Print the row as JSON (`row`).
        #[arg(long)]
        json: bool,
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
            classes,
        } => {
            let s = match (config, weights) {
                (Some(c), Some(w)) => eval_model(&c, &w, network.as_deref(), classes, &cli.device)?,
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
            classes,
        } => {
            let cfg = load_config(&config, &cli.device)?;
            let weights = local_weights(&weights)?;
            let (net, names, ids) = load_model(&cfg, &weights, network.as_deref(), classes)?;
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
            classes,
        } => {
            let cfg = load_config(&config, &cli.device)?;
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
            Ok(if r.errors.is_empty() && r.bad_images.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Bench {
            what,
            name,
            runs,
            warmup,
            torch,
            weights,
            json,
        } => match what.as_str() {
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
                let r = kdet::bench::rows::run(&name, timing, weights.as_deref())?;
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
            other => bail!("unknown benchmark `{other}`; available: ops, row, list"),
        },
        Cmd::Plot { run } => {
            for p in kdet::engine::metrics::plot_run(&run)? {
                println!("{}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
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
    // candle runs its CPU elementwise ops on a thread pool of its own that spin-waits between
    // ops, beside the rayon pool that runs kdet's convolutions, BatchNorm, pooling and
    // RoIAlign: two busy pools contend for the cores (measured on 2 cores: ResNet-18 SGD step
    // 249 → 205 ms, docs/benchmarks.md). One candle thread unless the user sets it.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    kdet::util::tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // A run stopped by Ctrl-C / SIGTERM exits as the signal would have ended it, after
            // saying how to resume.
            if let Some(kdet::error::Error::Interrupted { signal, msg }) = e.downcast_ref() {
                eprintln!("{msg}");
                return ExitCode::from((128 + signal) as u8);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
