//! Scenario tests of the mapping layer over RAM disks.

use super::*;
use crate::bdev::error::ErrorBdev;
use crate::bdev::malloc::MallocBdev;
use crate::bdev::{Bdev, BdevIo, Channel, IoBuf, IoKind, IoStatus};
use crate::reactor::{IdlePolicy, ReactorSet, block_on};
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn reactors(n: usize) -> ReactorSet {
    ReactorSet::for_tests(n, IdlePolicy::Adaptive)
}

fn malloc(name: &str, mib: u64) -> Arc<dyn Bdev> {
    MallocBdev::create(name, mib * 256, 4096, None).unwrap()
}

fn pattern(v: u8, len: usize) -> IoBuf {
    let mut b = IoBuf::new(len);
    b.fill(v);
    b
}

/// Runs `f` on core `core` and waits.
fn on<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    set: &ReactorSet,
    core: usize,
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    block_on(set.cores().spawn_on(core, f)).unwrap()
}

async fn read_byte(d: &Arc<dyn Bdev>, block: u64) -> u8 {
    let ch = Channel::get(d).unwrap();
    let b = ch.read(block, 1).await.unwrap();
    assert!(b.iter().all(|&x| x == b[0]), "block {block} is not uniform");
    b[0]
}

async fn write_byte(d: &Arc<dyn Bdev>, block: u64, v: u8) -> Result<(), IoStatus> {
    let ch = Channel::get(d).unwrap();
    ch.write(block, pattern(v, 4096)).await
}

/// Pool `p0` on `base` with default options, its controller on core 0.
/// A golden image of 16 MiB, every byte 0xee (an external snapshot for esnap clones).
fn golden(set: &ReactorSet) -> Arc<dyn Bdev> {
    let g: Arc<dyn Bdev> = MallocBdev::create("golden", 16 * 256, 4096, None).unwrap();
    let g2 = g.clone();
    on(set, 0, move || async move {
        let ch = Channel::get(&g2).unwrap();
        ch.write(0, pattern(0xee, 16 << 20)).await.unwrap();
    });
    g
}

fn new_pool(set: &ReactorSet, base: Arc<dyn Bdev>) -> Pool {
    block_on(Pool::create(
        set.cores(),
        0,
        vec![base],
        None,
        PoolOptions::new("p0"),
    ))
    .unwrap()
}

/// Two reactors, a 64 MiB RAM disk `m0`, pool `p0` on it and a thin disk `vd0` of
/// `bytes`: the rig most scenarios start from.
fn thin_disk(bytes: u64) -> (ReactorSet, Arc<dyn Bdev>, Pool, Arc<dyn Bdev>) {
    let set = reactors(2);
    let base = malloc("m0", 64);
    let pool = new_pool(&set, base.clone());
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", bytes, true)).unwrap();
    (set, base, pool, disk)
}

#[test]
fn thin_disk_round_trip_and_reopen() {
    let (set, base, pool, disk) = thin_disk(32 << 20);
    assert_eq!(disk.num_blocks(), 8192);
    let d = disk.clone();
    on(&set, 1, move || async move {
        // Unwritten reads zero; a 4 KiB write into a fresh segment reads back.
        assert_eq!(read_byte(&d, 5).await, 0);
        write_byte(&d, 5, 0xaa).await.unwrap();
        assert_eq!(read_byte(&d, 5).await, 0xaa);
        assert_eq!(read_byte(&d, 4).await, 0, "neighbouring block stays zero");
        assert_eq!(read_byte(&d, 6).await, 0);
        // A multi-segment write.
        let ch = Channel::get(&d).unwrap();
        ch.write(250, pattern(0x11, 10 * 4096)).await.unwrap();
        for b in 250..260 {
            assert_eq!(read_byte(&d, b).await, 0x11);
        }
        ch.flush().await.unwrap();
    });
    // Another core sees the same data.
    let d = disk.clone();
    on(&set, 0, move || async move {
        assert_eq!(read_byte(&d, 5).await, 0xaa);
        assert_eq!(read_byte(&d, 259).await, 0x11);
    });
    // Only the touched segments are allocated: 1 for block 5, 2 for 250..260.
    let (free, pending) = block_on(pool.free_space()).unwrap();
    let (total, _) = pool.space();
    assert_eq!(total - free - pending, 2, "two segments allocated");
    block_on(pool.close()).unwrap();
    drop(disk);
    // Reopen from the same bdev.
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let disk: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        assert_eq!(read_byte(&d, 5).await, 0xaa);
        assert_eq!(read_byte(&d, 4).await, 0);
        assert_eq!(read_byte(&d, 255).await, 0x11);
    });
    // The offline check is clean after close.
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
    assert_eq!(report.disks, 1);
}

#[test]
fn full_pool_fails_only_writes_needing_space() {
    let set = reactors(1);
    let base = malloc("m0", 24);
    let mut opts = PoolOptions::new("p0");
    opts.metadata_bytes = Some(1 << 20);
    let pool = block_on(Pool::create(set.cores(), 0, vec![base], None, opts)).unwrap();
    let (data, free) = pool.space();
    assert_eq!(data, free);
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 64 << 20, true)).unwrap();
    let d = disk.clone();
    let p2 = pool.clone();
    on(&set, 0, move || async move {
        // Fill every free segment.
        for s in 0..free {
            write_byte(&d, s * 256, 1).await.unwrap();
        }
        // The next new segment: capacity exceeded; reads and overwrites go on.
        assert_eq!(
            write_byte(&d, free * 256, 2).await,
            Err(IoStatus::CapacityExceeded)
        );
        assert_eq!(read_byte(&d, 0).await, 1);
        write_byte(&d, 1, 3).await.unwrap();
        assert_eq!(read_byte(&d, 1).await, 3);
        // Freeing space (unmap a whole segment, commit) makes writes succeed again.
        let ch = Channel::get(&d).unwrap();
        ch.unmap(0, 256).await.unwrap();
        assert_eq!(read_byte(&d, 1).await, 0, "unmapped reads zero");
        p2.commit().await.unwrap();
        write_byte(&d, free * 256, 2).await.unwrap();
        assert_eq!(read_byte(&d, free * 256).await, 2);
    });
}

#[test]
fn snapshot_clone_and_copy_on_write() {
    let (set, base, pool, disk) = thin_disk(16 << 20);
    let d = disk.clone();
    on(&set, 1, move || async move {
        for b in 0..8 {
            write_byte(&d, b, 1).await.unwrap();
        }
    });
    let snap: Arc<dyn Bdev> =
        block_on(pool.snapshot(vec![("vd0".into(), "snap1".into())], Duration::from_secs(1)))
            .unwrap()
            .pop()
            .unwrap();
    assert!(snap.read_only());
    let (d, s) = (disk.clone(), snap.clone());
    on(&set, 1, move || async move {
        write_byte(&d, 3, 2).await.unwrap();
        assert_eq!(read_byte(&d, 3).await, 2);
        assert_eq!(read_byte(&s, 3).await, 1, "the snapshot keeps the old data");
        assert_eq!(
            read_byte(&d, 4).await,
            1,
            "unwritten blocks fall through to the shared segment"
        );
        assert_eq!(write_byte(&s, 0, 9).await, Err(IoStatus::WriteProtected));
    });
    let clone: Arc<dyn Bdev> = block_on(pool.clone_disk("snap1", "clone1")).unwrap();
    let (c, s) = (clone.clone(), snap.clone());
    on(&set, 0, move || async move {
        assert_eq!(read_byte(&c, 3).await, 1);
        write_byte(&c, 4, 7).await.unwrap();
        assert_eq!(read_byte(&c, 4).await, 7);
        assert_eq!(read_byte(&s, 4).await, 1);
    });
    // Listing shows the family.
    let list = block_on(pool.list()).unwrap();
    let by = |n: &str| list.iter().find(|d| d.name == n).unwrap().clone();
    assert_eq!(by("vd0").parent.as_deref(), Some("snap1"));
    assert_eq!(by("clone1").parent.as_deref(), Some("snap1"));
    let mut kids = by("snap1").children;
    kids.sort();
    assert_eq!(kids, vec!["clone1".to_string(), "vd0".to_string()]);
    // Delete the snapshot although it has two children: they keep their data.
    block_on(pool.delete_disk("snap1")).unwrap();
    let (d, c) = (disk.clone(), clone.clone());
    on(&set, 1, move || async move {
        assert_eq!(read_byte(&d, 3).await, 2);
        assert_eq!(read_byte(&d, 5).await, 1);
        assert_eq!(read_byte(&c, 3).await, 1);
        assert_eq!(read_byte(&c, 4).await, 7);
    });
    // Delete everything: the pool's free space comes back.
    block_on(pool.delete_disk("clone1")).unwrap();
    block_on(pool.delete_disk("vd0")).unwrap();
    block_on(pool.commit()).unwrap();
    let (data, _) = pool.space();
    let (free, pending) = block_on(pool.free_space()).unwrap();
    assert_eq!((free, pending), (data, 0), "no leaked segment");
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}

#[test]
fn split_makes_a_clone_independent() {
    let (set, base, pool, disk) = thin_disk(8 << 20);
    let d = disk.clone();
    on(&set, 1, move || async move {
        for s in 0..8u64 {
            write_byte(&d, s * 256 + 1, s as u8 + 1).await.unwrap();
        }
    });
    block_on(pool.snapshot(vec![("vd0".into(), "s".into())], Duration::from_secs(1))).unwrap();
    let clone: Arc<dyn Bdev> = block_on(pool.clone_disk("s", "c")).unwrap();
    let c = clone.clone();
    on(&set, 1, move || async move {
        write_byte(&c, 2, 0xcc).await.unwrap();
    });
    block_on(pool.split("c")).unwrap();
    for _ in 0..200 {
        let l = block_on(pool.list()).unwrap();
        if l.iter().find(|d| d.name == "c").unwrap().parent.is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let l = block_on(pool.list()).unwrap();
    let c_info = l.iter().find(|d| d.name == "c").unwrap();
    assert!(c_info.parent.is_none(), "split finished: {c_info:?}");
    assert_eq!(c_info.shared_segments, 0);
    // After the split the snapshot can go while the clone serves I/O.
    block_on(pool.delete_disk("s")).unwrap();
    let c = clone.clone();
    on(&set, 0, move || async move {
        for s in 0..8u64 {
            assert_eq!(read_byte(&c, s * 256 + 1).await, s as u8 + 1);
        }
        assert_eq!(read_byte(&c, 2).await, 0xcc);
        assert_eq!(read_byte(&c, 3).await, 0);
    });
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}

/// A split copies within the pool's job bandwidth cap: 24 fully written segments of a
/// snapshot (two batches of a split) at 8 MiB/s take the second batch's wait, about 2 s,
/// where uncapped they take milliseconds; a split cancelled while it waits out the cap
/// stops within a slice, not when the wait would end.
#[test]
fn split_copies_within_the_jobs_bandwidth_cap() {
    let set = reactors(2);
    let base = malloc("m0", 128);
    let pool = new_pool(&set, base.clone());
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 24 << 20, true)).unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        let ch = Channel::get(&d).unwrap();
        for s in 0..24u64 {
            ch.write(s * 256, pattern(s as u8 + 1, 1 << 20))
                .await
                .unwrap();
        }
    });
    block_on(pool.snapshot(vec![("vd0".into(), "s".into())], Duration::from_secs(1))).unwrap();
    block_on(pool.clone_disk("s", "c")).unwrap();
    block_on(pool.clone_disk("s", "c2")).unwrap();
    let cap = 8u64 << 20;
    block_on(pool.set_job_limit(cap)).unwrap();
    let split_of = |name: &str| {
        let t0 = std::time::Instant::now();
        block_on(pool.split(name)).unwrap();
        loop {
            let l = block_on(pool.list()).unwrap();
            let d = l.iter().find(|d| d.name == name).unwrap();
            if d.parent.is_none() {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{d:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let capped = split_of("c");
    // The second batch (8 MiB) waits for the first (16 MiB) at 8 MiB/s.
    assert!(
        capped >= Duration::from_millis(1800) && capped < Duration::from_secs(10),
        "a split of 24 MiB at 8 MiB/s took {capped:?}"
    );
    // Cancelled while it waits: stops within a slice of the wait.
    block_on(pool.split("c2")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    block_on(pool.cancel_split("c2")).unwrap();
    loop {
        let l = block_on(pool.list()).unwrap();
        let d = l.iter().find(|d| d.name == "c2").unwrap();
        if d.job.is_none() {
            assert!(d.parent.is_some(), "{d:?}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_millis(500), "{d:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Lifted: the same split takes milliseconds.
    block_on(pool.set_job_limit(0)).unwrap();
    let free = split_of("c2");
    assert!(free < Duration::from_secs(1), "uncapped: {free:?}");
    let c: Arc<dyn Bdev> = block_on(pool.disk("c")).unwrap();
    on(&set, 0, move || async move {
        for s in 0..24u64 {
            assert_eq!(read_byte(&c, s * 256 + 100).await, s as u8 + 1);
        }
    });
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}

#[test]
fn fully_allocated_disk_reads_zeros_and_is_one_run_per_256_segments() {
    let set = reactors(1);
    let base = malloc("m0", 600);
    // Dirty the medium first: a reused segment must never show old contents.
    let b2 = base.clone();
    on(&set, 0, move || async move {
        let ch = Channel::get(&b2).unwrap();
        ch.write(100_000, pattern(0xee, 1 << 20)).await.unwrap();
    });
    let pool = new_pool(&set, base);
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("thick", 512 << 20, false)).unwrap();
    let d = disk.clone();
    on(&set, 0, move || async move {
        let ch = Channel::get(&d).unwrap();
        for at in (0..131072).step_by(4099) {
            let b = ch.read(at, 1).await.unwrap();
            assert!(
                b.iter().all(|&x| x == 0),
                "block {at} of a new thick disk is not zero"
            );
        }
    });
    let d = disk.clone();
    let p2 = pool.clone();
    on(&set, 0, move || async move {
        let ch = Channel::get(&d).unwrap();
        // The agent of this core, alive while `ch` is, serves from two run entries.
        let entries = p2.view_entries(0, "thick", 0, u64::MAX).await.unwrap();
        assert_eq!(entries.len(), 2, "512 segments in runs of 256");
        assert!(entries.iter().all(|e| e.len == 256));
        let (_, st) = ch.io(BdevIo::write(7, 1, pattern(5, 4096))).await;
        assert_eq!(st, IoStatus::Success);
        assert_eq!(read_byte(&d, 7).await, 5);
    });
}

/// The blocking flag: while writes run on every core, the controller sets no-write on a
/// segment with the blocking flag; once that returns, no write may land on the segment's
/// physical location any more (they fault and wait), until the state is cleared.
#[test]
fn blocking_flag_drains_every_write_before_acknowledging() {
    let (set, base, pool, disk) = thin_disk(8 << 20);
    write_segment_0(&set, &disk);
    check_blocking_flag(set, base, pool, disk);
}

/// The same with a container that holds every write 1 ms before applying it: the
/// writes the agent hands to it readdressed (a fully written segment) are still in the
/// container when the command arrives, and the acknowledgement must wait for the
/// container to drain.
#[test]
fn blocking_flag_waits_for_writes_held_in_a_slow_container() {
    let (set, slow, pool, disk) = slow_thin_disk(4096);
    write_segment_0(&set, &disk);
    slow.set_submit_delay(IoKind::Write, Duration::from_millis(1));
    check_blocking_flag(set, slow, pool, disk);
}

/// Allocates segment 0 (blocks 0..256) fully.
fn write_segment_0(set: &ReactorSet, disk: &Arc<dyn Bdev>) {
    let d = disk.clone();
    on(set, 0, move || async move {
        Channel::get(&d)
            .unwrap()
            .write(0, pattern(1, 1 << 20))
            .await
            .unwrap();
    });
}

fn check_blocking_flag(set: ReactorSet, base: Arc<dyn Bdev>, pool: Pool, disk: Arc<dyn Bdev>) {
    use crate::vdisk::msg::{AgentCmd, RangeState};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    // Writers on both cores: 8 in flight each, every write a new value.
    let mut writers = Vec::new();
    for core in 0..2 {
        let (d, stop, completed) = (disk.clone(), stop.clone(), completed.clone());
        writers.push(set.cores().spawn_on(core, move || async move {
            let ch = Channel::get(&d).unwrap();
            let tasks: Vec<_> = (0..8u64)
                .map(|k| {
                    let (ch, stop, completed) = (ch.clone(), stop.clone(), completed.clone());
                    crate::reactor::spawn_local(async move {
                        let mut v = 10 + core as u8 * 100 + k as u8;
                        while !stop.load(Ordering::Relaxed) {
                            v = v.wrapping_add(16);
                            let b = (k * 29 + core as u64 * 7) % 256;
                            ch.write(b, pattern(v, 4096)).await.unwrap();
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(50));
    let id = block_on(pool.disk("vd0")).unwrap().disk_id();
    let pid = pool.shared.id;
    // Where segment 0 lives.
    let seg = block_on(pool.view_entries(0, "vd0", 0, 1)).unwrap();
    let _ = seg;
    let phys = block_on(pool.on_ctl(move |c| async move {
        Ok(c.st.borrow().disks[&id]
            .root
            .as_ref()
            .unwrap()
            .lookup(0)
            .unwrap()
            .layers[0]
            .seg())
    }))
    .unwrap();
    let (ci, off) = pool.shared.locate(phys);
    assert_eq!(ci, 0);
    let read_phys = |base: Arc<dyn Bdev>| {
        move || async move {
            Channel::get(&base)
                .unwrap()
                .read(off / 4096, 256)
                .await
                .unwrap()
                .to_vec()
        }
    };
    for round in 0..20 {
        let before = completed.load(Ordering::Relaxed);
        // No-write on segment 0, with the blocking flag.
        block_on(pool.on_ctl(move |c| async move {
            c.command_agents(
                id,
                AgentCmd::SetState {
                    from: 0,
                    to: 1,
                    state: Some(RangeState::NoWrite),
                },
                true,
            )
            .await
            .unwrap();
            Ok(())
        }))
        .unwrap();
        // Drained: the location must not change any more while writers keep trying.
        let snap1 = on(&set, 1, read_phys(base.clone()));
        std::thread::sleep(Duration::from_millis(5));
        let snap2 = on(&set, 0, read_phys(base.clone()));
        assert!(
            snap1 == snap2,
            "round {round}: a write landed after the blocking command was acknowledged"
        );
        // Clear it; writes resume (the parked ones retry and go through).
        block_on(pool.on_ctl(move |c| async move {
            c.command_agents(
                id,
                AgentCmd::SetState {
                    from: 0,
                    to: 1,
                    state: None,
                },
                false,
            )
            .await
            .unwrap();
            Ok(())
        }))
        .unwrap();
        std::thread::sleep(Duration::from_millis(3));
        assert!(
            completed.load(Ordering::Relaxed) > before,
            "round {round}: writes resumed"
        );
        let _ = pid;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        block_on(w).unwrap();
    }
}

/// Quiesce holds new I/O and drains the rest; activate releases it; a quiesce that is
/// not activated within its time limit cancels itself and the held I/O completes.
#[test]
fn quiesce_holds_io_and_cancels_itself_after_its_time_limit() {
    let (set, _, pool, disk) = thin_disk(8 << 20);
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_byte(&d, 0, 1).await.unwrap()
    });
    // Activated in time.
    let id = block_on(pool.quiesce(vec!["vd0".into()], Duration::from_secs(5))).unwrap();
    let d = disk.clone();
    let held = set.cores().spawn_on(1, move || async move {
        let b = read_byte(&d, 0).await;
        (b, std::time::Instant::now())
    });
    std::thread::sleep(Duration::from_millis(100));
    let activated = std::time::Instant::now();
    block_on(pool.activate(id)).unwrap();
    let (b, read_at) = block_on(held).unwrap();
    assert_eq!(b, 1);
    assert!(
        read_at >= activated,
        "the read completed while the disk was quiesced"
    );
    // Not activated: cancelled by the time limit, I/O resumes on its own.
    let t0 = std::time::Instant::now();
    let id = block_on(pool.quiesce(vec!["vd0".into()], Duration::from_millis(200))).unwrap();
    let d = disk.clone();
    let done = block_on(set.cores().spawn_on(1, move || async move {
        write_byte(&d, 0, 2).await.unwrap();
        std::time::Instant::now()
    }))
    .unwrap();
    let waited = done.duration_since(t0);
    assert!(
        waited >= Duration::from_millis(190),
        "the write was held ({waited:?})"
    );
    assert!(
        waited < Duration::from_secs(3),
        "the time limit released it ({waited:?})"
    );
    let e = block_on(pool.activate(id)).unwrap_err();
    assert!(matches!(e, VdiskError::QuiesceTimeout(_)), "{e}");
    // The write released by the time limit landed.
    let d = disk.clone();
    on(&set, 0, move || async move {
        assert_eq!(read_byte(&d, 0).await, 2)
    });
}

/// Two reactors and a thin 8 MiB disk `vd0` on a 64 MiB RAM disk of `block_size`-byte
/// blocks behind an error bdev, whose writes [`unmap_during_slow_write`] holds back.
fn slow_thin_disk(block_size: u32) -> (ReactorSet, Arc<ErrorBdev>, Pool, Arc<dyn Bdev>) {
    let set = reactors(2);
    let m = MallocBdev::create("m0", (64 << 20) / block_size as u64, block_size, None).unwrap();
    let slow = ErrorBdev::create("e0", m, false).unwrap();
    let pool = new_pool(&set, slow.clone());
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 8 << 20, true)).unwrap();
    (set, slow, pool, disk)
}

/// Writes `data` at block `at` on core 0 with the base's writes held back 200 ms and,
/// while that write is in flight, unmaps `n` blocks from `from` on core 1; returns once
/// both are done.
fn unmap_during_slow_write(
    set: &ReactorSet,
    slow: &ErrorBdev,
    disk: &Arc<dyn Bdev>,
    (at, data): (u64, IoBuf),
    (from, n): (u64, u64),
) {
    slow.set_latency(IoKind::Write, Duration::from_millis(200));
    let d = disk.clone();
    let write = set.cores().spawn_on(0, move || async move {
        Channel::get(&d).unwrap().write(at, data).await
    });
    std::thread::sleep(Duration::from_millis(50));
    let d = disk.clone();
    on(set, 1, move || async move {
        Channel::get(&d).unwrap().unmap(from, n).await.unwrap();
    });
    block_on(write).unwrap().unwrap();
    slow.set_latency(IoKind::Write, Duration::ZERO);
}

/// An unmap that empties a segment's fill while a write into the same segment is still
/// in flight must not drop the segment: the write marks its granules only when it
/// completes, and the data it acknowledged would be lost (the model test found this).
#[test]
fn emptying_unmap_waits_for_writes_in_flight_to_the_segment() {
    let (set, slow, pool, disk) = slow_thin_disk(4096);
    let d = disk.clone();
    on(&set, 1, move || async move {
        for b in 0..4 {
            write_byte(&d, b, 0x11).await.unwrap();
        }
    });
    // A write into block 5 of the same segment stays in flight while the unmap clears
    // the only granules the segment's fill holds so far.
    unmap_during_slow_write(&set, &slow, &disk, (5, pattern(0x55, 4096)), (0, 4));
    let d = disk.clone();
    on(&set, 1, move || async move {
        assert_eq!(
            read_byte(&d, 5).await,
            0x55,
            "the acknowledged write survives"
        );
        assert_eq!(read_byte(&d, 0).await, 0, "the unmapped block reads zero");
    });
    block_on(pool.close()).unwrap();
}

/// A write that covers part of a granule the top layer holds must not mark that granule
/// held again when it completes: an unmap may have cleared it meanwhile, and the rest of
/// the granule would come back with its old data (the model test found this).
#[test]
fn partial_granule_write_does_not_revive_a_granule_unmapped_meanwhile() {
    // 512-byte blocks: a granule (1 MiB / 256) is 8 blocks.
    let (set, slow, pool, disk) = slow_thin_disk(512);
    let d = disk.clone();
    on(&set, 1, move || async move {
        let ch = Channel::get(&d).unwrap();
        ch.write(0, pattern(0x11, 16 * 512)).await.unwrap();
    });
    // A write of blocks 7..24 — the last block of granule 0 (held), all of granule 1
    // (held) and granule 2 (not held yet) — stays in flight while the unmap clears the
    // whole of granule 0.
    unmap_during_slow_write(&set, &slow, &disk, (7, pattern(0x77, 17 * 512)), (0, 8));
    let d = disk.clone();
    on(&set, 1, move || async move {
        let ch = Channel::get(&d).unwrap();
        let g0 = ch.read(0, 7).await.unwrap();
        assert!(
            g0.iter().all(|&b| b == 0),
            "blocks the unmap covered and no write touched read zero"
        );
        let rest = ch.read(8, 16).await.unwrap();
        assert!(
            rest.iter().all(|&b| b == 0x77),
            "the write's whole granules hold its data"
        );
    });
    block_on(pool.close()).unwrap();
}

/// Leaves whose fills grew past the budget they were packed by are written as two
/// pages each, their parent pointing at both: 400 segments written in order (three
/// leaves under a root), then every segment's fill grown to 16 runs (a fill the packed
/// encoding writes as its map). The pool closes clean, reopens with every block as
/// written, and `tessera check` counts the extra pages.
#[test]
fn leaves_whose_fills_outgrew_their_budget_are_written_on_two_pages() {
    const SEGS: u64 = 400;
    const SEG_BLOCKS: u64 = 32; // 128 KiB segments: 32 granules of one block
    let set = reactors(2);
    // 16 MiB of metadata, 80 MiB of data.
    let base = malloc("m0", 96);
    let mut opts = PoolOptions::new("p0");
    opts.segment_bytes = SEG_BLOCKS * 4096;
    let pool = block_on(Pool::create(set.cores(), 0, vec![base.clone()], None, opts)).unwrap();
    let disk: Arc<dyn Bdev> =
        block_on(pool.create_disk("vd0", SEGS * SEG_BLOCKS * 4096, true)).unwrap();
    // Block k of segment s holds (s + k) | 1 where written: k = 0 and every even k
    // from 2 to 30 (16 runs a segment); every other block reads as zeros.
    let written = |k: u64| k == 0 || (k.is_multiple_of(2) && k <= 30);
    let value = |s: u64, k: u64| (s + k) as u8 | 1;
    let d = disk.clone();
    on(&set, 1, move || async move {
        for s in 0..SEGS {
            write_byte(&d, s * SEG_BLOCKS, value(s, 0)).await.unwrap();
        }
        let ch = Channel::get(&d).unwrap();
        ch.flush().await.unwrap();
        for s in 0..SEGS {
            for k in (2..=30).step_by(2) {
                write_byte(&d, s * SEG_BLOCKS + k, value(s, k))
                    .await
                    .unwrap();
            }
        }
        ch.flush().await.unwrap();
    });
    block_on(pool.close()).unwrap();
    drop(disk);
    let report = offline_check(&set, base.clone());
    assert!(report.clean(), "{:#?}", report.errors);
    assert_eq!(report.extents, SEGS as usize);
    // Three leaves (about 170 extents each by their budget; ~40 bytes each written)
    // and the root: two leaves take two pages.
    assert!(report.node_pages >= 6, "{} node pages", report.node_pages);
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let disk: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        let ch = Channel::get(&d).unwrap();
        for s in 0..SEGS {
            let b = ch.read(s * SEG_BLOCKS, SEG_BLOCKS).await.unwrap();
            for k in 0..SEG_BLOCKS {
                let want = if written(k) { value(s, k) } else { 0 };
                let got = &b[k as usize * 4096..(k as usize + 1) * 4096];
                assert!(
                    got.iter().all(|&x| x == want),
                    "segment {s} block {k}: {} where {want} was written",
                    got[0]
                );
            }
        }
    });
    block_on(pool.close()).unwrap();
    drop(disk);
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}

/// `tessera check` of the pool on `base` (closed), run on core 0.
fn offline_check(set: &ReactorSet, base: Arc<dyn Bdev>) -> check::CheckReport {
    on(
        set,
        0,
        move || async move { check::check(vec![base]).await },
    )
}

/// Waits for `fut` on a thread of its own for at most `limit`: `None` if it did not
/// finish in time (a deadlock, or a controller that panicked).
fn within<T: Send + 'static>(
    limit: Duration,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(block_on(fut));
    });
    rx.recv_timeout(limit).ok()
}

/// `vd0` with the copy-out policy, blocks 0 and 256 (segments 0 and 1) written with 1,
/// a snapshot `s1` of it and a clone `c1` of that: every step durable.
fn copy_out_family(pool: &Pool, set: &ReactorSet, disk: &Arc<dyn Bdev>) -> Arc<dyn Bdev> {
    block_on(pool.set_cow_policy("vd0", CowPolicy::CopyOut)).unwrap();
    let d = disk.clone();
    on(set, 1, move || async move {
        write_byte(&d, 0, 1).await.unwrap();
        write_byte(&d, 256, 1).await.unwrap();
    });
    block_on(pool.snapshot(vec![("vd0".into(), "s1".into())], Duration::from_secs(1))).unwrap();
    block_on(pool.clone_disk("s1", "c1")).unwrap()
}

/// Copy-out writes in place into the segment the snapshot and the clone shared, after
/// re-pointing them at a copy. The durable metadata must point them at the copy before
/// that write can reach the medium: a crash right after it (no flush, no commit; the RAM
/// disk has no cache, so every write landed) must leave the snapshot and the clone as
/// they were, and the origin must not show the clone's write.
#[test]
fn copy_out_keeps_snapshot_and_clone_after_crash_before_commit() {
    let (set, base, pool, disk) = thin_disk(8 << 20);
    let clone = copy_out_family(&pool, &set, &disk);
    let (d, c) = (disk.clone(), clone.clone());
    on(&set, 1, move || async move {
        // The origin's first write to segment 0, the clone's to segment 1.
        write_byte(&d, 0, 2).await.unwrap();
        write_byte(&c, 256, 3).await.unwrap();
        assert_eq!(read_byte(&d, 0).await, 2);
        assert_eq!(read_byte(&c, 256).await, 3);
    });
    block_on(pool.crash_stop()).unwrap();
    drop((disk, clone));
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let by = |n: &str| -> Arc<dyn Bdev> { block_on(pool.disk(n)).unwrap() };
    let (d, s, c) = (by("vd0"), by("s1"), by("c1"));
    on(&set, 1, move || async move {
        assert_eq!(
            read_byte(&s, 0).await,
            1,
            "the snapshot shows the origin's write"
        );
        assert_eq!(
            read_byte(&c, 0).await,
            1,
            "the clone shows the origin's write"
        );
        assert_eq!(
            read_byte(&s, 256).await,
            1,
            "the snapshot shows the clone's write"
        );
        assert_eq!(
            read_byte(&d, 256).await,
            1,
            "the origin shows the clone's write"
        );
        // Not flushed: either value.
        assert!(matches!(read_byte(&d, 0).await, 1 | 2));
        assert!(matches!(read_byte(&c, 256).await, 1 | 3));
    });
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}

/// Renames of a disk and of the pool are durable when they answer (a crash right
/// after keeps them), refuse taken and invalid names, and leave the bdev's name (the
/// UUID) alone while its alias follows.
#[test]
fn renames_are_durable_when_answered_and_refuse_taken_names() {
    let (set, base, pool, disk) = thin_disk(8 << 20);
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_byte(&d, 3, 7).await.unwrap();
        Channel::get(&d).unwrap().flush().await.unwrap();
    });
    let uuid = disk.uuid().to_string();
    assert_eq!(disk.name(), uuid);
    assert_eq!(disk.aliases(), vec!["p0/vd0".to_string()]);
    block_on(pool.rename_disk("vd0", "vd1")).unwrap();
    // After a checkpoint the log is empty: the pool's rename alone must make its commit
    // write (the name is in the superblock only).
    block_on(pool.commit()).unwrap();
    block_on(pool.rename("p9")).unwrap();
    assert_eq!(pool.name(), "p9");
    assert_eq!(disk.name(), uuid);
    assert_eq!(disk.aliases(), vec!["p9/vd1".to_string()]);
    // The same name again is no change, as in SPDK.
    block_on(pool.rename_disk("vd1", "vd1")).unwrap();
    block_on(pool.rename("p9")).unwrap();
    block_on(pool.create_disk("vd2", 1 << 20, true)).unwrap();
    let e = block_on(pool.rename_disk("vd1", "vd2")).unwrap_err();
    assert!(matches!(e, VdiskError::Exists(_)), "{e}");
    let e = block_on(pool.rename_disk("vd1", "a/b")).unwrap_err();
    assert!(
        matches!(e, VdiskError::InvalidParam { field: "name", .. }),
        "{e}"
    );
    let e = block_on(pool.rename_disk("nope", "x")).unwrap_err();
    assert!(matches!(e, VdiskError::NotFound(_)), "{e}");
    let e = block_on(pool.rename("")).unwrap_err();
    assert!(matches!(e, VdiskError::InvalidParam { .. }), "{e}");
    // A crash right after the answers: no close, no commit of its own.
    block_on(pool.crash_stop()).unwrap();
    drop(disk);
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    assert_eq!(pool.name(), "p9");
    assert!(block_on(pool.disk("vd0")).is_err());
    let d: Arc<dyn Bdev> = block_on(pool.disk("vd1")).unwrap();
    assert_eq!(d.name(), uuid);
    on(&set, 1, move || async move {
        assert_eq!(read_byte(&d, 3).await, 7);
    });
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}

/// A disk made read-only and cloned shares its segments with the clone; made writable
/// again, its writes must copy on write, never overwrite what the clone shows.
#[test]
fn clearing_read_only_keeps_the_data_of_clones() {
    for policy in [CowPolicy::Redirect, CowPolicy::CopyOut] {
        let (set, base, pool, disk) = thin_disk(8 << 20);
        block_on(pool.set_cow_policy("vd0", policy)).unwrap();
        let d = disk.clone();
        on(&set, 1, move || async move {
            write_byte(&d, 0, 1).await.unwrap();
            Channel::get(&d)
                .unwrap()
                .write(256, pattern(1, 1 << 20))
                .await
                .unwrap();
        });
        block_on(pool.set_read_only("vd0", true)).unwrap();
        let clone: Arc<dyn Bdev> = block_on(pool.clone_disk("vd0", "c1")).unwrap();
        block_on(pool.set_read_only("vd0", false)).unwrap();
        let (d, c) = (disk.clone(), clone.clone());
        on(&set, 0, move || async move {
            write_byte(&d, 0, 2).await.unwrap();
            write_byte(&d, 300, 2).await.unwrap();
            assert_eq!(read_byte(&d, 0).await, 2);
            assert_eq!(read_byte(&d, 300).await, 2);
            assert_eq!(read_byte(&c, 0).await, 1, "{policy:?}: the clone changed");
            assert_eq!(read_byte(&c, 300).await, 1, "{policy:?}: the clone changed");
        });
        block_on(pool.close()).unwrap();
        drop((disk, clone));
        let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
        let (d, c) = (
            block_on(pool.disk("vd0")).unwrap(),
            block_on(pool.disk("c1")).unwrap(),
        );
        on(&set, 1, move || async move {
            let (d, c): (Arc<dyn Bdev>, Arc<dyn Bdev>) = (d, c);
            assert_eq!(read_byte(&d, 0).await, 2);
            assert_eq!(read_byte(&c, 0).await, 1, "{policy:?}: the clone changed");
            assert_eq!(read_byte(&c, 300).await, 1, "{policy:?}: the clone changed");
        });
        block_on(pool.close()).unwrap();
        let report = offline_check(&set, base);
        assert!(report.clean(), "{policy:?}: {:#?}", report.errors);
    }
}

/// Two clones of one snapshot (copy-out) fault on the same segment at once, while
/// another operation holds the snapshot's lock on it: each copy-out must re-point the
/// other clone, and taking the disks' locks in two orders would deadlock.
#[test]
fn copy_out_of_two_clones_faulting_on_one_segment_completes() {
    let (set, _base, pool, disk) = thin_disk(8 << 20);
    copy_out_family(&pool, &set, &disk);
    let a: Arc<dyn Bdev> = block_on(pool.disk("c1")).unwrap();
    let b: Arc<dyn Bdev> = block_on(pool.clone_disk("s1", "c2")).unwrap();
    let sid = block_on(pool.disk("s1")).unwrap().disk_id();
    // Someone else works on the snapshot's segment 0 for a while.
    let held = pool.on_ctl(move |c| async move {
        let _g = c.locks.segment(sid, 0).await;
        crate::reactor::sleep(Duration::from_millis(100)).await;
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(20));
    let (a2, b2) = (a.clone(), b.clone());
    let wa = set
        .cores()
        .spawn_on(0, move || async move { write_byte(&a2, 1, 0xa).await });
    let wb = set
        .cores()
        .spawn_on(1, move || async move { write_byte(&b2, 2, 0xb).await });
    let done = within(Duration::from_secs(10), async move {
        (wa.await.unwrap(), wb.await.unwrap(), held.await)
    });
    let (ra, rb, _) = done.expect("both first writes complete (no deadlock)");
    ra.unwrap();
    rb.unwrap();
    let (d, s) = (disk.clone(), block_on(pool.disk("s1")).unwrap());
    on(&set, 1, move || async move {
        let s: Arc<dyn Bdev> = s;
        assert_eq!(read_byte(&a, 1).await, 0xa);
        assert_eq!(read_byte(&b, 2).await, 0xb);
        for disk in [&a, &b, &d, &s] {
            assert_eq!(read_byte(disk, 0).await, 1);
        }
        assert_eq!(read_byte(&a, 2).await, 0, "c2's write is not in c1");
        assert_eq!(read_byte(&b, 1).await, 0, "c1's write is not in c2");
        assert_eq!(read_byte(&s, 1).await, 0);
        assert_eq!(read_byte(&d, 2).await, 0);
    });
    block_on(pool.close()).unwrap();
}

/// A clone deleted while a copy-out that must re-point it waits for its lock: the
/// copy-out must carry on without it (and not bring the controller down).
#[test]
fn copy_out_racing_the_delete_of_a_clone_it_repoints() {
    let (set, slow, pool, disk) = slow_thin_disk(4096);
    let clone = copy_out_family(&pool, &set, &disk);
    // A slow read of the clone keeps the delete waiting for the clone's I/O to drain,
    // while it holds the clone's lock.
    slow.set_latency(IoKind::Read, Duration::from_millis(300));
    let c = clone.clone();
    let read = set.cores().spawn_on(1, move || async move {
        Channel::get(&c).unwrap().read(0, 1).await.map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(50));
    let delete = pool.delete_disk("c1");
    std::thread::sleep(Duration::from_millis(50));
    // The origin's first write to segment 0: copy-out, which must re-point the snapshot
    // and the clone being deleted.
    let d = disk.clone();
    let write = set
        .cores()
        .spawn_on(0, move || async move { write_byte(&d, 0, 2).await });
    let done = within(Duration::from_secs(10), async move {
        (read.await.unwrap(), delete.await, write.await.unwrap())
    });
    let (r, del, w) = done.expect("the read, the delete and the write complete");
    slow.set_latency(IoKind::Read, Duration::ZERO);
    assert!(r.is_ok() || r == Err(IoStatus::Aborted), "{r:?}");
    del.unwrap();
    w.unwrap();
    let s: Arc<dyn Bdev> = block_on(pool.disk("s1")).unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        assert_eq!(read_byte(&d, 0).await, 2);
        assert_eq!(read_byte(&s, 0).await, 1, "the snapshot keeps its data");
        assert_eq!(read_byte(&s, 256).await, 1);
    });
    assert!(block_on(pool.disk("c1")).is_err(), "the clone is gone");
    block_on(pool.close()).unwrap();
}

/// A snapshot takes the UUID it is given; a UUID a disk
/// of the pool has, or one given twice, is refused and nothing is snapshotted.
#[test]
fn snapshot_takes_a_chosen_uuid_and_refuses_a_taken_one() {
    let (_set, _base, pool, disk) = thin_disk(16 << 20);
    let chosen = uuid::Uuid::new_v4();
    let snap: Arc<dyn Bdev> = block_on(pool.snapshot_with_uuids(
        vec![("vd0".into(), "s1".into(), Some(chosen))],
        Duration::from_secs(1),
    ))
    .unwrap()
    .pop()
    .unwrap();
    assert_eq!(snap.uuid(), chosen);
    let vd0 = disk.uuid();
    for (u, name) in [(chosen, "s1"), (vd0, "vd0")] {
        let e = block_on(pool.snapshot_with_uuids(
            vec![("vd0".into(), "s2".into(), Some(u))],
            Duration::from_secs(1),
        ))
        .err()
        .expect("refused");
        assert!(
            matches!(&e, VdiskError::UuidTaken { uuid, name: n } if *uuid == u && n == name),
            "{e}"
        );
    }
    block_on(pool.create_disk("vd1", 16 << 20, true)).unwrap();
    let twice = uuid::Uuid::new_v4();
    let e = block_on(pool.snapshot_with_uuids(
        vec![
            ("vd0".into(), "s2".into(), Some(twice)),
            ("vd1".into(), "t2".into(), Some(twice)),
        ],
        Duration::from_secs(1),
    ))
    .err()
    .expect("refused");
    assert!(
        e.to_string()
            .contains(&format!("uuid: {twice} is given to two snapshots")),
        "{e}"
    );
    let list = block_on(pool.list()).unwrap();
    assert_eq!(list.len(), 3, "nothing more was snapshotted: {list:?}");
    assert_eq!(list.iter().find(|d| d.name == "s1").unwrap().uuid, chosen);
    block_on(pool.close()).unwrap();
}

/// A snapshot whose origin is deleted while it waits for the origin's lock fails with
/// a precise error, and does not bring the controller down.
#[test]
fn snapshot_racing_the_delete_of_its_origin_fails_cleanly() {
    let (set, slow, pool, disk) = slow_thin_disk(4096);
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_byte(&d, 0, 1).await.unwrap()
    });
    // A slow read keeps the delete waiting for the disk's I/O to drain, while it holds
    // the disk's lock; the snapshot, checked already, waits for that lock.
    slow.set_latency(IoKind::Read, Duration::from_millis(300));
    let d = disk.clone();
    let read = set.cores().spawn_on(1, move || async move {
        Channel::get(&d).unwrap().read(0, 1).await.map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(50));
    let delete = pool.delete_disk("vd0");
    std::thread::sleep(Duration::from_millis(50));
    let snap = pool.snapshot(vec![("vd0".into(), "s1".into())], Duration::from_secs(1));
    let done = within(Duration::from_secs(10), async move {
        (
            read.await.unwrap(),
            delete.await,
            snap.await.map(|v| v.len()),
        )
    });
    let (_, del, snap) = done.expect("the read, the delete and the snapshot complete");
    slow.set_latency(IoKind::Read, Duration::ZERO);
    del.unwrap();
    assert!(matches!(snap, Err(VdiskError::NotFound(_))), "{snap:?}");
    assert!(block_on(pool.list()).unwrap().is_empty(), "nothing is left");
    block_on(pool.close()).unwrap();
}

/// [`within`], and a hang fails the test (naming `what`) instead of holding it.
fn wait<T: Send + 'static>(
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    within(limit, fut).unwrap_or_else(|| panic!("{what} did not finish within {limit:?}"))
}

/// Reads `n` blocks from `from` of `disk` on `core`; each must hold `v` in every byte.
fn expect_blocks(set: &ReactorSet, core: usize, disk: &Arc<dyn Bdev>, from: u64, n: u64, v: u8) {
    let d = disk.clone();
    let got = on(set, core, move || async move {
        Channel::get(&d)
            .unwrap()
            .read(from, n)
            .await
            .unwrap()
            .to_vec()
    });
    for (i, b) in got.chunks(4096).enumerate() {
        assert!(
            b.iter().all(|&x| x == v),
            "block {} holds {:#x}, expected {v:#x}",
            from + i as u64,
            b[0]
        );
    }
}

/// A write-zeroes or unmap with force-unit-access is durable when it completes, as a FUA
/// write is: after a power loss the range still reads zero — in part of a segment
/// (granules cleared), over a whole segment (returned to the zero state) and in a
/// segment it zeroes in place. (The crash-point sweeps `FUA write-zeroes` and `FUA
/// unmap` found the old data back.)
#[test]
fn fua_write_zeroes_and_unmap_are_durable_when_they_complete() {
    let set = reactors(2);
    let cache = ErrorBdev::create("e0", malloc("m0", 64), true).unwrap();
    let pool = new_pool(&set, cache.clone());
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 8 << 20, true)).unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        let ch = Channel::get(&d).unwrap();
        // Segments 0..3, made durable.
        ch.write(0, pattern(0x11, 3 << 20)).await.unwrap();
        ch.flush().await.unwrap();
        let fua = |io: BdevIo| io.with_fua(true);
        for io in [
            fua(BdevIo::write_zeroes(10, 20)),
            fua(BdevIo::unmap(256, 256)),
            fua(BdevIo::unmap(520, 30)),
        ] {
            let (_, st) = ch.io(io).await;
            assert_eq!(st, IoStatus::Success);
        }
    });
    // Power fails: nothing but what a completed flush or FUA covered survives.
    block_on(pool.crash_stop()).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    drop(disk);
    cache.power_loss();
    let pool = block_on(Pool::open(
        set.cores(),
        0,
        vec![cache.clone() as Arc<dyn Bdev>],
    ))
    .unwrap();
    let disk: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    for (from, n, v) in [
        (0, 10, 0x11),
        (10, 20, 0),
        (30, 226, 0x11),
        (256, 256, 0),
        (512, 8, 0x11),
        (520, 30, 0),
        (550, 218, 0x11),
    ] {
        expect_blocks(&set, 1, &disk, from, n, v);
    }
    block_on(pool.close()).unwrap();
}

/// How long a test waits (real time) for what must not hang: far beyond the time
/// limits, so that a slow, loaded machine does not fail the test, while a hang still does.
const HANG: Duration = Duration::from_secs(20);

/// Small time limits, so that a stuck request outlasts them many times over.
fn short_limits() -> controller::TimeLimits {
    controller::TimeLimits {
        drain: Duration::from_millis(300),
        commit_drain: Duration::from_millis(300),
    }
}

/// Holds the next write that core 1 sends to `slow` for `hold` (and, behind it, every
/// later request of core 1 to it): a base bdev that does not complete a request. Returns
/// the stuck write (block 1 of `disk`, whose segment is allocated first).
fn stuck_write_on_core_1(
    set: &ReactorSet,
    slow: &ErrorBdev,
    disk: &Arc<dyn Bdev>,
    hold: Duration,
) -> crate::reactor::RemoteHandle<Result<(), IoStatus>> {
    let d = disk.clone();
    on(set, 1, move || async move {
        write_byte(&d, 0, 0x11).await.unwrap()
    });
    slow.set_submit_delay(IoKind::Write, hold);
    let d = disk.clone();
    let stuck = set
        .cores()
        .spawn_on(1, move || async move { write_byte(&d, 1, 0x22).await });
    std::thread::sleep(Duration::from_millis(50));
    slow.set_submit_delay(IoKind::Write, Duration::ZERO);
    stuck
}

/// One stuck I/O (a base bdev that holds a write far longer than the time limits) must not
/// freeze the pool: a snapshot whose drain cannot finish fails within its limit with an
/// error naming the disk, the core and the time, and leaves nothing behind (no snapshot,
/// no quiesced or write-fenced disk); a flush still answers — its commit is durable —
/// while the space freed before it stays unreusable; once the I/O completes, everything
/// works again.
#[test]
fn a_stuck_io_fails_snapshots_and_delays_reuse_but_hangs_nothing() {
    let (set, slow, pool, disk) = slow_thin_disk(4096);
    let vd1: Arc<dyn Bdev> = block_on(pool.create_disk("vd1", 8 << 20, true)).unwrap();
    wait("set limits", HANG, pool.set_time_limits(short_limits())).unwrap();
    let d = disk.clone();
    on(&set, 0, move || async move {
        write_byte(&d, 256, 0x44).await.unwrap()
    });
    let stuck = stuck_write_on_core_1(&set, &slow, &disk, Duration::from_secs(4));
    let limit = Duration::from_millis(300);

    // A snapshot: its drain times out; it fails with a precise error, undone.
    let t0 = std::time::Instant::now();
    let e = wait(
        "a snapshot during a stuck write",
        HANG,
        pool.snapshot(vec![("vd0".into(), "s0".into())], limit),
    )
    .err()
    .expect("the snapshot fails");
    assert!(t0.elapsed() < HANG, "{:?}", t0.elapsed());
    assert!(matches!(e, VdiskError::DrainTimeout(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("`vd0`") && msg.contains("core 1") && msg.contains("300 ms"),
        "{msg}"
    );
    let list = block_on(pool.list()).unwrap();
    assert!(list.iter().all(|d| d.name != "s0"), "{list:?}");
    let vd0 = list.iter().find(|d| d.name == "vd0").unwrap();
    assert_eq!(vd0.shared_segments, 0, "vd0 is left write-fenced: {vd0:?}");
    // vd0 serves I/O on core 0 at once, writes in place (no copy-on-write fault left).
    let d = disk.clone();
    wait(
        "a write to vd0 on core 0",
        HANG,
        set.cores()
            .spawn_on(0, move || async move { write_byte(&d, 257, 0x55).await }),
    )
    .unwrap()
    .unwrap();

    // A consistency group: the quiesce's drain times out; both disks are released.
    let e = wait(
        "a group snapshot during a stuck write",
        HANG,
        pool.snapshot(
            vec![("vd0".into(), "g0".into()), ("vd1".into(), "g1".into())],
            limit,
        ),
    )
    .err()
    .expect("the group snapshot fails");
    assert!(matches!(e, VdiskError::DrainTimeout(_)), "{e}");
    let v = vd1.clone();
    wait(
        "a write to vd1 after the failed group snapshot",
        HANG,
        set.cores()
            .spawn_on(0, move || async move { write_byte(&v, 0, 0x66).await }),
    )
    .unwrap()
    .unwrap();
    let d = disk.clone();
    let b = wait(
        "a read of vd0 after the failed group snapshot",
        HANG,
        set.cores()
            .spawn_on(0, move || async move { read_byte(&d, 257).await }),
    )
    .unwrap();
    assert_eq!(b, 0x55);

    // A flush: durable at once, but what it freed (segment 1, unmapped) stays held while
    // the stuck write might still be in flight.
    let d = disk.clone();
    on(&set, 0, move || async move {
        Channel::get(&d).unwrap().unmap(256, 256).await.unwrap()
    });
    let t0 = std::time::Instant::now();
    wait("a commit during a stuck write", HANG, pool.commit()).unwrap();
    assert!(t0.elapsed() < HANG, "{:?}", t0.elapsed());
    let (_, pending) = block_on(pool.free_space()).unwrap();
    assert!(
        pending >= 1,
        "space freed before the stuck write was made reusable"
    );

    // The stuck write completes: the freed space comes back, snapshots work.
    wait("the stuck write", HANG, stuck).unwrap().unwrap();
    wait("a commit", HANG, pool.commit()).unwrap();
    let mut pending = u64::MAX;
    for _ in 0..100 {
        pending = block_on(pool.free_space()).unwrap().1;
        if pending == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        pending, 0,
        "the freed segment was released once the I/O drained"
    );
    wait(
        "a snapshot after the stuck write completed",
        HANG,
        pool.snapshot(vec![("vd0".into(), "s1".into())], limit),
    )
    .unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        assert_eq!(read_byte(&d, 1).await, 0x22);
        write_byte(&d, 2, 0x77).await.unwrap();
        assert_eq!(read_byte(&d, 2).await, 0x77);
    });
    wait("close", HANG, pool.close()).unwrap();
}

/// Deleting a disk with a stuck I/O times out and leaves the disk as it was (serving
/// I/O); closing the pool does not hang on it either; once the I/O completes the delete
/// succeeds.
#[test]
fn delete_and_close_with_a_stuck_io_time_out_instead_of_hanging() {
    let (set, slow, pool, disk) = slow_thin_disk(4096);
    wait("set limits", HANG, pool.set_time_limits(short_limits())).unwrap();
    let stuck = stuck_write_on_core_1(&set, &slow, &disk, Duration::from_secs(5));
    let e = wait(
        "a delete during a stuck write",
        HANG,
        pool.delete_disk("vd0"),
    )
    .unwrap_err();
    assert!(matches!(e, VdiskError::DrainTimeout(_)), "{e}");
    assert!(e.to_string().contains("`vd0`"), "{e}");
    let d = disk.clone();
    wait(
        "a write to vd0 after the failed delete",
        HANG,
        set.cores()
            .spawn_on(0, move || async move { write_byte(&d, 3, 0x33).await }),
    )
    .unwrap()
    .unwrap();
    wait("the stuck write", HANG, stuck).unwrap().unwrap();
    wait("a delete", HANG, pool.delete_disk("vd0")).unwrap();
    // A new stuck write: closing the pool answers within its limits.
    let vd1: Arc<dyn Bdev> = block_on(pool.create_disk("vd1", 8 << 20, true)).unwrap();
    let _stuck = stuck_write_on_core_1(&set, &slow, &vd1, Duration::from_secs(5));
    wait("close during a stuck write", HANG, pool.close()).unwrap();
}

/// True for the error that says the metadata area is full.
fn metadata_full(e: &VdiskError) -> bool {
    matches!(e, VdiskError::NoMetadataSpace { .. })
}

/// A disk locker (a snapshot, a resize) under a steady stream of segment lockers (mapping
/// faults: each holds its segment across awaits, and a new one starts before the last
/// one ends, so some segment is always held) gets the disk once the holders of the
/// moment finish: a waiting disk locker bars new segment lockers. Before, it waited for
/// the stream to pause — a second, under random first writes, until the background
/// commit.
#[test]
fn a_disk_lock_is_not_starved_by_a_stream_of_segment_locks() {
    let set = reactors(1);
    let (granted_after, stream_len) = on(&set, 0, || async {
        use std::cell::Cell;
        use std::rc::Rc;
        let locks = locks::DiskLocks::default();
        let started = Rc::new(Cell::new(0u64));
        let stream = {
            let (locks, started) = (locks.clone(), started.clone());
            crate::reactor::spawn_local(async move {
                let mut faults = Vec::new();
                for v in 0..2000u64 {
                    let (locks, started) = (locks.clone(), started.clone());
                    faults.push(crate::reactor::spawn_local(async move {
                        let _g = locks.segment(7, v).await;
                        started.set(started.get() + 1);
                        crate::reactor::yield_now().await;
                        crate::reactor::yield_now().await;
                    }));
                    crate::reactor::yield_now().await;
                }
                for f in faults {
                    f.await;
                }
            })
        };
        for _ in 0..50 {
            crate::reactor::yield_now().await;
        }
        let asked = started.get();
        let g = locks.disk(7).await;
        let granted_after = started.get() - asked;
        drop(g);
        stream.await;
        // A disk locker that gives up (its time limit) stops barring segment lockers.
        let held = locks.segment(8, 0).await;
        let soon = || crate::reactor::now().after(Duration::from_millis(50));
        assert!(crate::reactor::until(soon(), locks.disk(8)).await.is_none());
        assert!(
            crate::reactor::until(soon(), locks.segment(8, 1))
                .await
                .is_some(),
            "an abandoned disk lock still bars segment lockers"
        );
        drop(held);
        (granted_after, started.get())
    });
    assert_eq!(stream_len, 2000);
    assert!(
        granted_after <= 5,
        "the disk lock was granted after {granted_after} more segment locks"
    );
}

/// A burst of first writes into fresh segments needs no commit to make metadata room:
/// their fills sit in leaves not yet written (which a commit writes with the fills'
/// bits, copying nothing), and fill charges stop at the pages a commit could copy.
/// Before that cap, each first write charged a leaf's whole path, and 2000 of them
/// drained the budget of a 256-page metadata area holding a few dozen pages. (The burst's
/// records outgrow this small pool's log, so an append may become a checkpoint: that
/// is not a commit the writes needed for room, and is not counted.)
#[test]
fn a_burst_of_first_writes_into_fresh_segments_forces_no_commit() {
    let set = reactors(2);
    let base = malloc("m0", 256);
    let mut opts = PoolOptions::new("p0");
    opts.segment_bytes = 64 << 10;
    opts.metadata_bytes = Some(1 << 20);
    let pool = block_on(Pool::create(set.cores(), 0, vec![base], None, opts)).unwrap();
    let d: Arc<dyn Bdev> = block_on(pool.create_disk("d", 200 << 20, true)).unwrap();
    block_on(pool.commit()).unwrap();
    let commits_for_room = |pool: &Pool| {
        block_on(pool.on_ctl(|c| async move { Ok(c.commits_for_room.get()) })).unwrap()
    };
    let before = commits_for_room(&pool);
    // One 4 KiB block in each of 2000 of the disk's 3200 segments, in a scattered order,
    // 32 at a time, from the core that is not the controller's.
    let segs: Vec<u64> = (0..2000u64).map(|i| (i * 1601) % 3200).collect();
    let d2 = d.clone();
    let segs2 = segs.clone();
    on(&set, 1, move || async move {
        for chunk in segs2.chunks(32) {
            let writes: Vec<_> = chunk
                .iter()
                .map(|&s| {
                    let d = d2.clone();
                    crate::reactor::spawn_local(async move {
                        write_byte(&d, s * 16, (s % 250) as u8 + 1).await
                    })
                })
                .collect();
            for w in writes {
                w.await.expect("a first write into a fresh segment");
            }
        }
    });
    let after = commits_for_room(&pool);
    assert_eq!(
        after,
        before,
        "first writes forced {} commits for metadata room",
        after - before
    );
    block_on(pool.commit()).unwrap();
    on(&set, 0, move || async move {
        for &s in segs.iter().step_by(97) {
            assert_eq!(read_byte(&d, s * 16).await, (s % 250) as u8 + 1);
        }
    });
    block_on(pool.close()).unwrap();
}

/// A full metadata area refuses what needs new metadata pages — creating disks and
/// snapshots, allocating segments — with a precise no-space error, and nothing else:
/// the pool keeps committing, what is allocated keeps reading and writing, deleting
/// disks frees pages for new ones, and the pool reopens clean.
#[test]
fn a_full_metadata_area_refuses_new_metadata_and_the_pool_keeps_working() {
    let set = reactors(2);
    let base = malloc("m0", 64);
    let mut opts = PoolOptions::new("p0");
    opts.segment_bytes = 64 << 10;
    // 80 pages: 2 for the space map, 78 for table nodes and the directory.
    opts.metadata_bytes = Some(320 << 10);
    let pool = block_on(Pool::create(set.cores(), 0, vec![base.clone()], None, opts)).unwrap();
    // Thin disks, each with one written segment (a leaf page of its own), committed each
    // time, until the metadata area refuses.
    let mut made: Vec<(String, Arc<dyn Bdev>, u8)> = Vec::new();
    let mut refused = None;
    for i in 0..200u32 {
        let name = format!("d{i}");
        let v = (i % 250) as u8 + 1;
        match block_on(pool.create_disk(&name, 1 << 20, true)) {
            Ok(d) => {
                let d: Arc<dyn Bdev> = d;
                let d2 = d.clone();
                match on(&set, 1, move || async move { write_byte(&d2, 0, v).await }) {
                    Ok(()) => made.push((name, d, v)),
                    Err(st) => {
                        assert_eq!(st, IoStatus::CapacityExceeded, "write to {name}");
                        refused = Some(format!("the first write to {name}"));
                        made.push((name, d, 0));
                    }
                }
            }
            Err(e) => {
                assert!(metadata_full(&e), "creating {name}: {e}");
                refused = Some(format!("creating {name}: {e}"));
            }
        }
        block_on(pool.commit()).unwrap();
        if refused.is_some() {
            break;
        }
    }
    let refused = refused.expect("the metadata area never filled up");
    eprintln!("{} disks made; refused: {refused}", made.len());
    assert!(
        made.len() > 20,
        "refused too early ({refused}) after {}",
        made.len()
    );
    // A snapshot needs a directory record: refused for lack of metadata space, or
    // taken; never a failed pool.
    let snapped =
        match block_on(pool.snapshot(vec![("d0".into(), "s0".into())], Duration::from_secs(1))) {
            Ok(_) => true,
            Err(e) => {
                assert!(metadata_full(&e), "snapshot: {e}");
                false
            }
        };
    // The pool still commits; allocated space reads and overwrites (but for a write
    // to the snapshotted disk, which needs a copy-on-write, and so metadata).
    block_on(pool.commit()).unwrap();
    for (i, (_, d, v)) in made.iter().enumerate() {
        let (d, v) = (d.clone(), *v);
        let cow = i == 0 && snapped;
        on(&set, 0, move || async move {
            assert_eq!(read_byte(&d, 0).await, v);
            if v != 0 {
                let w = v.wrapping_add(100);
                match write_byte(&d, 0, w).await {
                    Ok(()) => assert_eq!(read_byte(&d, 0).await, w),
                    Err(st) => assert!(cow && st == IoStatus::CapacityExceeded, "{st:?}"),
                }
            }
        });
    }
    block_on(pool.commit()).unwrap();
    // Deleting disks frees their pages (after the commits that release them).
    for (name, _, _) in made.drain(..10) {
        block_on(pool.delete_disk(&name)).unwrap();
    }
    block_on(pool.commit()).unwrap();
    block_on(pool.commit()).unwrap();
    let again: Arc<dyn Bdev> = block_on(pool.create_disk("again", 1 << 20, true)).unwrap();
    let a = again.clone();
    on(&set, 1, move || async move {
        write_byte(&a, 3, 0xa5).await.unwrap();
        Channel::get(&a).unwrap().flush().await.unwrap();
    });
    block_on(pool.close()).unwrap();
    drop((made, again));
    // Reopens with everything in place, and checks clean.
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let again: Arc<dyn Bdev> = block_on(pool.disk("again")).unwrap();
    on(&set, 0, move || async move {
        assert_eq!(read_byte(&again, 3).await, 0xa5)
    });
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}

/// Every segment in use is allocated to one disk: the allocated counts of the listing
/// sum to the pool's used segments, as SPDK's lvols' clusters do. After a snapshot, the
/// snapshot holds what the disk had; the disk and a clone of the snapshot hold only
/// what they wrote since, and share the rest.
#[test]
fn listing_allocates_every_used_segment_to_one_disk() {
    let (set, _base, pool, disk) = thin_disk(96 << 20);
    let seg_blocks = (1 << 20) / 4096;
    let d = disk.clone();
    on(&set, 1, move || async move {
        for s in 0..40 {
            write_byte(&d, s * seg_blocks, 1).await.unwrap();
        }
    });
    block_on(pool.snapshot(vec![("vd0".into(), "s1".into())], Duration::from_secs(5))).unwrap();
    let clone: Arc<dyn Bdev> = block_on(pool.clone_disk("s1", "c1")).unwrap();
    let counts = |pool: &Pool| {
        let list = block_on(pool.list()).unwrap();
        let by = |n: &str| {
            let d = list.iter().find(|d| d.name == n).unwrap();
            (d.allocated_segments, d.shared_segments)
        };
        let (free, pending) = block_on(pool.free_space()).unwrap();
        let used = pool.space().0 - free - pending;
        let allocated: u64 = list.iter().map(|d| d.allocated_segments).sum();
        assert_eq!(
            allocated, used,
            "allocated counts sum to the used segments: {list:#?}"
        );
        (by("vd0"), by("s1"), by("c1"))
    };
    assert_eq!(counts(&pool), ((0, 40), (40, 0), (0, 40)));
    // Writes after the snapshot: new segments of their own (over the shared ones).
    let (d, c) = (disk.clone(), clone.clone());
    on(&set, 1, move || async move {
        for s in 0..4 {
            write_byte(&c, s * seg_blocks + 1, 2).await.unwrap();
        }
        for s in 50..52 {
            write_byte(&d, s * seg_blocks, 3).await.unwrap();
        }
    });
    assert_eq!(counts(&pool), ((2, 40), (40, 0), (4, 40)));
    // The snapshot deleted: its segments pass to the oldest disk that still maps them.
    block_on(pool.delete_disk("s1")).unwrap();
    block_on(pool.commit()).unwrap();
    let list = block_on(pool.list()).unwrap();
    let total: u64 = list.iter().map(|d| d.allocated_segments).sum();
    let (free, pending) = block_on(pool.free_space()).unwrap();
    assert_eq!(total, pool.space().0 - free - pending, "{list:#?}");
    let vd0 = list.iter().find(|d| d.name == "vd0").unwrap();
    assert_eq!((vd0.allocated_segments, vd0.shared_segments), (42, 0));
    drop(set);
}

mod beside_view;
mod diff;
mod esnap_lineage;
mod grow;
mod intent_log;
mod maybe_mapped;
mod resize;
mod revert;
mod split_fills;

/// Faults resolved together share their view push and their pass down the table: 32
/// first writes into fresh segments at once go to the controller in one or two
/// requests (`msg::WriteFaults`), push far fewer than 32 views, set their extents in far
/// fewer than 32 passes, and every one of them reads back.
#[test]
fn concurrent_first_writes_share_view_pushes_and_table_passes() {
    let (set, _base, pool, disk) = thin_disk(32 << 20);
    let id = block_on(pool.disk("vd0")).unwrap().disk_id();
    let version = |pool: &Pool| {
        block_on(pool.on_ctl(move |c| async move {
            let st = c.st.borrow();
            Ok((
                st.disks[&id].version,
                st.disks[&id].passes,
                c.write_fault_requests.get(),
            ))
        }))
        .unwrap()
    };
    let (before, passes_before, requests_before) = version(&pool);
    let d = disk.clone();
    on(&set, 1, move || async move {
        let writes: Vec<_> = (0..32u64)
            .map(|s| {
                let d = d.clone();
                crate::reactor::spawn_local(async move {
                    write_byte(&d, s * 256 + 3, s as u8 + 1).await
                })
            })
            .collect();
        for w in writes {
            w.await.expect("a first write into a fresh segment");
        }
    });
    let (after, passes_after, requests_after) = version(&pool);
    let (pushes, passes) = (after - before, passes_after - passes_before);
    let requests = requests_after - requests_before;
    println!(
        "32 first writes: {requests} requests, pushed {pushes} views, set in {passes} table passes"
    );
    assert!(
        requests <= 2,
        "32 first writes went to the controller in {requests} requests"
    );
    assert!(pushes <= 16, "32 first writes pushed {pushes} views");
    assert!(
        passes <= 16,
        "32 first writes were set in {passes} table passes"
    );
    let d = disk.clone();
    on(&set, 1, move || async move {
        for s in 0..32u64 {
            assert_eq!(read_byte(&d, s * 256 + 3).await, s as u8 + 1, "segment {s}");
            assert_eq!(read_byte(&d, s * 256 + 4).await, 0, "segment {s}");
        }
    });
}

/// A bdev that holds a pool is refused to a second one, with a message that names the
/// bdev and the pool it holds (`target.rs` checks it is printed once on exit).
#[test]
fn a_bdev_holding_a_pool_is_refused_with_one_message_naming_both() {
    let set = reactors(1);
    let base = malloc("m0", 64);
    let _pool = new_pool(&set, base.clone());
    let e = block_on(Pool::create(
        set.cores(),
        0,
        vec![base],
        None,
        PoolOptions::new("p1"),
    ))
    .err()
    .expect("a second pool on m0 was created");
    assert!(matches!(e, VdiskError::HoldsPool { .. }), "{e:?}");
    let printed = e.to_string();
    assert!(
        printed.starts_with("bdev `m0` already holds pool `p0` (")
            && printed.ends_with("); delete that pool first"),
        "{printed}"
    );
}

/// A batch of write faults is answered segment by segment: in one request, segments the
/// pool has room for are mapped, the ones past its last free segment fail with Capacity
/// Exceeded, a segment past the disk's end with LBA Out Of Range, one already writable
/// succeeds at once, and a segment asked twice gets one answer twice; the writes that
/// got their segment read back.
#[test]
fn a_batch_of_write_faults_answers_each_segment_on_its_own() {
    let set = reactors(2);
    let base = malloc("m0", 24);
    let mut opts = PoolOptions::new("p0");
    opts.metadata_bytes = Some(1 << 20);
    let pool = block_on(Pool::create(set.cores(), 0, vec![base], None, opts)).unwrap();
    let (_, free) = pool.space();
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 64 << 20, true)).unwrap();
    let id = block_on(pool.disk("vd0")).unwrap().disk_id();
    let d = disk.clone();
    // Every free segment but two mapped; segment 0 is writable already.
    on(&set, 1, move || async move {
        for s in 0..free - 2 {
            write_byte(&d, s * 256, 1).await.unwrap();
        }
    });
    let asked = vec![free + 3, 0, 62, free + 1, 64, free - 1, free + 3, free + 5];
    let answers =
        block_on(pool.on_ctl(move |c| async move { Ok(c.make_writable_many(id, &asked).await) }))
            .unwrap();
    use IoStatus::{CapacityExceeded as Full, LbaOutOfRange as Past, Success as Ok_};
    // In segment order, `free - 1` and `free + 1` take the last two free segments.
    assert_eq!(
        answers,
        vec![Full, Ok_, Full, Ok_, Past, Ok_, Full, Full],
        "answers for segments {:?} with {free} free",
        [free + 3, 0, 62, free + 1, 64, free - 1, free + 3, free + 5]
    );
    let d = disk.clone();
    on(&set, 1, move || async move {
        for (s, v) in [(free - 1, 5u8), (free + 1, 6)] {
            write_byte(&d, s * 256 + 7, v).await.unwrap();
            assert_eq!(read_byte(&d, s * 256 + 7).await, v, "segment {s}");
            assert_eq!(read_byte(&d, s * 256 + 8).await, 0, "segment {s}");
        }
        assert_eq!(
            write_byte(&d, (free + 3) * 256, 7).await,
            Err(IoStatus::CapacityExceeded)
        );
        assert_eq!(read_byte(&d, 0).await, 1);
    });
}
