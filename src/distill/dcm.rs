//! Dense cross-layer mutual-distillation (Yao & Sun, ECCV 2020), as its released code
//! (github.com/sundw2014/DCM, `wrn/main.py`, `wrn/resnet.py`, `wrn/KL_divergence.py`) trains it:
//! two classifiers learn together from scratch; each carries auxiliary classifiers on hidden
//! stages (fresh copies of the later stages, pooling and a linear layer — `ep1_*`, `ep2_*` in
//! the code — here `models::resnet::StageBranch`); the loss is the sum of
//!
//! - the cross-entropy of every classifier of both networks (auxiliary and final), and
//! - for every pair (i of network 1, j of network 2) — same and different stages, the
//!   `connection_map` of the code — `KL(p_j ‖ p_i)` for i and `KL(p_i ‖ p_j)` for j, the target
//!   detached (`KL_divergence(o2.detach(), o)`), summed over classes, mean over the batch;
//!
//! with no temperature and every weight 1. The auxiliary classifiers are the method's own
//! variables: checkpointed, never written into a network's model file or an export.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;

use super::kd::kd_loss;
use crate::config::distill::MethodConfig;
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::method::{
    network, own_pass, partner_network, Method, NamedNetwork, RunData, StepOutput,
};
use crate::error::{Error, Result};
use crate::models::build::{network_seed, Network};
use crate::models::classifier::{cross_entropy, image_labels};
use crate::models::contract::{find_tap, Head, StepRng};
use crate::models::init::SeededVarMap;
use crate::models::resnet::StageBranch;
use crate::ops::conv::ConvImpl;

const NAMES: [&str; 2] = ["net1", "net2"];

pub struct Dcm {
    nets: [Network; 2],
    /// Per network, its auxiliary classifiers: (stage tap, branch).
    aux: [Vec<(String, StageBranch)>; 2],
    aux_vars: Arc<SeededVarMap>,
    temperature: f64,
    kd_weight: f64,
    evaluated: usize,
}

/// The stage index (1 = layer1 …) whose output a `backbone.cK` tap is.
fn stage_of(tap: &str) -> Option<usize> {
    tap.strip_prefix("backbone.c")?
        .parse::<usize>()
        .ok()
        .filter(|k| (2..=4).contains(k))
        .map(|k| k - 1)
}

impl Dcm {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let c = &cfg.config;
        let Some(MethodConfig::Dcm {
            partner,
            partner_seed,
            stages,
            temperature,
            kd_weight,
            evaluate,
        }) = &c.method
        else {
            return Err(Error::msg(
                "internal: DCM built from another method's config",
            ));
        };
        let n1 = network(cfg, &c.model, "model", c.seed, run)?;
        let n2 = partner_network(cfg, partner, *partner_seed, run)?;
        // Drawn after both networks, from a stream of its own.
        let aux_vars = Arc::new(SeededVarMap::new(network_seed(c.seed, 2)));
        let vb = aux_vars.builder(DType::F32, &run.device);
        let mut aux: [Vec<(String, StageBranch)>; 2] = [vec![], vec![]];
        for (k, (n, path)) in [(&n1, "model"), (&n2, "method.partner")]
            .into_iter()
            .enumerate()
        {
            let rcfg = n.config.backbone().resnet(ConvImpl::Kdet);
            for (i, st) in stages.iter().enumerate() {
                let after = stage_of(st).ok_or_else(|| {
                    cfg.error(
                        &format!("method.stages[{i}]"),
                        format!("unknown stage `{st}`"),
                    )
                })?;
                find_tap(&n.model.taps(), st, n.model.family())
                    .map_err(|e| cfg.error(path, e.to_string()))?;
                let b = StageBranch::new(
                    vb.pp(format!("{}.aux.{st}", NAMES[k])),
                    rcfg,
                    after,
                    run.num_classes(),
                )?;
                aux[k].push((st.clone(), b));
            }
        }
        Ok(Self {
            nets: [n1, n2],
            aux,
            aux_vars,
            temperature: *temperature,
            kd_weight: *kd_weight,
            evaluated: usize::from(evaluate == "net2"),
        })
    }
}

/// DCM's losses from each network's classifiers' logits (auxiliary first, final last) and the
/// labels: CE of each classifier, and per network the summed KD from every classifier of the
/// other network (targets detached), `kd_weight`·T²·KL at temperature T.
pub fn dcm_losses(
    logits: [&[Tensor]; 2],
    labels: &[Option<u32>],
    temperature: f64,
    kd_weight: f64,
) -> Result<BTreeMap<String, Tensor>> {
    let mut losses = BTreeMap::new();
    for k in 0..2 {
        let n = logits[k].len();
        for (i, l) in logits[k].iter().enumerate() {
            let key = if i + 1 == n {
                format!("{}.dcm.ce_final", NAMES[k])
            } else {
                format!("{}.dcm.ce_aux{}", NAMES[k], i + 1)
            };
            losses.insert(key, cross_entropy(l, labels)?);
        }
        let mut kd: Option<Tensor> = None;
        for own in logits[k] {
            for other in logits[1 - k] {
                let t = kd_loss(own, &other.detach(), temperature)?;
                kd = Some(match kd {
                    None => t,
                    Some(s) => (s + t)?,
                });
            }
        }
        if let Some(kd) = kd {
            losses.insert(format!("{}.dcm.kd", NAMES[k]), (kd * kd_weight)?);
        }
    }
    Ok(losses)
}

impl Method for Dcm {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        NamedNetwork::zip(&self.nets, &NAMES)
    }

    fn eval_network(&self) -> usize {
        self.evaluated
    }

    fn own_vars(&self) -> Option<&VarMap> {
        Some(&self.aux_vars.varmap)
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let mut logits: [Vec<Tensor>; 2] = [vec![], vec![]];
        for ((net, aux), out) in self.nets.iter().zip(&self.aux).zip(logits.iter_mut()) {
            let p = own_pass(net.model.as_ref(), batch, rng)?;
            for (st, b) in aux {
                let x = p
                    .fwd
                    .taps
                    .get(st)
                    .ok_or_else(|| Error::msg(format!("the network has no `{st}` tap")))?;
                out.push(b.forward_t(x, true)?);
            }
            out.push(p.out.head(Head::Classifier)?.logits()?);
        }
        let labels = image_labels(batch)?;
        let losses = dcm_losses(
            [&logits[0], &logits[1]],
            &labels,
            self.temperature,
            self.kd_weight,
        )?;
        Ok(StepOutput {
            losses,
            metrics: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use crate::distill::test_util::scalar;

    /// One auxiliary + one final classifier per network, one image of label 0: every CE and the
    /// four cross pairs by hand; gradients reach each network's own logits only through its
    /// own terms.
    #[test]
    fn losses_by_hand_and_detached_targets() {
        let d = Device::Cpu;
        let ln3 = 3f32.ln();
        // net1: aux [0, 0] (p = ½, ½), final [ln 3, 0] (¾, ¼); net2: aux [0, ln 3] (¼, ¾),
        // final [0, 0].
        let v = |x: [f32; 2]| Var::new(&[x], &d).unwrap();
        let (a1, f1, a2, f2) = (v([0.0, 0.0]), v([ln3, 0.0]), v([0.0, ln3]), v([0.0, 0.0]));
        let n1 = [a1.as_tensor().clone(), f1.as_tensor().clone()];
        let n2 = [a2.as_tensor().clone(), f2.as_tensor().clone()];
        let l = dcm_losses([&n1, &n2], &[Some(0)], 1.0, 1.0).unwrap();
        let h = 0.5f64;
        let kl = |p: [f64; 2], q: [f64; 2]| p[0] * (p[0] / q[0]).ln() + p[1] * (p[1] / q[1]).ln();
        assert!((scalar(&l["net1.dcm.ce_aux1"]) - 2f64.ln()).abs() < 1e-6);
        assert!((scalar(&l["net1.dcm.ce_final"]) - (4.0f64 / 3.0).ln()).abs() < 1e-6);
        assert!((scalar(&l["net2.dcm.ce_aux1"]) - 4f64.ln()).abs() < 1e-6);
        let (p1a, p1f, p2a, p2f) = ([h, h], [0.75, 0.25], [0.25, 0.75], [h, h]);
        // net1's KD: KL(p_j ‖ p_i) for i in net1, j in net2.
        let want1 = kl(p2a, p1a) + kl(p2f, p1a) + kl(p2a, p1f) + kl(p2f, p1f);
        let want2 = kl(p1a, p2a) + kl(p1f, p2a) + kl(p1a, p2f) + kl(p1f, p2f);
        assert!((scalar(&l["net1.dcm.kd"]) - want1).abs() < 1e-6);
        assert!((scalar(&l["net2.dcm.kd"]) - want2).abs() < 1e-6);
        let g = l["net1.dcm.kd"].backward().unwrap();
        assert!(g.get(&a1).is_some() && g.get(&f1).is_some());
        assert!(g.get(&a2).is_none() && g.get(&f2).is_none());
    }

    /// Two classifiers with auxiliary classifiers after c3 and c4: every trainable parameter of
    /// both networks and every auxiliary variable gets a gradient from the summed loss.
    #[test]
    fn gradient_reaches_both_networks_and_every_auxiliary_classifier() {
        use rand::SeedableRng;
        let dev = Device::Cpu;
        let model = |w: f64| -> crate::models::config::ModelConfig {
            serde_json::from_value(serde_json::json!({
                "arch": "classifier",
                "backbone": {"depth": 18, "width": w, "norm": "bn", "trainable_layers": 5},
                "input": {"min_size": 32, "max_size": 32},
                "head": {"type": "linear"},
            }))
            .unwrap()
        };
        let nets = [
            Network::new(&model(0.125), 3, 0, &dev).unwrap(),
            Network::new(&model(0.25), 3, network_seed(0, 1), &dev).unwrap(),
        ];
        let aux_vars = Arc::new(SeededVarMap::new(5));
        let vb = aux_vars.builder(DType::F32, &dev);
        let mut aux: [Vec<(String, StageBranch)>; 2] = [vec![], vec![]];
        for k in 0..2 {
            let r = nets[k].config.backbone().resnet(ConvImpl::Kdet);
            for st in ["backbone.c3", "backbone.c4"] {
                let b = StageBranch::new(
                    vb.pp(format!("{}.aux.{st}", NAMES[k])),
                    r,
                    stage_of(st).unwrap(),
                    3,
                )
                .unwrap();
                aux[k].push((st.to_string(), b));
            }
        }
        let mut dcm = Dcm {
            nets,
            aux,
            aux_vars,
            temperature: 1.0,
            kd_weight: 1.0,
            evaluated: 0,
        };
        let b = crate::distill::test_util::class_batch(32);
        let out = dcm.step(&b, &mut StepRng::seed_from_u64(0)).unwrap();
        let keys: Vec<&str> = out.losses.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "net1.dcm.ce_aux1",
                "net1.dcm.ce_aux2",
                "net1.dcm.ce_final",
                "net1.dcm.kd",
                "net2.dcm.ce_aux1",
                "net2.dcm.ce_aux2",
                "net2.dcm.ce_final",
                "net2.dcm.kd"
            ]
        );
        let total = out
            .losses
            .values()
            .cloned()
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let g = total.backward().unwrap();
        for n in &dcm.nets {
            let data = n.vars.varmap.data().lock().unwrap();
            for (k, v) in data.iter().filter(|(k, _)| n.model.is_trainable(k)) {
                assert!(g.get(v.as_tensor()).is_some(), "{k} gets no gradient");
            }
        }
        let data = dcm.aux_vars.varmap.data().lock().unwrap();
        assert!(data
            .keys()
            .any(|k| k.starts_with("net2.aux.backbone.c3.layer4.")));
        for (k, v) in data.iter() {
            if k.ends_with("running_mean") || k.ends_with("running_var") {
                continue;
            }
            assert!(g.get(v.as_tensor()).is_some(), "{k} gets no gradient");
        }
    }
}
