//! Proposal–ground-truth matching and balanced sampling as torchvision's `Matcher` and
//! `BalancedPositiveNegativeSampler` (`models/detection/_utils.py`).

use rand::seq::SliceRandom;
use rand::Rng;

/// Match result of one proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Index of the matched ground-truth box.
    Gt(usize),
    /// IoU below the low threshold: background.
    Below,
    /// IoU between the thresholds: ignored.
    Between,
}

/// torchvision's `Matcher(high, low, allow_low_quality_matches)`.
#[derive(Debug, Clone, Copy)]
pub struct Matcher {
    pub high: f32,
    pub low: f32,
    pub allow_low_quality: bool,
}

impl Matcher {
    /// `quality` is `gts × proposals`, row-major.
    pub fn matches(&self, quality: &[f32], gts: usize, proposals: usize) -> Vec<Match> {
        if gts == 0 {
            return vec![Match::Below; proposals];
        }
        let mut best = vec![(f32::NEG_INFINITY, 0usize); proposals];
        for g in 0..gts {
            for (p, b) in best.iter_mut().enumerate() {
                let q = quality[g * proposals + p];
                // torch.max over dim 0 keeps the first maximum.
                if q > b.0 {
                    *b = (q, g);
                }
            }
        }
        let mut m: Vec<Match> = best
            .iter()
            .map(|&(q, g)| {
                if q < self.low {
                    Match::Below
                } else if q < self.high {
                    Match::Between
                } else {
                    Match::Gt(g)
                }
            })
            .collect();
        if self.allow_low_quality {
            // Each gt's best proposals (all ties) get their own best match back.
            for g in 0..gts {
                let row = &quality[g * proposals..(g + 1) * proposals];
                let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (p, &q) in row.iter().enumerate() {
                    if q == top {
                        m[p] = Match::Gt(best[p].1);
                    }
                }
            }
        }
        m
    }
}

/// Pick up to `batch` samples with at most `fraction` positives (matched proposals), the rest
/// negatives (below the low threshold); proposals between the thresholds are never sampled.
/// Returns (positive indices, negative indices), each ascending.
pub fn sample_balanced(
    matches: &[Match],
    batch: usize,
    fraction: f32,
    rng: &mut impl Rng,
) -> (Vec<usize>, Vec<usize>) {
    let mut pos: Vec<usize> = (0..matches.len())
        .filter(|&i| matches!(matches[i], Match::Gt(_)))
        .collect();
    let mut neg: Vec<usize> = (0..matches.len())
        .filter(|&i| matches[i] == Match::Below)
        .collect();
    let num_pos = ((batch as f32 * fraction) as usize).min(pos.len());
    let num_neg = (batch - num_pos).min(neg.len());
    pos.shuffle(rng);
    neg.shuffle(rng);
    pos.truncate(num_pos);
    neg.truncate(num_neg);
    pos.sort_unstable();
    neg.sort_unstable();
    (pos, neg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn thresholds_and_low_quality() {
        // 2 gts × 4 proposals.
        let q = [0.8, 0.4, 0.2, 0.1, 0.1, 0.5, 0.25, 0.35];
        let m = Matcher {
            high: 0.7,
            low: 0.3,
            allow_low_quality: false,
        }
        .matches(&q, 2, 4);
        assert_eq!(
            m,
            vec![Match::Gt(0), Match::Between, Match::Below, Match::Between]
        );
        // gt 1's best proposal is 1 (0.5): kept as a match to gt 1 (its own best gt).
        let m = Matcher {
            high: 0.7,
            low: 0.3,
            allow_low_quality: true,
        }
        .matches(&q, 2, 4);
        assert_eq!(
            m,
            vec![Match::Gt(0), Match::Gt(1), Match::Below, Match::Between]
        );
        assert_eq!(
            Matcher {
                high: 0.5,
                low: 0.5,
                allow_low_quality: false
            }
            .matches(&[], 0, 2),
            vec![Match::Below; 2]
        );
    }

    #[test]
    fn sampler_caps_positives() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let labels: Vec<Match> = (0..100)
            .map(|i| {
                if i < 10 {
                    Match::Gt(0)
                } else if i < 90 {
                    Match::Below
                } else {
                    Match::Between
                }
            })
            .collect();
        let (p, n) = sample_balanced(&labels, 16, 0.25, &mut rng);
        assert_eq!((p.len(), n.len()), (4, 12));
        assert!(p.iter().all(|&i| i < 10) && n.iter().all(|&i| (10..90).contains(&i)));
        let (p, n) = sample_balanced(&labels, 256, 0.5, &mut rng);
        assert_eq!((p.len(), n.len()), (10, 80));
    }
}
