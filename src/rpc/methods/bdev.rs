//! `bdev_get_bdevs`, the base bdevs and the NVMe/TCP initiator, with SPDK's parameter
//! names (`module/bdev/*/..._rpc.c`). SPDK parameters tessera has no use for are
//! accepted when they ask for nothing (`md_size: 0`, `readonly: false`) and refused
//! otherwise, so a request never silently means less than it says.

use super::{Ctx, NoParams, RpcResult, lvs_of};
use crate::bdev::{Bdev, IoKind};
use crate::config::spdk_json::params::unsupported;
use crate::config::{BdevConfig, Size};
use crate::frontend::nvmf::initiator::AttachParams;
use crate::rpc::error::RpcError;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// A bdev as `bdev_get_bdevs` reports it (SPDK's shape).
pub(crate) fn bdev_json(ctx: &Ctx, b: &Arc<dyn Bdev>) -> Value {
    let claims = ctx.target.bdevs().claims(b.name());
    let mut aliases = Vec::new();
    if let Some(lvs) = lvs_of(b) {
        aliases.push(format!("{lvs}/{}", b.name()));
    }
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
        "assigned_rate_limits": {
            "rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
            "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0
        },
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

pub async fn bdev_get_bdevs(ctx: Rc<Ctx>, p: GetBdevsParams) -> RpcResult {
    let Some(name) = p.name else {
        let list: Vec<Value> = ctx
            .target
            .bdevs()
            .list()
            .iter()
            .map(|b| bdev_json(&ctx, b))
            .collect();
        return Ok(Value::Array(list));
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(p.timeout.unwrap_or(0));
    loop {
        match ctx.resolve_bdev(&name) {
            Ok(n) => {
                let b = ctx.target.bdevs().get(&n)?;
                return Ok(json!([bdev_json(&ctx, &b)]));
            }
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => crate::reactor::sleep(Duration::from_millis(10)).await,
        }
    }
}

pub async fn bdev_wait_for_examine(_ctx: Rc<Ctx>, _p: NoParams) -> RpcResult {
    // Examine runs inside bdev creation: nothing is ever pending.
    Ok(Value::Bool(true))
}

/// `bdev_malloc_create` (`module/bdev/malloc/bdev_malloc_rpc.c`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MallocCreateParams {
    /// Default: the first free `MallocN`.
    #[serde(default)]
    pub name: Option<String>,
    pub num_blocks: u64,
    pub block_size: u32,
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
    #[serde(default)]
    pub physical_block_size: Option<u32>,
    #[serde(default)]
    pub optimal_io_boundary: Option<u32>,
    #[serde(default)]
    pub md_size: Option<u32>,
    #[serde(default)]
    pub md_interleave: Option<bool>,
    #[serde(default)]
    pub dif_type: Option<u32>,
    #[serde(default)]
    pub dif_is_head_of_md: Option<bool>,
    #[serde(default)]
    pub dif_pi_format: Option<u32>,
    #[serde(default)]
    pub numa_id: Option<i32>,
}

/// `bdev_null_create` (`module/bdev/null/bdev_null_rpc.c`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullCreateParams {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u32,
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
    #[serde(default)]
    pub physical_block_size: Option<u32>,
    #[serde(default)]
    pub md_size: Option<u32>,
    #[serde(default)]
    pub dif_type: Option<u32>,
    #[serde(default)]
    pub dif_is_head_of_md: Option<bool>,
    #[serde(default)]
    pub dif_pi_format: Option<u32>,
    #[serde(default)]
    pub preferred_write_alignment: Option<u32>,
    #[serde(default)]
    pub preferred_write_granularity: Option<u32>,
    #[serde(default)]
    pub optimal_write_size: Option<u32>,
    #[serde(default)]
    pub preferred_unmap_alignment: Option<u32>,
    #[serde(default)]
    pub preferred_unmap_granularity: Option<u32>,
}

fn ram_size(num_blocks: u64, block_size: u32) -> Result<Size, RpcError> {
    num_blocks
        .checked_mul(block_size as u64)
        .map(Size)
        .ok_or_else(|| RpcError::invalid_params("\"num_blocks\" × \"block_size\" overflows"))
}

impl MallocCreateParams {
    /// The bdev to create (`name` filled in by the caller when absent).
    pub fn to_config(&self, name: String) -> Result<BdevConfig, RpcError> {
        unsupported("md_size", &self.md_size)?;
        unsupported("md_interleave", &self.md_interleave)?;
        unsupported("dif_type", &self.dif_type)?;
        unsupported("dif_is_head_of_md", &self.dif_is_head_of_md)?;
        unsupported("dif_pi_format", &self.dif_pi_format)?;
        Ok(BdevConfig::Malloc {
            name,
            size: ram_size(self.num_blocks, self.block_size)?,
            block_size: self.block_size,
            uuid: self.uuid,
        })
    }
}

impl NullCreateParams {
    /// The bdev to create.
    pub fn to_config(&self) -> Result<BdevConfig, RpcError> {
        unsupported("md_size", &self.md_size)?;
        unsupported("dif_type", &self.dif_type)?;
        unsupported("dif_is_head_of_md", &self.dif_is_head_of_md)?;
        unsupported("dif_pi_format", &self.dif_pi_format)?;
        Ok(BdevConfig::Null {
            name: self.name.clone(),
            size: ram_size(self.num_blocks, self.block_size)?,
            block_size: self.block_size,
            uuid: self.uuid,
        })
    }
}

/// The first `{prefix}N` not taken by a bdev (SPDK's default malloc names).
pub(crate) fn first_free(taken: impl Fn(&str) -> bool, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| !taken(n))
        .expect("an unbounded range has a free name")
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

/// `bdev_*_delete`: `{name}`.
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

/// `bdev_uring_create` (`module/bdev/uring/bdev_uring_rpc.c`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UringCreateParams {
    pub filename: PathBuf,
    pub name: String,
    #[serde(default)]
    pub block_size: Option<u32>,
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
}

impl UringCreateParams {
    /// The bdev to create.
    pub fn to_config(&self) -> BdevConfig {
        BdevConfig::Uring {
            name: self.name.clone(),
            path: self.filename.clone(),
            size: None,
            block_size: self.block_size.filter(|&b| b != 0),
            uuid: self.uuid,
            options: Default::default(),
        }
    }
}

/// `bdev_aio_create` (`module/bdev/aio/bdev_aio_rpc.c`): served by the io_uring backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AioCreateParams {
    pub filename: PathBuf,
    pub name: String,
    #[serde(default)]
    pub block_size: Option<u32>,
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
    #[serde(default)]
    pub readonly: Option<bool>,
    /// Unmap and write-zeroes through fallocate: the io_uring backend always does that.
    #[serde(default)]
    pub fallocate: Option<bool>,
    #[serde(default)]
    pub nowait: Option<bool>,
}

impl AioCreateParams {
    /// The bdev to create.
    pub fn to_config(&self) -> Result<BdevConfig, RpcError> {
        unsupported("readonly", &self.readonly)?;
        unsupported("nowait", &self.nowait)?;
        Ok(UringCreateParams {
            filename: self.filename.clone(),
            name: self.name.clone(),
            block_size: self.block_size,
            uuid: self.uuid,
        }
        .to_config())
    }
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

/// `bdev_error_create` (`module/bdev/error/vbdev_error_rpc.c`): the error bdev over
/// `base_name` is called `EE_<base_name>`. `name` and `volatile_cache` are tessera's
/// own (the YAML's `error` bdev has both).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorCreateParams {
    pub base_name: String,
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub volatile_cache: bool,
}

impl ErrorCreateParams {
    /// The bdev to create.
    pub fn to_config(&self) -> Result<BdevConfig, RpcError> {
        if self.uuid.is_some() {
            return Err(RpcError::einval(
                "\"uuid\": error bdevs take no UUID in tessera",
            ));
        }
        Ok(BdevConfig::Error {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("EE_{}", self.base_name)),
            base: self.base_name.clone(),
            volatile_cache: self.volatile_cache,
        })
    }
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

/// `bdev_nvme_attach_controller` (`module/bdev/nvme/bdev_nvme_rpc.c`), NVMe/TCP only.
/// `keep_alive_timeout_ms` and `io_queue_depth` are tessera's own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachControllerParams {
    pub name: String,
    pub trtype: String,
    pub traddr: String,
    #[serde(default)]
    pub adrfam: Option<String>,
    #[serde(default)]
    pub trsvcid: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub subnqn: Option<String>,
    #[serde(default)]
    pub hostnqn: Option<String>,
    #[serde(default)]
    pub hostaddr: Option<String>,
    #[serde(default)]
    pub hostsvcid: Option<String>,
    #[serde(default)]
    pub prchk_reftag: Option<bool>,
    #[serde(default)]
    pub prchk_guard: Option<bool>,
    #[serde(default)]
    pub hdgst: bool,
    #[serde(default)]
    pub ddgst: bool,
    #[serde(default)]
    pub fabrics_connect_timeout_us: Option<u64>,
    #[serde(default)]
    pub multipath: Option<String>,
    #[serde(default)]
    pub num_io_queues: Option<u32>,
    #[serde(default)]
    pub ctrlr_loss_timeout_sec: Option<i64>,
    #[serde(default)]
    pub reconnect_delay_sec: Option<u32>,
    #[serde(default)]
    pub fast_io_fail_timeout_sec: Option<u32>,
    #[serde(default)]
    pub psk: Option<String>,
    #[serde(default)]
    pub max_bdevs: Option<u32>,
    #[serde(default)]
    pub dhchap_key: Option<String>,
    #[serde(default)]
    pub dhchap_ctrlr_key: Option<String>,
    #[serde(default)]
    pub allow_unrecognized_csi: Option<bool>,
    #[serde(default)]
    pub disable_sq_flow_control: Option<bool>,
    #[serde(default)]
    pub keep_alive_timeout_ms: Option<u32>,
    #[serde(default)]
    pub io_queue_depth: Option<u16>,
}

impl AttachControllerParams {
    /// The initiator's parameters.
    pub fn to_attach(&self) -> Result<AttachParams, RpcError> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(RpcError::einval(format!(
                "\"trtype\": `{}` is not supported (only TCP)",
                self.trtype
            )));
        }
        let subnqn = self
            .subnqn
            .clone()
            .ok_or_else(|| RpcError::invalid_params("missing parameter \"subnqn\""))?;
        unsupported("hostaddr", &self.hostaddr)?;
        unsupported("hostsvcid", &self.hostsvcid)?;
        unsupported("prchk_reftag", &self.prchk_reftag)?;
        unsupported("prchk_guard", &self.prchk_guard)?;
        unsupported("psk", &self.psk)?;
        unsupported("dhchap_key", &self.dhchap_key)?;
        unsupported("dhchap_ctrlr_key", &self.dhchap_ctrlr_key)?;
        unsupported("allow_unrecognized_csi", &self.allow_unrecognized_csi)?;
        unsupported("disable_sq_flow_control", &self.disable_sq_flow_control)?;
        if let Some(m) = &self.multipath
            && m != "disable"
        {
            return Err(RpcError::einval(format!(
                "\"multipath\": `{m}` is not supported (only \"disable\")"
            )));
        }
        let mut a = AttachParams::new(
            &self.name,
            &self.traddr,
            self.trsvcid.as_deref().unwrap_or("4420"),
            &subnqn,
        );
        a.adrfam = self.adrfam.clone();
        a.hostnqn = self.hostnqn.clone();
        a.hdgst = self.hdgst;
        a.ddgst = self.ddgst;
        a.keep_alive_timeout_ms = self.keep_alive_timeout_ms;
        a.io_queue_depth = self.io_queue_depth;
        Ok(a)
    }
}

pub async fn bdev_nvme_attach_controller(ctx: Rc<Ctx>, p: AttachControllerParams) -> RpcResult {
    let names = ctx.target.attach_nvme(p.to_attach()?).await?;
    Ok(json!(names))
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
