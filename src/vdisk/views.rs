//! The controller's end of the agent messages (`msg.rs`).
//!
//! **Views.** The controller's tree of each disk is the truth. An agent serves I/O from
//! its own view (a root pointer into the shared, immutable nodes). After a change the
//! controller pushes the new root to every core that has an agent for the disk ("set
//! entries" — the pushed root shares every node the change did not copy) and, for
//! changes that must be visible before an I/O completes (a new allocation), waits for
//! every agent to acknowledge. A command can carry the **blocking flag**: the agent
//! applies it at once but acknowledges only after all I/O it had started before the
//! command has completed. An agent that appears later gets everything at once
//! ([`AgentCmd::Init`]).
//!
//! **Extents beside the view.** A batch of write faults (`Controller::make_writable_many`)
//! sends the extents it set instead of a whole view ([`AgentCmd::AddExtents`]); each agent
//! keeps them beside its view and reads them first (`agent/recent.rs`, which says why
//! the version rule is right whatever order the commands run in on a core). The view
//! stays the table's previous root, so the controller's table is the only holder of
//! the nodes later batches build, and changes them in place (`table.rs`). A whole view
//! goes instead once the extents sent since the last one would pass
//! [`MAX_EXTENTS_BESIDE_VIEW`]: the agents' memory, over which the push is amortised.
//! Every other change pushes a whole view.
//!
//! **Time limits.** Nothing waits forever (DESIGN.md): a drain waits for I/O the agents
//! started, which a stuck base bdev may never complete. Every wait for the agents ends
//! at a deadline (`TimeLimits::drain` unless the operation has its own, e.g. a
//! snapshot's quiesce limit) with a [`Stall`] naming the disk, the cores still draining
//! and the time waited; the caller undoes what it did and fails with it. The drain
//! itself goes on in the background on the agents' cores and holds nothing.
//!
//! **Requests.** Agents reach the controller through `PORT`, which this side fills
//! in: their requests (mapping faults, commits, punches) run on the controller's core
//! and are answered with an I/O status.

use super::Stall;
use super::agent;
use super::controller::{Controller, DiskCtl, lookup};
use super::map::Extent;
use super::msg::{
    AgentCmd, AgentNotice, AgentRequest, ControllerPort, RangeState, View, WriteFaultAnswers,
    WriteFaults,
};
use crate::bdev::IoStatus;
use crate::reactor::until;
use crate::reactor::{self, Cores, Nanos, RemoteHandle};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

/// Most extents sent to a disk's agents beside their view ([`AgentCmd::AddExtents`])
/// before a whole view goes instead: what each agent keeps at most besides its view.
pub(crate) const MAX_EXTENTS_BESIDE_VIEW: usize = 4096;

/// What a command is, for messages.
fn describe(cmd: &AgentCmd) -> &'static str {
    match cmd {
        AgentCmd::SetView(_) => "pushing a view",
        AgentCmd::AddExtents { .. } => "sending new extents",
        AgentCmd::SetState { .. } => "setting a range state",
        AgentCmd::Quiesce => "quiesce",
        AgentCmd::Activate => "activate",
        AgentCmd::Fail(_) => "stopping the agents",
        AgentCmd::Resume => "resuming the agents",
        AgentCmd::Barrier => "drain barrier",
        AgentCmd::Init { .. } => "init",
    }
}

impl Controller {
    /// The view agents of `disk` should have now.
    pub(crate) fn view_of(&self, d: &DiskCtl) -> Arc<View> {
        Arc::new(View {
            root: d.root.clone(),
            below: self.below_of(&d.rec),
            snap_gen: d.rec.snap_gen,
            version: d.version,
        })
    }

    /// Sends `cmd` to every agent of `disk` and waits for their acknowledgements, at
    /// most the drain time limit (see the module doc). The disk remembers the state it
    /// sets, for agents that register later; a command is applied at once on every
    /// core, so only the wait (the drain, with `blocking`) can run out of time.
    pub(crate) async fn command_agents(
        &self,
        disk: u64,
        cmd: AgentCmd,
        blocking: bool,
    ) -> Result<(), Stall> {
        let deadline = reactor::now().after(self.limits.get().drain);
        self.command_agents_until(disk, cmd, blocking, deadline)
            .await
    }

    /// [`Controller::command_agents`], waiting until `deadline` at most.
    pub(crate) async fn command_agents_until(
        &self,
        disk: u64,
        cmd: AgentCmd,
        blocking: bool,
        deadline: Nanos,
    ) -> Result<(), Stall> {
        let start = reactor::now();
        let (cores, name): (Vec<usize>, String) = match self.st.borrow_mut().disks.get_mut(&disk) {
            Some(d) => {
                match &cmd {
                    AgentCmd::SetState { from, to, state } => {
                        d.overrides.retain(|&(f, t, _)| t <= *from || f >= *to);
                        if let Some(s) = state {
                            d.overrides.push((*from, *to, *s));
                        }
                    }
                    AgentCmd::Quiesce => d.quiesced = true,
                    AgentCmd::Activate => d.quiesced = false,
                    AgentCmd::Fail(st) => d.failed = Some(*st),
                    AgentCmd::Resume => d.failed = None,
                    AgentCmd::SetView(_)
                    | AgentCmd::AddExtents { .. }
                    | AgentCmd::Barrier
                    | AgentCmd::Init { .. } => {}
                }
                (d.agents.iter().copied().collect(), d.rec.name.clone())
            }
            None => return Ok(()),
        };
        let pool = self.shared.id;
        let handles: Vec<_> = cores
            .into_iter()
            .map(|core| {
                let cmd = cmd.clone();
                // A blocking command has a caller waiting for the drain (a snapshot, a
                // quiesce, a fence): it runs before the core's other ready tasks, and
                // so does its wake once the last earlier I/O completes.
                let h = self.shared.cores.spawn_on_with(
                    core,
                    move || agent::apply(pool, disk, cmd, blocking),
                    blocking,
                );
                (core, h)
            })
            .collect();
        let mut late = Vec::new();
        for (core, h) in handles {
            if until(deadline, h).await.is_none() {
                late.push(core);
            }
        }
        if late.is_empty() {
            return Ok(());
        }
        let stall = Stall {
            waiting: describe(&cmd).to_string(),
            disk: name,
            cores: late,
            limit: deadline.since(start),
        };
        tracing::warn!(pool = %self.shared.name, disk = %stall.disk, cores = ?stall.cores,
            waited_ms = stall.limit.as_millis() as u64, blocking,
            "the disk's agents did not drain in time");
        Err(stall)
    }

    /// Fences writes to virtual segment `vseg` of `disk` off (`true`: they fault and
    /// wait, and the ones in flight have drained when this returns `Ok`) or lets them
    /// through again (`false`). The caller holds the segment's lock; if the drain runs
    /// out of time, it lifts the fence again (writes in flight may still land).
    pub(crate) async fn fence_writes(
        &self,
        disk: u64,
        vseg: u64,
        fenced: bool,
    ) -> Result<(), Stall> {
        let cmd = AgentCmd::SetState {
            from: vseg,
            to: vseg + 1,
            state: fenced.then_some(RangeState::NoWrite),
        };
        self.command_agents(disk, cmd, fenced).await
    }

    /// Pushes the disk's current table to its agents ("set entries").
    pub(crate) async fn push_view(&self, disk: u64, blocking: bool) -> Result<(), Stall> {
        let deadline = reactor::now().after(self.limits.get().drain);
        self.push_view_until(disk, blocking, deadline).await
    }

    /// Pushes `disk`'s view once it holds every table edit made so far, sharing the push
    /// with the other faults resolved in the same turn: the first to get here lets them
    /// have their turn, then pushes the table as it is; the others wait for that push
    /// (and push again themselves if it failed, or came too early for their edit). A
    /// burst of first writes pushes a view per turn, not per fault. With `gather` false
    /// the first pushes at once: a batch of faults that already resolved together
    /// (`Controller::make_writable_many`) need not wait a turn for others.
    pub(crate) async fn publish_edits(&self, disk: u64, gather: bool) -> Result<(), Stall> {
        let Some(mine) = self.st.borrow().disks.get(&disk).map(|d| d.edits) else {
            return Ok(());
        };
        loop {
            let under_way = {
                let mut st = self.st.borrow_mut();
                let Some(d) = st.disks.get_mut(&disk) else {
                    return Ok(());
                };
                if d.edits_pushed >= mine {
                    return Ok(());
                }
                match &d.shared_push {
                    Some(p) => Some(p.clone()),
                    None => {
                        d.shared_push = Some(Rc::default());
                        None
                    }
                }
            };
            if let Some(push) = under_way {
                // Done within the push's own time limit, whatever happens to it.
                push.wait().await;
                continue;
            }
            if gather {
                reactor::yield_now().await;
            }
            let cover = self.st.borrow().disks.get(&disk).map_or(mine, |d| d.edits);
            let r = self.push_view(disk, false).await;
            let push = {
                let mut st = self.st.borrow_mut();
                st.disks.get_mut(&disk).and_then(|d| {
                    if r.is_ok() {
                        d.edits_pushed = d.edits_pushed.max(cover);
                    }
                    d.shared_push.take()
                })
            };
            if let Some(p) = push {
                p.finish();
            }
            return r;
        }
    }

    /// Makes `extents` — one segment each, just set in `disk`'s table for a batch of
    /// write faults, with nothing awaited since — visible on every agent of the disk, and
    /// waits for them all to acknowledge (a new allocation must be visible on every
    /// core before the writes complete): sent beside the agents' view
    /// ([`AgentCmd::AddExtents`]), or as a whole view push ([`Controller::publish_edits`])
    /// once the extents sent since the last view would pass
    /// [`MAX_EXTENTS_BESIDE_VIEW`]. If the disk's other edits were all published, the
    /// batch's edits were the only ones left: then they all are, for
    /// [`Controller::publish_edits`].
    pub(crate) async fn publish_extents(
        &self,
        disk: u64,
        extents: Vec<Extent>,
    ) -> Result<(), Stall> {
        let sent = {
            let mut st = self.st.borrow_mut();
            let Some(d) = st.disks.get_mut(&disk) else {
                return Ok(());
            };
            if d.extents_beside_view + extents.len() > MAX_EXTENTS_BESIDE_VIEW {
                None
            } else {
                d.extents_beside_view += extents.len();
                // Every edit before this batch's was published: after it, all are.
                let all = d.edits_pushed + extents.len() as u64 >= d.edits;
                // Read after the extents were set: every view of a later version holds
                // them.
                Some((d.version, all.then_some(d.edits)))
            }
        };
        let Some((version, cover)) = sent else {
            return self.publish_edits(disk, false).await;
        };
        let cmd = AgentCmd::AddExtents {
            version,
            extents: extents.into(),
        };
        let r = self.command_agents(disk, cmd, false).await;
        if r.is_ok()
            && let Some(cover) = cover
            && let Some(d) = self.st.borrow_mut().disks.get_mut(&disk)
        {
            d.edits_pushed = d.edits_pushed.max(cover);
        }
        r
    }

    /// [`Controller::push_view`], waiting until `deadline` at most.
    pub(crate) async fn push_view_until(
        &self,
        disk: u64,
        blocking: bool,
        deadline: Nanos,
    ) -> Result<(), Stall> {
        let view = {
            let mut st = self.st.borrow_mut();
            let Some(d) = st.disks.get_mut(&disk) else {
                return Ok(());
            };
            d.version += 1;
            d.extents_beside_view = 0;
            self.view_of(d)
        };
        self.command_agents_until(disk, AgentCmd::SetView(view), blocking, deadline)
            .await
    }

    /// Starts a blocking no-op on every agent of every disk now; the future resolves
    /// when every I/O started anywhere in the pool before the call has completed — which
    /// a stuck request can delay without end: the caller decides how long to wait.
    pub(crate) fn barrier_all(&self) -> impl Future<Output = ()> + 'static {
        let pool = self.shared.id;
        let handles: Vec<_> = {
            let st = self.st.borrow();
            st.disks
                .iter()
                .flat_map(|(&disk, d)| d.agents.iter().map(move |&core| (disk, core)))
                .map(|(disk, core)| {
                    self.shared.cores.spawn_on(core, move || {
                        agent::apply(pool, disk, AgentCmd::Barrier, true)
                    })
                })
                .collect()
        };
        async move {
            for h in handles {
                let _ = h.await;
            }
        }
    }

    /// An agent on `core` for `disk` appeared: remember it and send it the view.
    pub(crate) fn agent_registered(&self, disk: u64, core: usize) {
        let init = {
            let mut st = self.st.borrow_mut();
            let Some(d) = st.disks.get_mut(&disk) else {
                drop(st);
                let pool = self.shared.id;
                let _ = self.shared.cores.send(core, move || {
                    agent::apply_now(pool, disk, AgentCmd::Fail(IoStatus::Aborted))
                });
                return;
            };
            d.agents.insert(core);
            AgentCmd::Init {
                view: self.view_of(d),
                overrides: d.overrides.clone(),
                quiesced: d.quiesced,
                failed: d.failed,
            }
        };
        let pool = self.shared.id;
        let _ = self
            .shared
            .cores
            .send(core, move || agent::apply_now(pool, disk, init));
    }

    /// The agent on `core` for `disk` is gone.
    pub(crate) fn agent_unregistered(&self, disk: u64, core: usize) {
        if let Some(d) = self.st.borrow_mut().disks.get_mut(&disk) {
            d.agents.remove(&core);
        }
    }
}

/// How agents reach the controller (see [`ControllerPort`]).
pub(crate) const PORT: ControllerPort = ControllerPort {
    request: serve_request,
    write_faults: serve_write_faults,
    notify: serve_notice,
};

/// Runs an agent's request on the controller of `pool`: the answer comes back as a
/// future.
fn serve_request(
    cores: &Cores,
    ctl_core: usize,
    pool: u64,
    request: AgentRequest,
) -> RemoteHandle<Option<IoStatus>> {
    cores.spawn_on(ctl_core, move || async move {
        match lookup(pool) {
            Some(c) => Some(c.serve(request).await),
            None => None,
        }
    })
}

/// Resolves an agent's batch of write faults on the controller of `pool`: the answer,
/// one status per segment, comes back as a future.
fn serve_write_faults(
    cores: &Cores,
    ctl_core: usize,
    pool: u64,
    faults: WriteFaults,
) -> WriteFaultAnswers {
    cores.spawn_on(ctl_core, move || async move {
        match lookup(pool) {
            Some(c) => Some(c.make_writable_many(faults.disk, &faults.vsegs).await),
            None => None,
        }
    })
}

/// Delivers an agent's notice to the controller of `pool`.
fn serve_notice(cores: &Cores, ctl_core: usize, pool: u64, notice: AgentNotice) {
    let _ = cores.send(ctl_core, move || {
        if let Some(c) = lookup(pool) {
            match notice {
                AgentNotice::Registered { disk, core } => c.agent_registered(disk, core),
                AgentNotice::Unregistered { disk, core } => c.agent_unregistered(disk, core),
            }
        }
    });
}

impl Controller {
    /// Resolves an agent's request.
    async fn serve(&self, request: AgentRequest) -> IoStatus {
        match request {
            AgentRequest::Materialize {
                disk,
                vseg,
                first,
                last,
            } => self.materialize(disk, vseg, first, last).await,
            AgentRequest::Punch { disk, from, to } => self.punch(disk, from, to).await,
            AgentRequest::MaybeEmpty { disk, vseg } => self.maybe_empty(disk, vseg).await,
            AgentRequest::Commit => match self.make_durable().await {
                Ok(()) => IoStatus::Success,
                Err(st) => st,
            },
        }
    }
}
