#!/usr/bin/env bash
# Snapshot create under load (issue 18): a thin disk on a null data pool with its
# metadata on a file (io_uring), one core, 4 KiB random writes at QD 32 for SECONDS;
# from FROM seconds on, a snapshot every half second (20 of them by default). The
# writes are first writes into fresh segments nearly all the way on a big disk, so by
# FROM seconds it holds about FROM × (first writes per second) scattered extents.
# Prints per disk size: the snapshots' p50/p99/max create time, the longest I/O latency
# in the half second after each, and the run's p99.9 latency.
#
# The metadata file is sparse (ext4 allocates its blocks as checkpoints first write
# them, and a force-unit-access write then waits for the journal) unless --zeroed, which
# writes it full of zeros first, as a metadata device or a preallocated file is.
#
# The metadata file is META_GIB (12) GiB: twenty snapshots of a table of ~2.5 M scattered
# extents rewritten at random keep about twenty versions of its leaves, and a 4 GiB
# file filled up at 200 K writes a second (writes then waited for checkpoints to make
# room, and failed after two).
#
#   bench/snapshot_under_load.sh [--tessera PATH] [--sizes "4TiB 1GiB"] [--from 15] [--count 20] [--zeroed] [--meta-gib 12]
set -euo pipefail
cd "$(dirname "$0")/.."

T=
sizes="4TiB 1GiB"
from=15
count=20
zeroed=
meta_gib=12
while [ $# -gt 0 ]; do
    case "$1" in
        --tessera) T=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --from) from=$2; shift 2 ;;
        --count) count=$2; shift 2 ;;
        --zeroed) zeroed=1; shift ;;
        --meta-gib) meta_gib=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
. bench/support/tessera_build.sh
tessera_build
work=$(mktemp -d /var/tmp/tessera-snapload.XXXXXX)
trap 'rm -rf "$work"' EXIT
. bench/support/timed_actions.sh
timed_schedule "$from" "$count"
machine_line
echo "# $T; QD 32 random 4 KiB writes for $seconds s, snapshots at $at; metadata file of $meta_gib GiB, $([ -n "$zeroed" ] && echo zeroed || echo sparse)"
for size in $sizes; do
    rm -f "$work/meta.img"
    if [ -n "$zeroed" ]; then
        dd if=/dev/zero of="$work/meta.img" bs=1M count=$((meta_gib * 1024)) status=none
    else
        truncate -s "${meta_gib}G" "$work/meta.img"
    fi
    # Data space for every write of the run: each write after a snapshot that meets a
    # shared segment takes a new one, and at 200 K first writes a second a 4 TiB pool
    # filled up within the run (its last snapshots then waited for room).
    null_pool_yaml "$work/meta.img" "$size" 16TiB >"$work/pool.yaml"
    "$T" bench -c "$work/pool.yaml" --bdev thin0 -w randwrite -q 32 -t "$seconds" \
        --snapshot-at "$at" --json >"$work/out.json" 2>"$work/log"
    timed_summary "$work/out.json" snapshots create size "$size" "$work/log"
done
