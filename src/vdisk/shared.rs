//! What every core knows of a pool: the storage containers it is made of and where a
//! physical segment lives in them, its geometry, the queue of fills the agents changed,
//! the metadata budget, and the port through which agents reach the controller. Built once when the pool
//! opens and shared (read-only but for its atomics and queue) by the data path and the
//! control path alike.

use super::CowPolicy;
use super::map::{DirtyFill, Fill, Fills, Geometry, PhysSeg};
use super::msg::{AgentNotice, AgentRequest, ControllerPort, WriteFaultAnswers, WriteFaults};
use crate::bdev::{Bdev, IoStatus};
use crate::reactor::{Cores, RemoteHandle};
use crossbeam_queue::SegQueue;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use uuid::Uuid;

/// A data container: a base bdev cut into segments.
pub struct Container {
    pub bdev: Arc<dyn Bdev>,
    /// Global index of the container's segment 0.
    pub first_seg: PhysSeg,
    /// Segments in the container, reserved ones included: what the superblock in force
    /// records (`bdev_lvol_grow_lvstore` raises the last container's once its commit is
    /// durable; see `grow.rs`).
    pub segments: AtomicU64,
    /// Leading segments not used for data (label, metadata).
    pub reserved: u64,
    /// The bdev UUID recorded in the container's label (bdevs such as files get a new
    /// UUID each time they are created; the label is what identifies the container).
    pub label_uuid: Uuid,
}

impl Container {
    /// Segments in the container now, reserved ones included.
    #[inline]
    pub fn segments(&self) -> u64 {
        self.segments.load(Ordering::Acquire)
    }
}

/// A pool's name: shown by every log line of the pool, changed by a rename (the
/// superblock records it; the controller commits the change).
#[derive(Debug)]
pub struct PoolName(std::sync::RwLock<String>);

impl PoolName {
    pub fn new(name: &str) -> PoolName {
        PoolName(std::sync::RwLock::new(name.to_string()))
    }

    /// The name now.
    pub fn get(&self) -> String {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set(&self, name: &str) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = name.to_string();
    }
}

impl std::fmt::Display for PoolName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What every core needs to know about a pool. Immutable after open, except the
/// atomics and the dirty-fill queue.
pub struct PoolShared {
    /// Process-unique id (registry key on the cores).
    pub id: u64,
    pub uuid: Uuid,
    /// The name (`bdev_lvol_rename_lvstore` changes it).
    pub name: PoolName,
    pub geo: Geometry,
    pub containers: Vec<Container>,
    pub meta_bdev: Arc<dyn Bdev>,
    pub separate_metadata: bool,
    /// The metadata bdev's UUID as its label records it.
    pub meta_label_uuid: Uuid,
    pub meta_first_byte: u64,
    pub meta_pages: u64,
    pub sm_pages: u64,
    /// The most segments the pool may grow to: what its space-map pages, sized at
    /// creation, can count (at most the format's `MAX_SEGMENTS`).
    pub max_segments: u64,
    pub ctl_core: usize,
    pub cores: Cores,
    /// How the pool's agents reach its controller.
    pub(crate) ctl_port: ControllerPort,
    /// The fill of every physical segment.
    pub fills: Fills,
    /// Segments whose fills changed since the controller last persisted them; agents
    /// push, the controller drains at commit.
    pub dirty_fills: SegQueue<DirtyFill>,
    pub cow_default: CowPolicy,
    /// Free segments, as of the controller's last update (for listings).
    pub free_segments: AtomicU64,
    /// Metadata pages that changes may still take before the next commit.
    pub meta_budget: MetaBudget,
    /// Called on the controller core when a split or decouple that ran in the
    /// background let an external snapshot go, once that is durable (the target
    /// drops its claim on the bdev then): `Pool::on_external_released`.
    pub(crate) on_external_released: std::sync::Mutex<Option<ReleaseHook>>,
}

/// What [`PoolShared::on_external_released`] calls.
pub(crate) type ReleaseHook = Arc<dyn Fn() + Send + Sync>;

/// The metadata pages the pool may still promise to changes before its next commit, so
/// that the commit of every change it let through fits in the metadata area (see
/// `commit.rs`, "Metadata space"). The controller keeps it (free pages less what the
/// next commit already needs) and takes from it before a change of the table; agents
/// take from it before the first change of a fill since its last commit (its leaf is
/// rewritten then). What cannot be taken is refused: no space.
///
/// Fill charges stop at a cap: persisting every dirty fill copies each written table
/// node at most once, so they never need more pages in all than the written nodes
/// (the controller keeps `fill_cap` at the metadata pages in use). Without it, a burst
/// of first writes into fresh segments — each a new fill, most in leaves not yet
/// written, which need no copy — charged a leaf's whole path apiece and drained the
/// budget of a mostly empty metadata area, forcing commits and refusing writes.
#[derive(Debug, Default)]
pub struct MetaBudget {
    available: AtomicI64,
    /// Pages the first change of a fill since its last commit may cost: its leaf and
    /// the leaf's ancestors.
    fill_cost: AtomicU64,
    /// Pages fill charges hold now (taken, not yet released by the controller).
    fill_charged: AtomicI64,
    /// Fill charges beyond this many pages are not needed.
    fill_cap: AtomicI64,
}

impl MetaBudget {
    /// Takes `pages` if that many are available.
    pub fn try_take(&self, pages: u64) -> bool {
        let n = pages as i64;
        self.available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a >= n).then_some(a - n)
            })
            .is_ok()
    }

    /// Takes `pages` whether or not they are available (a change already made).
    pub fn force_take(&self, pages: u64) {
        self.available.fetch_sub(pages as i64, Ordering::AcqRel);
    }

    /// Adds `pages` (the controller's adjustments; negative takes).
    pub(crate) fn give(&self, pages: i64) {
        self.available.fetch_add(pages, Ordering::AcqRel);
    }

    /// Pages available now (negative when changes already made overdrew it).
    pub fn available(&self) -> i64 {
        self.available.load(Ordering::Acquire)
    }

    /// What the first change of a fill since its last commit takes.
    pub fn fill_cost(&self) -> u64 {
        self.fill_cost.load(Ordering::Relaxed).max(1)
    }

    pub(crate) fn set_fill_cost(&self, pages: u64) {
        self.fill_cost.store(pages, Ordering::Relaxed);
    }

    /// True when the fill charges held cover every page persisting the dirty fills can
    /// take: a new charge is not needed.
    fn fills_covered(&self) -> bool {
        self.fill_charged.load(Ordering::Acquire) >= self.fill_cap.load(Ordering::Acquire)
    }

    /// A fill charge of `pages` was taken.
    fn fill_charge_taken(&self, pages: u64) {
        self.fill_charged.fetch_add(pages as i64, Ordering::AcqRel);
    }

    /// Pages fill charges hold now.
    pub(crate) fn fill_charged(&self) -> i64 {
        self.fill_charged.load(Ordering::Acquire)
    }

    /// The controller released `pages` of fill charges (given back to `available`).
    pub(crate) fn fill_charges_released(&self, pages: i64) {
        self.fill_charged.fetch_sub(pages, Ordering::AcqRel);
    }

    /// The most pages fill charges need to hold (see the type's doc).
    pub(crate) fn set_fill_cap(&self, pages: u64) {
        self.fill_cap.store(pages as i64, Ordering::Release);
    }
}

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

impl PoolShared {
    pub(crate) fn next_id() -> u64 {
        NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed)
    }

    /// The container holding `seg` and the byte offset of the segment in it.
    #[inline]
    pub fn locate(&self, seg: PhysSeg) -> (usize, u64) {
        let i = if self.containers.len() == 1 {
            0
        } else {
            self.containers.partition_point(|c| c.first_seg <= seg) - 1
        };
        (
            i,
            (seg - self.containers[i].first_seg) * self.geo.segment_bytes(),
        )
    }

    /// Total segments over all containers.
    pub fn total_segments(&self) -> u64 {
        self.containers.iter().map(|c| c.segments()).sum()
    }

    /// Segments usable for data.
    pub fn data_segments(&self) -> u64 {
        self.containers
            .iter()
            .map(|c| c.segments() - c.reserved)
            .sum()
    }

    /// Changes `fill` (sets or clears granules, as `change` does) within the metadata
    /// budget, and queues it for the next commit. The first change since the fill was
    /// last committed takes its cost from the budget; if that is spent, nothing changes
    /// and the answer is false (no space). A fill that was queued when looked at but
    /// committed before the change costs again, taken regardless (the budget keeps a
    /// little slack for that race).
    ///
    /// No charge is taken while the charges held already cover every written table
    /// node (`MetaBudget`'s cap).
    ///
    /// `queued` names the segment and where it is the writable top layer (see
    /// [`DirtyFill`]).
    pub(crate) fn change_fill(
        &self,
        queued: DirtyFill,
        change: impl FnOnce(&Fill) -> bool,
    ) -> bool {
        let seg = queued.seg;
        let fill = self.fills.get(seg);
        let budget = &self.meta_budget;
        let cost = budget.fill_cost();
        let charged = !self.fills.is_dirty(seg) && !budget.fills_covered();
        if charged {
            if !budget.try_take(cost) {
                return false;
            }
            budget.fill_charge_taken(cost);
        }
        if change(fill) && self.fills.mark_dirty(seg) {
            if !charged && !budget.fills_covered() {
                budget.force_take(cost);
                budget.fill_charge_taken(cost);
            }
            self.dirty_fills.push(queued);
        }
        true
    }

    /// Sends an agent's request to the pool's controller (see [`ControllerPort`]).
    pub(crate) fn ask_controller(&self, request: AgentRequest) -> RemoteHandle<Option<IoStatus>> {
        (self.ctl_port.request)(&self.cores, self.ctl_core, self.id, request)
    }

    /// Sends an agent's batch of write faults to the pool's controller.
    pub(crate) fn ask_write_faults(&self, faults: WriteFaults) -> WriteFaultAnswers {
        (self.ctl_port.write_faults)(&self.cores, self.ctl_core, self.id, faults)
    }

    /// Sends an agent's notice to the pool's controller.
    pub(crate) fn tell_controller(&self, notice: AgentNotice) {
        (self.ctl_port.notify)(&self.cores, self.ctl_core, self.id, notice)
    }
}
