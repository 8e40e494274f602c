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
