//! Damaged and crafted pool metadata against `tessera check` and open.
//!
//! Every test starts from the same small real pool ([`base_images`]: a thin disk whose
//! table has internal nodes, a snapshot, a clone, an empty disk; 4 KiB metadata pages
//! on a RAM disk), damages one kind of block with one class of damage, and asserts
//! what the offline check reports (`check()`; the `tessera check` CLI for two cases)
//! and what open does: it recovers to the last good commit, or refuses with the error
//! the check reported — never a panic, a hang or a silent overwrite (after a recovered
//! open, the pool closes and the check of what it left is clean).
//!
//! **Damage to each kind of block** (first part of this file):
//!
//! | damage \ block | label | superblock (one slot) | internal node | leaf node | directory page | space-map page | space-map index page |
//! |---|---|---|---|---|---|---|---|
//! | bit flip | check: checksum; open refuses | check notes it; open uses the other slot (previous commit) | check: checksum; open refuses | same | same | check: checksum; open rebuilds the space map from the tables | same as space map |
//! | wrong page number | — (no page number: a label is always at byte 0) | (a slot's number is its parity) see misdirected | check: misdirected; open refuses | same | same | check: misdirected; open rebuilds | same |
//! | foreign pool | check and open: the superblock belongs to another pool; open refuses | check notes it; open uses the other slot | check: another pool; open refuses | same | same | check: another pool; open rebuilds | same |
//! | stale transaction (older valid version) | — (written once) | both slots valid: opens at the other slot's commit, the lost write cannot be told from a crash before it | check: stale (txn T', pointer expects T); open refuses | same | same | check: stale; open rebuilds | same |
//! | torn (part new, rest old) | check: checksum; open refuses | one slot: check notes it, open uses the other slot; both slots: check and open: no valid superblock | check: checksum; open refuses | same | same | check: checksum; open rebuilds | same |
//! | misdirected write (the content lands on another page) | a page at byte 0: check: no label; open refuses | newest written into the older slot: note, opens at the newest; older written into the newest: note, opens at the older | check: the other page misdirected and this one stale; open refuses | same | same | check: the other page misdirected, this one stale; open refuses (the other page is a table page) | check: the space-map page misdirected, the index stale; open rebuilds |
//!
//! **Crafted metadata** (second part; defect 10): pages with valid checksums, made
//! reachable by updating every pointer above them, whose fields are wrong — segments in
//! the metadata area or beyond the pool, extents outside their leaf's span, births in
//! the future, fills beyond a segment's granules, keys out of order, children outside
//! the node area or on a directory page, a table deeper than 16 levels, directory
//! records with duplicate ids or names, missing parents, future generations, two
//! disks writing one segment, superblocks whose space map would overwrite table pages,
//! whose metadata area or containers exceed the device, labels that disagree with the
//! superblock, space-map indexes pointing elsewhere, counts that disagree with the
//! tables. Each is refused by open (the space map: rebuilt) with the error `tessera
//! check` reports, naming the page and the field.

use std::collections::HashSet;
use tessera::fuzzing::image::{
    self, METADATA_PAGES, Opened, PoolImage, base_image, base_images, check_image, open_image,
    records,
};
use tessera::vdisk::check::CheckReport;
use tessera::vdisk::meta::directory::{decode_directory, encode_directory};
use tessera::vdisk::meta::label::Label;
use tessera::vdisk::meta::node::{
    RawExtent, decode_internal, decode_leaf, encode_internal, encode_raw_leaf, encode_raw_wide_leaf,
};
use tessera::vdisk::meta::space_map::{decode_sm_index, encode_sm_index, encode_space_map};
use tessera::vdisk::meta::{self, BlockPtr, PAGE_BYTES, PageKind};

fn fresh() -> PoolImage {
    PoolImage::parse(base_image()).expect("the base image parses")
}

/// The check reports an error containing each of `want`.
fn check_says(bytes: &[u8], want: &[&str]) -> CheckReport {
    let r = check_image(bytes);
    for w in want {
        assert!(
            r.errors.iter().any(|e| e.contains(w)),
            "the check does not report `{w}`: errors {:#?}, notes {:#?}",
            r.errors,
            r.notes
        );
    }
    r
}

/// The check reports each of `want`, and open refuses with one of them.
fn refused(bytes: &[u8], want: &[&str]) {
    check_says(bytes, want);
    match open_image(bytes) {
        Opened::Refused(e) => assert!(
            want.iter().any(|w| e.to_string().contains(w)),
            "open refused with `{e}`, not with {want:?}"
        ),
        Opened::Opened { disks, .. } => panic!("open accepted the damage ({want:?}): {disks:?}"),
    }
}

/// The disks of the image, and of the commit before its last (the close's): an open
/// that falls back to that one finds them all too (and replays the log after it).
const ALL_DISKS: [&str; 4] = ["vd0", "snap", "work", "empty"];

/// Open succeeds with `disks`, and what the pool leaves once closed is clean.
fn opens(bytes: &[u8], disks: &[&str]) {
    match open_image(bytes) {
        Opened::Refused(e) => panic!("open refused: {e}"),
        Opened::Opened {
            disks: found,
            after_close,
        } => {
            assert_eq!(found, disks);
            assert!(after_close.clean(), "{:#?}", after_close.errors);
        }
    }
}

/// The check reports each of `want` (a damaged space map), and open rebuilds it.
fn rebuilt(bytes: &[u8], want: &[&str]) {
    check_says(bytes, want);
    opens(bytes, &ALL_DISKS);
}

/// The check is clean (with a note containing `note`) at transaction `txn`, and open
/// recovers there.
fn recovered(bytes: &[u8], txn: u64, note: &str) {
    let r = check_image(bytes);
    assert!(r.clean(), "{:#?}", r.errors);
    assert_eq!(r.txn, txn, "the check reads another commit");
    assert!(
        r.notes.iter().any(|n| n.contains(note)),
        "no note `{note}`: {:#?}",
        r.notes
    );
    opens(bytes, &ALL_DISKS);
}

/// A valid older version of page `p` (same page, same kind, written by transaction 3,
/// the first commit of the base pool): for the space map and its index the version
/// the page really held then (pool creation's, transaction 2, if that commit left it); for table and directory pages, the first commit's page
/// of that kind, as it would read had it been written at `p`.
fn stale_version(img: &PoolImage, p: u64) -> Vec<u8> {
    let first = &base_images()[0];
    let old = PoolImage::parse(first).expect("the first image parses");
    assert_eq!(old.sb.txn, 3);
    let pool = img.sb.pool_uuid;
    let kind = img.kinds[&p];
    let b = match kind {
        PageKind::SpaceMap | PageKind::SpaceMapIndex => {
            let at = img.offset(p);
            first[at..at + PAGE_BYTES].to_vec()
        }
        PageKind::Leaf | PageKind::PackedLeaf => {
            let q = old.pages(kind)[0];
            let exts = decode_leaf(old.page(q), q, &pool, 384).expect("a leaf");
            encode_raw_leaf(p, 3, &pool, &exts)
        }
        PageKind::Internal => {
            let q = old.pages(kind)[0];
            let entries = decode_internal(old.page(q), q, &pool, METADATA_PAGES).expect("a node");
            encode_internal(p, 3, &pool, &entries)
        }
        PageKind::Directory => {
            let q = old.pages(kind)[0];
            let d =
                decode_directory(old.page(q), q, &pool, METADATA_PAGES).expect("a directory page");
            encode_directory(p, 3, &pool, d.next, &d.records, &d.roots)
        }
        PageKind::Log => panic!("page {p}: no pointer leads to a log page"),
    };
    let found = BlockPtr::of(&b);
    assert_eq!(found.page, p);
    // Space-map pages the first commit did not rewrite hold pool creation's version.
    assert!(
        found.txn == 3
            || (found.txn < 3 && matches!(kind, PageKind::SpaceMap | PageKind::SpaceMapIndex)),
        "page {p}: txn {}",
        found.txn
    );
    assert!(BlockPtr::of(img.page(p)).txn > 3, "page {p} is not newer");
    b
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    BitFlip,
    WrongPageNumber,
    ForeignPool,
    Stale,
    Torn,
    /// The page's content lands on this other page; the page keeps its older version.
    Misdirected(u64),
}

/// Damages page `p` of `img`; returns the errors the check must report.
fn damage(img: &mut PoolImage, p: u64, d: Damage) -> Vec<String> {
    let at = img.offset(p);
    match d {
        Damage::BitFlip => {
            img.bytes[at + 1000] ^= 0x10;
            vec![format!("metadata page {p}: checksum mismatch")]
        }
        Damage::WrongPageNumber => {
            img.bytes[at + 16..at + 24].copy_from_slice(&(p + 1).to_le_bytes());
            assert!(meta::reseal(&mut img.bytes[at..at + PAGE_BYTES]));
            vec![format!(
                "metadata page {p}: misdirected write (the page says it is page {})",
                p + 1
            )]
        }
        Damage::ForeignPool => {
            img.bytes[at + 32] ^= 0xff;
            assert!(meta::reseal(&mut img.bytes[at..at + PAGE_BYTES]));
            vec![format!("metadata page {p}: belongs to another pool")]
        }
        Damage::Stale => {
            let old = stale_version(img, p);
            let (was, expected) = (BlockPtr::of(&old).txn, BlockPtr::of(img.page(p)).txn);
            img.set_page(p, &old);
            vec![
                format!("metadata page {p}: stale: it holds the version of transaction {was}, but"),
                format!("expects transaction {expected} (a lost or misdirected write)"),
            ]
        }
        Damage::Torn => {
            // A torn write over the older version: its first 512-byte sector (the
            // header) landed, the others did not.
            let mut torn = stale_version(img, p);
            torn[..512].copy_from_slice(&img.page(p)[..512]);
            assert!(
                torn != img.page(p) && torn != stale_version(img, p),
                "tears"
            );
            img.set_page(p, &torn);
            vec![format!("metadata page {p}: checksum mismatch")]
        }
        Damage::Misdirected(q) => {
            let new = img.page(p).to_vec();
            let old = stale_version(img, p);
            img.set_page(q, &new);
            img.set_page(p, &old);
            vec![
                format!("metadata page {q}: misdirected write (the page says it is page {p})"),
                format!("metadata page {p}: stale"),
            ]
        }
    }
}

const CLASSES: [Damage; 5] = [
    Damage::BitFlip,
    Damage::WrongPageNumber,
    Damage::ForeignPool,
    Damage::Stale,
    Damage::Torn,
];

/// Every class of damage to page `p` (misdirected onto `other`): the check reports it
/// and open refuses (tables, directory) or rebuilds (space map). Of the two pages a
/// misdirected write damages, the check reaches those of `misdirected_seen` (0: the
/// page written over, 1: the page that kept its older version): not a page that only a
/// damaged one leads to.
fn every_class(p: u64, other: u64, refuses: bool, misdirected_seen: &[usize]) {
    // A page whose content fits in its first 512-byte sector (the index of a small
    // pool) cannot tear.
    let tears = fresh().page(p)[512..] != stale_version(&fresh(), p)[512..];
    let classes = CLASSES
        .into_iter()
        .filter(|d| tears || !matches!(d, Damage::Torn))
        .chain([Damage::Misdirected(other)]);
    for d in classes {
        let mut img = fresh();
        let mut want = damage(&mut img, p, d);
        if let Damage::Misdirected(_) = d {
            want = misdirected_seen.iter().map(|&i| want[i].clone()).collect();
        }
        let want: Vec<&str> = want.iter().map(|s| s.as_str()).collect();
        eprintln!("page {p} ({:?}), {d:?}: {want:?}", fresh().kinds[&p]);
        let refuses = refuses || matches!(d, Damage::Misdirected(_)) && other_is_table(other);
        if refuses {
            refused(&img.bytes, &want);
        } else {
            rebuilt(&img.bytes, &want);
        }
    }
}

fn other_is_table(p: u64) -> bool {
    matches!(
        fresh().kinds.get(&p),
        Some(PageKind::Leaf | PageKind::Internal | PageKind::Directory)
    )
}

/// A leaf of `vd0` reached through an internal node, and another one.
fn two_leaves(img: &PoolImage) -> (u64, u64) {
    let leaves: Vec<u64> = img
        .pages(PageKind::Leaf)
        .into_iter()
        .filter(|&p| img.parents(p).len() == 1)
        .collect();
    (leaves[0], leaves[1])
}

#[test]
fn damaged_leaf_nodes_are_reported_and_refused() {
    let img = fresh();
    let (p, q) = two_leaves(&img);
    every_class(p, q, true, &[0, 1]);
}

#[test]
fn damaged_internal_nodes_are_reported_and_refused() {
    let img = fresh();
    let nodes = img.pages(PageKind::Internal);
    assert!(nodes.len() >= 2, "the base pool has internal nodes");
    every_class(nodes[0], nodes[1], true, &[0, 1]);
}

#[test]
fn damaged_directory_pages_are_reported_and_refused() {
    let img = fresh();
    let dir = img.pages(PageKind::Directory)[0];
    // Misdirected onto a leaf: the directory, stale, leads nowhere.
    every_class(dir, two_leaves(&img).0, true, &[1]);
}

#[test]
fn damaged_space_map_pages_are_reported_and_rebuilt() {
    let img = fresh();
    let sm = img.pages(PageKind::SpaceMap)[0];
    let index = img.pages(PageKind::SpaceMapIndex)[0];
    // Misdirected onto the index page, which then leads nowhere; open rebuilds.
    every_class(sm, index, false, &[0]);
}

#[test]
fn damaged_space_map_index_pages_are_reported_and_rebuilt() {
    let img = fresh();
    let index = img.pages(PageKind::SpaceMapIndex)[0];
    let sm = img.pages(PageKind::SpaceMap)[0];
    // Misdirected onto the space-map page: the index, stale, leads nowhere.
    every_class(index, sm, false, &[1]);
}

#[test]
fn a_leaf_misdirected_onto_the_directory_is_refused() {
    let img = fresh();
    let (leaf, _) = two_leaves(&img);
    let dir = img.pages(PageKind::Directory)[0];
    let mut img = fresh();
    let want = damage(&mut img, leaf, Damage::Misdirected(dir));
    refused(&img.bytes, &[&want[0]]);
}

/// Superblock slots: (newest, older) offsets in the image and their transactions.
fn slots(img: &PoolImage) -> (usize, usize) {
    (
        PoolImage::slot_offset(img.slot),
        PoolImage::slot_offset(1 - img.slot),
    )
}

fn slot_name(img: &PoolImage, newest: bool) -> &'static str {
    match (img.slot, newest) {
        (0, true) | (1, false) => "A",
        _ => "B",
    }
}

#[test]
fn superblock_damage_falls_back_to_the_other_slot_or_refuses() {
    let img = fresh();
    let t = img.sb.txn;
    let (new_at, old_at) = slots(&img);
    let (new_slot, old_slot) = (slot_name(&img, true), slot_name(&img, false));
    let block = |b: &[u8], at: usize| b[at..at + PAGE_BYTES].to_vec();
    // Bit flip in the newest slot: the previous commit, with a note.
    let mut b = img.bytes.clone();
    b[new_at + 300] ^= 1;
    recovered(
        &b,
        t - 1,
        &format!("superblock slot {new_slot}: checksum mismatch"),
    );
    // Torn newest slot: its first 256 bytes new, the rest from its previous version (All of this small pool's superblock lies in
    // its first 512-byte sector: the tear is inside it, as a device without sector
    // atomicity could leave it.)
    // (the newest base image whose commit went to the same slot).
    let (older_same_slot, older_txn) = base_images()
        .iter()
        .rev()
        .map(|b| (block(b, new_at), PoolImage::parse(b).unwrap().sb.txn))
        .find(|(_, x)| *x < t - 1 && x % 2 == t % 2)
        .expect("an older commit in the newest slot");
    assert!(
        older_txn < t - 1 && older_txn % 2 == t % 2,
        "txn {older_txn} vs {t}"
    );
    let mut torn = block(&img.bytes, new_at);
    torn[256..].copy_from_slice(&older_same_slot[256..]);
    assert!(
        torn != block(&img.bytes, new_at) && torn != older_same_slot,
        "tears"
    );
    let mut b = img.bytes.clone();
    b[new_at..new_at + PAGE_BYTES].copy_from_slice(&torn);
    recovered(
        &b,
        t - 1,
        &format!("superblock slot {new_slot}: checksum mismatch"),
    );
    // Both slots torn: nothing to open.
    let mut torn_old = block(&img.bytes, old_at);
    torn_old[256..].copy_from_slice(&block(&base_images()[0], old_at)[256..]);
    assert!(torn_old != block(&img.bytes, old_at), "tears");
    b[old_at..old_at + PAGE_BYTES].copy_from_slice(&torn_old);
    refused(
        &b,
        &[
            "no valid superblock: slot A: superblock slot A: checksum mismatch",
            "slot B: superblock slot B: checksum mismatch",
        ],
    );
    // Foreign pool in the newest slot: the other slot.
    let mut foreign = img.sb.clone();
    foreign.pool_uuid = uuid::Uuid::from_u128(42);
    let mut b = img.bytes.clone();
    b[new_at..new_at + PAGE_BYTES].copy_from_slice(&foreign.encode());
    recovered(
        &b,
        t - 1,
        &format!("superblock slot {new_slot}: pool_uuid: belongs to pool"),
    );
    // Misdirected: the newest superblock written over the older slot too: no loss.
    let mut b = img.bytes.clone();
    let newest = block(&b, new_at);
    b[old_at..old_at + PAGE_BYTES].copy_from_slice(&newest);
    recovered(
        &b,
        t,
        &format!("superblock slot {old_slot}: txn: transaction {t} belongs in slot {new_slot}"),
    );
    // Misdirected: the previous superblock written over the newest slot: the previous
    // commit, from its own slot.
    let mut b = img.bytes.clone();
    let older = block(&b, old_at);
    b[new_at..new_at + PAGE_BYTES].copy_from_slice(&older);
    recovered(
        &b,
        t - 1,
        &format!(
            "superblock slot {new_slot}: txn: transaction {} belongs in slot {old_slot}",
            t - 1
        ),
    );
    // Stale: the newest slot lost its last write and holds transaction 4. Both slots
    // are valid; the pool opens at the newer of them, the previous commit (a lost
    // superblock write looks like a crash before it).
    let mut b = img.bytes.clone();
    b[new_at..new_at + PAGE_BYTES].copy_from_slice(&older_same_slot);
    let r = check_image(&b);
    assert!(r.clean(), "{:#?}", r.errors);
    assert_eq!(r.txn, t - 1);
    opens(&b, &ALL_DISKS);
    // Intact but wrong: refused, not skipped.
    let mut bad = img.sb.clone();
    bad.sm_pages += 1;
    let mut b = img.bytes.clone();
    b[new_at..new_at + PAGE_BYTES].copy_from_slice(&bad.encode());
    refused(
        &b,
        &[&format!(
            "superblock slot {new_slot}: sm_pages: 2 space-map pages"
        )],
    );
}

#[test]
fn label_damage_is_reported_and_refused() {
    let img = fresh();
    let label = Label::decode(&img.bytes[..PAGE_BYTES], "x")
        .unwrap()
        .expect("a label");
    // Bit flip (and a torn label: same checksum failure).
    let mut b = img.bytes.clone();
    b[200] ^= 2;
    refused(&b, &["label of `image`: checksum mismatch"]);
    // Another pool's (valid) label.
    let mut other = label.clone();
    other.pool_uuid = uuid::Uuid::from_u128(42);
    let mut b = img.bytes.clone();
    b[..PAGE_BYTES].copy_from_slice(&other.encode());
    refused(
        &b,
        &[
            "no valid superblock",
            "not to the labels' pool 00000000-0000-0000-0000-00000000002a",
        ],
    );
    // A metadata page written over the label.
    let mut b = img.bytes.clone();
    let page = img.page(img.pages(PageKind::Leaf)[0]).to_vec();
    b[..PAGE_BYTES].copy_from_slice(&page);
    check_says(&b, &["bdev `image`: no tessera label at byte 0"]);
    match open_image(&b) {
        Opened::Refused(e) => assert!(e.to_string().contains("has no tessera label"), "{e}"),
        Opened::Opened { .. } => panic!("a pool without a label opened"),
    }
    // A label whose fields disagree with the superblock.
    let mut wrong = label.clone();
    wrong.segment_bytes *= 2;
    let mut b = img.bytes.clone();
    b[..PAGE_BYTES].copy_from_slice(&wrong.encode());
    refused(
        &b,
        &["label: segment_bytes: the label of `image` says 131072-byte segments"],
    );
    let mut wrong = label;
    wrong.container_count = 3;
    let mut b = img.bytes.clone();
    b[..PAGE_BYTES].copy_from_slice(&wrong.encode());
    refused(
        &b,
        &["label: container_count: the label of `image` says 3 containers"],
    );
}

/// `tessera check` on a pool file: exit status and output.
fn cli_check(bytes: &[u8]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.img");
    let f = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut &f, bytes).unwrap();
    f.set_len(image::DISK_BYTES).unwrap();
    drop(f);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("check")
        .arg(&path)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn tessera_check_cli_names_the_damaged_page() {
    let (ok, out) = cli_check(base_image());
    assert!(ok, "{out}");
    assert!(out.contains("4 disks"), "{out}");
    // A lost write of a leaf.
    let mut img = fresh();
    let (leaf, _) = two_leaves(&img);
    let want = damage(&mut img, leaf, Damage::Stale);
    let (ok, out) = cli_check(&img.bytes);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("error: metadata: {}", want[0])),
        "{out}"
    );
    // A torn newest superblock: a note, and the check passes at the previous commit.
    let mut b = fresh().bytes;
    let (new_at, _) = slots(&fresh());
    b[new_at + 100] ^= 1;
    let (ok, out) = cli_check(&b);
    assert!(ok, "{out}");
    let previous = format!("transaction {}", fresh().sb.txn - 1);
    assert!(
        out.contains(&previous) && out.contains("note: superblock slot"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------
// Crafted metadata (defect 10): valid checksums and pointers, wrong fields.

/// The first leaf of a table, reached through one internal node only, with its
/// decoded extents.
fn first_leaf(img: &PoolImage) -> (u64, Vec<RawExtent>) {
    let (p, _) = two_leaves(img);
    let exts = decode_leaf(img.page(p), p, &img.sb.pool_uuid, 384).unwrap();
    (p, exts)
}

fn txn_of(img: &PoolImage, p: u64) -> u64 {
    BlockPtr::of(img.page(p)).txn
}

/// Rewrites leaf `p` with `f` applied to its extents (same transaction), keeping every
/// pointer above it consistent.
fn craft_leaf(f: impl FnOnce(&mut Vec<RawExtent>)) -> (PoolImage, u64) {
    let mut img = fresh();
    let (p, mut exts) = first_leaf(&img);
    f(&mut exts);
    // Extents out of order are written wide (packed ones cannot say it).
    let in_order = exts
        .windows(2)
        .all(|w| w[0].vseg + u64::from(w[0].len) <= w[1].vseg);
    let (txn, pool) = (txn_of(&img, p), img.sb.pool_uuid);
    let b = if in_order {
        encode_raw_leaf(p, txn, &pool, &exts)
    } else {
        encode_raw_wide_leaf(p, txn, &pool, &exts)
    };
    img.replace_page(p, &b);
    (img, p)
}

#[test]
fn crafted_leaves_are_refused() {
    // An extent on the metadata area (container 0's reserved segments: label and
    // metadata, 0..6).
    let (img, p) = craft_leaf(|e| e[0].layers[0].0 = 2);
    refused(
        &img.bytes,
        &[
            &format!("metadata page {p}: segment: extent at segment"),
            "references segment 2, reserved",
        ],
    );
    // A segment beyond the pool.
    let (img, p) = craft_leaf(|e| e[0].layers[0].0 = 500);
    refused(
        &img.bytes,
        &[&format!(
            "metadata page {p}: segment: extent 0 references segment 500"
        )],
    );
    // Born after the pool's generation.
    let (img, p) = craft_leaf(|e| e[0].birth = 1000);
    refused(
        &img.bytes,
        &[
            &format!("metadata page {p}: birth: extent at segment"),
            "born in generation 1000",
        ],
    );
    // Outside the leaf's span: moved past the next leaf's first key.
    let (img, p) = craft_leaf(|e| {
        let last = e.pop().unwrap();
        e.push(RawExtent { vseg: 318, ..last });
    });
    refused(
        &img.bytes,
        &[&format!(
            "metadata page {p}: vseg: extent at segment 318 crosses the leaf's span"
        )],
    );
    // A fill marking granules a 64 KiB segment does not have (it has 16).
    let (img, p) = craft_leaf(|e| {
        e[0].layers[0].1 = Some([(1 << 17) - 1, 0, 0, 0]);
    });
    refused(
        &img.bytes,
        &[
            &format!("metadata page {p}: fill: extent at segment"),
            "beyond the 16 a segment has",
        ],
    );
    // A count beyond the extents the page holds (the zeros after them read as an
    // extent of no segments).
    let mut img = fresh();
    let (p, _) = first_leaf(&img);
    let at = img.offset(p);
    img.bytes[at + 12..at + 16].copy_from_slice(&1000u32.to_le_bytes());
    meta::reseal(&mut img.bytes[at..at + PAGE_BYTES]);
    img.repoint(p);
    refused(
        &img.bytes,
        &[
            &format!("metadata page {p}: len: extent"),
            "covers 0 segments",
        ],
    );
}

/// Rewrites internal node `p` (the root of `vd0`) with `f` applied to its entries.
fn craft_root(f: impl FnOnce(&PoolImage, u64, &mut Vec<(u64, BlockPtr)>)) -> (PoolImage, u64) {
    let mut img = fresh();
    // The newest internal node (any pointer of an older one may be refused for its
    // transaction first).
    let p = img
        .pages(PageKind::Internal)
        .into_iter()
        .max_by_key(|&p| txn_of(&img, p))
        .unwrap();
    let mut entries = decode_internal(img.page(p), p, &img.sb.pool_uuid, METADATA_PAGES).unwrap();
    f(&img, p, &mut entries);
    let b = encode_internal(p, txn_of(&img, p), &img.sb.pool_uuid, &entries);
    img.replace_page(p, &b);
    (img, p)
}

#[test]
fn crafted_internal_nodes_are_refused() {
    // Keys out of order.
    let (img, p) = craft_root(|_, _, e| e.swap(1, 2));
    refused(&img.bytes, &[&format!("metadata page {p}: key: key 2")]);
    // A child in the space-map area.
    let (img, p) = craft_root(|img, _, e| e[1].1 = BlockPtr::of(img.page(0)));
    refused(
        &img.bytes,
        &[&format!(
            "internal node {p}, child 1 points outside the node area"
        )],
    );
    // A child on the directory page.
    let (img, p) = craft_root(|img, _, e| {
        let d = img.pages(PageKind::Directory)[0];
        e[1].1 = BlockPtr::of(img.page(d));
    });
    refused(
        &img.bytes,
        &[&format!(
            "internal node {p}, child 1 points at a directory page"
        )],
    );
    // A child pointing at the node itself: its checksum cannot match (a loop of
    // verified pointers cannot be made); refused, no hang.
    let (img, p) = craft_root(|img, me, e| {
        e[1].1.page = me;
        e[1].1.txn = txn_of(img, me);
    });
    refused(
        &img.bytes,
        &[&format!("metadata page {p}: checksum"), "internal node"],
    );
}

/// A chain of 18 single-child internal nodes above `vd0`'s root, in free pages, with
/// consistent pointers: too deep.
#[test]
fn a_table_deeper_than_16_levels_is_refused() {
    let mut img = fresh();
    let pool = img.sb.pool_uuid;
    let (dir_page, rec) = records(&img)
        .into_iter()
        .find(|(_, r)| r.name == "vd0")
        .unwrap();
    let d = decode_directory(img.page(dir_page), dir_page, &pool, METADATA_PAGES).unwrap();
    let k = d.records.iter().position(|r| r.id == rec.id).unwrap();
    let used: HashSet<u64> = img.kinds.keys().copied().collect();
    let free: Vec<u64> = (img.sb.node_first_page()..img.sb.meta_pages)
        .filter(|p| img.sb.in_node_area(*p) && !used.contains(p))
        .take(18)
        .collect();
    assert_eq!(free.len(), 18);
    let mut child = d.roots[k];
    let txn = img.sb.txn;
    for &p in &free {
        let b = encode_internal(p, txn, &pool, &[(0, child)]);
        child = BlockPtr::of(&b);
        img.set_page(p, &b);
    }
    let mut d2 = d.clone();
    d2.roots[k] = child;
    d2.records[k].root_page = child.page;
    img.replace_page(dir_page, &image::encode_dir(dir_page, &pool, &d2));
    refused(&img.bytes, &["leads deeper than 16 levels"]);
}

/// Rewrites the directory page with `f` applied to it.
fn craft_directory(
    f: impl FnOnce(&PoolImage, &mut tessera::vdisk::meta::directory::DirectoryPage),
) -> (PoolImage, u64) {
    let mut img = fresh();
    let p = img.pages(PageKind::Directory)[0];
    let mut d = decode_directory(img.page(p), p, &img.sb.pool_uuid, METADATA_PAGES).unwrap();
    f(&img, &mut d);
    let b = image::encode_dir(p, &img.sb.pool_uuid, &d);
    img.replace_page(p, &b);
    (img, p)
}

#[test]
fn crafted_directory_records_are_refused() {
    let named = |d: &tessera::vdisk::meta::directory::DirectoryPage, n: &str| {
        d.records.iter().position(|r| r.name == n).unwrap()
    };
    let (img, p) = craft_directory(|_, d| {
        let (a, b) = (named(d, "empty"), named(d, "vd0"));
        d.records[a].id = d.records[b].id;
    });
    refused(
        &img.bytes,
        &[
            &format!("metadata page {p}: id: disk `"),
            "is used by another disk too",
        ],
    );
    let (img, p) = craft_directory(|img, d| {
        let a = named(d, "empty");
        d.records[a].id = img.sb.next_disk_id;
    });
    refused(
        &img.bytes,
        &[
            &format!("metadata page {p}: id: disk `empty`: id"),
            "is not below next_disk_id",
        ],
    );
    let (img, p) = craft_directory(|_, d| {
        let a = named(d, "empty");
        d.records[a].name = "vd0".into();
    });
    refused(
        &img.bytes,
        &[&format!(
            "metadata page {p}: name: disk `vd0`: the name appears twice"
        )],
    );
    let (img, p) = craft_directory(|_, d| {
        let a = named(d, "work");
        d.records[a].parent = 99;
    });
    refused(
        &img.bytes,
        &[&format!(
            "metadata page {p}: parent: disk `work`: parent id 99 does not exist"
        )],
    );
    let (img, p) = craft_directory(|img, d| {
        let a = named(d, "work");
        d.records[a].snap_gen = img.sb.generation + 1;
    });
    refused(
        &img.bytes,
        &[&format!(
            "metadata page {p}: snap_gen: disk `work`: generation"
        )],
    );
    let (img, p) = craft_directory(|img, d| {
        let a = named(d, "work");
        d.roots[a] = BlockPtr::of(img.page(1));
        d.records[a].root_page = 1;
    });
    refused(
        &img.bytes,
        &[&format!(
            "metadata page {p}: root: disk `work`: its table root, page 1, lies outside the node area"
        )],
    );
    // Two disks writing one segment: `empty` given `vd0`'s table.
    let (img, _) = craft_directory(|_, d| {
        let (a, b) = (named(d, "empty"), named(d, "vd0"));
        d.roots[a] = d.roots[b];
        d.records[a].root_page = d.roots[b].page;
        d.records[a].size_blocks = d.records[b].size_blocks;
    });
    refused(
        &img.bytes,
        &["has two owners: writable by `", "writable by `empty`"],
    );
}

#[test]
fn crafted_superblocks_are_refused_before_anything_is_allocated() {
    let img = fresh();
    let (new_at, _) = slots(&img);
    let slot = slot_name(&img, true);
    let with = |f: &dyn Fn(&mut tessera::vdisk::meta::superblock::Superblock)| {
        let mut sb = img.sb.clone();
        f(&mut sb);
        let mut b = img.bytes.clone();
        b[new_at..new_at + PAGE_BYTES].copy_from_slice(&sb.encode());
        b
    };
    let at = |field: &str| format!("superblock slot {slot}: {field}: ");
    // Fewer space-map pages than segments need: their writes would land on table pages.
    refused(&with(&|s| s.sm_pages = 0), &[&at("sm_pages")]);
    // A metadata area of petabytes: refused, not allocated.
    refused(&with(&|s| s.meta_pages = 1 << 40), &[&at("meta_pages")]);
    // A container larger than its device.
    refused(
        &with(&|s| s.containers[0].segments = 1000),
        &["bdev `image` is smaller than the 1000 segments pool `fuzz` records for it"],
    );
    refused(
        &with(&|s| s.containers[0].segments = u64::MAX),
        &[&at("containers")],
    );
    refused(
        &with(&|s| s.containers[0].reserved_segments = 384),
        &[&at("containers")],
    );
    // The directory in the space-map area.
    refused(&with(&|s| s.directory.page = 1), &[&at("directory")]);
    // The metadata said to be on a separate bdev.
    refused(
        &with(&|s| s.separate_metadata = true),
        &[
            "holds the metadata as DataAndMetadata, but the superblock records a separate metadata bdev",
        ],
    );
}

#[test]
fn crafted_space_maps_are_reported_and_rebuilt() {
    let img = fresh();
    let pool = img.sb.pool_uuid;
    let index = img.pages(PageKind::SpaceMapIndex)[0];
    let sm = img.pages(PageKind::SpaceMap)[0];
    // An index entry pointing at a page that is not one of its places.
    let mut b = img.clone();
    let mut entries = decode_sm_index(b.page(index), index, &pool, 0, 1).unwrap();
    entries[0].page = 9;
    let enc = encode_sm_index(index, txn_of(&b, index), &pool, 0, &entries);
    b.replace_page(index, &enc);
    rebuilt(
        &b.bytes,
        &[&format!(
            "metadata page {index}: pointer: entry 0 points at page 9"
        )],
    );
    // A space-map page with too few counts.
    let mut b = img.clone();
    let enc = encode_space_map(sm, txn_of(&b, sm), &pool, 0, &[u32::MAX; 3]);
    b.replace_page(sm, &enc);
    rebuilt(
        &b.bytes,
        &[&format!(
            "metadata page {sm}: count: 3 counts for space-map page 0, expected 384"
        )],
    );
    // Counts that disagree with the tables.
    let mut b = img.clone();
    let mut counts = vec![u32::MAX; 6];
    counts.extend(std::iter::repeat_n(7, 378));
    let enc = encode_space_map(sm, txn_of(&b, sm), &pool, 0, &counts);
    b.replace_page(sm, &enc);
    rebuilt(
        &b.bytes,
        &[&format!(
            "segment 6: the space map (page {sm}) says 7 references, the tables hold"
        )],
    );
}
