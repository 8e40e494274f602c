#!/usr/bin/env python3
"""Fixtures for the pretrained hub teachers (tests/hub.rs), in tests/fixtures/hub/:

- timm_keys.json: the state_dict names and shapes of timm's `resnet18`, `resnet50` and
  `vit_small_patch14_dinov2` (the architectures behind the hub files `timm/resnet18.tv_in1k`,
  `timm/resnet50.a1_in1k` and `timm/vit_small_patch14_dinov2.lvd142m`), built with
  `pretrained=False` — nothing is downloaded. The tests check that candle-transformers asks for
  exactly these, and write full-size random ResNet files in this layout at test time
  (candle-transformers' ResNet has fixed widths: a ResNet-18 file is 45 MB, too big to commit).
- dinov2_tiny.safetensors: a random-weight DINOv2 in facebookresearch/dinov2's torch-hub layout
  (with its `mask_token`, without a `head`: a backbone checkpoint) at depth 1, width 8, 2 heads,
  and the real 37 × 37 + 1 position table (candle-transformers' DINOv2 is built for 518-px
  inputs). numpy + safetensors only.

    PYTHONPATH=<timm> /work/venv-paa/bin/python tools/make_hub_fixtures.py   # timm 1.0.31, torch 2.4.1
    python3 tools/make_hub_fixtures.py --tiny-only                          # numpy + safetensors
"""
import json
import pathlib
import sys

import numpy as np
from safetensors.numpy import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hub"


def tiny_dinov2(depth=1, dim=8, patch=14, img=518, seed=0):
    rng = np.random.default_rng(seed)
    n = (img // patch) ** 2 + 1
    t = {
        "cls_token": rng.normal(0, 0.02, (1, 1, dim)),
        "pos_embed": rng.normal(0, 0.02, (1, n, dim)),
        "mask_token": np.zeros((1, dim)),
        "patch_embed.proj.weight": rng.normal(0, 0.05, (dim, 3, patch, patch)),
        "patch_embed.proj.bias": np.zeros(dim),
        "norm.weight": np.ones(dim),
        "norm.bias": np.zeros(dim),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        t.update({
            b + "norm1.weight": np.ones(dim), b + "norm1.bias": np.zeros(dim),
            b + "attn.qkv.weight": rng.normal(0, 0.1, (3 * dim, dim)), b + "attn.qkv.bias": np.zeros(3 * dim),
            b + "attn.proj.weight": rng.normal(0, 0.1, (dim, dim)), b + "attn.proj.bias": np.zeros(dim),
            b + "ls1.gamma": np.full(dim, 0.1),
            b + "norm2.weight": np.ones(dim), b + "norm2.bias": np.zeros(dim),
            b + "mlp.fc1.weight": rng.normal(0, 0.1, (4 * dim, dim)), b + "mlp.fc1.bias": np.zeros(4 * dim),
            b + "mlp.fc2.weight": rng.normal(0, 0.1, (dim, 4 * dim)), b + "mlp.fc2.bias": np.zeros(dim),
            b + "ls2.gamma": np.full(dim, 0.1),
        })
    return {k: v.astype(np.float32) for k, v in t.items()}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tiny_dinov2(), str(OUT / "dinov2_tiny.safetensors"))
    if "--tiny-only" in sys.argv:
        return
    import timm  # noqa: E402
    keys = {}
    for name in ["resnet18", "resnet50", "vit_small_patch14_dinov2"]:
        m = timm.create_model(name, pretrained=False)
        keys[name] = {k: list(v.shape) for k, v in m.state_dict().items()}
    keys["_source"] = f"timm {timm.__version__}, timm.create_model(name, pretrained=False).state_dict()"
    (OUT / "timm_keys.json").write_text(json.dumps(keys, indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
