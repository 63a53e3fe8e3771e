//! I/O statistics: per bdev and per core, counted where every request submitted to a
//! bdev channel passes ([`super::Channel::submit`]) and completes ([`super::BdevIo::complete`]).
//!
//! Each core keeps, for each bdev it has opened a channel to, one [`ChannelStats`]:
//! plain counters in `Cell`s that only that core touches — no lock, no atomic, no borrow
//! flag on the I/O path. A request is stamped at submission with its channel's
//! statistics (a pointer, no reference count: [`InFlight`]) and the time, kept in a
//! per-thread table of the requests in flight whose slot number the request carries in
//! padding it had anyway ([`stamp`]: the stamp does not grow [`super::BdevIo`], the hot
//! path's request); its completion adds it to them: on success its operation count,
//! bytes and latency (sum, maximum, minimum, and a power-of-two histogram for the
//! metrics endpoint), on failure one more error of its status. A request counts once,
//! on the bdev it was submitted to: a request a stacked bdev (a virtual disk) hands to
//! its base bdev as it is ([`super::BdevIo::readdress`]) counts on the disk, not again
//! on the base bdev, which counts what is submitted to it as a request of its own (a
//! pool's metadata, the parts of a request split across segments, copies). SPDK
//! differs here: an lvol's blobstore submits new requests to its base bdev, which
//! counts them too.
//!
//! **Time.** Latency is in ticks of [`reactor::ticks`] (the CPU's time-stamp counter,
//! [`reactor::tick_rate`] per second, SPDK's unit). The time stamp of a submission and
//! of a completion is the one its reactor read at the start of its current loop
//! iteration ([`reactor::pass_ticks`]), so a latency is exact to within one iteration
//! (microseconds under load, less when idle) and costs a load instead of a counter
//! read per request.
//!
//! **Latency histograms** (SPDK's `bdev_enable_histogram`): off by default; when on, each
//! core tallies its completions into a [`Histogram`] laid out as SPDK's
//! `spdk_histogram_data`, which `bdev_get_histogram` merges and encodes as SPDK does.
//!
//! Gathering ([`collect`], [`set_histogram`]) goes to every core by message and has a
//! time limit.

use super::{IoKind, IoStatus};
use crate::reactor::{self, Cores};
use base64::Engine;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The I/O kinds, in [`IoKind`]'s order (its discriminant indexes the arrays below).
pub const KINDS: [IoKind; 5] = [
    IoKind::Read,
    IoKind::Write,
    IoKind::Flush,
    IoKind::Unmap,
    IoKind::WriteZeroes,
];

/// The completion statuses, in [`IoStatus`]'s order.
pub const STATUSES: [IoStatus; 9] = [
    IoStatus::Success,
    IoStatus::InvalidOpcode,
    IoStatus::InvalidField,
    IoStatus::LbaOutOfRange,
    IoStatus::CapacityExceeded,
    IoStatus::MediaError,
    IoStatus::Aborted,
    IoStatus::WriteProtected,
    IoStatus::InternalError,
];

/// Buckets of the power-of-two latency histogram: bucket `k` counts latencies of `k`
/// significant bits (`[2^(k-1), 2^k)` ticks; bucket 0 counts zero).
pub const LOG2_BUCKETS: usize = 65;

/// Successful completions of one I/O kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindStat {
    pub ops: u64,
    pub bytes: u64,
    /// Sum of the latencies, in ticks.
    pub latency_ticks: u64,
    pub max_latency_ticks: u64,
    /// `u64::MAX` while `ops` is 0.
    pub min_latency_ticks: u64,
    /// Latencies by number of significant bits ([`LOG2_BUCKETS`]).
    pub log2: [u64; LOG2_BUCKETS],
}

impl Default for KindStat {
    fn default() -> Self {
        KindStat {
            ops: 0,
            bytes: 0,
            latency_ticks: 0,
            max_latency_ticks: 0,
            min_latency_ticks: u64::MAX,
            log2: [0; LOG2_BUCKETS],
        }
    }
}

impl KindStat {
    fn add(&mut self, o: &KindStat) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.latency_ticks += o.latency_ticks;
        self.max_latency_ticks = self.max_latency_ticks.max(o.max_latency_ticks);
        self.min_latency_ticks = self.min_latency_ticks.min(o.min_latency_ticks);
        for (a, b) in self.log2.iter_mut().zip(o.log2.iter()) {
            *a += b;
        }
    }

    /// The minimum as SPDK reports it: 0 when nothing was counted.
    pub fn min_reported(&self) -> u64 {
        if self.min_latency_ticks == u64::MAX {
            0
        } else {
            self.min_latency_ticks
        }
    }
}

/// The statistics of one bdev on one core, or summed over cores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoStat {
    /// Indexed by `IoKind as usize` ([`KINDS`]).
    pub kinds: [KindStat; 5],
    /// Failed completions, indexed by `IoStatus as usize` ([`STATUSES`]; index 0 unused).
    pub errors: [u64; 9],
}

/// What `reset_mode` resets (SPDK's `spdk_bdev_reset_stat_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResetMode {
    /// Nothing.
    #[default]
    None,
    /// Everything.
    All,
    /// Maximum and minimum latencies.
    MaxMin,
    /// Error counts.
    Error,
}

impl ResetMode {
    /// SPDK's name of a mode: `all`, `maxmin`, `error`, `none`.
    pub fn parse(s: &str) -> Option<ResetMode> {
        Some(match s {
            "all" => ResetMode::All,
            "maxmin" => ResetMode::MaxMin,
            "error" => ResetMode::Error,
            "none" => ResetMode::None,
            _ => return None,
        })
    }
}

impl IoStat {
    /// Adds `o` (another core's counters of the same bdev).
    pub fn add(&mut self, o: &IoStat) {
        for (a, b) in self.kinds.iter_mut().zip(o.kinds.iter()) {
            a.add(b);
        }
        for (a, b) in self.errors.iter_mut().zip(o.errors.iter()) {
            *a += b;
        }
    }

    /// The counters of one kind.
    pub fn kind(&self, k: IoKind) -> &KindStat {
        &self.kinds[k as usize]
    }

    /// Failed completions, all statuses.
    pub fn error_count(&self) -> u64 {
        self.errors.iter().sum()
    }

    fn reset(&mut self, mode: ResetMode) {
        match mode {
            ResetMode::None => {}
            ResetMode::All => *self = IoStat::default(),
            ResetMode::MaxMin => {
                for k in self.kinds.iter_mut() {
                    k.max_latency_ticks = 0;
                    k.min_latency_ticks = u64::MAX;
                }
            }
            ResetMode::Error => self.errors = [0; 9],
        }
    }

    /// SPDK's fields (`spdk_bdev_dump_io_stat_json`) and tessera's for the kinds SPDK
    /// does not count (write-zeroes, flush). `io_error` counts failed completions by
    /// tessera's status names.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: u64| {
            m.insert(k.to_string(), v.into());
        };
        let r = self.kind(IoKind::Read);
        let w = self.kind(IoKind::Write);
        let u = self.kind(IoKind::Unmap);
        let z = self.kind(IoKind::WriteZeroes);
        let f = self.kind(IoKind::Flush);
        put("bytes_read", r.bytes);
        put("num_read_ops", r.ops);
        put("bytes_written", w.bytes);
        put("num_write_ops", w.ops);
        put("bytes_unmapped", u.bytes);
        put("num_unmap_ops", u.ops);
        put("bytes_copied", 0);
        put("num_copy_ops", 0);
        for (name, k) in [("read", r), ("write", w), ("unmap", u)] {
            put(&format!("{name}_latency_ticks"), k.latency_ticks);
            put(&format!("max_{name}_latency_ticks"), k.max_latency_ticks);
            put(&format!("min_{name}_latency_ticks"), k.min_reported());
        }
        put("copy_latency_ticks", 0);
        put("max_copy_latency_ticks", 0);
        put("min_copy_latency_ticks", 0);
        put("bytes_zeroed", z.bytes);
        put("num_write_zeroes_ops", z.ops);
        put("write_zeroes_latency_ticks", z.latency_ticks);
        put("num_flush_ops", f.ops);
        put("flush_latency_ticks", f.latency_ticks);
        let mut errors = serde_json::Map::new();
        for (i, n) in self.errors.iter().enumerate() {
            if *n > 0 {
                let name = serde_json::to_value(STATUSES[i]).unwrap_or_default();
                if let Some(s) = name.as_str() {
                    errors.insert(s.to_string(), (*n).into());
                }
            }
        }
        m.insert("io_error".into(), serde_json::Value::Object(errors));
        serde_json::Value::Object(m)
    }
}

/// How a latency histogram is laid out (SPDK's `bdev_enable_histogram` options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistogramOpts {
    /// Each power-of-two range is cut into `2^granularity` buckets.
    pub granularity: u32,
    /// Latencies below are counted in the first bucket.
    pub min_nsec: u64,
    /// Latencies at or above are counted in the last bucket.
    pub max_nsec: u64,
    /// Only this kind is tallied; `None`: every kind.
    pub opc: Option<IoKind>,
}

impl Default for HistogramOpts {
    /// SPDK's defaults: granularity 7, 1 µs to 120 s, every kind.
    fn default() -> Self {
        HistogramOpts {
            granularity: 7,
            min_nsec: 1_000,
            max_nsec: 120_000_000_000,
            opc: None,
        }
    }
}

/// The largest granularity accepted (2^16 buckets per range).
pub const MAX_GRANULARITY: u32 = 16;

/// Nanoseconds as ticks of `rate` per second.
fn ns_to_ticks(ns: u64, rate: u64) -> u64 {
    (ns as u128 * rate as u128 / 1_000_000_000).min(u64::MAX as u128) as u64
}

/// A latency histogram with SPDK's layout (`include/spdk/histogram_data.h`): ranges
/// `min_range..=max_range`, each of `2^granularity` buckets; range 0 holds the values
/// below `2^granularity` one by one, range `r > 0` the values of `r + granularity`
/// significant bits, `2^(r-1)` values a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub granularity: u32,
    pub min_range: u32,
    pub max_range: u32,
    buckets: Vec<u64>,
}

impl Histogram {
    /// A histogram of the values `[min_val, max_val)` (ticks); `max_val > min_val`.
    pub fn new(granularity: u32, min_val: u64, max_val: u64) -> Histogram {
        let mut h = Histogram {
            granularity,
            min_range: 0,
            max_range: 0,
            buckets: Vec::new(),
        };
        h.min_range = h.range_of(min_val);
        h.max_range = h.range_of(max_val.max(min_val.saturating_add(1)) - 1);
        let n = ((h.max_range - h.min_range + 1) as usize) << granularity;
        h.buckets = vec![0; n];
        h
    }

    /// The histogram `opts` describes, in ticks of `tick_rate` per second.
    pub fn for_opts(opts: &HistogramOpts, tick_rate: u64) -> Histogram {
        Histogram::new(
            opts.granularity,
            ns_to_ticks(opts.min_nsec, tick_rate),
            ns_to_ticks(opts.max_nsec, tick_rate),
        )
    }

    fn range_of(&self, v: u64) -> u32 {
        let clz = v.leading_zeros();
        let lsb = 64 - self.granularity;
        lsb.saturating_sub(clz)
    }

    /// Counts one value.
    #[inline]
    pub fn tally(&mut self, v: u64) {
        self.tally_n(v, 1);
    }

    /// Counts `n` values `v`.
    pub fn tally_n(&mut self, v: u64, n: u64) {
        let range = self.range_of(v);
        let per = 1u64 << self.granularity;
        let (range, index) = if range < self.min_range {
            (self.min_range, 0)
        } else if range > self.max_range {
            (self.max_range, per - 1)
        } else {
            let shift = range.saturating_sub(1);
            (range, (v >> shift) & (per - 1))
        };
        let i = (((range - self.min_range) as usize) << self.granularity) + index as usize;
        self.buckets[i] += n;
    }

    /// Adds another histogram of the same layout; false (nothing added) otherwise.
    pub fn merge(&mut self, o: &Histogram) -> bool {
        if (o.granularity, o.min_range, o.max_range)
            != (self.granularity, self.min_range, self.max_range)
        {
            return false;
        }
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        true
    }

    /// Values counted.
    pub fn total(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The buckets as SPDK's `bdev_get_histogram` sends them: little-endian `u64`s,
    /// base64 (standard alphabet, padded).
    pub fn encode(&self) -> String {
        let bytes: Vec<u8> = self.buckets.iter().flat_map(|b| b.to_le_bytes()).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[cfg(test)]
    fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = 0);
    }
}

/// Statistics on or off for channels opened from now on (`tessera bench --stats off`
/// measures their cost). On by default.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns statistics on or off for the channels opened after the call.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The histogram settings of each bdev (by [`super::Bdev::id`]) that ever had one:
/// `(options, enabled)`. Control path only: read when a core opens its first channel
/// to a bdev, written by [`set_histogram`].
static HISTOGRAMS: Mutex<BTreeMap<u64, (HistogramOpts, bool)>> = Mutex::new(BTreeMap::new());

fn histograms() -> std::sync::MutexGuard<'static, BTreeMap<u64, (HistogramOpts, bool)>> {
    HISTOGRAMS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The histogram settings of a bdev: `None` if it never had a histogram.
pub fn histogram_opts(bdev: u64) -> Option<(HistogramOpts, bool)> {
    histograms().get(&bdev).copied()
}

/// The counters of one I/O kind as a core updates them: plain cells, no borrow flag
/// (only the owning core touches them, and an update calls nothing). In this order:
/// the five counters every completion updates share a cache line.
#[repr(C)]
struct KindCells {
    ops: Cell<u64>,
    bytes: Cell<u64>,
    latency_ticks: Cell<u64>,
    max_latency_ticks: Cell<u64>,
    min_latency_ticks: Cell<u64>,
    log2: [Cell<u64>; LOG2_BUCKETS],
}

impl KindCells {
    fn new() -> KindCells {
        KindCells {
            ops: Cell::new(0),
            bytes: Cell::new(0),
            latency_ticks: Cell::new(0),
            max_latency_ticks: Cell::new(0),
            min_latency_ticks: Cell::new(u64::MAX),
            log2: std::array::from_fn(|_| Cell::new(0)),
        }
    }

    fn get(&self) -> KindStat {
        KindStat {
            ops: self.ops.get(),
            bytes: self.bytes.get(),
            latency_ticks: self.latency_ticks.get(),
            max_latency_ticks: self.max_latency_ticks.get(),
            min_latency_ticks: self.min_latency_ticks.get(),
            log2: std::array::from_fn(|i| self.log2[i].get()),
        }
    }

    fn set(&self, k: &KindStat) {
        self.ops.set(k.ops);
        self.bytes.set(k.bytes);
        self.latency_ticks.set(k.latency_ticks);
        self.max_latency_ticks.set(k.max_latency_ticks);
        self.min_latency_ticks.set(k.min_latency_ticks);
        for (c, v) in self.log2.iter().zip(k.log2.iter()) {
            c.set(*v);
        }
    }
}

/// One core's [`IoStat`] of one bdev, in cells.
#[repr(C)]
struct LiveStat {
    kinds: [KindCells; 5],
    errors: [Cell<u64>; 9],
}

impl LiveStat {
    fn new() -> LiveStat {
        LiveStat {
            kinds: std::array::from_fn(|_| KindCells::new()),
            errors: std::array::from_fn(|_| Cell::new(0)),
        }
    }

    fn get(&self) -> IoStat {
        IoStat {
            kinds: std::array::from_fn(|i| self.kinds[i].get()),
            errors: std::array::from_fn(|i| self.errors[i].get()),
        }
    }

    fn set(&self, s: &IoStat) {
        for (c, k) in self.kinds.iter().zip(s.kinds.iter()) {
            c.set(k);
        }
        for (c, v) in self.errors.iter().zip(s.errors.iter()) {
            c.set(*v);
        }
    }

    fn reset(&self, mode: ResetMode) {
        if mode != ResetMode::None {
            let mut s = self.get();
            s.reset(mode);
            self.set(&s);
        }
    }
}

/// One core's statistics of one bdev: owned by that core, shared by its channels to
/// the bdev; the requests in flight on them point at it from this thread's table of
/// requests in flight ([`stamp`]), which keeps it alive meanwhile. In this order: what a
/// completion reads (the clock, the block size, the flags) shares the first cache line
/// with the read counters (aligned, the `Rc`'s counts take a line of their own).
#[repr(C, align(64))]
pub struct ChannelStats {
    ticks: Rc<Cell<u64>>,
    block_shift: u32,
    /// `histogram` is `Some`: the completion path looks at this flag only.
    histogram_on: Cell<bool>,
    /// This thread's table of requests in flight holds a reference ([`InFlight::pinned`]).
    pinned: Cell<bool>,
    stat: LiveStat,
    histogram: RefCell<Option<(HistogramOpts, Histogram)>>,
}

impl ChannelStats {
    fn new(block_size: u32, histogram: Option<HistogramOpts>) -> ChannelStats {
        let s = ChannelStats::with_ticks(reactor::pass_ticks(), block_size.trailing_zeros());
        if let Some(o) = histogram {
            s.set_histogram(Some(o), reactor::tick_rate());
        }
        s
    }

    fn with_ticks(ticks: Rc<Cell<u64>>, block_shift: u32) -> ChannelStats {
        ChannelStats {
            ticks,
            block_shift,
            histogram_on: Cell::new(false),
            pinned: Cell::new(false),
            stat: LiveStat::new(),
            histogram: RefCell::new(None),
        }
    }

    /// Turns the histogram on with `opts` (kept, counts and all, if it has these
    /// options already) or off.
    fn set_histogram(&self, opts: Option<HistogramOpts>, tick_rate: u64) {
        let mut h = self.histogram.borrow_mut();
        match opts {
            Some(o) => {
                if h.as_ref().is_none_or(|(have, _)| *have != o) {
                    *h = Some((o, Histogram::for_opts(&o, tick_rate)));
                }
            }
            None => *h = None,
        }
        self.histogram_on.set(h.is_some());
    }

    /// The time stamp of this reactor iteration.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.ticks.get()
    }

    /// Counts a completion of a request of `kind` over `num_blocks` submitted at
    /// `start`.
    #[inline]
    pub(crate) fn record(&self, kind: IoKind, num_blocks: u64, start: u64, status: IoStatus) {
        let latency = self.ticks.get().saturating_sub(start);
        if status.is_success() {
            let k = &self.stat.kinds[kind as usize];
            k.ops.set(k.ops.get() + 1);
            k.bytes
                .set(k.bytes.get() + (num_blocks << self.block_shift));
            k.latency_ticks.set(k.latency_ticks.get() + latency);
            k.max_latency_ticks
                .set(k.max_latency_ticks.get().max(latency));
            k.min_latency_ticks
                .set(k.min_latency_ticks.get().min(latency));
            let b = &k.log2[(64 - latency.leading_zeros()) as usize];
            b.set(b.get() + 1);
        } else {
            let e = &self.stat.errors[status as usize];
            e.set(e.get() + 1);
        }
        if self.histogram_on.get() {
            self.tally(kind, latency);
        }
    }

    /// Counts `n` successful completions of requests of `kind` submitted at `start`,
    /// over `num_blocks` in all: what `n` calls of [`ChannelStats::record`] with
    /// `IoStatus::Success` count.
    #[inline]
    fn record_run(&self, kind: IoKind, n: u64, num_blocks: u64, start: u64) {
        let latency = self.ticks.get().saturating_sub(start);
        let k = &self.stat.kinds[kind as usize];
        k.ops.set(k.ops.get() + n);
        k.bytes
            .set(k.bytes.get() + (num_blocks << self.block_shift));
        k.latency_ticks.set(k.latency_ticks.get() + latency * n);
        k.max_latency_ticks
            .set(k.max_latency_ticks.get().max(latency));
        k.min_latency_ticks
            .set(k.min_latency_ticks.get().min(latency));
        let b = &k.log2[(64 - latency.leading_zeros()) as usize];
        b.set(b.get() + n);
        if self.histogram_on.get() {
            self.tally_n(kind, latency, n);
        }
    }

    #[cold]
    #[inline(never)]
    fn tally(&self, kind: IoKind, latency: u64) {
        self.tally_n(kind, latency, 1);
    }

    #[cold]
    #[inline(never)]
    fn tally_n(&self, kind: IoKind, latency: u64, n: u64) {
        if let Some((opts, h)) = &mut *self.histogram.borrow_mut()
            && opts.opc.is_none_or(|o| o == kind)
        {
            h.tally_n(latency, n);
        }
    }
}

/// [`super::BdevIo`]'s statistics stamp when it has none.
pub const NO_SLOT: u32 = u32::MAX;

/// Counted requests in flight submitted together: the statistics that count them (null:
/// the slot is free), when they were submitted (the reactor pass), and how many carry
/// the slot; a free slot holds the next free slot's index in `submitted`.
struct Slot {
    stats: *const ChannelStats,
    submitted: u64,
    live: u32,
}

/// This thread's counted requests in flight, by slot. A request carries its slot's
/// index (four bytes in padding it already had) instead of the 16 bytes of the stamp
/// itself. Requests stamped one after the other for the same statistics in the same
/// reactor pass have the same stamp, so they share a slot (`last`): a burst of
/// submissions costs a compare and an increment each, and a batch of their completions
/// ([`finish_queued`]) gives the slot back once. The slots are reused (a free list), so
/// the table is as long as the most stamps ever in flight on the thread at once. Only
/// this thread touches it: requests complete on the core that submitted them (`BdevIo`
/// is not `Send`), and a stamp is carried by one request at a time (`BdevIo` is not
/// `Clone`; a stacked bdev's readdressing moves it), so a slot's count is exact.
///
/// A slot points at its statistics without a reference count: the table holds one
/// reference ([`InFlight::pinned`]) to every [`ChannelStats`] a slot may point at, taken
/// the first time a request is stamped for it, and gives it back only when no occupied
/// slot points at it ([`InFlight::unpin_idle`]). Slots and references live in the same
/// table and go together when the thread ends.
struct InFlight {
    slots: Vec<Slot>,
    free: u32,
    /// The slot stamped last: the next stamp shares it if it has the same statistics
    /// and pass (and it is not free).
    last: u32,
    pinned: Vec<Rc<ChannelStats>>,
}

/// Pinned statistics from which [`InFlight::pin`] looks for idle ones to let go: a
/// thread that runs reactor after reactor (tests) keeps the statistics of the bdevs it
/// served up to about twice this many, or twice what is in use.
const PIN_SWEEP: usize = 64;

impl InFlight {
    #[cold]
    #[inline(never)]
    fn pin(&mut self, stats: &Rc<ChannelStats>) -> Vec<Rc<ChannelStats>> {
        let mut gone = Vec::new();
        if self.pinned.len() >= PIN_SWEEP && self.pinned.len().is_power_of_two() {
            gone = self.unpin_idle();
        }
        stats.pinned.set(true);
        self.pinned.push(stats.clone());
        gone
    }

    /// Lets go of the statistics no request in flight points at; returns them, to be
    /// dropped once the table is no longer borrowed.
    fn unpin_idle(&mut self) -> Vec<Rc<ChannelStats>> {
        let busy: HashSet<*const ChannelStats> = self
            .slots
            .iter()
            .filter(|s| !s.stats.is_null())
            .map(|s| s.stats)
            .collect();
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pinned)
            .into_iter()
            .partition(|s| busy.contains(&Rc::as_ptr(s)));
        self.pinned = keep;
        for s in &gone {
            s.pinned.set(false);
        }
        gone
    }

    /// The stamp of a request submitted at `submitted` for `stats`: the last slot if it
    /// holds the same, else a new one.
    #[inline]
    fn stamp(&mut self, stats: *const ChannelStats, submitted: u64) -> u32 {
        let last = self.last;
        if let Some(s) = self.slots.get_mut(last as usize)
            && s.stats == stats
            && s.submitted == submitted
        {
            s.live += 1;
            return last;
        }
        let i = self.free;
        let i = match self.slots.get_mut(i as usize) {
            Some(s) => {
                self.free = s.submitted as u32;
                *s = Slot {
                    stats,
                    submitted,
                    live: 1,
                };
                i
            }
            None => self.grow(stats, submitted),
        };
        self.last = i;
        i
    }

    /// Gives back `n` of the requests carrying `slot` (all of them: the slot is free),
    /// returning what it holds.
    #[inline]
    fn take(&mut self, slot: u32, n: u32) -> Option<(*const ChannelStats, u64)> {
        let free = self.free;
        let s = self.slots.get_mut(slot as usize)?;
        if s.stats.is_null() {
            return None;
        }
        let held = (s.stats, s.submitted);
        debug_assert!(
            n <= s.live,
            "slot {slot}: {n} given back, {} carried",
            s.live
        );
        s.live = s.live.saturating_sub(n);
        if s.live == 0 {
            s.stats = std::ptr::null();
            s.submitted = free as u64;
            self.free = slot;
        }
        Some(held)
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, stats: *const ChannelStats, submitted: u64) -> u32 {
        let i = self.slots.len();
        if i >= NO_SLOT as usize {
            // Four billion stamps in flight on one core: this one goes uncounted.
            return NO_SLOT;
        }
        self.slots.push(Slot {
            stats,
            submitted,
            live: 1,
        });
        i as u32
    }
}

thread_local! {
    static IN_FLIGHT: UnsafeCell<InFlight> = const {
        UnsafeCell::new(InFlight {
            slots: Vec::new(),
            free: NO_SLOT,
            last: NO_SLOT,
            pinned: Vec::new(),
        })
    };
}

/// Runs `f` on this thread's table; `None` once the thread's locals are gone.
///
/// `f` must not reach the table again (it gets the only reference): the functions of
/// this module that call this pass closures that only read and write the table's own
/// fields, allocate, or clone an `Rc`; none calls code that could come back here.
#[inline]
fn with_in_flight<R>(f: impl FnOnce(&mut InFlight) -> R) -> Option<R> {
    IN_FLIGHT
        .try_with(|t| {
            // SAFETY: the table is thread-local, so no other thread reaches it, and on
            // this thread the only way to it is this function, whose callers' closures
            // never call it again (see above): the `&mut` is the only reference while
            // it lives.
            f(unsafe { &mut *t.get() })
        })
        .ok()
}

/// Stamps a request submitted now to a channel counted by `stats`: its slot.
#[inline]
pub(crate) fn stamp(stats: &Rc<ChannelStats>) -> u32 {
    if !stats.pinned.get() {
        pin(stats);
    }
    let submitted = stats.now();
    let ptr = Rc::as_ptr(stats);
    with_in_flight(|t| t.stamp(ptr, submitted)).unwrap_or(NO_SLOT)
}

/// Pins `stats` in this thread's table (the first request stamped for it).
#[cold]
#[inline(never)]
fn pin(stats: &Rc<ChannelStats>) {
    // What the table lets go of is dropped after it is no longer borrowed.
    drop(with_in_flight(|t| t.pin(stats)));
}

/// Gives back one request's hold of `slot`, returning what it holds.
#[inline]
fn take(slot: u32) -> Option<(*const ChannelStats, u64)> {
    with_in_flight(|t| t.take(slot, 1)).flatten()
}

/// Counts the completion of the request stamped `slot`, of `kind` over `num_blocks`.
#[inline]
pub(crate) fn finish(slot: u32, kind: IoKind, num_blocks: u64, status: IoStatus) {
    if let Some((stats, submitted)) = take(slot) {
        // SAFETY: the slot was occupied, so the table pins the statistics it points at
        // (a reference in `InFlight::pinned`, taken before the slot was filled and given
        // back only when no occupied slot points there); nothing has run on this thread
        // since `take`, so the pin still holds and the memory is live. Only shared
        // references to a `ChannelStats` exist (it sits in `Rc`s).
        let stats = unsafe { &*stats };
        stats.record(kind, num_blocks, submitted, status);
    }
}

/// Counts, ahead of their completion, the requests of a batch that a [`super::Deferred`]
/// queue is about to complete, each with the status it holds for it, and clears their
/// stamps (so that [`super::BdevIo::complete`] then has nothing to count).
///
/// The same counts as `complete` would make, at the same time stamp (the batch completes
/// in this reactor iteration), for less: the table of requests in flight is looked up
/// once per batch instead of once per request; successive successes of one kind that
/// carry one slot (one bdev, submitted in one iteration: most of a batch, with the same
/// latency) are added up, counted once with [`ChannelStats::record_run`] and give the
/// slot back at once; and `complete` cleared
/// the stamp with a 4-byte store right before the request is copied to its sink in
/// 16-byte loads, which cannot take their data from that store and wait for it to
/// reach the cache (a store-forwarding stall), where these stores go into the queue
/// long before the drain copies each request out.
pub(crate) fn finish_queued(batch: &mut std::collections::VecDeque<super::BdevIo>) {
    if !ENABLED.load(Ordering::Relaxed) {
        // Channels opened while statistics were on still stamp their requests:
        // `complete` counts those.
        return;
    }
    /// Successes of one kind carrying one slot (one bdev, one submission time), not
    /// counted yet: they still hold the slot.
    struct Run {
        slot: u32,
        kind: IoKind,
        n: u32,
        num_blocks: u64,
    }
    impl Run {
        #[inline]
        fn flush(&self, t: &mut InFlight) {
            if self.n > 0
                && let Some((stats, submitted)) = t.take(self.slot, self.n)
            {
                // SAFETY: the slot was occupied, so the table pins the statistics it
                // points at (a reference in `InFlight::pinned`, given back only by
                // `InFlight::pin` and `unpin_idle`, which nothing in `finish_queued`'s
                // closure calls: `record`, `record_run` and the histogram touch only the
                // statistics).
                unsafe { &*stats }.record_run(self.kind, self.n as u64, self.num_blocks, submitted);
            }
        }
    }
    with_in_flight(|t| {
        let mut run = Run {
            slot: NO_SLOT,
            kind: IoKind::Read,
            n: 0,
            num_blocks: 0,
        };
        for io in batch.iter_mut() {
            if io.stats == NO_SLOT {
                continue;
            }
            let slot = std::mem::replace(&mut io.stats, NO_SLOT);
            if !io.deferred.is_success() {
                // A failure counts on its own (a run holding the same slot keeps it
                // occupied meanwhile).
                if let Some((stats, submitted)) = t.take(slot, 1) {
                    // SAFETY: as in `Run::flush`.
                    unsafe { &*stats }.record(io.kind, io.num_blocks, submitted, io.deferred);
                }
                continue;
            }
            if slot == run.slot && io.kind == run.kind {
                run.n += 1;
                run.num_blocks += io.num_blocks;
            } else {
                run.flush(t);
                run = Run {
                    slot,
                    kind: io.kind,
                    n: 1,
                    num_blocks: io.num_blocks,
                };
            }
        }
        run.flush(t);
    });
}

/// Frees the slot of a request dropped without completing; nothing is counted.
pub(crate) fn release(slot: u32) {
    take(slot);
}

/// Counted requests in flight on this thread (tests).
#[cfg(test)]
fn in_flight() -> usize {
    with_in_flight(|t| t.slots.iter().filter(|s| !s.stats.is_null()).count()).unwrap_or(0)
}

/// Lets go of the statistics no request in flight on this thread points at.
fn unpin_idle() {
    drop(with_in_flight(|t| t.unpin_idle()));
}

/// The statistics of every bdev on this core.
#[derive(Default)]
struct CoreStats {
    by_bdev: RefCell<HashMap<u64, Rc<ChannelStats>>>,
}

/// This core's statistics of `bdev` (created on first use), or `None` when statistics
/// are off.
pub(crate) fn channel_stats(bdev: &dyn super::Bdev) -> Option<Rc<ChannelStats>> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let core = reactor::local(CoreStats::default);
    let id = bdev.props().id;
    if let Some(s) = core.by_bdev.borrow().get(&id) {
        return Some(s.clone());
    }
    let hist = histogram_opts(id).and_then(|(o, on)| on.then_some(o));
    let s = Rc::new(ChannelStats::new(bdev.props().block_size, hist));
    core.by_bdev.borrow_mut().insert(id, s.clone());
    Some(s)
}

/// Errors of gathering statistics from the cores.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("I/O statistics: core(s) {cores:?} did not answer within {limit:?}")]
    Timeout { cores: Vec<usize>, limit: Duration },
    #[error("I/O statistics: the reactors are stopping")]
    Stopped,
}

/// `fut`, or `None` once `limit` has passed (on the current reactor).
pub async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    reactor::until(reactor::now().after(limit), fut).await
}

/// One core's statistics of one bdev.
#[derive(Clone, Debug)]
pub struct CoreSnapshot {
    pub core: usize,
    pub bdev: u64,
    pub stat: IoStat,
    /// With `with_histograms`: the core's histogram, if it has one.
    pub histogram: Option<Histogram>,
}

/// What [`collect`] gathers.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// The bdevs (ids); `None`: every bdev.
    pub bdevs: Option<HashSet<u64>>,
    /// The ids of the bdevs that exist: a core forgets the statistics of the others
    /// once nothing of theirs is in flight. `None`: forget nothing.
    pub live: Option<HashSet<u64>>,
    /// What to reset once read.
    pub reset: ResetMode,
    /// Also the latency histograms.
    pub with_histograms: bool,
}

/// Gathers the statistics of every core, by message, within `limit`.
pub async fn collect(
    cores: &Cores,
    q: Query,
    limit: Duration,
) -> Result<Vec<CoreSnapshot>, StatsError> {
    let out: Arc<Mutex<Vec<CoreSnapshot>>> = Arc::default();
    let answered: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (o, a) = (out.clone(), answered.clone());
    let q = Arc::new(q);
    let handle = cores.for_each_core_async(move |core| {
        let mine = snapshot_here(core, &q);
        o.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        a.lock().unwrap_or_else(|p| p.into_inner()).push(core);
    });
    match within(limit, handle).await {
        Some(Ok(())) => {}
        Some(Err(_)) => return Err(StatsError::Stopped),
        None => {
            let done = answered.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let cores = (0..cores.len()).filter(|c| !done.contains(c)).collect();
            return Err(StatsError::Timeout { cores, limit });
        }
    }
    let mut v = std::mem::take(&mut *out.lock().unwrap_or_else(|p| p.into_inner()));
    v.sort_by_key(|s| (s.bdev, s.core));
    Ok(v)
}

fn snapshot_here(core: usize, q: &Query) -> Vec<CoreSnapshot> {
    let stats = reactor::local(CoreStats::default);
    let mut map = stats.by_bdev.borrow_mut();
    if let Some(live) = &q.live {
        // The table of requests in flight holds a reference while one points there.
        unpin_idle();
        map.retain(|id, s| live.contains(id) || Rc::strong_count(s) > 1);
    }
    let mut out = Vec::new();
    for (id, s) in map.iter() {
        if q.bdevs.as_ref().is_some_and(|b| !b.contains(id)) {
            continue;
        }
        out.push(CoreSnapshot {
            core,
            bdev: *id,
            stat: s.stat.get(),
            histogram: if q.with_histograms {
                s.histogram.borrow().as_ref().map(|(_, h)| h.clone())
            } else {
                None
            },
        });
        s.stat.reset(q.reset);
    }
    out
}

/// Turns the latency histogram of `bdev` on with `opts` (a histogram with other options
/// starts again from zero; the same options keep counting) or off (`None`), on every
/// core, within `limit`.
pub async fn set_histogram(
    cores: &Cores,
    bdev: u64,
    opts: Option<HistogramOpts>,
    limit: Duration,
) -> Result<(), StatsError> {
    {
        let mut h = histograms();
        match opts {
            Some(o) => {
                h.insert(bdev, (o, true));
            }
            None => {
                if let Some(e) = h.get_mut(&bdev) {
                    e.1 = false;
                }
            }
        }
    }
    let rate = reactor::tick_rate();
    let answered: Arc<Mutex<Vec<usize>>> = Arc::default();
    let a = answered.clone();
    let handle = cores.for_each_core_async(move |core| {
        let stats = reactor::local(CoreStats::default);
        if let Some(s) = stats.by_bdev.borrow().get(&bdev) {
            s.set_histogram(opts, rate);
        }
        a.lock().unwrap_or_else(|p| p.into_inner()).push(core);
    });
    match within(limit, handle).await {
        Some(Ok(())) => Ok(()),
        Some(Err(_)) => Err(StatsError::Stopped),
        None => {
            let done = answered.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let cores = (0..cores.len()).filter(|c| !done.contains(c)).collect();
            Err(StatsError::Timeout { cores, limit })
        }
    }
}

/// The merged latency histogram of `bdev`: `None` if it never had one; all zeros (in
/// its last layout) while it is off.
pub async fn histogram(
    cores: &Cores,
    bdev: u64,
    limit: Duration,
) -> Result<Option<Histogram>, StatsError> {
    let Some((opts, on)) = histogram_opts(bdev) else {
        return Ok(None);
    };
    let mut merged = Histogram::for_opts(&opts, reactor::tick_rate());
    if !on {
        return Ok(Some(merged));
    }
    let q = Query {
        bdevs: Some([bdev].into_iter().collect()),
        with_histograms: true,
        ..Query::default()
    };
    for s in collect(cores, q, limit).await? {
        if let Some(h) = &s.histogram {
            merged.merge(h);
        }
    }
    Ok(Some(merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket layout is `spdk_histogram_data`'s (SPDK v25.09,
    /// `include/spdk/histogram_data.h`): with granularity 7, range 0 holds 0..=127 and
    /// range 1 128..=255 one value a bucket, range 2 256..=511 two values a bucket, range
    /// 57 ends at `u64::MAX`; below `min_range` counts in the first bucket, above
    /// `max_range` in the last.
    #[test]
    fn histogram_buckets_are_spdks() {
        let mut h = Histogram::new(7, 0, u64::MAX);
        assert_eq!((h.min_range, h.max_range), (0, 57));
        assert_eq!(h.buckets.len(), 58 * 128);
        for (v, bucket) in [(0u64, 0usize), (5, 5), (127, 127), (128, 128), (255, 255)] {
            h.clear();
            h.tally(v);
            assert_eq!(h.buckets[bucket], 1, "value {v}");
        }
        h.clear();
        h.tally(256);
        h.tally(257);
        assert_eq!(
            h.buckets[2 * 128],
            2,
            "256 and 257 share a bucket of range 2"
        );
        h.tally(u64::MAX);
        assert_eq!(*h.buckets.last().unwrap(), 1);
        let mut m = Histogram::new(7, 4096, 1 << 20);
        m.tally(1);
        m.tally(u64::MAX);
        assert_eq!(m.buckets[0], 1);
        assert_eq!(*m.buckets.last().unwrap(), 1);
        assert_eq!(m.total(), 2);
    }

    /// `min_range`/`max_range` for `bdev_enable_histogram`'s nanoseconds are what SPDK
    /// v25.09's `bdev_get_histogram` answered on this machine kind (`nvmf_tgt`, a malloc
    /// bdev, `tsc_rate` 2 450 000 000), where SPDK computes them exactly: the default
    /// (granularity 7, `min_nsec` 1000) min_range 5; granularity 0 min_range 12;
    /// `max_nsec` 1 000 000 max_range 15. One deliberate difference: for the default
    /// `max_nsec` (120 s) SPDK answered max_range 28, because `lib/bdev/bdev.c` multiplies
    /// `max_nsec * spdk_get_ticks_hz()` in 64 bits and 1.2e11 × 2.45e9 wraps (its last
    /// bucket then starts at 7 s); tessera multiplies in 128 bits, so 120 s is 2.94e11
    /// ticks, 39 significant bits, range 32, as asked. The answer names its ranges, so
    /// a decoder (SPDK's `scripts/histogram.py`) reads either layout.
    #[test]
    fn histogram_ranges_for_nanoseconds_are_spdks() {
        const TSC: u64 = 2_450_000_000;
        let ranges = |granularity, min_nsec, max_nsec| {
            let h = Histogram::for_opts(
                &HistogramOpts {
                    granularity,
                    min_nsec,
                    max_nsec,
                    opc: None,
                },
                TSC,
            );
            assert_eq!(
                h.buckets.len(),
                ((h.max_range - h.min_range + 1) as usize) << granularity
            );
            (h.min_range, h.max_range)
        };
        let d = HistogramOpts::default();
        assert_eq!(
            (d.granularity, d.min_nsec, d.max_nsec),
            (7, 1_000, 120_000_000_000)
        );
        assert_eq!(ranges(7, 1_000, 1_000_000), (5, 15), "SPDK answered 5, 15");
        assert_eq!(
            ranges(0, 1_000, 1_000_000).0,
            12,
            "SPDK answered min_range 12"
        );
        // SPDK's 64-bit product wraps to a range-28 maximum; the exact one is range 32.
        let spdk_max = d.max_nsec.wrapping_mul(TSC) / 1_000_000_000;
        assert_eq!(
            Histogram::new(7, 0, spdk_max).max_range,
            28,
            "SPDK answered 28"
        );
        assert_eq!(ranges(7, d.min_nsec, d.max_nsec), (5, 32));
    }

    /// A latency is the exact difference of the submission's and the completion's
    /// ticks, also above 2^32 (a narrower stamp would wrap there); slots are reused and a
    /// released one counts nothing.
    #[test]
    fn stamps_measure_exactly_and_slots_are_reused() {
        let ticks = Rc::new(Cell::new(0u64));
        let stats = Rc::new(ChannelStats::with_ticks(ticks.clone(), 9));
        let base = in_flight();
        ticks.set(5_000_000_000);
        let a = stamp(&stats);
        ticks.set(5_000_000_250);
        let b = stamp(&stats);
        assert_ne!(a, b);
        assert_eq!(in_flight(), base + 2);
        ticks.set(5_000_000_900);
        finish(b, IoKind::Read, 8, IoStatus::Success);
        finish(a, IoKind::Read, 8, IoStatus::Success);
        // Completed twice (a bug elsewhere): counted once.
        finish(a, IoKind::Read, 8, IoStatus::Success);
        assert_eq!(in_flight(), base);
        let c = stamp(&stats);
        assert!(c == a || c == b, "slot {c} reused");
        release(c);
        assert_eq!(in_flight(), base);
        let r = *stats.stat.get().kind(IoKind::Read);
        assert_eq!((r.ops, r.bytes), (2, 8192));
        assert_eq!((r.min_latency_ticks, r.max_latency_ticks), (650, 900));
        assert_eq!(r.latency_ticks, 1550);
    }

    /// Requests stamped one after the other for one bdev in one reactor pass share a
    /// slot, given back only when the last of them completes — one at a time, in a
    /// queued batch (a failure among them), or dropped uncounted — whatever the order;
    /// another bdev, or another pass, takes a slot of its own. Every completion counts
    /// with its own latency.
    #[test]
    fn requests_stamped_together_share_a_slot_until_the_last_completes() {
        use super::super::{BdevIo, IoBuf};
        let ticks = Rc::new(Cell::new(100u64));
        let a = Rc::new(ChannelStats::with_ticks(ticks.clone(), 9));
        let b = Rc::new(ChannelStats::with_ticks(ticks.clone(), 9));
        let base = in_flight();
        let together: Vec<u32> = (0..4).map(|_| stamp(&a)).collect();
        assert!(together.iter().all(|&s| s == together[0]), "{together:?}");
        assert_eq!(in_flight(), base + 1);
        let on_b = stamp(&b);
        let after_b = stamp(&a);
        ticks.set(200);
        let next_pass = stamp(&a);
        let slots = [together[0], on_b, after_b, next_pass];
        let distinct: HashSet<u32> = slots.iter().copied().collect();
        assert_eq!(distinct.len(), 4, "{slots:?}");
        assert_eq!(in_flight(), base + 4);

        ticks.set(1_000);
        let io = |slot: u32, status: IoStatus| {
            let mut io = BdevIo::read(0, 8, IoBuf::new(4096));
            io.stats = slot;
            io.deferred = status;
            io
        };
        let mut queue = std::collections::VecDeque::from([
            io(together[2], IoStatus::Success),
            io(together[0], IoStatus::MediaError),
            io(next_pass, IoStatus::Success),
        ]);
        finish_queued(&mut queue);
        assert!(queue.iter().all(|io| io.stats == NO_SLOT));
        // Two of the four stamped together are still in flight.
        assert_eq!(in_flight(), base + 3);
        finish(together[3], IoKind::Read, 8, IoStatus::Success);
        assert_eq!(in_flight(), base + 3);
        // Dropped without completing: nothing counted, the slot given back.
        drop(io(together[1], IoStatus::Success));
        assert_eq!(in_flight(), base + 2);
        finish(on_b, IoKind::Read, 8, IoStatus::Success);
        finish(after_b, IoKind::Read, 8, IoStatus::Success);
        assert_eq!(in_flight(), base);

        let r = *a.stat.get().kind(IoKind::Read);
        // together[2], together[3] and after_b at 900 ticks, next_pass at 800.
        assert_eq!((r.ops, r.bytes), (4, 4 * 4096));
        assert_eq!(r.latency_ticks, 3 * 900 + 800);
        assert_eq!((r.min_latency_ticks, r.max_latency_ticks), (800, 900));
        assert_eq!(a.stat.get().errors[IoStatus::MediaError as usize], 1);
        assert_eq!(b.stat.get().kind(IoKind::Read).ops, 1);
    }

    /// A [`super::Deferred`] batch counted by `finish_queued` (runs of successes of one
    /// kind, bdev and submission time added up, failures one by one, a histogram on)
    /// counts exactly what completing each request on its own (`finish`) counts, and
    /// leaves no stamp and no slot behind.
    #[test]
    fn a_queued_batch_counts_what_its_completions_would() {
        use super::super::{BdevIo, IoBuf};
        let ticks = Rc::new(Cell::new(0u64));
        let opts = HistogramOpts {
            granularity: 7,
            min_nsec: 0,
            max_nsec: u64::MAX,
            opc: None,
        };
        let pair = || {
            let s = Rc::new(ChannelStats::with_ticks(ticks.clone(), 9));
            s.set_histogram(Some(opts), 1_000_000_000);
            s
        };
        let (batch_a, batch_b, each_a, each_b) = (pair(), pair(), pair(), pair());
        let base = in_flight();
        // (bdev b?, kind, blocks, status, submitted at)
        let plan = [
            (false, IoKind::Read, 8, IoStatus::Success, 100),
            (false, IoKind::Read, 8, IoStatus::Success, 100),
            (false, IoKind::Read, 1, IoStatus::Success, 100),
            (true, IoKind::Read, 8, IoStatus::Success, 100),
            (false, IoKind::Read, 8, IoStatus::Success, 100),
            (false, IoKind::Write, 2, IoStatus::Success, 100),
            (false, IoKind::Write, 2, IoStatus::MediaError, 100),
            (false, IoKind::Write, 2, IoStatus::Success, 100),
            (false, IoKind::Read, 8, IoStatus::Success, 400),
            (false, IoKind::Read, 8, IoStatus::Success, 400),
            (false, IoKind::Flush, 0, IoStatus::Success, 400),
            (true, IoKind::Unmap, 64, IoStatus::InvalidField, 700),
            (true, IoKind::Read, 4, IoStatus::Success, 700),
        ];
        let mut queue = std::collections::VecDeque::new();
        let mut each = Vec::new();
        for &(on_b, kind, n, status, at) in &plan {
            ticks.set(at);
            let (q, e) = if on_b {
                (&batch_b, &each_b)
            } else {
                (&batch_a, &each_a)
            };
            let mut io = match kind {
                IoKind::Read => BdevIo::read(0, n, IoBuf::new(n as usize * 512)),
                IoKind::Write => BdevIo::write(0, n, IoBuf::new(n as usize * 512)),
                IoKind::Flush => BdevIo::flush(),
                _ => BdevIo::unmap(0, n),
            };
            io.stats = stamp(q);
            io.deferred = status;
            queue.push_back(io);
            each.push((stamp(e), kind, n, status));
        }
        // A request without a stamp (statistics off for its channel) is passed over.
        queue.push_back(BdevIo::flush());
        ticks.set(1_000);
        finish_queued(&mut queue);
        for (slot, kind, n, status) in each {
            finish(slot, kind, n, status);
        }
        assert!(queue.iter().all(|io| io.stats == NO_SLOT));
        assert_eq!(in_flight(), base);
        for (batch, one_by_one) in [(&batch_a, &each_a), (&batch_b, &each_b)] {
            assert_eq!(batch.stat.get(), one_by_one.stat.get());
            let h = |s: &ChannelStats| s.histogram.borrow().as_ref().unwrap().1.buckets.clone();
            assert_eq!(h(batch), h(one_by_one));
        }
        let r = *batch_a.stat.get().kind(IoKind::Read);
        assert_eq!((r.ops, r.bytes), (6, 41 * 512));
        assert_eq!((r.min_latency_ticks, r.max_latency_ticks), (600, 900));
        assert_eq!(r.latency_ticks, 4 * 900 + 2 * 600);
        assert_eq!(batch_a.stat.get().errors[IoStatus::MediaError as usize], 1);
        assert_eq!(
            batch_b.stat.get().errors[IoStatus::InvalidField as usize],
            1
        );
    }

    /// The table of requests in flight keeps a channel's statistics alive while a slot
    /// points at them (the slots hold no reference count of their own) and lets go of
    /// them once none does; a request stamped afterwards pins them again and counts.
    #[test]
    fn statistics_stay_pinned_while_a_request_points_at_them() {
        let ticks = Rc::new(Cell::new(100u64));
        let stats = Rc::new(ChannelStats::with_ticks(ticks.clone(), 12));
        unpin_idle();
        let a = stamp(&stats);
        assert!(stats.pinned.get());
        assert_eq!(Rc::strong_count(&stats), 2, "the table holds one reference");
        unpin_idle();
        assert_eq!(Rc::strong_count(&stats), 2, "kept: a request points there");
        ticks.set(130);
        finish(a, IoKind::Write, 2, IoStatus::Success);
        unpin_idle();
        assert_eq!(Rc::strong_count(&stats), 1, "let go: nothing in flight");
        assert!(!stats.pinned.get());
        let b = stamp(&stats);
        assert_eq!(Rc::strong_count(&stats), 2, "pinned again");
        ticks.set(140);
        finish(b, IoKind::Write, 1, IoStatus::MediaError);
        let s = stats.stat.get();
        let w = s.kind(IoKind::Write);
        assert_eq!((w.ops, w.bytes, w.latency_ticks), (1, 8192, 30));
        assert_eq!(s.errors[IoStatus::MediaError as usize], 1);
        unpin_idle();
        assert_eq!(Rc::strong_count(&stats), 1);
    }

    #[test]
    fn encoding_is_little_endian_base64() {
        let mut h = Histogram::new(0, 0, 2);
        assert_eq!(h.buckets.len(), 2);
        h.tally(1);
        h.tally(1);
        // [0, 2] as two little-endian u64s.
        let raw = base64::engine::general_purpose::STANDARD
            .decode(h.encode())
            .unwrap();
        assert_eq!(raw, [0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn resets_follow_spdks_modes() {
        let mut s = IoStat::default();
        s.kinds[0].ops = 3;
        s.kinds[0].max_latency_ticks = 9;
        s.kinds[0].min_latency_ticks = 2;
        s.errors[5] = 1;
        let mut m = s.clone();
        m.reset(ResetMode::MaxMin);
        assert_eq!((m.kinds[0].ops, m.kinds[0].max_latency_ticks), (3, 0));
        assert_eq!(m.kinds[0].min_reported(), 0);
        let mut e = s.clone();
        e.reset(ResetMode::Error);
        assert_eq!((e.error_count(), e.kinds[0].ops), (0, 3));
        let mut a = s.clone();
        a.reset(ResetMode::All);
        assert_eq!(a, IoStat::default());
        let j = s.to_json();
        assert_eq!(j["num_read_ops"], 3);
        assert_eq!(j["io_error"]["media_error"], 1);
    }
}
