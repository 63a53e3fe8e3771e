//! A split that copies what lies below into the disk's own writable segment, and then
//! cannot record the result (the metadata area has no room), takes the copied granules
//! back: the disk's later writes into them must still reach the metadata (simulator
//! seed 7456). Before, the fill kept them as held, in memory only; a write into such a
//! granule found it held already and marked nothing, so after a crash the granule read
//! the external snapshot again.

use super::*;

#[test]
fn a_split_that_cannot_record_its_copy_leaves_later_writes_durable() {
    let (set, base, pool, _vd0) = thin_disk(16 << 20);
    let g = golden(&set);
    let e: Arc<dyn Bdev> = block_on(pool.clone_bdev(g.clone(), "e")).unwrap();
    // Block 0 written: segment 0 of `e` has a writable segment of its own, holding block
    // 0 and nothing else (the rest reads the golden image).
    let e2 = e.clone();
    on(&set, 1, move || async move {
        write_byte(&e2, 0, 1).await.unwrap();
        Channel::get(&e2).unwrap().flush().await.unwrap();
        assert_eq!(read_byte(&e2, 2).await, 0xee);
    });
    // The split, with no metadata room for its changes: it copies the golden image into
    // that segment, then fails to record it and stops.
    let taken = wait(
        "a split without metadata room",
        HANG,
        pool.on_ctl(move |c| async move {
            let budget = &c.shared.meta_budget;
            let taken = budget.available().max(0);
            budget.force_take(taken as u64);
            c.start_job("e", false).await?;
            let id = c.id_of("e")?;
            while c
                .st
                .borrow()
                .disks
                .get(&id)
                .is_some_and(|d| d.job_cancel.is_some())
            {
                crate::reactor::sleep(Duration::from_millis(1)).await;
            }
            budget.give(taken);
            Ok(taken)
        }),
    )
    .unwrap();
    assert!(taken > 0);
    // A write into a granule the split copied, then flushed: durable.
    let e2 = e.clone();
    on(&set, 1, move || async move {
        assert_eq!(read_byte(&e2, 2).await, 0xee);
        write_byte(&e2, 2, 7).await.unwrap();
        Channel::get(&e2).unwrap().flush().await.unwrap();
    });
    block_on(pool.crash_stop()).unwrap();
    drop(e);
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    block_on(pool.attach_external(g)).unwrap();
    let e: Arc<dyn Bdev> = block_on(pool.disk("e")).unwrap();
    on(&set, 0, move || async move {
        assert_eq!(read_byte(&e, 0).await, 1);
        assert_eq!(
            read_byte(&e, 2).await,
            7,
            "a flushed write into a granule the failed split had copied"
        );
        assert_eq!(read_byte(&e, 3).await, 0xee);
    });
    block_on(pool.close()).unwrap();
}
