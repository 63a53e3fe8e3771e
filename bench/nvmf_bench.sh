#!/usr/bin/env bash
# NVMe/TCP benchmark: `tessera bench` through the initiator bdev (bdev_nvme) against a
# `tessera serve` target — target on CPU 0, initiator on CPU 1 — 4 KiB randread and
# randwrite at QD 1 and 64, over a null and a malloc namespace, with the raw bdevs'
# figures (the same bench on CPU 1 against a local null/malloc bdev) beside them.
# Medians of RUNS runs: one JSON line per job, with the NVMe/TCP figure of every run.
#
#   bench/nvmf_bench.sh [--seconds N] [--runs N] [--smoke]
#
# --smoke runs each job once for 1 s (checks the plumbing; the figures mean nothing).
# Run it on a quiet machine: the target and the initiator each busy-poll a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=10
runs=3
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --smoke) seconds=1; runs=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
port=${NVMF_BENCH_PORT:-44420}
target_cpu=${TARGET_CPU:-0}
host_cpu=${HOST_CPU:-1}
cargo build --release --quiet --bin tessera
T="${CARGO_TARGET_DIR:-target}/release/tessera"
export RUST_LOG=warn
work=$(mktemp -d /var/tmp/tessera-nvmf.XXXXXX)

cat >"$work/target.yaml" <<YAML
cores: [$target_cpu]
idle: busy
bdevs:
  - {type: null, name: Null0, size: 1TiB}
  - {type: malloc, name: Malloc0, size: 1GiB}
nvmf:
  subsystems:
    - nqn: nqn.2016-06.io.tessera:null
      allow_any_host: true
      listeners: [{address: 127.0.0.1, port: $port}]
      namespaces: [{bdev: Null0, nsid: 1}]
    - nqn: nqn.2016-06.io.tessera:malloc
      allow_any_host: true
      listeners: [{address: 127.0.0.1, port: $port}]
      namespaces: [{bdev: Malloc0, nsid: 1}]
YAML
cat >"$work/host.yaml" <<YAML
nvme:
  - {name: NvmeNull, traddr: 127.0.0.1, trsvcid: "$port", subnqn: nqn.2016-06.io.tessera:null}
  - {name: NvmeMalloc, traddr: 127.0.0.1, trsvcid: "$port", subnqn: nqn.2016-06.io.tessera:malloc}
YAML
"$T" serve -c "$work/target.yaml" -s "$work/rpc.sock" 2>"$work/target.log" &
target_pid=$!
cleanup() {
    kill -INT "$target_pid" 2>/dev/null || true
    wait "$target_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    kill -0 "$target_pid" 2>/dev/null || { cat "$work/target.log" >&2; exit 1; }
    sleep 0.1
done

med() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v))' "$@"; }
field() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); target cpu $target_cpu, initiator cpu $host_cpu"
for kind in null malloc; do
    bdev=$([ "$kind" = null ] && echo NvmeNulln1 || echo NvmeMallocn1)
    for workload in randread randwrite; do
        for qd in 1 64; do
            ni=(); nl=(); ri=(); rl=()
            for _ in $(seq "$runs"); do
                out=$("$T" bench -c "$work/host.yaml" --bdev "$bdev" -w "$workload" -q "$qd" -t "$seconds" \
                    -m "$host_cpu" --idle busy --range 1G --json)
                ni+=("$(echo "$out" | field 'r["iops"]')"); nl+=("$(echo "$out" | field 'r["lat_us"]["avg"]')")
                out=$("$T" bench --bdev "$kind:1G" -w "$workload" -q "$qd" -t "$seconds" -m "$host_cpu" --idle busy --json)
                ri+=("$(echo "$out" | field 'r["iops"]')"); rl+=("$(echo "$out" | field 'r["lat_us"]["avg"]')")
            done
            echo "{\"namespace\":\"$kind\",\"workload\":\"$workload\",\"qd\":$qd,\"nvmf_iops\":$(med "${ni[@]}"),\"nvmf_avg_us\":$(med "${nl[@]}"),\"raw_iops\":$(med "${ri[@]}"),\"raw_avg_us\":$(med "${rl[@]}"),\"nvmf_iops_runs\":[$(IFS=,; echo "${ni[*]}")],\"nvmf_avg_us_runs\":[$(IFS=,; echo "${nl[*]}")]}"
        done
    done
done
