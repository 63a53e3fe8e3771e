#!/usr/bin/env bash
# TLS vs plain NVMe/TCP through SPDK's bdevperf against one tessera target: the same
# subsystem on a secure-channel listener (:4431) and a plain one (:4430).
set -euo pipefail
B=${B:-$(mktemp -d)}  # work folder; T names the tessera binary
S=${TESSERA_SPDK_DIR:-$(cd "$(dirname "$0")/../../shared/spdk" && pwd)}
T=${T:-$(cd "$(dirname "$0")/.." && pwd)/target/release/tessera}
H=nqn.2014-08.org.nvmexpress:uuid:7a1b2c3d-0000-4000-8000-0000000000b1
N=nqn.2026-11.io.tessera:bench
cd $B
KEY=$(python3 - <<'PY'
import base64,zlib
k=bytes((i*37+5)&255 for i in range(32))
print("NVMeTLSkey-1:01:"+base64.b64encode(k+zlib.crc32(k).to_bytes(4,'little')).decode()+":",end="")
PY
)
printf '%s' "$KEY" > $B/k.key; chmod 600 $B/k.key
PORTS=${PORTS:-"4430 4431"}
if [ "$PORTS" = 4430 ]; then
cat > $B/t.yaml <<Y
cores: [0]
bdevs: [{type: malloc, name: M0, size: 1GiB}]
nvmf:
  subsystems:
    - nqn: $N
      hosts: [$H]
      listeners: [{address: 127.0.0.1, port: 4430}]
      namespaces: [{bdev: M0, nsid: 1}]
Y
else
cat > $B/t.yaml <<Y
cores: [0]
keys: [{name: k, path: $B/k.key}]
bdevs: [{type: malloc, name: M0, size: 1GiB}]
nvmf:
  subsystems:
    - nqn: $N
      hosts: [$H]
      psk: {$H: k}
      listeners: [{address: 127.0.0.1, port: 4430}, {address: 127.0.0.1, port: 4431, secure_channel: true}]
      namespaces: [{bdev: M0, nsid: 1}]
Y
fi
for port in 4430 4431; do
  psk=""; kr="[]"
  if [ $port = 4431 ]; then psk=', "psk": "k"'; kr='[{"method": "keyring_file_add_key", "params": {"name": "k", "path": "'$B'/k.key"}}]'; fi
  cat > $B/bp$port.json <<J
{"subsystems": [{"subsystem": "keyring", "config": $kr},
 {"subsystem": "bdev", "config": [{"method": "bdev_nvme_attach_controller", "params":
  {"name": "Nvme0", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "$port",
   "subnqn": "$N", "hostnqn": "$H"$psk}}]}]}
J
done
taskset -c 0 $T serve --config $B/t.yaml -s $B/t.sock > $B/serve.log 2>&1 &
SP=$!
trap 'kill $SP' EXIT
for i in $(seq 300); do (echo >/dev/tcp/127.0.0.1/4430) 2>/dev/null && break; sleep 0.2; done
# Fill the namespace once so reads read data.
$S/run bdevperf --no-pci --no-huge -s 1024 --disable-cpumask-locks -m 0x2 --json $B/bp4430.json -q 32 -o 131072 -w write -t 3 >/dev/null 2>&1 || true
for round in ${ROUNDS:-1 2 3}; do
  for port in $PORTS; do
    for spec in "64 4096" "8 131072"; do
      set -- $spec
      out=$($S/run bdevperf --no-pci --no-huge -s 1024 --disable-cpumask-locks -m 0x2 --json $B/bp$port.json -q $1 -o $2 -w randread -t 8 2>&1 | grep -E '^\s*Total\s*:' | head -1)
      echo "round=$round port=$port qd=$1 bs=$2 $out"
    done
  done
done
