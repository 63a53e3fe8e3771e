//! Pools and virtual disks under SPDK's lvol names (`module/bdev/lvol/vbdev_lvol_rpc.c`):
//! an lvstore is a pool, its cluster size is the pool's segment size, an lvol is a
//! virtual disk. As in SPDK, a disk's bdev is named by its UUID, with the alias
//! `lvs_name/lvol_name`; `bdev_lvol_create`, `bdev_lvol_snapshot` and
//! `bdev_lvol_clone` return the UUID. Wherever a bdev is named, the name, the alias,
//! the UUID, and (tessera's addition) the bare lvol name where no other lvstore has
//! one so named, are accepted.
//!
//! `bdev_lvol_rename` and `bdev_lvol_rename_lvstore` change the names (committed before
//! they answer); the bdev keeps its name (the UUID), so exports of the disk go on
//! serving it under its new alias, as in SPDK.
//!
//! tessera's own: `tessera_pool_create` (several bdevs, a metadata bdev, the
//! copy-on-write policy), `tessera_snapshot_group` (a consistency group),
//! `tessera_quiesce`/`tessera_activate`, `tessera_split_start`/`_progress`/`_cancel`,
//! `tessera_set_cow_policy`, `tessera_set_read_only`, `tessera_lvol_revert`.
//!
//! The parameters of the methods a configuration file may also hold (creating an
//! lvstore, an lvol, a snapshot or a clone; resizing; the read-only flag and the
//! copy-on-write policy) are in [`crate::config::spdk_json::lvol`].

use super::{Ctx, RpcResult};
use crate::config::PoolConfig;
use crate::config::spdk_json::lvol::{
    CloneBdevParams, CloneParams, CowPolicyParams, CreateLvolParams, CreateLvstoreParams,
    LvolNameParams, ReadOnlyParams, ResizeParams, SnapshotParams, size_bytes,
};
use crate::rpc::error::RpcError;
use crate::vdisk::meta::directory::DiskKind;
use crate::vdisk::{DiskInfo, Pool};
use serde::Deserialize;
use serde_json::{Value, json};
use std::rc::Rc;
use std::time::Duration;

/// Default quiesce limit of snapshots and `tessera_quiesce`.
const DEFAULT_QUIESCE_MS: u64 = 5000;

async fn create_pool(ctx: &Ctx, mut cfg: PoolConfig) -> RpcResult {
    for b in cfg.bdevs.iter_mut() {
        *b = ctx.resolve_bdev(b)?;
    }
    if let Some(m) = cfg.metadata_bdev.as_mut() {
        *m = ctx.resolve_bdev(m)?;
    }
    if let Some(c) = cfg.controller_core
        && c >= ctx.target.cores().len()
    {
        return Err(RpcError::einval(format!(
            "\"controller_core\": {c} is not one of the {} cores",
            ctx.target.cores().len()
        )));
    }
    let pool = ctx.target.create_pool(&cfg).await?;
    Ok(Value::String(pool.uuid().to_string()))
}

pub async fn bdev_lvol_create_lvstore(ctx: Rc<Ctx>, p: CreateLvstoreParams) -> RpcResult {
    create_pool(&ctx, p.to_config()?).await
}

/// `tessera_pool_create`: the YAML's pool entry.
pub async fn tessera_pool_create(ctx: Rc<Ctx>, p: PoolConfig) -> RpcResult {
    if p.bdevs.is_empty() {
        return Err(RpcError::invalid_params(
            "\"bdevs\": a pool needs at least one bdev",
        ));
    }
    create_pool(&ctx, p).await
}

/// `{uuid, lvs_name}`, either or neither (all lvstores).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LvsFilterParams {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub lvs_name: Option<String>,
}

fn lvstore_json(p: &Pool) -> Value {
    let (total, free) = p.space();
    let bdevs: Vec<String> = p.bdevs().iter().map(|b| b.name().to_string()).collect();
    json!({
        "uuid": p.uuid().to_string(),
        "name": p.name(),
        "base_bdev": bdevs.first(),
        "base_bdevs": bdevs,
        "total_data_clusters": total,
        "free_clusters": free,
        "block_size": p.block_size(),
        "cluster_size": p.segment_bytes(),
    })
}

pub async fn bdev_lvol_get_lvstores(ctx: Rc<Ctx>, p: LvsFilterParams) -> RpcResult {
    if p.uuid.is_none() && p.lvs_name.is_none() {
        let list: Vec<Value> = ctx.target.pools().iter().map(lvstore_json).collect();
        return Ok(Value::Array(list));
    }
    let pool = ctx.resolve_lvs(p.uuid.as_deref(), p.lvs_name.as_deref(), "uuid")?;
    Ok(json!([lvstore_json(&pool)]))
}

/// `bdev_lvol_grow_lvstore`: `{uuid}` or `{lvs_name}`, exactly one; the store takes the
/// space its base bdev gained (`vdisk/grow.rs`).
pub async fn bdev_lvol_grow_lvstore(ctx: Rc<Ctx>, p: LvsFilterParams) -> RpcResult {
    let pool = ctx.resolve_lvs(p.uuid.as_deref(), p.lvs_name.as_deref(), "uuid")?;
    ctx.target.grow_pool(&pool).await?;
    Ok(Value::Bool(true))
}

pub async fn bdev_lvol_delete_lvstore(ctx: Rc<Ctx>, p: LvsFilterParams) -> RpcResult {
    let pool = ctx.resolve_lvs(p.uuid.as_deref(), p.lvs_name.as_deref(), "uuid")?;
    ctx.target.delete_pool(&pool.name()).await?;
    Ok(Value::Bool(true))
}

pub async fn bdev_lvol_create(ctx: Rc<Ctx>, p: CreateLvolParams) -> RpcResult {
    let pool = ctx.resolve_lvs(p.uuid.as_deref(), p.lvs_name.as_deref(), "uuid")?;
    let d = ctx.target.create_disk(&p.to_config(&pool.name())?).await?;
    let b: std::sync::Arc<dyn crate::bdev::Bdev> = d;
    Ok(Value::String(b.name().to_string()))
}

/// `bdev_lvol_get_lvols`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetLvolsParams {
    #[serde(default)]
    pub lvs_uuid: Option<String>,
    #[serde(default)]
    pub lvs_name: Option<String>,
}

/// SPDK's `spdk_blob_is_snapshot`: lvols have been cloned from it — a snapshot, or an
/// lvol made read-only and cloned. (SPDK's answer also stays true after the last clone
/// is gone, until the lvstore is loaded again; tessera's snapshot is one all its life,
/// a read-only lvol while it has clones.)
pub(crate) fn is_snapshot(d: &DiskInfo) -> bool {
    d.kind == DiskKind::Snapshot || (d.read_only && !d.children.is_empty())
}

/// SPDK's `spdk_blob_is_clone`: the lvol reads through a snapshot of the lvstore — a
/// clone, the lvol a snapshot was taken of, a snapshot of either.
pub(crate) fn is_clone(d: &DiskInfo) -> bool {
    d.parent.is_some()
}

/// SPDK's `spdk_blob_is_esnap_clone`: the lvol whose parent is the external snapshot
/// itself (after a snapshot of it, the snapshot is, and the lvol is a clone of the
/// snapshot).
pub(crate) fn is_esnap_clone(d: &DiskInfo) -> bool {
    d.external.is_some() && d.parent.is_none()
}

fn lvol_json(pool: &Pool, d: &DiskInfo) -> Value {
    let seg = d.segment_bytes.max(1);
    json!({
        "alias": format!("{}/{}", pool.name(), d.name),
        "uuid": d.uuid.to_string(),
        "name": d.name,
        "is_thin_provisioned": d.thin,
        "is_snapshot": is_snapshot(d),
        "is_clone": is_clone(d),
        // tessera's: how the disk came to be ("disk", "snapshot" or "clone"), which
        // SPDK's flags do not tell apart once a disk has a snapshot.
        "kind": d.kind,
        "is_esnap_clone": is_esnap_clone(d),
        "is_degraded": d.degraded,
        // SPDK's esnap ID (the bdev's UUID), and tessera's: the bdev's name.
        "external_snapshot_name": d.external.as_ref().map(|x| x.uuid.to_string()),
        "external_snapshot_bdev": d.external.as_ref().map(|x| x.name.clone()),
        "lvs": {"name": pool.name(), "uuid": pool.uuid().to_string()},
        "num_blocks": d.size_bytes / pool.block_size() as u64,
        "block_size": pool.block_size(),
        "read_only": d.read_only,
        "parent": d.parent,
        "children": d.children,
        "num_allocated_clusters": d.allocated_segments,
        "num_shared_clusters": d.shared_segments,
        "cluster_size": seg,
        "cow_policy": d.cow_policy,
        "split": d.job.as_ref().map(|(kind, done, total)| json!({
            "kind": kind, "done_clusters": done, "total_clusters": total
        })),
    })
}

pub async fn bdev_lvol_get_lvols(ctx: Rc<Ctx>, p: GetLvolsParams) -> RpcResult {
    let pools = if p.lvs_uuid.is_none() && p.lvs_name.is_none() {
        ctx.target.pools()
    } else {
        vec![ctx.resolve_lvs(p.lvs_uuid.as_deref(), p.lvs_name.as_deref(), "lvs_uuid")?]
    };
    let mut out = Vec::new();
    for pool in pools {
        let mut list = pool.list().await?;
        list.sort_by_key(|d| d.id);
        out.extend(list.iter().map(|d| lvol_json(&pool, d)));
    }
    Ok(Value::Array(out))
}

/// `bdev_lvol_snapshot`, with tessera's optional `uuid` (the snapshot's: a received
/// snapshot keeps its source's; -17 when a bdev of the target already has it).
pub async fn bdev_lvol_snapshot(ctx: Rc<Ctx>, p: SnapshotParams) -> RpcResult {
    let uuid = p.uuid()?;
    ctx.resolve_lvol(&p.lvol_name).await?;
    let snaps = ctx
        .target
        .snapshot_with_uuids(
            vec![(p.lvol_name.clone(), p.snapshot_name.clone(), uuid)],
            Duration::from_millis(DEFAULT_QUIESCE_MS),
        )
        .await?;
    let names: Vec<String> = snaps.into_iter().map(bdev_name).collect();
    Ok(json!(names.first()))
}

/// The bdev name (UUID) of a disk.
fn bdev_name(d: std::sync::Arc<crate::vdisk::VDisk>) -> String {
    let b: std::sync::Arc<dyn crate::bdev::Bdev> = d;
    b.name().to_string()
}

pub async fn bdev_lvol_clone(ctx: Rc<Ctx>, p: CloneParams) -> RpcResult {
    ctx.resolve_lvol(&p.snapshot_name).await?;
    let c = ctx
        .target
        .clone_disk(&p.snapshot_name, &p.clone_name)
        .await?;
    Ok(Value::String(bdev_name(c)))
}

/// SPDK's answer to a refused lvol operation: -32602 with `strerror` of its errno
/// first, then tessera's reason.
fn lvol_refused(e: RpcError) -> RpcError {
    let what = match -e.code {
        libc::EEXIST => "File exists",
        libc::ENODEV => "No such device",
        libc::EPERM => "Operation not permitted",
        libc::ENOSPC => "No space left on device",
        libc::EBUSY => "Device or resource busy",
        libc::ENOMEM => "Cannot allocate memory",
        _ => "Invalid argument",
    };
    // A -ENODEV message already starts with its text (`RpcError::errno`): once only.
    let reason = e
        .message
        .strip_prefix(what)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(&e.message);
    RpcError::invalid_params(format!("{what}: {reason}"))
}

/// `bdev_lvol_clone_bdev {bdev, lvs_name, clone_name}`: a thin clone of any bdev (an
/// external snapshot, read only) in lvstore `lvs_name`; answers its UUID. As SPDK:
/// -32602 `lvs does not exist`, `bdev does not exist`, `bdev is an lvol in same lvs as
/// clone; use bdev_lvol_clone instead`, and -32602 with `strerror` first for a refused
/// creation (`File exists`, `Invalid argument` for a size not a multiple of the cluster
/// size, `Operation not permitted` for a bdev that has a writer).
pub async fn bdev_lvol_clone_bdev(ctx: Rc<Ctx>, p: CloneBdevParams) -> RpcResult {
    let pool = ctx
        .resolve_lvs(None, Some(&p.lvs_name), "lvs_name")
        .or_else(|_| ctx.resolve_lvs(Some(&p.lvs_name), None, "lvs_name"))
        .map_err(|_| RpcError::invalid_params(format!("lvs does not exist: \"{}\"", p.lvs_name)))?;
    let bdev = ctx
        .target
        .bdevs()
        .get(&p.bdev)
        .map_err(|e| RpcError::invalid_params(format!("bdev does not exist: {e}")))?;
    if let Ok((owner, _)) = ctx.target.disk(bdev.name()).await
        && owner.uuid() == pool.uuid()
    {
        return Err(RpcError::invalid_params(
            "bdev is an lvol in same lvs as clone; use bdev_lvol_clone instead",
        ));
    }
    let uuid = p.uuid()?;
    let c = ctx
        .target
        .clone_bdev(bdev.name(), &pool.name(), &p.clone_name, uuid)
        .await
        .map_err(|e| lvol_refused(e.into()))?;
    Ok(Value::String(bdev_name(c)))
}

/// `bdev_lvol_set_parent_bdev {lvol_name, parent_name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetParentParams {
    pub lvol_name: String,
    pub parent_name: String,
}

/// `bdev_lvol_set_parent_bdev`: the lvol reads through to the bdev `parent_name` where
/// it holds nothing. As SPDK: -19 when `lvol_name` is no lvol; -32602 with `strerror`
/// first when refused (`No such device` for an unknown bdev, `File exists` when it is
/// the parent already, `Invalid argument` for a thick lvol or a bdev of the wrong size,
/// `Operation not permitted` for a bdev with a writer). Answers `true`.
pub async fn bdev_lvol_set_parent_bdev(ctx: Rc<Ctx>, p: SetParentParams) -> RpcResult {
    ctx.resolve_lvol(&p.lvol_name).await.map_err(|e| {
        if e.code == -libc::EINVAL {
            RpcError::errno(libc::ENODEV, e.message)
        } else {
            e
        }
    })?;
    if let Err(e) = ctx.target.bdevs().get(&p.parent_name) {
        return Err(lvol_refused(RpcError::errno(libc::ENODEV, e.to_string())));
    }
    ctx.target
        .set_parent_bdev(&p.lvol_name, &p.parent_name)
        .await
        .map_err(|e| lvol_refused(e.into()))?;
    Ok(Value::Bool(true))
}

/// `bdev_lvol_set_parent {lvol_name, parent_name}`: the lvol becomes a clone of the
/// snapshot `parent_name` of the same lvstore; what it holds of its own stays. As SPDK:
/// -19 (`No such device`) when either is no lvol; -32602 with `strerror` first when
/// refused (`File exists` when `parent_name` is its parent already, `Invalid argument`
/// for a parent that is not a snapshot, of another lvstore or another size, for a thick
/// lvol that is not a clone, for a snapshot). Answers `true`, the change durable.
pub async fn bdev_lvol_set_parent(ctx: Rc<Ctx>, p: SetParentParams) -> RpcResult {
    let enodev = |e: RpcError| {
        if e.code == -libc::EINVAL {
            RpcError::errno(libc::ENODEV, e.message)
        } else {
            e
        }
    };
    ctx.resolve_lvol(&p.lvol_name).await.map_err(enodev)?;
    ctx.resolve_lvol(&p.parent_name).await.map_err(enodev)?;
    ctx.target
        .set_parent(&p.lvol_name, &p.parent_name)
        .await
        .map_err(|e| lvol_refused(e.into()))?;
    Ok(Value::Bool(true))
}

/// Runs a split or decouple to its end, as SPDK's inflate and decouple do before they
/// answer.
async fn split_and_wait(ctx: &Ctx, name: &str, decouple: bool) -> RpcResult {
    let (pool, disk) = ctx.resolve_lvol(name).await?;
    // What it reads through to: a parent in the lvstore, or an external snapshot (a
    // split, or as SPDK a decouple, of an esnap clone copies that in and lets it go).
    let lineage = |d: &DiskInfo| (d.parent.clone(), d.external.as_ref().map(|x| x.uuid));
    let before = lineage(&info(&pool, &disk).await?);
    if decouple {
        pool.decouple(&disk).await?;
    } else {
        pool.split(&disk).await?;
    }
    loop {
        let d = info(&pool, &disk).await?;
        if d.job.is_none() {
            return if lineage(&d) != before {
                // The external bdev is no longer claimed once nothing reads it.
                ctx.target.sync_esnap_claims().await;
                Ok(Value::Bool(true))
            } else {
                Err(RpcError::errno(
                    libc::ECANCELED,
                    format!("the {} of \"{disk}\" was cancelled", job_name(decouple)),
                ))
            };
        }
        crate::reactor::sleep(Duration::from_millis(20)).await;
    }
}

fn job_name(decouple: bool) -> &'static str {
    if decouple { "decouple" } else { "split" }
}

async fn info(pool: &Pool, disk: &str) -> Result<DiskInfo, RpcError> {
    pool.list()
        .await?
        .into_iter()
        .find(|d| d.name == disk)
        .ok_or_else(|| RpcError::no_such(format!("lvol \"{disk}\"")))
}

pub async fn bdev_lvol_inflate(ctx: Rc<Ctx>, p: LvolNameParams) -> RpcResult {
    split_and_wait(&ctx, &p.name, false).await
}

pub async fn bdev_lvol_decouple_parent(ctx: Rc<Ctx>, p: LvolNameParams) -> RpcResult {
    split_and_wait(&ctx, &p.name, true).await
}

pub async fn bdev_lvol_resize(ctx: Rc<Ctx>, p: ResizeParams) -> RpcResult {
    let bytes = size_bytes(p.size_in_mib, p.size)?;
    ctx.resolve_lvol(&p.name).await?;
    ctx.target.resize_disk(&p.name, bytes).await?;
    Ok(Value::Bool(true))
}

pub async fn bdev_lvol_set_read_only(ctx: Rc<Ctx>, p: LvolNameParams) -> RpcResult {
    let (pool, disk) = ctx.resolve_lvol(&p.name).await?;
    pool.set_read_only(&disk, true).await?;
    Ok(Value::Bool(true))
}

pub async fn bdev_lvol_delete(ctx: Rc<Ctx>, p: LvolNameParams) -> RpcResult {
    let (pool, _) = ctx.resolve_lvol(&p.name).await?;
    ctx.target.delete_disk(&p.name).await?;
    // Durable when answered, as SPDK's is; the commit also returns the disk's segments
    // to the free clusters the next bdev_lvol_get_lvstores reports.
    pool.commit().await?;
    Ok(Value::Bool(true))
}

/// `bdev_lvol_rename` and `bdev_lvol_rename_lvstore`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameParams {
    pub old_name: String,
    pub new_name: String,
}

/// A refused rename, with SPDK's code: -32602 (invalid params), the message ours.
fn refused(e: crate::target::TargetError) -> RpcError {
    let e = RpcError::from(e);
    if e.code == -libc::EEXIST || e.code == -libc::EINVAL {
        RpcError::invalid_params(e.message)
    } else {
        e
    }
}

/// `bdev_lvol_rename`: `old_name` is the lvol's alias, UUID or unambiguous name,
/// `new_name` its new name in the same lvstore. As SPDK: -ENODEV when `old_name` is no
/// lvol, -32602 when the rename is refused (the name is taken or invalid); renaming to
/// the same name succeeds. Exported disks may be renamed: their bdev (the UUID) stays.
pub async fn bdev_lvol_rename(ctx: Rc<Ctx>, p: RenameParams) -> RpcResult {
    if let Err(e) = ctx.resolve_lvol(&p.old_name).await {
        return Err(if e.code == -libc::EINVAL {
            RpcError::errno(libc::ENODEV, e.message)
        } else {
            e
        });
    }
    ctx.target
        .rename_disk(&p.old_name, &p.new_name)
        .await
        .map_err(refused)?;
    Ok(Value::Bool(true))
}

/// `bdev_lvol_rename_lvstore`: as SPDK, -ENOENT when no lvstore is called `old_name`,
/// -32602 when the rename is refused.
pub async fn bdev_lvol_rename_lvstore(ctx: Rc<Ctx>, p: RenameParams) -> RpcResult {
    if ctx.target.pool(&p.old_name).is_err() {
        return Err(RpcError::errno(
            libc::ENOENT,
            format!("Lvol store {} not found", p.old_name),
        ));
    }
    ctx.target
        .rename_pool(&p.old_name, &p.new_name)
        .await
        .map_err(refused)?;
    Ok(Value::Bool(true))
}

/// `tessera_lvol_revert`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertParams {
    /// The lvol to revert: alias, UUID or unambiguous name.
    pub name: String,
    /// The snapshot it takes the contents of, in the same lvstore and family.
    pub snapshot: String,
}

/// `tessera_lvol_revert`: reverts an lvol to a snapshot in place (its bdev, UUID and
/// exports stay; its contents and size become the snapshot's), committed before it
/// answers `true`. -ENODEV when either is no bdev, -EINVAL when `name` is a snapshot
/// or no lvol, `snapshot` no snapshot, of another lvstore or of another family,
/// -EBUSY when a split of the lvol, a clone of it or a quiesce is in the way.
pub async fn tessera_lvol_revert(ctx: Rc<Ctx>, p: RevertParams) -> RpcResult {
    let (pool, disk) = ctx.resolve_lvol(&p.name).await?;
    let (snap_pool, snap) = ctx.resolve_lvol(&p.snapshot).await?;
    if pool.uuid() != snap_pool.uuid() {
        return Err(RpcError::einval(format!(
            "snapshot: \"{}\" is in lvstore \"{}\", \"{}\" in \"{}\"",
            p.snapshot,
            snap_pool.name(),
            p.name,
            pool.name()
        )));
    }
    pool.revert_disk(&disk, &snap).await?;
    Ok(Value::Bool(true))
}

/// One pair of `tessera_snapshot_group`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMember {
    pub lvol_name: String,
    pub snapshot_name: String,
}

/// `tessera_snapshot_group`: snapshots every lvol at one point in time (they are
/// quiesced together; all in one pool).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotGroupParams {
    pub snapshots: Vec<GroupMember>,
    /// After this long the quiesce is cancelled, I/O resumes and nothing is snapshotted.
    #[serde(default = "default_quiesce_ms")]
    pub quiesce_timeout_ms: u64,
}

fn default_quiesce_ms() -> u64 {
    DEFAULT_QUIESCE_MS
}

pub async fn tessera_snapshot_group(ctx: Rc<Ctx>, p: SnapshotGroupParams) -> RpcResult {
    if p.snapshots.is_empty() {
        return Err(RpcError::invalid_params(
            "\"snapshots\": nothing to snapshot",
        ));
    }
    let mut pairs = Vec::new();
    for m in &p.snapshots {
        ctx.resolve_lvol(&m.lvol_name).await?;
        pairs.push((m.lvol_name.clone(), m.snapshot_name.clone()));
    }
    let snaps = ctx
        .target
        .snapshot(pairs, Duration::from_millis(p.quiesce_timeout_ms))
        .await?;
    let names: Vec<String> = snaps
        .into_iter()
        .map(|s| {
            let b: std::sync::Arc<dyn crate::bdev::Bdev> = s;
            b.name().to_string()
        })
        .collect();
    Ok(json!(names))
}

/// `tessera_quiesce`: holds new I/O to the lvols (of one pool) and drains what is in
/// flight; `tessera_activate` releases them, and so does the time limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuiesceParams {
    pub names: Vec<String>,
    #[serde(default = "default_quiesce_ms")]
    pub timeout_ms: u64,
}

pub async fn tessera_quiesce(ctx: Rc<Ctx>, p: QuiesceParams) -> RpcResult {
    let mut disks = Vec::new();
    let mut pool: Option<Pool> = None;
    for n in &p.names {
        let (pl, d) = ctx.resolve_lvol(n).await?;
        if let Some(first) = &pool
            && first.uuid() != pl.uuid()
        {
            return Err(RpcError::einval(format!(
                "\"{n}\" is in lvstore \"{}\", not \"{}\": quiesce one lvstore at a time",
                pl.name(),
                first.name()
            )));
        }
        pool = Some(pl);
        disks.push(d);
    }
    let Some(pool) = pool else {
        return Err(RpcError::invalid_params("\"names\": nothing to quiesce"));
    };
    let qid = pool
        .quiesce(disks, Duration::from_millis(p.timeout_ms))
        .await?;
    let id = ctx.next_quiesce.get();
    ctx.next_quiesce.set(id + 1);
    ctx.quiesces.borrow_mut().insert(id, (pool, qid));
    Ok(json!({"quiesce_id": id}))
}

/// `tessera_activate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateParams {
    pub quiesce_id: u64,
}

pub async fn tessera_activate(ctx: Rc<Ctx>, p: ActivateParams) -> RpcResult {
    let entry = ctx.quiesces.borrow_mut().remove(&p.quiesce_id);
    let Some((pool, qid)) = entry else {
        return Err(RpcError::no_such(format!("quiesce {}", p.quiesce_id)));
    };
    pool.activate(qid).await?;
    Ok(Value::Bool(true))
}

/// `tessera_split_start`: starts a split (or, with `decouple`, a decouple) in the
/// background and answers at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitStartParams {
    pub name: String,
    #[serde(default)]
    pub decouple: bool,
}

pub async fn tessera_split_start(ctx: Rc<Ctx>, p: SplitStartParams) -> RpcResult {
    let (pool, disk) = ctx.resolve_lvol(&p.name).await?;
    if p.decouple {
        pool.decouple(&disk).await?;
    } else {
        pool.split(&disk).await?;
    }
    Ok(Value::Bool(true))
}

/// `tessera_split_progress`: running splits and decouples (of one lvol, or all).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitProgressParams {
    #[serde(default)]
    pub name: Option<String>,
}

pub async fn tessera_split_progress(ctx: Rc<Ctx>, p: SplitProgressParams) -> RpcResult {
    let (pools, only) = match &p.name {
        Some(n) => {
            let (pool, disk) = ctx.resolve_lvol(n).await?;
            (vec![pool], Some(disk))
        }
        None => (ctx.target.pools(), None),
    };
    let mut out = Vec::new();
    for pool in pools {
        for d in pool.list().await? {
            if only.as_ref().is_some_and(|o| *o != d.name) {
                continue;
            }
            if let Some((kind, done, total)) = &d.job {
                out.push(json!({
                    "name": d.name,
                    "lvs_name": pool.name(),
                    "kind": kind,
                    "done_clusters": done,
                    "total_clusters": total,
                    "percent": if *total == 0 { 100.0 } else { *done as f64 * 100.0 / *total as f64 },
                }));
            }
        }
    }
    // A split that ended in the background may have let an external snapshot go.
    ctx.target.sync_esnap_claims().await;
    Ok(Value::Array(out))
}

pub async fn tessera_split_cancel(ctx: Rc<Ctx>, p: LvolNameParams) -> RpcResult {
    let (pool, disk) = ctx.resolve_lvol(&p.name).await?;
    pool.cancel_split(&disk).await?;
    Ok(Value::Bool(true))
}

pub async fn tessera_set_cow_policy(ctx: Rc<Ctx>, p: CowPolicyParams) -> RpcResult {
    let (pool, disk) = ctx.resolve_lvol(&p.name).await?;
    pool.set_cow_policy(&disk, p.cow_policy).await?;
    Ok(Value::Bool(true))
}

pub async fn tessera_set_read_only(ctx: Rc<Ctx>, p: ReadOnlyParams) -> RpcResult {
    let (pool, disk) = ctx.resolve_lvol(&p.name).await?;
    pool.set_read_only(&disk, p.read_only).await?;
    Ok(Value::Bool(true))
}
