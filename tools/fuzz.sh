#!/usr/bin/env bash
# Fuzz kdet's readers of user files (tests/fuzz.rs) for longer than `cargo test` does.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Each target runs for SECONDS_PER_TARGET (default 600) in rounds of KDET_FUZZ_CASES cases
# (default 64), the first round seeded with KDET_FUZZ_SEED (default: the current time; printed,
# so a failure can be replayed with the same seed). Targets (default: all) are the test names of
# tests/fuzz.rs without the `fuzz_` prefix, e.g. `coco_ground_truth_mutated`. The test binary is
# built once (-j 1) and copied aside, so editing the tree while it runs changes nothing; targets
# run one after another, single-threaded. Logs go to $KDET_FUZZ_LOGS (default
# target/fuzz-logs/). A failure prints the
# shrunk input and makes the script exit non-zero: add it to the regression cases at the end of
# tests/fuzz.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(coco_ground_truth_structured coco_ground_truth_mutated coco_detections_structured
           coco_detections_mutated config_base_chain_structured config_base_chain_mutated
           image_decoding_mutated weights_structured weights_mutated sidecar_structured
           sidecar_mutated)
fi
bin=$(cargo test --release -j 1 --test fuzz --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "fuzz" and m.get("executable"):
        print(m["executable"])')
logs=${KDET_FUZZ_LOGS:-target/fuzz-logs}
mkdir -p "$logs"
cp "$bin" "$logs/fuzz-bin"
export KDET_FUZZ_SECS=$secs
export KDET_FUZZ_CASES=${KDET_FUZZ_CASES:-64}
export KDET_FUZZ_SEED=${KDET_FUZZ_SEED:-$(date +%s)}
echo "fuzz binary from $(git rev-parse --short HEAD 2>/dev/null || echo '?'), seed ${KDET_FUZZ_SEED}"
failed=0
for t in "${targets[@]}"; do
  echo "== fuzz_$t: ${secs}s, ${KDET_FUZZ_CASES} cases per round"
  start=$(date +%s)
  set +e
  "$logs/fuzz-bin" --exact "fuzz_$t" --nocapture --test-threads 1 > "$logs/$t.log" 2>&1
  rc=$?
  set -e
  grep -E "fuzz target|panicked|minimal failing input|test result" "$logs/$t.log" || true
  echo "   exit $rc, took $(( $(date +%s) - start ))s, log $logs/$t.log"
  [ $rc -eq 0 ] || failed=1
done
exit $failed
