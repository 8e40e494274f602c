//! Distillation loss terms (Chen et al. 2017 for detection, Hinton et al. 2015 for
//! classification), each a function of student and (detached) teacher tensors. The teacher side
//! never receives a gradient: every term detaches it.
//!
//! | file | term |
//! |---|---|
//! | [`weighted_kd`] | soft cross-entropy with a background weight, for RCN (softmax) and RPN (sigmoid) |
//! | [`bounded_reg`] | teacher-bounded L2 regression |
//! | [`hint`] | adaptation layer + L2/L1 hint loss |
//! | [`kd`] | temperature KD |
//! | [`teacher`] | a frozen teacher: strict loading, sanity check, eval-mode forward |
//!
//! [`Distiller`] composes the terms a config lists (DESIGN.md "Loss terms are data"): it runs the
//! teachers on the student's batch and adds named losses to the student's own, which the trainer
//! sums and logs. With several teachers each term is averaged over them.

pub mod bounded_reg;
pub mod hint;
pub mod kd;
pub mod teacher;
pub mod weighted_kd;

use std::collections::BTreeMap;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::config::{DistillTerm, LoadedConfig, SpatialMatch, Stage};
use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::models::faster_rcnn::{FasterRcnn, TrainOutput};
use hint::Adaptation;
use teacher::{Teacher, TeacherOutput};

/// Prefix of the distillation-only parameters (adaptation layers) in the student's VarMap: they
/// train and are checkpointed with the student, and are left out of `model.safetensors` and
/// exports.
pub const PARAM_PREFIX: &str = "distill.";

struct Term {
    cfg: DistillTerm,
    /// One adaptation layer per teacher (hint terms with `adaptation: true`).
    adapt: Vec<Option<Adaptation>>,
    name: String,
}

/// The configured distillation terms and their teachers.
pub struct Distiller {
    pub teachers: Vec<Teacher>,
    terms: Vec<Term>,
    /// μ of the weighted-KD term on each stage: the hard loss is scaled by it (Eq. 2).
    mu_rpn: Option<f32>,
    mu_rcn: Option<f32>,
}

impl Distiller {
    /// Check each term against the student and teachers and create the adaptation layers under
    /// `vb` (the student's VarBuilder; parameters named `distill.<term>.teacher<j>.adaptation.*`).
    pub fn new(
        cfg: &LoadedConfig,
        student: &FasterRcnn,
        vb: VarBuilder,
        teachers: Vec<Teacher>,
    ) -> Result<Self> {
        let (mut mu_rpn, mut mu_rcn) = (None, None);
        let mut terms = vec![];
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, d) in cfg.config.distill.iter().enumerate() {
            let p = format!("distill[{i}]");
            let mut adapt = vec![];
            let base = match d {
                DistillTerm::Hint {
                    student: st,
                    teacher: tt,
                    adaptation,
                    ..
                } => {
                    let sc = tap_channels(student, st)?;
                    for (j, t) in teachers.iter().enumerate() {
                        let tc = tap_channels(&t.model, tt)?;
                        if *adaptation {
                            adapt.push(Some(Adaptation::new(
                                vb.pp(format!("distill.{i}.teacher{j}.adaptation")),
                                sc,
                                tc,
                            )?));
                        } else if sc != tc {
                            return Err(cfg.error(
                                &format!("{p}.adaptation"),
                                format!(
                                    "false needs equal channels, but student `{st}` has {sc} and teachers[{j}] `{tt}` has {tc}; keep the adaptation layer"
                                ),
                            ));
                        } else {
                            adapt.push(None);
                        }
                    }
                    format!("distill.hint.{st}")
                }
                DistillTerm::WeightedKd { stage, mu, .. } => {
                    let slot = match stage {
                        Stage::Rpn => &mut mu_rpn,
                        Stage::Rcn => &mut mu_rcn,
                    };
                    if slot.replace(*mu).is_some() {
                        return Err(cfg.error(
                            &p,
                            "a second weighted_kd term on the same stage; μ balances one soft loss with the hard loss",
                        ));
                    }
                    check_stage(cfg, student, &teachers, *stage, false)?;
                    format!("distill.{}.soft_cls", stage_name(*stage))
                }
                DistillTerm::BoundedRegression { stage, bounded, .. } => {
                    check_stage(cfg, student, &teachers, *stage, true)?;
                    let kind = if *bounded { "bounded_reg" } else { "l2_reg" };
                    format!("distill.{}.{kind}", stage_name(*stage))
                }
                DistillTerm::Kd { .. } => "distill.rcn.kd".to_string(),
            };
            // Two terms of the same kind (hints on two taps of the same name cannot happen, but
            // e.g. two kd terms can) get the term index appended.
            let n = names.entry(base.clone()).or_insert(0);
            *n += 1;
            let name = if *n == 1 { base } else { format!("{base}#{i}") };
            terms.push(Term {
                cfg: d.clone(),
                adapt,
                name,
            });
        }
        Ok(Self {
            teachers,
            terms,
            mu_rpn,
            mu_rcn,
        })
    }

    /// Whether a term reads the teachers' RPN or box-head outputs.
    fn needs(&self, stage: Stage) -> bool {
        self.terms.iter().any(|t| term_stage(&t.cfg) == Some(stage))
    }

    /// Run the teachers on `batch` and add the distillation losses to the student's `losses`
    /// (scaling the hard classification losses by μ where a weighted-KD term asks for it).
    pub fn add_losses(
        &self,
        batch: &Batch,
        out: &TrainOutput,
        losses: &mut BTreeMap<String, Tensor>,
    ) -> Result<()> {
        let (rpn, rcn) = (self.needs(Stage::Rpn), self.needs(Stage::Rcn));
        let touts = self
            .teachers
            .iter()
            .map(|t| t.forward(batch, rpn, rcn.then_some(&out.sampled.rois[..])))
            .collect::<Result<Vec<_>>>()?;
        let n = self.teachers.len() as f64;
        for term in &self.terms {
            let mut sum: Option<Tensor> = None;
            for (j, to) in touts.iter().enumerate() {
                let l = term_loss(term, j, out, to)?;
                sum = Some(match sum {
                    None => l,
                    Some(s) => (s + l)?,
                });
            }
            let l = (sum.expect("at least one teacher") / n)?;
            losses.insert(term.name.clone(), l);
        }
        for (key, mu) in [
            ("loss_objectness", self.mu_rpn),
            ("loss_classifier", self.mu_rcn),
        ] {
            if let (Some(mu), Some(hard)) = (mu, losses.get_mut(key)) {
                *hard = (&*hard * mu as f64)?;
            }
        }
        Ok(())
    }
}

/// The head a term reads (`kd` works on the RCN's class logits; hints on features only).
fn term_stage(t: &DistillTerm) -> Option<Stage> {
    match t {
        DistillTerm::WeightedKd { stage, .. } | DistillTerm::BoundedRegression { stage, .. } => {
            Some(*stage)
        }
        DistillTerm::Kd { .. } => Some(Stage::Rcn),
        DistillTerm::Hint { .. } => None,
    }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Rpn => "rpn",
        Stage::Rcn => "rcn",
    }
}

fn tap_channels(m: &FasterRcnn, tap: &str) -> Result<usize> {
    m.backbone
        .tap_channels(tap)
        .ok_or_else(|| Error::msg(format!("`{tap}` is not a tap")))
}

/// The teacher must predict for the same anchors (RPN) or with the same box coding (RCN
/// regression) as the student, else its outputs do not line up with the student's.
fn check_stage(
    cfg: &LoadedConfig,
    student: &FasterRcnn,
    teachers: &[Teacher],
    stage: Stage,
    regression: bool,
) -> Result<()> {
    for t in teachers {
        let m = &t.model;
        let i = t.index;
        match stage {
            Stage::Rpn => {
                let (a, b) = (&m.rpn.cfg, &student.rpn.cfg);
                if a.anchor_sizes != b.anchor_sizes || a.aspect_ratios != b.aspect_ratios {
                    return Err(cfg.error(
                        &format!("teachers[{i}].model.rpn"),
                        "anchor_sizes and aspect_ratios must equal the student's for RPN distillation (both score the same anchors)",
                    ));
                }
            }
            Stage::Rcn => {
                if regression
                    && m.roi_heads.cfg.bbox_reg_weights != student.roi_heads.cfg.bbox_reg_weights
                {
                    return Err(cfg.error(
                        &format!("teachers[{i}].model.roi_heads.bbox_reg_weights"),
                        "must equal the student's for RCN regression distillation (deltas are compared directly)",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// One term against teacher `j`.
fn term_loss(term: &Term, j: usize, out: &TrainOutput, to: &TeacherOutput) -> Result<Tensor> {
    let missing = |what: &str| Error::msg(format!("internal: the teacher did not compute {what}"));
    Ok(match &term.cfg {
        DistillTerm::Hint {
            student,
            teacher,
            weight,
            distance,
            spatial,
            ..
        } => {
            let s = out.features.tap(student).ok_or_else(|| missing(student))?;
            let t = to.features.tap(teacher).ok_or_else(|| missing(teacher))?;
            let v = match &term.adapt[j] {
                Some(a) => a.forward(s)?,
                None => s.clone(),
            };
            let (_, _, h, w) = v.dims4()?;
            let z = match spatial {
                SpatialMatch::Resize if t.dims4()?.2 != h || t.dims4()?.3 != w => {
                    t.upsample_bilinear2d(h, w, false)?
                }
                _ => t.clone(),
            };
            (hint::hint_loss(&v, &z, *distance)? * *weight as f64)?
        }
        DistillTerm::WeightedKd {
            stage,
            temperature,
            background_weight,
            mu,
        } => {
            let (t, b) = (*temperature as f64, *background_weight as f64);
            let soft = match stage {
                Stage::Rpn => {
                    let smp = out.rpn.samples.as_ref().ok_or_else(|| missing("samples"))?;
                    let (tl, _) = to.rpn.as_ref().ok_or_else(|| missing("the RPN"))?;
                    let idx = Tensor::from_vec(
                        smp.sampled.clone(),
                        smp.sampled.len(),
                        out.rpn.logits.device(),
                    )?;
                    same_shape(&out.rpn.logits, tl, "RPN objectness")?;
                    let s = out.rpn.logits.flatten_all()?.index_select(&idx, 0)?;
                    let tt = tl.flatten_all()?.index_select(&idx, 0)?;
                    weighted_kd::weighted_soft_bce(&s, &tt, t, b)?
                }
                Stage::Rcn => {
                    let th = to.head.as_ref().ok_or_else(|| missing("the box head"))?;
                    weighted_kd::weighted_soft_ce(&out.head.class_logits, &th.class_logits, t, b)?
                }
            };
            (soft * (1.0 - *mu as f64))?
        }
        DistillTerm::BoundedRegression {
            stage,
            margin,
            weight,
            bounded,
        } => {
            let (s, t, y, n) = match stage {
                Stage::Rpn => {
                    let smp = out.rpn.samples.as_ref().ok_or_else(|| missing("samples"))?;
                    let (_, td) = to.rpn.as_ref().ok_or_else(|| missing("the RPN"))?;
                    same_shape(&out.rpn.deltas, td, "RPN deltas")?;
                    let dev = out.rpn.deltas.device();
                    let np = smp.positives.len();
                    let idx = Tensor::from_vec(smp.positives.clone(), np, dev)?;
                    let s = out.rpn.deltas.reshape(((), 4))?.index_select(&idx, 0)?;
                    let t = td.reshape(((), 4))?.index_select(&idx, 0)?;
                    let y = Tensor::from_vec(smp.targets.clone(), (np, 4), dev)?;
                    (s, t, y, smp.sampled.len())
                }
                Stage::Rcn => {
                    let th = to.head.as_ref().ok_or_else(|| missing("the box head"))?;
                    let labels = &out.sampled.labels;
                    let c4 = out.head.box_regression.dim(1)?;
                    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] > 0).collect();
                    let idx: Vec<u32> = pos
                        .iter()
                        .flat_map(|&i| (0..4).map(move |k| (i * c4) as u32 + 4 * labels[i] + k))
                        .collect();
                    let dev = out.head.box_regression.device();
                    let np = pos.len();
                    let idx = Tensor::from_vec(idx, np * 4, dev)?;
                    let pick = |r: &Tensor| -> candle_core::Result<Tensor> {
                        r.flatten_all()?.index_select(&idx, 0)?.reshape((np, 4))
                    };
                    let y: Vec<f32> = pos.iter().flat_map(|&i| out.sampled.targets[i]).collect();
                    (
                        pick(&out.head.box_regression)?,
                        pick(&th.box_regression)?,
                        Tensor::from_vec(y, (np, 4), dev)?,
                        labels.len(),
                    )
                }
            };
            let l = if *bounded {
                bounded_reg::bounded_l2(&s, &t, &y, *margin as f64, n as f64)?
            } else {
                bounded_reg::plain_l2(&s, &t, n as f64)?
            };
            (l * *weight as f64)?
        }
        DistillTerm::Kd {
            temperature,
            weight,
        } => {
            let th = to.head.as_ref().ok_or_else(|| missing("the box head"))?;
            (kd::kd_loss(
                &out.head.class_logits,
                &th.class_logits,
                *temperature as f64,
            )? * *weight as f64)?
        }
    })
}

fn same_shape(s: &Tensor, t: &Tensor, what: &str) -> Result<()> {
    if s.dims() != t.dims() {
        return Err(Error::msg(format!(
            "{what}: the teacher produced {:?} where the student has {:?} (different anchors or strides)",
            t.dims(),
            s.dims()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::data::loader::Target;
    use crate::models::init::SeededVarMap;
    use crate::ops::conv::ConvImpl;
    use candle_core::{DType, Device};
    use rand::SeedableRng;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn tiny() -> ModelConfig {
        serde_json::from_value(serde_json::json!({
            "backbone": {"depth": 18, "width": 0.25, "norm": "bn", "trainable_layers": 5},
            "fpn": {"out_channels": 16},
            "input": {"min_size": 64, "max_size": 64},
            "rpn": {"anchor_sizes": [8, 16, 24, 32, 48]},
            "roi_heads": {"representation_size": 16, "batch_size_per_image": 16}
        }))
        .unwrap()
    }

    #[test]
    fn gradients_reach_student_and_adaptation_never_teacher() {
        let dev = Device::Cpu;
        let cfg = crate::config::from_str(
            "x.json",
            r#"{"teachers": [{"weights": "t.safetensors"}], "distill": [
                {"type": "hint", "student": "fpn.p3", "teacher": "fpn.p3"},
                {"type": "weighted_kd", "stage": "rpn"}, {"type": "weighted_kd", "stage": "rcn", "mu": 0.25},
                {"type": "bounded_regression", "stage": "rpn"}, {"type": "bounded_regression", "stage": "rcn"},
                {"type": "kd"}]}"#,
        )
        .unwrap();
        let student_vars = Arc::new(SeededVarMap::new(1));
        let student = FasterRcnn::new(
            student_vars.builder(DType::F32, &dev),
            &tiny(),
            3,
            ConvImpl::Kdet,
        )
        .unwrap();
        // The teacher: another seed, over plain tensors.
        let tv = Arc::new(SeededVarMap::new(2));
        FasterRcnn::new(tv.builder(DType::F32, &dev), &tiny(), 3, ConvImpl::Kdet).unwrap();
        let plain: HashMap<String, Tensor> = crate::models::weights::named_tensors(&tv.varmap)
            .into_iter()
            .map(|(k, t)| (k, t.detach()))
            .collect();
        let tm = FasterRcnn::new(
            VarBuilder::from_tensors(plain, DType::F32, &dev),
            &tiny(),
            3,
            ConvImpl::Kdet,
        )
        .unwrap();
        let d = Distiller::new(
            &cfg,
            &student,
            student_vars.builder(DType::F32, &dev),
            vec![Teacher::from_model(tm, 0)],
        )
        .unwrap();
        let images = Tensor::rand(0f32, 1.0, (2, 3, 64, 64), &dev).unwrap();
        let batch = Batch {
            images,
            image_sizes: vec![(64, 64); 2],
            original_sizes: vec![(64, 64); 2],
            image_ids: vec![1, 2],
            targets: vec![
                Target {
                    boxes: vec![[4.0, 4.0, 30.0, 40.0]],
                    labels: vec![1],
                    crowd: vec![],
                },
                Target {
                    boxes: vec![[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 16.0, 16.0]],
                    labels: vec![2, 1],
                    crowd: vec![],
                },
            ],
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut out = student.forward_train(&batch, &mut rng).unwrap();
        let mut losses = std::mem::take(&mut out.losses);
        let hard_cls = losses["loss_classifier"].to_scalar::<f32>().unwrap();
        d.add_losses(&batch, &out, &mut losses).unwrap();
        // μ = 0.25 scaled the hard RCN loss.
        let scaled = losses["loss_classifier"].to_scalar::<f32>().unwrap();
        assert!((scaled - 0.25 * hard_cls).abs() < 1e-6);
        assert_eq!(losses.len(), 4 + 6);
        let total = losses
            .values()
            .cloned()
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let grads = total.backward().unwrap();
        let vars = student_vars.varmap.data().lock().unwrap();
        for name in [
            "distill.0.teacher0.adaptation.weight",
            "backbone.body.layer1.0.conv1.weight",
            "rpn.head.cls_logits.weight",
            "roi_heads.box_predictor.cls_score.weight",
        ] {
            let g = grads.get(vars[name].as_tensor()).expect(name);
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "{name} got a zero gradient");
        }
        // Nothing of the teacher is in the graph: its outputs track no operation.
        let to = d.teachers[0]
            .forward(&batch, true, Some(&out.sampled.rois[..]))
            .unwrap();
        assert!(!to.features.p[1].track_op());
        assert!(!to.rpn.as_ref().unwrap().0.track_op());
        assert!(!to.head.as_ref().unwrap().class_logits.track_op());
    }

    #[test]
    fn hint_without_adaptation_needs_equal_channels() {
        let dev = Device::Cpu;
        let cfg = crate::config::from_str(
            "x.json",
            r#"{"teachers": [{"weights": "t"}], "distill": [{"type": "hint", "student": "backbone.c3", "teacher": "fpn.p3", "adaptation": false}]}"#,
        )
        .unwrap();
        let v = Arc::new(SeededVarMap::new(1));
        let s = FasterRcnn::new(v.builder(DType::F32, &dev), &tiny(), 3, ConvImpl::Kdet).unwrap();
        let t = FasterRcnn::new(v.builder(DType::F32, &dev), &tiny(), 3, ConvImpl::Kdet).unwrap();
        let e = Distiller::new(
            &cfg,
            &s,
            v.builder(DType::F32, &dev),
            vec![Teacher::from_model(t, 0)],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("distill[0].adaptation") && e.contains("32") && e.contains("16"),
            "{e}"
        );
    }
}
