//! End-to-end runs of PAA, LAD and Co-LAD on a tiny synthetic set: training, evaluation,
//! inference, export, teachers, and `--resume` continuing exactly (an interrupted run ends with
//! the weights of an uninterrupted one).

mod common;

use std::path::{Path, PathBuf};

use common::{fails, kdet, merge, ok};

/// A tiny PAA config in `dir` (shared synthetic cache inside `dir`), with `extra` merged over it.
fn config(dir: &Path, name: &str, extra: serde_json::Value) -> String {
    let v = serde_json::json!({
        "data": {"synthetic": {"seed": 3, "train": 8, "val": 4, "size": 64, "classes": 3,
                               "cache_dir": dir.join("cache")}, "workers": 2},
        "model": {
            "arch": "paa",
            "backbone": {"depth": 18, "width": 0.0625, "norm": "bn", "trainable_layers": 5},
            "neck": {"out_channels": 8},
            "head": {"channels": 8, "num_convs": 1, "gn_groups": 4},
            "anchors": {"octave_base_scale": 2},
            "input": {"min_size": 64, "max_size": 64}
        },
        "solver": {"iterations": 4, "batch_size": 2, "warmup_iters": 1, "log_every": 1, "lr": 0.01},
        "output_dir": dir.join(name),
    });
    common::write_config(dir, name, v, extra)
}

/// The tensors of a safetensors file, by name.
fn tensors(p: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap()
}

fn assert_same_tensors(a: &Path, b: &Path) {
    let (x, y) = (tensors(a), tensors(b));
    assert_eq!(x.len(), y.len());
    for (k, t) in &x {
        let u = &y[k];
        let d = (t - u)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d == 0.0, "{k} differs by {d} between {a:?} and {b:?}");
    }
}

/// Train `name` straight through, and `name_resumed` stopped after 2 iterations then resumed;
/// returns both run directories.
fn straight_and_resumed(d: &Path, name: &str, extra: serde_json::Value) -> (PathBuf, PathBuf) {
    let c = config(d, name, extra.clone());
    ok(&kdet(&["train", &c]));
    let r = format!("{name}_resumed");
    let cr = config(d, &r, extra);
    ok(&kdet(&["train", &cr, "--stop-after", "2"]));
    let o = ok(&kdet(&["train", &cr, "--resume"]));
    assert!(o.contains("resumed at 2, now at 4"), "{o}");
    (d.join(name), d.join(r))
}

#[test]
fn paa_trains_resumes_exactly_evaluates_infers_and_exports() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = straight_and_resumed(d.path(), "paa", serde_json::json!({}));
    assert_same_tensors(&a.join("model.safetensors"), &b.join("model.safetensors"));
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    for k in ["loss_cls", "loss_bbox", "loss_iou", "val/AP"] {
        assert!(metrics.contains(k), "{k} missing from metrics");
    }
    // mmdetection's names: a PAA checkpoint of theirs loads with no key rule.
    let keys = tensors(&a.join("model.safetensors"));
    for k in [
        "backbone.layer1.0.conv1.weight",
        "neck.fpn_convs.4.conv.weight",
        "bbox_head.cls_convs.0.gn.weight",
        "bbox_head.atss_centerness.bias",
        "bbox_head.scales.4.scale",
    ] {
        assert!(keys.contains_key(k), "{k}");
    }
    let c = d.path().join("paa.json");
    let c = c.to_str().unwrap();
    let w = a.join("model.safetensors");
    let w = w.to_str().unwrap();
    let o = ok(&kdet(&[
        "eval",
        "--config",
        c,
        "--weights",
        w,
        "--format",
        "json",
    ]));
    assert!(o.contains("\"stats\""), "{o}");
    let img = std::fs::read_dir(d.path().join("cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("images/val_000001.png");
    let out = d.path().join("infer");
    ok(&kdet(&[
        "infer",
        "--config",
        c,
        "--weights",
        w,
        "--score-thr",
        "0",
        "--out",
        out.to_str().unwrap(),
        img.to_str().unwrap(),
    ]));
    assert!(out.join("detections.json").is_file());
    let e = d.path().join("paa_export.safetensors");
    ok(&kdet(&[
        "export",
        "--config",
        c,
        "--weights",
        w,
        "--format",
        "kdet",
        "--out",
        e.to_str().unwrap(),
    ]));
    assert_same_tensors(&e, &a.join("model.safetensors"));
    assert!(e.with_extension("json").is_file());
}

#[test]
fn lad_trains_on_the_teachers_assignment_and_checks_its_teacher() {
    let d = tempfile::tempdir().unwrap();
    // The teacher: a PAA trained briefly (its sidecar names its architecture).
    let t = config(d.path(), "teacher", serde_json::json!({"seed": 7}));
    ok(&kdet(&["train", &t]));
    let weights = d.path().join("teacher/model.safetensors");
    let lad = serde_json::json!({
        "teachers": [{"weights": weights, "check_images": 0}],
        "method": {"type": "lad"},
        "distill": [{"type": "kd", "temperature": 2, "weight": 0.5},
                    {"type": "hint", "student": "fpn.p3", "teacher": "fpn.p3"}]
    });
    let (a, b) = straight_and_resumed(d.path(), "lad", lad.clone());
    assert_same_tensors(&a.join("model.safetensors"), &b.join("model.safetensors"));
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    for k in [
        "distill.dense.kd",
        "distill.hint.fpn.p3",
        "loss_bbox",
        "teacher0/AP",
    ] {
        assert!(metrics.contains(k), "{k} missing from metrics");
    }
    // A student of another anchor layout cannot take the teacher's assignment.
    let mut bad = lad.clone();
    merge(
        &mut bad,
        serde_json::json!({"model": {"anchors": {"octave_base_scale": 3}}}),
    );
    let c = config(d.path(), "lad_bad", bad);
    let e = fails(&kdet(&["train", &c]));
    assert!(
        e.contains("teachers[0].model.anchors") && e.contains("LAD"),
        "{e}"
    );
    // A Faster R-CNN teacher cannot assign for a PAA student.
    let frcnn = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights/synth_frcnn_r18w05_teacher.safetensors");
    let mut bad = lad;
    merge(
        &mut bad,
        serde_json::json!({"teachers": [{"weights": frcnn, "check_images": 0}],
                           "model": {"input": {"min_size": 128, "max_size": 213}},
                           "data": {"synthetic": {"classes": 5}},
                           "distill": []}),
    );
    let c = config(d.path(), "lad_frcnn", bad);
    let e = fails(&kdet(&["train", &c]));
    assert!(e.contains("teachers[0].model.arch"), "{e}");
}

#[test]
fn colad_trains_two_networks_resumes_exactly_and_serves_either() {
    let d = tempfile::tempdir().unwrap();
    let colad = serde_json::json!({"method": {"type": "colad", "partner": {
        "arch": "paa",
        "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
        "neck": {"out_channels": 8},
        "head": {"channels": 8, "num_convs": 1, "gn_groups": 4},
        "anchors": {"octave_base_scale": 2},
        "input": {"min_size": 64, "max_size": 64}}}});
    let (a, b) = straight_and_resumed(d.path(), "colad", colad);
    for f in ["net1.safetensors", "net2.safetensors", "model.safetensors"] {
        assert_same_tensors(&a.join(f), &b.join(f));
    }
    // The evaluated network is network 2 (the reference's choice).
    assert_same_tensors(&a.join("model.safetensors"), &a.join("net2.safetensors"));
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    for k in [
        "net1.loss_cls",
        "net2.loss_bbox",
        "colad.net1_cost_mean",
        "colad.net2_cost_std",
        "colad.net2_share",
    ] {
        assert!(metrics.contains(k), "{k} missing from metrics");
    }
    let c = d.path().join("colad.json");
    let c = c.to_str().unwrap();
    // Either network evaluates and exports, from its model file or from the checkpoint.
    for net in ["net1", "net2"] {
        let w = a.join(format!("{net}.safetensors"));
        let o = ok(&kdet(&[
            "eval",
            "--config",
            c,
            "--weights",
            w.to_str().unwrap(),
            "--network",
            net,
            "--format",
            "json",
        ]));
        assert!(o.contains("\"stats\""), "{o}");
        let e = d.path().join(format!("{net}_export.safetensors"));
        ok(&kdet(&[
            "export",
            "--config",
            c,
            "--weights",
            a.join("checkpoint.safetensors").to_str().unwrap(),
            "--network",
            net,
            "--format",
            "kdet",
            "--out",
            e.to_str().unwrap(),
        ]));
        assert_same_tensors(&e, &w);
    }
    // Without --network: the network the method evaluates (network 2), from the checkpoint
    // as from model.safetensors; net1.safetensors is network 1 by its sidecar.
    let x = d.path().join("x.safetensors");
    ok(&kdet(&[
        "export",
        "--config",
        c,
        "--weights",
        a.join("checkpoint.safetensors").to_str().unwrap(),
        "--format",
        "kdet",
        "--out",
        x.to_str().unwrap(),
    ]));
    assert_same_tensors(&x, &a.join("net2.safetensors"));
    let eval = |w: &str| {
        let o = ok(&kdet(&[
            "eval",
            "--config",
            c,
            "--weights",
            a.join(w).to_str().unwrap(),
            "--format",
            "json",
        ]));
        let v: serde_json::Value = serde_json::from_str(&o).unwrap();
        v["stats"].clone()
    };
    assert_eq!(eval("model.safetensors"), eval("checkpoint.safetensors"));
    assert_eq!(
        eval("net1.safetensors").as_array().map(|a| a.len()),
        Some(12)
    );
    let drawn = d.path().join("drawn");
    let img = first_png(&d.path().join("cache")).expect("a synthetic image");
    ok(&kdet(&[
        "infer",
        "--config",
        c,
        "--weights",
        a.join("checkpoint.safetensors").to_str().unwrap(),
        img.to_str().unwrap(),
        "--out",
        drawn.to_str().unwrap(),
    ]));
}

/// The first PNG file under `dir`, depth first.
fn first_png(dir: &Path) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries.into_iter().find_map(|e| {
        if e.is_dir() {
            first_png(&e)
        } else {
            e.extension().is_some_and(|x| x == "png").then_some(e)
        }
    })
}

/// Two networks of one architecture and no `partner_seed` start from different weights (a
/// seed of their own each), so they never train as one network twice.
#[test]
fn colad_partners_of_one_architecture_start_different() {
    let d = tempfile::tempdir().unwrap();
    let model = serde_json::json!({
        "arch": "paa",
        "backbone": {"depth": 18, "width": 0.0625, "norm": "bn", "trainable_layers": 5},
        "neck": {"out_channels": 8},
        "head": {"channels": 8, "num_convs": 1, "gn_groups": 4},
        "anchors": {"octave_base_scale": 2},
        "input": {"min_size": 64, "max_size": 64}});
    let c = config(
        d.path(),
        "twins",
        serde_json::json!({"method": {"type": "colad", "partner": model},
                           "solver": {"iterations": 1}}),
    );
    ok(&kdet(&["train", &c]));
    let run = d.path().join("twins");
    let (n1, n2) = (
        tensors(&run.join("net1.safetensors")),
        tensors(&run.join("net2.safetensors")),
    );
    let differ = n1.iter().filter(|(k, t)| {
        let u = &n2[*k];
        t.dims().len() > 1
            && t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                != u.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    });
    assert!(differ.count() > 10, "net1 and net2 start identical");
}

#[test]
fn hints_from_a_faster_rcnn_teacher_pair_taps_by_stride() {
    let d = tempfile::tempdir().unwrap();
    let frcnn = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights/synth_frcnn_r18w05_teacher.safetensors");
    // The shipped teacher: 5 classes, 128-px input.
    let base = serde_json::json!({
        "data": {"synthetic": {"classes": 5}},
        "model": {"input": {"min_size": 128, "max_size": 213}},
        "teachers": [{"weights": frcnn, "check_images": 0}],
        "solver": {"iterations": 2}
    });
    let mut bad = base.clone();
    merge(
        &mut bad,
        serde_json::json!({"distill": [{"type": "hint", "student": "fpn.p7", "teacher": "fpn.p6"}]}),
    );
    let c = config(d.path(), "hint_bad", bad);
    let e = fails(&kdet(&["train", &c]));
    assert!(
        e.contains("distill[0]")
            && e.contains("`fpn.p7` (stride 128)")
            && e.contains("`fpn.p6` (stride 64)"),
        "{e}"
    );
    // P3–P6 exist in both (strides 8–64): the hints train.
    let mut good = base;
    merge(
        &mut good,
        serde_json::json!({"distill": [
            {"type": "hint", "student": "fpn.p3", "teacher": "fpn.p3"},
            {"type": "hint", "student": "fpn.p6", "teacher": "fpn.p6"}]}),
    );
    let c = config(d.path(), "hint", good);
    ok(&kdet(&["train", &c]));
    let metrics = std::fs::read_to_string(d.path().join("hint/metrics.jsonl")).unwrap();
    assert!(metrics.contains("distill.hint.fpn.p6"), "{metrics}");
}

/// DML between two PAA networks (as Co-LAD's pair): each on its own assignment, the other's
/// dense head scored on its anchors; resumes exactly. And between two Faster R-CNNs: the RPN and
/// RCN heads, the other's box head on this network's sampled RoIs.
#[test]
fn dml_between_two_detectors_of_one_family_resumes_exactly() {
    let d = tempfile::tempdir().unwrap();
    let peer = serde_json::json!({"model": {
        "arch": "paa",
        "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
        "neck": {"out_channels": 8},
        "head": {"channels": 8, "num_convs": 1, "gn_groups": 4},
        "anchors": {"octave_base_scale": 2},
        "input": {"min_size": 64, "max_size": 64}}});
    let dml = serde_json::json!({"method": {"type": "dml", "peers": [peer]}});
    let (a, b) = straight_and_resumed(d.path(), "dml", dml);
    for f in ["net1.safetensors", "net2.safetensors", "model.safetensors"] {
        assert_same_tensors(&a.join(f), &b.join(f));
    }
    assert_same_tensors(&a.join("model.safetensors"), &a.join("net1.safetensors"));
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    for k in [
        "net1.dml.dense",
        "net2.dml.dense",
        "net1.loss_cls",
        "net2.loss_bbox",
    ] {
        assert!(metrics.contains(k), "{k} missing from metrics");
    }
    // Two Faster R-CNNs (the tiny student of tests/common twice, the second wider).
    let c = common::config(
        d.path(),
        "frcnn_dml",
        r#"{"iterations": 2, "batch_size": 2, "warmup_iters": 1, "log_every": 1}"#,
    );
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&c).unwrap()).unwrap();
    v["method"] = serde_json::json!({"type": "dml", "peers": [{"model": {
        "arch": "faster_rcnn",
        "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
        "fpn": {"out_channels": 32},
        "rpn": {"anchor_sizes": [12, 24, 48, 96, 160]},
        "input": {"min_size": 64, "max_size": 64}}}]});
    std::fs::write(&c, v.to_string()).unwrap();
    let o = kdet(&["train", &c]);
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{s}");
    let metrics = std::fs::read_to_string(d.path().join("frcnn_dml/metrics.jsonl")).unwrap();
    for k in [
        "net1.dml.rpn",
        "net1.dml.rcn",
        "net2.dml.rcn",
        "net2.loss_classifier",
    ] {
        assert!(metrics.contains(k), "{k} missing from metrics");
    }
}
