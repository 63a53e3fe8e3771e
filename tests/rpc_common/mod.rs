//! Shared by the JSON-RPC integration tests: a `tessera serve` child process on a
//! temporary socket (killed by PID when dropped), a plain client, and SPDK's `spdk-rpc`.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera::rpc::{RpcClient, RpcError};

pub use super::process_support::run;

/// A free TCP port on 127.0.0.1 (bound and released), never one this process was given
/// before: the kernel may hand a released port out again at once, and a test that asks
/// for two ports before binding either (`(free_port(), free_port())`) then gets the same
/// one twice, and its second listener fails with "Address already in use".
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A running `tessera serve`.
pub struct Serve {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Serve {
    /// Starts `tessera serve` on config file `config` (YAML or JSON) with a socket in
    /// `dir`, and waits until the socket answers.
    pub fn start_file(dir: tempfile::TempDir, config: &Path) -> Serve {
        Serve::start_file_args(dir, config, &[])
    }

    /// [`Serve::start_file`] with more arguments for `tessera serve`.
    pub fn start_file_args(dir: tempfile::TempDir, config: &Path, args: &[&str]) -> Serve {
        let socket = dir.path().join("tessera.sock");
        let log = dir.path().join(format!(
            "serve-{}.log",
            Instant::now().elapsed().as_nanos() ^ std::process::id() as u128
        ));
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", "--config"])
            .arg(config)
            .arg("-s")
            .arg(&socket)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("tessera serve starts");
        let mut s = Serve {
            child: Some(child),
            dir,
            socket,
            log,
        };
        s.wait_ready();
        s
    }

    /// Writes `yaml` to a file in a new temporary directory and serves it.
    pub fn start_yaml(yaml: &str) -> Serve {
        Serve::start_yaml_args(yaml, &[])
    }

    /// [`Serve::start_yaml`] with more arguments for `tessera serve`.
    pub fn start_yaml_args(yaml: &str, args: &[&str]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        Serve::start_file_args(dir, &cfg, args)
    }

    fn wait_ready(&mut self) {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("tessera serve exited ({status}):\n{}", self.log_text());
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "tessera serve did not open {}:\n{}",
            self.socket.display(),
            self.log_text()
        );
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client.
    pub fn client(&self) -> RpcClient {
        RpcClient::connect(&self.socket, Duration::from_secs(60)).expect("connects")
    }

    /// Calls `method`, expecting success.
    pub fn call(&self, method: &str, params: Value) -> Value {
        let p = (!params.is_null()).then_some(params);
        match self.client().call(method, p.clone()).expect("transport") {
            Ok(v) => v,
            Err(e) => panic!("{method} {p:?} failed: {e}\n{}", self.log_text()),
        }
    }

    /// Calls `method`, expecting an error.
    pub fn call_err(&self, method: &str, params: Value) -> RpcError {
        let p = (!params.is_null()).then_some(params);
        match self.client().call(method, p.clone()).expect("transport") {
            Ok(v) => panic!("{method} {p:?} succeeded: {v}"),
            Err(e) => e,
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit cleanly.
    pub fn stop(mut self) -> String {
        let mut c = self.child.take().expect("running");
        let pid = c.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                assert!(
                    status.success(),
                    "tessera serve: {status}\n{}",
                    self.log_text()
                );
                break;
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                panic!("tessera serve did not stop:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!self.socket.exists(), "the socket file is removed on exit");
        self.log_text()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SPDK's command-line client, `spdk-rpc` (PyPI package `spdk`). Fails the test when it
/// is not installed or does not run: the RPC tests drive tessera with it, they never skip
/// (scripts/test.sh installs it).
pub fn spdk_rpc() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("spdk-rpc"))
            .find(|p| p.is_file())
    });
    let Some(tool) = found else {
        panic!(
            "`spdk-rpc` is not installed; this test needs it. Install it with \
             `python3 -m pip install spdk` (Python >= 3.9), or run scripts/test.sh, which \
             installs it"
        );
    };
    let out = run(Command::new(&tool).arg("--help"), Duration::from_secs(60));
    assert!(
        out.status.success(),
        "`{}` is on the PATH but does not run ({}): reinstall it with \
         `python3 -m pip install spdk`\n{}",
        tool.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    tool
}

/// `qemu-io` commands on an NBD export, which must all succeed.
pub fn qemu_io(port: u16, export: &str, cmds: &[&str]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    cmd.arg(format!("nbd://127.0.0.1:{port}/{export}"));
    let out = run_ok(&mut cmd);
    assert!(
        !out.contains("failed") && !out.contains("Pattern verification"),
        "qemu-io {cmds:?} on {export}:\n{out}"
    );
}

/// A command's stdout, asserting it succeeded.
pub fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's combined output, asserting it failed.
pub fn run_fails(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, Duration::from_secs(120));
    assert!(!out.status.success(), "{shown} succeeded");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends raw bytes on a new connection and reads until `n` JSON values arrived (or the
/// server closed); returns the values and whether the server closed.
pub fn raw_exchange(socket: &Path, bytes: &[u8], n: usize) -> (Vec<Value>, bool) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    read_values(&mut s, n)
}

/// Reads until `n` JSON values arrived or the peer closed.
pub fn read_values(s: &mut UnixStream, n: usize) -> (Vec<Value>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        loop {
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            match it.next() {
                Some(Ok(v)) => {
                    let used = it.byte_offset();
                    buf.drain(..used);
                    out.push(v);
                }
                _ => break,
            }
        }
        if out.len() >= n {
            return (out, false);
        }
        match s.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (out, true);
            }
            Err(e) => panic!("read: {e} (after {out:?})"),
        }
    }
}

/// The error object of a response.
pub fn error_of(v: &Value) -> (i64, String) {
    let e = v
        .get("error")
        .unwrap_or_else(|| panic!("not an error: {v}"));
    (
        e["code"].as_i64().unwrap(),
        e["message"].as_str().unwrap().to_string(),
    )
}

/// Bytes of the changed (or, without a base, data-holding) runs the RPC reports.
pub fn changed_bytes(srv: &Serve, base: Option<&str>, target: &str) -> u64 {
    let mut off = 0u64;
    let mut total = 0;
    loop {
        let v = match base {
            Some(b) => srv.call(
                "tessera_lvol_get_changed_ranges",
                serde_json::json!({"base": b, "target": target, "offset_blocks": off}),
            ),
            None => srv.call(
                "tessera_lvol_get_allocated_ranges",
                serde_json::json!({"name": target, "offset_blocks": off}),
            ),
        };
        for r in v["ranges"].as_array().unwrap() {
            if base.is_none() && r["state"] != "data" {
                continue;
            }
            total += r["length"].as_u64().unwrap();
        }
        match v["next_offset_blocks"].as_u64() {
            Some(n) => off = n,
            None => return total,
        }
    }
}

/// The sha256 of bdev `bdev` of `srv` (whose NBD server is on `port`), read whole over
/// NBD by nbdcopy into a file of `dir` (removed after).
pub fn digest(srv: &Serve, port: u16, bdev: &str, dir: &Path) -> String {
    let export = format!("x-{}", bdev.replace('/', "-"));
    srv.call(
        "nbd_start_export",
        serde_json::json!({"bdev_name": bdev, "name": export, "read_only": true}),
    );
    let file = dir.join(format!("{export}-{port}.img"));
    run_ok(
        Command::new("nbdcopy")
            .arg(format!("nbd://127.0.0.1:{port}/{export}"))
            .arg(&file),
    );
    srv.call("nbd_stop_export", serde_json::json!({"name": export}));
    let out = run_ok(Command::new("sha256sum").arg(&file));
    std::fs::remove_file(&file).unwrap();
    out.split_whitespace().next().unwrap().to_string()
}
