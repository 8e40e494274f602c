//! Training machinery: the training-method seam and plain training ([`method`]), the loop
//! ([`trainer`]), optimizers ([`optim`]), learning-rate schedule ([`schedule`]), atomic
//! checkpoints ([`checkpoint`]), metrics log and plots ([`metrics`]), the run folder's files and
//! what `--resume` may change ([`rundir`], [`resume`]), several training seeds ([`seeds`]), evaluation over a val split
//! ([`evaluator`]) and online distillation on a video stream ([`online`]).

pub mod checkpoint;
pub mod evaluator;
pub mod interrupt;
pub mod method;
pub mod metrics;
pub mod online;
mod online_state;
pub mod optim;
pub mod resume;
pub mod rundir;
pub mod schedule;
pub mod seeds;
pub mod trainer;

/// Train `cfg`: federated rounds when it has a `federated` section (`crate::federated`, which
/// drives the loop's step per client), else the loop ([`trainer::train`]).
pub fn train(
    cfg: &crate::config::LoadedConfig,
    build: trainer::MethodBuilder,
    opts: trainer::TrainOptions,
) -> crate::Result<trainer::TrainSummary> {
    if cfg.config.federated.is_some() {
        crate::federated::train(cfg, build, opts)
    } else {
        trainer::train(cfg, build, opts)
    }
}
