//! Distillation loss terms (Chen et al. 2017 for detection, Hinton et al. 2015 for
//! classification), each a function of student and (detached) teacher tensors. The teacher side
//! never receives a gradient: every term detaches it.
//!
//! | file | term |
//! |---|---|
//! | [`weighted_kd`] | soft cross-entropy with a background weight, for RCN (softmax) and RPN (sigmoid) |
//! | [`bounded_reg`] | teacher-bounded L2 regression |
//! | [`hint`] | adaptation layer + L2/L1 hint loss |
//! | [`kd`] | temperature KD |

pub mod bounded_reg;
pub mod hint;
pub mod kd;
pub mod weighted_kd;
