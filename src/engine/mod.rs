//! Training machinery: optimizers ([`optim`]), learning-rate schedule ([`schedule`]), atomic
//! checkpoints ([`checkpoint`]), metrics log and plots ([`metrics`]), evaluation over a val
//! split ([`evaluator`]) and the loop itself ([`trainer`]).

pub mod checkpoint;
pub mod evaluator;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;
