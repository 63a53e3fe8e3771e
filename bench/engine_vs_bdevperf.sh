#!/usr/bin/env bash
# The engine floor side by side: `tessera bench` and SPDK's `bdevperf` on the same SPDK
# JSON bdev config, one core (CPU 0), 4 KiB, alternating rounds; median IOPS of each
# side, the ratio of the medians and the median of the per-round ratios, one JSON line
# per case.
#
#   bench/engine_vs_bdevperf.sh [--seconds N] [--runs N] [--smoke] [--no-malloc]
#   CASES=null_randread_qd128 bench/engine_vs_bdevperf.sh
#   TESSERA=/path/to/tessera bench/engine_vs_bdevperf.sh   (that build; no cargo build)
#
# Cases: null randread/randwrite at QD 128; malloc (1 GiB) randread/randwrite at QD 64.
# SPDK's malloc bdev lives in its DPDK memory: without hugepages every first touch of a
# page is a fault that dominates the figure, so for the malloc cases the script (as
# root) reserves 1536 2 MiB hugepages and gives them back at the end. tessera's malloc
# bdev faults its memory in when it is created (transparent huge pages where the kernel
# gives them). Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=3
runs=9
malloc=1
extra_option() { [ "$1" = --no-malloc ] && malloc=0; }
# shellcheck source=bench/support/side_by_side.sh
. bench/support/side_by_side.sh
parse_options "$@"
find_spdk
if [ -n "${TESSERA:-}" ]; then
    T=$TESSERA # a build to compare (old against new, alternated by the caller)
else
    cargo build --release --quiet --bin tessera
    T="${CARGO_TARGET_DIR:-target}/release/tessera"
fi
work=$(mktemp -d /var/tmp/tessera-vs-bdevperf.XXXXXX)
trap 'rm -rf "$work"; give_back_hugepages; remove_spdk_traces' EXIT

cat >"$work/null.json" <<'JSON'
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 268435456, "block_size": 4096}}]}]}
JSON
cat >"$work/malloc.json" <<'JSON'
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 262144, "block_size": 4096}}]}]}
JSON

if [ "$malloc" = 1 ]; then
    if [ "$(id -u)" -ne 0 ]; then echo "the malloc cases need root (hugepages); use --no-malloc" >&2; exit 2; fi
    reserve_hugepages 1536 1024
fi

# bdevperf CONFIG BDEV WORKLOAD QD MEMARGS... -> IOPS
bdevperf() {
    local cfg=$1 workload=$3 qd=$4 out
    shift 4
    out=$("$S/run" bdevperf --no-pci --disable-cpumask-locks "$@" -m 0x1 --json "$cfg" \
        -q "$qd" -o 4096 -w "$workload" -t "$seconds" 2>&1) || {
        echo "bdevperf failed:" >&2; echo "$out" >&2; exit 1; }
    echo "$out" | tr -d '\r' | awk '/^ *Total *:/ {sub(/^ *Total *:/, ""); print $1}'
}
# tessera_bench CONFIG BDEV WORKLOAD QD -> IOPS
tessera_bench() {
    "$T" bench -c "$1" --bdev "$2" -w "$3" -q "$4" -o 4096 -t "$seconds" -m 0 --idle busy --json \
        2>/dev/null | awk -F'[:,]' '/"iops"/ {gsub(/ /, "", $2); print $2; exit}'
}


machine_line
# name | config | bdev | workload | qd | bdevperf memory arguments
cases=(
    "null_randread_qd128|null.json|Null0|randread|128|--no-huge -s 1024"
    "null_randwrite_qd128|null.json|Null0|randwrite|128|--no-huge -s 1024"
)
if [ "$malloc" = 1 ]; then
    cases+=(
        "malloc_randread_qd64|malloc.json|Malloc0|randread|64|-s 1536"
        "malloc_randwrite_qd64|malloc.json|Malloc0|randwrite|64|-s 1536"
    )
fi
for c in "${cases[@]}"; do
    IFS='|' read -r name cfg bdev workload qd mem <<<"$c"
    selected "$name" || continue
    t_iops=(); s_iops=()
    for r in $(seq "$runs"); do
        if [ $((r % 2)) -eq 1 ]; then order="tessera spdk"; else order="spdk tessera"; fi
        for side in $order; do
            if [ "$side" = tessera ]; then
                t_iops+=("$(tessera_bench "$work/$cfg" "$bdev" "$workload" "$qd")")
            else
                # shellcheck disable=SC2086
                s_iops+=("$(bdevperf "$work/$cfg" "$bdev" "$workload" "$qd" $mem)")
            fi
        done
    done
    tm=$(echo "${t_iops[*]}" | median); sm=$(echo "${s_iops[*]}" | median)
    rr=$(round_ratio t_iops s_iops)
    printf '{"case":"%s","tessera_iops":%.0f,"bdevperf_iops":%.0f,"ratio":%s,"median_round_ratio":%s,"tessera_runs":[%s],"bdevperf_runs":[%s]}\n' \
        "$name" "$tm" "$sm" "$(ratio "$tm" "$sm")" "$rr" "$(IFS=,; echo "${t_iops[*]}")" "$(IFS=,; echo "${s_iops[*]}")"
done
