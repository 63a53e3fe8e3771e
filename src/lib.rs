//! # tessera
//!
//! A userspace, polled-mode block-storage engine. Front ends (NVMe/TCP, NBD, the
//! in-process benchmark) submit I/O to **bdevs**; a virtual disk is a bdev whose
//! per-core **mapping agents** look up this core's view of its mapping table and route
//! each I/O to the base bdevs of its **pool**, and whose **controller** (one core) owns
//! the durable table, allocates segments and resolves copy-on-write faults.
//!
//! ```text
//!   front ends          NVMe/TCP target · NBD server · in-process bench
//!                            │ every connection/queue pair belongs to one core
//!   mapping agents      one per core per virtual disk, no locks
//!                            │ mapping fault → message to the controller core
//!   controller          durable table, allocator, journal, snapshots, split
//!   base bdevs          malloc · null · uring · error; one channel per core
//! ```
//!
//! Everything runs on [`reactor`]s — one pinned thread per core that polls its message
//! queue, ready tasks, pollers and timers. Start with the module docs of [`reactor`]
//! (the threading model), then [`bdev`] (the block-device interface every layer speaks).

pub mod bdev;
pub mod bench;

pub mod config;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod keyring;
pub mod nvme;
pub mod reactor;
pub mod replicate;
pub mod rpc;
pub mod sim;
pub mod target;
pub mod util;
pub mod vdisk;

/// Version string reported by `tessera --version` and `spdk_get_version`.
pub fn version() -> String {
    format!(
        "tessera {} (git {})",
        env!("CARGO_PKG_VERSION"),
        env!("TESSERA_GIT_REV")
    )
}
