//! SimCLR contrastive pretraining (Chen, Kornblith, Norouzi, Hinton, ICML 2020, "A Simple
//! Framework for Contrastive Learning of Visual Representations"; SimCLRv2, Chen et al.,
//! NeurIPS 2020, §2.1), the first stage of SimCLRv2's recipe: no labels, two augmented views of
//! every image (`data::contrastive`), and the NT-Xent loss on the projection head's output.
//!
//! NT-Xent (SimCLR Eq. 1): for the 2N views of a batch of N images, `z` L2-normalised,
//! `sim(i, j) = z_iᵀ z_j`,
//!
//! `ℓ(i, j) = −log( exp(sim(i, j)/τ) / Σ_{k ≠ i} exp(sim(i, k)/τ) )`,
//! `L = 1/(2N) Σ_i ℓ(i, pos(i))`,
//!
//! the positive of view i being the other view of the same image. The official
//! `add_contrastive_loss` (google-research/simclr `tf2/objective.py`) masks the self-similarity
//! with −1e9 and returns `mean_N(ℓ_a + ℓ_b)`, which is 2·L; kdet reports the paper's L.
//!
//! The projection head is SimCLRv2's (`ProjectionHead`, `num_proj_layers = 3`): the
//! classifier's `mlp_layers` (Linear without bias + BatchNorm + ReLU, as wide as the pooled
//! feature; 2 of them make SimCLRv2's head), then the head's last layer, owned by this method:
//! Linear to `out_dim` (128) without bias, initialised N(0, 0.01²), and BatchNorm without β
//! (`center=False`) and without ReLU. That last layer is trained and checkpointed but not
//! exported (SimCLRv2 fine-tunes from the head's first layer, so the last one is dropped). Its
//! BatchNorm normalises with the batch's statistics only: it never runs in evaluation.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Init, VarMap};

use crate::config::distill::MethodConfig;
use crate::config::LoadedConfig;
use crate::data::contrastive::ContrastiveAugConfig;
use crate::data::loader::Batch;
use crate::engine::method::{student_network, Method, NamedNetwork, RunData, StepOutput};
use crate::error::{Error, Result};
use crate::models::build::Network;
use crate::models::classifier::l2_normalize;
use crate::models::contract::{Forward, StepRng};
use crate::models::init::SeededVarMap;

/// The self-similarity offset of the official `add_contrastive_loss` (`LARGE_NUM`).
const LARGE_NUM: f64 = 1e9;

/// NT-Xent over `z` (`2N × d`, rows: every image's first view, then its second view, in the same
/// order) at temperature τ (module doc); returns the loss (the paper's L, a mean over the 2N
/// views) and the share of views whose most similar other view is their positive (the official
/// code's `contrast_acc`). Uses `log_softmax` (differentiable) on similarities whose diagonal is
/// lowered by 1e9, so a view is never its own negative.
pub fn nt_xent(z: &Tensor, temperature: f64) -> candle_core::Result<(Tensor, f64)> {
    let (n2, _) = z.dims2()?;
    if n2 % 2 != 0 {
        candle_core::bail!("nt_xent needs an even number of views (two per image), got {n2}");
    }
    let n = n2 / 2;
    let dev = z.device();
    let zn = l2_normalize(&z.to_dtype(DType::F32)?)?;
    let sim = (zn.matmul(&zn.t()?)? / temperature)?;
    let eye = Tensor::eye(n2, DType::F32, dev)?;
    let logits = (&sim - (eye * LARGE_NUM)?)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let pos: Vec<f32> = (0..n2)
        .flat_map(|i| (0..n2).map(move |j| (j == (i + n) % n2) as u8 as f32))
        .collect();
    let pos = Tensor::from_vec(pos, (n2, n2), dev)?;
    let loss = ((logp * &pos)?.sum_all()? / -(n2 as f64))?;
    // Accuracy: the positive is each row's largest off-diagonal similarity.
    let s = logits.detach().to_vec2::<f32>()?;
    let hits = s
        .iter()
        .enumerate()
        .filter(|(i, row)| {
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(j, _)| j);
            best == Some((i + n) % n2)
        })
        .count();
    Ok((loss, hits as f64 / n2.max(1) as f64))
}

/// The projection head's last layer: Linear without bias, then BatchNorm (batch statistics) with
/// a scale γ and no β.
pub struct HeadOut {
    weight: Tensor,
    gamma: Tensor,
}

impl HeadOut {
    /// Variables `{prefix}head.out.weight` (`out × d`) and `{prefix}head.out.bn.weight` in
    /// `vars` (`prefix`: empty, or a network's name and a dot).
    pub fn new(
        vars: &std::sync::Arc<SeededVarMap>,
        prefix: &str,
        d: usize,
        out: usize,
        dev: &Device,
    ) -> Result<Self> {
        let vb = vars
            .builder(DType::F32, dev)
            .pp(format!("{prefix}head.out"));
        let weight = vb.get_with_hints(
            (out, d),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        )?;
        let gamma = vb
            .pp("bn")
            .get_with_hints(out, "weight", Init::Const(1.0))?;
        Ok(Self { weight, gamma })
    }
}

impl Module for HeadOut {
    fn forward(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let y = h.matmul(&self.weight.t()?)?;
        let mean = y.mean_keepdim(0)?;
        let c = y.broadcast_sub(&mean)?;
        let var = c.sqr()?.mean_keepdim(0)?;
        // TF's BatchNormalization epsilon in SimCLR's resnet.py (`BATCH_NORM_EPSILON`): 1e-5.
        c.broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(&self.gamma)
    }
}

/// A classifier trained by NT-Xent: the network and its projection head's last layer (a
/// method variable). SimCLR pretraining trains one; DoGo two.
pub struct ContrastiveNet {
    pub net: Network,
    head: HeadOut,
}

/// The feature the head's last layer reads: the last kept MLP layer's output, else the pooled
/// feature.
pub fn head_input(fwd: &Forward) -> Result<&Tensor> {
    fwd.taps
        .get("mlp")
        .or_else(|| fwd.taps.get("pool"))
        .ok_or_else(|| Error::msg("a contrastive method trains a classifier (its `pool` tap)"))
}

impl ContrastiveNet {
    /// `net` (a classifier: the config's validation says so) with a head's last layer of
    /// `out_dim` outputs, its variables `{prefix}head.out.*` drawn from `own`.
    pub fn new(
        net: Network,
        own: &std::sync::Arc<SeededVarMap>,
        prefix: &str,
        out_dim: usize,
    ) -> Result<Self> {
        let d = match &net.config {
            crate::models::config::ModelConfig::Classifier(c) => c.pooled_dim(),
            other => {
                return Err(Error::msg(format!(
                    "a contrastive method trains a classifier, not `{}`",
                    other.arch()
                )))
            }
        };
        let head = HeadOut::new(own, prefix, d, out_dim, &net.device)?;
        Ok(Self { net, head })
    }

    /// The head's output `z` (`2N × out_dim`) of a two-view batch (train mode).
    pub fn project(&self, batch: &Batch) -> Result<Tensor> {
        let fwd = self.net.model.forward(&batch.images, true)?;
        Ok(self.head.forward(head_input(&fwd)?)?)
    }
}

/// SimCLR pretraining of the config's classifier (`method.type = "simclr_pretrain"`).
pub struct SimclrPretrain {
    pub net: ContrastiveNet,
    own: std::sync::Arc<SeededVarMap>,
    temperature: f64,
    augment: ContrastiveAugConfig,
}

impl SimclrPretrain {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let net = student_network(cfg, run)?;
        let Some(MethodConfig::SimclrPretrain {
            temperature,
            out_dim,
            augment,
        }) = cfg.config.method.clone()
        else {
            unreachable!("built for method simclr_pretrain")
        };
        // The head's last layer draws after the network, from its stream.
        let own = net.vars.sibling();
        let net = ContrastiveNet::new(net, &own, "", out_dim)?;
        Ok(Self {
            net,
            own,
            temperature,
            augment,
        })
    }
}

impl Method for SimclrPretrain {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        vec![NamedNetwork {
            name: "",
            net: &self.net.net,
        }]
    }

    fn own_vars(&self) -> Option<&VarMap> {
        Some(&self.own.varmap)
    }

    fn two_views(&self) -> Option<ContrastiveAugConfig> {
        Some(self.augment.clone())
    }

    fn step(&mut self, batch: &Batch, _rng: &mut StepRng) -> Result<StepOutput> {
        let z = self.net.project(batch)?;
        let (loss, acc) = nt_xent(&z, self.temperature)?;
        Ok(StepOutput {
            losses: BTreeMap::from([("loss_contrastive".to_string(), loss)]),
            metrics: BTreeMap::from([("contrast_acc".to_string(), acc)]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::assert_grad_matches_fd;

    /// The paper's Eq. 1 written out with plain loops, in f64.
    fn by_hand(z: &[Vec<f64>], tau: f64) -> f64 {
        let n2 = z.len();
        let norm: Vec<Vec<f64>> = z
            .iter()
            .map(|r| {
                let l = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                r.iter().map(|v| v / l).collect()
            })
            .collect();
        let sim = |i: usize, j: usize| -> f64 {
            norm[i]
                .iter()
                .zip(&norm[j])
                .map(|(a, b)| a * b)
                .sum::<f64>()
                / tau
        };
        let mut total = 0.0;
        for i in 0..n2 {
            let p = (i + n2 / 2) % n2;
            let den: f64 = (0..n2).filter(|&k| k != i).map(|k| sim(i, k).exp()).sum();
            total += -(sim(i, p).exp() / den).ln();
        }
        total / n2 as f64
    }

    #[test]
    fn nt_xent_by_hand() {
        // Two images, orthogonal unit views: view pairs (e1, e1), (e2, −e2)... computed below
        // by hand for the first case: z = [e1, e2, e1, e2] (perfect pairs).
        // Row 0: sims to 1, 2, 3 = 0, 1, 0 (/τ); positive is 2: −log(e^{1/τ}/(2 + e^{1/τ})).
        let d = Device::Cpu;
        let z = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], &d).unwrap();
        for tau in [0.1, 0.5, 1.0] {
            let (l, acc) = nt_xent(&z, tau).unwrap();
            let e = (1.0f64 / tau).exp();
            let want = -(e / (2.0 + e)).ln();
            let got = l.to_scalar::<f32>().unwrap() as f64;
            assert!(
                (got - want).abs() < 1e-5 * want.max(1.0),
                "τ {tau}: {got} vs {want}"
            );
            assert_eq!(acc, 1.0);
        }
        // Random views, 3 images, against the loop form (and scale invariance of rows).
        let v: Vec<Vec<f64>> = (0..6)
            .map(|i| {
                (0..4)
                    .map(|k| (((i * 7 + k * 3) % 11) as f64 - 5.0) / 3.0)
                    .collect()
            })
            .collect();
        let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
        let z = Tensor::from_vec(flat, (6, 4), &d).unwrap();
        for tau in [0.1, 0.5] {
            let got = nt_xent(&z, tau).unwrap().0.to_scalar::<f32>().unwrap() as f64;
            let want = by_hand(&v, tau);
            assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
            let got2 = nt_xent(&(&z * 3.0).unwrap(), tau).unwrap().0;
            assert!((got2.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-4 * want.max(1.0));
        }
        assert!(nt_xent(&Tensor::zeros((3, 2), DType::F32, &d).unwrap(), 0.1).is_err());
    }

    #[test]
    fn nt_xent_gradient_matches_finite_differences() {
        let d = Device::Cpu;
        let x: Vec<f32> = (0..24)
            .map(|i| (((i * 13) % 17) as f32 - 8.0) / 4.0)
            .collect();
        let x = Tensor::from_vec(x, (6, 4), &d).unwrap();
        for tau in [0.5, 1.0] {
            assert_grad_matches_fd(
                |t| nt_xent(t, tau).unwrap().0.reshape(1).unwrap(),
                &x,
                1e-2,
                2e-2,
                "nt_xent",
            );
        }
    }

    #[test]
    fn head_out_normalises_over_the_batch() {
        let vars = std::sync::Arc::new(SeededVarMap::new(0));
        let h = HeadOut::new(&vars, "", 3, 2, &Device::Cpu).unwrap();
        let x = Tensor::new(
            &[[1f32, 2.0, 3.0], [0.0, 1.0, -1.0], [2.0, 0.5, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        let y = h.forward(&x).unwrap();
        let m = y.mean(0).unwrap().to_vec1::<f32>().unwrap();
        let v = y.sqr().unwrap().mean(0).unwrap().to_vec1::<f32>().unwrap();
        assert!(m.iter().all(|v| v.abs() < 1e-5), "{m:?}");
        // Unit variance up to the epsilon: var / (var + 1e-5) of the linear output.
        let raw = x.matmul(&h.weight.t().unwrap()).unwrap();
        let c = raw.broadcast_sub(&raw.mean_keepdim(0).unwrap()).unwrap();
        let rv = c.sqr().unwrap().mean(0).unwrap().to_vec1::<f32>().unwrap();
        for (got, r) in v.iter().zip(rv) {
            assert!((got - r / (r + 1e-5)).abs() < 1e-4, "{got} vs {r}");
        }
        let names: Vec<String> = vars.varmap.data().lock().unwrap().keys().cloned().collect();
        assert!(names.contains(&"head.out.weight".to_string()));
        assert!(names.contains(&"head.out.bn.weight".to_string()));
    }
}
