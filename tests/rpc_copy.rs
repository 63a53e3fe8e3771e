//! Shallow copies (`bdev_lvol_start_shallow_copy`, `bdev_lvol_check_shallow_copy`,
//! driven by SPDK's `spdk-rpc`) and changed-block copies (`tessera_lvol_start_diff_copy`)
//! of lvols of `tessera serve` onto file bdevs, read back from the file itself; writes
//! and reads of the lvols through NBD with `qemu-io`, comparisons with `qemu-img
//! compare`; the bandwidth cap; a source made writable mid-copy.

mod process_support;
mod rpc_common;

use rpc_common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const K: usize = 1024;
const M: usize = 1024 * K;
/// The marker a destination holds before a copy.
const MARKER: u8 = 0xEE;

/// A target with a 256 MiB pool bdev and file bdevs `dst0` (16 MiB, `MARKER`-filled),
/// `small` (8 MiB) and `dst2` (16 MiB, zeros).
fn serve(dir: &Path, nbd_port: u16) -> Serve {
    std::fs::write(dir.join("dst0.img"), vec![MARKER; 16 * M]).unwrap();
    std::fs::write(dir.join("small.img"), vec![0u8; 8 * M]).unwrap();
    std::fs::write(dir.join("dst2.img"), vec![0u8; 16 * M]).unwrap();
    let f = |n: &str| dir.join(n).display().to_string();
    Serve::start_yaml(&format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: malloc, name: Malloc0, size: 256MiB}}\n  - {{type: uring, name: dst0, path: {}, size: 16MiB}}\n  - {{type: uring, name: small, path: {}, size: 8MiB}}\n  - {{type: uring, name: dst2, path: {}, size: 16MiB}}\nnbd:\n  listen: 127.0.0.1:{nbd_port}\n",
        f("dst0.img"),
        f("small.img"),
        f("dst2.img")
    ))
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Polls `check` until the copy is no longer in progress (at most a minute).
fn wait_copy(check: impl Fn() -> Value) -> Value {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let v = check();
        if v["state"] != "in progress" {
            return v;
        }
        assert!(Instant::now() < end, "copy still in progress: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fill(img: &mut [u8], at: usize, len: usize, byte: u8) {
    img[at..at + len].fill(byte);
}

/// The first differing byte of two images, for a readable failure.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {i} (block {}) is {:#04x}, expected {:#04x}",
            i / 4096,
            got[i],
            want[i]
        );
    }
}

/// A clone's own blocks, and nothing else, land on the destination at their offsets:
/// the origin is written before the snapshot, the clone after; a snapshot of the clone
/// (read-only, its parent the first snapshot) is shallow-copied by `spdk-rpc` onto a
/// file bdev holding a marker, and the file is compared byte for byte. `spdk-rpc`'s bad
/// parameters get SPDK's codes.
#[test]
fn spdk_rpc_shallow_copies_exactly_a_clones_own_blocks() {
    let tool = spdk_rpc();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), port);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    let fails = |args: &[&str]| run_fails(Command::new(&tool).arg("-s").arg(&s).args(args));

    rpc(&[
        "bdev_lvol_create_lvstore",
        "Malloc0",
        "lvs0",
        "-c",
        "1048576",
    ]);
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vd0", "16"]);
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": "lvs0/vd0", "name": "e0"}),
    );
    qemu_io(port, "e0", &["write -P 0x11 0 2M", "write -P 0x12 5M 64k"]);
    rpc(&["bdev_lvol_snapshot", "lvs0/vd0", "s1"]);
    rpc(&["bdev_lvol_clone", "lvs0/s1", "c1"]);
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": "lvs0/c1", "name": "e1"}),
    );
    qemu_io(
        port,
        "e1",
        &[
            "write -P 0x21 1M 8k",
            "write -P 0x22 9M 1M",
            "write -P 0x23 3149824 4k", // 3 MiB + 4 KiB
        ],
    );

    // A writable source is refused (-32602, SPDK's "Operation not permitted").
    let out = fails(&["bdev_lvol_start_shallow_copy", "lvs0/c1", "dst0"]);
    assert!(
        out.contains("-32602") && out.contains("Operation not permitted"),
        "{out}"
    );
    rpc(&["bdev_lvol_snapshot", "lvs0/c1", "s2"]);
    let lvols = json_of(&rpc(&["bdev_lvol_get_lvols", "-l", "lvs0"]));
    let s2 = lvols
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "s2")
        .unwrap();
    assert_eq!(s2["parent"], "s1", "{s2}");

    // Bad parameters, SPDK's codes.
    let out = fails(&["bdev_lvol_start_shallow_copy", "lvs0/nope", "dst0"]);
    assert!(out.contains("-19"), "{out}");
    let out = fails(&["bdev_lvol_start_shallow_copy", "dst0", "dst2"]);
    assert!(out.contains("-19"), "no lvol: {out}");
    let out = fails(&["bdev_lvol_start_shallow_copy", "lvs0/s2", "nodev"]);
    assert!(
        out.contains("-32602") && out.contains("No such device"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_start_shallow_copy", "lvs0/s2", "small"]);
    assert!(
        out.contains("-32602") && out.contains("Invalid argument"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_start_shallow_copy", "lvs0/s2", "Malloc0"]);
    assert!(
        out.contains("-32602") && out.contains("Operation not permitted") && out.contains("pool"),
        "a pool's bdev: {out}"
    );
    let out = fails(&["bdev_lvol_check_shallow_copy", "4242"]);
    assert!(out.contains("-19"), "{out}");

    let started = json_of(&rpc(&["bdev_lvol_start_shallow_copy", "lvs0/s2", "dst0"]));
    let id = started["operation_id"].as_u64().expect("an operation id");
    let done = wait_copy(|| json_of(&rpc(&["bdev_lvol_check_shallow_copy", &id.to_string()])));
    assert_eq!(done["state"], "complete", "{done}");
    // Segments 1, 3 and 9 hold the clone's writes.
    assert_eq!(done["total_clusters"], 3, "{done}");
    assert_eq!(done["copied_clusters"], 3, "{done}");
    assert_eq!(done["total_bytes"], (8 * K + M + 4 * K) as u64, "{done}");
    // Finished operations stay listed.
    let again = json_of(&rpc(&["bdev_lvol_check_shallow_copy", &id.to_string()]));
    assert_eq!(again["state"], "complete", "{again}");

    let mut want = vec![MARKER; 16 * M];
    fill(&mut want, M, 8 * K, 0x21);
    fill(&mut want, 9 * M, M, 0x22);
    fill(&mut want, 3 * M + 4 * K, 4 * K, 0x23);
    let got = std::fs::read(dir.path().join("dst0.img")).unwrap();
    assert_same(&got, &want, "dst0 after the shallow copy of s2");
    srv.stop();
}

/// A pool `lvs0` on `Malloc0` with a thin 16 MiB `vd0`, exported over NBD as `e0`.
fn thin_vd0_exported(srv: &Serve) {
    thin_lvol_exported(srv, "vd0", 16);
}

/// A pool `lvs0` on `Malloc0` with a thin lvol `name` of `mib` MiB, exported over NBD
/// as `e0`.
fn thin_lvol_exported(srv: &Serve, name: &str, mib: u64) {
    srv.call(
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "Malloc0", "lvs_name": "lvs0"}),
    );
    srv.call(
        "bdev_lvol_create",
        json!({"lvol_name": name, "size_in_mib": mib, "lvs_name": "lvs0", "thin_provision": true}),
    );
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": format!("lvs0/{name}"), "name": "e0"}),
    );
}

/// An incremental backup: a full copy of snapshot `s1` (an lvol without a parent: all
/// its data) onto a file, then the changed runs between `s1` and `s2` applied onto it —
/// first from an offset (what a resumed copy does: nothing before it is written), then
/// from the start — give `s2` (`qemu-img compare` against `s2` over NBD).
#[test]
fn diff_copy_applies_the_changes_between_two_snapshots_onto_a_copy_of_the_base() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), port);
    thin_vd0_exported(&srv);
    qemu_io(
        port,
        "e0",
        &[
            "write -P 0x11 0 3M",
            "write -P 0x12 6M 64k",
            "write -P 0x13 12M 1M",
        ],
    );
    srv.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "lvs0/vd0", "snapshot_name": "s1"}),
    );
    qemu_io(
        port,
        "e0",
        &[
            "write -P 0x21 1M 8k",
            "write -P 0x22 6M 4k",
            "write -P 0x23 10M 2M",
            "write -z 12M 4k",
        ],
    );
    srv.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "lvs0/vd0", "snapshot_name": "s2"}),
    );
    let check = |id: u64| srv.call("bdev_lvol_check_shallow_copy", json!({"operation_id": id}));
    let start_full = srv.call(
        "bdev_lvol_start_shallow_copy",
        json!({"src_lvol_name": "lvs0/s1", "dst_bdev_name": "dst2"}),
    );
    let full = wait_copy(|| check(start_full["operation_id"].as_u64().unwrap()));
    assert_eq!(full["state"], "complete", "{full}");
    assert_eq!(full["total_clusters"], 5, "segments 0-2, 6, 12: {full}");
    let img = dir.path().join("dst2.img");
    let s1_img = std::fs::read(&img).unwrap();

    // From block 2048 (8 MiB) on: the changes at 10 and 12 MiB only.
    let half = srv.call(
        "tessera_lvol_start_diff_copy",
        json!({"base": "lvs0/s1", "target": "lvs0/s2", "dst_bdev_name": "dst2", "offset_blocks": 2048}),
    );
    let r = wait_copy(|| check(half["operation_id"].as_u64().unwrap()));
    assert_eq!(r["state"], "complete", "{r}");
    assert_eq!(r["next_offset_blocks"], 4096, "{r}");
    assert_eq!(r["total_bytes"], (2 * M + 4 * K) as u64, "{r}");
    let mid = std::fs::read(&img).unwrap();
    assert_same(
        &mid[..8 * M],
        &s1_img[..8 * M],
        "below the offset: untouched",
    );

    let whole = srv.call(
        "tessera_lvol_start_diff_copy",
        json!({"base": "lvs0/s1", "target": "lvs0/s2", "dst_bdev_name": "dst2"}),
    );
    let r = wait_copy(|| check(whole["operation_id"].as_u64().unwrap()));
    assert_eq!(r["state"], "complete", "{r}");
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": "lvs0/s2", "name": "s2", "read_only": true}),
    );
    run_ok(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &img.display().to_string(),
        &format!("nbd://127.0.0.1:{port}/s2"),
    ]));

    // Refused, naming the field.
    let e = srv.call_err(
        "tessera_lvol_start_diff_copy",
        json!({"base": "lvs0/s1", "target": "lvs0/vd0", "dst_bdev_name": "dst2"}),
    );
    assert!(e.code == -32602 && e.message.contains("writable"), "{e:?}");
    let e = srv.call_err(
        "tessera_lvol_start_diff_copy",
        json!({"base": "lvs0/s1", "target": "lvs0/s2", "dst_bdev_name": "dst2", "offset_blocks": 1u64 << 40}),
    );
    assert!(
        e.code == -22 && e.message.contains("offset_blocks"),
        "{e:?}"
    );
    let e = srv.call_err(
        "tessera_lvol_start_diff_copy",
        json!({"base": "lvs0/s1", "target": "lvs0/s2"}),
    );
    assert!(e.message.contains("dst_bdev_name"), "{e:?}");
    srv.stop();
}

/// Without `base`, a diff copy is a full copy of the target's data — the blocks it
/// inherits from its parent snapshot too, which a shallow copy of it would leave out —
/// from `offset_blocks` on (nothing below is written), within the copy's own
/// `max_bytes_per_sec`: 5 MiB at 2 MiB/s, the first wave of four 1 MiB chunks at once,
/// the fifth after two seconds.
#[test]
fn a_full_diff_copy_takes_inherited_blocks_from_an_offset_within_its_own_cap() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), port);
    thin_vd0_exported(&srv);
    qemu_io(port, "e0", &["write -P 0x11 0 3M"]);
    srv.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "lvs0/vd0", "snapshot_name": "s1"}),
    );
    qemu_io(port, "e0", &["write -P 0x22 8M 4M"]);
    srv.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "lvs0/vd0", "snapshot_name": "s2"}),
    );
    let check = |id: u64| srv.call("bdev_lvol_check_shallow_copy", json!({"operation_id": id}));
    let t0 = Instant::now();
    let op = srv.call(
        "tessera_lvol_start_diff_copy",
        json!({"target": "lvs0/s2", "dst_bdev_name": "dst2", "offset_blocks": 512,
               "max_bytes_per_sec": 2 * M}),
    )["operation_id"]
        .as_u64()
        .unwrap();
    let r = wait_copy(|| check(op));
    let took = t0.elapsed();
    assert_eq!(r["state"], "complete", "{r}");
    assert_eq!(
        r["total_bytes"],
        (5 * M) as u64,
        "2-3 MiB and 8-12 MiB: {r}"
    );
    assert!(
        took >= Duration::from_millis(1800),
        "5 MiB at 2 MiB/s in {took:?}"
    );
    let img = std::fs::read(dir.path().join("dst2.img")).unwrap();
    let mut want = vec![0u8; 16 * M];
    fill(&mut want, 2 * M, M, 0x11);
    fill(&mut want, 8 * M, 4 * M, 0x22);
    assert_same(&img, &want, "the full copy from 2 MiB on");
    srv.stop();
}

/// Under `tessera_lvol_set_copy_limit` a copy of 12 MiB at 4 MiB/s takes at least two
/// seconds (a loose lower bound) and reports progress on the way; a source set
/// writable during a copy ends it in state "error".
#[test]
fn a_capped_copy_is_slow_and_a_source_made_writable_fails_it() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), port);
    thin_vd0_exported(&srv);
    qemu_io(port, "e0", &["write -P 0x31 0 12M"]);
    srv.call("nbd_stop_export", json!({"name": "e0"}));
    srv.call("bdev_lvol_set_read_only", json!({"name": "lvs0/vd0"}));
    let check = |id: u64| srv.call("bdev_lvol_check_shallow_copy", json!({"operation_id": id}));
    let e = srv.call_err(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": "fast"}),
    );
    assert!(e.message.contains("max_bytes_per_sec"), "{e:?}");
    srv.call(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": 4 * M}),
    );

    let t0 = Instant::now();
    let op = srv.call(
        "bdev_lvol_start_shallow_copy",
        json!({"src_lvol_name": "lvs0/vd0", "dst_bdev_name": "dst2"}),
    )["operation_id"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mid = check(op);
    assert_eq!(mid["state"], "in progress", "{mid}");
    assert!(mid["copied_clusters"].as_u64().unwrap() < 12, "{mid}");
    let done = wait_copy(|| check(op));
    let took = t0.elapsed();
    assert_eq!(done["state"], "complete", "{done}");
    assert_eq!(done["copied_clusters"], 12, "{done}");
    assert!(
        took >= Duration::from_millis(1500),
        "12 MiB at 4 MiB/s in {took:?}"
    );

    // Made writable mid-copy: the copy stops with an error naming it.
    let op = srv.call(
        "bdev_lvol_start_shallow_copy",
        json!({"src_lvol_name": "lvs0/vd0", "dst_bdev_name": "dst2"}),
    )["operation_id"]
        .as_u64()
        .unwrap();
    srv.call(
        "tessera_set_read_only",
        json!({"name": "lvs0/vd0", "read_only": false}),
    );
    let failed = wait_copy(|| check(op));
    assert_eq!(failed["state"], "error", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("writable"),
        "{failed}"
    );
    srv.call(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": 0}),
    );
    srv.stop();
}

/// `tessera_lvol_set_copy_limit` caps splits too: an inflate (answered when the split is
/// done) of a clone of a 32 MiB snapshot (two batches of a split) at 8 MiB/s waits out
/// its first 16 MiB, about two seconds; lifted, the next inflate is quick.
#[test]
fn the_copy_limit_caps_an_inflate() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), port);
    thin_lvol_exported(&srv, "big", 32);
    qemu_io(port, "e0", &["write -P 0x41 0 32M"]);
    srv.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "lvs0/big", "snapshot_name": "s"}),
    );
    for c in ["c1", "c2"] {
        srv.call(
            "bdev_lvol_clone",
            json!({"snapshot_name": "lvs0/s", "clone_name": c}),
        );
    }
    let inflate = |name: &str| {
        let t0 = Instant::now();
        srv.call("bdev_lvol_inflate", json!({"name": format!("lvs0/{name}")}));
        let took = t0.elapsed();
        let l = srv.call("bdev_lvol_get_lvols", json!({"lvs_name": "lvs0"}));
        let lvol = l.as_array().unwrap().iter().find(|v| v["name"] == name);
        assert_eq!(lvol.unwrap()["is_clone"], false, "{l}");
        took
    };
    srv.call(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": 8 * M}),
    );
    let took = inflate("c1");
    assert!(
        took >= Duration::from_millis(1800),
        "32 MiB split at 8 MiB/s in {took:?}"
    );
    srv.call(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": 0}),
    );
    let took = inflate("c2");
    assert!(took < Duration::from_millis(1500), "uncapped: {took:?}");
    srv.stop();
}

/// `tessera rpc --wait` follows a job to its end. Not on a terminal it prints a plain
/// progress line a second and the outcome: an inflate (its call answers when the split
/// ends; the progress comes on a second connection), a split started in the background
/// (`tessera_split_start`) and a shallow copy, each capped at 8 MiB/s so that it takes
/// about two seconds. On a terminal (a pty from `script`) it draws a bar. A copy made to
/// fail (its source made writable) exits 1 naming the error; a job whose progress stops
/// for the time limit (`-t`) exits 1 saying so; a method that starts no job is refused.
#[test]
fn tessera_rpc_wait_follows_splits_and_copies_to_their_end() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(dir.path(), port);
    thin_lvol_exported(&srv, "big", 16);
    qemu_io(port, "e0", &["write -P 0x41 0 16M"]);
    srv.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "lvs0/big", "snapshot_name": "s"}),
    );
    for c in ["c1", "c2", "c3"] {
        srv.call(
            "bdev_lvol_clone",
            json!({"snapshot_name": "lvs0/s", "clone_name": c}),
        );
    }
    srv.call(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": 8 * M}),
    );
    let tessera = env!("CARGO_BIN_EXE_tessera");
    let sock = srv.socket.display().to_string();
    let wait = |args: &[&str]| {
        let mut c = Command::new(tessera);
        c.args(["rpc", "-s", &sock, "--wait"]).args(args);
        c
    };
    let is_clone = |name: &str| {
        let l = srv.call("bdev_lvol_get_lvols", json!({"lvs_name": "lvs0"}));
        l.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {l}"))["is_clone"]
            == true
    };
    // Plain lines: "JOB: P% (D of T MiB), R MiB/s, S s left", then "JOB: complete in".
    let lines_of = |out: &std::process::Output, job: &str| {
        assert!(
            out.status.success(),
            "{job}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let progress = err
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{job}: "))
                    && l.contains("% (")
                    && l.contains(" of 16.0 MiB), ")
            })
            .count();
        assert!(progress >= 1, "{job}: no progress line in:\n{err}");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("{job}: complete in "))),
            "{job}: no outcome line in:\n{err}"
        );
        assert!(
            !err.contains('\r') && !err.contains('\x1b'),
            "{job}: terminal codes in:\n{err}"
        );
        err
    };
    let out = process_support::run(
        &mut wait(&["bdev_lvol_inflate", "--name", "lvs0/c1"]),
        Duration::from_secs(60),
    );
    lines_of(&out, "split of lvs0/c1");
    assert!(!is_clone("c1"));
    let out = process_support::run(
        &mut wait(&["tessera_split_start", "--name", "lvs0/c2"]),
        Duration::from_secs(60),
    );
    lines_of(&out, "split of lvs0/c2");
    assert!(!is_clone("c2"));
    let out = process_support::run(
        &mut wait(&[
            "bdev_lvol_start_shallow_copy",
            "--src_lvol_name",
            "lvs0/s",
            "--dst_bdev_name",
            "dst0",
        ]),
        Duration::from_secs(60),
    );
    let err = lines_of(&out, "copy 1");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"operation_id\": 1"),
        "{err}"
    );
    let img = std::fs::read(dir.path().join("dst0.img")).unwrap();
    assert!(
        img.iter().all(|b| *b == 0x41),
        "dst0 is not the snapshot's copy"
    );

    // On a terminal: a bar.
    let cmd = format!("{tessera} rpc -s {sock} --wait bdev_lvol_inflate --name lvs0/c3");
    let out = process_support::run(
        Command::new("script").args(["-qec", &cmd, "/dev/null"]),
        Duration::from_secs(60),
    );
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("split of lvs0/c3 [") && tty.contains("%") && tty.contains("left"),
        "no progress bar in:\n{tty:?}"
    );
    assert!(tty.contains("split of lvs0/c3: complete in"), "{tty:?}");

    // A copy that fails: exit 1, the error named. `big` gets blocks of its own first.
    qemu_io(port, "e0", &["write -P 0x42 0 16M"]);
    let copy_big = [
        "bdev_lvol_start_shallow_copy",
        "--src_lvol_name",
        "lvs0/big",
        "--dst_bdev_name",
        "dst2",
    ];
    let mut child = wait(&copy_big);
    srv.call("bdev_lvol_set_read_only", json!({"name": "lvs0/big"}));
    let child = child
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    srv.call(
        "tessera_set_read_only",
        json!({"name": "lvs0/big", "read_only": false}),
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("copy 2 failed") && err.contains("writable"),
        "{err}"
    );

    // Stalled: a cap of 1 byte a second, a time limit of 1 s.
    srv.call("bdev_lvol_set_read_only", json!({"name": "lvs0/big"}));
    srv.call(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": 1}),
    );
    let out = run_fails(
        Command::new(tessera)
            .args(["rpc", "-s", &sock, "-t", "1", "--wait"])
            .args(copy_big),
    );
    assert!(out.contains("copy 3: no progress in 1s"), "{out}");
    srv.call(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": 0}),
    );

    // Not a job.
    let out = run_fails(&mut wait(&[
        "bdev_lvol_snapshot",
        "--lvol_name",
        "lvs0/big",
    ]));
    assert!(
        out.contains("bdev_lvol_snapshot starts no job") && out.contains("bdev_lvol_inflate"),
        "{out}"
    );
    srv.stop();
}
