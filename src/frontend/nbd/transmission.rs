//! The transmission state of a connection: request slots, request handling (validate,
//! submit to the bdev channel, build the reply), flush ordering, and the socket reads
//! and `writev`s. Driven by the connection future in `conn`. Unaligned writes and the
//! locked slow path of modifying requests: [`rmw`].
//!
//! A request lives in a **slot** (reused, with its buffer, from one request to the next),
//! from the moment its header is parsed until its reply is written. The number of slots
//! and the bytes their buffers hold are bounded, per connection and (the server's
//! [`BufferBudget`](super::budget::BufferBudget)) across connections; when any bound is
//! reached the connection stops reading, and TCP pushes back on the client.

mod rmw;

use super::check::{Command, ExportLimits, Span, Verdict, check_request};
use super::conn::Conn;
use super::export::{ExportEntry, MAX_PAYLOAD_BYTES};
use super::flush::FlushEpochs;
use super::handshake::{ALLOCATION_DEPTH_ID, BASE_ALLOCATION_ID, DIRTY_BITMAP_ID, Negotiated};
use super::proto::{
    self, CMD_READ, CMD_WRITE, ChunkHeader, Extent, HeaderMode, MAX_REPLY_HEADER_LEN,
    REPLY_FLAG_DONE, RequestHeader,
};
use super::range_lock::{ConnAck, Gen, LockId, state_active, state_gen};
use super::server::ConnCtl;
use super::state::{ConnState, LocalCounters, RequestKind};
use crate::bdev::{BdevIo, Channel, IoBuf, IoKind, IoSink, IoStatus};
use crate::reactor::recv::RecvBuf;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
/// Iovecs per `writev`.
const MAX_IOV: usize = 64;
/// Extents per block status reply.
const MAX_EXTENTS: usize = 1024;
/// `seen_state` while read-modify-writes are in progress (never a state value: the
/// in-progress count never reaches `u32::MAX`).
const LOCKED: u64 = u64::MAX;

/// Where a slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// On the free list.
    Free,
    /// A write whose payload is being received.
    Receiving,
    /// A flush waiting for earlier writes of the connection to complete.
    WaitingFlush,
    /// A read-modify-write waiting for the connection's lock-free writes in flight.
    WaitingBarrier,
    /// A read-modify-write waiting for every connection of the export to acknowledge
    /// its generation.
    WaitingAcks,
    /// A modifying request waiting for its blocks' range lock.
    WaitingLock,
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
    /// The request's length (the reply's data length for a read).
    len_bytes: u64,
    /// Force unit access (writes, kept while the payload arrives).
    fua: bool,
    /// Counted in the flush epochs (a write, trim or write-zeroes in flight).
    modifies: bool,
    epoch: u64,
    /// Bytes of `buf` counted against the connection's budget.
    reserved_bytes: usize,
    /// Bytes taken from the server's budget for `buf`.
    budget_bytes: u64,
    /// Reply header (and the fixed part of its payload).
    hdr: [u8; MAX_REPLY_HEADER_LEN],
    hdr_len: usize,
    /// Reply payload after the header: an error message or block status descriptors.
    extra: Vec<u8>,
    /// Data buffer: read data to send, write payload to receive.
    buf: Option<IoBuf>,
    /// Bytes of `buf` sent after `extra` (reads), from `data_skip`.
    data_len: usize,
    /// Where the requested bytes start in `buf` (unaligned reads).
    data_skip: usize,
    /// An unaligned write receiving its payload: where it lies in its blocks.
    unaligned: Option<Span>,
    /// A read-modify-write in progress.
    rmw: Option<rmw::Rmw>,
    /// The edge block of a read-modify-write (kept for the next one).
    edge: Option<IoBuf>,
    /// The range lock the request holds or waits for.
    lock: Option<LockId>,
    /// The I/O of a request waiting for its lock.
    pending: Option<BdevIo>,
    /// The epoch a read-modify-write waits for (`WaitingBarrier`).
    barrier: u64,
    /// The generation of a read-modify-write (`WaitingAcks`).
    generation: Gen,
    /// A block status request whose changed blocks are being worked out.
    status: Option<StatusWork>,
}

/// The changed blocks of a block status request (`qemu:dirty-bitmap:`), worked out by
/// a task of their own (where the table cannot tell, contents are compared): the
/// task leaves its answer here and completes the slot.
struct StatusWork {
    span: Span,
    req_one: bool,
    dirty: Rc<std::cell::Cell<Option<DirtyRuns>>>,
}

/// Runs `(num_blocks, changed)`, or why not.
type DirtyRuns = Result<Vec<(u64, bool)>, IoStatus>;

impl Slot {
    fn new() -> Slot {
        Slot {
            state: SlotState::Free,
            cookie: 0,
            kind: 0,
            offset_bytes: 0,
            len_bytes: 0,
            fua: false,
            modifies: false,
            epoch: 0,
            reserved_bytes: 0,
            budget_bytes: 0,
            hdr: [0; MAX_REPLY_HEADER_LEN],
            hdr_len: 0,
            extra: Vec::new(),
            buf: None,
            data_len: 0,
            data_skip: 0,
            unaligned: None,
            rmw: None,
            edge: None,
            lock: None,
            pending: None,
            barrier: 0,
            generation: 0,
            status: None,
        }
    }

    fn reply_len(&self) -> usize {
        self.hdr_len + self.extra.len() + self.data_len
    }

    fn data(&self) -> &[u8] {
        match &self.buf {
            Some(b) if self.data_len > 0 => b
                .get(self.data_skip..self.data_skip + self.data_len)
                .unwrap_or(&[]),
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
pub(super) enum DrainReason {
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
    /// The next request waited too long for the server's buffer bytes.
    BufferWait,
}

/// The transmission state of a connection.
pub(super) struct TxState {
    ctl: Rc<ConnCtl>,
    export: Arc<ExportEntry>,
    chan: Channel,
    /// `base:allocation` was selected.
    base_allocation: bool,
    /// The bdev a selected `qemu:dirty-bitmap:<name>` compares with.
    dirty_base: Option<Channel>,
    /// `qemu:allocation-depth` was selected.
    allocation_depth: bool,
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
    /// Bytes taken from the server's budget for the request being started and not yet
    /// given to its slot.
    budget_taken: u64,
    /// The bytes the parsed request at the head of the receive buffer waits for from
    /// the server's budget (nothing more is read meanwhile).
    budget_wait: Option<u64>,
    epochs: FlushEpochs,
    waiting_flushes: VecDeque<u16>,
    /// The epoch of the last modifying request sent to the bdev without a range lock: a
    /// read-modify-write waits for it.
    bypass_epoch: u64,
    /// Read-modify-writes waiting for `bypass_epoch`s, in order.
    waiting_barrier: VecDeque<u16>,
    /// Requests waiting for a range lock.
    waiting_lock: Vec<u16>,
    /// Read-modify-writes waiting for acknowledgements of their generation.
    waiting_acks: Vec<u16>,
    /// This connection as read-modify-writes of the export see it.
    ack: Arc<ConnAck>,
    /// The last generation of read-modify-writes seen.
    seen_gen: Gen,
    /// The export's lock state last seen with no read-modify-write in progress
    /// (`LOCKED` while one is): modifying requests go without a lock while it holds.
    seen_state: u64,
    /// A generation to acknowledge once the modifying requests up to an epoch completed.
    ack_pending: Option<(Gen, u64)>,
    draining: Option<DrainReason>,
    input_closed: bool,
    output_broken: bool,
    counters: LocalCounters,
}

impl TxState {
    pub(super) fn new(ctl: Rc<ConnCtl>, rx: RecvBuf, neg: Negotiated) -> TxState {
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
            block_status: (neg.block_status || neg.dirty_base.is_some() || neg.allocation_depth)
                && chunked,
            mode: neg.reply.header_mode(),
        };
        let lock_state = export.locks.state();
        let ack = export.locks.register(lock_state, ctl.waker());
        TxState {
            ctl,
            block_size: bdev.block_size() as u64,
            unmap_zeroes: bdev.unmap_reads_zeroes() && bdev.supports(IoKind::Unmap),
            chan: neg.chan,
            base_allocation: neg.block_status,
            dirty_base: neg.dirty_base,
            allocation_depth: neg.allocation_depth,
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
            budget_taken: 0,
            budget_wait: None,
            epochs: FlushEpochs::new(),
            waiting_flushes: VecDeque::new(),
            bypass_epoch: 0,
            waiting_barrier: VecDeque::new(),
            waiting_lock: Vec::new(),
            waiting_acks: Vec::new(),
            ack,
            seen_gen: state_gen(lock_state),
            seen_state: if state_active(lock_state) == 0 {
                lock_state
            } else {
                LOCKED
            },
            ack_pending: None,
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
        s.len_bytes = h.len_bytes;
        s.fua = false;
        s.modifies = false;
        s.hdr_len = 0;
        s.extra.clear();
        s.data_len = 0;
        s.data_skip = 0;
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
        let held = std::mem::take(&mut s.budget_bytes);
        self.ctl.shared().budget.give_back(held);
        s.data_len = 0;
        s.unaligned = None;
        debug_assert!(
            s.lock.is_none() && s.rmw.is_none() && s.pending.is_none(),
            "a slot freed with a range lock"
        );
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
        // From the bytes taken for this request when its header was admitted.
        let len = len as u64;
        let taken = self.budget_taken.min(len);
        self.budget_taken -= taken;
        if len > taken {
            self.ctl.shared().budget.force_take(len - taken);
        }
        s.budget_bytes = len;
        buf
    }

    /// The buffer bytes request `h` takes: the blocks covering it (what `take_buf` is
    /// given for a read or a write, so that nothing goes back after it starts), at most
    /// its length and two partial blocks; 0 for one without a buffer or that will be
    /// refused.
    fn buffer_need(&self, h: &RequestHeader) -> u64 {
        if (h.kind == CMD_READ || h.kind == CMD_WRITE)
            && h.len_bytes <= u64::from(MAX_PAYLOAD_BYTES)
        {
            let bs = self.block_size.max(1);
            let first = h.offset_bytes / bs;
            let end = h.offset_bytes.saturating_add(h.len_bytes).div_ceil(bs);
            ((end - first) * bs).min(h.len_bytes + 2 * bs)
        } else {
            0
        }
    }

    /// Bytes the request at the head of the receive buffer waits for from the server's
    /// budget, if it waits.
    pub(super) fn budget_wait(&self) -> Option<u64> {
        self.budget_wait
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

    /// `NBD_CMD_BLOCK_STATUS` with a `qemu:dirty-bitmap:` context: its changed blocks
    /// may need reads (`Channel::changed_since` compares contents where the table
    /// cannot tell), so a task works them out and completes the slot, which then
    /// replies ([`TxState::reply_block_status`]).
    fn start_dirty_status(&mut self, idx: u16, span: Span, req_one: bool, sink: &Rc<dyn IoSink>) {
        let Some(base) = self.dirty_base.clone() else {
            self.reply_block_status(idx, span, req_one, None);
            self.enqueue(idx);
            return;
        };
        let dirty = Rc::new(std::cell::Cell::new(None));
        let s = &mut self.slots[idx as usize];
        s.state = SlotState::Submitted;
        s.status = Some(StatusWork {
            span,
            req_one,
            dirty: dirty.clone(),
        });
        let (chan, sink) = (self.chan.clone(), sink.clone());
        let max_runs = if req_one { 1 } else { MAX_EXTENTS };
        crate::reactor::spawn_local(async move {
            let runs = chan
                .changed_since(&base, span.offset_blocks, span.num_blocks, max_runs)
                .await;
            dirty.set(Some(runs));
            BdevIo::flush()
                .on_complete(sink, idx as u64)
                .complete(IoStatus::Success);
        })
        .detach();
    }

    /// `NBD_CMD_BLOCK_STATUS`: one chunk per selected context (`base:allocation`, a
    /// `qemu:dirty-bitmap:<name>` whose runs `dirty` holds, `qemu:allocation-depth`), the
    /// last flagged done.
    fn reply_block_status(
        &mut self,
        idx: u16,
        span: Span,
        req_one: bool,
        dirty: Option<DirtyRuns>,
    ) {
        let (offset_blocks, num_blocks) = (span.offset_blocks, span.num_blocks);
        // Each selected context's runs (blocks, descriptor flags), or why not.
        let mut runs: Vec<(u32, Vec<(u64, u32)>)> = Vec::with_capacity(3);
        let answered = (|| -> Result<(), (IoStatus, &'static str)> {
            if self.base_allocation {
                let r = self
                    .chan
                    .block_status(offset_blocks, num_blocks)
                    .map_err(|st| (st, "the bdev cannot report block status"))?;
                let flags = |r: &crate::bdev::BlockRun| {
                    (if r.allocated { 0 } else { proto::STATE_HOLE })
                        | if r.zero { proto::STATE_ZERO } else { 0 }
                };
                runs.push((
                    BASE_ALLOCATION_ID,
                    r.iter().map(|r| (r.num_blocks, flags(r))).collect(),
                ));
            }
            if let Some(dirty) = dirty {
                let r = dirty.map_err(|st| (st, "the bdev cannot report changed blocks"))?;
                let flag = |changed| if changed { proto::STATE_DIRTY } else { 0 };
                runs.push((
                    DIRTY_BITMAP_ID,
                    r.into_iter().map(|(n, c)| (n, flag(c))).collect(),
                ));
            }
            if self.allocation_depth {
                let r = self
                    .chan
                    .allocation_depth(offset_blocks, num_blocks)
                    .map_err(|st| (st, "the bdev cannot report allocation depth"))?;
                runs.push((ALLOCATION_DEPTH_ID, r));
            }
            Ok(())
        })();
        if let Err((st, what)) = answered {
            self.reply_error(idx, proto::nbd_errno(st.errno()), what);
            return;
        }
        let chunks: Vec<(u32, Vec<Extent>)> = runs
            .into_iter()
            .map(|(id, r)| (id, self.status_extents(span, req_one, r.into_iter())))
            .collect();
        let hmode = self.hmode;
        let s = &mut self.slots[idx as usize];
        s.extra.clear();
        s.data_len = 0;
        let last = chunks.len().saturating_sub(1);
        let mut payload = Vec::new();
        for (i, (id, extents)) in chunks.iter().enumerate() {
            payload.clear();
            let kind = proto::encode_block_status_payload(&mut payload, hmode, *id, extents);
            let header = ChunkHeader {
                flags: if i == last { REPLY_FLAG_DONE } else { 0 },
                kind,
                cookie: s.cookie,
                offset_bytes: s.offset_bytes,
                len_bytes: payload.len() as u64,
            };
            if i == 0 {
                s.hdr_len = proto::write_chunk_header(&mut s.hdr, hmode, &header);
            } else {
                // Later chunks follow the first one's payload.
                let mut h = [0u8; proto::MAX_REPLY_HEADER_LEN];
                let n = proto::write_chunk_header(&mut h, hmode, &header);
                s.extra.extend_from_slice(&h[..n]);
            }
            s.extra.extend_from_slice(&payload);
        }
    }

    /// A block status chunk's extents in bytes from `runs` (blocks, flags) of the
    /// request's blocks: merged, at most one with `req_one` (else `MAX_EXTENTS`), each
    /// within what the header mode can carry, from the request's offset to its end.
    fn status_extents(
        &self,
        span: Span,
        req_one: bool,
        runs: impl Iterator<Item = (u64, u32)>,
    ) -> Vec<Extent> {
        let bs = self.block_size.max(1);
        // Compact chunks carry 32-bit extent lengths.
        let max_blocks = match self.hmode {
            HeaderMode::Compact => (u32::MAX as u64) / bs,
            HeaderMode::Extended => u64::MAX / bs,
        };
        let limit = if req_one { 1 } else { MAX_EXTENTS };
        let mut extents: Vec<(u64, u32)> = Vec::new();
        let mut left = span.num_blocks;
        for (n, flags) in runs {
            let n = n.min(left);
            if n == 0 {
                continue;
            }
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
            extents.push((span.num_blocks, 0));
        }
        if let Some(i) = extents.iter().position(|(n, _)| *n > max_blocks) {
            extents[i].0 = max_blocks;
            extents.truncate(i + 1);
        }
        // In bytes, from the request's offset (inside the first block) to its end.
        let mut skip = u64::from(span.head_bytes);
        let mut left = span.len_bytes;
        let mut bytes: Vec<Extent> = Vec::with_capacity(extents.len());
        for (n, flags) in extents {
            let len_bytes = (n * bs).saturating_sub(std::mem::take(&mut skip)).min(left);
            if len_bytes == 0 {
                break;
            }
            bytes.push(Extent { len_bytes, flags });
            left -= len_bytes;
        }
        bytes
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

    /// Submits a write, trim or write-zeroes: at once, or (while a read-modify-write is in
    /// progress on the export) once it holds the range lock of its blocks.
    #[inline]
    fn submit_modifying(&mut self, idx: u16, io: BdevIo, sink: &Rc<dyn IoSink>) {
        if self.export.locks.state() != self.seen_state && self.observe_locks() {
            self.submit_locked(idx, io, sink);
            return;
        }
        let epoch = self.epochs.track();
        self.bypass_epoch = epoch;
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
            Command::ReadUnaligned(span) => {
                self.count(RequestKind::Read, span.len_bytes);
                self.count(RequestKind::Unaligned, 0);
                let idx = self.alloc_slot(h);
                let buf = self.take_buf(idx, span.covering_bytes(bs as u32) as usize);
                self.slots[idx as usize].data_skip = span.head_bytes as usize;
                let io = BdevIo::read(span.offset_blocks, span.num_blocks, buf);
                self.submit(idx, io, sink);
            }
            Command::WriteUnaligned { span, fua } => {
                // The payload goes to the front of a buffer of the covering blocks, and
                // moves to its offset in them when complete.
                self.count(RequestKind::Write, span.len_bytes);
                self.count(RequestKind::Unaligned, 0);
                let idx = self.alloc_slot(h);
                let buf = self.take_buf(idx, span.covering_bytes(bs as u32) as usize);
                let s = &mut self.slots[idx as usize];
                s.buf = Some(buf);
                s.fua = fua;
                s.unaligned = Some(span);
                s.state = SlotState::Receiving;
                self.rx_state = RxState::Payload {
                    slot: idx,
                    got: 0,
                    len: span.len_bytes as usize,
                };
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
            Command::WriteZeroesUnaligned { span, fua, no_hole } => {
                self.count(RequestKind::WriteZeroes, 0);
                self.count(RequestKind::Unaligned, 0);
                let idx = self.alloc_slot(h);
                self.start_unaligned_zeroes(idx, span, fua, no_hole, sink);
            }
            Command::BlockStatus { span, req_one } => {
                self.count(RequestKind::BlockStatus, 0);
                let idx = self.alloc_slot(h);
                if self.dirty_base.is_some() {
                    self.start_dirty_status(idx, span, req_one, sink);
                } else {
                    self.reply_block_status(idx, span, req_one, None);
                    self.enqueue(idx);
                }
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
        if let Some(span) = s.unaligned.take() {
            self.start_unaligned_write(idx, span, sink);
            return;
        }
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
    pub(super) fn complete(
        &mut self,
        idx: u16,
        status: IoStatus,
        buf: Option<IoBuf>,
        me: &Weak<Conn>,
    ) {
        let Some(s) = self.slots.get_mut(idx as usize) else {
            tracing::error!(idx, "nbd: completion for an unknown slot");
            return;
        };
        if s.state != SlotState::Submitted {
            tracing::error!(idx, state = ?s.state, "nbd: completion for a slot not in flight");
            return;
        }
        if let Some(w) = s.status.take() {
            // A block status request's changed blocks, worked out.
            let dirty = w.dirty.take().unwrap_or(Err(IoStatus::InternalError));
            self.reply_block_status(idx, w.span, w.req_one, Some(dirty));
            self.enqueue(idx);
            return;
        }
        let mut status = status;
        if s.rmw.is_some() {
            // One step of a read-modify-write: the next one, or its end.
            match self.rmw_completed(idx, status, buf, me) {
                Some(st) => status = st,
                None => return,
            }
        } else {
            if buf.is_some() {
                s.buf = buf;
            }
            if let Some(id) = s.lock.take() {
                self.export.locks.unlock(id);
            }
        }
        let s = &mut self.slots[idx as usize];
        let was_modifying = std::mem::replace(&mut s.modifies, false);
        let (kind, len) = (s.kind, s.len_bytes as usize);
        if was_modifying {
            let e = s.epoch;
            self.epochs.release(e);
            if !(self.waiting_flushes.is_empty() && self.waiting_barrier.is_empty())
                && let Some(conn) = me.upgrade()
            {
                let sink: Rc<dyn IoSink> = conn;
                self.start_flushes(&sink);
                self.start_barriered(&sink);
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

    pub(super) fn drain(&mut self, reason: DrainReason) {
        if self.draining.is_some() {
            return;
        }
        self.draining = Some(reason);
        self.budget_wait = None;
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

    pub(super) fn input_eof(&mut self) {
        self.input_closed = true;
        self.drain(DrainReason::ClientClosed);
    }

    pub(super) fn socket_failed(&mut self, e: &io::Error) {
        tracing::debug!(export = %self.export.name, error = %e, "nbd: socket failed");
        self.input_closed = true;
        self.abandon_output();
        self.drain(DrainReason::Failed);
    }

    /// Gives up sending: the client is gone or does not read.
    pub(super) fn abandon_output(&mut self) {
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
    pub(super) fn finished(&self) -> bool {
        self.draining.is_some() && self.free.len() == self.slots.len()
    }

    pub(super) fn wants_read(&self) -> bool {
        if self.draining.is_some() || self.input_closed {
            return false;
        }
        match self.rx_state {
            RxState::Header => {
                self.budget_wait.is_none()
                    && self.can_start_request()
                    && self.rx.len() < self.rx.capacity()
            }
            RxState::Payload { .. } | RxState::Discard { .. } => true,
        }
    }

    pub(super) fn has_output(&self) -> bool {
        !self.out.is_empty() && !self.output_broken
    }

    // -- socket --------------------------------------------------------------------------

    /// Handles whatever the receive buffer holds; returns true if anything was consumed.
    pub(super) fn process_input(&mut self, sink: &Rc<dyn IoSink>) -> bool {
        if self.ack_pending.is_some() || self.export.locks.state() != self.seen_state {
            self.observe_locks();
        }
        let mut progress = !self.waiting_acks.is_empty() && self.poll_acks(sink);
        progress |= !self.waiting_lock.is_empty() && self.poll_locks(sink);
        loop {
            match self.rx_state {
                RxState::Header => {
                    if !self.can_start_request() || self.rx.is_empty() {
                        break;
                    }
                    match proto::parse_request(self.rx.data(), self.hmode) {
                        Ok(None) => break,
                        Ok(Some((h, n))) => {
                            let need = self.buffer_need(&h);
                            let budget = &self.ctl.shared().budget;
                            if need > 0 && !budget.try_take(need) {
                                if self.budget_wait.is_none() {
                                    self.ctl
                                        .shared()
                                        .counters
                                        .buffer_waits
                                        .fetch_add(1, Ordering::Relaxed);
                                }
                                self.budget_wait = Some(need);
                                break;
                            }
                            self.budget_wait = None;
                            self.budget_taken = need;
                            self.rx.consume(n);
                            progress = true;
                            self.start_request(&h, sink);
                            // What the request did not use (a refused one, a shorter
                            // buffer) goes back.
                            let left = std::mem::take(&mut self.budget_taken);
                            self.ctl.shared().budget.give_back(left);
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
    #[inline]
    pub(super) fn read_socket(
        &mut self,
        mut sock: impl Read,
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
            let n = sock.read(dst)?;
            if n > 0 {
                self.payload_progress(slot, got + n, len, sink);
            }
            return Ok(n);
        }
        self.rx.read_from(sock)
    }

    /// One `writev` of the queued replies; returns the bytes written and how many were
    /// offered.
    #[inline]
    pub(super) fn write_output(&mut self, mut sock: impl Write) -> io::Result<(usize, usize)> {
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
            (sock.write_vectored(&iov[..n])?, offered)
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

    // -- for the connection future -------------------------------------------------------

    pub(super) fn ctl(&self) -> &Rc<ConnCtl> {
        &self.ctl
    }

    pub(super) fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    /// Publishes the counters to the server.
    pub(super) fn fold_counters(&self) {
        self.counters.fold_into(&self.ctl.shared().counters);
    }

    /// Publishes the counters if the connection has nothing in flight.
    pub(super) fn fold_counters_if_idle(&self) {
        if self.counters.pending() && self.free.len() == self.slots.len() {
            self.fold_counters();
        }
    }
}
