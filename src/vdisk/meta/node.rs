//! Table node pages: the internal nodes and leaves of a disk's copy-on-write B+tree
//! (`table.rs`), leaves holding the extents with their layers and fills.
//!
//! Leaves are written packed (variable-length numbers, fills as runs of granules; the
//! layout is above [`encode_leaf`]); the first, wide leaf encoding is still read, so a
//! pool written before the packed one opens, its leaves rewritten packed as they change.
//! The table packs a leaf by `table::extent_budget`, which counts a fill at a fixed size:
//! when fills have grown since, the leaf is written as two leaf pages, its parent
//! pointing at both (an internal node holds twice the children the table gives one).

use super::{
    BlockPtr, HEADER_BYTES, MAX_VSEG, MetaError, PAGE_BYTES, PageHeader, PageKind, Reader, Writer,
    decode_header, new_page, seal,
};
use crate::vdisk::map::{
    Extent, ExtentState, Fills, Layer, MAX_GENERATION, MAX_LAYERS, MAX_RUN_SEGMENTS,
};
use crate::vdisk::table::{INTERNAL_ENTRY_BYTES, MAX_PACKED_EXTENT_BYTES, NODE_PAYLOAD_BYTES};
use smallvec::SmallVec;
use uuid::Uuid;

/// Encodes an internal node: `(first virtual segment, child pointer)` per child
/// ([`INTERNAL_ENTRY_BYTES`] each: key, child page, child transaction, child checksum).
pub fn encode_internal(page: u64, txn: u64, pool: &Uuid, entries: &[(u64, BlockPtr)]) -> Vec<u8> {
    debug_assert!(entries.len() * INTERNAL_ENTRY_BYTES <= NODE_PAYLOAD_BYTES);
    debug_assert_eq!(INTERNAL_ENTRY_BYTES, 8 + BlockPtr::BYTES);
    let h = PageHeader {
        kind: PageKind::Internal,
        count: entries.len() as u32,
        page,
        txn,
        next: BlockPtr::NONE,
    };
    let mut b = new_page(&h, pool);
    let mut w = Writer::new(&mut b, HEADER_BYTES);
    for (k, c) in entries {
        w.u64(*k);
        c.write(&mut w);
    }
    seal(&mut b);
    b
}

/// Decodes an internal node page: keys strictly increasing, every child inside the
/// metadata area and written by a transaction not after this page's.
pub fn decode_internal(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    meta_pages: u64,
) -> Result<Vec<(u64, BlockPtr)>, MetaError> {
    let h = decode_header(b, page, pool, PageKind::Internal)?;
    let n = h.count as usize;
    if n == 0 || n * INTERNAL_ENTRY_BYTES > NODE_PAYLOAD_BYTES {
        return Err(MetaError::Field {
            page,
            field: "count",
            reason: format!(
                "{n} children (1 to {} fit)",
                NODE_PAYLOAD_BYTES / INTERNAL_ENTRY_BYTES
            ),
        });
    }
    let mut r = Reader::new(b, HEADER_BYTES);
    let mut out: Vec<(u64, BlockPtr)> = Vec::with_capacity(n);
    for i in 0..n {
        let k = r.u64().unwrap_or(0);
        let c = BlockPtr::read(&mut r).unwrap_or(BlockPtr::NONE);
        if c.page >= meta_pages {
            return Err(MetaError::Field {
                page,
                field: "child",
                reason: format!("child {i} points at page {}, beyond {meta_pages}", c.page),
            });
        }
        if c.txn == 0 || c.txn > h.txn {
            return Err(MetaError::Field {
                page,
                field: "child",
                reason: format!(
                    "child {i} expects transaction {}, not in 1..={} (this page's)",
                    c.txn, h.txn
                ),
            });
        }
        if i > 0 && k <= out.last().map_or(0, |&(pk, _)| pk) {
            return Err(MetaError::Field {
                page,
                field: "key",
                reason: format!("key {i} ({k}) is not above the previous one"),
            });
        }
        out.push((k, c));
    }
    Ok(out)
}

/// Encodes a leaf in the first, wide encoding (fixed-width fields, every fill as its
/// 256-bit map). Builds write [packed](encode_leaf) leaves and read both; this is kept
/// so that tests can write a pool as the builds before the packed encoding did.
pub fn encode_wide_leaf(
    page: u64,
    txn: u64,
    pool: &Uuid,
    extents: &[Extent],
    fills: &Fills,
) -> Vec<u8> {
    leaf_page(page, txn, pool, extents.len(), |w| {
        for e in extents {
            write_extent(w, e, fills);
        }
    })
}

/// Encodes a leaf of decoded extents in the wide encoding.
pub fn encode_raw_wide_leaf(page: u64, txn: u64, pool: &Uuid, extents: &[RawExtent]) -> Vec<u8> {
    leaf_page(page, txn, pool, extents.len(), |w| {
        for e in extents {
            write_raw_extent(w, e);
        }
    })
}

fn leaf_page(
    page: u64,
    txn: u64,
    pool: &Uuid,
    count: usize,
    write: impl FnOnce(&mut Writer<'_>),
) -> Vec<u8> {
    let h = PageHeader {
        kind: PageKind::Leaf,
        count: count as u32,
        page,
        txn,
        next: BlockPtr::NONE,
    };
    let mut b = new_page(&h, pool);
    write(&mut Writer::new(&mut b, HEADER_BYTES));
    seal(&mut b);
    b
}

/// Writes one extent as leaves (and log records) hold it, with the fills of its partial
/// layers from `fills`.
pub(super) fn write_extent(w: &mut Writer<'_>, e: &Extent, fills: &Fills) {
    write_parts(
        w,
        e.vseg,
        e.len.into(),
        e.state == ExtentState::Error,
        e.birth.get(),
        e.layers.iter().map(|l| (l.seg(), fills.words_of(l))),
    );
}

/// Writes a decoded extent as [`write_extent`] writes a live one.
pub(super) fn write_raw_extent(w: &mut Writer<'_>, e: &RawExtent) {
    write_parts(w, e.vseg, e.len, e.error, e.birth, e.layers.iter().copied());
}

fn write_parts(
    w: &mut Writer<'_>,
    vseg: u64,
    len: u32,
    error: bool,
    birth: u64,
    layers: impl ExactSizeIterator<Item = (u64, Option<[u64; 4]>)>,
) {
    w.u64(vseg);
    w.u32(len);
    w.u8(u8::from(error));
    w.u8(layers.len() as u8);
    w.u64(birth);
    for (seg, words) in layers {
        w.u64(seg);
        match words {
            None => w.u8(0),
            Some(words) => {
                w.u8(1);
                for word in words {
                    w.u64(word);
                }
            }
        }
    }
}

/// A decoded leaf extent: fills are raw words; the loader keeps them by segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawExtent {
    pub vseg: u64,
    pub len: u32,
    pub error: bool,
    pub birth: u64,
    /// Inline for the usual one layer: a table of a million extents decodes without a
    /// million small allocations.
    pub layers: SmallVec<[(u64, Option<[u64; 4]>); 1]>,
}

impl RawExtent {
    /// Builds the in-memory extent, telling `fill_of(segment, words)` the fill of each
    /// partial layer (for the caller to keep by segment).
    pub fn build(&self, mut fill_of: impl FnMut(u64, [u64; 4])) -> Extent {
        debug_assert!(self.len <= MAX_RUN_SEGMENTS.into(), "decoders bound a run");
        Extent {
            vseg: self.vseg,
            len: self.len as u16,
            state: if self.error {
                ExtentState::Error
            } else {
                ExtentState::Mapped
            },
            birth: self.birth.into(),
            layers: self
                .layers
                .iter()
                .map(|&(seg, words)| match words {
                    Some(w) => {
                        fill_of(seg, w);
                        Layer::partial(seg)
                    }
                    None => Layer::full(seg),
                })
                .collect(),
        }
    }
}

/// Decodes a leaf page, packed or wide; `total_segments` bounds every segment
/// reference.
pub fn decode_leaf(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    total_segments: u64,
) -> Result<Vec<RawExtent>, MetaError> {
    if b.get(4) == Some(&(PageKind::PackedLeaf as u8)) {
        // Every packed extent takes at least 4 bytes.
        decode_extents(b, page, pool, PageKind::PackedLeaf, 4, |r, i, prev_end| {
            read_packed_extent(r, i, prev_end, total_segments, "page")
        })
    } else {
        // Every wide extent takes at least its 22-byte head.
        decode_extents(b, page, pool, PageKind::Leaf, 22, |r, i, _| {
            read_extent(r, i, total_segments)
        })
    }
}

/// The extents of leaf page `page` of `kind`, each read by `read` (from extent `i`
/// and the end of the one before it on the page, 0 for the first), in order and not
/// overlapping. An extent takes at least `min_bytes`: a count beyond what fits is
/// refused before anything is read (and before zeros past the last extent read as one).
fn decode_extents(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    kind: PageKind,
    min_bytes: usize,
    mut read: impl FnMut(&mut Reader<'_>, u32, u64) -> Result<RawExtent, (&'static str, String)>,
) -> Result<Vec<RawExtent>, MetaError> {
    let h = decode_header(b, page, pool, kind)?;
    let bad = |field, reason: String| MetaError::Field {
        page,
        field,
        reason,
    };
    let fit = ((PAGE_BYTES - HEADER_BYTES) / min_bytes) as u64;
    if u64::from(h.count) > fit {
        return Err(bad(
            "extent",
            format!(
                "extent {fit} runs past the end of the page (the leaf counts {}; at most {fit} fit)",
                h.count
            ),
        ));
    }
    let mut r = Reader::new(&b[..PAGE_BYTES], HEADER_BYTES);
    // At most `fit`, checked above.
    let mut out: Vec<RawExtent> = Vec::with_capacity(h.count as usize);
    let mut prev_end = 0;
    for i in 0..h.count {
        let e = read(&mut r, i, prev_end).map_err(|(field, reason)| bad(field, reason))?;
        if !out.is_empty() && e.vseg < prev_end {
            return Err(bad(
                "vseg",
                format!("extent {i} at {} overlaps the previous one", e.vseg),
            ));
        }
        prev_end = e.vseg + u64::from(e.len);
        out.push(e);
    }
    Ok(out)
}

/// Checks an extent's birth: a generation the pool can hold ([`MAX_GENERATION`]).
fn check_birth(i: u32, birth: u64) -> Result<(), (&'static str, String)> {
    if birth > MAX_GENERATION {
        return Err((
            "birth",
            format!("extent {i} was born in generation {birth}, past the last, {MAX_GENERATION}"),
        ));
    }
    Ok(())
}

/// Checks an extent's head: 1 to [`MAX_RUN_SEGMENTS`] segments from `vseg`, of which
/// the first `span` lie below [`MAX_VSEG`].
fn check_head(i: u32, vseg: u64, len: u64, span: u64) -> Result<(), (&'static str, String)> {
    if len == 0 || len > MAX_RUN_SEGMENTS.into() {
        return Err(("len", format!("extent {i} covers {len} segments")));
    }
    if vseg.saturating_add(span) > MAX_VSEG {
        return Err((
            "vseg",
            format!("extent {i} starts at segment {vseg}, beyond any disk"),
        ));
    }
    Ok(())
}

/// Checks an extent's layer count: at most [`MAX_LAYERS`], none only in the error
/// state.
fn check_layer_count(i: u32, nlayers: usize, error: bool) -> Result<(), (&'static str, String)> {
    if nlayers > MAX_LAYERS || (nlayers == 0 && !error) {
        return Err(("layers", format!("extent {i} has {nlayers} layers")));
    }
    Ok(())
}

/// Checks one of the `nlayers` layers of a `len`-segment extent: its segments lie below
/// `total_segments`, and a run is one full layer.
fn check_layer(
    i: u32,
    seg: u64,
    words: Option<[u64; 4]>,
    nlayers: usize,
    len: u64,
    total_segments: u64,
) -> Result<(), (&'static str, String)> {
    let span = if words.is_none() && nlayers == 1 {
        len
    } else {
        1
    };
    if seg.checked_add(span).is_none_or(|e| e > total_segments) {
        return Err((
            "segment",
            format!("extent {i} references segment {seg}+{span}, beyond {total_segments}"),
        ));
    }
    if len > 1 && (nlayers != 1 || words.is_some()) {
        return Err(("len", format!("extent {i} is a run but not one full layer")));
    }
    Ok(())
}

/// A fill's 256-bit map; `t` names the extent when it runs past the page.
fn read_map(
    r: &mut Reader<'_>,
    t: impl Fn() -> String,
) -> Result<[u64; 4], (&'static str, String)> {
    let mut w = [0u64; 4];
    for x in w.iter_mut() {
        *x = r.u64().ok_or_else(|| ("layer", t()))?;
    }
    Ok(w)
}

/// Reads extent `i` as [`write_extent`] wrote it; `total_segments` bounds every segment
/// reference. An error names the field and why.
pub(super) fn read_extent(
    r: &mut Reader<'_>,
    i: u32,
    total_segments: u64,
) -> Result<RawExtent, (&'static str, String)> {
    let t = || format!("extent {i} runs past the end of the page");
    let vseg = r.u64().ok_or_else(|| ("extent", t()))?;
    let len = r.u32().ok_or_else(|| ("extent", t()))?;
    let state = r.u8().ok_or_else(|| ("extent", t()))?;
    let nlayers = r.u8().ok_or_else(|| ("extent", t()))? as usize;
    let birth = r.u64().ok_or_else(|| ("extent", t()))?;
    check_head(i, vseg, len.into(), 1)?;
    check_birth(i, birth)?;
    if state > 1 {
        return Err(("state", format!("extent {i} has unknown state {state}")));
    }
    check_layer_count(i, nlayers, state == 1)?;
    let mut layers = SmallVec::with_capacity(nlayers);
    for _ in 0..nlayers {
        let seg = r.u64().ok_or_else(|| ("layer", t()))?;
        let partial = r.u8().ok_or_else(|| ("layer", t()))?;
        let words = match partial {
            0 => None,
            1 => Some(read_map(r, t)?),
            x => return Err(("layer", format!("extent {i}: unknown layer flag {x}"))),
        };
        check_layer(i, seg, words, nlayers, len.into(), total_segments)?;
        layers.push((seg, words));
    }
    Ok(RawExtent {
        vseg,
        len,
        error: state == 1,
        birth,
        layers,
    })
}

// The packed leaf encoding (`PageKind::PackedLeaf`). Per extent, in order:
//
//   varint  vseg − the previous extent's end on this page (the first: vseg itself)
//   varint  len (segments)
//   u8      flags: bit 0 error, bits 4–7 the number of layers (the rest zero)
//   varint  birth
//   per layer, top first:
//     varint  physical segment
//     u8      fill: 0 a full layer; 1 + r (r ≤ MAX_FILL_RUNS) a partial layer whose
//             fill is the r runs that follow, each (first granule u8, granules − 1 u8),
//             in order and not overlapping; FILL_MAP a partial layer whose fill is the
//             256-bit map that follows (4 × u64)
//
// numbers as unsigned LEB128. A leaf of random first writes — one partial layer, one
// run — takes 12–15 bytes an extent where the wide encoding takes 63.

/// Most runs of granules a packed fill lists; a fill of more is written as its map.
const MAX_FILL_RUNS: usize = 15;
/// The fill tag of a fill written as its 256-bit map.
const FILL_MAP: u8 = 0xff;
/// A fill as a packed leaf writes it: its runs of granules, or its map when it has
/// more than [`MAX_FILL_RUNS`].
pub(super) enum FillCode {
    Runs(SmallVec<[(u8, u8); MAX_FILL_RUNS]>),
    Map([u64; 4]),
}

impl FillCode {
    pub(super) fn of(words: [u64; 4]) -> FillCode {
        let mut runs = SmallVec::new();
        let mut g = 0u32;
        while g < 256 {
            let (w, b) = ((g / 64) as usize, g % 64);
            let rest = words[w] >> b;
            if rest == 0 {
                g = (w as u32 + 1) * 64;
                continue;
            }
            let start = g + rest.trailing_zeros();
            let mut end = start;
            while end < 256 {
                let (w, b) = ((end / 64) as usize, end % 64);
                let ones = (words[w] >> b).trailing_ones().min(64 - b);
                end += ones;
                if ones < 64 - b {
                    break;
                }
            }
            if runs.len() == MAX_FILL_RUNS {
                return FillCode::Map(words);
            }
            runs.push((start as u8, (end - start - 1) as u8));
            g = end;
        }
        FillCode::Runs(runs)
    }

    pub(super) fn write(&self, w: &mut Writer<'_>) {
        match self {
            FillCode::Runs(runs) => {
                w.u8(1 + runs.len() as u8);
                for &(first, n) in runs {
                    w.u8(first);
                    w.u8(n);
                }
            }
            FillCode::Map(words) => {
                w.u8(FILL_MAP);
                for &x in words {
                    w.u64(x);
                }
            }
        }
    }
}

/// Packs one extent after `prev_end` (the previous extent's end on the page, or 0)
/// into `out`; returns the bytes written.
fn pack_extent(
    out: &mut [u8; MAX_PACKED_EXTENT_BYTES],
    prev_end: u64,
    vseg: u64,
    len: u32,
    error: bool,
    birth: u64,
    layers: impl ExactSizeIterator<Item = (u64, Option<[u64; 4]>)>,
) -> usize {
    debug_assert!(vseg >= prev_end, "extents out of order");
    let mut w = Writer::new(out, 0);
    w.varint(vseg - prev_end);
    w.varint(len.into());
    w.u8(u8::from(error) | ((layers.len() as u8) << 4));
    w.varint(birth);
    for (seg, words) in layers {
        w.varint(seg);
        match words {
            None => w.u8(0),
            Some(words) => FillCode::of(words).write(&mut w),
        }
    }
    w.at
}

/// Packs live extent `e` (its fills read from `fills` now) after `prev_end`; returns
/// the bytes written and the extent's end.
pub(super) fn pack_live_extent(
    out: &mut [u8; MAX_PACKED_EXTENT_BYTES],
    prev_end: u64,
    e: &Extent,
    fills: &Fills,
) -> (usize, u64) {
    let n = pack_extent(
        out,
        prev_end,
        e.vseg,
        e.len.into(),
        e.state == ExtentState::Error,
        e.birth.get(),
        e.layers.iter().map(|l| (l.seg(), fills.words_of(l))),
    );
    (n, e.end())
}

/// Packs decoded extent `e` after `prev_end`; returns the bytes written and its end.
pub(super) fn pack_raw_extent(
    out: &mut [u8; MAX_PACKED_EXTENT_BYTES],
    prev_end: u64,
    e: &RawExtent,
) -> (usize, u64) {
    let n = pack_extent(
        out,
        prev_end,
        e.vseg,
        e.len,
        e.error,
        e.birth,
        e.layers.iter().copied(),
    );
    (n, e.vseg + u64::from(e.len))
}

/// Writes packed extents onto page `page` until the next does not fit; returns the
/// page and how many extents it holds.
fn packed_page(
    page: u64,
    txn: u64,
    pool: &Uuid,
    n: usize,
    mut pack: impl FnMut(usize, u64, &mut [u8; MAX_PACKED_EXTENT_BYTES]) -> (usize, u64),
) -> (Vec<u8>, usize) {
    let mut b = new_page(
        &PageHeader {
            kind: PageKind::PackedLeaf,
            count: 0,
            page,
            txn,
            next: BlockPtr::NONE,
        },
        pool,
    );
    let mut at = HEADER_BYTES;
    let mut prev_end = 0;
    let mut buf = [0u8; MAX_PACKED_EXTENT_BYTES];
    let mut k = 0;
    while k < n {
        let (len, end) = pack(k, prev_end, &mut buf);
        if at + len > PAGE_BYTES {
            break;
        }
        b[at..at + len].copy_from_slice(&buf[..len]);
        at += len;
        prev_end = end;
        k += 1;
    }
    // The count field of the header (see `new_page`).
    b[12..16].copy_from_slice(&(k as u32).to_le_bytes());
    seal(&mut b);
    (b, k)
}

/// Encodes a leaf in the packed encoding, as many of `extents` as fit page `page`:
/// returns the page and that number. Every extent fits unless the fills grew past the
/// leaf's budget (`table::FILL_BUDGET_BYTES`); the rest then fits one more page (for
/// a leaf packed within `table::LEAF_BUDGET_BYTES`). The fills of partial layers are copied
/// out of `fills` atomically word by word.
pub fn encode_leaf<E: std::borrow::Borrow<Extent>>(
    page: u64,
    txn: u64,
    pool: &Uuid,
    extents: &[E],
    fills: &Fills,
) -> (Vec<u8>, usize) {
    /// Extents ahead of the one packed whose fills are fetched meanwhile.
    const FILLS_AHEAD: usize = 8;
    packed_page(page, txn, pool, extents.len(), |k, prev_end, buf| {
        if let Some(e) = extents.get(k + FILLS_AHEAD) {
            for l in e.borrow().layers.iter().filter(|l| l.is_partial()) {
                fills.prefetch(l.seg());
            }
        }
        pack_live_extent(buf, prev_end, extents[k].borrow(), fills)
    })
}

/// Encodes a leaf of decoded extents (a round trip, a forged image) in the packed
/// encoding. They must fit one page, as any that one leaf page held do.
pub fn encode_raw_leaf(page: u64, txn: u64, pool: &Uuid, extents: &[RawExtent]) -> Vec<u8> {
    let (b, k) = packed_page(page, txn, pool, extents.len(), |k, prev_end, buf| {
        pack_raw_extent(buf, prev_end, &extents[k])
    });
    assert_eq!(
        k,
        extents.len(),
        "decoded extents of one page fit one packed page"
    );
    b
}

/// Reads packed extent `i`, which follows an extent ending at `prev_end`, in `within`
/// (a page, a log record). An error names the field and why.
pub(super) fn read_packed_extent(
    r: &mut Reader<'_>,
    i: u32,
    prev_end: u64,
    total_segments: u64,
    within: &str,
) -> Result<RawExtent, (&'static str, String)> {
    let num = |r: &mut Reader<'_>, field: &'static str| match r.varint() {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err((
            "extent",
            format!("extent {i} runs past the end of the {within}"),
        )),
        Err(why) => Err((field, format!("extent {i}: {why}"))),
    };
    let t = || format!("extent {i} runs past the end of the {within}");
    let delta = num(r, "vseg")?;
    let len = num(r, "len")?;
    let flags = r.u8().ok_or_else(|| ("extent", t()))?;
    let birth = num(r, "birth")?;
    let vseg = prev_end.saturating_add(delta);
    check_head(i, vseg, len, len)?;
    check_birth(i, birth)?;
    if flags & 0x0e != 0 {
        return Err((
            "flags",
            format!("extent {i} has unknown flags {flags:#04x}"),
        ));
    }
    let error = flags & 1 == 1;
    let nlayers = (flags >> 4) as usize;
    check_layer_count(i, nlayers, error)?;
    let mut layers = SmallVec::with_capacity(nlayers);
    for _ in 0..nlayers {
        let seg = num(r, "segment")?;
        let tag = r.u8().ok_or_else(|| ("layer", t()))?;
        let words = match tag {
            0 => None,
            tag => Some(
                read_fill_code(r, tag, &t).map_err(|(f, why)| (f, format!("extent {i}: {why}")))?,
            ),
        };
        check_layer(i, seg, words, nlayers, len, total_segments)?;
        layers.push((seg, words));
    }
    Ok(RawExtent {
        vseg,
        len: len as u32,
        error,
        birth,
        layers,
    })
}

/// Reads a fill written by [`FillCode::write`] whose tag (1 + its number of runs, or
/// [`FILL_MAP`]) was `tag`; `t` names what runs past the end. An error names the field
/// and why.
pub(super) fn read_fill_code(
    r: &mut Reader<'_>,
    tag: u8,
    t: &impl Fn() -> String,
) -> Result<[u64; 4], (&'static str, String)> {
    match tag {
        FILL_MAP => read_map(r, t),
        n if n >= 1 && (n as usize) <= MAX_FILL_RUNS + 1 => {
            let mut w = [0u64; 4];
            let mut at = 0u32;
            for k in 0..n - 1 {
                let first = u32::from(r.u8().ok_or_else(|| ("layer", t()))?);
                let count = u32::from(r.u8().ok_or_else(|| ("layer", t()))?) + 1;
                if first < at || first + count > 256 {
                    return Err((
                        "fill",
                        format!(
                            "fill run {k} (granules {first}..{}) overlaps the one before or \
                             passes granule 256",
                            first + count
                        ),
                    ));
                }
                for g in first..first + count {
                    w[(g / 64) as usize] |= 1 << (g % 64);
                }
                at = first + count;
            }
            Ok(w)
        }
        x => Err(("layer", format!("unknown fill tag {x}"))),
    }
}
