#!/usr/bin/env bash
# NVMe/TCP benchmark: `tessera bench` through the initiator bdev against a tessera
# target — target on CPU 0, initiator on CPU 1 — 4 KiB randread and randwrite at QD 1
# and 64, over a null and a malloc namespace, with the raw bdevs' figures beside them
# (the same bench on CPU 1 straight against a local null/malloc bdev).
#
#   bench/nvmf_bench.sh [--seconds N] [--smoke] [--json DIR]
#
# --smoke runs each job for 1 s (checks the plumbing; the figures mean nothing).
# Run it on a quiet machine: the target and the initiator each busy-poll a CPU.
#
# Until `tessera serve` reads the `nvmf:` YAML section and `tessera bench --config`
# attaches bdev_nvme controllers, the target is examples/nvmf_target.rs and the
# initiator side examples/nvmf_bench.rs (the same bench code as `tessera bench`).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=10
json_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --smoke) seconds=1; shift ;;
        --json) json_dir="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

port=${NVMF_BENCH_PORT:-44420}
target_cpu=${TARGET_CPU:-0}
host_cpu=${HOST_CPU:-1}
cargo build --release --quiet --bin tessera --example nvmf_target --example nvmf_bench
bin_dir="${CARGO_TARGET_DIR:-target}/release"

log=$(mktemp)
"$bin_dir/examples/nvmf_target" --cpu "$target_cpu" --port "$port" --busy \
    --null-size 1T --malloc-size 1G 2>"$log" &
target_pid=$!
cleanup() {
    kill "$target_pid" 2>/dev/null || true
    wait "$target_pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 100); do
    grep -q '^ready' "$log" && break
    kill -0 "$target_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
grep -q '^ready' "$log" || { echo "target did not start" >&2; cat "$log" >&2; exit 1; }

run() { # kind workload qd
    local kind=$1 workload=$2 qd=$3 out
    echo "== $kind $workload qd=$qd: NVMe/TCP (target cpu $target_cpu, initiator cpu $host_cpu)"
    out=$("$bin_dir/examples/nvmf_bench" --cpu "$host_cpu" --port "$port" \
        --subnqn "nqn.2016-06.io.tessera:$kind" --workload "$workload" --qd "$qd" \
        --bs 4096 --seconds "$seconds" --range 1G ${json_dir:+--json})
    if [ -n "$json_dir" ]; then
        mkdir -p "$json_dir"
        echo "$out" >"$json_dir/nvmf-$kind-$workload-qd$qd.json"
    else
        echo "$out"
    fi
    echo "== $kind $workload qd=$qd: raw bdev (cpu $host_cpu)"
    out=$("$bin_dir/tessera" bench --bdev "$kind:1G" --workload "$workload" --qd "$qd" \
        --bs 4096 --seconds "$seconds" --cores "$host_cpu" --idle busy ${json_dir:+--json})
    if [ -n "$json_dir" ]; then
        echo "$out" >"$json_dir/raw-$kind-$workload-qd$qd.json"
    else
        echo "$out"
    fi
}

for kind in null malloc; do
    for workload in randread randwrite; do
        for qd in 1 64; do
            run "$kind" "$workload" "$qd"
        done
    done
done
