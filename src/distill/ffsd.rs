//! FFSD (Li et al. 2021, "Distilling a Powerful Student Model via Online Knowledge
//! Distillation", TNNLS 2022), as its released code (github.com/SJLeo/FFSD, `CIFARTrainer.py`,
//! `ImageNetTrainer.py`, `models/fusion_module.py`, `models/self_distillation.py`) trains it:
//! a leader (`net1`, the config's `model`) and m ≥ 2 common students (`net2` …) learn together
//! from scratch. Per step, with `A(f) = mean_c f²` (a spatial attention map) and
//! `d(x, y) = mean((x/‖x‖ − y/‖y‖)²)` over flattened rows (`attention_loss`, `fusion_loss`):
//!
//! - every network: its cross-entropy;
//! - student i: DML among the students, `T²/(m−1)·Σ_{j≠i} KL(p_j ‖ p_i)` at temperature T; from
//!   the second student on, `λ_div·diversity(A(f_i), A(f_{i−1}))` (attention pushed off the
//!   previous student's, `diversity_loss`) and `λ_div·Σ_s d(A(f_i^s), A(g_s))` with `g` the
//!   self-distillation chain's maps from the previous student's *diversified* last map
//!   (`diversity_target`);
//! - the fusion module (depthwise 3×3 + BN + ReLU, 1×1 + BN + ReLU over the concatenated
//!   detached last maps of the students, pooling, a linear classifier): CE +
//!   `T²·KL(softmax(mean of the students' logits) ‖ fusion)`;
//! - the leader: `T²·KL(p_fusion ‖ p_leader)`, `λ_f·d(A(f_L), A(fused map))`,
//!   `λ_f·d(A(trans(f_L)), A(concat))` (its trans-fusion branch), and self-distillation from the
//!   fused map, `λ_f·Σ_s d(A(f_L^s), A(g_s))`;
//! - each self-distillation chain (transposed convolutions from the last map down to every
//!   shallower stage): `λ_sd·Σ_s [d(g_s, f^s) + d(A(g_s), A(f^s))]` from its network's own last
//!   map (trained after its use as a teacher, in eval mode, within the step).
//!
//! Every target is detached, so each term trains one module, as the released per-module
//! optimizers do. The three λ rise over the first epochs as `λ·exp(−5(1 − e/5)²)`.
//! Deviation: the released code trains the chains with Adam (lr 1e-3) and the fusion module with
//! weight decay 1e-5; kdet trains every variable with the run's solver.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Module, ModuleT, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};

use super::kd::kd_loss;
use crate::config::distill::{dml_names, MethodConfig};
use crate::config::LoadedConfig;
use crate::data::loader::Batch;
use crate::engine::method::{own_pass, peer_networks, Method, NamedNetwork, RunData, StepOutput};
use crate::error::{Error, Result};
use crate::models::build::{network_seed, Network};
use crate::models::classifier::{cross_entropy, image_labels};
use crate::models::contract::{find_tap, Head, StepRng};
use crate::models::init::SeededVarMap;
use crate::models::layers::{Conv2d, Norm, NormKind};
use crate::ops::conv::{ConvImpl, ConvParams};
use crate::ops::relu::relu;

/// FFSD's weights and temperature (`method` of the config).
#[derive(Debug, Clone, Copy)]
pub struct FfsdWeights {
    pub temperature: f64,
    pub lambda_diversity: f64,
    pub lambda_fusion: f64,
    pub lambda_self_distillation: f64,
    pub warmup_epochs: u64,
}

impl FfsdWeights {
    /// The factor on every λ in 0-based epoch `epoch`: the released `lambda_warmup`,
    /// `exp(−5(1 − e/α)²)` for the 1-based epoch e ≤ α, else 1.
    pub fn warmup(&self, epoch: u64) -> f64 {
        let (e, a) = ((epoch + 1) as f64, self.warmup_epochs as f64);
        if self.warmup_epochs == 0 || e > a {
            1.0
        } else {
            (-5.0 * (1.0 - e / a).powi(2)).exp()
        }
    }
}

/// A bias-free convolution with the released init (`normal(0, √(2/(k²·cout)))`: Kaiming
/// normal, fan-out), `groups` groups, stride 1, same padding.
fn conv(vb: VarBuilder, cin: usize, cout: usize, k: usize, groups: usize) -> Result<Conv2d> {
    let init = Init::Kaiming {
        dist: candle_nn::init::NormalOrUniform::Normal,
        fan: candle_nn::init::FanInOut::FanOut,
        non_linearity: candle_nn::init::NonLinearity::ReLU,
    };
    let weight = vb.get_with_hints((cout, cin / groups, k, k), "weight", init)?;
    Ok(Conv2d {
        weight,
        bias: None,
        params: ConvParams {
            stride: 1,
            padding: k / 2,
            dilation: 1,
            groups,
        },
        imp: ConvImpl::Kdet,
    })
}

/// Depthwise 3×3 + BN + ReLU, then 1×1 (`cin` → `cout`) + BN + ReLU: the released
/// `FusionModule`'s trunk and `TransFusionModule` (names `conv1`, `bn1`, `conv1_1`, `bn1_1`).
struct DwPw {
    dw: Conv2d,
    bn1: Norm,
    pw: Conv2d,
    bn2: Norm,
}

impl DwPw {
    fn new(vb: &VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            dw: conv(vb.pp("conv1"), cin, cin, 3, cin)?,
            bn1: Norm::new(vb.pp("bn1"), NormKind::Bn, cin, 1e-5)?,
            pw: conv(vb.pp("conv1_1"), cin, cout, 1, 1)?,
            bn2: Norm::new(vb.pp("bn1_1"), NormKind::Bn, cout, 1e-5)?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = relu(&self.bn1.forward_t(&self.dw.forward(x)?, train)?)?;
        Ok(relu(&self.bn2.forward_t(&self.pw.forward(&y)?, train)?)?)
    }
}

/// The feature-fusion module: [`DwPw`] over the concatenated students' maps, global average
/// pooling and a linear classifier (`fc2`, PyTorch's default `Linear` init).
struct Fusion {
    trunk: DwPw,
    fc: candle_nn::Linear,
}

impl Fusion {
    fn new(vb: &VarBuilder, cin: usize, cout: usize, classes: usize) -> Result<Self> {
        let b = 1.0 / (cout as f64).sqrt();
        let u = Init::Uniform { lo: -b, up: b };
        let fc = vb.pp("fc2");
        Ok(Self {
            trunk: DwPw::new(vb, cin, cout)?,
            fc: candle_nn::Linear::new(
                fc.get_with_hints((classes, cout), "weight", u)?,
                Some(fc.get_with_hints(classes, "bias", u)?),
            ),
        })
    }

    /// The fused map and its class logits.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let map = self.trunk.forward_t(x, train)?;
        let logits = map.mean((2, 3))?.apply(&self.fc)?;
        Ok((map, logits))
    }
}

/// The released `SelfDistillationModel`: one ConvTranspose2d(3, stride 2, padding 1, output
/// padding 1, no bias) + BN + ReLU per shallower stage, from the last stage's channels down to
/// each shallower stage's (the released chain halves them, as a ResNet's stages do).
pub struct SdChain {
    layers: Vec<(Tensor, Norm)>,
}

impl SdChain {
    /// `channels`: the stages' channels, shallow to deep (the last is the chain's input).
    pub fn new(vb: &VarBuilder, channels: &[usize]) -> Result<Self> {
        let mut layers = vec![];
        for (i, pair) in channels.windows(2).rev().enumerate() {
            let (cout, cin) = (pair[0], pair[1]);
            let l = vb.pp(format!("layer{i}"));
            // PyTorch's default ConvTranspose2d init (the released chain keeps it):
            // U(±1/√fan_in), fan_in = weight.size(1)·k² = cout·9.
            let b = 1.0 / ((cout * 9) as f64).sqrt();
            let w = l.pp("convtranpose").get_with_hints(
                (cin, cout, 3, 3),
                "weight",
                Init::Uniform { lo: -b, up: b },
            )?;
            layers.push((w, Norm::new(l.pp("norm"), NormKind::Bn, cout, 1e-5)?));
        }
        Ok(Self { layers })
    }

    /// Its maps from `x`, shallowest first (matching the stages they mimic).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut y = x.clone();
        let mut outs = vec![];
        for (w, bn) in &self.layers {
            y = relu(&bn.forward_t(&y.conv_transpose2d(w, 1, 1, 2, 1)?, train)?)?;
            outs.push(y.clone());
        }
        outs.reverse();
        Ok(outs)
    }
}

/// `A(f) = mean_c f²` per position, flattened: `N × HW` (the released `pow(2).mean(1)`).
pub fn attention(f: &Tensor) -> Result<Tensor> {
    Ok(f.sqr()?.mean(1)?.flatten_from(1)?)
}

/// Rows scaled to unit L2 norm (`F.normalize`, eps 1e-12).
fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&n)?)
}

/// The released `attention_loss` (and `fusion_loss`): rows flattened, unit-normalised, the
/// mean squared difference; `y` detached.
pub fn attention_loss(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let x = unit_rows(&x.flatten_from(1)?)?;
    let y = unit_rows(&y.detach().flatten_from(1)?)?;
    Ok((x - y)?.sqr()?.mean_all()?)
}

/// Per row: the shifted target t, the normalised row â, its norm ‖a‖.
type Shift = (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<f32>);

/// The released diversity shift of attention rows `a` (`N × D`, constants): with `â = a/‖a‖`
/// and θ the ⌊D/3⌋-th smallest entry of `â`, `t = (‖a‖/2 − â)·sign(â − θ) + ‖a‖/2` — entries
/// above θ become `‖a‖ − â`, those below stay. Returns (t, â, ‖a‖) per row.
fn diversity_shift(a: &Tensor) -> Result<Shift> {
    let rows = a.detach().to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let (mut ts, mut hats, mut norms) = (vec![], vec![], vec![]);
    for r in rows {
        let k = r.len() / 3;
        if k == 0 {
            return Err(Error::msg(format!(
                "FFSD's diversity threshold needs a map of at least 3 positions, not {}",
                r.len()
            )));
        }
        let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        let hat: Vec<f32> = r.iter().map(|v| v / norm.max(1e-12)).collect();
        let mut sorted = hat.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let theta = sorted[k - 1];
        let sign = |v: f32| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }
        };
        ts.push(
            hat.iter()
                .map(|&h| (norm / 2.0 - h) * sign(h - theta) + norm / 2.0)
                .collect(),
        );
        hats.push(hat);
        norms.push(norm);
    }
    Ok((ts, hats, norms))
}

/// The released `diversity_loss(x, y)`: `mean((x/‖x‖ − t(y))²)`, `t` the [`diversity_shift`]
/// of the (constant) attention rows `y`.
pub fn diversity_loss(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (t, _, _) = diversity_shift(y)?;
    let t = Tensor::new(t, x.device())?;
    Ok((unit_rows(&x.flatten_from(1)?)? - t)?.sqr()?.mean_all()?)
}

/// The released `diversity_target(y)`: the map `y` (`N × C × H × W`, a constant) with
/// `(t − â)·‖a‖/C` added to every channel, `a = A(y)` and `t` its [`diversity_shift`].
pub fn diversity_target(y: &Tensor) -> Result<Tensor> {
    let y = y.detach();
    let (n, c, h, w) = y.dims4()?;
    let (t, hat, norm) = diversity_shift(&attention(&y)?)?;
    let diff: Vec<f32> = (0..n)
        .flat_map(|i| {
            let (t, hat, nm) = (&t[i], &hat[i], norm[i]);
            (0..h * w).map(move |j| (t[j] - hat[j]) * nm / c as f32)
        })
        .collect();
    let diff = Tensor::from_vec(diff, (n, 1, h, w), y.device())?;
    Ok(y.broadcast_add(&diff)?)
}

/// A network's self-distillation from a chain used as a teacher (eval mode, detached):
/// `Σ_s d(A(f^s), A(g_s))` over the shallower stages `shallow`, `g` the chain's maps from
/// `input` (the released `self_distillation_loss`).
pub fn sd_teach(chain: &SdChain, shallow: &[Tensor], input: &Tensor) -> Result<Tensor> {
    let targets = chain.forward_t(&input.detach(), false)?;
    sum(shallow
        .iter()
        .zip(&targets)
        .map(|(f, g)| attention_loss(&attention(f)?, &attention(&g.detach())?)))
}

/// A chain's own training loss from its network's stage maps `maps` (shallow to deep, the last
/// its input, all constants): `Σ_s [d(g_s, f^s) + d(A(g_s), A(f^s))]` (the released
/// `train_self_distillation_model`, before its λ).
pub fn sd_train(chain: &SdChain, maps: &[Tensor]) -> Result<Tensor> {
    let last = maps
        .last()
        .ok_or_else(|| Error::msg("internal: FFSD self-distillation without stages"))?;
    let outs = chain.forward_t(&last.detach(), true)?;
    sum(maps.iter().zip(&outs).map(|(f, g)| {
        let f = f.detach();
        (attention_loss(g, &f)? + attention_loss(&attention(g)?, &attention(&f)?)?)
            .map_err(Into::into)
    }))
}

fn sum(terms: impl Iterator<Item = Result<Tensor>>) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for t in terms {
        let t = t?;
        acc = Some(match acc {
            None => t,
            Some(a) => (a + t)?,
        });
    }
    acc.ok_or_else(|| Error::msg("internal: an empty FFSD sum"))
}

/// The FFSD method: the leader (`nets[0]`), the common students, and the method's own modules.
pub struct Ffsd {
    nets: Vec<Network>,
    names: Vec<String>,
    /// `backbone.c2` up to the configured last stage.
    stages: Vec<String>,
    fusion: Fusion,
    /// The leader's trans-fusion branch (released: inside the leader, `trans_fusion_module`).
    trans: DwPw,
    /// Per network, its self-distillation chain: the leader's and every student's but the
    /// first (the released `sd_leader_model`, `sd_models`).
    sd: Vec<Option<SdChain>>,
    vars: Arc<SeededVarMap>,
    w: FfsdWeights,
    epoch: u64,
    evaluated: usize,
}

/// One network's stage maps (channels, height, width) on a blank image of the input size, in
/// eval mode (the released trainer sizes its modules by such a forward).
fn stage_shapes(
    net: &Network,
    stages: &[String],
    device: &candle_core::Device,
) -> Result<Vec<[usize; 3]>> {
    let s = net.config.input().min_size as usize;
    let x = Tensor::zeros((1, 3, s, s), DType::F32, device)?;
    let fwd = net.model.forward(&x, false)?;
    stages
        .iter()
        .map(|st| {
            let t = fwd
                .taps
                .get(st)
                .ok_or_else(|| Error::msg(format!("the network has no `{st}` tap")))?;
            let (_, c, h, w) = t.dims4()?;
            Ok([c, h, w])
        })
        .collect()
}

impl Ffsd {
    pub fn new(cfg: &LoadedConfig, run: &RunData) -> Result<Self> {
        let c = &cfg.config;
        let Some(MethodConfig::Ffsd {
            students,
            last_stage,
            temperature,
            lambda_diversity,
            lambda_fusion,
            lambda_self_distillation,
            warmup_epochs,
            evaluate,
        }) = &c.method
        else {
            return Err(Error::msg(
                "internal: FFSD built from another method's config",
            ));
        };
        let (nets, paths): (Vec<Network>, Vec<String>) =
            peer_networks(cfg, students, "students", run)?
                .into_iter()
                .unzip();
        let last: usize = last_stage
            .strip_prefix("backbone.c")
            .and_then(|k| k.parse().ok())
            .filter(|k| (3..=5).contains(k))
            .ok_or_else(|| {
                cfg.error("method.last_stage", format!("unknown stage `{last_stage}`"))
            })?;
        let stages: Vec<String> = (2..=last).map(|k| format!("backbone.c{k}")).collect();
        let mut shapes = vec![];
        for (n, path) in nets.iter().zip(&paths) {
            for st in &stages {
                find_tap(&n.model.taps(), st, n.model.family())
                    .map_err(|e| cfg.error(path, e.to_string()))?;
            }
            shapes.push(stage_shapes(n, &stages, &run.device)?);
        }
        check_shapes(&shapes, &paths).map_err(|(p, m)| cfg.error(&p, m))?;
        let names = dml_names(nets.len());
        let evaluated = names
            .iter()
            .position(|n| n == evaluate)
            .ok_or_else(|| cfg.error("method.evaluate", format!("no network `{evaluate}`")))?;
        let w = FfsdWeights {
            temperature: *temperature,
            lambda_diversity: *lambda_diversity,
            lambda_fusion: *lambda_fusion,
            lambda_self_distillation: *lambda_self_distillation,
            warmup_epochs: *warmup_epochs,
        };
        // The method's modules draw after every network, from a stream of their own.
        let vars_seed = network_seed(c.seed, nets.len());
        let mut f = Self::with_modules(nets, stages, &shapes, run.num_classes(), vars_seed, w)?;
        f.evaluated = evaluated;
        Ok(f)
    }

    /// The method over built networks (leader first) whose stage maps have `shapes`: its
    /// fusion module, the leader's trans-fusion branch and the self-distillation chains, drawn
    /// from `vars_seed`.
    fn with_modules(
        nets: Vec<Network>,
        stages: Vec<String>,
        shapes: &[Vec<[usize; 3]>],
        classes: usize,
        vars_seed: u64,
        w: FfsdWeights,
    ) -> Result<Self> {
        let device = nets[0].device.clone();
        let channels = |k: usize| shapes[k].iter().map(|s| s[0]).collect::<Vec<_>>();
        let lead_c = shapes[0].last().map(|s| s[0]).unwrap_or(0);
        let fused_c: usize = shapes[1..]
            .iter()
            .filter_map(|s| s.last())
            .map(|s| s[0])
            .sum();
        let vars = Arc::new(SeededVarMap::new(vars_seed));
        let vb = vars.builder(DType::F32, &device);
        let names = dml_names(nets.len());
        let fusion = Fusion::new(&vb.pp("ffsd.fusion"), fused_c, lead_c, classes)?;
        let trans = DwPw::new(
            &vb.pp(format!("{}.trans_fusion_module", names[0])),
            lead_c,
            fused_c,
        )?;
        let sd = (0..nets.len())
            .map(|k| {
                (k != 1)
                    .then(|| SdChain::new(&vb.pp(format!("{}.sd", names[k])), &channels(k)))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            nets,
            names,
            stages,
            fusion,
            trans,
            sd,
            vars,
            w,
            epoch: 0,
            evaluated: 0,
        })
    }
}

/// What FFSD needs of the networks' stage maps (`shapes[k]`: network k's, shallow to deep;
/// the leader first): one last-stage size for all (the fusion concatenates them), at least 3
/// positions there (the diversity threshold), each stage twice the next one's size (the
/// transposed convolutions double it), and one channel layout for all students (a student's
/// chain reads the previous student's map). Errors: (JSON path, message).
fn check_shapes(
    shapes: &[Vec<[usize; 3]>],
    paths: &[String],
) -> std::result::Result<(), (String, String)> {
    let size = |s: &[usize; 3]| (s[1], s[2]);
    let last0 = shapes[0].last().map(size).unwrap_or((0, 0));
    for (sh, path) in shapes.iter().zip(paths) {
        let last = sh.last().map(size).unwrap_or((0, 0));
        if last != last0 {
            return Err((
                path.clone(),
                format!(
                    "its last stage is {}×{}, the leader's {}×{}: the fusion concatenates them",
                    last.0, last.1, last0.0, last0.1
                ),
            ));
        }
        for pair in sh.windows(2) {
            if size(&pair[0]) != (2 * pair[1][1], 2 * pair[1][2]) {
                return Err((
                    path.clone(),
                    format!(
                        "stage maps {}×{} and {}×{}: the self-distillation chain doubles each stage's size (give an input size the stages halve exactly)",
                        pair[0][1], pair[0][2], pair[1][1], pair[1][2]
                    ),
                ));
            }
        }
    }
    let channels = |sh: &[[usize; 3]]| sh.iter().map(|s| s[0]).collect::<Vec<_>>();
    for (sh, path) in shapes.iter().zip(paths).skip(2) {
        if channels(sh) != channels(&shapes[1]) {
            return Err((
                path.clone(),
                format!(
                    "its stage channels {:?} differ from the first student's {:?}: each student's self-distillation chain reads the previous student's map, so the common students share one width (the leader may differ)",
                    channels(sh),
                    channels(&shapes[1])
                ),
            ));
        }
    }
    if last0.0 * last0.1 < 3 {
        return Err((
            "method.last_stage".into(),
            format!(
                "its map is {}×{} at this input size; the diversity threshold (a third of the positions) needs at least 3 positions: pick a shallower stage or a larger input",
                last0.0, last0.1
            ),
        ));
    }
    Ok(())
}

impl Method for Ffsd {
    fn networks(&self) -> Vec<NamedNetwork<'_>> {
        NamedNetwork::zip(&self.nets, &self.names)
    }

    fn eval_network(&self) -> usize {
        self.evaluated
    }

    fn own_vars(&self) -> Option<&VarMap> {
        Some(&self.vars.varmap)
    }

    fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    fn step(&mut self, batch: &Batch, rng: &mut StepRng) -> Result<StepOutput> {
        let passes = self
            .nets
            .iter()
            .map(|n| own_pass(n.model.as_ref(), batch, rng))
            .collect::<Result<Vec<_>>>()?;
        let mut maps = vec![];
        let mut logits = vec![];
        let mut losses = BTreeMap::new();
        for (p, name) in passes.into_iter().zip(&self.names) {
            maps.push(
                self.stages
                    .iter()
                    .map(|st| {
                        p.fwd
                            .taps
                            .get(st)
                            .cloned()
                            .ok_or_else(|| Error::msg(format!("the network has no `{st}` tap")))
                    })
                    .collect::<Result<Vec<_>>>()?,
            );
            logits.push(p.out.head(Head::Classifier)?.logits()?);
            for (key, l) in p.out.losses {
                losses.insert(format!("{name}.{key}"), l.value);
            }
        }
        let labels = image_labels(batch)?;
        let warm = self.w.warmup(self.epoch);
        self.student_terms(&maps, &logits, warm, &mut losses)?;
        self.fusion_and_leader_terms(&maps, &logits, &labels, warm, &mut losses)?;
        // The chains train after their use as teachers, as in the released step.
        let lsd = self.w.lambda_self_distillation * warm;
        for (k, chain) in self.sd.iter().enumerate() {
            if let Some(chain) = chain {
                let l = (sd_train(chain, &maps[k])? * lsd)?;
                losses.insert(format!("{}.ffsd.sd_train", self.names[k]), l);
            }
        }
        Ok(StepOutput {
            losses,
            metrics: BTreeMap::from([("ffsd.warmup".to_string(), warm)]),
        })
    }
}

impl Ffsd {
    /// The common students' terms: DML among them; from the second on, diversity from the
    /// previous student's attention and self-distillation from its diversified last map.
    fn student_terms(
        &self,
        maps: &[Vec<Tensor>],
        logits: &[Tensor],
        warm: f64,
        losses: &mut BTreeMap<String, Tensor>,
    ) -> Result<()> {
        let m = self.nets.len() - 1;
        let ld = self.w.lambda_diversity * warm;
        for i in 1..=m {
            let name = &self.names[i];
            let dml = sum((1..=m).filter(|&j| j != i).map(|j| {
                Ok(kd_loss(
                    &logits[i],
                    &logits[j].detach(),
                    self.w.temperature,
                )?)
            }))?;
            losses.insert(format!("{name}.ffsd.dml"), (dml / (m - 1) as f64)?);
            let Some(chain) = &self.sd[i] else { continue };
            // Chains exist from the second student on: `i − 1` is the previous student.
            let own = &maps[i];
            let (last, prev) = (last(own)?, last(&maps[i - 1])?.detach());
            let div = diversity_loss(&attention(last)?, &attention(&prev)?)?;
            losses.insert(format!("{name}.ffsd.diversity"), (div * ld)?);
            let sd = sd_teach(chain, &own[..own.len() - 1], &diversity_target(&prev)?)?;
            losses.insert(format!("{name}.ffsd.sd"), (sd * ld)?);
        }
        Ok(())
    }

    /// The fusion module's CE and KD from the students' mean logits, and the leader's terms
    /// from the fusion module.
    fn fusion_and_leader_terms(
        &self,
        maps: &[Vec<Tensor>],
        logits: &[Tensor],
        labels: &[Option<u32>],
        warm: f64,
        losses: &mut BTreeMap<String, Tensor>,
    ) -> Result<()> {
        let t = self.w.temperature;
        let lasts = maps[1..]
            .iter()
            .map(|m| Ok(last(m)?.detach()))
            .collect::<Result<Vec<_>>>()?;
        let concat = Tensor::cat(&lasts, 1)?;
        let (fmap, flogits) = self.fusion.forward_t(&concat, true)?;
        let ensemble = (Tensor::stack(&logits[1..], 0)?.mean(0)?).detach();
        losses.insert("fusion.ffsd.ce".into(), cross_entropy(&flogits, labels)?);
        losses.insert("fusion.ffsd.kd".into(), kd_loss(&flogits, &ensemble, t)?);
        let lf = self.w.lambda_fusion * warm;
        let leader = &self.names[0];
        let f_l = last(&maps[0])?;
        losses.insert(
            format!("{leader}.ffsd.kd"),
            kd_loss(&logits[0], &flogits.detach(), t)?,
        );
        let fusion = attention_loss(&attention(f_l)?, &attention(&fmap.detach())?)?;
        losses.insert(format!("{leader}.ffsd.fusion"), (fusion * lf)?);
        let tr = self.trans.forward_t(f_l, true)?;
        let trans = attention_loss(&attention(&tr)?, &attention(&concat)?)?;
        losses.insert(format!("{leader}.ffsd.trans_fusion"), (trans * lf)?);
        if let Some(chain) = &self.sd[0] {
            let shallow = &maps[0][..maps[0].len() - 1];
            let sd = sd_teach(chain, shallow, &fmap.detach())?;
            losses.insert(format!("{leader}.ffsd.sd"), (sd * lf)?);
        }
        Ok(())
    }
}

fn last(maps: &[Tensor]) -> Result<&Tensor> {
    maps.last()
        .ok_or_else(|| Error::msg("internal: FFSD without stage maps"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::SeedableRng;

    use crate::distill::test_util::scalar;

    fn close(got: f64, want: f64) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// `A(f) = mean_c f²`; `d` of unit-normalised rows.
    #[test]
    fn attention_and_its_loss_by_hand() {
        let d = Device::Cpu;
        // N = 1, C = 2, 1 × 2 map: channels [1, 2] and [3, 0] → A = [(1+9)/2, (4+0)/2] = [5, 2].
        let f = Tensor::new(&[[[[1f32, 2.0]], [[3.0, 0.0]]]], &d).unwrap();
        let a = attention(&f).unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), [[5.0, 2.0]]);
        let y = Tensor::new(&[[1f32, 1.0]], &d).unwrap();
        let (s29, s2) = (29f64.sqrt(), 2f64.sqrt());
        let want = ((5.0 / s29 - 1.0 / s2).powi(2) + (2.0 / s29 - 1.0 / s2).powi(2)) / 2.0;
        close(scalar(&attention_loss(&a, &y).unwrap()), want);
    }

    /// The diversity shift of a = [3, 0, 4]: ‖a‖ = 5, â = [.6, 0, .8], θ = the ⌊3/3⌋ = 1st
    /// smallest = 0: t = [5 − .6, 5/2 (sign 0), 5 − .8]. Six positions: θ the 2nd smallest, the
    /// smallest kept as it is.
    #[test]
    fn diversity_loss_and_target_by_hand() {
        let d = Device::Cpu;
        let a = Tensor::new(&[[3f32, 0.0, 4.0]], &d).unwrap();
        let x = Var::new(&[[1f32, 0.0, 0.0]], &d).unwrap();
        let l = diversity_loss(x.as_tensor(), &a).unwrap();
        close(
            scalar(&l),
            (3.4f64.powi(2) + 2.5f64.powi(2) + 4.2f64.powi(2)) / 3.0,
        );
        assert!(l.backward().unwrap().get(&x).is_some());
        let six = Tensor::new(&[[1f32, 2.0, 3.0, 4.0, 5.0, 6.0]], &d).unwrap();
        let (t, hat, norm) = diversity_shift(&six).unwrap();
        let n = 91f32.sqrt();
        assert!((norm[0] - n).abs() < 1e-5);
        assert!((t[0][0] - hat[0][0]).abs() < 1e-6, "below θ: kept");
        assert!((t[0][1] - n / 2.0).abs() < 1e-5, "θ itself: ‖a‖/2");
        assert!((t[0][4] - (n - 5.0 / n)).abs() < 1e-5, "above θ: ‖a‖ − â");
        // Too small a map for a threshold: an error, not a panic.
        assert!(diversity_shift(&Tensor::new(&[[1f32, 2.0]], &d).unwrap()).is_err());
        // The target map: channels [√3, 0, 2] twice → A = [3, 0, 4]; each channel gains
        // (t − â)·‖a‖/C = [3.8, 2.5, 3.4]·5/2.
        let r3 = 3f32.sqrt();
        let y = Tensor::new(&[[[[r3, 0.0, 2.0]], [[r3, 0.0, 2.0]]]], &d).unwrap();
        let g = diversity_target(&y).unwrap().flatten_all().unwrap();
        let want = [r3 + 9.5, 6.25, 10.5, r3 + 9.5, 6.25, 10.5];
        for (g, w) in g.to_vec1::<f32>().unwrap().iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
    }

    /// λ·exp(−5(1 − e/5)²) over the 1-based epochs 1..5, then λ.
    #[test]
    fn warmup_follows_the_released_schedule() {
        let w = FfsdWeights {
            temperature: 2.0,
            lambda_diversity: 1e-5,
            lambda_fusion: 10.0,
            lambda_self_distillation: 1000.0,
            warmup_epochs: 5,
        };
        close(w.warmup(0), (-3.2f64).exp());
        close(w.warmup(2), (-5.0 * 0.4f64.powi(2)).exp());
        assert_eq!(w.warmup(4), 1.0);
        assert_eq!(w.warmup(9), 1.0);
        let off = FfsdWeights {
            warmup_epochs: 0,
            ..w
        };
        assert_eq!(off.warmup(0), 1.0);
    }

    /// One transposed convolution (3×3, stride 2, padding 1, output padding 1) of a 1×1 map:
    /// output (i, j) = x·w[i + 1, j + 1]; eval-mode BN of fresh statistics divides by
    /// √(1 + 1e-5); ReLU. The self-distillation term is then `d` of the attention maps.
    #[test]
    fn self_distillation_chain_by_hand() {
        let d = Device::Cpu;
        let vars = Arc::new(SeededVarMap::new(0));
        let vb = vars.builder(DType::F32, &d);
        let chain = SdChain::new(&vb, &[1, 1]).unwrap();
        let w: Vec<f32> = chain.layers[0].0.flatten_all().unwrap().to_vec1().unwrap();
        let x = Tensor::new(&[[[[2f32]]]], &d).unwrap();
        let out = chain.forward_t(&x, false).unwrap();
        assert_eq!(out.len(), 1);
        let got = out[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let s = (1.0f32 + 1e-5).sqrt();
        let want = [w[4], w[5], w[7], w[8]].map(|v| (2.0 * v / s).max(0.0));
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
        let shallow = Var::new(&[[[[1f32, 2.0], [3.0, 4.0]]]], &d).unwrap();
        let l = sd_teach(&chain, &[shallow.as_tensor().clone()], &x).unwrap();
        let a = attention(shallow.as_tensor()).unwrap();
        let want = attention_loss(&a, &attention(&out[0]).unwrap()).unwrap();
        close(scalar(&l), scalar(&want));
        // The chain as a teacher gets no gradient; the mimicking map does.
        let g = l.backward().unwrap();
        assert!(g.get(shallow.as_tensor()).is_some());
        assert!(g.get(&chain.layers[0].0).is_none());
    }

    /// candle's transposed convolution gradient (with output padding) against central
    /// differences, in f64.
    #[test]
    fn transposed_convolution_gradient_matches_finite_differences() {
        let d = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, 2, 2), &d).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 2, 3, 3), &d).unwrap()).unwrap();
        let r = Tensor::randn(0f64, 1.0, (2, 2, 4, 4), &d).unwrap();
        let f = |x: &Tensor, w: &Tensor| -> f64 {
            (x.conv_transpose2d(w, 1, 1, 2, 1).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let loss = (x
            .as_tensor()
            .conv_transpose2d(w.as_tensor(), 1, 1, 2, 1)
            .unwrap()
            * &r)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        for (v, other_is_w) in [(&x, false), (&w, true)] {
            let an = g
                .get(v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for i in 0..base.len() {
                let shifted = |e: f64| {
                    let mut b = base.clone();
                    b[i] += e;
                    Tensor::from_vec(b, v.shape(), &d).unwrap()
                };
                let (p, m) = (shifted(1e-6), shifted(-1e-6));
                let fd = if other_is_w {
                    (f(x.as_tensor(), &p) - f(x.as_tensor(), &m)) / 2e-6
                } else {
                    (f(&p, w.as_tensor()) - f(&m, w.as_tensor())) / 2e-6
                };
                assert!((fd - an[i]).abs() < 1e-5, "{i}: {fd} vs {}", an[i]);
            }
        }
    }

    fn classifier(width: f64) -> crate::models::config::ModelConfig {
        serde_json::from_value(serde_json::json!({
            "arch": "classifier",
            "backbone": {"depth": 18, "width": width, "norm": "bn", "trainable_layers": 5},
            "input": {"min_size": 32, "max_size": 32},
            "head": {"type": "linear"},
        }))
        .unwrap()
    }

    /// A leader (×0.25) and two students (×0.125), stages c2..c4 (c4: 2×2 at 32 px), every
    /// λ 1, in epoch `epoch` of a 5-epoch warm-up.
    fn tiny(epoch: u64) -> Ffsd {
        let dev = Device::Cpu;
        let nets: Vec<Network> = [0.25, 0.125, 0.125]
            .iter()
            .enumerate()
            .map(|(k, w)| Network::new(&classifier(*w), 3, network_seed(0, k), &dev).unwrap())
            .collect();
        let stages: Vec<String> = (2..=4).map(|k| format!("backbone.c{k}")).collect();
        let shapes: Vec<_> = nets
            .iter()
            .map(|n| stage_shapes(n, &stages, &dev).unwrap())
            .collect();
        let paths = ["model", "s0", "s1"].map(String::from);
        check_shapes(&shapes, &paths).unwrap();
        let w = FfsdWeights {
            temperature: 2.0,
            lambda_diversity: 1.0,
            lambda_fusion: 1.0,
            lambda_self_distillation: 1.0,
            warmup_epochs: 5,
        };
        let mut f = Ffsd::with_modules(nets, stages, &shapes, 3, network_seed(0, 3), w).unwrap();
        f.set_epoch(epoch);
        f
    }

    /// Which trained variables (network parameters by network name, the method's own by
    /// prefix) got a gradient from `loss`.
    fn reached(f: &Ffsd, loss: &Tensor) -> Vec<String> {
        let g = loss.backward().unwrap();
        let mut hit = std::collections::BTreeSet::new();
        for n in f.networks() {
            for (_, v) in n.trainable() {
                if g.get(v.as_tensor()).is_some() {
                    hit.insert(n.name.to_string());
                }
            }
        }
        for (k, v) in f.vars.varmap.data().lock().unwrap().iter() {
            if g.get(v.as_tensor()).is_some() {
                let owner: Vec<&str> = k.split('.').take(2).collect();
                hit.insert(owner.join("."));
            }
        }
        hit.into_iter().collect()
    }

    #[test]
    fn each_term_trains_its_own_module_and_the_kd_terms_match_by_hand() {
        let mut f = tiny(0);
        let b = crate::distill::test_util::class_batch(32);
        let out = f.step(&b, &mut StepRng::seed_from_u64(0)).unwrap();
        let keys: Vec<&str> = out.losses.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "fusion.ffsd.ce",
                "fusion.ffsd.kd",
                "net1.ffsd.fusion",
                "net1.ffsd.kd",
                "net1.ffsd.sd",
                "net1.ffsd.sd_train",
                "net1.ffsd.trans_fusion",
                "net1.loss_cls",
                "net2.ffsd.dml",
                "net2.loss_cls",
                "net3.ffsd.diversity",
                "net3.ffsd.dml",
                "net3.ffsd.sd",
                "net3.ffsd.sd_train",
                "net3.loss_cls",
            ]
        );
        let want: [(&str, &[&str]); 13] = [
            ("fusion.ffsd.ce", &["ffsd.fusion"]),
            ("fusion.ffsd.kd", &["ffsd.fusion"]),
            ("net1.ffsd.kd", &["net1"]),
            ("net1.ffsd.fusion", &["net1"]),
            (
                "net1.ffsd.trans_fusion",
                &["net1", "net1.trans_fusion_module"],
            ),
            ("net1.ffsd.sd", &["net1"]),
            ("net1.ffsd.sd_train", &["net1.sd"]),
            ("net2.ffsd.dml", &["net2"]),
            ("net3.ffsd.dml", &["net3"]),
            ("net3.ffsd.diversity", &["net3"]),
            ("net3.ffsd.sd", &["net3"]),
            ("net3.ffsd.sd_train", &["net3.sd"]),
            ("net2.loss_cls", &["net2"]),
        ];
        for (k, owners) in want {
            assert_eq!(reached(&f, &out.losses[k]), owners, "{k}");
        }
        // The same forwards again (training-mode BatchNorm normalises by the batch).
        let passes: Vec<_> = f
            .nets
            .iter()
            .map(|n| own_pass(n.model.as_ref(), &b, &mut StepRng::seed_from_u64(0)).unwrap())
            .collect();
        let logit = |k: usize| {
            passes[k]
                .out
                .head(Head::Classifier)
                .unwrap()
                .logits()
                .unwrap()
        };
        let c4 = |k: usize| passes[k].fwd.taps["backbone.c4"].detach();
        let (fmap, flogits) = f
            .fusion
            .forward_t(&Tensor::cat(&[c4(1), c4(2)], 1).unwrap(), true)
            .unwrap();
        let kd = |s: &Tensor, t: &Tensor| scalar(&kd_loss(s, t, 2.0).unwrap());
        close(
            scalar(&out.losses["net2.ffsd.dml"]),
            kd(&logit(1), &logit(2)),
        );
        close(
            scalar(&out.losses["net3.ffsd.dml"]),
            kd(&logit(2), &logit(1)),
        );
        let mean = ((logit(1) + logit(2)).unwrap() / 2.0).unwrap();
        close(scalar(&out.losses["fusion.ffsd.kd"]), kd(&flogits, &mean));
        close(scalar(&out.losses["net1.ffsd.kd"]), kd(&logit(0), &flogits));
        // λ_f = 1 at epoch 1 of the warm-up: exp(−3.2).
        let fusion =
            attention_loss(&attention(&c4(0)).unwrap(), &attention(&fmap).unwrap()).unwrap();
        close(
            scalar(&out.losses["net1.ffsd.fusion"]),
            (-3.2f64).exp() * scalar(&fusion),
        );
        close(out.metrics["ffsd.warmup"], (-3.2f64).exp());
        let div = diversity_loss(&attention(&c4(2)).unwrap(), &attention(&c4(1)).unwrap()).unwrap();
        close(
            scalar(&out.losses["net3.ffsd.diversity"]),
            (-3.2f64).exp() * scalar(&div),
        );
    }

    /// The summed loss reaches every trainable parameter of every network and every variable
    /// of the method's own modules (but BatchNorm statistics).
    #[test]
    fn the_summed_loss_reaches_every_network_and_module() {
        let mut f = tiny(7);
        let b = crate::distill::test_util::class_batch(32);
        let out = f.step(&b, &mut StepRng::seed_from_u64(0)).unwrap();
        let total = out
            .losses
            .values()
            .cloned()
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let g = total.backward().unwrap();
        for n in f.networks() {
            for (k, v) in n.trainable() {
                assert!(g.get(v.as_tensor()).is_some(), "{k} gets no gradient");
            }
        }
        for (k, v) in f.vars.varmap.data().lock().unwrap().iter() {
            if k.ends_with("running_mean") || k.ends_with("running_var") {
                continue;
            }
            assert!(g.get(v.as_tensor()).is_some(), "{k} gets no gradient");
        }
        assert!(f.sd[1].is_none(), "the first student has no chain");
    }

    #[test]
    fn stage_shapes_that_do_not_fit_are_located() {
        let p = ["model", "method.students[0].model"].map(String::from);
        let ok = vec![[8, 4, 4], [16, 2, 2]];
        assert!(check_shapes(&[ok.clone(), ok.clone()], &p).is_ok());
        let p3 = ["model", "s0", "method.students[1].model"].map(String::from);
        let wide = vec![[16, 4, 4], [32, 2, 2]];
        // A leader of another width is fine; students of two widths are not.
        assert!(check_shapes(&[wide.clone(), ok.clone(), ok.clone()], &p3).is_ok());
        let (path, m) = check_shapes(&[ok.clone(), ok.clone(), wide], &p3).unwrap_err();
        assert_eq!(path, "method.students[1].model");
        assert!(m.contains("share one width"), "{m}");
        let (path, m) = check_shapes(&[ok.clone(), vec![[8, 4, 4], [16, 3, 3]]], &p).unwrap_err();
        assert_eq!(path, "method.students[0].model");
        assert!(m.contains("the fusion concatenates"), "{m}");
        let one = vec![[8, 2, 2], [16, 1, 1]];
        let (path, m) = check_shapes(&[one.clone(), one], &p).unwrap_err();
        assert_eq!(path, "method.last_stage");
        assert!(m.contains("at least 3 positions"), "{m}");
    }
}
