//! End to end through the binary: SimCLR contrastive pretraining on unlabeled synthetic crops
//! (two views, NT-Xent, `--resume` exact), its representation evaluated by `kdet eval` (k-NN and
//! linear probe), and the located errors of its settings.

mod common;

use std::path::Path;

use common::{fails, kdet, merge, ok};

/// A tiny SimCLR pretraining config over a synthetic classification set in `dir`.
fn pretrain_config(dir: &Path, name: &str, extra: serde_json::Value) -> String {
    let v = serde_json::json!({
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
    common::write_config(dir, name, v, extra)
}

#[test]
fn simclr_pretraining_trains_resumes_exactly_and_is_evaluated_by_knn_and_probe() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let full = pretrain_config(
        dir,
        "full",
        serde_json::json!({"solver": {"eval_every": 2}}),
    );
    ok(&kdet(&["train", &full]));
    let log = std::fs::read_to_string(dir.join("full/metrics.jsonl")).unwrap();
    assert!(
        log.contains("loss_contrastive") && log.contains("contrast_acc"),
        "{log}"
    );
    // Evaluated by its representation while it trains, never by its untrained head.
    assert_eq!(evaluations(&log, "val/knn_top1"), [2, 4], "{log}");
    assert!(!log.contains("val/top1\""), "{log}");
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
    let split = pretrain_config(
        dir,
        "split",
        serde_json::json!({"solver": {"eval_every": 2}}),
    );
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
    // On half of the labels: a per-class subset, written to the run folder.
    let ft = pretrain_config(
        dir,
        "ft",
        serde_json::json!({"method": null, "data": {"use_unlabeled": false, "label_fraction": 0.5},
            "model": {"mlp_layers": 1, "backbone": {"weights": w}},
            "solver": {"optimizer": "sgd", "weight_decay": 0.0}}),
    );
    let o = ok(&kdet(&["train", &ft]));
    assert!(o.contains("projection-head tensors (mlp.0..0)"), "{o}");
    assert!(o.contains("training on 8 of the 16 labeled images"), "{o}");
    let subset: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ft/labeled_subset.json")).unwrap())
            .unwrap();
    assert_eq!(subset["images"].as_array().unwrap().len(), 8, "{subset}");
    assert_eq!(subset["class_counts"], serde_json::json!([2, 2, 2, 2]));
    // A supervised run reports its head, and at the end its representation too.
    let ft_log = std::fs::read_to_string(dir.join("ft/metrics.jsonl")).unwrap();
    assert!(
        ft_log.contains("val/top1") && ft_log.contains("val/knn_top1"),
        "{ft_log}"
    );
    assert!(dir.join("ft/knn_predictions.json").exists());
    let v: serde_json::Value = serde_json::from_str(j.lines().next().unwrap()).unwrap();
    let r = &v["representation"];
    for k in ["knn_top1", "probe_top1"] {
        let x = r[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{v}");
    }
}

/// The iterations at which the log records `key`.
fn evaluations(log: &str, key: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get(key).is_some())
        .map(|v| v["iter"].as_u64().unwrap())
        .collect()
}

/// A DoGo pair of one architecture over the pretraining config's data.
fn dogo(extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "method": {"type": "dogo", "temperature": 0.5, "kl_temperature": 0.1,
                   "kl_weights": [1.0, 1.0], "out_dim": 16, "augment": {"strength": 0.5},
                   "partner": {"arch": "classifier", "mlp_layers": 2,
                       "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
                       "input": {"min_size": 16, "max_size": 16, "size_divisible": 1, "square": true}}},
        "solver": {"eval_every": 2}
    });
    merge(&mut v, extra);
    v
}

#[test]
fn dogo_trains_two_networks_from_different_seeds_resumes_exactly_and_evaluates_each() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let full = pretrain_config(dir, "full", dogo(serde_json::json!({})));
    ok(&kdet(&["train", &full]));
    let log = std::fs::read_to_string(dir.join("full/metrics.jsonl")).unwrap();
    for k in [
        "net1.loss_contrastive",
        "net1.dogo.kl",
        "net2.loss_contrastive",
        "net2.dogo.kl",
        "net2.contrast_acc",
    ] {
        assert!(log.contains(k), "{k} not logged: {log}");
    }
    assert_eq!(evaluations(&log, "val/knn_top1"), [2, 4], "{log}");
    assert_eq!(evaluations(&log, "net2/val/knn_top1"), [4], "{log}");
    assert!(!log.contains("val/top1\""), "{log}");
    // One architecture, two seeds: the networks never were the same (two identical starts
    // would stay identical, their KL and its gradient being 0).
    let n1 = std::fs::read(dir.join("full/net1.safetensors")).unwrap();
    let n2 = std::fs::read(dir.join("full/net2.safetensors")).unwrap();
    assert!(n1 != n2);
    // Interrupted and resumed: the same bytes for both networks.
    let split = pretrain_config(dir, "split", dogo(serde_json::json!({})));
    ok(&kdet(&["train", &split, "--stop-after", "3"]));
    ok(&kdet(&["train", &split, "--resume"]));
    for f in ["net1.safetensors", "net2.safetensors", "model.safetensors"] {
        let a = std::fs::read(dir.join("full").join(f)).unwrap();
        let b = std::fs::read(dir.join("split").join(f)).unwrap();
        assert!(
            a == b,
            "{f}: the resumed run differs from the uninterrupted one"
        );
    }
    // Each network evaluated by its representation (`--network` as DML's).
    let w = dir.join("full/net2.safetensors");
    let e = ok(&kdet(&[
        "eval",
        "--config",
        &full,
        "--weights",
        w.to_str().unwrap(),
        "--network",
        "net2",
    ]));
    assert!(
        e.contains("k-NN top-1") && e.contains("self-supervised"),
        "{e}"
    );
    let ev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("full/eval.json")).unwrap())
            .unwrap();
    assert_eq!(ev["representation"]["knn"], "knn_predictions.json", "{ev}");
    assert_eq!(ev["summary"]["self_supervised"], true, "{ev}");
    assert!(dir.join("full/probe_predictions.json").exists());
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
        (
            serde_json::json!({"data": {"label_fraction": 0}}),
            "data.label_fraction: 0 is outside (0, 1]",
        ),
        (
            serde_json::json!({"data": {"label_fraction": 1.5}}),
            "data.label_fraction: 1.5 is outside (0, 1]",
        ),
        (
            dogo(serde_json::json!({"method": {"kl_temperature": 0}})),
            "method.kl_temperature: must be > 0",
        ),
        (
            dogo(serde_json::json!({"method": {"temperature": -1}})),
            "method.temperature: must be > 0",
        ),
        (
            dogo(serde_json::json!({"solver": {"batch_size": 1}})),
            "solver.batch_size: 1 is too small for a contrastive loss",
        ),
        (
            dogo(serde_json::json!({"method": {"kl_weights": [1, -1]}})),
            "method.kl_weights[1]: must be >= 0",
        ),
        (
            dogo(serde_json::json!({"method": {"evaluate": "net3"}})),
            "method.evaluate: `net3` is none of net1, net2",
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
