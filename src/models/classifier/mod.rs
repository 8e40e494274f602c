//! An image classifier on the model contract: ResNet trunk (`backbone.*`, torchvision's names),
//! global average pooling, optionally the kept layers of SimCLRv2's projection head (`mlp.*`)
//! and CBD's student projection (`projection.*`), then a linear (`fc.weight`, `fc.bias`) or
//! cosine (`fc.weight`) classifier. Its head outputs are one row of logits per image
//! ([`Head::Classifier`], softmax without background); it predicts class probabilities
//! ([`Predictions::Classes`]). Taps: `backbone.c2..c5`, `pool` (the pooled feature), with MLP
//! layers `mlp` (the last one's output) and, with a projection, `projection` (before
//! normalisation) — what feature distillation reads.
//!
//! Training data are images with one label each (`Target::labels = [k]`, 1-based, no boxes);
//! an image without a label (unlabeled data for SimCLRv2-style distillation) takes part in the
//! forward pass and in a method's terms, not in the cross-entropy.

pub mod config;

use std::collections::BTreeMap;

use candle_core::{DType, Module, ModuleT, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use crate::data::loader::Batch;
use crate::data::transforms::InputConfig;
use crate::error::{invalid, Check, Error, Result};
use crate::ops::conv::ConvImpl;
use crate::ops::relu::relu;

use super::backbone::BackboneConfig;
use super::config::{Family, ModelConfig};
use super::contract::{
    Assignment, ClassScores, Forward, Head, HeadOutput, Loss, LossKind, Model, Predictions,
    StepRng, TapSpec, Taps, TrainOutput, Want,
};
use super::layers::{Norm, NormKind};
use super::resnet::ResNet;
pub use config::{ClassifierConfig, ClassifierHead};

const FAMILY: &str = "classifier";

/// One kept layer of SimCLRv2's projection head: Linear (no bias) + BatchNorm + ReLU.
#[derive(Debug, Clone)]
struct MlpLayer {
    linear: Linear,
    bn: Norm,
}

#[derive(Debug, Clone)]
enum Classify {
    Linear(Linear),
    Cosine { weight: Tensor, sigma: f64 },
}

#[derive(Debug, Clone)]
pub struct Classifier {
    pub backbone: ResNet,
    mlp: Vec<MlpLayer>,
    projection: Option<Linear>,
    fc: Classify,
    pub cfg: ClassifierConfig,
    pub num_classes: usize,
    frozen_stages: usize,
    dtype: DType,
}

/// What the forward pass keeps: the logits of every image.
struct ClassForward {
    logits: Tensor,
}

/// The classifier's assignment: each image's 0-based class, `None` for an unlabeled image.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassAssignment {
    pub labels: Vec<Option<u32>>,
}

/// nn.Linear's default init, U(±1/√fan_in) for weight and bias (torchvision's `fc`).
fn linear(vb: VarBuilder, cin: usize, cout: usize, bias: bool) -> candle_core::Result<Linear> {
    let b = 1.0 / (cin as f64).sqrt();
    let w = vb.get_with_hints((cout, cin), "weight", Init::Uniform { lo: -b, up: b })?;
    let bias = if bias {
        Some(vb.get_with_hints(cout, "bias", Init::Uniform { lo: -b, up: b })?)
    } else {
        None
    };
    Ok(Linear::new(w, bias))
}

impl Classifier {
    pub fn new(
        vb: VarBuilder,
        cfg: &ClassifierConfig,
        num_classes: usize,
        imp: ConvImpl,
    ) -> candle_core::Result<Self> {
        let rc = cfg.backbone.resnet(imp);
        let backbone = ResNet::new(vb.pp("backbone"), rc, None)?;
        let d = cfg.pooled_dim();
        let mlp = (0..cfg.mlp_layers)
            .map(|i| {
                let v = vb.pp(format!("mlp.{i}"));
                Ok(MlpLayer {
                    linear: linear(v.pp("linear"), d, d, false)?,
                    bn: Norm::new(v.pp("bn"), NormKind::Bn, d, 1e-5)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (projection, feat) = match &cfg.projection {
            Some(p) => (Some(linear(vb.pp("projection"), d, p.dim, true)?), p.dim),
            None => (None, d),
        };
        let fc = match &cfg.head {
            ClassifierHead::Linear => {
                Classify::Linear(linear(vb.pp("fc"), feat, num_classes, true)?)
            }
            ClassifierHead::Cosine { sigma } => {
                // Glorot uniform: U(±√(6 / (fan_in + fan_out))).
                let b = (6.0 / (feat + num_classes) as f64).sqrt();
                let weight = vb.pp("fc").get_with_hints(
                    (num_classes, feat),
                    "weight",
                    Init::Uniform { lo: -b, up: b },
                )?;
                Classify::Cosine {
                    weight,
                    sigma: *sigma,
                }
            }
        };
        Ok(Self {
            backbone,
            mlp,
            projection,
            fc,
            cfg: cfg.clone(),
            num_classes,
            frozen_stages: 5 - cfg.backbone.trainable_layers.min(5) as usize,
            dtype: vb.dtype(),
        })
    }

    /// Taps and logits of a batch.
    fn run(&self, images: &Tensor, train: bool) -> candle_core::Result<(Taps, Tensor)> {
        let x = images.to_dtype(self.dtype)?;
        let s = self
            .backbone
            .forward_frozen(&x, train, self.frozen_stages)?;
        let pooled = s.c5.mean((2, 3))?;
        let mut taps = Taps::new();
        for (i, t) in [&s.c2, &s.c3, &s.c4, &s.c5].into_iter().enumerate() {
            taps.insert(format!("backbone.c{}", i + 2), t.clone());
        }
        taps.insert("pool".into(), pooled.clone());
        let mut h = pooled;
        for l in &self.mlp {
            let (b, d) = h.dims2()?;
            let y = l.linear.forward(&h)?.reshape((b, d, 1, 1))?;
            h = relu(&l.bn.forward_t(&y, train)?)?.reshape((b, d))?;
        }
        if !self.mlp.is_empty() {
            taps.insert("mlp".into(), h.clone());
        }
        if let Some(p) = &self.projection {
            h = relu(&p.forward(&h)?)?;
            taps.insert("projection".into(), h.clone());
            h = l2_normalize(&h)?;
        }
        let logits = match &self.fc {
            Classify::Linear(fc) => fc.forward(&h)?,
            Classify::Cosine { weight, sigma } => {
                (l2_normalize(&h)?.matmul(&l2_normalize(weight)?.t()?)? * *sigma)?
            }
        };
        Ok((taps, logits))
    }
}

/// Rows divided by their L2 norm (floored at 1e-12, as `tf.math.l2_normalize`'s epsilon²).
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&n)
}

/// The 0-based class of each image of a batch (none for an unlabeled image); an image with
/// several labels (a detection batch) is an error naming it.
pub fn image_labels(batch: &Batch) -> Result<Vec<Option<u32>>> {
    batch
        .targets
        .iter()
        .zip(&batch.image_ids)
        .map(|(t, id)| match t.labels.as_slice() {
            [] => Ok(None),
            [l] if *l >= 1 => Ok(Some(l - 1)),
            ls => Err(Error::msg(format!(
                "image {id} has labels {ls:?}: an image classifier needs one class per image (is this detection data?)"
            ))),
        })
        .collect()
}

impl Model for Classifier {
    fn family(&self) -> &'static str {
        FAMILY
    }

    fn taps(&self) -> Vec<TapSpec> {
        self.cfg.taps()
    }

    fn is_trainable(&self, param: &str) -> bool {
        if param.ends_with("running_mean") || param.ends_with("running_var") {
            return false;
        }
        let Some(rest) = param.strip_prefix("backbone.") else {
            return true;
        };
        let stage = if rest.starts_with("conv1") || rest.starts_with("bn1") {
            0
        } else if let Some(r) = rest.strip_prefix("layer") {
            r.chars().next().and_then(|c| c.to_digit(10)).unwrap_or(9) as usize
        } else {
            return true;
        };
        stage >= self.frozen_stages
            && !(matches!(self.cfg.backbone.norm, NormKind::FrozenBn) && is_norm(rest))
    }

    fn backbone_prefix(&self) -> &'static str {
        "backbone."
    }

    fn forward(&self, images: &Tensor, train: bool) -> Result<Forward> {
        let (taps, logits) = self.run(images, train)?;
        Ok(Forward::new(taps, ClassForward { logits }))
    }

    fn assign(&self, _fwd: &Forward, batch: &Batch, _rng: &mut StepRng) -> Result<Assignment> {
        let labels = image_labels(batch)?;
        if let Some(l) = labels
            .iter()
            .flatten()
            .find(|&&l| l as usize >= self.num_classes)
        {
            return Err(Error::msg(format!(
                "class {} is beyond the classifier's {} classes",
                l + 1,
                self.num_classes
            )));
        }
        Ok(Assignment::new(FAMILY, ClassAssignment { labels }))
    }

    fn outputs(
        &self,
        fwd: &Forward,
        assignment: &Assignment,
        _batch: &Batch,
        want: Want,
    ) -> Result<TrainOutput> {
        let st: &ClassForward = fwd.state(FAMILY)?;
        let a: &ClassAssignment = assignment.get(FAMILY)?;
        let logits = st.logits.to_dtype(DType::F32)?;
        let mut losses = BTreeMap::new();
        if want.losses() {
            losses.insert(
                "loss_cls".to_string(),
                Loss {
                    value: cross_entropy(&logits, &a.labels)?,
                    head: Head::Classifier,
                    kind: LossKind::Classification,
                },
            );
        }
        let mut heads = BTreeMap::new();
        if want.head(Head::Classifier) {
            let dev = logits.device().clone();
            heads.insert(
                Head::Classifier,
                HeadOutput::dense(
                    ClassScores::Categorical,
                    logits,
                    Tensor::zeros((0, 4), DType::F32, &dev)?,
                    vec![],
                    vec![],
                ),
            );
        }
        Ok(TrainOutput { losses, heads })
    }

    fn predict(&self, batch: &Batch) -> Result<Predictions> {
        let (_, logits) = self.run(&batch.images, false)?;
        let p = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        Ok(Predictions::Classes(p.to_vec2::<f32>()?))
    }

    fn class_head(&self) -> Head {
        Head::Classifier
    }
}

fn is_norm(name: &str) -> bool {
    name.contains(".bn") || name.starts_with("bn1") || name.contains("downsample.1")
}

/// Mean softmax cross-entropy over the labeled rows of `logits` (`N × K`); 0 when none is
/// labeled (a batch of unlabeled images).
pub fn cross_entropy(logits: &Tensor, labels: &[Option<u32>]) -> Result<Tensor> {
    let rows: Vec<u32> = (0..labels.len() as u32)
        .filter(|&i| labels[i as usize].is_some())
        .collect();
    if rows.is_empty() {
        return Ok((logits.sum_all()? * 0.0)?);
    }
    let dev = logits.device();
    let idx = Tensor::from_vec(rows.clone(), rows.len(), dev)?;
    let y: Vec<u32> = labels.iter().flatten().copied().collect();
    let y = Tensor::from_vec(y, rows.len(), dev)?;
    Ok(candle_nn::loss::cross_entropy(
        &logits.index_select(&idx, 0)?,
        &y,
    )?)
}

impl ClassifierConfig {
    pub fn taps(&self) -> Vec<TapSpec> {
        let ch = self.backbone.resnet(ConvImpl::Kdet).out_channels();
        let mut v: Vec<TapSpec> = ch
            .iter()
            .enumerate()
            .map(|(i, &channels)| TapSpec {
                name: format!("backbone.c{}", i + 2),
                channels,
                stride: 4 << i,
            })
            .collect();
        // Pooled vectors: stride 0 (no spatial extent).
        v.push(TapSpec {
            name: "pool".into(),
            channels: self.pooled_dim(),
            stride: 0,
        });
        if self.mlp_layers > 0 {
            // The last kept projection-head layer's output (SimCLR pretraining reads it).
            v.push(TapSpec {
                name: "mlp".into(),
                channels: self.pooled_dim(),
                stride: 0,
            });
        }
        if let Some(p) = &self.projection {
            v.push(TapSpec {
                name: "projection".into(),
                channels: p.dim,
                stride: 0,
            });
        }
        v
    }
}

impl Family for ClassifierConfig {
    fn input(&self) -> &InputConfig {
        &self.input
    }
    fn backbone(&self) -> &BackboneConfig {
        &self.backbone
    }
    fn validate(&self, p: &str) -> Check {
        ClassifierConfig::validate(self, p)
    }
    fn taps(&self) -> Vec<TapSpec> {
        ClassifierConfig::taps(self)
    }
    fn build(&self, vb: VarBuilder, num_classes: usize) -> candle_core::Result<Box<dyn Model>> {
        Ok(Box::new(Classifier::new(
            vb,
            self,
            num_classes,
            ConvImpl::Kdet,
        )?))
    }
    /// A classifier's head outputs are one row per image: any classifier's line up (the class
    /// count is checked when the teacher's weights load).
    fn check_teacher(&self, teacher: &ModelConfig, head: Head, _regression: bool) -> Check {
        if head != Head::Classifier {
            return Err(invalid(
                "arch",
                format!("a classifier has no {head:?} head"),
            ));
        }
        match teacher {
            ModelConfig::Classifier(_) => Ok(()),
            other => Err(invalid(
                "arch",
                format!(
                    "`{}` cannot teach a classifier's class logits (give a classifier)",
                    other.arch()
                ),
            )),
        }
    }
    fn classifies_images(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::Target;
    use crate::models::build::Network;
    use candle_core::Device;

    fn tiny(head: serde_json::Value, projection: Option<usize>) -> ModelConfig {
        let mut v = serde_json::json!({
            "arch": "classifier",
            "backbone": {"depth": 18, "width": 0.125},
            "input": {"min_size": 32, "max_size": 32},
            "head": head, "mlp_layers": 1,
        });
        if let Some(d) = projection {
            v["projection"] = serde_json::json!({ "dim": d });
        }
        serde_json::from_value(v).unwrap()
    }

    fn batch(labels: &[Option<u32>]) -> Batch {
        let n = labels.len();
        Batch {
            images: Tensor::rand(-1f32, 1.0, (n, 3, 32, 32), &Device::Cpu).unwrap(),
            image_sizes: vec![(32, 32); n],
            original_sizes: vec![(32, 32); n],
            image_ids: (1..=n as u64).collect(),
            targets: labels
                .iter()
                .map(|l| Target {
                    boxes: vec![],
                    labels: l.map(|l| vec![l]).unwrap_or_default(),
                    crowd: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn cross_entropy_by_hand_and_unlabeled_rows_left_out() {
        let d = Device::Cpu;
        let logits = Tensor::new(&[[0f32, (3f32).ln()], [5.0, 1.0], [1.0, 1.0]], &d).unwrap();
        // Row 0, class 1: p = 3/4 → −ln(3/4); row 1 unlabeled; row 2, class 0: −ln(1/2).
        let l = cross_entropy(&logits, &[Some(1), None, Some(0)]).unwrap();
        let want = (-(0.75f64).ln() - (0.5f64).ln()) / 2.0;
        assert!((l.to_scalar::<f32>().unwrap() as f64 - want).abs() < 1e-6);
        let z = cross_entropy(&logits, &[None, None, None]).unwrap();
        assert_eq!(z.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn cosine_logits_are_sigma_times_cosine_and_taps_exist() {
        let cfg = tiny(serde_json::json!({"type": "cosine", "sigma": 20}), Some(24));
        let net = Network::new(&cfg, 5, 1, &Device::Cpu).unwrap();
        let b = batch(&[Some(1), None, Some(5)]);
        let fwd = net.model.forward(&b.images, true).unwrap();
        let names: Vec<&String> = fwd.taps.keys().collect();
        assert_eq!(
            names,
            [
                "backbone.c2",
                "backbone.c3",
                "backbone.c4",
                "backbone.c5",
                "mlp",
                "pool",
                "projection"
            ]
        );
        assert_eq!(fwd.taps["projection"].dims(), [3, 24]);
        let a = net
            .model
            .assign(&fwd, &b, &mut rand::SeedableRng::seed_from_u64(0))
            .unwrap();
        let out = net.model.outputs(&fwd, &a, &b, Want::Losses).unwrap();
        let logits = out.head(Head::Classifier).unwrap().logits().unwrap();
        assert_eq!(logits.dims(), [3, 5]);
        // |σ cos| ≤ σ.
        let m = logits
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(m <= 20.0 + 1e-4, "{m}");
        let loss = out.losses["loss_cls"].value.to_scalar::<f32>().unwrap();
        assert!(loss.is_finite() && loss > 0.0);
        // Predictions are probabilities.
        let p = net.model.predict(&b).unwrap().into_classes().unwrap();
        assert_eq!(p.len(), 3);
        assert!((p[0].iter().sum::<f32>() - 1.0).abs() < 1e-5);
        // Parameter names: torchvision's trunk and fc, SimCLRv2's kept layer, the projection.
        let names: Vec<String> = net.named_tensors().into_iter().map(|(k, _)| k).collect();
        for n in [
            "backbone.conv1.weight",
            "mlp.0.linear.weight",
            "mlp.0.bn.running_var",
            "projection.bias",
            "fc.weight",
        ] {
            assert!(names.iter().any(|k| k == n), "{n} missing");
        }
        assert!(
            !names.iter().any(|k| k == "fc.bias"),
            "a cosine classifier has no bias"
        );
        // A detection batch (two labels on an image) is refused.
        let mut d = batch(&[Some(1)]);
        d.targets[0].labels = vec![1, 2];
        let e = net
            .model
            .assign(&fwd, &d, &mut rand::SeedableRng::seed_from_u64(0))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("one class per image"), "{e}");
    }
}
