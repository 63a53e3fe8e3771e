//! Which blocks of a disk hold data, and which blocks differ between two disks of a pool
//! (a snapshot and a later snapshot or the live disk): the questions backup and
//! replication tools ask (`rbd diff`, `zfs send -i`, qemu's dirty bitmaps, Kubernetes'
//! `GetMetadataAllocated` and `GetMetadataDelta`).
//!
//! **Changed blocks.** Two tables of one lineage share every subtree neither changed
//! since they parted (the table is copy-on-write: a snapshot shares its origin's root).
//! The diff walks both tables together and skips a node both hold: in the span where
//! both tables reach it, both show its extents and nothing else. Its cost therefore
//! follows the part of the tables that differs, not the size of the disk.
//!
//! Where the two tables hold different nodes, extents are compared a virtual segment at
//! a time. Layers are immutable once two tables share them (a shared segment's fill is
//! frozen; a write gets a new top layer, or with copy-out the others get the copy), and
//! what lies under a layer is what it was stacked on, or a merge of that (`cow.rs`
//! merges the layers under the top one when they stack too deep), which shows the same.
//! So two extents that both hold a layer differ exactly in the granules of the layers
//! above it, in either. That is exact at the granule.
//!
//! Two extents without a common layer — a segment written after two or more of the
//! snapshots between them once its layers were merged, a split clone, copy-out — hold
//! layers the table cannot relate: the granules either holds are reported *to compare*
//! ([`ChangedPage::to_compare`], `Change::Unknown` on a channel), and the caller compares their
//! contents (`Channel::changed_since` reads both disks), which is exact again. The cost
//! stays with the change: only segments written since the older disk are compared.
//!
//! **Allocated blocks.** One table, walked alone: a granule some layer holds is data;
//! a granule of a mapped segment that no layer holds reads as zeros; a segment without
//! an extent is a hole.

use super::map::{Extent, ExtentState, Fills, Geometry, Layer, lay_over};
use super::table::{Node, NodeKind};
use std::borrow::Cow;
use std::sync::Arc;

/// Granules of one segment, a bit each.
type Mask = [u64; 4];

const EMPTY: Mask = [0; 4];

/// A run of blocks: `num_blocks` blocks from `offset_blocks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BlockRange {
    pub offset_blocks: u64,
    pub num_blocks: u64,
}

/// What a run of a disk's blocks holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// Written data.
    Data,
    /// Storage is mapped but these blocks were never written (or were zeroed): they
    /// read as zeros.
    Zero,
    /// No storage is mapped: the blocks read as zeros.
    Hole,
}

/// One page of an answer: runs in block order, and where the next page starts (`None`
/// when the range was covered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunsPage<T> {
    pub runs: Vec<T>,
    pub next_offset_blocks: Option<u64>,
}

/// One page of changed blocks: the runs that differ or may differ, in block order,
/// where the next page starts, and which parts of the runs the tables could not tell
/// apart: the caller compares their contents and drops what is
/// equal ([`ChangedPage::without`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedPage {
    pub runs: Vec<BlockRange>,
    pub next_offset_blocks: Option<u64>,
    /// Sub-runs of `runs`, in order.
    pub to_compare: Vec<BlockRange>,
}

/// A table to compare: its root, and one-segment extents laid over it (sorted, each
/// shown instead of what the table holds at its segment), as an agent keeps the
/// extents write faults set since its view (`agent/recent.rs`); none for the
/// controller's tables.
pub type Overlaid<'a> = (Option<&'a Arc<Node>>, &'a [Extent]);

/// The blocks of the table `b` in `blocks` that differ from the table `a`, at most
/// `max_runs` runs from the start of `blocks` on, and at most `max_compare_blocks`
/// blocks of them to compare (the page ends before the segment that would pass it,
/// unless it is the page's first). See the module's documentation for what "differ"
/// means.
pub fn changed_ranges(
    a: Overlaid<'_>,
    b: Overlaid<'_>,
    fills: &Fills,
    geo: Geometry,
    blocks: std::ops::Range<u64>,
    max_runs: usize,
    max_compare_blocks: u64,
) -> ChangedPage {
    debug_assert!(
        [a.1, b.1]
            .iter()
            .all(|o| o.iter().all(|e| e.len == 1) && o.windows(2).all(|w| w[0].vseg < w[1].vseg))
    );
    let (from_block, end_block) = (blocks.start, blocks.end);
    let mut sink = RangeSink::new(geo, from_block, end_block, max_runs, max_compare_blocks);
    if from_block < end_block {
        let lo = from_block / geo.segment_blocks;
        let hi = end_block.div_ceil(geo.segment_blocks);
        let mut w = Walk {
            fills,
            geo,
            over: (a.1, b.1),
            emit: &mut |vseg, mask, unknown| sink.push(vseg, &mask, unknown),
        };
        w.pair(a.0, b.0, lo, hi);
    }
    sink.finish()
}

impl ChangedPage {
    /// The page once the blocks of `to_compare` found `equal` (sorted, disjoint) are
    /// taken out: at most `max_runs` runs still (a run cut in two may pass it; the
    /// page then ends before the first run left over).
    pub fn without(mut self, equal: &[BlockRange], max_runs: usize) -> RunsPage<BlockRange> {
        drop_ranges(&mut self.runs, equal);
        let max_runs = max_runs.max(1);
        if self.runs.len() > max_runs {
            self.next_offset_blocks = Some(self.runs[max_runs].offset_blocks);
            self.runs.truncate(max_runs);
        }
        RunsPage {
            runs: self.runs,
            next_offset_blocks: self.next_offset_blocks,
        }
    }
}

/// Removes the blocks of `drop` (sorted, disjoint) from `runs` (sorted, disjoint).
fn drop_ranges(runs: &mut Vec<BlockRange>, drop: &[BlockRange]) {
    if drop.is_empty() {
        return;
    }
    let mut out = Vec::with_capacity(runs.len() + drop.len());
    let mut d = drop.iter().peekable();
    for r in runs.iter() {
        let (mut at, end) = (r.offset_blocks, r.offset_blocks + r.num_blocks);
        while at < end {
            while d
                .peek()
                .is_some_and(|x| x.offset_blocks + x.num_blocks <= at)
            {
                d.next();
            }
            match d.peek() {
                Some(x) if x.offset_blocks < end => {
                    if x.offset_blocks > at {
                        out.push(BlockRange {
                            offset_blocks: at,
                            num_blocks: x.offset_blocks - at,
                        });
                    }
                    at = (x.offset_blocks + x.num_blocks).min(end).max(at);
                }
                _ => {
                    out.push(BlockRange {
                        offset_blocks: at,
                        num_blocks: end - at,
                    });
                    at = end;
                }
            }
        }
    }
    *runs = out;
}

/// `page` of a disk whose unwritten blocks read an external snapshot (its holes and
/// never-written granules read that bdev's data): every run is data, runs next to each
/// other merged.
pub fn falling_through_as_data(
    page: RunsPage<(BlockRange, Allocation)>,
) -> RunsPage<(BlockRange, Allocation)> {
    let mut runs: Vec<(BlockRange, Allocation)> = Vec::with_capacity(page.runs.len());
    for (r, _) in page.runs {
        match runs.last_mut() {
            Some((last, _)) if last.offset_blocks + last.num_blocks == r.offset_blocks => {
                last.num_blocks += r.num_blocks;
            }
            _ => runs.push((r, Allocation::Data)),
        }
    }
    RunsPage {
        runs,
        next_offset_blocks: page.next_offset_blocks,
    }
}

/// What the blocks in `[from_block, end_block)` of the table under `root` hold, at most
/// `max_runs` runs.
pub fn allocated_ranges(
    root: Option<&Arc<Node>>,
    fills: &Fills,
    geo: Geometry,
    from_block: u64,
    end_block: u64,
    max_runs: usize,
) -> RunsPage<(BlockRange, Allocation)> {
    let full = full_mask(geo.granules);
    let mut out = AllocSink {
        from: from_block,
        end: end_block,
        max_runs,
        runs: Vec::new(),
        next: None,
    };
    let mut at = from_block;
    while at < end_block && out.next.is_none() {
        let vseg = at / geo.segment_blocks;
        let e = root.and_then(|r| r.next_from(vseg)).cloned();
        // The hole up to the next extent.
        let next_mapped = e.as_ref().map_or(u64::MAX, |e| e.vseg.max(vseg));
        if next_mapped > vseg {
            let to = next_mapped
                .saturating_mul(geo.segment_blocks)
                .min(end_block);
            out.push(at, to - at, Allocation::Hole);
            at = to;
            continue;
        }
        let e = e.expect("an extent covers vseg");
        for v in vseg..e.end() {
            if out.next.is_some() || v * geo.segment_blocks >= end_block {
                break;
            }
            let mask = data_mask(&e.at(v), fills, full);
            for (g, n, data) in mask_runs(&mask, geo.granules) {
                let b = v * geo.segment_blocks + g * geo.granule_blocks;
                let kind = if data {
                    Allocation::Data
                } else {
                    Allocation::Zero
                };
                out.push(b, n * geo.granule_blocks, kind);
            }
        }
        at = e.end().saturating_mul(geo.segment_blocks).max(at + 1);
    }
    RunsPage {
        runs: out.runs,
        next_offset_blocks: out.next,
    }
}

/// What [`Walk::children`] calls on each child: the walk, the child and its span.
type ChildVisit<'w, 'a> = dyn FnMut(&mut Walk<'a>, &Arc<Node>, u64, u64) -> bool + 'w;

/// The walk of two tables together.
struct Walk<'a> {
    fills: &'a Fills,
    geo: Geometry,
    /// The extents laid over each table ([`Overlaid`]).
    over: (&'a [Extent], &'a [Extent]),
    /// Called with each virtual segment that differs, in order, its granules that do
    /// and whether they only may (to compare); returns false to stop the walk.
    emit: &'a mut dyn FnMut(u64, Mask, bool) -> bool,
}

impl<'a> Walk<'a> {
    /// Compares the tables under `a` and `b` over `[lo, hi)`, a span both nodes cover
    /// (or that an absent side does not map). Returns false once stopped.
    fn pair(&mut self, a: Option<&Arc<Node>>, b: Option<&Arc<Node>>, lo: u64, hi: u64) -> bool {
        match (a, b) {
            (Some(x), Some(y)) if Arc::ptr_eq(x, y) && !self.overlaid(lo, hi) => true,
            (Some(x), _) if matches!(x.kind, NodeKind::Internal { .. }) => {
                self.children(x, lo, hi, &mut |w, c, clo, chi| {
                    w.pair(Some(c), b, clo, chi)
                })
            }
            (_, Some(y)) if matches!(y.kind, NodeKind::Internal { .. }) => {
                self.children(y, lo, hi, &mut |w, c, clo, chi| {
                    w.pair(a, Some(c), clo, chi)
                })
            }
            _ => self.leaves(a, b, lo, hi),
        }
    }

    /// True if an extent is laid over either table in `[lo, hi)`.
    fn overlaid(&self, lo: u64, hi: u64) -> bool {
        [self.over.0, self.over.1].iter().any(|o| {
            let i = o.partition_point(|e| e.vseg < lo);
            o.get(i).is_some_and(|e| e.vseg < hi)
        })
    }

    /// Calls `f` on each child of internal node `n` whose span meets `[lo, hi)`, with
    /// the span clipped to it.
    fn children(&mut self, n: &Arc<Node>, lo: u64, hi: u64, f: &mut ChildVisit<'_, 'a>) -> bool {
        let NodeKind::Internal { keys, children } = &n.kind else {
            unreachable!("called on internal nodes only");
        };
        let first = keys.partition_point(|&k| k <= lo).saturating_sub(1);
        for j in first..children.len() {
            let c_lo = if j == 0 { lo } else { keys[j].max(lo) };
            let c_hi = keys.get(j + 1).copied().unwrap_or(u64::MAX).min(hi);
            if c_lo >= hi {
                break;
            }
            if c_lo < c_hi && !f(self, &children[j], c_lo, c_hi) {
                return false;
            }
        }
        true
    }

    /// Compares two leaves (or a leaf and nothing) over `[lo, hi)`.
    fn leaves(&mut self, a: Option<&Arc<Node>>, b: Option<&Arc<Node>>, lo: u64, hi: u64) -> bool {
        let mut xs = leaf_extents(a, self.over.0, lo, hi).peekable();
        let mut ys = leaf_extents(b, self.over.1, lo, hi).peekable();
        let mut at = lo;
        loop {
            // Skip to the next virtual segment either side maps.
            let next = |it: &mut std::iter::Peekable<std::vec::IntoIter<Cow<'_, Extent>>>,
                        at: u64| {
                while it.peek().is_some_and(|e| e.end() <= at) {
                    it.next();
                }
                it.peek().map(|e| e.vseg.max(at))
            };
            let (nx, ny) = (next(&mut xs, at), next(&mut ys, at));
            let v = match (nx, ny) {
                (None, None) => return true,
                (Some(p), None) | (None, Some(p)) => p,
                (Some(p), Some(q)) => p.min(q),
            };
            if v >= hi {
                return true;
            }
            // The same extent on both sides (most of two leaves that differ somewhere):
            // nothing in it differs.
            if let (Some(x), Some(y)) = (xs.peek(), ys.peek())
                && x == y
            {
                at = x.end().max(v + 1);
                continue;
            }
            let x = xs.peek().filter(|e| e.contains(v)).map(|e| e.at(v));
            let y = ys.peek().filter(|e| e.contains(v)).map(|e| e.at(v));
            let (mask, unknown) = self.delta(x.as_ref(), y.as_ref());
            if mask != EMPTY && !(self.emit)(v, mask, unknown) {
                return false;
            }
            at = v + 1;
        }
    }

    /// The granules in which two one-segment extents (or an absent one) differ, and
    /// whether they only may (no common layer: their contents tell).
    fn delta(&self, x: Option<&Extent>, y: Option<&Extent>) -> (Mask, bool) {
        let full = full_mask(self.geo.granules);
        match (x, y) {
            (None, None) => (EMPTY, false),
            (Some(e), None) | (None, Some(e)) => (data_mask(e, self.fills, full), false),
            (Some(x), Some(y)) => {
                if x.state == ExtentState::Error || y.state == ExtentState::Error {
                    return (if x == y { EMPTY } else { full }, false);
                }
                // The highest layer of `y` that `x` holds too: below it, both show the
                // same (the layers under a layer are those it was stacked on, or a
                // merge of them, which shows the same). Without one, all they hold.
                let common = y
                    .layers
                    .iter()
                    .enumerate()
                    .find_map(|(i, l)| x.layers.iter().position(|k| k == l).map(|j| (j, i)));
                let (ox, oy) = match common {
                    Some((j, i)) => (&x.layers[..j], &y.layers[..i]),
                    None => (&x.layers[..], &y.layers[..]),
                };
                let mut m = EMPTY;
                for l in ox.iter().chain(oy) {
                    or(&mut m, &layer_mask(l, self.fills, full));
                }
                (m, common.is_none())
            }
        }
    }
}

/// The extents of leaf `n` that meet `[lo, hi)`, with the extents of `over` (sorted,
/// one segment each) laid over them: a leaf's extent that one of them covers part of
/// is shown in parts.
fn leaf_extents<'e>(
    n: Option<&'e Arc<Node>>,
    over: &'e [Extent],
    lo: u64,
    hi: u64,
) -> std::vec::IntoIter<Cow<'e, Extent>> {
    let (i, j) = (
        over.partition_point(|e| e.vseg < lo),
        over.partition_point(|e| e.vseg < hi),
    );
    let mut kept = over[i..j].iter().peekable();
    let mut out: Vec<Cow<'e, Extent>> = Vec::new();
    if let Some(n) = n {
        n.visit_from(lo, &mut |e| {
            e.vseg < hi
                && lay_over(e, lo, &mut kept, &mut |p| {
                    out.push(p);
                    true
                })
        });
    }
    out.extend(kept.map(Cow::Borrowed));
    out.into_iter()
}

/// Every granule of a segment of `granules`.
fn full_mask(granules: u64) -> Mask {
    let mut m = EMPTY;
    for g in 0..granules {
        m[(g / 64) as usize] |= 1 << (g % 64);
    }
    m
}

/// The granules a layer holds.
fn layer_mask(l: &Layer, fills: &Fills, full: Mask) -> Mask {
    if l.is_partial() {
        fills.get(l.seg()).words()
    } else {
        full
    }
}

/// The granules some layer of a one-segment extent holds (all of them, `full`, for an
/// error extent).
fn data_mask(e: &Extent, fills: &Fills, full: Mask) -> Mask {
    if e.state == ExtentState::Error {
        return full;
    }
    let mut m = EMPTY;
    for l in &e.layers {
        or(&mut m, &layer_mask(l, fills, full));
    }
    m
}

fn or(m: &mut Mask, o: &Mask) {
    for (a, b) in m.iter_mut().zip(o) {
        *a |= b;
    }
}

fn held(m: &Mask, g: u64) -> bool {
    m[(g / 64) as usize] & (1 << (g % 64)) != 0
}

/// The runs of granules `[0, granules)` of a mask: (first, count, held).
fn mask_runs(m: &Mask, granules: u64) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    if *m == EMPTY || *m == full_mask(granules) {
        out.push((0, granules, *m != EMPTY));
        return out;
    }
    for g in 0..granules {
        let h = held(m, g);
        match out.last_mut() {
            Some(r) if r.2 == h => r.1 += 1,
            _ => out.push((g, 1, h)),
        }
    }
    out
}

/// Turns changed granules into merged block runs within `[from, end)`, up to a limit
/// of runs and of blocks to compare.
struct RangeSink {
    geo: Geometry,
    from: u64,
    end: u64,
    max_runs: usize,
    max_compare: u64,
    compare_blocks: u64,
    runs: Vec<BlockRange>,
    to_compare: Vec<BlockRange>,
    next: Option<u64>,
}

/// Appends `[b0, b1)` to sorted runs, merging it into the last when they touch.
fn append(runs: &mut Vec<BlockRange>, b0: u64, b1: u64) {
    match runs.last_mut() {
        Some(r) if r.offset_blocks + r.num_blocks == b0 => r.num_blocks += b1 - b0,
        _ => runs.push(BlockRange {
            offset_blocks: b0,
            num_blocks: b1 - b0,
        }),
    }
}

impl RangeSink {
    fn new(geo: Geometry, from: u64, end: u64, max_runs: usize, max_compare: u64) -> RangeSink {
        RangeSink {
            geo,
            from,
            end,
            max_runs: max_runs.max(1),
            max_compare,
            compare_blocks: 0,
            runs: Vec::new(),
            to_compare: Vec::new(),
            next: None,
        }
    }

    /// Adds the changed granules of `vseg` (to compare, if `unknown`); false once the
    /// page is full.
    fn push(&mut self, vseg: u64, mask: &Mask, unknown: bool) -> bool {
        let g = self.geo;
        let clip = |k: u64, n: u64| {
            let b0 = (vseg * g.segment_blocks + k * g.granule_blocks).max(self.from);
            let b1 = (vseg * g.segment_blocks + (k + n) * g.granule_blocks).min(self.end);
            (b0, b1)
        };
        let held: Vec<(u64, u64)> = mask_runs(mask, g.granules)
            .into_iter()
            .filter(|r| r.2)
            .map(|(k, n, _)| clip(k, n))
            .filter(|(b0, b1)| b0 < b1)
            .collect();
        if unknown {
            // A segment to compare goes into the page whole or not at all (unless it is
            // the page's first: a page holds at least one).
            let blocks: u64 = held.iter().map(|(b0, b1)| b1 - b0).sum();
            if self.compare_blocks > 0 && self.compare_blocks + blocks > self.max_compare {
                self.next = held.first().map(|r| r.0);
                return self.next.is_none();
            }
        }
        for (b0, b1) in held {
            let joins = self
                .runs
                .last()
                .is_some_and(|r| r.offset_blocks + r.num_blocks == b0);
            if !joins && self.runs.len() >= self.max_runs {
                self.next = Some(b0);
                return false;
            }
            append(&mut self.runs, b0, b1);
            if unknown {
                append(&mut self.to_compare, b0, b1);
                self.compare_blocks += b1 - b0;
            }
        }
        true
    }

    fn finish(self) -> ChangedPage {
        ChangedPage {
            runs: self.runs,
            next_offset_blocks: self.next,
            to_compare: self.to_compare,
        }
    }
}

/// Allocation runs of one disk, merged, within `[from, end)`, up to a limit.
struct AllocSink {
    from: u64,
    end: u64,
    max_runs: usize,
    runs: Vec<(BlockRange, Allocation)>,
    next: Option<u64>,
}

impl AllocSink {
    fn push(&mut self, b: u64, n: u64, kind: Allocation) {
        if self.next.is_some() {
            return;
        }
        let b0 = b.max(self.from);
        let b1 = (b + n).min(self.end);
        if b0 >= b1 {
            return;
        }
        let full = self.runs.len() >= self.max_runs.max(1);
        match self.runs.last_mut() {
            Some((r, k)) if *k == kind && r.offset_blocks + r.num_blocks == b0 => {
                r.num_blocks += b1 - b0
            }
            _ if full => self.next = Some(b0),
            _ => self.runs.push((
                BlockRange {
                    offset_blocks: b0,
                    num_blocks: b1 - b0,
                },
                kind,
            )),
        }
    }
}
