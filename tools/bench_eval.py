#!/usr/bin/env python3
"""Benchmark COCO bbox evaluation: pycocotools vs faster-coco-eval vs hotcoco vs kdet.

Purpose
-------
Generates ONE seeded synthetic COCO detection set (default 5,000 images,
80 categories, ~7 GT boxes per image, ~220,000 detections: jittered true
positives, duplicates / poor localisations and background false positives
with a detector-like score distribution) as gt.json / dt.json in a temporary
directory, then times, in the same run and on the same files, the end-to-end
evaluation (load GT + load results + evaluate + accumulate + summarize) of:

* pycocotools        (the reference)
* faster-coco-eval   (if installed)
* hotcoco            (Python bindings, if installed)
* kdet               (only with --kdet PATH: runs
                      `PATH eval --gt gt.json --dt dt.json --format json`
                      and reads "stats" from the JSON it prints)

Each Python evaluator runs in a fresh subprocess (so one tool's memory and
garbage do not slow the next); the time measured there starts after the
library import and covers load GT .. summarize().  The kdet time is the wall
time of the whole process (start-up included).  Reported seconds are the
median of --repeat runs (--pycocotools-repeat for pycocotools, default 1,
because it is slow).  The markdown table printed at the end has, per tool:
median seconds, speedup vs pycocotools (pycocotools_s / s), speedup vs
hotcoco (hotcoco_s / s; < 1 means slower than hotcoco), and whether its 12
stats are bit-identical to pycocotools' (with the max abs difference).

Command (from the repository root; the venv lives outside the repo):
    /work/venv-coco/bin/python tools/bench_eval.py [--kdet target/release/kdet]
        [--repeat 3] [--pycocotools-repeat 1] [--images 5000] [--seed 0]
        [--keep DIR] [--skip pycocotools,faster-coco-eval,...]

Set up the venv with:
    python3 -m venv /work/venv-coco
    /work/venv-coco/bin/pip install numpy==2.4.6 pycocotools==2.0.11 \\
        faster-coco-eval==1.8.0 hotcoco==1.3.0

Timings depend on the machine and on what else runs on it (the dev machines
have 2 cores; hotcoco and kdet use threads): compare only rows from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

PY_TOOLS = ["pycocotools", "faster-coco-eval", "hotcoco"]


# ---------------------------------------------------------------------------
# data generation
# ---------------------------------------------------------------------------


def generate(out_dir: str, n_images: int, n_cats: int, gt_per_image: float, fp_per_image: float, seed: int):
    rs = np.random.RandomState(seed)
    W = rs.choice([480, 512, 640], size=n_images).astype(np.float64)
    H = rs.choice([360, 427, 480, 640], size=n_images).astype(np.float64)
    img_ids = np.arange(1, n_images + 1) * 3 + 7  # non-contiguous ids
    images = [
        {"id": int(i), "file_name": f"{int(i):012d}.jpg", "width": int(w), "height": int(h)}
        for i, w, h in zip(img_ids, W, H)
    ]
    categories = [{"id": int(c), "name": f"class_{c}"} for c in range(1, n_cats + 1)]
    # COCO-like: category ids not contiguous in real COCO; keep 1..n but with a
    # skewed class frequency
    cat_p = rs.dirichlet(np.full(n_cats, 0.7))

    def boxes(n, w_img, h_img):
        s = np.exp(rs.uniform(np.log(6), np.log(0.9 * np.minimum(w_img, h_img)), size=n))
        a = np.exp(rs.uniform(np.log(0.4), np.log(2.5), size=n))
        w = np.minimum(s * np.sqrt(a), w_img - 1)
        h = np.minimum(s / np.sqrt(a), h_img - 1)
        x = rs.uniform(0, 1, size=n) * (w_img - w)
        y = rs.uniform(0, 1, size=n) * (h_img - h)
        return np.stack([x, y, w, h], 1)

    def jit(b, sigma):
        n = len(b)
        sig = np.asarray(sigma, dtype=np.float64).reshape(-1)
        if sig.size == 1:
            sig = np.full(n, sig[0])
        cx = b[:, 0] + b[:, 2] / 2 + rs.normal(0, 1, n) * sig * b[:, 2]
        cy = b[:, 1] + b[:, 3] / 2 + rs.normal(0, 1, n) * sig * b[:, 3]
        w = b[:, 2] * np.exp(rs.normal(0, 1, n) * sig)
        h = b[:, 3] * np.exp(rs.normal(0, 1, n) * sig)
        return np.stack([np.maximum(cx - w / 2, 0), np.maximum(cy - h / 2, 0), np.maximum(w, 1), np.maximum(h, 1)], 1)

    # ground truth
    n_gt = rs.poisson(gt_per_image, size=n_images)
    gt_img = np.repeat(np.arange(n_images), n_gt)
    G = len(gt_img)
    gt_box = boxes(G, W[gt_img], H[gt_img])
    gt_cat = rs.choice(np.arange(1, n_cats + 1), size=G, p=cat_p)
    gt_crowd = (rs.uniform(size=G) < 0.01).astype(int)

    # detections: true positives (jittered), duplicates / poor boxes, confusions, background
    hit = rs.uniform(size=G) < 0.88
    tp_idx = np.nonzero(hit)[0]
    tp_sigma = rs.choice([0.02, 0.04, 0.08, 0.15], size=len(tp_idx), p=[0.3, 0.35, 0.25, 0.1])
    tp_box = jit(gt_box[tp_idx], tp_sigma)
    tp_score = np.clip(rs.beta(4, 1.6, size=len(tp_idx)), 1e-4, 1)

    n_dup = rs.poisson(0.8, size=G)
    dup_idx = np.repeat(np.arange(G), n_dup)
    dup_box = jit(gt_box[dup_idx], 0.2)
    dup_score = np.clip(rs.beta(1.5, 3.5, size=len(dup_idx)), 1e-4, 1)

    conf_idx = np.nonzero(rs.uniform(size=G) < 0.12)[0]
    conf_box = jit(gt_box[conf_idx], 0.05)
    conf_cat = rs.choice(np.arange(1, n_cats + 1), size=len(conf_idx), p=cat_p)
    conf_score = np.clip(rs.beta(1.5, 4, size=len(conf_idx)), 1e-4, 1)

    n_fp = rs.poisson(fp_per_image, size=n_images)
    fp_img = np.repeat(np.arange(n_images), n_fp)
    fp_box = boxes(len(fp_img), W[fp_img], H[fp_img])
    fp_cat = rs.choice(np.arange(1, n_cats + 1), size=len(fp_img), p=cat_p)
    fp_score = np.clip(rs.beta(0.8, 8, size=len(fp_img)), 1e-4, 1)

    d_img = np.concatenate([gt_img[tp_idx], gt_img[dup_idx], gt_img[conf_idx], fp_img])
    d_box = np.concatenate([tp_box, dup_box, conf_box, fp_box])
    d_cat = np.concatenate([gt_cat[tp_idx], gt_cat[dup_idx], conf_cat, fp_cat])
    d_score = np.concatenate([tp_score, dup_score, conf_score, fp_score])
    # detector output order: grouped by image, highest score first
    order = np.lexsort((-d_score, d_img))
    d_img, d_box, d_cat, d_score = d_img[order], d_box[order], d_cat[order], d_score[order]

    gt_box = np.round(gt_box, 2)
    d_box = np.round(d_box, 2)
    d_score = np.round(d_score, 5)
    annotations = [
        {
            "id": k + 1,
            "image_id": int(img_ids[gt_img[k]]),
            "category_id": int(gt_cat[k]),
            "bbox": [float(v) for v in gt_box[k]],
            "area": float(round(gt_box[k, 2] * gt_box[k, 3], 2)),
            "iscrowd": int(gt_crowd[k]),
        }
        for k in range(G)
    ]
    dets = [
        {
            "image_id": int(img_ids[d_img[k]]),
            "category_id": int(d_cat[k]),
            "bbox": [float(v) for v in d_box[k]],
            "score": float(d_score[k]),
        }
        for k in range(len(d_img))
    ]
    gt_path = os.path.join(out_dir, "gt.json")
    dt_path = os.path.join(out_dir, "dt.json")
    with open(gt_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    with open(dt_path, "w") as f:
        json.dump(dets, f)
    return gt_path, dt_path, len(images), len(annotations), len(dets)


# ---------------------------------------------------------------------------
# workers (run in a fresh subprocess each)
# ---------------------------------------------------------------------------


def worker(tool: str, gt_path: str, dt_path: str) -> None:
    import contextlib
    import io

    if tool == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Eval
    elif tool == "faster-coco-eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Eval
    elif tool == "hotcoco":
        from hotcoco import COCO
        from hotcoco import COCOeval as Eval
    else:
        raise SystemExit(f"unknown tool {tool}")
    sink = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink):
        gt = COCO(gt_path)
        dt = gt.loadRes(dt_path)
        E = Eval(gt, dt, "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    t1 = time.perf_counter()
    print(json.dumps({"seconds": t1 - t0, "stats": [float(x) for x in list(E.stats)[:12]]}))


def run_py(tool: str, gt_path: str, dt_path: str, timeout: float):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", tool, gt_path, dt_path]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{tool} failed (rc {p.returncode}): {p.stderr.strip()[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return r["seconds"], r["stats"]


def parse_json_stats(text: str):
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
        dec = json.JSONDecoder()
        i = text.find("{")
        while i != -1:
            try:
                obj, _ = dec.raw_decode(text[i:])
                if isinstance(obj, dict) and "stats" in obj:
                    break
            except json.JSONDecodeError:
                pass
            obj = None
            i = text.find("{", i + 1)
    if not isinstance(obj, dict) or "stats" not in obj:
        raise RuntimeError("no JSON object with 'stats' in kdet output:\n" + text[-2000:])
    return [float(x) for x in obj["stats"]][:12]


def run_kdet(path: str, gt_path: str, dt_path: str, timeout: float):
    cmd = [path, "eval", "--gt", gt_path, "--dt", dt_path, "--format", "json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    t1 = time.perf_counter()
    if p.returncode != 0:
        raise RuntimeError(f"kdet failed (rc {p.returncode}): {p.stderr.strip()[-2000:]}")
    return t1 - t0, parse_json_stats(p.stdout)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {sys.version.split()[0]}", f"numpy {np.__version__}"]
    for pkg in ["pycocotools", "faster-coco-eval", "hotcoco"]:
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} (not installed)")
    return ", ".join(parts)


def installed(tool: str) -> bool:
    import importlib.util

    mod = {"pycocotools": "pycocotools", "faster-coco-eval": "faster_coco_eval", "hotcoco": "hotcoco"}[tool]
    return importlib.util.find_spec(mod) is not None


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0

    ap = argparse.ArgumentParser(description="Benchmark COCO bbox evaluators end to end.")
    ap.add_argument("--kdet", help="path to the kdet binary (runs `kdet eval --gt --dt --format json`)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool; the median is reported (default 3)")
    ap.add_argument("--pycocotools-repeat", type=int, default=1, help="runs for pycocotools (default 1)")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--categories", type=int, default=80)
    ap.add_argument("--gt-per-image", type=float, default=7.0)
    ap.add_argument("--fp-per-image", type=float, default=30.0, help="mean background FPs per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="write gt.json/dt.json to DIR and keep them")
    ap.add_argument("--skip", default="", help="comma-separated tools to skip")
    ap.add_argument("--timeout", type=float, default=1800, help="per-run timeout in seconds")
    args = ap.parse_args()

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        work = args.keep
    else:
        work = tempfile.mkdtemp(prefix="kdet-bench-eval-")
    try:
        t0 = time.perf_counter()
        gt_path, dt_path, ni, ng, nd = generate(
            work, args.images, args.categories, args.gt_per_image, args.fp_per_image, args.seed
        )
        print(
            f"data: {ni} images, {args.categories} categories, {ng} GT, {nd} detections "
            f"(seed {args.seed}, generated in {time.perf_counter() - t0:.1f}s) in {work}"
        )
        print(f"versions: {versions()}")
        print(f"machine: {os.cpu_count()} cpus, loadavg {os.getloadavg()[0]:.2f} at start")

        results: dict[str, tuple[float, list[float]] | str] = {}
        tools = [t for t in PY_TOOLS if t not in skip] + (["kdet"] if args.kdet and "kdet" not in skip else [])
        for tool in tools:
            if tool != "kdet" and not installed(tool):
                results[tool] = "not installed"
                print(f"{tool}: not installed, skipped")
                continue
            n = args.pycocotools_repeat if tool == "pycocotools" else args.repeat
            times, stats = [], None
            try:
                for i in range(max(1, n)):
                    if tool == "kdet":
                        s, st = run_kdet(args.kdet, gt_path, dt_path, args.timeout)
                    else:
                        s, st = run_py(tool, gt_path, dt_path, args.timeout)
                    times.append(s)
                    stats = st
                    print(f"{tool}: run {i + 1}/{n}: {s:.3f}s  AP={st[0]:.6f}", flush=True)
                results[tool] = (statistics.median(times), stats)
            except Exception as e:  # report, keep going
                results[tool] = f"error: {type(e).__name__}: {str(e)[:300]}"
                print(f"{tool}: {results[tool]}")

        ref = results.get("pycocotools")
        hot = results.get("hotcoco")
        ref_s = ref[0] if isinstance(ref, tuple) else None
        hot_s = hot[0] if isinstance(hot, tuple) else None
        print()
        print(f"loadavg {os.getloadavg()[0]:.2f} at end")
        print()
        print(
            "| tool | seconds (median) | speedup vs pycocotools | speedup vs hotcoco | "
            "12 stats == pycocotools (max abs diff) |"
        )
        print("|---|---:|---:|---:|---|")
        for tool in tools:
            r = results[tool]
            if not isinstance(r, tuple):
                print(f"| {tool} | {r} | | | |")
                continue
            s, st = r
            n = args.pycocotools_repeat if tool == "pycocotools" else args.repeat
            vs_ref = f"{ref_s / s:.1f}x" if ref_s else "n/a"
            vs_hot = f"{hot_s / s:.2f}x" if hot_s else "n/a"
            if isinstance(ref, tuple):
                diff = float(np.max(np.abs(np.asarray(st) - np.asarray(ref[1]))))
                same = "yes" if list(st) == list(ref[1]) else "no"
                cmp = f"{same} ({diff:.3g})"
            else:
                cmp = "n/a"
            print(f"| {tool} | {s:.3f} (n={n}) | {vs_ref} | {vs_hot} | {cmp} |")
        if isinstance(ref, tuple):
            print()
            print("pycocotools stats: " + json.dumps(ref[1]))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
