//! mmdetection's `FPN` as PAA configures it (`mmdet/models/necks/fpn.py`, `start_level` at C3,
//! `add_extra_convs='on_output'`, `num_outs=5`): 1×1 lateral convs on C3–C5
//! (`neck.lateral_convs.i.conv`), top-down nearest upsampling to each lateral's size, 3×3 output
//! convs (`neck.fpn_convs.i.conv`), then P6 and P7 by stride-2 3×3 convs on P5's and P6's
//! outputs (`fpn_convs.3`, `fpn_convs.4`) with no ReLU between them (PAA leaves
//! `relu_before_extra_convs` False). Convs are initialised as mmdetection's `xavier_init`
//! (uniform), biases 0.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::models::layers::{Conv2d, ConvSpec};
use crate::ops::conv::ConvImpl;

#[derive(Debug, Clone)]
pub struct Neck {
    lateral: Vec<Conv2d>,
    output: Vec<Conv2d>,
    extra: Vec<Conv2d>,
}

impl Neck {
    /// `in_channels` of C3..C5; `out` channels at every level.
    pub fn new(
        vb: VarBuilder,
        in_channels: &[usize],
        out: usize,
        imp: ConvImpl,
    ) -> candle_core::Result<Self> {
        // xavier_init(distribution='uniform'): U(±sqrt(6 / (fan_in + fan_out))), gain 1.
        let xavier = |cin: usize, k: usize| {
            let (fi, fo) = ((cin * k * k) as f64, (out * k * k) as f64);
            let b = (6.0 / (fi + fo)).sqrt();
            Init::Uniform { lo: -b, up: b }
        };
        let conv = |vb: VarBuilder, cin, k, stride| {
            Conv2d::with_init(
                vb,
                ConvSpec {
                    cin,
                    cout: out,
                    k,
                    stride,
                    padding: k / 2,
                    bias: true,
                    imp,
                },
                xavier(cin, k),
                Init::Const(0.0),
            )
        };
        let mut lateral = vec![];
        let mut output = vec![];
        for (i, &c) in in_channels.iter().enumerate() {
            lateral.push(conv(vb.pp(format!("lateral_convs.{i}.conv")), c, 1, 1)?);
            output.push(conv(vb.pp(format!("fpn_convs.{i}.conv")), out, 3, 1)?);
        }
        let n = in_channels.len();
        let extra = (n..n + 2)
            .map(|i| conv(vb.pp(format!("fpn_convs.{i}.conv")), out, 3, 2))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            lateral,
            output,
            extra,
        })
    }

    /// P3..P7 from C3..C5.
    pub fn forward(&self, c: &[Tensor]) -> candle_core::Result<Vec<Tensor>> {
        let mut lat: Vec<Tensor> = c
            .iter()
            .zip(&self.lateral)
            .map(|(x, l)| l.forward(x))
            .collect::<candle_core::Result<_>>()?;
        for i in (1..lat.len()).rev() {
            let (_, _, h, w) = lat[i - 1].dims4()?;
            lat[i - 1] = (&lat[i - 1] + lat[i].upsample_nearest2d(h, w)?)?;
        }
        let mut out: Vec<Tensor> = lat
            .iter()
            .zip(&self.output)
            .map(|(x, o)| o.forward(x))
            .collect::<candle_core::Result<_>>()?;
        for e in &self.extra {
            let last = out.last().expect("at least one level").clone();
            out.push(e.forward(&last)?);
        }
        Ok(out)
    }
}
