//! Training methods that distil (each paper's method in one file) and their loss terms, each a
//! function of student and (detached) teacher tensors — the teacher side never receives a
//! gradient.
//!
//! | file | what |
//! |---|---|
//! | [`chen`] | Chen et al. 2017: the student's own assignment, frozen teachers' terms |
//! | [`lad`] | LAD (Nguyen et al. 2022): the student trains on its teacher's label assignment |
//! | [`colad`] | Co-LAD (Nguyen et al. 2022 §4): two networks on one assignment chosen per box × level |
//! | [`dcm`] | dense cross-layer mutual-distillation (Yao & Sun 2020): two classifiers with auxiliary classifiers, KD between every cross pair |
//! | [`ffsd`] | FFSD (Li et al. 2021): a leader taught by a fusion module over common students' features; diversity, self-distillation |
//! | [`dml`] | deep mutual learning (Zhang et al. 2018): K networks, each with the mean KL from the others' (detached) probabilities on its own samples |
//! | [`fedntd`] | FedNTD (Lee et al. 2022): a federated client's CE + β·τ²·KL on the not-true classes from the round's frozen global model |
//! | [`fedx`] | FedX (Han et al. 2022): a federated client's local and global contrastive + relational losses, no labels |
//! | [`simclr`] | SimCLRv2's distillation (Chen et al. 2020 Eq. 3): a classifier learns a fixed teacher's soft labels on (unlabeled) images |
//! | [`contrastive`] | SimCLR / SimCLRv2 pretraining: two views per image, NT-Xent (Eq. 1) on SimCLRv2's projection head |
//! | [`dogo`] | DoGo (Bhat et al. 2021): two self-supervised networks, each its NT-Xent plus the KL from its peer's (detached) softmax of similarity scores |
//! | [`cbd`] | class-balanced distillation (Iscen et al. 2021): (1 − α)·CE + α·β·(1 − cos) to the teachers' normalised features |
//! | [`pretrained`] | classifier teachers: kdet classifiers or candle-transformers' ResNet / DINOv2 from safetensors, strict keys, per-teacher input |
//! | [`terms`] | the `distill` terms, read through the model contract; μ on the hard losses |
//! | [`teacher`] | a frozen teacher: strict loading, sanity check, eval-mode forward |
//! | [`hint`] | adaptation layer + L2/L1 hint loss (Chen et al. 2017 §3.3, FitNets) |
//! | [`weighted_kd`] | soft cross-entropy with a background weight, softmax (RCN) and sigmoid (RPN) |
//! | [`bounded_reg`] | teacher-bounded L2 regression (Chen et al. 2017 Eq. 4) |
//! | [`kd`] | temperature KD (Hinton et al. 2015) |
//! | [`pkd`] | PKD (Cao et al. 2022): per-channel standardised maps, MSE / 2 (MMRazor `PKDLoss`) |
//! | [`cwd`] | CWD (Shu et al. 2021): channel-wise spatial softmax, KL · τ² / (N·C) |
//! | [`mgd`] | MGD (Yang et al. 2022): masked student map, generator rebuilds the teacher's |
//! | [`fgd`] | FGD (Yang et al. 2022): box-masked attention-weighted features, attention and GcBlock global losses |
//! | [`align`] | the 1×1 align conv of the feature terms (channels differ), teacher resize |
//!
//! [`build_method`] is the one place that maps a config onto a training method.

pub mod align;
pub mod bounded_reg;
pub mod cbd;
pub mod chen;
pub mod colad;
pub mod contrastive;
pub mod cwd;
pub mod dcm;
pub mod dml;
pub mod dogo;
pub mod fedntd;
pub mod fedx;
pub mod ffsd;
pub mod fgd;
pub mod hint;
pub mod kd;
pub mod lad;
pub mod mgd;
pub mod pkd;
pub mod pretrained;
pub mod simclr;
pub mod teacher;
pub mod terms;
pub mod weighted_kd;

use crate::config::distill::MethodConfig;
use crate::config::LoadedConfig;
use crate::engine::method::{Method, Plain, RunData};
use crate::error::Result;

/// The training method a config asks for (`engine::trainer::MethodBuilder`): its `method`, or
/// without one the student alone (no `teachers`) or Chen et al. 2017's distillation.
pub fn build_method(cfg: &LoadedConfig, run: &RunData) -> Result<Box<dyn Method>> {
    let c = &cfg.config;
    Ok(match &c.method {
        None if c.teachers.is_empty() => Box::new(Plain::new(cfg, run)?),
        None => Box::new(chen::ChenDistillation::new(cfg, run)?),
        Some(MethodConfig::Lad { .. }) => Box::new(lad::Lad::new(cfg, run)?),
        Some(MethodConfig::Colad { .. }) => Box::new(colad::Colad::new(cfg, run)?),
        Some(MethodConfig::Simclr { .. }) => Box::new(simclr::Simclr::new(cfg, run)?),
        Some(MethodConfig::Cbd { .. }) => Box::new(cbd::Cbd::new(cfg, run)?),
        Some(MethodConfig::SimclrPretrain { .. }) => {
            Box::new(contrastive::SimclrPretrain::new(cfg, run)?)
        }
        Some(MethodConfig::Dml { .. }) => Box::new(dml::Dml::new(cfg, run)?),
        Some(MethodConfig::Dcm { .. }) => Box::new(dcm::Dcm::new(cfg, run)?),
        Some(MethodConfig::Fedntd { .. }) => Box::new(fedntd::FedNtd::new(cfg, run)?),
        Some(MethodConfig::Fedx { .. }) => Box::new(fedx::FedX::new(cfg, run)?),
        Some(MethodConfig::Dogo { .. }) => Box::new(dogo::Dogo::new(cfg, run)?),
        Some(MethodConfig::Ffsd { .. }) => Box::new(ffsd::Ffsd::new(cfg, run)?),
    })
}

/// Helpers shared by the methods' tests.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::backprop::GradStore;
    use candle_core::Var;

    /// A scalar f32 tensor's value.
    pub fn scalar(t: &candle_core::Tensor) -> f64 {
        t.to_scalar::<f32>().unwrap() as f64
    }

    /// Four random `side`-pixel images labelled 1, 2, 3, 1 (classification targets, no boxes).
    pub fn class_batch(side: usize) -> crate::data::loader::Batch {
        use crate::data::loader::{Batch, Target};
        Batch {
            images: candle_core::Tensor::rand(
                -1f32,
                1.0,
                (4, 3, side, side),
                &candle_core::Device::Cpu,
            )
            .unwrap(),
            image_sizes: vec![(side, side); 4],
            original_sizes: vec![(side, side); 4],
            image_ids: vec![1, 2, 3, 4],
            targets: (0..4)
                .map(|i| Target {
                    boxes: vec![],
                    labels: vec![1 + i % 3],
                    crowd: vec![],
                })
                .collect(),
        }
    }

    /// A frozen teacher of architecture `cfg` for `classes` classes, initialised from `seed`,
    /// over plain tensors (no variables, so nothing of it can train): the methods' tests'
    /// teacher, `index` its place in `teachers`.
    pub fn frozen_teacher(
        cfg: &crate::models::config::ModelConfig,
        classes: usize,
        seed: u64,
        index: usize,
    ) -> crate::distill::teacher::Teacher {
        use candle_core::{DType, Device};
        let dev = Device::Cpu;
        let net = crate::models::build::Network::new(cfg, classes, seed, &dev).unwrap();
        let plain: std::collections::HashMap<String, candle_core::Tensor> = net
            .named_tensors()
            .into_iter()
            .map(|(k, t)| (k, t.detach()))
            .collect();
        let m = cfg
            .family()
            .build(
                candle_nn::VarBuilder::from_tensors(plain, DType::F32, &dev),
                classes,
            )
            .unwrap();
        crate::distill::teacher::Teacher::from_model(m, cfg.clone(), index)
    }

    /// Each of `names` (found by `var`) got a non-zero gradient in `grads`.
    pub fn assert_gradients(grads: &GradStore, var: impl Fn(&str) -> Option<Var>, names: &[&str]) {
        for name in names {
            let v = var(name).unwrap_or_else(|| panic!("no variable {name}"));
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "{name} got a zero gradient");
        }
    }
}
