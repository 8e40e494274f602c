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
        e.contains("built without CUDA support")
            && e.contains("--features cuda")
            && e.contains("--device cpu"),
        "{e}"
    );
    let o = kdet(&["train", cfg.to_str().unwrap(), "--device", "gpu"]);
    assert!(
        stderr(&o).contains("`gpu` is not a device"),
        "{}",
        stderr(&o)
    );
}

/// `kdet bench` on a device: `check` and `row` open it (a CPU build names the feature), `ops`
/// measures CPU kernels only; neither panics.
#[cfg(not(feature = "cuda"))]
#[test]
fn bench_device_errors_say_what_to_do() {
    for what in [&["check"][..], &["row", "nms_batched"]] {
        let mut args = vec!["bench"];
        args.extend(what);
        args.extend(["--device", "cuda"]);
        let o = kdet(&args);
        let e = stderr(&o);
        assert!(
            !o.status.success() && e.contains("--features cuda") && !e.contains("panicked"),
            "{e}"
        );
    }
    let o = kdet(&["bench", "ops", "--device", "cuda"]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("runs on the CPU only") && !e.contains("panicked"),
        "{e}"
    );
}

/// A synthetic dataset in `dir/s` (4 val images): its val annotations and image folder.
fn synth(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = dir.join("s");
    let o = kdet(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--train",
        "8",
        "--val",
        "4",
        "--size",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    (out.join("annotations/val.json"), out.join("images"))
}

#[test]
fn a_second_json_document_after_the_first_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (val, _) = synth(dir.path());
    // `cat small.json full.json > m.json`
    let text = std::fs::read_to_string(&val).unwrap();
    let m = dir.path().join("m.json");
    std::fs::write(&m, format!("{text}\n{text}")).unwrap();
    let o = kdet(&["data", "check", m.to_str().unwrap()]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("m.json: .: trailing characters at line 2 column 1"),
        "{e}"
    );
    // A config ending in `}} garbage`.
    let c = dir.path().join("c.json");
    std::fs::write(&c, "{\"solver\": {\"lr\": 0.1}}} garbage").unwrap();
    let o = kdet(&["train", c.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("c.json: .: trailing characters at line 1 column 24"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn data_check_decodes_every_image_and_reports_each_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let (val, images) = synth(dir.path());
    for n in ["val_000002.png", "val_000004.png"] {
        let p = images.join(n);
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    }
    let o = kdet(&[
        "data",
        "check",
        val.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("error: ") && out.contains("val.json: images[1].file_name: "),
        "{out}"
    );
    assert!(out.contains("val.json: images[3].file_name: "), "{out}");
    assert_eq!(out.matches("cannot decode").count(), 2, "{out}");
}

#[test]
fn non_finite_or_out_of_range_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, says) in [
        (
            vec![
                "infer",
                "--config",
                "c",
                "--weights",
                "w",
                "--out",
                d,
                "x.png",
                "--score-thr",
                "NaN",
            ],
            "must be a finite number, got NaN",
        ),
        (
            vec![
                "infer",
                "--config",
                "c",
                "--weights",
                "w",
                "--out",
                d,
                "x.png",
                "--score-thr",
                "1.5",
            ],
            "must be in [0, 1], got 1.5",
        ),
        (
            vec!["compare", "a", "b", "--confidence", "inf"],
            "must be a finite number, got inf",
        ),
        (
            vec!["synth", "--out", d, "--long-tail", "inf"],
            "must be a finite number, got inf",
        ),
        (
            vec!["train", "c.json", "--stop-after", "0"],
            "0 is not in 1..",
        ),
    ] {
        let o = kdet(&args);
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn absurd_boxes_are_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let gt = dir.path().join("gt.json");
    std::fs::write(&gt, r#"{"images": [{"id": 1, "file_name": "a.png", "width": 640, "height": 480}], "categories": [{"id": 1, "name": "x"}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 1e308, 5]}]}"#).unwrap();
    let o = kdet(&["data", "check", gt.to_str().unwrap()]);
    assert!(
        stderr(&o).contains(
            "gt.json: annotations[0].bbox: x + width = 1e308 lies far outside its 640×480 image"
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn os_errors_are_printed_once_and_folders_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let o = kdet(&["data", "check", dir.path().to_str().unwrap()]);
    let e = stderr(&o);
    assert!(!o.status.success());
    // Refused before reading (error::read_file_capped), said once.
    assert_eq!(e.matches("is a folder").count(), 1, "{e}");
    // --weights a folder.
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/synth/frcnn_r18_teacher.json");
    let o = kdet(&[
        "infer",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        dir.path().to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
        "x.png",
    ]);
    assert!(
        stderr(&o).contains("is a folder, not a weights file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn config_paths_that_are_wrong_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/synth/frcnn_base.json");
    let c = dir.path().join("c.json");
    let write = |extra: serde_json::Value| {
        let mut v = serde_json::json!({"base": base, "output_dir": dir.path().join("run")});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        std::fs::write(&c, v.to_string()).unwrap();
    };
    let train = |c: &Path| stderr(&kdet(&["train", c.to_str().unwrap()]));
    // frcnn_base.json names a synthetic dataset: replace it with files that do not exist.
    write(serde_json::json!({"data": {"synthetic": null,
        "train": {"annotations": "nope.json", "images": "."}}}));
    let e = train(&c);
    assert!(
        e.contains("c.json: data.train.annotations: ") && e.contains("nope.json does not exist"),
        "{e}"
    );
    // output_dir: empty, or a file.
    write(serde_json::json!({"output_dir": ""}));
    let e = train(&c);
    assert!(e.contains("c.json: output_dir: must not be empty"), "{e}");
    let f = dir.path().join("file");
    std::fs::write(&f, "x").unwrap();
    write(serde_json::json!({"output_dir": f}));
    let e = train(&c);
    assert!(
        e.contains("c.json: output_dir: ") && e.contains("is a file, not a folder"),
        "{e}"
    );
    // A teacher's weights that are a folder.
    write(serde_json::json!({"teachers": [{"weights": dir.path()}],
        "distill": [{"type": "hint", "student": "fpn.p3", "teacher": "fpn.p3"}],
        "data": {"synthetic": {"seed": 3, "train": 8, "val": 4, "size": 64, "classes": 3,
                               "cache_dir": dir.path().join("cache")}}}));
    let e = train(&c);
    assert!(
        e.contains("c.json: teachers[0].weights: ")
            && e.contains("is a folder, not a weights file"),
        "{e}"
    );
}

#[test]
fn an_empty_val_split_is_refused_and_synth_says_when_it_writes_none() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = |args: &[&str]| {
        let mut a = vec!["synth", "--out", data.to_str().unwrap()];
        a.extend(args);
        kdet(&a)
    };
    let o = s(&[
        "--train",
        "4",
        "--val",
        "2",
        "--size",
        "64",
        "--classes",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A val split without images, then one whose images have no box.
    let gt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("annotations/val.json")).unwrap()).unwrap();
    let cats = gt["categories"].clone();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/synth/frcnn_base.json");
    let c = dir.path().join("c.json");
    for (val, want) in [
        (
            serde_json::json!({"images": [], "annotations": [], "categories": cats}),
            "has no images: there is nothing to evaluate",
        ),
        (
            serde_json::json!({"images": gt["images"], "annotations": [], "categories": cats}),
            "has no boxes in its 2 image(s)",
        ),
    ] {
        std::fs::write(dir.path().join("empty.json"), val.to_string()).unwrap();
        let split = |a: &str| serde_json::json!({"annotations": a, "images": data.join("images")});
        let cfg = serde_json::json!({"base": base, "output_dir": dir.path().join("run"),
            "data": {"synthetic": null, "train": split(data.join("annotations/train.json").to_str().unwrap()),
                     "val": split("empty.json")}});
        std::fs::write(&c, cfg.to_string()).unwrap();
        let e = stderr(&kdet(&["train", c.to_str().unwrap()]));
        assert!(
            e.contains("c.json: data.val.annotations: ") && e.contains(want),
            "{e}"
        );
    }
    let o = s(&[
        "--task",
        "classification",
        "--train",
        "4",
        "--val",
        "0",
        "--size",
        "32",
        "--classes",
        "2",
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("no val split (--val 0)") && !e.contains("/val"),
        "{e}"
    );
}
