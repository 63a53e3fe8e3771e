#!/usr/bin/env bash
# Installs the outside tools the integration tests drive (as root, from Debian's
# packages and PyPI), then runs every test. This is the test command of README.md and
# of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_cmds=(fio qemu-img qemu-io qemu-nbd nbdinfo nbdcopy nbdfuse mkfs.ext4 e2fsck losetup fusermount3)
missing=()
for c in "${need_cmds[@]}"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing test tools (missing: ${missing[*]})"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: run as root (or install: fio qemu-utils libnbd-bin nbdkit nbdfuse fuse3 e2fsprogs util-linux)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq fio qemu-utils libnbd-bin nbdkit nbdfuse fuse3 e2fsprogs util-linux >/dev/null
fi
# SPDK's JSON-RPC client, `spdk-rpc` (PyPI package `spdk`, Python >= 3.9): the RPC
# tests drive tessera with it.
if ! command -v spdk-rpc >/dev/null 2>&1; then
    echo "installing spdk-rpc (pip install spdk)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore spdk \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages spdk \
        || echo "warning: could not install spdk-rpc; the tests that drive it will skip" >&2
fi
if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
# The layering rules of README.md's source layout.
scripts/check_layers.sh
exec cargo nextest run --release --no-fail-fast "$@"
