//! The Prometheus endpoint of `tessera serve --metrics ADDR`: `GET /metrics` answers in
//! Prometheus's text format (version 0.0.4) with, per bdev (a virtual disk's is its
//! UUID, with its `lvs/lvol` alias as a label):
//!
//! - `tessera_bdev_ops_total{op}` and `tessera_bdev_bytes_total{op}`: completed
//!   requests and their bytes by direction (`read`, `write`, `unmap`, `write_zeroes`,
//!   `flush`), counters — their rate is IOPS and throughput;
//! - `tessera_bdev_io_errors_total{status}`: failed requests by status;
//! - `tessera_bdev_latency_seconds{op}`: a histogram of the latencies (cumulative `le`
//!   buckets at powers of two of the tick, `_sum`, `_count`);
//! - `tessera_bdev_size_bytes`; for virtual disks `tessera_lvol_allocated_bytes` (the
//!   segments counted to the disk, as `bdev_lvol_get_lvols` counts them) and
//!   `tessera_lvol_shared_bytes`; per pool `tessera_lvs_size_bytes` and
//!   `tessera_lvs_free_bytes`.
//!
//! A small HTTP/1.1 responder on a thread of its own (a scrape every few seconds needs
//! no more): one request per connection, a 5 s limit to read it, and the numbers
//! gathered from the reactors by message ([`crate::bdev::stats::collect`]) within
//! [`STATS_TIMEOUT`]; past it the scrape is answered 503.

use super::methods::stats::STATS_TIMEOUT;
use crate::bdev::IoKind;
use crate::bdev::stats::{self, IoStat, KINDS, Query, STATUSES};
use crate::target::Target;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint {addr}: {cause}")]
    Bind { addr: String, cause: std::io::Error },
}

/// A running metrics endpoint; [`MetricsServer::stop`] (or dropping it) ends it.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` (`127.0.0.1:9464`) and serves `target`'s statistics.
    pub fn start(target: Target, addr: &str) -> Result<MetricsServer, MetricsError> {
        let bind = |cause| MetricsError::Bind {
            addr: addr.to_string(),
            cause,
        };
        let listener = TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-metrics".into())
            .spawn(move || serve(listener, target, s))
            .map_err(bind)?;
        tracing::info!(addr = %local, "metrics endpoint listening (GET /metrics)");
        Ok(MetricsServer {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(listener: TcpListener, target: Target, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((conn, peer)) => {
                if let Err(e) = answer(conn, &target) {
                    tracing::debug!(%peer, error = %e, "metrics connection failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The longest request head read.
const MAX_HEAD: usize = 8192;

/// Reads one request and answers it.
fn answer(mut conn: TcpStream, target: &Target) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = Instant::now() + Duration::from_secs(5);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD || Instant::now() > end {
            return respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large or too slow\n",
            );
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(path), Some(version)) = (method, path, version) else {
        return respond(
            &mut conn,
            "400 Bad Request",
            "text/plain",
            "malformed request line\n",
        );
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return respond(
            &mut conn,
            "400 Bad Request",
            "text/plain",
            "malformed request line\n",
        );
    }
    let path = path.split('?').next().unwrap_or(path);
    if path != "/metrics" {
        return respond(
            &mut conn,
            "404 Not Found",
            "text/plain",
            "only /metrics is served here\n",
        );
    }
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut conn,
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n",
        );
    }
    match scrape(target) {
        Ok(body) => respond(
            &mut conn,
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            if method == "HEAD" { "" } else { &body },
        ),
        Err(e) => respond(
            &mut conn,
            "503 Service Unavailable",
            "text/plain",
            &format!("{e}\n"),
        ),
    }
}

fn respond(conn: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

/// A bdev as the metrics show it.
struct BdevRow {
    name: String,
    alias: String,
    size: u64,
    stat: IoStat,
}

/// A virtual disk's space.
struct LvolRow {
    uuid: String,
    alias: String,
    allocated: u64,
    shared: u64,
}

/// A pool's space.
struct PoolRow {
    name: String,
    size: u64,
    free: u64,
}

/// Gathers everything on core 0 (within the time limits) and renders it.
fn scrape(target: &Target) -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = target.clone();
    target
        .cores()
        .send(0, move || {
            crate::reactor::spawn_local(async move {
                let _ = tx.send(gather(&t).await);
            })
            .detach();
        })
        .map_err(|e| format!("statistics: {e}"))?;
    let rows = rx
        .recv_timeout(STATS_TIMEOUT * 2 + Duration::from_secs(1))
        .map_err(|_| format!("statistics did not arrive within {:?}", STATS_TIMEOUT * 2))??;
    Ok(render(rows, crate::reactor::tick_rate()))
}

type Rows = (Vec<BdevRow>, Vec<LvolRow>, Vec<PoolRow>);

async fn gather(target: &Target) -> Result<Rows, String> {
    let bdevs = target.bdevs().list();
    let live: HashSet<u64> = bdevs.iter().map(|b| b.id()).collect();
    let q = Query {
        live: Some(live),
        ..Query::default()
    };
    let snaps = stats::collect(target.cores(), q, STATS_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let mut sums: BTreeMap<u64, IoStat> = BTreeMap::new();
    for s in &snaps {
        sums.entry(s.bdev).or_default().add(&s.stat);
    }
    let rows = bdevs
        .iter()
        .map(|b| BdevRow {
            name: b.name().to_string(),
            alias: b.display_name(),
            size: b.num_blocks() * b.block_size() as u64,
            stat: sums.remove(&b.id()).unwrap_or_default(),
        })
        .collect();
    let mut lvols = Vec::new();
    let mut pools = Vec::new();
    for pool in target.pools() {
        let seg = pool.segment_bytes();
        let (total, free) = pool.space();
        pools.push(PoolRow {
            name: pool.name(),
            size: total * seg,
            free: free * seg,
        });
        let list = crate::bdev::stats::within(STATS_TIMEOUT, pool.list())
            .await
            .ok_or_else(|| format!("pool {}: no answer within {STATS_TIMEOUT:?}", pool.name()))?
            .map_err(|e| format!("pool {}: {e}", pool.name()))?;
        for d in list {
            lvols.push(LvolRow {
                uuid: d.uuid.to_string(),
                alias: format!("{}/{}", pool.name(), d.name),
                allocated: d.allocated_segments * d.segment_bytes,
                shared: d.shared_segments * d.segment_bytes,
            });
        }
    }
    Ok((rows, lvols, pools))
}

/// A label value, escaped as the text format requires.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn op_name(k: IoKind) -> &'static str {
    match k {
        IoKind::Read => "read",
        IoKind::Write => "write",
        IoKind::Flush => "flush",
        IoKind::Unmap => "unmap",
        IoKind::WriteZeroes => "write_zeroes",
    }
}

/// The latency buckets: powers of two of the tick, `2^FIRST_LE..=2^LAST_LE` (0.4 µs to
/// 7.5 min at 2.45 GHz), then `+Inf`.
const FIRST_LE: usize = 10;
const LAST_LE: usize = 40;

fn render((bdevs, lvols, pools): Rows, tick_rate: u64) -> String {
    let rate = tick_rate.max(1) as f64;
    let mut o = String::new();
    let fam = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
    };
    let labels = |b: &BdevRow| format!("bdev=\"{}\",alias=\"{}\"", esc(&b.name), esc(&b.alias));

    fam(
        &mut o,
        "tessera_bdev_ops_total",
        "counter",
        "Requests completed successfully, by operation.",
    );
    for b in &bdevs {
        for k in KINDS {
            let _ = writeln!(
                o,
                "tessera_bdev_ops_total{{{},op=\"{}\"}} {}",
                labels(b),
                op_name(k),
                b.stat.kind(k).ops
            );
        }
    }
    fam(
        &mut o,
        "tessera_bdev_bytes_total",
        "counter",
        "Bytes of the requests completed successfully, by operation.",
    );
    for b in &bdevs {
        for k in KINDS.iter().copied().filter(|k| *k != IoKind::Flush) {
            let _ = writeln!(
                o,
                "tessera_bdev_bytes_total{{{},op=\"{}\"}} {}",
                labels(b),
                op_name(k),
                b.stat.kind(k).bytes
            );
        }
    }
    fam(
        &mut o,
        "tessera_bdev_io_errors_total",
        "counter",
        "Requests that failed, by status.",
    );
    for b in &bdevs {
        for (i, st) in STATUSES.iter().enumerate().skip(1) {
            let name = serde_json::to_value(st)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "tessera_bdev_io_errors_total{{{},status=\"{}\"}} {}",
                labels(b),
                name,
                b.stat.errors[i]
            );
        }
    }
    fam(
        &mut o,
        "tessera_bdev_latency_seconds",
        "histogram",
        "Latency of the requests completed successfully, by operation (measured to within one reactor loop iteration).",
    );
    for b in &bdevs {
        for k in KINDS {
            let s = b.stat.kind(k);
            let l = format!("{},op=\"{}\"", labels(b), op_name(k));
            let mut cum: u64 = s.log2[..FIRST_LE].iter().sum();
            for (e, n) in s.log2.iter().enumerate().take(LAST_LE + 1).skip(FIRST_LE) {
                cum += n;
                let le = (1u64 << e) as f64 / rate;
                let _ = writeln!(
                    o,
                    "tessera_bdev_latency_seconds_bucket{{{l},le=\"{le:e}\"}} {cum}"
                );
            }
            let _ = writeln!(
                o,
                "tessera_bdev_latency_seconds_bucket{{{l},le=\"+Inf\"}} {}",
                s.ops
            );
            let _ = writeln!(
                o,
                "tessera_bdev_latency_seconds_sum{{{l}}} {:e}",
                s.latency_ticks as f64 / rate
            );
            let _ = writeln!(o, "tessera_bdev_latency_seconds_count{{{l}}} {}", s.ops);
        }
    }
    // Gauges: one line per row, `name{labels} value`.
    let gauge = |o: &mut String, name: &str, help: &str, rows: Vec<(String, u64)>| {
        fam(o, name, "gauge", help);
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{{{labels}}} {v}");
        }
    };
    let lvol_labels =
        |l: &LvolRow| format!("bdev=\"{}\",alias=\"{}\"", esc(&l.uuid), esc(&l.alias));
    let lvs_labels = |p: &PoolRow| format!("lvs=\"{}\"", esc(&p.name));
    gauge(
        &mut o,
        "tessera_bdev_size_bytes",
        "Size of the bdev.",
        bdevs.iter().map(|b| (labels(b), b.size)).collect(),
    );
    gauge(
        &mut o,
        "tessera_lvol_allocated_bytes",
        "Segments counted to the virtual disk (each segment in use counts to one disk), in bytes.",
        lvols
            .iter()
            .map(|l| (lvol_labels(l), l.allocated))
            .collect(),
    );
    gauge(
        &mut o,
        "tessera_lvol_shared_bytes",
        "Other segments the virtual disk maps (shared with snapshots or clones), in bytes.",
        lvols.iter().map(|l| (lvol_labels(l), l.shared)).collect(),
    );
    gauge(
        &mut o,
        "tessera_lvs_size_bytes",
        "Data space of the pool (lvstore).",
        pools.iter().map(|p| (lvs_labels(p), p.size)).collect(),
    );
    gauge(
        &mut o,
        "tessera_lvs_free_bytes",
        "Free data space of the pool (lvstore).",
        pools.iter().map(|p| (lvs_labels(p), p.free)).collect(),
    );
    o
}
