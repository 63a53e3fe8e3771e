//! Space-map pages: the persisted segment reference counts (the allocator in `alloc.rs`
//! is the in-memory form), and the space-map index pages that point at them.
//!
//! Each space-map page and each index page has two places; a commit writes a page that
//! changed into the place the committed state does not point at, and the new pointer
//! (page, transaction, checksum) goes into the index page, whose new version goes to its
//! own other place, and whose pointer goes into the superblock ([`SpaceMapPtrs`]).

use super::{
    BlockPtr, HEADER_BYTES, MetaError, PAGE_BYTES, PageHeader, PageKind, Reader, Writer,
    decode_header, new_page, seal,
};
use uuid::Uuid;

/// Segment reference counts per space-map page.
pub const SM_COUNTS_PER_PAGE: usize = (PAGE_BYTES - HEADER_BYTES) / 4;

/// Space-map page pointers per index page.
pub const SM_PTRS_PER_PAGE: usize = (PAGE_BYTES - HEADER_BYTES) / BlockPtr::BYTES;

/// Space-map pages (per copy) for `total_segments` segments.
pub fn sm_pages_for(total_segments: u64) -> u64 {
    total_segments.div_ceil(SM_COUNTS_PER_PAGE as u64)
}

/// Space-map index pages (per copy) for `sm_pages` space-map pages.
pub fn sm_index_pages_for(sm_pages: u64) -> u64 {
    sm_pages.div_ceil(SM_PTRS_PER_PAGE as u64)
}

/// How many entries page `index` of a paged array of `total` entries, `per` a page,
/// holds.
pub fn entries_of_page(index: u64, total: u64, per: usize) -> usize {
    total.saturating_sub(index * per as u64).min(per as u64) as usize
}

/// Encodes a space-map page: reference counts of segments
/// `[index × SM_COUNTS_PER_PAGE, ..)`.
pub fn encode_space_map(page: u64, txn: u64, pool: &Uuid, index: u64, counts: &[u32]) -> Vec<u8> {
    debug_assert!(counts.len() <= SM_COUNTS_PER_PAGE);
    let h = PageHeader {
        kind: PageKind::SpaceMap,
        count: counts.len() as u32,
        page,
        txn,
        next: BlockPtr {
            page: index,
            txn: 0,
            crc: 0,
        },
    };
    let mut b = new_page(&h, pool);
    for (to, c) in b[HEADER_BYTES..].chunks_exact_mut(4).zip(counts) {
        to.copy_from_slice(&c.to_le_bytes());
    }
    seal(&mut b);
    b
}

/// Decodes a space-map page: (the transaction that wrote it, its counts).
pub fn decode_space_map(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    index: u64,
) -> Result<(u64, Vec<u32>), MetaError> {
    let h = decode_header(b, page, pool, PageKind::SpaceMap)?;
    if h.next.page != index {
        return Err(MetaError::Field {
            page,
            field: "index",
            reason: format!("holds space-map page {}, expected {index}", h.next.page),
        });
    }
    if h.count as usize > SM_COUNTS_PER_PAGE {
        return Err(MetaError::Field {
            page,
            field: "count",
            reason: format!("{} counts", h.count),
        });
    }
    let mut r = Reader::new(&b[..PAGE_BYTES], HEADER_BYTES);
    Ok((h.txn, (0..h.count).map(|_| r.u32().unwrap_or(0)).collect()))
}

/// Encodes space-map index page `index`: the pointers to space-map pages
/// `[index × SM_PTRS_PER_PAGE, ..)`.
pub fn encode_sm_index(page: u64, txn: u64, pool: &Uuid, index: u64, ptrs: &[BlockPtr]) -> Vec<u8> {
    debug_assert!(ptrs.len() <= SM_PTRS_PER_PAGE);
    let h = PageHeader {
        kind: PageKind::SpaceMapIndex,
        count: ptrs.len() as u32,
        page,
        txn,
        next: BlockPtr {
            page: index,
            txn: 0,
            crc: 0,
        },
    };
    let mut b = new_page(&h, pool);
    let mut w = Writer::new(&mut b, HEADER_BYTES);
    for p in ptrs {
        p.write(&mut w);
    }
    seal(&mut b);
    b
}

/// Decodes space-map index page `index` of a pool with `sm_pages` space-map pages per
/// copy: its pointers, each checked to point at one of the two places of its space-map
/// page, written by a transaction not after this page's.
pub fn decode_sm_index(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    index: u64,
    sm_pages: u64,
) -> Result<Vec<BlockPtr>, MetaError> {
    let h = decode_header(b, page, pool, PageKind::SpaceMapIndex)?;
    let bad = |field, reason: String| MetaError::Field {
        page,
        field,
        reason,
    };
    if h.next.page != index {
        return Err(bad(
            "index",
            format!(
                "holds space-map index page {}, expected {index}",
                h.next.page
            ),
        ));
    }
    let want = entries_of_page(index, sm_pages, SM_PTRS_PER_PAGE);
    if h.count as usize != want {
        return Err(bad(
            "count",
            format!("{} pointers, expected {want}", h.count),
        ));
    }
    let mut r = Reader::new(&b[..PAGE_BYTES], HEADER_BYTES);
    let mut out = Vec::with_capacity(want);
    for k in 0..want {
        let p = BlockPtr::read(&mut r).ok_or_else(|| bad("pointer", "truncated".into()))?;
        let i = index * SM_PTRS_PER_PAGE as u64 + k as u64;
        if p.page != i && p.page != sm_pages + i {
            return Err(bad(
                "pointer",
                format!(
                    "entry {k} points at page {} for space-map page {i} (its places are {i} \
                     and {})",
                    p.page,
                    sm_pages + i
                ),
            ));
        }
        if p.txn == 0 || p.txn > h.txn {
            return Err(bad(
                "pointer",
                format!(
                    "entry {k} expects transaction {}, not in 1..={} (this page's)",
                    p.txn, h.txn
                ),
            ));
        }
        out.push(p);
    }
    Ok(out)
}

/// The pointers a committed superblock holds to the space map: to every space-map page
/// (through the index) and to every index page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceMapPtrs {
    pub pages: Vec<BlockPtr>,
    pub index: Vec<BlockPtr>,
}

/// Segment reference counts as a space map is written from them: the allocator's
/// (`alloc::Space`, a byte a segment) or a plain slice (a pool being created, tests).
pub trait SegmentCounts {
    /// Segments counted.
    fn segments(&self) -> usize;
    /// Appends the counts of segments `lo..hi` to `out`.
    fn copy_counts(&self, lo: usize, hi: usize, out: &mut Vec<u32>);
}

impl SegmentCounts for [u32] {
    fn segments(&self) -> usize {
        self.len()
    }
    fn copy_counts(&self, lo: usize, hi: usize, out: &mut Vec<u32>) {
        out.extend_from_slice(&self[lo..hi]);
    }
}

impl SpaceMapPtrs {
    /// Pointers of a space map never written (a pool being created, or one whose index
    /// could not be read): the next write goes to the first place of every page.
    pub fn unwritten(sm_pages: u64) -> SpaceMapPtrs {
        SpaceMapPtrs {
            pages: vec![BlockPtr::NONE; sm_pages as usize],
            index: vec![BlockPtr::NONE; sm_index_pages_for(sm_pages) as usize],
        }
    }

    /// Encodes, for transaction `txn`, the space-map pages `changed` (of counts `refs`)
    /// and the index pages pointing at them, each into the place that `self` (the
    /// committed pointers) does not point at; appends them to `out` and returns the
    /// pointers that the new superblock commits.
    pub fn write(
        &self,
        changed: impl IntoIterator<Item = u64>,
        refs: &(impl SegmentCounts + ?Sized),
        txn: u64,
        pool: &Uuid,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> SpaceMapPtrs {
        SpaceMapStage::take(self, changed, refs, txn, Vec::new())
            .finish(pool, out)
            .0
    }
}

/// The other place of a page whose places are `places`, `cur` pointing at one of them.
fn other_place(cur: &BlockPtr, places: [u64; 2]) -> u64 {
    if cur.page == places[0] {
        places[1]
    } else {
        places[0]
    }
}

/// A checkpoint's space map as its instant left it: the counts of the pages changed in
/// its transaction, copied (a copy of a few MiB at most; encoding a thousand pages is
/// milliseconds that the instant, which holds the controller's core, must not spend),
/// then encoded a batch at a time ([`SpaceMapStage::encode`]) while the live counts
/// move on, and finished with the index pages ([`SpaceMapStage::finish`]).
pub struct SpaceMapStage {
    txn: u64,
    /// The pointers the new superblock commits, filled in as pages are encoded.
    next: SpaceMapPtrs,
    /// (space-map page, the place it is written to), in the order of `counts`.
    changed: Vec<(u64, u64)>,
    /// The changed pages' counts, one after the other (each page's length follows
    /// from its index).
    counts: Vec<u32>,
    /// Pages of `changed` encoded so far, and where their counts end in `counts`.
    encoded: usize,
    counts_at: usize,
    /// Segments the space map counts.
    segments: u64,
    dirty_index: std::collections::BTreeSet<u64>,
}

impl SpaceMapStage {
    /// Copies the counts of the space-map pages `changed` from `refs` into `buf` (kept
    /// by the caller between checkpoints for its capacity) for transaction `txn`;
    /// `committed` are the pointers of the superblock in force.
    pub fn take(
        committed: &SpaceMapPtrs,
        changed: impl IntoIterator<Item = u64>,
        refs: &(impl SegmentCounts + ?Sized),
        txn: u64,
        mut buf: Vec<u32>,
    ) -> SpaceMapStage {
        let sm = committed.pages.len() as u64;
        buf.clear();
        let mut pages = Vec::new();
        for i in changed {
            let lo = i as usize * SM_COUNTS_PER_PAGE;
            let hi = (lo + SM_COUNTS_PER_PAGE).min(refs.segments());
            refs.copy_counts(lo, hi, &mut buf);
            pages.push((i, other_place(&committed.pages[i as usize], [i, sm + i])));
        }
        SpaceMapStage {
            txn,
            next: committed.clone(),
            changed: pages,
            counts: buf,
            encoded: 0,
            counts_at: 0,
            segments: refs.segments() as u64,
            dirty_index: Default::default(),
        }
    }

    /// Space-map pages staged and not yet encoded.
    pub fn left(&self) -> usize {
        self.changed.len() - self.encoded
    }

    /// Encodes up to `max` more of the staged pages into `out`.
    pub fn encode(&mut self, max: usize, pool: &Uuid, out: &mut Vec<(u64, Vec<u8>)>) {
        let end = self.encoded.saturating_add(max).min(self.changed.len());
        for &(i, place) in &self.changed[self.encoded..end] {
            let n = entries_of_page(i, self.segments, SM_COUNTS_PER_PAGE);
            let counts = &self.counts[self.counts_at..self.counts_at + n];
            let b = encode_space_map(place, self.txn, pool, i, counts);
            self.next.pages[i as usize] = BlockPtr::of(&b);
            out.push((place, b));
            self.dirty_index.insert(i / SM_PTRS_PER_PAGE as u64);
            self.counts_at += n;
        }
        self.encoded = end;
    }

    /// Encodes what is left and the index pages of the pages encoded; returns the
    /// pointers the new superblock commits, and the counts' buffer for the next stage.
    pub fn finish(
        mut self,
        pool: &Uuid,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> (SpaceMapPtrs, Vec<u32>) {
        self.encode(usize::MAX, pool, out);
        let sm = self.next.pages.len() as u64;
        let smi = self.next.index.len() as u64;
        for &j in &self.dirty_index {
            let lo = j as usize * SM_PTRS_PER_PAGE;
            let hi = (lo + SM_PTRS_PER_PAGE).min(sm as usize);
            let base = 2 * sm;
            // `next.index[j]` is still the committed pointer: each is replaced once.
            let page = other_place(&self.next.index[j as usize], [base + j, base + smi + j]);
            let b = encode_sm_index(page, self.txn, pool, j, &self.next.pages[lo..hi]);
            self.next.index[j as usize] = BlockPtr::of(&b);
            out.push((page, b));
        }
        (self.next, self.counts)
    }
}
