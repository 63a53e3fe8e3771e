//! Snapshots, clones and consistency groups (seeds 000, 002).
//!
//! **Snapshot**: raise the origin's snapshot generation in its agents' views with the
//! blocking flag (every earlier write drains; every later write faults, because every
//! existing extent is now born at or before the snapshot), persist the fills those
//! writes changed, and share the table root with the new snapshot disk. Nothing is
//! copied: O(1) whatever the size of the disk. A **consistency group** quiesces all
//! its disks first (with a time limit) so the snapshots are one point in time.
//!
//! **Clone**: a writable disk whose table starts as the snapshot's; everything is
//! shared until written. Writes to what is shared are copy-on-write (`cow.rs`). The
//! source of a clone (any read-only disk) gets its snapshot generation raised as an
//! origin does, so that should it be made writable again it copies on write too.

use super::VdiskError;
use super::commit::dir_pages_for;
use super::controller::{Controller, DiskCtl, Quiesce, unix_now, validate_name};
use super::disk::VDisk;
use super::meta::NO_PAGE;
use super::meta::directory::{DiskKind, DiskRecord, JobRecord};
use super::msg::AgentCmd;
use crate::reactor::until;
use crate::reactor::{self, Nanos};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

impl Controller {
    /// Quiesces `disks`: their agents hold new I/O and drain what is in flight. Unless
    /// activated within `limit`, the quiesce cancels itself and I/O resumes.
    pub(crate) async fn quiesce(
        &self,
        disks: Vec<u64>,
        limit: Duration,
    ) -> Result<u64, VdiskError> {
        self.quiesce_until(disks, reactor::now().after(limit)).await
    }

    /// Quiesces `disks` until `deadline` at most. If what is in flight has not drained
    /// by then (a stuck request), the quiesce is cancelled — every disk resumes at once —
    /// and fails with the stall; else it holds I/O until activated or until the deadline.
    pub(crate) async fn quiesce_until(
        &self,
        disks: Vec<u64>,
        deadline: Nanos,
    ) -> Result<u64, VdiskError> {
        let expired = Rc::new(Cell::new(false));
        // All disks at once: none holds I/O longer than the slowest drain.
        let drains: Vec<_> = disks
            .iter()
            .map(|&d| {
                let me = self.rc();
                reactor::spawn_local(async move {
                    me.command_agents_until(d, AgentCmd::Quiesce, true, deadline)
                        .await
                })
            })
            .collect();
        let mut stall = None;
        for t in drains {
            if let Err(s) = t.await {
                stall.get_or_insert(s);
            }
        }
        if let Some(s) = stall {
            for &d in &disks {
                let _ = self.command_agents(d, AgentCmd::Activate, false).await;
            }
            return Err(VdiskError::DrainTimeout(s.during("quiesce")));
        }
        let id = {
            let mut q = self.quiesces.borrow_mut();
            let id = q.keys().next_back().map_or(1, |k| k + 1);
            let me = self.rc();
            let exp = expired.clone();
            let timer = reactor::spawn_local(async move {
                reactor::sleep_until(deadline).await;
                if let Some(q) = me.quiesces.borrow_mut().remove(&id) {
                    exp.set(true);
                    tracing::warn!(pool = %me.shared.name, id, "quiesce time limit reached: cancelled, I/O resumes");
                    for d in q.disks {
                        let me2 = me.clone();
                        reactor::spawn_local(async move {
                            let _ = me2.command_agents(d, AgentCmd::Activate, false).await;
                        })
                        .detach();
                    }
                }
            });
            q.insert(
                id,
                Quiesce {
                    disks: disks.clone(),
                    expired,
                    timer: Some(timer),
                },
            );
            id
        };
        Ok(id)
    }

    /// Ends quiesce `id`; an error if its time limit already cancelled it.
    pub(crate) async fn activate(&self, id: u64) -> Result<(), VdiskError> {
        let q = self.quiesces.borrow_mut().remove(&id);
        let Some(mut q) = q else {
            return Err(VdiskError::QuiesceTimeout(format!("quiesce {id}")));
        };
        q.timer.take();
        for d in q.disks {
            let _ = self.command_agents(d, AgentCmd::Activate, false).await;
        }
        Ok(())
    }

    /// Snapshots each origin as the paired name, all at one point in time. With more
    /// than one origin (a consistency group) the disks are quiesced first. `limit`
    /// bounds the whole wait for the origins' I/O (the quiesce, the drain of earlier
    /// writes): past it the snapshot is cancelled and undone — no snapshot, the origins
    /// serve I/O as before — and fails with the stall.
    ///
    /// A snapshot takes the UUID given with its pair (a received snapshot keeps its
    /// source's, as ZFS keeps a snapshot's GUID), else a new one; a UUID a disk of the
    /// pool already has is refused ([`VdiskError::UuidTaken`]; the target checks its
    /// other bdevs).
    pub(crate) async fn snapshot(
        &self,
        pairs: Vec<(String, String, Option<uuid::Uuid>)>,
        limit: Duration,
    ) -> Result<Vec<Arc<VDisk>>, VdiskError> {
        let uuids: Vec<Option<uuid::Uuid>> = pairs.iter().map(|p| p.2).collect();
        let pairs: Vec<(String, String)> = pairs.into_iter().map(|(o, s, _)| (o, s)).collect();
        if pairs.is_empty() {
            return Err(VdiskError::InvalidParam {
                field: "snapshots",
                reason: "nothing to snapshot".into(),
            });
        }
        let mut origins = Vec::new();
        {
            let st = self.st.borrow();
            if let Some(f) = &st.failed {
                return Err(VdiskError::PoolFailed(f.clone()));
            }
            let mut names = BTreeSet::new();
            let mut chosen = BTreeSet::new();
            for ((o, s), u) in pairs.iter().zip(&uuids) {
                validate_name(s)?;
                if st.disk_by_name(s).is_some() || !names.insert(s.clone()) {
                    return Err(VdiskError::Exists(s.clone()));
                }
                if let Some(u) = u {
                    if let Some(e) = uuid_taken(&st, *u) {
                        return Err(e);
                    }
                    if !chosen.insert(*u) {
                        return Err(VdiskError::InvalidParam {
                            field: "uuid",
                            reason: format!("{u} is given to two snapshots"),
                        });
                    }
                }
                let id = st
                    .disk_by_name(o)
                    .ok_or_else(|| VdiskError::NotFound(o.clone()))?;
                if st.disks[&id].rec.kind == DiskKind::Snapshot {
                    return Err(VdiskError::InvalidParam {
                        field: "lvol_name",
                        reason: format!(
                            "`{o}` is a snapshot already; clone it to snapshot the clone"
                        ),
                    });
                }
                if origins.contains(&id) {
                    return Err(VdiskError::InvalidParam {
                        field: "lvol_name",
                        reason: format!("`{o}` is named twice"),
                    });
                }
                origins.push(id);
            }
        }
        let deadline = reactor::now().after(limit);
        let Some(_locks) = until(deadline, self.locks.disks(origins.clone())).await else {
            return Err(VdiskError::Busy(format!(
                "snapshot: operations on {} still running after {} ms; try again",
                names_of(&pairs),
                limit.as_millis()
            )));
        };
        // Metadata for the new directory records (the tables are shared: no pages).
        let _meta = {
            let n = self.st.borrow().disks.len();
            self.reserve_meta(dir_pages_for(n + pairs.len()) - dir_pages_for(n))?
        };
        // Refused before anything is quiesced. (Should another operation take the last
        // generation during the quiesce, the take below refuses, and the quiesce ends
        // at its time limit.)
        self.st.borrow().generation_left()?;
        let group = origins.len() > 1;
        let q = if group {
            Some(self.quiesce_until(origins.clone(), deadline).await?)
        } else {
            None
        };
        // One generation for the whole group: one point in time.
        let (gen_now, before) = {
            let mut st = self.st.borrow_mut();
            let g = st.take_generation()?;
            let mut before = Vec::new();
            for id in &origins {
                if let Some(d) = st.disks.get_mut(id) {
                    before.push((*id, d.rec.snap_gen));
                    d.rec.snap_gen = g;
                }
            }
            st.changed();
            (g, before)
        };
        // Every earlier write drains; later ones fault on the shared extents.
        for (&id, (o, _)) in origins.iter().zip(&pairs) {
            if let Err(mut stall) = self.push_view_until(id, true, deadline).await {
                stall.limit = limit;
                // Cancelled: nothing is shared yet, so the origins' extents become
                // writable again as they were, and their agents learn it at once.
                {
                    let mut st = self.st.borrow_mut();
                    for &(id, g) in &before {
                        if let Some(d) = st.disks.get_mut(&id) {
                            d.rec.snap_gen = g;
                        }
                    }
                    st.changed();
                }
                for &id in &origins {
                    let _ = self.push_view(id, false).await;
                }
                if let Some(qid) = q {
                    let _ = self.activate(qid).await;
                }
                return Err(VdiskError::DrainTimeout(
                    stall.during(format!("snapshot of `{o}`")),
                ));
            }
        }
        if let Some(qid) = q
            && self
                .quiesces
                .borrow()
                .get(&qid)
                .is_none_or(|q| q.expired.get())
        {
            // The time limit struck while we drained: undo (nothing was shared yet; a
            // raised snapshot generation only makes the next writes copy-on-write).
            return Err(VdiskError::QuiesceTimeout(format!(
                "{} disks",
                origins.len()
            )));
        }
        // The fills' bits as the drained writes left them: their leaves are copied
        // before the tables are shared (and the log records them).
        self.persist_dirty_fills();
        // Looked at again before anything is added: an origin may have been deleted, or
        // a disk given one of the names, while we waited for the locks and the drains.
        let refused = {
            let st = self.st.borrow();
            pairs
                .iter()
                .zip(&origins)
                .zip(&uuids)
                .find_map(|(((o, s), id), u)| {
                    if !st.disks.contains_key(id) {
                        Some(VdiskError::NotFound(o.clone()))
                    } else if st.disk_by_name(s).is_some() {
                        Some(VdiskError::Exists(s.clone()))
                    } else {
                        u.and_then(|u| uuid_taken(&st, u))
                    }
                })
        };
        if let Some(e) = refused {
            if let Some(qid) = q {
                let _ = self.activate(qid).await;
            }
            return Err(e);
        }
        let mut out = Vec::new();
        for (((_, snap_name), &origin), chosen) in pairs.iter().zip(&origins).zip(&uuids) {
            let bdev = {
                let mut st = self.st.borrow_mut();
                let id = st.take_disk_id();
                // Checked just above, and nothing was awaited since.
                let o = st.disks.get_mut(&origin).expect("origin checked above");
                let root = o.root.clone();
                if let Some(r) = &root {
                    r.retain();
                }
                let rec = DiskRecord {
                    id,
                    uuid: chosen.unwrap_or_else(uuid::Uuid::new_v4),
                    name: snap_name.clone(),
                    size_blocks: o.rec.size_blocks,
                    kind: DiskKind::Snapshot,
                    read_only: true,
                    thin: o.rec.thin,
                    parent: o.rec.parent,
                    snap_gen: gen_now,
                    created_gen: gen_now,
                    root_page: NO_PAGE,
                    cow_policy: o.rec.cow_policy,
                    job: JobRecord::None,
                    created_unix: unix_now(),
                    // A snapshot reads through to what its origin reads through to.
                    external: o.rec.external.clone(),
                };
                o.rec.parent = id;
                let bdev = VDisk::new(&self.shared, &rec).map_err(VdiskError::Bdev)?;
                st.disks.insert(id, DiskCtl::new(rec, root, bdev.clone()));
                st.changed();
                bdev
            };
            out.push(bdev);
        }
        self.update_free();
        if let Some(qid) = q {
            self.activate(qid).await?;
        }
        tracing::info!(pool = %self.shared.name, snapshots = ?pairs, "snapshot taken");
        Ok(out)
    }

    /// Creates a writable clone of `snapshot` (any read-only disk) called `name`.
    pub(crate) async fn clone_disk(
        &self,
        snapshot: &str,
        name: &str,
    ) -> Result<Arc<VDisk>, VdiskError> {
        validate_name(name)?;
        let sid = self.id_of(snapshot)?;
        let _lock = self.locks.disk(sid).await;
        let _meta = {
            let n = self.st.borrow().disks.len();
            self.reserve_meta(dir_pages_for(n + 1) - dir_pages_for(n))?
        };
        // A disk made read-only may have left changed fills: their leaves are the
        // clone's too.
        self.persist_dirty_fills();
        let bdev = {
            let mut st = self.st.borrow_mut();
            if let Some(f) = &st.failed {
                return Err(VdiskError::PoolFailed(f.clone()));
            }
            if st.disk_by_name(name).is_some() {
                return Err(VdiskError::Exists(name.to_string()));
            }
            let s = st
                .disks
                .get(&sid)
                .ok_or_else(|| VdiskError::NotFound(snapshot.into()))?;
            if !s.rec.read_only {
                return Err(VdiskError::InvalidParam {
                    field: "snapshot_name",
                    reason: format!(
                        "`{snapshot}` is not a snapshot (not read-only); snapshot it first"
                    ),
                });
            }
            let g = st.take_generation()?;
            let id = st.take_disk_id();
            let s = &st.disks[&sid];
            let root = s.root.clone();
            if let Some(r) = &root {
                r.retain();
            }
            let (size_blocks, cow_policy) = (s.rec.size_blocks, s.rec.cow_policy);
            let external = s.rec.external.clone();
            // From now on the source shares every extent with the clone: should it be made
            // writable again (a disk, not a snapshot), its writes must copy on write, as an
            // origin's do after a snapshot. Its extents were all born before `g`.
            if let Some(s) = st.disks.get_mut(&sid) {
                s.rec.snap_gen = s.rec.snap_gen.max(g);
            }
            let rec = DiskRecord {
                id,
                uuid: uuid::Uuid::new_v4(),
                name: name.to_string(),
                size_blocks,
                kind: DiskKind::Clone,
                read_only: false,
                thin: true,
                parent: sid,
                snap_gen: g,
                created_gen: g,
                root_page: NO_PAGE,
                cow_policy,
                job: JobRecord::None,
                created_unix: unix_now(),
                external,
            };
            let bdev = VDisk::new(&self.shared, &rec).map_err(VdiskError::Bdev)?;
            st.disks.insert(id, DiskCtl::new(rec, root, bdev.clone()));
            st.changed();
            bdev
        };
        self.update_free();
        // The source's agents learn the raised generation before anyone can clear its
        // read-only flag (that takes the lock held here).
        let _ = self.push_view(sid, false).await;
        tracing::info!(pool = %self.shared.name, snapshot, clone = name, "clone created");
        Ok(bdev)
    }
}

/// The refusal of UUID `u` if a disk of the pool has it.
fn uuid_taken(st: &super::controller::CtlState, u: uuid::Uuid) -> Option<VdiskError> {
    st.disks
        .values()
        .find(|d| d.rec.uuid == u)
        .map(|d| VdiskError::UuidTaken {
            uuid: u,
            name: d.rec.name.clone(),
        })
}

/// The origins of `pairs`, for messages.
fn names_of(pairs: &[(String, String)]) -> String {
    let names: Vec<String> = pairs.iter().map(|(o, _)| format!("`{o}`")).collect();
    names.join(", ")
}
