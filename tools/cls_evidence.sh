#!/usr/bin/env bash
# The classification evidence on the synthetic data (docs/results.md). Each run is deterministic;
# finished runs (those with model.safetensors) are kept — delete runs/<name> to redo one.
#
#   (a) balanced 32-class crops, 20 labeled images per class + 6,400 unlabeled:
#       cls_student (R18 ×0.25 alone), cls_teacher (R18 ×0.5 alone), cls_simclr (student
#       distilled from the teacher on the unlabeled images, τ = 1), cls_teacher_x4 (R18 ×0.5 on
#       4× the labels) and cls_simclr_x4 (the student distilled from it), cls_simclr_self
#       (student distilled from cls_student, τ = 0.1; _t2 with the τ² factor, _lr at lr 0.01,
#       _t1 at τ = 1)
#   (b) long-tailed crops (imbalance 100), balanced val: cls_lt_instance, cls_lt_balanced,
#       cls_lt_teacher_aug (stage-1 teacher 2: seed 1 + colour jitter), cls_lt_cbd (teacher:
#       cls_lt_instance), cls_lt_cbd_ens (both teachers), cls_lt_teacher_seed1 and
#       cls_lt_cbd_ens_seeds (the second teacher as the first but seed 1)
#   (c) the Faster R-CNN student from scratch, from cls_student's and from cls_simclr's
#       exported backbones
# then prints `kdet compare` tables (bootstrap 95 % intervals over the val images).
#
#   tools/cls_evidence.sh     # from the repository root; about 1.5 hours on an idle 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
KDET=target/release/kdet
train() { [ -f "runs/$1/model.safetensors" ] || $KDET train "configs/synth/$1.json" --fresh; }
for name in cls_student cls_teacher cls_simclr cls_teacher_x4 cls_simclr_x4 cls_simclr_self \
  cls_simclr_self_t2 cls_simclr_self_lr cls_simclr_self_t1; do train $name; done
$KDET compare runs/cls_student runs/cls_teacher runs/cls_simclr runs/cls_simclr_x4 runs/cls_simclr_self \
  runs/cls_simclr_self_t2 runs/cls_simclr_self_lr runs/cls_simclr_self_t1
# The 4×-label teacher trained on another draw (its own cache folder): evaluated on this val set.
$KDET eval --config configs/synth/cls_teacher.json --weights runs/cls_teacher_x4/model.safetensors
for name in cls_lt_instance cls_lt_balanced cls_lt_teacher_aug cls_lt_teacher_seed1 cls_lt_cbd \
  cls_lt_cbd_ens cls_lt_cbd_ens_seeds; do train $name; done
$KDET compare runs/cls_lt_instance runs/cls_lt_balanced runs/cls_lt_cbd runs/cls_lt_cbd_ens runs/cls_lt_cbd_ens_seeds
$KDET compare runs/cls_lt_balanced runs/cls_lt_cbd runs/cls_lt_cbd_ens runs/cls_lt_cbd_ens_seeds
for run in cls_simclr cls_student; do
  [ -f runs/$run/backbone.safetensors ] || $KDET export --config configs/synth/$run.json \
    --weights runs/$run/model.safetensors --out runs/$run/backbone.safetensors --backbone-only
done
train frcnn_student
train frcnn_student_from_cls_plain
train frcnn_student_from_cls
$KDET compare runs/frcnn_student runs/frcnn_student_from_cls_plain runs/frcnn_student_from_cls
$KDET compare runs/frcnn_student_from_cls_plain runs/frcnn_student_from_cls
