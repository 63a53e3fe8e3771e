//! The NBD server: exports bdevs to Network Block Device clients (qemu, libnbd's
//! `nbdinfo`/`nbdcopy`/`nbdfuse`, fio's `nbd` engine, the Linux kernel client).
//!
//! # Protocol
//!
//! Fixed newstyle handshake with `NBD_OPT_LIST`, `INFO`, `GO` (and the old
//! `EXPORT_NAME`), `STRUCTURED_REPLY`, `EXTENDED_HEADERS`, `LIST_META_CONTEXT` and
//! `SET_META_CONTEXT` for `base:allocation`, `ABORT`. Transmission: `READ`, `WRITE` (with
//! FUA), `FLUSH`, `TRIM`, `WRITE_ZEROES` (with `NO_HOLE`), `BLOCK_STATUS`, `DISC`; simple,
//! structured or extended replies as negotiated. TLS through `NBD_OPT_STARTTLS` when
//! configured (modes off, optional and required, client authorisation by certificate:
//! [`tls`]).
//!
//! Every export advertises `NBD_FLAG_CAN_MULTI_CONN`: a bdev flush covers every write
//! completed on any core, and a connection submits the bdev flush of an `NBD_CMD_FLUSH`
//! only once every write, trim and write-zeroes it had in flight when the flush arrived
//! has completed — so a flush covers whatever was replied to, on any connection, before
//! it arrived. Block sizes are advertised (`NBD_INFO_BLOCK_SIZE`): minimum = 1,
//! preferred = max(4 KiB, block size), maximum = 32 MiB (why: `ExportEntry::block_sizes`).
//! Requests not aligned to the bdev's block size are served on the blocks that cover
//! them: reads read them, writes and write-zeroes read-modify-write their partial edge
//! blocks under the export's range lock (`range_lock`: a read-modify-write and any other
//! modifying request touching the same blocks, on any connection, never run at once),
//! trims are narrowed to the whole blocks inside. Reads above the maximum get
//! `EOVERFLOW`, writes above it `EINVAL` after their payload is consumed (with extended
//! headers an oversized payload closes the connection, as proto.md says). A request that
//! fails validation never touches the bdev. The empty export name selects the only
//! export when there is exactly one.
//!
//! # Threads
//!
//! The listening socket lives on core 0 of the [`Cores`](crate::reactor::Cores) it was
//! started with (the acceptor). Each accepted connection is handed, round-robin, to a
//! core, which runs its handshake and its transmission phase: one task per connection,
//! reading many requests per `read`, submitting them to the core's bdev channel,
//! writing the replies of each loop iteration with one `writev`. Nothing on that path
//! takes a lock or allocates in steady state (request slots and their buffers are reused).
//!
//! # Stopping and removing exports
//!
//! [`NbdServer::remove_export`] forgets the export at once (new clients cannot open it)
//! and closes its open connections: each stops reading requests, lets its in-flight I/O
//! complete, sends the replies, and closes. [`NbdServer::stop`] does the same for every
//! connection after the listening socket is closed.
//!
//! # Files
//!
//! - [`proto`]: the wire format (pure codec), [`check`]: request validation (pure),
//!   [`unaligned`]: where an unaligned request lies in its blocks and the steps of its
//!   read-modify-write (pure); `range_lock`: the export's range lock.
//! - `server`: [`NbdServer`], the acceptor and the per-core connection registry.
//! - `handshake`: option haggling; `conn`: the connection task and its transmission
//!   future; `transmission`: request slots, request handling and socket I/O
//!   (`transmission::rmw`: unaligned writes and the locked slow path); `flush`: flush
//!   ordering; `recv`: the receive buffer.
//! - [`export`]: exports and the `nbd:` config section; [`state`]: the connection state
//!   machine and counters; [`tls`]: TLS settings, the OpenSSL context, client
//!   authorisation and the non-blocking handshake.

mod budget;
pub mod check;
mod conn;
pub mod export;
mod flush;
mod handshake;
pub mod proto;
mod range_lock;
mod server;
pub mod state;
pub mod tls;
mod transmission;
pub mod unaligned;

pub use export::{
    MAX_PAYLOAD_BYTES, NbdConfig, NbdExport, NbdExportConfig, NbdExportInfo, NbdLimits,
};
pub use server::{BdevLookup, Closing, NbdServer};
pub use state::{ConnState, NbdStats};
pub use tls::{NbdTlsSettings, TlsMode};

use crate::reactor::SendError;
use std::net::SocketAddr;

/// Errors of the NBD server's control plane.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("nbd: cannot listen on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("nbd: listen address `{addr}` is invalid: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("nbd: export `{0}` already exists")]
    ExportExists(String),
    #[error("nbd: export `{0}` does not exist")]
    NoSuchExport(String),
    #[error("nbd: export name `{name}` {reason}")]
    InvalidExportName { name: String, reason: String },
    #[error("{field}: {reason}")]
    Config { field: String, reason: String },
    #[error("nbd: the server has stopped")]
    Stopped,
    #[error("nbd: {0}")]
    Reactor(SendError),
    #[error("nbd: {0}")]
    Io(std::io::Error),
}

// Not `#[from]`: the message holds the cause, and a source would print it twice in a
// chain of causes.
impl From<SendError> for NbdError {
    fn from(e: SendError) -> NbdError {
        NbdError::Reactor(e)
    }
}

impl From<std::io::Error> for NbdError {
    fn from(e: std::io::Error) -> NbdError {
        NbdError::Io(e)
    }
}
