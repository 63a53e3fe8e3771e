#!/usr/bin/env bash
# First writes into fresh segments (issue 18): a 4 TiB thin disk on a null data pool with
# its metadata on a file (io_uring), one core, 4 KiB random writes at QD 64 for SECONDS —
# on a disk this big nearly every write maps a fresh segment, so each is a mapping
# fault resolved by the controller. Builds given with `--tessera` (repeatable) are run
# in turn, ROUNDS times, alternating; one line per run: build, writes per second, p99.
#
#   bench/first_writes.sh [--tessera PATH]... [--seconds 6] [--rounds 5]
set -euo pipefail
cd "$(dirname "$0")/.."

builds=()
seconds=6
rounds=5
while [ $# -gt 0 ]; do
    case "$1" in
        --tessera) builds+=("$2"); shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
. bench/support/tessera_build.sh
if [ "${#builds[@]}" -eq 0 ]; then
    T=
    tessera_build
    builds=("$T")
fi
work=$(mktemp -d /var/tmp/tessera-firstwrites.XXXXXX)
trap 'rm -rf "$work"' EXIT
null_pool_yaml "$work/meta.img" 4TiB >"$work/pool.yaml"
machine_line
echo "# 4 TiB thin disk, null data, metadata file; QD 64 random 4 KiB first writes, $seconds s"
for r in $(seq "$rounds"); do
    for b in "${builds[@]}"; do
        rm -f "$work/meta.img"
        truncate -s 2G "$work/meta.img"
        "$b" bench -c "$work/pool.yaml" --bdev thin0 -w randwrite -q 64 -t "$seconds" --json \
            2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin)
print(json.dumps({'build': sys.argv[1], 'writes_per_s': round(d['iops']),
                  'p99_ms': round(d['lat_us']['p99'] / 1000, 2)}))" "$b"
    done
done
