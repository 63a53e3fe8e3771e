//! The `malloc` bdev: a RAM disk. Data lives in one anonymous mapping shared by all
//! cores; each I/O is a memory copy. Submission only queues the request; the channel's
//! poller does the copies on the next loop iteration — a read prefetching the start of
//! the next read's range while it copies, so that their cache misses overlap; a write
//! with streaming stores, which do not read the destination into the cache first.
//!
//! # Safety
//! The mapping is device memory shared by every core, and requests from two cores may
//! cover the same blocks at once. Plain copies racing over the same bytes would be a
//! data race — undefined behaviour, whatever a device promises about overlapping
//! requests — and could leave a block holding half of each write. So every request
//! holds the **stripe locks** of the bytes it touches while it copies ([`Stripes`]):
//! the mapping is cut into `STRIPE_BYTES` stripes, stripe `i` is guarded by lock
//! `i % STRIPES`, and a request takes its locks in ascending order (no deadlock), spins
//! for them (each is held only for one request's copy, never across an await), copies,
//! fences its streaming stores and releases them. Accesses to the same bytes from two
//! cores are thus ordered by the locks' release and acquire — no data race — and each
//! block of a request holds the whole of one write: overlapping requests are applied one
//! after the other, in an unspecified order, as on a device with atomic block writes.
//! Every access is bounds checked by [`Channel`](super::Channel) validation before it
//! reaches this module.

use super::{
    Bdev, BdevChannel, BdevError, BdevIo, BdevProps, Deferred, Drained, IoKind, IoStatus, PassClock,
};
use crate::reactor::{self, PollerHandle};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

/// A RAM-backed bdev.
pub struct MallocBdev {
    props: BdevProps,
    base: NonNull<u8>,
    len: usize,
    /// Guards the mapping against overlapping copies from two cores.
    stripes: Stripes,
}

// SAFETY: the mapping is owned by the bdev for its whole life (unmapped when the last
// Arc, channels' included, goes) and holds plain bytes; moving the owner to another
// thread moves nothing else.
unsafe impl Send for MallocBdev {}
// SAFETY: from several cores at once, the mapping is only touched by `execute` and
// `zero` under the stripe locks of the bytes they touch (see the module's Safety
// section): two cores never access the same bytes without a lock ordering them, so
// there is no data race; the rest of the bdev is immutable or atomic.
unsafe impl Sync for MallocBdev {}

/// Number of stripe locks; a request's stripes fit a `u64` mask.
const STRIPES: usize = 64;
/// Bytes of the mapping one stripe covers.
const STRIPE_BYTES: usize = 64 << 10;

/// The stripe locks of a mapping (see the module's Safety section).
struct Stripes {
    locks: [Stripe; STRIPES],
}

/// One spin lock, alone in its cache line.
#[repr(align(64))]
#[derive(Default)]
struct Stripe(AtomicBool);

impl Stripes {
    fn new() -> Stripes {
        Stripes {
            locks: std::array::from_fn(|_| Stripe::default()),
        }
    }

    /// The locks guarding bytes `[offset, offset + len)`, as a mask.
    fn mask(offset: usize, len: usize) -> u64 {
        let first = offset / STRIPE_BYTES;
        let last = (offset + len.max(1) - 1) / STRIPE_BYTES;
        if last - first + 1 >= STRIPES {
            return u64::MAX;
        }
        (first..=last).fold(0, |m, i| m | 1 << (i % STRIPES))
    }

    /// Takes the locks of `mask`, lowest first; spins while another core holds one.
    fn lock(&self, mask: u64) {
        let mut m = mask;
        while m != 0 {
            let lock = &self.locks[m.trailing_zeros() as usize].0;
            while lock
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::hint::spin_loop();
            }
            m &= m - 1;
        }
    }

    /// Releases the locks of `mask` (taken by [`Stripes::lock`]). Streaming stores made
    /// under them must be fenced first.
    fn unlock(&self, mask: u64) {
        let mut m = mask;
        while m != 0 {
            self.locks[m.trailing_zeros() as usize]
                .0
                .store(false, Ordering::Release);
            m &= m - 1;
        }
    }
}

impl MallocBdev {
    /// A zero-filled RAM disk of `num_blocks` blocks of `block_size` bytes.
    pub fn create(
        name: &str,
        num_blocks: u64,
        block_size: u32,
        uuid: Option<Uuid>,
    ) -> Result<Arc<MallocBdev>, BdevError> {
        let props = BdevProps::new(name, uuid, block_size, num_blocks, "Malloc disk")?;
        let len = num_blocks
            .checked_mul(block_size as u64)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| BdevError::InvalidParam {
                name: name.into(),
                field: "num_blocks",
                reason: "size overflows the address space".into(),
            })?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(BdevError::Io {
                name: name.into(),
                path: "anonymous memory".into(),
                cause: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: the mapping just created spans `len` bytes. Huge pages are advice; the
        // populate step faults every page in now (a RAM disk must not take page faults
        // on the I/O path), falling back to touching each page if MADV_POPULATE_WRITE
        // is not supported.
        unsafe {
            libc::madvise(p, len, libc::MADV_HUGEPAGE);
            if libc::madvise(p, len, 23 /* MADV_POPULATE_WRITE */) != 0 {
                let base = p as *mut u8;
                let mut off = 0;
                while off < len {
                    std::ptr::write_volatile(base.add(off), 0);
                    off += 4096;
                }
            }
        }
        Ok(Arc::new(MallocBdev {
            props,
            base: NonNull::new(p.cast()).expect("mmap never returns null on success"),
            len,
            stripes: Stripes::new(),
        }))
    }

    /// Zeroes `[offset, offset + len)`; the caller holds its stripe locks.
    fn zero(&self, offset: usize, len: usize) {
        debug_assert!(offset + len <= self.len);
        // A plain memset keeps the pages resident: giving them back (MADV_DONTNEED) would
        // make later reads hit the shared zero page and later writes take page faults.
        // SAFETY: [offset, offset+len) lies inside the mapping (validated by the channel);
        // the caller holds the stripe locks of those bytes, so no other core touches them.
        unsafe { std::ptr::write_bytes(self.base.as_ptr().add(offset), 0, len) };
    }
}

impl Drop for MallocBdev {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `create`; no channel outlives the bdev
        // (channels hold an Arc to it).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl Bdev for MallocBdev {
    fn props(&self) -> &BdevProps {
        &self.props
    }

    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let pending: Rc<RefCell<VecDeque<BdevIo>>> =
            Rc::new(RefCell::new(VecDeque::with_capacity(256)));
        let q = pending.clone();
        let bdev = self.clone();
        let mut batch: VecDeque<BdevIo> = VecDeque::with_capacity(256);
        let clock = Rc::new(PassClock::default());
        let c = clock.clone();
        let poller = reactor::register_poller(move || {
            if q.borrow().is_empty() {
                return 0;
            }
            c.begin();
            // Only what is queued now: completions submit more, for the next iteration
            // (into the queue, which is the other buffer of the pair by then).
            std::mem::swap(&mut *q.borrow_mut(), &mut batch);
            let n = batch.len();
            bdev.execute_all(&batch);
            for io in batch.drain(..) {
                io.complete(IoStatus::Success);
            }
            c.end();
            n
        });
        Ok(Rc::new(MallocChannel {
            bdev: self,
            pending,
            clock,
            _poller: poller,
        }))
    }

    fn unmap_reads_zeroes(&self) -> bool {
        true
    }
}

impl MallocBdev {
    /// Prefetches up to `max` bytes of the device range a read will copy from. (A write
    /// streams its data past the cache: nothing to fetch.)
    #[inline]
    fn prefetch(&self, io: &BdevIo, max: usize) {
        #[cfg(target_arch = "x86_64")]
        if io.kind == IoKind::Read {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let bs = self.props.block_size as usize;
            let offset = io.offset_blocks as usize * bs;
            let len = (io.num_blocks as usize * bs).min(max);
            let mut at = 0;
            while at < len {
                // SAFETY: validation keeps the range inside the mapping; a prefetch never
                // faults and changes no memory.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(self.base.as_ptr().add(offset + at).cast()) };
                at += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (io, max);
    }

    /// Does the data work of every request of `ios`, in order, prefetching each read's
    /// successor; their effects are visible to every core when it returns.
    fn execute_all(&self, ios: &VecDeque<BdevIo>) {
        for (i, io) in ios.iter().enumerate() {
            if let Some(next) = ios.get(i + 1) {
                self.prefetch(next, PREFETCH_AHEAD);
            }
            self.execute(io);
        }
        // Streaming stores are weakly ordered: make them visible before anyone learns
        // the writes completed.
        if !ios.is_empty() {
            store_fence();
        }
    }

    /// Does the data work of `io`.
    #[inline]
    fn execute(&self, io: &BdevIo) {
        let bs = self.props.block_size as usize;
        let offset = io.offset_blocks as usize * bs;
        if io.kind == IoKind::Flush {
            return;
        }
        // Overlapping requests on other cores wait, and this one waits for them: see the
        // module's Safety section.
        let locks = Stripes::mask(offset, io.num_blocks as usize * bs);
        self.stripes.lock(locks);
        match io.kind {
            IoKind::Read | IoKind::Write => {
                let mut pos = offset;
                for v in io.iovs() {
                    // SAFETY: validation guarantees offset + total iov length lies within
                    // the mapping; each iovec is valid memory owned by the request. The
                    // stripe locks held make this core the only one touching those
                    // device bytes until they are released.
                    unsafe {
                        let dev = self.base.as_ptr().add(pos);
                        if io.kind == IoKind::Read {
                            std::ptr::copy_nonoverlapping(dev, v.iov_base.cast(), v.iov_len);
                        } else {
                            stream_copy(dev, v.iov_base as *const u8, v.iov_len);
                        }
                    }
                    pos += v.iov_len;
                }
            }
            IoKind::Unmap | IoKind::WriteZeroes => {
                self.zero(offset, io.num_blocks as usize * bs);
            }
            IoKind::Flush => {}
        }
        // Streaming stores are weakly ordered: the next holder of a lock must see them.
        if io.kind == IoKind::Write {
            store_fence();
        }
        self.stripes.unlock(locks);
    }
}

/// Copies `len` bytes into device memory at `dst` with streaming (non-temporal) stores
/// where it can: a write into a RAM disk is rarely read back soon, and streaming stores
/// skip reading each destination line into the cache before overwriting it — half the
/// memory traffic of a plain copy into cold memory. The caller issues [`store_fence`]
/// before the data may be observed by another core.
///
/// # Safety
/// `dst` and `src` are valid for `len` bytes and do not overlap.
#[inline]
unsafe fn stream_copy(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if (dst as usize).is_multiple_of(64) && len.is_multiple_of(64) {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let mut at = 0;
        while at < len {
            // SAFETY: `at + 64 <= len`, so every 16-byte access lies inside the ranges
            // the caller vouches for; `dst + at` is 16-byte aligned (dst is 64-aligned,
            // `at` a multiple of 64) as `_mm_stream_si128` requires; SSE2 is part of
            // the x86_64 baseline.
            unsafe {
                let s = src.add(at).cast::<__m128i>();
                let d = dst.add(at).cast::<__m128i>();
                let (a, b) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)));
                let (c, e) = (_mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
                _mm_stream_si128(d, a);
                _mm_stream_si128(d.add(1), b);
                _mm_stream_si128(d.add(2), c);
                _mm_stream_si128(d.add(3), e);
            }
            at += 64;
        }
        return;
    }
    // SAFETY: as promised by the caller.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

/// Orders every streaming store issued before it ahead of every store after it.
#[inline]
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no operands and no effect beyond ordering stores.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

struct MallocChannel {
    bdev: Arc<MallocBdev>,
    pending: Rc<RefCell<VecDeque<BdevIo>>>,
    clock: Rc<PassClock>,
    _poller: PollerHandle,
}

impl Drop for MallocChannel {
    /// Requests still queued when the last user lets the channel go are done now and
    /// completed on the next loop iteration, never lost.
    fn drop(&mut self) {
        let rest = std::mem::take(&mut *self.pending.borrow_mut());
        if !rest.is_empty() {
            self.bdev.execute_all(&rest);
            let deferred = Deferred::current();
            for io in rest {
                deferred.complete(io, IoStatus::Success);
            }
        }
    }
}

impl BdevChannel for MallocChannel {
    #[inline]
    fn submit(&self, io: BdevIo) {
        self.pending.borrow_mut().push_back(io);
    }

    fn tracks_drain(&self) -> bool {
        true
    }

    /// Requests run and complete in the first poller pass that begins after they were
    /// queued.
    fn drained(&self) -> Option<Drained> {
        let idle = self.pending.borrow().is_empty();
        Some(self.clock.drained(idle))
    }
}

/// Bytes of the next read's range prefetched before the current copy: the first lines,
/// enough for the hardware prefetcher to pick up the rest of the stream. Measured on
/// 4 KiB random copies (bench/foundation.sh): prefetching more costs more than it
/// saves, and prefetching every request as it is queued stalls submission once the
/// core's outstanding-miss slots are full (a batch of 64 asks for 256 lines at once).
const PREFETCH_AHEAD: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::{Channel, IoBuf};
    use crate::reactor::{IdlePolicy, ReactorSet, block_on};

    const BLOCK: usize = 4096;

    /// The tag every byte pair of a block written by request `tag` holds.
    fn block_tag(b: &[u8]) -> Option<u16> {
        let t = u16::from_le_bytes([b[0], b[1]]);
        b.chunks(2)
            .all(|p| u16::from_le_bytes([p[0], p[1]]) == t)
            .then_some(t)
    }

    /// Two cores write, zero and read overlapping ranges at once, many times: every block
    /// a read returns holds the whole of one write (or zeroes), never parts of two —
    /// overlapping requests are applied one after the other, and no copy races another.
    #[test]
    fn overlapping_writes_from_two_cores_never_tear_a_block() {
        let set = ReactorSet::for_tests(2, IdlePolicy::Adaptive);
        let bdev: Arc<dyn Bdev> = MallocBdev::create("m0", 64, BLOCK as u32, None).unwrap();
        let workers: Vec<_> = (0..2u16)
            .map(|core| {
                let bdev = bdev.clone();
                set.cores().spawn_on(core as usize, move || async move {
                    let ch = Channel::get(&bdev).unwrap();
                    // Core 0 writes blocks [0, 32), core 1 [8, 40): 24 blocks overlap.
                    let first = 8 * core as u64;
                    for round in 0..3000u16 {
                        // Odd tags from core 0, even ones from core 1; never 0.
                        let tag = (round % 30000) * 2 + 1 + core;
                        let mut buf = IoBuf::new(32 * BLOCK);
                        for p in buf.chunks_mut(2) {
                            p.copy_from_slice(&tag.to_le_bytes());
                        }
                        ch.write(first, buf).await.unwrap();
                        if round % 5 == 0 {
                            ch.write_zeroes(first + 4, 8).await.unwrap();
                        }
                        let got = ch.read(0, 40).await.unwrap();
                        for (b, block) in got.chunks(BLOCK).enumerate() {
                            assert!(
                                block_tag(block).is_some(),
                                "core {core}, round {round}: block {b} holds parts of two writes"
                            );
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            block_on(w).unwrap();
        }
    }

    #[test]
    fn stripe_masks_cover_the_range() {
        assert_eq!(Stripes::mask(0, 1), 1);
        assert_eq!(Stripes::mask(STRIPE_BYTES - 1, 2), 0b11);
        assert_eq!(
            Stripes::mask(STRIPE_BYTES * (STRIPES - 1), 2 * STRIPE_BYTES),
            1 | 1 << 63
        );
        assert_eq!(Stripes::mask(0, STRIPES * STRIPE_BYTES), u64::MAX);
    }
}
