//! Bad input on the JSON-RPC socket — malformed JSON, wrong types, missing and unknown
//! parameters, unknown methods, a request above the size limit, a client that leaves
//! mid-request, pipelining, batches, many clients at once — while an NBD client keeps
//! I/O going against the same target: every request gets an answer or a clean close,
//! and the I/O keeps completing throughout.

#[path = "nbd_support/mod.rs"]
mod nbd_support;
mod process_support;
mod rpc_common;

use rpc_common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// NBD reads and writes against `export` in a loop; counts them, stops on `stop`.
struct IoLoad {
    ops: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl IoLoad {
    fn start(addr: std::net::SocketAddr, export: &str) -> IoLoad {
        let ops = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, s, e) = (ops.clone(), stop.clone(), export.to_string());
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let mut c = nbd_support::RawClient::connect(addr, &e, Default::default())
                .map_err(|e| format!("connect: {e}"))?;
            let blocks = c.size / 4096;
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let off = (i.wrapping_mul(7919) % blocks) * 4096;
                let data = nbd_support::pattern(i, 4096);
                let w = c.write(off, &data).map_err(|e| format!("write: {e}"))?;
                if w.error != 0 {
                    return Err(format!("write error {}", w.error));
                }
                let r = c.read(off, 4096).map_err(|e| format!("read: {e}"))?;
                if r.error != 0 || r.data != data {
                    return Err(format!("read back at {off} differs (error {})", r.error));
                }
                o.fetch_add(2, Ordering::Relaxed);
                i += 1;
            }
            c.disconnect().map_err(|e| format!("disconnect: {e}"))
        });
        IoLoad {
            ops,
            stop,
            thread: Some(thread),
        }
    }

    /// Asserts that I/O completes after `what`.
    fn still_running(&self, what: &str) {
        let before = self.ops.load(Ordering::Relaxed);
        let end = Instant::now() + Duration::from_secs(10);
        while self.ops.load(Ordering::Relaxed) < before + 20 {
            assert!(
                !self.thread.as_ref().unwrap().is_finished(),
                "the I/O load stopped after {what}"
            );
            assert!(Instant::now() < end, "I/O stalled after {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .unwrap()
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("I/O load: {e}"));
        self.ops.load(Ordering::Relaxed)
    }
}

fn request(id: u64, method: &str, params: Value) -> Vec<u8> {
    let mut r = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if !params.is_null() {
        r["params"] = params;
    }
    serde_json::to_vec_pretty(&r).unwrap()
}

#[test]
fn bad_input_is_answered_and_io_goes_on() {
    let nbd_port = free_port();
    let srv = Serve::start_yaml(&format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: malloc, name: Malloc0, size: 128MiB}}\npools:\n  - {{name: pool0, bdevs: [Malloc0]}}\ndisks:\n  - {{name: vd0, pool: pool0, size: 64MiB}}\nnbd:\n  listen: 127.0.0.1:{nbd_port}\n  exports: [{{name: vd0, bdev: vd0}}]\n"
    ));
    let sock = srv.socket.clone();
    let load = IoLoad::start(format!("127.0.0.1:{nbd_port}").parse().unwrap(), "vd0");
    load.still_running("start");

    // Malformed JSON whose brackets balance: a parse error, and the connection goes on.
    let mut bytes = b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": }".to_vec();
    bytes.extend(request(2, "spdk_get_version", Value::Null));
    let (v, closed) = raw_exchange(&sock, &bytes, 2);
    assert!(!closed);
    assert_eq!(error_of(&v[0]).0, -32700, "{v:?}");
    assert_eq!(v[0]["id"], Value::Null);
    assert_eq!(v[1]["id"], 2);
    assert!(v[1]["result"]["version"].is_string());
    load.still_running("malformed JSON");

    // Garbage that cannot be JSON: a parse error, then a clean close.
    let (v, closed) = raw_exchange(&sock, b"hello, tessera\n", 2);
    assert_eq!(v.len(), 1);
    assert_eq!(error_of(&v[0]).0, -32700);
    assert!(closed);
    let (v, closed) = raw_exchange(&sock, b"{\"a\": [1, 2}", 2);
    assert_eq!(error_of(&v[0]).0, -32700);
    assert!(closed);
    load.still_running("garbage");

    // Invalid requests, unknown methods, bad parameters — each named.
    let cases: Vec<(Vec<u8>, i64, &str)> = vec![
        (
            br#"{"id": 1, "method": "spdk_get_version"}"#.to_vec(),
            -32600,
            "jsonrpc",
        ),
        (
            br#"{"jsonrpc": "2.0", "id": 1, "method": 7}"#.to_vec(),
            -32600,
            "method",
        ),
        (
            br#"{"jsonrpc": "2.0", "id": 1, "method": "m", "params": 3}"#.to_vec(),
            -32600,
            "params",
        ),
        (br#"[]"#.to_vec(), -32600, "empty batch"),
        (
            request(1, "bdev_frobnicate", Value::Null),
            -32601,
            "bdev_frobnicate",
        ),
        (
            request(
                1,
                "bdev_lvol_create",
                json!({"lvol_name": "x", "size_in_mib": "big", "lvs_name": "pool0"}),
            ),
            -32602,
            "\"size_in_mib\": expected an integer",
        ),
        (
            request(
                1,
                "bdev_lvol_create",
                json!({"lvol_name": "x", "size_in_mib": 4}),
            ),
            -32602,
            "missing parameter \"lvs_name\"",
        ),
        (
            request(
                1,
                "bdev_malloc_create",
                json!({"num_blocks": 8, "block_size": 4096, "foo": 1}),
            ),
            -32602,
            "unknown parameter \"foo\"",
        ),
        (
            request(
                1,
                "bdev_lvol_create_lvstore",
                json!({"bdev_name": "Malloc9", "lvs_name": "p9"}),
            ),
            -19,
            "bdev \"Malloc9\" does not exist",
        ),
        (
            request(
                1,
                "bdev_lvol_create",
                json!({"lvol_name": "vd0", "size_in_mib": 4, "lvs_name": "pool0"}),
            ),
            -17,
            "already exists",
        ),
        (
            request(
                1,
                "bdev_lvol_create",
                json!({"lvol_name": "huge", "size_in_mib": 1u64 << 20, "lvs_name": "pool0", "thin_provision": false}),
            ),
            -28,
            "space",
        ),
        (
            request(1, "bdev_malloc_delete", json!({"name": "Malloc0"})),
            -16,
            "in use",
        ),
        (
            request(
                1,
                "nvmf_subsystem_add_ns",
                json!({"nqn": "nqn.2016-06.io.x:none", "namespace": {"bdev_name": "vd0"}}),
            ),
            -19,
            "does not exist",
        ),
        (
            request(1, "bdev_get_bdevs", json!([1, 2])),
            -32602,
            "params must be an object",
        ),
    ];
    for (bytes, code, needle) in cases {
        let (v, closed) = raw_exchange(&sock, &bytes, 1);
        assert!(!closed, "{}", String::from_utf8_lossy(&bytes));
        let (c, msg) = error_of(&v[0]);
        assert_eq!(c, code, "{} -> {msg}", String::from_utf8_lossy(&bytes));
        assert!(msg.contains(needle), "{msg} lacks {needle}");
    }
    load.still_running("bad parameters");

    // A request above 4 MiB: an error, then a clean close; nothing else is disturbed.
    let big = format!(
        "{{\"jsonrpc\": \"2.0\", \"id\": 9, \"method\": \"bdev_get_bdevs\", \"params\": {{\"name\": \"{}\"}}}}",
        "x".repeat(5 << 20)
    );
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(big.as_bytes()); // may fail once the server closes
    });
    let (v, closed) = read_values(&mut s, 2);
    writer.join().unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    let (code, msg) = error_of(&v[0]);
    assert_eq!(code, -32600);
    assert!(msg.contains("4194304"), "{msg}");
    assert!(closed);
    load.still_running("a huge request");

    // A client that leaves in the middle of a request, and one that sends a request and
    // leaves before the answer.
    for cut in [1usize, 20, 40] {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(&request(1, "bdev_get_bdevs", Value::Null)[..cut])
            .unwrap();
        drop(s);
    }
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&request(1, "bdev_lvol_get_lvols", Value::Null))
        .unwrap();
    drop(s);
    assert!(srv.call("spdk_get_version", Value::Null)["version"].is_string());
    load.still_running("clients that left");

    // Pipelined requests as SPDK's client sends them (pretty-printed, newline-separated),
    // split across writes at awkward places: answered in order.
    let mut pipelined = Vec::new();
    for id in 1..=5u64 {
        pipelined.extend(request(id, "bdev_get_bdevs", json!({"name": "vd0"})));
        pipelined.push(b'\n');
    }
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for chunk in pipelined.chunks(37) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let (v, _) = read_values(&mut s, 5);
    let ids: Vec<u64> = v.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert!(
        v.iter()
            .all(|r| r["result"][0]["aliases"][0] == "pool0/vd0")
    );

    // Batches; notifications get no answer.
    let batch = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "spdk_get_version"},
        {"jsonrpc": "2.0", "method": "spdk_get_version"},
        {"jsonrpc": "2.0", "id": "b", "method": "nope"},
        5
    ]);
    let (v, _) = raw_exchange(&sock, batch.to_string().as_bytes(), 1);
    let arr = v[0].as_array().unwrap();
    assert_eq!(arr.len(), 3, "{arr:?}");
    assert_eq!(arr[0]["id"], "a");
    assert_eq!(error_of(&arr[1]).0, -32601);
    assert_eq!(error_of(&arr[2]).0, -32600);
    let mut bytes = br#"{"jsonrpc": "2.0", "method": "spdk_get_version"}"#.to_vec();
    bytes.extend(request(3, "spdk_get_version", Value::Null));
    let (v, _) = raw_exchange(&sock, &bytes, 1);
    assert_eq!(v[0]["id"], 3, "the notification got no answer");
    load.still_running("pipelining and batches");

    // Many clients at once, each with several calls on one connection and some that
    // create and delete disks.
    let threads: Vec<_> = (0..24)
        .map(|t| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut c = tessera::rpc::RpcClient::connect(&sock, Duration::from_secs(60)).unwrap();
                for i in 0..20 {
                    let v = c.call("bdev_get_bdevs", None).unwrap().unwrap();
                    assert!(v.as_array().unwrap().len() >= 2);
                    if i % 10 == 0 {
                        let name = format!("t{t}-{i}");
                        let r = c
                            .call(
                                "bdev_lvol_create",
                                Some(json!({"lvol_name": name, "size_in_mib": 4, "lvs_name": "pool0", "thin_provision": true})),
                            )
                            .unwrap()
                            .unwrap();
                        // The lvol's UUID, as SPDK answers.
                        assert!(uuid::Uuid::parse_str(r.as_str().unwrap()).is_ok(), "{r}");
                        c.call("bdev_lvol_delete", Some(json!({"name": name})))
                            .unwrap()
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    load.still_running("many clients");

    let lvols = srv.call("bdev_lvol_get_lvols", Value::Null);
    assert_eq!(lvols.as_array().unwrap().len(), 1, "{lvols}");
    let ops = load.finish();
    eprintln!("NBD operations completed during the test: {ops}");
    srv.stop();
}

#[test]
fn socket_path_in_use_is_refused() {
    let srv = Serve::start_yaml("cores: [0]\n");
    let out = run(
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", "-s"])
            .arg(&srv.socket)
            .arg("--config")
            .arg(srv.dir.path().join("config.yaml")),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another process is listening"), "{err}");
    // The first server still answers.
    assert!(srv.call("spdk_get_version", Value::Null)["version"].is_string());
    let mut s = UnixStream::connect(&srv.socket).unwrap();
    s.write_all(&request(1, "framework_get_reactors", Value::Null))
        .unwrap();
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(s.read(&mut b).unwrap() > 0);
    srv.stop();
}

/// Waits up to `limit` for `child` to exit; kills it and fails the test if it does not.
fn exits_within(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tessera ARGS` with debug logs to a stderr pipe whose reading end is already closed.
fn with_closed_stderr(args: &[&std::ffi::OsStr]) -> std::process::Child {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    child
}

/// A log destination that goes away (stderr a pipe whose reader closed: a log collector
/// restarted, `| head`) costs the logs, never the target: the reactors keep serving and
/// the process stops cleanly. (Before: the failed log write made tracing-subscriber
/// `eprintln!` on the same broken pipe, which panicked the reactor; the abort that should
/// follow a reactor panic panicked the same way, and the process hung.)
#[test]
fn a_closed_log_pipe_costs_the_logs_not_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("t.sock");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "cores: [0]\nidle: adaptive\n").unwrap();
    let mut child = with_closed_stderr(&[
        "serve".as_ref(),
        "-c".as_ref(),
        cfg.as_os_str(),
        "-s".as_ref(),
        socket.as_os_str(),
    ]);
    let end = Instant::now() + Duration::from_secs(60);
    while UnixStream::connect(&socket).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        assert!(Instant::now() < end, "serve never opened its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = tessera::rpc::RpcClient::connect(&socket, Duration::from_secs(30)).unwrap();
    // Each of these logs on a reactor.
    for i in 0..20 {
        let name = format!("M{i}");
        c.call(
            "bdev_malloc_create",
            Some(json!({"name": name, "num_blocks": 256, "block_size": 4096})),
        )
        .unwrap()
        .unwrap();
        c.call("bdev_malloc_delete", Some(json!({"name": name})))
            .unwrap()
            .unwrap();
    }
    let v = c.call("spdk_get_version", None).unwrap().unwrap();
    assert!(v["version"].as_str().unwrap().starts_with("tessera"), "{v}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let st = exits_within(&mut child, Duration::from_secs(30), "tessera serve");
    assert!(st.success(), "tessera serve: {st}");

    // A benchmark likewise runs to its end.
    let mut bench = with_closed_stderr(
        &[
            "bench",
            "--bdev",
            "null:64MiB",
            "-t",
            "1",
            "--idle",
            "adaptive",
        ]
        .map(std::ffi::OsStr::new),
    );
    let st = exits_within(&mut bench, Duration::from_secs(60), "tessera bench");
    assert!(st.success(), "tessera bench: {st}");
}

/// The RPC socket is the owner's alone (mode 0600) unless `--rpc-group` opens it to a
/// group (0660, that group); an unknown group stops `serve` with the group named. A
/// target whose NBD server listens off loopback without TLS (no access control) logs a
/// warning at start naming the address.
#[test]
fn the_rpc_socket_is_private_and_listeners_open_to_all_are_warned_about() {
    use std::os::unix::fs::MetadataExt;
    let port = free_port_for_nbd();
    let srv = Serve::start_yaml(&format!(
        "cores: [0]\nbdevs: [{{type: malloc, name: M0, size: 1MiB}}]\nnbd: {{listen: '0.0.0.0:{port}', exports: [{{name: e, bdev: M0}}]}}\n"
    ));
    let m = std::fs::metadata(&srv.socket).unwrap();
    assert_eq!(m.mode() & 0o777, 0o600, "mode {:o}", m.mode());
    let log = srv.stop();
    assert!(
        log.contains(&format!("the NBD server listens on 0.0.0.0:{port}"))
            && log.contains("not a loopback address"),
        "{log}"
    );

    // SAFETY: getgid has no preconditions.
    let gid = unsafe { libc::getgid() };
    let srv = Serve::start_yaml_args("cores: [0]\n", &["--rpc-group", &gid.to_string()]);
    let m = std::fs::metadata(&srv.socket).unwrap();
    assert_eq!(
        (m.mode() & 0o777, m.gid()),
        (0o660, gid),
        "mode {:o}",
        m.mode()
    );
    let log = srv.stop();
    assert!(!log.contains("not a loopback address"), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "cores: [0]\n").unwrap();
    let out = run(
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", "--rpc-group", "no-such-group-here", "-s"])
            .arg(dir.path().join("rpc.sock"))
            .arg("--config")
            .arg(&cfg),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--rpc-group") && err.contains("`no-such-group-here` does not exist"),
        "{err}"
    );
    assert!(!dir.path().join("rpc.sock").exists());
}

/// A free TCP port on all addresses.
fn free_port_for_nbd() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
