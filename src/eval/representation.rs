//! Representation evaluation of a classifier's frozen features (the `pool` tap: the encoder
//! output, what SimCLR's linear evaluation reads), with the labeled training split as the
//! labeled set and the val split as queries:
//!
//! - **k-NN top-1** (weighted voting, Wu et al. 2018 "InstDisc" §3.4 and the monitors built on
//!   it, e.g. DINO's `eval_knn.py`): features L2-normalised, the k training images of highest
//!   cosine similarity `s` each vote for their class with weight `exp(s / T)`; k = 20 and
//!   T = 0.07 (DINO reports k = 20 with T = 0.07; InstDisc uses k = 200 on ImageNet — with a few
//!   hundred training images k = 200 is most of the set). k is capped at the training images.
//! - **Linear probe top-1**: an ℓ2-regularised multinomial logistic regression on the frozen,
//!   standardised features, without augmentation — SimCLR's transfer protocol (Appendix B.8:
//!   L-BFGS on features of the frozen network); kdet minimises the same convex objective with
//!   full-batch Adam (500 steps, lr 0.01) from zero weights, so it is deterministic. λ = 1e-4
//!   (SimCLR picks λ on a validation split from 45 values; kdet fixes it).
//!
//! Both report their predictions as [`ClassPrediction`]s and score them like the classifier's
//! own.

use std::sync::Arc;

#[cfg(test)]
use candle_core::D;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use serde::{Deserialize, Serialize};

use super::classify::{ClassPrediction, ClassSummary};
use crate::data::coco::ImageRecord;
use crate::data::folder::ClassificationData;
use crate::data::loader::{DetectionDataset, Loader, Sampler};
use crate::data::transforms::InputConfig;
use crate::error::{Error, Result};
use crate::models::contract::Model;

/// k of the k-NN vote (DINO's reported setting).
pub const KNN_K: usize = 20;
/// T of the vote's weights `exp(s / T)` (InstDisc, DINO).
pub const KNN_T: f64 = 0.07;
/// λ of the linear probe's ℓ2 term `λ/2 ‖W‖²`.
pub const PROBE_L2: f64 = 1e-4;
const PROBE_STEPS: usize = 500;
const PROBE_LR: f64 = 0.01;

/// What the representation evaluation measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RepresentationSummary {
    /// The tap whose features were evaluated.
    pub feature: String,
    /// Labeled training images (the k-NN memory, the probe's training set).
    pub train_images: usize,
    pub knn_k: usize,
    pub knn_temperature: f64,
    pub knn_top1: f64,
    pub probe_top1: f64,
}

/// Frozen features (`tap`, one row per image, eval mode) of `records`, in order.
pub fn features(
    model: &dyn Model,
    records: &[ImageRecord],
    input: &InputConfig,
    tap: &str,
    batch_size: usize,
    device: &Device,
) -> Result<Tensor> {
    let loader = Loader {
        sampler: Sampler::Instance {
            n: records.len(),
            shuffle: false,
        },
        dataset: Arc::new(DetectionDataset {
            records: records.to_vec(),
            input: input.clone(),
            flip_prob: 0.0,
            color_jitter: 0.0,
            views: None,
        }),
        batch_size: batch_size.max(1),
        workers: 2,
        prefetch: 2,
        seed: 0,
        device: device.clone(),
    };
    let mut rows = vec![];
    for b in loader.epoch(0) {
        let b = b?;
        let fwd = model.forward(&b.images, false)?;
        let f = fwd.taps.get(tap).ok_or_else(|| {
            Error::msg(format!(
                "the model has no `{tap}` tap to evaluate features on"
            ))
        })?;
        // Frozen: without `detach` every probe step would backpropagate through the network's
        // whole forward of every batch.
        rows.push(f.detach().to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// The five best classes of each row of `scores` (`M × K`), as predictions of images with
/// true labels `labels` (1-based) and names `files`.
fn top5(scores: &Tensor, labels: &[u32], files: &[String]) -> Result<Vec<ClassPrediction>> {
    let s = scores.to_vec2::<f32>()?;
    Ok(s.iter()
        .zip(labels)
        .zip(files)
        .map(|((row, &label), file)| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order.truncate(5);
            ClassPrediction {
                file: file.clone(),
                label,
                top5: order.iter().map(|&k| k as u32 + 1).collect(),
                scores: order.iter().map(|&k| row[k]).collect(),
            }
        })
        .collect())
}

/// Weighted k-NN class scores of `query` (`M × d`) against `train` (`N × d`) with 1-based
/// `train_labels` of `classes` classes: for each query, `Σ_{j ∈ top-k} exp(cos(q, t_j)/T)` per
/// class (module doc).
pub fn knn_scores(
    train: &Tensor,
    train_labels: &[u32],
    query: &Tensor,
    classes: usize,
    k: usize,
    t: f64,
) -> Result<Tensor> {
    let norm = |x: &Tensor| crate::models::classifier::l2_normalize(x);
    let sim = norm(query)?.matmul(&norm(train)?.t()?)?.to_vec2::<f32>()?;
    let k = k.min(train_labels.len()).max(1);
    let mut out = vec![0f32; sim.len() * classes];
    for (q, row) in sim.iter().enumerate() {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        // Highest similarity first; ties to the earlier training image.
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &j in &idx[..k] {
            let c = train_labels[j] as usize - 1;
            out[q * classes + c] += ((row[j] as f64) / t).exp() as f32;
        }
    }
    Ok(Tensor::from_vec(out, (sim.len(), classes), &Device::Cpu)?)
}

/// Linear-probe class scores (logits) of `query` after fitting the probe on `train` (module
/// doc). Features are standardised with the training set's mean and std.
pub fn probe_scores(
    train: &Tensor,
    train_labels: &[u32],
    query: &Tensor,
    classes: usize,
) -> Result<Tensor> {
    let (_, d) = train.dims2()?;
    let dev = Device::Cpu;
    let mean = train.mean_keepdim(0)?;
    let std = (train.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)? + 1e-6)?.sqrt()?;
    let x = train.broadcast_sub(&mean)?.broadcast_div(&std)?;
    let xq = query.broadcast_sub(&mean)?.broadcast_div(&std)?;
    let y: Vec<u32> = train_labels.iter().map(|l| l - 1).collect();
    let y = Tensor::from_vec(y, train_labels.len(), &dev)?;
    let w = Var::zeros((d, classes), DType::F32, &dev)?;
    let b = Var::zeros(classes, DType::F32, &dev)?;
    let mut opt = candle_nn::AdamW::new(
        vec![w.clone(), b.clone()],
        candle_nn::ParamsAdamW {
            lr: PROBE_LR,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for _ in 0..PROBE_STEPS {
        let logits = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
        let ce = candle_nn::loss::cross_entropy(&logits, &y)?;
        let l2 = (w.as_tensor().sqr()?.sum_all()? * (PROBE_L2 / 2.0))?;
        opt.backward_step(&(ce + l2)?)?;
    }
    Ok(xq.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?)
}

/// The per-image predictions of the k-NN and the linear probe (`ClassPrediction`s, scored like
/// a classifier's own), for `kdet compare`'s paired intervals.
#[derive(Debug, Clone)]
pub struct RepresentationPredictions {
    pub knn: Vec<ClassPrediction>,
    pub probe: Vec<ClassPrediction>,
}

/// k-NN and linear-probe top-1 of `model`'s `pool` features: `train`'s labeled images are the
/// labeled set, `val`'s the queries; with each image's predictions.
pub fn evaluate_representation(
    model: &dyn Model,
    train: &ClassificationData,
    val: &ClassificationData,
    input: &InputConfig,
    batch_size: usize,
    device: &Device,
) -> Result<(RepresentationSummary, RepresentationPredictions)> {
    let tap = "pool";
    let labeled: Vec<ImageRecord> = train
        .records
        .iter()
        .filter(|r| r.labels.len() == 1)
        .cloned()
        .collect();
    if labeled.is_empty() {
        return Err(Error::msg(format!(
            "{}: no labeled training images for the k-NN and the linear probe",
            train.root.display()
        )));
    }
    let classes = train.categories.len();
    let ft = features(model, &labeled, input, tap, batch_size, device)?;
    let fq = features(model, &val.records, input, tap, batch_size, device)?;
    let tl: Vec<u32> = labeled.iter().map(|r| r.labels[0]).collect();
    let ql: Vec<u32> = val
        .records
        .iter()
        .map(|r| r.labels.first().copied().unwrap_or(0))
        .collect();
    let files: Vec<String> = val
        .records
        .iter()
        .map(|r| {
            r.path
                .strip_prefix(&val.root)
                .unwrap_or(&r.path)
                .display()
                .to_string()
        })
        .collect();
    let names = &val.categories.names;
    let ids = &val.categories.ids;
    let top1 = |p: &[ClassPrediction]| ClassSummary::new(p, names, ids, &[]).top1;
    let knn = top5(
        &knn_scores(&ft, &tl, &fq, classes, KNN_K, KNN_T)?,
        &ql,
        &files,
    )?;
    let probe = top5(&probe_scores(&ft, &tl, &fq, classes)?.detach(), &ql, &files)?;
    Ok((
        RepresentationSummary {
            feature: tap.into(),
            train_images: labeled.len(),
            knn_k: KNN_K.min(labeled.len()),
            knn_temperature: KNN_T,
            knn_top1: top1(&knn),
            probe_top1: top1(&probe),
        },
        RepresentationPredictions { knn, probe },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argmax_rows(t: &Tensor) -> Result<Vec<u32>> {
        Ok(t.argmax(D::Minus1)?.to_vec1::<u32>()?)
    }

    /// The features carry no autograd graph: the probe's 500 steps must not backpropagate
    /// through the network (they did, taking minutes for a few hundred images).
    #[test]
    fn features_are_frozen() {
        let d = tempfile::tempdir().unwrap();
        for (c, i) in [("a", 0), ("a", 1), ("b", 0)] {
            let p = d.path().join(format!("{c}/{i}.png"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            image::RgbImage::from_pixel(8, 8, image::Rgb([i * 90, 40, 200]))
                .save(&p)
                .unwrap();
        }
        let data = crate::data::folder::load_folder(d.path(), None).unwrap();
        let cfg: crate::models::config::ModelConfig = serde_json::from_value(serde_json::json!({
            "arch": "classifier",
            "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
            "input": {"min_size": 16, "max_size": 16}}))
        .unwrap();
        let net = crate::models::build::Network::new(&cfg, 2, 0, &Device::Cpu).unwrap();
        let f = features(
            &*net.model,
            &data.records,
            cfg.input(),
            "pool",
            2,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(f.dims()[0], 3);
        assert!(!f.track_op(), "the features hold the network's graph");
    }

    #[test]
    fn knn_votes_by_hand() {
        let d = Device::Cpu;
        // Training points: class 1 at angles near 0°, class 2 near 90°, one class-2 outlier
        // near 0°.
        let train = Tensor::new(
            &[[1f32, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 0.05]],
            &d,
        )
        .unwrap();
        let labels = [1, 1, 2, 2, 2];
        let q = Tensor::new(&[[1f32, 0.0], [0.0, 2.0]], &d).unwrap();
        // k = 3, query 0: neighbours 0 (cos 1), 4 (cos ≈ 0.99875), 1 (cos ≈ 0.99504).
        let s = knn_scores(&train, &labels, &q, 2, 3, 0.07)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let c = |x: f64, y: f64| x / (x * x + y * y).sqrt();
        let w = |cos: f64| (cos / 0.07).exp();
        let want1 = w(1.0) + w(c(1.0, 0.1));
        let want2 = w(c(1.0, 0.05));
        assert!(
            ((s[0][0] as f64) - want1).abs() < 1e-3 * want1,
            "{:?}",
            s[0]
        );
        assert!(
            ((s[0][1] as f64) - want2).abs() < 1e-3 * want2,
            "{:?}",
            s[0]
        );
        // Query 1 (class 2's direction; length does not matter): its 3 nearest are 2, 3 and
        // the class-1 point 1 (cos ≈ 0.0995) — class 2 wins.
        assert!(s[1][1] > s[1][0]);
        assert!(((s[1][0] as f64) - w(c(0.1, 1.0))).abs() < 1e-3);
        // k = 1 is the nearest neighbour's class; k larger than the set is capped.
        let s1 = knn_scores(&train, &labels, &q, 2, 1, 0.07).unwrap();
        assert_eq!(argmax_rows(&s1).unwrap(), [0, 1]);
        let all = knn_scores(&train, &labels, &q, 2, 99, 0.07).unwrap();
        assert_eq!(all.dims(), [2, 2]);
    }

    #[test]
    fn probe_separates_separable_classes() {
        let d = Device::Cpu;
        let pts: Vec<f32> = (0..40)
            .flat_map(|i| {
                let c = (i % 2) as f32;
                [
                    c * 2.0 - 1.0 + (i as f32 * 0.37).sin() * 0.3,
                    (i as f32 * 0.11).cos(),
                ]
            })
            .collect();
        let x = Tensor::from_vec(pts, (40, 2), &d).unwrap();
        let labels: Vec<u32> = (0..40).map(|i| (i % 2) as u32 + 1).collect();
        let s = probe_scores(&x, &labels, &x, 2).unwrap();
        let pred = argmax_rows(&s).unwrap();
        let hits = pred
            .iter()
            .zip(&labels)
            .filter(|(p, l)| **p + 1 == **l)
            .count();
        assert_eq!(hits, 40);
        // Deterministic.
        let s2 = probe_scores(&x, &labels, &x, 2).unwrap();
        assert_eq!(s.to_vec2::<f32>().unwrap(), s2.to_vec2::<f32>().unwrap());
    }
}
