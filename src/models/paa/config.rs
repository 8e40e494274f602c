//! The `model` section of a PAA detector (`"arch": "paa"`). Every default is mmdetection's
//! `configs/paa/paa_r50_fpn_1x_coco.py` (PAAHead over ATSSHead, `mmdet/models/dense_heads/
//! paa_head.py`); the doc comment on each field names the setting it mirrors.

use serde::{Deserialize, Serialize};

use crate::data::transforms::InputConfig;
use crate::error::{invalid, positive, unit, Check};
use crate::models::backbone::BackboneConfig;
use crate::models::layers::NormKind;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PaaConfig {
    /// ResNet-50 with mmdetection's `frozen_stages=1` (stem and layer1 frozen: 3 trainable
    /// stages) and `norm_eval=True` (BatchNorm on running statistics, affine trained).
    pub backbone: BackboneConfig,
    pub neck: NeckConfig,
    /// mmdetection's `DetDataPreprocessor` normalisation (ImageNet mean/std, as torchvision's
    /// on [0,1] pixels) and `Resize(scale=(1333, 800), keep_ratio=True)`, padded to 32.
    pub input: InputConfig,
    pub anchors: AnchorConfig,
    pub head: HeadConfig,
    pub assigner: AssignerConfig,
    pub loss: LossConfig,
    pub test: TestConfig,
}

impl Default for PaaConfig {
    fn default() -> Self {
        Self {
            backbone: BackboneConfig {
                norm: NormKind::BnEval,
                ..Default::default()
            },
            neck: NeckConfig::default(),
            input: InputConfig::default(),
            anchors: AnchorConfig::default(),
            head: HeadConfig::default(),
            assigner: AssignerConfig::default(),
            loss: LossConfig::default(),
            test: TestConfig::default(),
        }
    }
}

/// mmdetection's `FPN(in_channels=C3..C5, start_level=1, add_extra_convs='on_output',
/// num_outs=5)`: P3–P5 from C3–C5, P6 and P7 by stride-2 3×3 convs on P5's and P6's outputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NeckConfig {
    /// FPN channels. mmdetection: 256.
    pub out_channels: usize,
}

impl Default for NeckConfig {
    fn default() -> Self {
        Self { out_channels: 256 }
    }
}

/// mmdetection's `AnchorGenerator(ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
/// strides=[8, 16, 32, 64, 128])`: one square anchor per location, of side
/// `octave_base_scale · stride`, centred on the cell's top-left corner (`center_offset=0`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnchorConfig {
    /// Anchor side in strides. mmdetection PAA: 8 (64 px on P3 … 1024 px on P7).
    pub octave_base_scale: f32,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        Self {
            octave_base_scale: 8.0,
        }
    }
}

/// The towers and outputs of `PAAHead` (ATSSHead's layers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HeadConfig {
    /// Tower width. mmdetection: `feat_channels=256`.
    pub channels: usize,
    /// 3×3 conv + GroupNorm + ReLU blocks per tower. mmdetection: `stacked_convs=4`.
    pub num_convs: usize,
    /// GroupNorm groups. mmdetection: `norm_cfg=dict(type='GN', num_groups=32)`.
    pub gn_groups: usize,
    /// Initial foreground probability of the classifier (its bias `−ln((1 − p)/p)`).
    /// mmdetection: `bias_prob=0.01` (RetinaNet's prior).
    pub prior_prob: f64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            channels: 256,
            num_convs: 4,
            gn_groups: 32,
            prior_prob: 0.01,
        }
    }
}

/// The probabilistic anchor assignment (`PAAHead.paa_reassign`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AssignerConfig {
    /// Initial candidates: anchors whose IoU with a box reaches this (plus each box's best
    /// anchors). mmdetection: `MaxIoUAssigner(pos_iou_thr=0.1, neg_iou_thr=0.1, min_pos_iou=0)`.
    pub candidate_iou: f32,
    /// Lowest-cost candidates kept per box and FPN level for the GMM. mmdetection: `topk=9`.
    pub topk: usize,
}

impl Default for AssignerConfig {
    fn default() -> Self {
        Self {
            candidate_iou: 0.1,
            topk: 9,
        }
    }
}

/// Loss weights (also the weights inside the assignment's per-anchor cost).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Focal loss γ. mmdetection: `FocalLoss(gamma=2.0)`.
    pub focal_gamma: f64,
    /// Focal loss α. mmdetection: `FocalLoss(alpha=0.25)`.
    pub focal_alpha: f64,
    /// Classification loss weight. mmdetection: 1.0.
    pub cls_weight: f64,
    /// GIoU loss weight. mmdetection: `GIoULoss(loss_weight=1.3)`.
    pub bbox_weight: f64,
    /// IoU-branch BCE weight. mmdetection: `CrossEntropyLoss(use_sigmoid=True,
    /// loss_weight=0.5)`.
    pub iou_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            focal_gamma: 2.0,
            focal_alpha: 0.25,
            cls_weight: 1.0,
            bbox_weight: 1.3,
            iou_weight: 0.5,
        }
    }
}

/// Inference (`test_cfg` of the PAA configs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TestConfig {
    /// Candidates kept per level before NMS, by `max_c sqrt(cls_c · iou)`. mmdetection: 1000.
    pub nms_pre: usize,
    /// Detections need a score above this. mmdetection: 0.05.
    pub score_thr: f32,
    /// Class-wise NMS IoU. mmdetection: 0.6.
    pub nms_thresh: f32,
    /// mmdetection: `max_per_img=100`.
    pub max_per_img: usize,
    /// Score voting (PAA paper §3.4): each kept box becomes the IoU- and score-weighted mean of
    /// its class's candidates. mmdetection: `score_voting=True` (+0.2 AP on COCO).
    pub score_voting: bool,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            nms_pre: 1000,
            score_thr: 0.05,
            nms_thresh: 0.6,
            max_per_img: 100,
            score_voting: true,
        }
    }
}

impl PaaConfig {
    /// Ranges; `p` is the section's JSON path.
    pub fn validate(&self, p: &str) -> Check {
        self.backbone.validate(&format!("{p}.backbone"))?;
        if self.neck.out_channels == 0 {
            return Err(invalid(format!("{p}.neck.out_channels"), "must be >= 1"));
        }
        self.input.validate(&format!("{p}.input"))?;
        positive(
            &format!("{p}.anchors.octave_base_scale"),
            self.anchors.octave_base_scale as f64,
        )?;
        let h = &self.head;
        if h.channels == 0 || h.num_convs == 0 {
            let f = if h.channels == 0 {
                "channels"
            } else {
                "num_convs"
            };
            return Err(invalid(format!("{p}.head.{f}"), "must be >= 1"));
        }
        if h.gn_groups == 0 || !h.channels.is_multiple_of(h.gn_groups) {
            return Err(invalid(
                format!("{p}.head.gn_groups"),
                format!("must divide head.channels ({})", h.channels),
            ));
        }
        if !(h.prior_prob > 0.0 && h.prior_prob < 1.0) {
            return Err(invalid(format!("{p}.head.prior_prob"), "must be in (0, 1)"));
        }
        unit(
            &format!("{p}.assigner.candidate_iou"),
            self.assigner.candidate_iou as f64,
        )?;
        if self.assigner.topk == 0 {
            return Err(invalid(format!("{p}.assigner.topk"), "must be >= 1"));
        }
        let l = &self.loss;
        for (name, v) in [
            ("focal_gamma", l.focal_gamma),
            ("cls_weight", l.cls_weight),
            ("bbox_weight", l.bbox_weight),
            ("iou_weight", l.iou_weight),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(invalid(format!("{p}.loss.{name}"), "must be >= 0"));
            }
        }
        unit(&format!("{p}.loss.focal_alpha"), l.focal_alpha)?;
        let t = &self.test;
        if t.nms_pre == 0 || t.max_per_img == 0 {
            let f = if t.nms_pre == 0 {
                "nms_pre"
            } else {
                "max_per_img"
            };
            return Err(invalid(format!("{p}.test.{f}"), "must be >= 1"));
        }
        unit(&format!("{p}.test.score_thr"), t.score_thr as f64)?;
        unit(&format!("{p}.test.nms_thresh"), t.nms_thresh as f64)?;
        Ok(())
    }
}
