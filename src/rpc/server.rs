//! The socket side: a Unix listener on core 0 and one task per connection, also on core
//! 0 (where pool controllers run by default), so a request costs no cross-core hop
//! before its handler runs. Everything is driven by the reactor's readiness driver: an
//! idle reactor parks in `epoll_wait`, and a client's connect or request wakes it.
//!
//! A connection reads, cuts frames ([`Framer`]), and answers each request in order
//! before it reads again; several clients are served concurrently (each has its own
//! task, and a handler that waits — for a pool controller, a split — lets the others
//! run). A client that disconnects mid-request costs nothing but the request; malformed
//! JSON is answered with a parse error; a framing error or an oversized request is
//! answered, then the connection is shut down for writing and its input drained for up
//! to a second so the client can read the answer before the close.

use super::error::RpcError;
use super::methods::{self, Ctx};
use super::protocol::{
    Frame, Framer, Incoming, MAX_REQUEST_BYTES, Request, Response, encode, parse_frame,
};
use crate::reactor::io::{Async, read, write_all};
use crate::reactor::{self, Cores};
use crate::target::Target;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

/// The core that runs the listener and the connections.
const SERVER_CORE: usize = 0;

/// How long a connection being closed after a fatal error keeps draining its input.
const LINGER: Duration = Duration::from_secs(1);

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RpcServerError {
    #[error("RPC socket {path}: another process is listening on it")]
    InUse { path: String },
    #[error("RPC socket {path}: exists and is not a socket")]
    NotASocket { path: String },
    #[error("RPC socket {path}: {cause}")]
    Io { path: String, cause: io::Error },
    #[error("RPC server: {0}")]
    Reactor(String),
    #[error("RPC socket group `{0}` does not exist")]
    NoSuchGroup(String),
}

/// Who may connect to the RPC socket besides its owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SocketAccess {
    /// The owner only: mode 0600.
    #[default]
    Owner,
    /// The owner and this group: mode 0660, the socket's group set to it.
    Group(u32),
}

/// The id of group `name` (or `name` itself if it is a number).
pub fn group_id(name: &str) -> Result<u32, RpcServerError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let missing = || RpcServerError::NoSuchGroup(name.to_string());
    let cname = std::ffi::CString::new(name).map_err(|_| missing())?;
    // SAFETY: `libc::group` is a C struct of integers and pointers, for which all zeros
    // is a valid value (null pointers); getgrnam_r fills it.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `cname` is NUL-terminated, `grp` and
    // `found` are ours, `buf` is a live buffer of the length given. getgrnam_r writes
    // only into them and is thread-safe.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(missing());
    }
    Ok(grp.gr_gid)
}

/// Binds the socket at `path` with its access already set: it is bound inside a
/// private directory (mode 0700) beside `path`, given its mode and group there, and
/// renamed into place, so no one else can connect in between.
fn bind_private(
    path: &Path,
    access: SocketAccess,
) -> Result<std::os::unix::net::UnixListener, RpcServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io_err = |cause| RpcServerError::Io {
        path: path.display().to_string(),
        cause,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let private = dir.join(format!(".{name}.{}.bind", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io_err)?;
    let bound = (|| {
        let tmp = private.join("s");
        let l = std::os::unix::net::UnixListener::bind(&tmp)?;
        let mode = match access {
            SocketAccess::Owner => 0o600,
            SocketAccess::Group(gid) => {
                std::os::unix::fs::chown(&tmp, None, Some(gid))?;
                0o660
            }
        };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound.map_err(io_err)
}

/// The tasks of every server, on the server core.
#[derive(Default)]
struct Registry {
    servers: RefCell<HashMap<u64, ServerTasks>>,
}

#[derive(Default)]
struct ServerTasks {
    acceptor: Option<async_task::Task<()>>,
    conns: HashMap<u64, async_task::Task<()>>,
    next_conn: u64,
}

fn registry() -> Rc<Registry> {
    reactor::local(Registry::default)
}

/// A running JSON-RPC server. Stops (and removes its socket file) when stopped or
/// dropped.
pub struct RpcServer {
    id: u64,
    path: PathBuf,
    cores: Cores,
    stopped: bool,
}

/// Removes a stale socket file; refuses a live one or a file that is not a socket.
fn prepare_path(path: &Path) -> Result<(), RpcServerError> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(cause) => Err(RpcServerError::Io { path: shown, cause }),
        Ok(m) if !m.file_type().is_socket() => Err(RpcServerError::NotASocket { path: shown }),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(RpcServerError::InUse { path: shown });
            }
            std::fs::remove_file(path).map_err(|cause| RpcServerError::Io { path: shown, cause })
        }
    }
}

impl RpcServer {
    /// Listens on the Unix socket `path` and serves `target`'s methods on core 0. From a
    /// thread that is not a reactor it returns once the listener is registered.
    pub fn start(target: Target, path: &Path) -> Result<RpcServer, RpcServerError> {
        RpcServer::start_with_access(target, path, SocketAccess::Owner)
    }

    /// [`RpcServer::start`], with the socket open to `access` (mode 0600, or 0660 and a
    /// group).
    pub fn start_with_access(
        target: Target,
        path: &Path,
        access: SocketAccess,
    ) -> Result<RpcServer, RpcServerError> {
        prepare_path(path)?;
        let io_err = |cause| RpcServerError::Io {
            path: path.display().to_string(),
            cause,
        };
        let listener = bind_private(path, access)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        let id = NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed);
        let cores = target.cores().clone();
        let registered = cores.call(SERVER_CORE, move || {
            let l = Async::new(mio::net::UnixListener::from_std(listener))?;
            let ctx = Ctx::new(target);
            let task = reactor::spawn_local(accept_loop(id, ctx, l));
            registry()
                .servers
                .borrow_mut()
                .entry(id)
                .or_default()
                .acceptor = Some(task);
            Ok::<(), io::Error>(())
        });
        if reactor::current_core().is_none() {
            reactor::block_on(registered)
                .map_err(|e| RpcServerError::Reactor(e.to_string()))?
                .map_err(io_err)?;
        }
        tracing::info!(socket = %path.display(), "JSON-RPC server listening");
        Ok(RpcServer {
            id,
            path: path.to_path_buf(),
            cores,
            stopped: false,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shutdown(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let id = self.id;
        let h = self.cores.call(SERVER_CORE, move || {
            // Take the tasks out first: dropping them cancels their futures.
            let tasks = registry().servers.borrow_mut().remove(&id);
            drop(tasks);
        });
        if reactor::current_core().is_none() {
            let _ = reactor::block_on(h);
        }
        let _ = std::fs::remove_file(&self.path);
        tracing::info!(socket = %self.path.display(), "JSON-RPC server stopped");
    }

    /// Stops listening, closes the connections and removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(id: u64, ctx: Rc<Ctx>, l: Async<mio::net::UnixListener>) {
    loop {
        match l.read_with(|l| l.accept()).await {
            Ok((stream, _)) => {
                let stream = match Async::new(stream) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "rpc: cannot register a connection");
                        continue;
                    }
                };
                let reg = registry();
                let mut servers = reg.servers.borrow_mut();
                let Some(tasks) = servers.get_mut(&id) else {
                    return;
                };
                let conn = tasks.next_conn;
                tasks.next_conn += 1;
                let ctx = ctx.clone();
                let task = reactor::spawn_local(async move {
                    serve_connection(ctx, stream).await;
                    let done = registry()
                        .servers
                        .borrow_mut()
                        .get_mut(&id)
                        .and_then(|t| t.conns.remove(&conn));
                    if let Some(t) = done {
                        t.detach();
                    }
                });
                tasks.conns.insert(conn, task);
            }
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "rpc: accept failed");
                    reactor::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Serves one client until it closes or breaks the framing.
pub(crate) async fn serve_connection(ctx: Rc<Ctx>, s: Async<mio::net::UnixStream>) {
    let mut framer = Framer::new(MAX_REQUEST_BYTES);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        loop {
            match framer.next_frame() {
                Frame::Incomplete => break,
                Frame::Complete(frame) => {
                    if let Some(out) = handle_frame(&ctx, &frame).await
                        && write_all(&s, &out).await.is_err()
                    {
                        return;
                    }
                }
                Frame::Fatal(e) => {
                    tracing::debug!(error = ?e, "rpc: closing a connection");
                    let resp = Response::err(Value::Null, e.to_error());
                    if write_all(&s, &encode(&resp.to_json())).await.is_ok() {
                        linger(&s, &mut buf).await;
                    }
                    return;
                }
            }
        }
        match read(&s, &mut buf).await {
            Ok(0) => {
                if framer.has_partial() {
                    tracing::debug!("rpc: client closed in the middle of a request");
                }
                return;
            }
            Ok(n) => framer.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Shuts the write side and discards input until the client closes (or a while has
/// passed), so the client reads the last answer instead of a reset.
async fn linger(s: &Async<mio::net::UnixStream>, buf: &mut [u8]) {
    let _ = s.get_ref().shutdown(std::net::Shutdown::Write);
    let mut timer = Box::pin(reactor::sleep(LINGER));
    std::future::poll_fn(|cx| {
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        loop {
            match s.get_ref().read(buf) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.clear_readable();
                    if s.poll_readable(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(_) => return Poll::Ready(()),
            }
        }
    })
    .await
}

/// The bytes to send for one frame (`None`: notifications only).
async fn handle_frame(ctx: &Rc<Ctx>, frame: &[u8]) -> Option<Vec<u8>> {
    match parse_frame(frame) {
        Err(resp) => Some(encode(&resp.to_json())),
        Ok(Incoming::Single(r)) => handle_one(ctx, r).await.map(|resp| encode(&resp.to_json())),
        Ok(Incoming::Batch(rs)) => {
            let mut out = Vec::new();
            for r in rs {
                if let Some(resp) = handle_one(ctx, r).await {
                    out.push(resp.to_json());
                }
            }
            (!out.is_empty()).then(|| encode(&Value::Array(out)))
        }
    }
}

async fn handle_one(ctx: &Rc<Ctx>, r: Result<Request, Response>) -> Option<Response> {
    let req = match r {
        Ok(req) => req,
        Err(resp) => return Some(resp),
    };
    let result: Result<Value, RpcError> = methods::call(ctx.clone(), &req.method, req.params).await;
    match &result {
        Ok(_) => tracing::debug!(method = %req.method, "rpc"),
        Err(e) => {
            tracing::debug!(method = %req.method, code = e.code, error = %e.message, "rpc failed")
        }
    }
    req.id.map(|id| Response { id, result })
}
