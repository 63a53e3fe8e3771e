//! The mapping layer: pools, virtual disks, mapping tables, agents and the controller
//! (DESIGN.md, "The mapping layer"; the seeds are the source).
//!
//! Data path (per core; imports only each other, `bdev` and `reactor`):
//! - [`map`]: table entries (extents, layers), the fills of partially written segments
//!   (by segment) and block resolution.
//! - [`table`]: the copy-on-write B+tree of extents with structural sharing — pure.
//! - [`msg`]: the messages between the controller and the agents (commands, views,
//!   mapping faults) and the port through which an agent reaches its controller.
//! - [`shared`]: what every core knows of a pool: containers, segment placement, its
//!   fills and the queue of changed ones, the controller port.
//! - [`agent`]: the per-core I/O path of a disk: fast path, parked path, discard.
//!
//! Control path (the controller core; may use the data path, never the reverse):
//! - [`controller`]: the controller's state, start and stop, shared primitives.
//! - [`views`]: pushing views and commands to the agents, taking their requests in.
//! - [`cow`]: write faults — allocation, copy-on-write, granule materialisation.
//! - [`snapshot`]: snapshots, clones, consistency groups (quiesce).
//! - [`lifecycle`]: create, delete, resize, read-only, listings.
//! - [`split`]: the background split (inflate) and decouple jobs.
//! - [`revert`]: reverting a disk to a snapshot in place.
//! - [`alloc`]: segment reference counts, free segments and pages.
//! - [`meta`]: the on-disk format, by page kind — pure encoders and decoders.
//! - [`commit`]: making the controller's state durable (checkpoints).
//! - [`intent`]: the intent log — appends at durable points, replay at open.
//! - [`load`]: creating a pool, and opening (recovering) one.
//! - `scan`: reading and verifying the durable state, for open and check alike.
//! - [`check`]: the offline consistency check behind `tessera check`.
//!
//! Tying both together: [`disk`] (a virtual disk as a bdev; its channels are agents)
//! and [`pool`] (the public [`Pool`] handle).

pub mod agent;
pub mod alloc;
mod audit;
pub mod check;
pub mod commit;
pub mod controller;
pub mod cow;
pub mod diff;
pub mod disk;
pub mod esnap;
pub mod grow;
pub mod intent;
pub mod leaf;
pub mod lifecycle;
pub mod load;
mod locks;
pub mod map;
pub(crate) mod maybe_mapped;
pub mod meta;
pub mod msg;
pub mod pool;
pub mod reparent;
pub mod revert;
pub(crate) mod scan;
mod search;
pub mod shared;
pub mod snapshot;
pub mod split;
pub mod table;
pub mod views;

pub use controller::TimeLimits;
pub use disk::VDisk;
pub use lifecycle::DiskInfo;
pub use load::PoolOptions;
pub use pool::{LogStatus, Pool};

use crate::bdev::{BdevError, IoStatus};
use serde::{Deserialize, Serialize};

/// How the first write to a segment shared with a snapshot is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CowPolicy {
    /// New data goes to a new segment; the snapshot keeps the old one (default).
    #[default]
    Redirect = 0,
    /// The old data is copied to a new segment for the snapshot; the write lands in
    /// place, so the live disk keeps its physical layout.
    CopyOut = 1,
}

impl CowPolicy {
    pub(crate) fn from_u8(v: u8) -> CowPolicy {
        if v == 1 {
            CowPolicy::CopyOut
        } else {
            CowPolicy::Redirect
        }
    }
}

/// Errors of the mapping layer; each names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum VdiskError {
    #[error("metadata: {0}")]
    Meta(meta::MetaError),
    #[error("{what}: I/O failed with {status:?}")]
    Io { what: String, status: IoStatus },
    #[error("{field}: {reason}")]
    InvalidParam { field: &'static str, reason: String },
    #[error("`{0}` does not exist")]
    NotFound(String),
    #[error("`{0}` already exists")]
    Exists(String),
    #[error("UUID {uuid} is already the UUID of `{name}`")]
    UuidTaken { uuid: uuid::Uuid, name: String },
    #[error("bdev `{bdev}` already holds pool `{pool}` ({uuid}); delete that pool first")]
    HoldsPool {
        bdev: String,
        pool: String,
        uuid: uuid::Uuid,
    },
    #[error("`{0}` is read-only")]
    ReadOnly(String),
    #[error("not enough free space: {need} segments needed, {free} free")]
    NoSpace { need: u64, free: u64 },
    #[error(
        "the metadata area is full: {need} pages needed, {free} free; delete disks or snapshots to free some"
    )]
    NoMetadataSpace { need: u64, free: u64 },
    #[error("busy: {0}")]
    Busy(String),
    #[error("the pool has failed and refuses changes: {0}")]
    PoolFailed(String),
    #[error("the pool is closed")]
    Stopped,
    #[error("quiesce of {0} timed out and was cancelled; nothing was changed")]
    QuiesceTimeout(String),
    #[error("timed out: {0}")]
    DrainTimeout(Stall),
    #[error("bdev: {0}")]
    Bdev(BdevError),
    #[error("no pool found: {0}")]
    NoPool(String),
    #[error(
        "pool `{pool}` cannot grow to {want_segments} segments (bdev `{bdev}`): its space \
         map, sized when the pool was created, counts at most {max_segments} segments of \
         {segment_bytes} bytes"
    )]
    GrowLimit {
        pool: String,
        bdev: String,
        want_segments: u64,
        max_segments: u64,
        segment_bytes: u64,
    },
}

// Not `#[from]`: the message holds the cause, and a source would print it twice in a
// chain of causes.
impl From<meta::MetaError> for VdiskError {
    fn from(e: meta::MetaError) -> VdiskError {
        VdiskError::Meta(e)
    }
}

impl From<BdevError> for VdiskError {
    fn from(e: BdevError) -> VdiskError {
        VdiskError::Bdev(e)
    }
}

/// I/O that did not drain within its time limit: what waited, for which disk, on which
/// cores, how long.
#[derive(Debug, Clone)]
pub struct Stall {
    /// The operation that waited ("snapshot", "delete of the disk", ...).
    pub waiting: String,
    pub disk: String,
    /// The cores whose agents still had the disk's I/O in flight.
    pub cores: Vec<usize>,
    pub limit: std::time::Duration,
}

impl Stall {
    /// The same stall, as met by operation `what`.
    pub(crate) fn during(mut self, what: impl Into<String>) -> Stall {
        self.waiting = what.into();
        self
    }
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cores: Vec<String> = self.cores.iter().map(|c| c.to_string()).collect();
        write!(
            f,
            "{}: I/O in flight to `{}` on core {} did not complete within {} ms (a base bdev \
             is not completing a request); cancelled and undone",
            self.waiting,
            self.disk,
            cores.join(", "),
            self.limit.as_micros().div_ceil(1000)
        )
    }
}

impl From<IoStatus> for VdiskError {
    fn from(status: IoStatus) -> Self {
        VdiskError::Io {
            what: "commit".into(),
            status,
        }
    }
}

#[cfg(test)]
mod tests;
