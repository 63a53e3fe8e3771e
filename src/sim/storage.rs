//! The simulator's storage: an in-memory disk with a volatile write cache, seeded
//! latency, read and write errors, misdirected writes, and power loss that keeps, drops
//! or tears (at sector granularity) every write no completed flush covered.
//!
//! **Model.** The *medium* is what survives a power loss. A write is applied to the
//! *view* (what reads see) when it completes, and joins the *cache*; a flush moves every
//! write that completed before the flush was submitted from the cache to the medium when
//! the flush completes (the semantics of `bdev`'s flush). A FUA write goes to the medium
//! when it completes. [`SimDisk::power_loss`] returns the medium as a power failure
//! leaves it: each write still in the cache, and each write still in flight, is kept,
//! dropped, or torn (a random subset of its blocks lands: the block is the unit a write
//! is atomic in, as NVMe's atomic write unit is at least one logical block), in the
//! order the writes completed.
//!
//! **Faults**, each drawn from the disk's own seeded generator: completion latency
//! (requests complete out of order), read errors, write errors (the write may have
//! landed wholly, partly or not at all), misdirected writes inside a chosen byte range
//! (the metadata area: the data lands at another page-aligned place, the completion says
//! success), and a write budget after which the device is dead: every later request
//! fails and changes nothing (the crash-point sweeps).
//!
//! Everything runs on the simulator's single thread; the state sits behind a mutex only
//! because a [`Bdev`] is `Sync`.

use crate::bdev::{
    Bdev, BdevChannel, BdevError, BdevIo, BdevProps, Drained, Epochs, IoKind, IoStatus,
};
use crate::reactor::{self, Nanos, PollerHandle};
use std::cell::RefCell;
use std::ops::Range;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The faults a [`SimDisk`] injects; probabilities are per request.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Each request completes after a latency drawn from `0..=latency_max_us`.
    pub latency_max_us: u64,
    /// Probability that a read fails with a media error.
    pub read_error: f64,
    /// Probability that a write (or write-zeroes, unmap) fails with a media error.
    pub write_error: f64,
    /// Probability that a write lying inside `misdirect_range` lands elsewhere in it.
    pub misdirect: f64,
    /// Bytes where misdirected writes happen (the metadata area).
    pub misdirect_range: Option<Range<u64>>,
}

/// A number of writes shared by several disks (a pool's data and metadata devices):
/// once they are used up, every disk that shares it is dead — each later request fails
/// and changes nothing. The crash-point sweeps use it: "fail the device after N writes".
#[derive(Debug, Default)]
pub struct WriteBudget {
    left: std::sync::atomic::AtomicI64,
    dead: std::sync::atomic::AtomicBool,
    used: std::sync::atomic::AtomicU64,
}

impl WriteBudget {
    /// Allows `n` writes.
    pub fn new(n: u64) -> Arc<WriteBudget> {
        Arc::new(WriteBudget {
            left: std::sync::atomic::AtomicI64::new(n as i64),
            ..Default::default()
        })
    }

    /// Counts one write; false once the budget is spent (the devices died).
    fn take(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.used.fetch_add(1, Relaxed);
        if self.left.fetch_sub(1, Relaxed) <= 0 {
            self.dead.store(true, Relaxed);
        }
        !self.dead.load(Relaxed)
    }

    /// True once the writes are used up.
    pub fn is_dead(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes counted so far (those refused included).
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Counts of what a [`SimDisk`] did, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub misdirected: u64,
    /// Requests refused because the device was dead (past its write budget).
    pub dead_refusals: u64,
}

/// A write that has not reached the medium yet.
#[derive(Clone, Debug)]
struct PendingWrite {
    /// Completion order (set when it completes): what reads saw last is what lands
    /// last, so flushes and power losses apply completed writes in this order.
    done: u64,
    /// A FUA write: on the medium already; a power loss keeps it (re-applied in order
    /// over older cached writes to the same bytes).
    durable: bool,
    offset: u64,
    /// `None`: zeros (write-zeroes, unmap).
    data: Option<Arc<[u8]>>,
    len: u64,
}

struct State {
    rng: fastrand::Rng,
    faults: Faults,
    /// What survives a power loss.
    medium: Vec<u8>,
    /// What reads see: the medium with every completed write applied.
    view: Vec<u8>,
    /// Completed writes no completed flush covered yet, in completion order.
    cache: Vec<PendingWrite>,
    next_done: u64,
    /// Writes submitted and not yet completed, by sequence number.
    inflight: std::collections::BTreeMap<u64, PendingWrite>,
    next_seq: u64,
    /// Writes submitted so far.
    writes_submitted: u64,
    /// Writes allowed before the device dies.
    budget: Option<Arc<WriteBudget>>,
    stats: DiskStats,
    /// The byte ranges of the last writes that reached the medium (for bit rot that
    /// hits live data rather than free space).
    landed: std::collections::VecDeque<(u64, u64)>,
}

impl State {
    fn apply(buf: &mut [u8], w: &PendingWrite) {
        let at = w.offset as usize;
        let range = at..at + w.len as usize;
        match &w.data {
            Some(d) => buf[range].copy_from_slice(d),
            None => buf[range].fill(0),
        }
    }

    fn note_landed(&mut self, w: &PendingWrite) {
        if !w.durable {
            self.landed.push_back((w.offset, w.len));
            if self.landed.len() > 64 {
                self.landed.pop_front();
            }
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.f64() < p
    }
}

/// An in-memory disk with a volatile cache and seeded faults (see the module doc).
pub struct SimDisk {
    props: BdevProps,
    block_bytes: u64,
    state: Mutex<State>,
}

impl SimDisk {
    /// A disk named `name` whose medium starts as `medium` (its length a multiple of
    /// `block_size`), drawing its faults from `seed`.
    pub fn new(
        name: &str,
        uuid: uuid::Uuid,
        block_size: u32,
        medium: Vec<u8>,
        faults: Faults,
        seed: u64,
    ) -> Result<Arc<SimDisk>, BdevError> {
        let blocks = medium.len() as u64 / block_size as u64;
        let props = BdevProps::new(name, Some(uuid), block_size, blocks, "Simulated disk")?
            .with_write_cache(true);
        Ok(Arc::new(SimDisk {
            props,
            block_bytes: block_size as u64,
            state: Mutex::new(State {
                rng: fastrand::Rng::with_seed(seed),
                faults,
                view: medium.clone(),
                medium,
                cache: Vec::new(),
                next_done: 0,
                inflight: Default::default(),
                next_seq: 0,
                writes_submitted: 0,
                budget: None,
                stats: DiskStats::default(),
                landed: Default::default(),
            }),
        }))
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grows the disk by `bytes` (a multiple of its block size) of zeros, as a file
    /// extended by `truncate`: at once and for good (the new length is not a write a
    /// power failure can lose).
    pub fn grow(&self, bytes: u64) {
        let mut st = self.st();
        let len = st.medium.len() + bytes as usize;
        st.medium.resize(len, 0);
        st.view.resize(len, 0);
        self.props.set_num_blocks(len as u64 / self.block_bytes);
    }

    /// Changes the injected faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.st().faults = faults;
    }

    /// Shares `budget` with other disks: once its writes are used up, this disk is
    /// dead (every later request fails with a media error and changes nothing).
    pub fn set_write_budget(&self, budget: Option<Arc<WriteBudget>>) {
        self.st().budget = budget;
    }

    /// Writes submitted since the disk was made.
    pub fn writes_submitted(&self) -> u64 {
        self.st().writes_submitted
    }

    /// True once the write budget ran out.
    pub fn is_dead(&self) -> bool {
        self.st().budget.as_ref().is_some_and(|b| b.is_dead())
    }

    /// What the disk did.
    pub fn stats(&self) -> DiskStats {
        self.st().stats.clone()
    }

    /// Bytes of completed writes not yet covered by a completed flush.
    pub fn unflushed_bytes(&self) -> u64 {
        self.st()
            .cache
            .iter()
            .filter(|w| !w.durable)
            .map(|w| w.len)
            .sum()
    }

    /// The medium as a power failure now leaves it: every cached or in-flight write is
    /// kept, dropped or torn (drawn from `rng`), in the order it completed (or was
    /// issued, for those in flight); FUA writes stay. The disk itself is not
    /// changed; the simulator builds a new one from the result.
    pub fn power_loss(&self, rng: &mut fastrand::Rng) -> Vec<u8> {
        let st = self.st();
        let mut out = st.medium.clone();
        // Completed writes in completion order, then those in flight in issue order.
        for w in st.cache.iter().chain(st.inflight.values()) {
            if w.durable {
                State::apply(&mut out, w);
                continue;
            }
            match rng.u8(0..3) {
                0 => {}
                1 => State::apply(&mut out, w),
                _ => {
                    // Torn: some blocks land, others not.
                    let bs = self.block_bytes as usize;
                    let blocks = (w.len as usize).div_ceil(bs);
                    for s in 0..blocks {
                        if rng.bool() {
                            let lo = s * bs;
                            let hi = ((s + 1) * bs).min(w.len as usize);
                            let at = w.offset as usize;
                            match &w.data {
                                Some(d) => out[at + lo..at + hi].copy_from_slice(&d[lo..hi]),
                                None => out[at + lo..at + hi].fill(0),
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Byte ranges of the last writes that reached the medium, oldest first.
    pub fn recently_landed(&self) -> Vec<(u64, u64)> {
        self.st().landed.iter().copied().collect()
    }

    /// The medium as it is (what a power loss that drops every unflushed write leaves).
    pub fn medium(&self) -> Vec<u8> {
        self.st().medium.clone()
    }

    /// What reads see now.
    pub fn view(&self) -> Vec<u8> {
        self.st().view.clone()
    }

    /// Decides what a request does when it is submitted: its completion time and, for
    /// a write, its pending record.
    fn admit(&self, io: &BdevIo) -> Admitted {
        let mut st = self.st();
        let bs = self.props_block_size();
        let latency = if st.faults.latency_max_us > 0 {
            let max = st.faults.latency_max_us;
            Duration::from_micros(st.rng.u64(0..=max))
        } else {
            Duration::ZERO
        };
        let modifies = io.kind.modifies();
        if modifies {
            st.writes_submitted += 1;
            if let Some(b) = &st.budget {
                b.take();
            }
        }
        let dead = st.budget.as_ref().is_some_and(|b| b.is_dead());
        if dead {
            st.stats.dead_refusals += 1;
            return Admitted {
                latency,
                action: Action::Fail,
            };
        }
        let action = match io.kind {
            IoKind::Read => {
                st.stats.reads += 1;
                let p = st.faults.read_error;
                if st.chance(p) {
                    st.stats.read_errors += 1;
                    Action::Fail
                } else {
                    Action::Read
                }
            }
            IoKind::Flush => {
                st.stats.flushes += 1;
                Action::Flush {
                    covers: st.next_done,
                }
            }
            IoKind::Write | IoKind::WriteZeroes | IoKind::Unmap => {
                st.stats.writes += 1;
                let len = io.num_blocks * bs;
                let mut offset = io.offset_blocks * bs;
                let data = (io.kind == IoKind::Write).then(|| {
                    let mut d = vec![0u8; len as usize];
                    io.copy_out(0, &mut d);
                    Arc::<[u8]>::from(d)
                });
                let p = st.faults.misdirect;
                if let Some(r) = st.faults.misdirect_range.clone()
                    && offset >= r.start
                    && offset + len <= r.end
                    && st.chance(p)
                {
                    let unit = crate::vdisk::meta::PAGE_BYTES as u64;
                    let slots = (r.end - r.start - len) / unit;
                    let to = r.start + st.rng.u64(0..=slots) * unit;
                    if to != offset {
                        st.stats.misdirected += 1;
                        offset = to;
                    }
                }
                let seq = st.next_seq;
                st.next_seq += 1;
                let w = PendingWrite {
                    done: 0,
                    durable: false,
                    offset,
                    data,
                    len,
                };
                st.inflight.insert(seq, w);
                let p = st.faults.write_error;
                let fail = st.chance(p);
                if fail {
                    st.stats.write_errors += 1;
                }
                Action::Write {
                    seq,
                    fail,
                    fua: io.flags.fua,
                }
            }
        };
        Admitted { latency, action }
    }

    fn props_block_size(&self) -> u64 {
        self.block_bytes
    }

    /// Carries out `action` for `io` at its completion time; returns the status.
    fn complete(&self, io: &mut BdevIo, action: Action) -> IoStatus {
        let mut st = self.st();
        if tracing::enabled!(tracing::Level::TRACE)
            && let Action::Write { seq, fua, .. } = action
            && let Some(w) = st.inflight.get(&seq)
        {
            // The first 8 bytes of each block: the simulator's tags, to follow a block.
            let bs = self.block_bytes as usize;
            let firsts: Vec<String> = w.data.as_ref().map_or_else(Vec::new, |d| {
                d.chunks(bs)
                    .map(|c| {
                        format!(
                            "{:#x}",
                            u64::from_le_bytes(c[..8].try_into().expect("8 bytes"))
                        )
                    })
                    .collect()
            });
            tracing::trace!(disk = (self as &dyn Bdev).name(), offset = w.offset, len = w.len, fua,
                firsts = %firsts.join(","), "write completes");
        }
        let dead = st.budget.as_ref().is_some_and(|b| b.is_dead());
        if dead && !matches!(action, Action::Fail) {
            // Died while the request was in flight: it fails; a write stays in flight
            // (a power loss may or may not keep it).
            st.stats.dead_refusals += 1;
            return IoStatus::MediaError;
        }
        let bs = self.props_block_size();
        match action {
            Action::Fail => IoStatus::MediaError,
            Action::Read => {
                let at = (io.offset_blocks * bs) as usize;
                let len = (io.num_blocks * bs) as usize;
                io.copy_in(0, &st.view[at..at + len]);
                IoStatus::Success
            }
            Action::Flush { covers } => {
                // The writes that completed before the flush was submitted: a prefix of
                // the cache, which is in completion order.
                let n = st.cache.partition_point(|w| w.done < covers);
                let flushed: Vec<PendingWrite> = st.cache.drain(..n).collect();
                for w in &flushed {
                    State::apply(&mut st.medium, w);
                    st.note_landed(w);
                }
                IoStatus::Success
            }
            Action::Write { seq, fail, fua } => {
                let Some(mut w) = st.inflight.remove(&seq) else {
                    return IoStatus::MediaError;
                };
                w.done = st.next_done;
                st.next_done += 1;
                if fail {
                    // A failed write may have landed wholly, partly or not at all.
                    match st.rng.u8(0..3) {
                        0 => {}
                        1 => {
                            State::apply(&mut st.view, &w);
                            st.cache.push(w);
                        }
                        _ => {
                            // The first half of its blocks (at least one).
                            let len = (w.len / bs).div_ceil(2) * bs;
                            let part = PendingWrite {
                                len,
                                data: w.data.as_ref().map(|d| Arc::from(&d[..len as usize])),
                                ..w
                            };
                            State::apply(&mut st.view, &part);
                            st.cache.push(part);
                        }
                    }
                    return IoStatus::MediaError;
                }
                State::apply(&mut st.view, &w);
                if fua {
                    // Durable now. It stays in the cache too, so that a flush or a power
                    // loss that lands an older cached write to the same bytes lands
                    // this one again after it.
                    State::apply(&mut st.medium, &w);
                    st.note_landed(&w);
                    w.durable = true;
                }
                st.cache.push(w);
                IoStatus::Success
            }
        }
    }
}

struct Admitted {
    latency: Duration,
    action: Action,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Fail,
    Read,
    Flush { covers: u64 },
    Write { seq: u64, fail: bool, fua: bool },
}

impl Bdev for SimDisk {
    fn props(&self) -> &BdevProps {
        &self.props
    }

    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let inner = Rc::new_cyclic(|me: &Weak<ChannelInner>| {
            let me = me.clone();
            let poller = reactor::register_poller(move || me.upgrade().map_or(0, |c| c.run_due()));
            ChannelInner {
                disk: self,
                queue: RefCell::new(Vec::new()),
                next_order: std::cell::Cell::new(0),
                epochs: Rc::default(),
                _poller: poller,
            }
        });
        let core = reactor::current_core().unwrap_or(0);
        CHANNELS.with(|c| {
            let mut c = c.borrow_mut();
            c.retain(|(_, w)| w.strong_count() > 0);
            c.push((core, Rc::downgrade(&inner)));
        });
        Ok(Rc::new(SimChannel(inner)))
    }

    fn unmap_reads_zeroes(&self) -> bool {
        true
    }
}

thread_local! {
    /// Every channel of a simulated disk opened on this thread, with its core.
    static CHANNELS: RefCell<Vec<(usize, Weak<ChannelInner>)>> = const { RefCell::new(Vec::new()) };
}

/// Drops, without completing them, the requests still queued on the channels of
/// `disks`, each on its channel's core (`enter`): a life that ends in a power loss
/// leaves them in flight. A queued request holds its submitter (its completion sink),
/// which often holds the channel, whose queue holds the request: dropped with the rest
/// of the world, the cycle would keep the channel, its disk and everything the
/// submitter holds for the rest of the process.
pub fn drop_queued(disks: &[&Arc<SimDisk>], enter: &dyn Fn(usize, &mut dyn FnMut())) {
    let live: Vec<(usize, Rc<ChannelInner>)> = CHANNELS.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|(_, w)| w.strong_count() > 0);
        c.iter()
            .filter_map(|(core, w)| w.upgrade().map(|ch| (*core, ch)))
            .filter(|(_, ch)| disks.iter().any(|d| Arc::ptr_eq(d, &ch.disk)))
            .collect()
    });
    for (core, ch) in live {
        enter(core, &mut || {
            let queued = std::mem::take(&mut *ch.queue.borrow_mut());
            drop(queued);
        });
    }
}

struct Queued {
    due: Nanos,
    /// Submission order, to break ties deterministically.
    order: u64,
    io: BdevIo,
    action: Action,
    epoch: u64,
}

struct ChannelInner {
    disk: Arc<SimDisk>,
    queue: RefCell<Vec<Queued>>,
    next_order: std::cell::Cell<u64>,
    epochs: Rc<Epochs>,
    _poller: PollerHandle,
}

impl ChannelInner {
    /// Completes the requests whose time has come, earliest first.
    fn run_due(&self) -> usize {
        let now = reactor::now();
        let mut due: Vec<Queued> = {
            let mut q = self.queue.borrow_mut();
            if q.is_empty() {
                return 0;
            }
            let (d, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *q)
                .into_iter()
                .partition(|r| r.due <= now);
            *q = keep;
            d
        };
        due.sort_by_key(|r| (r.due, r.order));
        let n = due.len();
        for mut r in due {
            let status = self.disk.complete(&mut r.io, r.action);
            self.epochs.finish(r.epoch);
            r.io.complete(status);
        }
        n
    }
}

struct SimChannel(Rc<ChannelInner>);

impl BdevChannel for SimChannel {
    fn submit(&self, io: BdevIo) {
        let inner = &self.0;
        let Admitted { latency, action } = inner.disk.admit(&io);
        let due = reactor::now().after(latency);
        if latency > Duration::ZERO {
            // A parked reactor wakes for it.
            reactor::call_at(due, || {});
        }
        let order = inner.next_order.get();
        inner.next_order.set(order + 1);
        let epoch = inner.epochs.start();
        inner.queue.borrow_mut().push(Queued {
            due,
            order,
            io,
            action,
            epoch,
        });
    }

    fn tracks_drain(&self) -> bool {
        true
    }

    fn drained(&self) -> Option<Drained> {
        Some(self.0.epochs.drained())
    }
}
