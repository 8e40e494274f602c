//! Faster R-CNN (Ren et al. 2015) with FPN, assembled like torchvision's `GeneralizedRCNN`:
//! backbone (ResNet + FPN) → RPN → RoI heads, with parameter names equal to torchvision's
//! `fasterrcnn_resnet50_fpn` state_dict keys, so its checkpoints load and kdet's export back.
//! The input transform (normalise, resize, pad) lives in the data loader; [`FasterRcnn::predict`]
//! maps detections back to original image coordinates as torchvision's `transform.postprocess`.

pub mod losses;
pub mod roi_heads;
pub mod rpn;

use std::collections::BTreeMap;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use rand::Rng;

use crate::config::ModelConfig;
use crate::data::loader::Batch;
use crate::ops::boxes::Box4;
use crate::ops::conv::ConvImpl;

use super::backbone::{Backbone, Features};
use roi_heads::{Detections, HeadOutput, RoiHeads, SampledRois};
use rpn::{Rpn, RpnOutput};

/// Everything a training forward produced: the losses and the intermediate tensors that
/// distillation reads (see DESIGN.md "Taps").
pub struct TrainOutput {
    pub losses: BTreeMap<String, Tensor>,
    pub features: Features,
    pub rpn: RpnOutput,
    pub sampled: SampledRois,
    pub head: HeadOutput,
    pub scales: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct FasterRcnn {
    pub backbone: Backbone,
    pub rpn: Rpn,
    pub roi_heads: RoiHeads,
    pub cfg: ModelConfig,
    /// Classes including background.
    pub num_classes: usize,
    /// Precision of the weights (f32, or f16 for a teacher); inputs are cast to it.
    pub dtype: candle_core::DType,
}

impl FasterRcnn {
    /// `num_classes` counts background (torchvision's convention: COCO → 91).
    pub fn new(
        vb: VarBuilder,
        cfg: &ModelConfig,
        num_classes: usize,
        imp: ConvImpl,
    ) -> candle_core::Result<Self> {
        let backbone = Backbone::new(vb.pp("backbone"), cfg, imp)?;
        let c = backbone.out_channels;
        Ok(Self {
            rpn: Rpn::new(vb.pp("rpn"), &cfg.rpn, c, imp)?,
            roi_heads: RoiHeads::new(vb.pp("roi_heads"), &cfg.roi_heads, c, num_classes)?,
            backbone,
            cfg: cfg.clone(),
            num_classes,
            dtype: vb.dtype(),
        })
    }

    /// Scale of each pyramid level relative to the largest image (torchvision's
    /// `MultiScaleRoIAlign._infer_scale`: the nearest power of two).
    pub fn scales(
        features: &[Tensor],
        image_sizes: &[(usize, usize)],
    ) -> candle_core::Result<Vec<f32>> {
        let max_h = image_sizes.iter().map(|s| s.0).max().unwrap_or(1) as f32;
        features
            .iter()
            .map(|f| {
                let approx = f.dim(2)? as f32 / max_h;
                Ok(2f32.powf(approx.log2().round()))
            })
            .collect()
    }

    /// Training forward: the four losses of torchvision's Faster R-CNN, plus taps.
    pub fn forward_train(
        &self,
        batch: &Batch,
        rng: &mut impl Rng,
    ) -> candle_core::Result<TrainOutput> {
        let (_, _, h, w) = batch.images.dims4()?;
        let features = self.backbone.forward_t(&batch.images, true)?;
        let rpn = self.rpn.forward(
            &features.p,
            (h, w),
            &batch.image_sizes,
            Some(&batch.targets),
            rng,
        )?;
        let sampled = self.roi_heads.sample(&rpn.proposals, &batch.targets, rng);
        let scales = Self::scales(&features.p, &batch.image_sizes)?;
        let head = self.roi_heads.head(&features.p, &scales, &sampled.rois)?;
        let mut losses = rpn.losses.clone();
        losses.extend(self.roi_heads.losses(&head, &sampled)?);
        Ok(TrainOutput {
            losses,
            features,
            rpn,
            sampled,
            head,
            scales,
        })
    }

    /// Detections in network input coordinates, plus the features and proposals.
    pub fn detect(
        &self,
        images: &Tensor,
        image_sizes: &[(usize, usize)],
    ) -> candle_core::Result<(Features, Vec<Vec<Box4>>, Vec<Detections>)> {
        let (_, _, h, w) = images.dims4()?;
        let features = self
            .backbone
            .forward_t(&images.to_dtype(self.dtype)?, false)?;
        // Inference draws nothing at random; the RNG only satisfies the signature.
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let rpn = self
            .rpn
            .forward(&features.p, (h, w), image_sizes, None, &mut rng)?;
        let scales = Self::scales(&features.p, image_sizes)?;
        let head = self.roi_heads.head(&features.p, &scales, &rpn.proposals)?;
        let dets = self
            .roi_heads
            .postprocess(&head, &rpn.proposals, image_sizes)?;
        Ok((features, rpn.proposals, dets))
    }

    /// Detections in original image coordinates (torchvision's `transform.postprocess`).
    pub fn predict(&self, batch: &Batch) -> candle_core::Result<Vec<Detections>> {
        let (_, _, mut dets) = self.detect(&batch.images, &batch.image_sizes)?;
        for ((d, &(h, w)), &(oh, ow)) in dets
            .iter_mut()
            .zip(&batch.image_sizes)
            .zip(&batch.original_sizes)
        {
            let (ry, rx) = (oh as f32 / h as f32, ow as f32 / w as f32);
            for b in &mut d.boxes {
                *b = [b[0] * rx, b[1] * ry, b[2] * rx, b[3] * ry];
            }
        }
        Ok(dets)
    }
}
