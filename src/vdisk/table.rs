//! The mapping table: a copy-on-write B+tree of [`Extent`]s keyed by virtual segment.
//!
//! Nodes are immutable once built and shared through `Arc`: a modification copies the
//! path from the root to the changed leaf and shares every other node (structural
//! sharing). That gives the three properties the design asks for:
//!
//! - a **snapshot or clone** shares the origin's root — O(1) whatever the disk size;
//! - **per-core views** (the agents' copies of the table) share every unchanged node, so
//!   N cores cost one table's memory;
//! - a **lookup** is one root-to-leaf descent, whatever the history.
//!
//! The controller keeps reference counts beside the `Arc`s (which also count the
//! agents' views): `refs` counts the controller's own parents of a node (other nodes and
//! disk roots), and each physical segment is counted once per leaf that references it
//! (dm-thin's and btrfs's scheme). Creating a node takes a reference on each child (or
//! segment); releasing the last reference to a node releases its children and frees its
//! metadata page. A node shared with a snapshot is therefore never changed in place:
//! the writer gets a copy, the snapshot keeps the original.
//!
//! Extents never cross a leaf's key span, so the leaf found for a segment holds the
//! extent covering it, if any. An internal node's entries fit half a metadata page; a
//! leaf's extents fit [`LEAF_BUDGET_BYTES`] of their [`extent_budget`], and it is
//! written as one packed page, or two when its fills grew past that budget (see
//! `meta::node`).

use super::leaf::LeafExtents;
use super::map::{Extent, MAX_LAYERS, MAX_RUN_SEGMENTS, PhysSeg};
use super::search;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Marks a node that has no metadata page yet.
pub const NO_PAGE: u64 = u64::MAX;

/// Bytes of a metadata page available to a node's entries.
pub const NODE_PAYLOAD_BYTES: usize = 4096 - 64;

/// Encoded size of an internal node's entry (see `vdisk::meta`): the child's first
/// virtual segment, and the pointer to the child — its page, the transaction that wrote
/// it and its checksum.
pub const INTERNAL_ENTRY_BYTES: usize = 8 + 8 + 8 + 4;

/// Most children of an internal node the table builds: half what its page holds,
/// because a leaf whose fills grew past its budget is written as two leaf pages, each
/// with its entry in the parent (see `meta::node`). Nodes loaded from pages hold up to
/// twice this; they are written already, and the table rebuilds them within it.
pub const MAX_FANOUT: usize = NODE_PAYLOAD_BYTES / INTERNAL_ENTRY_BYTES / 2;

// How leaves are packed (the packed leaf encoding itself is `meta::node`'s).

/// Virtual segments lie below this (`meta::MAX_VSEG`).
const MAX_VSEG_BOUND: u64 = 1 << 48;

/// Bytes of `v` as an unsigned LEB128 number (1 to 10), as packed leaves write numbers.
pub const fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The most bytes one packed extent takes: the widest numbers, every layer with a map.
pub const MAX_PACKED_EXTENT_BYTES: usize = varint_len(MAX_VSEG_BOUND - 1)
    + varint_len(MAX_RUN_SEGMENTS as u64)
    + 1
    + varint_len(u64::MAX)
    + MAX_LAYERS * (varint_len(u64::MAX) + 1 + 32);
/// What a partial layer's fill is counted as in an extent's [budget](extent_budget):
/// its tag and seven runs. A fill grows after its leaf was packed (writes into a
/// segment the disk owns add granules), so a leaf's fills can outgrow the budget its
/// extents were packed by; the budget is chosen so that they never need more than
/// twice it (a fill's map is 33 bytes, an extent's other fields at least 4 + 2 per
/// layer), and a leaf packed within [`LEAF_BUDGET_BYTES`] always fits two pages.
pub const FILL_BUDGET_BYTES: usize = 16;
/// The most budget bytes of extents one leaf holds: at most twice that written, which
/// two pages hold whatever extent the first page's greedy packing stops before.
pub const LEAF_BUDGET_BYTES: usize = NODE_PAYLOAD_BYTES - MAX_PACKED_EXTENT_BYTES / 2;
/// The largest [`extent_budget`].
pub const MAX_EXTENT_BUDGET: usize = varint_len(MAX_VSEG_BOUND - 1)
    + varint_len(MAX_RUN_SEGMENTS as u64)
    + 1
    + varint_len(u64::MAX)
    + MAX_LAYERS * (varint_len(u64::MAX) + FILL_BUDGET_BYTES);

/// What an extent counts for in a leaf's budget: its packed size with each fill
/// counted as [`FILL_BUDGET_BYTES`] and its first segment written whole (not as the
/// distance from the extent before it, which is no more). Computed from the extent
/// alone, so the table packs leaves without looking at fills.
pub fn extent_budget(e: &Extent) -> usize {
    varint_len(e.vseg)
        + varint_len(e.len.into())
        + 1
        + varint_len(e.birth.get())
        + e.layers
            .iter()
            .map(|l| varint_len(l.seg()) + if l.is_partial() { FILL_BUDGET_BYTES } else { 1 })
            .sum::<usize>()
}

/// Encoded size of an extent in a log record, in the wide encoding (see `vdisk::meta`).
pub fn extent_encoded_len(e: &Extent) -> usize {
    encoded_len_of(e.layers.iter().map(|l| l.is_partial()))
}

/// Encoded size of an extent whose layers are partial (with a fill) or not as `partial`
/// says: its head, and per layer the segment, a flag and the fill's bits.
pub fn encoded_len_of(partial: impl Iterator<Item = bool>) -> usize {
    22 + partial.map(|p| if p { 41 } else { 9 }).sum::<usize>()
}

/// A node's contents.
#[derive(Debug)]
pub enum NodeKind {
    /// `keys[i]` is the first virtual segment of `children[i]`'s span.
    Internal {
        keys: Vec<u64>,
        children: Vec<Arc<Node>>,
    },
    /// Sorted, non-overlapping extents.
    Leaf { extents: LeafExtents },
}

impl NodeKind {
    /// Metadata pages a node built since the last commit may take when it is written:
    /// an internal node one, a leaf two (its fills may have grown past its budget). A
    /// table's root leaf may take one more (an internal node over its two pages),
    /// counted per disk by the commit.
    pub fn pages_to_write(&self) -> u64 {
        match self {
            NodeKind::Internal { .. } => 1,
            NodeKind::Leaf { .. } => 2,
        }
    }
}

/// A table node.
#[derive(Debug)]
pub struct Node {
    pub kind: NodeKind,
    /// An internal node's first and last keys, read by a descent here, in the node's
    /// own line, instead of at the two ends of `keys` ([`Node::child_at`]); zeros for a
    /// leaf (its extents keep theirs).
    key_ends: (u64, u64),
    refs: AtomicU32,
    page: AtomicU64,
    /// The transaction that wrote the page and the page's checksum: what a parent's
    /// pointer to the node records (set with `page`).
    written_txn: AtomicU64,
    written_crc: AtomicU32,
    /// Set on a node whose references passed to the nodes that replace it
    /// ([`replace`]): a leaf's segment references, an internal node's references to the
    /// children it shares with its replacements. Freeing it releases none of them.
    refs_moved: AtomicBool,
    /// A leaf written as two pages (its fills outgrew its budget): the second page, its
    /// checksum and the index of its first extent ([`NO_PAGE`] if one page).
    overflow: AtomicU64,
    overflow_crc: AtomicU32,
    overflow_at: AtomicU32,
    /// A table's root leaf written as two pages: the internal node over them, which
    /// the table's root pointer points at ([`NO_PAGE`] if none).
    lift: AtomicU64,
    lift_txn: AtomicU64,
    lift_crc: AtomicU32,
}

/// The second page of a leaf written as two (see [`Node::set_overflow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow {
    pub page: u64,
    pub crc: u32,
    /// The index of the first extent on it.
    pub at: usize,
}

/// The controller's reference bookkeeping, told about segments and pages as nodes are
/// built and released.
pub trait RefCounts {
    /// Adds `delta` references to physical segment `seg`.
    fn seg_add(&mut self, seg: PhysSeg, delta: i64);
    /// A metadata page is no longer referenced by the live state.
    fn page_free(&mut self, page: u64);
    /// A node was built: it needs metadata pages at the next commit, at most `pages`
    /// ([`NodeKind::pages_to_write`]).
    fn node_built(&mut self, _pages: u64) {}
    /// A node built since the last commit went away before it got its `pages`.
    fn unwritten_freed(&mut self, _pages: u64) {}
}

impl Node {
    /// A new leaf: takes a reference on each segment of its extents unless
    /// `count_segments` is false (they come from a leaf being replaced).
    fn build_leaf(extents: LeafExtents, count_segments: bool, rc: &mut dyn RefCounts) -> Arc<Node> {
        if count_segments {
            for e in extents.iter() {
                for s in e.segments() {
                    rc.seg_add(s, 1);
                }
            }
        }
        let kind = NodeKind::Leaf { extents };
        rc.node_built(kind.pages_to_write());
        Node::with_page(kind, NO_PAGE, 0, 0)
    }

    /// A new internal node over `children`: takes a reference on each child but those
    /// `inherited` says it takes over from the node it replaces (see [`replace`]).
    fn build_internal(
        keys: Vec<u64>,
        children: Vec<Arc<Node>>,
        inherited: &[bool],
        rc: &mut dyn RefCounts,
    ) -> Arc<Node> {
        debug_assert_eq!(children.len(), inherited.len());
        for (c, &moved) in children.iter().zip(inherited) {
            if !moved {
                c.refs.fetch_add(1, Ordering::Relaxed);
            }
        }
        let kind = NodeKind::Internal { keys, children };
        rc.node_built(kind.pages_to_write());
        Node::with_page(kind, NO_PAGE, 0, 0)
    }

    /// A node loaded from metadata page `page`, written by transaction `txn` with
    /// checksum `crc`: `refs` and segment counts are set by the loader.
    pub fn loaded(kind: NodeKind, page: u64, txn: u64, crc: u32) -> Arc<Node> {
        Node::with_page(kind, page, txn, crc)
    }

    fn with_page(kind: NodeKind, page: u64, txn: u64, crc: u32) -> Arc<Node> {
        let key_ends = match &kind {
            NodeKind::Internal { keys, .. } => (
                keys.first().copied().unwrap_or(0),
                keys.last().copied().unwrap_or(0),
            ),
            NodeKind::Leaf { .. } => (0, 0),
        };
        Arc::new(Node {
            kind,
            key_ends,
            refs: AtomicU32::new(0),
            page: AtomicU64::new(page),
            written_txn: AtomicU64::new(txn),
            written_crc: AtomicU32::new(crc),
            refs_moved: AtomicBool::new(false),
            overflow: AtomicU64::new(NO_PAGE),
            overflow_crc: AtomicU32::new(0),
            overflow_at: AtomicU32::new(0),
            lift: AtomicU64::new(NO_PAGE),
            lift_txn: AtomicU64::new(0),
            lift_crc: AtomicU32::new(0),
        })
    }

    /// The metadata page the node is stored in, or [`NO_PAGE`].
    pub fn page(&self) -> u64 {
        self.page.load(Ordering::Acquire)
    }

    /// The transaction that wrote the node's page and the page's checksum (meaningful
    /// once [`Node::page`] is set).
    pub fn written(&self) -> (u64, u32) {
        (
            self.written_txn.load(Ordering::Acquire),
            self.written_crc.load(Ordering::Acquire),
        )
    }

    /// Records the page the node was written to, by transaction `txn`, with checksum
    /// `crc`.
    pub fn set_page(&self, page: u64, txn: u64, crc: u32) {
        self.written_txn.store(txn, Ordering::Release);
        self.written_crc.store(crc, Ordering::Release);
        self.page.store(page, Ordering::Release);
    }

    /// Records the second page of a leaf written as two (set before [`Node::set_page`]).
    pub fn set_overflow(&self, o: Overflow) {
        self.overflow_crc.store(o.crc, Ordering::Relaxed);
        self.overflow_at.store(o.at as u32, Ordering::Relaxed);
        self.overflow.store(o.page, Ordering::Release);
    }

    /// The second page of a leaf written as two.
    pub fn overflow(&self) -> Option<Overflow> {
        let page = self.overflow.load(Ordering::Acquire);
        (page != NO_PAGE).then(|| Overflow {
            page,
            crc: self.overflow_crc.load(Ordering::Relaxed),
            at: self.overflow_at.load(Ordering::Relaxed) as usize,
        })
    }

    /// The parent's entry for the second page of a leaf written as two: its first
    /// extent's segment, and the page with the transaction that wrote it (the leaf's)
    /// and its checksum.
    pub fn overflow_entry(&self) -> Option<(u64, u64, u64, u32)> {
        let o = self.overflow()?;
        let NodeKind::Leaf { extents } = &self.kind else {
            return None;
        };
        Some((extents.nth(o.at)?.vseg, o.page, self.written().0, o.crc))
    }

    /// Records the internal node written over a root leaf written as two pages, by
    /// transaction `txn`, with checksum `crc`.
    pub fn set_lift(&self, page: u64, txn: u64, crc: u32) {
        self.lift_txn.store(txn, Ordering::Relaxed);
        self.lift_crc.store(crc, Ordering::Relaxed);
        self.lift.store(page, Ordering::Release);
    }

    /// The internal node written over a root leaf written as two pages: its page, the
    /// transaction that wrote it and its checksum.
    pub fn lift(&self) -> Option<(u64, u64, u32)> {
        let page = self.lift.load(Ordering::Acquire);
        (page != NO_PAGE).then(|| {
            (
                page,
                self.lift_txn.load(Ordering::Relaxed),
                self.lift_crc.load(Ordering::Relaxed),
            )
        })
    }

    /// The controller's reference count.
    pub fn refs(&self) -> u32 {
        self.refs.load(Ordering::Relaxed)
    }

    /// Takes one controller reference (a new root, a snapshot sharing it, a loader).
    pub fn retain(self: &Arc<Self>) {
        self.refs.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops one controller reference; the last one releases the node's children (or
    /// segments) and its page.
    pub fn release(self: &Arc<Self>, rc: &mut dyn RefCounts) {
        let before = self.refs.fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "table node released more often than retained");
        if before == 1 {
            self.free(rc);
        }
    }

    /// Drops one controller reference to each node of `pending` — what
    /// [`Node::release`] does to one node — freeing at most about `budget` nodes; the
    /// references still to drop (children of freed nodes among them) stay in `pending`.
    /// Returns true when none are left. A tree that diverged from a held root while
    /// the root was held (a checkpoint's capture) is thousands of nodes to free:
    /// milliseconds that a caller spreads over several turns of its core.
    pub fn release_some(
        pending: &mut Vec<Arc<Node>>,
        rc: &mut dyn RefCounts,
        budget: usize,
    ) -> bool {
        let mut freed = 0;
        while freed < budget {
            let Some(n) = pending.pop() else {
                return true;
            };
            let before = n.refs.fetch_sub(1, Ordering::Relaxed);
            assert!(before > 0, "table node released more often than retained");
            if before > 1 {
                continue;
            }
            freed += 1;
            if let NodeKind::Internal { children, .. } = &n.kind
                && !n.refs_moved.load(Ordering::Relaxed)
            {
                pending.extend(children.iter().cloned());
            }
            n.free_own(rc);
        }
        pending.is_empty()
    }

    /// Frees what the node itself holds — a leaf's segments, its page — but not an
    /// internal node's children (the caller releases them).
    fn free_own(&self, rc: &mut dyn RefCounts) {
        if let NodeKind::Leaf { extents } = &self.kind
            && !self.refs_moved.load(Ordering::Relaxed)
        {
            for e in extents.iter() {
                for s in e.segments() {
                    rc.seg_add(s, -1);
                }
            }
        }
        let p = self.page();
        if p != NO_PAGE {
            rc.page_free(p);
            if let Some(o) = self.overflow() {
                rc.page_free(o.page);
            }
            if let Some((l, _, _)) = self.lift() {
                rc.page_free(l);
            }
        } else {
            rc.unwritten_freed(self.kind.pages_to_write());
        }
    }

    fn free(&self, rc: &mut dyn RefCounts) {
        if let NodeKind::Internal { children, .. } = &self.kind
            && !self.refs_moved.load(Ordering::Relaxed)
        {
            for c in children {
                c.release(rc);
            }
        }
        self.free_own(rc);
    }

    /// Releases a node that was built but never retained.
    fn discard(self: &Arc<Self>, rc: &mut dyn RefCounts) {
        debug_assert_eq!(self.refs(), 0);
        self.free(rc);
    }

    /// The page of the leaf whose span covers `vseg` ([`NO_PAGE`] if not written).
    pub fn leaf_page(&self, vseg: u64) -> u64 {
        let mut node = self;
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

    /// The child of this internal node (`keys`, `children`: its own) whose span holds
    /// `vseg`, found as a leaf finds an extent (`search::guessed_partition`), from the
    /// node's first and last keys kept beside them: the lines of the keys and of the
    /// children's pointers around the guess are asked for together, right after the
    /// node's own line, where a bisection waits for the keys' lines in turn and then for
    /// the pointer's.
    #[inline]
    fn child_at(&self, keys: &[u64], children: &[Arc<Node>], vseg: u64) -> usize {
        search::guessed_partition(
            keys,
            |&k| k,
            self.key_ends,
            vseg,
            |g| search::prefetch_around(children, g),
        )
        .saturating_sub(1)
    }

    /// Asks the core for the lines of the leaf that a [`Node::lookup`] of `vseg` will
    /// read, after a descent through the internal nodes (which a big table's descents
    /// keep in the cache): a batch of lookups that prefetches them all first waits for
    /// its cold leaves together, not one after the other.
    pub fn prefetch_leaf(&self, vseg: u64) {
        self.leaf_at(vseg).prefetch(vseg)
    }

    /// The extent covering `vseg`, if any: one descent.
    #[inline]
    pub fn lookup(&self, vseg: u64) -> Option<&Extent> {
        self.leaf_at(vseg).get(vseg)
    }

    /// The extents of the leaf whose span holds `vseg`: one descent.
    #[inline]
    fn leaf_at(&self, vseg: u64) -> &LeafExtents {
        let mut node = self;
        loop {
            match &node.kind {
                NodeKind::Internal { keys, children } => {
                    node = &children[node.child_at(keys, children, vseg)]
                }
                NodeKind::Leaf { extents } => return extents,
            }
        }
    }

    /// The first extent that ends after `vseg` (the one covering it, or the next one).
    pub fn next_from(&self, vseg: u64) -> Option<&Extent> {
        let mut out = None;
        self.visit_from(vseg, &mut |e| {
            out = Some(e);
            false
        });
        out
    }

    /// Calls `f` on every extent ending after `vseg`, in order, until it returns false.
    /// Returns false if stopped.
    pub fn visit_from<'a>(&'a self, vseg: u64, f: &mut dyn FnMut(&'a Extent) -> bool) -> bool {
        match &self.kind {
            NodeKind::Internal { keys, children } => {
                let first = keys.partition_point(|&k| k <= vseg).saturating_sub(1);
                for c in &children[first..] {
                    if !c.visit_from(vseg, f) {
                        return false;
                    }
                }
                true
            }
            NodeKind::Leaf { extents } => {
                for e in extents.iter_from(vseg) {
                    if !f(e) {
                        return false;
                    }
                }
                true
            }
        }
    }

    /// Every node of the subtree (shared nodes once per path).
    pub fn for_each_node(self: &Arc<Self>, f: &mut dyn FnMut(&Arc<Node>)) {
        f(self);
        if let NodeKind::Internal { children, .. } = &self.kind {
            for c in children {
                c.for_each_node(f);
            }
        }
    }

    /// Number of extents in the subtree.
    pub fn extent_count(&self) -> usize {
        match &self.kind {
            NodeKind::Internal { children, .. } => children.iter().map(|c| c.extent_count()).sum(),
            NodeKind::Leaf { extents } => extents.len(),
        }
    }

    /// Height of the subtree (a leaf is 1).
    pub fn height(&self) -> usize {
        match &self.kind {
            NodeKind::Internal { children, .. } => 1 + children[0].height(),
            NodeKind::Leaf { .. } => 1,
        }
    }
}

/// A replacement of `[from, to)` in a table: everything there becomes `extents`
/// (sorted, non-overlapping, inside the range).
#[derive(Clone, Debug)]
pub struct Edit<'a> {
    pub from: u64,
    pub to: u64,
    pub extents: Cow<'a, [Extent]>,
}

impl Edit<'_> {
    /// The part of the edit inside `[lo, hi)` (which it meets), runs cut at the edges;
    /// borrows the extents when the edit lies inside.
    fn within(&self, lo: u64, hi: u64) -> Edit<'_> {
        if self.from >= lo && self.to <= hi {
            return Edit {
                from: self.from,
                to: self.to,
                extents: Cow::Borrowed(&self.extents),
            };
        }
        let (from, to) = (self.from.max(lo), self.to.min(hi));
        Edit {
            from,
            to,
            extents: Cow::Owned(clip(&self.extents, from, to)),
        }
    }
}

/// Replaces everything in `[from, to)` with `new` (sorted, non-overlapping extents
/// inside the range; runs are cut at leaf boundaries as needed). Extents that straddle
/// the range edges keep their parts outside it. Returns the new root — not yet
/// retained: the caller retains it and releases the old one (see [`set_root`]).
pub fn splice(
    root: Option<&Arc<Node>>,
    from: u64,
    to: u64,
    new: &[Extent],
    rc: &mut dyn RefCounts,
) -> Option<Arc<Node>> {
    splice_many(
        root,
        &[Edit {
            from,
            to,
            extents: Cow::Borrowed(new),
        }],
        rc,
    )
}

/// [`splice`] of several ranges at once (`edits` sorted by range, ranges disjoint), in
/// one pass down the tree: each leaf the edits meet is rebuilt once, each node on their
/// paths once, however many of the edits land in it.
pub fn splice_many(
    root: Option<&Arc<Node>>,
    edits: &[Edit<'_>],
    rc: &mut dyn RefCounts,
) -> Option<Arc<Node>> {
    splice_root(root, edits, false, rc)
}

/// [`splice_many`]; `sole`: the root is freed once the new one is installed (see
/// [`replace`]).
fn splice_root(
    root: Option<&Arc<Node>>,
    edits: &[Edit<'_>],
    sole: bool,
    rc: &mut dyn RefCounts,
) -> Option<Arc<Node>> {
    debug_assert!(edits.iter().all(|e| {
        e.from < e.to
            && e.extents.windows(2).all(|w| w[0].end() <= w[1].vseg)
            && e.extents
                .iter()
                .all(|x| x.vseg >= e.from && x.end() <= e.to)
    }));
    debug_assert!(edits.windows(2).all(|w| w[0].to <= w[1].from));
    if edits.is_empty() {
        return root.cloned();
    }
    let Some(root) = root else {
        let all: Vec<Extent> = edits
            .iter()
            .flat_map(|e| e.extents.iter().cloned())
            .collect();
        return build_root(leaves_from(0, all, false, true, rc), rc);
    };
    build_root(splice_in(root, 0, u64::MAX, edits, sole, rc), rc)
}

/// [`splice_many`] of the table in `slot`, installed there ([`set_root`]). A node on a
/// path that no other table shares is freed right after, and what it references passes
/// to the nodes that replace it as it is, instead of being counted up for the new nodes
/// and down again for the old one (on a big table that is a cache miss per extent of a
/// leaf, or per child of an internal node, for every first write): a leaf's segments,
/// an internal node's children that its replacements keep.
///
/// **In place.** A node that only this table reaches — its root held by `slot` alone
/// (no agent's view, no snapshot, no checkpoint's capture holds it: `Arc::get_mut`
/// succeeds), each node on the path the only holder of the next — and that has no
/// page yet (a written node never changes: its page, checksum and parent's pointer
/// describe it) is changed in place in the common cases, instead of copied: an
/// internal node whose edited children each come back as one node gets them swapped
/// in; a leaf whose edits are inserts into gaps that [`LeafExtents::with_inserted`]
/// accepts gets them inserted. Counts end as the copy would leave them: the new child
/// takes the node's reference and the old one is released; the inserted extents'
/// segments are counted once; no node is built or freed, so no page is either.
/// Everything else is copied. Nodes built since an agent's last view are only the
/// table's (the agents get the extents of write faults beside their view,
/// `agent/recent.rs`): a burst of first writes copies each path once per view.
pub fn replace(slot: &mut Option<Arc<Node>>, edits: &[Edit<'_>], rc: &mut dyn RefCounts) {
    if let Some(root) = slot.as_mut()
        && !edits.is_empty()
    {
        // Held by `slot` alone: freed by the `set_root` below if replaced.
        let sole = root.refs() == 1;
        if let Err(parts) = splice_at(root, 0, u64::MAX, edits, sole, rc) {
            let new = build_root(parts, rc);
            set_root(slot, new, rc);
        }
        return;
    }
    let new = splice_root(slot.as_ref(), edits, false, rc);
    set_root(slot, new, rc);
}

#[cfg(test)]
thread_local! {
    /// How many edits changed a node in place, in this thread (for tests).
    static IN_PLACE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Nodes that replace one, with their keys.
type Parts = Vec<(u64, Arc<Node>)>;

/// Applies `edits` to the node in `slot` (span `[lo, hi)`) in place if it and the
/// path to it are only this table's ([`replace`]): `Ok` then, the node in `slot`
/// changed. Otherwise `Err` with its replacement parts, as [`splice_in`] builds them
/// (`sole`: the node is freed once they are installed).
fn splice_at(
    slot: &mut Arc<Node>,
    lo: u64,
    hi: u64,
    edits: &[Edit<'_>],
    sole: bool,
    rc: &mut dyn RefCounts,
) -> Result<(), Parts> {
    debug_assert!(edits.windows(2).all(|w| w[0].to <= w[1].from));
    let unwritten = slot.page() == NO_PAGE;
    if sole
        && unwritten
        && let Some(node) = Arc::get_mut(slot)
    {
        match &mut node.kind {
            NodeKind::Leaf { extents } => {
                if extents.insert_in_place(edits) {
                    // As a new leaf would count them (the others stay counted).
                    for e in edits.iter().flat_map(|ed| ed.extents.iter()) {
                        for s in e.segments() {
                            rc.seg_add(s, 1);
                        }
                    }
                    #[cfg(test)]
                    IN_PLACE.with(|c| c.set(c.get() + 1));
                    return Ok(());
                }
            }
            NodeKind::Internal { keys, children } => {
                // The edited children, each in place or replaced by its parts.
                let mut replaced: SmallVec<[(usize, Parts); 4]> = SmallVec::new();
                for (j, c_lo, c_hi, sub) in edited_children(keys, lo, hi, edits) {
                    let c_sole = children[j].refs() == 1;
                    if let Err(parts) = splice_at(&mut children[j], c_lo, c_hi, &sub, c_sole, rc) {
                        replaced.push((j, parts));
                    }
                }
                if replaced.iter().all(|(_, parts)| parts.len() == 1) {
                    for (j, mut parts) in replaced {
                        let (key, new) = parts.pop().expect("one part");
                        debug_assert_eq!(key, if j == 0 { lo } else { keys[j] });
                        // The reference this node held passes to the new child.
                        new.refs.fetch_add(1, Ordering::Relaxed);
                        std::mem::replace(&mut children[j], new).release(rc);
                    }
                    #[cfg(test)]
                    IN_PLACE.with(|c| c.set(c.get() + 1));
                    return Ok(());
                }
                // A child split or went: this node is rebuilt over its children as they
                // are now, as `splice_in` rebuilds it (the references it holds on the
                // children it keeps pass to its replacements).
                let mut parts: Vec<(u64, Arc<Node>, bool)> =
                    Vec::with_capacity(children.len() + replaced.len() + 1);
                let mut replaced = replaced.into_iter().peekable();
                for (j, c) in children.iter().enumerate() {
                    let c_lo = if j == 0 { lo } else { keys[j] };
                    match replaced.next_if(|(r, _)| *r == j) {
                        Some((_, new)) => {
                            parts.extend(new.into_iter().map(|(key, n)| (key, n, false)));
                            c.release(rc);
                        }
                        None => parts.push((c_lo, c.clone(), true)),
                    }
                }
                if let Some(first) = parts.first_mut() {
                    first.0 = lo;
                }
                let out = internals_from(lo, parts, rc);
                node.refs_moved.store(true, Ordering::Relaxed);
                return Err(out);
            }
        }
    }
    Err(splice_in(slot, lo, hi, edits, sole, rc))
}

/// Replaces each written leaf of `slot`'s table that holds a one-segment extent at one
/// of `vsegs` (sorted, distinct) with a copy (same content, a node without a page), in
/// one pass down the table ([`replace`]). Returns how many of `vsegs` sat in written
/// leaves. A commit writes the copies with the fills' bits as they are then.
pub fn copy_written_leaves(
    slot: &mut Option<Arc<Node>>,
    vsegs: &[u64],
    rc: &mut dyn RefCounts,
) -> usize {
    debug_assert!(vsegs.windows(2).all(|w| w[0] < w[1]));
    let Some(root) = slot.as_ref() else {
        return 0;
    };
    let exts: Vec<Extent> = vsegs
        .iter()
        .filter(|&&v| root.leaf_page(v) != NO_PAGE)
        .filter_map(|&v| root.lookup(v).filter(|e| e.len == 1).cloned())
        .collect();
    if exts.is_empty() {
        return 0;
    }
    let edits: Vec<Edit<'_>> = exts
        .iter()
        .map(|e| Edit {
            from: e.vseg,
            to: e.end(),
            extents: Cow::Borrowed(std::slice::from_ref(e)),
        })
        .collect();
    replace(slot, &edits, rc);
    edits.len()
}

/// Makes `new` the root in `slot`: retains it, then releases the old root.
pub fn set_root(slot: &mut Option<Arc<Node>>, new: Option<Arc<Node>>, rc: &mut dyn RefCounts) {
    if let Some(n) = &new {
        n.retain();
    }
    if let Some(old) = std::mem::replace(slot, new) {
        old.release(rc);
    }
}

/// The parts of `exts` inside `[from, to)`, runs cut at the edges.
pub fn clip(exts: &[Extent], from: u64, to: u64) -> Vec<Extent> {
    exts.iter()
        .filter(|e| e.end() > from && e.vseg < to)
        .map(|e| {
            if e.vseg >= from && e.end() <= to {
                e.clone()
            } else {
                e.slice(e.vseg.max(from), e.end().min(to))
            }
        })
        .collect()
}

/// Root from the top-level parts: none, the single part, or a new internal node.
fn build_root(parts: Vec<(u64, Arc<Node>)>, rc: &mut dyn RefCounts) -> Option<Arc<Node>> {
    let mut parts = parts;
    loop {
        match parts.len() {
            0 => return None,
            1 => {
                let (_, n) = parts.pop().expect("one part");
                // Collapse an internal root with a single child.
                if let NodeKind::Internal { children, .. } = &n.kind
                    && children.len() == 1
                    && n.refs() == 0
                {
                    let child = children[0].clone();
                    // Keep the child alive while discarding its former parent.
                    child.retain();
                    n.discard(rc);
                    child.refs.fetch_sub(1, Ordering::Relaxed);
                    parts.push((0, child));
                    continue;
                }
                return Some(n);
            }
            _ => {
                let new = parts.drain(..).map(|(k, n)| (k, n, false)).collect();
                let mut groups = internals_from(0, new, rc);
                if groups.len() == 1 {
                    return groups.pop().map(|(_, n)| n);
                }
                parts = groups;
            }
        }
    }
}

/// Leaves holding `exts` (sorted), each within the leaf budget: as many as greedy
/// packing would make, but balanced. Greedy packing turns an insert into a full leaf
/// into that leaf plus a leaf of one extent, so random inserts left tables of mostly
/// such leaves (five extents a page where sixty fit). Balanced, a full leaf splits in
/// two halves and leaves stay about half full or more, as in any B+tree. Without
/// `balance` (appending past a leaf's last extent: a disk written in order) greedy
/// packing keeps the leaf full and starts a new one, as B+trees split their rightmost
/// leaf. The first leaf's key is `lo`.
fn leaves_from(
    lo: u64,
    exts: Vec<Extent>,
    balance: bool,
    count_segments: bool,
    rc: &mut dyn RefCounts,
) -> Vec<(u64, Arc<Node>)> {
    // Balanced: close a leaf once it holds `target` bytes (see `balanced_target`).
    let target = if balance {
        balanced_target(&exts)
    } else {
        None
    };
    // Where each leaf starts, then the leaves, each allocated at its size.
    let mut starts = vec![0];
    let mut budgets = Vec::new();
    let mut bytes = 0;
    for (i, e) in exts.iter().enumerate() {
        let len = extent_budget(e);
        let full = match target {
            Some(t) => bytes >= t,
            None => bytes + len > LEAF_BUDGET_BYTES,
        };
        if i > 0 && full {
            starts.push(i);
            budgets.push(bytes);
            bytes = 0;
        }
        bytes += len;
    }
    starts.push(exts.len());
    budgets.push(bytes);
    let mut it = exts.into_iter();
    let mut out = Vec::with_capacity(starts.len() - 1);
    for (w, &budget) in starts.windows(2).zip(&budgets) {
        let extents: Vec<Extent> = it.by_ref().take(w[1] - w[0]).collect();
        if extents.is_empty() {
            break;
        }
        let key = if out.is_empty() { lo } else { extents[0].vseg };
        let extents = LeafExtents::with_budget(extents, budget);
        out.push((key, Node::build_leaf(extents, count_segments, rc)));
    }
    out
}

/// The bytes at which balanced packing of `exts` closes a leaf: `total / k` rounded up,
/// for the `k` leaves greedy packing makes. Every closed leaf then holds at least
/// `total / k`, so there are at most `k` of them (the bound `splice_bound` relies on),
/// and none passes the page, because the target leaves room for one more extent. `None`
/// when it does not (greedy's leaves are nearly full): pack greedily.
fn balanced_target(exts: &[Extent]) -> Option<usize> {
    let (mut k, mut bytes, mut total) = (0usize, 0usize, 0usize);
    for e in exts {
        let len = extent_budget(e);
        if k == 0 || bytes + len > LEAF_BUDGET_BYTES {
            k += 1;
            bytes = 0;
        }
        bytes += len;
        total += len;
    }
    let target = total.div_ceil(k.max(1));
    (target + MAX_EXTENT_BUDGET <= LEAF_BUDGET_BYTES).then_some(target)
}

/// Internal nodes over `parts` (sorted by key), each within the fan-out. The first
/// node's key is `lo`. A part's flag: the reference on it passes from the node being
/// replaced instead of being taken anew.
fn internals_from(
    lo: u64,
    parts: Vec<(u64, Arc<Node>, bool)>,
    rc: &mut dyn RefCounts,
) -> Vec<(u64, Arc<Node>)> {
    if parts.is_empty() {
        return Vec::new();
    }
    let groups = parts.len().div_ceil(MAX_FANOUT);
    let per = parts.len().div_ceil(groups);
    let mut out = Vec::new();
    let mut it = parts.into_iter().peekable();
    while it.peek().is_some() {
        let key = if out.is_empty() {
            lo
        } else {
            it.peek().expect("peeked").0
        };
        let mut keys = Vec::with_capacity(per);
        let mut children = Vec::with_capacity(per);
        let mut inherited: SmallVec<[bool; 128]> = SmallVec::new();
        for (k, c, moved) in it.by_ref().take(per) {
            keys.push(k);
            children.push(c);
            inherited.push(moved);
        }
        keys[0] = key;
        out.push((key, Node::build_internal(keys, children, &inherited, rc)));
    }
    out
}

/// Rebuilds `node` (span `[lo, hi)`) with the `edits` (each meeting the span, clipped
/// to it or not) applied. Returns the replacement nodes with their keys. `sole`: the
/// node is freed once its replacement is installed (see [`replace`]).
fn splice_in(
    node: &Arc<Node>,
    lo: u64,
    hi: u64,
    edits: &[Edit<'_>],
    sole: bool,
    rc: &mut dyn RefCounts,
) -> Vec<(u64, Arc<Node>)> {
    match &node.kind {
        NodeKind::Leaf { extents } => {
            // Sole: the new extents are counted first (a segment that moves between
            // extents never drops to zero), the parts the edits remove after.
            let mut removed: SmallVec<[PhysSeg; 8]> = SmallVec::new();
            if sole {
                for s in edits
                    .iter()
                    .flat_map(|ed| ed.extents.iter())
                    .flat_map(|e| e.segments())
                {
                    rc.seg_add(s, 1);
                }
            }
            // Edits that only fill gaps (first writes): a leaf sharing this one's base
            // (see `leaf`), when they fit beside it.
            if let Some(extents) = extents.with_inserted(edits) {
                let leaf = Node::build_leaf(extents, !sole, rc);
                if sole {
                    node.refs_moved.store(true, Ordering::Relaxed);
                }
                return vec![(lo, leaf)];
            }
            // Appending past every extent of the leaf: keep it full (see `leaves_from`).
            let append = extents.last().is_none_or(|e| e.end() <= edits[0].from);
            let added: usize = edits.iter().map(|e| e.extents.len()).sum();
            let mut out: Vec<Extent> = Vec::with_capacity(extents.len() + added + 1);
            let mut rest = extents.iter();
            // What is left of an extent the previous edit cut.
            let mut cut: Option<Extent> = None;
            for ed in edits {
                while let Some(e) = cut.take().or_else(|| rest.next().cloned()) {
                    if e.end() <= ed.from {
                        out.push(e);
                        continue;
                    }
                    if e.vseg >= ed.to {
                        cut = Some(e);
                        break;
                    }
                    // Overlaps the range: keep what lies outside it.
                    if sole {
                        let (a, b) = (e.vseg.max(ed.from), e.end().min(ed.to));
                        removed.extend(e.slice(a, b).segments());
                    }
                    if e.vseg < ed.from {
                        out.push(e.slice(e.vseg, ed.from));
                    }
                    if e.end() > ed.to {
                        cut = Some(e.slice(ed.to, e.end()));
                        break;
                    }
                }
                out.extend_from_slice(&ed.extents);
            }
            out.extend(cut);
            out.extend(rest.cloned());
            debug_assert!(
                out.windows(2).all(|w| w[0].end() <= w[1].vseg),
                "extents overlap"
            );
            debug_assert!(
                out.iter().all(|e| e.vseg >= lo && e.end() <= hi),
                "extent crosses its leaf"
            );
            let leaves = leaves_from(lo, out, !append, !sole, rc);
            if sole {
                node.refs_moved.store(true, Ordering::Relaxed);
                for s in removed {
                    rc.seg_add(s, -1);
                }
            }
            leaves
        }
        NodeKind::Internal { keys, children } => {
            // Sole: the references this node holds on the children it shares with its
            // replacements pass to them, and those on the children it does not share
            // are dropped here, so that freeing it releases none (instead of each kept
            // child counted up for the new node and down again for this one).
            let mut parts: Vec<(u64, Arc<Node>, bool)> = Vec::with_capacity(children.len() + 2);
            let mut edited = edited_children(keys, lo, hi, edits).peekable();
            for (j, c) in children.iter().enumerate() {
                let Some((_, c_lo, c_hi, sub)) = edited.next_if(|(e, ..)| *e == j) else {
                    parts.push((if j == 0 { lo } else { keys[j] }, c.clone(), sole));
                    continue;
                };
                let new = splice_in(c, c_lo, c_hi, &sub, sole && c.refs() == 1, rc);
                parts.extend(new.into_iter().map(|(key, n)| (key, n, false)));
                if sole {
                    c.release(rc);
                }
            }
            if let Some(first) = parts.first_mut() {
                first.0 = lo;
            }
            let out = internals_from(lo, parts, rc);
            if sole {
                node.refs_moved.store(true, Ordering::Relaxed);
            }
            out
        }
    }
}

/// For each child of an internal node over `[lo, hi)` with first segments `keys` that
/// `edits` (sorted, disjoint) meet: its index, its span and the parts of the edits inside
/// it. Each is found by a bisection of `keys`, where a walk over every child costs the
/// node's fan-out for every node a batch of scattered edits goes through.
fn edited_children<'a>(
    keys: &'a [u64],
    lo: u64,
    hi: u64,
    edits: &'a [Edit<'a>],
) -> impl Iterator<Item = (usize, u64, u64, SmallVec<[Edit<'a>; 2]>)> + 'a {
    // The first edit that does not end before `at`, where the next child starts.
    let mut k = 0;
    let mut at = lo;
    std::iter::from_fn(move || {
        while k < edits.len() && edits[k].to <= at {
            k += 1;
        }
        let first = edits.get(k)?;
        // The child whose span holds the first place still to edit: the last whose
        // first segment is at or before it (the first child's span starts at `lo`).
        let pos = first.from.max(at);
        let j = keys
            .get(1..)
            .map_or(0, |rest| rest.partition_point(|&key| key <= pos));
        let c_lo = if j == 0 { lo } else { keys[j] };
        let c_hi = keys.get(j + 1).copied().unwrap_or(hi);
        let mut m = k;
        while m < edits.len() && edits[m].from < c_hi {
            m += 1;
        }
        let sub = edits[k..m].iter().map(|e| e.within(c_lo, c_hi)).collect();
        at = c_hi;
        Some((j, c_lo, c_hi, sub))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vdisk::map::{ExtentState, Layer, Layers, MAX_RUN_SEGMENTS};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    #[derive(Default)]
    struct Counts {
        segs: HashMap<PhysSeg, i64>,
        pages_freed: Vec<u64>,
    }

    impl RefCounts for Counts {
        fn seg_add(&mut self, seg: PhysSeg, delta: i64) {
            let c = self.segs.entry(seg).or_default();
            *c += delta;
            assert!(*c >= 0, "segment {seg} count below zero");
            if *c == 0 {
                self.segs.remove(&seg);
            }
        }
        fn page_free(&mut self, page: u64) {
            self.pages_freed.push(page);
        }
    }

    fn ext(vseg: u64, seg: u64) -> Extent {
        Extent::full(vseg, seg, 1)
    }

    /// Expands a tree to per-segment (vseg → phys seg) pairs.
    fn flatten(root: &Option<Arc<Node>>) -> BTreeMap<u64, u64> {
        let mut m = BTreeMap::new();
        if let Some(r) = root {
            r.visit_from(0, &mut |e| {
                for i in 0..e.len as u64 {
                    m.insert(
                        e.vseg + i,
                        e.layers[0].seg() + if e.len > 1 { i } else { 0 },
                    );
                }
                true
            });
        }
        m
    }

    /// Segment references as the tables hold them: once per distinct leaf.
    fn recount(roots: &[&Option<Arc<Node>>]) -> HashMap<PhysSeg, i64> {
        fn walk(
            n: &Arc<Node>,
            seen: &mut std::collections::HashSet<*const Node>,
            out: &mut HashMap<PhysSeg, i64>,
        ) {
            if !seen.insert(Arc::as_ptr(n)) {
                return;
            }
            match &n.kind {
                NodeKind::Internal { children, .. } => {
                    for c in children {
                        walk(c, seen, out);
                    }
                }
                NodeKind::Leaf { extents } => {
                    for s in extents.iter().flat_map(|e| e.segments()) {
                        *out.entry(s).or_default() += 1;
                    }
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = HashMap::new();
        for r in roots.iter().copied().flatten() {
            walk(r, &mut seen, &mut out);
        }
        out
    }

    /// Each node's controller count equals its references from the tables: the roots
    /// (a root held by several, once by each) and the internal nodes over it (once per
    /// distinct parent node).
    fn check_refs(roots: &[&Option<Arc<Node>>]) {
        fn walk(
            n: &Arc<Node>,
            seen: &mut std::collections::HashSet<*const Node>,
            want: &mut HashMap<*const Node, (Arc<Node>, u32)>,
        ) {
            if !seen.insert(Arc::as_ptr(n)) {
                return;
            }
            if let NodeKind::Internal { children, .. } = &n.kind {
                for c in children {
                    want.entry(Arc::as_ptr(c))
                        .or_insert_with(|| (c.clone(), 0))
                        .1 += 1;
                    walk(c, seen, want);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut want = HashMap::new();
        for r in roots.iter().copied().flatten() {
            want.entry(Arc::as_ptr(r))
                .or_insert_with(|| (r.clone(), 0))
                .1 += 1;
        }
        for r in roots.iter().copied().flatten() {
            walk(r, &mut seen, &mut want);
        }
        for (n, count) in want.values() {
            assert_eq!(n.refs(), *count, "a node's count is not its references");
        }
    }

    fn check_structure(root: &Option<Arc<Node>>) {
        /// Every leaf under `n` is `height` levels down (the one-segment splice bound,
        /// `commit::splice_bound`, counts one node a level from the root's height).
        fn leaves_at(n: &Node, height: usize) {
            match &n.kind {
                NodeKind::Leaf { .. } => assert_eq!(height, 1, "a leaf above the others"),
                NodeKind::Internal { children, .. } => {
                    assert!(height > 1, "an internal node at the leaves' level");
                    for c in children {
                        leaves_at(c, height - 1);
                    }
                }
            }
        }
        if let Some(r) = root {
            leaves_at(r, r.height());
            let mut prev_end = 0;
            r.visit_from(0, &mut |e| {
                assert!(e.vseg >= prev_end, "extents overlap or are out of order");
                prev_end = e.end();
                true
            });
            // Every extent is found by lookup of each of its segments.
            r.visit_from(0, &mut |e| {
                for v in e.vseg..e.end() {
                    let f = r.lookup(v).expect("lookup finds the extent");
                    assert_eq!(f.vseg, e.vseg);
                }
                true
            });
        }
    }

    /// Random one-segment inserts over a big disk (first writes at random) keep leaves
    /// at least about half full, as sequential inserts do.
    #[test]
    fn random_inserts_keep_leaves_half_full() {
        let mut rc = Counts::default();
        let mut root = None;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x % (1 << 22);
            if !seen.insert(v) {
                continue;
            }
            let new = splice(root.as_ref(), v, v + 1, &[ext(v, v)], &mut rc);
            set_root(&mut root, new, &mut rc);
        }
        let r = root.as_ref().unwrap();
        assert_eq!(r.extent_count(), 20_000);
        let mut leaves = Vec::new();
        r.for_each_node(&mut |n| {
            if let NodeKind::Leaf { extents } = &n.kind {
                leaves.push(extents.len());
            }
        });
        // The widest of these extents (segment numbers of four bytes) counted.
        let per_page = LEAF_BUDGET_BYTES / extent_budget(&ext(1 << 21, 1 << 21));
        let avg = 20_000.0 / leaves.len() as f64;
        assert!(
            avg >= per_page as f64 * 0.6,
            "{} leaves, {avg:.1} extents a leaf where {per_page} fit",
            leaves.len()
        );
        let small = leaves.iter().filter(|&&n| n < per_page / 2 - 1).count();
        assert!(small <= 1, "{small} leaves under half full: {leaves:?}");
        check_structure(&root);
    }

    /// Sequential one-segment inserts (a disk written in order) fill leaves: appending
    /// to a full leaf starts a new one instead of halving it.
    #[test]
    fn sequential_inserts_fill_leaves() {
        let mut rc = Counts::default();
        let mut root = None;
        for v in 0..20_000u64 {
            let new = splice(root.as_ref(), v, v + 1, &[ext(v, v)], &mut rc);
            set_root(&mut root, new, &mut rc);
        }
        let mut leaves = 0usize;
        root.as_ref().unwrap().for_each_node(&mut |n| {
            if matches!(n.kind, NodeKind::Leaf { .. }) {
                leaves += 1;
            }
        });
        let per_page = LEAF_BUDGET_BYTES / extent_budget(&ext(19_999, 19_999));
        let avg = 20_000.0 / leaves as f64;
        assert!(
            avg >= per_page as f64 * 0.95,
            "{leaves} leaves, {avg:.1} extents a leaf where {per_page} fit"
        );
        check_structure(&root);
    }

    #[test]
    fn insert_lookup_and_replace() {
        let mut rc = Counts::default();
        let mut root = None;
        for v in 0..2000u64 {
            let new = splice(root.as_ref(), v, v + 1, &[ext(v, 10_000 + v)], &mut rc);
            set_root(&mut root, new, &mut rc);
        }
        let r = root.as_ref().unwrap();
        assert!(r.height() >= 2, "2000 extents need more than one leaf");
        assert_eq!(r.extent_count(), 2000);
        for v in 0..2000 {
            assert_eq!(r.lookup(v).unwrap().layers[0].seg(), 10_000 + v);
        }
        assert!(r.lookup(2000).is_none());
        assert_eq!(rc.segs.len(), 2000);
        assert!(rc.segs.values().all(|&c| c == 1));
        // Remove a big range spanning many leaves.
        let new = splice(root.as_ref(), 100, 1900, &[], &mut rc);
        set_root(&mut root, new, &mut rc);
        assert_eq!(root.as_ref().unwrap().extent_count(), 200);
        assert_eq!(rc.segs.len(), 200);
        check_structure(&root);
        // Remove everything.
        let new = splice(root.as_ref(), 0, u64::MAX, &[], &mut rc);
        set_root(&mut root, new, &mut rc);
        assert!(root.is_none());
        assert!(rc.segs.is_empty(), "every segment released");
    }

    #[test]
    fn runs_are_trimmed_at_range_edges() {
        let mut rc = Counts::default();
        let mut root = None;
        let new = splice(
            root.as_ref(),
            0,
            256,
            &[Extent::run(0, 256, 1000, 1)],
            &mut rc,
        );
        set_root(&mut root, new, &mut rc);
        assert_eq!(rc.segs.len(), 256);
        let new = splice(root.as_ref(), 10, 11, &[ext(10, 5)], &mut rc);
        set_root(&mut root, new, &mut rc);
        let r = root.as_ref().unwrap();
        assert_eq!(r.extent_count(), 3);
        assert_eq!(r.lookup(9).unwrap().len, 10);
        assert_eq!(r.lookup(10).unwrap().layers[0].seg(), 5);
        assert_eq!(r.lookup(11).unwrap().vseg, 11);
        assert_eq!(flatten(&root)[&200], 1200);
        assert!(
            !rc.segs.contains_key(&1010),
            "the replaced run segment is released"
        );
        assert_eq!(rc.segs.len(), 256);
    }

    #[test]
    fn snapshots_share_nodes_and_count_segments_per_leaf() {
        let mut rc = Counts::default();
        let mut origin = None;
        for v in 0..2000u64 {
            let new = splice(origin.as_ref(), v, v + 1, &[ext(v, v)], &mut rc);
            set_root(&mut origin, new, &mut rc);
        }
        // Snapshot: share the root.
        let snap = origin.clone();
        snap.as_ref().unwrap().retain();
        // Overwrite one segment in the origin: the path is copied, the rest shared.
        let new = splice(origin.as_ref(), 7, 8, &[ext(7, 9999)], &mut rc);
        set_root(&mut origin, new, &mut rc);
        assert_eq!(flatten(&snap)[&7], 7);
        assert_eq!(flatten(&origin)[&7], 9999);
        // Segment 7 is referenced only by the snapshot's leaf; the other segments of
        // that leaf by both leaves.
        assert_eq!(rc.segs[&7], 1);
        assert_eq!(rc.segs[&9999], 1);
        assert_eq!(rc.segs[&8], 2);
        // Segments in untouched leaves are shared through shared nodes: counted once.
        assert_eq!(rc.segs[&1999], 1);
        // Deleting the snapshot releases exactly what only it referenced.
        let mut snap = snap;
        set_root(&mut snap, None, &mut rc);
        assert!(!rc.segs.contains_key(&7));
        assert!(rc.segs.values().all(|&c| c == 1));
        assert_eq!(rc.segs.len(), 2000);
        set_root(&mut origin, None, &mut rc);
        assert!(rc.segs.is_empty());
    }

    #[test]
    fn written_nodes_free_their_pages_when_released() {
        let mut rc = Counts::default();
        let mut root = None;
        let new = splice(root.as_ref(), 0, 1, &[ext(0, 1)], &mut rc);
        set_root(&mut root, new, &mut rc);
        root.as_ref().unwrap().set_page(42, 1, 0);
        let new = splice(root.as_ref(), 0, 1, &[ext(0, 2)], &mut rc);
        set_root(&mut root, new, &mut rc);
        assert_eq!(rc.pages_freed, vec![42]);
    }

    /// Gives every node under `n` a page (as a commit does), numbered from `next`.
    fn mark_written(n: &Arc<Node>, next: &mut u64) {
        if let NodeKind::Internal { children, .. } = &n.kind {
            for c in children {
                mark_written(c, next);
            }
        }
        n.set_page(*next, 1, 0);
        *next += 1;
    }

    #[test]
    fn written_leaves_are_copied_once_in_one_pass_and_the_mapping_kept() {
        let mut rc = Counts::default();
        let mut root = None;
        let exts: Vec<Extent> = (0..2000).map(|v| ext(v, 10_000 + v)).collect();
        let new = splice(root.as_ref(), 0, 2000, &exts, &mut rc);
        set_root(&mut root, new, &mut rc);
        mark_written(root.as_ref().unwrap(), &mut 100);
        let before = flatten(&root);
        let r = root.clone().unwrap();
        let (leaf5, leaf1500, leaf800) = (r.leaf_page(5), r.leaf_page(1500), r.leaf_page(800));
        assert!(leaf5 != leaf1500 && leaf5 != leaf800 && leaf1500 != leaf800);
        drop(r);
        // Two segments in one leaf, one in another, one not in the table.
        let copied = copy_written_leaves(&mut root, &[5, 6, 1500, 3000], &mut rc);
        assert_eq!(copied, 3);
        let r = root.clone().unwrap();
        assert_eq!(r.leaf_page(5), NO_PAGE);
        assert_eq!(r.leaf_page(1500), NO_PAGE);
        assert_eq!(
            r.leaf_page(800),
            leaf800,
            "a leaf no segment asked for was copied"
        );
        assert!(rc.pages_freed.contains(&leaf5) && rc.pages_freed.contains(&leaf1500));
        drop(r);
        assert_eq!(flatten(&root), before);
        assert_eq!(recount(&[&root]), rc.segs);
        check_structure(&root);
        // The copies are not written yet: nothing more to copy.
        assert_eq!(copy_written_leaves(&mut root, &[5, 6, 1500], &mut rc), 0);
    }

    /// A held version of a table, after the table moved on, is let go a few nodes at a
    /// time: the same segments and pages are freed as by one release, and what the live
    /// table reaches is untouched.
    #[test]
    fn a_held_root_released_gradually_frees_what_one_release_frees() {
        let build = |rc: &mut Counts| {
            let mut root = None;
            let exts: Vec<Extent> = (0..12_000).map(|v| ext(v, 20_000 + v)).collect();
            let new = splice(root.as_ref(), 0, 12_000, &exts, rc);
            set_root(&mut root, new, rc);
            mark_written(root.as_ref().unwrap(), &mut 100);
            // A capture holds this version while the table moves on under it.
            let held = root.clone().unwrap();
            held.retain();
            for v in (0..12_000).step_by(7) {
                let new = splice(root.as_ref(), v, v + 1, &[ext(v, 50_000 + v)], rc);
                set_root(&mut root, new, rc);
            }
            (root, held)
        };
        let (mut rc_once, mut rc_gradual) = (Counts::default(), Counts::default());
        let (root_once, held) = build(&mut rc_once);
        held.release(&mut rc_once);
        let (root_gradual, held) = build(&mut rc_gradual);
        let mut pending = vec![held];
        let mut calls = 0;
        while !Node::release_some(&mut pending, &mut rc_gradual, 3) {
            calls += 1;
        }
        assert!(calls >= 5, "released in {calls} steps of 3 nodes");
        assert!(!rc_once.pages_freed.is_empty());
        rc_once.pages_freed.sort_unstable();
        rc_gradual.pages_freed.sort_unstable();
        assert_eq!(rc_gradual.pages_freed, rc_once.pages_freed);
        assert_eq!(rc_gradual.segs, rc_once.segs);
        assert_eq!(recount(&[&root_gradual]), rc_gradual.segs);
        assert_eq!(flatten(&root_gradual), flatten(&root_once));
        check_structure(&root_gradual);
    }

    /// First writes into a table no one else holds change its unwritten nodes in place
    /// (the root stays the same node) with the counts a copy would leave; a root held
    /// outside the table (an agent's view) or a written node is copied instead, and
    /// what the holder sees does not change.
    #[test]
    fn unshared_unwritten_nodes_change_in_place() {
        let in_place = || IN_PLACE.with(|c| c.get());
        let mut rc = Counts::default();
        let mut root = None;
        // Every other segment mapped: three levels, gaps everywhere.
        let exts: Vec<Extent> = (0..60_000).map(|v| ext(2 * v, 100_000 + v)).collect();
        let new = splice(root.as_ref(), 0, 120_000, &exts, &mut rc);
        set_root(&mut root, new, &mut rc);
        assert!(root.as_ref().unwrap().height() >= 3);
        let insert = |root: &mut Option<Arc<Node>>, rc: &mut Counts, vs: &[u64]| {
            let exts: Vec<Extent> = vs.iter().map(|&v| ext(v, 1_000_000 + v)).collect();
            let edits: Vec<Edit<'_>> = exts
                .iter()
                .map(|e| Edit {
                    from: e.vseg,
                    to: e.vseg + 1,
                    extents: Cow::Borrowed(std::slice::from_ref(e)),
                })
                .collect();
            replace(root, &edits, rc);
        };
        let check = |root: &Option<Arc<Node>>, others: &[&Option<Arc<Node>>], rc: &Counts| {
            let all: Vec<_> = std::iter::once(root)
                .chain(others.iter().copied())
                .collect();
            check_refs(&all);
            assert_eq!(recount(&all), rc.segs);
            check_structure(root);
        };
        // Nothing holds the table: in place, a batch and one at a time.
        let (ptr, before) = (Arc::as_ptr(root.as_ref().unwrap()), in_place());
        insert(&mut root, &mut rc, &[1, 3, 20_001, 39_999]);
        insert(&mut root, &mut rc, &[5]);
        assert_eq!(
            Arc::as_ptr(root.as_ref().unwrap()),
            ptr,
            "the root was copied"
        );
        assert!(in_place() >= before + 2, "no edit went in place");
        check(&root, &[], &rc);
        for v in [1, 3, 5, 20_001, 39_999] {
            assert_eq!(
                root.as_ref().unwrap().lookup(v).unwrap().layers[0].seg(),
                1_000_000 + v
            );
        }
        // A view holds the root: copied, and the view keeps what it showed.
        let view = root.clone();
        let seen = flatten(&view);
        let before = in_place();
        insert(&mut root, &mut rc, &[7, 30_001]);
        assert_ne!(
            Arc::as_ptr(root.as_ref().unwrap()),
            ptr,
            "a held root changed"
        );
        assert_eq!(in_place(), before, "a node a view reaches changed in place");
        assert_eq!(flatten(&view), seen);
        assert_eq!(flatten(&root).len(), seen.len() + 2);
        check(&root, &[], &rc);
        // Let go of the view: the copies are the table's alone, and change in place.
        drop(view);
        let ptr = Arc::as_ptr(root.as_ref().unwrap());
        let before = in_place();
        insert(&mut root, &mut rc, &[9, 30_003]);
        assert_eq!(Arc::as_ptr(root.as_ref().unwrap()), ptr);
        assert!(in_place() > before);
        check(&root, &[], &rc);
        // Written: copied, and no written page changes.
        mark_written(root.as_ref().unwrap(), &mut 10_000_000);
        let before = in_place();
        insert(&mut root, &mut rc, &[11]);
        assert_ne!(
            Arc::as_ptr(root.as_ref().unwrap()),
            ptr,
            "a written root changed"
        );
        assert_eq!(in_place(), before);
        check(&root, &[], &rc);
        // A snapshot shares the root (counted): copied too.
        let snap = root.clone();
        snap.as_ref().unwrap().retain();
        let ptr = Arc::as_ptr(root.as_ref().unwrap());
        insert(&mut root, &mut rc, &[13]);
        insert(&mut root, &mut rc, &[15]);
        assert_ne!(Arc::as_ptr(root.as_ref().unwrap()), ptr);
        check(&root, &[&snap], &rc);
        let mut snap = snap;
        set_root(&mut snap, None, &mut rc);
        check(&root, &[], &rc);
        // Releasing everything brings every count to zero.
        set_root(&mut root, None, &mut rc);
        assert!(rc.segs.is_empty());
    }

    #[test]
    fn partial_layers_are_encoded_larger() {
        let e = Extent {
            vseg: 0,
            len: 1,
            state: ExtentState::Mapped,
            birth: 1.into(),
            layers: Layers::from_slice(&[Layer::partial(1), Layer::full(2)]),
        };
        assert_eq!(extent_encoded_len(&e), 22 + 41 + 9);
        // Packed: vseg, len, flags, birth, then the partial layer's segment and fill
        // budget, the full layer's segment and tag.
        assert_eq!(extent_budget(&e), 4 + (1 + 16) + (1 + 1));
    }

    /// What the property tests write over `[at, to)`, segments numbered from
    /// `next_seg`: `kind` 0 unmaps it, 1 maps it as runs of at most 256 segments, 2 maps
    /// every third segment.
    fn new_extents(kind: u8, at: u64, to: u64, next_seg: &mut u64) -> Vec<Extent> {
        match kind {
            0 => vec![],
            1 => {
                let mut v = Vec::new();
                let mut s = at;
                while s < to {
                    let n = (to - s).min(MAX_RUN_SEGMENTS as u64);
                    v.push(Extent::run(s, n as u16, *next_seg, 1));
                    *next_seg += n;
                    s += n;
                }
                v
            }
            _ => (at..to)
                .step_by(3)
                .map(|v| {
                    *next_seg += 1;
                    ext(v, *next_seg)
                })
                .collect(),
        }
    }

    proptest! {
        #[test]
        fn splice_matches_a_model(ops in proptest::collection::vec((0u64..3000, 1u64..300, 0u8..6), 1..120)) {
            let mut rc = Counts::default();
            let mut root: Option<Arc<Node>> = None;
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            type Snapshot = (Option<Arc<Node>>, BTreeMap<u64, u64>);
            let mut snaps: Vec<Snapshot> = Vec::new();
            // Roots held outside the table without a count, as agents' views hold
            // them: while held, nothing they reach changes in place.
            let mut views: Vec<Snapshot> = Vec::new();
            let mut next_seg = 1_000_000u64;
            let n = ops.len();
            for (i, (at, len, kind)) in ops.into_iter().enumerate() {
                let to = at + len;
                if kind == 3 {
                    // snapshot
                    if let Some(r) = &root { r.retain(); }
                    snaps.push((root.clone(), model.clone()));
                    continue;
                }
                if kind == 4 {
                    views.push((root.clone(), model.clone()));
                    continue;
                }
                if kind == 5 {
                    for (v, m) in views.drain(..) {
                        prop_assert_eq!(&flatten(&v), &m);
                    }
                    continue;
                }
                let new = new_extents(kind, at, to, &mut next_seg);
                for v in at..to { model.remove(&v); }
                for e in &new {
                    for i in 0..e.len as u64 {
                        model.insert(e.vseg + i, e.layers[0].seg() + if e.len > 1 { i } else { 0 });
                    }
                }
                // Replaced in place: segment references pass from leaves no snapshot
                // shares to their replacements.
                replace(&mut root, &[Edit { from: at, to, extents: Cow::Borrowed(&new) }], &mut rc);
                check_structure(&root);
                prop_assert_eq!(&flatten(&root), &model);
                if i % 16 == 15 || i + 1 == n {
                    let live: Vec<_> =
                        std::iter::once(&root).chain(snaps.iter().map(|(s, _)| s)).collect();
                    prop_assert_eq!(&rc.segs, &recount(&live));
                    check_refs(&live);
                }
            }
            for (s, m) in snaps.iter().chain(&views) {
                prop_assert_eq!(&flatten(s), m);
            }
            drop(views);
            // Reference counts equal the number of distinct leaves referencing each
            // segment; releasing everything brings every count to zero.
            for (mut s, _) in snaps {
                set_root(&mut s, None, &mut rc);
            }
            set_root(&mut root, None, &mut rc);
            prop_assert!(rc.segs.is_empty());
        }

        /// A batch of edits applied in one pass builds the table that applying them one
        /// at a time builds, leaves a snapshot of the old table as it was, and keeps the
        /// segment counts (three levels of nodes: 20 000 one-segment extents at most).
        #[test]
        fn splice_many_matches_one_splice_at_a_time(
            base in 0u64..20_000,
            ops in proptest::collection::vec((0u64..20_400, 1u64..400, 0u8..3), 1..60),
        ) {
            let mut next_seg = 1_000_000u64;
            let mut edits: Vec<(u64, u64, Vec<Extent>)> = Vec::new();
            let mut ops = ops;
            ops.sort();
            for (at, len, kind) in ops {
                let to = at + len;
                if edits.last().is_some_and(|(_, t, _)| *t > at) {
                    continue;
                }
                edits.push((at, to, new_extents(kind, at, to, &mut next_seg)));
            }
            let build_base = |rc: &mut Counts| {
                let exts: Vec<Extent> = (0..base).map(|v| ext(v, v)).collect();
                let mut root = None;
                if base > 0 {
                    let r = splice(None, 0, base, &exts, rc);
                    set_root(&mut root, r, rc);
                }
                root
            };
            // One at a time.
            let mut rc_one = Counts::default();
            let mut one = build_base(&mut rc_one);
            for (from, to, new) in &edits {
                replace(&mut one, &[Edit { from: *from, to: *to, extents: Cow::Borrowed(new) }], &mut rc_one);
                check_refs(&[&one]);
            }
            // In one pass, with a snapshot of the base kept.
            let mut rc_many = Counts::default();
            let mut many = build_base(&mut rc_many);
            let snap = many.clone();
            if let Some(r) = &snap { r.retain(); }
            let before = flatten(&snap);
            let batch: Vec<Edit<'_>> = edits
                .iter()
                .map(|(from, to, new)| Edit { from: *from, to: *to, extents: Cow::Borrowed(new) })
                .collect();
            let r = splice_many(many.as_ref(), &batch, &mut rc_many);
            set_root(&mut many, r, &mut rc_many);
            check_structure(&many);
            check_refs(&[&many, &snap]);
            prop_assert_eq!(flatten(&many), flatten(&one));
            prop_assert_eq!(flatten(&snap), before);
            // Counts are per leaf: the same in both tables once the snapshot is gone.
            let mut snap = snap;
            set_root(&mut snap, None, &mut rc_many);
            prop_assert_eq!(&rc_many.segs, &rc_one.segs);
            set_root(&mut many, None, &mut rc_many);
            set_root(&mut one, None, &mut rc_one);
            prop_assert!(rc_many.segs.is_empty());
        }
    }
}
