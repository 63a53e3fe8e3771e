//! The agent's I/O path: a request its view allows goes to the base bdevs.
//!
//! The fast path passes a request that lies in one physical segment down as it is,
//! readdressed (no child request, no copy); anything else is planned piece by piece
//! (segment boundaries, layers, zero runs), issued as child requests and completed when
//! the last one is. A write that the view does not allow goes to the parked path
//! (`fault.rs`) instead.

use super::Agent;
use super::fault::FaultKey;
use crate::bdev::{BdevIo, Channel, IoKind, IoSink, IoStatus, Origin};
use crate::reactor;
use crate::vdisk::map::{DirtyFill, ExtentState, PhysSeg, Source};
use crate::vdisk::msg::{Below, RangeState};
use crate::vdisk::shared::PoolShared;
use smallvec::SmallVec;
use std::rc::Rc;

/// One part of a request for a base bdev.
#[derive(Clone, Copy, Debug)]
struct Piece {
    /// Global physical block (segment × segment_blocks + block in segment).
    phys: u64,
    blocks: u64,
    byte_off: usize,
}

pub(super) struct IoCtx {
    parent: BdevIo,
    pending: u32,
    status: IoStatus,
    epoch: u64,
    fills: SmallVec<[Held; 1]>,
}

/// Granules `[first, first + count)` of segment `seg`, the writable top layer of the
/// agent's disk at `vseg`, which the top layer holds once a write succeeds.
#[derive(Clone, Copy)]
pub(super) struct Held {
    seg: PhysSeg,
    vseg: u64,
    first: u16,
    count: u16,
}

/// A request the fast path passed down to a base bdev as it is (see
/// [`BdevIo::redirect`]): where it goes back to, and the epoch it counts in.
pub(super) struct Passed {
    origin: Origin,
    epoch: u64,
    /// Granules the top layer holds once the write succeeds.
    fill: Option<Held>,
}

/// Tag bit of requests passed down whole; the other tags are keys of `ctxs`.
const PASSED: u64 = 1 << 63;

impl Agent {
    /// A read or write inside one segment whose blocks all live in one physical segment
    /// (a full layer, or granules the top layer holds) and, for a write, may be written
    /// there now — also whole granules the top layer does not hold yet (the first write
    /// after a snapshot), which it holds once the write completes. The request itself
    /// goes down, readdressed; no planning. Anything else goes back to the caller.
    #[inline]
    #[allow(clippy::result_large_err)] // the request itself comes back, by design
    pub(super) fn fast_path(&self, mut io: BdevIo) -> Result<(), BdevIo> {
        let geo = &self.shared.geo;
        let write = match io.kind {
            IoKind::Read => false,
            IoKind::Write => true,
            _ => return Err(io),
        };
        let (vseg, b0) = geo.split_block(io.offset_blocks);
        if b0 + io.num_blocks > geo.segment_blocks || !self.overrides.borrow().is_empty() {
            return Err(io);
        }
        // A write where no extent can be faults (`write`), with no descent of the view.
        if write && !self.maybe_mapped.may_hold(vseg) {
            return Err(io);
        }
        let (phys, fill) = {
            let view = self.view.borrow();
            let Some(v) = view.as_ref() else {
                return Err(io);
            };
            let recent = self.recent.borrow();
            let Some(e) = recent.lookup(v.root.as_ref(), vseg) else {
                return Err(io);
            };
            if e.state != ExtentState::Mapped || (write && e.birth.get() <= v.snap_gen) {
                return Err(io);
            }
            let top = &e.layers[0];
            if !top.is_partial() {
                (top.seg() + (vseg - e.vseg), None)
            } else {
                let (g0, n) = geo.granule_span(b0, io.num_blocks);
                if self.shared.fills.get(top.seg()).all_set(g0, n) {
                    (top.seg(), None)
                } else if write
                    && geo.granule_aligned(b0)
                    && geo.granule_aligned(b0 + io.num_blocks)
                {
                    let held = Held {
                        seg: top.seg(),
                        vseg,
                        first: g0 as u16,
                        count: n as u16,
                    };
                    (top.seg(), Some(held))
                } else {
                    return Err(io);
                }
            }
        };
        let (ci, off) = self.shared.locate(phys);
        let base = &self.base[ci];
        let shift = self.base_shift[ci];
        let bs = geo.block_size as u64;
        let byte = off + b0 * bs;
        let len = io.num_blocks * bs;
        // Nothing to do at completion (no granules to mark, no commit for FUA) and a
        // container that tells when it drained: the request goes down readdressed and
        // completes straight to its submitter. Barriers wait for the container instead.
        if fill.is_none() && !io.flags.fua && self.base_readdress[ci] && io.readdress(byte >> shift)
        {
            self.io_counts.count(self.core);
            base.submit_unchecked(io);
            return Ok(());
        }
        let epoch = self.epochs.start();
        // The request itself goes down, readdressed: no child request, no copy of it.
        let mut passed = self.passed.borrow_mut();
        let entry = passed.vacant_entry();
        let tag = entry.key() as u64 | PASSED;
        let origin = io.redirect(byte >> shift, len >> shift, self.rc(), tag);
        entry.insert(Passed {
            origin,
            epoch,
            fill,
        });
        drop(passed);
        // The offset was computed from the table, inside the container: no need to check.
        base.submit_unchecked(io);
        Ok(())
    }

    pub(super) fn read(&self, mut io: BdevIo) {
        let geo = self.shared.geo;
        let bs = geo.block_size as u64;
        let mut pieces: SmallVec<[Piece; 4]> = SmallVec::new();
        let mut zeros: SmallVec<[(usize, usize); 2]> = SmallVec::new();
        // Runs no layer holds, read from an external snapshot (`esnap.rs`): `phys` is
        // the disk's own block there (the external bdev's at the same byte offset).
        let mut below: SmallVec<[Piece; 2]> = SmallVec::new();
        let external = {
            let view = self.view.borrow();
            let view = view.as_ref().expect("checked by submit");
            let recent = self.recent.borrow();
            let external = match &view.below {
                Below::Zeros => None,
                Below::External(b) => Some(Ok(b.clone())),
                Below::Missing(u) => Some(Err(*u)),
            };
            let mut at = io.offset_blocks;
            let end = at + io.num_blocks;
            let mut byte = 0usize;
            while at < end {
                let (vseg, b0) = geo.split_block(at);
                let n = (end - at).min(geo.segment_blocks - b0);
                if self.override_at(vseg) == Some(RangeState::Invalid) {
                    self.held.borrow_mut().push_back(io);
                    return;
                }
                let e = recent.lookup(view.root.as_ref(), vseg);
                for (b, cnt, src) in geo.resolve_runs(&self.shared.fills, e, vseg, b0, n) {
                    let off = byte + ((b - b0) * bs) as usize;
                    match (src, &external) {
                        (Source::Zero, None) => zeros.push((off, (cnt * bs) as usize)),
                        (Source::Zero, Some(Ok(x))) => {
                            // Past the external bdev's end (a disk grown since) reads
                            // as zeros.
                            let from = vseg * geo.segment_blocks + b;
                            let x_end = x.num_blocks() * x.block_size() as u64 / bs;
                            let inside = x_end.saturating_sub(from).min(cnt);
                            if inside > 0 {
                                below.push(Piece {
                                    phys: from,
                                    blocks: inside,
                                    byte_off: off,
                                });
                            }
                            if inside < cnt {
                                let o = off + (inside * bs) as usize;
                                zeros.push((o, ((cnt - inside) * bs) as usize));
                            }
                        }
                        (Source::Zero, Some(Err(u))) => {
                            tracing::debug!(disk = self.disk, external = %u,
                                "read of a missing external snapshot");
                            self.deferred.complete(io, IoStatus::MediaError);
                            return;
                        }
                        (Source::Error, _) => {
                            self.deferred.complete(io, IoStatus::MediaError);
                            return;
                        }
                        (Source::Seg(s), _) => push_piece(
                            &mut pieces,
                            s * geo.segment_blocks + b,
                            cnt,
                            off,
                            &self.shared,
                        ),
                    }
                }
                at += n;
                byte += (n * bs) as usize;
            }
            external.and_then(Result::ok)
        };
        for (off, len) in zeros {
            io.zero_fill(off, len);
        }
        let below = match (below.is_empty(), external) {
            (false, Some(x)) => match self.external_channel(&x) {
                Ok(ch) => Some((ch, below)),
                Err(st) => {
                    self.deferred.complete(io, st);
                    return;
                }
            },
            _ => None,
        };
        if pieces.is_empty() && below.is_none() {
            self.io_counts.count(self.core);
            self.deferred.complete(io, IoStatus::Success);
        } else {
            self.issue_with(io, &pieces, below, SmallVec::new());
        }
    }
    pub(super) fn write(&self, io: BdevIo) {
        let geo = self.shared.geo;
        let bs = geo.block_size as u64;
        let mut pieces: SmallVec<[Piece; 4]> = SmallVec::new();
        let mut fills: SmallVec<[Held; 1]> = SmallVec::new();
        let mut fault = None;
        {
            let view = self.view.borrow();
            let view = view.as_ref().expect("checked by submit");
            let recent = self.recent.borrow();
            let mut at = io.offset_blocks;
            let end = at + io.num_blocks;
            let mut byte = 0usize;
            while at < end {
                let (vseg, b0) = geo.split_block(at);
                let n = (end - at).min(geo.segment_blocks - b0);
                match self.override_at(vseg) {
                    Some(RangeState::Invalid) => {
                        self.held.borrow_mut().push_back(io);
                        return;
                    }
                    Some(RangeState::NoWrite) => {
                        fault = Some(FaultKey::Write(vseg));
                        break;
                    }
                    None => {}
                }
                if !self.maybe_mapped.may_hold(vseg) {
                    fault = Some(FaultKey::Write(vseg));
                    break;
                }
                let Some(e) = recent.lookup(view.root.as_ref(), vseg) else {
                    fault = Some(FaultKey::Write(vseg));
                    break;
                };
                if e.state == ExtentState::Error {
                    self.deferred.complete(io, IoStatus::MediaError);
                    return;
                }
                if e.birth.get() <= view.snap_gen {
                    fault = Some(FaultKey::Write(vseg));
                    break;
                }
                let top = &e.layers[0];
                let seg: PhysSeg = if top.is_partial() {
                    top.seg()
                } else {
                    top.seg() + (vseg - e.vseg)
                };
                if top.is_partial() {
                    let f = self.shared.fills.get(top.seg());
                    let (g0, gn) = geo.granule_span(b0, n);
                    let g1 = g0 + gn;
                    if !f.all_set(g0, gn) {
                        // Partial granules at the edges must be held before a part of
                        // them is written.
                        let head = !geo.granule_aligned(b0) && !f.test(g0);
                        let tail = !geo.granule_aligned(b0 + n) && !f.test(g1 - 1);
                        if head || tail {
                            let first = if head { g0 } else { g1 - 1 };
                            let last = if tail { g1 - 1 } else { g0 };
                            fault = Some(FaultKey::Materialize(vseg, first, last));
                            break;
                        }
                        // Only the granules this write covers whole become held when
                        // it completes. The partial ones at the edges were held above;
                        // setting their bits again would bring back the rest of a
                        // granule that an unmap cleared while the write was in flight.
                        let (w0, wn) = geo.whole_granules(b0, n);
                        if wn > 0 {
                            fills.push(Held {
                                seg: top.seg(),
                                vseg,
                                first: w0 as u16,
                                count: wn as u16,
                            });
                        }
                    }
                }
                push_piece(
                    &mut pieces,
                    seg * geo.segment_blocks + b0,
                    n,
                    byte,
                    &self.shared,
                );
                at += n;
                byte += (n * bs) as usize;
            }
        }
        match fault {
            Some(key) => self.park(io, key),
            None => self.issue(io, &pieces, fills),
        }
    }

    /// Issues the pieces of `io` to the base bdevs.
    fn issue(&self, io: BdevIo, pieces: &[Piece], fills: SmallVec<[Held; 1]>) {
        self.issue_with(io, pieces, None, fills)
    }

    /// Issues the pieces of `io` to the base bdevs, and the `below` pieces (reads of
    /// what no layer holds) to an external snapshot's channel.
    fn issue_with(
        &self,
        io: BdevIo,
        pieces: &[Piece],
        below: Option<(Channel, SmallVec<[Piece; 2]>)>,
        fills: SmallVec<[Held; 1]>,
    ) {
        let geo = self.shared.geo;
        let bs = geo.block_size as u64;
        let kind = io.kind;
        let epoch = self.epochs.start();
        let (key, children, outside) = {
            let mut ctxs = self.ctxs.borrow_mut();
            let entry = ctxs.vacant_entry();
            let key = entry.key();
            let ctx = entry.insert(IoCtx {
                parent: io,
                pending: (pieces.len() + below.as_ref().map_or(0, |(_, b)| b.len())) as u32,
                status: IoStatus::Success,
                epoch,
                fills,
            });
            let mut children: SmallVec<[(usize, BdevIo); 4]> = SmallVec::new();
            for p in pieces {
                let seg = p.phys / geo.segment_blocks;
                let (ci, off) = self.shared.locate(seg);
                let cbs = self.base[ci].bdev().block_size() as u64;
                let byte = off + (p.phys % geo.segment_blocks) * bs;
                let len = p.blocks * bs;
                let iovs = ctx.parent.sub_iovs(p.byte_off, len as usize);
                // SAFETY: the iovecs point into the parent request, which stays in
                // `ctxs` untouched until every child has completed.
                let child = unsafe { BdevIo::from_raw_iovs(kind, byte / cbs, len / cbs, &iovs) };
                children.push((ci, child));
            }
            let mut outside: SmallVec<[BdevIo; 2]> = SmallVec::new();
            if let Some((ch, below)) = &below {
                let xbs = ch.bdev().block_size() as u64;
                for p in below {
                    let len = p.blocks * bs;
                    let iovs = ctx.parent.sub_iovs(p.byte_off, len as usize);
                    // SAFETY: as above, the iovecs point into the parent request, which
                    // stays in `ctxs` until every child has completed.
                    let child =
                        unsafe { BdevIo::from_raw_iovs(kind, p.phys * bs / xbs, len / xbs, &iovs) };
                    outside.push(child);
                }
            }
            (key, children, outside)
        };
        let sink: Rc<dyn IoSink> = self.rc();
        for (ci, child) in children {
            self.base[ci].submit_unchecked(child.on_complete(sink.clone(), key as u64));
        }
        if let Some((ch, _)) = below {
            // Checked: the external bdev is another's, and may have shrunk.
            for child in outside {
                ch.submit(child.on_complete(sink.clone(), key as u64));
            }
        }
    }
}

impl Agent {
    /// Marks granules written through to the top layer as held by it; the fill is
    /// queued for the next metadata commit the first time it changes since the last —
    /// which costs metadata pages (its leaf is rewritten). Without them the granules
    /// stay as they were (what the write put there is never shown) and the write fails
    /// for lack of space.
    fn hold_granules(&self, h: Held) -> IoStatus {
        let (g0, n) = (h.first as u64, h.count as u64);
        let dirty = DirtyFill {
            seg: h.seg,
            disk: self.disk,
            vseg: h.vseg,
        };
        if self.shared.fills.get(h.seg).all_set(g0, n)
            || self.shared.change_fill(dirty, |f| f.set_range(g0, n))
        {
            IoStatus::Success
        } else {
            IoStatus::CapacityExceeded
        }
    }

    /// Completes a request of this disk whose base I/O is done.
    #[inline]
    fn finish(&self, io: BdevIo, status: IoStatus, epoch: u64) {
        self.epochs.finish(epoch);
        self.io_counts.count(self.core);
        if io.flags.fua && status.is_success() {
            let me = self.rc();
            reactor::spawn_local(async move {
                let st = me.commit().await;
                io.complete(st);
            })
            .detach();
        } else {
            io.complete(status);
        }
    }
}

fn push_piece(
    pieces: &mut SmallVec<[Piece; 4]>,
    phys: u64,
    blocks: u64,
    byte_off: usize,
    shared: &PoolShared,
) {
    if let Some(last) = pieces.last_mut()
        && last.phys + last.blocks == phys
        && last.byte_off + (last.blocks * shared.geo.block_size as u64) as usize == byte_off
    {
        // Contiguous on the medium and in memory; stay within one container.
        let seg_a = last.phys / shared.geo.segment_blocks;
        let seg_b = (phys + blocks - 1) / shared.geo.segment_blocks;
        if shared.locate(seg_a).0 == shared.locate(seg_b).0 {
            last.blocks += blocks;
            return;
        }
    }
    pieces.push(Piece {
        phys,
        blocks,
        byte_off,
    });
}

impl IoSink for Agent {
    #[inline]
    fn io_done(&self, mut child: BdevIo, status: IoStatus) {
        if child.tag & PASSED != 0 {
            let p = self
                .passed
                .borrow_mut()
                .remove((child.tag & !PASSED) as usize);
            child.restore(p.origin);
            let mut status = status;
            if status.is_success()
                && let Some(h) = p.fill
            {
                status = self.hold_granules(h);
            }
            self.finish(child, status, p.epoch);
            return;
        }
        let key = child.tag as usize;
        drop(child);
        let done = {
            let mut ctxs = self.ctxs.borrow_mut();
            let c = &mut ctxs[key];
            c.status = c.status.worst(status);
            c.pending -= 1;
            c.pending == 0
        };
        if !done {
            return;
        }
        let ctx = self.ctxs.borrow_mut().remove(key);
        let mut status = ctx.status;
        if status.is_success() {
            for &h in &ctx.fills {
                status = status.worst(self.hold_granules(h));
            }
        }
        self.finish(ctx.parent, status, ctx.epoch);
    }
}
