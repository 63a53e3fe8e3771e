# Shared by the scripts that measure one tessera build at a time (metadata at scale):
# bench/metadata_scale.sh, snapshot_under_load.sh, flush_under_load.sh, first_writes.sh,
# reopen_after_kill.sh.

# tessera_build: keeps `T` if a build was given (`--tessera PATH`); otherwise builds this
# tree's release binary and points `T` at it.
tessera_build() {
    if [ -z "$T" ]; then
        cargo build --release --quiet --bin tessera
        T="${CARGO_TARGET_DIR:-target}/release/tessera"
    fi
}

# null_pool_yaml META SIZE [DATA]: a one-core target whose pool has a null data bdev of
# DATA (4 TiB unless given) and its metadata on the file META (io_uring), holding a thin
# disk `thin0` of SIZE.
null_pool_yaml() {
    cat <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: null, name: data0, size: ${3:-4TiB}}
  - {type: uring, name: meta0, path: $1}
pools:
  - {name: p0, bdevs: [data0], metadata_bdev: meta0}
disks:
  - {name: thin0, pool: p0, size: $2, thin: true}
YAML
}

# machine_line: the first line of a run's output: cores, CPU model, kernel, UTC time.
machine_line() {
    echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); $(date -u +%FT%TZ)"
}

# work_dir NAME: a temporary directory `work` under /var/tmp, a free TCP port `port` on
# 127.0.0.1, and an exit trap that stops the server start_serve started and removes the
# directory.
work_dir() {
    work=$(mktemp -d "/var/tmp/tessera-$1.XXXXXX")
    server=
    trap 'if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
}

# start_serve: `$T serve` of $work/serve.yaml with its RPC socket at $work/rpc.sock (log
# in $work/serve.log), once the socket is there.
start_serve() {
    "$T" serve --config "$work/serve.yaml" -s "$work/rpc.sock" 2>"$work/serve.log" &
    server=$!
    for _ in $(seq 100); do [ -S "$work/rpc.sock" ] && break; sleep 0.1; done
}
