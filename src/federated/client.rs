//! One client's round, and the server's average. A client's local training is the loop's own
//! step (`engine::trainer::optimize`: the method's losses, the NaN guard, backward, clipping,
//! the optimizers) over the client's images for E epochs, starting from the round's global
//! weights with fresh optimizer state (FedNTD's `BaseClientTrainer.reset` makes a new SGD for
//! every client; so does FedX's `train_net_fedx`). The server keeps a running weighted sum, so
//! memory holds one client's method, the global weights and the sum, whatever M is.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand::SeedableRng;

use crate::config::LoadedConfig;
use crate::data::coco::ImageRecord;
use crate::data::loader::{DetectionDataset, Loader, Sampler};
use crate::engine::method::Method;
use crate::engine::trainer::{optimize, optimizers, state_vars};
use crate::error::{Error, Result};
use crate::models::build::Network;
use crate::models::contract::StepRng;
use crate::models::weights::{load_tensors, named_tensors};

/// Named tensors of a client's state: the method's networks' and its own variables'.
pub type Weights = BTreeMap<String, Tensor>;

/// SplitMix64 finaliser over a list of words: the seed of a client's data order, augmentation
/// and steps in a round, distinct for every (seed, round, client, step).
pub fn seed_of(words: &[u64]) -> u64 {
    let mut z: u64 = 0x6A09_E667_F3BC_C909;
    for w in words {
        z ^= w.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(z << 6);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

/// The state of `method` (its networks and own variables), copied: training changes variables
/// in place, and the copy must not follow.
pub fn snapshot(method: &dyn Method) -> Result<Weights> {
    named_tensors(&state_vars(method))
        .into_iter()
        .map(|(k, t)| Ok((k, t.copy()?)))
        .collect()
}

/// Put `w` into `method` (every variable, none left over) and hand it to the method as the
/// round's global model (FedNTD's and FedX's frozen copy).
pub fn load_global(method: &mut dyn Method, w: &Weights) -> Result<()> {
    let map: HashMap<String, Tensor> = w.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
    let r = load_tensors(&state_vars(method), &map)?;
    if !r.is_clean() {
        return Err(Error::msg(format!(
            "the global weights do not fit the client's model: {}",
            r.describe()
        )));
    }
    method.set_global(w)
}

/// The frozen copy of the round's global model a client method learns from (FedNTD, FedX): a
/// network of the config's model, the config's initialisation until [`load_frozen`].
pub fn frozen_network(cfg: &LoadedConfig, run: &crate::engine::method::RunData) -> Result<Network> {
    Network::new(
        &cfg.config.model,
        run.num_classes(),
        cfg.config.seed,
        &run.device,
    )
}

/// Load the global state `w` into `net`, a frozen copy of the global network: each of its
/// variables from `w` (the entries of a method's own variables, which the network lacks, left
/// out); a variable `w` lacks is an error naming `method`.
pub fn load_frozen(net: &Network, w: &Weights, method: &str) -> Result<()> {
    let names: std::collections::HashSet<String> = net
        .vars
        .varmap
        .data()
        .lock()
        .expect("varmap lock")
        .keys()
        .cloned()
        .collect();
    let map: HashMap<String, Tensor> = w
        .iter()
        .filter(|(k, _)| names.contains(*k))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    let r = load_tensors(&net.vars.varmap, &map)?;
    if !r.is_clean() {
        return Err(Error::msg(format!(
            "{method}: the global weights do not fit the model: {}",
            r.describe()
        )));
    }
    Ok(())
}

/// What a client's round reports.
pub struct ClientRound {
    /// Its training images, its weight in the average.
    pub examples: usize,
    pub steps: u64,
    /// Mean of each loss term (and `loss`, their sum) over its steps.
    pub means: BTreeMap<String, f64>,
}

/// Where a client trains: the run's settings and the round.
pub struct ClientJob<'a> {
    pub cfg: &'a LoadedConfig,
    pub device: &'a candle_core::Device,
    pub round: u64,
    pub client: usize,
    pub lr: f64,
    pub epochs: u64,
}

impl ClientJob<'_> {
    /// The client's loader: its images, the run's augmentation and the method's views, its
    /// own seed (run seed, round, client).
    fn loader(&self, records: &[ImageRecord], method: &dyn Method) -> Loader {
        let c = &self.cfg.config;
        let net = &method.networks()[method.eval_network()];
        Loader {
            sampler: Sampler::new(c.data.sampler, records, true),
            dataset: Arc::new(DetectionDataset {
                records: records.to_vec(),
                input: net.net.config.input().clone(),
                flip_prob: c.data.flip_prob,
                color_jitter: c.data.color_jitter,
                views: method.two_views(),
            }),
            batch_size: c.solver.batch_size,
            workers: c.data.workers,
            prefetch: c.data.prefetch,
            seed: seed_of(&[c.seed, self.round, self.client as u64]),
            device: self.device.clone(),
        }
    }

    /// Train `method` (holding the global weights) on `records` for the job's epochs. Stops
    /// early with `Ok(None)` when a signal asks (after the step in progress).
    pub fn train(
        &self,
        method: &mut dyn Method,
        records: &[ImageRecord],
    ) -> Result<Option<ClientRound>> {
        let c = &self.cfg.config;
        let mut optimizers = optimizers(method, &c.solver);
        let loader = self.loader(records, method);
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut steps = 0u64;
        for epoch in 0..self.epochs {
            for batch in loader.epoch(epoch) {
                let batch = batch?;
                let seed = seed_of(&[c.seed, self.round, self.client as u64, steps, 1]);
                let mut rng = StepRng::seed_from_u64(seed);
                let o = optimize(
                    method,
                    &mut optimizers,
                    &batch,
                    &mut rng,
                    self.lr,
                    c.solver.grad_clip,
                    (steps + 1, None),
                )
                .map_err(|e| {
                    Error::msg(format!(
                        "round {}, client {}: {e}",
                        self.round + 1,
                        self.client
                    ))
                })?;
                let total: f64 = o.terms.values().sum();
                *sums.entry("loss".into()).or_default() += total;
                for (k, v) in o.terms.iter().chain(&o.metrics) {
                    *sums.entry(k.clone()).or_default() += v;
                }
                steps += 1;
                crate::engine::interrupt::fault_hooks();
                if crate::engine::interrupt::requested().is_some() {
                    return Ok(None);
                }
            }
        }
        crate::engine::trainer::check_finite_params(&optimizers, steps, None)?;
        let n = steps.max(1) as f64;
        Ok(Some(ClientRound {
            examples: records.len(),
            steps,
            means: sums.into_iter().map(|(k, v)| (k, v / n)).collect(),
        }))
    }
}

/// FedAvg's weighted sum `Σ_k n_k · w_k` over the clients so far, and `Σ_k n_k`; the average
/// is `sum / examples`. Flower's `aggregate` computes exactly this (each layer times its
/// client's example count, summed in client order, divided by the total), in f32.
#[derive(Default)]
pub struct Sum {
    pub sum: Weights,
    pub examples: usize,
}

impl Sum {
    /// Add a client's weights `w`, trained on `n` images.
    pub fn add(&mut self, w: &Weights, n: usize) -> Result<()> {
        for (k, t) in w {
            if t.dtype() != DType::F32 {
                return Err(Error::msg(format!(
                    "cannot average `{k}`: its dtype is {:?}, not f32",
                    t.dtype()
                )));
            }
            let scaled = (t * n as f64)?;
            let next = match self.sum.get(k) {
                Some(s) => (s + scaled)?,
                None => scaled,
            };
            self.sum.insert(k.clone(), next);
        }
        self.examples += n;
        Ok(())
    }

    /// The weighted average.
    pub fn average(&self) -> Result<Weights> {
        if self.examples == 0 {
            return Err(Error::msg(
                "no client trained in this round: nothing to average",
            ));
        }
        self.sum
            .iter()
            .map(|(k, t)| Ok((k.clone(), (t / self.examples as f64)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fedavg_weights_by_client_size() {
        let d = Device::Cpu;
        let w = |a: f32, b: f32| -> Weights {
            BTreeMap::from([
                ("x".to_string(), Tensor::new(&[a, b], &d).unwrap()),
                ("y".to_string(), Tensor::new(&[[a]], &d).unwrap()),
            ])
        };
        let mut s = Sum::default();
        s.add(&w(1.0, 2.0), 10).unwrap();
        s.add(&w(4.0, -1.0), 30).unwrap();
        s.add(&w(0.0, 0.5), 60).unwrap();
        let avg = s.average().unwrap();
        // By hand: (10·1 + 30·4 + 60·0) / 100 = 1.3; (20 − 30 + 30) / 100 = 0.2.
        let x = avg["x"].to_vec1::<f32>().unwrap();
        assert!(
            (x[0] - 1.3).abs() < 1e-6 && (x[1] - 0.2).abs() < 1e-6,
            "{x:?}"
        );
        assert_eq!(avg["y"].dims(), [1, 1]);
        assert_eq!(s.examples, 100);
        assert!(Sum::default().average().is_err());
        let mut bad = Sum::default();
        let i = BTreeMap::from([("n".to_string(), Tensor::new(&[1i64], &d).unwrap())]);
        assert!(bad.add(&i, 1).unwrap_err().to_string().contains("`n`"));
    }

    #[test]
    fn client_seeds_differ() {
        let a = seed_of(&[0, 1, 2]);
        assert_ne!(a, seed_of(&[0, 2, 1]));
        assert_ne!(a, seed_of(&[1, 1, 2]));
        assert_eq!(a, seed_of(&[0, 1, 2]));
    }
}
