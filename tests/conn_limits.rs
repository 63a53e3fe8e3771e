//! Connection limits and bounded per-connection memory, against `tessera serve` (a
//! process of its own, so that its resident memory can be read from /proc): NVMe/TCP
//! connections past `max_connections_per_listener` or `max_connections_per_host` (by
//! source address: the tests connect from 127.0.0.2, 127.0.0.3, … to tell hosts apart)
//! are closed before their ICReq, an I/O queue past `max_io_qpairs_per_ctrlr` is refused
//! with SPDK's status, `spdk_nvme_perf -P 4` past a host limit fails while `-P 2` runs;
//! NBD connections past `max_connections` / `max_connections_per_host` are closed before
//! the greeting while `nbdinfo` is served; and hostile clients that write requests as
//! fast as they can and never read a reply leave the target's memory bounded and another
//! client served. A listener's own `max_connections` / `max_connections_per_host` refuse
//! past them (SPDK's identify too) while another listener serves; NBD clients that send
//! large writes and withhold their payloads hold at most `max_buffer_bytes` together,
//! the ones left waiting are closed after `buffer_wait_timeout_ms`, and `nbdcopy` is
//! served once they are gone.

mod nbd_support;
mod nvmf_common;
mod process_support;
mod rpc_common;
mod spdk_support;

use rpc_common::{Serve, free_port};
use serde_json::{Value, json};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tessera::nvme::pdu;
use tessera::nvme::spec::{self, Status};

const NQN: &str = "nqn.2026-12.io.tessera:limits";

/// A TCP connection from source address `src` (any 127/8 address is loopback on Linux).
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only");
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `socket` returns a new descriptor (checked) that the TcpStream then owns
    // and closes, on every path; `bind` and `connect` read a sockaddr_in that lives on
    // this stack frame for the whole call, with its true length.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = TcpStream::from_raw_fd(fd);
        let a = sockaddr(src, 0);
        if libc::bind(fd, (&raw const a).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let b = sockaddr(*dst.ip(), dst.port());
        if libc::connect(fd, (&raw const b).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(s)
    }
}

fn host(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// An NVMe/TCP connection from `src`: `Some` once its ICReq was answered, `None` if the
/// target closed it instead.
fn nvme_conn(src: Ipv4Addr, dst: SocketAddr) -> Option<TcpStream> {
    let mut s = connect_from(src, dst).expect("TCP connect");
    let mut v = Vec::new();
    pdu::put_ic_req(
        &mut v,
        &pdu::IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: false,
            data_digest: false,
            maxr2t: 0,
        },
    );
    let _ = s.write_all(&v);
    let mut resp = [0u8; 128];
    match s.read_exact(&mut resp) {
        Ok(()) => {
            assert_eq!(resp[0], 0x01, "an ICResp");
            Some(s)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            panic!("neither an ICResp nor a close within 5 s")
        }
        Err(_) => None,
    }
}

/// An NBD connection from `src`: `Some` once the greeting arrived, `None` if the server
/// closed it instead.
fn nbd_conn(src: Ipv4Addr, dst: SocketAddr) -> Option<TcpStream> {
    let mut s = connect_from(src, dst).expect("TCP connect");
    let mut g = [0u8; 18];
    match s.read_exact(&mut g) {
        Ok(()) => {
            assert_eq!(&g[..8], b"NBDMAGIC");
            Some(s)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            panic!("neither a greeting nor a close within 5 s")
        }
        Err(_) => None,
    }
}

/// Retries `f` for up to 5 s (a closed connection is counted out when the target's task
/// for it ends, a moment after the client closed).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not within 5 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nvmf_yaml(port: u16, transport: &str) -> String {
    format!(
        r#"cores: [0]
idle: adaptive
bdevs:
  - {{type: null, name: Null0, size: 1GiB, block_size: 4096}}
nvmf:
  transport: {{{transport}}}
  subsystems:
    - nqn: {NQN}
      allow_any_host: true
      listeners: [{{address: 127.0.0.1, port: {port}}}]
      namespaces: [{{bdev: Null0, nsid: 1}}]
"#
    )
}

fn identify(port: u16) -> String {
    spdk_support::run_ok(
        spdk_support::tool("spdk_nvme_identify")
            .args(spdk_support::NO_HUGE)
            .arg("-r")
            .arg(spdk_support::trid(port, NQN, None)),
        Duration::from_secs(60),
    )
}

#[test]
fn nvme_tcp_connections_past_the_listener_and_host_limits_are_closed_before_icreq() {
    let port = free_port();
    let srv = Serve::start_yaml(&nvmf_yaml(
        port,
        "max_connections_per_listener: 6, max_connections_per_host: 3",
    ));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Three from 127.0.0.2 are served; the fourth is closed at once.
    let mut two: Vec<TcpStream> = (0..3)
        .map(|i| nvme_conn(host(2), addr).unwrap_or_else(|| panic!("connection {i} refused")))
        .collect();
    assert!(
        nvme_conn(host(2), addr).is_none(),
        "a 4th connection from 127.0.0.2 was served (limit 3 per host)"
    );
    // Another host is served meanwhile: SPDK's identify from 127.0.0.1.
    let out = identify(port);
    assert!(out.contains("Serial Number"), "{out}");
    // Two from 127.0.0.3 and one from 127.0.0.4 fill the listener (3 + 2 + 1, once
    // identify's connection is counted out); a 7th, from a fresh host, is refused.
    let three: Vec<TcpStream> = (0..2)
        .map(|_| eventually("127.0.0.3 served", || nvme_conn(host(3), addr)))
        .collect();
    let _four = eventually("the 127.0.0.4 connection served", || {
        nvme_conn(host(4), addr)
    });
    assert!(
        nvme_conn(host(5), addr).is_none(),
        "a 7th connection on the listener was served (limit 6)"
    );
    // Closing one makes room.
    two.pop();
    let _again = eventually("room after a close", || nvme_conn(host(5), addr));
    let log = srv.log_text();
    for want in [
        "limit=\"max_connections_per_host\"",
        "peer=127.0.0.2:",
        "limit=\"max_connections_per_listener\"",
        "peer=127.0.0.5:",
        "closed before ICReq",
    ] {
        assert!(log.contains(want), "no `{want}` in the log:\n{log}");
    }
    // The limits are in save_config's nvmf_create_transport (tessera's extension of
    // SPDK's parameters), which reads them back.
    let saved = srv.call("save_config", Value::Null);
    let t = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .find(|c| c["method"] == "nvmf_create_transport")
        .unwrap_or_else(|| panic!("no nvmf_create_transport in {saved}"));
    assert_eq!(t["params"]["max_connections_per_listener"], 6, "{t}");
    assert_eq!(t["params"]["max_connections_per_host"], 3, "{t}");
    drop((two, three));
    srv.stop();
}

#[test]
fn an_io_queue_past_max_qpairs_per_ctrlr_is_refused_with_spdks_status() {
    let port = free_port();
    // SPDK's deprecated max_qpairs_per_ctrlr counts the admin queue: 3 is 2 I/O queues.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        json!({"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "bdev_null_create", "params": {"name": "Null0", "num_blocks": 262144, "block_size": 4096}}]},
            {"subsystem": "nvmf", "config": [
                {"method": "nvmf_create_transport", "params": {"trtype": "TCP", "max_qpairs_per_ctrlr": 3}},
                {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": true}},
                {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "listen_address":
                    {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
                {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Null0", "nsid": 1}}}]}
        ]})
        .to_string(),
    )
    .unwrap();
    let srv = Serve::start_file(dir, &cfg);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_admin, cntlid) = nvmf_common::RawHost::admin(addr, NQN, 0);
    let io = |qid: u16| {
        let mut h = nvmf_common::RawHost::connect(addr);
        h.ic(false, false);
        let c = h.connect_cmd(NQN, nvmf_common::HOSTNQN, qid, cntlid, 0);
        (h, c)
    };
    let (_q1, c) = io(1);
    assert!(c.status().is_success(), "qid 1: {}", c.status());
    let (_q2, c) = io(2);
    assert!(c.status().is_success(), "qid 2: {}", c.status());
    // SPDK: Command Specific / Invalid Queue Identifier.
    let (q3, c) = io(3);
    assert_eq!(c.status(), Status::INVALID_QUEUE_ID, "qid 3");
    // The allowed ones work: a read on queue 2's neighbour, queue 1.
    let (mut q1, _) = (_q1, ());
    let cid = q1.cid();
    q1.capsule(
        spec::with_transport_sgl(spec::rw_sqe(cid, spec::io_opc::READ, 1, 0, 1, false), 4096),
        None,
    );
    let (c, data) = q1.response(None);
    assert!(c.status().is_success() && data.len() == 4096);
    let _ = q3.s.shutdown(std::net::Shutdown::Both);
    let log = srv.stop();
    assert!(
        log.contains("above the controller's queue pair limit"),
        "{log}"
    );
}

fn perf(port: u16, qpairs: &str) -> std::process::Output {
    process_support::run(
        spdk_support::tool("spdk_nvme_perf")
            .args(spdk_support::NO_HUGE)
            .args([
                "-c", "0x2", "-P", qpairs, "-q", "8", "-o", "4096", "-w", "randread", "-t", "2",
            ])
            .arg("-r")
            .arg(spdk_support::trid(port, NQN, None)),
        Duration::from_secs(90),
    )
}

#[test]
fn spdk_nvme_perf_past_the_host_limit_is_refused_and_within_it_runs() {
    let port = free_port();
    // Three connections from one address: an admin queue and two I/O queues.
    let srv = Serve::start_yaml(&nvmf_yaml(port, "max_connections_per_host: 3"));
    let out = perf(port, "2");
    let text = spdk_support::text_of(&out);
    assert!(out.status.success(), "perf -P 2 within the limit:\n{text}");
    assert!(text.contains("Total"), "{text}");
    let out = perf(port, "4");
    let text = spdk_support::text_of(&out);
    assert!(
        !out.status.success() || text.to_lowercase().contains("error"),
        "perf -P 4 past the limit went through:\n{text}"
    );
    // Once it is gone, -P 2 runs again (the refused and the closed were counted out).
    let out = eventually("perf -P 2 after the refusal", || {
        let o = perf(port, "2");
        o.status.success().then_some(o)
    });
    assert!(spdk_support::text_of(&out).contains("Total"));
    let log = srv.stop();
    assert!(
        log.contains("limit=\"max_connections_per_host\"") && log.contains("value=3"),
        "{log}"
    );
}

fn nbd_yaml(port: u16, limits: &str) -> String {
    format!(
        r#"cores: [0]
idle: adaptive
bdevs:
  - {{type: null, name: Null0, size: 1GiB, block_size: 4096}}
nbd:
  listen: "127.0.0.1:{port}"
  {limits}
  exports: [{{name: n0, bdev: Null0}}]
"#
    )
}

#[test]
fn nbd_connections_past_the_server_and_host_limits_are_closed_before_the_greeting() {
    let port = free_port();
    let srv = Serve::start_yaml(&nbd_yaml(
        port,
        "max_connections: 4\n  max_connections_per_host: 2",
    ));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let two: Vec<TcpStream> = (0..2)
        .map(|_| nbd_conn(host(2), addr).expect("served"))
        .collect();
    assert!(
        nbd_conn(host(2), addr).is_none(),
        "a 3rd connection from 127.0.0.2 was served (limit 2 per host)"
    );
    // A real client from 127.0.0.1 is served meanwhile.
    let out = nbd_support::run_ok(
        std::process::Command::new("nbdinfo")
            .arg("--size")
            .arg(format!("nbd://127.0.0.1:{port}/n0")),
        Duration::from_secs(30),
    );
    assert_eq!(out.trim(), (1u64 << 30).to_string());
    let three: Vec<TcpStream> = (0..2)
        .map(|_| eventually("127.0.0.3 served", || nbd_conn(host(3), addr)))
        .collect();
    assert!(
        nbd_conn(host(4), addr).is_none(),
        "a 5th connection was served (limit 4)"
    );
    let stats = srv.call("nbd_get_stats", Value::Null);
    assert!(stats["refused"].as_u64().unwrap() >= 2, "{stats}");
    // Closing one makes room.
    drop(two);
    let _four = eventually("room after a close", || nbd_conn(host(4), addr));
    let saved = srv.call("save_config", Value::Null);
    let start = saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .find(|c| c["method"] == "nbd_server_start")
        .unwrap_or_else(|| panic!("no nbd_server_start in {saved}"));
    assert_eq!(start["params"]["max_connections"], 4, "{start}");
    assert_eq!(start["params"]["max_connections_per_host"], 2, "{start}");
    drop(three);
    let log = srv.stop();
    for want in [
        "limit=\"max_connections_per_host\"",
        "peer=127.0.0.2:",
        "limit=\"max_connections\"",
        "closed before the handshake",
    ] {
        assert!(log.contains(want), "no `{want}` in the log:\n{log}");
    }
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb << 10
}

/// Writes `frame()` to `s` as fast as the socket takes it until `stop`, never reading.
/// Returns true if the target closed the connection.
fn flood(
    mut s: TcpStream,
    stop: &AtomicBool,
    sent: &AtomicU64,
    frame: impl Fn() -> Vec<u8>,
) -> bool {
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let buf = frame();
    while !stop.load(Ordering::Relaxed) {
        match s.write(&buf) {
            Ok(0) => return true,
            Ok(_) => {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn hostile_clients_that_never_read_replies_leave_memory_bounded_and_others_served() {
    let (nvme_port, nbd_port) = (free_port(), free_port());
    let yaml = format!(
        r#"cores: [0]
idle: adaptive
bdevs:
  - {{type: null, name: Null0, size: 1GiB, block_size: 4096}}
nbd:
  listen: "127.0.0.1:{nbd_port}"
  exports: [{{name: n0, bdev: Null0}}]
nvmf:
  subsystems:
    - nqn: {NQN}
      allow_any_host: true
      listeners: [{{address: 127.0.0.1, port: {nvme_port}}}]
      namespaces: [{{bdev: Null0, nsid: 1}}]
"#
    );
    let srv = Serve::start_yaml(&yaml);
    let pid = srv.pid();
    let nbd: SocketAddr = format!("127.0.0.1:{nbd_port}").parse().unwrap();
    let nvme: SocketAddr = format!("127.0.0.1:{nvme_port}").parse().unwrap();
    // The well-behaved clients: NBD 4 KiB reads, one at a time, timed.
    let mut good = nbd_support::RawClient::connect(nbd, "n0", nbd_support::Opts::default())
        .expect("good client");
    let mut timed_reads = |n: usize| -> Vec<Duration> {
        (0..n)
            .map(|i| {
                let t = Instant::now();
                let r = good
                    .read((i as u64 % 1000) * 4096, 4096)
                    .expect("good read");
                assert_eq!(r.error, 0);
                t.elapsed()
            })
            .collect()
    };
    let before = timed_reads(2000);
    std::thread::sleep(Duration::from_millis(300));
    let base = rss(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut floods = Vec::new();
    const NBD_CONNS: usize = 4;
    const NVME_CONNS: usize = 4;
    // NBD: 1 MiB reads whose data the client never takes.
    for _ in 0..NBD_CONNS {
        let c = nbd_support::RawClient::connect(nbd, "n0", nbd_support::Opts::default())
            .expect("hostile NBD client");
        let (stop, sent) = (stop.clone(), sent.clone());
        floods.push(std::thread::spawn(move || {
            flood(c.s, &stop, &sent, || {
                let mut v = Vec::new();
                for i in 0..64u64 {
                    v.extend_from_slice(&0x2560_9513u32.to_be_bytes());
                    v.extend_from_slice(&0u16.to_be_bytes()); // flags
                    v.extend_from_slice(&0u16.to_be_bytes()); // NBD_CMD_READ
                    v.extend_from_slice(&i.to_be_bytes());
                    v.extend_from_slice(&(i << 20).to_be_bytes());
                    v.extend_from_slice(&(1u32 << 20).to_be_bytes());
                }
                v
            })
        }));
    }
    // NVMe/TCP: an I/O queue each, then 128 KiB reads (data never read) and 4 KiB
    // in-capsule writes, far more than the queue holds.
    let (_admin, cntlid) = nvmf_common::RawHost::admin(nvme, NQN, 0);
    for q in 0..NVME_CONNS {
        let mut h = nvmf_common::RawHost::connect(nvme);
        h.ic(false, false);
        let c = h.connect_cmd(NQN, nvmf_common::HOSTNQN, q as u16 + 1, cntlid, 0);
        assert!(c.status().is_success(), "{}", c.status());
        let (stop, sent) = (stop.clone(), sent.clone());
        floods.push(std::thread::spawn(move || {
            flood(h.s, &stop, &sent, || {
                let mut v = Vec::new();
                for i in 0..64u16 {
                    let sqe = spec::with_transport_sgl(
                        spec::rw_sqe(i, spec::io_opc::READ, 1, i as u64 * 32, 32, false),
                        128 << 10,
                    );
                    pdu::put_capsule_cmd(&mut v, &sqe.0, 0, false, false, 0);
                    let mut w = spec::rw_sqe(i + 64, spec::io_opc::WRITE, 1, 0, 1, false);
                    w.set_sgl(spec::SglDesc {
                        address: 0,
                        length: 4096,
                        kind: spec::sgl::IN_CAPSULE,
                    });
                    pdu::put_capsule_cmd(&mut v, &w.0, 4096, false, false, 0);
                    v.extend_from_slice(&[0xab; 4096]);
                }
                v
            })
        }));
    }
    // While they run: memory sampled, the good client timed.
    let start = Instant::now();
    let mut peak = base;
    let mut during = Vec::new();
    let mut mid = 0;
    while start.elapsed() < Duration::from_secs(5) {
        during.extend(timed_reads(50));
        peak = peak.max(rss(pid));
        if mid == 0 && start.elapsed() > Duration::from_millis(2500) {
            mid = peak;
        }
    }
    let end_rss = rss(pid);
    stop.store(true, Ordering::Relaxed);
    let closed = floods
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|c| *c)
        .count();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut before, mut during2) = (before, during.clone());
    let (m0, m1) = (median(&mut before), median(&mut during2));
    let p99 = during2[during2.len() * 99 / 100];
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "RSS base {:.1} MiB, peak {:.1} MiB (+{:.1}), at half-time {:.1} MiB, at the end {:.1} MiB; \
         {} hostile frames sent, {closed} of {} hostile connections closed by the target; \
         good reads: median {m0:?} before, {m1:?} during (p99 {p99:?}, {} reads)",
        mib(base),
        mib(peak),
        mib(peak - base),
        mib(mid),
        mib(end_rss),
        sent.load(Ordering::Relaxed),
        NBD_CONNS + NVME_CONNS,
        during.len(),
    );
    // The bound: each NBD connection holds at most its 64 MiB request budget plus one
    // request; each NVMe/TCP queue pair at most its queue's commands (32 here) of
    // 128 KiB. Growth beyond that (or still growing at the end) is a leak.
    let bound = NBD_CONNS as u64 * (65 << 20) + NVME_CONNS as u64 * (32 * (128 << 10)) + (32 << 20);
    assert!(
        peak - base < bound,
        "resident memory grew {:.1} MiB (bound {:.1} MiB)",
        mib(peak - base),
        mib(bound)
    );
    assert!(
        peak - mid < 16 << 20,
        "still growing in the second half: {:.1} MiB at half-time, {:.1} MiB peak",
        mib(mid),
        mib(peak)
    );
    assert!(
        during.len() > 100,
        "the good client barely ran: {} reads",
        during.len()
    );
    assert!(
        m1 < Duration::from_millis(20) && m1 < m0 * 20 + Duration::from_millis(2),
        "the good client's median read went from {m0:?} to {m1:?}"
    );
    drop(good);
    srv.stop();
}

/// The `nvmf_subsystem_add_listener` call of `save_config` for `port`.
fn saved_listener(srv: &Serve, port: u16) -> Value {
    let saved = srv.call("save_config", Value::Null);
    let trsvcid = port.to_string();
    saved["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .find(|c| {
            c["method"] == "nvmf_subsystem_add_listener"
                && c["params"]["listen_address"]["trsvcid"] == trsvcid.as_str()
        })
        .unwrap_or_else(|| panic!("no listener on {port} in {saved}"))
}

/// `spdk_nvme_identify` against `port`: did it identify the controller?
fn identify_works(port: u16) -> bool {
    let out = process_support::run(
        spdk_support::tool("spdk_nvme_identify")
            .args(spdk_support::NO_HUGE)
            .arg("-r")
            .arg(spdk_support::trid(port, NQN, None)),
        Duration::from_secs(60),
    );
    out.status.success() && spdk_support::text_of(&out).contains("Serial Number")
}

#[test]
fn a_listener_with_its_own_limits_refuses_past_them_while_another_listener_accepts() {
    let (limited, open) = (free_port(), free_port());
    let yaml = format!(
        r#"cores: [0]
idle: adaptive
bdevs:
  - {{type: null, name: Null0, size: 1GiB, block_size: 4096}}
nvmf:
  subsystems:
    - nqn: {NQN}
      allow_any_host: true
      listeners:
        - {{address: 127.0.0.1, port: {limited}, max_connections: 3, max_connections_per_host: 2}}
        - {{address: 127.0.0.1, port: {open}}}
      namespaces: [{{bdev: Null0, nsid: 1}}]
"#
    );
    let srv = Serve::start_yaml(&yaml);
    let lim: SocketAddr = format!("127.0.0.1:{limited}").parse().unwrap();
    let other: SocketAddr = format!("127.0.0.1:{open}").parse().unwrap();
    // From 127.0.0.2: two on the limited listener, a third refused there (its own
    // per-host limit, 2; the transport's is 128) while the other listener serves it.
    let mut two: Vec<TcpStream> = (0..2)
        .map(|i| nvme_conn(host(2), lim).unwrap_or_else(|| panic!("connection {i} refused")))
        .collect();
    assert!(
        nvme_conn(host(2), lim).is_none(),
        "a 3rd connection from 127.0.0.2 on the limited listener was served (its limit 2)"
    );
    let _elsewhere: Vec<TcpStream> = (0..3)
        .map(|_| nvme_conn(host(2), other).expect("the other listener refused 127.0.0.2"))
        .collect();
    // One from 127.0.0.3 fills the limited listener (3): SPDK's host is refused there
    // and served on the other listener.
    let _three = nvme_conn(host(3), lim).expect("127.0.0.3 refused");
    assert!(
        !identify_works(limited),
        "spdk_nvme_identify went through a full listener (max_connections 3)"
    );
    assert!(
        identify_works(open),
        "spdk_nvme_identify on the other listener"
    );
    // Closing one makes room for SPDK's host.
    two.pop();
    eventually("identify on the limited listener after a close", || {
        identify_works(limited).then_some(())
    });
    let log = srv.log_text();
    for want in [
        "limit=\"listener.max_connections_per_host\" value=2",
        "limit=\"listener.max_connections\" value=3",
        "peer=127.0.0.2:",
        "peer=127.0.0.1:",
        "closed before ICReq",
    ] {
        assert!(log.contains(want), "no `{want}` in the log:\n{log}");
    }
    // save_config keeps the limits on their listener, and only there.
    let l = saved_listener(&srv, limited);
    assert_eq!(l["params"]["max_connections"], 3, "{l}");
    assert_eq!(l["params"]["max_connections_per_host"], 2, "{l}");
    let o = saved_listener(&srv, open);
    assert!(o["params"].get("max_connections").is_none(), "{o}");

    // The RPC takes them too (tessera's parameters): a third listener of one connection.
    let third = free_port();
    let add = |port: u16, extra: Value| {
        let mut p = json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
            "traddr": "127.0.0.1", "trsvcid": port.to_string()}});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let e = srv.call_err(
        "nvmf_subsystem_add_listener",
        add(third, json!({"max_connections": 0})),
    );
    assert_eq!(e.code, -32602, "{e:?}");
    assert!(e.message.contains("max_connections"), "{e:?}");
    // The same address with other limits is refused, naming the limits it has.
    let e = srv.call_err(
        "nvmf_subsystem_add_listener",
        add(limited, json!({"max_connections": 5})),
    );
    assert!(
        e.message.contains("max_connections: 3") && e.message.contains("other connection limits"),
        "{e:?}"
    );
    srv.call(
        "nvmf_subsystem_add_listener",
        add(third, json!({"max_connections": 1})),
    );
    let t: SocketAddr = format!("127.0.0.1:{third}").parse().unwrap();
    let _one = nvme_conn(host(4), t).expect("the first on the RPC's listener");
    assert!(
        nvme_conn(host(5), t).is_none(),
        "a 2nd connection on a listener of max_connections 1 was served"
    );
    assert_eq!(saved_listener(&srv, third)["params"]["max_connections"], 1);
    srv.stop();
}

/// Sends a write request of `len` bytes and all of its payload but the last 4 KiB, as
/// fast as the target takes it, then holds the connection until `stop`. Returns true
/// if the target closed it.
fn withhold_payload(mut c: nbd_support::RawClient, len: u64, stop: &AtomicBool) -> bool {
    if c.send(tessera::frontend::nbd::proto::CMD_WRITE, 0, 7, 0, len, &[])
        .is_err()
    {
        return true;
    }
    c.s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    c.s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let chunk = vec![0x5a; 1 << 20];
    let mut left = len as usize - 4096;
    while !stop.load(Ordering::Relaxed) {
        if left > 0 {
            match c.s.write(&chunk[..left.min(chunk.len())]) {
                Ok(0) => return true,
                Ok(n) => left -= n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        } else {
            // Payload withheld: watch for the target closing.
            let mut b = [0u8; 64];
            match c.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
    }
    false
}

#[test]
fn hostile_nbd_writers_that_withhold_payloads_stay_within_the_server_buffer_budget() {
    // Eight clients each send a 32 MiB write and all of its payload but the last 4 KiB.
    // Per connection that is within bounds (one request always runs); together, without
    // a server-wide budget, 256 MiB. With max_buffer_bytes 80 MiB two get their buffers
    // (32 MiB + 8 KiB each), the others stop being read and are closed after
    // buffer_wait_timeout_ms.
    const HOSTILE: usize = 8;
    const LEN: u64 = 32 << 20;
    const BUDGET: u64 = 80 << 20;
    const MARGIN: u64 = 24 << 20;
    nbd_support::need_all(&["nbdcopy", "nbdinfo"]);
    let port = free_port();
    let srv = Serve::start_yaml(&format!(
        r#"cores: [0]
idle: adaptive
bdevs:
  - {{type: malloc, name: M0, size: 64MiB, block_size: 4096}}
nbd:
  listen: "127.0.0.1:{port}"
  max_buffer_bytes: {BUDGET}
  buffer_wait_timeout_ms: 2000
  exports: [{{name: n0, bdev: M0}}]
"#
    ));
    let pid = srv.pid();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let uri = format!("nbd://127.0.0.1:{port}/n0");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    // A well-behaved copy first, so that the baseline has seen one.
    nbd_support::run_ok(
        std::process::Command::new("nbdcopy").arg(&src).arg(&uri),
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    let base = rss(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let hostile: Vec<_> = (0..HOSTILE)
        .map(|_| {
            let c = nbd_support::RawClient::connect(addr, "n0", nbd_support::Opts::default())
                .expect("hostile client");
            let stop = stop.clone();
            std::thread::spawn(move || withhold_payload(c, LEN, &stop))
        })
        .collect();
    let start = Instant::now();
    let mut peak = base;
    while start.elapsed() < Duration::from_millis(1500) {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = srv.call("nbd_get_stats", Value::Null);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "RSS base {:.1} MiB, peak {:.1} MiB (+{:.1}; budget {:.0} MiB, margin {:.0} MiB); stats {stats}",
        mib(base),
        mib(peak),
        mib(peak.saturating_sub(base)),
        mib(BUDGET),
        mib(MARGIN),
    );
    assert!(
        peak.saturating_sub(base) < BUDGET + MARGIN,
        "resident memory grew {:.1} MiB with max_buffer_bytes {:.0} MiB",
        mib(peak - base),
        mib(BUDGET)
    );
    let held = stats["buffer_bytes"].as_u64().unwrap();
    assert!(held > LEN && held <= BUDGET, "{stats}");
    assert!(
        stats["buffer_waits"].as_u64().unwrap() >= (HOSTILE - 2) as u64,
        "{stats}"
    );
    // The waiting ones are closed past buffer_wait_timeout_ms (2 s), with the reason in
    // the log; the two holding bytes are not (they wait for their own client).
    let closed = eventually("the waiting connections closed", || {
        let s = srv.call("nbd_get_stats", Value::Null);
        (s["buffer_wait_timeouts"].as_u64().unwrap() >= (HOSTILE - 2) as u64).then_some(s)
    });
    assert_eq!(
        closed["buffer_wait_timeouts"],
        (HOSTILE - 2) as u64,
        "{closed}"
    );
    stop.store(true, Ordering::Relaxed);
    let closed_by_target = hostile
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|c| *c)
        .count();
    assert_eq!(
        closed_by_target,
        HOSTILE - 2,
        "hostile connections closed by the target"
    );
    // Once they are gone the bytes are back, and a real client is served.
    eventually("the budget given back", || {
        let s = srv.call("nbd_get_stats", Value::Null);
        (s["buffer_bytes"] == 0).then_some(())
    });
    let out = dir.path().join("out.img");
    nbd_support::run_ok(
        std::process::Command::new("nbdcopy").arg(&uri).arg(&out),
        Duration::from_secs(30),
    );
    assert!(
        std::fs::read(&out).unwrap()[..data.len()] == data[..],
        "nbdcopy read back other data"
    );
    let log = srv.stop();
    assert!(
        log.contains("waited past buffer_wait_timeout_ms")
            && log.contains("max_buffer_bytes=83886080"),
        "{log}"
    );
}
