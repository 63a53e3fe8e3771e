#!/usr/bin/env bash
# Snapshot create under load (issue 18): a thin disk on a null data pool with its
# metadata on a file (io_uring), one core, 4 KiB random writes at QD 32 for SECONDS;
# from FROM seconds on, a snapshot every half second (20 of them by default). The
# writes are first writes into fresh segments nearly all the way on a big disk, so by
# FROM seconds it holds about FROM × (first writes per second) scattered extents.
# Prints per disk size: the snapshots' p50/p99/max create time, the longest I/O latency
# in the half second after each, and the run's p99.9 latency.
#
#   bench/snapshot_under_load.sh [--tessera PATH] [--sizes "4TiB 1GiB"] [--from 15] [--count 20]
set -euo pipefail
cd "$(dirname "$0")/.."

T=
sizes="4TiB 1GiB"
from=15
count=20
while [ $# -gt 0 ]; do
    case "$1" in
        --tessera) T=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --from) from=$2; shift 2 ;;
        --count) count=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$T" ]; then
    cargo build --release --quiet --bin tessera
    T="${CARGO_TARGET_DIR:-target}/release/tessera"
fi
work=$(mktemp -d /var/tmp/tessera-snapload.XXXXXX)
trap 'rm -rf "$work"' EXIT
at=$(python3 -c "print(','.join(str($from + i * 0.5) for i in range($count)))")
seconds=$(python3 -c "print($from + $count * 0.5 + 0.5)")
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); $(date -u +%FT%TZ)"
echo "# $T; QD 32 random 4 KiB writes for $seconds s, snapshots at $at"
for size in $sizes; do
    rm -f "$work/meta.img"
    truncate -s 2G "$work/meta.img"
    cat >"$work/pool.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: null, name: data0, size: 4TiB}
  - {type: uring, name: meta0, path: $work/meta.img}
pools:
  - {name: p0, bdevs: [data0], metadata_bdev: meta0}
disks:
  - {name: thin0, pool: p0, size: $size, thin: true}
YAML
    "$T" bench -c "$work/pool.yaml" --bdev thin0 -w randwrite -q 32 -t "$seconds" \
        --snapshot-at "$at" --json >"$work/out.json" 2>"$work/log"
    python3 - "$work/out.json" "$size" "$work/log" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
# Failed snapshots: the JSON's `error`, or (older builds) the log's lines.
failed = sum(1 for s in r["snapshots"] if s.get("error")) or \
    sum(1 for l in open(sys.argv[3]) if "failed" in l and l.startswith("snapshot at"))
c = sorted(s["create_us"] / 1000 for s in r["snapshots"])
pick = lambda p: c[min(len(c) - 1, round((len(c) - 1) * p))]
print(json.dumps({
    "size": sys.argv[2],
    "writes_per_s": round(r["iops"]),
    "errors": r["errors"],
    "snapshots": len(c),
    "snapshots_failed": failed,
    "create_ms_p50": round(pick(0.5), 1),
    "create_ms_p99": round(pick(0.99), 1),
    "create_ms_max": round(c[-1], 1),
    "max_lat_after_snapshots_ms": round(r["window_lat_us"]["max"] / 1000, 1),
    "p999_lat_ms": round(r["lat_us"]["p999"] / 1000, 2),
}))
PY
done
