//! PAA (Kim & Lee, ECCV 2020, "Probabilistic Anchor Assignment with IoU Prediction for Object
//! Detection"), as mmdetection implements it (`mmdet/models/dense_heads/paa_head.py`,
//! `configs/paa/paa_r50_fpn_1x_coco.py`): ResNet + FPN P3–P7 ([`neck`]) + ATSS-style head with an
//! IoU branch ([`head`]), one anchor per location, the probabilistic anchor assignment
//! ([`assign`]) and its three losses: sigmoid focal loss over all anchors, GIoU on the positives
//! weighted by their predicted boxes' IoU, and BCE of the IoU branch against that IoU.
//! Inference scores `sqrt(cls · iou)`, keeps the top 1000 per level, runs class-wise NMS at 0.6
//! and score voting.
//!
//! State-dict names are mmdetection's (`backbone.layer1.0.conv1.weight`,
//! `neck.lateral_convs.0.conv.weight`, `bbox_head.cls_convs.0.gn.weight`, …), so its
//! checkpoints load as they are (docs/methods.md has the recipe). An assignment handed over by
//! another network (LAD's teacher, Co-LAD's shared one) is trained on with LADHead's loss: GIoU
//! unweighted, averaged over the positives (`mmdet/models/dense_heads/lad_head.py`).

pub mod assign;
pub mod config;
pub mod head;
pub mod neck;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::data::loader::Batch;
use crate::data::transforms::InputConfig;
use crate::error::{invalid, Check, Result};
use crate::ops::boxes::Box4;
use crate::ops::conv::ConvImpl;
use crate::ops::nms::batched_nms;

use super::backbone::{tap_specs, BackboneConfig};
use super::config::{Family, ModelConfig};
use super::contract::{
    Assignment, ClassScores, CostAssignment, Detections, Forward, Head, HeadOutput,
    ImageCandidates, Loss, LossKind, Model, Predictions, StepRng, TapSpec, TrainOutput, Want,
};
use super::resnet::{in_frozen_stage, ResNet};
use assign::{CostWeights, STDS};
pub use config::PaaConfig;
use head::{DenseOutputs, PaaHead};
use neck::Neck;

/// The family name under `arch`.
const FAMILY: &str = "paa";
/// Strides of P3..P7 (mmdetection's `strides=[8, 16, 32, 64, 128]`).
pub const STRIDES: [usize; 5] = [8, 16, 32, 64, 128];
/// `weight_reduce_loss` adds `torch.finfo(float32).eps` to every average's divisor.
const AVG_EPS: f64 = f32::EPSILON as f64;
/// `PAAHead`'s clamp of the IoU weights of the box loss.
const IOU_WEIGHT_MIN: f32 = 1e-12;
/// Score voting: candidates need IoU above this with the kept box (`PAAHead.score_voting`).
const VOTE_MIN_IOU: f32 = 0.01;
/// Score voting's σ: weights `exp(−(1 − IoU)² / σ) · score`.
const VOTE_SIGMA: f32 = 0.025;

#[derive(Debug, Clone)]
pub struct Paa {
    pub backbone: ResNet,
    pub neck: Neck,
    pub head: PaaHead,
    pub cfg: PaaConfig,
    /// Foreground classes (sigmoid; no background channel).
    pub num_classes: usize,
    frozen_stages: usize,
    dtype: DType,
}

/// What the forward pass keeps for the assignment and the losses.
struct PaaForward {
    out: DenseOutputs,
    /// One image's anchors (all images share them) and per-level counts.
    anchors: Vec<Box4>,
    counts: Vec<usize>,
}

/// One image's assignment: per anchor its label (`num_classes` = background) and whether it
/// counts at all (valid), and the positives with their boxes.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageAssignment {
    pub labels: Vec<u32>,
    pub valid: Vec<bool>,
    /// `(anchor, box)` pairs, by anchor.
    pub positives: Vec<(usize, usize)>,
    pub boxes: Vec<Box4>,
}

/// PAA's label assignment for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PaaAssignment {
    pub images: Vec<ImageAssignment>,
    /// Boxes whose GMM could not be fitted (sklearn's ill-defined variance): no positive.
    pub skipped: usize,
}

impl PaaAssignment {
    pub fn num_pos(&self) -> usize {
        self.images.iter().map(|i| i.positives.len()).sum()
    }
}

impl Paa {
    /// `num_classes` foreground classes.
    pub fn new(
        vb: VarBuilder,
        cfg: &PaaConfig,
        num_classes: usize,
        imp: ConvImpl,
    ) -> candle_core::Result<Self> {
        let rc = cfg.backbone.resnet(imp);
        let backbone = ResNet::new(vb.pp("backbone"), rc, None)?;
        let ch = rc.out_channels();
        let neck = Neck::new(vb.pp("neck"), &ch[1..], cfg.neck.out_channels, imp)?;
        let head = PaaHead::new(
            vb.pp("bbox_head"),
            &cfg.head,
            cfg.neck.out_channels,
            num_classes,
            STRIDES.len(),
            imp,
        )?;
        Ok(Self {
            backbone,
            neck,
            head,
            cfg: cfg.clone(),
            num_classes,
            frozen_stages: 5 - cfg.backbone.trainable_layers.min(5) as usize,
            dtype: vb.dtype(),
        })
    }

    /// The backbone and the neck on the images (mmdetection's `extract_feat`, before
    /// `bbox_head`): the taps, and the pyramid P3–P7 the head reads.
    fn neck_pass(&self, images: &Tensor, train: bool) -> candle_core::Result<(Taps, Vec<Tensor>)> {
        let x = images.to_dtype(self.dtype)?;
        let c = self
            .backbone
            .forward_frozen(&x, train, self.frozen_stages)?;
        let p = self
            .neck
            .forward(&[c.c3.clone(), c.c4.clone(), c.c5.clone()])?;
        let mut taps = Taps::new();
        for (i, t) in [&c.c2, &c.c3, &c.c4, &c.c5].into_iter().enumerate() {
            taps.insert(format!("backbone.c{}", i + 2), t.clone());
        }
        for (i, t) in p.iter().enumerate() {
            taps.insert(format!("fpn.p{}", i + 3), t.clone());
        }
        Ok((taps, p))
    }

    /// The backbone and neck, then the dense head and the anchors.
    fn forward_pass(
        &self,
        images: &Tensor,
        train: bool,
    ) -> candle_core::Result<(Taps, PaaForward)> {
        let (taps, p) = self.neck_pass(images, train)?;
        let out = self.head.forward(&p)?;
        let (anchors, counts) =
            assign::anchors(&out.sizes, &STRIDES, self.cfg.anchors.octave_base_scale);
        Ok((
            taps,
            PaaForward {
                out,
                anchors,
                counts,
            },
        ))
    }

    /// The padded size of an image as mmdetection's data preprocessor records it (`pad_shape`:
    /// its own size rounded up to the divisor).
    fn pad_shape(&self, (h, w): (usize, usize)) -> (usize, usize) {
        let d = self.cfg.input.size_divisible.max(1) as usize;
        (h.div_ceil(d) * d, w.div_ceil(d) * d)
    }

    fn cost_weights(&self) -> CostWeights {
        let l = &self.cfg.loss;
        CostWeights {
            gamma: l.focal_gamma as f32,
            alpha: l.focal_alpha as f32,
            cls: l.cls_weight as f32,
            bbox: l.bbox_weight as f32,
        }
    }

    /// Per image: `A × K` logits and `A × 4` deltas as f32 rows.
    fn host_outputs(f: &PaaForward) -> candle_core::Result<(PerImage, PerImage)> {
        // The assignment (costs, top-k, the GMM's EM) runs on the host, as sklearn does in
        // mmdetection's PAAHead; on another device the outputs are copied here every step.
        static WARN: std::sync::Once = std::sync::Once::new();
        let dev = f.out.cls.device();
        if !dev.is_cpu() {
            WARN.call_once(|| {
                eprintln!(
                    "kdet: PAA's label assignment has no {:?} kernel; it runs on the CPU",
                    dev.location()
                )
            });
        }
        let flat = |t: &Tensor| -> candle_core::Result<Vec<Vec<f32>>> {
            let t = t.detach().to_dtype(DType::F32)?;
            let n = t.dim(0)?;
            (0..n).map(|i| t.get(i)?.flatten_all()?.to_vec1()).collect()
        };
        Ok((flat(&f.out.cls)?, flat(&f.out.reg)?))
    }

    fn image_candidates(
        &self,
        f: &PaaForward,
        batch: &Batch,
    ) -> Vec<(assign::Candidates, Vec<bool>)> {
        batch
            .targets
            .iter()
            .zip(&batch.image_sizes)
            .map(|(t, &size)| {
                let valid = assign::valid_flags(&f.out.sizes, &STRIDES, self.pad_shape(size));
                let c = assign::candidates(
                    &f.anchors,
                    &f.counts,
                    &valid,
                    &t.boxes,
                    self.cfg.assigner.candidate_iou,
                );
                (c, valid)
            })
            .collect()
    }

    fn candidate_costs(
        &self,
        f: &PaaForward,
        batch: &Batch,
        cands: &[assign::Candidates],
    ) -> Result<Vec<Vec<f32>>> {
        let (cls, reg) = Self::host_outputs(f)?;
        Ok(cands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let t = &batch.targets[i];
                let labels: Vec<usize> = t.labels.iter().map(|&l| l as usize - 1).collect();
                assign::costs(
                    c,
                    &cls[i],
                    &reg[i],
                    self.num_classes,
                    &f.anchors,
                    &t.boxes,
                    &labels,
                    self.cost_weights(),
                )
            })
            .collect())
    }

    fn assignment_from(
        &self,
        f: &PaaForward,
        batch: &Batch,
        cands: &[(assign::Candidates, Vec<bool>)],
        costs: &[Vec<f32>],
    ) -> PaaAssignment {
        let mut images = vec![];
        let mut skipped = 0;
        for (i, ((c, valid), cost)) in cands.iter().zip(costs).enumerate() {
            let t = &batch.targets[i];
            let (positives, s) = assign::select(
                c,
                cost,
                t.boxes.len(),
                f.counts.len(),
                self.cfg.assigner.topk,
            );
            skipped += s;
            let mut labels = vec![self.num_classes as u32; f.anchors.len()];
            for &(j, g) in &positives {
                labels[j] = t.labels[g] - 1;
            }
            images.push(ImageAssignment {
                labels,
                valid: valid.clone(),
                boxes: positives.iter().map(|&(_, g)| t.boxes[g]).collect(),
                positives,
            });
        }
        if skipped > 0 {
            // sklearn raises here (mmdetection's training would stop); kdet goes on without
            // those boxes' positives for this step, and says so.
            eprintln!(
                "warning: PAA assignment: the GMM of {skipped} box(es) could not be fitted (ill-defined variance, as sklearn reports it); they get no positive this step"
            );
        }
        PaaAssignment { images, skipped }
    }

    /// Detections of one image in input coordinates scaled by `(ry, rx)` (mmdetection rescales
    /// before NMS): `PAAHead._predict_by_feat_single` + `_bbox_post_process`.
    #[allow(clippy::too_many_arguments)]
    fn postprocess(
        &self,
        scores: &[f32],
        ious: &[f32],
        deltas: &[f32],
        anchors: &[Box4],
        counts: &[usize],
        size: (usize, usize),
        (ry, rx): (f32, f32),
    ) -> Detections {
        let k = self.num_classes;
        let t = &self.cfg.test;
        let clip = Some((size.0 as f32, size.1 as f32));
        // Per level, the top `nms_pre` anchors by max_c sqrt(cls_c · iou).
        let mut rows = vec![];
        let mut start = 0;
        for &n in counts {
            let mut idx: Vec<usize> = (start..start + n).collect();
            if t.nms_pre < n {
                let key = |j: usize| {
                    (0..k)
                        .map(|c| (scores[j * k + c] * ious[j]).sqrt())
                        .fold(f32::NEG_INFINITY, f32::max)
                };
                idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
                idx.truncate(t.nms_pre);
            }
            rows.extend(idx);
            start += n;
        }
        // Candidates: every (box, class) scoring above the threshold.
        let (mut boxes, mut cand_scores, mut cand_labels) = (vec![], vec![], vec![]);
        for &j in &rows {
            let b = assign::decode(&anchors[j], &deltas[j * 4..j * 4 + 4], clip);
            let b = [b[0] * rx, b[1] * ry, b[2] * rx, b[3] * ry];
            for c in 0..k {
                let s = (scores[j * k + c] * ious[j]).sqrt();
                if s > t.score_thr {
                    boxes.push(b);
                    cand_scores.push(s);
                    cand_labels.push(c);
                }
            }
        }
        let mut keep = batched_nms(&boxes, &cand_scores, &cand_labels, t.nms_thresh);
        keep.truncate(t.max_per_img);
        if !t.score_voting {
            return Detections {
                boxes: keep.iter().map(|&i| boxes[i]).collect(),
                scores: keep.iter().map(|&i| cand_scores[i]).collect(),
                labels: keep.iter().map(|&i| cand_labels[i] as u32 + 1).collect(),
            };
        }
        // Score voting, class by class (the output becomes class-major).
        let mut d = Detections::default();
        for c in 0..k {
            let members: Vec<usize> = (0..boxes.len()).filter(|&i| cand_labels[i] == c).collect();
            for &i in keep.iter().filter(|&&i| cand_labels[i] == c) {
                let (mut acc, mut wsum) = ([0f32; 4], 0f32);
                for &m in &members {
                    let iou = assign::iou(&boxes[i], &boxes[m]);
                    if iou > VOTE_MIN_IOU {
                        let w = (-(1.0 - iou).powi(2) / VOTE_SIGMA).exp() * cand_scores[m];
                        for q in 0..4 {
                            acc[q] += w * boxes[m][q];
                        }
                        wsum += w;
                    }
                }
                d.boxes.push(acc.map(|v| v / wsum));
                d.scores.push(cand_scores[i]);
                d.labels.push(c as u32 + 1);
            }
        }
        d
    }
}

/// One flat f32 array per image.
type PerImage = Vec<Vec<f32>>;

/// Taps of a PAA model: `backbone.c2..c5`, `fpn.p3..p7`.
type Taps = super::contract::Taps;

/// Sum of mmdetection's `py_sigmoid_focal_loss` over all elements, each row weighted.
fn focal_loss_sum(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    gamma: f64,
    alpha: f64,
) -> candle_core::Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    let ce =
        ((logits.relu()? - (logits * targets)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let one_minus_t = (1.0 - targets)?;
    let pt = (((1.0 - &p)? * targets)? + (&p * &one_minus_t)?)?;
    let w = ((targets * alpha)? + (one_minus_t * (1.0 - alpha))?)?;
    let focal = if gamma == 2.0 {
        pt.sqr()?
    } else {
        pt.powf(gamma)?
    };
    (ce * w)?.mul(&focal)?.broadcast_mul(weights)?.sum_all()
}

/// `delta2bbox` on tensors (with gradients to the deltas): anchors and deltas `P × 4`.
fn decode_tensor(anchors: &Tensor, deltas: &Tensor) -> candle_core::Result<Tensor> {
    let stds = Tensor::new(&STDS, deltas.device())?.to_dtype(deltas.dtype())?;
    let d = deltas.broadcast_mul(&stds)?;
    let max = (1000f64 / 16.0).ln();
    let col = |t: &Tensor, i: usize| t.narrow(1, i, 1);
    let (dx, dy) = (col(&d, 0)?, col(&d, 1)?);
    let (dw, dh) = (col(&d, 2)?.clamp(-max, max)?, col(&d, 3)?.clamp(-max, max)?);
    let (x1, y1, x2, y2) = (
        col(anchors, 0)?,
        col(anchors, 1)?,
        col(anchors, 2)?,
        col(anchors, 3)?,
    );
    let (px, py) = (((&x1 + &x2)? * 0.5)?, ((&y1 + &y2)? * 0.5)?);
    let (pw, ph) = ((&x2 - &x1)?, (&y2 - &y1)?);
    let gx = (px + (&pw * dx)?)?;
    let gy = (py + (&ph * dy)?)?;
    let gw = (pw * dw.exp()?)?;
    let gh = (ph * dh.exp()?)?;
    let (hw, hh) = ((gw * 0.5)?, (gh * 0.5)?);
    Tensor::cat(&[(&gx - &hw)?, (&gy - &hh)?, (gx + hw)?, (gy + hh)?], 1)
}

/// `1 − GIoU` of aligned boxes `P × 4` (mmdetection's `GIoULoss`, unreduced).
fn giou_loss(pred: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let eps = 1e-6;
    let col = |t: &Tensor, i: usize| t.narrow(1, i, 1);
    let (a1, b1, a2, b2) = (col(pred, 0)?, col(pred, 1)?, col(pred, 2)?, col(pred, 3)?);
    let (c1, d1, c2, d2) = (
        col(target, 0)?,
        col(target, 1)?,
        col(target, 2)?,
        col(target, 3)?,
    );
    let area_p = ((&a2 - &a1)? * (&b2 - &b1)?)?;
    let area_t = ((&c2 - &c1)? * (&d2 - &d1)?)?;
    let w = (a2.minimum(&c2)? - a1.maximum(&c1)?)?.relu()?;
    let h = (b2.minimum(&d2)? - b1.maximum(&d1)?)?.relu()?;
    let overlap = (w * h)?;
    let union = ((area_p + area_t)? - &overlap)?.maximum(eps)?;
    let ew = (a2.maximum(&c2)? - a1.minimum(&c1)?)?.relu()?;
    let eh = (b2.maximum(&d2)? - b1.minimum(&d1)?)?.relu()?;
    let enclose = (ew * eh)?.maximum(eps)?;
    let giou = ((overlap / &union)? - ((&enclose - &union)? / &enclose)?)?;
    (1.0 - giou)?.squeeze(1)
}

impl Model for Paa {
    fn family(&self) -> &'static str {
        FAMILY
    }

    fn taps(&self) -> Vec<TapSpec> {
        self.cfg.taps()
    }

    fn is_trainable(&self, param: &str) -> bool {
        let frozen = param
            .strip_prefix("backbone.")
            .is_some_and(|n| in_frozen_stage(n, self.frozen_stages));
        !param.ends_with("running_mean") && !param.ends_with("running_var") && !frozen
    }

    fn backbone_prefix(&self) -> &'static str {
        "backbone."
    }

    fn class_head(&self) -> Head {
        Head::Dense
    }

    fn forward(&self, images: &Tensor, train: bool) -> Result<Forward> {
        let (taps, f) = self.forward_pass(images, train)?;
        Ok(Forward::new(taps, f))
    }

    fn features(&self, images: &Tensor, train: bool) -> Result<Taps> {
        Ok(self.neck_pass(images, train)?.0)
    }

    fn assign(&self, fwd: &Forward, batch: &Batch, _rng: &mut StepRng) -> Result<Assignment> {
        let f: &PaaForward = fwd.state(FAMILY)?;
        let cands = self.image_candidates(f, batch);
        let just: Vec<assign::Candidates> = cands.iter().map(|(c, _)| c.clone()).collect();
        let costs = self.candidate_costs(f, batch, &just)?;
        Ok(Assignment::new(
            FAMILY,
            self.assignment_from(f, batch, &cands, &costs),
        ))
    }

    fn outputs(
        &self,
        fwd: &Forward,
        assignment: &Assignment,
        _batch: &Batch,
        want: Want,
    ) -> Result<TrainOutput> {
        let f: &PaaForward = fwd.state(FAMILY)?;
        let a: &PaaAssignment = assignment.get(FAMILY)?;
        let (n, na, k) = f.out.cls.dims3()?;
        let dev = f.out.cls.device().clone();
        let cls = f.out.cls.reshape((n * na, k))?;
        let reg = f.out.reg.reshape((n * na, 4))?;
        // Positives in batch order (image · A + anchor), with their anchors and boxes.
        let mut pos_rows: Vec<u32> = vec![];
        let mut pos_anchors: Vec<f32> = vec![];
        let mut pos_boxes: Vec<Box4> = vec![];
        let mut targets_enc: Vec<f32> = vec![];
        for (i, im) in a.images.iter().enumerate() {
            for (&(j, _), b) in im.positives.iter().zip(&im.boxes) {
                pos_rows.push((i * na + j) as u32);
                pos_anchors.extend(f.anchors[j]);
                pos_boxes.push(*b);
                targets_enc.extend(assign::encode(b, &f.anchors[j]));
            }
        }
        let num_pos = pos_rows.len();
        let mut losses = BTreeMap::new();
        if want.losses() {
            let l = &self.cfg.loss;
            let mut onehot = vec![0f32; n * na * k];
            let mut weight = vec![0f32; n * na];
            for (i, im) in a.images.iter().enumerate() {
                for j in 0..na {
                    if im.valid[j] {
                        weight[i * na + j] = 1.0;
                    }
                    let lab = im.labels[j] as usize;
                    if lab < k {
                        onehot[(i * na + j) * k + lab] = 1.0;
                    }
                }
            }
            let dt = cls.dtype();
            let onehot = Tensor::from_vec(onehot, (n * na, k), &dev)?.to_dtype(dt)?;
            let weight = Tensor::from_vec(weight, (n * na, 1), &dev)?.to_dtype(dt)?;
            let cls_norm = num_pos.max(n) as f64 + AVG_EPS;
            let loss_cls =
                ((focal_loss_sum(&cls, &onehot, &weight, l.focal_gamma, l.focal_alpha)?
                    / cls_norm)?
                    * l.cls_weight)?;
            let (loss_bbox, loss_iou) = if num_pos == 0 {
                ((f.out.reg.sum_all()? * 0.0)?, (f.out.iou.sum_all()? * 0.0)?)
            } else {
                let rows = Tensor::from_vec(pos_rows.clone(), num_pos, &dev)?;
                let anchors = Tensor::from_vec(pos_anchors, (num_pos, 4), &dev)?.to_dtype(dt)?;
                let boxes: Vec<f32> = pos_boxes.iter().flatten().copied().collect();
                let gt = Tensor::from_vec(boxes, (num_pos, 4), &dev)?.to_dtype(dt)?;
                let decoded = decode_tensor(&anchors, &reg.index_select(&rows, 0)?)?;
                // IoU of the detached predicted box with its target: the IoU branch's target and
                // (PAAHead) the box loss weight.
                let host = decoded.detach().to_dtype(DType::F32)?.to_vec2::<f32>()?;
                let iou_t: Vec<f32> = host
                    .iter()
                    .zip(&pos_boxes)
                    .map(|(p, g)| assign::iou(&[p[0], p[1], p[2], p[3]], g))
                    .collect();
                let giou = giou_loss(&decoded, &gt)?;
                let pos_norm = num_pos as f64 + AVG_EPS;
                let loss_bbox = if assignment.is_handed_over() {
                    (giou.sum_all()? / pos_norm)?
                } else {
                    let w: Vec<f32> = iou_t.iter().map(|v| v.max(IOU_WEIGHT_MIN)).collect();
                    let wsum: f64 = iou_t.iter().map(|&v| v as f64).sum();
                    let w = Tensor::from_vec(w, num_pos, &dev)?.to_dtype(dt)?;
                    ((giou * w)?.sum_all()? / (wsum + AVG_EPS))?
                };
                let iou_logits = f.out.iou.flatten_all()?.index_select(&rows, 0)?;
                let iou_t = Tensor::from_vec(iou_t, num_pos, &dev)?.to_dtype(dt)?;
                let bce = ((iou_logits.relu()? - (&iou_logits * &iou_t)?)?
                    + (iou_logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                (
                    (loss_bbox * l.bbox_weight)?,
                    ((bce.sum_all()? / pos_norm)? * l.iou_weight)?,
                )
            };
            let loss = |value, kind| Loss {
                value,
                head: Head::Dense,
                kind,
            };
            losses.insert("loss_cls".into(), loss(loss_cls, LossKind::Classification));
            losses.insert("loss_bbox".into(), loss(loss_bbox, LossKind::Regression));
            losses.insert("loss_iou".into(), loss(loss_iou, LossKind::Quality));
        }
        let mut heads = BTreeMap::new();
        if want.head(Head::Dense) {
            heads.insert(
                Head::Dense,
                HeadOutput::dense(ClassScores::Sigmoid, cls, reg, pos_rows, targets_enc),
            );
        }
        Ok(TrainOutput { losses, heads })
    }

    fn predict(&self, batch: &Batch) -> Result<Predictions> {
        let (_, f) = self.forward_pass(&batch.images, false)?;
        let scores = candle_nn::ops::sigmoid(&f.out.cls.to_dtype(DType::F32)?)?;
        let ious = candle_nn::ops::sigmoid(&f.out.iou.to_dtype(DType::F32)?)?;
        let reg = f.out.reg.to_dtype(DType::F32)?;
        let mut dets = vec![];
        for (i, (&size, &orig)) in batch
            .image_sizes
            .iter()
            .zip(&batch.original_sizes)
            .enumerate()
        {
            let s = scores.get(i)?.flatten_all()?.to_vec1::<f32>()?;
            let u = ious.get(i)?.to_vec1::<f32>()?;
            let d = reg.get(i)?.flatten_all()?.to_vec1::<f32>()?;
            let scale = (orig.0 as f32 / size.0 as f32, orig.1 as f32 / size.1 as f32);
            dets.push(self.postprocess(&s, &u, &d, &f.anchors, &f.counts, size, scale));
        }
        Ok(Predictions::Detections(dets))
    }

    fn cost_assignment(&self) -> Option<&dyn CostAssignment> {
        Some(self)
    }
}

impl CostAssignment for Paa {
    fn candidates(&self, fwd: &Forward, batch: &Batch) -> Result<Vec<ImageCandidates>> {
        let f: &PaaForward = fwd.state(FAMILY)?;
        Ok(self
            .image_candidates(f, batch)
            .into_iter()
            .map(|(c, valid)| ImageCandidates {
                anchor: c.anchor,
                gt: c.gt,
                level: c.level,
                valid,
            })
            .collect())
    }

    fn costs(
        &self,
        fwd: &Forward,
        batch: &Batch,
        cands: &[ImageCandidates],
    ) -> Result<Vec<Vec<f32>>> {
        let f: &PaaForward = fwd.state(FAMILY)?;
        let c: Vec<assign::Candidates> = cands.iter().map(to_assign).collect();
        self.candidate_costs(f, batch, &c)
    }

    fn assign_from_costs(
        &self,
        fwd: &Forward,
        batch: &Batch,
        cands: &[ImageCandidates],
        costs: &[Vec<f32>],
    ) -> Result<Assignment> {
        let f: &PaaForward = fwd.state(FAMILY)?;
        let c: Vec<(assign::Candidates, Vec<bool>)> = cands
            .iter()
            .map(|c| (to_assign(c), c.valid.clone()))
            .collect();
        Ok(Assignment::new(
            FAMILY,
            self.assignment_from(f, batch, &c, costs),
        ))
    }
}

fn to_assign(c: &ImageCandidates) -> assign::Candidates {
    assign::Candidates {
        anchor: c.anchor.clone(),
        gt: c.gt.clone(),
        level: c.level.clone(),
    }
}

impl PaaConfig {
    /// Taps: the trunk's C2–C5 and the pyramid's P3–P7.
    pub fn taps(&self) -> Vec<TapSpec> {
        let stages = self.backbone.resnet(ConvImpl::Kdet).out_channels();
        tap_specs(stages, self.neck.out_channels, 3, STRIDES.len())
    }
}

impl Family for PaaConfig {
    fn input(&self) -> &InputConfig {
        &self.input
    }

    fn backbone(&self) -> &BackboneConfig {
        &self.backbone
    }

    fn validate(&self, p: &str) -> Check {
        PaaConfig::validate(self, p)
    }

    fn taps(&self) -> Vec<TapSpec> {
        PaaConfig::taps(self)
    }

    fn build(&self, vb: VarBuilder, num_classes: usize) -> candle_core::Result<Box<dyn Model>> {
        Ok(Box::new(Paa::new(vb, self, num_classes, ConvImpl::Kdet)?))
    }

    fn check_teacher(&self, teacher: &ModelConfig, head: Head, _regression: bool) -> Check {
        let ModelConfig::Paa(t) = teacher else {
            return Err(invalid(
                "arch",
                format!("must be paa to distil a paa student's {head:?} head"),
            ));
        };
        if head != Head::Dense {
            return Err(invalid(".", format!("a paa model has no {head:?} head")));
        }
        if t.anchors != self.anchors {
            return Err(invalid(
                "anchors",
                "must equal the student's (both score the same anchors)",
            ));
        }
        Ok(())
    }
}
