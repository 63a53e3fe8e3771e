#!/usr/bin/env bash
# Two builds of tessera side by side, alternating, medians of RUNS runs: did a change
# (a move of code, a fix) cost throughput?
#   1. null bdev, 4 KiB randread QD 128, one core (the engine floor)
#   2. malloc:1G, 4 KiB randread and randwrite QD 64, one core
#   3. NVMe/TCP: a `serve` target on CPU 0 (null namespace), `bench` through the
#      initiator bdev on CPU 1, 4 KiB randread QD 64 and QD 1 — each build against itself
#
#   bench/compare_builds.sh OLD_BINARY NEW_BINARY [RUNS] [SECONDS]
# Prints one JSON line per job and the new/old ratio of the medians. Run it on a quiet
# machine: each job busy-polls one or two CPUs.
set -euo pipefail
old=$1
new=$2
runs=${3:-5}
secs=${4:-3}
port=${NVMF_BENCH_PORT:-44431}
export RUST_LOG=warn
work=$(mktemp -d /var/tmp/tessera-cmp.XXXXXX)
target_pid=
cleanup() {
    [ -n "$target_pid" ] && kill -INT "$target_pid" 2>/dev/null && wait "$target_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
med() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
iops() { python3 -c 'import json,sys; print(json.load(sys.stdin)["iops"])'; }
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "# old: $old  new: $new  runs: $runs x ${secs}s, alternating"

report() { # name, old values, new values
    local o n
    o=$(med $2)
    n=$(med $3)
    echo "{\"bench\":\"$1\",\"old\":[${2// /,}],\"new\":[${3// /,}],\"median_old\":$o,\"median_new\":$n,\"ratio\":$(python3 -c "print(round($n/$o,3))")}"
}

local_job() { # name, bench args...
    local name=$1
    shift
    local o=() n=()
    for i in $(seq "$runs"); do
        if ((i % 2)); then
            o+=("$("$old" bench "$@" -t "$secs" -m 0 --idle busy --json | iops)")
            n+=("$("$new" bench "$@" -t "$secs" -m 0 --idle busy --json | iops)")
        else
            n+=("$("$new" bench "$@" -t "$secs" -m 0 --idle busy --json | iops)")
            o+=("$("$old" bench "$@" -t "$secs" -m 0 --idle busy --json | iops)")
        fi
    done
    report "$name" "${o[*]}" "${n[*]}"
}

local_job "null randread qd128" --bdev null:1T -w randread -q 128
local_job "malloc randread qd64" --bdev malloc:1G -w randread -q 64
local_job "malloc randwrite qd64" --bdev malloc:1G -w randwrite -q 64

cat >"$work/target.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: null, name: Null0, size: 1TiB}
nvmf:
  subsystems:
    - nqn: nqn.2016-06.io.tessera:null
      allow_any_host: true
      listeners: [{address: 127.0.0.1, port: $port}]
      namespaces: [{bdev: Null0, nsid: 1}]
YAML
cat >"$work/host.yaml" <<YAML
nvme:
  - {name: NvmeNull, traddr: 127.0.0.1, trsvcid: "$port", subnqn: nqn.2016-06.io.tessera:null}
YAML
nvmf_run() { # binary, qd
    "$1" serve -c "$work/target.yaml" -s "$work/rpc.sock" 2>"$work/target.log" &
    target_pid=$!
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
        sleep 0.1
    done
    "$1" bench -c "$work/host.yaml" --bdev NvmeNulln1 -w randread -q "$2" -t "$secs" -m 1 \
        --idle busy --range 1G --json | iops
    kill -INT "$target_pid"
    wait "$target_pid" 2>/dev/null || true
    target_pid=
    rm -f "$work/rpc.sock"
}
for qd in 64 1; do
    o=()
    n=()
    for i in $(seq "$runs"); do
        if ((i % 2)); then
            o+=("$(nvmf_run "$old" "$qd")")
            n+=("$(nvmf_run "$new" "$qd")")
        else
            n+=("$(nvmf_run "$new" "$qd")")
            o+=("$(nvmf_run "$old" "$qd")")
        fi
    done
    report "nvmf null randread qd$qd" "${o[*]}" "${n[*]}"
done
