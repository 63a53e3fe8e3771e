//! The NVMe over Fabrics target with the TCP transport: subsystems, controllers, and
//! queue pairs spread over the reactors.
//!
//! # Layout
//!
//! The codec (queue entries, status codes, commands, Identify data and log pages, PDUs)
//! is [`crate::nvme`], shared with the initiator ([`crate::bdev::nvme`], the host side
//! whose remote namespaces are bdevs).
//!
//! - [`config`]: the `nvmf:` YAML section and the transport options.
//! - [`target`]: [`NvmfTarget`], the control API (SPDK's `nvmf_*` RPCs).
//! - `subsystem`: subsystems, namespaces, and the state a controller shares across cores.
//! - `listener`: accept loops; connections go to the cores round-robin.
//! - `qpair`: one connection on one core — the request state machine, receive parsing,
//!   batched sending, NVM I/O.
//! - `ctrlr`: Connect, properties, and the admin command set of a controller.
//! - `tls`: secure-channel listeners: the TLS server context and the PSK look-up that
//!   admits a host by its PSK identity.
//! - `auth`: DH-HMAC-CHAP, the per-queue-pair state machine behind AUTH_Send and
//!   AUTH_Receive.
//!
//! # Threading
//!
//! A queue pair lives on the core it was accepted onto and its I/O path takes no lock:
//! it reads its own copy of the namespace table (refreshed when the subsystem's
//! generation counter moves) and its own bdev channels. A controller belongs to its
//! admin queue pair's core; I/O queue pairs reach it through atomics (`failed`, CC,
//! CSTS) and messages. Connect and disconnect take short-lived mutexes.

mod auth;
pub mod config;
mod ctrlr;
mod listener;
mod qpair;
pub mod subsystem;
pub mod target;
mod tls;

pub use config::{
    ListenerConfig, ListenerLimits, NamespaceConfig, NvmfConfig, SubsystemConfig, TransportOptions,
};
pub use target::{
    CreateSubsystemParams, ListenAddressParams, ListenerSecurity, NamespaceParams, NvmfError,
    NvmfTarget,
};
