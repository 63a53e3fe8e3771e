//! The NBD server. These names are tessera's own: SPDK's `nbd_start_disk`,
//! `nbd_stop_disk` and `nbd_get_disks` attach bdevs to the kernel's `/dev/nbdX`,
//! whereas tessera serves the NBD protocol over TCP to any client (qemu, nbdcopy, the
//! kernel's `nbd-client`). The parameters of `nbd_server_start` and `nbd_start_export`
//! are in [`crate::config::spdk_json::nbd`].

use super::{Ctx, NoParams, RpcResult};
use crate::config::spdk_json::nbd::{ServerStartParams, StartExportParams};
use crate::rpc::error::RpcError;
use serde::Deserialize;
use serde_json::{Value, json};
use std::rc::Rc;

pub async fn nbd_server_start(ctx: Rc<Ctx>, p: ServerStartParams) -> RpcResult {
    let addr = ctx.target.nbd_start(&p.listen, p.limits(), p.tls())?;
    Ok(json!({"listen": addr.to_string()}))
}

pub async fn nbd_server_stop(ctx: Rc<Ctx>, _p: NoParams) -> RpcResult {
    ctx.target.nbd_stop()?;
    Ok(Value::Bool(true))
}

pub async fn nbd_start_export(ctx: Rc<Ctx>, p: StartExportParams) -> RpcResult {
    let bdev = ctx.resolve_bdev(&p.bdev_name)?;
    // Without a name, the export is called as the bdev is: a disk by its name in its
    // pool (its bdev's name is its UUID), anything else by its name.
    let name = match p.name {
        Some(n) => n,
        None => {
            let b = ctx.target.bdevs().get(&bdev)?;
            b.short_names().into_iter().next().unwrap_or(bdev.clone())
        }
    };
    let info = ctx
        .target
        .nbd_add_export(&name, &bdev, p.read_only, &p.description)?;
    Ok(serde_json::to_value(info).unwrap_or(Value::Null))
}

/// `nbd_stop_export`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopExportParams {
    pub name: String,
}

pub async fn nbd_stop_export(ctx: Rc<Ctx>, p: StopExportParams) -> RpcResult {
    ctx.target.nbd_remove_export(&p.name)?;
    Ok(Value::Bool(true))
}

pub async fn nbd_get_exports(ctx: Rc<Ctx>, _p: NoParams) -> RpcResult {
    Ok(serde_json::to_value(ctx.target.nbd_exports()).unwrap_or(Value::Null))
}

pub async fn nbd_get_stats(ctx: Rc<Ctx>, _p: NoParams) -> RpcResult {
    let stats = ctx.target.nbd_stats().ok_or_else(|| {
        RpcError::errno(
            libc::ENODEV,
            "the NBD server is not running (nbd_server_start)",
        )
    })?;
    let mut v = serde_json::to_value(stats).unwrap_or(Value::Null);
    if let Some(a) = ctx.target.nbd_addr() {
        v["listen"] = json!(a.to_string());
    }
    Ok(v)
}
