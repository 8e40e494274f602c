//! Several training seeds in one command (`kdet train --seeds`), resumable per seed after a kill,
//! with `--baseline` seed for seed, and `kdet compare` over the seed folders: each seed's Δ
//! paired by seed, the two-level interval, "n/a" rows, and the note when one run per arm
//! leaves training variance out.

mod common;

use std::path::Path;

use common::{assert_same_run, command, config, fails, kdet, losses, ok, set};
use serde_json::json;

/// Four iterations, a checkpoint and an evaluation every two.
const SOLVER: &str = r#"{"iterations": 4, "batch_size": 2, "lr": 0.01, "warmup_iters": 1, "log_every": 1, "checkpoint_every": 2, "eval_every": 2, "schedule": {"type": "constant"}}"#;

fn killed(o: &std::process::Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

fn seed_of(run: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    v["seed"].as_u64().unwrap()
}

#[test]
fn seeds_resume_after_a_kill_in_the_second_seed_and_compare_over_seeds() {
    let d = tempfile::tempdir().unwrap();
    let a = config(d.path(), "a", SOLVER);
    // Killed before the first evaluation of seed 1 (the third evaluation of the process:
    // seed 0 evaluates at iterations 2 and 4).
    let o = command(&["train", &a, "--seeds", "2"])
        .env("KDET_FAULT", "eval:3")
        .output()
        .unwrap();
    assert!(
        killed(&o),
        "not killed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (s0, s1) = (d.path().join("a/seed-0"), d.path().join("a/seed-1"));
    assert!(s0.join("eval.json").is_file() && !s1.join("eval.json").exists());
    // An unfinished seed folder is not compared.
    let e = fails(&kdet(&[
        "compare",
        d.path().join("a").to_str().unwrap(),
        &a,
    ]));
    assert!(e.contains("seed-1") && e.contains("not finished"), "{e}");

    let out = ok(&kdet(&["train", &a, "--seeds", "2", "--resume"]));
    assert!(out.contains("seed 0: finished, skipped"), "{out}");
    assert!(
        out.contains("resuming from") && out.contains("| AP |"),
        "{out}"
    );
    assert!(
        out.contains("| metric | mean | std | seed 0 | seed 1 |"),
        "{out}"
    );
    // Seed 1 is exactly a single run of the config with seed 1; seed 0 is another run.
    let r = config(d.path(), "ref", SOLVER);
    set(&r, "seed", json!(1));
    ok(&kdet(&["train", &r]));
    assert_same_run(&d.path().join("ref"), &s1);
    assert_eq!((seed_of(&s0), seed_of(&s1)), (0, 1));
    assert_ne!(losses(&s0), losses(&s1));

    // Another arm, and the comparison over the seed folders, paired by seed.
    let b = config(d.path(), "b", SOLVER);
    set(
        &b,
        "solver",
        json!({"iterations": 4, "batch_size": 2, "lr": 0.02, "warmup_iters": 1, "schedule": {"type": "constant"}}),
    );
    ok(&kdet(&["train", &b, "--seeds", "0,1"]));
    let dir = |n: &str| d.path().join(n).display().to_string();
    let md = ok(&kdet(&[
        "compare",
        &dir("a"),
        &dir("b"),
        "--bootstrap",
        "50",
    ]));
    assert!(
        md.contains("paired by seed") && md.contains("Δ per seed"),
        "{md}"
    );
    assert!(
        md.contains("two-level bootstrap over seeds and val images"),
        "{md}"
    );
    assert!(md.contains("| APl | n/a | n/a | n/a | n/a | n/a |"), "{md}");
    assert!(!md.contains("-1.000"), "{md}");
    // The same runs named one by one (seeds from each run's config.json).
    let arm = |n: &str| format!("{0}/seed-0,{0}/seed-1", dir(n));
    let by_list = kdet(&[
        "compare",
        "--arm",
        &arm("a"),
        "--arm",
        &arm("b"),
        "--bootstrap",
        "50",
        "--json",
    ]);
    ok(&by_list);
    let v: serde_json::Value = serde_json::from_slice(&by_list.stdout).unwrap();
    assert_eq!(v[0]["paired"], json!(true), "{v}");
    assert_eq!((&v[0]["a"], &v[0]["b"]), (&json!("a"), &json!("b")));
    assert_eq!(v[0]["rows"][0]["per_seed"].as_array().unwrap().len(), 2);
    // One run per arm: said in the table.
    let one = ok(&kdet(&[
        "compare",
        &format!("{}/seed-0", dir("a")),
        &format!("{}/seed-0", dir("b")),
    ]));
    assert!(
        one.contains("training variance (seeds) is NOT included"),
        "{one}"
    );
    assert!(one.contains("| APl | n/a |"), "{one}");
}

#[test]
fn seeds_with_baseline_train_both_arms_seed_for_seed() {
    let d = tempfile::tempdir().unwrap();
    let t = config(d.path(), "teacher", SOLVER);
    ok(&kdet(&["train", &t]));
    let c = config(d.path(), "student", SOLVER);
    let w = d.path().join("teacher/model.safetensors");
    set(&c, "teachers", json!([{"weights": w, "check_images": 0}]));
    set(&c, "distill", json!([{"type": "kd", "temperature": 2.0}]));
    let out = ok(&kdet(&["train", &c, "--seeds", "2", "--baseline"]));
    for k in 0..2 {
        for arm in ["student", "student_baseline"] {
            let run = d.path().join(format!("{arm}/seed-{k}"));
            assert!(run.join("eval.json").is_file(), "{arm} seed {k}: {out}");
            assert_eq!(seed_of(&run), k);
        }
    }
    assert!(out.contains("### student_baseline: 2 seeds"), "{out}");
    assert!(out.contains("### student vs student_baseline"), "{out}");
    assert!(out.contains("paired by seed"), "{out}");
}
