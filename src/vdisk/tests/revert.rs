//! Reverting a disk to a snapshot in place (`revert.rs`): contents, identity, space
//! accounting, durability, refusals, and I/O held across the switch.

use super::*;

/// Blocks per segment (4 KiB blocks, 1 MiB segments).
const SEG: u64 = 256;

/// Segments in use (allocated, not free and not waiting for a commit to be freed) once
/// what was freed has been released: a commit, then its drain barrier.
fn used_segments(pool: &Pool) -> u64 {
    wait("a commit", HANG, pool.commit()).unwrap();
    let (total, _) = pool.space();
    let mut last = (0, 0);
    for _ in 0..200 {
        last = block_on(pool.free_space()).unwrap();
        if last.1 == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(last.1, 0, "freed segments still waiting after the commit");
    total - last.0
}

fn revert(pool: &Pool, disk: &str, snap: &str) -> Result<(), VdiskError> {
    wait(
        &format!("revert of {disk} to {snap}"),
        HANG,
        pool.revert_disk(disk, snap),
    )
}

/// Reads block `b` of `d` on both cores: both agents must have the same view.
fn byte_on_both(set: &ReactorSet, d: &Arc<dyn Bdev>, b: u64) -> u8 {
    let (d0, d1) = (d.clone(), d.clone());
    let v0 = on(set, 0, move || async move { read_byte(&d0, b).await });
    let v1 = on(set, 1, move || async move { read_byte(&d1, b).await });
    assert_eq!(v0, v1, "cores 0 and 1 read block {b} differently");
    v0
}

fn write(set: &ReactorSet, d: &Arc<dyn Bdev>, b: u64, v: u8) {
    let d = d.clone();
    on(set, 1, move || async move {
        write_byte(&d, b, v).await.unwrap()
    });
}

/// Revert, write, snapshot again, revert to the older snapshot, delete the newer one:
/// after each step the disk reads as the model says on both cores, keeps its bdev
/// (UUID, alias, size), and the pool uses exactly the segments someone references —
/// what only the disk held is freed by the revert, what only the deleted snapshot held
/// by the delete. A crash right after a revert answered keeps it.
#[test]
fn revert_writes_snapshots_reverts_to_an_older_one_and_frees_what_only_the_disk_held() {
    let (set, base, pool, disk) = thin_disk(8 << 20);
    let uuid = disk.uuid();
    // s1: block 0 = 1, block SEG = 1 (two segments).
    write(&set, &disk, 0, 1);
    write(&set, &disk, SEG, 1);
    block_on(pool.snapshot(vec![("vd0".into(), "s1".into())], HANG)).unwrap();
    assert_eq!(used_segments(&pool), 2);
    // The disk's own: a copy-on-write layer over segment 0, and a fresh segment 2.
    write(&set, &disk, 0, 2);
    write(&set, &disk, 2 * SEG, 2);
    assert_eq!(used_segments(&pool), 4);

    revert(&pool, "vd0", "s1").unwrap();
    assert_eq!(byte_on_both(&set, &disk, 0), 1);
    assert_eq!(byte_on_both(&set, &disk, SEG), 1);
    assert_eq!(byte_on_both(&set, &disk, 2 * SEG), 0);
    assert_eq!(
        used_segments(&pool),
        2,
        "the disk's own two segments are freed"
    );
    assert_eq!(disk.uuid(), uuid);
    assert_eq!(disk.aliases(), vec!["p0/vd0".to_string()]);
    assert_eq!(disk.num_blocks(), 8 * SEG);
    let list = block_on(pool.list()).unwrap();
    let vd0 = list.iter().find(|d| d.name == "vd0").unwrap();
    assert_eq!((vd0.uuid, vd0.parent.as_deref()), (uuid, Some("s1")));
    assert!(!vd0.read_only);

    // Writes after the revert copy on write: the snapshot keeps its contents.
    write(&set, &disk, SEG, 3);
    block_on(pool.snapshot(vec![("vd0".into(), "s2".into())], HANG)).unwrap();
    write(&set, &disk, 0, 4);
    assert_eq!(
        used_segments(&pool),
        4,
        "s1's two, s2's block SEG, vd0's block 0"
    );
    let s1: Arc<dyn Bdev> = block_on(pool.disk("s1")).unwrap();
    assert_eq!(byte_on_both(&set, &s1, SEG), 1);

    // Back to the older snapshot: s2 stays, with its own segment.
    revert(&pool, "vd0", "s1").unwrap();
    assert_eq!(byte_on_both(&set, &disk, 0), 1);
    assert_eq!(byte_on_both(&set, &disk, SEG), 1);
    assert_eq!(used_segments(&pool), 3, "vd0's block 0 freed, s2's kept");
    // Forward again to s2 (a snapshot of the same family), then back to s1.
    revert(&pool, "vd0", "s2").unwrap();
    assert_eq!(byte_on_both(&set, &disk, SEG), 3);
    revert(&pool, "vd0", "s1").unwrap();
    assert_eq!(byte_on_both(&set, &disk, SEG), 1);
    // Deleting s2 frees the one segment only it held.
    block_on(pool.delete_disk("s2")).unwrap();
    assert_eq!(used_segments(&pool), 2);

    // A crash right after a revert answered: the revert is there.
    write(&set, &disk, 3 * SEG, 5);
    let d = disk.clone();
    on(&set, 1, move || async move {
        Channel::get(&d).unwrap().flush().await.unwrap()
    });
    revert(&pool, "vd0", "s1").unwrap();
    block_on(pool.crash_stop()).unwrap();
    drop((disk, s1));
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let disk: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    assert_eq!(disk.uuid(), uuid);
    assert_eq!(byte_on_both(&set, &disk, 0), 1);
    assert_eq!(byte_on_both(&set, &disk, 3 * SEG), 0);
    assert_eq!(used_segments(&pool), 2);
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}

/// The disk takes the snapshot's size; a smaller snapshot hides what the disk had
/// beyond it, and a grow afterwards reads zeros there.
#[test]
fn revert_takes_the_snapshots_size() {
    let (set, _base, pool, disk) = thin_disk(4 << 20);
    write(&set, &disk, 5, 1);
    block_on(pool.snapshot(vec![("vd0".into(), "s1".into())], HANG)).unwrap();
    wait("grow", HANG, pool.resize_disk("vd0", 8 << 20)).unwrap();
    write(&set, &disk, 6 * SEG, 2);
    assert_eq!(disk.num_blocks(), 8 * SEG);
    revert(&pool, "vd0", "s1").unwrap();
    assert_eq!(disk.num_blocks(), 4 * SEG);
    let d = disk.clone();
    let past = on(
        &set,
        1,
        move || async move { write_byte(&d, 6 * SEG, 3).await },
    );
    assert_eq!(past, Err(IoStatus::LbaOutOfRange));
    wait("grow", HANG, pool.resize_disk("vd0", 8 << 20)).unwrap();
    assert_eq!(byte_on_both(&set, &disk, 6 * SEG), 0);
    assert_eq!(byte_on_both(&set, &disk, 5), 1);
    block_on(pool.close()).unwrap();
}

/// What a revert refuses, each naming the field or the reason; nothing changes.
#[test]
fn revert_refuses_what_is_no_snapshot_of_the_family_and_what_is_in_the_way() {
    let (set, _base, pool, disk) = thin_disk(4 << 20);
    write(&set, &disk, 0, 1);
    block_on(pool.create_disk("vd1", 4 << 20, true)).unwrap();
    block_on(pool.snapshot(vec![("vd0".into(), "s1".into())], HANG)).unwrap();
    block_on(pool.snapshot(vec![("vd1".into(), "t1".into())], HANG)).unwrap();
    write(&set, &disk, 0, 2);
    let field = |e: VdiskError| match e {
        VdiskError::InvalidParam { field, reason } => (field, reason),
        e => panic!("expected a parameter error, got {e}"),
    };
    let (f, why) = field(revert(&pool, "vd0", "t1").unwrap_err());
    assert_eq!(f, "snapshot");
    assert!(why.contains("family"), "{why}");
    let (f, why) = field(revert(&pool, "vd0", "vd1").unwrap_err());
    assert_eq!(f, "snapshot");
    assert!(why.contains("not a snapshot"), "{why}");
    let (f, _) = field(revert(&pool, "s1", "s1").unwrap_err());
    assert_eq!(f, "name");
    assert!(matches!(
        revert(&pool, "vd0", "nope").unwrap_err(),
        VdiskError::NotFound(n) if n == "nope"
    ));
    assert!(matches!(
        revert(&pool, "nope", "s1").unwrap_err(),
        VdiskError::NotFound(n) if n == "nope"
    ));
    // Quiesced by the operator: busy until activated.
    let q = block_on(pool.quiesce(vec!["vd0".into()], HANG)).unwrap();
    let e = revert(&pool, "vd0", "s1").unwrap_err();
    assert!(matches!(e, VdiskError::Busy(_)), "{e}");
    block_on(pool.activate(q)).unwrap();
    // A clone made of the disk (read-only) names it as its parent: busy.
    block_on(pool.set_read_only("vd0", true)).unwrap();
    block_on(pool.clone_disk("vd0", "c0")).unwrap();
    let e = revert(&pool, "vd0", "s1").unwrap_err();
    assert!(
        matches!(e, VdiskError::Busy(ref m) if m.contains("c0")),
        "{e}"
    );
    assert_eq!(byte_on_both(&set, &disk, 0), 2, "refusals changed nothing");
    block_on(pool.delete_disk("c0")).unwrap();
    // Read-only disks revert and stay read-only.
    revert(&pool, "vd0", "s1").unwrap();
    assert_eq!(byte_on_both(&set, &disk, 0), 1);
    let list = block_on(pool.list()).unwrap();
    assert!(list.iter().find(|d| d.name == "vd0").unwrap().read_only);
    block_on(pool.close()).unwrap();
}

/// I/O is held across the switch and resumes on the new table: writes running on both
/// cores throughout many reverts all complete without an error, and between reverts
/// (no write in flight) the disk reads as the snapshot.
#[test]
fn io_running_across_reverts_completes_and_then_sees_the_snapshot() {
    let (set, _base, pool, disk) = thin_disk(8 << 20);
    for b in 0..8 {
        write(&set, &disk, b * SEG + 1, 0x10);
    }
    block_on(pool.snapshot(vec![("vd0".into(), "s1".into())], HANG)).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|core| {
            let (d, stop) = (disk.clone(), stop.clone());
            set.cores().spawn_on(core, move || async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let b = (n * 37 + core as u64 * 11) % (8 * SEG);
                    write_byte(&d, b, 0x20 + core as u8).await?;
                    read_byte(&d, b).await;
                    n += 1;
                }
                Ok::<u64, IoStatus>(n)
            })
        })
        .collect();
    for _ in 0..20 {
        revert(&pool, "vd0", "s1").unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let n = wait("a writer", HANG, w).unwrap().expect("no write failed");
        assert!(n > 0);
    }
    revert(&pool, "vd0", "s1").unwrap();
    for b in 0..8 {
        assert_eq!(byte_on_both(&set, &disk, b * SEG + 1), 0x10);
        assert_eq!(byte_on_both(&set, &disk, b * SEG + 2), 0);
    }
    block_on(pool.close()).unwrap();
}

/// A write that does not complete (a stuck base bdev) holds the revert's drain: past
/// the time limit the revert fails naming the disk, the core and the time, changes
/// nothing and leaves the disk serving I/O; once the write completes, the revert works.
#[test]
fn a_revert_during_a_stuck_write_times_out_and_changes_nothing() {
    let (set, slow, pool, disk) = slow_thin_disk(4096);
    write(&set, &disk, 0, 0x11);
    block_on(pool.snapshot(vec![("vd0".into(), "s1".into())], HANG)).unwrap();
    write(&set, &disk, 5, 0x33);
    wait("set limits", HANG, pool.set_time_limits(short_limits())).unwrap();
    let stuck = stuck_write_on_core_1(&set, &slow, &disk, Duration::from_secs(3));
    let t0 = std::time::Instant::now();
    let e = revert(&pool, "vd0", "s1").expect_err("the revert waits for the stuck write");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(matches!(e, VdiskError::DrainTimeout(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("revert of `vd0` to `s1`") && msg.contains("core 1") && msg.contains("300 ms"),
        "{msg}"
    );
    // Nothing changed, and the disk serves I/O on the other core at once.
    let d = disk.clone();
    let b = wait(
        "a read after the failed revert",
        HANG,
        set.cores()
            .spawn_on(0, move || async move { read_byte(&d, 5).await }),
    )
    .unwrap();
    assert_eq!(b, 0x33, "the failed revert changed the disk");
    let list = block_on(pool.list()).unwrap();
    assert_eq!(
        list.iter()
            .find(|d| d.name == "vd0")
            .unwrap()
            .parent
            .as_deref(),
        Some("s1")
    );
    wait("the stuck write", HANG, stuck).unwrap().unwrap();
    revert(&pool, "vd0", "s1").unwrap();
    assert_eq!(byte_on_both(&set, &disk, 5), 0);
    assert_eq!(
        byte_on_both(&set, &disk, 1),
        0,
        "the stuck write came before the revert"
    );
    assert_eq!(byte_on_both(&set, &disk, 0), 0x11);
    block_on(pool.close()).unwrap();
}
