//! Split (SPDK: inflate) and decouple: background jobs that give a disk its own copy of
//! what it shares with its parent (seed 004), without stopping its I/O.
//!
//! The job walks the disk's table by virtual segment. For each segment still sharing
//! data: if the disk already has its own writable top layer there, the holes of that
//! layer are filled from the layers below (writes to the segment drain and wait during
//! the copy: blocking no-write state); otherwise the shared data is copied to a new
//! segment, which becomes the disk's own. *Split* copies everything shared; *decouple*
//! only what is not also the grandparent's, and then points the disk at the
//! grandparent. The job's cursor is part of the disk's durable record, so a restart
//! resumes where it stopped; it runs at full speed while the disk is idle and slows
//! down while the disk serves I/O; it can be cancelled.

use super::VdiskError;
use super::controller::Controller;
use super::map::{Extent, ExtentState, Layer, PhysSeg, Source};
use super::meta::directory::{DiskKind, JobRecord};
use crate::bdev::IoStatus;
use crate::reactor;
use std::cell::Cell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

/// Segments handled per step while the disk is idle (copied concurrently, published
/// with one view push).
const JOB_BATCH: usize = 16;
/// Segments per step while the disk serves I/O.
const BUSY_BATCH: usize = 2;
/// Foreground I/O rate (requests per second) above which a job slows down.
const BUSY_IOPS: f64 = 200.0;
/// Pause after each step while the disk is busy: with ~0.3 ms of copying per segment,
/// the job takes about a fifth of its core.
const BUSY_PAUSE: Duration = Duration::from_millis(3);
/// The longest a job sleeps within its bandwidth cap before it looks at its cancel flag
/// and the pool's closing again.
const JOB_PACE_SLICE: Duration = Duration::from_millis(50);

impl Controller {
    /// Starts splitting (or decoupling) `name` from its parent.
    pub(crate) async fn start_job(&self, name: &str, decouple: bool) -> Result<(), VdiskError> {
        let id = self.id_of(name)?;
        let _lock = self.locks.disk(id).await;
        {
            let mut st = self.st.borrow_mut();
            if let Some(f) = &st.failed {
                return Err(VdiskError::PoolFailed(f.clone()));
            }
            let d = st
                .disks
                .get(&id)
                .ok_or_else(|| VdiskError::NotFound(name.into()))?;
            if d.rec.parent == 0 && (decouple || d.rec.external.is_none()) {
                return Err(VdiskError::InvalidParam {
                    field: "lvol_name",
                    reason: format!(
                        "`{name}` has no parent to {} from",
                        if decouple { "decouple" } else { "split" }
                    ),
                });
            }
            if !decouple && let Some(x) = &d.rec.external {
                // Inflating must also copy in everything of the external snapshot, so
                // that nothing reads through to it any more: not done yet (README).
                return Err(VdiskError::InvalidParam {
                    field: "lvol_name",
                    reason: format!(
                        "`{name}` reads through to the external snapshot `{}` ({}); inflating such an lvol is not supported yet",
                        x.name, x.uuid
                    ),
                });
            }
            if d.rec.read_only {
                return Err(VdiskError::ReadOnly(name.to_string()));
            }
            if d.job_cancel.is_some() {
                return Err(VdiskError::Busy(format!("`{name}` is already being split")));
            }
            let d = st.disks.get_mut(&id).expect("checked");
            d.rec.job = if decouple {
                JobRecord::Decouple { cursor: 0 }
            } else {
                JobRecord::Split { cursor: 0 }
            };
            st.changed();
        }
        self.spawn_job(id);
        Ok(())
    }

    /// Cancels a running split/decouple of `name`.
    pub(crate) async fn cancel_job(&self, name: &str) -> Result<(), VdiskError> {
        let id = self.id_of(name)?;
        let cancel = self
            .st
            .borrow()
            .disks
            .get(&id)
            .and_then(|d| d.job_cancel.clone());
        match cancel {
            Some(c) => {
                c.set(true);
                Ok(())
            }
            None => Err(VdiskError::InvalidParam {
                field: "lvol_name",
                reason: format!("`{name}` has no running split"),
            }),
        }
    }

    /// Resumes the jobs recorded in the directory (after opening the pool).
    pub(crate) fn resume_jobs(&self) {
        let ids: Vec<u64> = self
            .st
            .borrow()
            .disks
            .values()
            .filter(|d| d.rec.job != JobRecord::None)
            .map(|d| d.rec.id)
            .collect();
        for id in ids {
            tracing::info!(pool = %self.shared.name, disk = id, "resuming split job");
            self.spawn_job(id);
        }
    }

    fn spawn_job(&self, id: u64) {
        let cancel = Rc::new(Cell::new(false));
        let progress = Rc::new(Cell::new((0, 0)));
        {
            let mut st = self.st.borrow_mut();
            let Some(d) = st.disks.get_mut(&id) else {
                return;
            };
            d.job_cancel = Some(cancel.clone());
            d.job_progress = Some(progress.clone());
        }
        let me = self.rc();
        reactor::spawn_local(async move {
            let r = me.run_job(id, &cancel, &progress).await;
            if let Some(d) = me.st.borrow_mut().disks.get_mut(&id) {
                d.job_cancel = None;
                d.job_progress = None;
            }
            if let Err(e) = r {
                tracing::error!(pool = %me.shared.name, disk = id, error = %e, "split job stopped");
            }
        })
        .detach();
    }

    /// The layers of `one` the job must make the disk's own, given the segments it may
    /// keep sharing (`keep`). Empty when nothing is to be done.
    fn job_prefix(one: &Extent, writable: bool, keep: &HashSet<PhysSeg>) -> usize {
        let prefix = one
            .layers
            .iter()
            .take_while(|l| !keep.contains(&l.seg()))
            .count();
        let done = prefix == 0 || (prefix == 1 && writable);
        if done { 0 } else { prefix }
    }

    fn job_keep(&self, disk: u64, vseg: u64) -> Option<HashSet<PhysSeg>> {
        let st = self.st.borrow();
        let d = st.disks.get(&disk)?;
        let decouple = matches!(d.rec.job, JobRecord::Decouple { .. });
        let mut keep = HashSet::new();
        if decouple {
            let parent = st.disks.get(&d.rec.parent)?;
            if let Some(g) = st.disks.get(&parent.rec.parent)
                && let Some(e) = g.root.as_ref().and_then(|r| r.lookup(vseg))
            {
                for l in &e.at(vseg).layers {
                    keep.insert(l.seg());
                }
            }
        }
        Some(keep)
    }

    /// Up to `max` virtual segments at or after `from` with work to do (in order), and —
    /// with `count` — how many there are in all.
    fn job_scan(&self, disk: u64, from: u64, max: usize, count: bool) -> (Vec<u64>, u64) {
        let (root, snap_gen) = {
            let st = self.st.borrow();
            let Some(d) = st.disks.get(&disk) else {
                return (Vec::new(), 0);
            };
            (d.root.clone(), d.rec.snap_gen)
        };
        let Some(root) = root else {
            return (Vec::new(), 0);
        };
        let mut found = Vec::new();
        let mut total = 0;
        root.visit_from(from, &mut |e| {
            for v in e.vseg.max(from)..e.end() {
                let one = e.at(v);
                let keep = self.job_keep(disk, v).unwrap_or_default();
                if Self::job_prefix(&one, one.birth.get() > snap_gen, &keep) > 0 {
                    if found.len() < max {
                        found.push(v);
                    }
                    total += 1;
                    if !count && found.len() >= max {
                        return false;
                    }
                }
            }
            true
        });
        (found, total)
    }

    async fn run_job(
        &self,
        disk: u64,
        cancel: &Cell<bool>,
        progress: &Cell<(u64, u64)>,
    ) -> Result<(), VdiskError> {
        let start_cursor = match self.st.borrow().disks.get(&disk).map(|d| d.rec.job) {
            Some(JobRecord::Split { cursor } | JobRecord::Decouple { cursor }) => cursor,
            _ => return Ok(()),
        };
        let (_, total) = self.job_scan(disk, start_cursor, 0, true);
        progress.set((0, total));
        let bdev = match self.st.borrow().disks.get(&disk) {
            Some(d) => d.bdev.clone(),
            None => return Ok(()),
        };
        let mut cursor = start_cursor;
        let mut done = 0;
        let mut last_ios = bdev.io_count();
        let mut last_t = reactor::now();
        let mut busy = false;
        loop {
            if self.crashed.get() {
                return Ok(());
            }
            if cancel.get() || self.stopping.get() || self.st.borrow().closed {
                if cancel.get() {
                    let mut st = self.st.borrow_mut();
                    if let Some(d) = st.disks.get_mut(&disk) {
                        d.rec.job = JobRecord::None;
                    }
                    st.changed();
                    tracing::info!(pool = %self.shared.name, disk, done, "split cancelled");
                }
                return Ok(());
            }
            let (batch, _) = self.job_scan(
                disk,
                cursor,
                if busy { BUSY_BATCH } else { JOB_BATCH },
                false,
            );
            let Some(&last) = batch.last() else { break };
            let st = self.job_batch(disk, &batch).await;
            if self.crashed.get() {
                return Ok(());
            }
            if !st.is_success() {
                return Err(VdiskError::Io {
                    what: format!("splitting segments {}..={last}", batch[0]),
                    status: st,
                });
            }
            cursor = last + 1;
            done += batch.len() as u64;
            progress.set((done, total.max(done)));
            {
                let mut st = self.st.borrow_mut();
                if let Some(d) = st.disks.get_mut(&disk) {
                    d.rec.job = match d.rec.job {
                        JobRecord::Decouple { .. } => JobRecord::Decouple { cursor },
                        _ => JobRecord::Split { cursor },
                    };
                }
                st.changed();
            }
            // Yield to foreground I/O: measure its rate every few milliseconds.
            let now = reactor::now();
            let dt = now.since(last_t).as_secs_f64();
            if dt >= 0.005 {
                let ios = bdev.io_count();
                busy = (ios - last_ios) as f64 / dt > BUSY_IOPS;
                last_ios = ios;
                last_t = now;
            }
            if busy {
                reactor::sleep(BUSY_PAUSE).await;
            } else {
                reactor::yield_now().await;
            }
            // Within the jobs' bandwidth cap: wait (in slices, nothing locked) until the
            // next copy is due.
            loop {
                let (due, now) = (self.job_pace.get(), reactor::now());
                if due <= now
                    || cancel.get()
                    || self.stopping.get()
                    || self.crashed.get()
                    || self.st.borrow().closed
                {
                    break;
                }
                reactor::sleep_until(due.min(now.after(JOB_PACE_SLICE))).await;
            }
        }
        // Everything is the disk's own now: forget the parent (or skip it).
        let _lock = self.locks.disk(disk).await;
        let mut st = self.st.borrow_mut();
        let grandparent = {
            let d = st.disks.get(&disk);
            let p = d.map_or(0, |d| d.rec.parent);
            st.disks.get(&p).map_or(0, |p| p.rec.parent)
        };
        let Some(d) = st.disks.get_mut(&disk) else {
            return Ok(());
        };
        let decouple = matches!(d.rec.job, JobRecord::Decouple { .. });
        d.rec.parent = if decouple { grandparent } else { 0 };
        if !decouple {
            d.rec.kind = DiskKind::Disk;
            d.bdev.set_kind(DiskKind::Disk);
        }
        d.rec.job = JobRecord::None;
        let name = d.rec.name.clone();
        st.changed();
        drop(st);
        tracing::info!(pool = %self.shared.name, disk = %name, segments = done,
            "{} finished", if decouple { "decouple" } else { "split" });
        Ok(())
    }

    /// Makes the segments `vsegs` of `disk` its own: shared ones are copied concurrently
    /// and published together; ones with a writable top layer are filled one by one.
    async fn job_batch(&self, disk: u64, vsegs: &[u64]) -> IoStatus {
        let locks = self.locks.segments(disk, vsegs).await;
        // Plan under the locks.
        let mut own = Vec::new();
        let mut copies = Vec::new();
        {
            let st = self.st.borrow();
            let Some(d) = st.disks.get(&disk) else {
                return IoStatus::Aborted;
            };
            for &v in vsegs {
                let Some(e) = d.root.as_ref().and_then(|r| r.lookup(v)) else {
                    continue;
                };
                let one = e.at(v);
                let writable = e.birth.get() > d.rec.snap_gen;
                if writable {
                    own.push(v);
                } else {
                    copies.push(one);
                }
            }
        }
        drop(locks);
        let mut status = IoStatus::Success;
        for v in own {
            status = status.worst(self.job_segment(disk, v).await);
        }
        if copies.is_empty() || !status.is_success() {
            return status;
        }
        let vs: Vec<u64> = copies.iter().map(|e| e.vseg).collect();
        let locks = self.locks.segments(disk, &vs).await;
        let mut tasks = Vec::new();
        for one in copies {
            // Re-check: a fault may have changed it while we were not holding the lock.
            let current = {
                let st = self.st.borrow();
                st.disks.get(&disk).and_then(|d| {
                    d.root
                        .as_ref()
                        .and_then(|r| r.lookup(one.vseg))
                        .filter(|e| e.birth.get() <= d.rec.snap_gen)
                        .map(|e| e.at(one.vseg))
                })
            };
            let Some(one) = current else { continue };
            if one.state == ExtentState::Error {
                return IoStatus::MediaError;
            }
            let keep = self.job_keep(disk, one.vseg).unwrap_or_default();
            let prefix = Self::job_prefix(&one, false, &keep);
            if prefix == 0 {
                continue;
            }
            let Some(seg) = self.st.borrow_mut().space.alloc_segment() else {
                status = IoStatus::CapacityExceeded;
                break;
            };
            let me = self.rc();
            tasks.push(reactor::spawn_local(async move {
                me.shared.fills.fresh(seg);
                let copy_from = Extent {
                    layers: one.layers[..prefix].iter().copied().collect(),
                    ..one.clone()
                };
                let r = me.copy_resolved(&copy_from, seg).await;
                (one, prefix, seg, r)
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await);
        }
        let mut copied = 0;
        for (one, prefix, seg, r) in done {
            let r = r.and_then(|bytes| {
                copied += bytes;
                self.adopt_copy(disk, &one, prefix, seg)
            });
            if let Err(e) = r {
                self.st.borrow_mut().space.unalloc_segment(seg);
                status = status.worst(e);
            }
        }
        let _ = self.push_view(disk, false).await;
        drop(locks);
        self.update_free();
        self.job_copied(copied);
        status
    }

    /// Makes virtual segment `vseg` of `disk` its own (see the module doc).
    async fn job_segment(&self, disk: u64, vseg: u64) -> IoStatus {
        let lock = self.locks.segment(disk, vseg).await;
        let (one, writable) = {
            let st = self.st.borrow();
            let Some(d) = st.disks.get(&disk) else {
                return IoStatus::Aborted;
            };
            match d.root.as_ref().and_then(|r| r.lookup(vseg)) {
                Some(e) => (e.at(vseg), e.birth.get() > d.rec.snap_gen),
                None => return IoStatus::Success,
            }
        };
        if one.state == ExtentState::Error {
            return IoStatus::MediaError;
        }
        let keep = self.job_keep(disk, vseg).unwrap_or_default();
        let prefix = Self::job_prefix(&one, writable, &keep);
        if prefix == 0 {
            return IoStatus::Success;
        }
        let geo = self.shared.geo;
        let suffix: smallvec::SmallVec<[Layer; 2]> = one.layers[prefix..].iter().copied().collect();
        let copy_from = Extent {
            layers: one.layers[..prefix].iter().copied().collect(),
            ..one.clone()
        };
        if writable {
            // Fill the holes of the disk's own top layer from the shared layers below it.
            let top = one.layers[0];
            if !top.is_partial() {
                return IoStatus::Success;
            }
            let fill = self.shared.fills.get(top.seg());
            if self.fence_writes(disk, vseg, true).await.is_err() {
                let _ = self.fence_writes(disk, vseg, false).await;
                return IoStatus::Aborted;
            }
            let below = Extent {
                layers: copy_from.layers[1..].iter().copied().collect(),
                ..one.clone()
            };
            let mut status = IoStatus::Success;
            let mut copied = 0;
            let fills = &self.shared.fills;
            for (b, n, src) in geo.resolve_runs(fills, Some(&below), vseg, 0, geo.segment_blocks) {
                let Source::Seg(s) = src else { continue };
                // Only granules the top does not hold.
                let mut g = b / geo.granule_blocks;
                let g_end = (b + n).div_ceil(geo.granule_blocks);
                while g < g_end && status.is_success() {
                    if fill.test(g) {
                        g += 1;
                        continue;
                    }
                    let mut h = g;
                    while h < g_end && !fill.test(h) {
                        h += 1;
                    }
                    let (fb, fn_) = (g * geo.granule_blocks, (h - g) * geo.granule_blocks);
                    let r = match self.read_segment(s, fb, fn_).await {
                        Ok(data) => self.write_segment(top.seg(), fb, data).await,
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(()) => {
                            fill.set_range(g, h - g);
                            copied += fn_ * geo.block_size as u64;
                        }
                        Err(e) => status = e,
                    }
                    g = h;
                }
            }
            if status.is_success() {
                let full = suffix.is_empty() && fill.is_full(geo.granules);
                let mut layers: smallvec::SmallVec<[Layer; 2]> =
                    smallvec::smallvec![Layer::new(top.seg(), !full)];
                layers.extend(suffix);
                let ext = Extent {
                    layers: layers.into(),
                    ..one.clone()
                };
                if self
                    .try_set_extents(disk, vseg, vseg + 1, vec![ext])
                    .is_ok()
                {
                    let _ = self.push_view(disk, false).await;
                } else {
                    // The granules copied stay held only in memory: what they show is
                    // what the layers below hold, so nothing is lost if they are not.
                    status = IoStatus::CapacityExceeded;
                }
            }
            let _ = self.fence_writes(disk, vseg, false).await;
            self.update_free();
            drop(lock);
            self.job_copied(copied);
            return status;
        }
        // Shared: copy what the prefix layers hold into a new segment of the disk's own.
        let Some(seg) = self.st.borrow_mut().space.alloc_segment() else {
            return IoStatus::CapacityExceeded;
        };
        self.shared.fills.fresh(seg);
        let copied = match self.copy_resolved(&copy_from, seg).await {
            Ok(bytes) => bytes,
            Err(e) => {
                self.st.borrow_mut().space.unalloc_segment(seg);
                return e;
            }
        };
        if let Err(e) = self.adopt_copy(disk, &one, prefix, seg) {
            self.st.borrow_mut().space.unalloc_segment(seg);
            return e;
        }
        let _ = self.push_view(disk, false).await;
        self.update_free();
        drop(lock);
        self.job_copied(copied);
        IoStatus::Success
    }

    /// Puts segment `seg`, just filled (its fill) from the first `prefix` layers of `one`,
    /// in their place in `disk`'s table — or the zero state when nothing was copied and
    /// no layer is left below (all zeros need no segment). The caller pushes the view;
    /// if the metadata area has no room for the change, nothing changes and the caller
    /// takes `seg` back.
    fn adopt_copy(&self, disk: u64, one: &Extent, prefix: usize, seg: u64) -> Result<(), IoStatus> {
        let fill = self.shared.fills.get(seg);
        let no_space = |_| IoStatus::CapacityExceeded;
        let suffix = &one.layers[prefix..];
        if suffix.is_empty() && fill.is_empty() {
            self.try_set_extents(disk, one.vseg, one.vseg + 1, Vec::new())
                .map_err(no_space)?;
            self.st.borrow_mut().space.unalloc_segment(seg);
            return Ok(());
        }
        let full = suffix.is_empty() && fill.is_full(self.shared.geo.granules);
        let mut layers: smallvec::SmallVec<[Layer; 2]> =
            smallvec::smallvec![Layer::new(seg, !full)];
        layers.extend(suffix.iter().copied());
        let generation = self.st.borrow().generation;
        self.try_set_extents(
            disk,
            one.vseg,
            one.vseg + 1,
            vec![Extent {
                vseg: one.vseg,
                len: 1,
                state: ExtentState::Mapped,
                birth: generation.into(),
                layers: layers.into(),
            }],
        )
        .map_err(no_space)
    }
}
