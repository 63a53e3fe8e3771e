//! Reactors: one pinned thread per core, each running a poll loop. This page is the
//! threading model of tessera; read it before writing code that runs on a reactor.
//!
//! # Who owns what
//!
//! A [`ReactorSet`] starts one thread per configured CPU. Each thread owns one
//! [`Reactor`]: its run queue of ready tasks, its pollers, its timers, its readiness
//! driver (an epoll instance through `mio`) and its *reactor-local storage* — per-core
//! state such as bdev channels, mapping agents and buffer pools. None of that is `Send`;
//! it is reached only from code running on that reactor, through the free functions of
//! this module ([`spawn_local`], [`register_poller`], [`sleep`], [`local`], …), which find
//! the reactor that is currently polling.
//!
//! Work moves between cores only by **messages**: [`Cores::send`] pushes a `Send` closure
//! onto the target's lock-free queue (a `crossbeam` segment queue, one per reactor, FIFO
//! per sender); the target runs it at the top of its next loop iteration. [`Cores`] is
//! the cheap, cloneable, `Send + Sync` handle that any thread — another reactor, the main
//! thread, a test — uses to reach the cores. Nothing on the I/O path takes a lock.
//!
//! # The loop
//!
//! Every iteration: (1) run the messages that have arrived, (2) run the tasks that are
//! ready, (3) call every poller once (completion rings, deferred completions), (4) poll
//! socket readiness when sockets are registered, (5) fire expired timers. Each step
//! reports how much work it did. When an iteration does nothing, the idle policy decides:
//! [`IdlePolicy::Busy`] spins (lowest latency; the benchmark mode),
//! [`IdlePolicy::Adaptive`] spins for a short while and then parks in `epoll_wait` until
//! a message (the sender rings the reactor's eventfd only if the reactor is asleep), a
//! timer deadline, socket readiness or an I/O completion (backends register their
//! completion eventfds) wakes it.
//!
//! A poller must therefore either report work, or make sure something will wake the
//! reactor when it has work: a registered fd, a timer or a message.
//!
//! # Tasks
//!
//! Futures need not be `Send`: [`spawn_local`] places them on the current reactor
//! (`async-task`); a waker called from another thread sends the task back to its reactor
//! as a message. [`Cores::spawn_on`] builds a future on another core from a `Send`
//! closure and returns a handle to await its result from anywhere; [`Cores::call`] is the
//! same for a plain closure.
//!
//! Work that takes milliseconds (a DH-HMAC-CHAP exponentiation) does not run on a
//! reactor: [`offload::run`] hands it to the set's worker threads, with a bounded queue
//! and a time limit, and the task awaits the result while the reactor runs on.
//!
//! # Sockets
//!
//! [`io`] is the readiness side: [`io::Async`] wraps a registered non-blocking socket and
//! turns `WouldBlock` into waiting. The buffers a connection reads into and writes from
//! live beside it, shared by every protocol (NBD, the NVMe/TCP target and initiator):
//! `recv::RecvBuf` (one big buffer, many requests or PDUs per `read`) and
//! `send::SendQueue` (many PDUs gathered into one `writev`; its Safety section covers
//! the raw pointers it holds).
//!
//! # Shutdown
//!
//! [`ReactorSet::shutdown`] queues a stop message behind whatever was already sent, so
//! every message sent before shutdown runs. The reactor then drops its pollers and tasks
//! on its own thread and exits; the set joins every thread. Messages sent after a reactor
//! stopped are refused ([`SendError`]).
//!
//! # Tests
//!
//! [`ManualReactors`] builds N reactors that one test thread drives by hand with a
//! manual [`Clock`] — no threads, no global singletons — so multi-core logic can be
//! tested deterministically.

mod clock;
mod cores;
pub mod io;
pub mod offload;
pub(crate) mod recv;
pub(crate) mod send;
mod timer;
pub mod tls;

pub use clock::{Clock, Nanos, tick_rate, ticks};
pub use cores::{CoreList, CoreListError};

use crossbeam_queue::SegQueue;
use serde::{Deserialize, Serialize};
use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::Duration;
use timer::{TimerAction, TimerQueue};

/// How an idle reactor waits for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdlePolicy {
    /// Spin forever: lowest latency, one CPU at 100% per reactor.
    Busy,
    /// Spin briefly, then sleep until a message, timer, socket or completion arrives.
    #[default]
    Adaptive,
}

impl std::str::FromStr for IdlePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "busy" => Ok(IdlePolicy::Busy),
            "adaptive" => Ok(IdlePolicy::Adaptive),
            other => Err(format!(
                "idle policy `{other}` is neither `busy` nor `adaptive`"
            )),
        }
    }
}

/// Configuration of a reactor set.
#[derive(Clone, Debug)]
pub struct ReactorConfig {
    /// CPUs to run on, one reactor each.
    pub cores: CoreList,
    /// What an idle reactor does.
    pub idle: IdlePolicy,
    /// How long an adaptive reactor spins after its last work before it parks.
    pub spin_before_park: Duration,
    /// Pin each thread to its CPU (off when the CPU does not exist on this machine).
    pub pin: bool,
}

impl ReactorConfig {
    /// Reactors on `cores` with `idle`, pinned, spinning 50 µs before parking.
    pub fn new(cores: CoreList, idle: IdlePolicy) -> Self {
        ReactorConfig {
            cores,
            idle,
            spin_before_park: Duration::from_micros(50),
            pin: true,
        }
    }
}

/// Errors of the reactor layer.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("core {core}: cannot pin thread to cpu {cpu}: {cause}")]
    Pin {
        core: usize,
        cpu: usize,
        cause: std::io::Error,
    },
    #[error("cannot create the readiness poller: {0}")]
    Poll(std::io::Error),
    #[error("core index {core} is not in this reactor set of {len} cores")]
    NoSuchCore { core: usize, len: usize },
}

// Not `#[from]`: the message holds the cause, and a source would print it twice in a
// chain of causes.
impl From<std::io::Error> for ReactorError {
    fn from(e: std::io::Error) -> ReactorError {
        ReactorError::Poll(e)
    }
}

/// A message could not be delivered: the target reactor has stopped.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("reactor {core} has stopped")]
pub struct SendError {
    pub core: usize,
}

enum Message {
    Call(Box<dyn FnOnce() + Send>),
    Wake(async_task::Runnable),
    /// A task that runs before the others ready (see [`spawn_local_first`]).
    WakeFirst(async_task::Runnable),
}

/// The `Send + Sync` half of a reactor: its inbound queue and its doorbell.
struct Mailbox {
    core: usize,
    cpu: usize,
    queue: SegQueue<Message>,
    sleeping: AtomicBool,
    closed: AtomicBool,
    doorbell: mio::Waker,
    busy_loops: AtomicU64,
    idle_loops: AtomicU64,
}

impl Mailbox {
    fn push(&self, msg: Message) -> Result<(), SendError> {
        if self.closed.load(Ordering::Acquire) {
            if let Message::Wake(r) = msg {
                // A local task's runnable must not be dropped off its own thread; at
                // shutdown it is simply leaked.
                std::mem::forget(r);
            }
            return Err(SendError { core: self.core });
        }
        self.queue.push(msg);
        // Pairs with the fence in `Reactor::park`: either the reactor sees our message
        // before it sleeps, or we see it asleep and ring the doorbell.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            let _ = self.doorbell.wake();
        }
        Ok(())
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        while let Some(m) = self.queue.pop() {
            if let Message::Wake(r) = m {
                std::mem::forget(r);
            }
        }
    }
}

/// Statistics of one reactor, as reported by `framework_get_reactors`.
#[derive(Clone, Debug, Serialize)]
pub struct ReactorStats {
    pub core: usize,
    pub lcore: usize,
    pub busy: u64,
    pub idle: u64,
}

/// Handle to a set of cores: send messages, spawn work, run on every core.
/// Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Cores {
    mailboxes: Arc<[Arc<Mailbox>]>,
    clock: Clock,
    /// Worker threads for work too long for a reactor's loop ([`offload`]).
    offload: Arc<offload::Pool>,
}

impl Cores {
    /// Number of cores in the set.
    pub fn len(&self) -> usize {
        self.mailboxes.len()
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.mailboxes.is_empty()
    }

    /// The CPU that core `core` runs on.
    pub fn cpu(&self, core: usize) -> usize {
        self.mailboxes[core].cpu
    }

    /// The clock shared by the set.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Runs `f` on core `core` at its next loop iteration.
    pub fn send(&self, core: usize, f: impl FnOnce() + Send + 'static) -> Result<(), SendError> {
        match self.mailboxes.get(core) {
            Some(mb) => mb.push(Message::Call(Box::new(f))),
            None => Err(SendError { core }),
        }
    }

    /// Builds a future on `core` from `make` and runs it there; the handle resolves to its
    /// output (or to `Err` if the reactor stopped before finishing it).
    pub fn spawn_on<F, Fut>(&self, core: usize, make: F) -> RemoteHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        self.spawn_on_with(core, make, false)
    }

    /// [`Cores::spawn_on`]; with `first`, the task runs before the others ready each
    /// time something else wakes it ([`spawn_local_first`]).
    pub fn spawn_on_with<F, Fut>(
        &self,
        core: usize,
        make: F,
        first: bool,
    ) -> RemoteHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let (tx, rx) = futures_channel::oneshot::channel();
        let sent = self.send(core, move || {
            spawn_with(
                async move {
                    let out = make().await;
                    let _ = tx.send(out);
                },
                first,
            )
            .detach();
        });
        RemoteHandle {
            rx,
            core,
            refused: sent.is_err(),
        }
    }

    /// Runs the closure `f` on `core`; the handle resolves to its result.
    pub fn call<R: Send + 'static>(
        &self,
        core: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> RemoteHandle<R> {
        let (tx, rx) = futures_channel::oneshot::channel();
        let sent = self.send(core, move || {
            let _ = tx.send(f());
        });
        RemoteHandle {
            rx,
            core,
            refused: sent.is_err(),
        }
    }

    /// Runs `f` once on every core; `done` runs exactly once, after the last core ran `f`,
    /// on the core that ran it last.
    pub fn for_each_core(
        &self,
        f: impl Fn(usize) + Send + Sync + 'static,
        done: impl FnOnce() + Send + 'static,
    ) -> Result<(), SendError> {
        let f = Arc::new(f);
        let remaining = Arc::new(AtomicUsize::new(self.len()));
        let done = Arc::new(Mutex::new(Some(done)));
        for core in 0..self.len() {
            let (f, remaining, done) = (f.clone(), remaining.clone(), done.clone());
            self.send(core, move || {
                f(core);
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let d = done.lock().ok().and_then(|mut g| g.take());
                    if let Some(d) = d {
                        d();
                    }
                }
            })?;
        }
        Ok(())
    }

    /// [`Cores::for_each_core`] as a future that resolves once every core ran `f`.
    pub fn for_each_core_async(
        &self,
        f: impl Fn(usize) + Send + Sync + 'static,
    ) -> RemoteHandle<()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        let refused = self
            .for_each_core(f, move || {
                let _ = tx.send(());
            })
            .is_err();
        RemoteHandle {
            rx,
            core: 0,
            refused,
        }
    }

    /// Busy and idle loop counts per core.
    pub fn stats(&self) -> Vec<ReactorStats> {
        self.mailboxes
            .iter()
            .map(|m| ReactorStats {
                core: m.core,
                lcore: m.cpu,
                busy: m.busy_loops.load(Ordering::Relaxed),
                idle: m.idle_loops.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The result of work sent to another core.
pub struct RemoteHandle<T> {
    rx: futures_channel::oneshot::Receiver<T>,
    core: usize,
    refused: bool,
}

impl<T> Future for RemoteHandle<T> {
    type Output = Result<T, SendError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.refused {
            return Poll::Ready(Err(SendError { core: self.core }));
        }
        let core = self.core;
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| SendError { core }))
    }
}

/// Runs a reactor; a panic in it ends the process.
///
/// A reactor alone owns its core's state (queue pairs, channels, requests in flight,
/// tasks). No other thread can take that over, so after a panic every request routed
/// to the core, and every `call` or `for_each_core` waiting on it, would wait forever:
/// the process would hang while looking alive. Aborting instead leaves the data as a
/// crash does (which the crash tests cover) and lets a supervisor restart the target.
fn run_or_abort(core: usize, reactor: Reactor) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reactor.run()));
    if let Err(payload) = r {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        tracing::error!(core, panic = %msg, "reactor panicked; aborting the process");
        // Not eprintln!: it panics when stderr is gone, and the abort must happen.
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("tessera: reactor {core} panicked: {msg}; aborting\n"),
        );
        std::process::abort();
    }
}

/// A running set of reactor threads. Dropping it shuts the reactors down.
pub struct ReactorSet {
    cores: Cores,
    threads: Vec<JoinHandle<()>>,
    config: ReactorConfig,
}

impl ReactorSet {
    /// `n` unpinned reactors with the given idle policy: the unit tests' set (they
    /// share the machine, so they pin nothing).
    #[cfg(test)]
    pub(crate) fn for_tests(n: usize, idle: IdlePolicy) -> ReactorSet {
        let mut cfg = ReactorConfig::new(CoreList::first(n), idle);
        cfg.pin = false;
        ReactorSet::start(cfg).expect("reactors start")
    }

    /// Starts one pinned thread per core and waits until every reactor is running.
    pub fn start(config: ReactorConfig) -> Result<ReactorSet, ReactorError> {
        let clock = Clock::real();
        let (polls, cores) = build_mailboxes(config.cores.cpus(), clock)?;
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), ReactorError>>();
        for (core, poll) in polls.into_iter().enumerate() {
            let cores2 = cores.clone();
            let cfg = config.clone();
            let ready = ready_tx.clone();
            let cpu = cores.cpu(core);
            let handle = std::thread::Builder::new()
                .name(format!("reactor_{core}"))
                .spawn(move || {
                    if cfg.pin
                        && cpu < online
                        && let Err(e) = pin_to_cpu(cpu)
                    {
                        let _ = ready.send(Err(ReactorError::Pin {
                            core,
                            cpu,
                            cause: e,
                        }));
                        return;
                    }
                    let reactor = Reactor::new(core, cores2, poll, &cfg);
                    let _ = ready.send(Ok(()));
                    run_or_abort(core, reactor);
                })
                .map_err(ReactorError::Poll)?;
            threads.push(handle);
        }
        drop(ready_tx);
        let mut set = ReactorSet {
            cores,
            threads,
            config,
        };
        for _ in 0..set.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    set.shutdown();
                    return Err(e);
                }
                Err(_) => break,
            }
        }
        tracing::debug!(cores = %set.config.cores, idle = ?set.config.idle, "reactors started");
        Ok(set)
    }

    /// The handle to reach the cores.
    pub fn cores(&self) -> &Cores {
        &self.cores
    }

    /// The configuration the set runs with.
    pub fn config(&self) -> &ReactorConfig {
        &self.config
    }

    /// Stops every reactor after the messages already queued, and joins the threads.
    pub fn shutdown(&mut self) {
        for mb in self.cores.mailboxes.iter() {
            let _ = mb.push(Message::Call(Box::new(|| with_current(|r| r.stop()))));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ReactorSet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn build_mailboxes(cpus: &[usize], clock: Clock) -> Result<(Vec<mio::Poll>, Cores), ReactorError> {
    let mut polls = Vec::new();
    let mut boxes = Vec::new();
    for (core, &cpu) in cpus.iter().enumerate() {
        let poll = mio::Poll::new()?;
        let doorbell = mio::Waker::new(poll.registry(), DOORBELL)?;
        boxes.push(Arc::new(Mailbox {
            core,
            cpu,
            queue: SegQueue::new(),
            sleeping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            doorbell,
            busy_loops: AtomicU64::new(0),
            idle_loops: AtomicU64::new(0),
        }));
        polls.push(poll);
    }
    Ok((
        polls,
        Cores {
            mailboxes: boxes.into(),
            clock,
            offload: Arc::default(),
        },
    ))
}

fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is a plain bitmask for which all-zero is a valid value;
    // CPU_SET writes inside it (cpu < CPU_SETSIZE is ensured by CoreList's 1023 limit)
    // and sched_setaffinity only reads `size_of::<cpu_set_t>()` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

const DOORBELL: mio::Token = mio::Token(usize::MAX);

type PollerFn = Box<dyn FnMut() -> usize>;

/// A poller's slot. `generation` changes whenever the slot is freed, so a poller that
/// unregisters itself while running is never put back over a newcomer.
struct PollerSlot {
    f: Option<PollerFn>,
    generation: u64,
    live: bool,
}

/// The reactor of one core. Lives on its thread (or, under [`ManualReactors`], on the
/// test thread); reached through the free functions of this module.
pub struct Reactor {
    inner: Rc<ReactorInner>,
}

struct ReactorInner {
    mailbox: Arc<Mailbox>,
    cores: Cores,
    run_queue: RefCell<VecDeque<async_task::Runnable>>,
    pollers: RefCell<Vec<PollerSlot>>,
    poller_free: RefCell<Vec<usize>>,
    timers: RefCell<TimerQueue>,
    io: io::Driver,
    locals: RefCell<Vec<(TypeId, Rc<dyn Any>)>>,
    stopping: Cell<bool>,
    idle: IdlePolicy,
    spin_before_park: Duration,
    loops_busy: Cell<u64>,
    loops_idle: Cell<u64>,
    /// Iterations left before the next non-blocking readiness poll.
    io_skip: Cell<u32>,
    /// [`clock::ticks`] read at the start of this loop iteration: the time stamp I/O
    /// statistics take at submission and completion ([`pass_ticks`]).
    pass_ticks: Rc<Cell<u64>>,
    /// Under [`ManualReactors`] only: every task spawned here, so that the machine's
    /// teardown can drop the futures of those still pending ([`Droppable`]).
    tracked: Option<RefCell<Tracked>>,
}

/// The tasks a [`ManualReactors`] core spawned ([`ReactorInner::tracked`]).
#[derive(Default)]
struct Tracked {
    tasks: Vec<Weak<dyn Droppable>>,
    /// The tasks that ended are forgotten when `tasks` grows to this (twice what was
    /// left the last time, at least 64).
    prune_at: usize,
}

impl Tracked {
    fn push(&mut self, t: Weak<dyn Droppable>) {
        if self.tasks.len() >= self.prune_at.max(64) {
            self.tasks.retain(|t| t.strong_count() > 0);
            self.prune_at = 2 * self.tasks.len();
        }
        self.tasks.push(t);
    }
}

/// A task's future that can be dropped from outside the task: what [`ManualReactors`]
/// does to the tasks still pending when it is dropped. A pending task is kept alive by
/// whoever holds its waker, and that is often something its own future holds (the
/// state of a pool it waits on); a real reactor's thread ends with its process, a
/// simulated machine is torn down and replaced many times in one process.
trait Droppable {
    /// Drops the future; false if it was gone already.
    fn drop_future(&self) -> bool;
}

impl<F> Droppable for RefCell<Option<Pin<Box<F>>>> {
    fn drop_future(&self) -> bool {
        // Taken out first: the future's destructor may wake or spawn others.
        let fut = self.borrow_mut().take();
        fut.is_some()
    }
}

/// A spawned future: as given, or (under [`ManualReactors`]) in a slot its reactor can
/// empty ([`Droppable`]).
enum Spawned<F> {
    Plain(F),
    Tracked(Rc<RefCell<Option<Pin<Box<F>>>>>),
}

impl<F: Future> Future for Spawned<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: nothing is moved out of `self` here: the `Plain` arm pins its field
        // in place, the `Tracked` arm only borrows its slot.
        let this = unsafe { self.get_unchecked_mut() };
        match this {
            Spawned::Plain(f) => {
                // SAFETY: `f` lives inside the pinned `Spawned`, and no method of
                // `Spawned` moves it out or replaces it.
                unsafe { Pin::new_unchecked(f) }.poll(cx)
            }
            Spawned::Tracked(slot) => {
                // Not borrowed across anything but the poll: the teardown that empties
                // the slot never runs inside a poll.
                let mut slot = slot.borrow_mut();
                match slot.as_mut() {
                    Some(f) => f.as_mut().poll(cx),
                    // Dropped by the teardown: it never completes.
                    None => Poll::Pending,
                }
            }
        }
    }
}

/// Iterations skipped after an empty readiness poll.
const IO_POLL_SKIP: u32 = 8;

thread_local! {
    static CURRENT: RefCell<Option<Rc<ReactorInner>>> = const { RefCell::new(None) };
}

/// Runs `f` with the reactor currently polling on this thread.
///
/// # Panics
/// When called outside a reactor; every function of this module documented as "on the
/// current reactor" has this requirement.
fn with_current<R>(f: impl FnOnce(&Rc<ReactorInner>) -> R) -> R {
    CURRENT.with(|c| {
        let c = c.borrow();
        let r = c
            .as_ref()
            .expect("this function must be called on a reactor thread");
        f(r)
    })
}

fn try_with_current<R>(f: impl FnOnce(&Rc<ReactorInner>) -> R) -> Option<R> {
    CURRENT.with(|c| c.try_borrow().ok().and_then(|c| c.as_ref().map(f)))
}

struct CurrentGuard(Option<Rc<ReactorInner>>);

impl CurrentGuard {
    fn enter(r: &Rc<ReactorInner>) -> CurrentGuard {
        CurrentGuard(CURRENT.with(|c| c.replace(Some(r.clone()))))
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

impl Reactor {
    fn new(core: usize, cores: Cores, poll: mio::Poll, cfg: &ReactorConfig) -> Reactor {
        Reactor {
            inner: Rc::new(ReactorInner {
                mailbox: cores.mailboxes[core].clone(),
                cores,
                run_queue: RefCell::new(VecDeque::with_capacity(256)),
                pollers: RefCell::new(Vec::new()),
                poller_free: RefCell::new(Vec::new()),
                timers: RefCell::new(TimerQueue::default()),
                io: io::Driver::new(poll),
                locals: RefCell::new(Vec::new()),
                stopping: Cell::new(false),
                idle: cfg.idle,
                spin_before_park: cfg.spin_before_park,
                loops_busy: Cell::new(0),
                loops_idle: Cell::new(0),
                io_skip: Cell::new(0),
                pass_ticks: Rc::new(Cell::new(clock::ticks())),
                tracked: None,
            }),
        }
    }

    /// This reactor's core index.
    pub fn core(&self) -> usize {
        self.inner.mailbox.core
    }

    /// One loop iteration; returns the amount of work done.
    pub fn poll_once(&self) -> usize {
        let _g = CurrentGuard::enter(&self.inner);
        self.inner.iteration()
    }

    fn run(self) {
        let _g = CurrentGuard::enter(&self.inner);
        let r = &self.inner;
        let mut idle_since = r.cores.clock.now();
        let mut publish = 0u32;
        loop {
            let work = r.iteration();
            if r.stopping.get() {
                break;
            }
            publish += 1;
            if publish >= 1024 {
                publish = 0;
                r.publish_stats();
            }
            if work > 0 {
                r.loops_busy.set(r.loops_busy.get() + 1);
                if r.idle == IdlePolicy::Adaptive {
                    idle_since = r.cores.clock.now();
                }
                continue;
            }
            r.loops_idle.set(r.loops_idle.get() + 1);
            match r.idle {
                IdlePolicy::Busy => std::hint::spin_loop(),
                IdlePolicy::Adaptive => {
                    let now = r.cores.clock.now();
                    if now.since(idle_since) >= r.spin_before_park {
                        r.park(now);
                        idle_since = r.cores.clock.now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        r.publish_stats();
        r.mailbox.closed.store(true, Ordering::Release);
        // Run what was sent before the stop; then drop tasks and pollers on this thread.
        while let Some(m) = r.mailbox.queue.pop() {
            match m {
                Message::Call(f) => f(),
                Message::Wake(run) | Message::WakeFirst(run) => drop(run),
            }
        }
        r.run_queue.borrow_mut().clear();
        let pollers = std::mem::take(&mut *r.pollers.borrow_mut());
        drop(pollers);
        let locals = std::mem::take(&mut *r.locals.borrow_mut());
        drop(locals);
        r.run_queue.borrow_mut().clear();
    }
}

impl ReactorInner {
    fn stop(&self) {
        self.stopping.set(true);
    }

    fn publish_stats(&self) {
        self.mailbox
            .busy_loops
            .store(self.loops_busy.get(), Ordering::Relaxed);
        self.mailbox
            .idle_loops
            .store(self.loops_idle.get(), Ordering::Relaxed);
    }

    fn iteration(&self) -> usize {
        let mut work = 0;
        // One counter read per iteration serves every I/O the iteration submits or
        // completes (at QD 128 on a null bdev, about a hundred): a latency is measured
        // to within one iteration, for a fraction of the cost of a read per I/O.
        self.pass_ticks.set(clock::ticks());
        // 1. Messages.
        for _ in 0..1024 {
            match self.mailbox.queue.pop() {
                Some(Message::Call(f)) => f(),
                Some(Message::Wake(run)) => self.run_queue.borrow_mut().push_back(run),
                Some(Message::WakeFirst(run)) => self.run_queue.borrow_mut().push_front(run),
                None => break,
            }
            work += 1;
        }
        // 2. Ready tasks (those ready now; tasks woken while running wait a turn).
        let ready = self.run_queue.borrow().len();
        for _ in 0..ready {
            let next = self.run_queue.borrow_mut().pop_front();
            match next {
                Some(run) => {
                    run.run();
                    work += 1;
                }
                None => break,
            }
        }
        // Completions the pollers deliver are stamped after the submissions the tasks
        // made in this iteration: a fast device's latency reads as one pass, not zero.
        self.pass_ticks.set(clock::ticks());
        // 3. Pollers.
        let n = self.pollers.borrow().len();
        for i in 0..n {
            let taken = {
                let mut ps = self.pollers.borrow_mut();
                let slot = &mut ps[i];
                slot.f.take().map(|f| (f, slot.generation))
            };
            if let Some((mut p, generation)) = taken {
                work += p();
                let mut ps = self.pollers.borrow_mut();
                let slot = &mut ps[i];
                // Put it back unless it was unregistered while running.
                if slot.live && slot.generation == generation {
                    slot.f = Some(p);
                }
            }
        }
        // 4. Socket readiness. An empty epoll_wait costs a system call, so after one that
        //    found nothing the next few iterations skip it (a few hundred nanoseconds of
        //    latency at most); after one that found events, poll again at once.
        if self.io.has_sources() {
            let skip = self.io_skip.get();
            if skip == 0 {
                let n = self.io.poll(Some(Duration::ZERO));
                work += n;
                self.io_skip.set(if n == 0 { IO_POLL_SKIP } else { 0 });
            } else {
                self.io_skip.set(skip - 1);
            }
        }
        // 5. Timers.
        if !self.timers.borrow().is_empty() {
            let now = self.cores.clock.now();
            loop {
                let action = self.timers.borrow_mut().pop_expired(now);
                match action {
                    Some(TimerAction::Wake(w)) => w.wake(),
                    Some(TimerAction::Call(f)) => f(),
                    None => break,
                }
                work += 1;
            }
        }
        work
    }

    fn park(&self, now: Nanos) {
        let deadline = self.timers.borrow_mut().next_deadline();
        let timeout = match deadline {
            Some(at) => at.since(now),
            None => Duration::from_millis(500),
        };
        if timeout.is_zero() {
            return;
        }
        self.mailbox.sleeping.store(true, Ordering::Relaxed);
        // Pairs with the fence in `Mailbox::push`.
        fence(Ordering::SeqCst);
        if self.mailbox.queue.is_empty() && self.run_queue.borrow().is_empty() {
            self.io.poll(Some(timeout));
        }
        self.mailbox.sleeping.store(false, Ordering::Relaxed);
    }
}

/// Handle of a registered poller; unregisters it when dropped.
pub struct PollerHandle {
    reactor: Weak<ReactorInner>,
    index: usize,
}

impl Drop for PollerHandle {
    fn drop(&mut self) {
        if let Some(r) = self.reactor.upgrade() {
            let taken = {
                let mut ps = r.pollers.borrow_mut();
                match ps.get_mut(self.index) {
                    Some(slot) => {
                        slot.live = false;
                        slot.generation += 1;
                        slot.f.take()
                    }
                    None => return,
                }
            };
            r.poller_free.borrow_mut().push(self.index);
            // Dropped outside the borrow: a poller's captures may own other handles.
            drop(taken);
        }
    }
}

/// Registers `f` to be called once per loop iteration on the current reactor. It returns
/// how much work it did (0 when idle).
pub fn register_poller(f: impl FnMut() -> usize + 'static) -> PollerHandle {
    with_current(|r| {
        let free = r.poller_free.borrow_mut().pop();
        let mut ps = r.pollers.borrow_mut();
        let index = match free {
            Some(i) => {
                let slot = &mut ps[i];
                slot.f = Some(Box::new(f));
                slot.live = true;
                i
            }
            None => {
                ps.push(PollerSlot {
                    f: Some(Box::new(f)),
                    generation: 0,
                    live: true,
                });
                ps.len() - 1
            }
        };
        PollerHandle {
            reactor: Rc::downgrade(r),
            index,
        }
    })
}

/// Spawns a future on the current reactor. Drop the returned task to cancel it, or
/// `.detach()` it to let it run to completion on its own.
pub fn spawn_local<F>(fut: F) -> async_task::Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    spawn_with(fut, false)
}

/// [`spawn_local`] for a task that holds others up while it waits (a snapshot holds
/// its disk's writes): each time something else wakes it, it runs before the tasks
/// already ready, instead of after them (woken by itself, by `yield_now`, it goes
/// last). On a core busy with long polls, a task of several steps otherwise waits a
/// whole turn of the run queue at each.
pub fn spawn_local_first<F>(fut: F) -> async_task::Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    spawn_with(fut, true)
}

fn spawn_with<F>(fut: F, first: bool) -> async_task::Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let (mailbox, fut) = with_current(|r| {
        let fut = match &r.tracked {
            None => Spawned::Plain(fut),
            Some(tracked) => {
                let slot = Rc::new(RefCell::new(Some(Box::pin(fut))));
                let weak = Rc::downgrade(&slot) as Weak<dyn Droppable>;
                tracked.borrow_mut().push(weak);
                Spawned::Tracked(slot)
            }
        };
        (r.mailbox.clone(), fut)
    });
    let target = Arc::downgrade(&mailbox);
    let schedule = move |runnable: async_task::Runnable, info: async_task::ScheduleInfo| {
        let Some(mb) = target.upgrade() else {
            std::mem::forget(runnable);
            return;
        };
        let local = try_with_current(|r| Arc::ptr_eq(&r.mailbox, &mb)).unwrap_or(false);
        // A task that wakes itself while running (`yield_now`) lets the others go
        // first, whatever it is.
        let first = first && !info.woken_while_running;
        match (local, first) {
            (true, false) => with_current(|r| r.run_queue.borrow_mut().push_back(runnable)),
            (true, true) => with_current(|r| r.run_queue.borrow_mut().push_front(runnable)),
            (false, false) => {
                let _ = mb.push(Message::Wake(runnable));
            }
            (false, true) => {
                let _ = mb.push(Message::WakeFirst(runnable));
            }
        }
    };
    let (runnable, task) = async_task::spawn_local(fut, async_task::WithInfo(schedule));
    runnable.schedule();
    task
}

/// The core index of the current reactor, or `None` off the reactors.
pub fn current_core() -> Option<usize> {
    try_with_current(|r| r.mailbox.core)
}

/// The idle policy of the current reactor.
pub fn idle_policy() -> IdlePolicy {
    with_current(|r| r.idle)
}

/// The [`Cores`] handle of the current reactor's set.
pub fn cores() -> Cores {
    with_current(|r| r.cores.clone())
}

/// The CPUs this process may run on where no reactor of the current set runs, as a
/// CPU set for the kernel's helper threads (an io_uring's io-wq workers); `None` if
/// every allowed CPU has a reactor. A helper thread on a reactor's CPU preempts its
/// poll loop for as long as it runs (a write punted to a worker, milliseconds with a
/// file's journal) — so helpers go elsewhere where there is an elsewhere.
pub fn helper_cpus() -> Option<libc::cpu_set_t> {
    let cores = cores();
    // SAFETY: cpu_set_t is a plain bitmask for which all-zero is a valid value;
    // sched_getaffinity writes at most `size_of::<cpu_set_t>()` bytes into it, and
    // CPU_ISSET/CPU_CLR stay inside it for cpu < CPU_SETSIZE. The process's id names
    // its main thread, whose mask is the one the process was started with.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(
            libc::getpid(),
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        ) != 0
        {
            return None;
        }
        for core in 0..cores.len() {
            let cpu = cores.cpu(core);
            if cpu < libc::CPU_SETSIZE as usize {
                libc::CPU_CLR(cpu, &mut set);
            }
        }
        (libc::CPU_COUNT(&set) > 0).then_some(set)
    }
}

/// The cell holding the [`clock::ticks`] the current reactor read at the start of its
/// current loop iteration (I/O statistics read it per request: a load, not a counter
/// read).
pub fn pass_ticks() -> Rc<Cell<u64>> {
    with_current(|r| r.pass_ticks.clone())
}

/// The current time on the current reactor's clock.
pub fn now() -> Nanos {
    with_current(|r| r.cores.clock.now())
}

/// Per-reactor storage: the value of type `T` on the current reactor, created by `init`
/// on first use.
pub fn local<T: 'static>(init: impl FnOnce() -> T) -> Rc<T> {
    with_current(|r| {
        let id = TypeId::of::<T>();
        if let Some((_, v)) = r.locals.borrow().iter().find(|(t, _)| *t == id) {
            return v.clone().downcast::<T>().expect("type id matches");
        }
        let v: Rc<T> = Rc::new(init());
        r.locals.borrow_mut().push((id, v.clone()));
        v
    })
}

/// Calls `f` on the current reactor at `at` (reactor clock). Returns an id for
/// [`cancel_timer`].
pub fn call_at(at: Nanos, f: impl FnOnce() + 'static) -> u64 {
    with_current(|r| {
        r.timers
            .borrow_mut()
            .insert(at, TimerAction::Call(Box::new(f)))
    })
}

/// Cancels a timer set by [`call_at`]; harmless if it already fired.
pub fn cancel_timer(id: u64) {
    let _ = try_with_current(|r| r.timers.borrow_mut().cancel(id));
}

/// A future that completes `d` from now on the current reactor's clock.
pub fn sleep(d: Duration) -> Sleep {
    Sleep {
        at: now().after(d),
        id: None,
    }
}

/// A future that completes at reactor time `at`.
pub fn sleep_until(at: Nanos) -> Sleep {
    Sleep { at, id: None }
}

/// Runs `fut` until reactor time `deadline`: its output, or `None` if the deadline came
/// first (`fut` is dropped then).
pub async fn until<F: Future>(deadline: Nanos, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut timer = std::pin::pin!(sleep_until(deadline));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// See [`sleep`].
pub struct Sleep {
    at: Nanos,
    id: Option<u64>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.at;
        let id = self.id;
        with_current(|r| {
            if r.cores.clock.now() >= at {
                if let Some(id) = id {
                    r.timers.borrow_mut().cancel(id);
                }
                return Poll::Ready(());
            }
            let mut timers = r.timers.borrow_mut();
            match id {
                Some(id) if timers.update_waker(id, cx.waker()) => {}
                _ => {
                    let id = timers.insert(at, TimerAction::Wake(cx.waker().clone()));
                    drop(timers);
                    self.id = Some(id);
                }
            }
            Poll::Pending
        })
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            cancel_timer(id);
        }
    }
}

/// Yields once to the rest of the reactor's loop.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// A long synchronous loop's turn on its reactor: between steps the loop asks
/// [`Slice::spent`], and once `len` has passed since the turn began it yields
/// ([`Slice::next_turn`]), so that no poll of it holds the core much longer than `len`
/// — I/O completions, mapping faults and a snapshot's steps run in between.
///
/// On a manual clock (the simulator's) time stands still within a poll: a loop that
/// must yield there too keeps a count of steps besides.
pub struct Slice {
    began: Nanos,
    len: Duration,
}

impl Slice {
    /// A turn of `len`, beginning now.
    pub fn new(len: Duration) -> Slice {
        Slice { began: now(), len }
    }

    /// True once the turn has lasted `len`.
    pub fn spent(&self) -> bool {
        now() >= self.began.after(self.len)
    }

    /// Yields to the rest of the reactor's loop, then begins a new turn.
    pub async fn next_turn(&mut self) {
        yield_now().await;
        self.began = now();
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the calling (non-reactor) thread, parking between
/// polls. For the main thread and tests awaiting work sent to the reactors.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// N reactors driven by hand from one thread with a manual clock, for deterministic tests.
pub struct ManualReactors {
    reactors: Vec<Reactor>,
    cores: Cores,
}

impl ManualReactors {
    /// Builds `n` reactors on a manual clock.
    pub fn new(n: usize) -> Result<ManualReactors, ReactorError> {
        let cpus: Vec<usize> = (0..n.max(1)).collect();
        let (polls, cores) = build_mailboxes(&cpus, Clock::manual())?;
        let cfg = ReactorConfig::new(CoreList::first(n), IdlePolicy::Busy);
        let reactors = polls
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut r = Reactor::new(i, cores.clone(), p, &cfg);
                Rc::get_mut(&mut r.inner)
                    .expect("a reactor just built is held once")
                    .tracked = Some(RefCell::default());
                r
            })
            .collect();
        Ok(ManualReactors { reactors, cores })
    }

    /// The handle to reach these cores.
    pub fn cores(&self) -> &Cores {
        &self.cores
    }

    /// One loop iteration of core `core`.
    pub fn poll(&self, core: usize) -> usize {
        self.reactors[core].poll_once()
    }

    /// Polls every core round-robin until a full round does no work (or `max_rounds`).
    /// Returns the number of rounds that did work.
    pub fn run_until_idle(&self, max_rounds: usize) -> usize {
        for round in 0..max_rounds {
            let work: usize = (0..self.reactors.len()).map(|c| self.poll(c)).sum();
            if work == 0 {
                return round;
            }
        }
        max_rounds
    }

    /// Advances the manual clock.
    pub fn advance(&self, d: Duration) {
        self.cores.clock.advance(d);
    }

    /// Runs `f` on core `core` right now (as if it were that reactor's code).
    pub fn enter<R>(&self, core: usize, f: impl FnOnce() -> R) -> R {
        let _g = CurrentGuard::enter(&self.reactors[core].inner);
        f()
    }
}

impl Drop for ManualReactors {
    /// Drops the tasks still queued on each core inside that core's context, as a
    /// reactor thread does when it ends: their futures' destructors may use it (a
    /// mapping agent's channel unregisters itself). Dropping one task may queue others.
    ///
    /// So are the futures of the tasks still pending ([`Droppable`]), those woken from
    /// another core and waiting in the core's mailbox among them: a pending task is
    /// often held through its own future's state, and would otherwise keep what it
    /// holds (a simulated pool and its disks) for the rest of the process.
    fn drop(&mut self) {
        loop {
            let mut dropped = 0;
            for r in &self.reactors {
                let _g = CurrentGuard::enter(&r.inner);
                loop {
                    let next = r.inner.run_queue.borrow_mut().pop_front();
                    let Some(task) = next else { break };
                    drop(task);
                    dropped += 1;
                }
                let pending = match &r.inner.tracked {
                    Some(t) => std::mem::take(&mut t.borrow_mut().tasks),
                    None => Vec::new(),
                };
                for t in pending.iter().filter_map(Weak::upgrade) {
                    dropped += t.drop_future() as usize;
                }
            }
            if dropped == 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
