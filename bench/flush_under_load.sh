#!/usr/bin/env bash
# FLUSH latency under scattered random writes (issue 18): a 1 TiB thin disk on a file
# pool (data and metadata in one sparse file, io_uring, O_DIRECT), 4 KiB random first
# writes at QD 32 on one core, and a FLUSH every half second from 2 s on (COUNT of
# them); against the same writes and flushes on the raw sparse file (`uring:` bdev) —
# what a flush costs the file system alone. Alternates the two sides ROUNDS times; one
# JSON line per run with the flushes' p50/p99/max. With `--rate N` both sides take the
# same N writes a second (`--qos rw_ios_per_sec=N`; flushes are not limited), so that
# each flush covers as much written data on both: in a closed loop tessera takes more
# writes a second than the raw file.
#
#   bench/flush_under_load.sh [--tessera PATH] [--rounds 3] [--count 20] [--rate N]
set -euo pipefail
cd "$(dirname "$0")/.."

T=
rounds=3
count=20
qos=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) qos=(--qos "rw_ios_per_sec=$2"); shift 2 ;;
        --tessera) T=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --count) count=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
. bench/support/tessera_build.sh
tessera_build
work=$(mktemp -d /var/tmp/tessera-flushload.XXXXXX)
trap 'rm -rf "$work"' EXIT
. bench/support/timed_actions.sh
timed_schedule 2 "$count"
machine_line
echo "# $T; QD 32 random 4 KiB writes for $seconds s, flushes at $at ${qos[*]:-}"
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
        --flush-at "$at" ${qos[@]+"${qos[@]}"} --json >"$work/out.json" 2>"$work/log"
    timed_summary "$work/out.json" flushes flush side "tessera thin disk, file pool"
    rm -f "$work/pool.img"
    truncate -s 1T "$work/raw.img"
    "$T" bench --bdev "uring:$work/raw.img" -w randwrite -q 32 -t "$seconds" \
        --flush-at "$at" ${qos[@]+"${qos[@]}"} --json >"$work/out.json" 2>"$work/log"
    timed_summary "$work/out.json" flushes flush side "raw sparse file"
    rm -f "$work/raw.img"
done
