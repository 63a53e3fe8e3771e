//! `set_parent_bdev` on a snapshot (or a read-only lvol) whose lineage holds a clone of
//! an lvol that was made read-only to be cloned and writable again (simulator seed
//! 2737), also through a deleted clone in between: the clone keeps its own
//! point-in-time contents, never what the lvol wrote after the clone. (The operation
//! is refused there; before, the clone read the lvol's later writes.)
//!
//! And a disk of such a lineage that cut its parent's data off (a shrink, grown back:
//! simulator seeds 54517 and 55168) keeps reading there what it read below every layer,
//! never the parent's data the cut hid.

use super::*;

fn write(set: &ReactorSet, d: &Arc<dyn Bdev>, b: u64, v: u8) {
    let d = d.clone();
    on(set, 1, move || async move {
        write_byte(&d, b, v).await.unwrap()
    });
}

fn read(set: &ReactorSet, d: &Arc<dyn Bdev>, b: u64) -> u8 {
    let d = d.clone();
    on(set, 0, move || async move { read_byte(&d, b).await })
}

/// Gives `name` the external parent `golden`: done, or refused as busy (nothing
/// switched); anything else fails the test.
fn external_parent_or_refused(pool: &Pool, name: &str, golden: &Arc<dyn Bdev>) {
    let r = wait(
        &format!("set_parent_bdev of {name}"),
        HANG,
        pool.set_external_parent(name, golden.clone()),
    );
    assert!(matches!(r, Ok(()) | Err(VdiskError::Busy(_))), "{r:?}");
}

/// vd0 (16 MiB, thin), its clone and a golden image.
struct Family {
    set: ReactorSet,
    pool: Pool,
    disk: Arc<dyn Bdev>,
    clone: Arc<dyn Bdev>,
    golden: Arc<dyn Bdev>,
}

/// vd0 holding 1 at block 5, made read-only and cloned to `clone`.
fn cloned_while_read_only(clone: &str) -> Family {
    let (set, _base, pool, disk) = thin_disk(16 << 20);
    let golden = golden(&set);
    write(&set, &disk, 5, 1);
    block_on(pool.set_read_only("vd0", true)).unwrap();
    let clone: Arc<dyn Bdev> = block_on(pool.clone_disk("vd0", clone)).unwrap();
    Family {
        set,
        pool,
        disk,
        clone,
        golden,
    }
}

/// vd0 written (1), made read-only, cloned (c3), snapshotted (s4), made writable and
/// written again (2); then s4 is given an external parent: refused, or c3 still reads 1
/// (and writes to either stay its own).
#[test]
fn set_parent_bdev_on_a_snapshot_keeps_a_clone_of_an_lvol_made_writable_again() {
    let Family {
        set,
        pool,
        disk,
        clone: c3,
        golden,
    } = cloned_while_read_only("c3");
    block_on(pool.snapshot(vec![("vd0".into(), "s4".into())], HANG)).unwrap();
    block_on(pool.set_read_only("vd0", false)).unwrap();
    write(&set, &disk, 5, 2);
    assert_eq!(read(&set, &c3, 5), 1);
    external_parent_or_refused(&pool, "s4", &golden);
    assert_eq!(read(&set, &disk, 5), 2, "vd0 keeps its own write");
    assert_eq!(
        read(&set, &c3, 5),
        1,
        "c3 was cloned when vd0 held 1: vd0's later write is not c3's"
    );
    write(&set, &c3, 5, 3);
    write(&set, &disk, 5, 4);
    assert_eq!(read(&set, &c3, 5), 3);
    assert_eq!(read(&set, &disk, 5), 4);
}

/// The same with the lvol made read-only again after its write, and itself given the
/// external parent.
#[test]
fn set_parent_bdev_on_an_lvol_written_since_it_was_cloned_keeps_the_clone() {
    let Family {
        set,
        pool,
        disk,
        clone: c3,
        golden,
    } = cloned_while_read_only("c3");
    block_on(pool.set_read_only("vd0", false)).unwrap();
    write(&set, &disk, 5, 2);
    block_on(pool.set_read_only("vd0", true)).unwrap();
    external_parent_or_refused(&pool, "vd0", &golden);
    assert_eq!(read(&set, &disk, 5), 2);
    assert_eq!(
        read(&set, &c3, 5),
        1,
        "vd0's write after the clone is not c3's"
    );
}

/// An lvol cloned while read-only and not written since: its snapshot may take an
/// external parent, and the clone reads what it read, the golden image below.
#[test]
fn set_parent_bdev_on_a_snapshot_of_an_lvol_not_written_since_its_clone() {
    let Family {
        set,
        pool,
        disk,
        clone: c3,
        golden,
    } = cloned_while_read_only("c3");
    block_on(pool.snapshot(vec![("vd0".into(), "s4".into())], HANG)).unwrap();
    block_on(pool.set_read_only("vd0", false)).unwrap();
    wait(
        "set_parent_bdev of s4",
        HANG,
        pool.set_external_parent("s4", golden.clone()),
    )
    .unwrap();
    assert_eq!(read(&set, &c3, 5), 1);
    assert_eq!(read(&set, &c3, 2 * 256), 0xee, "nothing holds segment 2");
    // Both still copy on write.
    write(&set, &disk, 5, 2);
    assert_eq!(read(&set, &c3, 5), 1);
    write(&set, &c3, 5, 3);
    assert_eq!(read(&set, &disk, 5), 2);
    assert_eq!(read(&set, &c3, 5), 3);
}

/// A clone of a clone of an lvol, the middle clone deleted (the clone's parent is then
/// the lvol): the lvol's write between the first clone and the second is not the
/// clone's either, when the lvol is given an external parent.
#[test]
fn set_parent_bdev_on_an_lvol_whose_clone_of_a_deleted_clone_reads_through_it() {
    let Family {
        set,
        pool,
        disk,
        golden,
        ..
    } = cloned_while_read_only("m1");
    block_on(pool.set_read_only("vd0", false)).unwrap();
    write(&set, &disk, 5, 2);
    block_on(pool.set_read_only("m1", true)).unwrap();
    let c2: Arc<dyn Bdev> = block_on(pool.clone_disk("m1", "c2")).unwrap();
    block_on(pool.delete_disk("m1")).unwrap();
    assert_eq!(read(&set, &c2, 5), 1);
    block_on(pool.set_read_only("vd0", true)).unwrap();
    external_parent_or_refused(&pool, "vd0", &golden);
    assert_eq!(read(&set, &disk, 5), 2);
    assert_eq!(
        read(&set, &c2, 5),
        1,
        "vd0's write after m1 was cloned is not c2's"
    );
}

/// vd0 (thin, 16 MiB) reads the golden image (0xee) below its layers, holds 1 in block
/// 400 of segment 1 and block 517 of segment 2, and is snapshotted (s1); then it shrinks
/// to 356 blocks (the head of segment 1 copied into a segment of its own, segment 2
/// dropped) and grows back: both blocks read the golden image, not s1's 1. Also
/// returned: another image (0xdd), and the pool's base bdev.
fn cut_off_its_snapshot() -> (Family, Arc<dyn Bdev>, Arc<dyn Bdev>) {
    let (set, base, pool, disk) = thin_disk(16 << 20);
    let golden = golden(&set);
    let other: Arc<dyn Bdev> = MallocBdev::create("other", 16 * 256, 4096, None).unwrap();
    let o = other.clone();
    on(&set, 0, move || async move {
        let ch = Channel::get(&o).unwrap();
        ch.write(0, pattern(0xdd, 16 << 20)).await.unwrap();
    });
    wait(
        "set_parent_bdev of vd0",
        HANG,
        pool.set_external_parent("vd0", golden.clone()),
    )
    .unwrap();
    write(&set, &disk, 400, 1);
    write(&set, &disk, 517, 1);
    block_on(pool.snapshot(vec![("vd0".into(), "s1".into())], HANG)).unwrap();
    let bs = pool.block_size() as u64;
    wait("shrinking vd0", HANG, pool.resize_disk("vd0", 356 * bs)).unwrap();
    wait("growing vd0", HANG, pool.resize_disk("vd0", 16 << 20)).unwrap();
    for b in [400, 517] {
        assert_eq!(read(&set, &disk, b), 0xee, "block {b} past the shrink");
    }
    let clone = disk.clone();
    let family = Family {
        set,
        pool,
        disk,
        clone,
        golden,
    };
    (family, other, base)
}

/// [`cut_off_its_snapshot`], then s1 is given the other image as its external parent:
/// vd0 still reads in blocks 400 and 517 what it read, never s1's data; where neither
/// holds anything, it reads the new parent.
#[test]
fn set_parent_bdev_on_a_snapshot_keeps_what_a_shrink_cut_off_its_clone() {
    let (
        Family {
            set, pool, disk, ..
        },
        other,
        _,
    ) = cut_off_its_snapshot();
    wait(
        "set_parent_bdev of s1",
        HANG,
        pool.set_external_parent("s1", other.clone()),
    )
    .unwrap();
    for b in [400, 517] {
        assert_eq!(
            read(&set, &disk, b),
            0xee,
            "block {b} keeps what it read: s1's 1 there was cut off"
        );
    }
    assert_eq!(read(&set, &disk, 5), 0xdd, "nothing holds block 5");
    assert_eq!(read(&set, &disk, 10 * 256), 0xdd, "nor segment 10");
    write(&set, &disk, 400, 3);
    assert_eq!(read(&set, &disk, 400), 3);
}

/// The same with the golden image missing (the pool reopened without it): what vd0
/// reads there cannot be kept, so nothing changes, and the error says why; with the
/// image back, it goes through.
#[test]
fn set_parent_bdev_on_a_snapshot_says_so_when_the_cut_reads_a_missing_bdev() {
    let (
        Family {
            set,
            pool,
            disk,
            golden,
            ..
        },
        other,
        base,
    ) = cut_off_its_snapshot();
    block_on(pool.close()).unwrap();
    drop((disk, pool));
    let pool = block_on(Pool::open(set.cores(), 0, vec![base])).unwrap();
    let r = wait(
        "set_parent_bdev of s1",
        HANG,
        pool.set_external_parent("s1", other.clone()),
    );
    match r {
        Err(VdiskError::Io { what, .. }) => assert!(
            what.contains("segment 1 of `vd0`") && what.contains("is missing"),
            "{what}"
        ),
        other => panic!("expected an I/O error naming the missing bdev, got {other:?}"),
    }
    block_on(pool.attach_external(golden)).unwrap();
    let disk: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    assert_eq!(read(&set, &disk, 400), 0xee, "nothing changed");
    wait(
        "set_parent_bdev of s1",
        HANG,
        pool.set_external_parent("s1", other.clone()),
    )
    .unwrap();
    assert_eq!(read(&set, &disk, 400), 0xee);
    assert_eq!(read(&set, &disk, 5), 0xdd);
}
