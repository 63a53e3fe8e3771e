# Shared by the side-by-side scripts (bench/*_vs_*.sh), which source it after setting
# `seconds` and `runs` to their defaults.

# Options every script takes: --seconds N, --runs N, --smoke (1 s, 1 round: checks the
# plumbing; the figures mean nothing). A script with options of its own defines
# `extra_option OPTION` (true when it took the option).
parse_options() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --seconds) seconds="$2"; shift 2 ;;
            --runs) runs="$2"; shift 2 ;;
            --smoke) seconds=1; runs=1; shift ;;
            *)
                if declare -F extra_option >/dev/null && extra_option "$1"; then shift
                else echo "unknown option $1" >&2; exit 2; fi ;;
        esac
    done
}

# SPDK's tools: $TESSERA_SPDK_DIR, ../shared/spdk or /work/shared/spdk (sets S).
find_spdk() {
    S=${TESSERA_SPDK_DIR:-}
    if [ -z "$S" ]; then
        for d in "$(cd .. && pwd)/shared/spdk" /work/shared/spdk; do
            if [ -x "$d/run" ]; then S=$d; break; fi
        done
    fi
    [ -n "$S" ] && [ -x "$S/run" ] || { echo "no SPDK tools found (set TESSERA_SPDK_DIR)" >&2; exit 2; }
}

# The median of the numbers on stdin (separated by spaces or lines).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# A / B with three decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }

# The median of the per-round ratios of two arrays given by name (A[i] / B[i]).
round_ratio() {
    local -n a=$1 b=$2
    local i
    for i in "${!a[@]}"; do awk -v x="${a[$i]}" -v y="${b[$i]}" 'BEGIN {printf "%.4f ", x/y}'; done | median
}

# Stops the target whose PID is in `pid` (SIGINT, then SIGKILL after 10 s).
stop_target() {
    if [ -n "${pid:-}" ]; then
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
}

# The machine line every result file starts with.
machine_line() {
    echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%FT%TZ); $seconds s x $runs rounds"
}

# True when case NAME is selected by $CASES (a comma-separated list; empty: all).
selected() { [ -z "${CASES:-}" ] || [[ ",$CASES," == *",$1,"* ]]; }

# Reserves WANT 2 MiB hugepages (as root) for SPDK's malloc bdev, failing below MIN;
# give_back_hugepages restores the count found before.
hugepages_before=
reserve_hugepages() {
    hugepages_before=$(cat /proc/sys/vm/nr_hugepages)
    mkdir -p /dev/hugepages
    mountpoint -q /dev/hugepages || mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
    echo "$1" >/proc/sys/vm/nr_hugepages
    local got
    got=$(cat /proc/sys/vm/nr_hugepages)
    [ "$got" -ge "$2" ] || { echo "only $got of $1 hugepages could be reserved" >&2; exit 1; }
}
give_back_hugepages() {
    if [ -n "$hugepages_before" ]; then echo "$hugepages_before" >/proc/sys/vm/nr_hugepages; fi
}

# SPDK's tools leave a trace buffer (a file in /dev/shm) per process; remove_spdk_traces
# deletes those made since this file was sourced (the side-by-side scripts run alone).
spdk_trace_marker=$(mktemp /tmp/tessera-spdk-traces.XXXXXX)
remove_spdk_traces() {
    find /dev/shm -maxdepth 1 -name '*_trace.pid*' -newer "$spdk_trace_marker" -delete 2>/dev/null || true
    rm -f "$spdk_trace_marker"
}
