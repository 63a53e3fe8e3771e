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
        self.segments(disk, &[vseg])
            .await
            .pop()
            .expect("one segment")
    }

    /// Locks the virtual segments `vsegs` of `disk` together: none is held while the
    /// others are waited for.
    pub async fn segments(&self, disk: u64, vsegs: &[u64]) -> Vec<LockGuard> {
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
        .await;
        let mut seen = HashSet::new();
        vsegs
            .iter()
            .filter(|&&v| seen.insert(v))
            .map(|&v| LockGuard {
                locks: self.clone(),
                disk,
                segment: Some(v),
            })
            .collect()
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
        LockGuard {
            locks: self.clone(),
            disk,
            segment: None,
        }
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
        if !self.counted {
            return;
        }
        let waiters = {
            let mut m = self.locks.inner.borrow_mut();
            let Some(d) = m.get_mut(&self.disk) else {
                return;
            };
            d.exclusive_waiting -= 1;
            std::mem::take(&mut d.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let waiters = {
            let mut m = self.locks.inner.borrow_mut();
            let Some(d) = m.get_mut(&self.disk) else {
                return;
            };
            match self.segment {
                Some(v) => {
                    d.segments.remove(&v);
                }
                None => d.exclusive = false,
            }
            std::mem::take(&mut d.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
}
