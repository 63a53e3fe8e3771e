//! The per-reactor timer queue: a min-heap of deadlines; cancelled entries are skipped.

use super::clock::Nanos;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::task::Waker;

/// What happens when a timer fires.
pub(crate) enum TimerAction {
    Wake(Waker),
    Call(Box<dyn FnOnce()>),
}

#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Nanos, u64)>>,
    live: HashMap<u64, TimerAction>,
    next_id: u64,
}

impl TimerQueue {
    pub(crate) fn insert(&mut self, at: Nanos, action: TimerAction) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.heap.push(Reverse((at, id)));
        self.live.insert(id, action);
        id
    }

    /// Replaces the waker of a pending timer; false if it already fired or was cancelled.
    pub(crate) fn update_waker(&mut self, id: u64, waker: &Waker) -> bool {
        match self.live.get_mut(&id) {
            Some(TimerAction::Wake(w)) => {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
                true
            }
            _ => false,
        }
    }

    pub(crate) fn cancel(&mut self, id: u64) {
        self.live.remove(&id);
    }

    /// The earliest live deadline, dropping cancelled heads on the way.
    pub(crate) fn next_deadline(&mut self) -> Option<Nanos> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if self.live.contains_key(&id) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns one expired action, if any.
    pub(crate) fn pop_expired(&mut self, now: Nanos) -> Option<TimerAction> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if let Some(a) = self.live.remove(&id) {
                return Some(a);
            }
        }
        None
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}
