//! Which virtual segments of a disk may hold an extent: a bitmap shared by the disk's
//! agents, read before the view on a write.
//!
//! **Why.** A first write into a segment not mapped yet finds that out by a descent of
//! the agent's view; on a big disk written at random that descent misses the cache at
//! every level (a table of a million extents is many times the core's L2), and the
//! request waits for each miss in turn — only to fault to the controller, which looks
//! the segment up again (its batch of faults waits for its cold leaves together). A bit
//! per segment answers "not mapped" with one line, which for a 4 TiB disk of 1 MiB
//! segments is 512 KiB in all.
//!
//! **Why it is only a hint.** A clear bit sends a write to the controller as a write
//! fault without looking at the view. A write fault is always safe: the controller
//! resolves it from its own table (a segment already writable is answered at once), and
//! the request is tried again. So a bit must be set only for the request not to fault
//! again, and it is: the agent sets it when the fault's answer comes back, before it
//! tries the request again (`agent/fault.rs`). Bits are never cleared (an unmapped
//! segment whose bit is set is looked up, as without the bitmap), and reads never
//! consult it — a read of a segment whose bit is clear while the view maps it would
//! read zeros.
//!
//! **Where bits are set.** By the controller for every extent it sets in a disk's table
//! (`Controller::set_extents_many`, before the agents hear of it) and in a thick disk's
//! first table; at open from the tables loaded (so overwrites after a restart do not
//! fault once each); and by the agent on each fault's answer. A disk that takes a table
//! another way (a clone, a snapshot, a revert) starts clear: its extents are shared, so
//! its first write at each faults anyway.
//!
//! A disk of more than [`MOST_BITS`] segments gets one bit per run of segments (a power
//! of two); segments past the size the bitmap was made for (a disk grown since) read as
//! "may be mapped".

use std::sync::atomic::{AtomicU64, Ordering};

/// Most bits of one disk's bitmap (1 MiB; the memory is taken as it is touched).
const MOST_BITS: u64 = 1 << 23;

/// The bitmap of one disk (see the module's text).
#[derive(Debug)]
pub(crate) struct MaybeMapped {
    words: Box<[AtomicU64]>,
    /// log2 of the virtual segments one bit stands for.
    shift: u32,
}

impl MaybeMapped {
    /// A clear bitmap for a disk of `segments` virtual segments.
    pub(crate) fn new(segments: u64) -> MaybeMapped {
        let mut shift = 0;
        while segments.div_ceil(1 << shift) > MOST_BITS {
            shift += 1;
        }
        let bits = segments.div_ceil(1 << shift).max(1);
        let words = (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        MaybeMapped { words, shift }
    }

    /// The word and bit of `vseg`; `None` past the bitmap.
    #[inline]
    fn place(&self, vseg: u64) -> Option<(&AtomicU64, u64)> {
        let bit = vseg >> self.shift;
        let w = self.words.get(usize::try_from(bit / 64).ok()?)?;
        Some((w, 1 << (bit % 64)))
    }

    /// False only if no extent of the disk covered `vseg` when this core last heard
    /// from the controller about it (see the module's text: a hint for writes).
    #[inline]
    pub(crate) fn may_hold(&self, vseg: u64) -> bool {
        self.place(vseg)
            .is_none_or(|(w, bit)| w.load(Ordering::Relaxed) & bit != 0)
    }

    /// Notes that `vseg` may hold an extent.
    #[inline]
    pub(crate) fn note(&self, vseg: u64) {
        self.note_run(vseg, 1);
    }

    /// Clears every bit (tests: a disk whose extents the bitmap does not know).
    #[cfg(test)]
    pub(crate) fn forget_all(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Notes segments `[vseg, vseg + len)`.
    pub(crate) fn note_run(&self, vseg: u64, len: u64) {
        let (first, last) = (vseg >> self.shift, (vseg + len.max(1) - 1) >> self.shift);
        let mut b = first;
        while b <= last {
            let Some(w) = usize::try_from(b / 64).ok().and_then(|i| self.words.get(i)) else {
                return;
            };
            // The bits of this word in [b, last].
            let lo = b % 64;
            let hi = if last / 64 == b / 64 { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            // Set already (the common case once a segment faulted): no locked write.
            if w.load(Ordering::Relaxed) & mask != mask {
                w.fetch_or(mask, Ordering::Relaxed);
            }
            b = (b / 64 + 1) * 64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bit_is_set_by_a_note_and_runs_set_exactly_their_bits() {
        let m = MaybeMapped::new(1000);
        assert!((0..1000).all(|v| !m.may_hold(v)));
        m.note(5);
        assert!(m.may_hold(5) && !m.may_hold(4) && !m.may_hold(6));
        m.note_run(60, 70);
        assert!((60..130).all(|v| m.may_hold(v)));
        assert!(!m.may_hold(59) && !m.may_hold(130));
        // Past the size it was made for: may be mapped.
        assert!(m.may_hold(1024) && m.may_hold(u64::MAX));
    }

    #[test]
    fn a_big_disk_gets_a_bit_per_run_of_segments() {
        let m = MaybeMapped::new(MOST_BITS * 4 + 1);
        assert_eq!(m.shift, 3);
        assert!(m.words.len() as u64 * 64 <= MOST_BITS);
        m.note(8 * 100 + 3);
        assert!((800..808).all(|v| m.may_hold(v)));
        assert!(!m.may_hold(799) && !m.may_hold(808));
    }
}
