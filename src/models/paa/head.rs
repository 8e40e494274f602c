//! PAA's dense head: mmdetection's `PAAHead`, whose layers are ATSSHead's
//! (`mmdet/models/dense_heads/atss_head.py`): on every pyramid level, with weights shared across
//! levels, a classification tower and a regression tower of `num_convs` × (3×3 conv without bias
//! → GroupNorm → ReLU), then `atss_cls` (sigmoid class logits) on the classification tower and
//! `atss_reg` (box deltas, times the level's learnable `scales.l.scale`) and `atss_centerness`
//! (PAA's IoU logit) on the regression tower. One anchor per location.
//!
//! Initialisation as mmdetection's: every conv `normal(0, 0.01)` with zero bias, the classifier's
//! bias at the prior `−ln((1 − p)/p)`, GroupNorm weight 1 and bias 0, scales 1.

use candle_core::{Module, Tensor};
use candle_nn::{GroupNorm, Init, VarBuilder};

use super::config::HeadConfig;
use crate::models::layers::{Conv2d, ConvSpec};
use crate::ops::conv::ConvImpl;
use crate::ops::relu::relu;

/// The head's outputs over all levels, flattened per image in anchor order (level, y, x).
pub struct DenseOutputs {
    /// Class logits `N × A × K`.
    pub cls: Tensor,
    /// Box deltas (already scaled per level) `N × A × 4`.
    pub reg: Tensor,
    /// IoU logits `N × A`.
    pub iou: Tensor,
    /// `(H, W)` of each level.
    pub sizes: Vec<(usize, usize)>,
}

#[derive(Debug, Clone)]
pub struct PaaHead {
    cls_convs: Vec<(Conv2d, GroupNorm)>,
    reg_convs: Vec<(Conv2d, GroupNorm)>,
    atss_cls: Conv2d,
    atss_reg: Conv2d,
    atss_centerness: Conv2d,
    scales: Vec<Tensor>,
    pub num_classes: usize,
}

impl PaaHead {
    pub fn new(
        vb: VarBuilder,
        cfg: &HeadConfig,
        in_channels: usize,
        num_classes: usize,
        levels: usize,
        imp: ConvImpl,
    ) -> candle_core::Result<Self> {
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
        let spec = |cin, cout, bias| ConvSpec {
            cin,
            cout,
            k: 3,
            stride: 1,
            padding: 1,
            bias,
            imp,
        };
        let tower = |vb: VarBuilder| -> candle_core::Result<Vec<(Conv2d, GroupNorm)>> {
            (0..cfg.num_convs)
                .map(|i| {
                    let cin = if i == 0 { in_channels } else { cfg.channels };
                    let b = vb.pp(i.to_string());
                    // mmcv's ConvModule drops the conv bias when a norm follows.
                    let conv = Conv2d::with_init(
                        b.pp("conv"),
                        spec(cin, cfg.channels, false),
                        normal,
                        Init::Const(0.0),
                    )?;
                    let gn = candle_nn::group_norm(cfg.gn_groups, cfg.channels, 1e-5, b.pp("gn"))?;
                    Ok((conv, gn))
                })
                .collect()
        };
        let prior_bias = -((1.0 - cfg.prior_prob) / cfg.prior_prob).ln();
        let c = cfg.channels;
        Ok(Self {
            cls_convs: tower(vb.pp("cls_convs"))?,
            reg_convs: tower(vb.pp("reg_convs"))?,
            atss_cls: Conv2d::with_init(
                vb.pp("atss_cls"),
                spec(c, num_classes, true),
                normal,
                Init::Const(prior_bias),
            )?,
            atss_reg: Conv2d::with_init(
                vb.pp("atss_reg"),
                spec(c, 4, true),
                normal,
                Init::Const(0.0),
            )?,
            atss_centerness: Conv2d::with_init(
                vb.pp("atss_centerness"),
                spec(c, 1, true),
                normal,
                Init::Const(0.0),
            )?,
            scales: (0..levels)
                .map(|l| {
                    vb.pp(format!("scales.{l}"))
                        .get_with_hints((), "scale", Init::Const(1.0))
                })
                .collect::<candle_core::Result<_>>()?,
            num_classes,
        })
    }

    /// Per level: class logits `N × K × H × W`, scaled deltas `N × 4 × H × W`, IoU logits
    /// `N × 1 × H × W` (mmdetection's layout).
    pub fn forward_levels(
        &self,
        features: &[Tensor],
    ) -> candle_core::Result<Vec<(Tensor, Tensor, Tensor)>> {
        let run = |tower: &[(Conv2d, GroupNorm)], x: &Tensor| -> candle_core::Result<Tensor> {
            let mut x = x.clone();
            for (conv, gn) in tower {
                x = relu(&gn.forward(&conv.forward(&x)?)?)?;
            }
            Ok(x)
        };
        features
            .iter()
            .zip(&self.scales)
            .map(|(f, scale)| {
                let cls_feat = run(&self.cls_convs, f)?;
                let reg_feat = run(&self.reg_convs, f)?;
                let cls = self.atss_cls.forward(&cls_feat)?;
                let reg = self.atss_reg.forward(&reg_feat)?.broadcast_mul(scale)?;
                let iou = self.atss_centerness.forward(&reg_feat)?;
                Ok((cls, reg, iou))
            })
            .collect()
    }

    /// All levels flattened per image in anchor order.
    pub fn forward(&self, features: &[Tensor]) -> candle_core::Result<DenseOutputs> {
        let levels = self.forward_levels(features)?;
        let flat = |t: &Tensor| -> candle_core::Result<Tensor> {
            let (n, c, h, w) = t.dims4()?;
            t.permute((0, 2, 3, 1))?.reshape((n, h * w, c))
        };
        let mut cls = vec![];
        let mut reg = vec![];
        let mut iou = vec![];
        let mut sizes = vec![];
        for (c, r, i) in &levels {
            sizes.push((c.dim(2)?, c.dim(3)?));
            cls.push(flat(c)?);
            reg.push(flat(r)?);
            iou.push(flat(i)?);
        }
        Ok(DenseOutputs {
            cls: Tensor::cat(&cls, 1)?,
            reg: Tensor::cat(&reg, 1)?,
            iou: Tensor::cat(&iou, 1)?.squeeze(2)?,
            sizes,
        })
    }
}
