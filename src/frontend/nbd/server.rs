//! [`NbdServer`]: the listening socket, the acceptor task on core 0, the hand-off of
//! connections to cores, and the per-core registry that lets the control plane close
//! them.

use super::budget::BufferBudget;
use super::export::{ExportEntry, ExportTable, NbdConfig, NbdExport, NbdExportInfo, NbdLimits};
use super::state::{ConnState, NbdStats, ServerCounters};
use super::tls::{NbdTlsSettings, ServerTls, TlsRefusals};
use super::{NbdError, conn};
use crate::bdev::BdevRegistry;
use crate::frontend::conn_limits::{ConnPermit, HostCounts, RefusalLog};
use crate::reactor::io::Async;
use crate::reactor::{self, Cores, RemoteHandle};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

/// The core that runs the acceptor.
const ACCEPTOR_CORE: usize = 0;

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// What every core shares about a server.
pub(crate) struct ServerShared {
    pub(crate) id: u64,
    /// Finds a bdev by name (the snapshot of a `qemu:dirty-bitmap:<name>` context).
    pub(crate) lookup: std::sync::OnceLock<BdevLookup>,
    pub(crate) cores: Cores,
    pub(crate) exports: ExportTable,
    pub(crate) counters: ServerCounters,
    stopping: AtomicBool,
    next_core: AtomicUsize,
    limits: NbdLimits,
    /// Connections open now (counted from accept to the end of their task).
    open: Arc<AtomicU32>,
    /// Connections open now by source address.
    by_host: HostCounts,
    /// The TLS context and policy (`None`: `tls: off`).
    pub(crate) tls: Option<Arc<ServerTls>>,
    /// The settings it was built from (what `save_config` writes back).
    tls_settings: NbdTlsSettings,
    /// Rate-limited log of clients refused for TLS reasons.
    pub(crate) tls_refusals: TlsRefusals,
    /// The payload bytes all connections hold together (`max_buffer_bytes`).
    pub(crate) budget: BufferBudget,
}

impl ServerShared {
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// How long a connection may wait for buffer bytes.
    pub(crate) fn buffer_wait_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.buffer_wait_timeout_ms)
    }
}

/// The control handle of one connection, on its core: how the control plane asks it to
/// close, and which export it serves.
pub(crate) struct ConnCtl {
    close: Cell<bool>,
    /// The connection task's waker (the same task runs handshake and transmission).
    waker: RefCell<Option<Waker>>,
    woken: Cell<bool>,
    /// Id of the export in transmission (0 before `GO`).
    export_id: Cell<u64>,
    state: Cell<ConnState>,
    shared: Arc<ServerShared>,
}

impl ConnCtl {
    fn new(shared: Arc<ServerShared>) -> ConnCtl {
        shared.counters.enter(ConnState::Accepted);
        ConnCtl {
            close: Cell::new(false),
            waker: RefCell::new(None),
            woken: Cell::new(false),
            export_id: Cell::new(0),
            state: Cell::new(ConnState::Accepted),
            shared,
        }
    }

    /// True once the control plane asked the connection to close.
    pub(crate) fn close_requested(&self) -> bool {
        self.close.get()
    }

    fn request_close(&self) {
        self.close.set(true);
        self.wake();
    }

    /// Remembers the task's waker (called at the start of every poll).
    #[inline]
    pub(crate) fn set_waker(&self, w: &Waker) {
        self.woken.set(false);
        let mut slot = self.waker.borrow_mut();
        match &*slot {
            Some(old) if old.will_wake(w) => {}
            _ => *slot = Some(w.clone()),
        }
    }

    /// A clone of the connection task's waker (for wakes from other cores).
    pub(crate) fn waker(&self) -> Option<Waker> {
        self.waker.borrow().clone()
    }

    /// Wakes the connection task (once until its next poll).
    #[inline]
    pub(crate) fn wake(&self) {
        if self.woken.replace(true) {
            return;
        }
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Moves the state machine.
    pub(crate) fn set_state(&self, to: ConnState) {
        let from = self.state.replace(to);
        if from != to {
            self.shared.counters.transition(from, to);
        }
    }

    pub(crate) fn set_export(&self, id: u64) {
        self.export_id.set(id);
    }

    pub(crate) fn shared(&self) -> &Arc<ServerShared> {
        &self.shared
    }
}

/// The connections (and the acceptor) of every server, on one core.
#[derive(Default)]
struct CoreRegistry {
    servers: RefCell<HashMap<u64, CoreEntry>>,
}

#[derive(Default)]
struct CoreEntry {
    conns: Vec<Rc<ConnCtl>>,
    /// Tasks waiting for connections to go away.
    waiters: Vec<Waker>,
    acceptor: Option<async_task::Task<()>>,
}

fn registry() -> Rc<CoreRegistry> {
    reactor::local(CoreRegistry::default)
}

impl CoreRegistry {
    fn add(&self, server: u64, c: Rc<ConnCtl>) {
        self.servers
            .borrow_mut()
            .entry(server)
            .or_default()
            .conns
            .push(c);
    }

    fn remove(&self, server: u64, c: &Rc<ConnCtl>) {
        let waiters = {
            let mut m = self.servers.borrow_mut();
            let Some(e) = m.get_mut(&server) else {
                return;
            };
            e.conns.retain(|x| !Rc::ptr_eq(x, c));
            let w = std::mem::take(&mut e.waiters);
            if e.conns.is_empty() && e.acceptor.is_none() {
                m.remove(&server);
            }
            w
        };
        for w in waiters {
            w.wake();
        }
    }

    /// Asks the matching connections to close; returns how many match.
    fn close_matching(&self, server: u64, export: Option<u64>) -> usize {
        let matching: Vec<Rc<ConnCtl>> = self
            .servers
            .borrow()
            .get(&server)
            .map(|e| {
                e.conns
                    .iter()
                    .filter(|c| export.is_none_or(|id| c.export_id.get() == id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for c in &matching {
            c.request_close();
        }
        matching.len()
    }

    fn count_matching(&self, server: u64, export: Option<u64>) -> usize {
        self.servers.borrow().get(&server).map_or(0, |e| {
            e.conns
                .iter()
                .filter(|c| export.is_none_or(|id| c.export_id.get() == id))
                .count()
        })
    }

    fn wait_on(&self, server: u64, w: &Waker) {
        if let Some(e) = self.servers.borrow_mut().get_mut(&server) {
            e.waiters.push(w.clone());
        }
    }

    fn set_acceptor(&self, server: u64, t: async_task::Task<()>) {
        self.servers
            .borrow_mut()
            .entry(server)
            .or_default()
            .acceptor = Some(t);
    }

    fn take_acceptor(&self, server: u64) -> Option<async_task::Task<()>> {
        self.servers
            .borrow_mut()
            .get_mut(&server)
            .and_then(|e| e.acceptor.take())
    }
}

/// On the current core: closes the connections of `server` (only those of `export` if
/// given) and waits until they are gone.
async fn close_on_core(server: u64, export: Option<u64>) {
    let reg = registry();
    reg.close_matching(server, export);
    std::future::poll_fn(|cx| {
        if reg.count_matching(server, export) == 0 {
            Poll::Ready(())
        } else {
            reg.wait_on(server, cx.waker());
            Poll::Pending
        }
    })
    .await
}

/// Accepts connections and hands each to a core, round-robin.
async fn accept_loop(shared: Arc<ServerShared>, listener: Async<mio::net::TcpListener>) {
    let local = listener.get_ref().local_addr().ok();
    let mut refusals = RefusalLog::default();
    loop {
        match listener.read_with(|l| l.accept()).await {
            Ok((stream, peer)) => {
                if shared.stopping() {
                    continue;
                }
                let permit = match ConnPermit::take(
                    &shared.open,
                    &[("max_connections", shared.limits.max_connections)],
                    &[(
                        &shared.by_host,
                        (
                            "max_connections_per_host",
                            shared.limits.max_connections_per_host,
                        ),
                    )],
                    peer.ip(),
                ) {
                    Ok(p) => p,
                    Err((limit, value)) => {
                        // Closed before the handshake: nothing was allocated for it.
                        drop(stream);
                        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                        refusals.refused(
                            local,
                            peer,
                            limit,
                            value,
                            "nbd: connection refused: over the limit (closed before the handshake)",
                        );
                        continue;
                    }
                };
                let stream: std::net::TcpStream = stream.into();
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "nbd: cannot set TCP_NODELAY");
                }
                shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                let core = shared.next_core.fetch_add(1, Ordering::Relaxed) % shared.cores.len();
                let s2 = shared.clone();
                if shared
                    .cores
                    .send(core, move || spawn_connection(s2, stream, peer, permit))
                    .is_err()
                {
                    tracing::warn!(%peer, core, "nbd: core stopped; connection dropped");
                }
            }
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "nbd: accept failed");
                    reactor::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// On the connection's core: registers it and spawns its task.
fn spawn_connection(
    shared: Arc<ServerShared>,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: ConnPermit,
) {
    if shared.stopping() {
        return;
    }
    let ctl = Rc::new(ConnCtl::new(shared.clone()));
    let reg = registry();
    reg.add(shared.id, ctl.clone());
    let server = shared.id;
    reactor::spawn_local(async move {
        tracing::debug!(%peer, core = ?reactor::current_core(), "nbd: connection");
        conn::serve(ctl.clone(), stream, peer).await;
        tracing::debug!(%peer, "nbd: connection closed");
        registry().remove(server, &ctl);
        drop(permit);
    })
    .detach();
}

/// A future that resolves once connections asked to close are gone (see
/// [`NbdServer::remove_export`] and [`NbdServer::shutdown`]). Dropping it does not stop
/// the closing.
pub type Closing = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

fn join_all(handles: Vec<RemoteHandle<()>>) -> Closing {
    Box::pin(async move {
        for h in handles {
            let _ = h.await;
        }
    })
}

/// Finds a bdev by name.
pub type BdevLookup = Arc<dyn Fn(&str) -> Option<Arc<dyn crate::bdev::Bdev>> + Send + Sync>;

/// A running NBD server. See the [module docs](super).
pub struct NbdServer {
    shared: Arc<ServerShared>,
    local_addr: SocketAddr,
    stopped: bool,
}

impl NbdServer {
    /// Listens on `addr` (port 0 picks a free port) and serves `exports` on `cores`. The
    /// acceptor runs on core 0. May be called from any thread.
    pub fn start(
        cores: &Cores,
        addr: SocketAddr,
        exports: Vec<NbdExport>,
    ) -> Result<NbdServer, NbdError> {
        NbdServer::start_with_limits(cores, addr, exports, NbdLimits::default())
    }

    /// [`NbdServer::start`] with connection limits.
    pub fn start_with_limits(
        cores: &Cores,
        addr: SocketAddr,
        exports: Vec<NbdExport>,
        limits: NbdLimits,
    ) -> Result<NbdServer, NbdError> {
        NbdServer::start_with_tls(cores, addr, exports, limits, NbdTlsSettings::default())
    }

    /// [`NbdServer::start`] with connection limits and TLS settings (the certificate,
    /// key and CA files are read now; errors name the field under `nbd.`).
    pub fn start_with_tls(
        cores: &Cores,
        addr: SocketAddr,
        exports: Vec<NbdExport>,
        limits: NbdLimits,
        tls_settings: NbdTlsSettings,
    ) -> Result<NbdServer, NbdError> {
        limits.validate()?;
        let tls = tls_settings.build("nbd.")?;
        let table = ExportTable::default();
        for e in exports {
            table.add(e)?;
        }
        let listener =
            std::net::TcpListener::bind(addr).map_err(|cause| NbdError::Bind { addr, cause })?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(ServerShared {
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            lookup: std::sync::OnceLock::new(),
            cores: cores.clone(),
            exports: table,
            counters: ServerCounters::default(),
            stopping: AtomicBool::new(false),
            next_core: AtomicUsize::new(0),
            limits,
            open: Arc::new(AtomicU32::new(0)),
            by_host: HostCounts::default(),
            tls,
            tls_settings,
            tls_refusals: TlsRefusals::default(),
            budget: BufferBudget::new(limits.max_buffer_bytes),
        });
        let s2 = shared.clone();
        let registered = cores.call(ACCEPTOR_CORE, move || {
            let l = mio::net::TcpListener::from_std(listener);
            let a = Async::new(l)?;
            let id = s2.id;
            let task = reactor::spawn_local(accept_loop(s2, a));
            registry().set_acceptor(id, task);
            Ok::<(), io::Error>(())
        });
        // Wait for the acceptor unless we are a reactor ourselves (which must not block).
        if reactor::current_core().is_none() {
            reactor::block_on(registered)??;
        }
        tracing::info!(
            %local_addr,
            exports = shared.exports.list().len(),
            tls = ?shared.tls_settings.mode,
            "nbd: listening"
        );
        Ok(NbdServer {
            shared,
            local_addr,
            stopped: false,
        })
    }

    /// Starts a server from the `nbd:` section of the configuration, looking bdevs up in
    /// `registry`.
    pub fn from_config(
        cores: &Cores,
        config: &NbdConfig,
        registry: &BdevRegistry,
    ) -> Result<NbdServer, NbdError> {
        let exports = config.resolve(registry)?;
        NbdServer::start_with_tls(
            cores,
            config.listen_addr()?,
            exports,
            config.limits(),
            config.tls_settings(),
        )
    }

    /// The TLS settings (file names, never their contents).
    pub fn tls_settings(&self) -> &NbdTlsSettings {
        &self.shared.tls_settings
    }

    /// How the server finds the bdev a `qemu:dirty-bitmap:<name>` context names (set
    /// once; without it no such context is offered).
    pub fn set_bdev_lookup(&self, lookup: BdevLookup) {
        let _ = self.shared.lookup.set(lookup);
    }

    /// The connection limits.
    pub fn limits(&self) -> NbdLimits {
        self.shared.limits
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Adds an export; new connections can open it at once.
    pub fn add_export(&self, export: NbdExport) -> Result<NbdExportInfo, NbdError> {
        if self.shared.stopping() {
            return Err(NbdError::Stopped);
        }
        let e = self.shared.exports.add(export)?;
        tracing::info!(export = %e.name, bdev = e.bdev.name(), "nbd: export added");
        Ok(e.info())
    }

    /// Removes an export: new clients can no longer open it, and its open connections are
    /// closed (each finishes its in-flight requests and sends their replies first). The
    /// returned future resolves when they are all closed; dropping it does not stop that.
    pub fn remove_export(&self, name: &str) -> Result<Closing, NbdError> {
        let entry: Arc<ExportEntry> = self.shared.exports.remove(name)?;
        entry.mark_removed();
        tracing::info!(export = %name, "nbd: export removed");
        let server = self.shared.id;
        let export = entry.id;
        let handles = (0..self.shared.cores.len())
            .map(|core| {
                self.shared
                    .cores
                    .spawn_on(core, move || close_on_core(server, Some(export)))
            })
            .collect();
        Ok(join_all(handles))
    }

    /// The exports, with their sizes and open connections.
    pub fn exports(&self) -> Vec<NbdExportInfo> {
        self.shared
            .exports
            .list()
            .iter()
            .map(|e| e.info())
            .collect()
    }

    /// Connection and request counters.
    pub fn stats(&self) -> NbdStats {
        NbdStats {
            buffer_bytes: self.shared.budget.used(),
            ..self.shared.counters.snapshot()
        }
    }

    /// Stops accepting and closes every connection (in-flight requests finish and are
    /// answered first). Starts at once; the future resolves when everything is closed.
    pub fn shutdown(&mut self) -> Closing {
        self.stopped = true;
        self.shared.stopping.store(true, Ordering::Release);
        let (tx, rx) = futures_channel::oneshot::channel::<Vec<RemoteHandle<()>>>();
        let server = self.shared.id;
        let cores = self.shared.cores.clone();
        // Close the listener first, then ask every core — from the acceptor's core, so
        // these messages queue behind any connection it handed off before.
        let sent = self.shared.cores.send(ACCEPTOR_CORE, move || {
            drop(registry().take_acceptor(server));
            let handles = (0..cores.len())
                .map(|core| cores.spawn_on(core, move || close_on_core(server, None)))
                .collect();
            let _ = tx.send(handles);
        });
        if sent.is_err() {
            tracing::debug!("nbd: reactors already stopped");
        }
        Box::pin(async move {
            if let Ok(handles) = rx.await {
                join_all(handles).await;
            }
        })
    }

    /// [`NbdServer::shutdown`], waiting for it. On a reactor thread (which must not
    /// block) it only starts the shutdown.
    pub fn stop(mut self) {
        let closing = self.shutdown();
        if reactor::current_core().is_none() {
            reactor::block_on(closing);
        }
        tracing::info!(addr = %self.local_addr, "nbd: stopped");
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if !self.stopped {
            drop(self.shutdown());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn control_plane_types_cross_threads() {
        // The JSON-RPC server and the main thread hold these.
        send_sync::<NbdServer>();
        send::<Closing>();
        send_sync::<NbdExport>();
    }
}
