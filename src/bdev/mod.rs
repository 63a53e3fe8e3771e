//! The block-device layer: the [`Bdev`] trait, per-core channels, I/O requests and
//! their completion statuses, and the base backends (`malloc`, `null`, `uring`, `error`,
//! and [`nvme`], remote NVMe/TCP namespaces).
//!
//! A bdev is shared (`Arc<dyn Bdev>`, `Send + Sync`); I/O goes through a **channel**
//! that belongs to one core ([`Channel::get`] returns the current core's, creating it
//! on first use). Submission is callback-based, like SPDK's: a [`BdevIo`] carries its
//! buffers and a completion sink; the backend calls [`BdevIo::complete`] with an
//! [`IoStatus`] later — **never from inside `submit`**, so a caller's state is always
//! consistent when its completion runs. [`Channel::submit`] validates every request
//! (range, length, alignment, supported type) and answers a bad one with its status;
//! backends can trust what reaches them.
//!
//! Statuses are modelled on NVMe's generic and media status codes so that front ends
//! map them one to one ([`IoStatus::to_nvme`], [`IoStatus::from_nvme`]).
//!
//! **Flush semantics** (those of a volatile write cache): a completed flush makes durable
//! every write that completed — on any core, through any channel — before the flush was
//! submitted. Nothing else is promised. A bdev without a volatile cache
//! (`write_cache() == false`) makes each write durable when it completes.

pub mod buf;
mod drain;
pub mod error;
pub mod malloc;
pub mod null;
pub mod nvme;
pub mod qos;
pub mod registry;
pub mod stats;
pub mod uring;

pub use buf::IoBuf;
pub use drain::Drained;
pub(crate) use drain::{Epochs, PassClock, Tracker};
pub use registry::BdevRegistry;

use serde::Serialize;
use smallvec::SmallVec;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Poll, Waker};
use uuid::Uuid;

use crate::nvme::spec::Status as NvmeStatus;
use crate::reactor::{self, PollerHandle};

/// The kind of an I/O request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoKind {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
}

impl IoKind {
    /// True for read and write, which carry data buffers.
    pub fn has_data(self) -> bool {
        matches!(self, IoKind::Read | IoKind::Write)
    }

    /// True for the kinds that change the medium.
    pub fn modifies(self) -> bool {
        matches!(self, IoKind::Write | IoKind::Unmap | IoKind::WriteZeroes)
    }
}

/// Completion status of an I/O, modelled on NVMe status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoStatus {
    /// Completed successfully.
    Success,
    /// The bdev does not support this kind of I/O (NVMe: Invalid Command Opcode).
    InvalidOpcode,
    /// A field of the request is invalid: zero or inconsistent length, misaligned
    /// buffer (NVMe: Invalid Field in Command).
    InvalidField,
    /// The range does not lie within the device (NVMe: LBA Out of Range).
    LbaOutOfRange,
    /// No space left to complete a write (NVMe: Capacity Exceeded).
    CapacityExceeded,
    /// The medium failed the request (NVMe: Unrecovered Read Error / Write Fault).
    MediaError,
    /// The request was aborted (shutdown, device removed, cancelled).
    Aborted,
    /// The device is read-only (NVMe: Namespace Is Write Protected).
    WriteProtected,
    /// An internal failure of the engine (NVMe: Internal Error).
    InternalError,
}

impl IoStatus {
    /// True for `Success`.
    #[inline]
    pub fn is_success(self) -> bool {
        self == IoStatus::Success
    }

    /// The more severe of two statuses, for requests split into parts.
    pub fn worst(self, other: IoStatus) -> IoStatus {
        if self.is_success() { other } else { self }
    }

    /// A Linux errno for front ends that speak errno (NBD).
    pub fn errno(self) -> i32 {
        match self {
            IoStatus::Success => 0,
            IoStatus::InvalidOpcode => libc::ENOTSUP,
            IoStatus::InvalidField | IoStatus::LbaOutOfRange => libc::EINVAL,
            IoStatus::CapacityExceeded => libc::ENOSPC,
            IoStatus::MediaError | IoStatus::InternalError => libc::EIO,
            IoStatus::Aborted => libc::ESHUTDOWN,
            IoStatus::WriteProtected => libc::EPERM,
        }
    }

    /// The NVMe status of a completion, for the NVMe/TCP target; `read` picks the media
    /// error code.
    pub fn to_nvme(self, read: bool) -> NvmeStatus {
        match self {
            IoStatus::Success => NvmeStatus::SUCCESS,
            IoStatus::InvalidOpcode => NvmeStatus::INVALID_OPCODE,
            IoStatus::InvalidField => NvmeStatus::INVALID_FIELD,
            IoStatus::LbaOutOfRange => NvmeStatus::LBA_OUT_OF_RANGE,
            IoStatus::CapacityExceeded => NvmeStatus::CAPACITY_EXCEEDED,
            IoStatus::MediaError if read => NvmeStatus::UNRECOVERED_READ_ERROR,
            IoStatus::MediaError => NvmeStatus::WRITE_FAULT,
            IoStatus::Aborted => NvmeStatus::ABORTED_SQ_DELETION,
            IoStatus::WriteProtected => NvmeStatus::NS_WRITE_PROTECTED,
            IoStatus::InternalError => NvmeStatus::INTERNAL_ERROR,
        }
    }

    /// The status a host reports for an NVMe completion status (the NVMe/TCP
    /// initiator).
    pub fn from_nvme(st: NvmeStatus) -> IoStatus {
        match (st.sct, st.sc) {
            (0, 0x00) => IoStatus::Success,
            (0, 0x01) => IoStatus::InvalidOpcode,
            (0, 0x02) | (0, 0x0b) | (0, 0x0f) | (0, 0x11) | (0, 0x16) => IoStatus::InvalidField,
            (0, 0x80) => IoStatus::LbaOutOfRange,
            (0, 0x81) => IoStatus::CapacityExceeded,
            (0, 0x20) => IoStatus::WriteProtected,
            (0, 0x07) | (0, 0x08) => IoStatus::Aborted,
            (2, _) => IoStatus::MediaError,
            _ => IoStatus::InternalError,
        }
    }
}

/// Flags of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoFlags {
    /// Force unit access: the write is durable when it completes.
    pub fua: bool,
}

/// What [`BdevIo::redirect`] replaced: the request's own range and completion.
pub(crate) struct Origin {
    offset_blocks: u64,
    num_blocks: u64,
    home: u64,
    sink: Option<Rc<dyn IoSink>>,
    tag: u64,
    /// The request's statistics stamp: it counts when it completes to its submitter,
    /// not when the base completes it to the stacked bdev.
    stats: u32,
}

/// `BdevIo::home` when the request was not readdressed.
const NO_HOME: u64 = u64::MAX;

/// Receives completions. Implemented by whoever submits I/O (a benchmark worker, a
/// front-end connection, a stacked bdev); `tag` tells its requests apart.
pub trait IoSink {
    /// Called once per request, on the core that submitted it, with the request that
    /// was submitted (its buffers, iovecs, range and flags as they were given).
    fn io_done(&self, io: BdevIo, status: IoStatus);
}

/// One I/O request: what to do, where, with which memory, and whom to tell.
pub struct BdevIo {
    pub kind: IoKind,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    pub flags: IoFlags,
    /// A value the submitter chooses to recognise the request at completion.
    pub tag: u64,
    iovs: SmallVec<[libc::iovec; 1]>,
    bufs: SmallVec<[IoBuf; 1]>,
    sink: Option<Rc<dyn IoSink>>,
    /// The submitter's `offset_blocks` while a stacked bdev has readdressed the request
    /// to its base ([`BdevIo::readdress`]); [`NO_HOME`] otherwise. `complete` puts it back.
    home: u64,
    /// The request's statistics stamp: its slot in this core's table of counted
    /// requests in flight ([`stats::stamp`]), which holds the statistics of the channel
    /// it was first submitted to and when; [`stats::NO_SLOT`] when statistics are off
    /// or the request was not submitted through [`Channel::submit`]. A `u32` beside
    /// `kind` and `flags` fills their padding: the stamp costs `BdevIo` no bytes.
    stats: u32,
    /// The status a [`Deferred`] queue completes the request with: the queue holds
    /// requests alone, of 128 bytes, which move in registers, where a pair with its
    /// status (136 bytes) moved through `memcpy` (12 % of a core on the null floor).
    /// One byte of the same padding.
    deferred: IoStatus,
}

impl BdevIo {
    fn bare(kind: IoKind, offset_blocks: u64, num_blocks: u64) -> BdevIo {
        BdevIo {
            kind,
            offset_blocks,
            num_blocks,
            flags: IoFlags::default(),
            tag: 0,
            iovs: SmallVec::new(),
            bufs: SmallVec::new(),
            sink: None,
            home: NO_HOME,
            stats: stats::NO_SLOT,
            deferred: IoStatus::Success,
        }
    }

    fn with_bufs(
        kind: IoKind,
        offset_blocks: u64,
        num_blocks: u64,
        bufs: SmallVec<[IoBuf; 1]>,
    ) -> BdevIo {
        let mut io = BdevIo::bare(kind, offset_blocks, num_blocks);
        io.bufs = bufs;
        io.iovs = io
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        io
    }

    /// Read `num_blocks` at `offset_blocks` into `buf` (whose length must be
    /// `num_blocks × block size`).
    pub fn read(offset_blocks: u64, num_blocks: u64, buf: IoBuf) -> BdevIo {
        BdevIo::with_bufs(
            IoKind::Read,
            offset_blocks,
            num_blocks,
            smallvec::smallvec![buf],
        )
    }

    /// Write `buf` at `offset_blocks`.
    pub fn write(offset_blocks: u64, num_blocks: u64, buf: IoBuf) -> BdevIo {
        BdevIo::with_bufs(
            IoKind::Write,
            offset_blocks,
            num_blocks,
            smallvec::smallvec![buf],
        )
    }

    /// Vectored read into several buffers, in order.
    pub fn readv(offset_blocks: u64, num_blocks: u64, bufs: Vec<IoBuf>) -> BdevIo {
        BdevIo::with_bufs(IoKind::Read, offset_blocks, num_blocks, bufs.into())
    }

    /// Vectored write of several buffers, in order.
    pub fn writev(offset_blocks: u64, num_blocks: u64, bufs: Vec<IoBuf>) -> BdevIo {
        BdevIo::with_bufs(IoKind::Write, offset_blocks, num_blocks, bufs.into())
    }

    /// Make every write completed before this flush durable.
    pub fn flush() -> BdevIo {
        BdevIo::bare(IoKind::Flush, 0, 0)
    }

    /// Deallocate a range; it reads back as zeros on bdevs that say so.
    pub fn unmap(offset_blocks: u64, num_blocks: u64) -> BdevIo {
        BdevIo::bare(IoKind::Unmap, offset_blocks, num_blocks)
    }

    /// Make a range read back as zeros.
    pub fn write_zeroes(offset_blocks: u64, num_blocks: u64) -> BdevIo {
        BdevIo::bare(IoKind::WriteZeroes, offset_blocks, num_blocks)
    }

    /// A request over memory that the caller owns (a stacked bdev forwarding part of its
    /// own request).
    ///
    /// # Safety
    /// Every iovec must describe memory that stays valid, and is not accessed by anyone
    /// else, until this request completes.
    pub unsafe fn from_raw_iovs(
        kind: IoKind,
        offset_blocks: u64,
        num_blocks: u64,
        iovs: &[libc::iovec],
    ) -> BdevIo {
        let mut io = BdevIo::bare(kind, offset_blocks, num_blocks);
        io.iovs.extend_from_slice(iovs);
        io
    }

    /// Sets who is told of the completion, and the tag they will see.
    pub fn on_complete(mut self, sink: Rc<dyn IoSink>, tag: u64) -> BdevIo {
        self.sink = Some(sink);
        self.tag = tag;
        self
    }

    /// Readdresses this very request to a base bdev: its range becomes
    /// `offset_blocks`/`num_blocks` there and its completion goes to `sink` with `tag`.
    /// A stacked bdev whose request maps onto one base range forwards it this way instead
    /// of building a child request (no copy of the request, no second set of iovecs);
    /// [`BdevIo::restore`] with the returned [`Origin`] gives it back to its submitter.
    pub(crate) fn redirect(
        &mut self,
        offset_blocks: u64,
        num_blocks: u64,
        sink: Rc<dyn IoSink>,
        tag: u64,
    ) -> Origin {
        Origin {
            offset_blocks: std::mem::replace(&mut self.offset_blocks, offset_blocks),
            num_blocks: std::mem::replace(&mut self.num_blocks, num_blocks),
            home: std::mem::replace(&mut self.home, NO_HOME),
            sink: self.sink.replace(sink),
            tag: std::mem::replace(&mut self.tag, tag),
            stats: std::mem::replace(&mut self.stats, stats::NO_SLOT),
        }
    }

    /// Undoes [`BdevIo::redirect`] once the base bdev has completed the request.
    pub(crate) fn restore(&mut self, origin: Origin) {
        self.offset_blocks = origin.offset_blocks;
        self.num_blocks = origin.num_blocks;
        self.home = origin.home;
        self.sink = origin.sink;
        self.tag = origin.tag;
        self.stats = origin.stats;
    }

    /// Readdresses this very request to `offset_blocks` of a base bdev with the same
    /// block size, keeping its sink: the completion goes straight to the submitter and
    /// [`BdevIo::complete`] puts the submitter's offset back. For a stacked bdev that
    /// maps the request onto one base range and needs nothing back when it completes
    /// (it learns that its requests drained from the base channel instead,
    /// [`BdevChannel::drained`]). One level only: false, and nothing changed, if the
    /// request is readdressed already; the caller then uses [`BdevIo::redirect`].
    #[inline]
    pub(crate) fn readdress(&mut self, offset_blocks: u64) -> bool {
        if self.home != NO_HOME {
            return false;
        }
        self.home = std::mem::replace(&mut self.offset_blocks, offset_blocks);
        true
    }

    /// Sets the force-unit-access flag.
    pub fn with_fua(mut self, fua: bool) -> BdevIo {
        self.flags.fua = fua;
        self
    }

    /// The memory of the request, as iovecs.
    #[inline]
    pub fn iovs(&self) -> &[libc::iovec] {
        &self.iovs
    }

    /// Total length of the iovecs in bytes.
    pub fn iov_len(&self) -> usize {
        self.iovs.iter().map(|v| v.iov_len).sum()
    }

    /// The buffers the request owns (empty for raw-iovec requests).
    pub fn bufs(&self) -> &[IoBuf] {
        &self.bufs
    }

    /// Takes the owned buffers back (after completion).
    pub fn take_bufs(&mut self) -> SmallVec<[IoBuf; 1]> {
        self.iovs.clear();
        std::mem::take(&mut self.bufs)
    }

    /// Takes the single owned buffer back (after completion of `read`/`write`).
    pub fn take_buf(&mut self) -> Option<IoBuf> {
        let mut b = self.take_bufs();
        if b.len() == 1 { b.pop() } else { None }
    }

    /// Copies the request's memory, starting `skip` bytes in, into `out`.
    pub fn copy_out(&self, mut skip: usize, out: &mut [u8]) {
        let mut done = 0;
        for v in self.iovs.iter() {
            if done == out.len() {
                break;
            }
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - skip).min(out.len() - done);
            // SAFETY: the submitter guarantees each iovec is valid memory for the life of
            // the request (see `from_raw_iovs`; owned buffers trivially are).
            let src = unsafe { std::slice::from_raw_parts((v.iov_base as *const u8).add(skip), n) };
            out[done..done + n].copy_from_slice(src);
            done += n;
            skip = 0;
        }
    }

    /// Copies `data` into the request's memory, starting `skip` bytes in.
    pub fn copy_in(&mut self, mut skip: usize, data: &[u8]) {
        let mut done = 0;
        for v in self.iovs.iter() {
            if done == data.len() {
                break;
            }
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - skip).min(data.len() - done);
            // SAFETY: as in `copy_out`; the request gives us exclusive use of its memory
            // until it completes, and `&mut self` proves we hold it.
            let dst =
                unsafe { std::slice::from_raw_parts_mut((v.iov_base as *mut u8).add(skip), n) };
            dst.copy_from_slice(&data[done..done + n]);
            done += n;
            skip = 0;
        }
    }

    /// Fills `len` bytes of the request's memory, starting `skip` bytes in, with zeros.
    pub fn zero_fill(&mut self, mut skip: usize, len: usize) {
        let mut done = 0;
        for v in self.iovs.iter() {
            if done == len {
                break;
            }
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - skip).min(len - done);
            // SAFETY: as in `copy_in`.
            unsafe { std::ptr::write_bytes((v.iov_base as *mut u8).add(skip), 0, n) };
            done += n;
            skip = 0;
        }
    }

    /// The iovecs covering bytes `[skip, skip + len)` of this request — for splitting it
    /// into parts that forward to other bdevs.
    pub fn sub_iovs(&self, mut skip: usize, len: usize) -> SmallVec<[libc::iovec; 2]> {
        let mut out = SmallVec::new();
        let mut left = len;
        for v in self.iovs.iter() {
            if left == 0 {
                break;
            }
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - skip).min(left);
            out.push(libc::iovec {
                // SAFETY: `skip < iov_len`, so the offset stays inside the iovec.
                iov_base: unsafe { (v.iov_base as *mut u8).add(skip) }.cast(),
                iov_len: n,
            });
            left -= n;
            skip = 0;
        }
        out
    }

    /// Tells the sink that the request finished with `status`. The request keeps its
    /// sink and tag, so the sink may resubmit it as it is.
    #[inline]
    pub fn complete(mut self, status: IoStatus) {
        if self.stats != stats::NO_SLOT {
            let slot = std::mem::replace(&mut self.stats, stats::NO_SLOT);
            stats::finish(slot, self.kind, self.num_blocks, status);
        }
        if self.home != NO_HOME {
            self.offset_blocks = std::mem::replace(&mut self.home, NO_HOME);
        }
        if let Some(sink) = self.sink.clone() {
            sink.io_done(self, status);
        }
    }
}

/// A request dropped without completing (a channel torn down with it queued) gives its
/// statistics slot back uncounted.
impl Drop for BdevIo {
    #[inline]
    fn drop(&mut self) {
        if self.stats != stats::NO_SLOT {
            stats::release(self.stats);
        }
    }
}

impl std::fmt::Debug for BdevIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BdevIo")
            .field("kind", &self.kind)
            .field("offset_blocks", &self.offset_blocks)
            .field("num_blocks", &self.num_blocks)
            .field("fua", &self.flags.fua)
            .field("bytes", &self.iov_len())
            .field("tag", &self.tag)
            .finish()
    }
}

/// Errors of the bdev layer (creation, lookup, opening channels).
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    #[error("bdev `{0}` does not exist")]
    NotFound(String),
    #[error("bdev `{0}` already exists")]
    Exists(String),
    #[error("bdev `{name}`: {field}: {reason}")]
    InvalidParam {
        name: String,
        field: &'static str,
        reason: String,
    },
    #[error("bdev `{name}`: {path}: {cause}")]
    Io {
        name: String,
        path: String,
        cause: std::io::Error,
    },
    #[error("bdev `{name}` is in use by {by}")]
    Claimed { name: String, by: String },
    #[error("bdev `{name}`: cannot open a channel: {reason}")]
    Channel { name: String, reason: String },
    #[error(
        "bdev `{name}` is ambiguous: it may be {}; give one of these (or the UUID)",
        candidates.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
    )]
    Ambiguous {
        name: String,
        candidates: Vec<String>,
    },
}

static NEXT_BDEV_ID: AtomicU64 = AtomicU64::new(1);

/// The properties every bdev has.
#[derive(Debug)]
pub struct BdevProps {
    name: String,
    uuid: Uuid,
    block_size: u32,
    num_blocks: AtomicU64,
    write_cache: bool,
    product_name: &'static str,
    read_only: AtomicBool,
    id: u64,
    /// Buffers must start at a multiple of this many bytes.
    buf_align: usize,
    /// Rate limits (`bdev_set_qos_limit`) and their budget, shared by the cores.
    pub(crate) qos: Arc<qos::BdevQos>,
}

impl BdevProps {
    /// Properties for a new bdev; validates the geometry.
    pub fn new(
        name: &str,
        uuid: Option<Uuid>,
        block_size: u32,
        num_blocks: u64,
        product_name: &'static str,
    ) -> Result<BdevProps, BdevError> {
        let invalid = |field, reason: String| BdevError::InvalidParam {
            name: name.to_string(),
            field,
            reason,
        };
        if name.is_empty() || name.len() > 255 || name.contains(['/', '\0']) {
            return Err(invalid(
                "name",
                "must be 1-255 characters without `/` or NUL".into(),
            ));
        }
        if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(invalid(
                "block_size",
                format!("{block_size} is not a power of two between 512 and 65536"),
            ));
        }
        if num_blocks == 0 {
            return Err(invalid("num_blocks", "must be at least 1".into()));
        }
        Ok(BdevProps {
            name: name.to_string(),
            uuid: uuid.unwrap_or_else(Uuid::new_v4),
            block_size,
            num_blocks: AtomicU64::new(num_blocks),
            write_cache: false,
            product_name,
            read_only: AtomicBool::new(false),
            id: NEXT_BDEV_ID.fetch_add(1, Ordering::Relaxed),
            buf_align: 1,
            qos: Arc::new(qos::BdevQos::new(block_size)),
        })
    }

    /// Declares a volatile write cache (flush needed for durability).
    pub fn with_write_cache(mut self, on: bool) -> Self {
        self.write_cache = on;
        self
    }

    /// Requires buffers aligned to `align` bytes.
    pub fn with_buf_align(mut self, align: usize) -> Self {
        self.buf_align = align.max(1);
        self
    }

    /// Marks the bdev read-only from the start.
    pub fn with_read_only(self, ro: bool) -> Self {
        self.read_only.store(ro, Ordering::Relaxed);
        self
    }

    /// Changes the size (for bdevs that can grow or shrink).
    pub fn set_num_blocks(&self, n: u64) {
        self.num_blocks.store(n, Ordering::Release);
    }

    /// Changes the read-only flag.
    pub fn set_read_only(&self, ro: bool) {
        self.read_only.store(ro, Ordering::Release);
    }
}

/// A block device. Shared across cores; I/O goes through per-core [`Channel`]s.
pub trait Bdev: Send + Sync + 'static {
    /// The common properties.
    fn props(&self) -> &BdevProps;

    /// Creates this bdev's channel for the current core. Called at most once per core
    /// while a channel is alive ([`Channel::get`] caches it).
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError>;

    /// Whether an I/O kind is supported.
    fn supports(&self, kind: IoKind) -> bool {
        let _ = kind;
        true
    }

    /// True if unmapped blocks read back as zeros.
    fn unmap_reads_zeroes(&self) -> bool {
        false
    }

    /// Backend-specific description for `bdev_get_bdevs`.
    fn driver_specific(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Called when the bdev is removed from the registry; release resources.
    fn on_remove(&self) {}

    /// The bdev as its concrete type, for a layer above that knows it (the target
    /// finds a virtual disk's pool from the disk, without asking every pool's
    /// controller); `None` for bdevs nothing above needs to tell apart.
    fn into_any(self: Arc<Self>) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        None
    }

    /// The size in bytes of what backs the bdev, read now, for bdevs whose backing can
    /// change size underneath them (a file or a device: `bdev_uring_rescan`); `None`
    /// for the others.
    fn backing_bytes(&self) -> Option<Result<u64, BdevError>> {
        None
    }

    /// Bdevs of one family (the same `Some`) can tell which blocks differ between them
    /// ([`BdevChannel::changed_since`]): the virtual disks of one pool.
    fn change_family(&self) -> Option<u64> {
        None
    }

    /// Other names the bdev answers to (SPDK's aliases: `lvs_name/lvol_name` for a
    /// virtual disk, whose name is its UUID). They may change (a rename).
    fn aliases(&self) -> Vec<String> {
        Vec::new()
    }

    /// The short names an operator may use where they are unambiguous (a virtual
    /// disk's name within its pool).
    fn short_names(&self) -> Vec<String> {
        Vec::new()
    }
}

impl dyn Bdev {
    /// Unique name.
    pub fn name(&self) -> &str {
        &self.props().name
    }
    /// The name to show an operator: the first alias (`pool/disk`), else the name.
    pub fn display_name(&self) -> String {
        self.aliases()
            .into_iter()
            .next()
            .unwrap_or_else(|| self.name().to_string())
    }
    /// UUID.
    pub fn uuid(&self) -> Uuid {
        self.props().uuid
    }
    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.props().block_size
    }
    /// Size in blocks.
    pub fn num_blocks(&self) -> u64 {
        self.props().num_blocks.load(Ordering::Acquire)
    }
    /// True if the bdev has a volatile write cache.
    pub fn write_cache(&self) -> bool {
        self.props().write_cache
    }
    /// Product name, as SPDK reports it ("Malloc disk", "Null disk", …).
    pub fn product_name(&self) -> &'static str {
        self.props().product_name
    }
    /// True if writes are refused.
    pub fn read_only(&self) -> bool {
        self.props().read_only.load(Ordering::Acquire)
    }
    /// Required buffer alignment in bytes.
    pub fn buf_align(&self) -> usize {
        self.props().buf_align
    }
    /// Process-unique id.
    pub fn id(&self) -> u64 {
        self.props().id
    }
    /// The rate limits in force (`bdev_set_qos_limit`; all 0: none).
    pub fn qos_limits(&self) -> qos::QosLimits {
        self.props().qos.limits()
    }
}

/// The allocation state of a run of blocks (NBD `base:allocation`, `nbdinfo --map`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BlockRun {
    pub num_blocks: u64,
    /// False for a hole: no storage is allocated to these blocks.
    pub allocated: bool,
    /// True when the blocks are known to read as zeros.
    pub zero: bool,
}

/// A bdev's per-core submission interface.
pub trait BdevChannel {
    /// Starts a validated request. Must not complete it before returning.
    fn submit(&self, io: BdevIo);

    /// The allocation state of `[offset_blocks, offset_blocks + num_blocks)` (already
    /// validated), as consecutive runs covering at least the first block. The default
    /// says "allocated data" for the whole range.
    fn block_status(&self, offset_blocks: u64, num_blocks: u64) -> Vec<BlockRun> {
        let _ = offset_blocks;
        vec![BlockRun {
            num_blocks,
            allocated: true,
            zero: false,
        }]
    }

    /// Which blocks of `[offset_blocks, offset_blocks + num_blocks)` (already validated)
    /// differ from what `base`'s channel on this core shows: consecutive runs
    /// `(num_blocks, change)` covering at least the first block; `None` when this
    /// channel cannot tell at all (callers then count every block as changed), and
    /// [`Change::Unknown`] where it cannot tell from its metadata ([`Channel`] then
    /// compares the contents). Bdevs whose [`Bdev::change_family`] is the same can
    /// answer for each other.
    fn changed_since(
        &self,
        base: &dyn BdevChannel,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> Option<Vec<(u64, Change)>> {
        let _ = (base, offset_blocks, num_blocks);
        None
    }

    /// How deep in the bdev's layers each block of `[offset_blocks, offset_blocks +
    /// num_blocks)` (already validated) is found: consecutive runs `(num_blocks, depth)`
    /// covering at least the first block; depth 0 where no layer holds data, 1 in the
    /// bdev's own top layer, 2 and more in the layers it shares (qemu's
    /// `allocation-depth`). `None`: every block is the bdev's own (depth 1).
    fn allocation_depth(&self, offset_blocks: u64, num_blocks: u64) -> Option<Vec<(u64, u32)>> {
        let _ = (offset_blocks, num_blocks);
        None
    }

    /// The channel as `Any`, for bdevs that answer [`BdevChannel::changed_since`] for
    /// their own kind.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// A buffer especially suited to this channel (e.g. registered with the kernel), if
    /// it has such buffers to hand out.
    fn alloc_buf(&self, len: usize) -> Option<IoBuf> {
        let _ = len;
        None
    }

    /// Whether [`BdevChannel::drained`] answers. A stacked bdev readdresses requests
    /// without watching their completions ([`BdevIo::readdress`]) only to channels that
    /// do.
    fn tracks_drain(&self) -> bool {
        false
    }

    /// A future that resolves once every request submitted to this channel before the
    /// call has completed (its sink was called); `None` if the channel cannot tell.
    fn drained(&self) -> Option<Drained> {
        None
    }

    /// A future that resolves once the channel answers status queries (block status,
    /// changed blocks, allocation depth) from what the bdev holds instead of "unknown"
    /// (a virtual disk's channel before the first view of its table arrives); `None`
    /// if it always does.
    fn status_ready(&self) -> Option<Drained> {
        None
    }
}

/// Completions deferred to the next loop iteration of the current reactor.
pub struct Deferred {
    /// Each request with its status in [`BdevIo::deferred`].
    items: Rc<RefCell<VecDeque<BdevIo>>>,
    clock: Rc<PassClock>,
    _poller: PollerHandle,
}

impl Deferred {
    /// This reactor's queue.
    pub fn current() -> Rc<Deferred> {
        reactor::local(|| {
            let items: Rc<RefCell<VecDeque<BdevIo>>> =
                Rc::new(RefCell::new(VecDeque::with_capacity(1024)));
            let q = items.clone();
            let clock = Rc::new(PassClock::default());
            let c = clock.clone();
            let mut batch = VecDeque::with_capacity(1024);
            let poller = reactor::register_poller(move || {
                if q.borrow().is_empty() {
                    return 0;
                }
                c.begin();
                // Only what is queued now: completions may queue more, for the next pass
                // (into the queue, which is the other buffer of the pair by then).
                std::mem::swap(&mut *q.borrow_mut(), &mut batch);
                let n = batch.len();
                stats::finish_queued(&mut batch);
                for io in batch.drain(..) {
                    let status = io.deferred;
                    io.complete(status);
                }
                c.end();
                n
            });
            Deferred {
                items,
                clock,
                _poller: poller,
            }
        })
    }

    /// Completes `io` with `status` at the next loop iteration.
    #[inline]
    pub fn complete(&self, mut io: BdevIo, status: IoStatus) {
        io.deferred = status;
        self.items.borrow_mut().push_back(io);
    }

    /// Resolves once every completion queued before the call has been delivered.
    pub(crate) fn drained(&self) -> Drained {
        let idle = self.items.borrow().is_empty();
        self.clock.drained(idle)
    }
}

/// Whether a run of blocks differs between two bdevs of one change family
/// ([`BdevChannel::changed_since`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Same,
    Changed,
    /// The metadata cannot tell: compare the contents.
    Unknown,
}

/// The most [`Channel::changed_since`] reads of each side to compare contents in one
/// call.
pub const MAX_COMPARE_BYTES: u64 = 16 << 20;

/// The size of the reads that compare contents.
const COMPARE_CHUNK_BYTES: u64 = 256 << 10;

/// Chunks compared at once ([`Channel::differs_from`]).
const COMPARE_WINDOW: usize = 8;

/// Appends `n` blocks of `flag` to runs, merging with the last run of the same flag.
fn push_run(out: &mut Vec<(u64, bool)>, n: u64, flag: bool) {
    match out.last_mut() {
        Some((m, f)) if *f == flag => *m += n,
        _ if n > 0 => out.push((n, flag)),
        _ => {}
    }
}

#[derive(Default)]
struct ChannelCache {
    channels: RefCell<HashMap<u64, Weak<dyn BdevChannel>>>,
}

/// A bdev's channel on the current core, with request validation in front.
#[derive(Clone)]
pub struct Channel {
    inner: Rc<dyn BdevChannel>,
    bdev: Arc<dyn Bdev>,
    deferred: Rc<Deferred>,
    /// This core's statistics of the bdev; `None` when statistics are off.
    stats: Option<Rc<stats::ChannelStats>>,
    /// This core's side of the bdev's rate limits.
    qos: Rc<qos::CoreQos>,
    /// The kinds of request the bdev supports, a bit each (`1 << kind`): a bdev's
    /// answers do not change, and asking costs a call through its vtable per request.
    supported: u8,
}

impl Channel {
    /// The current core's channel to `bdev` (shared by everyone on this core).
    pub fn get(bdev: &Arc<dyn Bdev>) -> Result<Channel, BdevError> {
        let cache = reactor::local(ChannelCache::default);
        let id = bdev.id();
        let existing = cache.channels.borrow().get(&id).and_then(Weak::upgrade);
        let inner = match existing {
            Some(c) => c,
            None => {
                let c = bdev.clone().create_channel()?;
                cache.channels.borrow_mut().insert(id, Rc::downgrade(&c));
                c
            }
        };
        Ok(Channel {
            inner,
            bdev: bdev.clone(),
            deferred: Deferred::current(),
            stats: stats::channel_stats(&**bdev),
            qos: qos::core_state(&**bdev),
            supported: (stats::KINDS.into_iter())
                .filter(|&k| bdev.supports(k))
                .fold(0, |m, k| m | 1 << k as u8),
        })
    }

    /// The bdev behind the channel.
    pub fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.bdev
    }

    /// Checks a request against the bdev's geometry; `Success` when it may proceed.
    #[inline]
    pub fn check(&self, io: &BdevIo) -> IoStatus {
        if self.supported & (1 << io.kind as u8) == 0 {
            return IoStatus::InvalidOpcode;
        }
        check_geometry(self.bdev.props(), io)
    }

    /// Validates and submits `io`. A bad request completes (later) with its status. A
    /// valid one is stamped for the statistics of this channel's bdev unless it carries
    /// a stamp already (a request forwarded whole keeps counting where it was first
    /// submitted).
    #[inline]
    pub fn submit(&self, mut io: BdevIo) {
        let status = self.check(&io);
        if status.is_success() {
            // Before the stamp: the straight path below stays the code it was without
            // rate limits (with the test after the stamp, the request was copied with
            // 16-byte loads over the stamp's 4-byte store, a store-forwarding stall:
            // 7 % on the null floor).
            if self.qos.engaged() {
                self.submit_limited(io);
                return;
            }
            if let Some(s) = &self.stats
                && io.stats == stats::NO_SLOT
            {
                io.stats = stats::stamp(s);
            }
            self.inner.submit(io);
        } else {
            tracing::trace!(bdev = self.bdev.name(), ?io, ?status, "request refused");
            self.deferred.complete(io, status);
        }
    }

    /// [`Channel::submit`] of a valid request while the bdev's rate limits are engaged.
    #[cold]
    #[inline(never)]
    fn submit_limited(&self, mut io: BdevIo) {
        if let Some(s) = &self.stats
            && io.stats == stats::NO_SLOT
        {
            io.stats = stats::stamp(s);
        }
        self.qos.submit(&self.inner, io);
    }

    /// The allocation state of a range, as runs that cover at least its first block.
    pub fn block_status(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> Result<Vec<BlockRun>, IoStatus> {
        self.check_status_range(offset_blocks, num_blocks)?;
        Ok(self.inner.block_status(offset_blocks, num_blocks))
    }

    /// A status query's range: at least one block, inside the bdev.
    fn check_status_range(&self, offset_blocks: u64, num_blocks: u64) -> Result<(), IoStatus> {
        if num_blocks == 0 {
            return Err(IoStatus::InvalidField);
        }
        match offset_blocks.checked_add(num_blocks) {
            Some(end) if end <= self.bdev.num_blocks() => Ok(()),
            _ => Err(IoStatus::LbaOutOfRange),
        }
    }

    /// How deep in the bdev's layers the blocks of a range are found
    /// ([`BdevChannel::allocation_depth`]): runs `(num_blocks, depth)` that cover at least
    /// its first block.
    pub fn allocation_depth(
        &self,
        offset_blocks: u64,
        num_blocks: u64,
    ) -> Result<Vec<(u64, u32)>, IoStatus> {
        self.check_status_range(offset_blocks, num_blocks)?;
        Ok(self
            .inner
            .allocation_depth(offset_blocks, num_blocks)
            .unwrap_or_else(|| vec![(num_blocks, 1)]))
    }

    /// Which blocks of a range differ from what `base` (a bdev of the same
    /// [`Bdev::change_family`]) shows: runs `(num_blocks, changed)` that cover at least
    /// its first block. A channel that cannot tell says "changed"; where its metadata
    /// cannot tell ([`Change::Unknown`]) the contents are compared, at most
    /// [`MAX_COMPARE_BYTES`] of them per call and no further than `max_runs` runs
    /// reach (the runs then end early: an answer has no room for more).
    pub async fn changed_since(
        &self,
        base: &Channel,
        offset_blocks: u64,
        num_blocks: u64,
        max_runs: usize,
    ) -> Result<Vec<(u64, bool)>, IoStatus> {
        self.check_status_range(offset_blocks, num_blocks)?;
        let Some(runs) = self
            .inner
            .changed_since(&*base.inner, offset_blocks, num_blocks)
        else {
            return Ok(vec![(num_blocks, true)]);
        };
        let max_runs = max_runs.max(1);
        let budget = (MAX_COMPARE_BYTES / self.bdev.block_size() as u64).max(1);
        let (mut out, mut at, mut compared) = (Vec::new(), offset_blocks, 0u64);
        for (n, change) in runs {
            if out.len() > max_runs {
                break;
            }
            match change {
                Change::Same => push_run(&mut out, n, false),
                Change::Changed => push_run(&mut out, n, true),
                Change::Unknown => {
                    let take = n.min(budget - compared);
                    let room = max_runs + 1 - out.len().min(max_runs);
                    let found = self.differs_from(base, at, take, room).await;
                    let covered: u64 = found.iter().map(|r| r.0).sum();
                    for (k, differs) in found {
                        push_run(&mut out, k, differs);
                    }
                    compared += covered;
                    if covered < n {
                        break;
                    }
                }
            }
            at += n;
            if compared >= budget {
                break;
            }
        }
        Ok(out)
    }

    /// Which blocks of `[offset_blocks, offset_blocks + num_blocks)` read differently
    /// here and on `other` (a bdev of the same size): runs `(num_blocks, differs)` from
    /// the first block on, covering the range or stopping once they are more than
    /// `max_runs`. The reads go [`COMPARE_WINDOW`] chunks at a time. A block either side
    /// fails to read counts as different: a reader of the changes then meets the error
    /// itself.
    pub async fn differs_from(
        &self,
        other: &Channel,
        offset_blocks: u64,
        num_blocks: u64,
        max_runs: usize,
    ) -> Vec<(u64, bool)> {
        let bs = self.bdev.block_size() as usize;
        let step = (COMPARE_CHUNK_BYTES / bs as u64).max(1);
        let end = offset_blocks + num_blocks;
        let mut out = Vec::new();
        let mut next = offset_blocks;
        let mut window = std::collections::VecDeque::new();
        loop {
            while window.len() < COMPARE_WINDOW && next < end {
                let k = step.min(end - next);
                let (a, b) = (self.clone(), other.clone());
                let at = next;
                window.push_back(reactor::spawn_local(async move {
                    match (a.read(at, k).await, b.read(at, k).await) {
                        (Ok(x), Ok(y)) if b.bdev.block_size() as usize == bs => x
                            .chunks(bs)
                            .zip(y.chunks(bs))
                            .map(|(p, q)| p != q)
                            .collect(),
                        (x, y) => {
                            tracing::debug!(
                                bdev = %a.bdev.name(),
                                offset_blocks = at,
                                num_blocks = k,
                                mine = ?x.err(),
                                other = ?y.err(),
                                "compare: a read failed; the blocks count as changed"
                            );
                            vec![true; k as usize]
                        }
                    }
                }));
                next += k;
            }
            let Some(chunk) = window.pop_front() else {
                break;
            };
            for differs in chunk.await {
                push_run(&mut out, 1, differs);
            }
            if out.len() > max_runs {
                // Dropping the tasks left cancels their reads' wait, not the reads.
                break;
            }
        }
        out
    }

    /// Submits `io` without validating it, for stacked bdevs that computed the request
    /// from their own, already validated one (a virtual disk's agent addressing its
    /// containers). A request out of the bdev's range must never come this way.
    #[inline]
    pub(crate) fn submit_unchecked(&self, io: BdevIo) {
        debug_assert!(
            self.check(&io).is_success(),
            "unchecked request {io:?} is invalid"
        );
        if self.qos.engaged() {
            self.qos.submit(&self.inner, io);
        } else {
            self.inner.submit(io);
        }
    }

    /// Whether [`Channel::drained`] answers for this bdev.
    pub(crate) fn tracks_drain(&self) -> bool {
        self.inner.tracks_drain()
    }

    /// Resolves once every request submitted to this channel before the call has
    /// completed, requests refused by validation and requests waiting for the rate
    /// limits included; `None` if the bdev cannot tell ([`BdevChannel::drained`]).
    pub(crate) fn drained(&self) -> Option<Drained> {
        let inner = self.inner.drained()?;
        let refused = self.deferred.drained();
        let Some(waiting) = self.qos.drained() else {
            return Some(Box::pin(async move {
                inner.await;
                refused.await;
            }));
        };
        // What waits reaches the channel later: its drain is asked for after that.
        drop(inner);
        let ch = self.inner.clone();
        Some(Box::pin(async move {
            waiting.await;
            if let Some(d) = ch.drained() {
                d.await;
            }
            refused.await;
        }))
    }

    /// Resolves once the channel's status queries answer from what the bdev holds
    /// ([`BdevChannel::status_ready`]); at once for bdevs that always do.
    pub async fn status_ready(&self) {
        if let Some(ready) = self.inner.status_ready() {
            ready.await;
        }
    }

    /// A buffer suited to this channel, or a pool buffer.
    pub fn alloc_buf(&self, len: usize) -> IoBuf {
        self.inner.alloc_buf(len).unwrap_or_else(|| IoBuf::new(len))
    }

    /// Submits `io` and waits for it; returns the request (with its buffers) and status.
    pub async fn io(&self, io: BdevIo) -> (BdevIo, IoStatus) {
        let slot = Rc::new(OneShot::default());
        self.submit(io.on_complete(slot.clone(), 0));
        std::future::poll_fn(|cx| {
            let mut s = slot.state.borrow_mut();
            match s.0.take() {
                Some(done) => Poll::Ready(done),
                None => {
                    s.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Reads `num_blocks` at `offset_blocks` into a new buffer.
    pub async fn read(&self, offset_blocks: u64, num_blocks: u64) -> Result<IoBuf, IoStatus> {
        let len = (num_blocks * self.bdev.block_size() as u64) as usize;
        let buf = self.alloc_buf(len);
        let (mut io, st) = self.io(BdevIo::read(offset_blocks, num_blocks, buf)).await;
        if st.is_success() {
            Ok(io.take_buf().expect("one buffer"))
        } else {
            Err(st)
        }
    }

    /// Writes `data` (a whole number of blocks) at `offset_blocks`.
    pub async fn write(&self, offset_blocks: u64, data: IoBuf) -> Result<(), IoStatus> {
        let n = data.len() as u64 / self.bdev.block_size() as u64;
        status_result(self.io(BdevIo::write(offset_blocks, n, data)).await.1)
    }

    /// Flushes the volatile cache.
    pub async fn flush(&self) -> Result<(), IoStatus> {
        status_result(self.io(BdevIo::flush()).await.1)
    }

    /// Unmaps a range.
    pub async fn unmap(&self, offset_blocks: u64, num_blocks: u64) -> Result<(), IoStatus> {
        status_result(self.io(BdevIo::unmap(offset_blocks, num_blocks)).await.1)
    }

    /// Zeroes a range.
    pub async fn write_zeroes(&self, offset_blocks: u64, num_blocks: u64) -> Result<(), IoStatus> {
        status_result(
            self.io(BdevIo::write_zeroes(offset_blocks, num_blocks))
                .await
                .1,
        )
    }
}

/// A completion status as a result: `Ok` on success, else the status.
pub(crate) fn status_result(st: IoStatus) -> Result<(), IoStatus> {
    if st.is_success() { Ok(()) } else { Err(st) }
}

/// Validates `io` against `bdev`: supported kind, range, lengths, buffer alignment.
pub fn check_io(bdev: &dyn Bdev, io: &BdevIo) -> IoStatus {
    if !bdev.supports(io.kind) {
        return IoStatus::InvalidOpcode;
    }
    check_geometry(bdev.props(), io)
}

/// Validates `io`, of a kind its bdev supports, against the bdev's properties `p`:
/// read-only, range, lengths, buffer alignment. (One look at the properties: each of
/// `dyn Bdev`'s accessors is a call through the vtable to `props`.)
#[inline]
fn check_geometry(p: &BdevProps, io: &BdevIo) -> IoStatus {
    if io.kind.modifies() && p.read_only.load(Ordering::Acquire) {
        return IoStatus::WriteProtected;
    }
    if io.kind == IoKind::Flush {
        return IoStatus::Success;
    }
    if io.num_blocks == 0 {
        return IoStatus::InvalidField;
    }
    match io.offset_blocks.checked_add(io.num_blocks) {
        Some(end) if end <= p.num_blocks.load(Ordering::Acquire) => {}
        _ => return IoStatus::LbaOutOfRange,
    }
    if io.kind.has_data() {
        let want = io.num_blocks.checked_mul(p.block_size as u64);
        if want != Some(io.iov_len() as u64) {
            return IoStatus::InvalidField;
        }
        let align = p.buf_align;
        if align > 1
            && io
                .iovs
                .iter()
                .any(|v| !(v.iov_base as usize).is_multiple_of(align) || v.iov_len % align != 0)
        {
            return IoStatus::InvalidField;
        }
    }
    IoStatus::Success
}

/// A completed request, or the task waiting for it.
type OneShotState = (Option<(BdevIo, IoStatus)>, Option<Waker>);

#[derive(Default)]
struct OneShot {
    state: RefCell<OneShotState>,
}

impl IoSink for OneShot {
    fn io_done(&self, io: BdevIo, status: IoStatus) {
        let waker = {
            let mut s = self.state.borrow_mut();
            s.0 = Some((io, status));
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod conformance;

#[cfg(test)]
mod nvme_status {
    use super::{IoStatus, NvmeStatus};

    #[test]
    fn io_statuses_map_to_nvme_and_back() {
        assert_eq!(
            IoStatus::WriteProtected.to_nvme(false),
            NvmeStatus::NS_WRITE_PROTECTED
        );
        assert_eq!(
            IoStatus::from_nvme(NvmeStatus::NS_WRITE_PROTECTED),
            IoStatus::WriteProtected
        );
    }
}

#[cfg(test)]
mod size {
    /// A request is moved by value at each hand-off (channel, queue, completion). Up to
    /// 128 bytes those moves compile to a few vector registers; past it, each one is a
    /// call to memcpy — measured at several per cent of a core on the vdisk fast path.
    #[test]
    fn a_request_moves_in_registers() {
        let size = std::mem::size_of::<super::BdevIo>();
        assert!(size <= 128, "BdevIo grew to {size} bytes");
    }
}

#[cfg(test)]
mod readdress {
    use super::*;
    use std::cell::Cell;

    /// The submitter: records the range its request came back with.
    struct Upper(Cell<Option<(u64, u64)>>);

    impl IoSink for Upper {
        fn io_done(&self, io: BdevIo, _status: IoStatus) {
            self.0.set(Some((io.offset_blocks, io.num_blocks)));
        }
    }

    /// A lower stacked bdev that redirected the request: records the range its base
    /// completed, restores the request and completes it upwards.
    struct Lower {
        origin: RefCell<Option<Origin>>,
        seen: Cell<Option<(u64, u64)>>,
    }

    impl IoSink for Lower {
        fn io_done(&self, mut io: BdevIo, status: IoStatus) {
            self.seen.set(Some((io.offset_blocks, io.num_blocks)));
            io.restore(self.origin.borrow_mut().take().unwrap());
            assert_eq!((io.offset_blocks, io.num_blocks, io.tag), (100, 2, 1));
            io.complete(status);
        }
    }

    /// A readdressed request completes to its submitter with the submitter's range, also
    /// when a lower stacked bdev redirected it further; readdressing twice is refused.
    #[test]
    fn completion_restores_the_submitters_range_through_both_kinds_of_forwarding() {
        let upper = Rc::new(Upper(Cell::new(None)));
        let lower = Rc::new(Lower {
            origin: RefCell::new(None),
            seen: Cell::new(None),
        });
        let mut io = BdevIo::read(5, 2, IoBuf::new(8192)).on_complete(upper.clone(), 1);
        assert!(io.readdress(100));
        assert!(!io.readdress(7), "one level of readdressing only");
        assert_eq!(io.offset_blocks, 100);
        let origin = io.redirect(1000, 16, lower.clone(), 9);
        *lower.origin.borrow_mut() = Some(origin);
        // The base completes it.
        io.complete(IoStatus::Success);
        assert_eq!(
            lower.seen.get(),
            Some((1000, 16)),
            "the lower layer sees its range"
        );
        assert_eq!(
            upper.0.get(),
            Some((5, 2)),
            "the submitter sees its own range"
        );
    }
}
