//! The superblock: the root of a pool's durable state, in two slots written alternately
//! by transaction parity (open takes the valid one with the higher transaction).

use super::{
    FORMAT_VERSION, MAX_CONTAINERS, MetaError, NO_PAGE, PAGE_BYTES, Reader, Writer, checksum,
    read_name,
};
use uuid::Uuid;

const SUPER_MAGIC: &[u8; 8] = b"TSRSUPER";

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
