//! Learning rate at each iteration: linear warmup (torchvision references' `LinearLR`, factor
//! from `warmup_factor` to 1 over `warmup_iters`) times the schedule (step decay at milestones,
//! cosine, or constant).

use crate::config::solver::{Schedule, SolverConfig};
use crate::error::{invalid, Invalid};

/// The schedule in force: the configured one, or the references' step schedule scaled to the
/// run — ×0.1 at 16/26 and 22/26 of it (torchvision's `references/detection` recipe: epochs 16
/// and 22 of 26).
pub fn resolved(s: &SolverConfig) -> Schedule {
    match &s.schedule {
        Some(sch) => sch.clone(),
        None => {
            let (len, _) = s.length();
            // Rounded len·num/26 in u128: a long run must not overflow.
            let at = |num: u64| ((len as u128 * num as u128 * 2 + 26) / 52) as u64;
            Schedule::Step {
                milestones: vec![at(16), at(22)],
                gamma: 0.1,
            }
        }
    }
}

/// The run length in iterations: `solver.iterations`, or `solver.epochs` × `per_epoch`. An
/// overflowing product is an error naming the key (it used to wrap, even to 0).
pub fn run_iterations(s: &SolverConfig, per_epoch: u64) -> Result<u64, Invalid> {
    match s.length() {
        (len, false) => Ok(len),
        (len, true) => len.checked_mul(per_epoch).ok_or_else(|| {
            invalid(
                "solver.epochs",
                format!(
                    "{len} epochs of {per_epoch} iterations is more iterations than can be \
                     counted ({}); give fewer epochs",
                    u64::MAX
                ),
            )
        }),
    }
}

/// The learning rate of a run, precomputed from its solver config.
#[derive(Debug, Clone)]
pub struct LrSchedule {
    base: f64,
    warmup_iters: u64,
    warmup_factor: f64,
    schedule: Schedule,
    /// Milestones converted to iterations.
    milestones: Vec<u64>,
    total: u64,
}

impl LrSchedule {
    /// `iters_per_epoch` converts epoch milestones; `total` is the run length in iterations.
    pub fn new(s: &SolverConfig, iters_per_epoch: u64, total: u64) -> Self {
        let (_, in_epochs) = s.length();
        let schedule = resolved(s);
        let milestones = match &schedule {
            Schedule::Step { milestones, .. } => milestones
                .iter()
                // Milestones are within the run, whose length in iterations was checked.
                .map(|&m| {
                    if in_epochs {
                        m.saturating_mul(iters_per_epoch)
                    } else {
                        m
                    }
                })
                .collect(),
            _ => vec![],
        };
        Self {
            base: s.lr,
            warmup_iters: s.warmup_iters.min(total.saturating_sub(1)),
            warmup_factor: s.warmup_factor,
            schedule,
            milestones,
            total,
        }
    }

    /// Learning rate for iteration `it` (0-based).
    pub fn lr(&self, it: u64) -> f64 {
        let warm = if it < self.warmup_iters {
            self.warmup_factor + (1.0 - self.warmup_factor) * it as f64 / self.warmup_iters as f64
        } else {
            1.0
        };
        let sched = match &self.schedule {
            Schedule::Step { gamma, .. } => {
                gamma.powi(self.milestones.iter().filter(|&&m| it >= m).count() as i32)
            }
            Schedule::Cosine { min_lr } => {
                let t = it as f64 / self.total.max(1) as f64;
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                return warm * (min_lr + (self.base - min_lr) * cos);
            }
            Schedule::Constant => 1.0,
        };
        self.base * warm * sched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_follows_references() {
        let c = crate::config::Config::default();
        assert_eq!(
            resolved(&c.solver),
            Schedule::Step {
                milestones: vec![16, 22],
                gamma: 0.1
            }
        );
        let s = SolverConfig {
            iterations: Some(260),
            ..Default::default()
        };
        assert_eq!(
            resolved(&s),
            Schedule::Step {
                milestones: vec![160, 220],
                gamma: 0.1
            }
        );
    }

    #[test]
    fn huge_run_lengths_are_refused_not_wrapped() {
        let s = SolverConfig {
            epochs: Some(1 << 61),
            ..Default::default()
        };
        let e = run_iterations(&s, 8).unwrap_err();
        assert_eq!(e.path, "solver.epochs");
        assert!(
            e.msg
                .starts_with("2305843009213693952 epochs of 8 iterations"),
            "{}",
            e.msg
        );
        assert_eq!(run_iterations(&s, 4).unwrap(), 1 << 63);
        let m = SolverConfig {
            epochs: Some(u64::MAX),
            ..Default::default()
        };
        assert!(run_iterations(&m, 2).is_err());
        // The default milestones of such a run are computed without overflow.
        let Schedule::Step { milestones, .. } = resolved(&m) else {
            panic!("step")
        };
        assert_eq!(milestones, [11351842506898185609, 15608783446985005213]);
    }

    #[test]
    fn warmup_then_steps() {
        let s = SolverConfig {
            lr: 0.1,
            warmup_iters: 10,
            warmup_factor: 0.001,
            iterations: Some(100),
            schedule: Some(Schedule::Step {
                milestones: vec![50, 80],
                gamma: 0.1,
            }),
            ..Default::default()
        };
        let l = LrSchedule::new(&s, 7, 100);
        assert!((l.lr(0) - 0.0001).abs() < 1e-12);
        assert!((l.lr(5) - 0.1 * (0.001 + 0.999 * 0.5)).abs() < 1e-12);
        assert_eq!(l.lr(10), 0.1);
        assert!((l.lr(50) - 0.01).abs() < 1e-12);
        assert!((l.lr(99) - 0.001).abs() < 1e-12);
        // Epoch milestones convert with the epoch length.
        let e = SolverConfig {
            epochs: Some(4),
            warmup_iters: 0,
            schedule: Some(Schedule::Step {
                milestones: vec![3],
                gamma: 0.5,
            }),
            ..Default::default()
        };
        let l = LrSchedule::new(&e, 10, 40);
        assert_eq!(l.lr(29), 0.02);
        assert_eq!(l.lr(30), 0.01);
    }

    #[test]
    fn cosine_ends_at_min() {
        let s = SolverConfig {
            lr: 1.0,
            warmup_iters: 0,
            iterations: Some(100),
            schedule: Some(Schedule::Cosine { min_lr: 0.1 }),
            ..Default::default()
        };
        let l = LrSchedule::new(&s, 1, 100);
        assert_eq!(l.lr(0), 1.0);
        assert!((l.lr(50) - 0.55).abs() < 1e-9);
        assert!(l.lr(99) > 0.1 && l.lr(99) < 0.11);
    }
}
