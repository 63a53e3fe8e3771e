//! Creating a pool (writing labels and an empty durable state) and opening one
//! (reading the labels, choosing the newest valid superblock, loading every table and
//! recomputing the reference counts): crash recovery is opening.

use super::alloc::{RESERVED, Space};
use super::controller::{Controller, CtlState, DiskCtl, validate_name};
use super::disk::VDisk;
use super::map::{Extent, Fill, Geometry};
use super::meta::directory::DiskRecord;
use super::meta::label::{Label, Role};
use super::meta::space_map::SM_COUNTS_PER_PAGE;
use super::meta::superblock::{ContainerRecord, Superblock};
use super::meta::{self, MetaError, NO_PAGE, PAGE_BYTES, SUPERBLOCK_OFFSET};
use super::shared::{Container, PoolShared};
use super::table::{Node, NodeKind};
use super::views;
use super::{CowPolicy, VdiskError};
use crate::bdev::{Bdev, Channel, IoBuf, IoStatus};
use crate::reactor::{self, Cores};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Where metadata pages start on a separate metadata bdev.
const SEPARATE_META_FIRST_BYTE: u64 = 64 << 10;

/// Reads `len` bytes at byte `offset` of `bdev` (both multiples of its block size).
pub(crate) async fn read_bytes(
    bdev: &Arc<dyn Bdev>,
    offset: u64,
    len: usize,
) -> Result<IoBuf, IoStatus> {
    let ch = Channel::get(bdev).map_err(|_| IoStatus::InternalError)?;
    let bs = bdev.block_size() as u64;
    ch.read(offset / bs, len as u64 / bs).await
}

/// Writes `data` at byte `offset` of `bdev`.
pub(crate) async fn write_bytes(
    bdev: &Arc<dyn Bdev>,
    offset: u64,
    data: IoBuf,
) -> Result<(), IoStatus> {
    let ch = Channel::get(bdev).map_err(|_| IoStatus::InternalError)?;
    ch.write(offset / bdev.block_size() as u64, data).await
}

/// Flushes `bdev`.
pub(crate) async fn flush(bdev: &Arc<dyn Bdev>) -> Result<(), IoStatus> {
    let ch = Channel::get(bdev).map_err(|_| IoStatus::InternalError)?;
    ch.flush().await
}

fn io_err(what: impl Into<String>) -> impl FnOnce(IoStatus) -> VdiskError {
    let what = what.into();
    move |status| VdiskError::Io { what, status }
}

/// Reads the label of `bdev`, if it has one.
pub async fn read_label(bdev: &Arc<dyn Bdev>) -> Result<Option<Label>, VdiskError> {
    if bdev.block_size() as usize > PAGE_BYTES
        || bdev.num_blocks() * (bdev.block_size() as u64) < PAGE_BYTES as u64
    {
        return Ok(None);
    }
    let b = read_bytes(bdev, 0, PAGE_BYTES)
        .await
        .map_err(io_err(format!("reading the label of `{}`", bdev.name())))?;
    Ok(Label::decode(&b, &format!("label of `{}`", bdev.name()))?)
}

/// Options for creating a pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub name: String,
    /// Segment size in bytes: a power of two from 64 KiB to 64 MiB.
    pub segment_bytes: u64,
    /// Bytes reserved for metadata on container 0 (ignored with a metadata bdev).
    /// Default: 1/1024 of the capacity, at least 16 MiB.
    pub metadata_bytes: Option<u64>,
    pub cow_policy: CowPolicy,
}

impl PoolOptions {
    /// Defaults: 1 MiB segments, redirect-on-write.
    pub fn new(name: &str) -> PoolOptions {
        PoolOptions {
            name: name.to_string(),
            segment_bytes: 1 << 20,
            metadata_bytes: None,
            cow_policy: CowPolicy::Redirect,
        }
    }
}

/// Formats a new pool over `containers` (plus `metadata`) and opens it: returns what
/// [`super::Pool`] wraps.
pub(crate) async fn create(
    cores: Cores,
    ctl_core: usize,
    containers: Vec<Arc<dyn Bdev>>,
    metadata: Option<Arc<dyn Bdev>>,
    opts: PoolOptions,
) -> Result<Arc<PoolShared>, VdiskError> {
    validate_name(&opts.name)?;
    let invalid = |field, reason: String| VdiskError::InvalidParam { field, reason };
    let seg = opts.segment_bytes;
    if !seg.is_power_of_two() || !(64 << 10..=64 << 20).contains(&seg) {
        return Err(invalid(
            "segment_size",
            format!("{seg} is not a power of two between 64 KiB and 64 MiB"),
        ));
    }
    if containers.is_empty() || containers.len() > meta::MAX_CONTAINERS {
        return Err(invalid(
            "bdevs",
            format!("{} containers; a pool takes 1 to 32", containers.len()),
        ));
    }
    let mut names = BTreeSet::new();
    for b in containers.iter().chain(metadata.iter()) {
        if !names.insert(b.name().to_string()) {
            return Err(invalid("bdevs", format!("`{}` is given twice", b.name())));
        }
        if b.block_size() > 4096 {
            return Err(invalid(
                "bdevs",
                format!(
                    "`{}` has {}-byte blocks; at most 4096 are supported",
                    b.name(),
                    b.block_size()
                ),
            ));
        }
        if let Some(l) = read_label(b).await? {
            return Err(VdiskError::Exists(format!(
                "bdev `{}` already holds pool `{}` ({}); delete that pool first",
                b.name(),
                l.pool_name,
                l.pool_uuid
            )));
        }
    }
    let block_size = containers
        .iter()
        .map(|b| b.block_size())
        .max()
        .unwrap_or(4096);
    let capacity: u64 = containers
        .iter()
        .map(|b| b.num_blocks() * b.block_size() as u64)
        .sum();
    let segs: Vec<u64> = containers
        .iter()
        .map(|b| b.num_blocks() * b.block_size() as u64 / seg)
        .collect();
    let total: u64 = segs.iter().sum();
    let sm_pages = (total as usize).div_ceil(SM_COUNTS_PER_PAGE) as u64;
    let (meta_first_byte, meta_pages, reserved0) = match &metadata {
        Some(m) => {
            let bytes = m.num_blocks() * m.block_size() as u64;
            let pages = bytes.saturating_sub(SEPARATE_META_FIRST_BYTE) / PAGE_BYTES as u64;
            (SEPARATE_META_FIRST_BYTE, pages, 1)
        }
        None => {
            let want = opts
                .metadata_bytes
                .unwrap_or((capacity / 1024).max(16 << 20));
            let meta_segs = want.div_ceil(seg).max(1);
            (seg, meta_segs * seg / PAGE_BYTES as u64, 1 + meta_segs)
        }
    };
    if meta_pages < 2 * sm_pages + 64 {
        return Err(invalid(
            "metadata_size",
            format!(
                "{meta_pages} metadata pages are too few for {total} segments (need at least {})",
                2 * sm_pages + 64
            ),
        ));
    }
    for (i, (&n, b)) in segs.iter().zip(&containers).enumerate() {
        let reserved = if i == 0 { reserved0 } else { 1 };
        if n < reserved + 1 {
            return Err(invalid(
                "bdevs",
                format!(
                    "`{}` holds {n} segments of {seg} bytes; it needs at least {}",
                    b.name(),
                    reserved + 1
                ),
            ));
        }
    }
    let pool_uuid = uuid::Uuid::new_v4();
    let count = containers.len() as u32;
    let mut labelled: Vec<(Arc<dyn Bdev>, Label)> = Vec::new();
    // Labels.
    for (i, b) in containers.iter().enumerate() {
        let role = if i == 0 && metadata.is_none() {
            Role::DataAndMetadata
        } else {
            Role::Data
        };
        let label = Label {
            pool_uuid,
            pool_name: opts.name.clone(),
            role,
            container_index: i as u32,
            container_count: count,
            segment_bytes: seg,
            block_size,
            bdev_uuid: b.uuid(),
        };
        write_bytes(b, 0, IoBuf::from_slice(&label.encode()))
            .await
            .map_err(io_err(format!("writing the label of `{}`", b.name())))?;
        labelled.push((b.clone(), label));
    }
    let meta_bdev = metadata.clone().unwrap_or_else(|| containers[0].clone());
    if let Some(m) = &metadata {
        let label = Label {
            pool_uuid,
            pool_name: opts.name.clone(),
            role: Role::Metadata,
            container_index: 0,
            container_count: count,
            segment_bytes: seg,
            block_size,
            bdev_uuid: m.uuid(),
        };
        write_bytes(m, 0, IoBuf::from_slice(&label.encode()))
            .await
            .map_err(io_err(format!("writing the label of `{}`", m.name())))?;
        labelled.push((m.clone(), label));
    }
    // Empty space map, both copies.
    for copy in 0..2u64 {
        let txn = copy; // copy 1 is written by txn 1 (the first superblock), copy 0 by "txn 0"
        for i in 0..sm_pages {
            let lo = i as usize * SM_COUNTS_PER_PAGE;
            let hi = ((i as usize + 1) * SM_COUNTS_PER_PAGE).min(total as usize);
            let mut counts = vec![0u32; hi - lo];
            let mut at = 0u64;
            for (ci, &n) in segs.iter().enumerate() {
                let reserved = if ci == 0 { reserved0 } else { 1 };
                for s in at..at + reserved {
                    if (lo as u64..hi as u64).contains(&s) {
                        counts[(s - lo as u64) as usize] = RESERVED;
                    }
                }
                at += n;
            }
            let page = copy * sm_pages + i;
            let b = meta::space_map::encode_space_map(page, txn, &pool_uuid, i, &counts);
            write_bytes(
                &meta_bdev,
                meta_first_byte + page * PAGE_BYTES as u64,
                IoBuf::from_slice(&b),
            )
            .await
            .map_err(io_err("writing the space map"))?;
        }
    }
    let sb = Superblock {
        pool_uuid,
        pool_name: opts.name.clone(),
        txn: 1,
        generation: 1,
        next_disk_id: 1,
        segment_bytes: seg,
        block_size,
        meta_first_byte,
        meta_pages,
        sm_pages,
        directory_head: NO_PAGE,
        cow_policy: opts.cow_policy as u8,
        separate_metadata: metadata.is_some(),
        metadata_uuid: metadata.as_ref().map_or(uuid::Uuid::nil(), |m| m.uuid()),
        containers: containers
            .iter()
            .zip(&segs)
            .enumerate()
            .map(|(i, (b, &n))| ContainerRecord {
                bdev_uuid: b.uuid(),
                segments: n,
                reserved_segments: if i == 0 { reserved0 } else { 1 },
            })
            .collect(),
    };
    write_bytes(
        &meta_bdev,
        SUPERBLOCK_OFFSET + 4096,
        IoBuf::from_slice(&sb.encode()),
    )
    .await
    .map_err(io_err("writing the superblock"))?;
    write_bytes(&meta_bdev, SUPERBLOCK_OFFSET, IoBuf::zeroed(PAGE_BYTES))
        .await
        .map_err(io_err("clearing superblock slot A"))?;
    for b in containers.iter().chain(metadata.iter()) {
        flush(b)
            .await
            .map_err(io_err(format!("flushing `{}`", b.name())))?;
    }
    tracing::info!(pool = %opts.name, uuid = %pool_uuid, segment_bytes = seg, total_segments = total,
        meta_pages, "pool created");
    // Open with the labels just written (a `null` container could not read them back).
    open_labelled(cores, ctl_core, labelled).await
}

/// The newest valid superblock of the metadata bdev.
async fn read_superblock(meta_bdev: &Arc<dyn Bdev>) -> Result<Superblock, VdiskError> {
    let b = read_bytes(meta_bdev, SUPERBLOCK_OFFSET, 2 * PAGE_BYTES)
        .await
        .map_err(io_err(format!(
            "reading the superblocks of `{}`",
            meta_bdev.name()
        )))?;
    let a = Superblock::decode(&b[..PAGE_BYTES], "A");
    let bb = Superblock::decode(&b[PAGE_BYTES..], "B");
    match (a, bb) {
        (Ok(a), Ok(b)) => Ok(if a.txn >= b.txn { a } else { b }),
        (Ok(a), Err(e)) | (Err(e), Ok(a)) => {
            if !matches!(e, MetaError::NoLabel { .. }) {
                tracing::warn!(error = %e, "one superblock slot is damaged; using the other");
            }
            Ok(a)
        }
        (Err(a), Err(_)) => Err(VdiskError::Meta(a)),
    }
}

/// Opens the pool that `bdevs` belong to: returns what [`super::Pool`] wraps.
pub(crate) async fn open(
    cores: Cores,
    ctl_core: usize,
    bdevs: Vec<Arc<dyn Bdev>>,
) -> Result<Arc<PoolShared>, VdiskError> {
    let mut labelled = Vec::new();
    for b in bdevs {
        match read_label(&b).await? {
            Some(l) => labelled.push((b, l)),
            None => {
                return Err(VdiskError::NoPool(format!(
                    "bdev `{}` has no tessera label",
                    b.name()
                )));
            }
        }
    }
    open_labelled(cores, ctl_core, labelled).await
}

async fn open_labelled(
    cores: Cores,
    ctl_core: usize,
    labelled: Vec<(Arc<dyn Bdev>, Label)>,
) -> Result<Arc<PoolShared>, VdiskError> {
    let Some((_, first)) = labelled.first() else {
        return Err(VdiskError::NoPool("no bdevs given".into()));
    };
    let pool_uuid = first.pool_uuid;
    if let Some((b, l)) = labelled.iter().find(|(_, l)| l.pool_uuid != pool_uuid) {
        return Err(VdiskError::NoPool(format!(
            "bdev `{}` belongs to pool `{}`, not `{}`",
            b.name(),
            l.pool_name,
            first.pool_name
        )));
    }
    let meta_bdev = labelled
        .iter()
        .find(|(_, l)| l.role == Role::Metadata)
        .or_else(|| {
            labelled
                .iter()
                .find(|(_, l)| l.role == Role::DataAndMetadata)
        })
        .map(|(b, _)| b.clone())
        .ok_or_else(|| {
            VdiskError::NoPool(format!(
                "the metadata of pool `{}` is not among the bdevs",
                first.pool_name
            ))
        })?;
    let sb = read_superblock(&meta_bdev).await?;
    if sb.pool_uuid != pool_uuid {
        return Err(VdiskError::NoPool(
            "the superblock belongs to another pool".into(),
        ));
    }
    let mut containers = Vec::new();
    let mut at = 0;
    for (i, rec) in sb.containers.iter().enumerate() {
        let found = labelled.iter().find(|(_, l)| {
            l.role != Role::Metadata
                && l.container_index == i as u32
                && l.bdev_uuid == rec.bdev_uuid
        });
        let Some((b, _)) = found else {
            return Err(VdiskError::NoPool(format!(
                "container {i} of pool `{}` (bdev uuid {}) is missing",
                sb.pool_name, rec.bdev_uuid
            )));
        };
        if b.num_blocks() * b.block_size() as u64 / sb.segment_bytes < rec.segments {
            return Err(VdiskError::NoPool(format!(
                "bdev `{}` is smaller than the {} segments pool `{}` records for it",
                b.name(),
                rec.segments,
                sb.pool_name
            )));
        }
        containers.push(Container {
            bdev: b.clone(),
            first_seg: at,
            segments: rec.segments,
            reserved: rec.reserved_segments,
            label_uuid: rec.bdev_uuid,
        });
        at += rec.segments;
    }
    let total = at;
    let geo = Geometry::new(sb.block_size, sb.segment_bytes);
    let shared = Arc::new(PoolShared {
        id: PoolShared::next_id(),
        uuid: pool_uuid,
        name: sb.pool_name.clone(),
        geo,
        separate_metadata: sb.separate_metadata,
        meta_bdev: meta_bdev.clone(),
        meta_label_uuid: sb.metadata_uuid,
        meta_first_byte: sb.meta_first_byte,
        meta_pages: sb.meta_pages,
        sm_pages: sb.sm_pages,
        ctl_core,
        cores,
        ctl_port: views::PORT,
        dirty_fills: crossbeam_queue::SegQueue::new(),
        cow_default: CowPolicy::from_u8(sb.cow_policy),
        free_segments: std::sync::atomic::AtomicU64::new(0),
        meta_budget: Default::default(),
        containers,
    });
    let loaded = load_state(&shared, &sb).await?;
    let LoadedState {
        records,
        roots,
        dir_pages,
        pages,
        counts,
    } = loaded;
    let reserved: Vec<u64> = shared
        .containers
        .iter()
        .flat_map(|c| c.first_seg..c.first_seg + c.reserved)
        .collect();
    let sizes: Vec<u64> = shared.containers.iter().map(|c| c.segments).collect();
    let mut space = Space::new(
        &sizes,
        &reserved,
        sb.meta_pages,
        2 * sb.sm_pages,
        sb.txn + 1,
    );
    for p in pages.iter().chain(dir_pages.iter()) {
        space.load_page(*p);
    }
    for (s, c) in &counts {
        space.load_segment(*s, *c);
    }
    // Compare with the persisted space map.
    match read_space_map(&shared, &sb, total).await {
        Ok(persisted) => {
            let mismatches = (0..total as usize)
                .filter(|&s| {
                    let want = space.refs(s as u64);
                    persisted[s] != want
                })
                .count();
            if mismatches > 0 {
                tracing::warn!(pool = %shared.name, mismatches,
                    "the persisted space map disagrees with the tables; using the tables (run `tessera check`)");
            }
        }
        Err(e) => {
            tracing::warn!(pool = %shared.name, error = %e, "space map unreadable; rebuilt from the tables")
        }
    }
    space.touch_all_sm();
    let mut disks = BTreeMap::new();
    for (rec, root) in records.into_iter().zip(roots) {
        let bdev = VDisk::new(&shared, &rec).map_err(VdiskError::Bdev)?;
        disks.insert(rec.id, DiskCtl::new(rec, root, bdev));
    }
    let st = CtlState {
        disks,
        space,
        generation: sb.generation,
        next_disk_id: sb.next_disk_id,
        committed_txn: sb.txn,
        changes: 0,
        committed_changes: 0,
        dir_pages,
        failed: None,
        closed: false,
    };
    let ndisks = st.disks.len();
    let c = Controller::start(shared.clone(), st);
    c.resume_jobs();
    tracing::info!(pool = %shared.name, uuid = %pool_uuid, txn = sb.txn, disks = ndisks, "pool opened");
    Ok(shared)
}

struct LoadedState {
    records: Vec<DiskRecord>,
    roots: Vec<Option<Arc<Node>>>,
    dir_pages: Vec<u64>,
    pages: Vec<u64>,
    counts: HashMap<u64, u32>,
}

/// Reads metadata pages, many at a time.
async fn read_pages(shared: &PoolShared, pages: &[u64]) -> Result<Vec<IoBuf>, VdiskError> {
    let mut out = Vec::with_capacity(pages.len());
    for chunk in pages.chunks(128) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&p| {
                let bdev = shared.meta_bdev.clone();
                let off = shared.meta_first_byte + p * PAGE_BYTES as u64;
                reactor::spawn_local(async move { read_bytes(&bdev, off, PAGE_BYTES).await })
            })
            .collect();
        for (t, &p) in tasks.into_iter().zip(chunk) {
            out.push(
                t.await
                    .map_err(io_err(format!("reading metadata page {p}")))?,
            );
        }
    }
    Ok(out)
}

enum Decoded {
    Internal(Vec<(u64, u64)>),
    Leaf(Vec<meta::node::RawExtent>),
}

/// Reads the directory and every table; rebuilds nodes (shared pages become shared
/// nodes), fills (one per segment) and segment reference counts.
async fn load_state(shared: &Arc<PoolShared>, sb: &Superblock) -> Result<LoadedState, VdiskError> {
    let total = shared.total_segments();
    // Directory chain.
    let mut records = Vec::new();
    let mut dir_pages = Vec::new();
    let mut next = sb.directory_head;
    while next != NO_PAGE {
        if dir_pages.contains(&next) || dir_pages.len() as u64 > sb.meta_pages {
            return Err(VdiskError::Meta(MetaError::Field {
                page: next,
                field: "next",
                reason: "the directory chain loops".into(),
            }));
        }
        let b = read_pages(shared, &[next]).await?;
        let (recs, n) =
            meta::directory::decode_directory(&b[0], next, &shared.uuid, sb.meta_pages)?;
        dir_pages.push(next);
        records.extend(recs);
        next = n;
    }
    // Every node page, level by level.
    let mut decoded: HashMap<u64, Decoded> = HashMap::new();
    let mut frontier: Vec<u64> = records
        .iter()
        .map(|r| r.root_page)
        .filter(|&p| p != NO_PAGE)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    while !frontier.is_empty() {
        let bufs = read_pages(shared, &frontier).await?;
        let mut next_level = BTreeSet::new();
        for (&p, b) in frontier.iter().zip(bufs.iter()) {
            let kind = b.get(4).copied().unwrap_or(0);
            let d = if kind == meta::PageKind::Internal as u8 {
                let entries = meta::node::decode_internal(b, p, &shared.uuid, sb.meta_pages)?;
                for &(_, c) in &entries {
                    if !decoded.contains_key(&c) {
                        next_level.insert(c);
                    }
                }
                Decoded::Internal(entries)
            } else {
                Decoded::Leaf(meta::node::decode_leaf(b, p, &shared.uuid, total)?)
            };
            decoded.insert(p, d);
        }
        frontier = next_level
            .into_iter()
            .filter(|p| !decoded.contains_key(p))
            .collect();
    }
    // Build nodes bottom-up, sharing what the pages share.
    let mut built: HashMap<u64, Arc<Node>> = HashMap::new();
    let mut fills: HashMap<u64, Arc<Fill>> = HashMap::new();
    let mut counts: HashMap<u64, u32> = HashMap::new();
    let mut roots = Vec::new();
    for r in &records {
        if r.root_page == NO_PAGE {
            roots.push(None);
            continue;
        }
        let root = build(
            r.root_page,
            &decoded,
            &mut built,
            &mut fills,
            &mut counts,
            0,
        )?;
        root.retain();
        roots.push(Some(root));
    }
    // Owners of live fills: the disk whose writable top layer each is.
    for (r, root) in records.iter().zip(&roots) {
        if let Some(root) = root {
            root.visit_from(0, &mut |e: &Extent| {
                if e.birth > r.snap_gen
                    && let Some(f) = &e.layers[0].fill
                {
                    f.set_owner(r.id, e.vseg);
                }
                true
            });
        }
    }
    for r in &records {
        if r.parent != 0 && !records.iter().any(|o| o.id == r.parent) {
            tracing::warn!(disk = %r.name, parent = r.parent, "parent disk missing from the directory");
        }
    }
    let pages = built.keys().copied().collect();
    Ok(LoadedState {
        records,
        roots,
        dir_pages,
        pages,
        counts,
    })
}

fn build(
    page: u64,
    decoded: &HashMap<u64, Decoded>,
    built: &mut HashMap<u64, Arc<Node>>,
    fills: &mut HashMap<u64, Arc<Fill>>,
    counts: &mut HashMap<u64, u32>,
    depth: usize,
) -> Result<Arc<Node>, VdiskError> {
    if let Some(n) = built.get(&page) {
        return Ok(n.clone());
    }
    if depth > 16 {
        return Err(VdiskError::Meta(MetaError::Field {
            page,
            field: "child",
            reason: "the table is deeper than 16 levels (a loop?)".into(),
        }));
    }
    let node = match decoded.get(&page) {
        Some(Decoded::Internal(entries)) => {
            let mut keys = Vec::with_capacity(entries.len());
            let mut children = Vec::with_capacity(entries.len());
            for &(k, c) in entries {
                let child = build(c, decoded, built, fills, counts, depth + 1)?;
                child.retain();
                keys.push(k);
                children.push(child);
            }
            Node::loaded(NodeKind::Internal { keys, children }, page)
        }
        Some(Decoded::Leaf(raw)) => {
            let extents: Vec<Extent> = raw
                .iter()
                .map(|r| {
                    r.build(|seg, words| {
                        fills
                            .entry(seg)
                            .or_insert_with(|| Arc::new(Fill::from_words(words, 0, u64::MAX)))
                            .clone()
                    })
                })
                .collect();
            for e in &extents {
                for s in e.segments() {
                    *counts.entry(s).or_default() += 1;
                }
            }
            Node::loaded(NodeKind::Leaf { extents }, page)
        }
        None => {
            return Err(VdiskError::Meta(MetaError::Field {
                page,
                field: "child",
                reason: "page was not loaded".into(),
            }));
        }
    };
    built.insert(page, node.clone());
    Ok(node)
}

/// The persisted space map: for each page, the valid copy written by the newest
/// transaction not after the superblock's.
pub(crate) async fn read_space_map(
    shared: &PoolShared,
    sb: &Superblock,
    total: u64,
) -> Result<Vec<u32>, VdiskError> {
    let mut out = vec![0u32; total as usize];
    for i in 0..sb.sm_pages {
        let bufs = read_pages(shared, &[i, sb.sm_pages + i]).await?;
        let a = meta::space_map::decode_space_map(&bufs[0], i, &shared.uuid, i);
        let b = meta::space_map::decode_space_map(&bufs[1], sb.sm_pages + i, &shared.uuid, i);
        let pick = match (a, b) {
            (Ok(a), Ok(b)) => {
                let a_ok = a.0 <= sb.txn;
                let b_ok = b.0 <= sb.txn;
                match (a_ok, b_ok) {
                    (true, true) => Some(if a.0 >= b.0 { a.1 } else { b.1 }),
                    (true, false) => Some(a.1),
                    (false, true) => Some(b.1),
                    (false, false) => None,
                }
            }
            (Ok(a), Err(_)) if a.0 <= sb.txn => Some(a.1),
            (Err(_), Ok(b)) if b.0 <= sb.txn => Some(b.1),
            (Err(e), _) => return Err(VdiskError::Meta(e)),
            _ => None,
        };
        let counts = pick.ok_or_else(|| {
            VdiskError::Meta(MetaError::Field {
                page: i,
                field: "txn",
                reason: "neither space-map copy was written by a committed transaction".into(),
            })
        })?;
        let lo = i as usize * SM_COUNTS_PER_PAGE;
        for (k, c) in counts.into_iter().enumerate() {
            if let Some(slot) = out.get_mut(lo + k) {
                *slot = c;
            }
        }
    }
    Ok(out)
}
