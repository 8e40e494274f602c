//! FedX (Han et al., ECCV 2022, "FedX: Unsupervised Federated Learning with Cross Knowledge
//! Distillation"; github.com/Sungwon-Han/FEDX `main.py` `train_net_fedx`, `losses.py`): a
//! federated client learns representations without labels. The model is the encoder (the
//! classifier's pooled feature `h`), a projection MLP `z = P(h)` and a prediction MLP
//! `p = Q(z)` (`ModelFedX`: Linear → ReLU → Linear each, `out_dim` wide, PyTorch's default
//! initialisation); both MLPs belong to the global model (they are averaged with the encoder)
//! and are method variables here (`fedx.proj.*`, `fedx.pred.*`: trained, averaged,
//! checkpointed, not exported). Each step takes two views `x¹, x²` of a batch and a batch of
//! other images as anchors `xᵃ`, runs the local model on all three (training mode) and the
//! round's global model on them (evaluation mode, no gradient), and minimises
//!
//! `NT-Xent(z¹, z²) + NT-Xent(p¹, z_g²) + JS(z¹, z² | zᵃ; τ_s) + JS(p¹, p² | z_gᵃ; τ_t)`
//!
//! — local and global contrastive terms (`nt_xent`: SimCLR's loss, as
//! `distill::contrastive::nt_xent`) and local and global relational terms (`js_loss`): with
//! `s_i = cos(u_i, anchors)`, the inputs `log softmax(s/τ)` of both views are pulled towards
//! their mean target `(softmax(s¹/τ') + softmax(s²/τ'))/2` by `KL(target ‖ ·)`, batch mean,
//! averaged over the two views. As in the released code the target is **not** detached (it is
//! computed from the local model's outputs, and PyTorch's `kl_div` differentiates through it),
//! while the global model's outputs are constants (`torch.no_grad()`).
//!
//! Anchors: the released code draws them from a second, independently shuffled pass over the
//! client's loader (`random_dataloader`); kdet takes the previous step's first views of the
//! same client (another random batch of its images), and at a client's first step the batch's
//! own first views rotated by one place (docs/methods.md).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, VarMap};

use super::contrastive::nt_xent;
use crate::config::distill::MethodConfig;
use crate::config::LoadedConfig;
use crate::data::contrastive::ContrastiveAugConfig;
use crate::data::loader::Batch;
use crate::engine::method::{student_network, Method, NamedNetwork, RunData, StepOutput};
use crate::error::{Error, Result};
use crate::models::build::Network;
use crate::models::classifier::l2_normalize;
use crate::models::contract::StepRng;
use crate::models::init::SeededVarMap;

/// Linear → ReLU → Linear (`nn.Sequential(nn.Linear, nn.ReLU, nn.Linear)`), weights `out × in`.
#[derive(Clone)]
pub struct Mlp {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl Mlp {
    /// Variables `<name>.0.{weight,bias}` and `<name>.2.{weight,bias}`, drawn like PyTorch's
    /// `nn.Linear`: U(−1/√fan_in, 1/√fan_in) for weights and biases.
    fn new(
        vars: &Arc<SeededVarMap>,
        name: &str,
        din: usize,
        dout: usize,
        dev: &Device,
    ) -> Result<Self> {
        let vb = vars.builder(DType::F32, dev).pp(name);
        let u = |fan_in: usize| {
            let b = 1.0 / (fan_in as f64).sqrt();
            Init::Uniform { lo: -b, up: b }
        };
        Ok(Self {
            w1: vb.pp("0").get_with_hints((dout, din), "weight", u(din))?,
            b1: vb.pp("0").get_with_hints(dout, "bias", u(din))?,
            w2: vb.pp("2").get_with_hints((dout, dout), "weight", u(dout))?,
            b2: vb.pp("2").get_with_hints(dout, "bias", u(dout))?,
        })
    }

    /// The MLP of the tensors `<prefix>.0.weight` … in `w`, as constants.
    fn frozen(w: &BTreeMap<String, Tensor>, prefix: &str) -> Result<Self> {
        let get = |k: &str| -> Result<Tensor> {
            w.get(&format!("{prefix}.{k}"))
                .map(|t| t.detach())
                .ok_or_else(|| Error::msg(format!("FedX: the global weights lack {prefix}.{k}")))
        };
        Ok(Self {
            w1: get("0.weight")?,
            b1: get("0.bias")?,
            w2: get("2.weight")?,
            b2: get("2.bias")?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = x.matmul(&self.w1.t()?)?.broadcast_add(&self.b1)?.relu()?;
        h.matmul(&self.w2.t()?)?.broadcast_add(&self.b2)
    }
}

/// `KL(target ‖ softmax(input))` with PyTorch's `kl_div(input_log, target, "batchmean")`:
/// `Σ target · (log target − input_log) / rows`; `target · log target` is taken as 0 where the
/// target underflows to 0 (`xlogy`).
fn kl_batchmean(input_log: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let rows = input_log.dim(0)?.max(1) as f64;
    let log_t = target.maximum(1e-30)?.log()?;
    (target * (log_t - input_log)?)?.sum_all()? / rows
}

/// FedX's relational loss `js_loss(x1, x2, xa, t, t2)` (module doc): both views' similarity
/// distributions over the anchors `xa` pulled towards their mean at the sharper τ'.
pub fn js_loss(
    x1: &Tensor,
    x2: &Tensor,
    xa: &Tensor,
    t: f64,
    t2: f64,
) -> candle_core::Result<Tensor> {
    let an = l2_normalize(xa)?.t()?;
    let s1 = l2_normalize(x1)?.matmul(&an)?;
    let s2 = l2_normalize(x2)?.matmul(&an)?;
    let in1 = candle_nn::ops::log_softmax(&(&s1 / t)?, D::Minus1)?;
    let in2 = candle_nn::ops::log_softmax(&(&s2 / t)?, D::Minus1)?;
    let soft = |s: &Tensor| candle_nn::ops::softmax(&(s / t2)?, D::Minus1);
    let target = ((soft(&s1)? + soft(&s2)?)? / 2.0)?;
    (kl_batchmean(&in1, &target)? + kl_batchmean(&in2, &target)?)? / 2.0
}

/// The contrastive term of two batches of embeddings (row i of each: one image).
fn contrast(a: &Tensor, b: &Tensor, t: f64) -> Result<Tensor> {
    Ok(nt_xent(&Tensor::cat(&[a, b], 0)?, t)?.0)
}

/// A FedX client (module doc).
pub struct FedX {
    net: Network,
    own: Arc<SeededVarMap>,
    proj: Mlp,
    pred: Mlp,
    global: Network,
    global_proj: Option<Mlp>,
    /// The previous step's first views: the next step's anchors.
    anchors: Option<Tensor>,
    temperature: f64,
    global_relation: f64,
    local_relation: f64,
    global_terms: bool,
    augment: ContrastiveAugConfig,
}

impl FedX {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let Some(MethodConfig::Fedx {
            temperature,
            global_relation_temperature,
            local_relation_temperature,
            out_dim,
            global: global_terms,
            augment,
        }) = cfg.config.method.clone()
        else {
            return Err(Error::msg(
                "internal: FedX built from another method's config",
            ));
        };
        let net = student_network(cfg, run)?;
        let d = match &net.config {
            crate::models::config::ModelConfig::Classifier(c) => c.pooled_dim(),
            other => {
                return Err(cfg.error(
                    "model.arch",
                    format!("fedx trains a classifier's encoder, not `{}`", other.arch()),
                ))
            }
        };
        let own = net.vars.sibling();
        let proj = Mlp::new(&own, "fedx.proj", d, out_dim, &net.device)?;
        let pred = Mlp::new(&own, "fedx.pred", out_dim, out_dim, &net.device)?;
        let global = crate::federated::client::frozen_network(cfg, run)?;
        Ok(Self {
            net,
            own,
            proj,
            pred,
            global,
            global_proj: None,
            anchors: None,
            temperature,
            global_relation: global_relation_temperature,
            local_relation: local_relation_temperature,
            global_terms,
            augment,
        })
    }

    /// The global model's projection of `images` (constants).
    fn global_projection(&self, images: &Tensor) -> Result<Tensor> {
        let proj = self
            .global_proj
            .as_ref()
            .ok_or_else(|| Error::msg("FedX: no global model was given for this round"))?;
        let g = self.global.model.forward(&images.detach(), false)?;
        Ok(proj.forward(&pool(&g)?.detach())?.detach())
    }
}

fn pool(f: &crate::models::contract::Forward) -> Result<Tensor> {
    Ok(f.taps
        .get("pool")
        .ok_or_else(|| Error::msg("fedx trains a classifier (its `pool` tap)"))?
        .to_dtype(DType::F32)?)
}

impl Method for FedX {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        vec![NamedNetwork {
            name: "",
            net: &self.net,
        }]
    }

    fn own_vars(&self) -> Option<&VarMap> {
        Some(&self.own.varmap)
    }

    fn two_views(&self) -> Option<ContrastiveAugConfig> {
        Some(self.augment.clone())
    }

    fn set_global(&mut self, global: &BTreeMap<String, Tensor>) -> Result<()> {
        crate::federated::client::load_frozen(&self.global, global, "FedX")?;
        self.global_proj = Some(Mlp::frozen(global, "fedx.proj")?);
        // A new client (or round): its anchors come from its own images.
        self.anchors = None;
        Ok(())
    }

    fn step(&mut self, batch: &Batch, _rng: &mut StepRng) -> Result<StepOutput> {
        let n2 = batch.images.dim(0)?;
        let n = n2 / 2;
        if n == 0 || n2 % 2 != 0 {
            return Err(Error::msg(format!(
                "fedx needs two views of each image (a batch of 2N), got {n2} images"
            )));
        }
        let x1 = batch.images.narrow(0, 0, n)?;
        let anchors = match self.anchors.take() {
            Some(a) => a,
            None if n > 1 => Tensor::cat(&[x1.narrow(0, 1, n - 1)?, x1.narrow(0, 0, 1)?], 0)?,
            None => x1.clone(),
        };
        let na = anchors.dim(0)?;
        let all = Tensor::cat(&[&batch.images, &anchors], 0)?;
        let h = pool(&self.net.model.forward(&all, true)?)?;
        let z = self.proj.forward(&h)?;
        let p = self.pred.forward(&z)?;
        let (z1, z2, za) = (z.narrow(0, 0, n)?, z.narrow(0, n, n)?, z.narrow(0, n2, na)?);
        let (p1, p2) = (p.narrow(0, 0, n)?, p.narrow(0, n, n)?);
        let t = self.temperature;
        let mut losses = BTreeMap::from([
            ("loss_nt_local".to_string(), contrast(&z1, &z2, t)?),
            (
                "loss_js_local".to_string(),
                js_loss(&z1, &z2, &za, t, self.local_relation)?,
            ),
        ]);
        if self.global_terms {
            let zg = self.global_projection(&all)?;
            let (zg2, zga) = (zg.narrow(0, n, n)?, zg.narrow(0, n2, na)?);
            losses.insert("loss_nt_global".into(), contrast(&p1, &zg2, t)?);
            losses.insert(
                "loss_js_global".into(),
                js_loss(&p1, &p2, &zga, t, self.global_relation)?,
            );
        }
        self.anchors = Some(x1.detach());
        Ok(StepOutput {
            losses,
            metrics: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::assert_grad_matches_fd;

    fn rows(v: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
        Tensor::from_vec(flat, (v.len(), v[0].len()), &Device::Cpu).unwrap()
    }

    /// `js_loss` of `losses.py` with plain loops in f64.
    fn js_by_hand(x1: &[Vec<f64>], x2: &[Vec<f64>], xa: &[Vec<f64>], t: f64, t2: f64) -> f64 {
        let norm = |r: &Vec<f64>| -> Vec<f64> {
            let l = r.iter().map(|v| v * v).sum::<f64>().sqrt();
            r.iter().map(|v| v / l).collect()
        };
        let cos = |a: &Vec<f64>, b: &Vec<f64>| {
            norm(a).iter().zip(norm(b)).map(|(x, y)| x * y).sum::<f64>()
        };
        let softmax = |s: &[f64], t: f64| -> Vec<f64> {
            let z: f64 = s.iter().map(|v| (v / t).exp()).sum();
            s.iter().map(|v| (v / t).exp() / z).collect()
        };
        let mut total = 0.0;
        for (a, b) in x1.iter().zip(x2) {
            let s1: Vec<f64> = xa.iter().map(|c| cos(a, c)).collect();
            let s2: Vec<f64> = xa.iter().map(|c| cos(b, c)).collect();
            let (q1, q2) = (softmax(&s1, t), softmax(&s2, t));
            let (r1, r2) = (softmax(&s1, t2), softmax(&s2, t2));
            let target: Vec<f64> = r1.iter().zip(&r2).map(|(x, y)| (x + y) / 2.0).collect();
            let kl = |q: &[f64]| {
                target
                    .iter()
                    .zip(q)
                    .map(|(p, q)| p * (p / q).ln())
                    .sum::<f64>()
            };
            total += (kl(&q1) + kl(&q2)) / 2.0;
        }
        total / x1.len() as f64
    }

    #[test]
    fn relational_loss_by_hand() {
        let x1 = vec![vec![1.0, 0.2, -0.3], vec![0.1, 1.0, 0.5]];
        let x2 = vec![vec![0.8, 0.1, 0.0], vec![-0.2, 0.9, 0.7]];
        let xa = vec![
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.3, -0.5, 1.0],
        ];
        for (t, t2) in [(0.1, 0.1), (0.5, 0.2), (1.0, 0.05)] {
            let got = js_loss(&rows(&x1), &rows(&x2), &rows(&xa), t, t2)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            let want = js_by_hand(&x1, &x2, &xa, t, t2);
            assert!(
                (got - want).abs() < 1e-4 * want.max(1.0),
                "({t}, {t2}): {got} vs {want}"
            );
        }
        // Identical views: both inputs equal; the loss is the KL between softmaxes at τ and τ'
        // of one distribution, zero when τ = τ'.
        let z = js_loss(&rows(&x1), &rows(&x1), &rows(&xa), 0.3, 0.3).unwrap();
        assert!(z.to_scalar::<f32>().unwrap().abs() < 1e-6);
    }

    #[test]
    fn relational_loss_gradient_matches_finite_differences() {
        let x2 = rows(&[vec![0.8, 0.1, 0.0], vec![-0.2, 0.9, 0.7]]);
        let xa = rows(&[
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.3, -0.5, 1.0],
        ]);
        let x1 = rows(&[vec![1.0, 0.2, -0.3], vec![0.1, 1.0, 0.5]]);
        assert_grad_matches_fd(
            |t| js_loss(t, &x2, &xa, 0.5, 0.4).unwrap().reshape(1).unwrap(),
            &x1,
            1e-2,
            2e-2,
            "js_loss",
        );
    }

    fn model() -> crate::models::config::ModelConfig {
        serde_json::from_value(serde_json::json!({
            "arch": "classifier",
            "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
            "input": {"min_size": 16, "max_size": 16, "size_divisible": 1, "square": true},
        }))
        .unwrap()
    }

    fn fedx(global_terms: bool) -> FedX {
        let d = Device::Cpu;
        let net = Network::new(&model(), 3, 0, &d).unwrap();
        let own = net.vars.sibling();
        let proj = Mlp::new(&own, "fedx.proj", 64, 8, &d).unwrap();
        let pred = Mlp::new(&own, "fedx.pred", 8, 8, &d).unwrap();
        let mut m = FedX {
            global: Network::new(&model(), 3, 9, &d).unwrap(),
            net,
            own,
            proj,
            pred,
            global_proj: None,
            anchors: None,
            temperature: 0.1,
            global_relation: 0.1,
            local_relation: 0.1,
            global_terms,
            augment: ContrastiveAugConfig::default(),
        };
        // The round's global model: another network, and this client's heads.
        let mut w: BTreeMap<String, Tensor> = m
            .global
            .named_tensors()
            .into_iter()
            .map(|(k, t)| (k, t.copy().unwrap()))
            .collect();
        for (k, t) in crate::models::weights::named_tensors(&m.own.varmap) {
            w.insert(k, t.copy().unwrap());
        }
        m.set_global(&w).unwrap();
        m
    }

    #[test]
    fn gradients_reach_the_local_model_only() {
        use rand::SeedableRng;
        let mut m = fedx(true);
        let batch = crate::distill::test_util::class_batch(16);
        let mut rng = StepRng::seed_from_u64(0);
        let out = m.step(&batch, &mut rng).unwrap();
        let names: Vec<&String> = out.losses.keys().collect();
        assert_eq!(
            names,
            [
                "loss_js_global",
                "loss_js_local",
                "loss_nt_global",
                "loss_nt_local"
            ]
        );
        let mut total = out.losses["loss_nt_global"].clone();
        for l in out.losses.values() {
            total = (total + l).unwrap();
        }
        let grads = total.backward().unwrap();
        let own = |name: &str| m.own.varmap.data().lock().unwrap().get(name).cloned();
        crate::distill::test_util::assert_gradients(
            &grads,
            own,
            &[
                "fedx.proj.0.weight",
                "fedx.proj.2.bias",
                "fedx.pred.0.weight",
                "fedx.pred.2.weight",
            ],
        );
        let net = |name: &str| m.net.vars.varmap.data().lock().unwrap().get(name).cloned();
        crate::distill::test_util::assert_gradients(&grads, net, &["backbone.conv1.weight"]);
        for (k, v) in m.global.vars.varmap.data().lock().unwrap().iter() {
            assert!(
                grads.get(v.as_tensor()).is_none(),
                "global model's {k} got a gradient"
            );
        }
        // The global terms alone still reach the prediction head (through p¹, p²)…
        let g = out.losses["loss_js_global"].backward().unwrap();
        assert!(g.get(&m.pred.w1).is_some());
        // The next step's anchors are this step's first views.
        assert_eq!(m.anchors.as_ref().unwrap().dims(), [2, 3, 16, 16]);
        // Local terms only: no global term, and no global model needed.
        let mut local = fedx(false);
        local.global_proj = None;
        let out = local.step(&batch, &mut rng).unwrap();
        assert_eq!(out.losses.len(), 2);
    }
}
