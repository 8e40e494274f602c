//! The `model` section of a Faster R-CNN (`"arch": "faster_rcnn"`). Every default is
//! torchvision's `fasterrcnn_resnet50_fpn` (`torchvision/models/detection/faster_rcnn.py`,
//! v0.2x); the doc comment on each field gives the constructor argument it mirrors.

use serde::{Deserialize, Serialize};

use crate::data::transforms::InputConfig;
use crate::error::{invalid, positive, unit, Check};
use crate::models::backbone::BackboneConfig;
use crate::models::fpn::FpnConfig;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FasterRcnnConfig {
    pub backbone: BackboneConfig,
    pub fpn: FpnConfig,
    /// Input transform (GeneralizedRCNNTransform in torchvision).
    pub input: InputConfig,
    pub rpn: RpnConfig,
    pub roi_heads: RoiHeadsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RpnConfig {
    /// Anchor sizes per FPN level. torchvision: ((32,), (64,), (128,), (256,), (512,)).
    pub anchor_sizes: Vec<f32>,
    /// Aspect ratios (h/w) at every level. torchvision: (0.5, 1.0, 2.0).
    pub aspect_ratios: Vec<f32>,
    /// torchvision: rpn_pre_nms_top_n_train = 2000.
    pub pre_nms_top_n_train: usize,
    /// torchvision: rpn_pre_nms_top_n_test = 1000.
    pub pre_nms_top_n_test: usize,
    /// torchvision: rpn_post_nms_top_n_train = 2000.
    pub post_nms_top_n_train: usize,
    /// torchvision: rpn_post_nms_top_n_test = 1000.
    pub post_nms_top_n_test: usize,
    /// torchvision: rpn_nms_thresh = 0.7.
    pub nms_thresh: f32,
    /// torchvision: rpn_fg_iou_thresh = 0.7.
    pub fg_iou_thresh: f32,
    /// torchvision: rpn_bg_iou_thresh = 0.3.
    pub bg_iou_thresh: f32,
    /// torchvision: rpn_batch_size_per_image = 256.
    pub batch_size_per_image: usize,
    /// torchvision: rpn_positive_fraction = 0.5.
    pub positive_fraction: f32,
    /// torchvision: rpn_score_thresh = 0.0.
    pub score_thresh: f32,
}

impl Default for RpnConfig {
    fn default() -> Self {
        Self {
            anchor_sizes: vec![32., 64., 128., 256., 512.],
            aspect_ratios: vec![0.5, 1.0, 2.0],
            pre_nms_top_n_train: 2000,
            pre_nms_top_n_test: 1000,
            post_nms_top_n_train: 2000,
            post_nms_top_n_test: 1000,
            nms_thresh: 0.7,
            fg_iou_thresh: 0.7,
            bg_iou_thresh: 0.3,
            batch_size_per_image: 256,
            positive_fraction: 0.5,
            score_thresh: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoiHeadsConfig {
    /// MultiScaleRoIAlign output size. torchvision: 7.
    pub pool_size: usize,
    /// MultiScaleRoIAlign sampling_ratio. torchvision: 2.
    pub sampling_ratio: usize,
    /// TwoMLPHead width. torchvision: 1024.
    pub representation_size: usize,
    /// torchvision: box_fg_iou_thresh = 0.5.
    pub fg_iou_thresh: f32,
    /// torchvision: box_bg_iou_thresh = 0.5.
    pub bg_iou_thresh: f32,
    /// torchvision: box_batch_size_per_image = 512.
    pub batch_size_per_image: usize,
    /// torchvision: box_positive_fraction = 0.25.
    pub positive_fraction: f32,
    /// torchvision: bbox_reg_weights = (10, 10, 5, 5).
    pub bbox_reg_weights: [f32; 4],
    /// torchvision: box_score_thresh = 0.05.
    pub score_thresh: f32,
    /// torchvision: box_nms_thresh = 0.5.
    pub nms_thresh: f32,
    /// torchvision: box_detections_per_img = 100.
    pub detections_per_img: usize,
}

impl Default for RoiHeadsConfig {
    fn default() -> Self {
        Self {
            pool_size: 7,
            sampling_ratio: 2,
            representation_size: 1024,
            fg_iou_thresh: 0.5,
            bg_iou_thresh: 0.5,
            batch_size_per_image: 512,
            positive_fraction: 0.25,
            bbox_reg_weights: [10., 10., 5., 5.],
            score_thresh: 0.05,
            nms_thresh: 0.5,
            detections_per_img: 100,
        }
    }
}

impl FasterRcnnConfig {
    /// Ranges and cross-field rules; `p` is the section's JSON path (`model`,
    /// `teachers[0].model`).
    pub fn validate(&self, p: &str) -> Check {
        self.backbone.validate(&format!("{p}.backbone"))?;
        self.fpn.validate(&format!("{p}.fpn"))?;
        self.input.validate(&format!("{p}.input"))?;
        let r = &self.rpn;
        let h = &self.roi_heads;
        // One size per FPN level, as torchvision's AnchorGenerator requires
        // (`len(sizes) == len(feature_maps)`): extra sizes would be ignored, levels dropped.
        if r.anchor_sizes.len() != super::LEVELS {
            return Err(invalid(
                format!("{p}.rpn.anchor_sizes"),
                format!(
                    "has {} size(s); give exactly one per FPN level: {} (P2–P5 and the pooled level)",
                    r.anchor_sizes.len(),
                    super::LEVELS
                ),
            ));
        }
        // No ratio, no anchor: the RPN would score nothing and its loss be NaN.
        if r.aspect_ratios.is_empty() {
            return Err(invalid(
                format!("{p}.rpn.aspect_ratios"),
                "must not be empty: give at least one ratio (torchvision: [0.5, 1.0, 2.0])",
            ));
        }
        for (k, v) in r.anchor_sizes.iter().enumerate() {
            positive(&format!("{p}.rpn.anchor_sizes[{k}]"), *v as f64)?;
        }
        for (k, v) in r.aspect_ratios.iter().enumerate() {
            positive(&format!("{p}.rpn.aspect_ratios[{k}]"), *v as f64)?;
        }
        for (name, v) in [
            ("rpn.nms_thresh", r.nms_thresh),
            ("rpn.fg_iou_thresh", r.fg_iou_thresh),
            ("rpn.bg_iou_thresh", r.bg_iou_thresh),
            ("rpn.positive_fraction", r.positive_fraction),
            ("rpn.score_thresh", r.score_thresh),
            ("roi_heads.fg_iou_thresh", h.fg_iou_thresh),
            ("roi_heads.bg_iou_thresh", h.bg_iou_thresh),
            ("roi_heads.positive_fraction", h.positive_fraction),
            ("roi_heads.score_thresh", h.score_thresh),
            ("roi_heads.nms_thresh", h.nms_thresh),
        ] {
            unit(&format!("{p}.{name}"), v as f64)?;
        }
        if r.bg_iou_thresh > r.fg_iou_thresh {
            return Err(invalid(
                format!("{p}.rpn.bg_iou_thresh"),
                "must be <= fg_iou_thresh",
            ));
        }
        if h.bg_iou_thresh > h.fg_iou_thresh {
            return Err(invalid(
                format!("{p}.roi_heads.bg_iou_thresh"),
                "must be <= fg_iou_thresh",
            ));
        }
        for (name, v) in [
            ("rpn.batch_size_per_image", r.batch_size_per_image),
            ("rpn.post_nms_top_n_train", r.post_nms_top_n_train),
            ("rpn.post_nms_top_n_test", r.post_nms_top_n_test),
            ("roi_heads.batch_size_per_image", h.batch_size_per_image),
            ("roi_heads.detections_per_img", h.detections_per_img),
            ("roi_heads.pool_size", h.pool_size),
            ("roi_heads.representation_size", h.representation_size),
        ] {
            if v == 0 {
                return Err(invalid(format!("{p}.{name}"), "must be >= 1"));
            }
        }
        Ok(())
    }
}
