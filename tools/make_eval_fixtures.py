#!/usr/bin/env python3
"""Generate the COCO bbox-evaluation golden fixtures used by kdet's Rust tests.

Purpose
-------
kdet's COCO evaluation (built on the `hotcoco` crate) must reproduce
pycocotools' numbers exactly.  This script deterministically builds a handful
of small, hand-shaped evaluation cases, runs the reference implementation
(pycocotools `COCOeval(gt, dt, "bbox")`) on each, and writes, for every case
NAME, into `tests/fixtures/eval/`:

* `NAME.gt.json`       COCO instances JSON (images, annotations with
                       id/image_id/category_id/bbox [x,y,w,h]/area/iscrowd,
                       categories with id/name).
* `NAME.dt.json`       COCO results JSON list (image_id, category_id, bbox,
                       score).
* `NAME.expected.json` {"stats": the 12 floats of COCOeval.stats after
                       evaluate()/accumulate()/summarize(), written at full
                       precision (Python's shortest round-trip repr, so parsing
                       them as f64 gives the exact same bits),
                       "per_class": [{"category_id", "name", "ap", "ap50"}]
                       in ascending category_id order (one entry for every
                       category listed in the GT file),
                       "summary_text": the exact text summarize() prints to
                       stdout: its 12 lines, each ending in "\\n"}.

Per-class AP definition (the common one, e.g. detectron2 / mmdet):
    prec = E.eval["precision"]          # shape [T=10, R=101, K, A=4, M=3]
    ap   = mean(prec[:, :, k, 0, 2][prec[:, :, k, 0, 2] > -1])   or -1 if empty
    ap50 = mean(prec[0, :, k, 0, 2][prec[0, :, k, 0, 2] > -1])   or -1 if empty
i.e. area range index 0 ("all"), maxDets index 2 (= 100), iou index 0 (= 0.50)
for AP50, k = index of the category in sorted(GT category ids).  A category
that has no (non-ignored) GT gets -1; one that has GT but no detections gets 0.

Cases
-----
basic           a few images, several classes, TP/FP mix, small/medium/large.
crowd           iscrowd=1 GT boxes that detections hit (incl. several dets on
                one crowd box, and dets overlapping both a crowd and a regular
                GT).
empty_images    images with no GT, images with no detections, images with
                neither.
score_ties      many equal scores, within and across images (results file
                shuffled, image ids unsorted), plus equal-IoU ties between two
                GTs. pycocotools breaks score ties with stable (mergesort)
                sorts: within an image by results-file order, across images
                by ascending image id.
many_dets       images with > 100 detections of one category (maxDets=100 cuts
                some TPs) and images with > 100 detections spread over
                categories (maxDets applies per image *and category*).
cat_without_gt  a category with detections but no GT, one with GT but no
                detections, and one with neither.
area_mismatch   GT `area` deliberately != w*h (area ranges use the stored
                area), plus areas exactly on the 32^2 / 96^2 boundaries.
random          50 images, 5 classes, ~1500 detections jittered around GT plus
                random false positives.

Every case uses its own numpy RandomState with a fixed seed, GT annotation ids
start at 1 (pycocotools treats a matched GT id of 0 as "unmatched"), and all
coordinates are rounded to 2 decimals so the JSON round-trips exactly.

After writing the fixtures the script also evaluates every case with
faster-coco-eval and with hotcoco's Python bindings (when importable) and
prints any difference from pycocotools (stats and per-class AP/AP50).  It does
not fail on a difference; it only reports it.

Command (from the repository root; the venv lives outside the repo):
    python3 -m venv /work/venv-coco
    /work/venv-coco/bin/pip install numpy==2.4.6 pycocotools==2.0.11 \\
        faster-coco-eval==1.8.0 hotcoco==1.3.0
    /work/venv-coco/bin/python tools/make_eval_fixtures.py [--out DIR]

Pinned versions the checked-in fixtures were generated with:
    Python 3.11.7, numpy 2.4.6, pycocotools 2.0.11
    (cross-checked against faster-coco-eval 1.8.0 and hotcoco 1.3.0)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "eval")


# ---------------------------------------------------------------------------
# small builders
# ---------------------------------------------------------------------------


def r2(x: float) -> float:
    return float(round(float(x), 2))


class Case:
    def __init__(self, name: str):
        self.name = name
        self.images: list[dict] = []
        self.anns: list[dict] = []
        self.cats: list[dict] = []
        self.dets: list[dict] = []

    def image(self, img_id: int, w: int = 640, h: int = 480) -> int:
        self.images.append(
            {"id": int(img_id), "file_name": f"{int(img_id):012d}.jpg", "width": int(w), "height": int(h)}
        )
        return img_id

    def cat(self, cat_id: int, name: str) -> None:
        self.cats.append({"id": int(cat_id), "name": name})

    def gt(self, img_id, cat_id, bbox, iscrowd=0, area=None) -> list[float]:
        bbox = [r2(v) for v in bbox]
        if area is None:
            area = bbox[2] * bbox[3]
        self.anns.append(
            {
                "id": len(self.anns) + 1,
                "image_id": int(img_id),
                "category_id": int(cat_id),
                "bbox": bbox,
                "area": r2(area),
                "iscrowd": int(iscrowd),
            }
        )
        return bbox

    def dt(self, img_id, cat_id, bbox, score) -> None:
        self.dets.append(
            {
                "image_id": int(img_id),
                "category_id": int(cat_id),
                "bbox": [r2(v) for v in bbox],
                "score": float(round(float(score), 4)),
            }
        )

    def gt_json(self) -> dict:
        return {"images": self.images, "annotations": self.anns, "categories": self.cats}


def rand_box(rs: np.random.RandomState, W=640, H=480, smin=8.0, smax=300.0, aspect=(0.5, 2.0)):
    """Random box whose sqrt(area) is log-uniform in [smin, smax]."""
    s = float(np.exp(rs.uniform(np.log(smin), np.log(smax))))
    a = float(np.exp(rs.uniform(np.log(aspect[0]), np.log(aspect[1]))))
    w = min(s * np.sqrt(a), W - 2.0)
    h = min(s / np.sqrt(a), H - 2.0)
    x = rs.uniform(0, W - w)
    y = rs.uniform(0, H - h)
    return [x, y, w, h]


def jitter(rs: np.random.RandomState, box, sigma: float):
    """Jitter a box by sigma * size on position and log-size."""
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    cx += rs.normal(0, sigma) * w
    cy += rs.normal(0, sigma) * h
    w2 = w * float(np.exp(rs.normal(0, sigma)))
    h2 = h * float(np.exp(rs.normal(0, sigma)))
    return [max(0.0, cx - w2 / 2), max(0.0, cy - h2 / 2), max(1.0, w2), max(1.0, h2)]


def score_for(rs, good: bool) -> float:
    if good:
        return float(np.clip(rs.beta(5, 2), 0.01, 0.999))
    return float(np.clip(rs.beta(1.5, 5), 0.01, 0.999))


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------


def case_basic() -> Case:
    rs = np.random.RandomState(1001)
    c = Case("basic")
    for cid, name in [(1, "person"), (2, "car"), (3, "dog")]:
        c.cat(cid, name)
    sizes = {"small": (10, 30), "medium": (34, 90), "large": (100, 300)}
    for img_id in [1, 2, 3, 4, 5]:
        c.image(img_id)
        for _ in range(rs.randint(3, 7)):
            cid = int(rs.randint(1, 4))
            lo, hi = sizes[["small", "medium", "large"][rs.randint(0, 3)]]
            box = rand_box(rs, smin=lo, smax=hi)
            g = c.gt(img_id, cid, box)
            u = rs.uniform()
            if u < 0.55:  # good TP
                c.dt(img_id, cid, jitter(rs, g, 0.03), score_for(rs, True))
            elif u < 0.75:  # loose localisation (TP at low IoU thresholds only)
                c.dt(img_id, cid, jitter(rs, g, 0.15), score_for(rs, True))
            elif u < 0.85:  # right place, wrong class
                c.dt(img_id, cid % 3 + 1, jitter(rs, g, 0.03), score_for(rs, False))
            # else: missed
            if rs.uniform() < 0.2:  # duplicate detection -> FP
                c.dt(img_id, cid, jitter(rs, g, 0.05), score_for(rs, False))
        for _ in range(rs.randint(1, 4)):  # background FPs
            c.dt(img_id, int(rs.randint(1, 4)), rand_box(rs, smin=8, smax=200), score_for(rs, False))
    return c


def case_crowd() -> Case:
    rs = np.random.RandomState(1002)
    c = Case("crowd")
    c.cat(1, "person")
    c.cat(2, "bicycle")
    # image 1: a crowd box with several detections inside it, plus a regular person
    c.image(1)
    crowd = c.gt(1, 1, [100, 100, 300, 200], iscrowd=1)
    reg = c.gt(1, 1, [450, 150, 60, 120])
    c.dt(1, 1, jitter(rs, reg, 0.02), 0.95)
    for s in [0.9, 0.8, 0.6, 0.4]:  # small dets fully inside the crowd region
        w, h = rs.uniform(30, 70), rs.uniform(60, 120)
        x, y = rs.uniform(crowd[0], crowd[0] + crowd[2] - w), rs.uniform(crowd[1], crowd[1] + crowd[3] - h)
        c.dt(1, 1, [x, y, w, h], s)
    c.dt(1, 1, [350, 120, 100, 100], 0.5)  # half inside the crowd region
    # image 2: regular GT inside a crowd region; dets hit both
    c.image(2)
    c.gt(2, 1, [50, 50, 400, 300], iscrowd=1)
    inner = c.gt(2, 1, [120, 100, 80, 160])
    inner2 = c.gt(2, 1, [300, 120, 70, 150])
    c.dt(2, 1, jitter(rs, inner, 0.02), 0.92)
    c.dt(2, 1, jitter(rs, inner, 0.04), 0.91)  # duplicate -> may match the crowd instead
    c.dt(2, 1, jitter(rs, inner2, 0.25), 0.7)  # poor localisation
    c.dt(2, 1, [200, 300, 60, 40], 0.65)  # inside crowd only
    c.dt(2, 1, [500, 400, 50, 50], 0.3)  # plain FP
    # image 3: small crowd box (area ranges apply to crowd too) + bicycles
    c.image(3)
    c.gt(3, 1, [10, 10, 25, 30], iscrowd=1)
    c.dt(3, 1, [12, 12, 10, 20], 0.85)
    b = c.gt(3, 2, [200, 200, 120, 80])
    c.gt(3, 2, [200, 200, 240, 160], iscrowd=1)
    c.dt(3, 2, jitter(rs, b, 0.03), 0.88)
    c.dt(3, 2, [330, 260, 90, 80], 0.6)
    c.dt(3, 2, [20, 300, 50, 50], 0.2)
    # image 4: only a crowd GT (no countable GT), detections on it
    c.image(4)
    c.gt(4, 2, [0, 0, 640, 480], iscrowd=1)
    c.dt(4, 2, [100, 100, 50, 50], 0.77)
    c.dt(4, 1, [100, 100, 50, 50], 0.55)  # person det, no person GT here -> FP
    # image 5: normal stuff so the numbers are not degenerate
    c.image(5)
    for _ in range(4):
        cid = int(rs.randint(1, 3))
        g = c.gt(5, cid, rand_box(rs, smin=20, smax=150))
        c.dt(5, cid, jitter(rs, g, 0.05), score_for(rs, True))
    return c


def case_empty_images() -> Case:
    rs = np.random.RandomState(1003)
    c = Case("empty_images")
    c.cat(1, "cat")
    c.cat(2, "dog")
    # ids deliberately unsorted / non-contiguous
    for img_id in [10, 3, 7, 21, 5, 14]:
        c.image(img_id)
    # 10: GT and dets
    for cid in [1, 2, 1]:
        g = c.gt(10, cid, rand_box(rs, smin=20, smax=200))
        c.dt(10, cid, jitter(rs, g, 0.05), score_for(rs, True))
    # 3: GT only (all missed)
    c.gt(3, 1, rand_box(rs, smin=20, smax=200))
    c.gt(3, 2, rand_box(rs, smin=20, smax=200))
    # 7: detections only (all FP)
    for _ in range(3):
        c.dt(7, int(rs.randint(1, 3)), rand_box(rs), score_for(rs, True))
    # 21: neither GT nor detections
    # 5: GT + dets
    g = c.gt(5, 2, rand_box(rs, smin=40, smax=200))
    c.dt(5, 2, jitter(rs, g, 0.03), 0.8)
    c.dt(5, 1, jitter(rs, g, 0.03), 0.75)
    # 14: neither
    return c


def case_score_ties() -> Case:
    rs = np.random.RandomState(1004)
    c = Case("score_ties")
    c.cat(1, "a")
    c.cat(2, "b")
    levels = [0.9, 0.7, 0.5, 0.3]
    for img_id in [9, 2, 6, 4, 11, 1]:
        c.image(img_id)
        for _ in range(rs.randint(2, 6)):
            cid = int(rs.randint(1, 3))
            g = c.gt(img_id, cid, rand_box(rs, smin=20, smax=200))
            # TP and FP with exactly the same score
            s = levels[rs.randint(0, len(levels))]
            if rs.uniform() < 0.8:
                c.dt(img_id, cid, jitter(rs, g, 0.03), s)
            c.dt(img_id, cid, rand_box(rs, smin=20, smax=200), s)
            if rs.uniform() < 0.4:  # duplicate with same score
                c.dt(img_id, cid, jitter(rs, g, 0.04), s)
    # equal-IoU ties: one det equally overlapping two GTs (pycocotools keeps the
    # later GT in its (stable, ignore-sorted) GT order)
    c.image(3)
    c.gt(3, 1, [100, 100, 100, 100])
    c.gt(3, 1, [120, 100, 100, 100])
    c.dt(3, 1, [110, 100, 100, 100], 0.5)  # IoU 0.8181.. with both
    c.dt(3, 1, [100, 100, 100, 100], 0.5)  # exact match with the first
    c.dt(3, 1, [130, 100, 100, 100], 0.5)
    # shuffle the results file so file order != image order
    perm = rs.permutation(len(c.dets))
    c.dets = [c.dets[i] for i in perm]
    return c


def case_many_dets() -> Case:
    rs = np.random.RandomState(1005)
    c = Case("many_dets")
    for cid, name in [(1, "bird"), (2, "boat"), (3, "kite")]:
        c.cat(cid, name)
    # image 1: 130 dets of category 1; some true positives ranked below 100
    c.image(1)
    gts = [c.gt(1, 1, rand_box(rs, smin=15, smax=80)) for _ in range(8)]
    for i, g in enumerate(gts):
        # half of the TPs get low scores so they fall beyond rank 100
        s = rs.uniform(0.6, 0.99) if i % 2 == 0 else rs.uniform(0.01, 0.05)
        c.dt(1, 1, jitter(rs, g, 0.03), s)
    for _ in range(122):
        c.dt(1, 1, rand_box(rs, smin=10, smax=120), rs.uniform(0.06, 0.9))
    # image 2: 150 dets spread over 3 categories (< 100 each) -> none cut at 100,
    # but maxDets 1 / 10 still bite
    c.image(2)
    for cid in [1, 2, 3]:
        gts = [c.gt(2, cid, rand_box(rs, smin=15, smax=150)) for _ in range(5)]
        for g in gts:
            c.dt(2, cid, jitter(rs, g, 0.04), rs.uniform(0.05, 0.99))
        for _ in range(45):
            c.dt(2, cid, rand_box(rs, smin=10, smax=150), rs.uniform(0.05, 0.95))
    # image 3: 105 dets of category 2 with all TPs at the bottom
    c.image(3)
    gts = [c.gt(3, 2, rand_box(rs, smin=30, smax=150)) for _ in range(4)]
    for _ in range(101):
        c.dt(3, 2, rand_box(rs, smin=10, smax=120), rs.uniform(0.3, 0.9))
    for g in gts:
        c.dt(3, 2, jitter(rs, g, 0.02), rs.uniform(0.1, 0.2))
    # image 4: ordinary
    c.image(4)
    for cid in [1, 3]:
        g = c.gt(4, cid, rand_box(rs, smin=20, smax=200))
        c.dt(4, cid, jitter(rs, g, 0.05), 0.8)
    return c


def case_cat_without_gt() -> Case:
    rs = np.random.RandomState(1006)
    c = Case("cat_without_gt")
    c.cat(1, "present")
    c.cat(2, "gt_only")  # GT but no detections -> AP 0
    c.cat(3, "dt_only")  # detections but no GT -> AP -1 (excluded from mean)
    c.cat(4, "absent")  # neither -> -1
    for img_id in [1, 2, 3]:
        c.image(img_id)
        for _ in range(3):
            g = c.gt(img_id, 1, rand_box(rs, smin=20, smax=200))
            c.dt(img_id, 1, jitter(rs, g, 0.05), score_for(rs, True))
        g2 = c.gt(img_id, 2, rand_box(rs, smin=20, smax=200))
        # a category-3 det right on the category-2 GT, plus random ones
        c.dt(img_id, 3, jitter(rs, g2, 0.02), 0.9)
        c.dt(img_id, 3, rand_box(rs), score_for(rs, False))
    return c


def case_area_mismatch() -> Case:
    rs = np.random.RandomState(1007)
    c = Case("area_mismatch")
    c.cat(1, "thing")
    c.cat(2, "stuff")
    for img_id in [1, 2, 3, 4]:
        c.image(img_id)
        for _ in range(5):
            cid = int(rs.randint(1, 3))
            box = rand_box(rs, smin=15, smax=200)
            # stored area is a "segmentation" area: smaller or larger than w*h
            factor = [0.2, 0.5, 0.7, 1.5, 4.0][rs.randint(0, 5)]
            g = c.gt(img_id, cid, box, area=box[2] * box[3] * factor)
            c.dt(img_id, cid, jitter(rs, g, 0.04), score_for(rs, True))
        c.dt(img_id, int(rs.randint(1, 3)), rand_box(rs, smin=15, smax=200), score_for(rs, False))
    # exact range boundaries: 32^2 = 1024 and 96^2 = 9216 (ranges are closed)
    c.image(5)
    g = c.gt(5, 1, [10, 10, 40, 40], area=1024.0)  # w*h = 1600 (medium), area says small/medium edge
    c.dt(5, 1, [11, 10, 40, 40], 0.9)
    g = c.gt(5, 1, [100, 100, 32, 32])  # w*h = area = 1024
    c.dt(5, 1, [100, 101, 32, 32], 0.8)
    g = c.gt(5, 2, [200, 200, 96, 96])  # w*h = area = 9216
    c.dt(5, 2, [201, 200, 96, 96], 0.85)
    g = c.gt(5, 2, [300, 50, 90, 90], area=9216.0)  # w*h = 8100
    c.dt(5, 2, [300, 52, 90, 90], 0.7)
    # unmatched detections exactly on the boundaries (their area is w*h)
    c.dt(5, 1, [500, 400, 32, 32], 0.6)
    c.dt(5, 2, [400, 300, 96, 96], 0.65)
    c.dt(5, 2, [10, 300, 64, 16], 0.5)  # 1024 again
    return c


def case_random() -> Case:
    rs = np.random.RandomState(1008)
    c = Case("random")
    names = ["person", "car", "chair", "bottle", "cup"]
    for i, n in enumerate(names):
        c.cat(i + 1, n)
    img_ids = rs.choice(np.arange(1, 1000), size=50, replace=False)
    for img_id in img_ids:
        img_id = int(img_id)
        c.image(img_id)
        for _ in range(rs.poisson(6)):
            cid = int(rs.randint(1, 6))
            g = c.gt(img_id, cid, rand_box(rs), iscrowd=int(rs.uniform() < 0.03))
            if rs.uniform() < 0.85:
                c.dt(img_id, cid, jitter(rs, g, rs.choice([0.02, 0.05, 0.1, 0.2])), score_for(rs, True))
            for _ in range(rs.poisson(1.5)):  # duplicates / near misses
                c.dt(img_id, cid, jitter(rs, g, 0.15), score_for(rs, False))
            if rs.uniform() < 0.1:
                c.dt(img_id, int(rs.randint(1, 6)), jitter(rs, g, 0.05), score_for(rs, False))
        for _ in range(rs.poisson(18)):
            c.dt(img_id, int(rs.randint(1, 6)), rand_box(rs), score_for(rs, False))
    return c


CASES = [
    case_basic,
    case_crowd,
    case_empty_images,
    case_score_ties,
    case_many_dets,
    case_cat_without_gt,
    case_area_mismatch,
    case_random,
]


# ---------------------------------------------------------------------------
# JSON writing (one record per line: small, diffable, exact floats)
# ---------------------------------------------------------------------------


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def write_gt(path: str, gt: dict) -> None:
    with open(path, "w") as f:
        f.write("{\n")
        for i, key in enumerate(["images", "annotations", "categories"]):
            f.write(f'"{key}":[\n')
            f.write(",\n".join(_dumps(x) for x in gt[key]))
            f.write("\n]" + (",\n" if i < 2 else "\n"))
        f.write("}\n")


def write_dt(path: str, dets: list) -> None:
    with open(path, "w") as f:
        f.write("[\n" + ",\n".join(_dumps(d) for d in dets) + "\n]\n")


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def per_class_from_precision(precision: np.ndarray, cat_ids, names):
    out = []
    for k, cid in enumerate(cat_ids):
        p = precision[:, :, k, 0, 2]
        v = p[p > -1]
        ap = float(np.mean(v)) if v.size else -1.0
        p50 = precision[0, :, k, 0, 2]
        v50 = p50[p50 > -1]
        ap50 = float(np.mean(v50)) if v50.size else -1.0
        out.append({"category_id": int(cid), "name": names[cid], "ap": ap, "ap50": ap50})
    return out


def eval_pycocotools(gt_path: str, dt_path: str):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes(dt_path)
        E = COCOeval(gt, dt, "bbox")
        E.evaluate()
        E.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        E.summarize()
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    per_class = per_class_from_precision(E.eval["precision"], E.params.catIds, names)
    return [float(x) for x in E.stats], per_class, buf.getvalue()


def eval_faster(gt_path: str, dt_path: str):
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes(dt_path)
        E = COCOeval_faster(gt, dt, "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    per_class = per_class_from_precision(np.asarray(E.eval["precision"]), list(E.params.catIds), names)
    return [float(x) for x in E.stats[:12]], per_class


def eval_hotcoco(gt_path: str, dt_path: str):
    import hotcoco

    with contextlib.redirect_stdout(io.StringIO()):
        gt = hotcoco.COCO(gt_path)
        dt = gt.loadRes(dt_path)
        E = hotcoco.COCOeval(gt, dt, "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    cats = json.load(open(gt_path))["categories"]
    names = {c["id"]: c["name"] for c in cats}
    per_class = None
    ev = E.eval
    if ev is not None and "precision" in ev:
        per_class = per_class_from_precision(np.asarray(ev["precision"]), list(E.params.cat_ids), names)
    return [float(x) for x in E.stats[:12]], per_class


def compare(label: str, case: str, ref_stats, ref_pc, stats, pc) -> int:
    ndiff = 0
    d = np.abs(np.asarray(ref_stats) - np.asarray(stats))
    if not np.array_equal(np.asarray(ref_stats), np.asarray(stats)):
        ndiff += 1
        print(f"  [{case}] {label}: stats differ, max abs diff {d.max():.3e}")
        for i, (a, b) in enumerate(zip(ref_stats, stats)):
            if a != b:
                print(f"      stats[{i:2d}] pycocotools={a!r} {label}={b!r}")
    if pc is None:
        print(f"  [{case}] {label}: per-class precision not available, not compared")
        return ndiff
    for a, b in zip(ref_pc, pc):
        for key in ("ap", "ap50"):
            if a[key] != b[key]:
                ndiff += 1
                print(
                    f"  [{case}] {label}: per-class {key} cat {a['category_id']} "
                    f"pycocotools={a[key]!r} {label}={b[key]!r} (diff {abs(a[key] - b[key]):.3e})"
                )
    return ndiff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: tests/fixtures/eval)")
    ap.add_argument("--no-crosscheck", action="store_true", help="skip faster-coco-eval / hotcoco checks")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    from importlib.metadata import version

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, pycocotools {version('pycocotools')}")

    others = []
    if not args.no_crosscheck:
        try:
            import faster_coco_eval

            others.append(("faster-coco-eval", eval_faster))
            print(f"cross-check: faster-coco-eval {faster_coco_eval.__version__}")
        except ImportError:
            print("cross-check: faster-coco-eval not installed, skipped")
        try:
            import hotcoco

            others.append(("hotcoco-py", eval_hotcoco))
            print(f"cross-check: hotcoco {hotcoco.__version__}")
        except ImportError:
            print("cross-check: hotcoco not installed, skipped")

    total_diffs = 0
    for make in CASES:
        c = make()
        base = os.path.join(args.out, c.name)
        gt_path, dt_path, exp_path = base + ".gt.json", base + ".dt.json", base + ".expected.json"
        write_gt(gt_path, c.gt_json())
        write_dt(dt_path, c.dets)
        stats, per_class, text = eval_pycocotools(gt_path, dt_path)
        assert len(stats) == 12 and len(text.splitlines()) == 12, (c.name, stats, text)
        with open(exp_path, "w") as f:
            json.dump({"stats": stats, "per_class": per_class, "summary_text": text}, f, indent=1)
            f.write("\n")
        print(
            f"{c.name:15s} images={len(c.images):3d} gt={len(c.anns):4d} dets={len(c.dets):5d} "
            f"AP={stats[0]:.4f} AP50={stats[1]:.4f} AR100={stats[8]:.4f}"
        )
        for label, fn in others:
            try:
                s2, pc2 = fn(gt_path, dt_path)
            except Exception as e:  # report, never fail
                print(f"  [{c.name}] {label}: ERROR {type(e).__name__}: {e}")
                total_diffs += 1
                continue
            total_diffs += compare(label, c.name, stats, per_class, s2, pc2)
    if others:
        print(
            "cross-check: all identical to pycocotools"
            if total_diffs == 0
            else f"cross-check: {total_diffs} difference(s) reported above"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
