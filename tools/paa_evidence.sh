#!/usr/bin/env bash
# The PAA / LAD / Co-LAD evidence on the synthetic data (docs/results.md).
#
# Trains (each run deterministic; finished runs, those with model.safetensors, are kept — delete
# runs/<name> to redo one), in this order:
#   paa_student          the PAA student alone (R18 ×0.25)
#   lad                  LAD from the shipped PAA teacher (weights/synth_paa_r18w05_teacher.*)
#   lad_kd               LAD + temperature KD on the dense head's logits
#   paa_hint_from_frcnn  hints from the shipped Faster R-CNN teacher (P3–P6, paired by stride)
#   paa_hint_from_frcnn_light  the same at a tenth of the hint weight
#   paa_partner          network 2 of Co-LAD (R18 ×0.5) alone, same seed and schedule
#   colad                Co-LAD: the student (network 1) and the partner (network 2) together
# then prints `kdet compare` tables (AP, AP50 with bootstrap 95 % intervals over the val images)
# and each run's mean step time (metrics.jsonl `time`, evaluation excluded).
#
#   tools/paa_evidence.sh            # from the repository root; about 40 minutes of training on an idle 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
KDET=target/release/kdet
for name in paa_student lad lad_kd paa_hint_from_frcnn paa_hint_from_frcnn_light paa_partner colad; do
  [ -f "runs/$name/model.safetensors" ] || $KDET train "configs/synth/$name.json" --fresh
done
gt=$(python3 -c 'import json; print(json.load(open("runs/paa_student/eval.json"))["gt"])')
$KDET compare runs/paa_student runs/lad runs/lad_kd runs/paa_hint_from_frcnn runs/paa_hint_from_frcnn_light \
  runs/colad/net1_detections.json --gt "$gt" --json > /tmp/kdet_paa_student.json
$KDET compare runs/paa_partner runs/colad --json > /tmp/kdet_paa_partner.json
python3 - <<'PY'
import json
def m(c, k):
    return next(x for x in c["metrics"] if x["metric"] == k)
def step(run):
    t = [json.loads(l).get("time") for l in open(f"runs/{run}/metrics.jsonl")]
    t = [x for x in t if x is not None]
    return sum(t) / len(t)
def table(path, base_label, base_run, rows):
    cmps = json.load(open(path))
    base = cmps[0]
    print("| run | AP | Δ AP [95 % CI] | AP50 | Δ AP50 [95 % CI] | s/iter |")
    print("|---|---:|---|---:|---|---:|")
    print(f"| {base_label} | {m(base, 'AP')['a']:.3f} | | {m(base, 'AP50')['a']:.3f} | | {step(base_run):.3f} |")
    for (label, run), c in zip(rows, cmps):
        a, a50 = m(c, "AP"), m(c, "AP50")
        f = lambda x: f"{x['delta']:+.3f} [{x['ci'][0]:+.3f}, {x['ci'][1]:+.3f}]"
        print(f"| {label} | {a['b']:.3f} | {f(a)} | {a50['b']:.3f} | {f(a50)} | {step(run):.3f} |")
    print(f"\n{base['num_images']} val images, bootstrap {base['confidence']:.0%} intervals.\n")
table("/tmp/kdet_paa_student.json", "PAA student alone (R18 ×0.25)", "paa_student", [
    ("LAD (teacher: PAA R18 ×0.5)", "lad"),
    ("LAD + KD (T = 1)", "lad_kd"),
    ("hints from the Faster R-CNN teacher (P3–P6, weight 0.5)", "paa_hint_from_frcnn"),
    ("the same hints at weight 0.05", "paa_hint_from_frcnn_light"),
    ("Co-LAD network 1 (R18 ×0.25, with network 2)", "colad"),
])
table("/tmp/kdet_paa_partner.json", "PAA R18 ×0.5 alone (Co-LAD's network 2)", "paa_partner", [
    ("Co-LAD network 2 (R18 ×0.5, with network 1)", "colad"),
])
teacher = [json.loads(l) for l in open("runs/lad/metrics.jsonl") if "teacher0/AP" in l][-1]
print(f"PAA teacher (weights/synth_paa_r18w05_teacher.safetensors): AP {teacher['teacher0/AP']:.3f}, AP50 {teacher['teacher0/AP50']:.3f}")
colad = [json.loads(l) for l in open("runs/colad/metrics.jsonl") if "colad.net2_share" in l]
share = sum(r["colad.net2_share"] for r in colad) / len(colad)
print(f"Co-LAD: network 2 supplied the costs of {share:.0%} of box × level choices on average (first logged: {colad[0]['colad.net2_share']:.2f}, last: {colad[-1]['colad.net2_share']:.2f})")
PY
