//! Class-balanced distillation, CBD (Iscen, Araujo, Gong, Schmid, BMVC 2021, "Class-Balanced
//! Distillation for Long-Tailed Visual Recognition"), as google-research's
//! `class_balanced_distillation` implements it (`train.py`, `resnet.py`,
//! `configs/stage_two_cbd.py`). Stage 1 trains teachers with instance sampling (plain
//! training, different seeds and augmentation: `configs/synth/cls_lt_*`). Stage 2, this
//! method, trains the student from scratch on the sampler's batches — class-balanced in the
//! paper (`data.sampler: class_balanced`); the same batch feeds both terms:
//!
//! `L = (1 − α)·CE(σ·cos classifier on ŝ, y) + α·β·mean_i (1 − ⟨ŝ_i, t̂_i⟩)`,
//!
//! ŝ the L2-normalised output of the student's projection (Dense + ReLU, `model.projection`),
//! t̂ = normalise(concat_j normalise(f_j)) over the teachers' pooled features f_j (one teacher:
//! CBD; several: CBD_ENS). α = 0.4, β = 100 (`distill_alpha`, `distill_fd_beta`). Teachers may
//! be kdet classifiers (their `pool` tap) or pretrained hub models (`teachers[i].pretrained`:
//! candle-transformers' ResNet or DINOv2, each fed its own normalisation and input size).

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::pretrained::{ensemble_target, ClassTeacher};
use crate::config::distill::MethodConfig;
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::checkpoint::FrozenInput;
use crate::engine::method::{
    own_pass, student_network, Method, NamedNetwork, OwnPass, Reference, RunData, StepOutput,
};
use crate::error::{Error, Result};
use crate::models::build::Network;
use crate::models::classifier::l2_normalize;
use crate::models::contract::{find_tap, StepRng};

pub struct Cbd {
    pub student: Network,
    pub teachers: Vec<ClassTeacher>,
    alpha: f64,
    beta: f64,
}

/// `mean_i (1 − ⟨normalise(s_i), t_i⟩)` for normalised targets `t` (no gradient to them).
pub fn feature_distillation(student: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let s = l2_normalize(student)?;
    let cos = (s * target.detach())?.sum(1)?;
    (1.0 - cos)?.mean_all()
}

impl Cbd {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let student = student_network(cfg, run)?;
        let teachers = ClassTeacher::load_all(cfg, run)?;
        Self::with_teachers(cfg, student, teachers)
    }

    /// CBD between `student` and `teachers`; the student's projection must be as wide as the
    /// teachers' features together.
    pub fn with_teachers(
        cfg: &LoadedConfig,
        student: Network,
        teachers: Vec<ClassTeacher>,
    ) -> Result<Self> {
        let Some(MethodConfig::Cbd { alpha, beta }) = cfg.config.method.clone() else {
            unreachable!("built for method cbd")
        };
        let taps = student.model.taps();
        let proj = find_tap(&taps, "projection", student.model.family()).map_err(|_| {
            cfg.error(
                "model.projection",
                "missing: a CBD student projects its pooled feature (Dense + ReLU) onto the teachers' features; give {\"dim\": D}",
            )
        })?;
        let dims: Vec<usize> = teachers.iter().map(|t| t.feature_dim()).collect();
        let total: usize = dims.iter().sum();
        if proj.channels != total {
            return Err(cfg.error(
                "model.projection.dim",
                format!(
                    "{} does not match the teachers' features: {} = {total} (CBD compares the projection with their concatenation)",
                    proj.channels,
                    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" + ")
                ),
            ));
        }
        Ok(Self {
            student,
            teachers,
            alpha,
            beta,
        })
    }
}

impl Method for Cbd {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        vec![NamedNetwork {
            name: "",
            net: &self.student,
        }]
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let OwnPass { fwd, out, .. } = own_pass(self.student.model.as_ref(), batch, rng)?;
        let input = self.student.config.input();
        let feats = self
            .teachers
            .iter()
            .map(|t| t.features(batch, input))
            .collect::<Result<Vec<_>>>()?;
        let target = ensemble_target(&feats)?;
        let s = fwd
            .taps
            .get("projection")
            .ok_or_else(|| Error::msg("the student has no `projection` tap"))?;
        let fd = feature_distillation(s, &target)?;
        let mut losses = BTreeMap::new();
        for (k, l) in out.losses {
            losses.insert(k, (l.value * (1.0 - self.alpha))?);
        }
        losses.insert(
            "distill.cbd.feature".to_string(),
            (fd * (self.alpha * self.beta))?,
        );
        Ok(StepOutput {
            losses,
            metrics: BTreeMap::new(),
        })
    }

    fn frozen_inputs(&self) -> Vec<FrozenInput> {
        self.teachers
            .iter()
            .map(ClassTeacher::frozen_input)
            .collect()
    }

    fn references(&self) -> Vec<Reference<'_>> {
        self.teachers
            .iter()
            .filter_map(ClassTeacher::reference)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::config::ModelConfig;
    use crate::models::contract::Want;
    use candle_core::Device;
    use rand::SeedableRng;

    #[test]
    fn feature_loss_and_ensemble_target_by_hand() {
        let d = Device::Cpu;
        // Teachers (3, 4) → (0.6, 0.8) and (0, 2) → (0, 1); concatenated (0.6, 0.8, 0, 1) has
        // norm √2: t̂ = (0.6, 0.8, 0, 1)/√2.
        let t = ensemble_target(&[
            Tensor::new(&[[3f32, 4.0]], &d).unwrap(),
            Tensor::new(&[[0f32, 2.0]], &d).unwrap(),
        ])
        .unwrap();
        let r = 2f32.sqrt();
        let want = [0.6 / r, 0.8 / r, 0.0, 1.0 / r];
        for (g, w) in t.to_vec2::<f32>().unwrap()[0].iter().zip(want) {
            assert!((g - w).abs() < 1e-6);
        }
        // Student (1, 0, 0, 1) → (1, 0, 0, 1)/√2: cos = (0.6 + 1)/2 = 0.8 → loss 0.2.
        let s = Tensor::new(&[[1f32, 0.0, 0.0, 1.0]], &d).unwrap();
        let l = feature_distillation(&s, &t)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((l - 0.2).abs() < 1e-6, "{l}");
    }

    fn model(projection: Option<usize>) -> ModelConfig {
        let mut v = serde_json::json!({
            "arch": "classifier",
            "backbone": {"depth": 18, "width": 0.125},
            "input": {"min_size": 32, "max_size": 32},
            "head": {"type": "cosine"},
        });
        if let Some(p) = projection {
            v["projection"] = serde_json::json!({ "dim": p });
        }
        serde_json::from_value(v).unwrap()
    }

    fn teacher(seed: u64, index: usize) -> ClassTeacher {
        ClassTeacher::Model(crate::distill::test_util::frozen_teacher(
            &model(None),
            3,
            seed,
            index,
        ))
    }

    #[test]
    fn the_loss_is_weighted_and_gradients_reach_the_student_and_its_projection_only() {
        let cfg = crate::config::from_str(
            "x.json",
            &serde_json::json!({"model": model(Some(128)), "teachers": [{"weights": "a"}, {"weights": "b"}],
                                "method": {"type": "cbd"}})
            .to_string(),
        )
        .unwrap();
        // R18 ×0.125 pools 64 channels: two teachers need a 128-wide projection.
        let student = Network::new(&model(Some(96)), 3, 7, &Device::Cpu).unwrap();
        let e = Cbd::with_teachers(&cfg, student, vec![teacher(1, 0), teacher(2, 1)])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("model.projection.dim") && e.contains("64 + 64 = 128"),
            "{e}"
        );
        let student = Network::new(&model(Some(128)), 3, 7, &Device::Cpu).unwrap();
        let mut cbd =
            Cbd::with_teachers(&cfg, student, vec![teacher(1, 0), teacher(2, 1)]).unwrap();
        let b = crate::distill::test_util::class_batch(32);
        let out = cbd.step(&b, &mut StepRng::seed_from_u64(0)).unwrap();
        assert_eq!(
            out.losses.keys().collect::<Vec<_>>(),
            ["distill.cbd.feature", "loss_cls"]
        );
        // The weights: 0.6·CE and 40·(1 − cos) (α = 0.4, β = 100), against the same forward
        // (training-mode BatchNorm normalises by the batch, so it repeats exactly).
        let m = &cbd.student.model;
        let fwd = m.forward(&b.images, true).unwrap();
        let a = m.assign(&fwd, &b, &mut StepRng::seed_from_u64(0)).unwrap();
        let ce = m.outputs(&fwd, &a, &b, Want::Losses).unwrap().losses["loss_cls"]
            .value
            .to_scalar::<f32>()
            .unwrap();
        let input = cbd.student.config.input().clone();
        let feats: Vec<Tensor> = cbd
            .teachers
            .iter()
            .map(|t| t.features(&b, &input).unwrap())
            .collect();
        let fd = feature_distillation(&fwd.taps["projection"], &ensemble_target(&feats).unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let got = |k: &str| out.losses[k].to_scalar::<f32>().unwrap();
        assert!(
            (got("loss_cls") - 0.6 * ce).abs() < 1e-5,
            "{} vs {}",
            got("loss_cls"),
            ce
        );
        assert!((got("distill.cbd.feature") - 40.0 * fd).abs() < 1e-3);
        assert!(fd > 0.0);
        let total = (&out.losses["distill.cbd.feature"] + &out.losses["loss_cls"]).unwrap();
        let grads = total.backward().unwrap();
        let vars = cbd.student.vars.varmap.data().lock().unwrap();
        crate::distill::test_util::assert_gradients(
            &grads,
            |n| vars.get(n).cloned(),
            &[
                "projection.weight",
                "projection.bias",
                "fc.weight",
                "backbone.layer4.1.conv2.weight",
            ],
        );
        // The teachers are plain tensors: their features track no operation.
        for t in &cbd.teachers {
            let f = t.features(&b, cbd.student.config.input()).unwrap();
            assert!(!f.track_op());
        }
    }
}
