//! Co-LAD — co-learning label assignment distillation (Nguyen et al., WACV 2022 §4), as the
//! authors' released code does it (`ccdet/models/detectors/colad.py`,
//! `dense_heads/paa_colad_head.py`, `PAA_CoLAD_StdMean_Head.paa_reassign`): two networks train
//! together from scratch on **one** label assignment. Both compute the cost of every candidate
//! (PAA's focal + GIoU, no gradient); for each image × box × pyramid level, the network whose
//! costs are more spread — larger std/mean over that box's candidates on that level — supplies
//! the costs from which the level's top-k are taken, and the GMM of the box runs on the
//! concatenation (so one box's GMM may mix both networks' costs across levels). Ties go to
//! network 2; with a single candidate the lower cost wins. Both networks then train on the
//! result with LADHead's losses. The reference logs each network's mean cost and mean std and
//! the share of choices network 2 won; so does kdet (`colad.*` in metrics.jsonl). The Fisher
//! criterion — from a secondary account of the paper, not in the released code — is an option.

use std::collections::BTreeMap;

use crate::config::distill::{ColadCriterion, ColadNetwork, MethodConfig};
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::method::{network, partner_network, Method, NamedNetwork, RunData, StepOutput};
use crate::error::{Error, Result};
use crate::models::build::Network;
use crate::models::contract::{CostAssignment, ImageCandidates, StepRng, Want};
use crate::ops::gmm;

pub struct Colad {
    nets: [Network; 2],
    criterion: ColadCriterion,
    evaluated: usize,
}

const NAMES: [&str; 2] = ["net1", "net2"];

impl Colad {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let c = &cfg.config;
        let Some(MethodConfig::Colad {
            partner,
            criterion,
            evaluate,
            partner_seed,
        }) = &c.method
        else {
            return Err(Error::msg(
                "internal: Co-LAD built from another method's config",
            ));
        };
        let n1 = network(cfg, &c.model, "model", c.seed, run)?;
        let n2 = partner_network(cfg, partner, *partner_seed, run)?;
        for (net, path) in [(&n1, "model"), (&n2, "method.partner")] {
            if net.model.cost_assignment().is_none() {
                return Err(cfg.error(
                    path,
                    format!(
                        "colad needs networks whose assignment is chosen by a per-candidate cost (paa), not {}",
                        net.model.family()
                    ),
                ));
            }
        }
        // Both networks must score the same candidates (same anchors).
        n1.config
            .family()
            .check_teacher(&n2.config, n1.model.class_head(), false)
            .map_err(|e| cfg.error(&format!("method.partner.{}", e.path), e.msg))?;
        Ok(Self {
            nets: [n1, n2],
            criterion: *criterion,
            evaluated: match evaluate {
                ColadNetwork::Net1 => 0,
                ColadNetwork::Net2 => 1,
            },
        })
    }
}

fn cost_assignment(n: &Network) -> Result<&dyn CostAssignment> {
    n.model
        .cost_assignment()
        .ok_or_else(|| Error::msg("internal: colad network without a cost assignment"))
}

/// Mean and (unbiased, as torch's `std`) standard deviation.
fn mean_std(v: &[f32]) -> (f64, Option<f64>) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (v.len() > 1)
        .then(|| (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, std)
}

/// The Fisher ratio of a two-component GMM fitted to `costs` (0 when it cannot be fitted).
fn fisher(costs: &[f32]) -> f64 {
    let mut x = costs.to_vec();
    x.sort_by(|a, b| a.total_cmp(b));
    match gmm::paa_fit(&x) {
        Ok(g) => (g.means[1] - g.means[0]).powi(2) / (g.variances[0] + g.variances[1]),
        Err(_) => 0.0,
    }
}

/// What one step's choice looked like (the reference's `s_mean, s_std, t_mean, t_std,
/// t_ratio`, averaged per image over box × level groups, then over images).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Choice {
    pub net1_mean: f64,
    pub net1_std: f64,
    pub net2_mean: f64,
    pub net2_std: f64,
    /// Share of box × level groups whose costs came from network 2.
    pub net2_share: f64,
}

/// Per image × box × level, the costs of the network the criterion picks (`costs1` from
/// network 1, `costs2` from network 2, indexed like the candidates).
pub fn choose(
    cands: &[ImageCandidates],
    costs1: &[Vec<f32>],
    costs2: &[Vec<f32>],
    criterion: ColadCriterion,
) -> (Vec<Vec<f32>>, Choice) {
    let mut mixed = vec![];
    let mut per_image: Vec<[Option<f64>; 5]> = vec![];
    for ((c, s), t) in cands.iter().zip(costs1).zip(costs2) {
        let mut out = s.clone();
        let (mut sm, mut ss, mut tm, mut ts, mut won) = (vec![], vec![], vec![], vec![], vec![]);
        let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for i in 0..c.anchor.len() {
            groups.entry((c.gt[i], c.level[i])).or_default().push(i);
        }
        for idx in groups.values() {
            let sv: Vec<f32> = idx.iter().map(|&i| s[i]).collect();
            let tv: Vec<f32> = idx.iter().map(|&i| t[i]).collect();
            let (s_mean, s_std) = mean_std(&sv);
            let (t_mean, t_std) = mean_std(&tv);
            sm.push(s_mean);
            tm.push(t_mean);
            let net2 = match (s_std, t_std) {
                (Some(s_std), Some(t_std)) => {
                    ss.push(s_std);
                    ts.push(t_std);
                    match criterion {
                        ColadCriterion::StdMean => t_std / t_mean >= s_std / s_mean,
                        ColadCriterion::Fisher => fisher(&tv) >= fisher(&sv),
                    }
                }
                _ => t_mean < s_mean,
            };
            won.push(net2 as u8 as f64);
            if net2 {
                for &i in idx {
                    out[i] = t[i];
                }
            }
        }
        let avg = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        per_image.push([avg(&sm), avg(&ss), avg(&tm), avg(&ts), avg(&won)]);
        mixed.push(out);
    }
    let over_images = |k: usize| {
        let v: Vec<f64> = per_image.iter().filter_map(|p| p[k]).collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let choice = Choice {
        net1_mean: over_images(0),
        net1_std: over_images(1),
        net2_mean: over_images(2),
        net2_std: over_images(3),
        net2_share: over_images(4),
    };
    (mixed, choice)
}

impl Method for Colad {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        NamedNetwork::zip(&self.nets, &NAMES)
    }

    fn eval_network(&self) -> usize {
        self.evaluated
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let [n1, n2] = &self.nets;
        let f1 = n1.model.forward(&batch.images, true)?;
        let f2 = n2.model.forward(&batch.images, true)?;
        let (ca1, ca2) = (cost_assignment(n1)?, cost_assignment(n2)?);
        let cands = ca1.candidates(&f1, batch)?;
        let c1 = ca1.costs(&f1, batch, &cands)?;
        let c2 = ca2.costs(&f2, batch, &cands)?;
        let (mixed, choice) = choose(&cands, &c1, &c2, self.criterion);
        // PAA's assignment draws nothing at random.
        let _ = rng;
        let a = ca2
            .assign_from_costs(&f2, batch, &cands, &mixed)?
            .handed_over();
        let mut losses = BTreeMap::new();
        for ((n, f), name) in [(n1, &f1), (n2, &f2)].into_iter().zip(NAMES) {
            let out = n.model.outputs(f, &a, batch, Want::Losses)?;
            for (k, l) in out.losses {
                losses.insert(format!("{name}.{k}"), l.value);
            }
        }
        let metrics = BTreeMap::from([
            ("colad.net1_cost_mean".to_string(), choice.net1_mean),
            ("colad.net1_cost_std".to_string(), choice.net1_std),
            ("colad.net2_cost_mean".to_string(), choice.net2_mean),
            ("colad.net2_cost_std".to_string(), choice.net2_std),
            ("colad.net2_share".to_string(), choice.net2_share),
        ]);
        Ok(StepOutput { losses, metrics })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_mean_choice_by_hand() {
        // One image, box 0 on levels 0 and 1, box 1 on level 0 with a single candidate.
        let c = vec![ImageCandidates {
            anchor: vec![0, 1, 2, 3, 4, 5],
            gt: vec![0, 0, 0, 0, 1, 0],
            level: vec![0, 0, 1, 1, 0, 0],
            valid: vec![true; 6],
        }];
        // Box 0, level 0 (candidates 0, 1, 5): net1 [1, 2, 3] → std/mean 1/2; net2 [2, 2, 2.6]
        // → 0.3464/2.2 = 0.157: net1 wins. Box 0, level 1 (2, 3): net1 [1, 1.1] → 0.0673;
        // net2 [4, 6] → 0.2828: net2 wins. Box 1 (4): one candidate, net2's 0.5 < net1's 0.7.
        let s = vec![vec![1.0, 2.0, 1.0, 1.1, 0.7, 3.0]];
        let t = vec![vec![2.0, 2.0, 4.0, 6.0, 0.5, 2.6]];
        let (mixed, ch) = choose(&c, &s, &t, ColadCriterion::StdMean);
        assert_eq!(mixed[0], [1.0, 2.0, 4.0, 6.0, 0.5, 3.0]);
        assert!((ch.net2_share - 2.0 / 3.0).abs() < 1e-12);
        // Means over the three groups: net1 (2 + 1.05 + 0.7)/3, net2 (2.2 + 5 + 0.5)/3; stds
        // over the two groups with several candidates.
        assert!((ch.net1_mean - 3.75 / 3.0).abs() < 1e-6);
        assert!((ch.net2_mean - 7.7 / 3.0).abs() < 1e-6);
        let want_std = (1.0 + 0.1f64 / 2f64.sqrt()) / 2.0;
        assert!((ch.net1_std - want_std).abs() < 1e-6, "{}", ch.net1_std);
        // Equal spreads go to network 2.
        let (mixed, ch) = choose(&c, &s, &s.clone(), ColadCriterion::StdMean);
        assert_eq!(mixed[0], s[0]);
        assert!(
            (ch.net2_share - 2.0 / 3.0).abs() < 1e-12,
            "ties: the two multi-candidate groups"
        );
    }
}
