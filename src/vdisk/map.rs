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
pub const MAX_RUN_SEGMENTS: u16 = 256;

/// Granules per segment at most (one bit each in a [`Fill`]).
pub const MAX_GRANULES: u64 = 256;

/// Which granules of one physical segment hold data (meaningful for the segments of
/// partial layers). Kept by segment in the pool's [`Fills`], seen by every view that
/// maps the segment; bits are set by the agent that wrote the granule, after the write
/// completed, and only while the segment is the writable top layer of exactly one disk.
/// Once the segment is shared (a snapshot, a clone) its fill never changes again.
///
/// One word a segment (issue 18: memory per mapped extent). Most partial segments hold
/// a few granules close together (a scattered 4 KiB first write sets one), so the word
/// holds them inline: a window of [`WINDOW`] granules and where it starts, or, for a
/// few granules far apart (a segment that took two or three scattered 4 KiB writes), a
/// list of up to [`LIST_MAX`] granule numbers. A fill that fits neither moves to a
/// 32-byte bitmap on the heap, and the word points to it; it stays there until the segment is allocated again ([`Fills::copied`]),
/// when nothing references the segment, so a reader never loses the bitmap it loaded.
/// Every change is one compare-and-swap of the word (inline) or atomic operations on the
/// bitmap's words (on the heap), so agents on several cores set bits without a lock.
///
/// Whether it changed since the controller last persisted it is a bit of its chunk in
/// [`Fills`], and which disk and virtual segment it belongs to travels with the change
/// ([`DirtyFill`]).
#[derive(Default)]
pub struct Fill {
    word: AtomicU64,
}

/// Granules an inline fill's window covers.
const WINDOW: u64 = 56;
/// The window's bits in an inline word.
const WINDOW_MASK: u64 = (1 << WINDOW) - 1;
/// Where an inline window starts, in units of [`BASE_UNIT`] granules: the word's bits
/// 56..63.
const BASE_SHIFT: u32 = 56;
const BASE_UNIT: u64 = 4;
/// The last start a window may have (it ends at granule 256).
const MAX_BASE: u64 = MAX_GRANULES - WINDOW;
/// A word whose bits 56..62 hold `LIST_CODE + n` lists `n` granules (1 to [`LIST_MAX`]),
/// one byte each from bit 0, in ascending order. Window starts use codes up to
/// `MAX_BASE / BASE_UNIT` (50), below it.
const LIST_CODE: u64 = 64;
/// Most granules a list word holds: one byte each in the 56 bits below the code.
const LIST_MAX: u32 = 7;
/// Set in a word that points to a bitmap on the heap (user-space addresses are below
/// 2^63, and a bitmap is 8-byte aligned).
const ON_HEAP: u64 = 1 << 63;

/// A fill's bitmap once it left its word.
type HeapBits = [AtomicU64; 4];

/// What a fill word holds.
enum FillWord<'a> {
    /// `map` bit `i` is granule `base + i`.
    Inline {
        base: u64,
        map: u64,
    },
    /// `n` granules, byte `i` of `packed` the `i`-th.
    List {
        n: u32,
        packed: u64,
    },
    Heap(&'a HeapBits),
}

impl Fill {
    /// An empty fill.
    pub fn new() -> Fill {
        Fill::default()
    }

    #[inline]
    fn decode(&self, w: u64) -> FillWord<'_> {
        if w & ON_HEAP != 0 {
            let ptr = (w & !ON_HEAP) as usize as *const HeapBits;
            // SAFETY: a word with ON_HEAP set was made by `Fill::to_heap` from
            // `Box::into_raw` of a `HeapBits`; the box is freed only by `Fill::reset` (a
            // segment allocated again, which nothing references, so no reader holds this
            // word) or by `drop`, which has `&mut self`. The reference lives no longer
            // than `&self`.
            FillWord::Heap(unsafe { &*ptr })
        } else {
            let code = w >> BASE_SHIFT;
            if code >= LIST_CODE {
                FillWord::List {
                    n: (code - LIST_CODE) as u32,
                    packed: w & WINDOW_MASK,
                }
            } else {
                FillWord::Inline {
                    base: code * BASE_UNIT,
                    map: w & WINDOW_MASK,
                }
            }
        }
    }

    /// An inline word for `words` if its granules fit one window, or else are at most
    /// [`LIST_MAX`].
    fn inline_word(words: [u64; 4]) -> Option<u64> {
        let lo = first_set(words)?;
        let hi = last_set(words).expect("a set bit");
        let base = (lo / BASE_UNIT * BASE_UNIT).min(MAX_BASE);
        if hi >= base + WINDOW {
            return Fill::list_word(words);
        }
        let mut map = 0u64;
        for g in lo..=hi {
            if words[(g / 64) as usize] & (1 << (g % 64)) != 0 {
                map |= 1 << (g - base);
            }
        }
        Some((base / BASE_UNIT) << BASE_SHIFT | map)
    }

    /// A list word for `words` if they hold 1 to [`LIST_MAX`] granules.
    fn list_word(words: [u64; 4]) -> Option<u64> {
        let n: u32 = words.iter().map(|w| w.count_ones()).sum();
        if n == 0 || n > LIST_MAX {
            return None;
        }
        let mut packed = 0u64;
        let mut i = 0;
        for (k, &w) in words.iter().enumerate() {
            let mut bits = w;
            while bits != 0 {
                let g = k as u64 * 64 + bits.trailing_zeros() as u64;
                packed |= g << (8 * i);
                i += 1;
                bits &= bits - 1;
            }
        }
        Some((LIST_CODE + n as u64) << BASE_SHIFT | packed)
    }

    /// A heap word holding `words`.
    fn to_heap(words: [u64; 4]) -> u64 {
        let bits: Box<HeapBits> = Box::new(words.map(AtomicU64::new));
        let ptr = Box::into_raw(bits) as usize as u64;
        debug_assert!(ptr & ON_HEAP == 0 && ptr != 0);
        ptr | ON_HEAP
    }

    /// The word for `words`: inline if they fit one window.
    fn word_for(words: [u64; 4]) -> u64 {
        match first_set(words) {
            None => 0,
            Some(_) => Fill::inline_word(words).unwrap_or_else(|| Fill::to_heap(words)),
        }
    }

    /// Frees the bitmap a word made by `to_heap` points to.
    ///
    /// # Safety
    /// `w` came from `to_heap`, is no longer stored in any fill, and no reference from
    /// `decode` of it is alive.
    unsafe fn free_word(w: u64) {
        if w & ON_HEAP != 0 {
            // SAFETY: by the caller's contract the box is ours alone.
            drop(unsafe { Box::from_raw((w & !ON_HEAP) as usize as *mut HeapBits) });
        }
    }

    /// Applies `edit` to the bits, one compare-and-swap of the word or atomic
    /// operations on the bitmap. `edit` maps old words to new ones (a pure function:
    /// it may run again when another core changed the word meanwhile); `heap` does the
    /// same change on a bitmap with atomic operations and says if anything changed.
    fn update(
        &self,
        edit: impl Fn([u64; 4]) -> [u64; 4],
        heap: impl Fn(&HeapBits) -> bool,
    ) -> bool {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let old = match self.decode(w) {
                FillWord::Heap(bits) => return heap(bits),
                FillWord::Inline { base, map } => expand(base, map),
                FillWord::List { n, packed } => expand_list(n, packed),
            };
            let new = edit(old);
            if new == old {
                return false;
            }
            let nw = Fill::word_for(new);
            match self
                .word
                .compare_exchange_weak(w, nw, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => {
                    // SAFETY: `nw` was never stored; no one else saw it.
                    unsafe { Fill::free_word(nw) };
                    w = now;
                }
            }
        }
    }

    /// True if granule `g` holds data.
    #[inline]
    pub fn test(&self, g: u64) -> bool {
        match self.decode(self.word.load(Ordering::Acquire)) {
            FillWord::Inline { base, map } => {
                g >= base && g < base + WINDOW && map & (1 << (g - base)) != 0
            }
            FillWord::List { n, packed } => (0..n).any(|i| (packed >> (8 * i)) & 0xff == g),
            FillWord::Heap(bits) => {
                bits[(g / 64) as usize].load(Ordering::Acquire) & (1 << (g % 64)) != 0
            }
        }
    }

    /// Marks granules `[first, first + n)` as holding data. Returns true if any bit was
    /// newly set.
    pub fn set_range(&self, first: u64, n: u64) -> bool {
        self.update(
            |mut words| {
                for (w, mask) in word_masks(first, n) {
                    words[w] |= mask;
                }
                words
            },
            |bits| {
                let mut changed = false;
                for (w, mask) in word_masks(first, n) {
                    let old = bits[w].fetch_or(mask, Ordering::AcqRel);
                    changed |= old & mask != mask;
                }
                changed
            },
        )
    }

    /// Marks granules `[first, first + n)` as empty. Returns true if any bit was cleared.
    pub fn clear_range(&self, first: u64, n: u64) -> bool {
        self.update(
            |mut words| {
                for (w, mask) in word_masks(first, n) {
                    words[w] &= !mask;
                }
                words
            },
            |bits| {
                let mut changed = false;
                for (w, mask) in word_masks(first, n) {
                    let old = bits[w].fetch_and(!mask, Ordering::AcqRel);
                    changed |= old & mask != 0;
                }
                changed
            },
        )
    }

    /// True if every granule in `[first, first + n)` holds data.
    pub fn all_set(&self, first: u64, n: u64) -> bool {
        let words = self.words();
        word_masks(first, n).all(|(w, m)| words[w] & m == m)
    }

    /// True if no granule holds data.
    pub fn is_empty(&self) -> bool {
        self.words() == [0; 4]
    }

    /// True if all of the first `granules` granules hold data.
    pub fn is_full(&self, granules: u64) -> bool {
        self.all_set(0, granules)
    }

    /// Number of granules holding data.
    pub fn count(&self) -> u32 {
        self.words().iter().map(|w| w.count_ones()).sum()
    }

    /// True if the bits left the word for a bitmap on the heap.
    pub fn is_on_heap(&self) -> bool {
        self.word.load(Ordering::Acquire) & ON_HEAP != 0
    }

    /// The bits as words (a consistent-enough copy: each word is read atomically).
    #[inline]
    pub fn words(&self) -> [u64; 4] {
        match self.decode(self.word.load(Ordering::Acquire)) {
            FillWord::Inline { base, map } => expand(base, map),
            FillWord::List { n, packed } => expand_list(n, packed),
            FillWord::Heap(bits) => [0, 1, 2, 3].map(|i| bits[i].load(Ordering::Acquire)),
        }
    }

    /// Sets the bits to `words` (replaying the log; putting back what a copy added that
    /// did not become the disk's). A bitmap already on the heap is kept and
    /// overwritten: another core may hold it.
    pub fn store_words(&self, words: [u64; 4]) {
        if !self.update(
            |_| words,
            |bits| {
                for (a, w) in bits.iter().zip(words) {
                    a.store(w, Ordering::Release);
                }
                true
            },
        ) {
            debug_assert_eq!(self.words(), words);
        }
    }

    /// Sets the bits to `words` for a segment allocated again: nothing references it,
    /// so a bitmap on the heap is freed.
    fn reset(&self, words: [u64; 4]) {
        let old = self.word.swap(Fill::word_for(words), Ordering::AcqRel);
        // SAFETY: the segment is being allocated, so no view maps it and no reader holds
        // a reference decoded from `old` (`Fills::copied`'s contract); `old` is out of
        // the word.
        unsafe { Fill::free_word(old) };
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reference decoded from the word is alive.
        unsafe { Fill::free_word(*self.word.get_mut()) };
    }
}

impl std::fmt::Debug for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fill")
            .field("words", &self.words())
            .field("on_heap", &self.is_on_heap())
            .finish()
    }
}

/// An inline window as bitmap words.
#[inline]
fn expand(base: u64, map: u64) -> [u64; 4] {
    let mut words = [0u64; 4];
    if map == 0 {
        return words;
    }
    let (w, s) = ((base / 64) as usize, base % 64);
    words[w] = map << s;
    if s != 0 && w + 1 < 4 {
        words[w + 1] = map >> (64 - s);
    }
    words
}

/// A list word's granules as bitmap words.
#[inline]
fn expand_list(n: u32, packed: u64) -> [u64; 4] {
    let mut words = [0u64; 4];
    for i in 0..n {
        let g = (packed >> (8 * i)) & 0xff;
        words[(g / 64) as usize] |= 1 << (g % 64);
    }
    words
}

/// The first granule set in `words`.
fn first_set(words: [u64; 4]) -> Option<u64> {
    (0..4)
        .find(|&i| words[i] != 0)
        .map(|i| i as u64 * 64 + words[i].trailing_zeros() as u64)
}

/// The last granule set in `words`.
fn last_set(words: [u64; 4]) -> Option<u64> {
    (0..4)
        .rev()
        .find(|&i| words[i] != 0)
        .map(|i| i as u64 * 64 + 63 - words[i].leading_zeros() as u64)
}

/// A fill that changed since the controller last persisted it, as an agent (or the
/// controller) queues it: the segment, and the disk and virtual segment whose writable
/// top layer it was when it changed — where the controller finds the leaf to copy if a
/// checkpoint wrote it (the next checkpoint then writes the copy with the new bits).
///
/// **An older entry.** A segment freed and allocated again may have two entries
/// queued: the older one for where it was, the newer for where it is. Whichever comes
/// first takes the change (the dirty mark), logs the fill's bits as they are now (a
/// fill record is the segment's, wherever it is), and copies the leaf where its entry
/// says — so the older one copies nothing of use. That loses nothing, because the leaf
/// where the segment is now was not written since it got there:
/// - the older entry was queued before the segment was freed for reuse: an agent
///   queues it when a write completes, and a freed segment is reused only after a
///   drain barrier that waits for every write in flight (`release_after_drain`);
/// - every checkpoint takes the queued entries (`persist_dirty_fills`) in the same step
///   of the controller's core as it captures the tables; so a checkpoint that captured
///   the table after the segment got its new place took the older entry first;
/// - the leaf the segment got its new place in is new or changed then, unwritten; only
///   a checkpoint writes a leaf.
///
/// So while the older entry is queued, the new place's leaf is still unwritten, and the
/// next checkpoint writes it with the fill's bits as they are then. (Checking each
/// entry against the table instead cost a descent to a cold leaf for every changed
/// fill, about a tenth of the time of a stream of first writes.)
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
    /// A bit per segment: set when the controller allocated it for a write fault since
    /// its last checkpoint began ([`Fills::allocated_since_checkpoint`]).
    recent: Box<[AtomicU64]>,
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
            recent: (0..FILL_CHUNK / 64).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Notes that the controller allocated `seg` for a write fault: until the next
    /// checkpoint begins, wherever the segment is placed, the leaf that holds it is one
    /// no checkpoint wrote (only a checkpoint writes leaves, and only those it captured
    /// when it began; a leaf a segment is placed in is new or changed then). A change of
    /// its fill then needs no leaf copied for the next checkpoint to write it
    /// (`Controller::log_dirty_fills`), and no descent to find out.
    pub fn allocated_for_fault(&self, seg: PhysSeg) {
        let i = seg % FILL_CHUNK;
        self.chunk(seg).recent[(i / 64) as usize].fetch_or(1 << (i % 64), Ordering::Relaxed);
    }

    /// True if [`Fills::allocated_for_fault`] noted `seg` since the last
    /// [`Fills::checkpoint_began`].
    pub fn allocated_since_checkpoint(&self, seg: PhysSeg) -> bool {
        let i = seg % FILL_CHUNK;
        self.chunk(seg).recent[(i / 64) as usize].load(Ordering::Relaxed) & (1 << (i % 64)) != 0
    }

    /// A checkpoint begins (before it captures the tables): forgets every segment
    /// [`Fills::allocated_for_fault`] noted.
    pub fn checkpoint_began(&self) {
        for c in self.chunks.iter().filter_map(|c| c.get()) {
            for w in c.recent.iter() {
                w.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The fill of segment `seg` (inside the pool: decoders bound every segment).
    #[inline]
    pub fn get(&self, seg: PhysSeg) -> &Fill {
        &self.chunk(seg).fills[(seg % FILL_CHUNK) as usize]
    }

    /// Asks the core to bring the fill of `seg` into its cache, if its chunk exists: for
    /// a loop over many segments' fills (a checkpoint encoding leaves), whose fills lie
    /// scattered over the pool's fill array, one cache miss per extent otherwise waited
    /// for in turn.
    #[inline]
    pub fn prefetch(&self, seg: PhysSeg) {
        if let Some(c) = (self.chunks.get((seg / FILL_CHUNK) as usize)).and_then(|c| c.get()) {
            super::search::prefetch(&c.fills[(seg % FILL_CHUNK) as usize]);
        }
    }

    /// The dirty word of `seg` and its bit.
    #[inline]
    fn dirty_bit(&self, seg: PhysSeg) -> (&AtomicU64, u64) {
        let i = seg % FILL_CHUNK;
        (&self.chunk(seg).dirty[(i / 64) as usize], 1 << (i % 64))
    }

    /// What the audit reads of `seg` (`vdisk/audit.rs`), without making its chunk:
    /// whether its fill changed since it was logged, and whether it was allocated for a
    /// fault since the last checkpoint began.
    pub fn marks(&self, seg: PhysSeg) -> (bool, bool) {
        let Some(c) = self.chunks[(seg / FILL_CHUNK) as usize].get() else {
            return (false, false);
        };
        let (i, bit) = (((seg % FILL_CHUNK) / 64) as usize, 1 << (seg % 64));
        (
            c.dirty[i].load(Ordering::Acquire) & bit != 0,
            c.recent[i].load(Ordering::Relaxed) & bit != 0,
        )
    }

    /// Every segment whose fill changed since it was logged (the audit).
    pub fn dirty_segments(&self) -> Vec<PhysSeg> {
        let mut out = Vec::new();
        for (ci, c) in self.chunks.iter().enumerate() {
            let Some(c) = c.get() else { continue };
            for (wi, w) in c.dirty.iter().enumerate() {
                let mut bits = w.load(Ordering::Acquire);
                while bits != 0 {
                    let b = bits.trailing_zeros() as u64;
                    out.push(ci as u64 * FILL_CHUNK + wi as u64 * 64 + b);
                    bits &= bits - 1;
                }
            }
        }
        out
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
        f.reset(words);
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
#[repr(transparent)]
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
// extent with up to two layers holds them inline in 32 bytes, a fill is one word.
const _: () = assert!(std::mem::size_of::<Layer>() == 8);
const _: () = assert!(std::mem::size_of::<Layers>() == 16);
const _: () = assert!(std::mem::size_of::<Extent>() == 32);
const _: () = assert!(std::mem::size_of::<Fill>() == 8);

/// A word no layer has: an empty inline slot (a layer's segment is bounded by its
/// pool's size, far below these).
const NO_LAYER: u64 = u64::MAX;
/// The first word of a stack kept on the heap.
const SPILLED: u64 = u64::MAX - 1;

/// A segment's layers, top first: up to two inline in two words, more (rare: partial
/// layers stacked by snapshots between merges) in a vector on the heap. Behaves as a
/// slice of [`Layer`]s; copying an extent copies two words unless its stack spilled.
pub struct Layers {
    /// Inline: two layer words, [`NO_LAYER`] where a slot is empty (only the second
    /// may be, or both). Spilled: [`SPILLED`] and a `Box<Vec<Layer>>` from
    /// `Box::into_raw`, owned by this stack.
    w: [u64; 2],
}

// SAFETY: a spilled stack owns its vector exclusively (as a `Box<Vec<Layer>>` would):
// nothing else points to it, `&Layers` gives only shared access and `&mut Layers`
// exclusive access to it.
unsafe impl Send for Layers {}
// SAFETY: as above; shared access only reads the vector.
unsafe impl Sync for Layers {}

impl Layers {
    /// No layers (an extent in the error state).
    pub const fn new() -> Layers {
        Layers { w: [NO_LAYER; 2] }
    }

    /// A stack of `layers`, top first.
    pub fn from_slice(layers: &[Layer]) -> Layers {
        debug_assert!(layers.iter().all(|l| l.0 < SPILLED), "{layers:?}");
        match *layers {
            [] => Layers::new(),
            [a] => Layers { w: [a.0, NO_LAYER] },
            [a, b] => Layers { w: [a.0, b.0] },
            _ => {
                let v = Box::new(layers.to_vec());
                Layers {
                    w: [SPILLED, Box::into_raw(v) as usize as u64],
                }
            }
        }
    }

    fn heap(&self) -> Option<*mut Vec<Layer>> {
        (self.w[0] == SPILLED).then_some(self.w[1] as usize as *mut Vec<Layer>)
    }

    /// Changes the stack as a vector (pushes, inserts, truncations: all rare, off
    /// the I/O path).
    fn edit<R>(&mut self, f: impl FnOnce(&mut SmallVec<[Layer; MAX_LAYERS]>) -> R) -> R {
        let mut v = SmallVec::from_slice(self);
        let r = f(&mut v);
        *self = Layers::from_slice(&v);
        r
    }

    /// Adds a layer at the bottom.
    pub fn push(&mut self, l: Layer) {
        self.edit(|v| v.push(l))
    }

    /// Inserts a layer at `i` (0: a new top).
    pub fn insert(&mut self, i: usize, l: Layer) {
        self.edit(|v| v.insert(i, l))
    }

    /// Keeps the top `n` layers.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.edit(|v| v.truncate(n))
        }
    }

    /// Adds layers at the bottom.
    pub fn extend(&mut self, layers: impl IntoIterator<Item = Layer>) {
        self.edit(|v| v.extend(layers))
    }
}

impl Default for Layers {
    fn default() -> Layers {
        Layers::new()
    }
}

impl std::ops::Deref for Layers {
    type Target = [Layer];
    #[inline]
    fn deref(&self) -> &[Layer] {
        match self.heap() {
            // SAFETY: a spilled stack's pointer came from `Box::into_raw` and is freed
            // only by `drop`; the borrow of `self` bounds the slice's life.
            Some(v) => unsafe { &*v },
            None => {
                let n = if self.w[0] == NO_LAYER {
                    0
                } else if self.w[1] == NO_LAYER {
                    1
                } else {
                    2
                };
                // SAFETY: `Layer` is `repr(transparent)` over `u64`, and the first `n`
                // words are layers; the slice borrows `self.w`.
                unsafe { std::slice::from_raw_parts(self.w.as_ptr().cast::<Layer>(), n) }
            }
        }
    }
}

impl std::ops::DerefMut for Layers {
    #[inline]
    fn deref_mut(&mut self) -> &mut [Layer] {
        match self.heap() {
            // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
            Some(v) => unsafe { &mut *v },
            None => {
                let n = self.len();
                // SAFETY: as in `deref`; `&mut self` makes the access exclusive. Writes
                // through the slice store layers, never the sentinels (`Layer::new`).
                unsafe { std::slice::from_raw_parts_mut(self.w.as_mut_ptr().cast::<Layer>(), n) }
            }
        }
    }
}

impl Drop for Layers {
    fn drop(&mut self) {
        if let Some(v) = self.heap() {
            // SAFETY: the vector came from `Box::into_raw` and this stack owns it.
            drop(unsafe { Box::from_raw(v) });
        }
    }
}

impl Clone for Layers {
    #[inline]
    fn clone(&self) -> Layers {
        if self.w[0] == SPILLED {
            Layers::from_slice(self)
        } else {
            Layers { w: self.w }
        }
    }
}

impl PartialEq for Layers {
    fn eq(&self, other: &Layers) -> bool {
        **self == **other
    }
}

impl Eq for Layers {}

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl FromIterator<Layer> for Layers {
    fn from_iter<I: IntoIterator<Item = Layer>>(it: I) -> Layers {
        let v: SmallVec<[Layer; MAX_LAYERS]> = it.into_iter().collect();
        Layers::from_slice(&v)
    }
}

impl<const N: usize> From<SmallVec<[Layer; N]>> for Layers
where
    [Layer; N]: smallvec::Array<Item = Layer>,
{
    fn from(v: SmallVec<[Layer; N]>) -> Layers {
        Layers::from_slice(&v)
    }
}

impl From<&[Layer]> for Layers {
    fn from(v: &[Layer]) -> Layers {
        Layers::from_slice(v)
    }
}

impl<'a> IntoIterator for &'a Layers {
    type Item = &'a Layer;
    type IntoIter = std::slice::Iter<'a, Layer>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The newest generation an extent's birth can name: births are kept in 40 bits
/// (a trillion snapshots, clones and reverts; the pool refuses more).
pub const MAX_GENERATION: u64 = (1 << 40) - 1;

/// The generation in which an extent's top layer was created, in 5 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Birth([u8; 5]);

impl Birth {
    /// `generation`, which decoders and the controller keep at most [`MAX_GENERATION`].
    #[inline]
    pub fn new(generation: u64) -> Birth {
        assert!(
            generation <= MAX_GENERATION,
            "generation {generation} past {MAX_GENERATION}"
        );
        let b = generation.to_le_bytes();
        Birth([b[0], b[1], b[2], b[3], b[4]])
    }

    #[inline]
    pub fn get(self) -> u64 {
        let b = self.0;
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], 0, 0, 0])
    }
}

impl From<u64> for Birth {
    #[inline]
    fn from(generation: u64) -> Birth {
        Birth::new(generation)
    }
}

impl PartialOrd for Birth {
    fn partial_cmp(&self, other: &Birth) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Birth {
    fn cmp(&self, other: &Birth) -> std::cmp::Ordering {
        self.get().cmp(&other.get())
    }
}

impl std::fmt::Debug for Birth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl std::fmt::Display for Birth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

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

/// A table entry: `len` virtual segments starting at `vseg`. 32 bytes: a leaf of
/// a table holds one per mapped segment or run, and a pool's memory is mostly these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub vseg: u64,
    /// Top first. Empty only in the `Error` state.
    pub layers: Layers,
    /// Generation in which the top layer was created for this disk. The top layer is
    /// writable by a disk only if `birth` is newer than the disk's last snapshot
    /// (implicit no-write for everything shared at snapshot time, in O(1)).
    pub birth: Birth,
    /// Segments covered: at most [`MAX_RUN_SEGMENTS`].
    pub len: u16,
    pub state: ExtentState,
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
            birth: birth.into(),
            layers: Layers::from_slice(&[Layer::full(seg)]),
        }
    }

    /// A run of `len` full segments mapped to `seg..seg + len`.
    pub fn run(vseg: u64, len: u16, seg: PhysSeg, birth: u64) -> Extent {
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
        e.len = (to - from) as u16;
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

/// Extent `e` as it shows with one-segment extents laid over it (the extents an agent
/// keeps beside its view, `agent/recent.rs`): calls `f` on each taken from `kept` (sorted)
/// that starts before `e` ends — those in the gap before `e` too — and on the parts of `e`
/// around them, in order; parts that end at or before `from` are left out. Returns false
/// once `f` does.
pub fn lay_over<'e>(
    e: &'e Extent,
    from: u64,
    kept: &mut std::iter::Peekable<impl Iterator<Item = &'e Extent>>,
    f: &mut dyn FnMut(std::borrow::Cow<'e, Extent>) -> bool,
) -> bool {
    use std::borrow::Cow;
    let mut at = e.vseg;
    while let Some(k) = kept.next_if(|k| k.vseg < e.end()) {
        if k.vseg > at && k.vseg > from && !f(Cow::Owned(e.slice(at, k.vseg))) {
            return false;
        }
        if !f(Cow::Borrowed(k)) {
            return false;
        }
        at = at.max(k.end());
    }
    if at == e.vseg {
        f(Cow::Borrowed(e))
    } else {
        at >= e.end() || f(Cow::Owned(e.slice(at, e.end())))
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

    /// What the audit reads: the dirty and recently allocated marks of a segment, and
    /// the dirty segments across chunks, without making a chunk never touched.
    #[test]
    fn the_audit_reads_the_marks_it_was_given() {
        let fills = Fills::new(3 * FILL_CHUNK);
        assert_eq!(fills.marks(5), (false, false));
        assert!(
            fills.chunks.iter().all(|c| c.get().is_none()),
            "a look made a chunk"
        );
        for s in [5, 63, 64, FILL_CHUNK + 1, 3 * FILL_CHUNK - 1] {
            assert!(fills.mark_dirty(s));
        }
        fills.allocated_for_fault(64);
        assert_eq!(fills.marks(64), (true, true));
        assert_eq!(fills.marks(65), (false, false));
        assert_eq!(fills.marks(FILL_CHUNK + 1), (true, false));
        assert_eq!(fills.marks(FILL_CHUNK + 65), (false, false));
        assert_eq!(
            fills.dirty_segments(),
            vec![5, 63, 64, FILL_CHUNK + 1, 3 * FILL_CHUNK - 1]
        );
        fills.checkpoint_began();
        fills.take_dirty(63);
        assert_eq!(fills.marks(64), (true, false));
        assert_eq!(fills.marks(63), (false, false));
        assert_eq!(fills.dirty_segments().len(), 4);
    }

    /// A fill against a plain bitmap, through random sets, clears and stores: the
    /// same bits whatever form the word takes, and a few granules close together stay
    /// in the word.
    #[test]
    fn a_fill_holds_the_bits_a_plain_bitmap_holds() {
        let seed = fastrand::u64(..);
        println!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..2000 {
            let f = Fill::new();
            let mut plain = [0u64; 4];
            for _ in 0..rng.usize(1..12) {
                let first = rng.u64(0..MAX_GRANULES);
                let longest = if rng.bool() { 4 } else { 80 };
                let n = rng.u64(1..=(MAX_GRANULES - first).min(longest));
                let op = rng.u8(0..10);
                let before = plain;
                for (w, m) in word_masks(first, n) {
                    if op < 7 {
                        plain[w] |= m
                    } else if op < 9 {
                        plain[w] &= !m
                    }
                }
                let changed = match op {
                    0..7 => f.set_range(first, n),
                    7..9 => f.clear_range(first, n),
                    _ => {
                        plain = [rng.u64(..), 0, 0, rng.u64(..) & 0xff];
                        f.store_words(plain);
                        before != plain
                    }
                };
                assert_eq!(changed, before != plain, "seed {seed}: op {op} {first}+{n}");
                assert_eq!(f.words(), plain, "seed {seed}: op {op} {first}+{n}");
                for g in 0..MAX_GRANULES {
                    let set = plain[(g / 64) as usize] & (1 << (g % 64)) != 0;
                    assert_eq!(f.test(g), set, "seed {seed}: granule {g}");
                }
                let ones: u32 = plain.iter().map(|w| w.count_ones()).sum();
                assert_eq!(f.count(), ones);
                assert_eq!(f.is_empty(), ones == 0);
                if !f.is_on_heap() {
                    assert!(Fill::inline_word(plain).is_some() || ones == 0);
                }
            }
        }
        // One granule, or a run within 56, stays in the word, at either end too.
        for (first, n) in [(0, 1), (255, 1), (100, 56), (200, 56), (3, 53)] {
            let f = Fill::new();
            f.set_range(first, n);
            assert!(!f.is_on_heap(), "{first}+{n} left the word");
            assert!(f.all_set(first, n) && f.count() == n as u32);
        }
        // Up to seven granules far apart stay in the word as a list; an eighth, or a
        // run that fits no window beside one, moves the fill to the heap.
        let f = Fill::new();
        let far = [255, 0, 77, 140, 33, 200, 180];
        for (i, &g) in far.iter().enumerate() {
            f.set_range(g, 1);
            assert!(
                !f.is_on_heap(),
                "{} granules far apart left the word",
                i + 1
            );
            assert!(far[..=i].iter().all(|&x| f.test(x)) && f.count() == i as u32 + 1);
            assert!(!f.test(1) && !f.test(254));
        }
        f.clear_range(77, 1);
        assert!(!f.is_on_heap() && !f.test(77) && f.count() == 6);
        f.set_range(77, 1);
        f.set_range(100, 1);
        assert!(f.is_on_heap() && f.count() == 8 && f.test(100) && f.test(255));
        let f = Fill::new();
        f.set_range(0, 1);
        f.set_range(100, 10);
        assert!(
            f.is_on_heap() && f.count() == 11,
            "a run and a granule far from it"
        );
    }

    /// A layer stack behaves as the vector it replaces: inline up to two layers, on
    /// the heap beyond, through pushes, inserts, truncations, clones and drops.
    #[test]
    fn layer_stacks_behave_as_vectors() {
        let seed = fastrand::u64(..);
        println!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..2000 {
            let mut st = Layers::new();
            let mut v: Vec<Layer> = Vec::new();
            for _ in 0..rng.usize(1..10) {
                let l = Layer::new(rng.u64(0..1 << 40), rng.bool());
                match rng.u8(0..5) {
                    0 | 1 if v.len() < 6 => {
                        st.push(l);
                        v.push(l);
                    }
                    2 if v.len() < 6 => {
                        let i = rng.usize(0..=v.len());
                        st.insert(i, l);
                        v.insert(i, l);
                    }
                    3 => {
                        let n = rng.usize(0..=v.len());
                        st.truncate(n);
                        v.truncate(n);
                    }
                    _ => {
                        if let Some(x) = st.first_mut() {
                            *x = l;
                            v[0] = l;
                        }
                    }
                }
                assert_eq!(&st[..], &v[..], "seed {seed}");
                let c = st.clone();
                assert_eq!(c, st);
                assert_eq!(st.w[0] == SPILLED, v.len() > 2, "seed {seed}");
                drop(c);
                assert_eq!(
                    &st[..],
                    &v[..],
                    "seed {seed}: a clone's drop freed the original"
                );
            }
            let collected: Layers = v.iter().copied().collect();
            assert_eq!(&collected[..], &v[..]);
        }
        assert_eq!(Birth::new(MAX_GENERATION).get(), MAX_GENERATION);
        assert!(Birth::new(7) < Birth::new(300) && Birth::new(1 << 33) > Birth::new(255));
        let e = Extent::full(5, 9, 1 << 39);
        assert_eq!(
            (e.birth.get(), e.len, &e.layers[..]),
            (1 << 39, 1, &[Layer::full(9)][..])
        );
    }

    /// Agents on several cores set granules of one fill at once: every bit set by any
    /// of them is there afterwards, across the move from the word to the heap.
    #[test]
    fn concurrent_setters_lose_no_granule() {
        let fills = Fills::new(64);
        for round in 0..2000 {
            let f = fills.get(round % 64);
            let start = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        for i in 0..128u64 {
                            f.set_range((i * 2 + t) % MAX_GRANULES, 1);
                        }
                    });
                }
            });
            assert_eq!(f.words(), [u64::MAX; 4], "round {round}");
            assert!(f.is_full(MAX_GRANULES));
            // Allocated again: empty, back in its word.
            let f = fills.fresh(round % 64);
            assert!(f.is_empty() && !f.is_on_heap());
        }
    }

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
            birth: 1.into(),
            layers: crate::vdisk::map::Layers::from_slice(&[Layer::partial(7), Layer::partial(8)]),
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
