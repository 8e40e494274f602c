//! A frozen teacher: any model family, built from `teachers[i].model` (or the sidecar beside
//! its weights), its weights loaded strictly (missing or unexpected keys are fatal unless
//! `strict: false`), held as plain tensors — not variables — so its forward builds no autograd
//! graph and no gradient can ever reach it. Always in eval mode (BatchNorm uses running
//! statistics). Identified by path and SHA-256 so a resumed run can check it distils from the
//! same teacher.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::config::distill::TeacherConfig;
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::data::Split;
use crate::device::Precision;
use crate::engine::checkpoint::FrozenInput;
use crate::engine::evaluator::evaluate;
use crate::error::{Error, Result};
use crate::models::config::ModelConfig;
use crate::models::contract::{Assignment, Forward, Head, HeadOutput, Model, Taps, Want};
use crate::models::init::SeededVarMap;
use crate::models::sidecar::Sidecar;
use crate::models::weights::{load_tensors, named_tensors, read_state_dict};

pub struct Teacher {
    pub model: Box<dyn Model>,
    pub config: ModelConfig,
    /// Index in `teachers` (for messages).
    pub index: usize,
    pub path: PathBuf,
    /// Hex SHA-256 of the weights file.
    pub sha256: String,
    dtype: DType,
}

/// What a teacher computed for one batch. Every tensor is f32 and outside any autograd graph.
pub struct TeacherOutput {
    pub taps: Taps,
    /// The heads a term reads, on the student's assignment.
    pub heads: BTreeMap<Head, HeadOutput>,
}

impl Teacher {
    /// Load `teachers[index]` of the config for `num_classes` foreground classes. Its input
    /// must be the student's: a distilling method hands it the student's batch.
    pub fn load(
        cfg: &LoadedConfig,
        index: usize,
        num_classes: usize,
        device: &Device,
    ) -> Result<Self> {
        Self::load_checked(cfg, index, num_classes, device, true)
    }

    /// Load `teachers[index]` with an input of its own (`kdet online`'s teacher, which sees each
    /// frame resized for itself).
    pub fn load_own_input(
        cfg: &LoadedConfig,
        index: usize,
        num_classes: usize,
        device: &Device,
    ) -> Result<Self> {
        Self::load_checked(cfg, index, num_classes, device, false)
    }

    fn load_checked(
        cfg: &LoadedConfig,
        index: usize,
        num_classes: usize,
        device: &Device,
        student_input: bool,
    ) -> Result<Self> {
        let t: &TeacherConfig = &cfg.config.teachers[index];
        let field = format!("teachers[{index}].weights");
        let path = cfg.resolve_weights(&field, &t.weights)?;
        if !path.exists() {
            return Err(cfg.error(&field, format!("{} does not exist", path.display())));
        }
        // Checked before the sidecar is looked for: a folder has none, and "missing sidecar"
        // would hide the real mistake.
        if path.is_dir() {
            return Err(cfg.error(
                &field,
                format!("{} is a folder, not a weights file", path.display()),
            ));
        }
        let model_cfg = match &t.model {
            Some(m) => m.clone(),
            None => Sidecar::model_of(&path).map_err(|e| {
                cfg.error(
                    &format!("teachers[{index}].model"),
                    format!("not given, and {e}"),
                )
            })?,
        };
        if student_input && model_cfg.input() != cfg.config.model.input() {
            return Err(cfg.error(
                &format!("teachers[{index}].model.input"),
                "must equal model.input: the teacher sees the student's batch (same resize and normalisation)",
            ));
        }
        if device.is_cpu() && t.dtype == Precision::Bf16 {
            // candle's CPU backend has no bf16 matmul (the box head's linear layers).
            return Err(cfg.error(
                &format!("teachers[{index}].dtype"),
                "bf16 needs a GPU (candle has no bf16 matrix multiply on the CPU); use f16 or f32 here",
            ));
        }
        let sha256 = crate::util::sha256_file(&path)?;
        let tensors = read_state_dict(&path, &t.keys)?;
        // Build once with variables to learn the expected names and shapes, load and report…
        let probe = Arc::new(SeededVarMap::new(0));
        model_cfg
            .family()
            .build(probe.builder(DType::F32, &Device::Cpu), num_classes)?;
        let report = load_tensors(&probe.varmap, &tensors)
            .map_err(|e| cfg.error(&field, format!("{}: {e}", path.display())))?;
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
        let model = model_cfg.family().build(vb, num_classes)?;
        Ok(Self {
            model,
            config: model_cfg,
            index,
            path,
            sha256,
            dtype,
        })
    }

    /// A teacher from a model built in code (f32, no file behind it). Build the model over plain
    /// tensors (`VarBuilder::from_tensors`), not variables, to keep it out of autograd.
    pub fn from_model(model: Box<dyn Model>, config: ModelConfig, index: usize) -> Self {
        Self {
            model,
            config,
            index,
            path: PathBuf::new(),
            sha256: String::new(),
            dtype: DType::F32,
        }
    }

    /// How checkpoints record it.
    pub fn frozen_input(&self) -> FrozenInput {
        FrozenInput {
            key: format!("teacher{}", self.index),
            label: format!("teachers[{}]", self.index),
            path: self.path.clone(),
            sha256: self.sha256.clone(),
        }
    }

    /// How the end-of-run evaluation names it.
    pub fn reference(&self) -> crate::engine::method::Reference<'_> {
        crate::engine::method::Reference {
            key: format!("teacher{}", self.index),
            label: format!("teacher {}", self.index),
            model: &*self.model,
            input: self.config.input(),
        }
    }

    /// Evaluate on the first `images` of `val`; an AP (a classifier: top-1 accuracy) below
    /// `min_ap` means the weights did not really load (or belong to another dataset): stop
    /// before spending a training run on it.
    pub fn check(
        &self,
        t: &TeacherConfig,
        val: &Split,
        batch_size: usize,
        device: &Device,
    ) -> Result<f64> {
        let (summary, _) = evaluate(
            &*self.model,
            val,
            self.config.input(),
            batch_size,
            device,
            Some(t.check_images),
            &[],
        )?;
        let (v, what) = (summary.primary(), summary.primary_name());
        let n = t.check_images.min(val.records().len());
        eprintln!(
            "teacher {}: {} on the first {n} validation images",
            self.index,
            summary.headline()
        );
        if v < t.min_ap {
            return Err(Error::msg(format!(
                "teachers[{}]: {what} {v:.4} on {n} validation images is below min_ap {} — the teacher \
                 ({}) is not a trained model for this dataset (wrong file, wrong `model`, or \
                 classes in another order); distilling from it would only add noise",
                self.index,
                t.min_ap,
                self.path.display()
            )));
        }
        Ok(v)
    }

    /// The teacher's forward pass on the student's batch (eval mode, no graph).
    pub fn run(&self, batch: &Batch) -> Result<Forward> {
        self.model.forward(&batch.images.detach(), false)
    }

    /// Its taps and the outputs of `heads` on `assignment` (the student's: Chen et al. 2017 —
    /// both score the same anchors and RoIs), from its forward pass `fwd`, all in f32.
    pub fn outputs(
        &self,
        fwd: Forward,
        batch: &Batch,
        assignment: &Assignment,
        heads: &[Head],
    ) -> Result<TeacherOutput> {
        let out = if heads.is_empty() {
            BTreeMap::new()
        } else {
            self.model
                .outputs(&fwd, assignment, batch, Want::Heads(heads))?
                .heads
        };
        let heads = out
            .into_iter()
            .map(|(h, o)| Ok((h, o.to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        Ok(TeacherOutput {
            taps: self.f32_taps(fwd.taps)?,
            heads,
        })
    }

    /// The teacher's taps alone on the student's batch (eval mode, no graph):
    /// [`Model::features`], which runs no head.
    pub fn run_features(&self, batch: &Batch) -> Result<Taps> {
        self.model.features(&batch.images.detach(), false)
    }

    /// What the terms read of the teacher: with `heads` to score, [`run`](Self::run) then
    /// [`outputs`](Self::outputs); with none (hints, PKD, CWD, MGD, FGD read taps only),
    /// [`run_features`](Self::run_features) — the same taps without the RPN or dense head,
    /// anchors and proposals, whose outputs nothing would read.
    pub fn forward(
        &self,
        batch: &Batch,
        assignment: &Assignment,
        heads: &[Head],
    ) -> Result<TeacherOutput> {
        if heads.is_empty() {
            return Ok(TeacherOutput {
                taps: self.f32_taps(self.run_features(batch)?)?,
                heads: BTreeMap::new(),
            });
        }
        self.outputs(self.run(batch)?, batch, assignment, heads)
    }

    /// `taps` in f32 (a half-precision teacher's, for f32 losses).
    fn f32_taps(&self, taps: Taps) -> Result<Taps> {
        if self.dtype == DType::F32 {
            return Ok(taps);
        }
        taps.into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
            .collect()
    }
}

/// A teacher that counts which pass its model runs, for the methods' tests: whether a step ran
/// the whole forward or the features alone.
#[cfg(test)]
pub(crate) mod counting {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use candle_core::Tensor;

    use super::Teacher;
    use crate::data::loader::Batch;
    use crate::error::Result;
    use crate::models::contract::{
        Assignment, CostAssignment, Forward, Head, Model, Predictions, StepRng, TapSpec, Taps,
        TrainOutput, Want,
    };

    /// How often each pass ran.
    #[derive(Default)]
    pub struct Calls {
        pub forward: AtomicUsize,
        pub features: AtomicUsize,
    }

    impl Calls {
        /// `(forward, features)` so far.
        pub fn get(&self) -> (usize, usize) {
            (
                self.forward.load(Ordering::SeqCst),
                self.features.load(Ordering::SeqCst),
            )
        }
    }

    struct Counting {
        inner: Box<dyn Model>,
        calls: Arc<Calls>,
    }

    /// `t` with its model's passes counted.
    pub fn counted(t: Teacher) -> (Teacher, Arc<Calls>) {
        let calls = Arc::new(Calls::default());
        let model = Box::new(Counting {
            inner: t.model,
            calls: calls.clone(),
        });
        (Teacher::from_model(model, t.config, t.index), calls)
    }

    impl Model for Counting {
        fn family(&self) -> &'static str {
            self.inner.family()
        }
        fn taps(&self) -> Vec<TapSpec> {
            self.inner.taps()
        }
        fn is_trainable(&self, param: &str) -> bool {
            self.inner.is_trainable(param)
        }
        fn backbone_prefix(&self) -> &'static str {
            self.inner.backbone_prefix()
        }
        fn forward(&self, images: &Tensor, train: bool) -> Result<Forward> {
            self.calls.forward.fetch_add(1, Ordering::SeqCst);
            self.inner.forward(images, train)
        }
        fn features(&self, images: &Tensor, train: bool) -> Result<Taps> {
            self.calls.features.fetch_add(1, Ordering::SeqCst);
            self.inner.features(images, train)
        }
        fn assign(&self, fwd: &Forward, batch: &Batch, rng: &mut StepRng) -> Result<Assignment> {
            self.inner.assign(fwd, batch, rng)
        }
        fn outputs(
            &self,
            fwd: &Forward,
            assignment: &Assignment,
            batch: &Batch,
            want: Want,
        ) -> Result<TrainOutput> {
            self.inner.outputs(fwd, assignment, batch, want)
        }
        fn predict(&self, batch: &Batch) -> Result<Predictions> {
            self.inner.predict(batch)
        }
        fn class_head(&self) -> Head {
            self.inner.class_head()
        }
        fn cost_assignment(&self) -> Option<&dyn CostAssignment> {
            self.inner.cost_assignment()
        }
    }
}
