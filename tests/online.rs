//! `kdet online` end to end on a tiny synthetic video: the stream's outputs and policy, the AP
//! against the truth, folder safety, a clean Ctrl-C, `--resume` after a kill or a Ctrl-C giving
//! the uninterrupted stream, and located errors for bad input.

mod common;

use std::path::{Path, PathBuf};

use common::{fails, kdet, kdet_env, ok};

/// A tiny stream (8 frames of 64 px, a cut at frame 5) in `dir/video`.
fn video(dir: &Path) -> PathBuf {
    let v = dir.join("video");
    let out = v.display().to_string();
    let args = [
        "synth", "--task", "video", "--out", &out, "--frames", "8", "--size", "64",
    ];
    ok(&kdet(
        &[&args[..], &["--scene-length", "4", "--seed", "5"]].concat(),
    ));
    v
}

/// An online config in `dir` (the shipped synthetic teacher at its 128 px input, the demo's
/// narrow student from scratch at its own 64 px, strides 2..4, one update per key frame), with
/// `online` merged from `extra`.
fn config(dir: &Path, extra: serde_json::Value) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut online = serde_json::json!({"min_stride": 2, "max_stride": 4, "max_updates": 1});
    for (k, v) in extra.as_object().unwrap() {
        online[k] = v.clone();
    }
    let cfg = serde_json::json!({
        "base": root.join("configs/synth/online_frcnn.json"),
        "teachers": [{"weights": root.join("weights/synth_frcnn_r18w05_teacher.safetensors"),
                      "model": null}],
        "online": online,
        "output_dir": dir.join("run"),
    });
    let p = dir.join("online.json");
    std::fs::write(&p, cfg.to_string()).unwrap();
    p.display().to_string()
}

/// The stream's per-frame records without their measured times.
fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["time", "teacher_time", "update_time"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

#[test]
fn a_stream_is_predicted_learned_from_on_key_frames_and_scored() {
    let d = tempfile::tempdir().unwrap();
    let v = video(d.path());
    let cfg = config(
        d.path(),
        serde_json::json!({"student_weights": null, "draw": true}),
    );
    let (frames, truth) = (v.join("frames"), v.join("annotations.json"));
    let args = [
        "online",
        &cfg,
        frames.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ];
    let out = ok(&kdet(&[&args[..], &["--teacher-every-frame"]].concat()));
    assert!(out.contains("8 frames, teacher on"), "{out}");
    let run = d.path().join("run");
    let recs = records(&run);
    assert_eq!(recs.len(), 8, "one record per frame");
    // Frame 1 is a key frame; each next key frame lies `next_stride` frames on, the stride
    // within [2, 4]; an update happens only below the threshold.
    let keys: Vec<u64> = recs
        .iter()
        .filter(|r| r["key"] == true)
        .map(|r| r["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(keys[0], 1);
    for w in keys.windows(2) {
        let r = recs.iter().find(|r| r["frame"] == w[0]).unwrap();
        assert_eq!(w[1] - w[0], r["next_stride"].as_u64().unwrap(), "{r}");
        assert!((2..=4).contains(&(w[1] - w[0])));
        let before = r["agreement_before"].as_f64().unwrap();
        assert_eq!(
            r["updates"].as_u64().unwrap(),
            u64::from(before < 0.9),
            "{r}"
        );
    }
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("online.json")).unwrap()).unwrap();
    assert_eq!(s["teacher_calls"].as_u64().unwrap() as usize, keys.len());
    assert_eq!(s["frames"], 8);
    assert!(s["student_ap"].as_f64().unwrap() >= 0.0);
    // The shipped teacher detects the shapes of the stream it was not trained on.
    assert!(s["teacher_ap50"].as_f64().unwrap() > 0.3, "{s}");
    // The student's detections are COCO results on the truth's image ids; the frames drawn.
    let dets: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(run.join("detections.json")).unwrap()).unwrap();
    assert!(dets
        .iter()
        .all(|r| (1..=8).contains(&r["image_id"].as_u64().unwrap())));
    for f in [
        "frame_000001.png",
        "frame_000008.png",
        "model.safetensors",
        "checkpoint.safetensors",
        "stream.png",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // The same stream again into its own folder: the same run (seeded updates). Its checkpoint
    // is replaced only when asked (`kdet train`'s rule).
    let first = std::fs::read(run.join("detections.json")).unwrap();
    let first_teacher = std::fs::read(run.join("teacher_detections.json")).unwrap();
    let e = fails(&kdet(&args));
    assert!(
        e.contains("already holds a checkpoint") && e.contains("--resume"),
        "{e}"
    );
    ok(&kdet(&[&args[..], &["--fresh"]].concat()));
    assert_eq!(std::fs::read(run.join("detections.json")).unwrap(), first);
    assert!(
        !run.join("teacher_detections.json").exists(),
        "the earlier run's file is removed"
    );
    // A student at the teacher's input size (it shares the student's resized frame) or at its
    // own lower one (above): the teacher's detections are the same, bit for bit.
    let same = d.path().join("same");
    std::fs::create_dir(&same).unwrap();
    let cfg = config(&same, serde_json::json!({"student_weights": null}));
    let input = serde_json::json!({"min_size": 128, "max_size": 213});
    common::set(&cfg, "model", serde_json::json!({ "input": input }));
    let same_args = [&["online", cfg.as_str()][..], &args[2..]].concat();
    ok(&kdet(
        &[&same_args[..], &["--teacher-every-frame"]].concat(),
    ));
    assert_eq!(
        std::fs::read(same.join("run/teacher_detections.json")).unwrap(),
        first_teacher
    );
}

#[test]
fn folders_signals_and_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let v = video(d.path());
    let frames = v.join("frames");
    let f = frames.to_str().unwrap();
    // A folder holding a file of the user's under an output's name: refused, untouched.
    let cfg = config(d.path(), serde_json::json!({"student_weights": null}));
    let run = d.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("detections.json"), b"mine").unwrap();
    let e = fails(&kdet(&["online", &cfg, f]));
    assert!(
        e.contains("detections.json") && e.contains("did not write"),
        "{e}"
    );
    assert_eq!(std::fs::read(run.join("detections.json")).unwrap(), b"mine");
    std::fs::remove_dir_all(&run).unwrap();
    // Ctrl-C after frame 3: the frames done are written, with the checkpoint, exit 130.
    let o = kdet_env(&["online", &cfg, f], &[("KDET_FAULT", "sigint:3")]);
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("after frame 3 of 8"), "{e}");
    assert_eq!(records(&run).len(), 3);
    assert!(run.join("checkpoint.safetensors").is_file());
    assert!(e.contains("--resume"), "{e}");
    std::fs::remove_dir_all(&run).unwrap();
    // The frames' own folder as output_dir: refused.
    let cfg2 = config(d.path(), serde_json::json!({"student_weights": null}));
    common::set(&cfg2, "output_dir", serde_json::json!(frames));
    let e = fails(&kdet(&["online", &cfg2, f]));
    assert!(e.contains("holds the frame"), "{e}");
    // Bad policies, located in the config.
    let bad = config(
        d.path(),
        serde_json::json!({"min_stride": 8, "max_stride": 4}),
    );
    let e = fails(&kdet(&["online", &bad, f]));
    assert!(
        e.contains("online.json: online.min_stride: 8 is above max_stride 4"),
        "{e}"
    );
    let bad = config(d.path(), serde_json::json!({"threshold": 1.5}));
    let e = fails(&kdet(&["online", &bad, f]));
    assert!(e.contains("online.threshold: 1.5 is outside (0, 1]"), "{e}");
    // No frames; a truth file without the frames.
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let cfg = config(d.path(), serde_json::json!({"student_weights": null}));
    let e = fails(&kdet(&["online", &cfg, empty.to_str().unwrap()]));
    assert!(e.contains("no JPEG or PNG"), "{e}");
    let other = d.path().join("other.json");
    std::fs::write(&other, r#"{"images": [], "annotations": [], "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}, {"id": 4, "name": "cross"}, {"id": 5, "name": "ring"}]}"#).unwrap();
    let e = fails(&kdet(&[
        "online",
        &cfg,
        f,
        "--truth",
        other.to_str().unwrap(),
    ]));
    assert!(
        e.contains("no image with file_name `frame_000001.png` (frame 1"),
        "{e}"
    );
    // An unreadable frame stops the stream, naming its index.
    let list = d.path().join("list.txt");
    std::fs::write(d.path().join("bad.png"), b"not an image").unwrap();
    let first = frames.join("frame_000001.png");
    std::fs::write(&list, format!("{}\nbad.png\n", first.display())).unwrap();
    let e = fails(&kdet(&["online", &cfg, list.to_str().unwrap()]));
    assert!(
        e.contains("frame 2 of the stream") && e.contains("bad.png"),
        "{e}"
    );
    assert!(e.contains("--skip-unreadable"), "{e}");
    // … or, with --skip-unreadable, is skipped: said with its index, logged, listed, and the
    // key frame due on it moves to the next readable one.
    let third = frames.join("frame_000002.png");
    std::fs::write(
        &list,
        format!("bad.png\n{}\n{}\n", first.display(), third.display()),
    )
    .unwrap();
    let o = kdet(&[
        "online",
        &cfg,
        list.to_str().unwrap(),
        "--skip-unreadable",
        "--fresh",
    ]);
    let e = ok(&o);
    assert!(
        e.contains("frame 1 of the stream") && e.contains("skipped"),
        "{e}"
    );
    let recs = records(&run);
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0]["skipped"], true);
    assert_eq!(recs[1]["key"], true, "{:?}", recs[1]);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("online.json")).unwrap()).unwrap();
    assert_eq!(summary["skipped_frames"], serde_json::json!([1]));
    assert_eq!(summary["frames"], 3);
    std::fs::remove_dir_all(&run).unwrap();
    // Frames of different sizes: each resized as inference does, said once.
    let small = d.path().join("small.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([90, 90, 90]))
        .save(&small)
        .unwrap();
    std::fs::write(
        &list,
        format!("{}\nsmall.png\nsmall.png\n", first.display()),
    )
    .unwrap();
    let e = ok(&kdet(&["online", &cfg, list.to_str().unwrap()]));
    assert_eq!(e.matches("said once").count(), 1, "{e}");
    assert!(e.contains("frame 2 (") && e.contains("is 40×30"), "{e}");
    assert_eq!(records(&run).len(), 3);
    std::fs::remove_dir_all(&run).unwrap();
    // A student whose classes are not the teacher's.
    let side = d.path().join("student.json");
    let mut s: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/synth_frcnn_r18w05_teacher.json"),
        )
        .unwrap(),
    )
    .unwrap();
    s["classes"] = serde_json::json!(["a", "b", "c", "d", "e"]);
    std::fs::write(&side, s.to_string()).unwrap();
    std::fs::write(d.path().join("student.safetensors"), b"").unwrap();
    let cfg = config(
        d.path(),
        serde_json::json!({"student_weights": d.path().join("student.safetensors")}),
    );
    let e = fails(&kdet(&["online", &cfg, f]));
    assert!(
        e.contains("online.student_weights") && e.contains("detects [a, b, c, d, e]"),
        "{e}"
    );
}

/// Whether two finished streams are the same: per-frame records (but times and a resume's
/// record of changed settings), the student's and the teacher's detections, the adapted student
/// and the AP.
fn assert_same_stream(a: &Path, b: &Path) {
    let frames = |d: &Path| {
        let mut r = records(d);
        r.retain(|v| v.get("event").is_none());
        r
    };
    assert_eq!(frames(a), frames(b), "metrics differ");
    for f in [
        "detections.json",
        "teacher_detections.json",
        "model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let summary = |d: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("online.json")).unwrap()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.retain(|k, _| {
            !k.contains("seconds") && !["fps", "cost_ratio", "output_dir"].contains(&k.as_str())
        });
        v
    };
    assert_eq!(summary(a), summary(b));
}

/// A stream killed inside its second checkpoint write, or stopped by Ctrl-C, then resumed, is
/// the uninterrupted stream; `--resume` refuses another frame list, other flags or a changed
/// policy, naming the difference.
#[test]
fn a_stream_resumes_exactly_and_refuses_another_stream() {
    let d = tempfile::tempdir().unwrap();
    let v = video(d.path());
    let (frames, truth) = (v.join("frames"), v.join("annotations.json"));
    let f = frames.to_str().unwrap();
    let t = truth.to_str().unwrap();
    let online = serde_json::json!({"student_weights": null, "checkpoint_every": 3});
    let stream = |name: &str| {
        let dir = d.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        (config(&dir, online.clone()), dir.join("run"))
    };
    let every = ["--truth", t, "--teacher-every-frame"];
    let (a, run_a) = stream("a");
    ok(&kdet(&[&["online", &a, f][..], &every].concat()));
    // Killed with the frame-6 checkpoint half written: the resume continues after frame 3.
    let (b, run_b) = stream("b");
    let args = [&["online", &b, f][..], &every].concat();
    let o = kdet_env(&args, &[("KDET_FAULT", "torn:checkpoint.safetensors:2")]);
    assert_eq!(o.status.code(), None, "killed");
    assert_eq!(records(&run_b).len(), 6);
    let e = fails(&kdet(&args));
    assert!(e.contains("already holds a checkpoint"), "{e}");
    // Another stream, other flags, another policy: refused, naming what differs.
    let list = d.path().join("seven.txt");
    let names: Vec<String> = (1..=7)
        .map(|i| format!("video/frames/frame_{i:06}.png"))
        .collect();
    std::fs::write(&list, names.join("\n")).unwrap();
    let l = list.to_str().unwrap();
    let e = fails(&kdet(&[
        "online",
        &b,
        l,
        "--truth",
        t,
        "--teacher-every-frame",
        "--resume",
    ]));
    assert!(e.contains("the stream had 8 frames and now has 7"), "{e}");
    let e = fails(&kdet(&["online", &b, f, "--truth", t, "--resume"]));
    assert!(
        e.contains("--teacher-every-frame was given and is now not given"),
        "{e}"
    );
    let max_updates = |n: u64| {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&b).unwrap()).unwrap();
        v["online"]["max_updates"] = n.into();
        std::fs::write(&b, v.to_string()).unwrap();
    };
    max_updates(2);
    let e = fails(&kdet(&[&args[..], &["--resume"]].concat()));
    assert!(e.contains("online.max_updates was 1 and is now 2"), "{e}");
    max_updates(1);
    let r = ok(&kdet(&[&args[..], &["--resume"]].concat()));
    assert!(
        r.contains("resuming the stream from") && r.contains("after frame 3"),
        "{r}"
    );
    assert_same_stream(&run_a, &run_b);
    // Ctrl-C after frame 5: the checkpoint there, then the rest — checkpointing more often
    // from then on, a change the resume accepts and records.
    let (c, run_c) = stream("c");
    let args = [&["online", &c, f][..], &every].concat();
    let o = kdet_env(&args, &[("KDET_FAULT", "sigint:5")]);
    assert_eq!(o.status.code(), Some(130));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&c).unwrap()).unwrap();
    v["online"]["checkpoint_every"] = 2.into();
    std::fs::write(&c, v.to_string()).unwrap();
    let r = ok(&kdet(&[&args[..], &["--resume"]].concat()));
    assert!(r.contains("after frame 5"), "{r}");
    assert!(r.contains("online.checkpoint_every: 3 -> 2"), "{r}");
    let history: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_c.join("config_history.jsonl")).unwrap())
            .unwrap();
    assert_eq!(history["iter"], 5);
    assert_eq!(history["changed"]["online.checkpoint_every"]["to"], 2);
    assert_same_stream(&run_a, &run_c);
}
