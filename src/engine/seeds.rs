//! `kdet train CONFIG --seeds N` (or `--seeds a,b,c`): the config trained once per training
//! seed, into `<output_dir>/seed-<k>/` (with `--baseline`, the student alone too, seed for seed,
//! into `<output_dir>_baseline/seed-<k>/`), then the mean, sample standard deviation and each
//! seed's value of the headline metrics, and with `--baseline` the comparison over seeds
//! (`eval::multiseed`). One seed's number is one draw of the training run; whether a method
//! helps is a statement about the distribution of such draws (Bouthillier et al. 2021).
//!
//! A seed is the config's `seed`: it sets the initial weights, data order, augmentation, the
//! samplers and the steps' sampling (`engine::trainer`), and the explicit seed of any other
//! network the method trains (`method.partner_seed`, `method.peers[i].seed`,
//! `method.students[i].seed`) moves with it (by the same offset), so it is another draw too.
//! Nothing in the data section changes: `data.synthetic.seed` fixes the data set.
//!
//! `--resume` resumes each started seed, starts the ones not started and skips the finished
//! ones (an `eval.json` at the run's last iteration); `--stop-after N` is a budget of N
//! iterations for the whole command, across seeds.

use std::path::{Path, PathBuf};

use crate::config::LoadedConfig;
use crate::error::{Error, Result};
use crate::eval::compare::{CompareOptions, RunInput};
use crate::eval::multiseed::{compare_arms, Arm, SeedRun, SEED_DIR_PREFIX};
use crate::eval::STAT_NAMES;

use super::train;
use super::trainer::{MethodBuilder, TrainOptions, TrainSummary};

/// Which training seeds: a count from the config's `seed` on, or a list.
#[derive(Debug, Clone, PartialEq)]
pub enum SeedSpec {
    Count(u64),
    List(Vec<u64>),
}

/// `--seeds`: `N` (a count, ≥ 1) or `a,b,c` (distinct seeds).
pub fn parse_seed_spec(s: &str) -> std::result::Result<SeedSpec, String> {
    let s = s.trim();
    if !s.contains(',') {
        let n: u64 = s
            .parse()
            .map_err(|_| format!("expected a count (3) or a list of seeds (0,1,2), got {s:?}"))?;
        return match n {
            0 => Err("the count of seeds must be at least 1".into()),
            n => Ok(SeedSpec::Count(n)),
        };
    }
    let mut seeds = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let k: u64 = part
            .parse()
            .map_err(|_| format!("{part:?} in {s:?} is not a seed (a non-negative integer)"))?;
        if seeds.contains(&k) {
            return Err(format!("seed {k} is listed twice in {s:?}"));
        }
        seeds.push(k);
    }
    Ok(SeedSpec::List(seeds))
}

impl SeedSpec {
    /// The seeds, a count starting at `first` (the config's `seed`).
    pub fn seeds(&self, first: u64) -> Vec<u64> {
        match self {
            SeedSpec::Count(n) => (0..*n).map(|k| first.wrapping_add(k)).collect(),
            SeedSpec::List(l) => l.clone(),
        }
    }
}

/// `cfg` trained with `seed`, into `<output_dir>/seed-<seed>`. An explicit seed of another
/// network (Co-LAD's, DCM's or DoGo's `partner_seed`, a DML peer's or FFSD student's `seed`)
/// moves by the same offset from the config's own seed, so the config's seed gives exactly the
/// config as written.
pub fn seeded(cfg: &LoadedConfig, seed: u64) -> LoadedConfig {
    let mut s = cfg.clone();
    let offset = seed.wrapping_sub(cfg.config.seed);
    s.config.seed = seed;
    if let Some(m) = &mut s.config.method {
        for p in m.network_seeds_mut() {
            *p = p.wrapping_add(offset);
        }
    }
    s.config.output_dir = cfg
        .config
        .output_dir
        .join(format!("{SEED_DIR_PREFIX}{seed}"));
    s
}

/// The iteration a run's `eval.json` was written at (only the last iteration writes it).
fn evaluated_at(dir: &Path) -> Option<u64> {
    let text = std::fs::read(dir.join("eval.json")).ok()?;
    serde_json::from_slice::<serde_json::Value>(&text).ok()?["iter"].as_u64()
}

/// Whether a run of `cfg` in `dir` is finished: evaluated at the run's length. A run whose length
/// is in epochs is never taken as finished here (its length needs the data): resuming it redoes
/// only its final evaluation.
fn finished(cfg: &LoadedConfig, dir: &Path) -> bool {
    if let Some(f) = &cfg.config.federated {
        return evaluated_at(dir) == Some(f.rounds);
    }
    let (len, in_epochs) = cfg.config.solver.length();
    !in_epochs && evaluated_at(dir) == Some(len)
}

/// The headline metrics a run's `eval.json` records: AP … of a detector (those with ground
/// truth), top-1 … of a classifier.
pub fn headline_metrics(dir: &Path) -> Result<Vec<(String, f64)>> {
    let f = dir.join("eval.json");
    let bytes = crate::error::read_file(&f)?;
    let v: serde_json::Value = crate::error::parse_json(&f, &bytes)?;
    if let Some(stats) = v["stats"].as_array() {
        return Ok(STAT_NAMES
            .iter()
            .zip(stats)
            .take(5)
            .filter_map(|(k, x)| Some((k.to_string(), x.as_f64().filter(|x| *x >= 0.0)?)))
            .collect());
    }
    let s: crate::eval::classify::ClassSummary = serde_json::from_value(v["summary"].clone())
        .map_err(|e| Error::located(&f, "summary", e.to_string()))?;
    Ok(s.named()
        .into_iter()
        .map(|(k, x)| (k.to_string(), x))
        .collect())
}

/// Markdown table of the headline metrics over seeds: mean, sample standard deviation (n − 1),
/// each seed's value.
pub fn seed_table(label: &str, runs: &[(u64, PathBuf)]) -> Result<String> {
    let per_seed: Vec<Vec<(String, f64)>> = runs
        .iter()
        .map(|(_, d)| headline_metrics(d))
        .collect::<Result<_>>()?;
    let mut s = format!(
        "### {label}: {} seeds\n\n| metric | mean | std | {} |\n|---|---:|---:|{}\n",
        runs.len(),
        runs.iter()
            .map(|(k, _)| format!("seed {k}"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(runs.len())
    );
    for (m, (name, _)) in per_seed[0].iter().enumerate() {
        let v: Vec<f64> = per_seed
            .iter()
            .filter_map(|r| r.get(m).map(|x| x.1))
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let std = if v.len() > 1 {
            let ss = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
            format!("{:.3}", (ss / (v.len() - 1) as f64).sqrt())
        } else {
            "–".into()
        };
        let each: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
        s.push_str(&format!(
            "| {name} | {mean:.3} | {std} | {} |\n",
            each.join(" | ")
        ));
    }
    Ok(s)
}

/// How each seed's training went.
enum SeedResult {
    Done(PathBuf),
    /// `--stop-after` ran out inside this seed's run.
    Stopped(Box<TrainSummary>),
}

/// Train (or skip, or resume) one seed's run of `cfg`, within `budget` iterations.
fn train_one(
    cfg: &LoadedConfig,
    opts: TrainOptions,
    budget: &mut Option<u64>,
    build: MethodBuilder,
    report: fn(&TrainSummary, bool),
    distilled: bool,
) -> Result<SeedResult> {
    let dir = cfg.resolve("output_dir", &cfg.config.output_dir);
    let label = format!("seed {}", cfg.config.seed);
    if opts.resume && finished(cfg, &dir) {
        eprintln!("{label}: finished, skipped ({})", dir.display());
        return Ok(SeedResult::Done(dir));
    }
    let mut o = opts;
    // `--resume` over seeds: the ones not started yet start from iteration 0.
    o.resume = opts.resume && dir.join("checkpoint.safetensors").exists();
    o.stop_after = *budget;
    eprintln!("{label}: training into {}", dir.display());
    let s = train(cfg, build, o)?;
    report(&s, distilled);
    if let Some(b) = budget {
        *b = b.saturating_sub(s.iterations - s.start);
    }
    if evaluated_at(&dir) == Some(s.iterations) {
        Ok(SeedResult::Done(dir))
    } else {
        Ok(SeedResult::Stopped(Box::new(s)))
    }
}

/// `kdet train CONFIG --seeds …` (module doc). `report` prints each run's summary as a single
/// training does; `baseline` trains the student alone too, seed for seed.
pub fn train_seeds(
    cfg: &LoadedConfig,
    spec: &SeedSpec,
    opts: TrainOptions,
    baseline: bool,
    build: MethodBuilder,
    report: fn(&TrainSummary, bool),
) -> Result<()> {
    let seeds = spec.seeds(cfg.config.seed);
    let distilled = !cfg.config.teachers.is_empty() || cfg.config.method.is_some();
    let base_cfg = baseline.then(|| cfg.without_distillation());
    let mut budget = opts.stop_after;
    let (mut runs, mut base_runs) = (vec![], vec![]);
    for &seed in &seeds {
        let arms = std::iter::once((cfg, distilled, &mut runs))
            .chain(base_cfg.as_ref().map(|b| (b, false, &mut base_runs)));
        for (c, d, done) in arms {
            if budget == Some(0) {
                println!("stopped by --stop-after before seed {seed}: `--resume` continues");
                return Ok(());
            }
            match train_one(&seeded(c, seed), opts, &mut budget, build, report, d)? {
                SeedResult::Done(dir) => done.push((seed, dir)),
                SeedResult::Stopped(s) => {
                    println!(
                        "stopped by --stop-after in seed {seed} at iteration {}: `--resume` continues",
                        s.iterations
                    );
                    return Ok(());
                }
            }
        }
    }
    report_over_seeds(cfg, base_cfg.as_ref(), &runs, &base_runs)
}

/// The run folder's name of a config (the arm's name in tables).
fn arm_name(c: &LoadedConfig) -> String {
    c.config
        .output_dir
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy().into_owned())
}

/// Print each arm's table over seeds and, with a baseline, `kdet compare`'s table over seeds.
fn report_over_seeds(
    cfg: &LoadedConfig,
    base_cfg: Option<&LoadedConfig>,
    runs: &[(u64, PathBuf)],
    base_runs: &[(u64, PathBuf)],
) -> Result<()> {
    println!("{}", seed_table(&arm_name(cfg), runs)?);
    let Some(b) = base_cfg else {
        return Ok(());
    };
    println!("{}", seed_table(&arm_name(b), base_runs)?);
    let arm = |c: &LoadedConfig, runs: &[(u64, PathBuf)]| -> Result<Arm> {
        Ok(Arm {
            name: arm_name(c),
            runs: runs
                .iter()
                .map(|(k, d)| {
                    Ok(SeedRun {
                        seed: Some(*k),
                        run: RunInput::resolve(d)?,
                    })
                })
                .collect::<Result<_>>()?,
        })
    };
    let arms = [arm(b, base_runs)?, arm(cfg, runs)?];
    for c in compare_arms(&arms, None, &CompareOptions::default())? {
        println!("{}", c.to_markdown());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::distill::MethodConfig;

    #[test]
    fn seed_counts_and_lists() {
        assert_eq!(parse_seed_spec("3"), Ok(SeedSpec::Count(3)));
        assert_eq!(SeedSpec::Count(3).seeds(5), [5, 6, 7]);
        assert_eq!(parse_seed_spec("4, 0,9"), Ok(SeedSpec::List(vec![4, 0, 9])));
        assert_eq!(SeedSpec::List(vec![4, 0]).seeds(5), [4, 0]);
        assert!(parse_seed_spec("0").unwrap_err().contains("at least 1"));
        assert!(parse_seed_spec("1,1").unwrap_err().contains("twice"));
        assert!(parse_seed_spec("1,x").unwrap_err().contains("\"x\""));
        assert!(parse_seed_spec("three").unwrap_err().contains("count"));
    }

    /// Every network's explicit seed moves with the run's seed, not Co-LAD's alone: a DCM
    /// partner, DML peers; a null seed stays null (derived from the run's seed at build time).
    #[test]
    fn explicit_network_seeds_move_with_the_run_seed() {
        let load = |name: &str| {
            crate::config::load(Path::new(&format!("configs/synth/{name}.json"))).unwrap()
        };
        let mut dcm = load("cls_dcm");
        let mut dml = load("cls_dml");
        let base = dcm.config.seed;
        assert!(dcm
            .config
            .method
            .as_mut()
            .unwrap()
            .network_seeds_mut()
            .is_empty());
        if let Some(MethodConfig::Dcm { partner_seed, .. }) = &mut dcm.config.method {
            *partner_seed = Some(40);
        }
        if let Some(MethodConfig::Dml { peers, .. }) = &mut dml.config.method {
            peers[0].seed = Some(7);
        }
        let moved = |c: &LoadedConfig| -> Vec<u64> {
            let mut m = seeded(c, base + 3).config.method.unwrap();
            m.network_seeds_mut().into_iter().map(|s| *s).collect()
        };
        assert_eq!(moved(&dcm), [43]);
        assert_eq!(moved(&dml), [10]);
        assert_eq!(seeded(&dml, base).config.method, dml.config.method);
    }
}
