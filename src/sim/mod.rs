//! The deterministic simulator (TigerBeetle's VOPR is the model): one seed drives a
//! workload on several simulated cores, a faulty storage model under the pool, and
//! crashes at any moment; an oracle checks every read, and after each crash and reopen
//! that every block holds its value at the last completed flush or a value written
//! later, that every acknowledged snapshot, clone and delete is there, that nothing
//! leaked, and that `tessera check` is clean.
//!
//! - [`storage`]: the simulated disk (volatile cache, latency, errors, misdirected and
//!   torn writes, power loss, a write budget for crash-point sweeps).
//! - [`model`]: the oracle (the tags each block may hold).
//! - [`world`]: one life of the machine (manual reactors, disks, the pool).
//!
//! Everything runs on the calling thread: the reactors are [`ManualReactors`] polled in
//! a seeded order, time is a manual clock, the disks draw their latencies and faults
//! from the seed. The same seed gives the same run; a failure prints the seed and the
//! command that replays it (`tessera sim --seed N`).
//!
//! [`ManualReactors`]: crate::reactor::ManualReactors

pub mod model;
pub mod storage;
pub mod sweep;
mod workload;
pub mod world;

pub use workload::{SimOptions, run};

use std::fmt;

/// What a passing run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub waves: usize,
    pub data_ops: u64,
    pub control_ops: u64,
    /// Control operations by name, with how many succeeded.
    pub control: std::collections::BTreeMap<&'static str, (u64, u64)>,
    pub crashes: u64,
    pub clean_reopens: u64,
    pub blocks_verified: u64,
    /// Faults the disks injected.
    pub read_errors: u64,
    pub write_errors: u64,
    pub misdirected: u64,
    pub bit_rot: u64,
    pub torn_or_dropped_writes: u64,
    /// Writes refused for lack of space.
    pub no_space: u64,
    /// The run ended because open or check detected injected metadata damage
    /// (with what they said).
    pub detected: Option<String>,
    /// Simulated time.
    pub sim_ms: u64,
    /// A digest of the run's events: the same seed must give the same digest.
    pub digest: u64,
}

impl Report {
    /// Adds `r`'s counts to these.
    pub fn add(&mut self, r: &Report) {
        self.waves += r.waves;
        self.data_ops += r.data_ops;
        self.control_ops += r.control_ops;
        for (k, (n, ok)) in &r.control {
            let e = self.control.entry(k).or_default();
            e.0 += n;
            e.1 += ok;
        }
        self.crashes += r.crashes;
        self.clean_reopens += r.clean_reopens;
        self.blocks_verified += r.blocks_verified;
        self.read_errors += r.read_errors;
        self.write_errors += r.write_errors;
        self.misdirected += r.misdirected;
        self.bit_rot += r.bit_rot;
        self.torn_or_dropped_writes += r.torn_or_dropped_writes;
        self.no_space += r.no_space;
        self.sim_ms += r.sim_ms;
    }
}

/// A failing run: the seed, what went wrong, the last events before it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub what: String,
    pub last_events: Vec<String>,
    /// The command that replays the run.
    pub replay: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulator seed {} failed: {}", self.seed, self.what)?;
        writeln!(f, "  replay: {}", self.replay)?;
        if !self.last_events.is_empty() {
            writeln!(f, "  last events:")?;
            for e in &self.last_events {
                writeln!(f, "    {e}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// The outcome of many seeds.
#[derive(Debug, Default)]
pub struct Summary {
    pub passed: u64,
    /// The passing runs' reports added up (seed and digest aside).
    pub totals: Report,
    /// Seeds whose run ended with injected metadata damage detected.
    pub detected: u64,
    pub failures: Vec<Failure>,
    pub elapsed: std::time::Duration,
}

impl Summary {
    /// Seeds run per second of wall time.
    pub fn rate(&self) -> f64 {
        let n = self.passed + self.failures.len() as u64;
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs seeds `from..from + count` on `jobs` threads; `progress` hears of each result
/// as it comes (from the thread that ran it).
pub fn run_many(
    from: u64,
    count: u64,
    jobs: usize,
    opts: &SimOptions,
    progress: &(dyn Fn(u64, &Result<Report, Failure>) + Sync),
) -> Summary {
    let next = std::sync::atomic::AtomicU64::new(from);
    let summary = std::sync::Mutex::new(Summary::default());
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= from + count {
                        return;
                    }
                    let r = run(seed, opts);
                    progress(seed, &r);
                    let mut sum = summary.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(rep) => {
                            sum.passed += 1;
                            sum.detected += rep.detected.is_some() as u64;
                            sum.totals.add(&rep);
                        }
                        Err(f) => sum.failures.push(f),
                    }
                }
            });
        }
    });
    let mut sum = summary.into_inner().unwrap_or_else(|p| p.into_inner());
    sum.elapsed = t0.elapsed();
    sum.failures.sort_by_key(|f| f.seed);
    sum
}
