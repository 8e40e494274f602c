//! `kdet compare` over groups of runs: several training seeds per arm. The interval of a
//! difference then covers both sources of variance a user's "did distillation help?" is
//! exposed to — the training run (initialisation, data order, augmentation, samplers: the
//! seed) and the val images — not only the second, as a bootstrap over one run's images does
//! (Bouthillier et al. 2021, "Accounting for variance in machine learning benchmarks", MLSys:
//! randomise every source of variation and report the spread over all of them).
//!
//! The interval is a two-level (stratified) bootstrap, as rliable does over runs within each
//! task (Agarwal et al. 2021, "Deep reinforcement learning at the edge of the statistical
//! precipice", NeurIPS): each replicate draws the seeds of each arm with replacement (the same
//! seeds for both arms when they are paired by seed), then a resample of the val images, on
//! which every drawn run is scored; the replicate's Δ is the mean over B's drawn runs minus the
//! mean over A's. One image resample serves all runs of a replicate because all of them were
//! evaluated on the same val images: the test set's sampling error is common to them, and
//! drawing it afresh per seed would average it away (by 1/√seeds) and understate it. With every
//! seed giving the same run the interval is therefore exactly the image-only interval; with one
//! run per arm the table says that training variance is not included.
//!
//! Image resamples follow `kdet compare`'s single-run convention: detectors as hotcoco's
//! `compare` (images drawn with replacement, then as a set, re-accumulated once per resample on
//! one evaluation per run via `COCOeval::slice_by`); classifiers with repeats.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::data::coco::{load_ground_truth, Purpose};
use crate::error::{Error, Result};
use crate::plot::{delta_chart, DeltaBar};

use super::classify::{self, read_predictions, GroupThresholds};
use super::compare::{evaluated, CompareOptions, Predictor, RunInput};
use super::STAT_NAMES;

/// The folder of one seed's run inside a multi-seed run folder: `seed-<k>`.
pub const SEED_DIR_PREFIX: &str = "seed-";

/// One run of an arm and the training seed it was trained with, when known (pairing).
#[derive(Debug, Clone)]
pub struct SeedRun {
    pub seed: Option<u64>,
    pub run: RunInput,
}

/// One side of a comparison: runs of one config, one per training seed.
#[derive(Debug, Clone)]
pub struct Arm {
    pub name: String,
    pub runs: Vec<SeedRun>,
}

/// The `seed-<k>` run folders of `dir`, by seed (empty when it holds none).
pub fn seed_dirs(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = vec![];
    if !dir.is_dir() {
        return Ok(found);
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::msg(format!("{}: cannot list: {e}", dir.display())))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let seed = name
            .strip_prefix(SEED_DIR_PREFIX)
            .and_then(|k| k.parse().ok());
        if let (Some(seed), true) = (seed, e.path().is_dir()) {
            found.push((seed, e.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The training seed a run folder recorded in its `config.json`, if any; for a results file
/// (Co-LAD's `net1_detections.json`), that of the run folder holding it.
fn recorded_seed(run: &Path) -> Option<u64> {
    let dir = if run.is_file() { run.parent()? } else { run };
    let text = std::fs::read(dir.join("config.json")).ok()?;
    serde_json::from_slice::<serde_json::Value>(&text).ok()?["seed"].as_u64()
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

impl Arm {
    /// A multi-seed run folder (its `seed-<k>` runs), a single run folder or a results file.
    pub fn resolve(p: &Path) -> Result<Self> {
        let seeds = seed_dirs(p)?;
        if seeds.is_empty() {
            return Self::from_runs(&name_of(p), &[p.to_path_buf()]);
        }
        if p.join("eval.json").is_file() {
            eprintln!(
                "{}: comparing its {} seed-<k> runs, not the single run at its root",
                p.display(),
                seeds.len()
            );
        }
        let mut runs = vec![];
        for (seed, dir) in seeds {
            if !dir.join("eval.json").is_file() {
                return Err(Error::msg(format!(
                    "{}: seed {seed} has not finished (no eval.json): finish it with `kdet train CONFIG --seeds … --resume`, or remove the folder",
                    dir.display()
                )));
            }
            runs.push(SeedRun {
                seed: Some(seed),
                run: RunInput::resolve(&dir)?,
            });
        }
        Ok(Self {
            name: name_of(p),
            runs,
        })
    }

    /// Runs named one by one (`--arm a,b,c`); each one's seed is read from its `config.json`.
    pub fn from_runs(name: &str, paths: &[PathBuf]) -> Result<Self> {
        let runs = paths
            .iter()
            .map(|p| {
                Ok(SeedRun {
                    seed: recorded_seed(p),
                    run: RunInput::resolve(p)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name: name.to_string(),
            runs,
        })
    }

    fn seeds(&self) -> Vec<Option<u64>> {
        self.runs.iter().map(|r| r.seed).collect()
    }
}

/// The name of an `--arm` list after its first run: `X` for `X/seed-<k>`, `X/net1` for
/// `X/seed-<k>/net1_detections.json`, else the folder's or file's name.
fn list_name(first: &Path) -> String {
    // Relative paths (`seed-0`) have an empty parent: name them from where they are.
    let first = &first.canonicalize().unwrap_or_else(|_| first.to_path_buf());
    let seed_dir = |p: &Path| name_of(p).starts_with(SEED_DIR_PREFIX);
    if seed_dir(first) {
        if let Some(parent) = first.parent() {
            // What follows `seed-<k>` (`seed-0_baseline`) tells two arms in one folder apart.
            let name = name_of(first);
            let suffix =
                name[SEED_DIR_PREFIX.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
            return format!("{}{suffix}", name_of(parent));
        }
    }
    if let (true, Some(dir)) = (first.is_file(), first.parent()) {
        if let (true, Some(parent)) = (seed_dir(dir), dir.parent()) {
            let stem = name_of(first);
            let stem = stem
                .trim_end_matches(".json")
                .trim_end_matches("_detections");
            return format!("{}/{stem}", name_of(parent));
        }
    }
    name_of(first)
}

/// Whether `kdet compare`'s inputs call for the comparison of groups: `--arm` lists, or a
/// multi-seed run folder among the positional runs.
pub fn wants_groups(runs: &[PathBuf], arms: &[String]) -> bool {
    !arms.is_empty()
        || runs
            .iter()
            .any(|r| seed_dirs(r).is_ok_and(|s| !s.is_empty()))
}

/// The arms of `kdet compare`: each positional path (a multi-seed folder, a run, a results
/// file), or each `--arm a,b,c` list, named after its first run's folder.
pub fn arms(runs: &[PathBuf], arm_lists: &[String]) -> Result<Vec<Arm>> {
    if !arm_lists.is_empty() {
        return arm_lists
            .iter()
            .map(|list| {
                let paths: Vec<PathBuf> = list
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| PathBuf::from(s.trim()))
                    .collect();
                let first = paths
                    .first()
                    .ok_or_else(|| Error::msg(format!("--arm {list:?}: names no run")))?;
                let name = list_name(first);
                Arm::from_runs(&name, &paths)
            })
            .collect();
    }
    runs.iter().map(|r| Arm::resolve(r)).collect()
}

/// A run's metrics on all val images (`point`) and on each image resample of the comparison
/// (`resampled[b][metric]`); −1 where a metric has no ground truth (COCO's convention).
#[derive(Debug, Clone, PartialEq)]
pub struct RunValues {
    pub point: Vec<f64>,
    pub resampled: Vec<Vec<f64>>,
}

/// `n` resamples of `n_images` image indices drawn with replacement.
pub fn image_resamples(n_images: usize, n: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            (0..n_images)
                .map(|_| rng.random_range(0..n_images.max(1)))
                .collect()
        })
        .collect()
}

/// The interval of one metric's Δ and P(Δ > 0), from the replicates where every drawn run has
/// the metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
    pub prob_b_better: f64,
}

/// Mean of the runs `pick` on resample `b` (or on all images when `b` is `None`), `None` when
/// one of them lacks the metric.
fn mean_of(runs: &[RunValues], pick: &[usize], b: Option<usize>, metric: usize) -> Option<f64> {
    let mut sum = 0.0;
    for &i in pick {
        let v = match b {
            Some(b) => runs[i].resampled[b][metric],
            None => runs[i].point[metric],
        };
        if v < 0.0 {
            return None;
        }
        sum += v;
    }
    Some(sum / pick.len().max(1) as f64)
}

/// Each replicate's draw of run indices: `pairs` (index in A, index in B) drawn together when
/// the arms are paired by seed, else each arm's runs drawn independently.
fn draw_runs(
    rng: &mut ChaCha8Rng,
    n_a: usize,
    n_b: usize,
    pairs: Option<&[(usize, usize)]>,
) -> (Vec<usize>, Vec<usize>) {
    match pairs {
        Some(p) => (0..p.len())
            .map(|_| p[rng.random_range(0..p.len())])
            .unzip(),
        None => (
            (0..n_a).map(|_| rng.random_range(0..n_a)).collect(),
            (0..n_b).map(|_| rng.random_range(0..n_b)).collect(),
        ),
    }
}

/// The two-level bootstrap of B − A for every metric (module doc): replicate `b` draws runs
/// (by seed pairs when `pairs` is given) and scores them on image resample `b`.
pub fn two_level_bootstrap(
    a: &[RunValues],
    b: &[RunValues],
    pairs: Option<&[(usize, usize)]>,
    confidence: f64,
    seed: u64,
) -> Vec<Option<Interval>> {
    let n_metrics = a.first().map_or(0, |r| r.point.len());
    let n_boot = a.first().map_or(0, |r| r.resampled.len());
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_5EED_5EED_5EED);
    let mut samples = vec![vec![]; n_metrics];
    for rep in 0..n_boot {
        let (pick_a, pick_b) = draw_runs(&mut rng, a.len(), b.len(), pairs);
        for (m, s) in samples.iter_mut().enumerate() {
            if let (Some(x), Some(y)) = (
                mean_of(a, &pick_a, Some(rep), m),
                mean_of(b, &pick_b, Some(rep), m),
            ) {
                s.push(y - x);
            }
        }
    }
    samples
        .iter()
        .map(|s| {
            classify::percentile_interval(s, confidence).map(|((lower, upper), p)| Interval {
                lower,
                upper,
                prob_b_better: p,
            })
        })
        .collect()
}

/// One seed's (or run's) numbers in a row; `None` where the metric has no ground truth.
#[derive(Debug, Clone, Serialize)]
pub struct SeedDelta {
    pub seed: Option<u64>,
    pub a: Option<f64>,
    pub b: Option<f64>,
    pub delta: Option<f64>,
}

/// One metric of a group comparison. Means and Δ are `None` ("n/a") when no run has the metric.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRow {
    pub metric: String,
    pub a_mean: Option<f64>,
    pub a_std: Option<f64>,
    pub b_mean: Option<f64>,
    pub b_std: Option<f64>,
    pub delta: Option<f64>,
    pub interval: Option<Interval>,
    /// Paired: one entry per seed with its Δ; unpaired: A's runs then B's, without Δ.
    pub per_seed: Vec<SeedDelta>,
}

/// Arm B against arm A over seeds and val images.
#[derive(Debug, Clone, Serialize)]
pub struct GroupComparison {
    pub a: String,
    pub b: String,
    pub a_seeds: Vec<Option<u64>>,
    pub b_seeds: Vec<Option<u64>>,
    pub paired: bool,
    pub num_images: usize,
    pub bootstrap: usize,
    pub confidence: f64,
    pub rows: Vec<GroupRow>,
}

/// Mean and sample standard deviation (n − 1; `None` for one value) of the values ≥ 0.
fn mean_std(values: &[f64]) -> (Option<f64>, Option<f64>) {
    let v: Vec<f64> = values.iter().copied().filter(|x| *x >= 0.0).collect();
    if v.is_empty() {
        return (None, None);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let std = (v.len() > 1)
        .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt());
    (Some(mean), std)
}

fn defined(x: f64) -> Option<f64> {
    (x >= 0.0).then_some(x)
}

/// Index pairs of the runs with equal seeds, when both arms have the same set of known seeds.
pub fn seed_pairs(a: &[Option<u64>], b: &[Option<u64>]) -> Option<Vec<(usize, usize)>> {
    let mut sa: Vec<u64> = a.iter().copied().collect::<Option<_>>()?;
    let mut sb: Vec<u64> = b.iter().copied().collect::<Option<_>>()?;
    let pairs = a
        .iter()
        .enumerate()
        .map(|(i, s)| (i, b.iter().position(|t| t == s).unwrap_or(usize::MAX)))
        .collect::<Vec<_>>();
    sa.sort_unstable();
    sb.sort_unstable();
    let unique = sa.windows(2).all(|w| w[0] != w[1]);
    (sa == sb && unique && a.len() > 1).then_some(pairs)
}

/// The rows of a group comparison from each run's values.
pub fn group_rows(
    names: &[&str],
    a: (&[RunValues], &[Option<u64>]),
    b: (&[RunValues], &[Option<u64>]),
    pairs: Option<&[(usize, usize)]>,
    confidence: f64,
    seed: u64,
) -> Vec<GroupRow> {
    let intervals = two_level_bootstrap(a.0, b.0, pairs, confidence, seed);
    names
        .iter()
        .enumerate()
        .map(|(m, name)| {
            let va: Vec<f64> = a.0.iter().map(|r| r.point[m]).collect();
            let vb: Vec<f64> = b.0.iter().map(|r| r.point[m]).collect();
            let ((a_mean, a_std), (b_mean, b_std)) = (mean_std(&va), mean_std(&vb));
            let per_seed = match pairs {
                Some(p) => p
                    .iter()
                    .map(|&(i, j)| {
                        let (x, y) = (defined(va[i]), defined(vb[j]));
                        SeedDelta {
                            seed: a.1[i],
                            a: x,
                            b: y,
                            delta: x.zip(y).map(|(x, y)| y - x),
                        }
                    })
                    .collect(),
                None => (va.iter().zip(a.1).map(|(x, s)| (s, Some(*x), None)))
                    .chain(vb.iter().zip(b.1).map(|(y, s)| (s, None, Some(*y))))
                    .map(|(s, x, y)| SeedDelta {
                        seed: *s,
                        a: x.and_then(defined),
                        b: y.and_then(defined),
                        delta: None,
                    })
                    .collect(),
            };
            GroupRow {
                metric: name.to_string(),
                a_mean,
                a_std,
                b_mean,
                b_std,
                delta: a_mean.zip(b_mean).map(|(x, y)| y - x),
                interval: a_mean.and(b_mean).and(intervals[m]),
                per_seed,
            }
        })
        .collect()
}

/// Every arm's runs scored (`values[arm][run]`), the val images and the metrics' names.
struct Scored {
    values: Vec<Vec<RunValues>>,
    num_images: usize,
    names: Vec<&'static str>,
}

/// Detector runs: one evaluation per run, then its metrics on each image resample
/// (`COCOeval::slice_by` re-accumulates without re-matching, in parallel chunks).
fn detection_values(
    arms: &[Arm],
    gt: Option<&Path>,
    resample_seed: u64,
    n_boot: usize,
) -> Result<Scored> {
    let first = &arms[0].runs[0].run;
    let gt_file = match gt {
        Some(g) => g.to_path_buf(),
        None => first.gt.clone().ok_or_else(|| {
            Error::msg(format!(
                "{}: a detections file needs --gt GT.json",
                first.detections.display()
            ))
        })?,
    };
    if gt.is_none() {
        check_same_truth(arms, &gt_file)?;
    }
    let gt_data = load_ground_truth(&gt_file, Purpose::Eval)?.dataset;
    let mut ids: Vec<u64> = gt_data.images.iter().map(|i| i.id).collect();
    ids.sort_unstable();
    let resamples = image_resamples(ids.len(), n_boot, resample_seed);
    let values = arms
        .iter()
        .map(|arm| {
            arm.runs
                .iter()
                .map(|r| {
                    let ev = evaluated(&gt_data, &r.run, &gt_file)?;
                    slice_values(&ev, &ids, &resamples)
                        .map_err(|e| Error::msg(format!("{}: {e}", r.run.detections.display())))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Scored {
        values,
        num_images: ids.len(),
        names: STAT_NAMES.to_vec(),
    })
}

/// Every run names the same ground truth (by canonical path).
fn check_same_truth(arms: &[Arm], gt_file: &Path) -> Result<()> {
    let want = std::fs::canonicalize(gt_file).ok();
    for r in arms.iter().flat_map(|a| &a.runs) {
        if let Some(g) = &r.run.gt {
            if std::fs::canonicalize(g).ok() != want {
                return Err(Error::msg(format!(
                    "{} was evaluated on {}, {} on {}: compare runs on the same val set",
                    r.run.detections.display(),
                    g.display(),
                    arms[0].runs[0].run.detections.display(),
                    gt_file.display()
                )));
            }
        }
    }
    Ok(())
}

fn slice_values(
    ev: &hotcoco::COCOeval,
    ids: &[u64],
    resamples: &[Vec<usize>],
) -> std::result::Result<RunValues, String> {
    let stats = |m: &std::collections::BTreeMap<String, f64>| -> Vec<f64> {
        STAT_NAMES
            .iter()
            .map(|k| m.get(*k).copied().unwrap_or(-1.0))
            .collect()
    };
    let chunks: Vec<Vec<Vec<f64>>> = resamples
        .par_chunks(32)
        .enumerate()
        .map(|(c, chunk)| {
            let slices: HashMap<String, Vec<u64>> = chunk
                .iter()
                .enumerate()
                .map(|(k, idx)| {
                    (
                        (c * 32 + k).to_string(),
                        idx.iter().map(|&i| ids[i]).collect(),
                    )
                })
                .collect();
            let r = ev.slice_by(slices).map_err(|e| e.to_string())?;
            let by_name: HashMap<&str, Vec<f64>> = r
                .slices
                .iter()
                .map(|s| (s.name.as_str(), stats(&s.metrics)))
                .collect();
            Ok((0..chunk.len())
                .map(|k| by_name[(c * 32 + k).to_string().as_str()].clone())
                .collect())
        })
        .collect::<std::result::Result<_, String>>()?;
    let point = match ev.slice_by(HashMap::new()) {
        Ok(r) => stats(&r.overall.metrics),
        Err(e) => return Err(e.to_string()),
    };
    Ok(RunValues {
        point,
        resampled: chunks.into_iter().flatten().collect(),
    })
}

/// Classifier runs: every run's predictions in the first run's image order, scored on all
/// images and on each resample.
fn classifier_values(arms: &[Arm], resample_seed: u64, n_boot: usize) -> Result<Scored> {
    let first = &arms[0].runs[0].run;
    let want = first
        .gt
        .as_ref()
        .and_then(|p| std::fs::canonicalize(p).ok());
    let (counts, _) = first.classes.clone().unwrap_or_default();
    let predictors = Predictor::shared(arms.iter().flat_map(|a| a.runs.iter().map(|r| &r.run)));
    // Every predictor's predictions of the first run give the image order.
    let bases = predictors
        .iter()
        .map(|p| read_predictions(p.file(first)))
        .collect::<Result<Vec<_>>>()?;
    let n_images = bases.first().map_or(0, |b| b.len());
    let resamples = image_resamples(n_images, n_boot, resample_seed);
    let all: Vec<usize> = (0..n_images).collect();
    let values = arms
        .iter()
        .map(|arm| {
            arm.runs
                .iter()
                .map(|r| {
                    if r.run.gt.as_ref().and_then(|p| std::fs::canonicalize(p).ok()) != want {
                        return Err(Error::msg(format!(
                            "{} and {} were evaluated on different val splits: compare runs on the same val set",
                            first.detections.display(),
                            r.run.detections.display()
                        )));
                    }
                    let mut sets = vec![];
                    for (p, base) in predictors.iter().zip(&bases) {
                        let file = p.file(&r.run);
                        let preds = classify::align(base, &read_predictions(file)?)
                            .map_err(|e| Error::msg(format!("{}: {e}", file.display())))?;
                        sets.push((*p, preds));
                    }
                    let score = |idx: &[usize]| -> Vec<f64> {
                        sets.iter()
                            .flat_map(|(p, preds)| {
                                let c = p.counts(&counts);
                                let t = GroupThresholds::scaled(c);
                                let mut v = classify::subset_metrics(preds, c, t.as_ref(), idx);
                                v.truncate(p.metric_names(t.as_ref()).len());
                                v
                            })
                            .collect()
                    };
                    Ok(RunValues {
                        point: score(&all),
                        resampled: resamples.iter().map(|idx| score(idx)).collect(),
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Scored {
        values,
        num_images: n_images,
        names: predictors
            .iter()
            .flat_map(|p| {
                let c = p.counts(&counts);
                p.metric_names(GroupThresholds::scaled(c).as_ref())
            })
            .collect(),
    })
}

/// Compare every arm after the first with the first, over seeds and val images (module doc).
/// `gt` overrides the runs' own ground truth (detectors).
pub fn compare_arms(
    arms: &[Arm],
    gt: Option<&Path>,
    opts: &CompareOptions,
) -> Result<Vec<GroupComparison>> {
    if arms.len() < 2 {
        return Err(Error::msg("compare needs at least two runs or arms"));
    }
    let classifier = arms[0].runs[0].run.classes.is_some();
    if let Some(bad) = arms
        .iter()
        .flat_map(|a| &a.runs)
        .find(|r| r.run.classes.is_some() != classifier)
    {
        return Err(Error::msg(format!(
            "{} and {} are not the same kind of run (a classifier and a detector)",
            arms[0].runs[0].run.name, bad.run.name
        )));
    }
    let Scored {
        values,
        num_images,
        names,
    } = if classifier {
        classifier_values(arms, opts.seed, opts.bootstrap)?
    } else {
        detection_values(arms, gt, opts.seed, opts.bootstrap)?
    };
    Ok(arms[1..]
        .iter()
        .zip(&values[1..])
        .map(|(arm, vb)| {
            let (sa, sb) = (arms[0].seeds(), arm.seeds());
            let pairs = seed_pairs(&sa, &sb);
            GroupComparison {
                a: arms[0].name.clone(),
                b: arm.name.clone(),
                rows: group_rows(
                    &names,
                    (&values[0], &sa),
                    (vb, &sb),
                    pairs.as_deref(),
                    opts.confidence,
                    opts.seed,
                ),
                a_seeds: sa,
                b_seeds: sb,
                paired: pairs.is_some(),
                num_images,
                bootstrap: opts.bootstrap,
                confidence: opts.confidence,
            }
        })
        .collect())
}

fn fmt_value(mean: Option<f64>, std: Option<f64>) -> String {
    match (mean, std) {
        (None, _) => "n/a".into(),
        (Some(m), None) => format!("{m:.3}"),
        (Some(m), Some(s)) => format!("{m:.3} ± {s:.3}"),
    }
}

fn fmt_seeds(seeds: &[Option<u64>]) -> String {
    seeds
        .iter()
        .map(|s| s.map_or("?".into(), |s| s.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl GroupComparison {
    /// What the interval covers, in words: a header line of the table.
    pub fn variance_note(&self) -> String {
        let (na, nb) = (self.a_seeds.len(), self.b_seeds.len());
        let pct = (self.confidence * 100.0).round();
        let mut s = format!(
            "{} runs of {} (seeds {}), {} of {} (seeds {}); {}; {} val images; {pct}% interval: ",
            na,
            self.a,
            fmt_seeds(&self.a_seeds),
            nb,
            self.b,
            fmt_seeds(&self.b_seeds),
            if self.paired {
                "paired by seed"
            } else {
                "not paired by seed"
            },
            self.num_images
        );
        s.push_str(match (na > 1, nb > 1) {
            (true, true) => "two-level bootstrap over seeds and val images (training and test-set variance)",
            (false, false) => "bootstrap over val images only — one run per arm: training variance (seeds) is NOT included; train several with `kdet train CONFIG --seeds 3`",
            _ => "two-level bootstrap, but one arm has a single run: its training variance is NOT included",
        });
        if (na > 1 && na < 3) || (nb > 1 && nb < 3) {
            s.push_str("; with fewer than 3 seeds per arm, the seed resampling is coarse");
        }
        s
    }

    /// Markdown: the variance note, then one row per metric with each arm's mean ± sample std
    /// over seeds, the mean Δ, its interval, P(Δ > 0) and each seed's Δ (or values, unpaired).
    pub fn to_markdown(&self) -> String {
        let pct = (self.confidence * 100.0).round();
        let per = if self.paired {
            "Δ per seed".to_string()
        } else {
            format!("{} runs; {} runs", self.a, self.b)
        };
        let mut s = format!(
            "### {} vs {}\n\n{}.\n\n| metric | {} | {} | Δ (mean) | {pct}% CI | P(Δ>0) | {per} |\n|---|---:|---:|---:|---|---:|---|\n",
            self.b,
            self.a,
            self.variance_note(),
            self.a,
            self.b
        );
        for r in &self.rows {
            let delta = r.delta.map_or("n/a".into(), |d| format!("{d:+.3}"));
            let (ci, p) = match (r.delta, r.interval) {
                (None, _) => ("n/a".into(), "n/a".into()),
                (Some(_), None) => ("–".into(), "–".into()),
                (Some(_), Some(i)) => (
                    format!("[{:+.3}, {:+.3}]", i.lower, i.upper),
                    format!("{:.2}", i.prob_b_better),
                ),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {delta} | {ci} | {p} | {} |\n",
                r.metric,
                fmt_value(r.a_mean, r.a_std),
                fmt_value(r.b_mean, r.b_std),
                self.per_seed_cell(r)
            ));
        }
        s
    }

    fn per_seed_cell(&self, r: &GroupRow) -> String {
        let num = |x: Option<f64>, signed: bool| match (x, signed) {
            (None, _) => "n/a".to_string(),
            (Some(x), true) => format!("{x:+.3}"),
            (Some(x), false) => format!("{x:.3}"),
        };
        let seed = |s: Option<u64>| s.map_or("?".into(), |s| s.to_string());
        if self.paired {
            return r
                .per_seed
                .iter()
                .map(|d| format!("{}: {}", seed(d.seed), num(d.delta, true)))
                .collect::<Vec<_>>()
                .join(", ");
        }
        // Unpaired: A's runs come first in `per_seed`, then B's.
        let (ra, rb) = r
            .per_seed
            .split_at(self.a_seeds.len().min(r.per_seed.len()));
        let list = |runs: &[SeedDelta], pick: fn(&SeedDelta) -> Option<f64>| {
            runs.iter()
                .map(|d| format!("{}: {}", seed(d.seed), num(pick(d), false)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (a, b) = (list(ra, |d| d.a), list(rb, |d| d.b));
        format!("{a}; {b}")
    }
}

/// Draw a group comparison as a PNG bar chart: the mean Δ of each metric with its interval
/// (metrics without ground truth left out).
pub fn chart(c: &GroupComparison, path: &Path) -> Result<()> {
    let bars: Vec<DeltaBar> = c
        .rows
        .iter()
        .filter_map(|r| {
            Some(DeltaBar {
                label: r.metric.clone(),
                delta: r.delta?,
                ci: r.interval.map(|i| (i.lower, i.upper)),
            })
        })
        .collect();
    delta_chart(path, &format!("{} − {} (mean over seeds)", c.b, c.a), &bars)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGES: usize = 300;
    const BOOT: usize = 400;

    /// A run whose metric is the mean over the (resampled) images of `per_image`, plus `shift`
    /// (the seed's effect on the run): one metric, plus one without ground truth (−1).
    fn run(per_image: &[f64], shift: f64, resamples: &[Vec<usize>]) -> RunValues {
        let mean =
            |idx: &[usize]| idx.iter().map(|&i| per_image[i]).sum::<f64>() / idx.len() as f64;
        let all: Vec<usize> = (0..per_image.len()).collect();
        RunValues {
            point: vec![mean(&all) + shift, -1.0],
            resampled: resamples
                .iter()
                .map(|r| vec![mean(r) + shift, -1.0])
                .collect(),
        }
    }

    /// Per-image scores of A (0/1, about 60 % right) and of B (A with 10 % more right).
    fn images() -> (Vec<f64>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let a: Vec<f64> = (0..IMAGES)
            .map(|_| (rng.random::<f64>() < 0.6) as u8 as f64)
            .collect();
        let b = a
            .iter()
            .map(|&x| {
                if x == 0.0 && rng.random::<f64>() < 0.25 {
                    1.0
                } else {
                    x
                }
            })
            .collect();
        (a, b)
    }

    fn width(i: Option<Interval>) -> f64 {
        let i = i.unwrap();
        i.upper - i.lower
    }

    /// Two `--arm` lists in one folder (`X/seed-<k>` and `X/seed-<k>_baseline`, as a run of
    /// several seeds with its baselines beside them) get two names.
    #[test]
    fn arm_lists_are_named_after_their_folder_and_seed_suffix() {
        let d = tempfile::tempdir().unwrap();
        let x = d.path().join("frcnn");
        for s in ["seed-0", "seed-0_baseline"] {
            std::fs::create_dir_all(x.join(s)).unwrap();
        }
        assert_eq!(list_name(&x.join("seed-0")), "frcnn");
        assert_eq!(list_name(&x.join("seed-0_baseline")), "frcnn_baseline");
    }

    #[test]
    fn zero_training_variance_gives_the_image_only_interval() {
        let (pa, pb) = images();
        let rs = image_resamples(IMAGES, BOOT, 1);
        let one = two_level_bootstrap(&[run(&pa, 0.0, &rs)], &[run(&pb, 0.0, &rs)], None, 0.95, 3);
        let a = vec![run(&pa, 0.0, &rs); 3];
        let b = vec![run(&pb, 0.0, &rs); 3];
        let pairs = [(0, 0), (1, 1), (2, 2)];
        let paired = two_level_bootstrap(&a, &b, Some(&pairs), 0.95, 3);
        let unpaired = two_level_bootstrap(&a, &b, None, 0.95, 3);
        // Equal up to the rounding of a mean of equal numbers.
        for other in [paired[0], unpaired[0]] {
            let (x, y) = (one[0].unwrap(), other.unwrap());
            assert!((x.lower - y.lower).abs() < 1e-12 && (x.upper - y.upper).abs() < 1e-12);
            assert_eq!(x.prob_b_better, y.prob_b_better);
        }
        let i = one[0].unwrap();
        assert!(i.lower > 0.0 && i.prob_b_better == 1.0, "{i:?}");
        // The metric without ground truth has no interval.
        assert_eq!(one[1], None);
    }

    #[test]
    fn large_seed_variance_widens_the_interval() {
        let (pa, pb) = images();
        let rs = image_resamples(IMAGES, BOOT, 1);
        let image_only =
            two_level_bootstrap(&[run(&pa, 0.0, &rs)], &[run(&pb, 0.0, &rs)], None, 0.95, 3);
        // Seeds move B's metric by up to ±0.4: the gain (about +0.1) is no longer certain.
        let a: Vec<_> = (0..5).map(|_| run(&pa, 0.0, &rs)).collect();
        let b: Vec<_> = [-0.4, -0.2, 0.0, 0.2, 0.4]
            .iter()
            .map(|&s| run(&pb, s, &rs))
            .collect();
        let wide = two_level_bootstrap(&a, &b, None, 0.95, 3);
        assert!(
            width(wide[0]) > 3.0 * width(image_only[0]),
            "{wide:?} {image_only:?}"
        );
        assert!(wide[0].unwrap().lower < 0.0 && wide[0].unwrap().prob_b_better < 0.95);
    }

    #[test]
    fn pairing_by_seed_removes_what_both_arms_share() {
        let (pa, pb) = images();
        let rs = image_resamples(IMAGES, BOOT, 1);
        // Each seed moves both arms alike (a good or bad draw of the data order, say); B's
        // runs are listed in another order than A's.
        let shifts = [-0.2, 0.0, 0.2];
        let a: Vec<_> = shifts.iter().map(|&s| run(&pa, s, &rs)).collect();
        let b: Vec<_> = [2, 0, 1]
            .iter()
            .map(|&k| run(&pb, shifts[k], &rs))
            .collect();
        let (sa, sb) = ([Some(0), Some(1), Some(2)], [Some(2), Some(0), Some(1)]);
        let pairs = seed_pairs(&sa, &sb).unwrap();
        assert_eq!(pairs, [(0, 1), (1, 2), (2, 0)]);
        let paired = two_level_bootstrap(&a, &b, Some(&pairs), 0.95, 3);
        let unpaired = two_level_bootstrap(&a, &b, None, 0.95, 3);
        assert!(paired[0].unwrap().lower > 0.0, "{paired:?}");
        assert!(unpaired[0].unwrap().lower < 0.0, "{unpaired:?}");
        // Each seed's Δ is the same gain.
        let rows = group_rows(&["AP", "APl"], (&a, &sa), (&b, &sb), Some(&pairs), 0.95, 3);
        let d: Vec<f64> = rows[0].per_seed.iter().map(|s| s.delta.unwrap()).collect();
        assert!(
            d.iter().all(|x| (x - d[0]).abs() < 1e-12 && *x > 0.0),
            "{d:?}"
        );
        // Not paired: other seeds, a seed missing, a seed unknown, a single run.
        assert_eq!(seed_pairs(&sa, &[Some(0), Some(1), Some(3)]), None);
        assert_eq!(seed_pairs(&sa, &sa[..2]), None);
        assert_eq!(seed_pairs(&[None, Some(1)], &[None, Some(1)]), None);
        assert_eq!(seed_pairs(&[Some(0)], &[Some(0)]), None);
    }

    #[test]
    fn rows_without_ground_truth_print_n_a_and_the_note_says_what_is_covered() {
        let (pa, pb) = images();
        let rs = image_resamples(IMAGES, 50, 1);
        let (a, b) = (vec![run(&pa, 0.0, &rs)], vec![run(&pb, 0.0, &rs)]);
        let c = GroupComparison {
            a: "alone".into(),
            b: "distilled".into(),
            a_seeds: vec![Some(0)],
            b_seeds: vec![Some(0)],
            paired: false,
            num_images: IMAGES,
            bootstrap: 50,
            confidence: 0.95,
            rows: group_rows(
                &["AP", "APl"],
                (&a, &[Some(0)]),
                (&b, &[Some(0)]),
                None,
                0.95,
                0,
            ),
        };
        let md = c.to_markdown();
        assert!(md.contains("| APl | n/a | n/a | n/a | n/a | n/a |"), "{md}");
        assert!(!md.contains("-1.000"), "{md}");
        assert!(
            md.contains("training variance (seeds) is NOT included"),
            "{md}"
        );
        let three = GroupComparison {
            a_seeds: vec![Some(0), Some(1), Some(2)],
            b_seeds: vec![Some(0), Some(1), Some(2)],
            paired: true,
            ..c
        };
        assert!(three
            .variance_note()
            .contains("training and test-set variance"));
    }

    /// A classifier run folder `dir/seed-<seed>` whose predictions get the first `right` of 40
    /// images right (classes 1 and 2; class 2 is few-shot).
    fn classifier_run(dir: &Path, seed: u64, right: usize) {
        let run = dir.join(format!("seed-{seed}"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("predictions.json"), predictions(40, right)).unwrap();
        let eval = serde_json::json!({"task": "classification", "gt": dir.parent().unwrap(), "predictions": "predictions.json",
            "iter": 1, "train_counts": [400, 4]});
        std::fs::write(run.join("eval.json"), eval.to_string()).unwrap();
    }

    /// `n` predictions of which the first `right` are right (classes 1 and 2).
    fn predictions(n: usize, right: usize) -> Vec<u8> {
        let preds: Vec<classify::ClassPrediction> = (0..n)
            .map(|i| {
                let label = 1 + (i % 2) as u32;
                let top = if i < right { label } else { 3 - label };
                classify::ClassPrediction {
                    file: format!("{i}.png"),
                    label,
                    top5: vec![top, 3 - top],
                    scores: vec![0.6, 0.4],
                }
            })
            .collect();
        serde_json::to_vec(&preds).unwrap()
    }

    /// A classifier run folder with its head's, k-NN's and probe's predictions (`right` each);
    /// `self_supervised`: its head was never trained.
    fn representation_run(dir: &Path, seed: u64, right: [usize; 3], self_supervised: bool) {
        let run = dir.join(format!("seed-{seed}"));
        std::fs::create_dir_all(&run).unwrap();
        for (f, r) in [
            "predictions.json",
            "knn_predictions.json",
            "probe_predictions.json",
        ]
        .iter()
        .zip(right)
        {
            std::fs::write(run.join(f), predictions(40, r)).unwrap();
        }
        let eval = serde_json::json!({"task": "classification", "gt": dir.parent().unwrap(),
            "predictions": "predictions.json", "iter": 1, "train_counts": [20, 20],
            "representation": {"knn": "knn_predictions.json", "probe": "probe_predictions.json"},
            "summary": {"num_images": 40, "top1": 0.0, "top5": 1.0, "per_class": [],
                        "self_supervised": self_supervised}});
        std::fs::write(run.join("eval.json"), eval.to_string()).unwrap();
    }

    /// k-NN and probe rows get the same intervals as top-1, over seeds and over images; a
    /// self-supervised run's untrained head is left out.
    #[test]
    fn knn_and_probe_rows_over_seeds_and_images() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("alone"), d.path().join("dogo"));
        for (seed, (ka, kb)) in [(0, (20, 30)), (1, (22, 30)), (2, (18, 34))] {
            representation_run(&a, seed, [5, ka, 20], true);
            representation_run(&b, seed, [5, kb, 20], true);
        }
        let opts = CompareOptions {
            bootstrap: 200,
            ..Default::default()
        };
        let arms = [Arm::resolve(&a).unwrap(), Arm::resolve(&b).unwrap()];
        let c = compare_arms(&arms, None, &opts).unwrap().remove(0);
        let names: Vec<&str> = c.rows.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(names, ["knn_top1", "probe_top1"]);
        let deltas: Vec<f64> = c.rows[0]
            .per_seed
            .iter()
            .map(|s| s.delta.unwrap())
            .collect();
        for (x, y) in deltas.iter().zip([0.25, 0.2, 0.4]) {
            assert!((x - y).abs() < 1e-12, "{deltas:?}");
        }
        let i = c.rows[0].interval.unwrap();
        assert!(i.lower > 0.0 && i.upper < 0.6, "{i:?}");
        assert_eq!(c.rows[1].delta, Some(0.0));
        // One run each: the paired bootstrap over images, the same rows.
        let runs = [
            RunInput::resolve(&a.join("seed-0")).unwrap(),
            RunInput::resolve(&b.join("seed-0")).unwrap(),
        ];
        let one = super::super::compare::compare_runs(&runs, None, &opts)
            .unwrap()
            .remove(0);
        let names: Vec<&str> = one.metrics.iter().map(|m| m.metric.as_str()).collect();
        assert_eq!(names, ["knn_top1", "probe_top1"]);
        assert!((one.metrics[0].delta - 0.25).abs() < 1e-12);
        let (lo, hi) = one.metrics[0].ci.unwrap();
        assert!(lo > 0.0 && hi > 0.25, "{lo} {hi}");
        assert_eq!(one.per_class_metric, "k-NN top-1");
        // Supervised runs keep their head's rows, then the representation's.
        let (c1, c2) = (d.path().join("c1"), d.path().join("c2"));
        representation_run(&c1, 0, [10, 20, 20], false);
        representation_run(&c2, 0, [30, 20, 20], false);
        let runs = [
            RunInput::resolve(&c1.join("seed-0")).unwrap(),
            RunInput::resolve(&c2.join("seed-0")).unwrap(),
        ];
        let s = super::super::compare::compare_runs(&runs, None, &opts)
            .unwrap()
            .remove(0);
        let names: Vec<&str> = s.metrics.iter().map(|m| m.metric.as_str()).collect();
        assert_eq!(names, ["top1", "top5", "knn_top1", "probe_top1"]);
        assert!((s.metrics[0].delta - 0.5).abs() < 1e-12);
    }

    #[test]
    fn classifier_arms_over_seeds() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("alone"), d.path().join("distilled"));
        for (seed, (ra, rb)) in [(0, (20, 30)), (1, (24, 30)), (2, (16, 40))] {
            classifier_run(&a, seed, ra);
            classifier_run(&b, seed, rb);
        }
        let arms = [Arm::resolve(&a).unwrap(), Arm::resolve(&b).unwrap()];
        let opts = CompareOptions {
            bootstrap: 200,
            ..Default::default()
        };
        let c = compare_arms(&arms, None, &opts).unwrap().remove(0);
        assert!(c.paired && c.num_images == 40);
        let names: Vec<&str> = c.rows.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(
            names,
            ["top1", "top5", "top1_many", "top1_medium", "top1_few"]
        );
        let d: Vec<f64> = c.rows[0]
            .per_seed
            .iter()
            .map(|s| s.delta.unwrap())
            .collect();
        for (x, y) in d.iter().zip([0.25, 0.15, 0.6]) {
            assert!((x - y).abs() < 1e-12, "{d:?}");
        }
        assert!((c.rows[0].delta.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        // top-5 holds both classes: every run is right, Δ 0; no medium-shot class: n/a.
        assert_eq!(c.rows[1].delta, Some(0.0));
        assert_eq!(c.rows[3].delta.map(|x| x.abs()), Some(0.0));
        let md = c.to_markdown();
        assert!(md.contains("| top1 | 0.500 ± 0.100 |"), "{md}");
        assert!(md.contains("0: +0.250, 1: +0.150, 2: +0.600"), "{md}");
    }
}
