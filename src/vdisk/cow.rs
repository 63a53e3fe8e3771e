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
//!     that is committed, and only then does the writer get the original segment
//!     back, writable, so its layout does not change — a write in place before the
//!     commit would show in the others' committed tables after a crash;
//! - layers stacked too deep are first merged into one new segment.
//!
//! A write of part of a granule the top layer does not hold faults once more: the
//! granule is **materialised** (what it shows now is copied into the top layer).
//!
//! Snapshots and clones, which create the sharing, are in `snapshot.rs`.

use super::controller::Controller;
use super::map::{DirtyFill, Extent, ExtentState, Layer, Layers, MAX_LAYERS, Source};
use super::table;
use super::table::MAX_EXTENT_BUDGET;
use super::{CowPolicy, VdiskError};
use crate::bdev::{IoBuf, IoStatus};
use crate::reactor;
use std::borrow::Cow;
use std::cell::Cell;
use std::rc::Rc;

impl Controller {
    /// Resolves the write faults an agent sent together (`msg::WriteFaults`): after it,
    /// the extent at each of `vsegs` is writable by `disk`, or its status says why it
    /// cannot be — one status per entry of `vsegs`, in order, each segment's failure
    /// its own.
    ///
    /// The common case — a fresh segment, or a redirect-on-write layer over a shared
    /// one — is planned for every segment under the segment locks taken at once, and
    /// the extents are set in one pass down the table with one metadata reservation
    /// for all of them ([`Controller::set_extents_many`]; each is still logged as its
    /// own splice record, and the records are appended together), then sent to the
    /// agents in one message beside their view ([`Controller::publish_extents`]; a view
    /// push once in a while). A segment that needs its layers merged or a copy-out,
    /// or a batch the metadata area has no room for at once, goes the one-at-a-time way
    /// ([`Controller::make_writable`]).
    pub(crate) async fn make_writable_many(&self, disk: u64, vsegs: &[u64]) -> Vec<IoStatus> {
        self.write_fault_requests
            .set(self.write_fault_requests.get() + 1);
        let mut out: Vec<Option<IoStatus>> = vec![None; vsegs.len()];
        if self.check_usable().is_err() {
            return vec![IoStatus::Aborted; vsegs.len()];
        }
        // Entries by segment: a segment asked twice is resolved once, its status given
        // to both.
        let mut order: Vec<usize> = (0..vsegs.len()).collect();
        order.sort_unstable_by_key(|&i| vsegs[i]);
        let mut firsts: Vec<usize> = Vec::with_capacity(order.len());
        let mut dups: Vec<(usize, usize)> = Vec::new();
        for &i in &order {
            match firsts.last() {
                Some(&f) if vsegs[f] == vsegs[i] => dups.push((i, f)),
                _ => firsts.push(i),
            }
        }
        let mut slow: Vec<usize> = Vec::new();
        {
            let distinct: Vec<u64> = firsts.iter().map(|&i| vsegs[i]).collect();
            let _locks = self.locks.segments(disk, &distinct).await;
            if self.check_usable().is_err() {
                return vec![IoStatus::Aborted; vsegs.len()];
            }
            // The leaves the plans look at, asked for together (see `Node::prefetch_leaf`).
            if let Some(root) = self
                .st
                .borrow()
                .disks
                .get(&disk)
                .and_then(|d| d.root.as_ref())
            {
                for &v in &distinct {
                    root.prefetch_leaf(v);
                }
            }
            // In segment order: the edits are sorted and disjoint.
            let mut set: Vec<(usize, Extent)> = Vec::with_capacity(firsts.len());
            for &i in &firsts {
                match self.plan_write_fault(disk, vsegs[i]) {
                    Plan::Done(st) => out[i] = Some(st),
                    Plan::Set(e) => set.push((i, e)),
                    Plan::Merge(_) | Plan::CopyOut => slow.push(i),
                }
            }
            if !set.is_empty() {
                let cost = set
                    .iter()
                    .map(|(_, e)| {
                        self.splice_cost(disk, e.vseg, e.vseg + 1, table::extent_budget(e))
                    })
                    .sum();
                // No snapshot of the disk comes between the plans and this (the segment
                // locks are held, and nothing here waits): the extents are set as
                // planned.
                let together = match self.reserve_meta(cost) {
                    Ok(_meta) => {
                        let edits: Vec<table::Edit<'_>> = set
                            .iter()
                            .map(|(_, e)| table::Edit {
                                from: e.vseg,
                                to: e.vseg + 1,
                                extents: Cow::Borrowed(std::slice::from_ref(e)),
                            })
                            .collect();
                        self.set_extents_many(disk, &edits);
                        true
                    }
                    Err(_) => false,
                };
                // Set together, with nothing awaited since: the extents the agents need
                // are these (see `Controller::publish_extents`).
                let sent: Vec<Extent> = if together {
                    set.iter().map(|(_, e)| e.clone()).collect()
                } else {
                    Vec::new()
                };
                for (i, e) in set {
                    out[i] = Some(if together {
                        IoStatus::Success
                    } else {
                        self.set_fault_alone(disk, e).await
                    });
                }
                self.update_free();
                // A new allocation must be visible on every core before the writes
                // complete.
                let _ = if together {
                    self.publish_extents(disk, sent).await
                } else {
                    self.publish_edits(disk, false).await
                };
            }
        }
        for i in slow {
            out[i] = Some(self.make_writable(disk, vsegs[i]).await);
        }
        for (i, f) in dups {
            out[i] = out[f];
        }
        out.into_iter()
            .map(|st| st.unwrap_or(IoStatus::Aborted))
            .collect()
    }

    /// Resolves a write fault: after it, the extent at `vseg` is writable by `disk` (or
    /// the returned status says why it cannot be).
    pub(crate) async fn make_writable(&self, disk: u64, vseg: u64) -> IoStatus {
        loop {
            if let Some(st) = self.try_make_writable(disk, vseg).await {
                return st;
            }
        }
    }

    /// What a write fault at `vseg` of `disk` needs, looked at under its segment's lock
    /// (which the caller holds). A [`Plan::Set`] holds a segment allocated for it (and
    /// its fill made fresh): the caller sets the extent or gives the segment back.
    fn plan_write_fault(&self, disk: u64, vseg: u64) -> Plan {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let Some(d) = st.disks.get(&disk) else {
            return Plan::Done(IoStatus::Aborted);
        };
        if d.rec.read_only {
            return Plan::Done(IoStatus::WriteProtected);
        }
        if vseg * self.shared.geo.segment_blocks >= d.rec.size_blocks {
            return Plan::Done(IoStatus::LbaOutOfRange);
        }
        let cur = d.root.as_ref().and_then(|r| r.lookup(vseg)).cloned();
        // The layers the new writable one goes on top of.
        let below = match cur {
            Some(e) if e.state == ExtentState::Error => return Plan::Done(IoStatus::MediaError),
            Some(e) if e.birth.get() > d.rec.snap_gen => return Plan::Done(IoStatus::Success),
            Some(e) => {
                let policy = CowPolicy::from_u8(d.rec.cow_policy);
                let one = e.at(vseg);
                if policy == CowPolicy::CopyOut && one.layers.len() == 1 {
                    return Plan::CopyOut;
                }
                let mut layers = one.layers.clone();
                normalize(&mut layers);
                if layers.len() >= MAX_LAYERS {
                    return Plan::Merge(one);
                }
                layers
            }
            None => Layers::new(),
        };
        let Some(seg) = st.space.alloc_segment() else {
            return Plan::Done(IoStatus::CapacityExceeded);
        };
        self.shared.fills.fresh(seg);
        self.shared.fills.allocated_for_fault(seg);
        let mut layers = below;
        layers.insert(0, Layer::partial(seg));
        Plan::Set(Extent {
            vseg,
            len: 1,
            state: ExtentState::Mapped,
            birth: st.generation.into(),
            layers,
        })
    }

    /// One attempt of [`Controller::make_writable`]; `None` if the extent changed while
    /// no lock was held (a copy-out lets go of the segment's lock to take it again in
    /// order with the others'): plan again.
    async fn try_make_writable(&self, disk: u64, vseg: u64) -> Option<IoStatus> {
        if self.check_usable().is_err() {
            return Some(IoStatus::Aborted);
        }
        let lock = self.locks.segment(disk, vseg).await;
        let ext = match self.plan_write_fault(disk, vseg) {
            Plan::Done(st) => return Some(st),
            Plan::Set(e) => e,
            Plan::Merge(one) => match self.merge_layers(&one).await {
                Ok(e) => e,
                Err(st) => return Some(st),
            },
            Plan::CopyOut => {
                // Copy-out locks every disk that shares the segment, in one order.
                drop(lock);
                return self.copy_out(disk, vseg).await;
            }
        };
        if !self.set_fault_extent(disk, ext.clone()).await {
            let st = self.set_fault_alone(disk, ext).await;
            if !st.is_success() {
                return Some(st);
            }
        }
        self.update_free();
        // A new allocation must be visible on every core before the write completes.
        let _ = self.publish_edits(disk, true).await;
        Some(IoStatus::Success)
    }

    /// Sets the extent `ext` of a resolved write fault (its top layer a segment
    /// allocated for it) on its own, after a batch it was in did not fit. Pages the
    /// changes waiting for a commit hold come back with it (and the fills' with the one
    /// after): a write is refused for metadata space only once two commits did not make
    /// room; then the segment is given back.
    async fn set_fault_alone(&self, disk: u64, ext: Extent) -> IoStatus {
        let (vseg, top) = (ext.vseg, ext.layers[0].seg());
        let mut commits = 0;
        while let Err(e) = self.try_set_extents(disk, vseg, vseg + 1, vec![ext.clone()]) {
            if commits < 2 && matches!(e, VdiskError::NoMetadataSpace { .. }) {
                commits += 1;
                self.commits_for_room.set(self.commits_for_room.get() + 1);
                if self.commit().await.is_ok() {
                    continue;
                }
            }
            self.st.borrow_mut().space.unalloc_segment(top);
            tracing::debug!(pool = %self.shared.name, disk, vseg, error = %e, "write fault refused");
            return IoStatus::CapacityExceeded;
        }
        IoStatus::Success
    }

    /// Sets the extent of a resolved write fault (one segment, writable by `disk`)
    /// together with every other fault of the disk resolved in the same turn: one pass
    /// down the table for all of them ([`Controller::set_extents_many`]), where a fault
    /// at a time copied the path from the root for each (every internal node copied
    /// touches each of its children). False if the metadata area has no room for the
    /// whole batch: nothing of this fault was set.
    ///
    /// Whoever of the batch runs first after the turn sets them all, so no fault waits
    /// for another that may never run again.
    async fn set_fault_extent(&self, disk: u64, ext: Extent) -> bool {
        let done = Rc::new(Cell::new(None));
        match self.st.borrow_mut().disks.get_mut(&disk) {
            Some(d) => d.pending_faults.push(PendingFault {
                ext,
                done: done.clone(),
            }),
            None => return false,
        }
        reactor::yield_now().await;
        if done.get().is_none() {
            self.set_pending_faults(disk);
        }
        done.get().unwrap_or(false)
    }

    /// Sets every fault extent of `disk` waiting in its batch (see
    /// [`Controller::set_fault_extent`]), if the metadata area has room for them all.
    fn set_pending_faults(&self, disk: u64) {
        let mut batch = match self.st.borrow_mut().disks.get_mut(&disk) {
            Some(d) => std::mem::take(&mut d.pending_faults),
            None => return,
        };
        // Each holds its segment's lock: the segments are distinct.
        batch.sort_unstable_by_key(|p| p.ext.vseg);
        let cost = batch
            .iter()
            .map(|p| {
                let v = p.ext.vseg;
                self.splice_cost(disk, v, v + 1, table::extent_budget(&p.ext))
            })
            .sum();
        let set = match self.reserve_meta(cost) {
            Ok(_meta) => {
                // No snapshot of the disk came between (each fault holds its segment's
                // lock): the extents are set as planned.
                let edits: Vec<table::Edit<'_>> = batch
                    .iter()
                    .map(|p| table::Edit {
                        from: p.ext.vseg,
                        to: p.ext.vseg + 1,
                        extents: Cow::Borrowed(std::slice::from_ref(&p.ext)),
                    })
                    .collect();
                self.set_extents_many(disk, &edits);
                true
            }
            Err(_) => false,
        };
        for p in batch {
            p.done.set(Some(set));
        }
    }

    /// A segment whose layers are stacked too deep: the layers below the top one are
    /// copied into one new segment (what they show, granule by granule), and a new,
    /// empty, writable layer goes on top: `[new, top, merged]`.
    ///
    /// The top layer stays as it is because the disk's latest snapshot holds it too: the
    /// changed blocks between that snapshot and the disk (or its next snapshot) are the
    /// granules of the layers above a layer both hold (`diff.rs`), exact at the granule.
    /// Merging every layer, the top one included, into the writable layer made that
    /// diff report every granule any merged layer held.
    async fn merge_layers(&self, one: &Extent) -> Result<Extent, IoStatus> {
        let mut layers = one.layers.clone();
        normalize(&mut layers);
        let (merged, top) = {
            let mut st = self.st.borrow_mut();
            let merged = st.space.alloc_segment().ok_or(IoStatus::CapacityExceeded)?;
            let Some(top) = st.space.alloc_segment() else {
                st.space.unalloc_segment(merged);
                return Err(IoStatus::CapacityExceeded);
            };
            (merged, top)
        };
        let below = Extent {
            layers: layers[1..].iter().copied().collect(),
            ..one.clone()
        };
        self.shared.fills.fresh(merged);
        if let Err(e) = self.copy_resolved(&below, merged).await {
            let mut st = self.st.borrow_mut();
            st.space.unalloc_segment(merged);
            st.space.unalloc_segment(top);
            return Err(e);
        }
        self.shared.fills.fresh(top);
        let generation = self.st.borrow().generation;
        Ok(Extent {
            vseg: one.vseg,
            len: 1,
            state: ExtentState::Mapped,
            birth: generation.into(),
            layers: Layers::from_slice(&[Layer::partial(top), layers[0], Layer::partial(merged)]),
        })
    }

    /// Copy-out of the single-layer, shared extent at `vseg` of `disk`: its data is
    /// copied to a new segment for every other disk that shares it, and `disk` keeps the
    /// original, so its layout does not change.
    ///
    /// **Locks.** The segment locks of `disk` and of every disk sharing the segment,
    /// taken in disk-id order: two disks that share it and fault at once would otherwise
    /// each hold its own and wait for the other's. The caller holds none; everything is
    /// looked at again once they are held, and `None` means the extent changed
    /// meanwhile (plan again).
    ///
    /// **Order of effects.** The others are re-pointed at the copy, and their reads of
    /// the original drained (blocking flag); then the copy and the new tables are made
    /// durable (a commit, which flushes the data before it writes the metadata); only
    /// then may the writer write in place. Until that commit the committed tables still
    /// point the others at the original: a write landing there first would show in them
    /// after a crash.
    async fn copy_out(&self, disk: u64, vseg: u64) -> Option<IoStatus> {
        let mut want = vec![disk];
        let (_locks, old, others) = loop {
            want.sort_unstable();
            want.dedup();
            let mut locks = Vec::with_capacity(want.len());
            for &d in &want {
                locks.push(self.locks.segment(d, vseg).await);
            }
            let st = self.st.borrow();
            let Some(d) = st.disks.get(&disk) else {
                return Some(IoStatus::Aborted);
            };
            let one = match d.root.as_ref().and_then(|r| r.lookup(vseg)) {
                Some(e)
                    if !d.rec.read_only
                        && e.state == ExtentState::Mapped
                        && e.birth.get() <= d.rec.snap_gen
                        && CowPolicy::from_u8(d.rec.cow_policy) == CowPolicy::CopyOut =>
                {
                    e.at(vseg)
                }
                _ => return None,
            };
            if one.layers.len() != 1 {
                return None;
            }
            let old = one.layers[0];
            // Others that reference the old segment at this virtual segment.
            let others: Vec<u64> = st
                .disks
                .values()
                .filter(|o| o.rec.id != disk)
                .filter(|o| {
                    o.root
                        .as_ref()
                        .and_then(|r| r.lookup(vseg))
                        .is_some_and(|e| e.at(vseg).layers.iter().any(|l| l.seg() == old.seg()))
                })
                .map(|o| o.rec.id)
                .collect();
            if others.iter().all(|o| want.contains(o)) {
                break (locks, old, others);
            }
            // One more sharer (a clone made meanwhile): take its lock too, in order.
            want.extend(others);
        };
        // Metadata for every table this changes: the others' and the writer's.
        let per = |d: u64| self.splice_cost(d, vseg, vseg + 1, MAX_EXTENT_BUDGET);
        let need = others.iter().map(|&o| per(o)).sum::<u64>() + per(disk);
        let Ok(_meta) = self.reserve_meta(need) else {
            return Some(IoStatus::CapacityExceeded);
        };
        let drained = if others.is_empty() {
            true
        } else {
            match self.copy_out_others(vseg, &old, &others).await {
                Ok(drained) => drained,
                Err(e) => return Some(e),
            }
        };
        // The others' new tables (and anything else not committed yet, such as the
        // delete of a disk that shared the segment) durable before the write in place.
        if self.undurable_changes()
            && let Err(e) = self.make_durable().await
        {
            return Some(e);
        }
        let generation = self.st.borrow().generation;
        let own = if drained {
            // The writer keeps the original segment, writable again, with a live fill.
            // Its fill was persisted before it was shared, and frozen since: a change
            // still marked would be queued under the disk it was shared from, so queue it
            // here too (the entry that no longer matches a table is dropped).
            if old.is_partial() && self.shared.fills.is_dirty(old.seg()) {
                let seg = old.seg();
                (self.shared.dirty_fills).push(DirtyFill { seg, disk, vseg });
            }
            Extent {
                vseg,
                len: 1,
                state: ExtentState::Mapped,
                birth: generation.into(),
                layers: Layers::from_slice(&[old]),
            }
        } else {
            // Reads of the old segment through the others may still be in flight (a
            // stuck request): writing it in place could change what they return. This
            // once, redirect: a new top layer over the old segment, which stays as it is.
            let Some(top) = self.st.borrow_mut().space.alloc_segment() else {
                return Some(IoStatus::CapacityExceeded);
            };
            Extent {
                vseg,
                len: 1,
                state: ExtentState::Mapped,
                birth: generation.into(),
                layers: Layers::from_slice(&[
                    {
                        self.shared.fills.fresh(top);
                        Layer::partial(top)
                    },
                    old,
                ]),
            }
        };
        self.set_extents(disk, vseg, vseg + 1, vec![own]);
        self.update_free();
        let _ = self.push_view(disk, false).await;
        Some(IoStatus::Success)
    }

    /// The copy of copy-out: copies layer `old` at `vseg` to a new segment and re-points
    /// `others` (whose segment locks the caller holds) at it, each once its reads of the
    /// old segment drained. Returns whether they all drained within the time limit.
    async fn copy_out_others(
        &self,
        vseg: u64,
        old: &Layer,
        others: &[u64],
    ) -> Result<bool, IoStatus> {
        let q = self
            .st
            .borrow_mut()
            .space
            .alloc_segment()
            .ok_or(IoStatus::CapacityExceeded)?;
        // The copy, with the same fill, frozen like the original.
        let fills = &self.shared.fills;
        if old.is_partial() {
            fills.copied(q, fills.get(old.seg()).words());
        }
        let geo = self.shared.geo;
        let src = Extent {
            vseg,
            len: 1,
            state: ExtentState::Mapped,
            birth: 0.into(),
            layers: Layers::from_slice(&[*old]),
        };
        for (b, n, s) in geo.resolve_runs(fills, Some(&src), vseg, 0, geo.segment_blocks) {
            if let Source::Seg(s) = s {
                let r = match self.read_segment(s, b, n).await {
                    Ok(data) => self.write_segment(q, b, data).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    self.st.borrow_mut().space.unalloc_segment(q);
                    return Err(e);
                }
            }
        }
        let mut repointed = false;
        let mut drained = true;
        for &o in others {
            // Locked, so not deleted since; but nothing is assumed across an await.
            let e = {
                let st = self.st.borrow();
                st.disks
                    .get(&o)
                    .and_then(|d| d.root.as_ref())
                    .and_then(|r| r.lookup(vseg))
                    .map(|e| e.at(vseg))
            };
            let Some(mut e) = e else { continue };
            for l in e.layers.iter_mut() {
                if l.seg() == old.seg() {
                    *l = Layer::new(q, old.is_partial());
                }
            }
            self.set_extents(o, vseg, vseg + 1, vec![e]);
            repointed = true;
            drained &= self.push_view(o, true).await.is_ok();
        }
        if !repointed {
            self.st.borrow_mut().space.unalloc_segment(q);
        }
        self.update_free();
        Ok(drained)
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
        let (e, below_base) = {
            let st = self.st.borrow();
            let Some(d) = st.disks.get(&disk) else {
                return IoStatus::Aborted;
            };
            match d.root.as_ref().and_then(|r| r.lookup(vseg)) {
                // What no layer holds: zeros, or an external snapshot (`esnap.rs`).
                Some(e) if e.birth.get() > d.rec.snap_gen => (e.at(vseg), self.below_of(&d.rec)),
                // Changed under us (a snapshot): the agent retries and faults again.
                _ => return IoStatus::Success,
            }
        };
        let top = e.layers[0];
        if !top.is_partial() {
            return IoStatus::Success;
        }
        let fill = self.shared.fills.get(top.seg());
        // Writes to the segment drain and wait while we copy.
        if self.fence_writes(disk, vseg, true).await.is_err() {
            let _ = self.fence_writes(disk, vseg, false).await;
            return IoStatus::Aborted;
        }
        let geo = self.shared.geo;
        let below = Extent {
            layers: e.layers[1..].iter().copied().collect(),
            ..e.clone()
        };
        let mut status = IoStatus::Success;
        for g in first..=last {
            if fill.test(g) {
                continue;
            }
            let b0 = g * geo.granule_blocks;
            let mut data = IoBuf::zeroed((geo.granule_blocks * geo.block_size as u64) as usize);
            for (b, n, s) in geo.resolve_runs(
                &self.shared.fills,
                Some(&below),
                vseg,
                b0,
                geo.granule_blocks,
            ) {
                let part = match s {
                    Source::Seg(s) => self.read_segment(s, b, n).await,
                    Source::Zero if !matches!(below_base, super::msg::Below::Zeros) => {
                        let block = vseg * geo.segment_blocks + b;
                        self.read_below(&below_base, block, n).await
                    }
                    _ => continue,
                };
                match part {
                    Ok(part) => {
                        let at = ((b - b0) * geo.block_size as u64) as usize;
                        data[at..at + part.len()].copy_from_slice(&part);
                    }
                    Err(e) => status = e,
                }
            }
            if status.is_success() {
                let seg = top.seg();
                let held = DirtyFill { seg, disk, vseg };
                match self.write_segment(e.layers[0].seg(), b0, data).await {
                    // Held once it is in the top layer: within the metadata budget.
                    Ok(()) if self.shared.change_fill(held, |f| f.set_range(g, 1)) => {}
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

/// A resolved write fault's extent waiting to be set with the others of its turn
/// ([`Controller::set_fault_extent`]).
pub(crate) struct PendingFault {
    ext: Extent,
    /// Set once the batch was handled: whether the extent was set.
    done: Rc<Cell<Option<bool>>>,
}

/// What a write fault needs ([`Controller::plan_write_fault`]).
enum Plan {
    /// Nothing more: answer with this status.
    Done(IoStatus),
    /// Set this extent (its top layer allocated for it).
    Set(Extent),
    Merge(Extent),
    CopyOut,
}

/// Layers below a full layer are never reached: drop them.
pub(crate) fn normalize(layers: &mut Layers) {
    if let Some(i) = layers.iter().position(|l| !l.is_partial()) {
        layers.truncate(i + 1);
    }
}
