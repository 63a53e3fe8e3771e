#!/usr/bin/env bash
# NBD over TLS: what TLS costs, and that plain connections did not get slower.
#
#   bench/nbd_tls.sh OLD_BINARY NEW_BINARY [RUNS]
#
# A `tessera serve` on CPU 0 (one busy reactor, a 1 GiB malloc bdev exported as `m0`),
# clients on CPU 1, one server up at a time, order alternating between runs:
#   1. plain, OLD vs NEW: fio's nbd engine, 4 KiB randread QD 32 (IOPS), and nbdcopy of
#      the 1 GiB export to `null:` (MiB/s);
#   2. NEW, plain vs TLS (`tls: optional`, TLS 1.3, certificates made here with the
#      openssl command): nbdcopy of 1 GiB, export to null: (read) and a 1 GiB file in
#      /dev/shm to the export (write), MiB/s.
# Prints each run and the medians. Measure on a quiet machine (no compiler running).
#
# Needs: fio (nbd engine), nbdcopy, openssl, python3, taskset, ss.
set -euo pipefail
old=$1
new=$2
runs=${3:-5}
port=${NBD_TLS_BENCH_PORT:-10899}
work=$(mktemp -d /var/tmp/nbd-tls-bench.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work" /dev/shm/nbd-tls-bench.$$.img
}
trap cleanup EXIT
med() { python3 -c 'import sys,statistics; print(round(statistics.median(float(x) for x in sys.argv[1:]), 1))' "$@"; }

# A CA, a server certificate for 127.0.0.1, a client directory in libnbd's layout.
pki=$work/pki
mkdir -p "$pki/client"
(
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem -days 2 \
        -subj "/CN=bench CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr \
        -subj "/CN=localhost" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' > ext
    openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -set_serial 1 \
        -out server-cert.pem -days 2 -extfile ext 2>/dev/null
    chmod 600 server-key.pem
    cp ca-cert.pem client/
)

serve() { # binary, extra nbd yaml
    cat > "$work/t.yaml" <<EOF
cores: [0]
idle: busy
bdevs: [{type: malloc, name: m0, size: 1GiB}]
nbd: {listen: "127.0.0.1:$port", exports: [{name: m0, bdev: m0}]$2}
EOF
    RUST_LOG=warn taskset -c 0 "$1" serve --config "$work/t.yaml" -s "$work/rpc.sock" \
        > "$work/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do
        ss -ltn | grep -q ":$port " && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$work/serve.log" >&2
    exit 1
}
stop() {
    kill -INT "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    pid=
}
fio_iops() {
    taskset -c 1 fio --name=r --ioengine=nbd --uri="nbd://127.0.0.1:$port/m0" --rw=randread \
        --bs=4k --iodepth=32 --size=1G --time_based --runtime=5 --ramp_time=1 \
        --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}
copy_mibs() { # src dst
    local t0 t1
    t0=$(date +%s.%N)
    taskset -c 1 nbdcopy "$1" "$2"
    t1=$(date +%s.%N)
    python3 -c "print(round(1024 / ($t1 - $t0), 1))"
}

plain=nbd://127.0.0.1:$port/m0
tls="nbds://127.0.0.1:$port/m0?tls-certificates=$pki/client"
tls_yaml=", tls: optional, tls_cert: $pki/server-cert.pem, tls_key: $pki/server-key.pem"
img=/dev/shm/nbd-tls-bench.$$.img
head -c 1G /dev/urandom > "$img"

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "# old: $old  new: $new  runs: $runs, alternating"
fo=() fn=() co=() cn=() rp=() rt=() wp=() wt=()
plain_run() { # binary -> "iops mibs"
    serve "$1" ""
    local i c
    i=$(fio_iops)
    c=$(copy_mibs "$plain" null:)
    stop
    echo "$i $c"
}
for r in $(seq "$runs"); do
    if ((r % 2)); then order="old new"; else order="new old"; fi
    for b in $order; do
        bin=$old
        [ "$b" = new ] && bin=$new
        read -r i c < <(plain_run "$bin")
        echo "run $r plain $b: randread QD32 $i IOPS, nbdcopy read $c MiB/s"
        if [ "$b" = old ]; then fo+=("$i"); co+=("$c"); else fn+=("$i"); cn+=("$c"); fi
    done
    serve "$new" "$tls_yaml"
    if ((r % 2)); then
        a=$(copy_mibs "$plain" null:); b=$(copy_mibs "$tls" null:)
        c=$(copy_mibs "$img" "$plain"); d=$(copy_mibs "$img" "$tls")
    else
        b=$(copy_mibs "$tls" null:); a=$(copy_mibs "$plain" null:)
        d=$(copy_mibs "$img" "$tls"); c=$(copy_mibs "$img" "$plain")
    fi
    stop
    echo "run $r new tls: optional: read plain $a TLS $b MiB/s, write plain $c TLS $d MiB/s"
    rp+=("$a"); rt+=("$b"); wp+=("$c"); wt+=("$d")
done
echo "median plain randread QD32 IOPS: old $(med "${fo[@]}") new $(med "${fn[@]}")"
echo "median plain nbdcopy read MiB/s: old $(med "${co[@]}") new $(med "${cn[@]}")"
echo "median new read MiB/s: plain $(med "${rp[@]}") TLS $(med "${rt[@]}")"
echo "median new write MiB/s: plain $(med "${wp[@]}") TLS $(med "${wt[@]}")"
