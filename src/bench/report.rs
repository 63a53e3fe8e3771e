//! Benchmark results: per-core raw figures, the merged report, and its text and JSON
//! forms.

use super::BenchConfig;
use crate::bdev::IoStatus;
use crate::reactor::Cores;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;

/// What one core measured.
pub(crate) struct CoreRaw {
    pub core: usize,
    pub lcore: usize,
    pub elapsed_ns: u64,
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub first_error: Option<IoStatus>,
    pub hist: Histogram<u64>,
    pub window_hist: Histogram<u64>,
}

/// Latency summary in microseconds, of the I/Os that succeeded.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencyUs {
    /// The I/Os timed.
    pub count: u64,
    pub avg: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyUs {
    fn of(h: &Histogram<u64>) -> LatencyUs {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return LatencyUs {
                count: 0,
                avg: 0.0,
                p50: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        LatencyUs {
            count: h.len(),
            avg: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// One core's results.
#[derive(Clone, Debug, Serialize)]
pub struct CoreReport {
    pub core: usize,
    pub lcore: usize,
    pub iops: f64,
    pub mib_s: f64,
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub lat_us: LatencyUs,
}

/// A timed action (a snapshot) taken during the run.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotEvent {
    pub at_s: f64,
    pub create_us: f64,
    /// Why the action failed (a snapshot refused or timed out); absent when it worked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole run: totals at the top level, details below.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub iops: f64,
    pub mib_s: f64,
    pub lat_us: LatencyUs,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<IoStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_lat_us: Option<LatencyUs>,
    pub bdev: String,
    pub workload: &'static str,
    pub bs: usize,
    pub qd: usize,
    pub seconds: f64,
    pub cores: Vec<CoreReport>,
}

impl BenchReport {
    pub(crate) fn merge(
        bdev: &str,
        cfg: &BenchConfig,
        _cores: &Cores,
        raws: Vec<CoreRaw>,
        snapshots: Vec<SnapshotEvent>,
    ) -> BenchReport {
        let mut total = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("bounds");
        let mut window = total.clone();
        let mut cores = Vec::new();
        let (mut iops, mut errors, mut first_error) = (0.0, 0, None);
        for r in &raws {
            let secs = r.elapsed_ns.max(1) as f64 / 1e9;
            let ops = (r.reads + r.writes) as f64 / secs;
            iops += ops;
            errors += r.errors;
            first_error = first_error.or(r.first_error);
            let _ = total.add(&r.hist);
            let _ = window.add(&r.window_hist);
            cores.push(CoreReport {
                core: r.core,
                lcore: r.lcore,
                iops: ops,
                mib_s: ops * cfg.bs as f64 / (1 << 20) as f64,
                reads: r.reads,
                writes: r.writes,
                errors: r.errors,
                lat_us: LatencyUs::of(&r.hist),
            });
        }
        BenchReport {
            iops,
            mib_s: iops * cfg.bs as f64 / (1 << 20) as f64,
            lat_us: LatencyUs::of(&total),
            errors,
            first_error,
            window_lat_us: (!snapshots.is_empty()).then(|| LatencyUs::of(&window)),
            snapshots,
            bdev: bdev.to_string(),
            workload: cfg.workload.name(),
            bs: cfg.bs,
            qd: cfg.qd,
            seconds: cfg.seconds,
            cores,
        }
    }

    /// The report as a table for humans.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "bdev {}  workload {}  bs {}  qd {}/core  {} s",
            self.bdev, self.workload, self.bs, self.qd, self.seconds
        );
        let _ = writeln!(
            s,
            "{:<7} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "core", "IOPS", "MiB/s", "avg_us", "p50_us", "p99_us", "p99.9_us", "max_us"
        );
        let row = |s: &mut String, name: &str, iops: f64, mib: f64, l: &LatencyUs| {
            let _ = writeln!(
                s,
                "{:<7} {:>12.0} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.1}",
                name, iops, mib, l.avg, l.p50, l.p99, l.p999, l.max
            );
        };
        for c in &self.cores {
            row(
                &mut s,
                &format!("{} ({})", c.core, c.lcore),
                c.iops,
                c.mib_s,
                &c.lat_us,
            );
        }
        row(&mut s, "total", self.iops, self.mib_s, &self.lat_us);
        if self.errors > 0 {
            let _ = writeln!(
                s,
                "errors: {} (first: {:?})",
                self.errors,
                self.first_error.unwrap_or(IoStatus::Success)
            );
        }
        for e in &self.snapshots {
            let _ = writeln!(s, "snapshot at {:.2} s took {:.1} us", e.at_s, e.create_us);
            if let Some(err) = &e.error {
                let _ = writeln!(s, "  and failed: {err}");
            }
        }
        if let Some(w) = &self.window_lat_us {
            let _ = writeln!(
                s,
                "latency within 0.5 s after snapshots: p50 {:.2} us  p99 {:.2} us  p99.9 {:.2} us",
                w.p50, w.p99, w.p999
            );
        }
        s
    }
}
