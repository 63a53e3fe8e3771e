//! `tessera send --nvmf` to a real outside peer: SPDK's `nvmf_tgt` exporting two malloc
//! namespaces (64 MiB and 32 MiB). The source is a `tessera serve`; random writes and
//! discards (qemu-io over NBD) and snapshots on it. Rounds: the full send of s1, then
//! s1→s2 incremental, then s2→s3 throttled, interrupted (SPDK's namespace removed
//! mid-copy) and resumed from the offset the error names, then s3→s4 with `tessera
//! send` stopped by SIGINT (the copy is cancelled, the controller detached) and resumed.
//! After each round the remote
//! namespace reads as the source snapshot (read back through a second controller the
//! source target attaches, exported over NBD: sha256 of nbdcopy reads of both), the
//! bytes copied equal the changed (or data) granules `tessera_lvol_get_changed_ranges`
//! (`tessera_lvol_get_allocated_ranges`) report, and no controller is left attached —
//! after a refusal or a failure too. Refused precisely: a subsystem of two namespaces
//! without `--nsid`, a namespace of another size, a bad transport ID.
//!
//! Randomized: the seed is printed; `TESSERA_SEND_SEED=N` replays it.

mod process_support;
mod rpc_common;
mod spdk_support;

use rpc_common::*;
use serde_json::json;
use spdk_support::Background;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const DISK: u64 = 64 << 20;
const BS: u64 = 4096;
const NQN: &str = "nqn.2016-06.io.spdk:replica";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tessera")
}

/// SPDK's nvmf_tgt: namespace 1 a 64 MiB malloc bdev, namespace 2 a 32 MiB one.
fn spdk_target(dir: &Path, port: u16) -> Background {
    let malloc = |name: &str, blocks: u64| {
        json!({"method": "bdev_malloc_create",
               "params": {"name": name, "num_blocks": blocks, "block_size": 4096}})
    };
    let ns = |bdev: &str, nsid: u32| {
        json!({"method": "nvmf_subsystem_add_ns",
               "params": {"nqn": NQN, "namespace": {"bdev_name": bdev, "nsid": nsid}}})
    };
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [malloc("Malloc0", DISK / BS), malloc("Malloc1", DISK / BS / 2)]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem",
             "params": {"nqn": NQN, "allow_any_host": true, "serial_number": "SPDK-REPLICA-1"}},
            ns("Malloc0", 1),
            ns("Malloc1", 2),
            {"method": "nvmf_subsystem_add_listener",
             "params": {"nqn": NQN,
                        "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
                                           "traddr": "127.0.0.1",
                                           "trsvcid": port.to_string()}}}]}]});
    spdk_support::nvmf_tgt(dir, port, &cfg)
}

/// Runs `script` under bash with pipefail; (success, stdout + stderr, time taken).
fn sh(script: &str) -> (bool, String, Duration) {
    let t0 = Instant::now();
    let out = run(
        Command::new("bash").args(["-o", "pipefail", "-c", script]),
        Duration::from_secs(120),
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        t0.elapsed(),
    )
}

/// sha256 of SPDK's namespace 1, read through a controller the source target attaches
/// for the purpose (and detaches after).
fn remote_digest(srv: &Serve, nbd: u16, spdk: u16, dir: &Path) -> String {
    srv.call(
        "bdev_nvme_attach_controller",
        json!({"name": "chk", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
               "trsvcid": spdk.to_string(), "subnqn": NQN}),
    );
    let d = digest(srv, nbd, "chkn1", dir);
    srv.call("bdev_nvme_detach_controller", json!({"name": "chk"}));
    d
}

/// The bytes a successful `send --nvmf` reports having copied.
fn copied(out: &str) -> u64 {
    out.split(" bytes copied to namespace")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in: {out}"))
}

fn no_controllers(srv: &Serve, after: &str) {
    let c = srv.call("bdev_nvme_get_controllers", json!({}));
    assert_eq!(c, json!([]), "a controller is left attached after {after}");
}

fn snapshot(srv: &Serve, name: &str) {
    srv.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "vd0", "snapshot_name": name}),
    );
}

#[test]
fn send_over_nvme_tcp_keeps_an_spdk_namespace_equal_to_each_snapshot() {
    let seed = std::env::var("TESSERA_SEND_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (TESSERA_SEND_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let (sp, np) = (free_port(), free_port());
    let mut peer = spdk_target(dir.path(), np);
    let src = Serve::start_yaml(&format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: malloc, name: Malloc0, size: 256MiB}}\npools:\n  - {{name: pool0, bdevs: [Malloc0], segment_size: 1MiB}}\ndisks:\n  - {{name: vd0, pool: pool0, size: 64MiB, thin: true}}\nnbd:\n  listen: 127.0.0.1:{sp}\n  exports: [{{name: vd0, bdev: vd0}}]\n"
    ));
    let trid = format!("trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:{np} subnqn:{NQN}");
    let send = |args: &str| format!("{} send --rpc {} {args}", bin(), src.socket.display());
    let random_writes = |rng: &mut fastrand::Rng, n: usize| {
        let mut cmds = Vec::new();
        for _ in 0..n {
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
    };

    // Round 1: the full send of s1, after the refusals.
    random_writes(&mut rng, 16);
    snapshot(&src, "s1");
    let (ok, out, _) = sh(&send(&format!("--nvmf '{trid}' s1")));
    assert!(
        !ok && out.contains("has namespaces 1, 2: choose one with --nsid"),
        "{out}"
    );
    no_controllers(&src, "a refused send (no --nsid)");
    let (ok, out, _) = sh(&send(&format!("--nvmf '{trid}' --nsid 2 s1")));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "namespace 2 of `{NQN}` at 127.0.0.1:{np} has 8192 blocks of 4096 bytes (33554432 bytes), snapshot `s1` 16384 blocks of 4096 bytes (67108864 bytes)"
        )),
        "{out}"
    );
    no_controllers(&src, "a refused send (size)");
    let (ok, out, _) = sh(&send("--nvmf 'traddr:127.0.0.1 subnqn' s1"));
    assert!(
        !ok && out.contains("--nvmf: `subnqn` is not KEY:VALUE"),
        "{out}"
    );
    let (ok, out, _) = sh(&send(&format!("--nvmf '{trid}' --nsid 1 s1")));
    assert!(ok, "{out}");
    assert!(
        out.contains("(100%)") || out.contains("complete"),
        "no progress: {out}"
    );
    assert_eq!(copied(&out), changed_bytes(&src, None, "s1"), "{out}");
    no_controllers(&src, "round 1");
    let d1 = digest(&src, sp, "pool0/s1", dir.path());
    assert_eq!(
        remote_digest(&src, sp, np, dir.path()),
        d1,
        "round 1: the namespace differs from s1 (seed {seed})"
    );

    // Round 2: the changes of s2 since s1 (the namespace given in the transport ID).
    random_writes(&mut rng, 16);
    snapshot(&src, "s2");
    let (ok, out, _) = sh(&send(&format!("--from s1 --nvmf '{trid} ns:1' s2")));
    assert!(ok, "{out}");
    let want = changed_bytes(&src, Some("s1"), "s2");
    assert!(want > 0);
    assert_eq!(copied(&out), want, "{out}");
    no_controllers(&src, "round 2");
    assert_eq!(
        remote_digest(&src, sp, np, dir.path()),
        digest(&src, sp, "pool0/s2", dir.path()),
        "round 2: the namespace differs from s2 (seed {seed})"
    );

    // Round 3: s2 -> s3 at 4 MiB/s, interrupted by SPDK's namespace going away, then
    // resumed from where the error says.
    let mut cmds = Vec::new();
    for i in 0..16u64 {
        cmds.push(format!("write -P {} {} 1M", rng.u8(1..=255), i * (4 << 20)));
    }
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(sp, "vd0", &refs);
    snapshot(&src, "s3");
    let want = changed_bytes(&src, Some("s2"), "s3");
    assert!(want >= 16 << 20, "{want}");
    let cmd = send(&format!(
        "--from s2 --nvmf '{trid}' --nsid 1 --limit 4MiB --stall-limit 20 s3"
    ));
    let log = dir.path().join("send3.log");
    let bg = Background::spawn(Command::new("bash").args(["-c", &cmd]), log);
    std::thread::sleep(Duration::from_millis(1500));
    let rpc = |args: &[&str]| {
        run_ok(
            Command::new(spdk_rpc())
                .arg("-s")
                .arg(dir.path().join("spdk.sock"))
                .args(args),
        )
    };
    rpc(&["nvmf_subsystem_remove_ns", NQN, "1"]);
    let (ok, out) = bg.wait(Duration::from_secs(60));
    rpc(&["nvmf_subsystem_add_ns", "-n", "1", NQN, "Malloc0"]);
    assert!(!ok, "the send survived its namespace's removal:\n{out}");
    println!("the interrupted send:\n{out}");
    let at: u64 = out
        .split("send again with --resume-from ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no offset to resume from in: {out}"));
    assert!(at > 0 && at < DISK, "{out}");
    no_controllers(&src, "a failed copy");
    let (ok, out, took) = sh(&send(&format!(
        "--from s2 --nvmf '{trid}' --nsid 1 --limit 4MiB --resume-from {at} s3"
    )));
    assert!(ok, "{out}");
    let rest = copied(&out);
    assert!(rest > 0 && rest < want, "{rest} of {want}: {out}");
    // The cap holds: past the first wave of four 1 MiB chunks, 4 MiB a second.
    let floor = (rest.saturating_sub(4 << 20)) as f64 / f64::from(4 << 20);
    assert!(
        took.as_secs_f64() >= floor * 0.9,
        "{rest} bytes in {took:?} at a 4 MiB/s cap"
    );
    no_controllers(&src, "round 3");
    assert_eq!(
        remote_digest(&src, sp, np, dir.path()),
        digest(&src, sp, "pool0/s3", dir.path()),
        "round 3: the namespace differs from s3 (seed {seed})"
    );
    // Round 4: s3 -> s4 at 2 MiB/s, `tessera send` interrupted by SIGINT: the copy is
    // cancelled and the controller detached; resumed, the namespace is s4.
    let mut cmds = Vec::new();
    for i in 0..16u64 {
        cmds.push(format!(
            "write -P {} {} 1M",
            rng.u8(1..=255),
            i * (4 << 20) + (1 << 20)
        ));
    }
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(sp, "vd0", &refs);
    snapshot(&src, "s4");
    let bg = Background::spawn(
        Command::new(bin())
            .arg("send")
            .arg("--rpc")
            .arg(&src.socket)
            .args([
                "--from", "s3", "--nvmf", &trid, "--nsid", "1", "--limit", "2MiB", "s4",
            ]),
        dir.path().join("send4.log"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let out = bg.stop(Duration::from_secs(60));
    println!("the send interrupted by SIGINT:\n{out}");
    assert!(out.contains("interrupted (a signal)"), "{out}");
    let at: u64 = out
        .split("send again with --resume-from ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no offset to resume from in: {out}"));
    no_controllers(&src, "a send interrupted by SIGINT");
    let (ok, out, _) = sh(&send(&format!(
        "--from s3 --nvmf '{trid}' --nsid 1 --resume-from {at} s4"
    )));
    assert!(ok, "{out}");
    no_controllers(&src, "round 4");
    assert_eq!(
        remote_digest(&src, sp, np, dir.path()),
        digest(&src, sp, "pool0/s4", dir.path()),
        "round 4: the namespace differs from s4 (seed {seed})"
    );
    assert!(peer.is_running(), "{}", peer.text());
    drop(src.stop());
}
