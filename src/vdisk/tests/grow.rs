//! Growing a pool (`grow.rs`) over files: only the last container's growth is taken,
//! the new segments hold a disk that survives a reopen and the offline check, and a
//! growth past the space map's room is refused with the limit, changing nothing.

use super::*;
use crate::bdev::uring::{UringBdev, UringOptions};
use std::path::Path;

const M: u64 = 1 << 20;

fn file_bdev(name: &str, path: &Path, bytes: u64) -> Arc<dyn Bdev> {
    UringBdev::create(
        name,
        path,
        Some(4096),
        Some(bytes),
        None,
        UringOptions::default(),
    )
    .unwrap()
}

/// Extends the file behind `b` to `bytes` and tells the bdev (what
/// `bdev_uring_rescan` does).
fn grow_file(b: &Arc<dyn Bdev>, path: &Path, bytes: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    let now = b.backing_bytes().expect("a file bdev").unwrap();
    assert_eq!(now, bytes);
    b.props().set_num_blocks(now / b.block_size() as u64);
}

#[test]
fn a_pool_takes_its_last_bdevs_growth_durably_and_refuses_past_its_space_map() {
    let set = reactors(2);
    let dir = tempfile::tempdir().unwrap();
    let (p0, p1) = (dir.path().join("c0.img"), dir.path().join("c1.img"));
    let c0 = file_bdev("c0", &p0, 32 * M);
    let c1 = file_bdev("c1", &p1, 32 * M);
    let pool = block_on(Pool::create(
        set.cores(),
        0,
        vec![c0.clone(), c1.clone()],
        None,
        PoolOptions::new("p0"),
    ))
    .unwrap();
    // Container 0: its label's segment and 16 of metadata; container 1: its label's.
    assert_eq!(pool.space(), (46, 46));

    // The first container's growth cannot be used (segment numbers follow the
    // containers): nothing changes.
    grow_file(&c0, &p0, 48 * M);
    let g = block_on(pool.grow()).unwrap();
    assert_eq!((g.old_segments, g.new_segments), (64, 64));
    assert_eq!(pool.space(), (46, 46));

    // The last one's is the pool's once the grow answers.
    grow_file(&c1, &p1, 64 * M);
    let g = block_on(pool.grow()).unwrap();
    assert_eq!(
        (g.old_segments, g.new_segments, g.data_segments),
        (64, 96, 78)
    );
    assert_eq!(pool.space(), (78, 78));
    // A disk that needs the new space, written at its end.
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 70 * M, false)).unwrap();
    assert_eq!(pool.space(), (78, 8));
    let d = disk.clone();
    let last = disk.num_blocks() - 1;
    on(&set, 1, move || async move {
        write_byte(&d, 0, 0x5a).await.unwrap();
        write_byte(&d, last, 0xa5).await.unwrap();
        Channel::get(&d).unwrap().flush().await.unwrap();
    });

    // Past what the space map laid out at creation counts (1008 segments a page, one
    // page here): refused with the limit; nothing changes.
    grow_file(&c1, &p1, 2048 * M);
    match block_on(pool.grow()) {
        Err(VdiskError::GrowLimit {
            want_segments,
            max_segments,
            ..
        }) => assert_eq!((want_segments, max_segments), (32 + 2048, 1008)),
        other => panic!("expected the grow limit, got {other:?}"),
    }
    assert_eq!(pool.space(), (78, 8));
    block_on(pool.close()).unwrap();
    drop((disk, pool));

    // Reopened from new bdevs on the same files: the grown size and the data.
    let c0 = file_bdev("c0", &p0, 48 * M);
    let c1 = file_bdev("c1", &p1, 2048 * M);
    let pool = block_on(Pool::open(set.cores(), 0, vec![c1.clone(), c0.clone()])).unwrap();
    assert_eq!(pool.space(), (78, 8));
    let d: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    on(&set, 1, move || async move {
        assert_eq!(read_byte(&d, 0).await, 0x5a);
        assert_eq!(read_byte(&d, last).await, 0xa5);
        assert_eq!(read_byte(&d, last - 1).await, 0);
    });
    block_on(pool.close()).unwrap();
    let report = on(
        &set,
        0,
        move || async move { check::check(vec![c0, c1]).await },
    );
    assert!(report.clean(), "{:#?}", report.errors);
}
