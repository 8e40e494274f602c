#!/usr/bin/env bash
# The Chen et al. 2017 Table-4-style ablation on the synthetic data (docs/results.md).
#
# Trains the student alone and with each distillation term (same student, data, seed and
# schedule; every run is deterministic), then prints one markdown table built from
# `kdet compare --json` of each run against the student alone: AP and AP50 with their bootstrap
# 95 % intervals over the val images. Runs already finished (model.safetensors present) are
# kept; delete runs/frcnn_distill* to start over. About 7 minutes per run on a 2-core CPU.
#
#   tools/distill_ablation.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
KDET=target/release/kdet

# row label | config (configs/synth/<name>.json; output runs/<name>)
ROWS=(
  "L2 (plain L2 to the teacher's deltas)|frcnn_distill_l2_regression"
  "L2-B (teacher-bounded regression)|frcnn_distill_bounded_regression"
  "CLS (soft CE, w0 = 1)|frcnn_distill_soft_ce"
  "CLS-W (weighted soft CE, w0 = 1.5)|frcnn_distill_weighted_kd"
  "Hints (c5 → teacher p5, no adaptation layer)|frcnn_distill_hint_noadapt"
  "Hints-A (c5 → teacher p5, adaptation layer)|frcnn_distill_hint"
  "Hints-A (FPN p2–p5 → teacher p2–p5)|frcnn_distill_hint_fpn"
  "KD (Hinton, T = 2, weight 0.5, on the RCN; not in Table 4)|frcnn_distill_kd"
  "All (L2-B + CLS-W + Hints-A on FPN p2–p5)|frcnn_distill"
)

# The full distillation and, with --baseline, the student alone (runs/frcnn_distill_baseline).
if [ ! -f runs/frcnn_distill/model.safetensors ] || [ ! -f runs/frcnn_distill_baseline/model.safetensors ]; then
  $KDET train configs/synth/frcnn_distill.json --baseline --fresh
fi
for row in "${ROWS[@]}"; do
  name=${row#*|}
  [ -f "runs/$name/model.safetensors" ] || $KDET train "configs/synth/$name.json" --fresh
done

runs=()
for row in "${ROWS[@]}"; do runs+=("runs/${row#*|}"); done
$KDET compare runs/frcnn_distill_baseline "${runs[@]}" --json > /tmp/kdet_ablation.json
python3 - "${ROWS[@]}" <<'EOF'
import json, sys
labels = [r.split("|")[0] for r in sys.argv[1:]]
cmps = json.load(open("/tmp/kdet_ablation.json"))
def m(c, k):
    return next(x for x in c["metrics"] if x["metric"] == k)
base = cmps[0]
print(f"| run | AP | Δ AP [95 % CI] | AP50 | Δ AP50 [95 % CI] |")
print("|---|---:|---|---:|---|")
print(f"| baseline (student alone) | {m(base, 'AP')['a']:.3f} | | {m(base, 'AP50')['a']:.3f} | |")
for label, c in zip(labels, cmps):
    a, a50 = m(c, "AP"), m(c, "AP50")
    f = lambda x: f"{x['delta']:+.3f} [{x['ci'][0]:+.3f}, {x['ci'][1]:+.3f}]"
    print(f"| {label} | {a['b']:.3f} | {f(a)} | {a50['b']:.3f} | {f(a50)} |")
print(f"\n{base['num_images']} val images, bootstrap {base['confidence']:.0%} intervals.")
EOF
