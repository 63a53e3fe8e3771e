//! External snapshots (SPDK's esnap clones) through real parts: a golden image on a
//! uring file bdev, cloned with SPDK's `spdk-rpc bdev_lvol_clone_bdev` into an lvstore
//! on another file; the clone read whole with `nbdcopy` and written with `qemu-io`
//! through NBD (whole granules, parts of granules, a whole segment), compared byte for
//! byte with what it must hold; the golden file unchanged; a snapshot of the clone; the
//! target restarted (with the golden bdev, and without it: degraded, until it is created
//! again) and everything read again; `bdev_lvol_set_parent_bdev` on a thin lvol, a
//! clone, an lvol with snapshots and a snapshot with clones; inflate, decouple and shrink of such clones, and
//! the claim let go when a background split ends; `save_config` round trips with
//! external snapshots that are lvols of another lvstore. Bad parameters get SPDK's
//! codes.

mod process_support;
mod rpc_common;

use rpc_common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

const K: usize = 1024;
const M: usize = 1024 * K;
/// The golden image's size (a multiple of the 1 MiB cluster).
const GOLDEN: usize = 16 * M;
const GOLDEN_UUID: &str = "6c1f3a52-9d3e-4c52-8a7e-1f0d2a9b5e01";

/// Known, position-dependent contents: every 512-byte block differs.
fn golden_bytes() -> Vec<u8> {
    (0..GOLDEN)
        .map(|i| ((i / 512) as u32).wrapping_mul(2654435761).to_le_bytes()[i % 4] ^ (i as u8))
        .collect()
}

fn config(dir: &Path, nbd_port: u16, with_golden: bool) -> std::path::PathBuf {
    let f = |n: &str| dir.join(n).display().to_string();
    let golden = if with_golden {
        format!(
            "  - {{type: uring, name: golden, path: {}, block_size: 4096, uuid: {GOLDEN_UUID}}}\n",
            f("golden.img")
        )
    } else {
        String::new()
    };
    let yaml = format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n{golden}  - {{type: uring, name: data, path: {}, size: 256MiB, block_size: 4096}}\n  - {{type: uring, name: odd, path: {}, block_size: 4096}}\nnbd:\n  listen: 127.0.0.1:{nbd_port}\n",
        f("pool.img"),
        f("odd.img"),
    );
    let p = dir.join(if with_golden {
        "config.yaml"
    } else {
        "nogolden.yaml"
    });
    std::fs::write(&p, yaml).unwrap();
    p
}

/// A new directory holding the golden image (`golden.img`) and `odd.img` (6 MiB of
/// zeros), a free port for NBD, the golden image's bytes, and the configuration of a
/// target with both ([`config`]).
fn golden_target() -> (tempfile::TempDir, u16, Vec<u8>, std::path::PathBuf) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let golden = golden_bytes();
    std::fs::write(dir.path().join("golden.img"), &golden).unwrap();
    std::fs::write(dir.path().join("odd.img"), vec![0u8; 6 * M]).unwrap();
    let cfg = config(dir.path(), port, true);
    (dir, port, golden, cfg)
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap().to_string()
}

/// The bytes of `bdev`, read whole over NBD with nbdcopy through a read-only export.
fn read_all(srv: &Serve, port: u16, bdev: &str, dir: &Path) -> Vec<u8> {
    let export = format!("r-{}", bdev.replace('/', "-"));
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": bdev, "name": export, "read_only": true}),
    );
    let file = dir.join(format!("{export}.img"));
    run_ok(
        Command::new("nbdcopy")
            .arg(format!("nbd://127.0.0.1:{port}/{export}"))
            .arg(&file),
    );
    srv.call("nbd_stop_export", json!({"name": export}));
    let b = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    b
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {i} (512-byte block {}) is {:#04x}, expected {:#04x}",
            i / 512,
            got[i],
            want[i]
        );
    }
}

/// `tessera check` of the stopped pool `pool` finds no problem.
fn check_clean(pool: &Path) {
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("check")
            .arg(pool),
    );
    assert!(!out.contains("problem"), "{out}");
}

fn lvol<'a>(lvols: &'a Value, name: &str) -> &'a Value {
    lvols
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no lvol {name} in {lvols}"))
}

#[test]
fn golden_image_on_a_file_cloned_written_snapshotted_and_restarted() {
    let tool = spdk_rpc();
    let (dir, port, golden, cfg) = golden_target();
    let golden_sum = sha256(&dir.path().join("golden.img"));
    let work = tempfile::tempdir().unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    let fails = |args: &[&str]| run_fails(Command::new(&tool).arg("-s").arg(&s).args(args));

    rpc(&["bdev_lvol_create_lvstore", "data", "lvs0", "-c", "4194304"]);
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vd0", "8"]);

    // SPDK's refusals, with SPDK's codes.
    let out = fails(&["bdev_lvol_clone_bdev", "golden", "nolvs", "c0"]);
    assert!(
        out.contains("-32602") && out.contains("lvs does not exist"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_clone_bdev", "nobdev", "lvs0", "c0"]);
    assert!(
        out.contains("-32602") && out.contains("bdev does not exist"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_clone_bdev", "lvs0/vd0", "lvs0", "c0"]);
    assert!(
        out.contains("-32602") && out.contains("use bdev_lvol_clone instead"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_clone_bdev", "odd", "lvs0", "c0"]);
    assert!(
        out.contains("-32602") && out.contains("Invalid argument"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_clone_bdev", "golden", "lvs0", "vd0"]);
    assert!(
        out.contains("-32602") && out.contains("File exists"),
        "{out}"
    );
    // A bdev with a writer is no external snapshot.
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": "golden", "name": "gw"}),
    );
    let out = fails(&["bdev_lvol_clone_bdev", "golden", "lvs0", "c0"]);
    assert!(
        out.contains("-32602") && out.contains("Operation not permitted"),
        "{out}"
    );
    srv.call("nbd_stop_export", json!({"name": "gw"}));

    let uuid = rpc(&["bdev_lvol_clone_bdev", "golden", "lvs0", "c1"]);
    let uuid = uuid.trim().trim_matches('"').to_string();
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    let c1 = lvol(&lvols, "c1");
    assert_eq!(c1["uuid"], uuid.as_str());
    assert_eq!(c1["is_esnap_clone"], true, "{c1}");
    assert_eq!(c1["is_thin_provisioned"], true, "{c1}");
    assert_eq!(c1["is_degraded"], false, "{c1}");
    assert_eq!(c1["external_snapshot_name"], GOLDEN_UUID, "{c1}");
    assert_eq!(c1["num_blocks"], (GOLDEN / 4096) as u64, "{c1}");
    // Now the golden bdev takes no writer.
    let e = srv.call_err(
        "nbd_start_export",
        json!({"bdev_name": "golden", "name": "gw"}),
    );
    assert_eq!(e.code, -libc::EPERM, "{e}");
    let e = srv.call_err("bdev_uring_delete", json!({"name": "golden"}));
    assert!(e.message.contains("external snapshot"), "{e}");

    // Unwritten, the clone reads as the golden image.
    assert_same(
        &read_all(&srv, port, "lvs0/c1", work.path()),
        &golden,
        "fresh clone",
    );
    // And a full copy (`tessera send`, a full diff copy) takes all of it: every block
    // is data, none a hole it may skip.
    let page = srv.call(
        "tessera_lvol_get_allocated_ranges",
        json!({"name": "lvs0/c1"}),
    );
    assert_eq!(
        page["ranges"],
        json!([{"offset_blocks": 0, "num_blocks": GOLDEN / 4096, "offset": 0,
                "length": GOLDEN, "state": "data"}]),
        "{page}"
    );

    // Writes: a whole granule (4 KiB), parts of granules (512 B and 1 KiB at odd
    // places: the rest of each granule comes from the golden image), a whole segment.
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": "lvs0/c1", "name": "c1"}),
    );
    let mut want = golden.clone();
    let writes: &[(usize, usize, u8)] = &[
        (M, 4 * K, 0x5a),
        (3 * M + 512, 512, 0x5b),
        (5 * M + 4 * K - 512, 1024, 0x5c),
        (8 * M, M, 0x5d),
    ];
    let cmds: Vec<String> = writes
        .iter()
        .map(|&(o, l, b)| format!("write -P {b:#x} {o} {l}"))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(port, "c1", &cmds);
    for &(o, l, b) in writes {
        want[o..o + l].fill(b);
    }
    assert_same(
        &read_all(&srv, port, "lvs0/c1", work.path()),
        &want,
        "written clone",
    );
    assert_eq!(
        sha256(&dir.path().join("golden.img")),
        golden_sum,
        "golden file changed"
    );

    // A snapshot of the clone reads through to the golden image too; the clone goes on.
    rpc(&["bdev_lvol_snapshot", "lvs0/c1", "s1"]);
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    assert_eq!(lvol(&lvols, "s1")["is_esnap_clone"], true, "{lvols}");
    assert_eq!(lvol(&lvols, "c1")["is_esnap_clone"], false, "{lvols}");
    assert_eq!(lvol(&lvols, "c1")["is_clone"], true, "{lvols}");
    let snap = want.clone();
    qemu_io(
        port,
        "c1",
        &["write -P 0x6a 3145728 512", "write -P 0x6b 12M 2048"],
    );
    want[3 * M..3 * M + 512].fill(0x6a);
    want[12 * M..12 * M + 2048].fill(0x6b);
    // Write-zeroes in the clone shows zeros, not the golden image.
    qemu_io(port, "c1", &["write -z 14M 1M", "write -z 15M 1536"]);
    want[14 * M..15 * M + 1536].fill(0);
    assert_same(
        &read_all(&srv, port, "lvs0/s1", work.path()),
        &snap,
        "snapshot",
    );
    assert_same(
        &read_all(&srv, port, "lvs0/c1", work.path()),
        &want,
        "clone after snapshot",
    );
    srv.call("nbd_stop_export", json!({"name": "c1"}));
    assert_eq!(
        sha256(&dir.path().join("golden.img")),
        golden_sum,
        "golden file changed"
    );
    // bdev_lvol_set_parent_bdev: a thin lvol of the pool's own reads the golden image
    // where it holds nothing (a granule it wrote part of holds the rest as zeros).
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": "lvs0/vd0", "name": "v0"}),
    );
    qemu_io(port, "v0", &["write -P 0x77 0 4k", "write -P 0x78 6M 1M"]);
    srv.call("nbd_stop_export", json!({"name": "v0"}));
    let mut want_v0 = golden[..8 * M].to_vec();
    want_v0[..16 * K].fill(0);
    want_v0[..4 * K].fill(0x77);
    want_v0[6 * M..7 * M].fill(0x78);
    rpc(&["bdev_lvol_create", "-l", "lvs0", "vdt", "4"]);
    let out = fails(&["bdev_lvol_set_parent_bdev", "lvs0/vdt", "golden"]);
    assert!(
        out.contains("-32602") && out.contains("Invalid argument"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_set_parent_bdev", "lvs0/vd0", "nobdev"]);
    assert!(
        out.contains("-32602") && out.contains("No such device"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_set_parent_bdev", "lvs0/nolvol", "golden"]);
    assert!(out.contains("-19"), "{out}");
    // Succeeds (spdk-rpc prints nothing for `true`).
    rpc(&["bdev_lvol_set_parent_bdev", "lvs0/vd0", "golden"]);
    let out = fails(&["bdev_lvol_set_parent_bdev", "lvs0/vd0", "golden"]);
    assert!(
        out.contains("-32602") && out.contains("File exists"),
        "{out}"
    );
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    assert_eq!(lvol(&lvols, "vd0")["is_esnap_clone"], true, "{lvols}");
    assert_same(
        &read_all(&srv, port, "lvs0/vd0", work.path()),
        &want_v0,
        "re-parented lvol",
    );
    srv.stop();

    // Restarted: the same contents.
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    assert_same(
        &read_all(&srv, port, "lvs0/s1", work.path()),
        &snap,
        "snapshot, restarted",
    );
    assert_same(
        &read_all(&srv, port, "lvs0/c1", work.path()),
        &want,
        "clone, restarted",
    );
    assert_same(
        &read_all(&srv, port, "lvs0/vd0", work.path()),
        &want_v0,
        "re-parented, restarted",
    );
    srv.stop();

    // Restarted without the golden bdev: degraded, reads of it fail; once the bdev is
    // created again (same UUID), the clone reads as before.
    let cfg2 = config(dir.path(), port, false);
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg2);
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    assert_eq!(lvol(&lvols, "s1")["is_degraded"], true, "{lvols}");
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": "lvs0/c1", "name": "c1", "read_only": true}),
    );
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "-r", "-c", "read 0 4k"])
        .arg(format!("nbd://127.0.0.1:{port}/c1"));
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("failed") || !out.status.success(),
        "degraded read succeeded: {text}"
    );
    srv.call("nbd_stop_export", json!({"name": "c1"}));
    srv.call(
        "bdev_uring_create",
        json!({"name": "golden", "filename": dir.path().join("golden.img"), "block_size": 4096, "uuid": GOLDEN_UUID}),
    );
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    assert_eq!(lvol(&lvols, "s1")["is_degraded"], false, "{lvols}");
    assert_same(
        &read_all(&srv, port, "lvs0/c1", work.path()),
        &want,
        "clone, golden back",
    );
    srv.stop();
    assert_eq!(
        sha256(&dir.path().join("golden.img")),
        golden_sum,
        "golden file changed"
    );
}

/// Writes `cmds` with qemu-io through a writable NBD export of `bdev`.
fn write_lvol(srv: &Serve, port: u16, bdev: &str, cmds: &[&str]) {
    let export = format!("w-{}", bdev.replace('/', "-"));
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": bdev, "name": export}),
    );
    qemu_io(port, &export, cmds);
    srv.call("nbd_stop_export", json!({"name": export}));
}

/// `bdev_lvol_set_parent`: a thin lvol, an lvol with a snapshot and an external
/// snapshot's clone each become clones of the snapshot `sA`; what each holds stays
/// (whole granules, a granule written in part, whole segments, zeros written over its
/// old parent's data), everything else reads `sA`; writes after it copy on write from
/// `sA`; all of it again after a restart, and `tessera check` is clean. SPDK's codes for
/// every refusal.
#[test]
fn set_parent_keeps_what_the_lvol_holds_and_reads_the_rest_from_the_new_parent() {
    let tool = spdk_rpc();
    let (dir, port, golden, cfg) = golden_target();
    let work = tempfile::tempdir().unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    let fails = |args: &[&str]| run_fails(Command::new(&tool).arg("-s").arg(&s).args(args));
    let refused = |args: &[&str], what: &str| {
        let out = fails(args);
        assert!(
            out.contains("-32602") && out.contains(what),
            "{args:?}: {out}"
        );
    };

    rpc(&["bdev_lvol_create_lvstore", "data", "lvs0", "-c", "1048576"]);
    // sA: 15 MiB of 0xa1, its last MiB never written.
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vdA", "16"]);
    write_lvol(&srv, port, "lvs0/vdA", &["write -P 0xa1 0 15M"]);
    rpc(&["bdev_lvol_snapshot", "lvs0/vdA", "sA"]);
    let mut a = vec![0xa1u8; 15 * M];
    a.resize(GOLDEN, 0);
    // vdB, thin: a whole granule, part of a granule, a whole segment, a granule where
    // sA holds nothing.
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vdB", "16"]);
    write_lvol(
        &srv,
        port,
        "lvs0/vdB",
        &[
            "write -P 0xb1 0 4k",
            "write -P 0xb2 2097664 512",
            "write -P 0xb3 5M 1M",
            "write -P 0xb4 15736832 4k",
        ],
    );
    // vdC: written whole, snapshotted as sC, then written and zeroed in places.
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vdC", "16"]);
    write_lvol(&srv, port, "lvs0/vdC", &["write -P 0xc1 0 16M"]);
    rpc(&["bdev_lvol_snapshot", "lvs0/vdC", "sC"]);
    write_lvol(
        &srv,
        port,
        "lvs0/vdC",
        &["write -P 0xc2 7M 8k", "write -z 9M 1M", "write -z 11M 4k"],
    );
    // c1: a clone of the golden image, written in part of a granule.
    rpc(&["bdev_lvol_clone_bdev", "golden", "lvs0", "c1"]);
    write_lvol(&srv, port, "lvs0/c1", &["write -P 0xd1 1049600 1k"]);

    // c2: a clone of the golden image grown by 4 MiB: what lies past the golden
    // image's end reads zeros, and takes writes.
    rpc(&["bdev_lvol_clone_bdev", "golden", "lvs0", "c2"]);
    rpc(&["bdev_lvol_resize", "lvs0/c2", "20"]);
    write_lvol(
        &srv,
        port,
        "lvs0/c2",
        &["write -P 0xe1 17M 4k", "write -P 0xe2 8M 1k"],
    );
    let mut want_c2 = golden.clone();
    want_c2.resize(20 * M, 0);
    want_c2[17 * M..17 * M + 4 * K].fill(0xe1);
    want_c2[8 * M..8 * M + K].fill(0xe2);

    // bdev_get_bdevs reports the lineage as SPDK's vbdev_lvol_dump_info_json does.
    let lvol_info = |name: &str| {
        let b = srv.call("bdev_get_bdevs", json!({"name": name}));
        b[0]["driver_specific"]["lvol"].clone()
    };
    let c1 = lvol_info("lvs0/c1");
    assert_eq!(c1["esnap_clone"], true, "{c1}");
    assert_eq!(c1["external_snapshot_name"], GOLDEN_UUID, "{c1}");
    let vdc = lvol_info("lvs0/vdC");
    assert_eq!(vdc["esnap_clone"], false, "{vdc}");
    assert_eq!(vdc["base_snapshot"], "sC", "{vdc}");
    assert_eq!(lvol_info("lvs0/sC")["clones"], json!(["vdC"]));

    // SPDK's refusals.
    let out = fails(&["bdev_lvol_set_parent", "lvs0/nolvol", "lvs0/sA"]);
    assert!(out.contains("-19"), "{out}");
    let out = fails(&["bdev_lvol_set_parent", "lvs0/vdB", "lvs0/nosnap"]);
    assert!(out.contains("-19"), "{out}");
    let out = fails(&["bdev_lvol_set_parent", "lvs0/vdB", "golden"]);
    assert!(out.contains("-19"), "a bdev that is no lvol: {out}");
    refused(
        &["bdev_lvol_set_parent", "lvs0/vdB", "lvs0/vdA"],
        "Invalid argument",
    );
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vdS", "8"]);
    rpc(&["bdev_lvol_snapshot", "lvs0/vdS", "sS"]);
    refused(
        &["bdev_lvol_set_parent", "lvs0/vdB", "lvs0/sS"],
        "Invalid argument",
    );
    rpc(&["bdev_lvol_create", "-l", "lvs0", "vdT", "16"]);
    refused(
        &["bdev_lvol_set_parent", "lvs0/vdT", "lvs0/sA"],
        "Invalid argument",
    );
    refused(
        &["bdev_lvol_set_parent", "lvs0/sA", "lvs0/sA"],
        "Invalid argument",
    );
    // A snapshot takes a new parent as SPDK's does, of its own size only.
    refused(
        &["bdev_lvol_set_parent", "lvs0/sC", "lvs0/sS"],
        "Invalid argument",
    );
    refused(
        &["bdev_lvol_set_parent", "lvs0/vdC", "lvs0/sC"],
        "File exists",
    );
    srv.call(
        "bdev_malloc_create",
        json!({"name": "m1", "num_blocks": 16384, "block_size": 4096}),
    );
    rpc(&["bdev_lvol_create_lvstore", "m1", "lvs1", "-c", "1048576"]);
    rpc(&["bdev_lvol_create", "-l", "lvs1", "-t", "x", "16"]);
    rpc(&["bdev_lvol_snapshot", "lvs1/x", "xs"]);
    refused(
        &["bdev_lvol_set_parent", "lvs0/vdB", "lvs1/xs"],
        "Invalid argument",
    );

    // Done (spdk-rpc prints nothing for `true`).
    for l in ["vdB", "vdC", "c1"] {
        rpc(&["bdev_lvol_set_parent", &format!("lvs0/{l}"), "lvs0/sA"]);
    }
    refused(
        &["bdev_lvol_set_parent", "lvs0/vdB", "lvs0/sA"],
        "File exists",
    );
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    for l in ["vdB", "vdC", "c1"] {
        assert_eq!(lvol(&lvols, l)["is_clone"], true, "{l}: {lvols}");
        assert_eq!(lvol(&lvols, l)["is_esnap_clone"], false, "{l}: {lvols}");
    }
    let c1 = lvol_info("lvs0/c1");
    assert_eq!(c1["esnap_clone"], false, "{c1}");
    assert_eq!(c1["base_snapshot"], "sA", "{c1}");
    assert!(c1.get("external_snapshot_name").is_none(), "{c1}");
    let mut want_b = a.clone();
    want_b[..4 * K].fill(0xb1);
    want_b[2 * M..2 * M + 4 * K].fill(0);
    want_b[2 * M + 512..2 * M + 1024].fill(0xb2);
    want_b[5 * M..6 * M].fill(0xb3);
    want_b[15 * M + 8 * K..15 * M + 12 * K].fill(0xb4);
    let mut want_c = a.clone();
    want_c[7 * M..7 * M + 8 * K].fill(0xc2);
    want_c[9 * M..10 * M].fill(0);
    want_c[11 * M..11 * M + 4 * K].fill(0);
    let mut want_e = a.clone();
    want_e[M..M + 4 * K].copy_from_slice(&golden[M..M + 4 * K]);
    want_e[M + K..M + 2 * K].fill(0xd1);
    let sc = vec![0xc1u8; GOLDEN];
    let check_all = |srv: &Serve, want_b: &[u8], when: &str| {
        for (bdev, want) in [
            ("lvs0/vdB", want_b),
            ("lvs0/vdC", &want_c[..]),
            ("lvs0/c1", &want_e[..]),
            ("lvs0/sA", &a[..]),
            ("lvs0/sC", &sc[..]),
            ("lvs0/c2", &want_c2[..]),
        ] {
            assert_same(
                &read_all(srv, port, bdev, work.path()),
                want,
                &format!("{bdev} {when}"),
            );
        }
    };
    check_all(&srv, &want_b, "after set_parent");

    // Writes after: into a segment shared with sA (copy on write) and into vdB's own.
    write_lvol(
        &srv,
        port,
        "lvs0/vdB",
        &["write -P 0xb5 12M 4k", "write -P 0xb6 5246976 4k"],
    );
    want_b[12 * M..12 * M + 4 * K].fill(0xb5);
    want_b[5 * M + 4 * K..5 * M + 8 * K].fill(0xb6);
    check_all(&srv, &want_b, "written after set_parent");
    srv.stop();

    check_clean(&dir.path().join("pool.img"));
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    check_all(&srv, &want_b, "restarted");
    srv.stop();
}

/// `bdev_lvol_set_parent_bdev` on lvols with a parent in the lvstore, as SPDK's
/// `spdk_bs_blob_set_external_parent` does it: `vdA` (an lvol with a snapshot `sA`,
/// written since: whole granules, part of a granule, a segment zeroed over `sA`'s
/// data), `cB` (a clone of `sA`, written) and `c1` (a clone of `s1`, the golden image's
/// esnap clone's snapshot) each keep what they wrote themselves and read the golden
/// image everywhere else — not their old parents' data; each is an esnap clone of the
/// golden image afterwards, `sA` has no clones left. A write of part of a granule after
/// it fills the rest from the golden image. All of it again after a restart, `tessera
/// check` clean. SPDK's codes for the refusals.
#[test]
fn set_parent_bdev_on_a_clone_and_an_lvol_with_snapshots_keeps_only_their_own_writes() {
    let tool = spdk_rpc();
    let (dir, port, golden, cfg) = golden_target();
    let golden_sum = sha256(&dir.path().join("golden.img"));
    let work = tempfile::tempdir().unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    let fails = |args: &[&str]| run_fails(Command::new(&tool).arg("-s").arg(&s).args(args));
    let refused = |args: &[&str], what: &str| {
        let out = fails(args);
        assert!(
            out.contains("-32602") && out.contains(what),
            "{args:?}: {out}"
        );
    };
    rpc(&["bdev_lvol_create_lvstore", "data", "lvs0", "-c", "1048576"]);

    // vdA: 15 MiB of 0xa1, snapshotted as sA, then written and zeroed in places.
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vdA", "16"]);
    write_lvol(&srv, port, "lvs0/vdA", &["write -P 0xa1 0 15M"]);
    rpc(&["bdev_lvol_snapshot", "lvs0/vdA", "sA"]);
    let mut sa = vec![0xa1u8; 15 * M];
    sa.resize(GOLDEN, 0);
    write_lvol(
        &srv,
        port,
        "lvs0/vdA",
        &[
            "write -P 0xa2 7M 8k",
            "write -P 0xa3 2097664 512",
            "write -z 9M 1M",
        ],
    );
    // cB: a clone of sA, written (a whole segment, part of a granule).
    rpc(&["bdev_lvol_clone", "lvs0/sA", "cB"]);
    write_lvol(
        &srv,
        port,
        "lvs0/cB",
        &["write -P 0xb1 4M 1M", "write -P 0xb2 1049600 1k"],
    );
    // c1: the golden image's esnap clone, written, snapshotted as s1, written again.
    rpc(&["bdev_lvol_clone_bdev", "golden", "lvs0", "c1"]);
    write_lvol(&srv, port, "lvs0/c1", &["write -P 0xc1 3M 1M"]);
    rpc(&["bdev_lvol_snapshot", "lvs0/c1", "s1"]);
    write_lvol(
        &srv,
        port,
        "lvs0/c1",
        &["write -P 0xc2 5M 4k", "write -P 0xc3 3146240 1k"],
    );
    let mut want_s1 = golden.clone();
    want_s1[3 * M..4 * M].fill(0xc1);

    // Refusals: SPDK's (a thick lvol that is no clone; the golden image's own esnap
    // clone), and tessera's (an lvol of the same lvstore).
    rpc(&["bdev_lvol_create", "-l", "lvs0", "thick", "16"]);
    refused(
        &["bdev_lvol_set_parent_bdev", "lvs0/thick", "golden"],
        "Invalid argument",
    );
    refused(
        &["bdev_lvol_set_parent_bdev", "lvs0/cB", "lvs0/s1"],
        "Invalid argument",
    );
    // s1, the golden image's esnap clone since the snapshot: its parent already, as
    // SPDK answers first.
    refused(
        &["bdev_lvol_set_parent_bdev", "lvs0/s1", "golden"],
        "File exists",
    );

    for l in ["vdA", "cB", "c1"] {
        rpc(&["bdev_lvol_set_parent_bdev", &format!("lvs0/{l}"), "golden"]);
        refused(
            &["bdev_lvol_set_parent_bdev", &format!("lvs0/{l}"), "golden"],
            "File exists",
        );
    }
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    for l in ["vdA", "cB", "c1"] {
        let v = lvol(&lvols, l);
        assert_eq!(v["is_esnap_clone"], true, "{l}: {v}");
        assert_eq!(v["is_clone"], false, "{l}: {v}");
        assert_eq!(v["external_snapshot_name"], GOLDEN_UUID, "{l}: {v}");
    }
    assert_eq!(lvol(&lvols, "sA")["children"], json!([]), "{lvols}");
    assert_eq!(lvol(&lvols, "s1")["children"], json!([]), "{lvols}");
    let b = srv.call("bdev_get_bdevs", json!({"name": "lvs0/cB"}));
    let info = &b[0]["driver_specific"]["lvol"];
    assert_eq!(info["esnap_clone"], true, "{info}");
    assert!(
        info.get("base_snapshot").is_none_or(Value::is_null),
        "{info}"
    );

    // What each wrote itself stays (a granule written in part holds the rest as it was
    // then: its old parent's data); everything else is the golden image's.
    let mut want_a = golden.clone();
    want_a[7 * M..7 * M + 8 * K].fill(0xa2);
    want_a[2 * M..2 * M + 4 * K].fill(0xa1);
    want_a[2 * M + 512..2 * M + 1024].fill(0xa3);
    want_a[9 * M..10 * M].fill(0);
    let mut want_b = golden.clone();
    want_b[4 * M..5 * M].fill(0xb1);
    want_b[M..M + 4 * K].fill(0xa1);
    want_b[M + K..M + 2 * K].fill(0xb2);
    let mut want_c = golden.clone();
    want_c[5 * M..5 * M + 4 * K].fill(0xc2);
    want_c[3 * M..3 * M + 4 * K].fill(0xc1);
    want_c[3 * M + 512..3 * M + 1536].fill(0xc3);
    // Written after: part of a granule it did not hold fills from the golden image.
    write_lvol(&srv, port, "lvs0/vdA", &["write -P 0xa4 12583424 512"]);
    want_a[12 * M + 512..12 * M + 1024].fill(0xa4);
    let check_all = |srv: &Serve, when: &str| {
        for (bdev, want) in [
            ("lvs0/vdA", &want_a[..]),
            ("lvs0/cB", &want_b[..]),
            ("lvs0/c1", &want_c[..]),
            ("lvs0/sA", &sa[..]),
            ("lvs0/s1", &want_s1[..]),
        ] {
            assert_same(
                &read_all(srv, port, bdev, work.path()),
                want,
                &format!("{bdev} {when}"),
            );
        }
    };
    check_all(&srv, "after set_parent_bdev");
    srv.stop();
    check_clean(&dir.path().join("pool.img"));
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    check_all(&srv, "restarted");
    srv.stop();
    assert_eq!(
        sha256(&dir.path().join("golden.img")),
        golden_sum,
        "golden file changed"
    );
}

/// `bdev_lvol_set_parent_bdev` on a snapshot, as SPDK's `spdk_bs_blob_set_external_parent`
/// takes any thin blob (a snapshot is one there): `sB`, a snapshot of `vdB` (which was
/// a clone of `sA`), reads what it holds itself and the golden image everywhere else —
/// not `sA`'s data any more — and so do the disks reading through it below their own
/// layers: `vdB`, the lvol it was taken of (written since), and `cB`, its clone
/// (written, a segment discarded over `sB`'s data and one copied out with zeros in it:
/// they stay zeros). `sB` is the
/// golden image's esnap clone afterwards, and keeps its clones; `sA` keeps its data and
/// loses `sB` as a clone. All of it again after a restart; `tessera check` clean.
#[test]
fn set_parent_bdev_on_a_snapshot_changes_what_every_disk_reading_through_it_reads() {
    let tool = spdk_rpc();
    let (dir, port, golden, cfg) = golden_target();
    let work = tempfile::tempdir().unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    let fails = |args: &[&str]| run_fails(Command::new(&tool).arg("-s").arg(&s).args(args));
    rpc(&["bdev_lvol_create_lvstore", "data", "lvs0", "-c", "1048576"]);

    // sA: 0xa1 in [0, 3.5M); vdB its clone, written 0xb1 in [6M, 8.5M) and parts of
    // granules at 2M and 3M; sB the snapshot of vdB.
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vdA", "16"]);
    write_lvol(&srv, port, "lvs0/vdA", &["write -P 0xa1 0 3584k"]);
    rpc(&["bdev_lvol_snapshot", "lvs0/vdA", "sA"]);
    rpc(&["bdev_lvol_clone", "lvs0/sA", "vdB"]);
    write_lvol(
        &srv,
        port,
        "lvs0/vdB",
        &[
            "write -P 0xb1 6M 2560k",
            "write -P 0xb2 2098176 512",
            "write -P 0xb5 3M 512",
        ],
    );
    rpc(&["bdev_lvol_snapshot", "lvs0/vdB", "sB"]);
    let mut sa = vec![0u8; GOLDEN];
    sa[..3 * M + 512 * K].fill(0xa1);
    // vdB after: 0xb3 over a whole segment of sB's, part of a granule in one sB does
    // not hold.
    write_lvol(
        &srv,
        port,
        "lvs0/vdB",
        &["write -P 0xb3 7M 1M", "write -P 0xb4 12583424 512"],
    );
    // cB, sB's clone: 0xc1 in [10M, 11M), sB's segment at 7M discarded; copying out
    // on its first write into the segment at 8M, which so holds what cB read there
    // then, the zeros in [8.5M, 9M) too.
    rpc(&["bdev_lvol_clone", "lvs0/sB", "cB"]);
    srv.call(
        "tessera_set_cow_policy",
        json!({"name": "lvs0/cB", "cow_policy": "copy-out"}),
    );
    write_lvol(
        &srv,
        port,
        "lvs0/cB",
        &[
            "write -P 0xc1 10M 1M",
            "discard 7M 1M",
            "write -P 0xc3 8396800 512",
        ],
    );

    rpc(&["bdev_lvol_set_parent_bdev", "lvs0/sB", "golden"]);
    let out = fails(&["bdev_lvol_set_parent_bdev", "lvs0/sB", "golden"]);
    assert!(
        out.contains("-32602") && out.contains("File exists"),
        "{out}"
    );

    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    let sb = lvol(&lvols, "sB");
    assert_eq!(sb["is_esnap_clone"], true, "{sb}");
    assert_eq!(sb["is_clone"], false, "{sb}");
    assert_eq!(sb["external_snapshot_name"], GOLDEN_UUID, "{sb}");
    let mut kids: Vec<String> = sb["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    kids.sort();
    assert_eq!(kids, ["cB", "vdB"], "{sb}");
    for l in ["vdB", "cB"] {
        let v = lvol(&lvols, l);
        assert_eq!(v["is_clone"], true, "{l}: {v}");
        assert_eq!(v["is_esnap_clone"], false, "{l}: {v}");
    }
    assert_eq!(lvol(&lvols, "sA")["children"], json!(["vdA"]), "{lvols}");

    // sB holds [6M, 8.5M) and the granules at 2M and 3M (what vdB wrote; those
    // granules' rest as vdB read it then: sA's 0xa1); the golden image everywhere else.
    let mut want_sb = golden.clone();
    want_sb[6 * M..8 * M + 512 * K].fill(0xb1);
    want_sb[2 * M..2 * M + 4 * K].fill(0xa1);
    want_sb[2 * M + 1024..2 * M + 1536].fill(0xb2);
    want_sb[3 * M..3 * M + 4 * K].fill(0xa1);
    want_sb[3 * M..3 * M + 512].fill(0xb5);
    // vdB: the granule it wrote part of at 12M holds the rest as vdB read it then
    // (sA's zeros), not the golden image.
    let mut want_vdb = want_sb.clone();
    want_vdb[7 * M..8 * M].fill(0xb3);
    want_vdb[12 * M..12 * M + 4 * K].fill(0);
    want_vdb[12 * M + 512..12 * M + 1024].fill(0xb4);
    let mut want_cb = want_sb.clone();
    want_cb[10 * M..11 * M].fill(0xc1);
    want_cb[7 * M..8 * M].fill(0);
    // Its copied-out segment at 8M: what it read there then, zeros included.
    want_cb[8 * M + 512 * K..9 * M].fill(0);
    want_cb[8 * M + 8 * K..8 * M + 8 * K + 512].fill(0xc3);
    let check_all = |srv: &Serve, when: &str, want_cb: &[u8]| {
        for (bdev, want) in [
            ("lvs0/sB", &want_sb[..]),
            ("lvs0/vdB", &want_vdb[..]),
            ("lvs0/cB", want_cb),
            ("lvs0/sA", &sa[..]),
            ("lvs0/vdA", &sa[..]),
        ] {
            assert_same(
                &read_all(srv, port, bdev, work.path()),
                want,
                &format!("{bdev} {when}"),
            );
        }
    };
    check_all(&srv, "after set_parent_bdev", &want_cb);
    // Writes after it copy from the golden image where sB holds nothing.
    write_lvol(&srv, port, "lvs0/cB", &["write -P 0xc2 13631488 512"]);
    want_cb[13 * M..13 * M + 512].fill(0xc2);
    check_all(&srv, "after a write", &want_cb);
    // SPDK's JSON rebuilds the same lineage: vdB the golden image's esnap clone, sB its
    // snapshot (so the esnap clone), cB sB's clone.
    let saved = srv.call("save_config", Value::Null);
    let calls: Vec<String> = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap()["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c["method"].as_str().unwrap(), c["params"]))
        .collect();
    let at = |what: &[&str]| {
        calls
            .iter()
            .position(|c| what.iter().all(|w| c.contains(w)))
            .unwrap_or_else(|| panic!("no call with {what:?} in {calls:#?}"))
    };
    let esnap = at(&[
        "bdev_lvol_clone_bdev",
        "\"bdev\":\"golden\"",
        "\"clone_name\":\"vdB\"",
    ]);
    let snap = at(&["bdev_lvol_snapshot", "lvs0/vdB", "\"snapshot_name\":\"sB\""]);
    let clone = at(&["bdev_lvol_clone", "\"clone_name\":\"cB\"", "lvs0/sB"]);
    assert!(esnap < snap && snap < clone, "{calls:#?}");
    srv.stop();
    check_clean(&dir.path().join("pool.img"));
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    check_all(&srv, "restarted", &want_cb);

    // bdev_lvol_set_parent on the snapshot, as SPDK allows too: sB back over sA. What
    // sB and its readers hold stays, the rest reads sA's instead of the golden image;
    // cB's granule at 13M, written over the golden image, holds it still. sA may not
    // become sB's child then (it would read through itself).
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    let fails = |args: &[&str]| run_fails(Command::new(&tool).arg("-s").arg(&s).args(args));
    rpc(&["bdev_lvol_set_parent", "lvs0/sB", "lvs0/sA"]);
    let out = fails(&["bdev_lvol_set_parent", "lvs0/sA", "lvs0/sB"]);
    assert!(
        out.contains("-32602") && out.contains("Invalid argument"),
        "{out}"
    );
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    let sb = lvol(&lvols, "sB");
    assert_eq!(sb["parent"], "sA", "{sb}");
    assert_eq!(sb["is_esnap_clone"], false, "{sb}");
    let mut kids: Vec<&str> = lvol(&lvols, "sA")["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    kids.sort();
    assert_eq!(kids, ["sB", "vdA"], "{lvols}");
    let mut want_sb = sa.clone();
    want_sb[6 * M..8 * M + 512 * K].fill(0xb1);
    want_sb[2 * M + 1024..2 * M + 1536].fill(0xb2);
    want_sb[3 * M..3 * M + 512].fill(0xb5);
    let mut want_vdb = want_sb.clone();
    want_vdb[7 * M..8 * M].fill(0xb3);
    want_vdb[12 * M + 512..12 * M + 1024].fill(0xb4);
    let mut want_cb = want_sb.clone();
    want_cb[10 * M..11 * M].fill(0xc1);
    want_cb[7 * M..8 * M].fill(0);
    want_cb[8 * M + 8 * K..8 * M + 8 * K + 512].fill(0xc3);
    want_cb[13 * M..13 * M + 4 * K].copy_from_slice(&golden[13 * M..13 * M + 4 * K]);
    want_cb[13 * M..13 * M + 512].fill(0xc2);
    for (bdev, want) in [
        ("lvs0/sB", &want_sb[..]),
        ("lvs0/vdB", &want_vdb[..]),
        ("lvs0/cB", &want_cb[..]),
        ("lvs0/sA", &sa[..]),
    ] {
        assert_same(
            &read_all(&srv, port, bdev, work.path()),
            want,
            &format!("{bdev} after set_parent"),
        );
    }
    srv.stop();
    check_clean(&dir.path().join("pool.img"));
}

/// Re-parenting a snapshot whose lvol was cloned while read-only and made writable
/// since (`tessera_set_read_only`): the lvol discarded two segments over the snapshot's
/// data, so the switch gives it a zeroed segment of its own in each (what it read
/// there), and its clone, which read zeros there too, reads the same segments (one
/// under a write of its own). The lvol's writes after the switch must copy on write:
/// the clone still reads zeros, before and after a restart, for
/// `bdev_lvol_set_parent_bdev` and for `bdev_lvol_set_parent`. (The simulator's seed
/// 114 191 found the lvol writing such a segment in place.)
#[test]
fn re_parenting_a_snapshot_keeps_a_clone_of_its_lvol_apart_from_the_lvols_later_writes() {
    let tool = spdk_rpc();
    let (dir, port, golden, cfg) = golden_target();
    let work = tempfile::tempdir().unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    rpc(&["bdev_lvol_create_lvstore", "data", "lvs0", "-c", "1048576"]);
    // The new parent of the second lineage: 0x5a everywhere.
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vz", "16"]);
    write_lvol(&srv, port, "lvs0/vz", &["write -P 0x5a 0 16M"]);
    rpc(&["bdev_lvol_snapshot", "lvs0/vz", "sz"]);

    let mut wants: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, below) in [(1, golden.clone()), (2, vec![0x5au8; GOLDEN])] {
        let (vd, sn, c) = (format!("vd{i}"), format!("s{i}"), format!("c{i}"));
        let lv = |n: &str| format!("lvs0/{n}");
        rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", &vd, "16"]);
        write_lvol(&srv, port, &lv(&vd), &["write -P 0xa1 0 2M"]);
        rpc(&["bdev_lvol_snapshot", &lv(&vd), &sn]);
        write_lvol(&srv, port, &lv(&vd), &["discard 0 2M"]);
        srv.call(
            "tessera_set_read_only",
            json!({"name": lv(&vd), "read_only": true}),
        );
        rpc(&["bdev_lvol_clone", &lv(&vd), &c]);
        srv.call(
            "tessera_set_read_only",
            json!({"name": lv(&vd), "read_only": false}),
        );
        write_lvol(&srv, port, &lv(&c), &["write -P 0xc1 1M 512"]);
        if i == 1 {
            rpc(&["bdev_lvol_set_parent_bdev", &lv(&sn), "golden"]);
        } else {
            rpc(&["bdev_lvol_set_parent", &lv(&sn), "lvs0/sz"]);
        }
        // The lvol writes both segments it shares with the clone, in part.
        write_lvol(
            &srv,
            port,
            &lv(&vd),
            &["write -P 0xb1 0 512", "write -P 0xb2 1052672 512"],
        );
        let mut want_s = below.clone();
        want_s[..2 * M].fill(0xa1);
        let mut want_vd = below.clone();
        want_vd[..2 * M].fill(0);
        let mut want_c = want_vd.clone();
        want_vd[..512].fill(0xb1);
        want_vd[M + 4 * K..M + 4 * K + 512].fill(0xb2);
        want_c[M..M + 512].fill(0xc1);
        wants.extend([(lv(&sn), want_s), (lv(&vd), want_vd), (lv(&c), want_c)]);
    }
    let check_all = |srv: &Serve, when: &str| {
        for (bdev, want) in &wants {
            assert_same(
                &read_all(srv, port, bdev, work.path()),
                want,
                &format!("{bdev} {when}"),
            );
        }
    };
    check_all(&srv, "after the lvol's writes");
    srv.stop();
    check_clean(&dir.path().join("pool.img"));
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    check_all(&srv, "restarted");
    srv.stop();
}

/// The lvols of `lvs0` with a running split or decouple (`tessera_split_progress`).
fn splitting(srv: &Serve) -> Vec<String> {
    let p = srv.call("tessera_split_progress", Value::Null);
    p.as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap().to_string())
        .collect()
}

/// Inflate, decouple and shrink of lvols that read through to an external bdev: SPDK's
/// `bdev_lvol_inflate` and `bdev_lvol_decouple_parent` (which on an esnap clone inflates
/// too) copy in what the golden image shows, the lvol stops reading it (not an esnap
/// clone any more, readable with the golden bdev gone); a split in the background
/// under a bandwidth cap takes writes meanwhile (whole and partial granules,
/// write-zeroes) and ends with them; the golden bdev is let go once nothing reads it.
/// A shrink drops what the lvol wrote past the new end, and a grow reads the golden
/// image there again, as SPDK's released clusters do. Every lvol compared byte for byte
/// with what it must hold, and again after a restart without the golden bdev.
#[test]
fn inflate_decouple_and_shrink_of_external_snapshot_clones() {
    let tool = spdk_rpc();
    let (dir, port, golden, cfg) = golden_target();
    let golden_sum = sha256(&dir.path().join("golden.img"));
    let work = tempfile::tempdir().unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    let fails = |args: &[&str]| run_fails(Command::new(&tool).arg("-s").arg(&s).args(args));
    rpc(&["bdev_lvol_create_lvstore", "data", "lvs0", "-c", "1048576"]);

    // c1: written (a whole granule, part of one, a whole segment), snapshotted as s1,
    // written again: a clone of s1, which reads the golden image below.
    rpc(&["bdev_lvol_clone_bdev", "golden", "lvs0", "c1"]);
    write_lvol(
        &srv,
        port,
        "lvs0/c1",
        &[
            "write -P 0x11 0 4k",
            "write -P 0x12 3146240 512",
            "write -P 0x13 5M 1M",
        ],
    );
    rpc(&["bdev_lvol_snapshot", "lvs0/c1", "s1"]);
    write_lvol(&srv, port, "lvs0/c1", &["write -P 0x14 7M 8k"]);
    let mut want_s1 = golden.clone();
    want_s1[..4 * K].fill(0x11);
    want_s1[3 * M + 512..3 * M + 1024].fill(0x12);
    want_s1[5 * M..6 * M].fill(0x13);
    let mut want_c1 = want_s1.clone();
    want_c1[7 * M..7 * M + 8 * K].fill(0x14);
    // c2: grown past the golden image's end (zeros there), written on both sides.
    rpc(&["bdev_lvol_clone_bdev", "golden", "lvs0", "c2"]);
    rpc(&["bdev_lvol_resize", "lvs0/c2", "20"]);
    write_lvol(
        &srv,
        port,
        "lvs0/c2",
        &["write -P 0x21 17M 4k", "write -P 0x22 2098176 1k"],
    );
    let mut want_c2 = golden.clone();
    want_c2.resize(20 * M, 0);
    want_c2[17 * M..17 * M + 4 * K].fill(0x21);
    want_c2[2 * M + 1024..2 * M + 2048].fill(0x22);
    // c3: written in part of a granule.
    rpc(&["bdev_lvol_clone_bdev", "golden", "lvs0", "c3"]);
    write_lvol(&srv, port, "lvs0/c3", &["write -P 0x31 9438208 1k"]);
    let mut want_c3 = golden.clone();
    want_c3[9 * M + K..9 * M + 2 * K].fill(0x31);

    // Inflate (SPDK's client): c1 holds everything itself, reads nothing of the golden
    // image or of s1.
    rpc(&["bdev_lvol_inflate", "lvs0/c1"]);
    // Decouple of an esnap clone inflates it, as SPDK's does (no parent in the lvstore
    // to point it at).
    rpc(&["bdev_lvol_decouple_parent", "lvs0/c3"]);
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    for l in ["c1", "c3"] {
        let v = lvol(&lvols, l);
        assert_eq!(v["is_esnap_clone"], false, "{l}: {v}");
        assert_eq!(v["is_clone"], false, "{l}: {v}");
        assert_eq!(v["external_snapshot_name"], Value::Null, "{l}: {v}");
        assert_eq!(v["is_degraded"], false, "{l}: {v}");
    }
    assert_eq!(lvol(&lvols, "s1")["is_esnap_clone"], true, "{lvols}");
    // c1 is no longer s1's clone.
    assert_eq!(lvol(&lvols, "s1")["children"], json!([]), "{lvols}");
    // Inflating a thin lvol of the pool's own (no parent) is refused, as before.
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "plain", "4"]);
    let out = fails(&["bdev_lvol_inflate", "lvs0/plain"]);
    assert!(out.contains("-22") && out.contains("no parent"), "{out}");

    // c2 in the background, slowed down by the jobs' bandwidth cap, written meanwhile.
    srv.call(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": 4 * M}),
    );
    srv.call("tessera_split_start", json!({"name": "lvs0/c2"}));
    write_lvol(
        &srv,
        port,
        "lvs0/c2",
        &[
            "write -P 0x23 1049088 1k",
            "write -P 0x24 15M 4k",
            "write -P 0x25 13M 1M",
            "write -z 11M 4k",
            "write -z 12M 1536",
        ],
    );
    assert_eq!(splitting(&srv), ["c2"], "the split ended before the writes");
    want_c2[M + 512..M + 1536].fill(0x23);
    want_c2[15 * M..15 * M + 4 * K].fill(0x24);
    want_c2[13 * M..14 * M].fill(0x25);
    want_c2[11 * M..11 * M + 4 * K].fill(0);
    want_c2[12 * M..12 * M + 1536].fill(0);
    let t0 = std::time::Instant::now();
    while !splitting(&srv).is_empty() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "the split of c2 did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    srv.call(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": 0}),
    );
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    assert_eq!(lvol(&lvols, "c2")["is_esnap_clone"], false, "{lvols}");
    for (bdev, want) in [
        ("lvs0/c1", &want_c1),
        ("lvs0/c2", &want_c2),
        ("lvs0/c3", &want_c3),
        ("lvs0/s1", &want_s1),
    ] {
        assert_same(
            &read_all(&srv, port, bdev, work.path()),
            want,
            &format!("{bdev} after its split"),
        );
    }

    // Shrink: c4 wrote at 4 MiB, 10 MiB (two granules) and 12 MiB; shrunk into its
    // segment at 10 MiB, then grown back.
    rpc(&["bdev_lvol_clone_bdev", "golden", "lvs0", "c4"]);
    write_lvol(
        &srv,
        port,
        "lvs0/c4",
        &[
            "write -P 0x41 10M 8k",
            "write -P 0x42 12M 4k",
            "write -P 0x43 4M 4k",
        ],
    );
    srv.call(
        "bdev_lvol_resize",
        json!({"name": "lvs0/c4", "size": 10 * M + 4 * K}),
    );
    let mut want_c4 = golden[..10 * M + 4 * K].to_vec();
    want_c4[4 * M..4 * M + 4 * K].fill(0x43);
    want_c4[10 * M..].fill(0x41);
    assert_same(
        &read_all(&srv, port, "lvs0/c4", work.path()),
        &want_c4,
        "c4 shrunk",
    );
    rpc(&["bdev_lvol_resize", "lvs0/c4", "16"]);
    want_c4.extend_from_slice(&golden[10 * M + 4 * K..]);
    assert_same(
        &read_all(&srv, port, "lvs0/c4", work.path()),
        &want_c4,
        "c4 shrunk and grown",
    );
    rpc(&["bdev_lvol_delete", "lvs0/c4"]);

    // s1 (the esnap clone's snapshot) still reads the golden image: it stays claimed.
    let e = srv.call_err("bdev_uring_delete", json!({"name": "golden"}));
    assert!(e.message.contains("external snapshot"), "{e}");
    // Nothing reads it once s1 is gone: it is let go.
    rpc(&["bdev_lvol_delete", "lvs0/s1"]);
    srv.call("bdev_uring_delete", json!({"name": "golden"}));
    srv.stop();
    assert_eq!(
        sha256(&dir.path().join("golden.img")),
        golden_sum,
        "golden file changed"
    );

    // Restarted without the golden bdev: nothing is degraded, the contents are whole.
    let cfg2 = config(dir.path(), port, false);
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg2);
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    for (l, want) in [("c1", &want_c1), ("c2", &want_c2), ("c3", &want_c3)] {
        assert_eq!(lvol(&lvols, l)["is_degraded"], false, "{l}: {lvols}");
        assert_eq!(lvol(&lvols, l)["is_esnap_clone"], false, "{l}: {lvols}");
        assert_same(
            &read_all(&srv, port, &format!("lvs0/{l}"), work.path()),
            want,
            &format!("{l} restarted without the golden image"),
        );
    }
    srv.stop();
    check_clean(&dir.path().join("pool.img"));
}

/// `save_config` (SPDK's JSON, through spdk-rpc) and `tessera_save_config` (YAML) write
/// lvols that read through to an external bdev, so that a pool on a malloc bdev
/// restored from either gets them back: `e1` (an esnap clone grown to 20 MiB, then
/// snapshotted as `es1`, which `ec1` clones), `e2` (an esnap clone as made) and `t1` (a
/// thin lvol of 8 MiB given the golden image as its parent). Each comes back with its
/// lineage and size and reads the golden image (zeros past its end); the YAML keeps the
/// UUIDs of all but the clone `ec1` (a clone entry has none).
#[test]
fn save_config_brings_back_external_snapshot_clones_on_a_malloc_pool() {
    let tool = spdk_rpc();
    let (dir, port, golden, cfg) = golden_target();
    let work = tempfile::tempdir().unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    rpc(&["bdev_malloc_create", "-b", "m0", "64", "4096"]);
    rpc(&["bdev_lvol_create_lvstore", "m0", "lvs1", "-c", "1048576"]);
    rpc(&["bdev_lvol_clone_bdev", "golden", "lvs1", "e1"]);
    rpc(&["bdev_lvol_resize", "lvs1/e1", "20"]);
    rpc(&["bdev_lvol_snapshot", "lvs1/e1", "es1"]);
    rpc(&["bdev_lvol_clone", "lvs1/es1", "ec1"]);
    rpc(&["bdev_lvol_clone_bdev", "golden", "lvs1", "e2"]);
    rpc(&["bdev_lvol_create", "-l", "lvs1", "-t", "t1", "8"]);
    rpc(&["bdev_lvol_set_parent_bdev", "lvs1/t1", "golden"]);
    let before = srv.call("bdev_lvol_get_lvols", Value::Null);

    let json_path = dir.path().join("saved.json");
    std::fs::write(&json_path, rpc(&["save_config"])).unwrap();
    let yaml = srv.call("tessera_save_config", Value::Null);
    let yaml_path = dir.path().join("saved.yaml");
    std::fs::write(&yaml_path, yaml.as_str().unwrap()).unwrap();
    let saved = std::fs::read_to_string(&json_path).unwrap();
    assert_eq!(
        saved.matches("\"bdev_lvol_clone_bdev\"").count(),
        3,
        "{saved}"
    );
    assert!(
        yaml.as_str().unwrap().contains("external_snapshot: golden"),
        "{yaml}"
    );
    let log = srv.stop();
    assert!(!log.contains("not written to the configuration"), "{log}");

    let mut grown = golden.clone();
    grown.resize(20 * M, 0);
    for (path, keeps_uuids) in [(&json_path, false), (&yaml_path, true)] {
        let srv = Serve::start_file(tempfile::tempdir().unwrap(), path);
        let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
        let what = path.display().to_string();
        for (l, esnap, clone, mib) in [
            ("e1", false, true, 20),
            ("es1", true, false, 20),
            ("ec1", false, true, 20),
            ("e2", true, false, 16),
            ("t1", true, false, 8),
        ] {
            let v = lvol(&lvols, l);
            assert_eq!(v["is_esnap_clone"], esnap, "{what} {l}: {v}");
            assert_eq!(v["is_clone"], clone, "{what} {l}: {v}");
            assert_eq!(v["num_blocks"], mib * 256, "{what} {l}: {v}");
            assert_eq!(v["lvs"]["name"], "lvs1", "{what} {l}: {v}");
            if esnap {
                assert_eq!(v["external_snapshot_name"], GOLDEN_UUID, "{what} {l}: {v}");
            }
            // (A clone's entry has no UUID, of any clone.)
            if keeps_uuids && l != "ec1" {
                assert_eq!(v["uuid"], lvol(&before, l)["uuid"], "{what} {l}: {v}");
            }
        }
        assert_eq!(lvol(&lvols, "e1")["parent"], "es1", "{what}: {lvols}");
        assert_eq!(lvol(&lvols, "ec1")["parent"], "es1", "{what}: {lvols}");
        for (bdev, want) in [
            ("lvs1/e1", &grown[..]),
            ("lvs1/ec1", &grown[..]),
            ("lvs1/e2", &golden[..]),
            ("lvs1/t1", &golden[..8 * M]),
        ] {
            assert_same(
                &read_all(&srv, port, bdev, work.path()),
                want,
                &format!("{bdev} restored from {what}"),
            );
        }
        srv.stop();
    }
}

/// `save_config` (SPDK's JSON) and `tessera_save_config` (YAML) with external
/// snapshots that are lvols of another lvstore, both lvstores on malloc bdevs: in
/// `src`, `a0` (the golden image's esnap clone, grown to 20 MiB), its snapshot `a0s`,
/// and `r0` (a read-only thin lvol given the golden image by
/// `bdev_lvol_set_parent_bdev`); in `dst` — which sorts first — `b0`, an esnap clone of
/// `src/a0s`, and `b1`, one of `src/r0`. The saved files create `src`'s lvols before the
/// clones that read them; each restored target has every lvol with its lineage
/// (`b0`'s and `b1`'s external snapshots the restored `a0s`' and `r0`'s UUIDs) and
/// reads byte for byte what it read before.
#[test]
fn save_config_orders_external_snapshots_that_are_lvols_of_another_lvstore() {
    let tool = spdk_rpc();
    let (dir, port, golden, cfg) = golden_target();
    let work = tempfile::tempdir().unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    rpc(&["bdev_malloc_create", "-b", "ms", "64", "4096"]);
    rpc(&["bdev_malloc_create", "-b", "md", "64", "4096"]);
    rpc(&["bdev_lvol_create_lvstore", "ms", "src", "-c", "1048576"]);
    rpc(&["bdev_lvol_create_lvstore", "md", "dst", "-c", "1048576"]);
    rpc(&["bdev_lvol_clone_bdev", "golden", "src", "a0"]);
    rpc(&["bdev_lvol_resize", "src/a0", "20"]);
    rpc(&["bdev_lvol_snapshot", "src/a0", "a0s"]);
    rpc(&["bdev_lvol_create", "-l", "src", "-t", "r0", "8"]);
    rpc(&["bdev_lvol_set_parent_bdev", "src/r0", "golden"]);
    rpc(&["bdev_lvol_set_read_only", "src/r0"]);
    rpc(&["bdev_lvol_clone_bdev", "src/a0s", "dst", "b0"]);
    rpc(&["bdev_lvol_clone_bdev", "src/r0", "dst", "b1"]);
    let mut grown = golden.clone();
    grown.resize(20 * M, 0);
    let want: [(&str, &[u8]); 5] = [
        ("src/a0", &grown),
        ("src/a0s", &grown),
        ("src/r0", &golden[..8 * M]),
        ("dst/b0", &grown),
        ("dst/b1", &golden[..8 * M]),
    ];
    for (bdev, want) in want {
        assert_same(
            &read_all(&srv, port, bdev, work.path()),
            want,
            &format!("{bdev} before saving"),
        );
    }

    let json_path = dir.path().join("saved.json");
    std::fs::write(&json_path, rpc(&["save_config"])).unwrap();
    let yaml = srv.call("tessera_save_config", Value::Null);
    let yaml_path = dir.path().join("saved.yaml");
    std::fs::write(&yaml_path, yaml.as_str().unwrap()).unwrap();
    // The external snapshots by their aliases (a restored lvol has a new UUID where
    // the file keeps none), each made before the clone that reads it.
    let saved = std::fs::read_to_string(&json_path).unwrap();
    let at = |needle: &str| {
        saved
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle} in {saved}"))
    };
    assert!(
        at("\"snapshot_name\": \"a0s\"") < at("\"bdev\": \"src/a0s\""),
        "{saved}"
    );
    assert!(
        at("\"clone_name\": \"r0\"") < at("\"bdev\": \"src/r0\""),
        "{saved}"
    );
    let y = yaml.as_str().unwrap();
    assert!(y.contains("external_snapshot: src/a0s"), "{y}");
    assert!(y.contains("external_snapshot: src/r0"), "{y}");
    srv.stop();

    for path in [&json_path, &yaml_path] {
        let what = path.display().to_string();
        let srv = Serve::start_file(tempfile::tempdir().unwrap(), path);
        let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
        let uuid_of = |n: &str| lvol(&lvols, n)["uuid"].clone();
        for (l, ext) in [("b0", "a0s"), ("b1", "r0")] {
            let v = lvol(&lvols, l);
            assert_eq!(v["is_esnap_clone"], true, "{what} {l}: {v}");
            assert_eq!(v["is_degraded"], false, "{what} {l}: {v}");
            assert_eq!(v["external_snapshot_name"], uuid_of(ext), "{what} {l}: {v}");
        }
        assert_eq!(lvol(&lvols, "a0")["parent"], "a0s", "{what}: {lvols}");
        assert_eq!(lvol(&lvols, "r0")["read_only"], true, "{what}: {lvols}");
        for (bdev, want) in want {
            assert_same(
                &read_all(&srv, port, bdev, work.path()),
                want,
                &format!("{bdev} restored from {what}"),
            );
        }
        srv.stop();
    }
}

/// `save_config` (SPDK's JSON) keeps every lvol's UUID (tessera's `lvol_uuid` parameter
/// of `bdev_lvol_create` and `bdev_lvol_clone_bdev`), so that an external snapshot's
/// clone in an lvstore on disk finds, after a restore, the lvols of an lvstore on a
/// malloc bdev that it reads: made again, they would otherwise have new UUIDs, and the
/// clones, which name their external snapshots by UUID, would stay degraded. `src` (on
/// malloc) holds `r0`, a thin lvol written and made read-only, and `a0`, the golden
/// image's esnap clone made read-only; `dst` (on a file) holds `b0` and `b1`, esnap
/// clones of `src/a0` and `src/r0` (`b1` written in part). Restored from the saved
/// JSON, `r0` (empty: it was on malloc) and `a0` have their UUIDs, `b0` and `b1` are not
/// degraded and read through them (`b1` its own writes over the empty `r0`). A
/// `lvol_uuid` that is not a UUID, or that a bdev already has, is refused.
#[test]
fn save_config_keeps_lvol_uuids_for_esnap_clones_in_an_lvstore_on_disk() {
    let tool = spdk_rpc();
    let (dir, port, golden, cfg) = golden_target();
    let work = tempfile::tempdir().unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    rpc(&["bdev_malloc_create", "-b", "ms", "64", "4096"]);
    rpc(&["bdev_lvol_create_lvstore", "ms", "src", "-c", "1048576"]);
    rpc(&["bdev_lvol_create_lvstore", "data", "dst", "-c", "1048576"]);
    rpc(&["bdev_lvol_create", "-l", "src", "-t", "r0", "8"]);
    write_lvol(
        &srv,
        port,
        "src/r0",
        &["write -P 0x5a 0 1M", "write -P 0xc3 3M 64k"],
    );
    rpc(&["bdev_lvol_set_read_only", "src/r0"]);
    rpc(&["bdev_lvol_clone_bdev", "golden", "src", "a0"]);
    rpc(&["bdev_lvol_set_read_only", "src/a0"]);
    rpc(&["bdev_lvol_clone_bdev", "src/a0", "dst", "b0"]);
    rpc(&["bdev_lvol_clone_bdev", "src/r0", "dst", "b1"]);
    write_lvol(&srv, port, "dst/b1", &["write -P 0x77 5M 1M"]);
    let mut r0 = vec![0u8; 8 * M];
    r0[..M].fill(0x5a);
    r0[3 * M..3 * M + 64 * K].fill(0xc3);
    let mut b1 = r0.clone();
    b1[5 * M..6 * M].fill(0x77);
    let want: [(&str, &[u8]); 4] = [
        ("src/r0", &r0),
        ("src/a0", &golden),
        ("dst/b0", &golden),
        ("dst/b1", &b1),
    ];
    for (bdev, want) in want {
        assert_same(
            &read_all(&srv, port, bdev, work.path()),
            want,
            &format!("{bdev} before saving"),
        );
    }
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    let uuids: Vec<(&str, Value)> = ["r0", "a0"]
        .into_iter()
        .map(|l| (l, lvol(&lvols, l)["uuid"].clone()))
        .collect();
    let json_path = dir.path().join("saved.json");
    let saved = rpc(&["save_config"]);
    std::fs::write(&json_path, &saved).unwrap();
    for (l, u) in &uuids {
        let u = u.as_str().unwrap();
        assert!(
            saved.contains(&format!("\"lvol_uuid\": \"{u}\"")),
            "{l}: {saved}"
        );
    }
    // Refused: not a UUID; a UUID a bdev has.
    let e = srv.call_err(
        "bdev_lvol_create",
        json!({"lvs_name": "src", "lvol_name": "x", "size_in_mib": 4, "lvol_uuid": "nope"}),
    );
    assert!(e.code == -32602 && e.message.contains("lvol_uuid"), "{e:?}");
    let r0_uuid = uuids[0].1.as_str().unwrap();
    let e = srv.call_err(
        "bdev_lvol_clone_bdev",
        json!({"bdev": "golden", "lvs_name": "src", "clone_name": "x", "lvol_uuid": r0_uuid}),
    );
    assert!(e.message.contains(r0_uuid), "{e:?}");
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    assert!(
        !lvols.as_array().unwrap().iter().any(|l| l["name"] == "x"),
        "a refused lvol was made: {lvols}"
    );
    srv.stop();

    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &json_path);
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    for (l, u) in &uuids {
        assert_eq!(&lvol(&lvols, l)["uuid"], u, "{l}: {lvols}");
    }
    for (l, ext) in [("b0", "a0"), ("b1", "r0")] {
        let v = lvol(&lvols, l);
        assert_eq!(v["is_degraded"], false, "{l}: {v}");
        assert_eq!(
            v["external_snapshot_name"],
            lvol(&lvols, ext)["uuid"],
            "{l}: {v}"
        );
    }
    // `src` was on malloc: `r0` is made again empty (with its UUID), and `b1` reads
    // what it wrote itself over it.
    let zeros = vec![0u8; 8 * M];
    let mut b1 = zeros.clone();
    b1[5 * M..6 * M].fill(0x77);
    let want: [(&str, &[u8]); 4] = [
        ("src/r0", &zeros),
        ("src/a0", &golden),
        ("dst/b0", &golden),
        ("dst/b1", &b1),
    ];
    for (bdev, want) in want {
        assert_same(
            &read_all(&srv, port, bdev, work.path()),
            want,
            &format!("{bdev} restored"),
        );
    }
    srv.stop();
}

/// A split that ends in the background (`tessera_split_start`) lets its external bdev
/// go by itself: with no RPC after it that adjusts claims (`bdev_lvol_get_lvols` and
/// `bdev_get_bdevs` only look), the golden bdev is shown unclaimed within 2 s of the
/// lvol showing it no longer reads it, and can be deleted; the split lvol reads as
/// before, and again after a restart without the golden bdev.
#[test]
fn a_background_split_lets_its_external_bdev_go_when_it_ends() {
    let tool = spdk_rpc();
    let (dir, port, golden, cfg) = golden_target();
    let work = tempfile::tempdir().unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    rpc(&["bdev_lvol_create_lvstore", "data", "lvs0", "-c", "1048576"]);
    rpc(&["bdev_lvol_clone_bdev", "golden", "lvs0", "c1"]);
    write_lvol(&srv, port, "lvs0/c1", &["write -P 0x51 2098176 1k"]);
    let mut want = golden.clone();
    want[2 * M + 1024..2 * M + 2048].fill(0x51);
    let claimed =
        |srv: &Serve| srv.call("bdev_get_bdevs", json!({"name": "golden"}))[0]["claimed"].clone();
    assert_eq!(claimed(&srv), true);

    // Slow enough to be seen running: 16 MiB at 8 MiB/s.
    srv.call(
        "tessera_lvol_set_copy_limit",
        json!({"max_bytes_per_sec": 8 * M}),
    );
    srv.call("tessera_split_start", json!({"name": "lvs0/c1"}));
    let reads_golden = |srv: &Serve| {
        let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
        lvol(&lvols, "c1")["external_snapshot_name"] == GOLDEN_UUID
    };
    assert!(reads_golden(&srv), "the split ended at once");
    let t0 = std::time::Instant::now();
    while reads_golden(&srv) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "the split of c1 did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let t1 = std::time::Instant::now();
    while claimed(&srv) != false {
        assert!(
            t1.elapsed() < std::time::Duration::from_secs(2),
            "golden still claimed 2 s after the split ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    srv.call("bdev_uring_delete", json!({"name": "golden"}));
    assert_same(
        &read_all(&srv, port, "lvs0/c1", work.path()),
        &want,
        "c1 split",
    );
    srv.stop();
    let cfg2 = config(dir.path(), port, false);
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg2);
    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    assert_eq!(lvol(&lvols, "c1")["is_degraded"], false, "{lvols}");
    assert_same(
        &read_all(&srv, port, "lvs0/c1", work.path()),
        &want,
        "c1 split, restarted without the golden image",
    );
    srv.stop();
}
