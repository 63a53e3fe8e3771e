//! Controller-side async locks: per-disk exclusive operations (snapshot, resize, delete,
//! punching holes) against per-segment operations (mapping faults). Reactor-local.
//!
//! An exclusive locker that waits bars new segment lockers of its disk: under a steady
//! stream of mapping faults (random first writes at any queue depth) the set of held
//! segments is never empty, and a snapshot waited for a pause — a second, once per
//! background commit. So a task that takes several segments of one disk takes them at
//! once ([`DiskLocks::segments`]), never one after another: holding one while waiting
//! for the next behind a barred exclusive locker would wait for itself.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Default)]
struct DiskState {
    exclusive: bool,
    /// Exclusive lockers waiting: new segment lockers wait behind them.
    exclusive_waiting: usize,
    segments: HashSet<u64>,
    waiters: Vec<Waker>,
}

/// Locks of every disk of a pool.
#[derive(Default, Clone)]
pub struct DiskLocks {
    inner: Rc<RefCell<HashMap<u64, DiskState>>>,
}

/// A held lock; released on drop.
pub struct LockGuard {
    locks: DiskLocks,
    disk: u64,
    segment: Option<u64>,
}

impl DiskLocks {
    /// Locks one virtual segment of `disk` (waits for an exclusive holder, or a waiting
    /// exclusive locker, to finish).
    pub async fn segment(&self, disk: u64, vseg: u64) -> LockGuard {
        self.take_segments(disk, &[vseg]).await;
        self.guard(disk, Some(vseg))
    }

    /// Locks the virtual segments `vsegs` of `disk` together: none is held while the
    /// others are waited for.
    pub async fn segments(&self, disk: u64, vsegs: &[u64]) -> Vec<LockGuard> {
        let mut vs = vsegs.to_vec();
        vs.sort_unstable();
        vs.dedup();
        self.take_segments(disk, &vs).await;
        vs.into_iter().map(|v| self.guard(disk, Some(v))).collect()
    }

    /// Waits until `vsegs` (distinct) of `disk` are free and no exclusive locker holds or
    /// waits for the disk, then marks them held.
    async fn take_segments(&self, disk: u64, vsegs: &[u64]) {
        std::future::poll_fn(|cx| {
            let mut m = self.inner.borrow_mut();
            let d = m.entry(disk).or_default();
            if d.exclusive
                || d.exclusive_waiting > 0
                || vsegs.iter().any(|v| d.segments.contains(v))
            {
                d.waiters.push(cx.waker().clone());
                Poll::Pending
            } else {
                d.segments.extend(vsegs.iter().copied());
                Poll::Ready(())
            }
        })
        .await
    }

    fn guard(&self, disk: u64, segment: Option<u64>) -> LockGuard {
        LockGuard {
            locks: self.clone(),
            disk,
            segment,
        }
    }

    /// Changes `disk`'s state with `f`, then wakes every waiter to look again.
    fn release(&self, disk: u64, f: impl FnOnce(&mut DiskState)) {
        let waiters = {
            let mut m = self.inner.borrow_mut();
            let Some(d) = m.get_mut(&disk) else {
                return;
            };
            f(d);
            std::mem::take(&mut d.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }

    /// Locks the whole of `disk` (waits for every segment holder; new segment lockers
    /// wait meanwhile).
    pub async fn disk(&self, disk: u64) -> LockGuard {
        let mut waiting = ExclusiveWait {
            locks: self,
            disk,
            counted: false,
        };
        std::future::poll_fn(|cx| {
            let mut m = self.inner.borrow_mut();
            let d = m.entry(disk).or_default();
            if d.exclusive || !d.segments.is_empty() {
                if !waiting.counted {
                    waiting.counted = true;
                    d.exclusive_waiting += 1;
                }
                d.waiters.push(cx.waker().clone());
                Poll::Pending
            } else {
                if waiting.counted {
                    waiting.counted = false;
                    d.exclusive_waiting -= 1;
                }
                d.exclusive = true;
                Poll::Ready(())
            }
        })
        .await;
        self.guard(disk, None)
    }

    /// Locks several disks, in id order (no deadlock between two multi-disk lockers).
    pub async fn disks(&self, mut ids: Vec<u64>) -> Vec<LockGuard> {
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::new();
        for id in ids {
            out.push(self.disk(id).await);
        }
        out
    }
}

/// An exclusive locker's place in the queue: given up (and the segment lockers it
/// held back woken) if the wait is abandoned, e.g. by a time limit.
struct ExclusiveWait<'a> {
    locks: &'a DiskLocks,
    disk: u64,
    counted: bool,
}

impl Drop for ExclusiveWait<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.locks.release(self.disk, |d| d.exclusive_waiting -= 1);
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let segment = self.segment;
        self.locks.release(self.disk, |d| match segment {
            Some(v) => {
                d.segments.remove(&v);
            }
            None => d.exclusive = false,
        });
    }
}
