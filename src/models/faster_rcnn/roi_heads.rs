//! RoI heads as torchvision's `RoIHeads` with `TwoMLPHead` and `FastRCNNPredictor`
//! (`models/detection/roi_heads.py`): MultiScaleRoIAlign (7×7, sampling ratio 2) on P2–P5, two
//! fully connected layers with ReLU, class logits and class-specific box deltas (weights
//! 10, 10, 5, 5). Training adds the ground truth to the proposals, matches at IoU 0.5 and samples
//! 512 RoIs per image (a quarter positive at most); inference decodes every class, drops
//! background, low scores (≤ 0.05) and tiny boxes, runs per-class NMS (0.5) and keeps 100.

use candle_core::{Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use rand::Rng;

use super::config::RoiHeadsConfig;
use super::losses::{cross_entropy_mean, smooth_l1_sum};
use crate::data::loader::Target;
use crate::models::contract::Detections;
use crate::ops::boxes::{clip_to_image, iou_matrix, is_large_enough, Box4, BoxCoder};
use crate::ops::matcher::{sample_balanced, Match, Matcher};
use crate::ops::nms::batched_nms;
use crate::ops::relu::relu;
use crate::ops::roi_align::multi_scale_roi_align;

/// torchvision's RoI heads drop detections smaller than this (pixels).
const MIN_SIZE: f32 = 1e-2;
/// Smooth-L1 β of torchvision's box head loss.
const BETA: f64 = 1.0 / 9.0;

fn linear(vb: VarBuilder, cin: usize, cout: usize) -> candle_core::Result<Linear> {
    // nn.Linear's default init: U(±1/sqrt(fan_in)).
    let b = 1.0 / (cin as f64).sqrt();
    let w = vb.get_with_hints((cout, cin), "weight", Init::Uniform { lo: -b, up: b })?;
    let bias = vb.get_with_hints(cout, "bias", Init::Uniform { lo: -b, up: b })?;
    Ok(Linear::new(w, Some(bias)))
}

/// The sampled RoIs of a training batch, with their targets.
pub struct SampledRois {
    pub rois: Vec<Vec<Box4>>,
    /// Per RoI (all images, in order): label (0 = background).
    pub labels: Vec<u32>,
    /// Per RoI: encoded regression target (meaningful for positives).
    pub targets: Vec<[f32; 4]>,
}

#[derive(Debug, Clone)]
pub struct RoiHeads {
    fc6: Linear,
    fc7: Linear,
    cls_score: Linear,
    bbox_pred: Linear,
    pub coder: BoxCoder,
    pub cfg: RoiHeadsConfig,
    pub num_classes: usize,
}

/// Box head outputs for a set of RoIs: class logits `K × C` and deltas `K × 4C`.
pub struct BoxHeadOutput {
    pub class_logits: Tensor,
    pub box_regression: Tensor,
}

impl RoiHeads {
    /// `num_classes` includes background.
    pub fn new(
        vb: VarBuilder,
        cfg: &RoiHeadsConfig,
        channels: usize,
        num_classes: usize,
    ) -> candle_core::Result<Self> {
        let rep = cfg.representation_size;
        let head = vb.pp("box_head");
        let pred = vb.pp("box_predictor");
        Ok(Self {
            fc6: linear(
                head.pp("fc6"),
                channels * cfg.pool_size * cfg.pool_size,
                rep,
            )?,
            fc7: linear(head.pp("fc7"), rep, rep)?,
            cls_score: linear(pred.pp("cls_score"), rep, num_classes)?,
            bbox_pred: linear(pred.pp("bbox_pred"), rep, num_classes * 4)?,
            coder: BoxCoder::new(cfg.bbox_reg_weights),
            cfg: cfg.clone(),
            num_classes,
        })
    }

    /// Pool, run the box head and predictor on `rois` (per image).
    pub fn head(
        &self,
        features: &[Tensor],
        scales: &[f32],
        rois: &[Vec<Box4>],
    ) -> candle_core::Result<BoxHeadOutput> {
        let pooled = multi_scale_roi_align(
            &features[..4],
            &scales[..4],
            rois,
            self.cfg.pool_size,
            self.cfg.sampling_ratio,
        )?;
        let x = pooled.flatten_from(1)?;
        let x = relu(&self.fc6.forward(&x)?)?;
        let x = relu(&self.fc7.forward(&x)?)?;
        Ok(BoxHeadOutput {
            class_logits: self.cls_score.forward(&x)?,
            box_regression: self.bbox_pred.forward(&x)?,
        })
    }

    /// Proposals + ground truth, matched and sampled (torchvision's `select_training_samples`).
    pub fn sample(
        &self,
        proposals: &[Vec<Box4>],
        targets: &[Target],
        rng: &mut impl Rng,
    ) -> SampledRois {
        let matcher = Matcher {
            high: self.cfg.fg_iou_thresh,
            low: self.cfg.bg_iou_thresh,
            allow_low_quality: false,
        };
        let mut out = SampledRois {
            rois: vec![],
            labels: vec![],
            targets: vec![],
        };
        for (props, t) in proposals.iter().zip(targets) {
            let mut cand = props.clone();
            cand.extend(t.boxes.iter().copied());
            let m = matcher.matches(&iou_matrix(&t.boxes, &cand), t.boxes.len(), cand.len());
            let (pos, neg) = sample_balanced(
                &m,
                self.cfg.batch_size_per_image,
                self.cfg.positive_fraction,
                rng,
            );
            let mut rois = vec![];
            for &i in pos.iter().chain(&neg) {
                rois.push(cand[i]);
                match m[i] {
                    Match::Gt(g) => {
                        out.labels.push(t.labels[g]);
                        out.targets.push(self.coder.encode(&t.boxes[g], &cand[i]));
                    }
                    _ => {
                        out.labels.push(0);
                        out.targets.push([0.0; 4]);
                    }
                }
            }
            out.rois.push(rois);
        }
        out
    }

    /// Classification and box losses (torchvision's `fastrcnn_loss`).
    pub fn losses(
        &self,
        out: &BoxHeadOutput,
        s: &SampledRois,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let dev = out.class_logits.device();
        let k = s.labels.len();
        let labels = Tensor::from_vec(s.labels.clone(), k, dev)?;
        let cls = cross_entropy_mean(&out.class_logits, &labels)?;
        let pos: Vec<usize> = (0..k).filter(|&i| s.labels[i] > 0).collect();
        let box_loss = if pos.is_empty() {
            (out.box_regression.sum_all()? * 0.0)?
        } else {
            // The deltas of each positive's own class: columns 4·label .. 4·label + 4.
            let idx: Vec<u32> = pos
                .iter()
                .flat_map(|&i| {
                    (0..4).map(move |j| (i * 4 * self.num_classes) as u32 + 4 * s.labels[i] + j)
                })
                .collect();
            let pred = out
                .box_regression
                .flatten_all()?
                .index_select(&Tensor::from_vec(idx, pos.len() * 4, dev)?, 0)?;
            let tgt: Vec<f32> = pos.iter().flat_map(|&i| s.targets[i]).collect();
            let tgt = Tensor::from_vec(tgt, pos.len() * 4, dev)?.to_dtype(pred.dtype())?;
            (smooth_l1_sum(&pred, &tgt, BETA)? / k as f64)?
        };
        Ok((cls, box_loss))
    }

    /// torchvision's `postprocess_detections`.
    pub fn postprocess(
        &self,
        out: &BoxHeadOutput,
        rois: &[Vec<Box4>],
        image_sizes: &[(usize, usize)],
    ) -> candle_core::Result<Vec<Detections>> {
        let probs = candle_nn::ops::softmax(
            &out.class_logits.to_dtype(candle_core::DType::F32)?,
            D::Minus1,
        )?
        .to_vec2::<f32>()?;
        let regs = out
            .box_regression
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let c = self.num_classes;
        let mut row = 0;
        let mut dets = vec![];
        for (props, &size) in rois.iter().zip(image_sizes) {
            let (mut boxes, mut scores, mut labels) = (vec![], vec![], vec![]);
            for p in props {
                for cl in 1..c {
                    let s = probs[row][cl];
                    let d = &regs[row][4 * cl..4 * cl + 4];
                    let mut b = self.coder.decode(&[d[0], d[1], d[2], d[3]], p);
                    clip_to_image(&mut b, size);
                    if s > self.cfg.score_thresh && is_large_enough(&b, MIN_SIZE) {
                        boxes.push(b);
                        scores.push(s);
                        labels.push(cl);
                    }
                }
                row += 1;
            }
            let mut keep = batched_nms(&boxes, &scores, &labels, self.cfg.nms_thresh);
            keep.truncate(self.cfg.detections_per_img);
            dets.push(Detections {
                boxes: keep.iter().map(|&k| boxes[k]).collect(),
                scores: keep.iter().map(|&k| scores[k]).collect(),
                labels: keep.iter().map(|&k| labels[k] as u32).collect(),
            });
        }
        Ok(dets)
    }
}
