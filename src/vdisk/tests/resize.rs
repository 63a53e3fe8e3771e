//! Resizing: shrinks that cut a segment (snapshotted, cloned, fully allocated, racing
//! writes, failing writes, crashes) and the sizes create and resize accept.
//!
//! Every wait here has a time limit ([`within`]): a deadlock fails the test instead of
//! hanging the run.

use super::*;
use crate::bdev::error::{FailRule, Trigger};
use std::future::Future;
use std::time::Instant;

/// Blocks per segment of the rigs below (4 KiB blocks, 1 MiB segments; a granule is
/// one block).
const SEG: u64 = 256;
/// How long any one step may take.
const LIMIT: Duration = Duration::from_secs(20);

/// Waits for `fut` on this (non-reactor) thread for at most [`LIMIT`]: a deadlock fails
/// the test, naming `what`, instead of hanging it.
fn within<F: Future>(what: &str, fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let deadline = Instant::now() + LIMIT;
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        let now = Instant::now();
        assert!(now < deadline, "{what}: still running after {LIMIT:?}");
        std::thread::park_timeout((deadline - now).min(Duration::from_millis(20)));
    }
}

/// Runs `f` on core `core`, for at most [`LIMIT`].
fn on_core<T: Send + 'static, F: Future<Output = T> + 'static>(
    set: &ReactorSet,
    core: usize,
    what: &str,
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    within(what, set.cores().spawn_on(core, f)).unwrap()
}

fn resize(pool: &Pool, name: &str, blocks: u64) -> Result<(), VdiskError> {
    let bs = pool.block_size() as u64;
    within(
        &format!("resizing `{name}` to {blocks} blocks"),
        pool.resize_disk(name, blocks * bs),
    )
}

fn disk_of(pool: &Pool, name: &str) -> Arc<dyn Bdev> {
    within("looking a disk up", pool.disk(name)).unwrap()
}

/// The value of each block of `[from, from + n)` (every block written here is uniform).
async fn values(d: &Arc<dyn Bdev>, from: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for b in from..from + n {
        out.push(read_byte(d, b).await);
    }
    out
}

/// Writes segment `vseg` of `d` whole with `v`.
async fn fill_segment(d: &Arc<dyn Bdev>, vseg: u64, v: u8) {
    let ch = Channel::get(d).unwrap();
    ch.write(vseg * SEG, pattern(v, (SEG * 4096) as usize))
        .await
        .unwrap();
}

/// Asserts that blocks `[SEG, SEG + head)` of `name` hold `v` and the rest of segment 1
/// reads zeros.
fn assert_head_and_zero_tail(set: &ReactorSet, pool: &Pool, name: &str, head: u64, v: u8) {
    let d = disk_of(pool, name);
    let got = on_core(set, 1, "reading segment 1", move || async move {
        values(&d, SEG, SEG).await
    });
    let want: Vec<u8> = (0..SEG).map(|b| if b < head { v } else { 0 }).collect();
    assert!(
        got == want,
        "`{name}`: segment 1 after shrinking to {head} blocks into it and growing: \
         first wrong block {:?}",
        got.iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .map(|i| (SEG + i as u64, got[i], want[i]))
    );
}

fn check_clean(set: &ReactorSet, bdevs: Vec<Arc<dyn Bdev>>) {
    let report = on_core(set, 0, "checking the pool", move || async move {
        check::check(bdevs).await
    });
    assert!(report.clean(), "{:#?}", report.errors);
}

/// The review's first case: shrinking a disk that shares the cut segment with a snapshot
/// (or a clone that shares it with its snapshot) to a size inside that segment must
/// complete, and a grow afterwards must show zeros past the old end.
#[test]
fn shrink_of_a_snapshotted_or_cloned_disk_inside_a_segment_completes_and_grow_reads_zeros() {
    let (set, base, pool, disk) = thin_disk(4 << 20);
    let d = disk.clone();
    on_core(&set, 1, "writing", move || async move {
        fill_segment(&d, 1, 0x11).await;
        write_byte(&d, 2 * SEG + 5, 0x22).await.unwrap();
    });
    within(
        "snapshot",
        pool.snapshot(vec![("vd0".into(), "s1".into())], Duration::from_secs(5)),
    )
    .unwrap();
    within("clone", pool.clone_disk("s1", "c1")).unwrap();
    for name in ["vd0", "c1"] {
        resize(&pool, name, SEG + 64).unwrap();
        assert_eq!(disk_of(&pool, name).num_blocks(), SEG + 64);
        resize(&pool, name, 4 * SEG).unwrap();
        assert_head_and_zero_tail(&set, &pool, name, 64, 0x11);
        let d = disk_of(&pool, name);
        let b = on_core(&set, 0, "reading", move || async move {
            read_byte(&d, 2 * SEG + 5).await
        });
        assert_eq!(
            b, 0,
            "`{name}`: a dropped segment reads zeros after the grow"
        );
    }
    // The snapshot keeps everything.
    assert_head_and_zero_tail(&set, &pool, "s1", SEG, 0x11);
    // And so does the pool, closed and reopened.
    within("close", pool.close()).unwrap();
    drop(disk);
    let pool = within("open", Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    assert_head_and_zero_tail(&set, &pool, "vd0", 64, 0x11);
    assert_head_and_zero_tail(&set, &pool, "c1", 64, 0x11);
    within("close", pool.close()).unwrap();
    check_clean(&set, vec![base]);
}

/// Two reactors and pool `p0` on a 64 MiB RAM disk of 4 KiB blocks behind an error bdev
/// (with a volatile cache if `cache`), its controller on core 0.
fn error_pool(cache: bool) -> (ReactorSet, Arc<ErrorBdev>, Pool) {
    let set = reactors(2);
    let m = MallocBdev::create("m0", (64 << 20) / 4096, 4096, None).unwrap();
    let e = ErrorBdev::create("e0", m, cache).unwrap();
    let pool = new_pool(&set, e.clone());
    (set, e, pool)
}

/// [`error_pool`] (no cache) with the metadata on a RAM disk of its own, so that failing
/// the error bdev's writes fails data writes only, never a commit. Also returns every
/// bdev of the pool.
fn error_data_pool() -> (ReactorSet, Arc<ErrorBdev>, Pool, Vec<Arc<dyn Bdev>>) {
    let set = reactors(2);
    let m = MallocBdev::create("m0", (64 << 20) / 4096, 4096, None).unwrap();
    let e = ErrorBdev::create("e0", m, false).unwrap();
    let meta = malloc("md0", 16);
    let pool = within(
        "creating the pool",
        Pool::create(
            set.cores(),
            0,
            vec![e.clone()],
            Some(meta.clone()),
            PoolOptions::new("p0"),
        ),
    )
    .unwrap();
    (set, e.clone(), pool, vec![e, meta])
}

/// The disks of [`error_pool`] the shrink tests cut: `thin` (segment 1 its own, granule
/// by granule), `thick` (fully allocated, one run), `orig` (segment 1 shared with
/// snapshot `snap`). Segment 1 of each holds 0x11, flushed.
fn three_disks(set: &ReactorSet, pool: &Pool) {
    within("create", pool.create_disk("thin", 4 << 20, true)).unwrap();
    within("create", pool.create_disk("thick", 4 << 20, false)).unwrap();
    within("create", pool.create_disk("orig", 4 << 20, true)).unwrap();
    for name in ["thin", "thick", "orig"] {
        let d = disk_of(pool, name);
        on_core(set, 1, "writing", move || async move {
            fill_segment(&d, 1, 0x11).await;
            Channel::get(&d).unwrap().flush().await.unwrap();
        });
    }
    within(
        "snapshot",
        pool.snapshot(vec![("orig".into(), "snap".into())], Duration::from_secs(5)),
    )
    .unwrap();
}

/// What a shrink did to the tail of the cut segment must survive a power loss: after
/// the crash, and after a grow and another crash, the blocks past the old end read
/// zeros.
#[test]
fn shrunk_tail_reads_zeros_after_a_crash_and_a_grow() {
    let (set, e, pool) = error_pool(true);
    three_disks(&set, &pool);
    for name in ["thin", "thick", "orig"] {
        resize(&pool, name, SEG + 8).unwrap();
    }
    let crash = |pool: Pool| {
        within("crash", pool.crash_stop()).unwrap();
        e.power_loss();
        within("open", Pool::open(set.cores(), 0, vec![e.clone()])).unwrap()
    };
    let pool = crash(pool);
    for name in ["thin", "thick", "orig"] {
        assert_eq!(disk_of(&pool, name).num_blocks(), SEG + 8);
        resize(&pool, name, 4 * SEG).unwrap();
    }
    let pool = crash(pool);
    for name in ["thin", "thick", "orig"] {
        assert_head_and_zero_tail(&set, &pool, name, 8, 0x11);
    }
    assert_head_and_zero_tail(&set, &pool, "snap", SEG, 0x11);
    within("close", pool.close()).unwrap();
    check_clean(&set, vec![e as Arc<dyn Bdev>]);
}

/// A shrink racing writes: the shrink waits for a slow write in flight while holding
/// the disk, and meanwhile a write into the head of the cut segment (shared with a
/// snapshot) faults and waits for the controller. Both must complete, and the faulting
/// write's data must be there.
#[test]
fn shrink_racing_a_faulting_write_completes() {
    let (set, slow, pool, disk) = slow_thin_disk(4096);
    let d = disk.clone();
    on_core(&set, 1, "writing", move || async move {
        fill_segment(&d, 1, 0x11).await;
    });
    within(
        "snapshot",
        pool.snapshot(vec![("vd0".into(), "s1".into())], Duration::from_secs(5)),
    )
    .unwrap();
    // Segment 2 is the disk's own: writes to it go straight to the container.
    let d = disk.clone();
    on_core(&set, 1, "writing", move || async move {
        fill_segment(&d, 2, 0x22).await;
    });
    slow.set_latency(IoKind::Write, Duration::from_millis(300));
    let d = disk.clone();
    let in_flight =
        set.cores().spawn_on(
            1,
            move || async move { write_byte(&d, 2 * SEG + 1, 0x33).await },
        );
    std::thread::sleep(Duration::from_millis(50));
    // Holds the disk and waits for the write in flight.
    let shrink = pool.resize_disk("vd0", (SEG + 64) * 4096);
    std::thread::sleep(Duration::from_millis(50));
    // Faults (the segment is shared) while the shrink holds the disk.
    let d = disk.clone();
    let faulting = set.cores().spawn_on(
        0,
        move || async move { write_byte(&d, SEG + 10, 0x44).await },
    );
    within("the shrink", shrink).unwrap();
    within("the write in flight", in_flight).unwrap().unwrap();
    within("the faulting write", faulting).unwrap().unwrap();
    slow.set_latency(IoKind::Write, Duration::ZERO);
    resize(&pool, "vd0", 8 * SEG).unwrap();
    let d = disk.clone();
    let got = on_core(&set, 1, "reading", move || async move {
        (values(&d, SEG, SEG).await, read_byte(&d, 2 * SEG + 1).await)
    });
    let mut want: Vec<u8> = (0..SEG).map(|b| if b < 64 { 0x11 } else { 0 }).collect();
    want[10] = 0x44;
    assert!(got.0 == want, "segment 1: {:?}", got.0);
    assert_eq!(got.1, 0, "segment 2 was dropped by the shrink");
    assert_head_and_zero_tail(&set, &pool, "s1", SEG, 0x11);
    within("close", pool.close()).unwrap();
}

/// A write accepted before a shrink but held back (here by a quiesce) must not land
/// past the new end when it is released: it fails, and a grow shows zeros there.
#[test]
fn write_held_across_a_shrink_fails_instead_of_landing_past_the_new_end() {
    let (set, _base, pool, disk) = thin_disk(4 << 20);
    let d = disk.clone();
    on_core(&set, 1, "writing", move || async move {
        fill_segment(&d, 1, 0x11).await;
    });
    let q = within(
        "quiesce",
        pool.quiesce(vec!["vd0".into()], Duration::from_secs(15)),
    )
    .unwrap();
    let d = disk.clone();
    let held = set.cores().spawn_on(
        1,
        move || async move { write_byte(&d, SEG + 100, 0x55).await },
    );
    std::thread::sleep(Duration::from_millis(50));
    resize(&pool, "vd0", SEG + 64).unwrap();
    within("activate", pool.activate(q)).unwrap();
    let r = within("the held write", held).unwrap();
    assert_eq!(
        r,
        Err(IoStatus::LbaOutOfRange),
        "a write past the new end completes with an error"
    );
    resize(&pool, "vd0", 4 * SEG).unwrap();
    assert_head_and_zero_tail(&set, &pool, "vd0", 64, 0x11);
}

/// Shrinking a disk whose cut segment is its own (granule by granule, or fully
/// allocated) needs no write to make the blocks past the new end read zeros — so a
/// failing device cannot leave them showing the old data after a grow.
#[test]
fn shrink_hides_the_old_tail_even_when_writes_fail() {
    let (set, e, pool, _) = error_data_pool();
    three_disks(&set, &pool);
    for name in ["thin", "thick"] {
        e.inject(FailRule {
            kinds: vec![IoKind::Write],
            trigger: Trigger::Nth(1),
            status: IoStatus::MediaError,
        });
        let r = resize(&pool, name, SEG + 8);
        e.clear_rules();
        r.unwrap();
        resize(&pool, name, 4 * SEG).unwrap();
        assert_head_and_zero_tail(&set, &pool, name, 8, 0x11);
    }
}

/// When the tail cannot be made to read zeros (the cut segment is shared with a
/// snapshot, and writing its replacement fails), the resize fails with an error that
/// says so, and the disk keeps its size and its data; once the device works again the
/// shrink goes through.
#[test]
fn failed_zeroing_fails_the_shrink_and_keeps_the_disk_as_it_was() {
    let (set, e, pool, bdevs) = error_data_pool();
    three_disks(&set, &pool);
    e.inject(FailRule {
        kinds: vec![IoKind::Write],
        trigger: Trigger::Nth(1),
        status: IoStatus::MediaError,
    });
    let r = resize(&pool, "orig", SEG + 8);
    e.clear_rules();
    match r {
        Err(VdiskError::Io { what, status }) => {
            assert_eq!(status, IoStatus::MediaError);
            assert!(what.contains("`orig`"), "the error names the disk: {what}");
        }
        other => panic!("shrink over a failing write: {other:?}"),
    }
    assert_eq!(
        disk_of(&pool, "orig").num_blocks(),
        4 * SEG,
        "size unchanged"
    );
    let info = within("list", pool.list()).unwrap();
    let orig = info.iter().find(|i| i.name == "orig").unwrap();
    assert_eq!(orig.size_bytes, 4 << 20);
    assert_head_and_zero_tail(&set, &pool, "orig", SEG, 0x11);
    // The device works again: the shrink goes through.
    resize(&pool, "orig", SEG + 8).unwrap();
    resize(&pool, "orig", 4 * SEG).unwrap();
    assert_head_and_zero_tail(&set, &pool, "orig", 8, 0x11);
    assert_head_and_zero_tail(&set, &pool, "snap", SEG, 0x11);
    within("close", pool.close()).unwrap();
    check_clean(&set, bdevs);
}

/// Create and resize accept exactly the sizes (and names) opening the pool accepts: the
/// largest disk is created, a disk is resized to it, both survive a reopen; one block
/// more is refused with an error naming the field and the limit, and the pool still
/// opens.
#[test]
fn create_and_resize_refuse_sizes_that_open_would_refuse() {
    let set = reactors(2);
    // 512-byte blocks: the largest disk and one block more are both sizes in bytes.
    let m = MallocBdev::create("m0", (64 << 20) / 512, 512, None).unwrap();
    let pool = new_pool(&set, m.clone());
    let largest = meta::MAX_DISK_BLOCKS - 1;
    let limit = (largest * 512).to_string();
    let refused = |r: Result<(), VdiskError>, what: &str| match r {
        Err(VdiskError::InvalidParam {
            field: "size",
            reason,
        }) => assert!(
            reason.contains(&limit),
            "{what}: the message names the limit ({limit} bytes): {reason}"
        ),
        other => panic!("{what} past the largest disk size: {other:?}"),
    };
    within("create", pool.create_disk("big", largest * 512, true)).unwrap();
    refused(
        within(
            "create",
            pool.create_disk("bigger", (largest + 1) * 512, true),
        )
        .map(|_| ()),
        "create",
    );
    refused(
        within("create", pool.create_disk("biggest", u64::MAX - 511, true)).map(|_| ()),
        "create",
    );
    within("create", pool.create_disk("vd0", 1 << 20, true)).unwrap();
    resize(&pool, "vd0", largest).unwrap();
    refused(resize(&pool, "vd0", largest + 1), "resize");
    // Names: 127 bytes is the longest a directory record holds.
    let longest = format!("{}a", "é".repeat(63));
    assert_eq!(longest.len(), 127);
    within("create", pool.create_disk(&longest, 1 << 20, true)).unwrap();
    match within("create", pool.create_disk(&"é".repeat(64), 1 << 20, true)) {
        Err(VdiskError::InvalidParam { field: "name", .. }) => {}
        other => panic!("a 128-byte name: {:?}", other.map(|_| ())),
    }
    // The last blocks of the largest disk work.
    let d = disk_of(&pool, "big");
    let b = on_core(&set, 1, "writing the last blocks", move || async move {
        write_byte(&d, largest - 8, 0x77).await.unwrap();
        read_byte(&d, largest - 1).await
    });
    assert_eq!(b, 0x77);
    within("close", pool.close()).unwrap();
    let pool = within("open", Pool::open(set.cores(), 0, vec![m.clone()])).unwrap();
    let info = within("list", pool.list()).unwrap();
    let size = |n: &str| info.iter().find(|i| i.name == n).map(|i| i.size_bytes);
    assert_eq!(size("big"), Some(largest * 512));
    assert_eq!(size("vd0"), Some(largest * 512));
    assert_eq!(size(&longest), Some(1 << 20));
    assert_eq!(size("bigger"), None);
    let d = disk_of(&pool, "big");
    let b = on_core(&set, 1, "reading the last block", move || async move {
        read_byte(&d, largest - 1).await
    });
    assert_eq!(b, 0x77);
    within("close", pool.close()).unwrap();
    check_clean(&set, vec![m]);
}

/// Two creates of one name at once (a fully allocated disk is zeroed before it is
/// added): one disk, one `Exists` — a directory with a name twice fails `tessera check`.
#[test]
fn concurrent_creates_of_one_name_make_one_disk() {
    let set = reactors(2);
    let base = malloc("m0", 64);
    let pool = new_pool(&set, base.clone());
    let a = pool.create_disk("twin", 8 << 20, false);
    let b = pool.create_disk("twin", 8 << 20, false);
    let (a, b) = (within("create", a), within("create", b));
    assert!(
        a.is_ok() != b.is_ok(),
        "one create succeeds: {:?} / {:?}",
        a.map(|_| ()),
        b.map(|_| ())
    );
    let e = a.err().or(b.err()).unwrap();
    assert!(matches!(e, VdiskError::Exists(_)), "{e}");
    let info = within("list", pool.list()).unwrap();
    assert_eq!(info.iter().filter(|i| i.name == "twin").count(), 1);
    within("close", pool.close()).unwrap();
    check_clean(&set, vec![base]);
}
