//! Federated training simulated in one process (`federated` section of a config, run by `kdet
//! train`): the training split divided among M clients ([`partition`], written to the run as
//! `partition.json`), then R rounds of: sample `max(⌊M·fraction⌋, 1)` clients, each trains E
//! local epochs from the round's global weights with the config's method (FedAvg: the model's
//! own loss; FedNTD, FedX: `src/distill/fedntd.rs`, `fedx.rs`), and the server replaces the
//! global weights by their average weighted by the clients' image counts (FedAvg, McMahan et
//! al. 2017; FedNTD's `BaseServer._aggregation`; Flower's `aggregate`). Clients train one after
//! another through the loop's step ([`client`]), so memory holds one client.
//!
//! The run folder is a training run's (`engine::rundir`, the manifest, `config.json`,
//! `metrics.jsonl`, `model.safetensors` = the global model, `eval.json` + predictions of the
//! last round): `kdet eval`, `compare`, `export` and `--seeds` take it as any run. `iter` in
//! its records and checkpoint is the round. A checkpoint is written at the start, after every
//! client (the global weights, the running sum and the round's records so far) and after every
//! round; `--resume` continues from it exactly, in the middle of a round too (a client
//! interrupted during its local epochs is trained again from the same global weights with the
//! same seeds: the same result). Ctrl-C stops after the step in progress. `--stop-after N`
//! stops after N rounds.

pub mod client;
pub mod config;
pub mod external;
pub mod partition;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::config::distill::MethodConfig;
use crate::config::LoadedConfig;
use crate::data::coco::ImageRecord;
use crate::data::Split;
use crate::engine::checkpoint;
use crate::engine::evaluator::{add_representation, evaluate, Evaluation};
use crate::engine::method::{Method, RunData};
use crate::engine::metrics::{plot_run, MetricsLog};
use crate::engine::resume::{self, run_strings};
use crate::engine::trainer::{MethodBuilder, TrainOptions, TrainSummary};
use crate::error::{Error, Result};
use crate::models::weights::write_safetensors;
use client::{load_global, seed_of, snapshot, ClientJob, Sum, Weights};
use config::{FederatedConfig, Partition};

/// Checkpoint strings of the round in progress.
const DONE_KEY: &str = "fed.clients_done";
const RECORDS_KEY: &str = "fed.round_records";
/// Checkpoint prefix (under `aux.`) of the running weighted sum.
const SUM_PREFIX: &str = "fedsum.";

/// The clients sampled in round `round` (0-based): `per_round` of `clients` without
/// replacement, in draw order, from (run seed, round) — FedNTD's `_client_sampling` seeds by
/// round so that methods compared under one seed see the same clients.
pub fn sample_clients(seed: u64, round: u64, clients: usize, per_round: usize) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed_of(&[seed, round, u64::MAX]));
    let mut all: Vec<usize> = (0..clients).collect();
    all.shuffle(&mut rng);
    all.truncate(per_round);
    all
}

/// The clients of a run: the settings, and each client's images.
pub struct Clients {
    pub records: Vec<Vec<ImageRecord>>,
    /// Images per class of each client (classification data).
    pub histogram: Vec<Vec<usize>>,
}

/// Divide the run's training split among the clients (errors located at `federated.*`).
pub fn make_clients(cfg: &LoadedConfig, run: &RunData) -> Result<Clients> {
    let f = fed(cfg);
    let records = run.train.records();
    let (labels, classes) = match &run.train {
        Split::Classification(c) => (
            records
                .iter()
                .map(|r| r.labels.first().map_or(0, |l| *l as usize - 1))
                .collect::<Vec<_>>(),
            c.categories.len(),
        ),
        Split::Detection(_) => {
            if f.partition != Partition::Iid {
                return Err(cfg.error(
                    "federated.partition.type",
                    "dirichlet and shards divide images by their class, and a detection image \
                     has several: use `iid` for detection data",
                ));
            }
            (vec![0; records.len()], 1)
        }
    };
    let parts = partition::partition(&labels, classes, f.clients, &f.partition, f.partition_seed)
        .map_err(|e| cfg.invalid(e))?;
    Ok(Clients {
        histogram: partition::histogram(&parts, &labels, classes),
        records: parts
            .iter()
            .map(|p| p.iter().map(|&i| records[i].clone()).collect())
            .collect(),
    })
}

pub(crate) fn fed(cfg: &LoadedConfig) -> &FederatedConfig {
    cfg.config
        .federated
        .as_ref()
        .expect("a federated run has a `federated` section")
}

/// `partition.json`: the settings and each client's image ids and class histogram, so the
/// split can be inspected and given to other tools (the Flower app reads it).
fn partition_json(cfg: &LoadedConfig, run: &RunData, c: &Clients) -> Value {
    let f = fed(cfg);
    json!({
        "partition": f.partition,
        "partition_seed": f.partition_seed,
        "clients": f.clients,
        "per_round": f.per_round(),
        "classes": run.train.categories().names,
        "client_images": c.records.iter().zip(&c.histogram).enumerate().map(|(k, (r, h))| json!({
            "client": k, "images": r.len(), "class_counts": h,
            "image_ids": r.iter().map(|x| x.id).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Refuse a method that is no client method, and a model of several networks.
pub(crate) fn check_method(cfg: &LoadedConfig, method: &dyn Method) -> Result<()> {
    if method.networks().len() != 1 {
        return Err(cfg.error(
            "method",
            "a federated client trains one network (the global model's architecture)",
        ));
    }
    Ok(())
}

/// Where a round stands: the global weights, and the clients already done in it.
struct RoundState {
    round: u64,
    global: Weights,
    sum: Sum,
    done: usize,
    /// Records of the clients done in the round (rewritten to the log on resume).
    records: Vec<Value>,
}

/// The federated run of `cfg` (see the module doc). `build` makes the client's method.
pub fn train(cfg: &LoadedConfig, build: MethodBuilder, opts: TrainOptions) -> Result<TrainSummary> {
    let c = &cfg.config;
    let f = fed(cfg);
    let out = cfg.resolve("output_dir", &c.output_dir);
    crate::engine::trainer::check_output_dir(cfg, &out, opts)?;
    let run = RunData::load(cfg)?;
    crate::engine::trainer::check_training_data(cfg, &run)?;
    let clients = make_clients(cfg, &run)?;
    let mut method = build(cfg, &run)?;
    check_method(cfg, &*method)?;
    let mut strings = checkpoint::frozen_strings(&method.frozen_inputs());
    let settings = run_strings(c, run.train.fingerprint()?)?;
    strings.extend(settings.clone());
    let ckpt_path = out.join("checkpoint.safetensors");
    let (mut state, changes) = if opts.resume {
        restore(cfg, &ckpt_path, &*method, &settings, &out)?
    } else {
        let global = snapshot(&*method)?;
        let state = RoundState {
            round: 0,
            global,
            sum: Sum::default(),
            done: 0,
            records: vec![],
        };
        (state, vec![])
    };
    let start = state.round;
    let (out, mut log) = crate::engine::trainer::open_run_folder(
        cfg,
        &out,
        &*method,
        &run,
        opts.resume,
        start,
        &changes,
    )?;
    crate::util::write_atomic(
        &out.join("partition.json"),
        serde_json::to_string_pretty(&partition_json(cfg, &run, &clients))
            .expect("json")
            .as_bytes(),
    )?;
    for r in &state.records {
        log.write(r)?;
    }
    let mut s = Server {
        cfg,
        run: &run,
        clients: &clients,
        ckpt: out.join("checkpoint.safetensors"),
        strings,
        log,
        pb: crate::engine::trainer::progress(f.rounds, start),
        val_key: match &run.val {
            Some(Split::Classification(_)) => "val/top1",
            _ => "val/AP",
        },
    };
    if !opts.resume {
        s.checkpoint(&*method, &state)?;
    }
    let t0 = Instant::now();
    let end = opts
        .stop_after
        .map_or(f.rounds, |n| (start + n).min(f.rounds));
    let _signals = crate::engine::interrupt::Guard::new()?;
    let mut last_eval = None;
    while state.round < end {
        s.round(&mut *method, &mut state)?;
        last_eval = s.evaluate(&mut *method, &state)?;
        s.checkpoint(&*method, &state)?;
    }
    if state.round == f.rounds && last_eval.is_none() {
        // A finished run resumed: evaluate again to report and rewrite the final results.
        last_eval = s.evaluate(&mut *method, &state)?;
    }
    s.pb.finish_and_clear();
    if state.round == f.rounds {
        s.finish(&mut *method, &state, last_eval.as_ref())?;
    }
    let _ = plot_run(&out);
    Ok(TrainSummary {
        output_dir: out,
        iterations: state.round,
        start,
        seconds: t0.elapsed().as_secs_f64(),
        eval: last_eval,
        references: vec![],
        evaluated: "global model".into(),
    })
}

/// `--resume`: the checkpoint's settings checked, the global weights, the running sum and the
/// round's progress read back.
fn restore(
    cfg: &LoadedConfig,
    path: &Path,
    method: &dyn Method,
    settings: &BTreeMap<String, String>,
    out: &Path,
) -> Result<(RoundState, Vec<crate::engine::rundir::Change>)> {
    let ck = checkpoint::load(path)?;
    let changes = resume::check_settings(cfg, path, &ck.strings, settings, out)?;
    checkpoint::check_frozen_inputs(path, &ck.strings, &method.frozen_inputs())?;
    let f = fed(cfg);
    if ck.iter > f.rounds {
        return Err(cfg.error(
            "federated.rounds",
            format!(
                "is now {}, but {} is already at round {}: set it to at least {}, or start over with --fresh",
                f.rounds,
                path.display(),
                ck.iter,
                ck.iter
            ),
        ));
    }
    let mut global: Weights = ck.model.into_iter().collect();
    let mut sum = Sum::default();
    for (k, t) in ck.aux {
        match k.strip_prefix(SUM_PREFIX) {
            Some(name) => {
                sum.sum.insert(name.to_string(), t);
            }
            None => {
                global.insert(k, t);
            }
        }
    }
    let number = |key: &str| -> Result<usize> {
        ck.strings
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Error::msg(format!(
                    "{}: not a federated run's checkpoint (no {key})",
                    path.display()
                ))
            })
    };
    let done = number(DONE_KEY)?;
    sum.examples = number("fed.examples")?;
    let records: Vec<Value> = match ck.strings.get(RECORDS_KEY) {
        Some(t) => serde_json::from_str(t)
            .map_err(|e| Error::msg(format!("{}: {RECORDS_KEY}: {e}", path.display())))?,
        None => vec![],
    };
    eprintln!(
        "resuming from {} at round {} ({done} of its clients done)",
        path.display(),
        ck.iter + 1
    );
    Ok((
        RoundState {
            round: ck.iter,
            global,
            sum,
            done,
            records,
        },
        changes,
    ))
}

/// The server of a run in progress: where it writes and how it reports.
struct Server<'a> {
    cfg: &'a LoadedConfig,
    run: &'a RunData,
    clients: &'a Clients,
    ckpt: std::path::PathBuf,
    strings: BTreeMap<String, String>,
    log: MetricsLog,
    pb: indicatif::ProgressBar,
    val_key: &'static str,
}

impl Server<'_> {
    fn say(&self, line: String) {
        if self.pb.is_hidden() {
            eprintln!("{line}");
        } else {
            self.pb.println(line);
        }
    }

    /// The clients of `state.round` not yet done, each trained and added to the sum (a
    /// checkpoint after each), then the average made the global weights.
    fn round(&mut self, method: &mut dyn Method, state: &mut RoundState) -> Result<()> {
        let f = fed(self.cfg);
        let c = &self.cfg.config;
        let r = state.round;
        let sampled = sample_clients(c.seed, r, f.clients, f.per_round());
        let lr = c.solver.lr * f.lr_decay.powi(r as i32);
        let t = Instant::now();
        for (k, &id) in sampled.iter().enumerate().skip(state.done) {
            self.pb.set_message(format!(
                "round {}/{} client {}/{} (#{id})",
                r + 1,
                f.rounds,
                k + 1,
                sampled.len()
            ));
            load_global(method, &state.global)?;
            let job = ClientJob {
                cfg: self.cfg,
                device: &self.run.device,
                round: r,
                client: id,
                lr,
                epochs: f.local_epochs,
            };
            let Some(done) = job.train(method, &self.clients.records[id])? else {
                return Err(self.interrupted(r, k, sampled.len()));
            };
            state.sum.add(&snapshot(method)?, done.examples)?;
            let mut rec = json!({"iter": r + 1, "round": r + 1, "client": id,
                "client/images": done.examples, "client/steps": done.steps});
            for (name, v) in &done.means {
                rec[format!("client/{name}")] = json!(v);
            }
            self.log.write(&rec)?;
            state.records.push(rec);
            state.done = k + 1;
            if state.done < sampled.len() {
                self.checkpoint(method, state)?;
            }
        }
        let losses: Vec<f64> = state
            .records
            .iter()
            .filter_map(|v| v["client/loss"].as_f64())
            .collect();
        state.global = state.sum.average()?;
        state.sum = Sum::default();
        state.records.clear();
        state.done = 0;
        state.round = r + 1;
        self.log
            .write(&json!({"iter": r + 1, "round": r + 1, "lr": lr,
            "loss": losses.iter().sum::<f64>() / losses.len().max(1) as f64,
            "clients": sampled, "time": t.elapsed().as_secs_f64(),
            "rss_mb": crate::util::rss_mb()}))?;
        self.pb.set_position(r + 1);
        Ok(())
    }

    /// The global model of `state` on the val split (with k-NN and linear-probe accuracy for a
    /// method that learns without labels), logged at its round.
    fn evaluate(
        &mut self,
        method: &mut dyn Method,
        state: &RoundState,
    ) -> Result<Option<Evaluation>> {
        let Some(v) = &self.run.val else {
            return Ok(None);
        };
        load_global(method, &state.global)?;
        let (e, _) = evaluate_global(self.cfg, self.run, method, v)?;
        if !self.log.has(state.round, self.val_key) {
            let mut rec = json!({"iter": state.round});
            for (k, x) in e.named() {
                rec[format!("val/{k}")] = json!(x);
            }
            self.log.write(&rec)?;
        }
        self.say(format!(
            "round {}: global model: val {}",
            state.round,
            headline(&e)
        ));
        Ok(Some(e))
    }

    /// An atomic checkpoint of `state`: the global weights (the network's under `model.`, the
    /// method's own under `aux.`), the running sum (`aux.fedsum.`), the round's progress.
    fn checkpoint(&mut self, method: &dyn Method, state: &RoundState) -> Result<()> {
        let net_keys: Vec<String> = method.networks()[0]
            .net
            .named_tensors()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let (model, mut aux): (Vec<_>, Vec<_>) = state
            .global
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .partition(|(k, _)| net_keys.contains(k));
        aux.extend(
            state
                .sum
                .sum
                .iter()
                .map(|(k, t)| (format!("{SUM_PREFIX}{k}"), t.clone())),
        );
        let mut strings = self.strings.clone();
        strings.insert(DONE_KEY.into(), state.done.to_string());
        strings.insert("fed.examples".into(), state.sum.examples.to_string());
        strings.insert(
            RECORDS_KEY.into(),
            serde_json::to_string(&state.records).expect("json"),
        );
        checkpoint::save(
            &self.ckpt,
            &checkpoint::State {
                model: &model,
                aux: &aux,
                optim: &HashMap::new(),
                optim_step: 0,
                iter: state.round,
                strings: &strings,
            },
        )
    }

    /// The finished run's outputs: `model.safetensors` (the global network), the final
    /// predictions and `eval.json`.
    fn finish(
        &mut self,
        method: &mut dyn Method,
        state: &RoundState,
        e: Option<&Evaluation>,
    ) -> Result<()> {
        load_global(method, &state.global)?;
        let out = self.ckpt.parent().expect("run folder").to_path_buf();
        let net = &method.networks()[0];
        let model: HashMap<String, Tensor> = net.net.named_tensors().into_iter().collect();
        write_safetensors(&model, &out.join("model.safetensors"))?;
        if let (Some(v), Some(_)) = (&self.run.val, e) {
            let (e, preds) = evaluate_global(self.cfg, self.run, method, v)?;
            crate::engine::trainer::write_eval(
                &out,
                v,
                &e,
                &preds,
                state.round,
                &self.run.train_counts(),
            )?;
        }
        Ok(())
    }

    /// The stop a signal asked for in round `r` at its `k`-th client.
    fn interrupted(&self, r: u64, k: usize, n: usize) -> Error {
        self.pb.finish_and_clear();
        let sig = crate::engine::interrupt::requested().unwrap_or(libc::SIGINT);
        Error::Interrupted {
            signal: sig,
            msg: format!(
                "interrupted by {} in round {} of {} at client {} of {}; the checkpoint after the \
                 round's previous client is kept: resume with `kdet train {} --resume` (the \
                 interrupted client trains again from the round's global weights, with the same \
                 seeds)",
                crate::engine::interrupt::signal_name(sig),
                r + 1,
                fed(self.cfg).rounds,
                k + 1,
                n,
                self.cfg.path.display()
            ),
        }
    }
}

/// The global model (loaded in `method`) on the val split `v`, with k-NN and linear-probe
/// accuracy of its features for a method that learns without labels (two views).
pub fn evaluate_global(
    cfg: &LoadedConfig,
    run: &RunData,
    method: &dyn Method,
    v: &Split,
) -> Result<(Evaluation, crate::engine::evaluator::Predicted)> {
    let net = &method.networks()[0];
    let input = net.net.config.input();
    let (mut e, preds) = evaluate(
        &*net.net.model,
        v,
        input,
        cfg.config.solver.batch_size,
        &run.device,
        None,
        &run.train_counts(),
    )?;
    if method.two_views().is_some() {
        add_representation(&mut e, &*net.net.model, run, input)?;
    }
    Ok((e, preds))
}

/// A one-line summary: top-1 (and k-NN / probe when measured), or AP.
pub fn headline(e: &Evaluation) -> String {
    let mut s = e.headline();
    if let Evaluation::Classification(c) = e {
        if let Some(r) = &c.representation {
            s.push_str(&format!(
                "  k-NN top-1 {:.4}  probe top-1 {:.4}",
                r.knn_top1, r.probe_top1
            ));
        }
    }
    s
}

/// Refuse settings a federated run does not use or cannot honour (the `federated` section's
/// own ranges are checked by [`FederatedConfig::validate`]).
pub fn validate(cfg: &LoadedConfig) -> Result<()> {
    let c = &cfg.config;
    let Some(f) = &c.federated else {
        return match &c.method {
            Some(m @ (MethodConfig::Fedntd { .. } | MethodConfig::Fedx { .. })) => Err(cfg.error(
                "method.type",
                format!(
                    "{} trains clients of a federated run: add a `federated` section",
                    m.name()
                ),
            )),
            _ => Ok(()),
        };
    };
    f.validate().map_err(|e| cfg.invalid(e))?;
    match &c.method {
        None
        | Some(MethodConfig::Fedntd { .. })
        | Some(MethodConfig::Fedx { .. })
        | Some(MethodConfig::SimclrPretrain { .. }) => {}
        Some(m) => {
            return Err(cfg.error(
                "method.type",
                format!(
                    "`{}` is not a client method of a federated run: none (FedAvg), fedntd, \
                     fedx or simclr_pretrain",
                    m.name()
                ),
            ))
        }
    }
    if !c.teachers.is_empty() || !c.distill.is_empty() {
        return Err(cfg.error(
            "teachers",
            "a federated client learns from its data (and, with fedntd or fedx, the global \
             model): give no `teachers` or `distill` terms",
        ));
    }
    if c.data.use_unlabeled {
        return Err(cfg.error(
            "data.use_unlabeled",
            "a federated run divides the training split among its clients; the unlabeled \
             folder belongs to no client",
        ));
    }
    let s = &c.solver;
    let defaults = crate::config::solver::SolverConfig::default();
    let unused = [
        ("solver.iterations", s.iterations.is_some()),
        ("solver.epochs", s.epochs.is_some()),
        ("solver.schedule", s.schedule.is_some()),
        (
            "solver.warmup_iters",
            s.warmup_iters != defaults.warmup_iters,
        ),
        ("solver.eval_every", s.eval_every != defaults.eval_every),
        (
            "solver.checkpoint_every",
            s.checkpoint_every != defaults.checkpoint_every,
        ),
    ];
    if let Some((key, _)) = unused.iter().find(|(_, set)| *set) {
        return Err(cfg.error(
            key,
            "a federated run's length is federated.rounds × local_epochs, its learning rate \
             solver.lr × federated.lr_decay^round (constant within a round), and it evaluates \
             and checkpoints every round: remove this setting",
        ));
    }
    if let Partition::Dirichlet { min_size: 0, .. } = f.partition {
        return Err(cfg.error(
            "federated.partition.min_size",
            "must be >= 1: every client needs images",
        ));
    }
    Ok(())
}
