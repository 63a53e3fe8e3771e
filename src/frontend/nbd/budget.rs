//! The server-wide budget of payload bytes (`nbd.max_buffer_bytes`): every connection
//! takes the bytes of a request's buffer from it before reading the request's payload
//! (or asking the bdev for a read's data) and gives them back when the reply is sent.
//! A connection whose next request does not fit stops reading its socket (TCP pushes
//! back on its client) and waits, for at most `buffer_wait_timeout_ms`.
//!
//! Taking and giving back is one atomic operation; the waiters' list (under a mutex) is
//! touched only by connections that wait and by those that give bytes back while
//! someone waits, never on the path of a request that fits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;

/// The payload bytes all connections of a server hold together.
pub(crate) struct BufferBudget {
    limit: u64,
    used: AtomicU64,
    /// How many wakers `waiters` holds (read without the lock by `give_back`).
    waiting: AtomicUsize,
    waiters: Mutex<Vec<Waker>>,
}

impl BufferBudget {
    pub(crate) fn new(limit: u64) -> BufferBudget {
        BufferBudget {
            limit,
            used: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// The limit, in bytes.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Would `n` bytes fit now? (Any request fits when nothing is held, so that one
    /// larger than the whole budget still runs, alone.)
    fn fits(used: u64, n: u64, limit: u64) -> bool {
        used == 0 || used.saturating_add(n) <= limit
    }

    /// Takes `n` bytes if they fit.
    pub(crate) fn try_take(&self, n: u64) -> bool {
        let mut cur = self.used.load(Ordering::SeqCst);
        loop {
            if !Self::fits(cur, n, self.limit) {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Takes `n` bytes whether they fit or not (a request that turned out to need a
    /// little more than was taken for it).
    pub(crate) fn force_take(&self, n: u64) {
        self.used.fetch_add(n, Ordering::SeqCst);
    }

    /// Gives `n` bytes back, and wakes the connections waiting for bytes.
    pub(crate) fn give_back(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.used.fetch_sub(n, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let ws = {
                let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
                self.waiting.store(0, Ordering::SeqCst);
                std::mem::take(&mut *w)
            };
            for w in ws {
                w.wake();
            }
        }
    }

    /// Registers `waker` to be woken when bytes are given back; returns true if `n`
    /// bytes fit already (bytes given back before the registration was seen: the
    /// caller retries at once).
    pub(crate) fn wait_for(&self, n: u64, waker: &Waker) -> bool {
        {
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            if !w.iter().any(|x| x.will_wake(waker)) {
                w.push(waker.clone());
            }
            self.waiting.store(w.len(), Ordering::SeqCst);
        }
        Self::fits(self.used.load(Ordering::SeqCst), n, self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn bytes_past_the_limit_wait_and_giving_back_wakes_the_waiters() {
        let b = BufferBudget::new(100);
        assert!(b.try_take(60));
        assert!(b.try_take(40));
        assert!(!b.try_take(1));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        assert!(!b.wait_for(10, &waker));
        // Registering twice keeps one waker.
        assert!(!b.wait_for(10, &waker));
        assert_eq!(b.waiting.load(Ordering::SeqCst), 1);
        b.give_back(40);
        assert!(flag.0.load(Ordering::SeqCst), "not woken");
        assert_eq!(b.waiting.load(Ordering::SeqCst), 0);
        assert!(b.try_take(10));
        assert_eq!(b.used(), 70);
        // A request larger than the whole budget runs alone.
        b.give_back(70);
        assert!(b.try_take(500));
        assert!(!b.try_take(1));
        b.give_back(500);
        assert_eq!(b.used(), 0);
    }
}
