//! Reading and verifying a pool's durable state: the one walk behind opening a pool
//! (`load.rs`, which refuses at the first problem) and `tessera check` (`check.rs`,
//! which reports every one), so that open trusts nothing the checker would reject.
//!
//! [`read_root`] reads the labels' bdevs and the superblock in force and checks them
//! against each other and against the devices (pool, geometry, container records and
//! sizes, the metadata area). [`scan`] then follows every pointer from the superblock,
//! verifying each page against the pointer that leads to it (its transaction and
//! checksum: a lost or misdirected write is caught there) and each field against the
//! pool:
//!
//! - the directory chain: pages in the node area, no loop; records with unique ids
//!   below `next_disk_id`, unique names, existing parents, generations not after the
//!   pool's;
//! - the tables: node pages in the node area, each page in one role only (directory,
//!   internal node, leaf), at most [`MAX_DEPTH`] levels, keys inside their node's span,
//!   extents inside their leaf's, births not after the pool's generation, segments
//!   inside the pool and not reserved, fills within a segment's granules; reference
//!   counts (one per distinct leaf) and one owner for every writable segment;
//! - the space map: index and pages verified through their pointers, counts equal to
//!   what the tables hold. A damaged space map is an error for the checker; open
//!   rebuilds it from the (verified) tables and warns.
//!
//! Nothing it allocates is larger than what the validated superblock bounds (the
//! pool's segments, its metadata pages) or than what it actually read.

use super::VdiskError;
use super::alloc::RESERVED;
use super::load::read_bytes;
use super::map::{Geometry, MAX_GRANULES};
use super::meta::directory::DiskRecord;
use super::meta::label::{Label, Role};
use super::meta::node::RawExtent;
use super::meta::space_map::{SM_COUNTS_PER_PAGE, SM_PTRS_PER_PAGE, SpaceMapPtrs, entries_of_page};
use super::meta::superblock::{self, Superblock};
use super::meta::{self, BlockPtr, MetaError, PAGE_BYTES, SUPERBLOCK_OFFSET};
use crate::bdev::{Bdev, IoBuf, IoStatus};
use crate::reactor;
use rustc_hash::FxHashMap;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// Deepest table a pool may hold (a loop in the pointers ends here).
pub(crate) const MAX_DEPTH: usize = 16;

/// What the walk does with a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Stop at the first one (open refuses).
    Open,
    /// Record it and go on where the pointers still lead somewhere (the checker).
    Check,
}

/// The bdevs of a pool and the superblock in force, checked against each other.
pub(crate) struct Root {
    pub sb: Superblock,
    pub meta_bdev: Arc<dyn Bdev>,
    /// The bdev of each container the superblock records (`None`: not among the bdevs;
    /// an error, open has refused already).
    pub containers: Vec<Option<Arc<dyn Bdev>>>,
    pub errors: Vec<VdiskError>,
    pub notes: Vec<String>,
}

fn bytes_of(b: &Arc<dyn Bdev>) -> u64 {
    b.num_blocks().saturating_mul(b.block_size() as u64)
}

/// Finds the metadata bdev among `labelled`, reads the superblock in force and checks
/// labels, superblock and devices against each other. `Err` when there is nothing to
/// go on (no metadata bdev, no valid superblock); in [`Mode::Open`] also at the first
/// problem.
pub(crate) async fn read_root(
    labelled: &[(Arc<dyn Bdev>, Label)],
    mode: Mode,
) -> Result<Root, VdiskError> {
    let Some((_, first)) = labelled.first() else {
        return Err(VdiskError::NoPool("no bdevs given".into()));
    };
    let pool_uuid = first.pool_uuid;
    let mut errors: Vec<VdiskError> = Vec::new();
    let fail = |errors: &mut Vec<VdiskError>, e: VdiskError| -> Result<(), VdiskError> {
        if mode == Mode::Open {
            return Err(e);
        }
        errors.push(e);
        Ok(())
    };
    for (b, l) in labelled {
        if l.pool_uuid != pool_uuid {
            fail(
                &mut errors,
                VdiskError::NoPool(format!(
                    "bdev `{}` belongs to pool `{}` ({}), not `{}` ({pool_uuid})",
                    b.name(),
                    l.pool_name,
                    l.pool_uuid,
                    first.pool_name
                )),
            )?;
        }
    }
    let mine = |role: Role| {
        labelled
            .iter()
            .filter(move |(_, l)| l.pool_uuid == pool_uuid && l.role == role)
    };
    let metas: Vec<&(Arc<dyn Bdev>, Label)> = mine(Role::Metadata)
        .chain(mine(Role::DataAndMetadata))
        .collect();
    let Some((meta_bdev, meta_label)) = metas.first().map(|(b, l)| (b.clone(), l.clone())) else {
        return Err(VdiskError::NoPool(format!(
            "the metadata of pool `{}` is not among the bdevs",
            first.pool_name
        )));
    };
    if metas.len() > 1 {
        fail(
            &mut errors,
            VdiskError::NoPool(format!(
                "bdevs `{}` and `{}` both hold the metadata of pool `{}`",
                metas[0].0.name(),
                metas[1].0.name(),
                first.pool_name
            )),
        )?;
    }
    let blocks = read_bytes(&meta_bdev, SUPERBLOCK_OFFSET, 2 * PAGE_BYTES)
        .await
        .map_err(|status| VdiskError::Io {
            what: format!("reading the superblocks of `{}`", meta_bdev.name()),
            status,
        })?;
    let picked = superblock::pick(
        &blocks[..PAGE_BYTES],
        &blocks[PAGE_BYTES..2 * PAGE_BYTES],
        Some(pool_uuid),
    )?;
    let sb = picked.sb;
    let mut notes = picked.notes;
    if let Some(e) = picked.other_invalid {
        notes.push(format!("{e} (an older slot; slot {} is used)", picked.slot));
    }
    // Labels against the superblock.
    for (b, l) in labelled.iter().filter(|(_, l)| l.pool_uuid == pool_uuid) {
        let what = |field, reason: String| VdiskError::Meta(MetaError::Label { field, reason });
        if l.segment_bytes != sb.segment_bytes || l.block_size != sb.block_size {
            fail(
                &mut errors,
                what(
                    "segment_bytes",
                    format!(
                        "the label of `{}` says {}-byte segments of {}-byte blocks, the \
                         superblock {} of {}",
                        b.name(),
                        l.segment_bytes,
                        l.block_size,
                        sb.segment_bytes,
                        sb.block_size
                    ),
                ),
            )?;
        }
        if l.container_count as usize != sb.containers.len() {
            fail(
                &mut errors,
                what(
                    "container_count",
                    format!(
                        "the label of `{}` says {} containers, the superblock {}",
                        b.name(),
                        l.container_count,
                        sb.containers.len()
                    ),
                ),
            )?;
        }
    }
    let separate = meta_label.role == Role::Metadata;
    if separate != sb.separate_metadata || (separate && meta_label.bdev_uuid != sb.metadata_uuid) {
        fail(
            &mut errors,
            VdiskError::NoPool(format!(
                "`{}` holds the metadata as {:?}, but the superblock records {}",
                meta_bdev.name(),
                meta_label.role,
                if sb.separate_metadata {
                    format!("a separate metadata bdev {}", sb.metadata_uuid)
                } else {
                    "the metadata on container 0".to_string()
                }
            )),
        )?;
    }
    if bytes_of(&meta_bdev) < sb.meta_end_byte() || meta_bdev.block_size() as usize > PAGE_BYTES {
        fail(
            &mut errors,
            VdiskError::NoPool(format!(
                "`{}` ({} bytes) is smaller than the metadata area of pool `{}` (up to byte \
                 {})",
                meta_bdev.name(),
                bytes_of(&meta_bdev),
                sb.pool_name,
                sb.meta_end_byte()
            )),
        )?;
    }
    // Containers.
    let mut containers = Vec::with_capacity(sb.containers.len());
    for (i, rec) in sb.containers.iter().enumerate() {
        let found = labelled.iter().find(|(_, l)| {
            l.pool_uuid == pool_uuid
                && l.role != Role::Metadata
                && l.container_index == i as u32
                && l.bdev_uuid == rec.bdev_uuid
        });
        let Some((b, l)) = found else {
            fail(
                &mut errors,
                VdiskError::NoPool(format!(
                    "container {i} of pool `{}` (bdev uuid {}) is missing",
                    sb.pool_name, rec.bdev_uuid
                )),
            )?;
            containers.push(None);
            continue;
        };
        let want_role = if i == 0 && !sb.separate_metadata {
            Role::DataAndMetadata
        } else {
            Role::Data
        };
        if l.role != want_role {
            fail(
                &mut errors,
                VdiskError::NoPool(format!(
                    "bdev `{}` is labelled {:?}; container {i} of pool `{}` is {want_role:?}",
                    b.name(),
                    l.role,
                    sb.pool_name
                )),
            )?;
        }
        if bytes_of(b) / sb.segment_bytes < rec.segments {
            fail(
                &mut errors,
                VdiskError::NoPool(format!(
                    "bdev `{}` is smaller than the {} segments pool `{}` records for it",
                    b.name(),
                    rec.segments,
                    sb.pool_name
                )),
            )?;
        }
        containers.push(Some(b.clone()));
    }
    Ok(Root {
        sb,
        meta_bdev,
        containers,
        errors,
        notes,
    })
}

/// A decoded table node page.
pub(crate) enum NodePage {
    Internal(Vec<(u64, BlockPtr)>),
    Leaf(Vec<RawExtent>),
}

/// A table node page as read: the pointer to the version found (its page, the
/// transaction that wrote it, its checksum) and its contents.
pub(crate) struct ScannedNode {
    pub found: BlockPtr,
    pub node: NodePage,
}

/// What [`scan`] found.
pub(crate) struct Scan {
    pub records: Vec<DiskRecord>,
    /// Each record's table root.
    pub roots: Vec<BlockPtr>,
    /// The directory chain's pages, in order.
    pub dir_pages: Vec<u64>,
    /// Every table node page reached and decoded.
    pub nodes: FxHashMap<u64, ScannedNode>,
    /// References per segment: one per distinct leaf (and per layer of it) naming it.
    pub counts: SegCounts,
    /// The pointers of the space map in force (what the next commit must not overwrite).
    pub sm_ptrs: SpaceMapPtrs,
    /// Leaves reached (distinct pages) and their extents.
    pub leaves: usize,
    pub extents: usize,
    /// Problems with the directory or the tables.
    pub errors: Vec<VdiskError>,
    /// Problems with the space map (open rebuilds it from the tables).
    pub space_map_errors: Vec<VdiskError>,
    pub notes: Vec<String>,
}

/// What a node-area page serves as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    Directory,
    Internal,
    Leaf,
}

/// One way to reach a node page.
struct Visit {
    ptr: BlockPtr,
    /// The key span the parent gives the node.
    lo: u64,
    hi: u64,
    depth: usize,
    /// The pointer, for errors ("internal node 70, child 3").
    via: String,
    /// Index of the disk record whose table this is (the first one to reach it).
    disk: usize,
}

struct Walk<'a> {
    sb: &'a Superblock,
    meta_bdev: &'a Arc<dyn Bdev>,
    mode: Mode,
    /// (first segment, end of reserved segments) per container.
    reserved: Vec<(u64, u64)>,
    total_segments: u64,
    granules: u64,
    segment_blocks: u64,
    out: Scan,
}

/// How many leaves reference each segment of the pool: a count per segment, indexed by
/// segment (a pool's segments are numbered densely; a hash map of the referenced ones
/// cost more in time and memory once a pool is a few percent mapped).
#[derive(Debug)]
pub struct SegCounts {
    counts: Vec<u32>,
    referenced: usize,
}

impl SegCounts {
    fn new(total_segments: u64) -> SegCounts {
        SegCounts {
            counts: vec![0; total_segments as usize],
            referenced: 0,
        }
    }

    /// Leaves referencing segment `s` (0 beyond the pool).
    pub fn get(&self, s: u64) -> u32 {
        self.counts.get(s as usize).copied().unwrap_or(0)
    }

    /// One more leaf references `s` (a segment of the pool: the decoders bound them).
    fn add(&mut self, s: u64) {
        let c = &mut self.counts[s as usize];
        if *c == 0 {
            self.referenced += 1;
        }
        *c = c.saturating_add(1);
    }

    /// Segments referenced by at least one leaf.
    pub fn referenced(&self) -> usize {
        self.referenced
    }

    /// The referenced segments and their counts, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != 0)
            .map(|(s, c)| (s as u64, *c))
    }
}

/// Reads metadata pages `pages` of the pool, many at a time.
pub(crate) async fn read_pages(
    meta_bdev: &Arc<dyn Bdev>,
    meta_first_byte: u64,
    pages: &[u64],
) -> Vec<Result<IoBuf, IoStatus>> {
    let mut out = Vec::with_capacity(pages.len());
    read_pages_each(meta_bdev, meta_first_byte, pages, |_, r| out.push(r)).await;
    out
}

/// Reads metadata pages `pages` of the pool, many at a time, and hands each to `f` (its
/// index in `pages`, its buffer) in order as its batch completes: the buffers of a big
/// table go back to the pool batch by batch instead of all being held at once.
pub(crate) async fn read_pages_each(
    meta_bdev: &Arc<dyn Bdev>,
    meta_first_byte: u64,
    pages: &[u64],
    mut f: impl FnMut(usize, Result<IoBuf, IoStatus>),
) {
    const BATCH: usize = 128;
    for (c, chunk) in pages.chunks(BATCH).enumerate() {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&p| {
                let bdev = meta_bdev.clone();
                let off = meta_first_byte + p * PAGE_BYTES as u64;
                reactor::spawn_local(async move { read_bytes(&bdev, off, PAGE_BYTES).await })
            })
            .collect();
        for (k, t) in tasks.into_iter().enumerate() {
            f(c * BATCH + k, t.await);
        }
    }
}

/// Table pages read and decoded in one go ([`PageDecoder`]).
const DECODE_CHUNK: usize = 512;

/// How long a worker may take to decode a chunk before the reactor decodes it itself.
const DECODE_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A table page as read and decoded: its number and its contents, or why it is unusable.
type DecodedPage = (u64, Result<ScannedNode, VdiskError>);

/// Decodes table node pages. A big table's decoded leaves are held until the tables are
/// built, and a leaf's decoded extents take about twice its page; decoded on a worker
/// thread ([`reactor::offload`]) they are allocated in that thread's heap instead of
/// between the nodes the reactor builds from them, so that freeing them leaves whole
/// free pages that the allocator gives back instead of holes in the live table (a 4 TiB
/// disk with 2.1 M extents: 11 MB less resident after open). The decoding also runs
/// beside the next chunk's reads.
#[derive(Clone, Copy)]
struct PageDecoder {
    pool: uuid::Uuid,
    meta_pages: u64,
    total_segments: u64,
}

impl PageDecoder {
    /// Decodes one page as read.
    fn decode(&self, p: u64, read: Result<&[u8], IoStatus>) -> Result<ScannedNode, VdiskError> {
        let buf = read.map_err(|status| VdiskError::Io {
            what: format!("reading metadata page {p}"),
            status,
        })?;
        let kind = buf.get(4).copied().unwrap_or(0);
        let node = if kind == meta::PageKind::Internal as u8 {
            meta::node::decode_internal(buf, p, &self.pool, self.meta_pages).map(NodePage::Internal)
        } else {
            meta::node::decode_leaf(buf, p, &self.pool, self.total_segments).map(NodePage::Leaf)
        };
        node.map(|node| ScannedNode {
            found: BlockPtr::of(buf),
            node,
        })
        .map_err(VdiskError::Meta)
    }

    /// Decodes `pages` (each page's number and what reading it gave) on a worker
    /// thread; the buffers come back to be freed on this core, whose buffer pool they
    /// belong to. If no worker takes the job in time (the queue is full, or the
    /// workers are gone), the pages are read again and decoded here.
    async fn decode_off_reactor(
        self,
        bdev: Arc<dyn Bdev>,
        meta_first_byte: u64,
        pages: Vec<(u64, Result<IoBuf, IoStatus>)>,
    ) -> Vec<DecodedPage> {
        let numbers: Vec<u64> = pages.iter().map(|(p, _)| *p).collect();
        let job = move || {
            let decoded: Vec<DecodedPage> = pages
                .iter()
                .map(|(p, r)| (*p, self.decode(*p, r.as_deref().map_err(|&st| st))))
                .collect();
            (decoded, pages)
        };
        match reactor::offload::run(DECODE_TIME_LIMIT, job).await {
            Ok((decoded, bufs)) => {
                drop(bufs);
                decoded
            }
            Err(e) => {
                tracing::debug!(error = %e, pages = numbers.len(),
                    "decoding metadata pages on this core instead of a worker");
                let bufs = read_pages(&bdev, meta_first_byte, &numbers).await;
                numbers
                    .iter()
                    .zip(bufs)
                    .map(|(&p, r)| (p, self.decode(p, r.as_deref().map_err(|&st| st))))
                    .collect()
            }
        }
    }
}

/// Walks and verifies everything the superblock `sb` (validated, read from
/// `meta_bdev`) points at. In [`Mode::Open`] it stops at the first error of the
/// directory or tables (not of the space map, which open can rebuild).
pub(crate) async fn scan(meta_bdev: &Arc<dyn Bdev>, sb: &Superblock, mode: Mode) -> Scan {
    let mut reserved = Vec::with_capacity(sb.containers.len());
    let mut at = 0u64;
    for c in &sb.containers {
        reserved.push((at, at + c.reserved_segments));
        at += c.segments;
    }
    let geo = Geometry::new(sb.block_size, sb.segment_bytes);
    let mut w = Walk {
        sb,
        meta_bdev,
        mode,
        reserved,
        total_segments: at,
        granules: geo.granules.min(MAX_GRANULES),
        segment_blocks: geo.segment_blocks,
        out: Scan {
            records: Vec::new(),
            roots: Vec::new(),
            dir_pages: Vec::new(),
            nodes: FxHashMap::default(),
            counts: SegCounts::new(at),
            sm_ptrs: SpaceMapPtrs::unwritten(sb.sm_pages),
            leaves: 0,
            extents: 0,
            errors: Vec::new(),
            space_map_errors: Vec::new(),
            notes: Vec::new(),
        },
    };
    w.directory().await;
    if !w.stop() {
        w.tables().await;
    }
    if !w.stop() {
        w.owners();
    }
    if !w.stop() {
        w.space_map().await;
    }
    w.out
}

impl Walk<'_> {
    fn stop(&self) -> bool {
        self.mode == Mode::Open && !self.out.errors.is_empty()
    }

    fn fail(&mut self, e: impl Into<VdiskError>) {
        self.out.errors.push(e.into());
    }

    fn field(page: u64, field: &'static str, reason: String) -> MetaError {
        MetaError::Field {
            page,
            field,
            reason,
        }
    }

    fn node_area(&self) -> String {
        format!(
            "the node area, pages [{}, {})",
            self.sb.node_first_page(),
            self.sb.meta_pages
        )
    }

    fn reserved_container(&self, seg: u64) -> Option<usize> {
        self.reserved
            .iter()
            .position(|&(lo, hi)| (lo..hi).contains(&seg))
    }

    async fn read_one(&self, page: u64) -> Result<IoBuf, VdiskError> {
        read_pages(self.meta_bdev, self.sb.meta_first_byte, &[page])
            .await
            .pop()
            .expect("one page read")
            .map_err(|status| VdiskError::Io {
                what: format!("reading metadata page {page}"),
                status,
            })
    }

    /// The directory chain and its records.
    async fn directory(&mut self) {
        let sb = self.sb;
        let mut ptr = sb.directory;
        let mut via = "the superblock's directory pointer".to_string();
        let mut seen = HashSet::new();
        let mut rec_pages = Vec::new();
        while !ptr.is_none() {
            if !sb.in_node_area(ptr.page) {
                let e = Self::field(
                    ptr.page,
                    "directory",
                    format!("{via} points outside {}", self.node_area()),
                );
                return self.fail(e);
            }
            if !seen.insert(ptr.page) {
                let e = Self::field(
                    ptr.page,
                    "next",
                    format!("{via} makes the directory chain loop"),
                );
                return self.fail(e);
            }
            let buf = match self.read_one(ptr.page).await {
                Ok(b) => b,
                Err(e) => return self.fail(e),
            };
            let page = match meta::directory::decode_directory(
                &buf,
                ptr.page,
                &sb.pool_uuid,
                sb.meta_pages,
            ) {
                Ok(d) => d,
                Err(e) => return self.fail(e),
            };
            if let Err(e) = meta::verify_pointer(&buf, &ptr, &via) {
                return self.fail(e);
            }
            self.out.dir_pages.push(ptr.page);
            for (r, root) in page.records.into_iter().zip(page.roots) {
                self.out.records.push(r);
                self.out.roots.push(root);
                rec_pages.push(ptr.page);
            }
            via = format!("directory page {}'s next pointer", ptr.page);
            ptr = page.next;
        }
        // The records, against each other and the superblock.
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        let mut problems = Vec::new();
        for (k, r) in self.out.records.iter().enumerate() {
            let page = rec_pages[k];
            let bad = |field, reason: String| {
                Self::field(page, field, format!("disk `{}`: {reason}", r.name))
            };
            if !ids.insert(r.id) {
                problems.push(bad(
                    "id",
                    format!("id {} is used by another disk too", r.id),
                ));
            }
            if r.id >= sb.next_disk_id {
                problems.push(bad(
                    "id",
                    format!("id {} is not below next_disk_id {}", r.id, sb.next_disk_id),
                ));
            }
            if !names.insert(r.name.as_str()) {
                problems.push(bad(
                    "name",
                    "the name appears twice in the directory".into(),
                ));
            }
            if r.parent != 0
                && (r.parent == r.id || !self.out.records.iter().any(|o| o.id == r.parent))
            {
                problems.push(bad(
                    "parent",
                    format!("parent id {} does not exist", r.parent),
                ));
            }
            for (field, g) in [("snap_gen", r.snap_gen), ("created_gen", r.created_gen)] {
                if g > sb.generation {
                    problems.push(bad(
                        field,
                        format!("generation {g} is after the pool's {}", sb.generation),
                    ));
                }
            }
            let root = &self.out.roots[k];
            if !root.is_none() && !sb.in_node_area(root.page) {
                problems.push(bad(
                    "root",
                    format!(
                        "its table root, page {}, lies outside {}",
                        root.page,
                        self.node_area()
                    ),
                ));
            }
        }
        for e in problems {
            self.fail(e);
        }
    }

    /// Every table, level by level (the pages of a level are read together).
    async fn tables(&mut self) {
        let sb = self.sb;
        let mut role: HashMap<u64, Use> = self
            .out
            .dir_pages
            .iter()
            .map(|&p| (p, Use::Directory))
            .collect();
        let mut unusable: HashSet<u64> = HashSet::new();
        // (page, span, depth): a page reached again the same way needs no second look;
        // the depth is part of it so that a loop of pointers ends at `MAX_DEPTH`.
        let mut spans: HashSet<(u64, u64, u64, usize)> = HashSet::new();
        let mut leaves_done: HashSet<u64> = HashSet::new();
        let mut frontier: Vec<Visit> = self
            .out
            .roots
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_none())
            .map(|(k, r)| Visit {
                ptr: *r,
                lo: 0,
                hi: u64::MAX,
                depth: 0,
                via: format!("disk `{}`'s root pointer", self.out.records[k].name),
                disk: k,
            })
            .collect();
        while !frontier.is_empty() {
            if self.stop() {
                return;
            }
            let want: Vec<u64> = frontier
                .iter()
                .map(|v| v.ptr.page)
                .filter(|p| {
                    sb.in_node_area(*p)
                        && !self.out.nodes.contains_key(p)
                        && !unusable.contains(p)
                        && !role.contains_key(p)
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let decoder = PageDecoder {
                pool: sb.pool_uuid,
                meta_pages: sb.meta_pages,
                total_segments: self.total_segments,
            };
            let bdev = self.meta_bdev.clone();
            // Each chunk's pages are decoded on a worker thread while the next chunk is
            // read (see `PageDecoder`).
            let mut decoding: Option<async_task::Task<Vec<DecodedPage>>> = None;
            for chunk in want.chunks(DECODE_CHUNK) {
                let bufs = read_pages(&bdev, sb.meta_first_byte, chunk).await;
                let job = decoder.decode_off_reactor(
                    bdev.clone(),
                    sb.meta_first_byte,
                    chunk.iter().copied().zip(bufs).collect(),
                );
                if let Some(done) = decoding.replace(reactor::spawn_local(job)) {
                    self.take_decoded(done.await, &mut unusable);
                }
            }
            if let Some(done) = decoding {
                self.take_decoded(done.await, &mut unusable);
            }
            let mut next = Vec::new();
            for v in frontier {
                self.visit(v, &mut role, &mut spans, &mut leaves_done, &mut next);
            }
            frontier = next;
        }
    }

    /// Keeps the decoded pages of a chunk, or records why a page is unusable.
    fn take_decoded(&mut self, pages: Vec<DecodedPage>, unusable: &mut HashSet<u64>) {
        for (p, decoded) in pages {
            match decoded {
                Ok(n) => {
                    self.out.nodes.insert(p, n);
                }
                Err(e) => {
                    unusable.insert(p);
                    self.fail(e);
                }
            }
        }
    }

    fn visit(
        &mut self,
        v: Visit,
        role: &mut HashMap<u64, Use>,
        spans: &mut HashSet<(u64, u64, u64, usize)>,
        leaves_done: &mut HashSet<u64>,
        next: &mut Vec<Visit>,
    ) {
        let p = v.ptr.page;
        if v.depth > MAX_DEPTH {
            let e = Self::field(
                p,
                "child",
                format!(
                    "{} leads deeper than {MAX_DEPTH} levels (the pointers loop?)",
                    v.via
                ),
            );
            return self.fail(e);
        }
        if !self.sb.in_node_area(p) {
            let e = Self::field(
                p,
                "child",
                format!("{} points outside {}", v.via, self.node_area()),
            );
            return self.fail(e);
        }
        let Some(n) = self.out.nodes.get(&p) else {
            if role.get(&p) == Some(&Use::Directory) {
                let e = Self::field(p, "child", format!("{} points at a directory page", v.via));
                self.fail(e);
            }
            return; // unreadable or undecodable: reported when read
        };
        // The pointer must find the version it was written with.
        let found = n.found;
        let check = if found.txn != v.ptr.txn {
            Err(MetaError::Stale {
                page: p,
                via: v.via.clone(),
                found: found.txn,
                expected: v.ptr.txn,
            })
        } else if found.crc != v.ptr.crc {
            Err(MetaError::PointerChecksum {
                page: p,
                via: v.via.clone(),
                found: found.crc,
                expected: v.ptr.crc,
            })
        } else {
            Ok(())
        };
        if let Err(e) = check {
            return self.fail(e);
        }
        let this = match n.node {
            NodePage::Internal(_) => Use::Internal,
            NodePage::Leaf(_) => Use::Leaf,
        };
        let had = *role.entry(p).or_insert(this);
        if had != this {
            let e = Self::field(
                p,
                "kind",
                format!(
                    "used as a {had:?} page and, by {}, as a {this:?} page",
                    v.via
                ),
            );
            return self.fail(e);
        }
        if !spans.insert((p, v.lo, v.hi, v.depth)) {
            return; // checked with this span already
        }
        let mut problems = Vec::new();
        match &self.out.nodes[&p].node {
            NodePage::Internal(entries) => {
                for (i, &(k, c)) in entries.iter().enumerate() {
                    if i > 0 && (k <= v.lo || k >= v.hi) {
                        problems.push(Self::field(
                            p,
                            "key",
                            format!(
                                "key {i} ({k}) lies outside the node's span [{}, {})",
                                v.lo, v.hi
                            ),
                        ));
                        continue;
                    }
                    let lo = if i == 0 { v.lo } else { k };
                    let hi = entries.get(i + 1).map_or(v.hi, |e| e.0.min(v.hi));
                    next.push(Visit {
                        ptr: c,
                        lo,
                        hi,
                        depth: v.depth + 1,
                        via: format!("internal node {p}, child {i}"),
                        disk: v.disk,
                    });
                }
            }
            NodePage::Leaf(exts) => {
                for e in exts {
                    if e.vseg < v.lo || e.vseg + e.len as u64 > v.hi {
                        problems.push(Self::field(
                            p,
                            "vseg",
                            format!(
                                "extent at segment {} crosses the leaf's span [{}, {})",
                                e.vseg, v.lo, v.hi
                            ),
                        ));
                    }
                }
                if leaves_done.insert(p) {
                    self.leaf_once(p, v.disk, &mut problems);
                }
            }
        }
        for e in problems {
            self.fail(e);
        }
    }

    /// The checks of a leaf that do not depend on where it is reached from, and its
    /// segment references (counted once per distinct leaf).
    fn leaf_once(&mut self, p: u64, disk: usize, problems: &mut Vec<MetaError>) {
        let NodePage::Leaf(exts) = &self.out.nodes[&p].node else {
            return;
        };
        let d = &self.out.records[disk];
        let mut counted: Vec<u64> = Vec::new();
        for e in exts {
            if e.birth > self.sb.generation {
                problems.push(Self::field(
                    p,
                    "birth",
                    format!(
                        "extent at segment {} was born in generation {}, after the pool's {}",
                        e.vseg, e.birth, self.sb.generation
                    ),
                ));
            }
            if !e.error && e.vseg.saturating_mul(self.segment_blocks) >= d.size_blocks {
                self.out.notes.push(format!(
                    "disk `{}`: extent at segment {} lies beyond its size",
                    d.name, e.vseg
                ));
            }
            let span = if e.len > 1 { e.len as u64 } else { 1 };
            for &(seg, words) in &e.layers {
                for s in seg..seg + span {
                    if let Some(c) = self.reserved_container(s) {
                        problems.push(Self::field(
                            p,
                            "segment",
                            format!(
                                "extent at segment {} references segment {s}, reserved for \
                                 container {c}'s label and metadata",
                                e.vseg
                            ),
                        ));
                        break;
                    }
                    counted.push(s);
                }
                if let Some(w) = words {
                    let beyond = (self.granules..MAX_GRANULES)
                        .any(|g| w[(g / 64) as usize] & (1 << (g % 64)) != 0);
                    if beyond {
                        problems.push(Self::field(
                            p,
                            "fill",
                            format!(
                                "extent at segment {}: the fill of segment {seg} marks \
                                 granules beyond the {} a segment has",
                                e.vseg, self.granules
                            ),
                        ));
                    }
                }
            }
        }
        self.out.leaves += 1;
        self.out.extents += exts.len();
        for s in counted {
            self.out.counts.add(s);
        }
    }

    /// No segment has two owners: a segment a disk may write (the top layer of an
    /// extent born after the disk's last snapshot) is referenced by that one leaf only.
    fn owners(&mut self) {
        let nodes = &self.out.nodes;
        let mut max_birth: FxHashMap<u64, u64> = FxHashMap::default();
        fn subtree_birth(
            p: u64,
            nodes: &FxHashMap<u64, ScannedNode>,
            memo: &mut FxHashMap<u64, u64>,
            depth: usize,
        ) -> u64 {
            if let Some(&b) = memo.get(&p) {
                return b;
            }
            let b = match nodes.get(&p).map(|n| &n.node) {
                _ if depth > MAX_DEPTH => u64::MAX,
                None => 0,
                Some(NodePage::Leaf(exts)) => exts.iter().map(|e| e.birth).max().unwrap_or(0),
                Some(NodePage::Internal(entries)) => entries
                    .iter()
                    .map(|(_, c)| subtree_birth(c.page, nodes, memo, depth + 1))
                    .max()
                    .unwrap_or(0),
            };
            if depth <= MAX_DEPTH {
                memo.insert(p, b);
            }
            b
        }
        let mut owners: FxHashMap<u64, (usize, u64)> =
            FxHashMap::with_capacity_and_hasher(self.out.extents, Default::default());
        let mut problems = Vec::new();
        for (k, (d, root)) in self.out.records.iter().zip(&self.out.roots).enumerate() {
            if root.is_none() {
                continue;
            }
            let mut seen = HashSet::new();
            let mut stack = vec![(root.page, 0usize)];
            while let Some((p, depth)) = stack.pop() {
                if depth > MAX_DEPTH
                    || !seen.insert(p)
                    || subtree_birth(p, nodes, &mut max_birth, 0) <= d.snap_gen
                {
                    continue;
                }
                match nodes.get(&p).map(|n| &n.node) {
                    None => {}
                    Some(NodePage::Internal(entries)) => {
                        stack.extend(entries.iter().map(|(_, c)| (c.page, depth + 1)));
                    }
                    Some(NodePage::Leaf(exts)) => {
                        for e in exts.iter().filter(|e| e.birth > d.snap_gen && !e.error) {
                            let Some(&(seg, _)) = e.layers.first() else {
                                continue;
                            };
                            let n = if e.len > 1 { e.len as u64 } else { 1 };
                            for i in 0..n {
                                let (s, v) = (seg + i, e.vseg + i);
                                match owners.get(&s) {
                                    Some(&(o, ov)) if (o, ov) != (k, v) => {
                                        problems.push(MetaError::Segment {
                                            seg: s,
                                            reason: format!(
                                                "has two owners: writable by `{}` at segment \
                                                 {ov} and by `{}` at segment {v}",
                                                self.out.records[o].name, d.name
                                            ),
                                        });
                                        continue;
                                    }
                                    Some(_) => continue,
                                    None => {
                                        owners.insert(s, (k, v));
                                    }
                                }
                                let c = self.out.counts.get(s);
                                if c != 1 {
                                    problems.push(MetaError::Segment {
                                        seg: s,
                                        reason: format!(
                                            "writable by `{}` at segment {v} but referenced \
                                             by {c} leaves",
                                            d.name
                                        ),
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        for e in problems {
            self.fail(e);
        }
    }

    /// The space map: index pages, space-map pages, and their counts against the tables'.
    async fn space_map(&mut self) {
        let sb = self.sb;
        let pool = sb.pool_uuid;
        let mut problems: Vec<VdiskError> = Vec::new();
        let mut ptrs = SpaceMapPtrs::unwritten(sb.sm_pages);
        ptrs.index.clone_from(&sb.sm_index);
        let pages: Vec<u64> = sb.sm_index.iter().map(|p| p.page).collect();
        let bufs = read_pages(self.meta_bdev, sb.meta_first_byte, &pages).await;
        for (j, (ptr, r)) in sb.sm_index.iter().zip(bufs).enumerate() {
            let via = format!("the superblock's space-map index pointer {j}");
            let r = r
                .map_err(|status| VdiskError::Io {
                    what: format!("reading space-map index page {}", ptr.page),
                    status,
                })
                .and_then(|buf| {
                    let entries = meta::space_map::decode_sm_index(
                        &buf,
                        ptr.page,
                        &pool,
                        j as u64,
                        sb.sm_pages,
                    )?;
                    meta::verify_pointer(&buf, ptr, &via)?;
                    Ok(entries)
                });
            match r {
                Ok(entries) => {
                    let lo = j * SM_PTRS_PER_PAGE;
                    ptrs.pages[lo..lo + entries.len()].copy_from_slice(&entries);
                }
                Err(e) => problems.push(e),
            }
        }
        let known: Vec<(usize, BlockPtr)> = ptrs
            .pages
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_none())
            .map(|(i, p)| (i, *p))
            .collect();
        let pages: Vec<u64> = known.iter().map(|(_, p)| p.page).collect();
        let total = self.total_segments;
        let bdev = self.meta_bdev.clone();
        let me = &*self;
        read_pages_each(&bdev, sb.meta_first_byte, &pages, |k, r| {
            let (i, ptr) = known[k];
            let j = i / SM_PTRS_PER_PAGE;
            let via = format!(
                "space-map index page {}, entry {}",
                sb.sm_index[j].page,
                i % SM_PTRS_PER_PAGE
            );
            let r = r
                .map_err(|status| VdiskError::Io {
                    what: format!("reading space-map page {}", ptr.page),
                    status,
                })
                .and_then(|buf| {
                    let (_, counts) =
                        meta::space_map::decode_space_map(&buf, ptr.page, &pool, i as u64)?;
                    meta::verify_pointer(&buf, &ptr, &via)?;
                    let want = entries_of_page(i as u64, total, SM_COUNTS_PER_PAGE);
                    if counts.len() != want {
                        return Err(VdiskError::Meta(Self::field(
                            ptr.page,
                            "count",
                            format!(
                                "{} counts for space-map page {i}, expected {want}",
                                counts.len()
                            ),
                        )));
                    }
                    Ok(counts)
                });
            match r {
                Ok(counts) => {
                    // Against the tables.
                    let lo = i * SM_COUNTS_PER_PAGE;
                    let mut first = None;
                    let mut n = 0;
                    for (k, &pc) in counts.iter().enumerate() {
                        let s = (lo + k) as u64;
                        let want = if me.reserved_container(s).is_some() {
                            RESERVED
                        } else {
                            me.out.counts.get(s)
                        };
                        if pc != want {
                            n += 1;
                            first.get_or_insert((s, pc, want));
                        }
                    }
                    if let Some((s, pc, want)) = first {
                        let show = |c: u32| {
                            if c == RESERVED {
                                "reserved".to_string()
                            } else {
                                c.to_string()
                            }
                        };
                        problems.push(VdiskError::Meta(MetaError::Segment {
                            seg: s,
                            reason: format!(
                                "the space map (page {}) says {} references, the tables hold \
                                 {} ({n} segments of that page disagree)",
                                ptr.page,
                                show(pc),
                                show(want)
                            ),
                        }));
                    }
                }
                Err(e) => problems.push(e),
            }
        })
        .await;
        self.out.sm_ptrs = ptrs;
        if self.mode == Mode::Check {
            self.out.errors.append(&mut problems);
        } else {
            self.out.space_map_errors = problems;
        }
    }
}
