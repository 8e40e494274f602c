//! COCO bbox evaluation on hotcoco (bit-identical to pycocotools). kdet parses and validates the
//! inputs once (`data::coco`), hands them to hotcoco without a second parse, and adds what a
//! distillation user needs around it: per-class tables, streaming evaluation during training
//! ([`streaming`]), run comparison with bootstrap confidence intervals ([`compare`]), and dataset
//! checks ([`check`]); for classifiers, k-NN and linear-probe accuracy of frozen features
//! ([`representation`]).

pub mod check;
pub mod classify;
pub mod compare;
pub mod multiseed;
pub mod representation;
pub mod streaming;

use std::path::Path;

use hotcoco::types::{Annotation, Dataset};
use hotcoco::{COCOeval, IouType, COCO};
use serde::{Deserialize, Serialize};

use crate::data::coco::{load_detections, load_ground_truth, Purpose};
use crate::error::{Error, Result};

/// Names of the 12 COCO summary numbers, in `summarize()` order.
pub const STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

/// AP of one category: mean of the interpolated precision over IoU 0.50:0.95 (`ap`) or at 0.50
/// (`ap50`), area "all", maxDets 100, over the entries pycocotools computed (> -1); -1 when none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassAp {
    pub category_id: u64,
    pub name: String,
    pub ap: f64,
    pub ap50: f64,
}

/// The result of one evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalSummary {
    /// The 12 numbers of pycocotools' `COCOeval.stats`.
    pub stats: Vec<f64>,
    pub per_class: Vec<ClassAp>,
    /// The 12 lines pycocotools' `summarize()` prints.
    #[serde(skip)]
    pub lines: Vec<String>,
}

impl EvalSummary {
    /// `{"stats": [...], "per_class": [...]}`, the `--format json` output.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("summary serialises")
    }

    /// The summary lines, then a per-class table.
    pub fn to_text(&self, per_class: bool) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        if per_class {
            s.push_str(&per_class_table(&self.per_class));
        }
        s
    }

    /// Named stats (`AP`, `AP50`, …).
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        STAT_NAMES
            .iter()
            .copied()
            .zip(self.stats.iter().copied())
            .collect()
    }
}

/// A markdown table of per-class AP and AP50 (-1 printed as "–").
pub fn per_class_table(rows: &[ClassAp]) -> String {
    let f = |v: f64| {
        if v < 0.0 {
            "–".to_string()
        } else {
            format!("{v:.3}")
        }
    };
    let mut s = String::from("\n| id | class | AP | AP50 |\n|---:|---|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.category_id,
            r.name,
            f(r.ap),
            f(r.ap50)
        ));
    }
    s
}

/// Run evaluate → accumulate → summarize on a finished evaluator and collect the summary.
pub fn summarize(ev: &mut COCOeval) -> Result<EvalSummary> {
    if ev.accumulated().is_none() {
        ev.accumulate();
    }
    ev.summarize_lines();
    let stats = ev.stats().map(|s| s.to_vec()).unwrap_or_default();
    let lines = pycocotools_lines(&stats);
    let per_class = per_class_ap(ev);
    Ok(EvalSummary {
        stats,
        per_class,
        lines,
    })
}

/// The 12 summary lines exactly as pycocotools' `COCOeval.summarize()` prints them
/// (`' {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}'`).
pub fn pycocotools_lines(stats: &[f64]) -> Vec<String> {
    const ROWS: [(bool, &str, &str, u32); 12] = [
        (true, "0.50:0.95", "all", 100),
        (true, "0.50", "all", 100),
        (true, "0.75", "all", 100),
        (true, "0.50:0.95", "small", 100),
        (true, "0.50:0.95", "medium", 100),
        (true, "0.50:0.95", "large", 100),
        (false, "0.50:0.95", "all", 1),
        (false, "0.50:0.95", "all", 10),
        (false, "0.50:0.95", "all", 100),
        (false, "0.50:0.95", "small", 100),
        (false, "0.50:0.95", "medium", 100),
        (false, "0.50:0.95", "large", 100),
    ];
    ROWS.iter()
        .zip(stats)
        .map(|(&(ap, iou, area, max_dets), v)| {
            let (title, ty) = if ap { ("Average Precision", "(AP)") } else { ("Average Recall", "(AR)") };
            format!(" {title:<18} {ty} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_dets:>3} ] = {v:0.3}")
        })
        .collect()
}

fn per_class_ap(ev: &COCOeval) -> Vec<ClassAp> {
    let Some(acc) = ev.accumulated() else {
        return vec![];
    };
    let params = &ev.params;
    let (a, m) = (params.all_area_idx(), params.max_det_idx());
    let t50 = params
        .iou_thrs
        .iter()
        .position(|t| (t - 0.5).abs() < 1e-9)
        .unwrap_or(0);
    let gt = ev.coco_gt();
    let mean = |ts: std::ops::Range<usize>, k: usize| {
        let (mut sum, mut n) = (0.0, 0usize);
        for t in ts {
            for r in 0..acc.shape.r {
                let v = acc.precision[acc.precision_idx(t, r, k, a, m)];
                if v > -1.0 {
                    sum += v;
                    n += 1;
                }
            }
        }
        if n == 0 {
            -1.0
        } else {
            sum / n as f64
        }
    };
    acc.cat_ids
        .iter()
        .enumerate()
        .map(|(k, &id)| ClassAp {
            category_id: id,
            name: gt.get_cat(id).map(|c| c.name.clone()).unwrap_or_default(),
            ap: mean(0..acc.shape.t, k),
            ap50: mean(t50..t50 + 1, k),
        })
        .collect()
}

/// Evaluate validated detections against a validated ground truth (bbox).
pub fn evaluate(gt: Dataset, dets: Vec<Annotation>) -> Result<EvalSummary> {
    let mut ev = evaluator(gt, dets)?;
    ev.evaluate()
        .map_err(|e| Error::msg(format!("evaluation failed: {e}")))?;
    summarize(&mut ev)
}

/// A bbox `COCOeval` for a ground truth and detections (evaluate() not yet run).
pub fn evaluator(gt: Dataset, dets: Vec<Annotation>) -> Result<COCOeval> {
    let gt = COCO::from_dataset(gt);
    let dt = gt
        .load_res_anns(dets)
        .map_err(|e| Error::msg(format!("detections rejected by the evaluator: {e}")))?;
    Ok(COCOeval::new(gt, dt, IouType::Bbox))
}

/// `kdet eval --gt --dt`: load both files with located errors, then evaluate.
pub fn evaluate_files(gt_file: &Path, dt_file: &Path) -> Result<EvalSummary> {
    let gt = load_ground_truth(gt_file, Purpose::Eval)?;
    let dets = load_detections(dt_file, &gt.dataset, gt_file)?;
    evaluate(gt.dataset, dets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval")
    }

    #[derive(Deserialize)]
    struct Expected {
        stats: Vec<f64>,
        per_class: Vec<ClassAp>,
        summary_text: String,
    }

    /// Every fixture made by tools/make_eval_fixtures.py with pycocotools.
    pub(crate) fn cases() -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(fixtures())
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                n.strip_suffix(".expected.json").map(str::to_string)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn parity_with_pycocotools() {
        let names = cases();
        assert!(names.len() >= 8, "fixtures missing: {names:?}");
        for name in names {
            let d = fixtures();
            let got = evaluate_files(
                &d.join(format!("{name}.gt.json")),
                &d.join(format!("{name}.dt.json")),
            )
            .unwrap();
            let want: Expected = serde_json::from_slice(
                &std::fs::read(d.join(format!("{name}.expected.json"))).unwrap(),
            )
            .unwrap();
            assert_eq!(got.stats.len(), 12);
            for (i, (g, w)) in got.stats.iter().zip(&want.stats).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-9,
                    "{name}: stats[{i}] ({}) {g} vs pycocotools {w}",
                    STAT_NAMES[i]
                );
            }
            assert_eq!(got.per_class.len(), want.per_class.len(), "{name}");
            for (g, w) in got.per_class.iter().zip(&want.per_class) {
                assert_eq!((g.category_id, &g.name), (w.category_id, &w.name), "{name}");
                assert!(
                    (g.ap - w.ap).abs() <= 1e-9 && (g.ap50 - w.ap50).abs() <= 1e-9,
                    "{name}: {g:?} vs {w:?}"
                );
            }
            assert_eq!(
                got.lines.join("\n").trim_end(),
                want.summary_text.trim_end(),
                "{name}"
            );
        }
    }

    #[test]
    fn json_output_schema() {
        let d = fixtures();
        let s = evaluate_files(&d.join("basic.gt.json"), &d.join("basic.dt.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), vec!["per_class", "stats"]);
        assert_eq!(v["stats"].as_array().unwrap().len(), 12);
        for row in v["per_class"].as_array().unwrap() {
            let keys: Vec<_> = row.as_object().unwrap().keys().cloned().collect();
            assert_eq!(keys, vec!["ap", "ap50", "category_id", "name"]);
        }
        let text = s.to_text(true);
        assert!(
            text.contains("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]")
        );
        assert!(text.contains("| id | class | AP | AP50 |"));
    }
}
