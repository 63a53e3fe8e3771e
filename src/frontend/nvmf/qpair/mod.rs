//! The target side of one NVMe/TCP connection: a queue pair on one core.
//!
//! A connection task reads the socket in big chunks into a [`RecvBuf`], parses every
//! complete PDU in it, and runs the commands; responses (CapsuleResp, C2HData, R2T) are
//! gathered in a [`SendQueue`] and written with one `writev` per turn. Bdev completions
//! arrive through the [`IoSink`] between turns; they queue their responses and wake the
//! task, so everything completed in one reactor loop goes out in one write.
//!
//! Each command occupies a preallocated request slot ([`Req`]) whose data buffer is
//! reused from command to command; the slot index is also the R2T transfer tag. Large
//! H2CData payloads are read from the socket straight into the slot's buffer.
//!
//! A queue pair is admin (it owns its [`Controller`]) or I/O (it reaches its controller
//! through [`CtrlrShared`]), decided by the Connect command. Other code on the core
//! reaches a queue pair by its id through a reactor-local registry ([`send_kill`],
//! [`ns_changed`]).

use super::auth::{self as qauth, After, AuthCtx, AuthState, QpairAuth};
use super::config::TransportOptions;
use super::ctrlr::{self, AdminDone, ConnectCtx, Role};
use super::subsystem::{Namespace, Subsystem};
use super::target::TargetShared;
use crate::bdev::{BdevIo, Channel, IoBuf, IoSink, IoStatus};
use crate::nvme::pdu::{self, Limits, PduType};
use crate::nvme::spec::{self, Command, Cqe, DataDirection, QueueKind, Sqe, Status};
use crate::reactor::recv::RecvBuf;
use crate::reactor::send::SendQueue;
use crate::reactor::tls::TlsStream;
use crate::reactor::{self, Cores, io::Async};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

/// Receive buffer size: many PDUs per read.
const RECV_BUF_LEN: usize = 256 << 10;
/// Payloads at least this long are read straight into the request buffer.
const DIRECT_READ_MIN: usize = 16 << 10;
/// Socket reads per turn before the task yields to its neighbours.
const READS_PER_TURN: usize = 8;
/// Most data per C2HData PDU.
const MAX_C2H_LEN: usize = 128 << 10;
/// In-capsule data limit of the admin queue (NVMe/TCP requires 8 KiB).
const ADMIN_IN_CAPSULE_LEN: u32 = 8192;

mod nvm;
mod recv;

static NEXT_QPAIR_ID: AtomicU64 = AtomicU64::new(1);

/// The state of a request slot. Every transition goes through [`QpInner::set_state`],
/// which keeps the per-state counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum ReqState {
    /// On the free list.
    Free = 0,
    /// The capsule arrived; its in-capsule data is being received into the buffer.
    ReceivingCapsuleData = 1,
    /// An R2T went out; H2CData PDUs are being received into the buffer.
    TransferringH2C = 2,
    /// Running: submitted to a bdev, or held by the controller (an Asynchronous Event
    /// Request waits here for an event).
    Executing = 3,
    /// Finished; its C2HData and/or response capsule are queued for sending. The slot is
    /// released when they are written.
    Completing = 4,
}

const REQ_STATES: usize = 5;

/// One command's slot.
struct Req {
    state: ReqState,
    sqe: Sqe,
    /// The decoded command (`None` when decoding failed; `status` says why).
    cmd: Option<Command>,
    /// The status so far; a failure means "do not execute, just answer".
    status: Status,
    dw0: u32,
    dw1: u32,
    dir: DataDirection,
    /// Data length of the command in bytes.
    xfer_len: u32,
    /// Host-to-controller bytes received so far.
    h2c_done: u32,
    /// Bytes of the buffer to send back on success.
    c2h_len: u32,
    /// Bdev requests outstanding.
    pending: u32,
    /// The reusable data buffer.
    buf: Option<IoBuf>,
}

impl Req {
    fn new() -> Req {
        Req {
            state: ReqState::Free,
            sqe: Sqe([0; 64]),
            cmd: None,
            status: Status::SUCCESS,
            dw0: 0,
            dw1: 0,
            dir: DataDirection::None,
            xfer_len: 0,
            h2c_done: 0,
            c2h_len: 0,
            pending: 0,
            buf: None,
        }
    }

    /// Makes the buffer `len` bytes long, reusing it when it is big enough.
    fn prepare_buf(&mut self, len: usize) {
        match &mut self.buf {
            Some(b) if b.capacity() >= len => b.set_len(len),
            _ => self.buf = Some(IoBuf::new(len)),
        }
    }

    fn data_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Some(b) => b.as_mut_slice(),
            None => &mut [],
        }
    }
}

/// What the receive side is doing.
#[derive(Clone, Copy, Debug)]
enum Rx {
    /// Waiting for (the rest of) a PDU header.
    Header,
    /// Receiving a PDU's data into a request's buffer.
    Data {
        slot: u16,
        /// Where in the buffer the next byte goes.
        off: usize,
        /// Payload bytes still to come.
        left: usize,
        /// Padding bytes (between header and data) still to skip.
        pad: usize,
        /// Running CRC32C of the payload.
        crc: u32,
        digest: bool,
        kind: DataKind,
        /// Throw the bytes away (the command already failed).
        discard: bool,
    },
    /// Swallowing the rest of a host TermReq before closing.
    TermReq { left: usize },
}

#[derive(Clone, Copy, Debug)]
enum DataKind {
    InCapsule,
    H2C { len: u32 },
}

/// This core's view of one namespace.
struct NsSlot {
    ns: Arc<Namespace>,
    chan: Channel,
    block_size: u32,
}

/// The namespaces as this queue pair last saw them.
#[derive(Default)]
struct NsCache {
    generation: u64,
    by_nsid: Vec<Option<NsSlot>>,
    /// Removed namespaces whose channels may still have I/O in flight.
    retired: Vec<NsSlot>,
}

impl NsCache {
    fn refresh(&mut self, sub: &Subsystem) {
        if sub.ns_generation() == self.generation {
            return;
        }
        let (table, generation) = sub.namespaces_with_generation();
        let old = std::mem::take(&mut self.by_nsid);
        let mut by_nsid: Vec<Option<NsSlot>> = Vec::new();
        by_nsid.resize_with(sub.max_namespaces as usize + 1, || None);
        for slot in old.into_iter().flatten() {
            let keep = table
                .by_nsid
                .get(&slot.ns.nsid)
                .is_some_and(|n| Arc::ptr_eq(n, &slot.ns));
            if keep {
                let at = slot.ns.nsid as usize;
                by_nsid[at] = Some(slot);
            } else {
                self.retired.push(slot);
            }
        }
        for (nsid, ns) in table.by_nsid.iter() {
            let at = *nsid as usize;
            if at >= by_nsid.len() || by_nsid[at].is_some() {
                continue;
            }
            match Channel::get(&ns.bdev) {
                Ok(chan) => {
                    by_nsid[at] = Some(NsSlot {
                        ns: ns.clone(),
                        chan,
                        block_size: ns.bdev.block_size(),
                    })
                }
                Err(e) => tracing::warn!(nsid, error = %e, "namespace has no channel here"),
            }
        }
        self.by_nsid = by_nsid;
        self.generation = generation;
    }

    #[inline]
    fn get(&self, nsid: u32) -> Option<&NsSlot> {
        self.by_nsid.get(nsid as usize).and_then(Option::as_ref)
    }
}

/// Everything mutable of a queue pair.
struct QpInner {
    id: u64,
    core: usize,
    me: Weak<Qpair>,
    target: Arc<TargetShared>,
    opts: Arc<TransportOptions>,
    /// Set by Connect.
    role: Option<Role>,
    /// ICReq/ICResp exchanged.
    ic_done: bool,
    limits: Limits,
    /// Host PDU data alignment for C2HData.
    hpda: u8,
    recv: RecvBuf,
    rx: Rx,
    send: SendQueue,
    marks: Vec<u64>,
    slots: Vec<Req>,
    free: Vec<u16>,
    max_slots: usize,
    counts: [u32; REQ_STATES],
    qid: u16,
    /// Submission queue size (entries) and head, for SQHD.
    sq_size: u32,
    sqhd: u32,
    /// The SQ head the host last saw in a response capsule.
    reported_sqhd: u32,
    sq_flow_disabled: bool,
    sink: Rc<dyn IoSink>,
    ns: NsCache,
    /// The header of the PDU being processed (for a TermReq about it).
    last_hdr: [u8; 128],
    last_hdr_len: usize,
    /// Why the connection must close (after flushing what is queued).
    closing: Option<&'static str>,
    /// The host must authenticate before anything but AUTH_Send/AUTH_Receive runs.
    authenticating: bool,
    /// The DH-HMAC-CHAP exchange under way (or last done).
    auth: Option<Box<QpairAuth>>,
    /// When the current authentication step times out.
    auth_deadline: reactor::Nanos,
    /// Each step's time limit (the controller's KATO, else SPDK's 120 s).
    auth_step: Duration,
    /// A task watches `auth_deadline`.
    auth_watched: bool,
    /// An authentication command waits for its DH computation on a worker thread.
    auth_computing: bool,
    /// How the connection is secured (TLS identity, concatenation).
    sec: Security,
}

/// A queue pair; lives on one core, reached through [`Rc`].
pub(crate) struct Qpair {
    id: u64,
    peer: SocketAddr,
    sock: Rc<Async<mio::net::TcpStream>>,
    /// The TLS session of a secure-channel connection (records instead of bytes).
    tls: Option<RefCell<TlsStream>>,
    inner: RefCell<QpInner>,
    waker: RefCell<Option<Waker>>,
    notified: Cell<bool>,
    killed: Cell<Option<&'static str>>,
}

/// Completions come here; they find the queue pair through a weak reference (it may be
/// gone, then the completion is dropped with its buffer).
struct QpSink(Weak<Qpair>);

impl IoSink for QpSink {
    fn io_done(&self, io: BdevIo, status: IoStatus) {
        if let Some(q) = self.0.upgrade() {
            q.inner.borrow_mut().io_done(io, status);
            q.notify();
        }
    }
}

#[derive(Default)]
struct Registry {
    map: RefCell<HashMap<u64, Weak<Qpair>>>,
}

fn lookup(id: u64) -> Option<Rc<Qpair>> {
    reactor::local(Registry::default)
        .map
        .borrow()
        .get(&id)
        .and_then(Weak::upgrade)
}

/// Asks queue pair `id` on `core` to close.
pub(crate) fn send_kill(cores: &Cores, core: usize, id: u64, reason: &'static str) {
    let _ = cores.send(core, move || {
        if let Some(q) = lookup(id) {
            q.kill(reason);
        }
    });
}

/// On the admin queue pair's core: namespace `nsid` changed.
pub(crate) fn ns_changed(admin_qpair_id: u64, nsid: u32) {
    if let Some(q) = lookup(admin_qpair_id) {
        let mut st = q.inner.borrow_mut();
        if let Some(Role::Admin(c)) = &mut st.role
            && let Some((slot, ev)) = c.ns_changed(nsid)
        {
            tracing::debug!(nsid, "asynchronous event: namespace attribute changed");
            st.complete_aer(slot, ev);
        }
        drop(st);
        q.notify();
    }
}

/// What an authentication step of queue `qid` of the controller `shared` needs from
/// the target: its keyring, the digests and DH groups it allows now, and what secure
/// channel concatenation the connection may ask for.
fn auth_ctx<'a>(
    target: &'a TargetShared,
    shared: &'a super::subsystem::CtrlrShared,
    qid: u16,
    sec: &Security,
) -> AuthCtx<'a> {
    AuthCtx {
        subsystem: &shared.subsystem,
        hostnqn: &shared.hostnqn,
        qid,
        keyring: &target.keyring,
        digests: target.dhchap_digests.load(Ordering::Acquire),
        dhgroups: target.dhchap_dhgroups.load(Ordering::Acquire),
        concat: qauth::ConcatCtx {
            listener: sec.concat_listener,
            required: sec.plain_restricted(),
            tls: sec.tls_id.is_some(),
        },
    }
}

/// How a connection is secured: its TLS identity, and its listener's concatenation.
#[derive(Clone, Debug, Default)]
struct Security {
    /// The (host NQN, subsystem NQN) of the TLS PSK identity the connection was
    /// admitted with; Connect must name the same.
    tls_id: Option<(String, String)>,
    /// That identity is of a PSK secure channel concatenation generated: the host
    /// authenticated when it was generated, so its queue pairs are not asked again.
    tls_generated: bool,
    /// The listener does secure channel concatenation (`secure_concat`).
    concat_listener: bool,
    /// The listener requires TLS (`secure_channel`).
    secure_channel: bool,
}

impl Security {
    /// A plain connection to a listener that requires TLS but does concatenation: it
    /// serves nothing but an admin queue's authentication with SC_C NEWTLSPSK.
    fn plain_restricted(&self) -> bool {
        self.tls_id.is_none() && self.concat_listener && self.secure_channel
    }
}

/// The first byte a client sends (a TLS handshake record starts with 0x16; an
/// NVMe/TCP ICReq with 0x00), without taking it off the socket.
async fn first_byte(sock: &Async<mio::net::TcpStream>) -> io::Result<u8> {
    let mut b = [0u8; 1];
    loop {
        match sock.get_ref().peek(&mut b) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before sending anything",
                ));
            }
            Ok(_) => return Ok(b[0]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sock.clear_readable();
                std::future::poll_fn(|cx| sock.poll_readable(cx)).await;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// On the admin queue pair's core: an I/O queue's command failed.
fn log_io_error(admin_qpair_id: u64, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
    if let Some(q) = lookup(admin_qpair_id)
        && let Some(Role::Admin(c)) = &mut q.inner.borrow_mut().role
    {
        c.log_error(sqid, cid, status, nsid, lba);
    }
}

/// Turns an accepted connection into a queue pair on the current core; on a
/// secure-channel listener, after a TLS handshake that admits the host; on a
/// concatenation listener, after one if the client starts with TLS.
pub(crate) fn spawn(
    target: Arc<TargetShared>,
    stream: std::net::TcpStream,
    opts: Arc<TransportOptions>,
    peer: SocketAddr,
    permit: crate::frontend::conn_limits::ConnPermit,
    mode: super::listener::ListenMode,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let local = stream.local_addr().ok();
    let sock = match Async::new(mio::net::TcpStream::from_std(stream)) {
        Ok(s) => Rc::new(s),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot register connection");
            return;
        }
    };
    let sec = Security {
        concat_listener: mode.secure_concat,
        secure_channel: mode.secure_channel,
        ..Default::default()
    };
    let Some(ctx) = mode.tls else {
        start(target, sock, None, opts, peer, permit, sec);
        return;
    };
    let limit = Duration::from_millis(opts.tls_handshake_timeout_ms as u64);
    reactor::spawn_local(async move {
        let Some(local) = local else {
            tracing::warn!(%peer, "NVMe/TCP TLS: cannot read the local address; closed");
            return;
        };
        if mode.secure_concat {
            // TLS or plain TCP, as the client's first byte says.
            let deadline = reactor::now().after(limit);
            match reactor::until(deadline, first_byte(&sock)).await {
                Some(Ok(0x16)) => {}
                Some(Ok(_)) => return start(target, sock, None, opts, peer, permit, sec),
                Some(Err(e)) => {
                    tracing::warn!(%peer, listener = %local, error = %e, "NVMe/TCP: connection closed");
                    return;
                }
                None => {
                    tracing::warn!(
                        %peer, listener = %local,
                        error = %crate::reactor::tls::TlsError::Timeout { limit, received: 0 },
                        "NVMe/TCP TLS: connection refused"
                    );
                    let _ = sock.get_ref().shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
        let t2 = target.clone();
        let lookup: crate::reactor::tls::PskLookup =
            Box::new(move |id| super::tls::lookup(&t2, local, id));
        let ssl = match crate::reactor::tls::server_ssl(&ctx, lookup) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "NVMe/TCP TLS: connection closed");
                return;
            }
        };
        match crate::reactor::tls::handshake(sock.clone(), ssl, true, limit).await {
            Ok(t) => {
                let identity = t.identity().map(String::from_utf8_lossy).unwrap_or_default();
                // A generated PSK's identity carries its digest: logged without it.
                let shown = match identity.strip_prefix("NVMe1G") {
                    Some(rest) => format!(
                        "NVMe1G{}",
                        rest.rsplit_once(' ').map_or(rest, |(head, _)| head)
                    ),
                    None => identity.to_string(),
                };
                tracing::info!(%peer, suite = t.suite(), identity = %shown, "NVMe/TCP TLS handshake done");
                start(target, sock, Some(t), opts, peer, permit, sec);
            }
            Err(e) => {
                tracing::warn!(%peer, listener = %local, error = %e, "NVMe/TCP TLS: connection refused");
                let _ = sock.get_ref().shutdown(std::net::Shutdown::Both);
            }
        }
    })
    .detach();
}

/// Starts the queue pair of a connection (after its TLS handshake, on a secure channel).
fn start(
    target: Arc<TargetShared>,
    sock: Rc<Async<mio::net::TcpStream>>,
    tls: Option<TlsStream>,
    opts: Arc<TransportOptions>,
    peer: SocketAddr,
    permit: crate::frontend::conn_limits::ConnPermit,
    mut sec: Security,
) {
    if let Some(id) = tls
        .as_ref()
        .and_then(|t| crate::nvme::tls::Identity::parse(t.identity()?).ok())
    {
        sec.tls_generated = id.generated;
        sec.tls_id = Some((id.hostnqn, id.subnqn));
    }
    let id = NEXT_QPAIR_ID.fetch_add(1, Ordering::Relaxed);
    let core = reactor::current_core().unwrap_or(0);
    let q = Rc::new_cyclic(|me: &Weak<Qpair>| {
        let sink: Rc<dyn IoSink> = Rc::new(QpSink(me.clone()));
        let mut slots = Vec::with_capacity(32);
        slots.push(Req::new());
        Qpair {
            id,
            peer,
            sock,
            tls: tls.map(RefCell::new),
            inner: RefCell::new(QpInner {
                id,
                core,
                me: me.clone(),
                target,
                opts,
                role: None,
                ic_done: false,
                limits: Limits::initial(),
                hpda: 0,
                recv: RecvBuf::new(RECV_BUF_LEN),
                rx: Rx::Header,
                send: SendQueue::new(),
                marks: Vec::with_capacity(256),
                slots,
                free: vec![0],
                max_slots: 64,
                counts: [1, 0, 0, 0, 0],
                qid: 0,
                sq_size: 32,
                sqhd: 0,
                reported_sqhd: 0,
                sq_flow_disabled: false,
                sink,
                ns: NsCache::default(),
                last_hdr: [0; 128],
                last_hdr_len: 0,
                closing: None,
                authenticating: false,
                auth: None,
                auth_deadline: reactor::Nanos(0),
                auth_step: Duration::ZERO,
                auth_watched: false,
                auth_computing: false,
                sec,
            }),
            waker: RefCell::new(None),
            notified: Cell::new(false),
            killed: Cell::new(None),
        }
    });
    reactor::local(Registry::default)
        .map
        .borrow_mut()
        .insert(id, Rc::downgrade(&q));
    tracing::debug!(%peer, core, qpair = id, "queue pair started");
    reactor::spawn_local(run(q, permit)).detach();
}

/// Why the connection task woke up.
#[derive(Default, Clone, Copy)]
struct Wake {
    readable: bool,
}

/// Runs the queue pair to its end; `_permit` counts it against the connection limits
/// until then.
async fn run(q: Rc<Qpair>, _permit: crate::frontend::conn_limits::ConnPermit) {
    let mut wake = Wake { readable: true };
    let reason = loop {
        match q.turn(wake.readable) {
            Err(reason) => break reason,
            Ok(true) => {
                // More input is waiting: let the neighbours run first.
                reactor::yield_now().await;
                wake = Wake { readable: true };
            }
            Ok(false) => wake = std::future::poll_fn(|cx| q.poll_wait(cx)).await,
        }
    };
    q.close(reason);
}

impl Qpair {
    fn notify(&self) {
        self.notified.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Closes the queue pair at its next turn.
    fn kill(&self, reason: &'static str) {
        if self.killed.get().is_none() {
            self.killed.set(Some(reason));
        }
        self.notify();
    }

    fn poll_wait(&self, cx: &mut std::task::Context<'_>) -> Poll<Wake> {
        if self.killed.get().is_some() || self.notified.replace(false) {
            return Poll::Ready(Wake::default());
        }
        if self.sock.poll_readable(cx).is_ready() {
            return Poll::Ready(Wake { readable: true });
        }
        if !self.inner.borrow().send.is_empty() && self.sock.poll_writable(cx).is_ready() {
            return Poll::Ready(Wake::default());
        }
        let mut w = self.waker.borrow_mut();
        match &*w {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// One turn: read and run what arrived, then write what is queued. `Ok(true)` when
    /// input is left over; `Err` when the connection must close.
    fn turn(&self, readable: bool) -> Result<bool, &'static str> {
        if let Some(tls) = &self.tls {
            return self.turn_tls(&mut tls.borrow_mut(), readable);
        }
        if let Some(r) = self.killed.get() {
            let mut st = self.inner.borrow_mut();
            let _ = st.flush(self.sock.get_ref());
            return Err(r);
        }
        let sock = self.sock.get_ref();
        let mut st = self.inner.borrow_mut();
        if let Some(Role::Io(io)) = &st.role
            && io.shared.failed.load(Ordering::Acquire)
        {
            return Err("controller failed");
        }
        let mut more = false;
        if readable {
            // Answers that completed since the last turn go out before this turn's reads.
            if st.flush(sock).is_err() {
                return Err("socket write failed");
            }
            let mut reads = 0;
            loop {
                st.parse();
                if st.closing.is_some() {
                    break;
                }
                match st.read_some(sock) {
                    Ok((0, _)) => {
                        st.closing = Some("host closed the connection");
                        break;
                    }
                    Ok((_, true)) => {
                        // A short read drained the socket: TCP copies until the receive
                        // queue is empty or the buffer full. Whatever arrives after it
                        // raises a new edge in epoll, so readiness can be forgotten now
                        // instead of by one more read that returns `WouldBlock` (a
                        // system call per request at queue depth 1).
                        self.sock.clear_readable();
                        st.parse();
                        break;
                    }
                    Ok((_, false)) => {
                        reads += 1;
                        if reads == READS_PER_TURN {
                            st.parse();
                            more = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.sock.clear_readable();
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        st.closing = Some("socket read failed");
                        break;
                    }
                }
            }
        }
        match st.flush(sock) {
            Ok(true) => {}
            Ok(false) => self.sock.clear_writable(),
            Err(_) => return Err("socket write failed"),
        }
        match st.closing {
            Some(r) => Err(r),
            None => Ok(more),
        }
    }

    /// [`turn`](Self::turn) on a TLS connection: records are decrypted into the same
    /// buffers and answers encrypted from the same send queue. A read returning less
    /// than asked says nothing here (a record is at most 16 KiB), so reading goes on
    /// until the socket has nothing (`WouldBlock`) or the turn's reads are used up.
    fn turn_tls(&self, tls: &mut TlsStream, readable: bool) -> Result<bool, &'static str> {
        if let Some(r) = self.killed.get() {
            let mut st = self.inner.borrow_mut();
            let _ = st.flush(&mut *tls);
            return Err(r);
        }
        let mut st = self.inner.borrow_mut();
        if let Some(Role::Io(io)) = &st.role
            && io.shared.failed.load(Ordering::Acquire)
        {
            return Err("controller failed");
        }
        let mut more = false;
        if readable {
            if st.flush(&mut *tls).is_err() {
                return Err("socket write failed");
            }
            let mut reads = 0;
            loop {
                st.parse();
                if st.closing.is_some() {
                    break;
                }
                match st.read_some(&mut *tls) {
                    Ok((0, _)) => {
                        st.closing = Some("host closed the connection");
                        break;
                    }
                    Ok(_) => {
                        reads += 1;
                        if reads == READS_PER_TURN * 4 {
                            st.parse();
                            more = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.sock.clear_readable();
                        st.parse();
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        st.closing = Some("TLS read failed");
                        break;
                    }
                }
            }
        }
        match st.flush(&mut *tls) {
            Ok(true) => {}
            Ok(false) => self.sock.clear_writable(),
            Err(_) => return Err("socket write failed"),
        }
        match st.closing {
            Some(r) => Err(r),
            None => Ok(more),
        }
    }

    fn close(&self, reason: &'static str) {
        reactor::local(Registry::default)
            .map
            .borrow_mut()
            .remove(&self.id);
        let mut st = self.inner.borrow_mut();
        let cores = st.target.cores.clone();
        match st.role.take() {
            Some(Role::Admin(c)) => c.teardown(&cores, reason),
            Some(Role::Io(io)) => io.shared.detach_io_qpair(st.qid, self.id),
            None => {}
        }
        if let Some(t) = &self.tls {
            t.borrow_mut().shutdown();
        }
        let _ = self.sock.get_ref().shutdown(std::net::Shutdown::Both);
        tracing::debug!(
            peer = %self.peer, qpair = self.id, qid = st.qid, reason,
            free = st.counts[ReqState::Free as usize],
            executing = st.counts[ReqState::Executing as usize],
            receiving = st.counts[ReqState::ReceivingCapsuleData as usize]
                + st.counts[ReqState::TransferringH2C as usize],
            completing = st.counts[ReqState::Completing as usize],
            "queue pair closed"
        );
    }
}

/// Closes a queue pair whose authentication stalls (a step not taken before the
/// deadline); a stalled re-authentication only ends the exchange (SPDK).
async fn auth_watch(w: Weak<Qpair>) {
    loop {
        let deadline = {
            let Some(q) = w.upgrade() else { return };
            let mut st = q.inner.borrow_mut();
            let active = st
                .auth
                .as_ref()
                .is_some_and(|a| !matches!(a.state, AuthState::Completed | AuthState::Error));
            if !active {
                st.auth_watched = false;
                return;
            }
            st.auth_deadline
        };
        if reactor::now() < deadline {
            reactor::sleep_until(deadline).await;
            continue;
        }
        let Some(q) = w.upgrade() else { return };
        let mut st = q.inner.borrow_mut();
        if reactor::now() < st.auth_deadline {
            continue;
        }
        st.auth_watched = false;
        let state = st.auth.as_ref().map_or("none", |a| a.state.name());
        tracing::error!(
            peer = %q.peer, qpair = q.id, qid = st.qid, state,
            "authentication timed out"
        );
        if st.authenticating {
            drop(st);
            q.kill("authentication timed out");
        } else if let Some(a) = st.auth.as_mut() {
            a.state = AuthState::Completed;
        }
        return;
    }
}

/// Keeps watch over an admin queue pair's keep-alive timer.
async fn keep_alive_watch(w: Weak<Qpair>) {
    loop {
        let interval = {
            let Some(q) = w.upgrade() else { return };
            let st = q.inner.borrow();
            match &st.role {
                Some(Role::Admin(c)) if c.kato_ms > 0 => {
                    Duration::from_millis((c.kato_ms as u64 / 4).clamp(10, 1000))
                }
                Some(Role::Admin(_)) => Duration::from_secs(1),
                _ => return,
            }
        };
        reactor::sleep(interval).await;
        let Some(q) = w.upgrade() else { return };
        let expired = match &q.inner.borrow().role {
            Some(Role::Admin(c)) => c.keep_alive_expired(reactor::now()),
            _ => return,
        };
        if expired {
            tracing::warn!(peer = %q.peer, "keep alive timeout: controller torn down");
            q.kill("keep alive timeout");
            return;
        }
    }
}

impl QpInner {
    fn set_state(&mut self, slot: usize, to: ReqState) {
        let from = self.slots[slot].state;
        self.counts[from as usize] -= 1;
        self.counts[to as usize] += 1;
        self.slots[slot].state = to;
        debug_assert_eq!(
            self.counts.iter().map(|&c| c as usize).sum::<usize>(),
            self.slots.len()
        );
    }

    fn alloc_slot(&mut self) -> Option<usize> {
        if let Some(s) = self.free.pop() {
            return Some(s as usize);
        }
        if self.slots.len() >= self.max_slots {
            return None;
        }
        self.slots.push(Req::new());
        self.counts[ReqState::Free as usize] += 1;
        Some(self.slots.len() - 1)
    }

    fn release_slot(&mut self, slot: usize) {
        self.set_state(slot, ReqState::Free);
        self.free.push(slot as u16);
    }

    fn queue_kind(&self) -> QueueKind {
        match self.role {
            Some(Role::Io(_)) => QueueKind::Io,
            _ => QueueKind::Admin,
        }
    }

    /// Sends a C2HTermReq about the PDU being processed and closes.
    fn fatal(&mut self, fes_code: u16, fei: u32, reason: &'static str) {
        tracing::warn!(
            qpair = self.id,
            fes = fes_code,
            fei,
            reason,
            "fatal transport error"
        );
        let hdr = self.last_hdr;
        let n = self.last_hdr_len;
        self.send.push_bytes(|v| {
            pdu::put_term_req(
                v,
                PduType::C2HTermReq,
                &pdu::TermReq { fes: fes_code, fei },
                &hdr[..n],
            );
        });
        self.closing = Some(reason);
    }

    /// Runs a command whose data (if any) is in its buffer. The slot is `Executing`.
    fn execute(&mut self, slot: usize) {
        let Some(cmd) = self.slots[slot].cmd else {
            return self.complete(slot);
        };
        if self.role.is_some() {
            if let Command::AuthSend(c) | Command::AuthRecv(c) = cmd {
                return self.auth_exec(slot, c, matches!(cmd, Command::AuthSend(_)));
            }
            if self.authenticating {
                tracing::error!(
                    qpair = self.id,
                    qid = self.qid,
                    opcode = self.slots[slot].sqe.opcode(),
                    "command before authentication"
                );
                self.slots[slot].status = Status::AUTH_REQUIRED;
                return self.complete(slot);
            }
            if self.sec.plain_restricted() {
                // The listener requires TLS: this plain connection only generates the
                // PSK of the host's TLS reconnection.
                tracing::error!(
                    qpair = self.id,
                    qid = self.qid,
                    opcode = self.slots[slot].sqe.opcode(),
                    "command on a plain connection to a listener that requires TLS \
                     (secure channel concatenation: reconnect with TLS keyed by the generated PSK)"
                );
                self.slots[slot].status = Status::AUTH_REQUIRED;
                return self.complete(slot);
            }
        }
        match (&mut self.role, cmd) {
            (
                None,
                Command::Connect {
                    recfmt,
                    qid,
                    sqsize,
                    cattr,
                    kato_ms,
                },
            ) => self.connect(slot, recfmt, qid, sqsize, cattr, kato_ms),
            (Some(Role::Admin(c)), cmd) => {
                let req = &mut self.slots[slot];
                let cores = self.target.cores.clone();
                let data = match &mut req.buf {
                    Some(b) if req.xfer_len > 0 => &mut b.as_mut_slice()[..req.xfer_len as usize],
                    _ => &mut [],
                };
                match c.execute(
                    &cmd,
                    slot as u16,
                    data,
                    &self.target,
                    &cores,
                    reactor::now(),
                ) {
                    AdminDone::Now {
                        status,
                        dw0,
                        dw1,
                        data_len,
                    } => {
                        req.status = status;
                        req.dw0 = dw0;
                        req.dw1 = dw1;
                        req.c2h_len = data_len;
                        if !status.is_success() {
                            c.log_error(0, req.sqe.cid(), status, req.sqe.nsid(), 0);
                        }
                        self.complete(slot);
                    }
                    AdminDone::HoldAer => {
                        if let Some((s, ev)) = c.poll_event() {
                            self.complete_aer(s, ev);
                        }
                    }
                }
            }
            (Some(Role::Io(_)), cmd) => self.execute_io(slot, cmd),
            (None, _) => {
                self.slots[slot].status = Status::COMMAND_SEQUENCE_ERROR;
                self.complete(slot);
            }
        }
    }

    fn connect(
        &mut self,
        slot: usize,
        recfmt: u16,
        qid: u16,
        sqsize: u16,
        cattr: u8,
        kato_ms: u32,
    ) {
        let ctx = ConnectCtx {
            target: &self.target,
            opts: &self.opts,
            core: self.core,
            qpair_id: self.id,
            now: reactor::now(),
            tls: self
                .sec
                .tls_id
                .as_ref()
                .map(|(h, s)| (h.as_str(), s.as_str())),
            tls_generated: self.sec.tls_generated,
            plain_restricted: self.sec.plain_restricted(),
        };
        let data = match &self.slots[slot].buf {
            Some(b) if self.slots[slot].xfer_len > 0 => b.as_slice(),
            _ => &[][..],
        };
        match ctrlr::connect(&ctx, recfmt, qid, sqsize, kato_ms, data) {
            Ok(role) => {
                let (cntlid, admin) = match &role {
                    Role::Admin(c) => (c.shared.cntlid, true),
                    Role::Io(io) => (io.shared.cntlid, false),
                };
                self.qid = qid;
                self.sq_size = sqsize as u32 + 1;
                self.sqhd %= self.sq_size;
                self.reported_sqhd = self.sqhd;
                self.sq_flow_disabled = cattr & spec::CATTR_DISABLE_SQ_FLOW_CONTROL != 0;
                tracing::debug!(
                    qid,
                    cattr,
                    sq_flow_disabled = self.sq_flow_disabled,
                    "connected"
                );
                self.max_slots = (self.sq_size as usize + ctrlr::MAX_AERS) * 2;
                if !admin {
                    self.limits.max_in_capsule_len = self.opts.in_capsule_data_size;
                }
                self.slots.reserve(self.sq_size as usize);
                let (sub, hostnqn, ctrl_kato_ms) = match &role {
                    Role::Admin(c) => (
                        c.shared.subsystem.clone(),
                        c.shared.hostnqn.clone(),
                        c.shared.kato_ms,
                    ),
                    Role::Io(io) => (
                        io.shared.subsystem.clone(),
                        io.shared.hostnqn.clone(),
                        io.shared.kato_ms,
                    ),
                };
                self.role = Some(role);
                self.slots[slot].dw0 = cntlid as u32;
                // A connection keyed by a generated PSK is not asked again: the host
                // authenticated when the PSK was generated (as the Linux target).
                if sub.host_auth_required(&hostnqn) && !self.sec.tls_generated {
                    // AUTHREQ.ATR: the host must authenticate this queue pair.
                    self.slots[slot].dw0 |= 1 << 17;
                    self.authenticating = true;
                    self.auth = Some(Box::new(QpairAuth::new()));
                    self.auth_step = if ctrl_kato_ms > 0 {
                        Duration::from_millis(ctrl_kato_ms as u64)
                    } else {
                        Duration::from_millis(qauth::DEFAULT_STEP_TIMEOUT_MS)
                    };
                    tracing::debug!(qid, hostnqn = %hostnqn, "authentication required");
                    self.auth_rearm();
                }
                if admin {
                    reactor::spawn_local(keep_alive_watch(self.me.clone())).detach();
                }
            }
            Err(e) => {
                self.slots[slot].status = e.status;
                self.slots[slot].dw0 = e.dw0;
            }
        }
        self.complete(slot);
    }

    /// The controller this queue pair belongs to, once connected.
    fn ctrlr_shared(&self) -> Option<Arc<super::subsystem::CtrlrShared>> {
        match &self.role {
            Some(Role::Admin(a)) => Some(a.shared.clone()),
            Some(Role::Io(io)) => Some(io.shared.clone()),
            None => None,
        }
    }

    /// Runs AUTH_Send (`send`) or AUTH_Receive.
    fn auth_exec(&mut self, slot: usize, c: crate::nvme::auth::AuthCmd, send: bool) {
        let Some(shared) = self.ctrlr_shared() else {
            return self.complete(slot);
        };
        if self.auth_computing {
            // Hosts send one authentication command at a time.
            tracing::error!(
                qpair = self.id,
                qid = self.qid,
                "authentication command while the previous one waits for its DH computation"
            );
            self.slots[slot].status = Status::COMMAND_SEQUENCE_ERROR;
            return self.complete(slot);
        }
        let fresh = self
            .auth
            .as_ref()
            .is_none_or(|a| a.state == AuthState::Completed);
        if !self.authenticating && fresh {
            // A re-authentication of an enabled queue pair.
            tracing::info!(
                qpair = self.id,
                qid = self.qid,
                "re-authentication requested"
            );
            self.auth = Some(Box::new(QpairAuth::new()));
            if self.auth_step.is_zero() {
                self.auth_step = Duration::from_millis(qauth::DEFAULT_STEP_TIMEOUT_MS);
            }
            self.auth_rearm();
        }
        let ctx = auth_ctx(&self.target, &shared, self.qid, &self.sec);
        let Some(auth) = self.auth.as_mut() else {
            return self.complete(slot);
        };
        let req = &mut self.slots[slot];
        let len = req.xfer_len as usize;
        let data: &mut [u8] = match &mut req.buf {
            Some(b) if len > 0 => &mut b.as_mut_slice()[..len],
            _ => &mut [],
        };
        let (status, after) = if send {
            auth.send(&ctx, &c, data)
        } else {
            let (status, n, after) = auth.recv(&ctx, &c, data);
            req.c2h_len = n;
            (status, after)
        };
        if let After::Compute(job) = after {
            // The slot stays Executing until the computation is done.
            self.auth_computing = true;
            return self.auth_offload(slot, c, send, job);
        }
        req.status = status;
        let negotiated = auth.negotiated();
        let generated = matches!(after, After::Enable)
            .then(|| auth.take_generated())
            .flatten();
        self.complete(slot);
        match after {
            After::Nothing | After::Compute(_) => {}
            After::Rearm => self.auth_rearm(),
            After::Enable => {
                let (digest, dhgroup) = negotiated;
                let reauth = !self.authenticating;
                if self.authenticating {
                    self.authenticating = false;
                    if let Some(Role::Admin(a)) = &self.role
                        && !self.sec.plain_restricted()
                    {
                        a.shared.authenticated.store(true, Ordering::Release);
                    }
                }
                if let Some(g) = generated {
                    // Kept for the host's TLS connections (in memory, never shown).
                    shared.subsystem.set_generated_psk(&shared.hostnqn, g);
                    tracing::info!(
                        qpair = self.id, subnqn = %shared.subsystem.nqn,
                        hostnqn = %shared.hostnqn, tls = self.sec.tls_id.is_some(),
                        "secure channel concatenation: TLS PSK generated for the host's TLS connections"
                    );
                }
                shared.record_auth(self.qid, digest, dhgroup, reauth);
                tracing::info!(
                    qpair = self.id, qid = self.qid, subnqn = %shared.subsystem.nqn,
                    hostnqn = %shared.hostnqn, digest, dhgroup, reauth,
                    "authenticated"
                );
            }
            After::CloseSoon => {
                let w = self.me.clone();
                reactor::spawn_local(async move {
                    reactor::sleep(Duration::from_millis(qauth::FAILURE1_CLOSE_DELAY_MS)).await;
                    if let Some(q) = w.upgrade() {
                        q.kill("authentication failed");
                    }
                })
                .detach();
            }
            After::Close => self.closing = Some("authentication failed"),
        }
    }

    /// Runs the DH computation `job` of the authentication command in `slot` on a
    /// worker thread; when it is done, gives its result to the exchange and runs the
    /// command again (`auth_computed`). The reactor serves everything else meanwhile.
    fn auth_offload(
        &mut self,
        slot: usize,
        c: crate::nvme::auth::AuthCmd,
        send: bool,
        job: qauth::DhJob,
    ) {
        let w = self.me.clone();
        reactor::spawn_local(async move {
            let r = match reactor::offload::run(qauth::DH_TIME_LIMIT, move || job.run()).await {
                Ok(Ok(done)) => Ok(done),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("on a worker thread: {e}")),
            };
            let Some(q) = w.upgrade() else { return };
            q.inner.borrow_mut().auth_computed(slot, c, send, r);
            q.notify();
        })
        .detach();
    }

    fn auth_computed(
        &mut self,
        slot: usize,
        c: crate::nvme::auth::AuthCmd,
        send: bool,
        r: Result<qauth::DhDone, String>,
    ) {
        self.auth_computing = false;
        if self.slots.get(slot).map(|r| r.state) != Some(ReqState::Executing) {
            return;
        }
        let Some(shared) = self.ctrlr_shared() else {
            return self.complete(slot);
        };
        let ctx = auth_ctx(&self.target, &shared, self.qid, &self.sec);
        let Some(auth) = self.auth.as_mut() else {
            return self.complete(slot);
        };
        auth.computed(&ctx, r);
        if send && auth.state == AuthState::Failure1 {
            // The AUTH_Send completes; the next AUTH_Receive answers AUTH_Failure1.
            self.slots[slot].status = Status::SUCCESS;
            return self.complete(slot);
        }
        self.auth_exec(slot, c, send);
    }

    /// Restarts the authentication step timer (and its watcher, if none runs).
    fn auth_rearm(&mut self) {
        self.auth_deadline = reactor::now().after(self.auth_step);
        if !self.auth_watched {
            self.auth_watched = true;
            reactor::spawn_local(auth_watch(self.me.clone())).detach();
        }
    }

    /// Completes an outstanding AER with event `ev`.
    fn complete_aer(&mut self, slot: u16, ev: u32) {
        let slot = slot as usize;
        if self.slots.get(slot).map(|r| r.state) != Some(ReqState::Executing) {
            return;
        }
        let req = &mut self.slots[slot];
        req.status = Status::SUCCESS;
        req.dw0 = ev;
        self.complete(slot);
    }

    /// Whether a successful read may end with a SUCCESS C2HData PDU instead of a response
    /// capsule. A response capsule also tells the host the SQ head; a host that disabled
    /// SQ flow control needs none. One that did not (SPDK's host tools, the Linux host by
    /// default) is sent SUCCESS anyway by SPDK's target, which leaves its view of the head
    /// arbitrarily old. We skip the capsule only while the host's view is less than a
    /// quarter of the queue behind, so a host that does track the head never sees more
    /// than a quarter of its queue held by commands already taken.
    fn may_skip_response(&self) -> bool {
        if self.sq_flow_disabled {
            return true;
        }
        let size = self.sq_size.max(1);
        let behind = (self.sqhd + size - self.reported_sqhd) % size;
        behind < size / 4
    }

    /// Queues the answer of a finished command: its C2HData (on success) and response
    /// capsule, then a mark that releases the slot once they are written.
    fn complete(&mut self, slot: usize) {
        let hd = self.limits.header_digest;
        let dd = self.limits.data_digest;
        let hpda = self.hpda;
        let use_success = self.opts.c2h_success && self.may_skip_response();
        let req = &self.slots[slot];
        let cid = req.sqe.cid();
        let mut send_resp = true;
        if req.status.is_success() && req.dir == DataDirection::ControllerToHost && req.c2h_len > 0
        {
            let buf = req.buf.as_ref().expect("C2H commands have a buffer");
            let total = req.c2h_len as usize;
            let mut off = 0;
            while off < total {
                let n = (total - off).min(MAX_C2H_LEN);
                let last = off + n == total;
                let success = last && use_success;
                let h = pdu::DataHdr {
                    cccid: cid,
                    ttag: 0,
                    datao: off as u32,
                    datal: n as u32,
                    last,
                    success,
                };
                self.send.push_bytes(|v| {
                    pdu::put_data_hdr(v, PduType::C2HData, &h, hd, dd, hpda);
                });
                let chunk = &buf.as_slice()[off..off + n];
                // SAFETY: the buffer belongs to this slot, which stays `Completing` (its
                // buffer untouched) until the mark pushed below is reported by `flush`.
                unsafe { self.send.push_raw(chunk.as_ptr(), n) };
                if dd {
                    let c = pdu::crc32c(chunk);
                    self.send
                        .push_bytes(|v| v.extend_from_slice(&c.to_le_bytes()));
                }
                if success {
                    send_resp = false;
                }
                off += n;
            }
        }
        if send_resp {
            self.reported_sqhd = self.sqhd;
            let cqe = Cqe {
                dw0: req.dw0,
                dw1: req.dw1,
                sqhd: self.sqhd as u16,
                sqid: self.qid,
                cid,
                status: req.status.to_field(),
            };
            self.send.push_bytes(|v| {
                pdu::put_capsule_resp(v, &cqe.encode(), hd);
            });
        }
        self.send.push_mark(slot as u64);
        self.set_state(slot, ReqState::Completing);
    }

    /// Writes what is queued; releases the slots whose answers went out.
    fn flush(&mut self, sock: impl io::Write) -> io::Result<bool> {
        if self.send.is_empty() {
            return Ok(true);
        }
        let mut marks = std::mem::take(&mut self.marks);
        let r = self.send.flush(sock, |t| marks.push(t));
        for &t in &marks {
            self.release_slot(t as usize);
        }
        marks.clear();
        self.marks = marks;
        r
    }
}

impl Req {
    fn status_worst(&self, st: Status) -> Status {
        if self.status.is_success() {
            st
        } else {
            self.status
        }
    }
}
