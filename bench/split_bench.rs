//! Split (inflate) speed: a fully written clone of `--size` on a malloc pool is split
//! while idle, and again while a 4 KiB random-read load runs on it; prints the split
//! rate and the load's IOPS with and without the split beside it.
//!
//! Usage: split_bench [SIZE_MIB]   (default 1024). The load runs on both cores; the
//! pool's controller (which runs the split) is on core 0.
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera::bdev::malloc::MallocBdev;
use tessera::bdev::{Bdev, Channel, IoBuf};
use tessera::bench::{BenchConfig, Workload};
use tessera::reactor::{CoreList, IdlePolicy, ReactorConfig, ReactorSet, block_on};
use tessera::vdisk::{Pool, PoolOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let set = ReactorSet::start(ReactorConfig::new(CoreList::first(2), IdlePolicy::Busy)).unwrap();
    let cores = set.cores().clone();
    let base: Arc<dyn Bdev> = MallocBdev::create("m0", (3 * mib + 64) << 8, 4096, None).unwrap();
    let pool = block_on(Pool::create(
        &cores,
        0,
        vec![base],
        None,
        PoolOptions::new("p"),
    ))
    .unwrap();
    let run = |round: &str, with_load: bool| {
        let origin = format!("o{round}");
        let disk: Arc<dyn Bdev> = block_on(pool.create_disk(&origin, mib << 20, true)).unwrap();
        // Fill it: 1 MiB writes of non-zero data.
        block_on(cores.spawn_on(0, move || async move {
            let ch = Channel::get(&disk).unwrap();
            for s in 0..mib {
                let mut b = IoBuf::new(1 << 20);
                b.fill(s as u8 | 1);
                ch.write(s * 256, b).await.unwrap();
            }
        }))
        .unwrap();
        block_on(pool.snapshot(
            vec![(origin.clone(), format!("s{round}"))],
            Duration::from_secs(5),
        ))
        .unwrap();
        let clone: Arc<dyn Bdev> =
            block_on(pool.clone_disk(&format!("s{round}"), &format!("c{round}"))).unwrap();
        let cname = format!("c{round}");
        let bench = |secs: f64| {
            let cfg = BenchConfig {
                workload: Workload::RandRead,
                bs: 4096,
                qd: 32,
                seconds: secs,
                ..Default::default()
            };
            // The load runs on both cores; the split's controller shares core 0 with it.
            tessera::bench::run(&cores, clone.clone(), &cfg, Vec::new()).map(|r| r.iops)
        };
        let baseline = if with_load {
            Some(bench(1.0).unwrap())
        } else {
            None
        };
        let t0 = Instant::now();
        block_on(pool.split(&cname)).unwrap();
        let mut during = None;
        let mut progressed = 0;
        if with_load {
            during = Some(bench(0.3).unwrap());
            let l = block_on(pool.list()).unwrap();
            progressed = l
                .iter()
                .find(|d| d.name == cname)
                .and_then(|d| d.job.as_ref().map(|j| j.1))
                .unwrap_or(mib);
        }
        loop {
            let l = block_on(pool.list()).unwrap();
            if l.iter().find(|d| d.name == cname).unwrap().parent.is_none() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let secs = t0.elapsed().as_secs_f64();
        let gib_s = mib as f64 / 1024.0 / secs;
        match (baseline, during) {
            (Some(b), Some(d)) => println!(
                "{{\"case\":\"split under a 4 KiB randread QD32 load on both cores\",\"mib\":{mib},\"split_s\":{secs:.3},\"gib_s\":{gib_s:.2},\"load_iops_before\":{b:.0},\"load_iops_during\":{d:.0},\"ratio\":{:.3},\"segments_split_during_load\":{progressed},\"split_rate_under_load_gib_s\":{:.2}}}",
                d / b,
                progressed as f64 / 1024.0 / 0.3
            ),
            _ => println!(
                "{{\"case\":\"split, idle\",\"mib\":{mib},\"split_s\":{secs:.3},\"gib_s\":{gib_s:.2}}}"
            ),
        }
        for n in [cname, format!("s{round}"), origin] {
            block_on(pool.delete_disk(&n)).unwrap();
        }
    };
    run("a", false);
    run("b", true);
    block_on(pool.close()).unwrap();
}
