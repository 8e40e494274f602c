//! End to end through the binary: federated runs (FedAvg, FedNTD, FedX) on tiny synthetic
//! crops — the partition written, metrics per client and round, exact `--resume` in the middle
//! of a round, `kdet fed`'s pieces reproducing the simulation's global weights, and the
//! located errors of bad settings.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{command, fails, kdet, ok, records};

/// `b` merged into `a` key by key; a `partition` (a tagged choice) is replaced whole.
fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                if k == "partition" {
                    a.insert(k, v);
                } else {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (a, b) => *a = b,
    }
}

/// A tiny federated config in `dir`: 4 classes × 10 images, 4 clients of 2 shards, 2 of them
/// per round, 2 rounds of 1 local epoch.
fn fed_config(dir: &Path, name: &str, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({
        "data": {"synthetic": {"task": "classification", "seed": 5, "classes": 4, "size": 16,
                               "train": 40, "val": 8, "cache_dir": dir.join("cache")},
                 "workers": 1},
        "model": {"arch": "classifier",
                  "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
                  "input": {"min_size": 16, "max_size": 16, "size_divisible": 1, "square": true}},
        "solver": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-5,
                   "batch_size": 5},
        "federated": {"clients": 4, "rounds": 2, "fraction": 0.5, "local_epochs": 1,
                      "partition": {"type": "shards", "classes_per_client": 2}},
        "output_dir": dir.join(name),
        "seed": 0
    });
    merge(&mut v, extra);
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

/// The JSON line a `kdet fed` command printed.
fn json_line(out: &str) -> serde_json::Value {
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    serde_json::from_str(line).unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn fedntd_trains_rounds_and_resumes_exactly_in_the_middle_of_a_round() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let ntd = serde_json::json!({"method": {"type": "fedntd"}});
    let full = fed_config(dir, "full", ntd.clone());
    let out = ok(&kdet(&["train", &full]));
    assert!(out.contains("round 2: global model: val top-1"), "{out}");
    // The partition: every training image on one client, ≤ 2 classes each.
    let p = json(&dir.join("full/partition.json"));
    let clients = p["client_images"].as_array().unwrap();
    assert_eq!(clients.len(), 4);
    let mut ids: Vec<u64> = vec![];
    for c in clients {
        let counts: Vec<u64> = c["class_counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert!(counts.iter().filter(|&&x| x > 0).count() <= 2, "{c}");
        assert_eq!(counts.iter().sum::<u64>(), c["images"].as_u64().unwrap());
        ids.extend(
            c["image_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap()),
        );
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    // Two client records and a round record per round, each round evaluated.
    let recs = records(&dir.join("full"));
    for round in 1..=2u64 {
        let of = |k: &str| {
            recs.iter()
                .filter(|r| r["iter"] == round && r.get(k).is_some())
                .count()
        };
        assert_eq!(of("client"), 2, "{recs:?}");
        assert_eq!(of("clients"), 1);
        assert_eq!(of("val/top1"), 1);
        assert!(recs
            .iter()
            .any(|r| r["iter"] == round && r.get("client/loss_ntd").is_some()));
    }
    let lrs: Vec<f64> = recs.iter().filter_map(|r| r["lr"].as_f64()).collect();
    assert_eq!(lrs, [0.05, 0.05 * 0.99]);
    let e = json(&dir.join("full/eval.json"));
    assert_eq!(e["iter"], 2);
    assert!(
        dir.join("full/model.safetensors").is_file() && dir.join("full/predictions.json").is_file()
    );

    // Ctrl-C at the 3rd local step (round 1's second client): the checkpoint after its first
    // client stays; --resume finishes the run as if nothing happened.
    let split = fed_config(dir, "split", ntd);
    let o = command(&["train", &split])
        .env("KDET_FAULT", "sigint:3")
        .output()
        .unwrap();
    let e = fails(&o);
    assert!(
        e.contains("in round 1 of 2 at client 2 of 2") && e.contains("--resume"),
        "{e}"
    );
    assert_eq!(o.status.code(), Some(130));
    let resumed = ok(&kdet(&["train", &split, "--resume"]));
    assert!(
        resumed.contains("at round 1 (1 of its clients done)"),
        "{resumed}"
    );
    assert_eq!(records(&dir.join("full")), records(&dir.join("split")));
    for f in ["model.safetensors", "predictions.json", "partition.json"] {
        assert!(
            std::fs::read(dir.join("full").join(f)).unwrap()
                == std::fs::read(dir.join("split").join(f)).unwrap(),
            "{f} differs"
        );
    }
    // A finished run resumed only evaluates again; a shorter run is refused.
    ok(&kdet(&["train", &split, "--resume"]));
    common::set(
        &split,
        "federated",
        serde_json::json!({"clients": 4, "rounds": 1, "fraction": 0.5, "local_epochs": 1, "partition": {"type": "shards", "classes_per_client": 2}}),
    );
    let e = fails(&kdet(&["train", &split, "--resume"]));
    assert!(
        e.contains("federated.rounds") && e.contains("already at round 2"),
        "{e}"
    );
}

/// What `kdet fed` hands an outside driver reproduces the simulation: the initial state, the
/// round's clients, each client's training, averaged as FedAvg does, gives `kdet train`'s
/// global weights after one round, bit for bit.
#[test]
fn fed_pieces_reproduce_the_simulation() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cfg = fed_config(dir, "sim", serde_json::json!({"federated": {"rounds": 1}}));
    ok(&kdet(&["train", &cfg]));
    let init = dir.join("init.safetensors");
    ok(&kdet(&[
        "fed",
        "init",
        &cfg,
        "--out",
        init.to_str().unwrap(),
    ]));
    // No file is overwritten.
    let e = fails(&kdet(&[
        "fed",
        "init",
        &cfg,
        "--out",
        init.to_str().unwrap(),
    ]));
    assert!(e.contains("exists"), "{e}");
    let s = json_line(&ok(&kdet(&["fed", "sample", &cfg, "--round", "0"])));
    let sampled: Vec<u64> = s["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    assert_eq!(sampled.len(), 2);
    let mut sum = kdet::federated::client::Sum::default();
    for c in &sampled {
        let out = dir.join(format!("client{c}.safetensors"));
        let r = ok(&kdet(&[
            "fed",
            "client",
            &cfg,
            "--round",
            "0",
            "--client",
            &c.to_string(),
            "--weights",
            init.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]));
        let v = json_line(&r);
        let w = kdet::federated::external::read_state(&out).unwrap();
        sum.add(&w, v["examples"].as_u64().unwrap() as usize)
            .unwrap();
    }
    let avg = sum.average().unwrap();
    let sim: BTreeMap<String, candle_core::Tensor> =
        kdet::models::weights::read_safetensors(&dir.join("sim/model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(sim.len(), avg.len());
    for (k, t) in &sim {
        let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = avg[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(a == b, "{k} differs");
    }
    // The evaluation of a state file is the simulation's.
    let avg_file = dir.join("avg.safetensors");
    kdet::federated::external::write_state(&avg_file, &avg).unwrap();
    let e = json_line(&ok(&kdet(&[
        "fed",
        "eval",
        &cfg,
        "--weights",
        avg_file.to_str().unwrap(),
    ])));
    let ev = json(&dir.join("sim/eval.json"));
    assert_eq!(e["top1"], ev["summary"]["top1"]);
}

#[test]
fn fedx_learns_without_labels_and_is_evaluated_by_knn_and_probe() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cfg = fed_config(
        dir,
        "fedx",
        serde_json::json!({"method": {"type": "fedx", "out_dim": 16, "augment": {"strength": 0.5}},
                           "federated": {"rounds": 1}}),
    );
    ok(&kdet(&["train", &cfg]));
    let recs = records(&dir.join("fedx"));
    let terms = [
        "client/loss_nt_local",
        "client/loss_js_local",
        "client/loss_nt_global",
        "client/loss_js_global",
    ];
    for t in terms {
        assert!(recs.iter().any(|r| r.get(t).is_some()), "{t}: {recs:?}");
    }
    assert!(recs
        .iter()
        .any(|r| r.get("val/knn_top1").is_some() && r.get("val/probe_top1").is_some()));
    // The heads are averaged with the encoder and checkpointed, not written to the model file.
    let m = kdet::models::weights::read_safetensors(&dir.join("fedx/model.safetensors")).unwrap();
    assert!(m.keys().all(|k| !k.starts_with("fedx.")));
    let ck = kdet::engine::checkpoint::load(&dir.join("fedx/checkpoint.safetensors")).unwrap();
    assert!(ck.aux.contains_key("fedx.proj.0.weight"));
}

#[test]
fn bad_federated_settings_are_located() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            serde_json::json!({"federated": {"partition": {"type": "dirichlet", "alpha": 0.0}}}),
            "federated.partition.alpha: 0 is not > 0",
        ),
        (serde_json::json!({"federated": {"fraction": 0.0}}), "federated.fraction: 0 is not in (0, 1]"),
        (serde_json::json!({"federated": {"fraction": 1.5}}), "federated.fraction: 1.5 is not in (0, 1]"),
        (serde_json::json!({"federated": {"clients": 0}}), "federated.clients: must be >= 1"),
        (serde_json::json!({"federated": {"clients": 41}}), "federated.clients: 41 clients for 40 training images"),
        (
            serde_json::json!({"federated": {"partition": {"type": "shards", "classes_per_client": 5}}}),
            "federated.partition.classes_per_client: 5 classes per client, but the training data has 4 classes",
        ),
        (
            serde_json::json!({"federated": {"clients": 3}}),
            "make s·M a multiple of K",
        ),
        (serde_json::json!({"solver": {"iterations": 10}}), "solver.iterations: a federated run's length"),
        (
            serde_json::json!({"method": {"type": "dml", "peers": [{"model": {"arch": "classifier",
                "backbone": {"depth": 18, "width": 0.125, "norm": "bn", "trainable_layers": 5},
                "input": {"min_size": 16, "max_size": 16, "size_divisible": 1, "square": true}}}]}}),
            "method.type: `dml` is not a client method",
        ),
    ];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let cfg = fed_config(dir, &format!("bad{i}"), extra);
        let e = fails(&kdet(&["train", &cfg]));
        assert!(e.contains(&format!("bad{i}.json: ")), "{e}");
        assert!(e.contains(want), "case {i}: {e}");
    }
    // A client method without a federated section.
    let cfg = fed_config(
        dir,
        "nofed",
        serde_json::json!({"method": {"type": "fedntd"}}),
    );
    let mut v = json(Path::new(&cfg));
    v.as_object_mut().unwrap().remove("federated");
    std::fs::write(&cfg, v.to_string()).unwrap();
    let e = fails(&kdet(&["train", &cfg]));
    assert!(
        e.contains("method.type: fedntd trains clients of a federated run"),
        "{e}"
    );
}
