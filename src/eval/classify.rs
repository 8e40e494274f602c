//! Classification evaluation: top-1 and top-5 accuracy, per class, and per training-frequency
//! group (many / medium / few shots, the long-tail split of Liu et al. 2019's ImageNet-LT that
//! CBD reports), and `kdet compare` for classifier runs with bootstrap confidence intervals over
//! the val images (the same resampling as hotcoco's for detectors: images drawn with
//! replacement, both runs scored on the same draw).
//!
//! Frequency groups: ImageNet-LT's thresholds are "many" > 100 and "few" < 20 training images,
//! on a training set whose classes hold 5 to 1280 images. A smaller split is scaled to keep each
//! threshold at the same place between its rarest and most frequent class on a log scale:
//! `t = n_min · (n_max / n_min)^f` with `f = ln(t_LT / 5) / ln(1280 / 5)` — exactly 100 and 20
//! on ImageNet-LT itself. Groups are reported when the training split is imbalanced
//! (`n_max ≥ 2 n_min`).

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One image's prediction, as `predictions.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassPrediction {
    /// The image file, relative to the split's root.
    pub file: String,
    /// The true class (1-based label).
    pub label: u32,
    /// The five most probable classes (1-based), most probable first.
    pub top5: Vec<u32>,
    /// Their probabilities.
    pub scores: Vec<f32>,
}

/// The many / medium / few-shot thresholds of a training split.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct GroupThresholds {
    /// A class is "many-shot" with more training images than this.
    pub many_above: f64,
    /// "Few-shot" with fewer than this; "medium" in between.
    pub few_below: f64,
}

impl GroupThresholds {
    /// ImageNet-LT's 100 / 20 scaled to classes of `min..=max` training images (module doc);
    /// `None` for a balanced split.
    pub fn scaled(counts: &[usize]) -> Option<Self> {
        let (min, max) = (*counts.iter().min()? as f64, *counts.iter().max()? as f64);
        if min < 1.0 || max < 2.0 * min {
            return None;
        }
        let f = |t: f64| (t / 5.0).ln() / (1280f64 / 5.0).ln();
        Some(Self {
            many_above: min * (max / min).powf(f(100.0)),
            few_below: min * (max / min).powf(f(20.0)),
        })
    }

    /// 0 many, 1 medium, 2 few.
    pub fn group(&self, count: usize) -> usize {
        let c = count as f64;
        if c > self.many_above {
            0
        } else if c < self.few_below {
            2
        } else {
            1
        }
    }
}

/// Names of the three groups.
pub const GROUPS: [&str; 3] = ["many", "medium", "few"];

/// Accuracy of one class.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassAccuracy {
    pub category_id: u64,
    pub name: String,
    /// Val images of the class.
    pub images: usize,
    /// Its training images (0 when unknown).
    pub train_images: usize,
    pub top1: f64,
}

/// The result of evaluating a classifier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassSummary {
    pub num_images: usize,
    pub top1: f64,
    pub top5: f64,
    /// Top-1 of the many / medium / few-shot classes' images, with the thresholds used.
    pub groups: Option<([f64; 3], GroupThresholds, [usize; 3])>,
    pub per_class: Vec<ClassAccuracy>,
    /// k-NN and linear-probe top-1 of the frozen features (`kdet eval` of a classifier,
    /// `eval::representation`); absent when not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub representation: Option<super::representation::RepresentationSummary>,
    /// The network learned without labels (a self-supervised method): its classification head
    /// was never trained, so only the representation's numbers mean anything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_supervised: bool,
}

impl ClassSummary {
    /// Score `preds` (true labels inside) for classes `names` / `ids` with training counts
    /// `train_counts` (empty when unknown).
    pub fn new(
        preds: &[ClassPrediction],
        names: &[String],
        ids: &[u64],
        train_counts: &[usize],
    ) -> Self {
        let k = names.len();
        let mut per = vec![(0usize, 0usize); k];
        let (mut t1, mut t5) = (0usize, 0usize);
        for p in preds {
            let hit1 = p.top5.first() == Some(&p.label);
            t1 += hit1 as usize;
            t5 += p.top5.contains(&p.label) as usize;
            if let Some(c) = per.get_mut(p.label as usize - 1) {
                c.0 += 1;
                c.1 += hit1 as usize;
            }
        }
        let n = preds.len().max(1) as f64;
        let thresholds = (train_counts.len() == k)
            .then(|| GroupThresholds::scaled(train_counts))
            .flatten();
        let groups = thresholds.map(|t| {
            let (acc, _) = group_accuracy(
                preds,
                train_counts,
                &t,
                &(0..preds.len()).collect::<Vec<_>>(),
            );
            let mut classes = [0usize; 3];
            for &c in train_counts {
                classes[t.group(c)] += 1;
            }
            (acc, t, classes)
        });
        Self {
            num_images: preds.len(),
            top1: t1 as f64 / n,
            top5: t5 as f64 / n,
            groups,
            per_class: (0..k)
                .map(|c| ClassAccuracy {
                    category_id: ids[c],
                    name: names[c].clone(),
                    images: per[c].0,
                    train_images: train_counts.get(c).copied().unwrap_or(0),
                    top1: per[c].1 as f64 / per[c].0.max(1) as f64,
                })
                .collect(),
            representation: None,
            self_supervised: false,
        }
    }

    /// Named numbers for metrics logs: `top1`, `top5`, `top1_many`, `top1_medium`, `top1_few`.
    /// A self-supervised run's are the representation's alone.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![];
        if !self.self_supervised {
            v.extend([("top1", self.top1), ("top5", self.top5)]);
            if let Some((g, _, _)) = &self.groups {
                v.extend([
                    ("top1_many", g[0]),
                    ("top1_medium", g[1]),
                    ("top1_few", g[2]),
                ]);
            }
        }
        if let Some(r) = &self.representation {
            v.extend([("knn_top1", r.knn_top1), ("probe_top1", r.probe_top1)]);
        }
        v
    }

    pub fn headline(&self) -> String {
        if let (true, Some(r)) = (self.self_supervised, &self.representation) {
            return format!(
                "k-NN top-1 {:.4}  linear probe top-1 {:.4}",
                r.knn_top1, r.probe_top1
            );
        }
        let mut s = format!("top-1 {:.4}  top-5 {:.4}", self.top1, self.top5);
        if let Some((g, _, _)) = &self.groups {
            s.push_str(&format!(
                "  (many {:.4} medium {:.4} few {:.4})",
                g[0], g[1], g[2]
            ));
        }
        s
    }

    /// Summary lines, then (with `per_class`) a per-class table.
    pub fn to_text(&self, per_class: bool) -> String {
        let mut s = format!(
            "{} val images\ntop-1 accuracy {:.4}\ntop-5 accuracy {:.4}\n",
            self.num_images, self.top1, self.top5
        );
        if self.self_supervised {
            s.push_str("(self-supervised: the classification head was never trained)\n");
        }
        if let Some((g, t, n)) = &self.groups {
            s.push_str(&format!(
                "top-1 many-shot   {:.4}  ({} classes with > {:.1} training images)\ntop-1 medium-shot {:.4}  ({} classes)\ntop-1 few-shot    {:.4}  ({} classes with < {:.1})\n",
                g[0], n[0], t.many_above, g[1], n[1], g[2], n[2], t.few_below
            ));
        }
        if let Some(r) = &self.representation {
            s.push_str(&format!(
                "k-NN top-1 {:.4}  (`{}` features, k = {}, T = {}, {} labeled training images)\nlinear probe top-1 {:.4}\n",
                r.knn_top1, r.feature, r.knn_k, r.knn_temperature, r.train_images, r.probe_top1
            ));
        }
        if per_class {
            s.push_str(
                "\n| id | class | train images | val images | top-1 |\n|---:|---|---:|---:|---:|\n",
            );
            for c in &self.per_class {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {:.3} |\n",
                    c.category_id, c.name, c.train_images, c.images, c.top1
                ));
            }
        }
        s
    }
}

/// Top-1 of the images `idx` (with repeats) in each group, and the images counted.
fn group_accuracy(
    preds: &[ClassPrediction],
    counts: &[usize],
    t: &GroupThresholds,
    idx: &[usize],
) -> ([f64; 3], [usize; 3]) {
    let (mut hit, mut n) = ([0usize; 3], [0usize; 3]);
    for &i in idx {
        let p = &preds[i];
        let g = t.group(counts[p.label as usize - 1]);
        n[g] += 1;
        hit[g] += (p.top5.first() == Some(&p.label)) as usize;
    }
    (
        std::array::from_fn(|g| hit[g] as f64 / n[g].max(1) as f64),
        n,
    )
}

/// `predictions.json` of a run.
pub fn read_predictions(path: &Path) -> Result<Vec<ClassPrediction>> {
    let bytes = crate::error::read_file(path)?;
    crate::error::parse_json(path, &bytes)
}

/// One metric of a comparison: A, B, B − A and its bootstrap interval, P(B − A > 0).
pub struct Delta {
    pub metric: String,
    pub a: f64,
    pub b: f64,
    pub ci: Option<(f64, f64)>,
    pub prob_b_better: Option<f64>,
}

/// `b` in `a`'s image order (matched by file), or an error naming an image only one run
/// predicted or whose class the two disagree on.
pub fn align(a: &[ClassPrediction], b: &[ClassPrediction]) -> Result<Vec<ClassPrediction>> {
    if a.len() != b.len() {
        return Err(Error::msg(format!(
            "the runs predicted different val sets ({} and {} images)",
            a.len(),
            b.len()
        )));
    }
    let index: std::collections::HashMap<&str, usize> = b
        .iter()
        .enumerate()
        .map(|(i, p)| (p.file.as_str(), i))
        .collect();
    a.iter()
        .map(|p| {
            let j = *index.get(p.file.as_str()).ok_or_else(|| {
                Error::msg(format!(
                    "{} is in the first run's predictions but not the other's",
                    p.file
                ))
            })?;
            if b[j].label != p.label {
                return Err(Error::msg(format!(
                    "{}: the runs disagree on its class",
                    p.file
                )));
            }
            Ok(b[j].clone())
        })
        .collect()
}

/// The names of [`subset_metrics`]' numbers: top-1, top-5 and, on an imbalanced training split,
/// the many / medium / few groups.
pub fn metric_names(thresholds: Option<&GroupThresholds>) -> Vec<&'static str> {
    let mut names = vec!["top1", "top5"];
    if thresholds.is_some() {
        names.extend(["top1_many", "top1_medium", "top1_few"]);
    }
    names
}

/// Top-1, top-5 (and the groups' top-1) of the images `idx` (with repeats, as a bootstrap draws
/// them).
pub fn subset_metrics(
    preds: &[ClassPrediction],
    train_counts: &[usize],
    thresholds: Option<&GroupThresholds>,
    idx: &[usize],
) -> Vec<f64> {
    let n = idx.len().max(1) as f64;
    let hits = |top5: bool| {
        idx.iter()
            .filter(|&&i| {
                let p = &preds[i];
                if top5 {
                    p.top5.contains(&p.label)
                } else {
                    p.top5.first() == Some(&p.label)
                }
            })
            .count() as f64
            / n
    };
    let mut v = vec![hits(false), hits(true)];
    if let Some(t) = thresholds {
        v.extend(group_accuracy(preds, train_counts, t, idx).0);
    }
    v
}

/// The percentile interval at `confidence` of bootstrap samples and the fraction of them above
/// 0 (`None` without samples).
pub fn percentile_interval(samples: &[f64], confidence: f64) -> Option<((f64, f64), f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|x, y| x.total_cmp(y));
    let q = |f: f64| s[((f * (s.len() - 1) as f64).round() as usize).min(s.len() - 1)];
    let lo = (1.0 - confidence) / 2.0;
    let above = s.iter().filter(|&&d| d > 0.0).count() as f64 / s.len() as f64;
    Some(((q(lo), q(1.0 - lo)), above))
}

/// Compare run B's predictions with run A's on the same val images (matched by file): top-1,
/// top-5 and, with `train_counts`, the many / medium / few groups, each with a percentile
/// bootstrap interval over `bootstrap` resamples of the images at `confidence`.
pub fn compare(
    a: &[ClassPrediction],
    b: &[ClassPrediction],
    train_counts: &[usize],
    bootstrap: usize,
    confidence: f64,
    seed: u64,
) -> Result<Vec<Delta>> {
    let b_aligned = align(a, b)?;
    let thresholds = GroupThresholds::scaled(train_counts);
    let metrics = |preds: &[ClassPrediction], idx: &[usize]| -> Vec<f64> {
        subset_metrics(preds, train_counts, thresholds.as_ref(), idx)
    };
    let all: Vec<usize> = (0..a.len()).collect();
    let (ma, mb) = (metrics(a, &all), metrics(&b_aligned, &all));
    let names = metric_names(thresholds.as_ref());
    let mut samples: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..bootstrap {
        let idx: Vec<usize> = (0..a.len())
            .map(|_| rng.random_range(0..a.len().max(1)))
            .collect();
        let (x, y) = (metrics(a, &idx), metrics(&b_aligned, &idx));
        for k in 0..names.len() {
            samples[k].push(y[k] - x[k]);
        }
    }
    Ok(names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let interval = percentile_interval(&samples[k], confidence);
            Delta {
                metric: name.to_string(),
                a: ma[k],
                b: mb[k],
                ci: interval.map(|i| i.0),
                prob_b_better: interval.map(|i| i.1),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(file: &str, label: u32, top: u32) -> ClassPrediction {
        ClassPrediction {
            file: file.into(),
            label,
            top5: vec![top, if top == 1 { 2 } else { 1 }],
            scores: vec![0.6, 0.4],
        }
    }

    #[test]
    fn thresholds_are_imagenet_lt_on_imagenet_lt_and_scaled_otherwise() {
        let t = GroupThresholds::scaled(&[5, 1280, 300]).unwrap();
        assert!((t.many_above - 100.0).abs() < 1e-9 && (t.few_below - 20.0).abs() < 1e-9);
        let t = GroupThresholds::scaled(&[4, 400]).unwrap();
        // 4 · 100^(ln 20 / ln 256) and 4 · 100^(ln 4 / ln 256).
        assert!((t.many_above - 4.0 * 100f64.powf(20f64.ln() / 256f64.ln())).abs() < 1e-9);
        assert_eq!((t.group(400), t.group(20), t.group(4)), (0, 1, 2));
        assert!(GroupThresholds::scaled(&[10, 12]).is_none());
    }

    #[test]
    fn accuracies_groups_and_a_bootstrap_that_sees_a_real_gain() {
        // Classes 1 (many: 400 training images), 2 (few: 4).
        let names = vec!["a".to_string(), "b".to_string()];
        let a: Vec<_> = (0..40)
            .map(|i| p(&format!("{i}.png"), 1 + (i % 2) as u32, 1))
            .collect();
        let s = ClassSummary::new(&a, &names, &[1, 2], &[400, 4]);
        assert_eq!((s.top1, s.top5), (0.5, 1.0));
        let (g, _, n) = s.groups.unwrap();
        assert_eq!((g[0], g[2]), (1.0, 0.0));
        assert_eq!(n, [1, 0, 1]);
        assert_eq!(s.per_class[1].top1, 0.0);
        // B gets the few-shot class right too: +0.5 top-1, all from the few group.
        let b: Vec<_> = (0..40)
            .rev()
            .map(|i| p(&format!("{i}.png"), 1 + (i % 2) as u32, 1 + (i % 2) as u32))
            .collect();
        let d = compare(&a, &b, &[400, 4], 200, 0.95, 0).unwrap();
        assert_eq!(d[0].metric, "top1");
        assert_eq!((d[0].a, d[0].b), (0.5, 1.0));
        let (lo, hi) = d[0].ci.unwrap();
        assert!(lo > 0.2 && hi <= 0.8, "{lo} {hi}");
        assert_eq!(d[4].metric, "top1_few");
        assert_eq!(d[4].b - d[4].a, 1.0);
        // Different val sets are refused.
        let e = compare(&a, &b[1..], &[], 0, 0.95, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("different val sets"), "{e}");
    }
}
