//! One connection: the handshake, then the transmission engine.
//!
//! The transmission phase is a hand-written future ([`Transmission`]) owned by the
//! connection's task. Each poll runs rounds of: parse every complete request in the
//! receive buffer and submit it to the core's bdev channel; `read` the socket (one read
//! may bring many requests; a large write payload is read straight into its buffer);
//! `writev` every reply that is ready. Completions arrive through [`IoSink::io_done`] on
//! the same core, which builds the reply in the request's slot, queues it and wakes the
//! task — so the replies of many completions leave in one `writev`.
//!
//! A request lives in a **slot** (reused, with its buffer, from one request to the next),
//! from the moment its header is parsed until its reply is written. The number of slots
//! and the bytes their buffers hold are bounded; when either bound is reached the
//! connection stops reading, and TCP pushes back on the client.

use super::check::{Command, ExportLimits, Verdict, check_request};
use super::export::{ExportEntry, MAX_PAYLOAD_BYTES};
use super::handshake::{self, BASE_ALLOCATION_ID, Negotiated, Outcome};
use super::proto::{
    self, CMD_READ, ChunkHeader, Extent, HeaderMode, MAX_REPLY_HEADER_LEN, REPLY_FLAG_DONE,
    RequestHeader,
};
use super::recv::RecvBuf;
use super::server::ConnCtl;
use super::state::{ConnState, LocalCounters, RequestKind};
use crate::bdev::{BdevIo, Channel, IoBuf, IoKind, IoSink, IoStatus};
use crate::reactor::{self, Sleep, io::Async};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

/// Receive buffer per connection.
const RX_BUF_LEN: usize = 256 << 10;
/// Requests a connection may have between header and reply.
const MAX_SLOTS: usize = 256;
/// Buffer bytes a connection may hold for its requests before it stops reading (one
/// request is always admitted).
const BUDGET_BYTES: usize = 64 << 20;
/// A slot keeps its buffer for the next request up to this size.
const KEEP_BUF_MAX: usize = 256 << 10;
/// A write payload is read straight into its buffer when this much is still missing and
/// nothing else is buffered.
const DIRECT_READ_MIN: usize = 32 << 10;
/// A client has this long to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// A draining connection waits this long for a client that does not read its replies.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Iovecs per `writev`.
const MAX_IOV: usize = 64;
/// Rounds per poll before the task yields to the rest of the reactor.
const ROUNDS_PER_POLL: usize = 16;
/// Extents per block status reply.
const MAX_EXTENTS: usize = 1024;

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
    let outcome = guard(
        &ctl,
        HANDSHAKE_TIMEOUT,
        handshake::negotiate(&sock, &mut rx, &shared),
    )
    .await;
    let neg = match outcome {
        Guarded::Done(Ok(Outcome::Transmission(n))) => n,
        Guarded::Done(Ok(Outcome::Left)) | Guarded::Closed => {
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
    let export = neg.export.clone();
    export.connections.fetch_add(1, Ordering::Relaxed);
    ctl.set_state(ConnState::Transmission);
    tracing::debug!(%peer, export = %export.name, reply = ?neg.reply, "nbd: transmission");
    Transmission::new(ctl.clone(), sock, rx, neg).await;
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

/// Where a slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// On the free list.
    Free,
    /// A write whose payload is being received.
    Receiving,
    /// A flush waiting for earlier writes of the connection to complete.
    WaitingFlush,
    /// Submitted to the bdev.
    Submitted,
    /// Reply built and queued for the socket.
    Queued,
}

/// A request, from its header to its reply.
struct Slot {
    state: SlotState,
    cookie: u64,
    /// The NBD command type.
    kind: u16,
    offset_bytes: u64,
    /// Force unit access (writes, kept while the payload arrives).
    fua: bool,
    /// Counted in the flush epochs (a write, trim or write-zeroes in flight).
    modifies: bool,
    epoch: u64,
    /// Bytes of `buf` counted against the connection's budget.
    reserved_bytes: usize,
    /// Reply header (and the fixed part of its payload).
    hdr: [u8; MAX_REPLY_HEADER_LEN],
    hdr_len: usize,
    /// Reply payload after the header: an error message or block status descriptors.
    extra: Vec<u8>,
    /// Data buffer: read data to send, write payload to receive.
    buf: Option<IoBuf>,
    /// Bytes of `buf` sent after `extra` (reads).
    data_len: usize,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: SlotState::Free,
            cookie: 0,
            kind: 0,
            offset_bytes: 0,
            fua: false,
            modifies: false,
            epoch: 0,
            reserved_bytes: 0,
            hdr: [0; MAX_REPLY_HEADER_LEN],
            hdr_len: 0,
            extra: Vec::new(),
            buf: None,
            data_len: 0,
        }
    }

    fn reply_len(&self) -> usize {
        self.hdr_len + self.extra.len() + self.data_len
    }

    fn data(&self) -> &[u8] {
        match &self.buf {
            Some(b) if self.data_len > 0 => b.get(..self.data_len).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// What the receive side expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxState {
    /// A request header.
    Header,
    /// The payload of the write in `slot`: `got` of `len` bytes are in.
    Payload { slot: u16, got: usize, len: usize },
    /// The payload of a refused request: `left` bytes to throw away.
    Discard { left: u64 },
}

/// Why a connection stopped reading requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DrainReason {
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed its side.
    ClientClosed,
    /// The server is stopping or the export was removed.
    Server,
    /// The client broke the protocol.
    Protocol,
    /// The socket failed.
    Failed,
}

/// Flush ordering: a flush is submitted only when every modifying request that was in
/// flight when it arrived has completed. `counts[i]` holds the modifying requests in
/// flight of epoch `base + i`; each flush closes the current epoch.
struct FlushEpochs {
    base: u64,
    counts: VecDeque<u32>,
}

impl FlushEpochs {
    fn new() -> FlushEpochs {
        let mut counts = VecDeque::with_capacity(4);
        counts.push_back(0);
        FlushEpochs { base: 0, counts }
    }

    fn current(&self) -> u64 {
        self.base + self.counts.len() as u64 - 1
    }

    /// A modifying request starts; returns its epoch.
    fn track(&mut self) -> u64 {
        if let Some(c) = self.counts.back_mut() {
            *c += 1;
        }
        self.current()
    }

    /// A modifying request of epoch `e` completed.
    fn release(&mut self, e: u64) {
        if let Some(c) = e
            .checked_sub(self.base)
            .and_then(|i| self.counts.get_mut(i as usize))
        {
            *c = c.saturating_sub(1);
        }
        self.normalize();
    }

    /// A flush arrives; returns the epoch it must wait for.
    fn begin_flush(&mut self) -> u64 {
        let e = self.current();
        self.counts.push_back(0);
        self.normalize();
        e
    }

    fn normalize(&mut self) {
        while self.counts.len() > 1 && self.counts.front() == Some(&0) {
            self.counts.pop_front();
            self.base += 1;
        }
    }

    /// True when nothing of epoch `e` or earlier is in flight.
    fn covered(&self, e: u64) -> bool {
        self.base > e
    }
}

/// The transmission state of a connection.
struct TxState {
    ctl: Rc<ConnCtl>,
    export: Arc<ExportEntry>,
    chan: Channel,
    limits: ExportLimits,
    reply: proto::ReplyMode,
    /// Header format of requests and reply chunks.
    hmode: HeaderMode,
    block_size: u64,
    /// Write-zeroes without `NO_HOLE` may unmap (the bdev reads unmapped blocks as zeros).
    unmap_zeroes: bool,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Slots whose replies wait for the socket, in order.
    out: VecDeque<u16>,
    /// Bytes of the first queued reply already written.
    out_sent: usize,
    rx: RecvBuf,
    rx_state: RxState,
    reserved_bytes: usize,
    epochs: FlushEpochs,
    waiting_flushes: VecDeque<u16>,
    draining: Option<DrainReason>,
    input_closed: bool,
    output_broken: bool,
    counters: LocalCounters,
}

impl TxState {
    fn new(ctl: Rc<ConnCtl>, rx: RecvBuf, neg: Negotiated) -> TxState {
        let export = neg.export;
        let chunked = neg.reply.chunked();
        let flags = export.transmission_flags(chunked);
        let bdev = &export.bdev;
        let limits = ExportLimits {
            size_bytes: export.size_bytes(),
            block_size: bdev.block_size(),
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            read_only: export.is_read_only(),
            can_trim: flags & proto::TFLAG_SEND_TRIM != 0,
            can_write_zeroes: flags & proto::TFLAG_SEND_WRITE_ZEROES != 0,
            chunked,
            block_status: neg.block_status && chunked,
            mode: neg.reply.header_mode(),
        };
        TxState {
            ctl,
            block_size: bdev.block_size() as u64,
            unmap_zeroes: bdev.unmap_reads_zeroes() && bdev.supports(IoKind::Unmap),
            chan: neg.chan,
            limits,
            reply: neg.reply,
            hmode: neg.reply.header_mode(),
            export,
            slots: Vec::new(),
            free: Vec::new(),
            out: VecDeque::with_capacity(64),
            out_sent: 0,
            rx,
            rx_state: RxState::Header,
            reserved_bytes: 0,
            epochs: FlushEpochs::new(),
            waiting_flushes: VecDeque::new(),
            draining: None,
            input_closed: false,
            output_broken: false,
            counters: LocalCounters::default(),
        }
    }

    // -- slots ---------------------------------------------------------------------------

    fn can_start_request(&self) -> bool {
        self.draining.is_none()
            && (!self.free.is_empty() || self.slots.len() < MAX_SLOTS)
            && (self.reserved_bytes < BUDGET_BYTES || self.reserved_bytes == 0)
    }

    fn alloc_slot(&mut self, h: &RequestHeader) -> u16 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::new());
                (self.slots.len() - 1) as u16
            }
        };
        let s = &mut self.slots[idx as usize];
        s.state = SlotState::Submitted;
        s.cookie = h.cookie;
        s.kind = h.kind;
        s.offset_bytes = h.offset_bytes;
        s.fua = false;
        s.modifies = false;
        s.hdr_len = 0;
        s.extra.clear();
        s.data_len = 0;
        idx
    }

    fn free_slot(&mut self, idx: u16) {
        let s = &mut self.slots[idx as usize];
        if s.state == SlotState::Free {
            return;
        }
        if s.buf.as_ref().is_some_and(|b| b.capacity() > KEEP_BUF_MAX) {
            s.buf = None;
        }
        if s.extra.capacity() > proto::MAX_STRING_LEN * 4 {
            s.extra = Vec::new();
        }
        self.reserved_bytes -= s.reserved_bytes;
        s.reserved_bytes = 0;
        s.data_len = 0;
        s.state = SlotState::Free;
        self.free.push(idx);
    }

    /// A buffer of `len` bytes for the slot: its own if large enough, else a new one.
    fn take_buf(&mut self, idx: u16, len: usize) -> IoBuf {
        let s = &mut self.slots[idx as usize];
        let buf = match s.buf.take() {
            Some(mut b) if b.capacity() >= len => {
                b.set_len(len);
                b
            }
            _ => self.chan.alloc_buf(len),
        };
        s.reserved_bytes = len;
        self.reserved_bytes += len;
        buf
    }

    fn enqueue(&mut self, idx: u16) {
        if self.output_broken {
            self.free_slot(idx);
        } else {
            self.slots[idx as usize].state = SlotState::Queued;
            self.out.push_back(idx);
        }
    }

    // -- replies -------------------------------------------------------------------------

    fn reply_ok(&mut self, idx: u16) {
        let (reply, hmode) = (self.reply, self.hmode);
        let s = &mut self.slots[idx as usize];
        s.data_len = 0;
        s.extra.clear();
        s.hdr_len = match reply {
            proto::ReplyMode::Simple => proto::write_simple_reply(&mut s.hdr, 0, s.cookie),
            proto::ReplyMode::Structured if s.kind != CMD_READ => {
                proto::write_simple_reply(&mut s.hdr, 0, s.cookie)
            }
            _ => proto::write_chunk_header(
                &mut s.hdr,
                hmode,
                &ChunkHeader {
                    flags: REPLY_FLAG_DONE,
                    kind: proto::REPLY_TYPE_NONE,
                    cookie: s.cookie,
                    offset_bytes: s.offset_bytes,
                    len_bytes: 0,
                },
            ),
        };
    }

    fn reply_read(&mut self, idx: u16, len: usize) {
        let (reply, hmode) = (self.reply, self.hmode);
        let s = &mut self.slots[idx as usize];
        s.extra.clear();
        s.data_len = len;
        s.hdr_len = match reply {
            proto::ReplyMode::Simple => proto::write_simple_reply(&mut s.hdr, 0, s.cookie),
            _ => proto::write_offset_data_header(
                &mut s.hdr,
                hmode,
                s.cookie,
                s.offset_bytes,
                len as u64,
            ),
        };
    }

    fn reply_error(&mut self, idx: u16, error: u32, message: &str) {
        self.counters.error();
        let (reply, hmode) = (self.reply, self.hmode);
        let s = &mut self.slots[idx as usize];
        s.data_len = 0;
        s.extra.clear();
        s.hdr_len = match reply {
            proto::ReplyMode::Simple => proto::write_simple_reply(&mut s.hdr, error, s.cookie),
            _ => {
                let m = message.as_bytes();
                let m = &m[..m.len().min(proto::MAX_STRING_LEN)];
                s.extra.extend_from_slice(m);
                proto::write_error_chunk_header(
                    &mut s.hdr,
                    hmode,
                    s.cookie,
                    s.offset_bytes,
                    error,
                    m.len() as u16,
                )
            }
        };
    }

    fn reply_block_status(&mut self, idx: u16, offset_blocks: u64, num_blocks: u64, req_one: bool) {
        let runs = match self.chan.block_status(offset_blocks, num_blocks) {
            Ok(r) => r,
            Err(st) => {
                self.reply_error(
                    idx,
                    proto::nbd_errno(st.errno()),
                    "the bdev cannot report block status",
                );
                return;
            }
        };
        let bs = self.block_size.max(1);
        // Compact chunks carry 32-bit extent lengths.
        let max_blocks = match self.hmode {
            HeaderMode::Compact => (u32::MAX as u64) / bs,
            HeaderMode::Extended => u64::MAX / bs,
        };
        let limit = if req_one { 1 } else { MAX_EXTENTS };
        let mut extents: Vec<(u64, u32)> = Vec::with_capacity(runs.len().min(limit));
        let mut left = num_blocks;
        for r in &runs {
            let n = r.num_blocks.min(left);
            if n == 0 {
                continue;
            }
            let flags = if r.allocated { 0 } else { proto::STATE_HOLE }
                | if r.zero { proto::STATE_ZERO } else { 0 };
            match extents.last_mut() {
                Some((len, f)) if *f == flags => *len += n,
                _ => {
                    if extents.len() == limit {
                        break;
                    }
                    extents.push((n, flags));
                }
            }
            left -= n;
            if left == 0 {
                break;
            }
        }
        if extents.is_empty() {
            // "Status unknown" is always a correct answer.
            extents.push((num_blocks, 0));
        }
        if let Some(i) = extents.iter().position(|(n, _)| *n > max_blocks) {
            extents[i].0 = max_blocks;
            extents.truncate(i + 1);
        }
        let extents: Vec<Extent> = extents
            .into_iter()
            .map(|(n, flags)| Extent {
                len_bytes: n * bs,
                flags,
            })
            .collect();
        let hmode = self.hmode;
        let s = &mut self.slots[idx as usize];
        s.extra.clear();
        s.data_len = 0;
        let kind =
            proto::encode_block_status_payload(&mut s.extra, hmode, BASE_ALLOCATION_ID, &extents);
        s.hdr_len = proto::write_chunk_header(
            &mut s.hdr,
            hmode,
            &ChunkHeader {
                flags: REPLY_FLAG_DONE,
                kind,
                cookie: s.cookie,
                offset_bytes: s.offset_bytes,
                len_bytes: s.extra.len() as u64,
            },
        );
    }

    // -- requests ------------------------------------------------------------------------

    fn count(&mut self, kind: RequestKind, bytes: u64) {
        if self.counters.request(kind, bytes) {
            self.counters.fold_into(&self.ctl.shared().counters);
        }
    }

    fn submit(&mut self, idx: u16, io: BdevIo, sink: &Rc<dyn IoSink>) {
        self.slots[idx as usize].state = SlotState::Submitted;
        self.chan.submit(io.on_complete(sink.clone(), idx as u64));
    }

    fn submit_modifying(&mut self, idx: u16, io: BdevIo, sink: &Rc<dyn IoSink>) {
        let epoch = self.epochs.track();
        let s = &mut self.slots[idx as usize];
        s.modifies = true;
        s.epoch = epoch;
        self.submit(idx, io, sink);
    }

    fn start_flushes(&mut self, sink: &Rc<dyn IoSink>) {
        while let Some(&idx) = self.waiting_flushes.front() {
            if !self.epochs.covered(self.slots[idx as usize].epoch) {
                break;
            }
            self.waiting_flushes.pop_front();
            self.submit(idx, BdevIo::flush(), sink);
        }
    }

    /// Starts the request whose header was just parsed.
    fn start_request(&mut self, h: &RequestHeader, sink: &Rc<dyn IoSink>) {
        let payload = h.payload_len(self.hmode);
        let cmd = match check_request(h, &self.limits) {
            Verdict::Run(cmd) => cmd,
            Verdict::Reject { error, reason } => {
                tracing::trace!(request = %h, error, reason, "nbd: request refused");
                let idx = self.alloc_slot(h);
                self.reply_error(idx, error, reason);
                self.enqueue(idx);
                if payload > 0 {
                    self.rx_state = RxState::Discard { left: payload };
                }
                return;
            }
            Verdict::Close { reason } => {
                self.protocol_error(reason);
                return;
            }
        };
        let bs = self.block_size;
        match cmd {
            Command::Disconnect => self.drain(DrainReason::Disconnect),
            Command::Read {
                offset_blocks,
                num_blocks,
            } => {
                let len = (num_blocks * bs) as usize;
                self.count(RequestKind::Read, len as u64);
                let idx = self.alloc_slot(h);
                let buf = self.take_buf(idx, len);
                self.submit(idx, BdevIo::read(offset_blocks, num_blocks, buf), sink);
            }
            Command::Write {
                num_blocks, fua, ..
            } => {
                let len = (num_blocks * bs) as usize;
                self.count(RequestKind::Write, len as u64);
                let idx = self.alloc_slot(h);
                let buf = self.take_buf(idx, len);
                let s = &mut self.slots[idx as usize];
                s.buf = Some(buf);
                s.fua = fua;
                s.state = SlotState::Receiving;
                self.rx_state = RxState::Payload {
                    slot: idx,
                    got: 0,
                    len,
                };
            }
            Command::Flush => {
                self.count(RequestKind::Flush, 0);
                let idx = self.alloc_slot(h);
                let epoch = self.epochs.begin_flush();
                let s = &mut self.slots[idx as usize];
                s.epoch = epoch;
                s.state = SlotState::WaitingFlush;
                self.waiting_flushes.push_back(idx);
                self.start_flushes(sink);
            }
            Command::Trim {
                offset_blocks,
                num_blocks,
                fua,
            } => {
                self.count(RequestKind::Trim, 0);
                let idx = self.alloc_slot(h);
                let io = BdevIo::unmap(offset_blocks, num_blocks).with_fua(fua);
                self.submit_modifying(idx, io, sink);
            }
            Command::WriteZeroes {
                offset_blocks,
                num_blocks,
                fua,
                no_hole,
            } => {
                self.count(RequestKind::WriteZeroes, 0);
                let idx = self.alloc_slot(h);
                let io = if !no_hole && self.unmap_zeroes {
                    BdevIo::unmap(offset_blocks, num_blocks)
                } else {
                    BdevIo::write_zeroes(offset_blocks, num_blocks)
                };
                self.submit_modifying(idx, io.with_fua(fua), sink);
            }
            Command::BlockStatus {
                offset_blocks,
                num_blocks,
                req_one,
            } => {
                self.count(RequestKind::BlockStatus, 0);
                let idx = self.alloc_slot(h);
                self.reply_block_status(idx, offset_blocks, num_blocks, req_one);
                self.enqueue(idx);
            }
            Command::Noop => {
                let idx = self.alloc_slot(h);
                self.reply_ok(idx);
                self.enqueue(idx);
            }
        }
    }

    /// The payload of the write in `idx` is complete: submit it.
    fn submit_write(&mut self, idx: u16, sink: &Rc<dyn IoSink>) {
        let s = &mut self.slots[idx as usize];
        let Some(buf) = s.buf.take() else {
            self.reply_error(idx, proto::NBD_EIO, "internal: write buffer missing");
            self.enqueue(idx);
            return;
        };
        let bs = self.block_size;
        // Validated by check_request when the header arrived.
        let offset_blocks = s.offset_bytes / bs;
        let num_blocks = buf.len() as u64 / bs;
        let fua = s.fua;
        let io = BdevIo::write(offset_blocks, num_blocks, buf).with_fua(fua);
        self.submit_modifying(idx, io, sink);
    }

    /// A request finished on the bdev.
    fn complete(&mut self, idx: u16, status: IoStatus, buf: Option<IoBuf>, me: &Weak<Conn>) {
        let Some(s) = self.slots.get_mut(idx as usize) else {
            tracing::error!(idx, "nbd: completion for an unknown slot");
            return;
        };
        if s.state != SlotState::Submitted {
            tracing::error!(idx, state = ?s.state, "nbd: completion for a slot not in flight");
            return;
        }
        if buf.is_some() {
            s.buf = buf;
        }
        let was_modifying = std::mem::replace(&mut s.modifies, false);
        let (kind, len) = (s.kind, s.buf.as_ref().map_or(0, |b| b.len()));
        if was_modifying {
            let e = s.epoch;
            self.epochs.release(e);
            if !self.waiting_flushes.is_empty()
                && let Some(conn) = me.upgrade()
            {
                let sink: Rc<dyn IoSink> = conn;
                self.start_flushes(&sink);
            }
        }
        if status.is_success() {
            if kind == CMD_READ {
                self.reply_read(idx, len);
            } else {
                self.reply_ok(idx);
            }
        } else {
            tracing::debug!(
                idx,
                ?status,
                command = proto::command_name(kind),
                "nbd: I/O failed"
            );
            let message = match status {
                IoStatus::MediaError => "the bdev reported a media error",
                IoStatus::WriteProtected => "the bdev is read-only",
                IoStatus::CapacityExceeded => "no space left on the bdev",
                IoStatus::LbaOutOfRange => "range outside the bdev",
                IoStatus::InvalidOpcode => "the bdev does not support this operation",
                IoStatus::Aborted => "the request was aborted",
                _ => "the bdev failed the request",
            };
            self.reply_error(idx, proto::nbd_errno(status.errno()), message);
        }
        self.enqueue(idx);
    }

    // -- connection-level events ---------------------------------------------------------

    fn drain(&mut self, reason: DrainReason) {
        if self.draining.is_some() {
            return;
        }
        self.draining = Some(reason);
        if let RxState::Payload { slot, .. } = self.rx_state {
            self.free_slot(slot);
        }
        self.rx_state = RxState::Header;
        self.ctl.set_state(ConnState::Draining);
    }

    fn protocol_error(&mut self, reason: &str) {
        tracing::debug!(export = %self.export.name, reason, "nbd: closing connection");
        self.ctl
            .shared()
            .counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        self.drain(DrainReason::Protocol);
    }

    fn input_eof(&mut self) {
        self.input_closed = true;
        self.drain(DrainReason::ClientClosed);
    }

    fn socket_failed(&mut self, e: &io::Error) {
        tracing::debug!(export = %self.export.name, error = %e, "nbd: socket failed");
        self.input_closed = true;
        self.abandon_output();
        self.drain(DrainReason::Failed);
    }

    /// Gives up sending: the client is gone or does not read.
    fn abandon_output(&mut self) {
        self.output_broken = true;
        self.out_sent = 0;
        while let Some(idx) = self.out.pop_front() {
            self.free_slot(idx);
        }
        while let Some(idx) = self.waiting_flushes.pop_front() {
            self.free_slot(idx);
        }
    }

    /// Done when draining and every slot is free (in-flight I/O completed, replies sent
    /// or abandoned).
    fn finished(&self) -> bool {
        self.draining.is_some() && self.free.len() == self.slots.len()
    }

    fn wants_read(&self) -> bool {
        if self.draining.is_some() || self.input_closed {
            return false;
        }
        match self.rx_state {
            RxState::Header => self.can_start_request() && self.rx.len() < self.rx.capacity(),
            RxState::Payload { .. } | RxState::Discard { .. } => true,
        }
    }

    fn has_output(&self) -> bool {
        !self.out.is_empty() && !self.output_broken
    }

    // -- socket --------------------------------------------------------------------------

    /// Handles whatever the receive buffer holds; returns true if anything was consumed.
    fn process_input(&mut self, sink: &Rc<dyn IoSink>) -> bool {
        let mut progress = false;
        loop {
            match self.rx_state {
                RxState::Header => {
                    if !self.can_start_request() || self.rx.is_empty() {
                        break;
                    }
                    match proto::parse_request(self.rx.data(), self.hmode) {
                        Ok(None) => break,
                        Ok(Some((h, n))) => {
                            self.rx.consume(n);
                            progress = true;
                            self.start_request(&h, sink);
                        }
                        Err(e) => {
                            progress = true;
                            tracing::debug!(error = %e, "nbd: bad request");
                            self.protocol_error("bad request magic");
                            break;
                        }
                    }
                }
                RxState::Payload { slot, got, len } => {
                    if self.rx.is_empty() {
                        break;
                    }
                    let take = self.rx.len().min(len - got);
                    let s = &mut self.slots[slot as usize];
                    if let Some(dst) = s.buf.as_mut().and_then(|b| b.get_mut(got..got + take)) {
                        dst.copy_from_slice(&self.rx.data()[..take]);
                    }
                    self.rx.consume(take);
                    progress = true;
                    self.payload_progress(slot, got + take, len, sink);
                    if matches!(self.rx_state, RxState::Payload { .. }) {
                        break;
                    }
                }
                RxState::Discard { left } => {
                    if self.rx.is_empty() {
                        break;
                    }
                    let take = (self.rx.len() as u64).min(left);
                    self.rx.consume(take as usize);
                    progress = true;
                    self.rx_state = if take == left {
                        RxState::Header
                    } else {
                        RxState::Discard { left: left - take }
                    };
                    if take < left {
                        break;
                    }
                }
            }
        }
        progress
    }

    fn payload_progress(&mut self, slot: u16, got: usize, len: usize, sink: &Rc<dyn IoSink>) {
        if got == len {
            self.rx_state = RxState::Header;
            self.submit_write(slot, sink);
        } else {
            self.rx_state = RxState::Payload { slot, got, len };
        }
    }

    /// One read: straight into a write's buffer when a large part of its payload is
    /// missing and nothing is buffered, else into the receive buffer.
    fn read_socket(
        &mut self,
        sock: &mio::net::TcpStream,
        sink: &Rc<dyn IoSink>,
    ) -> io::Result<usize> {
        if let RxState::Payload { slot, got, len } = self.rx_state
            && self.rx.is_empty()
            && len - got >= DIRECT_READ_MIN
        {
            let s = &mut self.slots[slot as usize];
            let Some(dst) = s.buf.as_mut().and_then(|b| b.get_mut(got..len)) else {
                return Err(io::Error::other("write buffer missing"));
            };
            let mut r = sock;
            let n = r.read(dst)?;
            if n > 0 {
                self.payload_progress(slot, got + n, len, sink);
            }
            return Ok(n);
        }
        self.rx.read_from(sock)
    }

    /// One `writev` of the queued replies; returns the bytes written and how many were
    /// offered.
    fn write_output(&mut self, sock: &mio::net::TcpStream) -> io::Result<(usize, usize)> {
        let (written, offered) = {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            let mut offered = 0;
            let mut skip = self.out_sent;
            'slots: for &idx in &self.out {
                let s = &self.slots[idx as usize];
                let hdr = s.hdr.get(..s.hdr_len).unwrap_or(&[]);
                for part in [hdr, &s.extra[..], s.data()] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    iov[n] = IoSlice::new(&part[skip..]);
                    offered += part.len() - skip;
                    skip = 0;
                    n += 1;
                    if n == MAX_IOV {
                        break 'slots;
                    }
                }
            }
            if n == 0 {
                return Ok((0, 0));
            }
            let mut w = sock;
            (w.write_vectored(&iov[..n])?, offered)
        };
        let mut done = self.out_sent + written;
        while let Some(&idx) = self.out.front() {
            let len = self.slots[idx as usize].reply_len();
            if done < len {
                break;
            }
            done -= len;
            self.out.pop_front();
            self.free_slot(idx);
        }
        self.out_sent = done;
        Ok((written, offered))
    }
}

/// A connection in transmission: its state, and the sink its I/O completes to.
pub(crate) struct Conn {
    me: Weak<Conn>,
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
                st.ctl.wake();
            }
            Err(_) => {
                self.late.borrow_mut().push((idx, status, buf));
            }
        }
    }
}

/// The transmission phase of a connection, as a future that ends when the connection
/// is done.
struct Transmission {
    sock: Async<mio::net::TcpStream>,
    conn: Rc<Conn>,
    drain_timer: Option<Sleep>,
}

impl Transmission {
    fn new(
        ctl: Rc<ConnCtl>,
        sock: Async<mio::net::TcpStream>,
        rx: RecvBuf,
        neg: Negotiated,
    ) -> Transmission {
        let conn = Rc::new_cyclic(|me| Conn {
            me: me.clone(),
            st: RefCell::new(TxState::new(ctl, rx, neg)),
            late: RefCell::new(Vec::new()),
        });
        Transmission {
            sock,
            conn,
            drain_timer: None,
        }
    }
}

impl Future for Transmission {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let conn = this.conn.clone();
        let sink: Rc<dyn IoSink> = conn.clone();
        let mut st = conn.st.borrow_mut();
        st.ctl.set_waker(cx.waker());
        let late = std::mem::take(&mut *conn.late.borrow_mut());
        for (idx, status, buf) in late {
            st.complete(idx, status, buf, &conn.me);
        }
        if st.ctl.close_requested() {
            st.drain(DrainReason::Server);
        }
        let sock = this.sock.get_ref();
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
                match st.read_socket(sock, &sink) {
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
                match st.write_output(sock) {
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
                st.counters.fold_into(&st.ctl.shared().counters);
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
        if st.counters.pending() && st.free.len() == st.slots.len() {
            st.counters.fold_into(&st.ctl.shared().counters);
        }
        // Wait for the socket (completions wake us through the sink).
        if read_blocked {
            this.sock.clear_readable();
            if this.sock.poll_readable(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        if write_blocked {
            this.sock.clear_writable();
            if this.sock.poll_writable(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        if st.draining.is_some() && st.has_output() {
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
