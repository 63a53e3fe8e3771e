#!/usr/bin/env bash
# Reopen after kill -9 (issue 18): a 4 TiB thin disk on a pool whose data is a sparse
# file in tmpfs (fast first writes; it holds the pool's label, so the pool can reopen)
# and whose metadata is a file on disk (io_uring, O_DIRECT), written with 4 KiB random first writes at QD 64 on one
# core (nearly every write maps a fresh segment: scattered extents), killed with SIGKILL
# after SECONDS. The metadata file as the kill left it (last checkpoint + intent log) is
# kept (the data file changes only by the writes), and reopened ROUNDS times from that
# same state: time from the process's start
# to "pool opened" in its log (the log read and replayed and the tables loaded; builds
# before 2026-12-05 also wrote a checkpoint before serving), records replayed, peak
# resident memory and
# the memory resident once open (as the "pool opened" log line reports it); and
# that time per TiB mapped (segments referenced × segment size, as `tessera check`
# counts them after the reopen); and `tessera check` of the reopened pool, per TiB.
#
#   bench/reopen_after_kill.sh [--tessera PATH] [--seconds 25] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."

T=
seconds=25
rounds=3
while [ $# -gt 0 ]; do
    case "$1" in
        --tessera) T=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
. bench/support/tessera_build.sh
tessera_build
work=$(mktemp -d /var/tmp/tessera-reopen.XXXXXX)
shm=$(mktemp -d /dev/shm/tessera-reopen.XXXXXX)
writer=
cleanup() {
    if [ -n "$writer" ]; then kill -9 "$writer" 2>/dev/null || true; fi
    rm -rf "$work" "$shm"
}
trap cleanup EXIT
machine_line
echo "# $T; 4 TiB thin disk, data file in tmpfs, metadata file on disk; QD 64 random 4 KiB first writes, kill -9 after $seconds s"
truncate -s 4G "$work/meta.img"
truncate -s 4T "$shm/data.img"
cat >"$work/reopen.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: uring, name: data0, path: $shm/data.img}
  - {type: uring, name: meta0, path: $work/meta.img}
pools:
  - {name: p0, bdevs: [data0], metadata_bdev: meta0}
YAML
cat "$work/reopen.yaml" - >"$work/pool.yaml" <<YAML
disks:
  - {name: thin0, pool: p0, size: 4TiB, thin: true}
YAML
"$T" bench -c "$work/pool.yaml" --bdev thin0 -w randwrite -q 64 -t $((seconds + 600)) \
    >/dev/null 2>"$work/write.log" &
writer=$!
sleep "$seconds"
kill -9 "$writer"
wait "$writer" 2>/dev/null || true
writer=
cp --sparse=always "$work/meta.img" "$work/killed.img"
for r in $(seq "$rounds"); do
    cp --sparse=always "$work/killed.img" "$work/meta.img"
    /usr/bin/time -f "%M" -o "$work/rss" "$T" bench -c "$work/reopen.yaml" --bdev thin0 \
        -w randread -q 1 -t 0.01 >/dev/null 2>"$work/reopen.log"
    t0=$(date +%s.%N)
    "$T" check -c "$work/reopen.yaml" --pool p0 --json >"$work/check.json"
    t1=$(date +%s.%N)
    python3 - "$work" "$t0" "$t1" <<'PY'
import json, sys, datetime
work, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def stamp(line):
    return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
log = open(f"{work}/reopen.log").read().splitlines()
start = stamp(log[0])
opened = stamp(next(l for l in log if "pool opened" in l))
replayed = next((l for l in log if "log replayed" in l), "")
records = int(replayed.split("records=")[1].split()[0]) if "records=" in replayed else 0
c = json.load(open(f"{work}/check.json"))
created = next(l for l in open(f"{work}/write.log") if "pool created" in l)
seg_bytes = int(created.split("segment_bytes=")[1].split()[0])
mapped_tib = c["segments_referenced"] * seg_bytes / (1 << 40)
secs = (opened - start).total_seconds()
rss = int(open(f"{work}/rss").read().split()[-1]) * 1024
opened_line = next(l for l in log if "pool opened" in l)
resident = int(opened_line.split("resident_bytes=")[1].split()[0]) if "resident_bytes=" in opened_line else 0
print(json.dumps({
    "extents": c["extents"],
    "mapped_tib": round(mapped_tib, 3),
    "records_replayed": records,
    "reopen_s": round(secs, 3),
    "reopen_s_per_tib_mapped": round(secs / mapped_tib, 2),
    "peak_rss_mib": round(rss / (1 << 20)),
    "peak_rss_bytes_per_extent": round(rss / max(c["extents"], 1)),
    "resident_after_open_mib": round(resident / (1 << 20)),
    "resident_after_open_bytes_per_extent": round(resident / max(c["extents"], 1)),
    "check_s": round(t1 - t0, 3),
    "check_s_per_tib_mapped": round((t1 - t0) / mapped_tib, 2),
}))
PY
done
