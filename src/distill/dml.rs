//! Deep mutual learning (Zhang et al., CVPR 2018): K ≥ 2 networks train together from scratch,
//! each on its own supervised losses plus the mean, over the other networks, of the KL
//! divergence from their class probabilities to its own (the paper's Eq. 10):
//!
//! `L_Θk = L_Ck + 1/(K−1) · Σ_{l≠k} D_KL(p_l ‖ p_k)`,
//!
//! where `p_l` is treated as a constant when `Θk` is updated (the released TensorFlow code,
//! `train_models.py`, differentiates each network's loss with respect to its own variables
//! only; here the other networks' probabilities are detached). The KL is the released
//! `kl_loss_compute`: a sum over classes, a mean over samples, no temperature (T = 1 by default;
//! with T ≠ 1 it is Hinton's `T²·KL` at temperature T, [`super::kd`]).
//!
//! Classifiers compare their image logits. Detectors (two or more networks of one family)
//! compare every classification head the model outputs — Faster R-CNN's RPN objectness and
//! RCN class logits, PAA's dense class logits — **on the samples of the network being trained**:
//! network k's own assignment (its sampled anchors and RoIs, or its dense anchors), with each
//! other network's heads evaluated on that assignment (as Chen et al.'s teachers score the
//! student's RoIs). Sigmoid heads take the per-class Bernoulli KL, summed over classes.
//!
//! Deviation: the paper (Algorithm 1) and its code update the networks one after another within
//! a step, each later one seeing the earlier ones' updated predictions; kdet computes every
//! network's loss from one forward of each and updates all of them together (each its own
//! parameter group), as most re-implementations do.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use super::kd::{kd_loss, kd_sigmoid_loss};
use crate::config::distill::{dml_names, MethodConfig};
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::method::{own_pass, peer_networks, Method, NamedNetwork, RunData, StepOutput};
use crate::error::{Error, Result};
use crate::models::build::Network;
use crate::models::contract::{ClassScores, Head, StepRng, Want};

pub struct Dml {
    nets: Vec<Network>,
    names: Vec<String>,
    temperature: f64,
    evaluated: usize,
}

impl Dml {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let c = &cfg.config;
        let Some(MethodConfig::Dml {
            peers,
            temperature,
            evaluate,
        }) = &c.method
        else {
            return Err(Error::msg(
                "internal: DML built from another method's config",
            ));
        };
        let built = peer_networks(cfg, peers, "peers", run)?;
        // Every network scores the others' samples: the heads must line up (same anchors).
        for (net, path) in &built[1..] {
            let n1 = &built[0].0;
            n1.config
                .family()
                .check_teacher(&net.config, n1.model.class_head(), false)
                .map_err(|e| cfg.error(&format!("{path}.{}", e.path), e.msg))?;
        }
        let nets: Vec<Network> = built.into_iter().map(|(n, _)| n).collect();
        let names = dml_names(nets.len());
        let evaluated = names
            .iter()
            .position(|n| n == evaluate)
            .ok_or_else(|| cfg.error("method.evaluate", format!("no network `{evaluate}`")))?;
        Ok(Self {
            nets,
            names,
            temperature: *temperature,
            evaluated,
        })
    }
}

/// `T²·D_KL(p_target ‖ p_own)` of one head's sample logits (`target` detached), summed over the
/// distribution and averaged over the samples; 0 without samples.
pub fn mutual_kl(
    own: &Tensor,
    target: &Tensor,
    scores: ClassScores,
    temperature: f64,
) -> Result<Tensor> {
    let rows = own.dims().first().copied().unwrap_or(0);
    if rows == 0 || own.elem_count() == 0 {
        return Ok((own.sum_all()? * 0.0)?);
    }
    // The RPN's objectness is one logit per sample: a column.
    let as_matrix = |t: &Tensor| -> Result<Tensor> {
        Ok(if t.rank() == 1 {
            t.reshape((rows, 1))?
        } else {
            t.clone()
        })
    };
    let (s, t) = (
        as_matrix(&own.to_dtype(DType::F32)?)?,
        as_matrix(&target.to_dtype(DType::F32)?)?,
    );
    Ok(match scores {
        ClassScores::Softmax | ClassScores::Categorical => kd_loss(&s, &t, temperature)?,
        ClassScores::Sigmoid => kd_sigmoid_loss(&s, &t, temperature)?,
    })
}

/// How metrics name a head's mutual term.
fn head_key(h: Head) -> &'static str {
    match h {
        Head::Rpn => "rpn",
        Head::Rcn => "rcn",
        Head::Dense => "dense",
        Head::Classifier => "cls",
    }
}

impl Method for Dml {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        NamedNetwork::zip(&self.nets, &self.names)
    }

    fn eval_network(&self) -> usize {
        self.evaluated
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let passes = self
            .nets
            .iter()
            .map(|n| own_pass(n.model.as_ref(), batch, rng))
            .collect::<Result<Vec<_>>>()?;
        let k = self.nets.len();
        let mut losses = BTreeMap::new();
        for (i, (p, name)) in passes.iter().zip(&self.names).enumerate() {
            for (h, own) in &p.out.heads {
                let heads = [*h];
                let mut sum: Option<Tensor> = None;
                for (j, (other, q)) in self.nets.iter().zip(&passes).enumerate() {
                    if j == i {
                        continue;
                    }
                    // Network j's head on network i's samples; a constant for network i.
                    let out =
                        other
                            .model
                            .outputs(&q.fwd, &p.assignment, batch, Want::Heads(&heads))?;
                    let theirs = out.head(*h)?;
                    own.check_aligned(theirs, *h)?;
                    let kl = mutual_kl(
                        &own.logits()?,
                        &theirs.logits()?.detach(),
                        own.scores,
                        self.temperature,
                    )?;
                    sum = Some(match sum {
                        None => kl,
                        Some(s) => (s + kl)?,
                    });
                }
                if let Some(s) = sum {
                    losses.insert(
                        format!("{name}.dml.{}", head_key(*h)),
                        (s / (k - 1) as f64)?,
                    );
                }
            }
        }
        for (p, name) in passes.into_iter().zip(&self.names) {
            for (key, l) in p.out.losses {
                losses.insert(format!("{name}.{key}"), l.value);
            }
        }
        Ok(StepOutput {
            losses,
            metrics: BTreeMap::new(),
        })
    }

    /// One group (one optimizer) per network, as the paper's one optimizer per network.
    fn param_groups(&self) -> Vec<Vec<(String, Var)>> {
        self.networks().iter().map(|n| n.trainable()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::build::network_seed;
    use candle_core::Device;

    use crate::distill::test_util::scalar;

    /// KL(p_t ‖ p_s) by hand: rows [0, ln 3] vs [0, 0] → p_t = (1/4, 3/4), p_s = (1/2, 1/2):
    /// 1/4·ln(1/2) + 3/4·ln(3/2); second row identical logits → 0; mean over 2 rows.
    #[test]
    fn softmax_kl_by_hand() {
        let d = Device::Cpu;
        let t = Tensor::new(&[[0f32, 3f32.ln()], [1.0, 2.0]], &d).unwrap();
        let s = Tensor::new(&[[0f32, 0.0], [1.0, 2.0]], &d).unwrap();
        let want = (0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln()) / 2.0;
        let got = scalar(&mutual_kl(&s, &t, ClassScores::Categorical, 1.0).unwrap());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // The RCN's softmax (background column included) is the same KL.
        let got = scalar(&mutual_kl(&s, &t, ClassScores::Softmax, 1.0).unwrap());
        assert!((got - want).abs() < 1e-6);
    }

    /// Bernoulli KL per logit, summed over classes: σ(ln 3) = 3/4 vs σ(0) = 1/2.
    #[test]
    fn sigmoid_kl_by_hand_and_rpn_column() {
        let d = Device::Cpu;
        let t = Tensor::new(&[3f32.ln(), 0.0], &d).unwrap();
        let s = Tensor::new(&[0f32, 0.0], &d).unwrap();
        let one = 0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln();
        let got = scalar(&mutual_kl(&s, &t, ClassScores::Sigmoid, 1.0).unwrap());
        assert!((got - one / 2.0).abs() < 1e-6, "{got}");
        // N × C: both classes of one anchor summed.
        let t2 = Tensor::new(&[[3f32.ln(), 3f32.ln()]], &d).unwrap();
        let s2 = Tensor::new(&[[0f32, 0.0]], &d).unwrap();
        let got = scalar(&mutual_kl(&s2, &t2, ClassScores::Sigmoid, 1.0).unwrap());
        assert!((got - 2.0 * one).abs() < 1e-6, "{got}");
        // No samples: 0, not NaN.
        let e = Tensor::zeros((0, 3), DType::F32, &d).unwrap();
        assert_eq!(
            scalar(&mutual_kl(&e, &e, ClassScores::Sigmoid, 1.0).unwrap()),
            0.0
        );
    }

    /// The gradient reaches the trained network's logits, never the detached target's.
    #[test]
    fn gradient_into_own_logits_only() {
        let d = Device::Cpu;
        let s = Var::new(&[[0.3f32, -0.2, 1.0]], &d).unwrap();
        let t = Var::new(&[[1.0f32, 0.0, -1.0]], &d).unwrap();
        let g = mutual_kl(
            s.as_tensor(),
            &t.as_tensor().detach(),
            ClassScores::Categorical,
            1.0,
        )
        .unwrap()
        .backward()
        .unwrap();
        assert!(g.get(&s).is_some());
        assert!(g.get(&t).is_none());
    }

    fn classifier(width: f64) -> crate::models::config::ModelConfig {
        serde_json::from_value(serde_json::json!({
            "arch": "classifier",
            "backbone": {"depth": 18, "width": width, "norm": "bn", "trainable_layers": 5},
            "input": {"min_size": 16, "max_size": 16},
            "head": {"type": "linear"},
        }))
        .unwrap()
    }

    fn batch() -> Batch {
        crate::distill::test_util::class_batch(16)
    }

    /// Three networks (two architectures): each one's term is the mean of its KL to the two
    /// others, and it sends gradient into that network alone.
    #[test]
    fn each_network_learns_from_the_mean_of_the_others_and_only_itself_moves() {
        use rand::SeedableRng;
        let dev = Device::Cpu;
        let nets = vec![
            Network::new(&classifier(0.125), 3, network_seed(0, 0), &dev).unwrap(),
            Network::new(&classifier(0.125), 3, network_seed(0, 1), &dev).unwrap(),
            Network::new(&classifier(0.25), 3, network_seed(0, 2), &dev).unwrap(),
        ];
        let mut dml = Dml {
            nets,
            names: dml_names(3),
            temperature: 1.0,
            evaluated: 0,
        };
        let b = batch();
        let out = dml.step(&b, &mut StepRng::seed_from_u64(0)).unwrap();
        let keys: Vec<&str> = out.losses.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "net1.dml.cls",
                "net1.loss_cls",
                "net2.dml.cls",
                "net2.loss_cls",
                "net3.dml.cls",
                "net3.loss_cls"
            ]
        );
        // The same forwards again (training-mode BatchNorm normalises by the batch).
        let logits: Vec<Tensor> = dml
            .nets
            .iter()
            .map(|n| {
                let p = own_pass(n.model.as_ref(), &b, &mut StepRng::seed_from_u64(0)).unwrap();
                p.out.head(Head::Classifier).unwrap().logits().unwrap()
            })
            .collect();
        let kl = |i: usize, j: usize| scalar(&kd_loss(&logits[i], &logits[j], 1.0).unwrap());
        let want = (kl(1, 0) + kl(1, 2)) / 2.0;
        let got = scalar(&out.losses["net2.dml.cls"]);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert!(got > 0.0, "networks of different seeds disagree");
        // net2's mutual term: gradient into net2's parameters, none into net1's or net3's.
        let g = out.losses["net2.dml.cls"].backward().unwrap();
        let reached = |n: &Network| {
            let data = n.vars.varmap.data().lock().unwrap();
            data.iter()
                .filter(|(k, _)| n.model.is_trainable(k))
                .filter(|(_, v)| g.get(v.as_tensor()).is_some())
                .count()
        };
        assert!(reached(&dml.nets[1]) > 10);
        assert_eq!(reached(&dml.nets[0]), 0);
        assert_eq!(reached(&dml.nets[2]), 0);
        // Every network is trained by the summed loss.
        let total = out
            .losses
            .values()
            .cloned()
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let g = total.backward().unwrap();
        for n in &dml.nets {
            let data = n.vars.varmap.data().lock().unwrap();
            for (k, v) in data.iter().filter(|(k, _)| n.model.is_trainable(k)) {
                assert!(g.get(v.as_tensor()).is_some(), "{k} gets no gradient");
            }
        }
        // One optimizer per network.
        let groups = dml.param_groups();
        assert_eq!(groups.len(), 3);
        assert!(groups[1].iter().all(|(k, _)| k.starts_with("net2.")));
    }
}
