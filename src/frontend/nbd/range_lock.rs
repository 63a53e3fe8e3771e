//! The range lock of an export: keeps a read-modify-write apart from every other write,
//! trim or write-zeroes touching the same blocks, on any connection and any core.
//!
//! A read-modify-write writes bytes it did not receive (the rest of its edge blocks, as
//! it read them). Another request writing those blocks between its read and its write
//! would lose its bytes, though the two touch different bytes. So while any
//! read-modify-write is in progress on an export ([`RangeLocks::rmw_active`]), every
//! modifying request of the export locks its blocks first; with none in progress,
//! aligned requests pay one load and a branch, and take no lock.
//!
//! The lock is granted in arrival order among overlapping requests (a waiter is passed
//! over only by requests that overlap neither it nor any holder), so no request starves;
//! a holder only waits for its own I/O, so there are no cycles. A waiter's waker (its
//! connection's task, on whatever core) is woken when it is granted; the connection then
//! asks [`RangeLocks::is_held`].
//!
//! Known gap: an aligned write submitted without a lock on another connection just
//! before a read-modify-write begins is not waited for (on the same connection it is:
//! `transmission::rmw` waits for the connection's lock-free writes in flight).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
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

/// The range lock of one export, shared by its connections on every core.
#[derive(Default)]
pub(crate) struct RangeLocks {
    /// Read-modify-writes in progress (from their start to their reply).
    rmw_active: AtomicUsize,
    table: Mutex<Table>,
}

impl RangeLocks {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while a read-modify-write is in progress on the export: modifying requests
    /// must lock their blocks.
    #[inline]
    pub(crate) fn rmw_active(&self) -> bool {
        self.rmw_active.load(Ordering::SeqCst) != 0
    }

    /// A read-modify-write starts (before it locks anything).
    pub(crate) fn rmw_begin(&self) {
        self.rmw_active.fetch_add(1, Ordering::SeqCst);
    }

    /// A read-modify-write has ended (after it unlocked its blocks).
    pub(crate) fn rmw_end(&self) {
        let _ = self
            .rmw_active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
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
        l.rmw_begin();
        assert!(l.rmw_active());
        l.rmw_end();
        l.rmw_end();
        assert!(!l.rmw_active(), "never below zero");
    }
}
