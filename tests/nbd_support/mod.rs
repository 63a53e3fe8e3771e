//! Shared by the NBD integration tests: reactors and a server to test (over bdevs of the
//! test's choosing, or over the thin virtual disks of a real pool, with snapshots and
//! clones exported as they are taken), a thin bdev that reports holes, outside tools the
//! tests require (a missing one fails the test, naming the package that provides it),
//! child-process guards, and a small raw NBD client (built on the server's own codec) for
//! the tests that must send what no real client would.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera::bdev::malloc::MallocBdev;
use tessera::bdev::uring::{UringBdev, UringOptions};
use tessera::bdev::{Bdev, BdevChannel, BdevError, BdevIo, BdevProps, BlockRun, IoKind};
use tessera::frontend::nbd::proto::*;
use tessera::frontend::nbd::{NbdExport, NbdLimits, NbdServer, NbdTlsSettings};
use tessera::reactor::{CoreList, IdlePolicy, ReactorConfig, ReactorSet, block_on};
use tessera::vdisk::{Pool, PoolOptions};

pub use super::process_support::run;

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Two unpinned adaptive reactors.
pub fn reactors() -> ReactorSet {
    init_logging();
    let mut cfg = ReactorConfig::new(CoreList::first(2), IdlePolicy::Adaptive);
    cfg.pin = false;
    ReactorSet::start(cfg).expect("reactors start")
}

/// A malloc bdev of `mib` MiB with 4 KiB blocks.
pub fn malloc(name: &str, mib: u64) -> Arc<dyn Bdev> {
    MallocBdev::create(name, mib * 256, 4096, None).expect("malloc bdev")
}

/// What a test pool is made of.
#[derive(Clone, Copy, Debug)]
pub enum Backing<'a> {
    /// A malloc bdev (RAM).
    Malloc,
    /// A sparse file, through the uring bdev (O_DIRECT).
    File(&'a Path),
}

/// A server on a free port of 127.0.0.1, with its reactors (and, from
/// [`TestServer::thin_pool`], the pool whose disks it exports); stops them all when
/// dropped.
pub struct TestServer {
    pub server: Option<NbdServer>,
    pub pool: Option<Pool>,
    pub reactors: ReactorSet,
    pub addr: SocketAddr,
    /// Whether the pool's exports get [`TestServer::hold_views`] as they are made.
    hold: bool,
    /// The bdevs exported, by name: what `qemu:dirty-bitmap:<name>` looks up.
    bdevs: Arc<std::sync::Mutex<BTreeMap<String, Arc<dyn Bdev>>>>,
    held: RefCell<Vec<RawClient>>,
}

impl TestServer {
    pub fn start(exports: Vec<NbdExport>) -> TestServer {
        Self::start_on(reactors(), None, exports)
    }

    fn start_on(reactors: ReactorSet, pool: Option<Pool>, exports: Vec<NbdExport>) -> TestServer {
        Self::start_on_tls(reactors, pool, exports, NbdTlsSettings::default())
    }

    fn start_on_tls(
        reactors: ReactorSet,
        pool: Option<Pool>,
        exports: Vec<NbdExport>,
        tls: NbdTlsSettings,
    ) -> TestServer {
        let server = NbdServer::start_with_tls(
            reactors.cores(),
            "127.0.0.1:0".parse().unwrap(),
            exports,
            NbdLimits::default(),
            tls,
        )
        .expect("server starts");
        let addr = server.local_addr();
        let bdevs: Arc<std::sync::Mutex<BTreeMap<String, Arc<dyn Bdev>>>> = Default::default();
        let b = bdevs.clone();
        server.set_bdev_lookup(Arc::new(move |name: &str| {
            b.lock().unwrap().get(name).cloned()
        }));
        TestServer {
            server: Some(server),
            pool,
            reactors,
            addr,
            bdevs,
            hold: false,
            held: RefCell::new(Vec::new()),
        }
    }

    /// A new pool `pool0` of `pool_mib` MiB on `backing` (1 MiB segments, 4 KiB blocks,
    /// controller on core 0), with a thin virtual disk per `(name, MiB)` of `disks`, each
    /// exported under its own name, and its views held on every core
    /// ([`TestServer::hold_views`]), as are those of the snapshots and clones made with
    /// [`TestServer::snapshot`] and [`TestServer::clone_disk`].
    pub fn thin_pool(backing: Backing, pool_mib: u64, disks: &[(&str, u64)]) -> TestServer {
        let mut srv = Self::thin_pool_cold(backing, pool_mib, disks);
        srv.hold = true;
        for &(name, _) in disks {
            srv.hold_views(name);
        }
        srv
    }

    /// [`TestServer::thin_pool`] without holding any view: every connection that is
    /// alone on its core gets a new mapping agent.
    pub fn thin_pool_cold(backing: Backing, pool_mib: u64, disks: &[(&str, u64)]) -> TestServer {
        Self::thin_pool_tls(backing, pool_mib, disks, NbdTlsSettings::default())
    }

    /// [`TestServer::thin_pool_cold`] with TLS settings.
    pub fn thin_pool_tls(
        backing: Backing,
        pool_mib: u64,
        disks: &[(&str, u64)],
        tls: NbdTlsSettings,
    ) -> TestServer {
        let reactors = reactors();
        let base: Arc<dyn Bdev> = match backing {
            Backing::Malloc => malloc("pool0-base", pool_mib),
            Backing::File(path) => UringBdev::create(
                "pool0-base",
                path,
                Some(4096),
                Some(pool_mib << 20),
                None,
                UringOptions::default(),
            )
            .expect("uring bdev over the pool file"),
        };
        let pool = block_on(Pool::create(
            reactors.cores(),
            0,
            vec![base],
            None,
            PoolOptions::new("pool0"),
        ))
        .expect("pool created");
        let disks: Vec<(String, Arc<dyn Bdev>)> = disks
            .iter()
            .map(|&(name, mib)| {
                let disk = block_on(pool.create_disk(name, mib << 20, true))
                    .unwrap_or_else(|e| panic!("thin disk {name}: {e}"));
                (name.to_string(), disk as Arc<dyn Bdev>)
            })
            .collect();
        let exports = disks
            .iter()
            .map(|(name, disk)| NbdExport::new(name, disk.clone()))
            .collect();
        let srv = Self::start_on_tls(reactors, Some(pool), exports, tls);
        srv.bdevs.lock().unwrap().extend(disks);
        srv
    }

    pub fn server(&self) -> &NbdServer {
        self.server.as_ref().expect("running")
    }

    /// The pool of [`TestServer::thin_pool`].
    pub fn pool(&self) -> &Pool {
        self.pool.as_ref().expect("a server over a pool")
    }

    /// Snapshots disk `origin` as `snap` and exports the snapshot under its name, as it
    /// is (a snapshot is read-only by itself).
    pub fn snapshot(&self, origin: &str, snap: &str) {
        let mut made = block_on(
            self.pool()
                .snapshot(vec![(origin.into(), snap.into())], Duration::from_secs(10)),
        )
        .unwrap_or_else(|e| panic!("snapshot {origin} -> {snap}: {e}"));
        assert_eq!(made.len(), 1);
        let bdev = made.pop().unwrap();
        self.bdevs
            .lock()
            .unwrap()
            .insert(snap.to_string(), bdev.clone());
        self.server()
            .add_export(NbdExport::new(snap, bdev))
            .expect("snapshot exported");
        if self.hold {
            self.hold_views(snap);
        }
    }

    /// Clones snapshot `snap` as `clone` and exports the clone under its name.
    pub fn clone_disk(&self, snap: &str, clone: &str) {
        let disk = block_on(self.pool().clone_disk(snap, clone))
            .unwrap_or_else(|e| panic!("clone {snap} -> {clone}: {e}"));
        self.bdevs
            .lock()
            .unwrap()
            .insert(clone.to_string(), disk.clone());
        self.server()
            .add_export(NbdExport::new(clone, disk))
            .expect("clone exported");
        if self.hold {
            self.hold_views(clone);
        }
    }

    /// Keeps a connection to `export` open on every core, each after a read (which
    /// waits for the core's mapping agent to receive its view), until the server stops.
    ///
    /// Why: a virtual disk's agent is made when a core opens the disk's first channel
    /// (and dropped with its last), and until the controller has sent it its view it
    /// answers block status with "data" everywhere (never "hole": see nbd_clients.rs,
    /// block status on fresh connections). The tests that assert exact holes and zeros
    /// hold the views so that every connection's answer comes from a view. Connections
    /// accepted later on a core share the held channel.
    pub fn hold_views(&self, export: &str) {
        // The server hands connections to its cores in turn.
        for _ in 0..self.reactors.cores().len() {
            let mut c = RawClient::connect(self.addr, export, Opts::default())
                .unwrap_or_else(|e| panic!("holding {export}: {e}"));
            let r = c.read(0, 4096).expect("read");
            assert_eq!(r.error, 0, "holding {export}: read");
            self.held.borrow_mut().push(c);
        }
    }

    /// `nbd://127.0.0.1:PORT/NAME`
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{}", self.addr, export)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.held.get_mut().clear();
        if let Some(s) = self.server.take() {
            s.stop();
        }
        if let Some(p) = self.pool.take()
            && let Err(e) = block_on(p.close())
            && !std::thread::panicking()
        {
            panic!("pool close: {e}");
        }
        self.reactors.shutdown();
    }
}

// ---------------------------------------------------------------------------------------
// A thin bdev: malloc underneath, with a per-block allocation map so block status reports
// holes (never written or unmapped), allocated zeros (write-zeroes) and data.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Alloc {
    Hole,
    Zero,
    Data,
}

pub struct ThinBdev {
    props: BdevProps,
    base: Arc<MallocBdev>,
    map: Mutex<Vec<Alloc>>,
}

impl ThinBdev {
    pub fn create(name: &str, mib: u64) -> Arc<ThinBdev> {
        let n = mib * 256;
        Arc::new(ThinBdev {
            props: BdevProps::new(name, None, 4096, n, "Thin test disk").unwrap(),
            base: MallocBdev::create(&format!("{name}-base"), n, 4096, None).unwrap(),
            map: Mutex::new(vec![Alloc::Hole; n as usize]),
        })
    }

    fn set(&self, off: u64, n: u64, a: Alloc) {
        let mut m = self.map.lock().unwrap();
        for b in off..off + n {
            m[b as usize] = a;
        }
    }
}

impl Bdev for ThinBdev {
    fn props(&self) -> &BdevProps {
        &self.props
    }

    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let inner = Bdev::create_channel(self.base.clone())?;
        Ok(Rc::new(ThinChannel { bdev: self, inner }))
    }

    fn unmap_reads_zeroes(&self) -> bool {
        true
    }
}

struct ThinChannel {
    bdev: Arc<ThinBdev>,
    inner: Rc<dyn BdevChannel>,
}

impl BdevChannel for ThinChannel {
    fn submit(&self, io: BdevIo) {
        match io.kind {
            IoKind::Write => self.bdev.set(io.offset_blocks, io.num_blocks, Alloc::Data),
            IoKind::Unmap => self.bdev.set(io.offset_blocks, io.num_blocks, Alloc::Hole),
            IoKind::WriteZeroes => self.bdev.set(io.offset_blocks, io.num_blocks, Alloc::Zero),
            _ => {}
        }
        self.inner.submit(io)
    }

    fn block_status(&self, offset_blocks: u64, num_blocks: u64) -> Vec<BlockRun> {
        let m = self.bdev.map.lock().unwrap();
        let mut runs: Vec<(Alloc, u64)> = Vec::new();
        for b in offset_blocks..offset_blocks + num_blocks {
            let a = m[b as usize];
            match runs.last_mut() {
                Some((last, n)) if *last == a => *n += 1,
                _ => runs.push((a, 1)),
            }
        }
        runs.into_iter()
            .map(|(a, n)| BlockRun {
                num_blocks: n,
                allocated: a != Alloc::Hole,
                zero: a != Alloc::Data,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Child processes.

/// The Debian package that provides `tool` (scripts/test.sh installs them all).
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-img" | "qemu-io" | "qemu-nbd" => "qemu-utils",
        "nbdinfo" | "nbdcopy" => "libnbd-bin",
        "nbdkit" => "nbdkit",
        "nbdfuse" => "nbdfuse",
        "fusermount3" => "fuse3",
        "fio" => "fio",
        "mkfs.ext4" | "e2fsck" => "e2fsprogs",
        "losetup" | "mount" | "umount" => "mount",
        "openssl" => "openssl",
        "sha256sum" => "coreutils",
        _ => "?",
    }
}

/// Fails the test unless `tool` is on the PATH: the integration tests run their real
/// clients or fail, they never skip (scripts/test.sh installs every tool they use).
pub fn need(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{tool}` is not installed; this test needs it. Install Debian package `{pkg}` \
         (apt-get install {pkg}), or run scripts/test.sh as root, which installs every \
         tool the tests drive",
        pkg = package_of(tool)
    );
}

/// [`need`] for each of `tools`.
pub fn need_all(tools: &[&str]) {
    for t in tools {
        need(t);
    }
}

/// Runs a command and asserts it succeeded; returns stdout.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, limit);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A background child killed (by PID) when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(Some(
            cmd.stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}")),
        ))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

// ---------------------------------------------------------------------------------------
// A raw client.

/// What to negotiate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Opts {
    pub structured: bool,
    pub extended: bool,
    pub meta: bool,
}

/// A reply as the raw client saw it.
#[derive(Debug, Default, Clone)]
pub struct Reply {
    pub cookie: u64,
    pub error: u32,
    pub message: String,
    pub data: Vec<u8>,
    pub extents: Vec<Extent>,
    pub chunks: usize,
}

pub struct RawClient {
    pub s: TcpStream,
    pub reply: ReplyMode,
    pub size: u64,
    pub flags: u16,
    pub block_sizes: Option<BlockSizes>,
}

pub fn read_exact(s: &mut TcpStream, n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v)?;
    Ok(v)
}

/// Sends an option and reads its replies up to the final one: (reply type, data) pairs.
pub fn option(s: &mut TcpStream, opt: u32, data: &[u8]) -> io::Result<Vec<(u32, Vec<u8>)>> {
    let mut out = Vec::new();
    encode_option(&mut out, opt, data);
    s.write_all(&out)?;
    let mut replies = Vec::new();
    loop {
        let h = read_exact(s, OPTION_REPLY_HEADER_LEN)?;
        let h = parse_option_reply_header(&h).unwrap().unwrap();
        assert_eq!(h.option, opt, "reply to the option sent");
        let data = read_exact(s, h.len_bytes as usize)?;
        let last = h.reply_type == REP_ACK || is_reply_error(h.reply_type);
        replies.push((h.reply_type, data));
        if last {
            return Ok(replies);
        }
    }
}

/// Connects and reads the greeting, sends client flags.
pub fn greet(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    let g = read_exact(&mut s, GREETING_LEN)?;
    let flags = parse_greeting(&g).unwrap().unwrap();
    assert_eq!(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())?;
    Ok(s)
}

impl RawClient {
    /// Handshake with `NBD_OPT_GO` on `export`.
    pub fn connect(addr: SocketAddr, export: &str, o: Opts) -> io::Result<RawClient> {
        let mut s = greet(addr)?;
        let mut reply = ReplyMode::Simple;
        if o.extended {
            let r = option(&mut s, OPT_EXTENDED_HEADERS, &[])?;
            assert_eq!(r[0].0, REP_ACK);
            reply = ReplyMode::Extended;
        }
        if o.structured {
            let r = option(&mut s, OPT_STRUCTURED_REPLY, &[])?;
            if !o.extended {
                assert_eq!(r[0].0, REP_ACK);
                reply = ReplyMode::Structured;
            }
        }
        if o.meta {
            let r = option(
                &mut s,
                OPT_SET_META_CONTEXT,
                &encode_meta_context_request(export, &[META_BASE_ALLOCATION]),
            )?;
            assert_eq!(r.len(), 2, "{r:?}");
            assert_eq!(r[0].0, REP_META_CONTEXT);
        }
        let r = option(
            &mut s,
            OPT_GO,
            &encode_info_request(export, &[INFO_BLOCK_SIZE]),
        )?;
        let last = r.last().unwrap();
        if last.0 != REP_ACK {
            return Err(io::Error::other(format!(
                "GO refused: {:#x} {}",
                last.0,
                String::from_utf8_lossy(&last.1)
            )));
        }
        let mut c = RawClient {
            s,
            reply,
            size: 0,
            flags: 0,
            block_sizes: None,
        };
        for (t, d) in &r {
            if *t == REP_INFO {
                match parse_info(d) {
                    Some(Info::Export { size_bytes, flags }) => {
                        c.size = size_bytes;
                        c.flags = flags;
                    }
                    Some(Info::BlockSize(b)) => c.block_sizes = Some(b),
                    _ => {}
                }
            }
        }
        Ok(c)
    }

    pub fn mode(&self) -> HeaderMode {
        self.reply.header_mode()
    }

    /// Sends one request (and its payload).
    pub fn send(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut out = Vec::with_capacity(32 + payload.len());
        let flags = if self.reply == ReplyMode::Extended && !payload.is_empty() {
            flags | CMD_FLAG_PAYLOAD_LEN
        } else {
            flags
        };
        encode_request(
            &mut out,
            self.mode(),
            &RequestHeader {
                flags,
                kind,
                cookie,
                offset_bytes: offset,
                len_bytes: len,
            },
        );
        out.extend_from_slice(payload);
        self.s.write_all(&out)
    }

    /// Reads one whole reply; `read_len(cookie)` tells how much data a simple reply to a
    /// successful read carries.
    pub fn recv(&mut self, read_len: impl Fn(u64) -> usize) -> io::Result<Reply> {
        let mut r = Reply::default();
        loop {
            let mut hdr = read_exact(&mut self.s, 4)?;
            let need = match u32::from_be_bytes(hdr[..4].try_into().unwrap()) {
                SIMPLE_REPLY_MAGIC => SIMPLE_REPLY_LEN,
                STRUCTURED_REPLY_MAGIC => STRUCTURED_REPLY_LEN,
                EXTENDED_REPLY_MAGIC => EXTENDED_REPLY_LEN,
                m => return Err(io::Error::other(format!("bad reply magic {m:#x}"))),
            };
            hdr.extend(read_exact(&mut self.s, need - 4)?);
            let (h, _) = parse_reply_header(&hdr).unwrap().unwrap();
            match h {
                ReplyHeader::Simple { error, cookie } => {
                    assert_ne!(
                        self.reply,
                        ReplyMode::Extended,
                        "no simple replies under extended headers"
                    );
                    r.cookie = cookie;
                    r.error = error;
                    if error == 0 {
                        r.data = read_exact(&mut self.s, read_len(cookie))?;
                    }
                    return Ok(r);
                }
                ReplyHeader::Chunk(c) => {
                    r.cookie = c.cookie;
                    r.chunks += 1;
                    let payload = read_exact(&mut self.s, c.len_bytes as usize)?;
                    match c.kind {
                        REPLY_TYPE_NONE => {}
                        REPLY_TYPE_OFFSET_DATA => r.data.extend_from_slice(&payload[8..]),
                        REPLY_TYPE_BLOCK_STATUS | REPLY_TYPE_BLOCK_STATUS_EXT => {
                            let (_, e) = parse_block_status_payload(c.kind, &payload).unwrap();
                            r.extents = e;
                        }
                        k if k & 0x8000 != 0 => {
                            let (error, message) = parse_error_payload(&payload).unwrap();
                            r.error = error;
                            r.message = message;
                        }
                        k => return Err(io::Error::other(format!("unexpected chunk type {k}"))),
                    }
                    if c.flags & REPLY_FLAG_DONE != 0 {
                        return Ok(r);
                    }
                }
            }
        }
    }

    /// A request and its reply.
    pub fn call(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) -> io::Result<Reply> {
        self.send(kind, flags, 1, offset, len, payload)?;
        let n = if kind == CMD_READ { len as usize } else { 0 };
        self.recv(|_| n)
    }

    pub fn read(&mut self, offset: u64, len: u64) -> io::Result<Reply> {
        self.call(CMD_READ, 0, offset, len, &[])
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<Reply> {
        self.call(CMD_WRITE, 0, offset, data.len() as u64, data)
    }

    pub fn flush(&mut self) -> io::Result<Reply> {
        self.call(CMD_FLUSH, 0, 0, 0, &[])
    }

    pub fn disconnect(mut self) -> io::Result<()> {
        self.send(CMD_DISC, 0, 0, 0, 0, &[])?;
        // The server closes without a reply.
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => Ok(()),
            Ok(_) => Err(io::Error::other("data after NBD_CMD_DISC")),
            Err(e) => Err(e),
        }
    }
}

/// True if the peer closed the connection (read returns 0 or a reset) within `limit`.
pub fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 4096];
    let end = Instant::now() + limit;
    while Instant::now() < end {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

/// A block of `len` bytes of a recognisable pattern.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
