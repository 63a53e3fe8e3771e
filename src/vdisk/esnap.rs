//! External snapshots (SPDK's esnap): a disk whose blocks that no layer of its table
//! holds read from a bdev outside the pool — a golden image on a file, a remote NVMe
//! namespace — instead of as zeros. That bdev is only ever read.
//!
//! - `bdev_lvol_clone_bdev` makes a thin disk of the external bdev's size whose
//!   [`ExternalBase`] names it (by UUID, and by name for the operator); writes
//!   copy-on-write as for any clone (a partial granule is first filled from the external
//!   bdev, `cow.rs`), reads of what it never wrote go to the external bdev (the agent).
//! - Snapshots of such a disk, and their clones, keep the external base: what none of
//!   their layers holds is the external bdev's.
//! - `bdev_lvol_set_parent_bdev` gives a writable disk an external base in place of
//!   what it read below its own layers (zeros, another external bdev, or its parent
//!   snapshots): `reparent.rs`, as `bdev_lvol_set_parent`.
//! - The record names the external bdev by UUID. At open, and whenever a bdev appears
//!   in the target, the target hands the pool the bdevs whose UUIDs its disks name
//!   ([`Controller::attach_external`]); until then those disks are *degraded*: reads
//!   that reach the missing bdev fail (media error), as SPDK's degraded esnap clones'
//!   do, and they become usable as soon as it appears.
//!
//! Control path: runs on the controller core.

use super::VdiskError;
use super::controller::Controller;
use super::disk::VDisk;
use super::meta::directory::{EXTERNAL_NAME_WIDTH, ExternalBase};
use super::msg::Below;
use crate::bdev::{Bdev, Channel, IoBuf, IoStatus};
use std::sync::Arc;

/// Why an external bdev cannot back disks of this pool, or `None`.
pub(crate) fn unfit_external(
    ext: &Arc<dyn Bdev>,
    block_size: u32,
    segment_bytes: u64,
) -> Option<String> {
    let ebs = ext.block_size();
    if ebs > block_size || !block_size.is_multiple_of(ebs) {
        return Some(format!(
            "bdev `{}` has {ebs}-byte blocks; the lvstore's block size {block_size} must be a multiple of it",
            ext.name()
        ));
    }
    let bytes = ext.num_blocks() * ebs as u64;
    if bytes == 0 || !bytes.is_multiple_of(segment_bytes) {
        return Some(format!(
            "bdev `{}` holds {bytes} bytes, not a positive multiple of the cluster size {segment_bytes}",
            ext.name()
        ));
    }
    if ext.name().len() >= EXTERNAL_NAME_WIDTH {
        return Some(format!(
            "bdev name `{}` is longer than {} bytes",
            ext.name(),
            EXTERNAL_NAME_WIDTH - 1
        ));
    }
    None
}

impl Controller {
    /// What blocks of the disk with record `rec` that no layer holds read as.
    pub(crate) fn below_of(&self, rec: &super::meta::directory::DiskRecord) -> Below {
        match &rec.external {
            None => Below::Zeros,
            Some(x) => match self.externals.borrow().get(&x.uuid) {
                Some(b) => Below::External(b.clone()),
                None => Below::Missing(x.uuid),
            },
        }
    }

    /// The external bdevs disks of the pool name, `(uuid, name)`, each once, and
    /// whether it is present.
    pub(crate) fn external_bases(&self) -> Vec<(uuid::Uuid, String, bool)> {
        let st = self.st.borrow();
        let have = self.externals.borrow();
        let mut out: Vec<(uuid::Uuid, String, bool)> = Vec::new();
        for d in st.disks.values() {
            if let Some(x) = &d.rec.external
                && !out.iter().any(|(u, _, _)| *u == x.uuid)
            {
                out.push((x.uuid, x.name.clone(), have.contains_key(&x.uuid)));
            }
        }
        out
    }

    /// Hands the pool the bdev `ext`: the disks whose external base has its UUID read
    /// through to it from now on (their views are pushed). Returns their names.
    pub(crate) async fn attach_external(&self, ext: Arc<dyn Bdev>) -> Vec<String> {
        let u = ext.uuid();
        let ids: Vec<(u64, String)> = {
            let st = self.st.borrow();
            st.disks
                .values()
                .filter(|d| d.rec.external.as_ref().is_some_and(|x| x.uuid == u))
                .map(|d| (d.rec.id, d.rec.name.clone()))
                .collect()
        };
        if ids.is_empty() {
            return Vec::new();
        }
        let geo = self.shared.geo;
        if let Some(why) = unfit_external(&ext, geo.block_size, geo.segment_bytes()) {
            tracing::error!(pool = %self.shared.name, bdev = ext.name(), reason = %why,
                "external snapshot not usable; its clones stay degraded");
            return Vec::new();
        }
        let fresh = self.externals.borrow_mut().insert(u, ext.clone()).is_none();
        if fresh {
            tracing::info!(pool = %self.shared.name, bdev = ext.name(), %u,
                disks = ids.len(), "external snapshot attached");
        }
        for (id, _) in &ids {
            let _ = self.push_view(*id, false).await;
        }
        ids.into_iter().map(|(_, n)| n).collect()
    }

    /// Creates `name`, a thin clone of the external bdev `ext` (SPDK's
    /// `bdev_lvol_clone_bdev`): its size is the bdev's, and it reads through to it.
    /// `uuid` is kept when given (restoring a saved configuration).
    pub(crate) async fn clone_external(
        &self,
        ext: Arc<dyn Bdev>,
        name: &str,
        uuid: Option<uuid::Uuid>,
    ) -> Result<Arc<VDisk>, VdiskError> {
        let geo = self.shared.geo;
        if let Some(why) = unfit_external(&ext, geo.block_size, geo.segment_bytes()) {
            return Err(VdiskError::InvalidParam {
                field: "bdev",
                reason: why,
            });
        }
        if self
            .st
            .borrow()
            .disks
            .values()
            .any(|d| d.rec.uuid == ext.uuid())
        {
            return Err(VdiskError::InvalidParam {
                field: "bdev",
                reason: format!(
                    "`{}` is an lvol of this lvstore; use bdev_lvol_clone instead",
                    ext.name()
                ),
            });
        }
        let size_bytes = ext.num_blocks() * ext.block_size() as u64;
        let base = ExternalBase {
            uuid: ext.uuid(),
            name: ext.name().to_string(),
        };
        self.externals.borrow_mut().insert(ext.uuid(), ext.clone());
        let d = self
            .create_disk(name, size_bytes, true, uuid, Some(base))
            .await?;
        tracing::info!(pool = %self.shared.name, disk = name, external = ext.name(),
            size_bytes, "external snapshot clone created");
        Ok(d)
    }

    /// Reads blocks `[block, block + n)` (in the pool's block size) of what the disk
    /// with record `rec` shows below its layers: zeros, or the external bdev (zeros past
    /// its end).
    pub(crate) async fn read_below(
        &self,
        below: &Below,
        block: u64,
        n: u64,
    ) -> Result<IoBuf, IoStatus> {
        let bs = self.shared.geo.block_size as u64;
        let mut data = IoBuf::zeroed((n * bs) as usize);
        let ext = match below {
            Below::Zeros => return Ok(data),
            Below::Missing(_) => return Err(IoStatus::MediaError),
            Below::External(b) => b,
        };
        let ebs = ext.block_size() as u64;
        let end_bytes = ext.num_blocks() * ebs;
        let from = block * bs;
        if from >= end_bytes {
            return Ok(data);
        }
        let len = (n * bs).min(end_bytes - from);
        let ch = Channel::get(ext).map_err(|_| IoStatus::InternalError)?;
        let part = ch.read(from / ebs, len / ebs).await?;
        data[..len as usize].copy_from_slice(&part[..len as usize]);
        Ok(data)
    }
}
