//! The `malloc` bdev: a RAM disk. Data lives in one anonymous mapping shared by all
//! cores; each I/O is a memory copy. Submission only queues the request; the channel's
//! poller does the copies on the next loop iteration — a read prefetching the start of
//! the next read's range while it copies, so that their cache misses overlap; a write
//! with streaming stores, which do not read the destination into the cache first.
//!
//! # Safety
//! The mapping is device memory shared by every core, and requests from two cores may
//! touch the same bytes at once: a block device orders nothing between overlapping
//! requests in flight, and neither does this one — what such a read returns, or such
//! writes leave, is unspecified, though every byte is one that some request wrote (or
//! zeroed). That is the device's contract; for it to be sound, and not only what the
//! hardware happens to do, no access to the mapping may be a data race in the
//! language's sense (a race between non-atomic accesses is undefined behaviour whatever
//! a device promises). So the mapping is touched only by three inline-assembly copies —
//! [`copy_from_device`], [`copy_to_device`] and [`zero_device`] — never through a Rust
//! reference, `ptr::copy`, `write_bytes` or any other Rust-level access. The compiler
//! treats an `asm!` block as a black box that may do what a foreign function could; its
//! memory accesses are not non-atomic accesses of the abstract machine — they act as a
//! sequence of relaxed atomic byte accesses would (the reasoning behind racy copies
//! in seqlocks, e.g. the `atomic-memcpy` crate) — so two of them racing over the same
//! bytes is no data race. Where no such assembly exists (not x86-64) the copies are
//! relaxed atomic byte accesses outright. The bytes are plain `u8`s, valid whatever
//! mix of writes they hold. A request's effects reach another core only through its
//! completion (a store fence, then the queues' release and acquire). Every access is
//! bounds checked by [`Channel`](super::Channel) validation before it reaches this
//! module.

use super::{
    Bdev, BdevChannel, BdevError, BdevIo, BdevProps, Deferred, Drained, IoKind, IoStatus, PassClock,
};
use crate::reactor::{self, PollerHandle};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;
use uuid::Uuid;

/// A RAM-backed bdev.
pub struct MallocBdev {
    props: BdevProps,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by the bdev for its whole life (unmapped only when the
// last Arc, channels' included, goes) and holds plain bytes; moving the owner to
// another thread moves nothing else.
unsafe impl Send for MallocBdev {}
// SAFETY: shared use from several cores at once touches the mapping only through this
// module's assembly copies, which two cores may run over the same bytes at once without
// a data race (see the module's Safety section): overlapping requests leave unspecified
// but valid bytes, as on any block device, and never undefined behaviour.
unsafe impl Sync for MallocBdev {}

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
                source: std::io::Error::last_os_error(),
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
        }))
    }

    fn zero(&self, offset: usize, len: usize) {
        debug_assert!(offset + len <= self.len);
        // Zeros written in place keep the pages resident: giving them back
        // (MADV_DONTNEED) would make later reads hit the shared zero page and later
        // writes take page faults.
        // SAFETY: [offset, offset+len) lies inside the mapping (validated by the channel).
        unsafe { zero_device(self.base.as_ptr().add(offset), len) };
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
        match io.kind {
            IoKind::Read | IoKind::Write => {
                let mut pos = offset;
                for v in io.iovs() {
                    // SAFETY: validation guarantees offset + total iov length lies within
                    // the mapping; each iovec is valid memory owned by the request, apart
                    // from the mapping. Other cores may copy to or from the same device
                    // bytes at once: see the module's Safety section.
                    unsafe {
                        let dev = self.base.as_ptr().add(pos);
                        if io.kind == IoKind::Read {
                            copy_from_device(v.iov_base.cast(), dev, v.iov_len);
                        } else {
                            copy_to_device(dev, v.iov_base as *const u8, v.iov_len);
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
    }
}

/// Copies `len` bytes of device memory at `src` to `dst`, memory the request owns.
/// `rep movsb`: as fast as a vector copy for the sizes of block I/O on CPUs with fast
/// string moves, and — being assembly — no Rust-level access to the device memory
/// (see the module's Safety section).
///
/// # Safety
/// `src` is valid for reads and `dst` for writes of `len` bytes; they do not overlap;
/// only this module's copies touch `src` concurrently.
#[inline]
unsafe fn copy_from_device(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as promised by the caller; `rep movsb` reads exactly [src, src+len) and
    // writes exactly [dst, dst+len), forwards (the direction flag is clear on entry to
    // an asm block), uses no stack and changes no flags.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..len {
        // SAFETY: as promised by the caller; a relaxed atomic load races with no one.
        unsafe {
            let b = (*src.add(i).cast::<std::sync::atomic::AtomicU8>())
                .load(std::sync::atomic::Ordering::Relaxed);
            dst.add(i).write(b);
        }
    }
}

/// Copies `len` bytes into device memory at `dst` with streaming (non-temporal) stores
/// where it can: a write into a RAM disk is rarely read back soon, and streaming stores
/// skip reading each destination line into the cache before overwriting it — half the
/// memory traffic of a plain copy into cold memory. The caller issues [`store_fence`]
/// before the data may be observed by another core. Assembly, so that no Rust-level
/// access touches the device memory (see the module's Safety section).
///
/// # Safety
/// `dst` is valid for writes and `src` for reads of `len` bytes; they do not overlap;
/// only this module's copies touch `dst` concurrently.
#[inline]
unsafe fn copy_to_device(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if len > 0 && (dst as usize).is_multiple_of(64) && len.is_multiple_of(64) {
            // SAFETY: as promised by the caller: each pass reads [src, src+64) and
            // streams to [dst, dst+64) until `len` (a non-zero multiple of 64) is
            // done; `dst` stays 16-byte aligned as `movntdq` requires; SSE2 is part of
            // the x86-64 baseline; the clobbered registers and flags are declared.
            unsafe {
                std::arch::asm!(
                    "2:",
                    "movdqu xmm0, xmmword ptr [{src}]",
                    "movdqu xmm1, xmmword ptr [{src} + 16]",
                    "movdqu xmm2, xmmword ptr [{src} + 32]",
                    "movdqu xmm3, xmmword ptr [{src} + 48]",
                    "movntdq xmmword ptr [{dst}], xmm0",
                    "movntdq xmmword ptr [{dst} + 16], xmm1",
                    "movntdq xmmword ptr [{dst} + 32], xmm2",
                    "movntdq xmmword ptr [{dst} + 48], xmm3",
                    "add {src}, 64",
                    "add {dst}, 64",
                    "sub {len}, 64",
                    "jnz 2b",
                    src = inout(reg) src => _,
                    dst = inout(reg) dst => _,
                    len = inout(reg) len => _,
                    out("xmm0") _,
                    out("xmm1") _,
                    out("xmm2") _,
                    out("xmm3") _,
                    options(nostack),
                );
            }
        } else {
            // SAFETY: as promised by the caller; see `copy_from_device`.
            unsafe {
                std::arch::asm!(
                    "rep movsb",
                    inout("rcx") len => _,
                    inout("rdi") dst => _,
                    inout("rsi") src => _,
                    options(nostack, preserves_flags),
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..len {
        // SAFETY: as promised by the caller; a relaxed atomic store races with no one.
        unsafe {
            (*dst.add(i).cast::<std::sync::atomic::AtomicU8>())
                .store(src.add(i).read(), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Zeroes `len` bytes of device memory at `dst` (`rep stosb`; see the module's Safety
/// section).
///
/// # Safety
/// `dst` is valid for writes of `len` bytes; only this module's copies touch it
/// concurrently.
#[inline]
unsafe fn zero_device(dst: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as promised by the caller; `rep stosb` writes exactly [dst, dst+len),
    // forwards, uses no stack and changes no flags.
    unsafe {
        std::arch::asm!(
            "rep stosb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            in("al") 0u8,
            options(nostack, preserves_flags),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..len {
        // SAFETY: as promised by the caller; a relaxed atomic store races with no one.
        unsafe {
            (*dst.add(i).cast::<std::sync::atomic::AtomicU8>())
                .store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
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

    /// Two cores write and read the same blocks at once, many times: what a read returns
    /// is, byte by byte, what one of the writes wrote (no ordering between overlapping
    /// requests, as on any device) — and no access to the device memory is a data race
    /// in the language's sense (run under ThreadSanitizer to see it: `RUSTFLAGS=
    /// -Zsanitizer=thread cargo +nightly test --target x86_64-unknown-linux-gnu --lib
    /// overlapping`).
    #[test]
    fn overlapping_requests_from_two_cores_are_race_free() {
        let set = ReactorSet::for_tests(2, IdlePolicy::Adaptive);
        let bdev: Arc<dyn Bdev> = MallocBdev::create("m0", 64, 4096, None).unwrap();
        let workers: Vec<_> = (0..2u8)
            .map(|core| {
                let bdev = bdev.clone();
                set.cores().spawn_on(core as usize, move || async move {
                    let ch = Channel::get(&bdev).unwrap();
                    for round in 0..400u32 {
                        let v = core * 100 + (round % 50) as u8 + 1;
                        let mut buf = IoBuf::new(16 * 4096);
                        buf.fill(v);
                        ch.write(0, buf).await.unwrap();
                        let got = ch.read(0, 16).await.unwrap();
                        if let Some(b) = got
                            .iter()
                            .find(|&&b| !(b == 0 || (1..=50).contains(&b) || (101..=150).contains(&b)))
                        {
                            panic!("core {core}, round {round}: read a byte no write wrote: {b}");
                        }
                        // Zeroing races with the other core's copies too.
                        if round % 7 == 0 {
                            ch.write_zeroes(4, 4).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            block_on(w).unwrap();
        }
    }
}
