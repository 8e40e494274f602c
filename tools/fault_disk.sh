#!/usr/bin/env bash
# A real full disk (a small tmpfs; needs root) at the first and at a later checkpoint of a tiny
# run: kdet must stop naming the file and "No space left on device", leave no temporary file,
# keep the earlier checkpoint, and resume to the uninterrupted run once there is room. The
# portable version (a file-size limit instead of a small disk) is
# tests/reliability.rs::disk_full_at_the_first_and_a_later_checkpoint_keeps_the_last_one.
#
#   sudo tools/fault_disk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
kdet=$PWD/target/release/kdet
base=$PWD/configs/synth/frcnn_student.json
work=$(mktemp -d)
disk=$work/disk
mkdir -p "$disk"
cleanup() { umount "$disk" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cfg() { # name output_dir
  cat > "$work/$1.json" <<JSON
{"base": "$base",
 "data": {"synthetic": {"seed": 3, "train": 8, "val": 4, "size": 64, "classes": 3, "cache_dir": "$work/cache"}, "workers": 2},
 "model": {"input": {"min_size": 64, "max_size": 64}},
 "solver": {"iterations": 4, "batch_size": 2, "lr": 0.01, "warmup_iters": 1, "log_every": 1,
            "checkpoint_every": 2, "eval_every": 2, "schedule": {"type": "constant"}},
 "output_dir": "$2"}
JSON
}
cfg a "$work/a"
"$kdet" train "$work/a.json" > /dev/null 2>&1
ck=$(stat -c %s "$work/a/checkpoint.safetensors")
echo "checkpoint: $ck bytes"

check_failed() { # log
  grep -q "No space left on device" "$1" || { echo "no ENOSPC message:"; cat "$1"; exit 1; }
  grep -q "checkpoint.safetensors" "$1" || { echo "file not named:"; cat "$1"; exit 1; }
  if ls -a "$disk/b" | grep -q '\.tmp$'; then echo "temporary file left"; exit 1; fi
}

# 1. Room for everything but the first checkpoint.
mount -t tmpfs -o size=$((ck / 2)) tmpfs "$disk"
cfg b "$disk/b"
if "$kdet" train "$work/b.json" > "$work/1.log" 2>&1; then echo "run 1 should fail"; exit 1; fi
check_failed "$work/1.log"
test ! -e "$disk/b/checkpoint.safetensors"
echo "first checkpoint, disk full: $(grep -o 'error: .*' "$work/1.log")"
umount "$disk"

# 2. Room for one checkpoint but not for the next one's temporary file beside it.
mount -t tmpfs -o size=$((ck * 3 / 2)) tmpfs "$disk"
if "$kdet" train "$work/b.json" > "$work/2.log" 2>&1; then echo "run 2 should fail"; exit 1; fi
check_failed "$work/2.log"
cp "$disk/b/checkpoint.safetensors" "$work/kept.safetensors"
echo "later checkpoint, disk full: $(grep -o 'error: .*' "$work/2.log")"
# 3. More room: the kept checkpoint resumes to the uninterrupted run.
mount -o remount,size=$((ck * 4)) "$disk"
"$kdet" train "$work/b.json" --resume > "$work/3.log" 2>&1 || { cat "$work/3.log"; exit 1; }
grep -q "resuming from .* at iteration 2" "$work/3.log"
cmp "$work/a/model.safetensors" "$disk/b/model.safetensors"
echo "resumed after freeing space: model identical to the uninterrupted run"
