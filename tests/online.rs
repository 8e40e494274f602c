//! `kdet online` end to end on a tiny synthetic video: the stream's outputs and policy, the AP
//! against the truth, folder safety, a clean Ctrl-C, and located errors for bad input.

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

/// An online config in `dir` (the shipped synthetic teacher, a narrow student from scratch, both
/// at the teacher's 128 px input, strides 2..4, one update per key frame), with `online` merged
/// from `extra`.
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

fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
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
    // The same stream again into its own folder: the same run (seeded updates).
    let first = std::fs::read(run.join("detections.json")).unwrap();
    ok(&kdet(&args));
    assert_eq!(std::fs::read(run.join("detections.json")).unwrap(), first);
    assert!(
        !run.join("teacher_detections.json").exists(),
        "the earlier run's file is removed"
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
