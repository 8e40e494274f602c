#!/usr/bin/env bash
# kill -9 a tiny training run at random moments, many times, resuming after each kill, and
# check that the result is bit for bit the uninterrupted run (metrics without wall-clock times,
# model.safetensors, detections.json, eval.json). The fast version of this is
# tests/reliability.rs::random_kills_then_resume_match_the_uninterrupted_run.
#
#   tools/fault_kill.sh [KILLS] [WORKDIR]
#
# Needs a release build (cargo build --release). Checkpoints every iteration, so many kills land
# inside a checkpoint or metrics write.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-30}
work=${2:-$(mktemp -d)}
kdet=$PWD/target/release/kdet
base=$PWD/configs/synth/frcnn_student.json
mkdir -p "$work"
cfg() { # name
  cat > "$work/$1.json" <<JSON
{"base": "$base",
 "data": {"synthetic": {"seed": 3, "train": 8, "val": 4, "size": 64, "classes": 3, "cache_dir": "$work/cache"}, "workers": 2},
 "model": {"input": {"min_size": 64, "max_size": 64}},
 "solver": {"iterations": 12, "batch_size": 2, "lr": 0.01, "warmup_iters": 1, "log_every": 1,
            "checkpoint_every": 1, "eval_every": 4, "schedule": {"type": "constant"}},
 "output_dir": "$work/$1"}
JSON
}
cfg a; cfg b
# The first run also generates the dataset: time the second.
"$kdet" train "$work/a.json" --fresh > "$work/a.log" 2>&1
t0=$(date +%s.%N)
"$kdet" train "$work/a.json" --fresh > "$work/a.log" 2>&1
full=$(echo "$(date +%s.%N) - $t0" | bc)
echo "uninterrupted run: ${full}s"
landed=0
for i in $(seq 1 "$kills"); do
  if [ -f "$work/b/checkpoint.safetensors" ]; then mode=--resume; else mode=--fresh; fi
  if [ -f "$work/b/model.safetensors" ] && [ "$mode" = --resume ]; then
    # Finished: start a new run to kill.
    mode=--fresh
  fi
  "$kdet" train "$work/b.json" $mode > "$work/b.log" 2>&1 &
  pid=$!
  sleep "$(echo "scale=3; $full * $RANDOM / 32768" | bc)"
  if kill -9 "$pid" 2>/dev/null; then
    landed=$((landed + 1))
    wait "$pid" 2>/dev/null || true
    m=$work/b/metrics.jsonl
    last=$(grep -o '"iter":[0-9]*' "$m" 2>/dev/null | tail -1 | cut -d: -f2 || true)
    torn=no
    if [ -s "$m" ] && [ -n "$(tail -c1 "$m")" ]; then torn=yes; fi
    tmps=$(ls -a "$work/b" 2>/dev/null | grep -c '\.tmp$' || true)
    echo "kill $i ($mode): last logged iteration ${last:-none}, torn last line: $torn, temporary files left: $tmps"
  else
    wait "$pid" 2>/dev/null || true
  fi
done
if [ -f "$work/b/checkpoint.safetensors" ]; then mode=--resume; else mode=--fresh; fi
"$kdet" train "$work/b.json" $mode > "$work/b.log" 2>&1 || { cat "$work/b.log"; exit 1; }
python3 - "$work/a" "$work/b" <<'PY'
import json, sys
a, b = sys.argv[1:]
def recs(d):
    out = []
    for l in open(f"{d}/metrics.jsonl"):
        r = json.loads(l); [r.pop(k, None) for k in ("time", "data_wait", "rss_mb")]; out.append(r)
    return out
assert recs(a) == recs(b), "metrics differ"
for f in ["model.safetensors", "detections.json"]:
    assert open(f"{a}/{f}", "rb").read() == open(f"{b}/{f}", "rb").read(), f + " differs"
assert json.load(open(f"{a}/eval.json"))["stats"] == json.load(open(f"{b}/eval.json"))["stats"]
PY
echo "$landed of $kills kills landed; resumed run identical to the uninterrupted one"
