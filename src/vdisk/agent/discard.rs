//! Unmap and write-zeroes in the agent: whole segments go back to the zero state (the
//! controller punches them); parts of segments are cleared or zeroed in place, or
//! written with zeros through the normal write path where they are shared. With
//! force-unit-access the request commits before it completes, as a FUA write does.

use super::Agent;
use crate::bdev::{BdevIo, Channel, Epochs, IoBuf, IoKind, IoStatus};
use crate::vdisk::map::{DirtyFill, ExtentState};
use crate::vdisk::msg::AgentRequest;
use smallvec::SmallVec;
use std::rc::Rc;

impl Agent {
    /// Unmap and write-zeroes: whole segments return to the zero state (the controller
    /// frees them); parts of segments are cleared in place where this disk alone holds
    /// them, and written with zeros (copy-on-write as needed) where they are shared.
    pub(super) async fn discard(self: Rc<Self>, io: BdevIo) {
        let geo = self.shared.geo;
        let bs = geo.block_size as u64;
        let gb = geo.granule_blocks;
        let disk = self.disk;
        let mut status = IoStatus::Success;
        let end = io.offset_blocks + io.num_blocks;
        let mut at = io.offset_blocks;
        let mut punch: Option<(u64, u64)> = None;
        let own = match Channel::get(&self.bdev) {
            Ok(c) => c,
            Err(_) => {
                io.complete(IoStatus::InternalError);
                return;
            }
        };
        if !self.zeros_below() {
            // An external snapshot shows through what no layer holds, so the zero state
            // would show its blocks again: zeros are written instead, through the write
            // path (copy-on-write as for any write), a segment at a time.
            while at < end && status.is_success() {
                let n = (end - at).min(geo.segment_blocks - at % geo.segment_blocks);
                let (_, st) = own
                    .io(BdevIo::write(at, n, IoBuf::zeroed((n * bs) as usize)))
                    .await;
                status = st;
                at += n;
            }
            drop(own);
            if status.is_success() && io.flags.fua {
                status = self.commit().await;
            }
            io.complete(status);
            return;
        }
        while at < end && status.is_success() {
            let vseg = at / geo.segment_blocks;
            let b0 = at % geo.segment_blocks;
            let n = (end - at).min(geo.segment_blocks - b0);
            at += n;
            if b0 == 0 && n == geo.segment_blocks {
                punch = Some(match punch {
                    Some((f, t)) if t == vseg => (f, vseg + 1),
                    Some((f, t)) => {
                        status = self
                            .ask(AgentRequest::Punch {
                                disk,
                                from: f,
                                to: t,
                            })
                            .await;
                        (vseg, vseg + 1)
                    }
                    None => (vseg, vseg + 1),
                });
                continue;
            }
            // Part of a segment.
            let (ext, snap_gen) = {
                let v = self.view.borrow();
                match v.as_ref() {
                    Some(v) => (
                        (self.recent.borrow())
                            .lookup(v.root.as_ref(), vseg)
                            .map(|e| e.at(vseg)),
                        v.snap_gen,
                    ),
                    None => (None, 0),
                }
            };
            let Some(e) = ext else { continue };
            if e.state == ExtentState::Error {
                if io.kind == IoKind::WriteZeroes {
                    status = IoStatus::MediaError;
                }
                continue;
            }
            let writable = e.birth.get() > snap_gen && self.override_at(vseg).is_none();
            if writable && e.layers.len() == 1 {
                let top = &e.layers[0];
                // Whole granules: clear their bits; edges: zero in place.
                let (g0, gn) = if top.is_partial() {
                    geo.whole_granules(b0, n)
                } else {
                    (0, 0)
                };
                let fill = top.is_partial().then(|| self.shared.fills.get(top.seg()));
                let clear = gn > 0;
                let (zero_from, zero_to) = (g0 * gb, (g0 + gn) * gb);
                let mut spans: SmallVec<[(u64, u64); 2]> = SmallVec::new();
                if clear {
                    if b0 < zero_from {
                        spans.push((b0, zero_from - b0));
                    }
                    if zero_to < b0 + n {
                        spans.push((zero_to, b0 + n - zero_to));
                    }
                } else {
                    spans.push((b0, n));
                }
                // Counted in the epoch only while base I/O is in flight: never hold an
                // epoch open across a request to the controller, which may be draining us.
                let guard = EpochGuard::new(&self.epochs);
                for (sb, sn) in spans {
                    let held =
                        fill.is_none_or(|f| (sb / gb..(sb + sn).div_ceil(gb)).any(|g| f.test(g)));
                    if !held {
                        continue;
                    }
                    let phys = top.seg() * geo.segment_blocks + sb;
                    let (ci, off) = self.shared.locate(phys / geo.segment_blocks);
                    let cbs = self.base[ci].bdev().block_size() as u64;
                    let byte = off + (phys % geo.segment_blocks) * bs;
                    let r = self.base[ci].write_zeroes(byte / cbs, sn * bs / cbs).await;
                    if let Err(e) = r {
                        status = e;
                    }
                }
                drop(guard);
                if clear
                    && let Some(f) = fill
                    && (g0..g0 + gn).any(|g| f.test(g))
                {
                    let dirty = DirtyFill {
                        seg: top.seg(),
                        disk,
                        vseg,
                    };
                    if self.shared.change_fill(dirty, |f| f.clear_range(g0, gn)) {
                        if f.is_empty() {
                            let st = self.ask(AgentRequest::MaybeEmpty { disk, vseg }).await;
                            status = status.worst(st);
                        }
                    } else {
                        // No metadata space to record them as empty: the granules stay
                        // held, and are zeroed in place instead.
                        let guard = EpochGuard::new(&self.epochs);
                        let phys = top.seg() * geo.segment_blocks + zero_from;
                        let (ci, off) = self.shared.locate(top.seg());
                        let cbs = self.base[ci].bdev().block_size() as u64;
                        let byte = off + (phys % geo.segment_blocks) * bs;
                        let r = self.base[ci]
                            .write_zeroes(byte / cbs, (zero_to - zero_from) * bs / cbs)
                            .await;
                        drop(guard);
                        if let Err(e) = r {
                            status = e;
                        }
                    }
                }
            } else {
                // Shared or layered: write zeros through the normal write path.
                let start = vseg * geo.segment_blocks + b0;
                let (_, st) = own
                    .io(BdevIo::write(start, n, IoBuf::zeroed((n * bs) as usize)))
                    .await;
                status = status.worst(st);
            }
        }
        // This disk's own channel served the loop only: not held across the requests
        // to the controller.
        drop(own);
        if status.is_success()
            && let Some((f, t)) = punch
        {
            status = self
                .ask(AgentRequest::Punch {
                    disk,
                    from: f,
                    to: t,
                })
                .await;
        }
        if status.is_success() && io.flags.fua {
            // Force unit access: durable before it completes, as a FUA write is — the
            // zero state (granules cleared, segments punched) committed, and the zeros
            // written in place or through the write path flushed by the same commit.
            status = self.commit().await;
        }
        io.complete(status);
    }
}

/// Counts an operation in the current epoch for as long as it lives.
struct EpochGuard<'a> {
    epochs: &'a Epochs,
    epoch: u64,
}

impl<'a> EpochGuard<'a> {
    fn new(epochs: &'a Epochs) -> Self {
        let epoch = epochs.start();
        EpochGuard { epochs, epoch }
    }
}

impl Drop for EpochGuard<'_> {
    fn drop(&mut self) {
        self.epochs.finish(self.epoch);
    }
}
