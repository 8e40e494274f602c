//! Training methods that distil (each paper's method in one file) and their loss terms, each a
//! function of student and (detached) teacher tensors — the teacher side never receives a
//! gradient.
//!
//! | file | what |
//! |---|---|
//! | [`chen`] | Chen et al. 2017: frozen teachers, terms read through the model contract |
//! | [`teacher`] | a frozen teacher: strict loading, sanity check, eval-mode forward |
//! | [`hint`] | adaptation layer + L2/L1 hint loss (Chen et al. 2017 §3.3, FitNets) |
//! | [`weighted_kd`] | soft cross-entropy with a background weight, softmax (RCN) and sigmoid (RPN) |
//! | [`bounded_reg`] | teacher-bounded L2 regression (Chen et al. 2017 Eq. 4) |
//! | [`kd`] | temperature KD (Hinton et al. 2015) |
//!
//! [`build_method`] is the one place that maps a config onto a training method.

pub mod bounded_reg;
pub mod chen;
pub mod hint;
pub mod kd;
pub mod teacher;
pub mod weighted_kd;

use crate::config::LoadedConfig;
use crate::engine::method::{Method, Plain, RunData};
use crate::error::Result;

/// The training method a config asks for: the student alone without `teachers`, Chen et al.
/// 2017's distillation with them. (`engine::trainer::MethodBuilder`.)
pub fn build_method(cfg: &LoadedConfig, run: &RunData) -> Result<Box<dyn Method>> {
    Ok(if cfg.config.teachers.is_empty() {
        Box::new(Plain::new(cfg, run)?)
    } else {
        Box::new(chen::ChenDistillation::new(cfg, run)?)
    })
}
