//! The configured distillation terms (`distill`) between a student and its frozen teachers,
//! each read through the model contract — taps for hints (Chen et al. 2017 §3.3), the heads'
//! outputs on the student's samples for the weighted soft cross-entropy (Eq. 2–3) and the
//! teacher-bounded regression (Eq. 4), the classifying head's logits for Hinton et al. 2015's
//! temperature KD. With several teachers each term is averaged over them. A weighted-KD term
//! also scales its head's hard classification loss by μ (Eq. 2). Every method that distils
//! from teachers (Chen et al., LAD) adds these to its student's losses. Formulas and defaults:
//! docs/methods.md.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::align::{self, Align};
use super::fgd::{self, Fgd};
use super::hint::{self, Adaptation};
use super::mgd::{self, Generator};
use super::teacher::{Teacher, TeacherOutput};
use super::{bounded_reg, cwd, kd, pkd, weighted_kd};
use crate::config::distill::{DistillTerm, SpatialMatch, Stage};
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::method::RunData;
use crate::error::{Error, Result};
use crate::models::build::Network;
use crate::models::contract::{find_tap, ClassScores, Head, LossKind, StepRng, Taps, TrainOutput};
use crate::models::init::SeededVarMap;

struct Term {
    cfg: DistillTerm,
    /// The head it reads (none for hints).
    head: Option<Head>,
    /// One adaptation layer per teacher (hint terms with `adaptation: true`).
    adapt: Vec<Option<Adaptation>>,
    /// The variables of a feature term (PKD, CWD, MGD, FGD), one set per teacher.
    feat: Vec<FeatureVars>,
    name: String,
}

/// A feature term's variables against one teacher: the align conv (channels differ) and MGD's
/// generator or FGD's GcBlocks.
struct FeatureVars {
    align: Align,
    generator: Option<Generator>,
    fgd: Option<Fgd>,
}

/// The terms of a config, checked against a student and its teachers.
pub struct Terms {
    /// The adaptation layers (`distill.<term>.teacher<j>.adaptation.*`): trained and
    /// checkpointed with the student, left out of its model file and exports.
    adaptation: Arc<SeededVarMap>,
    terms: Vec<Term>,
    /// The heads the teachers must score for the terms.
    heads: Vec<Head>,
}

fn head_of(stage: Stage) -> Head {
    match stage {
        Stage::Rpn => Head::Rpn,
        Stage::Rcn => Head::Rcn,
    }
}

/// μ of a weighted-KD term on `head`: the weight of that head's hard classification loss (Eq. 2).
fn mu_of(t: &DistillTerm, head: Head) -> Option<f32> {
    match t {
        DistillTerm::WeightedKd { stage, mu, .. } if head_of(*stage) == head => Some(*mu),
        _ => None,
    }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Rpn => "rpn",
        Stage::Rcn => "rcn",
    }
}

/// Load `teachers` of the config for `run`'s classes, each checked on the validation split
/// unless its `check_images` is 0.
pub fn load_teachers(cfg: &LoadedConfig, run: &RunData) -> Result<Vec<Teacher>> {
    let c = &cfg.config;
    let mut teachers = vec![];
    for (i, tc) in c.teachers.iter().enumerate() {
        let t = Teacher::load(cfg, i, run.num_classes(), &run.device)?;
        if tc.check_images > 0 {
            match &run.val {
                Some(v) => {
                    t.check(tc, v, c.solver.batch_size, &run.device)?;
                }
                None => {
                    eprintln!("warning: no validation split, so teachers[{i}] could not be checked")
                }
            }
        }
        teachers.push(t);
    }
    Ok(teachers)
}

/// The student's tap `st` and, for each teacher, its tap `tt` of the same stride: maps pair by
/// stride, so the two cover the image alike (a Faster R-CNN's P2–P6 against a PAA's P3–P7).
fn paired_taps(
    cfg: &LoadedConfig,
    p: &str,
    what: &str,
    (st, tt): (&str, &str),
    student: &Network,
    teachers: &[Teacher],
) -> Result<(
    crate::models::contract::TapSpec,
    Vec<crate::models::contract::TapSpec>,
)> {
    let student_taps = student.model.taps();
    let stap = find_tap(&student_taps, st, student.model.family())
        .map_err(|e| cfg.error(&format!("{p}.student"), e.to_string()))?
        .clone();
    let mut paired = vec![];
    for (j, t) in teachers.iter().enumerate() {
        let ttaps = t.model.taps();
        let ttap = find_tap(&ttaps, tt, t.model.family())
            .map_err(|e| cfg.error(&format!("{p}.teacher"), e.to_string()))?;
        if ttap.stride != stap.stride {
            return Err(cfg.error(
                p,
                format!(
                    "student tap `{st}` (stride {}) and teachers[{j}] tap `{tt}` (stride {}) differ in stride; {what} pairs maps of the same stride",
                    stap.stride, ttap.stride
                ),
            ));
        }
        paired.push(ttap.clone());
    }
    Ok((stap, paired))
}

/// A feature term's (PKD, CWD, MGD, FGD) variables for each teacher: the align layer, and
/// MGD's generator or FGD's GcBlocks, under `distill.<i>.teacher<j>`.
#[allow(clippy::too_many_arguments)]
fn feature_vars(
    cfg: &LoadedConfig,
    p: &str,
    method: &str,
    (st, tt): (&str, &str),
    student: &Network,
    teachers: &[Teacher],
    vb: &VarBuilder,
    i: usize,
) -> Result<Vec<FeatureVars>> {
    let (stap, ttaps) = paired_taps(cfg, p, method, (st, tt), student, teachers)?;
    if stap.stride == 0 && method != "pkd" {
        return Err(cfg.error(
            &format!("{p}.student"),
            format!("`{st}` is a pooled vector; {method} needs a spatial map"),
        ));
    }
    if method == "fgd" && student.model.class_head() == Head::Classifier {
        return Err(cfg.error(
            p,
            "fgd masks the maps with the ground-truth boxes, which a classifier's data has not",
        ));
    }
    let mut feat = vec![];
    for (j, ttap) in ttaps.iter().enumerate() {
        let tc = ttap.channels;
        if method == "fgd" && tc < 2 {
            return Err(cfg.error(
                &format!("{p}.teacher"),
                format!("fgd's GcBlock halves the channels; `{tt}` has {tc}"),
            ));
        }
        let vbj = vb.pp(format!("distill.{i}.teacher{j}"));
        feat.push(FeatureVars {
            align: Align::new(vbj.pp("align"), stap.channels, tc)?,
            generator: match method {
                "mgd" => Some(Generator::new(vbj.clone(), tc)?),
                _ => None,
            },
            fgd: match method {
                "fgd" => Some(Fgd::new(vbj.clone(), tc)?),
                _ => None,
            },
        });
    }
    Ok(feat)
}

/// A hint term's adaptation layer for each teacher (`None` where `adaptation: false`, which
/// needs equal channels), under `distill.<i>.teacher<j>.adaptation`.
#[allow(clippy::too_many_arguments)]
fn adaptations(
    cfg: &LoadedConfig,
    p: &str,
    (st, tt): (&str, &str),
    with_adaptation: bool,
    student: &Network,
    teachers: &[Teacher],
    vb: &VarBuilder,
    i: usize,
) -> Result<Vec<Option<Adaptation>>> {
    let (stap, ttaps) = paired_taps(cfg, p, "a hint", (st, tt), student, teachers)?;
    let sc = stap.channels;
    let mut adapt = vec![];
    for (j, ttap) in ttaps.iter().enumerate() {
        let tc = ttap.channels;
        if with_adaptation {
            let vbj = vb.pp(format!("distill.{i}.teacher{j}.adaptation"));
            adapt.push(Some(Adaptation::new(vbj, sc, tc)?));
        } else if sc != tc {
            return Err(cfg.error(
                &format!("{p}.adaptation"),
                format!(
                    "false needs equal channels, but student `{st}` has {sc} and teachers[{j}] `{tt}` has {tc}; keep the adaptation layer"
                ),
            ));
        } else {
            adapt.push(None);
        }
    }
    Ok(adapt)
}

impl Terms {
    /// Check each term of `cfg` against the student and teachers and create the adaptation
    /// layers (drawn from the student's seed stream, after its own variables).
    pub fn new(cfg: &LoadedConfig, student: &Network, teachers: &[Teacher]) -> Result<Self> {
        let adaptation = student.vars.sibling();
        let vb = adaptation.builder(DType::F32, &student.device);
        let mut terms: Vec<Term> = vec![];
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, d) in cfg.config.distill.iter().enumerate() {
            let p = format!("distill[{i}]");
            let mut adapt = vec![];
            let mut feat = vec![];
            let base = match d {
                DistillTerm::Pkd {
                    student: st,
                    teacher: tt,
                    ..
                }
                | DistillTerm::Cwd {
                    student: st,
                    teacher: tt,
                    ..
                }
                | DistillTerm::Mgd {
                    student: st,
                    teacher: tt,
                    ..
                }
                | DistillTerm::Fgd {
                    student: st,
                    teacher: tt,
                    ..
                } => {
                    let method = d.feature_method().expect("a feature term");
                    feat = feature_vars(cfg, &p, method, (st, tt), student, teachers, &vb, i)?;
                    format!("distill.{method}.{st}")
                }
                DistillTerm::Hint {
                    student: st,
                    teacher: tt,
                    adaptation: with_adaptation,
                    ..
                } => {
                    adapt = adaptations(
                        cfg,
                        &p,
                        (st, tt),
                        *with_adaptation,
                        student,
                        teachers,
                        &vb,
                        i,
                    )?;
                    format!("distill.hint.{st}")
                }
                DistillTerm::WeightedKd { stage, .. } => {
                    let head = head_of(*stage);
                    if terms.iter().any(|t| mu_of(&t.cfg, head).is_some()) {
                        return Err(cfg.error(
                            &p,
                            "a second weighted_kd term on the same stage; μ balances one soft loss with the hard loss",
                        ));
                    }
                    check_teachers(cfg, student, teachers, head, false)?;
                    format!("distill.{}.soft_cls", stage_name(*stage))
                }
                DistillTerm::BoundedRegression { stage, bounded, .. } => {
                    check_teachers(cfg, student, teachers, head_of(*stage), true)?;
                    let kind = if *bounded { "bounded_reg" } else { "l2_reg" };
                    format!("distill.{}.{kind}", stage_name(*stage))
                }
                DistillTerm::Kd { .. } => {
                    let head = student.model.class_head();
                    check_teachers(cfg, student, teachers, head, false)?;
                    format!("distill.{}.kd", head.short_name())
                }
            };
            // Two terms of the same kind (hints on two taps of the same name cannot happen, but
            // e.g. two kd terms can) get the term index appended.
            let n = names.entry(base.clone()).or_insert(0);
            *n += 1;
            let name = if *n == 1 { base } else { format!("{base}#{i}") };
            let head = match d {
                DistillTerm::WeightedKd { stage, .. }
                | DistillTerm::BoundedRegression { stage, .. } => Some(head_of(*stage)),
                DistillTerm::Kd { .. } => Some(student.model.class_head()),
                DistillTerm::Hint { .. }
                | DistillTerm::Pkd { .. }
                | DistillTerm::Cwd { .. }
                | DistillTerm::Mgd { .. }
                | DistillTerm::Fgd { .. } => None,
            };
            terms.push(Term {
                cfg: d.clone(),
                head,
                adapt,
                feat,
                name,
            });
        }
        let mut heads: Vec<Head> = terms.iter().filter_map(|t| t.head).collect();
        heads.sort();
        heads.dedup();
        Ok(Self {
            adaptation,
            terms,
            heads,
        })
    }

    /// The heads the teachers must score.
    pub fn heads(&self) -> &[Head] {
        &self.heads
    }

    /// The adaptation layers and the feature terms' variables (align convs, MGD's generators,
    /// FGD's GcBlocks).
    pub fn own_vars(&self) -> &VarMap {
        &self.adaptation.varmap
    }

    /// The student's own losses `out` plus every term against the teachers' outputs `touts`
    /// (its hard classification losses scaled by μ where a weighted-KD term asks for it). FGD
    /// reads `batch`'s boxes; MGD draws its masks from the step's `rng`.
    pub fn losses(
        &self,
        batch: &Batch,
        rng: &mut StepRng,
        taps: &Taps,
        out: TrainOutput,
        touts: &[TeacherOutput],
    ) -> Result<BTreeMap<String, Tensor>> {
        let n = touts.len() as f64;
        let mut losses = BTreeMap::new();
        for term in &self.terms {
            if term.cfg.feature_method().is_some() {
                // Each part averaged over the teachers.
                let mut sums: Vec<(String, Tensor)> = vec![];
                for (j, to) in touts.iter().enumerate() {
                    for (k, (suffix, l)) in feature_losses(term, j, batch, rng, taps, to)?
                        .into_iter()
                        .enumerate()
                    {
                        match sums.get_mut(k) {
                            Some((_, s)) => *s = (&*s + l)?,
                            None => sums.push((format!("{}{suffix}", term.name), l)),
                        }
                    }
                }
                for (name, s) in sums {
                    losses.insert(name, (s / n)?);
                }
                continue;
            }
            let mut sum: Option<Tensor> = None;
            for (j, to) in touts.iter().enumerate() {
                let l = term_loss(term, j, taps, &out, to)?;
                sum = Some(match sum {
                    None => l,
                    Some(s) => (s + l)?,
                });
            }
            let l = (sum.expect("at least one teacher") / n)?;
            losses.insert(term.name.clone(), l);
        }
        for (name, loss) in out.losses {
            let mu = match loss.kind {
                LossKind::Classification => {
                    self.terms.iter().find_map(|t| mu_of(&t.cfg, loss.head))
                }
                LossKind::Regression | LossKind::Quality => None,
            };
            let value = match mu {
                Some(mu) => (&loss.value * mu as f64)?,
                None => loss.value,
            };
            losses.insert(name, value);
        }
        Ok(losses)
    }
}

/// Every teacher must predict for the same candidates (RPN anchors) or with the same box coding
/// (RCN regression) as the student, else its outputs do not line up with the student's.
fn check_teachers(
    cfg: &LoadedConfig,
    student: &Network,
    teachers: &[Teacher],
    head: Head,
    regression: bool,
) -> Result<()> {
    for t in teachers {
        student
            .config
            .family()
            .check_teacher(&t.config, head, regression)
            .map_err(|e| cfg.error(&format!("teachers[{}].model.{}", t.index, e.path), e.msg))?;
    }
    Ok(())
}

/// One term against teacher `j`.
fn term_loss(
    term: &Term,
    j: usize,
    taps: &Taps,
    out: &TrainOutput,
    to: &TeacherOutput,
) -> Result<Tensor> {
    let missing = |what: &str| Error::msg(format!("internal: the teacher did not compute {what}"));
    let teacher_head = |h: Head| {
        to.heads
            .get(&h)
            .ok_or_else(|| missing(&format!("its {h:?} head")))
    };
    Ok(match &term.cfg {
        DistillTerm::Hint {
            student,
            teacher,
            weight,
            distance,
            spatial,
            ..
        } => {
            let s = taps.get(student).ok_or_else(|| missing(student))?;
            let t = to.taps.get(teacher).ok_or_else(|| missing(teacher))?;
            let v = match &term.adapt[j] {
                Some(a) => a.forward(s)?,
                None => s.clone(),
            };
            let (_, _, h, w) = v.dims4()?;
            let z = match spatial {
                SpatialMatch::Resize if t.dims4()?.2 != h || t.dims4()?.3 != w => {
                    t.upsample_bilinear2d(h, w, false)?
                }
                _ => t.clone(),
            };
            (hint::hint_loss(&v, &z, *distance)? * *weight as f64)?
        }
        DistillTerm::WeightedKd {
            stage,
            temperature,
            background_weight,
            mu,
        } => {
            let head = head_of(*stage);
            let (t, b) = (*temperature as f64, *background_weight as f64);
            let (sh, th) = (out.head(head)?, teacher_head(head)?);
            sh.check_aligned(th, head)?;
            let soft = match sh.scores {
                ClassScores::Sigmoid => {
                    weighted_kd::weighted_soft_bce(&sh.logits()?, &th.logits()?, t, b)?
                }
                ClassScores::Softmax => {
                    weighted_kd::weighted_soft_ce(&sh.logits()?, &th.logits()?, t, b)?
                }
                ClassScores::Categorical => {
                    return Err(Error::msg(
                        "weighted_kd weighs a background class, which an image classifier has not; use `kd` or method `simclr`",
                    ))
                }
            };
            (soft * (1.0 - *mu as f64))?
        }
        DistillTerm::BoundedRegression {
            stage,
            margin,
            weight,
            bounded,
        } => {
            let head = head_of(*stage);
            let (sh, th) = (out.head(head)?, teacher_head(head)?);
            sh.check_aligned(th, head)?;
            let (s, t, y) = (
                sh.positive_deltas()?,
                th.positive_deltas()?,
                sh.positive_targets()?,
            );
            let n = sh.num_samples as f64;
            let l = if *bounded {
                bounded_reg::bounded_l2(&s, &t, &y, *margin as f64, n)?
            } else {
                bounded_reg::plain_l2(&s, &t, n)?
            };
            (l * *weight as f64)?
        }
        DistillTerm::Kd {
            temperature,
            weight,
        } => {
            let head = term.head.expect("kd reads a head");
            let (sh, th) = (out.head(head)?, teacher_head(head)?);
            sh.check_aligned(th, head)?;
            let (s, t, temp) = (sh.logits()?, th.logits()?, *temperature as f64);
            let l = match sh.scores {
                ClassScores::Softmax | ClassScores::Categorical => kd::kd_loss(&s, &t, temp)?,
                ClassScores::Sigmoid => kd::kd_sigmoid_loss(&s, &t, temp)?,
            };
            (l * *weight as f64)?
        }
        DistillTerm::Pkd { .. }
        | DistillTerm::Cwd { .. }
        | DistillTerm::Mgd { .. }
        | DistillTerm::Fgd { .. } => unreachable!("feature terms go through feature_losses"),
    })
}

/// A feature term (PKD, CWD, MGD, FGD) against teacher `j`: its weighted losses, by the suffix
/// of their names (FGD logs its four parts: `.fg`, `.bg`, `.attention`, `.global`).
fn feature_losses(
    term: &Term,
    j: usize,
    batch: &Batch,
    rng: &mut StepRng,
    taps: &Taps,
    to: &TeacherOutput,
) -> Result<Vec<(&'static str, Tensor)>> {
    let missing = |what: &str| Error::msg(format!("internal: the teacher did not compute {what}"));
    let (st, tt) = term.cfg.tap_pair().expect("a feature term reads taps");
    let s = taps.get(st).ok_or_else(|| missing(st))?;
    let t = to.taps.get(tt).ok_or_else(|| missing(tt))?;
    let vars = &term.feat[j];
    let s = vars.align.forward(&align::as_map(s)?)?;
    let t = align::teacher_to(&s, &align::as_map(t)?)?;
    Ok(match &term.cfg {
        DistillTerm::Pkd { weight, .. } => vec![("", (pkd::pkd_loss(&s, &t)? * *weight as f64)?)],
        DistillTerm::Cwd {
            temperature,
            weight,
            ..
        } => vec![(
            "",
            (cwd::cwd_loss(&s, &t, *temperature as f64)? * *weight as f64)?,
        )],
        DistillTerm::Mgd {
            alpha, mask_ratio, ..
        } => {
            let (n, _, h, w) = s.dims4()?;
            let mask = mgd::random_mask(n, h, w, *mask_ratio as f64, rng, s.device())?;
            let g = vars.generator.as_ref().expect("mgd has a generator");
            vec![("", (mgd::mgd_loss(&s, &t, &mask, g)? * *alpha as f64)?)]
        }
        DistillTerm::Fgd {
            temperature,
            alpha,
            beta,
            gamma,
            lambda,
            ..
        } => {
            let (_, _, h, w) = s.dims4()?;
            let (_, _, ih, iw) = batch.images.dims4()?;
            let boxes: Vec<Vec<[f32; 4]>> = batch.targets.iter().map(|t| t.boxes.clone()).collect();
            let (fg, bg) = fgd::masks(
                &boxes,
                (w as f64 / iw as f64, h as f64 / ih as f64),
                (h, w),
                s.device(),
            )?;
            let v = vars.fgd.as_ref().expect("fgd has its GcBlocks");
            let l = fgd::fgd_losses(v, &s, &t, &fg, &bg, *temperature as f64)?;
            vec![
                (".fg", (l.foreground * *alpha as f64)?),
                (".bg", (l.background * *beta as f64)?),
                (".attention", (l.attention * *gamma as f64)?),
                (".global", (l.global * *lambda as f64)?),
            ]
        }
        _ => unreachable!("not a feature term"),
    })
}
