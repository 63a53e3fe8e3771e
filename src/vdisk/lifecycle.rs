//! Disk operations on the controller: create, delete, resize, set read-only, and the
//! listings (snapshots and clones are in `snapshot.rs`, split in `split.rs`).

use super::controller::{Controller, DiskCtl, unix_now, validate_name};
use super::disk::VDisk;
use super::map::{Extent, Geometry, MAX_RUN_SEGMENTS};
use super::meta::directory::{DiskKind, DiskRecord, JobRecord};
use super::meta::{MAX_DISK_BLOCKS, MAX_VSEG, NO_PAGE};
use super::msg::AgentCmd;
use super::table;
use super::{CowPolicy, VdiskError};
use crate::bdev::IoStatus;
use serde::Serialize;
use std::sync::Arc;

/// A disk as listings show it.
#[derive(Clone, Debug, Serialize)]
pub struct DiskInfo {
    pub name: String,
    pub uuid: uuid::Uuid,
    pub id: u64,
    pub kind: DiskKind,
    pub size_bytes: u64,
    pub read_only: bool,
    pub thin: bool,
    pub parent: Option<String>,
    pub children: Vec<String>,
    /// Segments only this disk references.
    pub allocated_segments: u64,
    /// Segments this disk shares with other disks.
    pub shared_segments: u64,
    pub segment_bytes: u64,
    pub cow_policy: CowPolicy,
    /// A running split or decouple: (kind, segments done, segments to do).
    pub job: Option<(String, u64, u64)>,
}

/// A disk size given in bytes, as create and resize take it, in blocks: a positive
/// multiple of the block size, and no larger than opening the pool accepts (a directory
/// record holds fewer than [`MAX_DISK_BLOCKS`] blocks; a table maps no virtual segment
/// at or past [`MAX_VSEG`]).
pub(crate) fn disk_size_blocks(geo: &Geometry, size_bytes: u64) -> Result<u64, VdiskError> {
    let bs = geo.block_size as u64;
    if size_bytes == 0 || !size_bytes.is_multiple_of(bs) {
        return Err(VdiskError::InvalidParam {
            field: "size",
            reason: format!("{size_bytes} bytes is not a positive multiple of the block size {bs}"),
        });
    }
    let blocks = size_bytes / bs;
    let largest = (MAX_DISK_BLOCKS - 1).min(MAX_VSEG.saturating_mul(geo.segment_blocks));
    if blocks > largest {
        return Err(VdiskError::InvalidParam {
            field: "size",
            reason: format!(
                "{size_bytes} bytes is larger than the largest disk, {} bytes ({largest} blocks of {bs} bytes)",
                largest * bs
            ),
        });
    }
    Ok(blocks)
}

impl Controller {
    /// Creates a disk. `uuid` is kept when given (restoring a saved configuration).
    pub(crate) async fn create_disk(
        &self,
        name: &str,
        size_bytes: u64,
        thin: bool,
        uuid: Option<uuid::Uuid>,
    ) -> Result<Arc<VDisk>, VdiskError> {
        self.check_usable()?;
        validate_name(name)?;
        let geo = self.shared.geo;
        let size_blocks = disk_size_blocks(&geo, size_bytes)?;
        let nsegs = size_blocks.div_ceil(geo.segment_blocks);
        let (id, generation, cow) = {
            let mut st = self.st.borrow_mut();
            if st.disk_by_name(name).is_some() {
                return Err(VdiskError::Exists(name.to_string()));
            }
            if !thin && st.space.free_segments() < nsegs {
                return Err(VdiskError::NoSpace {
                    need: nsegs,
                    free: st.space.free_segments(),
                });
            }
            let id = st.next_disk_id;
            st.next_disk_id += 1;
            (id, st.generation, self.shared.cow_default)
        };
        // Fully allocated: contiguous runs, zeroed before anyone can read them.
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        let release = |runs: &[(u64, u64, u64)]| {
            let mut st = self.st.borrow_mut();
            for &(_, s, n) in runs {
                for i in 0..n {
                    st.space.unalloc_segment(s + i);
                }
            }
        };
        if !thin {
            let mut v = 0;
            while v < nsegs {
                let got = self
                    .st
                    .borrow_mut()
                    .space
                    .alloc_run((nsegs - v).min(MAX_RUN_SEGMENTS as u64));
                let Some((seg, n)) = got else {
                    release(&runs);
                    return Err(VdiskError::NoSpace {
                        need: nsegs,
                        free: self.st.borrow().space.free_segments(),
                    });
                };
                runs.push((v, seg, n));
                v += n;
            }
            for &(_, seg, n) in &runs {
                if let Err(e) = self.zero_segments(seg, n).await {
                    release(&runs);
                    return Err(VdiskError::Io {
                        what: "zeroing the new disk's segments".into(),
                        status: e,
                    });
                }
            }
            // The name may have been taken, or the pool stopped, while we zeroed.
            let taken = self.st.borrow().disk_by_name(name).is_some();
            if let Err(e) = self.check_usable() {
                release(&runs);
                return Err(e);
            }
            if taken {
                release(&runs);
                return Err(VdiskError::Exists(name.to_string()));
            }
        }
        let rec = DiskRecord {
            id,
            uuid: uuid.unwrap_or_else(uuid::Uuid::new_v4),
            name: name.to_string(),
            size_blocks,
            kind: DiskKind::Disk,
            read_only: false,
            thin,
            parent: 0,
            snap_gen: 0,
            created_gen: generation,
            root_page: NO_PAGE,
            cow_policy: cow as u8,
            job: JobRecord::None,
            created_unix: unix_now(),
        };
        let bdev = match VDisk::new(&self.shared, &rec) {
            Ok(b) => b,
            Err(e) => {
                release(&runs);
                return Err(VdiskError::Bdev(e));
            }
        };
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let mut root = None;
            if !runs.is_empty() {
                let exts: Vec<Extent> = runs
                    .iter()
                    .map(|&(v, s, n)| Extent::run(v, n as u32, s, generation))
                    .collect();
                let new = table::splice(None, 0, nsegs, &exts, &mut st.space);
                table::set_root(&mut root, new, &mut st.space);
            }
            st.disks.insert(id, DiskCtl::new(rec, root, bdev.clone()));
            st.changed();
        }
        self.update_free();
        tracing::info!(pool = %self.shared.name, disk = name, size_bytes, thin, "disk created");
        Ok(bdev)
    }

    pub(crate) fn disk_bdev(&self, name: &str) -> Result<Arc<VDisk>, VdiskError> {
        let st = self.st.borrow();
        st.disk_by_name(name)
            .and_then(|id| st.disks.get(&id))
            .map(|d| d.bdev.clone())
            .ok_or_else(|| VdiskError::NotFound(name.to_string()))
    }

    pub(crate) fn disk_bdevs(&self) -> Vec<Arc<VDisk>> {
        self.st
            .borrow()
            .disks
            .values()
            .map(|d| d.bdev.clone())
            .collect()
    }

    /// Deletes a disk, snapshot or clone. Its children are re-parented to its parent;
    /// they keep every segment they share with it (reference counts).
    pub(crate) async fn delete_disk(&self, name: &str) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        {
            let st = self.st.borrow();
            // A running job on this disk, or one that reads from it.
            for d in st.disks.values() {
                if d.job_cancel.is_some() && (d.rec.id == id || d.rec.parent == id) {
                    return Err(VdiskError::Busy(format!(
                        "`{}` is being split{}; cancel the job or wait for it",
                        d.rec.name,
                        if d.rec.id == id { "" } else { " from it" }
                    )));
                }
            }
        }
        let _lock = self.locks.disk(id).await;
        // Stop its agents: I/O in flight drains, new I/O fails.
        self.command_agents(id, AgentCmd::Fail(IoStatus::Aborted), true)
            .await;
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let Some(mut d) = st.disks.remove(&id) else {
            return Err(VdiskError::NotFound(name.to_string()));
        };
        table::set_root(&mut d.root, None, &mut st.space);
        let parent = d.rec.parent;
        for other in st.disks.values_mut() {
            if other.rec.parent == id {
                other.rec.parent = parent;
            }
        }
        st.changed();
        drop(d);
        tracing::info!(pool = %self.shared.name, disk = name, "disk deleted");
        Ok(())
    }

    /// Grows or shrinks a disk.
    pub(crate) async fn resize_disk(&self, name: &str, size_bytes: u64) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        let geo = self.shared.geo;
        let new_blocks = disk_size_blocks(&geo, size_bytes)?;
        let _lock = self.locks.disk(id).await;
        let (old_blocks, bdev, ro) = {
            let st = self.st.borrow();
            let d = st
                .disks
                .get(&id)
                .ok_or_else(|| VdiskError::NotFound(name.into()))?;
            (d.rec.size_blocks, d.bdev.clone(), d.rec.read_only)
        };
        if ro {
            return Err(VdiskError::ReadOnly(name.to_string()));
        }
        if new_blocks < old_blocks
            && !(new_blocks % geo.segment_blocks).is_multiple_of(geo.granule_blocks)
        {
            return Err(VdiskError::InvalidParam {
                field: "size",
                reason: format!(
                    "shrinking to {size_bytes} bytes would cut a {}-byte granule; use a multiple of it",
                    geo.granule_blocks * geo.block_size as u64
                ),
            });
        }
        if new_blocks < old_blocks {
            // New I/O beyond the end fails first; then in-flight I/O drains; then the
            // tail goes.
            bdev.set_size_blocks(new_blocks);
            self.command_agents(id, AgentCmd::Barrier, true).await;
            let from = new_blocks.div_ceil(geo.segment_blocks);
            self.set_extents(id, from, u64::MAX, Vec::new());
            // A last partial segment keeps data beyond the new end: zero it so that a
            // later grow shows zeros there.
            if !new_blocks.is_multiple_of(geo.segment_blocks) {
                let vseg = new_blocks / geo.segment_blocks;
                let in_seg = new_blocks % geo.segment_blocks;
                let ext = {
                    let st = self.st.borrow();
                    st.disks[&id]
                        .root
                        .as_ref()
                        .and_then(|r| r.lookup(vseg))
                        .cloned()
                };
                if let Some(e) = ext {
                    self.zero_tail(id, &e, vseg, in_seg).await;
                }
            }
        }
        {
            let mut st = self.st.borrow_mut();
            if let Some(d) = st.disks.get_mut(&id) {
                d.rec.size_blocks = new_blocks;
            }
            st.changed();
        }
        bdev.set_size_blocks(new_blocks);
        self.push_view(id, true).await;
        self.update_free();
        Ok(())
    }

    /// Makes blocks `[in_seg, end)` of virtual segment `vseg` read as zeros
    /// (`in_seg` is granule-aligned).
    async fn zero_tail(&self, disk: u64, e: &Extent, vseg: u64, in_seg: u64) {
        let geo = self.shared.geo;
        let n = geo.segment_blocks - in_seg;
        let zeros = || crate::bdev::IoBuf::zeroed((n * geo.block_size as u64) as usize);
        let writable = self.st.borrow().disks[&disk].rec.snap_gen < e.birth;
        let one = e.at(vseg);
        if writable && one.layers.len() == 1 {
            // Nothing below the top: zeroing the top is enough.
            let _ = self.write_segment(one.layers[0].seg, in_seg, zeros()).await;
            return;
        }
        // Data below the top would show through: give the segment a writable top, zero
        // the tail there and mark it held by the top.
        if !self.make_writable(disk, vseg).await.is_success() {
            return;
        }
        let top = {
            let st = self.st.borrow();
            st.disks[&disk]
                .root
                .as_ref()
                .and_then(|r| r.lookup(vseg))
                .map(|e| e.at(vseg).layers[0].clone())
        };
        if let Some(top) = top
            && self.write_segment(top.seg, in_seg, zeros()).await.is_ok()
            && let Some(f) = &top.fill
        {
            let g = in_seg / geo.granule_blocks;
            f.set_range(g, geo.granules - g);
            if f.mark_dirty() {
                self.shared.dirty_fills.push(f.clone());
            }
        }
    }

    /// Sets or clears the read-only flag.
    pub(crate) async fn set_read_only(&self, name: &str, ro: bool) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        let _lock = self.locks.disk(id).await;
        let bdev = {
            let mut st = self.st.borrow_mut();
            let d = st
                .disks
                .get_mut(&id)
                .ok_or_else(|| VdiskError::NotFound(name.into()))?;
            if d.rec.kind == DiskKind::Snapshot && !ro {
                return Err(VdiskError::InvalidParam {
                    field: "read_only",
                    reason: format!(
                        "`{name}` is a snapshot; snapshots stay read-only (clone it instead)"
                    ),
                });
            }
            d.rec.read_only = ro;
            let b = d.bdev.clone();
            st.changed();
            b
        };
        bdev.set_read_only(ro);
        // Writes that started before the flag drain before we return.
        self.command_agents(id, AgentCmd::Barrier, true).await;
        Ok(())
    }

    /// Listing: parent, children, allocated and shared space of every disk.
    pub(crate) fn list(&self) -> Vec<DiskInfo> {
        let st = self.st.borrow();
        let name_of = |id: u64| st.disks.get(&id).map(|d| d.rec.name.clone());
        st.disks
            .values()
            .map(|d| {
                let (mut alloc, mut shared) = (0, 0);
                if let Some(r) = &d.root {
                    let mut seen = std::collections::HashSet::new();
                    r.visit_from(0, &mut |e| {
                        for s in e.segments() {
                            if seen.insert(s) {
                                if st.space.refs(s) > 1
                                    || e.birth <= d.rec.snap_gen && d.rec.kind != DiskKind::Snapshot
                                {
                                    shared += 1;
                                } else {
                                    alloc += 1;
                                }
                            }
                        }
                        true
                    });
                }
                DiskInfo {
                    name: d.rec.name.clone(),
                    uuid: d.rec.uuid,
                    id: d.rec.id,
                    kind: d.rec.kind,
                    size_bytes: d.rec.size_blocks * self.shared.geo.block_size as u64,
                    read_only: d.rec.read_only,
                    thin: d.rec.thin,
                    parent: if d.rec.parent == 0 {
                        None
                    } else {
                        name_of(d.rec.parent)
                    },
                    children: st
                        .disks
                        .values()
                        .filter(|c| c.rec.parent == d.rec.id)
                        .map(|c| c.rec.name.clone())
                        .collect(),
                    allocated_segments: alloc,
                    shared_segments: shared,
                    segment_bytes: self.shared.geo.segment_bytes(),
                    cow_policy: CowPolicy::from_u8(d.rec.cow_policy),
                    job: d.job_progress.as_ref().map(|p| {
                        let (done, total) = p.get();
                        let kind = match d.rec.job {
                            JobRecord::Decouple { .. } => "decouple",
                            _ => "split",
                        };
                        (kind.to_string(), done, total)
                    }),
                }
            })
            .collect()
    }
}
