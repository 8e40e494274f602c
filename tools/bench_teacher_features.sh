#!/usr/bin/env bash
# Before/after timing of the frozen teacher's features-only pass (issue 21: a teacher whose
# terms read taps only runs `Model::features`, not the RPN / dense head). Two kdet binaries,
# built from the commits to compare, run each measurement back to back, ROUNDS times (the
# side going first alternating), so that a shared machine's load falls on both alike:
#   - `kdet bench row` for the feature-term rows (distill_{pkd,cwd,mgd,fgd}_synth) and, as a
#     control that reads the teacher's heads (its path is unchanged), distill_step_synth;
#   - a short training (ITERS iterations, every step logged) of configs/synth/frcnn_pkd.json and
#     configs/synth/paa_pkd_from_frcnn.json (Faster R-CNN teachers; CONFIGS=paa_pkd for a PAA
#     one): the median `time` of its steps after the first 5, and its metrics.jsonl (per-step
#     losses, end-of-run evaluation), which must be identical for the two binaries.
# Prints per row the median over rounds of each side's time and the median per-round ratio
# after / before, with the lowest and highest round.
#
# Usage (from the repository root): tools/bench_teacher_features.sh BEFORE AFTER
#   env: ROUNDS (default 4), RUNS / WARMUP of each bench row (10 / 2), ITERS (30),
#        ROWS (the rows above; ROWS=" " for none), CONFIGS (the two configs' names),
#        OUT (a scratch folder).
set -euo pipefail
before=${1:?before binary}
after=${2:?after binary}
rounds=${ROUNDS:-4}
runs=${RUNS:-10}
warmup=${WARMUP:-2}
iters=${ITERS:-30}
rows=${ROWS:-distill_pkd_synth distill_cwd_synth distill_mgd_synth distill_fgd_synth distill_step_synth}
configs=${CONFIGS:-frcnn_pkd paa_pkd_from_frcnn}
out=${OUT:-$(mktemp -d /tmp/kdet-teacher-features.XXXXXX)}
mkdir -p "$out"
root=$(pwd)

# A short run of configs/synth/$1.json into $out/run-$1-$2 (the synthetic data as the shipped
# config makes it; 16 validation images, so the end-of-run evaluation stays short).
short_config() {
    cat > "$out/$1-$2.json" <<EOF
{"base": "$root/configs/synth/$1.json",
 "solver": {"iterations": $iters, "log_every": 1, "warmup_iters": 100},
 "data": {"synthetic": {"val": 16}},
 "output_dir": "$out/run-$1-$2"}
EOF
}

# One training of config $1 by binary $2 (side $3, round $4): its median step time after the
# first 5 steps, and every record of its metrics.jsonl without the measurements.
train_once() {
    short_config "$1" "$3"
    "$2" train "$out/$1-$3.json" --fresh > /dev/null 2>> "$out/train-$3.log"
    python3 - "$out/run-$1-$3/metrics.jsonl" "$1" "$4" >> "$out/train-$3.jsonl" <<'EOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"iter"' in l]
times = [x["time"] * 1e3 for x in recs if "time" in x][5:]
records = [{k: v for k, v in x.items() if k not in ("time", "data_wait", "rss_mb")} for x in recs]
print(json.dumps({"name": sys.argv[2], "round": int(sys.argv[3]),
                  "median_ms": statistics.median(times), "records": records}))
EOF
}

binary() {
    if [ "$1" = before ]; then echo "$before"; else echo "$after"; fi
}

for r in $(seq 1 "$rounds"); do
    sides="before after"
    [ $((r % 2)) = 0 ] && sides="after before"
    for row in $rows; do
        for side in $sides; do
            "$(binary "$side")" bench row "$row" --runs "$runs" --warmup "$warmup" --json \
                >> "$out/bench-$side.jsonl" 2>> "$out/bench-$side.log"
        done
    done
    for c in $configs; do
        for side in $sides; do
            train_once "$c" "$(binary "$side")" "$side" "$r"
        done
    done
    echo "round $r done" >&2
done

python3 - "$out" <<'EOF'
import json, os, statistics, sys
out = sys.argv[1]
def load(side, kind):
    rows = {}
    path = f"{out}/{kind}-{side}.jsonl"
    for l in open(path) if os.path.exists(path) else []:
        x = json.loads(l)
        rows.setdefault(x["name"], []).append(x)
    return rows
for kind in ("bench", "train"):
    b, a = load("before", kind), load("after", kind)
    for name in b:
        tb = [x["median_ms"] for x in b[name]]
        ta = [x["median_ms"] for x in a[name]]
        ratios = sorted(y / x for x, y in zip(tb, ta))
        line = (f"{kind} {name}: before {statistics.median(tb):.1f} ms, after "
                f"{statistics.median(ta):.1f} ms, after/before {statistics.median(ratios):.3f} "
                f"[{ratios[0]:.3f}, {ratios[-1]:.3f}] over {len(ratios)} rounds")
        if kind == "train":
            same = all(x["records"] == y["records"] for x in b[name] for y in a[name])
            line += f"; metrics.jsonl identical (timings aside): {same}"
        print(line)
print(f"(raw records under {out})")
EOF
