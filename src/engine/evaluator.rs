//! Runs a model over a validation split and evaluates what it predicts: detections against a
//! COCO ground truth as the images stream by (hotcoco's `StreamingEval`), class probabilities
//! against an ImageFolder split (top-1 / top-5, per class, per frequency group:
//! `eval::classify`). Nothing here names a model family: the split and the model's
//! [`Predictions`] decide, and a mismatch (a classifier on detection data) is an error saying so.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use hotcoco::types::Annotation;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::loader::{DetectionDataset, Loader, Sampler};
use crate::data::transforms::InputConfig;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::eval::classify::{ClassPrediction, ClassSummary};
use crate::eval::representation::RepresentationPredictions;
use crate::eval::streaming::StreamingEvaluator;
use crate::eval::EvalSummary;
use crate::models::contract::{CocoBox, Model};

/// One COCO results record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub image_id: u64,
    pub category_id: u64,
    /// `x, y, w, h`.
    pub bbox: [f64; 4],
    pub score: f64,
}

impl ResultRecord {
    pub fn to_annotation(&self) -> Annotation {
        Annotation {
            image_id: self.image_id,
            category_id: self.category_id,
            bbox: Some(self.bbox),
            score: Some(self.score),
            ..Default::default()
        }
    }
}

impl ResultRecord {
    pub fn new(image_id: u64, b: CocoBox) -> Self {
        Self {
            image_id,
            category_id: b.category_id,
            bbox: b.bbox,
            score: b.score,
        }
    }
}

/// What an evaluation measured.
#[derive(Debug, Clone)]
pub enum Evaluation {
    /// COCO bbox AP (detectors).
    Detection(EvalSummary),
    /// Accuracy (classifiers).
    Classification(ClassSummary),
}

impl Evaluation {
    /// Named numbers for the metrics log (`AP`, … or `top1`, …).
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        match self {
            Evaluation::Detection(s) => s.named(),
            Evaluation::Classification(s) => s.named(),
        }
    }

    /// The number a quality check compares: AP, or top-1 accuracy.
    pub fn primary(&self) -> f64 {
        match self {
            Evaluation::Detection(s) => s.stats[0],
            Evaluation::Classification(s) => s.top1,
        }
    }

    /// The name of [`primary`](Self::primary).
    pub fn primary_name(&self) -> &'static str {
        match self {
            Evaluation::Detection(_) => "AP",
            Evaluation::Classification(_) => "top-1",
        }
    }

    /// One line: `bbox AP … AP50 … AP75 …` or `top-1 … top-5 …`.
    pub fn headline(&self) -> String {
        match self {
            Evaluation::Detection(s) => format!(
                "bbox AP {:.4}  AP50 {:.4}  AP75 {:.4}",
                s.stats[0], s.stats[1], s.stats[2]
            ),
            Evaluation::Classification(s) => s.headline(),
        }
    }

    pub fn to_text(&self, per_class: bool) -> String {
        match self {
            Evaluation::Detection(s) => s.to_text(per_class),
            Evaluation::Classification(s) => s.to_text(per_class),
        }
    }

    pub fn to_json(&self) -> String {
        match self {
            Evaluation::Detection(s) => s.to_json(),
            Evaluation::Classification(s) => serde_json::to_string(s).expect("summary serialises"),
        }
    }
}

/// What a model predicted on a split, as written beside a run.
#[derive(Debug, Clone)]
pub enum Predicted {
    Detections(Vec<ResultRecord>),
    Classes(Vec<ClassPrediction>),
}

impl Predicted {
    /// `detections.json` (COCO results) or `predictions.json`.
    pub fn file_name(&self) -> &'static str {
        match self {
            Predicted::Detections(_) => "detections.json",
            Predicted::Classes(_) => "predictions.json",
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = match self {
            Predicted::Detections(r) => serde_json::to_vec(r),
            Predicted::Classes(c) => serde_json::to_vec(c),
        }
        .map_err(|e| Error::msg(e.to_string()))?;
        crate::util::write_atomic(path, &text)
    }
}

/// Predict every image of `data` and evaluate. `limit` evaluates only the first images (a
/// quick check of a teacher, say). `train_counts` (training images per class, in label order;
/// empty when unknown) gives classification its frequency groups.
pub fn evaluate(
    model: &dyn Model,
    data: &Split,
    input: &InputConfig,
    batch_size: usize,
    device: &Device,
    limit: Option<usize>,
    train_counts: &[usize],
) -> Result<(Evaluation, Predicted)> {
    let mut records = data.records().to_vec();
    if let Some(n) = limit {
        records.truncate(n);
    }
    let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
    let loader = Loader {
        sampler: Sampler::Instance {
            n: records.len(),
            shuffle: false,
        },
        dataset: Arc::new(DetectionDataset {
            records: records.clone(),
            input: input.clone(),
            flip_prob: 0.0,
            color_jitter: 0.0,
            views: None,
        }),
        batch_size,
        workers: 2,
        prefetch: 2,
        seed: 0,
        device: device.clone(),
    };
    match data {
        Split::Detection(d) => {
            let mut gt = d.gt.dataset.clone();
            if limit.is_some() {
                gt.images.retain(|i| ids.contains(&i.id));
                gt.annotations.retain(|a| ids.contains(&a.image_id));
            }
            let mut stream = StreamingEvaluator::new(&gt)?;
            let mut all = vec![];
            for batch in loader.epoch(0) {
                let batch = batch?;
                let dets = model.predict(&batch)?.into_detections()?;
                let mut recs = vec![];
                for (id, d) in batch.image_ids.iter().zip(&dets) {
                    let boxes = d.to_coco(&data.categories().ids, f32::NEG_INFINITY)?;
                    recs.extend(boxes.into_iter().map(|b| ResultRecord::new(*id, b)));
                }
                stream.add(
                    &batch.image_ids,
                    recs.iter().map(|r| r.to_annotation()).collect(),
                )?;
                all.extend(recs);
            }
            Ok((
                Evaluation::Detection(stream.finish()?),
                Predicted::Detections(all),
            ))
        }
        Split::Classification(c) => {
            let by_id: std::collections::HashMap<u64, &crate::data::coco::ImageRecord> =
                records.iter().map(|r| (r.id, r)).collect();
            let mut preds = vec![];
            for batch in loader.epoch(0) {
                let batch = batch?;
                let probs = model.predict(&batch)?.into_classes()?;
                for (id, p) in batch.image_ids.iter().zip(probs) {
                    let rec = by_id[id];
                    if p.len() != c.categories.len() {
                        return Err(Error::msg(format!(
                            "the model scores {} classes, the split {} has {}",
                            p.len(),
                            c.root.display(),
                            c.categories.len()
                        )));
                    }
                    let mut order: Vec<usize> = (0..p.len()).collect();
                    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
                    order.truncate(5);
                    preds.push(ClassPrediction {
                        file: rec
                            .path
                            .strip_prefix(&c.root)
                            .unwrap_or(&rec.path)
                            .display()
                            .to_string(),
                        label: rec.labels.first().copied().unwrap_or(0),
                        top5: order.iter().map(|&k| k as u32 + 1).collect(),
                        scores: order.iter().map(|&k| p[k]).collect(),
                    });
                }
            }
            let s = ClassSummary::new(&preds, &c.categories.names, &c.categories.ids, train_counts);
            Ok((Evaluation::Classification(s), Predicted::Classes(preds)))
        }
    }
}

/// For a classifier on ImageFolder data: add k-NN and linear-probe top-1 of its frozen `pool`
/// features (training split labeled, val split queried; `eval::representation`) to `e`, and
/// return their per-image predictions. Detection runs are left as they are (`None`).
pub fn add_representation(
    e: &mut Evaluation,
    model: &dyn Model,
    run: &crate::engine::method::RunData,
    input: &InputConfig,
) -> Result<Option<RepresentationPredictions>> {
    let (
        Evaluation::Classification(s),
        Split::Classification(train),
        Some(Split::Classification(val)),
    ) = (e, &run.train, &run.val)
    else {
        return Ok(None);
    };
    let (summary, preds) = crate::eval::representation::evaluate_representation(
        model,
        train,
        val,
        input,
        64,
        &run.device,
    )?;
    s.representation = Some(summary);
    Ok(Some(preds))
}

/// The files of the k-NN's and the linear probe's predictions in a run folder (`eval.json`'s
/// `representation`).
pub const REPRESENTATION_FILES: [(&str, &str); 2] = [
    ("knn", "knn_predictions.json"),
    ("probe", "probe_predictions.json"),
];

/// Write the representation's predictions into `out` ([`REPRESENTATION_FILES`]).
pub fn write_representation(out: &Path, p: &RepresentationPredictions) -> Result<()> {
    for ((_, file), preds) in REPRESENTATION_FILES.iter().zip([&p.knn, &p.probe]) {
        Predicted::Classes(preds.clone()).write(&out.join(file))?;
    }
    Ok(())
}

/// Write COCO results JSON.
pub fn write_results(path: &Path, recs: &[ResultRecord]) -> Result<()> {
    Predicted::Detections(recs.to_vec()).write(path)
}

/// A run's `eval.json`: what it was evaluated on and where its predictions are, for `kdet
/// compare` (`task`: `detection` or `classification`; a classification run also records its
/// training images per class, which define the frequency groups).
pub fn eval_json(
    split: &Split,
    e: &Evaluation,
    predictions: &str,
    iter: u64,
    train_counts: &[usize],
) -> serde_json::Value {
    let gt = std::fs::canonicalize(split.truth()).unwrap_or_else(|_| split.truth().to_path_buf());
    match e {
        Evaluation::Detection(s) => {
            json!({"gt": gt, "detections": predictions, "iter": iter, "stats": s.stats, "per_class": s.per_class})
        }
        Evaluation::Classification(s) => {
            let mut v = json!({
                "task": "classification", "gt": gt, "predictions": predictions, "iter": iter,
                "train_counts": train_counts, "summary": s,
            });
            if s.representation.is_some() {
                v["representation"] = REPRESENTATION_FILES
                    .iter()
                    .map(|(k, f)| (k.to_string(), json!(f)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            v
        }
    }
}
