#!/usr/bin/env python3
"""PyTorch CPU reference numbers for kdet's `kdet bench ops` benchmark.

Purpose
-------
`kdet bench ops` times a few core operations on candle (CPU, f32). This script
times the *same* operations with PyTorch under the same conditions, so the two
can be compared row by row:

  conv3x3_fwd      conv2d 3x3, 64->64 channels, stride 1, padding 1, with bias,
                   input 2x64x80x80, forward only (torch.no_grad).
  conv3x3_fwd_bwd  the same conv, forward + backward (gradients for input,
                   weight and bias; loss = output.sum()).
  resnet18_step    torchvision resnet18(num_classes=1000) in train mode
                   (BatchNorm batch statistics), input 2x3x224x224 random,
                   cross-entropy on random labels, SGD(lr=0.01, momentum=0.9,
                   weight_decay=1e-4); one full step = zero_grad, forward,
                   backward, optimizer.step().

Conditions: CPU only, float32, torch.set_num_threads(2), warm-up runs first,
then the median wall time over N timed runs (default N=20 for the conv rows,
N=10 for resnet18_step).

GFLOP/s: conv forward = 2*N*Cout*Hout*Wout*Cin*kh*kw flops (bias ignored);
forward+backward = 3x that. For resnet18_step it is an estimate: the conv and
linear layers' forward flops (counted with forward hooks, ~3.6 GFLOP per
224x224 image), times 3 for forward+backward; BatchNorm, ReLU, pooling and the
optimizer are not counted.

Command (venv lives outside the repo; it is not a project dependency)
---------------------------------------------------------------------
    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install torch torchvision
    /work/venv-torch/bin/python tools/bench_ops_torch.py [--json out.json]

Options: --conv-iters N (20), --resnet-iters N (10), --warmup N (3),
--threads N (2), --rows a,b,c (subset), --channels-last, --json PATH (writes
{row: median_ms}).

Layout: by default tensors are NCHW-contiguous, as candle's are, so the times
include oneDNN's reorders into and out of its blocked layout (about 2 ms of
the conv3x3_fwd row on the 2-core machine; the oneDNN conv kernel itself is
about 4.8 ms). --channels-last uses NHWC tensors and weights, which avoids
those reorders and is PyTorch's fastest CPU path (conv3x3_fwd about 4.1 ms).

Last run with torch 2.15.0+cu132 / torchvision 0.29.2+cu132 (PyPI wheel, used
on CPU only; oneDNN 3.13.3, MKL 2024.2), on the 2-core project machine
(AMD EPYC, AVX-512), idle, medians of 3 invocations' medians:

    row              NCHW (default)   --channels-last
    conv3x3_fwd         7.3 ms            4.2 ms
    conv3x3_fwd_bwd    18.4 ms           16.4 ms
    resnet18_step     144 ms            145 ms

Run it only on an idle machine: with a cargo build on the other core, OpenMP's
2 threads stall and the times grow 5-20x (conv3x3_fwd ~40 ms, resnet18_step
~3 s). The script warns when the 1-min load average is above 1.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROWS = ("conv3x3_fwd", "conv3x3_fwd_bwd", "resnet18_step")

# conv problem
N, CIN, COUT, H, W, K = 2, 64, 64, 80, 80, 3
CONV_FWD_FLOPS = 2 * N * COUT * H * W * CIN * K * K  # stride 1, pad 1: Hout=H, Wout=W


def time_median_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), max(times)


MEMORY_FORMAT = torch.contiguous_format  # set to channels_last by --channels-last


def bench_conv_fwd(warmup, iters):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, CIN, H, W, generator=g).to(memory_format=MEMORY_FORMAT)
    w = (torch.randn(COUT, CIN, K, K, generator=g) * 0.05).to(memory_format=MEMORY_FORMAT)
    b = torch.randn(COUT, generator=g)

    def step():
        with torch.no_grad():
            return F.conv2d(x, w, b, stride=1, padding=1)

    return time_median_ms(step, warmup, iters), CONV_FWD_FLOPS


def bench_conv_fwd_bwd(warmup, iters):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, CIN, H, W, generator=g).to(memory_format=MEMORY_FORMAT).requires_grad_(True)
    w = (torch.randn(COUT, CIN, K, K, generator=g) * 0.05).to(
        memory_format=MEMORY_FORMAT).requires_grad_(True)
    b = torch.randn(COUT, generator=g).requires_grad_(True)

    def step():
        x.grad = None
        w.grad = None
        b.grad = None
        y = F.conv2d(x, w, b, stride=1, padding=1)
        y.sum().backward()
        # touch the grads so nothing is lazily skipped
        return x.grad, w.grad, b.grad

    return time_median_ms(step, warmup, iters), 3 * CONV_FWD_FLOPS


def resnet18_fwd_flops(model, x):
    """Forward flops of conv and linear layers (2 * MACs), via hooks."""
    total = [0]

    def conv_hook(m, inp, out):
        cin_per_group = m.in_channels // m.groups
        kh, kw = m.kernel_size
        total[0] += 2 * out.numel() * cin_per_group * kh * kw

    def linear_hook(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(x)
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total[0]


def bench_resnet18_step(warmup, iters):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000)
    model = model.to(memory_format=MEMORY_FORMAT)
    model.train()
    x = torch.randn(2, 3, 224, 224).to(memory_format=MEMORY_FORMAT)
    labels = torch.randint(0, 1000, (2,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    flops = 3 * resnet18_fwd_flops(model, x)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        opt.step()
        return loss

    return time_median_ms(step, warmup, iters), flops


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conv-iters", type=int, default=20)
    ap.add_argument("--resnet-iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=",".join(ROWS),
                    help="comma-separated subset of: " + ", ".join(ROWS))
    ap.add_argument("--channels-last", action="store_true",
                    help="NHWC (channels_last) tensors and weights instead of the "
                         "default NCHW-contiguous layout that candle uses")
    ap.add_argument("--json", metavar="PATH", help="write {row: median_ms} here")
    args = ap.parse_args(argv)

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        if r not in ROWS:
            ap.error(f"unknown row {r!r}; known: {', '.join(ROWS)}")

    global MEMORY_FORMAT
    if args.channels_last:
        MEMORY_FORMAT = torch.channels_last
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)

    benches = {
        "conv3x3_fwd": (bench_conv_fwd, args.conv_iters),
        "conv3x3_fwd_bwd": (bench_conv_fwd_bwd, args.conv_iters),
        "resnet18_step": (bench_resnet18_step, args.resnet_iters),
    }

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"f32, CPU, warmup={args.warmup}, "
          f"layout={'channels_last' if args.channels_last else 'NCHW'}", file=sys.stderr)
    try:
        load1 = os.getloadavg()[0]
        if load1 > 1.0:
            print(f"warning: 1-min load average is {load1:.2f}; other processes "
                  "(e.g. cargo) competing for the cores can inflate these times "
                  "several-fold with OpenMP", file=sys.stderr)
    except OSError:
        pass
    results = {}
    lines = ["| row | median ms | min ms | max ms | runs | GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fn, iters = benches[r]
        (med, lo, hi), flops = fn(args.warmup, iters)
        results[r] = med
        gflops = flops / (med * 1e-3) / 1e9
        gf = f"{gflops:.1f}" + (" (est.)" if r == "resnet18_step" else "")
        lines.append(f"| {r} | {med:.2f} | {lo:.2f} | {hi:.2f} | {iters} | {gf} |")
        print(f"{r}: median {med:.2f} ms", file=sys.stderr)

    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
