//! The superblock: the root of a pool's durable state, in two slots written alternately
//! by transaction parity — even transactions in slot A, odd ones in slot B; open takes
//! the valid one with the higher transaction ([`pick`]).

use super::space_map::{SM_COUNTS_PER_PAGE, SM_PTRS_PER_PAGE};
use super::{
    BlockPtr, FORMAT_VERSION, MAX_CONTAINERS, MetaError, PAGE_BYTES, Reader, SUPERBLOCK_OFFSET,
    Writer, checksum, read_name,
};
use uuid::Uuid;

pub(super) const SUPER_MAGIC: &[u8; 8] = b"TSRSUPER";

/// Most space-map index pages a superblock points at: with 1 MiB segments, a pool of
/// up to `MAX_SM_INDEX_PAGES × SM_PTRS_PER_PAGE × SM_COUNTS_PER_PAGE` segments (24 TiB;
/// larger segments, larger pools).
pub const MAX_SM_INDEX_PAGES: u64 = 128;

/// Most segments a pool may have (what the space-map index can address).
pub const MAX_SEGMENTS: u64 =
    MAX_SM_INDEX_PAGES * SM_PTRS_PER_PAGE as u64 * SM_COUNTS_PER_PAGE as u64;

/// The most segments a pool with `sm_pages` space-map pages (per copy) may count: what
/// it can grow to (`bdev_lvol_grow_lvstore`) without moving its metadata area.
pub fn max_segments_for(sm_pages: u64) -> u64 {
    sm_pages
        .saturating_mul(SM_COUNTS_PER_PAGE as u64)
        .min(MAX_SEGMENTS)
}

/// Where metadata pages may start: after the label and both superblock slots.
const MIN_META_FIRST_BYTE: u64 = SUPERBLOCK_OFFSET + 2 * PAGE_BYTES as u64;

/// The superblock version of a pool with an intent log (its pages and label keep
/// [`FORMAT_VERSION`]); a superblock without one is written as [`FORMAT_VERSION`].
pub const LOG_SUPERBLOCK_VERSION: u32 = 3;

/// The superblock version of a pool whose intent log has a mirror: a second ring of as
/// many pages, written with the first, so that damage to the page an append wrote last
/// is repaired from its copy instead of ending the log there unseen (`meta/log.rs`).
pub const MIRRORED_LOG_SUPERBLOCK_VERSION: u32 = 4;

/// The superblock version of a pool whose intent log may hold packed records (splices
/// and fills in the encoding of packed leaves, `meta/log.rs`), with or without a mirror
/// (the mirror's place [`NO_MIRROR`] when it has none). A build that reads only
/// versions up to 4 refuses it, instead of ending the log at the first packed record
/// and losing what follows unseen.
pub const PACKED_LOG_SUPERBLOCK_VERSION: u32 = 5;

/// The mirror's place in a version-5 superblock of a log without one.
const NO_MIRROR: u64 = u64::MAX;

/// Fewest pages of a log.
pub const MIN_LOG_PAGES: u64 = 4;

/// Where a pool's intent log lies and where its replay starts (`meta/log.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogArea {
    /// The ring: metadata pages `[first_page, first_page + pages)` of the node area.
    pub first_page: u64,
    pub pages: u64,
    /// The mirror ring's first page, if the log has one: pages `[m, m + pages)`, the
    /// page of sequence number s at `m + s % pages`, holding what the first ring's does.
    pub mirror: Option<u64>,
    /// The page sequence number replay starts at.
    pub replay_seq: u64,
    /// Records below this LSN are in the tables this superblock points at.
    pub replay_lsn: u64,
    /// The log may hold packed records (superblock version 5). Appends write them only
    /// once a superblock saying so is durable (`vdisk/load.rs`).
    pub packed: bool,
}

impl LogArea {
    /// True if metadata page `page` lies in the log or its mirror.
    pub fn holds(&self, page: u64) -> bool {
        let ring = |first: u64| (first..first + self.pages).contains(&page);
        ring(self.first_page) || self.mirror.is_some_and(ring)
    }

    /// `pages` (places in the log, and their contents) and, if the log has a mirror,
    /// each one's copy in the mirror.
    pub fn with_mirror_copies(&self, mut pages: Vec<(u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
        if let Some(m) = self.mirror {
            let copies: Vec<(u64, Vec<u8>)> = pages
                .iter()
                .map(|(place, b)| {
                    let at = m + (place - self.first_page);
                    (at, super::relocated(b, at))
                })
                .collect();
            pages.extend(copies);
        }
        pages
    }

    /// Every page of the log and its mirror.
    pub fn all_pages(&self) -> impl Iterator<Item = u64> + use<> {
        let (first, n) = (self.first_page, self.pages);
        let mirror = self.mirror.map(|m| m..m + n).into_iter().flatten();
        (first..first + n).chain(mirror)
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
    /// Pages per space-map index copy.
    pub sm_index_pages: u64,
    /// The first directory page, or [`BlockPtr::NONE`].
    pub directory: BlockPtr,
    /// Default copy-on-write policy (0 redirect, 1 copy-out).
    pub cow_policy: u8,
    /// True if a metadata bdev separate from the containers holds the metadata.
    pub separate_metadata: bool,
    pub metadata_uuid: Uuid,
    pub containers: Vec<ContainerRecord>,
    /// The space-map index pages in force, one per `sm_index_pages`.
    pub sm_index: Vec<BlockPtr>,
    /// The intent log, if the pool has one (superblock version
    /// [`LOG_SUPERBLOCK_VERSION`]).
    pub log: Option<LogArea>,
}

impl Superblock {
    /// Segments of all containers.
    pub fn total_segments(&self) -> u64 {
        self.containers.iter().map(|c| c.segments).sum()
    }

    /// The first page of the node area (table nodes and directory pages).
    pub fn node_first_page(&self) -> u64 {
        2 * (self.sm_pages + self.sm_index_pages)
    }

    /// True if `page` lies in the node area (and not in the log or its mirror).
    pub fn in_node_area(&self, page: u64) -> bool {
        (self.node_first_page()..self.meta_pages).contains(&page)
            && !self.log.is_some_and(|l| l.holds(page))
    }

    /// The two places of space-map page `i`.
    pub fn sm_places(&self, i: u64) -> [u64; 2] {
        [i, self.sm_pages + i]
    }

    /// The two places of space-map index page `j`.
    pub fn sm_index_places(&self, j: u64) -> [u64; 2] {
        let base = 2 * self.sm_pages;
        [base + j, base + self.sm_index_pages + j]
    }

    /// The byte just past the metadata pages on the metadata device.
    pub fn meta_end_byte(&self) -> u64 {
        self.meta_first_byte
            .saturating_add(self.meta_pages.saturating_mul(PAGE_BYTES as u64))
    }

    /// Encodes into one 4 KiB block.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_BYTES];
        let mut w = Writer::new(&mut b, 0);
        w.bytes(SUPER_MAGIC);
        w.u32(match &self.log {
            Some(l) if l.packed => PACKED_LOG_SUPERBLOCK_VERSION,
            Some(l) if l.mirror.is_some() => MIRRORED_LOG_SUPERBLOCK_VERSION,
            Some(_) => LOG_SUPERBLOCK_VERSION,
            None => FORMAT_VERSION,
        });
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
        w.u64(self.sm_index_pages);
        self.directory.write(&mut w);
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
        w.u32(self.sm_index.len() as u32);
        for p in &self.sm_index {
            p.write(&mut w);
        }
        if let Some(l) = &self.log {
            w.u64(l.first_page);
            w.u64(l.pages);
            w.u64(l.replay_seq);
            w.u64(l.replay_lsn);
            match (l.packed, l.mirror) {
                (true, m) => w.u64(m.unwrap_or(NO_MIRROR)),
                (false, Some(m)) => w.u64(m),
                (false, None) => {}
            }
        }
        let crc = checksum(&b, 12);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes one superblock slot (`slot` is "A" or "B") and validates every field
    /// ([`Superblock::read`], then [`Superblock::validate`]).
    pub fn decode(b: &[u8], slot: &str) -> Result<Superblock, MetaError> {
        let sb = Superblock::read(b, slot)?;
        sb.validate(slot)?;
        Ok(sb)
    }

    /// Decodes one slot: magic, checksum, version and the fields, with every count
    /// bounded by the block; does not judge the values ([`Superblock::validate`]).
    pub fn read(b: &[u8], slot: &str) -> Result<Superblock, MetaError> {
        let what = format!("superblock slot {slot}");
        if b.len() < PAGE_BYTES || &b[..8] != SUPER_MAGIC {
            return Err(MetaError::NoLabel { what });
        }
        let b = &b[..PAGE_BYTES];
        let bad = |field, reason: String| MetaError::Superblock {
            what: what.clone(),
            field,
            reason,
        };
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
        if ![
            FORMAT_VERSION,
            LOG_SUPERBLOCK_VERSION,
            MIRRORED_LOG_SUPERBLOCK_VERSION,
            PACKED_LOG_SUPERBLOCK_VERSION,
        ]
        .contains(&version)
        {
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
        let sm_index_pages = r.u64().ok_or_else(|| bad("sm_index_pages", t()))?;
        let directory = BlockPtr::read(&mut r).ok_or_else(|| bad("directory", t()))?;
        let cow_policy = r.u8().ok_or_else(|| bad("cow_policy", t()))?;
        let separate_metadata = r.u8().ok_or_else(|| bad("separate_metadata", t()))?;
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
        let n = r.u32().ok_or_else(|| bad("sm_index", t()))? as u64;
        if n > MAX_SM_INDEX_PAGES {
            return Err(bad(
                "sm_index",
                format!("{n} space-map index pointers; at most {MAX_SM_INDEX_PAGES} fit"),
            ));
        }
        let mut sm_index = Vec::with_capacity(n as usize);
        for _ in 0..n {
            sm_index.push(BlockPtr::read(&mut r).ok_or_else(|| bad("sm_index", t()))?);
        }
        if separate_metadata > 1 {
            return Err(bad(
                "separate_metadata",
                format!("{separate_metadata} is not a flag"),
            ));
        }
        let log = if version == FORMAT_VERSION {
            None
        } else {
            let mut l = LogArea {
                first_page: r.u64().ok_or_else(|| bad("log", t()))?,
                pages: r.u64().ok_or_else(|| bad("log", t()))?,
                mirror: None,
                replay_seq: r.u64().ok_or_else(|| bad("log", t()))?,
                replay_lsn: r.u64().ok_or_else(|| bad("log", t()))?,
                packed: version == PACKED_LOG_SUPERBLOCK_VERSION,
            };
            if version >= MIRRORED_LOG_SUPERBLOCK_VERSION {
                let m = r.u64().ok_or_else(|| bad("log_mirror", t()))?;
                l.mirror =
                    (version == MIRRORED_LOG_SUPERBLOCK_VERSION || m != NO_MIRROR).then_some(m);
            }
            Some(l)
        };
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
            sm_index_pages,
            directory,
            cow_policy,
            separate_metadata: separate_metadata == 1,
            metadata_uuid,
            containers,
            sm_index,
            log,
        })
    }

    /// Checks every field against the others: geometry, the metadata area and its
    /// parts, container records, the pointers. What needs the devices (their sizes, their
    /// labels) is checked by the loader and the checker.
    pub fn validate(&self, slot: &str) -> Result<(), MetaError> {
        let bad = |field, reason: String| {
            Err(MetaError::Superblock {
                what: format!("superblock slot {slot}"),
                field,
                reason,
            })
        };
        let seg = self.segment_bytes;
        if !seg.is_power_of_two() || !(64 << 10..=64 << 20).contains(&seg) {
            return bad(
                "segment_bytes",
                format!("{seg} is not a power of two in 64 KiB..=64 MiB"),
            );
        }
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(512..=4096).contains(&bs) {
            return bad(
                "block_size",
                format!("{bs} is not a power of two in 512..=4096"),
            );
        }
        if self.txn == 0 || self.txn == u64::MAX {
            return bad("txn", format!("{} is not a transaction", self.txn));
        }
        if self.generation == 0 || self.generation > crate::vdisk::map::MAX_GENERATION + 1 {
            return bad(
                "generation",
                format!("{} is not a generation", self.generation),
            );
        }
        if self.next_disk_id == 0 || self.next_disk_id == u64::MAX {
            return bad(
                "next_disk_id",
                format!("{} is not a disk id", self.next_disk_id),
            );
        }
        if self.cow_policy > 1 {
            return bad("cow_policy", format!("unknown policy {}", self.cow_policy));
        }
        if self.pool_name.is_empty() {
            return bad("pool_name", "empty".into());
        }
        // Containers and the segment space.
        let mut total = 0u64;
        for (i, c) in self.containers.iter().enumerate() {
            if c.reserved_segments == 0 || c.reserved_segments >= c.segments {
                return bad(
                    "containers",
                    format!(
                        "container {i}: {} reserved of {} segments (a container reserves \
                         at least its label's segment and holds at least one data segment)",
                        c.reserved_segments, c.segments
                    ),
                );
            }
            total = match total.checked_add(c.segments) {
                Some(t) if t <= MAX_SEGMENTS => t,
                _ => {
                    return bad(
                        "containers",
                        format!("more than the {MAX_SEGMENTS} segments a pool may have"),
                    );
                }
            };
        }
        let sm_want = total.div_ceil(SM_COUNTS_PER_PAGE as u64);
        if self.sm_pages != sm_want {
            return bad(
                "sm_pages",
                format!(
                    "{} space-map pages for {total} segments (needs {sm_want})",
                    self.sm_pages
                ),
            );
        }
        let smi_want = sm_want.div_ceil(SM_PTRS_PER_PAGE as u64);
        if self.sm_index_pages != smi_want || self.sm_index.len() as u64 != smi_want {
            return bad(
                "sm_index_pages",
                format!(
                    "{} space-map index pages ({} pointers) for {sm_want} space-map pages \
                     (needs {smi_want})",
                    self.sm_index_pages,
                    self.sm_index.len()
                ),
            );
        }
        // The metadata area.
        if self.meta_first_byte < MIN_META_FIRST_BYTE
            || !self.meta_first_byte.is_multiple_of(PAGE_BYTES as u64)
        {
            return bad(
                "meta_first_byte",
                format!(
                    "{} is not a 4 KiB-aligned offset past the superblocks",
                    self.meta_first_byte
                ),
            );
        }
        let end = self
            .meta_pages
            .checked_mul(PAGE_BYTES as u64)
            .and_then(|b| b.checked_add(self.meta_first_byte));
        if end.is_none() || self.meta_pages <= self.node_first_page() {
            return bad(
                "meta_pages",
                format!(
                    "{} metadata pages leave no node area after the {} of the space map \
                     and its index",
                    self.meta_pages,
                    self.node_first_page()
                ),
            );
        }
        let c0 = &self.containers[0];
        if !self.separate_metadata
            && self.meta_end_byte() > c0.reserved_segments.saturating_mul(seg)
        {
            return bad(
                "meta_pages",
                format!(
                    "the metadata area ends at byte {}, past container 0's {} reserved \
                     segments",
                    self.meta_end_byte(),
                    c0.reserved_segments
                ),
            );
        }
        if let Some(l) = &self.log {
            let end = l.first_page.checked_add(l.pages);
            if l.pages < MIN_LOG_PAGES
                || l.first_page < self.node_first_page()
                || end.is_none_or(|e| e > self.meta_pages)
            {
                return bad(
                    "log",
                    format!(
                        "{} log pages from page {} do not lie in the node area [{}, {}) \
                         (a log has at least {MIN_LOG_PAGES})",
                        l.pages,
                        l.first_page,
                        self.node_first_page(),
                        self.meta_pages
                    ),
                );
            }
            if let Some(m) = l.mirror {
                let end = m.checked_add(l.pages);
                if m < self.node_first_page()
                    || end.is_none_or(|e| e > self.meta_pages)
                    || (m < l.first_page + l.pages && l.first_page < m + l.pages)
                {
                    return bad(
                        "log_mirror",
                        format!(
                            "the mirror's {} pages from page {} do not lie in the node area \
                             [{}, {}) apart from the log's (from page {})",
                            l.pages,
                            m,
                            self.node_first_page(),
                            self.meta_pages,
                            l.first_page
                        ),
                    );
                }
            }
            if l.replay_lsn == 0 || l.replay_seq >= u64::MAX / 2 {
                return bad(
                    "log",
                    format!(
                        "replay from page sequence {} and record {} is not a log position",
                        l.replay_seq, l.replay_lsn
                    ),
                );
            }
        }
        // Pointers.
        let d = &self.directory;
        if !d.is_none() && (!self.in_node_area(d.page) || d.txn == 0 || d.txn > self.txn) {
            return bad(
                "directory",
                format!(
                    "pointer to page {} of transaction {} (node area [{}, {}), \
                     transaction at most {})",
                    d.page,
                    d.txn,
                    self.node_first_page(),
                    self.meta_pages,
                    self.txn
                ),
            );
        }
        for (j, p) in self.sm_index.iter().enumerate() {
            if !self.sm_index_places(j as u64).contains(&p.page) || p.txn == 0 || p.txn > self.txn {
                return bad(
                    "sm_index",
                    format!(
                        "pointer {j} to page {} of transaction {} (expected page {:?}, \
                         transaction at most {})",
                        p.page,
                        p.txn,
                        self.sm_index_places(j as u64),
                        self.txn
                    ),
                );
            }
        }
        Ok(())
    }
}

/// The superblock in force, as [`pick`] chose it.
#[derive(Debug)]
pub struct Picked {
    pub sb: Superblock,
    /// "A" or "B".
    pub slot: &'static str,
    /// What was wrong with the other slot, if anything (a torn or older slot is normal
    /// after a crash): observations, not errors.
    pub notes: Vec<String>,
    /// Problems of the other slot that a crash does not explain (a checksum-valid
    /// superblock with bad fields).
    pub other_invalid: Option<MetaError>,
}

/// Chooses the superblock in force from the two slots' blocks (`a` at byte 4096, `b` at
/// 8192) of a pool whose labels say `pool`: the slot with the higher transaction among
/// those that are intact (magic, checksum, version), in their place (even transactions
/// in A, odd in B: a superblock elsewhere is a misdirected write) and of this pool.
/// A torn or misplaced slot falls back to the other one; a slot that is intact but
/// whose fields are wrong is an error when it is the newer one (it is not a torn
/// write: open refuses rather than go back a transaction).
pub fn pick(a: &[u8], b: &[u8], pool: Option<Uuid>) -> Result<Picked, MetaError> {
    let intact = |bytes: &[u8], slot: &'static str, parity: u64| {
        let sb = Superblock::read(bytes, slot)?;
        if sb.txn % 2 != parity {
            return Err(MetaError::Superblock {
                what: format!("superblock slot {slot}"),
                field: "txn",
                reason: format!(
                    "transaction {} belongs in slot {} (a misdirected write)",
                    sb.txn,
                    if parity == 0 { "B" } else { "A" }
                ),
            });
        }
        if let Some(p) = pool
            && sb.pool_uuid != p
        {
            return Err(MetaError::Superblock {
                what: format!("superblock slot {slot}"),
                field: "pool_uuid",
                reason: format!(
                    "belongs to pool {}, not to the labels' pool {p}",
                    sb.pool_uuid
                ),
            });
        }
        Ok(sb)
    };
    let ra = intact(a, "A", 0);
    let rb = intact(b, "B", 1);
    let (newer, older) = match (ra, rb) {
        (Ok(x), Ok(y)) => {
            if x.txn >= y.txn {
                ((x, "A"), Ok((y, "B")))
            } else {
                ((y, "B"), Ok((x, "A")))
            }
        }
        (Ok(x), Err(e)) => ((x, "A"), Err(e)),
        (Err(e), Ok(y)) => ((y, "B"), Err(e)),
        (Err(ea), Err(eb)) => {
            return Err(MetaError::NoSuperblock {
                a: ea.to_string(),
                b: eb.to_string(),
            });
        }
    };
    let (sb, slot) = newer;
    sb.validate(slot)?;
    let mut notes = Vec::new();
    let mut other_invalid = None;
    match older {
        Ok((o, oslot)) => {
            if let Err(e) = o.validate(oslot) {
                other_invalid = Some(e);
            } else if o.txn + 1 != sb.txn {
                notes.push(format!(
                    "superblock slots hold transactions {} and {}",
                    sb.txn, o.txn
                ));
            }
        }
        // A never-written slot (a fresh pool's slot A) is no news.
        Err(MetaError::NoLabel { .. })
            if if slot == "A" { b } else { a }[..PAGE_BYTES.min(a.len().min(b.len()))]
                .iter()
                .all(|&x| x == 0) => {}
        Err(e) => notes.push(format!("{e} (slot {slot} is used)")),
    }
    Ok(Picked {
        sb,
        slot,
        notes,
        other_invalid,
    })
}
