//! A virtual disk as a bdev: its channel on each core is the disk's mapping agent there.

use super::agent::{Agent, AgentChannel};
use super::meta::{DiskKind, DiskRecord};
use super::pool::{Pool, PoolShared};
use crate::bdev::{Bdev, BdevChannel, BdevError, BdevProps, IoKind};
use crossbeam_utils::CachePadded;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// A virtual disk (SPDK: a logical volume).
pub struct VDisk {
    props: BdevProps,
    shared: Arc<PoolShared>,
    id: u64,
    kind: AtomicU8,
    thin: bool,
    /// Requests completed, per core (each core writes only its own slot).
    io_counts: Box<[CachePadded<AtomicU64>]>,
}

impl VDisk {
    pub(crate) fn new(shared: &Arc<PoolShared>, rec: &DiskRecord) -> Result<Arc<VDisk>, BdevError> {
        let props = BdevProps::new(
            &rec.name,
            Some(rec.uuid),
            shared.geo.block_size,
            rec.size_blocks,
            "Logical Volume",
        )?
        .with_write_cache(true)
        .with_read_only(rec.read_only);
        Ok(Arc::new(VDisk {
            props,
            shared: shared.clone(),
            id: rec.id,
            kind: AtomicU8::new(rec.kind as u8),
            thin: rec.thin,
            io_counts: (0..shared.cores.len().max(1))
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }))
    }

    /// The pool the disk lives in.
    pub fn pool(&self) -> Pool {
        Pool {
            shared: self.shared.clone(),
        }
    }

    /// The disk's id within its pool.
    pub fn disk_id(&self) -> u64 {
        self.id
    }

    /// How the disk came to be.
    pub fn kind(&self) -> DiskKind {
        match self.kind.load(Ordering::Relaxed) {
            1 => DiskKind::Snapshot,
            2 => DiskKind::Clone,
            _ => DiskKind::Disk,
        }
    }

    /// Counts a request on `core` (single writer per slot: no atomic RMW): when it is
    /// readdressed to a container, else when it completes.
    #[inline]
    pub(crate) fn count_io(&self, core: usize) {
        if let Some(c) = self.io_counts.get(core) {
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Requests served so far, all cores (see [`VDisk::count_io`]).
    pub fn io_count(&self) -> u64 {
        self.io_counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn set_kind(&self, k: DiskKind) {
        self.kind.store(k as u8, Ordering::Relaxed);
    }

    pub(crate) fn set_size_blocks(&self, n: u64) {
        self.props.set_num_blocks(n);
    }

    pub(crate) fn set_read_only(&self, ro: bool) {
        self.props.set_read_only(ro);
    }
}

impl Bdev for VDisk {
    fn props(&self) -> &BdevProps {
        &self.props
    }

    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let agent = Agent::create(self.shared.clone(), self)?;
        Ok(Rc::new(AgentChannel(agent)))
    }

    fn supports(&self, _kind: IoKind) -> bool {
        true
    }

    fn unmap_reads_zeroes(&self) -> bool {
        true
    }

    fn driver_specific(&self) -> serde_json::Value {
        let kind = self.kind();
        serde_json::json!({"lvol": {
            "lvol_store_uuid": self.shared.uuid.to_string(),
            "lvol_store_name": self.shared.name,
            "base_bdev": self.shared.containers[0].bdev.name(),
            "thin_provision": self.thin,
            "snapshot": kind == DiskKind::Snapshot,
            "clone": kind == DiskKind::Clone,
            "num_allocated_clusters": serde_json::Value::Null,
        }})
    }
}
