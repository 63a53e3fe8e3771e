//! The bitmap of segments that may be mapped (`maybe_mapped.rs`): a write where it knows
//! no extent faults without looking at the view, and the fault's answer lets the write
//! through the view; the bitmap is set at open from the tables loaded.

use super::*;

/// Blocks per segment (4 KiB blocks, 1 MiB segments).
const SEG: u64 = 256;

/// Write-fault requests the controller of `pool` got so far.
fn fault_requests(pool: &Pool) -> u64 {
    block_on(pool.on_ctl(|c| async move { Ok(c.write_fault_requests.get()) })).unwrap()
}

/// A write into a mapped segment whose bit is clear (extents the bitmap was not told
/// of) faults once: the controller answers that the segment is writable, the write
/// goes to the segment the disk has (no new one), and the next writes there do not
/// fault.
#[test]
fn a_write_the_bitmap_sends_to_the_controller_lands_in_the_mapped_segment_once() {
    let (set, _base, pool, disk) = thin_disk(32 << 20);
    let vdisk = block_on(pool.disk("vd0")).unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_byte(&d, 3, 0xaa).await.unwrap();
        write_byte(&d, SEG + 3, 0xab).await.unwrap();
    });
    let used = |pool: &Pool| {
        let (free, pending) = block_on(pool.free_space()).unwrap();
        pool.space().0 - free - pending
    };
    let (requests, segments) = (fault_requests(&pool), used(&pool));
    assert_eq!(segments, 2);
    vdisk.maybe_mapped.forget_all();
    let d = disk.clone();
    let w = set.cores().spawn_on(1, move || async move {
        write_byte(&d, 5, 0xbb).await.unwrap();
        write_byte(&d, 6, 0xbc).await.unwrap();
        write_byte(&d, SEG + 5, 0xbd).await.unwrap();
    });
    wait("writes into mapped segments with their bits clear", HANG, w).unwrap();
    assert_eq!(
        fault_requests(&pool) - requests,
        2,
        "one fault for each segment whose bit was clear, none for the second write"
    );
    assert_eq!(used(&pool), segments, "no segment allocated");
    let d = disk.clone();
    on(&set, 0, move || async move {
        for (b, v) in [
            (3, 0xaa),
            (5, 0xbb),
            (6, 0xbc),
            (SEG + 3, 0xab),
            (SEG + 5, 0xbd),
        ] {
            assert_eq!(read_byte(&d, b).await, v, "block {b}");
        }
        assert_eq!(read_byte(&d, 4).await, 0);
    });
}

/// After a reopen, overwrites of what was written before fault nowhere: the bitmap is
/// set from the tables loaded. A first write into a fresh segment still faults once.
#[test]
fn overwrites_after_a_reopen_make_no_write_faults() {
    let (set, base, pool, disk) = thin_disk(32 << 20);
    let d = disk.clone();
    on(&set, 1, move || async move {
        for s in 0..8u64 {
            write_byte(&d, s * SEG + 2, s as u8 + 1).await.unwrap();
        }
    });
    block_on(pool.close()).unwrap();
    drop(disk);
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let disk: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    let before = fault_requests(&pool);
    let d = disk.clone();
    on(&set, 1, move || async move {
        for s in 0..8u64 {
            write_byte(&d, s * SEG + 2, s as u8 + 0x10).await.unwrap();
        }
    });
    assert_eq!(
        fault_requests(&pool) - before,
        0,
        "overwrites after the reopen faulted"
    );
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_byte(&d, 20 * SEG, 0x77).await.unwrap();
    });
    assert_eq!(
        fault_requests(&pool) - before,
        1,
        "a first write faults once"
    );
    let d = disk.clone();
    on(&set, 0, move || async move {
        for s in 0..8u64 {
            assert_eq!(read_byte(&d, s * SEG + 2).await, s as u8 + 0x10);
        }
        assert_eq!(read_byte(&d, 20 * SEG).await, 0x77);
    });
    block_on(pool.close()).unwrap();
}

/// A thick disk's first writes fault nowhere: its table, mapped at creation, is in the
/// bitmap from the start.
#[test]
fn a_thick_disks_first_writes_make_no_write_faults() {
    let set = reactors(2);
    let base = malloc("m0", 64);
    let pool = new_pool(&set, base);
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("thick", 8 << 20, false)).unwrap();
    let before = fault_requests(&pool);
    let d = disk.clone();
    on(&set, 1, move || async move {
        for s in 0..8u64 {
            write_byte(&d, s * SEG + 1, s as u8 + 1).await.unwrap();
            assert_eq!(read_byte(&d, s * SEG + 1).await, s as u8 + 1);
        }
    });
    assert_eq!(
        fault_requests(&pool) - before,
        0,
        "first writes into a thick disk faulted"
    );
}
