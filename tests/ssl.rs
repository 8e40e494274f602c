//! End to end through the binary: SimCLR contrastive pretraining on unlabeled synthetic crops
//! (two views, NT-Xent, `--resume` exact), its representation evaluated by `kdet eval` (k-NN and
//! linear probe), and the located errors of its settings.

mod common;

use std::path::Path;

use common::{fails, kdet, ok};

/// A tiny SimCLR pretraining config over a synthetic classification set in `dir`.
fn pretrain_config(dir: &Path, name: &str, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({
        "data": {"synthetic": {"task": "classification", "seed": 2, "classes": 4, "size": 16,
                               "train": 16, "val": 8, "unlabeled": 8,
                               "cache_dir": dir.join("cache")},
                 "use_unlabeled": true, "workers": 1},
        "model": {"arch": "classifier", "mlp_layers": 2,
                  "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
                  "input": {"min_size": 16, "max_size": 16, "size_divisible": 1, "square": true}},
        "method": {"type": "simclr_pretrain", "temperature": 0.5, "out_dim": 16,
                   "augment": {"strength": 0.5}},
        "solver": {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-6, "batch_size": 6, "iterations": 4, "warmup_iters": 1, "log_every": 1},
        "output_dir": dir.join(name),
        "seed": 0
    });
    merge(&mut v, extra);
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

#[test]
fn simclr_pretraining_trains_resumes_exactly_and_is_evaluated_by_knn_and_probe() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let full = pretrain_config(dir, "full", serde_json::json!({}));
    ok(&kdet(&["train", &full]));
    let log = std::fs::read_to_string(dir.join("full/metrics.jsonl")).unwrap();
    assert!(
        log.contains("loss_contrastive") && log.contains("contrast_acc"),
        "{log}"
    );
    // NT-Xent of 12 views starts near ln(11) (every other view equally similar).
    let first: serde_json::Value = serde_json::from_str(
        log.lines()
            .find(|l| l.contains("loss_contrastive"))
            .unwrap(),
    )
    .unwrap();
    let l0 = first["loss_contrastive"].as_f64().unwrap();
    assert!(l0 > 1.0 && l0 < 4.0, "{l0}");
    // The head's last layer is checkpointed, not in the model file.
    let split = pretrain_config(dir, "split", serde_json::json!({}));
    ok(&kdet(&["train", &split, "--stop-after", "2"]));
    ok(&kdet(&["train", &split, "--resume"]));
    let a = std::fs::read(dir.join("full/model.safetensors")).unwrap();
    let b = std::fs::read(dir.join("split/model.safetensors")).unwrap();
    assert!(a == b, "the resumed run differs from the uninterrupted one");
    // kdet eval: k-NN and linear probe on the frozen features, text and JSON.
    let w = dir.join("full/model.safetensors");
    let e = ok(&kdet(&[
        "eval",
        "--config",
        &full,
        "--weights",
        w.to_str().unwrap(),
    ]));
    assert!(
        e.contains("k-NN top-1") && e.contains("k = 16, T = 0.07, 16 labeled training images"),
        "{e}"
    );
    assert!(e.contains("linear probe top-1"), "{e}");
    let j = ok(&kdet(&[
        "eval",
        "--config",
        &full,
        "--weights",
        w.to_str().unwrap(),
        "--format",
        "json",
    ]));
    // Fine-tuning from the projection head's first layer: backbone and mlp.0 come from the
    // pretrained run (its fc and mlp.1 are left behind).
    let ft = pretrain_config(
        dir,
        "ft",
        serde_json::json!({"method": null, "data": {"use_unlabeled": false},
            "model": {"mlp_layers": 1, "backbone": {"weights": w}},
            "solver": {"optimizer": "sgd", "weight_decay": 0.0}}),
    );
    let o = ok(&kdet(&["train", &ft]));
    assert!(o.contains("projection-head tensors (mlp.0..0)"), "{o}");
    let v: serde_json::Value = serde_json::from_str(j.lines().next().unwrap()).unwrap();
    let r = &v["representation"];
    for k in ["knn_top1", "probe_top1"] {
        let x = r[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{v}");
    }
}

#[test]
fn contrastive_settings_give_located_errors() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cases = [
        (
            serde_json::json!({"method": {"temperature": 0.0}}),
            "method.temperature: must be > 0",
        ),
        (
            serde_json::json!({"method": {"temperature": -0.1}}),
            "method.temperature: must be > 0",
        ),
        (
            serde_json::json!({"solver": {"batch_size": 1}}),
            "solver.batch_size: 1 is too small for a contrastive loss",
        ),
        (
            serde_json::json!({"method": {"augment": {"crop_scale": [0.5, 0.1]}}}),
            "method.augment.crop_scale: [0.5, 0.1] must satisfy",
        ),
        (
            serde_json::json!({"method": {"augment": {"blur_prob": 2}}}),
            "method.augment.blur_prob: must be in [0, 1]",
        ),
        (
            serde_json::json!({"teachers": [{"weights": "t.safetensors"}]}),
            "teachers: simclr_pretrain learns from the images alone",
        ),
    ];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let c = pretrain_config(dir, &format!("bad{i}"), extra);
        let e = fails(&kdet(&["train", &c]));
        assert!(
            e.contains(&format!("bad{i}.json: {want}")),
            "{e}\nwant: {want}"
        );
    }
    // An unlabeled folder without images, named at its key.
    let png = |p: &Path| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::RgbImage::new(8, 8).save(p).unwrap();
    };
    png(&dir.join("f/train/a/1.png"));
    png(&dir.join("f/train/b/1.png"));
    std::fs::create_dir_all(dir.join("f/unlabeled/sub")).unwrap();
    let c = pretrain_config(
        dir,
        "empty",
        serde_json::json!({"data": {"synthetic": null,
            "folders": {"train": dir.join("f/train"), "unlabeled": dir.join("f/unlabeled")}}}),
    );
    let e = fails(&kdet(&["train", &c]));
    assert!(
        e.contains("empty.json: data.folders.unlabeled: ") && e.contains("no PNG or JPEG images"),
        "{e}"
    );
}
