#!/usr/bin/env python3
"""Write the tiny PyTorch checkpoints that test kdet's `.pth` reading (src/models/weights.rs).

Two files under tests/fixtures/pth/, each a few hundred bytes, made with `torch.save` (zip
format, the default since PyTorch 1.6):

  * tiny_state_dict.pth — a bare state_dict as `DataParallel` saves it (`module.` prefix):
      module.backbone.conv1.weight  float32 [2, 1, 1, 1] = [[[[1.]]], [[[2.]]]]
      module.backbone.bn1.bias      float32 [2]          = [0.5, -0.5]
      module.backbone.bn1.num_batches_tracked  int64 []  = 7
  * tiny_wrapped.pth — the same first two tensors, without `module.`, wrapped the way
    mmdetection saves checkpoints: {"meta": {...}, "state_dict": OrderedDict(...)}.

The values are fixed (no randomness), so rerunning the script reproduces the same tensors.

Command (from the repository root):
    /work/venv-torch/bin/python tools/make_pth_fixture.py
"""
from collections import OrderedDict
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pth"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    conv = torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)
    bias = torch.tensor([0.5, -0.5])
    sd = OrderedDict(
        [
            ("module.backbone.conv1.weight", conv),
            ("module.backbone.bn1.bias", bias),
            ("module.backbone.bn1.num_batches_tracked", torch.tensor(7, dtype=torch.int64)),
        ]
    )
    torch.save(sd, OUT / "tiny_state_dict.pth")
    wrapped = {
        "meta": {"epoch": 12, "note": "mmdetection-style checkpoint"},
        "state_dict": OrderedDict(
            [("backbone.conv1.weight", conv), ("backbone.bn1.bias", bias)]
        ),
    }
    torch.save(wrapped, OUT / "tiny_wrapped.pth")
    for f in sorted(OUT.glob("*.pth")):
        print(f"{f.relative_to(OUT.parent.parent.parent)}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
