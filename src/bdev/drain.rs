//! Telling when a channel drained: a stacked bdev that hands requests to a base channel
//! without watching their completions ([`BdevIo::readdress`]) asks the channel, at a
//! barrier, for a future that resolves once everything submitted so far has completed
//! ([`BdevChannel::drained`]). Channels answer from their structure ([`PassClock`]: the
//! malloc bdev and [`Deferred`](super::Deferred) complete a whole queue per poller pass)
//! or by counting ([`Epochs`], [`Tracker`]).

use super::{BdevIo, IoSink, IoStatus, Origin};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// What [`BdevChannel::drained`] returns.
pub type Drained = Pin<Box<dyn Future<Output = ()>>>;

/// Tasks waiting for a counter to pass their ticket.
#[derive(Default)]
struct Waiters(RefCell<Vec<(u64, Waker)>>);

impl Waiters {
    /// Ready if `reached`, else waits (woken by a `wake_below` past `ticket`).
    fn poll(&self, reached: bool, ticket: u64, cx: &mut Context<'_>) -> Poll<()> {
        if reached {
            return Poll::Ready(());
        }
        self.0.borrow_mut().push((ticket, cx.waker().clone()));
        Poll::Pending
    }

    /// Wakes every task whose ticket is below `bound`.
    fn wake_below(&self, bound: u64) {
        if self.0.borrow().is_empty() {
            return;
        }
        let ready: Vec<_> = {
            let mut w = self.0.borrow_mut();
            let (done, keep) = w.drain(..).partition(|(t, _)| *t < bound);
            *w = keep;
            done
        };
        for (_, w) in ready {
            w.wake();
        }
    }
}

/// The drain clock of a poller that completes, in one pass, every request queued
/// before the pass began (the malloc bdev's and [`Deferred`]'s): every request queued
/// before a moment has completed once a pass that began after that moment has ended.
#[derive(Default)]
pub(crate) struct PassClock {
    /// Passes begun.
    begun: Cell<u64>,
    /// Passes ended; a pass ends before the next begins.
    ended: Cell<u64>,
    waiters: Waiters,
}

impl PassClock {
    #[inline]
    pub(crate) fn begin(&self) {
        self.begun.set(self.begun.get() + 1);
    }

    #[inline]
    pub(crate) fn end(&self) {
        let ended = self.begun.get();
        self.ended.set(ended);
        self.waiters.wake_below(ended + 1);
    }

    /// Resolves once every request queued before the call has completed. `idle` says
    /// nothing is queued for a later pass: then it resolves at once, or when the pass
    /// running now (the caller is inside it) ends. Otherwise a pass that begins after
    /// the call must end; the poller runs it, since it has work.
    pub(crate) fn drained(self: &Rc<Self>, idle: bool) -> Drained {
        let running = self.begun.get() != self.ended.get();
        let ticket = match (idle, running) {
            (true, false) => return Box::pin(std::future::ready(())),
            (true, true) => self.begun.get(),
            (false, _) => self.begun.get() + 1,
        };
        let me = self.clone();
        Box::pin(std::future::poll_fn(move |cx| {
            me.waiters.poll(me.ended.get() >= ticket, ticket, cx)
        }))
    }
}

/// Counts the operations running on this core by epoch, so that a barrier can wait for
/// every operation started before it (and none after).
#[derive(Default)]
pub(crate) struct Epochs {
    /// The epoch new operations join.
    current: Cell<u64>,
    /// Operations of the current epoch still running (kept apart from the closed ones:
    /// the I/O path touches only this cell).
    live: Cell<u64>,
    /// The oldest epoch that may still have operations running; `base + closed.len()`
    /// is always `current`.
    base: Cell<u64>,
    /// Operations still running of each closed epoch `base..current`.
    closed: RefCell<VecDeque<u64>>,
    waiters: Waiters,
}

impl Epochs {
    #[inline]
    pub(crate) fn start(&self) -> u64 {
        self.live.set(self.live.get() + 1);
        self.current.get()
    }

    #[inline]
    pub(crate) fn finish(&self, epoch: u64) {
        if epoch == self.current.get() {
            self.live.set(self.live.get() - 1);
            return;
        }
        let mut c = self.closed.borrow_mut();
        let i = (epoch - self.base.get()) as usize;
        c[i] -= 1;
        if i == 0 && c[0] == 0 {
            self.retire(&mut c);
        }
    }

    /// Drops the finished epochs at the front and wakes the barriers they held.
    fn retire(&self, c: &mut VecDeque<u64>) {
        while c.front() == Some(&0) {
            c.pop_front();
            self.base.set(self.base.get() + 1);
        }
        self.waiters.wake_below(self.base.get());
    }

    /// Starts a new epoch; resolves when every operation of the earlier ones completed.
    pub(crate) async fn drain(&self) {
        let target = self.close();
        std::future::poll_fn(|cx| self.poll_drained(target, cx)).await
    }

    /// Starts a new epoch; returns the one closed.
    fn close(&self) -> u64 {
        let target = self.current.get();
        self.current.set(target + 1);
        let mut c = self.closed.borrow_mut();
        c.push_back(self.live.replace(0));
        self.retire(&mut c);
        target
    }

    /// Like [`Epochs::drain`], as an owned future: the epoch closes at the call.
    pub(crate) fn drained(self: &Rc<Self>) -> Drained {
        let target = self.close();
        let me = self.clone();
        Box::pin(std::future::poll_fn(move |cx| me.poll_drained(target, cx)))
    }

    fn poll_drained(&self, target: u64, cx: &mut Context<'_>) -> Poll<()> {
        self.waiters.poll(self.base.get() > target, target, cx)
    }
}

/// Gives a channel whose requests complete by many paths (injected latency, a base
/// request, a cache) a drain: every request is redirected to the tracker on the way in
/// and handed back to its submitter on the way out, counted in [`Epochs`].
pub(crate) struct Tracker {
    epochs: Rc<Epochs>,
    /// Requests in flight: their submitter's range and sink, and their epoch.
    inflight: RefCell<slab::Slab<(Origin, u64)>>,
}

impl Tracker {
    pub(crate) fn new() -> Rc<Tracker> {
        Rc::new(Tracker {
            epochs: Rc::default(),
            inflight: RefCell::new(slab::Slab::new()),
        })
    }

    /// Counts `io` in; its completion passes through the tracker.
    pub(crate) fn track(self: &Rc<Self>, mut io: BdevIo) -> BdevIo {
        let epoch = self.epochs.start();
        let mut inflight = self.inflight.borrow_mut();
        let entry = inflight.vacant_entry();
        let (off, n) = (io.offset_blocks, io.num_blocks);
        let origin = io.redirect(off, n, self.clone(), entry.key() as u64);
        entry.insert((origin, epoch));
        io
    }

    /// Resolves once every request tracked before the call has completed.
    pub(crate) fn drained(&self) -> Drained {
        self.epochs.drained()
    }
}

impl IoSink for Tracker {
    fn io_done(&self, mut io: BdevIo, status: IoStatus) {
        let (origin, epoch) = self.inflight.borrow_mut().remove(io.tag as usize);
        io.restore(origin);
        self.epochs.finish(epoch);
        io.complete(status);
    }
}
