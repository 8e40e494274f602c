//! Evaluation while predictions arrive, through hotcoco's `StreamingEval`: each batch of images
//! is matched as soon as the model has predicted it, so in-training evaluation keeps no
//! detection list and its numbers equal a batch `COCOeval` over the same data.

use std::collections::HashMap;

use hotcoco::types::{Annotation, Dataset, Image};
use hotcoco::{EvalMode, IouType, Params, StreamingEval};

use super::{summarize, EvalSummary};
use crate::error::{Error, Result};

/// A streaming bbox evaluator over a fixed ground truth.
pub struct StreamingEvaluator {
    inner: StreamingEval,
    images: HashMap<u64, Image>,
    gt_by_image: HashMap<u64, Vec<Annotation>>,
}

impl StreamingEvaluator {
    /// Start an evaluation against `gt` (every category gets a slot, as in batch evaluation).
    pub fn new(gt: &Dataset) -> Result<Self> {
        let inner = StreamingEval::new(
            Params::new(IouType::Bbox),
            EvalMode::Coco,
            gt.categories.clone(),
        )
        .map_err(|e| Error::msg(format!("streaming evaluator: {e}")))?;
        let mut gt_by_image: HashMap<u64, Vec<Annotation>> = HashMap::new();
        for a in &gt.annotations {
            gt_by_image.entry(a.image_id).or_default().push(a.clone());
        }
        Ok(Self {
            inner,
            images: gt.images.iter().map(|i| (i.id, i.clone())).collect(),
            gt_by_image,
        })
    }

    /// Match the detections of some images (COCO results records: image_id, category_id,
    /// bbox `x,y,w,h`, score). Every image in `image_ids` counts as seen, with or without
    /// detections.
    pub fn add(&mut self, image_ids: &[u64], dets: Vec<Annotation>) -> Result<()> {
        let mut images = Vec::with_capacity(image_ids.len());
        let mut gts = Vec::new();
        for id in image_ids {
            let im = self.images.get(id).ok_or_else(|| {
                Error::msg(format!(
                    "image id {id} is not in the evaluation ground truth"
                ))
            })?;
            images.push(im.clone());
            gts.extend(self.gt_by_image.get(id).into_iter().flatten().cloned());
        }
        self.inner
            .update(images, gts, dets)
            .map_err(|e| Error::msg(format!("streaming evaluation: {e}")))
    }

    /// Accumulate and summarise what was added.
    pub fn finish(self) -> Result<EvalSummary> {
        let mut ev = self.inner.finalize();
        summarize(&mut ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::coco::{load_detections, load_ground_truth, Purpose};
    use std::path::PathBuf;

    #[test]
    fn streaming_equals_batch_on_every_fixture() {
        let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval");
        for name in crate::eval::tests::cases() {
            let gt_file = d.join(format!("{name}.gt.json"));
            let gt = load_ground_truth(&gt_file, Purpose::Eval).unwrap();
            let dets =
                load_detections(&d.join(format!("{name}.dt.json")), &gt.dataset, &gt_file).unwrap();
            let batch = crate::eval::evaluate(gt.dataset.clone(), dets.clone()).unwrap();
            let mut s = StreamingEvaluator::new(&gt.dataset).unwrap();
            // Feed images in reverse order, two at a time.
            let ids: Vec<u64> = gt.dataset.images.iter().rev().map(|i| i.id).collect();
            for chunk in ids.chunks(2) {
                let mine = dets
                    .iter()
                    .filter(|a| chunk.contains(&a.image_id))
                    .cloned()
                    .collect();
                s.add(chunk, mine).unwrap();
            }
            let streamed = s.finish().unwrap();
            assert_eq!(streamed.stats, batch.stats, "{name}");
            assert_eq!(streamed.per_class, batch.per_class, "{name}");
        }
    }
}
