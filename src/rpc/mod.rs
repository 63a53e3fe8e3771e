//! The JSON-RPC 2.0 control plane: SPDK's method and parameter names over a Unix socket,
//! so SPDK's own client (`spdk-rpc` from the PyPI package `spdk`) drives a tessera
//! target, plus tessera's own methods (consistency groups, quiesce, split progress, the
//! NBD server, YAML configuration).
//!
//! - [`protocol`]: framing, request parsing, responses — pure, total, fuzzed.
//! - [`error`]: error objects and the one mapping of engine errors to codes.
//! - [`methods`]: the method table and the handlers.
//! - [`server`]: the Unix socket listener and connections, on core 0.
//! - [`client`]: the blocking client behind `tessera rpc`.
//! - [`metrics`]: the Prometheus endpoint of `tessera serve --metrics`.
//!
//! The RPC sits on top: it calls into [`crate::config`] (parameter decoding, the
//! parameters of the configuration methods, SPDK's JSON configuration both ways) and
//! [`crate::target`], and neither of them uses it.

pub mod client;
pub mod error;
pub mod job_wait;
pub mod methods;
pub mod metrics;
pub mod protocol;
pub mod server;

pub use client::RpcClient;
pub use error::RpcError;
pub use server::{RpcServer, RpcServerError, SocketAccess};

/// The socket `tessera serve` listens on and `tessera rpc` connects to by default.
pub const DEFAULT_SOCKET: &str = "/var/tmp/tessera.sock";
