//! The files kdet writes in a run folder, and their upkeep: a run started from iteration 0
//! removes the previous run's outputs (so the folder never mixes two runs), every start removes
//! temporary files that killed writes left behind, and settings changed on `--resume` are
//! appended to `config_history.jsonl`. Only files kdet itself names are ever removed.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// What a run writes into its folder, by exact name.
pub const OUTPUTS: [&str; 12] = [
    "checkpoint.safetensors",
    "model.safetensors",
    "model.json",
    "config.json",
    "config_history.jsonl",
    "metrics.jsonl",
    "eval.json",
    "detections.json",
    "predictions.json",
    "loss.png",
    "lr.png",
    "ap.png",
];

/// Whether `name` is a file kdet writes in a run folder: one of [`OUTPUTS`], or a network's
/// own weights, sidecar and predictions of a multi-network method (`net1.safetensors`,
/// `net2.json`, `net1_detections.json`).
pub fn is_output(name: &str) -> bool {
    if OUTPUTS.contains(&name) {
        return true;
    }
    let network = |stem: &str| {
        stem.strip_prefix("net")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    [
        ".safetensors",
        ".json",
        "_detections.json",
        "_predictions.json",
    ]
    .iter()
    .any(|ext| name.strip_suffix(ext).is_some_and(network))
}

/// Remove the temporary files of kdet's atomic writes (`.checkpoint.safetensors.<pid>.tmp`)
/// that a killed process left in `dir`; those of a process still running (another kdet
/// writing there right now) are left alone. Returns the files removed.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let me = std::process::id();
    let mut removed = vec![];
    for (path, name) in entries(dir)? {
        let Some(pid) = crate::util::temporary_of(&name, is_output) else {
            continue;
        };
        if pid != me && crate::util::process_alive(pid) {
            continue;
        }
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        removed.push(path);
    }
    Ok(removed)
}

/// Remove the outputs of a previous run from `dir` (see [`is_output`]). Returns the files
/// removed.
pub fn remove_outputs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = vec![];
    for (path, name) in entries(dir)? {
        if is_output(&name) && path.is_file() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed.push(path);
        }
    }
    removed.sort();
    Ok(removed)
}

/// A setting changed on `--resume`: its JSON path and values before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub path: String,
    pub old: Value,
    pub new: Value,
}

/// The changes as one JSON object: `{"solver.lr": {"from": 0.01, "to": 0.005}}`.
pub fn changes_json(changes: &[Change]) -> Value {
    let mut m = serde_json::Map::new();
    for c in changes {
        m.insert(c.path.clone(), json!({"from": c.old, "to": c.new}));
    }
    Value::Object(m)
}

/// Append to `dir/config_history.jsonl` the settings changed when resuming at `iter`, with the
/// whole config from then on. `config.json` keeps the config the run started with.
pub fn append_history(dir: &Path, iter: u64, changes: &[Change], config: &Value) -> Result<()> {
    use std::io::Write;
    let path = dir.join("config_history.jsonl");
    let mut line =
        json!({"iter": iter, "changed": changes_json(changes), "config": config}).to_string();
    line.push('\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| Error::io(&path, e))
}

fn entries(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut v = vec![];
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if let Some(name) = e.file_name().to_str() {
            v.push((e.path(), name.to_string()));
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_only_what_kdet_names() {
        let d = tempfile::tempdir().unwrap();
        let files = [
            "model.safetensors",
            "net2.safetensors",
            "net1.json",
            "net1_detections.json",
            "eval.json",
            "loss.png",
            "notes.txt",
            "netx.json",
            "my.json",
            ".checkpoint.safetensors.999999999.tmp",
            ".notes.txt.1.tmp",
        ];
        for f in files {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        // A temporary file of a process that is alive (this one's parent) stays.
        let live = format!(".model.safetensors.{}.tmp", unsafe { libc::getppid() });
        std::fs::write(d.path().join(&live), b"x").unwrap();
        let tmp = remove_stale_temporaries(d.path()).unwrap();
        assert_eq!(
            tmp,
            vec![d.path().join(".checkpoint.safetensors.999999999.tmp")]
        );
        let out = remove_outputs(d.path()).unwrap();
        let names: Vec<String> = out
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "eval.json",
                "loss.png",
                "model.safetensors",
                "net1.json",
                "net1_detections.json",
                "net2.safetensors"
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            ".notes.txt.1.tmp",
            &live,
            "my.json",
            "netx.json",
            "notes.txt",
        ];
        want.sort();
        assert_eq!(left, want);
    }
}
