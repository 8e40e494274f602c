//! A deterministic synthetic video (`kdet synth --task video`): the shapes world of
//! [`super::synth`] seen by one fixed camera, the stream `kdet online` specialises a student on
//! (Mullapudi et al. 2019 study such fixed-camera streams). Objects move at constant velocity,
//! appear inside the frame or enter from an edge, and leave when they drift out; the light
//! swings slowly (a gain on every pixel) and the background's colours drift through a scene;
//! every `scene_length` frames the scene cuts to a new background and a new set of objects.
//! Every frame has its ground truth (COCO `annotations.json`, boxes of the visible part of each
//! shape), so accuracy is measured against the truth, not only against a teacher.
//!
//! The world is simulated frame by frame from one seeded stream; each frame's pixel noise has
//! a seed of its own, so frames render in parallel. Same spec ⇒ byte-identical files.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::json;

use super::synth::{contrasting_colour, draw_shape, to_image, Background, SHAPES};
use crate::error::{Error, Result};

/// What stream to make.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoSpec {
    pub seed: u64,
    /// Number of frames.
    pub frames: usize,
    /// Side of the square frames in pixels.
    pub size: u32,
    /// Number of shape classes (at most 8).
    pub classes: usize,
    /// Frames per scene: the scene cuts (new background, new objects) every this many frames.
    pub scene_length: usize,
    /// At most this many objects in view at once.
    pub max_objects: usize,
}

impl Default for VideoSpec {
    /// 300 frames of 128 px (the side the synthetic teachers were trained at), 5 classes, a
    /// cut every 150 frames: generated in seconds.
    fn default() -> Self {
        Self {
            seed: 0,
            frames: 300,
            size: 128,
            classes: 5,
            scene_length: 150,
            max_objects: 4,
        }
    }
}

/// How often (per frame) a new object appears while fewer than `max_objects` are in view.
const SPAWN_PROB: f64 = 0.05;
/// Period (frames) and amplitude of the slow swing of the light.
const LIGHT_PERIOD: f64 = 240.0;
const LIGHT_AMPLITUDE: f64 = 0.2;
/// A shape whose visible part covers less than this many pixels has no ground truth (a sliver
/// at the edge as it enters or leaves).
const MIN_VISIBLE_AREA: f64 = 16.0;

impl VideoSpec {
    /// Ranges, with the flag each value came from.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, msg: String| Err(Error::msg(format!("--{flag}: {msg}")));
        if self.frames == 0 {
            return bad("frames", "must be >= 1".into());
        }
        if !(32..=1024).contains(&self.size) {
            return bad("size", format!("{} is outside 32..=1024 pixels", self.size));
        }
        if self.classes == 0 || self.classes > SHAPES.len() {
            return bad("classes", format!("must be in 1..={}", SHAPES.len()));
        }
        if self.scene_length == 0 {
            return bad("scene-length", "must be >= 1 frame".into());
        }
        if self.max_objects == 0 {
            return bad("max-objects", "must be >= 1".into());
        }
        Ok(())
    }
}

/// One moving shape.
#[derive(Debug, Clone)]
struct Mover {
    class: usize,
    colour: [f64; 3],
    /// `x, y, w, h` of the shape's box, which may reach outside the frame.
    b: [f64; 4],
    v: [f64; 2],
}

/// One scene: its background at the start and at the end (the colours drift between them).
#[derive(Debug, Clone)]
struct Scene {
    start: Background,
    end: Background,
}

/// The world at one frame: the scene's background of the moment, the light and the shapes.
#[derive(Debug, Clone)]
struct FrameState {
    background: Background,
    gain: f64,
    movers: Vec<Mover>,
}

/// A new shape: inside the frame (`enter` false) or just outside an edge, moving in.
fn spawn(spec: &VideoSpec, bg: &Background, rng: &mut ChaCha8Rng, enter: bool) -> Mover {
    let s = spec.size as f64;
    let class = rng.random_range(0..spec.classes);
    let side = rng.random_range(0.12..0.35) * s;
    let aspect: f64 = rng.random_range(0.7..1.4);
    let (w, h) = (side * aspect.sqrt(), side / aspect.sqrt());
    let speed = rng.random_range(0.3..1.5);
    let angle: f64 = rng.random_range(0.0..std::f64::consts::TAU);
    let mut v = [speed * angle.cos(), speed * angle.sin()];
    let mut b = [
        rng.random_range(0.0..s - w),
        rng.random_range(0.0..s - h),
        w,
        h,
    ];
    if enter {
        // Start one pixel inside an edge, heading into the frame.
        match rng.random_range(0..4) {
            0 => (b[0], v[0]) = (1.0 - w, v[0].abs()),
            1 => (b[0], v[0]) = (s - 1.0, -v[0].abs()),
            2 => (b[1], v[1]) = (1.0 - h, v[1].abs()),
            _ => (b[1], v[1]) = (s - 1.0, -v[1].abs()),
        }
    }
    // The colour stands out from the scene's mean background.
    let mean: [f64; 3] = std::array::from_fn(|c| (bg.c0[c] + bg.c1[c]) / 2.0);
    let colour = contrasting_colour(&[mean], 1, [0.0, 0.0, 0.0, 0.0], rng);
    Mover {
        class,
        colour,
        b,
        v,
    }
}

/// Whether a box lies wholly outside the frame (and is moving away: it has left).
fn gone(b: &[f64; 4], s: f64) -> bool {
    b[0] >= s || b[1] >= s || b[0] + b[2] <= 0.0 || b[1] + b[3] <= 0.0
}

/// Simulate the world: the state at every frame and the first frame of each scene.
fn simulate(spec: &VideoSpec) -> (Vec<FrameState>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x71DE_0000_0000_0001);
    let s = spec.size as f64;
    let mut states = Vec::with_capacity(spec.frames);
    let mut cuts = vec![];
    let mut scene = None;
    let mut movers: Vec<Mover> = vec![];
    for t in 0..spec.frames {
        let tau = t % spec.scene_length;
        if tau == 0 {
            // A cut: a new place, new objects.
            let sc = Scene {
                start: Background::random(&mut rng),
                end: Background::random(&mut rng),
            };
            movers = (0..rng.random_range(1..=spec.max_objects))
                .map(|_| spawn(spec, &sc.start, &mut rng, false))
                .collect();
            scene = Some(sc);
            cuts.push(t);
        } else {
            for m in &mut movers {
                m.b[0] += m.v[0];
                m.b[1] += m.v[1];
            }
            movers.retain(|m| !gone(&m.b, s));
        }
        let sc = scene.as_ref().expect("a scene from frame 0");
        let background = drift(sc, tau as f64 / spec.scene_length as f64);
        if movers.len() < spec.max_objects && rng.random::<f64>() < SPAWN_PROB {
            let enter = rng.random::<bool>();
            movers.push(spawn(spec, &background, &mut rng, enter));
        }
        let gain = 1.0 + LIGHT_AMPLITUDE * (std::f64::consts::TAU * t as f64 / LIGHT_PERIOD).sin();
        states.push(FrameState {
            background,
            gain,
            movers: movers.clone(),
        });
    }
    (states, cuts)
}

/// The scene's background a fraction `f` of the way through it: colours moved linearly from
/// the start's to the end's, the texture the start's.
fn drift(sc: &Scene, f: f64) -> Background {
    let mut b = sc.start.clone();
    for c in 0..3 {
        b.c0[c] += (sc.end.c0[c] - sc.start.c0[c]) * f;
        b.c1[c] += (sc.end.c1[c] - sc.start.c1[c]) * f;
    }
    b
}

/// A frame's visible object: class, COCO box `x, y, w, h`, covered area.
type Visible = (usize, [f64; 4], f64);

/// Render frame `t` of the simulated world: the image and its visible objects.
fn render(spec: &VideoSpec, st: &FrameState, t: usize) -> (image::RgbImage, Vec<Visible>) {
    let s = spec.size as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(
        spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (t as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    let mut px = st.background.paint(s, st.gain, &mut rng);
    let mut visible = vec![];
    for m in &st.movers {
        let colour = m.colour.map(|c| c * st.gain);
        if let Some((bbox, area)) = draw_shape(&mut px, s, m.class, m.b, colour, &mut rng) {
            if area >= MIN_VISIBLE_AREA {
                visible.push((m.class, bbox, area));
            }
        }
    }
    (to_image(&px, spec.size), visible)
}

/// Where a generated stream lies.
#[derive(Debug, Clone)]
pub struct VideoPaths {
    /// `frames/frame_000001.png`, … in stream order.
    pub frames: PathBuf,
    /// COCO ground truth of every frame (`file_name` = the frame's name).
    pub annotations: PathBuf,
    /// First frame (0-based) of each scene.
    pub cuts: Vec<usize>,
}

/// Write the stream into `root`, which must be a new or empty folder (kdet never writes over
/// files it did not make).
pub fn generate_video(spec: &VideoSpec, root: &Path) -> Result<VideoPaths> {
    spec.validate()?;
    if root.exists() {
        let empty = std::fs::read_dir(root)
            .map_err(|e| Error::io(root, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::msg(format!(
                "--out {}: the folder is not empty; a synthetic video is written into a new or \
                 empty folder only",
                root.display()
            )));
        }
    }
    let frames = root.join("frames");
    std::fs::create_dir_all(&frames).map_err(|e| Error::io(&frames, e))?;
    let (states, cuts) = simulate(spec);
    let rendered: Vec<(String, Vec<Visible>)> = states
        .par_iter()
        .enumerate()
        .map(|(t, st)| {
            let (img, vis) = render(spec, st, t);
            let file = format!("frame_{:06}.png", t + 1);
            let p = frames.join(&file);
            img.save(&p)
                .map_err(|e| Error::msg(format!("{}: {e}", p.display())))?;
            Ok((file, vis))
        })
        .collect::<Result<_>>()?;
    let mut images = vec![];
    let mut anns = vec![];
    for (t, (file, vis)) in rendered.iter().enumerate() {
        images
            .push(json!({"id": t + 1, "file_name": file, "width": spec.size, "height": spec.size}));
        for (class, bbox, area) in vis {
            anns.push(
                json!({"id": anns.len() + 1, "image_id": t + 1, "category_id": class + 1,
                "bbox": bbox, "area": area, "iscrowd": 0}),
            );
        }
    }
    let categories = super::synth::shape_categories(spec.classes);
    let doc = json!({
        "info": {"description": "kdet synthetic video (one fixed camera)", "version": "1",
                 "scene_starts": cuts.iter().map(|c| c + 1).collect::<Vec<_>>()},
        "images": images,
        "annotations": anns,
        "categories": categories,
    });
    let annotations = root.join("annotations.json");
    let text = serde_json::to_vec(&doc).map_err(|e| Error::msg(e.to_string()))?;
    crate::util::write_atomic(&annotations, &text)?;
    Ok(VideoPaths {
        frames,
        annotations,
        cuts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(seed: u64) -> VideoSpec {
        VideoSpec {
            seed,
            frames: 40,
            size: 48,
            classes: 3,
            scene_length: 20,
            max_objects: 3,
        }
    }

    fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(root.join("frames"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v.push((
            "annotations.json".into(),
            std::fs::read(root.join("annotations.json")).unwrap(),
        ));
        v
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_stream() {
        let d = tempfile::tempdir().unwrap();
        let a = generate_video(&tiny(3), &d.path().join("a")).unwrap();
        generate_video(&tiny(3), &d.path().join("b")).unwrap();
        generate_video(&tiny(4), &d.path().join("c")).unwrap();
        assert_eq!(files(&d.path().join("a")), files(&d.path().join("b")));
        assert_ne!(files(&d.path().join("a")), files(&d.path().join("c")));
        assert_eq!(a.cuts, [0, 20]);
        // Every frame is a COCO image with its ground truth, parsed by kdet's own reader.
        let gt =
            crate::data::coco::load_ground_truth(&a.annotations, crate::data::coco::Purpose::Eval)
                .unwrap();
        assert_eq!(gt.dataset.images.len(), 40);
        assert!(gt.dataset.annotations.len() >= 40, "objects in view");
    }

    #[test]
    fn objects_move_between_frames_and_the_scene_cuts() {
        let spec = tiny(1);
        let (states, cuts) = simulate(&spec);
        assert_eq!(cuts, [0, 20]);
        // Within a scene a shape moves by its velocity; light and background drift slowly.
        let (a, b) = (&states[3], &states[4]);
        let m = &b.movers[0];
        let before = a.movers.iter().find(|x| x.colour == m.colour).unwrap();
        assert!((m.b[0] - before.b[0] - m.v[0]).abs() < 1e-9);
        assert!((a.gain - b.gain).abs() < 0.01);
        assert!((a.background.c0[0] - b.background.c0[0]).abs() < 10.0);
        // At the cut the background jumps.
        let (last, first) = (&states[19], &states[20]);
        let jump: f64 = (0..3)
            .map(|c| (last.background.c0[c] - first.background.c0[c]).abs())
            .sum();
        assert!(jump > 1.0, "{jump}");
        // Objects appear and leave over a long stream.
        let long = VideoSpec {
            frames: 400,
            scene_length: 400,
            ..tiny(2)
        };
        let (st, _) = simulate(&long);
        let counts: Vec<usize> = st.iter().map(|s| s.movers.len()).collect();
        assert!(counts.windows(2).any(|w| w[1] > w[0]), "an object appears");
        assert!(counts.windows(2).any(|w| w[1] < w[0]), "an object leaves");
    }

    #[test]
    fn refuses_a_folder_with_files_and_bad_ranges() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("mine.txt"), b"x").unwrap();
        let e = generate_video(&tiny(0), d.path()).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert_eq!(std::fs::read(d.path().join("mine.txt")).unwrap(), b"x");
        let e = VideoSpec {
            frames: 0,
            ..tiny(0)
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--frames: must be >= 1"), "{e}");
        let e = VideoSpec {
            classes: 9,
            ..tiny(0)
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--classes"), "{e}");
    }
}
