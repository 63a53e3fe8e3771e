//! Growing an lvol store after its base bdev grew, driven by SPDK's `spdk-rpc`: a pool on
//! a file (`uring` bdev) holds a disk written over NBD with `qemu-io`; the file is
//! extended (`truncate`), `bdev_uring_rescan` reads its new size, and
//! `bdev_lvol_grow_lvstore` gives the pool the new segments; a disk that needs them is
//! created and written; after a restart of `tessera serve` every byte is still there
//! (by digest) and `tessera check` passes. `bdev_null_resize`, and every bad parameter
//! with SPDK's error code.

mod process_support;
mod rpc_common;

use rpc_common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const M: u64 = 1 << 20;

fn yaml(pool_img: &Path, nbd_port: u16) -> String {
    format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: uring, name: u0, path: {}}}\nnbd:\n  listen: 127.0.0.1:{nbd_port}\n",
        pool_img.display()
    )
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// (total_data_clusters, free_clusters) of `lvs0`.
fn clusters(srv: &Serve) -> (u64, u64) {
    let v = srv.call(
        "bdev_lvol_get_lvstores",
        serde_json::json!({"lvs_name": "lvs0"}),
    );
    (
        v[0]["total_data_clusters"].as_u64().unwrap(),
        v[0]["free_clusters"].as_u64().unwrap(),
    )
}

fn num_blocks(srv: &Serve, bdev: &str) -> u64 {
    let v = srv.call("bdev_get_bdevs", serde_json::json!({"name": bdev}));
    v[0]["num_blocks"].as_u64().unwrap()
}

#[test]
fn spdk_rpc_grows_a_pool_onto_its_grown_file_and_it_survives_a_restart() {
    let tool = spdk_rpc();
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let img = data.path().join("pool.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * M)
        .unwrap();
    let cfg = yaml(&img, port);
    let srv = Serve::start_yaml(&cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    let fails = |args: &[&str]| run_fails(Command::new(&tool).arg("-s").arg(&s).args(args));

    rpc(&["bdev_lvol_create_lvstore", "u0", "lvs0", "-c", "1048576"]);
    let lvs = json_of(&rpc(&["bdev_lvol_get_lvstores", "-l", "lvs0"]));
    let uuid = lvs[0]["uuid"].as_str().unwrap().to_string();
    let (total0, free0) = clusters(&srv);
    // 64 segments, less the label's and the default 16 MiB of metadata.
    assert_eq!((total0, free0), (47, 47), "{lvs}");

    // A thick disk, written by a real client.
    rpc(&["bdev_lvol_create", "-l", "lvs0", "vd0", "40"]);
    srv.call(
        "nbd_start_export",
        serde_json::json!({"bdev_name": "lvs0/vd0", "name": "e0"}),
    );
    qemu_io(
        port,
        "e0",
        &["write -P 0x31 0 3M", "write -P 0x32 39M 1M", "flush"],
    );

    // Nothing to take yet: a grow succeeds and changes nothing (as SPDK's).
    rpc(&["bdev_lvol_grow_lvstore", "-l", "lvs0"]);
    assert_eq!(clusters(&srv).0, total0);

    // The file grows; the bdev learns it by a rescan; the pool by the grow.
    set_len(&img, 128 * M);
    let blocks_before = num_blocks(&srv, "u0");
    rpc(&["bdev_uring_rescan", "u0"]);
    assert_eq!(num_blocks(&srv, "u0"), blocks_before * 2);
    // Before the grow, the pool does not have the space: SPDK's -ENOSPC.
    let out = fails(&["bdev_lvol_create", "-l", "lvs0", "vd1", "60"]);
    assert!(out.contains("-28"), "{out}");
    assert_eq!(clusters(&srv).0, total0, "a rescan does not grow the pool");
    let out = rpc(&["bdev_lvol_grow_lvstore", "-u", &uuid]);
    assert!(out.trim() == "true", "{out}");
    let (total1, free1) = clusters(&srv);
    assert_eq!((total1, free1), (total0 + 64, free0 - 40 + 64));

    // A disk that needs the new space, written across.
    rpc(&["bdev_lvol_create", "-l", "lvs0", "vd1", "60"]);
    assert_eq!(clusters(&srv).1, free1 - 60);
    srv.call(
        "nbd_start_export",
        serde_json::json!({"bdev_name": "lvs0/vd1", "name": "e1"}),
    );
    qemu_io(
        port,
        "e1",
        &[
            "write -P 0x41 0 8M",
            "write -P 0x42 30M 2M",
            "write -P 0x43 59M 1M",
            "flush",
        ],
    );
    let sums = [
        digest(&srv, port, "lvs0/vd0", data.path()),
        digest(&srv, port, "lvs0/vd1", data.path()),
    ];

    // Bad parameters get SPDK's codes.
    let out = fails(&["bdev_lvol_grow_lvstore", "-l", "nope"]);
    assert!(out.contains("-19"), "unknown store: {out}");
    let out = fails(&[
        "bdev_lvol_grow_lvstore",
        "-u",
        "00000000-0000-0000-0000-000000000001",
    ]);
    assert!(out.contains("-19"), "unknown UUID: {out}");
    let out = fails(&["bdev_lvol_grow_lvstore", "-u", &uuid, "-l", "lvs0"]);
    assert!(out.contains("-32602"), "both: {out}");
    let out = fails(&["bdev_lvol_grow_lvstore"]);
    assert!(out.contains("-32602"), "neither: {out}");
    let e = srv.call_err(
        "bdev_lvol_grow_lvstore",
        serde_json::json!({"lvs_name": "lvs0", "size": 1}),
    );
    assert_eq!(e.code, -32602, "{e}");
    let out = fails(&["bdev_uring_rescan", "nope"]);
    assert!(out.contains("-19"), "{out}");
    let out = fails(&["bdev_aio_rescan", "nope"]);
    assert!(out.contains("-19"), "{out}");

    // Past what the space map laid out at creation counts, the grow is refused with
    // the limit, and the pool keeps its size.
    set_len(&img, 2048 * M);
    rpc(&["bdev_aio_rescan", "u0"]);
    let out = fails(&["bdev_lvol_grow_lvstore", "-l", "lvs0"]);
    assert!(
        out.contains("-28") && out.contains("at most 1008 segments"),
        "{out}"
    );
    assert_eq!(clusters(&srv).0, total1);
    // The file shrinks back; a bdev a pool uses does not shrink under it (-EBUSY).
    set_len(&img, 128 * M);
    let out = fails(&["bdev_uring_rescan", "u0"]);
    assert!(out.contains("-16"), "{out}");

    // bdev_null_resize: grows, never shrinks (-EINVAL), null bdevs only.
    rpc(&["bdev_null_create", "n0", "64", "512"]);
    rpc(&["bdev_null_resize", "n0", "128"]);
    assert_eq!(num_blocks(&srv, "n0"), 128 * M / 512);
    let out = fails(&["bdev_null_resize", "n0", "32"]);
    assert!(out.contains("-22"), "shrink: {out}");
    let out = fails(&["bdev_null_resize", "u0", "256"]);
    assert!(out.contains("-22"), "not a null bdev: {out}");
    let out = fails(&["bdev_null_resize", "nope", "256"]);
    assert!(out.contains("-19"), "{out}");
    let e = srv.call_err("bdev_null_resize", serde_json::json!({"name": "n0"}));
    assert_eq!(e.code, -32602, "{e}");

    // A restart finds the grown pool and every byte.
    srv.stop();
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("check")
            .arg(&img),
    );
    assert!(!out.contains("problem"), "{out}");
    let srv = Serve::start_yaml(&cfg);
    assert_eq!(clusters(&srv), (total1, free1 - 60));
    let again = [
        digest(&srv, port, "lvs0/vd0", data.path()),
        digest(&srv, port, "lvs0/vd1", data.path()),
    ];
    assert_eq!(again, sums, "the disks after the restart");
    srv.call(
        "nbd_start_export",
        serde_json::json!({"bdev_name": "lvs0/vd1", "name": "e1"}),
    );
    qemu_io(
        port,
        "e1",
        &[
            "read -P 0x41 0 8M",
            "read -P 0x42 30M 2M",
            "read -P 0x43 59M 1M",
            "read -P 0 8M 22M",
        ],
    );
    srv.stop();
}

/// Sets the length of file `path`, as `truncate -s` does.
fn set_len(path: &std::path::Path, bytes: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
}
