//! Runs a detector over a validation split and evaluates it as the images stream by
//! (hotcoco's `StreamingEval`), keeping the COCO results for `detections.json`.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use hotcoco::types::Annotation;
use serde::Serialize;

use crate::data::coco::DetectionData;
use crate::data::loader::{DetectionDataset, Loader, Sampler};
use crate::data::transforms::InputConfig;
use crate::error::Result;
use crate::eval::streaming::StreamingEvaluator;
use crate::eval::EvalSummary;
use crate::models::contract::{CocoBox, Model};

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

/// Predict every image of `data` and evaluate. `limit` evaluates only the first images (a
/// quick check of a teacher, say).
pub fn evaluate(
    model: &dyn Model,
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
        let dets = model.predict(&batch)?.into_detections()?;
        let mut recs = vec![];
        for (id, d) in batch.image_ids.iter().zip(&dets) {
            let boxes = d.to_coco(&data.categories.ids, f32::NEG_INFINITY)?;
            recs.extend(boxes.into_iter().map(|b| ResultRecord::new(*id, b)));
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
