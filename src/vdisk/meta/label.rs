//! The label at byte 0 of every bdev of a pool (data containers and a separate
//! metadata bdev): which pool the bdev belongs to and its place in it. Examine looks
//! for it; opening a pool starts from it.

use super::{
    FORMAT_VERSION, MAX_CONTAINERS, MetaError, PAGE_BYTES, Reader, Writer, checksum, read_name,
};
use uuid::Uuid;

pub(super) const LABEL_MAGIC: &[u8; 8] = b"TSRLABEL";

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
