#!/usr/bin/env bash
# Metadata at scale (issue 18): a big thin disk on a file pool (data and metadata in one
# sparse file, through io_uring), written at random with 4 KiB first writes at QD 64 on
# one core — the scattered case, where nearly every write lands in a fresh segment.
#   - first writes per second during that run (each one a mapping fault);
#   - `tessera check` of the closed pool: node pages, extents, bytes of metadata per
#     extent, time taken;
#   - reopening the pool: time to open and peak resident memory per extent (a process
#     that opens the pool and reads for 0.2 s);
#   - snapshot create under load: on the reopened disk, 3 s of the same random writes
#     with a snapshot after 2 s (the snapshot commits what is dirty), and the longest
#     I/O latency in the half second after it.
# One JSON line per round.
#
#   bench/metadata_scale.sh [--seconds N] [--runs N] [--size SIZE] [--tessera PATH]
#
# `--tessera` measures another build (e.g. the previous commit's) with the same steps.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20
runs=3
size=1TiB
T=
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --tessera) T=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
. bench/support/tessera_build.sh
tessera_build
work=$(mktemp -d /var/tmp/tessera-metascale.XXXXXX)
trap 'rm -rf "$work"' EXIT
bytes=$(python3 -c "
s='$size'; u={'GiB':1<<30,'TiB':1<<40}
print(int(float(s[:-3])*u[s[-3:]]))")
file_bytes=$((bytes + bytes / 64 + (1 << 30)))

machine_line
echo "# $T; $size thin disk, 4 KiB random first writes, QD 64, $seconds s; check, reopen, snapshot under load"
# reopen.yaml opens the pool; pool.yaml also creates the disk.
cat >"$work/reopen.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: uring, name: file0, path: $work/pool.img}
pools:
  - {name: p0, bdevs: [file0]}
YAML
cat "$work/reopen.yaml" - >"$work/pool.yaml" <<YAML
disks:
  - {name: thin0, pool: p0, size: $size, thin: true}
YAML
for r in $(seq "$runs"); do
    rm -f "$work/pool.img"
    truncate -s "$file_bytes" "$work/pool.img"
    "$T" bench -c "$work/pool.yaml" --bdev thin0 -w randwrite -q 64 -t "$seconds" \
        --json >"$work/write.json" 2>"$work/write.log"
    t0=$(date +%s.%N)
    "$T" check --json "$work/pool.img" >"$work/check.json"
    t1=$(date +%s.%N)
    # Reopen: a process that opens the pool and reads for 0.2 s; its peak RSS, and the
    # time from its start to "pool opened" in its log.
    /usr/bin/time -f "%M" -o "$work/rss" "$T" bench -c "$work/reopen.yaml" --bdev thin0 -w randread \
        -q 1 -t 0.2 --json >/dev/null 2>"$work/reopen.log"
    "$T" bench -c "$work/reopen.yaml" --bdev thin0 -w randwrite -q 64 -t 3 --snapshot-at 2 \
        --json >"$work/snap.json" 2>"$work/snap.log"
    python3 - "$work" "$t0" "$t1" <<'PY'
import json, re, sys, datetime
work, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
w = json.load(open(f"{work}/write.json"))
s = json.load(open(f"{work}/snap.json"))
c = json.load(open(f"{work}/check.json"))
rss_kib = int(open(f"{work}/rss").read().split()[-1])
def stamps(path, what):
    out = []
    for line in open(path):
        if what in line:
            out.append(datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")))
    return out
log = open(f"{work}/reopen.log").read().splitlines()
start = datetime.datetime.fromisoformat(log[0].split()[0].replace("Z", "+00:00"))
opened = stamps(f"{work}/reopen.log", "pool opened")[0]
ext = c["extents"]
print(json.dumps({
    "first_writes_per_s": round(w["iops"]),
    "errors": w["errors"],
    "snapshot_create_ms": round(s["snapshots"][0]["create_us"] / 1000, 1),
    "max_lat_after_snapshot_ms": round(s["window_lat_us"]["max"] / 1000, 1),
    "p999_lat_ms": round(s["lat_us"]["p999"] / 1000, 2),
    "errors_under_snapshot": s["errors"],
    "extents": ext,
    "node_pages": c["node_pages"],
    "meta_bytes_per_extent": round(c["node_pages"] * 4096 / max(ext, 1)),
    "check_s": round(t1 - t0, 2),
    "reopen_s": round((opened - start).total_seconds(), 2),
    "reopen_rss_mib": round(rss_kib / 1024),
    "rss_bytes_per_extent": round(rss_kib * 1024 / max(ext, 1)),
}))
PY
done
