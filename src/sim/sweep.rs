//! Crash-point sweeps (as SPDK's blob unit tests do them): for every operation that
//! changes metadata, for N = 1, 2, … until the operation completes without running out,
//! the devices die after N writes; the power fails (every unflushed write kept, dropped
//! or torn, two patterns per point); the pool reopens; and the simulator's checks run:
//! `tessera check` clean, every acknowledged operation there, every block of every disk
//! one of the values the oracle allows, and after deleting every disk all space free.

use super::Failure;
use super::model::Tag;
use super::storage::{Faults, WriteBudget};
use super::workload::{Log, ModKind, Op, Setup, Sim, SimOptions};
use super::world::Layout;
use crate::vdisk::{CowPolicy, PoolOptions};
use std::cell::RefCell;
use std::rc::Rc;

/// Blocks per segment in the sweeps' pool (512-byte blocks, 64 KiB segments).
const SEG: u64 = 128;

/// One operation to sweep: the state it starts from, and the operation itself.
pub struct Scenario {
    pub name: &'static str,
    /// Waves that build the starting state (no crash there).
    setup: fn(&mut Builder) -> Vec<Vec<Op>>,
    /// Waves of the operation; the devices may die anywhere in them.
    op: fn(&mut Builder) -> Vec<Vec<Op>>,
    policy: CowPolicy,
    /// Data segments of the pool.
    segments: u64,
}

/// Makes operations with fresh tags.
pub struct Builder {
    next_tag: Tag,
}

impl Builder {
    fn write(&mut self, disk: &str, block: u64, n: u64, fua: bool) -> Op {
        let first = self.next_tag;
        self.next_tag += n;
        Op::Modify {
            kind: ModKind::Write,
            disk: disk.into(),
            block,
            n,
            fua,
            first,
        }
    }
    fn zeroes(&mut self, kind: ModKind, disk: &str, block: u64, n: u64, fua: bool) -> Op {
        Op::Modify {
            kind,
            disk: disk.into(),
            block,
            n,
            fua,
            first: 0,
        }
    }
}

fn flush(d: &str) -> Op {
    Op::Flush { disk: d.into() }
}
/// A read of a 4-segment disk, whole.
fn read_whole(d: &str) -> Op {
    Op::Read {
        disk: d.into(),
        block: 0,
        n: 4 * SEG,
    }
}
fn create(name: &str, segs: u64, thin: bool) -> Op {
    Op::Create {
        name: name.into(),
        blocks: segs * SEG,
        thin,
    }
}
fn snapshot(pairs: &[(&str, &str)]) -> Op {
    Op::Snapshot {
        pairs: pairs
            .iter()
            .map(|(o, s)| (o.to_string(), s.to_string()))
            .collect(),
    }
}
fn clone(s: &str, c: &str) -> Op {
    Op::Clone {
        snapshot: s.into(),
        name: c.into(),
    }
}

/// `d1` (thin, 4 segments) with data in segments 0–2, partly; `d2` (thick, 2 segments).
fn base(b: &mut Builder) -> Vec<Vec<Op>> {
    vec![
        vec![create("d1", 4, true)],
        vec![create("d2", 2, false)],
        vec![
            b.write("d1", 0, 40, false),
            b.write("d1", SEG + 8, 100, false),
            b.write("d1", 2 * SEG, SEG, false),
            b.write("d2", 5, 30, false),
        ],
        vec![flush("d1"), flush("d2")],
    ]
}

/// `base`, then a thick disk `d3` that takes every free segment.
fn full(b: &mut Builder) -> Vec<Vec<Op>> {
    let mut w = base(b);
    w.push(vec![create("d3", 27, false)]);
    w
}

/// `base`, then a snapshot `s1` of `d1` and its clone `c1`.
fn with_snapshot(b: &mut Builder) -> Vec<Vec<Op>> {
    let mut w = base(b);
    w.push(vec![snapshot(&[("d1", "s1")])]);
    w.push(vec![clone("s1", "c1")]);
    w
}

/// `with_snapshot`, then `d1`'s segment 2 unmapped (zeros where `s1` has data), `d1`
/// cloned as `c2` while read-only and made writable again; `c2` written in part of that
/// segment.
fn with_clone_of_a_writable_disk(b: &mut Builder) -> Vec<Vec<Op>> {
    let mut w = with_snapshot(b);
    w.push(vec![b.zeroes(ModKind::Unmap, "d1", 2 * SEG, SEG, false)]);
    w.push(vec![Op::SetReadOnly {
        disk: "d1".into(),
        ro: true,
    }]);
    w.push(vec![clone("d1", "c2")]);
    w.push(vec![Op::SetReadOnly {
        disk: "d1".into(),
        ro: false,
    }]);
    w.push(vec![b.write("c2", 2 * SEG + 30, 5, false), flush("c2")]);
    w
}

/// `base`, then `e1`, a clone of the golden image (an external snapshot), written in
/// parts of two of its segments, flushed.
fn with_esnap(b: &mut Builder) -> Vec<Vec<Op>> {
    let mut w = base(b);
    w.push(vec![Op::CloneBdev { name: "e1".into() }]);
    w.push(vec![
        b.write("e1", 3, 5, false),
        b.write("e1", SEG + 60, 10, false),
    ]);
    w.push(vec![flush("e1")]);
    w
}

/// `with_snapshot`, `c1` written in part and its segment 2 unmapped (zeros where `s1`
/// has data); `d4` (thin, 4 segments, as `d1`) written in part and snapshotted as `s4`.
fn with_two_snapshots(b: &mut Builder) -> Vec<Vec<Op>> {
    let mut w = with_snapshot(b);
    w.push(vec![
        b.write("c1", 4, 3, false),
        b.write("c1", SEG + 100, 30, false),
        b.zeroes(ModKind::Unmap, "c1", 2 * SEG, SEG, false),
    ]);
    w.push(vec![create("d4", 4, true)]);
    w.push(vec![
        b.write("d4", 1, 60, false),
        b.write("d4", 2 * SEG + 7, 9, false),
        b.write("d4", 3 * SEG, SEG, false),
    ]);
    w.push(vec![flush("c1"), flush("d4")]);
    w.push(vec![snapshot(&[("d4", "s4")])]);
    w
}

/// `with_esnap`, its snapshot `s9`; `d5`, a thin disk of `e1`'s size written in part,
/// and its snapshot `s5`.
fn with_esnap_and_snapshot(b: &mut Builder) -> Vec<Vec<Op>> {
    let mut w = with_esnap(b);
    w.push(vec![snapshot(&[("e1", "s9")])]);
    w.push(vec![b.write("e1", 2 * SEG + 3, 2, false), flush("e1")]);
    w.push(vec![create("d5", super::world::GOLDEN_SEGMENTS, true)]);
    w.push(vec![
        b.write("d5", 2, 20, false),
        b.write("d5", 2 * SEG + 2, 40, false),
    ]);
    w.push(vec![flush("d5")]);
    w.push(vec![snapshot(&[("d5", "s5")])]);
    w.push(vec![b.write("d5", SEG + 1, 2, false), flush("d5")]);
    w
}

/// Every operation that changes metadata, from the state each one needs.
pub fn scenarios() -> Vec<Scenario> {
    use CowPolicy::{CopyOut, Redirect};
    let s = |name, setup, op, policy| Scenario {
        name,
        setup,
        op,
        policy,
        segments: 32,
    };
    vec![
        s(
            "grow a full pool under first writes, then a thick disk in the new space",
            full,
            |b| {
                vec![
                    vec![
                        Op::Grow { segments: 8 },
                        b.write("d1", 3 * SEG, 20, false),
                        flush("d1"),
                    ],
                    vec![flush("d1")],
                    vec![create("d9", 6, false)],
                ]
            },
            Redirect,
        ),
        s(
            "clone of an external snapshot",
            base,
            |_| vec![vec![Op::CloneBdev { name: "e9".into() }]],
            Redirect,
        ),
        s(
            "write into an external snapshot's clone, flush",
            with_esnap,
            |b| {
                vec![
                    vec![
                        b.write("e1", 20, 4, false),
                        b.write("e1", 2 * SEG + 1, 3, false),
                    ],
                    vec![flush("e1")],
                ]
            },
            Redirect,
        ),
        s(
            "snapshot of an external snapshot's clone, then a write (copy-out), flush",
            with_esnap,
            |b| {
                vec![
                    vec![snapshot(&[("e1", "s9")])],
                    vec![
                        b.write("e1", 2, 3, false),
                        b.write("e1", 2 * SEG + 9, 2, false),
                    ],
                    vec![flush("e1")],
                ]
            },
            CopyOut,
        ),
        s(
            "FUA write-zeroes and unmap in an external snapshot's clone",
            with_esnap,
            |b| {
                vec![
                    vec![b.zeroes(ModKind::WriteZeroes, "e1", 1, 6, true)],
                    vec![b.zeroes(ModKind::Unmap, "e1", SEG, SEG, true)],
                ]
            },
            Redirect,
        ),
        s(
            "set an external parent of a thin disk",
            base,
            |_| vec![vec![Op::SetParentBdev { disk: "d1".into() }]],
            Redirect,
        ),
        s(
            "set an external parent of a clone (written, a segment unmapped), then write",
            with_two_snapshots,
            |b| {
                vec![
                    vec![Op::SetParentBdev { disk: "c1".into() }],
                    vec![b.write("c1", 2 * SEG + 2, 4, false), flush("c1")],
                ]
            },
            Redirect,
        ),
        s(
            "set an external parent of an lvol with a snapshot (written since)",
            with_esnap_and_snapshot,
            |_| vec![vec![Op::SetParentBdev { disk: "d5".into() }]],
            Redirect,
        ),
        s(
            "set an external parent of a snapshot with a clone (written, a segment unmapped), then write both disks reading through it",
            with_two_snapshots,
            |b| {
                vec![
                    vec![Op::SetParentBdev { disk: "s1".into() }],
                    vec![Op::Read {
                        disk: "c1".into(),
                        block: 2 * SEG,
                        n: SEG,
                    }],
                    vec![
                        b.write("c1", 3 * SEG + 2, 4, false),
                        b.write("d1", 3 * SEG + 9, 3, false),
                        flush("c1"),
                        flush("d1"),
                    ],
                ]
            },
            Redirect,
        ),
        s(
            // The disk gets a zeroed segment of its own where it unmapped its snapshot's
            // data, and `c2` reads the same segment: the disk's write copies on write.
            "set an external parent of a snapshot whose disk was cloned while read-only and made writable, then write the disk",
            with_clone_of_a_writable_disk,
            |b| {
                vec![
                    vec![Op::SetParentBdev { disk: "s1".into() }],
                    vec![
                        b.write("d1", 2 * SEG + 3, 4, false),
                        b.write("d1", 2 * SEG + 32, 2, false),
                        flush("d1"),
                    ],
                    vec![Op::Read {
                        disk: "c2".into(),
                        block: 2 * SEG,
                        n: SEG,
                    }],
                ]
            },
            Redirect,
        ),
        s(
            // `d1` splits from `s1` while `c2` (cloned from `d1` while read-only) reads
            // through it: what `d1` copies in is its own, what `c2` shares stays shared.
            "split a disk cloned while read-only and made writable, then write both",
            with_clone_of_a_writable_disk,
            |b| {
                vec![
                    vec![Op::Split {
                        disk: "d1".into(),
                        decouple: false,
                    }],
                    vec![Op::WaitJob { disk: "d1".into() }],
                    vec![
                        b.write("d1", 3, 4, false),
                        b.write("d1", 2 * SEG + 31, 2, false),
                        b.write("c2", SEG + 9, 3, false),
                        flush("d1"),
                        flush("c2"),
                    ],
                    vec![read_whole("c2")],
                ]
            },
            Redirect,
        ),
        s(
            "snapshot a disk cloned while read-only and made writable, then write it",
            with_clone_of_a_writable_disk,
            |b| {
                vec![
                    vec![snapshot(&[("d1", "s2")])],
                    vec![
                        b.write("d1", 5, 4, false),
                        b.write("d1", 2 * SEG + 33, 2, false),
                        flush("d1"),
                    ],
                    vec![read_whole("c2")],
                ]
            },
            CopyOut,
        ),
        s(
            "shrink a disk cloned while read-only and made writable inside a segment, grow it, write it",
            with_clone_of_a_writable_disk,
            |b| {
                vec![
                    vec![Op::Resize {
                        disk: "d1".into(),
                        blocks: SEG + 40,
                    }],
                    vec![Op::Resize {
                        disk: "d1".into(),
                        blocks: 4 * SEG,
                    }],
                    vec![
                        b.write("d1", SEG + 20, 40, false),
                        b.write("d1", 2 * SEG + 29, 3, false),
                        flush("d1"),
                    ],
                    vec![read_whole("c2")],
                ]
            },
            Redirect,
        ),
        s(
            // `c2` takes `d1`'s place under `s1` (or the engine refuses): what it shares
            // with `s1` stays copied on write.
            "delete a disk cloned while read-only and made writable, then write its clone",
            with_clone_of_a_writable_disk,
            |b| {
                vec![
                    vec![Op::Delete { disk: "d1".into() }],
                    vec![
                        b.write("c2", 3, 4, false),
                        b.write("c2", 2 * SEG + 33, 2, false),
                        b.write("c1", 2 * SEG + 3, 2, false),
                        flush("c2"),
                        flush("c1"),
                    ],
                    vec![read_whole("s1")],
                ]
            },
            Redirect,
        ),
        s(
            "decouple a clone of a disk made writable after it was cloned",
            with_clone_of_a_writable_disk,
            |b| {
                vec![
                    vec![Op::Split {
                        disk: "c2".into(),
                        decouple: true,
                    }],
                    vec![Op::WaitJob { disk: "c2".into() }],
                    vec![
                        b.write("d1", 7, 2, false),
                        b.write("c2", 2 * SEG + 40, 2, false),
                        flush("d1"),
                        flush("c2"),
                    ],
                    vec![read_whole("c2")],
                ]
            },
            Redirect,
        ),
        s(
            "set an external parent of a thin disk's snapshot (the disk written since)",
            with_esnap_and_snapshot,
            |b| {
                vec![
                    vec![Op::SetParentBdev { disk: "s5".into() }],
                    vec![b.write("d5", 2 * SEG + 50, 3, false), flush("d5")],
                ]
            },
            CopyOut,
        ),
        s(
            "set the golden image as the parent of a clone of its clone's snapshot",
            with_esnap_and_snapshot,
            |b| {
                vec![
                    vec![Op::SetParentBdev { disk: "e1".into() }],
                    vec![b.write("e1", SEG + 2, 3, false), flush("e1")],
                ]
            },
            CopyOut,
        ),
        s(
            "set the parent of a clone (written, a segment unmapped) to another snapshot",
            with_two_snapshots,
            |b| {
                vec![
                    vec![Op::SetParent {
                        disk: "c1".into(),
                        parent: "s4".into(),
                    }],
                    vec![b.write("c1", 3 * SEG + 2, 4, false), flush("c1")],
                ]
            },
            Redirect,
        ),
        s(
            "set the parent of a snapshot with a clone (written, a segment unmapped) to another snapshot, then write both disks reading through it",
            with_two_snapshots,
            |b| {
                vec![
                    vec![Op::SetParent {
                        disk: "s1".into(),
                        parent: "s4".into(),
                    }],
                    vec![Op::Read {
                        disk: "c1".into(),
                        block: 2 * SEG,
                        n: SEG,
                    }],
                    vec![
                        b.write("c1", 3 * SEG + 5, 4, false),
                        b.write("d1", SEG + 3, 3, false),
                        flush("c1"),
                        flush("d1"),
                    ],
                ]
            },
            Redirect,
        ),
        s(
            "set the parent of an external snapshot's clone to a snapshot of the pool",
            with_esnap_and_snapshot,
            |_| {
                vec![vec![Op::SetParent {
                    disk: "e1".into(),
                    parent: "s5".into(),
                }]]
            },
            Redirect,
        ),
        s(
            "set a snapshot of an external snapshot's clone as the parent of a thin disk",
            with_esnap_and_snapshot,
            |_| {
                vec![vec![Op::SetParent {
                    disk: "d5".into(),
                    parent: "s9".into(),
                }]]
            },
            Redirect,
        ),
        s(
            "grow an external snapshot's clone, write past the external bdev's end, flush",
            with_esnap,
            |b| {
                vec![
                    vec![Op::Resize {
                        disk: "e1".into(),
                        blocks: (super::world::GOLDEN_SEGMENTS + 2) * SEG,
                    }],
                    vec![
                        b.write(
                            "e1",
                            (super::world::GOLDEN_SEGMENTS + 1) * SEG + 5,
                            3,
                            false,
                        ),
                        flush("e1"),
                    ],
                ]
            },
            Redirect,
        ),
        s(
            "delete an external snapshot's clone",
            with_esnap,
            |_| vec![vec![Op::Delete { disk: "e1".into() }]],
            Redirect,
        ),
        s(
            "create thin disk",
            base,
            |_| vec![vec![create("d9", 3, true)]],
            Redirect,
        ),
        s(
            "create thick disk",
            base,
            |_| vec![vec![create("d9", 3, false)]],
            Redirect,
        ),
        s(
            "first write into a fresh segment, flush",
            base,
            |b| {
                vec![
                    vec![b.write("d1", 3 * SEG + 5, 9, false)],
                    vec![flush("d1")],
                ]
            },
            Redirect,
        ),
        s(
            "FUA write",
            base,
            |b| vec![vec![b.write("d1", SEG + 50, 20, true)]],
            Redirect,
        ),
        s(
            "FUA write-zeroes",
            base,
            |b| vec![vec![b.zeroes(ModKind::WriteZeroes, "d1", 10, 20, true)]],
            Redirect,
        ),
        s(
            "FUA unmap",
            base,
            |b| vec![vec![b.zeroes(ModKind::Unmap, "d1", SEG + 8, 60, true)]],
            Redirect,
        ),
        s(
            "unmap of whole segments, flush",
            base,
            |b| {
                vec![
                    vec![b.zeroes(ModKind::Unmap, "d1", 0, 3 * SEG, false)],
                    vec![flush("d1")],
                ]
            },
            Redirect,
        ),
        s(
            "snapshot",
            base,
            |_| vec![vec![snapshot(&[("d1", "s1")])]],
            Redirect,
        ),
        s(
            "consistency-group snapshot",
            base,
            |_| vec![vec![snapshot(&[("d1", "s1"), ("d2", "s2")])]],
            Redirect,
        ),
        s(
            "clone",
            |b| {
                let mut w = base(b);
                w.push(vec![snapshot(&[("d1", "s1")])]);
                w
            },
            |_| vec![vec![clone("s1", "c1")]],
            Redirect,
        ),
        s(
            "write after a snapshot (redirect), flush",
            with_snapshot,
            |b| vec![vec![b.write("d1", SEG + 20, 30, false)], vec![flush("d1")]],
            Redirect,
        ),
        s(
            "write after a snapshot (copy-out), flush",
            with_snapshot,
            |b| vec![vec![b.write("d1", SEG + 20, 30, false)], vec![flush("d1")]],
            CopyOut,
        ),
        s(
            "clone write (copy-out), flush",
            with_snapshot,
            |b| {
                vec![
                    vec![b.write("c1", 2 * SEG + 7, 3, false)],
                    vec![flush("c1")],
                ]
            },
            CopyOut,
        ),
        s(
            "delete a snapshot that has a clone",
            with_snapshot,
            |_| vec![vec![Op::Delete { disk: "s1".into() }]],
            Redirect,
        ),
        s(
            "delete an origin",
            with_snapshot,
            |_| vec![vec![Op::Delete { disk: "d1".into() }]],
            Redirect,
        ),
        s(
            "grow",
            base,
            |_| {
                vec![vec![Op::Resize {
                    disk: "d1".into(),
                    blocks: 6 * SEG,
                }]]
            },
            Redirect,
        ),
        s(
            "shrink to a segment boundary",
            base,
            |_| {
                vec![vec![Op::Resize {
                    disk: "d1".into(),
                    blocks: 2 * SEG,
                }]]
            },
            Redirect,
        ),
        s(
            "shrink a snapshotted disk inside a segment",
            with_snapshot,
            |_| {
                vec![vec![Op::Resize {
                    disk: "d1".into(),
                    blocks: SEG + 40,
                }]]
            },
            Redirect,
        ),
        s(
            "set read-only",
            base,
            |_| {
                vec![vec![Op::SetReadOnly {
                    disk: "d1".into(),
                    ro: true,
                }]]
            },
            Redirect,
        ),
        s(
            "set the copy-on-write policy",
            base,
            |_| {
                vec![vec![Op::CowPolicy {
                    disk: "d1".into(),
                    policy: CowPolicy::CopyOut,
                }]]
            },
            Redirect,
        ),
        s(
            // After a crash the disk has its old name or its new one, never both or
            // neither, with its data either way.
            "rename a disk",
            base,
            |_| {
                vec![vec![Op::Rename {
                    disk: "d1".into(),
                    new_name: "d7".into(),
                }]]
            },
            Redirect,
        ),
        s(
            "rename a snapshot that has a clone",
            with_snapshot,
            |_| {
                vec![vec![Op::Rename {
                    disk: "s1".into(),
                    new_name: "s7".into(),
                }]]
            },
            Redirect,
        ),
        s(
            // The superblock alone records the pool's name: a checkpoint.
            "rename the pool",
            base,
            |_| {
                vec![vec![Op::RenamePool {
                    name: "sweep-renamed".into(),
                }]]
            },
            Redirect,
        ),
        s(
            "split a clone",
            with_snapshot,
            |_| {
                vec![
                    vec![Op::Split {
                        disk: "c1".into(),
                        decouple: false,
                    }],
                    vec![Op::WaitJob { disk: "c1".into() }],
                ]
            },
            Redirect,
        ),
        s(
            // The sweeps' ring holds 24 pages and each flush here appends one: 24 flushes
            // cross the ring's end wherever the setup left it, and fill it past half,
            // which starts checkpoints among the appends.
            "flushes across the end of the log ring, checkpoints among them",
            |b| {
                let mut w = base(b);
                for k in 0..10 {
                    w.push(vec![b.write("d1", SEG + 120 + k, 1, false)]);
                    w.push(vec![flush("d1")]);
                }
                w
            },
            |b| {
                let mut w = Vec::new();
                for k in 0..24 {
                    w.push(vec![b.write("d1", 3 * SEG + 4 * k, 2, false)]);
                    w.push(vec![flush("d1")]);
                }
                w
            },
            Redirect,
        ),
        Scenario {
            // One leaf of 130 extents (one segment each, written in order), whose fills
            // then grow to more runs than a packed leaf lists: the leaf was packed by a
            // budget its fills outgrew, so each checkpoint writes it as two pages and,
            // as it is the table's root, an internal node over them. The operation
            // grows fills of that leaf and flushes until checkpoints rewrite it.
            name: "checkpoints of a root leaf whose fills outgrew it, two pages and a node",
            setup: |b| {
                const SEGS: u64 = 130;
                let mut w = vec![vec![create("d3", SEGS, true)]];
                for seg in 0..SEGS {
                    w.push(vec![b.write("d3", seg * SEG, 1, false)]);
                }
                for seg in 0..SEGS {
                    w.push(
                        (1..=16)
                            .map(|k| b.write("d3", seg * SEG + 2 * k, 1, false))
                            .collect(),
                    );
                }
                w.push(vec![flush("d3")]);
                w
            },
            op: |b| {
                let mut w = Vec::new();
                for k in 0..24 {
                    w.push(vec![b.write("d3", 5 * k * SEG + 40, 1, false)]);
                    w.push(vec![flush("d3")]);
                }
                w
            },
            policy: Redirect,
            segments: 136,
        },
        s(
            // After a crash the disk reads entirely as before or entirely as the
            // snapshot (the checkpoint that switches it is one superblock write).
            "revert a disk to its snapshot",
            |b| {
                let mut w = with_snapshot(b);
                w.push(vec![
                    b.write("d1", 5, 20, false),
                    b.write("d1", SEG + 20, 30, false),
                    b.write("d1", 3 * SEG, 10, false),
                ]);
                w.push(vec![flush("d1")]);
                w
            },
            |_| {
                vec![vec![Op::Revert {
                    disk: "d1".into(),
                    snapshot: "s1".into(),
                }]]
            },
            Redirect,
        ),
        s(
            // The disk takes the older snapshot's smaller size; a later snapshot stays.
            "revert a grown disk to an older snapshot",
            |b| {
                let mut w = base(b);
                w.push(vec![snapshot(&[("d1", "s1")])]);
                w.push(vec![Op::Resize {
                    disk: "d1".into(),
                    blocks: 6 * SEG,
                }]);
                w.push(vec![
                    b.write("d1", 4 * SEG + 3, 40, false),
                    b.write("d1", 10, 20, false),
                ]);
                w.push(vec![snapshot(&[("d1", "s2")])]);
                w.push(vec![b.write("d1", 2 * SEG + 1, 9, false)]);
                w.push(vec![flush("d1")]);
                w
            },
            |_| {
                vec![vec![Op::Revert {
                    disk: "d1".into(),
                    snapshot: "s1".into(),
                }]]
            },
            Redirect,
        ),
        s(
            // Every block `e1` reads of the golden image is copied in; then it lets the
            // image go (its record commits with the last copies or after them).
            "split (inflate) an external snapshot's clone",
            with_esnap,
            |_| {
                vec![
                    vec![Op::Split {
                        disk: "e1".into(),
                        decouple: false,
                    }],
                    vec![Op::WaitJob { disk: "e1".into() }],
                    // Commits the copies and the record that lets the image go.
                    vec![flush("e1")],
                ]
            },
            Redirect,
        ),
        s(
            // A clone of `s9` (which reads the golden image below): what it shares with
            // `s9` and what neither holds are both copied in.
            "split a clone of an external snapshot's clone's snapshot",
            with_esnap_and_snapshot,
            |b| {
                vec![
                    vec![
                        Op::Split {
                            disk: "e1".into(),
                            decouple: false,
                        },
                        b.write("e1", 2 * SEG + 60, 4, false),
                    ],
                    vec![Op::WaitJob { disk: "e1".into() }],
                    // Commits the copies and the record that lets the image go.
                    vec![flush("e1")],
                ]
            },
            Redirect,
        ),
        s(
            // What `e1` wrote past the new end (in its last segment too) is dropped.
            "shrink an external snapshot's clone inside a segment it wrote",
            with_esnap,
            |_| {
                vec![vec![Op::Resize {
                    disk: "e1".into(),
                    blocks: SEG + 40,
                }]]
            },
            Redirect,
        ),
        s(
            // Grown again, it reads the golden image where it dropped its own blocks.
            "grow a shrunk external snapshot's clone",
            |b| {
                let mut w = with_esnap(b);
                w.push(vec![Op::Resize {
                    disk: "e1".into(),
                    blocks: SEG + 40,
                }]);
                w
            },
            |_| {
                vec![vec![Op::Resize {
                    disk: "e1".into(),
                    blocks: 3 * SEG,
                }]]
            },
            Redirect,
        ),
        s(
            "decouple a clone",
            with_snapshot,
            |_| {
                vec![
                    vec![Op::Split {
                        disk: "c1".into(),
                        decouple: true,
                    }],
                    vec![Op::WaitJob { disk: "c1".into() }],
                ]
            },
            Redirect,
        ),
    ]
}

/// What a sweep covered.
#[derive(Clone, Debug)]
pub struct SweepReport {
    pub name: &'static str,
    /// Crash points tried (writes after which the devices died).
    pub points: u64,
    /// Writes the operation issued when it could run to the end.
    pub writes: u64,
}

fn setup(policy: CowPolicy, segments: u64) -> Setup {
    let mut opts = PoolOptions::new("sweep");
    opts.segment_bytes = SEG * 512;
    opts.cow_policy = policy;
    let faults = Faults {
        latency_max_us: 40,
        ..Default::default()
    };
    Setup {
        layout: Layout {
            block_size: 512,
            meta_block_size: 512,
            names: vec![
                ("sweep-data".into(), uuid::Uuid::from_u64_pair(3, 3)),
                ("sweep-meta".into(), uuid::Uuid::from_u64_pair(4, 4)),
            ],
            separate_metadata: true,
            opts,
            cores: 2,
            ctl_core: 1,
        },
        media_bytes: vec![(segments + 1) * SEG * 512, (64 << 10) + 4096 * 400],
        data_segments: segments,
        faults: vec![faults.clone(), faults],
        p_crash_mid: 0.0,
        p_crash_between: 0.0,
        p_reopen: 0.0,
        p_rot: 0.0,
        p_control: 0.0,
        p_out_of_range: 0.0,
    }
}

/// Sweeps one scenario's crash points; `loss_patterns` power losses per point.
/// Crash point N lets the devices take N writes (N = 0: the first write already fails)
/// and fails them from then on; the points run until the operation completes.
pub fn sweep(sc: &Scenario, loss_patterns: u64, verbose: bool) -> Result<SweepReport, Failure> {
    let mut n = 0;
    loop {
        let mut died = false;
        let mut writes = 0;
        for pattern in 0..loss_patterns {
            let seed = n * 1000 + pattern;
            let log = Rc::new(RefCell::new(Log {
                lines: Default::default(),
                verbose,
                hasher: Default::default(),
            }));
            let l2 = log.clone();
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| point(sc, n, seed, l2)));
            let fail = |what: String| Failure {
                seed,
                what: format!(
                    "crash-point sweep `{}`, devices dead after {n} writes: {what}",
                    sc.name
                ),
                last_events: log.borrow().lines.iter().cloned().collect(),
                replay: format!("cargo run --release -- sim --sweep '{}' --verbose", sc.name),
            };
            match r {
                Ok(Ok((d, w))) => {
                    died |= d;
                    writes = w;
                }
                Ok(Err(what)) => return Err(fail(what)),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    return Err(fail(format!("panic: {msg}")));
                }
            }
        }
        if !died {
            return Ok(SweepReport {
                name: sc.name,
                points: n,
                writes,
            });
        }
        n += 1;
        if n > 2000 {
            return Err(Failure {
                seed: 0,
                what: format!("crash-point sweep `{}` never completed", sc.name),
                last_events: Vec::new(),
                replay: format!("cargo run --release -- sim --sweep '{}' --verbose", sc.name),
            });
        }
    }
}

/// One crash point: returns whether the devices died, and the writes the operation
/// issued.
fn point(sc: &Scenario, n: u64, seed: u64, log: Rc<RefCell<Log>>) -> Result<(bool, u64), String> {
    let opts = SimOptions {
        waves: 0,
        verbose: log.borrow().verbose,
    };
    let mut sim = Sim::with_setup(
        seed,
        opts,
        log,
        setup(sc.policy, sc.segments),
        fastrand::Rng::with_seed(seed),
    );
    sim.first_life()?;
    let mut b = Builder { next_tag: 1 };
    for wave in (sc.setup)(&mut b) {
        sim.run_wave(wave, None)?;
    }
    let budget = WriteBudget::new(n);
    for d in &sim.world().disks {
        d.set_write_budget(Some(budget.clone()));
    }
    sim.device_faults = true;
    sim.event(format!("devices die after {n} writes"));
    for wave in (sc.op)(&mut b) {
        sim.run_wave(wave, None)?;
    }
    let died = budget.is_dead();
    let writes = budget.used();
    sim.power_loss(&format!("crash point {n}"))?;
    // The new life's devices have no budget; failures are explained by the old one
    // only until the recovery is checked.
    sim.device_faults = false;
    sim.pool_failed = false;
    sim.finish()?;
    Ok((died, writes))
}

/// Runs every scenario's sweep.
pub fn sweep_all(loss_patterns: u64, verbose: bool) -> Result<Vec<SweepReport>, Failure> {
    scenarios()
        .iter()
        .map(|sc| sweep(sc, loss_patterns, verbose))
        .collect()
}
