//! Work too long for a reactor's loop, run on worker threads beside the reactors.
//!
//! A reactor must not run anything that takes milliseconds: every other queue pair,
//! timer and poller of its core waits meanwhile. DH-HMAC-CHAP's modular
//! exponentiations (ffdhe8192: several milliseconds each) are such work. [`run`] queues
//! a `Send` closure for a small pool of worker threads and returns a future that the
//! calling task awaits; the result comes back through a oneshot channel, whose waker
//! sends the task back to its reactor as a message. Meanwhile the reactor runs its other
//! tasks.
//!
//! - The queue is bounded ([`QUEUE_LEN`] jobs waiting): when it is full a call fails at
//!   once with [`OffloadError::Busy`] instead of queueing without end.
//! - Each call has a time limit: past it the caller gets [`OffloadError::TimedOut`]; a
//!   job not started by then is skipped, one running finishes and its result is dropped
//!   on the worker (a result holding a secret zeroes it in its `Drop`).
//! - A job that panics is reported as [`OffloadError::Panicked`]; the worker goes on.
//! - The pool belongs to a reactor set (its [`Cores`](super::Cores)); its workers start
//!   at the first call, run at nice [`WORKER_NICE`] so that a reactor sharing their CPU
//!   gets it first, on the CPUs no reactor of the set runs on when there are such CPUs
//!   ([`helper_cpus`](super::helper_cpus)), and end when the set's last handle is
//!   dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Jobs that may wait for a worker; one more is refused ([`OffloadError::Busy`]).
pub const QUEUE_LEN: usize = 64;
/// Worker threads per reactor set (at most; never more than the machine's CPUs).
pub const WORKERS: usize = 2;
/// How much nicer the workers are than the process (a reactor's nice value is the
/// process's).
pub const WORKER_NICE: i32 = 10;

/// Why offloaded work gave no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("the worker queue is full ({QUEUE_LEN} jobs waiting)")]
    Busy,
    #[error("not done within {limit:?}")]
    TimedOut { limit: Duration },
    #[error("the job panicked")]
    Panicked,
    #[error("no worker thread: {0}")]
    Gone(String),
}

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
    started: bool,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

/// A reactor set's pool of workers (held by its [`Cores`](super::Cores)).
#[derive(Default)]
pub(crate) struct Pool {
    q: Arc<Queue>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(mut s) = self.q.state.lock() {
            s.closed = true;
            s.jobs.clear();
        }
        self.q.ready.notify_all();
    }
}

impl Pool {
    /// Queues `job`; starts the workers at the first call (on `cpus` when given).
    fn submit(&self, job: Job, cpus: Option<libc::cpu_set_t>) -> Result<(), OffloadError> {
        let mut s = self
            .q
            .state
            .lock()
            .map_err(|_| OffloadError::Gone("the queue's lock is poisoned".into()))?;
        if s.closed {
            return Err(OffloadError::Gone("the reactor set is gone".into()));
        }
        if s.jobs.len() >= QUEUE_LEN {
            return Err(OffloadError::Busy);
        }
        if !s.started {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(WORKERS));
            for i in 0..n {
                let q = self.q.clone();
                std::thread::Builder::new()
                    .name(format!("offload_{i}"))
                    .spawn(move || worker(q, cpus))
                    .map_err(|e| OffloadError::Gone(format!("cannot start a worker: {e}")))?;
            }
            s.started = true;
        }
        s.jobs.push_back(job);
        drop(s);
        self.q.ready.notify_one();
        Ok(())
    }
}

fn worker(q: Arc<Queue>, cpus: Option<libc::cpu_set_t>) {
    // SAFETY: `set` is a valid cpu_set_t of which sched_setaffinity reads
    // `size_of::<cpu_set_t>()` bytes; pid 0 is this thread. nice() changes the calling
    // thread's nice value only (Linux); neither call touches memory of ours.
    unsafe {
        if let Some(set) = cpus {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        libc::nice(WORKER_NICE);
    }
    loop {
        let job = {
            let Ok(mut s) = q.state.lock() else { return };
            loop {
                if let Some(j) = s.jobs.pop_front() {
                    break j;
                }
                if s.closed {
                    return;
                }
                s = match q.ready.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
        };
        job();
    }
}

/// Runs `f` on a worker thread of the current reactor's set and waits, at most `limit`,
/// for its result. Call it from a task on a reactor.
///
/// Under [`ManualReactors`](super::ManualReactors) (the simulator, whose time is a
/// manual clock and whose runs must replay exactly from their seed) `f` runs here, at
/// once: a worker would finish at a real time that the simulated world cannot order.
pub async fn run<T, F>(limit: Duration, f: F) -> Result<T, OffloadError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if super::with_current(|r| r.cores.clock.is_manual()) {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .map_err(|_| OffloadError::Panicked);
    }
    let pool = super::with_current(|r| r.cores.offload.clone());
    let cpus = super::helper_cpus();
    let (tx, rx) = futures_channel::oneshot::channel::<Result<T, ()>>();
    let cancelled = Arc::new(AtomicBool::new(false));
    let c2 = cancelled.clone();
    let job: Job = Box::new(move || {
        if c2.load(Ordering::Acquire) {
            return;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| ());
        let _ = tx.send(r);
    });
    pool.submit(job, cpus)?;
    match super::until(super::now().after(limit), rx).await {
        Some(Ok(Ok(v))) => Ok(v),
        Some(Ok(Err(()))) => Err(OffloadError::Panicked),
        Some(Err(_)) => Err(OffloadError::Gone("the job was dropped".into())),
        None => {
            cancelled.store(true, Ordering::Release);
            Err(OffloadError::TimedOut { limit })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::{IdlePolicy, ReactorSet, block_on};

    #[test]
    fn runs_off_the_reactor_and_the_reactor_keeps_running() {
        let set = ReactorSet::for_tests(1, IdlePolicy::Adaptive);
        let r = block_on(set.cores().spawn_on(0, || async {
            let reactor_thread = std::thread::current().id();
            // While a job sleeps 200 ms on a worker, the reactor runs a timer task.
            let ticks = std::rc::Rc::new(std::cell::Cell::new(0u32));
            let t2 = ticks.clone();
            let ticker = crate::reactor::spawn_local(async move {
                for _ in 0..10 {
                    crate::reactor::sleep(Duration::from_millis(5)).await;
                    t2.set(t2.get() + 1);
                }
            });
            let on = run(Duration::from_secs(5), || {
                std::thread::sleep(Duration::from_millis(200));
                std::thread::current().id()
            })
            .await
            .unwrap();
            assert_ne!(on, reactor_thread);
            let during = ticks.get();
            ticker.await;
            during
        }))
        .unwrap();
        assert_eq!(r, 10, "the reactor's timer task ran while the job did");
    }

    #[test]
    fn time_limit_panic_and_full_queue_are_precise_errors() {
        let set = ReactorSet::for_tests(1, IdlePolicy::Adaptive);
        block_on(set.cores().spawn_on(0, || async {
            let e = run(Duration::from_millis(20), || {
                std::thread::sleep(Duration::from_millis(300))
            })
            .await
            .unwrap_err();
            assert_eq!(
                e,
                OffloadError::TimedOut {
                    limit: Duration::from_millis(20)
                }
            );
            assert_eq!(e.to_string(), "not done within 20ms");
            let e = run(Duration::from_secs(5), || panic!("boom"))
                .await
                .unwrap_err();
            assert_eq!(e, OffloadError::Panicked);
            // The workers survive a panic.
            assert_eq!(run(Duration::from_secs(5), || 7).await, Ok(7));
            // Occupy the workers, then fill the queue: the next call is refused at once.
            let gate = Arc::new((Mutex::new(false), Condvar::new()));
            let blocker = |g: Arc<(Mutex<bool>, Condvar)>| {
                crate::reactor::spawn_local(run(Duration::from_secs(10), move || {
                    let (m, c) = &*g;
                    let mut open = m.lock().unwrap();
                    while !*open {
                        open = c.wait(open).unwrap();
                    }
                }))
            };
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(WORKERS));
            let mut waiting: Vec<_> = (0..workers).map(|_| blocker(gate.clone())).collect();
            // The queue empty: each worker holds one of them.
            wait_queue(|n| n == 0).await;
            waiting.extend((0..QUEUE_LEN).map(|_| blocker(gate.clone())));
            wait_queue(|n| n == QUEUE_LEN).await;
            let e = run(Duration::from_secs(5), || ()).await.unwrap_err();
            assert_eq!(e, OffloadError::Busy);
            let (m, c) = &*gate;
            *m.lock().unwrap() = true;
            c.notify_all();
            for w in waiting {
                assert_eq!(w.await, Ok(()));
            }
        }))
        .unwrap();

        async fn wait_queue(ok: impl Fn(usize) -> bool) {
            let t0 = std::time::Instant::now();
            loop {
                crate::reactor::sleep(Duration::from_millis(2)).await;
                let n = crate::reactor::with_current(|r| {
                    r.cores.offload.q.state.lock().unwrap().jobs.len()
                });
                if ok(n) {
                    return;
                }
                assert!(t0.elapsed() < Duration::from_secs(5), "queue stuck at {n}");
            }
        }
    }
}
