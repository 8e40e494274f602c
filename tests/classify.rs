//! End to end through the binary: an image classifier on synthetic ImageFolder data — train,
//! eval, infer, compare, export its backbone into a detector — and SimCLRv2 / CBD distillation
//! with `--resume` continuing exactly.

mod common;

use std::path::Path;

use common::{fails, kdet, merge, ok};

/// A tiny classifier config over a synthetic classification set in `dir`.
fn cls_config(dir: &Path, name: &str, extra: serde_json::Value) -> String {
    let v = serde_json::json!({
        "data": {"synthetic": {"task": "classification", "seed": 2, "classes": 4, "size": 16,
                               "train": 26, "val": 8, "unlabeled": 8, "long_tail": 4,
                               "cache_dir": dir.join("cache")},
                 "workers": 1},
        "model": {"arch": "classifier",
                  "backbone": {"depth": 18, "width": 0.25, "norm": "bn", "trainable_layers": 5},
                  "input": {"min_size": 16, "max_size": 16, "size_divisible": 1, "square": true},
                  "head": {"type": "cosine"}},
        "solver": {"lr": 0.05, "batch_size": 8, "iterations": 4, "warmup_iters": 1, "log_every": 1},
        "output_dir": dir.join(name),
        "seed": 0
    });
    common::write_config(dir, name, v, extra)
}

#[test]
fn a_classifier_trains_evaluates_infers_compares_and_gives_a_detector_its_backbone() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let a = cls_config(dir, "a", serde_json::json!({}));
    let out = ok(&kdet(&["train", &a]));
    assert!(out.contains("student: val top-1"), "{out}");
    let run = dir.join("a");
    let ev: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("eval.json")).unwrap()).unwrap();
    assert_eq!(ev["task"], "classification");
    // The long tail (ratio 4) gives frequency groups.
    assert!(ev["summary"]["groups"].is_array(), "{ev}");
    let preds: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(run.join("predictions.json")).unwrap()).unwrap();
    assert_eq!(preds.len(), 8);
    // kdet eval from config and weights: the same numbers.
    let w = run.join("model.safetensors");
    let e = ok(&kdet(&[
        "eval",
        "--config",
        &a,
        "--weights",
        w.to_str().unwrap(),
        "--per-class",
    ]));
    let top1 = ev["summary"]["top1"].as_f64().unwrap();
    assert!(e.contains(&format!("top-1 accuracy {top1:.4}")), "{e}");
    assert!(e.contains("| train images |"), "{e}");
    // Infer: top-k classes printed and written.
    let val = Path::new(ev["gt"].as_str().unwrap()).to_path_buf();
    let inf = dir.join("inf");
    let o = ok(&kdet(&[
        "infer",
        "--config",
        &a,
        "--weights",
        w.to_str().unwrap(),
        val.join("red_circle").to_str().unwrap(),
        "--out",
        inf.to_str().unwrap(),
        "--top-k",
        "3",
    ]));
    assert!(o.contains("red_circle/000") && o.contains("top-3"), "{o}");
    let p: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(inf.join("predictions.json")).unwrap()).unwrap();
    assert_eq!(p[0]["top"].as_array().unwrap().len(), 3);
    // --top-k 0 is refused; above the class count it is clamped and said, and --score-thr
    // (a detector's flag) is said to be ignored.
    let img = val.join("red_circle");
    let infer_with = |k: &str, out: &str| {
        let out = dir.join(out);
        let mut args = vec![
            "infer",
            "--config",
            a.as_str(),
            "--weights",
            w.to_str().unwrap(),
        ];
        args.extend([img.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        args.extend(["--top-k", k, "--score-thr", "0.3"]);
        kdet(&args)
    };
    let e = fails(&infer_with("0", "inf0"));
    assert!(
        e.contains("--top-k") && e.contains("must be at least 1"),
        "{e}"
    );
    let o = ok(&infer_with("1000", "inf_all"));
    assert!(o.contains("--top-k 1000 is more than the model's"), "{o}");
    assert!(o.contains("--score-thr applies to detectors"), "{o}");
    // Compare with another seed: bootstrap intervals on top-1 and the groups.
    let b = cls_config(dir, "b", serde_json::json!({"seed": 1}));
    ok(&kdet(&["train", &b]));
    let c = ok(&kdet(&[
        "compare",
        run.to_str().unwrap(),
        dir.join("b").to_str().unwrap(),
        "--bootstrap",
        "50",
    ]));
    assert!(
        c.contains("| top1 |")
            && c.contains("| top1_few |")
            && c.contains("| class | top-1 a | top-1 b |"),
        "{c}"
    );
    // A detector run cannot be compared with a classifier run.
    let gt = serde_json::json!({"gt": "x.json", "detections": "d.json"});
    std::fs::create_dir_all(dir.join("det")).unwrap();
    std::fs::write(dir.join("det/eval.json"), gt.to_string()).unwrap();
    let e = fails(&kdet(&[
        "compare",
        run.to_str().unwrap(),
        dir.join("det").to_str().unwrap(),
    ]));
    assert!(e.contains("not the same kind of run"), "{e}");
    // The backbone, exported with torchvision's names, initialises a Faster R-CNN student.
    let bb = dir.join("backbone.safetensors");
    ok(&kdet(&[
        "export",
        "--config",
        &a,
        "--weights",
        w.to_str().unwrap(),
        "--out",
        bb.to_str().unwrap(),
        "--backbone-only",
    ]));
    let t = candle_core::safetensors::load(&bb, &candle_core::Device::Cpu).unwrap();
    assert!(t.contains_key("conv1.weight") && t.contains_key("layer4.1.bn2.running_var"));
    assert!(!t
        .keys()
        .any(|k| k.starts_with("fc.") || k.starts_with("backbone.")));
    let det = common::config(
        dir,
        "det_from_cls",
        r#"{"iterations": 1, "batch_size": 2, "warmup_iters": 1}"#,
    );
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&det).unwrap()).unwrap();
    v["model"]["backbone"] = serde_json::json!({"weights": bb});
    std::fs::write(&det, v.to_string()).unwrap();
    let o = ok(&kdet(&["train", &det]));
    assert!(o.contains("loaded 100 backbone tensors"), "{o}");
}

#[test]
fn simclr_and_cbd_train_and_resume_exactly() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    ok(&kdet(&[
        "train",
        &cls_config(dir, "teacher", serde_json::json!({})),
    ]));
    let tw = dir.join("teacher/model.safetensors");
    let methods = [
        (
            "simclr",
            serde_json::json!({"data": {"use_unlabeled": true},
                "teachers": [{"weights": tw}], "method": {"type": "simclr", "temperature": 0.1, "alpha": 0.5}}),
        ),
        (
            "cbd",
            serde_json::json!({"data": {"sampler": "class_balanced"}, "model": {"projection": {"dim": 256}},
                "teachers": [{"weights": tw}, {"weights": tw}], "method": {"type": "cbd"}}),
        ),
    ];
    for (name, extra) in methods {
        let full = cls_config(dir, &format!("{name}_full"), extra.clone());
        let o = ok(&kdet(&["train", &full]));
        assert!(o.contains("teacher 0: val top-1"), "{o}");
        let log = std::fs::read_to_string(dir.join(format!("{name}_full/metrics.jsonl"))).unwrap();
        let key = if name == "simclr" {
            "distill.simclr.soft_ce"
        } else {
            "distill.cbd.feature"
        };
        assert!(log.contains(key), "{log}");
        let split = cls_config(dir, &format!("{name}_split"), extra);
        ok(&kdet(&["train", &split, "--stop-after", "2"]));
        ok(&kdet(&["train", &split, "--resume"]));
        let a = std::fs::read(dir.join(format!("{name}_full/model.safetensors"))).unwrap();
        let b = std::fs::read(dir.join(format!("{name}_split/model.safetensors"))).unwrap();
        assert!(
            a == b,
            "{name}: the resumed run differs from the uninterrupted one"
        );
    }
    // CBD's projection must match the teachers' features, named in the error.
    let bad = cls_config(
        dir,
        "bad",
        serde_json::json!({"model": {"projection": {"dim": 100}},
        "teachers": [{"weights": tw}], "method": {"type": "cbd"}}),
    );
    let e = fails(&kdet(&["train", &bad]));
    assert!(
        e.contains(
            "bad.json: model.projection.dim: 100 does not match the teachers' features: 128"
        ),
        "{e}"
    );
}

/// `extra`'s run trained straight (`dir/<name>_full`) and stopped after 2 steps then resumed
/// (`dir/<name>_split`); every file of `files` is the same in both. Returns the full run's
/// config and the two folders.
fn straight_and_resumed(
    dir: &Path,
    name: &str,
    extra: serde_json::Value,
    files: &[&str],
) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let full = cls_config(dir, &format!("{name}_full"), extra.clone());
    let o = ok(&kdet(&["train", &full]));
    assert!(o.contains("val top-1"), "{o}");
    let split = cls_config(dir, &format!("{name}_split"), extra);
    ok(&kdet(&["train", &split, "--stop-after", "2"]));
    let o = ok(&kdet(&["train", &split, "--resume"]));
    assert!(o.contains("resumed at 2"), "{o}");
    let (a, b) = (
        dir.join(format!("{name}_full")),
        dir.join(format!("{name}_split")),
    );
    for f in files {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f}: the resumed run differs from the uninterrupted one"
        );
    }
    (full, a, b)
}

/// The method's own variables (`aux.` in the checkpoint) of runs `a` and `b`, which must be
/// equal: their names.
fn same_method_variables(a: &Path, b: &Path) -> Vec<String> {
    let t = |d: &Path| {
        candle_core::safetensors::load(d.join("checkpoint.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
    };
    let (ca, cb) = (t(a), t(b));
    let aux: Vec<String> = ca
        .keys()
        .filter(|k| k.starts_with("aux."))
        .cloned()
        .collect();
    for k in &aux {
        assert_eq!(
            ca[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            cb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{k}"
        );
    }
    aux
}

/// Two networks of one architecture, trained from no seed of their own by a multi-network
/// method in `run`, did not start (and so train) as one: most weight tensors differ.
fn assert_twins_differ(run: &Path, a: &str, b: &str) {
    let t = |n: &str| {
        candle_core::safetensors::load(
            run.join(format!("{n}.safetensors")),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (n1, n2) = (t(a), t(b));
    let differ = n1
        .iter()
        .filter(|(k, x)| {
            x.dims().len() > 1
                && x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    != n2[*k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        })
        .count();
    assert!(differ > 10, "{a} and {b} are identical");
}

/// DML's peer classifier: `width`, same input as `cls_config`'s model.
fn dml_peer(width: f64) -> serde_json::Value {
    serde_json::json!({"model": {"arch": "classifier",
        "backbone": {"depth": 18, "width": width, "norm": "bn", "trainable_layers": 5},
        "input": {"min_size": 16, "max_size": 16, "size_divisible": 1, "square": true},
        "head": {"type": "cosine"}}})
}

#[test]
fn dml_trains_k_networks_resumes_exactly_and_serves_each() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // Three networks: model (R18 ×0.25), a twin without a seed, an R18 ×0.5.
    let dml = serde_json::json!({"method": {"type": "dml", "evaluate": "net3",
        "peers": [dml_peer(0.25), dml_peer(0.5)]}});
    let (full, a, _) = straight_and_resumed(
        dir,
        "dml",
        dml,
        &[
            "net1.safetensors",
            "net2.safetensors",
            "net3.safetensors",
            "model.safetensors",
        ],
    );
    assert!(
        std::fs::read(a.join("model.safetensors")).unwrap()
            == std::fs::read(a.join("net3.safetensors")).unwrap(),
        "model.safetensors is the evaluated network"
    );
    let log = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    for k in ["net1.dml.cls", "net2.loss_cls", "net3.dml.cls"] {
        assert!(log.contains(k), "{k} missing from metrics");
    }
    // Twins of one architecture and no seed did not train as one network.
    let t = |f: &str| candle_core::safetensors::load(a.join(f), &candle_core::Device::Cpu).unwrap();
    assert_twins_differ(&a, "net1", "net2");
    // Export of the chosen network only, from the checkpoint; eval of each.
    let ck = a.join("checkpoint.safetensors");
    for net in ["net2", "net3"] {
        let out = dir.join(format!("{net}_export.safetensors"));
        ok(&kdet(&[
            "export",
            "--config",
            &full,
            "--weights",
            ck.to_str().unwrap(),
            "--network",
            net,
            "--format",
            "kdet",
            "--out",
            out.to_str().unwrap(),
        ]));
        let (e, w) = (
            candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap(),
            t(&format!("{net}.safetensors")),
        );
        assert_eq!(e.len(), w.len(), "{net}: only its own tensors");
        for (k, x) in &e {
            assert_eq!(
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                w[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{net}: {k}"
            );
        }
        let o = ok(&kdet(&[
            "eval",
            "--config",
            &full,
            "--weights",
            a.join(format!("{net}.safetensors")).to_str().unwrap(),
            "--network",
            net,
        ]));
        assert!(o.contains("top-1 accuracy"), "{o}");
    }
    let e = fails(&kdet(&[
        "export",
        "--config",
        &full,
        "--weights",
        ck.to_str().unwrap(),
        "--network",
        "net4",
        "--out",
        dir.join("x.safetensors").to_str().unwrap(),
    ]));
    assert!(
        e.contains("no network `net4`") && e.contains("net1, net2, net3"),
        "{e}"
    );
}

#[test]
fn dml_config_errors_are_located() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cases = [
        (
            serde_json::json!({"method": {"type": "dml", "peers": []}}),
            "method.peers: dml trains K >= 2 networks",
        ),
        (
            serde_json::json!({"method": {"type": "dml", "peers": [{"model": {"arch": "paa"}}]}}),
            "method.peers[0].model.arch: `paa`, but model.arch is `classifier`",
        ),
        (
            serde_json::json!({"method": {"type": "dml", "peers": [dml_peer(0.5)], "evaluate": "net3"}}),
            "method.evaluate: `net3` is none of net1, net2",
        ),
        (
            serde_json::json!({"method": {"type": "dml", "peers": [dml_peer(0.5)], "temperature": 0}}),
            "method.temperature",
        ),
    ];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let c = cls_config(dir, &format!("bad{i}"), extra);
        let e = fails(&kdet(&["train", &c]));
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn dcm_trains_with_auxiliary_classifiers_resumes_exactly_and_exports_one_network() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let dcm = serde_json::json!({"model": {"input": {"min_size": 32, "max_size": 32}},
        "method": {"type": "dcm", "evaluate": "net2",
        "partner": {"arch": "classifier",
            "backbone": {"depth": 18, "width": 0.5, "norm": "bn", "trainable_layers": 5},
            "input": {"min_size": 32, "max_size": 32, "size_divisible": 1, "square": true},
            "head": {"type": "linear"}}}});
    let (full, a, b) = straight_and_resumed(
        dir,
        "dcm",
        dcm,
        &["net1.safetensors", "net2.safetensors", "model.safetensors"],
    );
    let log = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    for k in [
        "net1.dcm.ce_aux1",
        "net1.dcm.ce_aux2",
        "net2.dcm.ce_final",
        "net2.dcm.kd",
    ] {
        assert!(log.contains(k), "{k} missing from metrics");
    }
    let t = |p: &Path| candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap();
    // The checkpoint holds the auxiliary classifiers (the same after the resume); the exported
    // network does not.
    let aux = same_method_variables(&a, &b);
    assert!(aux.iter().any(|k| k.contains("net1.aux.backbone.c3.")));
    let out = dir.join("net2_export.safetensors");
    ok(&kdet(&[
        "export",
        "--config",
        &full,
        "--weights",
        a.join("checkpoint.safetensors").to_str().unwrap(),
        "--network",
        "net2",
        "--format",
        "kdet",
        "--out",
        out.to_str().unwrap(),
    ]));
    let (e, w) = (t(&out), t(&a.join("net2.safetensors")));
    assert_eq!(e.len(), w.len());
    assert!(e.keys().all(|k| !k.contains("aux")));
    let cases = [
        (
            serde_json::json!({"method": {"type": "dcm", "stages": ["backbone.c5"],
                "partner": dml_peer(0.5)["model"].clone()}}),
            "method.stages[0]: unknown stage `backbone.c5`",
        ),
        (
            serde_json::json!({"method": {"type": "dcm", "partner": {"arch": "paa"}}}),
            "method.partner.arch: dcm trains two classifiers, not `paa`",
        ),
    ];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let c = cls_config(dir, &format!("bad{i}"), extra);
        let e = fails(&kdet(&["train", &c]));
        assert!(e.contains(want), "{want}: {e}");
    }
}

/// A classifier section of `width` at 32 px (FFSD's and DCM's tests: c4 is 2×2 there).
fn peer32(width: f64) -> serde_json::Value {
    serde_json::json!({"model": {"arch": "classifier",
        "backbone": {"depth": 18, "width": width, "norm": "bn", "trainable_layers": 5},
        "input": {"min_size": 32, "max_size": 32, "size_divisible": 1, "square": true},
        "head": {"type": "linear"}}})
}

#[test]
fn dcm_twins_start_different() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let dcm = serde_json::json!({"model": {"input": {"min_size": 32, "max_size": 32}, "head": {"type": "linear"}},
        "solver": {"iterations": 2},
        "method": {"type": "dcm", "partner": peer32(0.25)["model"].clone()}});
    ok(&kdet(&["train", &cls_config(dir, "dcm_twins", dcm)]));
    assert_twins_differ(&dir.join("dcm_twins"), "net1", "net2");
}

#[test]
fn ffsd_trains_a_leader_resumes_exactly_and_exports_the_leader_only() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // The leader (R18 ×0.5) and two R18 ×0.25 students without seeds (twins); c4 is 2×2.
    let ffsd = serde_json::json!({"model": {"input": {"min_size": 32, "max_size": 32}, "head": {"type": "linear"},
                  "backbone": {"width": 0.5}},
        "method": {"type": "ffsd", "students": [peer32(0.25), peer32(0.25)],
                   "last_stage": "backbone.c4", "warmup_epochs": 2}});
    let (full, a, b) = straight_and_resumed(
        dir,
        "ffsd",
        ffsd,
        &[
            "net1.safetensors",
            "net2.safetensors",
            "net3.safetensors",
            "model.safetensors",
        ],
    );
    assert!(
        std::fs::read(a.join("model.safetensors")).unwrap()
            == std::fs::read(a.join("net1.safetensors")).unwrap(),
        "model.safetensors is the leader"
    );
    assert_twins_differ(&a, "net2", "net3");
    let log = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    for k in [
        "net1.ffsd.kd",
        "net1.ffsd.trans_fusion",
        "net1.ffsd.sd_train",
        "net2.ffsd.dml",
        "net3.ffsd.diversity",
        "fusion.ffsd.ce",
        "ffsd.warmup",
    ] {
        assert!(log.contains(k), "{k} missing from metrics");
    }
    let t = |p: &Path| candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap();
    // The checkpoint holds the method's modules (the same after the resume); the first student
    // has no chain.
    let aux = same_method_variables(&a, &b);
    for m in [
        "ffsd.fusion.fc2.",
        "net1.trans_fusion_module.",
        "net1.sd.layer1.",
        "net3.sd.",
    ] {
        assert!(aux.iter().any(|k| k.contains(m)), "{m} not checkpointed");
    }
    assert!(!aux.iter().any(|k| k.contains("net2.sd.")));
    // Export from the checkpoint: the leader, its own tensors only.
    let out = dir.join("leader.safetensors");
    ok(&kdet(&[
        "export",
        "--config",
        &full,
        "--weights",
        a.join("checkpoint.safetensors").to_str().unwrap(),
        "--format",
        "kdet",
        "--out",
        out.to_str().unwrap(),
    ]));
    let (e, w) = (t(&out), t(&a.join("net1.safetensors")));
    assert_eq!(e.len(), w.len(), "only the leader's tensors");
    for (k, x) in &e {
        assert_eq!(
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            w[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{k}"
        );
    }
    // A student's predictions compare with the leader's run as a classifier run.
    let o = ok(&kdet(&[
        "compare",
        a.to_str().unwrap(),
        a.join("net3_predictions.json").to_str().unwrap(),
    ]));
    assert!(o.contains("net3_predictions"), "{o}");
    // A student is served with --network.
    let o = ok(&kdet(&[
        "eval",
        "--config",
        &full,
        "--weights",
        a.join("net3.safetensors").to_str().unwrap(),
        "--network",
        "net3",
    ]));
    assert!(o.contains("top-1 accuracy"), "{o}");
}

#[test]
fn ffsd_config_errors_are_located() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let input = serde_json::json!({"min_size": 32, "max_size": 32});
    let ffsd = |method: serde_json::Value| {
        let mut m = serde_json::json!({"type": "ffsd", "students": [peer32(0.25), peer32(0.25)],
                                       "last_stage": "backbone.c4"});
        merge(&mut m, method);
        serde_json::json!({"model": {"input": input.clone()}, "method": m})
    };
    let cases = [
        (
            ffsd(serde_json::json!({"students": [peer32(0.25)]})),
            "method.students: ffsd fuses the features of at least two common students",
        ),
        (
            ffsd(serde_json::json!({"students": [peer32(0.25), {"model": {"arch": "paa"}}]})),
            "method.students[1].model.arch: ffsd trains classifiers, not `paa`",
        ),
        (
            ffsd(serde_json::json!({"students": [peer32(0.25), dml_peer(0.25)]})),
            "method.students[1].model.input: must equal model.input",
        ),
        (
            ffsd(serde_json::json!({"last_stage": "backbone.c2"})),
            "method.last_stage: unknown stage `backbone.c2`",
        ),
        (
            ffsd(serde_json::json!({"last_stage": "backbone.c5"})),
            "method.last_stage: its map is 1×1",
        ),
        (
            ffsd(serde_json::json!({"lambda_fusion": -1.0})),
            "method.lambda_fusion",
        ),
        (
            ffsd(serde_json::json!({"evaluate": "net4"})),
            "method.evaluate: `net4` is none of net1, net2, net3",
        ),
    ];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let c = cls_config(dir, &format!("bad{i}"), extra);
        let e = fails(&kdet(&["train", &c]));
        assert!(e.contains(want), "{want}: {e}");
    }
}
