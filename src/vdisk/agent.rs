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

use super::map::{Extent, ExtentState, Fill, PhysSeg, Source};
use super::msg::{AgentCmd, AgentNotice, AgentRequest, RangeState, View};
use super::shared::PoolShared;
use crate::bdev::{
    Bdev, BdevIo, BlockRun, Channel, Deferred, Epochs, IoBuf, IoKind, IoSink, IoStatus, Origin,
};
use crate::reactor;
use crossbeam_utils::CachePadded;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a parked request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FaultKey {
    /// A writable top layer at this virtual segment.
    Write(u64),
    /// Granules `[first, last]` of this segment held by the writable top layer.
    Materialize(u64, u64, u64),
}

/// One part of a request for a base bdev.
#[derive(Clone, Copy, Debug)]
struct Piece {
    /// Global physical block (segment × segment_blocks + block in segment).
    phys: u64,
    blocks: u64,
    byte_off: usize,
}

struct IoCtx {
    parent: BdevIo,
    pending: u32,
    status: IoStatus,
    epoch: u64,
    fills: SmallVec<[(Arc<Fill>, u64, u64); 1]>,
}

/// A request the fast path passed down to a base bdev as it is (see
/// [`BdevIo::redirect`]): where it goes back to, and the epoch it counts in.
struct Passed {
    origin: Origin,
    epoch: u64,
    /// Granules `(fill, first, count)` the top layer holds once the write succeeds.
    fill: Option<(Arc<Fill>, u64, u64)>,
}

/// Tag bit of requests passed down whole; the other tags are keys of `ctxs`.
const PASSED: u64 = 1 << 63;

/// The agent of one disk on one core.
pub struct Agent {
    shared: Arc<PoolShared>,
    /// The disk this agent serves (its own requests go through it, e.g. zeros written
    /// for a write-zeroes that must copy-on-write).
    bdev: Arc<dyn Bdev>,
    io_counts: Arc<IoCounts>,
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
    overrides: RefCell<Vec<(u64, u64, RangeState)>>,
    quiesced: Cell<bool>,
    /// Requests held until a view arrives, a quiesce ends or an invalid range clears.
    held: RefCell<VecDeque<BdevIo>>,
    faults: RefCell<HashMap<FaultKey, Vec<BdevIo>>>,
    ctxs: RefCell<slab::Slab<IoCtx>>,
    passed: RefCell<slab::Slab<Passed>>,
    epochs: Epochs,
    deferred: Rc<Deferred>,
    failed: Cell<Option<IoStatus>>,
    me: Weak<Agent>,
}

#[derive(Default)]
struct Registry {
    agents: RefCell<HashMap<(u64, u64), Weak<Agent>>>,
}

fn registry() -> Rc<Registry> {
    reactor::local(Registry::default)
}

/// Applies `cmd` to the agent of (`pool`, `disk`) on this core; with `blocking`, returns
/// once every I/O it started before the command has completed.
pub(crate) async fn apply(pool: u64, disk: u64, cmd: AgentCmd, blocking: bool) {
    let agent = registry()
        .agents
        .borrow()
        .get(&(pool, disk))
        .and_then(Weak::upgrade);
    if let Some(a) = agent {
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
    }
}

/// Applies `cmd` at once, without waiting.
pub(crate) fn apply_now(pool: u64, disk: u64, cmd: AgentCmd) {
    let agent = registry()
        .agents
        .borrow()
        .get(&(pool, disk))
        .and_then(Weak::upgrade);
    if let Some(a) = agent {
        a.command(cmd);
    }
}

/// The entries the agent of (`pool`, `disk`) on this core sees for `[from, to)` ("get
/// entries", for tests and diagnostics).
pub fn view_entries(pool: u64, disk: u64, from: u64, to: u64) -> Vec<Extent> {
    let agent = registry()
        .agents
        .borrow()
        .get(&(pool, disk))
        .and_then(Weak::upgrade);
    let mut out = Vec::new();
    if let Some(a) = agent
        && let Some(v) = a.view.borrow().as_ref()
        && let Some(r) = &v.root
    {
        r.visit_from(from, &mut |e| {
            if e.vseg >= to {
                return false;
            }
            out.push(e.clone());
            true
        });
    }
    out
}

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
            disk,
            core,
            base,
            base_shift,
            base_readdress,
            view: RefCell::new(None),
            overrides: RefCell::new(Vec::new()),
            quiesced: Cell::new(false),
            held: RefCell::new(VecDeque::new()),
            faults: RefCell::new(HashMap::new()),
            ctxs: RefCell::new(slab::Slab::with_capacity(256)),
            passed: RefCell::new(slab::Slab::with_capacity(256)),
            epochs: Epochs::default(),
            deferred: Deferred::current(),
            failed: Cell::new(None),
            me: me.clone(),
        });
        registry()
            .agents
            .borrow_mut()
            .insert((shared.id, disk), Rc::downgrade(&agent));
        shared.tell_controller(AgentNotice::Registered { disk, core });
        Ok(agent)
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
                    *self.view.borrow_mut() = Some(v);
                }
                self.release_held();
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

    fn release_held(&self) {
        if self.quiesced.get() || self.view.borrow().is_none() {
            return;
        }
        let held: Vec<BdevIo> = self.held.borrow_mut().drain(..).collect();
        for io in held {
            self.submit(io);
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

    /// A read or write inside one segment whose blocks all live in one physical segment
    /// (a full layer, or granules the top layer holds) and, for a write, may be written
    /// there now — also whole granules the top layer does not hold yet (the first write
    /// after a snapshot), which it holds once the write completes. The request itself
    /// goes down, readdressed; no planning. Anything else goes back to the caller.
    #[inline]
    #[allow(clippy::result_large_err)] // the request itself comes back, by design
    fn fast_path(&self, mut io: BdevIo) -> Result<(), BdevIo> {
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
        let (phys, fill) = {
            let view = self.view.borrow();
            let Some(v) = view.as_ref() else {
                return Err(io);
            };
            let Some(e) = v.root.as_ref().and_then(|r| r.lookup(vseg)) else {
                return Err(io);
            };
            if e.state != ExtentState::Mapped || (write && e.birth <= v.snap_gen) {
                return Err(io);
            }
            let top = &e.layers[0];
            match &top.fill {
                None => (top.seg + (vseg - e.vseg), None),
                Some(f) => {
                    let (g0, n) = geo.granule_span(b0, io.num_blocks);
                    if f.all_set(g0, n) {
                        (top.seg, None)
                    } else if write
                        && geo.granule_aligned(b0)
                        && geo.granule_aligned(b0 + io.num_blocks)
                    {
                        (top.seg, Some((f.clone(), g0, n)))
                    } else {
                        return Err(io);
                    }
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

    fn read(&self, mut io: BdevIo) {
        let geo = self.shared.geo;
        let bs = geo.block_size as u64;
        let mut pieces: SmallVec<[Piece; 4]> = SmallVec::new();
        let mut zeros: SmallVec<[(usize, usize); 2]> = SmallVec::new();
        {
            let view = self.view.borrow();
            let view = view.as_ref().expect("checked by submit");
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
                let e = view.root.as_ref().and_then(|r| r.lookup(vseg));
                for (b, cnt, src) in geo.resolve_runs(e, vseg, b0, n) {
                    let off = byte + ((b - b0) * bs) as usize;
                    match src {
                        Source::Zero => zeros.push((off, (cnt * bs) as usize)),
                        Source::Error => {
                            self.deferred.complete(io, IoStatus::MediaError);
                            return;
                        }
                        Source::Seg(s) => push_piece(
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
        }
        for (off, len) in zeros {
            io.zero_fill(off, len);
        }
        if pieces.is_empty() {
            self.io_counts.count(self.core);
            self.deferred.complete(io, IoStatus::Success);
        } else {
            self.issue(io, &pieces, SmallVec::new());
        }
    }

    fn write(&self, io: BdevIo) {
        let geo = self.shared.geo;
        let bs = geo.block_size as u64;
        let mut pieces: SmallVec<[Piece; 4]> = SmallVec::new();
        let mut fills: SmallVec<[(Arc<Fill>, u64, u64); 1]> = SmallVec::new();
        let mut fault = None;
        {
            let view = self.view.borrow();
            let view = view.as_ref().expect("checked by submit");
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
                let Some(e) = view.root.as_ref().and_then(|r| r.lookup(vseg)) else {
                    fault = Some(FaultKey::Write(vseg));
                    break;
                };
                if e.state == ExtentState::Error {
                    self.deferred.complete(io, IoStatus::MediaError);
                    return;
                }
                if e.birth <= view.snap_gen {
                    fault = Some(FaultKey::Write(vseg));
                    break;
                }
                let top = &e.layers[0];
                let seg: PhysSeg = if top.fill.is_none() {
                    top.seg + (vseg - e.vseg)
                } else {
                    top.seg
                };
                if let Some(f) = &top.fill {
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
                            fills.push((f.clone(), w0, wn));
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
    fn issue(&self, io: BdevIo, pieces: &[Piece], fills: SmallVec<[(Arc<Fill>, u64, u64); 1]>) {
        let geo = self.shared.geo;
        let bs = geo.block_size as u64;
        let kind = io.kind;
        let epoch = self.epochs.start();
        let (key, children) = {
            let mut ctxs = self.ctxs.borrow_mut();
            let entry = ctxs.vacant_entry();
            let key = entry.key();
            let ctx = entry.insert(IoCtx {
                parent: io,
                pending: pieces.len() as u32,
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
            (key, children)
        };
        let sink: Rc<dyn IoSink> = self.rc();
        for (ci, child) in children {
            self.base[ci].submit_unchecked(child.on_complete(sink.clone(), key as u64));
        }
    }

    fn park(&self, io: BdevIo, key: FaultKey) {
        let first = {
            let mut f = self.faults.borrow_mut();
            match f.get_mut(&key) {
                Some(v) => {
                    v.push(io);
                    false
                }
                None => {
                    f.insert(key, vec![io]);
                    true
                }
            }
        };
        if first {
            let me = self.rc();
            reactor::spawn_local(async move {
                let st = me.resolve(key).await;
                let ios = me.faults.borrow_mut().remove(&key).unwrap_or_default();
                for io in ios {
                    if st.is_success() {
                        me.submit(io);
                    } else {
                        io.complete(st);
                    }
                }
            })
            .detach();
        }
    }

    /// Sends `request` to the controller and returns its answer (Aborted if the pool is
    /// gone).
    async fn ask(&self, request: AgentRequest) -> IoStatus {
        match self.shared.ask_controller(request).await {
            Ok(Some(st)) => st,
            _ => IoStatus::Aborted,
        }
    }

    async fn resolve(&self, key: FaultKey) -> IoStatus {
        let disk = self.disk;
        match key {
            FaultKey::Write(vseg) => self.ask(AgentRequest::MakeWritable { disk, vseg }).await,
            FaultKey::Materialize(vseg, first, last) => {
                self.ask(AgentRequest::Materialize {
                    disk,
                    vseg,
                    first,
                    last,
                })
                .await
            }
        }
    }

    async fn commit(&self) -> IoStatus {
        self.ask(AgentRequest::Commit).await
    }

    /// Unmap and write-zeroes: whole segments return to the zero state (the controller
    /// frees them); parts of segments are cleared in place where this disk alone holds
    /// them, and written with zeros (copy-on-write as needed) where they are shared.
    async fn discard(self: Rc<Self>, io: BdevIo) {
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
                        v.root
                            .as_ref()
                            .and_then(|r| r.lookup(vseg))
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
            let writable = e.birth > snap_gen && self.override_at(vseg).is_none();
            if writable && e.layers.len() == 1 {
                let top = &e.layers[0];
                // Whole granules: clear their bits; edges: zero in place.
                let (g0, gn) = match &top.fill {
                    Some(_) => geo.whole_granules(b0, n),
                    None => (0, 0),
                };
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
                    let held = top
                        .fill
                        .as_ref()
                        .is_none_or(|f| (sb / gb..(sb + sn).div_ceil(gb)).any(|g| f.test(g)));
                    if !held {
                        continue;
                    }
                    let phys = top.seg * geo.segment_blocks + sb;
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
                    && let Some(f) = &top.fill
                    && f.clear_range(g0, gn)
                {
                    if f.mark_dirty() {
                        self.shared.dirty_fills.push(f.clone());
                    }
                    if f.is_empty() {
                        let st = self.ask(AgentRequest::MaybeEmpty { disk, vseg }).await;
                        status = status.worst(st);
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
        io.complete(status);
    }

    /// Allocation runs of a range, from this core's view.
    fn block_status(&self, offset_blocks: u64, num_blocks: u64) -> Vec<BlockRun> {
        let geo = self.shared.geo;
        let mut out: Vec<BlockRun> = Vec::new();
        let view = self.view.borrow();
        let root = view.as_ref().and_then(|v| v.root.as_ref());
        let mut at = offset_blocks;
        let end = offset_blocks + num_blocks;
        while at < end {
            let vseg = at / geo.segment_blocks;
            let b0 = at % geo.segment_blocks;
            let n = (end - at).min(geo.segment_blocks - b0);
            let e = root.and_then(|r| r.lookup(vseg));
            for (_, cnt, src) in geo.resolve_runs(e, vseg, b0, n) {
                let (allocated, zero) = match src {
                    Source::Zero => (false, true),
                    Source::Seg(_) | Source::Error => (true, false),
                };
                match out.last_mut() {
                    Some(l) if l.allocated == allocated && l.zero == zero => l.num_blocks += cnt,
                    _ => out.push(BlockRun {
                        num_blocks: cnt,
                        allocated,
                        zero,
                    }),
                }
            }
            at += n;
        }
        out
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

impl IoSink for Agent {
    #[inline]
    fn io_done(&self, mut child: BdevIo, status: IoStatus) {
        if child.tag & PASSED != 0 {
            let p = self
                .passed
                .borrow_mut()
                .remove((child.tag & !PASSED) as usize);
            child.restore(p.origin);
            if status.is_success()
                && let Some((f, g0, n)) = &p.fill
            {
                self.hold_granules(f, *g0, *n);
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
        if ctx.status.is_success() {
            for (f, g0, n) in &ctx.fills {
                self.hold_granules(f, *g0, *n);
            }
        }
        self.finish(ctx.parent, ctx.status, ctx.epoch);
    }
}

impl Agent {
    /// Marks granules written through to the top layer as held by it; the fill is
    /// queued for the next metadata commit the first time it changes since the last.
    fn hold_granules(&self, f: &Arc<Fill>, g0: u64, n: u64) {
        if f.set_range(g0, n) && f.mark_dirty() {
            self.shared.dirty_fills.push(f.clone());
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
