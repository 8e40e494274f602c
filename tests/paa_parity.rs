//! PAA and LAD against mmdetection 3.3.0 itself: a seeded random-weight PAA (ResNet-18 at base
//! width 4, FPN 16, head 16 × 2 convs, GN 4 groups) and a second one as LAD teacher, their
//! outputs, assignments, losses and detections on two images, made by tools/make_paa_fixture.py
//! (tests/fixtures/paa). kdet must load the state dicts under mmdetection's names with no key
//! left over and reproduce every stage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use kdet::data::loader::{Batch, Target};
use kdet::models::contract::{Assignment, Model, Want};
use kdet::models::init::SeededVarMap;
use kdet::models::paa::{assign, Paa, PaaAssignment, PaaConfig, STRIDES};
use kdet::ops::conv::ConvImpl;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paa")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("expected.safetensors"), &Device::Cpu).unwrap()
}

/// The fixture's architecture (its config.json) in kdet's terms.
fn config(score_voting: bool) -> PaaConfig {
    serde_json::from_value(serde_json::json!({
        "backbone": {"depth": 18, "width": 0.0625, "norm": "bn_eval", "trainable_layers": 5},
        "neck": {"out_channels": 16},
        "anchors": {"octave_base_scale": 4},
        "head": {"channels": 16, "num_convs": 2, "gn_groups": 4},
        "test": {"score_voting": score_voting}
    }))
    .unwrap()
}

fn load(file: &str, score_voting: bool) -> Paa {
    let vars = Arc::new(SeededVarMap::new(0));
    let m = Paa::new(
        vars.builder(DType::F32, &Device::Cpu),
        &config(score_voting),
        3,
        ConvImpl::Kdet,
    )
    .unwrap();
    let r =
        kdet::models::weights::load_safetensors(&vars.varmap, &dir().join(file), false).unwrap();
    assert!(r.is_clean(), "{}", r.describe());
    m
}

fn batch(exp: &HashMap<String, Tensor>) -> Batch {
    let targets = (0..2)
        .map(|i| {
            let b = exp[&format!("paa.img{i}.gt_bboxes")]
                .to_vec2::<f32>()
                .unwrap();
            let l = exp[&format!("paa.img{i}.gt_labels")]
                .to_vec1::<i64>()
                .unwrap();
            Target {
                boxes: b.iter().map(|r| [r[0], r[1], r[2], r[3]]).collect(),
                labels: l.iter().map(|&x| x as u32 + 1).collect(),
                crowd: vec![],
            }
        })
        .collect();
    let sizes = vec![(96, 128), (80, 112)];
    Batch {
        images: exp["inputs.images"].clone(),
        image_sizes: sizes.clone(),
        original_sizes: sizes,
        image_ids: vec![1, 2],
        targets,
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn close(what: &str, got: f32, want: f32, rel: f32) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-3),
        "{what}: kdet {got}, mmdetection {want}"
    );
}

#[test]
fn forward_and_anchors_match_mmdetection() {
    let exp = expected();
    let m = load("weights.safetensors", true);
    let images = &exp["inputs.images"];
    let c = m.backbone.forward_frozen(images, false, 0).unwrap();
    let p = m
        .neck
        .forward(&[c.c3.clone(), c.c4.clone(), c.c5.clone()])
        .unwrap();
    let e = max_abs(&c.c3, &exp["backbone.c3"]);
    assert!(e <= 1e-4, "backbone.c3 differs by {e}");
    for (l, (cls, reg, iou)) in m.head.forward_levels(&p).unwrap().iter().enumerate() {
        let lv = l + 3;
        let e = max_abs(&p[l], &exp[&format!("neck.p{lv}")]);
        assert!(e <= 1e-4, "neck.p{lv} differs by {e}");
        for (name, t) in [("cls_score", cls), ("bbox_pred", reg), ("iou_pred", iou)] {
            let e = max_abs(t, &exp[&format!("head.{name}.p{lv}")]);
            assert!(e <= 1e-4, "head.{name}.p{lv} differs by {e}");
        }
    }
    let sizes: Vec<(usize, usize)> = p
        .iter()
        .map(|t| (t.dim(2).unwrap(), t.dim(3).unwrap()))
        .collect();
    let (anchors, counts) = assign::anchors(&sizes, &STRIDES, 4.0);
    let want = exp["anchors"].to_vec2::<f32>().unwrap();
    assert_eq!(anchors.len(), want.len());
    for (a, w) in anchors.iter().zip(&want) {
        assert_eq!(a.as_slice(), w.as_slice());
    }
    let want_counts: Vec<usize> = exp["anchors.num_per_level"]
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&x| x as usize)
        .collect();
    assert_eq!(counts, want_counts);
}

/// The assignment's labels per image, mmdetection's encoding (`num_classes` = background).
fn labels(a: &Assignment) -> Vec<Vec<i64>> {
    a.get::<PaaAssignment>("paa")
        .unwrap()
        .images
        .iter()
        .map(|im| im.labels.iter().map(|&l| l as i64).collect())
        .collect()
}

#[test]
fn assignment_and_losses_match_mmdetection() {
    let exp = expected();
    let m = load("weights.safetensors", true);
    let b = batch(&exp);
    let fwd = m.forward(&b.images, true).unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let a = m.assign(&fwd, &b, &mut rng).unwrap();
    let got = labels(&a);
    for (i, g) in got.iter().enumerate() {
        let want = exp[&format!("paa.img{i}.labels")].to_vec1::<i64>().unwrap();
        assert_eq!(g, &want, "image {i}: labels after PAA's reassignment");
    }
    let out = m.outputs(&fwd, &a, &b, Want::Losses).unwrap();
    for name in ["loss_cls", "loss_bbox", "loss_iou"] {
        let want = exp[&format!("paa.{name}")].to_scalar::<f32>().unwrap();
        let got = out.losses[name].value.to_scalar::<f32>().unwrap();
        close(name, got, want, 1e-4);
    }
}

#[test]
fn candidate_costs_and_gmm_selection_match_mmdetection() {
    let exp = expected();
    for i in 0..2 {
        let p = format!("paa.img{i}");
        let want_inds: Vec<usize> = exp[&format!("{p}.cand.inds")]
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&x| x as usize)
            .collect();
        let want_gt: Vec<usize> = exp[&format!("{p}.cand.gt")]
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&x| x as usize)
            .collect();
        let anchors: Vec<[f32; 4]> = exp["anchors"]
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|r| [r[0], r[1], r[2], r[3]])
            .collect();
        let counts = [192, 48, 12, 4, 1];
        let gts: Vec<[f32; 4]> = exp[&format!("{p}.gt_bboxes")]
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|r| [r[0], r[1], r[2], r[3]])
            .collect();
        let c = assign::candidates(&anchors, &counts, &[true; 257], &gts, 0.1);
        assert_eq!(c.anchor, want_inds, "image {i}: MaxIoU candidates");
        assert_eq!(c.gt, want_gt, "image {i}: their boxes");
        // mmdetection's own costs through kdet's top-k + GMM + separation give its positives.
        let cost = exp[&format!("{p}.cand.cost")].to_vec1::<f32>().unwrap();
        let (pos, skipped) = assign::select(&c, &cost, gts.len(), counts.len(), 9);
        assert_eq!(skipped, 0);
        let mut got: Vec<i64> = pos.iter().map(|&(j, _)| j as i64).collect();
        got.sort();
        let mut want = exp[&format!("{p}.pos_inds")].to_vec1::<i64>().unwrap();
        want.sort();
        assert_eq!(got, want, "image {i}: positives");
    }
}

#[test]
fn lad_assignment_from_the_teacher_and_ladhead_losses() {
    let exp = expected();
    let student = load("weights.safetensors", true);
    let teacher = load("teacher.safetensors", true);
    let b = batch(&exp);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let tf = teacher.forward(&b.images, false).unwrap();
    let a = teacher.assign(&tf, &b, &mut rng).unwrap().handed_over();
    let got = labels(&a);
    for (i, g) in got.iter().enumerate() {
        let want = exp[&format!("lad.img{i}.labels")].to_vec1::<i64>().unwrap();
        assert_eq!(g, &want, "image {i}: labels from the teacher's predictions");
    }
    // The student's own assignment differs from the teacher's (the fixture is made so).
    let sf = student.forward(&b.images, true).unwrap();
    let own = student.assign(&sf, &b, &mut rng).unwrap();
    assert_ne!(labels(&own), got);
    let out = student.outputs(&sf, &a, &b, Want::Losses).unwrap();
    for name in ["loss_cls", "loss_bbox", "loss_iou"] {
        let want = exp[&format!("lad.{name}")].to_scalar::<f32>().unwrap();
        let got = out.losses[name].value.to_scalar::<f32>().unwrap();
        close(name, got, want, 1e-4);
    }
    // The same assignment, not handed over, gets PAAHead's IoU-weighted box loss.
    let own_form = teacher.assign(&tf, &b, &mut rng).unwrap();
    let out = student.outputs(&sf, &own_form, &b, Want::Losses).unwrap();
    let want = exp["lad.paa_weighted_loss_bbox"]
        .to_scalar::<f32>()
        .unwrap();
    close(
        "PAA-weighted loss_bbox",
        out.losses["loss_bbox"].value.to_scalar::<f32>().unwrap(),
        want,
        1e-4,
    );
}

#[test]
fn detections_match_mmdetection_with_and_without_score_voting() {
    let exp = expected();
    let b = batch(&exp);
    for (voting, tag) in [(true, "vote"), (false, "novote")] {
        let m = load("weights.safetensors", voting);
        let dets = m.predict(&b).unwrap().into_detections().unwrap();
        for (i, d) in dets.iter().enumerate() {
            let p = format!("det.{tag}.img{i}");
            let wb = exp[&format!("{p}.bboxes")].to_vec2::<f32>().unwrap();
            let ws = exp[&format!("{p}.scores")].to_vec1::<f32>().unwrap();
            let wl = exp[&format!("{p}.labels")].to_vec1::<i64>().unwrap();
            assert_eq!(d.boxes.len(), wb.len(), "{p}: detection count");
            for k in 0..wb.len() {
                assert_eq!(d.labels[k] as i64, wl[k] + 1, "{p}[{k}]: label");
                assert!((d.scores[k] - ws[k]).abs() <= 1e-5, "{p}[{k}]: score");
                for q in 0..4 {
                    assert!(
                        (d.boxes[k][q] - wb[k][q]).abs() <= 1e-3,
                        "{p}[{k}]: box {:?} vs {:?}",
                        d.boxes[k],
                        wb[k]
                    );
                }
            }
        }
    }
}
