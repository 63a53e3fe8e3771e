//! Mapping-table entries: what a virtual segment maps to. Pure data, no I/O.
//!
//! A virtual disk's address space is cut into **segments** (the pool's segment size).
//! The table maps runs of virtual segments to physical segments of the pool. An
//! [`Extent`] covers either one virtual segment, or a *run* of contiguous virtual
//! segments mapped to contiguous, fully written physical segments (a fully allocated
//! disk is a handful of runs). Absence from the table is the **zero** state.
//!
//! Each segment's contents can come from a short stack of [`Layer`]s (at most
//! [`MAX_LAYERS`]): the top layer is where writes go; a block that the top layer does
//! not hold falls through to the next layer, and past the last one reads as zeros. A
//! *partial* layer holds only the **granules** (the segment cut into at most 256 equal
//! parts; one 4 KiB block each with the default 1 MiB segments) that its segment's
//! [`Fill`] records. That is how a 4 KiB first write into an unallocated or shared 1 MiB
//! segment costs one 4 KiB write instead of a 1 MiB zero-fill or copy (qcow2's
//! subclusters are the prior art). Any other layer is *full*.
//!
//! A physical segment has one fill whatever references it, so fills are kept by segment
//! in the pool's [`Fills`], not in the extents: an extent is plain data, and copying a
//! table leaf copies bytes — no allocation, no reference count per extent.
//!
//! Lookups resolve a block to one of [`Source`]: a physical block, zeros, or an error —
//! one table lookup and at most `MAX_LAYERS` bit tests, whatever the snapshot history.

use smallvec::SmallVec;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A physical segment: an index into the pool's segment space (all containers).
pub type PhysSeg = u64;

/// Most layers a segment's contents may be stacked from before the controller merges
/// the bottom ones.
pub const MAX_LAYERS: usize = 4;

/// Longest run of segments one extent may cover (bounds the cost of copying a leaf).
pub const MAX_RUN_SEGMENTS: u32 = 256;

/// Granules per segment at most (one bit each in a [`Fill`]).
pub const MAX_GRANULES: u64 = 256;

/// Which granules of one physical segment hold data (meaningful for the segments of
/// partial layers). Kept by segment in the pool's [`Fills`], seen by every view that
/// maps the segment; bits are set by the agent that wrote the granule, after the write
/// completed, and only while the segment is the writable top layer of exactly one disk.
/// Once the segment is shared (a snapshot, a clone) its fill never changes again.
///
/// Only the bits: 32 bytes a segment. Whether it changed since the controller last
/// persisted it is a bit of its chunk in [`Fills`], and which disk and virtual segment
/// it belongs to travels with the change ([`DirtyFill`]).
#[derive(Debug, Default)]
pub struct Fill {
    bits: [AtomicU64; 4],
}

impl Fill {
    /// An empty fill.
    pub fn new() -> Fill {
        Fill::default()
    }

    /// True if granule `g` holds data.
    #[inline]
    pub fn test(&self, g: u64) -> bool {
        self.bits[(g / 64) as usize].load(Ordering::Acquire) & (1 << (g % 64)) != 0
    }

    /// Marks granules `[first, first + n)` as holding data. Returns true if any bit was
    /// newly set.
    pub fn set_range(&self, first: u64, n: u64) -> bool {
        let mut changed = false;
        for (w, mask) in word_masks(first, n) {
            let old = self.bits[w].fetch_or(mask, Ordering::AcqRel);
            changed |= old & mask != mask;
        }
        changed
    }

    /// Marks granules `[first, first + n)` as empty. Returns true if any bit was cleared.
    pub fn clear_range(&self, first: u64, n: u64) -> bool {
        let mut changed = false;
        for (w, mask) in word_masks(first, n) {
            let old = self.bits[w].fetch_and(!mask, Ordering::AcqRel);
            changed |= old & mask != 0;
        }
        changed
    }

    /// True if every granule in `[first, first + n)` holds data.
    pub fn all_set(&self, first: u64, n: u64) -> bool {
        word_masks(first, n).all(|(w, m)| self.bits[w].load(Ordering::Acquire) & m == m)
    }

    /// True if no granule holds data.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|b| b.load(Ordering::Acquire) == 0)
    }

    /// True if all of the first `granules` granules hold data.
    pub fn is_full(&self, granules: u64) -> bool {
        self.all_set(0, granules)
    }

    /// Number of granules holding data.
    pub fn count(&self) -> u32 {
        self.bits
            .iter()
            .map(|b| b.load(Ordering::Acquire).count_ones())
            .sum()
    }

    /// The bits as words (a consistent-enough copy: each word is read atomically).
    pub fn words(&self) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| self.bits[i].load(Ordering::Acquire))
    }

    /// Sets the bits to `words` (replaying the log).
    pub fn store_words(&self, words: [u64; 4]) {
        for (a, w) in self.bits.iter().zip(words) {
            a.store(w, Ordering::Release);
        }
    }
}

/// A fill that changed since the controller last persisted it, as an agent (or the
/// controller) queues it: the segment, and the disk and virtual segment whose writable
/// top layer it was when it changed — where the controller finds the leaf to persist.
/// The controller checks that the disk's table still maps the segment there before it
/// takes the change: a segment freed and allocated again may have two entries queued,
/// and only the current one counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtyFill {
    pub seg: PhysSeg,
    pub disk: u64,
    pub vseg: u64,
}

/// Segments per chunk of [`Fills`].
const FILL_CHUNK: u64 = 4096;

/// One chunk of [`Fills`]: the fills of `FILL_CHUNK` segments and their dirty bits.
struct FillChunk {
    fills: Box<[Fill]>,
    /// A bit per fill: set when its bits changed since the controller last persisted them.
    dirty: Box<[AtomicU64]>,
}

/// The fills of a pool's physical segments, by segment; a chunk of them is allocated
/// when one of its segments is first looked at, so a pool's fills cost memory where its
/// segments are partially written. Shared by the controller and every agent; lookups take
/// no lock once the chunk exists.
pub struct Fills {
    chunks: Box<[OnceLock<FillChunk>]>,
}

impl std::fmt::Debug for Fills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let allocated = self.chunks.iter().filter(|c| c.get().is_some()).count();
        write!(
            f,
            "Fills {{ chunks: {allocated} of {} }}",
            self.chunks.len()
        )
    }
}

impl Fills {
    /// Fills for segments `0..segments`.
    pub fn new(segments: u64) -> Fills {
        Fills {
            chunks: (0..segments.div_ceil(FILL_CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    #[inline]
    fn chunk(&self, seg: PhysSeg) -> &FillChunk {
        self.chunks[(seg / FILL_CHUNK) as usize].get_or_init(|| FillChunk {
            fills: (0..FILL_CHUNK).map(|_| Fill::default()).collect(),
            dirty: (0..FILL_CHUNK / 64).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The fill of segment `seg` (inside the pool: decoders bound every segment).
    #[inline]
    pub fn get(&self, seg: PhysSeg) -> &Fill {
        &self.chunk(seg).fills[(seg % FILL_CHUNK) as usize]
    }

    /// The dirty word of `seg` and its bit.
    #[inline]
    fn dirty_bit(&self, seg: PhysSeg) -> (&AtomicU64, u64) {
        let i = seg % FILL_CHUNK;
        (&self.chunk(seg).dirty[(i / 64) as usize], 1 << (i % 64))
    }

    /// True if the fill of `seg` changed since the controller last persisted it.
    pub fn is_dirty(&self, seg: PhysSeg) -> bool {
        let (w, bit) = self.dirty_bit(seg);
        w.load(Ordering::Acquire) & bit != 0
    }

    /// Marks the fill of `seg` dirty; returns true if it was clean (the caller queues it).
    pub fn mark_dirty(&self, seg: PhysSeg) -> bool {
        let (w, bit) = self.dirty_bit(seg);
        w.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Clears the dirty mark of `seg` (before the controller copies the bits out);
    /// returns true if it was set.
    pub fn take_dirty(&self, seg: PhysSeg) -> bool {
        let (w, bit) = self.dirty_bit(seg);
        w.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// The fill of a newly allocated segment: empty and clean.
    pub fn fresh(&self, seg: PhysSeg) -> &Fill {
        self.copied(seg, [0; 4])
    }

    /// The fill of a newly allocated segment that starts as a copy of `words`, clean.
    /// Only for a segment nothing references (the allocator hands out a segment only
    /// after every view let go of it).
    pub fn copied(&self, seg: PhysSeg, words: [u64; 4]) -> &Fill {
        let f = self.get(seg);
        f.store_words(words);
        self.take_dirty(seg);
        f
    }

    /// The bits of `layer` if it is partial.
    #[inline]
    pub fn words_of(&self, layer: &Layer) -> Option<[u64; 4]> {
        layer.is_partial().then(|| self.get(layer.seg()).words())
    }
}

/// (word index, mask) pairs covering bits `[first, first + n)`.
fn word_masks(first: u64, n: u64) -> impl Iterator<Item = (usize, u64)> {
    let end = (first + n).min(256);
    let mut at = first.min(end);
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let w = at / 64;
        let lo = at % 64;
        let hi = (end - w * 64).min(64);
        let mask = if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        at = w * 64 + hi;
        Some((w as usize, mask))
    })
}

/// One layer of a segment's contents: a physical segment, and whether it holds only
/// the granules its fill records. Packed in one word (a table holds one per extent and
/// layer): the segment in the low 63 bits, the partial flag in the top one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Layer(u64);

/// The partial flag's bit in a [`Layer`].
const PARTIAL: u64 = 1 << 63;

impl Layer {
    /// A layer of `seg` (below 2^63: decoders bound every segment by the pool's size),
    /// partial or full.
    #[inline]
    pub fn new(seg: PhysSeg, partial: bool) -> Layer {
        debug_assert!(seg < PARTIAL, "segment {seg} out of range");
        Layer(seg | if partial { PARTIAL } else { 0 })
    }

    /// A full layer.
    pub fn full(seg: PhysSeg) -> Layer {
        Layer::new(seg, false)
    }

    /// A partial layer.
    pub fn partial(seg: PhysSeg) -> Layer {
        Layer::new(seg, true)
    }

    /// The physical segment (for a run: the first of the run).
    #[inline]
    pub fn seg(&self) -> PhysSeg {
        self.0 & !PARTIAL
    }

    /// True if it holds only the granules its segment's fill records; false: all of them.
    #[inline]
    pub fn is_partial(&self) -> bool {
        self.0 & PARTIAL != 0
    }

    /// True if the layer holds granule `g`.
    #[inline]
    pub fn holds(&self, fills: &Fills, g: u64) -> bool {
        !self.is_partial() || fills.get(self.seg()).test(g)
    }
}

// What a table costs in memory per extent (issue 18): a layer is one word, an
// extent with up to two layers holds them inline, a fill is its bits.
const _: () = assert!(std::mem::size_of::<Layer>() == 8);
const _: () = assert!(std::mem::size_of::<Extent>() == 48);
const _: () = assert!(std::mem::size_of::<Fill>() == 32);

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("seg", &self.seg())
            .field("partial", &self.is_partial())
            .finish()
    }
}

/// The state of an extent in the table (absence is the zero state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentState {
    /// Reads go to the layers; writes go to the top layer if the extent is writable.
    Mapped,
    /// Reads and writes fail with a media error (damaged metadata, injected faults).
    Error,
}

/// A table entry: `len` virtual segments starting at `vseg`.
#[derive(Debug, PartialEq, Eq)]
pub struct Extent {
    pub vseg: u64,
    pub len: u32,
    pub state: ExtentState,
    /// Generation in which the top layer was created for this disk. The top layer is
    /// writable by a disk only if `birth` is newer than the disk's last snapshot
    /// (implicit no-write for everything shared at snapshot time, in O(1)).
    pub birth: u64,
    /// Top first. Empty only in the `Error` state.
    pub layers: SmallVec<[Layer; 2]>,
}

impl Clone for Extent {
    /// Plain data: the layers are copied as bytes (a leaf copy clones every extent).
    #[inline]
    fn clone(&self) -> Extent {
        Extent {
            layers: SmallVec::from_slice(&self.layers),
            ..*self
        }
    }
}

impl Extent {
    /// One past the last virtual segment.
    #[inline]
    pub fn end(&self) -> u64 {
        self.vseg + self.len as u64
    }

    /// True if it covers `vseg`.
    #[inline]
    pub fn contains(&self, vseg: u64) -> bool {
        vseg >= self.vseg && vseg < self.end()
    }

    /// A single full segment.
    pub fn full(vseg: u64, seg: PhysSeg, birth: u64) -> Extent {
        Extent {
            vseg,
            len: 1,
            state: ExtentState::Mapped,
            birth,
            layers: smallvec::smallvec![Layer::full(seg)],
        }
    }

    /// A run of `len` full segments mapped to `seg..seg + len`.
    pub fn run(vseg: u64, len: u32, seg: PhysSeg, birth: u64) -> Extent {
        Extent {
            len,
            ..Extent::full(vseg, seg, birth)
        }
    }

    /// True for a plain run: one full layer (the only shape that may have `len > 1`).
    pub fn is_plain(&self) -> bool {
        self.state == ExtentState::Mapped && self.layers.len() == 1 && !self.layers[0].is_partial()
    }

    /// The part of a plain run covering `[from, to)` (virtual segments inside it).
    pub fn slice(&self, from: u64, to: u64) -> Extent {
        debug_assert!(self.vseg <= from && from < to && to <= self.end());
        let mut e = self.clone();
        let shift = from - self.vseg;
        e.vseg = from;
        e.len = (to - from) as u32;
        if self.state == ExtentState::Mapped {
            for l in e.layers.iter_mut() {
                *l = Layer::new(l.seg() + shift, l.is_partial());
            }
        }
        e
    }

    /// The physical segments this extent references, with multiplicity: every layer's
    /// segment (runs: every segment of the run).
    pub fn segments(&self) -> impl Iterator<Item = PhysSeg> + '_ {
        let run = if self.is_plain() { self.len as u64 } else { 1 };
        self.layers
            .iter()
            .flat_map(move |l| (0..run).map(move |i| l.seg() + i))
    }

    /// The extent as it applies to virtual segment `vseg` (inside it): a one-segment
    /// extent.
    pub fn at(&self, vseg: u64) -> Extent {
        self.slice(vseg, vseg + 1)
    }
}

/// Where a block's data comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// This physical segment, at the same block offset.
    Seg(PhysSeg),
    /// Nothing is stored: the block reads as zeros.
    Zero,
    /// The block is in the error state.
    Error,
}

/// Geometry of a pool's segments, in blocks of the pool's block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    pub segment_blocks: u64,
    pub granule_blocks: u64,
    pub granules: u64,
}

impl Geometry {
    /// Geometry for `segment_bytes` segments of `block_size` blocks.
    pub fn new(block_size: u32, segment_bytes: u64) -> Geometry {
        let segment_blocks = segment_bytes / block_size as u64;
        debug_assert!(
            segment_blocks.is_power_of_two(),
            "{segment_bytes} / {block_size}"
        );
        let granules = segment_blocks.min(MAX_GRANULES);
        Geometry {
            block_size,
            segment_blocks,
            granule_blocks: segment_blocks / granules,
            granules,
        }
    }

    /// Segment size in bytes.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_blocks * self.block_size as u64
    }

    /// The virtual segment holding `block`, and the block's index in it. Segments and
    /// granules hold a power of two of blocks (the pool format checks it), so these
    /// helpers shift and mask instead of dividing: they run on every I/O.
    #[inline]
    pub fn split_block(&self, block: u64) -> (u64, u64) {
        (
            block >> self.segment_blocks.trailing_zeros(),
            block & (self.segment_blocks - 1),
        )
    }

    /// The granule that block `block_in_seg` of a segment belongs to.
    #[inline]
    pub fn granule_of(&self, block_in_seg: u64) -> u64 {
        block_in_seg >> self.granule_blocks.trailing_zeros()
    }

    /// The granules `(first, count)` that blocks `[b0, b0 + n)` of a segment touch.
    #[inline]
    pub fn granule_span(&self, b0: u64, n: u64) -> (u64, u64) {
        let first = self.granule_of(b0);
        (
            first,
            self.granule_of(b0 + n + self.granule_blocks - 1) - first,
        )
    }

    /// The granules `(first, count)` that blocks `[b0, b0 + n)` of a segment cover
    /// whole (count 0 when none does).
    #[inline]
    pub fn whole_granules(&self, b0: u64, n: u64) -> (u64, u64) {
        let first = self.granule_of(b0 + self.granule_blocks - 1);
        let end = self.granule_of(b0 + n);
        (first, end.saturating_sub(first))
    }

    /// True when block `b` of a segment starts a granule.
    #[inline]
    pub fn granule_aligned(&self, b: u64) -> bool {
        b & (self.granule_blocks - 1) == 0
    }

    /// Where block `block_in_seg` of virtual segment `e` comes from.
    #[inline]
    pub fn resolve(&self, fills: &Fills, e: &Extent, vseg: u64, block_in_seg: u64) -> Source {
        if e.state == ExtentState::Error {
            return Source::Error;
        }
        let shift = vseg - e.vseg;
        let g = self.granule_of(block_in_seg);
        for l in &e.layers {
            if l.holds(fills, g) {
                let run_shift = if !l.is_partial() && e.len > 1 {
                    shift
                } else {
                    0
                };
                return Source::Seg(l.seg() + run_shift);
            }
        }
        Source::Zero
    }

    /// Splits `[block_in_seg, block_in_seg + n)` of a segment into runs with one source
    /// each: (first block, block count, source).
    pub fn resolve_runs(
        &self,
        fills: &Fills,
        e: Option<&Extent>,
        vseg: u64,
        block_in_seg: u64,
        n: u64,
    ) -> SmallVec<[(u64, u64, Source); 4]> {
        let mut out: SmallVec<[(u64, u64, Source); 4]> = SmallVec::new();
        let Some(e) = e else {
            out.push((block_in_seg, n, Source::Zero));
            return out;
        };
        // Fast paths: a single full layer, or the error state.
        if e.state == ExtentState::Error {
            out.push((block_in_seg, n, Source::Error));
            return out;
        }
        if e.layers.len() == 1 && !e.layers[0].is_partial() {
            out.push((block_in_seg, n, self.resolve(fills, e, vseg, block_in_seg)));
            return out;
        }
        let end = block_in_seg + n;
        let mut b = block_in_seg;
        while b < end {
            let g = self.granule_of(b);
            let g_end = ((g + 1) * self.granule_blocks).min(end);
            let src = self.resolve(fills, e, vseg, b);
            match out.last_mut() {
                Some(last) if last.2 == src && last.0 + last.1 == b => last.1 += g_end - b,
                _ => out.push((b, g_end - b, src)),
            }
            b = g_end;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Granules touched vs granules covered whole, with 8-block granules (512-byte
    /// blocks, 1 MiB segments).
    #[test]
    fn touched_and_whole_granules() {
        let g = Geometry::new(512, 1 << 20);
        assert_eq!(g.granule_blocks, 8);
        assert_eq!(g.granule_span(7, 17), (0, 3));
        assert_eq!(g.whole_granules(7, 17), (1, 2));
        assert_eq!(g.whole_granules(8, 16), (1, 2));
        assert_eq!(
            g.whole_granules(3, 2),
            (1, 0),
            "inside one granule: none whole"
        );
        assert_eq!(g.whole_granules(0, 8), (0, 1));
    }

    #[test]
    fn fill_ranges() {
        let f = Fill::new();
        assert!(f.is_empty());
        assert!(f.set_range(3, 70));
        assert!(!f.set_range(10, 5), "already set");
        assert!(f.test(3) && f.test(72) && !f.test(73) && !f.test(2));
        assert!(f.all_set(3, 70) && !f.all_set(2, 2));
        assert_eq!(f.count(), 70);
        assert!(f.clear_range(0, 256));
        assert!(f.is_empty());
        assert!(f.set_range(0, 256));
        assert!(f.is_full(256));
        assert_eq!(f.words(), [u64::MAX; 4]);
        let g = Fill::new();
        g.set_range(0, 16);
        assert!(g.is_full(16) && !g.is_full(17));
    }

    #[test]
    fn geometry() {
        let g = Geometry::new(4096, 1 << 20);
        assert_eq!(
            (g.segment_blocks, g.granules, g.granule_blocks),
            (256, 256, 1)
        );
        let g = Geometry::new(4096, 64 << 20);
        assert_eq!(
            (g.segment_blocks, g.granules, g.granule_blocks),
            (16384, 256, 64)
        );
        let g = Geometry::new(4096, 64 << 10);
        assert_eq!(
            (g.segment_blocks, g.granules, g.granule_blocks),
            (16, 16, 1)
        );
    }

    #[test]
    fn resolve_through_layers() {
        let g = Geometry::new(4096, 1 << 20);
        let fills = Fills::new(8192);
        fills.fresh(7).set_range(10, 2);
        fills.fresh(8).set_range(11, 5);
        // A segment in another chunk, looked at first: empty.
        assert!(fills.get(5000).is_empty());
        let e = Extent {
            vseg: 0,
            len: 1,
            state: ExtentState::Mapped,
            birth: 1,
            layers: smallvec::smallvec![Layer::partial(7), Layer::partial(8)],
        };
        assert_eq!(g.resolve(&fills, &e, 0, 10), Source::Seg(7));
        assert_eq!(g.resolve(&fills, &e, 0, 11), Source::Seg(7));
        assert_eq!(g.resolve(&fills, &e, 0, 12), Source::Seg(8));
        assert_eq!(g.resolve(&fills, &e, 0, 16), Source::Zero);
        assert_eq!(e.clone(), e);
        let runs = g.resolve_runs(&fills, Some(&e), 0, 8, 10);
        assert_eq!(
            runs.as_slice(),
            &[
                (8, 2, Source::Zero),
                (10, 2, Source::Seg(7)),
                (12, 4, Source::Seg(8)),
                (16, 2, Source::Zero)
            ]
        );
        let run = Extent::run(100, 10, 500, 1);
        assert_eq!(g.resolve(&fills, &run, 105, 3), Source::Seg(505));
        assert_eq!(run.segments().count(), 10);
        let s = run.slice(103, 106);
        assert_eq!((s.vseg, s.len, s.layers[0].seg()), (103, 3, 503));
        assert_eq!(
            g.resolve_runs(&fills, None, 0, 0, 4).as_slice(),
            &[(0, 4, Source::Zero)]
        );
    }
}
