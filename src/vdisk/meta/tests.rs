//! Round trips and damage detection of every page kind.

use super::directory::{DiskKind, DiskRecord, JobRecord, decode_directory, encode_directory};
use super::label::{Label, Role};
use super::node::{
    RawExtent, decode_internal, decode_leaf, encode_internal, encode_leaf, encode_raw_leaf,
    encode_wide_leaf,
};
use super::space_map::{
    SM_COUNTS_PER_PAGE, SM_PTRS_PER_PAGE, SpaceMapPtrs, SpaceMapStage, decode_sm_index,
    decode_space_map, encode_space_map,
};
use super::superblock::LogArea;
use super::superblock::{ContainerRecord, Superblock, pick};
use super::*;
use crate::vdisk::map::{Extent, ExtentState, Fills, Layer};
use crate::vdisk::table::{LEAF_BUDGET_BYTES, MAX_PACKED_EXTENT_BYTES, extent_budget};
use uuid::Uuid;

fn pool() -> Uuid {
    Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788)
}

#[test]
fn label_round_trip_and_damage() {
    let l = Label {
        pool_uuid: pool(),
        pool_name: "pool0".into(),
        role: Role::DataAndMetadata,
        container_index: 0,
        container_count: 2,
        segment_bytes: 1 << 20,
        block_size: 4096,
        bdev_uuid: Uuid::from_u128(7),
    };
    let mut b = l.encode();
    assert_eq!(Label::decode(&b, "x").unwrap(), Some(l));
    assert_eq!(Label::decode(&[0u8; 4096], "x").unwrap(), None);
    b[100] ^= 1;
    assert!(matches!(
        Label::decode(&b, "x"),
        Err(MetaError::Checksum { .. })
    ));
}

fn ptr(page: u64, txn: u64) -> BlockPtr {
    BlockPtr {
        page,
        txn,
        crc: 0x1234,
    }
}

fn sb() -> Superblock {
    Superblock {
        pool_uuid: pool(),
        pool_name: "p".into(),
        txn: 9,
        generation: 4,
        next_disk_id: 3,
        segment_bytes: 1 << 20,
        block_size: 4096,
        meta_first_byte: 1 << 20,
        meta_pages: 1000,
        sm_pages: 2,
        sm_index_pages: 1,
        directory: ptr(17, 9),
        cow_policy: 0,
        separate_metadata: false,
        metadata_uuid: Uuid::nil(),
        containers: vec![ContainerRecord {
            bdev_uuid: Uuid::from_u128(5),
            segments: 1100,
            reserved_segments: 5,
        }],
        sm_index: vec![ptr(5, 8)],
        log: None,
    }
}

/// [`sb`] with a log of 8 pages from page 100 and the given mirror.
fn with_log(mirror: Option<u64>) -> Superblock {
    Superblock {
        log: Some(LogArea {
            first_page: 100,
            pages: 8,
            mirror,
            replay_seq: 3,
            replay_lsn: 1,
            packed: false,
        }),
        ..sb()
    }
}

#[test]
fn superblock_round_trip_and_validation() {
    let s = sb();
    assert_eq!(Superblock::decode(&s.encode(), "B").unwrap(), s);
    // With a log (version 3), and with a log and its mirror (version 4); a log that
    // may hold packed records, with or without a mirror (version 5).
    for packed in [false, true] {
        for mirror in [None, Some(200)] {
            let mut s = with_log(mirror);
            s.log.as_mut().unwrap().packed = packed;
            let b = s.encode();
            let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
            let want = match (packed, mirror) {
                (true, _) => 5,
                (false, Some(_)) => 4,
                (false, None) => 3,
            };
            assert_eq!(version, want);
            assert_eq!(Superblock::decode(&b, "B").unwrap(), s);
        }
    }
    // Each field is checked against the others, with an error naming it.
    type Change = Box<dyn Fn(&mut Superblock)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "log",
            Box::new(|s| {
                *s = with_log(None);
                s.log.as_mut().unwrap().replay_lsn = 0;
            }),
        ),
        ("log_mirror", Box::new(|s| *s = with_log(Some(104)))), // overlaps the log
        ("log_mirror", Box::new(|s| *s = with_log(Some(995)))), // past the metadata
        ("log_mirror", Box::new(|s| *s = with_log(Some(2)))),   // in the space map
        ("directory", Box::new(|s| s.directory.page = 5000)),
        ("directory", Box::new(|s| s.directory.page = 3)), // inside the space map
        ("directory", Box::new(|s| s.directory.txn = 10)), // after the superblock
        ("sm_pages", Box::new(|s| s.sm_pages = 1)),
        ("sm_pages", Box::new(|s| s.containers[0].segments = 3000)),
        ("sm_index_pages", Box::new(|s| s.sm_index.clear())),
        ("sm_index", Box::new(|s| s.sm_index[0].page = 6)),
        (
            "containers",
            Box::new(|s| s.containers[0].reserved_segments = 1100),
        ),
        (
            "containers",
            Box::new(|s| s.containers[0].reserved_segments = 0),
        ),
        (
            "containers",
            Box::new(|s| s.containers[0].segments = u64::MAX),
        ),
        ("meta_pages", Box::new(|s| s.meta_pages = 5)),
        ("meta_pages", Box::new(|s| s.meta_pages = u64::MAX / 2)),
        ("meta_pages", Box::new(|s| s.meta_pages = 2000)), // past container 0's reserve
        ("meta_first_byte", Box::new(|s| s.meta_first_byte = 4096)),
        (
            "meta_first_byte",
            Box::new(|s| s.meta_first_byte = (1 << 20) + 1),
        ),
        ("segment_bytes", Box::new(|s| s.segment_bytes = 3 << 20)),
        ("block_size", Box::new(|s| s.block_size = 100)),
        ("cow_policy", Box::new(|s| s.cow_policy = 7)),
        ("txn", Box::new(|s| s.txn = 0)),
        ("generation", Box::new(|s| s.generation = 0)),
        (
            "generation",
            Box::new(|s| s.generation = crate::vdisk::map::MAX_GENERATION + 2),
        ),
        ("next_disk_id", Box::new(|s| s.next_disk_id = 0)),
    ];
    for (field, f) in cases {
        let mut bad = sb();
        f(&mut bad);
        let e = Superblock::decode(&bad.encode(), "B").unwrap_err();
        assert!(
            matches!(&e, MetaError::Superblock { field: got, .. } if *got == field),
            "{field}: {e}"
        );
        assert!(e.to_string().starts_with("superblock slot B: "), "{e}");
    }
    let mut torn = sb().encode();
    torn[2000] = 1;
    assert!(matches!(
        Superblock::decode(&torn, "B"),
        Err(MetaError::Checksum { .. })
    ));
}

#[test]
fn pick_takes_the_newest_intact_slot_in_its_place() {
    let mut older = sb();
    older.txn = 8;
    older.directory.txn = 8;
    older.sm_index[0].txn = 8;
    let (a, b) = (older.encode(), sb().encode());
    let p = pick(&a, &b, Some(pool())).unwrap();
    assert_eq!((p.slot, p.sb.txn), ("B", 9));
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    // Torn newest slot: the other one, with a note.
    let mut torn = b.clone();
    torn[600] ^= 4;
    let p = pick(&a, &torn, Some(pool())).unwrap();
    assert_eq!((p.slot, p.sb.txn), ("A", 8));
    assert!(
        p.notes[0].contains("slot B: checksum mismatch"),
        "{:?}",
        p.notes
    );
    // A superblock in the wrong slot is a misdirected write.
    let p = pick(&b, &a, Some(pool())).unwrap_err();
    assert!(
        p.to_string()
            .contains("slot A: txn: transaction 9 belongs in slot B"),
        "{p}"
    );
    // Another pool's superblock.
    let p = pick(&a, &b, Some(Uuid::from_u128(3))).unwrap_err();
    assert!(p.to_string().contains("pool_uuid"), "{p}");
    // The newer slot intact but with bad fields: refused, not skipped.
    let mut bad = sb();
    bad.sm_pages = 7;
    let e = pick(&a, &bad.encode(), Some(pool())).unwrap_err();
    assert!(e.to_string().contains("slot B: sm_pages"), "{e}");
    // Both torn.
    let e = pick(&torn, &[0u8; PAGE_BYTES], None).unwrap_err();
    assert!(matches!(e, MetaError::NoSuperblock { .. }), "{e}");
}

/// A packed leaf that must fit one page.
fn leaf(page: u64, txn: u64, exts: &[Extent], fills: &Fills) -> Vec<u8> {
    let (b, k) = encode_leaf(page, txn, &pool(), exts, fills);
    assert_eq!(k, exts.len(), "fits one page");
    b
}

/// Both leaf encodings: the packed one builds write, the wide one they still read.
type LeafEncoder = fn(u64, u64, &[Extent], &Fills) -> Vec<u8>;
const LEAF_ENCODINGS: [(&str, LeafEncoder); 2] = [
    ("packed", leaf),
    ("wide", |p, t, e, f| encode_wide_leaf(p, t, &pool(), e, f)),
];

#[test]
fn pages_round_trip_and_detect_damage() {
    for (name, enc) in LEAF_ENCODINGS {
        eprintln!("{name} leaves");
        pages_round_trip_and_detect_damage_with(enc);
    }
}

fn pages_round_trip_and_detect_damage_with(encode_leaf: LeafEncoder) {
    let fills = Fills::new(1000);
    fills.fresh(7).set_range(3, 9);
    let exts = vec![
        Extent::run(0, 10, 100, 2),
        Extent {
            vseg: 20,
            len: 1,
            state: ExtentState::Mapped,
            birth: 3.into(),
            layers: crate::vdisk::map::Layers::from_slice(&[Layer::partial(7), Layer::full(8)]),
        },
    ];
    let b = encode_leaf(5, 1, &exts, &fills);
    assert_eq!(BlockPtr::of(&b).page, 5);
    assert_eq!(BlockPtr::of(&b).txn, 1);
    let raw = decode_leaf(&b, 5, &pool(), 1000).unwrap();
    assert_eq!(raw.len(), 2);
    assert_eq!(raw[1].layers[0].1.unwrap()[0], 0b1111_1111_1000);
    let loaded = Fills::new(1000);
    let back = raw[1].build(|seg, w| loaded.get(seg).store_words(w));
    assert_eq!(back, exts[1]);
    assert_eq!(loaded.get(7).words(), fills.get(7).words());
    // Misdirected, foreign, wrong kind, checksum, out-of-range segment.
    assert!(matches!(
        decode_leaf(&b, 6, &pool(), 1000),
        Err(MetaError::Misdirected { page: 6, found: 5 })
    ));
    assert!(matches!(
        decode_leaf(&b, 5, &Uuid::nil(), 1000),
        Err(MetaError::ForeignPage { .. })
    ));
    assert!(matches!(
        decode_internal(&b, 5, &pool(), 1000),
        Err(MetaError::Kind { .. })
    ));
    let e = decode_leaf(&b, 5, &pool(), 50).unwrap_err();
    assert!(e.to_string().contains("beyond 50"), "{e}");
    let mut c = b.clone();
    c[300] ^= 0x40;
    assert!(matches!(
        decode_leaf(&c, 5, &pool(), 1000),
        Err(MetaError::Checksum { .. })
    ));
    let entries = vec![(0, ptr(10, 1)), (50, ptr(11, 2))];
    let i = encode_internal(9, 2, &pool(), &entries);
    assert_eq!(decode_internal(&i, 9, &pool(), 1000).unwrap(), entries);
    assert!(
        decode_internal(&i, 9, &pool(), 11).is_err(),
        "child beyond the metadata area"
    );
    let late = encode_internal(9, 1, &pool(), &entries);
    let e = decode_internal(&late, 9, &pool(), 1000).unwrap_err();
    assert!(
        e.to_string().contains("child 1 expects transaction 2"),
        "{e}"
    );
    let unsorted = encode_internal(9, 2, &pool(), &[(50, ptr(10, 1)), (50, ptr(11, 2))]);
    let e = decode_internal(&unsorted, 9, &pool(), 1000).unwrap_err();
    assert!(e.to_string().contains("key 1 (50) is not above"), "{e}");
}

/// A one-segment extent with one partial layer.
fn partial(vseg: u64, seg: u64, birth: u64) -> Extent {
    Extent {
        vseg,
        len: 1,
        state: ExtentState::Mapped,
        birth: birth.into(),
        layers: crate::vdisk::map::Layers::from_slice(&[Layer::partial(seg)]),
    }
}

/// Fills of every shape the packed encoding distinguishes: none set, one granule, runs
/// across word boundaries, the most runs it lists (15) and one more (written as the
/// map), every granule, every other granule.
fn fill_shapes() -> Vec<[u64; 4]> {
    let mut runs15 = [0u64; 4];
    let mut runs16 = [0u64; 4];
    for k in 0..16u32 {
        let g = k * 16 + 3;
        if k < 15 {
            runs15[(g / 64) as usize] |= 0b11 << (g % 64);
        }
        runs16[(g / 64) as usize] |= 0b11 << (g % 64);
    }
    vec![
        [0; 4],
        [1, 0, 0, 0],
        [0, 0, 0, 1 << 63],
        [1 << 63, u64::MAX, 1, 0],
        runs15,
        runs16,
        [u64::MAX; 4],
        [0x5555_5555_5555_5555; 4],
    ]
}

/// Packed leaves round-trip every fill shape, layer count, error extents and the
/// widest numbers; a random first write's extent (one partial layer, one granule)
/// takes at most 15 bytes where the wide encoding takes 63.
#[test]
fn packed_leaves_round_trip_every_shape() {
    let shapes = fill_shapes();
    let mut raw = Vec::new();
    let mut v = 0u64;
    for (i, w) in shapes.iter().enumerate() {
        raw.push(RawExtent {
            vseg: v,
            len: 1,
            error: false,
            birth: 1 + i as u64,
            layers: smallvec::smallvec![(1000 + i as u64, Some(*w))],
        });
        v += 1 + i as u64 * 1000;
    }
    raw.push(RawExtent {
        vseg: v,
        len: 256,
        error: false,
        birth: crate::vdisk::map::MAX_GENERATION,
        layers: smallvec::smallvec![((1 << 40) - 300, None)],
    });
    raw.push(RawExtent {
        vseg: v + 300,
        len: 1,
        error: true,
        birth: 7,
        layers: smallvec::smallvec![],
    });
    raw.push(RawExtent {
        vseg: v + 301,
        len: 1,
        error: false,
        birth: 8,
        layers: (0..4)
            .map(|k| (5 + k, Some(shapes[k as usize + 3])))
            .collect(),
    });
    raw.push(RawExtent {
        vseg: MAX_VSEG - 1,
        len: 1,
        error: false,
        birth: 9,
        layers: smallvec::smallvec![(3, None)],
    });
    let b = encode_raw_leaf(5, 2, &pool(), &raw);
    assert_eq!(b[4], PageKind::PackedLeaf as u8);
    assert_eq!(decode_leaf(&b, 5, &pool(), 1 << 40).unwrap(), raw);
    // One random first write: a segment number of 22 bits, one granule.
    let fills = Fills::new(1 << 22);
    fills.fresh((1 << 22) - 1).set_range(77, 1);
    let exts = [partial((1 << 22) - 9, (1 << 22) - 1, 300)];
    let one = leaf(5, 2, &exts, &fills);
    let used = PAGE_BYTES - one.iter().rev().take_while(|&&x| x == 0).count();
    assert!(used - 64 <= 15, "{} bytes", used - 64);
}

/// The budget a leaf is packed by bounds what its extents take written, whatever their
/// fills grew to since: a leaf within `LEAF_BUDGET_BYTES` fits two pages. Random
/// extents (numbers of every width, up to four layers), every partial fill as wide as
/// a fill gets (its map); the seed is printed.
#[test]
fn a_leaf_within_its_budget_fits_two_pages_whatever_its_fills() {
    let seed = std::env::var("TESSERA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (TESSERA_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    // A number of up to `bits` bits, every width as likely.
    let wide = |rng: &mut fastrand::Rng, bits: u32| {
        let b = rng.u32(0..bits);
        rng.u64(..1 << b)
    };
    let fills = Fills::new(1 << 16);
    let mut two_pages = 0;
    for _ in 0..300 {
        let mut exts = Vec::new();
        let (mut bytes, mut v) = (0, wide(&mut rng, 40));
        loop {
            let nl = rng.usize(1..=4);
            let e = Extent {
                vseg: v,
                len: 1,
                state: ExtentState::Mapped,
                birth: wide(&mut rng, 40).into(),
                layers: (0..nl)
                    .map(|_| {
                        let seg = rng.u64(..1 << 16);
                        if rng.u8(..4) == 0 {
                            Layer::full(seg)
                        } else {
                            fills.get(seg).store_words([0x5555_5555_5555_5555; 4]);
                            Layer::partial(seg)
                        }
                    })
                    .collect(),
            };
            let cost = extent_budget(&e);
            if bytes + cost > LEAF_BUDGET_BYTES || v >= MAX_VSEG - 1 {
                break;
            }
            bytes += cost;
            exts.push(e);
            v += 1 + wide(&mut rng, 8);
        }
        let (_, k) = encode_leaf(5, 1, &pool(), &exts, &fills);
        if k < exts.len() {
            two_pages += 1;
            let (_, k2) = encode_leaf(6, 1, &pool(), &exts[k..], &fills);
            assert_eq!(
                k2,
                exts.len() - k,
                "seed {seed}: the rest fits the second page"
            );
        }
    }
    assert!(
        two_pages > 100,
        "seed {seed}: {two_pages} of 300 leaves took two pages"
    );
    const { assert!(MAX_PACKED_EXTENT_BYTES < PAGE_BYTES / 8) };
}

/// Bad packed extents are refused naming the field: each case is one extent on an
/// otherwise valid page.
#[test]
fn packed_leaf_errors_name_the_field() {
    let page_of = |payload: &[u8]| {
        let mut b = vec![0u8; PAGE_BYTES];
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[64..64 + payload.len()].copy_from_slice(payload);
        forge_page(&b, PageKind::PackedLeaf, 5, &pool())
    };
    let cases: [(&[u8], &str); 11] = [
        // vseg, len, flags, birth, seg, tag
        (&[0, 1, 0x10, 1, 3, 0], ""),
        (&[0, 0, 0x10, 1, 3, 0], "len: extent 0 covers 0 segments"),
        (
            &[0, 1, 0x12, 1, 3, 0],
            "flags: extent 0 has unknown flags 0x12",
        ),
        (&[0, 1, 0x50, 1, 3, 0], "layers: extent 0 has 5 layers"),
        (&[0, 1, 0x00, 1], "layers: extent 0 has 0 layers"),
        (
            &[0, 1, 0x10, 1, 3, 17],
            "layer: extent 0: unknown fill tag 17",
        ),
        (
            &[0, 1, 0x10, 1, 3, 3, 10, 4, 12, 0],
            "fill: extent 0: fill run 1 (granules 12..13) overlaps",
        ),
        (
            &[0, 1, 0x10, 1, 3, 2, 250, 9],
            "fill: extent 0: fill run 0 (granules 250..260)",
        ),
        (
            &[
                0, 1, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
            "birth: extent 0: a number longer than 64 bits",
        ),
        (
            // Birth 2^40: past the last generation a birth can name.
            &[0, 1, 0x10, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 3, 0],
            "birth: extent 0 was born in generation 1099511627776, past the last",
        ),
        (
            &[0, 1, 0x10, 1, 0xc8, 1, 0],
            "segment: extent 0 references segment 200+1, beyond 100",
        ),
    ];
    for (payload, want) in cases {
        let r = decode_leaf(&page_of(payload), 5, &pool(), 100);
        if want.is_empty() {
            assert_eq!(r.unwrap().len(), 1);
        } else {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(want), "{payload:?}: {e}");
        }
    }
    // Runs past the end of the page, and a count beyond what fits.
    let mut b = vec![0u8; PAGE_BYTES];
    b[12..16].copy_from_slice(&1009u32.to_le_bytes());
    let e = decode_leaf(
        &forge_page(&b, PageKind::PackedLeaf, 5, &pool()),
        5,
        &pool(),
        100,
    );
    assert!(e.unwrap_err().to_string().contains("at most 1008 fit"));
    b[12..16].copy_from_slice(&1000u32.to_le_bytes());
    b[64..].fill(0x80);
    let e = decode_leaf(
        &forge_page(&b, PageKind::PackedLeaf, 5, &pool()),
        5,
        &pool(),
        100,
    );
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("vseg: extent 0: a number longer than 64 bits"),
        "{e}"
    );
}

#[test]
fn pointers_catch_stale_and_overwritten_pages() {
    let old = leaf(5, 3, &[Extent::full(0, 1, 1)], &Fills::new(4));
    let new = leaf(5, 4, &[Extent::full(0, 2, 1)], &Fills::new(4));
    let p = BlockPtr::of(&new);
    verify_pointer(&new, &p, "x").unwrap();
    // A lost write: the page keeps its older valid version.
    let e = verify_pointer(&old, &p, "internal node 9, child 0").unwrap_err();
    assert_eq!(
        e,
        MetaError::Stale {
            page: 5,
            via: "internal node 9, child 0".into(),
            found: 3,
            expected: 4
        }
    );
    assert!(e.to_string().contains("stale"), "{e}");
    // Same transaction, other contents.
    let other = leaf(5, 4, &[Extent::full(0, 3, 1)], &Fills::new(4));
    assert!(matches!(
        verify_pointer(&other, &p, "x"),
        Err(MetaError::PointerChecksum { page: 5, .. })
    ));
}

#[test]
fn pages_of_another_format_version_are_refused() {
    let mut b = leaf(5, 1, &[Extent::full(0, 1, 1)], &Fills::new(4));
    b[5] = 1;
    assert!(reseal(&mut b));
    let e = decode_leaf(&b, 5, &pool(), 100).unwrap_err();
    assert!(matches!(e, MetaError::Version { version: 1, .. }), "{e}");
    assert!(e.to_string().contains("README"), "{e}");
}

#[test]
fn directory_and_space_map_round_trip() {
    let d = DiskRecord {
        id: 1,
        uuid: Uuid::from_u128(99),
        name: "vd0".into(),
        size_blocks: 1 << 21,
        kind: DiskKind::Clone,
        read_only: false,
        thin: true,
        parent: 4,
        snap_gen: 3,
        created_gen: 3,
        root_page: 12,
        cow_policy: 1,
        job: JobRecord::Split { cursor: 77 },
        created_unix: 1_700_000_000,
        external: None,
    };
    let roots = [ptr(12, 2), ptr(12, 2)];
    let b = encode_directory(3, 2, &pool(), ptr(40, 2), &[d.clone(), d.clone()], &roots);
    let page = decode_directory(&b, 3, &pool(), 100).unwrap();
    assert_eq!(page.records, vec![d.clone(), d.clone()]);
    assert_eq!(page.roots, roots);
    assert_eq!(page.next, ptr(40, 2));
    assert_eq!(page.txn, 2);
    // Pointers past the page's own transaction.
    let b = encode_directory(
        3,
        1,
        &pool(),
        BlockPtr::NONE,
        std::slice::from_ref(&d),
        &[ptr(12, 2)],
    );
    let e = decode_directory(&b, 3, &pool(), 100).unwrap_err();
    assert!(e.to_string().contains("root"), "{e}");
    let counts: Vec<u32> = (0..SM_COUNTS_PER_PAGE as u32).collect();
    let s = encode_space_map(4, 8, &pool(), 2, &counts);
    assert_eq!(decode_space_map(&s, 4, &pool(), 2).unwrap(), (8, counts));
    assert!(decode_space_map(&s, 4, &pool(), 3).is_err());
}

/// A record naming an external snapshot (esnap) round-trips, with flag bit 2 set (which
/// builds before it refuse: "unknown flags"); a damaged external base is refused naming
/// its field.
#[test]
fn external_base_records_round_trip_and_damage_is_named() {
    use super::directory::ExternalBase;
    let d = DiskRecord {
        id: 7,
        uuid: Uuid::from_u128(5),
        name: "c1".into(),
        size_blocks: 1 << 15,
        kind: DiskKind::Disk,
        read_only: false,
        thin: true,
        parent: 0,
        snap_gen: 0,
        created_gen: 1,
        root_page: NO_PAGE,
        cow_policy: 0,
        job: JobRecord::None,
        created_unix: 1_700_000_000,
        external: Some(ExternalBase {
            uuid: Uuid::from_u128(0xabc),
            name: "golden".into(),
        }),
    };
    let plain = DiskRecord {
        external: None,
        ..d.clone()
    };
    let roots = [BlockPtr::NONE, BlockPtr::NONE];
    let b = encode_directory(
        3,
        2,
        &pool(),
        BlockPtr::NONE,
        &[d.clone(), plain.clone()],
        &roots,
    );
    let page = decode_directory(&b, 3, &pool(), 100).unwrap();
    assert_eq!(page.records, vec![d.clone(), plain]);
    // Flags: read_only 1, thin 2, external 4.
    let rec = HEADER_BYTES;
    let flags_at = rec + 8 + 16 + 128 + 8 + 1;
    assert_eq!(b[flags_at], 2 | 4);
    let ext_at = rec + 224;
    let damaged = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut c = b.clone();
        f(&mut c);
        assert!(reseal(&mut c));
        decode_directory(&c, 3, &pool(), 100)
            .unwrap_err()
            .to_string()
    };
    let e = damaged(&|c| c[ext_at..ext_at + 16].fill(0));
    assert!(e.contains("external_uuid") && e.contains("nil UUID"), "{e}");
    let e = damaged(&|c| c[ext_at..ext_at + 16].copy_from_slice(Uuid::from_u128(5).as_bytes()));
    assert!(e.contains("external_uuid") && e.contains("own UUID"), "{e}");
    let e = damaged(&|c| c[ext_at + 16] = 200);
    assert!(
        e.contains("external_name") && e.contains("exceeds 63"),
        "{e}"
    );
    let e = damaged(&|c| c[ext_at + 17] = 0xff);
    assert!(e.contains("external_name") && e.contains("UTF-8"), "{e}");
    let e = damaged(&|c| c[flags_at] = 8 | 2);
    assert!(e.contains("flags") && e.contains("0xa"), "{e}");
    // The intent log's disk records are the same encoding.
    let mut w = vec![0u8; super::directory::DISK_RECORD_BYTES];
    let mut wr = Writer::new(&mut w, 0);
    super::directory::encode_disk(&mut wr, &d, &BlockPtr::NONE);
    let mut r = Reader::new(&w, 0);
    let (back, _) = super::directory::read_disk(&mut r, 0).unwrap();
    assert_eq!(back, d);
}

#[test]
fn space_map_writes_go_to_the_place_not_in_force() {
    let sm_pages = SM_PTRS_PER_PAGE as u64 + 3; // two index pages
    let refs = vec![1u32; sm_pages as usize * SM_COUNTS_PER_PAGE];
    let mut out = Vec::new();
    let first =
        SpaceMapPtrs::unwritten(sm_pages).write(0..sm_pages, &refs[..], 1, &pool(), &mut out);
    assert_eq!(out.len() as u64, sm_pages + 2);
    assert_eq!(first.pages[7].page, 7);
    assert_eq!(first.index[1].page, 2 * sm_pages + 1);
    out.clear();
    let second = first.write([7], &refs[..], 2, &pool(), &mut out);
    let places: Vec<u64> = out.iter().map(|(p, _)| *p).collect();
    assert_eq!(places, vec![sm_pages + 7, 2 * sm_pages + 2]);
    assert_eq!(second.pages[7], BlockPtr::of(&out[0].1));
    assert_eq!(second.pages[8], first.pages[8]);
    assert_eq!(second.index[1], first.index[1]);
    // The index page decodes, and its entries point at the new version.
    let (p, b) = &out[1];
    let entries = decode_sm_index(b, *p, &pool(), 0, sm_pages).unwrap();
    assert_eq!(entries[7], second.pages[7]);
    // A third write of page 7 goes back to its first place.
    out.clear();
    second.write([7], &refs[..], 3, &pool(), &mut out);
    assert_eq!(out[0].0, 7);
}

/// A checkpoint stages the counts of its instant and encodes them while the live
/// counts move on: the pages hold the staged counts, exactly what one write of them at
/// the instant gives, whatever the batches — and the last, shorter page keeps its length.
#[test]
fn a_staged_space_map_holds_the_counts_of_its_instant() {
    let sm_pages = SM_PTRS_PER_PAGE as u64 + 3; // two index pages
    let segments = sm_pages as usize * SM_COUNTS_PER_PAGE - 100;
    let mut refs: Vec<u32> = (0..segments as u32).map(|s| s * 3 + 1).collect();
    let at_instant_refs = refs.clone();
    let committed = SpaceMapPtrs::unwritten(sm_pages);
    let changed = [0, 5, SM_PTRS_PER_PAGE as u64 + 1, sm_pages - 1];
    let mut at_instant = Vec::new();
    let want = committed.write(changed, &refs[..], 4, &pool(), &mut at_instant);
    let mut stage = SpaceMapStage::take(&committed, changed, &refs[..], 4, Vec::with_capacity(8));
    refs.iter_mut().for_each(|r| *r += 1); // the live counts move on
    let mut out = Vec::new();
    while stage.left() > 0 {
        stage.encode(1, &pool(), &mut out);
    }
    let (got, buf) = stage.finish(&pool(), &mut out);
    assert_eq!(got, want);
    assert_eq!(out, at_instant);
    assert_eq!(buf.len(), 3 * SM_COUNTS_PER_PAGE + SM_COUNTS_PER_PAGE - 100);
    for (k, &i) in changed.iter().enumerate() {
        let (p, b) = &out[k];
        let (_, counts) = decode_space_map(b, *p, &pool(), i).unwrap();
        let lo = i as usize * SM_COUNTS_PER_PAGE;
        let hi = (lo + SM_COUNTS_PER_PAGE).min(segments);
        assert_eq!(counts, at_instant_refs[lo..hi], "space-map page {i}");
    }
}

#[test]
fn decoders_never_panic_on_garbage() {
    let mut rng = fastrand::Rng::with_seed(1);
    let fills = Fills::new(1 << 20);
    fills.fresh(9).set_range(3, 40);
    let exts: Vec<Extent> = (0..40)
        .map(|v| partial(v * 3, if v == 9 { 9 } else { 100 + v }, 1))
        .collect();
    let wide = encode_wide_leaf(5, 1, &pool(), &exts, &fills);
    let mut b = leaf(5, 1, &exts, &fills);
    for i in 0..40_000 {
        if i == 20_000 {
            b = wide.clone();
        }
        let i = rng.usize(0..PAGE_BYTES);
        b[i] = rng.u8(..);
        // Re-seal half the time so the decoder gets past the checksum.
        if rng.bool() {
            seal(&mut b);
        }
        let _ = decode_leaf(&b, 5, &pool(), 1 << 20);
        let _ = decode_internal(&b, 5, &pool(), 1 << 20);
        let _ = decode_directory(&b, 5, &pool(), 1 << 20);
        let _ = decode_space_map(&b, 5, &pool(), 0);
        let _ = decode_sm_index(&b, 5, &pool(), 0, 1 << 20);
        let _ = Superblock::decode(&b, "A");
        let _ = Label::decode(&b, "x");
    }
}
