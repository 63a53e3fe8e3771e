//! The receive buffer of a connection (NBD, NVMe/TCP target and initiator): one large
//! buffer that a `read` fills and the parsers consume from the front, so one read can
//! carry many requests or PDUs.

use std::io::{self, Read};

/// Bytes read from the socket and not yet consumed.
pub(crate) struct RecvBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    /// An empty buffer of `cap` bytes.
    pub(crate) fn new(cap: usize) -> RecvBuf {
        RecvBuf {
            buf: vec![0u8; cap].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The buffered bytes.
    #[inline]
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Number of buffered bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when nothing is buffered.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// True when no free space is left after the buffered bytes. A read that leaves
    /// room behind it was short: the socket had nothing more at that moment.
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.end == self.buf.len()
    }

    /// Capacity in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Drops `n` bytes from the front.
    #[inline]
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves the buffered bytes to the front when less than `min_room` bytes are free
    /// after them.
    fn make_room(&mut self, min_room: usize) {
        if self.buf.len() - self.end < min_room && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Reads once from `r` into the free space (moving the buffered bytes to the front
    /// first when the tail is short). `Ok(0)` is end of stream; a full buffer is an
    /// error (a parser that consumes whole units never lets it fill).
    #[inline]
    pub(crate) fn fill(&mut self, mut r: impl Read) -> io::Result<usize> {
        self.make_room(self.buf.len() / 4);
        if self.end == self.buf.len() {
            return Err(io::Error::other("receive buffer full"));
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// As [`fill`](Self::fill), but a full buffer reads nothing and reports
    /// `WouldBlock`: the caller consumes first.
    #[inline]
    pub(crate) fn read_from(&mut self, sock: impl Read) -> io::Result<usize> {
        self.make_room(self.buf.len() / 4);
        if self.end == self.buf.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.fill(sock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_buf_compacts() {
        let mut r = RecvBuf::new(16);
        let src = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
        assert_eq!(r.fill(&src[..]).unwrap(), 14);
        r.consume(13);
        assert_eq!(r.data(), &[14]);
        assert_eq!(r.fill(&[15u8, 16, 17, 18][..]).unwrap(), 4);
        assert_eq!(r.data(), &[14, 15, 16, 17, 18]);
    }
}
