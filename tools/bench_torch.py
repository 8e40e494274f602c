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
  paa_step_synth_student         mmdetection's PAA with configs/synth/paa_student.json's settings
                                 (needs mmdetection; see tools/make_paa_fixture.py for the venv)
  infer_synth_student, infer_r50_800
                                 model.eval() on one image (128x128; 800x1067); --save-weights
                                 writes the model's weights so `kdet bench row ... --weights`
                                 scores the same boxes
  roi_align_fwd, roi_align_fwd_bwd
                                 MultiScaleRoIAlign(7, 2) on R50-FPN maps of 2x800x1088, 2x512 RoIs
  nms_batched                    torchvision.ops.batched_nms, 4000 boxes, 80 classes, IoU 0.5
  anchors_decode                 AnchorGenerator (5 levels x 3 ratios) at 800x1088 + BoxCoder
                                 (1,1,1,1) decoding of every anchor

Conditions: CPU, float32, torch.set_num_threads(--threads, default 2), NCHW.
Command:  /work/venv-paa/bin/python tools/bench_torch.py --row NAME [--runs N] [--warmup N]
          [--threads 2] [--json] [--save-weights FILE]
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


def images_and_targets(n, h, w, gen):
    """`n` random [0, 1] images with the two boxes per image kdet's rows use."""
    imgs = [torch.rand(3, h, w, generator=gen) for _ in range(n)]
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


def sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)


def detector_step(model, imgs, targets):
    model.train()
    opt = sgd([p for p in model.parameters() if p.requires_grad])

    def step():
        opt.zero_grad(set_to_none=True)
        losses = model(imgs, targets)
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
    gen = torch.Generator().manual_seed(1)
    student = synth_frcnn("configs/synth/frcnn_student.json").train()
    teacher = synth_frcnn("configs/synth/frcnn_r18_teacher.json").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    adapters = nn.ModuleList([nn.Conv2d(64, 128, 1) for _ in range(4)])
    opt = sgd([p for p in student.parameters() if p.requires_grad] + list(adapters.parameters()))
    imgs, targets = images_and_targets(4, 128, 128, gen)
    mu, nu, gamma, w0 = 0.5, 0.5, 0.5, 1.5

    def step():
        opt.zero_grad(set_to_none=True)
        il, tg = student.transform(imgs, targets)
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
    gen = torch.Generator().manual_seed(1)
    imgs, targets = images_and_targets(4, 128, 128, gen)
    batch = torch.stack(imgs)
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


def build(row, save_weights):
    gen = torch.Generator().manual_seed(1)
    if row in ("resnet18_step", "resnet50_step"):
        model = getattr(torchvision.models, row.split("_")[0])(num_classes=1000).train()
        x = torch.randn(2, 3, 224, 224, generator=gen)
        y = torch.tensor([3, 917])
        opt = sgd(model.parameters())

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return step
    if row in ("frcnn_step_synth_student", "frcnn_step_synth_teacher"):
        rel = "configs/synth/frcnn_student.json" if "student" in row else "configs/synth/frcnn_r18_teacher.json"
        imgs, targets = images_and_targets(4, 128, 128, gen)
        return detector_step(synth_frcnn(rel), imgs, targets)
    if row.startswith("scale_s"):
        side, n = (int(x) for x in row[len("scale_s"):].split("_b"))
        model = synth_frcnn("configs/synth/frcnn_student.json")
        # No resizing: images enter at `side`, as kdet's rows give them.
        model.transform.min_size, model.transform.max_size = (side,), side
        imgs, targets = images_and_targets(n, side, side, gen)
        return detector_step(model, imgs, targets)
    if row == "frcnn_step_r50_800":
        imgs, targets = images_and_targets(2, 800, 1088, gen)
        return detector_step(r50_frcnn(), imgs, targets)
    if row == "distill_step_synth":
        return distill_step()
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

            sd = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
            save_file(sd, save_weights)
        img = [torch.rand(3, h, w, generator=gen)]

        def step():
            with torch.no_grad():
                model(img)

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--row", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save-weights")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    step = build(a.row, a.save_weights)
    for _ in range(a.warmup):
        step()
    t = []
    for _ in range(a.runs):
        s = time.perf_counter()
        step()
        t.append((time.perf_counter() - s) * 1e3)
    r = dict(
        name=a.row,
        median_ms=statistics.median(t),
        runs=a.runs,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        threads=torch.get_num_threads(),
    )
    print(json.dumps(r) if a.json else f"{a.row}: median {r['median_ms']:.2f} ms, peak RSS {r['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
