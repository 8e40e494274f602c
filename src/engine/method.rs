//! The training-method seam: the loop ([`super::trainer`]) drives a [`Method`], which owns the
//! networks it trains (and any variables of its own) and turns one batch into the step's named
//! losses — detectron2's `TrainerBase.run_step` with the loop's hooks around it. The loop does
//! the rest: data order, learning-rate schedule, backward, clipping, optimizer steps, the NaN
//! guard, checkpoints and `--resume`, metrics, evaluation and progress; it never names a model
//! family, a teacher or a loss term.
//!
//! [`Plain`] (a network trained alone) lives here; the distillation methods live in
//! `src/distill/`, one file each, and `distill::build_method` picks one from the config.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use super::checkpoint::FrozenInput;
use crate::config::DataSources;
use crate::config::LoadedConfig;
use crate::data::coco::{load_split, ImageRecord, Purpose};
use crate::data::folder::{load_folder, load_unlabeled};
use crate::data::loader::Batch;
use crate::data::transforms::InputConfig;
use crate::data::Split;
use crate::error::Result;
use crate::models::build::Network;
use crate::models::contract::{Assignment, Forward, Loss, Model, StepRng, TrainOutput, Want};

/// What a run trains on, loaded once before the method is built (a method checks its teachers
/// on the validation split, and sizes its networks by the classes).
pub struct RunData {
    pub device: Device,
    pub train: Split,
    pub val: Option<Split>,
    /// Images without labels (classification data's `unlabeled`), ids after the training
    /// split's; trained on when `data.use_unlabeled`.
    pub unlabeled: Vec<ImageRecord>,
}

/// A val split whose AP is defined: at least one image and one (non-crowd) box. Otherwise
/// COCO evaluation gives −1 for every number, which read as a result.
fn check_evaluable(cfg: &LoadedConfig, val: &crate::data::coco::DetectionData) -> Result<()> {
    let boxes: usize = val.records.iter().map(|r| r.boxes.len()).sum();
    if val.records.is_empty() || boxes == 0 {
        let what = match val.records.len() {
            0 => "has no images".to_string(),
            n => format!("has no boxes in its {n} image(s)"),
        };
        let key = match cfg.config.data.synthetic {
            Some(_) => "data.synthetic.val",
            None => "data.val.annotations",
        };
        return Err(cfg.error(
            key,
            format!(
                "{} {what}: there is nothing to evaluate (COCO AP would be −1); give a val split with boxes, or none",
                val.gt.file.display()
            ),
        ));
    }
    Ok(())
}

impl RunData {
    /// The config's device and splits (a synthetic dataset is generated on first use).
    pub fn load(cfg: &LoadedConfig) -> Result<Self> {
        let device = cfg.device()?;
        Ok(match cfg.data_sources()? {
            DataSources::Coco {
                train: train_split,
                val: val_split,
            } => {
                let train = load_split(
                    &train_split.0,
                    &train_split.1,
                    Purpose::Train {
                        min_box_size: cfg.config.data.min_box_size,
                    },
                )?;
                let val = match &val_split {
                    Some((a, i)) => Some(Split::Detection(load_split(a, i, Purpose::Eval)?)),
                    None => None,
                };
                if let Some(Split::Detection(v)) = &val {
                    check_evaluable(cfg, v)?;
                }
                Self {
                    device,
                    train: Split::Detection(train),
                    val,
                    unlabeled: vec![],
                }
            }
            DataSources::Folders {
                train,
                val,
                unlabeled,
            } => {
                let mut train = load_folder(&train, None)?;
                if let Some(f) = cfg.config.data.label_fraction {
                    let all = train.records.len();
                    train = train.stratified_subset(f, cfg.config.data.label_seed);
                    eprintln!(
                        "training on {} of the {all} labeled images (data.label_fraction {f}, per class)",
                        train.records.len()
                    );
                }
                let val = match &val {
                    Some(v) => Some(Split::Classification(load_folder(
                        v,
                        Some(&train.categories.names),
                    )?)),
                    None => None,
                };
                let first = train.records.iter().map(|r| r.id).max().unwrap_or(0) + 1;
                let unlabeled = match &unlabeled {
                    // Located at the key that names the folder (a synthetic set's is generated).
                    Some(u) if cfg.config.data.use_unlabeled => {
                        load_unlabeled(u, first).map_err(|e| match cfg.config.data.folders {
                            Some(_) => cfg.error("data.folders.unlabeled", e.to_string()),
                            None => e,
                        })?
                    }
                    _ => vec![],
                };
                Self {
                    device,
                    train: Split::Classification(train),
                    val,
                    unlabeled,
                }
            }
        })
    }

    /// Foreground classes of the training data.
    pub fn num_classes(&self) -> usize {
        self.train.categories().len()
    }

    /// What the loop trains on: the training split, then the unlabeled images.
    pub fn train_records(&self) -> Vec<ImageRecord> {
        let mut v = self.train.records().to_vec();
        v.extend(self.unlabeled.iter().cloned());
        v
    }

    /// Training images per class (label order) of a classification split; empty for detection
    /// data.
    pub fn train_counts(&self) -> Vec<usize> {
        match &self.train {
            Split::Classification(c) => c.class_counts(),
            Split::Detection(_) => vec![],
        }
    }
}

/// One step's result: the losses the loop sums and backpropagates, and other numbers the method
/// wants logged (e.g. Co-LAD's teacher choices).
#[derive(Default)]
pub struct StepOutput {
    pub losses: BTreeMap<String, Tensor>,
    pub metrics: BTreeMap<String, f64>,
}

impl StepOutput {
    /// A model's own losses, by name.
    pub fn from_losses(losses: BTreeMap<String, Loss>) -> Self {
        Self {
            losses: losses.into_iter().map(|(k, l)| (k, l.value)).collect(),
            metrics: BTreeMap::new(),
        }
    }
}

/// A network a method trains, under the name its checkpoint keys carry (`""` for a method's only
/// network, so its keys are the model's own parameter names).
pub struct NamedNetwork<'a> {
    pub name: &'a str,
    pub net: &'a Network,
}

impl<'a> NamedNetwork<'a> {
    /// Each of `nets` under the name at its index (a multi-network method's `networks()`).
    pub fn zip<S: AsRef<str> + 'a>(nets: &'a [Network], names: &'a [S]) -> Vec<Self> {
        nets.iter()
            .zip(names)
            .map(|(net, name)| NamedNetwork {
                name: name.as_ref(),
                net,
            })
            .collect()
    }

    /// The checkpoint name of one of its parameters.
    pub fn state_name(&self, param: &str) -> String {
        if self.name.is_empty() {
            param.to_string()
        } else {
            format!("{}.{param}", self.name)
        }
    }

    /// Its trainable variables under their checkpoint names, sorted.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let data = self.net.vars.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(String, Var)> = data
            .iter()
            .filter(|(k, _)| self.net.model.is_trainable(k))
            .map(|(k, var)| (self.state_name(k), var.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// A frozen model evaluated beside the trained network at the end of a run (a teacher), so the
/// user sees what the method was measured against.
pub struct Reference<'a> {
    /// Prefix of its metrics (`teacher0/AP`).
    pub key: String,
    /// How the summary names it (`teacher 0`).
    pub label: String,
    pub model: &'a dyn Model,
    pub input: &'a InputConfig,
}

/// A way of training: which networks, and how a batch becomes their losses.
pub trait Method {
    /// The networks it trains. Their parameters are checkpointed and optimized (those the
    /// model calls trainable).
    fn networks(&self) -> Vec<NamedNetwork<'_>>;

    /// The network that periodic evaluation, `model.safetensors` and its sidecar describe.
    fn eval_network(&self) -> usize {
        0
    }

    /// Variables of the method itself (Chen et al.'s adaptation layers): trained and
    /// checkpointed, never part of the model file or an export.
    fn own_vars(&self) -> Option<&VarMap> {
        None
    }

    /// The 0-based epoch of the coming `step`, told before each step: for methods whose loss
    /// weights follow the epoch (FFSD's warm-up). The loop derives it from the iteration, so
    /// `--resume` tells the same.
    fn set_epoch(&mut self, _epoch: u64) {}

    /// One step: forward, assignment and losses of every network it trains.
    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput>;

    /// Files the run depends on besides its config (teachers' weights): recorded in
    /// checkpoints, and `--resume` refuses different contents.
    fn frozen_inputs(&self) -> Vec<FrozenInput> {
        vec![]
    }

    /// Two augmented views of every training image per batch (`data::contrastive`; a batch of
    /// N images then holds 2N, view 1s then view 2s) — contrastive methods; `None`: the usual
    /// single view.
    fn two_views(&self) -> Option<crate::data::contrastive::ContrastiveAugConfig> {
        None
    }

    /// Frozen models to evaluate at the end of the run, beside the trained network.
    fn references(&self) -> Vec<Reference<'_>> {
        vec![]
    }

    /// Federated training (`federated`): the round's global model, by checkpoint name, which
    /// the networks and own variables were just loaded with. A method that learns from it
    /// keeps a frozen copy (FedNTD, FedX); others need nothing.
    fn set_global(&mut self, _global: &BTreeMap<String, Tensor>) -> Result<()> {
        Ok(())
    }

    /// Parameter groups, one optimizer each (same solver settings): by default one group of
    /// every trainable network parameter and every variable of the method's own, by name.
    fn param_groups(&self) -> Vec<Vec<(String, Var)>> {
        let mut v: Vec<(String, Var)> =
            self.networks().iter().flat_map(|n| n.trainable()).collect();
        if let Some(own) = self.own_vars() {
            let data = own.data().lock().expect("varmap lock");
            v.extend(data.iter().map(|(k, var)| (k.clone(), var.clone())));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        vec![v]
    }
}

/// Training a network alone, on its own losses and assignment.
pub struct Plain {
    pub student: Network,
}

impl Plain {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        Ok(Self {
            student: student_network(cfg, run)?,
        })
    }
}

impl Method for Plain {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        vec![NamedNetwork {
            name: "",
            net: &self.student,
        }]
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let p = own_pass(self.student.model.as_ref(), batch, rng)?;
        Ok(StepOutput::from_losses(p.out.losses))
    }
}

/// A trained network's pass over a batch on its own: the forward, its own assignment, and the
/// losses (with every head's outputs) on that assignment — the start of every method's step
/// whose networks assign for themselves.
pub struct OwnPass {
    pub fwd: Forward,
    pub assignment: Assignment,
    pub out: TrainOutput,
}

/// [`OwnPass`] of `model` (train mode): `forward` → `assign` (from `rng`) → `outputs(Losses)`.
pub fn own_pass(model: &dyn Model, batch: &Batch, rng: &mut StepRng) -> Result<OwnPass> {
    let fwd = model.forward(&batch.images, true)?;
    let assignment = model.assign(&fwd, batch, rng)?;
    let out = model.outputs(&fwd, &assignment, batch, Want::Losses)?;
    Ok(OwnPass {
        fwd,
        assignment,
        out,
    })
}

/// The network `model` describes, initialised from the config's seed, with its backbone weights
/// (`model.backbone.weights`, strictly) when the config names them.
pub fn student_network(cfg: &LoadedConfig, run: &RunData) -> Result<Network> {
    let c = &cfg.config;
    network(cfg, &c.model, "model", c.seed, run)
}

/// A network of the model section at `json_path` of the config, initialised from `seed`, with
/// its backbone weights when the section names them.
pub fn network(
    cfg: &LoadedConfig,
    model: &crate::models::config::ModelConfig,
    json_path: &str,
    seed: u64,
    run: &RunData,
) -> Result<Network> {
    network_for(cfg, model, json_path, seed, run.num_classes(), &run.device)
}

/// [`network`] for `num_classes` foreground classes on `device` (a run without training data:
/// `kdet online`'s student).
pub fn network_for(
    cfg: &LoadedConfig,
    model: &crate::models::config::ModelConfig,
    json_path: &str,
    seed: u64,
    num_classes: usize,
    device: &Device,
) -> Result<Network> {
    let net = Network::new(model, num_classes, seed, device)?;
    let b = model.backbone();
    if let Some(w) = &b.weights {
        let path = cfg.resolve_weights(&format!("{json_path}.backbone.weights"), w)?;
        let r = crate::models::weights::load_backbone(
            &net.vars.varmap,
            &path,
            net.model.backbone_prefix(),
            &b.weights_keys,
        )?;
        eprintln!(
            "loaded {} backbone tensors from {}",
            r.loaded,
            shown(w, &path)
        );
        // A classifier keeps the projection-head layers the file has (SimCLRv2 fine-tuning).
        if let crate::models::config::ModelConfig::Classifier(c) = model {
            let n = crate::models::weights::load_projection_layers(
                &net.vars.varmap,
                &path,
                &b.weights_keys,
                c.mlp_layers,
            )?;
            if n > 0 {
                eprintln!(
                    "loaded {n} projection-head tensors (mlp.0..{}) from {}",
                    c.mlp_layers - 1,
                    shown(w, &path)
                );
            }
        }
    }
    Ok(net)
}

/// Network 2 of a two-network method (Co-LAD, DCM, DoGo): `method.partner`, from
/// `partner_seed` or, when null, `network_seed(seed, 1)`, so that a partner of the student's
/// architecture never starts identical to it.
pub fn partner_network(
    cfg: &LoadedConfig,
    partner: &crate::models::config::ModelConfig,
    partner_seed: Option<u64>,
    run: &RunData,
) -> Result<Network> {
    let seed = partner_seed.unwrap_or(crate::models::build::network_seed(cfg.config.seed, 1));
    network(cfg, partner, "method.partner", seed, run)
}

/// A multi-network method's networks: `model` (from `seed`), then each of `peers` (the section
/// at `method.<key>[i].model`, from its own seed or `network_seed(seed, i + 1)`, so that networks
/// of one architecture never start identical), each with its JSON path.
pub fn peer_networks(
    cfg: &LoadedConfig,
    peers: &[crate::config::distill::DmlPeer],
    key: &str,
    run: &RunData,
) -> Result<Vec<(Network, String)>> {
    let c = &cfg.config;
    let mut nets = vec![(
        network(cfg, &c.model, "model", c.seed, run)?,
        "model".to_string(),
    )];
    for (i, p) in peers.iter().enumerate() {
        let path = format!("method.{key}[{i}].model");
        let seed = p
            .seed
            .unwrap_or(crate::models::build::network_seed(c.seed, i + 1));
        nets.push((network(cfg, &p.model, &path, seed, run)?, path));
    }
    Ok(nets)
}

/// A weights spec as the user wrote it when it is a hub file, else the resolved path.
fn shown(spec: &str, path: &Path) -> String {
    if crate::hub::is_hub(spec) {
        spec.to_string()
    } else {
        path.display().to_string()
    }
}
