//! Copies of a virtual disk's own blocks to any bdev, in the background:
//!
//! - `bdev_lvol_start_shallow_copy` {`src_lvol_name`, `dst_bdev_name`} (SPDK's): the
//!   blocks the lvol itself holds — for a clone or a later snapshot, the granules of its
//!   own layers, not those it shares with its parent (`changed_ranges` against the
//!   parent); for an lvol without a parent, every block holding data
//!   (`allocated_ranges`) — written at the same byte offsets of the destination, and
//!   nothing else;
//! - `tessera_lvol_start_diff_copy` {`base`?, `target`, `dst_bdev_name`,
//!   `offset_blocks`?, `max_bytes_per_sec`?}: the blocks of `target` that differ from
//!   `base` (two lvols of one lvstore, `changed_ranges`), from `offset_blocks` on —
//!   applied onto a copy of `base` this gives `target` (an incremental backup;
//!   resumable: `check` reports where the copy has reached). Without `base`, every block
//!   of `target` holding data (`allocated_ranges`), inherited ones too: a full copy onto
//!   a destination that reads as zeros, resumable the same way (a shallow copy of a
//!   later snapshot copies only its own layer, and has no offset). `max_bytes_per_sec`
//!   caps this copy alone (below the cap every copy shares, if that is lower);
//! - `bdev_lvol_check_shallow_copy` {`operation_id`} (SPDK's) answers for both:
//!   `state` ("in progress", "complete", "error" with `error`), `copied_clusters` and
//!   `total_clusters` (segments, SPDK's clusters, that hold blocks to copy), and
//!   tessera's `copied_bytes`, `total_bytes` and `next_offset_blocks` (everything below
//!   it is copied; the offset to resume from). Finished operations stay listed until
//!   the process ends (SPDK forgets one once `check` reported it finished).
//! - `tessera_lvol_cancel_copy` {`operation_id`}: stops a copy before its next wave of
//!   requests (those in flight complete); it ends in state "error" ("cancelled"), and
//!   `next_offset_blocks` says where to resume.
//! - `tessera_lvol_set_copy_limit` {`max_bytes_per_sec`}: a bandwidth cap (0: none)
//!   for every copy, running ones included; each pool's splits and decouples get the
//!   same cap, for all of them together (`Pool::set_job_limit`).
//!
//! As SPDK requires, the source must be read-only (a snapshot, or an lvol set
//! read-only): it cannot change during the copy. A copy checks this before every step
//! and fails if the flag was cleared. The destination must be at least as large as the
//! source, with a block size that divides the source's, and unused (a bdev a pool, an
//! export or a namespace holds is refused); the copy holds it until it ends. Every read
//! and write has a time limit; a failed or late one ends the copy in state "error".
//!
//! Error codes as SPDK's: a source that is no lvol -19 (`No such device`); a refused
//! start -32602 with `strerror` of SPDK's errno first (`No such device` for an unknown
//! destination, `Operation not permitted` for a writable source or a destination in
//! use, `Invalid argument` for a destination too small or of another block size); an
//! unknown operation id -19.

use super::{Ctx, RpcResult};
use crate::bdev::{Bdev, Channel, IoStatus};
use crate::reactor;
use crate::rpc::error::RpcError;
use crate::vdisk::Pool;
use crate::vdisk::diff::{Allocation, BlockRange};
use serde::Deserialize;
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Bytes read and written per request at most (a chunk never crosses a segment).
const CHUNK_BYTES: u64 = 1 << 20;
/// Requests in flight per copy.
const QUEUE_DEPTH: usize = 4;
/// The time limit of one read or write.
const IO_LIMIT: Duration = Duration::from_secs(30);
/// Runs fetched from the table per page.
const PAGE_RUNS: usize = 65_536;

/// `bdev_lvol_start_shallow_copy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShallowCopyParams {
    pub src_lvol_name: String,
    pub dst_bdev_name: String,
}

/// `tessera_lvol_start_diff_copy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffCopyParams {
    /// The older side: a snapshot of the lineage; none for a full copy.
    #[serde(default)]
    pub base: Option<String>,
    /// The newer side: a later snapshot (read-only).
    pub target: String,
    pub dst_bdev_name: String,
    /// Where to start (resuming an interrupted copy); blocks of `target`.
    #[serde(default)]
    pub offset_blocks: u64,
    /// Bytes per second for this copy (0 or absent: only the shared cap).
    #[serde(default)]
    pub max_bytes_per_sec: u64,
}

/// `bdev_lvol_check_shallow_copy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckParams {
    pub operation_id: u32,
}

/// `tessera_lvol_set_copy_limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyLimitParams {
    /// Bytes per second over all of a copy's writes; 0 lifts the cap.
    pub max_bytes_per_sec: u64,
}

/// The copies of this process, and the cap they share.
#[derive(Default)]
pub struct Copies {
    ops: RefCell<BTreeMap<u32, Rc<CopyOp>>>,
    next_id: Cell<u32>,
    /// Bytes per second, 0 for none.
    limit: Rc<Cell<u64>>,
}

/// One copy, as `check` reports it.
struct CopyOp {
    total_clusters: u64,
    total_bytes: u64,
    copied_clusters: Cell<u64>,
    copied_bytes: Cell<u64>,
    /// Everything of the copy below this block (of the source) is copied.
    next_offset_blocks: Cell<u64>,
    /// `Some` once finished: `Ok` complete, `Err` the error.
    result: RefCell<Option<Result<(), String>>>,
    /// Set by `tessera_lvol_cancel_copy`: stop before the next wave.
    cancelled: Cell<bool>,
}

/// A piece of a run, inside one segment: source blocks and the segment's ordinal among
/// those the copy touches (1-based).
#[derive(Clone, Copy, Debug)]
struct Chunk {
    offset_blocks: u64,
    num_blocks: u64,
    cluster: u64,
}

/// -32602 with SPDK's `strerror` first, as SPDK answers a refused start.
fn refused(errno: i32, detail: String) -> RpcError {
    let what = match errno {
        libc::ENODEV => "No such device",
        libc::EPERM => "Operation not permitted",
        _ => "Invalid argument",
    };
    RpcError::invalid_params(format!("{what}: {detail}"))
}

/// The source lvol: its pool, its name in the pool, its bdev; -19 unless it is an lvol.
async fn source(ctx: &Ctx, name: &str) -> Result<(Pool, String, Arc<dyn Bdev>), RpcError> {
    let (pool, disk) = ctx.resolve_lvol(name).await.map_err(|e| {
        if e.code == -libc::EINVAL {
            RpcError::errno(libc::ENODEV, e.message)
        } else {
            e
        }
    })?;
    let bdev = ctx.target.bdevs().get(name)?;
    Ok((pool, disk, bdev))
}

/// The source must be read-only, as SPDK requires.
fn check_read_only(name: &str, src: &Arc<dyn Bdev>) -> Result<(), RpcError> {
    if !src.read_only() {
        return Err(refused(
            libc::EPERM,
            format!(
                "lvol \"{name}\" is writable; copy a snapshot or set it read-only \
                 (bdev_lvol_set_read_only)"
            ),
        ));
    }
    Ok(())
}

/// The destination: unused, writable, large enough, of a block size that divides the
/// source's.
fn destination(ctx: &Ctx, name: &str, src: &Arc<dyn Bdev>) -> Result<Arc<dyn Bdev>, RpcError> {
    let dst = match ctx.target.bdevs().get(name) {
        Ok(b) => b,
        Err(crate::bdev::BdevError::NotFound(_)) => {
            return Err(refused(
                libc::ENODEV,
                format!("dst_bdev_name: bdev \"{name}\" does not exist"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if dst.id() == src.id() {
        return Err(refused(
            libc::EPERM,
            format!("dst_bdev_name: \"{name}\" is the source itself"),
        ));
    }
    let claims = ctx.target.bdevs().claims(dst.name());
    if !claims.is_empty() {
        return Err(refused(
            libc::EPERM,
            format!(
                "dst_bdev_name: bdev \"{name}\" is in use by {}",
                claims.join(", ")
            ),
        ));
    }
    if dst.read_only() {
        return Err(refused(
            libc::EPERM,
            format!("dst_bdev_name: bdev \"{name}\" is read-only"),
        ));
    }
    let (sbs, dbs) = (src.block_size() as u64, dst.block_size() as u64);
    if !sbs.is_multiple_of(dbs) {
        return Err(refused(
            libc::EINVAL,
            format!(
                "dst_bdev_name: the block size of \"{name}\" ({dbs}) does not divide the \
                 source's ({sbs})"
            ),
        ));
    }
    let (ssize, dsize) = (src.num_blocks() * sbs, dst.num_blocks() * dbs);
    if dsize < ssize {
        return Err(refused(
            libc::EINVAL,
            format!("dst_bdev_name: \"{name}\" has {dsize} bytes, the source {ssize}"),
        ));
    }
    Ok(dst)
}

/// The runs `target` holds apart from `base` from `from` on, every page of them.
async fn changed_runs(
    pool: &Pool,
    base: &str,
    target: &str,
    mut from: u64,
) -> Result<Vec<BlockRange>, RpcError> {
    let mut out = Vec::new();
    loop {
        let page = pool.changed_ranges(base, target, from, PAGE_RUNS).await?;
        out.extend(page.runs);
        match page.next_offset_blocks {
            Some(n) => from = n,
            None => return Ok(out),
        }
    }
}

/// The runs of `disk` that hold data, every page of them.
async fn data_runs(pool: &Pool, disk: &str) -> Result<Vec<BlockRange>, RpcError> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let page = pool.allocated_ranges(disk, from, PAGE_RUNS).await?;
        out.extend(
            page.runs
                .into_iter()
                .filter(|(_, a)| *a == Allocation::Data)
                .map(|(r, _)| r),
        );
        match page.next_offset_blocks {
            Some(n) => from = n,
            None => return Ok(out),
        }
    }
}

/// Runs cut into chunks of at most [`CHUNK_BYTES`] inside one segment, each with its
/// segment's ordinal.
fn chunks(runs: &[BlockRange], segment_blocks: u64, chunk_blocks: u64) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut last_seg = None;
    let mut cluster = 0;
    for r in runs {
        let mut at = r.offset_blocks;
        let end = r.offset_blocks + r.num_blocks;
        while at < end {
            let seg = at / segment_blocks;
            if last_seg != Some(seg) {
                cluster += 1;
                last_seg = Some(seg);
            }
            let n = (end - at)
                .min((seg + 1) * segment_blocks - at)
                .min(chunk_blocks);
            out.push(Chunk {
                offset_blocks: at,
                num_blocks: n,
                cluster,
            });
            at += n;
        }
    }
    out
}

/// `fut`, or `None` once the I/O time limit has passed.
async fn within<F: Future>(fut: F) -> Option<F::Output> {
    reactor::until(reactor::now().after(IO_LIMIT), fut).await
}

/// Copies one chunk: reads it from the source and writes it at the same byte offset of
/// the destination.
async fn copy_chunk(src: Channel, dst: Channel, c: Chunk) -> Result<(), String> {
    let sbs = src.bdev().block_size() as u64;
    let dbs = dst.bdev().block_size() as u64;
    let io = |r: Option<Result<(), IoStatus>>, what: &str, bdev: &Channel| match r {
        Some(Ok(())) => Ok(()),
        Some(Err(st)) => Err(format!(
            "{what} of {} blocks at block {} of bdev \"{}\" failed: {st:?}",
            c.num_blocks,
            c.offset_blocks,
            bdev.bdev().name()
        )),
        None => Err(format!(
            "{what} at block {} of bdev \"{}\" took longer than {IO_LIMIT:?}",
            c.offset_blocks,
            bdev.bdev().name()
        )),
    };
    let mut data = None;
    let r = within(src.read(c.offset_blocks, c.num_blocks))
        .await
        .map(|r| r.map(|b| data = Some(b)));
    io(r, "read", &src)?;
    let data = data.expect("read succeeded");
    let r = within(dst.write(c.offset_blocks * sbs / dbs, data)).await;
    io(r, "write", &dst)
}

/// Runs a copy to its end on this core (the RPC core), [`QUEUE_DEPTH`] chunks at a
/// time, within the cap.
async fn run(
    op: Rc<CopyOp>,
    chunks: Vec<Chunk>,
    src: Arc<dyn Bdev>,
    dst: Arc<dyn Bdev>,
    limit: Rc<Cell<u64>>,
    own_limit: u64,
) -> Result<(), String> {
    let channels = Channel::get(&src).and_then(|s| Ok((s, Channel::get(&dst)?)));
    let (sch, dch) = channels.map_err(|e| e.to_string())?;
    let sbs = src.block_size() as u64;
    // The cap's reference point: (time, bytes copied then, the cap then).
    let mut mark = (reactor::now(), 0u64, u64::MAX);
    let mut done = 0;
    while done < chunks.len() {
        if op.cancelled.get() {
            return Err("cancelled (tessera_lvol_cancel_copy)".into());
        }
        if !src.read_only() {
            return Err(format!(
                "the source \"{}\" was made writable during the copy",
                src.display_name()
            ));
        }
        let cap = match (limit.get(), own_limit) {
            (0, own) => own,
            (shared, 0) => shared,
            (shared, own) => shared.min(own),
        };
        if cap != mark.2 {
            mark = (reactor::now(), op.copied_bytes.get(), cap);
        }
        if cap > 0 {
            let owed = op.copied_bytes.get() - mark.1;
            let due = mark
                .0
                .after(Duration::from_secs_f64(owed as f64 / cap as f64));
            if due > reactor::now() {
                reactor::sleep_until(due).await;
            }
        }
        let wave = &chunks[done..(done + QUEUE_DEPTH).min(chunks.len())];
        let tasks: Vec<_> = wave
            .iter()
            .map(|&c| reactor::spawn_local(copy_chunk(sch.clone(), dch.clone(), c)))
            .collect();
        let mut first_err = None;
        for t in tasks {
            if let Err(e) = t.await {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        done += wave.len();
        let bytes: u64 = wave.iter().map(|c| c.num_blocks * sbs).sum();
        op.copied_bytes.set(op.copied_bytes.get() + bytes);
        match chunks.get(done) {
            Some(next) => {
                op.copied_clusters.set(next.cluster - 1);
                op.next_offset_blocks.set(next.offset_blocks);
            }
            None => {
                op.copied_clusters.set(op.total_clusters);
                op.next_offset_blocks.set(src.num_blocks());
            }
        }
    }
    let r = within(dch.flush()).await;
    match r {
        Some(Ok(())) | Some(Err(IoStatus::InvalidOpcode)) => Ok(()),
        Some(Err(st)) => Err(format!("flush of \"{}\" failed: {st:?}", dst.name())),
        None => Err(format!(
            "flush of \"{}\" took longer than {IO_LIMIT:?}",
            dst.name()
        )),
    }
}

/// Registers a copy of `runs` from `src` to `dst` and starts it, within its own cap
/// `own_limit` (bytes per second, 0 for none) too; its operation id.
#[allow(clippy::too_many_arguments)] // each is one fact of the copy; a struct would only rename them
fn start(
    ctx: &Ctx,
    what: String,
    runs: Vec<BlockRange>,
    from: u64,
    segment_blocks: u64,
    src: Arc<dyn Bdev>,
    dst: Arc<dyn Bdev>,
    own_limit: u64,
) -> Result<u32, RpcError> {
    let sbs = src.block_size() as u64;
    let chunks = chunks(&runs, segment_blocks, (CHUNK_BYTES / sbs).max(1));
    let copies = &ctx.copies;
    let id = copies.next_id.get().wrapping_add(1).max(1);
    copies.next_id.set(id);
    let op = Rc::new(CopyOp {
        total_clusters: chunks.last().map_or(0, |c| c.cluster),
        total_bytes: chunks.iter().map(|c| c.num_blocks * sbs).sum(),
        copied_clusters: Cell::new(0),
        copied_bytes: Cell::new(0),
        next_offset_blocks: Cell::new(
            chunks
                .first()
                .map_or(src.num_blocks(), |c| c.offset_blocks.max(from)),
        ),
        result: RefCell::new(None),
        cancelled: Cell::new(false),
    });
    copies.ops.borrow_mut().insert(id, op.clone());
    let bdevs = ctx.target.bdevs().clone();
    let claim = format!("copy {id} ({what})");
    let dst_name = bdevs.claim(dst.name(), &claim)?;
    tracing::info!(operation_id = id, %what, chunks = chunks.len(), "copy started");
    let limit = copies.limit.clone();
    reactor::spawn_local(async move {
        let r = run(op.clone(), chunks, src, dst, limit, own_limit).await;
        bdevs.release(&dst_name, &claim);
        match &r {
            Ok(()) => tracing::info!(operation_id = id, "copy complete"),
            Err(e) => tracing::warn!(operation_id = id, error = %e, "copy failed"),
        }
        *op.result.borrow_mut() = Some(r);
    })
    .detach();
    Ok(id)
}

pub async fn bdev_lvol_start_shallow_copy(ctx: Rc<Ctx>, p: ShallowCopyParams) -> RpcResult {
    let (pool, disk, src) = source(&ctx, &p.src_lvol_name).await?;
    check_read_only(&p.src_lvol_name, &src)?;
    let dst = destination(&ctx, &p.dst_bdev_name, &src)?;
    let info = pool
        .list()
        .await?
        .into_iter()
        .find(|d| d.name == disk)
        .ok_or_else(|| RpcError::no_such(format!("lvol \"{}\"", p.src_lvol_name)))?;
    let runs = match &info.parent {
        Some(parent) => changed_runs(&pool, parent, &disk, 0).await?,
        None => data_runs(&pool, &disk).await?,
    };
    let seg_blocks = pool.segment_bytes() / src.block_size() as u64;
    let what = format!("shallow copy of {} to {}", p.src_lvol_name, p.dst_bdev_name);
    let id = start(&ctx, what, runs, 0, seg_blocks, src, dst, 0)?;
    Ok(json!({"operation_id": id}))
}

pub async fn tessera_lvol_start_diff_copy(ctx: Rc<Ctx>, p: DiffCopyParams) -> RpcResult {
    let (tpool, target, src) = source(&ctx, &p.target).await?;
    let base = match &p.base {
        None => None,
        Some(b) => {
            let (pool, base, _) = source(&ctx, b).await?;
            if pool.uuid() != tpool.uuid() {
                return Err(RpcError::einval(format!(
                    "base: \"{b}\" is in lvstore \"{}\", target \"{}\" in \"{}\"",
                    pool.name(),
                    p.target,
                    tpool.name()
                )));
            }
            Some((b, base))
        }
    };
    if p.offset_blocks > src.num_blocks() {
        return Err(RpcError::einval(format!(
            "offset_blocks: {} is past the target's {} blocks",
            p.offset_blocks,
            src.num_blocks()
        )));
    }
    check_read_only(&p.target, &src)?;
    let dst = destination(&ctx, &p.dst_bdev_name, &src)?;
    let (runs, what) = match &base {
        Some((name, base)) => (
            changed_runs(&tpool, base, &target, p.offset_blocks).await?,
            format!(
                "changes of {} since {name} to {}",
                p.target, p.dst_bdev_name
            ),
        ),
        None => (
            cut_below(data_runs(&tpool, &target).await?, p.offset_blocks),
            format!("full copy of {} to {}", p.target, p.dst_bdev_name),
        ),
    };
    let seg_blocks = tpool.segment_bytes() / src.block_size() as u64;
    let id = start(
        &ctx,
        what,
        runs,
        p.offset_blocks,
        seg_blocks,
        src,
        dst,
        p.max_bytes_per_sec,
    )?;
    Ok(json!({"operation_id": id}))
}

/// `runs` from block `from` on (a run across it is cut there).
fn cut_below(runs: Vec<BlockRange>, from: u64) -> Vec<BlockRange> {
    runs.into_iter()
        .filter_map(|r| {
            let end = r.offset_blocks + r.num_blocks;
            (end > from).then(|| {
                let start = r.offset_blocks.max(from);
                BlockRange {
                    offset_blocks: start,
                    num_blocks: end - start,
                }
            })
        })
        .collect()
}

pub async fn bdev_lvol_check_shallow_copy(ctx: Rc<Ctx>, p: CheckParams) -> RpcResult {
    let op = ctx
        .copies
        .ops
        .borrow()
        .get(&p.operation_id)
        .cloned()
        .ok_or_else(|| RpcError::no_such(format!("operation id {}", p.operation_id)))?;
    let mut v = json!({
        "copied_clusters": op.copied_clusters.get(),
        "total_clusters": op.total_clusters,
        "copied_bytes": op.copied_bytes.get(),
        "total_bytes": op.total_bytes,
        "next_offset_blocks": op.next_offset_blocks.get(),
    });
    let (state, error) = match &*op.result.borrow() {
        None => ("in progress", None),
        Some(Ok(())) => ("complete", None),
        Some(Err(e)) => ("error", Some(e.clone())),
    };
    v["state"] = json!(state);
    if let Some(e) = error {
        v["error"] = json!(e);
    }
    Ok(v)
}

pub async fn tessera_lvol_cancel_copy(ctx: Rc<Ctx>, p: CheckParams) -> RpcResult {
    let op = ctx
        .copies
        .ops
        .borrow()
        .get(&p.operation_id)
        .cloned()
        .ok_or_else(|| RpcError::no_such(format!("operation id {}", p.operation_id)))?;
    op.cancelled.set(true);
    Ok(Value::Bool(op.result.borrow().is_none()))
}

pub async fn tessera_lvol_set_copy_limit(ctx: Rc<Ctx>, p: CopyLimitParams) -> RpcResult {
    ctx.copies.limit.set(p.max_bytes_per_sec);
    ctx.target.set_job_limit(p.max_bytes_per_sec).await?;
    Ok(Value::Bool(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stay_inside_segments_and_count_each_segment_once() {
        let runs = [
            BlockRange {
                offset_blocks: 2,
                num_blocks: 10,
            },
            BlockRange {
                offset_blocks: 14,
                num_blocks: 1,
            },
        ];
        let c = chunks(&runs, 8, 4);
        let got: Vec<(u64, u64, u64)> = c
            .iter()
            .map(|c| (c.offset_blocks, c.num_blocks, c.cluster))
            .collect();
        assert_eq!(got, [(2, 4, 1), (6, 2, 1), (8, 4, 2), (14, 1, 2)]);
    }
}
