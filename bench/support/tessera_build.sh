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

# null_pool_yaml META SIZE: a one-core target whose pool has a 4 TiB null data bdev and
# its metadata on the file META (io_uring), holding a thin disk `thin0` of SIZE.
null_pool_yaml() {
    cat <<YAML
cores: [0]
idle: busy
bdevs:
  - {type: null, name: data0, size: 4TiB}
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
