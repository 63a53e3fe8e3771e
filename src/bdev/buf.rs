//! Aligned I/O buffers from per-core pools.
//!
//! An [`IoBuf`] is an owned, 4 KiB-aligned, always-initialised byte buffer, suitable for
//! `O_DIRECT`. Small and medium buffers come from per-thread free lists by power-of-two
//! size class (4 KiB … 2 MiB) and return to the free list of the thread that drops them,
//! so a reactor that allocates and frees on its own core never touches the global
//! allocator in steady state. Larger buffers go straight to the allocator.
//!
//! # Safety
//! This module owns raw allocations. Invariants: `ptr` is non-null, aligned to
//! [`ALIGN`], points to `cap` initialised bytes allocated with `layout(cap)` (or owned by
//! `arena`), `len <= cap`, and the `IoBuf` is the only owner.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// Alignment of every buffer.
pub const ALIGN: usize = 4096;
const MIN_CLASS_SHIFT: u32 = 12; // 4 KiB
const CLASSES: usize = 10; // 4 KiB .. 2 MiB
const MAX_POOLED_PER_CLASS: usize = 512;

/// Memory that buffers can be carved from and returned to (for example a region
/// registered with an io_uring as fixed buffers).
pub trait BufArena: Send + Sync {
    /// Takes back a buffer previously handed out by this arena.
    fn give_back(&self, ptr: NonNull<u8>, cap: usize);
}

/// An owned, aligned, initialised I/O buffer.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    arena: Option<Arc<dyn BufArena>>,
}

// SAFETY: an IoBuf uniquely owns its allocation, like a Box<[u8]>; nothing in it is
// tied to the allocating thread (pool free lists accept buffers from anywhere).
unsafe impl Send for IoBuf {}
// SAFETY: shared access only hands out `&[u8]`, which is safe to share like `&Box<[u8]>`.
unsafe impl Sync for IoBuf {}

thread_local! {
    static POOL: RefCell<[Vec<NonNull<u8>>; CLASSES]> = RefCell::new(Default::default());
}

fn class_of(len: usize) -> Option<usize> {
    let cap = len.max(ALIGN).next_power_of_two();
    let shift = cap.trailing_zeros();
    let class = (shift - MIN_CLASS_SHIFT) as usize;
    (class < CLASSES).then_some(class)
}

fn layout(cap: usize) -> Layout {
    Layout::from_size_align(cap, ALIGN).expect("buffer size fits a layout")
}

impl IoBuf {
    /// A buffer of `len` bytes with unspecified (but initialised) contents.
    pub fn new(len: usize) -> IoBuf {
        if let Some(class) = class_of(len) {
            let cap = 1usize << (class as u32 + MIN_CLASS_SHIFT);
            let reused = POOL
                .try_with(|p| p.borrow_mut()[class].pop())
                .ok()
                .flatten();
            let ptr = reused.unwrap_or_else(|| Self::alloc(cap));
            return IoBuf {
                ptr,
                len,
                cap,
                arena: None,
            };
        }
        let cap = len.div_ceil(ALIGN) * ALIGN;
        IoBuf {
            ptr: Self::alloc(cap),
            len,
            cap,
            arena: None,
        }
    }

    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> IoBuf {
        let mut b = IoBuf::new(len);
        b.as_mut_slice().fill(0);
        b
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> IoBuf {
        let mut b = IoBuf::new(data.len());
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    /// Wraps memory handed out by `arena`.
    ///
    /// # Safety
    /// `ptr` must point to `cap` initialised bytes aligned to [`ALIGN`] that the caller
    /// exclusively owns until `arena.give_back(ptr, cap)` is called by the drop of the
    /// returned buffer, and `len <= cap`.
    pub unsafe fn from_arena(
        ptr: NonNull<u8>,
        len: usize,
        cap: usize,
        arena: Arc<dyn BufArena>,
    ) -> IoBuf {
        IoBuf {
            ptr,
            len,
            cap,
            arena: Some(arena),
        }
    }

    fn alloc(cap: usize) -> NonNull<u8> {
        // SAFETY: the layout has a non-zero size (cap >= ALIGN) and a power-of-two
        // alignment; zeroed memory is initialised.
        let p = unsafe { alloc_zeroed(layout(cap)) };
        NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout(cap)))
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity in bytes (the length can be set up to it).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Sets the length (contents stay as they are).
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "IoBuf::set_len {len} beyond capacity {}",
            self.cap
        );
        self.len = len;
    }

    /// Raw pointer to the first byte.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Raw mutable pointer to the first byte.
    #[inline]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: module invariant: `len <= cap` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: module invariant, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The arena this buffer belongs to, if any.
    pub fn arena(&self) -> Option<&Arc<dyn BufArena>> {
        self.arena.as_ref()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if let Some(arena) = self.arena.take() {
            arena.give_back(self.ptr, self.cap);
            return;
        }
        if let Some(class) =
            class_of(self.cap).filter(|&c| 1usize << (c as u32 + MIN_CLASS_SHIFT) == self.cap)
        {
            let ptr = self.ptr;
            let kept = POOL
                .try_with(|p| {
                    let mut p = p.borrow_mut();
                    if p[class].len() < MAX_POOLED_PER_CLASS {
                        p[class].push(ptr);
                        true
                    } else {
                        false
                    }
                })
                .unwrap_or(false);
            if kept {
                return;
            }
        }
        // SAFETY: allocated by `alloc` with `layout(cap)` and owned only by us.
        unsafe { dealloc(self.ptr.as_ptr(), layout(self.cap)) };
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

impl std::ops::Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_recycled() {
        let a = IoBuf::new(4096);
        assert_eq!(a.as_ptr() as usize % ALIGN, 0);
        let p = a.as_ptr();
        drop(a);
        let b = IoBuf::new(3000);
        assert_eq!(b.as_ptr(), p, "same class reuses the freed buffer");
        assert_eq!(b.len(), 3000);
        assert_eq!(b.capacity(), 4096);
        let big = IoBuf::zeroed(5 << 20);
        assert_eq!(big.as_ptr() as usize % ALIGN, 0);
        assert!(big.iter().all(|&x| x == 0));
    }

    #[test]
    fn buffers_cross_threads() {
        let mut b = IoBuf::from_slice(b"hello");
        b[0] = b'j';
        let h = std::thread::spawn(move || b.as_slice().to_vec());
        assert_eq!(h.join().unwrap(), b"jello");
    }
}
