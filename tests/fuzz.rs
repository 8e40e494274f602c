//! Property-based fuzzing of every reader of user files, on stable Rust (proptest): the COCO
//! loader (ground truth and detections), the config loader with `base` chains, image decoding,
//! and the weights readers (safetensors headers, checkpoints, PyTorch zips) with their sidecar
//! JSON. Each target feeds both structure-aware inputs (documents built from the schema, with
//! hostile values) and mutations of real files (bit flips, splices, truncations, odd numbers; for JSON mostly edits that keep it JSON).
//! The property: kdet answers with a value or an error naming the file — never a panic — and
//! what it accepts satisfies the checks it promises.
//!
//! `cargo test` runs a few cases per target from a fixed seed. `tools/fuzz.sh` runs each target
//! for as long as asked: `KDET_FUZZ_SECS` (run until that many seconds are spent),
//! `KDET_FUZZ_CASES` (cases per round), `KDET_FUZZ_SEED` (first round's seed; printed).
//! Inputs that once failed are kept as regression cases at the end of this file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};

use kdet::data::coco::{self, ImageCheck, Purpose};

// ---------------------------------------------------------------- runner

thread_local! {
    /// Inputs of the running target that kdet accepted (each target runs on its own thread).
    static ACCEPTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Count an input kdet accepted, to show how much of a run reached past the first error.
fn accepted() {
    ACCEPTED.with(|c| c.set(c.get() + 1));
}

/// Run `check` on inputs from `strategy`: a few cases from a fixed seed, or rounds of
/// `KDET_FUZZ_CASES` until `KDET_FUZZ_SECS` have passed. A failure (or a panic inside
/// `check`) fails the test with the shrunk input.
fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let secs = env("KDET_FUZZ_SECS");
    let cases = env("KDET_FUZZ_CASES").map_or(default_cases, |c| c as u32);
    let seed0 = env("KDET_FUZZ_SEED").unwrap_or(0x6b64_6574);
    let t0 = Instant::now();
    ACCEPTED.with(|c| c.set(0));
    let (mut total, mut round) = (0u64, 0u64);
    loop {
        let seed = seed0.wrapping_add(round);
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let cfg = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 2000,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(cfg, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
        if let Err(e) = runner.run(&strategy, &check) {
            panic!("fuzz target {name} (seed {seed}): {e}");
        }
        total += cases as u64;
        round += 1;
        if secs.is_none_or(|s| t0.elapsed().as_secs() >= s) {
            break;
        }
    }
    eprintln!(
        "fuzz target {name}: {total} cases ({} accepted) in {:.1} s (seeds {seed0}..{}), no failure",
        ACCEPTED.with(|c| c.get()),
        t0.elapsed().as_secs_f64(),
        seed0.wrapping_add(round)
    );
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `check` on each unmutated file of a corpus: every one must be accepted, or the mutations
/// of the target would only ever test the first error.
fn corpus_is_accepted(corpus: &[Vec<u8>], check: impl Fn(&[u8]) -> Result<(), TestCaseError>) {
    ACCEPTED.with(|c| c.set(0));
    for (i, f) in corpus.iter().enumerate() {
        check(f).unwrap_or_else(|e| panic!("corpus file {i}: {e}"));
    }
    assert_eq!(
        ACCEPTED.with(|c| c.get()),
        corpus.len() as u64,
        "a corpus file is refused"
    );
}

/// Fail the case unless `msg` names `file` (a located error).
fn names_file(msg: &str, file: &Path) -> Result<(), TestCaseError> {
    let name = file.file_name().unwrap().to_string_lossy();
    prop_assert!(
        msg.contains(name.as_ref()),
        "error does not name {name}: {msg}"
    );
    Ok(())
}

// ---------------------------------------------------------------- mutations

/// One edit of a byte string; positions are fractions of its length (so they fit any file),
/// and `head` confines them to the first 4 KiB, where headers live.
#[derive(Debug, Clone)]
enum Edit {
    Flip {
        at: u32,
        head: bool,
        bit: u8,
    },
    Set {
        at: u32,
        head: bool,
        byte: u8,
    },
    Insert {
        at: u32,
        head: bool,
        bytes: Vec<u8>,
    },
    Delete {
        at: u32,
        head: bool,
        len: u16,
    },
    Duplicate {
        from: u32,
        to: u32,
        len: u16,
    },
    Truncate {
        at: u32,
    },
    Number {
        at: u32,
        head: bool,
        text: &'static str,
    },
    /// Replace the first number at or after the position.
    NextNumber {
        at: u32,
        text: &'static str,
    },
    /// Set the first digit at or after the position.
    NextDigit {
        at: u32,
        digit: u8,
    },
}

/// Bytes that matter to JSON and to binary headers.
const TOKENS: &[u8] = b"{}[],:\"-+.0159eE \n\\\x00\xff";

/// Numbers that break naive code: overflow, negative, huge, fractional where integers go.
const NUMBERS: &[&str] = &[
    "-1",
    "0",
    "1e308",
    "-1e308",
    "1e999",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775808",
    "4294967296",
    "0.5",
    "-0",
    "1e-320",
    "NaN",
    "null",
    "\"1\"",
];

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<u32>();
    prop_oneof![
        (at, any::<bool>(), 0u8..8).prop_map(|(at, head, bit)| Edit::Flip { at, head, bit }),
        (at, any::<bool>(), prop::sample::select(TOKENS)).prop_map(|(at, head, byte)| Edit::Set {
            at,
            head,
            byte
        }),
        (at, any::<bool>(), any::<u8>()).prop_map(|(at, head, byte)| Edit::Set { at, head, byte }),
        (
            at,
            any::<bool>(),
            prop::collection::vec(prop::sample::select(TOKENS), 1..6)
        )
            .prop_map(|(at, head, bytes)| Edit::Insert { at, head, bytes }),
        (at, any::<bool>(), 1u16..64).prop_map(|(at, head, len)| Edit::Delete { at, head, len }),
        (at, any::<u32>(), 1u16..256).prop_map(|(from, to, len)| Edit::Duplicate { from, to, len }),
        at.prop_map(|at| Edit::Truncate { at }),
        (at, any::<bool>(), prop::sample::select(NUMBERS))
            .prop_map(|(at, head, text)| Edit::Number { at, head, text }),
    ]
}

fn pos(at: u32, head: bool, len: usize) -> usize {
    let span = if head { len.min(4096) } else { len };
    ((at as u64 * (span as u64 + 1)) >> 32) as usize
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = b.len();
        match e {
            Edit::Flip { at, head, bit } if n > 0 => {
                let i = pos(*at, *head, n - 1);
                b[i] ^= 1 << bit;
            }
            Edit::Set { at, head, byte } if n > 0 => {
                let i = pos(*at, *head, n - 1);
                b[i] = *byte;
            }
            Edit::Insert { at, head, bytes } => {
                let i = pos(*at, *head, n);
                b.splice(i..i, bytes.iter().copied());
            }
            Edit::Delete { at, head, len } => {
                let i = pos(*at, *head, n);
                let j = (i + *len as usize).min(n);
                b.drain(i..j);
            }
            Edit::Duplicate { from, to, len } => {
                let i = pos(*from, false, n);
                let j = (i + *len as usize).min(n);
                let seg: Vec<u8> = b[i..j].to_vec();
                let k = pos(*to, false, n);
                b.splice(k..k, seg);
            }
            Edit::Truncate { at } => {
                let i = pos(*at, false, n);
                b.truncate(i);
            }
            Edit::Number { at, head, text } => {
                // Replace the number (or the token) around the position.
                let i = pos(*at, *head, n);
                let num = |c: u8| c.is_ascii_digit() || b".-+eE".contains(&c);
                let mut s = i;
                while s > 0 && num(b[s - 1]) {
                    s -= 1;
                }
                let mut t = i;
                while t < n && num(b[t]) {
                    t += 1;
                }
                b.splice(s..t, text.bytes());
            }
            Edit::NextNumber { at, text } => {
                let num = |c: u8| c.is_ascii_digit() || b".-+eE".contains(&c);
                let i = pos(*at, false, n);
                if let Some(s) = (i..n).find(|&k| b[k].is_ascii_digit() || b[k] == b'-') {
                    let mut t = s;
                    while t < n && num(b[t]) {
                        t += 1;
                    }
                    b.splice(s..t, text.bytes());
                }
            }
            Edit::NextDigit { at, digit } => {
                let i = pos(*at, false, n);
                if let Some(k) = (i..n).find(|&k| b[k].is_ascii_digit()) {
                    b[k] = *digit;
                }
            }
            _ => {}
        }
    }
    b
}

/// A file from `corpus` with 1–5 edits.
fn mutated(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = corpus.len();
    (0..n, prop::collection::vec(edit(), 1..6))
        .prop_map(move |(i, edits)| apply(corpus[i].clone(), &edits))
}

/// Edits of a JSON text that mostly keep it JSON, so the input reaches the checks behind the
/// parser: numbers swapped for hostile ones, digits changed, and now and then any edit.
fn json_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<u32>(), prop::sample::select(NUMBERS))
            .prop_map(|(at, text)| Edit::NextNumber { at, text }),
        3 => (any::<u32>(), 0u8..10).prop_map(|(at, d)| Edit::NextDigit { at, digit: b'0' + d }),
        1 => edit(),
    ]
}

/// A JSON file from `corpus` with 1–5 mostly JSON-keeping edits.
fn json_mutated(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = corpus.len();
    (0..n, prop::collection::vec(json_edit(), 1..6))
        .prop_map(move |(i, edits)| apply(corpus[i].clone(), &edits))
}

// ---------------------------------------------------------------- hostile JSON values

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(-1),
            json!(2),
            json!(3),
            json!(18),
            json!(64),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(0.5),
            json!(-0.5),
            json!(1e308),
            json!(-1e308),
            json!(1e-300),
            json!(4294967296u64),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "a",
            "cpu",
            "cuda",
            "cuda:x",
            "sgd",
            "adamw",
            "faster_rcnn",
            "paa",
            "step",
            "cosine",
            "bn",
            "frozen_bn",
            "hint",
            "fpn.p3",
            "rpn",
            "rcn",
            "x.png",
            "../x.json",
            "hf://o/r/f.pth",
            "\u{feff}",
            "N/A",
        ])
        .prop_map(Value::from),
    ]
}

/// A JSON value of depth ≤ 2 built from hostile leaves.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "type", "depth", "weights", "id", "x"]),
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// A value that is usually sensible for its slot and sometimes hostile.
fn usually(good: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Value> {
    prop_oneof![4 => good.boxed(), 1 => leaf().boxed()]
}

// ---------------------------------------------------------------- COCO ground truth

fn gt_document() -> impl Strategy<Value = Value> {
    let image = (
        usually((1u64..6).prop_map(Value::from)),
        usually((0u32..80).prop_map(Value::from)),
        usually((0u32..80).prop_map(Value::from)),
    )
        .prop_map(|(id, w, h)| json!({"id": id, "file_name": "a.png", "width": w, "height": h}));
    let category = usually((1u64..5).prop_map(Value::from))
        .prop_map(|id| json!({"id": id, "name": "c", "supercategory": "s"}));
    let coord = usually(prop_oneof![
        (-100i32..200).prop_map(Value::from),
        (-100.0f64..200.0).prop_map(Value::from),
    ]);
    let bbox = prop_oneof![
        8 => prop::collection::vec(coord, 4).prop_map(Value::Array),
        1 => value(),
    ];
    let ann = (
        usually((1u64..12).prop_map(Value::from)),
        usually((1u64..6).prop_map(Value::from)),
        usually((1u64..5).prop_map(Value::from)),
        bbox,
        usually(prop_oneof![
            Just(json!(0)),
            Just(json!(1)),
            Just(json!(false))
        ]),
        prop::option::of(usually((0.0f64..1e4).prop_map(Value::from))),
    )
        .prop_map(|(id, image_id, category_id, bbox, iscrowd, area)| {
            let mut a = json!({"id": id, "image_id": image_id, "category_id": category_id,
                               "bbox": bbox, "iscrowd": iscrowd});
            if let Some(area) = area {
                a["area"] = area;
            }
            a
        });
    (
        prop::collection::vec(image, 0..5),
        prop::collection::vec(category, 0..4),
        prop::collection::vec(ann, 0..10),
        0u8..8,
    )
        .prop_map(|(images, categories, annotations, drop)| {
            let mut d =
                json!({"images": images, "categories": categories, "annotations": annotations});
            // Sometimes a section is missing.
            if let Some(k) = ["images", "categories", "annotations"].get(drop as usize) {
                d.as_object_mut().unwrap().remove(*k);
            }
            d
        })
}

/// What a ground truth kdet accepted promises.
fn check_gt(file: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    for purpose in [Purpose::Eval, Purpose::Train { min_box_size: 0.0 }] {
        match coco::ground_truth_from_slice(file, bytes, purpose) {
            Err(e) => names_file(&e.to_string(), file)?,
            Ok(g) => {
                if purpose == Purpose::Eval {
                    accepted();
                }
                let ds = &g.dataset;
                let images: std::collections::HashMap<u64, (u32, u32)> = ds
                    .images
                    .iter()
                    .map(|i| (i.id, (i.width, i.height)))
                    .collect();
                prop_assert_eq!(images.len(), ds.images.len(), "duplicate image ids");
                prop_assert!(!ds.categories.is_empty());
                for a in &ds.annotations {
                    let (w, h) = images[&a.image_id];
                    prop_assert!(w > 0 && h > 0);
                    prop_assert!(ds.categories.iter().any(|c| c.id == a.category_id));
                    let b = a.bbox.unwrap();
                    prop_assert!(b.iter().all(|v| v.is_finite()), "{:?}", b);
                    let (w, h) = (w as f64, h as f64);
                    prop_assert!(b[0] >= -w && b[0] + b[2] <= 2.0 * w, "{:?} in {}", b, w);
                    prop_assert!(b[1] >= -h && b[1] + b[3] <= 2.0 * h, "{:?} in {}", b, h);
                    match purpose {
                        Purpose::Eval => prop_assert!(b[2] >= 0.0 && b[3] >= 0.0),
                        Purpose::Train { .. } => {
                            prop_assert!(b[2] > 0.0 && b[3] > 0.0);
                            prop_assert!(b[0] < w && b[1] < h && b[0] + b[2] > 0.0);
                        }
                    }
                }
                let cats = coco::CategoryMap::new(&ds.categories);
                for a in &ds.annotations {
                    let l = cats.label(a.category_id).unwrap();
                    prop_assert_eq!(cats.category_id(l), Some(a.category_id));
                }
            }
        }
    }
    Ok(())
}

fn gt_corpus() -> Vec<Vec<u8>> {
    let d = root().join("tests/fixtures/eval");
    let mut v: Vec<Vec<u8>> = ["basic", "crowd", "empty_images", "area_mismatch"]
        .iter()
        .map(|n| std::fs::read(d.join(format!("{n}.gt.json"))).unwrap())
        .collect();
    v.push(
        br#"{"images":[{"id":1,"file_name":"a.png","width":10,"height":8}],
        "categories":[{"id":5,"name":"circle"}],
        "annotations":[{"id":1,"image_id":1,"category_id":5,"bbox":[1,1,3,3],"area":9,"iscrowd":0}]}"#
            .to_vec(),
    );
    v
}

#[test]
fn fuzz_coco_ground_truth_structured() {
    let file = Path::new("fuzz_gt.json");
    fuzz("coco_gt_structured", 48, gt_document(), |doc| {
        check_gt(file, doc.to_string().as_bytes())
    });
}

#[test]
fn fuzz_coco_ground_truth_mutated() {
    let file = Path::new("fuzz_gt.json");
    corpus_is_accepted(&gt_corpus(), |b| check_gt(file, b));
    fuzz("coco_gt_mutated", 48, json_mutated(gt_corpus()), |bytes| {
        check_gt(file, &bytes)
    });
}

// ---------------------------------------------------------------- COCO detections

fn detections_document() -> impl Strategy<Value = Value> {
    let det = (
        usually(prop::sample::select(vec![
            json!(1),
            json!(2),
            json!(3),
            json!(99),
        ])),
        usually(prop::sample::select(vec![json!(1), json!(2), json!(7)])),
        prop_oneof![
            8 => prop::collection::vec(usually((-20.0f64..120.0).prop_map(Value::from)), 4)
                .prop_map(Value::Array),
            1 => value(),
        ],
        prop::option::of(usually((0.0f64..1.0).prop_map(Value::from))),
    )
        .prop_map(|(image_id, category_id, bbox, score)| {
            let mut d = json!({"image_id": image_id, "category_id": category_id, "bbox": bbox});
            if let Some(s) = score {
                d["score"] = s;
            }
            d
        });
    prop_oneof![
        9 => prop::collection::vec(det, 0..12).prop_map(Value::Array),
        1 => value(),
    ]
}

const SMALL_GT: &str = r#"{"images":[{"id":1,"file_name":"a.png","width":100,"height":80},
    {"id":2,"file_name":"b.png","width":60,"height":90},{"id":3,"file_name":"c.png","width":50,"height":50}],
    "categories":[{"id":1,"name":"a"},{"id":2,"name":"b"}],
    "annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[10,10,30,20],"area":600,"iscrowd":0},
    {"id":2,"image_id":2,"category_id":2,"bbox":[5,5,20,40],"area":800,"iscrowd":0},
    {"id":3,"image_id":2,"category_id":1,"bbox":[0,0,60,90],"area":5400,"iscrowd":1}]}"#;

/// What detections kdet accepted promise, and the evaluation of them runs.
fn check_detections(
    gt_file: &Path,
    gt: &[u8],
    file: &Path,
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let g = coco::ground_truth_from_slice(gt_file, gt, Purpose::Eval).unwrap();
    match coco::detections_from_slice(file, bytes, &g.dataset, gt_file) {
        Err(e) => names_file(&e.to_string(), file)?,
        Ok(dets) => {
            accepted();
            for d in &dets {
                prop_assert!(g.dataset.images.iter().any(|i| i.id == d.image_id));
                prop_assert!(g.dataset.categories.iter().any(|c| c.id == d.category_id));
                let b = d.bbox.unwrap();
                prop_assert!(b.iter().all(|v| v.is_finite()) && b[2] >= 0.0 && b[3] >= 0.0);
                prop_assert!(d.score.unwrap().is_finite());
            }
            let s = kdet::eval::evaluate(g.dataset.clone(), dets)
                .map_err(|e| TestCaseError::fail(format!("evaluation failed: {e}")))?;
            prop_assert_eq!(s.stats.len(), 12);
        }
    }
    Ok(())
}

#[test]
fn fuzz_coco_detections_structured() {
    fuzz("coco_dt_structured", 48, detections_document(), |doc| {
        check_detections(
            Path::new("gt.json"),
            SMALL_GT.as_bytes(),
            Path::new("fuzz_dt.json"),
            doc.to_string().as_bytes(),
        )
    });
}

#[test]
fn fuzz_coco_detections_mutated() {
    let d = root().join("tests/fixtures/eval");
    let gt = std::fs::read(d.join("basic.gt.json")).unwrap();
    let corpus = vec![
        std::fs::read(d.join("basic.dt.json")).unwrap(),
        br#"[{"image_id":1,"category_id":1,"bbox":[1,1,3,3],"score":0.9}]"#.to_vec(),
    ];
    corpus_is_accepted(&corpus, |b| {
        check_detections(
            Path::new("basic.gt.json"),
            &gt,
            Path::new("fuzz_dt.json"),
            b,
        )
    });
    fuzz("coco_dt_mutated", 48, json_mutated(corpus), |bytes| {
        check_detections(
            Path::new("basic.gt.json"),
            &gt,
            Path::new("fuzz_dt.json"),
            &bytes,
        )
    });
}

// ---------------------------------------------------------------- configs with base chains

/// Settings a config may hold, with values that are usually plausible.
fn config_setting() -> impl Strategy<Value = (&'static str, Value)> {
    let num = |lo: f64, hi: f64| usually((lo..hi).prop_map(Value::from));
    let int = |lo: u64, hi: u64| usually((lo..hi).prop_map(Value::from));
    prop_oneof![
        num(-0.1, 1.0).prop_map(|v| ("solver.lr", v)),
        num(-0.5, 1.5).prop_map(|v| ("solver.momentum", v)),
        int(0, 5).prop_map(|v| ("solver.batch_size", v)),
        int(0, 50).prop_map(|v| ("solver.iterations", v)),
        int(0, 5).prop_map(|v| ("solver.epochs", v)),
        int(0, 2000).prop_map(|v| ("solver.warmup_iters", v)),
        num(-1.0, 2.0).prop_map(|v| ("solver.warmup_factor", v)),
        usually(prop::sample::select(vec![
            json!({"type": "step", "milestones": [2, 4]}),
            json!({"type": "step", "milestones": [5, 3]}),
            json!({"type": "cosine", "min_lr": 0.001}),
            json!({"type": "constant"}),
            json!({"type": "step"}),
        ]))
        .prop_map(|v| ("solver.schedule", v)),
        usually(prop::sample::select(vec![
            json!("sgd"),
            json!("adamw"),
            json!("lion")
        ]))
        .prop_map(|v| ("solver.optimizer", v)),
        num(-1.0, 10.0).prop_map(|v| ("solver.grad_clip", v)),
        int(0, 3).prop_map(|v| ("solver.log_every", v)),
        usually(prop::sample::select(vec![json!(18), json!(50), json!(42)]))
            .prop_map(|v| ("model.backbone.depth", v)),
        num(0.0, 2.0).prop_map(|v| ("model.backbone.width", v)),
        usually(prop::sample::select(vec![
            json!("faster_rcnn"),
            json!("paa"),
            json!("yolo")
        ]))
        .prop_map(|v| ("model.arch", v)),
        int(0, 2000).prop_map(|v| ("model.input.min_size", v)),
        num(-1.0, 2.0).prop_map(|v| ("model.rpn.fg_iou_thresh", v)),
        int(0, 20).prop_map(|v| ("data.synthetic.classes", v)),
        int(0, 20).prop_map(|v| ("data.synthetic.train", v)),
        num(0.0, 5.0).prop_map(|v| ("data.synthetic.long_tail", v)),
        num(-1.0, 2.0).prop_map(|v| ("data.flip_prob", v)),
        int(0, 3).prop_map(|v| ("data.workers", v)),
        usually(prop::sample::select(vec![
            json!([{"weights": "t.safetensors"}]),
            json!([{"weights": "hf://o/r/t.pth", "strict": false}]),
            json!([{"weights": ""}]),
        ]))
        .prop_map(|v| ("teachers", v)),
        usually(prop::sample::select(vec![
            json!([{"type": "hint", "student": "fpn.p3", "teacher": "fpn.p3"}]),
            json!([{"type": "weighted_kd", "stage": "rcn", "mu": 0.5}]),
            json!([{"type": "kd", "temperature": 0}]),
        ]))
        .prop_map(|v| ("distill", v)),
        usually(prop::sample::select(vec![
            json!("runs/x"),
            json!(""),
            json!("/tmp/x")
        ]))
        .prop_map(|v| ("output_dir", v)),
        usually(prop::sample::select(vec![
            json!("cpu"),
            json!("cuda:1"),
            json!("tpu")
        ]))
        .prop_map(|v| ("device", v)),
        int(0, 10).prop_map(|v| ("seed", v)),
        value().prop_map(|v| ("solver", v)),
        value().prop_map(|v| ("model", v)),
        value().prop_map(|v| ("unknown_key", v)),
    ]
}

/// Set `path` (dotted) in `doc`, creating objects on the way (a non-object on the way is
/// replaced).
fn set_path(doc: &mut Value, path: &str, v: Value) {
    let mut cur = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
    cur[parts[parts.len() - 1]] = v;
}

/// A chain of up to three configs: `c0.json` → base `c1.json` → base `c2.json`, each with a few
/// settings; `base` is sometimes missing, a cycle, not a string or a file that does not exist.
fn config_chain() -> impl Strategy<Value = Vec<Value>> {
    let file = (
        prop::collection::vec(config_setting(), 0..5),
        prop::sample::select(vec![
            json!("next"),
            json!("next"),
            json!("next"),
            Value::Null,
            json!("c0.json"),
            json!("missing.json"),
            json!(3),
            json!(""),
        ]),
    );
    prop::collection::vec(file, 1..4).prop_map(|files| {
        let n = files.len();
        files
            .into_iter()
            .enumerate()
            .map(|(i, (settings, base))| {
                let mut doc = json!({});
                for (k, v) in settings {
                    set_path(&mut doc, k, v);
                }
                match base {
                    Value::Null => {}
                    Value::String(s) if s == "next" => {
                        if i + 1 < n {
                            doc["base"] = json!(format!("c{}.json", i + 1));
                        }
                    }
                    other => doc["base"] = other,
                }
                doc
            })
            .collect()
    })
}

/// What a config kdet accepted promises: validated ranges, a run length, a schedule that gives
/// finite rates; an error names one of the files.
fn check_config(dir: &Path, child: &Path) -> Result<(), TestCaseError> {
    match kdet::config::load(child) {
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(
                msg.contains(&dir.display().to_string()),
                "error names no file of the chain: {msg}"
            );
        }
        Ok(c) => {
            accepted();
            let s = &c.config.solver;
            prop_assert!(s.lr > 0.0 && s.lr.is_finite() && s.batch_size >= 1);
            prop_assert!(!c.config.output_dir.as_os_str().is_empty());
            let (len, epochs) = s.length();
            prop_assert!(len >= 1);
            let total = if epochs { len * 7 } else { len };
            let lr = kdet::engine::schedule::LrSchedule::new(s, 7, total);
            for it in [0, 1, total / 2, total.saturating_sub(1), total] {
                let v = lr.lr(it);
                prop_assert!(v.is_finite() && v >= 0.0, "lr({it}) = {v}");
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_config_base_chain_structured() {
    let d = tempfile::tempdir().unwrap();
    fuzz("config_structured", 64, config_chain(), |files| {
        for (i, f) in files.iter().enumerate() {
            std::fs::write(d.path().join(format!("c{i}.json")), f.to_string()).unwrap();
        }
        let r = check_config(d.path(), &d.path().join("c0.json"));
        for i in 0..files.len() {
            let _ = std::fs::remove_file(d.path().join(format!("c{i}.json")));
        }
        r
    });
}

#[test]
fn fuzz_config_base_chain_mutated() {
    // The shipped chain frcnn_distill.json → distill_teacher.json → frcnn_student.json →
    // frcnn_base.json → base.json, one of its files mutated, in a copy of the folder so `base`
    // resolves.
    let src = root().join("configs/synth");
    let names = [
        "frcnn_distill.json",
        "distill_teacher.json",
        "frcnn_student.json",
        "frcnn_base.json",
        "base.json",
    ];
    let corpus: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(src.join(n)).unwrap())
        .collect();
    let d = tempfile::tempdir().unwrap();
    for (n, b) in names.iter().zip(&corpus) {
        std::fs::write(d.path().join(n), b).unwrap();
    }
    kdet::config::load(&d.path().join(names[0])).expect("the unmutated chain loads");
    let strategy = (0..names.len(), prop::collection::vec(json_edit(), 1..6));
    fuzz("config_mutated", 64, strategy, |(which, edits)| {
        for (i, n) in names.iter().enumerate() {
            let bytes = if i == which {
                apply(corpus[i].clone(), &edits)
            } else {
                corpus[i].clone()
            };
            std::fs::write(d.path().join(n), bytes).unwrap();
        }
        check_config(d.path(), &d.path().join(names[0]))
    });
}

// ---------------------------------------------------------------- image decoding

fn image_corpus() -> Vec<Vec<u8>> {
    let mut v = vec![
        std::fs::read(root().join("tests/fixtures/export/val_000001.png")).unwrap(),
        std::fs::read(root().join("tests/fixtures/frcnn/img0.png")).unwrap(),
    ];
    // Small images in each format and colour type kdet reads.
    let rgb = image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 13, 77]));
    for (fmt, img) in [
        (
            image::ImageFormat::Png,
            image::DynamicImage::ImageRgb8(rgb.clone()),
        ),
        (
            image::ImageFormat::Png,
            image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(rgb.clone()).to_luma8()),
        ),
        (
            image::ImageFormat::Png,
            image::DynamicImage::ImageRgba8(image::DynamicImage::ImageRgb8(rgb.clone()).to_rgba8()),
        ),
        (
            image::ImageFormat::Jpeg,
            image::DynamicImage::ImageRgb8(rgb),
        ),
    ] {
        let mut buf = std::io::Cursor::new(vec![]);
        img.write_to(&mut buf, fmt).unwrap();
        v.push(buf.into_inner());
    }
    v
}

/// The image is checked (header, full decode) and, when it passes, transformed as training
/// does; an image whose check passed decodes to its stated size.
fn check_image(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let name = "im.png";
    std::fs::write(dir.join(name), bytes).unwrap();
    // The header decides the size the annotations must state.
    let size = image::ImageReader::open(dir.join(name))
        .and_then(|r| r.with_guessed_format())
        .ok()
        .and_then(|r| r.into_dimensions().ok())
        .unwrap_or((7, 7));
    let ann = dir.join("ann.json");
    let doc = json!({"images": [{"id": 1, "file_name": name, "width": size.0, "height": size.1}],
        "categories": [{"id": 1, "name": "x"}], "annotations": []});
    let g = coco::ground_truth_from_slice(&ann, doc.to_string().as_bytes(), Purpose::Eval).unwrap();
    let header = coco::image_file_errors(&ann, &g.dataset, dir, ImageCheck::Header);
    let full = coco::image_file_errors(&ann, &g.dataset, dir, ImageCheck::Decode);
    for e in header.iter().chain(&full) {
        let msg = e.to_string();
        prop_assert!(msg.contains("images[0]"), "not located: {msg}");
    }
    if full.is_empty() {
        accepted();
        prop_assert!(header.is_empty(), "decodes in full but its header fails");
        let ds = kdet::data::loader::DetectionDataset {
            records: vec![coco::ImageRecord {
                id: 1,
                path: dir.join(name),
                width: size.0,
                height: size.1,
                boxes: vec![[0.0, 0.0, 1.0, 1.0]],
                labels: vec![1],
                crowd: vec![],
            }],
            input: kdet::data::transforms::InputConfig {
                min_size: 32,
                max_size: 64,
                ..Default::default()
            },
            flip_prob: 0.5,
            color_jitter: 0.0,
            views: None,
        };
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let s = ds
            .sample(0, &mut rng)
            .map_err(|e| TestCaseError::fail(format!("passed the check, failed to load: {e}")))?;
        prop_assert_eq!(s.original_size, (size.1 as usize, size.0 as usize));
        prop_assert!(s.image.data.iter().all(|v| v.is_finite()));
    }
    Ok(())
}

#[test]
fn fuzz_image_decoding_mutated() {
    let d = tempfile::tempdir().unwrap();
    corpus_is_accepted(&image_corpus(), |b| check_image(d.path(), b));
    fuzz("image_mutated", 40, mutated(image_corpus()), |bytes| {
        check_image(d.path(), &bytes)
    });
}

// ---------------------------------------------------------------- weights and sidecars

/// A safetensors file built from parts: the header's entries (dtype, shape, byte range), the
/// header length field (right or not), the data.
fn safetensors_file() -> impl Strategy<Value = Vec<u8>> {
    let dtype = prop::sample::select(vec![
        "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "U32", "BOOL", "I8", "F8_E4M3", "X",
    ]);
    let entry = (
        prop::sample::select(vec![
            "meta.iter",
            "meta.optim_step",
            "meta.format",
            "meta.s.tensors_sha256",
            "meta.s.run.config",
            "model.w",
            "optim.momentum_buffer.w",
            "aux.distill.0.x",
            "backbone.body.conv1.weight",
        ]),
        usually(dtype.prop_map(Value::from)),
        usually(prop::collection::vec(0u64..6, 0..4).prop_map(|v| json!(v))),
        usually((0u64..80, 0u64..80).prop_map(|(a, b)| json!([a, b]))),
    );
    (
        prop::collection::vec(entry, 0..6),
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(json!({"format": "pt"}))),
            1 => value().prop_map(Some),
        ],
        prop::collection::vec(any::<u8>(), 0..96),
        prop_oneof![4 => Just(None), 1 => any::<u64>().prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(|(entries, meta, mut data, len_field, consistent)| {
            let mut header = serde_json::Map::new();
            let mut offset = 0u64;
            for (name, dtype, shape, offsets) in entries {
                if consistent && header.contains_key(name) {
                    continue;
                }
                // Consistent entries: offsets follow the shape and dtype.
                let offsets = if consistent {
                    let el: u64 = shape
                        .as_array()
                        .map(|d| d.iter().filter_map(Value::as_u64).product())
                        .unwrap_or(1);
                    let size = match dtype.as_str() {
                        Some("F64" | "I64") => 8,
                        Some("F32" | "I32" | "U32") => 4,
                        Some("F16" | "BF16") => 2,
                        _ => 1,
                    };
                    let r = json!([offset, offset + el * size]);
                    offset += el * size;
                    r
                } else {
                    offsets
                };
                header.insert(
                    name.to_string(),
                    json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}),
                );
            }
            if let Some(m) = meta {
                header.insert("__metadata__".into(), m);
            }
            if consistent {
                // The data then holds exactly what the offsets describe.
                data.resize(offset.min(1 << 16) as usize, 0);
            }
            let h = Value::Object(header).to_string().into_bytes();
            let mut out = len_field.unwrap_or(h.len() as u64).to_le_bytes().to_vec();
            out.extend(h);
            out.extend(data);
            out
        })
}

fn weights_corpus() -> Vec<Vec<u8>> {
    let f = root().join("tests/fixtures");
    let mut v: Vec<Vec<u8>> = [
        "main_v1/teacher/model.safetensors",
        "main_v1/student/checkpoint.safetensors",
        "pth/tiny_state_dict.pth",
        "pth/tiny_wrapped.pth",
    ]
    .iter()
    .map(|p| std::fs::read(f.join(p)).unwrap())
    .collect();
    // A small checkpoint of this version (with its checksum), so mutations reach its strings.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.safetensors");
    let t = candle_core::Tensor::new(&[1f32, 2.0, 3.0], &candle_core::Device::Cpu).unwrap();
    let strings =
        std::collections::BTreeMap::from([("run.config".to_string(), r#"{"seed":1}"#.to_string())]);
    kdet::engine::checkpoint::save(
        &p,
        &kdet::engine::checkpoint::State {
            model: &[("w".into(), t.clone())],
            aux: &[],
            optim: &std::collections::HashMap::from([("momentum_buffer.w".into(), t)]),
            optim_step: 0,
            iter: 3,
            strings: &strings,
        },
    )
    .unwrap();
    v.push(std::fs::read(&p).unwrap());
    v
}

/// Every reader of weights files answers with tensors or an error naming the file.
fn check_weights(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let p = dir.join("w.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let rules = kdet::models::weights::KeyRules::default();
    match kdet::models::weights::read_state_dict(&p, &rules) {
        Ok(_) => accepted(),
        Err(e) => names_file(&e.to_string(), &p)?,
    }
    if let Err(e) = kdet::engine::checkpoint::load(&p) {
        names_file(&e.to_string(), &p)?;
    }
    if let Err(e) = kdet::export::read_model_tensors(&p, Some("net1")) {
        names_file(&e.to_string(), &p)?;
    }
    Ok(())
}

#[test]
fn fuzz_weights_structured() {
    let d = tempfile::tempdir().unwrap();
    fuzz("weights_structured", 64, safetensors_file(), |bytes| {
        check_weights(d.path(), &bytes)
    });
}

#[test]
fn fuzz_weights_mutated() {
    let d = tempfile::tempdir().unwrap();
    corpus_is_accepted(&weights_corpus(), |b| check_weights(d.path(), b));
    fuzz("weights_mutated", 48, mutated(weights_corpus()), |bytes| {
        check_weights(d.path(), &bytes)
    });
}

/// A sidecar: a model section (usually plausible), class names and ids.
fn sidecar_document() -> impl Strategy<Value = Value> {
    let model = prop_oneof![
        3 => (
            usually(prop::sample::select(vec![json!("faster_rcnn"), json!("paa")])),
            usually(prop::sample::select(vec![json!(18), json!(34), json!(42), json!(0)])),
            usually((0.0f64..1.5).prop_map(Value::from)),
            usually((0u64..64).prop_map(Value::from)),
            usually((0u64..1000).prop_map(Value::from)),
        )
            .prop_map(|(arch, depth, width, ch, size)| json!({"arch": arch,
                "backbone": {"depth": depth, "width": width},
                "fpn": {"out_channels": ch}, "input": {"min_size": size, "max_size": size}})),
        1 => value(),
    ];
    (
        model,
        usually(prop::collection::vec(prop::sample::select(vec!["a", "b", ""]), 0..4).prop_map(|v| json!(v))),
        usually(prop::collection::vec(0u64..5, 0..4).prop_map(|v| json!(v))),
    )
        .prop_map(|(model, classes, ids)| json!({"model": model, "classes": classes, "category_ids": ids}))
}

/// A sidecar kdet accepted gives a valid model section and as many names as ids.
fn check_sidecar(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    use kdet::models::sidecar::Sidecar;
    let weights = dir.join("w.safetensors");
    let side = dir.join("w.json");
    std::fs::write(&side, bytes).unwrap();
    match Sidecar::find(&weights) {
        Err(e) => names_file(&e.to_string(), &side)?,
        Ok(None) => prop_assert!(false, "the sidecar was not found"),
        Ok(Some(s)) => {
            for r in [
                s.field::<Vec<String>>("classes").err(),
                s.field::<Vec<u64>>("category_ids").err(),
            ]
            .into_iter()
            .flatten()
            {
                names_file(&r.to_string(), &side)?;
            }
        }
    }
    match Sidecar::model_of(&weights) {
        Err(e) => names_file(&e.to_string(), &side)?,
        Ok(m) => {
            accepted();
            prop_assert!(m.validate("model").is_ok(), "an invalid model was accepted");
        }
    }
    Ok(())
}

#[test]
fn fuzz_sidecar_structured() {
    let d = tempfile::tempdir().unwrap();
    fuzz("sidecar_structured", 64, sidecar_document(), |doc| {
        check_sidecar(d.path(), doc.to_string().as_bytes())
    });
}

#[test]
fn fuzz_sidecar_mutated() {
    let d = tempfile::tempdir().unwrap();
    let corpus =
        vec![std::fs::read(root().join("tests/fixtures/main_v1/teacher/model.json")).unwrap()];
    corpus_is_accepted(&corpus, |b| check_sidecar(d.path(), b));
    fuzz("sidecar_mutated", 64, json_mutated(corpus), |bytes| {
        check_sidecar(d.path(), &bytes)
    });
}

// ---------------------------------------------------------------- regression cases

/// Found by `image_mutated`: an image whose contents are another format than its extension
/// says (here a JPEG named `im.png`) passed the check, which reads the format from the
/// contents, then failed in training, which went by the extension. Both read the contents now.
#[test]
fn regression_image_format_is_read_from_contents_everywhere() {
    let d = tempfile::tempdir().unwrap();
    let jpeg = image_corpus().pop().unwrap();
    assert!(jpeg.starts_with(&[0xFF, 0xD8]));
    check_image(d.path(), &jpeg).unwrap();
}

/// Found by `weights_structured`: a checkpoint whose `meta.iter` is not an i64 tensor gave
/// candle's "unexpected dtype" without the file's name.
#[test]
fn regression_checkpoint_counters_of_another_type_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    let mut all = std::collections::HashMap::new();
    for k in ["meta.iter", "meta.optim_step"] {
        all.insert(
            k.to_string(),
            candle_core::Tensor::new(&[3u8], &candle_core::Device::Cpu).unwrap(),
        );
    }
    let p = d.path().join("w.safetensors");
    candle_core::safetensors::save(&all, &p).unwrap();
    let e = kdet::engine::checkpoint::load(&p)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("w.safetensors: not a valid kdet checkpoint"),
        "{e}"
    );
}

/// Found by `weights_mutated` (tools/fuzz.sh, seed 1796179007): a PyTorch zip whose pickle gives
/// a tensor fewer rebuild arguments than torch writes made candle's reader panic (`removal
/// index (is 4) should be < len (is 4)`). kdet catches it: an error naming the file.
#[test]
fn regression_malformed_pytorch_pickle_is_an_error_not_a_panic() {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz/pth_short_rebuild_args.pth"),
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    check_weights(d.path(), &bytes).unwrap();
    let p = d.path().join("w.safetensors");
    let e = kdet::models::weights::read_state_dict(&p, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid PyTorch checkpoint"), "{e}");
}
