//! Growing a pool onto the space its base bdevs gained (`bdev_lvol_grow_lvstore`).
//!
//! A physical segment's number is its container's first segment plus its place in the
//! container, so only the **last** container can grow without renumbering the
//! segments every table names; a pool of one bdev (the usual lvol store) grows with it.
//!
//! The space map (`meta/space_map.rs`) has a count per segment in pages laid out when
//! the pool was created: the pool can grow as far as those pages count
//! ([`crate::vdisk::meta::superblock::max_segments_for`]), never further (that would
//! move the metadata area). Past it the grow is refused with the limit.
//!
//! **Crash safety.** The new size lives in the superblock's container record. A grow
//! counts the new segments (free) and marks their space-map pages changed, then runs
//! a checkpoint: its space-map pages go to the places the superblock in force does
//! not point at, and the superblock of the new transaction records the new size. A
//! crash before that superblock is durable leaves the old one in force — the old
//! size, its own space-map pages — and one after it the new size. No new segment is
//! allocatable before the checkpoint returned, so no log record appended before it can
//! name one (a replay onto the old size would refuse it).

use super::VdiskError;
use super::controller::Controller;
use super::map::PhysSeg;
use std::sync::atomic::Ordering;

/// What a grow did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Grown {
    /// Segments of the pool (all containers, reserved ones included) before and after.
    pub old_segments: u64,
    pub new_segments: u64,
    /// Segments usable for data after.
    pub data_segments: u64,
}

impl Controller {
    /// Grows the pool's last container to its bdev's size now, durably; the space
    /// takes the new segments once the checkpoint recording them is durable.
    pub(crate) async fn grow_pool(&self) -> Result<Grown, VdiskError> {
        self.check_usable()?;
        let shared = &self.shared;
        let seg = shared.geo.segment_bytes();
        let pool = shared.name.get();
        let last = shared.containers.len() - 1;
        let bytes = |i: usize| {
            let b = &shared.containers[i].bdev;
            b.num_blocks() * b.block_size() as u64
        };
        let (old_total, old_last) = {
            let st = self.st.borrow();
            (st.containers.iter().sum::<u64>(), st.containers[last])
        };
        // A container other than the last that grew cannot give its space.
        for (i, c) in shared.containers.iter().enumerate().take(last) {
            if bytes(i) / seg > c.segments() {
                tracing::warn!(pool = %pool, bdev = c.bdev.name(), container = i,
                    "the bdev grew, but only the pool's last container can grow (segment \
                     numbers follow the containers' order); its new space stays unused");
            }
        }
        let want_last = bytes(last) / seg;
        if want_last <= old_last {
            // Nothing to take (SPDK's grow of a store whose bdev did not grow succeeds).
            // A grow that is still committing is waited for, so that what this answers
            // is durable.
            self.wait_grown(old_total).await?;
            return Ok(Grown {
                old_segments: old_total,
                new_segments: old_total,
                data_segments: shared.data_segments(),
            });
        }
        let want_total = old_total - old_last + want_last;
        if want_total > shared.max_segments {
            return Err(VdiskError::GrowLimit {
                pool,
                bdev: shared.containers[last].bdev.name().to_string(),
                want_segments: want_total,
                max_segments: shared.max_segments,
                segment_bytes: seg,
            });
        }
        {
            let mut st = self.st.borrow_mut();
            st.space.grow_last(want_last);
            st.containers[last] = want_last;
            // A change no log record describes: the checkpoint below writes it.
            st.changes += 1;
        }
        tracing::info!(pool = %pool, old_segments = old_total, new_segments = want_total,
            "pool growing");
        self.wait_grown(want_total).await?;
        tracing::info!(pool = %pool, segments = want_total,
            data_segments = shared.data_segments(), "pool grown");
        Ok(Grown {
            old_segments: old_total,
            new_segments: want_total,
            data_segments: shared.data_segments(),
        })
    }

    /// Checkpoints, then makes the segments below `total` (recorded by that checkpoint)
    /// the pool's: the containers' sizes every core sees, and allocatable.
    async fn wait_grown(&self, total: u64) -> Result<(), VdiskError> {
        if self.shared.total_segments() >= total {
            return Ok(());
        }
        self.commit().await.map_err(|status| VdiskError::Io {
            what: format!(
                "committing the growth of pool `{}` to {total} segments",
                self.shared.name
            ),
            status,
        })?;
        let last = self.shared.containers.len() - 1;
        let c = &self.shared.containers[last];
        let last_segments = total - c.first_seg;
        c.segments.fetch_max(last_segments, Ordering::AcqRel);
        self.st.borrow_mut().space.release_grown(total as PhysSeg);
        self.update_free();
        Ok(())
    }
}
