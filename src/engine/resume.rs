//! What `--resume` may change. A checkpoint records the config it was trained with
//! (`meta.s.run.config`) and the SHA-256 of its training annotations; resuming compares the
//! config given now with that record, setting by setting:
//!
//! - settings that only steer how the rest of the run goes — learning rate and schedule,
//!   optimizer hyperparameters, run length, clipping, how often to log, evaluate and checkpoint,
//!   loader threads, the validation split, the device, where the files are — may change; each
//!   change is said on stderr and recorded (`metrics.jsonl` and `config_history.jsonl`);
//! - everything else — the model, seed, batch size, optimizer, training data and augmentation,
//!   teachers and distillation terms — is what the run *is*: a change is refused, naming the
//!   setting with its old and new value. A training annotation file with other contents is
//!   refused even under the same name.
//!
//! Checkpoints written before this record existed are compared with the run's `config.json`
//! when there is one, else not at all (said on stderr).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::rundir::Change;
use crate::config::{Config, LoadedConfig};
use crate::error::{Error, Result};

/// Checkpoint string holding the run's config (JSON).
pub const CONFIG_KEY: &str = "run.config";
/// Checkpoint string holding the SHA-256 of the training annotation file.
pub const TRAIN_SHA_KEY: &str = "run.train_annotations_sha256";

/// Settings that may change on `--resume` (JSON paths, `[]` for any index). A path names the
/// setting and everything below it.
const MAY_CHANGE: &[&str] = &[
    "solver.lr",
    "solver.momentum",
    "solver.dampening",
    "solver.nesterov",
    "solver.weight_decay",
    "solver.norm_weight_decay",
    "solver.bias_weight_decay",
    "solver.betas",
    "solver.eps",
    "solver.warmup_iters",
    "solver.warmup_factor",
    "solver.schedule",
    "solver.iterations",
    "solver.epochs",
    "solver.grad_clip",
    "solver.eval_every",
    "solver.checkpoint_every",
    "solver.checkpoint_minutes",
    "solver.log_every",
    "data.workers",
    "data.prefetch",
    "data.val",
    // Paths may move; the contents are checked by SHA-256 (annotations, teachers' weights).
    "data.train.annotations",
    "data.train.images",
    "data.synthetic.cache_dir",
    "teachers[].weights",
    "device",
    "output_dir",
    // Which of Co-LAD's networks evaluation and export describe: a choice about the outputs,
    // not the training.
    "method.evaluate",
    // A federated run's length and its learning rate's decay per round, like the solver's.
    "federated.rounds",
    "federated.lr_decay",
    // How often a stream (`kdet online`) checkpoints: when, not what, it computes.
    "online.checkpoint_every",
];

/// The checkpoint strings recording the run's identity: its config and training annotations.
pub fn run_strings(config: &Config, train_sha256: String) -> Result<BTreeMap<String, String>> {
    Ok(BTreeMap::from([
        (
            CONFIG_KEY.to_string(),
            serde_json::to_string(config).expect("config serialises"),
        ),
        (TRAIN_SHA_KEY.to_string(), train_sha256),
    ]))
}

/// Compare the run's settings now (`now`, from [`run_strings`]) with those the checkpoint
/// `ckpt` recorded (`stored`; for older checkpoints, `run_dir/config.json`). Refuses changes
/// to what the run is; returns the accepted changes.
pub fn check_settings(
    cfg: &LoadedConfig,
    ckpt: &Path,
    stored: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
    run_dir: &Path,
) -> Result<Vec<Change>> {
    if let (Some(then), Some(now_sha)) = (stored.get(TRAIN_SHA_KEY), now.get(TRAIN_SHA_KEY)) {
        if then != now_sha {
            let key = if cfg.config.data.synthetic.is_some() {
                "data.synthetic"
            } else {
                "data.train.annotations"
            };
            return Err(cfg.error(
                key,
                format!(
                    "the training annotations differ from those {} was trained on (SHA-256 \
                     {then} then, {now_sha} now): a run trains on one dataset; restore it, or \
                     start over with --fresh",
                    ckpt.display()
                ),
            ));
        }
    }
    let old = match stored.get(CONFIG_KEY) {
        Some(text) => serde_json::from_str::<Value>(text).map_err(|e| {
            Error::msg(format!(
                "{}: the recorded config is unreadable ({e})",
                ckpt.display()
            ))
        })?,
        None => {
            let p = run_dir.join("config.json");
            if !p.is_file() {
                eprintln!(
                    "note: {} was written by an older kdet and records no settings, and the \
                     run has no config.json: the settings are not compared",
                    ckpt.display()
                );
                return Ok(vec![]);
            }
            let bytes = crate::error::read_file(&p)?;
            crate::error::parse_json::<Value>(&p, &bytes).map_err(|e| {
                Error::msg(format!(
                    "{} is corrupt ({e}): it is the only record of the settings {} was trained \
                     with (an older kdet wrote that checkpoint), so they cannot be checked; \
                     restore the file, or start over with --fresh",
                    p.display(),
                    ckpt.display()
                ))
            })?
        }
    };
    let new = serde_json::to_value(&cfg.config).expect("config serialises");
    let mut diffs = vec![];
    match serde_json::from_value::<Config>(old.clone()) {
        // Through the schema, so both sides have every default (an older record lacks newer
        // settings).
        Ok(old) => {
            let mut old = serde_json::to_value(&old).expect("config serialises");
            legacy_defaults(&mut old, &new);
            diff("", &old, &new, &mut diffs);
        }
        // A record of another schema (a setting renamed or removed since): compare what both
        // have, as JSON; what only one side has is said, not compared.
        Err(e) => {
            let mut old = old;
            legacy_defaults(&mut old, &new);
            let mut skipped = vec![];
            diff_recorded("", &old, &new, &mut diffs, &mut skipped);
            eprintln!(
                "note: the settings {} records do not fit this kdet's config schema ({e}); \
                 compared as recorded{}",
                ckpt.display(),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", except settings only one side has: {}",
                        skipped.join(", ")
                    )
                }
            );
        }
    }
    let (ok, refused): (Vec<Change>, Vec<Change>) =
        diffs.into_iter().partition(|c| may_change(&c.path));
    if !refused.is_empty() {
        let list: Vec<String> = refused
            .iter()
            .map(|c| format!("{} was {} and is now {}", c.path, c.old, c.new))
            .collect();
        return Err(Error::msg(format!(
            "{}: cannot resume {} with these settings changed: {}. They define the run and stay \
             as the checkpoint has them: restore them, or start over with --fresh (or use \
             another output_dir)",
            cfg.path.display(),
            ckpt.display(),
            list.join("; ")
        )));
    }
    Ok(ok)
}

/// Settings whose default changed, so a record of the old default reads as the new value.
/// Co-LAD's `partner_seed` was null = `seed` before network 2 got a seed of its own: it only
/// initialises network 2, which the checkpoint's weights replace on resume, so a recorded null
/// accepts what the config gives now (null, or the old default written out).
fn legacy_defaults(old: &mut Value, new: &Value) {
    let is_colad = |v: &Value| v["method"]["type"] == "colad";
    if is_colad(old) && is_colad(new) && old["method"]["partner_seed"].is_null() {
        old["method"]["partner_seed"] = new["method"]["partner_seed"].clone();
    }
}

/// Like [`diff`] for a record of another schema: only paths both sides have are compared; the
/// others are listed in `skipped`.
fn diff_recorded(
    path: &str,
    old: &Value,
    new: &Value,
    out: &mut Vec<Change>,
    skipped: &mut Vec<String>,
) {
    let (Value::Object(a), Value::Object(b)) = (old, new) else {
        diff(path, old, new, out);
        return;
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let p = if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        };
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) => diff_recorded(&p, x, y, out, skipped),
            _ => skipped.push(p),
        }
    }
}

/// Whether the setting at `path` may change on `--resume`.
fn may_change(path: &str) -> bool {
    let general = generalise(path);
    MAY_CHANGE.iter().any(|p| {
        general == *p
            || general
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// `teachers[0].weights` → `teachers[].weights`.
fn generalise(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for ch in path.chars() {
        match ch {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            c if in_index && c.is_ascii_digit() => {}
            c => out.push(c),
        }
    }
    out
}

/// The leaf settings that differ between `old` and `new`, by JSON path (objects by key, arrays
/// by index; a value present on one side only is `null` on the other).
fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<Change>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                diff(&join(k), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (a, b) if a != b => out.push(Change {
            path: path.to_string(),
            old: a.clone(),
            new: b.clone(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diffs_by_leaf_path() {
        let mut d = vec![];
        diff(
            "",
            &json!({"solver": {"lr": 0.1, "batch_size": 2}, "teachers": [{"weights": "a"}], "seed": 0}),
            &json!({"solver": {"lr": 0.05, "batch_size": 2}, "teachers": [{"weights": "b"}], "seed": 1}),
            &mut d,
        );
        let paths: Vec<&str> = d.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["seed", "solver.lr", "teachers[0].weights"]);
        assert!(may_change("solver.lr") && may_change("teachers[0].weights"));
        assert!(may_change("solver.schedule.milestones[1]") && may_change("data.val.images"));
        assert!(!may_change("seed") && !may_change("solver.batch_size"));
        assert!(!may_change("solver.optimizer") && !may_change("teachers[0].model"));
        assert!(!may_change("solver.lrx") && !may_change("data.train"));
    }

    #[test]
    fn a_record_of_another_schema_compares_what_both_sides_have() {
        let (mut d, mut skipped) = (vec![], vec![]);
        diff_recorded(
            "",
            &json!({"seed": 0, "solver": {"lr": 0.1, "old_knob": 3}}),
            &json!({"seed": 1, "solver": {"lr": 0.1, "new_knob": 4}}),
            &mut d,
            &mut skipped,
        );
        let paths: Vec<&str> = d.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["seed"]);
        assert_eq!(skipped, ["solver.new_knob", "solver.old_knob"]);
    }

    #[test]
    fn colad_partner_seed_recorded_as_the_old_default_accepts_the_new_config() {
        let new = json!({"seed": 0, "method": {"type": "colad", "partner_seed": null}});
        let mut old = new.clone();
        legacy_defaults(&mut old, &new);
        assert_eq!(old, new);
        // The old default written out: accepted too.
        let explicit = json!({"seed": 0, "method": {"type": "colad", "partner_seed": 0}});
        let mut old = new.clone();
        legacy_defaults(&mut old, &explicit);
        assert_eq!(old, explicit);
        // A recorded seed stays what it was: a change is refused as before.
        let mut old = json!({"seed": 0, "method": {"type": "colad", "partner_seed": 5}});
        legacy_defaults(&mut old, &explicit);
        let mut d = vec![];
        diff("", &old, &explicit, &mut d);
        assert_eq!(d.len(), 1);
        assert!(!may_change(&d[0].path));
        assert!(may_change("method.evaluate"));
    }
}
