//! The `uring` bdev: a file or block device driven through io_uring, with `O_DIRECT`.
//!
//! Each core's channel owns its own ring. `submit` only queues a submission entry; the
//! channel's poller hands every queued entry to the kernel with one `io_uring_enter`
//! per loop iteration, then reaps completions. A slow device is the exception: while
//! the channel completes fewer than [`EAGER_BELOW_IOPS`] requests a second (measured
//! over 10 ms windows) and the kernel does not finish them inline during submission,
//! each entry goes to the kernel as soon as it is queued. A system call per request costs little
//! at that rate, and a virtio disk served whole batches measurably slower than the same
//! requests one by one (`bench/results/foundation.md`). Options: registered (fixed) files,
//! registered (fixed) buffers handed out by [`Channel::alloc_buf`](super::Channel),
//! a kernel submission thread (SQPOLL) and completion polling (IOPOLL). Under the
//! adaptive idle policy the ring signals an eventfd that wakes a parked reactor.
//!
//! # Safety
//! The kernel reads and writes request memory asynchronously. Every request handed to
//! the ring stays in the channel's in-flight slab — which never reallocates, so the
//! iovec arrays inside it do not move — until its completion is reaped, and the
//! channel's `Drop` waits for every in-flight completion before freeing anything.

use super::buf::{ALIGN, BufArena};
use super::{
    Bdev, BdevChannel, BdevError, BdevIo, BdevProps, Deferred, Drained, Epochs, IoBuf, IoKind,
    IoStatus,
};
use crate::reactor::{self, IdlePolicy, Nanos, PollerHandle, io::WakeFd};
use crossbeam_queue::ArrayQueue;
use io_uring::{IoUring, opcode, squeue, types};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;
use uuid::Uuid;

/// Below this completion rate a channel submits each request at once instead of once
/// per poll: a system call per request then costs at most a few percent of a core.
pub const EAGER_BELOW_IOPS: u64 = 100_000;
/// An eager channel goes back to per-poll batches above this rate (the gap keeps a
/// channel near the threshold from switching at every window).
const BATCH_ABOVE_IOPS: u64 = 120_000;
/// How often a channel re-measures its completion rate.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

/// Options of a uring bdev.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UringOptions {
    /// Submission queue entries per core (a power of two).
    pub queue_depth: u32,
    /// Open with `O_DIRECT` (bypass the page cache).
    pub direct: bool,
    /// Register the file with each ring (saves an fd lookup per I/O).
    pub fixed_files: bool,
    /// Register a buffer arena with each ring; buffers from it skip page pinning.
    pub fixed_buffers: bool,
    /// Bytes of registered buffers per core when `fixed_buffers` is on.
    pub fixed_buffer_bytes: usize,
    /// A kernel thread polls the submission queue (no syscall to submit).
    pub sqpoll: bool,
    /// Milliseconds the SQPOLL thread spins before sleeping.
    pub sqpoll_idle_ms: u32,
    /// Poll for completions instead of interrupts (needs `O_DIRECT` and a device that
    /// supports polled I/O).
    pub iopoll: bool,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            queue_depth: 512,
            direct: true,
            fixed_files: true,
            fixed_buffers: false,
            fixed_buffer_bytes: 16 << 20,
            sqpoll: false,
            sqpoll_idle_ms: 100,
            iopoll: false,
        }
    }
}

/// A bdev over a file or block device.
pub struct UringBdev {
    props: BdevProps,
    path: PathBuf,
    file: File,
    options: UringOptions,
    direct: bool,
    block_device: bool,
}

impl UringBdev {
    /// Opens `path`. A missing regular file is created sparse with `size_bytes` when that
    /// is given; `block_size` defaults to the device's logical block size (files: 4096
    /// when direct, 512 otherwise).
    pub fn create(
        name: &str,
        path: &Path,
        block_size: Option<u32>,
        size_bytes: Option<u64>,
        uuid: Option<Uuid>,
        options: UringOptions,
    ) -> Result<Arc<UringBdev>, BdevError> {
        let io_err = |cause| BdevError::Io {
            name: name.to_string(),
            path: path.display().to_string(),
            cause,
        };
        let invalid = |field, reason: String| BdevError::InvalidParam {
            name: name.to_string(),
            field,
            reason,
        };
        if !options.queue_depth.is_power_of_two() || !(8..=32768).contains(&options.queue_depth) {
            return Err(invalid(
                "queue_depth",
                format!("{} is not a power of two in 8..=32768", options.queue_depth),
            ));
        }
        if !path.exists() {
            let size = size_bytes.ok_or_else(|| {
                invalid(
                    "size",
                    format!(
                        "{} does not exist and no size was given to create it",
                        path.display()
                    ),
                )
            })?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io_err)?;
            }
            let f = File::create(path).map_err(io_err)?;
            f.set_len(size).map_err(io_err)?;
        }
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let (file, direct) = match open(options.direct) {
            Ok(f) => (f, options.direct),
            Err(e) if options.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(bdev = name, path = %path.display(),
                    "O_DIRECT not supported by this filesystem; using buffered I/O");
                (open(false).map_err(io_err)?, false)
            }
            Err(e) => return Err(io_err(e)),
        };
        if options.iopoll && !direct {
            return Err(invalid("iopoll", "needs O_DIRECT".into()));
        }
        let (dev_bytes, dev_bs, block_device) = device_geometry(&file, direct).map_err(io_err)?;
        let block_size = block_size.unwrap_or(dev_bs);
        if direct && block_size < dev_bs {
            return Err(invalid(
                "block_size",
                format!("{block_size} is below the device's logical block size {dev_bs}"),
            ));
        }
        let num_blocks = dev_bytes / block_size as u64;
        let props = BdevProps::new(name, uuid, block_size, num_blocks, "URING bdev")?
            .with_write_cache(true)
            .with_buf_align(if direct { dev_bs.max(512) as usize } else { 1 });
        Ok(Arc::new(UringBdev {
            props,
            path: path.to_path_buf(),
            file,
            options,
            direct,
            block_device,
        }))
    }

    /// The path of the file or device.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options in force.
    pub fn options(&self) -> &UringOptions {
        &self.options
    }
}

/// The size in bytes of the file or block device `file` is open on, its logical block
/// size (files: 4096 when `direct`, 512 otherwise), and whether it is a block device.
fn device_geometry(file: &File, direct: bool) -> std::io::Result<(u64, u32, bool)> {
    let meta = file.metadata()?;
    if !meta.file_type().is_block_device() {
        return Ok((meta.len(), if direct { 4096 } else { 512 }, false));
    }
    let mut bytes: u64 = 0;
    let mut ssz: libc::c_int = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 and BLKSSZGET one int into the provided,
    // valid locations; the fd is open for as long as `file` lives.
    unsafe {
        if libc::ioctl(file.as_raw_fd(), 0x80081272, &mut bytes) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::ioctl(file.as_raw_fd(), 0x1268, &mut ssz) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((bytes, ssz as u32, true))
}

impl Bdev for UringBdev {
    fn props(&self) -> &BdevProps {
        &self.props
    }

    fn backing_bytes(&self) -> Option<Result<u64, BdevError>> {
        let me: &dyn Bdev = self;
        Some(
            device_geometry(&self.file, self.direct)
                .map(|(bytes, _, _)| bytes)
                .map_err(|cause| BdevError::Io {
                    name: me.name().to_string(),
                    path: self.path.display().to_string(),
                    cause,
                }),
        )
    }

    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        UringChannel::open(self).map(|c| c as Rc<dyn BdevChannel>)
    }

    fn unmap_reads_zeroes(&self) -> bool {
        !self.block_device
    }

    fn driver_specific(&self) -> serde_json::Value {
        serde_json::json!({"uring": {"filename": self.path.display().to_string(),
            "direct": self.direct, "options": self.options}})
    }
}

/// Registered buffer memory of one channel, carved into equal chunks.
struct Arena {
    base: NonNull<u8>,
    len: usize,
    chunk: usize,
    free: ArrayQueue<usize>,
}

// SAFETY: the arena owns its mapping for its whole life; chunk ownership is transferred
// through the lock-free free list, so no two owners ever hold the same chunk.
unsafe impl Send for Arena {}
// SAFETY: as above; shared access only touches the atomic free list.
unsafe impl Sync for Arena {}

impl Arena {
    fn new(len: usize, chunk: usize) -> std::io::Result<Arc<Arena>> {
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let n = len / chunk;
        let free = ArrayQueue::new(n);
        for i in 0..n {
            let _ = free.push(i);
        }
        Ok(Arc::new(Arena {
            base: NonNull::new(p.cast()).expect("mmap succeeded"),
            len,
            chunk,
            free,
        }))
    }

    fn contains(&self, p: *const u8, len: usize) -> bool {
        let b = self.base.as_ptr() as usize;
        (p as usize) >= b && (p as usize) + len <= b + self.len
    }
}

impl BufArena for Arena {
    fn give_back(&self, ptr: NonNull<u8>, _cap: usize) {
        let i = (ptr.as_ptr() as usize - self.base.as_ptr() as usize) / self.chunk;
        let _ = self.free.push(i);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: every chunk is back (buffers hold an Arc to the arena), so nobody uses
        // the mapping any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Decides, window by window, whether a channel hands each request to the kernel as
/// it is queued (eager) or all queued requests once per poll (see the module docs).
#[derive(Debug)]
struct SubmitPolicy {
    /// Submit each request as it is queued.
    eager: bool,
    /// Eager submission is possible at all (not with SQPOLL or IOPOLL).
    allowed: bool,
    /// Start of the current window, and what happened in it: completions reaped,
    /// submission calls, and calls during which completions appeared (the kernel
    /// finished requests inline, as the page cache or tmpfs do: submitting early gains
    /// nothing there and costs a system call per request).
    window_start: Nanos,
    done: u64,
    submits: u64,
    inline: u64,
}

impl SubmitPolicy {
    /// Until a rate is measured the device counts as slow; the first window switches a
    /// fast one to per-poll batches.
    fn new(allowed: bool, now: Nanos) -> SubmitPolicy {
        SubmitPolicy {
            eager: allowed,
            allowed,
            window_start: now,
            done: 0,
            submits: 0,
            inline: 0,
        }
    }

    fn submitted(&mut self, inline: bool) {
        self.submits += 1;
        self.inline += inline as u64;
    }

    fn completed(&mut self, n: u64, now: Nanos) {
        self.done += n;
        let elapsed = now.since(self.window_start);
        if elapsed < RATE_WINDOW {
            return;
        }
        let per_sec = self.done.saturating_mul(1_000_000_000) / (elapsed.as_nanos() as u64).max(1);
        let limit = if self.eager {
            BATCH_ABOVE_IOPS
        } else {
            EAGER_BELOW_IOPS
        };
        let inline = self.inline * 2 > self.submits;
        self.eager = self.allowed && per_sec < limit && !inline;
        self.window_start = now;
        self.done = 0;
        self.submits = 0;
        self.inline = 0;
    }
}

/// The ring has no room for completions yet (`EBUSY`) or the kernel is short of
/// memory (`EAGAIN`).
fn is_busy(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN))
}

struct UringChannel {
    bdev: Arc<UringBdev>,
    ring: RefCell<IoUring>,
    /// Requests the kernel has, each with its epoch.
    inflight: RefCell<slab::Slab<(BdevIo, u64)>>,
    capacity: usize,
    /// Requests waiting for room in the ring, each with its epoch.
    waiting: RefCell<VecDeque<(BdevIo, u64)>>,
    /// Counts requests from submission to completion, so that the channel can tell
    /// when it drained.
    epochs: Rc<Epochs>,
    unsubmitted: Cell<u32>,
    fixed_file: bool,
    arena: Option<Arc<Arena>>,
    _eventfd: Option<(OwnedFd, WakeFd)>,
    poller: RefCell<Option<PollerHandle>>,
    /// Whether to submit each request as it is queued.
    policy: RefCell<SubmitPolicy>,
}

impl UringChannel {
    fn open(bdev: Arc<UringBdev>) -> Result<Rc<UringChannel>, BdevError> {
        let o = bdev.options.clone();
        let err = |e: std::io::Error| BdevError::Channel {
            name: bdev.props.name.clone(),
            reason: format!("io_uring setup: {e}"),
        };
        let mut builder = IoUring::builder();
        if o.sqpoll {
            builder.setup_sqpoll(o.sqpoll_idle_ms);
        }
        if o.iopoll {
            builder.setup_iopoll();
        }
        let ring = builder.build(o.queue_depth).map_err(err)?;
        // Writes the kernel cannot do without blocking (a file's allocating or
        // force-unit-access writes) go to io-wq worker threads, which inherit this
        // reactor's CPU and would preempt its loop: they run on the CPUs without a
        // reactor, if there are any. A kernel without the option keeps the default.
        if let Some(cpus) = reactor::helper_cpus()
            && let Err(e) = ring.submitter().register_iowq_aff(&cpus)
        {
            tracing::debug!(bdev = %bdev.props.name, error = %e, "io-wq workers keep the reactor's CPU");
        }
        let fd = bdev.file.as_raw_fd();
        let fixed_file = o.fixed_files && ring.submitter().register_files(&[fd]).is_ok();
        let arena = if o.fixed_buffers {
            let a = Arena::new(o.fixed_buffer_bytes.max(1 << 20), 128 << 10).map_err(err)?;
            let iov = libc::iovec {
                iov_base: a.base.as_ptr().cast(),
                iov_len: a.len,
            };
            // SAFETY: the arena outlives the ring's use of it: the channel holds an Arc
            // to it and drains the ring before dropping.
            unsafe { ring.submitter().register_buffers(&[iov]) }.map_err(err)?;
            Some(a)
        } else {
            None
        };
        let adaptive = reactor::idle_policy() == IdlePolicy::Adaptive;
        let eventfd = if adaptive && !o.iopoll {
            // SAFETY: eventfd has no memory-safety preconditions.
            let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if raw < 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            // SAFETY: `raw` is a fresh fd that we own.
            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
            ring.submitter().register_eventfd(raw).map_err(err)?;
            let wake = WakeFd::register(raw).map_err(err)?;
            Some((owned, wake))
        } else {
            None
        };
        let capacity = o.queue_depth as usize * 2;
        let ch = Rc::new(UringChannel {
            bdev,
            ring: RefCell::new(ring),
            inflight: RefCell::new(slab::Slab::with_capacity(capacity)),
            capacity,
            waiting: RefCell::new(VecDeque::new()),
            epochs: Rc::default(),
            unsubmitted: Cell::new(0),
            fixed_file,
            arena,
            _eventfd: eventfd,
            poller: RefCell::new(None),
            policy: RefCell::new(SubmitPolicy::new(!o.sqpoll && !o.iopoll, reactor::now())),
        });
        let weak = Rc::downgrade(&ch);
        let poller = reactor::register_poller(move || weak.upgrade().map_or(0, |c| c.poll()));
        *ch.poller.borrow_mut() = Some(poller);
        Ok(ch)
    }

    fn entry(&self, io: &BdevIo, key: usize) -> squeue::Entry {
        let bs = self.bdev.props.block_size as u64;
        let off = io.offset_blocks * bs;
        let len = io.num_blocks * bs;
        let raw = self.bdev.file.as_raw_fd();
        macro_rules! with_fd {
            ($op:ident ( $($arg:expr),* ) $(. $m:ident ( $($marg:expr),* ))* ) => {
                if self.fixed_file {
                    opcode::$op::new(types::Fixed(0), $($arg),*) $(. $m($($marg),*))* .build()
                } else {
                    opcode::$op::new(types::Fd(raw), $($arg),*) $(. $m($($marg),*))* .build()
                }
            };
        }
        let iovs = io.iovs();
        let e = match io.kind {
            IoKind::Read | IoKind::Write => {
                let write = io.kind == IoKind::Write;
                let single = iovs.len() == 1;
                let fixed = single
                    && self.arena.as_ref().is_some_and(|a| {
                        a.contains(iovs[0].iov_base as *const u8, iovs[0].iov_len)
                    });
                let (p, n) = (iovs[0].iov_base as *mut u8, iovs[0].iov_len as u32);
                // Force unit access: the write is durable when it completes.
                let dsync = if io.flags.fua { libc::RWF_DSYNC } else { 0 };
                match (write, single, fixed) {
                    (false, true, true) => with_fd!(ReadFixed(p, n, 0).offset(off)),
                    (true, true, true) => with_fd!(WriteFixed(p, n, 0).offset(off).rw_flags(dsync)),
                    (false, true, false) => with_fd!(Read(p, n).offset(off)),
                    (true, true, false) => with_fd!(Write(p, n).offset(off).rw_flags(dsync)),
                    (false, false, _) => {
                        with_fd!(Readv(iovs.as_ptr(), iovs.len() as u32).offset(off))
                    }
                    (true, false, _) => {
                        with_fd!(
                            Writev(iovs.as_ptr(), iovs.len() as u32)
                                .offset(off)
                                .rw_flags(dsync)
                        )
                    }
                }
            }
            IoKind::Flush => with_fd!(Fsync().flags(types::FsyncFlags::DATASYNC)),
            IoKind::Unmap => with_fd!(
                Fallocate(len)
                    .offset(off)
                    .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
            ),
            IoKind::WriteZeroes => with_fd!(
                Fallocate(len)
                    .offset(off)
                    .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
            ),
        };
        e.user_data(key as u64)
    }

    /// Moves a request into the in-flight slab and its entry onto the submission queue.
    /// Returns the request if there is no room.
    #[allow(clippy::result_large_err)] // the request itself comes back, by design
    fn start(&self, io: (BdevIo, u64)) -> Result<(), (BdevIo, u64)> {
        let mut inflight = self.inflight.borrow_mut();
        if inflight.len() >= self.capacity {
            return Err(io);
        }
        let key = inflight.insert(io);
        let entry = self.entry(&inflight[key].0, key);
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the entry's memory (buffers and iovec array) lives in `inflight[key]`,
        // which neither moves (the slab stays within its capacity) nor is freed before
        // the completion with this key is reaped (module Safety section).
        let pushed = unsafe { ring.submission().push(&entry) }.is_ok();
        if !pushed {
            // Queue full: hand what we have to the kernel and retry once.
            let _ = ring.submit();
            self.unsubmitted.set(0);
            // SAFETY: as above.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                return Err(inflight.remove(key));
            }
        }
        self.unsubmitted.set(self.unsubmitted.get() + 1);
        if self.policy.borrow().eager {
            let r = self.submit_counted(&mut ring);
            self.submitted(r);
        }
        Ok(())
    }

    /// Hands the queued entries to the kernel, telling the policy whether completions
    /// appeared during the call.
    fn submit_counted(&self, ring: &mut IoUring) -> std::io::Result<usize> {
        let before = ring.completion().len();
        let r = ring.submit();
        let inline = ring.completion().len() > before;
        self.policy.borrow_mut().submitted(inline);
        r
    }

    /// Books the outcome of a submission: on a busy ring the entries stay queued for
    /// the next poll.
    fn submitted(&self, r: std::io::Result<usize>) {
        match r {
            Ok(_) => self.unsubmitted.set(0),
            Err(e) if is_busy(&e) => {}
            Err(e) => {
                tracing::warn!(bdev = %self.bdev.props.name, error = %e, "io_uring submit failed")
            }
        }
    }

    fn poll(&self) -> usize {
        let mut work = 0;
        // Admit requests that waited for room.
        loop {
            let next = self.waiting.borrow_mut().pop_front();
            let Some(io) = next else { break };
            if let Err(io) = self.start(io) {
                self.waiting.borrow_mut().push_front(io);
                break;
            }
        }
        let iopoll = self.bdev.options.iopoll;
        let pending = !self.inflight.borrow().is_empty();
        if self.unsubmitted.get() > 0 || (iopoll && pending) {
            let mut ring = self.ring.borrow_mut();
            let n = self.unsubmitted.get();
            let r = if iopoll {
                // SAFETY: io_uring_enter with no argument struct; GETEVENTS with
                // min_complete 0 makes the kernel poll for completions.
                unsafe { ring.submitter().enter::<libc::sigset_t>(n, 0, 1, None) }
            } else {
                self.submit_counted(&mut ring)
            };
            self.submitted(r);
        }
        let mut done = Vec::new();
        {
            let mut ring = self.ring.borrow_mut();
            let mut inflight = self.inflight.borrow_mut();
            for cqe in ring.completion() {
                let (io, epoch) = inflight.remove(cqe.user_data() as usize);
                done.push((io, epoch, cqe.result()));
            }
        }
        if !done.is_empty() {
            self.policy
                .borrow_mut()
                .completed(done.len() as u64, reactor::now());
        }
        for (io, epoch, res) in done {
            let status = self.status_of(&io, res);
            work += 1;
            if status == IoStatus::InvalidOpcode && io.kind == IoKind::WriteZeroes {
                self.zero_by_writing(io, epoch);
            } else {
                io.complete(status);
                self.epochs.finish(epoch);
            }
        }
        if iopoll && pending { work.max(1) } else { work }
    }

    fn status_of(&self, io: &BdevIo, res: i32) -> IoStatus {
        if res < 0 {
            let errno = -res;
            return match errno {
                libc::EOPNOTSUPP | libc::EINVAL
                    if io.kind == IoKind::WriteZeroes || io.kind == IoKind::Unmap =>
                {
                    IoStatus::InvalidOpcode
                }
                libc::ENOSPC | libc::EDQUOT => IoStatus::CapacityExceeded,
                libc::EROFS | libc::EPERM | libc::EACCES => IoStatus::WriteProtected,
                libc::ECANCELED => IoStatus::Aborted,
                _ => {
                    tracing::warn!(bdev = %self.bdev.props.name, ?io, errno, "I/O failed");
                    IoStatus::MediaError
                }
            };
        }
        if io.kind.has_data() && res as usize != io.iov_len() {
            tracing::warn!(bdev = %self.bdev.props.name, ?io, res, "short transfer");
            return IoStatus::MediaError;
        }
        IoStatus::Success
    }

    /// Write-zeroes where the filesystem cannot zero a range: write zero buffers.
    fn zero_by_writing(&self, io: BdevIo, epoch: u64) {
        let bdev: Arc<dyn Bdev> = self.bdev.clone();
        let epochs = self.epochs.clone();
        reactor::spawn_local(async move {
            let Ok(ch) = super::Channel::get(&bdev) else {
                io.complete(IoStatus::InternalError);
                epochs.finish(epoch);
                return;
            };
            let bs = bdev.block_size() as u64;
            let chunk = (1u64 << 20) / bs;
            let mut at = io.offset_blocks;
            let end = io.offset_blocks + io.num_blocks;
            let mut status = IoStatus::Success;
            while at < end && status.is_success() {
                let n = chunk.min(end - at);
                let buf = IoBuf::zeroed((n * bs) as usize);
                status = ch.io(BdevIo::write(at, n, buf)).await.1;
                at += n;
            }
            io.complete(status);
            epochs.finish(epoch);
        })
        .detach();
    }
}

impl BdevChannel for UringChannel {
    #[inline]
    fn submit(&self, io: BdevIo) {
        let io = (io, self.epochs.start());
        if !self.waiting.borrow().is_empty() {
            self.waiting.borrow_mut().push_back(io);
            return;
        }
        if let Err(io) = self.start(io) {
            self.waiting.borrow_mut().push_back(io);
        }
    }

    fn tracks_drain(&self) -> bool {
        true
    }

    fn drained(&self) -> Option<Drained> {
        Some(self.epochs.drained())
    }

    fn alloc_buf(&self, len: usize) -> Option<IoBuf> {
        let arena = self.arena.as_ref()?;
        if len > arena.chunk {
            return None;
        }
        let i = arena.free.pop()?;
        // SAFETY: chunk `i` came off the free list, so we own it exclusively until the
        // buffer's drop gives it back; it lies inside the mapping, is ALIGN-aligned
        // (the chunk size is a multiple of ALIGN) and initialised (anonymous memory).
        Some(unsafe {
            IoBuf::from_arena(
                NonNull::new_unchecked(arena.base.as_ptr().add(i * arena.chunk)),
                len,
                arena.chunk,
                arena.clone() as Arc<dyn BufArena>,
            )
        })
    }
}

impl Drop for UringChannel {
    /// The last user let the channel go with requests outstanding: the kernel may still
    /// be using their memory, so wait for every completion; each request is completed
    /// on the next loop iteration (those never handed to the kernel as aborted), never
    /// lost.
    fn drop(&mut self) {
        let deferred = Deferred::current();
        let mut done = Vec::new();
        {
            let inflight = self.inflight.get_mut();
            let ring = self.ring.get_mut();
            let _ = ring.submit();
            let mut spins = 0;
            while !inflight.is_empty() && spins < 100_000 {
                let _ = ring.submit_and_wait(1);
                for cqe in ring.completion() {
                    if let Some((io, _)) = inflight.try_remove(cqe.user_data() as usize) {
                        done.push((io, cqe.result()));
                    }
                }
                spins += 1;
            }
            if !inflight.is_empty() {
                // Never free memory the kernel might still write: leak it instead.
                std::mem::forget(std::mem::take(inflight));
            }
        }
        for (io, res) in done {
            let status = match self.status_of(&io, res) {
                // No channel is left to emulate write zeroes with.
                IoStatus::InvalidOpcode => IoStatus::Aborted,
                s => s,
            };
            deferred.complete(io, status);
        }
        for (io, _) in self.waiting.get_mut().drain(..) {
            deferred.complete(io, IoStatus::Aborted);
        }
    }
}

const _: () = assert!(ALIGN.is_power_of_two());

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `policy` one window: `iops` completions a second, `submits` submission calls
    /// of which `inline` saw completions appear.
    fn window(policy: &mut SubmitPolicy, iops: u64, submits: u64, inline: u64) {
        for i in 0..submits {
            policy.submitted(i < inline);
        }
        let start = policy.window_start.0;
        let ms = RATE_WINDOW.as_millis() as u64;
        policy.completed(iops * ms / 1000, Nanos(start + ms * 1_000_000));
    }

    #[test]
    fn a_slow_asynchronous_device_is_submitted_to_eagerly_and_a_fast_one_in_batches() {
        let mut p = SubmitPolicy::new(true, Nanos(0));
        assert!(p.eager, "an unmeasured device counts as slow");
        window(&mut p, 70_000, 500, 0);
        assert!(p.eager, "70 K IOPS with completions arriving later");
        window(&mut p, 400_000, 500, 0);
        assert!(!p.eager, "400 K IOPS: one system call per poll");
        window(&mut p, 110_000, 500, 0);
        assert!(
            !p.eager,
            "between the thresholds a batching channel stays batching"
        );
        window(&mut p, 90_000, 500, 0);
        assert!(p.eager, "below {EAGER_BELOW_IOPS} it turns eager");
        window(&mut p, 110_000, 500, 0);
        assert!(
            p.eager,
            "between the thresholds an eager channel stays eager"
        );
        window(&mut p, 130_000, 500, 0);
        assert!(!p.eager, "above {BATCH_ABOVE_IOPS} it batches again");
    }

    #[test]
    fn requests_finished_inline_are_batched_whatever_the_rate() {
        let mut p = SubmitPolicy::new(true, Nanos(0));
        window(&mut p, 50_000, 500, 400);
        assert!(!p.eager, "the kernel completes them during submission");
        window(&mut p, 50_000, 500, 100);
        assert!(p.eager, "mostly asynchronous again");
    }

    #[test]
    fn a_window_is_not_judged_before_it_ends() {
        let mut p = SubmitPolicy::new(true, Nanos(0));
        p.completed(1_000_000, Nanos(RATE_WINDOW.as_nanos() as u64 / 2));
        assert!(p.eager, "half a window proves nothing yet");
        p.completed(0, Nanos(RATE_WINDOW.as_nanos() as u64));
        assert!(!p.eager, "1 M completions in one window is a fast device");
    }

    #[test]
    fn sqpoll_and_iopoll_rings_never_submit_eagerly() {
        let mut p = SubmitPolicy::new(false, Nanos(0));
        assert!(!p.eager);
        window(&mut p, 1_000, 10, 0);
        assert!(!p.eager);
    }
}
