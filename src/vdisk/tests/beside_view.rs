//! Extents sent beside the agents' views (`agent/recent.rs`, `views.rs`): a batch of
//! write faults reaches every agent of the disk without a view push, and is read there
//! at once; a view push (a snapshot, a punch) drops them.

use super::*;

/// Blocks per segment (4 KiB blocks, 1 MiB segments).
const SEG: u64 = 256;

thread_local! {
    /// Channels a test keeps open on a core, so that the disk's agent there stays.
    static HELD: std::cell::RefCell<Vec<Channel>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Opens a channel of `disk` on each of `cores` and keeps it open (its agent stays
/// registered) until the guard goes (also when a check fails: a channel must close on
/// its core, before the reactor stops); waits for each agent's first view.
fn hold_agents<'a>(set: &'a ReactorSet, disk: &Arc<dyn Bdev>, cores: &[usize]) -> Held<'a> {
    for &core in cores {
        let d = disk.clone();
        on(set, core, move || async move {
            let ch = Channel::get(&d).unwrap();
            // The first read waits for the agent's first view.
            ch.read(0, 1).await.unwrap();
            HELD.with(|h| h.borrow_mut().push(ch));
        });
    }
    Held {
        set,
        cores: cores.to_vec(),
    }
}

struct Held<'a> {
    set: &'a ReactorSet,
    cores: Vec<usize>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        for &core in &self.cores {
            let _ = block_on(self.set.cores().spawn_on(core, move || async move {
                HELD.with(|h| h.borrow_mut().clear());
            }));
        }
    }
}

/// The disk's view version at the controller.
fn version(pool: &Pool, id: u64) -> u64 {
    block_on(pool.on_ctl(move |c| async move { Ok(c.st.borrow().disks[&id].version) })).unwrap()
}

/// What the agent of `id` on `core` keeps beside its view, and its view's version.
fn beside(set: &ReactorSet, pool: &Pool, id: u64, core: usize) -> (usize, u64) {
    let p = pool.shared.id;
    on(set, core, move || async move {
        crate::vdisk::agent::beside_view(p, id).expect("an agent with a view")
    })
}

/// A first write on core 1 completes once the agent of core 0 knows the new segment: a
/// read there right after returns the data, with no view pushed (the extent went beside
/// the view), and block status on core 0 reports the written blocks as data.
#[test]
fn a_first_write_on_one_core_reads_back_on_another_without_a_view_push() {
    let (set, _base, pool, disk) = thin_disk(32 << 20);
    let id = block_on(pool.disk("vd0")).unwrap().disk_id();
    let held = hold_agents(&set, &disk, &[0, 1]);
    let before = version(&pool, id);
    for s in 0..8u64 {
        let d = disk.clone();
        let w = set.cores().spawn_on(1, move || async move {
            write_byte(&d, s * SEG + 7, 0x40 + s as u8).await
        });
        wait("a first write", HANG, w).unwrap().unwrap();
        // Right after the write completed: the other core reads it.
        let d = disk.clone();
        let got = on(
            &set,
            0,
            move || async move { read_byte(&d, s * SEG + 7).await },
        );
        assert_eq!(got, 0x40 + s as u8, "segment {s} read on core 0");
    }
    assert_eq!(version(&pool, id), before, "no view was pushed");
    for core in [0, 1] {
        assert_eq!(
            beside(&set, &pool, id, core),
            (8, before),
            "core {core}: the eight extents beside its view"
        );
    }
    // Range walks see them too: the entries, and block status.
    let entries = block_on(pool.view_entries(0, "vd0", 0, u64::MAX)).unwrap();
    let vsegs: Vec<u64> = entries.iter().map(|e| e.vseg).collect();
    assert_eq!(vsegs, (0..8).collect::<Vec<_>>());
    // Block status on core 0 from segment 1 to 10: the written blocks are data, the
    // segments never written (8 on) are holes.
    let d = disk.clone();
    let runs = on(&set, 0, move || async move {
        Channel::get(&d)
            .unwrap()
            .block_status(SEG, 9 * SEG)
            .unwrap()
    });
    let allocated = |block: u64| {
        let mut at = SEG;
        runs.iter()
            .find(|r| {
                at += r.num_blocks;
                block < at
            })
            .is_some_and(|r| r.allocated)
    };
    for s in 1..8u64 {
        assert!(
            allocated(s * SEG + 7),
            "block status of segment {s}: {runs:?}"
        );
    }
    assert!(!allocated(8 * SEG + 7), "segment 8 is a hole: {runs:?}");
    drop(held);
}

/// After batches of first writes sent beside the views, a snapshot pushes a view: the
/// agents drop what they kept (the view holds it), the snapshot shows the data, and a
/// write after it goes to a new layer on either core while the snapshot keeps the old
/// data, and the changed blocks since the snapshot on the other core are that write's.
/// A punch of a segment written that way reads as zeros on the other core.
#[test]
fn a_view_push_after_extents_beside_the_view_drops_them() {
    let (set, _base, pool, disk) = thin_disk(32 << 20);
    let id = block_on(pool.disk("vd0")).unwrap().disk_id();
    let held = hold_agents(&set, &disk, &[0, 1]);
    let before = version(&pool, id);
    // Two batches of first writes, one from each core.
    for core in [1usize, 0] {
        let d = disk.clone();
        on(&set, core, move || async move {
            let writes: Vec<_> = (0..6u64)
                .map(|s| {
                    let d = d.clone();
                    let s = s + 6 * core as u64;
                    crate::reactor::spawn_local(async move {
                        write_byte(&d, s * SEG + 1, 0x10 + s as u8).await
                    })
                })
                .collect();
            for w in writes {
                w.await.unwrap();
            }
        });
    }
    assert_eq!(version(&pool, id), before, "no view was pushed");
    assert_eq!(beside(&set, &pool, id, 0), (12, before));
    assert_eq!(beside(&set, &pool, id, 1), (12, before));
    let snap: Arc<dyn Bdev> =
        block_on(pool.snapshot(vec![("vd0".into(), "s1".into())], Duration::from_secs(5)))
            .unwrap()
            .pop()
            .unwrap();
    let after = version(&pool, id);
    assert!(after > before, "the snapshot pushed a view");
    for core in [0, 1] {
        assert_eq!(
            beside(&set, &pool, id, core),
            (0, after),
            "core {core} dropped what its new view holds"
        );
    }
    for core in [0usize, 1] {
        let (d, s) = (disk.clone(), snap.clone());
        on(&set, core, move || async move {
            for v in 0..12u64 {
                assert_eq!(read_byte(&d, v * SEG + 1).await, 0x10 + v as u8);
                assert_eq!(read_byte(&s, v * SEG + 1).await, 0x10 + v as u8);
            }
        });
    }
    // Copy-on-write after the snapshot, from core 1; core 0 reads the new data, the
    // snapshot the old.
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_byte(&d, 3 * SEG + 1, 0xee).await.unwrap();
    });
    let (d, s) = (disk.clone(), snap.clone());
    on(&set, 0, move || async move {
        assert_eq!(read_byte(&d, 3 * SEG + 1).await, 0xee);
        assert_eq!(read_byte(&s, 3 * SEG + 1).await, 0x13);
    });
    assert_eq!(
        beside(&set, &pool, id, 0),
        (1, after),
        "the redirect went beside"
    );
    // The changed blocks since the snapshot, on core 0 (whose view is the snapshot's
    // table): the granule written beside the view, nothing else.
    let (d, s) = (disk.clone(), snap.clone());
    let runs = on(&set, 0, move || async move {
        let (dc, sc) = (Channel::get(&d).unwrap(), Channel::get(&s).unwrap());
        // The snapshot's agent here is new: its first read waits for its view.
        sc.read(0, 1).await.unwrap();
        dc.changed_since(&sc, 0, 12 * SEG, 100).await.unwrap()
    });
    let changed = |block: u64| {
        let mut at = 0;
        runs.iter()
            .find(|r| {
                at += r.0;
                block < at
            })
            .is_some_and(|r| r.1)
    };
    assert!(
        changed(3 * SEG + 1),
        "the write after the snapshot: {runs:?}"
    );
    for b in [1, 2 * SEG + 1, 3 * SEG + 200, 4 * SEG + 1, 11 * SEG + 1] {
        assert!(!changed(b), "block {b} did not change: {runs:?}");
    }
    // A first write beside the view, then a punch of its segment (a view push): core 0
    // reads zeros, not the extent it kept.
    let d = disk.clone();
    on(&set, 1, move || async move {
        write_byte(&d, 20 * SEG + 5, 0x77).await.unwrap();
    });
    let d = disk.clone();
    assert_eq!(
        on(
            &set,
            0,
            move || async move { read_byte(&d, 20 * SEG + 5).await }
        ),
        0x77
    );
    let d = disk.clone();
    on(&set, 1, move || async move {
        Channel::get(&d)
            .unwrap()
            .unmap(20 * SEG, SEG)
            .await
            .unwrap();
    });
    let d = disk.clone();
    assert_eq!(
        on(
            &set,
            0,
            move || async move { read_byte(&d, 20 * SEG + 5).await }
        ),
        0,
        "the punched segment reads as zeros on core 0"
    );
    drop(held);
}

/// A view push is answered before the view it replaced is dropped (dropping it frees the
/// nodes only it held: milliseconds after a burst of first writes, which a snapshot's
/// blocking push waited for), and that view is dropped right after, in a task of its
/// own.
#[test]
fn a_replaced_view_is_dropped_after_the_push_is_answered() {
    let (set, _base, pool, disk) = thin_disk(32 << 20);
    let id = block_on(pool.disk("vd0")).unwrap().disk_id();
    let p = pool.shared.id;
    let _held = hold_agents(&set, &disk, &[1]);
    let view = block_on(pool.on_ctl(move |c| async move {
        let mut st = c.st.borrow_mut();
        let d = st.disks.get_mut(&id).unwrap();
        d.version += 1;
        Ok(c.view_of(d))
    }))
    .unwrap();
    on(&set, 1, move || async move {
        let old = crate::vdisk::agent::view_weak(p, id).expect("a view");
        crate::vdisk::agent::apply(p, id, crate::vdisk::msg::AgentCmd::SetView(view), true).await;
        assert!(
            old.upgrade().is_some(),
            "the replaced view was dropped before the push was answered"
        );
        for _ in 0..4 {
            crate::reactor::yield_now().await;
        }
        assert!(
            old.upgrade().is_none(),
            "the replaced view was never dropped"
        );
    });
}

/// A replaced view's nodes are freed a turn of the core at a time (`drop_in_turns`):
/// freeing the copies of a burst of first writes took about a millisecond, and the
/// next command to the agent (a snapshot's view push) and every I/O of its core waited
/// for it. A big table is freed over several turns, and wholly in the end.
#[test]
fn a_replaced_views_nodes_are_freed_a_turn_of_the_core_at_a_time() {
    struct NoCounts;
    impl crate::vdisk::table::RefCounts for NoCounts {
        fn seg_add(&mut self, _: crate::vdisk::map::PhysSeg, _: i64) {}
        fn page_free(&mut self, _: u64) {}
    }
    use crate::vdisk::table::{Node, NodeKind};
    let exts: Vec<crate::vdisk::map::Extent> = (0..200_000)
        .map(|v| crate::vdisk::map::Extent::full(v * 2, v, 1))
        .collect();
    let root = crate::vdisk::table::splice(None, 0, 400_000, &exts, &mut NoCounts).unwrap();
    fn weak_all(n: &Arc<Node>, out: &mut Vec<std::sync::Weak<Node>>) {
        out.push(Arc::downgrade(n));
        if let NodeKind::Internal { children, .. } = &n.kind {
            for c in children {
                weak_all(c, out);
            }
        }
    }
    let mut nodes = Vec::new();
    weak_all(&root, &mut nodes);
    let set = reactors(1);
    let (after_one_turn, in_the_end) = on(&set, 0, move || async move {
        let alive =
            |nodes: &[std::sync::Weak<Node>]| nodes.iter().filter(|w| w.strong_count() > 0).count();
        let task = crate::reactor::spawn_local(crate::vdisk::agent::drop_in_turns(vec![root]));
        crate::reactor::yield_now().await;
        let after_one_turn = alive(&nodes);
        task.await;
        (after_one_turn, alive(&nodes))
    });
    assert!(
        after_one_turn > 0,
        "every node was freed in the first turn: the drop did not yield"
    );
    assert_eq!(in_the_end, 0, "nodes were never freed");
}
