//! The connection state machine and the server's counters.
//!
//! Every connection moves forward through [`ConnState`]; the server keeps a gauge per
//! state (how many connections are in it now), checked on every transition like the
//! request states of SPDK's `tcp.c`, and totals of requests and bytes that connections
//! fold in as they go (every [`FOLD_EVERY`] requests, and whenever they fall idle), so
//! the I/O path touches no shared cache line per request.

use serde::Serialize;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The life of an NBD connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// Accepted by the acceptor and handed to its core; greeting not yet sent.
    Accepted,
    /// Greeting sent; option haggling (LIST, INFO, GO, …) until `GO` or `EXPORT_NAME`
    /// enters transmission, or the client aborts.
    Negotiating,
    /// Transmission: reading requests, running bdev I/O, writing replies.
    Transmission,
    /// No more requests are read (client sent `NBD_CMD_DISC` or closed its side, the
    /// server is stopping or the export was removed, or the client broke the protocol);
    /// in-flight I/O completes and its replies are flushed.
    Draining,
    /// The socket is closed; the connection is forgotten.
    Closed,
}

impl ConnState {
    /// Number of states.
    pub const COUNT: usize = 5;

    /// Index of the state in counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// True if the machine may go from `self` to `to`.
    pub fn may_become(self, to: ConnState) -> bool {
        use ConnState::*;
        matches!(
            (self, to),
            (Accepted, Negotiating)
                | (Accepted, Closed)
                | (Negotiating, Transmission)
                | (Negotiating, Closed)
                | (Transmission, Draining)
                | (Draining, Closed)
        )
    }

    /// The state names, in index order.
    pub const ALL: [ConnState; ConnState::COUNT] = [
        ConnState::Accepted,
        ConnState::Negotiating,
        ConnState::Transmission,
        ConnState::Draining,
        ConnState::Closed,
    ];
}

/// How many requests a connection serves between two folds of its counters.
pub const FOLD_EVERY: u64 = 256;

/// Request kinds counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    /// A read, write or write-zeroes not aligned to the block size (also counted as its
    /// own kind).
    Unaligned,
    /// A write, trim or write-zeroes that waited for the range lock of its blocks (also
    /// counted as its own kind).
    LockWait,
}

const KINDS: usize = 8;

/// Counters of one connection, on its own core.
#[derive(Default)]
pub(crate) struct LocalCounters {
    requests: [Cell<u64>; KINDS],
    errors: Cell<u64>,
    bytes_read: Cell<u64>,
    bytes_written: Cell<u64>,
    since_fold: Cell<u64>,
}

impl LocalCounters {
    /// Counts a request; returns true when it is time to fold.
    #[inline]
    pub(crate) fn request(&self, kind: RequestKind, bytes: u64) -> bool {
        let c = &self.requests[kind as usize];
        c.set(c.get() + 1);
        match kind {
            RequestKind::Read => self.bytes_read.set(self.bytes_read.get() + bytes),
            RequestKind::Write => self.bytes_written.set(self.bytes_written.get() + bytes),
            _ => {}
        }
        let n = self.since_fold.get() + 1;
        self.since_fold.set(n);
        n >= FOLD_EVERY
    }

    /// True if anything was counted since the last fold.
    pub(crate) fn pending(&self) -> bool {
        self.since_fold.get() > 0 || self.errors.get() > 0
    }

    /// Counts a request answered with an error.
    #[inline]
    pub(crate) fn error(&self) {
        self.errors.set(self.errors.get() + 1);
    }

    /// Adds the counts to `to` and resets them.
    pub(crate) fn fold_into(&self, to: &ServerCounters) {
        for (i, c) in self.requests.iter().enumerate() {
            to.requests[i].fetch_add(c.take(), Ordering::Relaxed);
        }
        to.errors.fetch_add(self.errors.take(), Ordering::Relaxed);
        to.bytes_read
            .fetch_add(self.bytes_read.take(), Ordering::Relaxed);
        to.bytes_written
            .fetch_add(self.bytes_written.take(), Ordering::Relaxed);
        self.since_fold.set(0);
    }
}

/// Counters of a server, shared by its cores.
#[derive(Default)]
pub(crate) struct ServerCounters {
    in_state: [AtomicU64; ConnState::COUNT],
    pub(crate) accepted: AtomicU64,
    /// Connections closed at accept for being over a connection limit.
    pub(crate) refused: AtomicU64,
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    /// Times a connection stopped reading for want of buffer bytes (`max_buffer_bytes`).
    pub(crate) buffer_waits: AtomicU64,
    /// Connections closed for waiting longer than `buffer_wait_timeout_ms`.
    pub(crate) buffer_wait_timeouts: AtomicU64,
    requests: [AtomicU64; KINDS],
    errors: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl ServerCounters {
    /// A connection enters its first state.
    pub(crate) fn enter(&self, s: ConnState) {
        self.in_state[s.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection moves from `from` to `to`.
    pub(crate) fn transition(&self, from: ConnState, to: ConnState) {
        debug_assert!(from.may_become(to), "NBD connection: {from:?} -> {to:?}");
        if !from.may_become(to) {
            tracing::error!(?from, ?to, "NBD connection: invalid state transition");
        }
        self.in_state[from.index()].fetch_sub(1, Ordering::Relaxed);
        self.in_state[to.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot for reporting.
    pub(crate) fn snapshot(&self) -> NbdStats {
        let r = |k: RequestKind| self.requests[k as usize].load(Ordering::Relaxed);
        NbdStats {
            connections: ConnState::ALL
                .iter()
                .filter(|s| **s != ConnState::Closed)
                .map(|s| (*s, self.in_state[s.index()].load(Ordering::Relaxed)))
                .collect(),
            closed: self.in_state[ConnState::Closed.index()].load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            handshakes_failed: self.handshakes_failed.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
            buffer_waits: self.buffer_waits.load(Ordering::Relaxed),
            buffer_wait_timeouts: self.buffer_wait_timeouts.load(Ordering::Relaxed),
            buffer_bytes: 0,
            reads: r(RequestKind::Read),
            writes: r(RequestKind::Write),
            flushes: r(RequestKind::Flush),
            trims: r(RequestKind::Trim),
            write_zeroes: r(RequestKind::WriteZeroes),
            block_status: r(RequestKind::BlockStatus),
            unaligned: r(RequestKind::Unaligned),
            range_lock_waits: r(RequestKind::LockWait),
            errors: self.errors.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}

/// Statistics of a server (as a JSON-RPC `nbd_get_stats` would report them). Request
/// counts of a busy connection lag by up to [`FOLD_EVERY`] requests; an idle one has
/// folded all of its counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NbdStats {
    /// Open connections per state.
    pub connections: Vec<(ConnState, u64)>,
    /// Connections closed since start.
    pub closed: u64,
    pub accepted: u64,
    /// Connections closed at accept, before the handshake, for being over a limit
    /// (`max_connections`, `max_connections_per_host`).
    pub refused: u64,
    pub handshakes_failed: u64,
    /// Connections closed because the client broke the protocol (bad magic, …).
    pub protocol_errors: u64,
    /// Times a connection stopped reading for want of buffer bytes (the server's
    /// `max_buffer_bytes` in use by others).
    pub buffer_waits: u64,
    /// Connections closed for waiting longer than `buffer_wait_timeout_ms` for them.
    pub buffer_wait_timeouts: u64,
    /// Payload bytes held now by all connections.
    pub buffer_bytes: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub trims: u64,
    pub write_zeroes: u64,
    pub block_status: u64,
    /// Reads, writes and write-zeroes not aligned to the block size (served on their
    /// covering blocks, writes by read-modify-write).
    pub unaligned: u64,
    /// Writes, trims and write-zeroes that waited for a read-modify-write (or made one
    /// wait) on the same blocks.
    pub range_lock_waits: u64,
    /// Requests answered with an error.
    pub errors: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl NbdStats {
    /// Open connections in state `s`.
    pub fn in_state(&self, s: ConnState) -> u64 {
        self.connections
            .iter()
            .find(|(st, _)| *st == s)
            .map_or(0, |(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_machine() {
        use ConnState::*;
        assert!(Accepted.may_become(Negotiating));
        assert!(Negotiating.may_become(Transmission));
        assert!(Transmission.may_become(Draining));
        assert!(Draining.may_become(Closed));
        assert!(!Transmission.may_become(Negotiating));
        assert!(!Closed.may_become(Accepted));
        assert!(
            !Transmission.may_become(Closed),
            "transmission always drains first"
        );
    }

    #[test]
    fn counters_fold_and_gauge() {
        let s = ServerCounters::default();
        s.enter(ConnState::Accepted);
        s.transition(ConnState::Accepted, ConnState::Negotiating);
        let l = LocalCounters::default();
        assert!(!l.request(RequestKind::Read, 4096));
        l.request(RequestKind::Write, 512);
        l.error();
        l.fold_into(&s);
        let snap = s.snapshot();
        assert_eq!(snap.in_state(ConnState::Negotiating), 1);
        assert_eq!(snap.in_state(ConnState::Accepted), 0);
        assert_eq!((snap.reads, snap.writes, snap.errors), (1, 1, 1));
        assert_eq!((snap.bytes_read, snap.bytes_written), (4096, 512));
        l.fold_into(&s);
        assert_eq!(s.snapshot().reads, 1, "folding twice adds nothing");
    }
}
