#!/usr/bin/env python3
"""Round trip of `kdet export --format torchvision` into PyTorch.

Builds torchvision's ``FasterRCNN`` for the architecture in the export's sidecar JSON (ResNet
depth/width/norm, FPN, anchors, RPN and RoI-head settings, input transform), loads the exported
safetensors with ``load_state_dict(strict=True)`` — the point of the format — runs it in eval
mode on the given images and compares its detections with kdet's (``kdet infer`` JSON, run with
``--score-thr 0`` on the same images and weights): same labels, boxes within --box-tol pixels,
scores within --score-tol.

With ``--write-fixture DIR`` it also writes what the Rust test (tests/export.rs) needs to cover the
kdet side without Python: ``keys.txt`` (every state_dict key with dtype and shape, i.e. what a
strict load expects) and ``torchvision_detections.json``.

Usage (from the repository root, torch + torchvision + safetensors installed):

    target/release/kdet export --config configs/synth/frcnn_r18_teacher.json \
        --weights weights/synth_frcnn_r18w05_teacher.safetensors --out /tmp/tv/teacher.safetensors
    target/release/kdet infer --config configs/synth/frcnn_r18_teacher.json \
        --weights /tmp/tv/teacher.safetensors --score-thr 0 --out /tmp/tv/infer IMG0 IMG1
    python tools/export_roundtrip.py --export /tmp/tv/teacher.safetensors \
        --kdet /tmp/tv/infer/detections.json IMG0 IMG1 [--write-fixture tests/fixtures/export]
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

LAYERS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
          50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3])}


class WidthResNet(ResNet):
    """torchvision's ResNet with every channel count scaled by `width` (same module names)."""

    def __init__(self, block, layers, width, norm_layer):
        nn.Module.__init__(self)
        self._norm_layer = norm_layer
        self.inplanes = int(64 * width)
        self.dilation, self.groups, self.base_width = 1, 1, 64
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, int(64 * width), layers[0])
        self.layer2 = self._make_layer(block, int(128 * width), layers[1], stride=2)
        self.layer3 = self._make_layer(block, int(256 * width), layers[2], stride=2)
        self.layer4 = self._make_layer(block, int(512 * width), layers[3], stride=2)


def build(m, num_classes):
    bb = m["backbone"]
    block, layers = LAYERS[bb["depth"]]
    eps = bb.get("bn_eps", 1e-5)
    norm = {"bn": lambda c: nn.BatchNorm2d(c, eps=eps),
            "frozen_bn": lambda c: FrozenBatchNorm2d(c, eps=eps),
            "gn": lambda c: nn.GroupNorm(32, c)}[bb["norm"]]
    body = WidthResNet(block, layers, bb["width"], norm)
    chans = [int(c * bb["width"]) * block.expansion for c in (64, 128, 256, 512)]
    fpn_c = m["fpn"]["out_channels"]
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               chans, fpn_c, extra_blocks=LastLevelMaxPool())
    rpn, roi, inp = m["rpn"], m["roi_heads"], m["input"]
    anchors = AnchorGenerator(tuple((s,) for s in rpn["anchor_sizes"]),
                              (tuple(rpn["aspect_ratios"]),) * len(rpn["anchor_sizes"]))
    rep, pool = roi["representation_size"], roi["pool_size"]
    return FasterRCNN(
        backbone, num_classes=None,
        min_size=inp["min_size"], max_size=inp["max_size"],
        image_mean=inp["mean"], image_std=inp["std"],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_test=rpn["pre_nms_top_n_test"], rpn_post_nms_top_n_test=rpn["post_nms_top_n_test"],
        rpn_nms_thresh=rpn["nms_thresh"], rpn_score_thresh=rpn["score_thresh"],
        box_head=TwoMLPHead(fpn_c * pool * pool, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes),
        box_score_thresh=roi["score_thresh"], box_nms_thresh=roi["nms_thresh"],
        box_detections_per_img=roi["detections_per_img"],
        bbox_reg_weights=tuple(roi["bbox_reg_weights"]),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="kdet export output (.safetensors; sidecar .json beside it)")
    ap.add_argument("--kdet", required=True, help="kdet infer detections.json for the same images (--score-thr 0)")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--box-tol", type=float, default=1e-2)
    ap.add_argument("--score-tol", type=float, default=1e-4)
    ap.add_argument("--write-fixture", metavar="DIR")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    side = json.load(open(os.path.splitext(a.export)[0] + ".json"))
    if side["format"] != "torchvision" or side["backbone_only"]:
        sys.exit("need a full model exported with --format torchvision")
    model = build(side["model"], side["num_classes_with_background"]).eval()
    sd = load_file(a.export)
    model.load_state_dict(sd, strict=True)  # raises on any missing/unexpected key or shape
    print(f"load_state_dict(strict=True): {len(sd)} tensors OK")

    kdet = json.load(open(a.kdet))
    ids = side["category_ids"]
    worst_box, worst_score, n = 0.0, 0.0, 0
    tv_all = []
    for path in a.images:
        img = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
        out = model([img.permute(2, 0, 1)])[0]
        name = os.path.basename(path)
        tv = [{"file_name": name, "category_id": ids[int(l) - 1], "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
              for b, l, s in zip(out["boxes"], out["labels"], out["scores"])]
        kd = [r for r in kdet if os.path.basename(r["file_name"]) == name]
        tv.sort(key=lambda r: -r["score"])
        kd.sort(key=lambda r: -r["score"])
        if len(tv) != len(kd):
            sys.exit(f"{name}: torchvision {len(tv)} detections, kdet {len(kd)}")
        for t, k in zip(tv, kd):
            if t["category_id"] != k["category_id"]:
                sys.exit(f"{name}: label {t['category_id']} vs {k['category_id']}")
            worst_box = max(worst_box, max(abs(x - y) for x, y in zip(t["bbox"], k["bbox"])))
            worst_score = max(worst_score, abs(t["score"] - k["score"]))
        n += len(tv)
        tv_all += tv
    print(f"{n} detections on {len(a.images)} images: max |Δbox| {worst_box:.2e} px, max |Δscore| {worst_score:.2e}")
    ok = worst_box <= a.box_tol and worst_score <= a.score_tol
    if a.write_fixture:
        os.makedirs(a.write_fixture, exist_ok=True)
        with open(os.path.join(a.write_fixture, "keys.txt"), "w") as f:
            for k, v in model.state_dict().items():
                f.write(f"{k} {str(v.dtype).replace('torch.', '')} {list(v.shape)}\n")
        with open(os.path.join(a.write_fixture, "torchvision_detections.json"), "w") as f:
            json.dump(tv_all, f, indent=1)
        print(f"wrote {a.write_fixture}/keys.txt and torchvision_detections.json")
    sys.exit(0 if ok else f"outside tolerance (box {a.box_tol}, score {a.score_tol})")


if __name__ == "__main__":
    main()
