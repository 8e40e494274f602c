#!/usr/bin/env bash
# Evidence for online distillation on a video stream (issue 24; Mullapudi et al. 2019): on
# synthetic fixed-camera streams (`kdet synth --task video`, several scene cuts) compare
#   adaptive   the online student with the paper's policy (configs/synth/online_frcnn.json)
#   no_update  the same student never updated (max_updates 0): trained offline on other data
#   stride8    a fixed stride of 8 frames (min = max = 8)
#   stride64   a fixed stride of 64 frames
#   teacher    the teacher on every frame (measured inside the adaptive run, outside its cost)
# by COCO AP / AP50 of every frame's detections against the truth, the fraction of frames the
# teacher ran on and the cost against running the teacher on every frame, over STREAMS streams
# (video seeds 0, 1, …). The student starts from runs/online_student64 (configs/synth/
# online_student.json: the narrow Faster R-CNN student at its own 64-px input, half the
# teacher's 128, with 100 proposals, trained on the synthetic detection set; trained first when
# missing, ~5 min on the 2-core CPU). An arm interrupted earlier is continued (--resume).
#
#   tools/online_evidence.sh --list     # what would run and what is done
#   tools/online_evidence.sh            # from the repository root
#   FRAMES=3000 SCENE=750 STREAMS=3 tools/online_evidence.sh
#
# Time on the 2-core CPU: a 200-frame stream of the adaptive arm with --teacher-every-frame
# takes ~40 s (a short-trained offline student; the teacher on every frame is most of it); an
# arm's time grows linearly with FRAMES. The defaults (1200 frames, 4 scenes, 3 streams, 4 arms)
# take ≈ 30–45 min.
# Outputs: runs/online_evidence64/stream-<s>/{video,<arm>}/ and runs/online_evidence64/online.md
# (runs/online_evidence and runs/online_student: the earlier student at the teacher's 128 px).
set -euo pipefail
cd "$(dirname "$0")/.."
FRAMES=${FRAMES:-1200}
SCENE=${SCENE:-300}
STREAMS=${STREAMS:-3}
OUT=${OUT:-runs/online_evidence64}
KDET=target/release/kdet
LIST=0
[ "${1:-}" = "--list" ] && LIST=1
ARMS=(adaptive no_update stride8 stride64)

# The online section of each arm (merged over configs/synth/online_frcnn.json).
arm_online() {
  case $1 in
    adaptive) echo '{}' ;;
    no_update) echo '{"max_updates": 0, "min_stride": 1000000, "max_stride": 1000000}' ;;
    stride8) echo '{"min_stride": 8, "max_stride": 8}' ;;
    stride64) echo '{"min_stride": 64, "max_stride": 64}' ;;
  esac
}

if [ ! -f runs/online_student64/model.safetensors ]; then
  if [ $LIST = 1 ]; then
    echo "to train  runs/online_student64: $KDET train configs/synth/online_student.json --fresh"
  else
    cargo build --release --quiet
    $KDET train configs/synth/online_student.json --fresh
  fi
else
  echo "done      runs/online_student64"
fi
[ $LIST = 1 ] || cargo build --release --quiet

for s in $(seq 0 $((STREAMS - 1))); do
  dir="$OUT/stream-$s"
  if [ -f "$dir/video/annotations.json" ]; then
    echo "done      $dir/video ($FRAMES frames requested)"
  elif [ $LIST = 1 ]; then
    echo "to make   $dir/video: $KDET synth --task video --seed $s --frames $FRAMES --scene-length $SCENE"
  else
    $KDET synth --task video --seed "$s" --frames "$FRAMES" --scene-length "$SCENE" --out "$dir/video"
  fi
  for arm in "${ARMS[@]}"; do
    run="$dir/$arm"
    if [ -f "$run/online.json" ]; then
      echo "done      $run"
      continue
    fi
    extra=()
    [ "$arm" = adaptive ] && extra=(--teacher-every-frame)
    # An arm stopped earlier (Ctrl-C, a kill) continues from its last checkpoint.
    [ -f "$run/checkpoint.safetensors" ] && extra+=(--resume)
    if [ $LIST = 1 ]; then
      echo "to run    $run: $KDET online <online_frcnn.json + $(arm_online $arm)> $dir/video/frames --truth $dir/video/annotations.json ${extra[*]}"
      continue
    fi
    mkdir -p "$dir/configs"
    cfg="$dir/configs/$arm.json"
    python3 - "$cfg" "$(arm_online $arm)" "$run" <<'PY'
import json, os, sys
cfg, online, run = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
root = os.getcwd()
json.dump({"base": os.path.join(root, "configs/synth/online_frcnn.json"), "online": online,
           "output_dir": os.path.join(root, run)}, open(cfg, "w"), indent=1)
PY
    $KDET online "$cfg" "$dir/video/frames" --truth "$dir/video/annotations.json" "${extra[@]}"
  done
done
[ $LIST = 1 ] && exit 0

python3 - "$OUT" "$STREAMS" "${ARMS[@]}" <<'PY' | tee "$OUT/online.md"
import json, statistics, sys
out, n, arms = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(arm, s):
    return json.load(open(f"{out}/stream-{s}/{arm}/online.json"))
def cell(v):
    v = [x for x in v if x is not None]
    if not v:
        return "—"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.3f} ± {sd:.3f}"
print(f"| arm | AP | AP50 | teacher on frames | cost vs teacher every frame | updates |  ({n} streams, mean ± sd)")
print("|---|---|---|---|---|---|")
for arm in arms:
    r = [load(arm, s) for s in range(n)]
    print(f"| {arm} | {cell([x['student_ap'] for x in r])} | {cell([x['student_ap50'] for x in r])} | "
          f"{cell([x['teacher_fraction'] for x in r])} | {cell([x['cost_ratio'] for x in r])} | "
          f"{cell([x['updates'] for x in r])} |")
r = [load("adaptive", s) for s in range(n)]
print(f"| teacher, every frame | {cell([x['teacher_ap'] for x in r])} | {cell([x['teacher_ap50'] for x in r])} | 1 | 1 | — |")
PY
