//! SPDK's own tools (`../shared/spdk`, or `$TESSERA_SPDK_DIR`) for the interoperability
//! tests: where they are, how to start one with a time limit, transport IDs, and a
//! background process that is killed by PID when dropped. A missing tool fails the test
//! (scripts/test.sh checks them and installs their runtime libraries before the tests).
#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use super::process_support::run;

/// SPDK's folder: `$TESSERA_SPDK_DIR`, else `../shared/spdk` beside the repository.
pub fn dir() -> PathBuf {
    let d = std::env::var_os("TESSERA_SPDK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/spdk"));
    let run = d.join("run");
    assert!(
        run.is_file(),
        "SPDK's tools are not at {} (no `run` there): the interop tests need them; set \
         TESSERA_SPDK_DIR to the folder that holds `run`, `bin/` and `lib/`",
        d.display()
    );
    d
}

/// A command running SPDK tool `tool` through `run` (which sets the library path).
pub fn tool(tool: &str) -> Command {
    let d = dir();
    let bin = d.join("bin").join(tool);
    assert!(
        bin.is_file(),
        "SPDK tool {tool} is missing: no {}",
        bin.display()
    );
    let mut c = Command::new(d.join("run"));
    c.arg(tool);
    c
}

/// The DPDK arguments every tool gets here: no hugepages, 1 GiB of ordinary memory.
pub const NO_HUGE: [&str; 3] = ["--no-huge", "-s", "1024"];
/// The application-framework tools (nvmf_tgt, bdevperf, nvme_fuzz) also take these: no
/// PCI scan, no per-core lock files (so two of them may share a core in a test run), and
/// no trace buffer (it is a 3 MiB file in /dev/shm per process, left behind).
pub const APP: [&str; 4] = [
    "--no-pci",
    "--disable-cpumask-locks",
    "--num-trace-entries",
    "0",
];

/// An NVMe/TCP transport ID in SPDK's `key:value` form.
pub fn trid(port: u16, subnqn: &str, hostnqn: Option<&str>) -> String {
    let mut s = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{subnqn}");
    if let Some(h) = hostnqn {
        s.push_str(&format!(" hostnqn:{h}"));
    }
    s
}

/// Runs `spdk_nvme_perf` with `args` on `trid`; asserts it succeeded, reported no error,
/// and returns the total IOPS.
pub fn perf(args: &[&str], trid: &str) -> f64 {
    let out = run_ok(
        tool("spdk_nvme_perf")
            .args(NO_HUGE)
            .args(args)
            .arg("-r")
            .arg(trid),
        Duration::from_secs(90),
    );
    let low = out.to_lowercase();
    assert!(
        !low.contains("error") && !low.contains("fail"),
        "spdk_nvme_perf {args:?} reported errors:\n{out}"
    );
    let total = out
        .lines()
        .find(|l| l.trim_start().starts_with("Total"))
        .unwrap_or_else(|| panic!("no Total line:\n{out}"));
    let iops: f64 = total
        .split_once(':')
        .unwrap()
        .1
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(iops > 0.0, "{args:?}: no I/O completed:\n{out}");
    iops
}

/// Runs `cmd` to completion within `limit`, asserting success; returns stdout + stderr.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, limit);
    let text = text_of(&out);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{text}",
        out.status
    );
    text
}

pub fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A process in the background, its output in a file; killed (by PID) when dropped.
pub struct Background {
    child: Option<Child>,
    pub log: PathBuf,
    shown: String,
}

impl Background {
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Background {
        let f = std::fs::File::create(&log).unwrap();
        let shown = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        Background {
            child: Some(child),
            log,
            shown,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits up to `limit` for the process to exit; returns its success and its output.
    pub fn wait(mut self, limit: Duration) -> (bool, String) {
        let mut c = self.child.take().unwrap();
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return (st.success(), self.text());
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} did not finish within {limit:?}:\n{}",
                    self.shown,
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process (SIGINT, then SIGKILL after `grace`) and returns its output.
    pub fn stop(mut self, grace: Duration) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let end = Instant::now() + grace;
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return self.text();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.text()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until a TCP listener answers on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, limit: Duration, proc_: &mut Background) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            proc_.is_running(),
            "exited before listening:\n{}",
            proc_.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "nothing listens on port {port} after {limit:?}:\n{}",
        proc_.text()
    );
}

/// SPDK's `nvmf_tgt` on CPU 1 with the JSON config `cfg` (written to
/// `dir/nvmf_tgt.json`), its RPC socket `dir/spdk.sock` and its log `dir/nvmf_tgt.log`;
/// returns once it listens on `port`.
pub fn nvmf_tgt(dir: &std::path::Path, port: u16, cfg: &serde_json::Value) -> Background {
    let p = dir.join("nvmf_tgt.json");
    std::fs::write(&p, cfg.to_string()).unwrap();
    let mut t = Background::spawn(
        tool("nvmf_tgt")
            .args(APP)
            .args(NO_HUGE)
            .args(["-m", "0x2", "-r"])
            .arg(dir.join("spdk.sock"))
            .arg("--json")
            .arg(&p),
        dir.join("nvmf_tgt.log"),
    );
    wait_listening(port, Duration::from_secs(60), &mut t);
    t
}

/// `qemu-io -c cmd` on `uri` (raw); its output, asserting it succeeded and verified.
pub fn qemu_io(uri: &str, cmd: &str) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", "-c", cmd, uri]);
    let shown = format!("{c:?}");
    let out = run(&mut c, Duration::from_secs(60));
    let text = text_of(&out);
    assert!(
        out.status.success() && !text.contains("Pattern verification failed"),
        "{shown}:\n{text}"
    );
    text
}

/// A bdevperf config written to `dir/name.json`: SPDK's keyring with `keys` (name, key
/// file), one controller `Nvme0` attached over NVMe/TCP to 127.0.0.1:`port`, `subnqn`, as
/// `hostnqn`, with the attach parameters `params` added (e.g. `psk`, `dhchap_key`,
/// naming keys of that keyring).
pub fn bdevperf_config(
    dir: &Path,
    name: &str,
    port: u16,
    subnqn: &str,
    hostnqn: &str,
    keys: &[(&str, &Path)],
    params: &[(&str, &str)],
) -> PathBuf {
    let keyring: Vec<Value> = keys
        .iter()
        .map(|(n, p)| json!({"method": "keyring_file_add_key", "params": {"name": n, "path": p}}))
        .collect();
    let mut attach = json!({
        "name": "Nvme0", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
        "trsvcid": port.to_string(), "subnqn": subnqn, "hostnqn": hostnqn,
    });
    for (k, v) in params {
        attach[*k] = json!(v);
    }
    let cfg = json!({"subsystems": [
        {"subsystem": "keyring", "config": keyring},
        {"subsystem": "bdev", "config": [
            {"method": "bdev_nvme_attach_controller", "params": attach}]}]});
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

/// bdevperf with the config `cfg` on CPU 1: a 4 KiB verify workload at queue depth 16
/// for `secs` seconds, its output in `log`.
pub fn bdevperf(cfg: &Path, secs: u32, log: PathBuf) -> Background {
    Background::spawn(
        tool("bdevperf")
            .args(APP)
            .args(NO_HUGE)
            .args(["-m", "0x2", "--json"])
            .arg(cfg)
            .args(["-q", "16", "-o", "4096", "-w", "verify", "-t"])
            .arg(secs.to_string()),
        log,
    )
}

/// [`bdevperf`] with its RPC server on `sock` (SPDK's `-r`), so that a test can call
/// it while the workload runs (e.g. `bdev_nvme_set_keys`).
pub fn bdevperf_with_rpc(cfg: &Path, secs: u32, sock: &Path, log: PathBuf) -> Background {
    Background::spawn(
        tool("bdevperf")
            .args(APP)
            .args(NO_HUGE)
            .args(["-m", "0x2", "-r"])
            .arg(sock)
            .arg("--json")
            .arg(cfg)
            .args(["-q", "16", "-o", "4096", "-w", "verify", "-t"])
            .arg(secs.to_string()),
        log,
    )
}

/// Asserts a bdevperf run succeeded with I/O and no failure.
pub fn assert_verified(ok: bool, out: &str) {
    assert_verified_at(ok, out, 100.0);
}

/// [`assert_verified`], with at least `min_iops` I/O a second.
pub fn assert_verified_at(ok: bool, out: &str, min_iops: f64) {
    assert!(ok, "bdevperf failed:\n{out}");
    assert!(!out.contains("mismatch"), "bdevperf found bad data:\n{out}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("Nvme0n1") && l.contains(':'))
        .unwrap_or_else(|| panic!("no result line:\n{out}"));
    let cols: Vec<f64> = line
        .split_once(':')
        .unwrap()
        .1
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    assert!(cols[1] > min_iops, "IOPS {}:\n{out}", cols[1]);
    assert_eq!(cols[3], 0.0, "Fail/s:\n{out}");
}

/// Runs a short bdevperf expected to fail to attach; returns its output. Its output must
/// say "Failed to attach nvme ctrlr" or `or_says` (what the caller's refusal reports).
pub fn refused(cfg: &Path, log: PathBuf, or_says: &str) -> String {
    let (ok, out) = bdevperf(cfg, 2, log).wait(Duration::from_secs(60));
    assert!(!ok, "bdevperf attached where it must not:\n{out}");
    assert!(
        out.contains("Failed to attach nvme ctrlr") || out.contains(or_says),
        "{out}"
    );
    out
}
