//! Mapping agents: one per core per virtual disk — the disk's channel on that core.
//!
//! The fast path: split the request at segment boundaries, look each segment up in
//! this core's view of the table (one descent; no lock), resolve the blocks through the
//! segment's layers, and issue the parts to the base bdevs' channels on this core.
//! Reads of the zero state are filled in place. A write the view does not allow (no
//! segment yet, a segment shared with a snapshot, a partial granule not held by the
//! top layer) parks the request and sends a **mapping fault** to the controller; the
//! controller resolves it, pushes the new view, and the agent retries the request.
//!
//! A write into a partially filled segment sets the fill bits of the granules it wrote
//! *after* it completes, so a concurrent read never sees a reused segment's old bytes.
//!
//! Every request issued to a base bdev is counted in the current **epoch**. A command
//! with the blocking flag starts a new epoch and is acknowledged once every earlier
//! epoch has drained — the controller then knows that no I/O it could have raced with is
//! still in flight.
//!
//! - this file: the agent, its registry on the core, the controller's commands, the
//!   entry point of every request, the disk's channel;
//! - `io.rs`: the I/O path (the fast path, planned reads and writes, completion);
//! - `fault.rs`: the parked path (mapping faults and other requests to the controller);
//! - `discard.rs`: unmap and write-zeroes.
//!
//! The agent is data path: it uses the map, the table, the messages (`msg.rs`) and the
//! pool's shared state (`shared.rs`), and reaches the controller only through the
//! `msg::ControllerPort` in the latter.

mod discard;
mod fault;
mod io;
mod recent;

use super::diff;
use super::map::{Extent, Source};
use super::maybe_mapped::MaybeMapped;
use super::msg::{AgentCmd, AgentNotice, Below, RangeState, View};
use super::shared::PoolShared;
use crate::bdev::{Bdev, BdevIo, BlockRun, Change, Channel, Deferred, Epochs, IoKind, IoStatus};
use crate::reactor;
use crossbeam_utils::CachePadded;
use fault::FaultKey;
use io::{IoCtx, Passed};
use recent::Recent;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The agent of one disk on one core.
pub struct Agent {
    shared: Arc<PoolShared>,
    /// The disk this agent serves (its own requests go through it, e.g. zeros written
    /// for a write-zeroes that must copy-on-write).
    bdev: Arc<dyn Bdev>,
    io_counts: Arc<IoCounts>,
    /// Which segments may hold an extent (`maybe_mapped.rs`): a write where none can
    /// faults without a descent of the view.
    maybe_mapped: Arc<MaybeMapped>,
    disk: u64,
    core: usize,
    base: Vec<Channel>,
    /// log2 of each container's block size.
    base_shift: Vec<u32>,
    /// Whether each container may take requests readdressed, with no completion coming
    /// back through the agent: its channel tracks drains ([`Channel::drained`]) and its
    /// blocks are the disk's size (the request's block count stays as it is).
    base_readdress: Vec<bool>,
    view: RefCell<Option<Arc<View>>>,
    /// Views a new one replaced, dropped once the command that replaced them is done
    /// ([`Agent::drop_retired_later`]).
    retired: RefCell<Vec<Arc<View>>>,
    /// Extents set by write faults since the view (`recent.rs`): every lookup reads
    /// them before the view.
    recent: RefCell<Recent>,
    overrides: RefCell<Vec<(u64, u64, RangeState)>>,
    quiesced: Cell<bool>,
    /// Requests held until a view arrives, a quiesce ends or an invalid range clears.
    held: RefCell<VecDeque<BdevIo>>,
    /// Tasks waiting for the first view (or a failure) to answer status queries.
    status_waiters: RefCell<Vec<std::task::Waker>>,
    faults: RefCell<HashMap<FaultKey, Vec<BdevIo>>>,
    /// Write faults parked and not sent to the controller yet.
    write_batch: RefCell<Vec<u64>>,
    /// Whether a task that sends `write_batch` is spawned and has not run yet.
    write_sender: Cell<bool>,
    /// Batches of write faults sent and not answered yet.
    write_batches: Cell<usize>,
    ctxs: RefCell<slab::Slab<IoCtx>>,
    passed: RefCell<slab::Slab<Passed>>,
    epochs: Epochs,
    deferred: Rc<Deferred>,
    failed: Cell<Option<IoStatus>>,
    /// This core's channel to the external snapshot the view reads through to
    /// (`esnap.rs`), opened at its first read.
    external: RefCell<Option<Channel>>,
    me: Weak<Agent>,
}

#[derive(Default)]
struct Registry {
    agents: RefCell<HashMap<(u64, u64), Weak<Agent>>>,
}

fn registry() -> Rc<Registry> {
    reactor::local(Registry::default)
}

/// The agent of (`pool`, `disk`) on this core, if it has one.
fn local_agent(pool: u64, disk: u64) -> Option<Rc<Agent>> {
    registry()
        .agents
        .borrow()
        .get(&(pool, disk))
        .and_then(Weak::upgrade)
}

/// Applies `cmd` to the agent of (`pool`, `disk`) on this core; with `blocking`, returns
/// once every I/O it started before the command has completed.
pub(crate) async fn apply(pool: u64, disk: u64, cmd: AgentCmd, blocking: bool) {
    if let Some(a) = local_agent(pool, disk) {
        a.command(cmd);
        if blocking {
            // Requests readdressed straight to a container are in no epoch: the
            // container's channel tells when everything submitted to it so far is done.
            let containers: Vec<_> = a.base.iter().filter_map(Channel::drained).collect();
            a.epochs.drain().await;
            for c in containers {
                c.await;
            }
        }
        a.drop_retired_later();
    }
}

/// Applies `cmd` at once, without waiting.
pub(crate) fn apply_now(pool: u64, disk: u64, cmd: AgentCmd) {
    if let Some(a) = local_agent(pool, disk) {
        a.command(cmd);
        a.drop_retired_later();
    }
}

/// The entries the agent of (`pool`, `disk`) on this core sees for `[from, to)` ("get
/// entries", for tests and diagnostics).
pub fn view_entries(pool: u64, disk: u64, from: u64, to: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    if let Some(a) = local_agent(pool, disk)
        && let Some(v) = a.view.borrow().as_ref()
    {
        a.recent
            .borrow()
            .visit_from(v.root.as_ref(), from, &mut |e| {
                if e.vseg >= to {
                    return false;
                }
                out.push(e.clone());
                true
            });
    }
    out
}

/// What the agent of (`pool`, `disk`) on this core would write in place and read from
/// now. `None` without an agent, or with a failed one (it does neither). For the
/// simulator's audit (`audit.rs`).
pub(crate) fn claims(pool: u64, disk: u64) -> Option<Claims> {
    let a = local_agent(pool, disk)?;
    if a.failed.get().is_some() {
        return None;
    }
    let mut c = Claims::default();
    if let Some(v) = a.view.borrow().as_ref() {
        a.recent.borrow().visit_from(v.root.as_ref(), 0, &mut |e| {
            if e.state != super::map::ExtentState::Mapped {
                return true;
            }
            let run = if e.is_plain() { e.len as u64 } else { 1 };
            for i in 0..run {
                let vseg = e.vseg + i;
                let state = a.override_at(vseg);
                if state != Some(RangeState::Invalid) {
                    let layers = e.layers.iter();
                    c.read_from.extend(layers.map(|l| (vseg, l.seg() + i)));
                }
                if state.is_none() && e.birth.get() > v.snap_gen {
                    c.write_in_place.push((vseg, e.layers[0].seg() + i));
                }
            }
            true
        });
    }
    Some(c)
}

/// What an agent may do with the segments of its view ([`claims`]), as (virtual
/// segment, physical segment).
#[derive(Debug, Default)]
pub(crate) struct Claims {
    /// Every mapped segment born after the view's snapshot generation (its top layer),
    /// outside the ranges the controller laid a state over.
    pub write_in_place: Vec<(u64, u64)>,
    /// Every layer of every mapped segment, outside the ranges laid invalid.
    pub read_from: Vec<(u64, u64)>,
}

/// How many extents the agent of (`pool`, `disk`) on this core keeps beside its view
/// (`recent.rs`), and its view's version; `None` without an agent or a view.
#[cfg(test)]
pub(crate) fn beside_view(pool: u64, disk: u64) -> Option<(usize, u64)> {
    let a = local_agent(pool, disk)?;
    let version = a.view.borrow().as_ref()?.version;
    Some((a.recent.borrow().len(), version))
}

/// The view of the agent of (`pool`, `disk`) on this core, weakly (tests: when it is
/// freed).
#[cfg(test)]
pub(crate) fn view_weak(pool: u64, disk: u64) -> Option<std::sync::Weak<View>> {
    let a = local_agent(pool, disk)?;
    let v = a.view.borrow();
    v.as_ref().map(Arc::downgrade)
}

/// Drops `roots`, freeing the nodes no one else holds a few at a time and yielding
/// whenever a turn of the core ([`DROP_TURN`]) is spent, so that commands and I/O run
/// in between. A node another holder still references is only let go (its count
/// drops); the last holder frees it.
pub(crate) async fn drop_in_turns(mut roots: Vec<Arc<super::table::Node>>) {
    /// Nodes let go between two looks at the clock.
    const NODES_PER_LOOK: usize = 32;
    let mut turn = reactor::Slice::new(DROP_TURN);
    let mut since = 0;
    while let Some(n) = roots.pop() {
        if let Ok(node) = Arc::try_unwrap(n)
            && let super::table::NodeKind::Internal { children, .. } = node.kind
        {
            roots.extend(children);
        }
        since += 1;
        if since >= NODES_PER_LOOK {
            since = 0;
            if turn.spent() {
                turn.next_turn().await;
            }
        }
    }
}

/// The longest [`drop_in_turns`] holds the core before it yields.
const DROP_TURN: std::time::Duration = std::time::Duration::from_micros(50);

/// Requests served by one disk, per core (each core writes only its own slot).
pub(crate) struct IoCounts(Box<[CachePadded<AtomicU64>]>);

impl IoCounts {
    pub(crate) fn new(cores: usize) -> IoCounts {
        IoCounts(
            (0..cores.max(1))
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        )
    }

    /// Counts a request on `core` (single writer per slot: no atomic RMW): when it is
    /// readdressed to a container, else when it completes.
    #[inline]
    pub(crate) fn count(&self, core: usize) {
        if let Some(c) = self.0.get(core) {
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Requests served so far, all cores.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl Agent {
    /// Creates the agent of disk `disk` (served as `bdev`, counting into `io_counts`) on
    /// the current core and announces it to the controller (I/O waits for the first
    /// view).
    pub(crate) fn create(
        shared: Arc<PoolShared>,
        bdev: Arc<dyn Bdev>,
        disk: u64,
        io_counts: Arc<IoCounts>,
        maybe_mapped: Arc<MaybeMapped>,
    ) -> Result<Rc<Agent>, crate::bdev::BdevError> {
        let base = shared
            .containers
            .iter()
            .map(|c| Channel::get(&c.bdev))
            .collect::<Result<Vec<_>, _>>()?;
        // Block sizes are powers of two (BdevProps::new checks it).
        let base_shift: Vec<u32> = shared
            .containers
            .iter()
            .map(|c| c.bdev.block_size().trailing_zeros())
            .collect();
        let disk_shift = shared.geo.block_size.trailing_zeros();
        let base_readdress = base
            .iter()
            .zip(&base_shift)
            .map(|(c, &shift)| c.tracks_drain() && shift == disk_shift)
            .collect();
        let core = reactor::current_core().unwrap_or(0);
        let agent = Rc::new_cyclic(|me| Agent {
            shared: shared.clone(),
            bdev,
            io_counts,
            maybe_mapped,
            disk,
            core,
            base,
            base_shift,
            base_readdress,
            view: RefCell::new(None),
            retired: RefCell::new(Vec::new()),
            recent: RefCell::new(Recent::default()),
            overrides: RefCell::new(Vec::new()),
            quiesced: Cell::new(false),
            held: RefCell::new(VecDeque::new()),
            status_waiters: RefCell::new(Vec::new()),
            faults: RefCell::new(HashMap::new()),
            write_batch: RefCell::new(Vec::new()),
            write_sender: Cell::new(false),
            write_batches: Cell::new(0),
            ctxs: RefCell::new(slab::Slab::with_capacity(256)),
            passed: RefCell::new(slab::Slab::with_capacity(256)),
            epochs: Epochs::default(),
            deferred: Deferred::current(),
            failed: Cell::new(None),
            external: RefCell::new(None),
            me: me.clone(),
        });
        registry()
            .agents
            .borrow_mut()
            .insert((shared.id, disk), Rc::downgrade(&agent));
        shared.tell_controller(AgentNotice::Registered { disk, core });
        Ok(agent)
    }

    /// Drops the views new ones replaced, in a task of their own, a turn of the core at
    /// a time ([`drop_in_turns`]). Dropping a view frees the nodes only it still held —
    /// the table's nodes the controller copied since that view was pushed, thousands of
    /// leaves under a stream of first writes (about a millisecond of freeing). Done in
    /// the command, it delayed the command's answer (a snapshot waits for its view push
    /// to be acknowledged on every core); done at once after it, it delayed the next
    /// command's, and every I/O of the core.
    fn drop_retired_later(&self) {
        let views = std::mem::take(&mut *self.retired.borrow_mut());
        if !views.is_empty() {
            reactor::spawn_local(async move {
                let roots = views
                    .into_iter()
                    .filter_map(|v| Arc::try_unwrap(v).ok().and_then(|v| v.root))
                    .collect();
                drop_in_turns(roots).await
            })
            .detach();
        }
    }

    fn rc(&self) -> Rc<Agent> {
        self.me.upgrade().expect("agent alive while used")
    }

    fn command(&self, cmd: AgentCmd) {
        match cmd {
            AgentCmd::SetView(v) => {
                let newer = self
                    .view
                    .borrow()
                    .as_ref()
                    .is_none_or(|cur| v.version >= cur.version);
                if newer {
                    self.recent.borrow_mut().view_applied(v.version);
                    if let Some(old) = self.view.replace(Some(v)) {
                        self.retired.borrow_mut().push(old);
                    }
                }
                self.release_held();
            }
            AgentCmd::AddExtents { version, extents } => {
                let cur = self.view.borrow().as_ref().map(|v| v.version);
                self.recent.borrow_mut().add(version, cur, &extents);
            }
            AgentCmd::SetState { from, to, state } => {
                let mut o = self.overrides.borrow_mut();
                o.retain(|&(f, t, _)| t <= from || f >= to);
                if let Some(s) = state {
                    o.push((from, to, s));
                }
                drop(o);
                self.release_held();
            }
            AgentCmd::Quiesce => self.quiesced.set(true),
            AgentCmd::Activate => {
                self.quiesced.set(false);
                self.release_held();
            }
            AgentCmd::Fail(status) => {
                self.failed.set(Some(status));
                let held: Vec<BdevIo> = self.held.borrow_mut().drain(..).collect();
                for io in held {
                    self.deferred.complete(io, status);
                }
                // Status waiters learn the answer is "unknown" (nothing is held now).
                self.release_held();
            }
            AgentCmd::Resume => {
                self.failed.set(None);
                self.release_held();
            }
            AgentCmd::Barrier => {}
            AgentCmd::Init {
                view,
                overrides,
                quiesced,
                failed,
            } => {
                *self.overrides.borrow_mut() = overrides;
                self.quiesced.set(quiesced);
                if let Some(st) = failed {
                    self.command(AgentCmd::Fail(st));
                }
                self.command(AgentCmd::SetView(view));
            }
        }
    }

    /// True if what no layer holds reads as zeros (no external snapshot below).
    pub(super) fn zeros_below(&self) -> bool {
        self.view
            .borrow()
            .as_ref()
            .is_none_or(|v| matches!(v.below, Below::Zeros))
    }

    /// This core's channel to the external snapshot `b`.
    pub(super) fn external_channel(&self, b: &Arc<dyn Bdev>) -> Result<Channel, IoStatus> {
        let mut cur = self.external.borrow_mut();
        if let Some(c) = cur.as_ref()
            && c.bdev().id() == b.id()
        {
            return Ok(c.clone());
        }
        let c = Channel::get(b).map_err(|e| {
            tracing::error!(bdev = b.name(), error = %e, "external snapshot: no channel");
            IoStatus::InternalError
        })?;
        *cur = Some(c.clone());
        Ok(c)
    }

    /// Whether status queries answer from the table: the agent has a view, or the
    /// disk failed (then "unknown" is the answer until it resumes).
    fn status_known(&self) -> bool {
        self.view.borrow().is_some() || self.failed.get().is_some()
    }

    fn release_held(&self) {
        if self.status_known() {
            for w in self.status_waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
        if self.quiesced.get() || self.view.borrow().is_none() {
            return;
        }
        let held: Vec<BdevIo> = self.held.borrow_mut().drain(..).collect();
        for io in held {
            self.resubmit(io);
        }
    }

    /// Submits a request again after it waited (held, or parked on a mapping fault),
    /// checked once more against the disk as it is now: the disk may have shrunk or
    /// become read-only meanwhile, and a write past a new end must not reach the table.
    fn resubmit(&self, io: BdevIo) {
        let status = crate::bdev::check_io(self.bdev.as_ref(), &io);
        if status.is_success() {
            self.submit(io);
        } else {
            self.deferred.complete(io, status);
        }
    }

    fn override_at(&self, vseg: u64) -> Option<RangeState> {
        let o = self.overrides.borrow();
        if o.is_empty() {
            return None;
        }
        let mut worst = None;
        for &(f, t, s) in o.iter() {
            if vseg >= f && vseg < t {
                if s == RangeState::Invalid {
                    return Some(s);
                }
                worst = Some(s);
            }
        }
        worst
    }

    /// Entry point for every request of this disk on this core.
    pub(crate) fn submit(&self, io: BdevIo) {
        if let Some(st) = self.failed.get() {
            self.deferred.complete(io, st);
            return;
        }
        if self.quiesced.get() || self.view.borrow().is_none() {
            self.held.borrow_mut().push_back(io);
            return;
        }
        // The common case first: one segment, one physical location.
        let io = match self.fast_path(io) {
            Ok(()) => return,
            Err(io) => io,
        };
        match io.kind {
            IoKind::Read => self.read(io),
            IoKind::Write => self.write(io),
            IoKind::Unmap | IoKind::WriteZeroes => {
                reactor::spawn_local(self.rc().discard(io)).detach();
            }
            IoKind::Flush => {
                let me = self.rc();
                reactor::spawn_local(async move {
                    let st = me.commit().await;
                    io.complete(st);
                })
                .detach();
            }
        }
    }

    /// Allocation runs of a range, from this core's view. Where this core does not know
    /// the mapping (no view yet: a fresh agent before the controller's first view; a
    /// range laid invalid while the controller changes it; a failed disk) the answer is
    /// "data": a client may skip reading what block status calls a hole, so only a
    /// mapping known to be a hole is reported as one.
    fn block_status(&self, offset_blocks: u64, num_blocks: u64) -> Vec<BlockRun> {
        let geo = self.shared.geo;
        let mut out: Vec<BlockRun> = Vec::new();
        let mut push = |cnt: u64, allocated: bool, zero: bool| match out.last_mut() {
            Some(l) if l.allocated == allocated && l.zero == zero => l.num_blocks += cnt,
            _ => out.push(BlockRun {
                num_blocks: cnt,
                allocated,
                zero,
            }),
        };
        let view = self.view.borrow();
        let recent = self.recent.borrow();
        let root = match view.as_ref() {
            Some(v) if self.failed.get().is_none() => v.root.as_ref(),
            _ => {
                push(num_blocks, true, false);
                return out;
            }
        };
        // Below an external snapshot, what no layer holds is its data.
        let zero_below = view
            .as_ref()
            .is_none_or(|v| matches!(v.below, Below::Zeros));
        let mut at = offset_blocks;
        let end = offset_blocks + num_blocks;
        while at < end {
            let vseg = at / geo.segment_blocks;
            let b0 = at % geo.segment_blocks;
            let n = (end - at).min(geo.segment_blocks - b0);
            if self.override_at(vseg) == Some(RangeState::Invalid) {
                push(n, true, false);
                at += n;
                continue;
            }
            let e = recent.lookup(root, vseg);
            for (_, cnt, src) in geo.resolve_runs(&self.shared.fills, e, vseg, b0, n) {
                match src {
                    Source::Zero if zero_below => push(cnt, false, true),
                    Source::Zero | Source::Seg(_) | Source::Error => push(cnt, true, false),
                }
            }
            at += n;
        }
        out
    }
}

impl Agent {
    /// How deep in each extent's layers the blocks of a range are found, from this
    /// core's view: runs `(num_blocks, depth)`, depth 0 where no layer holds the block
    /// (it reads as zeros), `i + 1` in layer `i` (the disk's own top layer is 1; the
    /// layers below it are shared with a snapshot). `None` where the view does not
    /// know (see [`Agent::block_status`]).
    fn allocation_depth(&self, offset_blocks: u64, num_blocks: u64) -> Option<Vec<(u64, u32)>> {
        if self.failed.get().is_some() {
            return None;
        }
        let geo = self.shared.geo;
        let view = self.view.borrow();
        let recent = self.recent.borrow();
        let root = view.as_ref()?.root.as_ref();
        // Below an external snapshot, what no layer holds is in it: one level below the
        // extent's layers (2 where the disk maps nothing).
        let external = !view
            .as_ref()
            .is_none_or(|v| matches!(v.below, Below::Zeros));
        let mut out: Vec<(u64, u32)> = Vec::new();
        let mut push = |n: u64, depth: u32| match out.last_mut() {
            Some(l) if l.1 == depth => l.0 += n,
            _ => out.push((n, depth)),
        };
        let mut at = offset_blocks;
        let end = offset_blocks + num_blocks;
        while at < end {
            let vseg = at / geo.segment_blocks;
            if self.override_at(vseg) == Some(RangeState::Invalid) {
                return None;
            }
            let seg_end = ((vseg + 1) * geo.segment_blocks).min(end);
            let Some(e) = recent.lookup(root, vseg).map(|e| e.at(vseg)) else {
                push(seg_end - at, if external { 2 } else { 0 });
                at = seg_end;
                continue;
            };
            while at < seg_end {
                let g = geo.granule_of(at % geo.segment_blocks);
                let g_end = (vseg * geo.segment_blocks + (g + 1) * geo.granule_blocks).min(seg_end);
                let depth = if e.state == super::map::ExtentState::Error {
                    1
                } else {
                    e.layers
                        .iter()
                        .position(|l| !l.is_partial() || self.shared.fills.get(l.seg()).test(g))
                        .map_or(
                            if external {
                                e.layers.len() as u32 + 1
                            } else {
                                0
                            },
                            |i| i as u32 + 1,
                        )
                };
                push(g_end - at, depth);
                at = g_end;
            }
        }
        Some(out)
    }

    /// Which blocks of a range differ from what `base`'s view shows (the two tables
    /// walked together, `diff.rs`), as runs `(num_blocks, change)`; `Unknown` where the
    /// tables hold no common layer. `None` unless both agents serve the same pool from
    /// a view with no range laid invalid over it.
    fn changed_since(
        &self,
        base: &Agent,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> Option<Vec<(u64, Change)>> {
        if !Arc::ptr_eq(&self.shared, &base.shared)
            || self.failed.get().is_some()
            || base.failed.get().is_some()
        {
            return None;
        }
        let geo = self.shared.geo;
        let end = offset_blocks + num_blocks;
        let (v0, v1) = (
            offset_blocks / geo.segment_blocks,
            end.div_ceil(geo.segment_blocks),
        );
        if (v0..v1).any(|v| {
            self.override_at(v) == Some(RangeState::Invalid)
                || base.override_at(v) == Some(RangeState::Invalid)
        }) {
            return None;
        }
        let (mine, theirs) = (self.view.borrow(), base.view.borrow());
        let (a, b) = (theirs.as_ref()?, mine.as_ref()?);
        // With the extents each keeps beside its view laid over it.
        let over = |agent: &Agent| -> Vec<Extent> {
            let recent = agent.recent.borrow();
            recent.range(v0, v1).into_iter().cloned().collect()
        };
        let (over_a, over_b) = (over(base), over(self));
        let page = diff::changed_ranges(
            (a.root.as_ref(), &over_a),
            (b.root.as_ref(), &over_b),
            &self.shared.fills,
            geo,
            offset_blocks..end,
            usize::MAX,
            u64::MAX,
        );
        let mut out = Vec::with_capacity(page.runs.len() * 2 + 1);
        let mut at = offset_blocks;
        let mut unknown = page.to_compare.iter().peekable();
        for r in page.runs {
            if r.offset_blocks > at {
                out.push((r.offset_blocks - at, Change::Same));
                at = r.offset_blocks;
            }
            // The run, with its parts to compare (sub-runs of it, in order).
            let end_r = r.offset_blocks + r.num_blocks;
            while let Some(u) = unknown.next_if(|u| u.offset_blocks < end_r) {
                if u.offset_blocks > at {
                    out.push((u.offset_blocks - at, Change::Changed));
                }
                out.push((u.num_blocks, Change::Unknown));
                at = u.offset_blocks + u.num_blocks;
            }
            if end_r > at {
                out.push((end_r - at, Change::Changed));
            }
            at = end_r;
        }
        if at < end {
            out.push((end - at, Change::Same));
        }
        Some(out)
    }
}

/// The disk's channel on one core.
pub(crate) struct AgentChannel(pub Rc<Agent>);

impl crate::bdev::BdevChannel for AgentChannel {
    #[inline]
    fn submit(&self, io: BdevIo) {
        self.0.submit(io);
    }

    fn block_status(&self, offset_blocks: u64, num_blocks: u64) -> Vec<BlockRun> {
        self.0.block_status(offset_blocks, num_blocks)
    }

    fn changed_since(
        &self,
        base: &dyn crate::bdev::BdevChannel,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> Option<Vec<(u64, Change)>> {
        let base = base.as_any()?.downcast_ref::<AgentChannel>()?;
        self.0.changed_since(&base.0, offset_blocks, num_blocks)
    }

    fn allocation_depth(&self, offset_blocks: u64, num_blocks: u64) -> Option<Vec<(u64, u32)>> {
        self.0.allocation_depth(offset_blocks, num_blocks)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn status_ready(&self) -> Option<crate::bdev::Drained> {
        let agent = self.0.clone();
        Some(Box::pin(std::future::poll_fn(move |cx| {
            if agent.status_known() {
                return std::task::Poll::Ready(());
            }
            agent.status_waiters.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })))
    }
}

impl Drop for AgentChannel {
    fn drop(&mut self) {
        let a = &self.0;
        registry()
            .agents
            .borrow_mut()
            .remove(&(a.shared.id, a.disk));
        a.shared.tell_controller(AgentNotice::Unregistered {
            disk: a.disk,
            core: a.core,
        });
    }
}
