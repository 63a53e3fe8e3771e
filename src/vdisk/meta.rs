//! The on-disk format of a pool's metadata: pure encoders and decoders, no I/O.
//!
//! ```text
//! metadata device (container 0, or a separate metadata bdev)
//!   byte 0      label      (also at byte 0 of every data container)
//!   byte 4096   superblock slot A   } written alternately, by transaction parity;
//!   byte 8192   superblock slot B   } open takes the valid one with the higher txn
//!   meta_first_byte + 4096 × page    metadata pages:
//!       [0, 2 × sm_pages)   the space map (segment reference counts), two copies
//!       [2 × sm_pages, ..)  table nodes and directory pages, written copy-on-write
//! ```
//!
//! Every page carries a CRC32C, its own page index (a misdirected write is caught), the
//! pool's UUID tag and the transaction that wrote it. Decoding is total: any input
//! yields a value or a [`MetaError`] naming the page and field; nothing panics.

use super::map::{Extent, ExtentState, Fill, Layer, MAX_LAYERS};
use super::table::NODE_PAYLOAD_BYTES;
use std::sync::Arc;
use uuid::Uuid;

/// Size of every metadata page, label and superblock.
pub const PAGE_BYTES: usize = 4096;
/// Byte offset of superblock slot A (slot B follows).
pub const SUPERBLOCK_OFFSET: u64 = 4096;
/// Most containers in a pool.
pub const MAX_CONTAINERS: usize = 32;
/// Segment reference counts per space-map page.
pub const SM_COUNTS_PER_PAGE: usize = (PAGE_BYTES - HEADER_BYTES) / 4;
/// Disk records per directory page.
pub const DIR_RECORDS_PER_PAGE: usize = (PAGE_BYTES - HEADER_BYTES) / DISK_RECORD_BYTES;
/// A pointer to no page.
pub const NO_PAGE: u64 = u64::MAX;
/// Virtual segments of a disk lie below this (2^48 segments of at least 64 KiB).
pub const MAX_VSEG: u64 = 1 << 48;
/// Disks are smaller than this many blocks (their byte size fits in 64 bits).
pub const MAX_DISK_BLOCKS: u64 = 1 << 52;

const HEADER_BYTES: usize = 64;
const DISK_RECORD_BYTES: usize = 320;
const LABEL_MAGIC: &[u8; 8] = b"TSRLABEL";
const SUPER_MAGIC: &[u8; 8] = b"TSRSUPER";
const PAGE_MAGIC: u32 = 0x5453_5047; // "TSPG"
const FORMAT_VERSION: u32 = 1;

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
    #[error("{what}: unsupported format version {version}")]
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
    #[error("superblock: {field}: {reason}")]
    Superblock { field: &'static str, reason: String },
    #[error("label: {field}: {reason}")]
    Label { field: &'static str, reason: String },
}

/// Page kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageKind {
    Internal = 1,
    Leaf = 2,
    Directory = 3,
    SpaceMap = 4,
}

impl PageKind {
    fn name(self) -> &'static str {
        match self {
            PageKind::Internal => "internal node",
            PageKind::Leaf => "leaf node",
            PageKind::Directory => "directory",
            PageKind::SpaceMap => "space map",
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

/// The role of a bdev in a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Holds data segments only.
    Data = 0,
    /// Holds the metadata (a separate metadata bdev).
    Metadata = 1,
    /// Container 0 holding both data and the metadata.
    DataAndMetadata = 2,
}

/// The label at the start of every bdev of a pool: what examine looks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub pool_uuid: Uuid,
    pub pool_name: String,
    pub role: Role,
    /// Index among the data containers (meaningless for a metadata bdev).
    pub container_index: u32,
    pub container_count: u32,
    pub segment_bytes: u64,
    pub block_size: u32,
    /// This bdev's own UUID as recorded at creation.
    pub bdev_uuid: Uuid,
}

impl Label {
    /// Encodes into one 4 KiB block.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_BYTES];
        let mut w = Writer::new(&mut b, 0);
        w.bytes(LABEL_MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32(0); // crc
        w.bytes(self.pool_uuid.as_bytes());
        w.u8(self.role as u8);
        w.u32(self.container_index);
        w.u32(self.container_count);
        w.u64(self.segment_bytes);
        w.u32(self.block_size);
        w.bytes(self.bdev_uuid.as_bytes());
        w.name(&self.pool_name, 128);
        let crc = checksum(&b, 12);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a label block. `Ok(None)` when the block is not a tessera label at all.
    pub fn decode(b: &[u8], what: &str) -> Result<Option<Label>, MetaError> {
        if b.len() < PAGE_BYTES || &b[..8] != LABEL_MAGIC {
            return Ok(None);
        }
        let b = &b[..PAGE_BYTES];
        let mut r = Reader::new(b, 8);
        let bad = |field, reason: &str| MetaError::Label {
            field,
            reason: reason.to_string(),
        };
        let version = r.u32().ok_or_else(|| bad("version", "truncated"))?;
        let stored = r.u32().ok_or_else(|| bad("crc", "truncated"))?;
        let computed = checksum(b, 12);
        if stored != computed {
            return Err(MetaError::Checksum {
                what: what.to_string(),
                stored,
                computed,
            });
        }
        if version != FORMAT_VERSION {
            return Err(MetaError::Version {
                what: what.to_string(),
                version,
            });
        }
        let t = "truncated";
        let pool_uuid = r.uuid().ok_or_else(|| bad("pool_uuid", t))?;
        let role = match r.u8().ok_or_else(|| bad("role", t))? {
            0 => Role::Data,
            1 => Role::Metadata,
            2 => Role::DataAndMetadata,
            x => return Err(bad("role", &format!("unknown role {x}"))),
        };
        let container_index = r.u32().ok_or_else(|| bad("container_index", t))?;
        let container_count = r.u32().ok_or_else(|| bad("container_count", t))?;
        let segment_bytes = r.u64().ok_or_else(|| bad("segment_bytes", t))?;
        let block_size = r.u32().ok_or_else(|| bad("block_size", t))?;
        let bdev_uuid = r.uuid().ok_or_else(|| bad("bdev_uuid", t))?;
        let pool_name = read_name(&mut r, 128)
            .ok_or_else(|| bad("pool_name", t))?
            .map_err(|e| bad("pool_name", &e))?;
        if container_count == 0 || container_count as usize > MAX_CONTAINERS {
            return Err(bad(
                "container_count",
                &format!("{container_count} is not in 1..=32"),
            ));
        }
        if role != Role::Metadata && container_index >= container_count {
            return Err(bad(
                "container_index",
                &format!("{container_index} ≥ count {container_count}"),
            ));
        }
        Ok(Some(Label {
            pool_uuid,
            pool_name,
            role,
            container_index,
            container_count,
            segment_bytes,
            block_size,
            bdev_uuid,
        }))
    }
}

/// One data container as the superblock records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    pub bdev_uuid: Uuid,
    /// Segments of the container (including its reserved ones).
    pub segments: u64,
    /// Leading segments not used for data (label, metadata pages).
    pub reserved_segments: u64,
}

/// The root of a pool's durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub pool_uuid: Uuid,
    pub pool_name: String,
    /// The transaction this superblock commits.
    pub txn: u64,
    /// Next birth generation for extents.
    pub generation: u64,
    pub next_disk_id: u64,
    pub segment_bytes: u64,
    pub block_size: u32,
    /// Byte offset of metadata page 0 on the metadata device.
    pub meta_first_byte: u64,
    pub meta_pages: u64,
    /// Pages per space-map copy.
    pub sm_pages: u64,
    pub directory_head: u64,
    /// Default copy-on-write policy (0 redirect, 1 copy-out).
    pub cow_policy: u8,
    /// True if a metadata bdev separate from the containers holds the metadata.
    pub separate_metadata: bool,
    pub metadata_uuid: Uuid,
    pub containers: Vec<ContainerRecord>,
}

impl Superblock {
    /// Encodes into one 4 KiB block.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_BYTES];
        let mut w = Writer::new(&mut b, 0);
        w.bytes(SUPER_MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32(0);
        w.bytes(self.pool_uuid.as_bytes());
        w.u64(self.txn);
        w.u64(self.generation);
        w.u64(self.next_disk_id);
        w.u64(self.segment_bytes);
        w.u32(self.block_size);
        w.u64(self.meta_first_byte);
        w.u64(self.meta_pages);
        w.u64(self.sm_pages);
        w.u64(self.directory_head);
        w.u8(self.cow_policy);
        w.u8(self.separate_metadata as u8);
        w.bytes(self.metadata_uuid.as_bytes());
        w.name(&self.pool_name, 128);
        w.u32(self.containers.len() as u32);
        for c in &self.containers {
            w.bytes(c.bdev_uuid.as_bytes());
            w.u64(c.segments);
            w.u64(c.reserved_segments);
        }
        let crc = checksum(&b, 12);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes one superblock slot.
    pub fn decode(b: &[u8], slot: &str) -> Result<Superblock, MetaError> {
        let what = format!("superblock slot {slot}");
        if b.len() < PAGE_BYTES || &b[..8] != SUPER_MAGIC {
            return Err(MetaError::NoLabel { what });
        }
        let b = &b[..PAGE_BYTES];
        let bad = |field, reason: String| MetaError::Superblock { field, reason };
        let t = || "truncated".to_string();
        let mut r = Reader::new(b, 8);
        let version = r.u32().ok_or_else(|| bad("version", t()))?;
        let stored = r.u32().ok_or_else(|| bad("crc", t()))?;
        let computed = checksum(b, 12);
        if stored != computed {
            return Err(MetaError::Checksum {
                what,
                stored,
                computed,
            });
        }
        if version != FORMAT_VERSION {
            return Err(MetaError::Version { what, version });
        }
        let pool_uuid = r.uuid().ok_or_else(|| bad("pool_uuid", t()))?;
        let txn = r.u64().ok_or_else(|| bad("txn", t()))?;
        let generation = r.u64().ok_or_else(|| bad("generation", t()))?;
        let next_disk_id = r.u64().ok_or_else(|| bad("next_disk_id", t()))?;
        let segment_bytes = r.u64().ok_or_else(|| bad("segment_bytes", t()))?;
        let block_size = r.u32().ok_or_else(|| bad("block_size", t()))?;
        let meta_first_byte = r.u64().ok_or_else(|| bad("meta_first_byte", t()))?;
        let meta_pages = r.u64().ok_or_else(|| bad("meta_pages", t()))?;
        let sm_pages = r.u64().ok_or_else(|| bad("sm_pages", t()))?;
        let directory_head = r.u64().ok_or_else(|| bad("directory_head", t()))?;
        let cow_policy = r.u8().ok_or_else(|| bad("cow_policy", t()))?;
        let separate_metadata = r.u8().ok_or_else(|| bad("separate_metadata", t()))? != 0;
        let metadata_uuid = r.uuid().ok_or_else(|| bad("metadata_uuid", t()))?;
        let pool_name = read_name(&mut r, 128)
            .ok_or_else(|| bad("pool_name", t()))?
            .map_err(|e| bad("pool_name", e))?;
        let n = r.u32().ok_or_else(|| bad("containers", t()))? as usize;
        if n == 0 || n > MAX_CONTAINERS {
            return Err(bad(
                "containers",
                format!("{n} containers is not in 1..=32"),
            ));
        }
        let mut containers = Vec::with_capacity(n);
        for _ in 0..n {
            containers.push(ContainerRecord {
                bdev_uuid: r.uuid().ok_or_else(|| bad("containers", t()))?,
                segments: r.u64().ok_or_else(|| bad("containers", t()))?,
                reserved_segments: r.u64().ok_or_else(|| bad("containers", t()))?,
            });
        }
        if !segment_bytes.is_power_of_two() || !(64 << 10..=64 << 20).contains(&segment_bytes) {
            return Err(bad(
                "segment_bytes",
                format!("{segment_bytes} is not a power of two in 64 KiB..=64 MiB"),
            ));
        }
        if !block_size.is_power_of_two() || !(512..=4096).contains(&block_size) {
            return Err(bad(
                "block_size",
                format!("{block_size} is not a power of two in 512..=4096"),
            ));
        }
        if sm_pages.checked_mul(2).is_none_or(|p| p > meta_pages) {
            return Err(bad(
                "sm_pages",
                format!("{sm_pages} × 2 exceeds the {meta_pages} metadata pages"),
            ));
        }
        if directory_head != NO_PAGE && directory_head >= meta_pages {
            return Err(bad(
                "directory_head",
                format!("page {directory_head} is beyond the {meta_pages} metadata pages"),
            ));
        }
        Ok(Superblock {
            pool_uuid,
            pool_name,
            txn,
            generation,
            next_disk_id,
            segment_bytes,
            block_size,
            meta_first_byte,
            meta_pages,
            sm_pages,
            directory_head,
            cow_policy,
            separate_metadata,
            metadata_uuid,
            containers,
        })
    }
}

/// The header every metadata page starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub kind: PageKind,
    pub count: u32,
    pub page: u64,
    pub txn: u64,
    /// Directory chains: the next page, or [`NO_PAGE`].
    pub next: u64,
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
    w.u64(h.next);
    b
}

fn seal(b: &mut [u8]) {
    let crc = checksum(b, 8);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Turns arbitrary bytes into a page that passes the header checks (magic, kind, own
/// index, pool tag, checksum) so that a fuzzer reaches the payload decoders.
pub fn forge_page(bytes: &[u8], kind: PageKind, page: u64, pool: &Uuid) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_BYTES];
    let n = bytes.len().min(PAGE_BYTES);
    b[..n].copy_from_slice(&bytes[..n]);
    b[0..4].copy_from_slice(&PAGE_MAGIC.to_le_bytes());
    b[4] = kind as u8;
    b[16..24].copy_from_slice(&page.to_le_bytes());
    b[32..40].copy_from_slice(&pool_tag(pool).to_le_bytes());
    seal(&mut b);
    b
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
    let _version = r.u8();
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
    let count = r.u32().unwrap_or(0);
    let found = r.u64().unwrap_or(0);
    let txn = r.u64().unwrap_or(0);
    let tag = r.u64().unwrap_or(0);
    let next = r.u64().unwrap_or(NO_PAGE);
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

/// Encodes an internal node: `(first virtual segment, child page)` per child.
pub fn encode_internal(page: u64, txn: u64, pool: &Uuid, entries: &[(u64, u64)]) -> Vec<u8> {
    debug_assert!(entries.len() * 16 <= NODE_PAYLOAD_BYTES);
    let h = PageHeader {
        kind: PageKind::Internal,
        count: entries.len() as u32,
        page,
        txn,
        next: NO_PAGE,
    };
    let mut b = new_page(&h, pool);
    let mut w = Writer::new(&mut b, HEADER_BYTES);
    for &(k, c) in entries {
        w.u64(k);
        w.u64(c);
    }
    seal(&mut b);
    b
}

/// Decodes an internal node page.
pub fn decode_internal(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    meta_pages: u64,
) -> Result<Vec<(u64, u64)>, MetaError> {
    let h = decode_header(b, page, pool, PageKind::Internal)?;
    let n = h.count as usize;
    if n == 0 || n * 16 > NODE_PAYLOAD_BYTES {
        return Err(MetaError::Field {
            page,
            field: "count",
            reason: format!("{n} children"),
        });
    }
    let mut r = Reader::new(b, HEADER_BYTES);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let k = r.u64().unwrap_or(0);
        let c = r.u64().unwrap_or(NO_PAGE);
        if c >= meta_pages {
            return Err(MetaError::Field {
                page,
                field: "child",
                reason: format!("child {i} points at page {c}, beyond {meta_pages}"),
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

/// Encodes a leaf. Fills are copied out atomically word by word.
pub fn encode_leaf(page: u64, txn: u64, pool: &Uuid, extents: &[Extent]) -> Vec<u8> {
    let h = PageHeader {
        kind: PageKind::Leaf,
        count: extents.len() as u32,
        page,
        txn,
        next: NO_PAGE,
    };
    let mut b = new_page(&h, pool);
    let mut w = Writer::new(&mut b, HEADER_BYTES);
    for e in extents {
        w.u64(e.vseg);
        w.u32(e.len);
        w.u8(match e.state {
            ExtentState::Mapped => 0,
            ExtentState::Error => 1,
        });
        w.u8(e.layers.len() as u8);
        w.u64(e.birth);
        for l in &e.layers {
            w.u64(l.seg);
            match &l.fill {
                None => w.u8(0),
                Some(f) => {
                    w.u8(1);
                    for word in f.words() {
                        w.u64(word);
                    }
                }
            }
        }
    }
    seal(&mut b);
    b
}

/// A decoded leaf extent: fills are raw words; the loader shares them by segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawExtent {
    pub vseg: u64,
    pub len: u32,
    pub error: bool,
    pub birth: u64,
    pub layers: Vec<(u64, Option<[u64; 4]>)>,
}

impl RawExtent {
    /// Builds the in-memory extent, getting each partial layer's shared fill from
    /// `fill_of(segment, words)`.
    pub fn build(&self, mut fill_of: impl FnMut(u64, [u64; 4]) -> Arc<Fill>) -> Extent {
        Extent {
            vseg: self.vseg,
            len: self.len,
            state: if self.error {
                ExtentState::Error
            } else {
                ExtentState::Mapped
            },
            birth: self.birth,
            layers: self
                .layers
                .iter()
                .map(|&(seg, words)| Layer {
                    seg,
                    fill: words.map(|w| fill_of(seg, w)),
                })
                .collect(),
        }
    }
}

/// Decodes a leaf page; `total_segments` bounds every segment reference.
pub fn decode_leaf(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    total_segments: u64,
) -> Result<Vec<RawExtent>, MetaError> {
    let h = decode_header(b, page, pool, PageKind::Leaf)?;
    let bad = |field, reason: String| MetaError::Field {
        page,
        field,
        reason,
    };
    let mut r = Reader::new(&b[..PAGE_BYTES], HEADER_BYTES);
    let mut out: Vec<RawExtent> = Vec::new();
    for i in 0..h.count {
        let t = || format!("extent {i} runs past the end of the page");
        let vseg = r.u64().ok_or_else(|| bad("extent", t()))?;
        let len = r.u32().ok_or_else(|| bad("extent", t()))?;
        let state = r.u8().ok_or_else(|| bad("extent", t()))?;
        let nlayers = r.u8().ok_or_else(|| bad("extent", t()))? as usize;
        let birth = r.u64().ok_or_else(|| bad("extent", t()))?;
        if len == 0 || len > super::map::MAX_RUN_SEGMENTS {
            return Err(bad("len", format!("extent {i} covers {len} segments")));
        }
        if vseg >= MAX_VSEG {
            return Err(bad(
                "vseg",
                format!("extent {i} starts at segment {vseg}, beyond any disk"),
            ));
        }
        if state > 1 {
            return Err(bad(
                "state",
                format!("extent {i} has unknown state {state}"),
            ));
        }
        if nlayers > MAX_LAYERS || (nlayers == 0 && state == 0) {
            return Err(bad("layers", format!("extent {i} has {nlayers} layers")));
        }
        if let Some(prev) = out.last()
            && vseg < prev.vseg + prev.len as u64
        {
            return Err(bad(
                "vseg",
                format!("extent {i} at {vseg} overlaps the previous one"),
            ));
        }
        let mut layers = Vec::with_capacity(nlayers);
        for _ in 0..nlayers {
            let seg = r.u64().ok_or_else(|| bad("layer", t()))?;
            let partial = r.u8().ok_or_else(|| bad("layer", t()))?;
            let words = match partial {
                0 => None,
                1 => {
                    let mut w = [0u64; 4];
                    for x in w.iter_mut() {
                        *x = r.u64().ok_or_else(|| bad("layer", t()))?;
                    }
                    Some(w)
                }
                x => return Err(bad("layer", format!("extent {i}: unknown layer flag {x}"))),
            };
            let span = if words.is_none() && nlayers == 1 {
                len as u64
            } else {
                1
            };
            if seg.checked_add(span).is_none_or(|e| e > total_segments) {
                return Err(bad(
                    "segment",
                    format!("extent {i} references segment {seg}+{span}, beyond {total_segments}"),
                ));
            }
            if len > 1 && (nlayers != 1 || words.is_some()) {
                return Err(bad(
                    "len",
                    format!("extent {i} is a run but not one full layer"),
                ));
            }
            layers.push((seg, words));
        }
        out.push(RawExtent {
            vseg,
            len,
            error: state == 1,
            birth,
            layers,
        });
    }
    Ok(out)
}

/// How a disk came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskKind {
    /// Created empty (thin or fully allocated).
    Disk = 0,
    /// A read-only point-in-time copy.
    Snapshot = 1,
    /// A writable copy of a snapshot.
    Clone = 2,
}

/// A background job recorded in a disk's record so that it resumes after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobRecord {
    None,
    /// Split (inflate): copy everything shared, then forget the parent.
    Split {
        cursor: u64,
    },
    /// Decouple: copy what is shared with the parent but not the grandparent.
    Decouple {
        cursor: u64,
    },
}

/// One virtual disk in the pool's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRecord {
    pub id: u64,
    pub uuid: Uuid,
    pub name: String,
    pub size_blocks: u64,
    pub kind: DiskKind,
    pub read_only: bool,
    pub thin: bool,
    /// The disk this one shares data with (a snapshot's origin chain, a clone's
    /// snapshot), or 0.
    pub parent: u64,
    /// Generation of the last snapshot taken of this disk (or of its creation as a
    /// clone): extents born at or before it are shared, not writable.
    pub snap_gen: u64,
    pub created_gen: u64,
    pub root_page: u64,
    /// Copy-on-write policy (0 redirect, 1 copy-out).
    pub cow_policy: u8,
    pub job: JobRecord,
    pub created_unix: u64,
}

fn encode_disk(w: &mut Writer<'_>, d: &DiskRecord) {
    let start = w.at;
    w.u64(d.id);
    w.bytes(d.uuid.as_bytes());
    w.name(&d.name, 128);
    w.u64(d.size_blocks);
    w.u8(d.kind as u8);
    w.u8(d.read_only as u8 | (d.thin as u8) << 1);
    w.u64(d.parent);
    w.u64(d.snap_gen);
    w.u64(d.created_gen);
    w.u64(d.root_page);
    w.u8(d.cow_policy);
    let (job, cursor) = match d.job {
        JobRecord::None => (0u8, 0u64),
        JobRecord::Split { cursor } => (1, cursor),
        JobRecord::Decouple { cursor } => (2, cursor),
    };
    w.u8(job);
    w.u64(cursor);
    w.u64(d.created_unix);
    w.at = start + DISK_RECORD_BYTES;
}

/// Encodes a directory page holding `disks` (at most [`DIR_RECORDS_PER_PAGE`]).
pub fn encode_directory(
    page: u64,
    txn: u64,
    pool: &Uuid,
    next: u64,
    disks: &[DiskRecord],
) -> Vec<u8> {
    debug_assert!(disks.len() <= DIR_RECORDS_PER_PAGE);
    let h = PageHeader {
        kind: PageKind::Directory,
        count: disks.len() as u32,
        page,
        txn,
        next,
    };
    let mut b = new_page(&h, pool);
    let mut w = Writer::new(&mut b, HEADER_BYTES);
    for d in disks {
        encode_disk(&mut w, d);
    }
    seal(&mut b);
    b
}

/// Decodes a directory page: its records and the next page of the chain.
pub fn decode_directory(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    meta_pages: u64,
) -> Result<(Vec<DiskRecord>, u64), MetaError> {
    let h = decode_header(b, page, pool, PageKind::Directory)?;
    let bad = |field, reason: String| MetaError::Field {
        page,
        field,
        reason,
    };
    if h.count as usize > DIR_RECORDS_PER_PAGE {
        return Err(bad("count", format!("{} records", h.count)));
    }
    if h.next != NO_PAGE && h.next >= meta_pages {
        return Err(bad("next", format!("page {} beyond {meta_pages}", h.next)));
    }
    let mut out = Vec::new();
    for i in 0..h.count as usize {
        let mut r = Reader::new(&b[..PAGE_BYTES], HEADER_BYTES + i * DISK_RECORD_BYTES);
        let t = || format!("record {i} truncated");
        let id = r.u64().ok_or_else(|| bad("id", t()))?;
        let uuid = r.uuid().ok_or_else(|| bad("uuid", t()))?;
        let name = read_name(&mut r, 128)
            .ok_or_else(|| bad("name", t()))?
            .map_err(|e| bad("name", format!("record {i}: {e}")))?;
        let size_blocks = r.u64().ok_or_else(|| bad("size_blocks", t()))?;
        let kind = match r.u8().ok_or_else(|| bad("kind", t()))? {
            0 => DiskKind::Disk,
            1 => DiskKind::Snapshot,
            2 => DiskKind::Clone,
            x => return Err(bad("kind", format!("record {i}: unknown kind {x}"))),
        };
        let flags = r.u8().ok_or_else(|| bad("flags", t()))?;
        let parent = r.u64().ok_or_else(|| bad("parent", t()))?;
        let snap_gen = r.u64().ok_or_else(|| bad("snap_gen", t()))?;
        let created_gen = r.u64().ok_or_else(|| bad("created_gen", t()))?;
        let root_page = r.u64().ok_or_else(|| bad("root_page", t()))?;
        let cow_policy = r.u8().ok_or_else(|| bad("cow_policy", t()))?;
        let job = r.u8().ok_or_else(|| bad("job", t()))?;
        let cursor = r.u64().ok_or_else(|| bad("job", t()))?;
        let created_unix = r.u64().ok_or_else(|| bad("created_unix", t()))?;
        if size_blocks == 0 || size_blocks >= MAX_DISK_BLOCKS {
            return Err(bad(
                "size_blocks",
                format!("record {i}: {size_blocks} blocks is not a disk size"),
            ));
        }
        if id == 0 || name.is_empty() {
            return Err(bad("id", format!("record {i} has no id or name")));
        }
        if root_page != NO_PAGE && root_page >= meta_pages {
            return Err(bad(
                "root_page",
                format!("record {i}: page {root_page} beyond {meta_pages}"),
            ));
        }
        if cow_policy > 1 {
            return Err(bad(
                "cow_policy",
                format!("record {i}: unknown policy {cow_policy}"),
            ));
        }
        let job = match job {
            0 => JobRecord::None,
            1 => JobRecord::Split { cursor },
            2 => JobRecord::Decouple { cursor },
            x => return Err(bad("job", format!("record {i}: unknown job {x}"))),
        };
        out.push(DiskRecord {
            id,
            uuid,
            name,
            size_blocks,
            kind,
            read_only: flags & 1 != 0,
            thin: flags & 2 != 0,
            parent,
            snap_gen,
            created_gen,
            root_page,
            cow_policy,
            job,
            created_unix,
        });
    }
    Ok((out, h.next))
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
        next: index,
    };
    let mut b = new_page(&h, pool);
    let mut w = Writer::new(&mut b, HEADER_BYTES);
    for &c in counts {
        w.u32(c);
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
    if h.next != index {
        return Err(MetaError::Field {
            page,
            field: "index",
            reason: format!("holds space-map page {}, expected {index}", h.next),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Uuid {
        Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788)
    }

    #[test]
    fn label_round_trip_and_damage() {
        let l = Label {
            pool_uuid: pool(),
            pool_name: "pool0".into(),
            role: Role::DataAndMetadata,
            container_index: 0,
            container_count: 2,
            segment_bytes: 1 << 20,
            block_size: 4096,
            bdev_uuid: Uuid::from_u128(7),
        };
        let mut b = l.encode();
        assert_eq!(Label::decode(&b, "x").unwrap(), Some(l));
        assert_eq!(Label::decode(&[0u8; 4096], "x").unwrap(), None);
        b[100] ^= 1;
        assert!(matches!(
            Label::decode(&b, "x"),
            Err(MetaError::Checksum { .. })
        ));
    }

    fn sb() -> Superblock {
        Superblock {
            pool_uuid: pool(),
            pool_name: "p".into(),
            txn: 9,
            generation: 4,
            next_disk_id: 3,
            segment_bytes: 1 << 20,
            block_size: 4096,
            meta_first_byte: 1 << 20,
            meta_pages: 1000,
            sm_pages: 2,
            directory_head: 17,
            cow_policy: 0,
            separate_metadata: false,
            metadata_uuid: Uuid::nil(),
            containers: vec![ContainerRecord {
                bdev_uuid: Uuid::from_u128(5),
                segments: 100,
                reserved_segments: 5,
            }],
        }
    }

    #[test]
    fn superblock_round_trip_and_validation() {
        let s = sb();
        assert_eq!(Superblock::decode(&s.encode(), "A").unwrap(), s);
        let mut bad = sb();
        bad.directory_head = 5000;
        let e = Superblock::decode(&bad.encode(), "A").unwrap_err();
        assert!(e.to_string().contains("directory_head"), "{e}");
        let mut torn = sb().encode();
        torn[2000] = 1;
        assert!(matches!(
            Superblock::decode(&torn, "B"),
            Err(MetaError::Checksum { .. })
        ));
    }

    #[test]
    fn pages_round_trip_and_detect_damage() {
        let f = Arc::new(Fill::new(1, 0));
        f.set_range(3, 9);
        let exts = vec![
            Extent::run(0, 10, 100, 2),
            Extent {
                vseg: 20,
                len: 1,
                state: ExtentState::Mapped,
                birth: 3,
                layers: smallvec::smallvec![
                    Layer {
                        seg: 7,
                        fill: Some(f)
                    },
                    Layer::full(8)
                ],
            },
        ];
        let b = encode_leaf(5, 1, &pool(), &exts);
        let raw = decode_leaf(&b, 5, &pool(), 1000).unwrap();
        assert_eq!(raw.len(), 2);
        assert_eq!(raw[1].layers[0].1.unwrap()[0], 0b1111_1111_1000);
        let back = raw[1].build(|seg, w| Arc::new(Fill::from_words(w, 0, seg)));
        assert!(back.layers[0].fill.as_ref().unwrap().test(3));
        // Misdirected, foreign, wrong kind, checksum, out-of-range segment.
        assert!(matches!(
            decode_leaf(&b, 6, &pool(), 1000),
            Err(MetaError::Misdirected { page: 6, found: 5 })
        ));
        assert!(matches!(
            decode_leaf(&b, 5, &Uuid::nil(), 1000),
            Err(MetaError::ForeignPage { .. })
        ));
        assert!(matches!(
            decode_internal(&b, 5, &pool(), 1000),
            Err(MetaError::Kind { .. })
        ));
        let e = decode_leaf(&b, 5, &pool(), 50).unwrap_err();
        assert!(e.to_string().contains("beyond 50"), "{e}");
        let mut c = b.clone();
        c[300] ^= 0x40;
        assert!(matches!(
            decode_leaf(&c, 5, &pool(), 1000),
            Err(MetaError::Checksum { .. })
        ));
        let i = encode_internal(9, 1, &pool(), &[(0, 10), (50, 11)]);
        assert_eq!(
            decode_internal(&i, 9, &pool(), 1000).unwrap(),
            vec![(0, 10), (50, 11)]
        );
        assert!(
            decode_internal(&i, 9, &pool(), 11).is_err(),
            "child beyond the metadata area"
        );
    }

    #[test]
    fn directory_and_space_map_round_trip() {
        let d = DiskRecord {
            id: 1,
            uuid: Uuid::from_u128(99),
            name: "vd0".into(),
            size_blocks: 1 << 21,
            kind: DiskKind::Clone,
            read_only: false,
            thin: true,
            parent: 4,
            snap_gen: 3,
            created_gen: 3,
            root_page: 12,
            cow_policy: 1,
            job: JobRecord::Split { cursor: 77 },
            created_unix: 1_700_000_000,
        };
        let b = encode_directory(3, 2, &pool(), NO_PAGE, &[d.clone(), d.clone()]);
        let (recs, next) = decode_directory(&b, 3, &pool(), 100).unwrap();
        assert_eq!(recs, vec![d.clone(), d]);
        assert_eq!(next, NO_PAGE);
        let counts: Vec<u32> = (0..SM_COUNTS_PER_PAGE as u32).collect();
        let s = encode_space_map(4, 8, &pool(), 2, &counts);
        assert_eq!(decode_space_map(&s, 4, &pool(), 2).unwrap(), (8, counts));
        assert!(decode_space_map(&s, 4, &pool(), 3).is_err());
    }

    #[test]
    fn decoders_never_panic_on_garbage() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut b = encode_leaf(5, 1, &pool(), &[Extent::full(0, 1, 1)]);
        for _ in 0..20_000 {
            let i = rng.usize(0..PAGE_BYTES);
            b[i] = rng.u8(..);
            // Re-seal half the time so the decoder gets past the checksum.
            if rng.bool() {
                seal(&mut b);
            }
            let _ = decode_leaf(&b, 5, &pool(), 1 << 20);
            let _ = decode_internal(&b, 5, &pool(), 1 << 20);
            let _ = decode_directory(&b, 5, &pool(), 1 << 20);
            let _ = decode_space_map(&b, 5, &pool(), 0);
            let _ = Superblock::decode(&b, "A");
            let _ = Label::decode(&b, "x");
        }
    }
}
