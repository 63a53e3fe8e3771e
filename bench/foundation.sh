#!/usr/bin/env bash
# Benchmarks of the engine foundation (issue 2), side by side, medians of N runs:
#   1. null bdev, 4 KiB randread, QD 128, one core, busy            (target >= 8 M IOPS)
#   2. malloc:1G vs the memcpy ceiling (bench/memcpy_ceiling.rs),
#      4 KiB randread and randwrite, QD 64, one core                  (target >= 0.90x)
#   3. uring on a 1 GiB file vs fio --ioengine=io_uring --direct=1,
#      4 KiB randread, QD 32, one core                                (target >= 0.95x)
#   4. adaptive idle policy: idle CPU of `tessera serve`, and QD 1 malloc read p50
#      adaptive vs busy                                               (target <= 2x)
# Usage: bench/foundation.sh [RUNS] [SECONDS]   Prints JSON lines, then a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SECS=${2:-5}
cargo build --release --quiet --bin tessera --example memcpy_ceiling
T=target/release/tessera
C=target/release/examples/memcpy_ceiling
export RUST_LOG=warn
work=$(mktemp -d /var/tmp/tessera-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
med() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v))' "$@"; }
iops() { python3 -c 'import json,sys; print(json.load(sys.stdin)["iops"])'; }
p50() { python3 -c 'import json,sys; print(json.load(sys.stdin)["lat_us"]["p50"])'; }

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"

# 1. null
v=()
for i in $(seq "$RUNS"); do
  v+=("$($T bench --bdev null:1T -w randread -q 128 -t "$SECS" -m 0 --idle busy --json | iops)")
done
null_iops=$(med "${v[@]}")
echo "{\"bench\":\"null randread qd128\",\"runs\":[$(IFS=,; echo "${v[*]}")],\"median_iops\":$null_iops}"

# 2. malloc vs memcpy ceiling, alternating. The malloc bdev writes with streaming
#    stores; the streaming-store ceiling (write-stream) is printed beside the plain one.
cps() { python3 -c 'import json,sys; print(json.load(sys.stdin)["copies_per_s"])'; }
for op in read write; do
  t=(); c=(); s=()
  for i in $(seq "$RUNS"); do
    c+=("$(taskset -c 0 $C "$op" "$SECS" 64 | cps)")
    t+=("$($T bench --bdev malloc:1G -w "rand$op" -q 64 -t "$SECS" -m 0 --idle busy --json | iops)")
    if [ "$op" = write ]; then s+=("$(taskset -c 0 $C write-stream "$SECS" 64 | cps)"); fi
  done
  tm=$(med "${t[@]}"); cm=$(med "${c[@]}")
  extra=""
  if [ "$op" = write ]; then
    sm=$(med "${s[@]}")
    extra=",\"stream_ceiling\":[$(IFS=,; echo "${s[*]}")],\"median_stream_ceiling\":$sm,\"ratio_stream\":$(python3 -c "print(round($tm/$sm,3))")"
  fi
  echo "{\"bench\":\"malloc rand$op qd64 vs memcpy ceiling\",\"tessera\":[$(IFS=,; echo "${t[*]}")],\"ceiling\":[$(IFS=,; echo "${c[*]}")],\"median_tessera\":$tm,\"median_ceiling\":$cm,\"ratio\":$(python3 -c "print(round($tm/$cm,3))")$extra}"
done

# 3. uring vs fio on the same 1 GiB file, alternating
f="$work/u1g.img"
dd if=/dev/urandom of="$f" bs=1M count=1024 status=none
# Pairs taken in alternating order (ours first, then fio first, ...); the device's
# drift between pairs is large, so the ratio is the median of the per-pair ratios.
ours_uring() { $T bench --bdev "uring:$f" -w randread -q 32 -t "$SECS" -m 0 --idle busy --json | iops; }
fio_uring() {
  fio --name=f --filename="$f" --ioengine=io_uring --direct=1 --rw=randread --bs=4k --iodepth=32 \
    --runtime="$SECS" --time_based --cpus_allowed=0 --output-format=json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["read"]["iops"])'
}
t=(); r=()
for i in $(seq "$RUNS"); do
  if ((i % 2)); then
    t+=("$(ours_uring)"); r+=("$(fio_uring)")
  else
    r+=("$(fio_uring)"); t+=("$(ours_uring)")
  fi
done
tm=$(med "${t[@]}"); fm=$(med "${r[@]}")
pr=$(python3 -c 'import sys,statistics; t=[float(x) for x in sys.argv[1].split()]; r=[float(x) for x in sys.argv[2].split()]; print(round(statistics.median(a/b for a,b in zip(t,r)),3))' "${t[*]}" "${r[*]}")
echo "{\"bench\":\"uring randread qd32 vs fio io_uring\",\"tessera\":[$(IFS=,; echo "${t[*]}")],\"fio\":[$(IFS=,; echo "${r[*]}")],\"median_tessera\":$tm,\"median_fio\":$fm,\"ratio_of_medians\":$(python3 -c "print(round($tm/$fm,3))"),\"ratio\":$pr}"

# 4. adaptive idle policy
$T serve --data-dir "$work/serve" >"$work/serve.log" 2>&1 &
pid=$!
sleep 3
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
sleep 5
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
kill -INT $pid; wait $pid || true
hz=$(getconf CLK_TCK)
idle_cpu=$(python3 -c "print(round(($t1-$t0)/$hz/5*100,2))")
b=(); a=()
for i in $(seq "$RUNS"); do
  b+=("$($T bench --bdev malloc:1G -w randread -q 1 -t "$SECS" -m 0 --idle busy --json | p50)")
  a+=("$($T bench --bdev malloc:1G -w randread -q 1 -t "$SECS" -m 0 --idle adaptive --json | p50)")
done
bm=$(med "${b[@]}"); am=$(med "${a[@]}")
echo "{\"bench\":\"adaptive idle policy\",\"idle_serve_cpu_percent\":$idle_cpu,\"qd1_malloc_read_p50_us_busy\":$bm,\"qd1_malloc_read_p50_us_adaptive\":$am,\"ratio\":$(python3 -c "print(round($am/$bm,3))")}"
