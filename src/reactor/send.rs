//! The send queue of a connection (NVMe/TCP target and initiator): it gathers the
//! headers and data of many PDUs (or replies) into one `writev`, and reports a mark once
//! everything queued before it is written.
//!
//! # Safety
//! [`SendQueue`] holds raw pointers to data it does not own (a request's buffer, the
//! memory of a bdev I/O) between the moment a PDU is queued and the moment the bytes are
//! written. [`SendQueue::push_raw`] is `unsafe`: its caller promises the memory stays
//! valid and unchanged until a [`SendQueue::push_mark`] queued after it is reported by
//! [`SendQueue::flush`] (or the queue is dropped unflushed). Both sides keep that promise
//! by releasing a request only when its mark comes back.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

enum Seg {
    /// Bytes of the arena at logical offset `start`.
    Arena { start: usize, len: usize },
    /// Memory owned by someone else (see the module's Safety section).
    Raw { ptr: *const u8, len: usize },
    /// Reported to the owner once everything queued before it is written.
    Mark(u64),
}

/// PDUs waiting to be written.
pub(crate) struct SendQueue {
    /// Header bytes; logical offset `base` is `arena[0]`.
    arena: Vec<u8>,
    base: usize,
    segs: VecDeque<Seg>,
    /// Bytes of the front segment already written.
    front_done: usize,
    pending_bytes: usize,
}

/// How many iovecs one `writev` gathers.
const IOV_BATCH: usize = 256;

impl SendQueue {
    pub(crate) fn new() -> SendQueue {
        SendQueue {
            arena: Vec::with_capacity(64 << 10),
            base: 0,
            segs: VecDeque::with_capacity(256),
            front_done: 0,
            pending_bytes: 0,
        }
    }

    /// True when nothing (not even a mark) waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Bytes not yet written.
    #[cfg(test)]
    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Appends header bytes written by `f` (which appends to the vector it is given).
    pub(crate) fn push_bytes(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let before = self.arena.len();
        f(&mut self.arena);
        let len = self.arena.len() - before;
        if len == 0 {
            return;
        }
        self.pending_bytes += len;
        let start = self.base + before;
        if let Some(Seg::Arena { start: s, len: l }) = self.segs.back_mut()
            && *s + *l == start
        {
            *l += len;
            return;
        }
        self.segs.push_back(Seg::Arena { start, len });
    }

    /// Queues `len` bytes at `ptr` without copying them.
    ///
    /// # Safety
    /// The memory must stay valid and unchanged until a mark queued after it is reported
    /// by [`SendQueue::flush`], or the queue is dropped.
    pub(crate) unsafe fn push_raw(&mut self, ptr: *const u8, len: usize) {
        if len > 0 {
            self.pending_bytes += len;
            self.segs.push_back(Seg::Raw { ptr, len });
        }
    }

    /// Queues a mark.
    pub(crate) fn push_mark(&mut self, token: u64) {
        self.segs.push_back(Seg::Mark(token));
    }

    /// Writes as much as the socket takes, reporting each mark passed to `on_mark`.
    /// `Ok(true)`: everything was written; `Ok(false)`: the socket is full.
    pub(crate) fn flush(
        &mut self,
        mut w: impl Write,
        mut on_mark: impl FnMut(u64),
    ) -> io::Result<bool> {
        loop {
            // Marks at the front: everything before them is out.
            while let Some(Seg::Mark(t)) = self.segs.front() {
                let t = *t;
                self.segs.pop_front();
                on_mark(t);
            }
            if self.segs.is_empty() {
                self.arena.clear();
                self.base = 0;
                return Ok(true);
            }
            let written = {
                let mut iov: [IoSlice<'_>; IOV_BATCH] = [IoSlice::new(&[]); IOV_BATCH];
                let mut n = 0;
                let mut skip = self.front_done;
                for seg in self.segs.iter() {
                    if n == IOV_BATCH {
                        break;
                    }
                    let bytes: &[u8] = match *seg {
                        Seg::Arena { start, len } => {
                            &self.arena[start - self.base..start - self.base + len]
                        }
                        // SAFETY: the pusher promised the memory stays valid until a later
                        // mark is reported; that mark is behind this segment.
                        Seg::Raw { ptr, len } => unsafe { std::slice::from_raw_parts(ptr, len) },
                        Seg::Mark(_) => continue,
                    };
                    iov[n] = IoSlice::new(&bytes[skip..]);
                    skip = 0;
                    n += 1;
                }
                match w.write_vectored(&iov[..n]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            self.advance(written, &mut on_mark);
        }
    }

    fn advance(&mut self, mut n: usize, on_mark: &mut impl FnMut(u64)) {
        self.pending_bytes -= n;
        while let Some(front) = self.segs.front() {
            let len = match *front {
                Seg::Arena { len, .. } | Seg::Raw { len, .. } => len,
                Seg::Mark(t) => {
                    self.segs.pop_front();
                    on_mark(t);
                    continue;
                }
            };
            let left = len - self.front_done;
            if n >= left {
                n -= left;
                self.front_done = 0;
                self.segs.pop_front();
            } else {
                self.front_done += n;
                break;
            }
        }
        // Drop arena bytes that are written, now and then.
        let first_live = self.segs.iter().find_map(|s| match *s {
            Seg::Arena { start, .. } => Some(start),
            _ => None,
        });
        match first_live {
            None => {
                self.base += self.arena.len();
                self.arena.clear();
            }
            Some(start) if start - self.base > (256 << 10) => {
                self.arena.drain(..start - self.base);
                self.base = start;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `chunk` bytes per call.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
        calls: usize,
        block_every: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.block_every > 0 && self.calls.is_multiple_of(self.block_every) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn send_queue_keeps_order_through_partial_writes_and_reports_marks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut q = SendQueue::new();
        let mut expect = Vec::new();
        for i in 0..50u64 {
            q.push_bytes(|v| v.extend_from_slice(&[i as u8; 24]));
            expect.extend_from_slice(&[i as u8; 24]);
            // SAFETY: `data` outlives the queue's use of it (flushed below).
            unsafe { q.push_raw(data.as_ptr(), data.len()) };
            expect.extend_from_slice(&data);
            q.push_mark(i);
        }
        let mut w = Trickle {
            out: Vec::new(),
            chunk: 3333,
            calls: 0,
            block_every: 7,
        };
        let mut marks = Vec::new();
        while !q.flush(&mut w, |t| marks.push(t)).unwrap() {}
        assert_eq!(w.out, expect);
        assert_eq!(marks, (0..50).collect::<Vec<_>>());
        assert!(q.is_empty());
        assert_eq!(q.pending_bytes(), 0);
    }
}
