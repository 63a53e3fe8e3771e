//! The agent's parked path: a request its view does not allow waits, keyed by what it
//! waits for, while the controller resolves a mapping fault (`msg::AgentRequest`); then
//! every request parked on the same key is retried, or failed with the controller's
//! answer. Every request of the agent to the controller (faults, commits, punches)
//! goes through `ask` here.

use super::Agent;
use crate::bdev::{BdevIo, IoStatus};
use crate::reactor;
use crate::vdisk::msg::AgentRequest;

/// What a parked request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum FaultKey {
    /// A writable top layer at this virtual segment.
    Write(u64),
    /// Granules `[first, last]` of this segment held by the writable top layer.
    Materialize(u64, u64, u64),
}

impl Agent {
    pub(super) fn park(&self, io: BdevIo, key: FaultKey) {
        let first = {
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
        if first {
            let me = self.rc();
            reactor::spawn_local(async move {
                let st = me.resolve(key).await;
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
    }

    /// Sends `request` to the controller and returns its answer (Aborted if the pool is
    /// gone).
    pub(super) async fn ask(&self, request: AgentRequest) -> IoStatus {
        match self.shared.ask_controller(request).await {
            Ok(Some(st)) => st,
            _ => IoStatus::Aborted,
        }
    }

    async fn resolve(&self, key: FaultKey) -> IoStatus {
        let disk = self.disk;
        match key {
            FaultKey::Write(vseg) => self.ask(AgentRequest::MakeWritable { disk, vseg }).await,
            FaultKey::Materialize(vseg, first, last) => {
                self.ask(AgentRequest::Materialize {
                    disk,
                    vseg,
                    first,
                    last,
                })
                .await
            }
        }
    }

    pub(super) async fn commit(&self) -> IoStatus {
        self.ask(AgentRequest::Commit).await
    }
}
