//! LAD — label assignment distillation (Nguyen et al., WACV 2022, "Improving Object Detection by
//! Label Assignment Distillation"), as mmdetection implements it (`mmdet/models/detectors/lad.py`,
//! `dense_heads/lad_head.py`): a frozen teacher, in eval mode, runs on the student's augmented
//! batch; the label assignment computed from *its* predictions (for PAA: candidates, costs,
//! top-k and GMM on the teacher's class logits and boxes) is handed to the student, which trains
//! its ordinary losses on it — for PAA, LADHead's: GIoU unweighted, averaged over the positives.
//! Nothing else passes from the teacher unless the config adds `distill` terms (`kd`, `hint`),
//! which read the teachers on that same assignment.

use std::collections::BTreeMap;

use candle_nn::VarMap;

use super::teacher::Teacher;
use super::terms::{load_teachers, Terms};
use crate::config::distill::MethodConfig;
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::checkpoint::FrozenInput;
use crate::engine::method::{
    student_network, Method, NamedNetwork, Reference, RunData, StepOutput,
};
use crate::error::Result;
use crate::models::build::Network;
use crate::models::contract::{StepRng, Want};

pub struct Lad {
    student: Network,
    pub teachers: Vec<Teacher>,
    /// The teacher whose predictions assign.
    assigner: usize,
    terms: Terms,
}

impl Lad {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let student = student_network(cfg, run)?;
        let teachers = load_teachers(cfg, run)?;
        Self::with_teachers(cfg, student, teachers)
    }

    /// LAD between `student` and `teachers`, the assigning teacher of `method.teacher`.
    pub fn with_teachers(
        cfg: &LoadedConfig,
        student: Network,
        teachers: Vec<Teacher>,
    ) -> Result<Self> {
        let assigner = match &cfg.config.method {
            Some(MethodConfig::Lad { teacher }) => *teacher,
            _ => 0,
        };
        let t = teachers
            .get(assigner)
            .ok_or_else(|| cfg.error("method.teacher", "no such teacher"))?;
        // The teacher's assignment must index the student's candidates: same family, same
        // anchors.
        student
            .config
            .family()
            .check_teacher(&t.config, student.model.class_head(), false)
            .map_err(|e| {
                cfg.error(
                    &format!("teachers[{assigner}].model.{}", e.path),
                    format!("{} (LAD hands its assignment to the student)", e.msg),
                )
            })?;
        let terms = Terms::new(cfg, &student, &teachers)?;
        Ok(Self {
            student,
            teachers,
            assigner,
            terms,
        })
    }
}

impl Method for Lad {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        vec![NamedNetwork {
            name: "",
            net: &self.student,
        }]
    }

    fn own_vars(&self) -> Option<&VarMap> {
        Some(self.terms.own_vars())
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let teacher = &self.teachers[self.assigner];
        let tfwd = teacher.run(batch)?;
        let a = teacher.model.assign(&tfwd, batch, rng)?.handed_over();
        let m = &self.student.model;
        let fwd = m.forward(&batch.images, true)?;
        let out = m.outputs(&fwd, &a, batch, Want::Losses)?;
        let heads = self.terms.heads();
        // The assigning teacher's forward pass serves the terms too.
        let mut tfwd = Some(tfwd);
        let mut touts = Vec::with_capacity(self.teachers.len());
        for (j, t) in self.teachers.iter().enumerate() {
            touts.push(match tfwd.take_if(|_| j == self.assigner) {
                Some(f) => t.outputs(f, batch, &a, heads)?,
                None => t.forward(batch, &a, heads)?,
            });
        }
        Ok(StepOutput {
            losses: self.terms.losses(batch, rng, &fwd.taps, out, &touts)?,
            metrics: BTreeMap::new(),
        })
    }

    fn frozen_inputs(&self) -> Vec<FrozenInput> {
        self.teachers.iter().map(Teacher::frozen_input).collect()
    }

    fn references(&self) -> Vec<Reference<'_>> {
        self.teachers.iter().map(Teacher::reference).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loader::Target;
    use crate::distill::teacher::counting::counted;
    use crate::models::config::ModelConfig;
    use crate::models::paa::PaaAssignment;
    use candle_core::{Device, Tensor};
    use rand::SeedableRng;

    fn tiny() -> ModelConfig {
        serde_json::from_value(serde_json::json!({
            "arch": "paa",
            "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
            "neck": {"out_channels": 8},
            "head": {"channels": 8, "num_convs": 1, "gn_groups": 4},
            "anchors": {"octave_base_scale": 2},
            "input": {"min_size": 64, "max_size": 64}
        }))
        .unwrap()
    }

    /// A frozen PAA of the tiny architecture over plain tensors, its classifier's bias raised
    /// so that its predictions (and so its assignment) depend on its seed.
    fn teacher(seed: u64, index: usize) -> Teacher {
        crate::distill::test_util::frozen_teacher(&tiny(), 2, seed, index)
    }

    fn batch() -> Batch {
        let dev = Device::Cpu;
        Batch {
            images: Tensor::rand(-1f32, 1.0, (2, 3, 64, 64), &dev).unwrap(),
            image_sizes: vec![(64, 64); 2],
            original_sizes: vec![(64, 64); 2],
            image_ids: vec![1, 2],
            targets: vec![
                Target {
                    boxes: vec![[4.0, 4.0, 30.0, 40.0], [30.0, 10.0, 60.0, 30.0]],
                    labels: vec![1, 2],
                    crowd: vec![],
                },
                Target {
                    boxes: vec![[10.0, 20.0, 50.0, 60.0]],
                    labels: vec![2],
                    crowd: vec![],
                },
            ],
        }
    }

    fn labels(t: &Teacher, b: &Batch) -> Vec<Vec<u32>> {
        let mut rng = StepRng::seed_from_u64(0);
        let a = t.model.assign(&t.run(b).unwrap(), b, &mut rng).unwrap();
        a.get::<PaaAssignment>("paa")
            .unwrap()
            .images
            .iter()
            .map(|i| i.labels.clone())
            .collect()
    }

    #[test]
    fn the_teachers_predictions_assign_and_no_gradient_reaches_it() {
        let b = batch();
        // Two teachers, two assignments: the labels come from the teacher's predictions.
        let (t1, t2) = (teacher(1, 0), teacher(2, 0));
        assert_ne!(labels(&t1, &b), labels(&t2, &b));
        let cfg = crate::config::from_str(
            "x.json",
            &serde_json::json!({"model": tiny(), "teachers": [{"weights": "t"}],
                                "method": {"type": "lad"}})
            .to_string(),
        )
        .unwrap();
        let student = Network::new(&tiny(), 2, 3, &Device::Cpu).unwrap();
        let mut lad = Lad::with_teachers(&cfg, student, vec![t1]).unwrap();
        let losses = lad.step(&b, &mut StepRng::seed_from_u64(0)).unwrap().losses;
        assert_eq!(
            losses.keys().collect::<Vec<_>>(),
            ["loss_bbox", "loss_cls", "loss_iou"]
        );
        let total = losses
            .values()
            .cloned()
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let grads = total.backward().unwrap();
        let vars = lad.student.vars.varmap.data().lock().unwrap();
        crate::distill::test_util::assert_gradients(
            &grads,
            |n| vars.get(n).cloned(),
            &[
                "bbox_head.atss_cls.weight",
                "bbox_head.atss_reg.weight",
                "bbox_head.atss_centerness.weight",
                "backbone.layer1.0.conv1.weight",
            ],
        );
        // The teacher is plain tensors: nothing of it tracks an operation.
        let out = lad.teachers[0].run(&b).unwrap();
        assert!(out.taps.values().all(|t| !t.track_op()));
    }

    #[test]
    fn the_assigning_teacher_runs_its_head_once_and_another_only_its_features() {
        let b = batch();
        let cfg = crate::config::from_str(
            "x.json",
            &serde_json::json!({"model": tiny(), "teachers": [{"weights": "t"}, {"weights": "u"}],
                                "method": {"type": "lad", "teacher": 1},
                                "distill": [{"type": "pkd", "student": "fpn.p3", "teacher": "fpn.p3"}]})
            .to_string(),
        )
        .unwrap();
        let (t0, other) = counted(teacher(1, 0));
        let (t1, assigner) = counted(teacher(2, 1));
        let student = Network::new(&tiny(), 2, 3, &Device::Cpu).unwrap();
        let mut lad = Lad::with_teachers(&cfg, student, vec![t0, t1]).unwrap();
        lad.step(&b, &mut StepRng::seed_from_u64(0)).unwrap();
        // (forward, features): the assignment needs the dense head, PKD the taps alone.
        assert_eq!(assigner.get(), (1, 0));
        assert_eq!(other.get(), (0, 1));
    }

    #[test]
    fn lad_with_pkd_adds_the_feature_term_on_the_same_step() {
        let b = batch();
        let cfg = crate::config::from_str(
            "x.json",
            &serde_json::json!({"model": tiny(), "teachers": [{"weights": "t"}],
                                "method": {"type": "lad"},
                                "distill": [{"type": "pkd", "student": "fpn.p3", "teacher": "fpn.p3"},
                                            {"type": "cwd", "student": "fpn.p4", "teacher": "fpn.p4"}]})
            .to_string(),
        )
        .unwrap();
        let student = Network::new(&tiny(), 2, 3, &Device::Cpu).unwrap();
        let mut lad = Lad::with_teachers(&cfg, student, vec![teacher(1, 0)]).unwrap();
        let losses = lad.step(&b, &mut StepRng::seed_from_u64(0)).unwrap().losses;
        assert_eq!(
            losses.keys().collect::<Vec<_>>(),
            [
                "distill.cwd.fpn.p4",
                "distill.pkd.fpn.p3",
                "loss_bbox",
                "loss_cls",
                "loss_iou"
            ]
        );
        let pkd = &losses["distill.pkd.fpn.p3"];
        assert!(pkd.to_scalar::<f32>().unwrap() > 0.0);
        let grads = pkd.backward().unwrap();
        let vars = lad.student.vars.varmap.data().lock().unwrap();
        assert!(grads
            .get(vars["neck.fpn_convs.0.conv.weight"].as_tensor())
            .is_some());
    }
}
