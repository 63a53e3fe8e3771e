//! Creating a pool (writing labels and an empty durable state) and opening one
//! (reading the labels, choosing the newest valid superblock, verifying and loading
//! every table, recomputing the reference counts): crash recovery is opening.
//!
//! Open trusts nothing it reads: the walk in `scan.rs`, shared with `tessera check`,
//! verifies every page against the pointer that leads to it and every field against
//! the pool, and open refuses with the first problem (naming the page and the field)
//! before it builds anything from what it read.

use super::alloc::{RESERVED, Space};
use super::controller::{Controller, CtlState, DiskCtl, validate_name};
use super::disk::VDisk;
use super::intent::{self, IntentLog};
use super::leaf::LeafExtents;
use super::map::{Extent, Fills, Geometry};
use super::meta::directory::DiskRecord;
use super::meta::label::{Label, Role};
use super::meta::space_map::{SpaceMapPtrs, sm_index_pages_for, sm_pages_for};
use super::meta::superblock::{
    ContainerRecord, LogArea, MAX_SEGMENTS, Superblock, max_segments_for,
};
use super::meta::{self, BlockPtr, PAGE_BYTES, SUPERBLOCK_OFFSET};
use super::scan::{self, Mode, NodePage, Scan, ScannedNode};
use super::shared::{Container, PoolShared};
use super::table::{self, Node, NodeKind};
use super::views;
use super::{CowPolicy, VdiskError};
use crate::bdev::{Bdev, Channel, IoBuf, IoStatus};
use crate::reactor::Cores;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};
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
    write_bytes_fua(bdev, offset, data, false).await
}

/// [`write_bytes`], with force-unit-access if `fua` (durable when it completes).
pub(crate) async fn write_bytes_fua(
    bdev: &Arc<dyn Bdev>,
    offset: u64,
    data: IoBuf,
    fua: bool,
) -> Result<(), IoStatus> {
    let ch = Channel::get(bdev).map_err(|_| IoStatus::InternalError)?;
    let bs = bdev.block_size() as u64;
    let n = data.len() as u64 / bs;
    let io = crate::bdev::BdevIo::write(offset / bs, n, data).with_fua(fua);
    crate::bdev::status_result(ch.io(io).await.1)
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
            return Err(VdiskError::HoldsPool {
                bdev: b.name().to_string(),
                pool: l.pool_name,
                uuid: l.pool_uuid,
            });
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
    if total > MAX_SEGMENTS {
        return Err(invalid(
            "segment_size",
            format!(
                "{total} segments of {seg} bytes exceed the {MAX_SEGMENTS} a pool may have; \
                 use larger segments"
            ),
        ));
    }
    let sm_pages = sm_pages_for(total);
    let sm_index_pages = sm_index_pages_for(sm_pages);
    let fixed_pages = 2 * (sm_pages + sm_index_pages);
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
    if meta_pages < fixed_pages + 64 {
        return Err(invalid(
            "metadata_size",
            format!(
                "{meta_pages} metadata pages are too few for {total} segments (need at least {})",
                fixed_pages + 64
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
    // The space map (reserved segments marked) and its index, written by transaction 1.
    let mut refs = vec![0u32; total as usize];
    let mut at = 0u64;
    for (ci, &n) in segs.iter().enumerate() {
        let reserved = if ci == 0 { reserved0 } else { 1 };
        refs[at as usize..(at + reserved) as usize].fill(RESERVED);
        at += n;
    }
    let mut sm_writes = Vec::new();
    let space_map = SpaceMapPtrs::unwritten(sm_pages).write(
        0..sm_pages,
        &refs[..],
        1,
        &pool_uuid,
        &mut sm_writes,
    );
    for (page, b) in &sm_writes {
        write_bytes(
            &meta_bdev,
            meta_first_byte + page * PAGE_BYTES as u64,
            IoBuf::from_slice(b),
        )
        .await
        .map_err(io_err("writing the space map"))?;
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
        sm_index_pages,
        directory: BlockPtr::NONE,
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
        sm_index: space_map.index,
        log: None,
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
    let root = scan::read_root(&labelled, Mode::Open).await?;
    for n in &root.notes {
        tracing::warn!("{n}");
    }
    let sb = root.sb;
    let pool_uuid = sb.pool_uuid;
    let mut containers = Vec::new();
    let mut at = 0;
    for (rec, b) in sb.containers.iter().zip(root.containers) {
        let b = b.expect("open refuses a missing container");
        containers.push(Container {
            bdev: b,
            first_seg: at,
            segments: std::sync::atomic::AtomicU64::new(rec.segments),
            reserved: rec.reserved_segments,
            label_uuid: rec.bdev_uuid,
        });
        at += rec.segments;
    }
    // Everything the superblock points at, verified before anything is built from it.
    let found = scan::scan(&root.meta_bdev, &sb, Mode::Open).await;
    if let Some(e) = found.errors.into_iter().next() {
        return Err(e);
    }
    let found = Scan {
        errors: Vec::new(),
        ..found
    };
    for e in &found.space_map_errors {
        tracing::warn!(pool = %sb.pool_name, error = %e,
            "the space map is damaged; rebuilt from the tables, the next commit writes it \
             (run `tessera check`)");
    }
    // A rebuilt space map is a change: the next commit (a flush, the close) writes it.
    let changes = u64::from(!found.space_map_errors.is_empty());
    let geo = Geometry::new(sb.block_size, sb.segment_bytes);
    let shared = Arc::new(PoolShared {
        id: PoolShared::next_id(),
        uuid: pool_uuid,
        name: super::shared::PoolName::new(&sb.pool_name),
        geo,
        separate_metadata: sb.separate_metadata,
        meta_bdev: root.meta_bdev.clone(),
        meta_label_uuid: sb.metadata_uuid,
        meta_first_byte: sb.meta_first_byte,
        meta_pages: sb.meta_pages,
        sm_pages: sb.sm_pages,
        max_segments: max_segments_for(sb.sm_pages),
        ctl_core,
        cores,
        ctl_port: views::PORT,
        // Room for the segments the pool may grow to: fills are allocated a chunk at a
        // time as segments are first used, so the room costs a pointer per chunk.
        fills: Fills::new(max_segments_for(sb.sm_pages)),
        dirty_fills: crossbeam_queue::SegQueue::new(),
        cow_default: CowPolicy::from_u8(sb.cow_policy),
        free_segments: std::sync::atomic::AtomicU64::new(0),
        meta_budget: Default::default(),
        on_external_released: Default::default(),
        containers,
    });
    let Loaded {
        records,
        roots,
        dir_pages,
        sm_ptrs,
        counts,
        node_pages,
    } = build_state(found, &shared.fills);
    let reserved: Vec<u64> = shared
        .containers
        .iter()
        .flat_map(|c| c.first_seg..c.first_seg + c.reserved)
        .collect();
    let sizes: Vec<u64> = shared.containers.iter().map(|c| c.segments()).collect();
    let mut space = Space::new(
        &sizes,
        &reserved,
        sb.meta_pages,
        sb.node_first_page(),
        sb.txn + 1,
    );
    for p in node_pages.iter().chain(dir_pages.iter()) {
        space.load_page(*p);
    }
    for (s, c) in counts.iter() {
        space.load_segment(s, c);
    }
    // A count per segment of the pool (16 MiB for 4 TiB), no longer needed: given back
    // before the replay, not held until the open returns.
    drop(counts);
    space.touch_all_sm();
    let mut table: BTreeMap<u64, (DiskRecord, Option<Arc<Node>>)> = records
        .into_iter()
        .zip(roots)
        .map(|(rec, root)| (rec.id, (rec, root)))
        .collect();
    let mut generation = sb.generation;
    let mut next_disk_id = sb.next_disk_id;
    // The log: replayed onto the checkpoint; or, for a pool without one, placed in a
    // free run of the node area (the checkpoint at the end of the open records it).
    let log = match sb.log {
        Some(mut area) => {
            for p in area.all_pages() {
                space.load_page(p);
            }
            let read = intent::read_log(
                &root.meta_bdev,
                sb.meta_first_byte,
                &pool_uuid,
                sb.total_segments(),
                &area,
            )
            .await
            .map_err(|e| VdiskError::Meta(e.into()))?;
            let (end_seq, end_lsn) = (read.end_seq, read.end_lsn);
            let stale = read.stale;
            for (place, why) in &read.repaired {
                tracing::warn!(pool = %sb.pool_name, page = place, %why,
                    "log page damaged: replayed from its copy in the log's mirror");
            }
            let r = intent::replay(
                read.pages,
                &area,
                intent::ReplayState {
                    disks: &mut table,
                    space: &mut space,
                    fills: &shared.fills,
                    generation: &mut generation,
                    next_disk_id: &mut next_disk_id,
                },
            )
            .map_err(|e| VdiskError::Meta(e.into()))?;
            // Fills the log changed sit in leaves read from the checkpoint: copied, so
            // that the next checkpoint writes them.
            let copied = intent::rewrite_leaves_holding(&mut table, &mut space, &r.fills_changed);
            tracing::info!(pool = %sb.pool_name, records = r.records, pages = r.pages,
                erased = stale.len(), extents_in_copied_leaves = copied, "log replayed");
            // A log without a mirror (superblock version 3) gains one if a free run of
            // the node area holds it: the checkpoint below records it, and appends
            // start a whole ring past the replay start, written to both rings.
            let mut mirror_added = false;
            if area.mirror.is_none() {
                area.mirror = space.take_page_run(area.pages);
                mirror_added = area.mirror.is_some();
            }
            // A log of superblock version 3 or 4 holds wide records only: packed ones
            // are appended once a checkpoint has written a superblock that says the log
            // may hold them (version 5), so that an older build refuses the pool
            // rather than end its log at the first packed record.
            let upgraded = !area.packed;
            area.packed = true;
            if end_lsn >= area.replay_lsn && !mirror_added && !upgraded {
                // Appends go on from the end of the log, once what is left past it of
                // an append the crash tore is erased: no page written before can then
                // pass for a new one. The replayed changes stay in the log until the
                // next checkpoint, which runs in the background.
                for place in &stale {
                    write_bytes_fua(
                        &root.meta_bdev,
                        sb.meta_first_byte + place * PAGE_BYTES as u64,
                        IoBuf::zeroed(PAGE_BYTES),
                        true,
                    )
                    .await
                    .map_err(io_err(format!(
                        "erasing log page {place}, past the end of the log"
                    )))?;
                }
                Some(LogResume {
                    area,
                    next_seq: end_seq,
                    next_lsn: end_lsn,
                    replayed: r.records,
                    checkpoint: false,
                })
            } else {
                // Pages whose records the checkpoint already holds end the log: the
                // next record's LSN would not continue them (or the log just gained
                // its mirror, or packed records). Appends start a whole ring past the replay start, after
                // a checkpoint naming it.
                Some(LogResume {
                    area,
                    next_seq: area.replay_seq + area.pages,
                    next_lsn: r.next_lsn,
                    replayed: r.records,
                    checkpoint: true,
                })
            }
        }
        None => {
            let want = intent::log_pages_for(sb.meta_pages - sb.node_first_page());
            match space.take_page_run(want) {
                Some(first_page) if want > 0 => Some(LogResume {
                    area: LogArea {
                        first_page,
                        pages: want,
                        mirror: space.take_page_run(want),
                        replay_seq: 0,
                        replay_lsn: 1,
                        packed: true,
                    },
                    next_seq: want,
                    next_lsn: 1,
                    replayed: 0,
                    checkpoint: true,
                }),
                _ => {
                    tracing::warn!(pool = %sb.pool_name, pages = want,
                        "no free run of metadata pages for an intent log: flushes and \
                         snapshots commit the tables instead");
                    None
                }
            }
        }
    };
    let mut disks = BTreeMap::new();
    for (id, (rec, root)) in table {
        let bdev = VDisk::new(&shared, &rec).map_err(VdiskError::Bdev)?;
        // Overwrites after the open look at the view, as before it (`maybe_mapped.rs`).
        if let Some(r) = &root {
            r.visit_from(0, &mut |e| {
                bdev.maybe_mapped.note_run(e.vseg, u64::from(e.len));
                true
            });
        }
        disks.insert(id, DiskCtl::new(rec, root, bdev));
    }
    let mut st = CtlState {
        disks,
        containers: sizes,
        space,
        generation,
        next_disk_id,
        committed_txn: sb.txn,
        changes,
        committed_changes: 0,
        dir_pages,
        space_map: sm_ptrs,
        sm_counts: Vec::new(),
        failed: None,
        closed: false,
        log: None,
    };
    // The log mirrors the directory as loaded (and replayed).
    let checkpoint = log.as_ref().is_some_and(|l| l.checkpoint);
    if log.as_ref().is_some_and(|l| l.replayed > 0) {
        // What was replayed is durable (in the log) but not checkpointed: a change the
        // next checkpoint captures.
        st.changes += 1;
    }
    st.log = log.map(|r| {
        let mut l = IntentLog::new(r.area, r.next_seq, r.next_lsn, &st);
        l.replayed_at_open = r.replayed;
        l.durable_changes = st.changes;
        l
    });
    let ndisks = st.disks.len();
    let c = Controller::start(shared.clone(), st);
    if checkpoint {
        // A checkpoint naming where appends start (or where the new log lies).
        c.commit().await.map_err(|status| VdiskError::Io {
            what: "the checkpoint after the log replay".into(),
            status,
        })?;
    }
    c.resume_jobs();
    give_back_free_memory();
    tracing::info!(pool = %shared.name, uuid = %pool_uuid, txn = sb.txn, disks = ndisks,
        resident_bytes = crate::util::resident_bytes().unwrap_or(0), "pool opened");
    Ok(shared)
}

/// Where the log of a pool just opened goes on.
struct LogResume {
    area: LogArea,
    next_seq: u64,
    next_lsn: u64,
    /// Records the open replayed.
    replayed: u64,
    /// Appends wait for a checkpoint naming the area and a replay start that makes
    /// `next_seq` safe.
    checkpoint: bool,
}

/// Returns the heap's free pages to the system. Opening a big pool holds the decoded
/// pages, the tables before and after the replay and a checkpoint's pages for a moment;
/// freed, that memory stays resident in the allocator's heap (a 4 TiB disk with 670 K
/// extents: 171 MiB resident after open, 121 MiB after this) unless given back.
fn give_back_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` only releases memory the allocator holds free; it takes no
    // pointer and leaves every live allocation where it is.
    unsafe {
        libc::malloc_trim(0);
    }
}

struct Loaded {
    records: Vec<super::meta::directory::DiskRecord>,
    roots: Vec<Option<Arc<Node>>>,
    dir_pages: Vec<u64>,
    sm_ptrs: SpaceMapPtrs,
    counts: super::scan::SegCounts,
    node_pages: Vec<u64>,
}

/// Builds the in-memory tables from a scan that found no error: shared pages become
/// shared nodes; the fills of partial layers go to `fills`.
fn build_state(mut found: Scan, fills: &Fills) -> Loaded {
    let mut built: FxHashMap<u64, Arc<Node>> = FxHashMap::default();
    let mut roots = Vec::new();
    for r in std::mem::take(&mut found.roots) {
        if r.is_none() {
            roots.push(None);
            continue;
        }
        let root = build(r.page, &mut found.nodes, &mut built, fills);
        root.retain();
        roots.push(Some(root));
    }
    Loaded {
        records: found.records,
        roots,
        dir_pages: found.dir_pages,
        sm_ptrs: found.sm_ptrs,
        counts: found.counts,
        node_pages: built.keys().copied().collect(),
    }
}

/// The node of `page` (every page reachable from a root was scanned and verified; the
/// scan bounds the depth). Each scanned page is taken out of `scanned` as its node is
/// built, so that the decoded leaves are given back while the nodes are made, not
/// held beside all of them.
fn build(
    page: u64,
    scanned: &mut FxHashMap<u64, ScannedNode>,
    built: &mut FxHashMap<u64, Arc<Node>>,
    fills: &Fills,
) -> Arc<Node> {
    if let Some(n) = built.get(&page) {
        return n.clone();
    }
    let scanned_page = scanned
        .remove(&page)
        .expect("every page a built node points at was scanned");
    let kind = match &scanned_page.node {
        NodePage::Internal(entries) => {
            let mut keys = Vec::with_capacity(entries.len());
            let mut children = Vec::with_capacity(entries.len());
            for &(k, c) in entries.iter() {
                let child = build(c.page, scanned, built, fills);
                child.retain();
                keys.push(k);
                children.push(child);
            }
            NodeKind::Internal { keys, children }
        }
        NodePage::Leaf(raw) => {
            let extents: Vec<Extent> = raw
                .iter()
                .map(|r| r.build(|seg, words| fills.get(seg).store_words(words)))
                .collect();
            let budget = extents.iter().map(table::extent_budget).sum();
            NodeKind::Leaf {
                extents: LeafExtents::with_budget(extents, budget),
            }
        }
    };
    let node = Node::loaded(kind, page, scanned_page.found.txn, scanned_page.found.crc);
    built.insert(page, node.clone());
    node
}
