//! `kdet synth`.

use super::*;

/// The flags of `kdet synth`.
#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output folder: DIR/images/*.png and DIR/annotations/{train,val}.json (detection);
    /// DIR/{train,val}/<class>/*.png and DIR/unlabeled/*.png (classification);
    /// DIR/frames/frame_000001.png … and DIR/annotations.json (video: a new or empty folder).
    #[arg(long)]
    pub out: PathBuf,
    /// `detection`, `classification` (one object crop per image, class = shape × colour) or
    /// `video` (one fixed camera: moving shapes, drifting light, scene cuts; for `kdet online`).
    #[arg(long, value_enum, default_value = "detection")]
    pub task: kdet::data::synth::SynthTask,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of training images.
    #[arg(long, default_value_t = 512)]
    pub train: usize,
    /// Number of validation images.
    #[arg(long, default_value_t = 128)]
    pub val: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Number of classes: shapes (detection, 1–8) or shape × colour pairs (classification,
    /// 1–32).
    #[arg(long, default_value_t = 5)]
    pub classes: usize,
    /// Long-tail imbalance ratio: class frequencies decay geometrically from the first to
    /// the last class by this factor (1 = balanced). Classification: the training split only
    /// (val stays balanced), classes ranked by a seeded shuffle.
    #[arg(long, default_value_t = 1.0, value_parser = finite_f64)]
    pub long_tail: f64,
    /// Classification: images without labels, in DIR/unlabeled.
    #[arg(long, default_value_t = 0)]
    pub unlabeled: usize,
    /// Video: number of frames (--train and --val do not apply).
    #[arg(long, default_value_t = 300)]
    pub frames: usize,
    /// Video: the scene cuts to a new background and new objects every this many frames.
    #[arg(long, default_value_t = 150)]
    pub scene_length: usize,
    /// Video: at most this many objects in view at once.
    #[arg(long, default_value_t = 4)]
    pub max_objects: usize,
}

pub fn run(args: SynthArgs) -> anyhow::Result<ExitCode> {
    let SynthArgs {
        out,
        task,
        seed,
        train,
        val,
        size,
        classes,
        long_tail,
        unlabeled,
        frames,
        scene_length,
        max_objects,
    } = args;
    if task == kdet::data::synth::SynthTask::Video {
        let spec = kdet::data::video::VideoSpec {
            seed,
            frames,
            size,
            classes,
            scene_length,
            max_objects,
        };
        let p = kdet::data::video::generate_video(&spec, &out)?;
        eprintln!(
            "wrote {frames} frames to {} and their ground truth to {} (scenes start at frames {})",
            p.frames.display(),
            p.annotations.display(),
            p.cuts
                .iter()
                .map(|c| (c + 1).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let spec = SynthSpec {
        task,
        seed,
        train,
        val,
        size,
        classes,
        long_tail,
        unlabeled,
        cache_dir: PathBuf::new(),
    };
    let cfg = kdet::config::from_str(
        "kdet synth",
        &serde_json::json!({"data": {"synthetic": {"task": task, "seed": seed, "train": train, "val": val,
            "size": size, "classes": classes, "long_tail": long_tail, "unlabeled": unlabeled}}})
        .to_string(),
    );
    cfg.map_err(|e| {
        anyhow::anyhow!(e
            .to_string()
            .replace("kdet synth: data.synthetic.", "--")
            .replace('_', "-"))
    })?;
    if task == kdet::data::synth::SynthTask::Classification {
        let p = kdet::data::synth::generate_classification(&spec, &out)?;
        let counts = kdet::data::synth::long_tail_counts(classes, train, long_tail, seed);
        eprintln!(
            "wrote {} ({} images, {}–{} per class){}{}",
            p.train.display(),
            counts.iter().sum::<usize>(),
            counts.iter().min().unwrap_or(&0),
            counts.iter().max().unwrap_or(&0),
            // `--val 0` writes no val split: say none.
            match val {
                0 => ", no val split (--val 0)".to_string(),
                _ => format!(", {} ({} per class)", p.val.display(), val / classes.max(1)),
            },
            if unlabeled > 0 {
                format!(" and {} ({unlabeled} unlabeled)", p.unlabeled.display())
            } else {
                String::new()
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let p = kdet::data::synth::generate(&spec, &out)?;
    eprintln!(
        "wrote {} and {} (images in {})",
        p.train.display(),
        p.val.display(),
        p.images.display()
    );
    Ok(ExitCode::SUCCESS)
}
