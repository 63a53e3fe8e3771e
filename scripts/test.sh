#!/usr/bin/env bash
# Installs the outside tools the integration tests drive (as root, from Debian's
# packages and PyPI), then runs every test. This is the test command of README.md and
# of .ci/run. A tool that cannot be installed stops the script: the tests never skip a
# missing tool, they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each command the tests run, and the Debian package that provides it.
declare -A pkg_of=(
    [fio]=fio
    [qemu-img]=qemu-utils [qemu-io]=qemu-utils [qemu-nbd]=qemu-utils
    [nbdinfo]=libnbd-bin [nbdcopy]=libnbd-bin
    [nbdkit]=nbdkit
    [nbdfuse]=nbdfuse
    [fusermount3]=fuse3
    [mkfs.ext4]=e2fsprogs [e2fsck]=e2fsprogs
    [losetup]=mount [mount]=mount [umount]=mount
    [script]=bsdutils
)
missing_cmds() {
    local c
    for c in "${!pkg_of[@]}"; do
        command -v "$c" >/dev/null 2>&1 || echo "$c"
    done
}
missing=($(missing_cmds))
if [ "${#missing[@]}" -gt 0 ]; then
    pkgs=($(for c in "${missing[@]}"; do echo "${pkg_of[$c]}"; done | sort -u))
    echo "installing test tools (missing: ${missing[*]}; packages: ${pkgs[*]})"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: run as root (or install: ${pkgs[*]})" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update -qq || ! apt-get install -y -qq "${pkgs[@]}" >/dev/null; then
        echo "error: could not install ${pkgs[*]} with apt-get" >&2
        exit 1
    fi
    missing=($(missing_cmds))
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "error: still missing after apt-get install: ${missing[*]}" >&2
        exit 1
    fi
fi
# The build links OpenSSL (the `openssl` crate: NVMe/TCP TLS): its headers and
# pkg-config file, from libssl-dev.
if ! pkg-config --exists openssl 2>/dev/null; then
    echo "installing libssl-dev and pkg-config (the build links OpenSSL)"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: run as root (or install: libssl-dev pkg-config)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update -qq || ! apt-get install -y -qq libssl-dev pkg-config >/dev/null; then
        echo "error: could not install libssl-dev pkg-config with apt-get" >&2
        exit 1
    fi
fi
# SPDK's JSON-RPC client, `spdk-rpc` (PyPI package `spdk`, Python >= 3.9): the RPC
# tests drive tessera with it.
if ! spdk-rpc --help >/dev/null 2>&1; then
    echo "installing spdk-rpc (pip install spdk)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore spdk \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages spdk \
        || { echo "error: could not install spdk-rpc (python3 -m pip install spdk)" >&2; exit 1; }
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
    hash -r
    if ! spdk-rpc --help >/dev/null 2>&1; then
        echo "error: spdk-rpc was installed but does not run from the PATH ($PATH)" >&2
        exit 1
    fi
fi
# Python's Prometheus client parses the metrics endpoint's text (tests/stats.rs).
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
    echo "installing prometheus_client (pip install prometheus_client)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore prometheus_client \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages prometheus_client \
        || { echo "error: could not install prometheus_client (python3 -m pip install prometheus_client)" >&2; exit 1; }
fi

# SPDK's own tools (v25.09: nvmf_tgt, spdk_tgt, spdk_nvme_perf, spdk_nvme_identify,
# bdevperf, nvme_fuzz), built for this machine in ../shared/spdk (or $TESSERA_SPDK_DIR):
# the interop tests drive them. Their `run` installs their Debian runtime libraries
# (as root) on first use; that is done here, once, before the tests run in parallel.
spdk_dir=${TESSERA_SPDK_DIR:-}
if [ -z "$spdk_dir" ]; then
    for d in "$(cd .. && pwd)/shared/spdk" /work/shared/spdk; do
        if [ -x "$d/run" ]; then spdk_dir=$d; break; fi
    done
fi
if [ -z "$spdk_dir" ]; then
    echo "error: SPDK's tools are not in ../shared/spdk nor /work/shared/spdk (set TESSERA_SPDK_DIR)" >&2
    exit 1
fi
spdk_tools=(nvmf_tgt spdk_tgt spdk_nvme_perf spdk_nvme_identify bdevperf nvme_fuzz)
for t in "${spdk_tools[@]}"; do
    if [ ! -x "$spdk_dir/bin/$t" ]; then
        echo "error: SPDK tool $t is missing in $spdk_dir/bin (set TESSERA_SPDK_DIR to SPDK's folder)" >&2
        exit 1
    fi
done
"$spdk_dir/run" spdk_nvme_identify -h >/dev/null 2>&1 || true
for t in "${spdk_tools[@]}"; do
    if LD_LIBRARY_PATH="$spdk_dir/lib" ldd "$spdk_dir/bin/$t" | grep -q "not found"; then
        echo "error: SPDK tool $t lacks runtime libraries:" >&2
        LD_LIBRARY_PATH="$spdk_dir/lib" ldd "$spdk_dir/bin/$t" | grep "not found" >&2
        exit 1
    fi
done
export TESSERA_SPDK_DIR="$spdk_dir"
if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
# The layering rules of README.md's source layout.
scripts/check_layers.sh
exec cargo nextest run --release --no-fail-fast "$@"
