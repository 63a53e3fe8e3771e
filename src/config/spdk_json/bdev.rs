//! The bdev calls of a configuration: SPDK's parameters of `bdev_malloc_create`,
//! `bdev_null_create`, `bdev_uring_create`, `bdev_aio_create`, `bdev_error_create` and
//! `bdev_nvme_attach_controller` (`module/bdev/*/..._rpc.c`), and the configuration
//! each one makes. The JSON-RPC methods of the same names decode the same structs.
//! SPDK parameters tessera has no use for are accepted when they ask for nothing
//! (`md_size: 0`, `readonly: false`) and refused otherwise, so a call never silently
//! means less than it says.

use super::params::{ParamError, unsupported};
use crate::bdev::nvme::AttachParams;
use crate::config::{BdevConfig, Size};
use serde::Deserialize;
use std::path::PathBuf;

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

fn ram_size(num_blocks: u64, block_size: u32) -> Result<Size, ParamError> {
    num_blocks
        .checked_mul(block_size as u64)
        .map(Size)
        .ok_or_else(|| ParamError::invalid("\"num_blocks\" × \"block_size\" overflows"))
}

impl MallocCreateParams {
    /// The bdev to create (`name` filled in by the caller when absent).
    pub fn to_config(&self, name: String) -> Result<BdevConfig, ParamError> {
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
    pub fn to_config(&self) -> Result<BdevConfig, ParamError> {
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
    pub fn to_config(&self) -> Result<BdevConfig, ParamError> {
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
    pub fn to_config(&self) -> Result<BdevConfig, ParamError> {
        if self.uuid.is_some() {
            return Err(ParamError::unsupported(
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
    /// tessera's: the PSK identity version offered (0 or 1).
    #[serde(default)]
    pub psk_identity_version: Option<u8>,
    /// tessera's: secure channel concatenation (the TLS PSK generated by DH-HMAC-CHAP).
    #[serde(default)]
    pub secure_concat: Option<bool>,
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
    pub fn to_attach(&self) -> Result<AttachParams, ParamError> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(ParamError::unsupported(format!(
                "\"trtype\": `{}` is not supported (only TCP)",
                self.trtype
            )));
        }
        let subnqn = self
            .subnqn
            .clone()
            .ok_or_else(|| ParamError::invalid("missing parameter \"subnqn\""))?;
        unsupported("hostaddr", &self.hostaddr)?;
        unsupported("hostsvcid", &self.hostsvcid)?;
        unsupported("prchk_reftag", &self.prchk_reftag)?;
        unsupported("prchk_guard", &self.prchk_guard)?;
        unsupported("allow_unrecognized_csi", &self.allow_unrecognized_csi)?;
        unsupported("disable_sq_flow_control", &self.disable_sq_flow_control)?;
        if let Some(m) = &self.multipath
            && m != "disable"
        {
            return Err(ParamError::unsupported(format!(
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
        if self.dhchap_ctrlr_key.is_some() && self.dhchap_key.is_none() {
            return Err(ParamError::invalid(
                "\"dhchap_ctrlr_key\" needs \"dhchap_key\" (bidirectional authentication is on top of the host's)",
            ));
        }
        a.dhchap_key = self.dhchap_key.clone();
        a.dhchap_ctrlr_key = self.dhchap_ctrlr_key.clone();
        a.psk = self.psk.clone();
        a.psk_identity_version = self.psk_identity_version;
        a.secure_concat = self.secure_concat.unwrap_or(false);
        Ok(a)
    }
}

/// `bdev_set_qos_limit` (`lib/bdev/bdev_rpc.c`): a limit not given stays as it is, 0
/// removes it. SPDK takes `u64::MAX` for "not given" (its decoder's default); so does
/// tessera.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetQosLimitParams {
    pub name: String,
    #[serde(default)]
    pub rw_ios_per_sec: Option<u64>,
    #[serde(default)]
    pub rw_mbytes_per_sec: Option<u64>,
    #[serde(default)]
    pub r_mbytes_per_sec: Option<u64>,
    #[serde(default)]
    pub w_mbytes_per_sec: Option<u64>,
}

impl SetQosLimitParams {
    /// The change asked for.
    pub fn to_update(&self) -> crate::bdev::qos::QosUpdate {
        let given = |v: Option<u64>| v.filter(|&v| v != u64::MAX);
        crate::bdev::qos::QosUpdate([
            given(self.rw_ios_per_sec),
            given(self.rw_mbytes_per_sec),
            given(self.r_mbytes_per_sec),
            given(self.w_mbytes_per_sec),
        ])
    }
}
