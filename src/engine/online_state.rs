//! What a stream's checkpoint holds besides the student and its optimizer, and what `kdet online
//! --resume` checks before continuing: the stream's [`Progress`] (frames done, the stride
//! policy, the update counter that seeds each update's RNG, the detections and measurements so
//! far) as one JSON string of the checkpoint (`meta.s.online.state`), and the stream's identity
//! — the config (`engine::resume`'s rules: what the run *is* may not change), the teacher's
//! weights (by SHA-256), the frame list and the flags that shape the outputs. The student, its
//! BatchNorm statistics and the optimizer's momentum are the checkpoint's tensors, loaded as the
//! training loop's `--resume` loads them (`trainer::load_checkpoint`). The updates draw from an
//! RNG seeded by (seed, update count) (`trainer::update`), so no RNG state is stored: the count
//! is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::{self, FrozenInput};
use super::evaluator::ResultRecord;
use super::method::Method;
use super::online::StridePolicy;
use super::optim::Optimizer;
use super::rundir::Change;
use crate::config::LoadedConfig;
use crate::error::{Error, Result};

/// Checkpoint string holding the stream's [`Progress`] (JSON).
const STATE_KEY: &str = "online.state";
/// Checkpoint string holding the frames' paths (JSON list, canonical).
const FRAMES_KEY: &str = "online.frames";
/// Checkpoint strings of the flags that shape the outputs.
const TRUTH_KEY: &str = "online.truth";
const EVERY_FRAME_KEY: &str = "online.teacher_every_frame";

/// A stream's state after its last frame done: everything the rest of the stream and its
/// outputs depend on, besides the networks and the optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Progress {
    /// The stride policy as it stands.
    pub policy: StridePolicy,
    /// The next key frame (0-based).
    pub next_key: usize,
    /// Updates so far: the iteration each update's RNG is seeded from.
    pub updates: u64,
    pub teacher_calls: usize,
    /// Agreement before updating, per key frame.
    pub agreements: Vec<f64>,
    /// The stream's wall time so far (the reference teacher's excluded).
    pub seconds: f64,
    /// The teacher's time and the frames it was timed on.
    pub teacher_seconds: f64,
    pub teacher_timed: usize,
    /// The stream's seconds in the teacher on key frames, and in updates.
    pub key_teacher_seconds: f64,
    pub update_seconds: f64,
    /// The student's detections on every frame done, and the reference teacher's.
    pub student_recs: Vec<ResultRecord>,
    pub teacher_recs: Vec<ResultRecord>,
    /// (frame, stride, agreement on key frames) per frame done, for the plot.
    pub trace: Vec<(usize, usize, Option<f64>)>,
    /// Frames skipped as unreadable (1-based).
    #[serde(default)]
    pub skipped: Vec<usize>,
}

impl Progress {
    /// A stream at its start: the first frame is a key frame.
    pub fn new(policy: StridePolicy) -> Self {
        Self {
            policy,
            next_key: 0,
            updates: 0,
            teacher_calls: 0,
            agreements: vec![],
            seconds: 0.0,
            teacher_seconds: 0.0,
            teacher_timed: 0,
            key_teacher_seconds: 0.0,
            update_seconds: 0.0,
            student_recs: vec![],
            teacher_recs: vec![],
            trace: vec![],
            skipped: vec![],
        }
    }

    /// Frames done.
    pub fn frames(&self) -> usize {
        self.trace.len()
    }

    /// The checkpoint strings: the stream's identity and this progress.
    pub fn strings(&self, identity: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut s = identity.clone();
        let state = serde_json::to_string(self).expect("progress serialises");
        s.insert(STATE_KEY.into(), state);
        s
    }
}

/// The stream's identity as checkpoint strings: its config (as `kdet train` records it), the
/// teacher's weights, the frames (canonical paths, in order), `--truth` (it gives the frames'
/// image ids) and `--teacher-every-frame`.
pub(super) fn identity(
    cfg: &LoadedConfig,
    teacher: &FrozenInput,
    frames: &[PathBuf],
    truth: Option<&Path>,
    every_frame: bool,
) -> BTreeMap<String, String> {
    let canonical = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let mut s = checkpoint::frozen_strings(std::slice::from_ref(teacher));
    s.insert(
        super::resume::CONFIG_KEY.into(),
        serde_json::to_string(&cfg.config).expect("config serialises"),
    );
    let list: Vec<String> = frames.iter().map(|f| canonical(f)).collect();
    s.insert(
        FRAMES_KEY.into(),
        serde_json::to_string(&list).expect("strings serialise"),
    );
    s.insert(TRUTH_KEY.into(), truth.map(canonical).unwrap_or_default());
    s.insert(EVERY_FRAME_KEY.into(), every_frame.to_string());
    s
}

/// `--resume`: the checkpoint's settings, teacher, frames and flags checked against the
/// stream's now (`identity`), its tensors loaded into the student and the optimizer. Returns
/// the stream's progress and the accepted changes of settings.
pub(super) fn restore(
    cfg: &LoadedConfig,
    ckpt_path: &Path,
    identity: &BTreeMap<String, String>,
    method: &dyn Method,
    optimizers: &mut [Optimizer],
    teacher: &FrozenInput,
) -> Result<(Progress, Vec<Change>)> {
    let ck = checkpoint::load(ckpt_path)?;
    let text = ck.strings.get(STATE_KEY).cloned().ok_or_else(|| {
        Error::msg(format!(
            "{}: holds no stream state (a `kdet train` checkpoint, or one of a kdet before \
             `kdet online --resume`): start the stream over with --fresh",
            ckpt_path.display()
        ))
    })?;
    let run_dir = ckpt_path.parent().unwrap_or(Path::new("."));
    let changes = super::resume::check_settings(cfg, ckpt_path, &ck.strings, identity, run_dir)?;
    checkpoint::check_frozen_inputs(ckpt_path, &ck.strings, std::slice::from_ref(teacher))?;
    check_stream(ckpt_path, &ck.strings, identity)?;
    let progress: Progress = serde_json::from_str(&text).map_err(|e| {
        Error::msg(format!(
            "{}: the stream state is unreadable ({e}); start over with --fresh",
            ckpt_path.display()
        ))
    })?;
    super::trainer::load_checkpoint(ckpt_path, ck, method, optimizers)?;
    eprintln!(
        "resuming the stream from {} after frame {}",
        ckpt_path.display(),
        progress.frames()
    );
    Ok((progress, changes))
}

/// Refuse a resume whose frames or output-shaping flags differ from the checkpoint's, naming
/// the first difference.
fn check_stream(
    ckpt: &Path,
    stored: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Result<()> {
    let refuse = |what: String| {
        Err(Error::msg(format!(
            "{}: cannot resume: {what}. A stream resumes with the frames and flags it started \
             with; give those, or start over with --fresh",
            ckpt.display()
        )))
    };
    let list = |m: &BTreeMap<String, String>| -> Vec<String> {
        m.get(FRAMES_KEY)
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default()
    };
    let (then, now_frames) = (list(stored), list(now));
    if let Some(i) = (0..then.len().min(now_frames.len())).find(|&i| then[i] != now_frames[i]) {
        return refuse(format!(
            "frame {} of the stream was {} and is now {}",
            i + 1,
            then[i],
            now_frames[i]
        ));
    }
    if then.len() != now_frames.len() {
        return refuse(format!(
            "the stream had {} frames and now has {}",
            then.len(),
            now_frames.len()
        ));
    }
    let get = |m: &BTreeMap<String, String>, k: &str| m.get(k).cloned().unwrap_or_default();
    let shown = |v: String| if v.is_empty() { "none".into() } else { v };
    let (t0, t1) = (get(stored, TRUTH_KEY), get(now, TRUTH_KEY));
    if t0 != t1 {
        return refuse(format!(
            "--truth was {} and is now {} (it gives the frames' image ids)",
            shown(t0),
            shown(t1)
        ));
    }
    let (e0, e1) = (get(stored, EVERY_FRAME_KEY), get(now, EVERY_FRAME_KEY));
    if e0 != e1 {
        let given = |v: &str| if v == "true" { "given" } else { "not given" };
        return refuse(format!(
            "--teacher-every-frame was {} and is now {}",
            given(&e0),
            given(&e1)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(frames: &[&str], truth: &str, every: bool) -> BTreeMap<String, String> {
        BTreeMap::from([
            (FRAMES_KEY.into(), serde_json::to_string(frames).unwrap()),
            (TRUTH_KEY.into(), truth.into()),
            (EVERY_FRAME_KEY.into(), every.to_string()),
        ])
    }

    #[test]
    fn a_different_stream_is_refused_naming_the_difference() {
        let ck = Path::new("run/checkpoint.safetensors");
        let then = ids(&["/v/a.png", "/v/b.png"], "/v/t.json", false);
        check_stream(ck, &then, &then.clone()).unwrap();
        let e = |now| check_stream(ck, &then, &now).unwrap_err().to_string();
        let m = e(ids(&["/v/a.png", "/w/b.png"], "/v/t.json", false));
        assert!(
            m.contains("run/checkpoint.safetensors: cannot resume: frame 2 of the stream was /v/b.png and is now /w/b.png")
                && m.contains("--fresh"),
            "{m}"
        );
        let m = e(ids(
            &["/v/a.png", "/v/b.png", "/v/c.png"],
            "/v/t.json",
            false,
        ));
        assert!(m.contains("the stream had 2 frames and now has 3"), "{m}");
        let m = e(ids(&["/v/a.png", "/v/b.png"], "", false));
        assert!(m.contains("--truth was /v/t.json and is now none"), "{m}");
        let m = e(ids(&["/v/a.png", "/v/b.png"], "/v/t.json", true));
        assert!(
            m.contains("--teacher-every-frame was not given and is now given"),
            "{m}"
        );
    }

    #[test]
    fn progress_round_trips_through_its_string_exactly() {
        let mut p = Progress::new(StridePolicy::new(2, 8));
        p.policy.next(true);
        p.updates = 7;
        p.agreements = vec![0.1 + 0.2, 1.0 / 3.0];
        p.student_recs = vec![ResultRecord {
            image_id: 3,
            category_id: 2,
            bbox: [0.1, 1.0 / 7.0, 12.345_678_9, 3e-9],
            score: 0.987_654_321_012_345_6,
        }];
        p.trace = vec![(1, 2, Some(0.5)), (2, 4, None)];
        let s = p.strings(&BTreeMap::new());
        let back: Progress = serde_json::from_str(&s[STATE_KEY]).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.frames(), 2);
    }
}
