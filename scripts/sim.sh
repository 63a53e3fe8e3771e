#!/usr/bin/env bash
# Runs the deterministic simulator over many seeds and reports the pass rate and the
# seeds per second:  scripts/sim.sh [COUNT [FROM]]   (default: 10000 seeds from 0).
# Every failing seed is printed with the command that replays it.
#
# Seeds go in runs of at most CHUNK per process: a process keeps about 3 MB of every
# seed it has run (a seed's world is torn down with its pending tasks leaked, see
# `reactor::Mailbox`), and 10 000 seeds in one process outgrew 24 GiB. Exits non-zero if
# any run had a failing seed.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
from=${2:-0}
chunk=${CHUNK:-2500}
cargo build --release --quiet
failed=0
end=$((from + count))
for ((at = from; at < end; at += chunk)); do
    n=$((end - at < chunk ? end - at : chunk))
    target/release/tessera sim --seeds "$n" --from "$at" -j "$(nproc)" || failed=1
done
exit "$failed"
