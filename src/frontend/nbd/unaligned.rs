//! Requests not aligned to the bdev's block size: where a byte range lies in the blocks
//! that cover it, and the steps of a read-modify-write. Pure and total, like the codec;
//! the connection (`transmission::rmw`) runs the steps, the export's
//! [`RangeLocks`](super::range_lock::RangeLocks) keeps them apart from other requests.
//!
//! A read reads the covering blocks and replies with the requested bytes. A write reads
//! the partial first ("head") and last ("tail") blocks, merges what the request does not
//! cover into its buffer (the payload sits at its offset in a buffer of the covering
//! blocks, so the whole blocks inside are written from where they are), and writes all
//! the covering blocks at once. A write-zeroes does each partial edge block as a
//! read-zero-write of that block, then zeroes the whole blocks inside with one
//! write-zeroes (or unmap) of any length, without a buffer of its size.

use std::ops::Range;

/// A byte range in blocks: the blocks that cover it and where it lies in them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// The first block the range touches.
    pub offset_blocks: u64,
    /// The blocks the range touches (at least one).
    pub num_blocks: u64,
    /// Where the range starts in its first block.
    pub head_bytes: u32,
    /// The range's length in bytes (at least one).
    pub len_bytes: u64,
}

impl Span {
    /// The blocks of `block_size` bytes covering `len_bytes` (> 0) at `offset_bytes`;
    /// `None` if the end overflows or the block size is zero.
    pub fn covering(offset_bytes: u64, len_bytes: u64, block_size: u32) -> Option<Span> {
        let bs = u64::from(block_size);
        if bs == 0 || len_bytes == 0 {
            return None;
        }
        let end = offset_bytes.checked_add(len_bytes)?;
        let offset_blocks = offset_bytes / bs;
        Some(Span {
            offset_blocks,
            num_blocks: end.div_ceil(bs) - offset_blocks,
            head_bytes: (offset_bytes % bs) as u32,
            len_bytes,
        })
    }

    /// True if the range starts and ends on block boundaries.
    pub fn is_aligned(&self, block_size: u32) -> bool {
        self.head_bytes == 0 && self.len_bytes.is_multiple_of(u64::from(block_size.max(1)))
    }

    /// The last block the range touches.
    pub fn last_block(&self) -> u64 {
        self.offset_blocks + self.num_blocks - 1
    }

    /// Bytes of the covering blocks.
    pub fn covering_bytes(&self, block_size: u32) -> u64 {
        self.num_blocks * u64::from(block_size)
    }
}

/// One step of a read-modify-write, each one bdev I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read the partial first block into the edge buffer.
    ReadHead,
    /// Read the partial last block into the edge buffer.
    ReadTail,
    /// Write all covering blocks from the request's buffer (writes).
    WriteAll,
    /// Write the merged first block from the edge buffer (write-zeroes).
    WriteHead,
    /// Write the merged last block from the edge buffer (write-zeroes).
    WriteTail,
    /// Zero the whole blocks inside the range (write-zeroes).
    ZeroMiddle,
}

const WRITE_STEPS: [Step; 3] = [Step::ReadHead, Step::ReadTail, Step::WriteAll];
const ZERO_STEPS: [Step; 5] = [
    Step::ReadHead,
    Step::WriteHead,
    Step::ReadTail,
    Step::WriteTail,
    Step::ZeroMiddle,
];

/// The read-modify-write of an unaligned write or write-zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub span: Span,
    pub block_size: u32,
    /// Write-zeroes (no payload) rather than a write.
    pub zeroes: bool,
}

impl Plan {
    fn bs(&self) -> usize {
        self.block_size as usize
    }

    /// Bytes of the range in its last block (1 to the block size).
    pub fn end_in_last(&self) -> usize {
        let end = u64::from(self.span.head_bytes) + self.span.len_bytes;
        (end - (self.span.num_blocks - 1) * u64::from(self.block_size)) as usize
    }

    /// The range covers only part of its first block.
    pub fn head_partial(&self) -> bool {
        self.span.head_bytes != 0 || (self.span.num_blocks == 1 && self.end_in_last() != self.bs())
    }

    /// The range covers only part of its last block, which is not its first.
    pub fn tail_partial(&self) -> bool {
        self.span.num_blocks > 1 && self.end_in_last() != self.bs()
    }

    /// The blocks the range covers whole: (first, count).
    pub fn middle(&self) -> (u64, u64) {
        let start = self.span.offset_blocks + u64::from(self.head_partial());
        let end = self.span.offset_blocks + self.span.num_blocks - u64::from(self.tail_partial());
        (start, end.saturating_sub(start))
    }

    /// The bytes of the first block the range covers.
    pub fn head_cover(&self) -> Range<usize> {
        let start = self.span.head_bytes as usize;
        let end = if self.span.num_blocks == 1 {
            self.end_in_last()
        } else {
            self.bs()
        };
        start..end
    }

    /// The bytes of the last block the range covers.
    pub fn tail_cover(&self) -> Range<usize> {
        0..self.end_in_last()
    }

    fn applies(&self, step: Step) -> bool {
        match step {
            Step::ReadHead | Step::WriteHead => self.head_partial(),
            Step::ReadTail | Step::WriteTail => self.tail_partial(),
            Step::WriteAll => true,
            Step::ZeroMiddle => self.middle().1 > 0,
        }
    }

    /// The step after `after` (`None`: the first step); `None` when done.
    pub fn next(&self, after: Option<Step>) -> Option<Step> {
        let steps: &[Step] = if self.zeroes {
            &ZERO_STEPS
        } else {
            &WRITE_STEPS
        };
        let from = match after {
            None => 0,
            Some(s) => steps.iter().position(|&x| x == s)? + 1,
        };
        steps[from..].iter().copied().find(|&s| self.applies(s))
    }

    /// After `step` read an edge block into `edge`: for a write, copies what the request
    /// does not cover into the request's buffer `buf` (the covering blocks); for a
    /// write-zeroes, zeroes what it covers in `edge`. Returns false (and changes
    /// nothing) if a buffer is shorter than the plan needs.
    pub fn merge(&self, step: Step, edge: &mut [u8], buf: &mut [u8]) -> bool {
        let bs = self.bs();
        let cover = match step {
            Step::ReadHead => self.head_cover(),
            Step::ReadTail => self.tail_cover(),
            _ => return true,
        };
        if edge.len() < bs {
            return false;
        }
        if self.zeroes {
            edge[cover].fill(0);
            return true;
        }
        let base = if step == Step::ReadHead {
            0
        } else {
            (self.span.num_blocks as usize - 1) * bs
        };
        let Some(block) = buf.get_mut(base..base + bs) else {
            return false;
        };
        block[..cover.start].copy_from_slice(&edge[..cover.start]);
        block[cover.end..].copy_from_slice(&edge[cover.end..bs]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_blocks() {
        assert_eq!(
            Span::covering(1024, 1024, 4096),
            Some(Span {
                offset_blocks: 0,
                num_blocks: 1,
                head_bytes: 1024,
                len_bytes: 1024
            })
        );
        let s = Span::covering(4095, 2, 4096).unwrap();
        assert_eq!((s.offset_blocks, s.num_blocks, s.head_bytes), (0, 2, 4095));
        assert!(Span::covering(8192, 4096, 4096).unwrap().is_aligned(4096));
        assert!(!Span::covering(8192, 512, 4096).unwrap().is_aligned(4096));
        assert_eq!(Span::covering(u64::MAX, 2, 4096), None);
        assert_eq!(Span::covering(0, 0, 4096), None);
        assert_eq!(Span::covering(0, 1, 0), None);
    }

    /// Runs a plan against a model disk as the connection does, step by step.
    fn run(disk: &mut [u8], plan: &Plan, payload: &[u8]) {
        let bs = plan.block_size as usize;
        let s = plan.span;
        let first = s.offset_blocks as usize * bs;
        let mut buf = vec![0u8; s.covering_bytes(plan.block_size) as usize];
        if !plan.zeroes {
            let h = s.head_bytes as usize;
            buf[h..h + payload.len()].copy_from_slice(payload);
        }
        let mut edge = vec![0xeeu8; bs];
        let mut step = None;
        let mut steps = 0;
        while let Some(st) = plan.next(step) {
            steps += 1;
            assert!(steps <= 5, "{plan:?} does not end");
            match st {
                Step::ReadHead => {
                    edge.copy_from_slice(&disk[first..first + bs]);
                    assert!(plan.merge(st, &mut edge, &mut buf));
                }
                Step::ReadTail => {
                    let at = s.last_block() as usize * bs;
                    edge.copy_from_slice(&disk[at..at + bs]);
                    assert!(plan.merge(st, &mut edge, &mut buf));
                }
                Step::WriteAll => disk[first..first + buf.len()].copy_from_slice(&buf),
                Step::WriteHead => disk[first..first + bs].copy_from_slice(&edge),
                Step::WriteTail => {
                    let at = s.last_block() as usize * bs;
                    disk[at..at + bs].copy_from_slice(&edge);
                }
                Step::ZeroMiddle => {
                    let (m, n) = plan.middle();
                    disk[m as usize * bs..(m + n) as usize * bs].fill(0);
                }
            }
            step = Some(st);
        }
    }

    /// Every range of a small disk, written and zeroed through the plan, changes exactly
    /// its own bytes.
    #[test]
    fn every_range_changes_exactly_its_bytes() {
        const BS: u32 = 8;
        const DISK: usize = 5 * BS as usize;
        for zeroes in [false, true] {
            for off in 0..DISK {
                for len in 1..=DISK - off {
                    let span = Span::covering(off as u64, len as u64, BS).unwrap();
                    if span.is_aligned(BS) {
                        continue;
                    }
                    let plan = Plan {
                        span,
                        block_size: BS,
                        zeroes,
                    };
                    let mut disk: Vec<u8> = (0..DISK as u8).map(|b| b | 0x80).collect();
                    let payload: Vec<u8> = (0..len as u8).map(|b| b.wrapping_add(1)).collect();
                    let mut want = disk.clone();
                    if zeroes {
                        want[off..off + len].fill(0);
                    } else {
                        want[off..off + len].copy_from_slice(&payload);
                    }
                    run(&mut disk, &plan, &payload);
                    assert_eq!(disk, want, "{plan:?}");
                }
            }
        }
    }

    #[test]
    fn steps_of_typical_requests() {
        let plan = |off, len, zeroes| Plan {
            span: Span::covering(off, len, 4096).unwrap(),
            block_size: 4096,
            zeroes,
        };
        let steps = |p: Plan| {
            let mut v = Vec::new();
            let mut s = None;
            while let Some(n) = p.next(s) {
                v.push(n);
                s = Some(n);
            }
            v
        };
        // ext4's superblock: one partial block.
        assert_eq!(
            steps(plan(1024, 1024, false)),
            [Step::ReadHead, Step::WriteAll]
        );
        // 512 bytes at the end of a block.
        assert_eq!(
            steps(plan(3584, 512, false)),
            [Step::ReadHead, Step::WriteAll]
        );
        assert_eq!(
            steps(plan(512, 8192, false)),
            [Step::ReadHead, Step::ReadTail, Step::WriteAll]
        );
        assert_eq!(
            steps(plan(512, 1 << 30, true)),
            [
                Step::ReadHead,
                Step::WriteHead,
                Step::ReadTail,
                Step::WriteTail,
                Step::ZeroMiddle
            ]
        );
        let p = plan(512, 1 << 30, true);
        assert_eq!(p.middle(), (1, (1 << 30) / 4096 - 1));
        assert_eq!(
            steps(plan(4096, 4097, true)),
            [Step::ReadTail, Step::WriteTail, Step::ZeroMiddle]
        );
    }

    #[test]
    fn merge_refuses_short_buffers() {
        let p = Plan {
            span: Span::covering(100, 8000, 4096).unwrap(),
            block_size: 4096,
            zeroes: false,
        };
        let mut edge = vec![0u8; 4096];
        assert!(!p.merge(Step::ReadTail, &mut edge, &mut [0u8; 4096]));
        assert!(!p.merge(Step::ReadHead, &mut [0u8; 100], &mut [0u8; 8192]));
        assert!(p.merge(Step::ReadHead, &mut edge, &mut [0u8; 8192]));
    }
}
