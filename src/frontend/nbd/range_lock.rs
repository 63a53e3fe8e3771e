//! The range lock of an export: keeps a read-modify-write apart from every other write,
//! trim or write-zeroes touching the same blocks, on any connection and any core.
//!
//! A read-modify-write writes bytes it did not receive (the rest of its edge blocks, as
//! it read them). Another request writing those blocks between its read and its write
//! would lose its bytes, though the two touch different bytes. So while any
//! read-modify-write is in progress on an export, every modifying request of the export
//! locks its blocks first; with none in progress, aligned requests take no lock and pay
//! one load, a compare and a branch ([`RangeLocks::state`] against the value the
//! connection last saw).
//!
//! **Lock-free writes already in flight.** A write that went to the bdev without a lock
//! just before a read-modify-write began must land before that read-modify-write reads.
//! Each read-modify-write starts a new *generation* (the high half of `state`) and
//! wakes every connection of the export; a connection that sees a new generation
//! *acknowledges* it once the writes it sent without a lock before it saw it have
//! completed (an epoch barrier, as for a flush). A read-modify-write locks only once
//! every connection has acknowledged its generation. A connection never waits for an
//! acknowledgement while it holds a lock, and acknowledges without waiting for locks,
//! so this adds no cycle.
//!
//! The lock is granted in arrival order among overlapping requests (a waiter is passed
//! over only by requests that overlap neither it nor any holder), so no request starves;
//! a holder only waits for its own I/O, so there are no cycles. A waiter's waker (its
//! connection's task, on whatever core) is woken when it is granted; the connection then
//! asks [`RangeLocks::is_held`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

/// A lock's id (unique per export).
pub(crate) type LockId = u64;

struct Held {
    id: LockId,
    start: u64,
    end: u64,
}

struct Waiter {
    id: LockId,
    start: u64,
    end: u64,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Table {
    next_id: LockId,
    held: Vec<Held>,
    waiting: VecDeque<Waiter>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl Table {
    fn blocked(&self, r: (u64, u64), before: usize) -> bool {
        self.held.iter().any(|h| overlaps(r, (h.start, h.end)))
            || self
                .waiting
                .iter()
                .take(before)
                .any(|w| overlaps(r, (w.start, w.end)))
    }

    /// Grants every waiter that overlaps no holder and no earlier waiter; returns their
    /// wakers.
    fn grant(&mut self) -> Vec<Waker> {
        let mut woken = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let w = &self.waiting[i];
            if self.blocked((w.start, w.end), i) {
                i += 1;
                continue;
            }
            if let Some(w) = self.waiting.remove(i) {
                self.held.push(Held {
                    id: w.id,
                    start: w.start,
                    end: w.end,
                });
                woken.extend(w.waker);
            }
        }
        woken
    }
}

/// A generation of read-modify-writes (wraps; compared with [`gen_reached`]).
pub(crate) type Gen = u32;

/// The generation in a [`RangeLocks::state`] value.
pub(crate) fn state_gen(state: u64) -> Gen {
    (state >> 32) as Gen
}

/// The read-modify-writes in progress in a [`RangeLocks::state`] value.
pub(crate) fn state_active(state: u64) -> u32 {
    state as u32
}

/// True if generation `have` is `want` or later.
pub(crate) fn gen_reached(have: Gen, want: Gen) -> bool {
    have.wrapping_sub(want) as i32 >= 0
}

/// A connection in transmission with the export, as read-modify-writes see it.
pub(crate) struct ConnAck {
    /// The latest generation the connection acknowledged.
    acked: AtomicU64,
    /// The connection's task, woken to see a new generation.
    waker: Option<Waker>,
}

/// The range lock of one export, shared by its connections on every core.
#[derive(Default)]
pub(crate) struct RangeLocks {
    /// Generation (high 32 bits) and read-modify-writes in progress (low 32 bits).
    state: AtomicU64,
    table: Mutex<Table>,
    /// The connections in transmission.
    conns: Mutex<Vec<Arc<ConnAck>>>,
    /// Read-modify-writes waiting for acknowledgements (their connections' wakers).
    ack_waiters: Mutex<Vec<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RangeLocks {
    fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// Generation and read-modify-writes in progress: a connection that sees the value it
    /// saw last, with none in progress, sends modifying requests without a lock.
    #[inline]
    pub(crate) fn state(&self) -> u64 {
        self.state.load(Ordering::SeqCst)
    }

    /// A read-modify-write starts (before it locks anything): a new generation, which
    /// every connection is woken to see. Returns it.
    pub(crate) fn rmw_begin(&self) -> Gen {
        const STEP: u64 = (1 << 32) + 1;
        let v = self
            .state
            .fetch_add(STEP, Ordering::SeqCst)
            .wrapping_add(STEP);
        for c in lock(&self.conns).iter() {
            if let Some(w) = &c.waker {
                w.wake_by_ref();
            }
        }
        state_gen(v)
    }

    /// A read-modify-write has ended (after it unlocked its blocks).
    pub(crate) fn rmw_end(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (state_active(v) > 0).then(|| v - 1)
            });
    }

    /// A connection enters transmission, having seen `state` (read before this call):
    /// it has sent nothing, so it acknowledges that state's generation. A generation
    /// started since is not acknowledged until the connection sees it.
    pub(crate) fn register(&self, state: u64, waker: Option<Waker>) -> Arc<ConnAck> {
        let c = Arc::new(ConnAck {
            acked: AtomicU64::new(u64::from(state_gen(state))),
            waker,
        });
        lock(&self.conns).push(c.clone());
        c
    }

    /// A connection leaves transmission.
    pub(crate) fn deregister(&self, c: &Arc<ConnAck>) {
        lock(&self.conns).retain(|x| !Arc::ptr_eq(x, c));
        self.wake_ack_waiters();
    }

    /// Connection `c` acknowledges generation `gen`.
    pub(crate) fn ack(&self, c: &ConnAck, generation: Gen) {
        c.acked.store(u64::from(generation), Ordering::SeqCst);
        self.wake_ack_waiters();
    }

    fn wake_ack_waiters(&self) {
        let waiters = std::mem::take(&mut *lock(&self.ack_waiters));
        for w in waiters {
            w.wake();
        }
    }

    /// True once every connection acknowledged generation `gen`; if not, `waker` is
    /// woken at the next acknowledgement.
    pub(crate) fn all_acked(&self, generation: Gen, waker: Option<Waker>) -> bool {
        if let Some(w) = waker {
            let mut waiters = lock(&self.ack_waiters);
            if !waiters.iter().any(|x| x.will_wake(&w)) {
                waiters.push(w);
            }
        }
        lock(&self.conns)
            .iter()
            .all(|c| gen_reached(c.acked.load(Ordering::SeqCst) as Gen, generation))
    }

    /// Locks blocks `start..end`: returns the lock's id and whether it is held now (if
    /// not, `waker` is woken when it is).
    pub(crate) fn lock(&self, start: u64, end: u64, waker: Option<Waker>) -> (LockId, bool) {
        let mut t = self.table();
        t.next_id += 1;
        let id = t.next_id;
        let n = t.waiting.len();
        if t.blocked((start, end), n) {
            t.waiting.push_back(Waiter {
                id,
                start,
                end,
                waker,
            });
            (id, false)
        } else {
            t.held.push(Held { id, start, end });
            (id, true)
        }
    }

    /// True once lock `id` is held.
    pub(crate) fn is_held(&self, id: LockId) -> bool {
        self.table().held.iter().any(|h| h.id == id)
    }

    /// Releases lock `id`, held or waiting, and grants the waiters it blocked.
    pub(crate) fn unlock(&self, id: LockId) {
        let woken = {
            let mut t = self.table();
            if let Some(i) = t.held.iter().position(|h| h.id == id) {
                t.held.swap_remove(i);
            } else if let Some(i) = t.waiting.iter().position(|w| w.id == id) {
                t.waiting.remove(i);
            } else {
                tracing::error!(id, "nbd: unlocking a range lock that is not there");
                return;
            }
            t.grant()
        };
        for w in woken {
            w.wake();
        }
    }

    /// Locks held and waiting.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        let t = self.table();
        (t.held.len(), t.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_locks_wait_in_arrival_order() {
        let l = RangeLocks::default();
        let (a, held) = l.lock(0, 2, None);
        assert!(held);
        let (b, held) = l.lock(4, 5, None);
        assert!(held, "disjoint ranges lock at once");
        let (c, held) = l.lock(1, 2, None);
        assert!(!held, "overlaps a");
        let (d, held) = l.lock(1, 5, None);
        assert!(!held, "overlaps a, b and the waiting c");
        let (e, held) = l.lock(2, 3, None);
        assert!(!held, "overlaps the waiting d: no overtaking");
        let (f, held) = l.lock(6, 7, None);
        assert!(held, "overlaps nothing");
        assert_eq!(l.counts(), (3, 3));
        l.unlock(a);
        assert!(l.is_held(c));
        assert!(!l.is_held(d), "b and c still hold part of it");
        l.unlock(b);
        assert!(!l.is_held(d), "c still holds block 1");
        l.unlock(c);
        assert!(l.is_held(d));
        assert!(!l.is_held(e));
        l.unlock(d);
        assert!(l.is_held(e));
        l.unlock(e);
        l.unlock(f);
        assert_eq!(l.counts(), (0, 0));
    }

    #[test]
    fn a_waiter_can_give_up_and_the_grant_wakes() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        use std::task::Wake;
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let l = RangeLocks::default();
        let conn = l.register(l.state(), None);
        let g = l.rmw_begin();
        assert_eq!(state_active(l.state()), 1);
        assert!(!l.all_acked(g, Some(Waker::from(flag.clone()))));
        l.ack(&conn, g);
        assert!(
            flag.0.swap(false, Ordering::SeqCst),
            "the ack woke the waiter"
        );
        assert!(l.all_acked(g, None));
        l.rmw_end();
        l.deregister(&conn);
        let (a, _) = l.lock(0, 10, None);
        let (b, held) = l.lock(5, 6, None);
        assert!(!held);
        let (c, held) = l.lock(6, 7, Some(Waker::from(flag.clone())));
        assert!(!held);
        l.unlock(b);
        assert!(!l.is_held(c), "a still holds block 6");
        l.unlock(a);
        assert!(l.is_held(c));
        assert!(flag.0.load(Ordering::SeqCst), "the grant woke the waiter");
        l.unlock(c);
        assert_eq!(l.counts(), (0, 0));
        l.rmw_end();
        assert_eq!(state_active(l.state()), 0, "never below zero");
        assert_eq!(state_gen(l.state()), g, "the generation stays");
        assert!(gen_reached(0, u32::MAX), "generations wrap");
        assert!(!gen_reached(u32::MAX, 0));
    }
}
