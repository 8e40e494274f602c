//! A frozen teacher: a Faster R-CNN built from `teachers[i].model`, its weights loaded strictly
//! (missing or unexpected keys are fatal unless `strict: false`), held as plain tensors — not
//! variables — so its forward builds no autograd graph and no gradient can ever reach it. Always
//! in eval mode (BatchNorm uses running statistics). Identified by path and SHA-256 so a resumed
//! run can check it distils from the same teacher.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};

use crate::config::{LoadedConfig, TeacherConfig};
use crate::data::coco::DetectionData;
use crate::data::loader::Batch;
use crate::engine::evaluator::evaluate;
use crate::engine::trainer::Sidecar;
use crate::error::{Error, Result};
use crate::models::backbone::Features;
use crate::models::faster_rcnn::roi_heads::HeadOutput;
use crate::models::faster_rcnn::FasterRcnn;
use crate::models::init::SeededVarMap;
use crate::models::weights::{load_tensors, named_tensors, read_state_dict};
use crate::ops::boxes::Box4;
use crate::ops::conv::ConvImpl;

pub struct Teacher {
    pub model: FasterRcnn,
    /// Index in `teachers` (for messages).
    pub index: usize,
    pub path: PathBuf,
    /// Hex SHA-256 of the weights file.
    pub sha256: String,
    dtype: DType,
}

/// What a teacher computed for one batch. Every tensor is f32 and outside any autograd graph.
pub struct TeacherOutput {
    pub features: Features,
    /// Objectness logits `N × A` and deltas `N × A × 4` (when an RPN term needs them).
    pub rpn: Option<(Tensor, Tensor)>,
    /// The box head on the student's sampled RoIs (when an RCN term needs it).
    pub head: Option<HeadOutput>,
}

impl Teacher {
    /// Load `teachers[index]` of the config for `num_classes` foreground classes.
    pub fn load(
        cfg: &LoadedConfig,
        index: usize,
        num_classes: usize,
        device: &Device,
    ) -> Result<Self> {
        let t: &TeacherConfig = &cfg.config.teachers[index];
        let field = format!("teachers[{index}].weights");
        let path = if crate::hub::is_hub(&t.weights) {
            crate::hub::resolve(&t.weights)?
        } else {
            cfg.resolve(&field, Path::new(&t.weights))
        };
        if !path.exists() {
            return Err(cfg.error(&field, format!("{} does not exist", path.display())));
        }
        let model_cfg = match &t.model {
            Some(m) => m.clone(),
            None => sidecar_model(&path).map_err(|e| {
                cfg.error(
                    &format!("teachers[{index}].model"),
                    format!("not given, and {e}"),
                )
            })?,
        };
        if model_cfg.input != cfg.config.model.input {
            return Err(cfg.error(
                &format!("teachers[{index}].model.input"),
                "must equal model.input: the teacher sees the student's batch (same resize and normalisation)",
            ));
        }
        if device.is_cpu() && t.dtype == crate::config::DType::Bf16 {
            // candle's CPU backend has no bf16 matmul (the box head's linear layers).
            return Err(cfg.error(
                &format!("teachers[{index}].dtype"),
                "bf16 needs a GPU (candle has no bf16 matrix multiply on the CPU); use f16 or f32 here",
            ));
        }
        let sha256 = sha256_file(&path)?;
        let tensors = read_state_dict(&path, &t.keys)?;
        // Build once with variables to learn the expected names and shapes, load and report…
        let probe = Arc::new(SeededVarMap::new(0));
        FasterRcnn::new(
            probe.builder(DType::F32, &Device::Cpu),
            &model_cfg,
            num_classes + 1,
            ConvImpl::Kdet,
        )?;
        let report = load_tensors(&probe.varmap, &tensors)?;
        if !report.is_clean() {
            let msg = format!(
                "{} does not fit teachers[{index}].model: {}",
                path.display(),
                report.describe()
            );
            if t.strict {
                return Err(cfg.error(
                    &field,
                    format!("{msg} (set teachers[{index}].strict to false to load what fits)"),
                ));
            }
            eprintln!("warning: {field}: {msg}; strict is false, so training goes on");
        }
        eprintln!(
            "teacher {index}: loaded {} tensors from {} (sha256 {})",
            report.loaded,
            path.display(),
            &sha256[..12]
        );
        // …then rebuild over plain tensors in the teacher's precision.
        let dtype = t.dtype.to_candle();
        let mut plain = HashMap::new();
        for (k, v) in named_tensors(&probe.varmap) {
            plain.insert(k, v.detach().to_dtype(dtype)?.to_device(device)?);
        }
        let vb = VarBuilder::from_tensors(plain, dtype, device);
        let model = FasterRcnn::new(vb, &model_cfg, num_classes + 1, ConvImpl::Kdet)?;
        Ok(Self {
            model,
            index,
            path,
            sha256,
            dtype,
        })
    }

    /// A teacher from a model built in code (f32, no file behind it). Build the model over plain
    /// tensors (`VarBuilder::from_tensors`), not variables, to keep it out of autograd.
    pub fn from_model(model: FasterRcnn, index: usize) -> Self {
        Self {
            model,
            index,
            path: PathBuf::new(),
            sha256: String::new(),
            dtype: DType::F32,
        }
    }

    /// Evaluate on the first `images` of `val`; an AP below `min_ap` means the weights did not
    /// really load (or belong to another dataset): stop before spending a training run on it.
    pub fn check(
        &self,
        t: &TeacherConfig,
        val: &DetectionData,
        batch_size: usize,
        device: &Device,
    ) -> Result<f64> {
        let (summary, _) = evaluate(
            &self.model,
            val,
            &self.model.cfg.input,
            batch_size,
            device,
            Some(t.check_images),
        )?;
        let ap = summary.stats[0];
        let n = t.check_images.min(val.records.len());
        eprintln!(
            "teacher {}: AP {:.4} AP50 {:.4} on the first {n} validation images",
            self.index, ap, summary.stats[1]
        );
        if ap < t.min_ap {
            return Err(Error::msg(format!(
                "teachers[{}]: AP {ap:.4} on {n} validation images is below min_ap {} — the teacher \
                 ({}) is not a trained detector for this dataset (wrong file, wrong `model`, or \
                 classes in another order); distilling from it would only add noise",
                self.index,
                t.min_ap,
                self.path.display()
            )));
        }
        Ok(ap)
    }

    /// Run the teacher on the student's batch. `rpn`: also the RPN head; `rois`: also the box
    /// head on these RoIs (the student's samples, Chen et al. 2017 — both score the same regions).
    pub fn forward(
        &self,
        batch: &Batch,
        rpn: bool,
        rois: Option<&[Vec<Box4>]>,
    ) -> Result<TeacherOutput> {
        let images = batch.images.detach().to_dtype(self.dtype)?;
        let f = self.model.backbone.forward_t(&images, false)?;
        let rpn = if rpn {
            let (l, d) = self.model.rpn.head_outputs(&f.p)?;
            Some((l.to_dtype(DType::F32)?, d.to_dtype(DType::F32)?))
        } else {
            None
        };
        let head = match rois {
            Some(rois) => {
                let scales = FasterRcnn::scales(&f.p, &batch.image_sizes)?;
                let h = self.model.roi_heads.head(&f.p, &scales, rois)?;
                Some(HeadOutput {
                    class_logits: h.class_logits.to_dtype(DType::F32)?,
                    box_regression: h.box_regression.to_dtype(DType::F32)?,
                })
            }
            None => None,
        };
        let features = if self.dtype == DType::F32 {
            f
        } else {
            let cast = |t: &Tensor| t.to_dtype(DType::F32);
            Features {
                c: crate::models::resnet::Stages {
                    c2: cast(&f.c.c2)?,
                    c3: cast(&f.c.c3)?,
                    c4: cast(&f.c.c4)?,
                    c5: cast(&f.c.c5)?,
                },
                p: f.p.iter().map(cast).collect::<candle_core::Result<_>>()?,
            }
        };
        Ok(TeacherOutput {
            features,
            rpn,
            head,
        })
    }
}

/// The architecture recorded in the [`Sidecar`] beside a weights file.
fn sidecar_model(weights: &Path) -> Result<crate::config::ModelConfig> {
    match Sidecar::find(weights)? {
        Some(s) => s.field("model"),
        None => {
            let [a, b] = Sidecar::candidates(weights);
            Err(Error::msg(format!(
                "neither {} nor {} exists to take it from",
                a.display(),
                b.display()
            )))
        }
    }
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
