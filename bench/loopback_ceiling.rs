//! What the kernel's loopback TCP alone gives for NVMe/TCP-shaped traffic: the ceiling
//! that `bench/nvmf_bench.sh` figures sit under, measured without any NVMe code.
//!
//! ```text
//! loopback_ceiling stream [HEADER_BYTES] [SECONDS]
//! loopback_ceiling pingpong [REQUEST_BYTES] [RESPONSE_BYTES] [SECONDS]
//! loopback_ceiling pingpong-epoll [REQUEST_BYTES] [RESPONSE_BYTES] [SECONDS]
//! ```
//!
//! `stream` is a QD-64-like read stream: the sender (CPU 0) writes 56 responses per
//! `writev`, each a HEADER_BYTES header (24 = a C2HData PDU) and 4 KiB of data from a
//! ring of 64 page-aligned buffers; the receiver (CPU 1) reads 256 KiB at a time. It
//! prints responses per second. `pingpong` is QD 1: the client (CPU 1) sends
//! REQUEST_BYTES (72 = a command capsule), the server (CPU 0) answers RESPONSE_BYTES
//! (4120 = C2HData with 4 KiB); both spin on non-blocking sockets. It prints the mean
//! round trip in microseconds. `pingpong-epoll` is the same round trip shaped like an
//! event loop, as our reactors are: each side spins on `epoll_wait` with a zero timeout
//! (edge-triggered, through mio) and reads only after it reported the socket readable,
//! 256 KiB at a time, until `WouldBlock`.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn pin(cpu: usize) {
    // SAFETY: `set` is a plain bitmask owned by this frame; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    c.set_nodelay(true).expect("nodelay");
    s.set_nodelay(true).expect("nodelay");
    (c, s)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// Reads exactly `buf.len()` bytes from a non-blocking socket, spinning.
fn spin_read(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
    true
}

fn stream(header: usize, secs: f64) {
    let (mut tx, mut rx) = pair();
    let reader = std::thread::spawn(move || {
        pin(1);
        let mut buf = vec![0u8; 256 << 10];
        while matches!(rx.read(&mut buf), Ok(n) if n > 0) {}
    });
    pin(0);
    // 64 page-aligned 4 KiB sources, as the target's IoBufs are.
    let pages = vec![7u8; 65 * 4096];
    let off = pages.as_ptr().align_offset(4096);
    let hdr = vec![1u8; header];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        let mut iov = Vec::with_capacity(112);
        for i in 0..56 {
            let k = (sent as usize + i) % 64;
            iov.push(IoSlice::new(&hdr));
            iov.push(IoSlice::new(&pages[off + k * 4096..off + (k + 1) * 4096]));
        }
        let mut slices: &mut [IoSlice<'_>] = &mut iov;
        while !slices.is_empty() {
            let n = tx.write_vectored(slices).expect("writev");
            IoSlice::advance_slices(&mut slices, n);
        }
        sent += 56;
    }
    let dt = start.elapsed().as_secs_f64();
    drop(tx);
    let _ = reader.join();
    println!(
        "{{\"mode\":\"stream\",\"header\":{header},\"responses_per_s\":{:.0}}}",
        sent as f64 / dt
    );
}

/// Times round trips for `secs` seconds; the mean round trip in microseconds.
fn round_trip_us(secs: f64, mut round_trip: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        round_trip();
        n += 1;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn print_round_trip(mode: &str, req: usize, resp: usize, us: f64) {
    println!(
        "{{\"mode\":\"{mode}\",\"request\":{req},\"response\":{resp},\"round_trip_us\":{us:.2}}}"
    );
}

fn pingpong(req: usize, resp: usize, secs: f64) {
    let (mut c, mut s) = pair();
    c.set_nonblocking(true).expect("nonblocking");
    s.set_nonblocking(true).expect("nonblocking");
    let server = std::thread::spawn(move || {
        pin(0);
        let mut inb = vec![0u8; req];
        let out = vec![2u8; resp];
        while spin_read(&mut s, &mut inb) {
            let mut done = 0;
            while done < out.len() {
                match s.write(&out[done..]) {
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    });
    pin(1);
    let out = vec![1u8; req];
    let mut inb = vec![0u8; resp];
    let us = round_trip_us(secs, || {
        c.write_all(&out).expect("send");
        assert!(spin_read(&mut c, &mut inb), "server went away");
    });
    let _ = c.shutdown(std::net::Shutdown::Both);
    let _ = server.join();
    print_round_trip("pingpong", req, resp, us);
}

/// A non-blocking socket read the way an event loop reads: only after epoll
/// (edge-triggered, through mio) reported it readable, then until `WouldBlock`.
struct Polled {
    sock: mio::net::TcpStream,
    poll: mio::Poll,
    events: mio::Events,
    readable: bool,
}

impl Polled {
    fn new(sock: TcpStream) -> Polled {
        sock.set_nonblocking(true).expect("nonblocking");
        let mut sock = mio::net::TcpStream::from_std(sock);
        let poll = mio::Poll::new().expect("epoll");
        poll.registry()
            .register(&mut sock, mio::Token(0), mio::Interest::READABLE)
            .expect("register");
        Polled {
            sock,
            poll,
            events: mio::Events::with_capacity(8),
            readable: true,
        }
    }

    /// Reads until `want` bytes came, into `buf` (reused for every read).
    fn read(&mut self, buf: &mut [u8], want: usize) -> bool {
        let mut got = 0;
        while got < want {
            if !self.readable {
                if self
                    .poll
                    .poll(&mut self.events, Some(Duration::ZERO))
                    .is_err()
                {
                    return false;
                }
                self.readable = !self.events.is_empty();
                continue;
            }
            match self.sock.read(buf) {
                Ok(0) => return false,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.readable = false,
                Err(_) => return false,
            }
        }
        true
    }
}

fn pingpong_epoll(req: usize, resp: usize, secs: f64) {
    let (c, s) = pair();
    let server = std::thread::spawn(move || {
        pin(0);
        let mut s = Polled::new(s);
        let mut inb = vec![0u8; 256 << 10];
        let (hdr, data) = (vec![2u8; 24.min(resp)], vec![2u8; resp.saturating_sub(24)]);
        while s.read(&mut inb, req) {
            let mut iov = [IoSlice::new(&hdr), IoSlice::new(&data)];
            let mut slices: &mut [IoSlice<'_>] = &mut iov;
            while !slices.is_empty() {
                match s.sock.write_vectored(slices) {
                    Ok(n) => IoSlice::advance_slices(&mut slices, n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    });
    pin(1);
    let mut c = Polled::new(c);
    let out = vec![1u8; req];
    let mut inb = vec![0u8; 256 << 10];
    let us = round_trip_us(secs, || {
        c.sock.write_all(&out).expect("send");
        assert!(c.read(&mut inb, resp), "server went away");
    });
    let _ = c.sock.shutdown(std::net::Shutdown::Both);
    let _ = server.join();
    print_round_trip("pingpong-epoll", req, resp, us);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("stream") => stream(arg(&args, 2, 24), arg(&args, 3, 2.0)),
        Some("pingpong") => pingpong(arg(&args, 2, 72), arg(&args, 3, 4120), arg(&args, 4, 2.0)),
        Some("pingpong-epoll") => {
            pingpong_epoll(arg(&args, 2, 72), arg(&args, 3, 4120), arg(&args, 4, 2.0))
        }
        _ => {
            eprintln!(
                "usage: loopback_ceiling stream [HEADER] [SECS] | pingpong[-epoll] [REQ] [RESP] [SECS]"
            );
            std::process::exit(2);
        }
    }
}
