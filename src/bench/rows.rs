//! `kdet bench row NAME`: one benchmark row — a training step, a distillation step, an
//! inference, or a kernel — timed as the median of `runs` repetitions after warm-up, with the
//! process's peak RSS. `tools/bench.sh` runs every row here and in `tools/bench_torch.py` (the
//! same architectures, image sizes, batches, threads and dtype in PyTorch), each row in its own
//! process so that peak RSS is the row's, and prints the ratios (docs/benchmarks.md).
//!
//! Shapes: the synthetic rows use the shipped synthetic configs (`configs/synth/*.json`: 128-px
//! images, batch 4); the R50 rows torchvision's `fasterrcnn_resnet50_fpn` settings at 800 px
//! (batch 2 for training, 1 for inference, an 800 × 1067 image padded to 800 × 1088); the
//! kernels the shapes of that R50 model at that size; the classifier rows (one classifier, DML,
//! DCM, SimCLR pretraining) `configs/synth/cls_base.json`'s: 64 images of 32², 32 classes. The
//! method rows build their method from its shipped config as `kdet train` does. Both sides feed
//! the same images ([`super::inputs`]).
//!
//! `--device cuda` runs a row on the GPU (the batch moved there before timing; each repetition
//! ends with a device synchronisation, so the time is the work's, not its launch's). The NMS
//! row then runs [`batched_nms_tensor`] on device boxes; the anchor row works on host vectors.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::inputs::{class_batch, detection_batch, on_device, run_data};
use super::randn;
use crate::config::solver::SolverConfig;
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::optim::{params_with_decay, Optimizer};
use crate::error::{Error, Result};
use crate::models::build::Network;
use crate::models::config::ModelConfig;
use crate::models::contract::{StepRng, Want};
use crate::ops::anchors::AnchorGenerator;
use crate::ops::boxes::{Box4, BoxCoder};
use crate::ops::nms::{batched_nms, batched_nms_tensor};
use crate::ops::roi_align::multi_scale_roi_align;

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    pub name: String,
    pub median_ms: f64,
    pub runs: usize,
    /// Peak resident set of the process, MiB.
    pub peak_rss_mb: f64,
    /// Images one step processes (for images/s; SimCLR: the N images of its 2N views).
    pub images: usize,
}

/// Every row, in table order, with what it measures.
pub const ROWS: &[(&str, &str)] = &[
    ("resnet18_step", "ResNet-18 SGD step, 2×3×224×224"),
    ("resnet50_step", "ResNet-50 SGD step, 2×3×224×224"),
    (
        "frcnn_step_synth_student",
        "Faster R-CNN training step, synth student (R18 ×0.25), 4×128²",
    ),
    (
        "frcnn_step_synth_teacher",
        "Faster R-CNN training step, synth teacher (R18 ×0.5), 4×128²",
    ),
    (
        "frcnn_step_r50_800",
        "Faster R-CNN training step, R50-FPN, 2×800×1088",
    ),
    (
        "distill_step_synth",
        "Chen et al. distillation step (all terms), synth student + teacher, 4×128²",
    ),
    (
        "distill_pkd_synth",
        "PKD distillation step (p2–p5, weight 6), synth student + teacher, 4×128²",
    ),
    (
        "distill_cwd_synth",
        "CWD distillation step (p2–p6, τ 1, weight 10), synth student + teacher, 4×128²",
    ),
    (
        "distill_mgd_synth",
        "MGD distillation step (p2–p5, α 5e-7, λ 0.45), synth student + teacher, 4×128²",
    ),
    (
        "distill_fgd_synth",
        "FGD distillation step (p2–p5, Faster R-CNN weights), synth student + teacher, 4×128²",
    ),
    (
        "cls_step_synth",
        "classifier training step, synth R18 ×0.25, 64×32², 32 classes",
    ),
    (
        "dml_step_synth",
        "DML step, two synth classifiers (R18 ×0.25), 64×32²",
    ),
    (
        "dcm_step_synth",
        "DCM step, two synth classifiers + auxiliary classifiers at c3, c4, 64×32²",
    ),
    (
        "simclr_pretrain_step_synth",
        "SimCLR pretraining step (NT-Xent, τ 0.5), synth R18 ×0.25, 64 images = 128 views of 32²",
    ),
    (
        "paa_step_synth_student",
        "PAA training step, synth student (R18 ×0.25), 4×128²",
    ),
    (
        "infer_synth_student",
        "Faster R-CNN inference per image, synth student, 128²",
    ),
    (
        "infer_r50_800",
        "Faster R-CNN inference per image, R50-FPN, 800×1067",
    ),
    (
        "roi_align_fwd",
        "MultiScaleRoIAlign forward, R50 FPN at 800×1088, 2×512 RoIs, 7×7",
    ),
    (
        "roi_align_fwd_bwd",
        "MultiScaleRoIAlign forward + backward, same shapes",
    ),
    (
        "nms_batched",
        "batched NMS, 4000 boxes, 80 classes, IoU 0.5",
    ),
    (
        "anchors_decode",
        "anchors (5 levels × 3) + decoding, 800×1088: 217,413 boxes",
    ),
    (
        "scale_s400_b1",
        "scaling: Faster R-CNN training step, synth student, 1×400²",
    ),
    (
        "scale_s800_b1",
        "scaling: Faster R-CNN training step, synth student, 1×800²",
    ),
    (
        "scale_s400_b4",
        "scaling: Faster R-CNN training step, synth student, 4×400²",
    ),
    (
        "scale_s800_b4",
        "scaling: Faster R-CNN training step, synth student, 4×800²",
    ),
];

/// Image side and batch of a scaling row (`scale_s<SIDE>_b<BATCH>`).
fn scaling(name: &str) -> Option<(usize, usize)> {
    let (side, batch) = name.strip_prefix("scale_s")?.split_once("_b")?;
    Some((side.parse().ok()?, batch.parse().ok()?))
}

fn config(rel: &str) -> Result<LoadedConfig> {
    crate::config::load(&super::repo_file(rel))
}

/// The synthetic detection configs' batch: 4 images of 128², two boxes each.
fn synth_batch(model: &ModelConfig) -> Result<Batch> {
    detection_batch(4, (128, 128), (128, 128), model.input(), 1)
}

/// The optimizer of every row: SGD with momentum 0.9 and weight decay 1e-4 (the references'
/// settings, as the PyTorch side), lr 0.01.
fn solver() -> SolverConfig {
    SolverConfig {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 1e-4,
        ..Default::default()
    }
}

/// The model's trainable variables under [`solver`].
fn sgd(net: &Network) -> Optimizer {
    let vars: Vec<(String, Var)> = net
        .vars
        .varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(k, _)| net.model.is_trainable(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Optimizer::new(params_with_decay(vars, &solver()), &solver())
}

/// A training step of the method a config describes (`distill::build_method`, as `kdet train`
/// builds it, teachers and method variables included), one optimizer per parameter group as
/// the trainer: the method's step, the sum of its losses, backward, every optimizer's step.
fn method_step(rel: &str, classes: usize, b: &Batch, timing: Timing, dev: &Device) -> Result<f64> {
    let cfg = config(rel)?;
    let b = &on_device(b, dev)?;
    let mut method = crate::distill::build_method(&cfg, &run_data(classes, dev))?;
    let mut opts: Vec<Optimizer> = method
        .param_groups()
        .into_iter()
        .map(|g| Optimizer::new(params_with_decay(g, &solver()), &solver()))
        .collect();
    let mut it = 0u64;
    timing.run(dev, || {
        it += 1;
        let step = method.step(b, &mut StepRng::seed_from_u64(it))?;
        let grads = sum(step.losses.into_values())?.backward()?;
        for o in &mut opts {
            o.step(&grads, 0.01)?;
        }
        Ok(())
    })
}

/// A training step of the plain method: forward, assignment, losses, backward, SGD.
fn detector_step(
    model: &ModelConfig,
    classes: usize,
    b: &Batch,
    timing: Timing,
    dev: &Device,
) -> Result<f64> {
    let net = Network::new(model, classes, 0, dev)?;
    let b = &on_device(b, dev)?;
    let mut opt = sgd(&net);
    let mut it = 0u64;
    timing.run(dev, || {
        it += 1;
        let m = &net.model;
        let mut rng = StepRng::seed_from_u64(it);
        let fwd = m.forward(&b.images, true)?;
        let a = m.assign(&fwd, b, &mut rng)?;
        let out = m.outputs(&fwd, &a, b, Want::Losses)?;
        let loss = sum(out.losses.into_values().map(|l| l.value))?;
        opt.step(&loss.backward()?, 0.01)
    })
}

fn sum(ts: impl Iterator<Item = Tensor>) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for t in ts {
        total = Some(match total {
            None => t,
            Some(s) => (s + t)?,
        });
    }
    total.ok_or_else(|| Error::msg("no losses"))
}

/// Warm-up and timed repetitions of a row.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: usize,
    pub runs: usize,
}

impl Timing {
    /// Median ms of `f`, each repetition closed by a synchronisation of `dev`.
    fn run(&self, dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        super::time_on(dev, self.warmup, self.runs, &mut f)
    }
}

/// The model of an R50 Faster R-CNN as torchvision's `fasterrcnn_resnet50_fpn` (91 classes).
fn r50() -> ModelConfig {
    ModelConfig::default()
}

/// Random boxes inside `h × w`, `n` of them.
pub(crate) fn random_boxes(n: usize, h: f32, w: f32, rng: &mut impl Rng) -> Vec<Box4> {
    (0..n)
        .map(|_| {
            let (x, y) = (
                rng.random_range(0.0..w * 0.8),
                rng.random_range(0.0..h * 0.8),
            );
            let (bw, bh) = (
                rng.random_range(8.0..w * 0.4),
                rng.random_range(8.0..h * 0.4),
            );
            [x, y, (x + bw).min(w), (y + bh).min(h)]
        })
        .collect()
}

/// R50-FPN feature maps of an 800 × 1088 batch of 2 (P2–P5, 256 channels) on `dev` and their
/// scales.
fn fpn_features(grad: bool, dev: &Device) -> Result<(Vec<Tensor>, Vec<f32>)> {
    let mut f = vec![];
    for (i, (h, w)) in [(200, 272), (100, 136), (50, 68), (25, 34)]
        .iter()
        .enumerate()
    {
        let t = randn(&[2, 256, *h, *w], 40 + i as u64)?.to_device(dev)?;
        f.push(if grad {
            Var::from_tensor(&t)?.as_tensor().clone()
        } else {
            t
        });
    }
    Ok((f, vec![0.25, 0.125, 0.0625, 0.03125]))
}

/// Run row `name` on `dev`.
pub fn run(name: &str, timing: Timing, weights: Option<&Path>, dev: &Device) -> Result<RowResult> {
    let (ms, images) = match name {
        "infer_synth_student" | "infer_r50_800" => (inference_row(name, timing, weights, dev)?, 1),
        "roi_align_fwd" | "roi_align_fwd_bwd" | "nms_batched" | "anchors_decode" => {
            (kernel_row(name, timing, dev)?, 0)
        }
        _ => training_row(name, timing, dev)?,
    };
    Ok(RowResult {
        name: name.to_string(),
        median_ms: ms,
        runs: timing.runs,
        peak_rss_mb: peak_rss_mb(),
        images,
    })
}

/// A training row: median ms and images per step.
fn training_row(name: &str, timing: Timing, dev: &Device) -> Result<(f64, usize)> {
    Ok(match name {
        "resnet18_step" | "resnet50_step" => {
            let depth = if name == "resnet18_step" { 18 } else { 50 };
            (
                super::resnet_step(depth, timing.warmup, timing.runs, dev)?,
                2,
            )
        }
        "frcnn_step_synth_student" | "frcnn_step_synth_teacher" | "paa_step_synth_student" => {
            let file = match name {
                "frcnn_step_synth_student" => "configs/synth/frcnn_student.json",
                "frcnn_step_synth_teacher" => "configs/synth/frcnn_r18_teacher.json",
                _ => "configs/synth/paa_student.json",
            };
            let model = config(file)?.config.model;
            (
                detector_step(&model, 5, &synth_batch(&model)?, timing, dev)?,
                4,
            )
        }
        "frcnn_step_r50_800" => {
            let b = detection_batch(2, (800, 1088), (800, 1088), r50().input(), 1)?;
            (detector_step(&r50(), 90, &b, timing, dev)?, 2)
        }
        _ if scaling(name).is_some() => {
            // The synthetic student's architecture on larger images: how the step's cost grows
            // with the image side and the batch (the PyTorch side sets its transform to the
            // same size, so neither resizes).
            let (side, n) = scaling(name).expect("checked");
            let model = config("configs/synth/frcnn_student.json")?.config.model;
            // Padded to a multiple of 32, as the loader (and torchvision's transform) pads.
            let padded = side.div_ceil(32) * 32;
            let b = detection_batch(n, (side, side), (padded, padded), model.input(), 1)?;
            (detector_step(&model, 5, &b, timing, dev)?, n)
        }
        "distill_step_synth" | "distill_pkd_synth" | "distill_cwd_synth" | "distill_mgd_synth"
        | "distill_fgd_synth" => {
            let rel = match name {
                "distill_step_synth" => "configs/synth/frcnn_distill.json".to_string(),
                _ => format!("configs/synth/frcnn_{}.json", &name[8..11]),
            };
            let b = synth_batch(&config(&rel)?.config.model)?;
            (method_step(&rel, 5, &b, timing, dev)?, 4)
        }
        "cls_step_synth" | "dml_step_synth" | "dcm_step_synth" => {
            let rel = match name {
                "cls_step_synth" => "configs/synth/cls_base.json",
                "dml_step_synth" => "configs/synth/cls_dml.json",
                _ => "configs/synth/cls_dcm.json",
            };
            let b = class_batch(64, 32, 32, config(rel)?.config.model.input(), 1)?;
            (method_step(rel, 32, &b, timing, dev)?, 64)
        }
        "simclr_pretrain_step_synth" => {
            // The loader's two views of 64 images, already augmented (augmentation is the data
            // pipeline's, untimed on both sides): 128 unlabeled images, views 1 then views 2.
            let rel = "configs/synth/cls_simclr_pretrain.json";
            let b = class_batch(128, 32, 0, config(rel)?.config.model.input(), 1)?;
            (method_step(rel, 32, &b, timing, dev)?, 64)
        }
        other => {
            return Err(Error::msg(format!(
                "unknown benchmark row `{other}`; rows: {}",
                ROWS.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
            )))
        }
    })
}

/// An inference row: one image through `predict`, median ms.
fn inference_row(name: &str, timing: Timing, weights: Option<&Path>, dev: &Device) -> Result<f64> {
    let (model, classes, b) = if name == "infer_synth_student" {
        let model = config("configs/synth/frcnn_student.json")?.config.model;
        let b = detection_batch(1, (128, 128), (128, 128), model.input(), 2)?;
        (model, 5, b)
    } else {
        let b = detection_batch(1, (800, 1067), (800, 1088), r50().input(), 2)?;
        (r50(), 90, b)
    };
    // The same weights as the PyTorch side when given (inference cost depends on how many
    // boxes pass the score threshold).
    let net = match weights {
        Some(w) => Network::load(&model, classes, w, dev)?,
        None => Network::new(&model, classes, 0, dev)?,
    };
    let b = on_device(&b, dev)?;
    timing.run(dev, || {
        net.model.predict(&b)?;
        Ok(())
    })
}

/// A kernel row (RoIAlign, NMS, anchors), median ms.
fn kernel_row(name: &str, timing: Timing, dev: &Device) -> Result<f64> {
    match name {
        "roi_align_fwd" | "roi_align_fwd_bwd" => {
            let backward = name == "roi_align_fwd_bwd";
            let (f, scales) = fpn_features(backward, dev)?;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let rois: Vec<Vec<Box4>> = (0..2)
                .map(|_| random_boxes(512, 800.0, 1088.0, &mut rng))
                .collect();
            timing.run(dev, || {
                let y = multi_scale_roi_align(&f, &scales, &rois, 7, 2)?;
                if backward {
                    y.sum_all()?.backward()?;
                }
                Ok(())
            })
        }
        "nms_batched" => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
            let boxes = random_boxes(4000, 800.0, 1088.0, &mut rng);
            let scores: Vec<f32> = (0..4000).map(|_| rng.random::<f32>()).collect();
            let classes: Vec<usize> = (0..4000).map(|_| rng.random_range(0..80)).collect();
            if dev.is_cpu() {
                return timing.run(dev, || {
                    batched_nms(&boxes, &scores, &classes, 0.5);
                    Ok(())
                });
            }
            // On a GPU, as torchvision's CUDA batched_nms: boxes on the device, the IoU mask
            // there, the greedy pass on the host.
            let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
            let t = Tensor::from_vec(flat, (boxes.len(), 4), dev)?;
            timing.run(dev, || {
                batched_nms_tensor(&t, &scores, &classes, 0.5)?;
                Ok(())
            })
        }
        _ => anchors_decode(timing),
    }
}

/// Anchors for 5 levels × 3 ratios at 800 × 1088 and the decoding of one delta per anchor.
fn anchors_decode(timing: Timing) -> Result<f64> {
    let g = AnchorGenerator {
        sizes: vec![32., 64., 128., 256., 512.],
        aspect_ratios: vec![0.5, 1.0, 2.0],
    };
    let sizes = [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)];
    let n: usize = sizes.iter().map(|(h, w)| h * w * 3).sum();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let deltas: Vec<[f32; 4]> = (0..n)
        .map(|_| std::array::from_fn(|_| rng.random_range(-1.0f32..1.0)))
        .collect();
    let coder = BoxCoder::new([1.0, 1.0, 1.0, 1.0]);
    timing.run(&Device::Cpu, || {
        let anchors: Vec<Box4> = g
            .anchors((800, 1088), &sizes)
            .into_iter()
            .flatten()
            .collect();
        let decoded: Vec<Box4> = anchors
            .iter()
            .zip(&deltas)
            .map(|(a, d)| coder.decode(d, a))
            .collect();
        std::hint::black_box(decoded);
        Ok(())
    })
}

/// Peak resident set size of this process in MiB (`getrusage`).
pub fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) == 0 {
            u.ru_maxrss as f64 / 1024.0
        } else {
            f64::NAN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::median;

    #[test]
    fn every_cheap_row_runs() {
        let t = Timing { warmup: 0, runs: 1 };
        for (name, images) in [
            ("nms_batched", 0),
            ("anchors_decode", 0),
            ("frcnn_step_synth_student", 4),
            ("paa_step_synth_student", 4),
            ("infer_synth_student", 1),
            ("scale_s400_b1", 1),
            ("distill_step_synth", 4),
            ("distill_pkd_synth", 4),
            ("distill_cwd_synth", 4),
            ("distill_mgd_synth", 4),
            ("distill_fgd_synth", 4),
            ("cls_step_synth", 64),
            ("dml_step_synth", 64),
            ("dcm_step_synth", 64),
            ("simclr_pretrain_step_synth", 64),
        ] {
            let r = run(name, t, None, &Device::Cpu).unwrap();
            assert!(r.median_ms > 0.0 && r.peak_rss_mb > 0.0, "{r:?}");
            assert_eq!(r.images, images, "{name}");
        }
        assert!(run("nope", t, None, &Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("nms_batched"));
    }

    /// Every row has its PyTorch side in tools/bench_torch.py (which CI cannot run: no torch).
    #[test]
    fn every_row_is_in_the_pytorch_script() {
        let py = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_torch.py"),
        )
        .unwrap();
        for (name, _) in ROWS {
            let quoted = format!("\"{name}\"");
            let scaling = name.starts_with("scale_s") && py.contains("\"scale_s\"");
            assert!(
                py.contains(&quoted) || scaling,
                "{name} is not a row of tools/bench_torch.py"
            );
        }
    }

    #[test]
    fn median_averages_the_two_middle_values_of_an_even_count() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
