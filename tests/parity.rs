//! torchvision parity: a seeded random-weight torchvision Faster R-CNN (narrow ResNet-18 + FPN,
//! FrozenBatchNorm) and its outputs on two images, made by tools/make_frcnn_fixture.py. kdet
//! must load its state_dict with zero missing/unexpected keys and reproduce the transform,
//! features, proposals, RoI features and final detections.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use kdet::data::loader::{collate, Sample, Target};
use kdet::data::transforms::{normalize, resize_bilinear, resize_size, ImageF32};
use kdet::models::faster_rcnn::FasterRcnn;
use kdet::models::faster_rcnn::FasterRcnnConfig;
use kdet::models::init::SeededVarMap;
use kdet::models::layers::NormKind;
use kdet::ops::conv::ConvImpl;

fn dir() -> PathBuf {
    match std::env::var("KDET_PARITY_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/frcnn"),
    }
}

/// The fixture's architecture: the committed narrow model, or torchvision's full
/// `fasterrcnn_resnet50_fpn` when `KDET_PARITY_DIR` points at `make_frcnn_fixture.py --full`.
fn model_config() -> FasterRcnnConfig {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join("config.json")).unwrap()).unwrap();
    if cfg["depth"].as_u64() == Some(50) {
        // torchvision's defaults are kdet's defaults.
        let mut m = FasterRcnnConfig::default();
        m.roi_heads.score_thresh = cfg["box_score_thresh"].as_f64().unwrap_or(0.05) as f32;
        return m;
    }
    let mut m = FasterRcnnConfig::default();
    m.backbone.depth = 18;
    m.backbone.width = 0.25;
    m.backbone.norm = NormKind::FrozenBn;
    m.fpn.out_channels = 64;
    m.roi_heads.representation_size = 128;
    m.roi_heads.score_thresh = 0.01;
    m.input.min_size = 128;
    m.input.max_size = 192;
    m.rpn.anchor_sizes = vec![12., 24., 48., 96., 160.];
    m
}

fn load() -> (FasterRcnn, HashMap<String, Tensor>) {
    let vars = Arc::new(SeededVarMap::new(0));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join("config.json")).unwrap()).unwrap();
    let classes = cfg["num_classes"].as_u64().unwrap() as usize;
    let model = FasterRcnn::new(
        vars.builder(DType::F32, &Device::Cpu),
        &model_config(),
        classes,
        ConvImpl::Kdet,
    )
    .unwrap();
    let r = kdet::models::weights::load_safetensors(
        &vars.varmap,
        &dir().join("weights.safetensors"),
        false,
    )
    .unwrap();
    assert!(r.is_clean(), "{}", r.describe());
    let expected =
        candle_core::safetensors::load(dir().join("expected.safetensors"), &Device::Cpu).unwrap();
    (model, expected)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    flat(a)
        .iter()
        .zip(flat(b))
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn boxes(t: &Tensor) -> Vec<[f32; 4]> {
    t.to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect()
}

#[test]
fn transform_matches_torchvision() {
    let (_, exp) = load();
    let m = model_config();
    let mut samples = vec![];
    for i in 0..2 {
        let img = image::open(dir().join(format!("img{i}.png")))
            .unwrap()
            .to_rgb8();
        let mut x = ImageF32::from_rgb(&img);
        let orig = (x.h, x.w);
        normalize(&mut x, &m.input.mean, &m.input.std);
        let (h, w) = resize_size(x.h, x.w, m.input.min_size, m.input.max_size);
        let x = resize_bilinear(&x, h, w);
        samples.push(Sample {
            image_id: i,
            image: x,
            target: Target {
                boxes: vec![],
                labels: vec![],
                crowd: vec![],
            },
            original_size: orig,
            flipped: false,
        });
    }
    let b = collate(samples, 32, &Device::Cpu).unwrap();
    let sizes: Vec<Vec<i64>> = exp["image_sizes"].to_vec2().unwrap();
    assert_eq!(
        b.image_sizes,
        sizes
            .iter()
            .map(|s| (s[0] as usize, s[1] as usize))
            .collect::<Vec<_>>()
    );
    let e = max_abs(&b.images, &exp["images"]);
    assert!(e <= 1e-4, "transformed images differ by {e}");
}

#[test]
fn features_proposals_and_detections_match_torchvision() {
    let (model, exp) = load();
    let images = &exp["images"];
    let sizes: Vec<(usize, usize)> = exp["image_sizes"]
        .to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|s| (s[0] as usize, s[1] as usize))
        .collect();
    let (features, proposals, dets) = model.detect(images, &sizes).unwrap();
    for (i, name) in ["0", "1", "2", "3", "pool"].iter().enumerate() {
        let e = max_abs(&features.p[i], &exp[&format!("features.{name}")]);
        assert!(e <= 1e-4, "features.{name} differ by {e}");
    }
    // Anchors of image 0.
    let (_, _, h, w) = images.dims4().unwrap();
    let fsizes: Vec<(usize, usize)> = features
        .p
        .iter()
        .map(|f| (f.dim(2).unwrap(), f.dim(3).unwrap()))
        .collect();
    let anchors: Vec<[f32; 4]> = model
        .rpn
        .anchor_gen
        .anchors((h, w), &fsizes)
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(anchors, boxes(&exp["anchors.0"]));
    for i in 0..2 {
        let want = boxes(&exp[&format!("proposals.{i}")]);
        assert_eq!(proposals[i].len(), want.len(), "image {i}: proposal count");
        // Same order, except where torchvision's unstable sort breaks exact score ties: count
        // positions that differ and require each of them to exist elsewhere in the list.
        let close = |a: &[f32; 4], b: &[f32; 4]| (0..4).all(|k| (a[k] - b[k]).abs() <= 1e-2);
        let moved: Vec<usize> = (0..want.len())
            .filter(|&k| !close(&proposals[i][k], &want[k]))
            .collect();
        for &k in &moved {
            assert!(
                want.iter().any(|w| close(&proposals[i][k], w)),
                "image {i}: proposal {k} {:?} is not torchvision's",
                proposals[i][k]
            );
        }
        assert!(
            moved.len() <= 4,
            "image {i}: {} proposals out of place",
            moved.len()
        );
        eprintln!(
            "image {i}: {} proposals, {} swapped by tied scores",
            want.len(),
            moved.len()
        );
    }
    // RoI features of the first 8 proposals of image 0.
    if let Some(want) = exp.get("box_features.0") {
        let scales = FasterRcnn::scales(&features.p, &sizes).unwrap();
        let first8 = vec![boxes(&exp["proposals.0"])[..8].to_vec()];
        let pooled = kdet::ops::roi_align::multi_scale_roi_align(
            &features.p[..4],
            &scales[..4],
            &first8,
            7,
            2,
        )
        .unwrap();
        let e = max_abs(&pooled, want);
        assert!(e <= 1e-4, "box features differ by {e}");
    }
    // Final detections in original image coordinates.
    let orig: Vec<Vec<i64>> = exp["original_sizes"].to_vec2().unwrap();
    for (i, d) in dets.iter().enumerate() {
        let (ry, rx) = (
            orig[i][0] as f32 / sizes[i].0 as f32,
            orig[i][1] as f32 / sizes[i].1 as f32,
        );
        let got: Vec<[f32; 4]> = d
            .boxes
            .iter()
            .map(|b| [b[0] * rx, b[1] * ry, b[2] * rx, b[3] * ry])
            .collect();
        let want_boxes = boxes(&exp[&format!("boxes.{i}")]);
        let want_scores = flat(&exp[&format!("scores.{i}")]);
        let want_labels: Vec<i64> = exp[&format!("labels.{i}")].to_vec1().unwrap();
        assert_eq!(
            d.labels.len(),
            want_labels.len(),
            "image {i}: detection count"
        );
        assert_eq!(
            d.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
            want_labels,
            "image {i}: labels"
        );
        for (k, (g, w)) in got.iter().zip(&want_boxes).enumerate() {
            for j in 0..4 {
                assert!(
                    (g[j] - w[j]).abs() <= 1e-2,
                    "image {i} det {k}: box {g:?} vs {w:?}"
                );
            }
            assert!(
                (d.scores[k] - want_scores[k]).abs() <= 1e-4,
                "image {i} det {k}: score {} vs {}",
                d.scores[k],
                want_scores[k]
            );
        }
    }
}
