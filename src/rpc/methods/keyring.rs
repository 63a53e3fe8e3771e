//! The keyring's methods, as SPDK's `keyring_file` module has them:
//! `keyring_file_add_key` {`name`, `path`}, `keyring_file_remove_key` {`name`} and
//! `keyring_get_keys`. A key file must be an absolute path, mode 0600 (no access for
//! group or others) and owned by the target's user; refusals answer SPDK's `-errno`
//! (`-EPERM`, `-EEXIST`, `-ENOKEY` for an unknown key, `-ENOENT` for a missing file). No
//! reply, log line or saved configuration holds a key's material.

use super::{Ctx, NoParams, RpcResult};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::rc::Rc;

/// `keyring_file_add_key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddKeyParams {
    pub name: String,
    pub path: PathBuf,
}

pub async fn keyring_file_add_key(ctx: Rc<Ctx>, p: AddKeyParams) -> RpcResult {
    ctx.target.keyring().add_file_key(&p.name, &p.path)?;
    Ok(Value::Bool(true))
}

/// `keyring_file_remove_key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveKeyParams {
    pub name: String,
}

pub async fn keyring_file_remove_key(ctx: Rc<Ctx>, p: RemoveKeyParams) -> RpcResult {
    ctx.target.keyring().remove_key(&p.name)?;
    Ok(Value::Bool(true))
}

/// `keyring_get_keys`: SPDK's fields (a key in use by nothing has one reference, the
/// keyring's own).
pub async fn keyring_get_keys(ctx: Rc<Ctx>, _p: NoParams) -> RpcResult {
    Ok(Value::Array(
        ctx.target
            .keyring()
            .list()
            .into_iter()
            .map(|k| {
                json!({
                    "name": k.name,
                    "module": "keyring_file",
                    "removed": false,
                    "probed": false,
                    "refcnt": 1,
                    "path": k.path,
                })
            })
            .collect(),
    ))
}
