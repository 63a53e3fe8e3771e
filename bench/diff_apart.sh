#!/usr/bin/env bash
# What a diff of two snapshots far apart costs where the tables cannot tell (issue 22):
# a thin disk on a file pool (uring; the data is real, so contents can be compared),
# served by `tessera serve` over NBD. fio (nbd engine) writes WRITES random 4 KiB blocks
# into the first SPAN of the disk in each of ROUNDS rounds, a snapshot after each
# (s1 .. sN): every segment of the span is written in every round, so its layers are
# merged after the fourth, and s1 and sN hold no common layer of it — their diff reads
# both sides of those segments and compares them. Timed, REPEAT times each, over the
# whole disk with a client that stays connected: the diff of the last two snapshots
# (read off the tables) and of the first and the last (compared); and `nbdinfo
# --map=qemu:dirty-bitmap:s1` on the live disk (the same as sN).
#
#   bench/diff_apart.sh [--tessera PATH] [--span 1G] [--writes 20000] [--rounds 6] [--repeat 5]
set -euo pipefail
cd "$(dirname "$0")/.."

T=
span=1G
writes=20000
rounds=6
repeat=5
while [ $# -gt 0 ]; do
    case "$1" in
        --tessera) T=$2; shift 2 ;;
        --span) span=$2; shift 2 ;;
        --writes) writes=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
. bench/support/tessera_build.sh
tessera_build
work_dir diffapart
truncate -s 16G "$work/data.img"
cat >"$work/serve.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: uring, name: data0, path: $work/data.img}
pools:
  - {name: p0, bdevs: [data0]}
disks:
  - {name: vd0, pool: p0, size: 8GiB, thin: true}
nbd:
  listen: 127.0.0.1:$port
  exports:
    - {name: vd0, bdev: p0/vd0}
YAML
start_serve
rpc() { "$T" rpc -s "$work/rpc.sock" "$@"; }
machine_line
echo "# 8 GiB thin disk on a file pool; $rounds rounds of $writes random 4 KiB writes in its first $span, a snapshot after each"
for r in $(seq "$rounds"); do
    taskset -c 1 fio --name=w --ioengine=nbd --uri="nbd://127.0.0.1:$port/vd0" --rw=randwrite \
        --bs=4k --iodepth=32 --number_ios="$writes" --size="$span" --norandommap --randrepeat=0 \
        --output-format=terse >/dev/null
    rpc bdev_lvol_snapshot --lvol-name p0/vd0 --snapshot-name "s$r" >/dev/null
done
for i in $(seq "$repeat"); do
    python3 - "$work/rpc.sock" "$port" "$rounds" <<'PY'
import json, socket, subprocess, sys, time
sock, port, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = socket.socket(socket.AF_UNIX)
client.connect(sock)
ids = iter(range(1, 1 << 30))
def call(params):
    client.sendall(json.dumps({"jsonrpc": "2.0", "id": next(ids),
                               "method": "tessera_lvol_get_changed_ranges",
                               "params": params}).encode())
    chunks = []
    while not chunks or not chunks[-1].endswith(b"\n"):
        chunks.append(client.recv(1 << 20))
        if not chunks[-1]:
            raise SystemExit("the target closed the RPC connection")
    return json.loads(b"".join(chunks))["result"]
def diff(base, target):
    t0 = time.monotonic()
    offset, blocks, pages = 0, 0, 0
    while True:
        page = call({"base": base, "target": target, "max_ranges": 65536, "offset_blocks": offset})
        pages += 1
        blocks += sum(r["num_blocks"] for r in page["ranges"])
        if page["next_offset_blocks"] is None:
            return round((time.monotonic() - t0) * 1000, 1), blocks * 4096, pages
        offset = page["next_offset_blocks"]
last = f"p0/s{rounds}"
near_ms, near_bytes, near_pages = diff(f"p0/s{rounds - 1}", last)
far_ms, far_bytes, far_pages = diff("p0/s1", last)
t0 = time.monotonic()
subprocess.run(["nbdinfo", "--map=qemu:dirty-bitmap:p0/s1", f"nbd://127.0.0.1:{port}/vd0"],
               check=True, capture_output=True, text=True)
nbd_ms = round((time.monotonic() - t0) * 1000, 1)
print(json.dumps({"consecutive_ms": near_ms, "consecutive_bytes": near_bytes,
                  "far_ms": far_ms, "far_bytes": far_bytes, "far_pages": far_pages,
                  "nbdinfo_far_ms": nbd_ms}))
PY
done
