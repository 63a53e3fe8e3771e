//! Flush ordering on one connection: an `NBD_CMD_FLUSH` is submitted to the bdev only
//! once every write, trim and write-zeroes that was in flight on the connection when the
//! flush arrived has completed. (The bdev's flush covers every write completed before it
//! on any core, so replies on other connections are covered too.)

use std::collections::VecDeque;

/// Flush ordering: a flush is submitted only when every modifying request that was in
/// flight when it arrived has completed. `counts[i]` holds the modifying requests in
/// flight of epoch `base + i`; each flush closes the current epoch.
pub(super) struct FlushEpochs {
    base: u64,
    counts: VecDeque<u32>,
}

impl FlushEpochs {
    pub(super) fn new() -> FlushEpochs {
        let mut counts = VecDeque::with_capacity(4);
        counts.push_back(0);
        FlushEpochs { base: 0, counts }
    }

    pub(super) fn current(&self) -> u64 {
        self.base + self.counts.len() as u64 - 1
    }

    /// A modifying request starts; returns its epoch.
    pub(super) fn track(&mut self) -> u64 {
        if let Some(c) = self.counts.back_mut() {
            *c += 1;
        }
        self.current()
    }

    /// A modifying request of epoch `e` completed.
    pub(super) fn release(&mut self, e: u64) {
        if let Some(c) = e
            .checked_sub(self.base)
            .and_then(|i| self.counts.get_mut(i as usize))
        {
            *c = c.saturating_sub(1);
        }
        self.normalize();
    }

    /// A flush arrives; returns the epoch it must wait for.
    pub(super) fn begin_flush(&mut self) -> u64 {
        let e = self.current();
        self.counts.push_back(0);
        self.normalize();
        e
    }

    pub(super) fn normalize(&mut self) {
        while self.counts.len() > 1 && self.counts.front() == Some(&0) {
            self.counts.pop_front();
            self.base += 1;
        }
    }

    /// True when nothing of epoch `e` or earlier is in flight.
    pub(super) fn covered(&self, e: u64) -> bool {
        self.base > e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_waits_for_earlier_writes_only() {
        let mut e = FlushEpochs::new();
        let w1 = e.track();
        let w2 = e.track();
        let f1 = e.begin_flush();
        assert!(!e.covered(f1), "two writes before the flush are in flight");
        let w3 = e.track();
        e.release(w1);
        assert!(!e.covered(f1));
        e.release(w2);
        assert!(e.covered(f1), "the writes before it are done");
        let f2 = e.begin_flush();
        assert!(!e.covered(f2), "w3 came before the second flush");
        e.release(w3);
        assert!(e.covered(f2));
        // Nothing in flight: a flush may go at once.
        let f3 = e.begin_flush();
        assert!(e.covered(f3));
        // A write after a waiting flush does not hold it back.
        let w4 = e.track();
        let f4 = e.begin_flush();
        let w5 = e.track();
        e.release(w4);
        assert!(e.covered(f4));
        e.release(w5);
        e.release(12345);
    }
}
