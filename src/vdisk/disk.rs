//! A virtual disk as a bdev: its channel on each core is the disk's mapping agent there.

use super::agent::{Agent, AgentChannel, IoCounts};
use super::maybe_mapped::MaybeMapped;
use super::meta::directory::DiskRecord;
use super::shared::PoolShared;
use crate::bdev::{Bdev, BdevChannel, BdevError, BdevProps, IoKind};
use std::rc::Rc;
use std::sync::Arc;

/// A virtual disk (SPDK: a logical volume). As a bdev it is named by its UUID, as SPDK
/// names lvol bdevs, with the alias `pool/disk`; its name within the pool may change
/// (a rename), the bdev's name does not.
pub struct VDisk {
    props: BdevProps,
    /// The disk's name within its pool (the directory's).
    disk_name: std::sync::Mutex<String>,
    pub(crate) shared: Arc<PoolShared>,
    id: u64,
    thin: bool,
    /// Requests completed, per core (the disk's agents count them).
    io_counts: Arc<IoCounts>,
    /// Which virtual segments may hold an extent (`maybe_mapped.rs`), for the agents.
    pub(crate) maybe_mapped: Arc<MaybeMapped>,
}

impl VDisk {
    pub(crate) fn new(shared: &Arc<PoolShared>, rec: &DiskRecord) -> Result<Arc<VDisk>, BdevError> {
        let props = BdevProps::new(
            &rec.uuid.to_string(),
            Some(rec.uuid),
            shared.geo.block_size,
            rec.size_blocks,
            "Logical Volume",
        )?
        .with_write_cache(true)
        .with_read_only(rec.read_only);
        Ok(Arc::new(VDisk {
            props,
            disk_name: std::sync::Mutex::new(rec.name.clone()),
            shared: shared.clone(),
            id: rec.id,
            thin: rec.thin,
            io_counts: Arc::new(IoCounts::new(shared.cores.len())),
            maybe_mapped: Arc::new(MaybeMapped::new(
                rec.size_blocks.div_ceil(shared.geo.segment_blocks),
            )),
        }))
    }

    /// The disk's name within its pool.
    pub fn disk_name(&self) -> String {
        self.disk_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `pool/disk`: SPDK's alias of an lvol bdev.
    pub fn alias(&self) -> String {
        format!("{}/{}", self.shared.name, self.disk_name())
    }

    pub(crate) fn set_disk_name(&self, name: &str) {
        *self.disk_name.lock().unwrap_or_else(|p| p.into_inner()) = name.to_string();
    }

    /// The disk's id within its pool.
    pub fn disk_id(&self) -> u64 {
        self.id
    }

    /// Requests served so far, all cores: counted when a request is readdressed to a
    /// container, else when it completes.
    pub fn io_count(&self) -> u64 {
        self.io_counts.total()
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

    fn into_any(self: Arc<Self>) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        Some(self)
    }

    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let (shared, id, counts) = (self.shared.clone(), self.id, self.io_counts.clone());
        let maybe_mapped = self.maybe_mapped.clone();
        let agent = Agent::create(shared, self, id, counts, maybe_mapped)?;
        Ok(Rc::new(AgentChannel(agent)))
    }

    fn supports(&self, _kind: IoKind) -> bool {
        true
    }

    fn unmap_reads_zeroes(&self) -> bool {
        true
    }

    /// The disks of one pool can tell which blocks differ between them.
    fn change_family(&self) -> Option<u64> {
        Some(self.shared.id)
    }

    fn aliases(&self) -> Vec<String> {
        vec![self.alias()]
    }

    fn short_names(&self) -> Vec<String> {
        vec![self.disk_name()]
    }

    /// What the disk knows of itself; `bdev_get_bdevs` adds the fields SPDK derives
    /// from the pool's lineage and clusters (`snapshot`, `clone`, `base_snapshot`,
    /// `clones`, `num_allocated_clusters`, …), which only the controller knows.
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({"lvol": {
            "lvol_store_uuid": self.shared.uuid.to_string(),
            "lvol_store_name": self.shared.name.get(),
            "base_bdev": self.shared.containers[0].bdev.name(),
            "thin_provision": self.thin,
        }})
    }
}
