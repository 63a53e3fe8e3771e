# Shared by the scripts that time actions under load (`tessera bench --snapshot-at` or
# `--flush-at`): bench/snapshot_under_load.sh, bench/flush_under_load.sh.

# timed_schedule FROM COUNT: an action every half second from FROM seconds, COUNT of
# them; sets `at` (the list) and `seconds` (the run, half a second past the last).
timed_schedule() {
    at=$(python3 -c "print(','.join(str($1 + i * 0.5) for i in range($2)))")
    seconds=$(python3 -c "print($1 + $2 * 0.5 + 0.5)")
}

# timed_summary OUT.json NOUN PREFIX KEY VALUE [LOG]: one JSON line from a bench report —
# KEY: VALUE, the writes per second, the actions (NOUN: `snapshots`, `flushes`) and how
# many failed (the report's `error`, or for older builds the LOG's "… failed" lines),
# their p50/p99/max as PREFIX_ms_*, the longest I/O latency in the half second after
# each, and the run's p99.9 latency.
timed_summary() {
    python3 - "$@" <<'PY'
import json, sys
out, noun, prefix, key, value = sys.argv[1:6]
log = sys.argv[6] if len(sys.argv) > 6 else None
r = json.load(open(out))
failed = sum(1 for s in r["snapshots"] if s.get("error"))
if not failed and log:
    failed = sum(1 for l in open(log) if "failed" in l and l.startswith("snapshot at"))
c = sorted(s["create_us"] / 1000 for s in r["snapshots"])
pick = lambda p: c[min(len(c) - 1, round((len(c) - 1) * p))]
print(json.dumps({
    key: value,
    "writes_per_s": round(r["iops"]),
    "errors": r["errors"],
    noun: len(c),
    f"{noun}_failed": failed,
    f"{prefix}_ms_p50": round(pick(0.5), 2),
    f"{prefix}_ms_p99": round(pick(0.99), 2),
    f"{prefix}_ms_max": round(c[-1], 2),
    f"max_lat_after_{noun}_ms": round(r["window_lat_us"]["max"] / 1000, 1),
    "p999_lat_ms": round(r["lat_us"]["p999"] / 1000, 2),
}))
PY
}
