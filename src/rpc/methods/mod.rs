//! The methods: one table ([`METHODS`]) maps each name to its parameter struct and its
//! handler. Handlers run on core 0 as tasks (their futures need not be `Send`); they
//! await the [`Target`]'s methods and never block the reactor.
//!
//! Parameters are decoded by [`crate::config::spdk_json::params`]. The methods a
//! configuration file may also hold (those that create or set up an object) take the
//! parameter structs of [`crate::config::spdk_json`], which turn them into
//! configuration; the handlers here resolve names and call the target.
//!
//! - [`app`]: `spdk_get_version`, `rpc_get_methods`, `framework_*`, `save_config`,
//!   `load_config`, `tessera_save_config`.
//! - [`bdev`]: `bdev_get_bdevs`, the base bdevs (malloc, null, uring/aio, error) and the
//!   NVMe/TCP initiator (`bdev_nvme_*`).
//! - [`lvol`]: pools and virtual disks under SPDK's lvol names, and tessera's own
//!   (consistency groups, quiesce, split progress, copy-on-write policy).
//! - [`backup`]: allocated and changed block ranges of lvols (backup, replication).
//! - [`copy`]: shallow copies and changed-block copies of lvols to any bdev, in the
//!   background (`bdev_lvol_start_shallow_copy`, `tessera_lvol_start_diff_copy`).
//! - [`nvmf`]: the NVMe-oF target.
//! - [`nbd`]: the NBD server (tessera's own names: SPDK's `nbd_*` drive the kernel).
//! - [`stats`]: I/O statistics and latency histograms (`bdev_get_iostat`, …).
//! - [`keyring`]: the keys TLS and authentication name (`keyring_file_*`,
//!   `keyring_get_keys`).

pub mod app;
pub mod backup;
pub mod bdev;
pub mod copy;
pub mod keyring;
pub mod lvol;
pub mod nbd;
pub mod nvmf;
pub mod stats;

use super::error::RpcError;
use crate::config::spdk_json::params;
use crate::target::Target;
use crate::vdisk::Pool;
use serde::Deserialize;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// What the handlers share, on core 0.
pub struct Ctx {
    pub(crate) target: Target,
    /// Quiesces started by `tessera_quiesce`: RPC id → (pool, the pool's id).
    quiesces: RefCell<BTreeMap<u64, (Pool, u64)>>,
    next_quiesce: Cell<u64>,
    /// Shallow and changed-block copies (`copy`).
    pub(crate) copies: copy::Copies,
}

impl Ctx {
    /// The context of a server for `target`.
    pub fn new(target: Target) -> Rc<Ctx> {
        Rc::new(Ctx {
            target,
            quiesces: RefCell::new(BTreeMap::new()),
            next_quiesce: Cell::new(1),
            copies: copy::Copies::default(),
        })
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The unique name of a bdev given by name, `lvs_name/lvol_name` alias, UUID or
    /// unambiguous lvol name (the registry's resolver).
    pub(crate) fn resolve_bdev(&self, name: &str) -> Result<String, RpcError> {
        Ok(self.target.bdevs().resolve(name)?)
    }

    /// A logical volume given by alias, UUID or unambiguous name: its pool and its name
    /// within the pool.
    pub(crate) async fn resolve_lvol(&self, name: &str) -> Result<(Pool, String), RpcError> {
        match self.target.bdevs().get(name) {
            Err(crate::bdev::BdevError::NotFound(_)) => {
                return Err(RpcError::no_such(format!("lvol \"{name}\"")));
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        match self.target.disk(name).await {
            Ok((p, d)) => Ok((p, d.disk_name())),
            Err(_) => Err(RpcError::einval(format!(
                "bdev \"{name}\" is not a logical volume"
            ))),
        }
    }

    /// An lvstore (pool) given by exactly one of its UUID or its name, as SPDK's
    /// `vbdev_get_lvol_store_by_uuid_xor_name`.
    pub(crate) fn resolve_lvs(
        &self,
        uuid: Option<&str>,
        lvs_name: Option<&str>,
        uuid_field: &str,
    ) -> Result<Pool, RpcError> {
        match (uuid, lvs_name) {
            (Some(_), Some(_)) => Err(RpcError::invalid_params(format!(
                "give either \"{uuid_field}\" or \"lvs_name\", not both"
            ))),
            (None, None) => Err(RpcError::invalid_params(format!(
                "missing parameter \"lvs_name\" (or \"{uuid_field}\")"
            ))),
            (None, Some(name)) => self
                .target
                .pool(name)
                .map_err(|_| RpcError::no_such(format!("lvstore \"{name}\""))),
            (Some(u), None) => self
                .target
                .pools()
                .into_iter()
                .find(|p| p.uuid().to_string().eq_ignore_ascii_case(u))
                .ok_or_else(|| RpcError::no_such(format!("lvstore with UUID \"{u}\""))),
        }
    }
}

/// Parameters of a method that takes none.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// A handler's result.
pub type RpcResult = Result<Value, RpcError>;

/// A boxed handler future (for the methods that call other methods).
pub type BoxedCall = Pin<Box<dyn Future<Output = RpcResult>>>;

fn check<P, F, Fut>(_handler: F, params: Option<Value>) -> Result<(), RpcError>
where
    P: serde::de::DeserializeOwned,
    F: Fn(Rc<Ctx>, P) -> Fut,
{
    params::decode::<P>(params)
        .map(|_| ())
        .map_err(RpcError::from)
}

macro_rules! methods {
    ($( $name:literal => $module:ident :: $func:ident, )*) => {
        /// Every method, SPDK's and tessera's own.
        pub const METHODS: &[&str] = &[$($name),*];

        /// Decodes `params` for `method` without running it (`None`: no such method).
        /// The request parser's fuzz target drives this.
        pub fn check_params(method: &str, params: Option<Value>) -> Option<Result<(), RpcError>> {
            match method {
                $( $name => Some(check($module::$func, params)), )*
                _ => None,
            }
        }

        /// Runs `method`.
        pub async fn call(ctx: Rc<Ctx>, method: &str, params: Option<Value>) -> RpcResult {
            match method {
                $( $name => $module::$func(ctx, params::decode(params)?).await, )*
                _ => Err(RpcError::method_not_found(method)),
            }
        }
    };
}

methods! {
    "spdk_get_version" => app::spdk_get_version,
    "rpc_get_methods" => app::rpc_get_methods,
    "framework_get_reactors" => app::framework_get_reactors,
    "framework_get_subsystems" => app::framework_get_subsystems,
    "framework_get_config" => app::framework_get_config,
    "save_config" => app::save_config,
    "load_config" => app::load_config,
    "keyring_file_add_key" => keyring::keyring_file_add_key,
    "keyring_file_remove_key" => keyring::keyring_file_remove_key,
    "keyring_get_keys" => keyring::keyring_get_keys,
    "tessera_save_config" => app::tessera_save_config,
    "bdev_get_bdevs" => bdev::bdev_get_bdevs,
    "bdev_wait_for_examine" => bdev::bdev_wait_for_examine,
    "bdev_get_iostat" => stats::bdev_get_iostat,
    "bdev_reset_iostat" => stats::bdev_reset_iostat,
    "bdev_enable_histogram" => stats::bdev_enable_histogram,
    "bdev_get_histogram" => stats::bdev_get_histogram,
    "bdev_set_qos_limit" => bdev::bdev_set_qos_limit,
    "bdev_malloc_create" => bdev::bdev_malloc_create,
    "bdev_malloc_delete" => bdev::bdev_malloc_delete,
    "bdev_null_create" => bdev::bdev_null_create,
    "bdev_null_delete" => bdev::bdev_null_delete,
    "bdev_null_resize" => bdev::bdev_null_resize,
    "bdev_uring_create" => bdev::bdev_uring_create,
    "bdev_uring_delete" => bdev::bdev_uring_delete,
    "bdev_uring_rescan" => bdev::bdev_uring_rescan,
    "bdev_aio_create" => bdev::bdev_aio_create,
    "bdev_aio_delete" => bdev::bdev_aio_delete,
    "bdev_aio_rescan" => bdev::bdev_aio_rescan,
    "bdev_error_create" => bdev::bdev_error_create,
    "bdev_error_delete" => bdev::bdev_error_delete,
    "bdev_nvme_attach_controller" => bdev::bdev_nvme_attach_controller,
    "bdev_nvme_detach_controller" => bdev::bdev_nvme_detach_controller,
    "bdev_nvme_set_keys" => bdev::bdev_nvme_set_keys,
    "bdev_nvme_get_controllers" => bdev::bdev_nvme_get_controllers,
    "bdev_lvol_create_lvstore" => lvol::bdev_lvol_create_lvstore,
    "bdev_lvol_get_lvstores" => lvol::bdev_lvol_get_lvstores,
    "bdev_lvol_delete_lvstore" => lvol::bdev_lvol_delete_lvstore,
    "bdev_lvol_grow_lvstore" => lvol::bdev_lvol_grow_lvstore,
    "bdev_lvol_create" => lvol::bdev_lvol_create,
    "bdev_lvol_get_lvols" => lvol::bdev_lvol_get_lvols,
    "bdev_lvol_snapshot" => lvol::bdev_lvol_snapshot,
    "bdev_lvol_clone" => lvol::bdev_lvol_clone,
    "bdev_lvol_clone_bdev" => lvol::bdev_lvol_clone_bdev,
    "bdev_lvol_set_parent" => lvol::bdev_lvol_set_parent,
    "bdev_lvol_set_parent_bdev" => lvol::bdev_lvol_set_parent_bdev,
    "bdev_lvol_inflate" => lvol::bdev_lvol_inflate,
    "bdev_lvol_decouple_parent" => lvol::bdev_lvol_decouple_parent,
    "bdev_lvol_resize" => lvol::bdev_lvol_resize,
    "bdev_lvol_set_read_only" => lvol::bdev_lvol_set_read_only,
    "bdev_lvol_delete" => lvol::bdev_lvol_delete,
    "bdev_lvol_rename" => lvol::bdev_lvol_rename,
    "bdev_lvol_rename_lvstore" => lvol::bdev_lvol_rename_lvstore,
    "tessera_pool_create" => lvol::tessera_pool_create,
    "tessera_snapshot_group" => lvol::tessera_snapshot_group,
    "tessera_quiesce" => lvol::tessera_quiesce,
    "tessera_activate" => lvol::tessera_activate,
    "tessera_split_start" => lvol::tessera_split_start,
    "tessera_split_progress" => lvol::tessera_split_progress,
    "tessera_split_cancel" => lvol::tessera_split_cancel,
    "tessera_set_cow_policy" => lvol::tessera_set_cow_policy,
    "tessera_set_read_only" => lvol::tessera_set_read_only,
    "tessera_lvol_revert" => lvol::tessera_lvol_revert,
    "tessera_lvol_get_changed_ranges" => backup::tessera_lvol_get_changed_ranges,
    "tessera_lvol_get_allocated_ranges" => backup::tessera_lvol_get_allocated_ranges,
    "bdev_lvol_start_shallow_copy" => copy::bdev_lvol_start_shallow_copy,
    "bdev_lvol_check_shallow_copy" => copy::bdev_lvol_check_shallow_copy,
    "tessera_lvol_start_diff_copy" => copy::tessera_lvol_start_diff_copy,
    "tessera_lvol_set_copy_limit" => copy::tessera_lvol_set_copy_limit,
    "tessera_lvol_cancel_copy" => copy::tessera_lvol_cancel_copy,
    "nvmf_create_transport" => nvmf::nvmf_create_transport,
    "nvmf_get_transports" => nvmf::nvmf_get_transports,
    "nvmf_create_subsystem" => nvmf::nvmf_create_subsystem,
    "nvmf_delete_subsystem" => nvmf::nvmf_delete_subsystem,
    "nvmf_subsystem_add_listener" => nvmf::nvmf_subsystem_add_listener,
    "nvmf_subsystem_remove_listener" => nvmf::nvmf_subsystem_remove_listener,
    "nvmf_subsystem_add_ns" => nvmf::nvmf_subsystem_add_ns,
    "nvmf_subsystem_remove_ns" => nvmf::nvmf_subsystem_remove_ns,
    "nvmf_subsystem_add_host" => nvmf::nvmf_subsystem_add_host,
    "nvmf_subsystem_remove_host" => nvmf::nvmf_subsystem_remove_host,
    "nvmf_subsystem_set_keys" => nvmf::nvmf_subsystem_set_keys,
    "nvmf_set_config" => nvmf::nvmf_set_config,
    "nvmf_subsystem_allow_any_host" => nvmf::nvmf_subsystem_allow_any_host,
    "nvmf_get_subsystems" => nvmf::nvmf_get_subsystems,
    "nvmf_subsystem_get_controllers" => nvmf::nvmf_subsystem_get_controllers,
    "nvmf_subsystem_get_qpairs" => nvmf::nvmf_subsystem_get_qpairs,
    "nbd_server_start" => nbd::nbd_server_start,
    "nbd_server_stop" => nbd::nbd_server_stop,
    "nbd_start_export" => nbd::nbd_start_export,
    "nbd_stop_export" => nbd::nbd_stop_export,
    "nbd_get_exports" => nbd::nbd_get_exports,
    "nbd_get_stats" => nbd::nbd_get_stats,
}

/// [`call`], boxed: for handlers that call other methods (`load_config`).
pub fn call_boxed(ctx: Rc<Ctx>, method: String, params: Option<Value>) -> BoxedCall {
    Box::pin(async move { call(ctx, &method, params).await })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for m in METHODS {
            assert!(seen.insert(*m), "{m} listed twice");
            // Every method decodes its parameters (or names what is missing).
            let r = check_params(m, None).expect("listed methods are known");
            if let Err(e) = r {
                assert_eq!(e.code, super::super::error::INVALID_PARAMS, "{m}: {e}");
                assert!(e.message.contains("parameter"), "{m}: {e}");
            }
            // ... and refuses unknown ones.
            let e = check_params(m, Some(serde_json::json!({"no_such_param_xyz": 1})))
                .unwrap()
                .unwrap_err();
            assert!(
                e.message.contains("no_such_param_xyz") || e.message.contains("missing"),
                "{m}: {e}"
            );
        }
        assert!(check_params("nope", None).is_none());
    }
}
