#!/usr/bin/env bash
# Benchmarks of the mapping layer (issues 3 and 4), side by side, medians of N runs:
#   1. fully allocated disk over malloc vs the raw malloc bdev, 4 KiB randread and
#      randwrite, QD 64, one core                                      (target >= 0.90x)
#   2. thin disk, 4 KiB QD 1 random first writes vs overwrites:
#      on a file-backed pool (uring)                                    (p50 <= 1.5x)
#      on malloc: first write vs raw malloc write                      (adds <= 5 us p50)
#   3. memory of per-core views of a fully mapped 1 TiB disk (data on null)  (<= 16 MiB)
#   4. snapshot creation: fully mapped 4 TiB vs 1 GiB (data on null, metadata on a file)
#                                                                       (<= 2x, p99 <= 5 ms)
#   5. 4 KiB randwrite QD 32: p99.9 within 0.5 s after snapshots vs steady state (<= 10x)
#   6. first write after a snapshot vs overwrite, 4 KiB QD 1           (p50 <= 1.5x)
#   7. split of a fully written 1 GiB clone on idle malloc (>= 4 GiB/s), and under a
#      4 KiB randread load (load keeps >= 80%)
# Usage: bench/vdisk.sh [RUNS] [SECONDS] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SECS=${2:-5}
QUICK=${3:-}
cargo build --release --quiet --bin tessera --example view_memory --example snapshot_scaling --example split_bench
T=target/release/tessera
export RUST_LOG=warn
work=$(mktemp -d /var/tmp/tessera-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
med() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v))' "$@"; }
j() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"

# 1. thick vdisk vs raw malloc
cat >"$work/thick.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: malloc, name: Malloc0, size: 1GiB}
  - {type: malloc, name: Malloc1, size: 1GiB}
pools:
  - {name: p0, bdevs: [Malloc0]}
disks:
  - {name: thick0, pool: p0, size: 1000MiB, thin: false}
YAML
# The two bdevs take turns in one process (`--compare`: RUNS*2 rounds of one SECS slice
# each, order alternating), so the machine's drift weighs on both alike; the ratio is
# the median of the per-round ratios.
for w in randread randwrite; do
  $T bench -c "$work/thick.yaml" --bdev thick0 --compare Malloc1 --range 1000MiB -w $w -q 64 \
    -t $((SECS * RUNS * 2)) --rounds $((RUNS * 2)) --json |
    python3 -c "
import json,sys; r=json.load(sys.stdin)
assert r['tested']['errors'] == 0 and r['reference']['errors'] == 0, r
print(json.dumps({'bench': 'thick vdisk vs raw malloc $w qd64, alternating slices', 'raw': r['reference']['slices'], 'vdisk': r['tested']['slices'], 'median_raw': r['reference']['median_iops'], 'median_vdisk': r['tested']['median_iops'], 'round_ratios': [round(x, 3) for x in r['ratios']], 'ratio': round(r['ratio'], 3)}))"
done

# 2a. thin disk on a file-backed pool: first writes, then overwrites of the same blocks
f=(); o=()
for i in $(seq "$RUNS"); do
  # A written (not sparse) file: ext4 allocating blocks on first touch would otherwise
  # be measured as tessera's first-write cost.
  dd if=/dev/zero of="$work/pool.img" bs=1M count=10240 status=none conv=fsync
  cat >"$work/file.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: uring, name: file0, path: $work/pool.img, size: 10GiB}
pools:
  - {name: pf, bdevs: [file0]}
disks:
  - {name: thinf, pool: pf, size: 8GiB, thin: true}
YAML
  f+=("$($T bench -c "$work/file.yaml" --bdev thinf -w randwrite --once -q 1 -t "$SECS" --json | j 'r["lat_us"]["p50"]')")
  # Same seed, same order, shorter: every write lands on a block written above.
  o+=("$($T bench -c "$work/file.yaml" --bdev thinf -w randwrite --once -q 1 -t "$(python3 -c "print($SECS/2)")" --json | j 'r["lat_us"]["p50"]')")
done
fm=$(med "${f[@]}"); om=$(med "${o[@]}")
echo "{\"bench\":\"thin on file pool, 4K QD1: first write vs overwrite p50 (us)\",\"first\":[$(IFS=,; echo "${f[*]}")],\"overwrite\":[$(IFS=,; echo "${o[*]}")],\"median_first\":$fm,\"median_overwrite\":$om,\"ratio\":$(python3 -c "print(round($fm/$om,3))")}"

# 2b. thin disk on malloc: first writes vs raw malloc writes
cat >"$work/thin.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: malloc, name: Malloc0, size: 3GiB}
pools:
  - {name: p0, bdevs: [Malloc0]}
disks:
  - {name: thin0, pool: p0, size: 2GiB, thin: true}
YAML
f=(); r=()
for i in $(seq "$RUNS"); do
  f+=("$($T bench -c "$work/thin.yaml" --bdev thin0 -w randwrite --once -q 1 -t 0.4 --json | j 'r["lat_us"]["p50"]')")
  r+=("$($T bench -c "$work/thin.yaml" --bdev Malloc0 -w randwrite -q 1 -t 0.4 --range 2GiB --json | j 'r["lat_us"]["p50"]')")
done
fm=$(med "${f[@]}"); rm=$(med "${r[@]}")
echo "{\"bench\":\"thin on malloc, 4K QD1: first write vs raw malloc write p50 (us)\",\"first\":[$(IFS=,; echo "${f[*]}")],\"raw\":[$(IFS=,; echo "${r[*]}")],\"median_first\":$fm,\"median_raw\":$rm,\"added_us\":$(python3 -c "print(round($fm-$rm,3))")}"

# 3. memory of per-core views
if [ -z "$QUICK" ]; then
  target/release/examples/view_memory 1024 8 | tail -1
fi

# 4. snapshot creation vs size
mkdir -p "$work/meta"
if [ -z "$QUICK" ]; then
  target/release/examples/snapshot_scaling "$work/meta" 40 1 4096
else
  target/release/examples/snapshot_scaling "$work/meta" 20 1 64
fi

# 5. p99.9 around snapshots under a randwrite load
# After each snapshot every segment's first write takes a new copy: the pool has room
# for the disk and one copy per snapshot (a pool without it fails the writes with
# capacity_exceeded, and the bench stops at the first failed I/O).
cat >"$work/snaps.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: malloc, name: Malloc0, size: 5GiB}
pools:
  - {name: p0, bdevs: [Malloc0]}
disks:
  - {name: thick0, pool: p0, size: 1000MiB, thin: false}
YAML
ok='if r["errors"] == 0 else sys.exit("errors: %s" % r.get("first_error"))'
s=(); w=()
for i in $(seq "$RUNS"); do
  s+=("$($T bench -c "$work/snaps.yaml" --bdev thick0 -w randwrite -q 32 -t 8 --json | j "r['lat_us']['p999'] $ok")")
  w+=("$($T bench -c "$work/snaps.yaml" --bdev thick0 -w randwrite -q 32 -t 8 --snapshot-at 2,4,6 --json | j "r['window_lat_us']['p999'] $ok")")
done
sm=$(med "${s[@]}"); wm=$(med "${w[@]}")
echo "{\"bench\":\"randwrite qd32 p99.9 (us): 0.5 s after snapshots vs steady state\",\"steady\":[$(IFS=,; echo "${s[*]}")],\"window\":[$(IFS=,; echo "${w[*]}")],\"median_steady\":$sm,\"median_window\":$wm,\"ratio\":$(python3 -c "print(round($wm/$sm,3))")}"

# 6. first write after a snapshot vs overwrite
# The pool has room for a second copy of the disk: after the snapshot every block's
# first write needs new space (a pool without it answers capacity_exceeded). --once
# writes each block exactly once, so every write measured is a first write after the
# snapshot; the run ends when the permutation does.
cat >"$work/snap.yaml" <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: malloc, name: Malloc0, size: 3GiB}
pools:
  - {name: p0, bdevs: [Malloc0]}
snapshots:
  - {name: s0, disk: thick0}
disks:
  - {name: thick0, pool: p0, size: 1000MiB, thin: false}
YAML
a=(); o=()
for i in $(seq "$RUNS"); do
  a+=("$($T bench -c "$work/snap.yaml" --bdev thick0 -w randwrite --once -q 1 -t 30 --json | j 'r["lat_us"]["p50"] if r["errors"] == 0 else sys.exit("errors: %s" % r.get("first_error"))')")
  o+=("$($T bench -c "$work/thick.yaml" --bdev thick0 -w randwrite --once -q 1 -t 30 --json | j 'r["lat_us"]["p50"]')")
done
am=$(med "${a[@]}"); om=$(med "${o[@]}")
echo "{\"bench\":\"4K QD1 first write after snapshot vs overwrite p50 (us)\",\"after_snapshot\":[$(IFS=,; echo "${a[*]}")],\"overwrite\":[$(IFS=,; echo "${o[*]}")],\"median_after\":$am,\"median_overwrite\":$om,\"ratio\":$(python3 -c "print(round($am/$om,3))")}"

# 7. split, RUNS times (each run: idle, then under load)
si=(); sl=()
for i in $(seq "$RUNS"); do
  out=$(target/release/examples/split_bench 1024)
  echo "$out"
  si+=("$(echo "$out" | head -1 | j 'r["gib_s"]')")
  sl+=("$(echo "$out" | tail -1 | j 'r["ratio"]')")
done
echo "{\"bench\":\"split of a 1 GiB clone\",\"idle_gib_s\":[$(IFS=,; echo "${si[*]}")],\"median_idle_gib_s\":$(med "${si[@]}"),\"load_kept\":[$(IFS=,; echo "${sl[*]}")],\"median_load_kept\":$(med "${sl[@]}")}"
