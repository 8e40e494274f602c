//! `kdet train`.

use super::*;

/// The flags of `kdet train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// JSON config (see configs/; `base` inherits from another file).
    pub config: PathBuf,
    /// Continue from the last checkpoint in the config's output_dir.
    #[arg(long)]
    pub resume: bool,
    /// Also train the same student without distillation (same seed and schedule) and
    /// print `kdet compare`'s table of the two.
    #[arg(long)]
    pub baseline: bool,
    /// Stop after this many iterations (checkpoint written); `--resume` continues.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after: Option<u64>,
    /// Start over although output_dir holds a checkpoint (it is replaced).
    #[arg(long, conflicts_with = "resume")]
    pub fresh: bool,
    /// Train once per training seed: `N` (the config's seed and the N − 1 after it) or a
    /// list `a,b,c`, each into `<output_dir>/seed-<k>/` (with --baseline, the baseline too,
    /// into `<output_dir>_baseline/seed-<k>/`), then print mean, std and each seed's value
    /// (and the comparison over seeds). --resume skips finished seeds; --stop-after counts
    /// iterations over all seeds.
    #[arg(long, value_parser = kdet::engine::seeds::parse_seed_spec)]
    pub seeds: Option<kdet::engine::seeds::SeedSpec>,
}

pub fn run(args: TrainArgs, device: &Option<String>) -> anyhow::Result<ExitCode> {
    let TrainArgs {
        config,
        resume,
        baseline,
        stop_after,
        fresh,
        seeds,
    } = args;
    let cfg = load_config(&config, device)?;
    if baseline && cfg.config.teachers.is_empty() && cfg.config.method.is_none() {
        bail!(
            "{}: --baseline trains the student once more without distillation, but this config has no `teachers`",
            config.display()
        );
    }
    let opts = kdet::engine::trainer::TrainOptions {
        resume,
        stop_after,
        fresh,
    };
    if let Some(spec) = &seeds {
        let build = kdet::distill::build_method;
        kdet::engine::seeds::train_seeds(&cfg, spec, opts, baseline, build, print_train_summary)?;
        return Ok(ExitCode::SUCCESS);
    }
    let train =
        |cfg: &LoadedConfig, opts| kdet::engine::train(cfg, kdet::distill::build_method, opts);
    let s = train(&cfg, opts)?;
    print_train_summary(
        &s,
        !cfg.config.teachers.is_empty()
            || cfg
                .config
                .method
                .as_ref()
                .is_some_and(|m| !m.self_supervised()),
    );
    if baseline {
        eprintln!("training the same student without distillation (--baseline)");
        let bcfg = cfg.without_distillation();
        let mut bopts = opts;
        // `--resume` of an interrupted pair: the baseline may not have started yet.
        let bdir = bcfg.resolve("output_dir", &bcfg.config.output_dir);
        if bopts.resume && !bdir.join("checkpoint.safetensors").exists() {
            bopts.resume = false;
        }
        let b = train(&bcfg, bopts)?;
        print_train_summary(&b, false);
        if s.iterations == b.iterations && s.eval.is_some() && b.eval.is_some() {
            let runs = [
                kdet::eval::compare::RunInput::resolve(&b.output_dir)?,
                kdet::eval::compare::RunInput::resolve(&s.output_dir)?,
            ];
            let opts = kdet::eval::compare::CompareOptions::default();
            for c in kdet::eval::compare::compare_runs(&runs, None, &opts)? {
                println!("{}", c.to_markdown());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a finished `kdet train` prints: iterations and time, the references', and the trained
/// network's headline numbers.
fn print_train_summary(s: &kdet::engine::trainer::TrainSummary, distilled: bool) {
    let done = s.iterations - s.start;
    let resumed = if s.start > 0 {
        format!(" (resumed at {}, now at {})", s.start, s.iterations)
    } else {
        String::new()
    };
    let rate = if done > 0 {
        format!(" ({:.2} s/iter)", s.seconds / done as f64)
    } else {
        String::new()
    };
    println!(
        "trained {done} iterations{resumed} in {:.0} s{rate}; run: {}",
        s.seconds,
        s.output_dir.display()
    );
    for (label, e) in &s.references {
        println!("{label}: val {}", e.headline());
    }
    if let Some(e) = &s.eval {
        let who = if !s.evaluated.is_empty() {
            format!("{} (evaluated)", s.evaluated)
        } else if distilled {
            "distilled student".to_string()
        } else {
            "student".to_string()
        };
        println!("{who}: val {}", e.headline());
    }
}
