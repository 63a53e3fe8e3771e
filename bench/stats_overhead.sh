#!/usr/bin/env bash
# What I/O statistics cost (issue 20): `tessera bench` on a null bdev, 4 KiB randread,
# QD 128, one core, busy, with statistics off, on (as `serve` counts) and on with a
# latency histogram (`bdev_enable_histogram`), in alternating rounds (off, on,
# histogram; the order rotates each round), then the median IOPS of each and the
# ratios on/off and histogram/off (the issue asks >= 0.95 with statistics on).
# Usage: [TESSERA=BINARY] bench/stats_overhead.sh [ROUNDS] [SECONDS]   Prints one JSON line per run, then
# a summary. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-7}
SECS=${2:-5}
if [ -n "${TESSERA:-}" ]; then
    T=$TESSERA # a given build (no cargo build)
else
    cargo build --release --quiet --bin tessera
    T=target/release/tessera
fi
export RUST_LOG=warn
med() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v))' "$@"; }
iops() { python3 -c 'import json,sys; print(json.load(sys.stdin)["iops"])'; }

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "# $($T --version), $ROUNDS rounds of $SECS s"
modes=(off on histogram)
declare -A runs=([off]="" [on]="" [histogram]="")
for r in $(seq 0 $((ROUNDS - 1))); do
  for j in 0 1 2; do
    m=${modes[$(((r + j) % 3))]}
    v=$($T bench --bdev null:1T -w randread -q 128 -t "$SECS" -m 0 --idle busy --stats "$m" --json | iops)
    echo "{\"round\":$r,\"stats\":\"$m\",\"iops\":$v}"
    runs[$m]="${runs[$m]} $v"
  done
done
off=$(med ${runs[off]})
on=$(med ${runs[on]})
hist=$(med ${runs[histogram]})
python3 - "$off" "$on" "$hist" <<'PY'
import sys
off, on, hist = map(float, sys.argv[1:])
print(f"median IOPS: off {off:,.0f}  on {on:,.0f}  histogram {hist:,.0f}")
print(f"on/off {on/off:.3f}  histogram/off {hist/off:.3f}  (target on/off >= 0.95)")
PY
