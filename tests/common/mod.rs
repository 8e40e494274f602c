//! Helpers shared by the end-to-end tests: run the binary, a tiny synthetic training config.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn kdet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdet"))
        .args(args)
        .output()
        .expect("run kdet")
}

pub fn ok(o: &Output) -> String {
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{s}");
    s
}

/// A tiny student config in `dir` (shared synthetic cache inside `dir`).
pub fn config(dir: &Path, name: &str, solver: &str) -> String {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/synth/frcnn_student.json");
    let text = format!(
        r#"{{"base": "{}",
  "data": {{"synthetic": {{"seed": 3, "train": 8, "val": 4, "size": 64, "classes": 3, "cache_dir": "{}"}}, "workers": 2}},
  "model": {{"input": {{"min_size": 64, "max_size": 64}}}},
  "solver": {solver},
  "output_dir": "{}"}}"#,
        base.display(),
        dir.join("cache").display(),
        dir.join(name).display()
    );
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

pub fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect()
}

/// Run kdet with extra environment variables (hub cache, offline mode).
pub fn kdet_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kdet"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run kdet")
}

/// Lay `files` out as the Hugging Face cache does for `repo` at revision `main`:
/// `models--owner--name/{refs/main, blobs/, snapshots/<commit>/<file>}`.
pub fn fake_hub(cache: &Path, repo: &str, files: &[(&str, &Path)]) {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), commit).unwrap();
    for (name, src) in files {
        let dst = root.join("snapshots").join(commit).join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
}

/// Run kdet expecting failure; returns stderr.
pub fn fails(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected a failure: {e}");
    e
}

/// Set `key` (top level) of the JSON config at `path`.
pub fn set(path: &str, key: &str, value: serde_json::Value) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(path, v.to_string()).unwrap();
}

/// A command running kdet, for tests that add environment, limits or a kill.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kdet"));
    c.args(args);
    c
}

/// A run's metrics records without their measurements (`time`, `data_wait`, `rss_mb`: they
/// differ between runs).
pub fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["time", "data_wait", "rss_mb"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

/// Two finished runs of the same config are the same run: metrics (but wall-clock times),
/// final weights, detections and evaluation, bit for bit.
pub fn assert_same_run(a: &Path, b: &Path) {
    assert_eq!(records(a), records(b), "metrics differ");
    for f in ["model.safetensors", "detections.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let stats = |d: &Path| {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(d.join("eval.json")).unwrap())
            .unwrap()["stats"]
            .clone()
    };
    assert_eq!(stats(a), stats(b), "eval.json differs");
}

/// `b` merged into `a` (objects key by key, anything else replaced): a test config's overrides.
pub fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// `base` with `extra` merged in, written to `dir/<name>.json`; its path.
pub fn write_config(
    dir: &Path,
    name: &str,
    mut base: serde_json::Value,
    extra: serde_json::Value,
) -> String {
    merge(&mut base, extra);
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, base.to_string()).unwrap();
    p.display().to_string()
}
