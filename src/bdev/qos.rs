//! Quality of service: rate limits on a bdev, as SPDK's `bdev_set_qos_limit` sets them
//! (`lib/bdev/bdev.c`): I/Os per second for reads and writes together
//! (`rw_ios_per_sec`), and bytes per second for reads and writes together, reads alone
//! and writes alone (`rw_mbytes_per_sec`, `r_mbytes_per_sec`, `w_mbytes_per_sec`, in
//! MiB/s). 0 is no limit. Reads and writes are limited; unmap, write-zeroes and flush
//! pass, as in SPDK.
//!
//! **The budget.** Each bdev has one budget for all cores ([`BdevQos`]): per limit, a
//! signed count of what may still be submitted in the current **timeslice** (1 ms),
//! an atomic that every core's channel takes from (`fetch_sub`) — no lock, and no
//! message between cores on the I/O path. A request may go when every limit it falls
//! under still has something left (a request bigger than what is left goes, and the
//! overrun is taken from the next timeslice, as in SPDK); otherwise it waits. Whoever
//! touches the budget first after a timeslice ended refills it (one `compare_exchange`
//! on the timeslice's start decides who): one timeslice's share is added for each
//! timeslice that passed, to what was left (an overrun is paid back), and the budget
//! holds at most [`MAX_CATCHUP_SLICES`] shares — a token bucket 10 ms deep. So a refill
//! that comes late (a reactor that slept past the timeslice's end), or a core that did
//! not get to use its share in time (preempted), loses nothing, and a budget left alone
//! for a while gives a burst of at most 10 ms' worth (1 % of a second). SPDK drops what
//! a timeslice left unused instead.
//!
//! **Waiting requests** stay on the core they were submitted on ([`CoreQos`], one per
//! bdev per core, shared by the core's channels to the bdev), reads and writes in a
//! queue each, in submission order (a read waiting for the read limit does not hold up a
//! write). While some wait, a poller on that core submits them as the budget refills,
//! oldest first, and a timer at the next timeslice's start wakes a reactor that would
//! otherwise park. Nothing waits forever: when the limits are removed the waiting
//! requests are submitted at once (in order); when the bdev is deleted they complete
//! with [`IoStatus::Aborted`]; when the channel they came through is dropped they are
//! submitted all the same (the queue keeps the bdev's channel on the core alive).
//!
//! **No limit, no cost.** The channel's submit path looks at one per-core flag
//! ([`CoreQos::engaged`]); everything above runs only when it is set (a limit is on, or
//! requests still wait).

use super::{Bdev, BdevChannel, BdevIo, Drained, IoKind, IoStatus};
use crate::reactor::{self, Clock, Cores, Nanos, PollerHandle};
use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

/// The length of a timeslice (SPDK's `SPDK_BDEV_QOS_TIMESLICE_IN_USEC`).
pub const TIMESLICE: Duration = Duration::from_millis(1);
const SLICE_NS: u64 = 1_000_000;
const SLICES_PER_SEC: u64 = 1_000;

/// The budget holds at most this many timeslices' shares.
pub const MAX_CATCHUP_SLICES: u64 = 10;

/// An I/O limit must be a multiple of this (SPDK's `SPDK_BDEV_QOS_MIN_IOS_PER_SEC`);
/// others are rounded up to one, as SPDK does.
pub const MIN_IOS_PER_SEC: u64 = 1000;

/// The largest MiB/s limit: more would overflow the bytes (SPDK's
/// `SPDK_BDEV_QOS_MAX_MBYTES_PER_SEC`; larger values are lowered to it, as in SPDK).
pub const MAX_MBYTES_PER_SEC: u64 = u64::MAX / (1024 * 1024);

/// The limits, by index: SPDK's `spdk_bdev_qos_rate_limit_type` order.
const RW_IOPS: usize = 0;
const RW_BPS: usize = 1;
const R_BPS: usize = 2;
const W_BPS: usize = 3;

/// SPDK's names of the four limits, in their order.
pub const NAMES: [&str; 4] = [
    "rw_ios_per_sec",
    "rw_mbytes_per_sec",
    "r_mbytes_per_sec",
    "w_mbytes_per_sec",
];

/// The rate limits of a bdev as an operator gives them: I/Os per second and MiB per
/// second; 0 is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosLimits {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rw_ios_per_sec: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rw_mbytes_per_sec: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub r_mbytes_per_sec: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub w_mbytes_per_sec: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl QosLimits {
    /// The limits in SPDK's order.
    pub fn to_array(self) -> [u64; 4] {
        [
            self.rw_ios_per_sec,
            self.rw_mbytes_per_sec,
            self.r_mbytes_per_sec,
            self.w_mbytes_per_sec,
        ]
    }

    fn from_array(a: [u64; 4]) -> QosLimits {
        QosLimits {
            rw_ios_per_sec: a[RW_IOPS],
            rw_mbytes_per_sec: a[RW_BPS],
            r_mbytes_per_sec: a[R_BPS],
            w_mbytes_per_sec: a[W_BPS],
        }
    }

    /// True when no limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.to_array() == [0; 4]
    }

    /// `bdev_get_bdevs`'s `assigned_rate_limits`: all four, 0 for none.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (name, v) in NAMES.iter().zip(self.to_array()) {
            m.insert(name.to_string(), v.into());
        }
        serde_json::Value::Object(m)
    }
}

/// A change of limits, as `bdev_set_qos_limit` asks it: a limit not given stays as it
/// is; 0 removes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosUpdate(pub [Option<u64>; 4]);

impl QosUpdate {
    /// The update that sets every limit to `l`'s.
    pub fn set_all(l: QosLimits) -> QosUpdate {
        QosUpdate(l.to_array().map(Some))
    }

    /// True when no limit is given (SPDK refuses that: "No rate limits specified").
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// The limits after this update, as SPDK normalises them: an I/O limit rounded up
    /// to a multiple of [`MIN_IOS_PER_SEC`], a MiB/s limit lowered to
    /// [`MAX_MBYTES_PER_SEC`]. Returns what it changed, for the log.
    pub fn apply(&self, to: QosLimits) -> (QosLimits, Vec<String>) {
        let mut out = to.to_array();
        let mut notes = Vec::new();
        for (i, v) in self.0.iter().enumerate() {
            let Some(mut v) = *v else { continue };
            if i == RW_IOPS {
                let rest = v % MIN_IOS_PER_SEC;
                if rest != 0 {
                    let up = v
                        .checked_add(MIN_IOS_PER_SEC - rest)
                        .unwrap_or(u64::MAX - u64::MAX % MIN_IOS_PER_SEC);
                    notes.push(format!(
                        "{}: {v} is not a multiple of {MIN_IOS_PER_SEC}; rounded up to {up}",
                        NAMES[i]
                    ));
                    v = up;
                }
            } else if v > MAX_MBYTES_PER_SEC {
                notes.push(format!(
                    "{}: {v} MiB/s would overflow; lowered to {MAX_MBYTES_PER_SEC}",
                    NAMES[i]
                ));
                v = MAX_MBYTES_PER_SEC;
            }
            out[i] = v;
        }
        (QosLimits::from_array(out), notes)
    }
}

/// Why limits could not be set.
#[derive(Debug, thiserror::Error)]
pub enum QosError {
    /// Another change of the same bdev's limits is under way (SPDK: `-EAGAIN`).
    #[error("bdev `{0}`: its rate limits are being changed by another request")]
    Busy(String),
    #[error("bdev `{bdev}`: rate limits: core(s) {cores:?} did not answer within {limit:?}")]
    Timeout {
        bdev: String,
        cores: Vec<usize>,
        limit: Duration,
    },
    #[error("bdev `{0}`: rate limits: the reactors are stopping")]
    Stopped(String),
}

/// What the cores share of one bdev's rate limits: the budget of the current timeslice.
/// Written on the I/O path only while a limit is on.
#[derive(Debug)]
struct Budget {
    /// What may still be submitted in this timeslice, per limit (I/Os or bytes); may be
    /// negative after an overrun.
    remaining: [AtomicI64; 4],
    /// Where the current timeslice started (reactor clock, ns).
    slice_start_ns: AtomicU64,
}

/// One bdev's rate limits and their budget (in [`super::BdevProps`]).
#[derive(Debug)]
pub struct BdevQos {
    /// As the operator set them ([`QosLimits`] in SPDK's order).
    limits: [AtomicU64; 4],
    /// Each limit's share of a timeslice (I/Os or bytes); 0: not limited.
    per_slice: [AtomicI64; 4],
    /// Some limit is on.
    active: AtomicBool,
    /// The bdev was deleted: waiting requests are aborted.
    removed: AtomicBool,
    /// A change of limits is under way.
    changing: AtomicBool,
    block_shift: u32,
    budget: CachePadded<Budget>,
}

impl BdevQos {
    /// No limits, for a bdev of `block_size` bytes a block.
    pub(crate) fn new(block_size: u32) -> BdevQos {
        BdevQos {
            limits: Default::default(),
            per_slice: Default::default(),
            active: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            changing: AtomicBool::new(false),
            block_shift: block_size.trailing_zeros(),
            budget: CachePadded::new(Budget {
                remaining: Default::default(),
                slice_start_ns: AtomicU64::new(0),
            }),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> QosLimits {
        QosLimits::from_array(std::array::from_fn(|i| {
            self.limits[i].load(Ordering::Acquire)
        }))
    }

    /// Whether some limit is on.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Puts `l` in force from `now` with a full timeslice's budget.
    fn store(&self, l: QosLimits, now: Nanos) {
        let a = l.to_array();
        for (i, &v) in a.iter().enumerate() {
            let per: u128 = if v == 0 {
                0
            } else if i == RW_IOPS {
                (v as u128 / SLICES_PER_SEC as u128).max(1)
            } else {
                // MiB/s to bytes a timeslice; at least SPDK's 512 bytes.
                ((v as u128 * (1 << 20)) / SLICES_PER_SEC as u128).max(512)
            };
            // Kept far from overflowing when shares of several timeslices are added.
            let per = per.min((i64::MAX / (MAX_CATCHUP_SLICES as i64 + 2)) as u128) as i64;
            self.per_slice[i].store(per, Ordering::Relaxed);
            self.budget.remaining[i].store(per, Ordering::Relaxed);
            self.limits[i].store(v, Ordering::Release);
        }
        self.budget.slice_start_ns.store(now.0, Ordering::Release);
        self.active.store(!l.is_unlimited(), Ordering::Release);
    }

    /// Marks the bdev deleted: requests still waiting on any core are aborted.
    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// Refills the budget if the current timeslice ended before `now`.
    fn refill(&self, now: u64) {
        let start = self.budget.slice_start_ns.load(Ordering::Acquire);
        if now < start.saturating_add(SLICE_NS) {
            return;
        }
        let passed = (now - start) / SLICE_NS;
        if self
            .budget
            .slice_start_ns
            .compare_exchange(
                start,
                start + passed * SLICE_NS,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return; // another core refills this one
        }
        let n = passed.min(MAX_CATCHUP_SLICES) as i64;
        for i in 0..4 {
            let per = self.per_slice[i].load(Ordering::Relaxed);
            if per == 0 {
                continue;
            }
            // One share per timeslice passed, added to what was left (an overrun is
            // paid back); at most MAX_CATCHUP_SLICES shares in all.
            let cap = per * MAX_CATCHUP_SLICES as i64;
            let _ =
                self.budget.remaining[i].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                    Some((r + per * n).min(cap))
                });
        }
    }

    /// The limits a request of `kind` falls under, with what it takes from each.
    fn costs(&self, kind: IoKind, num_blocks: u64) -> [(usize, i64); 3] {
        let bytes = (num_blocks << self.block_shift).min(i64::MAX as u64) as i64;
        let own = if kind == IoKind::Read { R_BPS } else { W_BPS };
        [(RW_IOPS, 1), (RW_BPS, bytes), (own, bytes)]
    }

    /// Takes what a request of `kind` over `num_blocks` needs from the budget; false
    /// (and nothing taken) when some limit it falls under has nothing left.
    fn take(&self, kind: IoKind, num_blocks: u64) -> bool {
        let costs = self.costs(kind, num_blocks);
        for (k, &(i, delta)) in costs.iter().enumerate() {
            if self.per_slice[i].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let before = self.budget.remaining[i].fetch_sub(delta, Ordering::Relaxed);
            if before <= 0 {
                self.budget.remaining[i].fetch_add(delta, Ordering::Relaxed);
                for &(j, d) in &costs[..k] {
                    if self.per_slice[j].load(Ordering::Relaxed) != 0 {
                        self.budget.remaining[j].fetch_add(d, Ordering::Relaxed);
                    }
                }
                return false;
            }
        }
        true
    }

    /// Where the next timeslice starts.
    fn next_slice(&self) -> u64 {
        self.budget
            .slice_start_ns
            .load(Ordering::Acquire)
            .saturating_add(SLICE_NS)
    }
}

/// The queue of a request kind: reads 0, writes 1; other kinds are not limited.
fn class(kind: IoKind) -> Option<usize> {
    match kind {
        IoKind::Read => Some(0),
        IoKind::Write => Some(1),
        _ => None,
    }
}

/// One core's side of one bdev's rate limits: the requests waiting on this core, and
/// the flag the channels' submit path looks at. Shared by the core's channels to the
/// bdev; kept in the core's table ([`core_state`]) while the bdev exists.
#[repr(C)]
pub(crate) struct CoreQos {
    /// Requests go through [`CoreQos::submit`]: a limit is on, or requests still wait.
    /// First: the one field the submit path reads, on the allocation's first cache line.
    engaged: Cell<bool>,
    shared: Arc<BdevQos>,
    clock: Clock,
    /// Waiting reads and writes, oldest first.
    queues: [RefCell<VecDeque<BdevIo>>; 2],
    /// Requests queued and dequeued so far, per queue (for [`CoreQos::drained`]).
    queued: [Cell<u64>; 2],
    dequeued: [Cell<u64>; 2],
    waiters: RefCell<Vec<([u64; 2], Waker)>>,
    /// The bdev's channel on this core, held while requests wait for it.
    inner: RefCell<Option<Rc<dyn BdevChannel>>>,
    poller: RefCell<Option<PollerHandle>>,
    /// The time of the wake-up timer set last.
    timer_ns: Cell<u64>,
    /// The queue the poller serves first (they take turns).
    first: Cell<usize>,
    me: Weak<CoreQos>,
}

/// This core's [`CoreQos`] of each bdev (by [`Bdev::id`]).
#[derive(Default)]
struct CoreTable {
    by_bdev: RefCell<HashMap<u64, Rc<CoreQos>>>,
}

/// This core's side of `bdev`'s rate limits (created on first use).
pub(crate) fn core_state(bdev: &dyn Bdev) -> Rc<CoreQos> {
    let table = reactor::local(CoreTable::default);
    let id = bdev.props().id;
    if let Some(c) = table.by_bdev.borrow().get(&id) {
        return c.clone();
    }
    let shared = bdev.props().qos.clone();
    let c = Rc::new_cyclic(|me| CoreQos {
        engaged: Cell::new(shared.is_active()),
        shared,
        clock: reactor::cores().clock().clone(),
        queues: Default::default(),
        queued: Default::default(),
        dequeued: Default::default(),
        waiters: RefCell::new(Vec::new()),
        inner: RefCell::new(None),
        poller: RefCell::new(None),
        timer_ns: Cell::new(0),
        first: Cell::new(0),
        me: me.clone(),
    });
    let mut t = table.by_bdev.borrow_mut();
    // The deleted bdevs' entries go once nothing of theirs waits.
    t.retain(|_, c| !(c.shared.removed.load(Ordering::Acquire) && c.is_idle()));
    t.insert(id, c.clone());
    c
}

impl CoreQos {
    /// Whether requests must go through [`CoreQos::submit`] (the submit path's one
    /// branch).
    #[inline(always)]
    pub(crate) fn engaged(&self) -> bool {
        self.engaged.get()
    }

    fn is_idle(&self) -> bool {
        self.queues.iter().all(|q| q.borrow().is_empty())
    }

    /// Submits `io` to `inner` now if the budget allows, else queues it.
    #[cold]
    #[inline(never)]
    pub(crate) fn submit(&self, inner: &Rc<dyn BdevChannel>, io: BdevIo) {
        let Some(c) = class(io.kind) else {
            inner.submit(io);
            return;
        };
        let s = &*self.shared;
        if !s.is_active() || s.removed.load(Ordering::Acquire) {
            // The limits went (this core hears of it soon) or the bdev did: what waits
            // goes first.
            self.release_all();
            self.engaged.set(s.is_active() && !self.is_idle());
            inner.submit(io);
            return;
        }
        if self.queues[c].borrow().is_empty() {
            s.refill(self.clock.now().0);
            if s.take(io.kind, io.num_blocks) {
                inner.submit(io);
                return;
            }
        }
        self.enqueue(c, inner, io);
    }

    fn enqueue(&self, c: usize, inner: &Rc<dyn BdevChannel>, io: BdevIo) {
        self.queues[c].borrow_mut().push_back(io);
        self.queued[c].set(self.queued[c].get() + 1);
        self.engaged.set(true);
        if self.inner.borrow().is_none() {
            *self.inner.borrow_mut() = Some(inner.clone());
        }
        if self.poller.borrow().is_none() {
            let me = self.me.clone();
            let p = reactor::register_poller(move || me.upgrade().map_or(0, |c| c.pump()));
            *self.poller.borrow_mut() = Some(p);
        }
        self.arm_timer();
    }

    /// Wakes this reactor when the next timeslice starts (a parked reactor would not
    /// run the poller before).
    fn arm_timer(&self) {
        let at = self.shared.next_slice();
        if self.timer_ns.get() != at {
            self.timer_ns.set(at);
            reactor::call_at(Nanos(at), || {});
        }
    }

    /// The poller: submits what the budget allows of what waits. Returns how many
    /// requests it moved.
    fn pump(&self) -> usize {
        if self.is_idle() {
            if !self.shared.is_active() {
                self.disengage();
            }
            return 0;
        }
        let s = &*self.shared;
        if s.removed.load(Ordering::Acquire) || !s.is_active() {
            return self.release_all();
        }
        s.refill(self.clock.now().0);
        let Some(inner) = self.inner.borrow().clone() else {
            return 0;
        };
        let first = self.first.get();
        self.first.set(1 - first);
        let mut n = 0;
        for c in [first, 1 - first] {
            loop {
                let io = {
                    let mut q = self.queues[c].borrow_mut();
                    match q.front() {
                        Some(io) if s.take(io.kind, io.num_blocks) => q.pop_front(),
                        _ => None,
                    }
                };
                let Some(io) = io else { break };
                self.dequeued[c].set(self.dequeued[c].get() + 1);
                n += 1;
                // Not borrowed here: a stacked bdev may submit to this bdev again.
                inner.submit(io);
            }
        }
        if n > 0 {
            self.wake_waiters();
        }
        if self.is_idle() {
            *self.inner.borrow_mut() = None;
        } else {
            self.arm_timer();
        }
        n
    }

    /// Submits (or, for a deleted bdev, aborts) every waiting request, oldest first.
    fn release_all(&self) -> usize {
        let abort = self.shared.removed.load(Ordering::Acquire);
        let inner = self.inner.borrow_mut().take();
        let mut n = 0;
        for c in 0..2 {
            loop {
                let io = self.queues[c].borrow_mut().pop_front();
                let Some(io) = io else { break };
                self.dequeued[c].set(self.dequeued[c].get() + 1);
                n += 1;
                match (&inner, abort) {
                    (Some(ch), false) => ch.submit(io),
                    _ => io.complete(IoStatus::Aborted),
                }
            }
        }
        if n > 0 {
            tracing::debug!(
                n,
                aborted = abort,
                "rate limits: released the requests waiting"
            );
            self.wake_waiters();
        }
        n
    }

    /// Nothing waits and no limit is on: the submit path goes straight again.
    fn disengage(&self) {
        self.engaged.set(false);
        // Dropped outside the borrow (a poller's handle may be dropped while it runs).
        let p = self.poller.borrow_mut().take();
        drop(p);
    }

    /// Applies a change of the limits on this core.
    fn refresh(&self) {
        if self.shared.is_active() {
            self.engaged.set(true);
        } else {
            self.release_all();
            if self.is_idle() {
                self.disengage();
            }
        }
    }

    fn wake_waiters(&self) {
        let done = [self.dequeued[0].get(), self.dequeued[1].get()];
        let ready: Vec<Waker> = {
            let mut w = self.waiters.borrow_mut();
            let (ready, keep): (Vec<_>, Vec<_>) = w
                .drain(..)
                .partition(|(t, _)| t[0] <= done[0] && t[1] <= done[1]);
            *w = keep;
            ready.into_iter().map(|(_, w)| w).collect()
        };
        for w in ready {
            w.wake();
        }
    }

    /// A future that resolves once every request waiting now has been submitted (or
    /// aborted); `None` when none waits.
    pub(crate) fn drained(&self) -> Option<Drained> {
        if self.is_idle() {
            return None;
        }
        let ticket = [self.queued[0].get(), self.queued[1].get()];
        let me = self.me.upgrade()?;
        Some(Box::pin(std::future::poll_fn(move |cx| {
            if me.dequeued[0].get() >= ticket[0] && me.dequeued[1].get() >= ticket[1] {
                Poll::Ready(())
            } else {
                me.waiters.borrow_mut().push((ticket, cx.waker().clone()));
                Poll::Pending
            }
        })))
    }

    /// Requests waiting on this core (tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.queues.iter().map(|q| q.borrow().len()).sum()
    }
}

/// Sets `bdev`'s limits (`update`: SPDK's `bdev_set_qos_limit`) and applies them on
/// every core of `cores` within `limit`; returns the limits now in force. Removing the
/// last limit submits every waiting request before it answers.
pub async fn set_limits(
    cores: &Cores,
    bdev: &Arc<dyn Bdev>,
    update: QosUpdate,
    limit: Duration,
) -> Result<QosLimits, QosError> {
    let shared = bdev.props().qos.clone();
    let name = bdev.display_name();
    if shared.changing.swap(true, Ordering::AcqRel) {
        return Err(QosError::Busy(name));
    }
    struct Unset(Arc<BdevQos>);
    impl Drop for Unset {
        fn drop(&mut self) {
            self.0.changing.store(false, Ordering::Release);
        }
    }
    let _unset = Unset(shared.clone());
    let (new, notes) = update.apply(shared.limits());
    for n in &notes {
        tracing::warn!(bdev = %name, "rate limits: {n}");
    }
    shared.store(new, cores.clock().now());
    tracing::info!(bdev = %name, ?new, "rate limits set");
    let id = bdev.id();
    let answered: Arc<std::sync::Mutex<Vec<usize>>> = Arc::default();
    let a = answered.clone();
    let handle = cores.for_each_core_async(move |core| {
        let table = reactor::local(CoreTable::default);
        let c = table.by_bdev.borrow().get(&id).cloned();
        if let Some(c) = c {
            c.refresh();
        }
        a.lock().unwrap_or_else(|p| p.into_inner()).push(core);
    });
    match reactor::until(reactor::now().after(limit), handle).await {
        Some(Ok(())) => Ok(new),
        Some(Err(_)) => Err(QosError::Stopped(name)),
        None => {
            let done = answered.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let cores = (0..cores.len()).filter(|c| !done.contains(c)).collect();
            Err(QosError::Timeout {
                bdev: name,
                cores,
                limit,
            })
        }
    }
}

#[cfg(test)]
mod tests;
