//! Incremental send and receive between two `tessera serve` processes: `tessera send |
//! tessera receive` (real processes in a shell pipeline, NBD over TCP, the RPC sockets)
//! over five rounds of random writes and discards (qemu-io) and snapshots on the
//! source. After each round the replica's snapshot reads as the source's (sha256 of
//! `nbdcopy` reads of both), and the data bytes of the stream equal the changed
//! granules `tessera_lvol_get_changed_ranges` reports (within 5 %). Along the way: an
//! interrupted receive (a truncated stream) takes no snapshot and the same stream
//! received again completes it; `send --resume-from` after an interruption completes it
//! too; a stream out of order is refused naming both snapshots; a stream already
//! received is acknowledged and not applied again; the stream is the same byte for
//! byte whether 1, 4 (the default) or 7 NBD connections read the snapshot.
//!
//! Randomized: the seed is printed; `TESSERA_SEND_SEED=N` replays it.

mod process_support;
mod rpc_common;

use rpc_common::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use tessera::replicate::stream::{Record, decode_all};

const DISK: u64 = 64 << 20;
const BS: u64 = 4096;

fn serve(pool: &str, nbd_port: u16, export: bool) -> Serve {
    let exports = if export {
        "\n  exports: [{name: vd0, bdev: vd0}]"
    } else {
        ""
    };
    Serve::start_yaml(&format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: malloc, name: Malloc0, size: 256MiB}}\npools:\n  - {{name: {pool}, bdevs: [Malloc0], segment_size: 1MiB}}\ndisks:\n  - {{name: vd0, pool: {pool}, size: 64MiB, thin: true}}\nnbd:\n  listen: 127.0.0.1:{nbd_port}{exports}\n"
    ))
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tessera")
}

/// Runs `script` under bash with pipefail; (success, stdout + stderr).
fn sh(script: &str) -> (bool, String) {
    let out = run(
        Command::new("bash").args(["-o", "pipefail", "-c", script]),
        std::time::Duration::from_secs(120),
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sh_ok(script: &str) -> String {
    let (ok, out) = sh(script);
    assert!(ok, "`{script}` failed:\n{out}");
    out
}

/// Data bytes of the records of a stream file.
fn stream_bytes(path: &Path) -> u64 {
    let (_, recs) = decode_all(&std::fs::read(path).unwrap()).unwrap();
    recs.iter()
        .map(|r| match r {
            Record::Data { data, .. } => data.len() as u64,
            Record::End { .. } => 0,
        })
        .sum()
}

fn snapshots(srv: &Serve) -> Vec<String> {
    srv.call("bdev_lvol_get_lvols", json!({}))
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["is_snapshot"] == true)
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

/// (name, UUID) of every snapshot of a target.
fn snapshot_uuids(srv: &Serve) -> Vec<(String, String)> {
    srv.call("bdev_lvol_get_lvols", json!({}))
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["is_snapshot"] == true)
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["uuid"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn uuid_of(srv: &Serve, name: &str) -> String {
    srv.call("bdev_get_bdevs", json!({"name": name}))[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A destination whose latest snapshot has the stream base's *name* but not its UUID is
/// no copy of the base: the incremental stream is refused naming both UUIDs, and nothing
/// is written to the disk (it still reads as that snapshot); a full stream onto it is
/// refused too, not taken as already received. A stream cannot be received into the
/// target that sent it (the snapshot's UUID is taken there). `bdev_lvol_snapshot`'s
/// `uuid`: a bad one is -32602 naming it, a taken one -17.
#[test]
fn a_base_of_the_right_name_but_another_uuid_is_refused_and_nothing_written() {
    let (sp, rp) = (free_port(), free_port());
    let src = serve("pool0", sp, true);
    let dst = serve("replica", rp, true);
    let dir = tempfile::tempdir().unwrap();
    let send = |from: &str, snap: &str| {
        format!(
            "{} send --rpc {} --nbd 127.0.0.1:{sp} {from} {snap}",
            bin(),
            src.socket.display()
        )
    };
    let receive = |srv: &Serve, port: u16, disk: &str| {
        format!(
            "{} receive --rpc {} --nbd 127.0.0.1:{port} {disk}",
            bin(),
            srv.socket.display()
        )
    };
    qemu_io(sp, "vd0", &["write -P 0x11 0 1M"]);
    src.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "vd0", "snapshot_name": "s1"}),
    );
    qemu_io(sp, "vd0", &["write -P 0x22 4M 1M"]);
    src.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "vd0", "snapshot_name": "s2"}),
    );
    let (s1, s2) = (uuid_of(&src, "pool0/s1"), uuid_of(&src, "pool0/s2"));
    // The destination's own `s1`: other contents, another UUID.
    qemu_io(rp, "vd0", &["write -P 0x33 0 2M"]);
    dst.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "vd0", "snapshot_name": "s1"}),
    );
    let own = uuid_of(&dst, "replica/s1");
    assert_ne!(own, s1);
    let stream = dir.path().join("s2.stream");
    sh_ok(&format!(
        "{} > {}",
        send("--from s1", "s2"),
        stream.display()
    ));
    let (ok, out) = sh(&format!(
        "{} < {}",
        receive(&dst, rp, "vd0"),
        stream.display()
    ));
    assert!(!ok, "received onto a snapshot of another UUID:\n{out}");
    assert!(
        out.contains(&format!("its latest snapshot is `s1` (UUID {own})"))
            && out.contains(&format!("the stream's base is snapshot `s1` (UUID {s1})")),
        "{out}"
    );
    // Nothing written: the disk still reads as its own s1, and no s2 was taken.
    let changed = dst.call(
        "tessera_lvol_get_changed_ranges",
        json!({"base": "replica/s1", "target": "replica/vd0"}),
    );
    assert_eq!(
        changed["ranges"],
        json!([]),
        "the disk was written: {changed}"
    );
    assert!(!snapshots(&dst).contains(&"s2".to_string()));
    // A full stream of s1 onto it is refused, not taken as already received.
    let (ok, out) = sh(&format!(
        "{} | {}",
        send("", "s1"),
        receive(&dst, rp, "vd0")
    ));
    assert!(!ok, "{out}");
    assert!(out.contains("the stream is a full send"), "{out}");
    // Into the source's own target (another disk there): the UUID is taken.
    src.call(
        "bdev_lvol_create",
        json!({"lvs_name": "pool0", "lvol_name": "vd1", "size_in_mib": 64, "thin_provision": true}),
    );
    let (ok, out) = sh(&format!(
        "{} | {}",
        send("", "s1"),
        receive(&src, sp, "vd1")
    ));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "has UUID {s1}, which bdev `pool0/s1` of the destination target already has"
        )),
        "{out}"
    );
    // The RPC parameter itself.
    let e = dst.call_err(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "vd0", "snapshot_name": "x", "uuid": "not-a-uuid"}),
    );
    assert_eq!(e.code, -32602, "{e:?}");
    assert!(
        e.message.contains("\"uuid\": `not-a-uuid` is not a UUID"),
        "{e:?}"
    );
    let e = dst.call_err(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "vd0", "snapshot_name": "x", "uuid": own}),
    );
    assert_eq!(e.code, -libc::EEXIST, "{e:?}");
    assert!(
        e.message
            .contains(&format!("UUID {own} is already the UUID of `replica/s1`")),
        "{e:?}"
    );
    let v = dst.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "vd0", "snapshot_name": "x", "uuid": s2}),
    );
    assert_eq!(uuid_of(&dst, "replica/x"), s2, "{v}");
    drop(dst.stop());
    drop(src.stop());
}

#[test]
fn five_rounds_of_send_receive_keep_the_replica_equal_to_the_source() {
    let seed = std::env::var("TESSERA_SEND_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (TESSERA_SEND_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let (sp, rp) = (free_port(), free_port());
    let src = serve("pool0", sp, true);
    let dst = serve("replica", rp, false);
    let dir = tempfile::tempdir().unwrap();
    let send = |from: Option<&str>, snap: &str, extra: &str| {
        let from = from.map_or(String::new(), |f| format!("--from {f}"));
        format!(
            "{} send --rpc {} --nbd 127.0.0.1:{sp} {from} {extra} {snap}",
            bin(),
            src.socket.display()
        )
    };
    let receive = format!(
        "{} receive --rpc {} --nbd 127.0.0.1:{rp} vd0",
        bin(),
        dst.socket.display()
    );
    let mut prev: Option<String> = None;
    let mut progress: Option<String> = None;
    for round in 1..=5 {
        // Random writes (4 KiB-aligned, 4 KiB to 512 KiB) and a discard on the source.
        let mut cmds = Vec::new();
        for _ in 0..rng.usize(8..24) {
            let len = rng.u64(1..=128) * BS;
            let off = rng.u64(0..(DISK - len) / BS) * BS;
            cmds.push(format!("write -P {} {off} {len}", rng.u8(1..=255)));
        }
        let len = rng.u64(1..=64) * BS;
        cmds.push(format!(
            "discard {} {len}",
            rng.u64(0..(DISK - len) / BS) * BS
        ));
        let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(sp, "vd0", &refs);
        let snap = format!("s{round}");
        src.call(
            "bdev_lvol_snapshot",
            json!({"lvol_name": "vd0", "snapshot_name": snap}),
        );
        let stream = dir.path().join(format!("{snap}.stream"));
        let full = send(prev.as_deref(), &snap, "--limit 1GiB");
        match round {
            3 => {
                // Interrupted: the stream cut short. No snapshot on the replica; the same
                // stream again completes it.
                sh_ok(&format!("{full} > {}", stream.display()));
                let cut = std::fs::metadata(&stream).unwrap().len() / 2;
                let (ok, out) = sh(&format!("head -c {cut} {} | {receive}", stream.display()));
                assert!(!ok, "a truncated stream was received:\n{out}");
                assert!(
                    out.contains("truncated") && out.contains("no snapshot was taken"),
                    "{out}"
                );
                assert!(!snapshots(&dst).contains(&snap), "snapshot taken: {out}");
                let out = sh_ok(&format!("{receive} < {}", stream.display()));
                assert!(out.contains("snapshot taken"), "{out}");
                // Out of order: the round-2 stream onto s3 is refused, naming both.
                let (ok, out) = sh(&format!("{receive} < {}/s2.stream", dir.path().display()));
                assert!(!ok, "{out}");
                assert!(
                    out.contains("its latest snapshot is `s3`")
                        && out.contains("the stream's base is snapshot `s1`"),
                    "{out}"
                );
                // Already received: acknowledged, nothing applied.
                let out = sh_ok(&format!("{receive} < {}", stream.display()));
                assert!(out.contains("nothing to do"), "{out}");
            }
            5 => {
                // Interrupted, then resumed from the offset the receiver names.
                sh_ok(&format!("{full} > {}", stream.display()));
                let cut = std::fs::metadata(&stream).unwrap().len() * 2 / 3;
                let (ok, out) = sh(&format!("head -c {cut} {} | {receive}", stream.display()));
                assert!(!ok, "{out}");
                let at: u64 = out
                    .split("written up to byte ")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no offset in: {out}"));
                assert!(at > 0, "{out}");
                let resumed = send(prev.as_deref(), &snap, &format!("--resume-from {at}"));
                let out = sh_ok(&format!("{resumed} | {receive}"));
                assert!(out.contains("snapshot taken"), "{out}");
            }
            _ => {
                let out = sh_ok(&format!("{full} | tee {} | {receive}", stream.display()));
                assert!(out.contains("snapshot taken"), "{out}");
                progress = Some(out);
                // The records come in the same order however many connections read
                // them (4 by default): the stream is the same byte for byte.
                let one = std::fs::read(&stream).unwrap();
                for n in [1, 7] {
                    let other = dir.path().join(format!("{snap}.{n}.stream"));
                    let cmd = send(prev.as_deref(), &snap, &format!("--connections {n}"));
                    sh_ok(&format!("{cmd} > {}", other.display()));
                    assert!(
                        std::fs::read(&other).unwrap() == one,
                        "round {round}: the stream read over {n} connections differs from 4's (seed {seed})"
                    );
                }
            }
        }
        let (a, b) = (
            digest(&src, sp, &snap, dir.path()),
            digest(&dst, rp, &snap, dir.path()),
        );
        assert_eq!(
            a, b,
            "round {round}: the replica's {snap} differs (seed {seed})"
        );
        let want = changed_bytes(&src, prev.as_deref(), &snap);
        let got = stream_bytes(&stream);
        assert!(want > 0, "round {round}: nothing changed?");
        // The header names the disk the snapshots are of (vd0, which reads through them:
        // SPDK's `is_clone` says so of it, tessera's `kind` says it is the disk).
        let (header, _) = decode_all(&std::fs::read(&stream).unwrap()).unwrap();
        assert_eq!(
            header.disk_uuid.to_string(),
            uuid_of(&src, "vd0"),
            "round {round}: the stream's disk"
        );
        let diff = got.abs_diff(want) as f64 / want as f64;
        assert!(
            diff <= 0.05,
            "round {round}: the stream holds {got} data bytes, the changed granules {want} (seed {seed})"
        );
        if let Some(out) = progress.take() {
            assert!(
                out.contains("(100%)") && out.contains("MiB/s"),
                "round {round}: no progress line: {out}"
            );
        }
        prev = Some(snap);
    }
    assert_eq!(snapshots(&dst), ["s1", "s2", "s3", "s4", "s5"]);
    // The replica's snapshots are the source's: same names, same UUIDs.
    assert_eq!(snapshot_uuids(&dst), snapshot_uuids(&src));
    drop(dst.stop());
    drop(src.stop());
}
