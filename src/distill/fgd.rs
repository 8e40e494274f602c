//! FGD — focal and global distillation (Yang et al., CVPR 2022), as the official code computes it
//! (yzd-v/FGD `mmdet/distillation/losses/fgd.py`, `FeatureLoss`; MMRazor's `FGDLoss` is the same
//! loss). With `S`, `T` the (aligned) student and teacher maps (N×C×H×W):
//!
//! - attention at temperature T: spatial `A_S = H·W · softmax_p(mean_c |F| / T)`, channel
//!   `A_C = C · softmax_c(mean_p |F| / T)`, for each map;
//! - masks from the ground-truth boxes scaled onto the map: each box covers the cells
//!   `⌊y1⌋..=⌈y2⌉ × ⌊x1⌋..=⌈x2⌉` with weight `1 / ((⌈y2⌉+1−⌊y1⌋)(⌈x2⌉+1−⌊x1⌋))` (the larger where
//!   boxes overlap) — `M_fg`; `M_bg` = 1 off every box, divided by its count;
//! - focal loss `α Σ M_fg A_S^t A_C^t (S − T)² / N + β Σ M_bg A_S^t A_C^t (S − T)² / N` (the
//!   teacher's attention weighs both);
//! - attention loss `γ (Σ |A_C^s − A_C^t| + Σ |A_S^s − A_S^t|) / N`;
//! - global loss `λ Σ (GC_s(S) − GC_t(T))² / N`, `GC(x) = x + W₂ ReLU(LN(W₁ c(x)))`,
//!   `c(x) = Σ_p x_p softmax_p(W_k x)` (GcBlock: context modelling + channel transform), one
//!   GcBlock for each side, both trained.
//!
//! Boxes are scaled by feature size / padded image size (the stride); the official code divides
//! by the unpadded image size, the same when a batch needs no padding. The official mask indexes
//! the H×W map as `[x-range, y-range]` (transposed); MMRazor's `FGDLoss` fixed it to
//! `[y-range, x-range]`, which kdet follows. Defaults (T 0.5, α 1e-3, β 5e-4, γ 1e-3, λ 5e-6)
//! are the official `FeatureLoss` defaults; its Faster R-CNN config uses α 5e-5, β 2.5e-5,
//! γ 5e-5, λ 5e-7. Initialisation as the official `reset_parameters`: `W_k` kaiming-normal
//! (fan-in), the last conv of each channel transform zero (so GC starts as the identity), the
//! rest PyTorch's default.

use candle_core::{Device, Module, Tensor};
use candle_nn::ops::softmax;
use candle_nn::{Init, VarBuilder};

use super::align::torch_conv;
use crate::models::layers::{Conv2d, ConvSpec};
use crate::ops::conv::ConvImpl;

/// One GcBlock (context modelling + channel transform) with the official names:
/// `conv_mask_{s,t}`, `channel_add_conv_{s,t}.{0,1,3}`.
#[derive(Debug, Clone)]
pub struct GcBlock {
    conv_mask: Conv2d,
    add1: Conv2d,
    ln_weight: Tensor,
    ln_bias: Tensor,
    add2: Conv2d,
}

impl GcBlock {
    /// `side` is `s` (student) or `t` (teacher); `channels` ≥ 2.
    pub fn new(vb: VarBuilder, channels: usize, side: &str) -> candle_core::Result<Self> {
        let half = channels / 2;
        let spec = |cin, cout| ConvSpec {
            cin,
            cout,
            k: 1,
            stride: 1,
            padding: 0,
            bias: true,
            imp: ConvImpl::Kdet,
        };
        let kaiming = Init::Kaiming {
            dist: candle_nn::init::NormalOrUniform::Normal,
            fan: candle_nn::init::FanInOut::FanIn,
            non_linearity: candle_nn::init::NonLinearity::ReLU,
        };
        let add = vb.pp(format!("channel_add_conv_{side}"));
        Ok(Self {
            conv_mask: Conv2d::with_init(
                vb.pp(format!("conv_mask_{side}")),
                spec(channels, 1),
                kaiming,
                Init::Const(0.0),
            )?,
            add1: torch_conv(add.pp("0"), channels, half, 1)?,
            ln_weight: add
                .pp("1")
                .get_with_hints((half, 1, 1), "weight", Init::Const(1.0))?,
            ln_bias: add
                .pp("1")
                .get_with_hints((half, 1, 1), "bias", Init::Const(0.0))?,
            add2: Conv2d::with_init(
                add.pp("3"),
                spec(half, channels),
                Init::Const(0.0),
                Init::Const(0.0),
            )?,
        })
    }

    /// Context modelling: `Σ_p x_p · softmax_p(W_k x)`, N×C×1×1.
    pub fn context(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let weights = softmax(&self.conv_mask.forward(x)?.reshape((n, h * w))?, 1)?;
        x.reshape((n, c, h * w))?
            .matmul(&weights.reshape((n, h * w, 1))?)?
            .reshape((n, c, 1, 1))
    }
}

impl Module for GcBlock {
    /// `x + W₂ ReLU(LN(W₁ c(x)))`, LayerNorm over the C/2 channels (eps 1e-5, affine).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.add1.forward(&self.context(x)?)?;
        let (n, half, _, _) = y.dims4()?;
        let y = y.reshape((n, half))?;
        let d = y.broadcast_sub(&y.mean_keepdim(1)?)?;
        let var = d.sqr()?.mean_keepdim(1)?;
        let y = d
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(&self.ln_weight.reshape((1, half))?)?
            .broadcast_add(&self.ln_bias.reshape((1, half))?)?
            .relu()?
            .reshape((n, half, 1, 1))?;
        x.broadcast_add(&self.add2.forward(&y)?)
    }
}

/// FGD's variables for one pair of maps: a GcBlock per side.
#[derive(Debug, Clone)]
pub struct Fgd {
    pub student: GcBlock,
    pub teacher: GcBlock,
}

impl Fgd {
    pub fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        Ok(Self {
            student: GcBlock::new(vb.clone(), channels, "s")?,
            teacher: GcBlock::new(vb, channels, "t")?,
        })
    }
}

/// Spatial (N×1×H×W, summing to H·W per image) and channel (N×C×1×1, summing to C) attention.
pub fn attention(x: &Tensor, temperature: f64) -> candle_core::Result<(Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    let v = x.abs()?;
    let spatial = v.mean_keepdim(1)?.reshape((n, h * w))?;
    let spatial =
        (softmax(&(spatial / temperature)?, 1)? * (h * w) as f64)?.reshape((n, 1, h, w))?;
    let channel = v.mean(3)?.mean(2)?;
    let channel = (softmax(&(channel / temperature)?, 1)? * c as f64)?.reshape((n, c, 1, 1))?;
    Ok((spatial, channel))
}

/// Foreground and background masks (each N×1×H×W) of boxes `[x1, y1, x2, y2]` per image, in
/// input pixels, scaled onto an `h × w` map by `(sx, sy)`.
pub fn masks(
    boxes: &[Vec<[f32; 4]>],
    (sx, sy): (f64, f64),
    (h, w): (usize, usize),
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = boxes.len();
    let mut fg = vec![0f32; n * h * w];
    let mut bg = vec![0f32; n * h * w];
    for (i, bs) in boxes.iter().enumerate() {
        let f = &mut fg[i * h * w..(i + 1) * h * w];
        for b in bs {
            let wmin = (b[0] as f64 * sx).floor().max(0.0) as usize;
            let wmax = (b[2] as f64 * sx).ceil().max(0.0) as usize;
            let hmin = (b[1] as f64 * sy).floor().max(0.0) as usize;
            let hmax = (b[3] as f64 * sy).ceil().max(0.0) as usize;
            let area = 1.0 / ((hmax + 1 - hmin.min(hmax)) * (wmax + 1 - wmin.min(wmax))) as f32;
            for r in hmin..=hmax.min(h.saturating_sub(1)) {
                for c in wmin..=wmax.min(w.saturating_sub(1)) {
                    f[r * w + c] = f[r * w + c].max(area);
                }
            }
        }
        let g = &mut bg[i * h * w..(i + 1) * h * w];
        let count = f.iter().filter(|v| **v == 0.0).count();
        for (gv, fv) in g.iter_mut().zip(f.iter()) {
            if *fv == 0.0 {
                *gv = 1.0 / count as f32;
            }
        }
    }
    Ok((
        Tensor::from_vec(fg, (n, 1, h, w), device)?,
        Tensor::from_vec(bg, (n, 1, h, w), device)?,
    ))
}

/// FGD's four losses, unweighted.
pub struct FgdLosses {
    pub foreground: Tensor,
    pub background: Tensor,
    pub attention: Tensor,
    pub global: Tensor,
}

/// FGD between the (aligned) student map and the teacher map (same size), with the masks of
/// [`masks`].
pub fn fgd_losses(
    vars: &Fgd,
    student: &Tensor,
    teacher: &Tensor,
    fg: &Tensor,
    bg: &Tensor,
    temperature: f64,
) -> candle_core::Result<FgdLosses> {
    let n = student.dim(0)? as f64;
    let teacher = teacher.detach();
    let (ss, cs) = attention(student, temperature)?;
    let (st, ct) = attention(&teacher, temperature)?;
    let sq = (student - &teacher)?
        .sqr()?
        .broadcast_mul(&st)?
        .broadcast_mul(&ct)?;
    let foreground = (sq.broadcast_mul(fg)?.sum_all()? / n)?;
    let background = (sq.broadcast_mul(bg)?.sum_all()? / n)?;
    let attention = (((cs - ct)?.abs()?.sum_all()? + (ss - st)?.abs()?.sum_all()?)? / n)?;
    let global = (vars.student.forward(student)? - vars.teacher.forward(&teacher)?)?
        .sqr()?
        .sum_all()?;
    Ok(FgdLosses {
        foreground,
        background,
        attention,
        global: (global / n)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};
    use candle_nn::VarMap;

    use crate::distill::test_util::scalar;

    #[test]
    fn masks_weigh_boxes_by_area_and_share_the_background() {
        // An 8×8 input on a 4×4 map: box [0,0,3,3] → cells 0..=2 (⌈1.5⌉ = 2), 1/9 each; box
        // [4,4,6,6] → cells 2..=3, 1/4, winning the shared cell (2,2).
        let (fg, bg) = masks(
            &[vec![[0.0, 0.0, 3.0, 3.0], [4.0, 4.0, 6.0, 6.0]]],
            (0.5, 0.5),
            (4, 4),
            &Device::Cpu,
        )
        .unwrap();
        let fg = fg.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bg = bg.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (a, b) = (1.0 / 9.0, 0.25);
        #[rustfmt::skip]
        let want = [a, a, a, 0.0,
                    a, a, a, 0.0,
                    a, a, b, b,
                    0.0, 0.0, b, b];
        for (k, (x, y)) in fg.iter().zip(want).enumerate() {
            assert!((x - y).abs() < 1e-7, "cell {k}: {x} vs {y}");
        }
        // Four background cells (3, 7, 12, 13), a quarter each.
        for (k, x) in bg.iter().enumerate() {
            let y = if [3, 7, 12, 13].contains(&k) {
                0.25
            } else {
                0.0
            };
            assert_eq!(*x, y, "cell {k}");
        }
        // A box in the y direction only covers rows, not columns (MMRazor's [y, x] order).
        let (fg, _) = masks(
            &[vec![[0.0, 0.0, 1.0, 7.0]]],
            (0.5, 0.5),
            (4, 4),
            &Device::Cpu,
        )
        .unwrap();
        let fg = fg.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(fg[3] == 0.0 && fg[12] > 0.0, "{fg:?}");
    }

    #[test]
    fn context_is_the_attention_weighted_mean_of_positions() {
        let d = Device::Cpu;
        let vm = VarMap::new();
        let g = GcBlock::new(VarBuilder::from_varmap(&vm, DType::F32, &d), 2, "s").unwrap();
        // Set W_k to pick channel 0: weights softmax([1, 3]).
        vm.data().lock().unwrap()["conv_mask_s.weight"]
            .set(&Tensor::new(&[[[[1f32]], [[0.0]]]], &d).unwrap())
            .unwrap();
        let x = Tensor::new(&[[[[1f32, 3.0]], [[10.0, 20.0]]]], &d).unwrap();
        let c = g
            .context(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let p1 = (3f64.exp() / (1f64.exp() + 3f64.exp())) as f32;
        assert!((c[0] - (1.0 * (1.0 - p1) + 3.0 * p1)).abs() < 1e-5);
        assert!((c[1] - (10.0 * (1.0 - p1) + 20.0 * p1)).abs() < 1e-4);
        // The zero-initialised last conv makes the block the identity at first.
        let y = g.forward(&x).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1.0, 3.0, 10.0, 20.0]
        );
    }

    #[test]
    fn losses_match_a_direct_computation() {
        let d = Device::Cpu;
        let (n, c, h, w) = (2usize, 2usize, 2usize, 2usize);
        let sv: Vec<f32> = (0..16).map(|k| ((k * 7 % 5) as f32 - 2.0) * 0.5).collect();
        let tv: Vec<f32> = (0..16).map(|k| ((k * 3 % 7) as f32 - 3.0) * 0.4).collect();
        let s = Tensor::from_vec(sv.clone(), (n, c, h, w), &d).unwrap();
        let t = Tensor::from_vec(tv.clone(), (n, c, h, w), &d).unwrap();
        let fgm = [0.25f32, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 1.0];
        let bgm = [0.0f32, 0.5, 0.0, 0.5, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0];
        let fg = Tensor::from_vec(fgm.to_vec(), (n, 1, h, w), &d).unwrap();
        let bg = Tensor::from_vec(bgm.to_vec(), (n, 1, h, w), &d).unwrap();
        let vm = VarMap::new();
        let vars = Fgd::new(VarBuilder::from_varmap(&vm, DType::F32, &d), c).unwrap();
        let temp = 0.5;
        let l = fgd_losses(&vars, &s, &t, &fg, &bg, temp).unwrap();

        // The same in f64 loops.
        let at = |x: &[f32], i: usize, ch: usize, p: usize| x[(i * c + ch) * h * w + p] as f64;
        let attn = |x: &[f32], i: usize| {
            let sp: Vec<f64> = (0..h * w)
                .map(|p| (0..c).map(|ch| at(x, i, ch, p).abs()).sum::<f64>() / c as f64 / temp)
                .collect();
            let ch: Vec<f64> = (0..c)
                .map(|ch| {
                    (0..h * w).map(|p| at(x, i, ch, p).abs()).sum::<f64>() / (h * w) as f64 / temp
                })
                .collect();
            let sm = |v: &[f64], k: f64| {
                let z: f64 = v.iter().map(|e| e.exp()).sum();
                v.iter().map(|e| k * e.exp() / z).collect::<Vec<_>>()
            };
            (sm(&sp, (h * w) as f64), sm(&ch, c as f64))
        };
        let (mut fgl, mut bgl, mut att, mut glob) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..n {
            let (ss, cs) = attn(&sv, i);
            let (st, ct) = attn(&tv, i);
            for ch in 0..c {
                att += (cs[ch] - ct[ch]).abs();
                for p in 0..h * w {
                    let d2 = (at(&sv, i, ch, p) - at(&tv, i, ch, p)).powi(2);
                    fgl += d2 * st[p] * ct[ch] * fgm[i * h * w + p] as f64;
                    bgl += d2 * st[p] * ct[ch] * bgm[i * h * w + p] as f64;
                    // Fresh GcBlocks are the identity.
                    glob += d2;
                }
            }
            for p in 0..h * w {
                att += (ss[p] - st[p]).abs();
            }
        }
        let nf = n as f64;
        for (got, want) in [
            (scalar(&l.foreground), fgl / nf),
            (scalar(&l.background), bgl / nf),
            (scalar(&l.attention), att / nf),
            (scalar(&l.global), glob / nf),
        ] {
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn gradient_reaches_student_and_both_gcblocks_not_teacher() {
        let d = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &d);
        let a = crate::distill::align::Align::new(vb.pp("align"), 2, 4).unwrap();
        let vars = Fgd::new(vb, 4).unwrap();
        let s = Var::rand(-1f32, 1.0, (2, 2, 4, 4), &d).unwrap();
        let t = Var::rand(-1f32, 1.0, (2, 4, 4, 4), &d).unwrap();
        let (fg, bg) = masks(
            &[vec![[0.0, 0.0, 8.0, 8.0]], vec![]],
            (0.25, 0.25),
            (4, 4),
            &d,
        )
        .unwrap();
        let l = fgd_losses(&vars, &a.forward(&s).unwrap(), &t, &fg, &bg, 0.5).unwrap();
        let total =
            (((l.foreground + l.background).unwrap() + l.attention).unwrap() + l.global).unwrap();
        let grads = total.backward().unwrap();
        let v = vm.data().lock().unwrap();
        assert!(grads.get(&s).is_some());
        for name in [
            "align.weight",
            "conv_mask_s.weight",
            "conv_mask_t.weight",
            "channel_add_conv_s.3.weight",
            "channel_add_conv_t.3.weight",
            "channel_add_conv_t.1.weight",
        ] {
            assert!(grads.get(&v[name]).is_some(), "{name}");
        }
        assert!(grads.get(&t).is_none());
    }
}
