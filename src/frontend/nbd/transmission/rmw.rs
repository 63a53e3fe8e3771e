//! Unaligned writes and write-zeroes (read-modify-write; the steps are planned by
//! [`unaligned`](crate::frontend::nbd::unaligned)), and the slow path every modifying
//! request of the export takes while one is in progress: it locks its blocks in the
//! export's [range lock](crate::frontend::nbd::range_lock) before it reaches the bdev.
//!
//! A read-modify-write, from its start (payload received) to its reply:
//! 1. starts a new generation of the export's range lock (`rmw_begin`): from then on,
//!    modifying requests of every connection lock their blocks;
//! 2. `WaitingBarrier`: waits for this connection's writes, trims and write-zeroes that
//!    went to the bdev without a lock (no read-modify-write was in progress then), the
//!    way a flush waits for the writes before it;
//! 3. `WaitingAcks`: waits for every other connection of the export to acknowledge the
//!    generation, which each does once its own lock-free writes sent before it saw
//!    the generation have completed ([`TxState::observe_locks`]);
//! 4. `WaitingLock`: waits for the lock on all its covering blocks;
//! 5. `Submitted`: runs its steps one I/O at a time (edge reads, merges, writes, each
//!    write with the request's FUA); the last completion unlocks and replies.
//!
//! It counts as a modifying request in flight from its start, so a flush that arrives
//! later waits for it, and as in progress in the export's lock state from its start to
//! its end.

use super::*;
use crate::frontend::nbd::unaligned::{Plan, Step};

/// A read-modify-write in progress in a slot.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rmw {
    plan: Plan,
    /// The step in flight (`None` before the first).
    step: Option<Step>,
    fua: bool,
    no_hole: bool,
}

impl TxState {
    /// The payload of an unaligned write is in, at the front of its buffer: moves it to
    /// its offset in the covering blocks and starts the read-modify-write.
    pub(super) fn start_unaligned_write(&mut self, idx: u16, span: Span, sink: &Rc<dyn IoSink>) {
        let block_size = self.block_size as u32;
        let s = &mut self.slots[idx as usize];
        let (head, len) = (span.head_bytes as usize, span.len_bytes as usize);
        let moved = match s.buf.as_mut() {
            Some(b) if b.len() >= head + len => {
                b.copy_within(0..len, head);
                true
            }
            _ => false,
        };
        if !moved {
            self.reply_error(idx, proto::NBD_EIO, "internal: write buffer missing");
            self.enqueue(idx);
            return;
        }
        let fua = s.fua;
        let plan = Plan {
            span,
            block_size,
            zeroes: false,
        };
        self.start_rmw(idx, plan, fua, false, sink);
    }

    /// Starts an unaligned write-zeroes.
    pub(super) fn start_unaligned_zeroes(
        &mut self,
        idx: u16,
        span: Span,
        fua: bool,
        no_hole: bool,
        sink: &Rc<dyn IoSink>,
    ) {
        let plan = Plan {
            span,
            block_size: self.block_size as u32,
            zeroes: true,
        };
        self.start_rmw(idx, plan, fua, no_hole, sink);
    }

    fn start_rmw(&mut self, idx: u16, plan: Plan, fua: bool, no_hole: bool, sink: &Rc<dyn IoSink>) {
        let generation = self.export.locks.rmw_begin();
        self.observe_locks();
        // Wait for the lock-free modifying requests of this connection; in an epoch of
        // its own, so that it does not wait for itself.
        let barrier = self.bypass_epoch;
        if barrier >= self.epochs.current() {
            self.epochs.begin_flush();
        }
        let epoch = self.epochs.track();
        let s = &mut self.slots[idx as usize];
        s.rmw = Some(Rmw {
            plan,
            step: None,
            fua,
            no_hole,
        });
        s.modifies = true;
        s.epoch = epoch;
        s.barrier = barrier;
        s.generation = generation;
        if self.epochs.covered(barrier) {
            self.rmw_acks(idx, sink);
        } else {
            s.state = SlotState::WaitingBarrier;
            self.waiting_barrier.push_back(idx);
        }
    }

    /// Moves on the read-modify-writes whose barrier has passed.
    pub(super) fn start_barriered(&mut self, sink: &Rc<dyn IoSink>) {
        while let Some(&idx) = self.waiting_barrier.front() {
            if !self.epochs.covered(self.slots[idx as usize].barrier) {
                break;
            }
            self.waiting_barrier.pop_front();
            self.rmw_acks(idx, sink);
        }
    }

    /// Sees the export's lock state: a new generation is acknowledged once the modifying
    /// requests sent without a lock so far have completed (those tracked from now on go
    /// to a later epoch, so the acknowledgement never waits for a lock). Returns true
    /// while read-modify-writes are in progress (modifying requests must lock).
    pub(super) fn observe_locks(&mut self) -> bool {
        let v = self.export.locks.state();
        let generation = state_gen(v);
        if generation != self.seen_gen {
            self.seen_gen = generation;
            if self.bypass_epoch >= self.epochs.current() {
                self.epochs.begin_flush();
            }
            self.ack_pending = Some((generation, self.bypass_epoch));
        }
        self.seen_state = if state_active(v) == 0 { v } else { LOCKED };
        if let Some((generation, e)) = self.ack_pending
            && self.epochs.covered(e)
        {
            self.ack_pending = None;
            self.export.locks.ack(&self.ack, generation);
        }
        self.seen_state == LOCKED
    }

    fn rmw_acks(&mut self, idx: u16, sink: &Rc<dyn IoSink>) {
        let generation = self.slots[idx as usize].generation;
        if self.export.locks.all_acked(generation, self.ctl.waker()) {
            self.rmw_lock(idx, sink);
        } else {
            self.slots[idx as usize].state = SlotState::WaitingAcks;
            self.waiting_acks.push(idx);
        }
    }

    /// Moves on the read-modify-writes whose generation every connection acknowledged;
    /// returns true if any.
    pub(super) fn poll_acks(&mut self, sink: &Rc<dyn IoSink>) -> bool {
        let mut progress = false;
        let waker = self.ctl.waker();
        let mut i = 0;
        while i < self.waiting_acks.len() {
            let idx = self.waiting_acks[i];
            let generation = self.slots[idx as usize].generation;
            // The waker is registered before the check: no acknowledgement is missed.
            if !self.export.locks.all_acked(generation, waker.clone()) {
                i += 1;
                continue;
            }
            self.waiting_acks.swap_remove(i);
            progress = true;
            self.rmw_lock(idx, sink);
        }
        progress
    }

    fn rmw_lock(&mut self, idx: u16, sink: &Rc<dyn IoSink>) {
        let Some(rmw) = self.slots[idx as usize].rmw else {
            tracing::error!(idx, "nbd: locking for a slot without read-modify-write");
            return;
        };
        let span = rmw.plan.span;
        let end = span.offset_blocks + span.num_blocks;
        let (id, held) = self
            .export
            .locks
            .lock(span.offset_blocks, end, self.ctl.waker());
        let s = &mut self.slots[idx as usize];
        s.lock = Some(id);
        if held {
            self.rmw_step(idx, sink);
        } else {
            s.state = SlotState::WaitingLock;
            self.waiting_lock.push(idx);
            self.count(RequestKind::LockWait, 0);
        }
    }

    /// An aligned write, trim or write-zeroes while a read-modify-write is in progress on
    /// the export: locks its blocks, then submits.
    pub(super) fn submit_locked(&mut self, idx: u16, io: BdevIo, sink: &Rc<dyn IoSink>) {
        let epoch = self.epochs.track();
        let end = io.offset_blocks.saturating_add(io.num_blocks);
        let (id, held) = self
            .export
            .locks
            .lock(io.offset_blocks, end, self.ctl.waker());
        let s = &mut self.slots[idx as usize];
        s.modifies = true;
        s.epoch = epoch;
        s.lock = Some(id);
        if held {
            self.submit(idx, io, sink);
        } else {
            s.pending = Some(io);
            s.state = SlotState::WaitingLock;
            self.waiting_lock.push(idx);
            self.count(RequestKind::LockWait, 0);
        }
    }

    /// Runs the requests whose range locks were granted; returns true if any.
    pub(super) fn poll_locks(&mut self, sink: &Rc<dyn IoSink>) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.waiting_lock.len() {
            let idx = self.waiting_lock[i];
            let locks = &self.export.locks;
            if !self.slots[idx as usize]
                .lock
                .is_some_and(|id| locks.is_held(id))
            {
                i += 1;
                continue;
            }
            self.waiting_lock.swap_remove(i);
            progress = true;
            match self.slots[idx as usize].pending.take() {
                Some(io) => self.submit(idx, io, sink),
                None => self.rmw_step(idx, sink),
            }
        }
        progress
    }

    /// Submits the next step of the read-modify-write in `idx`.
    fn rmw_step(&mut self, idx: u16, sink: &Rc<dyn IoSink>) {
        let bs = self.block_size as usize;
        let unmap_zeroes = self.unmap_zeroes;
        let s = &mut self.slots[idx as usize];
        let Some(rmw) = s.rmw.as_mut() else {
            return;
        };
        let Some(step) = rmw.plan.next(rmw.step) else {
            // Never: a write ends with WriteAll, a write-zeroes with a partial edge.
            tracing::error!(idx, plan = ?rmw.plan, "nbd: read-modify-write without a step");
            self.end_rmw(idx);
            self.finish_modifying(idx, "internal: read-modify-write without a step", sink);
            return;
        };
        rmw.step = Some(step);
        let (span, fua, no_hole) = (rmw.plan.span, rmw.fua, rmw.no_hole);
        let (first, last) = (span.offset_blocks, span.last_block());
        let io = match step {
            Step::ReadHead | Step::ReadTail => {
                let edge = match s.edge.take() {
                    Some(mut b) if b.capacity() >= bs => {
                        b.set_len(bs);
                        b
                    }
                    _ => self.chan.alloc_buf(bs),
                };
                let block = if step == Step::ReadHead { first } else { last };
                BdevIo::read(block, 1, edge)
            }
            Step::WriteHead | Step::WriteTail => {
                let Some(edge) = s.edge.take() else {
                    self.end_rmw(idx);
                    self.finish_modifying(idx, "internal: edge buffer missing", sink);
                    return;
                };
                let block = if step == Step::WriteHead { first } else { last };
                BdevIo::write(block, 1, edge).with_fua(fua)
            }
            Step::WriteAll => {
                let Some(buf) = s.buf.take() else {
                    self.end_rmw(idx);
                    self.finish_modifying(idx, "internal: write buffer missing", sink);
                    return;
                };
                BdevIo::write(first, span.num_blocks, buf).with_fua(fua)
            }
            Step::ZeroMiddle => {
                let (offset_blocks, num_blocks) = rmw.plan.middle();
                let io = if !no_hole && unmap_zeroes {
                    BdevIo::unmap(offset_blocks, num_blocks)
                } else {
                    BdevIo::write_zeroes(offset_blocks, num_blocks)
                };
                io.with_fua(fua)
            }
        };
        self.submit(idx, io, sink);
    }

    /// A step of the read-modify-write in `idx` completed. Returns `None` if the next
    /// step was submitted, else the request's status (its lock released).
    pub(super) fn rmw_completed(
        &mut self,
        idx: u16,
        status: IoStatus,
        buf: Option<IoBuf>,
        me: &Weak<Conn>,
    ) -> Option<IoStatus> {
        let s = &mut self.slots[idx as usize];
        let rmw = s.rmw?;
        let step = rmw.step?;
        match step {
            Step::WriteAll => s.buf = buf.or(s.buf.take()),
            Step::ZeroMiddle => {}
            _ => s.edge = buf.or(s.edge.take()),
        }
        let mut status = status;
        if status.is_success() {
            let edge = s.edge.as_deref_mut().unwrap_or(&mut []);
            let data = s.buf.as_deref_mut().unwrap_or(&mut []);
            if !rmw.plan.merge(step, edge, data) {
                tracing::error!(idx, plan = ?rmw.plan, ?step, "nbd: read-modify-write buffers too short");
                status = IoStatus::InternalError;
            } else if rmw.plan.next(Some(step)).is_some() {
                if let Some(conn) = me.upgrade() {
                    let sink: Rc<dyn IoSink> = conn;
                    self.rmw_step(idx, &sink);
                    return None;
                }
                status = IoStatus::Aborted;
            }
        }
        self.end_rmw(idx);
        Some(status)
    }

    /// Releases the lock and the `rmw_active` count of the read-modify-write in `idx`.
    fn end_rmw(&mut self, idx: u16) {
        let s = &mut self.slots[idx as usize];
        if let Some(id) = s.lock.take() {
            self.export.locks.unlock(id);
        }
        if s.rmw.take().is_some() {
            self.export.locks.rmw_end();
        }
    }

    /// Fails a read-modify-write that cannot go on (its lock released): releases its
    /// epoch, moves on what waited for it, replies `EIO`.
    fn finish_modifying(&mut self, idx: u16, message: &str, sink: &Rc<dyn IoSink>) {
        let s = &mut self.slots[idx as usize];
        if std::mem::replace(&mut s.modifies, false) {
            let e = s.epoch;
            self.epochs.release(e);
            self.start_flushes(sink);
            self.start_barriered(sink);
        }
        self.reply_error(idx, proto::NBD_EIO, message);
        self.enqueue(idx);
    }
}

impl Drop for TxState {
    /// The connection leaves the export's range lock: read-modify-writes stop waiting
    /// for its acknowledgements, and locks it still holds or waits for (the server
    /// stopped without draining it) are released, so other connections go on; buffer
    /// bytes it still holds go back to the server's budget.
    fn drop(&mut self) {
        self.export.locks.deregister(&self.ack);
        // Buffer bytes of slots never freed (the server stopped without draining).
        let held: u64 = self.slots.iter().map(|s| s.budget_bytes).sum();
        self.ctl.shared().budget.give_back(held + self.budget_taken);
        for s in &mut self.slots {
            if let Some(id) = s.lock.take() {
                self.export.locks.unlock(id);
            }
            if s.rmw.take().is_some() {
                self.export.locks.rmw_end();
            }
        }
    }
}
