//! Chen et al. 2017, "Learning Efficient Object Detection Models with Knowledge Distillation"
//! (NeurIPS), as a training method: the student trains on its own losses and its own label
//! assignment, and frozen teachers add the loss terms the config lists ([`super::terms`]) —
//! hints with adaptation layers, the weighted soft cross-entropy, the teacher-bounded regression
//! (and Hinton et al. 2015's KD). The teachers run their heads on the student's assignment, so
//! both score the same anchors and RoIs.

use std::collections::BTreeMap;

use candle_nn::VarMap;

use super::teacher::Teacher;
use super::terms::{load_teachers, Terms};
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::checkpoint::FrozenInput;
use crate::engine::method::{
    own_pass, student_network, Method, NamedNetwork, OwnPass, Reference, RunData, StepOutput,
};
use crate::error::Result;
use crate::models::build::Network;
use crate::models::contract::StepRng;

/// The student, its teachers and the configured terms.
pub struct ChenDistillation {
    student: Network,
    pub teachers: Vec<Teacher>,
    terms: Terms,
}

impl ChenDistillation {
    /// The student of `model`, the teachers of `teachers` and the terms of `distill`.
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let student = student_network(cfg, run)?;
        let teachers = load_teachers(cfg, run)?;
        Self::with_teachers(cfg, student, teachers)
    }

    /// The terms of `cfg` between `student` and `teachers`.
    pub fn with_teachers(
        cfg: &LoadedConfig,
        student: Network,
        teachers: Vec<Teacher>,
    ) -> Result<Self> {
        let terms = Terms::new(cfg, &student, &teachers)?;
        Ok(Self {
            student,
            teachers,
            terms,
        })
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
        Some(self.terms.own_vars())
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let OwnPass {
            fwd,
            assignment: a,
            out,
        } = own_pass(self.student.model.as_ref(), batch, rng)?;
        let touts = self
            .teachers
            .iter()
            .map(|t| t.forward(batch, &a, self.terms.heads()))
            .collect::<Result<Vec<_>>>()?;
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
    use crate::distill::teacher::counting::{counted, Calls};
    use crate::models::config::ModelConfig;
    use crate::models::contract::{Head, Want};
    use candle_core::Device;
    use candle_core::Tensor;
    use rand::SeedableRng;
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

    /// A teacher of the tiny architecture over plain tensors (another seed).
    fn plain_teacher(seed: u64) -> Teacher {
        crate::distill::test_util::frozen_teacher(&tiny(), 2, seed, 0)
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
        let own_vars = d.terms.own_vars().data().lock().unwrap();
        crate::distill::test_util::assert_gradients(
            &grads,
            |n| student_vars.get(n).or(own_vars.get(n)).cloned(),
            &[
                "distill.0.teacher0.adaptation.weight",
                "backbone.body.layer1.0.conv1.weight",
                "rpn.head.cls_logits.weight",
                "roi_heads.box_predictor.cls_score.weight",
            ],
        );
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
        let ModelConfig::FasterRcnn(f) = &mut other else {
            unreachable!("tiny() is a Faster R-CNN")
        };
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

    /// A teacher over plain tensors whose FPN is twice as wide as the student's (an align conv
    /// each), seeded by `seed`.
    fn wide_teacher(seed: u64) -> Teacher {
        let mut cfg = tiny();
        let ModelConfig::FasterRcnn(f) = &mut cfg else {
            unreachable!("tiny() is a Faster R-CNN")
        };
        f.fpn.out_channels = 32;
        crate::distill::test_util::frozen_teacher(&cfg, 2, seed, 0)
    }

    #[test]
    fn feature_terms_train_the_student_and_their_variables_never_the_teacher() {
        let dev = Device::Cpu;
        let cfg = crate::config::from_str(
            "x.json",
            r#"{"teachers": [{"weights": "t.safetensors"}], "distill": [
                {"type": "pkd", "student": "fpn.p3", "teacher": "fpn.p3"},
                {"type": "cwd", "student": "fpn.p4", "teacher": "fpn.p4"},
                {"type": "mgd", "student": "fpn.p3", "teacher": "fpn.p3"},
                {"type": "fgd", "student": "fpn.p2", "teacher": "fpn.p2"},
                {"type": "hint", "student": "fpn.p5", "teacher": "fpn.p5"}]}"#,
        )
        .unwrap();
        let student = Network::new(&tiny(), 2, 1, &dev).unwrap();
        let mut d = ChenDistillation::with_teachers(&cfg, student, vec![wide_teacher(2)]).unwrap();
        let batch = batch();
        let losses = d
            .step(&batch, &mut StepRng::seed_from_u64(0))
            .unwrap()
            .losses;
        for name in [
            "distill.pkd.fpn.p3",
            "distill.cwd.fpn.p4",
            "distill.mgd.fpn.p3",
            "distill.fgd.fpn.p2.fg",
            "distill.fgd.fpn.p2.bg",
            "distill.fgd.fpn.p2.attention",
            "distill.fgd.fpn.p2.global",
            "distill.hint.fpn.p5",
        ] {
            let v = losses[name].to_scalar::<f32>().unwrap();
            assert!(v.is_finite() && v > 0.0, "{name} = {v}");
        }
        // The MGD mask is the step RNG's: the same seed gives the same loss, another seed
        // another one.
        let mut mgd = |seed| {
            d.step(&batch, &mut StepRng::seed_from_u64(seed))
                .unwrap()
                .losses["distill.mgd.fpn.p3"]
                .to_scalar::<f32>()
                .unwrap()
        };
        let (a, b, c) = (mgd(0), mgd(0), mgd(1));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let total = losses
            .values()
            .cloned()
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let grads = total.backward().unwrap();
        let student_vars = d.student.vars.varmap.data().lock().unwrap();
        let own_vars = d.terms.own_vars().data().lock().unwrap();
        crate::distill::test_util::assert_gradients(
            &grads,
            |n| student_vars.get(n).or(own_vars.get(n)).cloned(),
            &[
                "distill.0.teacher0.align.weight",
                "distill.1.teacher0.align.weight",
                "distill.2.teacher0.generation.0.weight",
                "distill.2.teacher0.generation.2.weight",
                "distill.3.teacher0.channel_add_conv_s.3.weight",
                "distill.3.teacher0.channel_add_conv_t.3.weight",
                "backbone.fpn.layer_blocks.1.0.weight",
                "backbone.fpn.layer_blocks.0.0.weight",
            ],
        );
        // GcBlock's context convs are in the graph; their gradient passes the zero-initialised
        // last conv, so it is zero at the first step (as in the official initialisation).
        assert!(grads
            .get(own_vars["distill.3.teacher0.conv_mask_s.weight"].as_tensor())
            .is_some());
        // Method variables, not the student's (never exported).
        assert!(!student_vars.keys().any(|k| k.starts_with("distill.")));
        let a = batch_assignment(&d, &batch);
        let to = d.teachers[0].forward(&batch, &a, &[]).unwrap();
        assert!(!to.taps["fpn.p2"].track_op());
    }

    /// The feature terms of the test above, hints included.
    const FEATURE_TERMS: &str = r#"[
        {"type": "pkd", "student": "fpn.p3", "teacher": "fpn.p3"},
        {"type": "cwd", "student": "fpn.p4", "teacher": "fpn.p4"},
        {"type": "mgd", "student": "fpn.p3", "teacher": "fpn.p3"},
        {"type": "fgd", "student": "fpn.p2", "teacher": "fpn.p2"},
        {"type": "hint", "student": "fpn.p5", "teacher": "fpn.p5"}]"#;

    /// Chen et al. with `distill` against a counted wide teacher.
    fn counted_method(distill: &str) -> (ChenDistillation, Arc<Calls>) {
        let cfg = crate::config::from_str(
            "x.json",
            &format!(r#"{{"teachers": [{{"weights": "t"}}], "distill": {distill}}}"#),
        )
        .unwrap();
        let student = Network::new(&tiny(), 2, 1, &Device::Cpu).unwrap();
        let (t, calls) = counted(wide_teacher(2));
        let d = ChenDistillation::with_teachers(&cfg, student, vec![t]).unwrap();
        (d, calls)
    }

    #[test]
    fn feature_terms_run_the_teachers_features_alone_with_the_same_losses() {
        let (mut d, calls) = counted_method(FEATURE_TERMS);
        let batch = batch();
        let losses = d
            .step(&batch, &mut StepRng::seed_from_u64(0))
            .unwrap()
            .losses;
        // No term reads a teacher head: its RPN and proposals never ran.
        assert_eq!(calls.get(), (0, 1), "(forward, features)");
        // The same step on the teacher's whole forward pass gives the same losses, bit for bit.
        let mut rng = StepRng::seed_from_u64(0);
        let OwnPass {
            fwd,
            assignment,
            out,
        } = own_pass(d.student.model.as_ref(), &batch, &mut rng).unwrap();
        let t = &d.teachers[0];
        let full = t
            .outputs(t.run(&batch).unwrap(), &batch, &assignment, &[])
            .unwrap();
        assert_eq!(calls.get(), (1, 1));
        let expected = d
            .terms
            .losses(&batch, &mut rng, &fwd.taps, out, &[full])
            .unwrap();
        assert_eq!(
            losses.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        for (name, l) in &losses {
            let bits = |t: &Tensor| t.to_scalar::<f32>().unwrap().to_bits();
            assert_eq!(bits(l), bits(&expected[name]), "{name}");
        }
    }

    #[test]
    fn a_term_reading_a_teacher_head_runs_its_whole_forward() {
        for head_term in [
            r#"{"type": "kd"}"#,
            r#"{"type": "weighted_kd", "stage": "rpn"}"#,
            r#"{"type": "bounded_regression", "stage": "rcn"}"#,
        ] {
            let terms = format!(
                r#"[{head_term}, {{"type": "pkd", "student": "fpn.p3", "teacher": "fpn.p3"}}]"#
            );
            let (mut d, calls) = counted_method(&terms);
            d.step(&batch(), &mut StepRng::seed_from_u64(0)).unwrap();
            assert_eq!(calls.get(), (1, 0), "{head_term}: (forward, features)");
        }
    }

    fn batch_assignment(d: &ChenDistillation, b: &Batch) -> crate::models::contract::Assignment {
        let m = &d.student.model;
        let fwd = m.forward(&b.images, true).unwrap();
        m.assign(&fwd, b, &mut StepRng::seed_from_u64(0)).unwrap()
    }

    #[test]
    fn feature_terms_pair_taps_by_stride_when_the_teacher_loads() {
        let dev = Device::Cpu;
        // The teacher's architecture comes from its sidecar: the config cannot pair the taps,
        // building the method does.
        let cfg = crate::config::from_str(
            "x.json",
            r#"{"teachers": [{"weights": "t"}], "distill": [{"type": "pkd", "student": "fpn.p3", "teacher": "fpn.p4"}]}"#,
        )
        .unwrap();
        let s = Network::new(&tiny(), 2, 1, &dev).unwrap();
        let e = ChenDistillation::with_teachers(&cfg, s, vec![plain_teacher(1)])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("distill[0]") && e.contains("stride 8") && e.contains("stride 16"),
            "{e}"
        );
    }
}
