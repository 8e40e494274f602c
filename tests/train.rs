//! End-to-end training tests on a tiny synthetic set: the loss goes down, `--resume` continues
//! exactly, a NaN loss stops with a located message and keeps the last checkpoint, `kdet infer`
//! writes drawings and JSON, `kdet eval --config` and `kdet plot` work on the run.

mod common;
use common::{config, kdet, kdet_env, losses, ok};

#[test]
fn loss_goes_down_and_run_artifacts_work() {
    let d = tempfile::tempdir().unwrap();
    let c = config(
        d.path(),
        "run",
        r#"{"iterations": 24, "batch_size": 2, "lr": 0.01, "warmup_iters": 3, "log_every": 1, "schedule": {"type": "constant"}}"#,
    );
    let out = ok(&kdet(&["train", &c]));
    assert!(
        out.contains("trained 24 iterations") && out.contains("val bbox AP"),
        "{out}"
    );
    let run = d.path().join("run");
    let l = losses(&run);
    assert_eq!(l.len(), 24);
    let first: f64 = l[..4].iter().sum::<f64>() / 4.0;
    let last: f64 = l[l.len() - 4..].iter().sum::<f64>() / 4.0;
    assert!(last < 0.8 * first, "loss did not go down: {first} → {last}");
    for f in [
        "model.safetensors",
        "checkpoint.safetensors",
        "metrics.jsonl",
        "eval.json",
        "detections.json",
        "model.json",
        "loss.png",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    // kdet eval --config --weights evaluates the trained model on the val split.
    let e = ok(&kdet(&[
        "eval",
        "--config",
        &c,
        "--weights",
        run.join("model.safetensors").to_str().unwrap(),
        "--format",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(e.lines().next().unwrap()).unwrap();
    let ev: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("eval.json")).unwrap()).unwrap();
    assert_eq!(
        v["stats"], ev["stats"],
        "offline eval differs from in-training eval"
    );
    // kdet infer draws every image and writes one results JSON.
    let imgs = std::fs::read_dir(d.path().join("cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("images");
    let inf = d.path().join("infer");
    ok(&kdet(&[
        "infer",
        "--config",
        &c,
        "--weights",
        run.join("model.safetensors").to_str().unwrap(),
        imgs.to_str().unwrap(),
        "--out",
        inf.to_str().unwrap(),
        "--score-thr",
        "0.0",
    ]));
    let pngs = std::fs::read_dir(&inf)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    assert_eq!(pngs, 12);
    let recs: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(inf.join("detections.json")).unwrap()).unwrap();
    assert!(recs
        .iter()
        .all(|r| r["bbox"].as_array().unwrap().len() == 4 && r["category"].is_string()));
    // kdet plot redraws the curves.
    let p = ok(&kdet(&["plot", run.to_str().unwrap()]));
    assert!(p.contains("loss.png"));
    // A run directory compares with itself (identical AP, zero delta).
    let cmp = ok(&kdet(&[
        "compare",
        run.to_str().unwrap(),
        run.to_str().unwrap(),
        "--bootstrap",
        "20",
    ]));
    assert!(cmp.contains("| AP |"), "{cmp}");
}

#[test]
fn resume_continues_exactly() {
    let d = tempfile::tempdir().unwrap();
    let solver =
        r#"{"iterations": 6, "batch_size": 2, "lr": 0.01, "warmup_iters": 2, "log_every": 1}"#;
    let a = config(d.path(), "a", solver);
    let b = config(d.path(), "b", solver);
    ok(&kdet(&["train", &a]));
    let part = ok(&kdet(&["train", &b, "--stop-after", "3"]));
    assert!(part.contains("trained 3 iterations"), "{part}");
    assert!(!d.path().join("b/model.safetensors").exists());
    // Without --resume or --fresh an existing checkpoint is not overwritten.
    let o = kdet(&["train", &b]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--resume"));
    ok(&kdet(&["train", &b, "--resume"]));
    assert_eq!(losses(&d.path().join("a")), losses(&d.path().join("b")));
    assert_eq!(
        std::fs::read(d.path().join("a/model.safetensors")).unwrap(),
        std::fs::read(d.path().join("b/model.safetensors")).unwrap(),
        "resumed weights differ"
    );
}

#[test]
fn nan_loss_stops_with_step_and_term() {
    let d = tempfile::tempdir().unwrap();
    let c = config(
        d.path(),
        "nan",
        r#"{"iterations": 40, "batch_size": 2, "lr": 1e9, "warmup_iters": 0, "log_every": 1, "checkpoint_every": 1, "schedule": {"type": "constant"}}"#,
    );
    let o = kdet(&["train", &c]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        (e.contains("loss term `") || e.contains("became non-finite"))
            && e.contains("step ")
            && e.contains("last good checkpoint"),
        "{e}"
    );
    // The checkpoint on disk is the last finite one and loads.
    let run = d.path().join("nan");
    assert!(run.join("checkpoint.safetensors").is_file());
    let n = losses(&run).len();
    assert!(n >= 1, "at least one good step was logged");
}

#[test]
fn backbone_weights_load_strictly_or_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let c = config(
        d.path(),
        "bb",
        r#"{"iterations": 1, "batch_size": 2, "log_every": 1}"#,
    );
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&c).unwrap()).unwrap();
    v["model"]["backbone"] = serde_json::json!({"weights": "missing.safetensors"});
    std::fs::write(&c, v.to_string()).unwrap();
    let o = kdet(&["train", &c]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.safetensors"));
    v["model"]["backbone"] = serde_json::json!({"weights": "hf://owner/repo/model.safetensors"});
    std::fs::write(&c, v.to_string()).unwrap();
    // Offline, with an empty cache: the error names repo, file, revision and the cache searched.
    let cache = d.path().join("hub");
    let o = kdet_env(
        &["train", &c],
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(
        e.contains("hf://owner/repo/model.safetensors@main")
            && e.contains(cache.join("models--owner--repo").to_str().unwrap())
            && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}

#[test]
fn training_data_that_cannot_train_is_refused_with_its_key() {
    let d = tempfile::tempdir().unwrap();
    // More images per batch than the training set has.
    let c = config(
        d.path(),
        "big",
        r#"{"iterations": 2, "batch_size": 100000, "log_every": 1}"#,
    );
    let e = common::fails(&kdet(&["train", &c]));
    assert!(
        e.contains("big.json: solver.batch_size: 100000 is more than the 8 training images"),
        "{e}"
    );
    // Every box of the training set lies outside its image: each is dropped, counted, and
    // then there is nothing to train on.
    let cache = std::fs::read_dir(d.path().join("cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut gt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("annotations/train.json")).unwrap())
            .unwrap();
    let n = gt["annotations"].as_array().unwrap().len();
    for a in gt["annotations"].as_array_mut().unwrap() {
        a["bbox"][0] = serde_json::json!(70.0); // the images are 64 wide
    }
    let ann = d.path().join("outside.json");
    std::fs::write(&ann, gt.to_string()).unwrap();
    let c = config(d.path(), "empty", r#"{"iterations": 2, "batch_size": 2}"#);
    common::set(
        &c,
        "data",
        serde_json::json!({"synthetic": null, "train": {"annotations": ann, "images": cache.join("images")}}),
    );
    let e = common::fails(&kdet(&["train", &c]));
    assert!(
        e.contains(&format!(
            "dropped {n} box(es) lying entirely outside their image"
        )),
        "{e}"
    );
    assert!(
        e.contains("empty.json: data.train.annotations: ")
            && e.contains(&format!("has no boxes to train on (8 images; 0 degenerate and {n} out-of-image boxes dropped")),
        "{e}"
    );
}
