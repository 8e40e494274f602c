//! Chen et al. 2017, "Learning Efficient Object Detection Models with Knowledge Distillation"
//! (NeurIPS), as a training method: the student trains on its own losses and assignment, and
//! frozen teachers add the loss terms the config lists (`distill`), each read through the model
//! contract — taps for hints (§3.3), the RPN's and box head's outputs on the student's samples
//! for the weighted soft cross-entropy (Eq. 2–3) and the teacher-bounded regression (Eq. 4),
//! plus Hinton et al. 2015's temperature KD. The teachers run their heads on the student's
//! assignment, so both score the same anchors and RoIs. With several teachers each term is
//! averaged over them. A weighted-KD term scales its head's hard classification loss by μ
//! (Eq. 2). Formulas and defaults: docs/methods.md.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Module, Tensor};
use candle_nn::VarMap;

use super::hint::{self, Adaptation};
use super::teacher::{Teacher, TeacherOutput};
use super::{bounded_reg, kd, weighted_kd};
use crate::config::distill::{DistillTerm, SpatialMatch, Stage};
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::checkpoint::FrozenInput;
use crate::engine::method::{
    student_network, Method, NamedNetwork, Reference, RunData, StepOutput,
};
use crate::error::{Error, Result};
use crate::models::build::Network;
use crate::models::contract::{
    find_tap, ClassScores, Head, LossKind, StepRng, Taps, TrainOutput, Want,
};
use crate::models::init::SeededVarMap;

struct Term {
    cfg: DistillTerm,
    /// One adaptation layer per teacher (hint terms with `adaptation: true`).
    adapt: Vec<Option<Adaptation>>,
    name: String,
}

/// The student, its teachers and the configured terms.
pub struct ChenDistillation {
    student: Network,
    /// The adaptation layers (`distill.<term>.teacher<j>.adaptation.*`): trained and
    /// checkpointed with the student, left out of its model file and exports.
    adaptation: Arc<SeededVarMap>,
    pub teachers: Vec<Teacher>,
    terms: Vec<Term>,
    /// The heads the teachers must score for the terms.
    heads: Vec<Head>,
}

fn head_of(stage: Stage) -> Head {
    match stage {
        Stage::Rpn => Head::Rpn,
        Stage::Rcn => Head::Rcn,
    }
}

/// The head a term reads (`kd` works on the RCN's class logits; hints on features only).
fn term_head(t: &DistillTerm) -> Option<Head> {
    match t {
        DistillTerm::WeightedKd { stage, .. } | DistillTerm::BoundedRegression { stage, .. } => {
            Some(head_of(*stage))
        }
        DistillTerm::Kd { .. } => Some(Head::Rcn),
        DistillTerm::Hint { .. } => None,
    }
}

/// μ of a weighted-KD term on `head`: the weight of that head's hard classification loss (Eq. 2).
fn mu_of(t: &DistillTerm, head: Head) -> Option<f32> {
    match t {
        DistillTerm::WeightedKd { stage, mu, .. } if head_of(*stage) == head => Some(*mu),
        _ => None,
    }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Rpn => "rpn",
        Stage::Rcn => "rcn",
    }
}

impl ChenDistillation {
    /// The student of `model`, the teachers of `teachers` (each checked on the validation split
    /// unless `check_images` is 0) and the terms of `distill`.
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let c = &cfg.config;
        let student = student_network(cfg, run)?;
        let mut teachers = vec![];
        for (i, tc) in c.teachers.iter().enumerate() {
            let t = Teacher::load(cfg, i, run.num_classes(), &run.device)?;
            if tc.check_images > 0 {
                match &run.val {
                    Some(v) => {
                        t.check(tc, v, c.solver.batch_size, &run.device)?;
                    }
                    None => eprintln!(
                        "warning: no validation split, so teachers[{i}] could not be checked"
                    ),
                }
            }
            teachers.push(t);
        }
        Self::with_teachers(cfg, student, teachers)
    }

    /// Check each term of `cfg` against the student and teachers and create the adaptation
    /// layers (drawn from the student's seed stream, after its own variables).
    pub fn with_teachers(
        cfg: &LoadedConfig,
        student: Network,
        teachers: Vec<Teacher>,
    ) -> Result<Self> {
        let adaptation = student.vars.sibling();
        let vb = adaptation.builder(DType::F32, &student.device);
        let student_taps = student.model.taps();
        let mut terms: Vec<Term> = vec![];
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, d) in cfg.config.distill.iter().enumerate() {
            let p = format!("distill[{i}]");
            let mut adapt = vec![];
            let base = match d {
                DistillTerm::Hint {
                    student: st,
                    teacher: tt,
                    adaptation: with_adaptation,
                    ..
                } => {
                    let sc = find_tap(&student_taps, st, student.model.family())
                        .map_err(|e| cfg.error(&format!("{p}.student"), e.to_string()))?
                        .channels;
                    for (j, t) in teachers.iter().enumerate() {
                        let tc = find_tap(&t.model.taps(), tt, t.model.family())
                            .map_err(|e| cfg.error(&format!("{p}.teacher"), e.to_string()))?
                            .channels;
                        if *with_adaptation {
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
                DistillTerm::WeightedKd { stage, .. } => {
                    let head = head_of(*stage);
                    if terms.iter().any(|t| mu_of(&t.cfg, head).is_some()) {
                        return Err(cfg.error(
                            &p,
                            "a second weighted_kd term on the same stage; μ balances one soft loss with the hard loss",
                        ));
                    }
                    check_teachers(cfg, &student, &teachers, head, false)?;
                    format!("distill.{}.soft_cls", stage_name(*stage))
                }
                DistillTerm::BoundedRegression { stage, bounded, .. } => {
                    check_teachers(cfg, &student, &teachers, head_of(*stage), true)?;
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
        let mut heads: Vec<Head> = terms.iter().filter_map(|t| term_head(&t.cfg)).collect();
        heads.sort();
        heads.dedup();
        Ok(Self {
            student,
            adaptation,
            teachers,
            terms,
            heads,
        })
    }

    /// Run the teachers on `batch` and the student's assignment, and add the terms to the
    /// student's own `out` (its hard classification losses scaled by μ where a weighted-KD term
    /// asks for it).
    fn losses(
        &self,
        batch: &Batch,
        taps: &Taps,
        out: TrainOutput,
        assignment: &crate::models::contract::Assignment,
    ) -> Result<BTreeMap<String, Tensor>> {
        let touts = self
            .teachers
            .iter()
            .map(|t| t.forward(batch, assignment, &self.heads))
            .collect::<Result<Vec<_>>>()?;
        let n = self.teachers.len() as f64;
        let mut losses = BTreeMap::new();
        for term in &self.terms {
            let mut sum: Option<Tensor> = None;
            for (j, to) in touts.iter().enumerate() {
                let l = term_loss(term, j, taps, &out, to)?;
                sum = Some(match sum {
                    None => l,
                    Some(s) => (s + l)?,
                });
            }
            let l = (sum.expect("at least one teacher") / n)?;
            losses.insert(term.name.clone(), l);
        }
        for (name, loss) in out.losses {
            let mu = match loss.kind {
                LossKind::Classification => {
                    self.terms.iter().find_map(|t| mu_of(&t.cfg, loss.head))
                }
                LossKind::Regression => None,
            };
            let value = match mu {
                Some(mu) => (&loss.value * mu as f64)?,
                None => loss.value,
            };
            losses.insert(name, value);
        }
        Ok(losses)
    }
}

impl Method for ChenDistillation {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        vec![NamedNetwork {
            name: "",
            net: &self.student,
        }]
    }

    fn own_vars(&self) -> Option<&VarMap> {
        Some(&self.adaptation.varmap)
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let m = &self.student.model;
        let fwd = m.forward(&batch.images, true)?;
        let a = m.assign(&fwd, batch, rng)?;
        let out = m.outputs(&fwd, &a, batch, Want::Losses)?;
        Ok(StepOutput {
            losses: self.losses(batch, &fwd.taps, out, &a)?,
            metrics: BTreeMap::new(),
        })
    }

    fn frozen_inputs(&self) -> Vec<FrozenInput> {
        self.teachers.iter().map(Teacher::frozen_input).collect()
    }

    fn references(&self) -> Vec<Reference<'_>> {
        self.teachers
            .iter()
            .map(|t| Reference {
                key: format!("teacher{}", t.index),
                label: format!("teacher {}", t.index),
                model: &*t.model,
                input: t.config.input(),
            })
            .collect()
    }
}

/// Every teacher must predict for the same candidates (RPN anchors) or with the same box coding
/// (RCN regression) as the student, else its outputs do not line up with the student's.
fn check_teachers(
    cfg: &LoadedConfig,
    student: &Network,
    teachers: &[Teacher],
    head: Head,
    regression: bool,
) -> Result<()> {
    for t in teachers {
        student
            .config
            .family()
            .check_teacher(&t.config, head, regression)
            .map_err(|e| cfg.error(&format!("teachers[{}].model.{}", t.index, e.path), e.msg))?;
    }
    Ok(())
}

/// One term against teacher `j`.
fn term_loss(
    term: &Term,
    j: usize,
    taps: &Taps,
    out: &TrainOutput,
    to: &TeacherOutput,
) -> Result<Tensor> {
    let missing = |what: &str| Error::msg(format!("internal: the teacher did not compute {what}"));
    let teacher_head = |h: Head| {
        to.heads
            .get(&h)
            .ok_or_else(|| missing(&format!("its {h:?} head")))
    };
    Ok(match &term.cfg {
        DistillTerm::Hint {
            student,
            teacher,
            weight,
            distance,
            spatial,
            ..
        } => {
            let s = taps.get(student).ok_or_else(|| missing(student))?;
            let t = to.taps.get(teacher).ok_or_else(|| missing(teacher))?;
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
            let head = head_of(*stage);
            let (t, b) = (*temperature as f64, *background_weight as f64);
            let (sh, th) = (out.head(head)?, teacher_head(head)?);
            sh.check_aligned(th, head)?;
            let soft = match sh.scores {
                ClassScores::Sigmoid => {
                    weighted_kd::weighted_soft_bce(&sh.logits()?, &th.logits()?, t, b)?
                }
                ClassScores::Softmax => {
                    weighted_kd::weighted_soft_ce(&sh.logits()?, &th.logits()?, t, b)?
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
            let head = head_of(*stage);
            let (sh, th) = (out.head(head)?, teacher_head(head)?);
            sh.check_aligned(th, head)?;
            let (s, t, y) = (
                sh.positive_deltas()?,
                th.positive_deltas()?,
                sh.positive_targets()?,
            );
            let n = sh.num_samples as f64;
            let l = if *bounded {
                bounded_reg::bounded_l2(&s, &t, &y, *margin as f64, n)?
            } else {
                bounded_reg::plain_l2(&s, &t, n)?
            };
            (l * *weight as f64)?
        }
        DistillTerm::Kd {
            temperature,
            weight,
        } => {
            let (sh, th) = (out.head(Head::Rcn)?, teacher_head(Head::Rcn)?);
            (kd::kd_loss(&sh.logits()?, &th.logits()?, *temperature as f64)? * *weight as f64)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::Target;
    use crate::models::config::ModelConfig;
    use candle_core::Device;
    use candle_nn::VarBuilder;
    use rand::SeedableRng;
    use std::collections::HashMap;

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

    /// A teacher of the tiny architecture over plain tensors (another seed).
    fn plain_teacher(seed: u64) -> Teacher {
        let dev = Device::Cpu;
        let tv = Network::new(&tiny(), 2, seed, &dev).unwrap();
        let plain: HashMap<String, Tensor> = tv
            .named_tensors()
            .into_iter()
            .map(|(k, t)| (k, t.detach()))
            .collect();
        let tm = tiny()
            .family()
            .build(VarBuilder::from_tensors(plain, DType::F32, &dev), 2)
            .unwrap();
        Teacher::from_model(tm, tiny(), 0)
    }

    fn batch() -> Batch {
        let dev = Device::Cpu;
        let images = Tensor::rand(0f32, 1.0, (2, 3, 64, 64), &dev).unwrap();
        Batch {
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
        }
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
        let student = Network::new(&tiny(), 2, 1, &dev).unwrap();
        let mut d = ChenDistillation::with_teachers(&cfg, student, vec![plain_teacher(2)]).unwrap();
        let batch = batch();
        // The student's own classification loss, as the plain method computes it.
        let m = &d.student.model;
        let mut rng = StepRng::seed_from_u64(0);
        let fwd = m.forward(&batch.images, true).unwrap();
        let a = m.assign(&fwd, &batch, &mut rng).unwrap();
        let own = m.outputs(&fwd, &a, &batch, Want::Losses).unwrap();
        let hard_cls = own.losses["loss_classifier"]
            .value
            .to_scalar::<f32>()
            .unwrap();
        let losses = d
            .step(&batch, &mut StepRng::seed_from_u64(0))
            .unwrap()
            .losses;
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
        let student_vars = d.student.vars.varmap.data().lock().unwrap();
        let own_vars = d.adaptation.varmap.data().lock().unwrap();
        for name in [
            "distill.0.teacher0.adaptation.weight",
            "backbone.body.layer1.0.conv1.weight",
            "rpn.head.cls_logits.weight",
            "roi_heads.box_predictor.cls_score.weight",
        ] {
            let var = student_vars.get(name).or(own_vars.get(name)).expect(name);
            let g = grads.get(var.as_tensor()).expect(name);
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "{name} got a zero gradient");
        }
        // The adaptation layers are the method's, not the student's.
        assert!(!student_vars.contains_key("distill.0.teacher0.adaptation.weight"));
        // Nothing of the teacher is in the graph: its outputs track no operation.
        let to = d.teachers[0]
            .forward(&batch, &a, &[Head::Rpn, Head::Rcn])
            .unwrap();
        assert!(!to.taps["fpn.p3"].track_op());
        assert!(!to.heads[&Head::Rpn].logits().unwrap().track_op());
        assert!(!to.heads[&Head::Rcn].logits().unwrap().track_op());
    }

    #[test]
    fn hint_without_adaptation_needs_equal_channels() {
        let dev = Device::Cpu;
        let cfg = crate::config::from_str(
            "x.json",
            r#"{"teachers": [{"weights": "t"}], "distill": [{"type": "hint", "student": "backbone.c3", "teacher": "fpn.p3", "adaptation": false}]}"#,
        )
        .unwrap();
        let s = Network::new(&tiny(), 2, 1, &dev).unwrap();
        let e = ChenDistillation::with_teachers(&cfg, s, vec![plain_teacher(1)])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("distill[0].adaptation") && e.contains("32") && e.contains("16"),
            "{e}"
        );
    }

    #[test]
    fn a_teacher_of_another_anchor_layout_is_refused() {
        let dev = Device::Cpu;
        let cfg = crate::config::from_str(
            "x.json",
            r#"{"teachers": [{"weights": "t"}], "distill": [{"type": "weighted_kd", "stage": "rpn"}]}"#,
        )
        .unwrap();
        let mut other = tiny();
        let ModelConfig::FasterRcnn(f) = &mut other;
        f.rpn.anchor_sizes = vec![9., 16., 24., 32., 48.];
        let mut t = plain_teacher(1);
        t.config = other;
        let s = Network::new(&tiny(), 2, 1, &dev).unwrap();
        let e = ChenDistillation::with_teachers(&cfg, s, vec![t])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("teachers[0].model.rpn") && e.contains("anchor_sizes"),
            "{e}"
        );
    }
}
