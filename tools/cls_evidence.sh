#!/usr/bin/env bash
# The classification evidence on the synthetic data (docs/results.md). Each run is deterministic;
# finished runs (those with model.safetensors) are kept — delete runs/<name> to redo one.
#
#   (a) balanced 32-class crops, 20 labeled images per class + 6,400 unlabeled:
#       cls_student (R18 ×0.25 alone), cls_teacher (R18 ×0.5 alone), cls_simclr (student
#       distilled from the teacher on the unlabeled images, τ = 1), cls_simclr_self (student
#       distilled from cls_student, τ = 0.1)
#   (b) long-tailed crops (imbalance 100), balanced val: cls_lt_instance, cls_lt_balanced,
#       cls_lt_teacher_aug (stage-1 teacher 2: seed 1 + colour jitter), cls_lt_cbd (teacher:
#       cls_lt_instance), cls_lt_cbd_ens (both teachers)
#   (c) the Faster R-CNN student from scratch and from cls_simclr's exported backbone
# then prints `kdet compare` tables (bootstrap 95 % intervals over the val images).
#
#   tools/cls_evidence.sh     # from the repository root, under `nice -n 15`
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
KDET=target/release/kdet
train() { [ -f "runs/$1/model.safetensors" ] || $KDET train "configs/synth/$1.json" --fresh; }
for name in cls_student cls_teacher cls_simclr cls_simclr_self; do train $name; done
$KDET compare runs/cls_student runs/cls_simclr runs/cls_simclr_self runs/cls_teacher
for name in cls_lt_instance cls_lt_balanced cls_lt_teacher_aug cls_lt_cbd cls_lt_cbd_ens; do train $name; done
$KDET compare runs/cls_lt_instance runs/cls_lt_balanced runs/cls_lt_cbd runs/cls_lt_cbd_ens
$KDET compare runs/cls_lt_balanced runs/cls_lt_cbd runs/cls_lt_cbd_ens
[ -f runs/cls_simclr/backbone.safetensors ] || $KDET export --config configs/synth/cls_simclr.json \
  --weights runs/cls_simclr/model.safetensors --out runs/cls_simclr/backbone.safetensors --backbone-only
train frcnn_student
train frcnn_student_from_cls
$KDET compare runs/frcnn_student runs/frcnn_student_from_cls
