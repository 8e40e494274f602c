#!/usr/bin/env bash
# Every claim of docs/results.md re-measured over training seeds (issue 20): each arm trained with
# `kdet train CONFIG --seeds N --resume` into runs/<name>/seed-<k>/, then `kdet compare` over the
# seed folders — each seed's Δ paired by seed, the mean Δ, and a 95 % two-level bootstrap interval
# over seeds and val images (docs/results.md, "Statistics"). Then the same claims on a second
# synthetic data draw (`data.synthetic.seed` 1; runs/<name>_data1/), to split the spread into data
# and training.
#
# Groups (in this order; name some to run only those):
#   teachers  single-seed runs other arms read (cls_teacher, cls_teacher_x4, cls_student,
#             cls_lt_instance, cls_lt_teacher_aug, cls_lt_teacher_seed1, cls_simclr) and the
#             exported classification backbones; the detection teachers are the shipped weights/
#   chen      frcnn_distill --baseline (the default job) and the Table-4 ablation rows
#   paa       paa_student, lad, lad_kd, the cross-family hints, paa_partner, colad (both networks)
#   simclr    cls_student, cls_simclr, cls_simclr_x4, the self-distillation rows
#   cbd       cls_lt_instance, cls_lt_balanced, cls_lt_cbd, cls_lt_cbd_ens, cls_lt_cbd_ens_seeds
#             (5 seeds: the difference is small against the spread)
#   backbone  frcnn_student, frcnn_student_from_cls_plain, frcnn_student_from_cls
#   feat_cross  issue 21, cross-family: the shipped Faster R-CNN teacher → the PAA student with
#             PKD, CWD, MGD, against the student alone and Chen et al.'s hints that hurt
#   feat_paa  issue 21, the PAA teacher → the PAA student with PKD, CWD, MGD, FGD, and LAD + PKD
#   feat_frcnn  issue 21, same family: Faster R-CNN R18×0.5 → R18×0.25 (the default job's pair)
#             with PKD, CWD, MGD, FGD against the student alone and Chen et al.'s hints
#   online    online distillation on video streams (issue 24): tools/online_evidence.sh (its
#             arms over 3 synthetic streams, not training seeds; ≈ 30–45 min)
#   fed       federated runs (issue 25): FedAvg vs FedNTD at Dirichlet α = 0.1, α = 0.5 and 2-class
#             shards (10 clients, 5 per round, 30 rounds), and FedX vs its local terms alone
#             (k-NN / linear-probe top-1 in the seed tables); measured ≈ 11 s per round of
#             FedAvg/FedNTD and ≈ 8 s per FedX round on the loaded 2-core CPU: ≈ 5.5 and 3 min
#             per seed, ≈ 2 h for the group at 3 seeds
#   ssl       issue 23's self-supervised claims, on 10 % of the labels (data.label_fraction):
#             (a) cls_simclr_pretrain (single) → cls_simclr_finetune vs cls_student_10pct
#                 (top-1, k-NN, probe); (b) SimCLRv2 big → small: cls_simclr_pretrain_big →
#                 cls_simclr_finetune_big (single, the teacher) → cls_simclr_recipe (distilled on
#                 the unlabeled pool) vs cls_student_10pct; (c) DoGo's small network (cls_dogo,
#                 net1) vs the same network pretrained alone (cls_ssl_alone): k-NN, probe.
#             Measured steps (2-core CPU, shared): pretraining ≈ 0.13 s/iter (≈ 7 min per
#             3000-iteration run), DoGo ≈ 0.5 s/iter (≈ 25 min per seed); ≈ 2.5–3 h in all
#   mutual    issue 22 on the balanced classification data: R18×0.25 and ×0.5 alone, DML, DCM,
#             FFSD (same architecture twice; ×0.25 with ×0.5), each mutual network against the
#             same network alone and FFSD's leader against DML, on the balanced and the
#             long-tailed (cls_lt_*) data; on detection, DML between
#             Co-LAD's PAA pair against each alone and against Co-LAD
#   data1     the claims in DATA1_CLAIMS on data seed 1 (its teachers retrained on that data; the
#             shipped detection teachers stay, trained on data seed 0)
#
# Runs that exist are skipped (`--resume` skips finished seeds and resumes a killed one); one
# training runs at a time. Each run is deterministic, so a rerun prints the same tables.
#
#   tools/seed_evidence.sh --list            # what would run, and what is done (trains nothing)
#   tools/seed_evidence.sh [GROUP...]        # from the repository root
#   SEEDS=3 SEEDS_SMALL=5 DATA1_CLAIMS="chen lad cbd" tools/seed_evidence.sh
#
# Run time on the 2-core CPU, at ~6–7 min per Faster R-CNN distillation seed and ~4 min per
# student-alone seed (README): chen ≈ 3 seeds × (9 distillation rows + 1 baseline) ≈ 3.5 h; the
# others were measured single-seed by tools/paa_evidence.sh (~40 min) and tools/cls_evidence.sh
# (~1.5 h), so ≈ 3× and 5× those. The total CPU time is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-3}
SEEDS_SMALL=${SEEDS_SMALL:-5}
DATA1_CLAIMS=${DATA1_CLAIMS:-"chen lad lad_kd colad hints simclr cbd"}
OUT=${OUT:-runs/seed_evidence}
LIST=0
PICKED=()
for a in "$@"; do
  case $a in
    --list) LIST=1 ;;
    teachers|chen|paa|simclr|cbd|backbone|feat_cross|feat_paa|feat_frcnn|online|fed|ssl|mutual|data1) PICKED+=("$a") ;;
    *) echo "seed_evidence.sh: unknown argument $a (groups: teachers chen paa simclr cbd backbone feat_cross feat_paa feat_frcnn online fed ssl mutual data1; --list)" >&2; exit 2 ;;
  esac
done
[ ${#PICKED[@]} -gt 0 ] || PICKED=(teachers chen paa simclr cbd backbone feat_cross feat_paa feat_frcnn online fed ssl mutual data1)
wanted() { [[ " ${PICKED[*]} " == *" $1 "* ]]; }

# KDET names a built binary to use (e.g. a copy, so that builds meanwhile do not replace it).
if [ -z "${KDET:-}" ]; then
  KDET=target/release/kdet
  [ $LIST = 1 ] || cargo build --release --quiet
fi
[ $LIST = 1 ] || mkdir -p "$OUT"

# Seeds finished of runs/<name>: seed-<k> folders with eval.json.
finished() {
  local n=0 f
  for f in "runs/$1"/seed-*/eval.json; do [ -f "$f" ] && n=$((n + 1)); done
  echo $n
}

# A single-seed run (a teacher other arms read).
single() {
  local name=$1 config=${2:-configs/synth/$1.json}
  if [ -f "runs/$name/model.safetensors" ]; then
    echo "done      runs/$name (single seed)"
  elif [ $LIST = 1 ]; then
    echo "to train  runs/$name (single seed): $KDET train $config --fresh"
  else
    $KDET train "$config" --fresh
  fi
}

# A multi-seed arm: seeds(name, n, config, extra flags…)
seeds() {
  local name=$1 n=$2 config=${3:-configs/synth/$1.json}
  shift 3 || shift $#
  local done_n
  done_n=$(finished "$name")
  if [ $LIST = 1 ]; then
    [ -f "$config" ] || { echo "missing   $config" >&2; exit 1; }
    echo "$( [ "$done_n" -ge "$n" ] && echo 'done     ' || echo 'to train ' ) runs/$name: $done_n/$n seeds — $KDET train $config --seeds $n --resume $*"
  else
    $KDET train "$config" --seeds "$n" --resume "$@"
  fi
}

# compare(label, runs/… arms…): the table over seeds, kept under $OUT.
compare() {
  local label=$1
  shift
  if [ $LIST = 1 ]; then
    echo "compare   $label: $*"
    return
  fi
  echo
  echo "## $label"
  $KDET compare "$@" | tee "$OUT/$label.md"
}

# Another network of a multi-network run as an arm: net_arm(dir, net, kind) lists
# dir/seed-*/<net>_<kind>.json (kind: detections or predictions), one --arm list.
# The seeds every arm has (COMMON_SEEDS, set by compare_arms; empty = each arm's own), so that
# an arm taken to 5 seeds is still paired seed for seed with arms of 3.
COMMON_SEEDS=""
arm_seeds() {
  local dir=$1 d
  for d in "$dir"/seed-*; do
    [ -d "$d" ] || continue
    d=${d##*/seed-}
    if [ -z "$COMMON_SEEDS" ] || [[ " $COMMON_SEEDS " == *" $d "* ]]; then echo "$d"; fi
  done | sort -n
}
net_arm() {
  local dir=$1 net=$2 kind=$3 list=() k
  for k in $(arm_seeds "$dir"); do list+=("$dir/seed-$k/${net}_${kind}.json"); done
  local IFS=,
  echo "${list[*]}"
}
# Co-LAD's network 1 as an arm: its detections in each seed folder.
colad_net1() { net_arm "$1" net1 detections; }
seed_list() {
  local dir=$1 list=() k
  for k in $(arm_seeds "$dir"); do list+=("$dir/seed-$k"); done
  local IFS=,
  echo "${list[*]}"
}

# compare_arms(label, arm…): compare over --arm lists, each arm a multi-seed run folder (its
# evaluated network) or DIR:NET:KIND, another of its networks (net_arm DIR NET KIND).
compare_arms() {
  local label=$1 a dir net kind args=()
  shift
  if [ $LIST = 1 ]; then
    echo "compare   $label: $*"
    return
  fi
  # Pair over the seeds all arms have.
  local common="" seeds_a
  COMMON_SEEDS=""
  for a in "$@"; do
    seeds_a=$(arm_seeds "${a%%:*}" | tr '\n' ' ')
    if [ -z "$common" ]; then common=$seeds_a; else
      common=$(comm -12 <(tr ' ' '\n' <<<"$common" | sort) <(tr ' ' '\n' <<<"$seeds_a" | sort) | sort -n | tr '\n' ' ')
    fi
  done
  COMMON_SEEDS=$common
  for a in "$@"; do
    case $a in
      *:*:*)
        IFS=: read -r dir net kind <<<"$a"
        args+=(--arm "$(net_arm "$dir" "$net" "$kind")") ;;
      *) args+=(--arm "$(seed_list "$a")") ;;
    esac
  done
  COMMON_SEEDS=""
  compare "$label" "${args[@]}"
}

CHEN_ROWS=(frcnn_distill_l2_regression frcnn_distill_bounded_regression frcnn_distill_soft_ce
  frcnn_distill_weighted_kd frcnn_distill_hint_noadapt frcnn_distill_hint frcnn_distill_hint_fpn
  frcnn_distill_kd)
PAA_ROWS=(lad lad_kd paa_hint_from_frcnn paa_hint_from_frcnn_light)
SIMCLR_ROWS=(cls_simclr cls_simclr_x4 cls_simclr_self cls_simclr_self_t2 cls_simclr_self_lr cls_simclr_self_t1)
FEAT_CROSS_ROWS=(paa_hint_from_frcnn paa_pkd_from_frcnn paa_cwd_from_frcnn paa_mgd_from_frcnn)
FEAT_PAA_ROWS=(paa_pkd paa_cwd paa_mgd paa_fgd lad lad_pkd)
FEAT_FRCNN_ROWS=(frcnn_distill_hint frcnn_pkd frcnn_cwd frcnn_mgd frcnn_fgd)
CBD_ROWS=(cls_lt_balanced cls_lt_cbd cls_lt_cbd_ens cls_lt_cbd_ens_seeds)

if wanted teachers; then
  for t in cls_teacher cls_teacher_x4 cls_student cls_lt_instance cls_lt_teacher_aug \
    cls_lt_teacher_seed1 cls_simclr; do single $t; done
  for run in cls_simclr cls_student; do
    if [ $LIST = 1 ]; then
      echo "$( [ -f runs/$run/backbone.safetensors ] && echo 'done     ' || echo 'to export' ) runs/$run/backbone.safetensors"
    elif [ ! -f runs/$run/backbone.safetensors ]; then
      $KDET export --config configs/synth/$run.json --weights runs/$run/model.safetensors \
        --out runs/$run/backbone.safetensors --backbone-only
    fi
  done
fi

if wanted chen; then
  seeds frcnn_distill "$SEEDS" configs/synth/frcnn_distill.json --baseline
  for r in "${CHEN_ROWS[@]}"; do seeds "$r" "$SEEDS"; done
  compare chen_default runs/frcnn_distill_baseline runs/frcnn_distill
  compare chen_ablation runs/frcnn_distill_baseline $(printf 'runs/%s ' "${CHEN_ROWS[@]}") runs/frcnn_distill
fi

if wanted paa; then
  for r in paa_student "${PAA_ROWS[@]}" paa_partner colad; do seeds "$r" "$SEEDS"; done
  compare paa_student runs/paa_student $(printf 'runs/%s ' "${PAA_ROWS[@]}")
  # Network 1 of Co-LAD (the student's architecture) against the student alone; network 2
  # (model.safetensors) against the partner alone.
  if [ $LIST = 1 ]; then
    echo "compare   colad_net1: --arm runs/paa_student/seed-* --arm runs/colad/seed-*/net1_detections.json"
  else
    compare colad_net1 --arm "$(seed_list runs/paa_student)" --arm "$(colad_net1 runs/colad)"
  fi
  compare colad_net2 runs/paa_partner runs/colad
fi

if wanted simclr; then
  for r in cls_student "${SIMCLR_ROWS[@]}"; do seeds "$r" "$SEEDS"; done
  compare simclr runs/cls_student $(printf 'runs/%s ' "${SIMCLR_ROWS[@]}")
fi

if wanted cbd; then
  for r in cls_lt_instance "${CBD_ROWS[@]}"; do seeds "$r" "$SEEDS_SMALL"; done
  compare cbd_vs_instance runs/cls_lt_instance $(printf 'runs/%s ' "${CBD_ROWS[@]}")
  compare cbd_vs_balanced runs/cls_lt_balanced runs/cls_lt_cbd runs/cls_lt_cbd_ens runs/cls_lt_cbd_ens_seeds
fi

if wanted backbone; then
  for r in frcnn_student frcnn_student_from_cls_plain frcnn_student_from_cls; do seeds "$r" "$SEEDS"; done
  compare backbone runs/frcnn_student runs/frcnn_student_from_cls_plain runs/frcnn_student_from_cls
  compare backbone_simclr runs/frcnn_student_from_cls_plain runs/frcnn_student_from_cls
fi

if wanted feat_cross; then
  for r in paa_student "${FEAT_CROSS_ROWS[@]}"; do seeds "$r" "$SEEDS"; done
  compare feat_cross runs/paa_student $(printf 'runs/%s ' "${FEAT_CROSS_ROWS[@]}")
  compare feat_cross_vs_hints $(printf 'runs/%s ' "${FEAT_CROSS_ROWS[@]}")
fi

if wanted feat_paa; then
  for r in paa_student "${FEAT_PAA_ROWS[@]}"; do seeds "$r" "$SEEDS"; done
  compare feat_paa runs/paa_student $(printf 'runs/%s ' "${FEAT_PAA_ROWS[@]}")
  compare feat_lad_pkd runs/lad runs/lad_pkd
fi

if wanted feat_frcnn; then
  seeds frcnn_distill "$SEEDS" configs/synth/frcnn_distill.json --baseline
  for r in "${FEAT_FRCNN_ROWS[@]}"; do seeds "$r" "$SEEDS"; done
  compare feat_frcnn runs/frcnn_distill_baseline $(printf 'runs/%s ' "${FEAT_FRCNN_ROWS[@]}") runs/frcnn_distill
  compare feat_frcnn_vs_hints $(printf 'runs/%s ' "${FEAT_FRCNN_ROWS[@]}")
fi

if wanted online; then
  if [ $LIST = 1 ]; then tools/online_evidence.sh --list; else tools/online_evidence.sh; fi
fi

if wanted fed; then
  # Global top-1 after 30 rounds, FedNTD against FedAvg, paired by seed (same clients sampled).
  for p in a01 a05 shards; do
    seeds "fedavg_$p" "$SEEDS"
    seeds "fedntd_$p" "$SEEDS"
    compare "fed_$p" "runs/fedavg_$p" "runs/fedntd_$p"
  done
  # FedX and its local terms alone: no labels; `kdet train --seeds` prints each arm's k-NN and
  # linear-probe top-1 over seeds (compare would read the untrained classifier head).
  seeds fedx_local_a05 "$SEEDS"
  seeds fedx_a05 "$SEEDS"
fi

if wanted ssl; then
  # The pretrained and fine-tuned networks other arms start from or learn from: one seed each.
  for t in cls_simclr_pretrain cls_simclr_pretrain_big cls_simclr_finetune_big; do single $t; done
  for r in cls_student_10pct cls_simclr_finetune cls_simclr_recipe cls_ssl_alone cls_dogo; do
    seeds "$r" "$SEEDS"
  done
  compare ssl_finetune runs/cls_student_10pct runs/cls_simclr_finetune
  compare ssl_recipe runs/cls_student_10pct runs/cls_simclr_recipe
  compare ssl_dogo runs/cls_ssl_alone runs/cls_dogo
fi

if wanted mutual; then
  # Classification (balanced data): each network alone, then every method. DML and DCM evaluate
  # net1 (model.safetensors); their net2 is an arm of its own. FFSD's leader is net1.
  for r in cls_student cls_student_x05 cls_dml cls_dml_mixed cls_dcm cls_dcm_mixed cls_ffsd \
    cls_ffsd_mixed; do seeds "$r" "$SEEDS"; done
  compare_arms online_r18x025_twins runs/cls_student runs/cls_dml runs/cls_dml:net2:predictions \
    runs/cls_dcm runs/cls_dcm:net2:predictions runs/cls_ffsd
  # Mixed: DML / DCM pair ×0.25 (net1) with ×0.5 (net2); FFSD's ×0.5 leader learns from two
  # ×0.25 students (its students share one width).
  compare_arms online_mixed_r18x025 runs/cls_student runs/cls_dml_mixed runs/cls_dcm_mixed
  compare_arms online_mixed_r18x05 runs/cls_student_x05 runs/cls_dml_mixed:net2:predictions \
    runs/cls_dcm_mixed:net2:predictions runs/cls_ffsd_mixed
  compare_arms ffsd_leader_vs_dml runs/cls_dml runs/cls_ffsd
  compare_arms ffsd_mixed_leader_vs_dml runs/cls_dml_mixed:net2:predictions runs/cls_ffsd_mixed
  # Long-tailed data (cls_lt_base: imbalance 100, cosine heads, instance sampling), the same
  # pairings; many/medium/few-shot top-1 in every table.
  for r in cls_lt_instance cls_lt_x05 cls_lt_dml cls_lt_dml_mixed cls_lt_dcm cls_lt_dcm_mixed \
    cls_lt_ffsd cls_lt_ffsd_mixed; do seeds "$r" "$SEEDS"; done
  compare_arms lt_online_r18x025_twins runs/cls_lt_instance runs/cls_lt_dml \
    runs/cls_lt_dml:net2:predictions runs/cls_lt_dcm runs/cls_lt_dcm:net2:predictions runs/cls_lt_ffsd
  compare_arms lt_online_mixed_r18x025 runs/cls_lt_instance runs/cls_lt_dml_mixed runs/cls_lt_dcm_mixed
  compare_arms lt_online_mixed_r18x05 runs/cls_lt_x05 runs/cls_lt_dml_mixed:net2:predictions \
    runs/cls_lt_dcm_mixed:net2:predictions runs/cls_lt_ffsd_mixed
  compare_arms lt_ffsd_leader_vs_dml runs/cls_lt_dml runs/cls_lt_ffsd
  # Detection: DML between Co-LAD's PAA pair (evaluates net2, the ×0.5 partner).
  for r in paa_student paa_partner colad paa_dml; do seeds "$r" "$SEEDS"; done
  compare_arms dml_paa_net1 runs/paa_student runs/paa_dml:net1:detections runs/colad:net1:detections
  compare_arms dml_paa_net2 runs/paa_partner runs/paa_dml runs/colad
fi

# data1: configs on data seed 1, written under $OUT/data1/; teachers that are runs of this
# repository point at their data-1 runs (runs/<teacher>_data1/), trained first.
data1_config() {
  local name=$1 dir="$OUT/data1"
  mkdir -p "$dir"
  python3 - "$name" "$dir" <<'PY'
import json, os, re, sys
name, out = sys.argv[1], sys.argv[2]
root = os.getcwd()
src = os.path.join(root, "configs/synth", name + ".json")
own = json.load(open(src))
cfg = {"base": src, "data": {"synthetic": {"seed": 1}},
       "output_dir": os.path.join(root, "runs", name + "_data1")}
def to_data1(w):
    m = re.match(r"(?:\.\./\.\./)?runs/([^/]+)/(.*)", w)
    return os.path.join(root, "runs", m.group(1) + "_data1", m.group(2)) if m else os.path.join(os.path.dirname(src), w)
if "teachers" in own:
    cfg["teachers"] = [dict(t, weights=to_data1(t["weights"])) if not t["weights"].startswith("hf://") else t
                       for t in own["teachers"]]
json.dump(cfg, open(os.path.join(out, name + ".json"), "w"), indent=1)
PY
  echo "$dir/$name.json"
}
data1_seeds() {
  local name=$1 n=$2
  shift 2
  if [ $LIST = 1 ]; then
    echo "data1     runs/${name}_data1: $(finished "${name}_data1")/$n seeds (config $OUT/data1/$name.json)"
  else
    seeds "${name}_data1" "$n" "$(data1_config "$name")" "$@"
  fi
}
data1_single() {
  if [ $LIST = 1 ]; then
    echo "data1     runs/$1_data1 (single seed teacher)"
  else
    single "$1_data1" "$(data1_config "$1")"
  fi
}

if wanted data1; then
  for claim in $DATA1_CLAIMS; do
    case $claim in
      chen)
        data1_seeds frcnn_distill "$SEEDS" --baseline
        compare data1_chen runs/frcnn_distill_data1_baseline runs/frcnn_distill_data1 ;;
      lad|lad_kd|colad)
        data1_seeds paa_student "$SEEDS"
        data1_seeds "$claim" "$SEEDS"
        compare "data1_$claim" runs/paa_student_data1 "runs/${claim}_data1" ;;
      hints)
        data1_seeds paa_student "$SEEDS"
        data1_seeds paa_hint_from_frcnn "$SEEDS"
        compare data1_hints runs/paa_student_data1 runs/paa_hint_from_frcnn_data1 ;;
      simclr)
        data1_single cls_teacher
        data1_seeds cls_student "$SEEDS"
        data1_seeds cls_simclr "$SEEDS"
        compare data1_simclr runs/cls_student_data1 runs/cls_simclr_data1 ;;
      cbd)
        data1_single cls_lt_instance
        data1_single cls_lt_teacher_aug
        for r in cls_lt_instance cls_lt_balanced cls_lt_cbd cls_lt_cbd_ens; do data1_seeds "$r" "$SEEDS_SMALL"; done
        compare data1_cbd runs/cls_lt_balanced_data1 runs/cls_lt_cbd_data1 runs/cls_lt_cbd_ens_data1
        compare data1_cbd_vs_instance runs/cls_lt_instance_data1 runs/cls_lt_cbd_data1 runs/cls_lt_cbd_ens_data1 ;;
      *) echo "seed_evidence.sh: DATA1_CLAIMS: unknown claim $claim (chen lad lad_kd colad hints simclr cbd)" >&2; exit 2 ;;
    esac
  done
fi

if [ $LIST = 0 ]; then
  echo
  echo "wall time ${SECONDS} s; CPU time of the trainings (user, system; shell, then children):"
  times
fi
