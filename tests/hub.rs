//! Pretrained teachers from the hub through candle-transformers, offline: the names and shapes
//! candle-transformers' ResNet and DINOv2 ask for are timm's (tests/fixtures/hub/timm_keys.json,
//! from tools/make_hub_fixtures.py); a full-size random ResNet-18 in that layout, written here
//! (45 MB: too big to commit; candle-transformers' ResNet has fixed widths), teaches soft labels
//! from a fake Hugging Face cache, and a missing tensor is an error naming it and the file; the
//! committed tiny DINOv2 (torch-hub layout, with `mask_token`, no head) teaches CBD features.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{dinov2, resnet};
use common::{fails, fake_hub, kdet_env, ok};
use kdet::distill::pretrained::expected_tensors;
use rand::{Rng, SeedableRng};

fn timm_keys() -> BTreeMap<String, BTreeMap<String, Vec<usize>>> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub/timm_keys.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, m)| (k.clone(), serde_json::from_value(m.clone()).unwrap()))
        .collect()
}

fn without_counters(m: &BTreeMap<String, Vec<usize>>) -> BTreeMap<String, Vec<usize>> {
    m.iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn candle_transformers_asks_for_timms_names_and_shapes() {
    let timm = timm_keys();
    let r18 = expected_tensors(|vb| resnet::resnet18(1000, vb).map(|_| ())).unwrap();
    assert_eq!(r18, without_counters(&timm["resnet18"]));
    let r50 = expected_tensors(|vb| resnet::resnet50(1000, vb).map(|_| ())).unwrap();
    assert_eq!(r50, without_counters(&timm["resnet50"]));
    // DINOv2 ViT-S/14: timm's `vit_small_patch14_dinov2` (no classifier) plus candle's head.
    let mut vit =
        expected_tensors(|vb| dinov2::DinoVisionTransformer::new(vb, 12, 384, 6).map(|_| ()))
            .unwrap();
    assert_eq!(vit.remove("head.weight"), Some(vec![1000, 768]));
    assert_eq!(vit.remove("head.bias"), Some(vec![1000]));
    assert_eq!(vit, timm["vit_small_patch14_dinov2"]);
}

/// A tiny classifier config (4 classes) with one pretrained teacher.
fn config(
    dir: &Path,
    name: &str,
    teacher: serde_json::Value,
    method: serde_json::Value,
    proj: Option<usize>,
) -> String {
    let mut model = serde_json::json!({"arch": "classifier",
        "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
        "input": {"min_size": 16, "max_size": 16, "size_divisible": 1, "square": true},
        "head": {"type": "cosine"}});
    if let Some(d) = proj {
        model["projection"] = serde_json::json!({ "dim": d });
    }
    let v = serde_json::json!({
        "data": {"synthetic": {"task": "classification", "seed": 5, "classes": 4, "size": 16,
                               "train": 8, "val": 4, "cache_dir": dir.join("cache")}, "workers": 1},
        "model": model,
        "teachers": [teacher],
        "method": method,
        "solver": {"lr": 0.01, "batch_size": 4, "iterations": 2, "warmup_iters": 1},
        "output_dir": dir.join(name),
    });
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

#[test]
fn a_full_size_timm_resnet_teaches_soft_labels_from_the_hub_offline() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // timm's resnet18 layout, its classifier cut to the student's 4 classes, seeded values.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for (k, shape) in &timm_keys()["resnet18"] {
        let shape = if k.starts_with("fc.") {
            let mut s = shape.clone();
            s[0] = 4;
            s
        } else {
            shape.clone()
        };
        let n: usize = shape.iter().product();
        let v: Tensor = if k.ends_with("num_batches_tracked") {
            Tensor::zeros((), DType::I64, &Device::Cpu).unwrap()
        } else if k.ends_with("running_var") {
            Tensor::ones(shape.as_slice(), DType::F32, &Device::Cpu).unwrap()
        } else {
            let data: Vec<f32> = (0..n).map(|_| rng.random_range(-0.05f32..0.05)).collect();
            Tensor::from_vec(data, shape.as_slice(), &Device::Cpu).unwrap()
        };
        t.insert(k.clone(), v);
    }
    let file = dir.join("model.safetensors");
    candle_core::safetensors::save(&t, &file).unwrap();
    let cache = dir.join("hf");
    fake_hub(
        &cache,
        "timm/resnet18.tv_in1k",
        &[("model.safetensors", &file)],
    );
    let env = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let teacher = serde_json::json!({"weights": "hf://timm/resnet18.tv_in1k/model.safetensors",
        "pretrained": {"type": "resnet", "depth": 18, "input": {"size": 32}}});
    let cfg = config(
        dir,
        "simclr",
        teacher.clone(),
        serde_json::json!({"type": "simclr", "temperature": 1.0}),
        None,
    );
    let o = ok(&kdet_env(&["train", &cfg], &env));
    assert!(o.contains("tensors of a pretrained ResNet-18"), "{o}");
    // The same file with a tensor missing: strict loading names it and the file.
    t.remove("layer3.1.bn2.running_mean");
    candle_core::safetensors::save(&t, &file).unwrap();
    let cache2 = dir.join("hf2");
    fake_hub(
        &cache2,
        "timm/resnet18.tv_in1k",
        &[("model.safetensors", &file)],
    );
    let env2 = [
        ("HF_HUB_CACHE", cache2.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let cfg = config(
        dir,
        "simclr2",
        teacher,
        serde_json::json!({"type": "simclr", "temperature": 1.0}),
        None,
    );
    let e = fails(&kdet_env(&["train", &cfg], &env2));
    assert!(
        e.contains("teachers[0].weights")
            && e.contains("model.safetensors does not fit")
            && e.contains("missing keys: layer3.1.bn2.running_mean"),
        "{e}"
    );
}

#[test]
fn a_tiny_dinov2_in_the_torch_hub_layout_teaches_cbd_features() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub/dinov2_tiny.safetensors");
    let cache = dir.join("hf");
    fake_hub(
        &cache,
        "kdet-test/dinov2-tiny",
        &[("model.safetensors", &file)],
    );
    let env = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let teacher = |extra: serde_json::Value| {
        let mut t = serde_json::json!({"weights": "hf://kdet-test/dinov2-tiny/model.safetensors",
            "pretrained": {"type": "dinov2", "depth": 1, "embed_dim": 8, "num_heads": 2, "input": {"size": 28}}});
        if let (Some(o), serde_json::Value::Object(e)) = (t.as_object_mut(), extra) {
            o.extend(e);
        }
        t
    };
    let cfg = config(
        dir,
        "cbd",
        teacher(serde_json::json!({})),
        serde_json::json!({"type": "cbd"}),
        Some(8),
    );
    let o = ok(&kdet_env(&["train", &cfg], &env));
    assert!(o.contains("tensors of a pretrained DINOv2"), "{o}");
    let log = std::fs::read_to_string(dir.join("cbd/metrics.jsonl")).unwrap();
    assert!(log.contains("distill.cbd.feature"), "{log}");
    // It has no classifier: no soft labels for simclr, said with the file.
    let cfg = config(
        dir,
        "simclr",
        teacher(serde_json::json!({})),
        serde_json::json!({"type": "simclr", "temperature": 1.0}),
        None,
    );
    let e = fails(&kdet_env(&["train", &cfg], &env));
    assert!(e.contains("teachers[0]: has no classifier"), "{e}");
    // A wrong architecture is a shape mismatch naming the tensor.
    let mut t = teacher(serde_json::json!({}));
    t["pretrained"]["embed_dim"] = 16.into();
    let cfg = config(dir, "wide", t, serde_json::json!({"type": "cbd"}), Some(16));
    let e = fails(&kdet_env(&["train", &cfg], &env));
    assert!(
        e.contains("shape mismatches: blocks.0.attn.proj.bias (model [16], file [8])")
            || e.contains("shape mismatches"),
        "{e}"
    );
    // DINOv2's input must be a multiple of its patch.
    let mut t = teacher(serde_json::json!({}));
    t["pretrained"]["input"]["size"] = 30.into();
    let cfg = config(dir, "odd", t, serde_json::json!({"type": "cbd"}), Some(8));
    let e = fails(&kdet_env(&["train", &cfg], &env));
    assert!(
        e.contains(
            "teachers[0].pretrained.input.size: 30 is not a multiple of DINOv2's 14-pixel patch"
        ),
        "{e}"
    );
}
