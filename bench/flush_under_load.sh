#!/usr/bin/env bash
# FLUSH latency under scattered random writes (issue 18): a 1 TiB thin disk on a file
# pool (data and metadata in one sparse file, io_uring, O_DIRECT), 4 KiB random first
# writes at QD 32 on one core, and a FLUSH every half second from 2 s on (COUNT of
# them); against the same writes and flushes on the raw sparse file (`uring:` bdev) —
# what a flush costs the file system alone. Alternates the two sides ROUNDS times; one
# JSON line per run with the flushes' p50/p99/max.
#
#   bench/flush_under_load.sh [--tessera PATH] [--rounds 3] [--count 20]
set -euo pipefail
cd "$(dirname "$0")/.."

T=
rounds=3
count=20
while [ $# -gt 0 ]; do
    case "$1" in
        --tessera) T=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --count) count=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$T" ]; then
    cargo build --release --quiet --bin tessera
    T="${CARGO_TARGET_DIR:-target}/release/tessera"
fi
work=$(mktemp -d /var/tmp/tessera-flushload.XXXXXX)
trap 'rm -rf "$work"' EXIT
at=$(python3 -c "print(','.join(str(2 + i * 0.5) for i in range($count)))")
seconds=$(python3 -c "print(2 + $count * 0.5 + 0.5)")
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); $(date -u +%FT%TZ)"
echo "# $T; QD 32 random 4 KiB writes for $seconds s, flushes at $at"
summary() {
    python3 - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = sorted(s["create_us"] / 1000 for s in r["snapshots"])
failed = sum(1 for s in r["snapshots"] if s.get("error"))
pick = lambda p: c[min(len(c) - 1, round((len(c) - 1) * p))]
print(json.dumps({
    "side": sys.argv[2],
    "writes_per_s": round(r["iops"]),
    "flushes": len(c),
    "flushes_failed": failed,
    "flush_ms_p50": round(pick(0.5), 2),
    "flush_ms_p99": round(pick(0.99), 2),
    "flush_ms_max": round(c[-1], 2),
    "p999_lat_ms": round(r["lat_us"]["p999"] / 1000, 2),
}))
PY
}
for round in $(seq "$rounds"); do
    rm -f "$work/pool.img" "$work/raw.img"
    truncate -s 1T "$work/pool.img"
    cat >"$work/pool.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: uring, name: file0, path: $work/pool.img}
pools:
  - {name: p0, bdevs: [file0]}
disks:
  - {name: thin0, pool: p0, size: 1000GiB, thin: true}
YAML
    "$T" bench -c "$work/pool.yaml" --bdev thin0 -w randwrite -q 32 -t "$seconds" \
        --flush-at "$at" --json >"$work/out.json" 2>"$work/log"
    summary "$work/out.json" "tessera thin disk, file pool"
    rm -f "$work/pool.img"
    truncate -s 1T "$work/raw.img"
    "$T" bench --bdev "uring:$work/raw.img" -w randwrite -q 32 -t "$seconds" \
        --flush-at "$at" --json >"$work/out.json" 2>"$work/log"
    summary "$work/out.json" "raw sparse file"
    rm -f "$work/raw.img"
done
