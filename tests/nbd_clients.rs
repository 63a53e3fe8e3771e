//! The NBD server driven by real clients written by others — qemu-img, qemu-io, nbdinfo,
//! nbdcopy, fio's nbd engine (also with 512-byte unaligned I/O), and ext4 over nbdfuse +
//! a loop device (buffered with 4 KiB sectors, and direct I/O with 512-byte sectors,
//! which sends requests not aligned to the disk's 4 KiB blocks) — on the thin virtual
//! disks of a real pool (over a malloc bdev, or a sparse file through the uring bdev),
//! with snapshots and clones. Each test writes through a client to a thin disk, takes a
//! snapshot, clones it, and checks with the clients that the clone shows the snapshot's
//! data, that writes to the clone (and to the origin) leave the snapshot as it was (read
//! through the snapshot's own export, which is read-only because the disk is), and that
//! block status reports what was never written as holes.
//!
//! qemu (10.x) speaks extended headers, libnbd (nbdinfo, nbdcopy, nbdfuse, fio)
//! structured replies, so both reply formats are exercised. A missing tool fails the
//! test with the package to install (scripts/test.sh installs them all): nothing skips.

mod nbd_support;
mod process_support;

use nbd_support::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tessera::frontend::nbd::NbdExport;
use tessera::reactor::block_on;

const T: Duration = Duration::from_secs(180);
const K: u64 = 1 << 10;
const M: u64 = 1 << 20;

/// Writes an image of `mib` MiB: patterned data (from `seed`) with all-zero stretches at
/// 1M..4M and 20M..22M (where the image reaches).
fn make_image(path: &Path, seed: u64, mib: usize) -> Vec<u8> {
    let mut data = pattern(seed, mib << 20);
    for hole in [(1usize << 20, 3usize << 20), (20 << 20, 2 << 20)] {
        if hole.0 + hole.1 <= data.len() {
            data[hole.0..hole.0 + hole.1].fill(0);
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Runs qemu-io's `cmds` on `uri` (read-only with `ro`), asserting that every command,
/// pattern checks included, succeeded; returns the output.
fn qemu_io(uri: &str, ro: bool, cmds: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    if ro {
        cmd.arg("-r");
    }
    for c in cmds {
        cmd.args(["-c", c]);
    }
    let out = run_ok(cmd.arg(uri), T);
    assert!(!out.contains("failed"), "qemu-io {cmds:?} on {uri}:\n{out}");
    out
}

// Block status as `nbdinfo --map` prints it (base:allocation): bit 0 hole, bit 1 zero.
const DATA: u32 = 0;
const HOLE: u32 = 3;

/// `nbdinfo --map`: (offset, length, type) rows of `base:allocation`.
fn nbd_map(uri: &str) -> Vec<(u64, u64, u32)> {
    nbd_map_of(uri, "base:allocation")
}

/// The types the rows of `map` give to `[offset, offset + len)`.
fn types_in(map: &[(u64, u64, u32)], offset: u64, len: u64) -> Vec<u32> {
    let mut t: Vec<u32> = map
        .iter()
        .filter(|&&(o, l, _)| o < offset + len && offset < o + l)
        .map(|r| r.2)
        .collect();
    t.dedup();
    t
}

/// Asserts that `map` gives `[offset, offset + len)` the one type `want`.
#[track_caller]
fn assert_range(map: &[(u64, u64, u32)], offset: u64, len: u64, want: u32) {
    assert_eq!(
        types_in(map, offset, len),
        vec![want],
        "{}M+{}K should be type {want} in {map:?}",
        offset / M,
        len / K
    );
}

/// Bytes `map` reports with type `t`.
fn bytes_of(map: &[(u64, u64, u32)], t: u32) -> u64 {
    map.iter().filter(|r| r.2 == t).map(|r| r.1).sum()
}

/// `qemu-img map --output=json`: (start, length, data, zero) rows.
fn qemu_map(uri: &str) -> Vec<(u64, u64, bool, bool)> {
    let json = run_ok(
        Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", uri]),
        T,
    );
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["data"] == true,
                e["zero"] == true,
            )
        })
        .collect()
}

/// The (start, length) runs qemu reports as data.
fn qemu_data(map: &[(u64, u64, bool, bool)]) -> Vec<(u64, u64)> {
    map.iter().filter(|e| e.2).map(|e| (e.0, e.1)).collect()
}

#[test]
fn qemu_io_patterns_on_a_thin_disk_its_snapshot_and_clone() {
    need("qemu-io");
    let srv = TestServer::thin_pool(Backing::Malloc, 160, &[("vd0", 64)]);
    let vd0 = srv.uri("vd0");
    qemu_io(
        &vd0,
        false,
        &[
            "write -P 0xab 0 64k",
            "write -P 0xcd 1M 128k",
            "write -P 0xee 2M 1M",
            "write -z 2M 1M",
            "write -P 0x5e 4M 1M",
            "discard 4M 1M",
            "flush",
            "read -P 0xab 0 64k",
            "read -P 0xcd 1M 128k",
            "read -P 0 64k 64k",
            "read -P 0 2M 1M",
            "read -P 0 4M 1M",
            "read -P 0 8M 1M",
        ],
    );
    // A pattern check that must fail proves the checks are real.
    let out = run(
        Command::new("qemu-io").args(["-f", "raw", "-c", "read -P 0x11 0 64k", &vd0]),
        T,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Pattern verification failed"), "{text}");

    srv.snapshot("vd0", "snap0");
    srv.clone_disk("snap0", "clone0");
    let clone0 = srv.uri("clone0");
    // The clone shows the snapshot's data; then it is written, partly over shared
    // segments (copy-on-write of a part of a segment) and partly into holes.
    qemu_io(
        &clone0,
        false,
        &[
            "read -P 0xab 0 64k",
            "read -P 0xcd 1M 128k",
            "read -P 0 2M 1M",
            "read -P 0 4M 1M",
            "write -P 0x99 0 4k",
            "write -P 0x77 1088k 64k",
            "write -z 1M 64k",
            "write -P 0x88 6M 64k",
            "read -P 0x99 0 4k",
            "read -P 0xab 4k 60k",
            "read -P 0 1M 64k",
            "read -P 0x77 1088k 64k",
            "read -P 0x88 6M 64k",
        ],
    );
    // The origin, written after the snapshot.
    qemu_io(
        &vd0,
        false,
        &[
            "write -P 0x44 64k 64k",
            "discard 1M 1M",
            "read -P 0xab 0 64k",
            "read -P 0x44 64k 64k",
            "read -P 0 1M 1M",
            "read -P 0 6M 64k",
        ],
    );
    // The snapshot, through its own (read-only) export, is as it was taken.
    qemu_io(
        &srv.uri("snap0"),
        true,
        &[
            "read -P 0xab 0 64k",
            "read -P 0 64k 64k",
            "read -P 0xcd 1M 128k",
            "read -P 0 2M 1M",
            "read -P 0 4M 1M",
            "read -P 0 6M 64k",
        ],
    );
    // Fresh connections (the other core) see the same.
    qemu_io(
        &clone0,
        true,
        &["read -P 0x99 0 4k", "read -P 0x77 1088k 64k"],
    );
    qemu_io(&vd0, true, &["read -P 0x44 64k 64k"]);
}

#[test]
fn qemu_img_convert_compare_on_a_thin_disk_its_snapshot_and_clone() {
    need_all(&["qemu-img", "qemu-io"]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let data = make_image(&src, 42, 32);
    // The disk is larger than the image: 32M..48M is never written.
    let srv = TestServer::thin_pool(Backing::Malloc, 160, &[("vd0", 48)]);
    let vd0 = srv.uri("vd0");
    let info = run_ok(
        Command::new("qemu-img").args(["info", "-f", "raw", &vd0]),
        T,
    );
    assert!(
        info.contains("virtual size: 48 MiB (50331648 bytes)"),
        "{info}"
    );
    let compare = |a: &Path, b: &str| {
        run(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(a)
                .arg(b),
            T,
        )
    };
    let identical = |a: &Path, b: &str| {
        let out = compare(a, b);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Images are identical"),
            "{} vs {b}: {out:?}",
            a.display()
        );
    };
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&vd0),
        T,
    );
    // compare checks that the part past the smaller image reads as zeros.
    identical(&src, &vd0);

    srv.snapshot("vd0", "snap0");
    srv.clone_disk("snap0", "clone0");
    let clone0 = srv.uri("clone0");
    identical(&src, &clone0);
    let back = dir.path().join("back.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&clone0)
            .arg(&back),
        T,
    );
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), 48 << 20);
    assert!(got[..data.len()] == data[..], "the clone's data");
    assert!(
        got[data.len()..].iter().all(|&b| b == 0),
        "the clone's tail"
    );

    // Change a block of the clone and one of the origin: compare must notice each, and
    // the snapshot must still match the image.
    qemu_io(&clone0, false, &["write -P 0x5a 4096 4096"]);
    assert_eq!(compare(&src, &clone0).status.code(), Some(1));
    qemu_io(&vd0, false, &["write -P 0x6b 8M 4096"]);
    assert_eq!(compare(&src, &vd0).status.code(), Some(1));
    identical(&src, &srv.uri("snap0"));

    // Block status through qemu: what was never written is no data, on every disk.
    for name in ["vd0", "snap0", "clone0"] {
        let map = qemu_map(&srv.uri(name));
        let tail: Vec<_> = map
            .iter()
            .filter(|e| e.0 + e.1 > 32 * M)
            .map(|e| (e.2, e.3))
            .collect();
        assert_eq!(tail, vec![(false, true)], "{name}: 32M..48M, {map:?}");
        let data_bytes: u64 = qemu_data(&map).iter().map(|e| e.1).sum();
        assert!(data_bytes <= 32 * M, "{name}: {map:?}");
    }
}

#[test]
fn nbdinfo_lists_disk_snapshot_and_clone_exports() {
    need("nbdinfo");
    let srv = TestServer::thin_pool(Backing::Malloc, 64, &[]);
    let disk = block_on(srv.pool().create_disk("vd0", 16 * M, true)).unwrap();
    srv.server()
        .add_export(NbdExport::new("vd0", disk).with_description("scratch disk"))
        .unwrap();
    // The snapshot is exported as any disk: it is read-only by itself.
    srv.snapshot("vd0", "gold");
    srv.clone_disk("gold", "work");
    let base = format!("nbd://{}", srv.addr);
    let json = run_ok(Command::new("nbdinfo").args(["--list", "--json", &base]), T);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let exports = v["exports"].as_array().expect("exports");
    let by_name: BTreeMap<&str, &serde_json::Value> = exports
        .iter()
        .map(|e| (e["export-name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["gold", "vd0", "work"],
        "{json}"
    );
    let disk = by_name["vd0"];
    assert_eq!(disk["description"], "scratch disk", "{json}");
    assert_eq!(disk["export-size"], 16 << 20);
    // Any byte range is served (unaligned ones by read-modify-write); 4 KiB is the
    // size below which requests cost one.
    assert_eq!(disk["block_size_minimum"], 1);
    assert_eq!(disk["block_size_preferred"], 4096);
    assert_eq!(disk["block_size_maximum"], 32 << 20);
    assert_eq!(disk["is_read_only"], false);
    assert_eq!(disk["can_multi_conn"], true);
    assert_eq!(disk["can_flush"], true);
    assert_eq!(disk["can_fua"], true);
    assert_eq!(disk["can_trim"], true);
    assert_eq!(disk["can_zero"], true);
    let contexts = disk["contexts"].as_array().unwrap();
    assert!(contexts.iter().any(|c| c == "base:allocation"), "{json}");
    for (name, ro) in [("gold", true), ("work", false)] {
        let e = by_name[name];
        assert_eq!(e["is_read_only"], ro, "{name}: {json}");
        assert_eq!(e["export-size"], 16 << 20, "{name}: {json}");
        assert_eq!(e["block_size_minimum"], 1, "{name}: {json}");
        assert_eq!(e["block_size_preferred"], 4096, "{name}: {json}");
        let contexts = e["contexts"].as_array().unwrap();
        assert!(
            contexts.iter().any(|c| c == "base:allocation"),
            "{name}: {json}"
        );
    }
    assert_eq!(v["structured"], true);

    // One export, by URI.
    let one = run_ok(
        Command::new("nbdinfo").args(["--json", &srv.uri("work")]),
        T,
    );
    let v: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(v["exports"][0]["export-size"], 16 << 20, "{one}");
    assert_eq!(v["exports"][0]["is_read_only"], false, "{one}");
    // An unknown export is refused with the server's message.
    let out = run(Command::new("nbdinfo").arg(srv.uri("nope")), T);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn nbdinfo_map_shows_holes_of_a_thin_disk_its_snapshot_and_clone() {
    need_all(&["nbdinfo", "qemu-io", "qemu-img"]);
    let srv = TestServer::thin_pool(Backing::Malloc, 64, &[("vd0", 16)]);
    let vd0 = srv.uri("vd0");
    qemu_io(
        &vd0,
        false,
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 8M 512k",
            "write -P 0x44 12M 1M",
            "write -z 12M 1M",
            "write -P 0x33 14M 1M",
            "write -z -u 14M 1M",
        ],
    );
    let map = nbd_map(&vd0);
    // Allocated on first write, to the 4 KiB block: half a segment written is half a
    // segment of data. `write -z -u` lets the server unmap: 14M..15M is a hole again.
    assert_range(&map, 0, M, DATA);
    assert_range(&map, M, 7 * M, HOLE);
    assert_range(&map, 8 * M, M / 2, DATA);
    assert_range(&map, 8 * M + M / 2, 4 * M - M / 2, HOLE);
    assert_range(&map, 13 * M, 3 * M, HOLE);
    // `write -z` without -u sends NO_HOLE, by which NBD asks for the range to stay fully
    // provisioned; a tessera disk frees it all the same (a hole, type 3). Asserted here:
    // the range reads as zeros (type 2 or 3).
    for t in types_in(&map, 12 * M, M) {
        assert_ne!(t & 2, 0, "12M..13M reads as zeros: {map:?}");
    }
    assert_eq!(
        bytes_of(&map, DATA),
        M + M / 2,
        "only the written data is data: {map:?}"
    );
    // qemu's view (extended headers, 64-bit status chunks) agrees.
    assert_eq!(
        qemu_data(&qemu_map(&vd0))
            .into_iter()
            .filter(|&(s, _)| !(12 * M..13 * M).contains(&s))
            .collect::<Vec<_>>(),
        vec![(0, M), (8 * M, M / 2)]
    );

    // A snapshot and its clone map as the origin did.
    srv.snapshot("vd0", "snap0");
    srv.clone_disk("snap0", "clone0");
    let (snap0, clone0) = (srv.uri("snap0"), srv.uri("clone0"));
    assert_eq!(nbd_map(&snap0), map, "the snapshot's map");
    assert_eq!(nbd_map(&clone0), map, "the clone's map");

    // Write into a hole of the clone, and unmap data it shares with the snapshot.
    qemu_io(
        &clone0,
        false,
        &["write -P 0x55 4M 4k", "discard 0 1M", "read -P 0 0 1M"],
    );
    let cmap = nbd_map(&clone0);
    assert_range(&cmap, 0, 4 * M, HOLE);
    assert_range(&cmap, 4 * M, 4 * K, DATA);
    assert_range(&cmap, 4 * M + 4 * K, 4 * M - 4 * K, HOLE);
    assert_range(&cmap, 8 * M, M / 2, DATA);
    assert_range(&cmap, 8 * M + M / 2, 3 * M + M / 2, HOLE);
    assert_range(&cmap, 13 * M, 3 * M, HOLE);
    assert_eq!(bytes_of(&cmap, DATA), M / 2 + 4 * K, "{cmap:?}");
    assert_eq!(
        qemu_data(&qemu_map(&clone0))
            .into_iter()
            .filter(|&(s, _)| !(12 * M..13 * M).contains(&s))
            .collect::<Vec<_>>(),
        vec![(4 * M, 4 * K), (8 * M, M / 2)]
    );
    // The snapshot and the origin did not change: map and data.
    assert_eq!(
        nbd_map(&snap0),
        map,
        "the snapshot's map after the clone's writes"
    );
    assert_eq!(
        nbd_map(&vd0),
        map,
        "the origin's map after the clone's writes"
    );
    qemu_io(
        &snap0,
        true,
        &[
            "read -P 0x11 0 1M",
            "read -P 0 4M 4k",
            "read -P 0x22 8M 512k",
        ],
    );
}

#[test]
fn nbdcopy_round_trip_through_a_snapshot_and_clone_on_a_file_pool() {
    need_all(&["nbdcopy", "nbdinfo"]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let data = make_image(&src, 42, 32);
    let srv = TestServer::thin_pool(
        Backing::File(&dir.path().join("pool.img")),
        160,
        &[("vd0", 48)],
    );
    let vd0 = srv.uri("vd0");
    // nbdcopy opens several connections (the export allows multi-conn): they land on
    // both cores. It writes the image's zero stretches sparsely.
    run_ok(Command::new("nbdcopy").arg(&src).arg(&vd0), T);
    let map = nbd_map(&vd0);
    assert_range(&map, 0, M, DATA);
    assert_range(&map, M, 3 * M, HOLE);
    assert_range(&map, 4 * M, 16 * M, DATA);
    assert_range(&map, 20 * M, 2 * M, HOLE);
    assert_range(&map, 22 * M, 10 * M, DATA);
    assert_range(&map, 32 * M, 16 * M, HOLE);

    srv.snapshot("vd0", "snap0");
    srv.clone_disk("snap0", "clone0");
    let clone0 = srv.uri("clone0");
    let copy_out = |uri: &str, file: &str| -> Vec<u8> {
        let path = dir.path().join(file);
        run_ok(Command::new("nbdcopy").arg(uri).arg(&path), T);
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 48 << 20, "{uri}");
        assert!(got[data.len()..].iter().all(|&b| b == 0), "{uri}: the tail");
        got
    };
    let got = copy_out(&clone0, "clone0.img");
    assert!(
        got[..data.len()] == data[..],
        "the clone shows the snapshot's data"
    );
    assert_eq!(nbd_map(&clone0), map, "the clone's map");

    // A second image over the clone's first 8 MiB (its zero stretch becomes a hole of
    // the clone), another over the origin's.
    let src2 = dir.path().join("src2.img");
    let data2 = make_image(&src2, 43, 8);
    run_ok(Command::new("nbdcopy").arg(&src2).arg(&clone0), T);
    let src3 = dir.path().join("src3.img");
    let data3 = pattern(44, 4 << 20);
    std::fs::write(&src3, &data3).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src3).arg(&vd0), T);

    let got = copy_out(&clone0, "clone0-2.img");
    assert!(got[..8 << 20] == data2[..], "the clone's new data");
    assert!(
        got[8 << 20..32 << 20] == data[8 << 20..],
        "the clone's old data"
    );
    let got = copy_out(&vd0, "vd0.img");
    assert!(got[..4 << 20] == data3[..], "the origin's new data");
    assert!(
        got[4 << 20..32 << 20] == data[4 << 20..],
        "the origin's old data"
    );
    let got = copy_out(&srv.uri("snap0"), "snap0.img");
    assert!(got[..data.len()] == data[..], "the snapshot did not change");
    assert_eq!(nbd_map(&srv.uri("snap0")), map, "the snapshot's map");
    let cmap = nbd_map(&clone0);
    assert_range(&cmap, M, 3 * M, HOLE);
    assert_range(&cmap, 4 * M, 16 * M, DATA);
    assert_range(&cmap, 32 * M, 16 * M, HOLE);
    let stats = srv.server().stats();
    assert!(stats.writes > 0 && stats.reads > 0, "{stats:?}");
}

/// Runs fio's nbd engine on `export` (4 KiB blocks, QD 16, JSON output) with `extra`.
fn fio_cmd(srv: &TestServer, export: &str, extra: &[&str]) -> Command {
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
    cmd
}

fn fio(srv: &TestServer, export: &str, extra: &[&str]) -> String {
    run_ok(&mut fio_cmd(srv, export, extra), T)
}

/// Errors, bytes read and bytes written of fio's JSON output.
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

/// Two jobs, two connections, disjoint 16 MiB at 0 and 32M: random writes with crc32c
/// verify headers. With `verify_only` the same job only reads and verifies what it
/// wrote before (fio's seeds are fixed, so the offsets and data are the same).
const FIO_WRITE_VERIFY: [&str; 6] = [
    "--rw=randwrite",
    "--size=16M",
    "--numjobs=2",
    "--offset_increment=32M",
    "--verify=crc32c",
    "--verify_fatal=1",
];

#[test]
fn fio_verify_on_a_thin_disk_its_snapshot_and_clone() {
    need_all(&["fio", "nbdinfo"]);
    let srv = TestServer::thin_pool(Backing::Malloc, 256, &[("vd0", 64)]);
    let json = fio(&srv, "vd0", &FIO_WRITE_VERIFY);
    let (errs, read, written) = fio_errors(&json);
    assert_eq!(errs, 0, "{json}");
    assert_eq!(written, 32 << 20, "{json}");
    assert_eq!(read, 32 << 20, "verify read everything back: {json}");
    // What the jobs did not touch stays a hole.
    let map = nbd_map(&srv.uri("vd0"));
    assert_range(&map, 0, 16 * M, DATA);
    assert_range(&map, 16 * M, 16 * M, HOLE);
    assert_range(&map, 32 * M, 16 * M, DATA);
    assert_range(&map, 48 * M, 16 * M, HOLE);

    srv.snapshot("vd0", "snap0");
    srv.clone_disk("snap0", "clone0");
    let verify_only: Vec<&str> = FIO_WRITE_VERIFY
        .iter()
        .copied()
        .chain(["--verify_only=1"])
        .collect();
    // The clone holds what the jobs wrote to the origin. (fio counts the writes it
    // only pretends to do under verify_only: the server's counter shows none.)
    let writes = srv.server().stats().writes;
    let json = fio(&srv, "clone0", &verify_only);
    let (errs, read, _) = fio_errors(&json);
    assert_eq!(errs, 0, "{json}");
    assert_eq!(read, 32 << 20, "{json}");
    assert_eq!(srv.server().stats().writes, writes, "verify_only wrote");

    // Mixed random I/O over the clone's first 32 MiB and over the origin, verifying
    // what is written.
    for disk in ["clone0", "vd0"] {
        let json = fio(
            &srv,
            disk,
            &[
                "--rw=randrw",
                "--rwmixread=50",
                "--size=32M",
                "--io_size=16M",
                "--verify=crc32c",
                "--randseed=7",
            ],
        );
        let (errs, read, written) = fio_errors(&json);
        assert_eq!(errs, 0, "{disk}: {json}");
        assert!(read > 0 && written > 0, "{disk}: {json}");
    }
    // Overwrite the clone's first MiB with a plain pattern (no verify headers): verifying
    // the first jobs' data on the clone must now fail (the check is real).
    fio(
        &srv,
        "clone0",
        &[
            "--rw=write",
            "--size=1M",
            "--verify=0",
            "--buffer_pattern=0x5a",
        ],
    );
    let out = run(&mut fio_cmd(&srv, "clone0", &verify_only), T);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && text.contains("verify"),
        "fio must find the overwritten blocks: {text}"
    );
    // The snapshot, through its read-only export, still holds the first jobs' data, and
    // its map did not change.
    let json = fio(&srv, "snap0", &verify_only);
    let (errs, read, _) = fio_errors(&json);
    assert_eq!(errs, 0, "{json}");
    assert_eq!(read, 32 << 20, "{json}");
    assert_eq!(nbd_map(&srv.uri("snap0")), map, "the snapshot's map");
    let cmap = nbd_map(&srv.uri("clone0"));
    assert!(
        types_in(&cmap, 16 * M, 16 * M).contains(&DATA),
        "the clone wrote into 16M..32M: {cmap:?}"
    );
    assert_range(&cmap, 48 * M, 16 * M, HOLE);
}

#[test]
fn read_only_exports_of_a_snapshot_and_a_disk_refuse_writes() {
    need("qemu-io");
    let srv = TestServer::thin_pool(Backing::Malloc, 64, &[("vd0", 16)]);
    qemu_io(&srv.uri("vd0"), false, &["write -P 0xab 0 64k"]);
    // A snapshot is exported as it is (read-only because the disk is); the origin again
    // under a second name with the export's own read-only flag.
    srv.snapshot("vd0", "snap0");
    let vd0 = block_on(srv.pool().disk("vd0")).unwrap();
    srv.server()
        .add_export(NbdExport::new("vd0-ro", vd0).with_read_only(true))
        .unwrap();
    for name in ["snap0", "vd0-ro"] {
        let uri = srv.uri(name);
        // qemu sees NBD_FLAG_READ_ONLY and refuses to open the export for writing
        // (qemu-io and libnbd check the flag before sending anything).
        let out = run(
            Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xcd 0 4k", &uri]),
            T,
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{name}: {text}");
        assert!(
            text.contains("Permission denied") || text.contains("read-only"),
            "{name}: {text}"
        );
        // Read-only access works.
        let out = qemu_io(&uri, true, &["read -P 0xab 0 64k", "read -P 0 64k 64k"]);
        assert!(out.contains("read 65536/65536"), "{out}");
        // The server itself answers EPERM on the wire (tests/nbd_wire.rs checks every
        // modifying command); reads work and see the data unchanged.
        let mut c = RawClient::connect(srv.addr, name, Opts::default()).unwrap();
        let r = c.write(0, &[0xcd; 4096]).unwrap();
        assert_eq!(r.error, 1, "{name}: EPERM");
        let r = c.read(0, 4096).unwrap();
        assert_eq!(r.error, 0);
        assert!(r.data.iter().all(|&b| b == 0xab), "{name}");
    }
}

/// Seen by real clients: a core makes a disk's mapping agent when it opens the disk's
/// first channel (and drops it with the last), and the new agent answered NBD block
/// status from its view before the controller had sent it one: "all hole".
/// `nbdinfo --map` asks first thing on a fresh connection, and nbdcopy and `qemu-img
/// convert` skip reading what block status calls a hole, so their copies came out as
/// zeros: data loss. An agent without its view now answers "data".
#[test]
fn block_status_on_fresh_connections_reports_written_data() {
    need_all(&["qemu-io", "qemu-img", "nbdinfo", "nbdcopy"]);
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::thin_pool_cold(Backing::Malloc, 64, &[("vd0", 16)]);
    let vd0 = srv.uri("vd0");
    qemu_io(&vd0, false, &["write -P 0x11 0 4M", "flush"]);
    let copy = dir.path().join("copy.img");
    let copied = |cmd: &mut Command| {
        let _ = std::fs::remove_file(&copy);
        run_ok(cmd, T);
        let got = std::fs::read(&copy).unwrap();
        got.len() == 16 << 20 && got[..4 << 20].iter().all(|&b| b == 0x11)
    };
    let mut wrong: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..10 {
        let map = nbd_map(&vd0);
        if types_in(&map, 0, 4 * M) != [DATA] {
            *wrong.entry("nbdinfo --map").or_default() += 1;
        }
        if !copied(Command::new("nbdcopy").arg(&vd0).arg(&copy)) {
            *wrong.entry("nbdcopy").or_default() += 1;
        }
        if !copied(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "raw", &vd0])
                .arg(&copy),
        ) {
            *wrong.entry("qemu-img convert").or_default() += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong answers out of 10 fresh connections each: {wrong:?}"
    );
}

// ---------------------------------------------------------------------------------------
// ext4 on the exports, through nbdfuse and a loop device.

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

/// How the loop device reaches nbdfuse's file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LoopIo {
    /// Through the page cache, with 4 KiB logical blocks: requests reach the server
    /// aligned to the disk's blocks.
    Buffered4k,
    /// `--direct-io=on`: every request goes through as the kernel issues it, with the
    /// loop device's 512-byte sectors (ext4 reads its superblock at byte 1024).
    Direct,
}

/// An export as a block device: nbdfuse shows it as a file, a loop device makes that a
/// block device. Torn down when dropped, in reverse order: detach the loop device,
/// unmount FUSE, then nbdfuse exits (killed if it does not).
struct FuseLoop {
    dev: String,
    _loop: Teardown,
    _fuse: Teardown,
    _nbdfuse: ChildGuard,
    _dir: tempfile::TempDir,
}

impl FuseLoop {
    fn attach(uri: &str, size_bytes: u64, read_only: bool) -> FuseLoop {
        Self::attach_with(uri, size_bytes, read_only, LoopIo::Buffered4k)
    }

    fn attach_with(uri: &str, size_bytes: u64, read_only: bool, io: LoopIo) -> FuseLoop {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("nbd");
        let mut cmd = Command::new("nbdfuse");
        if read_only {
            cmd.arg("-r");
        }
        let nbdfuse = ChildGuard::spawn(cmd.arg(dir.path()).arg(uri));
        let fuse = Teardown(vec![
            "fusermount3".into(),
            "-u".into(),
            dir.path().display().to_string(),
        ]);
        assert!(
            wait_until(Duration::from_secs(20), || std::fs::metadata(&image)
                .map(|m| m.len() == size_bytes)
                .unwrap_or(false)),
            "nbdfuse did not expose {uri}"
        );
        let mut losetup = Command::new("losetup");
        match io {
            // 4 KiB logical blocks: the loop device sends whole blocks of the disk.
            LoopIo::Buffered4k => losetup.args(["-b", "4096"]),
            // The kernel takes the logical block size from the file's direct-I/O
            // alignment: 512 bytes on FUSE.
            LoopIo::Direct => losetup.arg("--direct-io=on"),
        };
        losetup.args(["-f", "--show"]);
        if read_only {
            losetup.arg("-r");
        }
        let dev = run_ok(losetup.arg(&image), T).trim().to_string();
        let lo = Teardown(vec!["losetup".into(), "-d".into(), dev.clone()]);
        if io == LoopIo::Direct {
            // What the test relies on: direct I/O with 512-byte sectors.
            let out = run_ok(
                Command::new("losetup").args(["-n", "-O", "DIO,LOG-SEC", &dev]),
                T,
            );
            let got: Vec<&str> = out.split_whitespace().collect();
            assert_eq!(got, ["1", "512"], "{dev}: direct I/O and 512-byte sectors");
        }
        FuseLoop {
            dev,
            _loop: lo,
            _fuse: fuse,
            _nbdfuse: nbdfuse,
            _dir: dir,
        }
    }

    /// `e2fsck -fn`: a forced check that changes nothing.
    fn fsck(&self) {
        let fsck = run(Command::new("e2fsck").args(["-fn", &self.dev]), T);
        assert!(
            fsck.status.success(),
            "e2fsck found problems on {}:\n{}{}",
            self.dev,
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
    }

    /// Mounts the file system (with `opts`) on `mnt`; unmounted when the guard drops.
    fn mount(&self, mnt: &Path, opts: &str) -> Teardown {
        run_ok(
            Command::new("mount")
                .args(["-o", opts])
                .arg(&self.dev)
                .arg(mnt),
            T,
        );
        Teardown(vec!["umount".into(), mnt.display().to_string()])
    }
}

fn write_tree(root: &Path, seed: u64) -> BTreeMap<PathBuf, u32> {
    let mut sums = BTreeMap::new();
    for d in 0..6 {
        let dir = root.join(format!("dir{d}/sub{}", d % 3));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..8 {
            let len = [0usize, 1, 511, 4096, 10_000, 65_536, 300_001, 1 << 20][f];
            let data = pattern(seed + (d * 100 + f) as u64, len);
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

/// Size of the thin disk `fs` the ext4 tests format.
const DISK: u64 = 128 * M;

/// What the ext4 tests start from (checking first for nbdfuse, loop devices, the ext4
/// tools and root): a server with a thin disk `fs` of [`DISK`] on a file pool in a
/// temporary directory, and a mount point there.
fn ext4_rig() -> (tempfile::TempDir, TestServer, PathBuf) {
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
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::thin_pool(
        Backing::File(&dir.path().join("pool.img")),
        384,
        &[("fs", DISK / M)],
    );
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    (dir, srv, mnt)
}

#[test]
fn ext4_over_nbdfuse_and_loop_on_a_thin_disk_snapshot_and_clone() {
    need_all(&["nbdinfo"]);
    let (_dir, srv, mnt) = ext4_rig();

    // mkfs, write a tree of files, check the file system, all on the thin disk.
    let sums = {
        let dev = FuseLoop::attach(&srv.uri("fs"), DISK, false);
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &dev.dev]), T);
        let sums = {
            let _mounted = dev.mount(&mnt, "rw");
            write_tree(&mnt, 0)
        };
        dev.fsck();
        sums
    };
    let stats = srv.server().stats();
    assert!(
        stats.flushes > 0,
        "ext4 flushes through to the server: {stats:?}"
    );
    // A thin disk holds the file system's metadata and files, not 128 MiB.
    let map = nbd_map(&srv.uri("fs"));
    let data = bytes_of(&map, DATA);
    assert!(
        data < DISK / 2 && bytes_of(&map, HOLE) > DISK / 2,
        "{data} bytes of data: {map:?}"
    );

    srv.snapshot("fs", "fs-snap");
    srv.clone_disk("fs-snap", "fs-clone");
    // The clone holds the same file system: check it, then change it.
    {
        let dev = FuseLoop::attach(&srv.uri("fs-clone"), DISK, false);
        dev.fsck();
        {
            let _mounted = dev.mount(&mnt, "rw");
            check_tree(&mnt, &sums);
            std::fs::remove_dir_all(mnt.join("dir0")).unwrap();
            std::fs::create_dir(mnt.join("clone")).unwrap();
            let more = write_tree(&mnt.join("clone"), 1000);
            check_tree(&mnt.join("clone"), &more);
            // Overwrite files in place, too.
            for (p, _) in sums.iter().filter(|(p, _)| p.starts_with("dir1")) {
                std::fs::write(mnt.join(p), b"changed in the clone").unwrap();
            }
        }
        dev.fsck();
    }
    // The snapshot, read-only, still holds the original tree and nothing of the clone's.
    {
        let dev = FuseLoop::attach(&srv.uri("fs-snap"), DISK, true);
        dev.fsck();
        let _mounted = dev.mount(&mnt, "ro,noload");
        check_tree(&mnt, &sums);
        assert!(
            !mnt.join("clone").exists(),
            "the clone's files in the snapshot"
        );
    }
    assert_eq!(nbd_map(&srv.uri("fs-snap")), map, "the snapshot's map");
}

/// ext4 on a 4 KiB-block thin disk through nbdfuse and a direct-I/O loop device (512-byte
/// sectors): the kernel's requests reach the server as it issues them, some not aligned
/// to the disk's blocks (the superblock at byte 1024 first of all), and are served by
/// reading the covering blocks and read-modify-write. mkfs, mount, write files,
/// unmount, `e2fsck -fn` finds nothing, and a second mount reads the files back.
#[test]
fn ext4_over_nbdfuse_and_a_direct_io_loop_device_on_a_4k_disk() {
    let (_dir, srv, mnt) = ext4_rig();
    let dev = FuseLoop::attach_with(&srv.uri("fs"), DISK, false, LoopIo::Direct);
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &dev.dev]), T);
    let sums = {
        let _mounted = dev.mount(&mnt, "rw");
        write_tree(&mnt, 7)
    };
    // The superblock read at byte 1024 was answered (mount would have failed with
    // "can't read superblock"), as an unaligned request.
    let stats = srv.server().stats();
    assert!(
        stats.unaligned > 0,
        "no unaligned request reached the server: {stats:?}"
    );
    assert_eq!(stats.errors, 0, "{stats:?}");
    dev.fsck();
    {
        let _mounted = dev.mount(&mnt, "rw");
        check_tree(&mnt, &sums);
    }
    dev.fsck();
    drop(dev);
    // And through a fresh attachment, as the disk holds it.
    let dev = FuseLoop::attach_with(&srv.uri("fs"), DISK, true, LoopIo::Direct);
    dev.fsck();
    let _mounted = dev.mount(&mnt, "ro,noload");
    check_tree(&mnt, &sums);
}

/// fio's nbd engine with 512-byte I/O at random offsets on a 4 KiB-block thin disk, 64
/// requests in flight in 1 MiB (so several touch one block at once), each block's
/// crc32c checked after the writes; then sizes from 512 B to 16 KiB at 512-byte
/// alignment, 32 in flight, over 8 MiB. Nothing
/// fails, every checksum matches, and the server saw the requests as unaligned.
#[test]
fn fio_512_byte_unaligned_io_with_verify_on_a_4k_disk() {
    need_all(&["fio"]);
    let srv = TestServer::thin_pool(Backing::Malloc, 256, &[("vd0", 64)]);
    let uri = srv.uri("vd0");
    let job = |extra: &[&str]| {
        let mut cmd = Command::new("fio");
        cmd.args([
            "--name=unaligned",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--output-format=json",
        ])
        .args(extra);
        let json = run_ok(&mut cmd, T);
        let (errs, read, written) = fio_errors(&json);
        assert_eq!(errs, 0, "{json}");
        (read, written, json)
    };
    // 2048 writes into 256 blocks, 64 at a time: several in flight share a block. Whether
    // two meet in flight depends on timing (on a loaded machine fio may submit slower
    // than the server completes): up to five runs, until some did.
    let mut before = srv.server().stats();
    for run in 1..=5u64 {
        let (read, written, json) = job(&["--bs=512", "--size=1M", "--iodepth=64"]);
        assert_eq!(written, 1 << 20, "{json}");
        assert_eq!(read, 1 << 20, "every block verified: {json}");
        before = srv.server().stats();
        assert!(
            before.unaligned >= run * ((1 << 20) / 512 / 8 * 7),
            "most 512-byte writes are not 4 KiB-aligned: {before:?}"
        );
        if before.range_lock_waits > 0 {
            break;
        }
    }
    assert!(
        before.range_lock_waits > 0,
        "requests in flight together touched one block and were serialized: {before:?}"
    );
    let (read, written, json) = job(&[
        "--bsrange=512-16k",
        "--blockalign=512",
        "--iodepth=32",
        "--size=8M",
        "--offset=16M",
    ]);
    assert!(written >= 8 << 20 && read >= 8 << 20, "{json}");
    let stats = srv.server().stats();
    assert!(stats.unaligned > before.unaligned, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
}

/// `nbdinfo --map=CONTEXT`: (offset, length, type) rows.
fn nbd_map_of(uri: &str, context: &str) -> Vec<(u64, u64, u32)> {
    let map = run_ok(
        Command::new("nbdinfo")
            .arg(format!("--map={context}"))
            .arg(uri),
        T,
    );
    map.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// An export as a file, read-only, through nbdfuse; unmounted when dropped.
struct FuseFile {
    path: PathBuf,
    _fuse: Teardown,
    _nbdfuse: ChildGuard,
    _dir: tempfile::TempDir,
}

impl FuseFile {
    fn open(uri: &str, size_bytes: u64) -> FuseFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nbd");
        let nbdfuse = ChildGuard::spawn(Command::new("nbdfuse").arg("-r").arg(dir.path()).arg(uri));
        let fuse = Teardown(vec![
            "fusermount3".into(),
            "-u".into(),
            dir.path().display().to_string(),
        ]);
        assert!(
            wait_until(Duration::from_secs(20), || std::fs::metadata(&path)
                .map(|m| m.len() == size_bytes)
                .unwrap_or(false)),
            "nbdfuse did not expose {uri}"
        );
        FuseFile {
            path,
            _fuse: fuse,
            _nbdfuse: nbdfuse,
            _dir: dir,
        }
    }
}

/// The 4 KiB blocks of a 64 MiB disk that `written` (byte runs) covers.
fn blocks_of(written: &[(u64, u64)]) -> Vec<bool> {
    let mut out = vec![false; (64 * M / (4 * K)) as usize];
    for (o, l) in written {
        for b in o / (4 * K)..(o + l) / (4 * K) {
            out[b as usize] = true;
        }
    }
    out
}

/// An incremental backup chain with outside tools only: a full copy of the first
/// snapshot with nbdcopy; then, for each later snapshot, the runs that
/// `qemu:dirty-bitmap:<previous snapshot>` marks dirty (nbdinfo --map) copied with dd
/// from the snapshot (nbdfuse) into the backup file. After each round the file is
/// byte-identical to the snapshot (qemu-img compare), and the dirty runs are the
/// blocks written in the round, to the 4 KiB granule. At the end, the dirty runs of
/// the last snapshot since the first are exactly the blocks written since: also in
/// the segment written in every round, whose layers were merged (the two snapshots
/// then hold no common layer of it, and the contents are compared).
#[test]
fn incremental_backup_through_qemu_dirty_bitmaps() {
    need_all(&["nbdcopy", "nbdinfo", "nbdfuse", "qemu-io", "qemu-img"]);
    need_root_fuse_and_loop();
    let size = 64 * M;
    let srv = TestServer::thin_pool(Backing::Malloc, 256, &[("vd0", 64)]);
    let vd0 = srv.uri("vd0");
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.raw");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut prev: Option<String> = None;
    let mut since_first: Vec<(u64, u64)> = Vec::new();
    for round in 0..6u64 {
        // Random 4 KiB-aligned writes of 4..64 KiB, a few unaligned to the granule; and
        // the first block, every round.
        let mut written: Vec<(u64, u64)> = vec![(0, 4 * K)];
        let mut cmds = vec![format!("write -P {} 0 4k", 1 + round * 10)];
        for _ in 0..40 {
            let off = rng.u64(0..(size - 64 * K) / (4 * K)) * 4 * K;
            let len = rng.u64(1..=16) * 4 * K;
            cmds.push(format!(
                "write -P {} {off} {len}",
                1 + round * 10 + rng.u64(0..9)
            ));
            written.push((off, len));
        }
        let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(&vd0, false, &refs);
        let snap = format!("s{round}");
        srv.snapshot("vd0", &snap);
        let uri = srv.uri(&snap);
        match &prev {
            None => {
                run_ok(Command::new("nbdcopy").arg(&uri).arg(&backup), T);
            }
            Some(p) => {
                let map = nbd_map_of(&uri, &format!("qemu:dirty-bitmap:{p}"));
                let dirty: Vec<(u64, u64)> = map
                    .iter()
                    .filter(|r| r.2 & 1 != 0)
                    .map(|r| (r.0, r.1))
                    .collect();
                assert_eq!(
                    map.iter().map(|r| r.1).sum::<u64>(),
                    size,
                    "round {round}: the map covers the disk"
                );
                // Exactly what the round wrote: every written block is dirty, and
                // nothing else (the granule is the 4 KiB block).
                assert_same_blocks(&blocks_of(&dirty), &blocks_of(&written), round);
                let src = FuseFile::open(&uri, size);
                for (o, l) in &dirty {
                    run_ok(
                        Command::new("dd")
                            .arg(format!("if={}", src.path.display()))
                            .arg(format!("of={}", backup.display()))
                            .args(["bs=4096", "conv=notrunc", "status=none"])
                            .arg(format!("skip={}", o / (4 * K)))
                            .arg(format!("seek={}", o / (4 * K)))
                            .arg(format!("count={}", l / (4 * K))),
                        T,
                    );
                }
            }
        }
        run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(&backup)
                .arg(&uri),
            T,
        );
        if round > 0 {
            since_first.extend(&written);
        }
        prev = Some(snap);
    }
    // The last snapshot against the first: segment 0 was written in each of the five
    // rounds between, so its layers were merged and the two share none of them.
    let map = nbd_map_of(&srv.uri("s5"), "qemu:dirty-bitmap:s0");
    let dirty: Vec<(u64, u64)> = map
        .iter()
        .filter(|r| r.2 & 1 != 0)
        .map(|r| (r.0, r.1))
        .collect();
    assert_same_blocks(&blocks_of(&dirty), &blocks_of(&since_first), 5);
}

/// Dirty blocks `got` are the written blocks `want`: none missing, none extra.
fn assert_same_blocks(got: &[bool], want: &[bool], round: u64) {
    let missing: Vec<usize> = (0..want.len()).filter(|&b| want[b] && !got[b]).collect();
    assert!(
        missing.is_empty(),
        "round {round}: blocks written, not dirty: {missing:?}"
    );
    let extra: Vec<usize> = (0..want.len()).filter(|&b| got[b] && !want[b]).collect();
    assert!(
        extra.is_empty(),
        "round {round}: blocks dirty, not written: {extra:?}"
    );
}

/// `qemu:allocation-depth` through nbdinfo: on a clone, its own writes are depth 1,
/// what it shows of its snapshot depth 2, and what nothing holds depth 0; the origin
/// written after the snapshot likewise.
#[test]
fn nbdinfo_allocation_depth_of_a_clone_and_its_origin() {
    need_all(&["nbdinfo", "qemu-io"]);
    let srv = TestServer::thin_pool(Backing::Malloc, 64, &[("vd0", 16)]);
    qemu_io(&srv.uri("vd0"), false, &["write -P 0x11 0 1M"]);
    srv.snapshot("vd0", "s0");
    srv.clone_disk("s0", "c0");
    qemu_io(
        &srv.uri("c0"),
        false,
        &["write -P 0x22 0 4k", "write -P 0x23 4M 4k"],
    );
    qemu_io(&srv.uri("vd0"), false, &["write -P 0x33 512k 8k"]);
    let depth = |export: &str| nbd_map_of(&srv.uri(export), "qemu:allocation-depth");
    assert_eq!(
        depth("c0"),
        [
            (0, 4 * K, 1),
            (4 * K, M - 4 * K, 2),
            (M, 3 * M, 0),
            (4 * M, 4 * K, 1),
            (4 * M + 4 * K, 12 * M - 4 * K, 0),
        ]
    );
    assert_eq!(
        depth("vd0"),
        [
            (0, 512 * K, 2),
            (512 * K, 8 * K, 1),
            (512 * K + 8 * K, M - 512 * K - 8 * K, 2),
            (M, 15 * M, 0),
        ]
    );
    assert_eq!(depth("s0"), [(0, M, 1), (M, 15 * M, 0)]);
}
