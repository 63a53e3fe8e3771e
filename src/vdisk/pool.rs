//! The public, thread-safe [`Pool`] handle: every operation runs on the pool's controller
//! core. (What every core knows of a pool — its containers, where a segment lives — is
//! in `shared.rs`; creating and opening one in `load.rs`.)

use super::agent;
use super::controller::{self, Controller, TimeLimits};
use super::diff::{self, Allocation, BlockRange, RunsPage};
use super::disk::VDisk;
use super::grow::Grown;
use super::lifecycle::DiskInfo;
use super::load::{self, PoolOptions};
use super::map::{Extent, PhysSeg};
use super::shared::PoolShared;
use super::{CowPolicy, VdiskError};
use crate::bdev::{Bdev, Channel};
use crate::reactor::Cores;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use uuid::Uuid;

impl VDisk {
    /// The pool the disk lives in.
    pub fn pool(&self) -> Pool {
        Pool {
            shared: self.shared.clone(),
        }
    }
}

/// Commits after a structural operation succeeded, so that what the caller was told
/// exists survives a crash (as SPDK persists lvol metadata before answering).
pub(crate) async fn durable<T>(c: &Controller, r: Result<T, VdiskError>) -> Result<T, VdiskError> {
    let v = r?;
    c.make_durable().await.map_err(|status| VdiskError::Io {
        what: "committing the change".into(),
        status,
    })?;
    Ok(v)
}

/// Where a pool's intent log stands (`intent.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LogStatus {
    /// Pages of the ring.
    pub pages: u64,
    /// The ring's first page in the metadata area.
    pub first_page: u64,
    /// The first page of the mirror ring, if the log has one.
    pub mirror: Option<u64>,
    /// The sequence number of the next page appended (pages appended since the pool
    /// was created, plus a ring's worth for each open that found its log's last pages
    /// already checkpointed).
    pub next_seq: u64,
    /// The LSN of the next record.
    pub next_lsn: u64,
    /// Where replay starts in the superblock in force.
    pub replay_seq: u64,
    /// Records the last open replayed.
    pub replayed_at_open: u64,
    /// Bytes of records waiting for the next append.
    pub pending_bytes: usize,
}

/// A pool of storage containers holding virtual disks. Cheap to clone, usable from any
/// thread; every operation runs on the pool's controller core.
#[derive(Clone)]
pub struct Pool {
    pub(crate) shared: Arc<PoolShared>,
}

impl Pool {
    /// Formats `containers` (and `metadata`, if given) as a new, empty pool and opens
    /// it with its controller on `ctl_core`.
    pub async fn create(
        cores: &Cores,
        ctl_core: usize,
        containers: Vec<Arc<dyn Bdev>>,
        metadata: Option<Arc<dyn Bdev>>,
        opts: PoolOptions,
    ) -> Result<Pool, VdiskError> {
        let cores2 = cores.clone();
        cores
            .spawn_on(ctl_core, move || async move {
                load::create(cores2, ctl_core, containers, metadata, opts).await
            })
            .await
            .map_err(|_| VdiskError::Stopped)?
            .map(|shared| Pool { shared })
    }

    /// Opens an existing pool from its bdevs (data containers and metadata bdev, in any
    /// order), recovering to the last committed state.
    pub async fn open(
        cores: &Cores,
        ctl_core: usize,
        bdevs: Vec<Arc<dyn Bdev>>,
    ) -> Result<Pool, VdiskError> {
        let cores2 = cores.clone();
        cores
            .spawn_on(ctl_core, move || async move {
                load::open(cores2, ctl_core, bdevs).await
            })
            .await
            .map_err(|_| VdiskError::Stopped)?
            .map(|shared| Pool { shared })
    }

    /// Runs `f` with the controller, on its core.
    pub(crate) fn on_ctl<R, F, Fut>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<R, VdiskError>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(Rc<Controller>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, VdiskError>> + 'static,
    {
        self.on_ctl_with(false, f)
    }

    /// [`Pool::on_ctl`] for an operation that holds a disk's I/O while it runs (a
    /// snapshot, a revert): on the controller's core it runs before the tasks already
    /// ready each time it is woken, so that write faults queued there do not add a
    /// turn to each of its steps.
    pub(crate) fn on_ctl_first<R, F, Fut>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<R, VdiskError>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(Rc<Controller>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, VdiskError>> + 'static,
    {
        self.on_ctl_with(true, f)
    }

    fn on_ctl_with<R, F, Fut>(
        &self,
        first: bool,
        f: F,
    ) -> impl Future<Output = Result<R, VdiskError>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(Rc<Controller>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, VdiskError>> + 'static,
    {
        let id = self.shared.id;
        let make = move || async move {
            match controller::lookup(id) {
                Some(c) => f(c).await,
                None => Err(VdiskError::Stopped),
            }
        };
        let h = self
            .shared
            .cores
            .spawn_on_with(self.shared.ctl_core, make, first);
        async move { h.await.map_err(|_| VdiskError::Stopped)? }
    }

    /// The pool's name (now: a rename changes it).
    pub fn name(&self) -> String {
        self.shared.name.get()
    }

    /// The pool's UUID.
    pub fn uuid(&self) -> Uuid {
        self.shared.uuid
    }

    /// Segment size in bytes.
    pub fn segment_bytes(&self) -> u64 {
        self.shared.geo.segment_bytes()
    }

    /// Block size of the pool's disks.
    pub fn block_size(&self) -> u32 {
        self.shared.geo.block_size
    }

    /// The bdevs the pool is made of (containers, then the metadata bdev if separate).
    pub fn bdevs(&self) -> Vec<Arc<dyn Bdev>> {
        let mut v: Vec<Arc<dyn Bdev>> = self
            .shared
            .containers
            .iter()
            .map(|c| c.bdev.clone())
            .collect();
        if self.shared.separate_metadata {
            v.push(self.shared.meta_bdev.clone());
        }
        v
    }

    /// Segments usable for data, and those free now.
    pub fn space(&self) -> (u64, u64) {
        (
            self.shared.data_segments(),
            self.shared.free_segments.load(Ordering::Relaxed),
        )
    }

    /// The most segments the pool may grow to (its space map's room, laid out when it
    /// was created; see `grow.rs`).
    pub fn max_segments(&self) -> u64 {
        self.shared.max_segments
    }

    /// Grows the pool onto the space its last bdev gained (`bdev_lvol_grow_lvstore`),
    /// durably: the new segments are free once this returns.
    pub fn grow(&self) -> impl Future<Output = Result<Grown, VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move { c.grow_pool().await })
    }

    /// Creates a virtual disk of `size_bytes`: thin (allocate on first write) or fully
    /// allocated (every segment allocated and zeroed now).
    pub fn create_disk(
        &self,
        name: &str,
        size_bytes: u64,
        thin: bool,
    ) -> impl Future<Output = Result<Arc<VDisk>, VdiskError>> + Send + 'static {
        let name = name.to_string();
        self.on_ctl(move |c| async move {
            durable(&c, c.create_disk(&name, size_bytes, thin, None, None).await).await
        })
    }

    /// [`Pool::create_disk`] with a chosen UUID (restoring a saved configuration).
    pub fn create_disk_with_uuid(
        &self,
        name: &str,
        size_bytes: u64,
        thin: bool,
        uuid: Option<Uuid>,
    ) -> impl Future<Output = Result<Arc<VDisk>, VdiskError>> + Send + 'static {
        let name = name.to_string();
        self.on_ctl(move |c| async move {
            durable(&c, c.create_disk(&name, size_bytes, thin, uuid, None).await).await
        })
    }

    /// Creates `name`, a thin clone of the bdev `ext` outside the pool (an external
    /// snapshot, SPDK's `bdev_lvol_clone_bdev`): the bdev's size; what it has not
    /// written reads from `ext`, which it never writes (`esnap.rs`).
    pub fn clone_bdev(
        &self,
        ext: Arc<dyn Bdev>,
        name: &str,
    ) -> impl Future<Output = Result<Arc<VDisk>, VdiskError>> + Send + 'static {
        self.clone_bdev_with_uuid(ext, name, None)
    }

    /// [`Pool::clone_bdev`] keeping `uuid` when given (restoring a saved configuration).
    pub fn clone_bdev_with_uuid(
        &self,
        ext: Arc<dyn Bdev>,
        name: &str,
        uuid: Option<Uuid>,
    ) -> impl Future<Output = Result<Arc<VDisk>, VdiskError>> + Send + 'static {
        let name = name.to_string();
        self.on_ctl(
            move |c| async move { durable(&c, c.clone_external(ext, &name, uuid).await).await },
        )
    }

    /// Makes `name` read through to the bdev `ext` where it holds nothing of its own
    /// (SPDK's `bdev_lvol_set_parent_bdev`; `reparent.rs` has the rules). Its I/O is
    /// held across the switch, for at most the drain time limit.
    pub fn set_external_parent(
        &self,
        name: &str,
        ext: Arc<dyn Bdev>,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let name = name.to_string();
        self.on_ctl(move |c| async move {
            let limit = c.limits.get().drain;
            durable(&c, c.set_external_parent(&name, ext, limit).await).await
        })
    }

    /// Calls `f` (on the pool's controller core) each time a split or decouple that
    /// ran in the background let an external snapshot go, once that is durable: the
    /// bdev may be claimed by one disk fewer.
    pub fn on_external_released(&self, f: impl Fn() + Send + Sync + 'static) {
        *self
            .shared
            .on_external_released
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    /// Makes `name` a clone of the snapshot `parent` of this pool: what it holds of its
    /// own stays, everything else reads from `parent` (SPDK's `bdev_lvol_set_parent`;
    /// `reparent.rs` has the rules). Its I/O is held across the switch, for at most the
    /// drain time limit.
    pub fn set_parent(
        &self,
        name: &str,
        parent: &str,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let (n, p) = (name.to_string(), parent.to_string());
        self.on_ctl(move |c| async move {
            let limit = c.limits.get().drain;
            durable(&c, c.set_parent(&n, &p, limit).await).await
        })
    }

    /// The external snapshots the pool's disks name: `(uuid, name, present)`.
    pub fn external_bases(
        &self,
    ) -> impl Future<Output = Result<Vec<(Uuid, String, bool)>, VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move { Ok(c.external_bases()) })
    }

    /// Hands the pool the bdev `ext`: disks whose external snapshot has its UUID read
    /// through to it from now on (no longer degraded). Returns their names.
    pub fn attach_external(
        &self,
        ext: Arc<dyn Bdev>,
    ) -> impl Future<Output = Result<Vec<String>, VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move { Ok(c.attach_external(ext).await) })
    }

    /// The disk called `name`.
    pub fn disk(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Arc<VDisk>, VdiskError>> + Send + 'static {
        let name = name.to_string();
        self.on_ctl(move |c| async move { c.disk_bdev(&name) })
    }

    /// Whether `disk` is one of this pool's (or was: a deleted disk keeps its pool).
    pub fn holds(&self, disk: &VDisk) -> bool {
        Arc::ptr_eq(&self.shared, &disk.shared)
    }

    /// Every disk of the pool.
    pub fn disks(
        &self,
    ) -> impl Future<Output = Result<Vec<Arc<VDisk>>, VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move { Ok(c.disk_bdevs()) })
    }

    /// Descriptions of every disk (parent, children, allocated and shared space).
    pub fn list(&self) -> impl Future<Output = Result<Vec<DiskInfo>, VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move { Ok(c.list()) })
    }

    /// Deletes a disk, a snapshot or a clone, and reclaims what nothing else references.
    pub fn delete_disk(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let name = name.to_string();
        self.on_ctl(move |c| async move { durable(&c, c.delete_disk(&name).await).await })
    }

    /// Changes a disk's size (growing adds zero space; shrinking drops the tail).
    pub fn resize_disk(
        &self,
        name: &str,
        size_bytes: u64,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let name = name.to_string();
        self.on_ctl(
            move |c| async move { durable(&c, c.resize_disk(&name, size_bytes).await).await },
        )
    }

    /// Sets or clears a disk's read-only flag.
    pub fn set_read_only(
        &self,
        name: &str,
        read_only: bool,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let name = name.to_string();
        self.on_ctl(
            move |c| async move { durable(&c, c.set_read_only(&name, read_only).await).await },
        )
    }

    /// Renames disk `name` to `new_name`, durably (`bdev_lvol_rename`).
    pub fn rename_disk(
        &self,
        name: &str,
        new_name: &str,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let (name, new_name) = (name.to_string(), new_name.to_string());
        self.on_ctl(move |c| async move { durable(&c, c.rename_disk(&name, &new_name)).await })
    }

    /// Renames the pool, durably (`bdev_lvol_rename_lvstore`): the superblock records the
    /// name, so this commits.
    pub fn rename(
        &self,
        new_name: &str,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let new_name = new_name.to_string();
        self.on_ctl(move |c| async move { c.rename_pool(&new_name).await })
    }

    /// Snapshots each disk of `pairs` (origin, snapshot name) at one point in time. With
    /// more than one pair (a consistency group) the disks are quiesced first; the
    /// quiesce cancels itself after `limit`, and then nothing is snapshotted.
    pub fn snapshot(
        &self,
        pairs: Vec<(String, String)>,
        limit: std::time::Duration,
    ) -> impl Future<Output = Result<Vec<Arc<VDisk>>, VdiskError>> + Send + 'static {
        let pairs = pairs.into_iter().map(|(o, s)| (o, s, None)).collect();
        self.snapshot_with_uuids(pairs, limit)
    }

    /// [`Pool::snapshot`], each snapshot with the UUID of its triple when one is given
    /// (a received snapshot keeps its source's); a UUID a disk of the pool already has
    /// is refused ([`VdiskError::UuidTaken`]).
    pub fn snapshot_with_uuids(
        &self,
        pairs: Vec<(String, String, Option<uuid::Uuid>)>,
        limit: std::time::Duration,
    ) -> impl Future<Output = Result<Vec<Arc<VDisk>>, VdiskError>> + Send + 'static {
        self.on_ctl_first(move |c| async move { durable(&c, c.snapshot(pairs, limit).await).await })
    }

    /// Creates a writable clone `name` of snapshot `snapshot`.
    pub fn clone_disk(
        &self,
        snapshot: &str,
        name: &str,
    ) -> impl Future<Output = Result<Arc<VDisk>, VdiskError>> + Send + 'static {
        let (s, n) = (snapshot.to_string(), name.to_string());
        self.on_ctl(move |c| async move { durable(&c, c.clone_disk(&s, &n).await).await })
    }

    /// Reverts disk `name` to snapshot `snapshot` of its family in place, durably: the
    /// disk keeps its identity and exports, its contents and size become the
    /// snapshot's (see `revert.rs`). Its I/O is held across the switch, for at most the
    /// drain time limit ([`TimeLimits::drain`]).
    pub fn revert_disk(
        &self,
        name: &str,
        snapshot: &str,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let (n, s) = (name.to_string(), snapshot.to_string());
        self.on_ctl_first(move |c| async move {
            let limit = c.limits.get().drain;
            durable(&c, c.revert_disk(&n, &s, limit).await).await
        })
    }

    /// Starts splitting `name` from its parent (SPDK: inflate), in the background.
    pub fn split(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let n = name.to_string();
        self.on_ctl(move |c| async move { durable(&c, c.start_job(&n, false).await).await })
    }

    /// Starts decoupling `name` from its parent (re-pointing it at the grandparent).
    pub fn decouple(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let n = name.to_string();
        self.on_ctl(move |c| async move { durable(&c, c.start_job(&n, true).await).await })
    }

    /// Caps the bytes per second the pool's splits and decouples copy, all together,
    /// running ones included (0: no cap).
    pub fn set_job_limit(
        &self,
        bytes_per_sec: u64,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move {
            c.job_limit.set(bytes_per_sec);
            c.job_pace.set(crate::reactor::now());
            Ok(())
        })
    }

    /// Cancels a running split or decouple.
    pub fn cancel_split(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let n = name.to_string();
        self.on_ctl(move |c| async move { durable(&c, c.cancel_job(&n).await).await })
    }

    /// Quiesces disks: their new I/O is held and in-flight I/O drained. Returns an id for
    /// [`Pool::activate`]; after `limit` the quiesce cancels itself.
    pub fn quiesce(
        &self,
        names: Vec<String>,
        limit: std::time::Duration,
    ) -> impl Future<Output = Result<u64, VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move {
            let ids = names
                .iter()
                .map(|n| c.id_of(n))
                .collect::<Result<Vec<_>, _>>()?;
            c.quiesce(ids, limit).await
        })
    }

    /// Releases a quiesce.
    pub fn activate(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move { c.activate(id).await })
    }

    /// Sets a disk's copy-on-write policy.
    pub fn set_cow_policy(
        &self,
        name: &str,
        policy: CowPolicy,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        let n = name.to_string();
        self.on_ctl(move |c| async move { durable(&c, c.set_cow_policy(&n, policy).await).await })
    }

    /// The entries the agent of `disk` on core `core` serves from, for `[from, to)`
    /// virtual segments ("get entries").
    pub fn view_entries(
        &self,
        core: usize,
        disk: &str,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<Extent>, VdiskError>> + Send + 'static {
        let pool = self.shared.id;
        let cores = self.shared.cores.clone();
        let d = self.disk(disk);
        async move {
            let id = d.await?.disk_id();
            cores
                .call(core, move || agent::view_entries(pool, id, from, to))
                .await
                .map_err(|_| VdiskError::Stopped)
        }
    }

    /// The blocks of `target` that differ from `base` (two disks of this pool, e.g. a
    /// snapshot and a later snapshot or the live disk), from `from_block` on, at most
    /// `max_runs` runs (see `diff.rs`).
    pub fn changed_ranges(
        &self,
        base: &str,
        target: &str,
        from_block: u64,
        max_runs: usize,
    ) -> impl Future<Output = Result<RunsPage<BlockRange>, VdiskError>> + Send + 'static {
        let (base, target) = (base.to_string(), target.to_string());
        self.on_ctl(move |c| async move {
            let (a, b, end, bdevs) = {
                let st = c.st.borrow();
                let (a, b) = (st.disk_named(&base)?, st.disk_named(&target)?);
                let bdevs = (a.bdev.clone(), b.bdev.clone());
                (a.root.clone(), b.root.clone(), b.rec.size_blocks, bdevs)
            };
            let (fills, geo) = (&c.shared.fills, c.shared.geo);
            let max_compare = (crate::bdev::MAX_COMPARE_BYTES / geo.block_size as u64).max(1);
            let page = diff::changed_ranges(
                (a.as_ref(), &[]),
                (b.as_ref(), &[]),
                fills,
                geo,
                from_block..end,
                max_runs,
                max_compare,
            );
            // What the tables cannot tell apart, the contents do.
            let mut equal = Vec::new();
            if !page.to_compare.is_empty() {
                let chan = |d: Arc<VDisk>| {
                    let d: Arc<dyn Bdev> = d;
                    Channel::get(&d).map_err(VdiskError::Bdev)
                };
                let (ca, cb) = (chan(bdevs.0)?, chan(bdevs.1)?);
                for r in &page.to_compare {
                    let mut at = r.offset_blocks;
                    for (n, differs) in cb
                        .differs_from(&ca, r.offset_blocks, r.num_blocks, usize::MAX)
                        .await
                    {
                        if !differs {
                            equal.push(BlockRange {
                                offset_blocks: at,
                                num_blocks: n,
                            });
                        }
                        at += n;
                    }
                }
            }
            Ok(page.without(&equal, max_runs))
        })
    }

    /// What the blocks of `disk` hold from `from_block` on (data, zeros, holes), at most
    /// `max_runs` runs (see `diff.rs`).
    pub fn allocated_ranges(
        &self,
        disk: &str,
        from_block: u64,
        max_runs: usize,
    ) -> impl Future<Output = Result<RunsPage<(BlockRange, Allocation)>, VdiskError>> + Send + 'static
    {
        let disk = disk.to_string();
        self.on_ctl(move |c| async move {
            let (root, end, external) = {
                let st = c.st.borrow();
                let d = st.disk_named(&disk)?;
                (d.root.clone(), d.rec.size_blocks, d.rec.external.is_some())
            };
            let (fills, geo) = (&c.shared.fills, c.shared.geo);
            let page = diff::allocated_ranges(root.as_ref(), fills, geo, from_block, end, max_runs);
            // What no layer holds reads the external snapshot: data for a copy, not a
            // hole or zeros it may skip.
            Ok(match external {
                true => diff::falling_through_as_data(page),
                false => page,
            })
        })
    }

    /// The controller's segment reference count of `seg` (tests, diagnostics).
    pub fn segment_refs(
        &self,
        seg: PhysSeg,
    ) -> impl Future<Output = Result<u32, VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move { Ok(c.st.borrow().space.refs(seg)) })
    }

    /// Free segments and segments waiting for a commit to become free.
    pub fn free_space(
        &self,
    ) -> impl Future<Output = Result<(u64, u64), VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move {
            let st = c.st.borrow();
            Ok((st.space.free_segments(), st.space.pending_segments()))
        })
    }

    /// The transaction of the last commit (it grows by one with each commit).
    pub fn committed_txn(&self) -> impl Future<Output = Result<u64, VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move { Ok(c.st.borrow().committed_txn) })
    }

    /// The intent log's state, if the pool has one.
    pub fn log_status(
        &self,
    ) -> impl Future<Output = Result<Option<LogStatus>, VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move {
            Ok(c.st.borrow().log.as_ref().map(|l| LogStatus {
                pages: l.area.pages,
                first_page: l.area.first_page,
                mirror: l.area.mirror,
                next_seq: l.next_seq,
                next_lsn: l.next_lsn,
                replay_seq: l.durable_seq,
                replayed_at_open: l.replayed_at_open,
                pending_bytes: l.pending_bytes(),
            }))
        })
    }

    /// Sets how long the pool waits for I/O it depends on (see [`TimeLimits`]).
    pub fn set_time_limits(
        &self,
        limits: TimeLimits,
    ) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move {
            c.limits.set(limits);
            Ok(())
        })
    }

    /// Commits the metadata now (what a flush does).
    pub fn commit(&self) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move { c.commit().await.map_err(VdiskError::from) })
    }

    /// Stops the controller at once without committing, as a crash would (for tests
    /// that simulate power loss). Reopen the pool from its bdevs to recover.
    pub fn crash_stop(&self) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move {
            c.crash_stop();
            Ok(())
        })
    }

    /// The controller's state checked against the rules the offline check verifies on
    /// disk (`audit.rs`): the broken ones, each naming where; `just_opened`: no
    /// release pending. Called on the controller core, at once (it takes no turn of the
    /// reactor); `None`: there is no controller (closed, or another core).
    pub(crate) fn audit(&self, just_opened: bool) -> Option<Vec<String>> {
        controller::lookup(self.shared.id).map(|c| c.audit(just_opened))
    }

    /// What every agent would read from and write in place, checked against the
    /// controller's tables (`audit.rs`): the broken ones; `settled` (between
    /// operations), the writes too, else the reads only. `enter(core, f)` runs `f` on
    /// `core` at once (the simulator's reactors); `None`: there is no controller.
    pub(crate) fn audit_agents(
        &self,
        enter: &dyn Fn(usize, &mut dyn FnMut()),
        settled: bool,
    ) -> Option<Vec<String>> {
        let (id, ctl) = (self.shared.id, self.shared.ctl_core);
        let mut agents = None;
        enter(ctl, &mut || {
            agents = controller::lookup(id).map(|c| c.agents())
        });
        let mut problems = Vec::new();
        for (disk, cores) in agents? {
            for core in cores {
                let mut claims = None;
                enter(core, &mut || claims = super::agent::claims(id, disk));
                let Some(claims) = claims else { continue };
                enter(ctl, &mut || {
                    if let Some(c) = controller::lookup(id) {
                        problems.extend(c.audit_claims(disk, core, &claims, settled));
                    }
                });
            }
        }
        Some(problems)
    }

    /// Commits and stops the controller; the disks stop serving I/O.
    pub fn close(&self) -> impl Future<Output = Result<(), VdiskError>> + Send + 'static {
        self.on_ctl(move |c| async move { c.close().await })
    }
}
