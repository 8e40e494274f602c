//! SimCLRv2-style distillation (Chen, Kornblith, Swersky, Norouzi, Hinton, NeurIPS 2020, "Big
//! Self-Supervised Models are Strong Semi-Supervised Learners", §2.3 Eq. 3): a fixed teacher's
//! class distribution at temperature τ is the student's target on every training image — the
//! unlabeled ones included (`data.use_unlabeled`) — and the labels' cross-entropy is mixed in
//! with weight 1 − α:
//!
//! `L = −(1 − α) Σ_{(x,y) labeled} log P_S(y|x) − α Σ_x Σ_y P_T(y|x; τ) log P_S(y|x; τ)`,
//! `P(y|x; τ) = softmax(f(x)/τ)_y`,
//!
//! each sum averaged over the batch's images. τ = 0.1 for self-distillation (the student has
//! the teacher's architecture), τ = 1 for big → small; the paper's experiments use the
//! distillation term alone (α = 1). The optional τ² factor (Hinton et al. 2015; SimCLR's demo
//! notebook) is off by default, as in Eq. 3. The teacher is any classifier of the student's
//! classes: a kdet classifier or a pretrained hub model with a classifier (`pretrained`).

use std::collections::BTreeMap;

use candle_core::{Tensor, D};

use super::pretrained::ClassTeacher;
use crate::config::distill::MethodConfig;
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::checkpoint::FrozenInput;
use crate::engine::method::{
    own_pass, student_network, Method, NamedNetwork, Reference, RunData, StepOutput,
};
use crate::error::Result;
use crate::models::build::Network;
use crate::models::contract::{Head, StepRng};

pub struct Simclr {
    pub student: Network,
    pub teacher: ClassTeacher,
    temperature: f64,
    alpha: f64,
    t_squared: bool,
}

/// `−mean_i Σ_y softmax(t_i/τ)_y · log_softmax(s_i/τ)_y` (× τ² with `t_squared`): the soft
/// cross-entropy of Eq. 3's second term; `teacher` carries no gradient.
pub fn soft_cross_entropy(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
    t_squared: bool,
) -> candle_core::Result<Tensor> {
    let pt = candle_nn::ops::softmax(&(teacher.detach() / temperature)?, D::Minus1)?;
    let log_ps = candle_nn::ops::log_softmax(&(student / temperature)?, D::Minus1)?;
    let l = (pt * log_ps)?.sum(1)?.mean_all()?.neg()?;
    if t_squared {
        l * (temperature * temperature)
    } else {
        Ok(l)
    }
}

impl Simclr {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let student = student_network(cfg, run)?;
        let mut teachers = ClassTeacher::load_all(cfg, run)?;
        let Some(MethodConfig::Simclr {
            temperature,
            alpha,
            t_squared,
            teacher,
        }) = cfg.config.method.clone()
        else {
            unreachable!("built for method simclr")
        };
        let t = teachers.swap_remove(teacher);
        let k = run.num_classes();
        match t.num_classes(k) {
            Some(n) if n == k => {}
            Some(n) => {
                return Err(cfg.error(
                    &format!("teachers[{teacher}]"),
                    format!("its classifier has {n} classes, the student's data {k}: soft labels need the same classes"),
                ))
            }
            None => {
                return Err(cfg.error(
                    &format!("teachers[{teacher}]"),
                    "has no classifier, so it gives no soft labels (simclr needs one; cbd distils features)",
                ))
            }
        }
        Ok(Self {
            student,
            teacher: t,
            temperature,
            alpha,
            t_squared,
        })
    }
}

impl Method for Simclr {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        vec![NamedNetwork {
            name: "",
            net: &self.student,
        }]
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let out = own_pass(self.student.model.as_ref(), batch, rng)?.out;
        let s = out.head(Head::Classifier)?.logits()?;
        let t = self
            .teacher
            .logits(batch, self.student.config.input(), rng)?;
        let soft = soft_cross_entropy(&s, &t, self.temperature, self.t_squared)?;
        let mut losses = BTreeMap::new();
        losses.insert("distill.simclr.soft_ce".to_string(), (soft * self.alpha)?);
        if self.alpha < 1.0 {
            for (k, l) in out.losses {
                losses.insert(k, (l.value * (1.0 - self.alpha))?);
            }
        }
        Ok(StepOutput {
            losses,
            metrics: BTreeMap::new(),
        })
    }

    fn frozen_inputs(&self) -> Vec<FrozenInput> {
        vec![self.teacher.frozen_input()]
    }

    fn references(&self) -> Vec<Reference<'_>> {
        self.teacher.reference().into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn soft_cross_entropy_by_hand() {
        let d = Device::Cpu;
        // Teacher logits (ln 3, 0) at τ = 1: p = (3/4, 1/4); student (0, 0): q = (1/2, 1/2).
        let t = Tensor::new(&[[(3f32).ln(), 0.0]], &d).unwrap();
        let s = Tensor::new(&[[0f32, 0.0]], &d).unwrap();
        let got = soft_cross_entropy(&s, &t, 1.0, false)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got as f64 - (2f64).ln()).abs() < 1e-6, "{got}");
        // τ = 0.5: teacher logits / τ = (2 ln 3, 0) → p = (9/10, 1/10); student (ln 2, 0) / τ =
        // (2 ln 2, 0) → q = (4/5, 1/5). −(0.9 ln 0.8 + 0.1 ln 0.2); ×τ² with t_squared.
        let s = Tensor::new(&[[(2f32).ln(), 0.0]], &d).unwrap();
        let want = -(0.9 * (0.8f64).ln() + 0.1 * (0.2f64).ln());
        let got = soft_cross_entropy(&s, &t, 0.5, false)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        let got = soft_cross_entropy(&s, &t, 0.5, true)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got as f64 - 0.25 * want).abs() < 1e-6);
        // Its minimum over the student is the teacher's entropy, at the teacher's logits.
        let h = -(0.75 * (0.75f64).ln() + 0.25 * (0.25f64).ln());
        let got = soft_cross_entropy(&t, &t, 1.0, false)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got as f64 - h).abs() < 1e-6);
    }
}
