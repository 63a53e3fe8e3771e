//! `bdev_get_bdevs`, the base bdevs and the NVMe/TCP initiator, with SPDK's parameter
//! names (`module/bdev/*/..._rpc.c`). The parameters of the methods that create a bdev
//! or attach a controller are those of a configuration file's calls
//! ([`crate::config::spdk_json::bdev`]).

use super::{Ctx, NoParams, RpcResult};
use crate::bdev::{Bdev, BdevError, IoKind};
use crate::config::BdevConfig;
use crate::config::spdk_json::bdev::{
    AioCreateParams, AttachControllerParams, ErrorCreateParams, MallocCreateParams,
    NullCreateParams, SetQosLimitParams, UringCreateParams, first_free,
};
use crate::rpc::error::RpcError;
use serde::Deserialize;
use serde_json::{Value, json};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// A bdev as `bdev_get_bdevs` reports it (SPDK's shape).
pub(crate) fn bdev_json(ctx: &Ctx, b: &Arc<dyn Bdev>) -> Value {
    let claims = ctx.target.bdevs().claims(b.name());
    let aliases = b.aliases();
    let io = |k: IoKind| b.supports(k);
    let mut driver = b.driver_specific();
    if driver.is_null() {
        driver = json!({});
    }
    let mut v = json!({
        "name": b.name(),
        "aliases": aliases,
        "product_name": b.product_name(),
        "block_size": b.block_size(),
        "num_blocks": b.num_blocks(),
        "uuid": b.uuid().to_string(),
        "assigned_rate_limits": b.qos_limits().to_json(),
        "claimed": !claims.is_empty(),
        "zoned": false,
        "write_cache": b.write_cache(),
        "read_only": b.read_only(),
        "supported_io_types": {
            "read": io(IoKind::Read),
            "write": io(IoKind::Write) && !b.read_only(),
            "unmap": io(IoKind::Unmap),
            "write_zeroes": io(IoKind::WriteZeroes),
            "flush": io(IoKind::Flush),
            "reset": false,
            "compare": false,
            "compare_and_write": false,
            "abort": false,
            "nvme_admin": false,
            "nvme_io": false,
        },
        "driver_specific": driver,
    });
    if !claims.is_empty() {
        v["claim_type"] = json!("exclusive_write");
        v["claimed_by"] = json!(claims);
    }
    v
}

/// `bdev_get_bdevs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetBdevsParams {
    /// A bdev name, `lvs/lvol` alias or UUID.
    #[serde(default)]
    pub name: Option<String>,
    /// With `name`: milliseconds to wait for the bdev to appear.
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// The fields of an lvol's `driver_specific.lvol` that SPDK's
/// `vbdev_lvol_dump_info_json` derives from its blob's lineage and clusters:
/// `snapshot`, `clone` and `esnap_clone` (as `bdev_lvol_get_lvols`' flags:
/// [`super::lvol::is_snapshot`] and its neighbours), `base_snapshot` (the parent
/// snapshot), `clones` (a snapshot's children), `num_allocated_clusters` and
/// `external_snapshot_name` (the esnap ID, the bdev's UUID). Looked up in the pools once for the whole answer.
async fn add_lvol_lineage(ctx: &Ctx, list: &mut [Value]) {
    if !list
        .iter()
        .any(|b| b["driver_specific"]["lvol"].is_object())
    {
        return;
    }
    let mut disks = std::collections::HashMap::new();
    for pool in ctx.target.pools() {
        if let Ok(l) = pool.list().await {
            for d in l {
                disks.insert(d.uuid.to_string(), d);
            }
        }
    }
    for b in list.iter_mut() {
        let Some(uuid) = b["uuid"].as_str().map(str::to_string) else {
            continue;
        };
        let Some(d) = disks.get(&uuid) else {
            continue;
        };
        let lvol = &mut b["driver_specific"]["lvol"];
        if !lvol.is_object() {
            continue;
        }
        let snapshot = super::lvol::is_snapshot(d);
        lvol["snapshot"] = json!(snapshot);
        lvol["clone"] = json!(super::lvol::is_clone(d));
        lvol["num_allocated_clusters"] = json!(d.allocated_segments);
        if let Some(p) = &d.parent {
            lvol["base_snapshot"] = json!(p);
        }
        // Every lvol whose parent the snapshot is, snapshots too (SPDK's
        // `spdk_blob_get_clones`); no field when there is none, as SPDK.
        if snapshot && !d.children.is_empty() {
            lvol["clones"] = json!(d.children);
        }
        let esnap = super::lvol::is_esnap_clone(d);
        lvol["esnap_clone"] = json!(esnap);
        if let (true, Some(x)) = (esnap, &d.external) {
            lvol["external_snapshot_name"] = json!(x.uuid.to_string());
        }
    }
}

pub async fn bdev_get_bdevs(ctx: Rc<Ctx>, p: GetBdevsParams) -> RpcResult {
    let Some(name) = p.name else {
        let mut list: Vec<Value> = ctx
            .target
            .bdevs()
            .list()
            .iter()
            .map(|b| bdev_json(&ctx, b))
            .collect();
        add_lvol_lineage(&ctx, &mut list).await;
        return Ok(Value::Array(list));
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(p.timeout.unwrap_or(0));
    loop {
        match ctx.resolve_bdev(&name) {
            Ok(n) => {
                let b = ctx.target.bdevs().get(&n)?;
                let mut list = vec![bdev_json(&ctx, &b)];
                add_lvol_lineage(&ctx, &mut list).await;
                return Ok(Value::Array(list));
            }
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => crate::reactor::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// `bdev_set_qos_limit`: as SPDK v25.09 answers it (`lib/bdev/bdev_rpc.c`, and
/// `spdk_tgt` here): -19 "No such device" for a bdev that does not exist, -22 "No rate
/// limits specified" when no limit is given, `true` once the limits are in force on
/// every core (an I/O limit that is not a multiple of 1000 is rounded up, a MiB/s limit
/// too large lowered, each with a warning in the log, as SPDK does), -32602 "Failed to
/// configure rate limit: Resource temporarily unavailable" while another change of the
/// same bdev's limits is under way.
pub async fn bdev_set_qos_limit(ctx: Rc<Ctx>, p: SetQosLimitParams) -> RpcResult {
    if let Err(BdevError::NotFound(_)) = ctx.target.bdevs().get(&p.name) {
        return Err(RpcError::no_such(format!("bdev \"{}\"", p.name)));
    }
    let update = p.to_update();
    if update.is_empty() {
        return Err(RpcError::einval("No rate limits specified"));
    }
    ctx.target.set_qos(&p.name, update).await?;
    Ok(Value::Bool(true))
}

pub async fn bdev_wait_for_examine(_ctx: Rc<Ctx>, _p: NoParams) -> RpcResult {
    // Examine runs inside bdev creation: nothing is ever pending.
    Ok(Value::Bool(true))
}

async fn create(ctx: &Ctx, cfg: BdevConfig) -> RpcResult {
    let b = ctx.target.create_bdev(&cfg).await?;
    Ok(Value::String(b.name().to_string()))
}

pub async fn bdev_malloc_create(ctx: Rc<Ctx>, p: MallocCreateParams) -> RpcResult {
    let name = match &p.name {
        Some(n) => n.clone(),
        None => first_free(|n| ctx.target.bdevs().contains(n), "Malloc"),
    };
    create(&ctx, p.to_config(name)?).await
}

pub async fn bdev_null_create(ctx: Rc<Ctx>, p: NullCreateParams) -> RpcResult {
    create(&ctx, p.to_config()?).await
}

/// `bdev_*_delete`, `bdev_*_rescan`: `{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    pub name: String,
}

/// Deletes base bdev `name` if `is_kind` accepts its configuration.
async fn delete_kind(
    ctx: &Ctx,
    name: &str,
    kind: &str,
    is_kind: impl Fn(&BdevConfig) -> bool,
) -> RpcResult {
    match ctx.target.base_bdev_config(name) {
        Some(c) if is_kind(&c) => {}
        _ => return Err(RpcError::no_such(format!("{kind} bdev \"{name}\""))),
    }
    ctx.target.delete_bdev(name).await?;
    Ok(Value::Bool(true))
}

pub async fn bdev_malloc_delete(ctx: Rc<Ctx>, p: DeleteParams) -> RpcResult {
    delete_kind(&ctx, &p.name, "malloc", |c| {
        matches!(c, BdevConfig::Malloc { .. })
    })
    .await
}

pub async fn bdev_null_delete(ctx: Rc<Ctx>, p: DeleteParams) -> RpcResult {
    delete_kind(&ctx, &p.name, "null", |c| {
        matches!(c, BdevConfig::Null { .. })
    })
    .await
}

/// `bdev_null_resize`: `{name, new_size}`, the new size in MiB (SPDK's parameters).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullResizeParams {
    pub name: String,
    pub new_size: u64,
}

pub async fn bdev_null_resize(ctx: Rc<Ctx>, p: NullResizeParams) -> RpcResult {
    ctx.target.resize_null_bdev(&p.name, p.new_size)?;
    Ok(Value::Bool(true))
}

/// `bdev_uring_rescan` and `bdev_aio_rescan`: `{name}`; the bdev takes the size its file
/// or device has now.
pub async fn bdev_uring_rescan(ctx: Rc<Ctx>, p: DeleteParams) -> RpcResult {
    ctx.target.rescan_bdev(&p.name)?;
    Ok(Value::Bool(true))
}

pub async fn bdev_aio_rescan(ctx: Rc<Ctx>, p: DeleteParams) -> RpcResult {
    ctx.target.rescan_bdev(&p.name)?;
    Ok(Value::Bool(true))
}

pub async fn bdev_uring_create(ctx: Rc<Ctx>, p: UringCreateParams) -> RpcResult {
    create(&ctx, p.to_config()).await
}

pub async fn bdev_aio_create(ctx: Rc<Ctx>, p: AioCreateParams) -> RpcResult {
    create(&ctx, p.to_config()?).await
}

fn is_uring(c: &BdevConfig) -> bool {
    matches!(c, BdevConfig::Uring { .. })
}

pub async fn bdev_uring_delete(ctx: Rc<Ctx>, p: DeleteParams) -> RpcResult {
    delete_kind(&ctx, &p.name, "uring", is_uring).await
}

pub async fn bdev_aio_delete(ctx: Rc<Ctx>, p: DeleteParams) -> RpcResult {
    delete_kind(&ctx, &p.name, "aio", is_uring).await
}

pub async fn bdev_error_create(ctx: Rc<Ctx>, p: ErrorCreateParams) -> RpcResult {
    let mut cfg = p.to_config()?;
    if let BdevConfig::Error { base, .. } = &mut cfg {
        *base = ctx.resolve_bdev(base)?;
    }
    create(&ctx, cfg).await
}

pub async fn bdev_error_delete(ctx: Rc<Ctx>, p: DeleteParams) -> RpcResult {
    delete_kind(&ctx, &p.name, "error", |c| {
        matches!(c, BdevConfig::Error { .. })
    })
    .await
}

pub async fn bdev_nvme_attach_controller(ctx: Rc<Ctx>, p: AttachControllerParams) -> RpcResult {
    let names = ctx.target.attach_nvme(p.to_attach()?).await?;
    Ok(json!(names))
}

/// `bdev_nvme_set_keys` (SPDK's): names of keyring keys; without `dhchap_key` the
/// controller's keys are cleared.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetKeysParams {
    pub name: String,
    #[serde(default)]
    pub dhchap_key: Option<String>,
    #[serde(default)]
    pub dhchap_ctrlr_key: Option<String>,
}

/// Changes an attached controller's DH-HMAC-CHAP keys and re-authenticates each of its
/// queue pairs without disconnecting; `true`, as SPDK answers.
pub async fn bdev_nvme_set_keys(ctx: Rc<Ctx>, p: SetKeysParams) -> RpcResult {
    ctx.target
        .set_nvme_keys(&p.name, p.dhchap_key, p.dhchap_ctrlr_key)
        .await?;
    Ok(Value::Bool(true))
}

/// `bdev_nvme_detach_controller`: the path filters are accepted (tessera keeps one path
/// per controller) and must match it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachControllerParams {
    pub name: String,
    #[serde(default)]
    pub trtype: Option<String>,
    #[serde(default)]
    pub traddr: Option<String>,
    #[serde(default)]
    pub adrfam: Option<String>,
    #[serde(default)]
    pub trsvcid: Option<String>,
    #[serde(default)]
    pub subnqn: Option<String>,
    #[serde(default)]
    pub hostaddr: Option<String>,
    #[serde(default)]
    pub hostsvcid: Option<String>,
}

pub async fn bdev_nvme_detach_controller(ctx: Rc<Ctx>, p: DetachControllerParams) -> RpcResult {
    let Some(a) = ctx
        .target
        .nvme_controllers()
        .into_iter()
        .find(|a| a.name == p.name)
    else {
        return Err(RpcError::no_such(format!("NVMe controller \"{}\"", p.name)));
    };
    let differs = |want: &Option<String>, have: &str| {
        want.as_deref()
            .is_some_and(|w| !w.eq_ignore_ascii_case(have))
    };
    if differs(&p.traddr, &a.traddr)
        || differs(&p.trsvcid, &a.trsvcid)
        || differs(&p.subnqn, &a.subnqn)
        || differs(&p.trtype, &a.trtype)
    {
        return Err(RpcError::no_such(format!(
            "a path of NVMe controller \"{}\" matching the given address",
            p.name
        )));
    }
    ctx.target.detach_nvme(&p.name).await?;
    Ok(Value::Bool(true))
}

/// `bdev_nvme_get_controllers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetControllersParams {
    #[serde(default)]
    pub name: Option<String>,
}

pub async fn bdev_nvme_get_controllers(ctx: Rc<Ctx>, p: GetControllersParams) -> RpcResult {
    let list: Vec<Value> = ctx
        .target
        .nvme_controllers()
        .into_iter()
        .filter(|a| p.name.as_deref().is_none_or(|n| n == a.name))
        .map(|a| {
            let bdevs = ctx.target.nvme_controller_bdevs(&a.name);
            json!({
                "name": a.name,
                "ctrlrs": [{
                    "state": "enabled",
                    "trid": {
                        "trtype": "TCP",
                        "adrfam": a.adrfam.clone().unwrap_or_else(|| "IPv4".into()),
                        "traddr": a.traddr,
                        "trsvcid": a.trsvcid,
                        "subnqn": a.subnqn,
                    },
                    "host": {"nqn": a.hostnqn},
                    "bdevs": bdevs,
                }]
            })
        })
        .collect();
    if let Some(n) = &p.name
        && list.is_empty()
    {
        return Err(RpcError::no_such(format!("NVMe controller \"{n}\"")));
    }
    Ok(Value::Array(list))
}
