//! Snapshot creation time versus disk size: a fully mapped disk of each size (data on a
//! `null` bdev, metadata on a file through io_uring) is snapshotted `N` times, with a few
//! writes to the disk between snapshots; prints p50/p99/max of the snapshot call (which
//! includes committing the metadata) for each size and the ratio.
//!
//! Usage: snapshot_scaling METADATA_DIR [N] [SIZES_GIB...]   (defaults: 30; 1 4096)
#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera::bdev::null::NullBdev;
use tessera::bdev::uring::{UringBdev, UringOptions};
use tessera::bdev::{Bdev, Channel, IoBuf};
use tessera::reactor::{CoreList, IdlePolicy, ReactorConfig, ReactorSet, block_on};
use tessera::vdisk::{Pool, PoolOptions};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("METADATA_DIR"));
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let sizes: Vec<u64> = if args.len() > 3 {
        args[3..].iter().map(|s| s.parse().unwrap()).collect()
    } else {
        vec![1, 4096]
    };
    let set = ReactorSet::start(ReactorConfig::new(CoreList::first(1), IdlePolicy::Busy)).unwrap();
    let cores = set.cores().clone();
    let mut p99s = Vec::new();
    for gib in sizes {
        let data: Arc<dyn Bdev> =
            NullBdev::create(&format!("null{gib}"), (gib + 8) << 18, 4096, None).unwrap();
        let path = dir.join(format!("meta-{gib}.img"));
        let _ = std::fs::remove_file(&path);
        let meta: Arc<dyn Bdev> = UringBdev::create(
            &format!("meta{gib}"),
            &path,
            None,
            Some(1 << 30),
            None,
            UringOptions::default(),
        )
        .unwrap();
        let pool = block_on(Pool::create(
            &cores,
            0,
            vec![data],
            Some(meta),
            PoolOptions::new(&format!("p{gib}")),
        ))
        .unwrap();
        let disk: Arc<dyn Bdev> = block_on(pool.create_disk("d", gib << 30, true)).unwrap();
        // Fully map it: one write into every segment.
        let segs = gib << 10;
        let t0 = Instant::now();
        support::write_every_segment(&cores, &disk, segs);
        block_on(pool.commit()).unwrap();
        let fill_s = t0.elapsed().as_secs_f64();
        let mut times = Vec::new();
        for i in 0..n {
            // A few writes between snapshots, so each shares a different table.
            let d = disk.clone();
            block_on(cores.spawn_on(0, move || async move {
                let ch = Channel::get(&d).unwrap();
                for k in 0..8u64 {
                    ch.write(
                        (i as u64 * 977 + k * 131_071) % (segs * 256),
                        IoBuf::new(4096),
                    )
                    .await
                    .unwrap();
                }
            }))
            .unwrap();
            let t = Instant::now();
            block_on(pool.snapshot(vec![("d".into(), format!("s{i}"))], Duration::from_secs(5)))
                .unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mut t2 = times.clone();
        let (p50, p99, max) = (pct(&mut t2, 0.5), pct(&mut t2, 0.99), pct(&mut t2, 1.0));
        p99s.push((gib, p99));
        println!(
            "{{\"size_gib\":{gib},\"segments\":{segs},\"fill_s\":{fill_s:.1},\"snapshots\":{n},\"create_us\":{{\"p50\":{p50:.0},\"p99\":{p99:.0},\"max\":{max:.0}}}}}"
        );
        block_on(pool.close()).unwrap();
    }
    if p99s.len() >= 2 {
        let (a, b) = (p99s[0], p99s[p99s.len() - 1]);
        println!(
            "{{\"result\":\"p99 ratio {} GiB / {} GiB\",\"ratio\":{:.2}}}",
            b.0,
            a.0,
            b.1 / a.1
        );
    }
    std::process::exit(0);
}
