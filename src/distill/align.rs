//! The 1×1 "align" convolution of the feature-distillation methods' official code (MGD's and
//! FGD's `FeatureLoss.align`): it maps the student's channels to the teacher's and exists only
//! when the counts differ. kdet gives PKD and CWD the same layer for unequal channels (their
//! reference configs pair equal 256-channel FPNs, so MMRazor's losses have none). Initialised as
//! PyTorch's `nn.Conv2d` default: weight and bias ~ U(±1/√fan_in). A method variable: trained
//! and checkpointed with the student, never exported.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::models::layers::{Conv2d, ConvSpec};
use crate::ops::conv::ConvImpl;

/// A `k × k` convolution (padding `k / 2`) with PyTorch's default `nn.Conv2d` initialisation.
pub fn torch_conv(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
) -> candle_core::Result<Conv2d> {
    let spec = ConvSpec {
        cin,
        cout,
        k,
        stride: 1,
        padding: k / 2,
        bias: true,
        imp: ConvImpl::Kdet,
    };
    let b = 1.0 / ((cin * k * k) as f64).sqrt();
    Conv2d::with_init(
        vb,
        spec,
        Init::Uniform { lo: -b, up: b },
        Init::Uniform { lo: -b, up: b },
    )
}

/// The student map as the teacher's channels: through the align conv, or as it is.
#[derive(Debug, Clone)]
pub struct Align {
    conv: Option<Conv2d>,
}

impl Align {
    /// An align conv under `vb` when `student_channels != teacher_channels`, else none.
    pub fn new(
        vb: VarBuilder,
        student_channels: usize,
        teacher_channels: usize,
    ) -> candle_core::Result<Self> {
        let conv = if student_channels == teacher_channels {
            None
        } else {
            Some(torch_conv(vb, student_channels, teacher_channels, 1)?)
        };
        Ok(Self { conv })
    }

    /// Whether there is a conv (the channel counts differ).
    pub fn is_conv(&self) -> bool {
        self.conv.is_some()
    }
}

impl Module for Align {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.conv {
            Some(c) => c.forward(x),
            None => Ok(x.clone()),
        }
    }
}

/// `x` as `N × C × H × W`: a pooled vector (`N × C`, a classifier's `pool` tap) becomes `1 × 1`.
pub fn as_map(x: &Tensor) -> candle_core::Result<Tensor> {
    match x.rank() {
        2 => {
            let (n, c) = x.dims2()?;
            x.reshape((n, c, 1, 1))
        }
        _ => Ok(x.clone()),
    }
}

/// The teacher map at the student's spatial size: bilinearly resized when they differ (the
/// teacher side needs no gradient, and candle's bilinear resize has no backward pass).
pub fn teacher_to(student: &Tensor, teacher: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = student.dims4()?;
    let (_, _, th, tw) = teacher.dims4()?;
    let t = teacher.detach();
    if (th, tw) == (h, w) {
        Ok(t)
    } else {
        t.upsample_bilinear2d(h, w, false)
    }
}
