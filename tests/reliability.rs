//! A run is never lost and never silently changed: `kill -9` anywhere (inside checkpoint and
//! metrics writes, between the last checkpoint and the last evaluation) then `--resume` gives
//! the uninterrupted run bit for bit; a full disk and a read-only folder stop with a clear error
//! and keep the last checkpoint; `--resume` refuses settings that would make it another run and
//! records those it accepts; `--fresh` and leftovers of killed writes leave only this run's
//! files; a corrupted checkpoint is detected. The faults are injected with `KDET_FAULT`
//! (docs/reliability.md) or from outside (signals, file-size limits, permissions).

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Output;
use std::time::Instant;

use common::{assert_same_run, command, config, fails, kdet, ok, records, set};
use serde_json::json;

/// Four iterations, a checkpoint and an evaluation every two, every iteration logged.
const SOLVER: &str = r#"{"iterations": 4, "batch_size": 2, "lr": 0.01, "warmup_iters": 1, "log_every": 1, "checkpoint_every": 2, "eval_every": 2, "schedule": {"type": "constant"}}"#;

/// Run `kdet train` with `KDET_FAULT=fault`.
fn train_with_fault(cfg: &str, extra: &[&str], fault: &str) -> Output {
    let mut args = vec!["train", cfg];
    args.extend_from_slice(extra);
    command(&args).env("KDET_FAULT", fault).output().unwrap()
}

fn killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The uninterrupted run of [`SOLVER`], trained once per test process for the tests of this file
/// that compare with it, in cargo's scratch folder for tests (`target/tmp`, so nothing stays in
/// the system's temporary folder).
fn reference() -> &'static Path {
    static RUN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-reference");
        std::fs::create_dir_all(&d).unwrap();
        let a = config(&d, "a", SOLVER);
        ok(&kdet(&["train", &a, "--fresh"]));
        d.join("a")
    })
}

/// Train with `KDET_FAULT=fault` until killed, resume, and compare with the uninterrupted run;
/// the resume says `says`, and no temporary file is left.
fn killed_then_resumed(fault: &str, says: &str) {
    let d = tempfile::tempdir().unwrap();
    let b = config(d.path(), "b", SOLVER);
    let o = train_with_fault(&b, &[], fault);
    assert!(killed(&o), "{fault}: not killed: {}", text(&o));
    let r = ok(&kdet(&["train", &b, "--resume"]));
    assert!(r.contains(says), "{fault}: {r}");
    let run = d.path().join("b");
    assert_same_run(reference(), &run);
    let left: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{fault}: {left:?}");
}

/// Half of the 4th metrics record written (iteration 3's), then killed.
#[test]
fn kill_inside_a_metrics_record_resumes_bit_exact() {
    killed_then_resumed("metrics.torn:4", "incomplete record");
}

/// Killed with the second checkpoint half written: its temporary file stays behind until the
/// resume removes it.
#[test]
fn kill_inside_a_checkpoint_write_resumes_bit_exact() {
    killed_then_resumed("torn:checkpoint.safetensors:2", "removed 1 temporary file");
}

/// Killed after the first checkpoint, before the evaluation due there: the resume does it.
#[test]
fn kill_before_an_evaluation_resumes_bit_exact() {
    killed_then_resumed("eval:1", "resuming from");
}

/// Killed after the final checkpoint, before the final evaluation: the resume completes the
/// `val/*` record, eval.json, detections.json and the model.
#[test]
fn kill_before_the_final_evaluation_resumes_bit_exact() {
    killed_then_resumed("eval:2", "resuming from");
}

/// `kill -9` at random moments of a run (checkpoints every iteration, so many land inside a
/// checkpoint or metrics write), each time resumed; the result is the uninterrupted run.
/// Each kill waits for the run to reach a target iteration (read from its metrics, so a loaded
/// machine cannot make it miss the run) and then a pseudo-random part of an iteration.
/// tools/fault_kill.sh does the same many more times.
#[test]
fn random_kills_then_resume_match_the_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let solver = r#"{"iterations": 6, "batch_size": 2, "lr": 0.01, "warmup_iters": 1, "log_every": 1, "checkpoint_every": 1, "eval_every": 3, "schedule": {"type": "constant"}}"#;
    let a = config(d.path(), "a", solver);
    // The first run also generates the dataset: time the second, for a part of an iteration.
    ok(&kdet(&["train", &a]));
    let t0 = Instant::now();
    ok(&kdet(&["train", &a, "--fresh"]));
    let iteration = t0.elapsed() / 6;
    let b = config(d.path(), "b", solver);
    let run = d.path().join("b");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    for target in [1, 3, 5] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let after = iteration.mul_f64((state % 1000) as f64 / 1000.0);
        let resume = run.join("checkpoint.safetensors").exists();
        let args: Vec<&str> = if resume {
            vec!["train", &b, "--resume"]
        } else {
            vec!["train", &b, "--fresh"]
        };
        let mut child = command(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while last_logged_iteration(&run) < target
            && child.try_wait().unwrap().is_none()
            && t0.elapsed().as_secs() < 300
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(after);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 2, "only {kills} of 3 kills landed in a run");
    let args: Vec<&str> = if run.join("checkpoint.safetensors").exists() {
        vec!["train", &b, "--resume"]
    } else {
        vec!["train", &b, "--fresh"]
    };
    ok(&kdet(&args));
    assert_same_run(&d.path().join("a"), &run);
}

/// The highest `iter` in the run's metrics.jsonl (0 before any; a torn last line is skipped).
fn last_logged_iteration(run: &Path) -> u64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("iter").and_then(|i| i.as_u64()))
        .max()
        .unwrap_or(0)
}

/// Ctrl-C (SIGINT) or SIGTERM: the step finishes, a checkpoint is written, the run says how to
/// resume and exits as the signal would (128 + signal); the resumed run is the uninterrupted
/// one bit for bit.
#[test]
fn ctrl_c_and_sigterm_checkpoint_then_resume_bit_exact() {
    use std::os::unix::process::ExitStatusExt;
    for (fault, code, says) in [
        (
            "sigint:1",
            130,
            "interrupted by Ctrl-C (SIGINT) at iteration 1 of 4",
        ),
        (
            "sigterm:3",
            143,
            "interrupted by SIGTERM at iteration 3 of 4",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let b = config(d.path(), "b", SOLVER);
        let o = train_with_fault(&b, &[], fault);
        assert_eq!(o.status.code(), Some(code), "{fault}: {}", text(&o));
        assert_eq!(o.status.signal(), None, "{fault}");
        let t = text(&o);
        assert!(t.contains(says) && t.contains("--resume"), "{fault}: {t}");
        let run = d.path().join("b");
        let at = fault[fault.len() - 1..].parse::<u64>().unwrap();
        let r = ok(&kdet(&["train", &b, "--resume"]));
        assert!(r.contains(&format!("resumed at {at}, now at 4")), "{r}");
        assert_same_run(reference(), &run);
    }
}

/// A second Ctrl-C exits at once, without waiting for the step and its checkpoint.
#[test]
fn second_ctrl_c_exits_at_once() {
    let d = tempfile::tempdir().unwrap();
    let solver = r#"{"iterations": 100000, "batch_size": 2, "lr": 0.01, "warmup_iters": 1, "log_every": 1, "schedule": {"type": "constant"}}"#;
    let b = config(d.path(), "b", solver);
    // Steps of about a second at 800 px, so the second signal lands inside one.
    set(
        &b,
        "model",
        json!({"input": {"min_size": 800, "max_size": 800}}),
    );
    let child = command(&["train", &b])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = d.path().join("b/metrics.jsonl");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.lines().count() >= 2) {
        assert!(t0.elapsed().as_secs() < 120, "the run never logged a step");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id() as i32;
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    // Apart, so the receiving thread sees two signals rather than one pending.
    std::thread::sleep(std::time::Duration::from_millis(100));
    unsafe { libc::kill(pid, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("Ctrl-C (SIGINT) again: exiting now"), "{t}");
}

/// Limit the size of any file the child writes (a full disk, portably and without root):
/// writes past `bytes` fail with EFBIG instead of killing the process.
fn with_file_size_limit(c: &mut std::process::Command, bytes: u64) {
    // SAFETY: setrlimit and signal are async-signal-safe and touch only the child.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn disk_full_at_the_first_and_a_later_checkpoint_keeps_the_last_one() {
    let d = tempfile::tempdir().unwrap();
    let ckpt_size = std::fs::metadata(reference().join("checkpoint.safetensors"))
        .unwrap()
        .len();
    let limit = ckpt_size / 2;
    let b = config(d.path(), "b", SOLVER);
    let run = d.path().join("b");
    // The first checkpoint does not fit: the run stops naming the file, nothing half-written
    // stays, and there is no checkpoint to resume.
    let mut c = command(&["train", &b]);
    with_file_size_limit(&mut c, limit);
    let e = fails(&c.output().unwrap());
    assert!(
        e.contains("checkpoint.safetensors") && e.contains("File too large"),
        "{e}"
    );
    assert!(!run.join("checkpoint.safetensors").exists());
    // A later checkpoint does not fit: the earlier one stays intact and resumable.
    ok(&kdet(&["train", &b, "--fresh", "--stop-after", "2"]));
    let before = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let mut c = command(&["train", &b, "--resume"]);
    with_file_size_limit(&mut c, limit);
    let e = fails(&c.output().unwrap());
    assert!(e.contains("File too large"), "{e}");
    assert_eq!(
        std::fs::read(run.join("checkpoint.safetensors")).unwrap(),
        before
    );
    assert!(!std::fs::read_dir(&run).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
    ok(&kdet(&["train", &b, "--resume"]));
    assert_same_run(reference(), &run);
}

#[test]
fn read_only_output_folder_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let a = config(d.path(), "a", SOLVER);
    ok(&kdet(&["train", &a, "--stop-after", "2"]));
    let run = d.path().join("a");
    let mode = |p: &Path, m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode(d.path(), 0o755);
    mode(&run, 0o555);
    // Root ignores permissions: run the child as `nobody` then.
    let as_user = |c: &mut std::process::Command| {
        // SAFETY: getuid is always safe to call.
        if unsafe { libc::geteuid() } == 0 {
            c.uid(65534).gid(65534);
        }
    };
    let mut c = command(&["train", &a, "--resume"]);
    as_user(&mut c);
    let e = fails(&c.output().unwrap());
    assert!(
        e.contains("Permission denied") && e.contains(&*run.to_string_lossy()),
        "{e}"
    );
    assert_eq!(e.matches("os error 13").count(), 1, "{e}");
    assert!(!e.contains("panicked"), "{e}");
    mode(&run, 0o755);
    ok(&kdet(&["train", &a, "--resume"]));
}

#[test]
fn nan_loss_stops_naming_the_step_and_what_is_kept() {
    let d = tempfile::tempdir().unwrap();
    let solver = r#"{"iterations": 4, "batch_size": 2, "lr": 0.01, "warmup_iters": 1, "log_every": 1, "checkpoint_every": 1}"#;
    let c = config(d.path(), "n", solver);
    // At the first step no checkpoint exists, and the message does not claim one.
    let o = train_with_fault(&c, &[], "nan-loss:1");
    let e = fails(&o);
    assert!(
        e.contains("step 1: loss term `") && e.contains("no checkpoint had been written yet"),
        "{e}"
    );
    assert!(!e.contains("is kept"), "{e}");
    // At the third, the second iteration's checkpoint is kept and resumes to a full run.
    let o = train_with_fault(&c, &["--fresh"], "nan-loss:3");
    let e = fails(&o);
    assert!(
        e.contains("step 3: loss term `")
            && e.contains("is NaN")
            && e.contains("the last good checkpoint (iteration 2) is kept"),
        "{e}"
    );
    let r = ok(&kdet(&["train", &c, "--resume"]));
    assert!(r.contains("resumed at 2, now at 4"), "{r}");
}

#[test]
fn resume_refuses_a_shorter_run_than_its_checkpoint_and_completes_an_equal_one() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "r", SOLVER);
    ok(&kdet(&["train", &c, "--stop-after", "3"]));
    let run = d.path().join("r");
    let solver = |n: u64| {
        let mut s: serde_json::Value = serde_json::from_str(SOLVER).unwrap();
        s["iterations"] = json!(n);
        s
    };
    set(&c, "solver", solver(2));
    let e = fails(&kdet(&["train", &c, "--resume"]));
    assert!(
        e.contains("r.json: solver.iterations: is now 2 (it was 4), but")
            && e.contains("is already at iteration 3")
            && e.contains("at least 3"),
        "{e}"
    );
    assert!(!run.join("model.safetensors").exists());
    // Lowered to where the checkpoint is: the run is complete, so it ends with its model and
    // final evaluation (and says the length changed).
    set(&c, "solver", solver(3));
    let o = ok(&kdet(&["train", &c, "--resume"]));
    assert!(o.contains("solver.iterations: 4 -> 3"), "{o}");
    for f in ["model.safetensors", "eval.json", "detections.json"] {
        assert!(run.join(f).is_file(), "{f}: {o}");
    }
    assert!(records(&run)
        .iter()
        .any(|r| r["iter"] == 3 && r.get("val/AP").is_some()));
}

#[test]
fn resume_refuses_what_defines_the_run_and_records_what_it_accepts() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "r", SOLVER);
    ok(&kdet(&["train", &c, "--stop-after", "2"]));
    let run = d.path().join("r");
    let original = std::fs::read(run.join("config.json")).unwrap();
    let solver: serde_json::Value = serde_json::from_str(SOLVER).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut s = solver.clone();
        s[k] = v;
        s
    };
    // (top-level key, value, what the refusal names)
    let refused = [
        ("seed", json!(7), "seed was 0 and is now 7"),
        (
            "solver",
            with("batch_size", json!(4)),
            "solver.batch_size was 2 and is now 4",
        ),
        (
            "solver",
            with("optimizer", json!("adamw")),
            "solver.optimizer was \"sgd\" and is now \"adamw\"",
        ),
    ];
    for (k, v, says) in refused {
        set(&c, k, v);
        let e = fails(&kdet(&["train", &c, "--resume"]));
        assert!(e.contains(says) && e.contains("--fresh"), "{e}");
        assert!(!e.contains("momentum_buffer"), "{e}");
        set(&c, "seed", json!(0));
        set(&c, "solver", solver.clone());
    }
    // Other training data: refused by its contents.
    let mut data: serde_json::Value = serde_json::from_slice(&std::fs::read(&c).unwrap()).unwrap();
    let orig_data = data["data"].clone();
    data["data"]["synthetic"]["seed"] = json!(4);
    set(&c, "data", data["data"].clone());
    let e = fails(&kdet(&["train", &c, "--resume"]));
    assert!(e.contains("data.synthetic"), "{e}");
    set(&c, "data", orig_data);
    // A lower learning rate is accepted, said and recorded; config.json stays the original.
    set(&c, "solver", with("lr", json!(0.005)));
    let o = ok(&kdet(&["train", &c, "--resume"]));
    assert!(o.contains("solver.lr: 0.01 -> 0.005"), "{o}");
    let rec = records(&run)
        .into_iter()
        .find(|r| r["event"] == "resume")
        .unwrap();
    assert_eq!(rec["iter"], 2);
    assert_eq!(
        rec["changed"]["solver.lr"],
        json!({"from": 0.01, "to": 0.005})
    );
    let hist: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run.join("config_history.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(hist["iter"], 2);
    assert_eq!(hist["config"]["solver"]["lr"], 0.005);
    assert_eq!(std::fs::read(run.join("config.json")).unwrap(), original);
}

#[test]
fn fresh_and_resume_clean_only_what_kdet_wrote() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "f", SOLVER);
    ok(&kdet(&["train", &c]));
    let run = d.path().join("f");
    std::fs::write(run.join("notes.txt"), "mine").unwrap();
    std::fs::write(run.join(".checkpoint.safetensors.999999999.tmp"), "x").unwrap();
    let o = ok(&kdet(&["train", &c, "--fresh", "--stop-after", "1"]));
    assert!(
        o.contains("removed 1 temporary file") && o.contains("removed the previous run's files"),
        "{o}"
    );
    // (loss.png and lr.png are drawn again, from the new run's metrics.)
    for f in [
        "model.safetensors",
        "eval.json",
        "detections.json",
        "ap.png",
    ] {
        assert!(
            !run.join(f).exists(),
            "{f} of the previous run is still there"
        );
    }
    assert!(run.join("notes.txt").is_file());
    assert!(!run.join(".checkpoint.safetensors.999999999.tmp").exists());
    assert_eq!(records(&run).len(), 1, "the metrics start over");
}

#[test]
fn a_corrupted_checkpoint_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let c = config(d.path(), "k", SOLVER);
    ok(&kdet(&["train", &c, "--stop-after", "2"]));
    let p = d.path().join("k/checkpoint.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    // A byte in the middle of the tensor data (past the JSON header).
    let n = bytes.len();
    bytes[n - n / 3] ^= 0x10;
    std::fs::write(&p, &bytes).unwrap();
    let e = fails(&kdet(&["train", &c, "--resume"]));
    assert!(
        e.contains("corrupted checkpoint") && e.contains("checkpoint.safetensors"),
        "{e}"
    );
    let out = d.path().join("x.safetensors");
    let e = fails(&kdet(&[
        "export",
        "--config",
        &c,
        "--weights",
        p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(e.contains("corrupted checkpoint"), "{e}");
}

/// Every file of `dir` with its contents, to show a refused command changed nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_run_never_removes_or_overwrites_files_it_did_not_write() {
    let d = tempfile::tempdir().unwrap();
    // The user's folder: their config is called config.json and writes beside itself.
    let c = config(d.path(), "config", SOLVER);
    set(&c, "output_dir", json!("."));
    std::fs::write(d.path().join("eval.json"), "mine").unwrap();
    std::fs::write(d.path().join("detections.json"), "mine too").unwrap();
    let before = snapshot(d.path());
    let e = fails(&kdet(&["train", &c, "--fresh"]));
    assert!(
        e.contains("config.json: output_dir: ")
            && e.contains("config.json is the config")
            && e.contains("never replaces an input"),
        "{e}"
    );
    assert_eq!(snapshot(d.path()), before);
    // Under another name, the config is safe, but the folder holds files named as a run's
    // outputs and no manifest proving kdet wrote them.
    let mine = d.path().join("mine.json");
    std::fs::copy(&c, &mine).unwrap();
    let before = snapshot(d.path());
    let e = fails(&kdet(&["train", mine.to_str().unwrap(), "--fresh"]));
    assert!(
        e.contains("mine.json: output_dir: ")
            && e.contains("holds config.json, eval.json, detections.json but no kdet-run.json")
            && e.contains("Name a new folder"),
        "{e}"
    );
    assert_eq!(snapshot(d.path()), before);
    // Folders that are no run's: the root, a path under a file.
    set(&c, "output_dir", json!("/"));
    let e = fails(&kdet(&["train", &c]));
    assert!(e.contains("output_dir: / is the root folder"), "{e}");
    set(&c, "output_dir", json!("eval.json/run"));
    let e = fails(&kdet(&["train", &c]));
    assert!(
        e.contains("output_dir: ") && e.contains("which is a file, not a folder"),
        "{e}"
    );
    assert!(!e.contains("Not a directory"), "{e}");
}

#[test]
fn a_teacher_inside_output_dir_is_never_replaced() {
    let d = tempfile::tempdir().unwrap();
    let t = config(d.path(), "t", SOLVER);
    ok(&kdet(&["train", &t]));
    let run = d.path().join("t");
    assert!(run.join("kdet-run.json").is_file());
    // A student distilled from that run into the same folder.
    let s = config(d.path(), "s", SOLVER);
    set(&s, "output_dir", json!(run));
    set(
        &s,
        "teachers",
        json!([{"weights": run.join("model.safetensors"), "check_images": 0}]),
    );
    set(&s, "distill", json!([{"type": "kd", "temperature": 2.0}]));
    let refused = |args: &[&str]| {
        let before = snapshot(&run);
        let e = fails(&kdet(args));
        assert!(
            e.contains("s.json: output_dir: ")
                && e.contains("model.safetensors is teachers[0].weights")
                && e.contains("never replaces an input"),
            "{e}"
        );
        assert_eq!(snapshot(&run), before);
    };
    refused(&["train", &s, "--fresh"]);
    // Without a checkpoint there, a run from iteration 0 would replace it just the same.
    std::fs::remove_file(run.join("checkpoint.safetensors")).unwrap();
    refused(&["train", &s]);
}
