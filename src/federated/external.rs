//! A federated run driven from outside, one piece at a time — what the Flower app
//! (`tools/flower/`) calls through `kdet fed`: the initial global state, the clients a round
//! samples, one client's local training from given global weights, the evaluation of global
//! weights. Each piece is the simulation's own (same partition, seeds, learning rate, client
//! step and evaluation), so a driver that averages as [`super::client::Sum`] does reproduces
//! `kdet train`'s global weights.
//!
//! A state file is safetensors of the global state by name: the network's tensors (the names
//! of `model.safetensors`) and the client method's own variables (FedX's `fedx.*` heads).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::client::{load_global, snapshot, ClientJob, ClientRound, Weights};
use super::{check_method, evaluate_global, fed, make_clients, sample_clients, Clients};
use crate::config::LoadedConfig;
use crate::engine::evaluator::Evaluation;
use crate::engine::method::{Method, RunData};
use crate::engine::trainer::MethodBuilder;
use crate::error::{Error, Result};
use crate::models::weights::{read_safetensors, write_safetensors};

/// A federated config, its data, clients and the client method, ready to serve requests.
pub struct External {
    cfg: LoadedConfig,
    run: RunData,
    clients: Clients,
    method: Box<dyn Method>,
}

impl External {
    pub fn open(cfg: &LoadedConfig, build: MethodBuilder) -> Result<Self> {
        if cfg.config.federated.is_none() {
            return Err(cfg.error(
                "federated",
                "`kdet fed` needs a config with a `federated` section",
            ));
        }
        let run = RunData::load(cfg)?;
        let clients = make_clients(cfg, &run)?;
        let method = build(cfg, &run)?;
        check_method(cfg, &*method)?;
        Ok(Self {
            cfg: cfg.clone(),
            run,
            clients,
            method,
        })
    }

    /// The global state a run starts from (the config's seeded initialisation).
    pub fn initial(&self) -> Result<Weights> {
        snapshot(&*self.method)
    }

    /// The clients round `round` (0-based) samples, and its learning rate.
    pub fn sample(&self, round: u64) -> (Vec<usize>, f64) {
        let f = fed(&self.cfg);
        let c = &self.cfg.config;
        (
            sample_clients(c.seed, round, f.clients, f.per_round()),
            c.solver.lr * f.lr_decay.powi(round as i32),
        )
    }

    /// Client `client`'s local training in round `round` from `global`: its new state and
    /// report.
    pub fn train_client(
        &mut self,
        round: u64,
        client: usize,
        global: &Weights,
    ) -> Result<(Weights, ClientRound)> {
        let f = fed(&self.cfg);
        if client >= f.clients {
            return Err(Error::msg(format!(
                "--client {client}: the config has {} clients (0 … {})",
                f.clients,
                f.clients - 1
            )));
        }
        let (_, lr) = self.sample(round);
        load_global(&mut *self.method, global)?;
        let job = ClientJob {
            cfg: &self.cfg,
            device: &self.run.device,
            round,
            client,
            lr,
            epochs: f.local_epochs,
        };
        let done = job
            .train(&mut *self.method, &self.clients.records[client])?
            .ok_or_else(|| {
                Error::msg("interrupted: the client's training was stopped by a signal")
            })?;
        Ok((snapshot(&*self.method)?, done))
    }

    /// `global` on the val split, as the simulation evaluates each round.
    pub fn evaluate(&mut self, global: &Weights) -> Result<Evaluation> {
        let v = self.run.val.as_ref().ok_or_else(|| {
            self.cfg
                .error("data", "the config has no val split to evaluate on")
        })?;
        load_global(&mut *self.method, global)?;
        Ok(evaluate_global(&self.cfg, &self.run, &*self.method, v)?.0)
    }
}

/// A state file's tensors.
pub fn read_state(path: &Path) -> Result<Weights> {
    Ok(read_safetensors(path)?.into_iter().collect())
}

/// Write a state file at `path`, which must not exist: kdet overwrites no file it did not
/// write, and these files go where the caller says.
pub fn write_state(path: &Path, w: &Weights) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Err(Error::msg(format!(
            "{} exists: kdet writes a state file only where none is (remove it, or name another)",
            path.display()
        )));
    }
    let map: HashMap<_, _> = w.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
    write_safetensors(&map, path)
}

/// The numbers of a client's round, as JSON.
pub fn round_json(done: &ClientRound) -> serde_json::Value {
    let means: BTreeMap<&String, &f64> = done.means.iter().collect();
    serde_json::json!({"examples": done.examples, "steps": done.steps, "metrics": means})
}
