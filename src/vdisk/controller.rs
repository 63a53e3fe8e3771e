//! The controller of a pool: one core owns the durable tables, the allocator and the
//! commit machinery, resolves the agents' mapping faults, and pushes table updates to
//! the agents.
//!
//! **Views.** The controller's tree of each disk is the truth. An agent serves I/O from
//! its own view (a root pointer into the shared, immutable nodes). After a change the
//! controller pushes the new root to every core that has an agent for the disk ("set
//! entries" — the pushed root shares every node the change did not copy) and, for
//! changes that must be visible before an I/O completes (a new allocation), waits for
//! every agent to acknowledge. A command can carry the **blocking flag**: the agent
//! applies it at once but acknowledges only after all I/O it had started before the
//! command has completed.
//!
//! **Faults.** An agent that may not do a write (no segment allocated, a segment shared
//! with a snapshot) parks the I/O and sends a fault. The controller serialises faults per
//! virtual segment, changes the table (allocate, or copy-on-write), pushes the view and
//! replies; the agent retries the parked I/O.
//!
//! **Commits** (on flush, FUA writes, and in the background every second): persist the
//! fills that changed (their leaves are copied so they are rewritten), write every new
//! node, the directory and the changed space-map pages, flush, write the superblock,
//! flush — then drain every agent (blocking barrier) and make the segments and pages
//! freed before the commit reusable. See `commit.rs`.

use super::agent;
use super::alloc::Space;
use super::disk::VDisk;
use super::locks::DiskLocks;
use super::map::{Extent, ExtentState, Fill, Layer, MAX_LAYERS, MAX_RUN_SEGMENTS};
use super::meta::{DiskKind, DiskRecord, JobRecord, NO_PAGE};
use super::msg::{AgentCmd, AgentNotice, AgentRequest, ControllerPort, RangeState, View};
use super::shared::PoolShared;
use super::table::{self, Node};
use super::{CowPolicy, VdiskError};
use crate::bdev::{Channel, IoStatus};
use crate::reactor::{self, Cores, RemoteHandle};
use serde::Serialize;
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
    /// Set when a metadata write failed: the pool refuses further changes.
    pub failed: Option<String>,
    pub closed: bool,
}

impl CtlState {
    pub(crate) fn disk_by_name(&self, name: &str) -> Option<u64> {
        self.disks
            .values()
            .find(|d| d.rec.name == name)
            .map(|d| d.rec.id)
    }

    pub(crate) fn changed(&mut self) {
        self.changes += 1;
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
    pub background: RefCell<Option<async_task::Task<()>>>,
    pub quiesces: RefCell<BTreeMap<u64, Quiesce>>,
    /// Set by [`Controller::crash_stop`]: nothing may be written any more.
    pub crashed: std::cell::Cell<bool>,
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

/// A disk as listings show it.
#[derive(Clone, Debug, Serialize)]
pub struct DiskInfo {
    pub name: String,
    pub uuid: uuid::Uuid,
    pub id: u64,
    pub kind: DiskKind,
    pub size_bytes: u64,
    pub read_only: bool,
    pub thin: bool,
    pub parent: Option<String>,
    pub children: Vec<String>,
    /// Segments only this disk references.
    pub allocated_segments: u64,
    /// Segments this disk shares with other disks.
    pub shared_segments: u64,
    pub segment_bytes: u64,
    pub cow_policy: CowPolicy,
    /// A running split or decouple: (kind, segments done, segments to do).
    pub job: Option<(String, u64, u64)>,
}

/// Layers below a full layer are never reached: drop them.
pub(crate) fn normalize(layers: &mut smallvec::SmallVec<[Layer; 2]>) {
    if let Some(i) = layers.iter().position(|l| l.fill.is_none()) {
        layers.truncate(i + 1);
    }
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
            background: RefCell::new(None),
            quiesces: RefCell::new(BTreeMap::new()),
            crashed: std::cell::Cell::new(false),
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
                if c.needs_commit()
                    && let Err(e) = c.commit().await
                {
                    tracing::error!(pool = %c.shared.name, status = ?e, "background commit failed");
                }
            }
        });
        *c.background.borrow_mut() = Some(task);
        c.update_free();
        c
    }

    pub(crate) fn rc(&self) -> Rc<Controller> {
        self.me.upgrade().expect("controller alive while used")
    }

    pub(crate) fn needs_commit(&self) -> bool {
        let st = self.st.borrow();
        st.failed.is_none()
            && (st.changes != st.committed_changes || !self.shared.dirty_fills.is_empty())
    }

    pub(crate) fn update_free(&self) {
        let free = self.st.borrow().space.free_segments();
        self.shared
            .free_segments
            .store(free, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_usable(&self) -> Result<(), VdiskError> {
        let st = self.st.borrow();
        if st.closed {
            return Err(VdiskError::Stopped);
        }
        if let Some(f) = &st.failed {
            return Err(VdiskError::PoolFailed(f.clone()));
        }
        Ok(())
    }

    /// The view agents of `disk` should have now.
    pub(crate) fn view_of(&self, d: &DiskCtl) -> Arc<View> {
        Arc::new(View {
            root: d.root.clone(),
            snap_gen: d.rec.snap_gen,
            version: d.version,
        })
    }

    /// Sends `cmd` to every agent of `disk` and waits for their acknowledgements. The
    /// disk remembers the state it sets, for agents that register later.
    pub(crate) async fn command_agents(&self, disk: u64, cmd: AgentCmd, blocking: bool) {
        let cores: Vec<usize> = match self.st.borrow_mut().disks.get_mut(&disk) {
            Some(d) => {
                match &cmd {
                    AgentCmd::SetState { from, to, state } => {
                        d.overrides.retain(|&(f, t, _)| t <= *from || f >= *to);
                        if let Some(s) = state {
                            d.overrides.push((*from, *to, *s));
                        }
                    }
                    AgentCmd::Quiesce => d.quiesced = true,
                    AgentCmd::Activate => d.quiesced = false,
                    AgentCmd::Fail(st) => d.failed = Some(*st),
                    AgentCmd::SetView(_) | AgentCmd::Barrier | AgentCmd::Init { .. } => {}
                }
                d.agents.iter().copied().collect()
            }
            None => return,
        };
        let pool = self.shared.id;
        let handles: Vec<_> = cores
            .into_iter()
            .map(|core| {
                let cmd = cmd.clone();
                self.shared
                    .cores
                    .spawn_on(core, move || agent::apply(pool, disk, cmd, blocking))
            })
            .collect();
        for h in handles {
            let _ = h.await;
        }
    }

    /// Fences writes to virtual segment `vseg` of `disk` off (`true`: they fault and
    /// wait, and the ones in flight have drained when this returns) or lets them
    /// through again (`false`). The caller holds the segment's lock.
    pub(crate) async fn fence_writes(&self, disk: u64, vseg: u64, fenced: bool) {
        let cmd = AgentCmd::SetState {
            from: vseg,
            to: vseg + 1,
            state: fenced.then_some(RangeState::NoWrite),
        };
        self.command_agents(disk, cmd, fenced).await;
    }

    /// Pushes the disk's current table to its agents ("set entries").
    pub(crate) async fn push_view(&self, disk: u64, blocking: bool) {
        let view = {
            let mut st = self.st.borrow_mut();
            let Some(d) = st.disks.get_mut(&disk) else {
                return;
            };
            d.version += 1;
            self.view_of(d)
        };
        self.command_agents(disk, AgentCmd::SetView(view), blocking)
            .await;
    }

    /// A blocking no-op to every agent of every disk: returns when every I/O started
    /// anywhere in the pool before the call has completed.
    pub(crate) async fn barrier_all(&self) {
        let disks: Vec<u64> = self.st.borrow().disks.keys().copied().collect();
        let mut tasks = Vec::new();
        for d in disks {
            let me = self.rc();
            tasks.push(reactor::spawn_local(async move {
                me.command_agents(d, AgentCmd::Barrier, true).await
            }));
        }
        for t in tasks {
            t.await;
        }
    }

    /// An agent on `core` for `disk` appeared: remember it and send it the view.
    pub(crate) fn agent_registered(&self, disk: u64, core: usize) {
        let init = {
            let mut st = self.st.borrow_mut();
            let Some(d) = st.disks.get_mut(&disk) else {
                drop(st);
                let pool = self.shared.id;
                let _ = self.shared.cores.send(core, move || {
                    agent::apply_now(pool, disk, AgentCmd::Fail(IoStatus::Aborted))
                });
                return;
            };
            d.agents.insert(core);
            AgentCmd::Init {
                view: self.view_of(d),
                overrides: d.overrides.clone(),
                quiesced: d.quiesced,
                failed: d.failed,
            }
        };
        let pool = self.shared.id;
        let _ = self
            .shared
            .cores
            .send(core, move || agent::apply_now(pool, disk, init));
    }

    /// The agent on `core` for `disk` is gone.
    pub(crate) fn agent_unregistered(&self, disk: u64, core: usize) {
        if let Some(d) = self.st.borrow_mut().disks.get_mut(&disk) {
            d.agents.remove(&core);
        }
    }

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
        self.set_extents(disk, vseg, vseg + 1, vec![ext]);
        self.update_free();
        // A new allocation must be visible on every core before the write completes.
        self.push_view(disk, false).await;
        IoStatus::Success
    }

    /// Replaces `[from, to)` of `disk`'s table with `exts`.
    pub(crate) fn set_extents(&self, disk: u64, from: u64, to: u64, exts: Vec<Extent>) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let Some(d) = st.disks.get_mut(&disk) else {
            return;
        };
        let new = table::splice(d.root.as_ref(), from, to, &exts, &mut st.space);
        table::set_root(&mut d.root, new, &mut st.space);
        st.changes += 1;
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

    /// Copies what extent `src` (one segment) resolves to into segment `dst`, setting
    /// `fill` for every granule copied. Granules that read as zeros are not copied.
    pub(crate) async fn copy_resolved(
        &self,
        src: &Extent,
        dst: u64,
        fill: &Fill,
    ) -> Result<(), IoStatus> {
        let geo = self.shared.geo;
        let runs = geo.resolve_runs(Some(src), src.vseg, 0, geo.segment_blocks);
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
                }
                super::map::Source::Zero => {}
                super::map::Source::Error => return Err(IoStatus::MediaError),
            }
        }
        Ok(())
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
            let here = (c.first_seg + c.segments - at).min(seg + n - at);
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
        self.set_extents(disk, from, to, Vec::new());
        self.push_view(disk, false).await;
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
        self.fence_writes(disk, vseg, true).await;
        if self.segment_unused(disk, vseg) {
            self.set_extents(disk, vseg, vseg + 1, Vec::new());
            self.push_view(disk, false).await;
            self.update_free();
        }
        self.fence_writes(disk, vseg, false).await;
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
                e.birth > d.rec.snap_gen
                    && e.layers.len() == 1
                    && e.layers[0].fill.as_ref().is_some_and(|f| f.is_empty())
            })
    }

    /// Creates a disk. `uuid` is kept when given (restoring a saved configuration).
    pub(crate) async fn create_disk(
        &self,
        name: &str,
        size_bytes: u64,
        thin: bool,
        uuid: Option<uuid::Uuid>,
    ) -> Result<Arc<VDisk>, VdiskError> {
        self.check_usable()?;
        validate_name(name)?;
        let geo = self.shared.geo;
        if size_bytes == 0 || !size_bytes.is_multiple_of(geo.block_size as u64) {
            return Err(VdiskError::InvalidParam {
                field: "size",
                reason: format!(
                    "{size_bytes} bytes is not a positive multiple of the block size {}",
                    geo.block_size
                ),
            });
        }
        let size_blocks = size_bytes / geo.block_size as u64;
        let nsegs = size_blocks.div_ceil(geo.segment_blocks);
        let (id, generation, cow) = {
            let mut st = self.st.borrow_mut();
            if st.disk_by_name(name).is_some() {
                return Err(VdiskError::Exists(name.to_string()));
            }
            if !thin && st.space.free_segments() < nsegs {
                return Err(VdiskError::NoSpace {
                    need: nsegs,
                    free: st.space.free_segments(),
                });
            }
            let id = st.next_disk_id;
            st.next_disk_id += 1;
            (id, st.generation, self.shared.cow_default)
        };
        // Fully allocated: contiguous runs, zeroed before anyone can read them.
        let mut runs = Vec::new();
        if !thin {
            let mut v = 0;
            while v < nsegs {
                let got = self
                    .st
                    .borrow_mut()
                    .space
                    .alloc_run((nsegs - v).min(MAX_RUN_SEGMENTS as u64));
                let Some((seg, n)) = got else {
                    for &(_, s, n) in &runs {
                        for i in 0..n {
                            self.st.borrow_mut().space.unalloc_segment(s + i);
                        }
                    }
                    return Err(VdiskError::NoSpace {
                        need: nsegs,
                        free: self.st.borrow().space.free_segments(),
                    });
                };
                runs.push((v, seg, n));
                v += n;
            }
            for &(_, seg, n) in &runs {
                if let Err(e) = self.zero_segments(seg, n).await {
                    for &(_, s, n) in &runs {
                        for i in 0..n {
                            self.st.borrow_mut().space.unalloc_segment(s + i);
                        }
                    }
                    return Err(VdiskError::Io {
                        what: "zeroing the new disk's segments".into(),
                        status: e,
                    });
                }
            }
        }
        let rec = DiskRecord {
            id,
            uuid: uuid.unwrap_or_else(uuid::Uuid::new_v4),
            name: name.to_string(),
            size_blocks,
            kind: DiskKind::Disk,
            read_only: false,
            thin,
            parent: 0,
            snap_gen: 0,
            created_gen: generation,
            root_page: NO_PAGE,
            cow_policy: cow as u8,
            job: JobRecord::None,
            created_unix: unix_now(),
        };
        let bdev = VDisk::new(&self.shared, &rec).map_err(VdiskError::Bdev)?;
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let mut root = None;
            if !runs.is_empty() {
                let exts: Vec<Extent> = runs
                    .iter()
                    .map(|&(v, s, n)| Extent::run(v, n as u32, s, generation))
                    .collect();
                let new = table::splice(None, 0, nsegs, &exts, &mut st.space);
                table::set_root(&mut root, new, &mut st.space);
            }
            st.disks.insert(id, DiskCtl::new(rec, root, bdev.clone()));
            st.changed();
        }
        self.update_free();
        tracing::info!(pool = %self.shared.name, disk = name, size_bytes, thin, "disk created");
        Ok(bdev)
    }

    pub(crate) fn disk_bdev(&self, name: &str) -> Result<Arc<VDisk>, VdiskError> {
        let st = self.st.borrow();
        st.disk_by_name(name)
            .and_then(|id| st.disks.get(&id))
            .map(|d| d.bdev.clone())
            .ok_or_else(|| VdiskError::NotFound(name.to_string()))
    }

    pub(crate) fn disk_bdevs(&self) -> Vec<Arc<VDisk>> {
        self.st
            .borrow()
            .disks
            .values()
            .map(|d| d.bdev.clone())
            .collect()
    }

    pub(crate) fn id_of(&self, name: &str) -> Result<u64, VdiskError> {
        self.st
            .borrow()
            .disk_by_name(name)
            .ok_or_else(|| VdiskError::NotFound(name.to_string()))
    }

    /// Deletes a disk, snapshot or clone. Its children are re-parented to its parent;
    /// they keep every segment they share with it (reference counts).
    pub(crate) async fn delete_disk(&self, name: &str) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        {
            let st = self.st.borrow();
            // A running job on this disk, or one that reads from it.
            for d in st.disks.values() {
                if d.job_cancel.is_some() && (d.rec.id == id || d.rec.parent == id) {
                    return Err(VdiskError::Busy(format!(
                        "`{}` is being split{}; cancel the job or wait for it",
                        d.rec.name,
                        if d.rec.id == id { "" } else { " from it" }
                    )));
                }
            }
        }
        let _lock = self.locks.disk(id).await;
        // Stop its agents: I/O in flight drains, new I/O fails.
        self.command_agents(id, AgentCmd::Fail(IoStatus::Aborted), true)
            .await;
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let Some(mut d) = st.disks.remove(&id) else {
            return Err(VdiskError::NotFound(name.to_string()));
        };
        table::set_root(&mut d.root, None, &mut st.space);
        let parent = d.rec.parent;
        for other in st.disks.values_mut() {
            if other.rec.parent == id {
                other.rec.parent = parent;
            }
        }
        st.changed();
        drop(d);
        tracing::info!(pool = %self.shared.name, disk = name, "disk deleted");
        Ok(())
    }

    /// Grows or shrinks a disk.
    pub(crate) async fn resize_disk(&self, name: &str, size_bytes: u64) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        let geo = self.shared.geo;
        if size_bytes == 0 || !size_bytes.is_multiple_of(geo.block_size as u64) {
            return Err(VdiskError::InvalidParam {
                field: "size",
                reason: format!(
                    "{size_bytes} bytes is not a positive multiple of the block size {}",
                    geo.block_size
                ),
            });
        }
        let _lock = self.locks.disk(id).await;
        let new_blocks = size_bytes / geo.block_size as u64;
        let (old_blocks, bdev, ro) = {
            let st = self.st.borrow();
            let d = st
                .disks
                .get(&id)
                .ok_or_else(|| VdiskError::NotFound(name.into()))?;
            (d.rec.size_blocks, d.bdev.clone(), d.rec.read_only)
        };
        if ro {
            return Err(VdiskError::ReadOnly(name.to_string()));
        }
        if new_blocks < old_blocks
            && !(new_blocks % geo.segment_blocks).is_multiple_of(geo.granule_blocks)
        {
            return Err(VdiskError::InvalidParam {
                field: "size",
                reason: format!(
                    "shrinking to {size_bytes} bytes would cut a {}-byte granule; use a multiple of it",
                    geo.granule_blocks * geo.block_size as u64
                ),
            });
        }
        if new_blocks < old_blocks {
            // New I/O beyond the end fails first; then in-flight I/O drains; then the
            // tail goes.
            bdev.set_size_blocks(new_blocks);
            self.command_agents(id, AgentCmd::Barrier, true).await;
            let from = new_blocks.div_ceil(geo.segment_blocks);
            self.set_extents(id, from, u64::MAX, Vec::new());
            // A last partial segment keeps data beyond the new end: zero it so that a
            // later grow shows zeros there.
            if !new_blocks.is_multiple_of(geo.segment_blocks) {
                let vseg = new_blocks / geo.segment_blocks;
                let in_seg = new_blocks % geo.segment_blocks;
                let ext = {
                    let st = self.st.borrow();
                    st.disks[&id]
                        .root
                        .as_ref()
                        .and_then(|r| r.lookup(vseg))
                        .cloned()
                };
                if let Some(e) = ext {
                    self.zero_tail(id, &e, vseg, in_seg).await;
                }
            }
        }
        {
            let mut st = self.st.borrow_mut();
            if let Some(d) = st.disks.get_mut(&id) {
                d.rec.size_blocks = new_blocks;
            }
            st.changed();
        }
        bdev.set_size_blocks(new_blocks);
        self.push_view(id, true).await;
        self.update_free();
        Ok(())
    }

    /// Makes blocks `[in_seg, end)` of virtual segment `vseg` read as zeros
    /// (`in_seg` is granule-aligned).
    async fn zero_tail(&self, disk: u64, e: &Extent, vseg: u64, in_seg: u64) {
        let geo = self.shared.geo;
        let n = geo.segment_blocks - in_seg;
        let zeros = || crate::bdev::IoBuf::zeroed((n * geo.block_size as u64) as usize);
        let writable = self.st.borrow().disks[&disk].rec.snap_gen < e.birth;
        let one = e.at(vseg);
        if writable && one.layers.len() == 1 {
            // Nothing below the top: zeroing the top is enough.
            let _ = self.write_segment(one.layers[0].seg, in_seg, zeros()).await;
            return;
        }
        // Data below the top would show through: give the segment a writable top, zero
        // the tail there and mark it held by the top.
        if !self.make_writable(disk, vseg).await.is_success() {
            return;
        }
        let top = {
            let st = self.st.borrow();
            st.disks[&disk]
                .root
                .as_ref()
                .and_then(|r| r.lookup(vseg))
                .map(|e| e.at(vseg).layers[0].clone())
        };
        if let Some(top) = top
            && self.write_segment(top.seg, in_seg, zeros()).await.is_ok()
            && let Some(f) = &top.fill
        {
            let g = in_seg / geo.granule_blocks;
            f.set_range(g, geo.granules - g);
            if f.mark_dirty() {
                self.shared.dirty_fills.push(f.clone());
            }
        }
    }

    /// Sets or clears the read-only flag.
    pub(crate) async fn set_read_only(&self, name: &str, ro: bool) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        let _lock = self.locks.disk(id).await;
        let bdev = {
            let mut st = self.st.borrow_mut();
            let d = st
                .disks
                .get_mut(&id)
                .ok_or_else(|| VdiskError::NotFound(name.into()))?;
            if d.rec.kind == DiskKind::Snapshot && !ro {
                return Err(VdiskError::InvalidParam {
                    field: "read_only",
                    reason: format!(
                        "`{name}` is a snapshot; snapshots stay read-only (clone it instead)"
                    ),
                });
            }
            d.rec.read_only = ro;
            let b = d.bdev.clone();
            st.changed();
            b
        };
        bdev.set_read_only(ro);
        // Writes that started before the flag drain before we return.
        self.command_agents(id, AgentCmd::Barrier, true).await;
        Ok(())
    }

    /// Listing: parent, children, allocated and shared space of every disk.
    pub(crate) fn list(&self) -> Vec<DiskInfo> {
        let st = self.st.borrow();
        let name_of = |id: u64| st.disks.get(&id).map(|d| d.rec.name.clone());
        st.disks
            .values()
            .map(|d| {
                let (mut alloc, mut shared) = (0, 0);
                if let Some(r) = &d.root {
                    let mut seen = std::collections::HashSet::new();
                    r.visit_from(0, &mut |e| {
                        for s in e.segments() {
                            if seen.insert(s) {
                                if st.space.refs(s) > 1
                                    || e.birth <= d.rec.snap_gen && d.rec.kind != DiskKind::Snapshot
                                {
                                    shared += 1;
                                } else {
                                    alloc += 1;
                                }
                            }
                        }
                        true
                    });
                }
                DiskInfo {
                    name: d.rec.name.clone(),
                    uuid: d.rec.uuid,
                    id: d.rec.id,
                    kind: d.rec.kind,
                    size_bytes: d.rec.size_blocks * self.shared.geo.block_size as u64,
                    read_only: d.rec.read_only,
                    thin: d.rec.thin,
                    parent: if d.rec.parent == 0 {
                        None
                    } else {
                        name_of(d.rec.parent)
                    },
                    children: st
                        .disks
                        .values()
                        .filter(|c| c.rec.parent == d.rec.id)
                        .map(|c| c.rec.name.clone())
                        .collect(),
                    allocated_segments: alloc,
                    shared_segments: shared,
                    segment_bytes: self.shared.geo.segment_bytes(),
                    cow_policy: CowPolicy::from_u8(d.rec.cow_policy),
                    job: d.job_progress.as_ref().map(|p| {
                        let (done, total) = p.get();
                        let kind = match d.rec.job {
                            JobRecord::Decouple { .. } => "decouple",
                            _ => "split",
                        };
                        (kind.to_string(), done, total)
                    }),
                }
            })
            .collect()
    }

    /// Commits and stops: the disks' agents fail further I/O.
    pub(crate) async fn close(&self) -> Result<(), VdiskError> {
        let commit = self.commit().await;
        let disks: Vec<u64> = self.st.borrow().disks.keys().copied().collect();
        for d in &disks {
            if let Some(c) = self
                .st
                .borrow()
                .disks
                .get(d)
                .and_then(|d| d.job_cancel.clone())
            {
                c.set(true);
            }
        }
        for d in disks {
            self.command_agents(d, AgentCmd::Fail(IoStatus::Aborted), true)
                .await;
        }
        self.st.borrow_mut().closed = true;
        self.background.borrow_mut().take();
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
        self.background.borrow_mut().take();
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

enum Plan {
    Set(Extent),
    Merge(Extent),
    CopyOut(Extent),
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

/// How agents reach the controller (see [`ControllerPort`]).
pub(crate) const PORT: ControllerPort = ControllerPort {
    request: serve_request,
    notify: serve_notice,
};

/// Runs an agent's request on the controller of `pool`: the answer comes back as a
/// future.
fn serve_request(
    cores: &Cores,
    ctl_core: usize,
    pool: u64,
    request: AgentRequest,
) -> RemoteHandle<Option<IoStatus>> {
    cores.spawn_on(ctl_core, move || async move {
        match lookup(pool) {
            Some(c) => Some(c.serve(request).await),
            None => None,
        }
    })
}

/// Delivers an agent's notice to the controller of `pool`.
fn serve_notice(cores: &Cores, ctl_core: usize, pool: u64, notice: AgentNotice) {
    let _ = cores.send(ctl_core, move || {
        if let Some(c) = lookup(pool) {
            match notice {
                AgentNotice::Registered { disk, core } => c.agent_registered(disk, core),
                AgentNotice::Unregistered { disk, core } => c.agent_unregistered(disk, core),
            }
        }
    });
}

impl Controller {
    /// Resolves an agent's request.
    async fn serve(&self, request: AgentRequest) -> IoStatus {
        match request {
            AgentRequest::MakeWritable { disk, vseg } => self.make_writable(disk, vseg).await,
            AgentRequest::Materialize {
                disk,
                vseg,
                first,
                last,
            } => self.materialize(disk, vseg, first, last).await,
            AgentRequest::Punch { disk, from, to } => self.punch(disk, from, to).await,
            AgentRequest::MaybeEmpty { disk, vseg } => self.maybe_empty(disk, vseg).await,
            AgentRequest::Commit => match self.commit().await {
                Ok(()) => IoStatus::Success,
                Err(st) => st,
            },
        }
    }
}
