#!/usr/bin/env bash
# How fast `tessera send` reads a snapshot (issue 22: a full send at >= 0.8x the
# snapshot's sequential read): a 1 GiB thin disk on a 3 GiB file pool (io_uring, page
# cache warm) filled with random data by nbdcopy, snapshot s1, `tessera serve` on core 0.
# Then, ROUNDS times, alternating: a full send of s1 to a pipe (`tessera send ... s1 |
# wc -c`) over each --connections count given, and `nbdcopy` of the same snapshot
# exported over NBD to null: (nbdcopy's defaults: 4 connections), and a sequential read
# of the pool's base bdev itself (`tessera bench` on its file, the first GiB, where the
# snapshot's data lies: 1 MiB requests, QD 8, 2 s, core 1). One line per run (what,
# seconds, MiB/s), then medians and the ratios send / nbdcopy and send / base read.
#
#   bench/send_speed.sh [--tessera PATH] [--connections "1 4"] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."

T=
conns="1 4"
rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
        --tessera) T=$2; shift 2 ;;
        --connections) conns=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
. bench/support/tessera_build.sh
tessera_build
work_dir send
truncate -s 3G "$work/pool.img"
cat >"$work/serve.yaml" <<YAML
cores: [0]
bdevs:
  - {type: uring, name: file0, path: $work/pool.img}
pools:
  - {name: p0, bdevs: [file0]}
disks:
  - {name: vd0, pool: p0, size: 1GiB, thin: true}
nbd:
  listen: 127.0.0.1:$port
  exports:
    - {name: vd0, bdev: p0/vd0}
YAML
start_serve
rpc() { "$T" rpc -s "$work/rpc.sock" "$@" >/dev/null; }
machine_line
echo "# 1 GiB thin disk on a 3 GiB file pool, filled with random data; serve on core 0"
head -c 1G /dev/urandom >"$work/random"
nbdcopy "$work/random" "nbd://127.0.0.1:$port/vd0"
rm -f "$work/random"
rpc bdev_lvol_snapshot --lvol-name p0/vd0 --snapshot-name s1
rpc nbd_start_export --bdev-name p0/s1 --name snap --read-only true
declare -A runs
timed() { # WHAT COMMAND...: prints one line, keeps the MiB/s
    local what=$1; shift
    local t0 t1
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    local s mibs
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
    mibs=$(awk -v s="$s" 'BEGIN {printf "%.0f", 1024 / s}')
    echo "{\"what\":\"$what\",\"seconds\":$s,\"mib_per_s\":$mibs}"
    runs[$what]="${runs[$what]:-} $mibs"
}
send_to_null() { "$T" send --rpc "$work/rpc.sock" --nbd "127.0.0.1:$port" --connections "$1" p0/s1 2>/dev/null | wc -c >/dev/null; }
for r in $(seq "$rounds"); do
    for c in $conns; do
        timed "send --connections $c" send_to_null "$c"
    done
    timed "nbdcopy" nbdcopy "nbd://127.0.0.1:$port/snap" null:
    mibs=$("$T" bench --bdev "uring:$work/pool.img" --range 1G -w read -o 1M -q 8 -t 2 -m 1 --json 2>/dev/null |
        python3 -c 'import json, sys; print(round(json.load(sys.stdin)["mib_s"]))')
    echo "{\"what\":\"base read\",\"mib_per_s\":$mibs}"
    runs[base]="${runs[base]:-} $mibs"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ref=$(echo "${runs[nbdcopy]}" | median)
echo "# medians (MiB/s; the snapshot's 1024 MiB over the seconds each took):"
echo "#   nbdcopy: $ref"
base=$(echo "${runs[base]}" | median)
echo "#   sequential read of the base bdev: $base"
for c in $conns; do
    m=$(echo "${runs["send --connections $c"]}" | median)
    echo "#   send --connections $c: $m ($(awk -v a="$m" -v b="$ref" 'BEGIN {printf "%.2f", a/b}')x nbdcopy, $(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.2f", a/b}')x the base read)"
done
