//! FedNTD (Lee et al., NeurIPS 2022, "Preservation of the Global Knowledge by Not-True
//! Distillation in Federated Learning", Eq. 4; github.com/Lee-Gihun/FedNTD
//! `algorithms/fedntd/criterion.py` `NTD_Loss`): a federated client trains its local model on
//!
//! `L = CE(q_l, y) + β · τ² · KL(q̃_g^τ ‖ q̃_l^τ)`,
//!
//! where `q̃^τ` is the softmax at temperature τ over the **not-true** logits — the logits with
//! the label's column removed (`refine_as_not_true`), K − 1 of them — of the round's global model
//! (`q̃_g`, frozen: computed under `torch.no_grad()` from `dg_model`, a copy of the downloaded
//! weights whose parameters do not require grad) and of the local model (`q̃_l`). The KL is
//! `nn.KLDivLoss(reduction="batchmean")`: summed over the K − 1 classes, averaged over the batch;
//! CE is `nn.CrossEntropyLoss()` (a batch mean). Defaults β = 1, τ = 1 are the released
//! `config/fedntd.json`. The global model runs in training mode, as there (`dg_model` is a
//! `deepcopy` of the local model made after `model.train()`): BatchNorm normalises with the
//! batch's statistics, so at a client's first step the two models agree and the term is 0.

use std::collections::BTreeMap;

use candle_core::{Tensor, D};

use super::kd::kd_loss;
use crate::config::distill::MethodConfig;
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::method::{own_pass, student_network, Method, NamedNetwork, RunData, StepOutput};
use crate::error::{Error, Result};
use crate::models::build::Network;
use crate::models::classifier::image_labels;
use crate::models::contract::{Head, StepRng, Want};

/// The rows of `logits` (`N × K`) without each row's true class: `N × (K − 1)`, the other
/// classes in their order (`refine_as_not_true`).
pub fn not_true(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (n, k) = logits.dims2()?;
    if labels.len() != n || k < 2 {
        return Err(Error::msg(format!(
            "not-true logits need one label per row and at least 2 classes ({n} rows, {} labels, {k} classes)",
            labels.len()
        )));
    }
    let idx: Vec<u32> = labels
        .iter()
        .flat_map(|&y| (0..k as u32).filter(move |&c| c != y))
        .collect();
    let idx = Tensor::from_vec(idx, (n, k - 1), logits.device())?;
    Ok(logits.contiguous()?.gather(&idx, D::Minus1)?)
}

/// `τ² · KL(softmax(g̃/τ) ‖ softmax(l̃/τ))` over the not-true logits, batch mean (`_ntd_loss`);
/// the global side detached.
pub fn ntd_loss(local: &Tensor, global: &Tensor, labels: &[u32], tau: f64) -> Result<Tensor> {
    Ok(kd_loss(
        &not_true(local, labels)?,
        &not_true(&global.detach(), labels)?,
        tau,
    )?)
}

/// A FedNTD client: the local model (the trained network) and the round's global model.
pub struct FedNtd {
    student: Network,
    global: Network,
    beta: f64,
    temperature: f64,
}

impl FedNtd {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let Some(MethodConfig::Fedntd { beta, temperature }) = cfg.config.method else {
            return Err(Error::msg(
                "internal: FedNTD built from another method's config",
            ));
        };
        let student = student_network(cfg, run)?;
        // The global model's weights come with each round (`set_global`).
        let global = crate::federated::client::frozen_network(cfg, run)?;
        Ok(Self {
            student,
            global,
            beta,
            temperature,
        })
    }
}

impl Method for FedNtd {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        vec![NamedNetwork {
            name: "",
            net: &self.student,
        }]
    }

    fn set_global(&mut self, global: &BTreeMap<String, Tensor>) -> Result<()> {
        crate::federated::client::load_frozen(&self.global, global, "FedNTD")
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let p = own_pass(self.student.model.as_ref(), batch, rng)?;
        let local = p.out.head(Head::Classifier)?.logits()?;
        let labels: Vec<u32> = image_labels(batch)?
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                l.ok_or_else(|| {
                    Error::msg(format!(
                        "FedNTD needs a label on every image; image {} has none",
                        batch.image_ids[i]
                    ))
                })
            })
            .collect::<Result<_>>()?;
        // The frozen global model on the same images, in training mode (module doc); its
        // logits are constants.
        let g = self.global.model.forward(&batch.images.detach(), true)?;
        let go = self.global.model.outputs(
            &g,
            &p.assignment,
            batch,
            Want::Heads(&[Head::Classifier]),
        )?;
        let global = go.head(Head::Classifier)?.logits()?.detach();
        let ntd = (ntd_loss(&local, &global, &labels, self.temperature)? * self.beta)?;
        let mut out = StepOutput::from_losses(p.out.losses);
        out.losses.insert("loss_ntd".into(), ntd);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The paper's Eq. 4 with plain loops in f64.
    fn by_hand(local: &[Vec<f64>], global: &[Vec<f64>], labels: &[usize], tau: f64) -> f64 {
        let soft = |row: &[f64], y: usize| -> Vec<f64> {
            let nt: Vec<f64> = row
                .iter()
                .enumerate()
                .filter(|(c, _)| *c != y)
                .map(|(_, v)| v / tau)
                .collect();
            let z: f64 = nt.iter().map(|v| v.exp()).sum();
            nt.iter().map(|v| v.exp() / z).collect()
        };
        let mut total = 0.0;
        for ((l, g), &y) in local.iter().zip(global).zip(labels) {
            let (ql, qg) = (soft(l, y), soft(g, y));
            total += qg
                .iter()
                .zip(&ql)
                .map(|(a, b)| a * (a / b).ln())
                .sum::<f64>();
        }
        tau * tau * total / labels.len() as f64
    }

    #[test]
    fn ntd_loss_by_hand_excludes_the_true_class() {
        let d = Device::Cpu;
        let local = vec![vec![2.0, 0.5, -1.0, 0.0], vec![0.1, 0.2, 3.0, -0.5]];
        let global = vec![vec![-1.0, 1.5, 0.5, 0.2], vec![1.0, -0.3, 0.0, 0.4]];
        let labels = [0usize, 2];
        let t = |v: &Vec<Vec<f64>>| {
            let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
            Tensor::from_vec(flat, (2, 4), &d).unwrap()
        };
        let y: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        for tau in [1.0, 3.0] {
            let got = ntd_loss(&t(&local), &t(&global), &y, tau)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            let want = by_hand(&local, &global, &labels, tau);
            assert!((got - want).abs() < 1e-5, "τ {tau}: {got} vs {want}");
        }
        // The true class is excluded: changing only the true-class logits changes nothing.
        let mut local2 = local.clone();
        local2[0][0] = -7.0;
        local2[1][2] = 9.0;
        let a = ntd_loss(&t(&local), &t(&global), &y, 1.0).unwrap();
        let b = ntd_loss(&t(&local2), &t(&global), &y, 1.0).unwrap();
        assert!((a.to_scalar::<f32>().unwrap() - b.to_scalar::<f32>().unwrap()).abs() < 1e-6);
        // …whereas a not-true logit does.
        local2[0][1] = 4.0;
        let c = ntd_loss(&t(&local2), &t(&global), &y, 1.0).unwrap();
        assert!((a.to_scalar::<f32>().unwrap() - c.to_scalar::<f32>().unwrap()).abs() > 1e-3);
        // Identical not-true logits (whatever the true ones): zero.
        let z = ntd_loss(&t(&local), &t(&local2.clone()), &y, 1.0).unwrap();
        let same = ntd_loss(&t(&local), &t(&local), &y, 1.0).unwrap();
        assert!(same.to_scalar::<f32>().unwrap().abs() < 1e-7);
        assert!(z.to_scalar::<f32>().unwrap() > 0.0);
        let nt = not_true(&t(&local), &y).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(nt[0], [0.5, -1.0, 0.0]);
        assert_eq!(nt[1], [0.1, 0.2, -0.5]);
    }

    #[test]
    fn the_global_model_gets_no_gradient() {
        use rand::SeedableRng;
        let d = Device::Cpu;
        let model: crate::models::config::ModelConfig = serde_json::from_value(serde_json::json!({
            "arch": "classifier",
            "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
            "input": {"min_size": 16, "max_size": 16, "size_divisible": 1, "square": true},
        }))
        .unwrap();
        // A global model other than the local one, so the NTD term is not zero.
        let mut m = FedNtd {
            student: Network::new(&model, 4, 0, &d).unwrap(),
            global: Network::new(&model, 4, 7, &d).unwrap(),
            beta: 1.0,
            temperature: 2.0,
        };
        let batch = crate::distill::test_util::class_batch(16);
        let mut rng = StepRng::seed_from_u64(0);
        let out = m.step(&batch, &mut rng).unwrap();
        let ntd = &out.losses["loss_ntd"];
        assert!(ntd.to_scalar::<f32>().unwrap() > 0.0);
        assert!(out.losses.contains_key("loss_cls"));
        let grads = ntd.backward().unwrap();
        let student = |name: &str| {
            m.student
                .vars
                .varmap
                .data()
                .lock()
                .unwrap()
                .get(name)
                .cloned()
        };
        crate::distill::test_util::assert_gradients(
            &grads,
            student,
            &["fc.weight", "backbone.conv1.weight"],
        );
        for (k, v) in m.global.vars.varmap.data().lock().unwrap().iter() {
            assert!(
                grads.get(v.as_tensor()).is_none(),
                "global model's {k} got a gradient"
            );
        }
        // Given the local model's own weights as the global ones, the global model predicts
        // what the local one does.
        let w: BTreeMap<String, Tensor> = m.student.named_tensors().into_iter().collect();
        m.set_global(&w).unwrap();
        let p = |n: &Network| n.model.predict(&batch).unwrap().into_classes().unwrap();
        assert_eq!(p(&m.student), p(&m.global));
        let bad = BTreeMap::from([(
            "nope".to_string(),
            Tensor::zeros(1, candle_core::DType::F32, &d).unwrap(),
        )]);
        assert!(m
            .set_global(&bad)
            .unwrap_err()
            .to_string()
            .contains("do not fit"));
    }
}
