//! MGD — masked generative distillation (Yang et al., ECCV 2022), as the official code computes
//! it (yzd-v/MGD `det/mmdet/distillation/losses/mgd.py`, `FeatureLoss`): the (aligned) student
//! map is masked at random positions — each position of each image dropped with probability λ,
//! the same positions for every channel (`rand(N,1,H,W) > 1 − λ` → 0) — and a generator
//! (3×3 conv, ReLU, 3×3 conv, teacher channels throughout) must rebuild the teacher's map from
//! what is left: `L = α · Σ (G(M ⊙ S) − T)² / N`. The mask comes from the step's seeded RNG (so
//! `--resume` redraws it exactly). The generator (and the align conv) are method variables,
//! initialised as PyTorch's `nn.Conv2d` default and named as the official module
//! (`generation.0`, `generation.2`). Defaults α = 2e-5, λ = 0.65: the official `FeatureLoss`
//! defaults and its RetinaNet config; its Faster R-CNN config uses α = 5e-7, λ = 0.45.

use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;

use super::align::torch_conv;
use crate::models::layers::Conv2d;

/// The generator `G`: conv 3×3 → ReLU → conv 3×3, `channels` in and out.
#[derive(Debug, Clone)]
pub struct Generator {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl Generator {
    pub fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        Ok(Self {
            conv1: torch_conv(vb.pp("generation.0"), channels, channels, 3)?,
            conv2: torch_conv(vb.pp("generation.2"), channels, channels, 3)?,
        })
    }
}

impl Module for Generator {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv2.forward(&self.conv1.forward(x)?.relu()?)
    }
}

/// The keep mask, `N × 1 × H × W`: 0 where a uniform draw is above `1 − ratio` (masked), else 1.
pub fn random_mask<R: Rng>(
    n: usize,
    h: usize,
    w: usize,
    ratio: f64,
    rng: &mut R,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..n * h * w)
        .map(|_| {
            if rng.random::<f64>() > 1.0 - ratio {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    Tensor::from_vec(v, (n, 1, h, w), device)
}

/// `Σ (G(mask ⊙ student) − teacher)² / N`, unweighted (α applies outside).
pub fn mgd_loss(
    student: &Tensor,
    teacher: &Tensor,
    mask: &Tensor,
    generator: &Generator,
) -> candle_core::Result<Tensor> {
    let n = student.dim(0)?;
    let masked = student.broadcast_mul(mask)?;
    let rebuilt = generator.forward(&masked)?;
    (rebuilt - teacher.detach())?.sqr()?.sum_all()? / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};
    use candle_nn::VarMap;
    use rand::SeedableRng;
    use std::collections::HashMap;

    #[test]
    fn generator_rebuilds_from_the_kept_positions_and_sums_over_n() {
        let d = Device::Cpu;
        // One channel, 3×3 kernels with only the centre 1, no bias: G(x) = relu(x).
        let mut k = vec![0f32; 9];
        k[4] = 1.0;
        let centre = Tensor::from_vec(k, (1, 1, 3, 3), &d).unwrap();
        let zero = Tensor::zeros(1, DType::F32, &d).unwrap();
        let ts: HashMap<String, Tensor> = [
            ("generation.0.weight", &centre),
            ("generation.0.bias", &zero),
            ("generation.2.weight", &centre),
            ("generation.2.bias", &zero),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
        let g = Generator::new(VarBuilder::from_tensors(ts, DType::F32, &d), 1).unwrap();
        let s = Tensor::new(&[[[[1f32, -2.0], [3.0, 4.0]]]], &d).unwrap();
        let t = Tensor::new(&[[[[0f32, 1.0], [1.0, 1.0]]]], &d).unwrap();
        let mask = Tensor::new(&[[[[1f32, 0.0], [1.0, 1.0]]]], &d).unwrap();
        // Masked [1, 0, 3, 4] → relu → same; minus t: 1, −1, 2, 3 → 1 + 1 + 4 + 9 = 15.
        let l = mgd_loss(&s, &t, &mask, &g).unwrap();
        assert_eq!(l.to_scalar::<f32>().unwrap(), 15.0);
        // Two identical images: the sum doubles, the /N halves it again.
        let s2 = Tensor::cat(&[&s, &s], 0).unwrap();
        let t2 = Tensor::cat(&[&t, &t], 0).unwrap();
        let m2 = Tensor::cat(&[&mask, &mask], 0).unwrap();
        let l = mgd_loss(&s2, &t2, &m2, &g).unwrap();
        assert_eq!(l.to_scalar::<f32>().unwrap(), 15.0);
    }

    #[test]
    fn mask_drops_about_ratio_of_positions_and_repeats_with_the_seed() {
        let d = Device::Cpu;
        let draw = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            random_mask(4, 50, 50, 0.65, &mut rng, &d).unwrap()
        };
        let m = draw(3);
        let kept = m.sum_all().unwrap().to_scalar::<f32>().unwrap() / 10_000.0;
        assert!((kept - 0.35).abs() < 0.02, "{kept}");
        let same = draw(3).eq(&m).unwrap().min_all().unwrap();
        assert_eq!(same.to_scalar::<u8>().unwrap(), 1);
        assert_ne!(
            draw(4).sum_all().unwrap().to_scalar::<f32>().unwrap(),
            m.sum_all().unwrap().to_scalar::<f32>().unwrap()
        );
    }

    #[test]
    fn gradient_reaches_generator_align_and_student_not_teacher() {
        let d = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &d);
        let a = crate::distill::align::Align::new(vb.pp("align"), 2, 3).unwrap();
        let g = Generator::new(vb.clone(), 3).unwrap();
        let s = Var::rand(-1f32, 1.0, (2, 2, 4, 4), &d).unwrap();
        let t = Var::rand(-1f32, 1.0, (2, 3, 4, 4), &d).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mask = random_mask(2, 4, 4, 0.5, &mut rng, &d).unwrap();
        let grads = mgd_loss(&a.forward(&s).unwrap(), &t, &mask, &g)
            .unwrap()
            .backward()
            .unwrap();
        let vars = vm.data().lock().unwrap();
        assert!(grads.get(&s).is_some());
        for name in ["align.weight", "generation.0.weight", "generation.2.bias"] {
            assert!(grads.get(&vars[name]).is_some(), "{name}");
        }
        assert!(grads.get(&t).is_none());
    }
}
