//! Making a thin disk a clone of another snapshot of the pool (SPDK's
//! `bdev_lvol_set_parent`): what the disk holds of its own stays, everything else reads
//! from the new parent.
//!
//! **What the table becomes.** A disk's table maps each virtual segment to a stack of
//! layers; a clone's stack is its own layers (at most a partial top it wrote) over the
//! layers it shares with its parent. The disk's own layers at a segment are the top of
//! its stack down to the first layer its present parent also has there (all of them
//! when it has no parent in the pool: a thin disk, or an external snapshot's clone). The
//! new stack is those own layers over the new parent's stack at the segment; where the
//! disk holds nothing of its own it is the new parent's extent, shared as a new clone's
//! is. A full own layer hides what lies below it. Where the two stacks together are
//! deeper than [`MAX_LAYERS`], what they resolve to is copied into one new segment of the
//! disk's own first (as a write fault merges a stack that is full). Below every layer,
//! the disk now reads what the new parent reads: zeros, or its external snapshot.
//! Where it read what lies below every layer (zeros, or its external bdev) in place of
//! its old parent's data — nothing of its own there, or its own layers over nothing (a
//! shrink's cut, a segment unmapped in a clone, a copy-out, a merge) — it keeps reading
//! what it read: a segment of its own holding it (zeros, or the external bdev's blocks),
//! or its layers copied over it into one. Otherwise a snapshot of it, or the lvol it
//! reverted to one, would show through the cut again in every disk reading through a
//! snapshot given a new parent.
//!
//! **A snapshot given a new parent** (`bdev_lvol_set_parent` or `bdev_lvol_set_parent_bdev`
//! on a snapshot, as SPDK allows): the snapshot becomes its own layers over the new
//! parent's (or over the external bdev), and
//! every disk reading through it (its clones, the lvol it was taken of, their
//! snapshots and clones in turn) its own layers over what its parent reads from now
//! on, each planned from its parent's new extents before any table changes; all of
//! their tables are replaced in the one step, with all of them locked and quiesced.
//!
//! **Generations.** The disk's snapshot generation becomes a new one, so that every
//! extent it now shares with the parent is written copy-on-write; the extents whose top
//! layer it could write in place before are re-born in the next generation and stay
//! writable; the parent's snapshot generation is raised as a clone's source's is.
//!
//! **How, and why it is atomic.** As a revert (`revert.rs`): under the locks of the disk
//! and of the parent, the disk's I/O is quiesced with a time limit (of every disk
//! changed, for a snapshot); the merges (if any)
//! are copied; then in one step, nothing awaited, the table root is replaced by the new
//! one and the record changes (parent, external base, kind, snapshot generation). The
//! intent log has no record for a table replaced whole, so the next durable point is a
//! checkpoint, which the caller runs before answering (`pool::durable`): a crash before
//! its superblock write leaves the disk as it was, after it the re-parented disk. The
//! view is pushed to the agents before the held I/O is let go.

use super::VdiskError;
use super::controller::{Controller, CtlState, DiskCtl};
use super::cow::normalize;
use super::esnap::unfit_external;
use super::map::{Extent, ExtentState, Layer, Layers, MAX_LAYERS, MAX_RUN_SEGMENTS};
use super::meta::directory::{DiskKind, ExternalBase, JobRecord};
use super::table;
use crate::bdev::{Bdev, IoStatus};
use crate::reactor;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// What the re-parented disk reads where it holds nothing of its own.
#[derive(Clone, Copy)]
enum NewParent<'a> {
    /// A snapshot of the pool (by id): its layers, and below them what it reads.
    Snapshot(u64),
    /// An external bdev (`bdev_lvol_set_parent_bdev`): nothing of the pool.
    External(&'a ExternalBase),
}

/// What one virtual segment of the re-parented disk becomes.
enum Plan {
    /// The new parent's extent there (the disk holds nothing of its own).
    Parent(Extent),
    /// The disk's own layers over the new parent's; `writable`: its top layer was
    /// writable in place and stays so.
    Stack {
        layers: Layers,
        birth: u64,
        writable: bool,
    },
    /// The disk's own extent as it is (a full own layer, or the error state).
    Own { ext: Extent, writable: bool },
    /// Too deep: what `layers` resolve to is copied into a new segment of the disk's own.
    Merge(Extent),
    /// The disk's own layers over nothing where its old parent has data: what they
    /// resolve to over what the disk read below them (zeros, or its external bdev),
    /// copied into a segment of its own (a full layer).
    MergeOverBelow(Extent),
    /// Nothing of the disk's where its old parent has data (it unmapped the segment, or
    /// shrank and grew back): what it read there (zeros, or its external bdev's blocks)
    /// copied into a segment of its own (a full layer), so that neither the parent's
    /// data nor what the disk reads below from now on shows through.
    Below,
}

impl Controller {
    /// Why disk `name` (`id`, in `st`) may take no new parent of either kind, if it may
    /// not: a snapshot, a thick lvol that is not a clone, a split running, a disk naming
    /// it as its parent, or quiesced by someone else than the operation itself (`ours`).
    fn new_parent_refused(st: &CtlState, id: u64, name: &str, ours: bool) -> Option<VdiskError> {
        let d = &st.disks[&id];
        let invalid =
            |field: &'static str, reason: String| Some(VdiskError::InvalidParam { field, reason });
        // As SPDK: an lvol that is not a clone must be thin (a clone always is there).
        if !d.rec.thin && d.rec.parent == 0 && d.rec.external.is_none() {
            return invalid("lvol_name", format!("`{name}` is not thin-provisioned"));
        }
        if let Some(c) = st.disks.values().find(|c| c.rec.parent == id) {
            return Some(VdiskError::Busy(format!(
                "`{}` names `{name}` as its parent",
                c.rec.name
            )));
        }
        Self::switch_busy(st, id, ours)
    }

    /// Why disk `id`'s table may not be switched now, if it may not: a split running
    /// or a quiesce by someone else than the operation itself (`ours`).
    fn switch_busy(st: &CtlState, id: u64, ours: bool) -> Option<VdiskError> {
        let d = &st.disks[&id];
        let name = &d.rec.name;
        if d.job_cancel.is_some() || d.rec.job != JobRecord::None {
            return Some(VdiskError::Busy(format!(
                "`{name}` is being split from its parent; cancel the job or wait for it"
            )));
        }
        if d.quiesced && !ours {
            return Some(VdiskError::Busy(format!(
                "`{name}` is quiesced (tessera_quiesce); activate it first"
            )));
        }
        None
    }

    /// Disk `id` and every disk that reads through it (its clones, the lvol a
    /// snapshot was taken of, their snapshots and clones in turn), each after its
    /// parent.
    fn reading_through(st: &CtlState, id: u64) -> Vec<u64> {
        let mut out = vec![id];
        let mut i = 0;
        while i < out.len() {
            let p = out[i];
            let mut kids: Vec<u64> = st
                .disks
                .values()
                .filter(|c| c.rec.parent == p && !out.contains(&c.rec.id))
                .map(|c| c.rec.id)
                .collect();
            kids.sort_unstable();
            out.extend(kids);
            i += 1;
        }
        out
    }

    /// Why `name` (`id`) may not be made a clone of `parent` (`sid`), if it may not.
    /// `ours`: the disk is quiesced by the operation itself.
    fn set_parent_refused(
        st: &CtlState,
        (id, sid): (u64, u64),
        name: &str,
        parent: &str,
        ours: bool,
    ) -> Option<VdiskError> {
        let (d, s) = match super::revert::disk_pair(st, (id, sid), name, parent) {
            Ok(pair) => pair,
            Err(e) => return Some(e),
        };
        let invalid =
            |field: &'static str, reason: String| Some(VdiskError::InvalidParam { field, reason });
        if id == sid {
            return invalid("parent_name", format!("`{name}` cannot be its own parent"));
        }
        if d.rec.parent == sid {
            return Some(VdiskError::Exists(format!(
                "`{parent}` as the parent of `{name}`"
            )));
        }
        if s.rec.kind != DiskKind::Snapshot || !s.rec.read_only {
            return invalid("parent_name", format!("`{parent}` is not a snapshot"));
        }
        if d.rec.size_blocks != s.rec.size_blocks {
            return invalid(
                "parent_name",
                format!(
                    "`{name}` has {} blocks and `{parent}` {}: they must be the same size",
                    d.rec.size_blocks, s.rec.size_blocks
                ),
            );
        }
        if reparents_lineage(d) {
            // As SPDK (a snapshot is a thin blob there): the snapshot and every disk
            // reading through it change what they read, none of which may be the
            // new parent.
            let through = Self::reading_through(st, id);
            if through.contains(&sid) {
                return invalid(
                    "parent_name",
                    format!("`{parent}` reads through `{name}`: it cannot be its parent"),
                );
            }
            return through
                .into_iter()
                .find_map(|x| Self::switch_busy(st, x, ours));
        }
        Self::new_parent_refused(st, id, name, ours)
    }
}

/// A disk's mapping as a re-parenting reads it: its table, or the extents planned for
/// it (sorted, non-overlapping) before they are a table.
#[derive(Clone, Copy)]
enum Mapping<'a> {
    Table(Option<&'a Arc<table::Node>>),
    Planned(&'a [Extent]),
}

impl Mapping<'_> {
    /// The one-segment extent at `v`, if mapped.
    fn at(&self, v: u64) -> Option<Extent> {
        match self {
            Mapping::Table(root) => root.and_then(|r| r.lookup(v)).map(|e| e.at(v)),
            Mapping::Planned(exts) => {
                let i = exts.partition_point(|e| e.end() <= v);
                exts.get(i).filter(|e| e.vseg <= v).map(|e| e.at(v))
            }
        }
    }

    /// Adds the mapped segments below `nsegs` to `out`.
    fn segments(&self, nsegs: u64, out: &mut BTreeSet<u64>) {
        let mut add = |e: &Extent| {
            out.extend(e.vseg..e.end().min(nsegs));
            e.end() < nsegs
        };
        match self {
            Mapping::Table(root) => {
                if let Some(r) = root {
                    r.visit_from(0, &mut |e| add(e));
                }
            }
            Mapping::Planned(exts) => {
                for e in exts.iter() {
                    if !add(e) {
                        break;
                    }
                }
            }
        }
    }
}

/// What a re-parented disk reads below its own layers: its parent's mapping as it is
/// (`old`, none when it has no parent in the pool), and what it reads from now on
/// (`new`: the new parent's, or none for an external bdev).
#[derive(Clone, Copy)]
struct Below<'a> {
    old: Mapping<'a>,
    new: Mapping<'a>,
}

/// What each virtual segment of disk `d` becomes when it reads `below.new` instead of
/// `below.old` below its own layers (see the module documentation), in order.
/// Where the disk read what lies below every layer (zeros, or its external bdev) in
/// place of its old parent's data — it holds nothing there (it unmapped the segment, or
/// shrank and grew back), or its own layers over nothing (a shrink's cut, a copy-out, a
/// merge, a whole segment unmapped in a clone) — it keeps reading it: a segment of its
/// own holding it, or its layers copied over it into one, where it would read anything
/// else from now on: the new parent maps the segment, or below every layer the disk
/// reads another bdev from now on, or zeros instead of one (`new_bottom`, the UUID of
/// the external bdev the lineage reads below every layer from now on, if any).
/// `read_only`: no extent of the disk is writable in place afterwards (a snapshot, or
/// any disk another disk reads through: they share its extents).
///
/// The plan takes the disk's stack to be its own layers over its old parent's stack as
/// it is now. That holds while the parent cannot change under it (a snapshot), not for
/// a clone of an lvol that was written after the clone (made read-only to be cloned,
/// writable again since: the clone reads the lvol as it was). Where the rest of the
/// disk's stack is not the old parent's, planned so the disk would read the parent's
/// later writes: `Err` names that virtual segment, and nothing may be switched.
fn plan_over(
    d: &DiskCtl,
    below: Below<'_>,
    new_bottom: Option<uuid::Uuid>,
    read_only: bool,
    segment_blocks: u64,
) -> Result<Vec<(u64, Plan)>, u64> {
    // (The old parent may be larger: the disk shrank since it was taken.)
    let nsegs = d.rec.size_blocks.div_ceil(segment_blocks);
    // Below every layer the disk read zeros, or an external bdev: does that change?
    let bottom_changes = d.rec.external.as_ref().map(|x| x.uuid) != new_bottom;
    // Every segment one of the three maps: where only the old parent does, the
    // disk may hold zeros over its data.
    let mut vsegs = BTreeSet::new();
    for m in [Mapping::Table(d.root.as_ref()), below.new, below.old] {
        m.segments(nsegs, &mut vsegs);
    }
    let mut out = Vec::with_capacity(vsegs.len());
    for v in vsegs {
        let mine = d.root.as_ref().and_then(|r| r.lookup(v)).map(|e| e.at(v));
        let theirs = below.new.at(v);
        let shared = below.old.at(v);
        let Some(mine) = mine else {
            if shared.is_some() && (theirs.is_some() || bottom_changes) {
                out.push((v, Plan::Below));
            } else if let Some(t) = theirs {
                out.push((v, Plan::Parent(t)));
            }
            continue;
        };
        if Some(&mine) == shared.as_ref() {
            if let Some(t) = theirs {
                out.push((v, Plan::Parent(t)));
            }
            continue;
        }
        let writable = !read_only && mine.birth.get() > d.rec.snap_gen;
        if mine.state == ExtentState::Error {
            out.push((
                v,
                Plan::Own {
                    ext: mine,
                    writable,
                },
            ));
            continue;
        }
        let keep: HashSet<u64> = shared
            .iter()
            .flat_map(|e| e.layers.iter().map(|l| l.seg()))
            .collect();
        let mut own: Layers = mine
            .layers
            .iter()
            .take_while(|l| !keep.contains(&l.seg()))
            .copied()
            .collect();
        // Below its own layers, the old parent's stack as it is now, or nothing.
        let rest = &mine.layers[own.len()..];
        if !rest.is_empty()
            && !shared.as_ref().is_some_and(|s| {
                rest.iter()
                    .map(|l| l.seg())
                    .eq(s.layers.iter().map(|l| l.seg()))
            })
        {
            return Err(v);
        }
        if own.is_empty() {
            // Nothing of its own here (its stack is the old parent's, seen through
            // a different extent): the new parent's.
            if let Some(t) = theirs {
                out.push((v, Plan::Parent(t)));
            }
            continue;
        }
        // None of the old parent's layers below its own: it read what lies below every
        // layer under them (it unmapped the segment, a shrink cut it, a write merged a
        // full stack).
        let bottomed = own.len() == mine.layers.len();
        normalize(&mut own);
        let full = own.iter().any(|l| !l.is_partial());
        if !full && bottomed && shared.is_some() && (theirs.is_some() || bottom_changes) {
            // Over its old parent's data: what its layers show stays as it is, over
            // what it read below them, not over what it reads from now on.
            out.push((
                v,
                Plan::MergeOverBelow(Extent {
                    layers: own,
                    ..mine
                }),
            ));
            continue;
        }
        match theirs {
            _ if full => out.push((
                v,
                Plan::Own {
                    ext: Extent {
                        layers: own,
                        ..mine
                    },
                    writable,
                },
            )),
            Some(t) if t.state == ExtentState::Error => {
                // What the disk does not hold there cannot be read: neither can the
                // segment then (a merge would copy an error).
                out.push((v, Plan::Parent(t)));
            }
            theirs => {
                let mut layers = own;
                layers.extend(theirs.iter().flat_map(|t| t.layers.iter().copied()));
                normalize(&mut layers);
                if layers.len() > MAX_LAYERS {
                    out.push((v, Plan::Merge(Extent { layers, ..mine })));
                } else {
                    out.push((
                        v,
                        Plan::Stack {
                            layers,
                            birth: mine.birth.get(),
                            writable,
                        },
                    ));
                }
            }
        }
    }
    Ok(out)
}

impl Controller {
    /// Makes `name` a clone of the snapshot `parent` of the same pool (SPDK's
    /// `bdev_lvol_set_parent`; see the module documentation). `limit` bounds the wait
    /// for the locks and for the disk's I/O in flight; past it nothing has changed. The
    /// caller makes the change durable before answering.
    pub(crate) async fn set_parent(
        &self,
        name: &str,
        parent: &str,
        limit: Duration,
    ) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        let sid = self.id_of(parent)?;
        let what = format!("set_parent of `{name}` to `{parent}`");
        let deadline = reactor::now().after(limit);
        let lineage = self.lineage_to_switch(id, &[sid]);
        let (_locks, q) = self
            .hold_for_switch(
                (lineage.locked.clone(), lineage.through.clone()),
                &what,
                limit,
                deadline,
                |st| Self::set_parent_refused(st, (id, sid), name, parent, false),
            )
            .await?;
        let refused = |me: &Self| {
            me.check_usable().err().or_else(|| {
                let st = me.st.borrow();
                lineage
                    .changed(&st, id, name)
                    .or_else(|| Self::set_parent_refused(&st, (id, sid), name, parent, true))
            })
        };
        let r = self
            .reparent_lineage(
                NewParent::Snapshot(sid),
                (name, parent),
                (&lineage.through, lineage.parent),
                q,
                deadline,
                &refused,
            )
            .await;
        let _ = self.activate(q).await;
        r?;
        self.update_free();
        tracing::info!(pool = %self.shared.name, disk = name, parent, "parent set");
        Ok(())
    }

    /// Why `name` (`id`) may not be made to read through to the external bdev `ext`
    /// (`bdev_lvol_set_parent_bdev`), if it may not. `ours`: the disk is quiesced by the
    /// operation itself. SPDK's refusals (`spdk_bs_blob_set_external_parent`): the
    /// lvol's own UUID, `ext` already its external parent (`Exists`), an lvol that is
    /// neither thin nor a clone (a snapshot is thin there), an operation under way on it
    /// or, for a snapshot, on any disk reading through it (`Busy`); and tessera's: an
    /// lvol of this pool as `ext` (that is `bdev_lvol_set_parent`).
    fn set_external_refused(
        st: &CtlState,
        id: u64,
        name: &str,
        (ext_uuid, ext_name): (uuid::Uuid, &str),
        ours: bool,
    ) -> Option<VdiskError> {
        let Some(d) = st.disks.get(&id) else {
            return Some(VdiskError::NotFound(name.to_string()));
        };
        let invalid =
            |field: &'static str, reason: String| Some(VdiskError::InvalidParam { field, reason });
        if d.rec.uuid == ext_uuid {
            return invalid(
                "lvol_name",
                format!("`{name}` cannot be its own external snapshot"),
            );
        }
        if st.disks.values().any(|o| o.rec.uuid == ext_uuid) {
            return invalid(
                "parent_name",
                format!("`{ext_name}` is an lvol of this lvstore; use bdev_lvol_set_parent"),
            );
        }
        // As SPDK: only an esnap clone of `ext` itself has it as its parent (a clone of
        // its snapshot reads it through that snapshot, and may be made its esnap clone).
        if d.rec.parent == 0 && d.rec.external.as_ref().is_some_and(|x| x.uuid == ext_uuid) {
            return Some(VdiskError::Exists(format!(
                "`{ext_name}` as the external snapshot of `{name}`"
            )));
        }
        if reparents_lineage(d) {
            // As SPDK (a snapshot is a thin blob there): the snapshot and every disk
            // reading through it change what they read.
            if d.rec.kind != DiskKind::Snapshot
                && !d.rec.thin
                && d.rec.parent == 0
                && d.rec.external.is_none()
            {
                return invalid("lvol_name", format!("`{name}` is not thin-provisioned"));
            }
            return Self::reading_through(st, id)
                .into_iter()
                .find_map(|x| Self::switch_busy(st, x, ours));
        }
        Self::new_parent_refused(st, id, name, ours)
    }

    /// Makes `name` read through to the external bdev `ext` where no layer of its own
    /// holds a block (SPDK's `bdev_lvol_set_parent_bdev`): a thin lvol of the pool's own
    /// (what it did not write reads `ext` from now on, not zeros), an external
    /// snapshot's clone (another external bdev), a clone or an lvol with snapshots (it
    /// stops reading its parent snapshots: as SPDK's blob drops its snapshot, only what
    /// it wrote itself stays). The table becomes the lvol's own layers alone, as
    /// [`Controller::set_parent`] makes it (see the module documentation), in one step
    /// with its I/O held; `limit` bounds the wait for the lock and for its I/O in
    /// flight. The caller makes the change durable before answering.
    pub(crate) async fn set_external_parent(
        &self,
        name: &str,
        ext: Arc<dyn Bdev>,
        limit: Duration,
    ) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        let geo = self.shared.geo;
        if let Some(why) = unfit_external(&ext, geo.block_size, geo.segment_bytes()) {
            return Err(VdiskError::InvalidParam {
                field: "parent_name",
                reason: why,
            });
        }
        let base = ExternalBase {
            uuid: ext.uuid(),
            name: ext.name().to_string(),
        };
        let key = (base.uuid, base.name.as_str());
        let what = format!("set_parent_bdev of `{name}` to `{}`", base.name);
        let deadline = reactor::now().after(limit);
        let lineage = self.lineage_to_switch(id, &[]);
        let (_locks, q) = self
            .hold_for_switch(
                (lineage.locked.clone(), lineage.through.clone()),
                &what,
                limit,
                deadline,
                |st| Self::set_external_refused(st, id, name, key, false),
            )
            .await?;
        let refused = |me: &Self| {
            me.check_usable().err().or_else(|| {
                let st = me.st.borrow();
                lineage
                    .changed(&st, id, name)
                    .or_else(|| Self::set_external_refused(&st, id, name, key, true))
            })
        };
        // Reads below the disk's layers find the bdev once the view is pushed.
        self.externals.borrow_mut().insert(base.uuid, ext.clone());
        let r = self
            .reparent_lineage(
                NewParent::External(&base),
                (name, &base.name),
                (&lineage.through, lineage.parent),
                q,
                deadline,
                &refused,
            )
            .await;
        let _ = self.activate(q).await;
        if r.is_err() {
            let st = self.st.borrow();
            let named = st
                .disks
                .values()
                .any(|d| d.rec.external.as_ref().is_some_and(|x| x.uuid == base.uuid));
            if !named {
                self.externals.borrow_mut().remove(&base.uuid);
            }
        }
        r?;
        self.update_free();
        tracing::info!(pool = %self.shared.name, disk = name, external = %base.name,
            uuid = %base.uuid, "external snapshot set as parent");
        Ok(())
    }

    /// [`Controller::set_parent`] and [`Controller::set_external_parent`] of disk
    /// `name` (to `parent_name`), once `through` — the disk, and for a snapshot the
    /// disks reading through it, each after its parent — are quiesced (quiesce `q`);
    /// `parent` is the disk's old parent (0: none). Each becomes its own layers over
    /// what its parent reads from now on, the disk its own over the new parent's (see
    /// the module documentation). `refused` is asked before and after the merges and
    /// zeroed segments are written. The caller activates the disks.
    async fn reparent_lineage(
        &self,
        new: NewParent<'_>,
        (name, parent_name): (&str, &str),
        (through, parent): (&[u64], u64),
        q: u64,
        deadline: reactor::Nanos,
        refused: &dyn Fn(&Self) -> Option<VdiskError>,
    ) -> Result<(), VdiskError> {
        let expired = || {
            self.quiesces
                .borrow()
                .get(&q)
                .is_none_or(|q| q.expired.get())
        };
        if expired() {
            return Err(VdiskError::QuiesceTimeout(format!(
                "`{name}` (set_parent to `{parent_name}`)"
            )));
        }
        let new_id = match new {
            NewParent::Snapshot(sid) => sid,
            NewParent::External(_) => 0,
        };
        // The fills as the drained writes left them, logged before the switch.
        self.persist_dirty_fills();
        if let Some(e) = refused(self) {
            return Err(e);
        }
        let roots_now = |me: &Self| {
            let st = me.st.borrow();
            let mut ids = through.to_vec();
            ids.extend([parent, new_id]);
            ids.iter()
                .map(|i| {
                    st.disks
                        .get(i)
                        .and_then(|d| d.root.as_ref())
                        .map_or(0, |r| Arc::as_ptr(r) as usize)
                })
                .collect::<Vec<usize>>()
        };
        let roots = roots_now(self);
        // The plans carry the births the switch gives, so its generation is taken now
        // (one goes unused if the switch does not happen). A writable disk's own
        // extents that it could write in place are re-born after it and stay so;
        // everything it shares with its parent was born before it and is copied on
        // write. A snapshot's new segments are born at it: its clones share them; so
        // are those of a disk another disk of the lineage reads through.
        let g = self.st.borrow_mut().take_generation()?;
        let born = g + 1;
        let seg_blocks = self.shared.geo.segment_blocks;
        // Below every layer the lineage reads the new external bdev, if any.
        let new_bottom = match new {
            NewParent::Snapshot(sid) => self.st.borrow().disks[&sid]
                .rec
                .external
                .as_ref()
                .map(|x| x.uuid),
            NewParent::External(base) => Some(base.uuid),
        };
        let mut merged: Vec<(u64, u64)> = Vec::new();
        let mut planned: Vec<(u64, Vec<Extent>)> = Vec::with_capacity(through.len());
        for &x in through {
            let (plan, disk, ro, bottom) = {
                let st = self.st.borrow();
                let d = &st.disks[&x];
                let old = st
                    .disks
                    .get(&d.rec.parent)
                    .filter(|_| d.rec.parent != 0)
                    .and_then(|p| p.root.as_ref());
                let below_new = match planned.iter().find(|(p, _)| *p == d.rec.parent) {
                    Some((_, exts)) if x != through[0] => Mapping::Planned(exts),
                    _ => match new {
                        NewParent::Snapshot(sid) => Mapping::Table(st.disks[&sid].root.as_ref()),
                        NewParent::External(_) => Mapping::Table(None),
                    },
                };
                let below = Below {
                    old: Mapping::Table(old),
                    new: below_new,
                };
                // Nothing another disk of the lineage will read through may be writable
                // in place: a snapshot's, and a writable disk's that was cloned while
                // read-only (what its clone stacks over, or reads, after the switch).
                let ro = reparents_lineage(d)
                    || through
                        .iter()
                        .any(|y| *y != x && st.disks[y].rec.parent == x);
                let plan = plan_over(d, below, new_bottom, ro, seg_blocks).map_err(|v| {
                    let p = st.disks.get(&d.rec.parent).map_or("", |p| &p.rec.name);
                    VdiskError::Busy(format!(
                        "`{}` was cloned from `{p}`, which was written since (virtual segment \
                         {v}): `{}` no longer reads `{p}` as it is; split or delete `{}` first",
                        d.rec.name, d.rec.name, d.rec.name
                    ))
                });
                (plan, d.rec.name.clone(), ro, self.below_of(&d.rec))
            };
            let plan = match plan {
                Ok(p) => p,
                Err(e) => {
                    self.give_back(&merged);
                    return Err(e);
                }
            };
            let start = merged.len();
            if let Err(e) = self
                .write_merges(&plan, &mut merged, (&disk, &bottom), parent_name)
                .await
            {
                self.give_back(&merged);
                return Err(e);
            }
            let fresh = if ro { g } else { born };
            let exts = planned_extents(plan, &mut merged[start..].iter().copied(), born, fresh);
            planned.push((x, exts));
        }
        // Nothing may have changed while the zeroed segments were written (the locks
        // and the quiesce hold everything that could; looked at again all the same).
        if let Some(e) = refused(self) {
            self.give_back(&merged);
            return Err(e);
        }
        if expired() || roots_now(self) != roots {
            self.give_back(&merged);
            return Err(VdiskError::Busy(format!(
                "`{name}` or a disk reading through it changed during set_parent; try again"
            )));
        }
        // The switch: one step, nothing awaited.
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let external = match new {
                NewParent::Snapshot(sid) => {
                    let s = st
                        .disks
                        .get_mut(&sid)
                        .expect("checked, nothing awaited since");
                    // Every extent the snapshot now shares with it was born before `g`.
                    s.rec.snap_gen = s.rec.snap_gen.max(g);
                    s.rec.external.clone()
                }
                NewParent::External(base) => Some(base.clone()),
            };
            for (x, exts) in planned {
                let d = st.disks.get(&x).expect("checked, nothing awaited since");
                let nsegs = d.rec.size_blocks.div_ceil(seg_blocks);
                let root = if exts.is_empty() {
                    None
                } else {
                    table::splice(None, 0, nsegs.max(1), &exts, &mut st.space)
                };
                let d = st
                    .disks
                    .get_mut(&x)
                    .expect("checked, nothing awaited since");
                table::set_root(&mut d.root, root, &mut st.space);
                d.rec.external = external.clone();
                if x == through[0] {
                    d.rec.parent = new_id;
                }
                d.rec.snap_gen = if reparents_lineage(d) {
                    d.rec.snap_gen.max(g)
                } else {
                    g
                };
            }
            // A writable disk re-parented is a clone (of a snapshot, or of the bdev).
            let first = st
                .disks
                .get_mut(&through[0])
                .expect("checked, nothing awaited since");
            if !reparents_lineage(first) {
                first.rec.kind = DiskKind::Clone;
            }
            st.changed();
        }
        // Every agent has the new views before the held I/O is let go.
        for &x in through {
            if let Err(stall) = self.push_view_until(x, false, deadline).await {
                tracing::warn!(pool = %self.shared.name, disk = name, %stall,
                    "set_parent: agents slow to acknowledge the new view");
            }
        }
        Ok(())
    }

    /// Allocates and writes a segment for each merge and each segment of what lies
    /// below in `plan` (of disk `name`, which reads `bottom` below every layer until the
    /// switch; over `parent`), adding `(virtual segment, segment)` to `merged`, which the
    /// caller gives back if the re-parenting does not happen.
    async fn write_merges(
        &self,
        plan: &[(u64, Plan)],
        merged: &mut Vec<(u64, u64)>,
        (name, bottom): (&str, &super::msg::Below),
        parent: &str,
    ) -> Result<(), VdiskError> {
        for (v, p) in plan {
            if !matches!(p, Plan::Merge(_) | Plan::MergeOverBelow(_) | Plan::Below) {
                continue;
            }
            let Some(seg) = self.st.borrow_mut().space.alloc_segment() else {
                return Err(VdiskError::NoSpace {
                    need: 1,
                    free: self.st.borrow().space.free_segments(),
                });
            };
            self.shared.fills.fresh(seg);
            merged.push((*v, seg));
            let done = match p {
                Plan::Merge(ext) => self.copy_resolved(ext, seg).await.map(|_| ()),
                Plan::MergeOverBelow(ext) => self.copy_over_below(ext, bottom, seg).await,
                // Nothing of its own: what lies below, whole.
                _ => {
                    let nothing = Extent {
                        vseg: *v,
                        len: 1,
                        state: ExtentState::Mapped,
                        birth: 0.into(),
                        layers: Layers::new(),
                    };
                    self.copy_over_below(&nothing, bottom, seg).await
                }
            };
            if let Err(status) = done {
                let keeping = format!(
                    "keeping what segment {v} of `{name}` read below its layers, where it holds \
                     none of its parent's data"
                );
                let what = match (p, bottom) {
                    (Plan::Merge(_), _) => {
                        format!("merging segment {v} of `{name}` over `{parent}`")
                    }
                    (_, super::msg::Below::Missing(uuid)) => {
                        format!("{keeping}: its external bdev {uuid} is missing")
                    }
                    _ => keeping,
                };
                return Err(VdiskError::Io { what, status });
            }
        }
        Ok(())
    }

    /// Writes into segment `seg` what `ext`'s layers show over `bottom` (what the disk
    /// reads below every layer), whole: zeros where no layer holds a block, or the
    /// external bdev's blocks there (zeros past its end; a media error while it is
    /// missing).
    async fn copy_over_below(
        &self,
        ext: &Extent,
        bottom: &super::msg::Below,
        seg: u64,
    ) -> Result<(), IoStatus> {
        if matches!(bottom, super::msg::Below::Zeros) {
            self.zero_segments(seg, 1).await?;
            return self.copy_resolved(ext, seg).await.map(|_| ());
        }
        self.copy_in(ext, Some(bottom), seg).await.map(|_| ())
    }

    /// Frees the segments of `merged` (written for a re-parenting that did not happen).
    fn give_back(&self, merged: &[(u64, u64)]) {
        let mut st = self.st.borrow_mut();
        for &(_, seg) in merged {
            st.space.unalloc_segment(seg);
        }
    }
}

/// Whether re-parenting `d` re-parents every disk reading through it too: a snapshot
/// or a read-only disk (whose extents its clones share), not a writable disk.
fn reparents_lineage(d: &DiskCtl) -> bool {
    d.rec.read_only || d.rec.kind == DiskKind::Snapshot
}

/// The disks a re-parenting switches: a writable disk alone, or a snapshot (or a
/// read-only disk) with every disk reading through it.
struct Lineage {
    snapshot: bool,
    /// The disks whose tables change, each after its parent (quiesced).
    through: Vec<u64>,
    /// `through`, the old parent and the new one (locked).
    locked: Vec<u64>,
    /// The first disk's parent (0: none).
    parent: u64,
}

impl Lineage {
    /// `Busy` if the disks reading through `id`, or its parent, changed since.
    fn changed(&self, st: &CtlState, id: u64, name: &str) -> Option<VdiskError> {
        let moved = self.snapshot
            && (Controller::reading_through(st, id) != self.through
                || st
                    .disks
                    .get(&id)
                    .is_some_and(|d| d.rec.parent != self.parent));
        moved.then(|| {
            VdiskError::Busy(format!(
                "the disks reading through `{name}` changed; try again"
            ))
        })
    }
}

impl Controller {
    /// The disks re-parenting `id` switches, and those it locks (`also`: the new
    /// parent).
    fn lineage_to_switch(&self, id: u64, also: &[u64]) -> Lineage {
        let st = self.st.borrow();
        let d = &st.disks[&id];
        let snapshot = reparents_lineage(d);
        let through = if snapshot {
            Self::reading_through(&st, id)
        } else {
            vec![id]
        };
        let mut locked = through.clone();
        locked.extend(also);
        if snapshot && d.rec.parent != 0 {
            locked.push(d.rec.parent);
        }
        Lineage {
            snapshot,
            through,
            locked,
            parent: d.rec.parent,
        }
    }
}

/// The extents `plan` makes, in runs as the table keeps them; `merged` gives the segment
/// written for each merge and zeroed segment in turn. An own extent that was writable in
/// place is re-born in `born` (it stays so); the new segments are born in `fresh`
/// (`born` for a writable disk; for a snapshot a generation its clones copy on write).
fn planned_extents(
    plan: Vec<(u64, Plan)>,
    merged: &mut impl Iterator<Item = (u64, u64)>,
    born: u64,
    fresh: u64,
) -> Vec<Extent> {
    let exts: Vec<Extent> = plan
        .into_iter()
        .map(|(v, p)| match p {
            Plan::Parent(t) => t,
            Plan::Own { ext, writable } => Extent {
                birth: if writable { born } else { ext.birth.get() }.into(),
                ..ext
            },
            Plan::Stack {
                layers,
                birth,
                writable,
            } => Extent {
                vseg: v,
                len: 1,
                state: ExtentState::Mapped,
                birth: if writable { born } else { birth }.into(),
                layers,
            },
            Plan::Merge(_) | Plan::MergeOverBelow(_) | Plan::Below => {
                let (mv, seg) = merged.next().expect("one segment per merge");
                debug_assert_eq!(mv, v);
                let layer = if matches!(p, Plan::Merge(_)) {
                    Layer::partial(seg)
                } else {
                    Layer::full(seg)
                };
                Extent {
                    vseg: v,
                    len: 1,
                    state: ExtentState::Mapped,
                    birth: fresh.into(),
                    layers: Layers::from_slice(&[layer]),
                }
            }
        })
        .collect();
    coalesce(exts)
}

/// `exts` (one-segment extents and whole extents, sorted) with adjacent plain extents
/// of consecutive segments and one birth joined into runs, as the table keeps them.
fn coalesce(exts: Vec<Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(exts.len());
    for e in exts {
        if let Some(last) = out.last_mut()
            && last.is_plain()
            && e.is_plain()
            && last.end() == e.vseg
            && last.birth == e.birth
            && last.layers[0].seg() + last.len as u64 == e.layers[0].seg()
            && last.len as u64 + e.len as u64 <= MAX_RUN_SEGMENTS as u64
        {
            last.len += e.len;
            continue;
        }
        out.push(e);
    }
    out
}
