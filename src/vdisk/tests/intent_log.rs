//! The intent log: flushes and snapshots append records instead of committing the
//! tables, and a crash before any checkpoint loses nothing they made durable; the log
//! wraps around its ring under checkpoints; a pool without a log gets one at open.

use super::*;

/// Writes value `v` into blocks `b` (4 KiB) of `d`, one at a time, then flushes.
async fn write_all_and_flush(d: &Arc<dyn Bdev>, blocks: &[u64], v: u8) {
    for &b in blocks {
        write_byte(d, b, v).await.unwrap();
    }
    Channel::get(d).unwrap().flush().await.unwrap();
}

/// Blocks scattered over `n` different 1 MiB segments of a disk of `segs` segments.
fn scattered(n: u64, segs: u64, salt: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let seg = (i * 7919 + salt) % segs;
            seg * 256 + (i * 31 + salt) % 256
        })
        .collect()
}

/// The names of the pool's disks, in the order it lists them.
fn disk_names(pool: &Pool) -> Vec<String> {
    block_on(pool.list())
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect()
}

#[test]
fn flushes_and_snapshots_append_to_the_log_and_survive_a_crash_before_any_checkpoint() {
    let set = reactors(2);
    let base = malloc("m0", 128);
    let pool = new_pool(&set, base.clone());
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 32 << 20, true)).unwrap();
    let status = block_on(pool.log_status())
        .unwrap()
        .expect("a new pool has a log");
    assert!(status.pages >= 4, "{status:?}");
    let txn0 = block_on(pool.committed_txn()).unwrap();
    let first = scattered(40, 32, 3);
    let d = disk.clone();
    let blocks = first.clone();
    on(&set, 1, move || async move {
        write_all_and_flush(&d, &blocks, 0x5a).await
    });
    // A snapshot, then copy-on-write into the origin, a clone of the snapshot written.
    block_on(pool.snapshot(vec![("vd0".into(), "s1".into())], Duration::from_secs(5))).unwrap();
    let clone: Arc<dyn Bdev> = block_on(pool.clone_disk("s1", "c1")).unwrap();
    let second = scattered(20, 32, 11);
    let (d, c) = (disk.clone(), clone.clone());
    let (b2, b3) = (second.clone(), first[..10].to_vec());
    on(&set, 1, move || async move {
        write_all_and_flush(&d, &b2, 0x6b).await;
        write_all_and_flush(&c, &b3, 0x7c).await;
    });
    assert_eq!(
        block_on(pool.committed_txn()).unwrap(),
        txn0,
        "flushes, a snapshot and a clone committed the tables instead of appending to the log"
    );
    let used = block_on(pool.log_status()).unwrap().unwrap();
    assert!(used.next_seq > status.next_seq, "{status:?} -> {used:?}");
    block_on(pool.crash_stop()).unwrap();
    drop((disk, clone));
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let replayed = block_on(pool.log_status()).unwrap().unwrap();
    assert!(replayed.replayed_at_open > 0, "{replayed:?}");
    let by = |n: &str| -> Arc<dyn Bdev> { block_on(pool.disk(n)).unwrap() };
    let (d, s, c) = (by("vd0"), by("s1"), by("c1"));
    on(&set, 1, move || async move {
        for &b in &first {
            assert_eq!(read_byte(&s, b).await, 0x5a, "snapshot block {b}");
        }
        for &b in &second {
            assert_eq!(read_byte(&d, b).await, 0x6b, "origin block {b}");
        }
        for &b in &first {
            if !second.contains(&b) {
                assert_eq!(read_byte(&d, b).await, 0x5a, "origin block {b}");
            }
        }
        for &b in &first[..10] {
            assert_eq!(read_byte(&c, b).await, 0x7c, "clone block {b}");
        }
        assert_eq!(
            read_byte(&c, first[20]).await,
            0x5a,
            "clone block {}",
            first[20]
        );
    });
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
    assert_eq!(report.disks, 3);
}

#[test]
fn the_log_wraps_around_its_ring_and_a_crash_after_wrapping_loses_nothing_flushed() {
    let set = reactors(2);
    let base = malloc("m0", 192);
    let mut opts = PoolOptions::new("p0");
    // A small metadata area: a small ring (a sixteenth of the node area).
    opts.metadata_bytes = Some(1 << 20);
    let pool = block_on(Pool::create(set.cores(), 0, vec![base.clone()], None, opts)).unwrap();
    let start = block_on(pool.log_status()).unwrap().expect("a log");
    assert!(start.pages <= 16, "{start:?}");
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 16 << 20, true)).unwrap();
    // Each round's flush appends a page or more, its snapshot and the snapshot's delete
    // (three rounds in four) a page each.
    let mut expect = std::collections::BTreeMap::new();
    for round in 0..20u64 {
        let blocks = scattered(6, 16, round * 5 + 1);
        let v = 0x10 + round as u8;
        let d = disk.clone();
        let b = blocks.clone();
        on(&set, 1, move || async move {
            write_all_and_flush(&d, &b, v).await
        });
        for b in blocks {
            expect.insert(b, v);
        }
        let name = format!("s{round}");
        block_on(pool.snapshot(vec![("vd0".into(), name.clone())], Duration::from_secs(5)))
            .unwrap();
        if round % 4 != 0 {
            block_on(pool.delete_disk(&name)).unwrap();
        }
    }
    let end = block_on(pool.log_status()).unwrap().unwrap();
    assert!(
        end.next_seq >= start.next_seq + 2 * end.pages,
        "the ring did not wrap twice: {start:?} -> {end:?}"
    );
    block_on(pool.crash_stop()).unwrap();
    drop(disk);
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let d: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    on(&set, 1, move || async move {
        for (b, v) in expect {
            assert_eq!(read_byte(&d, b).await, v, "block {b}");
        }
    });
    let names = disk_names(&pool);
    for round in 0..20 {
        assert_eq!(
            names.contains(&format!("s{round}")),
            round % 4 == 0,
            "snapshot s{round} in {names:?}"
        );
    }
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}

/// Found by `vdisk_model`: a write of part of a granule after a checkpoint (512-byte
/// blocks, 4 KiB granules), then a refused clone of the writable disk, a flush and a
/// clean reopen: the block must still be there.
#[test]
fn a_partial_granule_write_survives_a_refused_clone_and_a_reopen() {
    let set = reactors(2);
    let bases: Vec<Arc<dyn Bdev>> = (0..2)
        .map(|i| {
            let m = MallocBdev::create(&format!("m{i}"), (24 << 20) / 512, 512, None).unwrap();
            ErrorBdev::create(&format!("e{i}"), m, true).unwrap() as Arc<dyn Bdev>
        })
        .collect();
    let mut opts = PoolOptions::new("p0");
    opts.metadata_bytes = Some(2 << 20);
    let pool = block_on(Pool::create(set.cores(), 0, bases.clone(), None, opts)).unwrap();
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 8 << 20, true)).unwrap();
    block_on(pool.commit()).unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        let ch = Channel::get(&d).unwrap();
        ch.write(0, pattern(1, 512)).await.unwrap();
    });
    block_on(pool.commit()).unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        let ch = Channel::get(&d).unwrap();
        ch.write(0, pattern(2, 9 * 512)).await.unwrap();
    });
    assert!(block_on(pool.clone_disk("vd0", "c0")).is_err());
    block_on(pool.commit()).unwrap();
    block_on(pool.close()).unwrap();
    drop(disk);
    let pool = block_on(Pool::open(set.cores(), 0, bases.clone())).unwrap();
    let d: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    on(&set, 1, move || async move {
        let ch = Channel::get(&d).unwrap();
        let b = ch.read(0, 16).await.unwrap();
        for k in 0..16 {
            let want = if k < 9 { 2 } else { 0 };
            assert_eq!(b[k * 512], want, "block {k}");
        }
    });
    block_on(pool.close()).unwrap();
}

/// A fill changed by a write is logged within milliseconds, by the pool's fill logger,
/// not at the next append (a flush, a snapshot, the background second): a snapshot or a
/// FLUSH then finds few left to log and copy before it answers. (Without the logger the
/// record waits for the next append, up to a second later.)
#[test]
fn changed_fills_are_logged_within_milliseconds() {
    let (set, _base, pool, disk) = thin_disk(32 << 20);
    // A first write makes segment 3 a partial layer; the flush leaves no record waiting.
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_all_and_flush(&d, &[3 * 256], 0x11).await
    });
    let idle = block_on(pool.log_status()).unwrap().unwrap();
    assert_eq!(idle.pending_bytes, 0, "{idle:?}");
    // Another granule of the same segment: no fault, only the fill changes.
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_byte(&d, 3 * 256 + 7, 0x22).await.unwrap()
    });
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    loop {
        let st = block_on(pool.log_status()).unwrap().unwrap();
        if st.pending_bytes > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the changed fill was not logged within 200 ms: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    block_on(pool.close()).unwrap();
}

/// A checkpoint's writes do not queue ahead of a log append's (a snapshot or a flush
/// waits for those): while an append writes, a checkpoint holds its next batch back —
/// until the append's writes complete, or for at most `LOG_WRITE_PRIORITY`.
#[test]
fn checkpoint_writes_wait_for_a_log_append_a_bounded_while() {
    let set = reactors(1);
    let pool = new_pool(&set, malloc("m0", 64));
    let waited = |clear_after: Option<Duration>| {
        block_on(pool.on_ctl(move |c| async move {
            let page = c.st.borrow_mut().space.alloc_page().expect("a free page");
            c.log_writing.set(1);
            if let Some(after) = clear_after {
                let me = c.clone();
                crate::reactor::spawn_local(async move {
                    crate::reactor::sleep(after).await;
                    me.log_writing.set(0);
                })
                .detach();
            }
            let t0 = std::time::Instant::now();
            let r = c
                .write_pages(&[(page, vec![0; crate::vdisk::meta::PAGE_BYTES])], false)
                .await;
            c.log_writing.set(0);
            assert_eq!(r, Ok(()));
            Ok(t0.elapsed())
        }))
        .unwrap()
    };
    let held = waited(Some(Duration::from_millis(8)));
    assert!(
        held >= Duration::from_millis(8) && held < crate::vdisk::commit::LOG_WRITE_PRIORITY,
        "a checkpoint write went after {held:?} (the append's writes completed after 8 ms)"
    );
    let bounded = waited(None);
    assert!(
        bounded >= crate::vdisk::commit::LOG_WRITE_PRIORITY && bounded < Duration::from_secs(1),
        "a checkpoint write went after {bounded:?} with an append's writes never completing"
    );
}

/// The log page at sequence `seq` of the ring `st` describes, as the medium holds it.
fn log_page_at(set: &ReactorSet, pool: &Pool, st: &LogStatus, seq: u64) -> Vec<u8> {
    let place = st.first_page + seq % st.pages;
    let meta = pool.shared.meta_bdev.clone();
    page_at(set, &meta, pool.shared.meta_first_byte, place)
}

/// An open appends from the end of the log it replayed, with no checkpoint; what a torn
/// append left past that end is erased first. The test forges that leftover: the
/// second page of an append whose first page was lost, continuing the LSNs exactly as
/// the next real append will leave them, and holding a record that drops the disk. Had
/// the open not erased it, the open after the next crash would replay it.
#[test]
fn open_appends_from_the_end_of_the_log_after_erasing_a_torn_appends_leftovers() {
    let set = reactors(2);
    let base = malloc("m0", 128);
    let pool = new_pool(&set, base.clone());
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 32 << 20, true)).unwrap();
    let id = block_on(pool.list()).unwrap()[0].id;
    let blocks = scattered(20, 32, 5);
    let (d, b) = (disk.clone(), blocks.clone());
    on(&set, 1, move || async move {
        write_all_and_flush(&d, &b, 0x21).await
    });
    block_on(pool.crash_stop()).unwrap();
    drop(disk);
    // The first open after the crash replays and checkpoints nothing.
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let txn = block_on(pool.committed_txn()).unwrap();
    let st = block_on(pool.log_status()).unwrap().unwrap();
    assert!(st.replayed_at_open > 0, "{st:?}");
    assert!(
        st.next_seq < st.replay_seq + st.pages,
        "appends start a ring past the replay start: {st:?}"
    );
    let uuid = pool.uuid();
    block_on(pool.crash_stop()).unwrap();
    // Forged: page `next_seq + 1` of an append that started at `next_seq`.
    let (end, lsn) = (st.next_seq, st.next_lsn);
    let drop_disk = vec![vec![meta::log::encode(&meta::log::LogRecord::DropDisk {
        id,
    })]];
    let place = st.first_page + (end + 1) % st.pages;
    let (_, mut page) = meta::log::pack(
        &meta::log::RecordGroups::of(&drop_disk),
        end + 1,
        lsn + 1,
        st.first_page,
        st.pages,
        &uuid,
    )
    .remove(0);
    // Its append's first page is `end`.
    let batch = meta::HEADER_BYTES + 8;
    page[batch..batch + 8].copy_from_slice(&end.to_le_bytes());
    let page = meta::forge_page(&page, meta::PageKind::Log, place, &uuid);
    put_page(&set, &base, pool.shared.meta_first_byte, place, page);
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    assert_eq!(
        block_on(pool.committed_txn()).unwrap(),
        txn,
        "the open checkpointed"
    );
    let st = block_on(pool.log_status()).unwrap().unwrap();
    assert_eq!((st.next_seq, st.next_lsn), (end, lsn), "{st:?}");
    // One record appended at the end: the forged page would continue it.
    block_on(pool.rename_disk("vd0", "vd1")).unwrap();
    let st2 = block_on(pool.log_status()).unwrap().unwrap();
    assert_eq!(st2.next_seq, end + 1, "{st2:?}");
    let head = meta::log::decode_log_head(
        &log_page_at(&set, &pool, &st2, end),
        st.first_page + end % st.pages,
        &uuid,
    )
    .unwrap();
    assert_eq!((head.first_lsn, head.count), (lsn, 1), "{head:?}");
    block_on(pool.crash_stop()).unwrap();
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let names = disk_names(&pool);
    assert_eq!(names, ["vd1"], "a leftover of a torn append was replayed");
    let d: Arc<dyn Bdev> = block_on(pool.disk("vd1")).unwrap();
    on(&set, 1, move || async move {
        for b in blocks {
            assert_eq!(read_byte(&d, b).await, 0x21, "block {b}");
        }
    });
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}

/// The 4 KiB page `place` after byte `at` (the metadata area's first byte, or the
/// superblock slots') as the medium of `base` holds it.
fn page_at(set: &ReactorSet, base: &Arc<dyn Bdev>, at: u64, place: u64) -> Vec<u8> {
    let meta = base.clone();
    on(set, 0, move || async move {
        let b = load::read_bytes(
            &meta,
            at + place * meta::PAGE_BYTES as u64,
            meta::PAGE_BYTES,
        )
        .await
        .unwrap();
        b.as_slice().to_vec()
    })
}

/// Writes `bytes` over the 4 KiB page `place` after byte `at` of `base`.
fn put_page(set: &ReactorSet, base: &Arc<dyn Bdev>, at: u64, place: u64, bytes: Vec<u8>) {
    let meta = base.clone();
    on(set, 0, move || async move {
        load::write_bytes(
            &meta,
            at + place * meta::PAGE_BYTES as u64,
            IoBuf::from_slice(&bytes),
        )
        .await
        .unwrap()
    });
}

/// What happens to the page of the log an append wrote last, after the append was
/// acknowledged and before the power failed.
#[derive(Clone, Copy, Debug)]
enum TailDamage {
    /// One bit flips in the log's copy.
    BitInLog,
    /// The log's copy never landed (its write went elsewhere): the page holds zeros.
    LostInLog,
    /// One bit flips in the mirror's copy.
    BitInMirror,
    /// Both copies lose a bit: the log ends before that page, as after a torn append.
    BitInBoth,
}

/// Writes scattered blocks and flushes, renames the disk (an append of one record: the
/// log's last page), crashes, damages that page as `how` says, then checks and reopens
/// the pool; returns the disk names after the reopen and the check's notes.
fn tail_damaged(how: TailDamage) -> (Vec<String>, Vec<String>) {
    let set = reactors(2);
    let base = malloc("m0", 128);
    let pool = new_pool(&set, base.clone());
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 32 << 20, true)).unwrap();
    let blocks = scattered(20, 32, 9);
    let (d, b) = (disk.clone(), blocks.clone());
    on(&set, 1, move || async move {
        write_all_and_flush(&d, &b, 0x44).await
    });
    block_on(pool.rename_disk("vd0", "vd1")).unwrap();
    let st = block_on(pool.log_status()).unwrap().unwrap();
    let mirror = st.mirror.expect("a new pool's log has a mirror");
    let at = pool.shared.meta_first_byte;
    block_on(pool.crash_stop()).unwrap();
    drop((disk, pool));
    let last = (st.next_seq - 1) % st.pages;
    let flip = |place: u64| {
        let mut b = page_at(&set, &base, at, place);
        b[meta::HEADER_BYTES + 20] ^= 0x10;
        put_page(&set, &base, at, place, b);
    };
    match how {
        TailDamage::BitInLog => flip(st.first_page + last),
        TailDamage::LostInLog => put_page(
            &set,
            &base,
            at,
            st.first_page + last,
            vec![0; meta::PAGE_BYTES],
        ),
        TailDamage::BitInMirror => flip(mirror + last),
        TailDamage::BitInBoth => {
            flip(st.first_page + last);
            flip(mirror + last);
        }
    }
    let report = offline_check(&set, base.clone());
    assert!(report.clean(), "{how:?}: {:#?}", report.errors);
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let names = disk_names(&pool);
    let d: Arc<dyn Bdev> = block_on(pool.disk(&names[0])).unwrap();
    on(&set, 1, move || async move {
        for b in blocks {
            assert_eq!(read_byte(&d, b).await, 0x44, "{how:?}: block {b}");
        }
    });
    block_on(pool.close()).unwrap();
    let after = offline_check(&set, base);
    assert!(after.clean(), "{how:?}: {:#?}", after.errors);
    (names, report.notes)
}

/// The log keeps a mirror: the page an append wrote last, damaged after the append was
/// acknowledged (a flipped bit, or a write that landed elsewhere), is replayed from its
/// copy instead of ending the log there unseen, and `tessera check` names the damage.
/// Only damage to both copies ends the log before that page (as a torn append does).
#[test]
fn a_damaged_last_log_page_is_replayed_from_the_mirror() {
    for how in [
        TailDamage::BitInLog,
        TailDamage::LostInLog,
        TailDamage::BitInMirror,
    ] {
        let (names, notes) = tail_damaged(how);
        assert_eq!(names, ["vd1"], "{how:?}: the acknowledged rename was lost");
        let named = notes.iter().any(|n| n.contains("mirror"));
        match how {
            TailDamage::BitInMirror => assert!(!named, "{how:?}: {notes:?}"),
            _ => assert!(
                named,
                "{how:?}: the check did not name the damage: {notes:?}"
            ),
        }
    }
    let (names, _) = tail_damaged(TailDamage::BitInBoth);
    assert_eq!(
        names,
        ["vd0"],
        "both copies damaged: the log ends before the page"
    );
}

/// A pool written by the builds before the mirror and packed records — a log of wide
/// records, no mirror, superblock version 3 — replays its log on open and is upgraded:
/// the checkpoint of the open writes a version-5 superblock naming a mirror, and only
/// then are records appended packed, in both rings.
#[test]
fn a_log_of_an_older_version_is_replayed_and_upgraded_on_open() {
    let set = reactors(2);
    let base = malloc("m0", 128);
    let pool = new_pool(&set, base.clone());
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 32 << 20, true)).unwrap();
    let blocks = scattered(20, 32, 13);
    let (d, b) = (disk.clone(), blocks.clone());
    on(&set, 1, move || async move {
        write_all_and_flush(&d, &b, 0x55).await
    });
    let at = pool.shared.meta_first_byte;
    let before = block_on(pool.log_status()).unwrap().unwrap();
    block_on(pool.crash_stop()).unwrap();
    drop((disk, pool));
    // The superblock in force, rewritten as a version-3 one (no mirror, wide records).
    let slots: Vec<Vec<u8>> = (0..2)
        .map(|i| page_at(&set, &base, meta::SUPERBLOCK_OFFSET, i))
        .collect();
    let picked = meta::superblock::pick(&slots[0], &slots[1], None).unwrap();
    let mut sb = picked.sb.clone();
    let uuid = sb.pool_uuid;
    let area = sb.log.unwrap();
    assert!(area.mirror.is_some() && area.packed, "{area:?}");
    // Its log, written again as those builds wrote it: the same records, wide.
    let mut records = Vec::new();
    let mut first_lsn = None;
    for seq in area.replay_seq..before.next_seq {
        let place = area.first_page + seq % area.pages;
        let p = meta::log::decode_log_page(&page_at(&set, &base, at, place), place, &uuid, 1 << 20)
            .unwrap();
        first_lsn.get_or_insert(p.first_lsn);
        records.extend(p.records);
    }
    assert!(
        records
            .iter()
            .any(|r| matches!(r, meta::log::LogRecord::Splice { .. })),
        "no splice to replay: {records:?}"
    );
    let groups: Vec<Vec<Vec<u8>>> = records.iter().map(|r| vec![meta::log::encode(r)]).collect();
    let wide = meta::log::pack(
        &meta::log::RecordGroups::of(&groups),
        area.replay_seq,
        first_lsn.unwrap(),
        area.first_page,
        area.pages,
        &uuid,
    );
    assert!(wide.len() as u64 <= area.pages / 2, "{} pages", wide.len());
    for seq in area.replay_seq..area.replay_seq + area.pages {
        let place = area.first_page + seq % area.pages;
        let k = (seq - area.replay_seq) as usize;
        let bytes = wide
            .get(k)
            .map_or(vec![0u8; meta::PAGE_BYTES], |(_, b)| b.clone());
        put_page(&set, &base, at, place, bytes);
    }
    sb.log.as_mut().unwrap().mirror = None;
    sb.log.as_mut().unwrap().packed = false;
    let v3 = sb.encode();
    assert_eq!(
        u32::from_le_bytes(v3[8..12].try_into().unwrap()),
        meta::superblock::LOG_SUPERBLOCK_VERSION
    );
    put_page(&set, &base, meta::SUPERBLOCK_OFFSET, sb.txn % 2, v3);
    let report = offline_check(&set, base.clone());
    assert!(report.clean(), "{:#?}", report.errors);
    assert_eq!(
        report.log_records,
        records.len() as u64,
        "{:?}",
        report.notes
    );
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let st = block_on(pool.log_status()).unwrap().unwrap();
    let mirror = st.mirror.expect("the open gave the log a mirror");
    assert!(
        block_on(pool.committed_txn()).unwrap() > sb.txn,
        "no checkpoint recorded the upgrade"
    );
    let slots: Vec<Vec<u8>> = (0..2)
        .map(|i| page_at(&set, &base, meta::SUPERBLOCK_OFFSET, i))
        .collect();
    let now = meta::superblock::pick(&slots[0], &slots[1], None).unwrap();
    assert_eq!(
        u32::from_le_bytes(slots[(now.sb.txn % 2) as usize][8..12].try_into().unwrap()),
        meta::superblock::PACKED_LOG_SUPERBLOCK_VERSION
    );
    let d: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    let (d2, b) = (d.clone(), blocks.clone());
    on(&set, 1, move || async move {
        for &x in &b {
            assert_eq!(read_byte(&d2, x).await, 0x55, "block {x}");
        }
    });
    // Writes after the upgrade: their splices and fills are appended packed.
    let upgraded = block_on(pool.log_status()).unwrap().unwrap();
    // Granules next to those written (fills change), and segments not mapped yet
    // (splices).
    let segs: std::collections::BTreeSet<u64> = blocks.iter().map(|b| b / 256).collect();
    let more: Vec<u64> = (blocks.iter().take(6).map(|b| b + 1))
        .chain(
            (0..32)
                .filter(|s| !segs.contains(s))
                .take(6)
                .map(|s| s * 256 + 7),
        )
        .collect();
    let (d2, b) = (d.clone(), more.clone());
    on(&set, 1, move || async move {
        write_all_and_flush(&d2, &b, 0x66).await
    });
    block_on(pool.rename_disk("vd0", "vd1")).unwrap();
    let st = block_on(pool.log_status()).unwrap().unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for seq in upgraded.next_seq..st.next_seq {
        let place = st.first_page + seq % st.pages;
        kinds.extend(record_kinds(&page_at(&set, &base, at, place)));
    }
    assert!(
        kinds.contains(&6) && kinds.contains(&7) && !kinds.contains(&1) && !kinds.contains(&2),
        "record kinds appended after the upgrade: {kinds:?}"
    );
    block_on(pool.crash_stop()).unwrap();
    drop((d, pool));
    let last = (st.next_seq - 1) % st.pages;
    let log_copy = page_at(&set, &base, at, st.first_page + last);
    let mirror_copy = page_at(&set, &base, at, mirror + last);
    assert_eq!(
        meta::log::decode_log_head(&mirror_copy, mirror + last, &uuid).unwrap(),
        meta::log::decode_log_head(&log_copy, st.first_page + last, &uuid).unwrap(),
        "the append after the upgrade is not in the mirror"
    );
    let report = offline_check(&set, base.clone());
    assert!(report.clean(), "{:#?}", report.errors);
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let names = disk_names(&pool);
    assert_eq!(names, ["vd1"]);
    let d: Arc<dyn Bdev> = block_on(pool.disk("vd1")).unwrap();
    let d2 = d.clone();
    on(&set, 1, move || async move {
        for &x in &blocks {
            assert_eq!(read_byte(&d2, x).await, 0x55, "block {x}");
        }
        for &x in &more {
            assert_eq!(read_byte(&d2, x).await, 0x66, "block {x}");
        }
    });
    drop(d);
    block_on(pool.close()).unwrap();
}

/// The kind byte of each record of a log page (1 and 2: wide splice and fill; 6 and 7:
/// packed).
fn record_kinds(page: &[u8]) -> Vec<u8> {
    let count = u32::from_le_bytes(page[12..16].try_into().unwrap());
    let mut at = meta::HEADER_BYTES + 16;
    let mut kinds = Vec::new();
    for _ in 0..count {
        kinds.push(page[at]);
        at += 3 + u16::from_le_bytes([page[at + 1], page[at + 2]]) as usize;
    }
    kinds
}

/// A fill's change is logged whichever entry of its segment takes it. An older entry of
/// the same segment may still be queued (the segment was freed and allocated again
/// since, elsewhere): if it takes the change's dirty mark, it logs the fill's bits as
/// they are now; taking the mark without logging them loses the granules the change
/// held in a crash (see `map::DirtyFill`).
#[test]
fn an_older_queued_entry_of_a_segment_logs_the_change_it_takes() {
    let set = reactors(2);
    let base = malloc("m0", 128);
    let pool = new_pool(&set, base.clone());
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 32 << 20, true)).unwrap();
    let id = block_on(pool.list()).unwrap()[0].id;
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_all_and_flush(&d, &[0], 0x11).await
    });
    let shared = pool.shared.clone();
    let seg = (0..shared.total_segments())
        .find(|&s| shared.fills.get(s).test(0))
        .expect("the written segment holds granule 0");
    // Both entries queued in one step on the controller's core, before it looks at
    // either: the older one first, for a virtual segment that does not map `seg`.
    let ctl = shared.ctl_core;
    on(&set, ctl, move || async move {
        let stale = map::DirtyFill {
            seg,
            disk: id,
            vseg: 9,
        };
        shared.dirty_fills.push(stale);
        let current = map::DirtyFill {
            seg,
            disk: id,
            vseg: 0,
        };
        assert!(shared.change_fill(current, |f| f.set_range(7, 1)));
    });
    let d = disk.clone();
    on(&set, 1, move || async move {
        Channel::get(&d).unwrap().flush().await.unwrap();
    });
    block_on(pool.crash_stop()).unwrap();
    drop((disk, pool));
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let fill = pool.shared.fills.get(seg);
    assert!(
        fill.test(0) && fill.test(7),
        "granule 7 of segment {seg} was held and flushed before the crash: {:x?}",
        fill.words()
    );
    block_on(pool.close()).unwrap();
}

/// A segment allocated for a write fault is in no written leaf until the next checkpoint
/// begins, so a change of its fill until then copies no leaf (`Fills::allocated_for_fault`).
/// After that checkpoint wrote its leaf, a change must copy the leaf again: written at
/// granule 0, checkpointed, written at granule 7, flushed, checkpointed again (the log
/// replays from there), crashed — granule 7 must still read back.
#[test]
fn a_fill_change_after_the_checkpoint_that_wrote_its_new_segment_survives_the_next() {
    let set = reactors(2);
    let base = malloc("m0", 128);
    let pool = new_pool(&set, base.clone());
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", 32 << 20, true)).unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_all_and_flush(&d, &[0], 0x11).await
    });
    block_on(pool.commit()).unwrap();
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_all_and_flush(&d, &[7], 0x22).await
    });
    block_on(pool.commit()).unwrap();
    block_on(pool.crash_stop()).unwrap();
    drop((disk, pool));
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let d: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    let got = on(&set, 1, move || async move {
        (read_byte(&d, 0).await, read_byte(&d, 7).await)
    });
    assert_eq!(
        got,
        (0x11, 0x22),
        "blocks 0 and 7 after two checkpoints and a crash"
    );
    block_on(pool.close()).unwrap();
}

/// Appends are written side by side and acknowledged in order. A durable point asked
/// for while an append's writes are under way packs its own append and writes it at
/// once, instead of first waiting for those writes; it is acknowledged only once the
/// append before it is durable too; and its pages name that append's first page, so
/// that a crash that lost the earlier append opens with the log ending there (the later
/// pages erased as leftovers of a torn append), not refused as damage.
#[test]
fn appends_are_written_side_by_side_and_acknowledged_in_order() {
    const SLOW: Duration = Duration::from_millis(100);
    let set = reactors(2);
    let m = MallocBdev::create("m0", (64 << 20) / 4096, 4096, None).unwrap();
    let slow = ErrorBdev::create("e0", m, false).unwrap();
    let base: Arc<dyn Bdev> = slow.clone();
    let pool = new_pool(&set, base.clone());
    for d in ["a0", "b0", "c0", "d0"] {
        block_on(pool.create_disk(d, 8 << 20, true)).unwrap();
    }
    block_on(pool.commit()).unwrap();
    // A rename on a thread of its own: when it was acknowledged.
    let rename = |from: &str, to: &str| {
        let f = pool.rename_disk(from, to);
        std::thread::spawn(move || {
            block_on(f).unwrap();
            std::time::Instant::now()
        })
    };

    // Side by side: the second rename's append is written while the first's is.
    slow.set_latency(IoKind::Write, SLOW);
    let first = rename("a0", "a1");
    std::thread::sleep(SLOW / 4);
    let t1 = std::time::Instant::now();
    let second = rename("b0", "b1");
    let (_, done2) = (first.join().unwrap(), second.join().unwrap());
    assert!(
        done2 - t1 < SLOW * 3 / 2,
        "the second rename took {:?} with writes taking {SLOW:?}: it waited for the first \
         append's writes before writing its own",
        done2 - t1
    );

    // In order: the second append's writes complete at once, its rename is
    // acknowledged once the first append's writes complete too.
    let t0 = std::time::Instant::now();
    let first = rename("c0", "c1");
    std::thread::sleep(SLOW / 4);
    slow.set_latency(IoKind::Write, Duration::ZERO);
    let second = rename("d0", "d1");
    let (_, done2) = (first.join().unwrap(), second.join().unwrap());
    assert!(
        done2 - t0 >= SLOW * 9 / 10,
        "the second append was acknowledged {:?} after the first started, its writes \
         taking {SLOW:?}: before the first was durable",
        done2 - t0
    );

    // The second's page names the first's page as the one the log was durable below.
    let st = block_on(pool.log_status()).unwrap().unwrap();
    let (p1, p2) = (st.next_seq - 2, st.next_seq - 1);
    let uuid = pool.uuid();
    let head = meta::log::decode_log_head(
        &log_page_at(&set, &pool, &st, p2),
        st.first_page + p2 % st.pages,
        &uuid,
    )
    .unwrap();
    assert_eq!(head.batch, p1, "{head:?}");

    // A crash that lost the first append's page in both rings: the log ends there.
    let at = pool.shared.meta_first_byte;
    let mirror = st.mirror.expect("a new pool's log has a mirror");
    block_on(pool.crash_stop()).unwrap();
    drop(pool);
    for ring in [st.first_page, mirror] {
        put_page(
            &set,
            &base,
            at,
            ring + p1 % st.pages,
            vec![0; meta::PAGE_BYTES],
        );
    }
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    let mut names = disk_names(&pool);
    names.sort();
    assert_eq!(names, ["a1", "b1", "c0", "d0"]);
    block_on(pool.close()).unwrap();
    let report = offline_check(&set, base);
    assert!(report.clean(), "{:#?}", report.errors);
}
