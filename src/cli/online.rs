//! `kdet online`.

use super::*;

/// The flags of `kdet online`.
#[derive(clap::Args)]
pub struct OnlineArgs {
    /// Config: `teachers` (one), `model` (the student), `online` (the policy), `output_dir`.
    pub config: PathBuf,
    /// The stream: image folders (frames in name order), image files, or list files (`.txt`,
    /// one frame path a line, relative to the list).
    #[arg(required = true)]
    pub frames: Vec<PathBuf>,
    /// Ground truth of the frames (COCO, `file_name` = the frame's name; `kdet synth --task
    /// video` writes one): the AP of the student's stream detections against it.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Also run the teacher on every frame (outside the stream's cost): its AP against
    /// --truth, and its time per frame measured on every frame.
    #[arg(long)]
    pub teacher_every_frame: bool,
    /// Continue the stream from `output_dir/checkpoint.safetensors` (written every
    /// `online.checkpoint_every` frames and on Ctrl-C), with the same config, frames and flags.
    #[arg(long)]
    pub resume: bool,
    /// Start over although `output_dir` holds a stream's checkpoint (it is replaced).
    #[arg(long, conflicts_with = "resume")]
    pub fresh: bool,
    /// Skip a frame that cannot be read (said with its index, listed in `online.json`'s
    /// `skipped_frames`, no detections for it) instead of stopping the stream.
    #[arg(long)]
    pub skip_unreadable: bool,
}

pub fn run(args: OnlineArgs, device: &Option<String>) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&args.config, device)?;
    let frames = kdet::engine::online::collect_frames(&args.frames)?;
    let opts = kdet::engine::online::OnlineOptions {
        truth: args.truth,
        teacher_every_frame: args.teacher_every_frame,
        resume: args.resume,
        fresh: args.fresh,
        skip_unreadable: args.skip_unreadable,
    };
    let s = kdet::engine::online::run(&cfg, &frames, &opts)?;
    let ap = |name: &str, v: Option<f64>, v50: Option<f64>| match (v, v50) {
        (Some(a), Some(b)) => format!(", {name} AP {a:.3} (AP50 {b:.3})"),
        _ => String::new(),
    };
    eprintln!(
        "{} frames, teacher on {} ({:.1} %), {} updates, {:.1} frames/s, cost {:.2}× the \
         teacher on every frame{}{}; outputs in {}",
        s.frames,
        s.teacher_calls,
        100.0 * s.teacher_fraction,
        s.updates,
        s.fps,
        s.cost_ratio,
        ap("student", s.student_ap, s.student_ap50),
        ap("teacher", s.teacher_ap, s.teacher_ap50),
        s.output_dir.display()
    );
    if !s.skipped_frames.is_empty() {
        eprintln!(
            "{} unreadable frame(s) skipped (no detections; misses against --truth): {:?}",
            s.skipped_frames.len(),
            s.skipped_frames
        );
    }
    Ok(ExitCode::SUCCESS)
}
