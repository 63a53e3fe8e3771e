//! The on-disk format of a pool's metadata: pure encoders and decoders, no I/O.
//!
//! ```text
//! metadata device (container 0, or a separate metadata bdev)
//!   byte 0      label      (also at byte 0 of every data container)
//!   byte 4096   superblock slot A   } written alternately, by transaction parity (A even,
//!   byte 8192   superblock slot B   } B odd); open takes the valid one with the higher txn
//!   meta_first_byte + 4096 × page    metadata pages:
//!       [0, 2 × sm_pages)           the space map (segment reference counts): two
//!                                   places per page, written alternately
//!       [.., + 2 × sm_index_pages)  the space-map index (pointers to the space-map
//!                                   pages): two places per page, written alternately
//!       [node_first_page, ..)       table nodes and directory pages, copy-on-write
//! ```
//!
//! Every page carries a CRC32C, its own page index (a misdirected write is caught), the
//! pool's UUID tag and the transaction that wrote it. Every pointer to a page is a
//! [`BlockPtr`]: the page, the transaction that wrote it and its checksum (ZFS's block
//! pointers, btrfs's generations), so a page that keeps an older valid version (a lost
//! write) or holds another page's content (a misdirected one) is caught by its parent:
//! superblock → directory chain → table roots → internal nodes → leaves, and superblock →
//! space-map index → space-map pages. Decoding is total: any input yields a value or a
//! [`MetaError`] naming the page and field; nothing panics.
//!
//! **Versions.** Format 2 added the checksums and transactions to every pointer and the
//! space-map index. A pool of format 1 is refused with a message (README, "Format
//! versions"): its pointers cannot be verified, so it is not upgraded in place.
//!
//! - this file: the layout constants, the errors, the field reader and writer, and the
//!   header, checksum and pool tag every metadata page shares;
//! - [`label`] and [`superblock`]: the two fixed-place blocks;
//! - [`node`]: table node pages (internal nodes and leaves);
//! - [`directory`]: the disk records;
//! - [`space_map`]: the segment reference counts.

pub mod directory;
pub mod label;
pub mod log;
pub mod node;
pub mod space_map;
pub mod superblock;

use uuid::Uuid;

/// Size of every metadata page, label and superblock.
pub const PAGE_BYTES: usize = 4096;
/// Byte offset of superblock slot A (slot B follows).
pub const SUPERBLOCK_OFFSET: u64 = 4096;
/// Most containers in a pool.
pub const MAX_CONTAINERS: usize = 32;
/// A pointer to no page.
pub const NO_PAGE: u64 = u64::MAX;
/// Virtual segments of a disk lie below this (2^48 segments of at least 64 KiB).
pub const MAX_VSEG: u64 = 1 << 48;
/// Disks are smaller than this many blocks (their byte size fits in 64 bits).
pub const MAX_DISK_BLOCKS: u64 = 1 << 52;

pub(crate) const HEADER_BYTES: usize = 64;
const PAGE_MAGIC: u32 = 0x5453_5047; // "TSPG"
/// The on-disk format this build reads and writes (labels, superblocks, pages).
pub const FORMAT_VERSION: u32 = 2;

/// A pointer to a metadata page with what it takes to verify the page it finds there:
/// the transaction that wrote the page and the page's checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPtr {
    pub page: u64,
    pub txn: u64,
    pub crc: u32,
}

impl BlockPtr {
    /// A pointer to no page.
    pub const NONE: BlockPtr = BlockPtr {
        page: NO_PAGE,
        txn: 0,
        crc: 0,
    };
    /// Encoded size.
    pub const BYTES: usize = 20;

    /// True for [`BlockPtr::NONE`].
    pub fn is_none(&self) -> bool {
        self.page == NO_PAGE
    }

    /// The pointer to a sealed page (as an encoder returned it): its own index, the
    /// transaction that wrote it and its checksum.
    pub fn of(page: &[u8]) -> BlockPtr {
        let word = |at: usize| u64::from_le_bytes(page[at..at + 8].try_into().expect("8 bytes"));
        BlockPtr {
            page: word(16),
            txn: word(24),
            crc: u32::from_le_bytes(page[8..12].try_into().expect("4 bytes")),
        }
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.u64(self.page);
        w.u64(self.txn);
        w.u32(self.crc);
    }

    fn read(r: &mut Reader<'_>) -> Option<BlockPtr> {
        Some(BlockPtr {
            page: r.u64()?,
            txn: r.u64()?,
            crc: r.u32()?,
        })
    }
}

/// Checks that `b`, a page that decoded as page `ptr.page`, is the version `ptr` points
/// at; `via` names the pointer for the error (e.g. "internal node 70, child 3").
pub fn verify_pointer(b: &[u8], ptr: &BlockPtr, via: &str) -> Result<(), MetaError> {
    let found = BlockPtr::of(b);
    if found.txn != ptr.txn {
        return Err(MetaError::Stale {
            page: ptr.page,
            via: via.to_string(),
            found: found.txn,
            expected: ptr.txn,
        });
    }
    if found.crc != ptr.crc {
        return Err(MetaError::PointerChecksum {
            page: ptr.page,
            via: via.to_string(),
            found: found.crc,
            expected: ptr.crc,
        });
    }
    Ok(())
}

/// What went wrong decoding metadata; every variant says where.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum MetaError {
    #[error("{what}: no tessera label (bad magic)")]
    NoLabel { what: String },
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        what: String,
        stored: u32,
        computed: u32,
    },
    #[error(
        "{what}: format version {version} is not supported (this build reads version {} \
         pages and labels, and superblocks of version {} to {}; see README, \"Format \
         versions\", to migrate)",
        FORMAT_VERSION,
        FORMAT_VERSION,
        superblock::PACKED_LOG_SUPERBLOCK_VERSION
    )]
    Version { what: String, version: u32 },
    #[error("metadata page {page}: bad magic {magic:#010x}")]
    PageMagic { page: u64, magic: u32 },
    #[error("metadata page {page}: misdirected write (the page says it is page {found})")]
    Misdirected { page: u64, found: u64 },
    #[error("metadata page {page}: belongs to another pool")]
    ForeignPage { page: u64 },
    #[error("metadata page {page}: expected a {expected} page, found kind {found}")]
    Kind {
        page: u64,
        expected: &'static str,
        found: u8,
    },
    #[error("metadata page {page}: {field}: {reason}")]
    Field {
        page: u64,
        field: &'static str,
        reason: String,
    },
    #[error(
        "metadata page {page}: stale: it holds the version of transaction {found}, but \
         {via} expects transaction {expected} (a lost or misdirected write)"
    )]
    Stale {
        page: u64,
        via: String,
        found: u64,
        expected: u64,
    },
    #[error(
        "metadata page {page}: checksum {found:#010x} differs from the {expected:#010x} \
         that {via} expects (the page was overwritten)"
    )]
    PointerChecksum {
        page: u64,
        via: String,
        found: u32,
        expected: u32,
    },
    #[error("{what}: {field}: {reason}")]
    Superblock {
        what: String,
        field: &'static str,
        reason: String,
    },
    #[error("no valid superblock: slot A: {a}; slot B: {b}")]
    NoSuperblock { a: String, b: String },
    #[error("label: {field}: {reason}")]
    Label { field: &'static str, reason: String },
    #[error("segment {seg}: {reason}")]
    Segment { seg: u64, reason: String },
}

/// Page kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageKind {
    Internal = 1,
    Leaf = 2,
    Directory = 3,
    SpaceMap = 4,
    SpaceMapIndex = 5,
    Log = 6,
    /// A leaf in the packed encoding ([`node`]); `Leaf` pages (the first encoding) are
    /// still read.
    PackedLeaf = 7,
}

impl PageKind {
    fn name(self) -> &'static str {
        match self {
            PageKind::Internal => "internal node",
            PageKind::Leaf => "leaf node",
            PageKind::Directory => "directory",
            PageKind::SpaceMap => "space map",
            PageKind::SpaceMapIndex => "space-map index",
            PageKind::Log => "log",
            PageKind::PackedLeaf => "packed leaf node",
        }
    }
}

/// Little-endian field reader over a byte slice; every read is bounds checked.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], at: usize) -> Self {
        Reader { buf, at }
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.bytes(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    /// An unsigned LEB128 number: `Err` names why it is not one (too long, past 64
    /// bits), `Ok(None)` at the end of the buffer.
    fn varint(&mut self) -> Result<Option<u64>, &'static str> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(b) = self.u8() else {
                return Ok(None);
            };
            if i == 9 && b > 1 {
                return Err("a number longer than 64 bits");
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(Some(v));
            }
        }
        Err("a number longer than 64 bits")
    }
    fn uuid(&mut self) -> Option<Uuid> {
        self.bytes(16)
            .map(|b| Uuid::from_bytes(b.try_into().expect("16 bytes")))
    }
}

/// Little-endian field writer into a page buffer.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8], at: usize) -> Self {
        Writer { buf, at }
    }
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// An unsigned LEB128 number (`table::varint_len` bytes).
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.u8(v as u8);
    }
    fn name(&mut self, s: &str, width: usize) {
        let b = s.as_bytes();
        let n = b.len().min(width - 1);
        self.u8(n as u8);
        self.bytes(&b[..n]);
        self.at += width - 1 - n;
    }
}

fn read_name(r: &mut Reader<'_>, width: usize) -> Option<Result<String, String>> {
    let n = r.u8()? as usize;
    let raw = r.bytes(width - 1)?;
    if n > width - 1 {
        return Some(Err(format!("name length {n} exceeds {}", width - 1)));
    }
    Some(String::from_utf8(raw[..n].to_vec()).map_err(|_| "name is not UTF-8".to_string()))
}

/// CRC32C of a 4 KiB block with its checksum field (at `crc_at`) taken as zero.
fn checksum(buf: &[u8], crc_at: usize) -> u32 {
    let c = crc32c::crc32c(&buf[..crc_at]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &buf[crc_at + 4..])
}

/// The header every metadata page starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub kind: PageKind,
    pub count: u32,
    pub page: u64,
    pub txn: u64,
    /// Directory chains: the next page ([`BlockPtr::NONE`] at the end); space-map and
    /// space-map index pages: their index in `next.page`.
    pub next: BlockPtr,
}

fn pool_tag(pool: &Uuid) -> u64 {
    u64::from_le_bytes(pool.as_bytes()[..8].try_into().expect("8 bytes"))
}

fn new_page(h: &PageHeader, pool: &Uuid) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_BYTES];
    let mut w = Writer::new(&mut b, 0);
    w.u32(PAGE_MAGIC);
    w.u8(h.kind as u8);
    w.u8(FORMAT_VERSION as u8);
    w.bytes(&[0, 0]);
    w.u32(0); // crc at 8
    w.u32(h.count);
    w.u64(h.page);
    w.u64(h.txn);
    w.u64(pool_tag(pool));
    h.next.write(&mut w);
    b
}

/// Byte of a page header holding the page's own index.
const HEADER_PAGE_AT: usize = 16;

/// A copy of sealed page `b` for metadata page `page` (its own index rewritten, the
/// checksum recomputed): a log page's mirror.
pub(crate) fn relocated(b: &[u8], page: u64) -> Vec<u8> {
    let mut c = b.to_vec();
    c[HEADER_PAGE_AT..HEADER_PAGE_AT + 8].copy_from_slice(&page.to_le_bytes());
    seal(&mut c);
    c
}

fn seal(b: &mut [u8]) {
    let crc = checksum(b, 8);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Turns arbitrary bytes into a page that passes the header checks (magic, kind,
/// version, own index, pool tag, checksum) so that a fuzzer reaches the payload decoders.
pub fn forge_page(bytes: &[u8], kind: PageKind, page: u64, pool: &Uuid) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_BYTES];
    let n = bytes.len().min(PAGE_BYTES);
    b[..n].copy_from_slice(&bytes[..n]);
    b[0..4].copy_from_slice(&PAGE_MAGIC.to_le_bytes());
    b[4] = kind as u8;
    b[5] = FORMAT_VERSION as u8;
    b[16..24].copy_from_slice(&page.to_le_bytes());
    b[32..40].copy_from_slice(&pool_tag(pool).to_le_bytes());
    seal(&mut b);
    b
}

/// Recomputes the checksum of a 4 KiB block that is a label, a superblock or a metadata
/// page (by its magic); returns false, changing nothing, for anything else. For tests
/// and fuzzers that craft checksum-valid metadata with wrong fields.
pub fn reseal(b: &mut [u8]) -> bool {
    if b.len() < PAGE_BYTES {
        return false;
    }
    let b = &mut b[..PAGE_BYTES];
    let at = if b[..8] == *label::LABEL_MAGIC || b[..8] == *superblock::SUPER_MAGIC {
        12
    } else if b[..4] == PAGE_MAGIC.to_le_bytes() {
        8
    } else {
        return false;
    };
    let crc = checksum(b, at);
    b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Verifies a page read from index `page` and returns its header.
pub fn decode_header(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    expect: PageKind,
) -> Result<PageHeader, MetaError> {
    if b.len() < PAGE_BYTES {
        return Err(MetaError::Field {
            page,
            field: "length",
            reason: format!("{} bytes", b.len()),
        });
    }
    let b = &b[..PAGE_BYTES];
    let mut r = Reader::new(b, 0);
    let magic = r.u32().unwrap_or(0);
    if magic != PAGE_MAGIC {
        return Err(MetaError::PageMagic { page, magic });
    }
    let kind = r.u8().unwrap_or(0);
    let version = r.u8().unwrap_or(0);
    let _ = r.bytes(2);
    let stored = r.u32().unwrap_or(0);
    let computed = checksum(b, 8);
    if stored != computed {
        return Err(MetaError::Checksum {
            what: format!("metadata page {page}"),
            stored,
            computed,
        });
    }
    if u32::from(version) != FORMAT_VERSION {
        return Err(MetaError::Version {
            what: format!("metadata page {page}"),
            version: version.into(),
        });
    }
    let count = r.u32().unwrap_or(0);
    let found = r.u64().unwrap_or(0);
    let txn = r.u64().unwrap_or(0);
    let tag = r.u64().unwrap_or(0);
    let next = BlockPtr::read(&mut r).unwrap_or(BlockPtr::NONE);
    if found != page {
        return Err(MetaError::Misdirected { page, found });
    }
    if tag != pool_tag(pool) {
        return Err(MetaError::ForeignPage { page });
    }
    if kind != expect as u8 {
        return Err(MetaError::Kind {
            page,
            expected: expect.name(),
            found: kind,
        });
    }
    Ok(PageHeader {
        kind: expect,
        count,
        page,
        txn,
        next,
    })
}

#[cfg(test)]
mod tests;
