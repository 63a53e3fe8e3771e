//! Side-by-side runs: two bdevs measured in alternating short slices of one run, so
//! that whatever else the machine does in that time weighs on both alike. The result
//! is each bdev's IOPS per slice and the median of the per-round ratios.

use super::{BenchConfig, BenchError, BenchReport, run};
use crate::bdev::Bdev;
use crate::reactor::Cores;
use serde::Serialize;
use std::sync::Arc;

/// One bdev's side of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareSide {
    pub bdev: String,
    /// IOPS of each slice, in run order.
    pub slices: Vec<f64>,
    pub median_iops: f64,
    pub errors: u64,
}

/// The result of [`compare`].
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub workload: &'static str,
    pub bs: usize,
    pub qd: usize,
    /// Seconds of each slice.
    pub slice_seconds: f64,
    /// The bdev under test.
    pub tested: CompareSide,
    /// The bdev it is compared with.
    pub reference: CompareSide,
    /// tested / reference IOPS of each round (one slice of each).
    pub ratios: Vec<f64>,
    /// The median of `ratios`.
    pub ratio: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Runs `cfg` against `tested` and `reference` in `rounds` rounds of one slice each
/// (`cfg.seconds / rounds` long); the order within a round alternates (AB, BA, AB, …)
/// so that neither side always runs first.
pub fn compare(
    cores: &Cores,
    tested: Arc<dyn Bdev>,
    reference: Arc<dyn Bdev>,
    cfg: &BenchConfig,
    rounds: usize,
) -> Result<CompareReport, BenchError> {
    if rounds == 0 {
        return Err(BenchError::Rounds);
    }
    let slice = BenchConfig {
        seconds: cfg.seconds / rounds as f64,
        ..cfg.clone()
    };
    let mut t: Vec<BenchReport> = Vec::with_capacity(rounds);
    let mut r: Vec<BenchReport> = Vec::with_capacity(rounds);
    for k in 0..rounds {
        if k % 2 == 0 {
            t.push(run(cores, tested.clone(), &slice, Vec::new())?);
            r.push(run(cores, reference.clone(), &slice, Vec::new())?);
        } else {
            r.push(run(cores, reference.clone(), &slice, Vec::new())?);
            t.push(run(cores, tested.clone(), &slice, Vec::new())?);
        }
    }
    let side = |bdev: &Arc<dyn Bdev>, reports: &[BenchReport]| {
        let slices: Vec<f64> = reports.iter().map(|x| x.iops).collect();
        CompareSide {
            bdev: bdev.display_name(),
            median_iops: median(&slices),
            errors: reports.iter().map(|x| x.errors).sum(),
            slices,
        }
    };
    let tested_side = side(&tested, &t);
    let reference_side = side(&reference, &r);
    let ratios: Vec<f64> = tested_side
        .slices
        .iter()
        .zip(&reference_side.slices)
        .map(|(a, b)| if *b > 0.0 { a / b } else { 0.0 })
        .collect();
    Ok(CompareReport {
        workload: cfg.workload.name(),
        bs: cfg.bs,
        qd: cfg.qd,
        slice_seconds: slice.seconds,
        ratio: median(&ratios),
        ratios,
        tested: tested_side,
        reference: reference_side,
    })
}

impl CompareReport {
    /// The report as a short table.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} bs {} qd {}/core, {} rounds of {:.2} s slices\n",
            self.workload,
            self.bs,
            self.qd,
            self.ratios.len(),
            self.slice_seconds
        );
        for side in [&self.tested, &self.reference] {
            s += &format!(
                "{:<16} median {:>12.0} IOPS  errors {}\n",
                side.bdev, side.median_iops, side.errors
            );
        }
        s += &format!(
            "ratio {} / {}: {:.3} (median of rounds; {:.3}..{:.3})\n",
            self.tested.bdev,
            self.reference.bdev,
            self.ratio,
            self.ratios.iter().copied().fold(f64::INFINITY, f64::min),
            self.ratios
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::error::{ErrorBdev, FailRule, Trigger};
    use crate::bdev::malloc::MallocBdev;
    use crate::bdev::{IoKind, IoStatus};
    use crate::bench::Workload;
    use crate::reactor::{IdlePolicy, ReactorSet};

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    /// Each side gets one slice per round, the ratio is the median of the per-round
    /// ratios, and errors are counted on the side that had them.
    #[test]
    fn rounds_pair_slices_and_count_errors_per_side() {
        let set = ReactorSet::for_tests(1, IdlePolicy::Adaptive);
        let good: Arc<dyn Bdev> = MallocBdev::create("cmp-good", 256, 4096, None).unwrap();
        let under: Arc<dyn Bdev> = MallocBdev::create("cmp-under", 256, 4096, None).unwrap();
        let failing = ErrorBdev::create("cmp-failing", under, false).unwrap();
        failing.inject(FailRule {
            kinds: vec![IoKind::Read],
            trigger: Trigger::EveryKth(2),
            status: IoStatus::MediaError,
        });
        let failing: Arc<dyn Bdev> = failing;
        let cfg = BenchConfig {
            workload: Workload::RandRead,
            bs: 4096,
            qd: 4,
            seconds: 0.3,
            ..Default::default()
        };
        let rep = compare(set.cores(), failing, good, &cfg, 3).unwrap();
        assert_eq!(rep.tested.slices.len(), 3);
        assert_eq!(rep.reference.slices.len(), 3);
        assert_eq!(rep.ratios.len(), 3);
        assert!((rep.slice_seconds - 0.1).abs() < 1e-9);
        for ((r, a), b) in rep
            .ratios
            .iter()
            .zip(&rep.tested.slices)
            .zip(&rep.reference.slices)
        {
            assert!((r - a / b).abs() < 1e-12);
        }
        assert_eq!(rep.ratio, median(&rep.ratios));
        assert_eq!(rep.tested.bdev, "cmp-failing");
        assert!(
            rep.tested.errors > 0,
            "the failing side's errors are counted"
        );
        assert_eq!(rep.reference.errors, 0);
        assert!(matches!(
            compare(set.cores(), rep_bdev(), rep_bdev(), &cfg, 0),
            Err(BenchError::Rounds)
        ));
    }

    fn rep_bdev() -> Arc<dyn Bdev> {
        MallocBdev::create("cmp-x", 16, 4096, None).unwrap()
    }
}
