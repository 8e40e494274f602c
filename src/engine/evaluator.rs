//! Runs a detector over a validation split and evaluates it as the images stream by
//! (hotcoco's `StreamingEval`), keeping the COCO results for `detections.json`.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use hotcoco::types::Annotation;
use serde::Serialize;

use crate::config::InputConfig;
use crate::data::coco::DetectionData;
use crate::data::loader::{DetectionDataset, Loader, Sampler};
use crate::error::Result;
use crate::eval::streaming::StreamingEvaluator;
use crate::eval::EvalSummary;
use crate::models::faster_rcnn::roi_heads::Detections;
use crate::models::faster_rcnn::FasterRcnn;

/// One COCO results record.
#[derive(Debug, Clone, Serialize)]
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

/// COCO results of one image's detections (labels mapped back to category ids).
pub fn to_records(image_id: u64, d: &Detections, data: &DetectionData) -> Vec<ResultRecord> {
    d.boxes
        .iter()
        .zip(&d.scores)
        .zip(&d.labels)
        .filter_map(|((b, &s), &l)| {
            Some(ResultRecord {
                image_id,
                category_id: data.categories.category_id(l as usize)?,
                bbox: [
                    b[0] as f64,
                    b[1] as f64,
                    (b[2] - b[0]) as f64,
                    (b[3] - b[1]) as f64,
                ],
                score: s as f64,
            })
        })
        .collect()
}

/// Predict every image of `data` and evaluate. `limit` evaluates only the first images (a
/// quick check of a teacher, say).
pub fn evaluate(
    model: &FasterRcnn,
    data: &DetectionData,
    input: &InputConfig,
    batch_size: usize,
    device: &Device,
    limit: Option<usize>,
) -> Result<(EvalSummary, Vec<ResultRecord>)> {
    let mut records = data.records.clone();
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
            records,
            input: input.clone(),
            flip_prob: 0.0,
        }),
        batch_size,
        workers: 2,
        prefetch: 2,
        seed: 0,
        device: device.clone(),
    };
    let mut gt = data.gt.dataset.clone();
    if limit.is_some() {
        gt.images.retain(|i| ids.contains(&i.id));
        gt.annotations.retain(|a| ids.contains(&a.image_id));
    }
    let mut stream = StreamingEvaluator::new(&gt)?;
    let mut all = vec![];
    for batch in loader.epoch(0) {
        let batch = batch?;
        let dets = model.predict(&batch)?;
        let mut recs = vec![];
        for (id, d) in batch.image_ids.iter().zip(&dets) {
            recs.extend(to_records(*id, d, data));
        }
        stream.add(
            &batch.image_ids,
            recs.iter().map(|r| r.to_annotation()).collect(),
        )?;
        all.extend(recs);
    }
    Ok((stream.finish()?, all))
}

/// Write COCO results JSON.
pub fn write_results(path: &Path, recs: &[ResultRecord]) -> Result<()> {
    let text = serde_json::to_vec(recs).map_err(|e| crate::Error::msg(e.to_string()))?;
    crate::util::write_atomic(path, &text)
}
