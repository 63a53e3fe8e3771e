//! The intent log: a ring of pages in the metadata area holding the changes made since
//! the last checkpoint (the last full commit), so that a flush or a snapshot writes the
//! records of the moment instead of every table page changed since the checkpoint.
//!
//! ```text
//! log area: pages [first_page, first_page + pages) of the metadata area, a ring
//!   page of sequence number s lies at first_page + s % pages
//!   page: header (kind Log, txn = s), first_lsn (u64), batch (u64: every page of a
//!     lower sequence number was durable when this one was written — the first page of
//!     the append that wrote it, or of the oldest append still being written when that
//!     one started), then records:
//!     kind (u8), body length (u16), body
//! mirror (superblock version 4): pages [mirror, mirror + pages), a copy of page s at
//!   mirror + s % pages (its header naming its own place), written with the log's
//! ```
//!
//! Every record has a log sequence number (LSN): a page's records carry `first_lsn`,
//! `first_lsn + 1`, …; the next page continues the count. The superblock of a
//! checkpoint names the page sequence number and the LSN replay starts from; replay
//! reads pages `s, s + 1, …` and stops at the first that is not a valid log page of the
//! expected sequence number continuing the LSNs (an unwritten, stale or torn page: the
//! end of the log). Open erases every page past the end that carries a sequence number
//! at or beyond it (what is left of a torn append), so that appends go on from the end
//! and no page written before can pass for a new one (see `vdisk/intent.rs`). A record
//! never spans pages, so a torn append loses whole records at its end, never half of
//! one. Where the log has a mirror, replay takes a page from it when the log's own copy
//! is not the next page: the end of the log is where neither copy is.
//!
//! Records are states, not deltas of counts: replayed in order onto the checkpoint they
//! rebuild what the controller held when the last of them was appended (see
//! `vdisk/intent.rs`).

use super::directory::{DISK_RECORD_BYTES, DiskRecord, encode_disk, read_disk};
use super::node::{
    FillCode, RawExtent, pack_live_extent, pack_raw_extent, read_extent, read_fill_code,
    read_packed_extent, write_extent, write_raw_extent,
};
use super::{
    BlockPtr, HEADER_BYTES, MAX_VSEG, MetaError, PAGE_BYTES, PageHeader, PageKind, Reader, Writer,
    decode_header, new_page, seal,
};
use crate::vdisk::map::{Extent, Fills};
use crate::vdisk::table::MAX_PACKED_EXTENT_BYTES;
use uuid::Uuid;

/// Bytes of a log page before its records: the first LSN and the append's first page.
const LOG_HEAD_BYTES: usize = 16;
/// Bytes of a log page that hold records.
pub const LOG_PAYLOAD_BYTES: usize = PAGE_BYTES - HEADER_BYTES - LOG_HEAD_BYTES;
/// Bytes of a record's kind and length.
const RECORD_HEAD_BYTES: usize = 3;
/// The largest record body that fits a page.
pub const MAX_RECORD_BODY: usize = LOG_PAYLOAD_BYTES - RECORD_HEAD_BYTES;

/// One change, as the log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    /// `[from, to)` of `disk`'s table replaced by `extents` (virtual segments).
    Splice {
        disk: u64,
        from: u64,
        to: u64,
        extents: Vec<RawExtent>,
    },
    /// The fill of physical segment `seg` holds `words`.
    Fill { seg: u64, words: [u64; 4] },
    /// A disk's record; a disk not yet in the pool starts with the table of disk
    /// `share_root_of` (a snapshot's or a clone's), or empty when that is 0.
    PutDisk { rec: DiskRecord, share_root_of: u64 },
    /// Disk `id` deleted.
    DropDisk { id: u64 },
    /// The pool's counters.
    Counters { generation: u64, next_disk_id: u64 },
}

const KIND_SPLICE: u8 = 1;
const KIND_FILL: u8 = 2;
const KIND_PUT_DISK: u8 = 3;
const KIND_DROP_DISK: u8 = 4;
const KIND_COUNTERS: u8 = 5;
/// A splice with its numbers as LEB128 and its extents packed as a packed leaf packs
/// them (`meta/node.rs`): a random first write's splice takes ~25 bytes, not ~92.
const KIND_PACKED_SPLICE: u8 = 6;
/// A fill as its runs of granules (or its map past 15 runs): ~10 bytes, not 43.
const KIND_PACKED_FILL: u8 = 7;

/// Encodes a splice record from live extents (their fills are read from `fills` now), or
/// `None` if it does not fit a page. `packed`: in the packed encoding, which only a log
/// whose superblock says so may hold ([`super::superblock::LogArea::packed`]). The
/// controller encodes in place ([`encode_splice_into`]); this is the tests' form.
#[cfg(test)]
pub fn encode_splice(
    disk: u64,
    from: u64,
    to: u64,
    extents: &[Extent],
    fills: &Fills,
    packed: bool,
) -> Option<Vec<u8>> {
    let mut b = Vec::new();
    encode_splice_into(&mut b, disk, from, to, extents, fills, packed).then_some(b)
}

/// Appends a splice record from live extents (their fills are read from `fills` now) to
/// `out`; false (and `out` as it was) if the record does not fit a page. `packed`: in
/// the packed encoding, which only a log whose superblock says so may hold
/// ([`super::superblock::LogArea::packed`]).
pub fn encode_splice_into(
    out: &mut Vec<u8>,
    disk: u64,
    from: u64,
    to: u64,
    extents: &[Extent],
    fills: &Fills,
    packed: bool,
) -> bool {
    if packed {
        return packed_splice_record(out, disk, from, to, extents.len(), |k, prev_end, buf| {
            pack_live_extent(buf, prev_end, &extents[k], fills)
        });
    }
    let bytes = extents
        .iter()
        .map(crate::vdisk::table::extent_encoded_len)
        .sum();
    match splice_record(disk, from, to, extents.len(), bytes, |w| {
        for e in extents {
            write_extent(w, e, fills);
        }
    }) {
        Some(b) => {
            out.extend_from_slice(&b);
            true
        }
        None => false,
    }
}

/// A splice record of `count` extents that `write` writes in `bytes`.
fn splice_record(
    disk: u64,
    from: u64,
    to: u64,
    count: usize,
    bytes: usize,
    write: impl FnOnce(&mut Writer<'_>),
) -> Option<Vec<u8>> {
    let body: usize = 8 * 3 + 2 + bytes;
    if body > MAX_RECORD_BODY || count > u16::MAX as usize {
        return None;
    }
    let mut b = vec![0u8; RECORD_HEAD_BYTES + body];
    let mut w = Writer::new(&mut b, 0);
    w.u8(KIND_SPLICE);
    w.bytes(&(body as u16).to_le_bytes());
    w.u64(disk);
    w.u64(from);
    w.u64(to);
    w.bytes(&(count as u16).to_le_bytes());
    write(&mut w);
    debug_assert_eq!(w.at, b.len());
    Some(b)
}

/// A packed splice record of `count` extents, each packed by `pack(k, prev_end, buf)`
/// (returning its bytes and its end), appended to `out`; false (and `out` as it was)
/// if it does not fit a page.
fn packed_splice_record(
    out: &mut Vec<u8>,
    disk: u64,
    from: u64,
    to: u64,
    count: usize,
    mut pack: impl FnMut(usize, u64, &mut [u8; MAX_PACKED_EXTENT_BYTES]) -> (usize, u64),
) -> bool {
    let start = out.len();
    // Kind and length, then the head: four numbers of at most 10 bytes each.
    out.resize(start + RECORD_HEAD_BYTES + 40, 0);
    let at = {
        let mut w = Writer::new(&mut out[start..], RECORD_HEAD_BYTES);
        w.varint(disk);
        w.varint(from);
        // `to` may be u64::MAX: everything from `from` on (a shrink), written as 0.
        w.varint(if to == u64::MAX { 0 } else { to - from });
        w.varint(count as u64);
        w.at
    };
    out.truncate(start + at);
    let mut buf = [0u8; MAX_PACKED_EXTENT_BYTES];
    let mut prev_end = from;
    for k in 0..count {
        let (n, end) = pack(k, prev_end, &mut buf);
        if out.len() - start + n > RECORD_HEAD_BYTES + MAX_RECORD_BODY {
            out.truncate(start);
            return false;
        }
        out.extend_from_slice(&buf[..n]);
        prev_end = end;
    }
    out[start] = KIND_PACKED_SPLICE;
    let body = (out.len() - start - RECORD_HEAD_BYTES) as u16;
    out[start + 1..start + 3].copy_from_slice(&body.to_le_bytes());
    true
}

/// Encodes the fill record of segment `seg` holding `words`; `packed` as for
/// [`encode_splice_into`].
pub fn encode_fill(seg: u64, words: [u64; 4], packed: bool) -> Vec<u8> {
    let mut b = Vec::new();
    encode_fill_into(&mut b, seg, words, packed);
    b
}

/// [`encode_fill`], appended to `out` (no buffer of its own: the controller logs a fill
/// for every first write).
pub fn encode_fill_into(out: &mut Vec<u8>, seg: u64, words: [u64; 4], packed: bool) {
    if !packed {
        out.extend_from_slice(&encode(&LogRecord::Fill { seg, words }));
        return;
    }
    // Kind, length, the segment (at most 10 bytes), the fill (at most 33).
    let start = out.len();
    out.resize(start + RECORD_HEAD_BYTES + 10 + 33, 0);
    let b = &mut out[start..];
    let at = {
        let mut w = Writer::new(b, RECORD_HEAD_BYTES);
        w.varint(seg);
        FillCode::of(words).write(&mut w);
        w.at
    };
    b[0] = KIND_PACKED_FILL;
    let body = (at - RECORD_HEAD_BYTES) as u16;
    b[1..3].copy_from_slice(&body.to_le_bytes());
    out.truncate(start + at);
}

/// Encodes a splice or a fill in the packed encoding, any other record as [`encode`]
/// does (a round trip, a forged log); `None` for a splice larger than a page.
pub fn encode_packed(rec: &LogRecord) -> Option<Vec<u8>> {
    Some(match rec {
        LogRecord::Splice {
            disk,
            from,
            to,
            extents,
        } => {
            let mut b = Vec::new();
            let fits =
                packed_splice_record(&mut b, *disk, *from, *to, extents.len(), |k, e, buf| {
                    pack_raw_extent(buf, e, &extents[k])
                });
            fits.then_some(b)?
        }
        LogRecord::Fill { seg, words } => encode_fill(*seg, *words, true),
        other => encode_wide(other)?,
    })
}

/// Encodes a record. (The controller encodes its splices from live extents with
/// [`encode_splice_into`].)
pub fn encode(rec: &LogRecord) -> Vec<u8> {
    encode_wide(rec).unwrap_or_else(|| panic!("a splice larger than a page: {rec:?}"))
}

/// The shorter of a record's two encodings (a round trip of what a page held: neither
/// is longer than the one read).
pub fn encode_shortest(rec: &LogRecord) -> Vec<u8> {
    match (encode_wide(rec), encode_packed(rec)) {
        (Some(w), Some(p)) if p.len() < w.len() => p,
        (Some(w), _) => w,
        (None, Some(p)) => p,
        (None, None) => panic!("a splice larger than a page in both encodings: {rec:?}"),
    }
}

/// [`encode`], `None` for a splice larger than a page.
fn encode_wide(rec: &LogRecord) -> Option<Vec<u8>> {
    let (kind, body) = match rec {
        LogRecord::Splice {
            disk,
            from,
            to,
            extents,
        } => {
            let bytes = extents
                .iter()
                .map(|e| {
                    crate::vdisk::table::encoded_len_of(e.layers.iter().map(|l| l.1.is_some()))
                })
                .sum();
            return splice_record(*disk, *from, *to, extents.len(), bytes, |w| {
                for e in extents {
                    write_raw_extent(w, e);
                }
            });
        }
        LogRecord::Fill { seg, words } => {
            let mut b = seg.to_le_bytes().to_vec();
            for x in words {
                b.extend_from_slice(&x.to_le_bytes());
            }
            (KIND_FILL, b)
        }
        LogRecord::PutDisk { rec, share_root_of } => {
            let mut b = vec![0u8; 8 + DISK_RECORD_BYTES];
            let mut w = Writer::new(&mut b, 0);
            w.u64(*share_root_of);
            encode_disk(&mut w, rec, &BlockPtr::NONE);
            (KIND_PUT_DISK, b)
        }
        LogRecord::DropDisk { id } => (KIND_DROP_DISK, id.to_le_bytes().to_vec()),
        LogRecord::Counters {
            generation,
            next_disk_id,
        } => {
            let mut b = generation.to_le_bytes().to_vec();
            b.extend_from_slice(&next_disk_id.to_le_bytes());
            (KIND_COUNTERS, b)
        }
    };
    assert!(
        body.len() <= MAX_RECORD_BODY,
        "log record of {} bytes",
        body.len()
    );
    let mut out = Vec::with_capacity(RECORD_HEAD_BYTES + body.len());
    out.push(kind);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
    Some(out)
}

/// Packs groups of encoded records into the log pages of one append: the page
/// sequence numbers from `seq` on (each page names `seq`, the append's first, as the
/// page below which the log was durable), at their places in a ring of `ring_pages`
/// starting at metadata page `first_page`; the first record has LSN `first_lsn`. A
/// group (the records of one change) never spans pages, so a torn append loses whole
/// changes; each group must fit a page ([`group_fits`]). Returns the pages (place,
/// bytes) in sequence order.
pub fn pack(
    groups: &RecordGroups,
    seq: u64,
    first_lsn: u64,
    first_page: u64,
    ring_pages: u64,
    pool: &Uuid,
) -> Vec<(u64, Vec<u8>)> {
    pack_behind(groups, seq, first_lsn, first_page, ring_pages, pool, seq)
}

/// [`pack`] for an append that starts while earlier ones are still being written:
/// each page names `durable_below` (at most `seq`), the first page of the oldest append
/// not yet durable, so that replay tells a later append's pages past a torn one (not
/// acknowledged: the end of the log) from those past a page once durable (damage).
pub fn pack_behind(
    groups: &RecordGroups,
    seq: u64,
    first_lsn: u64,
    first_page: u64,
    ring_pages: u64,
    pool: &Uuid,
    durable_below: u64,
) -> Vec<(u64, Vec<u8>)> {
    debug_assert!(durable_below <= seq);
    let mut out = Vec::new();
    let mut i = 0;
    let mut lsn = first_lsn;
    let mut s = seq;
    let all = &groups.groups;
    while i < all.len() {
        let place = first_page + s % ring_pages;
        let mut n = 0;
        let mut used = 0;
        while i + n < all.len() && used + groups.bytes_of(i + n) <= LOG_PAYLOAD_BYTES {
            used += groups.bytes_of(i + n);
            n += 1;
        }
        assert!(n > 0, "a log record group larger than a page");
        let records: u64 = all.range(i..i + n).map(|g| u64::from(g.records)).sum();
        let h = PageHeader {
            kind: PageKind::Log,
            count: records as u32,
            page: place,
            txn: s,
            next: BlockPtr::NONE,
        };
        let mut b = new_page(&h, pool);
        let mut w = Writer::new(&mut b, HEADER_BYTES);
        w.u64(lsn);
        w.u64(durable_below);
        // A run of groups is a run of bytes.
        w.bytes(&groups.bytes[groups.start_of(i)..groups.start_of(i + n)]);
        seal(&mut b);
        out.push((place, b));
        i += n;
        lsn += records;
        s += 1;
    }
    out
}

/// Encoded records in groups (the records of one change, kept on one page), one after
/// the other in one buffer: a change adds its bytes, an append copies runs of them into
/// pages — no allocation per record held until the append, and none freed by it.
#[derive(Default)]
pub struct RecordGroups {
    bytes: Vec<u8>,
    groups: std::collections::VecDeque<GroupEnd>,
}

#[derive(Clone, Copy)]
struct GroupEnd {
    /// Where the group ends in `bytes`.
    end: usize,
    records: u32,
}

impl RecordGroups {
    /// Groups of the given records, in order.
    pub fn of(groups: &[Vec<Vec<u8>>]) -> RecordGroups {
        let mut g = RecordGroups::default();
        for x in groups {
            g.push(x);
        }
        g
    }

    /// Adds a group of one record, which `write` appends to the bytes it is given.
    pub fn push_one(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        write(&mut self.bytes);
        debug_assert!(self.bytes.len() > start, "a record was written");
        self.groups.push_back(GroupEnd {
            end: self.bytes.len(),
            records: 1,
        });
    }

    /// [`RecordGroups::push_one`] of a record `write` may refuse (returning false,
    /// having appended nothing): then nothing is added, and the answer is false.
    pub fn push_one_if(&mut self, write: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
        let start = self.bytes.len();
        if !write(&mut self.bytes) {
            debug_assert_eq!(self.bytes.len(), start, "a refused record left bytes");
            self.bytes.truncate(start);
            return false;
        }
        self.groups.push_back(GroupEnd {
            end: self.bytes.len(),
            records: 1,
        });
        true
    }

    /// Adds a group (nothing if it holds no records).
    pub fn push(&mut self, group: &[Vec<u8>]) {
        if group.is_empty() {
            return;
        }
        for r in group {
            self.bytes.extend_from_slice(r);
        }
        self.groups.push_back(GroupEnd {
            end: self.bytes.len(),
            records: group.len() as u32,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Bytes of the records held.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The number of records of each group, in order.
    pub fn records_per_group(&self) -> impl Iterator<Item = u64> + '_ {
        self.groups.iter().map(|g| u64::from(g.records))
    }

    /// Drops the first `k` groups.
    pub fn drop_first(&mut self, k: usize) {
        let Some(last) = self.groups.drain(..k.min(self.groups.len())).next_back() else {
            return;
        };
        self.bytes.drain(..last.end);
        for g in &mut self.groups {
            g.end -= last.end;
        }
    }

    /// Drops every group, keeping the buffer's capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.groups.clear();
    }

    /// Where group `i` starts in `bytes` (or, for `i` = the number of groups, where
    /// the last ends).
    fn start_of(&self, i: usize) -> usize {
        match i {
            0 => 0,
            _ => self.groups[i - 1].end,
        }
    }

    fn bytes_of(&self, i: usize) -> usize {
        self.groups[i].end - self.start_of(i)
    }
}

fn group_bytes(g: &[Vec<u8>]) -> usize {
    g.iter().map(Vec::len).sum()
}

/// True if a group of records fits one log page.
pub fn group_fits(g: &[Vec<u8>]) -> bool {
    group_bytes(g) <= LOG_PAYLOAD_BYTES
}

/// A decoded log page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPage {
    pub seq: u64,
    pub first_lsn: u64,
    /// Every page below this sequence number was durable when this one was written:
    /// the first page of the append that wrote it, or of the oldest append still being
    /// written when that one started ([`pack_behind`]).
    pub batch: u64,
    pub records: Vec<LogRecord>,
}

/// A log page's header and head, its records not decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogHead {
    pub seq: u64,
    pub first_lsn: u64,
    pub batch: u64,
    /// Records the page holds.
    pub count: u32,
}

/// Decodes the header and head of the log page at metadata page `page` (the checksum
/// covers the whole page), not its records.
pub fn decode_log_head(b: &[u8], page: u64, pool: &Uuid) -> Result<LogHead, MetaError> {
    let h = decode_header(b, page, pool, PageKind::Log)?;
    let bad = |field, reason: String| MetaError::Field {
        page,
        field,
        reason,
    };
    if h.count as usize > LOG_PAYLOAD_BYTES / RECORD_HEAD_BYTES {
        return Err(bad(
            "count",
            format!("{} records cannot fit a page", h.count),
        ));
    }
    let mut r = Reader::new(&b[..PAGE_BYTES], HEADER_BYTES);
    let first_lsn = r
        .u64()
        .ok_or_else(|| bad("first_lsn", "truncated".into()))?;
    let batch = r.u64().ok_or_else(|| bad("batch", "truncated".into()))?;
    if batch > h.txn {
        return Err(bad(
            "batch",
            format!(
                "the append's first page {batch} follows this page {}",
                h.txn
            ),
        ));
    }
    Ok(LogHead {
        seq: h.txn,
        first_lsn,
        batch,
        count: h.count,
    })
}

/// Decodes the log page at metadata page `page`; `total_segments` bounds segment
/// references. The caller checks the sequence number and the LSNs.
pub fn decode_log_page(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    total_segments: u64,
) -> Result<LogPage, MetaError> {
    let head = decode_log_head(b, page, pool)?;
    decode_log_records(b, page, head, total_segments)
}

/// Decodes the records of a log page whose head [`decode_log_head`] decoded.
pub fn decode_log_records(
    b: &[u8],
    page: u64,
    head: LogHead,
    total_segments: u64,
) -> Result<LogPage, MetaError> {
    let bad = |field, reason: String| MetaError::Field {
        page,
        field,
        reason,
    };
    let mut r = Reader::new(&b[..PAGE_BYTES], HEADER_BYTES + LOG_HEAD_BYTES);
    let mut records = Vec::with_capacity(head.count as usize);
    for i in 0..head.count {
        let t = || format!("record {i} runs past the end of the page");
        let kind = r.u8().ok_or_else(|| bad("record", t()))?;
        let len = r.bytes(2).ok_or_else(|| bad("record", t()))?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        let body = r.bytes(len).ok_or_else(|| bad("record", t()))?;
        let rec = decode_record(kind, body, i, total_segments)
            .map_err(|(field, reason)| bad(field, reason))?;
        records.push(rec);
    }
    Ok(LogPage {
        seq: head.seq,
        first_lsn: head.first_lsn,
        batch: head.batch,
        records,
    })
}

fn decode_record(
    kind: u8,
    body: &[u8],
    i: u32,
    total_segments: u64,
) -> Result<LogRecord, (&'static str, String)> {
    let mut r = Reader::new(body, 0);
    let t = || ("record", format!("record {i} is truncated"));
    let rec = match kind {
        KIND_SPLICE => {
            let disk = r.u64().ok_or_else(t)?;
            let from = r.u64().ok_or_else(t)?;
            let to = r.u64().ok_or_else(t)?;
            let n = r.bytes(2).ok_or_else(t)?;
            let n = u16::from_le_bytes([n[0], n[1]]);
            // `to` may be u64::MAX: everything from `from` on (a shrink).
            if from >= to || from >= MAX_VSEG {
                return Err((
                    "splice",
                    format!("record {i}: range {from}..{to} is not a range of segments"),
                ));
            }
            let mut extents: Vec<RawExtent> = Vec::with_capacity(n as usize);
            for k in 0..n {
                let e = read_extent(&mut r, u32::from(k), total_segments)
                    .map_err(|(f, why)| (f, format!("record {i}: {why}")))?;
                let prev_end = extents.last().map_or(from, |p| p.vseg + u64::from(p.len));
                if e.vseg < prev_end || e.vseg + u64::from(e.len) > to {
                    return Err((
                        "splice",
                        format!(
                            "record {i}: extent {k} at {}+{} is out of order or outside \
                             {from}..{to}",
                            e.vseg, e.len
                        ),
                    ));
                }
                extents.push(e);
            }
            LogRecord::Splice {
                disk,
                from,
                to,
                extents,
            }
        }
        KIND_PACKED_SPLICE => {
            let num = |r: &mut Reader<'_>, field: &'static str| match r.varint() {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(t()),
                Err(why) => Err((field, format!("record {i}: {why}"))),
            };
            let disk = num(&mut r, "disk")?;
            let from = num(&mut r, "splice")?;
            let span = num(&mut r, "splice")?;
            let n = num(&mut r, "splice")?;
            let to = match span {
                0 => u64::MAX,
                s => from.saturating_add(s),
            };
            if from >= MAX_VSEG || (span != 0 && to > MAX_VSEG) {
                return Err((
                    "splice",
                    format!("record {i}: range {from}+{span} is not a range of segments"),
                ));
            }
            // Each packed extent takes at least 5 bytes: a count past what the body
            // could hold is refused before anything is reserved for it.
            if n > body.len() as u64 {
                return Err((
                    "splice",
                    format!("record {i}: {n} extents in a body of {} bytes", body.len()),
                ));
            }
            let mut extents: Vec<RawExtent> = Vec::with_capacity(n as usize);
            let mut prev_end = from;
            for k in 0..n as u32 {
                let e = read_packed_extent(&mut r, k, prev_end, total_segments, "record")
                    .map_err(|(f, why)| (f, format!("record {i}: {why}")))?;
                prev_end = e.vseg + u64::from(e.len);
                if prev_end > to {
                    return Err((
                        "splice",
                        format!(
                            "record {i}: extent {k} at {}+{} is outside {from}..{to}",
                            e.vseg, e.len
                        ),
                    ));
                }
                extents.push(e);
            }
            LogRecord::Splice {
                disk,
                from,
                to,
                extents,
            }
        }
        KIND_PACKED_FILL => {
            let seg = match r.varint() {
                Ok(Some(v)) => v,
                Ok(None) => return Err(t()),
                Err(why) => return Err(("fill", format!("record {i}: {why}"))),
            };
            let tag = r.u8().ok_or_else(t)?;
            let words = read_fill_code(&mut r, tag, &|| format!("record {i} is truncated"))
                .map_err(|(f, why)| (f, format!("record {i}: {why}")))?;
            if seg >= total_segments {
                return Err((
                    "fill",
                    format!("record {i}: segment {seg}, beyond {total_segments}"),
                ));
            }
            LogRecord::Fill { seg, words }
        }
        KIND_FILL => {
            let seg = r.u64().ok_or_else(t)?;
            let mut words = [0u64; 4];
            for w in &mut words {
                *w = r.u64().ok_or_else(t)?;
            }
            if seg >= total_segments {
                return Err((
                    "fill",
                    format!("record {i}: segment {seg}, beyond {total_segments}"),
                ));
            }
            LogRecord::Fill { seg, words }
        }
        KIND_PUT_DISK => {
            let share_root_of = r.u64().ok_or_else(t)?;
            let (mut rec, _) = read_disk(&mut r, i as usize)
                .map_err(|(f, why)| (f, format!("record {i}: {why}")))?;
            // A table is in the log's splices, never a page.
            rec.root_page = super::NO_PAGE;
            // The record's padding.
            if body.len() != 8 + DISK_RECORD_BYTES {
                return Err((
                    "record",
                    format!("record {i}: a disk record of {} bytes", body.len()),
                ));
            }
            r.at = body.len();
            LogRecord::PutDisk { rec, share_root_of }
        }
        KIND_DROP_DISK => LogRecord::DropDisk {
            id: r.u64().ok_or_else(t)?,
        },
        KIND_COUNTERS => LogRecord::Counters {
            generation: r.u64().ok_or_else(t)?,
            next_disk_id: r.u64().ok_or_else(t)?,
        },
        x => return Err(("record", format!("record {i}: unknown kind {x}"))),
    };
    if r.at != body.len() {
        return Err((
            "record",
            format!(
                "record {i}: {} bytes left over after the record",
                body.len() - r.at
            ),
        ));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vdisk::meta::directory::{DiskKind, JobRecord};

    fn rec(id: u64) -> DiskRecord {
        DiskRecord {
            id,
            uuid: Uuid::from_u128(id as u128),
            name: format!("vd{id}"),
            size_blocks: 1 << 20,
            kind: DiskKind::Snapshot,
            read_only: true,
            thin: true,
            parent: 3,
            snap_gen: 7,
            created_gen: 7,
            root_page: crate::vdisk::meta::NO_PAGE,
            cow_policy: 0,
            job: JobRecord::Split { cursor: 9 },
            created_unix: 1_700_000_000,
            external: None,
        }
    }

    fn sample() -> Vec<LogRecord> {
        vec![
            LogRecord::Splice {
                disk: 1,
                from: 4,
                to: 9,
                extents: vec![
                    RawExtent {
                        vseg: 4,
                        len: 1,
                        error: false,
                        birth: 3,
                        layers: smallvec::smallvec![(17, Some([1, 2, 3, u64::MAX]))],
                    },
                    RawExtent {
                        vseg: 6,
                        len: 3,
                        error: false,
                        birth: 3,
                        layers: smallvec::smallvec![(20, None)],
                    },
                ],
            },
            LogRecord::Splice {
                disk: 2,
                from: 0,
                to: 1,
                extents: vec![],
            },
            LogRecord::Fill {
                seg: 17,
                words: [5, 0, 0, 1 << 63],
            },
            LogRecord::PutDisk {
                rec: rec(4),
                share_root_of: 1,
            },
            LogRecord::DropDisk { id: 2 },
            LogRecord::Counters {
                generation: 8,
                next_disk_id: 5,
            },
        ]
    }

    /// Groups held for an append, after earlier appends took theirs and a checkpoint
    /// dropped the first ones, pack exactly as the same groups held alone.
    #[test]
    fn held_groups_pack_alike_after_appends_and_checkpoints_dropped_some() {
        let pool = Uuid::from_u128(42);
        let group = |k: usize| -> Vec<Vec<u8>> {
            let s = sample();
            (0..1 + k % 3)
                .map(|i| encode(&s[(k + i) % s.len()]))
                .collect()
        };
        let mut held = RecordGroups::default();
        for k in 0..50 {
            held.push(&group(k));
        }
        held.clear(); // an append took them
        held.push(&[]); // no records: no group
        for k in 50..200 {
            held.push(&group(k));
        }
        held.drop_first(30); // a checkpoint covered them
        let alone: Vec<Vec<Vec<u8>>> = (80..200).map(group).collect();
        assert_eq!(
            held.bytes(),
            alone.iter().flatten().map(Vec::len).sum::<usize>()
        );
        assert_eq!(
            held.records_per_group().collect::<Vec<_>>(),
            alone.iter().map(|g| g.len() as u64).collect::<Vec<_>>()
        );
        let pages = pack(&held, 3, 77, 10, 64, &pool);
        assert!(pages.len() > 2, "{} pages", pages.len());
        assert_eq!(pages, pack(&RecordGroups::of(&alone), 3, 77, 10, 64, &pool));
        held.drop_first(1000);
        assert!(held.is_empty() && held.bytes() == 0);
    }

    /// Both encodings, and the two mixed on one page (an upgraded pool's log).
    fn encoders() -> [fn(&LogRecord, usize) -> Vec<u8>; 3] {
        [
            |r, _| encode(r),
            |r, _| encode_packed(r).unwrap(),
            |r, k| match k % 2 {
                0 => encode(r),
                _ => encode_packed(r).unwrap(),
            },
        ]
    }

    #[test]
    fn records_round_trip_and_fill_pages_in_order() {
        for enc in encoders() {
            records_round_trip_with(enc);
        }
    }

    fn records_round_trip_with(enc: fn(&LogRecord, usize) -> Vec<u8>) {
        let pool = Uuid::from_u128(42);
        let mut recs: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut want = Vec::new();
        for k in 0..40 {
            // One change of three records, three of one.
            let s = sample();
            recs.push(s[..3].iter().map(|r| enc(r, k)).collect());
            for r in &s[3..] {
                recs.push(vec![enc(r, k)]);
            }
            want.extend(s);
        }
        // The ring wraps: sequence 6 of a ring of 4 lies at place 2.
        let pages = pack(&RecordGroups::of(&recs), 6, 100, 50, 4, &pool);
        assert!(pages.len() > 1, "{} pages", pages.len());
        let mut got = Vec::new();
        let mut lsn = 100;
        for (k, (place, b)) in pages.iter().enumerate() {
            assert_eq!(*place, 50 + (6 + k as u64) % 4);
            let p = decode_log_page(b, *place, &pool, 1000).unwrap();
            assert_eq!(p.seq, 6 + k as u64);
            assert_eq!(p.first_lsn, lsn);
            assert_eq!(p.batch, 6, "every page names the append's first");
            // Every page starts with a change's first record: the three-record group
            // is never split.
            assert!(
                matches!(p.records[0], LogRecord::Splice { disk: 1, .. })
                    || !matches!(
                        p.records[0],
                        LogRecord::Splice { .. } | LogRecord::Fill { .. }
                    ),
                "page {k} starts inside a group: {:?}",
                p.records[0]
            );
            lsn += p.records.len() as u64;
            got.extend(p.records);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn live_splices_decode_as_the_raw_extents_they_hold() {
        for packed in [false, true] {
            live_splices_decode_with(packed);
        }
    }

    fn live_splices_decode_with(packed: bool) {
        let fills = Fills::new(1000);
        fills.fresh(18).set_range(0, 2);
        let e = Extent::full(4, 17, 3);
        let p = Extent {
            vseg: 5,
            len: 1,
            state: crate::vdisk::map::ExtentState::Mapped,
            birth: 3.into(),
            layers: crate::vdisk::map::Layers::from_slice(&[crate::vdisk::map::Layer::partial(18)]),
        };
        let live = encode_splice(1, 4, 6, &[e, p], &fills, packed).unwrap();
        assert_eq!(
            live[0],
            if packed {
                KIND_PACKED_SPLICE
            } else {
                KIND_SPLICE
            }
        );
        let pool = Uuid::from_u128(42);
        let (place, page) = pack(&RecordGroups::of(&[vec![live]]), 0, 1, 10, 8, &pool).remove(0);
        let decoded = decode_log_page(&page, place, &pool, 1000).unwrap();
        assert_eq!(
            decoded.records,
            vec![LogRecord::Splice {
                disk: 1,
                from: 4,
                to: 6,
                extents: vec![
                    RawExtent {
                        vseg: 4,
                        len: 1,
                        error: false,
                        birth: 3,
                        layers: smallvec::smallvec![(17, None)],
                    },
                    RawExtent {
                        vseg: 5,
                        len: 1,
                        error: false,
                        birth: 3,
                        layers: smallvec::smallvec![(18, Some([3, 0, 0, 0]))],
                    }
                ],
            }]
        );
        // Too many extents for a page: not a record.
        let many: Vec<Extent> = (0..1000).map(|v| Extent::full(v, v + 1, 1)).collect();
        assert!(encode_splice(1, 0, 1000, &many, &fills, packed).is_none());
    }

    /// What a random 4 KiB first write logs: its splice (one extent, one partial layer)
    /// and, once the write completed, its fill (one granule). Packed, the two take a
    /// quarter of what they take wide.
    #[test]
    fn a_first_write_logs_a_few_dozen_bytes_packed() {
        let total = 1u64 << 22;
        let fills = Fills::new(total);
        let seg = total - 1;
        fills.fresh(seg).set_range(77, 1);
        let e = Extent {
            vseg: (1 << 22) - 9,
            len: 1,
            state: crate::vdisk::map::ExtentState::Mapped,
            birth: 300.into(),
            layers: crate::vdisk::map::Layers::from_slice(&[crate::vdisk::map::Layer::partial(
                seg,
            )]),
        };
        let words = fills.get(seg).words();
        let size = |packed| {
            let splice = encode_splice(
                3,
                e.vseg,
                e.vseg + 1,
                std::slice::from_ref(&e),
                &fills,
                packed,
            );
            (splice.unwrap().len(), encode_fill(seg, words, packed).len())
        };
        let (wide, packed) = (size(false), size(true));
        assert_eq!(wide, (92, 43), "wide: splice and fill");
        assert!(packed.0 <= 24 && packed.1 <= 10, "packed: {packed:?}");
        // And they decode to the same records.
        let pool = Uuid::from_u128(42);
        for p in [false, true] {
            let recs = vec![vec![
                encode_splice(3, e.vseg, e.vseg + 1, std::slice::from_ref(&e), &fills, p).unwrap(),
                encode_fill(seg, words, p),
            ]];
            let (place, page) = pack(&RecordGroups::of(&recs), 0, 1, 10, 8, &pool).remove(0);
            let got = decode_log_page(&page, place, &pool, total).unwrap().records;
            assert_eq!(got[1], LogRecord::Fill { seg, words });
            assert!(
                matches!(&got[0], LogRecord::Splice { disk: 3, extents, .. }
                    if extents.len() == 1 && extents[0].layers[0] == (seg, Some(words))),
                "{got:?}"
            );
        }
    }

    /// Packed records refused, each with the field named: truncated, a number too
    /// long, an extent outside the splice's range, a count past what the body holds, a
    /// fill's unknown tag, overlapping runs, a segment beyond the pool.
    #[test]
    fn damaged_packed_records_are_refused_with_the_field_named() {
        let pool = Uuid::from_u128(42);
        let splice = encode_packed(&sample()[0]).unwrap();
        let fill = encode_packed(&sample()[2]).unwrap();
        let decode = |rec: &[u8], total: u64| {
            let (place, page) =
                pack(&RecordGroups::of(&[vec![rec.to_vec()]]), 0, 1, 10, 8, &pool).remove(0);
            decode_log_page(&page, place, &pool, total).map(|p| p.records)
        };
        assert_eq!(decode(&splice, 1000).unwrap(), vec![sample()[0].clone()]);
        assert_eq!(decode(&fill, 1000).unwrap(), vec![sample()[2].clone()]);
        // Body bytes after the head: (kind, len) then the body.
        let with_body = |kind: u8, body: &[u8]| {
            let mut r = vec![kind];
            r.extend_from_slice(&(body.len() as u16).to_le_bytes());
            r.extend_from_slice(body);
            r
        };
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            // The splice cut short: its last extent runs past the body.
            (
                with_body(KIND_PACKED_SPLICE, &splice[3..splice.len() - 2]),
                1000,
                "runs past the end of the record",
            ),
            // Disk id of 11 continuation bytes.
            (
                with_body(KIND_PACKED_SPLICE, &[0xff; 11]),
                1000,
                "longer than 64 bits",
            ),
            // from 4, span 1 (to 5), one extent at 4 of 3 segments.
            (
                with_body(KIND_PACKED_SPLICE, &[1, 4, 1, 1, 0, 3, 0x10, 3, 17, 0]),
                1000,
                "outside",
            ),
            // 200 extents in a body of 6 bytes.
            (
                with_body(KIND_PACKED_SPLICE, &[1, 4, 1, 0xc8, 0x01, 0]),
                1000,
                "200 extents",
            ),
            // A fill tag of 40.
            (
                with_body(KIND_PACKED_FILL, &[17, 40]),
                1000,
                "unknown fill tag 40",
            ),
            // Two runs, the second starting inside the first.
            (
                with_body(KIND_PACKED_FILL, &[17, 3, 10, 5, 12, 0]),
                1000,
                "overlaps",
            ),
            // Segment 17 of a pool of 17.
            (fill.clone(), 17, "segment 17, beyond 17"),
            // Leftover bytes after a fill.
            (with_body(KIND_PACKED_FILL, &[17, 1, 0]), 1000, "left over"),
        ];
        for (rec, total, want) in cases {
            let e = decode(&rec, total).unwrap_err().to_string();
            assert!(e.contains(want), "want `{want}`: {e}");
        }
    }

    #[test]
    fn damaged_pages_are_refused_with_the_field_named() {
        let pool = Uuid::from_u128(42);
        let pages = pack(
            &RecordGroups::of(&[vec![encode(&sample()[0])]]),
            0,
            1,
            10,
            8,
            &pool,
        );
        let (place, good) = &pages[0];
        // Another place: misdirected.
        assert!(matches!(
            decode_log_page(good, place + 1, &pool, 1000),
            Err(MetaError::Misdirected { .. })
        ));
        // Segments beyond the pool.
        let e = decode_log_page(good, *place, &pool, 18).unwrap_err();
        assert!(e.to_string().contains("segment"), "{e}");
        // A body whose length runs past the page, resealed.
        let mut b = good.clone();
        let at = HEADER_BYTES + LOG_HEAD_BYTES + 1;
        b[at..at + 2].copy_from_slice(&4030u16.to_le_bytes());
        super::super::seal(&mut b);
        let e = decode_log_page(&b, *place, &pool, 1000).unwrap_err();
        assert!(e.to_string().contains("runs past the end"), "{e}");
        // An unknown kind.
        let mut b = good.clone();
        b[HEADER_BYTES + LOG_HEAD_BYTES] = 99;
        super::super::seal(&mut b);
        let e = decode_log_page(&b, *place, &pool, 1000).unwrap_err();
        assert!(e.to_string().contains("unknown kind 99"), "{e}");
        // A torn page: checksum.
        let mut b = good.clone();
        b[PAGE_BYTES - 1] ^= 1;
        assert!(matches!(
            decode_log_page(&b, *place, &pool, 1000),
            Err(MetaError::Checksum { .. })
        ));
    }
}
