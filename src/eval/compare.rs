//! `kdet compare`: did distillation really help? Per-metric and per-class deltas between runs on
//! the same val set, with bootstrap confidence intervals over images (hotcoco's `compare` for
//! detectors; `eval::classify::compare` for classifiers: top-1, top-5, many / medium / few), as
//! a markdown table and a PNG chart. With more than two runs, each is compared with the first.

use std::path::{Path, PathBuf};

use hotcoco::{compare as hc_compare, COCOeval, CompareOpts};
use serde::Deserialize;

use crate::data::coco::{load_detections, load_ground_truth, Purpose};
use crate::error::{Error, Result};
use crate::plot::{delta_chart, DeltaBar};

use super::classify::{self, read_predictions, ClassSummary};
use super::{evaluator, STAT_NAMES};

/// What a run directory records about its evaluation (`eval.json`, written by the trainer).
#[derive(Debug, Deserialize)]
pub struct RunEval {
    /// Ground truth the run was evaluated on: a COCO file, or a classification split's folder.
    pub gt: PathBuf,
    /// Detections file (COCO results), relative to the run directory.
    #[serde(default)]
    pub detections: Option<PathBuf>,
    /// `classification` for a classifier run.
    #[serde(default)]
    pub task: Option<String>,
    /// A classifier run's predictions file.
    #[serde(default)]
    pub predictions: Option<PathBuf>,
    /// A classifier run's training images per class.
    #[serde(default)]
    pub train_counts: Vec<usize>,
    /// A classifier run's summary (for the class names).
    #[serde(default)]
    pub summary: Option<ClassSummary>,
    /// A classifier run's k-NN and linear-probe predictions files (`knn`, `probe`).
    #[serde(default)]
    pub representation: std::collections::BTreeMap<String, PathBuf>,
}

/// A run to compare: a run directory (with `eval.json`) or a COCO results file.
#[derive(Debug, Clone)]
pub struct RunInput {
    pub name: String,
    /// Its detections (COCO results) or, for a classifier run, its predictions.
    pub detections: PathBuf,
    /// The ground truth named by the run, if it is a run directory.
    pub gt: Option<PathBuf>,
    /// A classifier run: its training images per class and class names.
    pub classes: Option<(Vec<usize>, Vec<String>)>,
    /// A classifier run's k-NN and linear-probe predictions, when it measured them.
    pub representation: Option<[PathBuf; 2]>,
    /// A classifier run that learned without labels: its head's predictions mean nothing.
    pub self_supervised: bool,
}

impl RunInput {
    pub fn resolve(p: &Path) -> Result<Self> {
        let name = p
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string());
        if p.is_dir() {
            let f = p.join("eval.json");
            let bytes = crate::error::read_file(&f)?;
            let e: RunEval = crate::error::parse_json(&f, &bytes)?;
            let gt = if e.gt.is_absolute() {
                e.gt
            } else {
                p.join(e.gt)
            };
            let classification = e.task.as_deref() == Some("classification");
            let file = if classification {
                &e.predictions
            } else {
                &e.detections
            };
            let file = file.as_ref().ok_or_else(|| {
                Error::located(
                    &f,
                    if classification {
                        "predictions"
                    } else {
                        "detections"
                    },
                    "missing",
                )
            })?;
            let self_supervised = e.summary.as_ref().is_some_and(|s| s.self_supervised);
            let representation = match (e.representation.get("knn"), e.representation.get("probe"))
            {
                (Some(k), Some(pr)) => Some([p.join(k), p.join(pr)]),
                _ => None,
            };
            let classes = classification.then(|| {
                let names = e
                    .summary
                    .map(|s| s.per_class.into_iter().map(|c| c.name).collect())
                    .unwrap_or_default();
                (e.train_counts, names)
            });
            Ok(Self {
                name,
                detections: p.join(file),
                gt: Some(gt),
                classes,
                representation,
                self_supervised,
            })
        } else if p.is_file() {
            // Another network's predictions in a classifier run's folder (DML's, DCM's, FFSD's
            // `net2_predictions.json`): that run's ground truth and classes.
            if let Some(dir) = p.parent().filter(|d| d.join("eval.json").is_file()) {
                let run = Self::resolve(dir)?;
                if run.classes.is_some() {
                    return Ok(Self {
                        name: name.trim_end_matches(".json").to_string(),
                        detections: p.to_path_buf(),
                        ..run
                    });
                }
            }
            Ok(Self {
                name: name.trim_end_matches(".json").to_string(),
                detections: p.to_path_buf(),
                gt: None,
                classes: None,
                representation: None,
                self_supervised: false,
            })
        } else {
            Err(Error::msg(format!(
                "{}: no such run directory or detections file",
                p.display()
            )))
        }
    }
}

/// What predicted a classifier run's val images: its head (`predictions.json`), or the k-NN and
/// the linear probe on its frozen features (`eval::representation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Predictor {
    Head,
    Knn,
    Probe,
}

impl Predictor {
    /// The predictors a comparison of `runs` scores: the head unless a run learned without
    /// labels (its head was never trained), the k-NN and the probe where every run has them.
    pub fn shared<'a>(runs: impl IntoIterator<Item = &'a RunInput> + Clone) -> Vec<Self> {
        let mut v = vec![];
        if !runs.clone().into_iter().any(|r| r.self_supervised) {
            v.push(Predictor::Head);
        }
        if runs.into_iter().all(|r| r.representation.is_some()) {
            v.extend([Predictor::Knn, Predictor::Probe]);
        }
        v
    }

    /// Its predictions file in `run`.
    pub fn file(self, run: &RunInput) -> &Path {
        match (self, &run.representation) {
            (Predictor::Knn, Some([k, _])) => k,
            (Predictor::Probe, Some([_, p])) => p,
            _ => &run.detections,
        }
    }

    /// The metrics it reports: the head's top-1, top-5 (and frequency groups), the
    /// representation's top-1.
    pub fn metric_names(self, thresholds: Option<&classify::GroupThresholds>) -> Vec<&'static str> {
        match self {
            Predictor::Head => classify::metric_names(thresholds),
            Predictor::Knn => vec!["knn_top1"],
            Predictor::Probe => vec!["probe_top1"],
        }
    }

    /// The training images per class its metrics use: the head's groups; none for the others.
    pub fn counts(self, counts: &[usize]) -> &[usize] {
        match self {
            Predictor::Head => counts,
            _ => &[],
        }
    }
}

/// Options of a comparison.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub bootstrap: usize,
    pub confidence: f64,
    pub seed: u64,
}

impl Default for CompareOptions {
    fn default() -> Self {
        // 1000 resamples and a 95 % interval, as is usual for bootstrap CIs on detection metrics.
        Self {
            bootstrap: 1000,
            confidence: 0.95,
            seed: 0,
        }
    }
}

/// One row of the comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricDelta {
    pub metric: String,
    pub a: f64,
    pub b: f64,
    pub delta: f64,
    pub ci: Option<(f64, f64)>,
    /// Fraction of bootstrap samples where B beat A.
    pub prob_b_better: Option<f64>,
}

/// A comparison of run B against run A.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub num_images: usize,
    pub confidence: f64,
    pub metrics: Vec<MetricDelta>,
    /// Per class: (category id, name, AP (top-1) of A, of B, delta).
    pub per_class: Vec<(u64, String, f64, f64, f64)>,
    /// What the per-class numbers are: `AP` or `top-1`.
    pub per_class_metric: String,
}

impl Comparison {
    /// Markdown tables: summary metrics, then per-class AP.
    pub fn to_markdown(&self) -> String {
        let pct = (self.confidence * 100.0).round();
        let mut s = format!(
            "### {} vs {} ({} images, {pct}% bootstrap CI)\n\nOne run per arm: the interval covers the val images only — training variance (seeds) is NOT included; compare multi-seed runs (`kdet train CONFIG --seeds 3`) for that.\n\n| metric | {} | {} | Δ | {pct}% CI | P(Δ>0) |\n|---|---:|---:|---:|---|---:|\n",
            self.b, self.a, self.num_images, self.a, self.b
        );
        for m in &self.metrics {
            // −1 is COCO's "no ground truth" (APl on 128 px images), not a score.
            if m.a < 0.0 || m.b < 0.0 {
                let v = |x: f64| {
                    if x < 0.0 {
                        "n/a".into()
                    } else {
                        format!("{x:.3}")
                    }
                };
                s.push_str(&format!(
                    "| {} | {} | {} | n/a | n/a | n/a |\n",
                    m.metric,
                    v(m.a),
                    v(m.b)
                ));
                continue;
            }
            let ci =
                m.ci.map_or("–".into(), |(lo, hi)| format!("[{lo:+.3}, {hi:+.3}]"));
            let p = m.prob_b_better.map_or("–".into(), |p| format!("{p:.2}"));
            s.push_str(&format!(
                "| {} | {:.3} | {:.3} | {:+.3} | {ci} | {p} |\n",
                m.metric, m.a, m.b, m.delta
            ));
        }
        let k = &self.per_class_metric;
        s.push_str(&format!(
            "\n| class | {k} {} | {k} {} | Δ |\n|---|---:|---:|---:|\n",
            self.a, self.b
        ));
        for (_, name, a, b, d) in &self.per_class {
            s.push_str(&format!("| {name} | {a:.3} | {b:.3} | {d:+.3} |\n"));
        }
        s
    }

    /// Whether B beats A on `metric` beyond the confidence interval.
    pub fn significant_gain(&self, metric: &str) -> bool {
        self.metrics
            .iter()
            .any(|m| m.metric == metric && m.ci.is_some_and(|c| c.0 > 0.0))
    }
}

pub(crate) fn evaluated(gt: &hotcoco::Dataset, run: &RunInput, gt_file: &Path) -> Result<COCOeval> {
    let dets = load_detections(&run.detections, gt, gt_file)?;
    let mut ev = evaluator(gt.clone(), dets)?;
    ev.evaluate().map_err(|e| {
        Error::msg(format!(
            "{}: evaluation failed: {e}",
            run.detections.display()
        ))
    })?;
    Ok(ev)
}

/// Compare every run after the first with the first. `gt` overrides the runs' own ground truth.
pub fn compare_runs(
    runs: &[RunInput],
    gt: Option<&Path>,
    opts: &CompareOptions,
) -> Result<Vec<Comparison>> {
    if runs.len() < 2 {
        return Err(Error::msg("compare needs at least two runs"));
    }
    if let Some(bad) = runs
        .iter()
        .find(|r| r.classes.is_some() != runs[0].classes.is_some())
    {
        return Err(Error::msg(format!(
            "{} and {} are not the same kind of run (a classifier and a detector)",
            runs[0].name, bad.name
        )));
    }
    if runs[0].classes.is_some() {
        return compare_classifiers(runs, opts);
    }
    let gt_file = match gt {
        Some(g) => g.to_path_buf(),
        None => runs[0].gt.clone().ok_or_else(|| {
            Error::msg(format!(
                "{}: a detections file needs --gt GT.json",
                runs[0].detections.display()
            ))
        })?,
    };
    if gt.is_none() {
        for r in &runs[1..] {
            if let Some(g) = &r.gt {
                if std::fs::canonicalize(g).ok() != std::fs::canonicalize(&gt_file).ok() {
                    return Err(Error::msg(format!(
                        "{} was evaluated on {}, {} on {}: compare runs on the same val set",
                        r.name,
                        g.display(),
                        runs[0].name,
                        gt_file.display()
                    )));
                }
            }
        }
    }
    let gt_data = load_ground_truth(&gt_file, Purpose::Eval)?.dataset;
    let base = evaluated(&gt_data, &runs[0], &gt_file)?;
    let hc_opts = CompareOpts {
        n_bootstrap: opts.bootstrap,
        seed: opts.seed,
        confidence: opts.confidence,
    };
    runs[1..]
        .iter()
        .map(|r| {
            let ev = evaluated(&gt_data, r, &gt_file)?;
            let res = hc_compare(&base, &ev, &hc_opts)
                .map_err(|e| Error::msg(format!("compare: {e}")))?;
            let metrics = STAT_NAMES
                .iter()
                .map(|&k| {
                    let ci = res.ci.as_ref().and_then(|c| c.get(k));
                    MetricDelta {
                        metric: k.to_string(),
                        a: res.metrics_a.get(k).copied().unwrap_or(-1.0),
                        b: res.metrics_b.get(k).copied().unwrap_or(-1.0),
                        delta: res.deltas.get(k).copied().unwrap_or(0.0),
                        ci: ci.map(|c| (c.lower, c.upper)),
                        prob_b_better: ci.map(|c| c.prob_positive),
                    }
                })
                .collect();
            // Per-class rows in category-id order (hotcoco lists them by delta).
            let mut per_class: Vec<_> = res
                .per_category
                .iter()
                .map(|c| (c.cat_id, c.cat_name.clone(), c.ap_a, c.ap_b, c.delta))
                .collect();
            per_class.sort_by_key(|r| r.0);
            Ok(Comparison {
                a: runs[0].name.clone(),
                b: r.name.clone(),
                num_images: res.num_images,
                confidence: opts.confidence,
                metrics,
                per_class,
                per_class_metric: "AP".into(),
            })
        })
        .collect()
}

/// Classifier runs: every run's predictions against the first's, on the same val images.
fn compare_classifiers(runs: &[RunInput], opts: &CompareOptions) -> Result<Vec<Comparison>> {
    for r in &runs[1..] {
        let (a, b) = (&runs[0].gt, &r.gt);
        if a.as_ref().and_then(|p| std::fs::canonicalize(p).ok())
            != b.as_ref().and_then(|p| std::fs::canonicalize(p).ok())
        {
            return Err(Error::msg(format!(
                "{} and {} were evaluated on different val splits: compare runs on the same val set",
                runs[0].name, r.name
            )));
        }
    }
    let (counts, names) = runs[0].classes.clone().unwrap_or_default();
    let ids: Vec<u64> = (1..=names.len() as u64).collect();
    runs[1..]
        .iter()
        .map(|r| {
            let predictors = Predictor::shared([&runs[0], r]);
            let mut metrics = vec![];
            let mut per_class = vec![];
            for &pr in &predictors {
                let base = read_predictions(pr.file(&runs[0]))?;
                let other = read_predictions(pr.file(r))?;
                let c = pr.counts(&counts);
                let deltas =
                    classify::compare(&base, &other, c, opts.bootstrap, opts.confidence, opts.seed)
                        .map_err(|e| Error::msg(format!("{} vs {}: {e}", runs[0].name, r.name)))?;
                let wanted = pr.metric_names(classify::GroupThresholds::scaled(c).as_ref());
                metrics.extend(deltas.into_iter().zip(wanted).map(|(d, name)| MetricDelta {
                    metric: name.to_string(),
                    a: d.a,
                    b: d.b,
                    delta: d.b - d.a,
                    ci: d.ci,
                    prob_b_better: d.prob_b_better,
                }));
                // Per class: the first predictor's (the head's, else the k-NN's).
                if per_class.is_empty() {
                    let sa = ClassSummary::new(&base, &names, &ids, c);
                    let sb = ClassSummary::new(&other, &names, &ids, c);
                    per_class = sa
                        .per_class
                        .iter()
                        .zip(&sb.per_class)
                        .map(|(x, y)| {
                            (
                                x.category_id,
                                x.name.clone(),
                                x.top1,
                                y.top1,
                                y.top1 - x.top1,
                            )
                        })
                        .collect();
                }
            }
            Ok(Comparison {
                a: runs[0].name.clone(),
                b: r.name.clone(),
                num_images: read_predictions(&runs[0].detections)?.len(),
                confidence: opts.confidence,
                metrics,
                per_class,
                per_class_metric: match predictors.first() {
                    Some(Predictor::Knn) => "k-NN top-1".into(),
                    _ => "top-1".into(),
                },
            })
        })
        .collect()
}

/// Draw a comparison as a PNG bar chart (summary metrics, then per-class AP).
pub fn chart(c: &Comparison, path: &Path) -> Result<()> {
    // Metrics one run could not compute (-1, e.g. APl without large objects) are left out.
    let mut bars: Vec<DeltaBar> = c
        .metrics
        .iter()
        .filter(|m| m.a >= 0.0 && m.b >= 0.0)
        .map(|m| DeltaBar {
            label: m.metric.clone(),
            delta: m.delta,
            ci: m.ci,
        })
        .collect();
    bars.extend(c.per_class.iter().map(|(_, n, _, _, d)| DeltaBar {
        label: format!("{} {n}", c.per_class_metric),
        delta: *d,
        ci: None,
    }));
    delta_chart(path, &format!("{} − {}", c.b, c.a), &bars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_two_runs_on_fixture() {
        let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval");
        let gt = d.join("random.gt.json");
        let dir = tempfile::tempdir().unwrap();
        // Run B: the fixture's detections. Run A: the same with every other detection dropped.
        let dets: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(d.join("random.dt.json")).unwrap()).unwrap();
        let a: Vec<_> = dets.iter().step_by(2).cloned().collect();
        std::fs::write(
            dir.path().join("weak.json"),
            serde_json::to_vec(&a).unwrap(),
        )
        .unwrap();
        let runs = vec![
            RunInput::resolve(&dir.path().join("weak.json")).unwrap(),
            RunInput::resolve(&d.join("random.dt.json")).unwrap(),
        ];
        let opts = CompareOptions {
            bootstrap: 200,
            ..Default::default()
        };
        let c = compare_runs(&runs, Some(&gt), &opts).unwrap();
        assert_eq!(c.len(), 1);
        let ap = &c[0].metrics[0];
        assert_eq!(ap.metric, "AP");
        let full = crate::eval::evaluate_files(&gt, &d.join("random.dt.json")).unwrap();
        assert!((ap.b - full.stats[0]).abs() < 1e-12);
        assert!(ap.delta > 0.0 && (ap.delta - (ap.b - ap.a)).abs() < 1e-12);
        let (lo, hi) = ap.ci.unwrap();
        assert!(lo <= ap.delta && ap.delta <= hi);
        assert!(c[0].significant_gain("AP"), "{}", c[0].to_markdown());
        let md = c[0].to_markdown();
        assert!(md.contains("| AP |") && md.contains("95% CI"));
        let png = dir.path().join("cmp.png");
        chart(&c[0], &png).unwrap();
        assert!(image::open(&png).unwrap().width() == 900);
        // A run without a ground truth needs --gt.
        assert!(compare_runs(&runs, None, &opts)
            .unwrap_err()
            .to_string()
            .contains("--gt"));
    }
}
