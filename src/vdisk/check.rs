//! The offline consistency check behind `tessera check` (like `thin_check`): reads every
//! label, superblock, directory, table and space-map page of a closed pool and reports
//! every problem it finds with its location, instead of stopping at the first.
//!
//! It verifies: checksums, page self-addresses and kinds; that no page serves two
//! purposes; key order and that extents stay inside their node's span; that every
//! segment a table references exists and is not reserved; that each segment is
//! referenced exactly as often as the persisted space map says (once per distinct leaf);
//! and that no segment has two owners — a segment that a disk may write (its writable
//! top layer) is referenced by that one leaf only.

use super::alloc::RESERVED;
use super::load::{read_bytes, read_label};
use super::meta::directory::DiskRecord;
use super::meta::label::{Label, Role};
use super::meta::space_map::SM_COUNTS_PER_PAGE;
use super::meta::superblock::Superblock;
use super::meta::{self, NO_PAGE, PAGE_BYTES, SUPERBLOCK_OFFSET};
use crate::bdev::Bdev;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// What the check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub pool: String,
    pub txn: u64,
    pub disks: usize,
    pub node_pages: usize,
    pub extents: usize,
    pub segments_referenced: usize,
    /// Every problem, each naming where it is.
    pub errors: Vec<String>,
    /// Observations that are not corruption (a torn superblock slot after a crash).
    pub notes: Vec<String>,
}

impl CheckReport {
    /// True when no error was found.
    pub fn clean(&self) -> bool {
        self.errors.is_empty()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Use {
    Directory,
    Internal,
    Leaf,
}

/// Checks the pool held by `bdevs` (its containers and metadata bdev). Must run on a
/// reactor. The pool must not be open.
pub async fn check(bdevs: Vec<Arc<dyn Bdev>>) -> CheckReport {
    let mut r = CheckReport::default();
    let mut labelled: Vec<(Arc<dyn Bdev>, Label)> = Vec::new();
    for b in &bdevs {
        match read_label(b).await {
            Ok(Some(l)) => labelled.push((b.clone(), l)),
            Ok(None) => r
                .errors
                .push(format!("bdev `{}`: no tessera label at byte 0", b.name())),
            Err(e) => r.errors.push(format!("bdev `{}`: {e}", b.name())),
        }
    }
    let Some(meta_bdev) = labelled
        .iter()
        .find(|(_, l)| l.role == Role::Metadata)
        .or_else(|| {
            labelled
                .iter()
                .find(|(_, l)| l.role == Role::DataAndMetadata)
        })
        .map(|(b, _)| b.clone())
    else {
        r.errors.push("no bdev holds the pool's metadata".into());
        return r;
    };
    // Superblocks.
    let sbs = match read_bytes(&meta_bdev, SUPERBLOCK_OFFSET, 2 * PAGE_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            r.errors.push(format!(
                "`{}`: cannot read the superblocks: {e:?}",
                meta_bdev.name()
            ));
            return r;
        }
    };
    let a = Superblock::decode(&sbs[..PAGE_BYTES], "A");
    let b = Superblock::decode(&sbs[PAGE_BYTES..], "B");
    let sb = match (a, b) {
        (Ok(a), Ok(b)) => {
            if a.txn.abs_diff(b.txn) != 1 {
                r.notes.push(format!(
                    "superblock slots hold transactions {} and {}",
                    a.txn, b.txn
                ));
            }
            if a.txn >= b.txn { a } else { b }
        }
        (Ok(s), Err(e)) | (Err(e), Ok(s)) => {
            if !matches!(e, meta::MetaError::NoLabel { .. }) {
                r.notes.push(format!("{e} (the other slot is used)"));
            }
            s
        }
        (Err(e1), Err(e2)) => {
            r.errors.push(format!("no valid superblock: {e1}; {e2}"));
            return r;
        }
    };
    r.pool = sb.pool_name.clone();
    r.txn = sb.txn;
    // Containers and segment space.
    let mut reserved = HashSet::new();
    let mut total = 0u64;
    for (i, c) in sb.containers.iter().enumerate() {
        let found = labelled.iter().any(|(_, l)| {
            l.role != Role::Metadata && l.container_index == i as u32 && l.bdev_uuid == c.bdev_uuid
        });
        if !found {
            r.errors.push(format!(
                "container {i} (bdev uuid {}) is not among the bdevs checked",
                c.bdev_uuid
            ));
        }
        for s in total..total + c.reserved_segments {
            reserved.insert(s);
        }
        total += c.segments;
    }
    let uuid = sb.pool_uuid;
    let mut page_use: HashMap<u64, Use> = HashMap::new();
    let read_page = |p: u64| {
        let bdev = meta_bdev.clone();
        let off = sb.meta_first_byte + p * PAGE_BYTES as u64;
        async move { read_bytes(&bdev, off, PAGE_BYTES).await }
    };
    // Directory.
    let mut records: Vec<DiskRecord> = Vec::new();
    let mut next = sb.directory_head;
    while next != NO_PAGE {
        if page_use.contains_key(&next) {
            r.errors
                .push(format!("metadata page {next}: the directory chain loops"));
            break;
        }
        if next < 2 * sb.sm_pages {
            r.errors.push(format!(
                "metadata page {next}: directory page inside the space-map area"
            ));
        }
        page_use.insert(next, Use::Directory);
        let buf = match read_page(next).await {
            Ok(b) => b,
            Err(e) => {
                r.errors
                    .push(format!("metadata page {next}: unreadable ({e:?})"));
                break;
            }
        };
        match meta::directory::decode_directory(&buf, next, &uuid, sb.meta_pages) {
            Ok((recs, n)) => {
                records.extend(recs);
                next = n;
            }
            Err(e) => {
                r.errors.push(e.to_string());
                break;
            }
        }
    }
    r.disks = records.len();
    let mut names = HashSet::new();
    for d in &records {
        if !names.insert(d.name.clone()) {
            r.errors
                .push(format!("directory: disk name `{}` appears twice", d.name));
        }
        if d.parent != 0 && !records.iter().any(|o| o.id == d.parent) {
            r.errors.push(format!(
                "disk `{}`: parent id {} does not exist",
                d.name, d.parent
            ));
        }
    }
    // Tables: count references per segment, once per distinct leaf page.
    let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
    let mut leaves_seen: HashSet<u64> = HashSet::new();
    let mut writable_tops: Vec<(String, u64, u64)> = Vec::new();
    for d in &records {
        if d.root_page == NO_PAGE {
            continue;
        }
        // (page, span lo, span hi)
        let mut stack = vec![(d.root_page, 0u64, u64::MAX, 0usize)];
        while let Some((p, lo, hi, depth)) = stack.pop() {
            if depth > 16 {
                r.errors.push(format!(
                    "disk `{}`: the table is deeper than 16 levels at page {p}",
                    d.name
                ));
                continue;
            }
            if p < 2 * sb.sm_pages || p >= sb.meta_pages {
                r.errors.push(format!(
                    "disk `{}`: node page {p} lies outside the node area",
                    d.name
                ));
                continue;
            }
            let buf = match read_page(p).await {
                Ok(b) => b,
                Err(e) => {
                    r.errors
                        .push(format!("metadata page {p}: unreadable ({e:?})"));
                    continue;
                }
            };
            let kind = buf.get(4).copied().unwrap_or(0);
            let this = if kind == meta::PageKind::Internal as u8 {
                Use::Internal
            } else {
                Use::Leaf
            };
            if let Some(&prev) = page_use.get(&p) {
                if prev != this {
                    r.errors.push(format!(
                        "metadata page {p}: used as {prev:?} and as {this:?}"
                    ));
                }
                if this == Use::Leaf || prev == Use::Internal {
                    // A shared subtree: already checked and counted.
                    continue;
                }
            }
            page_use.insert(p, this);
            r.node_pages += 1;
            if this == Use::Internal {
                match meta::node::decode_internal(&buf, p, &uuid, sb.meta_pages) {
                    Ok(entries) => {
                        for (i, &(k, c)) in entries.iter().enumerate() {
                            let clo = if i == 0 { lo } else { k };
                            if i > 0 && k < lo {
                                r.errors.push(format!(
                                    "metadata page {p}: key {k} below the node's span start {lo}"
                                ));
                            }
                            let chi = entries.get(i + 1).map_or(hi, |e| e.0);
                            stack.push((c, clo, chi, depth + 1));
                        }
                    }
                    Err(e) => r.errors.push(format!("disk `{}`: {e}", d.name)),
                }
                continue;
            }
            match meta::node::decode_leaf(&buf, p, &uuid, total) {
                Ok(exts) => {
                    let first_time = leaves_seen.insert(p);
                    for e in &exts {
                        r.extents += 1;
                        if e.vseg < lo || e.vseg + e.len as u64 > hi {
                            r.errors.push(format!(
                                "metadata page {p}: extent at segment {} crosses the leaf's span [{lo}, {hi})",
                                e.vseg
                            ));
                        }
                        if e.vseg * (sb.segment_bytes / sb.block_size as u64) >= d.size_blocks
                            && !e.error
                        {
                            r.notes.push(format!(
                                "disk `{}`: extent at segment {} lies beyond its size",
                                d.name, e.vseg
                            ));
                        }
                        let run = e.len > 1;
                        for (li, (seg, words)) in e.layers.iter().enumerate() {
                            let span = if run { e.len as u64 } else { 1 };
                            for s in *seg..seg + span {
                                if reserved.contains(&s) {
                                    r.errors.push(format!(
                                        "metadata page {p}: references reserved segment {s}"
                                    ));
                                }
                                if first_time {
                                    *counts.entry(s).or_default() += 1;
                                }
                            }
                            if li == 0 && e.birth > d.snap_gen && !e.error {
                                for s in *seg..seg + span {
                                    writable_tops.push((d.name.clone(), e.vseg, s));
                                }
                            }
                            let _ = words;
                        }
                    }
                }
                Err(e) => r.errors.push(format!("disk `{}`: {e}", d.name)),
            }
        }
    }
    r.segments_referenced = counts.len();
    // No two owners.
    let mut owners: HashMap<u64, (String, u64)> = HashMap::new();
    for (name, vseg, s) in writable_tops {
        if let Some((other, ov)) = owners.get(&s) {
            r.errors.push(format!(
                "segment {s} has two owners: writable by `{other}` at segment {ov} and by `{name}` at segment {vseg}"
            ));
        } else {
            owners.insert(s, (name.clone(), vseg));
        }
        let c = counts.get(&s).copied().unwrap_or(0);
        if c != 1 {
            r.errors.push(format!(
                "segment {s}: writable by `{name}` at segment {vseg} but referenced by {c} leaves"
            ));
        }
    }
    // The persisted space map agrees with the tables.
    for i in 0..sb.sm_pages {
        let mut pick: Option<(u64, Vec<u32>)> = None;
        for copy in 0..2 {
            let p = copy * sb.sm_pages + i;
            match read_page(p).await {
                Ok(buf) => match meta::space_map::decode_space_map(&buf, p, &uuid, i) {
                    Ok((txn, c)) if txn <= sb.txn => {
                        if pick.as_ref().is_none_or(|(t, _)| txn > *t) {
                            pick = Some((txn, c));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => r.notes.push(format!("space map copy {copy}: {e}")),
                },
                Err(e) => r
                    .errors
                    .push(format!("metadata page {p}: unreadable ({e:?})")),
            }
        }
        let Some((_, persisted)) = pick else {
            r.errors.push(format!(
                "space-map page {i}: no copy written by a committed transaction"
            ));
            continue;
        };
        for (k, &pc) in persisted.iter().enumerate() {
            let s = (i as usize * SM_COUNTS_PER_PAGE + k) as u64;
            if s >= total {
                break;
            }
            let want = if reserved.contains(&s) {
                RESERVED
            } else {
                counts.get(&s).copied().unwrap_or(0)
            };
            if pc != want {
                r.errors.push(format!(
                    "segment {s}: the space map says {} references, the tables hold {}",
                    if pc == RESERVED {
                        "reserved".to_string()
                    } else {
                        pc.to_string()
                    },
                    if want == RESERVED {
                        "reserved".to_string()
                    } else {
                        want.to_string()
                    }
                ));
            }
        }
    }
    r
}
