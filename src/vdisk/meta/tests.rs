//! Round trips and damage detection of every page kind.

use super::directory::{DiskKind, DiskRecord, JobRecord, decode_directory, encode_directory};
use super::label::{Label, Role};
use super::node::{decode_internal, decode_leaf, encode_internal, encode_leaf};
use super::space_map::{SM_COUNTS_PER_PAGE, decode_space_map, encode_space_map};
use super::superblock::{ContainerRecord, Superblock};
use super::*;
use crate::vdisk::map::{Extent, ExtentState, Fill, Layer};
use std::sync::Arc;
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
        directory_head: 17,
        cow_policy: 0,
        separate_metadata: false,
        metadata_uuid: Uuid::nil(),
        containers: vec![ContainerRecord {
            bdev_uuid: Uuid::from_u128(5),
            segments: 100,
            reserved_segments: 5,
        }],
    }
}

#[test]
fn superblock_round_trip_and_validation() {
    let s = sb();
    assert_eq!(Superblock::decode(&s.encode(), "A").unwrap(), s);
    let mut bad = sb();
    bad.directory_head = 5000;
    let e = Superblock::decode(&bad.encode(), "A").unwrap_err();
    assert!(e.to_string().contains("directory_head"), "{e}");
    let mut torn = sb().encode();
    torn[2000] = 1;
    assert!(matches!(
        Superblock::decode(&torn, "B"),
        Err(MetaError::Checksum { .. })
    ));
}

#[test]
fn pages_round_trip_and_detect_damage() {
    let f = Arc::new(Fill::new(1, 0));
    f.set_range(3, 9);
    let exts = vec![
        Extent::run(0, 10, 100, 2),
        Extent {
            vseg: 20,
            len: 1,
            state: ExtentState::Mapped,
            birth: 3,
            layers: smallvec::smallvec![
                Layer {
                    seg: 7,
                    fill: Some(f)
                },
                Layer::full(8)
            ],
        },
    ];
    let b = encode_leaf(5, 1, &pool(), &exts);
    let raw = decode_leaf(&b, 5, &pool(), 1000).unwrap();
    assert_eq!(raw.len(), 2);
    assert_eq!(raw[1].layers[0].1.unwrap()[0], 0b1111_1111_1000);
    let back = raw[1].build(|seg, w| Arc::new(Fill::from_words(w, 0, seg)));
    assert!(back.layers[0].fill.as_ref().unwrap().test(3));
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
    let i = encode_internal(9, 1, &pool(), &[(0, 10), (50, 11)]);
    assert_eq!(
        decode_internal(&i, 9, &pool(), 1000).unwrap(),
        vec![(0, 10), (50, 11)]
    );
    assert!(
        decode_internal(&i, 9, &pool(), 11).is_err(),
        "child beyond the metadata area"
    );
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
    };
    let b = encode_directory(3, 2, &pool(), NO_PAGE, &[d.clone(), d.clone()]);
    let (recs, next) = decode_directory(&b, 3, &pool(), 100).unwrap();
    assert_eq!(recs, vec![d.clone(), d]);
    assert_eq!(next, NO_PAGE);
    let counts: Vec<u32> = (0..SM_COUNTS_PER_PAGE as u32).collect();
    let s = encode_space_map(4, 8, &pool(), 2, &counts);
    assert_eq!(decode_space_map(&s, 4, &pool(), 2).unwrap(), (8, counts));
    assert!(decode_space_map(&s, 4, &pool(), 3).is_err());
}

#[test]
fn decoders_never_panic_on_garbage() {
    let mut rng = fastrand::Rng::with_seed(1);
    let mut b = encode_leaf(5, 1, &pool(), &[Extent::full(0, 1, 1)]);
    for _ in 0..20_000 {
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
        let _ = Superblock::decode(&b, "A");
        let _ = Label::decode(&b, "x");
    }
}
