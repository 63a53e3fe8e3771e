//! One connection: the handshake, then the transmission phase.
//!
//! The transmission phase is a hand-written future ([`Transmission`]) owned by the
//! connection's task. Each poll runs rounds of: parse every complete request in the
//! receive buffer and submit it to the core's bdev channel; `read` the socket (one read
//! may bring many requests; a large write payload is read straight into its buffer);
//! `writev` every reply that is ready. Completions arrive through [`IoSink::io_done`] on
//! the same core, which builds the reply in the request's slot, queues it and wakes the
//! task — so the replies of many completions leave in one `writev`. The state it drives
//! is in `transmission`.

use super::handshake::{self, Link, Negotiated, Outcome};
use super::server::ConnCtl;
use super::state::ConnState;
use super::tls::{TlsIo, TlsStream};
use super::transmission::{DrainReason, TxState};
use crate::bdev::{BdevIo, IoBuf, IoSink, IoStatus};
use crate::reactor::recv::RecvBuf;
use crate::reactor::{self, Sleep, io::Async};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

/// Receive buffer per connection.
const RX_BUF_LEN: usize = 256 << 10;
/// A client has this long to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// A draining connection waits this long for a client that does not read its replies.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that negotiated block status waits this long for its channels to know
/// their mapping; past it, status replies say what an unknown mapping allows.
const STATUS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Rounds per poll before the task yields to the rest of the reactor.
const ROUNDS_PER_POLL: usize = 16;

/// Serves one accepted connection on the current core, until it closes.
pub(crate) async fn serve(ctl: Rc<ConnCtl>, stream: std::net::TcpStream, peer: SocketAddr) {
    let shared = ctl.shared().clone();
    ctl.set_state(ConnState::Negotiating);
    let sock = match Async::new(mio::net::TcpStream::from_std(stream)) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "nbd: cannot register the connection");
            ctl.set_state(ConnState::Closed);
            return;
        }
    };
    let mut rx = RecvBuf::new(RX_BUF_LEN);
    let closed = || ctl.close_requested();
    let outcome = guard(
        &ctl,
        HANDSHAKE_TIMEOUT,
        handshake::negotiate(Link::Plain(sock), &mut rx, &shared, peer, &closed),
    )
    .await;
    let (neg, link) = match outcome {
        Guarded::Done(Ok((Outcome::Transmission(n), link))) => (n, link),
        Guarded::Done(Ok((Outcome::Left, _))) | Guarded::Closed => {
            ctl.set_state(ConnState::Closed);
            return;
        }
        Guarded::Done(Err(e)) => {
            shared
                .counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "nbd: handshake failed");
            ctl.set_state(ConnState::Closed);
            return;
        }
        Guarded::TimedOut => {
            shared
                .counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "nbd: handshake timed out");
            ctl.set_state(ConnState::Closed);
            return;
        }
    };
    // Register the export first, then look at its removal flag: a concurrent removal
    // either sees this connection or is seen by it.
    ctl.set_export(neg.export.id);
    if neg.export.is_removed() || ctl.close_requested() {
        ctl.set_state(ConnState::Closed);
        return;
    }
    // A fresh channel of a virtual disk knows its mapping once the controller's first
    // view arrives; block status asked before that would call every block changed
    // (dirty bitmap) or data (allocation), which is correct but useless.
    if neg.block_status || neg.dirty_base.is_some() || neg.allocation_depth {
        let ready = async {
            neg.chan.status_ready().await;
            if let Some(base) = &neg.dirty_base {
                base.status_ready().await;
            }
        };
        match guard(&ctl, STATUS_READY_TIMEOUT, ready).await {
            Guarded::Done(()) => {}
            Guarded::Closed => {
                ctl.set_state(ConnState::Closed);
                return;
            }
            Guarded::TimedOut => tracing::warn!(
                %peer,
                export = %neg.export.name,
                "nbd: the export's mapping is not known after {STATUS_READY_TIMEOUT:?}; block status answers as for an unknown mapping"
            ),
        }
    }
    let export = neg.export.clone();
    export.connections.fetch_add(1, Ordering::Relaxed);
    ctl.set_state(ConnState::Transmission);
    tracing::debug!(%peer, export = %export.name, reply = ?neg.reply, "nbd: transmission");
    match link {
        Link::Plain(sock) => Transmission::new(ctl.clone(), sock, rx, neg, peer).await,
        Link::Tls(tls) => Transmission::new(ctl.clone(), tls, rx, neg, peer).await,
    }
    export.connections.fetch_sub(1, Ordering::Relaxed);
    ctl.set_state(ConnState::Closed);
}

enum Guarded<T> {
    Done(T),
    TimedOut,
    Closed,
}

/// Runs `fut` until it finishes, `timeout` passes, or the control plane closes `ctl`.
async fn guard<F: Future>(ctl: &ConnCtl, timeout: Duration, fut: F) -> Guarded<F::Output> {
    let mut fut = pin!(fut);
    let mut sleep = reactor::sleep(timeout);
    std::future::poll_fn(|cx| {
        ctl.set_waker(cx.waker());
        if ctl.close_requested() {
            return Poll::Ready(Guarded::Closed);
        }
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Guarded::Done(v));
        }
        if Pin::new(&mut sleep).poll(cx).is_ready() {
            return Poll::Ready(Guarded::TimedOut);
        }
        Poll::Pending
    })
    .await
}

/// A connection in transmission: its state, and the sink its I/O completes to.
pub(crate) struct Conn {
    pub(super) me: Weak<Conn>,
    st: RefCell<TxState>,
    /// Completions that found the state borrowed (never expected: the bdev layer never
    /// completes inside `submit`); handled at the next poll.
    late: RefCell<Vec<(u16, IoStatus, Option<IoBuf>)>>,
}

impl IoSink for Conn {
    fn io_done(&self, mut io: BdevIo, status: IoStatus) {
        let idx = io.tag as u16;
        let buf = io.take_buf();
        match self.st.try_borrow_mut() {
            Ok(mut st) => {
                st.complete(idx, status, buf, &self.me);
                st.ctl().wake();
            }
            Err(_) => {
                self.late.borrow_mut().push((idx, status, buf));
            }
        }
    }
}

/// What the transmission phase reads and writes: the plain socket, or a TLS session
/// over it. The future is generic over it, so the plain path is the code it was before
/// TLS (no branch per read or write).
trait Wire: Unpin {
    type Io<'a>: io::Read + io::Write
    where
        Self: 'a;
    /// The byte stream, for one read or one write.
    fn io(&mut self) -> Self::Io<'_>;
    /// The registered socket (for readiness).
    fn sock(&self) -> &Async<mio::net::TcpStream>;
    /// The connection is done: say goodbye if the protocol has a way (TLS close_notify).
    fn finish(&mut self) {}
}

impl Wire for Async<mio::net::TcpStream> {
    type Io<'a> = &'a mio::net::TcpStream;

    #[inline]
    fn io(&mut self) -> &mio::net::TcpStream {
        self.get_ref()
    }

    #[inline]
    fn sock(&self) -> &Async<mio::net::TcpStream> {
        self
    }
}

impl Wire for Box<TlsStream> {
    type Io<'a> = TlsIo<'a>;

    fn io(&mut self) -> TlsIo<'_> {
        TlsIo(self)
    }

    fn sock(&self) -> &Async<mio::net::TcpStream> {
        &self.get_ref().0
    }

    fn finish(&mut self) {
        // One attempt, without waiting: the peer may be gone already.
        let _ = self.shutdown();
    }
}

/// The transmission phase of a connection, as a future that ends when the connection
/// is done.
struct Transmission<W: Wire> {
    sock: W,
    conn: Rc<Conn>,
    drain_timer: Option<Sleep>,
    /// Runs while the connection waits for the server's buffer bytes.
    budget_timer: Option<Sleep>,
    peer: SocketAddr,
}

impl<W: Wire> Transmission<W> {
    fn new(
        ctl: Rc<ConnCtl>,
        sock: W,
        rx: RecvBuf,
        neg: Negotiated,
        peer: SocketAddr,
    ) -> Transmission<W> {
        let conn = Rc::new_cyclic(|me| Conn {
            me: me.clone(),
            st: RefCell::new(TxState::new(ctl, rx, neg)),
            late: RefCell::new(Vec::new()),
        });
        Transmission {
            sock,
            conn,
            drain_timer: None,
            budget_timer: None,
            peer,
        }
    }
}

impl<W: Wire> Future for Transmission<W> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let conn = this.conn.clone();
        let sink: Rc<dyn IoSink> = conn.clone();
        let mut st = conn.st.borrow_mut();
        st.ctl().set_waker(cx.waker());
        let late = std::mem::take(&mut *conn.late.borrow_mut());
        for (idx, status, buf) in late {
            st.complete(idx, status, buf, &conn.me);
        }
        if st.ctl().close_requested() {
            st.drain(DrainReason::Server);
        }
        // After `WouldBlock`, or a write that took less than offered (the send buffer is
        // full), the socket is not retried in this poll: edge-triggered readiness
        // reports room (or an error) that appears later, and the driver wakes the task —
        // one `EAGAIN` syscall less per batch. Reads go on until `WouldBlock`: a short
        // read may leave an end-of-file behind whose event was already consumed.
        let mut read_blocked = false;
        let mut write_blocked = false;
        let mut rounds = 0;
        loop {
            let mut progress = st.process_input(&sink);
            if !read_blocked && st.wants_read() {
                match st.read_socket(this.sock.io(), &sink) {
                    Ok(0) => {
                        st.input_eof();
                        progress = true;
                    }
                    Ok(_) => progress = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => read_blocked = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => {
                        st.socket_failed(&e);
                        progress = true;
                    }
                }
            }
            if !write_blocked && st.has_output() {
                match st.write_output(this.sock.io()) {
                    Ok((n, offered)) => {
                        progress |= n > 0;
                        write_blocked = n < offered;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => write_blocked = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => {
                        st.socket_failed(&e);
                        progress = true;
                    }
                }
            }
            if st.finished() {
                st.fold_counters();
                this.sock.finish();
                return Poll::Ready(());
            }
            if !progress {
                break;
            }
            rounds += 1;
            if rounds >= ROUNDS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        // Idle: publish the counters.
        st.fold_counters_if_idle();
        // Wait for the socket (completions wake us through the sink).
        if read_blocked {
            this.sock.sock().clear_readable();
            if this.sock.sock().poll_readable(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        if write_blocked {
            this.sock.sock().clear_writable();
            if this.sock.sock().poll_writable(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        // Waiting for the server's buffer bytes: woken when some are given back, closed
        // (with a reason in the log) past the time limit.
        match st.budget_wait() {
            None => this.budget_timer = None,
            Some(need) => {
                let shared = st.ctl().shared().clone();
                if shared.budget.wait_for(need, cx.waker()) {
                    cx.waker().wake_by_ref();
                }
                let limit = shared.buffer_wait_timeout();
                let timer = this
                    .budget_timer
                    .get_or_insert_with(|| reactor::sleep(limit));
                if Pin::new(timer).poll(cx).is_ready() {
                    tracing::warn!(
                        peer = %this.peer,
                        need,
                        in_use = shared.budget.used(),
                        max_buffer_bytes = shared.budget.limit(),
                        buffer_wait_timeout_ms = limit.as_millis() as u64,
                        "nbd: closing connection: its next request waited past buffer_wait_timeout_ms for buffer bytes (max_buffer_bytes in use by other connections)"
                    );
                    shared
                        .counters
                        .buffer_wait_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    this.budget_timer = None;
                    st.drain(DrainReason::BufferWait);
                    cx.waker().wake_by_ref();
                }
            }
        }
        if st.is_draining() && st.has_output() {
            let timer = this
                .drain_timer
                .get_or_insert_with(|| reactor::sleep(DRAIN_TIMEOUT));
            if Pin::new(timer).poll(cx).is_ready() {
                tracing::debug!("nbd: client does not read its replies; giving up");
                st.abandon_output();
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}
