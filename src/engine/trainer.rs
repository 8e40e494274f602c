//! The training loop: data → forward (losses) → backward → gradient clipping → optimizer step,
//! with warmup and schedule, a progress bar, JSON-lines metrics, periodic and final COCO
//! evaluation, atomic checkpoints with exact `--resume`, and a stop on non-finite losses that
//! names the step and the term and keeps the last good checkpoint.
//!
//! Determinism: initial weights come from the config's seed ([`SeededVarMap`]); the data order
//! and augmentation from (seed, epoch, position); the samplers of the RPN and RoI heads from
//! (seed, iteration). So a resumed run draws exactly what the uninterrupted one would have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::checkpoint;
use super::evaluator::{evaluate, write_results};
use super::metrics::{plot_run, MetricsLog};
use super::optim::{params_with_decay, Optimizer};
use super::schedule::LrSchedule;
use crate::config::{Arch, LoadedConfig};
use crate::data::coco::{load_split, DetectionData, Purpose};
use crate::data::loader::{DetectionDataset, Loader, Sampler};
use crate::distill::teacher::Teacher;
use crate::distill::Distiller;
use crate::error::{Error, Result};
use crate::eval::EvalSummary;
use crate::models::faster_rcnn::FasterRcnn;
use crate::models::init::SeededVarMap;
use crate::models::weights::named_tensors;
use crate::ops::conv::ConvImpl;

/// A detector with its variables.
pub struct Detector {
    pub vars: Arc<SeededVarMap>,
    pub model: FasterRcnn,
}

/// Build a Faster R-CNN for `num_classes` foreground classes, initialised from `seed`.
pub fn build_detector(
    cfg: &crate::config::ModelConfig,
    num_classes: usize,
    seed: u64,
    device: &Device,
) -> Result<Detector> {
    if cfg.arch != Arch::FasterRcnn {
        return Err(Error::msg(format!(
            "model.arch {:?} is not available yet: only faster_rcnn trains in this version",
            cfg.arch
        )));
    }
    let vars = Arc::new(SeededVarMap::new(seed));
    let model = FasterRcnn::new(
        vars.builder(DType::F32, device),
        cfg,
        num_classes + 1,
        ConvImpl::Kdet,
    )?;
    Ok(Detector { vars, model })
}

/// [`build_detector`], then the configured backbone weights (`model.backbone.weights`, a path
/// relative to the config that set it) loaded strictly.
pub fn build_detector_for_training(
    cfg: &LoadedConfig,
    num_classes: usize,
    device: &Device,
) -> Result<Detector> {
    let c = &cfg.config;
    let det = build_detector(&c.model, num_classes, c.seed, device)?;
    if let Some(w) = &c.model.backbone.weights {
        let path = if crate::hub::is_hub(w) {
            PathBuf::from(w)
        } else {
            cfg.resolve("model.backbone.weights", Path::new(w))
        };
        let r = crate::models::weights::load_backbone(
            &det.vars.varmap,
            &path,
            &c.model.backbone.weights_keys,
        )?;
        eprintln!(
            "loaded {} backbone tensors from {}",
            r.loaded,
            path.display()
        );
    }
    Ok(det)
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub output_dir: PathBuf,
    pub iterations: u64,
    /// Where this invocation started (`--resume`), 0 otherwise.
    pub start: u64,
    pub seconds: f64,
    pub eval: Option<EvalSummary>,
    /// Each teacher on the full validation set (distillation runs that finished).
    pub teacher_evals: Vec<EvalSummary>,
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

/// Train the model a config describes.
pub fn train(cfg: &LoadedConfig, opts: TrainOptions) -> Result<TrainSummary> {
    let resume = opts.resume;
    let c = &cfg.config;
    let device = crate::device::open(crate::device::parse_device(&c.device).map_err(Error::msg)?)?;
    let out = cfg.resolve("output_dir", &c.output_dir);
    let (train_split, val_split) = crate::data::resolve_splits(cfg)?;
    let train_data = load_split(
        &train_split.0,
        &train_split.1,
        Purpose::Train {
            min_box_size: c.data.min_box_size,
        },
    )?;
    let val_data = match &val_split {
        Some((a, i)) => Some(load_split(a, i, Purpose::Eval)?),
        None => None,
    };
    let det = build_detector_for_training(cfg, train_data.categories.len(), &device)?;
    let s = &c.solver;
    // Teachers load and are checked before anything is written; their adaptation layers join the
    // student's variables before the optimizer collects them.
    let distiller = if c.teachers.is_empty() {
        None
    } else {
        let mut teachers = vec![];
        for (i, tc) in c.teachers.iter().enumerate() {
            let t = Teacher::load(cfg, i, train_data.categories.len(), &device)?;
            if tc.check_images > 0 {
                match &val_data {
                    Some(v) => {
                        t.check(tc, v, s.batch_size, &device)?;
                    }
                    None => eprintln!(
                        "warning: no validation split, so teachers[{i}] could not be checked"
                    ),
                }
            }
            teachers.push(t);
        }
        Some(Distiller::new(
            cfg,
            &det.model,
            det.vars.builder(DType::F32, &device),
            teachers,
        )?)
    };
    let teacher_meta: BTreeMap<String, String> = distiller
        .iter()
        .flat_map(|d| d.teachers.iter())
        .flat_map(|t| {
            [
                (
                    format!("teacher{}.path", t.index),
                    t.path.display().to_string(),
                ),
                (format!("teacher{}.sha256", t.index), t.sha256.clone()),
            ]
        })
        .collect();
    let vars: Vec<(String, candle_core::Var)> = {
        let data = det.vars.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<_> = data
            .iter()
            .filter(|(k, _)| {
                !k.ends_with("running_mean")
                    && !k.ends_with("running_var")
                    && !det.model.backbone.is_frozen_param(k)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut opt = Optimizer::new(params_with_decay(vars, s), s);

    let loader = Loader {
        sampler: Sampler::new(c.data.sampler, &train_data.records, true),
        dataset: Arc::new(DetectionDataset {
            records: train_data.records.clone(),
            input: c.model.input.clone(),
            flip_prob: c.data.flip_prob,
        }),
        batch_size: s.batch_size,
        workers: c.data.workers,
        prefetch: c.data.prefetch,
        seed: c.seed,
        device: device.clone(),
    };
    let per_epoch = loader.batches_per_epoch().max(1) as u64;
    let (len, in_epochs) = s.length();
    let total = if in_epochs { len * per_epoch } else { len };
    let lr = LrSchedule::new(s, per_epoch, total);

    let ckpt_path = out.join("checkpoint.safetensors");
    let mut start = 0u64;
    if !resume && !opts.fresh && ckpt_path.exists() {
        return Err(Error::msg(format!(
            "{} already holds a checkpoint: pass --resume to continue it or --fresh to start over (it will be replaced)",
            out.display()
        )));
    }
    if resume {
        let ck = checkpoint::load(&ckpt_path)?;
        let r = crate::models::weights::load_tensors(&det.vars.varmap, &ck.model)?;
        if !r.is_clean() {
            return Err(Error::msg(format!(
                "{}: checkpoint does not fit the config's model: {}",
                ckpt_path.display(),
                r.describe()
            )));
        }
        check_same_teachers(&ckpt_path, &ck.strings, &teacher_meta)?;
        opt.load_state(ck.optim, ck.optim_step)?;
        start = ck.iter;
        eprintln!("resuming from {} at iteration {start}", ckpt_path.display());
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let out = std::fs::canonicalize(&out).unwrap_or(out);
    crate::util::write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(c)
            .expect("config serialises")
            .as_bytes(),
    )?;
    write_sidecar(&out.join("model.json"), c, &train_data)?;
    let mut log = MetricsLog::open(&out, Some(start).filter(|_| resume))?;

    let pb = progress(total, start);
    let t0 = Instant::now();
    let mut it = start;
    let end = opts.stop_after.map_or(total, |n| (start + n).min(total));
    let mut last_eval = None;
    while it < end {
        let epoch = it / per_epoch;
        for batch in loader.epoch_from(epoch, (it % per_epoch) as usize) {
            if it >= end {
                break;
            }
            let batch = batch?;
            let step_t = Instant::now();
            let mut rng =
                ChaCha8Rng::seed_from_u64(c.seed ^ (it + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut outp = det.model.forward_train(&batch, &mut rng)?;
            let mut losses = std::mem::take(&mut outp.losses);
            if let Some(d) = &distiller {
                d.add_losses(&batch, &outp, &mut losses)?;
            }
            drop(outp);
            let (loss, terms) = sum_losses(&losses, it + 1)?;
            let mut grads = loss.backward()?;
            if let Some(max) = s.grad_clip {
                clip_grad_norm(
                    &mut grads,
                    opt.params().iter().map(|p| p.var.as_tensor()),
                    max,
                )?;
            }
            let lr_now = lr.lr(it);
            opt.step(&grads, lr_now)?;
            it += 1;
            pb.set_position(it);
            let total_loss: f64 = terms.values().sum();
            pb.set_message(format!("loss {total_loss:.3} lr {lr_now:.2e}"));
            if it.is_multiple_of(s.log_every) || it == total {
                let mut rec = json!({"iter": it, "epoch": epoch, "lr": lr_now, "loss": total_loss, "time": step_t.elapsed().as_secs_f64()});
                for (k, v) in &terms {
                    rec[k] = json!(v);
                }
                log.write(&rec)?;
                if pb.is_hidden() {
                    eprintln!("iter {it}/{total} loss {total_loss:.4} lr {lr_now:.3e}");
                }
            }
            let last = it == total;
            if s.checkpoint_every > 0 && it.is_multiple_of(s.checkpoint_every) || it == end {
                // Never overwrite a good checkpoint with diverged weights.
                check_finite_params(&opt, it)?;
                let (st, step) = opt.state();
                checkpoint::save(
                    &ckpt_path,
                    &named_tensors(&det.vars.varmap),
                    &st,
                    step,
                    it,
                    &teacher_meta,
                )?;
            }
            if let Some(v) = &val_data {
                if (s.eval_every > 0 && it.is_multiple_of(s.eval_every)) || last {
                    let (summary, recs) =
                        evaluate(&det.model, v, &c.model.input, s.batch_size, &device, None)?;
                    let mut rec = json!({"iter": it});
                    for (k, x) in summary.named() {
                        rec[format!("val/{k}")] = json!(x);
                    }
                    log.write(&rec)?;
                    let line = format!(
                        "iter {it}: val AP {:.4} AP50 {:.4}",
                        summary.stats[0], summary.stats[1]
                    );
                    // A hidden bar (no terminal) drops println: log lines go to stderr then.
                    if pb.is_hidden() {
                        eprintln!("{line}");
                    } else {
                        pb.println(line);
                    }
                    if last {
                        write_results(&out.join("detections.json"), &recs)?;
                        write_eval_json(&out, &v.gt.file, &summary, it)?;
                    }
                    last_eval = Some(summary);
                }
            }
        }
    }
    pb.finish_and_clear();
    // `--resume` of a finished run trains nothing; it still reports (and rewrites) the final
    // evaluation, so `--baseline` can compare.
    if let (None, Some(v), true) = (&last_eval, &val_data, it == total && start == total) {
        let (summary, recs) = evaluate(&det.model, v, &c.model.input, s.batch_size, &device, None)?;
        write_results(&out.join("detections.json"), &recs)?;
        write_eval_json(&out, &v.gt.file, &summary, it)?;
        last_eval = Some(summary);
    }
    let mut teacher_evals = vec![];
    if it == total {
        crate::models::weights::save_safetensors(&det.vars.varmap, &out.join("model.safetensors"))?;
        // The teachers on the same validation set, for the comparison the user came for.
        if let (Some(d), Some(v)) = (&distiller, &val_data) {
            let mut rec = json!({"iter": it});
            for t in &d.teachers {
                let (e, _) = evaluate(&t.model, v, &c.model.input, s.batch_size, &device, None)?;
                for (k, x) in e.named() {
                    rec[format!("teacher{}/{k}", t.index)] = json!(x);
                }
                teacher_evals.push(e);
            }
            log.write(&rec)?;
        }
    }
    let _ = plot_run(&out);
    Ok(TrainSummary {
        output_dir: out,
        iterations: it,
        start,
        seconds: t0.elapsed().as_secs_f64(),
        eval: last_eval,
        teacher_evals,
    })
}

/// A resumed distillation must use the teachers it started with (same file contents).
fn check_same_teachers(
    ckpt: &Path,
    stored: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Result<()> {
    let sha = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter()
            .filter(|(k, _)| k.ends_with(".sha256"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (a, b) = (sha(stored), sha(now));
    if a == b {
        return Ok(());
    }
    let describe = |m: &BTreeMap<String, String>| -> String {
        let v: Vec<String> = (0..)
            .map_while(|i| {
                Some(format!(
                    "teachers[{i}] = {} (sha256 {})",
                    m.get(&format!("teacher{i}.path"))?,
                    m.get(&format!("teacher{i}.sha256"))?
                ))
            })
            .collect();
        if v.is_empty() {
            "no teachers".to_string()
        } else {
            v.join(", ")
        }
    };
    Err(Error::msg(format!(
        "{}: the checkpoint was trained with {}, but the config now gives {}; resume with the same teachers or start over with --fresh",
        ckpt.display(),
        describe(stored),
        describe(now)
    )))
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

/// Sum the named losses; a non-finite term stops training with its name and step.
fn sum_losses(
    losses: &BTreeMap<String, Tensor>,
    step: u64,
) -> Result<(Tensor, BTreeMap<String, f64>)> {
    let mut vals = BTreeMap::new();
    let mut total: Option<Tensor> = None;
    for (k, t) in losses {
        let v = t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !v.is_finite() {
            return Err(Error::msg(format!(
                "step {step}: loss term `{k}` is {v}; training stopped, the last good checkpoint is kept (lower solver.lr or set solver.grad_clip)"
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
fn check_finite_params(opt: &Optimizer, step: u64) -> Result<()> {
    for p in opt.params() {
        let v = p
            .var
            .as_tensor()
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if !v.is_finite() {
            return Err(Error::msg(format!(
                "step {step}: parameter `{}` became non-finite; training stopped, the last good checkpoint is kept (lower solver.lr or set solver.grad_clip)",
                p.name
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

/// `model.json` beside the weights: the architecture, class names and category ids, input
/// normalisation — what `kdet infer` and `kdet export` need without the training data.
fn write_sidecar(path: &Path, c: &crate::config::Config, data: &DetectionData) -> Result<()> {
    let v = json!({
        "kdet_version": env!("CARGO_PKG_VERSION"),
        "model": c.model,
        "classes": data.categories.names,
        "category_ids": data.categories.ids,
    });
    crate::util::write_atomic(
        path,
        serde_json::to_string_pretty(&v).expect("json").as_bytes(),
    )
}

/// The JSON beside a weights file that describes it: `<stem>.json` written by `kdet export`, or
/// `model.json` in the run directory of `kdet train` (architecture, class names, category ids).
pub struct Sidecar {
    pub file: PathBuf,
    value: serde_json::Value,
}

impl Sidecar {
    /// Where the sidecar of `weights` may be, in the order looked at.
    pub fn candidates(weights: &Path) -> [PathBuf; 2] {
        [
            weights.with_extension("json"),
            weights.with_file_name("model.json"),
        ]
    }

    /// The first sidecar of `weights` that exists, parsed; `None` when there is none.
    pub fn find(weights: &Path) -> Result<Option<Sidecar>> {
        let Some(file) = Self::candidates(weights).into_iter().find(|p| p.is_file()) else {
            return Ok(None);
        };
        let text = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        let value = serde_json::from_slice(&text)
            .map_err(|e| Error::msg(format!("{}: {e}", file.display())))?;
        Ok(Some(Sidecar { file, value }))
    }

    /// A top-level field, with the file and field named on error.
    pub fn field<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T> {
        serde_json::from_value(self.value[key].clone())
            .map_err(|e| Error::msg(format!("{}: {key}: {e}", self.file.display())))
    }
}

/// Class names and category ids of a trained model: from its [`Sidecar`], else from the config's
/// training annotations.
pub fn read_classes(cfg: &LoadedConfig, weights: &Path) -> Result<(Vec<String>, Vec<u64>)> {
    if let Some(s) = Sidecar::find(weights)? {
        return Ok((s.field("classes")?, s.field("category_ids")?));
    }
    let (train, _) = crate::data::resolve_splits(cfg)?;
    let gt = crate::data::coco::load_ground_truth(&train.0, Purpose::Eval)?;
    let m = crate::data::coco::CategoryMap::new(&gt.dataset.categories);
    Ok((m.names, m.ids))
}

fn write_eval_json(out: &Path, gt: &Path, s: &EvalSummary, iter: u64) -> Result<()> {
    let gt = std::fs::canonicalize(gt).unwrap_or_else(|_| gt.to_path_buf());
    let v = json!({"gt": gt, "detections": "detections.json", "iter": iter, "stats": s.stats, "per_class": s.per_class});
    crate::util::write_atomic(
        &out.join("eval.json"),
        serde_json::to_string_pretty(&v).expect("json").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

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
        let e = sum_losses(&l, 7).unwrap_err().to_string();
        assert!(e.starts_with("step 7: loss term `loss_b` is NaN"), "{e}");
    }
}
