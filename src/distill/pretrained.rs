//! Teachers of image classifiers (methods `simclr` and `cbd`): a kdet classifier
//! ([`Teacher`], read through the model contract: its `pool` tap and its classifier head), or a
//! pretrained vision model from candle-transformers loaded from safetensors (local or `hf://`):
//! its ResNet (`candle_transformers::models::resnet`, torchvision / timm names) or DINOv2
//! (`candle_transformers::models::dinov2::DinoVisionTransformer`, facebookresearch/dinov2's
//! names). Every teacher is frozen — plain tensors, no autograd graph — and returns f32.
//!
//! Loading is strict: the names and shapes the candle-transformers model asks for are recorded
//! by building it once over a recording backend and compared with the file's (after
//! `teachers[i].keys`); missing or mis-shaped tensors are always an error naming the file and
//! the key, unexpected ones unless `strict: false`. Two tensors are accounted for explicitly:
//! DINOv2's `mask_token` (used only by its masked-image pretraining) is ignored, and when a
//! DINOv2 file has no `head` (the torch-hub backbone checkpoints), the model — whose
//! constructor always builds the 1000-class linear head — gets a zero head and the teacher
//! offers features only.
//!
//! Each pretrained teacher sees the student's batch un-normalised (student `mean`/`std`),
//! re-normalised with its own and resized bilinearly to its own square input.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use candle_core::{DType, Device, IndexOp, Module, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use candle_transformers::models::{dinov2, resnet};

use super::teacher::Teacher;
use crate::config::distill::PretrainedConfig;
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::data::transforms::InputConfig;
use crate::engine::checkpoint::FrozenInput;
use crate::engine::method::{Reference, RunData};
use crate::error::{Error, Result};
use crate::models::classifier::l2_normalize;
use crate::models::contract::{Head, StepRng, Want};
use crate::models::weights::{read_state_dict, LoadReport};
use crate::util::sha256_file;

/// A VarBuilder backend that hands out zeros and records every name and shape asked for: what
/// a candle-transformers model expects of a weights file.
#[derive(Default)]
pub struct Recorder(Mutex<BTreeMap<String, Vec<usize>>>);

impl Recorder {
    pub fn names(&self) -> BTreeMap<String, Vec<usize>> {
        self.0.lock().expect("recorder lock").clone()
    }
}

struct RecorderRef(std::sync::Arc<Recorder>);

impl SimpleBackend for RecorderRef {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
             .0
            .lock()
            .expect("recorder lock")
            .insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros(s, dtype, dev)
    }
    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: the recorder needs a shape")
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// The names and shapes `build` asks of its VarBuilder.
pub fn expected_tensors(
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<()>,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let rec = std::sync::Arc::new(Recorder::default());
    let vb: VarBuilder<'static> =
        VarBuilder::from_backend(Box::new(RecorderRef(rec.clone())), DType::F32, Device::Cpu);
    build(vb)?;
    Ok(rec.names())
}

/// Compare a file's tensors with what a model expects.
pub fn compare_tensors(
    expected: &BTreeMap<String, Vec<usize>>,
    file: &HashMap<String, Tensor>,
    ignored: &[&str],
) -> LoadReport {
    let mut r = LoadReport::default();
    for (k, shape) in expected {
        match file.get(k) {
            None => r.missing.push(k.clone()),
            Some(t) if t.dims() != shape.as_slice() => {
                r.mismatched
                    .push((k.clone(), shape.clone(), t.dims().to_vec()))
            }
            Some(_) => r.loaded += 1,
        }
    }
    let mut unexpected: Vec<String> = file
        .keys()
        .filter(|k| {
            !expected.contains_key(*k)
                && !k.ends_with("num_batches_tracked")
                && !ignored.contains(&k.as_str())
        })
        .cloned()
        .collect();
    unexpected.sort();
    r.unexpected = unexpected;
    r.missing.sort();
    r
}

enum Net {
    Resnet {
        features: candle_nn::Func<'static>,
        logits: Option<candle_nn::Func<'static>>,
    },
    Dino {
        vit: dinov2::DinoVisionTransformer,
        depth: usize,
        head: bool,
    },
}

/// `f` on each image of `x` alone, results stacked: candle-transformers' DINOv2 concatenates
/// its class token to the patch tokens without broadcasting it over the batch, so it runs one
/// image at a time.
fn per_image(
    x: &Tensor,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let outs = (0..x.dim(0)?)
        .map(|i| f(&x.narrow(0, i, 1)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&outs, 0)
}

/// A candle-transformers model as a frozen teacher.
pub struct PretrainedTeacher {
    pub index: usize,
    pub path: PathBuf,
    pub sha256: String,
    pub config: PretrainedConfig,
    net: Net,
    feature_dim: usize,
    num_classes: Option<usize>,
    dtype: DType,
}

fn resnet_funcs(
    depth: u32,
    classes: Option<usize>,
    vb: VarBuilder<'static>,
) -> candle_core::Result<(candle_nn::Func<'static>, Option<candle_nn::Func<'static>>)> {
    let f = match depth {
        18 => resnet::resnet18_no_final_layer(vb.clone())?,
        34 => resnet::resnet34_no_final_layer(vb.clone())?,
        50 => resnet::resnet50_no_final_layer(vb.clone())?,
        101 => resnet::resnet101_no_final_layer(vb.clone())?,
        _ => resnet::resnet152_no_final_layer(vb.clone())?,
    };
    let l = match classes {
        None => None,
        Some(k) => Some(match depth {
            18 => resnet::resnet18(k, vb)?,
            34 => resnet::resnet34(k, vb)?,
            50 => resnet::resnet50(k, vb)?,
            101 => resnet::resnet101(k, vb)?,
            _ => resnet::resnet152(k, vb)?,
        }),
    };
    Ok((f, l))
}

/// DINOv2's tensor kept out of the teacher: its masked-image-modelling token.
const DINO_IGNORED: &[&str] = &["mask_token"];

impl PretrainedTeacher {
    /// Load `teachers[index]`, whose `pretrained` section is set.
    pub fn load(cfg: &LoadedConfig, index: usize, device: &Device) -> Result<Self> {
        let t = &cfg.config.teachers[index];
        let pc = t
            .pretrained
            .clone()
            .expect("called for a pretrained teacher");
        let field = format!("teachers[{index}].weights");
        let path = cfg.resolve_weights(&field, &t.weights)?;
        if !path.exists() {
            return Err(cfg.error(&field, format!("{} does not exist", path.display())));
        }
        let mut file = read_state_dict(&path, &t.keys)?;
        let (expected, ignored, classes): (_, &[&str], _) = match &pc {
            PretrainedConfig::Resnet { depth, .. } => {
                let classes = file.get("fc.weight").map(|w| w.dims()[0]);
                let d = *depth;
                let e = expected_tensors(|vb| resnet_funcs(d, classes, vb).map(|_| ()))?;
                (e, &[][..], classes)
            }
            PretrainedConfig::Dinov2 {
                depth,
                embed_dim,
                num_heads,
                ..
            } => {
                let (d, e, h) = (*depth, *embed_dim, *num_heads);
                let mut exp = expected_tensors(|vb| {
                    dinov2::DinoVisionTransformer::new(vb, d, e, h).map(|_| ())
                })?;
                let head = file.contains_key("head.weight") || file.contains_key("head.bias");
                if !head {
                    // The constructor always builds the 1000-class head; a backbone checkpoint
                    // has none: a zero head, never used (features only).
                    for k in ["head.weight", "head.bias"] {
                        let shape = exp.remove(k).expect("DINOv2 builds a head");
                        file.insert(
                            k.to_string(),
                            Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
                        );
                    }
                    exp.insert("head.weight".into(), vec![1000, 2 * e]);
                    exp.insert("head.bias".into(), vec![1000]);
                }
                (exp, DINO_IGNORED, head.then_some(1000))
            }
        };
        let report = compare_tensors(&expected, &file, ignored);
        let fatal = !report.missing.is_empty() || !report.mismatched.is_empty();
        if fatal || (t.strict && !report.unexpected.is_empty()) {
            let hint = if fatal {
                ""
            } else {
                " (set strict to false to ignore the unexpected keys)"
            };
            return Err(cfg.error(
                &field,
                format!(
                    "{} does not fit teachers[{index}].pretrained: {}{hint}",
                    path.display(),
                    report.describe()
                ),
            ));
        }
        if !report.unexpected.is_empty() {
            eprintln!(
                "warning: {field}: {} unexpected tensor(s) ignored ({}); strict is false",
                report.unexpected.len(),
                report
                    .unexpected
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let sha256 = sha256_file(&path)?;
        let dtype = t.dtype.to_candle();
        let plain: HashMap<String, Tensor> = file
            .into_iter()
            .filter(|(k, _)| expected.contains_key(k))
            .map(|(k, v)| Ok((k, v.to_dtype(dtype)?.to_device(device)?)))
            .collect::<Result<_>>()?;
        let vb = VarBuilder::from_tensors(plain, dtype, device);
        let (net, feature_dim) = match &pc {
            PretrainedConfig::Resnet { depth, .. } => {
                let (features, logits) = resnet_funcs(*depth, classes, vb)?;
                (
                    Net::Resnet { features, logits },
                    if *depth >= 50 { 2048 } else { 512 },
                )
            }
            PretrainedConfig::Dinov2 {
                depth,
                embed_dim,
                num_heads,
                ..
            } => (
                Net::Dino {
                    vit: dinov2::DinoVisionTransformer::new(vb, *depth, *embed_dim, *num_heads)?,
                    depth: *depth,
                    head: classes.is_some(),
                },
                *embed_dim,
            ),
        };
        eprintln!(
            "teacher {index}: {} tensors of a pretrained {} from {} (sha256 {})",
            report.loaded,
            match pc {
                PretrainedConfig::Resnet { depth, .. } => format!("ResNet-{depth}"),
                PretrainedConfig::Dinov2 { .. } => "DINOv2".to_string(),
            },
            path.display(),
            &sha256[..12]
        );
        Ok(Self {
            index,
            path,
            sha256,
            config: pc,
            net,
            feature_dim,
            num_classes: classes,
            dtype,
        })
    }

    /// The student's batch as this teacher expects its input.
    pub fn input(&self, images: &Tensor, student: &InputConfig) -> Result<Tensor> {
        let pi = self.config.input();
        let dev = images.device();
        let v = |a: [f32; 3]| Tensor::from_vec(a.to_vec(), (1, 3, 1, 1), dev);
        let raw = images
            .detach()
            .broadcast_mul(&v(student.std)?)?
            .broadcast_add(&v(student.mean)?)?;
        let x = raw
            .broadcast_sub(&v(pi.mean)?)?
            .broadcast_div(&v(pi.std)?)?;
        let (_, _, h, w) = x.dims4()?;
        let s = pi.size as usize;
        let x = if (h, w) == (s, s) {
            x
        } else {
            x.upsample_bilinear2d(s, s, false)?
        };
        Ok(x.to_dtype(self.dtype)?)
    }

    /// The pooled feature (ResNet: average-pooled last stage; DINOv2: the mean of the
    /// final-normalised patch tokens, the second half of DINOv2's linear-probe input), `B × D`,
    /// f32.
    pub fn features(&self, images: &Tensor, student: &InputConfig) -> Result<Tensor> {
        let x = self.input(images, student)?;
        let f = match &self.net {
            Net::Resnet { features, .. } => features.forward(&x)?,
            Net::Dino { vit, depth, .. } => per_image(&x, |xi| {
                // The last block's patch tokens after the final norm, averaged. (The class token
                // is out of reach: candle-transformers' `get_intermediate_layers` concatenates
                // the 2-D class token to the 3-D patch tokens and fails.)
                let all = vit.get_intermediate_layers(xi, &[depth - 1], false, false, true)?;
                all.i(0)?.mean(1)
            })?,
        };
        Ok(f.to_dtype(DType::F32)?)
    }

    /// Class logits, `B × K` (f32), when the model has a classifier.
    pub fn logits(&self, images: &Tensor, student: &InputConfig) -> Result<Option<Tensor>> {
        let x = self.input(images, student)?;
        Ok(match &self.net {
            Net::Resnet {
                logits: Some(l), ..
            } => Some(l.forward(&x)?.to_dtype(DType::F32)?),
            // One image at a time, as `features`: the ViT takes batches of one.
            Net::Dino {
                vit, head: true, ..
            } => Some(per_image(&x, |xi| vit.forward(xi))?.to_dtype(DType::F32)?),
            _ => None,
        })
    }
}

/// A teacher of an image classifier: a kdet classifier, or a pretrained hub model.
pub enum ClassTeacher {
    Model(Teacher),
    Pretrained(PretrainedTeacher),
}

impl ClassTeacher {
    /// Every entry of `teachers`: kdet classifiers loaded strictly and checked on the
    /// validation split (`check_images`, `min_ap` as top-1), pretrained models loaded strictly.
    pub fn load_all(cfg: &LoadedConfig, run: &RunData) -> Result<Vec<Self>> {
        let c = &cfg.config;
        let mut v = vec![];
        for (i, tc) in c.teachers.iter().enumerate() {
            if tc.pretrained.is_some() {
                v.push(ClassTeacher::Pretrained(PretrainedTeacher::load(
                    cfg,
                    i,
                    &run.device,
                )?));
                continue;
            }
            let t = Teacher::load(cfg, i, run.num_classes(), &run.device)?;
            if !t.config.classifies_images() {
                return Err(cfg.error(
                    &format!("teachers[{i}].model.arch"),
                    format!(
                        "`{}` is not a classifier: give a classifier or a `pretrained` model",
                        t.config.arch()
                    ),
                ));
            }
            if let (true, Some(val)) = (tc.check_images > 0, &run.val) {
                t.check(tc, val, c.solver.batch_size, &run.device)?;
            }
            v.push(ClassTeacher::Model(t));
        }
        Ok(v)
    }

    pub fn index(&self) -> usize {
        match self {
            ClassTeacher::Model(t) => t.index,
            ClassTeacher::Pretrained(t) => t.index,
        }
    }

    /// Width of [`features`](Self::features).
    pub fn feature_dim(&self) -> usize {
        match self {
            ClassTeacher::Model(t) => t
                .model
                .taps()
                .iter()
                .find(|s| s.name == "pool")
                .map_or(0, |s| s.channels),
            ClassTeacher::Pretrained(t) => t.feature_dim,
        }
    }

    /// Classes of its classifier (`None`: features only).
    pub fn num_classes(&self, student_classes: usize) -> Option<usize> {
        match self {
            ClassTeacher::Model(_) => Some(student_classes),
            ClassTeacher::Pretrained(t) => t.num_classes,
        }
    }

    /// The pooled feature of each image of the student's batch, `B × D`, f32, no graph.
    pub fn features(&self, batch: &Batch, student: &InputConfig) -> Result<Tensor> {
        match self {
            ClassTeacher::Model(t) => {
                let taps = t.run_features(batch)?;
                let f = taps.get("pool").ok_or_else(|| {
                    Error::msg(format!("teachers[{}] has no `pool` tap", t.index))
                })?;
                Ok(f.to_dtype(DType::F32)?.detach())
            }
            ClassTeacher::Pretrained(t) => Ok(t.features(&batch.images, student)?.detach()),
        }
    }

    /// The class logits of each image, `B × K`, f32, no graph; an error naming the teacher when
    /// it has no classifier.
    pub fn logits(
        &self,
        batch: &Batch,
        student: &InputConfig,
        rng: &mut StepRng,
    ) -> Result<Tensor> {
        match self {
            ClassTeacher::Model(t) => {
                let fwd = t.run(batch)?;
                let a = t.model.assign(&fwd, batch, rng)?;
                let out = t
                    .model
                    .outputs(&fwd, &a, batch, Want::Heads(&[Head::Classifier]))?;
                Ok(out.head(Head::Classifier)?.logits()?.to_dtype(DType::F32)?.detach())
            }
            ClassTeacher::Pretrained(t) => t
                .logits(&batch.images, student)?
                .map(|l| l.detach())
                .ok_or_else(|| {
                    Error::msg(format!(
                        "teachers[{}]: this pretrained model has no classifier ({} has no `fc` / `head`), so it cannot give soft labels",
                        t.index,
                        t.path.display()
                    ))
                }),
        }
    }

    pub fn frozen_input(&self) -> FrozenInput {
        match self {
            ClassTeacher::Model(t) => t.frozen_input(),
            ClassTeacher::Pretrained(t) => FrozenInput {
                key: format!("teacher{}", t.index),
                label: format!("teachers[{}]", t.index),
                path: t.path.clone(),
                sha256: t.sha256.clone(),
            },
        }
    }

    /// A kdet classifier teacher is evaluated beside the student at the end of the run.
    pub fn reference(&self) -> Option<Reference<'_>> {
        match self {
            ClassTeacher::Model(t) => Some(t.reference()),
            ClassTeacher::Pretrained(_) => None,
        }
    }
}

/// `x / ‖x‖` per row of each teacher's features, concatenated, normalised again (CBD's t̂;
/// google-research `class_balanced_distillation/train.py`, `compute_feat_distillation`).
pub fn ensemble_target(features: &[Tensor]) -> Result<Tensor> {
    let normed = features
        .iter()
        .map(l2_normalize)
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(l2_normalize(&Tensor::cat(&normed, 1)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::distill::PretrainedInput;

    /// A DINOv2 with its classifier gives soft labels for a batch of several images (the ViT
    /// runs them one at a time), each row what the image alone gives.
    #[test]
    fn dinov2_soft_labels_for_a_batch_run_image_by_image() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let (depth, dim, heads) = (1, 8, 2);
        let teacher = PretrainedTeacher {
            index: 0,
            path: PathBuf::from("tiny"),
            sha256: String::new(),
            config: PretrainedConfig::Dinov2 {
                depth,
                embed_dim: dim,
                num_heads: heads,
                input: PretrainedInput {
                    size: 28,
                    ..PretrainedInput::default()
                },
            },
            net: Net::Dino {
                vit: dinov2::DinoVisionTransformer::new(vb, depth, dim, heads).unwrap(),
                depth,
                head: true,
            },
            feature_dim: dim,
            num_classes: Some(1000),
            dtype: DType::F32,
        };
        let student = InputConfig::default();
        let images = Tensor::randn(0f32, 1.0, (3, 3, 28, 28), &dev).unwrap();
        let all = teacher.logits(&images, &student).unwrap().unwrap();
        assert_eq!(all.dims(), [3, 1000]);
        let one = teacher
            .logits(&images.narrow(0, 1, 1).unwrap(), &student)
            .unwrap()
            .unwrap();
        let d = (all.i(1..2).unwrap() - one)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
        let f = teacher.features(&images, &student).unwrap();
        assert_eq!(f.dims(), [3, dim]);
    }
}
