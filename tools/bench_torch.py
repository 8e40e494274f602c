#!/usr/bin/env python3
"""PyTorch side of `kdet bench row NAME`: the same rows, architectures, image sizes, batches,
threads and dtype, in torchvision (and mmdetection for PAA), timed the same way (median of
--runs repetitions after --warmup), with the process's peak RSS. tools/bench.sh runs each row
of both sides in its own process and prints docs/benchmarks.md's table.

Rows (see `kdet bench list`):
  resnet18_step, resnet50_step   torchvision ResNet, BatchNorm train mode, 2x3x224x224,
                                 cross-entropy, SGD(lr 0.01, momentum 0.9, wd 1e-4)
  frcnn_step_synth_student       torchvision FasterRCNN with the synthetic student of
  frcnn_step_synth_teacher       configs/synth/frcnn_student.json / frcnn_r18_teacher.json
                                 (narrow ResNet-18 + FPN, BatchNorm trainable, the configs' RPN
                                 and RoI settings), 4 images 128x128, two boxes each; one step =
                                 forward with losses, backward, SGD step
  frcnn_step_r50_800             fasterrcnn_resnet50_fpn's architecture (FrozenBatchNorm,
                                 3 trainable stages, 91 classes), 2 images 800x1088
  distill_step_synth             Chen et al. 2017 with all terms of configs/synth/frcnn_distill.json
                                 written plainly on torchvision's modules: the student's RPN and
                                 RoI sampling, the teacher (eval, no_grad) on the same anchors and
                                 RoIs, hints p2-p5 through 1x1 adaptation convs, weighted soft CE
                                 (RPN sigmoid, RCN softmax), teacher-bounded L2 (RPN, RCN)
  distill_{pkd,cwd,mgd,fgd}_synth
                                 the feature terms of configs/synth/frcnn_{pkd,cwd,mgd,fgd}.json
                                 written plainly after MMRazor's PKDLoss / ChannelWiseDivergence
                                 and the official MGD / FGD FeatureLoss (docs/methods.md,
                                 "Feature distillation"): the student's own losses, the teacher's
                                 backbone + FPN (eval, no_grad), a 1x1 align conv 64->128 per level,
                                 MGD's generators, FGD's GcBlocks, all trained with the student
  cls_step_synth                 the classifier of configs/synth/cls_base.json (ResNet-18 x0.25,
                                 BatchNorm train mode, linear head, 32 classes), 64 images 32x32, CE
  dml_step_synth                 DML (configs/synth/cls_dml.json): two such classifiers, each CE +
                                 KL(other's softmax, detached || own), one SGD per network
  dcm_step_synth                 DCM (configs/synth/cls_dcm.json): two such classifiers, each with
                                 auxiliary classifiers after layer2 (fresh layer3 + layer4, pool,
                                 fc) and layer3 (fresh layer4, pool, fc); CE on all six, KL from
                                 every classifier of the other network (detached), summed
  simclr_pretrain_step_synth     SimCLR pretraining (configs/synth/cls_simclr_pretrain.json): the
                                 classifier + SimCLRv2's head (2 x [Linear, BN, ReLU], Linear to
                                 128 + BN without beta), NT-Xent at tau 0.5 over 128 views of 64
                                 images (the official add_contrastive_loss, in its 2N x 2N form)
  paa_step_synth_student         mmdetection's PAA with configs/synth/paa_student.json's settings
                                 (needs mmdetection; see tools/make_paa_fixture.py for the venv)
  infer_synth_student, infer_r50_800
                                 model.eval() on one image (128x128; 800x1067): backbone, RPN,
                                 RoI heads, postprocess; --save-weights writes the model's weights
                                 so `kdet bench row ... --weights` scores the same boxes

Inputs: both sides time the same work on the same tensors. Images are bench_pixels (an integer
hash that src/bench/inputs.rs computes identically), normalised and padded by the model's
GeneralizedRCNNTransform once, before timing (kdet's steps receive its loader's normalised,
padded tensors; the transform is not part of its step either). Medians: statistics.median (kdet
uses the same definition).
  roi_align_fwd, roi_align_fwd_bwd
                                 MultiScaleRoIAlign(7, 2) on R50-FPN maps of 2x800x1088, 2x512 RoIs
  nms_batched                    torchvision.ops.batched_nms, 4000 boxes, 80 classes, IoU 0.5
  anchors_decode                 AnchorGenerator (5 levels x 3 ratios) at 800x1088 + BoxCoder
                                 (1,1,1,1) decoding of every anchor

Conditions: CPU, float32, torch.set_num_threads(--threads, default 2), NCHW. With --device cuda
every tensor and module is made on the GPU (torch.set_default_device) and each repetition ends
with torch.cuda.synchronize(), as `kdet bench row NAME --device cuda` synchronises; the JSON then
adds the peak GPU memory allocated (peak_device_mb).
Command:  /work/venv-paa/bin/python tools/bench_torch.py --row NAME [--runs N] [--warmup N]
          [--threads 2] [--device cpu|cuda] [--json] [--save-weights FILE]
(the venv is outside the repository: python3 -m venv /work/venv-paa; pip install torch
torchvision safetensors; mmdet 3.3 + mmcv-lite + mmengine for the PAA row, with the shim of
tools/make_paa_fixture.py.)
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where tensors are made (--device); main sets it before any row is built.
DEVICE = torch.device("cpu")


def merged_config(rel):
    """A kdet config with its `base` chain merged (objects key by key, as kdet does)."""
    path = os.path.join(ROOT, rel)
    doc = json.load(open(path))
    base = doc.pop("base", None)
    if base is None:
        return doc
    merged = merged_config(os.path.relpath(os.path.join(os.path.dirname(path), base), ROOT))

    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v

    merge(merged, doc)
    return merged


class NarrowResNet(ResNet):
    """torchvision's ResNet with every channel count scaled by `width` (kdet's `width`)."""

    def __init__(self, block, layers, width, norm_layer):
        nn.Module.__init__(self)
        self._norm_layer = norm_layer
        self.inplanes = int(round(64 * width))
        self.dilation, self.groups, self.base_width = 1, 1, 64
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [int(round(c * width)) for c in (64, 128, 256, 512)]
        self.layer1 = self._make_layer(block, chans[0], layers[0])
        self.layer2 = self._make_layer(block, chans[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, chans[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, chans[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(chans[3] * block.expansion, 1000)
        self.chans = chans


def synth_frcnn(rel):
    """torchvision's FasterRCNN with the architecture and settings of a synthetic kdet config."""
    m = merged_config(rel)["model"]
    b, rpn, roi, inp = m["backbone"], m.get("rpn", {}), m.get("roi_heads", {}), m["input"]
    assert b["depth"] == 18 and b["norm"] == "bn"
    body = NarrowResNet(BasicBlock, [2, 2, 2, 2], b["width"], nn.BatchNorm2d)
    fpn = m["fpn"]["out_channels"]
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=body.chans,
        out_channels=fpn,
        extra_blocks=LastLevelMaxPool(),
    )
    sizes = rpn["anchor_sizes"]
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    rep = roi.get("representation_size", 1024)
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=inp["min_size"],
        max_size=inp["max_size"],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn.get("pre_nms_top_n_train", 2000),
        rpn_post_nms_top_n_train=rpn.get("post_nms_top_n_train", 2000),
        rpn_pre_nms_top_n_test=rpn.get("pre_nms_top_n_test", 1000),
        rpn_post_nms_top_n_test=rpn.get("post_nms_top_n_test", 1000),
        box_batch_size_per_image=roi.get("batch_size_per_image", 512),
        box_head=TwoMLPHead(fpn * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, 6),
    )


def r50_frcnn():
    """fasterrcnn_resnet50_fpn's architecture as kdet's default model: FrozenBatchNorm, 3
    trainable stages, 91 classes."""
    body = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)
    return FasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91)


def bench_pixels(count, seed):
    """`count` pixels in [0, 1) of stream `seed`: splitmix64's finaliser of idx * phi64 + seed
    (wrapping uint64), top 24 bits / 2^24 -- src/bench/inputs.rs's `pixel`, bit for bit."""
    with np.errstate(over="ignore"):
        z = np.arange(count, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return torch.from_numpy((z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)).to(DEVICE)


def bench_images(n, h, w, seed):
    """`n` images 3 x h x w in [0, 1), as kdet's rows make them (before normalisation)."""
    return list(bench_pixels(n * 3 * h * w, seed).reshape(n, 3, h, w).unbind(0))


def normalised(x):
    """ImageNet normalisation, as the configs' `model.input` and torchvision's transform."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def images_and_targets(n, h, w, seed=1):
    """`n` bench images with the two boxes per image kdet's rows use."""
    imgs = bench_images(n, h, w, seed)
    sx, sy = w / 128.0, h / 128.0
    targets = [
        {
            "boxes": torch.tensor(
                [[10 * sx, 12 * sy, 50 * sx, 60 * sy], [70 * sx, (20 + i) * sy, 110 * sx, 90 * sy]]
            ),
            "labels": torch.tensor([1, 2]),
        }
        for i in range(n)
    ]
    return imgs, targets


def prepared(model, imgs, targets=None):
    """The model's transform (normalise, resize, pad) run once, outside the timed step."""
    with torch.no_grad():
        return model.transform(imgs, targets)


def detector_losses(model, il, tg):
    """GeneralizedRCNN.forward's training path after its transform: features and losses."""
    feats = model.backbone(il.tensors)
    proposals, rpn_losses = model.rpn(il, feats, tg)
    _, roi_losses = model.roi_heads(feats, proposals, il.image_sizes, tg)
    return feats, {**rpn_losses, **roi_losses}


def sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)


def detector_step(model, imgs, targets):
    model.train()
    opt = sgd([p for p in model.parameters() if p.requires_grad])
    il, tg = prepared(model, imgs, targets)

    def step():
        opt.zero_grad(set_to_none=True)
        _, losses = detector_losses(model, il, tg)
        sum(losses.values()).backward()
        opt.step()

    return step


def weighted_soft_ce(s, t, temperature, w0):
    pt = F.softmax(t / temperature, 1)
    log_ps = F.log_softmax(s / temperature, 1)
    w = torch.ones(s.shape[1])
    w[0] = w0
    return -(pt * w * log_ps).sum(1).mean()


def weighted_soft_bce(s, t, temperature, w0):
    pt = torch.sigmoid(t / temperature)
    zs = s / temperature
    return -(pt * F.logsigmoid(zs) + w0 * (1 - pt) * F.logsigmoid(-zs)).mean()


def bounded_l2(s, t, y, margin, n):
    ds = ((s - y) ** 2).sum(1)
    dt = ((t - y) ** 2).sum(1)
    return torch.where(ds + margin > dt, ds, torch.zeros_like(ds)).sum() / n


def distill_step():
    """Chen et al. 2017 with every term of configs/synth/frcnn_distill.json, on torchvision."""
    student = synth_frcnn("configs/synth/frcnn_student.json").train()
    teacher = synth_frcnn("configs/synth/frcnn_r18_teacher.json").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    adapters = nn.ModuleList([nn.Conv2d(64, 128, 1) for _ in range(4)])
    opt = sgd([p for p in student.parameters() if p.requires_grad] + list(adapters.parameters()))
    imgs, targets = images_and_targets(4, 128, 128)
    il, tg = prepared(student, imgs, targets)
    mu, nu, gamma, w0 = 0.5, 0.5, 0.5, 1.5

    def step():
        opt.zero_grad(set_to_none=True)
        feats = student.backbone(il.tensors)
        fl = list(feats.values())
        rpn = student.rpn
        obj, deltas = rpn.head(fl)
        anchors = rpn.anchor_generator(il, fl)
        n_img = len(anchors)
        per_level = [o[0].numel() for o in obj]
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        obj_f, deltas_f = concat_box_prediction_layers(obj, deltas)
        proposals = rpn.box_coder.decode(deltas_f.detach(), anchors).view(n_img, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, obj_f, il.image_sizes, per_level)
        labels, matched = rpn.assign_targets_to_anchors(anchors, tg)
        reg_t = rpn.box_coder.encode(matched, anchors)
        pos, neg = rpn.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos, 0))[0]
        neg = torch.where(torch.cat(neg, 0))[0]
        sampled = torch.cat([pos, neg], 0)
        obj_f = obj_f.flatten()
        lab = torch.cat(labels, 0)
        reg_t = torch.cat(reg_t, 0)
        loss_rpn_box = F.smooth_l1_loss(deltas_f[pos], reg_t[pos], beta=1 / 9, reduction="sum") / sampled.numel()
        loss_obj = F.binary_cross_entropy_with_logits(obj_f[sampled], lab[sampled])
        rh = student.roi_heads
        props, _, rlabels, rreg = rh.select_training_samples(boxes, tg)
        bf = rh.box_head(rh.box_roi_pool(feats, props, il.image_sizes))
        cls, breg = rh.box_predictor(bf)
        loss_cls, loss_box = fastrcnn_loss(cls, breg, rlabels, rreg)
        with torch.no_grad():
            tfeats = teacher.backbone(il.tensors)
            tobj, tdeltas = teacher.rpn.head(list(tfeats.values()))
            tobj_f, tdeltas_f = concat_box_prediction_layers(tobj, tdeltas)
            trh = teacher.roi_heads
            tcls, tbreg = trh.box_predictor(trh.box_head(trh.box_roi_pool(tfeats, props, il.image_sizes)))
        terms = []
        for a, k in zip(adapters, ["0", "1", "2", "3"]):
            terms.append(gamma * F.mse_loss(a(feats[k]), tfeats[k]))
        terms.append((1 - mu) * weighted_soft_bce(obj_f[sampled], tobj_f.flatten()[sampled], 1.0, w0))
        terms.append((1 - mu) * weighted_soft_ce(cls, tcls, 1.0, w0))
        terms.append(nu * bounded_l2(deltas_f[pos], tdeltas_f[pos], reg_t[pos], 0.0, sampled.numel()))
        rl = torch.cat(rlabels, 0)
        rr = torch.cat(rreg, 0)
        p = torch.where(rl > 0)[0]
        sb = breg.reshape(breg.shape[0], -1, 4)[p, rl[p]]
        tb = tbreg.reshape(tbreg.shape[0], -1, 4)[p, rl[p]]
        terms.append(nu * bounded_l2(sb, tb, rr[p], 0.0, rl.numel()))
        total = mu * loss_obj + loss_rpn_box + mu * loss_cls + loss_box + sum(terms)
        total.backward()
        opt.step()

    return step


def paa_step():
    """mmdetection's PAA with configs/synth/paa_student.json's architecture and settings."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import make_paa_fixture as mpf  # installs the mmcv._ext shim, imports mmdet

    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.structures import InstanceData

    register_all_modules()
    m = merged_config("configs/synth/paa_student.json")["model"]
    cfg, _ = mpf.make_config(
        dict(
            base_channels=int(round(64 * m["backbone"]["width"])),
            fpn_channels=m["neck"]["out_channels"],
            feat_channels=m["head"]["channels"],
            stacked_convs=m["head"]["num_convs"],
            gn_groups=m["head"]["gn_groups"],
        )
    )
    cfg["bbox_head"]["num_classes"] = 5
    cfg["bbox_head"]["anchor_generator"]["octave_base_scale"] = m["anchors"]["octave_base_scale"]
    # kdet's synthetic student trains its BatchNorm ("norm": "bn").
    cfg["backbone"]["norm_eval"] = False
    model = MODELS.build(cfg).train()
    imgs, targets = images_and_targets(4, 128, 128)
    # mmdetection's data preprocessor (normalisation) runs outside model.loss, as kdet's loader.
    batch = normalised(torch.stack(imgs))
    samples = []
    for t in targets:
        s = DetDataSample(metainfo=dict(img_shape=(128, 128), pad_shape=(128, 128), scale_factor=(1.0, 1.0), batch_input_shape=(128, 128)))
        s.gt_instances = InstanceData(bboxes=t["boxes"], labels=t["labels"] - 1)
        samples.append(s)
    opt = sgd(model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        losses = model.loss(batch, samples)
        sum(v if torch.is_tensor(v) else sum(v) for k, v in losses.items() if "loss" in k).backward()
        opt.step()

    return step


# ---- Feature distillation (issue 21): each loss written plainly from its reference's formulas
# (docs/methods.md, "Feature distillation"), applied as kdet's configs apply them.

TAP_KEYS = {"fpn.p2": "0", "fpn.p3": "1", "fpn.p4": "2", "fpn.p5": "3", "fpn.p6": "pool"}


def pkd_loss(s, t):
    """MMRazor PKDLoss: per-channel standardisation over N, H, W (unbiased std, + 1e-6), MSE / 2."""

    def norm(f):
        n, c, h, w = f.shape
        f = f.permute(1, 0, 2, 3).reshape(c, -1)
        f = (f - f.mean(-1, keepdim=True)) / (f.std(-1, keepdim=True) + 1e-6)
        return f.reshape(c, n, h, w).permute(1, 0, 2, 3)

    return F.mse_loss(norm(s), norm(t)) / 2


def cwd_loss(s, t, tau):
    """Channel-wise distillation: KL of per-channel spatial softmaxes, summed, * tau^2 / (N*C)."""
    n, c, h, w = s.shape
    ls = F.log_softmax(s.reshape(-1, h * w) / tau, 1)
    lt = F.log_softmax(t.reshape(-1, h * w) / tau, 1)
    return (lt.exp() * (lt - ls)).sum() * tau**2 / (n * c)


def mgd_loss(s, t, generator, ratio):
    """MGD: positions dropped where rand(N,1,H,W) > 1 - ratio, the generator rebuilds the teacher
    map, sum of squares / N."""
    n, _, h, w = t.shape
    keep = (torch.rand(n, 1, h, w) <= 1 - ratio).to(s.dtype)
    return F.mse_loss(generator(s * keep), t, reduction="sum") / n


class GcBlock(nn.Module):
    """FGD's global context block: context softmax-pooled by a 1x1 conv, then 1x1 -> LayerNorm ->
    ReLU -> 1x1 added to the map (last conv zero-initialised)."""

    def __init__(self, c):
        super().__init__()
        self.mask = nn.Conv2d(c, 1, 1)
        nn.init.kaiming_normal_(self.mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.mask.bias)
        self.add = nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.LayerNorm([c // 2, 1, 1]), nn.ReLU(inplace=True), nn.Conv2d(c // 2, c, 1))
        nn.init.zeros_(self.add[3].weight)
        nn.init.zeros_(self.add[3].bias)

    def forward(self, x):
        n, c, h, w = x.shape
        weights = F.softmax(self.mask(x).view(n, h * w, 1), 1)
        context = torch.bmm(x.view(n, c, h * w), weights).view(n, c, 1, 1)
        return x + self.add(context)


def fgd_attention(x, temp):
    n, c, h, w = x.shape
    v = x.abs()
    spatial = h * w * F.softmax((v.mean(1) / temp).view(n, -1), 1).view(n, 1, h, w)
    channel = c * F.softmax(v.mean((2, 3)) / temp, 1).view(n, c, 1, 1)
    return spatial, channel


def fgd_masks(boxes, img_hw, hw):
    """Foreground (1/area of the box, max over boxes) and background (1/count) masks, N x 1 x H x W,
    rows = y (MMRazor's orientation)."""
    (ih, iw), (h, w) = img_hw, hw
    fg = torch.zeros(len(boxes), 1, h, w)
    for i, b in enumerate(boxes):
        sb = b.clone()
        sb[:, 0::2] *= w / iw
        sb[:, 1::2] *= h / ih
        x0, x1 = sb[:, 0].floor().int(), sb[:, 2].ceil().int()
        y0, y1 = sb[:, 1].floor().int(), sb[:, 3].ceil().int()
        area = 1.0 / ((y1 + 1 - y0) * (x1 + 1 - x0)).float()
        for j in range(len(b)):
            cell = fg[i, 0, y0[j] : y1[j] + 1, x0[j] : x1[j] + 1]
            fg[i, 0, y0[j] : y1[j] + 1, x0[j] : x1[j] + 1] = torch.maximum(cell, area[j])
    bg = (fg == 0).float()
    bg = bg / bg.sum((1, 2, 3), keepdim=True).clamp(min=1)
    return fg, bg


def fgd_loss(s, t, gc_s, gc_t, boxes, img_hw, term):
    n = s.shape[0]
    ss, cs = fgd_attention(s, term["temperature"])
    st, ct = fgd_attention(t, term["temperature"])
    fg, bg = fgd_masks(boxes, img_hw, s.shape[2:])
    weight = st * ct
    sq = (s - t) ** 2 * weight
    fg_loss = (sq * fg).sum() / n
    bg_loss = (sq * bg).sum() / n
    att = ((cs - ct).abs().sum() + (ss - st).abs().sum()) / n
    rela = ((gc_s(s) - gc_t(t)) ** 2).sum() / n
    return term["alpha"] * fg_loss + term["beta"] * bg_loss + term["gamma"] * att + term["lambda"] * rela


def feature_distill_step(kind):
    """The student's own losses plus the `distill` terms of configs/synth/frcnn_<kind>.json, the
    teacher's backbone + FPN in eval mode under no_grad."""
    terms = merged_config(f"configs/synth/frcnn_{kind}.json")["distill"]
    student = synth_frcnn("configs/synth/frcnn_student.json").train()
    teacher = synth_frcnn("configs/synth/frcnn_r18_teacher.json").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    cs, ct = student.backbone.out_channels, teacher.backbone.out_channels
    extra = nn.ModuleList()
    for _ in terms:
        m = nn.ModuleDict({"align": nn.Conv2d(cs, ct, 1)})
        if kind == "mgd":
            m["gen"] = nn.Sequential(nn.Conv2d(ct, ct, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(ct, ct, 3, padding=1))
        if kind == "fgd":
            m["gc_s"], m["gc_t"] = GcBlock(ct), GcBlock(ct)
        extra.append(m)
    opt = sgd([p for p in student.parameters() if p.requires_grad] + list(extra.parameters()))
    imgs, targets = images_and_targets(4, 128, 128)
    il, tg = prepared(student, imgs, targets)
    boxes = [t["boxes"] for t in tg]
    img_hw = tuple(il.tensors.shape[2:])

    def step():
        opt.zero_grad(set_to_none=True)
        feats, losses = detector_losses(student, il, tg)
        with torch.no_grad():
            tfeats = teacher.backbone(il.tensors)
        total = sum(losses.values())
        for term, m in zip(terms, extra):
            s = m["align"](feats[TAP_KEYS[term["student"]]])
            t = tfeats[TAP_KEYS[term["teacher"]]]
            if kind == "pkd":
                total = total + term["weight"] * pkd_loss(s, t)
            elif kind == "cwd":
                total = total + term["weight"] * cwd_loss(s, t, term["temperature"])
            elif kind == "mgd":
                total = total + term["alpha"] * mgd_loss(s, t, m["gen"], term["mask_ratio"])
            else:
                total = total + fgd_loss(s, t, m["gc_s"], m["gc_t"], boxes, img_hw, term)
        total.backward()
        opt.step()

    return step


# ---- Classifier rows (issues 22, 23): configs/synth/cls_base.json's classifier, 64 images of 32 px.


def classifier(classes=32):
    """ResNet-18 x0.25 (BatchNorm) with a linear head, as cls_base.json's model."""
    net = NarrowResNet(BasicBlock, [2, 2, 2, 2], 0.25, nn.BatchNorm2d)
    net.fc = nn.Linear(net.chans[3], classes)
    return net.train()


def class_inputs(n=64, classes=32):
    x = normalised(torch.stack(bench_images(n, 32, 32, 1)))
    return x, torch.arange(n) % classes


def kl_to(target, own):
    """KL(softmax(target) || softmax(own)), target detached: sum over classes, mean over rows."""
    lt = F.log_softmax(target.detach(), 1)
    return (lt.exp() * (lt - F.log_softmax(own, 1))).sum(1).mean()


def trunk(net, x):
    """The stages' outputs c2..c5 of a torchvision ResNet."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    c2 = net.layer1(x)
    c3 = net.layer2(c2)
    c4 = net.layer3(c3)
    return c2, c3, c4, net.layer4(c4)


def cls_step():
    net = classifier()
    opt = sgd(net.parameters())
    x, y = class_inputs()

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def dml_step():
    """Two networks, each CE + KL from the other's (detached) softmax, one SGD each."""
    nets = [classifier(), classifier()]
    opts = [sgd(n.parameters()) for n in nets]
    x, y = class_inputs()

    def step():
        for o in opts:
            o.zero_grad(set_to_none=True)
        a, b = (n(x) for n in nets)
        loss = F.cross_entropy(a, y) + kl_to(b, a) + F.cross_entropy(b, y) + kl_to(a, b)
        loss.backward()
        for o in opts:
            o.step()

    return step


class DcmNet(nn.Module):
    """A classifier with DCM's auxiliary classifiers after layer2 (fresh layer3 + layer4) and
    layer3 (fresh layer4), each with global pooling and a linear layer."""

    def __init__(self, classes=32):
        super().__init__()
        self.net = classifier(classes)
        fresh = [NarrowResNet(BasicBlock, [2, 2, 2, 2], 0.25, nn.BatchNorm2d) for _ in range(2)]
        self.aux3 = nn.Sequential(fresh[0].layer3, fresh[0].layer4)
        self.aux4 = fresh[1].layer4
        self.fc3 = nn.Linear(self.net.chans[3], classes)
        self.fc4 = nn.Linear(self.net.chans[3], classes)

    def forward(self, x):
        _, c3, c4, c5 = trunk(self.net, x)
        return [
            self.fc3(self.aux3(c3).mean((2, 3))),
            self.fc4(self.aux4(c4).mean((2, 3))),
            self.net.fc(c5.mean((2, 3))),
        ]


def dcm_step():
    """CE on each of the six classifiers; for each, KL from every classifier of the other
    network (detached), T = 1, weight 1."""
    nets = [DcmNet(), DcmNet()]
    opt = sgd(list(nets[0].parameters()) + list(nets[1].parameters()))
    x, y = class_inputs()

    def step():
        opt.zero_grad(set_to_none=True)
        outs = [n(x) for n in nets]
        loss = sum(F.cross_entropy(o, y) for os in outs for o in os)
        for k in range(2):
            loss = loss + sum(kl_to(t, o) for o in outs[k] for t in outs[1 - k])
        loss.backward()
        opt.step()

    return step


def nt_xent(z, tau):
    """SimCLR's NT-Xent over 2N views (first views, then second views): the official
    add_contrastive_loss in its 2N x 2N form, self-similarity lowered by 1e9, and its accuracy."""
    n2 = z.shape[0]
    zn = F.normalize(z, dim=1)
    logits = zn @ zn.t() / tau - torch.eye(n2) * 1e9
    pos = (torch.arange(n2) + n2 // 2) % n2
    acc = (logits.detach().argmax(1) == pos).float().mean()
    return F.cross_entropy(logits, pos), acc


def simclr_step():
    """The classifier, SimCLRv2's head (mlp_layers 2 of [Linear, BN, ReLU], then Linear to 128 and
    BatchNorm without beta, batch statistics), NT-Xent at tau 0.5 on 128 views."""
    cfg = merged_config("configs/synth/cls_simclr_pretrain.json")
    net = classifier()
    d = net.chans[3]
    mlp = nn.Sequential(*[m for _ in range(cfg["model"]["mlp_layers"]) for m in (nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU())])
    out = nn.Linear(d, cfg["method"]["out_dim"], bias=False)
    nn.init.normal_(out.weight, std=0.01)
    gamma = nn.Parameter(torch.ones(cfg["method"]["out_dim"]))
    opt = sgd(list(net.parameters()) + list(mlp.parameters()) + list(out.parameters()) + [gamma])
    x = normalised(torch.stack(bench_images(128, 32, 32, 1)))
    tau = cfg["method"]["temperature"]

    def step():
        opt.zero_grad(set_to_none=True)
        h = mlp(trunk(net, x)[3].mean((2, 3)))
        net.fc(h)  # kdet's classifier computes its logits in the same forward
        y = out(h)
        z = (y - y.mean(0)) / (y.var(0, unbiased=False) + 1e-5).sqrt() * gamma
        loss, _ = nt_xent(z, tau)
        loss.backward()
        opt.step()

    return step


CLASSIFIER_ROWS = {
    "cls_step_synth": cls_step,
    "dml_step_synth": dml_step,
    "dcm_step_synth": dcm_step,
    "simclr_pretrain_step_synth": simclr_step,
}


def build(row, save_weights):
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    if row in ("resnet18_step", "resnet50_step"):
        model = getattr(torchvision.models, row.split("_")[0])(num_classes=1000).train()
        x = normalised(torch.stack(bench_images(2, 224, 224, 5)))
        y = torch.tensor([3, 917])
        opt = sgd(model.parameters())

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return step
    if row in ("frcnn_step_synth_student", "frcnn_step_synth_teacher"):
        rel = "configs/synth/frcnn_student.json" if "student" in row else "configs/synth/frcnn_r18_teacher.json"
        imgs, targets = images_and_targets(4, 128, 128)
        return detector_step(synth_frcnn(rel), imgs, targets)
    if row.startswith("scale_s"):
        side, n = (int(x) for x in row[len("scale_s"):].split("_b"))
        model = synth_frcnn("configs/synth/frcnn_student.json")
        # No resizing: images enter at `side`, as kdet's rows give them.
        model.transform.min_size, model.transform.max_size = (side,), side
        imgs, targets = images_and_targets(n, side, side)
        return detector_step(model, imgs, targets)
    if row == "frcnn_step_r50_800":
        imgs, targets = images_and_targets(2, 800, 1088)
        return detector_step(r50_frcnn(), imgs, targets)
    if row == "distill_step_synth":
        return distill_step()
    if row in ("distill_pkd_synth", "distill_cwd_synth", "distill_mgd_synth", "distill_fgd_synth"):
        return feature_distill_step(row.split("_")[1])
    if row in ("cls_step_synth", "dml_step_synth", "dcm_step_synth", "simclr_pretrain_step_synth"):
        return CLASSIFIER_ROWS[row]()
    if row == "paa_step_synth_student":
        return paa_step()
    if row in ("infer_synth_student", "infer_r50_800"):
        if row == "infer_synth_student":
            model, (h, w) = synth_frcnn("configs/synth/frcnn_student.json"), (128, 128)
        else:
            model, (h, w) = r50_frcnn(), (800, 1067)
        model.eval()
        if save_weights:
            from safetensors.torch import save_file

            sd = {k: v.contiguous().cpu() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
            save_file(sd, save_weights)
        il, _ = prepared(model, bench_images(1, h, w, 2))

        def step():
            with torch.no_grad():
                feats = model.backbone(il.tensors)
                proposals, _ = model.rpn(il, feats)
                dets, _ = model.roi_heads(feats, proposals, il.image_sizes)
                model.transform.postprocess(dets, il.image_sizes, [(h, w)])

        return step
    if row in ("roi_align_fwd", "roi_align_fwd_bwd"):
        bwd = row.endswith("bwd")
        sizes = [(200, 272), (100, 136), (50, 68), (25, 34)]
        feats = {str(i): torch.randn(2, 256, h, w, generator=gen, requires_grad=bwd) for i, (h, w) in enumerate(sizes)}
        pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
        rois = []
        for _ in range(2):
            x = torch.rand(512, generator=gen) * 1088 * 0.8
            y = torch.rand(512, generator=gen) * 800 * 0.8
            bw = 8 + torch.rand(512, generator=gen) * (1088 * 0.4 - 8)
            bh = 8 + torch.rand(512, generator=gen) * (800 * 0.4 - 8)
            rois.append(torch.stack([x, y, (x + bw).clamp(max=1088), (y + bh).clamp(max=800)], 1))

        def step():
            out = pool(feats, rois, [(800, 1088)] * 2)
            if bwd:
                out.sum().backward()

        return step
    if row == "nms_batched":
        x = torch.rand(4000, generator=gen) * 1088 * 0.8
        y = torch.rand(4000, generator=gen) * 800 * 0.8
        boxes = torch.stack([x, y, x + 8 + torch.rand(4000, generator=gen) * 400, y + 8 + torch.rand(4000, generator=gen) * 300], 1)
        scores = torch.rand(4000, generator=gen)
        idxs = torch.randint(0, 80, (4000,), generator=gen)

        def step():
            torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)

        return step
    if row == "anchors_decode":
        from torchvision.models.detection._utils import BoxCoder
        from torchvision.models.detection.image_list import ImageList

        ag = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        sizes = [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]
        fmaps = [torch.empty(1, 1, h, w) for h, w in sizes]
        il = ImageList(torch.empty(1, 3, 800, 1088), [(800, 1088)])
        n = sum(h * w * 3 for h, w in sizes)
        deltas = torch.rand(n, 4, generator=gen) * 2 - 1
        coder = BoxCoder((1.0, 1.0, 1.0, 1.0))

        def step():
            a = ag(il, fmaps)
            coder.decode(deltas, a)

        return step
    raise SystemExit(f"unknown row {row}")


def row_images(row):
    """Images one step processes (kdet's RowResult.images; SimCLR: 64 images, 128 views)."""
    if row.startswith("scale_s"):
        return int(row.split("_b")[1])
    if row in CLASSIFIER_ROWS:
        return 64
    if row.startswith("infer_"):
        return 1
    if row in ("resnet18_step", "resnet50_step", "frcnn_step_r50_800"):
        return 2
    if row.startswith(("frcnn_step_synth", "distill_", "paa_step")):
        return 4
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--row", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save-weights")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    global DEVICE
    DEVICE = torch.device(a.device)
    cuda = DEVICE.type == "cuda"
    if cuda:
        torch.set_default_device(DEVICE)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    step = build(a.row, a.save_weights)
    for _ in range(a.warmup):
        step()
    sync()
    t = []
    for _ in range(a.runs):
        s = time.perf_counter()
        step()
        sync()
        t.append((time.perf_counter() - s) * 1e3)
    r = dict(
        name=a.row,
        median_ms=statistics.median(t),
        runs=a.runs,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        images=row_images(a.row),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        threads=torch.get_num_threads(),
        device=str(DEVICE),
    )
    if cuda:
        r["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
        r["gpu"] = torch.cuda.get_device_name(DEVICE)
    print(json.dumps(r) if a.json else f"{a.row}: median {r['median_ms']:.2f} ms, peak RSS {r['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
