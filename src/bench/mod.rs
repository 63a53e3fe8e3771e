//! `tessera bench`: a bdevperf-like closed-loop benchmark.
//!
//! One worker per core keeps `qd` requests in flight against the bdev under test for
//! `seconds`; each completion is timed (TSC clock) into a per-core hdrhistogram and the
//! slot is resubmitted at once with the next offset. The worker reuses each request and
//! its buffer, so the steady state allocates nothing. Per-core reports are merged into
//! the total.

mod compare;
pub mod crash;
mod report;

pub use compare::{CompareReport, CompareSide, compare};
pub use report::{BenchReport, CoreReport, LatencyUs, SnapshotEvent};

use crate::bdev::{Bdev, BdevIo, Channel, IoKind, IoSink, IoStatus};
use crate::reactor::{self, Clock, Cores, Nanos};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;
use std::time::Duration;

/// The access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    RandRead,
    RandWrite,
    Read,
    Write,
    /// Random mix; `read_pct` percent of requests are reads.
    RandRw {
        read_pct: u8,
    },
}

impl Workload {
    /// Parses `randread`, `randwrite`, `read`, `write` or `randrw` (with `rwmix`, the
    /// percentage of reads).
    pub fn parse(s: &str, rwmix: u8) -> Result<Workload, String> {
        Ok(match s {
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randrw" => {
                if rwmix > 100 {
                    return Err(format!("rwmix {rwmix} is above 100"));
                }
                Workload::RandRw { read_pct: rwmix }
            }
            other => {
                return Err(format!(
                    "workload `{other}` is not one of randread, randwrite, read, write, randrw"
                ));
            }
        })
    }

    fn random(self) -> bool {
        !matches!(self, Workload::Read | Workload::Write)
    }

    /// The fio/bdevperf name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::RandRw { .. } => "randrw",
        }
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Workload::parse(s, 50)
    }
}

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    pub workload: Workload,
    /// Request size in bytes (a multiple of the block size).
    pub bs: usize,
    /// Requests in flight per core.
    pub qd: usize,
    /// Measured run time.
    pub seconds: f64,
    /// Limit the accessed range to the first `range_bytes` of the bdev (0: all of it).
    pub range_bytes: u64,
    /// Seed for the offset generators.
    pub seed: u64,
    /// Random workloads visit every offset exactly once (a permutation of the range),
    /// the cores taking disjoint offsets, and the run ends when all were visited: for
    /// measuring first writes.
    pub once: bool,
    /// Go on after a failed I/O (else the run stops at the first, on every core, as
    /// fio and bdevperf do). Latency percentiles count successes only either way.
    pub continue_on_error: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            workload: Workload::RandRead,
            bs: 4096,
            qd: 32,
            seconds: 5.0,
            range_bytes: 0,
            seed: 0x7e55e7a,
            once: false,
            continue_on_error: false,
        }
    }
}

/// Errors that stop a benchmark before it runs.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--bs {bs} is not a positive multiple of the block size {block_size} of `{bdev}`")]
    BlockSize {
        bs: usize,
        block_size: u32,
        bdev: String,
    },
    #[error("--qd must be at least 1")]
    QueueDepth,
    #[error("--seconds must be positive")]
    Seconds,
    #[error("the accessed range holds fewer than one request of {bs} bytes")]
    Range { bs: usize },
    #[error("core {0}: {1}")]
    Core(usize, String),
    #[error("--rounds must be at least 1")]
    Rounds,
}

/// A hook run at chosen moments of a run (snapshots under load use it): returns how
/// long its action took, and why it failed if it did.
pub type TimedAction = Arc<dyn Fn() -> (Duration, Option<String>) + Send + Sync>;

struct Worker {
    chan: Channel,
    cfg: BenchConfig,
    blocks_per_io: u64,
    slots_in_range: u64,
    range_base: u64,
    clock: quanta::Clock,
    start_tick: RefCell<Vec<u64>>,
    hist: RefCell<Histogram<u64>>,
    /// Latencies of I/O completed inside the windows after each timed action.
    window_hist: RefCell<Histogram<u64>>,
    windows: RefCell<Vec<(Nanos, Nanos)>>,
    wall: Clock,
    rng: RefCell<fastrand::Rng>,
    next_seq: Cell<u64>,
    once_mul: u64,
    once_add: u64,
    /// Stride through the permutation of a `once` run: the cores take turns.
    once_step: u64,
    reads: Cell<u64>,
    writes: Cell<u64>,
    errors: Cell<u64>,
    stopping: Cell<bool>,
    /// Set by the first failed I/O on any core (unless `continue_on_error`): every
    /// core's slots retire.
    failed: Arc<AtomicBool>,
    inflight: Cell<usize>,
    done: RefCell<Option<Waker>>,
    first_error: Cell<Option<IoStatus>>,
    /// When the last slot retired, if the workload ran out before the time did.
    ended_at: Cell<Option<u64>>,
}

impl Worker {
    /// Points `io` at the next offset; false when a `once` run has visited its whole
    /// permutation and the slot retires.
    fn next(&self, io: &mut BdevIo) -> bool {
        let slot = if self.cfg.workload.random() && self.cfg.once {
            // A full-period permutation of the slots: an odd multiplier is coprime with
            // a power of two; otherwise pick one coprime with the slot count.
            let s = self.next_seq.get();
            if s >= self.slots_in_range {
                return false;
            }
            self.next_seq.set(s + self.once_step);
            (s.wrapping_mul(self.once_mul).wrapping_add(self.once_add)) % self.slots_in_range
        } else if self.cfg.workload.random() {
            self.rng.borrow_mut().u64(0..self.slots_in_range)
        } else {
            let s = self.next_seq.get();
            self.next_seq.set((s + 1) % self.slots_in_range);
            s
        };
        io.offset_blocks = self.range_base + slot * self.blocks_per_io;
        io.kind = match self.cfg.workload {
            Workload::RandRead | Workload::Read => IoKind::Read,
            Workload::RandWrite | Workload::Write => IoKind::Write,
            Workload::RandRw { read_pct } => {
                if self.rng.borrow_mut().u8(0..100) < read_pct {
                    IoKind::Read
                } else {
                    IoKind::Write
                }
            }
        };
        true
    }
}

struct WorkerSink(Rc<Worker>);

impl IoSink for WorkerSink {
    #[inline]
    fn io_done(&self, mut io: BdevIo, status: IoStatus) {
        let w = &*self.0;
        let now = w.clock.raw();
        let slot = io.tag as usize;
        let ns = w.clock.delta_as_nanos(w.start_tick.borrow()[slot], now);
        // Failures complete at once: they are counted, not timed.
        if status.is_success() {
            let _ = w.hist.borrow_mut().record(ns.max(1));
        }
        if status.is_success() && !w.windows.borrow().is_empty() {
            let t = w.wall.now();
            let in_window = w.windows.borrow().iter().any(|&(a, b)| t >= a && t <= b);
            if in_window {
                let _ = w.window_hist.borrow_mut().record(ns.max(1));
            }
        }
        if status.is_success() {
            if io.kind == IoKind::Read {
                w.reads.set(w.reads.get() + 1);
            } else {
                w.writes.set(w.writes.get() + 1);
            }
        } else {
            w.errors.set(w.errors.get() + 1);
            if w.first_error.get().is_none() {
                w.first_error.set(Some(status));
            }
            if !w.cfg.continue_on_error {
                w.failed.store(true, Ordering::Relaxed);
            }
        }
        if w.stopping.get() || w.failed.load(Ordering::Relaxed) || !w.next(&mut io) {
            w.inflight.set(w.inflight.get() - 1);
            if w.inflight.get() == 0 {
                if !w.stopping.get() {
                    // A `once` run that visited every offset ends here, before its time.
                    w.ended_at.set(Some(now));
                }
                if let Some(waker) = w.done.borrow_mut().take() {
                    waker.wake();
                }
            }
            return;
        }
        w.start_tick.borrow_mut()[slot] = now;
        w.chan.submit(io);
    }
}

/// Runs the benchmark on every core of `cores` against `bdev`. `actions` are run (on
/// the calling thread, between polls) at the given seconds into the run.
pub fn run(
    cores: &Cores,
    bdev: Arc<dyn Bdev>,
    cfg: &BenchConfig,
    actions: Vec<(f64, TimedAction)>,
) -> Result<BenchReport, BenchError> {
    let block_size = bdev.block_size();
    if cfg.bs == 0 || !cfg.bs.is_multiple_of(block_size as usize) {
        return Err(BenchError::BlockSize {
            bs: cfg.bs,
            block_size,
            bdev: bdev.display_name(),
        });
    }
    if cfg.qd == 0 {
        return Err(BenchError::QueueDepth);
    }
    if cfg.seconds.is_nan() || cfg.seconds <= 0.0 {
        return Err(BenchError::Seconds);
    }
    let total_bytes = bdev.num_blocks() * block_size as u64;
    let range = if cfg.range_bytes == 0 {
        total_bytes
    } else {
        cfg.range_bytes.min(total_bytes)
    };
    let blocks_per_io = (cfg.bs / block_size as usize) as u64;
    let slots = range / cfg.bs as u64;
    if slots == 0 {
        return Err(BenchError::Range { bs: cfg.bs });
    }
    let n = cores.len();
    let failed = Arc::new(AtomicBool::new(false));
    // Each core gets the whole range for random workloads and its own stripe for
    // sequential ones.
    let handles: Vec<_> = (0..n)
        .map(|core| {
            let bdev = bdev.clone();
            let cfg = cfg.clone();
            let (base, span) = if cfg.workload.random() {
                (0, slots)
            } else {
                let per = (slots / n as u64).max(1);
                ((core as u64 * per).min(slots - 1) * blocks_per_io, per)
            };
            let windows = Arc::new(std::sync::Mutex::new(Vec::new()));
            let w2 = windows.clone();
            let links = CoreLinks {
                windows: w2,
                failed: failed.clone(),
            };
            let handle = cores.spawn_on(core, move || {
                run_core(core, bdev, cfg, blocks_per_io, base, span, links)
            });
            (handle, windows)
        })
        .collect();
    // Timed actions, from this thread, while the cores run.
    let start = std::time::Instant::now();
    let clock = cores.clock().clone();
    let mut events = Vec::new();
    let mut actions = actions;
    actions.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, action) in actions {
        let wait = Duration::from_secs_f64(at).saturating_sub(start.elapsed());
        std::thread::sleep(wait);
        let at_s = start.elapsed().as_secs_f64();
        let t0 = clock.now();
        let (took, error) = action();
        // Window: from the action's start to half a second after it ends.
        let t1 = clock.now().after(Duration::from_millis(500));
        for (_, w) in &handles {
            w.lock().unwrap_or_else(|p| p.into_inner()).push((t0, t1));
        }
        events.push(SnapshotEvent {
            at_s,
            create_us: took.as_secs_f64() * 1e6,
            error,
        });
    }
    let mut per_core = Vec::new();
    for (core, (h, _)) in handles.into_iter().enumerate() {
        let r = reactor::block_on(h).map_err(|e| BenchError::Core(core, e.to_string()))?;
        per_core.push(r.map_err(|e| BenchError::Core(core, e))?);
    }
    Ok(BenchReport::merge(
        &bdev.display_name(),
        cfg,
        cores,
        per_core,
        events,
    ))
}

/// A multiplier near 0.618 × `n` that is coprime with `n` (so `i × m mod n` permutes).
fn coprime_multiplier(n: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let n = n.max(1);
    let mut m = ((n as f64) * 0.618_033_988_75) as u64 | 1;
    while gcd(m, n) != 1 {
        m += 2;
    }
    m.max(1)
}

/// What a core's run shares with the others and with the caller.
struct CoreLinks {
    /// The windows after timed actions, as the caller adds them.
    windows: Arc<std::sync::Mutex<Vec<(Nanos, Nanos)>>>,
    /// Set by the first failed I/O on any core.
    failed: Arc<AtomicBool>,
}

async fn run_core(
    core: usize,
    bdev: Arc<dyn Bdev>,
    cfg: BenchConfig,
    blocks_per_io: u64,
    range_base: u64,
    slots: u64,
    links: CoreLinks,
) -> Result<report::CoreRaw, String> {
    let CoreLinks { windows, failed } = links;
    let chan = Channel::get(&bdev).map_err(|e| e.to_string())?;
    let new_hist =
        || Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds");
    let worker = Rc::new(Worker {
        chan: chan.clone(),
        blocks_per_io,
        slots_in_range: slots,
        range_base,
        clock: quanta::Clock::new(),
        start_tick: RefCell::new(vec![0; cfg.qd]),
        hist: RefCell::new(new_hist()),
        window_hist: RefCell::new(new_hist()),
        windows: RefCell::new(Vec::new()),
        wall: reactor::cores().clock().clone(),
        rng: RefCell::new(fastrand::Rng::with_seed(
            cfg.seed ^ (core as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        )),
        next_seq: Cell::new(if cfg.once { core as u64 } else { 0 }),
        once_mul: coprime_multiplier(slots),
        once_add: cfg.seed % slots.max(1),
        once_step: reactor::cores().len() as u64,
        reads: Cell::new(0),
        writes: Cell::new(0),
        errors: Cell::new(0),
        stopping: Cell::new(false),
        failed,
        inflight: Cell::new(0),
        done: RefCell::new(None),
        first_error: Cell::new(None),
        ended_at: Cell::new(None),
        cfg,
    });
    let sink: Rc<dyn IoSink> = Rc::new(WorkerSink(worker.clone()));
    // Fill the buffers once so writes carry data that is not all zeros.
    let mut ios = Vec::with_capacity(worker.cfg.qd);
    for slot in 0..worker.cfg.qd {
        let mut buf = chan.alloc_buf(worker.cfg.bs);
        worker.rng.borrow_mut().fill(&mut buf);
        let mut io = BdevIo::read(0, blocks_per_io, buf).on_complete(sink.clone(), slot as u64);
        if worker.next(&mut io) {
            ios.push(io);
        }
    }
    let started = worker.clock.raw();
    worker.inflight.set(ios.len());
    for (slot, io) in ios.into_iter().enumerate() {
        worker.start_tick.borrow_mut()[slot] = worker.clock.raw();
        chan.submit(io);
    }
    // Poll the shared window list now and then while the run lasts.
    let deadline = reactor::now().after(Duration::from_secs_f64(worker.cfg.seconds));
    loop {
        let now = reactor::now();
        if now >= deadline || worker.inflight.get() == 0 || worker.failed.load(Ordering::Relaxed) {
            break;
        }
        let step = deadline.since(now).min(Duration::from_millis(50));
        reactor::sleep(step).await;
        let w = windows.lock().unwrap_or_else(|p| p.into_inner()).clone();
        *worker.windows.borrow_mut() = w;
    }
    let ended = worker.ended_at.get().unwrap_or_else(|| worker.clock.raw());
    let elapsed_ns = worker.clock.delta_as_nanos(started, ended);
    worker.stopping.set(true);
    // Count what completes from now on in the latency, not in the throughput.
    let (reads, writes) = (worker.reads.get(), worker.writes.get());
    std::future::poll_fn(|cx| {
        if worker.inflight.get() == 0 {
            std::task::Poll::Ready(())
        } else {
            *worker.done.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        }
    })
    .await;
    let w = &worker;
    Ok(report::CoreRaw {
        core,
        lcore: reactor::cores().cpu(core),
        elapsed_ns,
        reads,
        writes,
        errors: w.errors.get(),
        first_error: w.first_error.get(),
        hist: w.hist.borrow().clone(),
        window_hist: w.window_hist.borrow().clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::malloc::MallocBdev;
    use crate::reactor::{IdlePolicy, ReactorSet};

    /// A failed I/O stops the run on every core unless `continue_on_error`; either way
    /// only the I/Os that succeeded are timed (failures complete at once and made a
    /// full pool's p50 read 0.8 us).
    #[test]
    fn the_first_failed_io_stops_the_run_and_failures_are_not_timed() {
        use crate::bdev::error::{ErrorBdev, FailRule, Trigger};
        let set = ReactorSet::for_tests(2, IdlePolicy::Adaptive);
        let under: Arc<dyn Bdev> = MallocBdev::create("stop-under", 1000, 4096, None).unwrap();
        let failing = ErrorBdev::create("stop-failing", under, false).unwrap();
        failing.inject(FailRule {
            kinds: vec![IoKind::Write],
            trigger: Trigger::EveryKth(2),
            status: IoStatus::MediaError,
        });
        let bdev: Arc<dyn Bdev> = failing;
        let mut cfg = BenchConfig {
            workload: Workload::RandWrite,
            qd: 8,
            seconds: 30.0,
            ..BenchConfig::default()
        };
        let t = std::time::Instant::now();
        let r = run(set.cores(), bdev.clone(), &cfg, Vec::new()).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a 30 s run with failing writes took {:?}",
            t.elapsed()
        );
        // What was in flight when the first failed completes; nothing more is sent.
        assert!((1..=16).contains(&r.errors), "{} errors", r.errors);
        assert_eq!(r.first_error, Some(IoStatus::MediaError));
        // Going on: every other write fails, and only the others are timed.
        cfg.continue_on_error = true;
        cfg.seconds = 0.5;
        let r = run(set.cores(), bdev, &cfg, Vec::new()).unwrap();
        let writes: u64 = r.cores.iter().map(|c| c.writes).sum();
        assert!(r.errors > 1000, "{} errors", r.errors);
        assert!(
            r.lat_us.count >= writes,
            "{} timed, {writes} writes",
            r.lat_us.count
        );
        assert!(
            (r.lat_us.count as f64) < r.errors as f64 * 1.5,
            "{} timed for {writes} writes and {} errors: failures were timed",
            r.lat_us.count,
            r.errors
        );
    }

    /// A `once` run writes each offset exactly once over all cores, then ends before its
    /// time is up, and its rate is taken over the time it actually ran.
    #[test]
    fn once_visits_every_offset_once_and_ends_early() {
        let set = ReactorSet::for_tests(2, IdlePolicy::Adaptive);
        let bdev: Arc<dyn Bdev> = MallocBdev::create("once0", 1000, 4096, None).unwrap();
        let cfg = BenchConfig {
            workload: Workload::RandWrite,
            qd: 8,
            seconds: 30.0,
            once: true,
            ..BenchConfig::default()
        };
        let t = std::time::Instant::now();
        let report = run(set.cores(), bdev, &cfg, Vec::new()).unwrap();
        assert!(t.elapsed().as_secs_f64() < 10.0, "ran {:?}", t.elapsed());
        let writes: u64 = report.cores.iter().map(|c| c.writes).sum();
        assert_eq!(writes, 1000);
        assert_eq!(report.errors, 0);
        assert!(report.iops > 1000.0 / 10.0, "rate {}", report.iops);
    }
}
