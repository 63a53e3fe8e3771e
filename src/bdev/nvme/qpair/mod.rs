//! The host side of one NVMe/TCP connection (admin or I/O queue pair) on one core.
//!
//! A task per connection connects the socket, exchanges ICReq/ICResp, sends Connect, and
//! then runs the same receive/send loop as the target: big reads, many PDUs parsed per
//! read, one `writev` per turn. Commands take a slot (the slot index is the command ID);
//! when every slot is busy, or before the queue is connected, they wait in a backlog.
//! Bdev requests larger than the controller's maximum transfer are split into several
//! commands that complete their parent together.
//!
//! Completions of bdev requests are delivered after the connection's state is released,
//! so a completion handler may submit again at once.
//!
//! This file holds the connection (socket connect, ICReq, Connect), the slots and the
//! send side; `recv` parses what the controller sends, `nvm` turns bdev requests into
//! NVM commands.
//!
//! # Safety
//! Commands carry raw iovecs into memory they do not own: the buffers of bdev requests
//! (valid until the request completes — the [`BdevIo`] contract) and the buffers of
//! admin waiters (kept alive by the slot's `Rc`). Data is copied into them only while
//! the command is outstanding, and a failed connection drops its unsent data before it
//! completes anything.

mod nvm;
mod recv;

use crate::bdev::{BdevIo, IoStatus};
use crate::nvme::pdu::{self, Limits, PduType};
use crate::nvme::spec::{self, Cqe, DsmRange, SglDesc, Sqe, Status, encode_dsm_range};
use crate::nvme::tls::GeneratedPsk;
use crate::reactor::recv::RecvBuf;
use crate::reactor::send::SendQueue;
use crate::reactor::{self, io::Async};
use nvm::Parent;
use recv::Rx;
use slab::Slab;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

const RECV_BUF_LEN: usize = 256 << 10;
const READS_PER_TURN: usize = 8;
/// In-capsule data limit on the admin queue.
const ADMIN_IN_CAPSULE_LEN: u32 = 8192;

/// Why a host queue pair failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the controller refused Connect: {0}")]
    ConnectRejected(Status),
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the controller terminated the connection (FES {fes:#x}, FEI {fei:#x})")]
    Terminated { fes: u16, fei: u32 },
    #[error("command failed: {0}")]
    Status(Status),
    #[error("controller `{0}`: {1}")]
    Controller(String, String),
    #[error("DH-HMAC-CHAP authentication failed: {0}")]
    Auth(String),
    /// `bdev_nvme_set_keys`: a queue pair's new DH-HMAC-CHAP transaction failed (the
    /// queue pair is disconnected, as SPDK's host does and as the controller does after
    /// its AUTH_Failure1).
    #[error("controller `{name}`: re-authentication of queue {qid} failed: {reason}")]
    Reauth {
        name: String,
        qid: u16,
        reason: String,
    },
}

/// AUTHREQ.ATR in a Connect answer's dword 0 (AUTHREQ is its upper half; ATR is its
/// bit 1, as SPDK's target and host and tessera's target place it): authentication
/// transaction required.
const CONNECT_ATR: u32 = 1 << 17;

/// How long a queue pair's whole authentication exchange may take (the first one, and
/// each re-authentication).
const AUTH_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `auth` on `q` with `keys` (and SC_C `scc`) within [`AUTH_TIME_LIMIT`]; the
/// PSK a concatenation generated.
async fn authenticate_within(
    q: &HostQpair,
    keys: &super::auth::HostKeys,
    hostnqn: &str,
    subnqn: &str,
    tid: u16,
    scc: u8,
) -> Result<Option<GeneratedPsk>, HostError> {
    let deadline = reactor::now().after(AUTH_TIME_LIMIT);
    reactor::until(
        deadline,
        super::auth::authenticate(q, keys, hostnqn, subnqn, tid, scc),
    )
    .await
    .unwrap_or_else(|| {
        Err(HostError::Auth(format!(
            "no answer within {} s",
            AUTH_TIME_LIMIT.as_secs()
        )))
    })
}

/// The queue pair's authentication, once its Connect answered: the exchange
/// (`super::auth`) when the controller asks for it, within [`AUTH_TIME_LIMIT`]; the
/// queue pair is then ready, or failed with the reason.
async fn drive_auth(q: Rc<HostQpair>) {
    let Ok((_, true)) = q.wait_connected().await else {
        return;
    };
    let (keys, hostnqn, subnqn, qid, scc) = {
        let st = q.inner.borrow();
        let p = &st.params;
        (
            p.dhchap.clone(),
            p.hostnqn.clone(),
            p.subnqn.clone(),
            p.qid,
            p.concat,
        )
    };
    let Some(keys) = keys.get() else {
        return;
    };
    let r = authenticate_within(&q, keys, &hostnqn, &subnqn, qid, scc).await;
    match r {
        Ok(generated) => {
            tracing::debug!(qid, %subnqn, "DH-HMAC-CHAP: authenticated");
            *q.generated.borrow_mut() = generated;
            q.authenticated();
        }
        Err(e) => {
            tracing::warn!(qid, %subnqn, %hostnqn, "{e}");
            q.fail_with(e);
            q.close("authentication failed");
        }
    }
}

/// How to connect a queue pair.
#[derive(Clone, Debug)]
pub(crate) struct QpairParams {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub qid: u16,
    /// Entries of the submission queue (sqsize + 1).
    pub queue_depth: u16,
    pub kato_ms: u32,
    /// Controller ID (0xffff for the admin queue).
    pub cntlid: u16,
    pub hdgst: bool,
    pub ddgst: bool,
    /// In-capsule data limit for I/O queues (from IOCCSZ).
    pub in_capsule_len: u32,
    /// The DH-HMAC-CHAP keys, when the host has them: the queue pair authenticates
    /// when its Connect answer asks (AUTHREQ.ATR).
    pub dhchap: super::auth::DhchapHostKeys,
    /// TLS before ICReq, when the controller was attached with a PSK.
    pub tls: super::tls::HostTls,
    /// The SC_C of the queue pair's first authentication (secure channel
    /// concatenation: NEWTLSPSK on the plain admin queue of a `secure_concat`
    /// controller; 0 otherwise).
    pub concat: u8,
}

/// A command's result, or the task waiting for it.
type WaitState = (Option<Result<Cqe, HostError>>, Option<Waker>);

/// A waiter for one command (admin commands, AERs).
pub(crate) struct Waiter {
    state: RefCell<WaitState>,
    /// The command's data (out or in). Never resized while the command runs.
    pub buf: RefCell<Vec<u8>>,
}

impl Waiter {
    fn new(len: usize) -> Rc<Waiter> {
        Rc::new(Waiter {
            state: RefCell::new((None, None)),
            buf: RefCell::new(vec![0u8; len]),
        })
    }

    fn complete(&self, r: Result<Cqe, HostError>) {
        let w = {
            let mut s = self.state.borrow_mut();
            s.0 = Some(r);
            s.1.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }

    async fn wait(&self) -> Result<Cqe, HostError> {
        std::future::poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            match s.0.take() {
                Some(r) => Poll::Ready(r),
                None => {
                    s.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// Who is told when a command completes.
enum Owner {
    /// A part of a bdev request (an entry of `parents`).
    Io { parent: usize },
    /// An awaited command.
    Wait(Rc<Waiter>),
    /// The queue's own Connect.
    Connect,
}

/// The data of a command.
enum Data {
    None,
    /// Host to controller.
    Out(SmallVec<[libc::iovec; 4]>, u32),
    /// Controller to host.
    In(SmallVec<[libc::iovec; 4]>, u32),
    /// One Dataset Management range (kept in the slot).
    Dsm(DsmRange),
}

/// A command waiting for a slot.
struct Pending {
    sqe: Sqe,
    data: Data,
    owner: Owner,
}

/// The state of a host request slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Free.
    Free,
    /// Capsule sent (with in-capsule data, if any); waiting for R2T, C2HData or the
    /// response.
    Outstanding,
}

struct Slot {
    state: SlotState,
    owner: Option<Owner>,
    iovs: SmallVec<[libc::iovec; 4]>,
    len: u32,
    out: bool,
    /// C2H bytes received.
    c2h_done: u32,
    /// Storage for a DSM range (boxed so its address is stable).
    dsm: Box<[u8; 16]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// The socket is connecting.
    Connecting,
    /// ICReq sent.
    IcSent,
    /// Connect sent.
    Connecting2,
    /// Connected; the controller asked for DH-HMAC-CHAP: only its commands go out.
    Authenticating,
    /// Ready for commands.
    Ready,
    /// Failed; commands fail at once.
    Failed(HostError),
}

struct Inner {
    params: QpairParams,
    phase: Phase,
    limits: Limits,
    cpda: u8,
    maxh2cdata: u32,
    in_capsule_len: u32,
    recv: RecvBuf,
    rx: Rx,
    send: SendQueue,
    slots: Vec<Slot>,
    free: Vec<u16>,
    backlog: VecDeque<Pending>,
    /// Authentication commands, which go out before the queue pair is ready.
    auth_queue: VecDeque<Pending>,
    parents: Slab<Parent>,
    /// Completed bdev requests, delivered after the state is released.
    done: Vec<(BdevIo, IoStatus)>,
    cntlid: u16,
    ready_waiters: Vec<Waker>,
    /// The Connect command's data, alive while Connect runs.
    connect_data: Option<Rc<Waiter>>,
}

/// One host queue pair.
pub(crate) struct HostQpair {
    sock: RefCell<Option<Rc<Async<mio::net::TcpStream>>>>,
    /// The TLS session, on a controller attached with a PSK.
    tls: RefCell<Option<crate::reactor::tls::TlsStream>>,
    inner: RefCell<Inner>,
    waker: RefCell<Option<Waker>>,
    notified: Cell<bool>,
    closed: Cell<bool>,
    /// A re-authentication runs (`bdev_nvme_set_keys`).
    reauthenticating: Cell<bool>,
    /// Transaction ID of the last re-authentication (the first transaction uses the
    /// queue ID).
    reauth_tid: Cell<u16>,
    /// The PSK the last authentication generated (secure channel concatenation).
    generated: RefCell<Option<GeneratedPsk>>,
}

impl HostQpair {
    /// Starts connecting a queue pair on the current core; commands may be submitted at
    /// once (they wait for the connection).
    pub(crate) fn start(params: QpairParams) -> Rc<HostQpair> {
        let n = params.queue_depth.max(2) as usize;
        let slots = (0..n)
            .map(|_| Slot {
                state: SlotState::Free,
                owner: None,
                iovs: SmallVec::new(),
                len: 0,
                out: false,
                c2h_done: 0,
                dsm: Box::new([0; 16]),
            })
            .collect();
        let in_capsule_len = if params.qid == 0 {
            ADMIN_IN_CAPSULE_LEN
        } else {
            params.in_capsule_len
        };
        let q = Rc::new(HostQpair {
            sock: RefCell::new(None),
            tls: RefCell::new(None),
            inner: RefCell::new(Inner {
                params,
                phase: Phase::Connecting,
                limits: Limits::initial(),
                cpda: 0,
                maxh2cdata: pdu::MIN_MAXH2CDATA,
                in_capsule_len,
                recv: RecvBuf::new(RECV_BUF_LEN),
                rx: Rx::Header,
                send: SendQueue::new(),
                slots,
                free: (0..n as u16).rev().collect(),
                backlog: VecDeque::new(),
                auth_queue: VecDeque::new(),
                parents: Slab::with_capacity(n),
                done: Vec::with_capacity(n),
                cntlid: 0,
                ready_waiters: Vec::new(),
                connect_data: None,
            }),
            waker: RefCell::new(None),
            notified: Cell::new(false),
            closed: Cell::new(false),
            reauthenticating: Cell::new(false),
            reauth_tid: Cell::new(0),
            generated: RefCell::new(None),
        });
        reactor::spawn_local(run(q.clone())).detach();
        // Also without keys: `bdev_nvme_set_keys` may give some before Connect answers.
        reactor::spawn_local(drive_auth(q.clone())).detach();
        q
    }

    /// `bdev_nvme_set_keys` on this queue pair: from now on it authenticates with
    /// `keys`, and when it is connected and `keys` has a host key it runs a new
    /// DH-HMAC-CHAP transaction at once (AUTH_Send/AUTH_Receive going out between its
    /// other commands, which carry on), within [`AUTH_TIME_LIMIT`]. `Ok(true)` when it
    /// re-authenticated; `Ok(false)` when there was nothing to do (no host key, or the
    /// queue pair is not connected: SPDK skips those, and one still connecting
    /// authenticates with the new keys when its Connect answer asks). A failure
    /// disconnects the queue pair (its commands fail), as SPDK's host does; the target
    /// closes it too after its AUTH_Failure1.
    pub(crate) async fn reauthenticate(
        &self,
        keys: super::auth::DhchapHostKeys,
        scc: u8,
    ) -> Result<bool, HostError> {
        let (hostnqn, subnqn, qid) = {
            let mut st = self.inner.borrow_mut();
            st.params.dhchap = keys.clone();
            if st.phase != Phase::Ready || self.closed.get() {
                return Ok(false);
            }
            (
                st.params.hostnqn.clone(),
                st.params.subnqn.clone(),
                st.params.qid,
            )
        };
        let Some(k) = keys.get() else {
            return Ok(false);
        };
        if self.reauthenticating.replace(true) {
            return Err(HostError::Auth(format!(
                "queue {qid}: a re-authentication is already running"
            )));
        }
        // A transaction ID of its own for each transaction.
        let tid = self.reauth_tid.get().wrapping_add(1).max(1);
        self.reauth_tid.set(tid);
        let tid = qid.wrapping_add(tid.wrapping_mul(0x100));
        let r = authenticate_within(self, k, &hostnqn, &subnqn, tid, scc).await;
        self.reauthenticating.set(false);
        match r {
            Ok(generated) => {
                tracing::debug!(qid, %subnqn, "DH-HMAC-CHAP: re-authenticated");
                *self.generated.borrow_mut() = generated;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(qid, %subnqn, %hostnqn, "re-authentication: {e}");
                self.fail_with(e.clone());
                self.close("re-authentication failed");
                Err(e)
            }
        }
    }

    /// The PSK the last authentication generated (secure channel concatenation).
    pub(crate) fn take_generated(&self) -> Option<GeneratedPsk> {
        self.generated.borrow_mut().take()
    }

    /// Waits until Connect succeeded; returns the controller ID and whether the
    /// controller asked for authentication.
    async fn wait_connected(&self) -> Result<(u16, bool), HostError> {
        std::future::poll_fn(|cx| {
            let mut st = self.inner.borrow_mut();
            match &st.phase {
                Phase::Ready => Poll::Ready(Ok((st.cntlid, false))),
                Phase::Authenticating => Poll::Ready(Ok((st.cntlid, true))),
                Phase::Failed(e) => Poll::Ready(Err(e.clone())),
                _ => {
                    st.ready_waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Authentication is over: the queue pair takes every command.
    fn authenticated(&self) {
        let mut st = self.inner.borrow_mut();
        if st.phase == Phase::Authenticating {
            st.phase = Phase::Ready;
            for w in st.ready_waiters.drain(..) {
                w.wake();
            }
            st.pump();
        }
        drop(st);
        self.notify();
    }

    /// Fails the queue pair with `e` (its commands fail).
    fn fail_with(&self, e: HostError) {
        let done = {
            let mut st = self.inner.borrow_mut();
            st.fail(e);
            std::mem::take(&mut st.done)
        };
        for (io, s) in done {
            io.complete(s);
        }
        self.notify();
    }

    fn notify(&self) {
        self.notified.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until Connect succeeded; returns the controller ID.
    pub(crate) async fn wait_ready(&self) -> Result<u16, HostError> {
        std::future::poll_fn(|cx| {
            let mut st = self.inner.borrow_mut();
            match &st.phase {
                Phase::Ready => Poll::Ready(Ok(st.cntlid)),
                Phase::Failed(e) => Poll::Ready(Err(e.clone())),
                _ => {
                    st.ready_waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// True when the queue pair failed or was closed.
    pub(crate) fn is_failed(&self) -> bool {
        matches!(self.inner.borrow().phase, Phase::Failed(_))
    }

    /// Closes the connection; outstanding commands fail.
    pub(crate) fn close(&self, reason: &str) {
        self.closed.set(true);
        let done = {
            let mut st = self.inner.borrow_mut();
            st.fail(HostError::ConnectionLost(reason.to_string()));
            std::mem::take(&mut st.done)
        };
        for (io, s) in done {
            io.complete(s);
        }
        if let Some(s) = self.sock.borrow().as_ref() {
            let _ = s.get_ref().shutdown(std::net::Shutdown::Both);
        }
        self.notify();
    }

    /// Runs a command with `len` bytes of data (`out`: host to controller, taken from
    /// `data_out`) and returns its completion and the data received.
    pub(crate) async fn command(
        &self,
        sqe: Sqe,
        len: usize,
        data_out: Option<&[u8]>,
    ) -> Result<(Cqe, Vec<u8>), HostError> {
        self.run_command(sqe, len, data_out, false).await
    }

    /// [`HostQpair::command`] for the authentication exchange, which goes out while
    /// the queue pair is not ready yet.
    pub(crate) async fn auth_command(
        &self,
        sqe: Sqe,
        len: usize,
        data_out: Option<&[u8]>,
    ) -> Result<(Cqe, Vec<u8>), HostError> {
        self.run_command(sqe, len, data_out, true).await
    }

    async fn run_command(
        &self,
        sqe: Sqe,
        len: usize,
        data_out: Option<&[u8]>,
        auth: bool,
    ) -> Result<(Cqe, Vec<u8>), HostError> {
        let w = Waiter::new(len);
        if let Some(d) = data_out {
            w.buf.borrow_mut()[..d.len().min(len)].copy_from_slice(&d[..d.len().min(len)]);
        }
        let iov = {
            let mut b = w.buf.borrow_mut();
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: len,
            }
        };
        let data = match (len, data_out.is_some()) {
            (0, _) => Data::None,
            (_, true) => Data::Out(smallvec::smallvec![iov], len as u32),
            (_, false) => Data::In(smallvec::smallvec![iov], len as u32),
        };
        self.submit(
            Pending {
                sqe,
                data,
                owner: Owner::Wait(w.clone()),
            },
            auth,
        );
        let cqe = w.wait().await?;
        let st = cqe.status();
        if !st.is_success() {
            return Err(HostError::Status(st));
        }
        let buf = std::mem::take(&mut *w.buf.borrow_mut());
        Ok((cqe, buf))
    }

    fn submit(&self, p: Pending, auth: bool) {
        let failed = {
            let mut st = self.inner.borrow_mut();
            if let Phase::Failed(e) = &st.phase {
                Some((e.clone(), p))
            } else {
                if auth {
                    st.auth_queue.push_back(p);
                } else {
                    st.backlog.push_back(p);
                }
                st.pump();
                None
            }
        };
        if let Some((e, p)) = failed {
            match p.owner {
                Owner::Wait(w) => w.complete(Err(e)),
                Owner::Io { .. } | Owner::Connect => {}
            }
            return;
        }
        self.notify();
    }

    fn poll_wait(&self, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        if self.closed.get() || self.notified.replace(false) {
            return Poll::Ready(false);
        }
        let sock = self.sock.borrow();
        let Some(sock) = sock.as_ref() else {
            return Poll::Ready(false);
        };
        if sock.poll_readable(cx).is_ready() {
            return Poll::Ready(true);
        }
        if !self.inner.borrow().send.is_empty() && sock.poll_writable(cx).is_ready() {
            return Poll::Ready(false);
        }
        let mut w = self.waker.borrow_mut();
        match &*w {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// One turn of the connection: read and parse, send, deliver completions. `Ok(true)`
    /// when input is left over.
    fn turn(&self, readable: bool) -> Result<bool, ()> {
        // Whatever was submitted so far is sent by this turn.
        self.notified.set(false);
        let sock_ref = self.sock.borrow();
        let sock = sock_ref.as_ref().ok_or(())?;
        let s = sock.get_ref();
        let mut tls = self.tls.borrow_mut();
        let mut more = false;
        let mut st = self.inner.borrow_mut();
        if readable {
            let mut reads = 0;
            loop {
                st.parse();
                if matches!(st.phase, Phase::Failed(_)) {
                    break;
                }
                let r = match tls.as_mut() {
                    None => st.recv.fill(s),
                    Some(t) => st.recv.fill(t),
                };
                match r {
                    Ok(0) => {
                        st.fail(HostError::ConnectionLost(
                            "controller closed the connection".into(),
                        ));
                        break;
                    }
                    Ok(_) => {
                        reads += 1;
                        // A read that left room in the buffer drained the socket: deliver
                        // and send first; the read that confirms `WouldBlock` waits for the
                        // next turn, off the latency path.
                        // (Through TLS a read returns a record at most: reading goes
                        // on until `WouldBlock`.)
                        if (tls.is_none() && !st.recv.is_full())
                            || reads == READS_PER_TURN * if tls.is_some() { 4 } else { 1 }
                        {
                            st.parse();
                            more = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        sock.clear_readable();
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        st.fail(HostError::ConnectionLost(e.to_string()));
                        break;
                    }
                }
            }
        }
        st.pump();
        // Deliver completions with the state released: handlers may submit again.
        loop {
            let done = std::mem::take(&mut st.done);
            if done.is_empty() {
                break;
            }
            drop(st);
            for (io, status) in done {
                io.complete(status);
            }
            st = self.inner.borrow_mut();
            st.pump();
        }
        let r = match tls.as_mut() {
            None => st.send.flush(s, |_| {}),
            Some(t) => st.send.flush(t, |_| {}),
        };
        match r {
            Ok(true) => {}
            Ok(false) => sock.clear_writable(),
            Err(e) => st.fail(HostError::ConnectionLost(e.to_string())),
        }
        let failed = matches!(st.phase, Phase::Failed(_));
        let leftover = std::mem::take(&mut st.done);
        drop(st);
        for (io, status) in leftover {
            io.complete(status);
        }
        if failed {
            return Err(());
        }
        Ok(more)
    }
}

async fn run(q: Rc<HostQpair>) {
    let addr = q.inner.borrow().params.addr;
    // Connect the socket without blocking the reactor.
    let sock = match mio::net::TcpStream::connect(addr).and_then(Async::new) {
        Ok(s) => s,
        Err(e) => {
            q.inner.borrow_mut().fail(HostError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            });
            return;
        }
    };
    std::future::poll_fn(|cx| sock.poll_writable(cx)).await;
    let err = match sock.get_ref().take_error() {
        Ok(Some(e)) | Err(e) => Some(e.to_string()),
        Ok(None) => match sock.get_ref().peer_addr() {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        },
    };
    if let Some(reason) = err {
        let mut st = q.inner.borrow_mut();
        st.fail(HostError::Connect {
            addr: addr.to_string(),
            reason,
        });
        let done = std::mem::take(&mut st.done);
        drop(st);
        for (io, s) in done {
            io.complete(s);
        }
        return;
    }
    let _ = sock.get_ref().set_nodelay(true);
    let sock = Rc::new(sock);
    let tls_key = q.inner.borrow().params.tls.clone();
    if tls_key.is_set() {
        let (hostnqn, subnqn) = {
            let st = q.inner.borrow();
            (st.params.hostnqn.clone(), st.params.subnqn.clone())
        };
        let r = match tls_key.ssl(&hostnqn, &subnqn) {
            Ok(ssl) => {
                crate::reactor::tls::handshake(
                    sock.clone(),
                    ssl,
                    false,
                    super::tls::HANDSHAKE_LIMIT,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match r {
            Ok(t) => {
                tracing::info!(%addr, suite = t.suite(), "NVMe/TCP TLS handshake done (host side)");
                *q.tls.borrow_mut() = Some(t);
            }
            Err(e) => {
                let mut st = q.inner.borrow_mut();
                st.fail(HostError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                });
                let done = std::mem::take(&mut st.done);
                drop(st);
                for (io, s) in done {
                    io.complete(s);
                }
                let _ = sock.get_ref().shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }
    {
        let mut st = q.inner.borrow_mut();
        let req = pdu::IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: st.params.hdgst,
            data_digest: st.params.ddgst,
            maxr2t: 0,
        };
        st.send.push_bytes(|v| {
            pdu::put_ic_req(v, &req);
        });
        st.phase = Phase::IcSent;
    }
    *q.sock.borrow_mut() = Some(sock);
    let mut readable = true;
    loop {
        match q.turn(readable) {
            Err(()) => break,
            Ok(true) => {
                reactor::yield_now().await;
                readable = true;
            }
            Ok(false) => readable = std::future::poll_fn(|cx| q.poll_wait(cx)).await,
        }
        if q.closed.get() {
            break;
        }
    }
    if let Some(t) = q.tls.borrow_mut().as_mut() {
        t.shutdown();
    }
    if let Some(s) = q.sock.borrow_mut().take() {
        let _ = s.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

/// The (pointer, length) runs of `iovs` covering bytes `[skip, skip + len)`.
fn iov_runs(
    iovs: &[libc::iovec],
    mut skip: usize,
    mut len: usize,
) -> SmallVec<[(*const u8, usize); 4]> {
    let mut out = SmallVec::new();
    for v in iovs {
        if len == 0 {
            break;
        }
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - skip).min(len);
        out.push(((v.iov_base as *const u8).wrapping_add(skip), n));
        len -= n;
        skip = 0;
    }
    out
}

/// CRC32C over runs of memory.
///
/// # Safety
/// Every run must be readable memory.
unsafe fn crc_runs(runs: &[(*const u8, usize)]) -> u32 {
    let mut crc = 0;
    for &(p, n) in runs {
        // SAFETY: the caller guarantees the run is readable.
        crc = pdu::crc32c_append(crc, unsafe { std::slice::from_raw_parts(p, n) });
    }
    crc
}

impl Inner {
    fn fail(&mut self, e: HostError) {
        if matches!(self.phase, Phase::Failed(_)) {
            return;
        }
        tracing::debug!(qid = self.params.qid, error = %e, "host queue pair failed");
        self.phase = Phase::Failed(e.clone());
        // Unsent data may point into requests about to complete: drop it first.
        self.send = SendQueue::new();
        for i in 0..self.slots.len() {
            if self.slots[i].state != SlotState::Free {
                self.finish(i, Err(e.clone()));
            }
        }
        while let Some(p) = self.backlog.pop_front() {
            self.finish_owner(p.owner, Err(e.clone()));
        }
        while let Some(p) = self.auth_queue.pop_front() {
            self.finish_owner(p.owner, Err(e.clone()));
        }
        for w in self.ready_waiters.drain(..) {
            w.wake();
        }
    }

    /// Starts backlogged commands while slots are free.
    fn pump(&mut self) {
        let ready = match self.phase {
            Phase::Ready => true,
            Phase::Authenticating => false,
            _ => return,
        };
        while !self.free.is_empty() {
            let next = match self.auth_queue.pop_front() {
                Some(p) => Some(p),
                None if ready => self.backlog.pop_front(),
                None => None,
            };
            let Some(p) = next else {
                break;
            };
            let slot = self.free.pop().expect("a free slot") as usize;
            self.start(slot, p);
        }
    }

    /// Sends the capsule of `p` in `slot` (with in-capsule data when it fits).
    fn start(&mut self, slot: usize, p: Pending) {
        let hd = self.limits.header_digest;
        let dd = self.limits.data_digest;
        let cpda = self.cpda;
        let mut sqe = p.sqe;
        sqe.set_cid(slot as u16);
        let s = &mut self.slots[slot];
        s.state = SlotState::Outstanding;
        s.owner = Some(p.owner);
        s.c2h_done = 0;
        let (iovs, len, out) = match p.data {
            Data::None => (SmallVec::new(), 0, false),
            Data::Out(iovs, len) => (iovs, len, true),
            Data::In(iovs, len) => (iovs, len, false),
            Data::Dsm(r) => {
                *s.dsm = encode_dsm_range(&r);
                let iov = libc::iovec {
                    iov_base: s.dsm.as_mut_ptr().cast(),
                    iov_len: 16,
                };
                (smallvec::smallvec![iov], 16, true)
            }
        };
        s.iovs = iovs;
        s.len = len;
        s.out = out;
        let in_capsule = out && len > 0 && len <= self.in_capsule_len;
        if len > 0 {
            sqe.set_sgl(SglDesc {
                address: 0,
                length: len,
                kind: if in_capsule {
                    spec::sgl::IN_CAPSULE
                } else {
                    spec::sgl::TRANSPORT
                },
            });
        }
        let data_len = if in_capsule { len as usize } else { 0 };
        self.send.push_bytes(|v| {
            pdu::put_capsule_cmd(v, &sqe.0, data_len, hd, dd, cpda);
        });
        if in_capsule {
            let runs = iov_runs(&self.slots[slot].iovs, 0, len as usize);
            for &(p, n) in &runs {
                // SAFETY: the memory belongs to the command, outstanding until its
                // response arrives — after the data was written (see the module doc).
                unsafe { self.send.push_raw(p, n) };
            }
            if dd {
                // SAFETY: as above; the runs are the command's readable memory.
                let c = unsafe { crc_runs(&runs) };
                self.send
                    .push_bytes(|v| v.extend_from_slice(&c.to_le_bytes()));
            }
        }
    }

    fn finish_owner(&mut self, owner: Owner, r: Result<Cqe, HostError>) {
        match owner {
            Owner::Wait(w) => w.complete(r),
            Owner::Connect => match r {
                Ok(cqe) if cqe.status().is_success() => {
                    self.cntlid = cqe.dw0 as u16;
                    // AUTHREQ.ATR: authenticate before anything else.
                    if cqe.dw0 & CONNECT_ATR != 0 {
                        if self.params.dhchap.get().is_none() {
                            self.fail(HostError::Auth(
                                "the controller requires DH-HMAC-CHAP and the host has no key (dhchap_key)".into(),
                            ));
                            return;
                        }
                        self.phase = Phase::Authenticating;
                    } else {
                        self.phase = Phase::Ready;
                    }
                    for w in self.ready_waiters.drain(..) {
                        w.wake();
                    }
                    self.pump();
                }
                Ok(cqe) => self.fail(HostError::ConnectRejected(cqe.status())),
                Err(e) => self.fail(e),
            },
            Owner::Io { parent } => self.part_done(parent, &r),
        }
    }

    fn finish(&mut self, slot: usize, r: Result<Cqe, HostError>) {
        let s = &mut self.slots[slot];
        s.state = SlotState::Free;
        s.iovs.clear();
        let owner = s.owner.take();
        self.free.push(slot as u16);
        if let Some(o) = owner {
            self.finish_owner(o, r);
        }
    }

    fn send_connect(&mut self) {
        let p = &self.params;
        let cattr = if p.qid > 0 {
            spec::CATTR_DISABLE_SQ_FLOW_CONTROL
        } else {
            0
        };
        let sqe = spec::connect_sqe(0, p.qid, p.queue_depth - 1, cattr, p.kato_ms);
        let data = spec::ConnectData {
            hostid: p.hostid,
            cntlid: p.cntlid,
            subnqn: p.subnqn.clone(),
            hostnqn: p.hostnqn.clone(),
        }
        .encode();
        let w = Waiter::new(0);
        *w.buf.borrow_mut() = data.to_vec();
        let iov = libc::iovec {
            iov_base: w.buf.borrow_mut().as_mut_ptr().cast(),
            iov_len: 1024,
        };
        let slot = self.free.pop().expect("a fresh queue has free slots") as usize;
        self.phase = Phase::Connecting2;
        self.start(
            slot,
            Pending {
                sqe,
                data: Data::Out(smallvec::smallvec![iov], 1024),
                owner: Owner::Connect,
            },
        );
        // Keep the Connect data alive while the command runs.
        self.connect_data = Some(w);
    }

    fn send_h2c(&mut self, r: pdu::R2t) {
        let hd = self.limits.header_digest;
        let dd = self.limits.data_digest;
        let cpda = self.cpda;
        let end = r.r2to + r.r2tl;
        let mut off = r.r2to;
        while off < end {
            let n = (end - off).min(self.maxh2cdata);
            let h = pdu::DataHdr {
                cccid: r.cccid,
                ttag: r.ttag,
                datao: off,
                datal: n,
                last: off + n == end,
                success: false,
            };
            self.send.push_bytes(|v| {
                pdu::put_data_hdr(v, PduType::H2CData, &h, hd, dd, cpda);
            });
            let runs = iov_runs(&self.slots[r.cccid as usize].iovs, off as usize, n as usize);
            for &(p, len) in &runs {
                // SAFETY: as in `start`: the command's memory, valid until it completes.
                unsafe { self.send.push_raw(p, len) };
            }
            if dd {
                // SAFETY: as above.
                let c = unsafe { crc_runs(&runs) };
                self.send
                    .push_bytes(|v| v.extend_from_slice(&c.to_le_bytes()));
            }
            off += n;
        }
    }
}
