//! A detection backbone: ResNet trunk (`backbone.body`) + FPN (`backbone.fpn`), as torchvision's
//! `BackboneWithFPN` over `layer1..layer4`. Stages before `trainable_layers` are frozen: their
//! output is detached, so no gradient is computed for them (torchvision sets requires_grad off).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::config::ModelConfig;
use crate::ops::conv::ConvImpl;

use super::fpn::Fpn;
use super::resnet::{ResNet, ResNetConfig, Stages};

/// Backbone outputs: the trunk's C2..C5 and the pyramid P2..P6.
#[derive(Debug, Clone)]
pub struct Features {
    pub c: Stages,
    /// P2, P3, P4, P5, P6 ("0".."3", "pool" in torchvision).
    pub p: Vec<Tensor>,
}

/// Index of an FPN tap `fpn.p2..p6` in [`Features::p`], or of a trunk tap `backbone.c2..c5`.
enum Tap {
    C(usize),
    P(usize),
}

fn parse_tap(name: &str) -> Option<Tap> {
    let level = |s: &str, lo: usize, hi: usize| {
        s.parse::<usize>()
            .ok()
            .filter(|l| (lo..=hi).contains(l))
            .map(|l| l - 2)
    };
    if let Some(l) = name.strip_prefix("backbone.c") {
        level(l, 2, 5).map(Tap::C)
    } else {
        level(name.strip_prefix("fpn.p")?, 2, 6).map(Tap::P)
    }
}

impl Features {
    /// The tensor a distillation tap names (`backbone.c2..c5`, `fpn.p2..p6`; see DESIGN.md).
    pub fn tap(&self, name: &str) -> Option<&Tensor> {
        match parse_tap(name)? {
            Tap::C(i) => Some([&self.c.c2, &self.c.c3, &self.c.c4, &self.c.c5][i]),
            Tap::P(i) => self.p.get(i),
        }
    }
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
    pub fn new(vb: VarBuilder, m: &ModelConfig, imp: ConvImpl) -> candle_core::Result<Self> {
        let cfg = ResNetConfig {
            depth: m.backbone.depth,
            width: m.backbone.width,
            norm: m.backbone.norm,
            conv: imp,
            bn_eps: m.backbone.bn_eps,
        };
        let body = ResNet::new(vb.pp("body"), cfg, None)?;
        let fpn = Fpn::new(vb.pp("fpn"), &cfg.out_channels(), m.fpn.out_channels, imp)?;
        Ok(Self {
            body,
            fpn,
            frozen_stages: 5 - m.backbone.trainable_layers.min(5) as usize,
            out_channels: m.fpn.out_channels,
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

    /// Channels of the tensor a tap names.
    pub fn tap_channels(&self, name: &str) -> Option<usize> {
        match parse_tap(name)? {
            Tap::C(i) => Some(self.stage_channels[i]),
            Tap::P(_) => Some(self.out_channels),
        }
    }

    /// Names of parameters in frozen stages (to leave out of the optimizer).
    pub fn is_frozen_param(&self, name: &str) -> bool {
        let stage =
            if name.starts_with("backbone.body.conv1") || name.starts_with("backbone.body.bn1") {
                0
            } else if let Some(rest) = name.strip_prefix("backbone.body.layer") {
                rest.chars()
                    .next()
                    .and_then(|c| c.to_digit(10))
                    .unwrap_or(9) as usize
            } else {
                return false;
            };
        stage < self.frozen_stages
    }
}
