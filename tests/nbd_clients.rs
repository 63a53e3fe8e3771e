//! The NBD server driven by real clients written by others: qemu-img, qemu-io, nbdinfo,
//! nbdcopy, fio's nbd engine, and ext4 over nbdfuse + a loop device. qemu (10.x) speaks
//! extended headers, libnbd (nbdinfo, nbdcopy, nbdfuse, fio) structured replies, so both
//! reply formats are exercised. A missing tool fails the test with the package to install
//! (scripts/test.sh installs them all): nothing skips.

mod nbd_support;
mod process_support;

use nbd_support::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tessera::frontend::nbd::NbdExport;

const T: Duration = Duration::from_secs(180);

/// Writes a 32 MiB image: patterned data with a few all-zero stretches.
fn make_image(path: &Path, mib: usize) -> Vec<u8> {
    let mut data = pattern(42, mib << 20);
    for hole in [(1usize << 20, 3usize << 20), (20 << 20, 2 << 20)] {
        if hole.0 + hole.1 <= data.len() {
            data[hole.0..hole.0 + hole.1].fill(0);
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn qemu_io_writes_and_reads_patterns() {
    need("qemu-io");
    let srv = TestServer::start(vec![NbdExport::new("disk", malloc("M0", 64))]);
    let uri = srv.uri("disk");
    let out = run_ok(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 64k",
            "-c",
            "write -P 0xcd 1M 128k",
            "-c",
            "write -z 2M 1M",
            "-c",
            "discard 4M 1M",
            "-c",
            "flush",
            "-c",
            "read -P 0xab 0 64k",
            "-c",
            "read -P 0xcd 1M 128k",
            "-c",
            "read -P 0 64k 64k",
            "-c",
            "read -P 0 2M 1M",
            &uri,
        ]),
        T,
    );
    assert!(!out.contains("failed"), "{out}");
    assert_eq!(out.matches("read ").count(), 4, "{out}");
    // A pattern check that must fail proves the checks are real.
    let out = run(
        Command::new("qemu-io").args(["-f", "raw", "-c", "read -P 0x11 0 64k", &uri]),
        T,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Pattern verification failed"), "{text}");
    // A fresh connection (another core) sees the data.
    run_ok(
        Command::new("qemu-io").args(["-f", "raw", "-r", "-c", "read -P 0xcd 1M 128k", &uri]),
        T,
    );
}

#[test]
fn qemu_img_info_convert_compare() {
    need_all(&["qemu-img", "qemu-io"]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    make_image(&src, 32);
    let srv = TestServer::start(vec![NbdExport::new("disk", malloc("M0", 32))]);
    let uri = srv.uri("disk");
    let info = run_ok(
        Command::new("qemu-img").args(["info", "-f", "raw", &uri]),
        T,
    );
    assert!(
        info.contains("virtual size: 32 MiB (33554432 bytes)"),
        "{info}"
    );
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
        T,
    );
    let same = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&uri),
        T,
    );
    assert!(same.contains("Images are identical"), "{same}");
    let back = dir.path().join("back.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&uri)
            .arg(&back),
        T,
    );
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap());
    // Change one byte on the export: compare must notice.
    run_ok(
        Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x5a 4096 4096", &uri]),
        T,
    );
    let out = run(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&uri),
        T,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn nbdinfo_lists_exports_with_block_sizes() {
    need("nbdinfo");
    let srv = TestServer::start(vec![
        NbdExport::new("disk", malloc("M0", 16)).with_description("scratch disk"),
        NbdExport::new("gold", ThinBdev::create("T0", 8)).with_read_only(true),
    ]);
    let base = format!("nbd://{}", srv.addr);
    let json = run_ok(Command::new("nbdinfo").args(["--list", "--json", &base]), T);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let exports = v["exports"].as_array().expect("exports");
    let by_name: BTreeMap<&str, &serde_json::Value> = exports
        .iter()
        .map(|e| (e["export-name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(by_name.len(), 2, "{json}");
    let disk = by_name["disk"];
    assert_eq!(disk["description"], "scratch disk", "{json}");
    assert_eq!(disk["export-size"], 16 << 20);
    assert_eq!(disk["block_size_minimum"], 4096);
    assert_eq!(disk["block_size_preferred"], 4096);
    assert_eq!(disk["block_size_maximum"], 32 << 20);
    assert_eq!(disk["is_read_only"], false);
    assert_eq!(disk["can_multi_conn"], true);
    assert_eq!(disk["can_flush"], true);
    assert_eq!(disk["can_fua"], true);
    assert_eq!(disk["can_trim"], true);
    assert_eq!(disk["can_zero"], true);
    assert_eq!(by_name["gold"]["is_read_only"], true);
    assert_eq!(by_name["gold"]["export-size"], 8 << 20);
    let contexts = disk["contexts"].as_array().unwrap();
    assert!(contexts.iter().any(|c| c == "base:allocation"), "{json}");
    assert_eq!(v["structured"], true);

    // One export, by URI.
    let one = run_ok(
        Command::new("nbdinfo").args(["--json", &srv.uri("disk")]),
        T,
    );
    let v: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(v["exports"][0]["export-size"], 16 << 20, "{one}");
    // An unknown export is refused with the server's message.
    let out = run(Command::new("nbdinfo").arg(srv.uri("nope")), T);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn nbdinfo_map_shows_holes_of_a_thin_disk() {
    need_all(&["nbdinfo", "qemu-io", "qemu-img"]);
    let srv = TestServer::start(vec![NbdExport::new("thin", ThinBdev::create("T0", 16))]);
    let uri = srv.uri("thin");
    run_ok(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            "write -P 0x11 0 1M",
            "-c",
            "write -P 0x22 8M 512k",
            "-c",
            "write -z 12M 1M",
            "-c",
            "write -P 0x33 14M 1M",
            "-c",
            "write -z -u 14M 1M",
            &uri,
        ]),
        T,
    );
    let map = run_ok(Command::new("nbdinfo").args(["--map", &uri]), T);
    let rows: Vec<(u64, u64, u32)> = map
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    const M: u64 = 1 << 20;
    // `write -z` sends NO_HOLE: the blocks stay allocated and read as zeros (type 2);
    // `write -z -u` lets the server unmap (the bdev reads unmapped blocks as zeros), so
    // 14M..15M is a hole again.
    assert_eq!(
        rows,
        vec![
            (0, M, 0),
            (M, 7 * M, 3),
            (8 * M, M / 2, 0),
            (8 * M + M / 2, 4 * M - M / 2, 3),
            (12 * M, M, 2),
            (13 * M, 3 * M, 3),
        ],
        "{map}"
    );
    // qemu's view (extended headers, 64-bit status chunks) agrees.
    {
        let json = run_ok(
            Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &uri]),
            T,
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let data: Vec<(u64, u64, bool)> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["data"] == true)
            .map(|e| {
                (
                    e["start"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    e["zero"] == true,
                )
            })
            .collect();
        // The allocated zeros count as data that reads as zeros.
        assert_eq!(
            data,
            vec![(0, M, false), (8 * M, M / 2, false), (12 * M, M, true)],
            "{json}"
        );
    }
}

#[test]
fn nbdcopy_round_trip() {
    need("nbdcopy");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let data = make_image(&src, 32);
    let srv = TestServer::start(vec![NbdExport::new("disk", ThinBdev::create("T0", 32))]);
    let uri = srv.uri("disk");
    // nbdcopy opens several connections (the export allows multi-conn): they land on
    // both cores.
    run_ok(Command::new("nbdcopy").arg(&src).arg(&uri), T);
    let back = dir.path().join("back.img");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&back), T);
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "round trip changed the data");
    let stats = srv.server().stats();
    assert!(stats.writes > 0 && stats.reads > 0, "{stats:?}");
}

fn fio(srv: &TestServer, export: &str, extra: &[&str]) -> String {
    let uri = srv.uri(export);
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=nbd",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--bs=4k",
        "--iodepth=16",
        "--output-format=json",
    ])
    .args(extra);
    run_ok(&mut cmd, T)
}

fn fio_errors(out: &str) -> (u64, u64, u64) {
    // fio prints "connected to NBD server" lines before the JSON.
    let json = &out[out.find('{').unwrap_or(0)..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let mut errs = 0;
    let (mut r, mut w) = (0, 0);
    for j in v["jobs"].as_array().unwrap() {
        errs += j["error"].as_u64().unwrap();
        r += j["read"]["io_bytes"].as_u64().unwrap();
        w += j["write"]["io_bytes"].as_u64().unwrap();
    }
    (errs, r, w)
}

#[test]
fn fio_randwrite_verify_and_randrw() {
    need("fio");
    let srv = TestServer::start(vec![NbdExport::new("disk", malloc("M0", 64))]);
    // Two jobs, two connections, disjoint halves: write everything, then verify it.
    let json = fio(
        &srv,
        "disk",
        &[
            "--rw=randwrite",
            "--size=16M",
            "--numjobs=2",
            "--offset_increment=32M",
            "--verify=crc32c",
            "--verify_fatal=1",
        ],
    );
    let (errs, read, written) = fio_errors(&json);
    assert_eq!(errs, 0, "{json}");
    assert_eq!(written, 32 << 20, "{json}");
    assert_eq!(read, 32 << 20, "verify read everything back: {json}");
    // Mixed random I/O for a moment, with verification of what is written.
    let json = fio(
        &srv,
        "disk",
        &[
            "--rw=randrw",
            "--rwmixread=50",
            "--size=32M",
            "--io_size=16M",
            "--verify=crc32c",
        ],
    );
    let (errs, read, written) = fio_errors(&json);
    assert_eq!(errs, 0, "{json}");
    assert!(read > 0 && written > 0, "{json}");
}

#[test]
fn read_only_export_refuses_writes() {
    need("qemu-io");
    let srv = TestServer::start(vec![
        NbdExport::new("ro", malloc("M0", 16)).with_read_only(true),
    ]);
    let uri = srv.uri("ro");
    // qemu sees NBD_FLAG_READ_ONLY and refuses to open the export for writing (qemu-io
    // and libnbd check the flag before sending anything, even with auto-read-only).
    let out = run(
        Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xab 0 4k", &uri]),
        T,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("Permission denied") || text.contains("read-only"),
        "{text}"
    );
    // Read-only access works.
    let out = run_ok(
        Command::new("qemu-io").args(["-f", "raw", "-r", "-c", "read -P 0 0 4k", &uri]),
        T,
    );
    assert!(out.contains("read 4096/4096"), "{out}");
    // The server itself answers EPERM on the wire (tests/nbd_wire.rs checks every
    // modifying command); reads work.
    let mut c = RawClient::connect(srv.addr, "ro", Opts::default()).unwrap();
    let r = c.write(0, &[0xab; 4096]).unwrap();
    assert_eq!(r.error, 1, "EPERM");
    let r = c.read(0, 4096).unwrap();
    assert_eq!(r.error, 0);
    assert!(r.data.iter().all(|&b| b == 0));
}

// ---------------------------------------------------------------------------------------
// ext4 on the export, through nbdfuse and a loop device.

/// Runs a teardown command when dropped (also when the test fails).
struct Teardown(Vec<String>);

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = Command::new(&self.0[0]).args(&self.0[1..]).status();
    }
}

/// Fails the test unless it runs as root with FUSE and loop devices.
fn need_root_fuse_and_loop() {
    let uid = run_ok(Command::new("id").arg("-u"), T);
    assert_eq!(
        uid.trim(),
        "0",
        "ext4 over nbdfuse and a loop device needs root (scripts/test.sh runs as root in CI)"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "ext4 over nbdfuse needs /dev/fuse (modprobe fuse; in a container, pass --device /dev/fuse)"
    );
    assert!(
        Path::new("/dev/loop-control").exists(),
        "ext4 over nbdfuse needs loop devices (modprobe loop; in a container, pass /dev/loop-control and /dev/loop*)"
    );
}

fn write_tree(root: &Path) -> BTreeMap<PathBuf, u32> {
    let mut sums = BTreeMap::new();
    for d in 0..6 {
        let dir = root.join(format!("dir{d}/sub{}", d % 3));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..8 {
            let len = [0usize, 1, 511, 4096, 10_000, 65_536, 300_001, 1 << 20][f];
            let data = pattern((d * 100 + f) as u64, len);
            let p = dir.join(format!("file{f}.bin"));
            std::fs::write(&p, &data).unwrap();
            sums.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                crc32c::crc32c(&data),
            );
        }
    }
    sums
}

fn check_tree(root: &Path, sums: &BTreeMap<PathBuf, u32>) {
    for (p, sum) in sums {
        let data = std::fs::read(root.join(p)).unwrap();
        assert_eq!(crc32c::crc32c(&data), *sum, "{} changed", p.display());
    }
}

#[test]
fn ext4_over_nbdfuse_and_loop() {
    need_all(&[
        "nbdfuse",
        "fusermount3",
        "losetup",
        "mkfs.ext4",
        "e2fsck",
        "mount",
        "umount",
    ]);
    need_root_fuse_and_loop();
    let srv = TestServer::start(vec![NbdExport::new("fs", malloc("M0", 128))]);
    let dir = tempfile::tempdir().unwrap();
    let fuse_dir = dir.path().join("fuse");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let image = fuse_dir.join("nbd");

    // Dropped in reverse order: unmount, detach the loop device, unmount FUSE, kill nbdfuse.
    let _nbdfuse = ChildGuard::spawn(Command::new("nbdfuse").arg(&image).arg(srv.uri("fs")));
    let _fuse = Teardown(vec![
        "fusermount3".into(),
        "-u".into(),
        fuse_dir.display().to_string(),
    ]);
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::metadata(&image)
            .map(|m| m.len() == 128 << 20)
            .unwrap_or(false)),
        "nbdfuse did not expose the export"
    );
    let loopdev = run_ok(
        // 4 KiB logical blocks: the loop device then only sends what the export's
        // advertised minimum block size allows (nbdfuse does not split requests).
        Command::new("losetup")
            .args(["-b", "4096", "-f", "--show"])
            .arg(&image),
        T,
    )
    .trim()
    .to_string();
    let _loop = Teardown(vec!["losetup".into(), "-d".into(), loopdev.clone()]);
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &loopdev]), T);

    let sums = {
        run_ok(Command::new("mount").arg(&loopdev).arg(&mnt), T);
        let _mounted = Teardown(vec!["umount".into(), mnt.display().to_string()]);
        write_tree(&mnt)
    };
    let fsck = run(Command::new("e2fsck").args(["-fn", &loopdev]), T);
    assert!(
        fsck.status.success(),
        "e2fsck found problems:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    {
        run_ok(Command::new("mount").arg(&loopdev).arg(&mnt), T);
        let _mounted = Teardown(vec!["umount".into(), mnt.display().to_string()]);
        check_tree(&mnt, &sums);
    }
    let stats = srv.server().stats();
    assert!(
        stats.flushes > 0,
        "ext4 flushes through to the server: {stats:?}"
    );
}
