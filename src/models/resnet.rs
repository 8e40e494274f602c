//! ResNet 18/34/50/101 (He et al. 2016) with torchvision's module names and its v1.5 layout
//! (stride on the 3×3 conv of bottlenecks), a channel width multiplier for narrow CPU models
//! (key names do not change), and a choice of normalisation. `forward_t` returns the four stage
//! outputs C2..C5 that FPN and distillation taps read.

use candle_core::{Module, ModuleT, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::ops::conv::ConvImpl;
use crate::ops::pool::{max_pool2d, PoolParams};
use crate::ops::relu::relu;

use super::layers::{Conv2d, ConvSpec, Norm, NormKind};

/// Whether the ResNet parameter `name` (torchvision's names: `conv1.*`, `bn1.*` are stage 0,
/// `layerN.*` stage N) lies in the first `frozen` stages.
pub fn in_frozen_stage(name: &str, frozen: usize) -> bool {
    let stage = if name.starts_with("conv1") || name.starts_with("bn1") {
        0
    } else if let Some(rest) = name.strip_prefix("layer") {
        rest.chars()
            .next()
            .and_then(|c| c.to_digit(10))
            .unwrap_or(9) as usize
    } else {
        return false;
    };
    stage < frozen
}

/// Architecture of a ResNet.
#[derive(Debug, Clone, Copy)]
pub struct ResNetConfig {
    pub depth: u32,
    pub width: f64,
    pub norm: NormKind,
    pub conv: ConvImpl,
    /// BatchNorm eps (torchvision 1e-5).
    pub bn_eps: f64,
}

impl ResNetConfig {
    fn blocks(&self) -> [usize; 4] {
        match self.depth {
            18 => [2, 2, 2, 2],
            34 | 50 => [3, 4, 6, 3],
            _ => [3, 4, 23, 3],
        }
    }
    fn bottleneck(&self) -> bool {
        self.depth >= 50
    }
    /// Channels after the width multiplier (at least 1).
    pub fn ch(&self, c: usize) -> usize {
        ((c as f64 * self.width).round() as usize).max(1)
    }
    /// Output channels of C2..C5.
    pub fn out_channels(&self) -> [usize; 4] {
        let e = if self.bottleneck() { 4 } else { 1 };
        [64, 128, 256, 512].map(|c| self.ch(c) * e)
    }
}

#[derive(Debug, Clone)]
struct Block {
    convs: Vec<(Conv2d, Norm)>,
    downsample: Option<(Conv2d, Norm)>,
}

impl Block {
    fn new(
        vb: VarBuilder,
        cfg: &ResNetConfig,
        cin: usize,
        planes: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        let conv = |vb: VarBuilder, cin, cout, k, stride| {
            Conv2d::new(
                vb,
                ConvSpec {
                    cin,
                    cout,
                    k,
                    stride,
                    padding: k / 2,
                    bias: false,
                    imp: cfg.conv,
                },
            )
        };
        let (specs, cout): (Vec<(usize, usize, usize, usize)>, usize) = if cfg.bottleneck() {
            let out = planes * 4;
            (
                vec![
                    (cin, planes, 1, 1),
                    (planes, planes, 3, stride),
                    (planes, out, 1, 1),
                ],
                out,
            )
        } else {
            (
                vec![(cin, planes, 3, stride), (planes, planes, 3, 1)],
                planes,
            )
        };
        let convs = specs
            .iter()
            .enumerate()
            .map(|(i, &(ci, co, k, s))| {
                Ok((
                    conv(vb.pp(format!("conv{}", i + 1)), ci, co, k, s)?,
                    Norm::new(vb.pp(format!("bn{}", i + 1)), cfg.norm, co, cfg.bn_eps)?,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let downsample = if stride != 1 || cin != cout {
            let d = vb.pp("downsample");
            Some((
                conv(d.pp("0"), cin, cout, 1, stride)?,
                Norm::new(d.pp("1"), cfg.norm, cout, cfg.bn_eps)?,
            ))
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, (c, n)) in self.convs.iter().enumerate() {
            y = n.forward_t(&c.forward(&y)?, train)?;
            if i < last {
                y = relu(&y)?;
            }
        }
        let id = match &self.downsample {
            Some((c, n)) => n.forward_t(&c.forward(x)?, train)?,
            None => x.clone(),
        };
        relu(&(y + id)?)
    }
}

/// Fresh copies of the stages after stage `after` (1 = layer1 … 3 = layer3), as `layer{k}.{b}`
/// under `vb`, then global average pooling and a linear classifier (`fc`): an auxiliary
/// classifier on a hidden stage's output whose path to the logits is as deep as the trunk's
/// (DCM, Yao & Sun 2020, whose released code copies the remaining stages the same way).
#[derive(Debug, Clone)]
pub struct StageBranch {
    layers: Vec<Vec<Block>>,
    fc: candle_nn::Linear,
}

impl StageBranch {
    pub fn new(
        vb: VarBuilder,
        cfg: ResNetConfig,
        after: usize,
        num_classes: usize,
    ) -> candle_core::Result<Self> {
        if !(1..=3).contains(&after) {
            candle_core::bail!("a stage branch starts after layer1..layer3, not {after}");
        }
        let mut cin = cfg.out_channels()[after - 1];
        let mut layers = vec![];
        for li in after..4 {
            let planes = cfg.ch([64, 128, 256, 512][li]);
            let lvb = vb.pp(format!("layer{}", li + 1));
            let mut blocks = vec![];
            for b in 0..cfg.blocks()[li] {
                let stride = if b == 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    lvb.pp(b.to_string()),
                    &cfg,
                    cin,
                    planes,
                    stride,
                )?);
                cin = if cfg.bottleneck() { planes * 4 } else { planes };
            }
            layers.push(blocks);
        }
        let b = 1.0 / (cin as f64).sqrt();
        let w = vb.pp("fc").get_with_hints(
            (num_classes, cin),
            "weight",
            Init::Uniform { lo: -b, up: b },
        )?;
        let bias =
            vb.pp("fc")
                .get_with_hints(num_classes, "bias", Init::Uniform { lo: -b, up: b })?;
        Ok(Self {
            layers,
            fc: candle_nn::Linear::new(w, Some(bias)),
        })
    }

    /// Class logits (`N × classes`) from the stage output `x`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        for b in self.layers.iter().flatten() {
            y = b.forward_t(&y, train)?;
        }
        y.mean((2, 3))?.apply(&self.fc)
    }
}

/// A ResNet trunk (and optional classifier head `fc`).
#[derive(Debug, Clone)]
pub struct ResNet {
    pub cfg: ResNetConfig,
    conv1: Conv2d,
    bn1: Norm,
    layers: Vec<Vec<Block>>,
    fc: Option<candle_nn::Linear>,
}

/// The four stage outputs.
#[derive(Debug, Clone)]
pub struct Stages {
    pub c2: Tensor,
    pub c3: Tensor,
    pub c4: Tensor,
    pub c5: Tensor,
}

impl ResNet {
    /// Build under `vb` (e.g. `backbone.body` for detection). `num_classes` adds torchvision's
    /// `fc` head after global average pooling.
    pub fn new(
        vb: VarBuilder,
        cfg: ResNetConfig,
        num_classes: Option<usize>,
    ) -> candle_core::Result<Self> {
        let c64 = cfg.ch(64);
        let conv1 = Conv2d::new(
            vb.pp("conv1"),
            ConvSpec {
                cin: 3,
                cout: c64,
                k: 7,
                stride: 2,
                padding: 3,
                bias: false,
                imp: cfg.conv,
            },
        )?;
        let bn1 = Norm::new(vb.pp("bn1"), cfg.norm, c64, cfg.bn_eps)?;
        let mut cin = c64;
        let mut layers = vec![];
        for (li, (&n, planes)) in cfg.blocks().iter().zip([64, 128, 256, 512]).enumerate() {
            let planes = cfg.ch(planes);
            let lvb = vb.pp(format!("layer{}", li + 1));
            let mut blocks = vec![];
            for b in 0..n {
                let stride = if b == 0 && li > 0 { 2 } else { 1 };
                let blk = Block::new(lvb.pp(b.to_string()), &cfg, cin, planes, stride)?;
                cin = if cfg.bottleneck() { planes * 4 } else { planes };
                blocks.push(blk);
            }
            layers.push(blocks);
        }
        let fc = match num_classes {
            Some(k) => {
                // nn.Linear's default init: U(±1/sqrt(fan_in)) for weight and bias.
                let b = 1.0 / (cin as f64).sqrt();
                let w = vb.pp("fc").get_with_hints(
                    (k, cin),
                    "weight",
                    Init::Uniform { lo: -b, up: b },
                )?;
                let bias =
                    vb.pp("fc")
                        .get_with_hints(k, "bias", Init::Uniform { lo: -b, up: b })?;
                Some(candle_nn::Linear::new(w, Some(bias)))
            }
            None => None,
        };
        Ok(Self {
            cfg,
            conv1,
            bn1,
            layers,
            fc,
        })
    }

    /// C2..C5 (strides 4, 8, 16, 32).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Stages> {
        self.forward_frozen(x, train, 0)
    }

    /// As [`forward_t`](Self::forward_t) with the first `frozen` stages (stem = 0, layer1..4 =
    /// 1..4) frozen: their output is detached (no gradient is computed for them) and their
    /// normalisation runs in eval mode, as torchvision's `trainable_layers` leaves them.
    pub fn forward_frozen(
        &self,
        x: &Tensor,
        train: bool,
        frozen: usize,
    ) -> candle_core::Result<Stages> {
        let x = relu(
            &self
                .bn1
                .forward_t(&self.conv1.forward(x)?, train && frozen == 0)?,
        )?;
        let mut x = max_pool2d(
            &x,
            PoolParams {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
        )?;
        if frozen >= 1 {
            x = x.detach();
        }
        let mut outs = vec![];
        for (i, blocks) in self.layers.iter().enumerate() {
            // layer i+1 trains when it is not frozen.
            let stage_train = train && frozen <= i + 1;
            for b in blocks {
                x = b.forward_t(&x, stage_train)?;
            }
            if frozen >= i + 2 {
                x = x.detach();
            }
            outs.push(x.clone());
        }
        let [c2, c3, c4, c5]: [Tensor; 4] = outs.try_into().expect("four stages");
        Ok(Stages { c2, c3, c4, c5 })
    }

    /// Class logits (needs `num_classes` at construction).
    pub fn classify_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let s = self.forward_t(x, train)?;
        let pooled = s.c5.mean((2, 3))?;
        match &self.fc {
            Some(fc) => fc.forward(&pooled),
            None => candle_core::bail!("this ResNet was built without a classifier head"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::init::SeededVarMap;
    use candle_core::{DType, Device};
    use std::sync::Arc;

    #[test]
    fn torchvision_names_and_shapes() {
        for (depth, params) in [(18u32, 11_689_512usize), (50, 25_557_032)] {
            let m = Arc::new(SeededVarMap::new(0));
            let cfg = ResNetConfig {
                depth,
                width: 1.0,
                norm: NormKind::Bn,
                conv: ConvImpl::Kdet,
                bn_eps: 1e-5,
            };
            let _net = ResNet::new(m.builder(DType::F32, &Device::Cpu), cfg, Some(1000)).unwrap();
            let data = m.varmap.data().lock().unwrap();
            // torchvision counts parameters without BN running statistics.
            let n: usize = data
                .iter()
                .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
                .map(|(_, v)| v.elem_count())
                .sum();
            assert_eq!(n, params, "resnet{depth}");
            assert!(data.contains_key("layer1.0.conv1.weight"));
            assert!(data.contains_key("layer2.0.downsample.1.running_var"));
            assert!(data.contains_key("fc.bias"));
        }
    }

    #[test]
    fn narrow_forward_shapes() {
        let m = Arc::new(SeededVarMap::new(0));
        let cfg = ResNetConfig {
            depth: 18,
            width: 0.25,
            norm: NormKind::Gn,
            conv: ConvImpl::Kdet,
            bn_eps: 1e-5,
        };
        let net = ResNet::new(m.builder(DType::F32, &Device::Cpu), cfg, None).unwrap();
        let x = Tensor::zeros((2, 3, 64, 96), DType::F32, &Device::Cpu).unwrap();
        let s = net.forward_t(&x, true).unwrap();
        assert_eq!(s.c2.dims(), &[2, 16, 16, 24]);
        assert_eq!(s.c5.dims(), &[2, 128, 2, 3]);
        assert_eq!(cfg.out_channels(), [16, 32, 64, 128]);
    }
}
