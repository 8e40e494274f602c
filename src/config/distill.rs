//! The `teachers` and `distill` sections: the frozen teachers a student learns from and the
//! loss terms that say how (Chen et al. 2017, Hinton et al. 2015). Formulas, defaults and their
//! sources: docs/methods.md.

use serde::{Deserialize, Serialize};

use crate::device::Precision;
use crate::error::{invalid, nonneg, positive, unit, Check};
use crate::models::config::ModelConfig;
use crate::models::contract::TapSpec;
use crate::models::weights::KeyRules;

/// A frozen teacher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// Architecture. Omitted: the `model` of the sidecar beside the weights (`<stem>.json`
    /// written by `kdet export`, or `model.json` of a `kdet train` run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelConfig>,
    /// Local path or `hf://owner/repo/path@rev`.
    pub weights: String,
    /// Teacher precision; f32 by default (no precision loss).
    #[serde(default)]
    pub dtype: Precision,
    /// Missing/unexpected keys are fatal unless false.
    #[serde(default = "strict_load")]
    pub strict: bool,
    /// Before training, evaluate the teacher on this many validation images and stop when its AP
    /// is below `min_ap` — a teacher that silently did not load is the most common way a
    /// "distilled" run ends up equal to the baseline. 0 skips the check.
    #[serde(default = "teacher_check_images")]
    pub check_images: usize,
    /// Smallest acceptable teacher AP (COCO AP@[.5:.95]; a classifier: top-1 accuracy) on the
    /// check images.
    #[serde(default = "teacher_min_ap")]
    pub min_ap: f64,
    /// How to rename the checkpoint's keys onto kdet's (torchvision's) names.
    #[serde(default)]
    pub keys: KeyRules,
    /// A pretrained vision model from candle-transformers instead of a kdet model (`model`):
    /// a frozen feature (and, with a classifier of the student's classes, soft-label) teacher
    /// for methods `cbd` and `simclr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PretrainedConfig>,
}

/// A candle-transformers vision model as a teacher (`teachers[i].pretrained`), with the input
/// it expects: the student's batch is un-normalised, re-normalised with `mean`/`std` and
/// resized (bilinear) to `size × size` for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PretrainedConfig {
    /// `candle_transformers::models::resnet` (torchvision / timm names: `conv1.weight`,
    /// `layer1.0.bn1.running_mean`, `fc.weight`; timm's `resnet18.tv_in1k`, `resnet50.a1_in1k`
    /// files load as they are). Feature: the pooled last stage (512 or 2048 wide); classifier:
    /// `fc` when the file has it.
    Resnet {
        /// 18, 34, 50, 101 or 152 (candle-transformers' fixed widths).
        depth: u32,
        #[serde(default)]
        input: PretrainedInput,
    },
    /// `candle_transformers::models::dinov2::DinoVisionTransformer` (facebookresearch/dinov2's
    /// torch-hub names, also timm's `vit_small_patch14_dinov2.lvd142m`: `cls_token`,
    /// `pos_embed`, `patch_embed.proj.weight`, `blocks.N.attn.qkv.weight`, `norm.weight`, and
    /// optionally the 1000-class linear `head`). Feature: the mean of the final-normalised patch
    /// tokens (images run one at a time: candle-transformers' DINOv2 takes batches of one).
    Dinov2 {
        /// Transformer blocks. ViT-S/14: 12.
        #[serde(default = "vits_depth")]
        depth: usize,
        /// Token width. ViT-S/14: 384.
        #[serde(default = "vits_dim")]
        embed_dim: usize,
        /// ViT-S/14: 6.
        #[serde(default = "vits_heads")]
        num_heads: usize,
        #[serde(default)]
        input: PretrainedInput,
    },
}

fn vits_depth() -> usize {
    12
}
fn vits_dim() -> usize {
    384
}
fn vits_heads() -> usize {
    6
}

/// The input a pretrained teacher expects.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainedInput {
    /// Square side. timm `resnet*.tv_in1k` and DINOv2's evaluation: 224 (DINOv2: a multiple of
    /// the 14-pixel patch).
    pub size: u32,
    /// ImageNet mean (timm's and DINOv2's `IMAGENET_DEFAULT_MEAN`).
    pub mean: [f32; 3],
    /// ImageNet std.
    pub std: [f32; 3],
}

impl Default for PretrainedInput {
    fn default() -> Self {
        Self {
            size: 224,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

impl PretrainedConfig {
    pub fn input(&self) -> &PretrainedInput {
        match self {
            PretrainedConfig::Resnet { input, .. } | PretrainedConfig::Dinov2 { input, .. } => {
                input
            }
        }
    }

    /// `p` is `teachers[i].pretrained`.
    pub fn validate(&self, p: &str) -> Check {
        let i = self.input();
        if i.size == 0 {
            return Err(invalid(format!("{p}.input.size"), "must be >= 1"));
        }
        for (k, s) in i.std.iter().enumerate() {
            positive(&format!("{p}.input.std[{k}]"), *s as f64)?;
        }
        match self {
            PretrainedConfig::Resnet { depth, .. } => {
                if ![18, 34, 50, 101, 152].contains(depth) {
                    return Err(invalid(
                        format!("{p}.depth"),
                        format!("{depth} is not one of 18, 34, 50, 101, 152"),
                    ));
                }
            }
            PretrainedConfig::Dinov2 {
                depth,
                embed_dim,
                num_heads,
                input,
            } => {
                if *depth == 0 || *embed_dim == 0 || *num_heads == 0 {
                    return Err(invalid(p, "depth, embed_dim and num_heads must be >= 1"));
                }
                if !embed_dim.is_multiple_of(*num_heads) {
                    return Err(invalid(
                        format!("{p}.num_heads"),
                        format!("must divide embed_dim ({embed_dim})"),
                    ));
                }
                if !input.size.is_multiple_of(14) {
                    return Err(invalid(
                        format!("{p}.input.size"),
                        format!(
                            "{} is not a multiple of DINOv2's 14-pixel patch",
                            input.size
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Missing or unexpected keys are the usual sign of a teacher that did not load.
fn strict_load() -> bool {
    true
}
/// Enough images for a stable AP of a trained detector, in seconds on a CPU.
fn teacher_check_images() -> usize {
    64
}
/// Far below any trained detector, far above an untrained one (≈ 0).
fn teacher_min_ap() -> f64 {
    0.01
}

/// How the networks train (`method`). Absent: the student alone, or with Chen et al. 2017's
/// terms when `teachers` are given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MethodConfig {
    /// Label assignment distillation (Nguyen et al., WACV 2022): the student trains on the
    /// label assignment its teacher's predictions make (mmdetection's `LAD`), plus any `distill`
    /// terms.
    Lad {
        /// The teacher whose predictions assign (its index in `teachers`).
        #[serde(default)]
        teacher: usize,
    },
    /// Co-LAD (Nguyen et al. 2022 §4): `model` (network 1) and `partner` (network 2) train
    /// together from scratch on one assignment, built per image × box × level from the costs of
    /// whichever network the criterion picks (the authors' `PAA_CoLAD_StdMean_Head`).
    Colad {
        /// Network 2's model section (its input must equal `model.input`).
        partner: Box<ModelConfig>,
        #[serde(default)]
        criterion: ColadCriterion,
        /// The network that evaluation, `model.safetensors` and export describe. The released
        /// config evaluates network 2 (`test_cfg=dict(use_teacher=True)`).
        #[serde(default = "colad_evaluated")]
        evaluate: ColadNetwork,
        /// Seed of network 2's initialisation; null = one derived from `seed`
        /// (`models::build::network_seed`), so that two networks of the same architecture
        /// never start identical. Network 1 draws from `seed`, as the config trained alone.
        #[serde(default)]
        partner_seed: Option<u64>,
    },
    /// Deep mutual learning (Zhang et al., CVPR 2018): `model` (network 1, `net1`) and every
    /// `peers[i]` (`net2`, `net3`, …) train together from scratch, each on its own losses plus
    /// the mean over the other networks of `T²·KL(p_other ‖ p_self)` on its own samples, the
    /// others' probabilities detached (the paper's Eq. 10): `L_k = L_Ck + 1/(K−1) Σ_{l≠k}
    /// D_KL(p_l ‖ p_k)`. Classifiers compare their image logits; detectors (of one family)
    /// every classification head on the trained network's own samples (its sampled anchors and
    /// RoIs, its dense anchors), the other networks' heads evaluated there.
    Dml {
        /// The other networks (at least one): a model section each, with an optional seed.
        peers: Vec<DmlPeer>,
        /// T of the softmax / sigmoid. The paper and its released code (`kl_loss_compute`):
        /// none, i.e. 1.
        #[serde(default = "dml_temperature")]
        temperature: f64,
        /// The network that evaluation, `model.safetensors` and export describe (`net1` …
        /// `netK`). The paper reports every network; kdet evaluates `model`'s by default.
        #[serde(default = "dml_evaluated")]
        evaluate: String,
    },
    /// Dense cross-layer mutual-distillation (Yao & Sun, ECCV 2020; github.com/sundw2014/DCM):
    /// two classifiers, `model` (`net1`) and `partner` (`net2`), train together from scratch;
    /// each gets an auxiliary classifier after each of `stages` (copies of the later stages,
    /// pooling and a linear layer: method variables, checkpointed, never exported), every
    /// classifier of both networks its cross-entropy, and every pair of classifiers across the
    /// two networks (same and different stages) a KD term each way, the target detached:
    /// `Σ_i CE(q_i) + Σ_{i∈net1, j∈net2} [KL(p_j ‖ p_i) + KL(p_i ‖ p_j)]`.
    Dcm {
        /// Network 2's model section (a classifier; same input as `model`).
        partner: Box<ModelConfig>,
        /// Seed of network 2; null = derived from `seed` (`models::build::network_seed`).
        #[serde(default)]
        partner_seed: Option<u64>,
        /// The stage taps an auxiliary classifier follows (`backbone.c2` … `backbone.c4`).
        /// The released code (3-stage WRN) adds one after every stage but the last; kdet's
        /// 4-stage ResNets default to the last two hidden stages (two auxiliary classifiers,
        /// as the released code has).
        #[serde(default = "dcm_stages")]
        stages: Vec<String>,
        /// T of the KD terms. The released `KL_divergence`: plain softmax, T = 1.
        #[serde(default = "dml_temperature")]
        temperature: f64,
        /// Weight of every KD term. The released code sums CE and KD terms unweighted: 1.
        #[serde(default = "dcm_weight")]
        kd_weight: f64,
        /// The network that evaluation, `model.safetensors` and export describe.
        #[serde(default = "dml_evaluated")]
        evaluate: String,
    },
    /// FFSD (Li et al. 2021, "Distilling a Powerful Student Model via Online Knowledge
    /// Distillation"; github.com/SJLeo/FFSD): a leader (`model`, `net1`) and common students
    /// (`students`, `net2` …) train together from scratch. The students learn from each other
    /// (DML at temperature T) and, from the second on, are pushed away from the previous one's
    /// attention (diversity) and self-distilled; a feature-fusion module fuses their last maps
    /// into a classifier that teaches the leader (logits and attention), the leader also
    /// self-distilled. The fusion module, the leader's trans-fusion branch and the
    /// self-distillation chains are method variables (checkpointed, never exported). Formulas:
    /// docs/methods.md.
    Ffsd {
        /// The common students (at least two): a model section each (a classifier with the
        /// leader's input and stage layout), with an optional seed.
        students: Vec<DmlPeer>,
        /// The stage whose map is fused, diversified and self-distilled from (`backbone.c3` …
        /// `backbone.c5`); the shallower stages mimic it. The released code: the last stage
        /// (ImageNet ResNet-18: layer4, `backbone.c5`).
        #[serde(default = "ffsd_last_stage")]
        last_stage: String,
        /// T of every KD term. The released `--temperature` default: 2.
        #[serde(default = "ffsd_temperature")]
        temperature: f64,
        /// λ of the diversity and the students' self-distillation terms. Released: 1e-5.
        #[serde(default = "ffsd_lambda_diversity")]
        lambda_diversity: f64,
        /// λ of the leader's fusion, trans-fusion and self-distillation terms. Released: 10.
        #[serde(default = "ffsd_lambda_fusion")]
        lambda_fusion: f64,
        /// λ of the self-distillation modules' own training loss. Released: 1000.
        #[serde(default = "ffsd_lambda_self_distillation")]
        lambda_self_distillation: f64,
        /// Epochs over which the three λ rise as `λ·exp(−5(1 − e/α)²)` (epoch e from 1).
        /// Released `lambda_warmup`: α = 5; 0 = no warm-up.
        #[serde(default = "ffsd_warmup_epochs")]
        warmup_epochs: u64,
        /// The network that evaluation, `model.safetensors` and export describe. FFSD keeps the
        /// leader: `net1`.
        #[serde(default = "dml_evaluated")]
        evaluate: String,
    },
    /// SimCLRv2's distillation (Chen et al. 2020, "Big Self-Supervised Models are Strong
    /// Semi-Supervised Learners", Eq. 3): the student learns the fixed teacher's class
    /// distribution at temperature τ on every training image (add the unlabeled ones with
    /// `data.use_unlabeled`), plus, with α < 1, the labels' cross-entropy:
    /// `L = (1 − α)·CE(y) − α·Σ_y P_T(y; τ) log P_S(y; τ)`.
    Simclr {
        /// τ. SimCLRv2: 0.1 for self-distillation (same architecture), 1.0 for big → small.
        temperature: f64,
        /// α, the weight of the distillation term. SimCLRv2's experiments distil without
        /// labels: 1.
        #[serde(default = "simclr_alpha")]
        alpha: f64,
        /// Multiply the distillation term by τ² (Hinton et al. 2015; SimCLR's demo notebook
        /// does). Off: the paper's Eq. 3.
        #[serde(default)]
        t_squared: bool,
        /// The teacher (its index in `teachers`).
        #[serde(default)]
        teacher: usize,
    },
    /// Class-balanced distillation (Iscen et al. 2021, google-research
    /// `class_balanced_distillation`): stage 2, a student trained from scratch on the
    /// sampler's batches (set `data.sampler: class_balanced`) with
    /// `(1 − α)·CE + α·β·(1 − cos(ŝ, t̂))`, ŝ its normalised projection (`model.projection`),
    /// t̂ the normalised concatenation of the normalised features of every teacher in `teachers`
    /// (one: CBD; several: CBD_ENS).
    Cbd {
        /// α. The official `configs/stage_two_cbd.py`: `distill_alpha = 0.4`.
        #[serde(default = "cbd_alpha")]
        alpha: f64,
        /// β. The official config: `distill_fd_beta = 100`.
        #[serde(default = "cbd_beta")]
        beta: f64,
    },
    /// SimCLR contrastive pretraining (Chen et al. 2020; SimCLRv2 §2.1), no labels: two
    /// augmented views of every training image (`augment`), NT-Xent at temperature τ on the
    /// projection head's output. The head is SimCLRv2's: `model.mlp_layers` (2 for its 3-layer
    /// head) plus a last Linear(→ `out_dim`) + BatchNorm layer of the method's own.
    SimclrPretrain {
        /// τ. SimCLRv2's `--temperature` default (google-research/simclr `tf2/run.py`) and
        /// ImageNet recipe: 0.1; the official CIFAR-10 recipe (batch 512): 0.5.
        #[serde(default = "simclr_pretrain_temperature")]
        temperature: f64,
        /// Output width of the projection head. SimCLR / SimCLRv2 `proj_out_dim`: 128.
        #[serde(default = "simclr_proj_out_dim")]
        out_dim: usize,
        /// The two-view augmentation (`data::contrastive`); defaults: SimCLR on ImageNet.
        #[serde(default)]
        augment: crate::data::contrastive::ContrastiveAugConfig,
    },
    // Federated clients' methods (a `federated` section; `src/federated/`).
    /// FedNTD (Lee et al., NeurIPS 2022, Eq. 4; github.com/Lee-Gihun/FedNTD `NTD_Loss`): a
    /// client's loss `CE(y) + β · τ² · KL(q̃_g ‖ q̃_l)`, where q̃ is the softmax at τ over the
    /// *not-true* classes (the label's logit removed) of the round's global model (frozen) and
    /// of the local model, the KL averaged over the batch.
    Fedntd {
        /// β. The released `config/fedntd.json`: 1.
        #[serde(default = "fedntd_one")]
        beta: f64,
        /// τ. The released `config/fedntd.json`: 1 (`NTD_Loss`'s own default, 3, is not used
        /// there).
        #[serde(default = "fedntd_one")]
        temperature: f64,
    },
    /// FedX (Han et al., ECCV 2022; github.com/Sungwon-Han/FEDX `train_net_fedx`): no labels;
    /// two views of each image and a batch of other images as anchors; the local model's
    /// projection `z` and prediction `p` heads and the round's frozen global model's projection
    /// `z_g` give `NT-Xent(z¹, z²) + NT-Xent(p¹, z_g²) + JS(p¹, p² | z_g^a) + JS(z¹, z² | z^a)`
    /// (`src/distill/fedx.rs`).
    Fedx {
        /// τ of NT-Xent and of the relational loss's inputs. FedX `--temperature`: 0.1.
        #[serde(default = "fedx_temperature")]
        temperature: f64,
        /// τ of the relational targets against the global model's anchors. FedX `--tt`: 0.1.
        #[serde(default = "fedx_temperature")]
        global_relation_temperature: f64,
        /// τ of the relational targets against the local anchors. FedX `--ts`: 0.1.
        #[serde(default = "fedx_temperature")]
        local_relation_temperature: f64,
        /// Width of the projection and prediction MLPs. FedX `--out_dim`: 256.
        #[serde(default = "fedx_out_dim")]
        out_dim: usize,
        /// The global model's terms (`nt_global`, `js_global`). false: the local terms alone,
        /// FedX's ablation without global knowledge.
        #[serde(default = "fedx_global")]
        global: bool,
        /// The two-view augmentation (`data::contrastive`).
        #[serde(default)]
        augment: crate::data::contrastive::ContrastiveAugConfig,
    },
    /// DoGo, "Distill on the Go" (Bhat, Arani & Zonooz, CVPR-W 2021; github.com/NeurAI-Lab/DoGo,
    /// branch `dogo`): `model` (`net1`) and `partner` (`net2`) train together from scratch
    /// without labels, each on its own NT-Xent (as `simclr_pretrain`) plus a weighted
    /// `KL(P_peer ‖ P_own)` between the row-softmaxes at `kl_temperature` of their cross-view
    /// similarity matrices (`criterion/kl.py`), the peer's side detached.
    Dogo {
        /// Network 2's model section (a classifier; same input as `model`).
        partner: Box<ModelConfig>,
        /// Seed of network 2; null = derived from `seed` (`models::build::network_seed`).
        #[serde(default)]
        partner_seed: Option<u64>,
        /// τ of each network's NT-Xent. The official `criterion/ntxent.py` (branch `dogo`)
        /// fixes 0.5.
        #[serde(default = "dogo_temperature")]
        temperature: f64,
        /// T of the similarity softmaxes the KL compares. Official `template.yaml`:
        /// `KL_temperature: 0.1`.
        #[serde(default = "dogo_kl_temperature")]
        kl_temperature: f64,
        /// Weights of net1's and net2's KL term. Official `template.yaml`:
        /// `criterion_weight: [1, 1, 100, 1]`, the last two the KL weights of model 1 and 2.
        #[serde(default = "dogo_kl_weights")]
        kl_weights: [f64; 2],
        /// Output width of each projection head. Official `n_proj`: 128.
        #[serde(default = "simclr_proj_out_dim")]
        out_dim: usize,
        /// The two-view augmentation both networks see (`data::contrastive`).
        #[serde(default)]
        augment: crate::data::contrastive::ContrastiveAugConfig,
        /// The network that evaluation, `model.safetensors` and export describe.
        #[serde(default = "dml_evaluated")]
        evaluate: String,
    },
}

fn fedntd_one() -> f64 {
    1.0
}
fn fedx_temperature() -> f64 {
    0.1
}
fn fedx_out_dim() -> usize {
    256
}
fn fedx_global() -> bool {
    true
}

/// `method.evaluate` of a two-network method: `net1` or `net2`.
fn net1_or_net2(evaluate: &str) -> Check {
    if evaluate != "net1" && evaluate != "net2" {
        return Err(invalid(
            "method.evaluate",
            format!("`{evaluate}` is none of net1, net2"),
        ));
    }
    Ok(())
}

fn dogo_temperature() -> f64 {
    0.5
}
fn dogo_kl_temperature() -> f64 {
    0.1
}
fn dogo_kl_weights() -> [f64; 2] {
    [100.0, 1.0]
}

fn simclr_pretrain_temperature() -> f64 {
    0.1
}
fn simclr_proj_out_dim() -> usize {
    128
}

/// One of DML's other networks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DmlPeer {
    pub model: Box<ModelConfig>,
    /// Seed of its initialisation; null = one derived from `seed` and its position
    /// (`models::build::network_seed`), so that networks of one architecture never start
    /// identical.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// The checkpoint names of DML's `k` networks: `net1` (`model`), `net2` (`peers[0]`), ….
pub fn dml_names(k: usize) -> Vec<String> {
    (1..=k).map(|i| format!("net{i}")).collect()
}

fn ffsd_last_stage() -> String {
    "backbone.c5".into()
}
fn ffsd_temperature() -> f64 {
    2.0
}
fn ffsd_lambda_diversity() -> f64 {
    1e-5
}
fn ffsd_lambda_fusion() -> f64 {
    10.0
}
fn ffsd_lambda_self_distillation() -> f64 {
    1000.0
}
fn ffsd_warmup_epochs() -> u64 {
    5
}

fn dcm_stages() -> Vec<String> {
    vec!["backbone.c3".into(), "backbone.c4".into()]
}
fn dcm_weight() -> f64 {
    1.0
}
fn dml_temperature() -> f64 {
    1.0
}
fn dml_evaluated() -> String {
    "net1".into()
}
fn simclr_alpha() -> f64 {
    1.0
}
fn cbd_alpha() -> f64 {
    0.4
}
fn cbd_beta() -> f64 {
    100.0
}

/// Which network's costs decide a box's assignment on a level.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ColadCriterion {
    /// The larger std/mean of the candidates' costs (the released code); ties to network 2, a
    /// single candidate to the lower cost.
    #[default]
    StdMean,
    /// The larger Fisher ratio `(μ₁ − μ₀)² / (σ₀² + σ₁²)` of a two-component GMM on the costs
    /// (a secondary source's reading of the paper; not in the released code).
    Fisher,
}

/// One of Co-LAD's networks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ColadNetwork {
    Net1,
    Net2,
}

/// The released Co-LAD config evaluates network 2.
fn colad_evaluated() -> ColadNetwork {
    ColadNetwork::Net2
}

impl MethodConfig {
    /// The method's `type`.
    pub fn name(&self) -> &'static str {
        match self {
            MethodConfig::Lad { .. } => "lad",
            MethodConfig::Colad { .. } => "colad",
            MethodConfig::Simclr { .. } => "simclr",
            MethodConfig::Cbd { .. } => "cbd",
            MethodConfig::SimclrPretrain { .. } => "simclr_pretrain",
            MethodConfig::Dml { .. } => "dml",
            MethodConfig::Dcm { .. } => "dcm",
            MethodConfig::Fedntd { .. } => "fedntd",
            MethodConfig::Fedx { .. } => "fedx",
            MethodConfig::Dogo { .. } => "dogo",
            MethodConfig::Ffsd { .. } => "ffsd",
        }
    }

    /// The model sections of the networks it trains besides `model` (network 2, 3, …), with
    /// their JSON paths: Co-LAD's `method.partner`, DML's `method.peers[i].model`.
    pub fn extra_networks(&self) -> Vec<(String, &ModelConfig)> {
        match self {
            MethodConfig::Colad { partner, .. }
            | MethodConfig::Dcm { partner, .. }
            | MethodConfig::Dogo { partner, .. } => {
                vec![("method.partner".into(), &**partner)]
            }
            MethodConfig::Dml { peers, .. } => peers
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("method.peers[{i}].model"), &*p.model))
                .collect(),
            MethodConfig::Ffsd { students, .. } => students
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("method.students[{i}].model"), &*p.model))
                .collect(),
            _ => vec![],
        }
    }

    /// Whether the method contrasts the images of a batch with each other (NT-Xent), so that
    /// a batch needs at least two images (one's negatives are the others).
    pub fn needs_negatives(&self) -> bool {
        matches!(
            self,
            MethodConfig::SimclrPretrain { .. }
                | MethodConfig::Fedx { .. }
                | MethodConfig::Dogo { .. }
        )
    }

    /// Whether the method learns without labels, so that the top-1 of the classifier's
    /// (untrained) head means nothing: evaluation reads the representation instead.
    pub fn self_supervised(&self) -> bool {
        self.needs_negatives()
    }

    /// Whether the method reads teachers through features and logits only, so a pretrained
    /// hub model (`teachers[i].pretrained`) can teach it.
    pub fn takes_pretrained(&self) -> bool {
        matches!(self, MethodConfig::Simclr { .. } | MethodConfig::Cbd { .. })
    }

    /// `p` is `method`.
    pub fn validate(&self, teachers: &[TeacherConfig], model: &ModelConfig) -> Check {
        let classifier = || -> Check {
            if !model.classifies_images() {
                return Err(invalid(
                    "model.arch",
                    format!(
                        "method {} trains a classifier, not `{}`",
                        self.name(),
                        model.arch()
                    ),
                ));
            }
            if teachers.is_empty() {
                return Err(invalid(
                    "teachers",
                    format!("method {} needs at least one teacher", self.name()),
                ));
            }
            Ok(())
        };
        match self {
            MethodConfig::Simclr {
                temperature,
                alpha,
                teacher,
                ..
            } => {
                classifier()?;
                temperature_range("method.temperature", *temperature)?;
                unit("method.alpha", *alpha)?;
                if *teacher >= teachers.len() {
                    return Err(invalid(
                        "method.teacher",
                        format!(
                            "{teacher} is not an index of `teachers` ({} given)",
                            teachers.len()
                        ),
                    ));
                }
            }
            MethodConfig::SimclrPretrain {
                temperature,
                out_dim,
                augment,
            } => {
                if !model.classifies_images() {
                    return Err(invalid(
                        "model.arch",
                        format!(
                            "method simclr_pretrain trains a classifier, not `{}`",
                            model.arch()
                        ),
                    ));
                }
                if !teachers.is_empty() {
                    return Err(invalid(
                        "teachers",
                        "simclr_pretrain learns from the images alone; give no `teachers`",
                    ));
                }
                positive("method.temperature", *temperature)?;
                if *out_dim == 0 {
                    return Err(invalid("method.out_dim", "must be >= 1"));
                }
                augment.validate("method.augment")?;
            }
            MethodConfig::Cbd { alpha, beta } => {
                classifier()?;
                unit("method.alpha", *alpha)?;
                loss_weight("method.beta", *beta)?;
            }
            MethodConfig::Lad { teacher } => {
                if teachers.is_empty() {
                    return Err(invalid(
                        "method",
                        "lad needs a teacher in `teachers` (its predictions assign the labels)",
                    ));
                }
                if *teacher >= teachers.len() {
                    return Err(invalid(
                        "method.teacher",
                        format!(
                            "{teacher} is not an index of `teachers` ({} given)",
                            teachers.len()
                        ),
                    ));
                }
            }
            MethodConfig::Dml {
                peers,
                temperature,
                evaluate,
            } => {
                if !teachers.is_empty() {
                    return Err(invalid(
                        "teachers",
                        "dml trains its networks from each other; give no `teachers`",
                    ));
                }
                if peers.is_empty() {
                    return Err(invalid(
                        "method.peers",
                        "dml trains K >= 2 networks: give at least one peer besides `model`",
                    ));
                }
                positive("method.temperature", *temperature)?;
                for (i, p) in peers.iter().enumerate() {
                    let path = format!("method.peers[{i}].model");
                    p.model.validate(&path)?;
                    if p.model.arch() != model.arch() {
                        return Err(invalid(
                            format!("{path}.arch"),
                            format!(
                                "`{}`, but model.arch is `{}`: mutual learning compares the networks' outputs on the same samples, so they must be of one family",
                                p.model.arch(),
                                model.arch()
                            ),
                        ));
                    }
                    if p.model.input() != model.input() {
                        return Err(invalid(
                            format!("{path}.input"),
                            "must equal model.input: every network sees the same batch",
                        ));
                    }
                }
                let names = dml_names(peers.len() + 1);
                if !names.iter().any(|n| n == evaluate) {
                    return Err(invalid(
                        "method.evaluate",
                        format!("`{evaluate}` is none of {}", names.join(", ")),
                    ));
                }
            }
            MethodConfig::Dcm {
                partner,
                stages,
                temperature,
                kd_weight,
                evaluate,
                ..
            } => {
                self.check_pair(teachers, model, partner, true)?;
                const STAGES: [&str; 3] = ["backbone.c2", "backbone.c3", "backbone.c4"];
                for (i, st) in stages.iter().enumerate() {
                    if !STAGES.contains(&st.as_str()) {
                        return Err(invalid(
                            format!("method.stages[{i}]"),
                            format!(
                                "unknown stage `{st}`: an auxiliary classifier follows one of {}",
                                STAGES.join(", ")
                            ),
                        ));
                    }
                    if stages[..i].contains(st) {
                        return Err(invalid(
                            format!("method.stages[{i}]"),
                            format!("`{st}` is named twice"),
                        ));
                    }
                }
                positive("method.temperature", *temperature)?;
                nonneg("method.kd_weight", *kd_weight)?;
                net1_or_net2(evaluate)?;
            }
            MethodConfig::Fedntd { beta, temperature } => {
                self.federated_classifier(teachers, model)?;
                loss_weight("method.beta", *beta)?;
                positive("method.temperature", *temperature)?;
            }
            MethodConfig::Fedx {
                temperature,
                global_relation_temperature,
                local_relation_temperature,
                out_dim,
                augment,
                ..
            } => {
                self.federated_classifier(teachers, model)?;
                positive("method.temperature", *temperature)?;
                positive(
                    "method.global_relation_temperature",
                    *global_relation_temperature,
                )?;
                positive(
                    "method.local_relation_temperature",
                    *local_relation_temperature,
                )?;
                if *out_dim == 0 {
                    return Err(invalid("method.out_dim", "must be >= 1"));
                }
                augment.validate("method.augment")?;
            }
            MethodConfig::Dogo {
                partner,
                temperature,
                kl_temperature,
                kl_weights,
                out_dim,
                augment,
                evaluate,
                ..
            } => {
                self.check_pair(teachers, model, partner, true)?;
                positive("method.temperature", *temperature)?;
                positive("method.kl_temperature", *kl_temperature)?;
                for (i, w) in kl_weights.iter().enumerate() {
                    loss_weight(&format!("method.kl_weights[{i}]"), *w)?;
                }
                if *out_dim == 0 {
                    return Err(invalid("method.out_dim", "must be >= 1"));
                }
                augment.validate("method.augment")?;
                net1_or_net2(evaluate)?;
            }
            MethodConfig::Ffsd { .. } => self.validate_ffsd(teachers, model)?,
            MethodConfig::Colad { partner, .. } => {
                self.check_pair(teachers, model, partner, false)?;
            }
        }
        Ok(())
    }
}

impl MethodConfig {
    /// The seeds the config gives explicitly to the networks a method trains besides `model`:
    /// Co-LAD's, DCM's and DoGo's `partner_seed`, DML's `peers[i].seed`, FFSD's
    /// `students[i].seed` (`engine::seeds` moves them with the run's seed).
    pub fn network_seeds_mut(&mut self) -> Vec<&mut u64> {
        match self {
            MethodConfig::Colad { partner_seed, .. }
            | MethodConfig::Dcm { partner_seed, .. }
            | MethodConfig::Dogo { partner_seed, .. } => partner_seed.iter_mut().collect(),
            MethodConfig::Dml { peers, .. }
            | MethodConfig::Ffsd {
                students: peers, ..
            } => peers.iter_mut().filter_map(|p| p.seed.as_mut()).collect(),
            _ => vec![],
        }
    }

    /// A method that trains `model` together with `method.partner` from scratch (Co-LAD, DCM,
    /// DoGo): no teachers, a valid partner that sees the same input and, where the method is
    /// for classifiers, two classifiers.
    fn check_pair(
        &self,
        teachers: &[TeacherConfig],
        model: &ModelConfig,
        partner: &ModelConfig,
        classifiers: bool,
    ) -> Check {
        let name = self.name();
        if !teachers.is_empty() {
            return Err(invalid(
                "teachers",
                format!("{name} trains its two networks from each other; give no `teachers`"),
            ));
        }
        if classifiers {
            for (m, path) in [(model, "model"), (partner, "method.partner")] {
                if !m.classifies_images() {
                    return Err(invalid(
                        format!("{path}.arch"),
                        format!("{name} trains two classifiers, not `{}`", m.arch()),
                    ));
                }
            }
        }
        partner.validate("method.partner")?;
        if partner.input() != model.input() {
            return Err(invalid(
                "method.partner.input",
                "must equal model.input: both networks see the same images",
            ));
        }
        Ok(())
    }

    /// A federated client method's model and teachers: a classifier, and no teachers (the
    /// round's global model is its only one).
    fn federated_classifier(&self, teachers: &[TeacherConfig], model: &ModelConfig) -> Check {
        if !model.classifies_images() {
            return Err(invalid(
                "model.arch",
                format!(
                    "method {} trains a classifier, not `{}`",
                    self.name(),
                    model.arch()
                ),
            ));
        }
        if !teachers.is_empty() {
            return Err(invalid(
                "teachers",
                format!(
                    "{} learns from the round's global model; give no `teachers`",
                    self.name()
                ),
            ));
        }
        Ok(())
    }

    fn validate_ffsd(&self, teachers: &[TeacherConfig], model: &ModelConfig) -> Check {
        let MethodConfig::Ffsd {
            students,
            last_stage,
            temperature,
            lambda_diversity,
            lambda_fusion,
            lambda_self_distillation,
            evaluate,
            ..
        } = self
        else {
            return Ok(());
        };
        if !teachers.is_empty() {
            return Err(invalid(
                "teachers",
                "ffsd trains its networks from each other; give no `teachers`",
            ));
        }
        if students.len() < 2 {
            return Err(invalid(
                "method.students",
                format!(
                    "ffsd fuses the features of at least two common students besides the leader (`model`); {} given",
                    students.len()
                ),
            ));
        }
        let mut nets = vec![("model".to_string(), model)];
        for (i, p) in students.iter().enumerate() {
            let path = format!("method.students[{i}].model");
            p.model.validate(&path)?;
            nets.push((path, &*p.model));
        }
        for (path, m) in &nets {
            if !m.classifies_images() {
                return Err(invalid(
                    format!("{path}.arch"),
                    format!("ffsd trains classifiers, not `{}`", m.arch()),
                ));
            }
            if m.input() != model.input() {
                return Err(invalid(
                    format!("{path}.input"),
                    "must equal model.input: every network sees the same batch",
                ));
            }
        }
        const STAGES: [&str; 3] = ["backbone.c3", "backbone.c4", "backbone.c5"];
        if !STAGES.contains(&last_stage.as_str()) {
            return Err(invalid(
                "method.last_stage",
                format!(
                    "unknown stage `{last_stage}`: one of {} (a shallower stage must remain to mimic it)",
                    STAGES.join(", ")
                ),
            ));
        }
        positive("method.temperature", *temperature)?;
        nonneg("method.lambda_diversity", *lambda_diversity)?;
        nonneg("method.lambda_fusion", *lambda_fusion)?;
        nonneg("method.lambda_self_distillation", *lambda_self_distillation)?;
        let names = dml_names(students.len() + 1);
        if !names.iter().any(|n| n == evaluate) {
            return Err(invalid(
                "method.evaluate",
                format!("`{evaluate}` is none of {}", names.join(", ")),
            ));
        }
        Ok(())
    }
}

/// Where a distillation term applies.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Region proposal network (2-class objectness, anchor deltas).
    Rpn,
    /// Region classification network (Fast R-CNN box head).
    Rcn,
}

/// Hint loss distance.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HintDistance {
    /// Chen et al. 2017 Eq. 5.
    #[default]
    L2,
    /// Chen et al. 2017 Eq. 6.
    L1,
}

/// How a student tap is brought to the teacher tap's spatial size.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SpatialMatch {
    /// Zero-pad the smaller map at the bottom/right (Chen et al. 2017).
    #[default]
    Pad,
    /// Bilinear resize of the teacher map to the student's size (the teacher side needs no
    /// gradient, so this costs nothing in the backward pass).
    Resize,
}

/// One distillation loss term. Formulas and sources: docs/methods.md.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DistillTerm {
    /// Hint learning with an adaptation layer (Chen et al. 2017 §3.3, FitNets).
    Hint {
        /// Student tap (`backbone.c4`, `fpn.p3`, …).
        student: String,
        /// Teacher tap.
        teacher: String,
        /// γ. Chen et al. 2017: 0.5.
        #[serde(default = "chen_gamma")]
        weight: f32,
        #[serde(default)]
        distance: HintDistance,
        #[serde(default)]
        spatial: SpatialMatch,
        /// The 1×1 adaptation conv (Chen et al. 2017's "Hints-A"); `false` compares the student
        /// tap to the teacher's directly ("Hints"), which needs equal channel counts.
        #[serde(default = "adaptation_layer")]
        adaptation: bool,
    },
    /// Weighted soft cross-entropy with background weight (Chen et al. 2017 Eq. 2–3).
    WeightedKd {
        stage: Stage,
        /// Temperature. Chen et al. 2017: T = 1 works best.
        #[serde(default = "chen_temperature")]
        temperature: f32,
        /// w0, weight of the background class. Chen et al. 2017 (PASCAL): 1.5.
        #[serde(default = "chen_background_weight")]
        background_weight: f32,
        /// μ balancing hard and soft loss. Not given by the paper; 0.5.
        #[serde(default = "chen_mu")]
        mu: f32,
    },
    /// Teacher-bounded L2 regression (Chen et al. 2017 Eq. 4).
    BoundedRegression {
        stage: Stage,
        /// Margin m. Not given by the paper; 0.
        #[serde(default)]
        margin: f32,
        /// ν. Chen et al. 2017: 0.5.
        #[serde(default = "chen_nu")]
        weight: f32,
        /// `false`: plain L2 between student and teacher deltas, `‖R_s − R_t‖²` (the "L2" row of
        /// Chen et al. 2017 Table 4, which the bound was introduced to fix).
        #[serde(default = "bounded_by_teacher")]
        bounded: bool,
    },
    /// Temperature KD (Hinton et al. 2015) on classifier logits.
    Kd {
        /// Hinton et al. 2015 use T in 2–20; 4 is the common default (torchdistill).
        #[serde(default = "hinton_temperature")]
        temperature: f32,
        /// Weight of the term. torchdistill: 1.
        #[serde(default = "kd_weight")]
        weight: f32,
    },
    /// PKD (Cao et al., NeurIPS 2022): per-channel standardised maps, `MSE / 2` (= 1 − Pearson
    /// r), MMRazor's `PKDLoss`. A 1×1 align conv when the channel counts differ.
    Pkd {
        /// Student tap (`fpn.p3`; a classifier's `pool` too).
        student: String,
        /// Teacher tap of the same stride.
        teacher: String,
        /// MMRazor's Faster R-CNN config: `loss_weight=6` per FPN level (its RetinaNet
        /// students: 10).
        #[serde(default = "pkd_weight")]
        weight: f32,
    },
    /// CWD (Shu et al., ICCV 2021): per-channel spatial softmax at τ, `KL(t‖s)·τ² / (N·C)`.
    Cwd {
        student: String,
        teacher: String,
        /// τ. MMRazor's FPN configs: 1.
        #[serde(default = "cwd_temperature")]
        temperature: f32,
        /// MMRazor's Faster R-CNN / RetinaNet FPN configs: `loss_weight=10` per level.
        #[serde(default = "cwd_weight")]
        weight: f32,
    },
    /// MGD (Yang et al., ECCV 2022): a generator rebuilds the teacher's map from the randomly
    /// masked student map, `α·Σ(G(M⊙S) − T)² / N`.
    Mgd {
        student: String,
        teacher: String,
        /// α. The official `FeatureLoss` default (and RetinaNet config): 2e-5; its Faster R-CNN
        /// config: 5e-7.
        #[serde(default = "mgd_alpha")]
        alpha: f32,
        /// λ, the share of positions masked, in (0, 1). Official default 0.65; Faster R-CNN
        /// config 0.45.
        #[serde(default = "mgd_mask_ratio")]
        mask_ratio: f32,
    },
    /// FGD (Yang et al., CVPR 2022): focal (box-masked, attention-weighted) feature loss,
    /// attention loss and GcBlock global loss. Detectors only (it reads the boxes).
    Fgd {
        student: String,
        teacher: String,
        /// T of the attention softmaxes. Official: 0.5.
        #[serde(default = "fgd_temperature")]
        temperature: f32,
        /// α, foreground. Official default 1e-3 (Faster R-CNN config 5e-5).
        #[serde(default = "fgd_alpha")]
        alpha: f32,
        /// β, background. Official default 5e-4 (Faster R-CNN config 2.5e-5).
        #[serde(default = "fgd_beta")]
        beta: f32,
        /// γ, attention. Official default 1e-3 (Faster R-CNN config 5e-5, RetinaNet 5e-4).
        #[serde(default = "fgd_gamma")]
        gamma: f32,
        /// λ, global. Official default 5e-6 (Faster R-CNN config 5e-7).
        #[serde(default = "fgd_lambda")]
        lambda: f32,
    },
}

/// Chen et al. 2017 §3: γ = 0.5 (hint weight).
fn chen_gamma() -> f32 {
    0.5
}
/// Chen et al. 2017 Table 4's "Hints-A": with the adaptation layer.
fn adaptation_layer() -> bool {
    true
}
/// Chen et al. 2017: "using no temperature … works the best".
fn chen_temperature() -> f32 {
    1.0
}
/// Chen et al. 2017 (PASCAL): w0 = 1.5.
fn chen_background_weight() -> f32 {
    1.5
}
/// Not given by the paper: hard and soft loss weighed equally.
fn chen_mu() -> f32 {
    0.5
}
/// Chen et al. 2017 Eq. 4: ν = 0.5.
fn chen_nu() -> f32 {
    0.5
}
/// Chen et al. 2017 Table 4's "L2-B".
fn bounded_by_teacher() -> bool {
    true
}
/// torchdistill's KD default.
fn hinton_temperature() -> f32 {
    4.0
}
/// torchdistill's KD default.
fn kd_weight() -> f32 {
    1.0
}

/// MMRazor `pkd_fpn_frcnn_r101_frcnn_r50_2x_coco.py`: `loss_weight=6`.
fn pkd_weight() -> f32 {
    6.0
}
/// MMRazor `cwd_fpn_frcnn_r101_frcnn_r50_1x_coco.py`: `tau=1`.
fn cwd_temperature() -> f32 {
    1.0
}
/// MMRazor `cwd_fpn_frcnn_r101_frcnn_r50_1x_coco.py`: `loss_weight=10`.
fn cwd_weight() -> f32 {
    10.0
}
/// yzd-v/MGD `FeatureLoss`: `alpha_mgd=0.00002`.
fn mgd_alpha() -> f32 {
    2e-5
}
/// yzd-v/MGD `FeatureLoss`: `lambda_mgd=0.65`.
fn mgd_mask_ratio() -> f32 {
    0.65
}
/// yzd-v/FGD `FeatureLoss`: `temp=0.5`.
fn fgd_temperature() -> f32 {
    0.5
}
/// yzd-v/FGD `FeatureLoss`: `alpha_fgd=0.001`.
fn fgd_alpha() -> f32 {
    1e-3
}
/// yzd-v/FGD `FeatureLoss`: `beta_fgd=0.0005`.
fn fgd_beta() -> f32 {
    5e-4
}
/// yzd-v/FGD `FeatureLoss`: `gamma_fgd=0.001`.
fn fgd_gamma() -> f32 {
    1e-3
}
/// yzd-v/FGD `FeatureLoss`: `lambda_fgd=0.000005`.
fn fgd_lambda() -> f32 {
    5e-6
}

impl TeacherConfig {
    /// `p` is `teachers[i]`. Its `model.input` is checked against the student's when the
    /// teacher loads, which also sees architectures taken from a sidecar.
    pub fn validate(&self, p: &str) -> Check {
        if let Some(m) = &self.model {
            m.validate(&format!("{p}.model"))?;
        }
        if let Some(pr) = &self.pretrained {
            if self.model.is_some() {
                return Err(invalid(
                    format!("{p}.pretrained"),
                    "give either `model` (a kdet model) or `pretrained` (a candle-transformers model), not both",
                ));
            }
            pr.validate(&format!("{p}.pretrained"))?;
        }
        if self.weights.trim().is_empty() {
            return Err(invalid(
                format!("{p}.weights"),
                "must name a file or hf:// path",
            ));
        }
        unit(&format!("{p}.min_ap"), self.min_ap)?;
        crate::hub::validate_spec(&self.weights).map_err(|m| invalid(format!("{p}.weights"), m))?;
        self.keys.validate(&format!("{p}.keys"))
    }
}

/// A distillation temperature: logits are divided by it, so a tiny one overflows them to
/// inf/NaN and a huge one flattens every distribution to uniform. Published values lie in
/// 0.05–20 (SimCLRv2 0.1, Hinton et al. 1–20).
fn temperature_range<T: Into<f64> + Copy + std::fmt::LowerExp>(path: &str, t: T) -> Check {
    const RANGE: std::ops::RangeInclusive<f64> = 1e-3..=1e3;
    if RANGE.contains(&t.into()) {
        return Ok(());
    }
    Err(invalid(
        path,
        format!(
            "{t:e} is outside [{}, {}]: logits / T would overflow (small T) or lose all signal (large T)",
            RANGE.start(),
            RANGE.end()
        ),
    ))
}

/// The weight of a loss term: finite, >= 0 and at most 1e6 (published weights are below
/// 1e3, CBD's β = 100), so that a typo cannot overflow the f32 loss to inf.
fn loss_weight<T: Into<f64> + Copy + std::fmt::LowerExp>(path: &str, w: T) -> Check {
    nonneg(path, w.into())?;
    if w.into() > 1e6 {
        return Err(invalid(
            path,
            format!("{w:e} is above 1e6: the weighted loss would overflow (f32) to inf"),
        ));
    }
    Ok(())
}

/// The `distill` terms against the student's model and the teachers.
pub fn validate_terms(
    terms: &[DistillTerm],
    teachers: &[TeacherConfig],
    student: &ModelConfig,
) -> Check {
    for (i, d) in terms.iter().enumerate() {
        let p = format!("distill[{i}]");
        if teachers.is_empty() {
            return Err(invalid(
                &p,
                "distillation terms need at least one entry in `teachers`",
            ));
        }
        match d {
            DistillTerm::Hint {
                weight,
                student: st,
                teacher: tt,
                ..
            } => {
                loss_weight(&format!("{p}.weight"), *weight)?;
                let student_taps = student.taps();
                check_tap(&format!("{p}.student"), st, &student_taps)?;
                // A teacher without `model` takes it from its sidecar at load time, where its
                // taps are checked; here, any family's tap names are accepted.
                for t in teachers {
                    let taps = match &t.model {
                        Some(m) => m.taps(),
                        None => any_family_taps(),
                    };
                    check_tap(&format!("{p}.teacher"), tt, &taps)?;
                }
            }
            DistillTerm::WeightedKd {
                temperature,
                background_weight,
                mu,
                ..
            } => {
                temperature_range(&format!("{p}.temperature"), *temperature)?;
                loss_weight(&format!("{p}.background_weight"), *background_weight)?;
                unit(&format!("{p}.mu"), *mu as f64)?;
            }
            DistillTerm::BoundedRegression { margin, weight, .. } => {
                nonneg(&format!("{p}.margin"), *margin as f64)?;
                loss_weight(&format!("{p}.weight"), *weight)?;
            }
            DistillTerm::Kd {
                temperature,
                weight,
            } => {
                temperature_range(&format!("{p}.temperature"), *temperature)?;
                loss_weight(&format!("{p}.weight"), *weight)?;
            }
            DistillTerm::Pkd { weight, .. } => {
                nonneg(&format!("{p}.weight"), *weight as f64)?;
                check_feature_pair(&p, d, teachers, student)?;
            }
            DistillTerm::Cwd {
                temperature,
                weight,
                ..
            } => {
                positive(&format!("{p}.temperature"), *temperature as f64)?;
                nonneg(&format!("{p}.weight"), *weight as f64)?;
                check_feature_pair(&p, d, teachers, student)?;
            }
            DistillTerm::Mgd {
                alpha, mask_ratio, ..
            } => {
                nonneg(&format!("{p}.alpha"), *alpha as f64)?;
                if !(*mask_ratio > 0.0 && *mask_ratio < 1.0) {
                    return Err(invalid(format!("{p}.mask_ratio"), "must be in (0, 1)"));
                }
                check_feature_pair(&p, d, teachers, student)?;
            }
            DistillTerm::Fgd {
                temperature,
                alpha,
                beta,
                gamma,
                lambda,
                ..
            } => {
                positive(&format!("{p}.temperature"), *temperature as f64)?;
                for (k, v) in [
                    ("alpha", alpha),
                    ("beta", beta),
                    ("gamma", gamma),
                    ("lambda", lambda),
                ] {
                    nonneg(&format!("{p}.{k}"), *v as f64)?;
                }
                if student.classifies_images() {
                    return Err(invalid(
                        &p,
                        "fgd masks the maps with the ground-truth boxes, which a classifier's data has not; use pkd, cwd or mgd",
                    ));
                }
                check_feature_pair(&p, d, teachers, student)?;
            }
        }
    }
    Ok(())
}

impl DistillTerm {
    /// The method name of a feature-distillation term (PKD, CWD, MGD, FGD), else none.
    pub fn feature_method(&self) -> Option<&'static str> {
        match self {
            DistillTerm::Pkd { .. } => Some("pkd"),
            DistillTerm::Cwd { .. } => Some("cwd"),
            DistillTerm::Mgd { .. } => Some("mgd"),
            DistillTerm::Fgd { .. } => Some("fgd"),
            _ => None,
        }
    }

    /// The (student, teacher) taps of a tap-reading term.
    pub fn tap_pair(&self) -> Option<(&str, &str)> {
        match self {
            DistillTerm::Hint {
                student, teacher, ..
            }
            | DistillTerm::Pkd {
                student, teacher, ..
            }
            | DistillTerm::Cwd {
                student, teacher, ..
            }
            | DistillTerm::Mgd {
                student, teacher, ..
            }
            | DistillTerm::Fgd {
                student, teacher, ..
            } => Some((student, teacher)),
            _ => None,
        }
    }
}

/// A feature term's taps: names that exist, a spatial map where the method needs one, and —
/// for teachers whose architecture the config gives — equal strides (taps pair by stride, as
/// hints do; teachers from a sidecar are checked when they load).
fn check_feature_pair(
    p: &str,
    d: &DistillTerm,
    teachers: &[TeacherConfig],
    student: &ModelConfig,
) -> Check {
    let (Some(method), Some((st, tt))) = (d.feature_method(), d.tap_pair()) else {
        return Ok(());
    };
    let student_taps = student.taps();
    check_tap(&format!("{p}.student"), st, &student_taps)?;
    let stap = student_taps
        .iter()
        .find(|t| t.name == st)
        .expect("checked above");
    if stap.stride == 0 && method != "pkd" {
        return Err(invalid(
            format!("{p}.student"),
            format!(
                "`{st}` is a pooled vector; {method} needs a spatial map ({})",
                match method {
                    "mgd" => "its generator's 3×3 convolutions and spatial mask",
                    "cwd" => "a softmax over positions",
                    _ => "attention over positions and box masks",
                }
            ),
        ));
    }
    if method == "fgd" && stap.channels < 2 {
        return Err(invalid(
            format!("{p}.student"),
            "fgd's GcBlock halves the channels; the tap needs at least 2",
        ));
    }
    for (j, t) in teachers.iter().enumerate() {
        let taps = match &t.model {
            Some(m) => m.taps(),
            None => any_family_taps(),
        };
        check_tap(&format!("{p}.teacher"), tt, &taps)?;
        if let Some(m) = &t.model {
            let ttap = m
                .taps()
                .into_iter()
                .find(|x| x.name == tt)
                .expect("checked above");
            if ttap.stride != stap.stride {
                return Err(invalid(
                    p,
                    format!(
                        "student tap `{st}` (stride {}) and teachers[{j}] tap `{tt}` (stride {}) differ in stride; {method} pairs maps of the same stride",
                        stap.stride, ttap.stride
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The tap names of every family at its default settings.
fn any_family_taps() -> Vec<TapSpec> {
    let mut v: Vec<TapSpec> = vec![];
    for arch in ModelConfig::ARCHS {
        let m: ModelConfig = serde_json::from_value(serde_json::json!({ "arch": arch }))
            .expect("every family has defaults");
        for t in m.taps() {
            if !v.iter().any(|x| x.name == t.name) {
                v.push(t);
            }
        }
    }
    v
}

fn check_tap(path: &str, tap: &str, taps: &[TapSpec]) -> Check {
    if taps.iter().any(|t| t.name == tap) {
        return Ok(());
    }
    Err(invalid(
        path,
        format!("`{tap}` is not a tap; use {}", describe_taps(taps)),
    ))
}

/// `backbone.c2..c5 or fpn.p2..p6`: runs of numbered taps shortened.
pub fn describe_taps(taps: &[TapSpec]) -> String {
    let mut groups: Vec<(String, Vec<String>)> = vec![];
    for t in taps {
        let stem = t.name.trim_end_matches(|c: char| c.is_ascii_digit());
        let num = &t.name[stem.len()..];
        match groups.iter_mut().find(|(s, _)| s == stem) {
            Some((_, v)) => v.push(num.to_string()),
            None => groups.push((stem.to_string(), vec![num.to_string()])),
        }
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(stem, nums)| match (nums.first(), nums.last()) {
            (Some(a), Some(b)) if nums.len() > 1 => format!("{stem}{a}..{b}"),
            (Some(a), _) => format!("{stem}{a}"),
            _ => stem,
        })
        .collect();
    match parts.len() {
        0 => "none (the model has no taps)".into(),
        1 => parts[0].clone(),
        n => format!("{} or {}", parts[..n - 1].join(", "), parts[n - 1]),
    }
}

#[cfg(test)]
mod feature_term_tests {
    /// The error a config gives, as the user sees it.
    fn err(json: serde_json::Value) -> String {
        match crate::config::from_str("x.json", &json.to_string()) {
            Ok(_) => panic!("{json} loaded"),
            Err(e) => e.to_string(),
        }
    }

    fn with_terms(terms: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"teachers": [{"weights": "t", "model": {"arch": "faster_rcnn"}}],
                           "distill": terms})
    }

    #[test]
    fn feature_terms_name_the_key_of_what_is_wrong() {
        let cases = [
            (
                with_terms(serde_json::json!([{"type": "pkd", "student": "fpn.p9", "teacher": "fpn.p3"}])),
                "x.json: distill[0].student: `fpn.p9` is not a tap",
            ),
            (
                with_terms(serde_json::json!([{"type": "cwd", "student": "fpn.p3", "teacher": "fpn.p8"}])),
                "x.json: distill[0].teacher: `fpn.p8` is not a tap",
            ),
            (
                with_terms(serde_json::json!([{"type": "mgd", "student": "fpn.p3", "teacher": "fpn.p4"}])),
                "x.json: distill[0]: student tap `fpn.p3` (stride 8) and teachers[0] tap `fpn.p4` (stride 16) differ in stride; mgd pairs maps of the same stride",
            ),
            (
                with_terms(serde_json::json!([{"type": "cwd", "student": "fpn.p3", "teacher": "fpn.p3", "temperature": 0}])),
                "x.json: distill[0].temperature: must be > 0",
            ),
            (
                with_terms(serde_json::json!([{"type": "fgd", "student": "fpn.p3", "teacher": "fpn.p3", "temperature": -0.5}])),
                "x.json: distill[0].temperature: must be > 0",
            ),
            (
                with_terms(serde_json::json!([{"type": "mgd", "student": "fpn.p3", "teacher": "fpn.p3", "mask_ratio": 1.0}])),
                "x.json: distill[0].mask_ratio: must be in (0, 1)",
            ),
            (
                with_terms(serde_json::json!([{"type": "mgd", "student": "fpn.p3", "teacher": "fpn.p3", "mask_ratio": 0}])),
                "x.json: distill[0].mask_ratio: must be in (0, 1)",
            ),
            (
                with_terms(serde_json::json!([{"type": "fgd", "student": "fpn.p3", "teacher": "fpn.p3", "lambda": -1}])),
                "x.json: distill[0].lambda: must be >= 0",
            ),
            (
                with_terms(serde_json::json!([{"type": "pkd", "student": "fpn.p3", "teacher": "fpn.p3", "weight": -6}])),
                "x.json: distill[0].weight: must be >= 0",
            ),
            (
                with_terms(serde_json::json!([{"type": "pkd", "student": "fpn.p3", "teacher": "fpn.p3", "tau": 1}])),
                "x.json: distill[0]: unknown field `tau`",
            ),
            (
                serde_json::json!({"model": {"arch": "classifier"}, "teachers": [{"weights": "t"}],
                    "distill": [{"type": "mgd", "student": "pool", "teacher": "pool"}]}),
                "x.json: distill[0].student: `pool` is a pooled vector; mgd needs a spatial map (its generator's 3×3 convolutions and spatial mask)",
            ),
            (
                serde_json::json!({"model": {"arch": "classifier"}, "teachers": [{"weights": "t"}],
                    "distill": [{"type": "fgd", "student": "backbone.c5", "teacher": "backbone.c5"}]}),
                "x.json: distill[0]: fgd masks the maps with the ground-truth boxes",
            ),
        ];
        for (json, want) in cases {
            let e = err(json.clone());
            assert!(e.contains(want), "{json}\n  gave: {e}\n  want: {want}");
        }
        // PKD reads a classifier's pooled vector; a teacher without `model` pairs at load time.
        for ok in [
            serde_json::json!({"model": {"arch": "classifier"}, "teachers": [{"weights": "t"}],
                "distill": [{"type": "pkd", "student": "pool", "teacher": "pool"}]}),
            serde_json::json!({"teachers": [{"weights": "t"}],
                "distill": [{"type": "fgd", "student": "fpn.p3", "teacher": "fpn.p3"},
                            {"type": "mgd", "student": "fpn.p4", "teacher": "fpn.p4"}]}),
        ] {
            crate::config::from_str("x.json", &ok.to_string()).unwrap();
        }
    }
}
