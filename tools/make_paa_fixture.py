#!/usr/bin/env python3
"""Reference fixture for kdet's PAA detector and LAD distillation.

What this produces
------------------
tests/fixtures/paa/ (relative to the repository root):
  * weights.safetensors  - student PAA detector state_dict, float32, with
                           mmdetection's own parameter names (backbone.*,
                           neck.*, bbox_head.*), BN running stats included,
                           ``num_batches_tracked`` dropped.
  * teacher.safetensors  - a second network of the same architecture (other
                           seed), the LAD teacher.  Same names as the student:
                           mmdet's LAD keeps ``teacher_model`` out of its own
                           state_dict and loads it from an ordinary PAA
                           checkpoint (``teacher_ckpt``) with these names.
  * config.json          - the tiny mmdet model config, image sizes, GT boxes,
                           seeds, package versions.
  * expected.safetensors - every intermediate and final value listed in
                           EXPECTED_KEYS_DOC below (also copied into the
                           safetensors metadata under "keys").

How it is computed
------------------
mmdetection 3.3.0 itself is used: the models are built with
``mmdet.registry.MODELS.build`` from the config dicts of make_config() (types
'PAA', 'LAD', 'PAAHead', 'LADHead', 'ResNet', 'FPN', ...), and every number in
expected.safetensors comes out of mmdet's own code paths:
  * forward               PAA.extract_feat + PAAHead.forward
  * anchors / flags       AnchorHead.get_anchors (AnchorGenerator)
  * MaxIoU candidates     MaxIoUAssigner.assign (called directly, and checked
                          against what PAAHead.get_targets produced)
  * per-candidate cost    PAAHead.get_pos_loss (recorded); its focal and GIoU
                          parts are re-evaluated with the head's own loss_cls /
                          loss_bbox modules and checked to add up
  * GMM                   the sklearn.mixture.GaussianMixture that
                          PAAHead.paa_reassign builds is swapped for a
                          subclass that only records inputs and fitted state
  * reassignment          PAAHead.paa_reassign (recorded)
  * losses                PAA.loss (PAAHead.loss_by_feat) and LAD.loss
                          (LADHead.get_label_assignment on the teacher +
                          LADHead.loss_by_feat on the student)
  * inference             PAA.predict(rescale=True, scale_factor 1) with
                          score voting on and off (PAAHead.with_score_voting)
The per-GT per-level top-k lists are re-derived here the way paa_reassign
does it (torch.topk(largest=False) per level, concatenated in level order)
and checked against the GMM inputs that mmdet really passed to sklearn.

Shim (the only one): the PyPI ``mmcv-lite`` wheel has no compiled ``mmcv._ext``.
A stand-in module is put in ``sys.modules['mmcv._ext']`` before mmdet is
imported: every kernel raises NotImplementedError if called, except ``nms``,
which is mapped to ``torchvision.ops.nms`` (mmcv's CPU nms with offset=0 has
the same rule: sort by score descending, drop boxes with IoU > thr).  Nothing
else in the PAA/LAD path calls compiled mmcv code on CPU: FocalLoss falls back
to mmdet's ``py_sigmoid_focal_loss`` when tensors are not on CUDA.

Random weights: every conv is N(0, gain^2/fan_in); BN running statistics are
first set to the batch statistics of the fixture images and then perturbed
(so BN is far from the identity but activations stay O(1)); BN/GN affine
parameters, biases and the per-level Scale are randomised; atss_cls bias is
CLS_BIAS + CLS_BIAS_SPREAD * N(0, 1) per class, tuned with the student seed so
that a fair share of anchors passes score_thr 0.05 (about 50 detections per
image, all three classes, well below max_per_img = 100).

Architecture (ARCH): ResNet-18 (BasicBlocks, mmdet names) with
base_channels 4, i.e. stage widths 4/8/16/32 and C3/C4/C5 = 8/16/32 channels;
FPN out_channels 16; PAAHead feat_channels 16, stacked_convs 2, GN with 4
groups (4 channels per group).  ~68 k parameters per network, so each weight
file is 0.29 MB and the whole folder ~1.2 MB (the 2x3x96x128 input batch
alone is 0.29 MB of expected.safetensors).  base_channels 8 would not fit the
1.5 MB budget: student + teacher alone would be ~1.6 MB.

What the chosen constants (seeds, CLS_BIAS, GT boxes) make the fixture cover:
  * image 0 GT0 has a single MaxIoU candidate (no GMM, becomes negative);
  * candidates on P3..P6 (img0 GT2: P4-P6; img1 GT2: P3-P5);
  * the GMM puts the lowest-cost candidate(s) into component 1 (img0 GT2 and
    img1 GT2 of the student's PAA assignment), so they are skipped;
  * img0 GT1's GMM (4 samples) ends with a single-sample component 0 whose
    variance is ~reg_covar, so matching score_samples needs sklearn's
    float32 squares (see notes section 8.3);
  * LAD's teacher assignment differs from PAA's own (num_pos 21+16 vs 16+23);
  * 51 / 46 detections with and without score voting; voting moves most
    boxes (class-major output order with voting).

Command (run once, from the repository root; CPU only, ~10 s):
    python3 -m venv /work/venv-paa
    /work/venv-paa/bin/pip install torch==2.4.1 torchvision==0.19.1 \
        scikit-learn safetensors mmengine==0.10.7 mmcv-lite==2.1.0 mmdet==3.3.0
    /work/venv-paa/bin/pip install "numpy<2" "opencv-python<4.11"
    /work/venv-paa/bin/python tools/make_paa_fixture.py
Versions used for the committed fixture: Python 3.11.7, torch 2.4.1+cu121
(run on CPU), torchvision 0.19.1, numpy 1.26.4, scikit-learn 1.9.1,
scipy 1.17.1, mmdet 3.3.0, mmengine 0.10.7, mmcv-lite 2.1.0,
safetensors 0.8.0.

Options: --out DIR (default tests/fixtures/paa next to this script's repo),
--base-channels N (ResNet base width, default ARCH's 4; the other constants
are tuned for 4, other widths are for experiments only).
"""
import argparse
import copy
import json
import os
import sys
import types
import warnings

import numpy as np
import torch
import torchvision

# ----------------------------------------------------------------------------
# mmcv._ext stand-in (see docstring).  Must happen before any mmdet import.
# ----------------------------------------------------------------------------


class _NoExt(types.ModuleType):

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise NotImplementedError(f'mmcv._ext.{name} is not available '
                                      '(mmcv-lite); only nms is shimmed')

        return unavailable


def _nms_via_torchvision(bboxes, scores, iou_threshold, offset):
    assert offset == 0, 'mmdet calls nms with offset=0'
    return torchvision.ops.nms(bboxes, scores, float(iou_threshold))


_ext = _NoExt('mmcv._ext')
_ext.nms = _nms_via_torchvision
sys.modules['mmcv._ext'] = _ext

warnings.filterwarnings('ignore')

import mmcv  # noqa: E402
import mmengine  # noqa: E402
import mmdet  # noqa: E402
import safetensors  # noqa: E402
import scipy  # noqa: E402
import sklearn  # noqa: E402
import sklearn.mixture  # noqa: E402
from mmengine.config import ConfigDict  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from mmdet.registry import MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmdet.structures.bbox import bbox_overlaps  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
import mmdet.models.dense_heads.paa_head as paa_head_module  # noqa: E402

# ----------------------------------------------------------------------------
# Tiny configuration
# ----------------------------------------------------------------------------

NUM_CLASSES = 3
BATCH_SHAPE = (96, 128)  # padded batch (H, W); multiple of 32
IMG_SHAPES = [(96, 128), (80, 112)]  # real (H, W) of each image
SEEDS = dict(student=3, teacher=1, images=2)
CLS_BIAS = -6.8  # centre of the atss_cls bias
CLS_BIAS_SPREAD = 0.5  # std of the per-class atss_cls bias around CLS_BIAS
# Architecture (kept small so that the fixture folder stays ~1.2 MB; see
# the module docstring).
ARCH = dict(base_channels=4, fpn_channels=16, feat_channels=16, gn_groups=4,
            stacked_convs=2)

# GT boxes (x1, y1, x2, y2, absolute pixels) and 0-based labels.
# Image 0: GT0 and GT1 are two identical thin 28 x 3.5 strips 8 px apart.
#   Each is fully inside four P3 anchors (max IoU 98/1024 < 0.1, a 4-way tie),
#   so both come in only through low-quality matching; GT1 is matched after
#   GT0 and overwrites three of GT0's four tied anchors, leaving GT0 a single
#   candidate (< 2: no GMM, its candidate becomes negative).
#   GT2 is large (candidates on P4-P6), GT3 medium.
# Image 1: real size 80 x 112 inside the 96 x 128 batch; GT2 touches the real
#   right / bottom border.
GT = [
    dict(bboxes=[[44.0, 40.2, 72.0, 43.7],
                 [44.0, 48.2, 72.0, 51.7],
                 [4.0, 6.0, 124.0, 92.0],
                 [10.0, 56.0, 42.0, 90.0]],
         labels=[1, 1, 0, 2]),
    dict(bboxes=[[8.0, 6.0, 40.0, 30.0],
                 [44.0, 40.0, 60.0, 52.0],
                 [70.0, 30.0, 112.0, 80.0]],
         labels=[0, 1, 2]),
]


def make_config(arch):
    base_channels = arch['base_channels']
    c3 = base_channels * 2
    backbone = dict(
        type='ResNet',
        depth=18,
        base_channels=base_channels,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        style='pytorch')
    neck = dict(
        type='FPN',
        in_channels=[c3, c3 * 2, c3 * 4],
        out_channels=arch['fpn_channels'],
        start_level=0,
        add_extra_convs='on_output',
        # PAA's config does not set it: FPN default False, i.e. P7 is conv(P6)
        # with no ReLU in between.
        relu_before_extra_convs=False,
        num_outs=5)
    head = dict(
        type='PAAHead',
        num_classes=NUM_CLASSES,
        in_channels=arch['fpn_channels'],
        feat_channels=arch['feat_channels'],
        stacked_convs=arch['stacked_convs'],
        norm_cfg=dict(type='GN', num_groups=arch['gn_groups'],
                      requires_grad=True),
        reg_decoded_bbox=True,
        score_voting=True,
        topk=9,
        covariance_type='diag',
        anchor_generator=dict(
            type='AnchorGenerator',
            ratios=[1.0],
            octave_base_scale=4,
            scales_per_octave=1,
            strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.3),
        loss_centerness=dict(
            type='CrossEntropyLoss', use_sigmoid=True, loss_weight=0.5))
    train_cfg = dict(
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=0.1,
            neg_iou_thr=0.1,
            min_pos_iou=0,
            ignore_iof_thr=-1),
        allowed_border=-1,
        pos_weight=-1,
        debug=False)
    test_cfg = dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=100)
    paa = dict(
        type='PAA',
        backbone=backbone,
        neck=neck,
        bbox_head=head,
        train_cfg=train_cfg,
        test_cfg=test_cfg)
    lad_head = copy.deepcopy(head)
    lad_head['type'] = 'LADHead'
    lad = dict(
        type='LAD',
        backbone=copy.deepcopy(backbone),
        neck=copy.deepcopy(neck),
        bbox_head=lad_head,
        teacher_backbone=copy.deepcopy(backbone),
        teacher_neck=copy.deepcopy(neck),
        teacher_bbox_head=copy.deepcopy(lad_head),
        teacher_ckpt=None,
        eval_teacher=True,
        train_cfg=copy.deepcopy(train_cfg),
        test_cfg=copy.deepcopy(test_cfg))
    return paa, lad


EXPECTED_KEYS_DOC = """
Shapes: N=2 images, A=257 anchors per image (P3 12x16=192, P4 6x8=48,
P5 3x4=12, P6 2x2=4, P7 1x1=1), K=3 classes, G_i = GTs of image i.
Integer tensors are int64; everything else float32 unless stated.

inputs.images                   (2,3,96,128) already-normalised padded batch;
                                image 1 is zero outside its 80x112 region
backbone.c{3,4,5}               student ResNet outputs (out_indices 1,2,3)
neck.p{3..7}                    student FPN outputs
head.{cls_score,bbox_pred,iou_pred}.p{3..7}
                                student PAAHead.forward, N x C x H x W
                                (C = K, 4, 1); bbox_pred already x Scale
teacher.head.{cls_score,bbox_pred,iou_pred}.p{3..7}   same for the teacher
anchors                         (A,4) x1y1x2y2, levels concatenated, order
                                (level, y, x, anchor)
anchors.num_per_level           (5,)
valid_flags                     (2,A) int64 0/1 (from pad_shape)

--- PAA (student, its own assignment): prefix "paa." ---
paa.img{i}.gt_bboxes (G_i,4), paa.img{i}.gt_labels (G_i,)
paa.img{i}.maxiou.iou           (G_i,A) IoU GT x anchor (BboxOverlaps2D)
paa.img{i}.maxiou.assigned      (A,) MaxIoUAssigner gt_inds: 0 = negative,
                                k+1 = GT k, (-1 = ignored; none here)
paa.img{i}.maxiou.max_overlaps  (A,) max IoU over GTs per anchor
paa.img{i}.cand.inds            (P,) candidate anchor indices (ascending)
paa.img{i}.cand.gt              (P,) 0-based GT index of each candidate
paa.img{i}.cand.cost            (P,) get_pos_loss output = cls + bbox
paa.img{i}.cand.cost_cls        (P,) focal loss (reduction none) summed over K
paa.img{i}.cand.cost_bbox       (P,) 1.3 * (1 - GIoU(decoded pred, GT))
paa.img{i}.cand.decoded         (P,4) decoded candidate boxes (no clipping)
paa.img{i}.gt{g}.topk_inds      anchor indices kept per level (top-k smallest
                                cost, level order, ascending cost in a level)
paa.img{i}.gt{g}.topk_cost      their costs
paa.img{i}.gt{g}.topk_per_level (5,) counts
paa.img{i}.gt{g}.gmm_fitted     scalar 1 if the GMM ran (>= 2 candidates)
  only when gmm_fitted == 1:
paa.img{i}.gt{g}.gmm.x          (M,) sorted costs fed to GMM (float32, as
                                sklearn receives them)
paa.img{i}.gt{g}.gmm.x_inds     (M,) anchor index of each sorted cost
paa.img{i}.gt{g}.gmm.means_init (2,) float64 [min, max]
paa.img{i}.gt{g}.gmm.means      (2,) float64 fitted means_ (component 0, 1)
paa.img{i}.gt{g}.gmm.covariances (2,) float64 fitted covariances_ (diag)
paa.img{i}.gt{g}.gmm.weights    (2,) float64 fitted weights_
paa.img{i}.gt{g}.gmm.n_iter     scalar, gmm.converged scalar 0/1,
paa.img{i}.gt{g}.gmm.lower_bound scalar float64
paa.img{i}.gt{g}.gmm.predict    (M,) int64 component per sorted sample
paa.img{i}.gt{g}.gmm.score_samples (M,) float64 log-likelihood per sample
paa.img{i}.gt{g}.pos_inds       anchors made positive for this GT (may be
                                empty)
paa.img{i}.labels               (A,) after paa_reassign; K = background
paa.img{i}.label_weights        (A,) after paa_reassign
paa.img{i}.bbox_targets         (A,4) GT box of every *initial* candidate,
                                zeros elsewhere (not cleared by reassign)
paa.img{i}.bbox_weights         (A,4) after paa_reassign
paa.img{i}.pos_inds             (num_pos_i,) positives after reassign
paa.img{i}.num_pos              scalar
paa.num_pos                     scalar, summed over images
paa.pos_inds_flatten            indices into the 2*A flattened anchors
paa.pos_decoded                 (num_pos,4) decoded student boxes of positives
paa.iou_target                  (num_pos,) IoU(pos_decoded, GT) (aligned)
paa.loss_cls, paa.loss_bbox, paa.loss_iou    scalars (PAA.loss)

--- LAD (teacher assigns, student learns): prefix "lad." ---
lad.img{i}.* and lad.img{i}.gt{g}.*   same fields as paa.img{i}.* but
                                computed from the TEACHER's cls/bbox outputs
lad.labels, lad.label_weights (2A,), lad.bbox_targets (2A,4),
lad.pos_inds_flatten, lad.num_pos      LADHead.get_label_assignment output
lad.pos_decoded, lad.iou_target        student boxes at teacher positives
lad.loss_cls, lad.loss_bbox, lad.loss_iou   student losses (LAD.loss)
lad.paa_weighted_loss_bbox      what PAAHead's IoU-weighted GIoU would give on
                                the same assignment (for contrast only)

--- inference on the student (PAA.predict, rescale=True, scale_factor 1):
det.img{i}.mlvl_bboxes          (A,4) decoded boxes clipped to img_shape
det.img{i}.mlvl_nms_scores      (A,K) sqrt(sigmoid(cls) * sigmoid(iou))
det.vote.img{i}.{bboxes,scores,labels}    final output, score voting on
det.novote.img{i}.{bboxes,scores,labels}  final output, score voting off
"""

# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def randomize_(model, seed, images):
    """Deterministic, non-trivial weights for a PAA-architecture model
    (``model`` has .backbone, .neck, .bbox_head)."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g)

    def rand(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                gain = 1.0
                if name.startswith('backbone') or '_convs.' in name:
                    gain = 2.0**0.5
                if name.endswith('atss_cls'):
                    gain = 1.5
                m.weight.copy_(randn(m.weight.shape) * gain / fan_in**0.5)
                if m.bias is not None:
                    if name.endswith('atss_cls'):
                        m.bias.copy_(CLS_BIAS +
                                     CLS_BIAS_SPREAD * randn(m.bias.shape))
                    else:
                        m.bias.copy_(0.1 * randn(m.bias.shape))
            elif isinstance(m, nn.GroupNorm):
                m.weight.copy_(rand(m.weight.shape, 0.6, 1.4))
                m.bias.copy_(0.2 * randn(m.bias.shape))
        for scale in model.bbox_head.scales:
            scale.scale.copy_(rand(scale.scale.shape, 0.7, 1.3))

        # BN: running stats := batch stats of the fixture images (one pass in
        # train mode with momentum 1), then perturbed; affine randomised.
        bns = [m for m in model.backbone.modules()
               if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = 1.0
            bn.train()
        model.backbone(images)
        for bn in bns:
            bn.momentum = 0.1
            bn.eval()
            std = bn.running_var.sqrt()
            bn.running_mean.add_(0.2 * std * randn(bn.running_mean.shape))
            bn.running_var.mul_(rand(bn.running_var.shape, 0.6, 1.5))
            bn.weight.copy_(rand(bn.weight.shape, 0.6, 1.4))
            bn.bias.copy_(0.2 * randn(bn.bias.shape))
            bn.num_batches_tracked.zero_()


def export_state_dict(model):
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith('num_batches_tracked'):
            continue
        out[k] = v.detach().to(torch.float32).contiguous().clone()
    return out


def make_images():
    g = torch.Generator().manual_seed(SEEDS['images'])
    imgs = torch.randn((2, 3) + BATCH_SHAPE, generator=g)
    # a little low-frequency structure so that features are not pure noise
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, BATCH_SHAPE[0]),
        torch.linspace(-1, 1, BATCH_SHAPE[1]),
        indexing='ij')
    imgs = 0.6 * imgs + torch.stack([xx, yy, xx * yy])[None]
    for i, (h, w) in enumerate(IMG_SHAPES):
        mask = torch.zeros(BATCH_SHAPE)
        mask[:h, :w] = 1
        imgs[i] *= mask  # DetDataPreprocessor pads with 0 after normalising
    return imgs.contiguous()


def make_data_samples():
    samples = []
    for i, (h, w) in enumerate(IMG_SHAPES):
        ds = DetDataSample()
        ds.set_metainfo(
            dict(
                img_shape=(h, w),
                ori_shape=(h, w),
                # DetDataPreprocessor: pad_shape = own size rounded up to
                # pad_size_divisor 32 -> 96 x 128 for both images here.
                pad_shape=(int(np.ceil(h / 32) * 32),
                           int(np.ceil(w / 32) * 32)),
                batch_input_shape=BATCH_SHAPE,
                scale_factor=(1.0, 1.0)))
        gi = InstanceData()
        gi.bboxes = torch.tensor(GT[i]['bboxes'], dtype=torch.float32)
        gi.labels = torch.tensor(GT[i]['labels'], dtype=torch.long)
        ds.gt_instances = gi
        samples.append(ds)
    return samples


class Recorder:
    """Wraps bound methods of a head to log their inputs/outputs."""

    def __init__(self):
        self.log = {}

    def wrap(self, obj, name):
        orig = getattr(obj, name)
        self.log[name] = []

        def wrapped(*args, **kwargs):
            out = orig(*args, **kwargs)
            self.log[name].append((args, kwargs, out))
            return out

        setattr(obj, name, wrapped)

    def reset(self):
        for k in self.log:
            self.log[k] = []


GMM_LOG = []


class RecordingGaussianMixture(sklearn.mixture.GaussianMixture):
    """sklearn's GaussianMixture, unchanged, plus a record of each call."""

    def fit(self, X, y=None):
        super().fit(X, y)
        GMM_LOG.append(
            dict(
                X=np.array(X, copy=True),
                means_init=np.array(self.means_init, copy=True),
                weights_init=np.array(self.weights_init, copy=True),
                precisions_init=np.array(self.precisions_init, copy=True),
                covariance_type=self.covariance_type,
                means=self.means_.copy(),
                covariances=self.covariances_.copy(),
                weights=self.weights_.copy(),
                n_iter=int(self.n_iter_),
                converged=bool(self.converged_),
                lower_bound=float(self.lower_bound_)))
        return self

    def predict(self, X):
        out = super().predict(X)
        GMM_LOG[-1]['predict'] = np.array(out, copy=True)
        return out

    def score_samples(self, X):
        out = super().score_samples(X)
        GMM_LOG[-1]['score_samples'] = np.array(out, copy=True)
        return out


def t(x, dtype=None):
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.tensor(x)
    x = x.detach().cpu()
    if dtype is not None:
        x = x.to(dtype)
    elif x.dtype in (torch.int32, torch.int16, torch.uint8, torch.bool):
        x = x.to(torch.int64)
    return x.contiguous().clone()


def record_assignment(prefix, head, rec, anchors_flat, num_per_level,
                      batch_gt, out):
    """Store everything one PAA assignment run (PAAHead.loss_by_feat or
    LADHead.get_label_assignment) did, image by image."""
    (labels, label_weights, bbox_targets, bbox_weights, pos_inds,
     gt_inds) = rec.log['get_targets'][-1][2]
    pos_loss_calls = rec.log['get_pos_loss']
    reassign_calls = rec.log['paa_reassign']
    assert len(pos_loss_calls) == len(reassign_calls) == len(batch_gt)
    offsets = np.cumsum([0] + list(num_per_level))
    gmm_iter = iter(GMM_LOG)
    num_pos_total = 0
    for i, gt in enumerate(batch_gt):
        p = f'{prefix}.img{i}'
        out[f'{p}.gt_bboxes'] = t(gt.bboxes)
        out[f'{p}.gt_labels'] = t(gt.labels)
        # MaxIoUAssigner, called directly on the (all valid) anchors.
        assign = head.assigner.assign(
            InstanceData(priors=anchors_flat), gt)
        ious = bbox_overlaps(gt.bboxes, anchors_flat)
        out[f'{p}.maxiou.iou'] = t(ious)
        out[f'{p}.maxiou.assigned'] = t(assign.gt_inds)
        out[f'{p}.maxiou.max_overlaps'] = t(assign.max_overlaps)
        cand = torch.nonzero(assign.gt_inds > 0).flatten()
        assert torch.equal(cand, pos_inds[i])
        assert torch.equal(assign.gt_inds[cand] - 1, gt_inds[i])
        out[f'{p}.cand.inds'] = t(cand)
        out[f'{p}.cand.gt'] = t(gt_inds[i])

        # per-candidate cost, and its two parts via the head's own modules
        args = pos_loss_calls[i][0]
        (anchors_l, cls_score, bbox_pred, label, label_weight, bbox_target,
         bbox_weight, pinds) = args
        cost = pos_loss_calls[i][2][0].detach()
        dec = head.bbox_coder.decode(anchors_flat[pinds], bbox_pred[pinds])
        c_cls = head.loss_cls(
            cls_score[pinds], label[pinds], label_weight[pinds],
            avg_factor=1.0, reduction_override='none').sum(-1)
        c_box = head.loss_bbox(
            dec, bbox_target[pinds], bbox_weight[pinds], avg_factor=1.0,
            reduction_override='none')
        assert torch.allclose(c_cls + c_box, cost, rtol=0, atol=1e-6)
        out[f'{p}.cand.cost'] = t(cost)
        out[f'{p}.cand.cost_cls'] = t(c_cls)
        out[f'{p}.cand.cost_bbox'] = t(c_box)
        out[f'{p}.cand.decoded'] = t(dec)

        # per GT: per-level top-k (as paa_reassign does it) + the GMM call
        new_label, new_lw, new_bw, num_pos = reassign_calls[i][2]
        for g in range(len(gt.bboxes)):
            q = f'{p}.gt{g}'
            sel_inds, sel_cost, per_level = [], [], []
            for lvl in range(len(num_per_level)):
                m = ((cand >= offsets[lvl]) & (cand < offsets[lvl + 1]) &
                     (gt_inds[i] == g))
                k = min(int(m.sum()), head.topk)
                v, ti = cost[m].topk(k, largest=False)
                sel_inds.append(cand[m][ti])
                sel_cost.append(v)
                per_level.append(k)
            sel_inds = torch.cat(sel_inds)
            sel_cost = torch.cat(sel_cost)
            out[f'{q}.topk_inds'] = t(sel_inds)
            out[f'{q}.topk_cost'] = t(sel_cost)
            out[f'{q}.topk_per_level'] = t(per_level, torch.int64)
            gt_is_used = bool((gt_inds[i] == g).any())
            fitted = len(sel_inds) >= 2
            out[f'{q}.gmm_fitted'] = t(int(fitted), torch.int64)
            if not fitted:
                out[f'{q}.pos_inds'] = torch.zeros(0, dtype=torch.int64)
                continue
            assert gt_is_used
            rec_gmm = next(gmm_iter)
            sorted_cost, order = sel_cost.sort()
            assert np.array_equal(rec_gmm['X'].reshape(-1),
                                  sorted_cost.numpy())
            out[f'{q}.gmm.x'] = t(rec_gmm['X'].reshape(-1))
            out[f'{q}.gmm.x_inds'] = t(sel_inds[order])
            out[f'{q}.gmm.x_dtype_is_float32'] = t(
                int(rec_gmm['X'].dtype == np.float32), torch.int64)
            out[f'{q}.gmm.means_init'] = t(
                rec_gmm['means_init'].reshape(-1).astype(np.float64))
            out[f'{q}.gmm.means'] = t(rec_gmm['means'].reshape(-1))
            out[f'{q}.gmm.covariances'] = t(
                rec_gmm['covariances'].reshape(-1))
            out[f'{q}.gmm.weights'] = t(rec_gmm['weights'].reshape(-1))
            out[f'{q}.gmm.n_iter'] = t(rec_gmm['n_iter'], torch.int64)
            out[f'{q}.gmm.converged'] = t(int(rec_gmm['converged']),
                                          torch.int64)
            out[f'{q}.gmm.lower_bound'] = t(rec_gmm['lower_bound'],
                                            torch.float64)
            out[f'{q}.gmm.predict'] = t(rec_gmm['predict'], torch.int64)
            out[f'{q}.gmm.score_samples'] = t(rec_gmm['score_samples'])
            # separation scheme (c): fg = component 0; keep fg samples in
            # ascending-cost order up to the fg sample with max score_samples
            fg = torch.from_numpy(rec_gmm['predict'] == 0)
            xs = sel_inds[order]
            if fg.any():
                best = int(torch.from_numpy(
                    rec_gmm['score_samples'])[fg].argmax())
                pos = xs[fg][:best + 1]
            else:
                pos = xs[:0]
            out[f'{q}.pos_inds'] = t(pos)
            assert bool((new_label[pos] < NUM_CLASSES).all())

        out[f'{p}.labels'] = t(new_label)
        out[f'{p}.label_weights'] = t(new_lw)
        out[f'{p}.bbox_targets'] = t(bbox_targets[i])
        out[f'{p}.bbox_weights'] = t(new_bw)
        pos_i = torch.nonzero(new_label < NUM_CLASSES).flatten()
        out[f'{p}.pos_inds'] = t(pos_i)
        out[f'{p}.num_pos'] = t(int(num_pos), torch.int64)
        assert len(pos_i) == num_pos
        per_gt = [out[f'{p}.gt{g}.pos_inds'] for g in range(len(gt.bboxes))]
        assert torch.equal(torch.cat(per_gt).sort()[0], pos_i)
        num_pos_total += int(num_pos)
    assert next(gmm_iter, None) is None, 'unconsumed GMM calls'
    return num_pos_total


def level_dict(prefix, tensors, out):
    for lvl, x in enumerate(tensors):
        out[f'{prefix}.p{lvl + 3}'] = t(x)


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(repo, 'tests', 'fixtures',
                                                  'paa'))
    ap.add_argument('--base-channels', type=int,
                    default=ARCH['base_channels'])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    register_all_modules()
    paa_head_module.skm = types.SimpleNamespace(
        GaussianMixture=RecordingGaussianMixture)

    arch = dict(ARCH, base_channels=args.base_channels)
    paa_cfg, lad_cfg = make_config(arch)
    images = make_images()
    samples = make_data_samples()
    batch_gt = [s.gt_instances for s in samples]
    metas = [s.metainfo for s in samples]
    out = {'inputs.images': images.clone()}

    student = MODELS.build(ConfigDict(copy.deepcopy(paa_cfg)))
    teacher = MODELS.build(ConfigDict(copy.deepcopy(paa_cfg)))
    randomize_(student, SEEDS['student'], images)
    randomize_(teacher, SEEDS['teacher'], images)
    student_sd = export_state_dict(student)
    teacher_sd = export_state_dict(teacher)

    # ---------------- forward ----------------
    student.eval()
    teacher.eval()
    with torch.no_grad():
        feats_c = student.backbone(images)
        feats_p = student.neck(feats_c)
        cls_s, box_s, iou_s = student.bbox_head(feats_p)
        cls_t, box_t, iou_t = teacher.bbox_head(teacher.extract_feat(images))
    for lvl, c in enumerate(feats_c):
        out[f'backbone.c{lvl + 3}'] = t(c)
    level_dict('neck', feats_p, out)
    level_dict('head.cls_score', cls_s, out)
    level_dict('head.bbox_pred', box_s, out)
    level_dict('head.iou_pred', iou_s, out)
    level_dict('teacher.head.cls_score', cls_t, out)
    level_dict('teacher.head.bbox_pred', box_t, out)
    level_dict('teacher.head.iou_pred', iou_t, out)

    head = student.bbox_head
    featmap_sizes = [c.shape[-2:] for c in cls_s]
    anchor_list, valid_list = head.get_anchors(featmap_sizes, metas,
                                               device='cpu')
    anchors_flat = torch.cat(anchor_list[0])
    num_per_level = [a.shape[0] for a in anchor_list[0]]
    out['anchors'] = t(anchors_flat)
    out['anchors.num_per_level'] = t(num_per_level, torch.int64)
    out['valid_flags'] = torch.stack(
        [t(torch.cat(v), torch.int64) for v in valid_list])

    # ---------------- PAA: student with its own assignment ----------------
    rec = Recorder()
    for name in ('get_targets', 'get_pos_loss', 'paa_reassign'):
        rec.wrap(head, name)
    student.train()  # norm_eval keeps BN in eval mode; GN is batch-free
    GMM_LOG.clear()
    losses = student.loss(images, samples)
    cls_chk, box_chk, iou_chk = student.bbox_head(
        student.extract_feat(images))
    for a, b in zip(cls_chk + box_chk + iou_chk, cls_s + box_s + iou_s):
        assert torch.equal(a.detach(), b), 'train/eval forward differ'
    num_pos = record_assignment('paa', head, rec, anchors_flat,
                                num_per_level, batch_gt, out)
    out['paa.num_pos'] = t(num_pos, torch.int64)
    for k in ('loss_cls', 'loss_bbox', 'loss_iou'):
        out[f'paa.{k}'] = t(losses[k], torch.float32).reshape(())
    labels_flat = torch.cat([out[f'paa.img{i}.labels'] for i in range(2)])
    pos_flat = torch.nonzero(labels_flat < NUM_CLASSES).flatten()
    out['paa.pos_inds_flatten'] = t(pos_flat)
    deltas_flat = torch.cat([
        torch.cat([b[i].permute(1, 2, 0).reshape(-1, 4) for b in box_s])
        for i in range(2)
    ])
    anchors_2 = torch.cat([anchors_flat, anchors_flat])
    tgt_flat = torch.cat([out[f'paa.img{i}.bbox_targets'] for i in range(2)])
    pos_dec = head.bbox_coder.decode(anchors_2[pos_flat],
                                     deltas_flat[pos_flat])
    out['paa.pos_decoded'] = t(pos_dec)
    out['paa.iou_target'] = t(
        bbox_overlaps(pos_dec, tgt_flat[pos_flat], is_aligned=True))

    # ---------------- LAD ----------------
    lad = MODELS.build(ConfigDict(copy.deepcopy(lad_cfg)))
    # mmdet's KD detectors keep teacher_model as a plain attribute (not a
    # registered sub-module): LAD.state_dict() holds only the student, and the
    # teacher is loaded from a PAA checkpoint (names backbone./neck./bbox_head.)
    # through teacher_ckpt -> load_checkpoint(self.teacher_model, ...).
    res = lad.load_state_dict(student_sd, strict=False)
    assert not res.unexpected_keys and all(
        k.endswith('num_batches_tracked') for k in res.missing_keys), res
    res = lad.teacher_model.load_state_dict(teacher_sd, strict=False)
    assert not res.unexpected_keys and all(
        k.endswith('num_batches_tracked') for k in res.missing_keys), res
    lad.train()
    lad.teacher_model.eval()  # LAD keeps its teacher in eval mode
    t_head = lad.teacher_model.bbox_head
    rec_t = Recorder()
    for name in ('get_targets', 'get_pos_loss', 'paa_reassign',
                 'get_label_assignment'):
        rec_t.wrap(t_head, name)
    GMM_LOG.clear()
    lad_losses = lad.loss(images, samples)
    # the costs the teacher head used come from the teacher's own outputs
    for i in range(2):
        flat_t = torch.cat(
            [c[i].permute(1, 2, 0).reshape(-1, NUM_CLASSES) for c in cls_t])
        assert torch.equal(rec_t.log['get_pos_loss'][i][0][1], flat_t)
    lad_num_pos = record_assignment('lad', t_head, rec_t, anchors_flat,
                                    num_per_level, batch_gt, out)
    (l_labels, l_lw, l_tgt, _l_bw, l_pos, l_pos_anchors,
     l_num_pos) = rec_t.log['get_label_assignment'][-1][2]
    assert l_num_pos == lad_num_pos
    out['lad.labels'] = t(l_labels)
    out['lad.label_weights'] = t(l_lw)
    out['lad.bbox_targets'] = t(l_tgt)
    out['lad.pos_inds_flatten'] = t(l_pos)
    out['lad.num_pos'] = t(int(l_num_pos), torch.int64)
    for k in ('loss_cls', 'loss_bbox', 'loss_iou'):
        out[f'lad.{k}'] = t(lad_losses[k], torch.float32).reshape(())
    l_dec = head.bbox_coder.decode(anchors_2[l_pos], deltas_flat[l_pos])
    l_iou = bbox_overlaps(l_dec, l_tgt[l_pos], is_aligned=True)
    out['lad.pos_decoded'] = t(l_dec)
    out['lad.iou_target'] = t(l_iou)
    out['lad.paa_weighted_loss_bbox'] = t(
        head.loss_bbox(l_dec, l_tgt[l_pos], l_iou.clamp(min=1e-12),
                       avg_factor=l_iou.sum()), torch.float32).reshape(())

    # ---------------- inference ----------------
    student.eval()
    post = []
    orig_post = head._bbox_post_process

    def post_rec(results, cfg, rescale=False, with_nms=True, img_meta=None):
        post.append((results.bboxes.clone(), results.scores.clone(),
                     results.score_factors.clone()))
        return orig_post(results, cfg, rescale, with_nms, img_meta)

    head._bbox_post_process = post_rec
    dets = {}
    with torch.no_grad():
        for tag, voting in (('vote', True), ('novote', False)):
            head.with_score_voting = voting
            res = student.predict(images, copy.deepcopy(samples),
                                  rescale=True)
            for i, r in enumerate(res):
                p = r.pred_instances
                out[f'det.{tag}.img{i}.bboxes'] = t(p.bboxes)
                out[f'det.{tag}.img{i}.scores'] = t(p.scores)
                out[f'det.{tag}.img{i}.labels'] = t(p.labels, torch.int64)
                dets[f'{tag}{i}'] = len(p.bboxes)
    head.with_score_voting = True
    for i in range(2):
        b, s, f = post[i]
        out[f'det.img{i}.mlvl_bboxes'] = t(b)
        out[f'det.img{i}.mlvl_nms_scores'] = t((s * f[:, None]).sqrt())

    # ---------------- write ----------------
    versions = dict(
        python=sys.version.split()[0],
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        numpy=np.__version__,
        sklearn=sklearn.__version__,
        scipy=scipy.__version__,
        mmdet=mmdet.__version__,
        mmengine=mmengine.__version__,
        mmcv=mmcv.__version__ + ' (mmcv-lite; mmcv._ext shimmed, nms -> '
        'torchvision.ops.nms)',
        safetensors=safetensors.__version__)
    config = dict(
        description='kdet PAA / LAD reference fixture, produced by '
        'tools/make_paa_fixture.py with mmdetection itself',
        paa_model=paa_cfg,
        lad_model=lad_cfg,
        batch_input_shape=list(BATCH_SHAPE),
        images=[
            dict(img_shape=list(m['img_shape']),
                 pad_shape=list(m['pad_shape']),
                 scale_factor=list(m['scale_factor']),
                 gt_bboxes=GT[i]['bboxes'],
                 gt_labels=GT[i]['labels']) for i, m in enumerate(metas)
        ],
        input_normalisation='inputs are already normalised; zero padding',
        seeds=SEEDS,
        cls_bias_centre=CLS_BIAS,
        cls_bias_spread=CLS_BIAS_SPREAD,
        state_dict_notes='float32; mmdet names; num_batches_tracked dropped; '
        'teacher.safetensors uses the same names (mmdet LAD loads its '
        'teacher_model from a plain PAA checkpoint)',
        versions=versions)
    meta = {'config': json.dumps(config)}
    save_file(student_sd, os.path.join(args.out, 'weights.safetensors'),
              metadata=meta)
    save_file(teacher_sd, os.path.join(args.out, 'teacher.safetensors'),
              metadata=meta)
    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, os.path.join(args.out, 'expected.safetensors'),
              metadata=dict(meta, keys=EXPECTED_KEYS_DOC))
    with open(os.path.join(args.out, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
        f.write('\n')

    summary = dict(
        paa_num_pos=[int(out[f'paa.img{i}.num_pos']) for i in range(2)],
        paa_losses={k: float(out[f'paa.{k}'])
                    for k in ('loss_cls', 'loss_bbox', 'loss_iou')},
        lad_num_pos=[int(out[f'lad.img{i}.num_pos']) for i in range(2)],
        lad_losses={k: float(out[f'lad.{k}'])
                    for k in ('loss_cls', 'loss_bbox', 'loss_iou')},
        lad_paa_weighted_loss_bbox=float(out['lad.paa_weighted_loss_bbox']),
        detections=dets,
        candidates={f'{pre}.img{i}': int(len(out[f'{pre}.img{i}.cand.inds']))
                    for pre in ('paa', 'lad') for i in range(2)})
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
