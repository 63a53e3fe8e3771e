//! Reverting a disk to a snapshot in place (issue 22): the disk keeps its id, name,
//! UUID (so its NGUID), bdev, exports, read-only flag and copy-on-write policy; its
//! table becomes the snapshot's, shared copy-on-write exactly as a new clone of the
//! snapshot starts, and its size the snapshot's.
//!
//! **Which snapshots.** Any snapshot of the disk's family: the disk and the snapshot
//! reach the same oldest ancestor through their parent links (its own snapshots, older
//! or newer than the one it was last reverted to, and the snapshots of its clones'
//! family). ZFS refuses anything but the latest snapshot (or destroys the later ones);
//! `rbd snap rollback` takes any snapshot of the image. A table here is shared, not a
//! chain of deltas, so every snapshot of the family is as cheap and as safe to go back
//! (or forward) to, and none needs destroying. A snapshot of an unrelated disk is
//! refused: that is a clone, not a revert.
//!
//! **How.** Under the disk's lock (and the snapshot's), the disk's agents are quiesced
//! with a time limit: new I/O is held, I/O in flight completes against the old table.
//! Then, in one step with nothing awaited, the disk's table root is replaced by the
//! snapshot's (the snapshot's root gains a reference, the old one loses one: what only
//! the disk held goes back to the allocator as a delete releases it) and its record
//! changes (size, parent, snapshot generation). The new view is sent to every agent
//! before the quiesce ends, so the held I/O sees the snapshot's contents. A write
//! parked on a mapping fault when the revert began is retried after it, whole, on the
//! reverted disk (as if issued after the revert).
//!
//! **Durable and atomic.** The intent log describes table changes as splices; a root
//! replaced whole is not one, so the revert makes the next durable point a checkpoint
//! (`intent.rs`), which the caller runs before answering (`pool::durable`). The
//! checkpoint's superblock write switches the disk: a crash before it leaves the old
//! disk (and its log), after it the reverted one — never a mix.

use super::VdiskError;
use super::controller::{Controller, CtlState, DiskCtl};
use super::locks::LockGuard;
use super::meta::directory::{DiskKind, JobRecord};
use super::table;
use crate::reactor;
use crate::reactor::until;
use std::time::Duration;

/// The oldest ancestor of `id` through parent links (itself if it has no parent).
/// Disks `id` and `sid` of the pool, or the refusal naming the one that is gone
/// (`name` for `id`, `other` for `sid`).
pub(super) fn disk_pair<'a>(
    st: &'a CtlState,
    (id, sid): (u64, u64),
    name: &str,
    other: &str,
) -> Result<(&'a DiskCtl, &'a DiskCtl), VdiskError> {
    match (st.disks.get(&id), st.disks.get(&sid)) {
        (Some(d), Some(s)) => Ok((d, s)),
        (Some(_), None) => Err(VdiskError::NotFound(other.to_string())),
        _ => Err(VdiskError::NotFound(name.to_string())),
    }
}

fn family_root(st: &CtlState, mut id: u64) -> u64 {
    // A parent chain is at most as long as there are disks; the bound only guards
    // against a cycle in damaged state.
    for _ in 0..=st.disks.len() {
        match st.disks.get(&id).map(|d| d.rec.parent) {
            Some(p) if p != 0 && st.disks.contains_key(&p) => id = p,
            _ => break,
        }
    }
    id
}

impl Controller {
    /// Why disk `id` (`name`) may not be reverted to `sid` (`snapshot`) now, if it may
    /// not. `ours`: the disk is quiesced by the revert itself.
    fn revert_refused(
        st: &CtlState,
        (id, sid): (u64, u64),
        name: &str,
        snapshot: &str,
        ours: bool,
    ) -> Option<VdiskError> {
        let (d, s) = match disk_pair(st, (id, sid), name, snapshot) {
            Ok(pair) => pair,
            Err(e) => return Some(e),
        };
        if d.rec.kind == DiskKind::Snapshot {
            return Some(VdiskError::InvalidParam {
                field: "name",
                reason: format!("`{name}` is a snapshot; snapshots are not reverted (clone it)"),
            });
        }
        if s.rec.kind != DiskKind::Snapshot {
            return Some(VdiskError::InvalidParam {
                field: "snapshot",
                reason: format!("`{snapshot}` is not a snapshot"),
            });
        }
        if family_root(st, id) != family_root(st, sid) {
            return Some(VdiskError::InvalidParam {
                field: "snapshot",
                reason: format!(
                    "`{snapshot}` is not a snapshot of `{name}`'s family (no common ancestor); \
                     clone it instead"
                ),
            });
        }
        if d.job_cancel.is_some() || d.rec.job != JobRecord::None {
            return Some(VdiskError::Busy(format!(
                "`{name}` is being split from its parent; cancel the job or wait for it"
            )));
        }
        if let Some(c) = st.disks.values().find(|c| c.rec.parent == id) {
            return Some(VdiskError::Busy(format!(
                "`{}` was cloned from `{name}` and names it as its parent; delete or split \
                 the clone first",
                c.rec.name
            )));
        }
        if d.quiesced && !ours {
            return Some(VdiskError::Busy(format!(
                "`{name}` is quiesced (tessera_quiesce); activate it first"
            )));
        }
        None
    }

    /// The first steps of an operation that switches disks' tables for ones made from
    /// other disks' (a revert, a set_parent, a set_parent_bdev), described as `what`:
    /// unless `refused` refuses it, the disks `locked` are locked and those `quiesced`
    /// quiesced, all by `deadline` (`limit` from the start); `refused` is asked again
    /// once the locks are held. Returns the locks and the quiesce, which the caller
    /// activates.
    pub(super) async fn hold_for_switch(
        &self,
        (locked, quiesced): (Vec<u64>, Vec<u64>),
        what: &str,
        limit: Duration,
        deadline: reactor::Nanos,
        refused: impl Fn(&CtlState) -> Option<VdiskError>,
    ) -> Result<(Vec<LockGuard>, u64), VdiskError> {
        self.check_usable()?;
        if let Some(e) = refused(&self.st.borrow()) {
            return Err(e);
        }
        let Some(locks) = until(deadline, self.locks.disks(locked)).await else {
            return Err(VdiskError::Busy(format!(
                "{what}: operations on the disks still running after {} ms; try again",
                limit.as_millis()
            )));
        };
        self.check_usable()?;
        if let Some(e) = refused(&self.st.borrow()) {
            return Err(e);
        }
        let q = self
            .quiesce_until(quiesced, deadline)
            .await
            .map_err(|e| match e {
                VdiskError::DrainTimeout(s) => VdiskError::DrainTimeout(s.during(what)),
                e => e,
            })?;
        Ok((locks, q))
    }

    /// Reverts disk `name` to snapshot `snapshot` (see the module documentation).
    /// `limit` bounds the wait for the locks and for the disk's I/O in flight; past it
    /// nothing has changed and the revert fails with what it waited for. The caller
    /// makes the change durable before answering.
    pub(crate) async fn revert_disk(
        &self,
        name: &str,
        snapshot: &str,
        limit: Duration,
    ) -> Result<(), VdiskError> {
        self.check_usable()?;
        let id = self.id_of(name)?;
        let sid = self.id_of(snapshot)?;
        let what = format!("revert of `{name}` to `{snapshot}`");
        let deadline = reactor::now().after(limit);
        // New I/O is held from here; what is in flight drains against the old table.
        let (_locks, q) = self
            .hold_for_switch((vec![id, sid], vec![id]), &what, limit, deadline, |st| {
                Self::revert_refused(st, (id, sid), name, snapshot, false)
            })
            .await?;
        let expired = self
            .quiesces
            .borrow()
            .get(&q)
            .is_none_or(|q| q.expired.get());
        if expired {
            return Err(VdiskError::QuiesceTimeout(format!("`{name}` ({what})")));
        }
        // The fills as the drained writes left them, logged before the switch.
        self.persist_dirty_fills();
        let refused = self.check_usable().err().or_else(|| {
            let st = self.st.borrow();
            Self::revert_refused(&st, (id, sid), name, snapshot, true)
        });
        if let Some(e) = refused {
            let _ = self.activate(q).await;
            return Err(e);
        }
        // The switch: one step, nothing awaited, so a checkpoint captures the old disk
        // or the reverted one.
        let (bdev, size_blocks) = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let g = st.take_generation()?;
            let s = st
                .disks
                .get_mut(&sid)
                .expect("checked above, nothing awaited");
            // Every extent the two now share was born before `g`: writes to them by the
            // disk copy on write, as a new clone's do.
            s.rec.snap_gen = s.rec.snap_gen.max(g);
            let (root, size_blocks) = (s.root.clone(), s.rec.size_blocks);
            let d = st
                .disks
                .get_mut(&id)
                .expect("checked above, nothing awaited");
            table::set_root(&mut d.root, root, &mut st.space);
            d.rec.size_blocks = size_blocks;
            d.rec.parent = sid;
            d.rec.snap_gen = g;
            let bdev = d.bdev.clone();
            st.changed();
            (bdev, size_blocks)
        };
        bdev.set_size_blocks(size_blocks);
        // Every agent has the new view before the held I/O is let go: the commands
        // reach each core in order, the view before the activation.
        if let Err(stall) = self.push_view_until(id, false, deadline).await {
            tracing::warn!(pool = %self.shared.name, disk = name, %stall,
                "revert: agents slow to acknowledge the new view");
        }
        // Had the quiesce's time limit struck meanwhile, its own activation came after
        // the view as well; either way the revert is done.
        let _ = self.activate(q).await;
        self.update_free();
        tracing::info!(pool = %self.shared.name, disk = name, snapshot, "disk reverted to snapshot");
        Ok(())
    }
}
