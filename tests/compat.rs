//! Files written by kdet before the training-method seam (tests/fixtures/main_v1) still work:
//! a format-1 distillation checkpoint resumes to exactly the weights the old binary produced,
//! exports without its adaptation layers, and an old model file evaluates and infers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{kdet, ok};
use sha2::{Digest, Sha256};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/main_v1")
}

/// The two configs the fixture was made with, in `d`, the teacher read from the fixture.
fn configs(d: &Path) -> (String, String) {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/synth/frcnn_student.json");
    let teacher = d.join("teacher.json");
    std::fs::write(
        &teacher,
        serde_json::json!({
            "base": base,
            "data": {"synthetic": {"seed": 3, "train": 8, "val": 4, "size": 64, "classes": 3,
                                   "cache_dir": d.join("cache")}, "workers": 2},
            "model": {"backbone": {"depth": 18, "width": 0.0625, "norm": "bn", "trainable_layers": 5},
                      "fpn": {"out_channels": 8}, "input": {"min_size": 64, "max_size": 64},
                      "roi_heads": {"representation_size": 16}},
            "solver": {"iterations": 2, "batch_size": 2, "warmup_iters": 1},
            "output_dir": d.join("teacher_run"),
        })
        .to_string(),
    )
    .unwrap();
    let student = d.join("student.json");
    std::fs::write(
        &student,
        serde_json::json!({
            "base": "teacher.json",
            "teachers": [{"weights": fixture().join("teacher/model.safetensors"), "check_images": 0}],
            "distill": [{"type": "hint", "student": "fpn.p3", "teacher": "fpn.p3", "weight": 0.5},
                        {"type": "weighted_kd", "stage": "rcn"},
                        {"type": "bounded_regression", "stage": "rpn"}],
            "solver": {"iterations": 4, "batch_size": 2, "warmup_iters": 1, "log_every": 1},
            "output_dir": d.join("student"),
        })
        .to_string(),
    )
    .unwrap();
    (teacher.display().to_string(), student.display().to_string())
}

/// SHA-256 of each tensor's raw bytes, as the fixture's JSON lists them (safetensors: an
/// 8-byte little-endian header length, the JSON header with each tensor's byte range, the data).
fn tensor_hashes(path: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let r = &v["data_offsets"];
            let (a, b) = (
                r[0].as_u64().unwrap() as usize,
                r[1].as_u64().unwrap() as usize,
            );
            let h: String = Sha256::digest(&data[a..b])
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (k, h)
        })
        .collect()
}

#[test]
fn format1_checkpoint_resumes_exactly_and_exports() {
    let d = tempfile::tempdir().unwrap();
    let (_, student) = configs(d.path());
    let run = d.path().join("student");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::copy(
        fixture().join("student/checkpoint.safetensors"),
        run.join("checkpoint.safetensors"),
    )
    .unwrap();
    let o = ok(&kdet(&["train", &student, "--resume"]));
    assert!(o.contains("resumed at 2, now at 4"), "{o}");
    let want: BTreeMap<String, String> = serde_json::from_slice(
        &std::fs::read(fixture().join("resumed_model_sha256.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        tensor_hashes(&run.join("model.safetensors")),
        want,
        "resuming an old checkpoint must give the old binary's weights"
    );

    // Export from the old checkpoint: the model's tensors, without the adaptation layer and the
    // optimizer state.
    let out = d.path().join("exported.safetensors");
    let o = ok(&kdet(&[
        "export",
        "--config",
        &student,
        "--weights",
        fixture()
            .join("student/checkpoint.safetensors")
            .to_str()
            .unwrap(),
        "--format",
        "kdet",
        "--out",
        out.to_str().unwrap(),
    ]));
    let keys = tensor_hashes(&out);
    assert_eq!(keys.len(), want.len(), "{o}");
    assert!(!keys.keys().any(|k| k.starts_with("distill.")));
}

/// An old checkpoint records no settings; its run's config.json is the only record. A corrupt
/// one is named as corrupt (not as "written by an older kdet") and the resume refused.
#[test]
fn format1_checkpoint_with_a_corrupt_config_json_is_refused_as_corrupt() {
    let d = tempfile::tempdir().unwrap();
    let (_, student) = configs(d.path());
    let run = d.path().join("student");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::copy(
        fixture().join("student/checkpoint.safetensors"),
        run.join("checkpoint.safetensors"),
    )
    .unwrap();
    std::fs::write(run.join("config.json"), "{\"seed\": 0, \"solver\": {").unwrap();
    let e = common::fails(&kdet(&["train", &student, "--resume"]));
    assert!(
        e.contains("config.json is corrupt") && !e.contains("older kdet and records no"),
        "{e}"
    );
}

#[test]
fn old_model_file_evaluates_and_infers() {
    let d = tempfile::tempdir().unwrap();
    let (teacher, _) = configs(d.path());
    let w = fixture().join("teacher/model.safetensors");
    let o = ok(&kdet(&[
        "eval",
        "--config",
        &teacher,
        "--weights",
        w.to_str().unwrap(),
        "--format",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(o.lines().next().unwrap()).unwrap();
    assert_eq!(v["stats"].as_array().unwrap().len(), 12);
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
        &teacher,
        "--weights",
        w.to_str().unwrap(),
        "--score-thr",
        "0.0",
        "--out",
        out.to_str().unwrap(),
        img.to_str().unwrap(),
    ]));
    assert!(out.join("val_000001.png").is_file() && out.join("detections.json").is_file());
}
