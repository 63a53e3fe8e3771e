#!/usr/bin/env bash
# NVMe/TCP over TLS 1.3 (PSK) vs plain, tessera and SPDK's nvmf_tgt side by side, driven
# by SPDK's bdevperf (randread). Every target serves the same SPDK JSON config: a null
# namespace (1 GiB, 512-byte blocks) in one subsystem with one allowed host that has a
# PSK from the keyring, a plain listener (:4430) and a secure-channel one (:4431). The
# target runs busy-polling on CPU 0, bdevperf on CPU 1. Rounds alternate the targets
# (the order turns each round); a target is started for its turn and stopped after it,
# so only one runs at a time.
#
#   bench/nvmf_tls_cost.sh [--seconds N] [--runs N] [--smoke]
#   TARGETS="old=/var/tmp/bins/old new=target/release/tessera spdk" bench/nvmf_tls_cost.sh
#
# TARGETS: LABEL=TESSERA_BINARY entries and `spdk` (default: this tree's build and spdk).
# SPECS: "QD:BS ..." (default "64:4096 8:131072"); PORTS: "4430 4431" (plain, TLS).
# IDLE: tessera's idle policy (busy, as SPDK's nvmf_tgt; `adaptive` sleeps when idle, so
# its CPU time per I/O is the target's own work).
# Prints one line per run (with the target's CPU time over the run, bdevperf's start
# included, per I/O done), then one summary line per target, port and spec with the medians (and every
# run).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=8
runs=3
# shellcheck source=bench/support/side_by_side.sh
. bench/support/side_by_side.sh
parse_options "$@"
find_spdk
TARGETS=${TARGETS:-"tessera=target/release/tessera spdk"}
SPECS=${SPECS:-"64:4096 8:131072"}
PORTS=${PORTS:-"4430 4431"}
H=nqn.2014-08.org.nvmexpress:uuid:7a1b2c3d-0000-4000-8000-0000000000b1
N=nqn.2026-11.io.tessera:bench
B=$(mktemp -d /var/tmp/tessera-tls-cost.XXXXXX)
pid=
trap 'stop_target; rm -rf "$B"; remove_spdk_traces' EXIT

# A fixed test key (TLS_AES_128_GCM_SHA256), not a secret.
python3 - "$B/k.key" <<'PY'
import base64, sys, zlib
k = bytes((i * 37 + 5) & 255 for i in range(32))
open(sys.argv[1], "w").write("NVMeTLSkey-1:01:" + base64.b64encode(k + zlib.crc32(k).to_bytes(4, "little")).decode() + ":")
PY
chmod 600 "$B/k.key"

listener() { # PORT SECURE
    echo '{"method": "nvmf_subsystem_add_listener", "params": {"nqn": "'$N'", "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "'$1'"}, "secure_channel": '$2'}}'
}
cat >"$B/target.json" <<J
{"subsystems": [
 {"subsystem": "keyring", "config": [
  {"method": "keyring_file_add_key", "params": {"name": "k", "path": "$B/k.key"}}]},
 {"subsystem": "bdev", "config": [
  {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 2097152, "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
  {"method": "nvmf_create_subsystem", "params": {"nqn": "$N", "allow_any_host": false, "serial_number": "TLS0001"}},
  {"method": "nvmf_subsystem_add_host", "params": {"nqn": "$N", "host": "$H", "psk": "k"}},
  {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$N", "namespace": {"bdev_name": "Null0", "nsid": 1}}},
  $(listener 4430 false),
  $(listener 4431 true)]}]}
J
for port in 4430 4431; do
    psk=""; kr="[]"
    if [ "$port" = 4431 ]; then
        psk=', "psk": "k"'
        kr='[{"method": "keyring_file_add_key", "params": {"name": "k", "path": "'$B'/k.key"}}]'
    fi
    cat >"$B/bp$port.json" <<J
{"subsystems": [{"subsystem": "keyring", "config": $kr},
 {"subsystem": "bdev", "config": [{"method": "bdev_nvme_attach_controller", "params":
  {"name": "Nvme0", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "$port",
   "subnqn": "$N", "hostnqn": "$H"$psk}}]}]}
J
done

# start LABEL=BINARY | spdk
start() {
    if [ "$1" = spdk ]; then
        "$S/run" nvmf_tgt --no-pci --no-huge -s 1024 --disable-cpumask-locks -m 0x1 \
            -r "$B/s.sock" --json "$B/target.json" >"$B/target.log" 2>&1 &
    else
        RUST_LOG=warn taskset -c 0 "${1#*=}" serve -c "$B/target.json" -m 0x1 --idle "${IDLE:-busy}" \
            -s "$B/t.sock" >"$B/target.log" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 300); do
        if (exec 3<>/dev/tcp/127.0.0.1/4431) 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "$1 did not listen on 4431:" >&2
    cat "$B/target.log" >&2
    exit 1
}

machine_line
declare -A res cpus
# The target's user + system CPU time so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
round=0
targets=($TARGETS)
for r in $(seq "$runs"); do
    round=$r
    n=${#targets[@]}
    for i in $(seq 0 $((n - 1))); do
        t=${targets[$(((i + r - 1) % n))]}
        label=${t%%=*}
        start "$t"
        for port in $PORTS; do
            for spec in $SPECS; do
                qd=${spec%%:*}; bs=${spec##*:}
                t0=$(cpu_ticks)
                "$S/run" bdevperf --no-pci --no-huge -s 1024 --disable-cpumask-locks -m 0x2 \
                    --json "$B/bp$port.json" -q "$qd" -o "$bs" -w randread -t "$seconds" >"$B/bp.out" 2>&1 || true
                t1=$(cpu_ticks)
                out=$(tr '\r' '\n' <"$B/bp.out" | awk '/^[ ]*Total[ ]*:/ {sub(/^[ ]*Total[ ]*:/, ""); print $1, $2; exit}')
                [ -n "$out" ] || {
                    echo "bdevperf gave no Total ($label port $port qd $qd bs $bs):" >&2
                    tail -3 "$B/bp.out" >&2; tail -2 "$B/target.log" >&2; out="0 0"; }
                read -r iops mibs <<<"$out"
                cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" -v n="$iops" -v s="$seconds" \
                    'BEGIN {printf "%.2f", (n > 0 ? (b - a) / hz * 1e6 / (n * s) : 0)}')
                echo "$(date -u +%H:%M:%S) round=$round target=$label port=$port qd=$qd bs=$bs iops=$iops mibs=$mibs cpu_us_per_io=$cpu"
                res["$label $port $qd $bs"]+="$iops "
                cpus["$label $port $qd $bs"]+="$cpu "
            done
        done
        stop_target
    done
done
for t in "${targets[@]}"; do
    label=${t%%=*}
    for port in $PORTS; do
        for spec in $SPECS; do
            qd=${spec%%:*}; bs=${spec##*:}
            v=${res["$label $port $qd $bs"]}
            c=${cpus["$label $port $qd $bs"]}
            echo "median target=$label port=$port qd=$qd bs=$bs iops=$(echo "$v" | median) cpu_us_per_io=$(echo "$c" | median) runs=[${v% }] cpu_runs=[${c% }]"
        done
    done
done
