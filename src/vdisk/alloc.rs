//! Space accounting for a pool: segment reference counts and the free segments, the
//! free metadata pages, and the table nodes that will need a page at the next commit.
//! Controller-only state.
//!
//! **Deferred reuse.** A segment or page whose last reference goes away is not free at
//! once: the last committed metadata may still point at it, and an agent may still have
//! I/O in flight against it. It waits in the list of the transaction that is open when it
//! is freed, and becomes allocatable only when that transaction has committed — after the
//! commit's pool-wide drain barrier (see `controller`). So a segment that is reused never
//! shows its previous contents to its new owner, not even after a crash.

use super::map::PhysSeg;
use super::meta::space_map::{SM_COUNTS_PER_PAGE, SegmentCounts};
use super::table::RefCounts;
use std::collections::{BTreeMap, HashMap};

/// Marks a segment that is never allocated (labels, metadata area).
pub const RESERVED: u32 = u32::MAX;

/// A segment's count as [`Space`] keeps it: one byte a segment (issue 18: memory per
/// mapped extent; a 4 TiB pool of 1 MiB segments holds 4 Mi of them, and four bytes each
/// were 16 MiB), the rare count past [`BYTE_MAX`] in a side table.
type CountByte = u8;
/// The largest count a byte holds.
const BYTE_MAX: u32 = 253;
/// The byte of a count kept in the side table.
const BYTE_WIDE: CountByte = 254;
/// The byte of a reserved segment.
const BYTE_RESERVED: CountByte = 255;

/// A set of indices with allocation from a rotating cursor.
#[derive(Debug, Clone)]
struct FreeSet {
    words: Vec<u64>,
    len: u64,
    count: u64,
    cursor: u64,
}

impl FreeSet {
    fn new(len: u64) -> FreeSet {
        FreeSet {
            words: vec![0; len.div_ceil(64) as usize],
            len,
            count: 0,
            cursor: 0,
        }
    }

    fn insert(&mut self, i: u64) {
        let (w, b) = ((i / 64) as usize, i % 64);
        if self.words[w] & (1 << b) == 0 {
            self.words[w] |= 1 << b;
            self.count += 1;
        }
    }

    fn remove(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        let had = self.words[w] & (1 << b) != 0;
        if had {
            self.words[w] &= !(1 << b);
            self.count -= 1;
        }
        had
    }

    /// Lengthens the set to `len` members' room; the new ones are not members.
    fn grow(&mut self, len: u64) {
        if len > self.len {
            self.words.resize(len.div_ceil(64) as usize, 0);
            self.len = len;
        }
    }

    fn contains(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// The first member at or after the cursor (wrapping).
    fn first_from_cursor(&self) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let nw = self.words.len();
        let start = (self.cursor / 64) as usize;
        for k in 0..=nw {
            let w = (start + k) % nw;
            let mut bits = self.words[w];
            if k == 0 {
                bits &= u64::MAX << (self.cursor % 64);
            }
            if bits != 0 {
                return Some(w as u64 * 64 + bits.trailing_zeros() as u64);
            }
        }
        // Members below the cursor in its own word.
        let w = start;
        let bits = self.words[w] & !(u64::MAX << (self.cursor % 64));
        (bits != 0).then(|| w as u64 * 64 + bits.trailing_zeros() as u64)
    }

    fn take(&mut self) -> Option<u64> {
        let i = self.first_from_cursor()?;
        self.remove(i);
        self.cursor = (i + 1) % self.len.max(1);
        Some(i)
    }

    /// Takes up to `max` consecutive members starting at the first one found.
    fn take_run(&mut self, max: u64) -> Option<(u64, u64)> {
        let first = self.first_from_cursor()?;
        let mut n = 0;
        while n < max && first + n < self.len && self.contains(first + n) {
            self.remove(first + n);
            n += 1;
        }
        self.cursor = (first + n) % self.len.max(1);
        Some((first, n))
    }
}

/// Free segments, one set per container; allocation goes round-robin over the
/// containers so that a pool's I/O spreads over all of them.
#[derive(Debug)]
struct Striped {
    /// (first global segment, free set) per container.
    parts: Vec<(u64, FreeSet)>,
    next: usize,
}

impl Striped {
    fn part(&mut self, seg: u64) -> (&mut FreeSet, u64) {
        let i = self.parts.partition_point(|(f, _)| *f <= seg) - 1;
        let (first, set) = &mut self.parts[i];
        (set, seg - *first)
    }
    fn insert(&mut self, seg: u64) {
        let (set, i) = self.part(seg);
        set.insert(i);
    }
    fn remove(&mut self, seg: u64) -> bool {
        let (set, i) = self.part(seg);
        set.remove(i)
    }
    fn count(&self) -> u64 {
        self.parts.iter().map(|(_, s)| s.count).sum()
    }
    fn take(&mut self) -> Option<u64> {
        let n = self.parts.len();
        for k in 0..n {
            let c = (self.next + k) % n;
            let (first, set) = &mut self.parts[c];
            if let Some(i) = set.take() {
                self.next = (c + 1) % n;
                return Some(*first + i);
            }
        }
        None
    }
    fn take_run(&mut self, max: u64) -> Option<(u64, u64)> {
        let n = self.parts.len();
        for k in 0..n {
            let c = (self.next + k) % n;
            let (first, set) = &mut self.parts[c];
            if let Some((i, got)) = set.take_run(max) {
                self.next = (c + 1) % n;
                return Some((*first + i, got));
            }
        }
        None
    }
}

/// Segment and page space of a pool.
#[derive(Debug)]
pub struct Space {
    /// A byte per segment: the count, [`BYTE_WIDE`] or [`BYTE_RESERVED`].
    refs: Vec<CountByte>,
    /// The counts past [`BYTE_MAX`].
    wide: HashMap<PhysSeg, u32>,
    free_segs: Striped,
    free_pages: FreeSet,
    pending_segs: BTreeMap<u64, Vec<PhysSeg>>,
    pending_pages: BTreeMap<u64, Vec<u64>>,
    /// Per space-map page: the transaction in which one of its counts last changed.
    sm_changed: Vec<u64>,
    /// The transaction that the next commit captures; frees land in its list.
    pub txn_open: u64,
    data_segments: u64,
    /// Table nodes built since they were last committed: each needs a metadata page at
    /// the next commit.
    unwritten: u64,
    /// Segments a grow added that are not allocatable yet: `[from, total)`, until the
    /// commit recording the new size is durable ([`Space::release_grown`]).
    grown_from: Option<u64>,
    /// The first page of the node area (those before it are fixed).
    first_node_page: u64,
}

/// What a metadata page is to the space map ([`Space::page_use`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageUse {
    /// Fixed: before the node area (superblocks, space map).
    Fixed,
    /// Free to be allocated.
    Free,
    /// Freed in this transaction (or an earlier one not yet committed): allocatable once
    /// it is.
    Pending(u64),
    /// Allocated.
    Used,
}

impl Space {
    /// Space for containers of the given segment counts (in order), whose `reserved`
    /// segments are never allocated, and `meta_pages` metadata pages of which the first
    /// `first_free_page` are fixed.
    pub fn new(
        containers: &[u64],
        reserved: &[PhysSeg],
        meta_pages: u64,
        first_free_page: u64,
        txn_open: u64,
    ) -> Space {
        let total_segments: u64 = containers.iter().sum();
        let mut refs = vec![0 as CountByte; total_segments as usize];
        for &r in reserved {
            refs[r as usize] = BYTE_RESERVED;
        }
        let mut parts = Vec::new();
        let mut first = 0;
        for &n in containers {
            parts.push((first, FreeSet::new(n)));
            first += n;
        }
        let mut free_segs = Striped { parts, next: 0 };
        for (i, &r) in refs.iter().enumerate() {
            if r == 0 {
                free_segs.insert(i as u64);
            }
        }
        let mut free_pages = FreeSet::new(meta_pages);
        for p in first_free_page..meta_pages {
            free_pages.insert(p);
        }
        Space {
            data_segments: total_segments - reserved.len() as u64,
            refs,
            wide: HashMap::new(),
            free_segs,
            free_pages,
            pending_segs: BTreeMap::new(),
            pending_pages: BTreeMap::new(),
            sm_changed: vec![0; (total_segments as usize).div_ceil(SM_COUNTS_PER_PAGE)],
            txn_open,
            unwritten: 0,
            grown_from: None,
            first_node_page: first_free_page,
        }
    }

    /// Grows the last container to `segments` (more than it has): the new segments are
    /// counted, free (count 0), and their space-map pages changed in the open
    /// transaction, so the next checkpoint writes them; but none is allocatable before
    /// [`Space::release_grown`] — a segment handed out before the superblock recording
    /// the new size is durable could be named by a log record that a crash then replays
    /// onto the old size.
    pub fn grow_last(&mut self, segments: u64) {
        let Some((_, set)) = self.free_segs.parts.last_mut() else {
            return;
        };
        if segments <= set.len {
            return;
        }
        let added = segments - set.len;
        set.grow(segments);
        let old_total = self.refs.len() as u64;
        let new_total = old_total + added;
        self.refs.resize(new_total as usize, 0);
        let per = SM_COUNTS_PER_PAGE as u64;
        self.sm_changed.resize(new_total.div_ceil(per) as usize, 0);
        for p in old_total / per..new_total.div_ceil(per) {
            self.sm_changed[p as usize] = self.txn_open;
        }
        self.data_segments += added;
        self.grown_from.get_or_insert(old_total);
    }

    /// Makes the segments grown since the last release, below `upto`, allocatable (a
    /// checkpoint recorded them); returns how many.
    pub fn release_grown(&mut self, upto: PhysSeg) -> u64 {
        let Some(from) = self.grown_from else {
            return 0;
        };
        let upto = upto.min(self.refs.len() as u64);
        self.grown_from = (upto < self.refs.len() as u64).then_some(upto.max(from));
        let mut n = 0;
        for s in from..upto {
            if self.refs[s as usize] == 0 {
                self.free_segs.insert(s);
                n += 1;
            }
        }
        n
    }

    /// Segments of each container (the last one's as grown).
    pub fn container_segments(&self) -> Vec<u64> {
        self.free_segs.parts.iter().map(|(_, s)| s.len).collect()
    }

    /// Sets the reference count of a segment found by the loader (not free any more).
    pub fn load_segment(&mut self, seg: PhysSeg, count: u32) {
        self.set_count(seg, count);
        if count > 0 {
            self.free_segs.remove(seg);
        }
    }

    /// Marks a page used by the loaded state.
    pub fn load_page(&mut self, page: u64) -> bool {
        self.free_pages.remove(page)
    }

    /// Total segments (including reserved ones).
    pub fn total_segments(&self) -> u64 {
        self.refs.len() as u64
    }

    /// Segments that hold data or could.
    pub fn data_segments(&self) -> u64 {
        self.data_segments
    }

    /// Segments that can be allocated now.
    pub fn free_segments(&self) -> u64 {
        self.free_segs.count()
    }

    /// Segments holding data or waiting for a commit to be reused.
    pub fn segments_in_use(&self) -> u64 {
        self.data_segments.saturating_sub(self.free_segs.count())
    }

    /// Segments waiting for a commit before they can be reused.
    pub fn pending_segments(&self) -> u64 {
        self.pending_segs.values().map(|v| v.len() as u64).sum()
    }

    /// Metadata pages that can be allocated now.
    pub fn free_pages(&self) -> u64 {
        self.free_pages.count
    }

    /// Reference count of a segment ([`RESERVED`] for reserved ones).
    pub fn refs(&self, seg: PhysSeg) -> u32 {
        match self.refs[seg as usize] {
            BYTE_RESERVED => RESERVED,
            BYTE_WIDE => self.wide[&seg],
            n => n as u32,
        }
    }

    /// Sets the count of `seg` (or marks it [`RESERVED`]).
    fn set_count(&mut self, seg: PhysSeg, count: u32) {
        let b = &mut self.refs[seg as usize];
        if *b == BYTE_WIDE {
            self.wide.remove(&seg);
        }
        *b = match count {
            RESERVED => BYTE_RESERVED,
            n if n > BYTE_MAX => {
                self.wide.insert(seg, n);
                BYTE_WIDE
            }
            n => n as CountByte,
        };
    }

    /// True if `seg` may be handed out by the next allocation.
    pub fn allocatable(&self, seg: PhysSeg) -> bool {
        (self.free_segs.parts.iter()).any(|(first, set)| seg >= *first && set.contains(seg - first))
    }

    /// Allocates one segment (its count stays 0 until a leaf references it).
    pub fn alloc_segment(&mut self) -> Option<PhysSeg> {
        self.free_segs.take()
    }

    /// Allocates up to `max` contiguous segments: (first, count).
    pub fn alloc_run(&mut self, max: u64) -> Option<(PhysSeg, u64)> {
        self.free_segs.take_run(max)
    }

    /// Returns a segment allocated but never referenced.
    pub fn unalloc_segment(&mut self, seg: PhysSeg) {
        debug_assert_eq!(self.refs(seg), 0);
        self.free_segs.insert(seg);
    }

    /// Takes `n` consecutive free metadata pages (the first of them), the lowest such
    /// run; `None` if there is none (or `n` is 0).
    pub fn take_page_run(&mut self, n: u64) -> Option<u64> {
        if n == 0 {
            return None;
        }
        let set = &mut self.free_pages;
        let mut run = 0;
        for p in 0..set.len {
            if set.contains(p) {
                run += 1;
                if run == n {
                    let first = p + 1 - n;
                    for q in first..=p {
                        set.remove(q);
                    }
                    return Some(first);
                }
            } else {
                run = 0;
            }
        }
        None
    }

    /// The metadata pages of the node area: tables, directory and log.
    pub fn node_area(&self) -> std::ops::Range<u64> {
        self.first_node_page..self.free_pages.len
    }

    /// What `page` is to the space map (the audit, `vdisk/audit.rs`).
    pub fn page_use(&self, page: u64) -> PageUse {
        if page < self.first_node_page {
            return PageUse::Fixed;
        }
        if self.free_pages.contains(page) {
            return PageUse::Free;
        }
        match (self.pending_pages.iter()).find(|(_, pages)| pages.contains(&page)) {
            Some((&txn, _)) => PageUse::Pending(txn),
            None => PageUse::Used,
        }
    }

    /// Allocates a metadata page.
    pub fn alloc_page(&mut self) -> Option<u64> {
        self.free_pages.take()
    }

    /// Metadata pages the table nodes built since the last commit may take when it
    /// writes them (`table::NodeKind::pages_to_write`).
    pub fn unwritten_nodes(&self) -> u64 {
        self.unwritten
    }

    /// A node that may take `pages` was written (a commit writes it).
    pub fn node_written(&mut self, pages: u64) {
        self.unwritten = self.unwritten.saturating_sub(pages);
    }

    /// Makes what was freed up to and including `txn` allocatable (that transaction has
    /// committed and the pool has been drained).
    pub fn committed(&mut self, txn: u64) {
        let later = self.pending_segs.split_off(&(txn + 1));
        for (_, segs) in std::mem::replace(&mut self.pending_segs, later) {
            for s in segs {
                if self.refs[s as usize] == 0 {
                    self.free_segs.insert(s);
                }
            }
        }
        let later = self.pending_pages.split_off(&(txn + 1));
        for (_, pages) in std::mem::replace(&mut self.pending_pages, later) {
            for p in pages {
                self.free_pages.insert(p);
            }
        }
    }

    /// Space-map pages whose counts changed at or after `since`.
    pub fn sm_pages_changed_since(&self, since: u64) -> impl Iterator<Item = u64> + '_ {
        self.sm_changed
            .iter()
            .enumerate()
            .filter(move |(_, t)| **t >= since)
            .map(|(i, _)| i as u64)
    }

    /// Marks every space-map page as changed (format, after load).
    pub fn touch_all_sm(&mut self) {
        let t = self.txn_open;
        self.sm_changed.iter_mut().for_each(|c| *c = t);
    }
}

impl SegmentCounts for Space {
    fn segments(&self) -> usize {
        self.refs.len()
    }
    fn copy_counts(&self, lo: usize, hi: usize, out: &mut Vec<u32>) {
        out.extend((lo..hi).map(|s| self.refs(s as PhysSeg)));
    }
}

impl RefCounts for Space {
    fn seg_add(&mut self, seg: PhysSeg, delta: i64) {
        let was = self.refs(seg);
        assert!(
            was != RESERVED,
            "reserved segment {seg} referenced by a table"
        );
        let new = was as i64 + delta;
        assert!(new >= 0, "segment {seg} reference count below zero");
        assert!(
            new < RESERVED as i64,
            "segment {seg} reference count past {}",
            RESERVED - 1
        );
        self.set_count(seg, new as u32);
        if was == 0 && new > 0 {
            // Allocated already, except when the log is replayed: referenced, not free.
            self.free_segs.remove(seg);
        }
        self.sm_changed[seg as usize / SM_COUNTS_PER_PAGE] = self.txn_open;
        if new == 0 {
            self.pending_segs
                .entry(self.txn_open)
                .or_default()
                .push(seg);
        }
    }

    fn page_free(&mut self, page: u64) {
        self.pending_pages
            .entry(self.txn_open)
            .or_default()
            .push(page);
    }

    fn node_built(&mut self, pages: u64) {
        self.unwritten += pages;
    }

    fn unwritten_freed(&mut self, pages: u64) {
        self.unwritten = self.unwritten.saturating_sub(pages);
    }
}

impl Space {
    /// Frees a page referenced only by the committed state (old directory pages).
    pub fn retire_page(&mut self, page: u64, txn: u64) {
        self.pending_pages.entry(txn).or_default().push(page);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_use_names_each_state() {
        let mut s = Space::new(&[10], &[0], 100, 4, 5);
        assert_eq!(s.node_area(), 4..100);
        assert_eq!(s.page_use(3), PageUse::Fixed);
        assert_eq!(s.page_use(4), PageUse::Free);
        let p = s.alloc_page().unwrap();
        assert_eq!(s.page_use(p), PageUse::Used);
        s.page_free(p);
        assert_eq!(s.page_use(p), PageUse::Pending(5));
        s.committed(5);
        assert_eq!(s.page_use(p), PageUse::Free);
    }

    #[test]
    fn frees_wait_for_their_commit() {
        let mut s = Space::new(&[10], &[0, 1], 100, 4, 5);
        assert_eq!(s.free_segments(), 8);
        let a = s.alloc_segment().unwrap();
        assert!(a >= 2);
        s.seg_add(a, 1);
        s.seg_add(a, -1);
        assert_eq!(s.free_segments(), 7, "freed in txn 5: not reusable yet");
        s.txn_open = 6;
        s.committed(4);
        assert_eq!(s.free_segments(), 7);
        s.committed(5);
        assert_eq!(s.free_segments(), 8);
        // Pages likewise.
        let p = s.alloc_page().unwrap();
        assert!(p >= 4);
        s.page_free(p);
        assert_eq!(s.free_pages(), 95);
        s.committed(6);
        assert_eq!(s.free_pages(), 96);
    }

    #[test]
    fn runs_and_exhaustion() {
        let mut s = Space::new(&[64], &[0], 10, 0, 1);
        let (first, n) = s.alloc_run(10).unwrap();
        assert_eq!((first, n), (1, 10));
        let mut got = 10;
        while s.alloc_segment().is_some() {
            got += 1;
        }
        assert_eq!(got, 63);
        assert!(s.alloc_run(4).is_none());
        s.unalloc_segment(5);
        assert_eq!(s.alloc_segment(), Some(5));
    }

    #[test]
    fn allocation_stripes_over_containers() {
        let mut s = Space::new(&[4, 4, 4], &[0, 4, 8], 1, 0, 1);
        let got: Vec<u64> = (0..9).map(|_| s.alloc_segment().unwrap()).collect();
        assert_eq!(got, vec![1, 5, 9, 2, 6, 10, 3, 7, 11]);
        assert!(s.alloc_segment().is_none());
    }

    #[test]
    fn grown_segments_wait_for_their_release() {
        let per = SM_COUNTS_PER_PAGE as u64;
        let mut s = Space::new(&[4, per - 2], &[0, 4], 1, 0, 3);
        while s.alloc_segment().is_some() {}
        s.txn_open = 7;
        s.grow_last(per + 6);
        assert_eq!(s.total_segments(), per + 10);
        assert_eq!(s.container_segments(), vec![4, per + 6]);
        assert_eq!(s.data_segments(), per + 8);
        assert_eq!(
            s.free_segments(),
            0,
            "nothing allocatable before the release"
        );
        assert!(s.alloc_segment().is_none());
        // The space-map page the new segments fall in is written by the next commit.
        assert_eq!(s.sm_pages_changed_since(7).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.release_grown(per + 4), 2);
        assert_eq!(s.release_grown(per + 10), 6);
        assert_eq!(s.release_grown(per + 10), 0);
        let got: Vec<u64> = std::iter::from_fn(|| s.alloc_segment()).collect();
        assert_eq!(got, (per + 2..per + 10).collect::<Vec<_>>());
    }

    /// Counts past a byte's reach live in the side table, and come back to the byte.
    #[test]
    fn wide_counts_round_trip() {
        let mut s = Space::new(&[8], &[0], 1, 0, 1);
        let a = s.alloc_segment().unwrap();
        let b = s.alloc_segment().unwrap();
        s.seg_add(a, 253);
        s.seg_add(b, 1);
        assert_eq!((s.refs(a), s.wide.len()), (253, 0));
        s.seg_add(a, 1);
        assert_eq!((s.refs(a), s.wide.len()), (254, 1));
        s.seg_add(a, 100_000);
        assert_eq!(s.refs(a), 100_254);
        let mut out = Vec::new();
        s.copy_counts(0, 8, &mut out);
        assert_eq!(out[0], RESERVED);
        assert_eq!((out[a as usize], out[b as usize]), (100_254, 1));
        s.seg_add(a, -100_001);
        assert_eq!((s.refs(a), s.wide.len()), (253, 0));
        s.load_segment(b, 70_000);
        assert_eq!((s.refs(b), s.wide.len()), (70_000, 1));
        s.load_segment(b, 3);
        assert_eq!((s.refs(b), s.wide.len()), (3, 0));
        s.seg_add(a, -253);
        assert_eq!(s.refs(a), 0);
    }

    #[test]
    #[should_panic(expected = "reserved segment")]
    fn reserved_segments_are_never_referenced() {
        let mut s = Space::new(&[4], &[0], 1, 0, 1);
        s.seg_add(0, 1);
    }
}
