//! Copy-on-write: how the controller resolves a write fault (seeds 002, 003).
//!
//! A write the agent's view does not allow parks and faults; `Controller::make_writable`
//! gives the disk a writable top layer at the virtual segment:
//! - no segment yet (thin provisioning): a new segment whose fill holds only what is
//!   written — the rest still reads as zeros;
//! - a segment shared with a snapshot or clone, per the disk's policy:
//!   - *redirect* (default): the write gets a new top layer that holds only what it
//!     writes; the rest still falls through to the shared segment — a 4 KiB first write
//!     costs a 4 KiB write;
//!   - *copy-out*: the old segment's data is copied to a new segment, every other disk
//!     that shares it is re-pointed there (after its reads of the old segment drained),
//!     and the writer keeps the original segment, so its layout does not change;
//! - layers stacked too deep are first merged into one new segment.
//!
//! A write of part of a granule the top layer does not hold faults once more: the
//! granule is **materialised** (what it shows now is copied into the top layer).
//!
//! Snapshots and clones, which create the sharing, are in `snapshot.rs`.

use super::commit::MAX_EXTENT_BYTES;
use super::controller::Controller;
use super::map::{Extent, ExtentState, Fill, Layer, MAX_LAYERS, Source};
use super::{CowPolicy, VdiskError};
use crate::bdev::{IoBuf, IoStatus};
use std::sync::Arc;

impl Controller {
    /// Resolves a write fault: after it, the extent at `vseg` is writable by `disk` (or
    /// the returned status says why it cannot be).
    pub(crate) async fn make_writable(&self, disk: u64, vseg: u64) -> IoStatus {
        if self.check_usable().is_err() {
            return IoStatus::Aborted;
        }
        let _lock = self.locks.segment(disk, vseg).await;
        let plan = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let Some(d) = st.disks.get(&disk) else {
                return IoStatus::Aborted;
            };
            if d.rec.read_only {
                return IoStatus::WriteProtected;
            }
            if vseg * self.shared.geo.segment_blocks >= d.rec.size_blocks {
                return IoStatus::LbaOutOfRange;
            }
            let cur = d.root.as_ref().and_then(|r| r.lookup(vseg)).cloned();
            match cur {
                Some(e) if e.state == ExtentState::Error => return IoStatus::MediaError,
                Some(e) if e.birth > d.rec.snap_gen => return IoStatus::Success,
                Some(e) => {
                    let policy = CowPolicy::from_u8(d.rec.cow_policy);
                    let one = e.at(vseg);
                    if policy == CowPolicy::CopyOut && one.layers.len() == 1 {
                        Plan::CopyOut(one)
                    } else {
                        let mut layers = one.layers.clone();
                        normalize(&mut layers);
                        if layers.len() >= MAX_LAYERS {
                            Plan::Merge(one)
                        } else {
                            let Some(seg) = st.space.alloc_segment() else {
                                return IoStatus::CapacityExceeded;
                            };
                            let fill = Arc::new(Fill::new(disk, vseg));
                            layers.insert(
                                0,
                                Layer {
                                    seg,
                                    fill: Some(fill),
                                },
                            );
                            Plan::Set(Extent {
                                vseg,
                                len: 1,
                                state: ExtentState::Mapped,
                                birth: st.generation,
                                layers,
                            })
                        }
                    }
                }
                None => {
                    let Some(seg) = st.space.alloc_segment() else {
                        return IoStatus::CapacityExceeded;
                    };
                    let fill = Arc::new(Fill::new(disk, vseg));
                    Plan::Set(Extent {
                        vseg,
                        len: 1,
                        state: ExtentState::Mapped,
                        birth: st.generation,
                        layers: smallvec::smallvec![Layer {
                            seg,
                            fill: Some(fill)
                        }],
                    })
                }
            }
        };
        let ext = match plan {
            Plan::Set(e) => e,
            Plan::Merge(one) => match self.merge_layers(disk, &one).await {
                Ok(e) => e,
                Err(st) => return st,
            },
            Plan::CopyOut(one) => return self.copy_out(disk, vseg, one).await,
        };
        // The top layer is a new segment (allocated above, or by the merge).
        let top = ext.layers[0].seg;
        if let Err(e) = self.try_set_extents(disk, vseg, vseg + 1, vec![ext]) {
            self.st.borrow_mut().space.unalloc_segment(top);
            tracing::debug!(pool = %self.shared.name, disk, vseg, error = %e, "write fault refused");
            return IoStatus::CapacityExceeded;
        }
        self.update_free();
        // A new allocation must be visible on every core before the write completes.
        let _ = self.push_view(disk, false).await;
        IoStatus::Success
    }

    /// A segment whose layers are stacked too deep: copy what every layer holds into one
    /// new, writable segment.
    async fn merge_layers(&self, disk: u64, one: &Extent) -> Result<Extent, IoStatus> {
        let seg = self
            .st
            .borrow_mut()
            .space
            .alloc_segment()
            .ok_or(IoStatus::CapacityExceeded)?;
        let fill = Arc::new(Fill::new(disk, one.vseg));
        if let Err(e) = self.copy_resolved(one, seg, &fill).await {
            self.st.borrow_mut().space.unalloc_segment(seg);
            return Err(e);
        }
        let generation = self.st.borrow().generation;
        Ok(Extent {
            vseg: one.vseg,
            len: 1,
            state: ExtentState::Mapped,
            birth: generation,
            layers: smallvec::smallvec![Layer {
                seg,
                fill: Some(fill)
            }],
        })
    }

    /// Copy-out: `one` (a single-layer, shared extent at `vseg` of `disk`) — copy its data
    /// to a new segment for everyone else, keep the original for `disk`.
    pub(crate) async fn copy_out(&self, disk: u64, vseg: u64, one: Extent) -> IoStatus {
        let old = one.layers[0].clone();
        let Some(q) = self.st.borrow_mut().space.alloc_segment() else {
            return IoStatus::CapacityExceeded;
        };
        // Others that reference the old segment at this virtual segment.
        let others: Vec<u64> = {
            let st = self.st.borrow();
            st.disks
                .values()
                .filter(|d| d.rec.id != disk)
                .filter(|d| {
                    d.root
                        .as_ref()
                        .and_then(|r| r.lookup(vseg))
                        .is_some_and(|e| e.at(vseg).layers.iter().any(|l| l.seg == old.seg))
                })
                .map(|d| d.rec.id)
                .collect()
        };
        // Metadata for every table this changes: the others' and the writer's.
        let per = |d: u64| self.splice_cost(d, vseg, vseg + 1, MAX_EXTENT_BYTES);
        let need = others.iter().map(|&o| per(o)).sum::<u64>() + per(disk);
        let _meta = match self.reserve_meta(need) {
            Ok(r) => r,
            Err(_) => {
                self.st.borrow_mut().space.unalloc_segment(q);
                return IoStatus::CapacityExceeded;
            }
        };
        let mut locks = Vec::new();
        for &o in &others {
            locks.push(self.locks.segment(o, vseg).await);
        }
        // The copy, with the same fill, frozen like the original.
        let q_fill = old
            .fill
            .as_ref()
            .map(|f| Arc::new(Fill::from_words(f.words(), 0, u64::MAX)));
        let geo = self.shared.geo;
        let src = Extent {
            vseg,
            len: 1,
            state: ExtentState::Mapped,
            birth: one.birth,
            layers: smallvec::smallvec![old.clone()],
        };
        for (b, n, s) in geo.resolve_runs(Some(&src), vseg, 0, geo.segment_blocks) {
            if let Source::Seg(s) = s {
                let r = match self.read_segment(s, b, n).await {
                    Ok(data) => self.write_segment(q, b, data).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    self.st.borrow_mut().space.unalloc_segment(q);
                    return e;
                }
            }
        }
        // Re-point the others, and wait for their reads of the old segment.
        let mut drained = true;
        for &o in &others {
            let e = {
                let st = self.st.borrow();
                st.disks[&o]
                    .root
                    .as_ref()
                    .and_then(|r| r.lookup(vseg))
                    .map(|e| e.at(vseg))
            };
            if let Some(mut e) = e {
                for l in e.layers.iter_mut() {
                    if l.seg == old.seg {
                        *l = Layer {
                            seg: q,
                            fill: q_fill.clone(),
                        };
                    }
                }
                self.set_extents(o, vseg, vseg + 1, vec![e]);
                drained &= self.push_view(o, true).await.is_ok();
            }
        }
        drop(locks);
        let generation = self.st.borrow().generation;
        let own = if drained {
            // The writer keeps the original segment, writable again, with a live fill.
            Extent {
                vseg,
                len: 1,
                state: ExtentState::Mapped,
                birth: generation,
                layers: smallvec::smallvec![Layer {
                    seg: old.seg,
                    fill: old.fill.as_ref().map(|f| Arc::new(Fill::from_words(
                        f.words(),
                        disk,
                        vseg
                    ))),
                }],
            }
        } else {
            // Reads of the old segment through the others may still be in flight (a
            // stuck request): writing it in place could change what they return. This
            // once, redirect: a new top layer over the old segment, which stays as it is.
            let Some(top) = self.st.borrow_mut().space.alloc_segment() else {
                return IoStatus::CapacityExceeded;
            };
            Extent {
                vseg,
                len: 1,
                state: ExtentState::Mapped,
                birth: generation,
                layers: smallvec::smallvec![
                    Layer {
                        seg: top,
                        fill: Some(Arc::new(Fill::new(disk, vseg))),
                    },
                    old.clone(),
                ],
            }
        };
        self.set_extents(disk, vseg, vseg + 1, vec![own]);
        if others.is_empty() {
            // Nobody else used it after all: the copy is not needed.
            let unref = self.st.borrow().space.refs(q) == 0;
            if unref {
                self.st.borrow_mut().space.unalloc_segment(q);
            }
        }
        self.update_free();
        let _ = self.push_view(disk, false).await;
        IoStatus::Success
    }

    /// Makes granules `[first, last]` of `vseg` held by the disk's writable top layer,
    /// copying what they show now (lower layers or zeros) into it — so that a write of
    /// part of a granule can go straight to the top.
    pub(crate) async fn materialize(
        &self,
        disk: u64,
        vseg: u64,
        first: u64,
        last: u64,
    ) -> IoStatus {
        let st = self.make_writable(disk, vseg).await;
        if !st.is_success() {
            return st;
        }
        let _lock = self.locks.segment(disk, vseg).await;
        let e = {
            let st = self.st.borrow();
            let Some(d) = st.disks.get(&disk) else {
                return IoStatus::Aborted;
            };
            match d.root.as_ref().and_then(|r| r.lookup(vseg)) {
                Some(e) if e.birth > d.rec.snap_gen => e.at(vseg),
                // Changed under us (a snapshot): the agent retries and faults again.
                _ => return IoStatus::Success,
            }
        };
        let Some(fill) = e.layers[0].fill.clone() else {
            return IoStatus::Success;
        };
        // Writes to the segment drain and wait while we copy.
        if self.fence_writes(disk, vseg, true).await.is_err() {
            let _ = self.fence_writes(disk, vseg, false).await;
            return IoStatus::Aborted;
        }
        let geo = self.shared.geo;
        let below = Extent {
            layers: e.layers[1..].iter().cloned().collect(),
            ..e.clone()
        };
        let mut status = IoStatus::Success;
        for g in first..=last {
            if fill.test(g) {
                continue;
            }
            let b0 = g * geo.granule_blocks;
            let mut data = IoBuf::zeroed((geo.granule_blocks * geo.block_size as u64) as usize);
            for (b, n, s) in geo.resolve_runs(Some(&below), vseg, b0, geo.granule_blocks) {
                if let Source::Seg(s) = s {
                    match self.read_segment(s, b, n).await {
                        Ok(part) => {
                            let at = ((b - b0) * geo.block_size as u64) as usize;
                            data[at..at + part.len()].copy_from_slice(&part);
                        }
                        Err(e) => status = e,
                    }
                }
            }
            if status.is_success() {
                match self.write_segment(e.layers[0].seg, b0, data).await {
                    // Held once it is in the top layer: within the metadata budget.
                    Ok(()) if self.shared.change_fill(&fill, |f| f.set_range(g, 1)) => {}
                    Ok(()) => status = IoStatus::CapacityExceeded,
                    Err(e) => status = e,
                }
            }
        }
        let _ = self.fence_writes(disk, vseg, false).await;
        status
    }

    /// Sets a disk's copy-on-write policy.
    pub(crate) async fn set_cow_policy(
        &self,
        name: &str,
        policy: CowPolicy,
    ) -> Result<(), VdiskError> {
        let id = self.id_of(name)?;
        let _lock = self.locks.disk(id).await;
        let mut st = self.st.borrow_mut();
        if let Some(d) = st.disks.get_mut(&id) {
            d.rec.cow_policy = policy as u8;
        }
        st.changed();
        Ok(())
    }
}

enum Plan {
    Set(Extent),
    Merge(Extent),
    CopyOut(Extent),
}

/// Layers below a full layer are never reached: drop them.
pub(crate) fn normalize(layers: &mut smallvec::SmallVec<[Layer; 2]>) {
    if let Some(i) = layers.iter().position(|l| l.fill.is_none()) {
        layers.truncate(i + 1);
    }
}
