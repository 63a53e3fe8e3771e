#!/usr/bin/env bash
# NVMe/TCP side by side: the same SPDK JSON config (a null namespace) served by
# `tessera serve` and by SPDK's `nvmf_tgt`, driven by SPDK's `spdk_nvme_perf` with its
# defaults (no host NQN), 4 KiB. Rounds alternate the two targets (tessera first in odd
# rounds, SPDK first in even ones); each case reports both sides' median IOPS, the
# ratio of the medians and the median of the per-round ratios (the two runs of a round
# are back to back, so a neighbour's burst on this shared machine hits both less
# unevenly), one JSON line per case, with every run's figure.
#
#   bench/nvmf_vs_spdk.sh [--seconds N] [--runs N] [--smoke]
#   CASES=randread_qd64,randread_qd1 bench/nvmf_vs_spdk.sh   (only those cases)
#
# Cases: randread QD 64, randwrite QD 64, randread QD 1 (target on CPU 0, busy-polling;
# host on CPU 1), and randread QD 64 with 4 queue pairs (-P 4) on 2 target cores
# (CPUs 0-1; the host shares CPU 1). Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=3
runs=9
# shellcheck source=bench/support/side_by_side.sh
. bench/support/side_by_side.sh
parse_options "$@"
find_spdk
port=${NVMF_BENCH_PORT:-44620}
cargo build --release --quiet --bin tessera
T="${CARGO_TARGET_DIR:-target}/release/tessera"
work=$(mktemp -d /var/tmp/tessera-vs-spdk.XXXXXX)
nqn=nqn.2026-11.io.tessera:bench
cat >"$work/config.json" <<JSON
{"subsystems": [
 {"subsystem": "bdev", "config": [
  {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 268435456, "block_size": 4096}}]},
 {"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
  {"method": "nvmf_create_subsystem", "params": {"nqn": "$nqn", "allow_any_host": true, "serial_number": "BENCH0001"}},
  {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$nqn", "namespace": {"bdev_name": "Null0"}}},
  {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$nqn", "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "$port"}}}]}]}
JSON
pid=
trap 'stop_target; rm -rf "$work"; remove_spdk_traces' EXIT

# start_target tessera|spdk MASK [IDLE]   (IDLE: tessera's idle policy, busy by default)
start_target() {
    if [ "$1" = tessera ]; then
        RUST_LOG=warn "$T" serve -c "$work/config.json" -m "$2" --idle "${3:-busy}" -s "$work/t.sock" \
            >"$work/target.log" 2>&1 &
    else
        "$S/run" nvmf_tgt --no-pci --no-huge -s 1024 --disable-cpumask-locks -m "$2" \
            -r "$work/s.sock" --json "$work/config.json" >"$work/target.log" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 300); do
        if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "$1 did not listen on $port:" >&2
    cat "$work/target.log" >&2
    exit 1
}

# perf ARGS... -> "IOPS AVG_US"
perf() {
    local out
    out=$("$S/run" spdk_nvme_perf --no-huge -s 1024 "$@" -t "$seconds" \
        -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$port subnqn:$nqn" 2>&1) || {
        echo "spdk_nvme_perf failed:" >&2; echo "$out" >&2; exit 1; }
    echo "$out" | awk '/^Total/ {sub(/^Total[ ]*:/, ""); print $1, $3}'
}


machine_line
# name | target mask | tessera idle policy | perf args
# On a 2-CPU machine the 2-core case puts the host on a busy-polling target core: both
# targets busy-poll in the first row. In the second, tessera sleeps when idle
# (`--idle adaptive`); SPDK's nvmf_tgt has no such mode in this build (`--interrupt-mode`
# refuses to start: its uring socket layer does not support interrupts, and every poll
# group creates one even when posix is the default), so it busy-polls.
cases=(
    "randread_qd64|0x1|busy|-c 0x2 -q 64 -o 4096 -w randread"
    "randwrite_qd64|0x1|busy|-c 0x2 -q 64 -o 4096 -w randwrite"
    "randread_qd1|0x1|busy|-c 0x2 -q 1 -o 4096 -w randread"
    "randread_qd64_P4_2cores|0x3|busy|-c 0x2 -P 4 -q 64 -o 4096 -w randread"
    "randread_qd64_P4_2cores_tessera_adaptive|0x3|adaptive|-c 0x2 -P 4 -q 64 -o 4096 -w randread"
)
for c in "${cases[@]}"; do
    IFS='|' read -r name mask idle args <<<"$c"
    selected "$name" || continue
    t_iops=(); s_iops=(); t_lat=(); s_lat=()
    for r in $(seq "$runs"); do
        if [ $((r % 2)) -eq 1 ]; then order="tessera spdk"; else order="spdk tessera"; fi
        for side in $order; do
            start_target "$side" "$mask" "$idle"
            # shellcheck disable=SC2086
            read -r iops lat < <(perf $args)
            stop_target
            if [ "$side" = tessera ]; then t_iops+=("$iops"); t_lat+=("$lat"); else s_iops+=("$iops"); s_lat+=("$lat"); fi
        done
    done
    tm=$(echo "${t_iops[*]}" | median); sm=$(echo "${s_iops[*]}" | median)
    tl=$(echo "${t_lat[*]}" | median); sl=$(echo "${s_lat[*]}" | median)
    # The median of each round's ratio (the two sides of a round ran back to back).
    rr=$(round_ratio t_iops s_iops)
    printf '{"case":"%s","tessera_iops":%s,"spdk_iops":%s,"ratio":%s,"median_round_ratio":%s,"tessera_avg_us":%s,"spdk_avg_us":%s,"tessera_runs":[%s],"spdk_runs":[%s]}\n' \
        "$name" "$tm" "$sm" "$(ratio "$tm" "$sm")" "$rr" "$tl" "$sl" "$(IFS=,; echo "${t_iops[*]}")" "$(IFS=,; echo "${s_iops[*]}")"
done
