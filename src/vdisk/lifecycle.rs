//! Disk operations on the controller: create, delete, resize, set read-only, and the
//! listings (snapshots and clones are in `snapshot.rs`, split in `split.rs`).

use super::commit::{dir_pages_for, splice_bound};
use super::controller::{Controller, DiskCtl, unix_now, validate_name};
use super::disk::VDisk;
use super::map::{Extent, MAX_RUN_SEGMENTS};
use super::meta::NO_PAGE;
use super::meta::directory::{DiskKind, DiskRecord, JobRecord};
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
        if size_bytes == 0 || !size_bytes.is_multiple_of(geo.block_size as u64) {
            return Err(VdiskError::InvalidParam {
                field: "size",
                reason: format!(
                    "{size_bytes} bytes is not a positive multiple of the block size {}",
                    geo.block_size
                ),
            });
        }
        let size_blocks = size_bytes / geo.block_size as u64;
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
        let mut runs = Vec::new();
        if !thin {
            let mut v = 0;
            while v < nsegs {
                let got = self
                    .st
                    .borrow_mut()
                    .space
                    .alloc_run((nsegs - v).min(MAX_RUN_SEGMENTS as u64));
                let Some((seg, n)) = got else {
                    for &(_, s, n) in &runs {
                        for i in 0..n {
                            self.st.borrow_mut().space.unalloc_segment(s + i);
                        }
                    }
                    return Err(VdiskError::NoSpace {
                        need: nsegs,
                        free: self.st.borrow().space.free_segments(),
                    });
                };
                runs.push((v, seg, n));
                v += n;
            }
        }
        let unalloc_runs = |runs: &[(u64, u64, u64)]| {
            for &(_, s, n) in runs {
                for i in 0..n {
                    self.st.borrow_mut().space.unalloc_segment(s + i);
                }
            }
        };
        // Metadata for its directory record and its table of runs.
        let exts: Vec<Extent> = runs
            .iter()
            .map(|&(v, s, n)| Extent::run(v, n as u32, s, generation))
            .collect();
        let need = {
            let n = self.st.borrow().disks.len();
            dir_pages_for(n + 1) - dir_pages_for(n)
        } + if exts.is_empty() {
            0
        } else {
            splice_bound(
                None,
                0,
                nsegs,
                exts.iter().map(table::extent_encoded_len).sum(),
            )
        };
        let _meta = match self.reserve_meta(need) {
            Ok(r) => r,
            Err(e) => {
                unalloc_runs(&runs);
                return Err(e);
            }
        };
        for &(_, seg, n) in &runs {
            if let Err(e) = self.zero_segments(seg, n).await {
                unalloc_runs(&runs);
                return Err(VdiskError::Io {
                    what: "zeroing the new disk's segments".into(),
                    status: e,
                });
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
        let bdev = VDisk::new(&self.shared, &rec).map_err(VdiskError::Bdev)?;
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let mut root = None;
            if !exts.is_empty() {
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
        let _lock = self.lock_disk(id, &format!("delete of `{name}`")).await?;
        // Stop its agents: I/O in flight drains, new I/O fails. What it frees must not be
        // reused under I/O still in flight: if that does not drain in time, the delete is
        // cancelled and the disk serves I/O again.
        if let Err(stall) = self
            .command_agents(id, AgentCmd::Fail(IoStatus::Aborted), true)
            .await
        {
            let _ = self.command_agents(id, AgentCmd::Resume, false).await;
            return Err(VdiskError::DrainTimeout(
                stall.during(format!("delete of `{name}`")),
            ));
        }
        {
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
        }
        self.update_free();
        tracing::info!(pool = %self.shared.name, disk = name, "disk deleted");
        Ok(())
    }

    /// Grows or shrinks a disk.
    pub(crate) async fn resize_disk(&self, name: &str, size_bytes: u64) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        let geo = self.shared.geo;
        if size_bytes == 0 || !size_bytes.is_multiple_of(geo.block_size as u64) {
            return Err(VdiskError::InvalidParam {
                field: "size",
                reason: format!(
                    "{size_bytes} bytes is not a positive multiple of the block size {}",
                    geo.block_size
                ),
            });
        }
        let _lock = self.locks.disk(id).await;
        let new_blocks = size_bytes / geo.block_size as u64;
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
            if let Err(stall) = self.command_agents(id, AgentCmd::Barrier, true).await {
                bdev.set_size_blocks(old_blocks);
                return Err(VdiskError::DrainTimeout(
                    stall.during(format!("shrinking `{name}`")),
                ));
            }
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
        let _ = self.push_view(id, true).await;
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
        let _lock = self
            .lock_disk(id, &format!("setting `{name}` read-only"))
            .await?;
        let (bdev, was) = {
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
            (d.bdev.clone(), d.rec.read_only)
        };
        bdev.set_read_only(ro);
        // Writes that started before the flag drain before the change is recorded; if
        // they do not in time, the flag goes back and nothing was recorded (a commit
        // meanwhile cannot persist a change that then fails).
        if let Err(stall) = self.command_agents(id, AgentCmd::Barrier, true).await {
            bdev.set_read_only(was);
            return Err(VdiskError::DrainTimeout(
                stall.during(format!("setting `{name}` read-only")),
            ));
        }
        let mut st = self.st.borrow_mut();
        if let Some(d) = st.disks.get_mut(&id) {
            d.rec.read_only = ro;
            st.changed();
        }
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
