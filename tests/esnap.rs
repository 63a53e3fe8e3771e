//! External snapshots (SPDK's esnap clones) through real parts: a golden image on a
//! uring file bdev, cloned with SPDK's `spdk-rpc bdev_lvol_clone_bdev` into an lvstore
//! on another file; the clone read whole with `nbdcopy` and written with `qemu-io`
//! through NBD (whole granules, parts of granules, a whole segment), compared byte for
//! byte with what it must hold; the golden file unchanged; a snapshot of the clone; the
//! target restarted (with the golden bdev, and without it: degraded, until it is created
//! again) and everything read again; `bdev_lvol_set_parent_bdev` on a thin lvol. Bad
//! parameters get SPDK's codes.

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
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let golden = golden_bytes();
    std::fs::write(dir.path().join("golden.img"), &golden).unwrap();
    std::fs::write(dir.path().join("odd.img"), vec![0u8; 6 * M]).unwrap();
    let golden_sum = sha256(&dir.path().join("golden.img"));
    let cfg = config(dir.path(), port, true);
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
    let out = fails(&["bdev_lvol_set_parent_bdev", "lvs0/c1", "golden"]);
    // c1 (a clone of s1) reads through to the golden image already: refused
    // (tessera does not re-parent an lvol with a parent in the lvstore).
    assert!(
        out.contains("-32602") && out.contains("File exists"),
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
