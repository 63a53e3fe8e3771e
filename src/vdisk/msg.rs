//! The messages between a pool's controller and its mapping agents (DESIGN.md, "Agents
//! and controller"): what each side may say to the other, and nothing else. Both sides
//! use this module; neither names the other's types through it.
//!
//! - Controller → agent: [`AgentCmd`] ("set entries" as a new [`View`], or as the few
//!   extents write faults set since it, "set entry state" as a [`RangeState`] over a
//!   range, quiesce/activate, fail/resume, barrier), applied
//!   on the agent's core, optionally with the **blocking flag** (acknowledged once every
//!   I/O the agent had started before the command has completed).
//! - Agent → controller: [`WriteFaults`] (the write faults an agent parked in one
//!   reactor pass, resolved together and answered with a status each), `AgentRequest`
//!   (the other mapping faults, and the other things only the controller may do:
//!   commit, punch, drop an emptied segment), each answered with an I/O status, and
//!   `AgentNotice` (an agent appeared or went away).
//!
//! The agent sends through a `ControllerPort`: two function pointers the controller's
//! side fills in when the pool opens, so that the data path never imports the control
//! path. Only faults and control go this way; the I/O fast path never does.

use super::map::Extent;
use super::table::Node;
use crate::bdev::IoStatus;
use crate::reactor::{Cores, RemoteHandle};
use std::sync::Arc;

/// What a disk's blocks read as where no layer of its table holds them.
#[derive(Clone)]
pub enum Below {
    /// Zeros (a disk of the pool's own).
    Zeros,
    /// The same block offsets of this bdev, read-only: an external snapshot (SPDK's
    /// esnap), e.g. a golden image on a file or a remote namespace.
    External(Arc<dyn crate::bdev::Bdev>),
    /// An external snapshot not present (yet): such reads fail, as SPDK's degraded
    /// lvols do, until the bdev appears.
    Missing(uuid::Uuid),
}

impl std::fmt::Debug for Below {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Below::Zeros => f.write_str("Zeros"),
            Below::External(b) => write!(f, "External({})", b.name()),
            Below::Missing(u) => write!(f, "Missing({u})"),
        }
    }
}

/// What an agent serves from: a root into the shared table nodes.
#[derive(Debug)]
pub struct View {
    pub root: Option<Arc<Node>>,
    /// What blocks no layer holds read as.
    pub below: Below,
    /// Extents born at or before this generation are shared: not writable.
    pub snap_gen: u64,
    pub version: u64,
}

/// A state the controller lays over a range of an agent's view ("set entry state").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeState {
    /// Writes fault even where the table would allow them.
    NoWrite,
    /// Reads and writes wait: the agent has no usable mapping.
    Invalid,
}

/// Controller → agent commands.
#[derive(Clone, Debug)]
pub enum AgentCmd {
    /// Replace the view ("set entries": the new root shares unchanged nodes). The
    /// agent drops the extents it keeps beside its view ([`AgentCmd::AddExtents`]) of
    /// versions older than this view's: the controller's table held them when it built
    /// this view.
    SetView(Arc<View>),
    /// Extents the controller just set for write faults, one segment each, that view
    /// `version` (the disk's current view version, not bumped) does not show: the agent
    /// keeps them beside its view and reads them before it ("recent inserts read beside
    /// the table"), until a [`AgentCmd::SetView`] of a newer version, which holds them.
    /// Ignored by an agent whose view is newer than `version` (that view holds them).
    /// A burst of first writes costs one such message per batch of faults, where a
    /// view push made the controller copy the table's paths again for every batch.
    AddExtents {
        version: u64,
        extents: Arc<[Extent]>,
    },
    /// Lay `state` over virtual segments `[from, to)`, or clear it (`None`).
    SetState {
        from: u64,
        to: u64,
        state: Option<RangeState>,
    },
    /// Hold new I/O; with the blocking flag, acknowledge once in-flight I/O drained.
    Quiesce,
    /// Release held I/O.
    Activate,
    /// The disk is gone: fail held and new I/O with this status.
    Fail(IoStatus),
    /// The disk is back (an operation that stopped it was cancelled): serve I/O again.
    Resume,
    /// Nothing; with the blocking flag, a drain barrier.
    Barrier,
    /// Everything a new agent must know at once: the view, the range states, whether
    /// the disk is quiesced or failed.
    Init {
        view: Arc<View>,
        overrides: Vec<(u64, u64, RangeState)>,
        quiesced: bool,
        failed: Option<IoStatus>,
    },
}

/// Most write faults one request may carry: a bigger batch of parked writes goes in
/// several requests (the controller sets each request's extents in one table pass and
/// reserves metadata room for all of them at once).
pub(crate) const MAX_WRITE_FAULTS: usize = 256;

/// Agent → controller: write faults, each a virtual segment of `disk` that has no
/// writable top layer (no segment yet, or one shared with a snapshot): allocate or
/// copy-on-write each. The answer is one status per entry of `vsegs`, in order; one
/// segment's failure (out of space, a media error) says nothing about the others'.
/// At most [`MAX_WRITE_FAULTS`] distinct segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WriteFaults {
    pub disk: u64,
    pub vsegs: Vec<u64>,
}

/// The controller's answer to a [`WriteFaults`]: one status per segment, in the order
/// asked, or `None` if the pool's controller is gone.
pub(crate) type WriteFaultAnswers = RemoteHandle<Option<Vec<IoStatus>>>;

/// Agent → controller requests, each answered with an I/O status: the mapping faults
/// other than write faults ([`WriteFaults`]), and the other changes only the controller
/// may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AgentRequest {
    /// A write of part of granules `[first, last]` of `vseg` that the writable top layer
    /// does not hold: copy what they show now into it.
    Materialize {
        disk: u64,
        vseg: u64,
        first: u64,
        last: u64,
    },
    /// Whole virtual segments `[from, to)` were unmapped: return them to the zero state.
    Punch { disk: u64, from: u64, to: u64 },
    /// The agent cleared the last bits of the fill at `vseg`: drop the segment if it is
    /// still empty.
    MaybeEmpty { disk: u64, vseg: u64 },
    /// A flush, or a FUA write that completed: commit the metadata.
    Commit,
}

/// Agent → controller notices; nothing comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AgentNotice {
    /// An agent of `disk` appeared on `core`: it waits for its [`AgentCmd::Init`].
    Registered { disk: u64, core: usize },
    /// The agent of `disk` on `core` is gone.
    Unregistered { disk: u64, core: usize },
}

/// How an agent reaches its pool's controller without naming it. The controller's side
/// provides the functions; the agent finds the port in the pool's shared state. Each
/// function takes the cores, the controller's core and the pool id, and moves the
/// message to the controller's core.
#[derive(Clone, Copy)]
pub(crate) struct ControllerPort {
    /// Sends a request; the handle resolves to the controller's answer, or to `None` if
    /// the pool's controller is gone.
    pub request: fn(&Cores, usize, u64, AgentRequest) -> RemoteHandle<Option<IoStatus>>,
    /// Sends a batch of write faults; the handle resolves to one status per segment, in
    /// the order asked, or to `None` if the pool's controller is gone.
    pub write_faults: fn(&Cores, usize, u64, WriteFaults) -> WriteFaultAnswers,
    /// Sends a notice.
    pub notify: fn(&Cores, usize, u64, AgentNotice),
}
