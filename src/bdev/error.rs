//! The `error` bdev: wraps another bdev to inject faults.
//!
//! - **Failures**: rules that fail the Nth matching request, every Kth, or a random
//!   fraction, with a chosen status, for a chosen set of I/O kinds.
//! - **Latency**: a fixed extra delay per I/O kind.
//! - **Volatile cache**: writes (and unmaps, write-zeroes) are held in memory and reach
//!   the base bdev only when a flush covers them; [`ErrorBdev::power_loss`] drops what
//!   no completed flush covered, as a power failure drops a disk's volatile cache.
//!   Reads see held writes. Optionally a power loss lets a random subset of the held
//!   writes land (a cache that had started to destage).
//!
//! This is a test backend: its rule table and cache sit behind mutexes shared by all
//! cores, which the production backends never do.

use super::{
    Bdev, BdevChannel, BdevError, BdevIo, BdevProps, Channel, Deferred, Drained, IoBuf, IoKind,
    IoSink, IoStatus, Tracker,
};
use crate::reactor::{self, Nanos, PollerHandle};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// When a rule fires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trigger {
    /// Only the Nth matching request (1-based).
    Nth(u64),
    /// Every Kth matching request.
    EveryKth(u64),
    /// Each matching request with this probability (0.0–1.0).
    Fraction(f64),
}

/// A failure-injection rule.
#[derive(Clone, Debug)]
pub struct FailRule {
    /// The kinds of I/O it applies to.
    pub kinds: Vec<IoKind>,
    pub trigger: Trigger,
    /// The status the failed requests complete with.
    pub status: IoStatus,
}

struct RuleState {
    rule: FailRule,
    seen: u64,
}

#[derive(Clone)]
enum Held {
    Data(Arc<[u8]>),
    Zero,
}

#[derive(Default)]
struct Cache {
    /// Block → (sequence number of the write that put it here, contents).
    blocks: BTreeMap<u64, (u64, Held)>,
    next_seq: u64,
}

/// A fault-injecting wrapper around another bdev.
pub struct ErrorBdev {
    props: BdevProps,
    base: Arc<dyn Bdev>,
    rules: Mutex<Vec<RuleState>>,
    latency_us: [AtomicU64; 5],
    submit_delay_us: [AtomicU64; 5],
    cache: Option<Mutex<Cache>>,
    seed: u64,
}

fn kind_index(k: IoKind) -> usize {
    match k {
        IoKind::Read => 0,
        IoKind::Write => 1,
        IoKind::Flush => 2,
        IoKind::Unmap => 3,
        IoKind::WriteZeroes => 4,
    }
}

impl ErrorBdev {
    /// Wraps `base` under the name `name`. With `volatile_cache`, writes are held until
    /// a flush.
    pub fn create(
        name: &str,
        base: Arc<dyn Bdev>,
        volatile_cache: bool,
    ) -> Result<Arc<ErrorBdev>, BdevError> {
        let props = BdevProps::new(
            name,
            None,
            base.block_size(),
            base.num_blocks(),
            "Error Injection Disk",
        )?
        .with_write_cache(volatile_cache || base.write_cache())
        .with_buf_align(base.buf_align());
        Ok(Arc::new(ErrorBdev {
            props,
            base,
            rules: Mutex::new(Vec::new()),
            latency_us: Default::default(),
            submit_delay_us: Default::default(),
            cache: volatile_cache.then(|| Mutex::new(Cache::default())),
            seed: 0x5eed,
        }))
    }

    fn rules(&self) -> MutexGuard<'_, Vec<RuleState>> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> Option<MutexGuard<'_, Cache>> {
        self.cache
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The wrapped bdev.
    pub fn base(&self) -> &Arc<dyn Bdev> {
        &self.base
    }

    /// Adds a failure rule.
    pub fn inject(&self, rule: FailRule) {
        self.rules().push(RuleState { rule, seen: 0 });
    }

    /// Removes every failure rule.
    pub fn clear_rules(&self) {
        self.rules().clear();
    }

    /// Adds `latency` to every request of `kind` (zero removes it).
    pub fn set_latency(&self, kind: IoKind, latency: Duration) {
        self.latency_us[kind_index(kind)].store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Holds every request of `kind` for `delay` before it does anything (zero removes
    /// it): unlike [`ErrorBdev::set_latency`], which delays only the completion, a
    /// delayed write reaches the base bdev late, as a slow device's would.
    pub fn set_submit_delay(&self, kind: IoKind, delay: Duration) {
        self.submit_delay_us[kind_index(kind)].store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Number of blocks held in the volatile cache, not yet flushed.
    pub fn unflushed_blocks(&self) -> usize {
        self.cache().map_or(0, |c| c.blocks.len())
    }

    /// Simulates a power failure: every held write not covered by a completed flush is
    /// lost. Returns the number of blocks dropped.
    pub fn power_loss(&self) -> usize {
        match self.cache() {
            Some(mut c) => {
                let n = c.blocks.len();
                c.blocks.clear();
                n
            }
            None => 0,
        }
    }

    /// Simulates a power failure during which a random part (`keep_fraction`) of the
    /// held blocks had already reached the medium. Must run on a reactor. Returns
    /// (blocks kept, blocks dropped).
    pub async fn power_loss_partial(&self, keep_fraction: f64, seed: u64) -> (usize, usize) {
        let held: Vec<(u64, Held)> = match self.cache() {
            Some(mut c) => std::mem::take(&mut c.blocks)
                .into_iter()
                .map(|(b, (_, h))| (b, h))
                .collect(),
            None => return (0, 0),
        };
        let mut rng = fastrand::Rng::with_seed(seed);
        let keep: Vec<(u64, Held)> = held
            .iter()
            .filter(|_| rng.f64() < keep_fraction)
            .cloned()
            .collect();
        let (kept, dropped) = (keep.len(), held.len() - keep.len());
        if let Ok(ch) = Channel::get(&self.base) {
            write_blocks(&ch, self.props.block_size as usize, keep).await;
        }
        (kept, dropped)
    }

    fn decide(&self, kind: IoKind, rng: &mut fastrand::Rng) -> Option<IoStatus> {
        let mut rules = self.rules();
        for r in rules.iter_mut() {
            if !r.rule.kinds.contains(&kind) {
                continue;
            }
            r.seen += 1;
            let fire = match r.rule.trigger {
                Trigger::Nth(n) => r.seen == n,
                Trigger::EveryKth(k) => k > 0 && r.seen % k == 0,
                Trigger::Fraction(f) => rng.f64() < f,
            };
            if fire {
                return Some(r.rule.status);
            }
        }
        None
    }
}

/// Writes held blocks to `ch`, coalescing contiguous runs; returns the worst status.
async fn write_blocks(ch: &Channel, bs: usize, blocks: Vec<(u64, Held)>) -> IoStatus {
    let mut status = IoStatus::Success;
    let mut i = 0;
    while i < blocks.len() {
        let start = blocks[i].0;
        let zero = matches!(blocks[i].1, Held::Zero);
        let mut j = i + 1;
        while j < blocks.len()
            && blocks[j].0 == start + (j - i) as u64
            && matches!(blocks[j].1, Held::Zero) == zero
            && j - i < 256
        {
            j += 1;
        }
        let n = (j - i) as u64;
        let st = if zero {
            ch.io(BdevIo::write_zeroes(start, n)).await.1
        } else {
            let mut buf = IoBuf::new(bs * (j - i));
            for (k, (_, h)) in blocks[i..j].iter().enumerate() {
                if let Held::Data(d) = h {
                    buf[k * bs..(k + 1) * bs].copy_from_slice(d);
                }
            }
            ch.io(BdevIo::write(start, n, buf)).await.1
        };
        status = status.worst(st);
        i = j;
    }
    status
}

impl Bdev for ErrorBdev {
    fn props(&self) -> &BdevProps {
        &self.props
    }

    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let base = Channel::get(&self.base)?;
        let seed = self.seed ^ reactor::current_core().unwrap_or(0) as u64;
        Ok(Rc::new(ErrorChannel(Rc::new_cyclic(
            |me: &Weak<ErrorChannelInner>| {
                let me = me.clone();
                let poller =
                    reactor::register_poller(move || me.upgrade().map_or(0, |c| c.run_due()));
                ErrorChannelInner {
                    bdev: self,
                    base,
                    deferred: Deferred::current(),
                    delayed: RefCell::new(VecDeque::new()),
                    held: RefCell::new(VecDeque::new()),
                    _poller: poller,
                    rng: RefCell::new(fastrand::Rng::with_seed(seed)),
                    inflight: RefCell::new(slab::Slab::new()),
                    tracker: Tracker::new(),
                }
            },
        ))))
    }

    fn supports(&self, kind: IoKind) -> bool {
        self.base.supports(kind)
    }

    fn unmap_reads_zeroes(&self) -> bool {
        self.cache.is_some() || self.base.unmap_reads_zeroes()
    }

    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({"error": {"base_bdev": self.base.name(),
            "volatile_cache": self.cache.is_some()}})
    }
}

struct ErrorChannel(Rc<ErrorChannelInner>);

/// A request forwarded to the base bdev, with the cache blocks to lay over a read.
type Forwarded = (BdevIo, Vec<(u64, Held)>);

struct ErrorChannelInner {
    bdev: Arc<ErrorBdev>,
    base: Channel,
    deferred: Rc<Deferred>,
    /// Requests waiting out their injected latency, with the time they complete.
    delayed: RefCell<VecDeque<(Nanos, (BdevIo, IoStatus))>>,
    /// Requests waiting out their submit delay, with the time they proceed.
    held: RefCell<VecDeque<(Nanos, BdevIo)>>,
    /// Runs `delayed` and `held` when they are due.
    _poller: PollerHandle,
    rng: RefCell<fastrand::Rng>,
    /// Parent requests waiting for their base request, with the cache snapshot a read
    /// must lay over what the base returns.
    inflight: RefCell<slab::Slab<Forwarded>>,
    /// Every request passes through it, so that the channel can tell when it drained.
    tracker: Rc<Tracker>,
}

impl Drop for ErrorChannelInner {
    /// Requests still waiting out their injected latency when the channel goes complete
    /// on the next loop iteration instead, never lost; requests still waiting out a
    /// submit delay fail as aborted.
    fn drop(&mut self) {
        for (_, io) in self.held.borrow_mut().drain(..) {
            self.deferred.complete(io, IoStatus::Aborted);
        }
        for (_, (io, status)) in self.delayed.borrow_mut().drain(..) {
            self.deferred.complete(io, status);
        }
    }
}

impl ErrorChannelInner {
    fn finish(&self, io: BdevIo, status: IoStatus) {
        let us = self.bdev.latency_us[kind_index(io.kind)].load(Ordering::Relaxed);
        if us == 0 {
            self.deferred.complete(io, status);
        } else {
            let at = reactor::now().after(Duration::from_micros(us));
            // Make sure a parked reactor wakes up for it.
            reactor::call_at(at, || {});
            self.delayed.borrow_mut().push_back((at, (io, status)));
        }
    }

    fn forward(self: &Rc<Self>, io: BdevIo, overlay: Vec<(u64, Held)>) {
        let (kind, off, n, fua) = (io.kind, io.offset_blocks, io.num_blocks, io.flags.fua);
        let iovs = io.sub_iovs(0, io.iov_len());
        let tag = self.inflight.borrow_mut().insert((io, overlay)) as u64;
        // SAFETY: the iovecs point into the parent request, which stays in `inflight`
        // (untouched) until this child completes.
        let child = unsafe { BdevIo::from_raw_iovs(kind, off, n, &iovs) }
            .with_fua(fua)
            .on_complete(self.clone(), tag);
        self.base.submit(child);
    }

    fn submit_cached(self: &Rc<Self>, mut io: BdevIo, cache: &Mutex<Cache>) {
        let bs = self.bdev.props.block_size as usize;
        match io.kind {
            IoKind::Write if io.flags.fua => {
                // Force unit access: straight to the medium; the blocks it covers are no
                // longer held (their newest value is durable now).
                {
                    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                    for i in 0..io.num_blocks {
                        c.blocks.remove(&(io.offset_blocks + i));
                    }
                }
                self.forward(io, Vec::new());
            }
            IoKind::Write | IoKind::Unmap | IoKind::WriteZeroes => {
                let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                for i in 0..io.num_blocks {
                    c.next_seq += 1;
                    let seq = c.next_seq;
                    let held = if io.kind == IoKind::Write {
                        let mut d = vec![0u8; bs];
                        io.copy_out(i as usize * bs, &mut d);
                        Held::Data(d.into())
                    } else {
                        Held::Zero
                    };
                    c.blocks.insert(io.offset_blocks + i, (seq, held));
                }
                drop(c);
                self.finish(io, IoStatus::Success);
            }
            IoKind::Read => {
                let overlay: Vec<(u64, Held)> = {
                    let c = cache.lock().unwrap_or_else(|p| p.into_inner());
                    c.blocks
                        .range(io.offset_blocks..io.offset_blocks + io.num_blocks)
                        .map(|(b, (_, h))| (*b, h.clone()))
                        .collect()
                };
                if overlay.len() as u64 == io.num_blocks {
                    apply_overlay(&mut io, bs, &overlay);
                    self.finish(io, IoStatus::Success);
                } else {
                    self.forward(io, overlay);
                }
            }
            IoKind::Flush => {
                let me = self.clone();
                let held: Vec<(u64, u64, Held)> = {
                    let c = cache.lock().unwrap_or_else(|p| p.into_inner());
                    c.blocks
                        .iter()
                        .map(|(b, (s, h))| (*b, *s, h.clone()))
                        .collect()
                };
                reactor::spawn_local(async move {
                    let blocks = held.iter().map(|(b, _, h)| (*b, h.clone())).collect();
                    let mut st = write_blocks(&me.base, bs, blocks).await;
                    if st.is_success() {
                        st = me.base.io(BdevIo::flush()).await.1;
                    }
                    if st.is_success()
                        && let Some(mut c) = me.bdev.cache()
                    {
                        for (b, seq, _) in &held {
                            if c.blocks.get(b).is_some_and(|(s, _)| s == seq) {
                                c.blocks.remove(b);
                            }
                        }
                    }
                    me.finish(io, st);
                })
                .detach();
            }
        }
    }
}

/// The front of `q` if its time has come.
fn pop_due<T>(q: &RefCell<VecDeque<(Nanos, T)>>, now: Nanos) -> Option<T> {
    let mut q = q.borrow_mut();
    if q.front().is_some_and(|(at, _)| *at <= now) {
        q.pop_front().map(|(_, x)| x)
    } else {
        None
    }
}

fn apply_overlay(io: &mut BdevIo, bs: usize, overlay: &[(u64, Held)]) {
    for (b, h) in overlay {
        let at = (b - io.offset_blocks) as usize * bs;
        match h {
            Held::Data(d) => io.copy_in(at, d),
            Held::Zero => io.zero_fill(at, bs),
        }
    }
}

impl ErrorChannelInner {
    /// Completes the delayed requests and starts the held ones whose time has come.
    fn run_due(self: &Rc<Self>) -> usize {
        let now = reactor::now();
        let mut n = 0;
        while let Some((io, status)) = pop_due(&self.delayed, now) {
            io.complete(status);
            n += 1;
        }
        while let Some(io) = pop_due(&self.held, now) {
            self.proceed(io);
            n += 1;
        }
        n
    }

    fn proceed(self: &Rc<Self>, io: BdevIo) {
        let injected = self.bdev.decide(io.kind, &mut self.rng.borrow_mut());
        if let Some(status) = injected {
            self.finish(io, status);
            return;
        }
        match &self.bdev.cache {
            Some(cache) => self.submit_cached(io, cache),
            None => self.forward(io, Vec::new()),
        }
    }
}

impl BdevChannel for ErrorChannel {
    fn submit(&self, io: BdevIo) {
        let inner = &self.0;
        let io = inner.tracker.track(io);
        let us = inner.bdev.submit_delay_us[kind_index(io.kind)].load(Ordering::Relaxed);
        if us > 0 || !inner.held.borrow().is_empty() {
            // In order behind the ones already held.
            let at = reactor::now().after(Duration::from_micros(us));
            // Make sure a parked reactor wakes up for it.
            reactor::call_at(at, || {});
            inner.held.borrow_mut().push_back((at, io));
        } else {
            inner.proceed(io);
        }
    }

    fn tracks_drain(&self) -> bool {
        true
    }

    fn drained(&self) -> Option<Drained> {
        Some(self.0.tracker.drained())
    }
}

impl IoSink for ErrorChannelInner {
    fn io_done(&self, child: BdevIo, status: IoStatus) {
        let (mut parent, overlay) = self.inflight.borrow_mut().remove(child.tag as usize);
        if status.is_success() && !overlay.is_empty() {
            apply_overlay(&mut parent, self.bdev.props.block_size as usize, &overlay);
        }
        self.finish(parent, status);
    }
}
