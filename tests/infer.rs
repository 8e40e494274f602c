//! `kdet infer` and `kdet export` on weights as users have them: several images with the same
//! name, weights on the Hugging Face hub, and torchvision's COCO weights with neither a sidecar
//! nor the COCO annotation files.

mod common;
use common::{fails, fake_hub, kdet, kdet_env, ok};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn same_named_images_get_their_own_drawing_and_export_resolves_hub_paths() {
    let d = tempfile::tempdir().unwrap();
    let cfg = root().join("configs/synth/frcnn_r18_teacher.json");
    let w = root().join("weights/synth_frcnn_r18w05_teacher.safetensors");
    for (sub, src) in [("d1", "val_000001.png"), ("d2", "val_000002.png")] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
        std::fs::copy(
            root().join("tests/fixtures/export").join(src),
            d.path().join(sub).join("x.png"),
        )
        .unwrap();
    }
    let out = d.path().join("out");
    ok(&kdet(&[
        "infer",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        d.path().join("d1/x.png").to_str().unwrap(),
        d.path().join("d2/x.png").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let a = std::fs::read(out.join("x-1.png")).unwrap();
    let b = std::fs::read(out.join("x-2.png")).unwrap();
    assert_ne!(a, b, "two images, two drawings");
    assert!(!out.join("x.png").exists());
    let recs: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("detections.json")).unwrap()).unwrap();
    assert!(recs.iter().any(|r| r["drawing"] == "x-2.png"));

    // The same weights from the hub cache (offline), sidecar beside them in the snapshot.
    let cache = d.path().join("hub");
    fake_hub(
        &cache,
        "owner/repo",
        &[
            ("teacher.safetensors", &w),
            ("teacher.json", &w.with_extension("json")),
        ],
    );
    let env = [
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
    ];
    let exported = d.path().join("e.safetensors");
    let o = kdet_env(
        &[
            "export",
            "--config",
            cfg.to_str().unwrap(),
            "--weights",
            "hf://owner/repo/teacher.safetensors",
            "--out",
            exported.to_str().unwrap(),
        ],
        &env,
    );
    ok(&o);
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("e.json")).unwrap()).unwrap();
    assert_eq!(side["classes"].as_array().unwrap().len(), 5);
}

#[test]
fn torchvision_coco_weights_name_their_boxes_without_annotations() {
    let d = tempfile::tempdir().unwrap();
    // A tiny Faster R-CNN with torchvision's 91 COCO outputs (random weights), no sidecar, and
    // a config whose COCO annotation files are not there — and that asks for CUDA.
    let model = serde_json::json!({
        "backbone": {"depth": 18, "width": 0.0625, "norm": "bn"},
        "fpn": {"out_channels": 8},
        "input": {"min_size": 64, "max_size": 64},
        "roi_heads": {"representation_size": 16, "score_thresh": 0.0}
    });
    let c = d.path().join("coco.json");
    std::fs::write(
        &c,
        serde_json::json!({
            "model": model,
            "data": {"train": {"annotations": "coco/annotations/instances_train2017.json",
                               "images": "coco/train2017"}},
            "device": "cuda",
        })
        .to_string(),
    )
    .unwrap();
    let cfg = kdet::config::load(&c).unwrap();
    let net =
        kdet::models::build::Network::new(&cfg.config.model, 90, 0, &candle_core::Device::Cpu)
            .unwrap();
    let w = d.path().join("fasterrcnn_coco.safetensors");
    kdet::models::weights::save_safetensors(&net.vars.varmap, &w).unwrap();
    let img = root().join("tests/fixtures/export/val_000001.png");
    let out = d.path().join("out");
    let args = |extra: &[&'static str]| {
        let mut v = vec![
            "infer".to_string(),
            "--config".into(),
            c.display().to_string(),
            "--weights".into(),
            w.display().to_string(),
            img.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--score-thr".into(),
            "0".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        kdet(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // `device: cuda` on a CPU build: the message says how to run on the CPU.
    let e = fails(&run(&[]));
    assert!(e.contains("--device cpu"), "{e}");
    let o = ok(&run(&["--device", "cpu"]));
    assert!(
        o.contains("torchvision's COCO category names are used"),
        "{o}"
    );
    let recs: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("detections.json")).unwrap()).unwrap();
    assert!(!recs.is_empty(), "{o}");
    let (names, _) = kdet::data::torchvision_coco::classes();
    for r in &recs {
        let id = r["category_id"].as_u64().unwrap();
        assert_eq!(r["category"], names[id as usize - 1], "{r}");
    }
    // `--classes coco` says it up front; weights of another class count are not taken for
    // COCO's.
    ok(&run(&["--device", "cpu", "--classes", "coco"]));
    let net5 =
        kdet::models::build::Network::new(&cfg.config.model, 5, 0, &candle_core::Device::Cpu)
            .unwrap();
    kdet::models::weights::save_safetensors(&net5.vars.varmap, &w).unwrap();
    let e = fails(&run(&["--device", "cpu"]));
    assert!(
        e.contains("no class names for")
            && e.contains("data.train.annotations")
            && e.contains("--classes coco"),
        "{e}"
    );
}

/// Every file of `dir` with its contents.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn infer_never_overwrites_what_it_did_not_write() {
    let d = tempfile::tempdir().unwrap();
    let cfg = root().join("configs/synth/frcnn_r18_teacher.json");
    let w = root().join("weights/synth_frcnn_r18w05_teacher.safetensors");
    let images = d.path().join("ow");
    std::fs::create_dir(&images).unwrap();
    for (name, src) in [("a.png", "val_000001.png"), ("b.png", "val_000002.png")] {
        let src = root().join("tests/fixtures/export").join(src);
        std::fs::copy(src, images.join(name)).unwrap();
    }
    let infer = |inputs: &[&Path], out: &Path| {
        let mut args = vec![
            "infer".to_string(),
            "--config".into(),
            cfg.display().to_string(),
            "--weights".into(),
            w.display().to_string(),
        ];
        args.extend(inputs.iter().map(|p| p.display().to_string()));
        args.extend(["--out".into(), out.display().to_string()]);
        kdet(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // `--out ow ow`: the images are not replaced by their drawings.
    let before = snapshot(&images);
    let e = fails(&infer(&[&images], &images));
    assert!(
        e.contains("the folder is not empty (a.png, b.png)") && e.contains("kdet-infer.json"),
        "{e}"
    );
    assert_eq!(snapshot(&images), before);
    // A new folder, then again into it with fewer images: the stale drawing goes.
    let out = d.path().join("out");
    ok(&infer(&[&images], &out));
    assert!(out.join("a.png").is_file() && out.join("b.png").is_file());
    let o = ok(&infer(&[&images.join("a.png")], &out));
    assert!(o.contains("removed 3 file(s) of the earlier infer"), "{o}");
    assert!(out.join("a.png").is_file() && !out.join("b.png").exists());
    // A drawing fed back as an input is not overwritten by its own drawing.
    let before = snapshot(&out);
    let e = fails(&infer(&[&out.join("a.png")], &out));
    assert!(
        e.contains("is an input image") && e.contains("(as a.png)"),
        "{e}"
    );
    assert_eq!(snapshot(&out), before);
    // A training run's folder: its detections.json (what `kdet compare` reads) stays.
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("detections.json"), "[]").unwrap();
    std::fs::write(run.join("kdet-run.json"), "{}").unwrap();
    let before = snapshot(&run);
    let e = fails(&infer(&[&images], &run));
    assert!(e.contains("(a training run's folder)"), "{e}");
    assert_eq!(snapshot(&run), before);
}
