#!/usr/bin/env bash
# Runs the deterministic simulator over many seeds and reports the pass rate and the
# seeds per second:  scripts/sim.sh [COUNT [FROM]]   (default: 10000 seeds from 0).
# Every failing seed is printed with the command that replays it; exits non-zero if
# any seed failed. One process runs them all: a simulated machine's teardown drops the
# tasks it left pending (`reactor::ManualReactors`), so a process keeps 0.1–0.4 MB a seed.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
from=${2:-0}
cargo build --release --quiet
exec target/release/tessera sim --seeds "$count" --from "$from" -j "$(nproc)"
