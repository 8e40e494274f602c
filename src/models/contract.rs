//! The model contract: what every trainable network (Faster R-CNN today; PAA and classifiers
//! next) offers the training loop, the training methods, evaluation, inference and export.
//!
//! A training step goes through three calls, so that a method can put itself between them:
//! 1. [`Model::forward`]: backbone, neck and dense heads on the images — everything that needs no
//!    targets — with the named [`Taps`] distillation reads;
//! 2. [`Model::assign`]: the model's own label assignment from that forward and the targets
//!    (Faster R-CNN: anchors and RoIs matched and sampled; PAA: its GMM assignment);
//! 3. [`Model::outputs`]: the losses and head outputs on an [`Assignment`] — the model's own, or
//!    one a method supplies (LAD hands the student the teacher's; Chen et al.'s teachers score
//!    the student's sampled RoIs). This is torchvision RetinaNet's split of `matched_idxs` from
//!    `compute_loss` (`torchvision/models/detection/retinanet.py`), made a value.
//!
//! A frozen teacher whose taps alone are read runs [`Model::features`] instead of `forward`: the
//! same taps without the heads.
//!
//! Everything a distillation term may read is here, in a model-independent layout: taps by name
//! and stride, [`HeadOutput`]s by [`Head`], losses tagged with their head and [`LossKind`].

use std::any::Any;
use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::ops::boxes::Box4;

/// The random source of a training step (sampling in the assignment); the loop seeds one per
/// iteration from the config's seed, so a resumed run draws what the uninterrupted one would.
pub type StepRng = rand_chacha::ChaCha8Rng;

/// Intermediate tensors by name: `backbone.c2`…`c5` (trunk stages), `fpn.p2`…`p7` (pyramid
/// levels) — whichever the family has ([`Model::taps`]).
pub type Taps = BTreeMap<String, Tensor>;

/// A tap a model exposes: its name, channels and stride relative to the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSpec {
    pub name: String,
    pub channels: usize,
    pub stride: usize,
}

/// A prediction head whose outputs and losses a method can address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Head {
    /// Region proposal network of a two-stage detector: objectness and anchor deltas.
    Rpn,
    /// Region classification network (Fast R-CNN box head) of a two-stage detector.
    Rcn,
    /// The dense head of a one-stage detector (PAA): class logits per anchor.
    Dense,
    /// An image classifier's head: one row of class logits per image.
    Classifier,
}

impl Head {
    /// How messages name the head's classification outputs.
    pub fn logits_name(self) -> &'static str {
        match self {
            Head::Rpn => "RPN objectness",
            Head::Rcn => "RCN class logits",
            Head::Dense => "dense class logits",
            Head::Classifier => "image class logits",
        }
    }

    /// How messages name the head's box outputs.
    pub fn deltas_name(self) -> &'static str {
        match self {
            Head::Rpn => "RPN deltas",
            Head::Rcn => "RCN deltas",
            Head::Dense => "dense deltas",
            Head::Classifier => "classifier deltas (none)",
        }
    }

    /// The head's name in loss-term names (`distill.rcn.kd`).
    pub fn short_name(self) -> &'static str {
        match self {
            Head::Rpn => "rpn",
            Head::Rcn => "rcn",
            Head::Dense => "dense",
            Head::Classifier => "cls",
        }
    }
}

/// What a loss term is about, so that a method can reweight a head's hard classification loss
/// (Chen et al. 2017 Eq. 2's μ) without knowing its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    Classification,
    Regression,
    /// A localisation-quality branch (PAA's IoU prediction).
    Quality,
}

/// One of a model's own losses.
#[derive(Debug, Clone)]
pub struct Loss {
    pub value: Tensor,
    pub head: Head,
    pub kind: LossKind,
}

/// How a head's logits become class probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassScores {
    /// One sigmoid per logit (RPN objectness; PAA's classes).
    Sigmoid,
    /// A softmax over the row; column 0 is background (torchvision's box head).
    Softmax,
    /// A softmax over the row with no background column (an image classifier).
    Categorical,
}

/// How the positives' box deltas are picked from a head's delta tensor.
#[derive(Debug, Clone)]
enum Gather {
    /// Rows of the deltas viewed as `(·, 4)`.
    Rows(Vec<u32>),
    /// Flat element indices, four per positive (class-specific deltas: each positive's own
    /// class).
    Elements(Vec<u32>),
}

/// A head's outputs on the samples of an assignment, in a layout every family shares: the
/// logits of the samples its classification loss covers, the deltas of the positives its box
/// loss covers with their encoded targets, and the count its losses average over. A teacher
/// given the student's assignment returns the same layout for the same samples, so terms
/// compare them row by row.
#[derive(Debug, Clone)]
pub struct HeadOutput {
    pub scores: ClassScores,
    logits: Tensor,
    /// Flat indices of the samples in `logits`; `None`: every row is a sample.
    samples: Option<Vec<u32>>,
    deltas: Tensor,
    positives: Gather,
    /// Encoded regression targets of the positives, four per positive.
    targets: Vec<f32>,
    /// How many samples the head's losses average over (Chen et al. 2017's N and M).
    pub num_samples: usize,
}

impl HeadOutput {
    /// Logits and deltas over every candidate, the samples picked by flat index (RPN-style:
    /// all anchors are scored, a few are sampled) and the positives' delta rows.
    pub fn sampled(
        scores: ClassScores,
        logits: Tensor,
        samples: Vec<u32>,
        deltas: Tensor,
        positive_rows: Vec<u32>,
        targets: Vec<f32>,
    ) -> Self {
        let num_samples = samples.len();
        Self {
            scores,
            logits,
            samples: Some(samples),
            deltas,
            positives: Gather::Rows(positive_rows),
            targets,
            num_samples,
        }
    }

    /// Logits and deltas with a row per candidate, every row a sample (a dense head's anchors),
    /// and the positives' delta rows.
    pub fn dense(
        scores: ClassScores,
        logits: Tensor,
        deltas: Tensor,
        positive_rows: Vec<u32>,
        targets: Vec<f32>,
    ) -> Self {
        let num_samples = logits.dims().first().copied().unwrap_or(0);
        Self {
            scores,
            logits,
            samples: None,
            deltas,
            positives: Gather::Rows(positive_rows),
            targets,
            num_samples,
        }
    }

    /// Logits whose every row is a sample (box-head-style: the head ran on the sampled RoIs)
    /// and class-specific deltas `K × 4C`, the positives' own class picked by `labels`
    /// (0 = background).
    pub fn per_sample_class_specific(
        scores: ClassScores,
        logits: Tensor,
        deltas: Tensor,
        labels: &[u32],
        targets: Vec<f32>,
    ) -> Result<Self> {
        let c4 = deltas.dim(1)?;
        let idx: Vec<u32> = (0..labels.len())
            .filter(|&i| labels[i] > 0)
            .flat_map(|i| (0..4).map(move |k| (i * c4) as u32 + 4 * labels[i] + k))
            .collect();
        Ok(Self {
            scores,
            logits,
            samples: None,
            deltas,
            positives: Gather::Elements(idx),
            targets,
            num_samples: labels.len(),
        })
    }

    /// The samples' logits: `K` (sigmoid) or `K × C` (softmax).
    pub fn logits(&self) -> Result<Tensor> {
        Ok(match &self.samples {
            None => self.logits.clone(),
            Some(s) => {
                let idx = Tensor::from_vec(s.clone(), s.len(), self.logits.device())?;
                self.logits.flatten_all()?.index_select(&idx, 0)?
            }
        })
    }

    pub fn num_positives(&self) -> usize {
        self.targets.len() / 4
    }

    /// The positives' deltas, `P × 4`.
    pub fn positive_deltas(&self) -> Result<Tensor> {
        let dev = self.deltas.device();
        Ok(match &self.positives {
            Gather::Rows(r) => {
                let idx = Tensor::from_vec(r.clone(), r.len(), dev)?;
                self.deltas.reshape(((), 4))?.index_select(&idx, 0)?
            }
            Gather::Elements(e) => {
                let idx = Tensor::from_vec(e.clone(), e.len(), dev)?;
                self.deltas
                    .flatten_all()?
                    .index_select(&idx, 0)?
                    .reshape((e.len() / 4, 4))?
            }
        })
    }

    /// The positives' regression targets, `P × 4`.
    pub fn positive_targets(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.targets.clone(),
            (self.num_positives(), 4),
            self.deltas.device(),
        )?)
    }

    /// A teacher's output must cover the same candidates as the student's (same anchors and
    /// strides), else the rows do not line up.
    pub fn check_aligned(&self, teacher: &HeadOutput, head: Head) -> Result<()> {
        for (what, s, t) in [
            (head.logits_name(), &self.logits, &teacher.logits),
            (head.deltas_name(), &self.deltas, &teacher.deltas),
        ] {
            if s.dims() != t.dims() {
                return Err(Error::msg(format!(
                    "{what}: the teacher produced {:?} where the student has {:?} (different anchors or strides)",
                    t.dims(),
                    s.dims()
                )));
            }
        }
        Ok(())
    }

    /// The same outputs in another precision (a half-precision teacher's, for f32 losses).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            logits: self.logits.to_dtype(dtype)?,
            deltas: self.deltas.to_dtype(dtype)?,
            ..self.clone()
        })
    }
}

/// A model's forward pass on images: the taps, and the family's own tensors that
/// [`Model::assign`] and [`Model::outputs`] read back.
pub struct Forward {
    pub taps: Taps,
    pub(crate) state: Box<dyn Any + Send + Sync>,
}

impl Forward {
    pub fn new(taps: Taps, state: impl Any + Send + Sync) -> Self {
        Self {
            taps,
            state: Box::new(state),
        }
    }

    /// The family's state, as the family that made it.
    pub fn state<T: Any>(&self, family: &str) -> Result<&T> {
        self.state.downcast_ref().ok_or_else(|| {
            Error::msg(format!(
                "internal: a {family} model was handed another family's forward pass"
            ))
        })
    }
}

/// A label assignment: which candidates the losses use and their targets. A value, so a method
/// can hand one model's assignment to another (of the same family).
pub struct Assignment {
    family: &'static str,
    value: Box<dyn Any + Send + Sync>,
    handed_over: bool,
}

impl Assignment {
    pub fn new(family: &'static str, value: impl Any + Send + Sync) -> Self {
        Self {
            family,
            value: Box::new(value),
            handed_over: false,
        }
    }

    /// The same assignment, marked as made by another network than the one it trains (LAD's
    /// teacher, Co-LAD's shared choice). A family may train on such an assignment differently
    /// (PAA takes LADHead's box loss).
    pub fn handed_over(mut self) -> Self {
        self.handed_over = true;
        self
    }

    pub fn is_handed_over(&self) -> bool {
        self.handed_over
    }

    /// The family that made it.
    pub fn family(&self) -> &'static str {
        self.family
    }

    /// The assignment as `family`'s own type; another family's is an error naming both.
    pub fn get<T: Any>(&self, family: &str) -> Result<&T> {
        self.value.downcast_ref().ok_or_else(|| {
            Error::msg(format!(
                "a {family} model cannot train on a {} assignment (label assignment is shared only within a model family)",
                self.family
            ))
        })
    }
}

/// What [`Model::outputs`] should compute.
#[derive(Debug, Clone, Copy)]
pub enum Want<'a> {
    /// The losses (a trained network); its head outputs come with them.
    Losses,
    /// Only these heads' outputs (a frozen teacher scoring a student's samples).
    Heads(&'a [Head]),
}

impl Want<'_> {
    pub fn losses(&self) -> bool {
        matches!(self, Want::Losses)
    }

    pub fn head(&self, h: Head) -> bool {
        match self {
            Want::Losses => true,
            Want::Heads(hs) => hs.contains(&h),
        }
    }
}

/// The losses and head outputs of one training forward.
pub struct TrainOutput {
    /// By name (`loss_classifier`, …), as the metrics log shows them.
    pub losses: BTreeMap<String, Loss>,
    pub heads: BTreeMap<Head, HeadOutput>,
}

impl TrainOutput {
    /// A head's outputs, or an error saying the model has no such head.
    pub fn head(&self, h: Head) -> Result<&HeadOutput> {
        self.heads
            .get(&h)
            .ok_or_else(|| Error::msg(format!("the model has no {h:?} head outputs")))
    }
}

/// Detections of one image: boxes `x1,y1,x2,y2`, scores, 1-based labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detections {
    pub boxes: Vec<Box4>,
    pub scores: Vec<f32>,
    pub labels: Vec<u32>,
}

/// One detection as COCO results write it: category id, `x, y, w, h`, score (and the model's
/// 1-based label it came from).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CocoBox {
    pub label: u32,
    pub category_id: u64,
    pub bbox: [f64; 4],
    pub score: f64,
}

impl Detections {
    /// The detections scoring at least `min_score`, as COCO records; `category_ids[l - 1]` is
    /// label `l`'s category id. A label without one means the model and its class list
    /// disagree: an error, never an invented id.
    pub fn to_coco(&self, category_ids: &[u64], min_score: f32) -> Result<Vec<CocoBox>> {
        let mut out = vec![];
        for ((b, &s), &l) in self.boxes.iter().zip(&self.scores).zip(&self.labels) {
            if s < min_score {
                continue;
            }
            let category_id = (l as usize)
                .checked_sub(1)
                .and_then(|i| category_ids.get(i))
                .copied()
                .ok_or_else(|| {
                    Error::msg(format!(
                        "the model predicted label {l}, but its class list has {} classes (weights and class names do not belong together)",
                        category_ids.len()
                    ))
                })?;
            out.push(CocoBox {
                label: l,
                category_id,
                bbox: [
                    b[0] as f64,
                    b[1] as f64,
                    (b[2] - b[0]) as f64,
                    (b[3] - b[1]) as f64,
                ],
                score: s as f64,
            });
        }
        Ok(out)
    }
}

/// What a model predicts for a batch, in original image coordinates.
pub enum Predictions {
    /// Per image (detectors).
    Detections(Vec<Detections>),
    /// Per image, the probability of each class (classifiers: softmax over the logits).
    Classes(Vec<Vec<f32>>),
}

impl Predictions {
    /// What the model predicts, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Predictions::Detections(_) => "detections",
            Predictions::Classes(_) => "class probabilities",
        }
    }

    /// The detections, or an error naming what the model predicts instead.
    pub fn into_detections(self) -> Result<Vec<Detections>> {
        match self {
            Predictions::Detections(d) => Ok(d),
            other => Err(Error::msg(format!(
                "the model predicts {}, not detections (use a detector)",
                other.kind()
            ))),
        }
    }

    /// The class probabilities, or an error naming what the model predicts instead.
    pub fn into_classes(self) -> Result<Vec<Vec<f32>>> {
        match self {
            Predictions::Classes(c) => Ok(c),
            other => Err(Error::msg(format!(
                "the model predicts {}, not image classes (use a classifier)",
                other.kind()
            ))),
        }
    }
}

/// A trainable network, as the loop, the methods, evaluation, inference and export see it.
pub trait Model: Send + Sync {
    /// The family (`faster_rcnn`), for messages.
    fn family(&self) -> &'static str;

    /// The taps [`Model::forward`] returns.
    fn taps(&self) -> Vec<TapSpec>;

    /// Whether the optimizer updates the parameter of this name (not a buffer such as
    /// BatchNorm's running statistics, not in a frozen stage).
    fn is_trainable(&self, param: &str) -> bool;

    /// The prefix of the backbone trunk's parameters (`kdet export --backbone-only` keeps those,
    /// without it).
    fn backbone_prefix(&self) -> &'static str;

    /// Everything computed from the images alone. `train`: normalisation layers use batch
    /// statistics (a network being trained) rather than running ones (frozen, evaluated).
    fn forward(&self, images: &Tensor, train: bool) -> Result<Forward>;

    /// The taps of [`forward`](Self::forward) alone, bit for bit, computing only what they need:
    /// for a detector the backbone and neck (torchvision's `GeneralizedRCNN` runs `backbone`
    /// before `rpn` and `roi_heads`), not its heads, anchors or proposals. What a frozen teacher
    /// runs when the configured terms read no head of it. The default runs the whole forward.
    fn features(&self, images: &Tensor, train: bool) -> Result<Taps> {
        Ok(self.forward(images, train)?.taps)
    }

    /// The model's own label assignment for the batch's targets.
    fn assign(&self, fwd: &Forward, batch: &Batch, rng: &mut StepRng) -> Result<Assignment>;

    /// Losses and/or head outputs on `assignment`.
    fn outputs(
        &self,
        fwd: &Forward,
        assignment: &Assignment,
        batch: &Batch,
        want: Want,
    ) -> Result<TrainOutput>;

    /// Predictions for a batch, in the images' original coordinates.
    fn predict(&self, batch: &Batch) -> Result<Predictions>;

    /// The head whose logits classify the final detections (two-stage: the box head; one-stage:
    /// the dense head) — what logit distillation (`kd`) reads.
    fn class_head(&self) -> Head;

    /// The steps of a cost-based assignment, for methods that mix networks' costs (Co-LAD);
    /// `None` for families that do not assign that way.
    fn cost_assignment(&self) -> Option<&dyn CostAssignment> {
        None
    }
}

/// One image's candidates of a cost-based assignment: candidate anchors (ascending), the box
/// each was matched to and its pyramid level, and which anchors are valid at all.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCandidates {
    pub anchor: Vec<usize>,
    pub gt: Vec<usize>,
    pub level: Vec<usize>,
    pub valid: Vec<bool>,
}

/// A label assignment that picks, among geometric candidates, by a per-candidate cost of the
/// network's current predictions (PAA: focal + GIoU, then per box and level top-k and a GMM).
/// Split in three so that Co-LAD can compute two networks' costs on the same candidates and
/// choose, per box and level, whose costs decide.
pub trait CostAssignment {
    /// The candidates (geometry only; the same for every network with the same anchors).
    fn candidates(&self, fwd: &Forward, batch: &Batch) -> Result<Vec<ImageCandidates>>;
    /// This network's cost of each candidate, per image.
    fn costs(&self, fwd: &Forward, batch: &Batch, c: &[ImageCandidates]) -> Result<Vec<Vec<f32>>>;
    /// The assignment those costs select.
    fn assign_from_costs(
        &self,
        fwd: &Forward,
        batch: &Batch,
        c: &[ImageCandidates],
        costs: &[Vec<f32>],
    ) -> Result<Assignment>;
}

/// The tap of this name among `taps`, or an error listing those there are.
pub fn find_tap<'a>(taps: &'a [TapSpec], name: &str, family: &str) -> Result<&'a TapSpec> {
    taps.iter().find(|t| t.name == name).ok_or_else(|| {
        Error::msg(format!(
            "`{name}` is not a tap of {family}; it has {}",
            taps.iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::init::SeededVarMap;
    use crate::ops::conv::ConvImpl;
    use candle_core::Device;
    use candle_nn::VarBuilder;

    /// `a` and `b` hold the same tap names with bit-identical tensors.
    fn assert_same_taps(a: &Taps, b: &Taps) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, x) in a {
            let y = &b[name];
            assert_eq!(x.dims(), y.dims(), "{name}");
            let bits = |t: &Tensor| -> Vec<u32> {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.into_iter().map(f32::to_bits).collect()
            };
            assert!(bits(x) == bits(y), "{name} differs");
        }
    }

    /// `features` gives `forward`'s taps bit for bit, in training and in eval mode, and never
    /// needs the head: `broken`, the same model with a head that cannot run on its features,
    /// fails its forward but not its features.
    fn check_features(model: &dyn Model, broken: &dyn Model) {
        let images = Tensor::rand(-1f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
        for train in [false, true] {
            let full = model.forward(&images, train).unwrap().taps;
            assert_same_taps(&model.features(&images, train).unwrap(), &full);
            assert_same_taps(&broken.features(&images, train).unwrap(), &full);
        }
        assert!(broken.forward(&images, false).is_err());
    }

    fn seeded(seed: u64) -> VarBuilder<'static> {
        std::sync::Arc::new(SeededVarMap::new(seed)).builder(DType::F32, &Device::Cpu)
    }

    fn tiny(json: serde_json::Value) -> crate::models::config::ModelConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn faster_rcnn_features_are_its_forwards_taps_without_the_rpn() {
        use crate::models::config::ModelConfig;
        use crate::models::faster_rcnn::FasterRcnn;
        let cfg = |fpn: usize| {
            let c = tiny(serde_json::json!({
                "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
                "fpn": {"out_channels": fpn},
                "input": {"min_size": 64, "max_size": 64},
                "roi_heads": {"representation_size": 16}
            }));
            let ModelConfig::FasterRcnn(f) = c else {
                unreachable!("a faster_rcnn config")
            };
            f
        };
        let model = FasterRcnn::new(seeded(1), &cfg(8), 3, ConvImpl::Kdet).unwrap();
        // An RPN made for 16-channel maps on an 8-channel pyramid.
        let mut broken = model.clone();
        broken.rpn = FasterRcnn::new(seeded(2), &cfg(16), 3, ConvImpl::Kdet)
            .unwrap()
            .rpn;
        check_features(&model, &broken);
    }

    #[test]
    fn paa_features_are_its_forwards_taps_without_the_dense_head() {
        use crate::models::config::ModelConfig;
        use crate::models::paa::Paa;
        let cfg = |neck: usize| {
            let c = tiny(serde_json::json!({
                "arch": "paa",
                "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
                "neck": {"out_channels": neck},
                "head": {"channels": 8, "num_convs": 1, "gn_groups": 4},
                "input": {"min_size": 64, "max_size": 64}
            }));
            let ModelConfig::Paa(p) = c else {
                unreachable!("a paa config")
            };
            p
        };
        let model = Paa::new(seeded(1), &cfg(8), 2, ConvImpl::Kdet).unwrap();
        let mut broken = model.clone();
        broken.head = Paa::new(seeded(2), &cfg(16), 2, ConvImpl::Kdet)
            .unwrap()
            .head;
        check_features(&model, &broken);
    }

    #[test]
    fn coco_records_name_their_category_and_refuse_unknown_labels() {
        let d = Detections {
            boxes: vec![[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 4.0, 4.0]],
            scores: vec![0.9, 0.2],
            labels: vec![2, 1],
        };
        let r = d.to_coco(&[7, 9], 0.5).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].category_id, 9);
        assert_eq!(r[0].bbox, [1.0, 2.0, 10.0, 20.0]);
        let e = d.to_coco(&[7], 0.0).unwrap_err().to_string();
        assert!(e.contains("label 2") && e.contains("1 classes"), "{e}");
    }

    #[test]
    fn head_outputs_gather_samples_and_positives() {
        let dev = Device::Cpu;
        // RPN-style: 2 images × 3 anchors, deltas N × A × 4.
        let logits = Tensor::new(&[[0f32, 1., 2.], [3., 4., 5.]], &dev).unwrap();
        let deltas = Tensor::arange(0f32, 24., &dev)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let h = HeadOutput::sampled(
            ClassScores::Sigmoid,
            logits,
            vec![4, 1],
            deltas,
            vec![5],
            vec![0.; 4],
        );
        assert_eq!(h.logits().unwrap().to_vec1::<f32>().unwrap(), [4., 1.]);
        assert_eq!(
            h.positive_deltas().unwrap().to_vec2::<f32>().unwrap(),
            [[20., 21., 22., 23.]]
        );
        assert_eq!(h.num_samples, 2);
        // Box-head-style: 2 RoIs × (3 classes · 4); RoI 1 is class 2.
        let deltas = Tensor::arange(0f32, 24., &dev)
            .unwrap()
            .reshape((2, 12))
            .unwrap();
        let logits = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let h = HeadOutput::per_sample_class_specific(
            ClassScores::Softmax,
            logits,
            deltas,
            &[0, 2],
            vec![1.; 4],
        )
        .unwrap();
        assert_eq!(
            h.positive_deltas().unwrap().to_vec2::<f32>().unwrap(),
            [[20., 21., 22., 23.]]
        );
        assert_eq!(h.positive_targets().unwrap().dims(), [1, 4]);
    }
}
