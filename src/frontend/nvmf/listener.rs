//! Listeners: one accept task per listen address, on core 0. Each accepted connection
//! is handed (as a `Send` std socket) to the next core, round-robin, where it becomes a
//! queue pair for the rest of its life.

use super::config::{ListenerLimits, TransportOptions};
use super::qpair;
use super::target::TargetShared;
use crate::frontend::conn_limits::{ConnPermit, HostCounts, Limit, RefusalLog};
use crate::reactor::{self, io::Async};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The core that runs accept loops.
const ACCEPT_CORE: usize = 0;

static NEXT_LISTENER_ID: AtomicU64 = AtomicU64::new(1);

/// The accept tasks of one reactor, by listener id; dropping one stops it.
#[derive(Default)]
struct ListenerTasks {
    tasks: RefCell<HashMap<u64, async_task::Task<()>>>,
}

/// How a listener's connections start.
#[derive(Clone)]
pub(crate) struct ListenMode {
    /// The TLS server context (secure channel or concatenation).
    pub tls: Option<openssl::ssl::SslContext>,
    /// TLS is required (SPDK's `secure_channel`).
    pub secure_channel: bool,
    /// Secure channel concatenation (tessera's `secure_concat`): a connection may
    /// start with TLS or with plain TCP, as its first byte says.
    pub secure_concat: bool,
}

/// A running listener.
pub(crate) struct ListenerHandle {
    addr: SocketAddr,
    id: u64,
    target: Arc<TargetShared>,
}

impl ListenerHandle {
    /// The address bound.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (connections already accepted go on).
    pub(crate) fn stop(self) {
        let id = self.id;
        let _ = self.target.cores.send(ACCEPT_CORE, move || {
            let t = reactor::local(ListenerTasks::default)
                .tasks
                .borrow_mut()
                .remove(&id);
            drop(t);
        });
        tracing::info!(addr = %self.addr, "listener stopped");
    }
}

/// Binds `addr` now (so errors and the chosen port are known at once) and starts its
/// accept loop on the accept core, with the listener's own connection `limits` on top
/// of the transport's.
pub(crate) fn start(
    target: Arc<TargetShared>,
    addr: SocketAddr,
    opts: Arc<TransportOptions>,
    mode: ListenMode,
    limits: ListenerLimits,
) -> std::io::Result<ListenerHandle> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    let bound = l.local_addr()?;
    let id = NEXT_LISTENER_ID.fetch_add(1, Ordering::Relaxed);
    let t2 = target.clone();
    target
        .cores
        .send(ACCEPT_CORE, move || {
            let task = reactor::spawn_local(accept_loop(t2, l, opts, mode, limits));
            reactor::local(ListenerTasks::default)
                .tasks
                .borrow_mut()
                .insert(id, task);
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(ListenerHandle {
        addr: bound,
        id,
        target,
    })
}

async fn accept_loop(
    target: Arc<TargetShared>,
    l: std::net::TcpListener,
    opts: Arc<TransportOptions>,
    mode: ListenMode,
    limits: ListenerLimits,
) {
    let l = match Async::new(mio::net::TcpListener::from_std(l)) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register listener");
            return;
        }
    };
    let local = l.get_ref().local_addr().ok();
    let open = Arc::new(AtomicU32::new(0));
    // The transport's limits, then the listener's own (named `listener.…` in refusals).
    let mut max_total: Vec<Limit> = vec![(
        "max_connections_per_listener",
        opts.max_connections_per_listener,
    )];
    if let Some(n) = limits.max_connections {
        max_total.push(("listener.max_connections", n));
    }
    let by_host_here = HostCounts::default();
    let mut max_host = vec![(
        target.conns_by_host(),
        ("max_connections_per_host", opts.max_connections_per_host),
    )];
    if let Some(n) = limits.max_connections_per_host {
        max_host.push((&by_host_here, ("listener.max_connections_per_host", n)));
    }
    let mut refusals = RefusalLog::default();
    loop {
        match l.read_with(|l| l.accept()).await {
            Ok((s, peer)) => {
                let permit = match ConnPermit::take(&open, &max_total, &max_host, peer.ip()) {
                    Ok(p) => p,
                    Err((what, limit)) => {
                        // Closed before its ICReq: nothing was allocated for it.
                        drop(s);
                        refusals.refused(
                            local,
                            peer,
                            what,
                            limit,
                            "NVMe/TCP connection refused: over the limit (closed before ICReq)",
                        );
                        continue;
                    }
                };
                let s: std::net::TcpStream = s.into();
                let core = target.pick_core();
                let (t2, o2, mode2) = (target.clone(), opts.clone(), mode.clone());
                tracing::debug!(%peer, core, "connection accepted");
                if let Err(e) = target
                    .cores
                    .send(core, move || qpair::spawn(t2, s, o2, peer, permit, mode2))
                {
                    tracing::warn!(error = %e, "cannot hand the connection to its core");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                reactor::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
