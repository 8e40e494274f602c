//! Region proposal network as torchvision's `RPNHead` + `RegionProposalNetwork`
//! (`models/detection/rpn.py`): a shared 3×3 conv + ReLU, per-anchor objectness and box deltas;
//! proposals are the top-n anchors per level by objectness, decoded, clipped, filtered and
//! NMS'd per level; training samples 256 anchors (half positive at most) against the ground
//! truth matched at IoU 0.7 / 0.3 with low-quality matches allowed.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};
use rand::Rng;

use super::config::RpnConfig;
use super::losses::{bce_with_logits_mean, smooth_l1_sum};
use crate::data::loader::Target;
use crate::models::layers::{Conv2d, ConvSpec};
use crate::ops::anchors::AnchorGenerator;
use crate::ops::boxes::{clip_to_image, iou_matrix, is_large_enough, Box4, BoxCoder};
use crate::ops::conv::ConvImpl;
use crate::ops::matcher::{sample_balanced, Match, Matcher};
use crate::ops::nms::batched_nms;
use crate::ops::relu::relu;

/// torchvision's RPN drops proposals smaller than this (pixels).
const MIN_SIZE: f32 = 1e-3;
/// Smooth-L1 β of torchvision's RPN box loss.
const BETA: f64 = 1.0 / 9.0;

#[derive(Debug, Clone)]
pub struct RpnHead {
    conv: Conv2d,
    cls_logits: Conv2d,
    bbox_pred: Conv2d,
}

impl RpnHead {
    /// torchvision: weights ~ N(0, 0.01), biases 0.
    pub fn new(
        vb: VarBuilder,
        c: usize,
        anchors: usize,
        imp: ConvImpl,
    ) -> candle_core::Result<Self> {
        let w = Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
        let b = Init::Const(0.0);
        let spec = |cout, k| ConvSpec {
            cin: c,
            cout,
            k,
            stride: 1,
            padding: k / 2,
            bias: true,
            imp,
        };
        Ok(Self {
            conv: Conv2d::with_init(vb.pp("conv.0.0"), spec(c, 3), w, b)?,
            cls_logits: Conv2d::with_init(vb.pp("cls_logits"), spec(anchors, 1), w, b)?,
            bbox_pred: Conv2d::with_init(vb.pp("bbox_pred"), spec(4 * anchors, 1), w, b)?,
        })
    }

    /// Per level: objectness `N × (H·W·A)` and deltas `N × (H·W·A) × 4`, ordered (y, x, anchor)
    /// like the anchors.
    pub fn forward(&self, features: &[Tensor]) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        features
            .iter()
            .map(|f| {
                let t = relu(&self.conv.forward(f)?)?;
                let logits = self.cls_logits.forward(&t)?;
                let deltas = self.bbox_pred.forward(&t)?;
                let (n, a, h, w) = logits.dims4()?;
                let logits = logits.permute((0, 2, 3, 1))?.reshape((n, h * w * a))?;
                let deltas = deltas
                    .reshape((n, a, 4, h, w))?
                    .permute((0, 3, 4, 1, 2))?
                    .reshape((n, h * w * a, 4))?;
                Ok((logits, deltas))
            })
            .collect()
    }
}

/// The anchors the RPN loss sampled (training only) — distillation scores the same ones.
#[derive(Debug, Clone, Default)]
pub struct RpnSamples {
    /// Sampled anchors as flat indices `image · A + anchor` into `logits`.
    pub sampled: Vec<u32>,
    /// Their labels: 1 foreground, 0 background.
    pub labels: Vec<f32>,
    /// The positive anchors (flat indices into `deltas` viewed as `(N·A) × 4`).
    pub positives: Vec<u32>,
    /// Their regression targets, 4 per positive.
    pub targets: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Rpn {
    pub head: RpnHead,
    pub anchor_gen: AnchorGenerator,
    pub coder: BoxCoder,
    pub cfg: RpnConfig,
}

impl Rpn {
    pub fn new(
        vb: VarBuilder,
        cfg: &RpnConfig,
        channels: usize,
        imp: ConvImpl,
    ) -> candle_core::Result<Self> {
        let anchor_gen = AnchorGenerator {
            sizes: cfg.anchor_sizes.clone(),
            aspect_ratios: cfg.aspect_ratios.clone(),
        };
        Ok(Self {
            head: RpnHead::new(
                vb.pp("head"),
                channels,
                anchor_gen.num_anchors_per_location(),
                imp,
            )?,
            anchor_gen,
            coder: BoxCoder::new([1.0, 1.0, 1.0, 1.0]),
            cfg: cfg.clone(),
        })
    }

    /// The anchors of one image over all levels (the same for every image of a batch padded to
    /// `padded`), and how many each level has.
    pub fn anchors(
        &self,
        features: &[Tensor],
        padded: (usize, usize),
    ) -> candle_core::Result<(Vec<Box4>, Vec<usize>)> {
        let sizes: Vec<(usize, usize)> = features
            .iter()
            .map(|f| Ok((f.dim(2)?, f.dim(3)?)))
            .collect::<candle_core::Result<_>>()?;
        let per_level = self.anchor_gen.anchors(padded, &sizes);
        let counts: Vec<usize> = per_level.iter().map(|a| a.len()).collect();
        Ok((per_level.into_iter().flatten().collect(), counts))
    }

    /// Proposals per image, by decreasing objectness, from the head's outputs (detached):
    /// training or test top-n.
    pub fn proposals(
        &self,
        logits: &Tensor,
        deltas: &Tensor,
        anchors: &[Box4],
        counts: &[usize],
        image_sizes: &[(usize, usize)],
        training: bool,
    ) -> candle_core::Result<Vec<Vec<Box4>>> {
        let (pre, post) = if training {
            (self.cfg.pre_nms_top_n_train, self.cfg.post_nms_top_n_train)
        } else {
            (self.cfg.pre_nms_top_n_test, self.cfg.post_nms_top_n_test)
        };
        let lv = logits
            .detach()
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let dv = deltas
            .detach()
            .to_dtype(candle_core::DType::F32)?
            .to_vec3::<f32>()?;
        Ok((0..image_sizes.len())
            .map(|i| self.filter(&lv[i], &dv[i], anchors, counts, image_sizes[i], pre, post))
            .collect())
    }

    /// torchvision's `filter_proposals` for one image.
    #[allow(clippy::too_many_arguments)]
    fn filter(
        &self,
        logits: &[f32],
        deltas: &[Vec<f32>],
        anchors: &[Box4],
        counts: &[usize],
        size: (usize, usize),
        pre: usize,
        post: usize,
    ) -> Vec<Box4> {
        let mut boxes = vec![];
        let mut scores = vec![];
        let mut levels = vec![];
        let mut start = 0;
        for (l, &n) in counts.iter().enumerate() {
            let mut idx: Vec<usize> = (start..start + n).collect();
            // topk: largest logits first (ties keep anchor order).
            idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            idx.truncate(pre.min(n));
            for i in idx {
                let d = &deltas[i];
                let mut b = self.coder.decode(&[d[0], d[1], d[2], d[3]], &anchors[i]);
                clip_to_image(&mut b, size);
                let s = 1.0 / (1.0 + (-logits[i]).exp());
                if is_large_enough(&b, MIN_SIZE) && s >= self.cfg.score_thresh {
                    boxes.push(b);
                    scores.push(s);
                    levels.push(l);
                }
            }
            start += n;
        }
        let mut keep = batched_nms(&boxes, &scores, &levels, self.cfg.nms_thresh);
        keep.truncate(post);
        keep.into_iter().map(|k| boxes[k]).collect()
    }

    /// The head's objectness logits (`N × A`) and deltas (`N × A × 4`) over all levels, in
    /// anchor order — also what a teacher's RPN contributes to distillation.
    pub fn head_outputs(&self, features: &[Tensor]) -> candle_core::Result<(Tensor, Tensor)> {
        let head = self.head.forward(features)?;
        let logits = Tensor::cat(&head.iter().map(|h| h.0.clone()).collect::<Vec<_>>(), 1)?;
        let deltas = Tensor::cat(&head.iter().map(|h| h.1.clone()).collect::<Vec<_>>(), 1)?;
        Ok((logits, deltas))
    }

    /// The anchors the loss uses: matched at IoU 0.7 / 0.3 (low-quality matches allowed) and
    /// sampled, 256 per image, at most half positive.
    pub fn sample(&self, anchors: &[Box4], targets: &[Target], rng: &mut impl Rng) -> RpnSamples {
        let a = anchors.len();
        let matcher = Matcher {
            high: self.cfg.fg_iou_thresh,
            low: self.cfg.bg_iou_thresh,
            allow_low_quality: true,
        };
        let mut s = RpnSamples::default();
        for (i, t) in targets.iter().enumerate() {
            let m = matcher.matches(&iou_matrix(&t.boxes, anchors), t.boxes.len(), a);
            let (pos, neg) = sample_balanced(
                &m,
                self.cfg.batch_size_per_image,
                self.cfg.positive_fraction,
                rng,
            );
            for &p in &pos {
                let Match::Gt(g) = m[p] else {
                    unreachable!("positives are matched")
                };
                s.positives.push((i * a + p) as u32);
                s.targets
                    .extend(self.coder.encode(&t.boxes[g], &anchors[p]));
            }
            for (idx, lab) in pos
                .iter()
                .map(|&p| (p, 1f32))
                .chain(neg.iter().map(|&n| (n, 0f32)))
            {
                s.sampled.push((i * a + idx) as u32);
                s.labels.push(lab);
            }
        }
        s
    }

    /// torchvision's RPN losses on the sampled anchors: objectness (BCE, mean over the samples)
    /// and box regression (smooth-L1 over the positives / number of samples).
    pub fn losses(
        &self,
        logits: &Tensor,
        deltas: &Tensor,
        s: &RpnSamples,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let dev = logits.device();
        let n_sampled = s.sampled.len().max(1) as f64;
        let flat_logits = logits.flatten_all()?;
        let sel = flat_logits.index_select(
            &Tensor::from_vec(s.sampled.clone(), s.sampled.len(), dev)?,
            0,
        )?;
        let objectness = bce_with_logits_mean(
            &sel,
            &Tensor::from_vec(s.labels.clone(), s.sampled.len(), dev)?.to_dtype(sel.dtype())?,
        )?;
        let box_loss = if s.positives.is_empty() {
            (deltas.sum_all()? * 0.0)?
        } else {
            let np = s.positives.len();
            let pred = deltas
                .reshape(((), 4))?
                .index_select(&Tensor::from_vec(s.positives.clone(), np, dev)?, 0)?;
            let tgt = Tensor::from_vec(s.targets.clone(), (np, 4), dev)?.to_dtype(pred.dtype())?;
            (smooth_l1_sum(&pred, &tgt, BETA)? / n_sampled)?
        };
        Ok((objectness, box_loss))
    }
}
