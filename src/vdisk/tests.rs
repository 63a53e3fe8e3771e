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
    let report = on(
        &set,
        0,
        move || async move { check::check(vec![base]).await },
    );
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
    let report = on(
        &set,
        0,
        move || async move { check::check(vec![base]).await },
    );
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
    let report = on(
        &set,
        0,
        move || async move { check::check(vec![base]).await },
    );
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
            .seg)
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
            .await;
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
            .await;
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

/// Waits for `fut` on a helper thread for at most `limit`: a hang fails the test instead
/// of holding it.
fn wait<T: Send + 'static>(
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(block_on(fut));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// Reads `n` blocks from `from` of `disk` on `core`; each must hold `v` in every byte.
fn expect_blocks(set: &ReactorSet, core: usize, disk: &Arc<dyn Bdev>, from: u64, n: u64, v: u8) {
    let d = disk.clone();
    let got = on(set, core, move || async move {
        Channel::get(&d).unwrap().read(from, n).await.unwrap().to_vec()
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
    let pool = block_on(Pool::open(set.cores(), 0, vec![cache.clone() as Arc<dyn Bdev>])).unwrap();
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
