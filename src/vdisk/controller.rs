//! The controller of a pool: one core owns the durable tables, the allocator and the
//! commit machinery, resolves the agents' mapping faults, and pushes table updates to
//! the agents. This file holds its state, its start and stop, and the primitives its
//! operations share (table edits, segment I/O, unmapping); the operations themselves
//! are `impl Controller` blocks beside it:
//!
//! - `views.rs`: pushing views and commands to the agents (blocking flag), taking in
//!   their requests;
//! - `cow.rs`: write faults — allocation and copy-on-write, granule materialisation;
//! - `snapshot.rs`: snapshots, clones, quiesce;
//! - `lifecycle.rs`: create, delete, resize, read-only, listings;
//! - `split.rs`: the background split and decouple jobs;
//! - `commit.rs`: making the state durable; `load.rs`: creating and opening a pool.
//!
//! **Faults.** An agent that may not do a write (no segment allocated, a segment shared
//! with a snapshot) parks the I/O and sends a fault. The controller serialises faults per
//! virtual segment, changes the table (allocate, or copy-on-write), pushes the view and
//! replies; the agent retries the parked I/O. The faults of a disk resolved in the same
//! turn set their extents in one pass down the table and share one view push.
//!
//! **Durable points** (flush, FUA writes, snapshots, clones, creates, deletes, and in the
//! background every second) append the changes made since the last one to the intent
//! log and flush once (`intent.rs`). **Checkpoints** (commits: when the log holds enough records,
//! every few seconds while changes wait, at close, and where the log cannot describe a
//! change) persist the fills that changed, write every new node, the directory and the
//! changed space-map pages, flush, write the superblock (naming where replay starts),
//! flush — then drain every agent (blocking barrier) and make the segments and pages
//! freed before the checkpoint reusable. See `commit.rs`. A pool without a log commits
//! at every durable point.
//!
//! **Time limits** ([`TimeLimits`]): every wait for the agents' I/O ends at a deadline,
//! so one stuck request cannot freeze the pool's flushes and snapshots (`views.rs`).

use super::VdiskError;
use super::agent;
use super::alloc::Space;
use super::commit::MetaLedger;
use super::disk::VDisk;
use super::locks::{DiskLocks, LockGuard};
use super::map::Extent;
use super::meta::directory::DiskRecord;
use super::meta::log;
use super::msg::{AgentCmd, RangeState};
use super::shared::PoolShared;
use super::table::{self, Node};
use crate::bdev::{Channel, IoStatus};
use crate::reactor;
use crate::reactor::until;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Bytes a segment copy (copy-on-write, split) moves per read/write pair: small enough
/// that the data written is still in the cache from its read, with a batch of copies
/// running at once.
const COPY_CHUNK: u64 = 256 << 10;

/// How often changed fills are logged between appends (see [`Controller::start`]'s
/// background tasks).
const FILL_LOGGING_INTERVAL: Duration = Duration::from_millis(2);

/// How long the controller waits for what depends on I/O it does not control (DESIGN.md:
/// nothing waits forever). A base bdev that holds a request longer than these makes the
/// operation waiting for it fail (or, for a commit, answer without it) instead of
/// freezing the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeLimits {
    /// A drain — a command with the blocking flag: every I/O the agents had started
    /// before it has completed. Snapshots, deletes, write fences and the like that wait
    /// longer fail with [`VdiskError::DrainTimeout`] (naming the disk, the cores and the
    /// time) and undo what they did.
    pub drain: Duration,
    /// How long a commit waits for its pool-wide drain, which lets it reuse what was
    /// freed before it. After that the commit answers anyway (it is durable: its
    /// superblock is written); the freed space stays unreusable until the drain
    /// completes.
    pub commit_drain: Duration,
}

/// Default [`TimeLimits::drain`].
pub const DEFAULT_DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Default [`TimeLimits::commit_drain`].
pub const DEFAULT_COMMIT_DRAIN_LIMIT: Duration = Duration::from_secs(2);

impl Default for TimeLimits {
    fn default() -> Self {
        TimeLimits {
            drain: DEFAULT_DRAIN_LIMIT,
            commit_drain: DEFAULT_COMMIT_DRAIN_LIMIT,
        }
    }
}

/// One disk as the controller holds it.
pub(crate) struct DiskCtl {
    pub rec: DiskRecord,
    pub root: Option<Arc<Node>>,
    /// Cores with an agent for this disk.
    pub agents: BTreeSet<usize>,
    pub version: u64,
    pub bdev: Arc<VDisk>,
    /// A running split/decouple job: set to request its cancellation.
    pub job_cancel: Option<Rc<std::cell::Cell<bool>>>,
    /// Progress of the running job: (segments done, segments to do).
    pub job_progress: Option<Rc<std::cell::Cell<(u64, u64)>>>,
    /// The agents' state besides the view, for agents that register later: range
    /// states in force, quiesced, failed.
    pub overrides: Vec<(u64, u64, RangeState)>,
    pub quiesced: bool,
    pub failed: Option<IoStatus>,
    /// Table edits made (`set_extents`), and how many of them the agents' views held
    /// when the last view push completed.
    pub edits: u64,
    pub edits_pushed: u64,
    /// Extents sent to the agents beside their view since the last view push
    /// (`Controller::publish_extents`).
    pub extents_beside_view: usize,
    /// Passes down the table that made the edits (several edits share one when faults
    /// are resolved together).
    pub passes: u64,
    /// A view push that faults share (see [`Controller::publish_edits`]), under way.
    pub shared_push: Option<Rc<PushDone>>,
    /// Write faults resolved this turn, whose extents are set together
    /// (`Controller::set_fault_extent`).
    pub pending_faults: Vec<super::cow::PendingFault>,
}

/// Wakes the faults waiting for a shared view push when it is done.
#[derive(Default)]
pub(crate) struct PushDone {
    done: std::cell::Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl PushDone {
    pub(crate) fn finish(&self) {
        self.done.set(true);
        for w in self.wakers.take() {
            w.wake();
        }
    }

    pub(crate) async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.done.get() {
                Poll::Ready(())
            } else {
                self.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl DiskCtl {
    pub(crate) fn new(rec: DiskRecord, root: Option<Arc<Node>>, bdev: Arc<VDisk>) -> DiskCtl {
        DiskCtl {
            rec,
            root,
            agents: BTreeSet::new(),
            version: 0,
            bdev,
            job_cancel: None,
            job_progress: None,
            overrides: Vec::new(),
            quiesced: false,
            failed: None,
            edits: 0,
            edits_pushed: 0,
            extents_beside_view: 0,
            passes: 0,
            shared_push: None,
            pending_faults: Vec::new(),
        }
    }
}

/// A quiesce in force: held I/O on its disks until [`Controller::activate`], or until
/// the time limit, when it cancels itself.
pub(crate) struct Quiesce {
    pub disks: Vec<u64>,
    pub expired: Rc<std::cell::Cell<bool>>,
    pub timer: Option<async_task::Task<()>>,
}

/// The controller's mutable state.
pub(crate) struct CtlState {
    pub disks: BTreeMap<u64, DiskCtl>,
    /// Segments of each container as the next checkpoint records them: ahead of
    /// [`super::shared::Container::segments`] while a grow commits (`grow.rs`).
    pub containers: Vec<u64>,
    pub space: Space,
    /// The next birth generation.
    pub generation: u64,
    pub next_disk_id: u64,
    pub committed_txn: u64,
    /// Counts modifications; a commit records the count it captured.
    pub changes: u64,
    pub committed_changes: u64,
    /// Pages of the committed directory chain.
    pub dir_pages: Vec<u64>,
    /// The committed superblock's pointers into the space map.
    pub space_map: super::meta::space_map::SpaceMapPtrs,
    /// The buffer a checkpoint copies the changed space-map counts into, kept between
    /// checkpoints for its capacity (its pages stay mapped: a first touch of a few MiB
    /// is milliseconds on a virtual machine).
    pub sm_counts: Vec<u32>,
    /// Set when a metadata write failed: the pool refuses further changes.
    pub failed: Option<String>,
    pub closed: bool,
    /// The intent log, if the pool has one (`intent.rs`).
    pub log: Option<super::intent::IntentLog>,
}

impl CtlState {
    /// Refuses once the pool used every generation a birth can name.
    pub fn generation_left(&self) -> Result<(), VdiskError> {
        if self.generation >= super::map::MAX_GENERATION {
            return Err(VdiskError::InvalidParam {
                field: "generation",
                reason: format!(
                    "the pool used all {} generations; copy its disks to a new pool",
                    super::map::MAX_GENERATION
                ),
            });
        }
        Ok(())
    }

    /// Takes a generation for a snapshot, clone or revert: the current one, and raises
    /// it. Refused once births could no longer be told apart ([`MAX_GENERATION`]).
    /// The log records the new counter at once, whether or not the operation goes on
    /// to use it: extents born in the new generation may reach the log before the
    /// operation's own records do, or without them (it fails, or is cancelled).
    pub fn take_generation(&mut self) -> Result<u64, VdiskError> {
        self.generation_left()?;
        let g = self.generation;
        self.generation += 1;
        self.changed();
        Ok(g)
    }

    /// Takes an id for a new disk; the log records the next one at once, as
    /// [`CtlState::take_generation`] does.
    pub fn take_disk_id(&mut self) -> u64 {
        let id = self.next_disk_id;
        self.next_disk_id += 1;
        self.changed();
        id
    }

    pub(crate) fn disk_by_name(&self, name: &str) -> Option<u64> {
        self.disks
            .values()
            .find(|d| d.rec.name == name)
            .map(|d| d.rec.id)
    }

    /// The disk named `name`, or `NotFound`.
    pub(crate) fn disk_named(&self, name: &str) -> Result<&DiskCtl, VdiskError> {
        self.disks
            .values()
            .find(|d| d.rec.name == name)
            .ok_or_else(|| VdiskError::NotFound(name.to_string()))
    }
}

#[derive(Default)]
pub(crate) struct CommitState {
    pub running: bool,
    pub requested: u64,
    pub done: u64,
    pub last: Option<IoStatus>,
    pub waiters: Vec<Waker>,
}

/// The controller of one pool (lives on the pool's controller core).
pub(crate) struct Controller {
    pub shared: Arc<PoolShared>,
    pub st: RefCell<CtlState>,
    pub locks: DiskLocks,
    pub commit_state: RefCell<CommitState>,
    pub me: Weak<Controller>,
    /// The background tasks: the commit every second, the fill logger (dropped when the
    /// pool closes, which cancels them).
    pub background: RefCell<Vec<async_task::Task<()>>>,
    pub quiesces: RefCell<BTreeMap<u64, Quiesce>>,
    /// Set by [`Controller::crash_stop`]: nothing may be written any more.
    pub crashed: std::cell::Cell<bool>,
    /// Set when a close begins: background jobs pause after their current batch (they
    /// resume from their saved cursor at the next open).
    pub stopping: std::cell::Cell<bool>,
    pub limits: std::cell::Cell<TimeLimits>,
    /// Commits whose drain barrier is still waiting (a stuck request), in the
    /// background, to release what they freed.
    pub release_stalls: std::cell::Cell<u32>,
    /// Commits a write fault ran to make metadata room (the batch did not fit).
    pub commits_for_room: std::cell::Cell<u64>,
    /// Batches of write faults the agents sent (`msg::WriteFaults`), for tests.
    pub write_fault_requests: std::cell::Cell<u64>,
    /// Log appends whose pages are being written: while any is, a checkpoint holds its
    /// next writes back (for at most [`super::commit::LOG_WRITE_PRIORITY`]) so as not to
    /// queue ahead of them.
    pub log_writing: std::cell::Cell<u32>,
    /// The controller's side of the metadata budget (`commit.rs`, "Metadata space").
    pub meta: RefCell<MetaLedger>,
    /// Bytes per second the background jobs (split, decouple) may copy, all together;
    /// 0: no cap.
    pub job_limit: std::cell::Cell<u64>,
    /// When the jobs' next byte may go: each batch moves it on by its bytes at the cap.
    pub job_pace: std::cell::Cell<reactor::Nanos>,
    /// The external snapshots (esnap) present, by UUID: the bdevs disks with an external
    /// base read through to. A disk whose base is not here is degraded.
    pub externals: RefCell<std::collections::HashMap<uuid::Uuid, Arc<dyn crate::bdev::Bdev>>>,
    /// This core's channels to the metadata bdev and the containers, held for as long as
    /// the controller runs: the core's channel cache keeps a channel only while someone
    /// holds it, and the log appends, checkpoints and copies would otherwise open (and
    /// close) one — an io_uring, for a file — every time.
    _channels: Vec<Channel>,
}

#[derive(Default)]
struct Registry {
    pools: RefCell<HashMap<u64, Rc<Controller>>>,
}

/// The controller of pool `id`, on its core.
pub(crate) fn lookup(id: u64) -> Option<Rc<Controller>> {
    reactor::local(Registry::default)
        .pools
        .borrow()
        .get(&id)
        .cloned()
}

impl Controller {
    /// Registers a freshly opened controller on this core and starts its background
    /// commit task.
    pub(crate) fn start(shared: Arc<PoolShared>, st: CtlState) -> Rc<Controller> {
        let c = Rc::new_cyclic(|me| Controller {
            shared: shared.clone(),
            st: RefCell::new(st),
            locks: DiskLocks::default(),
            commit_state: RefCell::new(CommitState::default()),
            me: me.clone(),
            background: RefCell::new(Vec::new()),
            quiesces: RefCell::new(BTreeMap::new()),
            crashed: std::cell::Cell::new(false),
            stopping: std::cell::Cell::new(false),
            limits: std::cell::Cell::new(TimeLimits::default()),
            release_stalls: std::cell::Cell::new(0),
            commits_for_room: std::cell::Cell::new(0),
            write_fault_requests: std::cell::Cell::new(0),
            log_writing: std::cell::Cell::new(0),
            meta: RefCell::new(MetaLedger::default()),
            job_limit: std::cell::Cell::new(0),
            job_pace: std::cell::Cell::new(reactor::now()),
            externals: RefCell::new(std::collections::HashMap::new()),
            _channels: std::iter::once(&shared.meta_bdev)
                .chain(shared.containers.iter().map(|c| &c.bdev))
                .filter_map(|b| Channel::get(b).ok())
                .collect(),
        });
        reactor::local(Registry::default)
            .pools
            .borrow_mut()
            .insert(shared.id, c.clone());
        let weak = Rc::downgrade(&c);
        let task = reactor::spawn_local(async move {
            loop {
                reactor::sleep(Duration::from_millis(1000)).await;
                let Some(c) = weak.upgrade() else { return };
                if c.st.borrow().closed {
                    return;
                }
                let logging = c.st.borrow().log.is_some();
                let r = if !logging {
                    if c.needs_commit() {
                        c.commit().await
                    } else {
                        Ok(())
                    }
                } else if c.needs_commit() && c.wants_checkpoint() {
                    c.commit().await
                } else if c.undurable_changes() || !c.shared.dirty_fills.is_empty() {
                    // What was written in the last second becomes durable even without
                    // a flush, as a checkpoint every second used to make it.
                    c.make_durable().await
                } else {
                    Ok(())
                };
                if let Err(e) = r {
                    tracing::error!(pool = %c.shared.name, status = ?e, "background commit failed");
                }
            }
        });
        // Changed fills become log records (and their written leaves copies) every few
        // milliseconds, not only when an append runs: a snapshot or a FLUSH then finds
        // few left to log and copy before it can answer.
        let weak = Rc::downgrade(&c);
        let fills = reactor::spawn_local(async move {
            loop {
                reactor::sleep(FILL_LOGGING_INTERVAL).await;
                let Some(c) = weak.upgrade() else { return };
                if c.st.borrow().closed {
                    return;
                }
                if !c.shared.dirty_fills.is_empty() {
                    c.log_dirty_fills_in_turns().await;
                    c.append_if_due();
                }
            }
        });
        *c.background.borrow_mut() = vec![task, fills];
        let height =
            c.st.borrow()
                .disks
                .values()
                .filter_map(|d| d.root.as_ref())
                .map(|r| r.height() as u64)
                .max()
                .unwrap_or(0);
        c.shared.meta_budget.set_fill_cost(height + 2);
        c.update_free();
        c
    }

    pub(crate) fn rc(&self) -> Rc<Controller> {
        self.me.upgrade().expect("controller alive while used")
    }

    pub(crate) fn needs_commit(&self) -> bool {
        let st = self.st.borrow();
        st.failed.is_none()
            && (st.changes != st.committed_changes
                || !self.shared.dirty_fills.is_empty()
                || self.fill_charges_outstanding())
    }

    /// True if the log asks for a checkpoint (records past the last one up to its bound,
    /// or changes older than the
    /// checkpoint interval, or a change it does not describe), or space freed waits
    /// for one while free segments run low.
    pub(crate) fn wants_checkpoint(&self) -> bool {
        let st = self.st.borrow();
        let low = st.space.free_segments() < st.space.data_segments() / 16
            && st.space.pending_segments() > 0;
        let in_use = st.space.segments_in_use();
        low || st.log.as_ref().is_none_or(|l| l.wants_checkpoint(in_use))
    }

    /// Publishes the free segments and brings the metadata budget up to date.
    pub(crate) fn update_free(&self) {
        let free = self.st.borrow().space.free_segments();
        self.shared
            .free_segments
            .store(free, std::sync::atomic::Ordering::Relaxed);
        self.sync_meta_budget();
    }

    pub(crate) fn check_usable(&self) -> Result<(), VdiskError> {
        let st = self.st.borrow();
        if st.closed {
            return Err(VdiskError::Stopped);
        }
        if let Some(f) = &st.failed {
            return Err(VdiskError::PoolFailed(f.clone()));
        }
        Ok(())
    }

    /// Replaces `[from, to)` of `disk`'s table with `exts`. The nodes it builds count
    /// against the metadata budget from now on; [`Controller::try_set_extents`] makes
    /// sure first that they fit.
    pub(crate) fn set_extents(&self, disk: u64, from: u64, to: u64, exts: Vec<Extent>) {
        let edit = table::Edit {
            from,
            to,
            extents: std::borrow::Cow::Borrowed(&exts),
        };
        self.set_extents_many(disk, &[edit]);
    }

    /// [`Controller::set_extents`] of several edits of one disk's table (sorted, ranges
    /// disjoint) in one pass down it: each node on their paths is rebuilt once. Each
    /// edit is logged as its own splice.
    pub(crate) fn set_extents_many(&self, disk: u64, edits: &[table::Edit<'_>]) {
        let height = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let Some(d) = st.disks.get_mut(&disk) else {
                return;
            };
            table::replace(&mut d.root, edits, &mut st.space);
            d.passes += 1;
            // Before any agent hears of them (`maybe_mapped.rs`).
            for x in edits.iter().flat_map(|e| e.extents.iter()) {
                d.bdev.maybe_mapped.note_run(x.vseg, u64::from(x.len));
            }
            for e in edits {
                d.edits += 1;
                st.changes += 1;
                if let Some(l) = st.log.as_mut() {
                    let fills = &self.shared.fills;
                    let encode = |out: &mut Vec<u8>, packed| {
                        log::encode_splice_into(out, disk, e.from, e.to, &e.extents, fills, packed)
                    };
                    l.splice(st.changes, disk, encode, &d.root);
                }
            }
            d.root.as_ref().map_or(0, |r| r.height() as u64)
        };
        let budget = &self.shared.meta_budget;
        // A leaf's path, the leaf counted as two pages (`table::NodeKind::pages_to_write`).
        if height + 2 > budget.fill_cost() {
            budget.set_fill_cost(height + 2);
        }
        self.sync_meta_budget();
        self.append_if_due();
    }

    /// Copies what extent `src` (one segment) resolves to into segment `dst`, setting
    /// `dst`'s fill for every granule copied; returns the bytes copied. Granules that
    /// read as zeros are not copied.
    pub(crate) async fn copy_resolved(&self, src: &Extent, dst: u64) -> Result<u64, IoStatus> {
        let n = self.shared.geo.segment_blocks;
        self.copy_resolved_blocks(src, dst, 0, n).await
    }

    /// [`Controller::copy_resolved`] of blocks `[b0, b0 + n)` only (granule-aligned).
    pub(crate) async fn copy_resolved_blocks(
        &self,
        src: &Extent,
        dst: u64,
        b0: u64,
        n: u64,
    ) -> Result<u64, IoStatus> {
        let geo = self.shared.geo;
        let fill = self.shared.fills.get(dst);
        let runs = geo.resolve_runs(&self.shared.fills, Some(src), src.vseg, b0, n);
        let mut copied = 0;
        for (b, n, source) in runs {
            match source {
                super::map::Source::Seg(s) => {
                    // In pieces that stay in the cache between their read and their write.
                    let step = (COPY_CHUNK / geo.block_size as u64).max(1);
                    let mut at = b;
                    while at < b + n {
                        let k = step.min(b + n - at);
                        let data = self.read_segment(s, at, k).await?;
                        self.write_segment(dst, at, data).await?;
                        at += k;
                    }
                    fill.set_range(b / geo.granule_blocks, n.div_ceil(geo.granule_blocks));
                    copied += n * geo.block_size as u64;
                }
                super::map::Source::Zero => {}
                super::map::Source::Error => return Err(IoStatus::MediaError),
            }
        }
        Ok(copied)
    }

    /// Counts `bytes` a background job copied against the jobs' cap: the time the
    /// jobs' next byte is due (`job_pace`) moves on by their time at the cap. Without a
    /// cap it stays in the past ([`super::Pool::set_job_limit`] sets it to now).
    pub(crate) fn job_copied(&self, bytes: u64) {
        let cap = self.job_limit.get();
        if cap == 0 {
            return;
        }
        let start = self.job_pace.get().max(reactor::now());
        self.job_pace
            .set(start.after(Duration::from_secs_f64(bytes as f64 / cap as f64)));
    }

    /// Reads blocks `[b, b + n)` of physical segment `seg`.
    pub(crate) async fn read_segment(
        &self,
        seg: u64,
        b: u64,
        n: u64,
    ) -> Result<crate::bdev::IoBuf, IoStatus> {
        let (ci, off) = self.shared.locate(seg);
        let c = &self.shared.containers[ci];
        let ch = Channel::get(&c.bdev).map_err(|_| IoStatus::InternalError)?;
        let bs = self.shared.geo.block_size as u64;
        let cbs = c.bdev.block_size() as u64;
        ch.read((off + b * bs) / cbs, n * bs / cbs).await
    }

    /// Writes `data` at block `b` of physical segment `seg`.
    pub(crate) async fn write_segment(
        &self,
        seg: u64,
        b: u64,
        data: crate::bdev::IoBuf,
    ) -> Result<(), IoStatus> {
        let (ci, off) = self.shared.locate(seg);
        let c = &self.shared.containers[ci];
        let ch = Channel::get(&c.bdev).map_err(|_| IoStatus::InternalError)?;
        let bs = self.shared.geo.block_size as u64;
        let cbs = c.bdev.block_size() as u64;
        ch.write((off + b * bs) / cbs, data).await
    }

    /// Zeroes whole physical segments `[seg, seg + n)`.
    pub(crate) async fn zero_segments(&self, seg: u64, n: u64) -> Result<(), IoStatus> {
        let mut at = seg;
        while at < seg + n {
            let (ci, off) = self.shared.locate(at);
            let c = &self.shared.containers[ci];
            // Contiguous within one container.
            let here = (c.first_seg + c.segments() - at).min(seg + n - at);
            let ch = Channel::get(&c.bdev).map_err(|_| IoStatus::InternalError)?;
            let cbs = c.bdev.block_size() as u64;
            ch.write_zeroes(off / cbs, here * self.shared.geo.segment_bytes() / cbs)
                .await?;
            at += here;
        }
        Ok(())
    }

    /// Removes `[from, to)` (virtual segments) from `disk`'s table: the zero state. The
    /// segments go back to the pool once nothing references them and a commit passed.
    pub(crate) async fn punch(&self, disk: u64, from: u64, to: u64) -> IoStatus {
        if self.check_usable().is_err() {
            return IoStatus::Aborted;
        }
        let _lock = self.locks.disk(disk).await;
        {
            let st = self.st.borrow();
            let Some(d) = st.disks.get(&disk) else {
                return IoStatus::Aborted;
            };
            if d.rec.read_only {
                return IoStatus::WriteProtected;
            }
            let any = d
                .root
                .as_ref()
                .and_then(|r| r.next_from(from))
                .is_some_and(|e| e.vseg < to);
            if !any {
                return IoStatus::Success;
            }
        }
        if let Err(e) = self.try_set_extents(disk, from, to, Vec::new()) {
            tracing::debug!(pool = %self.shared.name, disk, from, to, error = %e, "unmap refused");
            return IoStatus::CapacityExceeded;
        }
        let _ = self.push_view(disk, false).await;
        self.update_free();
        IoStatus::Success
    }

    /// An agent cleared the last bits of a fill: drop the segment if it is still empty.
    ///
    /// A write into the segment may still be in flight: it marks its granules only when
    /// it completes, so an empty fill does not mean an unused segment. Writes to the
    /// segment are fenced off (they fault and wait) and the ones in flight drained
    /// before the fill is looked at again; dropping the segment under such a write
    /// would lose data the write already acknowledged.
    pub(crate) async fn maybe_empty(&self, disk: u64, vseg: u64) -> IoStatus {
        let _lock = self.locks.segment(disk, vseg).await;
        if !self.segment_unused(disk, vseg) {
            return IoStatus::Success;
        }
        if self.fence_writes(disk, vseg, true).await.is_err() {
            // Writes to it did not drain in time: keep the segment (it only costs space).
            let _ = self.fence_writes(disk, vseg, false).await;
            return IoStatus::Success;
        }
        // Without metadata space to drop it, the empty segment stays (it costs space only).
        if self.segment_unused(disk, vseg)
            && self
                .try_set_extents(disk, vseg, vseg + 1, Vec::new())
                .is_ok()
        {
            let _ = self.push_view(disk, false).await;
            self.update_free();
        }
        let _ = self.fence_writes(disk, vseg, false).await;
        IoStatus::Success
    }

    /// True if virtual segment `vseg` of `disk` is the disk's own, unshared, single-layer
    /// segment and no granule of it holds data.
    fn segment_unused(&self, disk: u64, vseg: u64) -> bool {
        let st = self.st.borrow();
        let Some(d) = st.disks.get(&disk) else {
            return false;
        };
        d.root
            .as_ref()
            .and_then(|r| r.lookup(vseg))
            .is_some_and(|e| {
                e.birth.get() > d.rec.snap_gen
                    && e.layers.len() == 1
                    && e.layers[0].is_partial()
                    && self.shared.fills.get(e.layers[0].seg()).is_empty()
            })
    }

    /// Locks the whole of `disk` for `what`, waiting for the operations running on it
    /// (mapping faults, copies) at most the drain time limit.
    pub(crate) async fn lock_disk(&self, disk: u64, what: &str) -> Result<LockGuard, VdiskError> {
        let limit = self.limits.get().drain;
        until(reactor::now().after(limit), self.locks.disk(disk))
            .await
            .ok_or_else(|| {
                VdiskError::Busy(format!(
                    "{what}: operations on the disk still running after {} ms; try again",
                    limit.as_millis()
                ))
            })
    }

    pub(crate) fn id_of(&self, name: &str) -> Result<u64, VdiskError> {
        self.st
            .borrow()
            .disk_by_name(name)
            .ok_or_else(|| VdiskError::NotFound(name.to_string()))
    }

    /// Commits and stops: the disks' agents fail further I/O.
    pub(crate) async fn close(&self) -> Result<(), VdiskError> {
        // Nothing may change the data or the metadata after the last commit: first the
        // background jobs pause and the agents stop taking I/O (and drain what is in
        // flight), then the commit.
        self.stopping.set(true);
        let disks: Vec<u64> = self.st.borrow().disks.keys().copied().collect();
        for d in disks {
            // A stuck request does not hold the close: its write cannot be reused under
            // (the pool allocates nothing more), and what it writes is not committed.
            let _ = self
                .command_agents(d, AgentCmd::Fail(IoStatus::Aborted), true)
                .await;
        }
        let deadline = reactor::now().after(self.limits.get().drain);
        loop {
            let running = (self.st.borrow().disks.values())
                .filter(|d| d.job_cancel.is_some())
                .count();
            if running == 0 {
                break;
            }
            if reactor::now() >= deadline {
                tracing::warn!(
                    pool = %self.shared.name, running,
                    "background jobs did not pause within the drain limit; closing anyway"
                );
                break;
            }
            reactor::sleep(Duration::from_millis(1)).await;
        }
        self.appends_idle(deadline).await;
        let commit = self.commit().await;
        self.st.borrow_mut().closed = true;
        self.background.borrow_mut().clear();
        reactor::local(Registry::default)
            .pools
            .borrow_mut()
            .remove(&self.shared.id);
        tracing::info!(pool = %self.shared.name, "pool closed");
        commit.map_err(VdiskError::from)
    }

    /// Stops at once without committing — what a crash does to the controller (tests
    /// simulate power loss with it). Agents fail further I/O; no metadata is written
    /// from now on.
    pub(crate) fn crash_stop(&self) {
        self.crashed.set(true);
        self.st.borrow_mut().closed = true;
        self.background.borrow_mut().clear();
        let disks: Vec<(u64, Vec<usize>)> = self
            .st
            .borrow()
            .disks
            .values()
            .map(|d| (d.rec.id, d.agents.iter().copied().collect()))
            .collect();
        for (d, cores) in disks {
            for core in cores {
                let pool = self.shared.id;
                let _ = self.shared.cores.send(core, move || {
                    agent::apply_now(pool, d, AgentCmd::Fail(IoStatus::Aborted))
                });
            }
        }
        reactor::local(Registry::default)
            .pools
            .borrow_mut()
            .remove(&self.shared.id);
    }

    /// Waits until `f` returns `Ready`, re-checking whenever a commit finishes.
    pub(crate) async fn wait_commit_state<T>(
        &self,
        mut f: impl FnMut(&mut CommitState) -> Poll<T>,
    ) -> T {
        std::future::poll_fn(|cx| {
            let mut cs = self.commit_state.borrow_mut();
            match f(&mut cs) {
                Poll::Ready(v) => Poll::Ready(v),
                Poll::Pending => {
                    cs.waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Disk names: 1–127 bytes, no `/` and no NUL.
pub(crate) fn validate_name(name: &str) -> Result<(), VdiskError> {
    if name.is_empty() || name.len() > 127 || name.contains(['/', '\0']) {
        return Err(VdiskError::InvalidParam {
            field: "name",
            reason: format!("`{name}` must be 1-127 bytes without `/` or NUL"),
        });
    }
    Ok(())
}
