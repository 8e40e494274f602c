//! JSON run configuration: serde types, `base` inheritance by deep merge, and validation whose
//! errors name the file and the JSON path (`configs/x.json: solver.lr: must be > 0`).
//!
//! Every default equals the reference implementation's value; the doc comment on each field
//! says where it comes from. "torchvision" means `torchvision/models/detection/faster_rcnn.py`
//! (v0.2x, `fasterrcnn_resnet50_fpn`), "references" means torchvision's
//! `references/detection/train.py` recipe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// A whole run: what to train, from what data, how, and where to write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The network being trained (the student when teachers are given).
    #[serde(default)]
    pub model: ModelConfig,
    /// Frozen teachers for distillation; empty for plain training.
    #[serde(default)]
    pub teachers: Vec<TeacherConfig>,
    /// Distillation loss terms, summed with the student's own losses.
    #[serde(default)]
    pub distill: Vec<DistillTerm>,
    /// Datasets and augmentation.
    #[serde(default)]
    pub data: DataConfig,
    /// Optimizer, learning-rate schedule and run length.
    #[serde(default)]
    pub solver: SolverConfig,
    /// Where checkpoints, metrics and plots go.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// `cpu`, `cuda`, `cuda:N` or `metal`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Fixes data order, augmentation and initialisation.
    #[serde(default)]
    pub seed: u64,
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("runs/default")
}
fn default_device() -> String {
    "cpu".into()
}

impl Default for Config {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default())).expect("defaults deserialize")
    }
}

/// Detector (or classifier) architecture.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Which model family.
    #[serde(default)]
    pub arch: Arch,
    #[serde(default)]
    pub backbone: BackboneConfig,
    #[serde(default)]
    pub fpn: FpnConfig,
    /// Input transform (GeneralizedRCNNTransform in torchvision).
    #[serde(default)]
    pub input: InputConfig,
    #[serde(default)]
    pub rpn: RpnConfig,
    #[serde(default)]
    pub roi_heads: RoiHeadsConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default())).expect("defaults deserialize")
    }
}

/// Model family.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Faster R-CNN with FPN (torchvision's `FasterRCNN`).
    #[default]
    FasterRcnn,
    /// PAA (Kim & Lee 2020, mmdetection's `PAAHead`).
    Paa,
    /// Backbone + linear head for classification distillation.
    Classifier,
}

/// Normalisation layers of the backbone.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// FrozenBatchNorm2d: torchvision's choice for pretrained detection backbones.
    #[default]
    FrozenBn,
    /// Trainable BatchNorm (training from scratch).
    Bn,
    /// GroupNorm with 32 groups (Wu & He 2018).
    Gn,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    /// ResNet depth: 18, 34, 50 or 101. torchvision: `fasterrcnn_resnet50_fpn` → 50.
    #[serde(default = "d_depth")]
    pub depth: u32,
    /// Channel width multiplier (1.0 = torchvision's widths); key names do not change.
    #[serde(default = "d_one")]
    pub width: f64,
    /// torchvision: FrozenBatchNorm2d when pretrained.
    #[serde(default)]
    pub norm: NormKind,
    /// Number of trainable ResNet stages counted from the top. torchvision: 3.
    #[serde(default = "d_trainable_layers")]
    pub trainable_layers: u32,
    /// Optional ImageNet-style backbone weights (local path or `hf://owner/repo/file@rev`;
    /// safetensors or a PyTorch `.pth`). Unprefixed ResNet names (`conv1.weight`,
    /// `layer1.0.…`) land under `backbone.body.`; the classifier (`fc.*`) is ignored.
    #[serde(default)]
    pub weights: Option<String>,
    /// How to rename the keys of `weights` onto kdet's names; none needed for torchvision's
    /// or timm's plain ResNets.
    #[serde(default)]
    pub weights_keys: KeyRules,
    /// eps of the backbone's BatchNorm / FrozenBatchNorm2d. torchvision: 1e-5; its
    /// COCO-pretrained Faster R-CNN weights expect 0 (the builder's `overwrite_eps(model, 0.0)`).
    #[serde(default = "d_bn_eps")]
    pub bn_eps: f64,
}

impl Default for BackboneConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default())).expect("defaults deserialize")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FpnConfig {
    /// FPN channels. torchvision: 256.
    #[serde(default = "d_fpn_channels")]
    pub out_channels: usize,
}

impl Default for FpnConfig {
    fn default() -> Self {
        Self {
            out_channels: d_fpn_channels(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Shorter side after resize. torchvision: 800.
    #[serde(default = "d_min_size")]
    pub min_size: u32,
    /// Cap on the longer side. torchvision: 1333.
    #[serde(default = "d_max_size")]
    pub max_size: u32,
    /// Per-channel mean of RGB in [0,1]. torchvision: ImageNet [0.485, 0.456, 0.406].
    #[serde(default = "d_mean")]
    pub mean: [f32; 3],
    /// Per-channel std. torchvision: ImageNet [0.229, 0.224, 0.225].
    #[serde(default = "d_std")]
    pub std: [f32; 3],
    /// Batch padded to a multiple of this. torchvision: 32.
    #[serde(default = "d_size_divisible")]
    pub size_divisible: u32,
}

impl Default for InputConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default())).expect("defaults deserialize")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RpnConfig {
    /// Anchor sizes per FPN level. torchvision: ((32,), (64,), (128,), (256,), (512,)).
    #[serde(default = "d_anchor_sizes")]
    pub anchor_sizes: Vec<f32>,
    /// Aspect ratios (h/w) at every level. torchvision: (0.5, 1.0, 2.0).
    #[serde(default = "d_aspect_ratios")]
    pub aspect_ratios: Vec<f32>,
    /// torchvision: rpn_pre_nms_top_n_train = 2000.
    #[serde(default = "d_2000")]
    pub pre_nms_top_n_train: usize,
    /// torchvision: rpn_pre_nms_top_n_test = 1000.
    #[serde(default = "d_1000")]
    pub pre_nms_top_n_test: usize,
    /// torchvision: rpn_post_nms_top_n_train = 2000.
    #[serde(default = "d_2000")]
    pub post_nms_top_n_train: usize,
    /// torchvision: rpn_post_nms_top_n_test = 1000.
    #[serde(default = "d_1000")]
    pub post_nms_top_n_test: usize,
    /// torchvision: rpn_nms_thresh = 0.7.
    #[serde(default = "d_0_7")]
    pub nms_thresh: f32,
    /// torchvision: rpn_fg_iou_thresh = 0.7.
    #[serde(default = "d_0_7")]
    pub fg_iou_thresh: f32,
    /// torchvision: rpn_bg_iou_thresh = 0.3.
    #[serde(default = "d_0_3")]
    pub bg_iou_thresh: f32,
    /// torchvision: rpn_batch_size_per_image = 256.
    #[serde(default = "d_256")]
    pub batch_size_per_image: usize,
    /// torchvision: rpn_positive_fraction = 0.5.
    #[serde(default = "d_0_5")]
    pub positive_fraction: f32,
    /// torchvision: rpn_score_thresh = 0.0.
    #[serde(default)]
    pub score_thresh: f32,
}

impl Default for RpnConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default())).expect("defaults deserialize")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoiHeadsConfig {
    /// MultiScaleRoIAlign output size. torchvision: 7.
    #[serde(default = "d_7")]
    pub pool_size: usize,
    /// MultiScaleRoIAlign sampling_ratio. torchvision: 2.
    #[serde(default = "d_2")]
    pub sampling_ratio: usize,
    /// TwoMLPHead width. torchvision: 1024.
    #[serde(default = "d_1024")]
    pub representation_size: usize,
    /// torchvision: box_fg_iou_thresh = 0.5.
    #[serde(default = "d_0_5")]
    pub fg_iou_thresh: f32,
    /// torchvision: box_bg_iou_thresh = 0.5.
    #[serde(default = "d_0_5")]
    pub bg_iou_thresh: f32,
    /// torchvision: box_batch_size_per_image = 512.
    #[serde(default = "d_512")]
    pub batch_size_per_image: usize,
    /// torchvision: box_positive_fraction = 0.25.
    #[serde(default = "d_0_25")]
    pub positive_fraction: f32,
    /// torchvision: bbox_reg_weights = (10, 10, 5, 5).
    #[serde(default = "d_reg_weights")]
    pub bbox_reg_weights: [f32; 4],
    /// torchvision: box_score_thresh = 0.05.
    #[serde(default = "d_0_05")]
    pub score_thresh: f32,
    /// torchvision: box_nms_thresh = 0.5.
    #[serde(default = "d_0_5")]
    pub nms_thresh: f32,
    /// torchvision: box_detections_per_img = 100.
    #[serde(default = "d_100")]
    pub detections_per_img: usize,
}

impl Default for RoiHeadsConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default())).expect("defaults deserialize")
    }
}

/// Precision a frozen teacher runs in (and an export's storage type).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl DType {
    pub fn to_candle(self) -> candle_core::DType {
        match self {
            DType::F32 => candle_core::DType::F32,
            DType::F16 => candle_core::DType::F16,
            DType::Bf16 => candle_core::DType::BF16,
        }
    }
}

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
    pub dtype: DType,
    /// Missing/unexpected keys are fatal unless false.
    #[serde(default = "d_true")]
    pub strict: bool,
    /// Before training, evaluate the teacher on this many validation images and stop when its AP
    /// is below `min_ap` — a teacher that silently did not load is the most common way a
    /// "distilled" run ends up equal to the baseline. 0 skips the check.
    #[serde(default = "d_check_images")]
    pub check_images: usize,
    /// Smallest acceptable teacher AP (COCO AP@[.5:.95]) on the check images.
    #[serde(default = "d_min_ap")]
    pub min_ap: f64,
    /// How to rename the checkpoint's keys onto kdet's (torchvision's) names.
    #[serde(default)]
    pub keys: KeyRules,
}

fn d_check_images() -> usize {
    64
}

fn d_min_ap() -> f64 {
    0.01
}

/// How to rename a checkpoint's keys onto kdet's names, which are torchvision's
/// (`backbone.body.layer1.0.conv1.weight`, `backbone.fpn.inner_blocks.0.0.weight`, …).
/// Every key is first stripped of each of `strip_prefixes` it starts with (in order), then
/// the first `rename` rule whose `from` it starts with replaces that prefix by `to`.
///
/// Typical recipes:
/// - torchvision detection checkpoints (also its older names such as
///   `backbone.fpn.inner_blocks.0.weight`, upgraded on load): none.
/// - a checkpoint saved from `nn.DataParallel` / `DistributedDataParallel`:
///   `"strip_prefixes": ["module."]`.
/// - backbone weights (`model.backbone.weights_keys`) from torchvision's or timm's plain
///   ResNets (`conv1.weight`, `bn1.*`, `layer1.0.downsample.0.weight`, `fc.*`): none.
/// - the backbone and neck of an mmdetection Faster R-CNN (pytorch-style ResNet, `FPN` neck):
///   `{"from": "backbone.", "to": "backbone.body."}` (its ResNet uses torchvision's names),
///   and per FPN level N, `{"from": "neck.lateral_convs.N.conv.", "to":
///   "backbone.fpn.inner_blocks.N.0."}` and `{"from": "neck.fpn_convs.N.conv.", "to":
///   "backbone.fpn.layer_blocks.N.0."}` (mmcv's `ConvModule` keeps its conv in `.conv`).
///   mmdetection's heads are not a matter of names (its background class is the last
///   logit, torchvision's the first), so renames alone do not load them.
///
/// A rule with an empty `from` matches every key: put last, it adds a prefix.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyRules {
    /// Prefixes removed from the start of every key that has them, in this order.
    #[serde(default)]
    pub strip_prefixes: Vec<String>,
    /// Prefix renames, tried in order after stripping; the first match wins.
    #[serde(default)]
    pub rename: Vec<KeyRename>,
}

/// One prefix rename: a key starting with `from` gets `to` instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyRename {
    pub from: String,
    pub to: String,
}

impl KeyRules {
    /// Whether no rule is set (keys stay as they are).
    pub fn is_empty(&self) -> bool {
        self.strip_prefixes.is_empty() && self.rename.is_empty()
    }

    /// The kdet name for a checkpoint key.
    pub fn apply(&self, key: &str) -> String {
        let mut k = key;
        for p in &self.strip_prefixes {
            if let Some(rest) = k.strip_prefix(p.as_str()) {
                k = rest;
            }
        }
        for r in &self.rename {
            if let Some(rest) = k.strip_prefix(r.from.as_str()) {
                return format!("{}{rest}", r.to);
            }
        }
        k.to_string()
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

/// One distillation loss term. See ../shared/research/methods.md §1 and docs/methods.md.
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
        #[serde(default = "d_0_5")]
        weight: f32,
        #[serde(default)]
        distance: HintDistance,
        #[serde(default)]
        spatial: SpatialMatch,
        /// The 1×1 adaptation conv (Chen et al. 2017's "Hints-A"); `false` compares the student
        /// tap to the teacher's directly ("Hints"), which needs equal channel counts.
        #[serde(default = "d_true")]
        adaptation: bool,
    },
    /// Weighted soft cross-entropy with background weight (Chen et al. 2017 Eq. 2–3).
    WeightedKd {
        stage: Stage,
        /// Temperature. Chen et al. 2017: T = 1 works best.
        #[serde(default = "d_one_f32")]
        temperature: f32,
        /// w0, weight of the background class. Chen et al. 2017 (PASCAL): 1.5.
        #[serde(default = "d_1_5")]
        background_weight: f32,
        /// μ balancing hard and soft loss. Not given by the paper; 0.5.
        #[serde(default = "d_0_5")]
        mu: f32,
    },
    /// Teacher-bounded L2 regression (Chen et al. 2017 Eq. 4).
    BoundedRegression {
        stage: Stage,
        /// Margin m. Not given by the paper; 0.
        #[serde(default)]
        margin: f32,
        /// ν. Chen et al. 2017: 0.5.
        #[serde(default = "d_0_5")]
        weight: f32,
        /// `false`: plain L2 between student and teacher deltas, `‖R_s − R_t‖²` (the "L2" row of
        /// Chen et al. 2017 Table 4, which the bound was introduced to fix).
        #[serde(default = "d_true")]
        bounded: bool,
    },
    /// Temperature KD (Hinton et al. 2015) on classifier logits.
    Kd {
        /// Hinton et al. 2015 use T in 2–20; 4 is the common default (torchdistill).
        #[serde(default = "d_4")]
        temperature: f32,
        #[serde(default = "d_one_f32")]
        weight: f32,
    },
}

/// A detection split on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// COCO instances JSON (relative to the config file's folder, or absolute).
    pub annotations: PathBuf,
    /// Folder holding the images named by `images[].file_name`.
    pub images: PathBuf,
}

/// A synthetic dataset generated on first use (see `kdet synth`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SynthSpec {
    #[serde(default)]
    pub seed: u64,
    /// Number of training images.
    #[serde(default = "d_synth_train")]
    pub train: usize,
    /// Number of validation images.
    #[serde(default = "d_synth_val")]
    pub val: usize,
    /// Side of the square images in pixels.
    #[serde(default = "d_synth_size")]
    pub size: u32,
    /// Number of shape classes (at most the number of shapes kdet draws).
    #[serde(default = "d_synth_classes")]
    pub classes: usize,
    /// Imbalance ratio (most / least frequent class); 1 = balanced.
    #[serde(default = "d_one")]
    pub long_tail: f64,
    /// Cache folder; the dataset lands in a sub-folder named by the spec's hash.
    #[serde(default = "d_cache_dir")]
    pub cache_dir: PathBuf,
}

/// How training images are drawn.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Each image once per epoch in a seeded random order.
    #[default]
    Instance,
    /// A class uniformly, then an image holding it (class-balanced sampling, as CBD uses).
    ClassBalanced,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default)]
    pub train: Option<SplitConfig>,
    #[serde(default)]
    pub val: Option<SplitConfig>,
    /// Use a generated dataset instead of `train`/`val`.
    #[serde(default)]
    pub synthetic: Option<SynthSpec>,
    /// Horizontal flip probability in training. references: 0.5 (`--data-augmentation hflip`).
    #[serde(default = "d_0_5")]
    pub flip_prob: f32,
    /// Training boxes whose width or height is ≤ this (pixels) are dropped with a counted
    /// warning. references: 0 (ConvertCocoPolysToMask keeps x2 > x1 and y2 > y1).
    #[serde(default)]
    pub min_box_size: f64,
    /// Decoding threads. references: `--workers 4`; 2 here to match a 2-core CPU.
    #[serde(default = "d_2")]
    pub workers: usize,
    /// Batches each worker may prepare ahead.
    #[serde(default = "d_2")]
    pub prefetch: usize,
    #[serde(default)]
    pub sampler: SamplerKind,
}

impl Default for DataConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default())).expect("defaults deserialize")
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// references: SGD with momentum.
    #[default]
    Sgd,
    /// candle-nn's AdamW (decoupled weight decay).
    Adamw,
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// Multiply by `gamma` at each milestone (in iterations when `solver.iterations` is set,
    /// else in epochs). references: milestones [16, 22] epochs, gamma 0.1.
    Step {
        milestones: Vec<u64>,
        #[serde(default = "d_0_1")]
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SolverConfig {
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// references: 0.02 for 16 images per step (8 GPUs × 2).
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// references: 0.9.
    #[serde(default = "d_0_9")]
    pub momentum: f64,
    /// PyTorch SGD default: 0.
    #[serde(default)]
    pub dampening: f64,
    /// PyTorch SGD default: false.
    #[serde(default)]
    pub nesterov: bool,
    /// references: 1e-4.
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Weight decay of normalisation parameters; null = `weight_decay`.
    /// references: `--norm-weight-decay` (None).
    #[serde(default)]
    pub norm_weight_decay: Option<f64>,
    /// Weight decay of biases; null = `weight_decay` (torchvision's `set_weight_decay`).
    #[serde(default)]
    pub bias_weight_decay: Option<f64>,
    /// AdamW betas. PyTorch default: (0.9, 0.999).
    #[serde(default = "d_betas")]
    pub betas: [f64; 2],
    /// AdamW eps. PyTorch default: 1e-8.
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Linear warmup length in iterations. references: min(1000, len(loader) - 1).
    #[serde(default = "d_1000_u64")]
    pub warmup_iters: u64,
    /// Start factor of the warmup. references: 1/1000.
    #[serde(default = "d_warmup_factor")]
    pub warmup_factor: f64,
    /// null = the references' step schedule scaled to the run: ×0.1 at 16/26 and 22/26 of it
    /// (epochs 16 and 22 of 26).
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Run length in iterations (exclusive with `epochs`).
    #[serde(default)]
    pub iterations: Option<u64>,
    /// Run length in epochs. references: 26.
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Images per step. references: 2 per GPU.
    #[serde(default = "d_2")]
    pub batch_size: usize,
    /// Max global gradient L2 norm; null = no clipping (references).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Evaluate on val every N iterations (0 = only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Write a checkpoint every N iterations (0 = only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Log metrics every N iterations. references: print_freq 20.
    #[serde(default = "d_20")]
    pub log_every: u64,
}

impl Default for SolverConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default())).expect("defaults deserialize")
    }
}

impl SolverConfig {
    /// Run length as (number, unit is epochs). Validation guarantees exactly one is set or
    /// neither (then the references' 26 epochs).
    pub fn length(&self) -> (u64, bool) {
        match (self.iterations, self.epochs) {
            (Some(i), _) => (i, false),
            (None, Some(e)) => (e, true),
            (None, None) => (26, true),
        }
    }

    /// The schedule in force: the configured one, or the references' steps scaled to the run.
    pub fn schedule(&self) -> Schedule {
        match &self.schedule {
            Some(s) => s.clone(),
            None => {
                let (len, _) = self.length();
                let at = |num: u64| ((len * num) as f64 / 26.0).round() as u64;
                Schedule::Step {
                    milestones: vec![at(16), at(22)],
                    gamma: 0.1,
                }
            }
        }
    }
}

fn d_depth() -> u32 {
    50
}
fn d_bn_eps() -> f64 {
    1e-5
}
fn d_one() -> f64 {
    1.0
}
fn d_one_f32() -> f32 {
    1.0
}
fn d_trainable_layers() -> u32 {
    3
}
fn d_fpn_channels() -> usize {
    256
}
fn d_min_size() -> u32 {
    800
}
fn d_max_size() -> u32 {
    1333
}
fn d_mean() -> [f32; 3] {
    [0.485, 0.456, 0.406]
}
fn d_std() -> [f32; 3] {
    [0.229, 0.224, 0.225]
}
fn d_size_divisible() -> u32 {
    32
}
fn d_anchor_sizes() -> Vec<f32> {
    vec![32., 64., 128., 256., 512.]
}
fn d_aspect_ratios() -> Vec<f32> {
    vec![0.5, 1.0, 2.0]
}
fn d_2000() -> usize {
    2000
}
fn d_1000() -> usize {
    1000
}
fn d_1000_u64() -> u64 {
    1000
}
fn d_0_7() -> f32 {
    0.7
}
fn d_0_3() -> f32 {
    0.3
}
fn d_0_5() -> f32 {
    0.5
}
fn d_0_25() -> f32 {
    0.25
}
fn d_0_05() -> f32 {
    0.05
}
fn d_1_5() -> f32 {
    1.5
}
fn d_4() -> f32 {
    4.0
}
fn d_0_1() -> f64 {
    0.1
}
fn d_0_9() -> f64 {
    0.9
}
fn d_256() -> usize {
    256
}
fn d_512() -> usize {
    512
}
fn d_7() -> usize {
    7
}
fn d_2() -> usize {
    2
}
fn d_20() -> u64 {
    20
}
fn d_100() -> usize {
    100
}
fn d_1024() -> usize {
    1024
}
fn d_reg_weights() -> [f32; 4] {
    [10., 10., 5., 5.]
}
fn d_true() -> bool {
    true
}
fn d_synth_train() -> usize {
    512
}
fn d_synth_val() -> usize {
    128
}
fn d_synth_size() -> u32 {
    128
}
fn d_synth_classes() -> usize {
    5
}
fn d_cache_dir() -> PathBuf {
    PathBuf::from(".cache/kdet")
}
fn d_lr() -> f64 {
    0.02
}
fn d_wd() -> f64 {
    1e-4
}
fn d_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn d_eps() -> f64 {
    1e-8
}
fn d_warmup_factor() -> f64 {
    1e-3
}

/// A config as loaded: the merged document, the typed config, and which file set each value.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// The file the user named.
    pub path: PathBuf,
    /// JSON path → the file (after `base` inheritance) that last set it.
    origins: BTreeMap<String, PathBuf>,
}

impl LoadedConfig {
    /// The same run without teachers and distillation terms — same student, data, seed and
    /// schedule — writing to `<output_dir>_baseline` (`kdet train --baseline`).
    pub fn without_distillation(&self) -> LoadedConfig {
        let mut b = self.clone();
        b.config.teachers.clear();
        b.config.distill.clear();
        let mut name = self
            .config
            .output_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push("_baseline");
        b.config.output_dir.set_file_name(name);
        b
    }

    /// The file that set `json_path` (or its nearest parent), for error messages.
    pub fn origin(&self, json_path: &str) -> &Path {
        let mut p = json_path.to_string();
        loop {
            if let Some(f) = self.origins.get(&p) {
                return f;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return &self.path,
            }
        }
    }

    /// A located error about `json_path`, naming the file that set it.
    pub fn error(&self, json_path: &str, msg: impl Into<String>) -> Error {
        Error::located(self.origin(json_path), json_path, msg)
    }

    /// Resolve a path written in the config: relative paths are taken from the folder of the
    /// file that set the value.
    pub fn resolve(&self, json_path: &str, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        let origin = self.origin(json_path);
        origin.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Load a config file: follow `base` links (relative to each file), deep-merge, parse, validate.
pub fn load(path: &Path) -> Result<LoadedConfig> {
    let mut origins = BTreeMap::new();
    let mut chain = Vec::new();
    let merged = load_merged(path, &mut origins, &mut chain)?;
    let config: Config = {
        let text = serde_json::to_vec(&merged).map_err(|e| Error::msg(e.to_string()))?;
        let mut de = serde_json::Deserializer::from_slice(&text);
        match serde_path_to_error::deserialize(&mut de) {
            Ok(c) => c,
            Err(e) => {
                let p = e.path().to_string();
                let tmp = LoadedConfig {
                    config: Config::default(),
                    path: path.to_path_buf(),
                    origins,
                };
                return Err(tmp.error(&p, e.into_inner().to_string()));
            }
        }
    };
    let loaded = LoadedConfig {
        config,
        path: path.to_path_buf(),
        origins,
    };
    validate(&loaded)?;
    Ok(loaded)
}

/// Parse a config from a JSON string (no `base` support); for tests and programmatic use.
pub fn from_str(name: &str, text: &str) -> Result<LoadedConfig> {
    let file = PathBuf::from(name);
    let config: Config = crate::error::parse_json(&file, text.as_bytes())?;
    let loaded = LoadedConfig {
        config,
        path: file,
        origins: BTreeMap::new(),
    };
    validate(&loaded)?;
    Ok(loaded)
}

fn load_merged(
    path: &Path,
    origins: &mut BTreeMap<String, PathBuf>,
    chain: &mut Vec<PathBuf>,
) -> Result<Value> {
    let canon = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    if chain.contains(&canon) {
        return Err(Error::located(
            path,
            "base",
            format!(
                "inheritance cycle: {}",
                chain
                    .iter()
                    .chain([&canon])
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        ));
    }
    chain.push(canon);
    let bytes = crate::error::read_file(path)?;
    let mut doc: Value = crate::error::parse_json(path, &bytes)?;
    let Value::Object(map) = &mut doc else {
        return Err(Error::located(path, ".", "a config must be a JSON object"));
    };
    let base = map.remove("base");
    let mut merged = match base {
        None => Value::Object(Default::default()),
        Some(Value::String(b)) => {
            let base_path = path.parent().unwrap_or(Path::new(".")).join(&b);
            if !base_path.exists() {
                return Err(Error::located(
                    path,
                    "base",
                    format!("{} does not exist", base_path.display()),
                ));
            }
            load_merged(&base_path, origins, chain)?
        }
        Some(other) => {
            return Err(Error::located(
                path,
                "base",
                format!("must be a string (a relative path), got {other}"),
            ))
        }
    };
    deep_merge(&mut merged, doc, "", path, origins);
    chain.pop();
    Ok(merged)
}

/// Merge `over` into `into`: objects merge key by key, anything else replaces. Records the file
/// that set each path.
fn deep_merge(
    into: &mut Value,
    over: Value,
    prefix: &str,
    file: &Path,
    origins: &mut BTreeMap<String, PathBuf>,
) {
    match (into, over) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match a.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => {
                        deep_merge(slot, v, &p, file, origins)
                    }
                    _ => {
                        // A replaced subtree belongs wholly to this file.
                        origins.retain(|key, _| {
                            !(key == &p
                                || key.starts_with(&format!("{p}."))
                                || key.starts_with(&format!("{p}[")))
                        });
                        origins.insert(p, file.to_path_buf());
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Check value ranges and cross-field rules; errors name file and JSON path.
pub fn validate(c: &LoadedConfig) -> Result<()> {
    let cfg = &c.config;
    let err = |p: &str, m: &str| Err(c.error(p, m));
    validate_model(c, &cfg.model, "model")?;
    for (i, t) in cfg.teachers.iter().enumerate() {
        // Its `model.input` is checked against the student's in `Teacher::load`, which also
        // sees architectures taken from a sidecar.
        if let Some(m) = &t.model {
            validate_model(c, m, &format!("teachers[{i}].model"))?;
        }
        if t.weights.trim().is_empty() {
            return err(
                &format!("teachers[{i}].weights"),
                "must name a file or hf:// path",
            );
        }
        unit(c, &format!("teachers[{i}].min_ap"), t.min_ap)?;
        validate_weights(c, &t.weights, &format!("teachers[{i}].weights"))?;
        validate_keys(c, &t.keys, &format!("teachers[{i}].keys"))?;
    }
    for (i, d) in cfg.distill.iter().enumerate() {
        let p = format!("distill[{i}]");
        if cfg.teachers.is_empty() {
            return err(
                &p,
                "distillation terms need at least one entry in `teachers`",
            );
        }
        match d {
            DistillTerm::Hint {
                weight,
                student,
                teacher,
                ..
            } => {
                nonneg(c, &format!("{p}.weight"), *weight as f64)?;
                for (name, tap) in [("student", student), ("teacher", teacher)] {
                    if !is_tap(tap) {
                        return err(
                            &format!("{p}.{name}"),
                            &format!("`{tap}` is not a tap; use backbone.c2..c5 or fpn.p2..p6"),
                        );
                    }
                }
            }
            DistillTerm::WeightedKd {
                temperature,
                background_weight,
                mu,
                ..
            } => {
                positive(c, &format!("{p}.temperature"), *temperature as f64)?;
                nonneg(
                    c,
                    &format!("{p}.background_weight"),
                    *background_weight as f64,
                )?;
                unit(c, &format!("{p}.mu"), *mu as f64)?;
            }
            DistillTerm::BoundedRegression { margin, weight, .. } => {
                nonneg(c, &format!("{p}.margin"), *margin as f64)?;
                nonneg(c, &format!("{p}.weight"), *weight as f64)?;
            }
            DistillTerm::Kd {
                temperature,
                weight,
            } => {
                positive(c, &format!("{p}.temperature"), *temperature as f64)?;
                nonneg(c, &format!("{p}.weight"), *weight as f64)?;
            }
        }
    }
    let d = &cfg.data;
    unit(c, "data.flip_prob", d.flip_prob as f64)?;
    nonneg(c, "data.min_box_size", d.min_box_size)?;
    if d.workers == 0 {
        return err("data.workers", "must be >= 1");
    }
    if d.prefetch == 0 {
        return err("data.prefetch", "must be >= 1");
    }
    if d.synthetic.is_some() && (d.train.is_some() || d.val.is_some()) {
        return err(
            "data.synthetic",
            "give either `synthetic` or `train`/`val`, not both",
        );
    }
    if let Some(s) = &d.synthetic {
        if s.train == 0 {
            return err("data.synthetic.train", "must be >= 1");
        }
        if s.size < 32 {
            return err("data.synthetic.size", "must be >= 32 pixels");
        }
        if s.classes == 0 || s.classes > crate::data::synth::SHAPES.len() {
            return err(
                "data.synthetic.classes",
                &format!("must be in 1..={}", crate::data::synth::SHAPES.len()),
            );
        }
        if s.long_tail.is_nan() || s.long_tail < 1.0 {
            return err("data.synthetic.long_tail", "must be >= 1 (1 = balanced)");
        }
    }
    let s = &cfg.solver;
    positive(c, "solver.lr", s.lr)?;
    if !(0.0..1.0).contains(&s.momentum) {
        return err("solver.momentum", "must be in [0, 1)");
    }
    unit(c, "solver.dampening", s.dampening)?;
    if s.nesterov && (s.momentum <= 0.0 || s.dampening != 0.0) {
        return err(
            "solver.nesterov",
            "needs momentum > 0 and dampening = 0 (as PyTorch)",
        );
    }
    nonneg(c, "solver.weight_decay", s.weight_decay)?;
    if let Some(w) = s.norm_weight_decay {
        nonneg(c, "solver.norm_weight_decay", w)?;
    }
    if let Some(w) = s.bias_weight_decay {
        nonneg(c, "solver.bias_weight_decay", w)?;
    }
    for (i, b) in s.betas.iter().enumerate() {
        if !(0.0..1.0).contains(b) {
            return err(&format!("solver.betas[{i}]"), "must be in [0, 1)");
        }
    }
    positive(c, "solver.eps", s.eps)?;
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
        positive(c, "solver.grad_clip", g)?;
    }
    if s.log_every == 0 {
        return err("solver.log_every", "must be >= 1");
    }
    crate::device::parse_device(&cfg.device).map_err(|m| c.error("device", m))?;
    Ok(())
}

fn validate_model(c: &LoadedConfig, m: &ModelConfig, p: &str) -> Result<()> {
    let b = &m.backbone;
    if ![18, 34, 50, 101].contains(&b.depth) {
        return Err(c.error(
            &format!("{p}.backbone.depth"),
            format!("{} is not one of 18, 34, 50, 101", b.depth),
        ));
    }
    positive(c, &format!("{p}.backbone.width"), b.width)?;
    if b.trainable_layers > 5 {
        return Err(c.error(
            &format!("{p}.backbone.trainable_layers"),
            "must be in 0..=5",
        ));
    }
    if let Some(w) = &b.weights {
        validate_weights(c, w, &format!("{p}.backbone.weights"))?;
    }
    validate_keys(c, &b.weights_keys, &format!("{p}.backbone.weights_keys"))?;
    if m.fpn.out_channels == 0 {
        return Err(c.error(&format!("{p}.fpn.out_channels"), "must be >= 1"));
    }
    let i = &m.input;
    if i.min_size == 0 {
        return Err(c.error(&format!("{p}.input.min_size"), "must be >= 1"));
    }
    if i.max_size < i.min_size {
        return Err(c.error(
            &format!("{p}.input.max_size"),
            format!("{} is below min_size {}", i.max_size, i.min_size),
        ));
    }
    for (k, s) in i.std.iter().enumerate() {
        positive(c, &format!("{p}.input.std[{k}]"), *s as f64)?;
    }
    if i.size_divisible == 0 {
        return Err(c.error(&format!("{p}.input.size_divisible"), "must be >= 1"));
    }
    let r = &m.rpn;
    if r.anchor_sizes.is_empty() {
        return Err(c.error(&format!("{p}.rpn.anchor_sizes"), "must not be empty"));
    }
    for (k, v) in r.anchor_sizes.iter().enumerate() {
        positive(c, &format!("{p}.rpn.anchor_sizes[{k}]"), *v as f64)?;
    }
    for (k, v) in r.aspect_ratios.iter().enumerate() {
        positive(c, &format!("{p}.rpn.aspect_ratios[{k}]"), *v as f64)?;
    }
    for (name, v) in [
        ("rpn.nms_thresh", r.nms_thresh),
        ("rpn.fg_iou_thresh", r.fg_iou_thresh),
        ("rpn.bg_iou_thresh", r.bg_iou_thresh),
        ("rpn.positive_fraction", r.positive_fraction),
        ("rpn.score_thresh", r.score_thresh),
        ("roi_heads.fg_iou_thresh", m.roi_heads.fg_iou_thresh),
        ("roi_heads.bg_iou_thresh", m.roi_heads.bg_iou_thresh),
        ("roi_heads.positive_fraction", m.roi_heads.positive_fraction),
        ("roi_heads.score_thresh", m.roi_heads.score_thresh),
        ("roi_heads.nms_thresh", m.roi_heads.nms_thresh),
    ] {
        unit(c, &format!("{p}.{name}"), v as f64)?;
    }
    if r.bg_iou_thresh > r.fg_iou_thresh {
        return Err(c.error(
            &format!("{p}.rpn.bg_iou_thresh"),
            "must be <= fg_iou_thresh",
        ));
    }
    if m.roi_heads.bg_iou_thresh > m.roi_heads.fg_iou_thresh {
        return Err(c.error(
            &format!("{p}.roi_heads.bg_iou_thresh"),
            "must be <= fg_iou_thresh",
        ));
    }
    for (name, v) in [
        ("rpn.batch_size_per_image", r.batch_size_per_image),
        ("rpn.post_nms_top_n_train", r.post_nms_top_n_train),
        ("rpn.post_nms_top_n_test", r.post_nms_top_n_test),
        (
            "roi_heads.batch_size_per_image",
            m.roi_heads.batch_size_per_image,
        ),
        (
            "roi_heads.detections_per_img",
            m.roi_heads.detections_per_img,
        ),
        ("roi_heads.pool_size", m.roi_heads.pool_size),
        (
            "roi_heads.representation_size",
            m.roi_heads.representation_size,
        ),
    ] {
        if v == 0 {
            return Err(c.error(&format!("{p}.{name}"), "must be >= 1"));
        }
    }
    Ok(())
}

fn is_tap(t: &str) -> bool {
    matches!(
        t,
        "backbone.c2"
            | "backbone.c3"
            | "backbone.c4"
            | "backbone.c5"
            | "fpn.p2"
            | "fpn.p3"
            | "fpn.p4"
            | "fpn.p5"
            | "fpn.p6"
    )
}

/// A malformed `hf://` spec is reported at load time, located, rather than at first use.
fn validate_weights(c: &LoadedConfig, spec: &str, p: &str) -> Result<()> {
    if crate::hub::is_hub(spec) {
        crate::hub::HubFile::parse(spec).map_err(|e| c.error(p, e.to_string()))?;
    }
    Ok(())
}

fn validate_keys(c: &LoadedConfig, k: &KeyRules, p: &str) -> Result<()> {
    if let Some(i) = k.strip_prefixes.iter().position(|s| s.is_empty()) {
        return Err(c.error(&format!("{p}.strip_prefixes[{i}]"), "must not be empty"));
    }
    Ok(())
}

fn positive(c: &LoadedConfig, p: &str, v: f64) -> Result<()> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(c.error(p, "must be > 0"))
    }
}
fn nonneg(c: &LoadedConfig, p: &str, v: f64) -> Result<()> {
    if v >= 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(c.error(p, "must be >= 0"))
    }
}
fn unit(c: &LoadedConfig, p: &str, v: f64) -> Result<()> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(c.error(p, "must be in [0, 1]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, v: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, v).unwrap();
        p
    }

    #[test]
    fn defaults_follow_references() {
        let c = Config::default();
        assert_eq!(c.model.input.min_size, 800);
        assert_eq!(c.model.roi_heads.bbox_reg_weights, [10., 10., 5., 5.]);
        assert_eq!(c.solver.lr, 0.02);
        assert_eq!(c.solver.length(), (26, true));
        assert_eq!(
            c.solver.schedule(),
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
            s.schedule(),
            Schedule::Step {
                milestones: vec![160, 220],
                gamma: 0.1
            }
        );
    }

    #[test]
    fn base_deep_merges_and_tracks_origin() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "base.json",
            r#"{"solver": {"lr": 0.01, "momentum": 0.8}, "model": {"backbone": {"depth": 18}}, "seed": 3}"#,
        );
        let child = write(
            d.path(),
            "sub/child.json",
            r#"{"base": "../base.json", "solver": {"lr": 0.05}, "model": {"backbone": {"width": 0.25}}}"#,
        );
        let c = load(&child).unwrap();
        assert_eq!(c.config.solver.lr, 0.05);
        assert_eq!(c.config.solver.momentum, 0.8);
        assert_eq!(c.config.model.backbone.depth, 18);
        assert_eq!(c.config.model.backbone.width, 0.25);
        assert_eq!(c.config.seed, 3);
        assert!(c.origin("solver.momentum").ends_with("base.json"));
        assert!(c.origin("solver.lr").ends_with("child.json"));
        // A bad value set in the base is reported against the base file.
        write(d.path(), "base.json", r#"{"solver": {"momentum": 1.5}}"#);
        let e = load(&child).unwrap_err().to_string();
        assert!(
            e.ends_with("base.json: solver.momentum: must be in [0, 1)"),
            "{e}"
        );
    }

    #[test]
    fn located_errors() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (r#"{"solver": {"lr": 0}}"#, "x.json: solver.lr: must be > 0"),
            (
                r#"{"solver": {"lrr": 0.1}}"#,
                "x.json: solver.lrr: unknown field `lrr`",
            ),
            (
                r#"{"model": {"backbone": {"depth": 42}}}"#,
                "x.json: model.backbone.depth: 42 is not one of 18, 34, 50, 101",
            ),
            (
                r#"{"solver": {"batch_size": "two"}}"#,
                "x.json: solver.batch_size: invalid type: string \"two\"",
            ),
            (
                r#"{"solver": {"iterations": 10, "epochs": 2}}"#,
                "x.json: solver.epochs: give either `iterations` or `epochs`, not both",
            ),
            (
                r#"{"solver": {"iterations": 10, "schedule": {"type": "step", "milestones": [5, 3]}}}"#,
                "x.json: solver.schedule.milestones[1]: milestones must increase",
            ),
            (
                r#"{"solver": {"iterations": 10, "schedule": {"type": "step", "milestones": [50]}}}"#,
                "x.json: solver.schedule.milestones[0]: 50 is beyond the run length 10",
            ),
            (
                r#"{"device": "tpu"}"#,
                "x.json: device: `tpu` is not a device",
            ),
            (
                r#"{"distill": [{"type": "hint", "student": "fpn.p3", "teacher": "fpn.p3"}]}"#,
                "x.json: distill[0]: distillation terms need at least one entry in `teachers`",
            ),
            (
                r#"{"teachers": [{"weights": "t.safetensors"}], "distill": [{"type": "hint", "student": "fpn.p9", "teacher": "fpn.p3"}]}"#,
                "x.json: distill[0].student: `fpn.p9` is not a tap",
            ),
            (
                r#"{"teachers": [{"weights": "t"}], "distill": [{"type": "weighted_kd", "stage": "rpn", "mu": 2}]}"#,
                "x.json: distill[0].mu: must be in [0, 1]",
            ),
            (
                r#"{"teachers": [{"weights": "hf://owner/repo"}]}"#,
                "x.json: teachers[0].weights: hf://owner/repo: names no file",
            ),
            (
                r#"{"teachers": [{"weights": "t.pth", "keys": {"strip_prefixes": [""]}}]}"#,
                "x.json: teachers[0].keys.strip_prefixes[0]: must not be empty",
            ),
            (
                r#"{"teachers": [{"weights": "t.pth", "keys": {"rename": [{"from": "a."}]}}]}"#,
                "x.json: teachers[0].keys.rename[0]: missing field `to`",
            ),
            (
                r#"{"model": {"backbone": {"weights": "hf://o//f.pth"}}}"#,
                "x.json: model.backbone.weights: hf://o//f.pth: empty repo name",
            ),
            (
                r#"{"model": {"backbone": {"weights_keys": {"strip": ["module."]}}}}"#,
                "x.json: model.backbone.weights_keys.strip: unknown field `strip`",
            ),
            (
                r#"{"data": {"synthetic": {"classes": 12}}}"#,
                "x.json: data.synthetic.classes: must be in 1..=8",
            ),
            (
                r#"{"model": {"rpn": {"fg_iou_thresh": 1.5}}}"#,
                "x.json: model.rpn.fg_iou_thresh: must be in [0, 1]",
            ),
            (r#"[1]"#, "x.json: .: a config must be a JSON object"),
            (
                r#"{"base": 3}"#,
                "x.json: base: must be a string (a relative path), got 3",
            ),
            (r#"{"base": "nope.json"}"#, "x.json: base: "),
            (
                r#"{"solver": {"lr": 0.1,}}"#,
                "x.json: solver: trailing comma at line 1 column 23",
            ),
        ];
        for (json, want) in cases {
            let p = write(d.path(), "x.json", json);
            let got = load(&p).unwrap_err().to_string();
            let got = got
                .strip_prefix(&format!("{}/", d.path().display()))
                .unwrap_or(&got)
                .to_string();
            assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn key_rules_strip_then_rename() {
        let r: KeyRules = serde_json::from_str(
            r#"{"strip_prefixes": ["module.", "model."],
                "rename": [{"from": "backbone.", "to": "backbone.body."},
                           {"from": "neck.lateral_convs.0.conv.", "to": "backbone.fpn.inner_blocks.0.0."},
                           {"from": "back", "to": "never"}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.apply("module.model.backbone.conv1.weight"),
            "backbone.body.conv1.weight"
        );
        assert_eq!(
            r.apply("neck.lateral_convs.0.conv.bias"),
            "backbone.fpn.inner_blocks.0.0.bias"
        );
        // Prefixes strip only at the start, in order; unmatched keys stay.
        assert_eq!(r.apply("model.module.x"), "module.x");
        assert_eq!(r.apply("rpn.module.x"), "rpn.module.x");
        assert!(KeyRules::default().is_empty());
        assert_eq!(KeyRules::default().apply("a.b"), "a.b");
        // An empty `from` adds a prefix to every key it reaches.
        let add = KeyRules {
            strip_prefixes: vec![],
            rename: vec![KeyRename {
                from: String::new(),
                to: "backbone.body.".into(),
            }],
        };
        assert_eq!(add.apply("conv1.weight"), "backbone.body.conv1.weight");
    }

    #[test]
    fn inheritance_cycle_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.json", r#"{"base": "b.json"}"#);
        let b = write(d.path(), "b.json", r#"{"base": "a.json"}"#);
        let e = load(&b).unwrap_err().to_string();
        assert!(e.contains("inheritance cycle"), "{e}");
    }

    #[test]
    fn shipped_configs_load() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for dir in ["synth", "coco"] {
            let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for e in rd {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "json") {
                    load(&p).unwrap_or_else(|e| panic!("{e}"));
                    n += 1;
                }
            }
        }
        assert!(n >= 1, "no configs found");
    }
}
