#!/usr/bin/env bash
# How long the changed blocks between a snapshot and its disk take to list (issue 22):
# a 1 TiB thin disk on a pool with 4 TiB of null data and its metadata on a file, served
# by `tessera serve` over NBD; fio (nbd engine) writes WRITES random 4 KiB blocks
# (scattered extents), snapshot s1, then CHANGED more random 4 KiB writes (a 1 % change
# is 10 486 of the disk's 1 048 576 segments). Then, ROUNDS times, every page of
# `tessera_lvol_get_changed_ranges` s1 → vd0 (65 536 runs a page) — through a JSON-RPC
# client that stays connected (a Unix socket in Python) and through `tessera rpc` started
# once per page — and `nbdinfo --map=qemu:dirty-bitmap:s1` over the whole disk are timed.
#
#   bench/diff_speed.sh [--tessera PATH] [--writes 1000000] [--changed 10486] [--rounds 5]
set -euo pipefail
cd "$(dirname "$0")/.."

T=
writes=1000000
changed=10486
rounds=5
while [ $# -gt 0 ]; do
    case "$1" in
        --tessera) T=$2; shift 2 ;;
        --writes) writes=$2; shift 2 ;;
        --changed) changed=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
. bench/support/tessera_build.sh
tessera_build
work_dir diff
truncate -s 8G "$work/meta.img"
cat >"$work/serve.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: null, name: data0, size: 4TiB}
  - {type: uring, name: meta0, path: $work/meta.img}
pools:
  - {name: p0, bdevs: [data0], metadata_bdev: meta0}
disks:
  - {name: vd0, pool: p0, size: 1TiB, thin: true}
nbd:
  listen: 127.0.0.1:$port
  exports:
    - {name: vd0, bdev: p0/vd0}
YAML
start_serve
rpc() { "$T" rpc -s "$work/rpc.sock" "$@"; }
fio_writes() {
    taskset -c 1 fio --name=w --ioengine=nbd --uri="nbd://127.0.0.1:$port/vd0" --rw=randwrite \
        --bs=4k --iodepth=32 --number_ios="$1" --size=1T --norandommap --randrepeat=0 \
        --output-format=terse >/dev/null
}
machine_line
echo "# 1 TiB thin disk, null data, metadata file; $writes random 4 KiB writes, snapshot s1, $changed more"
fio_writes "$writes"
rpc bdev_lvol_snapshot --lvol-name p0/vd0 --snapshot-name s1 >/dev/null
fio_writes "$changed"
for r in $(seq "$rounds"); do
    python3 - "$T" "$work/rpc.sock" "$port" <<'PY'
import json, socket, subprocess, sys, time
T, sock, port = sys.argv[1], sys.argv[2], sys.argv[3]

def pages_of(call):
    runs, blocks, pages, offset = 0, 0, 0, 0
    while True:
        page = call({"base": "p0/s1", "target": "p0/vd0", "max_ranges": 65536,
                     "offset_blocks": offset})
        pages += 1
        runs += len(page["ranges"])
        blocks += sum(r["num_blocks"] for r in page["ranges"])
        if page["next_offset_blocks"] is None:
            return runs, blocks, pages
        offset = page["next_offset_blocks"]

# A client that stays connected, as a backup tool would be (each answer ends with a
# newline), then `tessera rpc` started once per page.
client = socket.socket(socket.AF_UNIX)
client.connect(sock)
def call(params, ids=iter(range(1, 1 << 30))):
    client.sendall(json.dumps({"jsonrpc": "2.0", "id": next(ids),
                               "method": "tessera_lvol_get_changed_ranges",
                               "params": params}).encode())
    chunks = []
    while not chunks or not chunks[-1].endswith(b"\n"):
        chunks.append(client.recv(1 << 20))
        if not chunks[-1]:
            raise SystemExit("the target closed the RPC connection")
    return json.loads(b"".join(chunks))["result"]
t0 = time.monotonic()
runs, blocks, pages = pages_of(call)
client_s = time.monotonic() - t0
client.close()
t0 = time.monotonic()
pages_of(lambda p: json.loads(subprocess.run(
    [T, "rpc", "-s", sock, "tessera_lvol_get_changed_ranges", "--json", json.dumps(p)],
    check=True, capture_output=True, text=True).stdout))
rpc_s = time.monotonic() - t0
t0 = time.monotonic()
m = subprocess.run(["nbdinfo", "--map=qemu:dirty-bitmap:p0/s1", f"nbd://127.0.0.1:{port}/vd0"],
                   check=True, capture_output=True, text=True).stdout
nbd_s = time.monotonic() - t0
dirty = sum(int(l.split()[1]) for l in m.splitlines() if l.split()[2] == "1")
print(json.dumps({"rpc_client_ms": round(client_s * 1000, 1), "tessera_rpc_ms": round(rpc_s * 1000, 1), "pages": pages, "runs": runs,
                  "changed_bytes": blocks * 4096, "nbdinfo_map_ms": round(nbd_s * 1000, 1),
                  "nbd_dirty_bytes": dirty}))
PY
done
