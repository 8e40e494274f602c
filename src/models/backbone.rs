//! A detection backbone: ResNet trunk (`backbone.body`) + FPN (`backbone.fpn`), as torchvision's
//! `BackboneWithFPN` over `layer1..layer4`. Stages before `trainable_layers` are frozen: their
//! output is detached, so no gradient is computed for them (torchvision sets requires_grad off).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, positive, Check};
use crate::ops::conv::ConvImpl;

use super::contract::{TapSpec, Taps};
use super::fpn::{Fpn, FpnConfig};
use super::layers::NormKind;
use super::resnet::{ResNet, ResNetConfig, Stages};
use super::weights::KeyRules;

/// The `backbone` section of a model config: a ResNet trunk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackboneConfig {
    /// ResNet depth: 18, 34, 50 or 101. torchvision: `fasterrcnn_resnet50_fpn` → 50.
    pub depth: u32,
    /// Channel width multiplier (1.0 = torchvision's widths); key names do not change.
    pub width: f64,
    /// torchvision: FrozenBatchNorm2d when pretrained.
    pub norm: NormKind,
    /// Number of trainable ResNet stages counted from the top. torchvision: 3.
    pub trainable_layers: u32,
    /// Optional ImageNet-style backbone weights (local path or `hf://owner/repo/file@rev`;
    /// safetensors or a PyTorch `.pth`). Unprefixed ResNet names (`conv1.weight`,
    /// `layer1.0.…`) land under `backbone.body.`; the classifier (`fc.*`) is ignored.
    pub weights: Option<String>,
    /// How to rename the keys of `weights` onto kdet's names; none needed for torchvision's
    /// or timm's plain ResNets.
    pub weights_keys: KeyRules,
    /// eps of the backbone's BatchNorm / FrozenBatchNorm2d. torchvision: 1e-5; its
    /// COCO-pretrained Faster R-CNN weights expect 0 (the builder's `overwrite_eps(model, 0.0)`).
    pub bn_eps: f64,
}

impl Default for BackboneConfig {
    fn default() -> Self {
        Self {
            depth: 50,
            width: 1.0,
            norm: NormKind::FrozenBn,
            trainable_layers: 3,
            weights: None,
            weights_keys: KeyRules::default(),
            bn_eps: 1e-5,
        }
    }
}

impl BackboneConfig {
    /// Ranges; `p` is the section's JSON path (`model.backbone`).
    pub fn validate(&self, p: &str) -> Check {
        if ![18, 34, 50, 101].contains(&self.depth) {
            return Err(invalid(
                format!("{p}.depth"),
                format!("{} is not one of 18, 34, 50, 101", self.depth),
            ));
        }
        positive(&format!("{p}.width"), self.width)?;
        self.check_parameter_count(p)?;
        if self.trainable_layers > 5 {
            return Err(invalid(format!("{p}.trainable_layers"), "must be in 0..=5"));
        }
        if let Some(w) = &self.weights {
            crate::hub::validate_spec(w).map_err(|m| invalid(format!("{p}.weights"), m))?;
        }
        self.weights_keys.validate(&format!("{p}.weights_keys"))
    }

    /// Refuse a width whose trunk could not be held in memory: convolution parameters grow
    /// with width², so a typo (1000 for 1.0) asked for trillions and aborted in the allocator.
    fn check_parameter_count(&self, p: &str) -> Check {
        // torchvision's trunks without `fc` at width 1, in millions of parameters.
        let base_m = match self.depth {
            18 => 11.2,
            34 => 21.3,
            50 => 23.5,
            _ => 42.5,
        };
        let params = base_m * 1e6 * self.width * self.width;
        if params <= MAX_TRUNK_PARAMS {
            return Ok(());
        }
        Err(invalid(
            format!("{p}.width"),
            format!(
                "{} makes a ResNet-{} trunk of about {:.1e} parameters ({} in f32, before gradients and optimizer state), above kdet's limit of {:.0e}",
                self.width,
                self.depth,
                params,
                crate::util::gigabytes(params * 4.0),
                MAX_TRUNK_PARAMS
            ),
        ))
    }

    /// The trunk's architecture.
    pub fn resnet(&self, conv: ConvImpl) -> ResNetConfig {
        ResNetConfig {
            depth: self.depth,
            width: self.width,
            norm: self.norm,
            conv,
            bn_eps: self.bn_eps,
        }
    }
}

/// The most parameters a backbone trunk may have: 4 GB of f32 weights, 16 GB with SGD's or
/// AdamW's state; ResNet-101 at width 4 is 0.7 G.
const MAX_TRUNK_PARAMS: f64 = 1e9;

/// Backbone outputs: the trunk's C2..C5 and the pyramid P2..P6.
#[derive(Debug, Clone)]
pub struct Features {
    pub c: Stages,
    /// P2, P3, P4, P5, P6 ("0".."3", "pool" in torchvision).
    pub p: Vec<Tensor>,
}

impl Features {
    /// The taps `backbone.c2..c5`, `fpn.p2..p6`.
    pub fn taps(&self) -> Taps {
        let c = [&self.c.c2, &self.c.c3, &self.c.c4, &self.c.c5];
        let mut t = Taps::new();
        for (i, x) in c.into_iter().enumerate() {
            t.insert(format!("backbone.c{}", i + 2), x.clone());
        }
        for (i, x) in self.p.iter().enumerate() {
            t.insert(format!("fpn.p{}", i + 2), x.clone());
        }
        t
    }
}

/// The taps of a ResNet + FPN backbone: C2–C5 and `levels` pyramid outputs from P`first`
/// (stride `2^first`).
pub fn tap_specs(
    stage_channels: [usize; 4],
    fpn_channels: usize,
    first: usize,
    levels: usize,
) -> Vec<TapSpec> {
    let mut v: Vec<TapSpec> = stage_channels
        .iter()
        .enumerate()
        .map(|(i, &channels)| TapSpec {
            name: format!("backbone.c{}", i + 2),
            channels,
            stride: 4 << i,
        })
        .collect();
    v.extend((first..first + levels).map(|l| TapSpec {
        name: format!("fpn.p{l}"),
        channels: fpn_channels,
        stride: 1 << l,
    }));
    v
}

#[derive(Debug, Clone)]
pub struct Backbone {
    pub body: ResNet,
    pub fpn: Fpn,
    /// ResNet stages (conv1 = 0, layer1..4 = 1..4) that are frozen.
    frozen_stages: usize,
    pub out_channels: usize,
    /// Channels of C2..C5.
    pub stage_channels: [usize; 4],
}

impl Backbone {
    pub fn new(
        vb: VarBuilder,
        b: &BackboneConfig,
        f: &FpnConfig,
        imp: ConvImpl,
    ) -> candle_core::Result<Self> {
        let cfg = b.resnet(imp);
        let body = ResNet::new(vb.pp("body"), cfg, None)?;
        let fpn = Fpn::new(vb.pp("fpn"), &cfg.out_channels(), f.out_channels, imp)?;
        Ok(Self {
            body,
            fpn,
            frozen_stages: 5 - b.trainable_layers.min(5) as usize,
            out_channels: f.out_channels,
            stage_channels: cfg.out_channels(),
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Features> {
        let c = self.body.forward_frozen(x, train, self.frozen_stages)?;
        let p = self
            .fpn
            .forward(&[c.c2.clone(), c.c3.clone(), c.c4.clone(), c.c5.clone()])?;
        Ok(Features { c, p })
    }

    /// Names of parameters in frozen stages (to leave out of the optimizer).
    pub fn is_frozen_param(&self, name: &str) -> bool {
        name.strip_prefix("backbone.body.")
            .is_some_and(|n| super::resnet::in_frozen_stage(n, self.frozen_stages))
    }
}
