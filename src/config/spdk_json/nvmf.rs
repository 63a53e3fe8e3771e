//! The NVMe-oF target calls of a configuration (`lib/nvmf/nvmf_rpc.c`): SPDK's
//! parameters of `nvmf_create_transport`, `nvmf_create_subsystem`,
//! `nvmf_subsystem_add_listener`, `nvmf_subsystem_add_ns`, `nvmf_subsystem_add_host` and
//! `nvmf_subsystem_allow_any_host`, checked and turned into the target's parameters.
//! The JSON-RPC methods of the same names (and their `remove` twins) decode the same
//! structs. TCP only; one target (`tgt_name` may only name SPDK's default, `nvmf_tgt`).

use super::params::{ParamError, unsupported};
use crate::frontend::nvmf::{CreateSubsystemParams, ListenAddressParams, TransportOptions};
use serde::Deserialize;

/// `nvmf_create_transport`. The TCP transport's options are tessera's; SPDK's
/// performance knobs that tessera has no use for (buffer pools, socket priority, RDMA
/// and vfio-user options) are accepted and ignored; features it lacks are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTransportParams {
    pub trtype: String,
    #[serde(default)]
    pub tgt_name: Option<String>,
    #[serde(default)]
    pub max_queue_depth: Option<u32>,
    /// Deprecated in SPDK: queue pairs including the admin queue.
    #[serde(default)]
    pub max_qpairs_per_ctrlr: Option<u32>,
    #[serde(default)]
    pub max_io_qpairs_per_ctrlr: Option<u32>,
    #[serde(default)]
    pub in_capsule_data_size: Option<u32>,
    #[serde(default)]
    pub max_io_size: Option<u32>,
    #[serde(default)]
    pub io_unit_size: Option<u32>,
    #[serde(default)]
    pub max_aq_depth: Option<u32>,
    #[serde(default)]
    pub c2h_success: Option<bool>,
    /// tessera's: connections per listen address.
    #[serde(default)]
    pub max_connections_per_listener: Option<u32>,
    /// tessera's: connections per source IP address.
    #[serde(default)]
    pub max_connections_per_host: Option<u32>,
    /// tessera's: the TLS handshake's time limit (ms).
    #[serde(default)]
    pub tls_handshake_timeout_ms: Option<u32>,
    #[serde(default)]
    pub dif_insert_or_strip: Option<bool>,
    #[serde(default)]
    pub zcopy: Option<bool>,
    #[serde(default)]
    pub num_shared_buffers: Option<u32>,
    #[serde(default)]
    pub buf_cache_size: Option<u32>,
    #[serde(default)]
    pub iobuf_small_cache_size: Option<u32>,
    #[serde(default)]
    pub iobuf_large_cache_size: Option<u32>,
    #[serde(default)]
    pub sock_priority: Option<u32>,
    #[serde(default)]
    pub abort_timeout_sec: Option<u32>,
    #[serde(default)]
    pub ack_timeout: Option<u32>,
    #[serde(default)]
    pub control_msg_num: Option<u32>,
    #[serde(default)]
    pub acceptor_poll_rate: Option<u32>,
    #[serde(default)]
    pub kas: Option<u32>,
    #[serde(default)]
    pub min_kato: Option<u32>,
    #[serde(default)]
    pub disable_command_passthru: Option<bool>,
    #[serde(default)]
    pub masked_oncs: Option<Vec<String>>,
    #[serde(default)]
    pub masked_fuses: Option<Vec<String>>,
    // RDMA and vfio-user options: meaningless for TCP, as in SPDK.
    #[serde(default)]
    pub num_cqe: Option<u32>,
    #[serde(default)]
    pub max_srq_depth: Option<u32>,
    #[serde(default)]
    pub no_srq: Option<bool>,
    #[serde(default)]
    pub acceptor_backlog: Option<u32>,
    #[serde(default)]
    pub no_wr_batching: Option<bool>,
    #[serde(default)]
    pub data_wr_pool_size: Option<u32>,
    #[serde(default)]
    pub disable_mappable_bar0: Option<bool>,
    #[serde(default)]
    pub disable_adaptive_irq: Option<bool>,
    #[serde(default)]
    pub disable_shadow_doorbells: Option<bool>,
}

impl CreateTransportParams {
    /// The transport options.
    pub fn to_options(&self) -> Result<TransportOptions, ParamError> {
        check_tgt_name(&self.tgt_name)?;
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(ParamError::unsupported(format!(
                "\"trtype\": `{}` is not supported (only TCP)",
                self.trtype
            )));
        }
        unsupported("dif_insert_or_strip", &self.dif_insert_or_strip)?;
        if self.masked_oncs.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(ParamError::unsupported(
                "\"masked_oncs\" is not supported by tessera",
            ));
        }
        if self.masked_fuses.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(ParamError::unsupported(
                "\"masked_fuses\" is not supported by tessera",
            ));
        }
        let mut o = TransportOptions::default();
        let set = |field: &mut u32, v: Option<u32>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut o.max_queue_depth, self.max_queue_depth);
        set(
            &mut o.max_io_qpairs_per_ctrlr,
            self.max_qpairs_per_ctrlr.map(|n| n.saturating_sub(1)),
        );
        set(&mut o.max_io_qpairs_per_ctrlr, self.max_io_qpairs_per_ctrlr);
        set(&mut o.in_capsule_data_size, self.in_capsule_data_size);
        set(&mut o.max_io_size, self.max_io_size);
        set(&mut o.io_unit_size, self.io_unit_size);
        set(&mut o.max_aq_depth, self.max_aq_depth);
        set(
            &mut o.max_connections_per_listener,
            self.max_connections_per_listener,
        );
        set(
            &mut o.max_connections_per_host,
            self.max_connections_per_host,
        );
        set(
            &mut o.tls_handshake_timeout_ms,
            self.tls_handshake_timeout_ms,
        );
        if let Some(c) = self.c2h_success {
            o.c2h_success = c;
        }
        o.validate().map_err(|e| {
            let (field, why) = e.split_once(": ").unwrap_or(("", e.as_str()));
            ParamError::invalid(format!("\"{field}\": {why}"))
        })?;
        Ok(o)
    }
}

/// `nvmf_create_subsystem`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubsystemRpcParams {
    pub nqn: String,
    #[serde(default)]
    pub tgt_name: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub model_number: Option<String>,
    #[serde(default)]
    pub allow_any_host: bool,
    #[serde(default)]
    pub max_namespaces: Option<u32>,
    #[serde(default)]
    pub ana_reporting: Option<bool>,
    #[serde(default)]
    pub min_cntlid: Option<u16>,
    #[serde(default)]
    pub max_cntlid: Option<u16>,
    #[serde(default)]
    pub dmrsl: Option<u32>,
    #[serde(default)]
    pub wzsl: Option<u32>,
    #[serde(default)]
    pub passthrough: Option<bool>,
    #[serde(default)]
    pub enable_nssr: Option<bool>,
    #[serde(default)]
    pub admin_label: Option<String>,
}

impl CreateSubsystemRpcParams {
    /// The target API's parameters.
    pub fn to_params(&self) -> Result<CreateSubsystemParams, ParamError> {
        check_tgt_name(&self.tgt_name)?;
        unsupported("ana_reporting", &self.ana_reporting)?;
        unsupported("passthrough", &self.passthrough)?;
        unsupported("enable_nssr", &self.enable_nssr)?;
        unsupported("admin_label", &self.admin_label)?;
        let (lo, hi) = (
            crate::frontend::nvmf::subsystem::MIN_CNTLID,
            crate::frontend::nvmf::subsystem::MAX_CNTLID,
        );
        if self.min_cntlid.is_some_and(|c| c != lo) || self.max_cntlid.is_some_and(|c| c != hi) {
            return Err(ParamError::unsupported(format!(
                "\"min_cntlid\"/\"max_cntlid\": tessera's controller IDs are {lo}-{hi}"
            )));
        }
        Ok(CreateSubsystemParams {
            nqn: self.nqn.clone(),
            serial_number: self.serial_number.clone(),
            model_number: self.model_number.clone(),
            allow_any_host: self.allow_any_host,
            max_namespaces: self.max_namespaces,
        })
    }
}

/// `listen_address`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenAddress {
    pub trtype: String,
    #[serde(default)]
    pub adrfam: Option<String>,
    pub traddr: String,
    #[serde(default)]
    pub trsvcid: Option<String>,
}

impl ListenAddress {
    fn to_params(&self) -> Result<ListenAddressParams, ParamError> {
        let trsvcid = self
            .trsvcid
            .clone()
            .ok_or_else(|| ParamError::invalid("missing parameter \"listen_address.trsvcid\""))?;
        Ok(ListenAddressParams {
            trtype: self.trtype.clone(),
            adrfam: self.adrfam.clone(),
            traddr: self.traddr.clone(),
            trsvcid,
        })
    }
}

/// `nvmf_subsystem_add_listener` / `nvmf_subsystem_remove_listener`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerParams {
    pub nqn: String,
    pub listen_address: ListenAddress,
    #[serde(default)]
    pub tgt_name: Option<String>,
    #[serde(default)]
    pub secure_channel: Option<bool>,
    /// Secure channel concatenation (tessera's): DH-HMAC-CHAP over plain TCP generates
    /// the TLS PSK the host reconnects with; required with `secure_channel`.
    #[serde(default)]
    pub secure_concat: Option<bool>,
    #[serde(default)]
    pub ana_state: Option<String>,
    #[serde(default)]
    pub sock_impl: Option<String>,
    #[serde(default)]
    pub numa_id: Option<i32>,
    /// The listener's own connection limit (tessera's).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// The listener's own limit of connections from one address (tessera's).
    #[serde(default)]
    pub max_connections_per_host: Option<u32>,
}

impl ListenerParams {
    /// The listener's own connection limits (tessera's parameters), checked.
    pub fn limits(&self) -> Result<crate::frontend::nvmf::ListenerLimits, ParamError> {
        let l = crate::frontend::nvmf::ListenerLimits {
            max_connections: self.max_connections,
            max_connections_per_host: self.max_connections_per_host,
        };
        l.check()
            .map_err(|(field, why)| ParamError::invalid(format!("\"{field}\": {why}")))?;
        Ok(l)
    }

    /// The address, checked.
    pub fn to_params(&self) -> Result<ListenAddressParams, ParamError> {
        check_tgt_name(&self.tgt_name)?;
        if let Some(i) = &self.sock_impl
            && i != "ssl"
            && (self.secure_channel == Some(true) || self.secure_concat == Some(true))
        {
            return Err(ParamError::invalid(format!(
                "\"sock_impl\": `{i}`: a secure channel (or concatenation) takes the `ssl` socket implementation"
            )));
        }
        if let Some(s) = &self.ana_state
            && s != "optimized"
        {
            return Err(ParamError::unsupported(format!(
                "\"ana_state\": `{s}` is not supported (no ANA reporting)"
            )));
        }
        self.listen_address.to_params()
    }
}

/// `namespace` of `nvmf_subsystem_add_ns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// Bdev name, `lvs/lvol` alias or UUID.
    pub bdev_name: String,
    #[serde(default)]
    pub nsid: Option<u32>,
    #[serde(default)]
    pub uuid: Option<uuid::Uuid>,
    #[serde(default)]
    pub nguid: Option<String>,
    #[serde(default)]
    pub eui64: Option<String>,
    #[serde(default)]
    pub ptpl_file: Option<String>,
    #[serde(default)]
    pub anagrpid: Option<u32>,
    #[serde(default)]
    pub no_auto_visible: Option<bool>,
    #[serde(default)]
    pub hide_metadata: Option<bool>,
}

/// `nvmf_subsystem_add_ns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNsParams {
    pub nqn: String,
    pub namespace: NamespaceSpec,
    #[serde(default)]
    pub tgt_name: Option<String>,
}

impl AddNsParams {
    /// Checks what tessera cannot do.
    pub fn check(&self) -> Result<(), ParamError> {
        check_tgt_name(&self.tgt_name)?;
        let ns = &self.namespace;
        unsupported("namespace.nguid", &ns.nguid)?;
        unsupported("namespace.eui64", &ns.eui64)?;
        unsupported("namespace.ptpl_file", &ns.ptpl_file)?;
        unsupported("namespace.no_auto_visible", &ns.no_auto_visible)?;
        unsupported("namespace.hide_metadata", &ns.hide_metadata)?;
        if ns.anagrpid.is_some_and(|g| g > 1) {
            return Err(ParamError::unsupported(
                "\"namespace.anagrpid\": no ANA groups in tessera",
            ));
        }
        if ns.nsid == Some(0) {
            return Err(ParamError::invalid(
                "\"namespace.nsid\": 0 is not a namespace ID (omit it to pick one)",
            ));
        }
        Ok(())
    }
}

/// `nvmf_subsystem_add_host` / `nvmf_subsystem_remove_host`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostParams {
    pub nqn: String,
    pub host: String,
    #[serde(default)]
    pub tgt_name: Option<String>,
    #[serde(default)]
    pub psk: Option<String>,
    #[serde(default)]
    pub dhchap_key: Option<String>,
    #[serde(default)]
    pub dhchap_ctrlr_key: Option<String>,
    /// `nvmf_subsystem_remove_host`: how long to wait for I/O (accepted; removal takes
    /// effect for new connections).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl HostParams {
    /// Checks what tessera cannot do.
    pub fn check(&self) -> Result<(), ParamError> {
        check_tgt_name(&self.tgt_name)?;
        if self.dhchap_ctrlr_key.is_some() && self.dhchap_key.is_none() {
            return Err(ParamError::Invalid(
                "dhchap_ctrlr_key: a DH-HMAC-CHAP controller key requires dhchap_key".into(),
            ));
        }
        Ok(())
    }
}

/// `nvmf_subsystem_allow_any_host`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowAnyHostParams {
    pub nqn: String,
    pub allow_any_host: bool,
    #[serde(default)]
    pub tgt_name: Option<String>,
}

/// Accepts `tgt_name` only for the one NVMe-oF target there is (SPDK's default name).
pub(crate) fn check_tgt_name(tgt_name: &Option<String>) -> Result<(), ParamError> {
    match tgt_name.as_deref() {
        None | Some("nvmf_tgt") => Ok(()),
        Some(other) => Err(ParamError::NoSuch(format!(
            "NVMe-oF target \"{other}\" (tessera has one target, \"nvmf_tgt\")"
        ))),
    }
}
