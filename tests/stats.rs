//! I/O statistics, latency histograms and the Prometheus endpoint, driven by real
//! clients: qemu-io does known I/O over NBD, SPDK's `spdk-rpc` reads the counters
//! (`bdev_get_iostat`, per channel too), turns histograms on and reads them
//! (`bdev_enable_histogram`, `bdev_get_histogram`, decoded as SPDK's
//! `scripts/histogram.py` does), resets them, and gets SPDK's error codes for bad
//! parameters; curl scrapes `serve --metrics` and Python's `prometheus_client` parses
//! the text.

mod process_support;
mod rpc_common;

use rpc_common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

fn config(nbd_port: u16) -> String {
    format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: malloc, name: Malloc0, size: 64MiB}}\n  - {{type: malloc, name: Malloc1, size: 128MiB}}\npools:\n  - {{name: pool0, bdevs: [Malloc1], segment_size: 1MiB}}\ndisks:\n  - {{name: vd0, pool: pool0, size: 32MiB, thin: true}}\nnbd:\n  listen: 127.0.0.1:{nbd_port}\n  exports: [{{name: m0, bdev: Malloc0}}, {{name: vd0, bdev: pool0/vd0}}]\n"
    )
}

fn spdk(tool: &Path, socket: &Path, args: &[&str]) -> Value {
    let out = run_ok(Command::new(tool).arg("-s").arg(socket).args(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// `spdk-rpc` fails; returns its output (which holds SPDK's error object).
fn spdk_fails(tool: &Path, socket: &Path, args: &[&str]) -> String {
    run_fails(Command::new(tool).arg("-s").arg(socket).args(args))
}

/// Three writes (16 KiB) and two reads (20 KiB), each one NBD request; qemu-io adds a
/// flush when it closes, and nothing else: traced with `qemu-io -T nbd_send_request`
/// (qemu 10.0) it sends exactly these 3 writes, 2 reads and 1 flush, no read of its own
/// when it opens the export. (A malloc bdev counts one 4 KiB read more, before any
/// client: the target's examine reading it for a pool label.)
const IO: &[&str] = &[
    "write -P 0xa5 0 4k",
    "write -P 0xa5 4k 4k",
    "write -P 0x5a 8k 8k",
    "read -P 0xa5 0 8k",
    "read 0 12k",
];

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

/// All requests the statistics counted, every kind.
fn all_ops(v: &Value) -> u64 {
    [
        "num_read_ops",
        "num_write_ops",
        "num_unmap_ops",
        "num_write_zeroes_ops",
        "num_flush_ops",
    ]
    .iter()
    .map(|k| u(v, k))
    .sum()
}

/// `bdev_get_iostat` counts exactly what qemu-io did through NBD, on the bdev it was
/// done to: a malloc bdev, and a virtual disk (named by alias; its requests count on the
/// disk, not again on the pool's base bdev). Per channel, the cores' counts add up to
/// the total. A histogram turned on before the I/O holds one value per request, in
/// SPDK's encoding. Resets reset. Bad parameters get SPDK's codes.
#[test]
fn iostat_and_histograms_count_what_qemu_io_did() {
    let tool = spdk_rpc();
    let nbd = free_port();
    let srv = Serve::start_yaml(&config(nbd));
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| spdk(&tool, &s, args);
    let fails = |args: &[&str]| spdk_fails(&tool, &s, args);
    // spdk-rpc prints nothing for the methods that answer `true`.
    let quiet = |args: &[&str]| {
        run_ok(Command::new(&tool).arg("-s").arg(&s).args(args));
    };

    // Before any client: the examine's label read, nothing else.
    let examined = rpc(&["bdev_get_iostat", "--names", "Malloc0"])["bdevs"][0].clone();
    assert_eq!(
        (
            u(&examined, "num_read_ops"),
            u(&examined, "bytes_read"),
            all_ops(&examined)
        ),
        (1, 4096, 1),
        "Malloc0 before any client: {examined}"
    );
    quiet(&["bdev_enable_histogram", "Malloc0", "--histogram"]);
    qemu_io(nbd, "m0", IO);
    let base_reads = |rpc: &dyn Fn(&[&str]) -> Value| {
        u(
            &rpc(&["bdev_get_iostat", "--names", "Malloc1"])["bdevs"][0],
            "num_read_ops",
        )
    };
    let before = base_reads(&rpc);
    qemu_io(nbd, "vd0", IO);
    // The disk's requests count once, on the disk: the base bdev under the pool counts
    // the pool's own metadata I/O, never the disk's 2 reads.
    assert_eq!(base_reads(&rpc), before, "Malloc1 counted the disk's reads");

    let all = rpc(&["bdev_get_iostat"]);
    assert!(u(&all, "tick_rate") > 1_000_000, "{all}");
    assert!(u(&all, "ticks") > 0, "{all}");
    let names: Vec<&str> = all["bdevs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Malloc0") && names.contains(&"Malloc1"),
        "{all}"
    );

    let vd0_uuid = srv.call("bdev_get_bdevs", json!({"name": "pool0/vd0"}))[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // What qemu-io sent, plus Malloc0's examine read.
    for (name, shown, reads) in [
        ("Malloc0", "Malloc0", (3, 24576)),
        ("pool0/vd0", vd0_uuid.as_str(), (2, 20480)),
    ] {
        let v = rpc(&["bdev_get_iostat", "--names", name]);
        let b = &v["bdevs"][0];
        assert_eq!(b["name"], shown, "{v}");
        assert_eq!(
            (u(b, "num_write_ops"), u(b, "bytes_written")),
            (3, 16384),
            "{name}: {b}"
        );
        assert_eq!(
            (u(b, "num_read_ops"), u(b, "bytes_read")),
            reads,
            "{name}: {b}"
        );
        assert_eq!(u(b, "num_flush_ops"), 1, "{name}: {b}");
        assert_eq!(
            (u(b, "num_unmap_ops"), u(b, "num_copy_ops")),
            (0, 0),
            "{name}: {b}"
        );
        assert_eq!(b["io_error"], json!({}), "{name}: {b}");
        for k in ["read", "write"] {
            let (sum, max, min) = (
                u(b, &format!("{k}_latency_ticks")),
                u(b, &format!("max_{k}_latency_ticks")),
                u(b, &format!("min_{k}_latency_ticks")),
            );
            // Submitted by a task, completed in a later phase of the loop: never 0.
            assert!(min > 0 && max >= min && sum >= max, "{name} {k}: {b}");
        }
    }

    // Per channel: the cores that served Malloc0, adding up to the total.
    let pc = rpc(&["bdev_get_iostat", "--names", "Malloc0", "--per-channel"]);
    assert_eq!(pc["name"], "Malloc0", "{pc}");
    let chans = pc["channels"].as_array().unwrap();
    assert!(!chans.is_empty(), "{pc}");
    let mut writes = 0;
    for c in chans {
        let t = u(c, "thread_id");
        assert!(
            (1..=2).contains(&t),
            "thread ids are the cores' (1, 2): {pc}"
        );
        writes += u(c, "num_write_ops");
    }
    assert_eq!(writes, 3, "{pc}");
    let total = rpc(&["bdev_get_iostat", "--names", "Malloc0"])["bdevs"][0].clone();

    // The histogram: SPDK's fields; one value per request Malloc0 completed.
    let h = rpc(&["bdev_get_histogram", "Malloc0"]);
    let (g, lo, hi) = (u(&h, "granularity"), u(&h, "min_range"), u(&h, "max_range"));
    assert_eq!(g, 7, "{h}");
    assert_eq!(u(&h, "tsc_rate"), u(&all, "tick_rate"), "{h}");
    let raw = base64_decode(h["histogram"].as_str().unwrap());
    assert_eq!(raw.len() as u64, ((hi - lo + 1) << g) * 8, "{h}");
    let counted: u64 = raw
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .sum();
    // Turned on after the examine, before the client: qemu-io's 6 requests.
    assert_eq!(
        counted,
        all_ops(&total) - all_ops(&examined),
        "histogram {h} vs iostat {total}"
    );
    assert_eq!(counted, 6, "{total}");

    // Only writes, from now on (new options start from zero).
    quiet(&[
        "bdev_enable_histogram",
        "Malloc0",
        "--histogram",
        "-o",
        "write",
        "--granularity",
        "3",
    ]);
    qemu_io(nbd, "m0", &["write 0 4k", "read 0 4k", "read 0 4k"]);
    let h = rpc(&["bdev_get_histogram", "Malloc0"]);
    assert_eq!(u(&h, "granularity"), 3, "{h}");
    let counted: u64 = base64_decode(h["histogram"].as_str().unwrap())
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .sum();
    assert_eq!(counted, 1, "one write since: {h}");
    // Off: the histogram reads as zeros.
    quiet(&["bdev_enable_histogram", "Malloc0", "--no-histogram"]);
    let h = rpc(&["bdev_get_histogram", "Malloc0"]);
    assert!(
        base64_decode(h["histogram"].as_str().unwrap())
            .iter()
            .all(|b| *b == 0),
        "{h}"
    );

    // Resets: max/min only, then everything.
    quiet(&["bdev_reset_iostat", "-b", "Malloc0", "-m", "maxmin"]);
    let b = rpc(&["bdev_get_iostat", "--names", "Malloc0"])["bdevs"][0].clone();
    assert_eq!(
        (u(&b, "num_write_ops"), u(&b, "max_write_latency_ticks")),
        (4, 0),
        "{b}"
    );
    // reset_mode resets after reading.
    let b = rpc(&[
        "bdev_get_iostat",
        "--names",
        "Malloc0",
        "--reset-mode",
        "all",
    ])["bdevs"][0]
        .clone();
    assert_eq!(u(&b, "num_write_ops"), 4, "{b}");
    let b = rpc(&["bdev_get_iostat", "--names", "Malloc0"])["bdevs"][0].clone();
    assert_eq!(all_ops(&b), 0, "{b}");
    quiet(&["bdev_reset_iostat"]);
    let b = rpc(&["bdev_get_iostat", "--names", "pool0/vd0"])["bdevs"][0].clone();
    assert_eq!(all_ops(&b), 0, "{b}");

    // Bad parameters: SPDK's codes (and a message naming what is wrong).
    let code = |out: &str, c: i64| {
        assert!(
            out.contains(&format!("\"code\": {c}")),
            "expected code {c}:\n{out}"
        );
    };
    code(&fails(&["bdev_get_iostat", "--names", "Nope"]), -19);
    code(&fails(&["bdev_get_iostat", "--per-channel"]), -22);
    code(
        &fails(&[
            "bdev_get_iostat",
            "--names",
            "Malloc0,Malloc1",
            "--per-channel",
        ]),
        -22,
    );
    code(
        &fails(&["bdev_enable_histogram", "Nope", "--histogram"]),
        -19,
    );
    code(
        &fails(&[
            "bdev_enable_histogram",
            "Malloc0",
            "--histogram",
            "-o",
            "bogus",
        ]),
        -32603,
    );
    // A granularity too big to allocate: -ENOMEM, SPDK's code when its histogram's
    // allocation fails (it has no bound of its own). SPDK v25.09 answers the enable
    // `true` and -12 at the next bdev_get_histogram; tessera refuses at once.
    code(
        &fails(&[
            "bdev_enable_histogram",
            "Malloc0",
            "--histogram",
            "--granularity",
            "40",
        ]),
        -12,
    );
    code(
        &fails(&[
            "bdev_enable_histogram",
            "Malloc0",
            "--histogram",
            "--min-nsec",
            "5000",
            "--max-nsec",
            "100",
        ]),
        -22,
    );
    code(&fails(&["bdev_get_histogram", "Nope"]), -19);
    code(&fails(&["bdev_get_histogram", "Malloc1"]), -12);
    code(&fails(&["bdev_reset_iostat", "-b", "Nope"]), -19);
    let err = |m: &str, p: Value| {
        let e = srv.call_err(m, p);
        (e.code, e.message)
    };
    let (c, m) = err(
        "bdev_get_iostat",
        json!({"name": "Malloc0", "names": ["Malloc0"]}),
    );
    assert_eq!(c, -22, "{m}");
    let (c, m) = err("bdev_get_iostat", json!({"reset_mode": "sometimes"}));
    assert!(c == -32602 && m.contains("reset_mode"), "{c} {m}");
    let (c, m) = err("bdev_get_iostat", json!({"per_channel": "yes"}));
    assert!(c == -32602 && m.contains("per_channel"), "{c} {m}");
    let (c, m) = err("bdev_enable_histogram", json!({"name": "Malloc0"}));
    assert!(c == -32602 && m.contains("enable"), "{c} {m}");
    let (c, m) = err("bdev_get_histogram", json!({}));
    assert!(c == -32602 && m.contains("name"), "{c} {m}");
    let (c, m) = err("bdev_reset_iostat", json!({"mode": "half"}));
    assert!(c == -32602 && m.contains("mode"), "{c} {m}");
    srv.stop();
}

/// `serve --metrics`: curl gets Prometheus text that `prometheus_client` parses, with
/// the per-disk families — requests and bytes by direction matching what qemu-io did,
/// a latency histogram whose cumulative buckets end at its count, sizes, and the
/// space a virtual disk took. Other paths are 404.
#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let nbd = free_port();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let srv = Serve::start_yaml_args(&config(nbd), &["--metrics", &addr]);
    qemu_io(nbd, "m0", IO);
    qemu_io(nbd, "vd0", IO);

    let url = format!("http://{addr}/metrics");
    let text = run_ok(Command::new("curl").args(["-sSf", "--max-time", "20", &url]));
    let script = r#"
import json, sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    sys.exit("python3 module prometheus_client is missing: pip install prometheus_client")
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let find = |name: &str, labels: &[(&str, &str)]| -> Vec<&Value> {
        samples
            .iter()
            .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .collect()
    };
    let one = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let f = find(name, labels);
        assert_eq!(f.len(), 1, "{name} {labels:?}: {f:?}\n{text}");
        f[0]["value"].as_f64().unwrap()
    };
    // qemu-io's 3 writes and 2 reads; Malloc0 also counts its examine's label read.
    for (alias, reads, read_bytes) in [("Malloc0", 3.0, 24576.0), ("pool0/vd0", 2.0, 20480.0)] {
        let l = |op: &'static str| [("alias", alias), ("op", op)];
        assert_eq!(one("tessera_bdev_ops_total", &l("write")), 3.0, "{alias}");
        assert_eq!(one("tessera_bdev_ops_total", &l("read")), reads, "{alias}");
        assert_eq!(
            one("tessera_bdev_bytes_total", &l("write")),
            16384.0,
            "{alias}"
        );
        assert_eq!(
            one("tessera_bdev_bytes_total", &l("read")),
            read_bytes,
            "{alias}"
        );
        for op in ["read", "write"] {
            let buckets = find("tessera_bdev_latency_seconds_bucket", &l(op));
            assert!(buckets.len() > 10, "{alias} {op}");
            let mut last = (f64::MIN, 0.0);
            for b in &buckets {
                let le = b["labels"]["le"].as_str().unwrap();
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                let v = b["value"].as_f64().unwrap();
                assert!(
                    le > last.0 && v >= last.1,
                    "{alias} {op}: buckets not cumulative: {buckets:?}"
                );
                last = (le, v);
            }
            assert_eq!(last.0, f64::INFINITY);
            let count = one("tessera_bdev_latency_seconds_count", &l(op));
            assert_eq!(last.1, count, "{alias} {op}: +Inf bucket is the count");
            let ops = if op == "read" { reads } else { 3.0 };
            assert_eq!(count, ops, "{alias} {op}");
        }
        assert_eq!(
            one("tessera_bdev_size_bytes", &[("alias", alias)]),
            if alias == "Malloc0" { 64.0 } else { 32.0 } * 1048576.0
        );
    }
    assert_eq!(
        one("tessera_lvol_allocated_bytes", &[("alias", "pool0/vd0")]),
        1048576.0,
        "the writes took one 1 MiB segment"
    );
    assert!(
        one("tessera_lvs_size_bytes", &[("lvs", "pool0")])
            > one("tessera_lvs_free_bytes", &[("lvs", "pool0")])
    );

    let other = format!("http://{addr}/other");
    let code = run_ok(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "20",
        &other,
    ]));
    assert_eq!(code.trim(), "404");
    srv.stop();
}

/// Standard base64 with padding, as SPDK encodes the histogram.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        let k = chunk.len() * 6 / 8;
        for i in 0..k {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
