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
use super::evaluator::{
    add_representation, eval_json, evaluate, write_representation, Evaluation, Predicted,
};
use super::method::{Method, RunData};
use super::metrics::{plot_run, MetricsLog};
use super::optim::{params_with_decay, Optimizer};
use super::resume::{self, run_strings};
use super::rundir;
use super::schedule::LrSchedule;
use crate::config::LoadedConfig;
use crate::data::loader::{DetectionDataset, Loader, Sampler};
use crate::error::{Error, Result};
use crate::eval::representation::RepresentationPredictions;
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
pub(crate) fn state_vars(method: &dyn Method) -> VarMap {
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
pub(crate) fn optim_state(opts: &[Optimizer]) -> (HashMap<String, Tensor>, u64) {
    let mut all = HashMap::new();
    let mut step = 0;
    for o in opts {
        let (st, s) = o.state();
        all.extend(st);
        step = step.max(s);
    }
    (all, step)
}

/// Train with the method `build` makes for the config: check the output folder, load the data
/// and the method (its teachers are checked before anything is written), plan the run, restore
/// a checkpoint on `--resume`, open the run folder, train the steps, then write the outputs.
pub fn train(cfg: &LoadedConfig, build: MethodBuilder, opts: TrainOptions) -> Result<TrainSummary> {
    let c = &cfg.config;
    let out = cfg.resolve("output_dir", &c.output_dir);
    check_output_dir(cfg, &out, opts)?;
    let run = RunData::load(cfg)?;
    check_training_data(cfg, &run)?;
    let mut method = build(cfg, &run)?;
    let settings = run_strings(c, run.train.fingerprint()?)?;
    let mut strings = frozen_strings(&method.frozen_inputs());
    strings.extend(settings.clone());
    let mut optimizers = optimizers(&*method, &c.solver);
    let plan = Plan::new(cfg, &run, &*method)?;
    let ckpt_path = out.join("checkpoint.safetensors");
    let (start, changes) = if opts.resume {
        restore(
            cfg,
            &ckpt_path,
            &plan,
            &mut *method,
            &mut optimizers,
            &settings,
            &out,
        )?
    } else {
        (0, vec![])
    };
    let (out, log) = open_run_folder(cfg, &out, &*method, &run, opts.resume, start, &changes)?;
    let mut session = Session {
        cfg,
        run: &run,
        plan: &plan,
        ckpt_path: out.join("checkpoint.safetensors"),
        out,
        strings,
        pb: progress(plan.total, start),
        log,
        saved: opts.resume.then_some(start),
        self_supervised: c.method.as_ref().is_some_and(|m| m.self_supervised()),
        val_key: match &run.val {
            // A self-supervised run's head is never trained: its representation is evaluated.
            Some(crate::data::Split::Classification(_))
                if c.method.as_ref().is_some_and(|m| m.self_supervised()) =>
            {
                "val/knn_top1"
            }
            Some(crate::data::Split::Classification(_)) => "val/top1",
            _ => "val/AP",
        },
    };
    let t0 = Instant::now();
    let end = opts
        .stop_after
        .map_or(plan.total, |n| (start + n).min(plan.total));
    let mut last_eval = None;
    // A resumed run completes the evaluation due at its checkpoint when the interrupted run
    // did not log it (killed between checkpoint and evaluation); at the end of the run it is
    // always done, to report and rewrite the final results.
    let logged = session.log.has(start, session.val_key);
    if opts.resume && start > 0 && session.eval_due(start) && (start == plan.total || !logged) {
        last_eval = session.evaluate_at(&*method, start)?;
    }
    // From here a Ctrl-C or SIGTERM finishes the step, checkpoints and stops (`interrupt`).
    let _signals = super::interrupt::Guard::new()?;
    let it = session.run_steps(&mut *method, &mut optimizers, start, end, &mut last_eval)?;
    session.pb.finish_and_clear();
    let references = if it == plan.total {
        session.finish(&*method, it)?
    } else {
        vec![]
    };
    let _ = plot_run(&session.out);
    Ok(TrainSummary {
        output_dir: session.out,
        iterations: it,
        start,
        seconds: t0.elapsed().as_secs_f64(),
        eval: last_eval,
        references,
        evaluated: method.networks()[plan.eval_net].name.to_string(),
    })
}

/// `output_dir` must be a folder (or not exist yet), and a checkpoint in it is only continued
/// (`--resume`) or replaced (`--fresh`) when asked to.
pub(crate) fn check_output_dir(cfg: &LoadedConfig, out: &Path, opts: TrainOptions) -> Result<()> {
    rundir::check_output_dir(cfg, out)?;
    if !opts.resume && !opts.fresh && out.join("checkpoint.safetensors").exists() {
        return Err(Error::msg(format!(
            "{} already holds a checkpoint: pass --resume to continue it or --fresh to start over (it will be replaced)",
            out.display()
        )));
    }
    Ok(())
}

/// What the loop needs about the run's data and length, fixed at its start.
struct Plan {
    loader: Loader,
    per_epoch: u64,
    total: u64,
    lr: LrSchedule,
    /// The evaluated network's input, and its index among the method's networks.
    input: crate::data::transforms::InputConfig,
    eval_net: usize,
    /// Training images per class (classification's frequency groups).
    train_counts: Vec<usize>,
}

impl Plan {
    fn new(cfg: &LoadedConfig, run: &RunData, method: &dyn Method) -> Result<Self> {
        let c = &cfg.config;
        let s = &c.solver;
        let eval_net = method.eval_network();
        let input = method.networks()[eval_net].net.config.input().clone();
        let train_records = run.train_records();
        let loader = Loader {
            sampler: Sampler::new(c.data.sampler, &train_records, true),
            dataset: Arc::new(DetectionDataset {
                records: train_records,
                input: input.clone(),
                flip_prob: c.data.flip_prob,
                color_jitter: c.data.color_jitter,
                views: method.two_views(),
            }),
            batch_size: s.batch_size,
            workers: c.data.workers,
            prefetch: c.data.prefetch,
            seed: c.seed,
            device: run.device.clone(),
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
        let total = super::schedule::run_iterations(s, per_epoch).map_err(|e| cfg.invalid(e))?;
        Ok(Self {
            lr: LrSchedule::new(s, per_epoch, total),
            loader,
            per_epoch,
            total,
            input,
            eval_net,
            train_counts: run.train_counts(),
        })
    }
}

/// `--resume`: the checkpoint's settings checked against the config's, its tensors loaded into
/// the method's networks and variables, its optimizer state into each optimizer. Returns the
/// iteration to continue from and the accepted changes of settings.
fn restore(
    cfg: &LoadedConfig,
    ckpt_path: &Path,
    plan: &Plan,
    method: &mut dyn Method,
    optimizers: &mut [Optimizer],
    settings: &BTreeMap<String, String>,
    out: &Path,
) -> Result<(u64, Vec<rundir::Change>)> {
    let ck = checkpoint::load(ckpt_path)?;
    // The settings first, so a changed optimizer or batch size is named as such rather than as
    // tensors or optimizer state that do not fit.
    let changes = resume::check_settings(cfg, ckpt_path, &ck.strings, settings, out)?;
    if ck.iter > plan.total {
        return Err(too_short(cfg, ckpt_path, ck.iter, plan, &changes));
    }
    checkpoint::check_frozen_inputs(ckpt_path, &ck.strings, &method.frozen_inputs())?;
    let iter = ck.iter;
    load_checkpoint(ckpt_path, ck, &*method, optimizers)?;
    eprintln!(
        "resuming from {} at iteration {}",
        ckpt_path.display(),
        iter
    );
    Ok((iter, changes))
}

/// A checkpoint's tensors into `method`'s networks and own variables (refused unless they fit
/// exactly), its optimizer state into each optimizer: the loop's `--resume` and `kdet online`'s.
pub(crate) fn load_checkpoint(
    ckpt_path: &Path,
    ck: checkpoint::Checkpoint,
    method: &dyn Method,
    optimizers: &mut [Optimizer],
) -> Result<()> {
    let mut tensors = ck.model;
    tensors.extend(ck.aux);
    let r = load_tensors(&state_vars(method), &tensors)?;
    if !r.is_clean() {
        return Err(Error::msg(format!(
            "{}: checkpoint does not fit the config's model: {}",
            ckpt_path.display(),
            r.describe()
        )));
    }
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
    Ok(())
}

/// The refusal of a run length below the checkpoint's iteration.
fn too_short(
    cfg: &LoadedConfig,
    ckpt_path: &Path,
    at: u64,
    plan: &Plan,
    changes: &[rundir::Change],
) -> Error {
    let (len, in_epochs) = cfg.config.solver.length();
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
            format!("{len} epochs = {} iterations", plan.total),
            at.div_ceil(plan.per_epoch),
        )
    } else {
        (plan.total.to_string(), at)
    };
    cfg.error(
        key,
        format!(
            "is now {now}{was}, but {} is already at iteration {at}: resuming would train \
             nothing and write no model; set it to at least {need}, or start over with --fresh",
            ckpt_path.display()
        ),
    )
}

/// Create the run folder and ready it: temporaries of killed writes removed, a run from
/// iteration 0 clears the earlier run's outputs, `config.json` (the config the run started
/// with), the evaluated network's sidecar, the metrics log (with the accepted changes of a
/// resume). Returns the folder's canonical path and the log.
pub(crate) fn open_run_folder(
    cfg: &LoadedConfig,
    out: &Path,
    method: &dyn Method,
    run: &RunData,
    resume: bool,
    start: u64,
    changes: &[rundir::Change],
) -> Result<(PathBuf, MetricsLog)> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let out = std::fs::canonicalize(out).unwrap_or(out.to_path_buf());
    let stale = rundir::remove_stale_temporaries(&out)?;
    if !stale.is_empty() {
        eprintln!(
            "removed {} temporary file(s) left by an interrupted write in {}",
            stale.len(),
            out.display()
        );
    }
    // Before anything else is written: the manifest, and (a run from iteration 0: --fresh, or
    // no checkpoint) the earlier run's files removed, for they describe another run.
    let names: Vec<&str> = method.networks().iter().map(|n| n.name).collect();
    let old = rundir::claim(cfg, &out, &rundir::run_files(&names), resume)?;
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
    let config_json = serde_json::to_value(&cfg.config).expect("config serialises");
    // config.json is the config the run started with; later changes go to the history.
    if !resume || !out.join("config.json").exists() {
        crate::util::write_atomic(
            &out.join("config.json"),
            serde_json::to_string_pretty(&config_json)
                .expect("config serialises")
                .as_bytes(),
        )?;
    }
    write_labeled_subset(cfg, &out, run)?;
    let eval_net = &method.networks()[method.eval_network()];
    let cats = run.train.categories();
    Sidecar::write(
        &out.join("model.json"),
        &eval_net.net.config,
        &cats.names,
        &cats.ids,
    )?;
    let mut log = MetricsLog::open(&out, Some(start).filter(|_| resume))?;
    record_changes(&out, &mut log, start, changes, &config_json)?;
    Ok((out, log))
}

/// The settings a resume at iteration `at` changed: said on stderr, logged as a `resume` event
/// and appended to `config_history.jsonl` with the config from now on (`config_json`).
pub(crate) fn record_changes(
    out: &Path,
    log: &mut MetricsLog,
    at: u64,
    changes: &[rundir::Change],
    config_json: &serde_json::Value,
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = changes
        .iter()
        .map(|ch| format!("{}: {} -> {}", ch.path, ch.old, ch.new))
        .collect();
    eprintln!(
        "resuming with changed settings (recorded in metrics.jsonl and config_history.jsonl): {}",
        list.join("; ")
    );
    log.write(&json!({"iter": at, "event": "resume", "changed": rundir::changes_json(changes)}))?;
    rundir::append_history(out, at, changes, config_json)
}

/// `labeled_subset.json` of a run on a share of the labels (`data.label_fraction`): the
/// fraction, the seed and the training images kept (paths under the split's root), so that the
/// subset can be seen and reproduced.
fn write_labeled_subset(cfg: &LoadedConfig, out: &Path, run: &RunData) -> Result<()> {
    let (Some(f), crate::data::Split::Classification(train)) =
        (cfg.config.data.label_fraction, &run.train)
    else {
        return Ok(());
    };
    let v = json!({
        "label_fraction": f,
        "label_seed": cfg.config.data.label_seed,
        "root": train.root,
        "class_counts": train.class_counts(),
        "images": train.file_names(),
    });
    crate::util::write_atomic(
        &out.join(rundir::LABELED_SUBSET),
        serde_json::to_string_pretty(&v).expect("json").as_bytes(),
    )
}

/// A run in progress: where it writes, what it has written, and how it reports.
struct Session<'a> {
    cfg: &'a LoadedConfig,
    run: &'a RunData,
    plan: &'a Plan,
    out: PathBuf,
    ckpt_path: PathBuf,
    /// The checkpoint's strings: the run's settings and frozen inputs.
    strings: BTreeMap<String, String>,
    pb: ProgressBar,
    log: MetricsLog,
    /// The iteration of the last checkpoint on disk, if any: what a stop can fall back on.
    saved: Option<u64>,
    /// The record that says an evaluation at an iteration was logged.
    val_key: &'static str,
    /// The method learns without labels: every evaluation measures the representation (k-NN
    /// and linear probe), and the untrained head's top-1 is not reported.
    self_supervised: bool,
}

impl Session<'_> {
    fn eval_due(&self, it: u64) -> bool {
        let every = self.cfg.config.solver.eval_every;
        (every > 0 && it.is_multiple_of(every)) || it == self.plan.total
    }

    /// A model on the val split, with the run's batch size, device and class frequencies; a
    /// classifier's representation too (k-NN, linear probe) when `representation` is set or the
    /// run is self-supervised.
    fn evaluate_model(
        &self,
        model: &dyn crate::models::contract::Model,
        val: &crate::data::Split,
        input: &crate::data::transforms::InputConfig,
        representation: bool,
    ) -> Result<(Evaluation, Predicted, Option<RepresentationPredictions>)> {
        let bs = self.cfg.config.solver.batch_size;
        let (mut e, preds) = evaluate(
            model,
            val,
            input,
            bs,
            &self.run.device,
            None,
            &self.plan.train_counts,
        )?;
        let mut rep = None;
        if representation || self.self_supervised {
            rep = add_representation(&mut e, model, self.run, input)?;
        }
        if let Evaluation::Classification(s) = &mut e {
            s.self_supervised = self.self_supervised;
        }
        Ok((e, preds, rep))
    }

    /// Evaluate at iteration `it`: the record goes to the log unless it is there already (a
    /// resumed run re-evaluates where the interrupted one may have stopped); the final one also
    /// writes the predictions (detections.json or predictions.json) and eval.json.
    fn evaluate_at(&mut self, method: &dyn Method, it: u64) -> Result<Option<Evaluation>> {
        let Some(v) = &self.run.val else {
            return Ok(None);
        };
        if crate::util::fault_point("eval") {
            crate::util::kill_self();
        }
        let net = &method.networks()[self.plan.eval_net];
        let last = it == self.plan.total;
        let (summary, recs, rep) =
            self.evaluate_model(&*net.net.model, v, &self.plan.input, last)?;
        if !self.log.has(it, self.val_key) {
            let mut rec = json!({"iter": it});
            for (k, x) in summary.named() {
                rec[format!("val/{k}")] = json!(x);
            }
            self.log.write(&rec)?;
        }
        self.say(format!("iter {it}: val {}", summary.headline()));
        if last {
            if let Some(r) = &rep {
                write_representation(&self.out, r)?;
            }
            write_eval(&self.out, v, &summary, &recs, it, &self.plan.train_counts)?;
        }
        Ok(Some(summary))
    }

    /// A line beside the progress bar (a hidden bar, without a terminal, drops println: log
    /// lines go to stderr then).
    fn say(&self, line: String) {
        if self.pb.is_hidden() {
            eprintln!("{line}");
        } else {
            self.pb.println(line);
        }
    }

    /// The steps from `start` to `end`, with checkpoints and evaluations when due; a signal
    /// stops after its step's checkpoint. Returns the iteration reached.
    fn run_steps(
        &mut self,
        method: &mut dyn Method,
        optimizers: &mut [Optimizer],
        start: u64,
        end: u64,
        last_eval: &mut Option<Evaluation>,
    ) -> Result<u64> {
        let plan = self.plan;
        let mut it = start;
        let mut last_checkpoint = Instant::now();
        // How long each step waited for its batch (the loader should never stall the step).
        let mut wait_t = Instant::now();
        while it < end {
            let epoch = it / plan.per_epoch;
            for batch in plan
                .loader
                .epoch_from(epoch, (it % plan.per_epoch) as usize)
            {
                if it >= end {
                    break;
                }
                let batch = batch?;
                let data_wait = wait_t.elapsed().as_secs_f64();
                self.step(method, optimizers, &batch, it, epoch, data_wait)?;
                it += 1;
                super::interrupt::fault_hooks();
                let stop = super::interrupt::requested();
                let minutes = self.cfg.config.solver.checkpoint_minutes;
                let every = self.cfg.config.solver.checkpoint_every;
                let timely =
                    minutes > 0.0 && last_checkpoint.elapsed().as_secs_f64() >= 60.0 * minutes;
                if (every > 0 && it.is_multiple_of(every)) || timely || it == end || stop.is_some()
                {
                    self.checkpoint(method, optimizers, it)?;
                    last_checkpoint = Instant::now();
                }
                if let Some(sig) = stop {
                    self.pb.finish_and_clear();
                    return Err(interrupted(self.cfg, sig, it, plan.total));
                }
                if self.eval_due(it) {
                    if let Some(e) = self.evaluate_at(method, it)? {
                        *last_eval = Some(e);
                    }
                }
                wait_t = Instant::now();
            }
        }
        Ok(it)
    }

    /// One step at iteration `it`: [`update`], the progress bar and the step's record.
    fn step(
        &mut self,
        method: &mut dyn Method,
        optimizers: &mut [Optimizer],
        batch: &crate::data::loader::Batch,
        it: u64,
        epoch: u64,
        data_wait: f64,
    ) -> Result<()> {
        let s = &self.cfg.config.solver;
        let step_t = Instant::now();
        let lr_now = self.plan.lr.lr(it);
        let at = StepAt {
            seed: self.cfg.config.seed,
            it,
            lr: lr_now,
            grad_clip: s.grad_clip,
            saved: self.saved,
        };
        // Methods whose weights ramp over epochs (FFSD's λ warm-up) read it here.
        method.set_epoch(epoch);
        let step = update(method, optimizers, batch, &at)?;
        let done = it + 1;
        self.pb.set_position(done);
        let total_loss: f64 = step.terms.values().sum();
        self.pb
            .set_message(format!("loss {total_loss:.3} lr {lr_now:.2e}"));
        if done.is_multiple_of(s.log_every) || done == self.plan.total {
            // `time` (the step), `data_wait` (waiting for its batch) and `rss_mb` (resident
            // memory now) are measurements, not results: they differ between equal runs.
            let mut rec = json!({"iter": done, "epoch": epoch, "lr": lr_now, "loss": total_loss,
                "time": step_t.elapsed().as_secs_f64(), "data_wait": data_wait,
                "rss_mb": crate::util::rss_mb()});
            for (k, v) in step.terms.iter().chain(&step.metrics) {
                rec[k] = json!(v);
            }
            self.log.write(&rec)?;
            if self.pb.is_hidden() {
                let total = self.plan.total;
                eprintln!("iter {done}/{total} loss {total_loss:.4} lr {lr_now:.3e}");
            }
        }
        Ok(())
    }

    /// An atomic checkpoint at `it` ([`save_checkpoint`]).
    fn checkpoint(&mut self, method: &dyn Method, optimizers: &[Optimizer], it: u64) -> Result<()> {
        save_checkpoint(
            &self.ckpt_path,
            method,
            optimizers,
            it,
            &self.strings,
            self.saved,
        )?;
        self.saved = Some(it);
        Ok(())
    }

    /// The finished run's outputs: `model.safetensors` (the evaluated network; a method with
    /// several also writes each under its name, with its sidecar, so any can be evaluated,
    /// inferred with or exported), the other networks' and the reference models' evaluations.
    /// A signal between these stops before the rest: `--resume` completes them.
    fn finish(&mut self, method: &dyn Method, it: u64) -> Result<Vec<(String, Evaluation)>> {
        self.check_signal(it)?;
        let nets = method.networks();
        let cats = self.run.train.categories();
        for (i, n) in nets.iter().enumerate() {
            let model: HashMap<String, Tensor> = n.net.named_tensors().into_iter().collect();
            if i == self.plan.eval_net {
                write_safetensors(&model, &self.out.join("model.safetensors"))?;
            }
            if nets.len() > 1 {
                write_safetensors(&model, &self.out.join(format!("{}.safetensors", n.name)))?;
                let side = self.out.join(format!("{}.json", n.name));
                Sidecar::write(&side, &n.net.config, &cats.names, &cats.ids)?;
            }
        }
        let Some(v) = &self.run.val else {
            return Ok(vec![]);
        };
        let mut references = self.other_networks(method, v, it)?;
        self.check_signal(it)?;
        references.extend(self.reference_models(method, v, it)?);
        Ok(references)
    }

    /// A method's other networks on the validation set (Co-LAD's network 1 when network 2 is
    /// the evaluated one): `<name>_detections.json`, `<name>/val/*` logged once, however often a
    /// finished run is resumed.
    fn other_networks(
        &mut self,
        method: &dyn Method,
        v: &crate::data::Split,
        it: u64,
    ) -> Result<Vec<(String, Evaluation)>> {
        let nets = method.networks();
        let mut references = vec![];
        if nets.len() < 2 {
            return Ok(references);
        }
        let mut rec = json!({"iter": it});
        let mut missing = false;
        for (i, n) in nets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.plan.eval_net)
        {
            let (e, recs, _) = self.evaluate_model(&*n.net.model, v, &self.plan.input, true)?;
            recs.write(&self.out.join(format!("{}_{}", n.name, recs.file_name())))?;
            missing |= !self.log.has(it, &format!("{}/{}", n.name, self.val_key));
            for (k, x) in e.named() {
                rec[format!("{}/val/{k}", n.name)] = json!(x);
            }
            references.push((format!("{} (network {})", n.name, i + 1), e));
        }
        if missing {
            self.log.write(&rec)?;
        }
        Ok(references)
    }

    /// The reference models (teachers) on the same validation set, for the comparison the user
    /// came for, logged once however often a finished run is resumed.
    fn reference_models(
        &mut self,
        method: &dyn Method,
        v: &crate::data::Split,
        it: u64,
    ) -> Result<Vec<(String, Evaluation)>> {
        let refs = method.references();
        let mut references = vec![];
        let mut rec = json!({"iter": it});
        let mut missing = false;
        for r in refs {
            let (e, _, _) = self.evaluate_model(r.model, v, r.input, false)?;
            missing |= !self
                .log
                .has(it, &format!("{}/{}", r.key, &self.val_key[4..]));
            for (k, x) in e.named() {
                rec[format!("{}/{k}", r.key)] = json!(x);
            }
            references.push((r.label, e));
        }
        if missing {
            self.log.write(&rec)?;
        }
        Ok(references)
    }

    fn check_signal(&self, it: u64) -> Result<()> {
        match super::interrupt::requested() {
            Some(sig) => Err(interrupted(self.cfg, sig, it, self.plan.total)),
            None => Ok(()),
        }
    }
}

/// Where an optimizer update stands: the run's seed and the iteration `it` (which seed the
/// step's RNG), the learning rate, gradient clipping, and the last checkpoint on disk (what a
/// stop can fall back on).
#[derive(Debug, Clone, Copy)]
pub struct StepAt {
    pub seed: u64,
    pub it: u64,
    pub lr: f64,
    pub grad_clip: Option<f64>,
    pub saved: Option<u64>,
}

/// What one update logged: the loss terms' values and the method's other numbers.
pub struct Updated {
    pub terms: BTreeMap<String, f64>,
    pub metrics: BTreeMap<String, f64>,
}

/// One optimizer per parameter group of `method`, with the solver's settings.
pub fn optimizers(method: &dyn Method, s: &crate::config::solver::SolverConfig) -> Vec<Optimizer> {
    method
        .param_groups()
        .into_iter()
        .map(|g| Optimizer::new(params_with_decay(g, s), s))
        .collect()
}

/// One optimizer update — the loop's step, and each of `kdet online`'s updates on a key frame:
/// the method's losses on `batch` (its RNG seeded from the seed and iteration, so a resumed run
/// draws what the uninterrupted one would), summed (a non-finite one stops the run), backward,
/// clipping, each optimizer's step.
pub fn update(
    method: &mut dyn Method,
    optimizers: &mut [Optimizer],
    batch: &crate::data::loader::Batch,
    at: &StepAt,
) -> Result<Updated> {
    let mut rng = StepRng::seed_from_u64(at.seed ^ (at.it + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    optimize(
        method,
        optimizers,
        batch,
        &mut rng,
        at.lr,
        at.grad_clip,
        (at.it + 1, at.saved),
    )
}

/// An atomic checkpoint at iteration `it` of `method`'s networks, its own variables, the
/// optimizers' state and the run's `strings` (settings, frozen inputs) — never of diverged
/// weights (`saved`: the last good checkpoint, for the message).
pub fn save_checkpoint(
    path: &Path,
    method: &dyn Method,
    optimizers: &[Optimizer],
    it: u64,
    strings: &BTreeMap<String, String>,
    saved: Option<u64>,
) -> Result<()> {
    check_finite_params(optimizers, it, saved)?;
    let (st, step) = optim_state(optimizers);
    let aux = method.own_vars().map(named_tensors).unwrap_or_default();
    checkpoint::save(
        path,
        &checkpoint::State {
            model: &network_tensors(method),
            aux: &aux,
            optim: &st,
            optim_step: step,
            iter: it,
            strings,
        },
    )
}

/// Refuse detection training data that cannot train a detector: no boxes at all (after dropping
/// degenerate and out-of-image ones).
pub(crate) fn check_training_data(cfg: &LoadedConfig, run: &RunData) -> Result<()> {
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

/// The stop a signal asked for, after the checkpoint at `it` was written.
pub(crate) fn interrupted(cfg: &LoadedConfig, sig: i32, it: u64, total: u64) -> Error {
    Error::Interrupted {
        signal: sig,
        msg: format!(
            "interrupted by {} at iteration {it} of {total}; the checkpoint is written: resume \
             with `kdet train {} --resume`",
            super::interrupt::signal_name(sig),
            cfg.path.display()
        ),
    }
}

/// What a stop can say about the checkpoint on disk.
fn kept(saved: Option<u64>) -> String {
    match saved {
        Some(i) => format!("the last good checkpoint (iteration {i}) is kept"),
        None => "no checkpoint had been written yet".to_string(),
    }
}

pub(crate) fn progress(total: u64, start: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_position(start);
    pb
}

/// One optimisation step of `method` on `batch` at learning rate `lr`: its losses, summed (a
/// non-finite one stops the run, naming `at.0`, the step, and what is on disk, `at.1`),
/// backward, clipping to `grad_clip`, every optimizer's step. The loop's step and a federated
/// client's local steps (`federated::client`) both go through here.
pub(crate) fn optimize(
    method: &mut dyn Method,
    optimizers: &mut [Optimizer],
    batch: &crate::data::loader::Batch,
    rng: &mut StepRng,
    lr: f64,
    grad_clip: Option<f64>,
    at: (u64, Option<u64>),
) -> Result<Updated> {
    let mut step = method.step(batch, rng)?;
    if crate::util::fault_point("nan-loss") {
        // Test hook: a NaN loss, as a diverging run produces.
        if let Some(t) = step.losses.values_mut().next() {
            *t = (&*t * f64::NAN)?;
        }
    }
    let (loss, terms) = sum_losses(&step.losses, at.0, at.1)?;
    drop(step.losses);
    let mut grads = loss.backward()?;
    if let Some(max) = grad_clip {
        let params = optimizers.iter().flat_map(|o| o.params());
        clip_grad_norm(&mut grads, params.map(|p| p.var.as_tensor()), max)?;
    }
    for o in optimizers.iter_mut() {
        o.step(&grads, lr)?;
    }
    Ok(Updated {
        terms,
        metrics: step.metrics,
    })
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
pub(crate) fn check_finite_params(opts: &[Optimizer], step: u64, saved: Option<u64>) -> Result<()> {
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
pub(crate) fn write_eval(
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
