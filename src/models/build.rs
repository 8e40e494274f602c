//! From a config's model section to a model: trainable (variables drawn from the run's seed),
//! or loaded from a weights file. The family is picked by [`ModelConfig`]'s table; nothing here
//! names one.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

use super::config::ModelConfig;
use super::contract::Model;
use super::init::SeededVarMap;
use super::weights::{in_file, load_tensors, locate, named_tensors, read_state_dict, KeyRules};
use crate::error::Result;

/// The initialisation seed of a method's `index`-th network (0-based) in a run seeded `seed`:
/// the first network draws from the run's seed (it starts as the same config trained alone
/// would), every other from a seed of its own, so that two networks of the same architecture
/// never start identical by accident. SplitMix64's finaliser spreads nearby seeds apart.
pub fn network_seed(seed: u64, index: usize) -> u64 {
    if index == 0 {
        return seed;
    }
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A model with its variables, as a training method owns it.
pub struct Network {
    pub model: Box<dyn Model>,
    pub vars: Arc<SeededVarMap>,
    pub config: ModelConfig,
    /// Where its variables live.
    pub device: Device,
}

impl Network {
    /// A model for `num_classes` foreground classes with fresh variables drawn from `seed`.
    pub fn new(cfg: &ModelConfig, num_classes: usize, seed: u64, device: &Device) -> Result<Self> {
        let vars = Arc::new(SeededVarMap::new(seed));
        let model = cfg
            .family()
            .build(vars.builder(DType::F32, device), num_classes)?;
        Ok(Self {
            model,
            vars,
            config: cfg.clone(),
            device: device.clone(),
        })
    }

    /// A model whose weights come from `weights` (safetensors or PyTorch, local or `hf://`),
    /// loaded strictly: every tensor present with its shape, nothing left over.
    pub fn load(
        cfg: &ModelConfig,
        num_classes: usize,
        weights: &Path,
        device: &Device,
    ) -> Result<Self> {
        let n = Self::new(cfg, num_classes, 0, device)?;
        let tensors = read_state_dict(&locate(weights)?, &KeyRules::default())?;
        let r = load_tensors(&n.vars.varmap, &tensors).map_err(|e| in_file(weights, e))?;
        if !r.is_clean() {
            // The sidecar says why when it records another architecture; key rules are no
            // answer here (eval, infer and export load weights as they are).
            let why = super::sidecar::mismatch_hint(weights, cfg)
                .unwrap_or_else(|| "were they trained with this config?".into());
            return Err(crate::error::Error::msg(format!(
                "{}: weights do not fit the config's model: {} ({why})",
                weights.display(),
                r.describe()
            )));
        }
        Ok(n)
    }

    /// The model's parameters and buffers by name (sorted): what `model.safetensors` holds.
    pub fn named_tensors(&self) -> Vec<(String, candle_core::Tensor)> {
        named_tensors(&self.vars.varmap)
    }
}

#[cfg(test)]
mod tests {
    use super::network_seed;

    #[test]
    fn every_network_of_a_run_has_its_own_seed() {
        for seed in [0u64, 1, 42, u64::MAX] {
            assert_eq!(network_seed(seed, 0), seed);
            let seeds: Vec<u64> = (0..4).map(|i| network_seed(seed, i)).collect();
            let mut unique = seeds.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 4, "{seeds:?}");
        }
        // A run seeded 1 does not give network 2 the seed another run's network 1 has.
        assert_ne!(network_seed(0, 1), 1);
    }
}
