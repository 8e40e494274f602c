//! DoGo, "Distill on the Go: Online knowledge distillation in self-supervised learning" (Bhat,
//! Arani & Zonooz, CVPR Workshops 2021), as its released code trains it
//! (github.com/NeurAI-Lab/DoGo, branch `dogo`: `util/train_util.py`, `criterion/kl.py`,
//! `config/template.yaml`): two networks learn together from scratch, without labels. Each is
//! trained on its own SimCLR loss (NT-Xent over its two views, [`super::contrastive`]) plus a
//! distillation term that aligns its softmax over similarity scores with its peer's:
//!
//! `S_k = softmax_row( cos(z_k^a, z_k^b) / T )` (N × N: first views against second views),
//! `L_k = NT-Xent_k + λ_k · KL(S_peer ‖ S_k)`,
//!
//! where the peer's `S` is detached (`F.kl_div(sim_s.log(), sim_t.detach())` and the reverse),
//! and the KL is PyTorch's `F.kl_div` with its default `reduction='mean'`: the sum of
//! `p_peer · (log p_peer − log p_own)` divided by all N² entries (not by the N rows). The
//! released defaults: T = `KL_temperature` 0.1, λ = `criterion_weight[2:4]` = 100 for model 1
//! and 1 for model 2, NT-Xent τ = 0.5.
//!
//! Deviation: the released loader gives each network its own two views of every image
//! (`MultiTransform` of two SimCLR transforms); kdet's loader makes one pair of views per image
//! and both networks see it (the similarity matrices then compare the same image pairs).

use std::sync::Arc;

use candle_core::{DType, Tensor, Var, D};
use candle_nn::VarMap;

use super::contrastive::{nt_xent, ContrastiveNet};
use crate::config::distill::MethodConfig;
use crate::config::LoadedConfig;
use crate::data::contrastive::ContrastiveAugConfig;
use crate::data::loader::Batch;
use crate::engine::method::{network, partner_network, Method, NamedNetwork, RunData, StepOutput};
use crate::error::{Error, Result};
use crate::models::build::{network_seed, Network};
use crate::models::classifier::l2_normalize;
use crate::models::contract::StepRng;
use crate::models::init::SeededVarMap;

const NAMES: [&str; 2] = ["net1", "net2"];

pub struct Dogo {
    nets: [ContrastiveNet; 2],
    /// The two heads' last layers (`net1.head.out.*`, `net2.head.out.*`).
    heads: Arc<SeededVarMap>,
    temperature: f64,
    kl_temperature: f64,
    kl_weights: [f64; 2],
    augment: ContrastiveAugConfig,
    evaluated: usize,
}

impl Dogo {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let c = &cfg.config;
        let Some(MethodConfig::Dogo {
            partner,
            partner_seed,
            temperature,
            kl_temperature,
            kl_weights,
            out_dim,
            augment,
            evaluate,
        }) = &c.method
        else {
            return Err(Error::msg(
                "internal: DoGo built from another method's config",
            ));
        };
        let n1 = network(cfg, &c.model, "model", c.seed, run)?;
        let n2 = partner_network(cfg, partner, *partner_seed, run)?;
        // The heads' last layers draw after both networks, from a stream of their own.
        let heads = Arc::new(SeededVarMap::new(network_seed(c.seed, 2)));
        let mut dogo = Self::from_networks([n1, n2], heads, *out_dim, augment.clone())?;
        dogo.temperature = *temperature;
        dogo.kl_temperature = *kl_temperature;
        dogo.kl_weights = *kl_weights;
        dogo.evaluated = usize::from(evaluate == "net2");
        Ok(dogo)
    }

    /// The two networks with heads' last layers drawn from `heads`, at the released defaults
    /// (τ 0.5, T 0.1, λ [100, 1]), evaluating `net1`.
    fn from_networks(
        nets: [Network; 2],
        heads: Arc<SeededVarMap>,
        out_dim: usize,
        augment: ContrastiveAugConfig,
    ) -> Result<Self> {
        let [n1, n2] = nets;
        let net1 = ContrastiveNet::new(n1, &heads, "net1.", out_dim)?;
        let net2 = ContrastiveNet::new(n2, &heads, "net2.", out_dim)?;
        Ok(Self {
            nets: [net1, net2],
            heads,
            temperature: 0.5,
            kl_temperature: 0.1,
            kl_weights: [100.0, 1.0],
            augment,
            evaluated: 0,
        })
    }
}

/// The row-wise log-softmax at temperature `t` of the cosine similarities between the first
/// views (rows) and the second views (columns) of `z` (`2N × d`: N first views, then N second
/// views) — `criterion/kl.py`'s `sim` before its softmax, in log space.
fn similarity_log_probs(z: &Tensor, t: f64) -> Result<Tensor> {
    let (n2, _) = z.dims2()?;
    let n = n2 / 2;
    let zn = l2_normalize(&z.to_dtype(DType::F32)?)?;
    let sim = (zn.narrow(0, 0, n)?.matmul(&zn.narrow(0, n, n)?.t()?)? / t)?;
    Ok(candle_nn::ops::log_softmax(&sim, D::Minus1)?)
}

/// DoGo's distillation term of the network with projections `own`, from its peer's `peer`
/// (detached here): `KL(S_peer ‖ S_own)` at temperature `t`, summed over the N × N entries and
/// divided by N² (`F.kl_div`'s default `reduction='mean'`).
pub fn similarity_kl(own: &Tensor, peer: &Tensor, t: f64) -> Result<Tensor> {
    let (n2, _) = own.dims2()?;
    if n2 < 4 || n2 % 2 != 0 || peer.dims2()?.0 != n2 {
        return Err(Error::msg(format!(
            "DoGo compares two views of at least 2 images from both networks; got {n2} and {} rows",
            peer.dims2()?.0
        )));
    }
    let log_own = similarity_log_probs(own, t)?;
    let log_peer = similarity_log_probs(&peer.detach(), t)?;
    let p_peer = log_peer.exp()?;
    let kl = (p_peer * (log_peer - log_own)?)?.sum_all()?;
    let entries = (n2 / 2) * (n2 / 2);
    Ok((kl / entries as f64)?)
}

impl Method for Dogo {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        self.nets
            .iter()
            .zip(NAMES)
            .map(|(n, name)| NamedNetwork { name, net: &n.net })
            .collect()
    }

    fn eval_network(&self) -> usize {
        self.evaluated
    }

    fn own_vars(&self) -> Option<&VarMap> {
        Some(&self.heads.varmap)
    }

    fn two_views(&self) -> Option<ContrastiveAugConfig> {
        Some(self.augment.clone())
    }

    fn step(&mut self, batch: &Batch, _rng: &mut StepRng) -> Result<StepOutput> {
        let z = [self.nets[0].project(batch)?, self.nets[1].project(batch)?];
        let mut out = StepOutput::default();
        for k in 0..2 {
            let (loss, acc) = nt_xent(&z[k], self.temperature)?;
            let kl = similarity_kl(&z[k], &z[1 - k], self.kl_temperature)?;
            let name = NAMES[k];
            out.losses.insert(format!("{name}.loss_contrastive"), loss);
            out.losses
                .insert(format!("{name}.dogo.kl"), (kl * self.kl_weights[k])?);
            out.metrics.insert(format!("{name}.contrast_acc"), acc);
        }
        Ok(out)
    }

    /// One group (one optimizer) per network with its head's last layer, as the released
    /// code's one Adam per model.
    fn param_groups(&self) -> Vec<Vec<(String, Var)>> {
        let heads = self.heads.varmap.data().lock().expect("varmap lock");
        self.networks()
            .iter()
            .map(|n| {
                let mut g = n.trainable();
                let prefix = format!("{}.", n.name);
                g.extend(
                    heads
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix))
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                g.sort_by(|a, b| a.0.cmp(&b.0));
                g
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::test_util::{assert_gradients, class_batch};
    use candle_core::Device;
    use rand::SeedableRng;

    use crate::distill::test_util::scalar;

    /// `KL(S_peer ‖ S_own)` written out with loops in f64: cosine similarities of first views
    /// against second views, row softmax at T, summed and divided by N².
    fn by_hand(own: &[[f64; 2]], peer: &[[f64; 2]], t: f64) -> f64 {
        let n = own.len() / 2;
        let cos = |a: [f64; 2], b: [f64; 2]| {
            (a[0] * b[0] + a[1] * b[1])
                / ((a[0] * a[0] + a[1] * a[1]).sqrt() * (b[0] * b[0] + b[1] * b[1]).sqrt())
        };
        let probs = |z: &[[f64; 2]]| -> Vec<Vec<f64>> {
            (0..n)
                .map(|i| {
                    let e: Vec<f64> = (0..n).map(|j| (cos(z[i], z[n + j]) / t).exp()).collect();
                    let s: f64 = e.iter().sum();
                    e.iter().map(|x| x / s).collect()
                })
                .collect()
        };
        let (p, q) = (probs(peer), probs(own));
        let mut kl = 0.0;
        for i in 0..n {
            for j in 0..n {
                kl += p[i][j] * (p[i][j].ln() - q[i][j].ln());
            }
        }
        kl / (n * n) as f64
    }

    #[test]
    fn distillation_term_by_hand() {
        let d = Device::Cpu;
        // Two images: own views agree with their pairs, the peer's are rotated.
        let own = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.2], [0.1, 1.0]];
        let peer = [[1.0, 1.0], [1.0, -1.0], [0.0, 1.0], [1.0, 0.0]];
        let t = |z: &[[f64; 2]]| {
            let v: Vec<f32> = z.iter().flatten().map(|&x| x as f32).collect();
            Tensor::from_vec(v, (z.len(), 2), &d).unwrap()
        };
        for temp in [0.1, 0.5, 1.0] {
            let got = scalar(&similarity_kl(&t(&own), &t(&peer), temp).unwrap());
            let want = by_hand(&own, &peer, temp);
            assert!(
                (got - want).abs() < 1e-5 * want.max(1.0),
                "T {temp}: {got} vs {want}"
            );
            assert!(want > 0.0);
        }
        // Case by hand at T = 1 with orthogonal views: own S rows (e/(1+e), 1/(1+e)) and
        // (1/(1+e), e/(1+e)); a peer whose rows are uniform (cos 0 everywhere).
        let own = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]];
        let peer = [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]];
        let e = 1f64.exp();
        let q = [e / (1.0 + e), 1.0 / (1.0 + e)];
        // Peer row 0: cos to (0,1), (0,1) = 0, 0 → (½, ½); row 1: cos 1, 1 → (½, ½).
        let row = 0.5 * (0.5f64.ln() - q[0].ln()) + 0.5 * (0.5f64.ln() - q[1].ln());
        let want = 2.0 * row / 4.0;
        let got = scalar(&similarity_kl(&t(&own), &t(&peer), 1.0).unwrap());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // The same distributions: 0. Too few views: an error, not a NaN.
        assert!(scalar(&similarity_kl(&t(&own), &t(&own), 0.1).unwrap()).abs() < 1e-7);
        assert!(similarity_kl(&t(&own[..2]), &t(&own[..2]), 0.1).is_err());
    }

    fn classifier(width: f64) -> crate::models::config::ModelConfig {
        serde_json::from_value(serde_json::json!({
            "arch": "classifier", "mlp_layers": 1,
            "backbone": {"depth": 18, "width": width, "norm": "bn", "trainable_layers": 5},
            "input": {"min_size": 16, "max_size": 16},
            "head": {"type": "linear"},
        }))
        .unwrap()
    }

    /// A small and a bigger network on one two-view batch (2 images × 2 views): each term's
    /// names, each network's KL sends gradient into that network and its head only, the sum
    /// trains both, and each network (with its head) is one optimizer group.
    #[test]
    fn gradient_flows_into_both_networks_and_each_kl_into_its_own() {
        let dev = Device::Cpu;
        let nets = [
            Network::new(&classifier(0.125), 3, network_seed(0, 0), &dev).unwrap(),
            Network::new(&classifier(0.25), 3, network_seed(0, 1), &dev).unwrap(),
        ];
        let heads = Arc::new(SeededVarMap::new(network_seed(0, 2)));
        let mut dogo =
            Dogo::from_networks(nets, heads, 8, ContrastiveAugConfig::default()).unwrap();
        let b = class_batch(16);
        let out = dogo.step(&b, &mut StepRng::seed_from_u64(0)).unwrap();
        let keys: Vec<&str> = out.losses.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "net1.dogo.kl",
                "net1.loss_contrastive",
                "net2.dogo.kl",
                "net2.loss_contrastive"
            ]
        );
        assert!(out.metrics.contains_key("net2.contrast_acc"));
        assert!(
            scalar(&out.losses["net1.dogo.kl"]) > 0.0,
            "different networks disagree"
        );
        let head = |name: &str| dogo.heads.varmap.data().lock().unwrap().get(name).cloned();
        let reached = |g: &candle_core::backprop::GradStore, n: &ContrastiveNet| {
            let data = n.net.vars.varmap.data().lock().unwrap();
            data.iter()
                .filter(|(k, _)| n.net.model.is_trainable(k))
                .filter(|(_, v)| g.get(v.as_tensor()).is_some())
                .count()
        };
        let g = out.losses["net1.dogo.kl"].backward().unwrap();
        assert!(reached(&g, &dogo.nets[0]) > 10);
        assert_eq!(reached(&g, &dogo.nets[1]), 0, "the peer's side is detached");
        assert_gradients(&g, head, &["net1.head.out.weight"]);
        assert!(g
            .get(head("net2.head.out.weight").unwrap().as_tensor())
            .is_none());
        let total = out
            .losses
            .values()
            .cloned()
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let g = total.backward().unwrap();
        for n in &dogo.nets {
            let data = n.net.vars.varmap.data().lock().unwrap();
            for (k, v) in data.iter().filter(|(k, _)| n.net.model.is_trainable(k)) {
                // The classifier's fc head is not on the contrastive path.
                if k.starts_with("fc.") {
                    continue;
                }
                assert!(g.get(v.as_tensor()).is_some(), "{k} gets no gradient");
            }
        }
        assert_gradients(&g, head, &["net1.head.out.weight", "net2.head.out.weight"]);
        let groups = dogo.param_groups();
        assert_eq!(groups.len(), 2);
        for (g, name) in groups.iter().zip(NAMES) {
            assert!(g.iter().all(|(k, _)| k.starts_with(&format!("{name}."))));
            assert!(g
                .iter()
                .any(|(k, _)| k == &format!("{name}.head.out.weight")));
        }
        // The KL weight scales only its own network's term.
        let mut w = dogo;
        w.kl_weights = [1.0, 1.0];
        let out1 = w.step(&b, &mut StepRng::seed_from_u64(0)).unwrap();
        let a = scalar(&out.losses["net1.dogo.kl"]);
        let a1 = scalar(&out1.losses["net1.dogo.kl"]);
        assert!((a - 100.0 * a1).abs() < 1e-4 * a, "{a} vs 100 × {a1}");
    }
}
