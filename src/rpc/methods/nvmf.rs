//! The NVMe-oF target with SPDK's method and parameter names (`lib/nvmf/nvmf_rpc.c`).
//! TCP only; one target (`tgt_name` may only name SPDK's default, `nvmf_tgt`). The
//! parameters of the methods a configuration file may also hold are in
//! [`crate::config::spdk_json::nvmf`].

use super::{Ctx, RpcResult};
use crate::config::spdk_json::nvmf::{
    AddNsParams, AllowAnyHostParams, CreateSubsystemRpcParams, CreateTransportParams, HostParams,
    ListenerParams, check_tgt_name,
};
use crate::rpc::error::RpcError;
use serde::Deserialize;
use serde_json::{Value, json};
use std::rc::Rc;

pub async fn nvmf_create_transport(ctx: Rc<Ctx>, p: CreateTransportParams) -> RpcResult {
    let opts = p.to_options()?;
    ctx.target.nvmf().nvmf_create_transport("TCP", opts)?;
    Ok(Value::Bool(true))
}

/// `nvmf_get_transports`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetTransportsParams {
    #[serde(default)]
    pub trtype: Option<String>,
    #[serde(default)]
    pub tgt_name: Option<String>,
}

pub async fn nvmf_get_transports(ctx: Rc<Ctx>, p: GetTransportsParams) -> RpcResult {
    check_tgt_name(&p.tgt_name)?;
    let opts = ctx.target.nvmf().transport_options();
    let wanted_tcp = p
        .trtype
        .as_deref()
        .is_none_or(|t| t.eq_ignore_ascii_case("tcp"));
    match opts {
        Some(o) if wanted_tcp => {
            let mut v = serde_json::to_value(&o).unwrap_or_else(|_| json!({}));
            v["trtype"] = json!("TCP");
            Ok(json!([v]))
        }
        _ if p.trtype.is_some() => Err(RpcError::no_such(format!(
            "transport \"{}\"",
            p.trtype.unwrap_or_default()
        ))),
        _ => Ok(json!([])),
    }
}

pub async fn nvmf_create_subsystem(ctx: Rc<Ctx>, p: CreateSubsystemRpcParams) -> RpcResult {
    ctx.target.nvmf().nvmf_create_subsystem(p.to_params()?)?;
    Ok(Value::Bool(true))
}

/// `{nqn, tgt_name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NqnParams {
    pub nqn: String,
    #[serde(default)]
    pub tgt_name: Option<String>,
}

pub async fn nvmf_delete_subsystem(ctx: Rc<Ctx>, p: NqnParams) -> RpcResult {
    check_tgt_name(&p.tgt_name)?;
    ctx.target.nvmf_delete_subsystem(&p.nqn)?;
    Ok(Value::Bool(true))
}

pub async fn nvmf_subsystem_add_listener(ctx: Rc<Ctx>, p: ListenerParams) -> RpcResult {
    let la = p.to_params()?;
    ctx.target.nvmf().nvmf_subsystem_add_listener_sec(
        &p.nqn,
        la,
        crate::frontend::nvmf::ListenerSecurity {
            secure_channel: p.secure_channel.unwrap_or(false),
            secure_concat: p.secure_concat.unwrap_or(false),
        },
        p.limits()?,
    )?;
    Ok(Value::Bool(true))
}

pub async fn nvmf_subsystem_remove_listener(ctx: Rc<Ctx>, p: ListenerParams) -> RpcResult {
    let la = p.to_params()?;
    ctx.target
        .nvmf()
        .nvmf_subsystem_remove_listener(&p.nqn, la)?;
    Ok(Value::Bool(true))
}

pub async fn nvmf_subsystem_add_ns(ctx: Rc<Ctx>, p: AddNsParams) -> RpcResult {
    p.check()?;
    let bdev = ctx.resolve_bdev(&p.namespace.bdev_name)?;
    let nsid = ctx.target.nvmf_add_ns(
        &p.nqn,
        crate::frontend::nvmf::NamespaceParams {
            bdev_name: bdev,
            nsid: p.namespace.nsid,
            uuid: p.namespace.uuid,
        },
    )?;
    Ok(json!(nsid))
}

/// `nvmf_subsystem_remove_ns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveNsParams {
    pub nqn: String,
    pub nsid: u32,
    #[serde(default)]
    pub tgt_name: Option<String>,
}

pub async fn nvmf_subsystem_remove_ns(ctx: Rc<Ctx>, p: RemoveNsParams) -> RpcResult {
    check_tgt_name(&p.tgt_name)?;
    ctx.target.nvmf_remove_ns(&p.nqn, p.nsid)?;
    Ok(Value::Bool(true))
}

pub async fn nvmf_subsystem_add_host(ctx: Rc<Ctx>, p: HostParams) -> RpcResult {
    p.check()?;
    ctx.target.nvmf().nvmf_subsystem_add_host_with_keys(
        &p.nqn,
        &p.host,
        crate::frontend::nvmf::subsystem::HostKeys {
            dhchap_key: p.dhchap_key,
            dhchap_ctrlr_key: p.dhchap_ctrlr_key,
            psk: p.psk,
        },
    )?;
    Ok(Value::Bool(true))
}

/// `nvmf_subsystem_set_keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetKeysParams {
    pub nqn: String,
    pub host: String,
    #[serde(default)]
    pub tgt_name: Option<String>,
    #[serde(default)]
    pub dhchap_key: Option<String>,
    #[serde(default)]
    pub dhchap_ctrlr_key: Option<String>,
    /// tessera's: a new TLS PSK for the host (SPDK v25.09 has no way to change it but
    /// removing the host, which disconnects it, and adding it again).
    #[serde(default)]
    pub psk: Option<String>,
}

pub async fn nvmf_subsystem_set_keys(ctx: Rc<Ctx>, p: SetKeysParams) -> RpcResult {
    check_tgt_name(&p.tgt_name)?;
    ctx.target.nvmf().nvmf_subsystem_set_host_keys(
        &p.nqn,
        &p.host,
        p.dhchap_key,
        p.dhchap_ctrlr_key,
        p.psk,
    )?;
    Ok(Value::Bool(true))
}

/// `nvmf_set_config`: of SPDK's parameters, tessera acts on `dhchap_digests` and
/// `dhchap_dhgroups` and accepts the others it has no use for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfigParams {
    #[serde(default)]
    pub dhchap_digests: Option<Vec<String>>,
    #[serde(default)]
    pub dhchap_dhgroups: Option<Vec<String>>,
    #[serde(default)]
    pub acceptor_poll_rate: Option<u64>,
    #[serde(default)]
    pub conn_sched: Option<String>,
    #[serde(default)]
    pub passthru_identify_ctrlr: Option<bool>,
    #[serde(default)]
    pub poll_groups_mask: Option<String>,
    #[serde(default)]
    pub discovery_filter: Option<String>,
    #[serde(default)]
    pub admin_cmd_passthru: Option<Value>,
}

pub async fn nvmf_set_config(ctx: Rc<Ctx>, p: SetConfigParams) -> RpcResult {
    ctx.target
        .nvmf()
        .set_dhchap_allowed(p.dhchap_digests.as_deref(), p.dhchap_dhgroups.as_deref())?;
    Ok(Value::Bool(true))
}

pub async fn nvmf_subsystem_remove_host(ctx: Rc<Ctx>, p: HostParams) -> RpcResult {
    p.check()?;
    ctx.target
        .nvmf()
        .nvmf_subsystem_remove_host(&p.nqn, &p.host)?;
    Ok(Value::Bool(true))
}

pub async fn nvmf_subsystem_allow_any_host(ctx: Rc<Ctx>, p: AllowAnyHostParams) -> RpcResult {
    check_tgt_name(&p.tgt_name)?;
    ctx.target
        .nvmf()
        .nvmf_subsystem_allow_any_host(&p.nqn, p.allow_any_host)?;
    Ok(Value::Bool(true))
}

/// `nvmf_get_subsystems`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetSubsystemsParams {
    #[serde(default)]
    pub nqn: Option<String>,
    #[serde(default)]
    pub tgt_name: Option<String>,
}

pub async fn nvmf_get_subsystems(ctx: Rc<Ctx>, p: GetSubsystemsParams) -> RpcResult {
    check_tgt_name(&p.tgt_name)?;
    let all = ctx.target.nvmf().nvmf_get_subsystems();
    let Some(nqn) = p.nqn else {
        return Ok(all);
    };
    let one: Vec<Value> = all
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s.get("nqn").and_then(Value::as_str) == Some(nqn.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if one.is_empty() {
        return Err(RpcError::no_such(format!("subsystem \"{nqn}\"")));
    }
    Ok(Value::Array(one))
}

pub async fn nvmf_subsystem_get_qpairs(ctx: Rc<Ctx>, p: NqnParams) -> RpcResult {
    check_tgt_name(&p.tgt_name)?;
    Ok(ctx.target.nvmf().nvmf_subsystem_get_qpairs(&p.nqn)?)
}

pub async fn nvmf_subsystem_get_controllers(ctx: Rc<Ctx>, p: NqnParams) -> RpcResult {
    check_tgt_name(&p.tgt_name)?;
    Ok(ctx.target.nvmf().nvmf_subsystem_get_controllers(&p.nqn)?)
}
