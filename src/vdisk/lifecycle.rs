//! Disk operations on the controller: create, delete, resize, set read-only, and the
//! listings (snapshots and clones are in `snapshot.rs`, split in `split.rs`).

use super::commit::{dir_pages_for, splice_bound};
use super::controller::{Controller, DiskCtl, unix_now, validate_name};
use super::disk::VDisk;
use super::map::{
    DirtyFill, Extent, ExtentState, Geometry, Layer, Layers, MAX_RUN_SEGMENTS, PhysSeg, Source,
};
use super::meta::directory::{DiskKind, DiskRecord, JobRecord};
use super::meta::{MAX_DISK_BLOCKS, MAX_VSEG, NO_PAGE};
use super::msg::AgentCmd;
use super::table;
use super::{CowPolicy, VdiskError};
use crate::bdev::IoStatus;
use serde::Serialize;
use std::collections::HashMap;
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
    /// The external snapshot the disk reads through to (esnap), if any.
    pub external: Option<super::meta::directory::ExternalBase>,
    /// Whether that external snapshot is missing (the disk's reads of it fail).
    pub degraded: bool,
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

/// How a shrink makes the blocks past the new end of its last segment read as zeros.
enum Tail {
    /// They already do.
    Zero,
    /// Clear their granules in the fill of the disk's own, only layer (this segment).
    Clear(PhysSeg),
    /// Map the segment with this extent (`None`: the zero state). `fenced`: writes to
    /// the segment are fenced off until it is mapped so.
    Replace {
        extent: Option<Extent>,
        fenced: bool,
    },
}

impl Controller {
    /// Creates a disk. `uuid` is kept when given (restoring a saved configuration).
    pub(crate) async fn create_disk(
        &self,
        name: &str,
        size_bytes: u64,
        thin: bool,
        uuid: Option<uuid::Uuid>,
        external: Option<super::meta::directory::ExternalBase>,
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
            let id = st.take_disk_id();
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
        }
        // Metadata for its directory record and its table of runs.
        let exts: Vec<Extent> = runs
            .iter()
            .map(|&(v, s, n)| Extent::run(v, n as u16, s, generation))
            .collect();
        let need = {
            let n = self.st.borrow().disks.len();
            dir_pages_for(n + 1) - dir_pages_for(n)
        } + if exts.is_empty() {
            0
        } else {
            splice_bound(None, 0, nsegs, exts.iter().map(table::extent_budget).sum())
        };
        let _meta = match self.reserve_meta(need) {
            Ok(r) => r,
            Err(e) => {
                release(&runs);
                return Err(e);
            }
        };
        if !thin {
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
            // An external snapshot's clone is a clone whose parent is outside the pool.
            kind: if external.is_some() {
                DiskKind::Clone
            } else {
                DiskKind::Disk
            },
            read_only: false,
            thin,
            parent: 0,
            snap_gen: 0,
            created_gen: generation,
            root_page: NO_PAGE,
            cow_policy: cow as u8,
            job: JobRecord::None,
            created_unix: unix_now(),
            external,
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
            if !exts.is_empty() {
                for e in &exts {
                    bdev.maybe_mapped.note_run(e.vseg, u64::from(e.len));
                }
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
    ///
    /// A shrink refuses new I/O past the new end, drains the I/O in flight, makes the
    /// blocks past the new end in the last segment read as zeros (so that a later grow
    /// shows zeros there), and then, in one step that a commit captures whole, drops the
    /// segments past the end and records the size. Of a disk that reads through to an
    /// external snapshot, what it held past the new end is dropped the same way, so a
    /// later grow shows the external snapshot's blocks there again (zeros past its
    /// end), as SPDK's shrink of an esnap clone (clusters released) and grow do. If
    /// the tail cannot be made to read zeros (no space, an I/O error), the resize fails
    /// and the disk keeps its size and its data.
    pub(crate) async fn resize_disk(&self, name: &str, size_bytes: u64) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        let geo = self.shared.geo;
        let new_blocks = disk_size_blocks(&geo, size_bytes)?;
        let _lock = self.locks.disk(id).await;
        self.check_usable()?;
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
        let mut tail = Tail::Zero;
        if new_blocks < old_blocks {
            // New I/O past the end fails first; then the I/O in flight drains.
            bdev.set_size_blocks(new_blocks);
            if let Err(stall) = self.command_agents(id, AgentCmd::Barrier, true).await {
                bdev.set_size_blocks(old_blocks);
                return Err(VdiskError::DrainTimeout(
                    stall.during(format!("shrinking `{name}`")),
                ));
            }
            if !new_blocks.is_multiple_of(geo.segment_blocks) {
                match self.plan_tail(id, name, new_blocks).await {
                    Ok(t) => tail = t,
                    Err(e) => {
                        bdev.set_size_blocks(old_blocks);
                        return Err(e);
                    }
                }
            }
        }
        // One step, nothing awaited: a commit sees the old disk or the new one.
        let vseg = new_blocks / geo.segment_blocks;
        let fenced = match tail {
            Tail::Zero => false,
            Tail::Clear(seg) => {
                let g = new_blocks % geo.segment_blocks / geo.granule_blocks;
                let f = self.shared.fills.get(seg);
                if f.clear_range(g, geo.granules - g) && self.shared.fills.mark_dirty(seg) {
                    let disk = id;
                    self.shared.dirty_fills.push(DirtyFill { seg, disk, vseg });
                }
                false
            }
            Tail::Replace { extent, fenced } => {
                self.set_extents(id, vseg, vseg + 1, extent.into_iter().collect());
                fenced
            }
        };
        if new_blocks < old_blocks {
            self.set_extents(
                id,
                new_blocks.div_ceil(geo.segment_blocks),
                u64::MAX,
                Vec::new(),
            );
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
        if fenced {
            let _ = self.fence_writes(id, vseg, false).await;
        }
        self.update_free();
        tracing::info!(pool = %self.shared.name, disk = name, size_bytes, "disk resized");
        Ok(())
    }

    /// How blocks `[new_blocks, end of their segment)` of `disk` (just shrunk to
    /// `new_blocks`, a granule multiple inside a segment; no I/O past it in flight) come
    /// to read as zeros. Changes nothing in the table; may copy the segment's head into
    /// a new segment (writes to the segment are then fenced off until the caller
    /// installs it).
    async fn plan_tail(&self, disk: u64, name: &str, new_blocks: u64) -> Result<Tail, VdiskError> {
        let geo = self.shared.geo;
        let vseg = new_blocks / geo.segment_blocks;
        let head = new_blocks % geo.segment_blocks;
        let lookup = || {
            let st = self.st.borrow();
            let d = &st.disks[&disk];
            d.root
                .as_ref()
                .and_then(|r| r.lookup(vseg))
                .map(|e| (e.at(vseg), e.birth.get() > d.rec.snap_gen))
        };
        let reads_zeros = |e: &Extent, b: u64, n: u64| {
            geo.resolve_runs(&self.shared.fills, Some(e), vseg, b, n)
                .iter()
                .all(|&(_, _, s)| s == Source::Zero)
        };
        let tail = geo.segment_blocks - head;
        let Some((one, writable)) = lookup() else {
            return Ok(Tail::Zero);
        };
        // The error state stays: its blocks fail, they never show data.
        if one.state == ExtentState::Error || reads_zeros(&one, head, tail) {
            return Ok(Tail::Zero);
        }
        if writable && one.layers.len() == 1 {
            // The disk's own segment, nothing below it: it holds no more than the head.
            let top = one.layers[0];
            if top.is_partial() {
                return Ok(Tail::Clear(top.seg()));
            }
            // A full segment becomes partial: its fill (unused while it was full) holds
            // the head.
            (self.shared.fills.fresh(top.seg())).set_range(0, head / geo.granule_blocks);
            return Ok(Tail::Replace {
                extent: Some(Extent {
                    layers: Layers::from_slice(&[Layer::partial(top.seg())]),
                    ..one
                }),
                fenced: false,
            });
        }
        // Shared with a snapshot or a clone, or stacked on shared layers: the head goes
        // to a new segment of the disk's own, and nothing shows through below it. Writes
        // to the segment wait meanwhile (the ones in flight drain), so the copy is whole.
        if let Err(stall) = self.fence_writes(disk, vseg, true).await {
            let _ = self.fence_writes(disk, vseg, false).await;
            return Err(VdiskError::DrainTimeout(
                stall.during(format!("shrinking `{name}`")),
            ));
        }
        let planned = match lookup() {
            None => Ok(Tail::Zero),
            Some((one, _)) if reads_zeros(&one, 0, head) => Ok(Tail::Replace {
                extent: None,
                fenced: true,
            }),
            Some((one, _)) => self
                .copy_head(name, &one, head)
                .await
                .map(|e| Tail::Replace {
                    extent: Some(e),
                    fenced: true,
                }),
        };
        if !matches!(planned, Ok(Tail::Replace { fenced: true, .. })) {
            let _ = self.fence_writes(disk, vseg, false).await;
        }
        planned
    }

    /// Copies what blocks `[0, head)` of `one` (the extent at one virtual segment of
    /// disk `name`) show into a new segment; returns the extent that maps it, writable
    /// by the disk, holding those granules and nothing else.
    async fn copy_head(&self, name: &str, one: &Extent, head: u64) -> Result<Extent, VdiskError> {
        let seg = {
            let mut st = self.st.borrow_mut();
            let free = st.space.free_segments();
            st.space
                .alloc_segment()
                .ok_or(VdiskError::NoSpace { need: 1, free })?
        };
        self.shared.fills.fresh(seg);
        if let Err(status) = self.copy_resolved_blocks(one, seg, 0, head).await {
            self.st.borrow_mut().space.unalloc_segment(seg);
            return Err(VdiskError::Io {
                what: format!(
                    "shrinking `{name}`: copying the {head} blocks it keeps of segment {} \
                     (it shares the segment, whose blocks past the new end must read as zeros)",
                    one.vseg
                ),
                status,
            });
        }
        let birth = self.st.borrow().generation;
        Ok(Extent {
            vseg: one.vseg,
            len: 1,
            state: ExtentState::Mapped,
            birth: birth.into(),
            layers: Layers::from_slice(&[Layer::partial(seg)]),
        })
    }

    /// Sets or clears the read-only flag. Clearing it on a disk that was cloned
    /// meanwhile is safe: cloning raised the disk's snapshot generation, so its writes to
    /// what it shares with the clone fault and copy on write.
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

    /// Renames a disk (SPDK: `bdev_lvol_rename`). Only the directory changes; the bdev
    /// keeps its name (the UUID), so I/O and exports go on. Renaming to the same name
    /// does nothing, as in SPDK.
    pub(crate) fn rename_disk(&self, name: &str, new_name: &str) -> Result<(), VdiskError> {
        self.check_usable()?;
        validate_name(new_name)?;
        let id = self.id_of(name)?;
        if name == new_name {
            return Ok(());
        }
        let mut st = self.st.borrow_mut();
        if st.disk_by_name(new_name).is_some() {
            return Err(VdiskError::Exists(format!(
                "lvol `{new_name}` in lvstore `{}`",
                self.shared.name
            )));
        }
        let d = st
            .disks
            .get_mut(&id)
            .ok_or_else(|| VdiskError::NotFound(name.into()))?;
        d.rec.name = new_name.to_string();
        d.bdev.set_disk_name(new_name);
        st.changed();
        tracing::info!(pool = %self.shared.name, disk = name, new_name, "disk renamed");
        Ok(())
    }

    /// Renames the pool (SPDK: `bdev_lvol_rename_lvstore`). Only the superblock records
    /// the name, so this commits a checkpoint (a log append would not carry it); on
    /// failure the old name stays.
    pub(crate) async fn rename_pool(&self, new_name: &str) -> Result<(), VdiskError> {
        self.check_usable()?;
        validate_name(new_name)?;
        let old = self.shared.name.get();
        if old == new_name {
            return Ok(());
        }
        self.shared.name.set(new_name);
        // A change no log record describes: the commit below has metadata to write.
        self.st.borrow_mut().changes += 1;
        if let Err(status) = self.commit().await {
            self.shared.name.set(&old);
            return Err(VdiskError::Io {
                what: format!("committing the rename of pool `{old}` to `{new_name}`"),
                status,
            });
        }
        tracing::info!(pool = %old, new_name, "pool renamed");
        Ok(())
    }

    /// Listing: parent, children, allocated and shared space of every disk.
    ///
    /// Every segment in use is allocated to exactly one of the disks that map it, so
    /// the disks' allocated counts sum to the segments the pool uses, as the clusters
    /// of SPDK's lvols do: to the oldest snapshot among them (after a snapshot, the
    /// snapshot holds what the disk had, and the disk only what it wrote since), or,
    /// with no snapshot among them, to the oldest disk. A disk's other segments are
    /// shared.
    pub(crate) fn list(&self) -> Vec<DiskInfo> {
        let st = self.st.borrow();
        let name_of = |id: u64| st.disks.get(&id).map(|d| d.rec.name.clone());
        // Each disk's segments, and the disk each segment is allocated to.
        let rank = |d: &DiskCtl| {
            (
                d.rec.kind != DiskKind::Snapshot,
                d.rec.created_gen,
                d.rec.id,
            )
        };
        let mut owner: HashMap<PhysSeg, (bool, u64, u64)> = HashMap::new();
        let mut segs_of: HashMap<u64, Vec<PhysSeg>> = HashMap::new();
        for d in st.disks.values() {
            let mut segs = Vec::new();
            if let Some(r) = &d.root {
                r.visit_from(0, &mut |e| {
                    segs.extend(e.segments());
                    true
                });
            }
            segs.sort_unstable();
            segs.dedup();
            let r = rank(d);
            for &s in &segs {
                owner.entry(s).and_modify(|o| *o = (*o).min(r)).or_insert(r);
            }
            segs_of.insert(d.rec.id, segs);
        }
        st.disks
            .values()
            .map(|d| {
                let segs = &segs_of[&d.rec.id];
                let alloc = segs.iter().filter(|s| owner[s].2 == d.rec.id).count() as u64;
                let shared = segs.len() as u64 - alloc;
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
                    external: d.rec.external.clone(),
                    degraded: d
                        .rec
                        .external
                        .as_ref()
                        .is_some_and(|x| !self.externals.borrow().contains_key(&x.uuid)),
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
