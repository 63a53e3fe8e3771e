//! The agent's parked path: a request its view does not allow waits, keyed by what it
//! waits for, while the controller resolves a mapping fault; then every request parked
//! on the same key is retried, or failed with the controller's answer. Write faults
//! parked in one reactor pass go to the controller together (`msg::WriteFaults`, at
//! most `MAX_WRITE_FAULTS` a message), which resolves them in one table pass and one
//! view push and answers each; the other faults go one at a time
//! (`msg::AgentRequest`). Every request of the agent to the controller (faults,
//! commits, punches) goes through here.

use super::Agent;
use crate::bdev::{BdevIo, IoStatus};
use crate::reactor;
use crate::vdisk::msg::{AgentRequest, MAX_WRITE_FAULTS, WriteFaults};

/// What a parked request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum FaultKey {
    /// A writable top layer at this virtual segment.
    Write(u64),
    /// Granules `[first, last]` of this segment held by the writable top layer.
    Materialize(u64, u64, u64),
}

/// Batches of write faults an agent has at the controller at once: the faults that park
/// meanwhile wait for the next batch, so that batches grow with the load (the controller
/// sets a batch in one table pass and one view push) — and one slow batch (a copy-out,
/// a commit to make room) does not hold every other fault back.
const WRITE_BATCHES_IN_FLIGHT: usize = 2;

impl Agent {
    pub(super) fn park(&self, io: BdevIo, key: FaultKey) {
        let new_key = {
            let mut f = self.faults.borrow_mut();
            match f.get_mut(&key) {
                Some(v) => {
                    v.push(io);
                    false
                }
                None => {
                    f.insert(key, vec![io]);
                    true
                }
            }
        };
        if !new_key {
            return;
        }
        let (vseg, first, last) = match key {
            FaultKey::Materialize(vseg, first, last) => (vseg, first, last),
            FaultKey::Write(vseg) => {
                self.write_batch.borrow_mut().push(vseg);
                self.send_write_faults();
                return;
            }
        };
        let me = self.rc();
        reactor::spawn_local(async move {
            let disk = me.disk;
            let st = me
                .ask(AgentRequest::Materialize {
                    disk,
                    vseg,
                    first,
                    last,
                })
                .await;
            let ios = me.faults.borrow_mut().remove(&key).unwrap_or_default();
            for io in ios {
                if st.is_success() {
                    me.resubmit(io);
                } else {
                    io.complete(st);
                }
            }
        })
        .detach();
    }

    /// Starts the task that sends the parked write faults to the controller, unless it
    /// is started already, or [`WRITE_BATCHES_IN_FLIGHT`] batches wait for their answer
    /// (then the first answer sends what parked meanwhile). The task runs once this
    /// reactor pass's pollers, whose completions submit the next writes, are done: a
    /// batch holds every write fault of the pass, and more the longer the controller
    /// takes.
    fn send_write_faults(&self) {
        if self.write_sender.get()
            || self.write_batches.get() >= WRITE_BATCHES_IN_FLIGHT
            || self.write_batch.borrow().is_empty()
        {
            return;
        }
        self.write_sender.set(true);
        let me = self.rc();
        reactor::spawn_local(async move { me.resolve_writes().await }).detach();
    }

    /// Sends the parked write faults to the controller ([`MAX_WRITE_FAULTS`] a message),
    /// and retries (or fails, each with its own status) the requests parked on each.
    async fn resolve_writes(&self) {
        self.write_sender.set(false);
        let vsegs = std::mem::take(&mut *self.write_batch.borrow_mut());
        if vsegs.is_empty() {
            return;
        }
        self.write_batches.set(self.write_batches.get() + 1);
        let disk = self.disk;
        // Every message is on its way before the first answer is awaited.
        let asked: Vec<_> = vsegs
            .chunks(MAX_WRITE_FAULTS)
            .map(|c| {
                let h = self.shared.ask_write_faults(WriteFaults {
                    disk,
                    vsegs: c.to_vec(),
                });
                (c, h)
            })
            .collect();
        for (chunk, h) in asked {
            let sts = match h.await {
                Ok(Some(sts)) if sts.len() == chunk.len() => sts,
                _ => vec![IoStatus::Aborted; chunk.len()],
            };
            for (&vseg, st) in chunk.iter().zip(sts) {
                // Answered: the requests tried again look at the view (a bit left clear
                // would send them back here).
                self.maybe_mapped.note(vseg);
                let ios = self
                    .faults
                    .borrow_mut()
                    .remove(&FaultKey::Write(vseg))
                    .unwrap_or_default();
                for io in ios {
                    if st.is_success() {
                        self.resubmit(io);
                    } else {
                        io.complete(st);
                    }
                }
            }
        }
        self.write_batches.set(self.write_batches.get() - 1);
        self.send_write_faults();
    }

    /// Sends `request` to the controller and returns its answer (Aborted if the pool is
    /// gone).
    pub(super) async fn ask(&self, request: AgentRequest) -> IoStatus {
        match self.shared.ask_controller(request).await {
            Ok(Some(st)) => st,
            _ => IoStatus::Aborted,
        }
    }

    pub(super) async fn commit(&self) -> IoStatus {
        self.ask(AgentRequest::Commit).await
    }
}
