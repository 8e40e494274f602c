//! Seeded parameter initialisation. candle's CPU RNG cannot be seeded (`set_seed` fails on CPU),
//! so kdet builds models through a VarBuilder backend that draws every initial value from a
//! ChaCha RNG seeded by the config: same seed, same model, on any machine.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A `VarMap` whose new variables are drawn from a seeded RNG, in creation order.
pub struct SeededVarMap {
    pub varmap: VarMap,
    rng: Arc<Mutex<ChaCha8Rng>>,
}

impl SeededVarMap {
    pub fn new(seed: u64) -> Self {
        Self {
            varmap: VarMap::new(),
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
        }
    }

    /// Another map drawing from the same RNG stream: variables a training method adds beside a
    /// network (Chen et al.'s adaptation layers) are kept apart from the network's own yet
    /// initialised exactly as if created in it, after it.
    pub fn sibling(&self) -> Arc<Self> {
        Arc::new(Self {
            varmap: VarMap::new(),
            rng: self.rng.clone(),
        })
    }

    /// A VarBuilder creating trainable variables in this map.
    pub fn builder(
        self: &std::sync::Arc<Self>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(SharedSeeded(self.clone())), dtype, device.clone())
    }

    fn sample(&self, shape: &Shape, init: Init) -> Vec<f32> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().expect("rng lock");
        let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> f32 {
            // Box–Muller.
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            (mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        };
        match init {
            Init::Const(v) => vec![v as f32; n],
            Init::Randn { mean, stdev } => (0..n).map(|_| normal(&mut rng, mean, stdev)).collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let f = match fan {
                    FanInOut::FanIn | FanInOut::FanOut => fan.for_shape(shape),
                };
                let std = non_linearity.gain() / (f.max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => (0..n).map(|_| normal(&mut rng, 0.0, std)).collect(),
                    NormalOrUniform::Uniform => {
                        let b = 3f64.sqrt() * std;
                        (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
                    }
                }
            }
        }
    }
}

struct SharedSeeded(std::sync::Arc<SeededVarMap>);

impl SimpleBackend for SharedSeeded {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let m = &self.0;
        if let Some(v) = m.varmap.data().lock().expect("varmap lock").get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let data = m.sample(&s, h);
        let var = Var::from_tensor(&Tensor::from_vec(data, s, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        m.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .insert(name.to_string(), var);
        Ok(t)
    }
    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: a seeded VarMap needs a shape")
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn same_seed_same_values() {
        let make = |seed| {
            let m = Arc::new(SeededVarMap::new(seed));
            let vb = m.builder(DType::F32, &Device::Cpu);
            let a = vb
                .get_with_hints((4, 3), "a", candle_nn::init::DEFAULT_KAIMING_NORMAL)
                .unwrap();
            let b = vb
                .get_with_hints(5, "b", Init::Uniform { lo: -1.0, up: 1.0 })
                .unwrap();
            (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.to_vec1::<f32>().unwrap(),
            )
        };
        assert_eq!(make(1), make(1));
        assert_ne!(make(1), make(2));
        let (a, _) = make(3);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 1.0);
    }
}
