#!/usr/bin/env bash
# What rate limits cost when none is set (issue 20: "zero cost when no limit is set"):
# `tessera bench` on a null bdev, 4 KiB randread, QD 128, one core, busy, statistics
# on (as `serve` counts), two builds alternated round by round (the order swaps each
# round), then the median IOPS of each and new/old. Then what a limit gives:
# the new build with --qos rw_ios_per_sec=20000 on one core and on two.
# Usage: OLD=BINARY NEW=BINARY bench/qos_overhead.sh [ROUNDS] [SECONDS]
# Run it on a quiet machine (no compiler running).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-7}
SECS=${2:-3}
: "${OLD:?OLD=the build without rate limits}" "${NEW:?NEW=the build with them}"
export RUST_LOG=warn
med() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v))' "$@"; }
iops() { python3 -c 'import json,sys; print(round(json.load(sys.stdin)["iops"]))'; }
run() { "$1" bench --bdev null:1T -w randread -q 128 -t "$SECS" -m 0 --idle busy --json "${@:2}" | iops; }

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "# $ROUNDS rounds of $SECS s, old $OLD, new $NEW"
old="" new=""
for r in $(seq 0 $((ROUNDS - 1))); do
  if [ $((r % 2)) -eq 0 ]; then order="OLD NEW"; else order="NEW OLD"; fi
  for which in $order; do
    if [ "$which" = OLD ]; then v=$(run "$OLD"); old="$old $v"; else v=$(run "$NEW"); new="$new $v"; fi
    echo "{\"round\":$r,\"build\":\"$which\",\"iops\":$v}"
  done
done
o=$(med $old); n=$(med $new)
python3 - "$o" "$n" <<'PY'
import sys
o, n = map(float, sys.argv[1:])
print(f"median IOPS, no limit: old {o:,.0f}  new {n:,.0f}  new/old {n/o:.4f}")
PY
for cores in 0 0,1; do
  v=$("$NEW" bench --bdev null:1T -w randread -q 128 -t "$SECS" -m "$cores" --idle busy --json --qos rw_ios_per_sec=20000 | iops)
  echo "limit 20000 IOPS, cores $cores: $v IOPS"
done
