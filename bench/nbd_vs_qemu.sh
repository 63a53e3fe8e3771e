#!/usr/bin/env bash
# A/B comparison of tessera's NBD server with qemu-nbd on the same machine.
#
#   bench/nbd_vs_qemu.sh [--runs N] [--runtime SEC] [--smoke] [--only tessera|qemu]
#                        [--server-cpu C] [--fio-cpu C] [--out DIR] [--file]
#                        [--tessera PATH]   (a built binary; default: build this tree)
#
# Servers: `tessera serve` with a 1 GiB malloc bdev exported as `Malloc0` (one reactor,
# busy polling), and `qemu-nbd` on a preallocated 1 GiB raw file in /dev/shm. Both are
# pinned to --server-cpu (default 0); fio runs on --fio-cpu (default 1) with its `nbd`
# engine. Workloads: 4 KiB random read and random write at QD 32 and QD 1. The servers
# take turns (never both up at once — a busy-polling reactor would steal the core), and
# which one goes first alternates between runs. Prints the median of the runs for each
# workload and the ratios: IOPS at QD 32, p50 completion latency at QD 1.
#
# --file: files on disk instead, as a user first meets them. tessera runs its embedded
# default (`tessera serve --data-dir`, no --config: a thin disk `vd0` in a pool on a
# file, io_uring with O_DIRECT, the adaptive idle policy), qemu-nbd a raw file beside it
# with `--cache=none --aio=io_uring`; both files under /var/tmp. Each server's first
# 2 GiB are written once (sequential 1 MiB writes through the server) before the runs,
# and the workloads stay within them.
#
# Measure on a quiet machine; this script records nothing by itself (raw fio JSON goes
# to --out, a temporary directory by default). --smoke does one 2-second run of each.
#
# Needs: cargo, fio (with the nbd engine), qemu-nbd, python3, taskset, ss.

set -euo pipefail

RUNS=3
RUNTIME=10
RAMP=2
ONLY=""
SERVER_CPU=0
FIO_CPU=1
OUT=""
FILE_MODE=""
TESSERA_BIN=""
TESSERA_PORT=10809
QEMU_PORT=10810
SIZE=1G

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --smoke) RUNS=1; RUNTIME=2; RAMP=0; shift ;;
        --only) ONLY=$2; shift 2 ;;
        --server-cpu) SERVER_CPU=$2; shift 2 ;;
        --fio-cpu) FIO_CPU=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --file) FILE_MODE=1; shift ;;
        --tessera) TESSERA_BIN=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$ONLY" in ""|tessera|qemu) ;; *) echo "--only takes tessera or qemu" >&2; exit 2 ;; esac

for tool in fio python3 taskset ss; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
[[ "$ONLY" == tessera ]] || command -v qemu-nbd >/dev/null || { echo "missing tool: qemu-nbd" >&2; exit 1; }
fio --enghelp=nbd >/dev/null 2>&1 || { echo "this fio has no nbd engine" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/nbd_vs_qemu.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
SERVER_PID=""

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
cleanup() {
    stop_server
    rm -f /dev/shm/nbd_vs_qemu.$$.img
    rm -rf "$WORK/run" "$WORK/data" "$WORK/qemu.img"
}
trap cleanup EXIT INT TERM

wait_port() {
    local port=$1
    for _ in $(seq 300); do
        if ss -ltn | grep -q ":$port "; then return 0; fi
        if [[ -n "$SERVER_PID" ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TESSERA=${TESSERA_BIN:-$TARGET_DIR/release/tessera}
if [[ "$ONLY" != qemu ]]; then
    if [[ -z "$TESSERA_BIN" ]]; then
        echo "building tessera (release)..." >&2
        (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --quiet)
    fi
    mkdir -p "$WORK/run"
    cat > "$WORK/tessera.yaml" <<EOF
cores: [$SERVER_CPU]
idle: busy
bdevs: [{type: malloc, name: Malloc0, size: $SIZE}]
nbd: {listen: "127.0.0.1:$TESSERA_PORT", exports: [{name: Malloc0, bdev: Malloc0}]}
EOF
fi

EXPORT=Malloc0
if [[ -n "$FILE_MODE" ]]; then
    EXPORT=vd0
    SIZE=2G
    # The embedded default listens on 10809 and 4420.
    TESSERA_PORT=10809
fi

start_tessera() {
    if [[ -n "$FILE_MODE" ]]; then
        taskset -c "$SERVER_CPU" "$TESSERA" serve --data-dir "$WORK/data" \
            --rpc-socket "$WORK/run/tessera.sock" > "$WORK/tessera.log" 2>&1 &
    else
        taskset -c "$SERVER_CPU" "$TESSERA" serve --config "$WORK/tessera.yaml" \
            --rpc-socket "$WORK/run/tessera.sock" > "$WORK/tessera.log" 2>&1 &
    fi
    SERVER_PID=$!
    if ! wait_port "$TESSERA_PORT"; then
        echo "tessera serve did not open 127.0.0.1:$TESSERA_PORT (is the nbd: config section wired into serve?)" >&2
        cat "$WORK/tessera.log" >&2
        exit 1
    fi
}

start_qemu() {
    if [[ -n "$FILE_MODE" ]]; then
        [[ -f "$WORK/qemu.img" ]] || truncate -s 8G "$WORK/qemu.img"
        taskset -c "$SERVER_CPU" qemu-nbd -f raw --persistent --shared=8 --cache=none \
            --aio=io_uring --bind=127.0.0.1 --port="$QEMU_PORT" --export-name=vd0 \
            "$WORK/qemu.img" > "$WORK/qemu-nbd.log" 2>&1 &
        SERVER_PID=$!
        wait_port "$QEMU_PORT" || { echo "qemu-nbd did not start" >&2; cat "$WORK/qemu-nbd.log" >&2; exit 1; }
        return
    fi
    local img=/dev/shm/nbd_vs_qemu.$$.img
    if [[ ! -f "$img" ]]; then
        # Written in full, as the malloc bdev is populated up front: no first-touch page
        # allocation on writes, and no holes for qemu-nbd to answer reads from without
        # copying data (a sparse or merely fallocated file would skew both ways).
        dd if=/dev/zero of="$img" bs=1M count="$((${SIZE%G} * 1024))" status=none
    fi
    taskset -c "$SERVER_CPU" qemu-nbd -f raw --persistent --shared=8 \
        --bind=127.0.0.1 --port="$QEMU_PORT" --export-name=Malloc0 "$img" \
        > "$WORK/qemu-nbd.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$QEMU_PORT" || { echo "qemu-nbd did not start" >&2; cat "$WORK/qemu-nbd.log" >&2; exit 1; }
}

# run_fio SERVER PORT RW QD RUN
run_fio() {
    local server=$1 port=$2 rw=$3 qd=$4 run=$5
    local out="$OUT/$server-$rw-qd$qd-run$run.json"
    fio --name="$server-$rw-qd$qd" --ioengine=nbd --uri="nbd://127.0.0.1:$port/$EXPORT" \
        --rw="$rw" --bs=4k --iodepth="$qd" --numjobs=1 --size="$SIZE" \
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
        --cpus_allowed="$FIO_CPU" --output-format=json 2>/dev/null \
        | sed -n '/^{/,$p' > "$out"
    python3 - "$out" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["iops"] > 0 else j["write"]
assert j["error"] == 0, "fio reported an error"
print(f'  {j["jobname"]:<28} {d["iops"]:>10.0f} IOPS   p50 {d["clat_ns"]["percentile"]["50.000000"] / 1000:8.1f} us')
EOF
}

WORKLOADS=("randread 32" "randwrite 32" "randread 1" "randwrite 1")

# prefill SERVER PORT: in --file mode, the first SIZE written once, before the first run.
prefill() {
    local server=$1 port=$2
    [[ -n "$FILE_MODE" && ! -e "$WORK/$server.filled" ]] || return 0
    fio --name="$server-prefill" --ioengine=nbd --uri="nbd://127.0.0.1:$port/$EXPORT" \
        --rw=write --bs=1m --iodepth=8 --size="$SIZE" --cpus_allowed="$FIO_CPU" \
        --output-format=json > /dev/null 2>&1 || { echo "prefill through $server failed" >&2; exit 1; }
    touch "$WORK/$server.filled"
}

bench_server() {
    local server=$1 run=$2 port
    if [[ $server == tessera ]]; then start_tessera; port=$TESSERA_PORT; else start_qemu; port=$QEMU_PORT; fi
    prefill "$server" "$port"
    for w in "${WORKLOADS[@]}"; do
        # shellcheck disable=SC2086
        run_fio "$server" "$port" $w "$run"
    done
    stop_server
}

SERVERS=(tessera qemu)
[[ -n "$ONLY" ]] && SERVERS=("$ONLY")
for run in $(seq "$RUNS"); do
    order=("${SERVERS[@]}")
    if (( run % 2 == 0 )) && (( ${#order[@]} == 2 )); then order=(qemu tessera); fi
    echo "run $run/$RUNS (${order[*]})"
    for s in "${order[@]}"; do
        bench_server "$s" "$run"
    done
done

python3 - "$OUT" "$RUNS" <<'EOF'
import json, statistics, sys, os
out, runs = sys.argv[1], int(sys.argv[2])
def load(server, rw, qd):
    iops, p50 = [], []
    for r in range(1, runs + 1):
        p = os.path.join(out, f"{server}-{rw}-qd{qd}-run{r}.json")
        if not os.path.exists(p):
            return None
        j = json.load(open(p))["jobs"][0]
        d = j["read"] if rw == "randread" else j["write"]
        iops.append(d["iops"])
        p50.append(d["clat_ns"]["percentile"]["50.000000"] / 1000)
    return statistics.median(iops), statistics.median(p50)
print()
print(f"medians of {runs} run(s); raw fio JSON in {out}")
print(f'{"workload":<16}{"tessera IOPS":>14}{"qemu IOPS":>12}{"ratio":>8}{"tessera p50":>16}{"qemu p50":>16}{"ratio":>8}')
for rw, qd in [("randread", 32), ("randwrite", 32), ("randread", 1), ("randwrite", 1)]:
    t, q = load("tessera", rw, qd), load("qemu", rw, qd)
    cell = lambda v, f: f.format(v) if v is not None else "-"
    ti, tp = t if t else (None, None)
    qi, qp = q if q else (None, None)
    ri = ti / qi if t and q and qi else None
    rp = tp / qp if t and q and qp else None
    print(f'{rw + " qd" + str(qd):<16}{cell(ti, "{:.0f}"):>14}{cell(qi, "{:.0f}"):>12}{cell(ri, "{:.2f}x"):>8}'
          f'{cell(tp, "{:.1f} us"):>16}{cell(qp, "{:.1f} us"):>16}{cell(rp, "{:.2f}x"):>8}')
print()
print("targets: QD 32 IOPS ratio >= 1.5x; QD 1 p50 latency ratio <= 1.0x (malloc);"
      " every row at or better than qemu-nbd (--file)")
EOF
