//! Layers with torchvision's parameter names: `Conv2d` (kdet's fast op on CPU), and the three
//! normalisations a detector backbone may use — FrozenBatchNorm2d, BatchNorm2d, GroupNorm.

use candle_core::{Module, ModuleT, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::ops::conv::{conv2d, ConvImpl, ConvParams};
use crate::ops::norm::{batch_norm_train, channel_affine};

/// A 2-D convolution: `weight` (Cout × Cin/groups × k × k) and optional `bias`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: ConvParams,
    pub imp: ConvImpl,
}

/// How a convolution is built.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
    pub imp: ConvImpl,
}

impl Conv2d {
    /// Weights ~ kaiming normal, fan_out, ReLU gain (torchvision ResNet's init); bias zero.
    pub fn new(vb: VarBuilder, s: ConvSpec) -> candle_core::Result<Self> {
        let init = Init::Kaiming {
            dist: candle_nn::init::NormalOrUniform::Normal,
            fan: candle_nn::init::FanInOut::FanOut,
            non_linearity: candle_nn::init::NonLinearity::ReLU,
        };
        Self::with_init(vb, s, init, Init::Const(0.0))
    }

    pub fn with_init(vb: VarBuilder, s: ConvSpec, w: Init, b: Init) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints((s.cout, s.cin, s.k, s.k), "weight", w)?;
        let bias = if s.bias {
            Some(vb.get_with_hints(s.cout, "bias", b)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            params: ConvParams {
                stride: s.stride,
                padding: s.padding,
                dilation: 1,
                groups: 1,
            },
            imp: s.imp,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        conv2d(x, &self.weight, self.bias.as_ref(), self.params, self.imp)
    }
}

/// The tensors of a (Frozen)BatchNorm2d, with torchvision's names.
#[derive(Debug, Clone)]
pub struct BnParams {
    pub weight: Tensor,
    pub bias: Tensor,
    pub mean: Tensor,
    pub var: Tensor,
    pub eps: f64,
}

impl BnParams {
    fn new(vb: &VarBuilder, c: usize, eps: f64) -> candle_core::Result<Self> {
        let get = |n: &str, v: f64| vb.get_with_hints(c, n, Init::Const(v));
        Ok(Self {
            weight: get("weight", 1.0)?,
            bias: get("bias", 0.0)?,
            mean: get("running_mean", 0.0)?,
            var: get("running_var", 1.0)?,
            eps,
        })
    }

    /// `x · w/sqrt(rv + eps) + (b − rm · w/sqrt(rv + eps))`, no gradient to the statistics or
    /// the affine. The tensors are read at every call (one value per channel), so weights
    /// loaded into the VarMap after construction take effect.
    fn frozen(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let scale = (self.weight.detach() * (self.var.detach() + self.eps)?.sqrt()?.recip()?)?;
        let shift = (self.bias.detach() - (self.mean.detach() * &scale)?)?;
        channel_affine(x, &scale, &shift)
    }

    /// The same map from the running statistics, with gradients to the affine `weight` and
    /// `bias` (mmdetection's `norm_eval`).
    fn eval_affine(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = self.weight.elem_count();
        let inv_std = (self.var.detach() + self.eps)?.sqrt()?.recip()?;
        let scale = (&self.weight * inv_std)?;
        let shift = (&self.bias - (self.mean.detach() * &scale)?)?;
        // Broadcast ops rather than the fused `channel_affine`, which has no gradient for its
        // per-channel coefficients.
        x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)
    }
}

/// Normalisation layers of a backbone (`model.backbone.norm`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// FrozenBatchNorm2d: torchvision's choice for pretrained detection backbones.
    #[default]
    FrozenBn,
    /// Trainable BatchNorm (training from scratch).
    Bn,
    /// BatchNorm on its running statistics (never updated) with a trainable affine:
    /// mmdetection's `norm_eval=True` with `requires_grad=True`, its choice for pretrained
    /// backbones.
    BnEval,
    /// GroupNorm with 32 groups (Wu & He 2018).
    Gn,
}

/// A normalisation layer over channels.
#[derive(Debug, Clone)]
pub enum Norm {
    /// torchvision's FrozenBatchNorm2d: a fixed affine transform from stored statistics; its
    /// tensors never train.
    Frozen(BnParams),
    /// Trainable BatchNorm2d (momentum 0.1, PyTorch's default).
    Batch(BnParams),
    /// BatchNorm2d held in eval mode, its affine parameters trained.
    EvalBatch(BnParams),
    /// GroupNorm (Wu & He 2018), 32 groups or fewer when channels are few.
    Group(candle_nn::GroupNorm),
}

impl Norm {
    /// `eps` of the batch norms (torchvision 1e-5; see `BackboneConfig::bn_eps`).
    pub fn new(vb: VarBuilder, kind: NormKind, c: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(match kind {
            NormKind::FrozenBn => Norm::Frozen(BnParams::new(&vb, c, eps)?),
            NormKind::Bn => Norm::Batch(BnParams::new(&vb, c, eps)?),
            NormKind::BnEval => Norm::EvalBatch(BnParams::new(&vb, c, eps)?),
            NormKind::Gn => Norm::Group(candle_nn::group_norm(group_count(c), c, 1e-5, vb)?),
        })
    }
}

/// PyTorch's BatchNorm2d momentum.
const BN_MOMENTUM: f32 = 0.1;

/// BatchNorm training mode with candle ops (devices without the fused kernel). Returns the
/// output, the batch mean and the unbiased batch variance.
fn batch_norm_train_generic(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let c = w.dim(0)?;
    let (n, _, h, ww) = x.dims4()?;
    let m = (n * h * ww) as f64;
    let mean = x.mean_keepdim((0, 2, 3))?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
    let y = xc.broadcast_div(&(&var + eps)?.sqrt()?)?;
    let y = y
        .broadcast_mul(&w.reshape((1, c, 1, 1))?)?
        .broadcast_add(&b.reshape((1, c, 1, 1))?)?;
    Ok((
        y,
        mean.flatten_all()?.detach(),
        (var.flatten_all()? * (m / (m - 1.0)))?.detach(),
    ))
}

/// `stat ← (1 − momentum)·stat + momentum·batch`, written into the stored tensor itself (so the
/// model's VarMap and its checkpoints see it; candle-nn's BatchNorm keeps a detached copy).
fn ema_update(stat: &Tensor, batch: &Tensor) -> candle_core::Result<()> {
    let m = BN_MOMENTUM as f64;
    let new = ((stat.detach() * (1.0 - m))? + (batch.to_dtype(stat.dtype())? * m)?)?;
    stat.slice_set(&new, 0, 0)
}

/// Largest divisor of `c` that is at most 32 (GroupNorm needs groups | channels).
pub fn group_count(c: usize) -> usize {
    (1..=32.min(c))
        .rev()
        .find(|g| c.is_multiple_of(*g))
        .unwrap_or(1)
}

impl ModuleT for Norm {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Norm::Frozen(p) => p.frozen(x),
            Norm::Batch(p) if train => {
                let (y, batch_mean, batch_var) =
                    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
                        let (y, st) = batch_norm_train(x, &p.weight, &p.bias, p.eps)?;
                        let dev = p.weight.device();
                        let c = st.mean.len();
                        (
                            y,
                            Tensor::from_vec(st.mean, c, dev)?,
                            Tensor::from_vec(st.var_unbiased, c, dev)?,
                        )
                    } else {
                        batch_norm_train_generic(x, &p.weight, &p.bias, p.eps)?
                    };
                ema_update(&p.mean, &batch_mean)?;
                ema_update(&p.var, &batch_var)?;
                Ok(y)
            }
            // Eval mode: the same affine map as FrozenBatchNorm2d, from the running statistics.
            Norm::Batch(p) => p.frozen(x),
            Norm::EvalBatch(p) => p.eval_affine(x),
            Norm::Group(gn) => gn.forward(x),
        }
    }
}
