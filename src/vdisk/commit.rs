//! Making the controller's state durable.
//!
//! A commit (a checkpoint, with an intent log: `intent.rs`), in order:
//! 1. persist changed fills: each dirty fill's leaf is copied (if it was already
//!    written), so the new leaf is written with the fill's bits as they are *now*;
//! 2. capture: the roots, records, counters, space map and log position at one instant;
//!    then every node not yet written under those roots, a batch at a time between
//!    yields, and the directory — the bits of every fill are read here. The node pages
//!    are written as they accumulate (a few MiB at a time, not the whole checkpoint held
//!    in memory): they are free in the committed state, and nothing points at them
//!    before the superblock of step 5;
//! 3. flush the data containers — every write whose bits were read in (2) completed
//!    before its bits were set, so it is durable now;
//! 4. write the rest of the metadata pages, flush;
//! 5. write the superblock into the slot of this transaction's parity, flush;
//! 6. drain every agent (a blocking barrier) and make what was freed before the
//!    capture reusable — at once if the drain completes within its time limit, else
//!    later, when it does (the commit does not wait for a stuck request).
//!
//! A crash before (5) completes leaves the previous superblock in force, and it never
//! points at a page or a segment written since — those were free in it. A metadata
//! write error fails the pool (no further changes; flushes fail), as dm-thin does.
//!
//! **Metadata space.** A commit needs a page for every table node built since the last
//! one and for every directory page; a full metadata area must answer "no space" to the
//! changes that would need more — never fail the commit of changes already let
//! through. So every change takes its pages from the pool's budget
//! (`shared::MetaBudget`) before it is made, and is refused (`NoMetadataSpace`, or
//! Capacity Exceeded for I/O) when they are not there:
//! - the controller keeps the budget at: free pages − nodes not yet written − directory
//!   pages the next commit writes − a small slack, and takes a bound of what a table
//!   edit can build (`splice_bound`) before making it; after it, the exact count is in
//!   the nodes not yet written;
//! - agents take a leaf's path (`MetaBudget::fill_cost`) before the first change of a
//!   fill since it was last committed (the commit copies its leaf); those charges are
//!   released two commits later (a charge made just before one commit's capture may be
//!   for a fill that capture missed, persisted by the next), the slack covers a fill
//!   dirtied again between an agent's look and the capture;
//! - a commit checks first that its pages are there; if not (which the budget should
//!   prevent) it fails with Capacity Exceeded and changes nothing — the pool goes on.
//!
//! Deleting disks frees their pages at the commits after.

use super::VdiskError;
use super::controller::Controller;
use super::map::Extent;
use super::meta::space_map::SpaceMapStage;
use super::meta::superblock::Superblock;
use super::meta::{self, BlockPtr, NO_PAGE, PAGE_BYTES, SUPERBLOCK_OFFSET};
use super::table::{self, LEAF_BUDGET_BYTES, MAX_EXTENT_BUDGET, MAX_FANOUT, Node, NodeKind};
use crate::bdev::{IoBuf, IoStatus};
use crate::reactor;
use crate::reactor::until;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::Poll;

use super::load::{flush, write_bytes_fua};

/// The longest a background step of the controller (encoding a checkpoint, freeing
/// what it replaced, logging fills) holds the core before it yields: a snapshot's or a
/// mapping fault's steps wait for the step under way, so they wait at most this long.
pub(crate) const TURN: std::time::Duration = std::time::Duration::from_micros(100);

/// How long a checkpoint's writes wait for a log append's writes to complete before they
/// go ahead anyway.
pub(crate) const LOG_WRITE_PRIORITY: std::time::Duration = std::time::Duration::from_millis(20);

impl Controller {
    /// Commits (or waits for a commit that started after this call): when it returns
    /// `Ok`, everything written before the call is durable.
    pub(crate) async fn commit(&self) -> Result<(), IoStatus> {
        let ticket = {
            let mut cs = self.commit_state.borrow_mut();
            cs.requested += 1;
            cs.requested
        };
        let run = self
            .wait_commit_state(|cs| {
                if cs.done >= ticket {
                    Poll::Ready(false)
                } else if !cs.running {
                    cs.running = true;
                    Poll::Ready(true)
                } else {
                    Poll::Pending
                }
            })
            .await;
        if !run {
            return match self.commit_state.borrow().last {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        let covers = self.commit_state.borrow().requested;
        let r = self.commit_once().await;
        let waiters = {
            let mut cs = self.commit_state.borrow_mut();
            cs.running = false;
            cs.done = covers;
            cs.last = r.err();
            std::mem::take(&mut cs.waiters)
        };
        for w in waiters {
            w.wake();
        }
        r
    }

    pub(crate) fn fail(&self, why: String) -> IoStatus {
        tracing::error!(pool = %self.shared.name, "{why}; the pool refuses further changes");
        self.st.borrow_mut().failed = Some(why);
        IoStatus::MediaError
    }

    /// Copies the leaves of dirty fills that were already written, so that the next
    /// commit rewrites them with the fills' bits. Returns true if anything was touched.
    /// A commit calls it, and so do a snapshot and a clone before they share a table:
    /// the shared table then holds the copies, which the next checkpoint writes — the
    /// owner's later writes go elsewhere (copy-on-write), and no checkpoint would look
    /// for them in the sharer's table.
    ///
    /// With a log, the log takes every changed fill first (an append that runs while
    /// this checkpoint is not yet durable must find them in its records) and copies
    /// their written leaves as it logs them ([`Controller::log_dirty_fills`], every few
    /// milliseconds): only what changed since is left to log and copy here.
    pub(crate) fn persist_dirty_fills(&self) -> bool {
        let logged = self.log_dirty_fills();
        let mut wanted: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        let mut st = self.st.borrow_mut();
        while let Some(q) = self.shared.dirty_fills.pop() {
            // Whichever entry of the segment comes first takes the change (see
            // [`super::map::DirtyFill`]).
            if self.shared.fills.take_dirty(q.seg)
                && !self.shared.fills.allocated_since_checkpoint(q.seg)
            {
                wanted.entry(q.disk).or_default().insert(q.vseg);
            }
        }
        copy_written_leaves(&mut st, wanted) || logged
    }

    /// Flushes every data container that has a volatile write cache, all at once (on one
    /// without, a write is durable when it completes: nothing to wait for).
    pub(crate) async fn flush_containers(&self) -> Result<(), IoStatus> {
        join_io(
            (self.shared.containers.iter())
                .filter(|c| c.bdev.write_cache())
                .map(|c| flush(&c.bdev))
                .collect(),
        )
        .await
    }

    fn stopped(&self) -> bool {
        self.st.borrow().closed && self.crashed.get()
    }

    pub(crate) async fn commit_once(&self) -> Result<(), IoStatus> {
        self.meta_writes_refused()?;
        // Most of the changed fills in turns of the core, the rest (those changed
        // meanwhile) at once.
        self.log_dirty_fills_in_turns().await;
        self.meta_writes_refused()?;
        self.persist_dirty_fills();
        self.rotate_fill_charges();
        let needs_meta = {
            let st = self.st.borrow();
            // With a log, also to free the ring of records all older than the last
            // checkpoint.
            st.changes != st.committed_changes || st.log.as_ref().is_some_and(|l| l.used() > 0)
        };
        if !needs_meta {
            self.sync_meta_budget();
            return self.flush_containers().await;
        }
        // Capture.
        let captured = match self.capture().await {
            Ok(c) => c,
            Err(CaptureError::Full { need, free }) => {
                tracing::error!(pool = %self.shared.name, need, free,
                    "the metadata area is full: this commit cannot be written (nothing was changed; delete disks or snapshots to free pages)");
                return Err(IoStatus::CapacityExceeded);
            }
            Err(CaptureError::Failed(why)) => return Err(self.fail(why)),
            Err(CaptureError::Stopped) => return Err(IoStatus::Aborted),
        };
        self.sync_meta_budget();
        if let Err(e) = self.flush_containers().await {
            return Err(self.fail(format!("flushing the data containers failed: {e:?}")));
        }
        if self.stopped() {
            return Err(IoStatus::Aborted);
        }
        if let Err(e) = self.write_pages(&captured.pages, false).await {
            return Err(self.fail(format!("writing metadata pages failed: {e:?}")));
        }
        if self.stopped() {
            return Err(IoStatus::Aborted);
        }
        let meta_bdev = self.shared.meta_bdev.clone();
        let r = async {
            // The pages are durable before the superblock that points at them is written;
            // the superblock itself is written with force-unit-access.
            flush(&meta_bdev).await?;
            let slot = SUPERBLOCK_OFFSET + (captured.sb.txn % 2) * PAGE_BYTES as u64;
            let ch = crate::bdev::Channel::get(&meta_bdev).map_err(|_| IoStatus::InternalError)?;
            let bs = meta_bdev.block_size() as u64;
            let sb = IoBuf::from_slice(&captured.sb.encode());
            let n = sb.len() as u64 / bs;
            let (_, st) = ch
                .io(crate::bdev::BdevIo::write(slot / bs, n, sb).with_fua(true))
                .await;
            if st.is_success() { Ok(()) } else { Err(st) }
        }
        .await;
        if let Err(e) = r {
            return Err(self.fail(format!("writing the superblock failed: {e:?}")));
        }
        // Durable: the superblock is written.
        let txn = captured.sb.txn;
        {
            let mut st = self.st.borrow_mut();
            st.committed_txn = txn;
            st.committed_changes = captured.changes;
            if let (Some(l), Some(a)) = (st.log.as_mut(), captured.sb.log) {
                l.checkpointed(a.replay_seq, a.replay_lsn, captured.changes);
            }
            st.dir_pages = captured.dir_pages;
            st.space_map = captured.space_map;
        }
        let pages = captured.pages_written + captured.pages.len();
        tracing::debug!(pool = %self.shared.name, txn, pages, "committed");
        self.release_after_drain(txn).await;
        Ok(())
    }

    /// Makes what was freed up to transaction `txn` (now committed) reusable once nothing
    /// can still use it: after a pool-wide drain barrier. The commit waits for the drain
    /// at most `TimeLimits::commit_drain` (not at all while an earlier drain is still
    /// stuck); past that it answers — it is durable — and the space stays unreusable
    /// until the drain completes, in the background. A stuck request thus delays reuse,
    /// never a flush; and nothing freed is reused under I/O that might still touch it.
    async fn release_after_drain(&self, txn: u64) {
        let mut drained = Box::pin(self.barrier_all());
        let limit = if self.release_stalls.get() > 0 {
            std::time::Duration::ZERO
        } else {
            self.limits.get().commit_drain
        };
        let deadline = reactor::now().after(limit);
        if until(deadline, drained.as_mut()).await.is_some() {
            self.release(txn);
            return;
        }
        if !limit.is_zero() {
            tracing::warn!(pool = %self.shared.name, txn, waited_ms = limit.as_millis() as u64,
                "I/O in flight did not drain after the commit: what it freed stays unreusable until it does");
        }
        self.release_stalls.set(self.release_stalls.get() + 1);
        let me = self.rc();
        reactor::spawn_local(async move {
            drained.await;
            me.release_stalls.set(me.release_stalls.get() - 1);
            me.release(txn);
            tracing::info!(pool = %me.shared.name, txn, "the stuck I/O drained: freed space released");
        })
        .detach();
    }

    /// Makes what was freed up to and including `txn` allocatable.
    fn release(&self, txn: u64) {
        self.st.borrow_mut().space.committed(txn);
        self.update_free();
    }

    /// Brings the metadata budget up to date with the controller's terms: free pages,
    /// less the nodes not yet written, the directory pages the next commit writes, and
    /// the slack.
    pub(crate) fn sync_meta_budget(&self) {
        let (free, unwritten, dir) = {
            let st = self.st.borrow();
            (
                st.space.free_pages(),
                st.space.unwritten_nodes(),
                pages_beside_nodes(st.disks.len()),
            )
        };
        let budget = &self.shared.meta_budget;
        let slack = (self.shared.cores.len() as u64 + 1) * budget.fill_cost();
        // Persisting the dirty fills copies each written node at most once, a leaf into
        // at most two pages: fill charges beyond twice the pages in use (and the slack,
        // for a fill looked at as the cap moved) are not needed.
        budget.set_fill_cap(2 * self.shared.meta_pages.saturating_sub(free) + slack);
        let local = free as i64 - unwritten as i64 - dir as i64 - slack as i64;
        let mut l = self.meta.borrow_mut();
        budget.give(local - l.local);
        l.local = local;
    }

    /// Takes `pages` of the metadata budget for a change about to be made; they go
    /// back when the reservation drops, by when the change is counted exactly (in the
    /// nodes not yet written, the directory).
    pub(crate) fn reserve_meta(&self, pages: u64) -> Result<MetaReservation<'_>, VdiskError> {
        self.sync_meta_budget();
        let budget = &self.shared.meta_budget;
        if !budget.try_take(pages) {
            return Err(VdiskError::NoMetadataSpace {
                need: pages,
                free: budget.available().max(0) as u64,
            });
        }
        self.meta.borrow_mut().reserved += pages;
        Ok(MetaReservation { c: self, pages })
    }

    /// At most how many pages replacing `[from, to)` of `disk`'s table with extents of
    /// `new_bytes` encoded bytes adds to the next commit.
    pub(crate) fn splice_cost(&self, disk: u64, from: u64, to: u64, new_bytes: usize) -> u64 {
        let st = self.st.borrow();
        let root = st.disks.get(&disk).and_then(|d| d.root.as_ref());
        splice_bound(root, from, to, new_bytes)
    }

    /// [`Controller::set_extents`] if the metadata area has room for what it may add;
    /// else nothing changes and the answer is `NoMetadataSpace`.
    pub(crate) fn try_set_extents(
        &self,
        disk: u64,
        from: u64,
        to: u64,
        exts: Vec<Extent>,
    ) -> Result<(), VdiskError> {
        let bytes = exts.iter().map(table::extent_budget).sum();
        let _meta = self.reserve_meta(self.splice_cost(disk, from, to, bytes))?;
        self.set_extents(disk, from, to, exts);
        Ok(())
    }

    /// Releases the fill charges of two commits ago (their fills are persisted by now)
    /// and remembers those made since the last rotation. Runs right after the dirty
    /// fills are persisted.
    fn rotate_fill_charges(&self) {
        let budget = &self.shared.meta_budget;
        let mut l = self.meta.borrow_mut();
        let outstanding = budget.fill_charged().max(0);
        budget.give(l.charged_before);
        budget.fill_charges_released(l.charged_before);
        l.charged_before = (outstanding - l.charged_before).max(0);
    }

    /// True if fill charges wait for commits to be released.
    pub(crate) fn fill_charges_outstanding(&self) -> bool {
        self.shared.meta_budget.fill_charged() > 0
    }

    /// Serialises the state to commit; assigns pages to new nodes. Changes nothing if
    /// the pages it needs are not there.
    ///
    /// The state is taken at one instant — the roots (held, so that nothing they reach
    /// is freed meanwhile), the disk records, the counters, the space map, the log
    /// position — and the new nodes under those roots are then serialised a batch at a
    /// time, yielding to the reactor between batches: a checkpoint of tens of thousands
    /// of pages does not stop the core's I/O and mapping faults while it encodes. Nodes
    /// are immutable (copy-on-write), so what the roots reach does not change; a node
    /// given its page here and replaced meanwhile is freed into the next transaction.
    async fn capture(&self) -> Result<Captured, CaptureError> {
        /// Space-map pages encoded between two yields (~0.1 ms).
        const SM_PAGES_BETWEEN_YIELDS: usize = 64;
        /// Space-map pages encoded between two looks at the clock.
        const SM_PAGES_BETWEEN_LOOKS: usize = 8;
        let mut begun = self.capture_begin()?;
        let mut pages = Vec::new();
        let uuid = self.shared.uuid;
        let mut turn = reactor::Slice::new(TURN);
        let mut encoded = 0;
        while begun.space_map.left() > 0 {
            begun
                .space_map
                .encode(SM_PAGES_BETWEEN_LOOKS, &uuid, &mut pages);
            encoded += SM_PAGES_BETWEEN_LOOKS;
            if encoded >= SM_PAGES_BETWEEN_YIELDS || turn.spent() {
                turn.next_turn().await;
                encoded = 0;
            }
        }
        let mut pages_written = 0;
        let mut roots = Vec::with_capacity(begun.roots.len());
        let mut failed = None;
        for r in &begun.roots {
            match r {
                Some(root) => match self
                    .write_tree(root, begun.sb.txn, &mut pages, &mut pages_written)
                    .await
                {
                    Ok(p) => roots.push(p),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                },
                None => roots.push(BlockPtr::NONE),
            }
        }
        // The held roots are let go a few hundred nodes at a time: the tables moved on
        // while the capture ran, and what only the held versions reach is freed now.
        let mut pending: Vec<Arc<Node>> = begun.roots.iter().flatten().cloned().collect();
        let mut released = 0;
        while !table::Node::release_some(&mut pending, &mut self.st.borrow_mut().space, 32) {
            released += 32;
            if released >= 256 || turn.spent() {
                turn.next_turn().await;
                released = 0;
            }
        }
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        if let Some(e) = failed {
            return Err(e);
        }
        let txn = begun.sb.txn;
        let (space_map, counts) = begun.space_map.finish(&uuid, &mut pages);
        st.sm_counts = counts;
        // Directory: written anew, last page first (each page points at the next one with
        // its checksum); the old chain is freed with this transaction.
        let mut recs = begun.recs;
        for (rec, root) in recs.iter_mut().zip(&roots) {
            rec.root_page = root.page;
        }
        for d in st.disks.values_mut() {
            if let Some(k) = recs.iter().position(|r| r.id == d.rec.id) {
                d.rec.root_page = recs[k].root_page;
            }
        }
        let per = meta::directory::DIR_RECORDS_PER_PAGE;
        let n_dir = recs.len().div_ceil(per);
        let mut dir_pages = Vec::new();
        for _ in 0..n_dir {
            dir_pages.push(st.space.alloc_page().ok_or_else(CaptureError::failed)?);
        }
        let mut next = BlockPtr::NONE;
        for i in (0..n_dir).rev() {
            let (lo, hi) = (i * per, ((i + 1) * per).min(recs.len()));
            let b = meta::directory::encode_directory(
                dir_pages[i],
                txn,
                &uuid,
                next,
                &recs[lo..hi],
                &roots[lo..hi],
            );
            next = BlockPtr::of(&b);
            pages.push((dir_pages[i], b));
        }
        for p in std::mem::take(&mut st.dir_pages) {
            st.space.retire_page(p, txn);
        }
        let mut sb = begun.sb;
        sb.directory = next;
        sb.sm_index = space_map.index.clone();
        Ok(Captured {
            pages,
            pages_written,
            sb,
            changes: begun.changes,
            dir_pages,
            space_map,
        })
    }

    /// The instant of a capture: see [`Controller::capture`].
    fn capture_begin(&self) -> Result<Begun, CaptureError> {
        // First: the leaves of the segments noted since are captured below (forgetting
        // them early only costs the copies' descents).
        self.shared.fills.checkpoint_began();
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let shared = &self.shared;
        // The pages this capture writes: the unwritten nodes the tables reach (at most
        // all the unwritten nodes, which the space counts; counting the reachable ones
        // walks every unwritten node, milliseconds on the controller's core after a
        // few snapshots of a big table each kept their own leaves, so only when the
        // bound does not fit) and the directory.
        let free = st.space.free_pages();
        let dir = pages_beside_nodes(st.disks.len());
        let mut need = st.space.unwritten_nodes() + dir;
        if need > free {
            need = unwritten_reachable(st.disks.values().filter_map(|d| d.root.as_ref())) + dir;
        }
        if need > free {
            return Err(CaptureError::Full { need, free });
        }
        let txn = st.space.txn_open;
        st.space.txn_open += 1;
        let changes = st.changes;
        let uuid = shared.uuid;
        let roots: Vec<Option<Arc<Node>>> = st.disks.values().map(|d| d.root.clone()).collect();
        for r in roots.iter().flatten() {
            r.retain();
        }
        let recs: Vec<meta::directory::DiskRecord> =
            st.disks.values().map(|d| d.rec.clone()).collect();
        // Space map: the pages that changed in this transaction, and their index pages,
        // each into the place the committed superblock does not point at — their counts
        // copied now, encoded by the capture after.
        let changed: Vec<u64> = st.space.sm_pages_changed_since(txn).collect();
        let space_map = SpaceMapStage::take(
            &st.space_map,
            changed,
            &st.space,
            txn,
            std::mem::take(&mut st.sm_counts),
        );
        let sb = Superblock {
            pool_uuid: uuid,
            pool_name: shared.name.get(),
            txn,
            generation: st.generation,
            next_disk_id: st.next_disk_id,
            segment_bytes: shared.geo.segment_bytes(),
            block_size: shared.geo.block_size,
            meta_first_byte: shared.meta_first_byte,
            meta_pages: shared.meta_pages,
            sm_pages: shared.sm_pages,
            sm_index_pages: st.space_map.index.len() as u64,
            directory: BlockPtr::NONE,
            cow_policy: shared.cow_default as u8,
            separate_metadata: shared.separate_metadata,
            metadata_uuid: shared.meta_label_uuid,
            containers: shared
                .containers
                .iter()
                .zip(&st.containers)
                .map(|(c, &segments)| meta::superblock::ContainerRecord {
                    bdev_uuid: c.label_uuid,
                    segments,
                    reserved_segments: c.reserved,
                })
                .collect(),
            // Set when the space map's pages are encoded.
            sm_index: Vec::new(),
            log: st.log.as_mut().map(|l| {
                let (replay_seq, replay_lsn) = l.captured();
                meta::superblock::LogArea {
                    replay_seq,
                    replay_lsn,
                    ..l.area
                }
            }),
        };
        Ok(Begun {
            sb,
            changes,
            roots,
            recs,
            space_map,
        })
    }

    /// Writes `root`'s unwritten nodes (children first: a parent records each child's
    /// checksum), a batch at a time between yields; returns the pointer to `root`. The
    /// encoded pages gather in `out` and are written whenever they reach a few MiB
    /// (counted in `written`): a checkpoint of tens of thousands of pages holds a few
    /// MiB of them, not all.
    async fn write_tree(
        &self,
        root: &Arc<Node>,
        txn: u64,
        out: &mut Vec<(u64, Vec<u8>)>,
        written: &mut usize,
    ) -> Result<BlockPtr, CaptureError> {
        /// Nodes encoded between two yields (a few hundred microseconds of the core: a
        /// leaf of a scattered table encodes in ~5 µs).
        const BATCH: usize = 32;
        // Pages held before they are written: 1/256 of the metadata area, at most 8
        // MiB — so a small pool's checkpoints (the simulator's, whose crash points cover
        // the writes made during a capture) are written in pieces too.
        let held = (self.shared.meta_pages / 256).clamp(4, 2048) as usize;
        let pool = self.shared.uuid;
        // (node, children visited): post-order without recursion.
        let mut stack: Vec<(Arc<Node>, bool)> = vec![(root.clone(), false)];
        let mut done = 0usize;
        let mut turn = reactor::Slice::new(TURN);
        while let Some((node, expanded)) = stack.pop() {
            if node.page() != NO_PAGE {
                continue;
            }
            match &node.kind {
                NodeKind::Internal { children, .. } if !expanded => {
                    stack.push((node.clone(), true));
                    for c in children.iter().rev() {
                        if c.page() == NO_PAGE {
                            stack.push((c.clone(), false));
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let page = self.alloc_meta_page()?;
            self.st
                .borrow_mut()
                .space
                .node_written(node.kind.pages_to_write());
            let b = match &node.kind {
                NodeKind::Internal { keys, children } => {
                    let mut entries: Vec<(u64, BlockPtr)> = Vec::with_capacity(keys.len() + 4);
                    for (k, c) in keys.iter().zip(children) {
                        entries.push((*k, written_ptr(c)));
                        if let Some((k, page, txn, crc)) = c.overflow_entry() {
                            entries.push((k, BlockPtr { page, txn, crc }));
                        }
                    }
                    meta::node::encode_internal(page, txn, &pool, &entries)
                }
                NodeKind::Leaf { extents } => {
                    // The leaf's extents in order, by reference (no copy of its two
                    // lists merged).
                    let extents: Vec<&Extent> = extents.iter().collect();
                    let extents = &extents[..];
                    let fills = &self.shared.fills;
                    let (b, k) = meta::node::encode_leaf(page, txn, &pool, extents, fills);
                    if k < extents.len() {
                        // Its fills grew past its budget: the rest on a second page.
                        let second = self.alloc_meta_page()?;
                        let rest = &extents[k..];
                        let (b2, k2) = meta::node::encode_leaf(second, txn, &pool, rest, fills);
                        if k2 < rest.len() {
                            return Err(CaptureError::Failed(format!(
                                "a leaf of {} extents does not fit two metadata pages",
                                extents.len()
                            )));
                        }
                        node.set_overflow(table::Overflow {
                            page: second,
                            crc: BlockPtr::of(&b2).crc,
                            at: k,
                        });
                        out.push((second, b2));
                    }
                    b
                }
            };
            let ptr = BlockPtr::of(&b);
            node.set_page(ptr.page, ptr.txn, ptr.crc);
            out.push((ptr.page, b));
            done += 1;
            if out.len() >= held {
                match self.write_pages(out, false).await {
                    Ok(()) => {}
                    Err(IoStatus::Aborted) if self.stopped() => return Err(CaptureError::Stopped),
                    Err(e) => {
                        return Err(CaptureError::Failed(format!(
                            "writing metadata pages failed: {e:?}"
                        )));
                    }
                }
                *written += out.len();
                out.clear();
                turn = reactor::Slice::new(TURN);
            } else if done.is_multiple_of(BATCH) || turn.spent() {
                turn.next_turn().await;
            }
        }
        // A root leaf on two pages: the table's root is an internal node over them.
        if let Some((k, page, t, crc)) = root.overflow_entry()
            && root.lift().is_none()
        {
            let lift = self.alloc_meta_page()?;
            let entries = [(0, written_ptr(root)), (k, BlockPtr { page, txn: t, crc })];
            let b = meta::node::encode_internal(lift, txn, &pool, &entries);
            root.set_lift(lift, txn, BlockPtr::of(&b).crc);
            out.push((lift, b));
        }
        Ok(match root.lift() {
            Some((page, txn, crc)) => BlockPtr { page, txn, crc },
            None => written_ptr(root),
        })
    }

    /// A free metadata page for a capture to write.
    fn alloc_meta_page(&self) -> Result<u64, CaptureError> {
        self.st
            .borrow_mut()
            .space
            .alloc_page()
            .ok_or_else(CaptureError::failed)
    }

    /// Writes pages, coalescing consecutive ones, many at a time. The buffers of a batch
    /// are filled just before it is written, so a checkpoint of many pages does not hold
    /// a second copy of all of them.
    pub(crate) async fn write_pages(
        &self,
        pages: &[(u64, Vec<u8>)],
        fua: bool,
    ) -> Result<(), IoStatus> {
        /// Most runs written at once.
        const BATCH: usize = 64;
        /// Most pages written at once: filling their buffers holds the core (~1 ms
        /// for 2 MiB), and the device's queue holds them ahead of a log append.
        const BATCH_PAGES: usize = 128;
        /// Most pages of one run.
        const RUN: usize = 64;
        let mut sorted: Vec<&(u64, Vec<u8>)> = pages.iter().collect();
        sorted.sort_by_key(|(p, _)| *p);
        // Runs of consecutive pages, as ranges of `sorted`.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i + 1;
            while j < sorted.len() && sorted[j].0 == sorted[j - 1].0 + 1 && j - i < RUN {
                j += 1;
            }
            runs.push((i, j));
            i = j;
        }
        let mut batches: Vec<&[(usize, usize)]> = Vec::new();
        let mut rest = &runs[..];
        while !rest.is_empty() {
            let (mut n, mut pages) = (0, 0);
            while n < rest.len()
                && n < BATCH
                && (n == 0 || pages + rest[n].1 - rest[n].0 <= BATCH_PAGES)
            {
                pages += rest[n].1 - rest[n].0;
                n += 1;
            }
            batches.push(&rest[..n]);
            rest = &rest[n..];
        }
        for batch in batches {
            if self.stopped() {
                return Err(IoStatus::Aborted);
            }
            // A checkpoint's writes wait for a log append's (a snapshot or a flush
            // waits for those), a bounded while.
            if !fua && self.log_writing.get() > 0 {
                let deadline = reactor::now().after(LOG_WRITE_PRIORITY);
                while self.log_writing.get() > 0 && reactor::now() < deadline {
                    reactor::yield_now().await;
                }
            }
            let bdev = &self.shared.meta_bdev;
            let writes: Vec<_> = batch
                .iter()
                .map(|&(i, j)| {
                    let mut buf = IoBuf::new((j - i) * PAGE_BYTES);
                    for (k, (_, b)) in sorted[i..j].iter().enumerate() {
                        buf[k * PAGE_BYTES..(k + 1) * PAGE_BYTES].copy_from_slice(b);
                    }
                    let off = self.shared.meta_first_byte + sorted[i].0 * PAGE_BYTES as u64;
                    write_bytes_fua(bdev, off, buf, fua)
                })
                .collect();
            join_io(writes).await?;
        }
        Ok(())
    }
}

/// Runs the I/O futures `ios` together in the calling task and returns the first error
/// once all have finished. Each is submitted at its first poll, all in this one, and
/// their completions wake this task directly: no task per I/O, whose scheduling would
/// add a reactor turn under load before each one is submitted and another after it
/// completes (a log append waits for three such steps).
pub(crate) async fn join_io<F: std::future::Future<Output = Result<(), IoStatus>>>(
    ios: Vec<F>,
) -> Result<(), IoStatus> {
    let mut ios: Vec<Option<std::pin::Pin<Box<F>>>> =
        ios.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut first_err = None;
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in ios.iter_mut() {
            let Some(f) = slot else { continue };
            match f.as_mut().poll(cx) {
                Poll::Ready(r) => {
                    if let Err(e) = r {
                        first_err.get_or_insert(e);
                    }
                    *slot = None;
                }
                Poll::Pending => pending = true,
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    first_err.map_or(Ok(()), Err)
}

/// Why a capture could not be made.
enum CaptureError {
    /// The metadata area lacks pages: nothing was changed.
    Full { need: u64, free: u64 },
    /// The state is inconsistent, or a page could not be written (the pool fails).
    Failed(String),
    /// The pool is stopping.
    Stopped,
}

impl CaptureError {
    fn failed() -> CaptureError {
        CaptureError::Failed("the metadata area is full after the capture's check".into())
    }
}

/// The controller's side of the metadata budget.
#[derive(Debug, Default)]
pub(crate) struct MetaLedger {
    /// What the controller's terms came to at the last sync (see
    /// [`Controller::sync_meta_budget`]).
    local: i64,
    /// Pages taken by reservations still held.
    reserved: u64,
    /// Fill charges outstanding at the last rotation, released at the next.
    charged_before: i64,
}

/// Pages of the metadata budget held for a change under way.
pub(crate) struct MetaReservation<'a> {
    c: &'a Controller,
    pages: u64,
}

impl Drop for MetaReservation<'_> {
    fn drop(&mut self) {
        self.c.meta.borrow_mut().reserved -= self.pages;
        self.c.shared.meta_budget.give(self.pages as i64);
    }
}

/// The pointer to a written node's (first) page.
fn written_ptr(n: &Node) -> BlockPtr {
    let (txn, crc) = n.written();
    BlockPtr {
        page: n.page(),
        txn,
        crc,
    }
}

/// Pages a commit of `disks` disks may write besides their nodes: the directory, and an
/// internal node over each root leaf written as two pages.
fn pages_beside_nodes(disks: usize) -> u64 {
    dir_pages_for(disks) + disks as u64
}

/// Directory pages that hold `disks` records.
pub(crate) fn dir_pages_for(disks: usize) -> u64 {
    disks.div_ceil(meta::directory::DIR_RECORDS_PER_PAGE) as u64
}

/// Pages the nodes without a page reachable from `roots` may take
/// ([`NodeKind::pages_to_write`]), each node counted once (a node with a page has only
/// such children).
fn unwritten_reachable<'a>(roots: impl Iterator<Item = &'a Arc<Node>>) -> u64 {
    fn walk(n: &Arc<Node>, seen: &mut std::collections::HashSet<*const Node>) -> u64 {
        if n.page() != NO_PAGE || !seen.insert(Arc::as_ptr(n)) {
            return 0;
        }
        n.kind.pages_to_write()
            + match &n.kind {
                NodeKind::Internal { children, .. } => children.iter().map(|c| walk(c, seen)).sum(),
                NodeKind::Leaf { .. } => 0,
            }
    }
    let mut seen = std::collections::HashSet::new();
    roots.map(|r| walk(r, &mut seen)).sum()
}

/// At most how many pages the nodes replacing `[from, to)` of the tree under `root`
/// with extents of `new_bytes` budget bytes can build (`table::splice`) take: the
/// leaves it rewrites, every node on their paths, the splits of what overflows, levels
/// added on top — each counted as a leaf, two pages ([`NodeKind::pages_to_write`]), and
/// one more for a root leaf written as two.
pub(crate) fn splice_bound(root: Option<&Arc<Node>>, from: u64, to: u64, new_bytes: usize) -> u64 {
    // Nodes whose span meets [from, to), per level, the root's first.
    let mut touched: Vec<u64> = Vec::new();
    if let Some(r) = root {
        if to == from + 1 {
            // One segment (a write fault's): one node a level, whatever the segment —
            // no descent to its (cold) leaf needed.
            touched.resize(r.height(), 1);
        } else {
            count_touched(r, 0, u64::MAX, from, to, 0, &mut touched);
        }
    }
    let leaves = touched.last().copied().unwrap_or(0);
    // Greedy packing fills every leaf but a piece's last beyond `room` bytes.
    let room = (LEAF_BUDGET_BYTES - MAX_EXTENT_BUDGET) as u64;
    let mut level = 2 * leaves + (new_bytes as u64).div_ceil(room) + 1;
    let mut total = level;
    // Each rebuilt internal node splits into at most one more node per new child, and
    // one loaded with more than the table's fan-out into one more besides.
    for &t in touched.iter().rev().skip(1) {
        level += 2 * t;
        total += level;
    }
    while level > 1 {
        level = level.div_ceil(MAX_FANOUT as u64);
        total += level;
    }
    2 * (total + 1) + 1
}

fn count_touched(
    node: &Node,
    lo: u64,
    hi: u64,
    from: u64,
    to: u64,
    depth: usize,
    out: &mut Vec<u64>,
) {
    if out.len() <= depth {
        out.resize(depth + 1, 0);
    }
    out[depth] += 1;
    if let NodeKind::Internal { keys, children } = &node.kind {
        for (i, c) in children.iter().enumerate() {
            let c_lo = if i == 0 { lo } else { keys[i] };
            let c_hi = keys.get(i + 1).copied().unwrap_or(hi);
            if c_lo < to && c_hi > from {
                count_touched(c, c_lo, c_hi, from, to, depth + 1, out);
            }
        }
    }
}

struct Begun {
    sb: Superblock,
    changes: u64,
    /// Every disk's root, held until its nodes are written.
    roots: Vec<Option<Arc<Node>>>,
    recs: Vec<meta::directory::DiskRecord>,
    space_map: SpaceMapStage,
}

struct Captured {
    /// Pages not written yet: the directory, and whatever was encoded since the capture
    /// last wrote a piece (with the space map's pages if it wrote none).
    pages: Vec<(u64, Vec<u8>)>,
    /// Node pages written during the capture.
    pages_written: usize,
    sb: Superblock,
    changes: u64,
    dir_pages: Vec<u64>,
    space_map: meta::space_map::SpaceMapPtrs,
}

/// Copies, in each disk's table, the written leaves holding the one-segment extents at
/// the given virtual segments (same content, new nodes; one pass down each table): the
/// next checkpoint writes them, with their fills' bits as they are then. Leaves not yet
/// written are left (they are written anyway). Counts a change if anything was copied;
/// returns whether it was.
pub(super) fn copy_written_leaves(
    st: &mut super::controller::CtlState,
    wanted: BTreeMap<u64, BTreeSet<u64>>,
) -> bool {
    let mut touched = false;
    for (disk, vsegs) in wanted {
        let Some(d) = st.disks.get_mut(&disk) else {
            continue;
        };
        let vsegs: Vec<u64> = vsegs.into_iter().collect();
        if table::copy_written_leaves(&mut d.root, &vsegs, &mut st.space) > 0 {
            if let Some(l) = st.log.as_mut() {
                l.same_table(disk, &d.root);
            }
            touched = true;
        }
    }
    if touched {
        st.changes += 1;
    }
    touched
}
