//! `kdet export` against torchvision: the exported state dict has exactly the keys, dtypes and
//! shapes torchvision's `FasterRCNN(...).state_dict()` has for the architecture (so
//! `load_state_dict(strict=True)` takes it), and the exported file gives torchvision's detections.
//! The fixture comes from `tools/export_roundtrip.py --write-fixture tests/fixtures/export`, which
//! also performs the PyTorch side of the round trip.

mod common;
use common::{kdet, ok};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn export(out: &Path, extra: &[&str]) -> String {
    let cfg = root().join("configs/synth/frcnn_r18_teacher.json");
    let w = root().join("weights/synth_frcnn_r18w05_teacher.safetensors");
    let mut args = vec![
        "export",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&kdet(&args))
}

fn keys(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let dt = match t.dtype() {
                candle_core::DType::F32 => "float32",
                candle_core::DType::F16 => "float16",
                candle_core::DType::I64 => "int64",
                d => panic!("{k}: unexpected {d:?}"),
            };
            format!("{k} {dt} {:?}", t.dims())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn torchvision_format_matches_torchvision_state_dict_and_outputs() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("tv.safetensors");
    export(&out, &[]);
    let fx = root().join("tests/fixtures/export");
    let mut want: Vec<String> = std::fs::read_to_string(fx.join("keys.txt"))
        .unwrap()
        .lines()
        .map(|l| l.replace(", ", ","))
        .collect();
    want.sort();
    let got: Vec<String> = keys(&out).iter().map(|l| l.replace(", ", ",")).collect();
    assert_eq!(got, want);
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("tv.json")).unwrap()).unwrap();
    assert_eq!(side["format"], "torchvision");
    assert_eq!(side["classes"].as_array().unwrap().len(), 5);
    assert_eq!(side["num_classes_with_background"], 6);

    // kdet on the exported file gives torchvision's detections.
    let imgs = [fx.join("val_000001.png"), fx.join("val_000002.png")];
    let inf = d.path().join("infer");
    ok(&kdet(&[
        "infer",
        "--config",
        root()
            .join("configs/synth/frcnn_r18_teacher.json")
            .to_str()
            .unwrap(),
        "--weights",
        out.to_str().unwrap(),
        "--score-thr",
        "0",
        "--out",
        inf.to_str().unwrap(),
        imgs[0].to_str().unwrap(),
        imgs[1].to_str().unwrap(),
    ]));
    let read = |p: &Path| -> Vec<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let tv = read(&fx.join("torchvision_detections.json"));
    let kd = read(&inf.join("detections.json"));
    assert_eq!(tv.len(), kd.len());
    for name in ["val_000001.png", "val_000002.png"] {
        let pick = |v: &[serde_json::Value]| -> Vec<serde_json::Value> {
            let mut r: Vec<_> = v
                .iter()
                .filter(|r| r["file_name"].as_str().unwrap().ends_with(name))
                .cloned()
                .collect();
            r.sort_by(|a, b| {
                b["score"]
                    .as_f64()
                    .partial_cmp(&a["score"].as_f64())
                    .unwrap()
            });
            r
        };
        for (t, k) in pick(&tv).iter().zip(pick(&kd)) {
            assert_eq!(t["category_id"], k["category_id"]);
            assert!((t["score"].as_f64().unwrap() - k["score"].as_f64().unwrap()).abs() < 1e-4);
            for i in 0..4 {
                let (a, b) = (
                    t["bbox"][i].as_f64().unwrap(),
                    k["bbox"][i].as_f64().unwrap(),
                );
                assert!((a - b).abs() < 1e-2, "{name}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn kdet_format_f16_and_backbone_only() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("k.safetensors");
    export(&out, &["--format", "kdet", "--dtype", "f16"]);
    let k = keys(&out);
    assert_eq!(k.len(), 130);
    assert!(k.iter().all(|l| l.contains(" float16 ")), "{k:?}");
    assert!(!k.iter().any(|l| l.contains("num_batches_tracked")));
    let bb = d.path().join("bb.safetensors");
    export(&bb, &["--backbone-only"]);
    let k = keys(&bb);
    assert!(k.iter().any(|l| l.starts_with("conv1.weight ")));
    assert!(k
        .iter()
        .any(|l| l.starts_with("layer4.1.bn2.num_batches_tracked ")));
    assert!(!k
        .iter()
        .any(|l| l.starts_with("backbone.") || l.starts_with("rpn.")));
    // Weights that do not fit the config are refused, naming both.
    let cfg = root().join("configs/synth/frcnn_student.json");
    let o = kdet(&[
        "export",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        out.to_str().unwrap(),
        "--out",
        d.path().join("x.safetensors").to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("do not fit") && e.contains("frcnn_student.json"),
        "{e}"
    );
}

/// Export the shipped teacher with `config` (beside the repository's) and `weights` to `out`.
fn try_export(config: &Path, weights: &Path, out: &Path) -> std::process::Output {
    kdet(&[
        "export",
        "--config",
        config.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn export_never_writes_over_its_inputs_or_itself() {
    let d = tempfile::tempdir().unwrap();
    let shipped = root().join("weights/synth_frcnn_r18w05_teacher.safetensors");
    let w = d.path().join("w.safetensors");
    std::fs::copy(&shipped, &w).unwrap();
    std::fs::copy(shipped.with_extension("json"), d.path().join("w.json")).unwrap();
    let cfg = d.path().join("c.json");
    let base = root().join("configs/synth/frcnn_r18_teacher.json");
    std::fs::write(&cfg, serde_json::json!({"base": base}).to_string()).unwrap();
    let unchanged = |p: &Path, before: &[u8]| assert_eq!(std::fs::read(p).unwrap(), before);
    let w_bytes = std::fs::read(&w).unwrap();
    let cfg_bytes = std::fs::read(&cfg).unwrap();
    // The sidecar of x.json is x.json.
    let e = common::fails(&try_export(&cfg, &w, &d.path().join("exported.json")));
    assert!(
        e.contains("the sidecar would be written over the weights"),
        "{e}"
    );
    assert!(!d.path().join("exported.json").exists());
    // The weights, or their sidecar, or the config.
    let e = common::fails(&try_export(&cfg, &w, &w));
    assert!(e.contains("is --weights, an input of this export"), "{e}");
    let e = common::fails(&try_export(&cfg, &w, &d.path().join("c.safetensors")));
    assert!(e.contains("c.json is the config, an input"), "{e}");
    unchanged(&w, &w_bytes);
    unchanged(&cfg, &cfg_bytes);
}

#[test]
fn broken_weights_are_refused_at_load_naming_file_and_tensor() {
    let d = tempfile::tempdir().unwrap();
    let cfg = root().join("configs/synth/frcnn_r18_teacher.json");
    let shipped = root().join("weights/synth_frcnn_r18w05_teacher.safetensors");
    let mut tensors = kdet::models::weights::read_safetensors(&shipped).unwrap();
    let key = "roi_heads.box_predictor.cls_score.bias";
    let good = tensors[key].clone();
    let write = |name: &str, t: candle_core::Tensor| {
        let mut m = tensors.clone();
        m.insert(key.to_string(), t);
        let p = d.path().join(name);
        kdet::models::weights::write_safetensors(&m, &p).unwrap();
        std::fs::copy(shipped.with_extension("json"), p.with_extension("json")).unwrap();
        p
    };
    let nan = (good.ones_like().unwrap() * f64::NAN).unwrap();
    let nan = write("nan.safetensors", nan);
    let int = write(
        "int.safetensors",
        good.to_dtype(candle_core::DType::I64).unwrap(),
    );
    tensors.clear();
    let out = d.path().join("x.safetensors");
    let e = common::fails(&try_export(&cfg, &nan, &out));
    assert!(
        e.contains(
            "nan.safetensors: tensor `roi_heads.box_predictor.cls_score.bias` holds 6 non-finite"
        ),
        "{e}"
    );
    let e = common::fails(&kdet(&[
        "infer",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        nan.to_str().unwrap(),
        root()
            .join("tests/fixtures/export/val_000001.png")
            .to_str()
            .unwrap(),
        "--out",
        d.path().join("drawn").to_str().unwrap(),
    ]));
    assert!(e.contains("nan.safetensors: tensor `roi_heads"), "{e}");
    let e = common::fails(&try_export(&cfg, &int, &out));
    assert!(
        e.contains("int.safetensors: tensor `roi_heads.box_predictor.cls_score.bias` is i64"),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn export_reads_what_eval_reads_and_mismatches_say_why() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.safetensors");
    // A PyTorch file: read (it used to fail with "header too large"), and found not to fit.
    let cfg = root().join("configs/synth/frcnn_r18_teacher.json");
    let pth = root().join("tests/fixtures/pth/tiny_state_dict.pth");
    let e = common::fails(&try_export(&cfg, &pth, &out));
    assert!(
        e.contains("do not fit") && !e.contains("header too large"),
        "{e}"
    );
    // Weights whose sidecar records another width than the config builds.
    let student = root().join("configs/synth/frcnn_student.json");
    let teacher = root().join("weights/synth_frcnn_r18w05_teacher.safetensors");
    let e = common::fails(&try_export(&student, &teacher, &out));
    let says = "the weights are faster_rcnn ResNet-18 ×0.5 (sidecar ";
    assert!(
        e.contains(says) && e.contains("but the config builds faster_rcnn ResNet-18 ×0.25"),
        "{e}"
    );
    assert!(!e.contains("strict"), "{e}");
}
