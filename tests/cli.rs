//! End-to-end tests of the `kdet` binary: synth → data check → eval round trip, located errors
//! on bad input, and `--help` for every subcommand.

use std::path::Path;
use std::process::{Command, Output};

fn kdet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdet"))
        .args(args)
        .output()
        .expect("run kdet")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_for_every_subcommand() {
    for sub in [
        "train", "eval", "compare", "infer", "export", "synth", "data", "bench", "plot",
    ] {
        let o = kdet(&[sub, "--help"]);
        assert!(o.status.success(), "{sub}: {}", stderr(&o));
        assert!(stdout(&o).contains("Usage: kdet"), "{sub}");
    }
}

#[test]
fn synth_then_check_then_eval_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let o = kdet(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "1",
        "--train",
        "8",
        "--val",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let val = out.join("annotations/val.json");
    let o = kdet(&[
        "data",
        "check",
        val.to_str().unwrap(),
        "--images",
        out.join("images").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("images: 4"), "{}", stdout(&o));

    // Ground truth as detections (score 1) must score AP = 1.
    let gt: serde_json::Value = serde_json::from_slice(&std::fs::read(&val).unwrap()).unwrap();
    let dets: Vec<serde_json::Value> = gt["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| serde_json::json!({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}))
        .collect();
    let dt = dir.path().join("dt.json");
    std::fs::write(&dt, serde_json::to_vec(&dets).unwrap()).unwrap();
    let o = kdet(&[
        "eval",
        "--gt",
        val.to_str().unwrap(),
        "--dt",
        dt.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["stats"][0].as_f64().unwrap(), 1.0);
    let o = kdet(&[
        "eval",
        "--gt",
        val.to_str().unwrap(),
        "--dt",
        dt.to_str().unwrap(),
        "--per-class",
    ]);
    let text = stdout(&o);
    assert!(
        text.starts_with(
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000"
        ),
        "{text}"
    );
    assert!(text.contains("| circle |"), "{text}");

    // Same seed, same bytes.
    let out2 = dir.path().join("s2");
    assert!(kdet(&[
        "synth",
        "--out",
        out2.to_str().unwrap(),
        "--seed",
        "1",
        "--train",
        "8",
        "--val",
        "4"
    ])
    .status
    .success());
    assert_eq!(
        std::fs::read(&val).unwrap(),
        std::fs::read(out2.join("annotations/val.json")).unwrap()
    );
    assert_eq!(
        std::fs::read(out.join("images/train_000003.png")).unwrap(),
        std::fs::read(out2.join("images/train_000003.png")).unwrap()
    );
}

#[test]
fn compare_two_result_files() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval");
    let dir = tempfile::tempdir().unwrap();
    let o = kdet(&[
        "compare",
        fx.join("basic.dt.json").to_str().unwrap(),
        fx.join("basic.dt.json").to_str().unwrap(),
        "--gt",
        fx.join("basic.gt.json").to_str().unwrap(),
        "--bootstrap",
        "50",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("| AP |"));
    assert!(dir.path().join("compare.png").is_file());
}

#[test]
fn bad_input_gives_located_errors_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval");
    let gt = fx.join("basic.gt.json");
    let bad_dt = dir.path().join("dt.json");
    std::fs::write(
        &bad_dt,
        r#"[{"image_id": 999999, "category_id": 1, "bbox": [0,0,1,1], "score": 0.5}]"#,
    )
    .unwrap();
    let o = kdet(&[
        "eval",
        "--gt",
        gt.to_str().unwrap(),
        "--dt",
        bad_dt.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("dt.json: [0].image_id: 999999 is not in") && !e.contains("panicked"),
        "{e}"
    );

    let bad_gt = dir.path().join("gt.json");
    std::fs::write(&bad_gt, r#"{"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}], "categories": [{"id": 1, "name": "x"}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]}"#).unwrap();
    let o = kdet(&["data", "check", bad_gt.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("gt.json: annotations[0].bbox: invalid length 3"),
        "{}",
        stderr(&o)
    );

    let cfg = dir.path().join("c.json");
    std::fs::write(&cfg, r#"{"solver": {"lr": -1}}"#).unwrap();
    let o = kdet(&["train", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("c.json: solver.lr: must be > 0"),
        "{}",
        stderr(&o)
    );

    let o = kdet(&[
        "synth",
        "--out",
        dir.path().join("x").to_str().unwrap(),
        "--classes",
        "20",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--classes: must be in 1..=8"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn every_shipped_config_loads_and_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for dir in ["synth", "coco"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                kdet::config::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 12, "{n} configs");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn device_flag_names_the_missing_cargo_feature() {
    let cfg =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/synth/frcnn_student.json");
    let o = kdet(&[
        "train",
        cfg.to_str().unwrap(),
        "--device",
        "cuda:1",
        "--stop-after",
        "1",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("built without CUDA support") && e.contains("--features cuda"),
        "{e}"
    );
    let o = kdet(&["train", cfg.to_str().unwrap(), "--device", "gpu"]);
    assert!(
        stderr(&o).contains("`gpu` is not a device"),
        "{}",
        stderr(&o)
    );
}
