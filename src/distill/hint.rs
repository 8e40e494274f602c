//! Hint learning with an adaptation layer (Chen et al. 2017 §3.3, after FitNets): a 1×1 conv maps
//! the student's feature map to the teacher's channels (always present, as in the paper, even
//! when the channel counts match), then `‖V − Z‖²` (Eq. 5) or `‖V − Z‖₁` (Eq. 6) to the teacher's
//! map `Z`, averaged over elements (the paper sums; the mean keeps γ independent of map size).
//! When the maps differ in size the smaller is zero-padded at the bottom/right (the paper's
//! choice). The adaptation layer trains with the student and is dropped at export.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::distill::HintDistance;
use crate::models::layers::{Conv2d, ConvSpec};
use crate::ops::conv::ConvImpl;

/// The 1×1 adaptation conv, with its parameters under the given VarBuilder prefix.
#[derive(Debug, Clone)]
pub struct Adaptation {
    conv: Conv2d,
}

impl Adaptation {
    pub fn new(
        vb: VarBuilder,
        student_channels: usize,
        teacher_channels: usize,
    ) -> candle_core::Result<Self> {
        let spec = ConvSpec {
            cin: student_channels,
            cout: teacher_channels,
            k: 1,
            stride: 1,
            padding: 0,
            bias: true,
            imp: ConvImpl::Kdet,
        };
        let b = 1.0 / (student_channels as f64).sqrt();
        Ok(Self {
            conv: Conv2d::with_init(vb, spec, Init::Uniform { lo: -b, up: b }, Init::Const(0.0))?,
        })
    }
}

impl Module for Adaptation {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv.forward(x)
    }
}

/// Zero-pad `x` (N×C×H×W) at the bottom/right to `h × w`.
fn pad_to(x: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    x.pad_with_zeros(2, 0, h - xh)?.pad_with_zeros(3, 0, w - xw)
}

/// Hint loss between the adapted student map and the teacher map.
pub fn hint_loss(
    adapted: &Tensor,
    teacher: &Tensor,
    distance: HintDistance,
) -> candle_core::Result<Tensor> {
    let (_, _, sh, sw) = adapted.dims4()?;
    let (_, _, th, tw) = teacher.dims4()?;
    let (h, w) = (sh.max(th), sw.max(tw));
    let v = pad_to(adapted, h, w)?;
    let z = pad_to(&teacher.detach(), h, w)?;
    let d = (v - z)?;
    match distance {
        HintDistance::L2 => d.sqr()?.mean_all(),
        HintDistance::L1 => d.abs()?.mean_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn padded_l2_and_l1() {
        let d = Device::Cpu;
        let s = Tensor::ones((1, 1, 1, 2), DType::F32, &d).unwrap();
        let t = Tensor::full(3f32, (1, 1, 2, 2), &d).unwrap();
        // Padded student [[1, 1], [0, 0]] vs 3: squared errors 4, 4, 9, 9 → mean 6.5.
        assert_eq!(
            hint_loss(&s, &t, HintDistance::L2)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            6.5
        );
        assert_eq!(
            hint_loss(&s, &t, HintDistance::L1)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            2.5
        );
    }

    #[test]
    fn gradient_reaches_adaptation_and_student_not_teacher() {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let a = Adaptation::new(vb.pp("adapt"), 2, 3).unwrap();
        let s = Var::new(&[[[[1f32, 2.0]], [[0.5, -1.0]]]], &Device::Cpu).unwrap();
        let t = Var::new(&[[[[1f32, 0.0]], [[2.0, 1.0]], [[0.0, 0.0]]]], &Device::Cpu).unwrap();
        let g = hint_loss(&a.forward(&s).unwrap(), &t, HintDistance::L2)
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(&s).is_some());
        assert!(g.get(&vm.data().lock().unwrap()["adapt.weight"]).is_some());
        assert!(g.get(&t).is_none());
    }
}
