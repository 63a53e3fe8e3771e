#!/usr/bin/env bash
# SPDK's logical volumes side by side with tessera's virtual disks, on the same SPDK JSON
# configs (a 3 GiB malloc bdev, an lvstore with 1 MiB clusters, lvols, snapshots and
# clones made by the config): SPDK's `bdevperf` on SPDK's side, `tessera bench` on
# tessera's, one core (CPU 0), 4 KiB, alternating rounds; and the control operations
# (snapshot create, inflate) timed through the JSON-RPC socket of SPDK's `spdk_tgt` and of
# `tessera serve`, with the same client (`tessera rpc`).
#
#   bench/lvol_vs_spdk.sh [--seconds N] [--runs N] [--smoke]
#   CASES=thick_randread,inflate_1g bench/lvol_vs_spdk.sh
#
# I/O cases (QD 64): raw malloc and a thick 1 GiB lvol, randread and randwrite; reads
# through a clone of a clone of a clone of a written 1 GiB volume; first writes after a
# snapshot: random writes, no offset twice (bdevperf -D, tessera bench --once), for 1 s
# into a snapshotted thick 4.25 GiB volume on a 9 GiB malloc bdev (1.1 M blocks: about
# what either side writes in that second; a side that has written every block ends
# early), so both sides do the same work: every write is its block's first since the
# snapshot; the first into each 1 MiB cluster copies the cluster in SPDK, and tessera
# writes only the 4 KiB granule. Control cases: snapshot create of a written
# 1 GiB volume and of an empty 1 TiB thin volume; inflate of a 1 GiB clone whose parent
# is written. Each case reports both sides' medians and their ratio (tessera / SPDK; for
# times, SPDK / tessera, so above 1 is tessera ahead either way).
#
# SPDK's malloc bdev needs hugepages (see bench/engine_vs_bdevperf.sh): the script (as
# root) reserves 2304 2 MiB pages and gives them back at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=3
runs=3
# shellcheck source=bench/support/side_by_side.sh
. bench/support/side_by_side.sh
parse_options "$@"
find_spdk
[ "$(id -u)" -eq 0 ] || { echo "run as root (hugepages for SPDK's malloc bdev)" >&2; exit 2; }
cargo build --release --quiet --bin tessera
T="${CARGO_TARGET_DIR:-target}/release/tessera"
work=$(mktemp -d /var/tmp/tessera-lvol-vs-spdk.XXXXXX)
pid=
cleanup() {
    stop_target
    rm -rf "$work"
    give_back_hugepages
    remove_spdk_traces
}
trap cleanup EXIT
# The first-write case's 9 GiB malloc bdev needs 10 GiB of SPDK memory; the others 4 GiB.
if selected first_write_after_snapshot; then reserve_hugepages 5248 5248; else reserve_hugepages 2304 2304; fi

# config NAME CALLS... : an SPDK JSON config: the malloc bdev, then the given calls.
config() {
    local name=$1
    shift
    local calls
    calls=$(IFS=,; echo "$*")
    cat >"$work/$name.json" <<JSON
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": ${malloc_blocks:-786432}, "block_size": 4096}}${calls:+,$calls}
]}]}
JSON
}
lvs='{"method": "bdev_lvol_create_lvstore", "params": {"bdev_name": "Malloc0", "lvs_name": "lvs0", "cluster_sz": 1048576}}'
lvol() { echo "{\"method\": \"bdev_lvol_create\", \"params\": {\"lvol_name\": \"$1\", \"size_in_mib\": $2, \"lvs_name\": \"lvs0\", \"thin_provision\": $3}}"; }
snap() { echo "{\"method\": \"bdev_lvol_snapshot\", \"params\": {\"lvol_name\": \"lvs0/$1\", \"snapshot_name\": \"$2\"}}"; }
clone() { echo "{\"method\": \"bdev_lvol_clone\", \"params\": {\"snapshot_name\": \"lvs0/$1\", \"clone_name\": \"$2\"}}"; }

# A thick lvol is allocated but, on a malloc bdev, reads zeros either way; "written" here
# means every cluster allocated (thick), which is what reads through a chain and a
# snapshot's copy-on-write see.
config raw
config thick "$lvs" "$(lvol lv0 1024 false)"
config chain "$lvs" "$(lvol lv0 1024 false)" "$(snap lv0 s0)" "$(clone s0 c1)" "$(snap c1 s1)" \
    "$(clone s1 c2)" "$(snap c2 s2)" "$(clone s2 c3)"
malloc_blocks=2359296 config snapped "$lvs" "$(lvol lv0 4352 false)" "$(snap lv0 s0)"
config control_snap "$lvs" "$(lvol lv0 1024 false)" "$(lvol big 1048576 true)"
config control_inflate "$lvs" "$(lvol lv1 1024 false)" "$(snap lv1 s1)" "$(clone s1 c1)"


# SPDK's memory (MiB) and the run's seconds for a config: the first-write case runs 1 s
# on its 9 GiB malloc bdev (see above).
spdk_mem() { if [ "$1" = snapped ]; then echo 10240; else echo 4096; fi; }
case_seconds() { if [ "$1" = snapped ]; then echo 1; else echo "$seconds"; fi; }

# spdk_io CONFIG BDEV WORKLOAD EXTRA... -> IOPS (bdevperf)
spdk_io() {
    local cfg=$1 bdev=$2 workload=$3 out
    shift 3
    out=$("$S/run" bdevperf --no-pci --disable-cpumask-locks -s "$(spdk_mem "$cfg")" -m 0x1 \
        --json "$work/$cfg.json" -T "$bdev" -q 64 -o 4096 -w "$workload" -t "$(case_seconds "$cfg")" \
        "$@" 2>&1) || {
        echo "bdevperf failed:" >&2; echo "$out" >&2; exit 1; }
    echo "$out" | tr -d '\r' | awk '/^ *Total *:/ {sub(/^ *Total *:/, ""); print $1}'
}
# tessera_io CONFIG BDEV WORKLOAD EXTRA... -> IOPS (tessera bench)
tessera_io() {
    local cfg=$1 bdev=$2 workload=$3
    shift 3
    # tessera's bdev of lvol `lvs0/NAME` is named NAME (the RPC methods take both forms).
    "$T" bench -c "$work/$cfg.json" --bdev "${bdev#lvs0/}" -w "$workload" -q 64 -o 4096 -t "$(case_seconds "$cfg")" \
        -m 0 --idle busy --json "$@" 2>/dev/null | awk -F'[:,]' '/"iops"/ {gsub(/ /, "", $2); print $2; exit}'
}

# start_target tessera|spdk CONFIG; waits for its RPC socket.
start_target() {
    rm -f "$work/rpc.sock"
    if [ "$1" = tessera ]; then
        RUST_LOG=warn "$T" serve -c "$work/$2.json" -m 0 --idle busy -s "$work/rpc.sock" \
            >"$work/target.log" 2>&1 &
    else
        "$S/run" spdk_tgt --no-pci --disable-cpumask-locks -s 4096 -m 0x1 -r "$work/rpc.sock" \
            --json "$work/$2.json" >"$work/target.log" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 600); do
        if "$T" rpc -s "$work/rpc.sock" --timeout 1 spdk_get_version >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "$1 did not answer on its RPC socket:" >&2
    cat "$work/target.log" >&2
    exit 1
}
# timed_rpc METHOD JSON -> milliseconds
timed_rpc() {
    local t0 t1
    t0=$(date +%s%N)
    "$T" rpc -s "$work/rpc.sock" --timeout 600 "$1" --json "$2" >/dev/null
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b-a)/1e6}'
}

machine_line
# I/O cases: name | config | bdev | workload | bdevperf extra | tessera bench extra
io_cases=(
    "raw_randread|raw|Malloc0|randread||"
    "raw_randwrite|raw|Malloc0|randwrite||"
    "thick_randread|thick|lvs0/lv0|randread||"
    "thick_randwrite|thick|lvs0/lv0|randwrite||"
    "clone3_randread|chain|lvs0/c3|randread||"
    "first_write_after_snapshot|snapped|lvs0/lv0|randwrite|-D|--once"
)
for c in "${io_cases[@]}"; do
    IFS='|' read -r name cfg bdev workload sx tx <<<"$c"
    selected "$name" || continue
    t=(); s=()
    for r in $(seq "$runs"); do
        if [ $((r % 2)) -eq 1 ]; then order="tessera spdk"; else order="spdk tessera"; fi
        for side in $order; do
            # shellcheck disable=SC2086
            if [ "$side" = tessera ]; then t+=("$(tessera_io "$cfg" "$bdev" "$workload" $tx)")
            else s+=("$(spdk_io "$cfg" "$bdev" "$workload" $sx)"); fi
        done
    done
    tm=$(echo "${t[*]}" | median); sm=$(echo "${s[*]}" | median)
    printf '{"case":"%s","unit":"IOPS","tessera":%.0f,"spdk":%.0f,"ratio":%s,"tessera_runs":[%s],"spdk_runs":[%s]}\n' \
        "$name" "$tm" "$sm" "$(ratio "$tm" "$sm")" \
        "$(IFS=,; echo "${t[*]}")" "$(IFS=,; echo "${s[*]}")"
done

# Control cases: name | config | method | params (each round starts a fresh target).
ctl_cases=(
    'snapshot_1g_written|control_snap|bdev_lvol_snapshot|{"lvol_name": "lvs0/lv0", "snapshot_name": "snap"}'
    'snapshot_1t_thin_empty|control_snap|bdev_lvol_snapshot|{"lvol_name": "lvs0/big", "snapshot_name": "snap"}'
    'inflate_1g_clone|control_inflate|bdev_lvol_inflate|{"name": "lvs0/c1"}'
)
for c in "${ctl_cases[@]}"; do
    IFS='|' read -r name cfg method params <<<"$c"
    selected "$name" || continue
    t=(); s=()
    for r in $(seq "$runs"); do
        if [ $((r % 2)) -eq 1 ]; then order="tessera spdk"; else order="spdk tessera"; fi
        for side in $order; do
            start_target "$side" "$cfg"
            ms=$(timed_rpc "$method" "$params")
            stop_target
            if [ "$side" = tessera ]; then t+=("$ms"); else s+=("$ms"); fi
        done
    done
    tm=$(echo "${t[*]}" | median); sm=$(echo "${s[*]}" | median)
    printf '{"case":"%s","unit":"ms","tessera":%s,"spdk":%s,"ratio":%s,"tessera_runs":[%s],"spdk_runs":[%s]}\n' \
        "$name" "$tm" "$sm" "$(ratio "$sm" "$tm")" \
        "$(IFS=,; echo "${t[*]}")" "$(IFS=,; echo "${s[*]}")"
done
