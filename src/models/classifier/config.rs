//! The `model` section of an image classifier (`"arch": "classifier"`): a ResNet trunk, global
//! average pooling, optionally the kept layers of SimCLRv2's projection head (Chen et al. 2020,
//! "Big Self-Supervised Models are Strong Semi-Supervised Learners" §2.2: fine-tune "from the
//! first layer of the projection head") and CBD's student projection (Iscen et al. 2021;
//! google-research `class_balanced_distillation/resnet.py`), then a linear or cosine classifier.

use serde::{Deserialize, Serialize};

use crate::data::transforms::InputConfig;
use crate::error::{invalid, positive, Check};
use crate::models::backbone::BackboneConfig;
use crate::models::layers::NormKind;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierConfig {
    /// The trunk. Default: torchvision's `resnet50` trained from scratch (trainable BatchNorm,
    /// every stage trainable).
    pub backbone: BackboneConfig,
    /// Default: torchvision's classification eval transform at 224 px (ImageNet mean/std), the
    /// image resized to a square (`square`), no padding.
    pub input: InputConfig,
    pub head: ClassifierHead,
    /// Layers of SimCLRv2's projection head kept under the classifier (Linear without bias +
    /// BatchNorm + ReLU, as wide as the pooled feature). SimCLRv2 fine-tunes from the first of
    /// its three layers: 1. 0: the classifier reads the pooled feature (torchvision's ResNet).
    pub mlp_layers: usize,
    /// CBD's student projection: Dense + ReLU after pooling (and the MLP), L2-normalised before
    /// the classifier; the feature a CBD student matches to its teachers'. None: no projection.
    pub projection: Option<ProjectionConfig>,
}

/// The classifier on the (pooled, projected) feature.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClassifierHead {
    /// torchvision's `fc`: `W x + b`.
    Linear,
    /// CBD's `CosineLayer`: `σ · ⟨x/‖x‖, w_c/‖w_c‖⟩`, Glorot-uniform `W`, no bias
    /// (google-research `class_balanced_distillation/resnet.py`).
    Cosine {
        /// The fixed scale σ. CBD: 20.
        #[serde(default = "cbd_sigma")]
        sigma: f64,
    },
}

fn cbd_sigma() -> f64 {
    20.0
}

/// CBD's student projection: `Dense(dim)` + ReLU.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProjectionConfig {
    /// Output width; must equal the sum of the teachers' feature widths (the official code:
    /// 2048 × the number of ResNet-50 teachers; 2048 · `backbone.width` per teacher of the
    /// student's architecture).
    pub dim: usize,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            backbone: BackboneConfig {
                norm: NormKind::Bn,
                trainable_layers: 5,
                ..Default::default()
            },
            input: InputConfig {
                min_size: 224,
                max_size: 224,
                size_divisible: 1,
                square: true,
                ..Default::default()
            },
            head: ClassifierHead::Linear,
            mlp_layers: 0,
            projection: None,
        }
    }
}

impl ClassifierConfig {
    /// Ranges; `p` is the section's JSON path.
    pub fn validate(&self, p: &str) -> Check {
        self.backbone.validate(&format!("{p}.backbone"))?;
        self.input.validate(&format!("{p}.input"))?;
        if let ClassifierHead::Cosine { sigma } = &self.head {
            positive(&format!("{p}.head.sigma"), *sigma)?;
        }
        if self.mlp_layers > 3 {
            return Err(invalid(
                format!("{p}.mlp_layers"),
                "SimCLRv2's projection head has 3 layers; keep 0 to 3",
            ));
        }
        if let Some(pr) = &self.projection {
            if pr.dim == 0 {
                return Err(invalid(format!("{p}.projection.dim"), "must be >= 1"));
            }
        }
        Ok(())
    }

    /// Width of the pooled trunk feature (the `pool` tap).
    pub fn pooled_dim(&self) -> usize {
        self.backbone
            .resnet(crate::ops::conv::ConvImpl::Kdet)
            .out_channels()[3]
    }
}
