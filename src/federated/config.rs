//! The `federated` section: how one dataset becomes M clients and how the rounds run. Defaults
//! are those of FedNTD's released configs (github.com/Lee-Gihun/FedNTD `config/fedavg.json`,
//! `config/fedntd.json`, whose FedAvg baseline shares them); docs/methods.md has the sources.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, positive, Check};

/// Federated training of the config's model: `rounds` rounds of local training on a sampled
/// `fraction` of `clients` clients, the server averaging their weights (FedAvg).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FederatedConfig {
    /// M, the clients the training split is divided among. FedNTD: `n_clients` 100.
    pub clients: usize,
    /// R, communication rounds. FedNTD: `n_rounds` 200.
    pub rounds: u64,
    /// Share of the clients sampled each round, `max(⌊M · fraction⌋, 1)` of them without
    /// replacement. FedNTD: `sample_ratio` 0.1.
    pub fraction: f64,
    /// E, passes over its own images each sampled client makes per round. FedNTD:
    /// `local_epochs` 5.
    pub local_epochs: u64,
    /// γ: the clients' learning rate in round r (0-based) is `solver.lr · γ^r`, constant within
    /// the round — FedNTD's `StepLR(gamma=0.99, step_size=1)` stepped once per round on the
    /// server's optimizer, whose lr the clients download.
    pub lr_decay: f64,
    /// How the training images are divided among the clients.
    pub partition: Partition,
    /// Seed of the partition, apart from the run's `seed` (FedNTD fixes the data distribution
    /// with its own seed, `np.random.seed(19940817)`, before seeding the experiment), so that
    /// `--seeds` varies the training on one partition.
    pub partition_seed: u64,
}

impl Default for FederatedConfig {
    fn default() -> Self {
        Self {
            clients: 100,
            rounds: 200,
            fraction: 0.1,
            local_epochs: 5,
            lr_decay: 0.99,
            partition: Partition::Shards {
                classes_per_client: 2,
            },
            partition_seed: 0,
        }
    }
}

/// How the training images are divided among the clients (FedNTD
/// `train_tools/preprocessing/datasetter.py`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Partition {
    /// Latent Dirichlet allocation over labels (`lda_partition`): for each class, its images
    /// (shuffled) are split among the clients in proportions drawn from Dir(α, …, α), a client
    /// already holding N/M images getting no more; the whole draw is repeated until every client
    /// holds at least `min_size` images.
    Dirichlet {
        /// α, the concentration: small α, each client sees few classes. FedNTD reports
        /// α ∈ {0.05, 0.1, 0.3, 0.5}; FedX's default (`--beta`) 0.5.
        alpha: f64,
        /// The draw is repeated until every client has this many images. FedNTD (and MOON,
        /// FedX): 10.
        #[serde(default = "min_size")]
        min_size: usize,
    },
    /// Sharding (`sharding_partition`, McMahan et al. 2017): each class's images are cut into
    /// `s · M / K` shards of equal size (the remainder spread over its first shards), and each
    /// client receives `s` shards drawn at random, so it sees at most `s` classes.
    Shards {
        /// s. FedNTD: `shard_per_user` 2.
        #[serde(default = "classes_per_client")]
        classes_per_client: usize,
    },
    /// Every client an equal random share (`iid_partition`; the remainder is left out, as there).
    Iid,
}

fn min_size() -> usize {
    10
}
fn classes_per_client() -> usize {
    2
}

impl FederatedConfig {
    /// The clients sampled each round.
    pub fn per_round(&self) -> usize {
        ((self.clients as f64 * self.fraction).floor() as usize).clamp(1, self.clients.max(1))
    }

    /// Ranges of the section (those that need the data are checked when it is partitioned).
    pub fn validate(&self) -> Check {
        if self.clients == 0 {
            return Err(invalid("federated.clients", "must be >= 1"));
        }
        if self.rounds == 0 {
            return Err(invalid("federated.rounds", "must be >= 1"));
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(invalid(
                "federated.fraction",
                format!(
                    "{} is not in (0, 1]: the share of clients sampled each round",
                    self.fraction
                ),
            ));
        }
        if self.local_epochs == 0 {
            return Err(invalid("federated.local_epochs", "must be >= 1"));
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return Err(invalid("federated.lr_decay", "must be in (0, 1]"));
        }
        match &self.partition {
            Partition::Dirichlet { alpha, .. } => {
                positive("federated.partition.alpha", *alpha).map_err(|_| {
                    invalid(
                        "federated.partition.alpha",
                        format!("{alpha} is not > 0: the Dirichlet concentration must be positive"),
                    )
                })?;
            }
            Partition::Shards { classes_per_client } => {
                if *classes_per_client == 0 {
                    return Err(invalid(
                        "federated.partition.classes_per_client",
                        "must be >= 1",
                    ));
                }
            }
            Partition::Iid => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_fedntds_and_ranges_are_checked() {
        let f = FederatedConfig::default();
        assert_eq!((f.clients, f.rounds, f.local_epochs), (100, 200, 5));
        assert_eq!(f.per_round(), 10);
        f.validate().unwrap();
        let bad = |g: fn(&mut FederatedConfig)| {
            let mut c = FederatedConfig::default();
            g(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(bad(|c| c.clients = 0).path, "federated.clients");
        assert_eq!(bad(|c| c.fraction = 0.0).path, "federated.fraction");
        assert_eq!(bad(|c| c.fraction = 1.5).path, "federated.fraction");
        assert_eq!(bad(|c| c.fraction = f64::NAN).path, "federated.fraction");
        let e = bad(|c| {
            c.partition = Partition::Dirichlet {
                alpha: 0.0,
                min_size: 10,
            }
        });
        assert_eq!(e.path, "federated.partition.alpha");
        assert!(e.msg.contains("not > 0"), "{}", e.msg);
        let e = bad(|c| {
            c.partition = Partition::Dirichlet {
                alpha: -1.0,
                min_size: 10,
            }
        });
        assert_eq!(e.path, "federated.partition.alpha");
        let e = bad(|c| {
            c.partition = Partition::Shards {
                classes_per_client: 0,
            }
        });
        assert_eq!(e.path, "federated.partition.classes_per_client");
        // A tiny fraction still samples one client.
        let c = FederatedConfig {
            clients: 3,
            fraction: 0.1,
            ..Default::default()
        };
        assert_eq!(c.per_round(), 1);
    }
}
