//! The ceiling for a RAM disk on this machine: copy random 4 KiB blocks between a 1 GiB
//! buffer and a set of 4 KiB I/O buffers, as fast as one core can, with nothing else.
//! `tessera bench --bdev malloc:1G` is compared against it (bench/malloc_vs_memcpy.sh).
//!
//! `write-stream` copies with streaming (non-temporal) stores, as the malloc bdev's
//! writes do: the ceiling for that way of copying.
//!
//! Usage: memcpy_ceiling [read|write|write-stream] [seconds] [buffers] [aligned|unaligned]
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("read");
    let stream = op == "write-stream";
    let write = op == "write" || stream;
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let nbufs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    const BS: usize = 4096;
    let size = 1usize << 30;
    // The same memory as the malloc bdev: anonymous, transparent huge pages, populated.
    // SAFETY: a fresh private anonymous mapping of `size` bytes, used only as a byte
    // slice by this thread and never unmapped before exit.
    let big: &mut [u8] = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        libc::madvise(p, size, libc::MADV_HUGEPAGE);
        libc::madvise(p, size, 23 /* MADV_POPULATE_WRITE */);
        std::slice::from_raw_parts_mut(p.cast(), size)
    };
    // I/O buffers as the engine uses them: 4 KiB-aligned (`unaligned` to compare).
    let unaligned = args.get(4).map(String::as_str) == Some("unaligned");
    let mut backing = vec![1u8; (nbufs + 1) * BS + 64];
    let skew = if unaligned { 64 } else { 0 };
    let start_at = (BS - backing.as_ptr() as usize % BS) % BS + skew;
    let mut bufs: Vec<&mut [u8]> = backing[start_at..start_at + nbufs * BS]
        .chunks_mut(BS)
        .collect();
    let blocks = (size / BS) as u64;
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut ops = 0u64;
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(secs);
    'outer: loop {
        for b in bufs.iter_mut() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let off = (rng % blocks) as usize * BS;
            if stream {
                stream_copy(&mut big[off..off + BS], b);
            } else if write {
                big[off..off + BS].copy_from_slice(b);
            } else {
                b.copy_from_slice(&big[off..off + BS]);
            }
            ops += 1;
        }
        if stream {
            // SAFETY: `sfence` only orders stores.
            unsafe { std::arch::x86_64::_mm_sfence() };
        }
        if ops % 65536 < nbufs as u64 && start.elapsed() >= deadline {
            break 'outer;
        }
    }
    let el = start.elapsed().as_secs_f64();
    std::hint::black_box(&big);
    std::hint::black_box(&bufs);
    println!(
        "{{\"op\":\"{}\",\"copies_per_s\":{:.0},\"mib_s\":{:.1}}}",
        op,
        ops as f64 / el,
        ops as f64 * BS as f64 / el / 1048576.0
    );
}

/// `dst.copy_from_slice(src)` with streaming stores; `dst` is 64-byte aligned (a 4 KiB
/// block of a huge-page mapping).
fn stream_copy(dst: &mut [u8], src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    assert!(
        dst.len() == src.len()
            && dst.len().is_multiple_of(64)
            && (dst.as_ptr() as usize).is_multiple_of(64)
    );
    for at in (0..dst.len()).step_by(64) {
        // SAFETY: `at + 64 <= len` for both slices; the destination is 16-byte aligned;
        // SSE2 is part of the x86_64 baseline.
        unsafe {
            let s = src.as_ptr().add(at).cast::<__m128i>();
            let d = dst.as_mut_ptr().add(at).cast::<__m128i>();
            for k in 0..4 {
                _mm_stream_si128(d.add(k), _mm_loadu_si128(s.add(k)));
            }
        }
    }
}
