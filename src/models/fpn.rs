//! Feature Pyramid Network (Lin et al. 2017) as torchvision's `FeaturePyramidNetwork` with
//! `LastLevelMaxPool`: 1×1 lateral convs (`inner_blocks.i.0`), nearest top-down upsampling to
//! each lateral's size, 3×3 output convs (`layer_blocks.i.0`), and a stride-2 subsampling of the
//! coarsest output as the extra "pool" level.

use candle_core::{Module, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder};

use crate::ops::conv::ConvImpl;
use crate::ops::pool::{max_pool2d, PoolParams};

use super::layers::{Conv2d, ConvSpec};

/// The `fpn` section of a model config.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FpnConfig {
    /// FPN channels. torchvision: 256.
    pub out_channels: usize,
}

impl Default for FpnConfig {
    fn default() -> Self {
        Self { out_channels: 256 }
    }
}

impl FpnConfig {
    pub fn validate(&self, p: &str) -> crate::error::Check {
        // Each level's 3×3 conv has out_channels² × 9 weights: 4096 is 150 M of them.
        if self.out_channels == 0 || self.out_channels > 4096 {
            return Err(crate::error::invalid(
                format!("{p}.out_channels"),
                "must be in 1..=4096",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Fpn {
    inner: Vec<Conv2d>,
    layer: Vec<Conv2d>,
}

impl Fpn {
    /// `in_channels` of C2..C5, `out` channels at every level.
    pub fn new(
        vb: VarBuilder,
        in_channels: &[usize],
        out: usize,
        imp: ConvImpl,
    ) -> candle_core::Result<Self> {
        // torchvision: kaiming_uniform_(a=1) weights, zero bias.
        let w = Init::Kaiming {
            dist: NormalOrUniform::Uniform,
            fan: FanInOut::FanIn,
            non_linearity: NonLinearity::ExplicitGain(1.0),
        };
        let conv = |vb: VarBuilder, cin, k| {
            Conv2d::with_init(
                vb,
                ConvSpec {
                    cin,
                    cout: out,
                    k,
                    stride: 1,
                    padding: k / 2,
                    bias: true,
                    imp,
                },
                w,
                Init::Const(0.0),
            )
        };
        let mut inner = vec![];
        let mut layer = vec![];
        for (i, &c) in in_channels.iter().enumerate() {
            inner.push(conv(vb.pp(format!("inner_blocks.{i}.0")), c, 1)?);
            layer.push(conv(vb.pp(format!("layer_blocks.{i}.0")), out, 3)?);
        }
        Ok(Self { inner, layer })
    }

    /// P2..P5 and the extra pool level (P6), finest first.
    pub fn forward(&self, c: &[Tensor]) -> candle_core::Result<Vec<Tensor>> {
        let n = c.len();
        let mut last = self.inner[n - 1].forward(&c[n - 1])?;
        let mut out = vec![self.layer[n - 1].forward(&last)?];
        for i in (0..n - 1).rev() {
            let lateral = self.inner[i].forward(&c[i])?;
            let (_, _, h, w) = lateral.dims4()?;
            last = (lateral + last.upsample_nearest2d(h, w)?)?;
            out.insert(0, self.layer[i].forward(&last)?);
        }
        let top = out[n - 1].clone();
        out.push(max_pool2d(
            &top,
            PoolParams {
                kernel: 1,
                stride: 2,
                padding: 0,
            },
        )?);
        Ok(out)
    }
}
