//! The `solver` section: optimizer, learning-rate schedule and run length. "references" means
//! torchvision's `references/detection/train.py` recipe, whose values are the defaults. How the
//! schedule is resolved against the run (milestones scaled when none are given) is the engine's
//! business (`engine::schedule`).

use serde::{Deserialize, Serialize};

use crate::error::{invalid, nonneg, positive, unit, Check};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// references: SGD with momentum.
    #[default]
    Sgd,
    /// candle-nn's AdamW (decoupled weight decay).
    Adamw,
    /// LARS (You et al. 2017) as SimCLR uses it (google-research/simclr `lars_optimizer.py`,
    /// classic momentum, η = 0.001): each weight's step scaled by its trust ratio
    /// `η‖w‖ / ‖g + wd·w‖`; biases and normalisation parameters get neither the ratio nor
    /// weight decay. SimCLR: lr 0.3 × batch / 256, momentum 0.9, weight decay 1e-6.
    Lars,
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Multiply by `gamma` at each milestone (in iterations when `solver.iterations` is set,
    /// else in epochs). references: milestones [16, 22] epochs, gamma 0.1.
    Step {
        milestones: Vec<u64>,
        #[serde(default = "step_gamma")]
        gamma: f64,
    },
    /// Cosine decay from lr to `min_lr` over the run.
    Cosine {
        #[serde(default)]
        min_lr: f64,
    },
    /// Constant learning rate.
    Constant,
}

/// references: `--lr-gamma 0.1`.
fn step_gamma() -> f64 {
    0.1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SolverConfig {
    pub optimizer: OptimizerKind,
    /// references: 0.02 for 16 images per step (8 GPUs × 2).
    pub lr: f64,
    /// references: 0.9.
    pub momentum: f64,
    /// PyTorch SGD default: 0.
    pub dampening: f64,
    /// PyTorch SGD default: false.
    pub nesterov: bool,
    /// references: 1e-4.
    pub weight_decay: f64,
    /// Weight decay of normalisation parameters; null = `weight_decay`.
    /// references: `--norm-weight-decay` (None).
    pub norm_weight_decay: Option<f64>,
    /// Weight decay of biases; null = `weight_decay` (torchvision's `set_weight_decay`).
    pub bias_weight_decay: Option<f64>,
    /// AdamW betas. PyTorch default: (0.9, 0.999).
    pub betas: [f64; 2],
    /// AdamW eps. PyTorch default: 1e-8.
    pub eps: f64,
    /// Linear warmup length in iterations. references: min(1000, len(loader) - 1).
    pub warmup_iters: u64,
    /// Start factor of the warmup. references: 1/1000.
    pub warmup_factor: f64,
    /// null = the references' step schedule scaled to the run: ×0.1 at 16/26 and 22/26 of it
    /// (epochs 16 and 22 of 26).
    pub schedule: Option<Schedule>,
    /// Run length in iterations (exclusive with `epochs`).
    pub iterations: Option<u64>,
    /// Run length in epochs. references: 26.
    pub epochs: Option<u64>,
    /// Images per step. references: 2 per GPU.
    pub batch_size: usize,
    /// Max global gradient L2 norm; null = no clipping (references).
    pub grad_clip: Option<f64>,
    /// Evaluate on val every N iterations (0 = only at the end).
    pub eval_every: u64,
    /// Write a checkpoint every N iterations (0 = only at the end and on Ctrl-C).
    /// Default 500: a `kill -9` loses at most that many steps.
    pub checkpoint_every: u64,
    /// Also write one when this many minutes have passed since the last (0 = never), so a
    /// slow run (a large model on a CPU) loses minutes, not hours. Default 10.
    pub checkpoint_minutes: f64,
    /// Log metrics every N iterations. references: print_freq 20.
    pub log_every: u64,
}

impl Default for SolverConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::Sgd,
            lr: 0.02,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 1e-4,
            norm_weight_decay: None,
            bias_weight_decay: None,
            betas: [0.9, 0.999],
            eps: 1e-8,
            warmup_iters: 1000,
            warmup_factor: 1e-3,
            schedule: None,
            iterations: None,
            epochs: None,
            batch_size: 2,
            grad_clip: None,
            eval_every: 0,
            checkpoint_every: 500,
            checkpoint_minutes: 10.0,
            log_every: 20,
        }
    }
}

/// references: 26 epochs.
const DEFAULT_EPOCHS: u64 = 26;

impl SolverConfig {
    /// Run length as (number, unit is epochs). Validation guarantees exactly one is set or
    /// neither (then the references' 26 epochs).
    pub fn length(&self) -> (u64, bool) {
        match (self.iterations, self.epochs) {
            (Some(i), _) => (i, false),
            (None, Some(e)) => (e, true),
            (None, None) => (DEFAULT_EPOCHS, true),
        }
    }

    /// Ranges and cross-field rules of the `solver` section.
    pub fn validate(&self) -> Check {
        let s = self;
        let err = |p: &str, m: &str| Err(invalid(p, m));
        positive("solver.lr", s.lr)?;
        if !(0.0..1.0).contains(&s.momentum) {
            return err("solver.momentum", "must be in [0, 1)");
        }
        unit("solver.dampening", s.dampening)?;
        if s.nesterov && (s.momentum <= 0.0 || s.dampening != 0.0) {
            return err(
                "solver.nesterov",
                "needs momentum > 0 and dampening = 0 (as PyTorch)",
            );
        }
        nonneg("solver.weight_decay", s.weight_decay)?;
        if let Some(w) = s.norm_weight_decay {
            nonneg("solver.norm_weight_decay", w)?;
        }
        if let Some(w) = s.bias_weight_decay {
            nonneg("solver.bias_weight_decay", w)?;
        }
        for (i, b) in s.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return err(&format!("solver.betas[{i}]"), "must be in [0, 1)");
            }
        }
        positive("solver.eps", s.eps)?;
        if !(s.warmup_factor > 0.0 && s.warmup_factor <= 1.0) {
            return err("solver.warmup_factor", "must be in (0, 1]");
        }
        if s.iterations.is_some() && s.epochs.is_some() {
            return err(
                "solver.epochs",
                "give either `iterations` or `epochs`, not both",
            );
        }
        let (len, _) = s.length();
        if len == 0 {
            let p = if s.iterations.is_some() {
                "solver.iterations"
            } else {
                "solver.epochs"
            };
            return err(p, "must be >= 1");
        }
        match s.schedule.as_ref().unwrap_or(&Schedule::Constant) {
            Schedule::Step { milestones, gamma } => {
                for (i, w) in milestones.windows(2).enumerate() {
                    if w[1] <= w[0] {
                        return err(
                            &format!("solver.schedule.milestones[{}]", i + 1),
                            "milestones must increase",
                        );
                    }
                }
                if let Some((i, m)) = milestones.iter().enumerate().find(|(_, m)| **m > len) {
                    return err(
                        &format!("solver.schedule.milestones[{i}]"),
                        &format!("{m} is beyond the run length {len}"),
                    );
                }
                if !(*gamma > 0.0 && *gamma <= 1.0) {
                    return err("solver.schedule.gamma", "must be in (0, 1]");
                }
            }
            Schedule::Cosine { min_lr } => {
                if !(*min_lr >= 0.0 && *min_lr < s.lr) {
                    return err("solver.schedule.min_lr", "must be in [0, lr)");
                }
            }
            Schedule::Constant => {}
        }
        if s.batch_size == 0 {
            return err("solver.batch_size", "must be >= 1");
        }
        if let Some(g) = s.grad_clip {
            positive("solver.grad_clip", g)?;
        }
        if s.log_every == 0 {
            return err("solver.log_every", "must be >= 1");
        }
        nonneg("solver.checkpoint_minutes", s.checkpoint_minutes)?;
        Ok(())
    }
}
