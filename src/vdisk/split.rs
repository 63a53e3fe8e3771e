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
use super::map::{Extent, ExtentState, Layer, Layers, PhysSeg, Source};
use super::meta::directory::{DiskKind, JobRecord};
use super::msg::Below;
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
            // As SPDK's `spdk_bs_blob_decouple_parent`: an lvol whose parent is the
            // external snapshot itself is inflated (everything it reads of the external
            // bdev copied in), as there is no parent in the lvstore to point it at.
            let decouple = decouple && !(d.rec.parent == 0 && d.rec.external.is_some());
            if d.rec.parent == 0 && (decouple || d.rec.external.is_none()) {
                return Err(VdiskError::InvalidParam {
                    field: "lvol_name",
                    reason: format!(
                        "`{name}` has no parent to {} from",
                        if decouple { "decouple" } else { "split" }
                    ),
                });
            }
            if !decouple
                && let Some(x) = &d.rec.external
                && !self.externals.borrow().contains_key(&x.uuid)
            {
                // Inflating copies the external snapshot's blocks in: it must be there.
                return Err(VdiskError::InvalidParam {
                    field: "lvol_name",
                    reason: format!(
                        "`{name}` reads through to the external snapshot `{}` ({}), which is missing (the lvol is degraded); create that bdev first",
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
            match r {
                Ok(true) => me.external_released(id).await,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(pool = %me.shared.name, disk = id, error = %e, "split job stopped");
                }
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

    /// For a split of a disk that reads through to an external snapshot: what it reads
    /// below its layers and how many of its segments (from 0) have blocks there — the
    /// external bdev's length, or the disk's if shorter. `None` for any other job.
    fn job_external(&self, disk: u64) -> Option<(Below, u64)> {
        let st = self.st.borrow();
        let d = st.disks.get(&disk)?;
        if !matches!(d.rec.job, JobRecord::Split { .. }) || d.rec.external.is_none() {
            return None;
        }
        let below = self.below_of(&d.rec);
        let geo = self.shared.geo;
        let disk_segs = d.rec.size_blocks.div_ceil(geo.segment_blocks);
        let ext_segs = match &below {
            Below::External(b) => (b.num_blocks() * b.block_size() as u64) / geo.segment_bytes(),
            // Waited for before any scan ([`Controller::run_job`]).
            _ => 0,
        };
        Some((below, ext_segs.min(disk_segs)))
    }

    /// Waits while the external snapshot a split copies from is missing (after a
    /// restart the job resumes before the target hands the pool its bdevs). False if
    /// the job is to stop instead (cancelled, the pool closing).
    async fn job_wait_external(&self, disk: u64, cancel: &Cell<bool>) -> bool {
        let mut told = false;
        while let Some((Below::Missing(u), _)) = self.job_external(disk) {
            if self.stopping.get() || self.crashed.get() || self.st.borrow().closed {
                return false;
            }
            if cancel.get() {
                // The job's loop records the cancel.
                return true;
            }
            if !told {
                told = true;
                tracing::warn!(pool = %self.shared.name, disk, external = %u,
                    "split waits for its external snapshot to appear");
            }
            reactor::sleep(JOB_PACE_SLICE).await;
        }
        true
    }

    /// The first segment of a disk being split from its external snapshot that still
    /// reads some of it (no extent, or a granule no layer holds), if any.
    fn job_external_left(&self, disk: u64) -> Option<u64> {
        let (_, segs) = self.job_external(disk)?;
        let root = self.st.borrow().disks.get(&disk)?.root.clone();
        let Some(root) = root else {
            return (segs > 0).then_some(0);
        };
        (0..segs).find(|&v| root.lookup(v).is_none_or(|e| self.has_hole(&e.at(v))))
    }

    /// True if some granule of `one` is held by none of its layers (it reads what lies
    /// below the disk's layers).
    fn has_hole(&self, one: &Extent) -> bool {
        if one.state == ExtentState::Error || one.layers.iter().any(|l| !l.is_partial()) {
            return false;
        }
        let fills = &self.shared.fills;
        (0..self.shared.geo.granules).any(|g| !one.layers.iter().any(|l| l.holds(fills, g)))
    }

    /// Up to `max` virtual segments at or after `from` with work to do (in order), and —
    /// with `count` — how many there are in all. Splitting a disk that reads through to
    /// an external snapshot, a segment of the external bdev's range has work too where
    /// no layer holds a granule (no extent at all, or holes in partial layers).
    fn job_scan(&self, disk: u64, from: u64, max: usize, count: bool) -> (Vec<u64>, u64) {
        let (root, snap_gen) = {
            let st = self.st.borrow();
            let Some(d) = st.disks.get(&disk) else {
                return (Vec::new(), 0);
            };
            (d.root.clone(), d.rec.snap_gen)
        };
        let ext_segs = self.job_external(disk).map_or(0, |(_, n)| n);
        let mut found = Vec::new();
        let mut total = 0;
        // Takes `v`; false once the scan may stop.
        let mut take = |v: u64| {
            if found.len() < max {
                found.push(v);
            }
            total += 1;
            count || found.len() < max
        };
        let mut next = from;
        let mut stopped = false;
        if let Some(root) = root {
            root.visit_from(from, &mut |e| {
                // The segments no extent covers before this one.
                for v in next..e.vseg.min(ext_segs) {
                    if !take(v) {
                        stopped = true;
                        return false;
                    }
                }
                for v in e.vseg.max(from)..e.end() {
                    let one = e.at(v);
                    let keep = self.job_keep(disk, v).unwrap_or_default();
                    let work = Self::job_prefix(&one, one.birth.get() > snap_gen, &keep) > 0
                        || (v < ext_segs && self.has_hole(&one));
                    if work && !take(v) {
                        stopped = true;
                        return false;
                    }
                }
                next = next.max(e.end());
                true
            });
        }
        if !stopped {
            for v in next..ext_segs {
                if !take(v) {
                    break;
                }
            }
        }
        (found, total)
    }

    /// After a job let disk `id`'s external snapshot go: makes that durable (a crash
    /// after the bdev is deleted must not find the disk reading it still), then tells
    /// the pool's owner ([`super::Pool::on_external_released`]), which lets go of the
    /// bdev if nothing else reads it.
    async fn external_released(&self, id: u64) {
        if let Err(status) = self.make_durable().await {
            tracing::error!(pool = %self.shared.name, disk = id, ?status,
                "committing the end of a split failed; its external snapshot stays claimed");
            return;
        }
        let hook = self
            .shared
            .on_external_released
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook();
        }
    }

    /// Runs disk `disk`'s job to its end (or until cancelled, or the pool closes).
    /// Returns whether it let the disk's external snapshot go.
    async fn run_job(
        &self,
        disk: u64,
        cancel: &Cell<bool>,
        progress: &Cell<(u64, u64)>,
    ) -> Result<bool, VdiskError> {
        let start_cursor = match self.st.borrow().disks.get(&disk).map(|d| d.rec.job) {
            Some(JobRecord::Split { cursor } | JobRecord::Decouple { cursor }) => cursor,
            _ => return Ok(false),
        };
        if !self.job_wait_external(disk, cancel).await {
            return Ok(false);
        }
        let (_, total) = self.job_scan(disk, start_cursor, 0, true);
        progress.set((0, total));
        let bdev = match self.st.borrow().disks.get(&disk) {
            Some(d) => d.bdev.clone(),
            None => return Ok(false),
        };
        let mut cursor = start_cursor;
        let mut done = 0;
        let mut last_ios = bdev.io_count();
        let mut last_t = reactor::now();
        let mut busy = false;
        let mut finish_lock = None;
        loop {
            if self.crashed.get() {
                return Ok(false);
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
                return Ok(false);
            }
            let (batch, _) = self.job_scan(
                disk,
                cursor,
                if busy { BUSY_BATCH } else { JOB_BATCH },
                false,
            );
            let Some(&last) = batch.last() else {
                if self.job_external(disk).is_some() {
                    // Nothing may read through to the external snapshot once it is let
                    // go: look again with the disk locked (no fault, resize or
                    // snapshot under way), from its start (a write raced a copy, a
                    // shrink and a grow left new holes behind the cursor).
                    let lock = self.locks.disk(disk).await;
                    if let Some(v) = self.job_external_left(disk) {
                        drop(lock);
                        cursor = v;
                        continue;
                    }
                    finish_lock = Some(lock);
                }
                break;
            };
            let st = self.job_batch(disk, &batch).await;
            if self.crashed.get() {
                return Ok(false);
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
        let _lock = match finish_lock {
            Some(l) => l,
            None => self.locks.disk(disk).await,
        };
        let (name, decouple, external) = {
            let mut st = self.st.borrow_mut();
            let grandparent = {
                let d = st.disks.get(&disk);
                let p = d.map_or(0, |d| d.rec.parent);
                st.disks.get(&p).map_or(0, |p| p.rec.parent)
            };
            let Some(d) = st.disks.get_mut(&disk) else {
                return Ok(false);
            };
            let decouple = matches!(d.rec.job, JobRecord::Decouple { .. });
            d.rec.parent = if decouple { grandparent } else { 0 };
            // A split copied in everything the external snapshot showed: it reads zeros
            // below its layers from now on, as SPDK's inflated esnap clone does.
            let external = if decouple {
                None
            } else {
                d.rec.external.take()
            };
            if !decouple {
                d.rec.kind = DiskKind::Disk;
            }
            d.rec.job = JobRecord::None;
            let name = d.rec.name.clone();
            st.changed();
            (name, decouple, external)
        };
        let released = external.is_some();
        if let Some(x) = external {
            // Reads of the external bdev in flight drain before the job ends.
            let _ = self.push_view(disk, true).await;
            tracing::info!(pool = %self.shared.name, disk = %name, external = %x.name,
                uuid = %x.uuid, "external snapshot let go: everything it showed was copied in");
        }
        tracing::info!(pool = %self.shared.name, disk = %name, segments = done,
            "{} finished", if decouple { "decouple" } else { "split" });
        Ok(released)
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
                    // No extent: what it reads is the external snapshot's (a split
                    // of a disk that reads through to one), copied as a shared one is.
                    copies.push(v);
                    continue;
                };
                let writable = e.birth.get() > d.rec.snap_gen;
                if writable {
                    own.push(v);
                } else {
                    copies.push(v);
                }
            }
        }
        drop(locks);
        let ext = self.job_external(disk);
        let mut status = IoStatus::Success;
        for v in own {
            status = status.worst(self.job_segment(disk, v).await);
        }
        if copies.is_empty() || !status.is_success() {
            return status;
        }
        let locks = self.locks.segments(disk, &copies).await;
        let mut tasks = Vec::new();
        for v in copies {
            // Re-check: a fault may have changed it while we were not holding the lock.
            let (current, unmapped) = {
                let st = self.st.borrow();
                match st.disks.get(&disk) {
                    None => (None, false),
                    Some(d) => match d.root.as_ref().and_then(|r| r.lookup(v)) {
                        Some(e) if e.birth.get() <= d.rec.snap_gen => (Some(e.at(v)), false),
                        Some(_) => (None, false),
                        None => (None, true),
                    },
                }
            };
            // What the external snapshot shows here, if the split copies it in.
            let below = ext
                .as_ref()
                .filter(|(_, segs)| v < *segs)
                .map(|(b, _)| b.clone());
            let (one, prefix) = match current {
                Some(one) => {
                    if one.state == ExtentState::Error {
                        return IoStatus::MediaError;
                    }
                    let keep = self.job_keep(disk, v).unwrap_or_default();
                    let mut prefix = Self::job_prefix(&one, false, &keep);
                    if prefix == 0 && below.is_some() && self.has_hole(&one) {
                        prefix = one.layers.len();
                    }
                    (one, prefix)
                }
                // Nothing holds it: all of it is the external snapshot's.
                None if unmapped && below.is_some() => (unmapped_extent(v), 0),
                None => continue,
            };
            if prefix == 0 && below.is_none() {
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
                let r = me.copy_in(&copy_from, below.as_ref(), seg).await;
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
        let mut prefix = Self::job_prefix(&one, writable, &keep);
        // Splitting from an external snapshot: what no layer holds is copied in too.
        let ext_below = self
            .job_external(disk)
            .filter(|(_, segs)| vseg < *segs)
            .map(|(b, _)| b);
        if prefix == 0 && ext_below.is_some() && self.has_hole(&one) {
            prefix = one.layers.len();
        }
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
            // The granules the disk holds, with its writes fenced off and drained (nothing
            // but the copy below changes them until the fence lifts): put back if the
            // copy does not become the disk's.
            let held = fill.words();
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
            // Then what none of the layers holds, from the external snapshot.
            if let (true, Some(ext)) = (status.is_success(), &ext_below) {
                match self.fill_from_below(ext, &copy_from, top.seg()).await {
                    Ok(bytes) => copied += bytes,
                    Err(e) => status = e,
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
                    status = IoStatus::CapacityExceeded;
                }
            }
            if !status.is_success() {
                // The granules copied go back to being the layers' below: no record
                // holds them, and a fill that says they are held would let the disk's
                // next writes into them skip marking it (they are held already), so
                // those writes would never reach the metadata.
                fill.store_words(held);
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
        let copied = match self.copy_in(&copy_from, ext_below.as_ref(), seg).await {
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

    /// Copies into segment `dst` what `src`'s layers hold ([`Controller::copy_resolved`]),
    /// then, with `below`, what lies below the disk where they hold nothing
    /// ([`Controller::fill_from_below`]). Returns the bytes copied.
    pub(super) async fn copy_in(
        &self,
        src: &Extent,
        below: Option<&Below>,
        dst: u64,
    ) -> Result<u64, IoStatus> {
        let bytes = self.copy_resolved(src, dst).await?;
        match below {
            Some(b) => Ok(bytes + self.fill_from_below(b, src, dst).await?),
            None => Ok(bytes),
        }
    }

    /// Copies into segment `dst` the blocks of `src`'s virtual segment that no layer of
    /// `src` holds, from what lies below the disk (`below`: an external snapshot; zeros
    /// past its end), and adds their granules to `dst`'s fill. Returns the bytes
    /// copied. The caller holds the segment's lock (and fences its writes when `dst` is
    /// the disk's writable top layer).
    async fn fill_from_below(
        &self,
        below: &Below,
        src: &Extent,
        dst: u64,
    ) -> Result<u64, IoStatus> {
        let geo = self.shared.geo;
        let bs = geo.block_size as u64;
        let fill = self.shared.fills.get(dst);
        // Whole granules, a few hundred KiB at a time.
        let step =
            ((256 << 10) / bs).max(geo.granule_blocks) / geo.granule_blocks * geo.granule_blocks;
        let runs = geo.resolve_runs(
            &self.shared.fills,
            Some(src),
            src.vseg,
            0,
            geo.segment_blocks,
        );
        let mut copied = 0;
        for (b, n, source) in runs {
            if source != Source::Zero {
                continue;
            }
            let mut at = b;
            while at < b + n {
                let k = step.min(b + n - at);
                let data = self
                    .read_below(below, src.vseg * geo.segment_blocks + at, k)
                    .await?;
                self.write_segment(dst, at, data).await?;
                fill.set_range(at / geo.granule_blocks, k.div_ceil(geo.granule_blocks));
                copied += k * bs;
                at += k;
            }
        }
        Ok(copied)
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

/// Virtual segment `vseg` where no extent is (nothing of the disk's own holds it): an
/// extent of no layers, for a split to copy what lies below into a new segment.
fn unmapped_extent(vseg: u64) -> Extent {
    Extent {
        vseg,
        len: 1,
        state: ExtentState::Mapped,
        birth: 0.into(),
        layers: Layers::new(),
    }
}
