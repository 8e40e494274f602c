//! Online model distillation on a video stream (Mullapudi et al., ICCV 2019, "Online Model
//! Distillation for Efficient Video Inference", Algorithm 1), for detectors: `kdet online`.
//!
//! The student predicts every frame. On a key frame the frozen teacher runs too; its
//! detections scoring at least `online.score_threshold` become the student's ground truth, and
//! the student takes up to `max_updates` gradient steps on that frame, measuring its agreement
//! with the teacher (F1 at IoU `online.iou`, the paper's mIoU for detection) before each and
//! stopping once it reaches `threshold`. The stride to the next key frame then doubles (the
//! student agreed) or halves (it did not), kept in `[min_stride, max_stride]` — the authors'
//! PyTorch code steps through strides 8, 16, 32, 64 this way.
//!
//! Nothing here is a second trainer: the student is a [`Plain`] method, each update is the
//! training loop's own [`update`] (the method's step, NaN guard, backward, clipping, the
//! engine's optimizer), checkpoints are [`save_checkpoint`]'s, per-frame records go to the
//! loop's [`MetricsLog`], the folder is claimed as a run folder (`engine::rundir`), and Ctrl-C
//! stops after the frame with a checkpoint (`engine::interrupt`). The stream is the batch
//! source; this file is its policy.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::evaluator::ResultRecord;
use super::method::Plain;
use super::metrics::MetricsLog;
use super::online_state::{self, Progress};
use super::optim::Optimizer;
use super::trainer::{optimizers, save_checkpoint, update, StepAt};
use crate::config::LoadedConfig;
use crate::data::loader::{Batch, Target};
use crate::distill::teacher::Teacher;
use crate::error::{invalid, Check, Error, Result};
use crate::models::contract::{Detections, Model};
use crate::models::sidecar::Sidecar;

/// The `online` section: the stream's policy (Mullapudi et al. 2019 §4 and Algorithm 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OnlineConfig {
    /// The student's starting weights (a whole model, local or `hf://`); absent: `model` from
    /// its seed (and `model.backbone.weights`), as training starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub student_weights: Option<String>,
    /// Paper: δ_min = 8 frames between teacher calls at least.
    pub min_stride: usize,
    /// Paper: δ_max = 64.
    pub max_stride: usize,
    /// Paper: u_max = 8 updates per key frame at most (0: the student never learns).
    pub max_updates: usize,
    /// Paper: a_thr = 0.9 — updates stop, and the stride doubles, once the agreement reaches it.
    pub threshold: f64,
    /// Paper: 0.01 ("high learning rate") with momentum 0.9; the authors' code: SGD, lr 0.01,
    /// momentum 0.9. The rest of the optimizer (kind, weight decay, clipping) is `solver`'s.
    pub lr: f64,
    pub momentum: f64,
    /// Teacher detections scoring at least this are the student's ground truth, and student
    /// detections scoring at least this are compared with them. kdet's choice (`kdet infer`'s
    /// drawing threshold); the paper's targets are Mask R-CNN's confident instances.
    pub score_threshold: f64,
    /// IoU at which a student detection matches a teacher one of its class (agreement F1).
    pub iou: f64,
    /// Write each frame with the student's detections drawn (`<frame>.png`).
    pub draw: bool,
    /// A checkpoint (student, optimizer, the stream's state and detections so far) every this
    /// many frames, besides the one at the end and on Ctrl-C: `--resume` continues from the
    /// last. kdet's choice: at the synthetic stream's ~0.1–0.3 s a frame, one every 10–30 s.
    pub checkpoint_every: usize,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            student_weights: None,
            min_stride: 8,
            max_stride: 64,
            max_updates: 8,
            threshold: 0.9,
            lr: 0.01,
            momentum: 0.9,
            score_threshold: 0.5,
            iou: 0.5,
            draw: false,
            checkpoint_every: 100,
        }
    }
}

impl OnlineConfig {
    /// Ranges; `p` is the section's JSON path (`online`).
    pub fn validate(&self, p: &str) -> Check {
        if self.min_stride == 0 {
            return Err(invalid(format!("{p}.min_stride"), "must be >= 1 frame"));
        }
        if self.min_stride > self.max_stride {
            return Err(invalid(
                format!("{p}.min_stride"),
                format!(
                    "{} is above max_stride {}: the stride lives between them",
                    self.min_stride, self.max_stride
                ),
            ));
        }
        let in_unit = |v: f64| v > 0.0 && v <= 1.0;
        if !in_unit(self.threshold) {
            return Err(invalid(
                format!("{p}.threshold"),
                format!(
                    "{} is outside (0, 1]: it is an F1 the student must reach",
                    self.threshold
                ),
            ));
        }
        if !in_unit(self.iou) {
            return Err(invalid(format!("{p}.iou"), "must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.score_threshold) {
            return Err(invalid(format!("{p}.score_threshold"), "must be in [0, 1]"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid(format!("{p}.lr"), "must be > 0"));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(invalid(format!("{p}.momentum"), "must be in [0, 1)"));
        }
        if self.checkpoint_every == 0 {
            return Err(invalid(
                format!("{p}.checkpoint_every"),
                "must be >= 1 frame",
            ));
        }
        Ok(())
    }
}

/// The stride between key frames: doubled after a key frame where the student reached the
/// threshold, halved otherwise, within `[min, max]`; it starts at `min` (Algorithm 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StridePolicy {
    pub min: usize,
    pub max: usize,
    pub stride: usize,
}

impl StridePolicy {
    pub fn new(min: usize, max: usize) -> Self {
        Self {
            min,
            max,
            stride: min,
        }
    }

    /// After a key frame: whether the student agreed with the teacher.
    pub fn next(&mut self, agreed: bool) {
        self.stride = if agreed {
            (self.stride * 2).min(self.max)
        } else {
            (self.stride / 2).max(self.min)
        };
    }
}

/// The student's agreement with the teacher on one frame: F1 at IoU `iou` of the student's
/// detections scoring at least `min_score` against the teacher's targets, matched greedily
/// (student detections by falling score, each to the unmatched target of its class it overlaps
/// most). Both empty: 1 (nothing to find, nothing found).
pub fn agreement(student: &Detections, min_score: f32, teacher: &Target, iou: f64) -> f64 {
    let mut order: Vec<usize> = (0..student.scores.len())
        .filter(|&i| student.scores[i] >= min_score)
        .collect();
    let n_student = order.len();
    let n_teacher = teacher.boxes.len();
    if n_student + n_teacher == 0 {
        return 1.0;
    }
    order.sort_by(|&a, &b| student.scores[b].total_cmp(&student.scores[a]));
    let mut taken = vec![false; n_teacher];
    let mut tp = 0usize;
    for i in order {
        let best = (0..n_teacher)
            .filter(|&j| !taken[j] && teacher.labels[j] == student.labels[i])
            .map(|j| (j, box_iou(&student.boxes[i], &teacher.boxes[j])))
            .filter(|&(_, v)| v >= iou)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((j, _)) = best {
            taken[j] = true;
            tp += 1;
        }
    }
    2.0 * tp as f64 / (n_student + n_teacher) as f64
}

fn box_iou(a: &[f32; 4], b: &[f32; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) as f64;
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0) as f64;
    let inter = iw * ih;
    let area = |r: &[f32; 4]| ((r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0)) as f64;
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// The frames of `inputs` in stream order: each folder's images in name order, each image
/// file itself, and each list file (`.txt`: one image path a line, relative to the list's
/// folder; blank lines and `#` comments skipped).
pub fn collect_frames(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut frames = vec![];
    for p in inputs {
        if p.is_file() && p.extension().is_some_and(|e| e == "txt") {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let dir = p.parent().unwrap_or(Path::new("."));
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let f = dir.join(line);
                if !f.is_file() {
                    return Err(Error::msg(format!(
                        "{}: line {}: {} is not a file",
                        p.display(),
                        n + 1,
                        f.display()
                    )));
                }
                frames.push(f);
            }
        } else {
            frames.extend(crate::infer::collect_images(std::slice::from_ref(p))?);
        }
    }
    if frames.is_empty() {
        return Err(Error::msg(
            "no frames: the inputs hold no JPEG or PNG image",
        ));
    }
    Ok(frames)
}

/// How to run a stream.
#[derive(Debug, Clone, Default)]
pub struct OnlineOptions {
    /// Ground truth of the frames (COCO, `file_name` = each frame's name): the student's and
    /// the teacher's AP against it at the end.
    pub truth: Option<PathBuf>,
    /// Also run the teacher on every frame (not counted in the cost): its AP against `truth`,
    /// and its time per frame measured rather than estimated from the key frames.
    pub teacher_every_frame: bool,
    /// Continue the stream from `output_dir/checkpoint.safetensors` (same config, frames and
    /// flags); `fresh`: start over although the folder holds a checkpoint (`kdet train`'s rules).
    pub resume: bool,
    pub fresh: bool,
    /// An unreadable frame is skipped (said with its index, counted in the summary, no
    /// detections) instead of stopping the stream.
    pub skip_unreadable: bool,
}

/// What a stream reports (also written as `online.json`).
#[derive(Debug, Clone, Serialize)]
pub struct OnlineSummary {
    pub frames: usize,
    pub teacher_calls: usize,
    /// Fraction of frames the teacher ran on (its cost share in calls).
    pub teacher_fraction: f64,
    pub updates: u64,
    /// Mean agreement on key frames before any update (the student as the frame found it).
    pub mean_agreement: f64,
    /// Wall time of the stream (student, teacher calls, updates), and frames per second.
    pub seconds: f64,
    pub fps: f64,
    /// The teacher's mean time per frame.
    pub teacher_seconds_per_frame: f64,
    /// The stream's time over the teacher's on every frame: below 1 is cheaper.
    pub cost_ratio: f64,
    /// Where the stream's time went: the teacher on key frames, the updates (with their
    /// predictions for the agreement), and the rest — the student's prediction of every frame
    /// with its decoding and resizing.
    pub seconds_teacher: f64,
    pub seconds_updates: f64,
    pub seconds_student: f64,
    /// The student's stream detections against the truth (COCO AP, AP50).
    pub student_ap: Option<f64>,
    pub student_ap50: Option<f64>,
    /// The teacher on every frame against the truth (`teacher_every_frame`).
    pub teacher_ap: Option<f64>,
    pub teacher_ap50: Option<f64>,
    /// Frames skipped as unreadable (1-based; `skip_unreadable`): no detections, so they count
    /// as misses in the AP against the truth.
    pub skipped_frames: Vec<usize>,
    pub output_dir: PathBuf,
}

/// The files a stream writes into its folder, drawings aside.
const FILES: [&str; 10] = [
    "config.json",
    "config_history.jsonl",
    "model.safetensors",
    "model.json",
    "checkpoint.safetensors",
    "metrics.jsonl",
    "detections.json",
    "teacher_detections.json",
    "online.json",
    "stream.png",
];

/// Run the stream `frames` through online distillation as the config's `online` section says:
/// the student (`model`, from `online.student_weights` or its seed) learns from `teachers[0]`
/// on key frames; every frame's student detections are the output. Writes into `output_dir`
/// (claimed as a run folder), never over an input; `opts.resume` continues from its checkpoint.
pub fn run(cfg: &LoadedConfig, frames: &[PathBuf], opts: &OnlineOptions) -> Result<OnlineSummary> {
    let pol = cfg.config.online.clone().unwrap_or_default();
    check_config(cfg)?;
    let out = cfg.resolve("output_dir", &cfg.config.output_dir);
    let train_opts = super::trainer::TrainOptions {
        resume: opts.resume,
        fresh: opts.fresh,
        stop_after: None,
    };
    super::trainer::check_output_dir(cfg, &out, train_opts)?;
    let device = cfg.device()?;
    let (teacher, names, ids) = load_teacher(cfg, &device)?;
    let method = Plain {
        student: load_student(cfg, &pol, &names, &device)?,
    };
    let truth = opts
        .truth
        .as_deref()
        .map(|t| Truth::load(t, frames, &names))
        .transpose()?;
    let mut solver = cfg.config.solver.clone();
    (solver.lr, solver.momentum) = (pol.lr, pol.momentum);
    let mut optimizers = optimizers(&method, &solver);
    let frozen = teacher.frozen_input();
    let (truth_file, every) = (opts.truth.as_deref(), opts.teacher_every_frame);
    let identity = online_state::identity(cfg, &frozen, frames, truth_file, every);
    let (st, changes) = if opts.resume {
        let ckpt = out.join("checkpoint.safetensors");
        online_state::restore(cfg, &ckpt, &identity, &method, &mut optimizers, &frozen)?
    } else {
        let policy = StridePolicy::new(pol.min_stride, pol.max_stride);
        (Progress::new(policy), vec![])
    };
    let start = opts.resume.then_some(st.frames() as u64);
    let (out, log) = open_folder(cfg, frames, &pol, start, &changes)?;
    let mut s = Stream {
        cfg,
        optimizers,
        method,
        teacher,
        pol,
        device,
        names,
        ids,
        log,
        out,
        identity,
        st,
        frame_size: None,
        other_size_said: false,
    };
    let _signals = super::interrupt::Guard::new()?;
    s.frames(frames, truth.as_ref(), opts)?;
    s.finish(frames.len(), truth.as_ref())
}

/// What `kdet online` refuses in a config: not one teacher, training-method sections.
fn check_config(cfg: &LoadedConfig) -> Result<()> {
    let c = &cfg.config;
    if c.teachers.len() != 1 {
        return Err(cfg.error(
            "teachers",
            format!(
                "online distillation learns from one teacher; this config names {}",
                c.teachers.len()
            ),
        ));
    }
    if !c.distill.is_empty() || c.method.is_some() {
        let key = if c.method.is_some() {
            "method"
        } else {
            "distill"
        };
        return Err(cfg.error(
            key,
            "online distillation trains the student on the teacher's detections alone; \
             remove this section",
        ));
    }
    Ok(())
}

/// `teachers[0]` with its class names and category ids (its sidecar's).
fn load_teacher(cfg: &LoadedConfig, device: &Device) -> Result<(Teacher, Vec<String>, Vec<u64>)> {
    let key = "teachers[0].weights";
    let path = cfg.resolve_weights(key, &cfg.config.teachers[0].weights)?;
    let side = Sidecar::find(&path)?.ok_or_else(|| {
        cfg.error(
            key,
            format!(
                "{} has no sidecar (`<stem>.json` or `model.json` beside it) naming its classes: \
                 the stream has no annotations to take them from",
                path.display()
            ),
        )
    })?;
    let names: Vec<String> = side.field("classes")?;
    let ids: Vec<u64> = side.field("category_ids")?;
    let teacher = Teacher::load_own_input(cfg, 0, names.len(), device)?;
    Ok((teacher, names, ids))
}

/// The student: `online.student_weights` (whose sidecar's classes, when it has one, must be the
/// teacher's), else `model` from the config's seed.
fn load_student(
    cfg: &LoadedConfig,
    pol: &OnlineConfig,
    names: &[String],
    device: &Device,
) -> Result<crate::models::build::Network> {
    let c = &cfg.config;
    let Some(w) = &pol.student_weights else {
        return super::method::network_for(cfg, &c.model, "model", c.seed, names.len(), device);
    };
    let key = "online.student_weights";
    let path = cfg.resolve_weights(key, w)?;
    if let Some(side) = Sidecar::find(&path)? {
        let theirs: Vec<String> = side.field("classes")?;
        if theirs != names {
            return Err(cfg.error(
                key,
                format!(
                    "{} detects [{}], the teacher [{}]: the student learns the teacher's classes, \
                     in its order",
                    path.display(),
                    theirs.join(", "),
                    names.join(", ")
                ),
            ));
        }
    }
    crate::models::build::Network::load(&c.model, names.len(), &path, device)
        .map_err(|e| cfg.error(key, e.to_string()))
}

/// Create and claim `output_dir` (a run folder: kdet's manifest, no input overwritten, no frame
/// in it; a stream from its start removes the earlier run's files, one resumed after frame
/// `resumed` keeps them and the temporaries of killed writes go), write `config.json` (the
/// config the stream started with), open the metrics log (kept up to the resumed frame) and
/// record the settings a resume changed there and in `config_history.jsonl`.
fn open_folder(
    cfg: &LoadedConfig,
    frames: &[PathBuf],
    pol: &OnlineConfig,
    resumed: Option<u64>,
    changes: &[super::rundir::Change],
) -> Result<(PathBuf, MetricsLog)> {
    let resume = resumed.is_some();
    let out = cfg.resolve("output_dir", &cfg.config.output_dir);
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let out = std::fs::canonicalize(&out).map_err(|e| Error::io(&out, e))?;
    if let Some(f) = frames
        .iter()
        .find(|f| std::fs::canonicalize(f).is_ok_and(|f| f.parent() == Some(out.as_path())))
    {
        return Err(cfg.error(
            "output_dir",
            format!(
                "{} holds the frame {}: the stream's outputs go to a folder of their own",
                out.display(),
                f.display()
            ),
        ));
    }
    super::rundir::remove_stale_temporaries(&out)?;
    let mut files: Vec<String> = FILES.iter().map(|f| f.to_string()).collect();
    if pol.draw {
        files.extend(crate::infer::drawing_names(frames));
    }
    super::rundir::claim(cfg, &out, &files, resume)?;
    let config_json = serde_json::to_value(&cfg.config).expect("config serialises");
    if !resume || !out.join("config.json").exists() {
        let text = serde_json::to_string_pretty(&config_json).expect("config serialises");
        crate::util::write_atomic(&out.join("config.json"), text.as_bytes())?;
    }
    let mut log = MetricsLog::open(&out, resumed)?;
    if let Some(at) = resumed {
        super::trainer::record_changes(&out, &mut log, at, changes, &config_json)?;
    }
    Ok((out, log))
}

/// The ground truth of the frames: each frame's image id in it (matched by file name), and
/// the truth restricted to the frames.
struct Truth {
    ids: Vec<u64>,
    gt: hotcoco::Dataset,
}

impl Truth {
    fn load(file: &Path, frames: &[PathBuf], names: &[String]) -> Result<Self> {
        let mut gt =
            crate::data::coco::load_ground_truth(file, crate::data::coco::Purpose::Eval)?.dataset;
        let cats: Vec<String> = crate::data::coco::CategoryMap::new(&gt.categories).names;
        if cats != names {
            return Err(Error::msg(format!(
                "{}: categories [{}] are not the teacher's classes [{}]",
                file.display(),
                cats.join(", "),
                names.join(", ")
            )));
        }
        let by_name: HashMap<&str, u64> = gt
            .images
            .iter()
            .map(|im| (im.file_name.as_str(), im.id))
            .collect();
        let mut ids = vec![];
        for (i, f) in frames.iter().enumerate() {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let id = by_name.get(name).copied().ok_or_else(|| {
                Error::msg(format!(
                    "{}: no image with file_name `{name}` (frame {} of the stream, {})",
                    file.display(),
                    i + 1,
                    f.display()
                ))
            })?;
            ids.push(id);
        }
        gt.images.retain(|im| ids.contains(&im.id));
        gt.annotations.retain(|a| ids.contains(&a.image_id));
        Ok(Self { ids, gt })
    }

    /// COCO AP and AP50 of `recs` against the truth.
    fn score(&self, recs: &[ResultRecord]) -> Result<(f64, f64)> {
        let dets = recs.iter().map(|r| r.to_annotation()).collect();
        let s = crate::eval::evaluate(self.gt.clone(), dets)?;
        Ok((s.stats[0], s.stats[1]))
    }
}

/// A stream in progress: the networks, its identity and its progress.
struct Stream<'a> {
    cfg: &'a LoadedConfig,
    pol: OnlineConfig,
    teacher: Teacher,
    method: Plain,
    optimizers: Vec<Optimizer>,
    device: Device,
    names: Vec<String>,
    ids: Vec<u64>,
    log: MetricsLog,
    out: PathBuf,
    /// The checkpoint strings naming what the stream is (`online_state::identity`).
    identity: BTreeMap<String, String>,
    st: Progress,
    /// The first frame's size (width, height) this process read, and whether a frame of
    /// another size was said: every frame is resized to the networks' inputs, as inference does.
    frame_size: Option<(u32, u32)>,
    other_size_said: bool,
}

/// The teacher's detections scoring at least `min_score` as ground truth: in the frame's
/// coordinates (the agreement's), and as `batch` to train on, in the network's coordinates as
/// the loader hands ground truth.
fn pseudo_labels(td: &Detections, min_score: f32, batch: &Batch) -> (Target, Batch) {
    let keep: Vec<usize> = (0..td.scores.len())
        .filter(|&k| td.scores[k] >= min_score)
        .collect();
    let target = Target {
        boxes: keep.iter().map(|&k| td.boxes[k]).collect(),
        labels: keep.iter().map(|&k| td.labels[k]).collect(),
        crowd: vec![],
    };
    let mut boxes = target.boxes.clone();
    crate::data::transforms::resize_boxes(
        &mut boxes,
        batch.original_sizes[0],
        batch.image_sizes[0],
    );
    let mut train = batch.clone();
    train.targets = vec![Target {
        boxes,
        ..target.clone()
    }];
    (target, train)
}

fn predict(model: &dyn Model, batch: &Batch) -> Result<Detections> {
    Ok(model.predict(batch)?.into_detections()?.remove(0))
}

impl Stream<'_> {
    /// Every frame from the first not done, with a progress bar and a checkpoint every
    /// `checkpoint_every` frames; a signal stops after its frame with the outputs so far
    /// written and a checkpoint.
    fn frames(
        &mut self,
        frames: &[PathBuf],
        truth: Option<&Truth>,
        opts: &OnlineOptions,
    ) -> Result<()> {
        let done = self.st.frames();
        let pb = super::trainer::progress(frames.len() as u64, done as u64);
        for (i, path) in frames.iter().enumerate().skip(done) {
            let id = truth.map_or(i as u64 + 1, |t| t.ids[i]);
            self.st.seconds += match self.frame(i, path, id, opts.teacher_every_frame) {
                Err(Error::UnreadableFrame(e)) if opts.skip_unreadable => self.skip(i, &e)?,
                r => r?,
            };
            let msg = format!(
                "stride {} teacher {} updates {}",
                self.st.policy.stride, self.st.teacher_calls, self.st.updates
            );
            pb.inc(1);
            if pb.is_hidden() && (i + 1) % 100 == 0 {
                eprintln!("frame {}/{}: {msg}", i + 1, frames.len());
            }
            pb.set_message(msg);
            if (i + 1) % self.pol.checkpoint_every == 0 && i + 1 < frames.len() {
                self.checkpoint()?;
            }
            super::interrupt::fault_hooks();
            if let Some(sig) = super::interrupt::requested() {
                pb.finish_and_clear();
                self.finish(frames.len(), truth)?;
                return Err(Error::Interrupted {
                    signal: sig,
                    msg: format!(
                        "interrupted by {} after frame {} of {}; the student's detections so far \
                         and the checkpoint are in {}: continue with `kdet online {} … --resume`",
                        super::interrupt::signal_name(sig),
                        i + 1,
                        frames.len(),
                        self.out.display(),
                        self.cfg.path.display()
                    ),
                });
            }
        }
        pb.finish_and_clear();
        Ok(())
    }

    /// The stream's checkpoint as it stands: the student, the optimizer, the stream's identity
    /// and progress (`online_state`). Its iteration is the frames done.
    fn checkpoint(&self) -> Result<()> {
        save_checkpoint(
            &self.out.join("checkpoint.safetensors"),
            &self.method,
            &self.optimizers,
            self.st.frames() as u64,
            &self.st.strings(&self.identity),
            None,
        )
    }

    /// Frame `i`: the student predicts (a key frame: the teacher runs and the student learns);
    /// its detections are recorded under `id`, drawn when asked, and the frame's record logged.
    /// Returns the seconds the stream spent on it (a reference teacher's run excluded).
    fn frame(&mut self, i: usize, path: &Path, id: u64, teacher_every_frame: bool) -> Result<f64> {
        let t0 = Instant::now();
        let rgb = crate::data::decode_image(path)
            .map_err(|e| Error::UnreadableFrame(format!("frame {} of the stream: {e}", i + 1)))?
            .to_rgb8();
        self.check_size(i, path, rgb.dimensions());
        let decode = t0.elapsed().as_secs_f64();
        let input = self.method.student.config.input().clone();
        let batch = crate::infer::image_batch(&rgb, id, &input, &self.device)?;
        let stride = self.st.policy.stride;
        // `iter` counts frames, as the checkpoint does (a resume keeps the records up to it).
        let mut rec = json!({"iter": i + 1, "frame": i + 1, "stride": stride, "key": false});
        let mut dets = predict(&*self.method.student.model, &batch)?;
        let mut teacher_dets = None;
        if i == self.st.next_key {
            let t = Instant::now();
            let td = self.teacher_predict(&rgb, id, &batch, decode)?;
            let teacher_time = t.elapsed().as_secs_f64();
            self.st.teacher_calls += 1;
            self.st.key_teacher_seconds += teacher_time;
            rec["teacher_time"] = json!(teacher_time);
            dets = self.key_frame(i, &batch, dets, &td, &mut rec)?;
            teacher_dets = Some(td);
        }
        let spent = t0.elapsed().as_secs_f64();
        for b in dets.to_coco(&self.ids, f32::NEG_INFINITY)? {
            self.st.student_recs.push(ResultRecord::new(id, b));
        }
        if self.pol.draw {
            let name = &crate::infer::drawing_names(&[path.to_path_buf()])[0];
            let img =
                crate::infer::drawing(&rgb, &dets, &self.names, self.pol.score_threshold as f32)?;
            let dst = self.out.join(name);
            img.save(&dst)
                .map_err(|e| Error::msg(format!("{}: {e}", dst.display())))?;
        }
        if teacher_every_frame {
            let td = match teacher_dets {
                Some(d) => d,
                None => self.teacher_predict(&rgb, id, &batch, decode)?,
            };
            for b in td.to_coco(&self.ids, f32::NEG_INFINITY)? {
                self.st.teacher_recs.push(ResultRecord::new(id, b));
            }
        }
        rec["teacher_calls"] = json!(self.st.teacher_calls);
        rec["total_updates"] = json!(self.st.updates);
        rec["time"] = json!(spent);
        self.log.write(&rec)?;
        self.st
            .trace
            .push((i + 1, stride, rec["agreement"].as_f64()));
        Ok(spent)
    }

    /// Frames of different sizes are each resized to the networks' inputs, as inference does;
    /// said once, at the first frame whose size differs from the first one's.
    fn check_size(&mut self, i: usize, path: &Path, size: (u32, u32)) {
        let first = *self.frame_size.get_or_insert(size);
        if size != first && !self.other_size_said {
            self.other_size_said = true;
            eprintln!(
                "note: frame {} ({}) is {}×{}, the stream's first frame {}×{}; each frame is \
                 resized to the networks' inputs as inference does (said once)",
                i + 1,
                path.display(),
                size.0,
                size.1,
                first.0,
                first.1
            );
        }
    }

    /// Frame `i` could not be read (`--skip-unreadable`): said, logged as skipped, no
    /// detections; a key frame due on it moves to the next frame.
    fn skip(&mut self, i: usize, err: &str) -> Result<f64> {
        eprintln!("warning: {err}; skipped (--skip-unreadable)");
        let stride = self.st.policy.stride;
        if self.st.next_key == i {
            self.st.next_key = i + 1;
        }
        self.st.skipped.push(i + 1);
        let rec = json!({"iter": i + 1, "frame": i + 1, "stride": stride, "key": false,
            "skipped": true, "teacher_calls": self.st.teacher_calls,
            "total_updates": self.st.updates, "time": 0.0});
        self.log.write(&rec)?;
        self.st.trace.push((i + 1, stride, None));
        Ok(0.0)
    }

    /// The teacher's detections on the frame `rgb` (in its coordinates), at the teacher's own
    /// input size: `batch` (the student's) when the two networks' inputs agree, else the frame
    /// resized for the teacher. Timed, with the frame's decoding (`decode` seconds), as the cost
    /// of the teacher alone on a frame.
    fn teacher_predict(
        &mut self,
        rgb: &image::RgbImage,
        id: u64,
        batch: &Batch,
        decode: f64,
    ) -> Result<Detections> {
        let t = Instant::now();
        let input = self.teacher.config.input();
        let td = if input == self.method.student.config.input() {
            predict(&*self.teacher.model, batch)?
        } else {
            let own = crate::infer::image_batch(rgb, id, input, &self.device)?;
            predict(&*self.teacher.model, &own)?
        };
        self.st.teacher_seconds += decode + t.elapsed().as_secs_f64();
        self.st.teacher_timed += 1;
        Ok(td)
    }

    /// A key frame (Algorithm 1): the teacher's confident detections become the targets; while
    /// the student's agreement is below the threshold and updates remain, one update on the
    /// frame and a new prediction; then the stride doubles or halves. `td`: the teacher's
    /// detections in the frame's coordinates. Returns the student's final detections.
    fn key_frame(
        &mut self,
        i: usize,
        batch: &Batch,
        mut dets: Detections,
        td: &Detections,
        rec: &mut Value,
    ) -> Result<Detections> {
        let t0 = Instant::now();
        let thr = self.pol.score_threshold as f32;
        let (target, train) = pseudo_labels(td, thr, batch);
        let mut a = agreement(&dets, thr, &target, self.pol.iou);
        let before = a;
        let mut u = 0;
        let mut losses = BTreeMap::new();
        while u < self.pol.max_updates && a < self.pol.threshold {
            let at = StepAt {
                seed: self.cfg.config.seed,
                it: self.st.updates,
                lr: self.pol.lr,
                grad_clip: self.cfg.config.solver.grad_clip,
                saved: None,
            };
            losses = update(&mut self.method, &mut self.optimizers, &train, &at)?.terms;
            self.st.updates += 1;
            u += 1;
            dets = predict(&*self.method.student.model, batch)?;
            a = agreement(&dets, thr, &target, self.pol.iou);
        }
        let update_time = t0.elapsed().as_secs_f64();
        self.st.update_seconds += update_time;
        self.st.agreements.push(before);
        self.st.policy.next(a >= self.pol.threshold);
        self.st.next_key = i + self.st.policy.stride;
        for (k, v) in [
            ("key", json!(true)),
            ("targets", json!(target.boxes.len())),
            ("agreement_before", json!(before)),
            ("agreement", json!(a)),
            ("updates", json!(u)),
            ("update_time", json!(update_time)),
            ("next_stride", json!(self.st.policy.stride)),
        ] {
            rec[k] = v;
        }
        if u > 0 {
            // The last update's loss terms.
            rec["loss"] = json!(losses.values().sum::<f64>());
            for (k, v) in losses {
                rec[k] = json!(v);
            }
        }
        Ok(dets)
    }
}

impl Stream<'_> {
    /// The stream's outputs (also after a signal, for the frames done): `detections.json`, the
    /// reference teacher's, the checkpoint and `model.safetensors` of the student as it ends,
    /// `online.json` and the plot.
    fn finish(&mut self, total: usize, truth: Option<&Truth>) -> Result<OnlineSummary> {
        let out = self.out.clone();
        let st = &self.st;
        super::evaluator::write_results(&out.join("detections.json"), &st.student_recs)?;
        if !st.teacher_recs.is_empty() {
            super::evaluator::write_results(
                &out.join("teacher_detections.json"),
                &st.teacher_recs,
            )?;
        }
        self.checkpoint()?;
        let student = &self.method.student;
        let tensors: HashMap<_, _> = student.named_tensors().into_iter().collect();
        crate::models::weights::write_safetensors(&tensors, &out.join("model.safetensors"))?;
        Sidecar::write(
            &out.join("model.json"),
            &student.config,
            &self.names,
            &self.ids,
        )?;
        let frames = st.frames();
        let per_frame = st.teacher_seconds / st.teacher_timed.max(1) as f64;
        let score = |recs: &[ResultRecord], on: bool| match truth.filter(|_| on) {
            Some(t) => t.score(recs).map(Some),
            None => Ok(None),
        };
        let sa = score(&st.student_recs, frames == total)?;
        let te = score(
            &st.teacher_recs,
            frames == total && !st.teacher_recs.is_empty(),
        )?;
        let spent = st.seconds;
        let summary = OnlineSummary {
            frames,
            teacher_calls: st.teacher_calls,
            teacher_fraction: st.teacher_calls as f64 / frames.max(1) as f64,
            updates: st.updates,
            mean_agreement: mean(&st.agreements),
            seconds: spent,
            fps: frames as f64 / spent.max(1e-9),
            teacher_seconds_per_frame: per_frame,
            cost_ratio: spent / (per_frame * frames as f64).max(1e-9),
            seconds_teacher: st.key_teacher_seconds,
            seconds_updates: st.update_seconds,
            seconds_student: spent - st.key_teacher_seconds - st.update_seconds,
            student_ap: sa.map(|v| v.0),
            student_ap50: sa.map(|v| v.1),
            teacher_ap: te.map(|v| v.0),
            teacher_ap50: te.map(|v| v.1),
            skipped_frames: st.skipped.clone(),
            output_dir: out.clone(),
        };
        let text = serde_json::to_string_pretty(&summary).expect("summary serialises");
        crate::util::write_atomic(&out.join("online.json"), text.as_bytes())?;
        if let Err(e) = self.plot(&out.join("stream.png")) {
            eprintln!("warning: stream.png: {e}");
        }
        Ok(summary)
    }

    /// `stream.png`: the stride over the frames, the agreement on key frames.
    fn plot(&self, path: &Path) -> Result<()> {
        use crate::plot::{panels_chart, Panel};
        let stride: Vec<(f64, f64)> = self
            .st
            .trace
            .iter()
            .map(|t| (t.0 as f64, t.1 as f64))
            .collect();
        let agree: Vec<(f64, f64)> = self
            .st
            .trace
            .iter()
            .filter_map(|t| t.2.map(|a| (t.0 as f64, a)))
            .collect();
        let panel = |title: &str, name: &str, pts, refs, markers| Panel {
            title: title.into(),
            series: vec![(name.into(), pts)],
            references: refs,
            markers,
        };
        panels_chart(
            path,
            "frame",
            (1.0, self.st.trace.len().max(2) as f64),
            &[
                panel(
                    "frames between teacher calls",
                    "stride",
                    stride,
                    vec![],
                    false,
                ),
                panel(
                    "agreement with the teacher on key frames (F1)",
                    "after updates",
                    agree,
                    vec![("threshold".into(), self.pol.threshold)],
                    true,
                ),
            ],
        )
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_doubles_when_the_student_agrees_halves_when_not_within_bounds() {
        let mut p = StridePolicy::new(8, 64);
        assert_eq!(p.stride, 8, "Algorithm 1 starts at δ_min");
        let mut seen = vec![];
        for agreed in [false, true, true, true, true, false, false, false, true] {
            p.next(agreed);
            seen.push(p.stride);
        }
        assert_eq!(seen, [8, 16, 32, 64, 64, 32, 16, 8, 16]);
        // Bounds that are no powers of two: clamped, never outside.
        let mut p = StridePolicy::new(3, 10);
        p.next(true);
        p.next(true);
        assert_eq!(p.stride, 10);
        p.next(false);
        p.next(false);
        p.next(false);
        assert_eq!(p.stride, 3);
    }

    fn dets(v: &[([f32; 4], f32, u32)]) -> Detections {
        Detections {
            boxes: v.iter().map(|d| d.0).collect(),
            scores: v.iter().map(|d| d.1).collect(),
            labels: v.iter().map(|d| d.2).collect(),
        }
    }

    fn target(v: &[([f32; 4], u32)]) -> Target {
        Target {
            boxes: v.iter().map(|d| d.0).collect(),
            labels: v.iter().map(|d| d.1).collect(),
            crowd: vec![],
        }
    }

    #[test]
    fn agreement_is_f1_of_class_matches_at_the_iou() {
        let t = target(&[([0., 0., 10., 10.], 1), ([20., 20., 30., 30.], 2)]);
        // One exact match, one of the wrong class, one below the score threshold (ignored):
        // TP 1 of 2 student and 2 teacher boxes → F1 = 2·1 / 4.
        let s = dets(&[
            ([0., 0., 10., 10.], 0.9, 1),
            ([20., 20., 30., 30.], 0.8, 1),
            ([20., 20., 30., 30.], 0.1, 2),
        ]);
        assert!((agreement(&s, 0.5, &t, 0.5) - 0.5).abs() < 1e-12);
        // IoU of [0,0,10,10] with [0,0,10,5] is 0.5: a match at 0.5, none at 0.6.
        let half = dets(&[([0., 0., 10., 5.], 0.9, 1)]);
        let one = target(&[([0., 0., 10., 10.], 1)]);
        assert_eq!(agreement(&half, 0.5, &one, 0.5), 1.0);
        assert_eq!(agreement(&half, 0.5, &one, 0.6), 0.0);
        // A teacher box matches once: the duplicate is a false positive (2·1 / 3).
        let dup = dets(&[([0., 0., 10., 10.], 0.9, 1), ([0., 0., 10., 10.], 0.8, 1)]);
        assert!((agreement(&dup, 0.5, &one, 0.5) - 2.0 / 3.0).abs() < 1e-12);
        // Nothing to find and nothing found: full agreement; only one side empty: none.
        assert_eq!(agreement(&dets(&[]), 0.5, &target(&[]), 0.5), 1.0);
        assert_eq!(agreement(&dets(&[]), 0.5, &one, 0.5), 0.0);
        assert_eq!(agreement(&dup, 0.5, &target(&[]), 0.5), 0.0);
    }

    #[test]
    fn bad_policies_are_located_errors() {
        let err = |online: &str| {
            crate::config::from_str("c.json", &format!(r#"{{"online": {online}}}"#))
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"min_stride": 16, "max_stride": 8}"#);
        assert!(
            e.contains("c.json: online.min_stride: 16 is above max_stride 8"),
            "{e}"
        );
        let e = err(r#"{"min_stride": 0}"#);
        assert!(e.contains("online.min_stride: must be >= 1"), "{e}");
        for bad in ["0", "1.5", "-0.2"] {
            let e = err(&format!(r#"{{"threshold": {bad}}}"#));
            assert!(
                e.contains("online.threshold") && e.contains("outside (0, 1]"),
                "{e}"
            );
        }
        let e = err(r#"{"lr": 0}"#);
        assert!(e.contains("online.lr: must be > 0"), "{e}");
        let e = err(r#"{"stride": 8}"#);
        assert!(e.contains("online") && e.contains("stride"), "{e}");
        // The paper's defaults.
        let d = OnlineConfig::default();
        assert_eq!((d.min_stride, d.max_stride, d.max_updates), (8, 64, 8));
        assert_eq!((d.threshold, d.lr, d.momentum), (0.9, 0.01, 0.9));
    }

    #[test]
    fn pseudo_labels_keep_the_frame_coordinates_and_train_at_the_students_size() {
        // A 128-px frame, a student with an input of its own (64 px): the teacher's boxes (in
        // the frame's coordinates, whatever size the teacher ran at) stay as they are for the
        // agreement and are halved for the update; below the score threshold they are dropped.
        let rgb = image::RgbImage::new(128, 96);
        let input = crate::data::transforms::InputConfig {
            min_size: 48,
            max_size: 100,
            ..Default::default()
        };
        let batch = crate::infer::image_batch(&rgb, 7, &input, &Device::Cpu).unwrap();
        assert_eq!(batch.image_sizes[0], (48, 64));
        let td = dets(&[([20., 40., 60., 90.], 0.9, 2), ([0., 0., 8., 8.], 0.3, 1)]);
        let (target, train) = pseudo_labels(&td, 0.5, &batch);
        assert_eq!(target.boxes, [[20., 40., 60., 90.]]);
        assert_eq!(target.labels, [2]);
        assert_eq!(train.targets[0].boxes, [[10., 20., 30., 45.]]);
        assert_eq!(train.targets[0].labels, [2]);
        assert_eq!(train.image_ids, batch.image_ids);
    }

    #[test]
    fn frames_come_from_folders_in_name_order_and_list_files() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b.png", "a.png", "c.png"] {
            image::RgbImage::new(4, 4).save(d.path().join(n)).unwrap();
        }
        let got = collect_frames(&[d.path().to_path_buf()]).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.png", "b.png", "c.png"]);
        let list = d.path().join("list.txt");
        std::fs::write(&list, "# order\nc.png\n\na.png\n").unwrap();
        assert_eq!(
            collect_frames(std::slice::from_ref(&list)).unwrap(),
            [d.path().join("c.png"), d.path().join("a.png")]
        );
        std::fs::write(&list, "c.png\nmissing.png\n").unwrap();
        let e = collect_frames(&[list]).unwrap_err().to_string();
        assert!(
            e.contains("list.txt: line 2:") && e.contains("missing.png"),
            "{e}"
        );
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = collect_frames(&[empty]).unwrap_err().to_string();
        assert!(e.contains("no JPEG or PNG"), "{e}");
    }
}
