//! Making the controller's state durable.
//!
//! A commit, in order:
//! 1. persist changed fills: each dirty fill's leaf is copied (if it was already
//!    written), so the new leaf is written with the fill's bits as they are *now*;
//! 2. capture: serialise every node not yet written, the directory and the changed
//!    space-map pages — the bits of every fill are read here;
//! 3. flush the data containers — every write whose bits were read in (2) completed
//!    before its bits were set, so it is durable now;
//! 4. write the metadata pages, flush;
//! 5. write the superblock into the slot of this transaction's parity, flush;
//! 6. drain every agent (a blocking barrier) and make what was freed before the
//!    capture reusable.
//!
//! A crash before (5) completes leaves the previous superblock in force, and it never
//! points at a page or a segment written since — those were free in it. A metadata
//! write error fails the pool (no further changes; flushes fail), as dm-thin does.

use super::controller::Controller;
use super::meta::superblock::Superblock;
use super::meta::{self, BlockPtr, NO_PAGE, PAGE_BYTES, SUPERBLOCK_OFFSET};
use super::table::{self, Node, NodeKind};
use crate::bdev::{IoBuf, IoStatus};
use crate::reactor;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::Poll;

use super::load::{flush, write_bytes};

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

    fn fail(&self, why: String) -> IoStatus {
        tracing::error!(pool = %self.shared.name, "{why}; the pool refuses further changes");
        self.st.borrow_mut().failed = Some(why);
        IoStatus::MediaError
    }

    /// Copies the leaves of dirty fills that were already written, so that the commit
    /// rewrites them. Returns true if anything was touched.
    pub(crate) fn persist_dirty_fills(&self) -> bool {
        let mut by_disk: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        while let Some(f) = self.shared.dirty_fills.pop() {
            if f.take_dirty() {
                let (d, v) = f.owner();
                by_disk.entry(d).or_default().insert(v);
            }
        }
        let mut touched = false;
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        for (disk, vsegs) in by_disk {
            let Some(d) = st.disks.get_mut(&disk) else {
                continue;
            };
            for v in vsegs {
                let Some(root) = d.root.clone() else { break };
                if leaf_page(&root, v) == NO_PAGE {
                    continue; // the leaf is new: it will be written with current bits
                }
                let Some(e) = root.lookup(v).cloned() else {
                    continue;
                };
                if e.len != 1 {
                    continue;
                }
                let new = table::splice(Some(&root), v, v + 1, &[e], &mut st.space);
                table::set_root(&mut d.root, new, &mut st.space);
                touched = true;
            }
        }
        if touched {
            st.changes += 1;
        }
        touched
    }

    pub(crate) async fn flush_containers(&self) -> Result<(), IoStatus> {
        let tasks: Vec<_> = self
            .shared
            .containers
            .iter()
            .map(|c| c.bdev.clone())
            .map(|b| reactor::spawn_local(async move { flush(&b).await }))
            .collect();
        let mut r = Ok(());
        for t in tasks {
            if let Err(e) = t.await {
                r = Err(e);
            }
        }
        r
    }

    fn stopped(&self) -> bool {
        self.st.borrow().closed && self.crashed.get()
    }

    pub(crate) async fn commit_once(&self) -> Result<(), IoStatus> {
        if self.st.borrow().failed.is_some() {
            return Err(IoStatus::MediaError);
        }
        if self.stopped() {
            return Err(IoStatus::Aborted);
        }
        self.persist_dirty_fills();
        let needs_meta = {
            let st = self.st.borrow();
            st.changes != st.committed_changes
        };
        if !needs_meta {
            return self.flush_containers().await;
        }
        // Capture.
        let captured = match self.capture() {
            Ok(c) => c,
            Err(why) => return Err(self.fail(why)),
        };
        if let Err(e) = self.flush_containers().await {
            return Err(self.fail(format!("flushing the data containers failed: {e:?}")));
        }
        if self.stopped() {
            return Err(IoStatus::Aborted);
        }
        if let Err(e) = self.write_pages(&captured.pages).await {
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
        // Nothing may still use what was freed before the capture.
        self.barrier_all().await;
        {
            let mut st = self.st.borrow_mut();
            st.committed_txn = captured.sb.txn;
            st.space.committed(captured.sb.txn);
            st.committed_changes = captured.changes;
            st.dir_pages = captured.dir_pages;
            st.space_map = captured.space_map;
        }
        self.update_free();
        tracing::debug!(pool = %self.shared.name, txn = captured.sb.txn, pages = captured.pages.len(), "committed");
        Ok(())
    }

    /// Serialises the state to commit; assigns pages to new nodes.
    fn capture(&self) -> Result<Captured, String> {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let shared = &self.shared;
        let txn = st.space.txn_open;
        st.space.txn_open += 1;
        let changes = st.changes;
        let uuid = shared.uuid;
        let mut pages: Vec<(u64, Vec<u8>)> = Vec::new();
        // Tables.
        let mut roots = Vec::with_capacity(st.disks.len());
        for d in st.disks.values_mut() {
            let root = match &d.root {
                Some(root) => write_node(root, txn, &uuid, &mut st.space, &mut pages)?,
                None => BlockPtr::NONE,
            };
            d.rec.root_page = root.page;
            roots.push(root);
        }
        // Directory: written anew, last page first (each page points at the next one with
        // its checksum); the old chain is freed with this transaction.
        let recs: Vec<meta::directory::DiskRecord> =
            st.disks.values().map(|d| d.rec.clone()).collect();
        let per = meta::directory::DIR_RECORDS_PER_PAGE;
        let n_dir = recs.len().div_ceil(per);
        let mut dir_pages = Vec::new();
        for _ in 0..n_dir {
            dir_pages.push(st.space.alloc_page().ok_or("the metadata area is full")?);
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
        let directory = next;
        for p in std::mem::take(&mut st.dir_pages) {
            st.space.retire_page(p, txn);
        }
        // Space map: the pages that changed in this transaction, and their index pages,
        // each into the place the committed superblock does not point at.
        let changed: Vec<u64> = st.space.sm_pages_changed_since(txn).collect();
        let space_map = st
            .space_map
            .write(changed, st.space.all_refs(), txn, &uuid, &mut pages);
        let sb = Superblock {
            pool_uuid: uuid,
            pool_name: shared.name.clone(),
            txn,
            generation: st.generation,
            next_disk_id: st.next_disk_id,
            segment_bytes: shared.geo.segment_bytes(),
            block_size: shared.geo.block_size,
            meta_first_byte: shared.meta_first_byte,
            meta_pages: shared.meta_pages,
            sm_pages: shared.sm_pages,
            sm_index_pages: space_map.index.len() as u64,
            directory,
            cow_policy: shared.cow_default as u8,
            separate_metadata: shared.separate_metadata,
            metadata_uuid: shared.meta_label_uuid,
            containers: shared
                .containers
                .iter()
                .map(|c| meta::superblock::ContainerRecord {
                    bdev_uuid: c.label_uuid,
                    segments: c.segments,
                    reserved_segments: c.reserved,
                })
                .collect(),
            sm_index: space_map.index.clone(),
        };
        Ok(Captured {
            pages,
            sb,
            changes,
            dir_pages,
            space_map,
        })
    }

    /// Writes pages, coalescing consecutive ones, many at a time.
    async fn write_pages(&self, pages: &[(u64, Vec<u8>)]) -> Result<(), IoStatus> {
        let mut sorted: Vec<&(u64, Vec<u8>)> = pages.iter().collect();
        sorted.sort_by_key(|(p, _)| *p);
        let mut runs: Vec<(u64, IoBuf)> = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i + 1;
            while j < sorted.len() && sorted[j].0 == sorted[j - 1].0 + 1 && j - i < 64 {
                j += 1;
            }
            let mut buf = IoBuf::new((j - i) * PAGE_BYTES);
            for (k, (_, b)) in sorted[i..j].iter().enumerate() {
                buf[k * PAGE_BYTES..(k + 1) * PAGE_BYTES].copy_from_slice(b);
            }
            runs.push((sorted[i].0, buf));
            i = j;
        }
        let mut runs = runs.into_iter().peekable();
        while runs.peek().is_some() {
            if self.stopped() {
                return Err(IoStatus::Aborted);
            }
            let tasks: Vec<_> = runs
                .by_ref()
                .take(64)
                .map(|(p, b)| {
                    let bdev = self.shared.meta_bdev.clone();
                    let off = self.shared.meta_first_byte + p * PAGE_BYTES as u64;
                    reactor::spawn_local(async move { write_bytes(&bdev, off, b).await })
                })
                .collect();
            for t in tasks {
                t.await?;
            }
        }
        Ok(())
    }
}

struct Captured {
    pages: Vec<(u64, Vec<u8>)>,
    sb: Superblock,
    changes: u64,
    dir_pages: Vec<u64>,
    space_map: meta::space_map::SpaceMapPtrs,
}

/// The page of the leaf covering `vseg`.
fn leaf_page(root: &Arc<Node>, vseg: u64) -> u64 {
    let mut node = root;
    loop {
        match &node.kind {
            NodeKind::Internal { keys, children } => {
                let i = keys.partition_point(|&k| k <= vseg).saturating_sub(1);
                node = &children[i];
            }
            NodeKind::Leaf { .. } => return node.page(),
        }
    }
}

/// Writes `node` and its unwritten descendants (children first: a parent records each
/// child's checksum); returns the pointer to it.
fn write_node(
    node: &Arc<Node>,
    txn: u64,
    pool: &uuid::Uuid,
    space: &mut super::alloc::Space,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<BlockPtr, String> {
    let p = node.page();
    if p != NO_PAGE {
        let (txn, crc) = node.written();
        return Ok(BlockPtr { page: p, txn, crc });
    }
    let b = match &node.kind {
        NodeKind::Internal { keys, children } => {
            let mut entries = Vec::with_capacity(children.len());
            for (k, c) in keys.iter().zip(children) {
                entries.push((*k, write_node(c, txn, pool, space, out)?));
            }
            let page = space.alloc_page().ok_or("the metadata area is full")?;
            meta::node::encode_internal(page, txn, pool, &entries)
        }
        NodeKind::Leaf { extents } => {
            let page = space.alloc_page().ok_or("the metadata area is full")?;
            meta::node::encode_leaf(page, txn, pool, extents)
        }
    };
    let ptr = BlockPtr::of(&b);
    node.set_page(ptr.page, ptr.txn, ptr.crc);
    out.push((ptr.page, b));
    Ok(ptr)
}
