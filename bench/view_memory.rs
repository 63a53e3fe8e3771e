//! Memory of the per-core views of a fully mapped 1 TiB disk (data on a `null` bdev,
//! metadata on RAM): every segment is written once (one extent and one fill each, the
//! worst case for table size), then agents are created on more and more cores; prints
//! the process RSS after each step. The views share the table's nodes, so each extra
//! core should cost next to nothing.
//!
//! Usage: view_memory [SIZE_GIB] [CORES]   (defaults: 1024, 8 reactor threads)
#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;
use tessera::bdev::malloc::MallocBdev;
use tessera::bdev::null::NullBdev;
use tessera::bdev::{Bdev, Channel};
use tessera::reactor::{CoreList, IdlePolicy, ReactorConfig, ReactorSet, block_on};
use tessera::vdisk::{Pool, PoolOptions};

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gib: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let ncores: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let mut cfg = ReactorConfig::new(CoreList::first(ncores), IdlePolicy::Adaptive);
    cfg.pin = false;
    let set = ReactorSet::start(cfg).unwrap();
    let cores = set.cores().clone();
    let data: Arc<dyn Bdev> = NullBdev::create("null0", (gib + 8) << 18, 4096, None).unwrap();
    let meta: Arc<dyn Bdev> = MallocBdev::create("meta0", 4 << 18, 4096, None).unwrap();
    let pool = block_on(Pool::create(
        &cores,
        0,
        vec![data],
        Some(meta),
        PoolOptions::new("p"),
    ))
    .unwrap();
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("big", gib << 30, true)).unwrap();
    let base_rss = rss_mib();
    let t0 = Instant::now();
    // Write one 4 KiB block in every segment.
    let segs = gib << 10;
    support::write_every_segment(&cores, &disk, segs);
    block_on(pool.commit()).unwrap();
    let filled = rss_mib();
    println!(
        "{{\"step\":\"fully mapped\",\"segments\":{segs},\"fill_s\":{:.1},\"rss_mib\":{filled:.1},\"table_mib\":{:.1}}}",
        t0.elapsed().as_secs_f64(),
        filled - base_rss
    );
    // Agents on one core, then on every core.
    let mut per_core = Vec::new();
    let mut holders = Vec::new();
    for core in 0..ncores {
        let d = disk.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // Each core opens the disk's channel and keeps it until the end.
        cores
            .send(core, move || {
                let ch = Channel::get(&d).unwrap();
                tessera::reactor::spawn_local(async move {
                    // Read through the view so it is really in use.
                    let _ = ch.read(7 * 256, 1).await;
                    let _ = tx.send(());
                    std::future::pending::<()>().await;
                })
                .detach();
            })
            .unwrap();
        rx.recv().unwrap();
        holders.push(core);
        let r = rss_mib();
        per_core.push(r);
        println!(
            "{{\"step\":\"agents on {} cores\",\"rss_mib\":{r:.1}}}",
            core + 1
        );
    }
    let extra = per_core.last().unwrap() - per_core[0];
    println!(
        "{{\"result\":\"extra memory of {} more per-core views\",\"mib\":{extra:.1},\"limit_mib\":16}}",
        ncores - 1
    );
    std::process::exit(0);
}
