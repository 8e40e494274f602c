//! End-to-end distillation on a tiny synthetic set: every Chen et al. 2017 term trains, `--baseline`
//! trains the student alone and prints the comparison, checkpoints hold the adaptation layers and
//! the teacher's SHA-256 (a resume with another teacher is refused), the exported model does not;
//! an untrained teacher and a teacher whose weights do not fit stop training with clear errors.

mod common;
use common::{config, fails, fake_hub, kdet, kdet_env, ok, set};
use serde_json::json;

const SOLVER: &str =
    r#"{"iterations": 6, "batch_size": 2, "lr": 0.01, "warmup_iters": 2, "log_every": 1}"#;

/// Train a tiny teacher (same tiny student architecture) and return its run directory.
fn teacher(d: &std::path::Path, iterations: u64) -> std::path::PathBuf {
    let solver = format!(
        r#"{{"iterations": {iterations}, "batch_size": 2, "lr": 0.01, "warmup_iters": 2, "log_every": 1}}"#
    );
    let c = config(d, "teacher", &solver);
    ok(&kdet(&["train", &c]));
    d.join("teacher")
}

fn all_terms() -> serde_json::Value {
    json!([
        {"type": "hint", "student": "fpn.p3", "teacher": "fpn.p3"},
        {"type": "hint", "student": "backbone.c5", "teacher": "backbone.c5", "adaptation": false, "distance": "l1"},
        {"type": "weighted_kd", "stage": "rpn"},
        {"type": "weighted_kd", "stage": "rcn"},
        {"type": "bounded_regression", "stage": "rpn"},
        {"type": "bounded_regression", "stage": "rcn", "margin": 0.1},
        {"type": "kd", "temperature": 2.0}
    ])
}

#[test]
fn distillation_end_to_end_with_baseline_and_resume_checks() {
    let d = tempfile::tempdir().unwrap();
    let t = teacher(d.path(), 6);
    let weights = t.join("model.safetensors");
    let c = config(d.path(), "student", SOLVER);
    // Two teachers (the same file, the second in f16): every term is averaged over them.
    set(
        &c,
        "teachers",
        json!([{"weights": weights, "check_images": 0}, {"weights": weights, "check_images": 0, "dtype": "f16"}]),
    );
    set(&c, "distill", all_terms());
    let out = ok(&kdet(&["train", &c, "--baseline"]));
    assert!(out.contains("teacher 1: val bbox AP"), "{out}");
    assert!(out.contains("teacher 0: val bbox AP"), "{out}");
    assert!(out.contains("distilled student: val bbox AP"), "{out}");
    // The baseline ran with the same schedule, and compare's table follows.
    assert!(out.contains("student: val bbox AP"), "{out}");
    assert!(out.contains("| AP |"), "{out}");
    let run = d.path().join("student");
    assert!(d.path().join("student_baseline/eval.json").is_file());

    // Every term is logged, finite, under its own name; μ scaled the hard losses.
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .find(|l| l.contains("\"iter\":6") && l.contains("loss"))
            .unwrap(),
    )
    .unwrap();
    for k in [
        "distill.hint.fpn.p3",
        "distill.hint.backbone.c5",
        "distill.rpn.soft_cls",
        "distill.rcn.soft_cls",
        "distill.rpn.bounded_reg",
        "distill.rcn.bounded_reg",
        "distill.rcn.kd",
    ] {
        let v = last[k].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v >= 0.0, "{k}: {v}");
    }

    // The checkpoint holds the adaptation layer (the method's own variables, `aux.`) and the
    // teacher's identity; the model does not.
    let ck = candle_core::safetensors::load(
        run.join("checkpoint.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for t in ["teacher0", "teacher1"] {
        assert!(ck.contains_key(&format!("aux.distill.0.{t}.adaptation.weight")));
        assert!(ck.contains_key(&format!("meta.s.{t}.sha256")));
    }
    assert!(
        !ck.keys().any(|k| k.contains("distill.1.")),
        "no adaptation layer when adaptation is false"
    );
    let m =
        candle_core::safetensors::load(run.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(!m.keys().any(|k| k.starts_with("distill.")));
    assert_eq!(
        m.len(),
        candle_core::safetensors::load(t.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
            .len(),
        "the distilled student has exactly the plain student's tensors"
    );

    // Exporting from the checkpoint leaves adaptation layers and optimizer state out.
    let exported = d.path().join("exported.safetensors");
    let o = ok(&kdet(&[
        "export",
        "--config",
        &c,
        "--weights",
        run.join("checkpoint.safetensors").to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]));
    assert!(!o.contains(" 0 training-only tensors"), "{o}");
    let e = candle_core::safetensors::load(&exported, &candle_core::Device::Cpu).unwrap();
    assert!(!e
        .keys()
        .any(|k| k.starts_with("distill.") || k.starts_with("optim.")));

    // Another file in the teacher's place (same architecture, f16) is refused on resume.
    // (Exported beside it, then moved there: export never writes over its own input.)
    let tc = d.path().join("teacher.json");
    let f16 = d.path().join("teacher_f16.safetensors");
    ok(&kdet(&[
        "export",
        "--config",
        tc.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--format",
        "kdet",
        "--dtype",
        "f16",
        "--out",
        f16.to_str().unwrap(),
    ]));
    std::fs::rename(&f16, &weights).unwrap();
    let e = fails(&kdet(&["train", &c, "--resume"]));
    assert!(
        e.contains("the checkpoint was trained with teachers[0]") && e.contains("--fresh"),
        "{e}"
    );
}

#[test]
fn untrained_or_misfit_teachers_stop_before_training() {
    let d = tempfile::tempdir().unwrap();
    let t = teacher(d.path(), 1);
    let c = config(d.path(), "student", SOLVER);
    set(&c, "distill", all_terms());
    // One iteration of training is no detector: the sanity check refuses it.
    set(
        &c,
        "teachers",
        json!([{"weights": t.join("model.safetensors"), "check_images": 4, "min_ap": 0.5}]),
    );
    let e = fails(&kdet(&["train", &c]));
    assert!(
        e.contains("teachers[0]") && e.contains("below min_ap 0.5"),
        "{e}"
    );
    assert!(!d.path().join("student/checkpoint.safetensors").exists());
    // Weights for another architecture: a strict load names the field and the mismatches.
    let mut model =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(t.join("model.json")).unwrap())
            .unwrap()["model"]
            .clone();
    model["fpn"]["out_channels"] = json!(32);
    set(
        &c,
        "teachers",
        json!([{"weights": t.join("model.safetensors"), "model": model, "check_images": 0}]),
    );
    let e = fails(&kdet(&["train", &c]));
    assert!(
        e.contains("teachers[0].weights") && e.contains("backbone.fpn") && e.contains("strict"),
        "{e}"
    );
    // Non-strict goes on with a warning.
    set(
        &c,
        "teachers",
        json!([{"weights": t.join("model.safetensors"), "model": model, "check_images": 0, "strict": false}]),
    );
    let o = ok(&kdet(&["train", &c, "--stop-after", "1"]));
    assert!(o.contains("strict is false"), "{o}");
    // A missing teacher file names the field.
    set(&c, "teachers", json!([{"weights": "nowhere.safetensors"}]));
    let e = fails(&kdet(&["train", &c, "--fresh"]));
    assert!(
        e.contains("teachers[0].weights") && e.contains("nowhere.safetensors"),
        "{e}"
    );
}

#[test]
fn teacher_from_a_hub_cache_offline() {
    let d = tempfile::tempdir().unwrap();
    let t = teacher(d.path(), 2);
    let cache = d.path().join("hub");
    fake_hub(
        &cache,
        "someone/tiny-teacher",
        &[
            ("weights/teacher.safetensors", &t.join("model.safetensors")),
            ("weights/teacher.json", &t.join("model.json")),
        ],
    );
    let c = config(d.path(), "student", SOLVER);
    set(
        &c,
        "teachers",
        json!([{"weights": "hf://someone/tiny-teacher/weights/teacher.safetensors", "check_images": 0}]),
    );
    set(
        &c,
        "distill",
        json!([{"type": "weighted_kd", "stage": "rcn"}, {"type": "hint", "student": "fpn.p4", "teacher": "fpn.p4", "spatial": "resize"}]),
    );
    let env = [
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
    ];
    let o = kdet_env(&["train", &c, "--stop-after", "2"], &env);
    let s = ok(&o);
    assert!(
        s.contains("teacher 0: loaded") && s.contains("snapshots"),
        "{s}"
    );
    // The same teacher in half precision — its outputs are cast back to f32; bf16 has no CPU
    // matmul in candle, which the error says.
    for dtype in ["f16", "bf16"] {
        set(
            &c,
            "teachers",
            json!([{"weights": "hf://someone/tiny-teacher/weights/teacher.safetensors", "check_images": 0, "dtype": dtype}]),
        );
        let o = kdet_env(&["train", &c, "--stop-after", "1", "--fresh"], &env);
        if dtype == "f16" {
            ok(&o);
        } else {
            let e = fails(&o);
            assert!(e.contains("teachers[0].dtype") && e.contains("f16"), "{e}");
        }
    }
    // A revision the cache does not hold is named, with the cache path.
    set(
        &c,
        "teachers",
        json!([{"weights": "hf://someone/tiny-teacher/weights/teacher.safetensors@v2", "check_images": 0}]),
    );
    let e = fails(&kdet_env(&["train", &c, "--fresh"], &env));
    assert!(
        e.contains("@v2") && e.contains("models--someone--tiny-teacher"),
        "{e}"
    );
}
