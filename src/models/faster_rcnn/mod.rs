//! Faster R-CNN (Ren et al. 2015) with FPN, assembled like torchvision's `GeneralizedRCNN`:
//! backbone (ResNet + FPN) → RPN → RoI heads, with parameter names equal to torchvision's
//! `fasterrcnn_resnet50_fpn` state_dict keys, so its checkpoints load and kdet's export back.
//! The input transform (normalise, resize, pad) lives in the data loader; [`FasterRcnn::predict`]
//! maps detections back to original image coordinates as torchvision's `transform.postprocess`.
//!
//! Under the model contract ([`Model`]): the forward pass is the backbone and the RPN head; the
//! assignment is torchvision's two samplings (anchors for the RPN loss, proposals + ground truth
//! for the box head), drawn in that order from the step's RNG; the outputs are the four losses
//! and the RPN / box-head outputs on those samples. [`Model::features`] is the backbone alone.

pub mod config;
pub mod losses;
pub mod roi_heads;
pub mod rpn;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::data::loader::Batch;
use crate::error::{invalid, Check, Result};
use crate::ops::boxes::Box4;
use crate::ops::conv::ConvImpl;

use super::backbone::{tap_specs, Backbone, BackboneConfig, Features};
use super::config::{Family, ModelConfig};
use super::contract::{
    Assignment, ClassScores, Detections, Forward, Head, HeadOutput, Loss, LossKind, Model,
    Predictions, StepRng, TapSpec, Taps, TrainOutput, Want,
};
use crate::data::transforms::InputConfig;
pub use config::FasterRcnnConfig;
use roi_heads::{RoiHeads, SampledRois};
use rpn::{Rpn, RpnSamples};

/// The family name under `arch`.
const FAMILY: &str = "faster_rcnn";

/// FPN levels: P2–P5 and the pooled P6 ("pool").
const LEVELS: usize = 5;

#[derive(Debug, Clone)]
pub struct FasterRcnn {
    pub backbone: Backbone,
    pub rpn: Rpn,
    pub roi_heads: RoiHeads,
    pub cfg: FasterRcnnConfig,
    /// Classes including background.
    pub num_classes: usize,
    /// Precision of the weights (f32, or f16 for a teacher); inputs are cast to it.
    pub dtype: DType,
}

/// What [`FasterRcnn`]'s forward pass keeps for its assignment and outputs.
struct FrcnnForward {
    features: Features,
    /// Objectness `N × A` and deltas `N × A × 4` over all levels, in anchor order.
    rpn_logits: Tensor,
    rpn_deltas: Tensor,
    anchors: Vec<Box4>,
    /// Anchors per level.
    counts: Vec<usize>,
}

/// Faster R-CNN's label assignment: the anchors its RPN loss samples and the RoIs (proposals +
/// ground truth) its box head is trained on, with their targets.
pub struct FrcnnAssignment {
    pub rpn: RpnSamples,
    pub rois: SampledRois,
}

impl FasterRcnn {
    /// `num_classes` counts background (torchvision's convention: COCO → 91).
    pub fn new(
        vb: VarBuilder,
        cfg: &FasterRcnnConfig,
        num_classes: usize,
        imp: ConvImpl,
    ) -> candle_core::Result<Self> {
        let backbone = Backbone::new(vb.pp("backbone"), &cfg.backbone, &cfg.fpn, imp)?;
        let c = backbone.out_channels;
        Ok(Self {
            rpn: Rpn::new(vb.pp("rpn"), &cfg.rpn, c, imp)?,
            roi_heads: RoiHeads::new(vb.pp("roi_heads"), &cfg.roi_heads, c, num_classes)?,
            backbone,
            cfg: cfg.clone(),
            num_classes,
            dtype: vb.dtype(),
        })
    }

    /// Scale of each pyramid level relative to the largest image (torchvision's
    /// `MultiScaleRoIAlign._infer_scale`: the nearest power of two).
    pub fn scales(
        features: &[Tensor],
        image_sizes: &[(usize, usize)],
    ) -> candle_core::Result<Vec<f32>> {
        let max_h = image_sizes.iter().map(|s| s.0).max().unwrap_or(1) as f32;
        features
            .iter()
            .map(|f| {
                let approx = f.dim(2)? as f32 / max_h;
                Ok(2f32.powf(approx.log2().round()))
            })
            .collect()
    }

    /// The backbone (ResNet + FPN) on the images: torchvision's `self.backbone(images.tensors)`,
    /// the first step of `GeneralizedRCNN.forward`.
    fn backbone_pass(&self, images: &Tensor, train: bool) -> candle_core::Result<Features> {
        self.backbone
            .forward_t(&images.to_dtype(self.dtype)?, train)
    }

    /// The backbone, then the RPN head and anchors over its pyramid.
    fn forward_pass(&self, images: &Tensor, train: bool) -> candle_core::Result<FrcnnForward> {
        let (_, _, h, w) = images.dims4()?;
        let features = self.backbone_pass(images, train)?;
        let (rpn_logits, rpn_deltas) = self.rpn.head_outputs(&features.p)?;
        let (anchors, counts) = self.rpn.anchors(&features.p, (h, w))?;
        Ok(FrcnnForward {
            features,
            rpn_logits,
            rpn_deltas,
            anchors,
            counts,
        })
    }

    /// Detections in network input coordinates, plus the features and proposals.
    pub fn detect(
        &self,
        images: &Tensor,
        image_sizes: &[(usize, usize)],
    ) -> candle_core::Result<(Features, Vec<Vec<Box4>>, Vec<Detections>)> {
        let f = self.forward_pass(images, false)?;
        let proposals = self.rpn.proposals(
            &f.rpn_logits,
            &f.rpn_deltas,
            &f.anchors,
            &f.counts,
            image_sizes,
            false,
        )?;
        let scales = Self::scales(&f.features.p, image_sizes)?;
        let head = self.roi_heads.head(&f.features.p, &scales, &proposals)?;
        let dets = self.roi_heads.postprocess(&head, &proposals, image_sizes)?;
        Ok((f.features, proposals, dets))
    }
}

impl Model for FasterRcnn {
    fn family(&self) -> &'static str {
        FAMILY
    }

    fn taps(&self) -> Vec<TapSpec> {
        self.cfg.taps()
    }

    fn is_trainable(&self, param: &str) -> bool {
        !param.ends_with("running_mean")
            && !param.ends_with("running_var")
            && !self.backbone.is_frozen_param(param)
    }

    fn backbone_prefix(&self) -> &'static str {
        "backbone.body."
    }

    fn class_head(&self) -> Head {
        Head::Rcn
    }

    fn forward(&self, images: &Tensor, train: bool) -> Result<Forward> {
        let f = self.forward_pass(images, train)?;
        Ok(Forward::new(f.features.taps(), f))
    }

    fn features(&self, images: &Tensor, train: bool) -> Result<Taps> {
        Ok(self.backbone_pass(images, train)?.taps())
    }

    fn assign(&self, fwd: &Forward, batch: &Batch, rng: &mut StepRng) -> Result<Assignment> {
        let f: &FrcnnForward = fwd.state(FAMILY)?;
        let proposals = self.rpn.proposals(
            &f.rpn_logits,
            &f.rpn_deltas,
            &f.anchors,
            &f.counts,
            &batch.image_sizes,
            true,
        )?;
        // torchvision's order: the RPN samples its anchors, then the RoI heads their RoIs.
        let rpn = self.rpn.sample(&f.anchors, &batch.targets, rng);
        let rois = self.roi_heads.sample(&proposals, &batch.targets, rng);
        Ok(Assignment::new(FAMILY, FrcnnAssignment { rpn, rois }))
    }

    fn outputs(
        &self,
        fwd: &Forward,
        assignment: &Assignment,
        batch: &Batch,
        want: Want,
    ) -> Result<TrainOutput> {
        let f: &FrcnnForward = fwd.state(FAMILY)?;
        let a: &FrcnnAssignment = assignment.get(FAMILY)?;
        let mut losses = BTreeMap::new();
        let mut heads = BTreeMap::new();
        let loss = |value, head, kind| Loss { value, head, kind };
        if want.losses() {
            let (cls, reg) = self.rpn.losses(&f.rpn_logits, &f.rpn_deltas, &a.rpn)?;
            losses.insert(
                "loss_objectness".into(),
                loss(cls, Head::Rpn, LossKind::Classification),
            );
            losses.insert(
                "loss_rpn_box_reg".into(),
                loss(reg, Head::Rpn, LossKind::Regression),
            );
        }
        if want.head(Head::Rpn) {
            heads.insert(
                Head::Rpn,
                HeadOutput::sampled(
                    ClassScores::Sigmoid,
                    f.rpn_logits.clone(),
                    a.rpn.sampled.clone(),
                    f.rpn_deltas.clone(),
                    a.rpn.positives.clone(),
                    a.rpn.targets.clone(),
                ),
            );
        }
        if want.head(Head::Rcn) {
            let scales = Self::scales(&f.features.p, &batch.image_sizes)?;
            let head = self.roi_heads.head(&f.features.p, &scales, &a.rois.rois)?;
            if want.losses() {
                let (cls, reg) = self.roi_heads.losses(&head, &a.rois)?;
                losses.insert(
                    "loss_classifier".into(),
                    loss(cls, Head::Rcn, LossKind::Classification),
                );
                losses.insert(
                    "loss_box_reg".into(),
                    loss(reg, Head::Rcn, LossKind::Regression),
                );
            }
            let labels = &a.rois.labels;
            let targets: Vec<f32> = (0..labels.len())
                .filter(|&i| labels[i] > 0)
                .flat_map(|i| a.rois.targets[i])
                .collect();
            heads.insert(
                Head::Rcn,
                HeadOutput::per_sample_class_specific(
                    ClassScores::Softmax,
                    head.class_logits,
                    head.box_regression,
                    labels,
                    targets,
                )?,
            );
        }
        Ok(TrainOutput { losses, heads })
    }

    /// Detections in original image coordinates (torchvision's `transform.postprocess`).
    fn predict(&self, batch: &Batch) -> Result<Predictions> {
        let (_, _, mut dets) = self.detect(&batch.images, &batch.image_sizes)?;
        for ((d, &(h, w)), &(oh, ow)) in dets
            .iter_mut()
            .zip(&batch.image_sizes)
            .zip(&batch.original_sizes)
        {
            let (ry, rx) = (oh as f32 / h as f32, ow as f32 / w as f32);
            for b in &mut d.boxes {
                *b = [b[0] * rx, b[1] * ry, b[2] * rx, b[3] * ry];
            }
        }
        Ok(Predictions::Detections(dets))
    }
}

impl Family for FasterRcnnConfig {
    fn input(&self) -> &InputConfig {
        &self.input
    }

    fn backbone(&self) -> &BackboneConfig {
        &self.backbone
    }

    fn validate(&self, p: &str) -> Check {
        FasterRcnnConfig::validate(self, p)
    }

    fn taps(&self) -> Vec<TapSpec> {
        let stages = self.backbone.resnet(ConvImpl::Kdet).out_channels();
        tap_specs(stages, self.fpn.out_channels, 2, LEVELS)
    }

    fn build(&self, vb: VarBuilder, num_classes: usize) -> candle_core::Result<Box<dyn Model>> {
        Ok(Box::new(FasterRcnn::new(
            vb,
            self,
            num_classes + 1,
            ConvImpl::Kdet,
        )?))
    }

    fn check_teacher(&self, teacher: &ModelConfig, head: Head, regression: bool) -> Check {
        let ModelConfig::FasterRcnn(t) = teacher else {
            return Err(invalid(
                "arch",
                format!("must be faster_rcnn to distil a faster_rcnn student's {head:?} head"),
            ));
        };
        match head {
            Head::Rpn => {
                if t.rpn.anchor_sizes != self.rpn.anchor_sizes
                    || t.rpn.aspect_ratios != self.rpn.aspect_ratios
                {
                    return Err(invalid(
                        "rpn",
                        "anchor_sizes and aspect_ratios must equal the student's for RPN distillation (both score the same anchors)",
                    ));
                }
            }
            Head::Dense | Head::Classifier => {
                return Err(invalid(
                    ".",
                    format!("a faster_rcnn model has no {head:?} head"),
                ));
            }
            Head::Rcn => {
                if regression && t.roi_heads.bbox_reg_weights != self.roi_heads.bbox_reg_weights {
                    return Err(invalid(
                        "roi_heads.bbox_reg_weights",
                        "must equal the student's for RCN regression distillation (deltas are compared directly)",
                    ));
                }
            }
        }
        Ok(())
    }
}
