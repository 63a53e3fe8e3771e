//! Rate limits (`bdev_set_qos_limit`) on a running `tessera serve`: SPDK's `spdk-rpc`
//! sets and clears them and gets SPDK's answers for bad parameters; `bdev_get_bdevs`
//! reports them; `save_config` keeps them across a restart. fio, over NBD, loads limited
//! bdevs — a null bdev and a disk — through one connection and through two (on the two
//! reactors), and the rates the target counted (`bdev_get_iostat`, timed by its own
//! tick counter) are checked over 1 s windows: within 5 % of the limit. The same over
//! NVMe/TCP, loaded by SPDK's `spdk_nvme_perf` with one queue pair and with two (on the
//! two reactors), and with 128 KiB transfers (writes through R2T).

mod process_support;
mod rpc_common;
mod spdk_support;

use rpc_common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A null bdev limited from the start (the YAML's `qos`), and a thick disk.
fn config(nbd_port: u16) -> String {
    format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: null, name: Null0, size: 64GiB}}\n  - {{type: malloc, name: Malloc1, size: 160MiB}}\npools:\n  - {{name: pool0, bdevs: [Malloc1], segment_size: 1MiB}}\ndisks:\n  - {{name: vd0, pool: pool0, size: 128MiB, thin: false}}\nnbd:\n  listen: 127.0.0.1:{nbd_port}\n  exports: [{{name: n0, bdev: Null0}}, {{name: vd0, bdev: pool0/vd0}}]\nqos:\n  - {{bdev: Null0, rw_ios_per_sec: 10000}}\n"
    )
}

fn spdk(tool: &Path, socket: &Path, args: &[&str]) -> String {
    run_ok(Command::new(tool).arg("-s").arg(socket).args(args))
}

fn limits(srv: &Serve, bdev: &str) -> Value {
    srv.call("bdev_get_bdevs", json!({"name": bdev}))[0]["assigned_rate_limits"].clone()
}

fn qos_calls(cfg: &Value) -> Vec<Value> {
    cfg["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["subsystem"] == "bdev")
        .flat_map(|s| s["config"].as_array().unwrap().clone())
        .filter(|c| c["method"] == "bdev_set_qos_limit")
        .map(|c| c["params"].clone())
        .collect()
}

/// `spdk-rpc bdev_set_qos_limit` on a base bdev and on a disk (by its alias): limits
/// are merged (one not given stays), an I/O limit is rounded up to a multiple of 1000 as
/// SPDK does, 0 removes one; `bdev_get_bdevs` always reports all four. SPDK's codes:
/// -19 "No such device", -22 "No rate limits specified"; a bad type -32602 naming the
/// parameter. `save_config` writes them as SPDK does (the limits that are on) and a
/// target started from that file has them again, as one started from
/// `tessera_save_config`'s YAML does.
#[test]
fn spdk_rpc_sets_and_clears_limits_that_survive_a_restart() {
    let tool = spdk_rpc();
    let port = free_port();
    let srv = Serve::start_yaml(&config(port));
    let s = srv.socket.clone();
    let zero = json!({"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0});
    assert_eq!(
        limits(&srv, "Null0"),
        json!({"rw_ios_per_sec": 10000, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0}),
        "from the YAML"
    );
    assert_eq!(limits(&srv, "Malloc1"), zero);
    spdk(
        &tool,
        &s,
        &["bdev_set_qos_limit", "Malloc1", "--rw-ios-per-sec", "1500"],
    );
    spdk(
        &tool,
        &s,
        &["bdev_set_qos_limit", "pool0/vd0", "--w-mbytes-per-sec", "5"],
    );
    spdk(
        &tool,
        &s,
        &[
            "bdev_set_qos_limit",
            "pool0/vd0",
            "--r-mbytes-per-sec",
            "7",
            "--rw-mbytes-per-sec",
            "30",
        ],
    );
    assert_eq!(
        limits(&srv, "Malloc1"),
        json!({"rw_ios_per_sec": 2000, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0}),
        "1500 rounded up as SPDK does"
    );
    let vd0 = json!({"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 30, "r_mbytes_per_sec": 7, "w_mbytes_per_sec": 5});
    assert_eq!(limits(&srv, "pool0/vd0"), vd0);

    // SPDK's answers.
    let out = run_fails(Command::new(&tool).arg("-s").arg(&s).args([
        "bdev_set_qos_limit",
        "Nope",
        "--rw-ios-per-sec",
        "1000",
    ]));
    assert!(
        out.contains("\"code\": -19") && out.contains("No such device"),
        "{out}"
    );
    let out = run_fails(
        Command::new(&tool)
            .arg("-s")
            .arg(&s)
            .args(["bdev_set_qos_limit", "Malloc1"]),
    );
    assert!(
        out.contains("\"code\": -22") && out.contains("No rate limits specified"),
        "{out}"
    );
    let e = srv.call_err(
        "bdev_set_qos_limit",
        json!({"name": "Malloc1", "rw_ios_per_sec": "many"}),
    );
    assert!(
        e.code == -32602 && e.message.contains("rw_ios_per_sec"),
        "{e}"
    );
    let e = srv.call_err(
        "bdev_set_qos_limit",
        json!({"name": "Malloc1", "rw_iops": 1000}),
    );
    assert!(e.code == -32602 && e.message.contains("rw_iops"), "{e}");
    assert_eq!(limits(&srv, "Malloc1")["rw_ios_per_sec"], 2000, "unchanged");

    // save_config, as SPDK writes it: the limits that are on.
    let saved: Value = serde_json::from_str(&spdk(&tool, &s, &["save_config"])).unwrap();
    let calls = qos_calls(&saved);
    assert!(
        calls.contains(&json!({"name": "Null0", "rw_ios_per_sec": 10000})),
        "{calls:?}"
    );
    assert!(
        calls.contains(&json!({"name": "Malloc1", "rw_ios_per_sec": 2000})),
        "{calls:?}"
    );
    assert!(
        calls.contains(&json!({"name": "pool0/vd0", "rw_mbytes_per_sec": 30, "r_mbytes_per_sec": 7, "w_mbytes_per_sec": 5})),
        "{calls:?}"
    );
    let yaml = srv.call("tessera_save_config", json!({}));
    let yaml = yaml.as_str().unwrap().to_string();
    assert!(yaml.contains("qos:"), "{yaml}");

    // Cleared: 0 removes a limit; none left, none saved.
    spdk(
        &tool,
        &s,
        &["bdev_set_qos_limit", "Malloc1", "--rw-ios-per-sec", "0"],
    );
    assert_eq!(limits(&srv, "Malloc1"), zero);
    let again: Value = serde_json::from_str(&spdk(&tool, &s, &["save_config"])).unwrap();
    assert!(
        !qos_calls(&again).iter().any(|c| c["name"] == "Malloc1"),
        "{:?}",
        qos_calls(&again)
    );
    srv.stop();

    // A restart from the SPDK file written before the clear, then from the YAML.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("saved.json");
    std::fs::write(&file, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
    let srv = Serve::start_file(dir, &file);
    assert_eq!(limits(&srv, "Malloc1")["rw_ios_per_sec"], 2000);
    assert_eq!(limits(&srv, "pool0/vd0"), vd0);
    assert_eq!(limits(&srv, "Null0")["rw_ios_per_sec"], 10000);
    srv.stop();
    let srv = Serve::start_yaml(&yaml);
    assert_eq!(limits(&srv, "pool0/vd0"), vd0);
    assert_eq!(limits(&srv, "Malloc1")["rw_ios_per_sec"], 2000);
    srv.stop();
}

/// fio on NBD exports, as many jobs (one connection each) as `jobs` lists: (export,
/// rw, bs).
fn fio(port: u16, jobs: &[(&str, &str, &str)], seconds: u32) -> Child {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--ioengine=nbd",
        "--iodepth=32",
        "--time_based",
        "--output-format=json",
    ])
    .arg(format!("--runtime={seconds}"));
    for (i, (export, rw, bs)) in jobs.iter().enumerate() {
        cmd.arg(format!("--name=j{i}"))
            .arg(format!("--uri=nbd://127.0.0.1:{port}/{export}"))
            .arg(format!("--rw={rw}"))
            .arg(format!("--bs={bs}"));
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio runs (apt install fio)")
}

/// fio's result: it must end (within `limit`) without errors.
fn fio_done(child: Child, limit: Duration) {
    let pid = child.id();
    let end = Instant::now() + limit;
    let out = std::thread::scope(|sc| {
        let h = sc.spawn(move || child.wait_with_output());
        while !h.is_finished() {
            if Instant::now() > end {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                panic!("fio did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        h.join().unwrap().unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = &text[text.find('{').unwrap_or(0)..];
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    for j in v["jobs"].as_array().unwrap() {
        assert_eq!(j["error"], 0, "fio job {}", j["jobname"]);
    }
}

/// What the target counted on `bdev` so far: (seconds by its tick counter, read ops,
/// write ops, bytes read, bytes written), and per core the requests counted.
fn sample(srv: &Serve, bdev: &str) -> ([f64; 5], Vec<u64>) {
    let v = srv.call(
        "bdev_get_iostat",
        json!({"name": bdev, "per_channel": true}),
    );
    let secs = v["ticks"].as_f64().unwrap() / v["tick_rate"].as_f64().unwrap();
    let mut sum = [secs, 0.0, 0.0, 0.0, 0.0];
    let mut per_core = Vec::new();
    for c in v["channels"].as_array().unwrap() {
        let f = |k: &str| c[k].as_f64().unwrap();
        sum[1] += f("num_read_ops");
        sum[2] += f("num_write_ops");
        sum[3] += f("bytes_read");
        sum[4] += f("bytes_written");
        per_core.push((f("num_read_ops") + f("num_write_ops")) as u64);
    }
    (sum, per_core)
}

/// `n` windows of about 1 s after a second of warm-up: each one's rates (read ops, write
/// ops, bytes read, bytes written, per second), and the requests each core counted over
/// all of them.
fn windows(srv: &Serve, bdev: &str, n: usize) -> (Vec<[f64; 4]>, Vec<u64>) {
    std::thread::sleep(Duration::from_millis(1500));
    let (mut prev, first) = sample(srv, bdev);
    let mut out = Vec::new();
    let mut last = first.clone();
    for _ in 0..n {
        std::thread::sleep(Duration::from_secs(1));
        let (now, cores) = sample(srv, bdev);
        let dt = now[0] - prev[0];
        out.push(std::array::from_fn(|i| (now[i + 1] - prev[i + 1]) / dt));
        prev = now;
        last = cores;
    }
    let spread = last
        .iter()
        .zip(first.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a - b)
        .collect();
    (out, spread)
}

/// Each window's value `k` within 5 % of `want`.
fn within_5_percent(what: &str, w: &[[f64; 4]], k: usize, want: f64) {
    let all: Vec<String> = w
        .iter()
        .map(|r| format!("{:+.2} %", (r[k] - want) / want * 100.0))
        .collect();
    eprintln!("{what}: limit {want:.0}, 1 s windows off by {all:?}");
    for (i, r) in w.iter().enumerate() {
        let off = (r[k] - want) / want;
        assert!(
            off.abs() <= 0.05,
            "{what}: window {i}: {:.0} against a limit of {want:.0} ({:+.1} %); all: {:?}",
            r[k],
            off * 100.0,
            w.iter().map(|r| r[k].round()).collect::<Vec<_>>()
        );
    }
}

/// 10 000 I/Os per second on a null bdev (the YAML's limit) through one NBD
/// connection, then through two (the two reactors; both count requests), each 1 s
/// window within 5 %; removing the limit under load lets the requests waiting go (fio
/// ends without errors) and the rate rise above it.
#[test]
fn an_iops_limit_holds_on_one_core_and_on_two() {
    let port = free_port();
    let srv = Serve::start_yaml(&config(port));
    let fio1 = fio(port, &[("n0", "randread", "4k")], 5);
    let (w, _) = windows(&srv, "Null0", 3);
    fio_done(fio1, Duration::from_secs(30));
    within_5_percent("one connection", &w, 0, 10000.0);

    let fio2 = fio(
        port,
        &[("n0", "randread", "4k"), ("n0", "randwrite", "4k")],
        6,
    );
    let (w, cores) = windows(&srv, "Null0", 3);
    let total: Vec<[f64; 4]> = w.iter().map(|r| [r[0] + r[1], 0.0, 0.0, 0.0]).collect();
    within_5_percent("two connections", &total, 0, 10000.0);
    assert!(
        cores.len() == 2 && cores.iter().all(|&n| n > 3000),
        "both cores carried the load: {cores:?}"
    );
    // Off under load.
    srv.call(
        "bdev_set_qos_limit",
        json!({"name": "Null0", "rw_ios_per_sec": 0}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let (a, _) = sample(&srv, "Null0");
    std::thread::sleep(Duration::from_millis(500));
    let (b, _) = sample(&srv, "Null0");
    let rate = (b[1] + b[2] - a[1] - a[2]) / (b[0] - a[0]);
    fio_done(fio2, Duration::from_secs(30));
    assert!(rate > 11000.0, "{rate:.0} I/Os per second without a limit");
}

/// A disk with a read limit of 40 MiB/s and a write limit of 20 MiB/s, read and
/// written at once by two connections (on the two reactors): each direction holds its
/// own limit within 5 % in every 1 s window.
#[test]
fn read_and_write_byte_limits_hold_apart_on_a_disk() {
    let port = free_port();
    let srv = Serve::start_yaml(&config(port));
    srv.call(
        "bdev_set_qos_limit",
        json!({"name": "pool0/vd0", "r_mbytes_per_sec": 40, "w_mbytes_per_sec": 20}),
    );
    let f = fio(
        port,
        &[("vd0", "randread", "64k"), ("vd0", "randwrite", "64k")],
        6,
    );
    let (w, cores) = windows(&srv, "pool0/vd0", 3);
    fio_done(f, Duration::from_secs(30));
    within_5_percent("reads", &w, 2, 40.0 * 1048576.0);
    within_5_percent("writes", &w, 3, 20.0 * 1048576.0);
    assert!(cores.iter().filter(|&&n| n > 0).count() == 2, "{cores:?}");
}

/// A limit on the base bdev under a pool holds the pool's disks too (their requests go
/// down to it, most of them readdressed as they are): 5 000 I/Os per second on
/// `Malloc1`, read through the disk `vd0`, within 5 % in every 1 s window.
#[test]
fn a_limit_on_a_pools_base_bdev_holds_its_disk() {
    let port = free_port();
    let srv = Serve::start_yaml(&config(port));
    srv.call(
        "bdev_set_qos_limit",
        json!({"name": "Malloc1", "rw_ios_per_sec": 5000}),
    );
    let f = fio(port, &[("vd0", "randread", "4k")], 5);
    let (w, _) = windows(&srv, "pool0/vd0", 3);
    fio_done(f, Duration::from_secs(30));
    within_5_percent("disk under a limited base bdev", &w, 0, 5000.0);
}

const NQN: &str = "nqn.2026-12.io.tessera:qos";

/// [`config`]'s bdevs and limit, exported over NVMe/TCP on `port`: `Null0` (limited to
/// 10 000 I/Os per second) as namespace 1, the disk `vd0` as namespace 2.
fn nvmf_config(port: u16) -> String {
    format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: null, name: Null0, size: 64GiB}}\n  - {{type: malloc, name: Malloc1, size: 160MiB}}\npools:\n  - {{name: pool0, bdevs: [Malloc1], segment_size: 1MiB}}\ndisks:\n  - {{name: vd0, pool: pool0, size: 128MiB, thin: false}}\nnvmf:\n  subsystems:\n    - nqn: {NQN}\n      allow_any_host: true\n      listeners: [{{address: 127.0.0.1, port: {port}}}]\n      namespaces: [{{bdev: Null0, nsid: 1}}, {{bdev: pool0/vd0, nsid: 2}}]\nqos:\n  - {{bdev: Null0, rw_ios_per_sec: 10000}}\n"
    )
}

/// `spdk_nvme_perf` on namespace `nsid` of [`NQN`] with `args`, in the background.
fn nvme_perf(port: u16, nsid: u32, args: &[&str]) -> std::thread::JoinHandle<f64> {
    let t = format!("{} ns:{nsid}", spdk_support::trid(port, NQN, None));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spdk_support::perf(&args, &t)
    })
}

/// SPDK's host over NVMe/TCP against the YAML's 10 000 I/Os per second on a null bdev:
/// one queue pair, then two (which the target places on its two reactors, both counting
/// requests); each 1 s window within 5 % of the limit.
#[test]
fn an_iops_limit_holds_for_spdks_host_over_nvme_tcp_on_one_core_and_on_two() {
    let port = free_port();
    let srv = Serve::start_yaml(&nvmf_config(port));
    let one = nvme_perf(
        port,
        1,
        &[
            "-c", "0x2", "-q", "32", "-o", "4096", "-w", "randread", "-t", "6",
        ],
    );
    let (w, _) = windows(&srv, "Null0", 3);
    let iops = one.join().unwrap();
    within_5_percent("one queue pair", &w, 0, 10000.0);
    assert!(
        (iops - 10000.0).abs() / 10000.0 <= 0.05,
        "spdk_nvme_perf saw {iops:.0} I/Os per second against a limit of 10000"
    );

    let two = nvme_perf(
        port,
        1,
        &[
            "-c", "0x2", "-P", "2", "-q", "32", "-o", "4096", "-w", "randrw", "-M", "50", "-t", "6",
        ],
    );
    let (w, cores) = windows(&srv, "Null0", 3);
    two.join().unwrap();
    let total: Vec<[f64; 4]> = w.iter().map(|r| [r[0] + r[1], 0.0, 0.0, 0.0]).collect();
    within_5_percent("two queue pairs", &total, 0, 10000.0);
    assert!(
        cores.len() == 2 && cores.iter().all(|&n| n > 3000),
        "both cores carried the load: {cores:?}"
    );
}

/// Byte limits over NVMe/TCP, 128 KiB transfers (a write's data comes through R2T): a
/// disk limited to 40 MiB/s of reads and 20 MiB/s of writes holds each within 5 % in
/// every 1 s window under SPDK's host, reads and writes in turn (one `spdk_nvme_perf`
/// mixing them would tie the two rates together: its queue waits on the slower one).
#[test]
fn byte_limits_hold_for_spdks_host_over_nvme_tcp_with_large_transfers() {
    let port = free_port();
    let srv = Serve::start_yaml(&nvmf_config(port));
    srv.call(
        "bdev_set_qos_limit",
        json!({"name": "pool0/vd0", "r_mbytes_per_sec": 40, "w_mbytes_per_sec": 20}),
    );
    for (rw, k, mib) in [("randread", 2, 40.0), ("randwrite", 3, 20.0)] {
        let p = nvme_perf(
            port,
            2,
            &[
                "-c", "0x2", "-P", "2", "-q", "8", "-o", "131072", "-w", rw, "-t", "6",
            ],
        );
        let (w, _) = windows(&srv, "pool0/vd0", 3);
        p.join().unwrap();
        within_5_percent(rw, &w, k, mib * 1048576.0);
    }
}
