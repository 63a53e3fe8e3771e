//! The pool and disk calls of a configuration, under SPDK's lvol names
//! (`module/bdev/lvol/vbdev_lvol_rpc.c`): the parameters of `bdev_lvol_create_lvstore`,
//! `bdev_lvol_create`, `bdev_lvol_snapshot`, `bdev_lvol_clone`, `bdev_lvol_resize`,
//! `bdev_lvol_set_read_only` and tessera's `tessera_set_cow_policy` and
//! `tessera_set_read_only`, and the configuration each one makes. An lvstore is a pool
//! (its cluster size the pool's segment size), an lvol a virtual disk. The JSON-RPC
//! methods of the same names decode the same structs.

use super::params::ParamError;
use crate::config::{DiskConfig, PoolConfig, Size};
use crate::vdisk::CowPolicy;
use serde::Deserialize;

fn check_clear_method(m: &Option<String>, allowed: &[&str]) -> Result<(), ParamError> {
    match m {
        Some(m) if !allowed.iter().any(|a| a.eq_ignore_ascii_case(m)) => {
            Err(ParamError::unsupported(format!(
                "\"clear_method\": `{m}` is not one of {}",
                allowed.join(", ")
            )))
        }
        _ => Ok(()),
    }
}

/// `bdev_lvol_create_lvstore`. `clear_method` is accepted and has nothing to do: a new
/// pool maps nothing, and a segment is zeroed (or copied) before it is first read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLvstoreParams {
    pub bdev_name: String,
    pub lvs_name: String,
    /// Segment size in bytes (a power of two from 64 KiB to 64 MiB; default 1 MiB).
    #[serde(default)]
    pub cluster_sz: Option<u64>,
    #[serde(default)]
    pub clear_method: Option<String>,
    #[serde(default)]
    pub num_md_pages_per_cluster_ratio: Option<u32>,
    #[serde(default)]
    pub md_page_size: Option<u32>,
}

impl CreateLvstoreParams {
    /// The pool to create (`bdev_name` as given).
    pub fn to_config(&self) -> Result<PoolConfig, ParamError> {
        check_clear_method(&self.clear_method, &["none", "unmap", "write_zeroes"])?;
        if let Some(s) = self.md_page_size
            && s != 4096
        {
            return Err(ParamError::unsupported(format!(
                "\"md_page_size\": tessera's metadata pages are 4096 bytes, not {s}"
            )));
        }
        Ok(PoolConfig {
            name: self.lvs_name.clone(),
            bdevs: vec![self.bdev_name.clone()],
            metadata_bdev: None,
            segment_size: Size(self.cluster_sz.unwrap_or(1 << 20)),
            metadata_size: None,
            cow_policy: CowPolicy::Redirect,
            controller_core: None,
        })
    }
}

/// `bdev_lvol_create`. Sizes are `size_in_mib`, or the legacy `size` in bytes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLvolParams {
    pub lvol_name: String,
    #[serde(default)]
    pub size_in_mib: Option<u64>,
    #[serde(default)]
    pub size: Option<u64>,
    /// Allocate on first write (else: allocate and zero every segment now).
    #[serde(default)]
    pub thin_provision: bool,
    /// The lvstore's UUID.
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub lvs_name: Option<String>,
    #[serde(default)]
    pub clear_method: Option<String>,
    #[serde(default)]
    pub lvol_priority_class: Option<i32>,
    /// tessera's: the lvol's own UUID ([`lvol_uuid`]).
    #[serde(default)]
    pub lvol_uuid: Option<String>,
}

/// tessera's `lvol_uuid` parameter of `bdev_lvol_create` and `bdev_lvol_clone_bdev`
/// (SPDK's `uuid` of `bdev_lvol_create` names the lvstore): the UUID the new lvol
/// takes, a new one when absent. A saved configuration keeps each lvol's, so that what
/// names it by UUID after a restore — an external snapshot's clone in a pool on disk
/// reading it — finds it again.
fn lvol_uuid(u: &Option<String>) -> Result<Option<uuid::Uuid>, ParamError> {
    u.as_deref()
        .map(|u| {
            uuid::Uuid::parse_str(u).map_err(|e| {
                ParamError::invalid(format!("\"lvol_uuid\": `{u}` is not a UUID ({e})"))
            })
        })
        .transpose()
}

/// Bytes from `size_in_mib` or the legacy `size`.
pub(crate) fn size_bytes(size_in_mib: Option<u64>, size: Option<u64>) -> Result<u64, ParamError> {
    match (size_in_mib, size) {
        (Some(_), Some(_)) => Err(ParamError::invalid(
            "give either \"size_in_mib\" or \"size\", not both",
        )),
        (Some(m), None) => m
            .checked_mul(1 << 20)
            .ok_or_else(|| ParamError::invalid("\"size_in_mib\": too large")),
        (None, Some(b)) => Ok(b),
        (None, None) => Err(ParamError::invalid("missing parameter \"size_in_mib\"")),
    }
}

impl CreateLvolParams {
    /// The disk to create in pool `pool`.
    pub fn to_config(&self, pool: &str) -> Result<DiskConfig, ParamError> {
        check_clear_method(
            &self.clear_method,
            &["default", "none", "unmap", "write_zeroes"],
        )?;
        Ok(DiskConfig {
            name: self.lvol_name.clone(),
            pool: pool.to_string(),
            size: Size(size_bytes(self.size_in_mib, self.size)?),
            thin: self.thin_provision,
            uuid: lvol_uuid(&self.lvol_uuid)?,
            read_only: false,
            cow_policy: None,
            external_snapshot: None,
        })
    }
}

/// `bdev_lvol_clone_bdev`: a clone of a bdev outside the lvstore (an external
/// snapshot), of that bdev's size.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneBdevParams {
    pub bdev: String,
    pub lvs_name: String,
    pub clone_name: String,
    /// tessera's: the clone's own UUID ([`lvol_uuid`]).
    #[serde(default)]
    pub lvol_uuid: Option<String>,
}

impl CloneBdevParams {
    /// The UUID asked for, if any.
    pub fn uuid(&self) -> Result<Option<uuid::Uuid>, ParamError> {
        lvol_uuid(&self.lvol_uuid)
    }

    /// The disk to create: the bdev's size until a `bdev_lvol_resize` says otherwise.
    pub fn to_config(&self) -> Result<DiskConfig, ParamError> {
        Ok(DiskConfig {
            name: self.clone_name.clone(),
            pool: self.lvs_name.clone(),
            size: Size(0),
            thin: true,
            uuid: self.uuid()?,
            read_only: false,
            cow_policy: None,
            external_snapshot: Some(self.bdev.clone()),
        })
    }
}

/// `bdev_lvol_snapshot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotParams {
    pub lvol_name: String,
    pub snapshot_name: String,
    /// tessera's: the snapshot's UUID (a received snapshot keeps its source's); a new
    /// one when absent.
    #[serde(default)]
    pub uuid: Option<String>,
}

impl SnapshotParams {
    /// The UUID asked for, if any.
    pub fn uuid(&self) -> Result<Option<uuid::Uuid>, ParamError> {
        self.uuid
            .as_deref()
            .map(|u| {
                uuid::Uuid::parse_str(u).map_err(|e| {
                    ParamError::invalid(format!("\"uuid\": `{u}` is not a UUID ({e})"))
                })
            })
            .transpose()
    }
}

/// `bdev_lvol_clone`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneParams {
    pub snapshot_name: String,
    pub clone_name: String,
}

/// `{name}` of an lvol.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LvolNameParams {
    pub name: String,
}

/// `bdev_lvol_resize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeParams {
    pub name: String,
    #[serde(default)]
    pub size_in_mib: Option<u64>,
    #[serde(default)]
    pub size: Option<u64>,
}

/// `tessera_set_cow_policy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CowPolicyParams {
    pub name: String,
    /// `redirect` or `copy-out`.
    pub cow_policy: CowPolicy,
}

/// `tessera_set_read_only`: sets or clears the flag (SPDK's method only sets it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOnlyParams {
    pub name: String,
    pub read_only: bool,
}
