//! The training loop: data → the method's step (named losses) → backward → gradient clipping
//! → optimizer steps, with warmup and schedule, a progress bar, JSON-lines metrics, periodic and
//! final COCO evaluation, atomic checkpoints with exact `--resume`, and a stop on non-finite
//! losses that names the step and the term and keeps the last good checkpoint. What a step
//! computes is the [`Method`]'s business (`engine::method`); the loop names no model family,
//! teacher or loss term.
//!
//! Determinism: initial weights come from the config's seed; the data order and augmentation
//! from (seed, epoch, position); the step's sampling (anchors, RoIs) from (seed, iteration). So
//! a resumed run draws exactly what the uninterrupted one would have.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use serde_json::json;

use super::checkpoint::{self, frozen_strings};
use super::evaluator::{eval_json, evaluate, Evaluation, Predicted};
use super::method::{Method, RunData};
use super::metrics::{plot_run, MetricsLog};
use super::optim::{params_with_decay, Optimizer};
use super::resume::{self, run_strings};
use super::rundir;
use super::schedule::LrSchedule;
use crate::config::LoadedConfig;
use crate::data::loader::{DetectionDataset, Loader, Sampler};
use crate::error::{Error, Result};
use crate::models::contract::StepRng;
use crate::models::sidecar::Sidecar;
use crate::models::weights::{load_tensors, named_tensors, write_safetensors};

/// Builds the method a config asks for (`distill::build_method`), once the data is loaded.
pub type MethodBuilder = fn(&LoadedConfig, &RunData) -> Result<Box<dyn Method>>;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub output_dir: PathBuf,
    pub iterations: u64,
    /// Where this invocation started (`--resume`), 0 otherwise.
    pub start: u64,
    pub seconds: f64,
    pub eval: Option<Evaluation>,
    /// The method's reference models (teachers) and other networks on the full validation set,
    /// by label, when the run finished.
    pub references: Vec<(String, Evaluation)>,
    /// The name of the evaluated network when the method trains several (empty otherwise).
    pub evaluated: String,
}

/// How to run a training.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainOptions {
    /// Continue from `output_dir/checkpoint.safetensors`.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many iterations of this invocation; `--resume`
    /// continues. For time-limited jobs.
    pub stop_after: Option<u64>,
    /// Start from scratch even though `output_dir` holds a checkpoint (it is replaced).
    pub fresh: bool,
}

/// Every checkpointed variable of a method: its networks' (under their checkpoint names) and
/// its own, in one map so one report says what a checkpoint lacks or has too much of.
fn state_vars(method: &dyn Method) -> VarMap {
    let all = VarMap::new();
    {
        let mut data = all.data().lock().expect("varmap lock");
        for n in method.networks() {
            for (k, v) in n.net.vars.varmap.data().lock().expect("varmap lock").iter() {
                data.insert(n.state_name(k), v.clone());
            }
        }
        if let Some(own) = method.own_vars() {
            for (k, v) in own.data().lock().expect("varmap lock").iter() {
                data.insert(k.clone(), v.clone());
            }
        }
    }
    all
}

/// The networks' tensors under their checkpoint names.
fn network_tensors(method: &dyn Method) -> Vec<(String, Tensor)> {
    let mut v = vec![];
    for n in method.networks() {
        for (k, t) in named_tensors(&n.net.vars.varmap) {
            v.push((n.state_name(&k), t));
        }
    }
    v
}

/// The optimizers' state, merged (parameter names are unique across groups).
fn optim_state(opts: &[Optimizer]) -> (HashMap<String, Tensor>, u64) {
    let mut all = HashMap::new();
    let mut step = 0;
    for o in opts {
        let (st, s) = o.state();
        all.extend(st);
        step = step.max(s);
    }
    (all, step)
}

/// Train with the method `build` makes for the config.
pub fn train(cfg: &LoadedConfig, build: MethodBuilder, opts: TrainOptions) -> Result<TrainSummary> {
    let resume = opts.resume;
    let c = &cfg.config;
    let out = cfg.resolve("output_dir", &c.output_dir);
    if out.exists() && !out.is_dir() {
        return Err(cfg.error(
            "output_dir",
            format!("{} is a file, not a folder", out.display()),
        ));
    }
    let ckpt_path = out.join("checkpoint.safetensors");
    if !resume && !opts.fresh && ckpt_path.exists() {
        return Err(Error::msg(format!(
            "{} already holds a checkpoint: pass --resume to continue it or --fresh to start over (it will be replaced)",
            out.display()
        )));
    }
    let run = RunData::load(cfg)?;
    check_training_data(cfg, &run)?;
    let device = run.device.clone();
    // The method loads and checks its teachers before anything is written.
    let mut method = build(cfg, &run)?;
    let s = &c.solver;
    let settings = run_strings(c, run.train.fingerprint()?)?;
    let mut strings = frozen_strings(&method.frozen_inputs());
    strings.extend(settings.clone());
    let mut optimizers: Vec<Optimizer> = method
        .param_groups()
        .into_iter()
        .map(|g| Optimizer::new(params_with_decay(g, s), s))
        .collect();
    let eval_net = method.eval_network();
    let input = method.networks()[eval_net].net.config.input().clone();

    let train_records = run.train_records();
    let train_counts = run.train_counts();
    let loader = Loader {
        sampler: Sampler::new(c.data.sampler, &train_records, true),
        dataset: Arc::new(DetectionDataset {
            records: train_records,
            input: input.clone(),
            flip_prob: c.data.flip_prob,
            color_jitter: c.data.color_jitter,
        }),
        batch_size: s.batch_size,
        workers: c.data.workers,
        prefetch: c.data.prefetch,
        seed: c.seed,
        device: device.clone(),
    };
    let samples = loader.sampler.order(c.seed, 0).len();
    if s.batch_size > samples {
        return Err(cfg.error(
            "solver.batch_size",
            format!(
                "{} is more than the {samples} training images an epoch draws; at most {samples}",
                s.batch_size
            ),
        ));
    }
    let per_epoch = loader.batches_per_epoch().max(1) as u64;
    let (len, in_epochs) = s.length();
    let total = super::schedule::run_iterations(s, per_epoch).map_err(|e| cfg.invalid(e))?;
    let lr = LrSchedule::new(s, per_epoch, total);

    let mut start = 0u64;
    let mut changes = vec![];
    // The iteration of the last checkpoint on disk, if any: what a stop can fall back on.
    let mut saved: Option<u64> = None;
    if resume {
        let ck = checkpoint::load(&ckpt_path)?;
        // The settings first, so a changed optimizer or batch size is named as such rather
        // than as tensors or optimizer state that do not fit.
        changes = resume::check_settings(cfg, &ckpt_path, &ck.strings, &settings, &out)?;
        if ck.iter > total {
            let key = if in_epochs {
                "solver.epochs"
            } else {
                "solver.iterations"
            };
            let was = changes
                .iter()
                .find(|ch| ch.path == key)
                .map(|ch| format!(" (it was {})", ch.old))
                .unwrap_or_default();
            let (now, need) = if in_epochs {
                (
                    format!("{len} epochs = {total} iterations"),
                    ck.iter.div_ceil(per_epoch),
                )
            } else {
                (total.to_string(), ck.iter)
            };
            return Err(cfg.error(
                key,
                format!(
                    "is now {now}{was}, but {} is already at iteration {}: resuming would \
                     train nothing and write no model; set it to at least {need}, or start \
                     over with --fresh",
                    ckpt_path.display(),
                    ck.iter
                ),
            ));
        }
        let mut tensors = ck.model;
        tensors.extend(ck.aux);
        let r = load_tensors(&state_vars(&*method), &tensors)?;
        if !r.is_clean() {
            return Err(Error::msg(format!(
                "{}: checkpoint does not fit the config's model: {}",
                ckpt_path.display(),
                r.describe()
            )));
        }
        checkpoint::check_frozen_inputs(&ckpt_path, &ck.strings, &method.frozen_inputs())?;
        // Each optimizer takes its parameters' state; the last takes what is left, and refuses
        // entries for no parameter of its own.
        let mut state = ck.optim;
        let last = optimizers.len() - 1;
        for (i, o) in optimizers.iter_mut().enumerate() {
            let mine = if i == last {
                std::mem::take(&mut state)
            } else {
                let (mine, rest) = state.into_iter().partition(|(k, _)| o.owns_state_key(k));
                state = rest;
                mine
            };
            o.load_state(mine, ck.optim_step)
                .map_err(|e| Error::msg(format!("{}: {e}", ckpt_path.display())))?;
        }
        start = ck.iter;
        saved = Some(start);
        eprintln!("resuming from {} at iteration {start}", ckpt_path.display());
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let out = std::fs::canonicalize(&out).unwrap_or(out);
    let stale = rundir::remove_stale_temporaries(&out)?;
    if !stale.is_empty() {
        eprintln!(
            "removed {} temporary file(s) left by an interrupted write in {}",
            stale.len(),
            out.display()
        );
    }
    if !resume {
        // A run from iteration 0 (--fresh, or no checkpoint): the folder's earlier outputs
        // describe another run.
        let old = rundir::remove_outputs(&out)?;
        if !old.is_empty() {
            let names: Vec<String> = old
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            eprintln!(
                "removed the previous run's files from {}: {}",
                out.display(),
                names.join(", ")
            );
        }
    }
    let config_json = serde_json::to_value(c).expect("config serialises");
    // config.json is the config the run started with; later changes go to the history.
    if !resume || !out.join("config.json").exists() {
        crate::util::write_atomic(
            &out.join("config.json"),
            serde_json::to_string_pretty(&config_json)
                .expect("config serialises")
                .as_bytes(),
        )?;
    }
    Sidecar::write(
        &out.join("model.json"),
        &method.networks()[eval_net].net.config,
        &run.train.categories().names,
        &run.train.categories().ids,
    )?;
    let mut log = MetricsLog::open(&out, Some(start).filter(|_| resume))?;
    if !changes.is_empty() {
        let list: Vec<String> = changes
            .iter()
            .map(|ch| format!("{}: {} -> {}", ch.path, ch.old, ch.new))
            .collect();
        eprintln!(
            "resuming with changed settings (recorded in metrics.jsonl and config_history.jsonl): {}",
            list.join("; ")
        );
        log.write(
            &json!({"iter": start, "event": "resume", "changed": rundir::changes_json(&changes)}),
        )?;
        rundir::append_history(&out, start, &changes, &config_json)?;
    }

    let pb = progress(total, start);
    let t0 = Instant::now();
    let mut it = start;
    let end = opts.stop_after.map_or(total, |n| (start + n).min(total));
    let mut last_eval = None;
    // The record that says an evaluation at an iteration was logged.
    let val_key = match &run.val {
        Some(crate::data::Split::Classification(_)) => "val/top1",
        _ => "val/AP",
    };
    // Evaluate at iteration `it`: the record goes to the log unless it is there already (a
    // resumed run re-evaluates where the interrupted one may have stopped); the final one also
    // writes the predictions (detections.json or predictions.json) and eval.json.
    // A model on the val split, with the run's batch size, device and class frequencies.
    let evaluate_model = |model: &dyn crate::models::contract::Model,
                          v: &crate::data::Split,
                          input: &crate::data::transforms::InputConfig| {
        evaluate(model, v, input, s.batch_size, &device, None, &train_counts)
    };
    let evaluate_at =
        |method: &dyn Method, it: u64, log: &mut MetricsLog| -> Result<Option<Evaluation>> {
            let Some(v) = &run.val else {
                return Ok(None);
            };
            if crate::util::fault_point("eval") {
                crate::util::kill_self();
            }
            let net = &method.networks()[eval_net];
            let (summary, recs) = evaluate_model(&*net.net.model, v, &input)?;
            if !log.has(it, val_key) {
                let mut rec = json!({"iter": it});
                for (k, x) in summary.named() {
                    rec[format!("val/{k}")] = json!(x);
                }
                log.write(&rec)?;
            }
            let line = format!("iter {it}: val {}", summary.headline());
            // A hidden bar (no terminal) drops println: log lines go to stderr then.
            if pb.is_hidden() {
                eprintln!("{line}");
            } else {
                pb.println(line);
            }
            if it == total {
                write_eval(&out, v, &summary, &recs, it, &train_counts)?;
            }
            Ok(Some(summary))
        };
    let eval_due = |it: u64| (s.eval_every > 0 && it.is_multiple_of(s.eval_every)) || it == total;
    // A resumed run completes the evaluation due at its checkpoint when the interrupted run
    // did not log it (killed between checkpoint and evaluation); at the end of the run it is
    // always done, to report and rewrite the final results.
    if resume && start > 0 && eval_due(start) && (start == total || !log.has(start, val_key)) {
        last_eval = evaluate_at(&*method, start, &mut log)?;
    }
    // How long each step waited for its batch (the loader should never stall the step).
    let mut wait_t = Instant::now();
    while it < end {
        let epoch = it / per_epoch;
        for batch in loader.epoch_from(epoch, (it % per_epoch) as usize) {
            if it >= end {
                break;
            }
            let batch = batch?;
            let data_wait = wait_t.elapsed().as_secs_f64();
            let step_t = Instant::now();
            let mut rng =
                StepRng::seed_from_u64(c.seed ^ (it + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut step = method.step(&batch, &mut rng)?;
            if crate::util::fault_point("nan-loss") {
                // Test hook: a NaN loss, as a diverging run produces.
                if let Some(t) = step.losses.values_mut().next() {
                    *t = (&*t * f64::NAN)?;
                }
            }
            let (loss, terms) = sum_losses(&step.losses, it + 1, saved)?;
            drop(step.losses);
            let mut grads = loss.backward()?;
            if let Some(max) = s.grad_clip {
                clip_grad_norm(
                    &mut grads,
                    optimizers
                        .iter()
                        .flat_map(|o| o.params())
                        .map(|p| p.var.as_tensor()),
                    max,
                )?;
            }
            let lr_now = lr.lr(it);
            for o in &mut optimizers {
                o.step(&grads, lr_now)?;
            }
            it += 1;
            pb.set_position(it);
            let total_loss: f64 = terms.values().sum();
            pb.set_message(format!("loss {total_loss:.3} lr {lr_now:.2e}"));
            if it.is_multiple_of(s.log_every) || it == total {
                // `time` (the step), `data_wait` (waiting for its batch) and `rss_mb` (resident
                // memory now) are measurements, not results: they differ between equal runs.
                let mut rec = json!({"iter": it, "epoch": epoch, "lr": lr_now, "loss": total_loss,
                    "time": step_t.elapsed().as_secs_f64(), "data_wait": data_wait,
                    "rss_mb": crate::util::rss_mb()});
                for (k, v) in terms.iter().chain(&step.metrics) {
                    rec[k] = json!(v);
                }
                log.write(&rec)?;
                if pb.is_hidden() {
                    eprintln!("iter {it}/{total} loss {total_loss:.4} lr {lr_now:.3e}");
                }
            }
            if s.checkpoint_every > 0 && it.is_multiple_of(s.checkpoint_every) || it == end {
                // Never overwrite a good checkpoint with diverged weights.
                check_finite_params(&optimizers, it, saved)?;
                let (st, step) = optim_state(&optimizers);
                let aux = method.own_vars().map(named_tensors).unwrap_or_default();
                checkpoint::save(
                    &ckpt_path,
                    &checkpoint::State {
                        model: &network_tensors(&*method),
                        aux: &aux,
                        optim: &st,
                        optim_step: step,
                        iter: it,
                        strings: &strings,
                    },
                )?;
                saved = Some(it);
            }
            if eval_due(it) {
                if let Some(e) = evaluate_at(&*method, it, &mut log)? {
                    last_eval = Some(e);
                }
            }
            wait_t = Instant::now();
        }
    }
    pb.finish_and_clear();
    let mut references = vec![];
    if it == total {
        // The evaluated network is `model.safetensors`; a method with several networks also
        // writes each under its name, with its sidecar, so any of them can be evaluated,
        // inferred with or exported.
        let nets = method.networks();
        for (i, n) in nets.iter().enumerate() {
            let model: HashMap<String, Tensor> = n.net.named_tensors().into_iter().collect();
            if i == eval_net {
                write_safetensors(&model, &out.join("model.safetensors"))?;
            }
            if nets.len() > 1 {
                write_safetensors(&model, &out.join(format!("{}.safetensors", n.name)))?;
                Sidecar::write(
                    &out.join(format!("{}.json", n.name)),
                    &n.net.config,
                    &run.train.categories().names,
                    &run.train.categories().ids,
                )?;
            }
        }
        // A method's other networks on the validation set too (Co-LAD's network 1 when
        // network 2 is the evaluated one): `<name>_detections.json` and `<name>/val/*`.
        if let (true, Some(v)) = (nets.len() > 1, &run.val) {
            let mut rec = json!({"iter": it});
            let mut missing = false;
            for (i, n) in nets.iter().enumerate().filter(|(i, _)| *i != eval_net) {
                let (e, recs) = evaluate_model(&*n.net.model, v, &input)?;
                recs.write(&out.join(format!("{}_{}", n.name, recs.file_name())))?;
                missing |= !log.has(it, &format!("{}/{val_key}", n.name));
                for (k, x) in e.named() {
                    rec[format!("{}/val/{k}", n.name)] = json!(x);
                }
                references.push((format!("{} (network {})", n.name, i + 1), e));
            }
            // Logged once, however often a finished run is resumed.
            if missing {
                log.write(&rec)?;
            }
        }
        // The reference models on the same validation set, for the comparison the user came
        // for (logged once, however often a finished run is resumed).
        let refs = method.references();
        if let (false, Some(v)) = (refs.is_empty(), &run.val) {
            let mut rec = json!({"iter": it});
            let mut missing = false;
            for r in refs {
                let (e, _) = evaluate_model(r.model, v, r.input)?;
                missing |= !log.has(it, &format!("{}/{}", r.key, &val_key[4..]));
                for (k, x) in e.named() {
                    rec[format!("{}/{k}", r.key)] = json!(x);
                }
                references.push((r.label, e));
            }
            if missing {
                log.write(&rec)?;
            }
        }
    }
    let _ = plot_run(&out);
    Ok(TrainSummary {
        output_dir: out,
        iterations: it,
        start,
        seconds: t0.elapsed().as_secs_f64(),
        eval: last_eval,
        references,
        evaluated: method.networks()[eval_net].name.to_string(),
    })
}

/// Refuse detection training data that cannot train a detector: no boxes at all (after dropping
/// degenerate and out-of-image ones).
fn check_training_data(cfg: &LoadedConfig, run: &RunData) -> Result<()> {
    // Classification folders are checked as they load (no class, an empty class).
    let crate::data::Split::Detection(train) = &run.train else {
        return Ok(());
    };
    let boxes: usize = train.records.iter().map(|r| r.boxes.len()).sum();
    if boxes > 0 {
        return Ok(());
    }
    let gt = &train.gt;
    let key = if cfg.config.data.synthetic.is_some() {
        "data.synthetic"
    } else {
        "data.train.annotations"
    };
    Err(cfg.error(
        key,
        format!(
            "{} has no boxes to train on ({} images; {} degenerate and {} out-of-image boxes \
             dropped, crowd boxes are not trained on)",
            gt.file.display(),
            train.records.len(),
            gt.dropped_boxes,
            gt.outside_boxes
        ),
    ))
}

/// What a stop can say about the checkpoint on disk.
fn kept(saved: Option<u64>) -> String {
    match saved {
        Some(i) => format!("the last good checkpoint (iteration {i}) is kept"),
        None => "no checkpoint had been written yet".to_string(),
    }
}

fn progress(total: u64, start: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_position(start);
    pb
}

/// Sum the named losses; a non-finite term stops training with its name and step (and what is
/// on disk: `saved`, the last checkpoint's iteration).
fn sum_losses(
    losses: &BTreeMap<String, Tensor>,
    step: u64,
    saved: Option<u64>,
) -> Result<(Tensor, BTreeMap<String, f64>)> {
    let mut vals = BTreeMap::new();
    let mut total: Option<Tensor> = None;
    for (k, t) in losses {
        let v = t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !v.is_finite() {
            return Err(Error::msg(format!(
                "step {step}: loss term `{k}` is {v}; training stopped, {} (check the settings that scale `{k}`, such as its weight or temperature; if they are sane, lower solver.lr or set solver.grad_clip)",
                kept(saved)
            )));
        }
        vals.insert(k.clone(), v);
        total = Some(match total {
            None => t.clone(),
            Some(s) => (s + t)?,
        });
    }
    let total = total.ok_or_else(|| Error::msg("the model returned no losses"))?;
    Ok((total, vals))
}

/// Stop when an optimizer step made any parameter NaN or infinite (the loss was still finite).
fn check_finite_params(opts: &[Optimizer], step: u64, saved: Option<u64>) -> Result<()> {
    for p in opts.iter().flat_map(|o| o.params()) {
        let v = p
            .var
            .as_tensor()
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if !v.is_finite() {
            return Err(Error::msg(format!(
                "step {step}: parameter `{}` became non-finite; training stopped, {} (lower solver.lr or set solver.grad_clip)",
                p.name,
                kept(saved)
            )));
        }
    }
    Ok(())
}

/// PyTorch's `clip_grad_norm_`: scale all gradients by `max / (‖g‖₂ + 1e-6)` when that is < 1.
pub fn clip_grad_norm<'a>(
    grads: &mut GradStore,
    params: impl Iterator<Item = &'a Tensor>,
    max: f64,
) -> Result<f64> {
    let params: Vec<&Tensor> = params.collect();
    let mut sq = 0f64;
    for p in &params {
        if let Some(g) = grads.get(p) {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    let coef = max / (norm + 1e-6);
    if coef < 1.0 {
        for p in params {
            if let Some(g) = grads.get(p) {
                let scaled = (g * coef)?;
                grads.insert(p, scaled);
            }
        }
    }
    Ok(norm)
}

/// The final predictions (`detections.json` or `predictions.json`) and `eval.json`.
fn write_eval(
    out: &Path,
    split: &crate::data::Split,
    s: &Evaluation,
    preds: &Predicted,
    iter: u64,
    train_counts: &[usize],
) -> Result<()> {
    preds.write(&out.join(preds.file_name()))?;
    let v = eval_json(split, s, preds.file_name(), iter, train_counts);
    crate::util::write_atomic(
        &out.join("eval.json"),
        serde_json::to_string_pretty(&v).expect("json").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn clip_grad_norm_like_pytorch() {
        let a = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let b = Var::new(&[3f32], &Device::Cpu).unwrap();
        // loss = 3·a0 + 4·a1 + 12·b0 → grads (3, 4, 12), global norm 13.
        let loss = ((a.as_tensor() * Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            + (b.as_tensor() * 12.0).unwrap().sum_all().unwrap())
        .unwrap();
        let mut g = loss.backward().unwrap();
        let norm = clip_grad_norm(&mut g, [a.as_tensor(), b.as_tensor()].into_iter(), 6.5).unwrap();
        assert!((norm - 13.0).abs() < 1e-5);
        let ga = g.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            (ga[0] - 1.5).abs() < 1e-4 && (ga[1] - 2.0).abs() < 1e-4,
            "{ga:?}"
        );
        // Below the limit nothing changes.
        let norm =
            clip_grad_norm(&mut g, [a.as_tensor(), b.as_tensor()].into_iter(), 100.0).unwrap();
        assert!((norm - 6.5).abs() < 1e-3);
        assert!((g.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0] - 6.0).abs() < 1e-4);
    }

    #[test]
    fn non_finite_loss_names_step_and_term() {
        let l = BTreeMap::from([
            (
                "loss_a".to_string(),
                Tensor::new(1f32, &Device::Cpu).unwrap(),
            ),
            (
                "loss_b".to_string(),
                Tensor::new(f32::NAN, &Device::Cpu).unwrap(),
            ),
        ]);
        let e = sum_losses(&l, 7, Some(5)).unwrap_err().to_string();
        assert!(e.starts_with("step 7: loss term `loss_b` is NaN"), "{e}");
        assert!(
            e.contains("the last good checkpoint (iteration 5) is kept"),
            "{e}"
        );
        // Before the first checkpoint there is none to keep, and the message says so.
        let e = sum_losses(&l, 2, None).unwrap_err().to_string();
        assert!(
            e.contains("no checkpoint had been written yet") && !e.contains("is kept"),
            "{e}"
        );
    }
}
