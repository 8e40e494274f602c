//! The files kdet writes in a run folder, and their upkeep. Before writing anything, a run
//! claims its folder ([`claim`]): it writes the manifest `kdet-run.json` listing every file it
//! writes, and refuses a folder holding files of those names that no manifest (or, for a run
//! folder of a kdet before manifests, a valid checkpoint or metrics log) proves kdet wrote. A run
//! started from iteration 0 then removes the previous run's files — only those proven — so the
//! folder never mixes two runs; no input of the run (its config and `base` files, teachers'
//! weights, backbone weights, data) is ever removed or overwritten. Every start removes
//! temporary files that killed writes left behind, and settings changed on `--resume` are
//! appended to `config_history.jsonl`.

use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::config::LoadedConfig;
use crate::error::{Error, Result};
use crate::manifest::{same_file, Manifest};

/// The run folder's manifest: the files the run writes, written before any of them.
pub const MANIFEST: &str = "kdet-run.json";

/// The training images a run on a share of the labels kept (`data.label_fraction`).
pub const LABELED_SUBSET: &str = "labeled_subset.json";

/// What a run writes into its folder, by exact name.
pub const OUTPUTS: [&str; 16] = [
    "checkpoint.safetensors",
    "model.safetensors",
    "model.json",
    "config.json",
    "config_history.jsonl",
    "metrics.jsonl",
    "eval.json",
    "detections.json",
    "predictions.json",
    "knn_predictions.json",
    "probe_predictions.json",
    LABELED_SUBSET,
    "loss.png",
    "lr.png",
    "ap.png",
    // A federated run's clients (`federated`).
    "partition.json",
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
        let Some(pid) = crate::util::temporary_of(&name, |n| is_output(n) || n == MANIFEST) else {
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

/// The files a run of `networks` (the method's, in order) writes: [`OUTPUTS`], and with several
/// networks each one's weights, sidecar and predictions (`net1.safetensors`, `net1.json`,
/// `net1_detections.json`, `net1_predictions.json`).
pub fn run_files(networks: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = OUTPUTS.iter().map(|s| s.to_string()).collect();
    if networks.len() > 1 {
        for n in networks {
            for ext in [
                ".safetensors",
                ".json",
                "_detections.json",
                "_predictions.json",
            ] {
                v.push(format!("{n}{ext}"));
            }
        }
    }
    v
}

/// Refuse an `output_dir` that is no run's to write into: a file, a path under a file, the
/// root folder, the home folder or a repository's root (a run removes its earlier files there).
pub fn check_output_dir(cfg: &LoadedConfig, out: &Path) -> Result<()> {
    let refuse = |why: String| Err(cfg.error("output_dir", why));
    if out.is_file() {
        return refuse(format!("{} is a file, not a folder", out.display()));
    }
    if let Some(f) = out.ancestors().skip(1).find(|a| a.is_file()) {
        return refuse(format!(
            "{} lies under {}, which is a file, not a folder",
            out.display(),
            f.display()
        ));
    }
    let canon = canonical(out);
    let fresh_folder = "name a folder of the run's own, such as runs/NAME";
    if canon.parent().is_none() {
        return refuse(format!(
            "{} is the root folder: a run writes and removes its files in output_dir; {fresh_folder}",
            out.display()
        ));
    }
    let home = std::env::var_os("HOME").map(|h| canonical(Path::new(&h)));
    if home.as_deref() == Some(canon.as_path()) {
        return refuse(format!(
            "{} is the home folder: a run writes and removes its files in output_dir; {fresh_folder}",
            out.display()
        ));
    }
    if canon.join(".git").exists() {
        return refuse(format!(
            "{} is the root of a repository (it holds .git): a run writes and removes its files \
             in output_dir; {fresh_folder}",
            out.display()
        ));
    }
    Ok(())
}

/// `p` with symbolic links and `..` resolved as far as it exists (the rest appended as is).
fn canonical(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    for a in abs.ancestors() {
        if let Ok(c) = a.canonicalize() {
            return c.join(abs.strip_prefix(a).unwrap_or(Path::new("")));
        }
    }
    abs
}

/// A file the run reads, and what names it in the config.
#[derive(Debug, Clone)]
pub struct Input {
    /// The config key (`teachers[0].weights`), or `the config` / `base` for the config's files.
    pub key: String,
    pub path: PathBuf,
}

/// The local files and folders a run reads: its config and every file of its `base` chain,
/// teachers', backbone and `kdet online`'s student weights, annotation files, image folders,
/// the synthetic data cache.
pub fn inputs(cfg: &LoadedConfig) -> Vec<Input> {
    let mut v: Vec<Input> = config_chain(&cfg.path)
        .into_iter()
        .enumerate()
        .map(|(i, path)| Input {
            key: if i == 0 { "the config" } else { "its base" }.into(),
            path,
        })
        .collect();
    let c = &cfg.config;
    let mut weights = vec![(
        "model.backbone.weights".to_string(),
        c.model.backbone().weights.clone(),
    )];
    for (path, m) in c.method.iter().flat_map(|m| m.extra_networks()) {
        weights.push((
            format!("{path}.backbone.weights"),
            m.backbone().weights.clone(),
        ));
    }
    for (i, t) in c.teachers.iter().enumerate() {
        weights.push((format!("teachers[{i}].weights"), Some(t.weights.clone())));
    }
    if let Some(o) = &c.online {
        weights.push((
            "online.student_weights".to_string(),
            o.student_weights.clone(),
        ));
    }
    for (key, w) in weights {
        let Some(w) = w.filter(|w| !w.is_empty() && !crate::hub::is_hub(w)) else {
            continue;
        };
        let path = cfg.resolve(&key, Path::new(&w));
        // A teacher without a `model` section is described by its sidecar (`model.json`
        // beside it, perhaps): an input too.
        let sidecar = crate::models::sidecar::Sidecar::find(&path).ok().flatten();
        v.push(Input {
            key: key.clone(),
            path,
        });
        if let Some(s) = sidecar {
            v.push(Input {
                key: format!("the sidecar of {key}"),
                path: s.file,
            });
        }
    }
    let mut add = |key: String, p: &Path| {
        let path = cfg.resolve(&key, p);
        v.push(Input { key, path });
    };
    let d = &c.data;
    for (name, split) in [("train", &d.train), ("val", &d.val)] {
        if let Some(s) = split {
            add(format!("data.{name}.annotations"), &s.annotations);
            add(format!("data.{name}.images"), &s.images);
        }
    }
    if let Some(f) = &d.folders {
        add("data.folders.train".into(), &f.train);
        for (k, p) in [("val", &f.val), ("unlabeled", &f.unlabeled)] {
            if let Some(p) = p {
                add(format!("data.folders.{k}"), p);
            }
        }
    }
    if let Some(s) = &d.synthetic {
        add("data.synthetic.cache_dir".into(), &s.cache_dir);
    }
    v
}

/// The config file and the files of its `base` chain, in that order (the chain was checked
/// when the config loaded; a link that does not resolve now ends it).
fn config_chain(path: &Path) -> Vec<PathBuf> {
    let mut chain = vec![path.to_path_buf()];
    while chain.len() < 64 {
        let last = chain.last().expect("not empty");
        let Some(base) = std::fs::read(last)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("base")?.as_str().map(str::to_string))
        else {
            break;
        };
        let next = last.parent().unwrap_or(Path::new(".")).join(base);
        if chain.iter().any(|p| same_file(p, &next)) {
            break;
        }
        chain.push(next);
    }
    chain
}

/// Claim `out` (created, canonical) for a run that writes `files` (see [`run_files`]):
/// refuse when one of them would be an input of the run, or is there without proof that kdet
/// wrote it; write the manifest; and when the run starts from iteration 0 (`!resume`), remove
/// the previous run's files. Returns the files removed.
pub fn claim(
    cfg: &LoadedConfig,
    out: &Path,
    files: &[String],
    resume: bool,
) -> Result<Vec<PathBuf>> {
    let owned = proven_files(out)?;
    check_inputs(cfg, out, files.iter().chain(&owned), &inputs(cfg))?;
    let foreign: Vec<&str> = files
        .iter()
        .filter(|f| !owned.contains(*f) && out.join(f).symlink_metadata().is_ok())
        .map(String::as_str)
        .collect();
    if !foreign.is_empty() {
        return Err(cfg.error(
            "output_dir",
            format!(
                "{} holds {} but no {MANIFEST} (nor a valid checkpoint.safetensors) proving that \
                 a kdet run wrote them: kdet never removes or overwrites files it did not write. \
                 Name a new folder as output_dir (or move those files away)",
                out.display(),
                foreign.join(", ")
            ),
        ));
    }
    // The manifest first, listing every file the run may write, so that a kill anywhere after
    // it leaves the proof behind.
    let all: BTreeSet<String> = owned.iter().cloned().chain(files.iter().cloned()).collect();
    write_manifest(out, &all)?;
    if resume {
        return Ok(vec![]);
    }
    let mut removed = vec![];
    for name in &owned {
        let path = out.join(name);
        if path.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed.push(path);
        }
    }
    write_manifest(out, &files.iter().cloned().collect())?;
    Ok(removed)
}

/// Write `out`'s manifest unless it already lists exactly `files`.
fn write_manifest(out: &Path, files: &BTreeSet<String>) -> Result<()> {
    let m = Manifest::new("run", files.iter().cloned());
    match Manifest::read(out, MANIFEST) {
        Ok(Some(old)) if old.files == m.files => Ok(()),
        _ => m.write(out, MANIFEST),
    }
}

/// The files of `out` proven written by a kdet run: those its manifest lists; in a folder of a
/// kdet before manifests, the run files there when its checkpoint verifies, or its `config.json`
/// is a kdet config and `metrics.jsonl` a metrics log (a run killed before its first checkpoint).
fn proven_files(out: &Path) -> Result<BTreeSet<String>> {
    if let Some(m) = Manifest::read(out, MANIFEST)? {
        if m.kind != "run" {
            return Err(Error::msg(format!(
                "{}: the manifest of a `kdet {}` output, not of a run: name another output_dir",
                out.join(MANIFEST).display(),
                m.kind
            )));
        }
        return Ok(m.files);
    }
    let ckpt = out.join("checkpoint.safetensors");
    let legacy = (ckpt.is_file() && super::checkpoint::load(&ckpt).is_ok())
        || (is_kdet_config(&out.join("config.json")) && is_metrics_log(&out.join("metrics.jsonl")));
    if !legacy {
        return Ok(BTreeSet::new());
    }
    Ok(entries(out)?
        .into_iter()
        .filter(|(p, name)| is_output(name) && p.is_file())
        .map(|(_, name)| name)
        .collect())
}

fn is_kdet_config(p: &Path) -> bool {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::config::Config>(&b).ok())
        .is_some()
}

fn is_metrics_log(p: &Path) -> bool {
    std::fs::read_to_string(p).is_ok_and(|t| {
        t.lines().next().is_some_and(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v.get("iter").is_some_and(Value::is_u64))
        })
    })
}

/// Refuse when a file the run writes or removes in `out` is one of its `inputs` (a teacher
/// distilled from an earlier run into the same folder; a config named `config.json` there),
/// or `out` is an input folder itself.
fn check_inputs<'a>(
    cfg: &LoadedConfig,
    out: &Path,
    files: impl Iterator<Item = &'a String>,
    inputs: &[Input],
) -> Result<()> {
    let files: BTreeSet<&String> = files.collect();
    for input in inputs {
        if input.path.is_dir() && same_file(&input.path, out) {
            return Err(cfg.error(
                "output_dir",
                format!(
                    "{} is {} ({}): a run's files must not mix with its inputs; name another \
                     output_dir",
                    out.display(),
                    input.key,
                    input.path.display()
                ),
            ));
        }
        if let Some(name) = files.iter().find(|f| same_file(&out.join(f), &input.path)) {
            return Err(cfg.error(
                "output_dir",
                format!(
                    "{} is {} ({}), and this run writes (or removes) {name} in output_dir {}: \
                     kdet never replaces an input of its run. Name another output_dir, or move \
                     the file out of it",
                    out.join(name).display(),
                    input.key,
                    input.path.display(),
                    out.display()
                ),
            ));
        }
    }
    Ok(())
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
        // Output names without a manifest: refused, nothing removed.
        let cfg = crate::config::from_str("c.json", "{}").unwrap();
        let files = run_files(&["net1", "net2"]);
        let e = claim(&cfg, d.path(), &files, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.json: output_dir: ")
                && e.contains(
                    "holds model.safetensors, eval.json, loss.png, net1.json, net2.safetensors"
                )
                && e.contains("no kdet-run.json"),
            "{e}"
        );
        assert!(d.path().join("eval.json").exists());
        // Listed in a manifest: proven, removed; what it does not list stays.
        let listed = files
            .iter()
            .filter(|f| *f != "net1_detections.json")
            .cloned();
        Manifest::new("run", listed)
            .write(d.path(), MANIFEST)
            .unwrap();
        std::fs::write(d.path().join("net1_detections.json"), b"x").unwrap();
        let e = claim(&cfg, d.path(), &files, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds net1_detections.json but"), "{e}");
        std::fs::remove_file(d.path().join("net1_detections.json")).unwrap();
        let out = claim(&cfg, d.path(), &files, false).unwrap();
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
                "net2.safetensors"
            ]
        );
        let m = Manifest::read(d.path(), MANIFEST).unwrap().unwrap();
        assert_eq!(m.files, files.iter().cloned().collect());
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            ".notes.txt.1.tmp",
            &live,
            MANIFEST,
            "my.json",
            "netx.json",
            "notes.txt",
        ];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn inputs_are_never_written_or_removed() {
        let d = tempfile::tempdir().unwrap();
        let cfg = crate::config::from_str("c.json", "{}").unwrap();
        let teacher = d.path().join("model.safetensors");
        std::fs::write(&teacher, b"x").unwrap();
        let inputs = [Input {
            key: "teachers[0].weights".into(),
            path: teacher.clone(),
        }];
        let files = run_files(&["model"]);
        let e = check_inputs(&cfg, d.path(), files.iter(), &inputs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.json: output_dir: ")
                && e.contains("model.safetensors is teachers[0].weights")
                && e.contains("never replaces an input"),
            "{e}"
        );
        let e = check_inputs(
            &cfg,
            d.path(),
            files.iter(),
            &[Input {
                key: "data.train.images".into(),
                path: d.path().to_path_buf(),
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is data.train.images"), "{e}");
        assert!(teacher.is_file());
    }

    #[test]
    fn output_dirs_that_are_no_runs_are_refused() {
        let cfg = crate::config::from_str("c.json", "{}").unwrap();
        let e = |p: &Path| check_output_dir(&cfg, p).unwrap_err().to_string();
        assert!(e(Path::new("/")).contains("c.json: output_dir: / is the root folder"));
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        if repo.join(".git").exists() {
            assert!(e(repo).contains("is the root of a repository"));
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(e(&f).contains("is a file, not a folder"));
        let under = e(&f.join("run"));
        assert!(
            under.contains("c.json: output_dir: ")
                && under.contains("which is a file, not a folder"),
            "{under}"
        );
        check_output_dir(&cfg, &d.path().join("runs/a")).unwrap();
    }
}
