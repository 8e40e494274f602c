//! Optimizers with PyTorch's update rules exactly, per-parameter weight decay (so norm and bias
//! parameters can be excluded, as torchvision's `set_weight_decay`), and state that checkpoints
//! can save and load.
//!
//! candle-nn's `SGD` has no momentum, dampening, nesterov or weight decay, and its `AdamW` keeps
//! its moments private (they could not be checkpointed, so `--resume` would not continue
//! exactly) with one weight decay for all parameters; hence both live here, small and tested
//! against hand-computed steps.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::config::solver::{OptimizerKind, SolverConfig};
use crate::error::{Error, Result};

/// A trainable parameter with its name (torchvision state_dict key) and weight decay.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub weight_decay: f64,
}

/// Whether a parameter belongs to a normalisation layer (BatchNorm, GroupNorm, FrozenBN), by its
/// torchvision name: `bn1.weight`, `layer1.0.bn2.bias`, `layer1.0.downsample.1.weight`, `…norm…`,
/// `….gn.weight`.
pub fn is_norm_param(name: &str) -> bool {
    name.split('.')
        .any(|p| p.starts_with("bn") || p.starts_with("gn") || p.contains("norm"))
        || name.contains("downsample.1.")
}

/// Assign each parameter its weight decay: `norm_weight_decay` for normalisation parameters,
/// `bias_weight_decay` for other biases, `weight_decay` for the rest.
pub fn params_with_decay(vars: Vec<(String, Var)>, s: &SolverConfig) -> Vec<Param> {
    vars.into_iter()
        .map(|(name, var)| {
            let weight_decay = if is_norm_param(&name) {
                s.norm_weight_decay.unwrap_or(s.weight_decay)
            } else if name.ends_with(".bias") {
                s.bias_weight_decay.unwrap_or(s.weight_decay)
            } else {
                s.weight_decay
            };
            Param {
                name,
                var,
                weight_decay,
            }
        })
        .collect()
}

/// SGD as `torch.optim.SGD`: `g += wd·p`; `buf = g` on the first step, then
/// `buf = μ·buf + (1 − dampening)·g`; `g = g + μ·buf` (nesterov) or `g = buf`; `p -= lr·g`.
#[derive(Debug)]
pub struct Sgd {
    pub params: Vec<Param>,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(params: Vec<Param>, momentum: f64, dampening: f64, nesterov: bool) -> Self {
        let buffers = vec![None; params.len()];
        Self {
            params,
            momentum,
            dampening,
            nesterov,
            buffers,
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with(grads, lr, true)
    }

    /// `fused`: use the in-place CPU kernels where the parameter is a CPU f32 tensor.
    fn step_with(&mut self, grads: &GradStore, lr: f64, fused: bool) -> Result<()> {
        for i in 0..self.params.len() {
            let p = &self.params[i];
            let Some(g) = grads.get(&p.var) else { continue };
            let mut buf = self.buffers[i].take();
            if fused && p.var.device().is_cpu() && p.var.dtype() == candle_core::DType::F32 {
                self.step_cpu(p, g, &mut buf, lr)?;
            } else {
                self.step_tensor_ops(p, g, &mut buf, lr)?;
            }
            self.buffers[i] = buf;
        }
        Ok(())
    }

    /// The update with candle tensor ops (any device and dtype).
    fn step_tensor_ops(
        &self,
        p: &Param,
        g: &Tensor,
        buf: &mut Option<Tensor>,
        lr: f64,
    ) -> Result<()> {
        let mut d = g.clone();
        if p.weight_decay != 0.0 {
            d = (d + (p.var.as_tensor() * p.weight_decay)?)?;
        }
        if self.momentum != 0.0 {
            let b = match buf.take() {
                None => d.copy()?,
                Some(b) => ((b * self.momentum)? + (&d * (1.0 - self.dampening))?)?,
            };
            d = if self.nesterov {
                (d + (&b * self.momentum)?)?
            } else {
                b.clone()
            };
            *buf = Some(b);
        }
        p.var.set(&(p.var.as_tensor() - (d * lr)?)?)?;
        Ok(())
    }

    /// The same update, fused into two in-place passes over the parameter (and its momentum
    /// buffer) instead of six allocating tensor ops.
    fn step_cpu(&self, p: &Param, g: &Tensor, buf: &mut Option<Tensor>, lr: f64) -> Result<()> {
        let g = g.contiguous()?;
        let wd = p.weight_decay as f32;
        let t = p.var.as_tensor();
        if self.momentum == 0.0 {
            t.inplace_op2(&g, &SgdPlain { lr: lr as f32, wd })?;
            return Ok(());
        }
        // buf ← μ·buf + (1 − dampening)·(g + wd·p); the first step copies g + wd·p.
        let first = buf.is_none();
        let b = match buf.take() {
            Some(b) => b,
            None => g.zeros_like()?,
        };
        let (keep, add) = if first {
            (0.0, 1.0)
        } else {
            (self.momentum as f32, (1.0 - self.dampening) as f32)
        };
        b.inplace_op3(&g, t, &MomentumUpdate { keep, add, wd })?;
        t.inplace_op3(
            &g,
            &b,
            &SgdApply {
                lr: lr as f32,
                wd,
                nesterov: self.nesterov,
                momentum: self.momentum as f32,
            },
        )?;
        *buf = Some(b);
        Ok(())
    }
}

fn contiguous_mut<'a>(
    s: &'a mut candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a mut [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("optimizer: parameter must be contiguous".into()))?;
    match s {
        candle_core::CpuStorage::F32(d) => Ok(&mut d[a..b]),
        _ => candle_core::bail!("optimizer: parameter must be f32"),
    }
}

const CHUNK: usize = 1 << 14;

/// `p ← p − lr·(g + wd·p)`.
struct SgdPlain {
    lr: f32,
    wd: f32,
}

impl candle_core::InplaceOp2 for SgdPlain {
    fn name(&self) -> &'static str {
        "kdet-sgd"
    }
    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let p = contiguous_mut(s1, l1)?;
        let g = crate::ops::cpu_f32(s2, l2, "sgd")?;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(p, g)| {
                for (p, &g) in p.iter_mut().zip(g) {
                    *p -= self.lr * (g + self.wd * *p);
                }
            });
        Ok(())
    }
}

/// `buf ← keep·buf + add·(g + wd·p)`.
struct MomentumUpdate {
    keep: f32,
    add: f32,
    wd: f32,
}

impl candle_core::InplaceOp3 for MomentumUpdate {
    fn name(&self) -> &'static str {
        "kdet-sgd-momentum"
    }
    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let b = contiguous_mut(s1, l1)?;
        let g = crate::ops::cpu_f32(s2, l2, "sgd")?;
        let p = crate::ops::cpu_f32(s3, l3, "sgd")?;
        b.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(p.par_chunks(CHUNK)))
            .for_each(|(b, (g, p))| {
                for ((b, &g), &p) in b.iter_mut().zip(g).zip(p) {
                    *b = self.keep * *b + self.add * (g + self.wd * p);
                }
            });
        Ok(())
    }
}

/// `p ← p − lr·d` with `d = buf`, or `d = (g + wd·p) + μ·buf` (nesterov).
struct SgdApply {
    lr: f32,
    wd: f32,
    nesterov: bool,
    momentum: f32,
}

impl candle_core::InplaceOp3 for SgdApply {
    fn name(&self) -> &'static str {
        "kdet-sgd-apply"
    }
    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let p = contiguous_mut(s1, l1)?;
        let g = crate::ops::cpu_f32(s2, l2, "sgd")?;
        let b = crate::ops::cpu_f32(s3, l3, "sgd")?;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(p, (g, b))| {
                for ((p, &g), &b) in p.iter_mut().zip(g).zip(b) {
                    let d = if self.nesterov {
                        g + self.wd * *p + self.momentum * b
                    } else {
                        b
                    };
                    *p -= self.lr * d;
                }
            });
        Ok(())
    }
}

/// AdamW as `torch.optim.AdamW` (amsgrad off): `p *= 1 − lr·wd`; `m = β1·m + (1−β1)·g`;
/// `v = β2·v + (1−β2)·g²`; `p -= lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + eps)`.
#[derive(Debug)]
pub struct AdamW {
    pub params: Vec<Param>,
    pub betas: (f64, f64),
    pub eps: f64,
    step: u64,
    moments: Vec<Option<(Tensor, Tensor)>>,
}

impl AdamW {
    pub fn new(params: Vec<Param>, betas: (f64, f64), eps: f64) -> Self {
        let moments = vec![None; params.len()];
        Self {
            params,
            betas,
            eps,
            step: 0,
            moments,
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        for (p, mom) in self.params.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(&p.var) else { continue };
            let (m, v) = match mom.take() {
                None => (g.zeros_like()?, g.zeros_like()?),
                Some(mv) => mv,
            };
            let m = ((m * b1)? + (g * (1.0 - b1))?)?;
            let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let theta = (p.var.as_tensor() * (1.0 - lr * p.weight_decay))?;
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let update = ((&m / bc1)? / denom)?;
            p.var.set(&(theta - (update * lr)?)?)?;
            *mom = Some((m, v));
        }
        Ok(())
    }
}

/// LARS's η (google-research/simclr `lars_optimizer.py`, `EETA_DEFAULT`).
pub const LARS_ETA: f64 = 0.001;

/// LARS as SimCLR's `LARSOptimizer` with `classic_momentum=True`: `g ← g + wd·w`;
/// `r = η‖w‖/‖g‖` (1 when either norm is 0); `v ← μ·v + lr·r·g`; `w ← w − v` (nesterov:
/// `w ← w − (μ·v + lr·r·g)`). Parameters that are biases or belong to a normalisation layer are
/// excluded from both the trust ratio and weight decay (SimCLR's `exclude_from_weight_decay =
/// ['batch_normalization', 'bias', …]`, which also excludes them from layer adaptation).
#[derive(Debug)]
pub struct Lars {
    pub params: Vec<Param>,
    pub momentum: f64,
    pub nesterov: bool,
    pub eta: f64,
    /// Whether each parameter is adapted (and decayed).
    adapt: Vec<bool>,
    buffers: Vec<Option<Tensor>>,
}

impl Lars {
    pub fn new(params: Vec<Param>, momentum: f64, nesterov: bool, eta: f64) -> Self {
        let adapt = params
            .iter()
            .map(|p| !(is_norm_param(&p.name) || p.name.ends_with(".bias")))
            .collect();
        let buffers = vec![None; params.len()];
        Self {
            params,
            momentum,
            nesterov,
            eta,
            adapt,
            buffers,
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let norm = |t: &Tensor| -> Result<f64> {
            Ok(t.sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?
                .sqrt())
        };
        for i in 0..self.params.len() {
            let p = &self.params[i];
            let Some(g) = grads.get(&p.var) else { continue };
            let w = p.var.as_tensor();
            let mut g = g.clone();
            let mut scaled = lr;
            if self.adapt[i] {
                if p.weight_decay != 0.0 {
                    g = (g + (w * p.weight_decay)?)?;
                }
                let (wn, gn) = (norm(w)?, norm(&g)?);
                if wn > 0.0 && gn > 0.0 {
                    scaled *= self.eta * wn / gn;
                }
            }
            let step = (&g * scaled)?;
            let v = match self.buffers[i].take() {
                None => step.clone(),
                Some(v) => ((v * self.momentum)? + &step)?,
            };
            let update = if self.nesterov {
                ((&v * self.momentum)? + step)?
            } else {
                v.clone()
            };
            p.var.set(&(w - update)?)?;
            self.buffers[i] = Some(v);
        }
        Ok(())
    }
}

/// The configured optimizer.
#[derive(Debug)]
pub enum Optimizer {
    Sgd(Sgd),
    AdamW(AdamW),
    Lars(Lars),
}

impl Optimizer {
    pub fn new(params: Vec<Param>, s: &SolverConfig) -> Self {
        match s.optimizer {
            OptimizerKind::Sgd => {
                Optimizer::Sgd(Sgd::new(params, s.momentum, s.dampening, s.nesterov))
            }
            OptimizerKind::Adamw => {
                Optimizer::AdamW(AdamW::new(params, (s.betas[0], s.betas[1]), s.eps))
            }
            OptimizerKind::Lars => {
                Optimizer::Lars(Lars::new(params, s.momentum, s.nesterov, LARS_ETA))
            }
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        match self {
            Optimizer::Sgd(o) => o.step(grads, lr),
            Optimizer::AdamW(o) => o.step(grads, lr),
            Optimizer::Lars(o) => o.step(grads, lr),
        }
    }

    pub fn params(&self) -> &[Param] {
        match self {
            Optimizer::Sgd(o) => &o.params,
            Optimizer::AdamW(o) => &o.params,
            Optimizer::Lars(o) => &o.params,
        }
    }

    /// Named state tensors for a checkpoint (`momentum.<param>`, `exp_avg.<param>`, …) and the
    /// step counter.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        match self {
            Optimizer::Sgd(o) => {
                for (p, b) in o.params.iter().zip(&o.buffers) {
                    if let Some(b) = b {
                        out.insert(format!("momentum_buffer.{}", p.name), b.clone());
                    }
                }
                (out, 0)
            }
            Optimizer::AdamW(o) => {
                for (p, mv) in o.params.iter().zip(&o.moments) {
                    if let Some((m, v)) = mv {
                        out.insert(format!("exp_avg.{}", p.name), m.clone());
                        out.insert(format!("exp_avg_sq.{}", p.name), v.clone());
                    }
                }
                (out, o.step)
            }
            Optimizer::Lars(o) => {
                for (p, b) in o.params.iter().zip(&o.buffers) {
                    if let Some(b) = b {
                        out.insert(format!("lars_momentum.{}", p.name), b.clone());
                    }
                }
                (out, 0)
            }
        }
    }

    /// Whether a state entry (as [`state`](Self::state) names it) belongs to one of this
    /// optimizer's parameters.
    pub fn owns_state_key(&self, key: &str) -> bool {
        let Some((_, name)) = key.split_once('.') else {
            return false;
        };
        self.params().iter().any(|p| p.name == name)
    }

    /// Restore what [`state`](Self::state) saved. Unknown entries are an error (a checkpoint of
    /// another model); parameters without an entry start fresh, as in PyTorch.
    pub fn load_state(&mut self, mut state: HashMap<String, Tensor>, step: u64) -> Result<()> {
        // State of the other optimizer: say so, rather than name its first tensor.
        let mine = match self {
            Optimizer::Sgd(_) => "sgd",
            Optimizer::AdamW(_) => "adamw",
            Optimizer::Lars(_) => "lars",
        };
        for (theirs, their_prefix) in [
            ("sgd", "momentum_buffer."),
            ("adamw", "exp_avg"),
            ("lars", "lars_momentum."),
        ] {
            if theirs != mine && state.keys().any(|k| k.starts_with(their_prefix)) {
                return Err(Error::msg(format!(
                    "the optimizer state is {theirs}'s, but solver.optimizer is {mine}: a run keeps \
                     its optimizer (restore solver.optimizer, or start over with --fresh)"
                )));
            }
        }
        let check = |name: &str, t: &Tensor, p: &Param| -> Result<()> {
            if t.dims() != p.var.dims() {
                return Err(Error::msg(format!(
                    "optimizer state {name}: shape {:?}, parameter has {:?}",
                    t.dims(),
                    p.var.dims()
                )));
            }
            Ok(())
        };
        match self {
            Optimizer::Sgd(o) => {
                for (p, b) in o.params.iter().zip(o.buffers.iter_mut()) {
                    let k = format!("momentum_buffer.{}", p.name);
                    if let Some(t) = state.remove(&k) {
                        check(&k, &t, p)?;
                        *b = Some(t);
                    }
                }
            }
            Optimizer::Lars(o) => {
                for (p, b) in o.params.iter().zip(o.buffers.iter_mut()) {
                    let k = format!("lars_momentum.{}", p.name);
                    if let Some(t) = state.remove(&k) {
                        check(&k, &t, p)?;
                        *b = Some(t);
                    }
                }
            }
            Optimizer::AdamW(o) => {
                o.step = step;
                for (p, mv) in o.params.iter().zip(o.moments.iter_mut()) {
                    let (km, kv) = (
                        format!("exp_avg.{}", p.name),
                        format!("exp_avg_sq.{}", p.name),
                    );
                    if let (Some(m), Some(v)) = (state.remove(&km), state.remove(&kv)) {
                        check(&km, &m, p)?;
                        check(&kv, &v, p)?;
                        *mv = Some((m, v));
                    }
                }
            }
        }
        if let Some(k) = state.keys().next() {
            return Err(Error::msg(format!(
                "optimizer state has an entry for no parameter: {k}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod lars_tests {
    use super::*;
    use candle_core::Device;

    fn param(name: &str, v: &[f32], wd: f64) -> Param {
        Param {
            name: name.into(),
            var: Var::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap(),
            weight_decay: wd,
        }
    }

    #[test]
    fn lars_steps_by_hand() {
        // w = (3, 4): ‖w‖ = 5. loss = Σ c·w with c = (0.6, 0.8) → g = c, and with wd 0.5:
        // g' = c + 0.5·w = (2.1, 2.8), ‖g'‖ = 3.5; r = 0.001·5/3.5. A bias gets the plain step.
        let w = param("fc.weight", &[3.0, 4.0], 0.5);
        let b = param("fc.bias", &[1.0, -1.0], 0.5);
        let (wv, bv) = (w.var.clone(), b.var.clone());
        let mut o = Lars::new(vec![w, b], 0.9, false, LARS_ETA);
        let c = Tensor::new(&[0.6f32, 0.8], &Device::Cpu).unwrap();
        let loss = |wv: &Var, bv: &Var| {
            ((wv.as_tensor() * &c).unwrap().sum_all().unwrap()
                + (bv.as_tensor() * &c).unwrap().sum_all().unwrap())
            .unwrap()
        };
        let lr = 2.0;
        o.step(&loss(&wv, &bv).backward().unwrap(), lr).unwrap();
        let r = 0.001 * 5.0 / 3.5;
        let v1 = [lr * r * 2.1, lr * r * 2.8];
        let got = wv.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got[0] as f64 - (3.0 - v1[0])).abs() < 1e-6, "{got:?}");
        assert!((got[1] as f64 - (4.0 - v1[1])).abs() < 1e-6, "{got:?}");
        // The bias: no decay, no ratio: b − lr·c.
        let gb = bv.as_tensor().to_vec1::<f32>().unwrap();
        assert!((gb[0] - (1.0 - 1.2)).abs() < 1e-6 && (gb[1] - (-1.0 - 1.6)).abs() < 1e-6);
        // Second step: v = 0.9·v1 + lr·r₂·g'₂ with the new weights.
        let w1: Vec<f64> = got.iter().map(|&x| x as f64).collect();
        let g2: Vec<f64> = [0.6, 0.8]
            .iter()
            .zip(&w1)
            .map(|(c, w)| c + 0.5 * w)
            .collect();
        let r2 =
            0.001 * (w1[0].powi(2) + w1[1].powi(2)).sqrt() / (g2[0].powi(2) + g2[1].powi(2)).sqrt();
        o.step(&loss(&wv, &bv).backward().unwrap(), lr).unwrap();
        let got2 = wv.as_tensor().to_vec1::<f32>().unwrap();
        for k in 0..2 {
            let want = w1[k] - (0.9 * v1[k] + lr * r2 * g2[k]);
            assert!((got2[k] as f64 - want).abs() < 1e-6, "{got2:?}");
        }
        // Its state round-trips, and another optimizer's state is named as such.
        let st = Optimizer::Lars(o);
        let (state, _) = st.state();
        assert!(state.contains_key("lars_momentum.fc.weight"));
        let mut sgd = Optimizer::Sgd(Sgd::new(
            vec![param("fc.weight", &[0.0, 0.0], 0.0)],
            0.9,
            0.0,
            false,
        ));
        let e = sgd.load_state(state, 0).unwrap_err().to_string();
        assert!(e.contains("the optimizer state is lars's"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(v: &[f32]) -> Var {
        Var::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
    }
    fn vals(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }
    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    /// loss = Σ c·p (gradient c, constant), so steps are easy to compute by hand.
    fn grads(p: &Var, c: &[f32]) -> GradStore {
        let c = Tensor::new(c, &Device::Cpu).unwrap();
        (p.as_tensor() * c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    #[test]
    fn sgd_momentum_weight_decay_matches_hand_steps() {
        let p = var(&[1.0, -2.0]);
        let params = vec![Param {
            name: "w".into(),
            var: p.clone(),
            weight_decay: 0.1,
        }];
        let mut o = Sgd::new(params, 0.9, 0.0, false);
        // Step 1: d = g + 0.1 p = [0.5+0.1, 1-0.2] = [0.6, 0.8]; buf = d; p -= 0.1 d.
        o.step(&grads(&p, &[0.5, 1.0]), 0.1).unwrap();
        close(&vals(&p), &[0.94, -2.08]);
        // Step 2: d = [0.5+0.094, 1-0.208] = [0.594, 0.792]; buf = 0.9[0.6,0.8] + d = [1.134, 1.512].
        o.step(&grads(&p, &[0.5, 1.0]), 0.1).unwrap();
        close(&vals(&p), &[0.94 - 0.1134, -2.08 - 0.1512]);
    }

    #[test]
    fn sgd_nesterov_and_dampening() {
        let p = var(&[1.0]);
        let mut o = Sgd::new(
            vec![Param {
                name: "w".into(),
                var: p.clone(),
                weight_decay: 0.0,
            }],
            0.5,
            0.0,
            true,
        );
        // Step 1: buf = g = 2; d = g + 0.5 buf = 3; p = 1 - 0.1·3 = 0.7.
        o.step(&grads(&p, &[2.0]), 0.1).unwrap();
        close(&vals(&p), &[0.7]);
        // Step 2: buf = 0.5·2 + 2 = 3; d = 2 + 1.5 = 3.5; p = 0.7 - 0.35.
        o.step(&grads(&p, &[2.0]), 0.1).unwrap();
        close(&vals(&p), &[0.35]);
        let q = var(&[0.0]);
        let mut o = Sgd::new(
            vec![Param {
                name: "w".into(),
                var: q.clone(),
                weight_decay: 0.0,
            }],
            0.9,
            0.5,
            false,
        );
        o.step(&grads(&q, &[1.0]), 1.0).unwrap(); // buf = 1 (no dampening on the first step)
        o.step(&grads(&q, &[1.0]), 1.0).unwrap(); // buf = 0.9 + 0.5 = 1.4
        close(&vals(&q), &[-2.4]);
    }

    #[test]
    fn fused_sgd_equals_tensor_ops() {
        for (momentum, dampening, nesterov) in [
            (0.0, 0.0, false),
            (0.9, 0.0, false),
            (0.9, 0.3, false),
            (0.8, 0.0, true),
        ] {
            let run = |fused: bool| {
                let p = var(&[1.0, -2.0, 0.5]);
                let mut o = Sgd::new(
                    vec![Param {
                        name: "w".into(),
                        var: p.clone(),
                        weight_decay: 0.01,
                    }],
                    momentum,
                    dampening,
                    nesterov,
                );
                for k in 0..3 {
                    o.step_with(&grads(&p, &[0.5, -1.0, 2.0 + k as f32]), 0.1, fused)
                        .unwrap();
                }
                vals(&p)
            };
            close(&run(true), &run(false));
        }
    }

    #[test]
    fn adamw_matches_hand_steps() {
        let p = var(&[1.0]);
        let mut o = AdamW::new(
            vec![Param {
                name: "w".into(),
                var: p.clone(),
                weight_decay: 0.01,
            }],
            (0.9, 0.999),
            1e-8,
        );
        // Step 1: p = 1·(1 − 0.1·0.01) = 0.999; m̂ = g, v̂ = g² → update = 1 (sign): p = 0.899.
        o.step(&grads(&p, &[0.5]), 0.1).unwrap();
        close(&vals(&p), &[0.899]);
        // Step 2: m = 0.09·0.5... m = 0.9·0.05 + 0.1·0.5 = 0.095, v = 0.999·0.00025 + 0.001·0.25
        let (m, v): (f64, f64) = (0.095, 0.999 * 0.00025 + 0.001 * 0.25);
        let upd = (m / (1.0 - 0.81)) / ((v / (1.0 - 0.998001)).sqrt() + 1e-8);
        let want = 0.899 * (1.0 - 0.001) - 0.1 * upd;
        o.step(&grads(&p, &[0.5]), 0.1).unwrap();
        close(&vals(&p), &[want as f32]);
    }

    #[test]
    fn state_round_trip_continues_exactly() {
        let s = SolverConfig {
            optimizer: OptimizerKind::Adamw,
            ..Default::default()
        };
        let run = |split: bool| -> Vec<f32> {
            let p = var(&[1.0, 2.0]);
            let mk = |p: &Var| {
                Optimizer::new(
                    vec![Param {
                        name: "w".into(),
                        var: p.clone(),
                        weight_decay: 0.1,
                    }],
                    &s,
                )
            };
            let mut o = mk(&p);
            o.step(&grads(&p, &[0.3, -0.2]), 0.01).unwrap();
            if split {
                let (st, step) = o.state();
                o = mk(&p);
                o.load_state(st, step).unwrap();
            }
            o.step(&grads(&p, &[0.3, -0.2]), 0.01).unwrap();
            vals(&p)
        };
        assert_eq!(run(false), run(true));
        let p = var(&[1.0]);
        let mut o = Optimizer::new(
            vec![Param {
                name: "w".into(),
                var: p,
                weight_decay: 0.0,
            }],
            &SolverConfig::default(),
        );
        let bad = HashMap::from([(
            "momentum_buffer.zzz".to_string(),
            Tensor::new(&[1f32], &Device::Cpu).unwrap(),
        )]);
        assert!(o
            .load_state(bad, 0)
            .unwrap_err()
            .to_string()
            .contains("zzz"));
        // AdamW's state into SGD (solver.optimizer changed): named as such.
        let adam = HashMap::from([(
            "exp_avg.w".to_string(),
            Tensor::new(&[1f32], &Device::Cpu).unwrap(),
        )]);
        let e = o.load_state(adam, 3).unwrap_err().to_string();
        assert!(
            e.starts_with("the optimizer state is adamw's, but solver.optimizer is sgd"),
            "{e}"
        );
    }

    #[test]
    fn decay_groups_by_name() {
        assert!(is_norm_param("backbone.body.bn1.weight"));
        assert!(is_norm_param("backbone.body.layer1.0.downsample.1.bias"));
        assert!(!is_norm_param("backbone.body.layer1.0.conv1.weight"));
        let s = SolverConfig {
            norm_weight_decay: Some(0.0),
            bias_weight_decay: Some(0.5),
            ..Default::default()
        };
        let v = |n: &str| (n.to_string(), var(&[0.0]));
        let ps = params_with_decay(vec![v("a.bn1.weight"), v("fc.bias"), v("fc.weight")], &s);
        assert_eq!(
            ps.iter().map(|p| p.weight_decay).collect::<Vec<_>>(),
            vec![0.0, 0.5, 1e-4]
        );
    }
}
