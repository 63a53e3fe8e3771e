//! Controller-side async locks: per-disk exclusive operations (snapshot, resize, delete,
//! punching holes) against per-segment operations (mapping faults). Reactor-local.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Default)]
struct DiskState {
    exclusive: bool,
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
    /// Locks one virtual segment of `disk` (waits for an exclusive holder to finish).
    pub async fn segment(&self, disk: u64, vseg: u64) -> LockGuard {
        std::future::poll_fn(|cx| {
            let mut m = self.inner.borrow_mut();
            let d = m.entry(disk).or_default();
            if d.exclusive || d.segments.contains(&vseg) {
                d.waiters.push(cx.waker().clone());
                Poll::Pending
            } else {
                d.segments.insert(vseg);
                Poll::Ready(())
            }
        })
        .await;
        LockGuard {
            locks: self.clone(),
            disk,
            segment: Some(vseg),
        }
    }

    /// Locks the whole of `disk` (waits for every segment holder).
    pub async fn disk(&self, disk: u64) -> LockGuard {
        std::future::poll_fn(|cx| {
            let mut m = self.inner.borrow_mut();
            let d = m.entry(disk).or_default();
            if d.exclusive || !d.segments.is_empty() {
                d.waiters.push(cx.waker().clone());
                Poll::Pending
            } else {
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
