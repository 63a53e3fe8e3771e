//! The deterministic simulator and the crash-point sweeps in CI (see `tessera::sim`):
//! a smoke set of seeds, every sweep, and the promise that a seed replays exactly.
//! `tessera sim --seeds N` runs more seeds; a failure prints the seed and the command
//! that replays it.

use tessera::sim::{self, SimOptions};

/// Seeds the smoke set runs (a fixed range, so CI runs the same cases every time).
const SMOKE_SEEDS: u64 = 240;

#[test]
fn simulator_smoke_seeds_pass() {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let opts = SimOptions::default();
    let sum = sim::run_many(0, SMOKE_SEEDS, jobs, &opts, &|_, _| {});
    let report: Vec<String> = sum.failures.iter().map(|f| f.to_string()).collect();
    eprintln!(
        "{} seeds: {} passed ({} ended with injected damage detected), {} failed, {:.1} s, {:.1} seeds/s",
        SMOKE_SEEDS,
        sum.passed,
        sum.detected,
        sum.failures.len(),
        sum.elapsed.as_secs_f64(),
        sum.rate()
    );
    assert!(sum.failures.is_empty(), "{}", report.join("\n"));
}

/// Seeds beyond the smoke set that found a defect once, each beside the unit test that
/// pins the defect down (a change to the engine may take a seed down another path, so
/// the unit test is the regression test; the seed is run all the same).
const ONCE_FAILED: [(u64, &str); 8] = [
    (
        2737,
        "set_parent_bdev re-planned a clone of an lvol written since over the lvol as it is \
         (vdisk::tests::esnap_lineage)",
    ),
    (
        7456,
        "a split that could not record its copy into the disk's own segment left the \
         copied granules held in memory only (vdisk::tests::split_fills)",
    ),
    (
        54517,
        "set_parent_bdev on a snapshot re-planned a clone's segment a shrink had cut over \
         the snapshot it reverted to, showing the data the cut hid \
         (vdisk::tests::esnap_lineage)",
    ),
    (
        55168,
        "set_parent_bdev on a snapshot re-planned an lvol's segment dropped by a shrink and \
         grown back over the snapshot's data, where it read the external bdev \
         (vdisk::tests::esnap_lineage)",
    ),
    (
        72010,
        "a write fault logged an extent born in the generation an unfinished \
         set_parent_bdev had taken; replay restored the generation below it, and the \
         next snapshot left the extent writable in place under the snapshot \
         (vdisk::intent::tests::replay_never_leaves_the_generation_below_a_birth_it_holds)",
    ),
    (
        63,
        "a set_parent_bdev refused as busy had taken a generation the log never recorded \
         (the simulator's audit of the log, vdisk/audit.rs, checks it after every wave)",
    ),
    (
        173,
        "an operation that failed had taken a disk id the log never recorded (the \
         simulator's audit of the log, vdisk/audit.rs)",
    ),
    (
        114191,
        "set_parent_bdev on a snapshot gave a writable lvol of its lineage, cloned while \
         read-only, a zeroed segment its clone reads too, writable in place by the lvol \
         (esnap::re_parenting_a_snapshot_keeps_a_clone_of_its_lvol_apart_from_the_lvols_later_writes)",
    ),
];

#[test]
fn seeds_that_once_found_a_defect_pass() {
    let opts = SimOptions::default();
    for (seed, what) in ONCE_FAILED {
        if let Err(f) = sim::run(seed, &opts) {
            panic!("seed {seed} ({what}) fails again: {f}");
        }
    }
}

#[test]
fn a_seed_replays_exactly() {
    let opts = SimOptions::default();
    for seed in [3, 17, 4242] {
        let a = sim::run(seed, &opts).unwrap_or_else(|f| panic!("{f}"));
        let b = sim::run(seed, &opts).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(a.digest, b.digest, "seed {seed} ran differently twice");
        assert_eq!(a.blocks_verified, b.blocks_verified);
        assert_eq!(a.data_ops, b.data_ops);
    }
    // And different seeds run differently.
    let x = sim::run(3, &opts).unwrap_or_else(|f| panic!("{f}"));
    let y = sim::run(4, &opts).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(x.digest, y.digest);
}

#[test]
fn crash_point_sweeps_pass() {
    let mut failures = Vec::new();
    let mut total = 0;
    for sc in sim::sweep::scenarios() {
        match sim::sweep::sweep(&sc, 2, false) {
            Ok(r) => {
                eprintln!("{:48} {:4} crash points", r.name, r.points);
                assert!(
                    r.points >= 1,
                    "`{}` swept no crash point: the operation wrote nothing?",
                    r.name
                );
                total += r.points;
            }
            Err(f) => failures.push(f.to_string()),
        }
    }
    eprintln!("{total} crash points in all");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
