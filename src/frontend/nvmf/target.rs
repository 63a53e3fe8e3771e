//! [`NvmfTarget`]: the control API of the NVMe/TCP target. Its functions mirror SPDK's
//! JSON-RPCs (`nvmf_create_transport`, `nvmf_create_subsystem`, …) and take their
//! parameter names, so the RPC layer maps one onto the other directly. Everything here is
//! control plane: it may be called from any thread (not only reactors) and takes locks.

use super::config::{
    ListenerLimits, NamespaceConfig, NvmfConfig, SubsystemConfig, TransportOptions,
};
use super::listener::{self, ListenerHandle};
use super::subsystem::{HostKeys, ListenAddress, Subsystem, SubsystemKind, check_nqn};
use crate::bdev::BdevRegistry;
use crate::keyring::Keyring;
use crate::nvme::auth::{DhGroup, HashId};
use crate::nvme::pages::{DiscoveryEntry, disc};
use crate::nvme::spec::DISCOVERY_NQN;
use crate::reactor::Cores;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// Errors of the control API; each names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
    #[error("transport {0} does not exist")]
    NoTransport(String),
    #[error("transport {0} already exists")]
    TransportExists(String),
    #[error("transport type `{0}` is not supported (only TCP)")]
    UnsupportedTransport(String),
    #[error("invalid parameter {param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },
    #[error("subsystem {0} does not exist")]
    NoSubsystem(String),
    #[error("subsystem {0} already exists")]
    SubsystemExists(String),
    #[error("subsystem {nqn}: {reason}")]
    Namespace { nqn: String, reason: String },
    #[error("bdev: {0}")]
    Bdev(crate::bdev::BdevError),
    #[error("listener {addr}: {cause}")]
    Listen { addr: String, cause: std::io::Error },
    #[error("listener {0} is not a listener of this subsystem")]
    NoListener(String),
    #[error("the discovery subsystem cannot be changed that way")]
    Discovery,
}

// Not `#[from]`: the message holds the cause, and a source would print it twice in a
// chain of causes.
impl From<crate::bdev::BdevError> for NvmfError {
    fn from(e: crate::bdev::BdevError) -> NvmfError {
        NvmfError::Bdev(e)
    }
}

fn invalid(param: &'static str, reason: impl Into<String>) -> NvmfError {
    NvmfError::InvalidParam {
        param,
        reason: reason.into(),
    }
}

/// `listen_address` of `nvmf_subsystem_add_listener`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenAddressParams {
    #[serde(default = "default_trtype")]
    pub trtype: String,
    #[serde(default)]
    pub adrfam: Option<String>,
    pub traddr: String,
    pub trsvcid: String,
}

fn default_trtype() -> String {
    "TCP".into()
}

/// `namespace` of `nvmf_subsystem_add_ns`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamespaceParams {
    pub bdev_name: String,
    #[serde(default)]
    pub nsid: Option<u32>,
    #[serde(default)]
    pub uuid: Option<Uuid>,
}

/// Parameters of `nvmf_create_subsystem`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateSubsystemParams {
    pub nqn: String,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub model_number: Option<String>,
    #[serde(default)]
    pub allow_any_host: bool,
    #[serde(default)]
    pub max_namespaces: Option<u32>,
}

/// How a listener secures its connections (`nvmf_subsystem_add_listener`'s
/// `secure_channel`, SPDK's, and `secure_concat`, tessera's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerSecurity {
    /// TLS 1.3 with a PSK is required before ICReq.
    pub secure_channel: bool,
    /// Secure channel concatenation: plain TCP for a DH-HMAC-CHAP exchange that
    /// generates a TLS PSK, then TLS keyed by it.
    pub secure_concat: bool,
}

/// What the queue pairs need of the target.
pub(crate) struct TargetShared {
    pub cores: Cores,
    pub bdevs: BdevRegistry,
    pub opts: Mutex<Option<Arc<TransportOptions>>>,
    pub subsystems: Mutex<BTreeMap<String, Arc<Subsystem>>>,
    pub discovery: Arc<Subsystem>,
    /// Discovery log generation counter.
    pub genctr: AtomicU64,
    /// Round-robin counter for placing new queue pairs.
    pub next_core: AtomicUsize,
    /// The keys DH-HMAC-CHAP reads.
    pub keyring: Arc<Keyring>,
    /// DH-HMAC-CHAP digests and DH groups allowed (`nvmf_set_config`): bit `id` set.
    pub dhchap_digests: AtomicU32,
    pub dhchap_dhgroups: AtomicU32,
    listeners: Mutex<BTreeMap<SocketAddr, ListenerSlot>>,
    /// The TLS server context of secure-channel listeners (made by the first one).
    tls: Mutex<Option<openssl::ssl::SslContext>>,
    /// Open connections by source address (taken at accept and at close only).
    conns_by_host: crate::frontend::conn_limits::HostCounts,
}

struct ListenerSlot {
    handle: ListenerHandle,
    /// Subsystems listening here.
    users: usize,
    /// TLS before ICReq.
    secure: bool,
    /// Secure channel concatenation.
    concat: bool,
    /// Its own connection limits.
    limits: ListenerLimits,
    portid: u16,
}

/// `max_connections: N, max_connections_per_host: M` (`none` when neither is set).
fn describe_limits(l: &ListenerLimits) -> String {
    let mut parts = Vec::new();
    if let Some(n) = l.max_connections {
        parts.push(format!("max_connections: {n}"));
    }
    if let Some(n) = l.max_connections_per_host {
        parts.push(format!("max_connections_per_host: {n}"));
    }
    if parts.is_empty() {
        "none of its own".into()
    } else {
        parts.join(", ")
    }
}

/// Every digest allowed (SPDK's default): bits of SHA-256, -384, -512.
const ALL_DIGESTS: u32 = 0b1110;
/// Every DH group allowed: null and ffdhe2048 to ffdhe8192.
const ALL_DHGROUPS: u32 = 0b11_1111;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TargetShared {
    /// The transport options (after `nvmf_create_transport`).
    pub(crate) fn opts(&self) -> Option<Arc<TransportOptions>> {
        lock(&self.opts).clone()
    }

    /// The subsystem called `nqn` (the discovery subsystem included).
    pub(crate) fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        if nqn == DISCOVERY_NQN {
            return Some(self.discovery.clone());
        }
        lock(&self.subsystems).get(nqn).cloned()
    }

    /// Every NVM subsystem, in NQN order (the discovery subsystem not included).
    pub(crate) fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        lock(&self.subsystems).values().cloned().collect()
    }

    /// The discovery log entries `hostnqn` may see: one per listener of every subsystem
    /// that admits it.
    pub(crate) fn discovery_entries(&self, hostnqn: &str) -> Vec<DiscoveryEntry> {
        let subs: Vec<Arc<Subsystem>> = lock(&self.subsystems).values().cloned().collect();
        let ports = lock(&self.listeners);
        let mut out = Vec::new();
        for s in subs {
            if !s.host_allowed(hostnqn) {
                continue;
            }
            for l in s.listeners() {
                let portid = l
                    .traddr
                    .parse::<IpAddr>()
                    .ok()
                    .zip(l.trsvcid.parse::<u16>().ok())
                    .and_then(|(ip, port)| ports.get(&SocketAddr::new(ip, port)))
                    .map_or(0, |p| p.portid);
                out.push(DiscoveryEntry {
                    trtype: disc::TRTYPE_TCP,
                    adrfam: if l.adrfam == "IPv6" {
                        disc::ADRFAM_IPV6
                    } else {
                        disc::ADRFAM_IPV4
                    },
                    subtype: disc::SUBTYPE_NVME,
                    treq: if l.secure_channel {
                        disc::TREQ_REQUIRED
                    } else {
                        disc::TREQ_NOT_REQUIRED
                    },
                    sectype: if l.secure_channel || l.secure_concat {
                        disc::SECTYPE_TLS13
                    } else {
                        disc::SECTYPE_NONE
                    },
                    portid,
                    cntlid: 0xffff,
                    asqsz: 128,
                    trsvcid: l.trsvcid.clone(),
                    subnqn: s.nqn.clone(),
                    traddr: l.traddr.clone(),
                });
            }
        }
        out
    }

    /// Open connections by source address.
    pub(crate) fn conns_by_host(&self) -> &crate::frontend::conn_limits::HostCounts {
        &self.conns_by_host
    }

    /// Picks the core for a new queue pair, round-robin.
    pub(crate) fn pick_core(&self) -> usize {
        self.next_core.fetch_add(1, Ordering::Relaxed) % self.cores.len()
    }

    fn bump_genctr(&self) {
        self.genctr.fetch_add(1, Ordering::AcqRel);
    }
}

/// The NVMe/TCP target: transport, subsystems, listeners.
#[derive(Clone)]
pub struct NvmfTarget {
    shared: Arc<TargetShared>,
}

impl NvmfTarget {
    /// A target running on `cores`, exporting bdevs of `bdevs`. No transport yet.
    pub fn new(cores: Cores, bdevs: BdevRegistry, keyring: Arc<Keyring>) -> NvmfTarget {
        let discovery = Arc::new(Subsystem::new(
            DISCOVERY_NQN,
            SubsystemKind::Discovery,
            "",
            "",
            0,
            true,
        ));
        NvmfTarget {
            shared: Arc::new(TargetShared {
                cores,
                bdevs,
                opts: Mutex::new(None),
                subsystems: Mutex::new(BTreeMap::new()),
                discovery,
                genctr: AtomicU64::new(0),
                next_core: AtomicUsize::new(0),
                keyring,
                dhchap_digests: AtomicU32::new(ALL_DIGESTS),
                dhchap_dhgroups: AtomicU32::new(ALL_DHGROUPS),
                listeners: Mutex::new(BTreeMap::new()),
                tls: Mutex::new(None),
                conns_by_host: Default::default(),
            }),
        }
    }

    /// Builds a target from the `nvmf:` section of the YAML configuration.
    pub fn from_config(
        cores: Cores,
        bdevs: BdevRegistry,
        keyring: Arc<Keyring>,
        cfg: &NvmfConfig,
    ) -> Result<NvmfTarget, NvmfError> {
        cfg.validate().map_err(|e| invalid("nvmf", e))?;
        let t = NvmfTarget::new(cores, bdevs, keyring);
        t.nvmf_create_transport("TCP", cfg.transport.clone())?;
        for s in &cfg.subsystems {
            t.apply_subsystem_config(s)?;
        }
        Ok(t)
    }

    fn apply_subsystem_config(&self, s: &SubsystemConfig) -> Result<(), NvmfError> {
        self.nvmf_create_subsystem(CreateSubsystemParams {
            nqn: s.nqn.clone(),
            serial_number: Some(s.serial_number.clone()),
            model_number: Some(s.model_number.clone()),
            allow_any_host: s.allow_any_host,
            max_namespaces: Some(s.max_namespaces),
        })?;
        for h in &s.hosts {
            let keys = s
                .dhchap
                .get(h)
                .map_or_else(HostKeys::default, |k| HostKeys {
                    dhchap_key: Some(k.dhchap_key.clone()),
                    dhchap_ctrlr_key: k.dhchap_ctrlr_key.clone(),
                    psk: None,
                });
            let keys = HostKeys {
                psk: s.psk.get(h).cloned(),
                ..keys
            };
            self.nvmf_subsystem_add_host_with_keys(&s.nqn, h, keys)?;
        }
        for NamespaceConfig { bdev, nsid, uuid } in &s.namespaces {
            self.nvmf_subsystem_add_ns(
                &s.nqn,
                NamespaceParams {
                    bdev_name: bdev.clone(),
                    nsid: *nsid,
                    uuid: *uuid,
                },
            )?;
        }
        for l in &s.listeners {
            self.nvmf_subsystem_add_listener_sec(
                &s.nqn,
                ListenAddressParams {
                    trtype: "TCP".into(),
                    adrfam: None,
                    traddr: l.address.clone(),
                    trsvcid: l.port.to_string(),
                },
                ListenerSecurity {
                    secure_channel: l.secure_channel,
                    secure_concat: l.secure_concat,
                },
                l.limits(),
            )?;
        }
        Ok(())
    }

    /// `nvmf_create_transport`: only `TCP`; once.
    pub fn nvmf_create_transport(
        &self,
        trtype: &str,
        opts: TransportOptions,
    ) -> Result<(), NvmfError> {
        if !trtype.eq_ignore_ascii_case("tcp") {
            return Err(NvmfError::UnsupportedTransport(trtype.to_string()));
        }
        opts.validate().map_err(|e| invalid("transport", e))?;
        let mut o = lock(&self.shared.opts);
        if o.is_some() {
            return Err(NvmfError::TransportExists("TCP".into()));
        }
        *o = Some(Arc::new(opts));
        Ok(())
    }

    /// The transport options, if the transport exists.
    pub fn transport_options(&self) -> Option<TransportOptions> {
        self.shared.opts().map(|o| (*o).clone())
    }

    /// `nvmf_create_subsystem`.
    pub fn nvmf_create_subsystem(&self, p: CreateSubsystemParams) -> Result<(), NvmfError> {
        check_nqn(&p.nqn).map_err(|e| invalid("nqn", e))?;
        if p.nqn == DISCOVERY_NQN {
            return Err(NvmfError::SubsystemExists(p.nqn));
        }
        let serial = p
            .serial_number
            .unwrap_or_else(|| super::config::DEFAULT_SERIAL_NUMBER.into());
        if serial.len() > 20 || !serial.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(invalid(
                "serial_number",
                format!("`{serial}` is not up to 20 printable ASCII characters"),
            ));
        }
        let model = p
            .model_number
            .unwrap_or_else(|| super::config::DEFAULT_MODEL_NUMBER.into());
        if model.len() > 40 || !model.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(invalid(
                "model_number",
                format!("`{model}` is not up to 40 printable ASCII characters"),
            ));
        }
        let max_ns = p
            .max_namespaces
            .unwrap_or(super::config::DEFAULT_MAX_NAMESPACES);
        let max_ns = if max_ns == 0 {
            super::config::DEFAULT_MAX_NAMESPACES
        } else {
            max_ns
        };
        if max_ns > 1024 {
            return Err(invalid("max_namespaces", format!("{max_ns} is above 1024")));
        }
        let mut subs = lock(&self.shared.subsystems);
        if subs.contains_key(&p.nqn) {
            return Err(NvmfError::SubsystemExists(p.nqn));
        }
        subs.insert(
            p.nqn.clone(),
            Arc::new(Subsystem::new(
                &p.nqn,
                SubsystemKind::Nvme,
                &serial,
                &model,
                max_ns,
                p.allow_any_host,
            )),
        );
        drop(subs);
        tracing::info!(nqn = %p.nqn, "subsystem created");
        self.shared.bump_genctr();
        Ok(())
    }

    fn subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, NvmfError> {
        if nqn == DISCOVERY_NQN {
            return Err(NvmfError::Discovery);
        }
        lock(&self.shared.subsystems)
            .get(nqn)
            .cloned()
            .ok_or_else(|| NvmfError::NoSubsystem(nqn.to_string()))
    }

    /// `nvmf_delete_subsystem`: disconnects its controllers, releases its bdevs and
    /// listeners.
    pub fn nvmf_delete_subsystem(&self, nqn: &str) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        lock(&self.shared.subsystems).remove(nqn);
        s.deleted.store(true, Ordering::Release);
        for l in s.listeners() {
            self.release_listener(&l);
        }
        for c in s.ctrlrs() {
            super::ctrlr::fail_controller(&self.shared.cores, &c, "subsystem deleted");
        }
        for ns in s.namespaces().by_nsid.values() {
            self.shared.bdevs.release(ns.bdev.name(), &claim_name(nqn));
        }
        self.shared.bump_genctr();
        tracing::info!(nqn, "subsystem deleted");
        Ok(())
    }

    /// `nvmf_subsystem_add_listener`; returns the address actually bound (port 0 picks
    /// a free port).
    pub fn nvmf_subsystem_add_listener(
        &self,
        nqn: &str,
        la: ListenAddressParams,
    ) -> Result<SocketAddr, NvmfError> {
        self.nvmf_subsystem_add_listener_opts(nqn, la, false, ListenerLimits::default())
    }

    /// `nvmf_subsystem_add_listener` with `secure_channel` (TLS 1.3 with a PSK before
    /// ICReq on every connection) and the listener's own connection `limits`. Refused
    /// for a secure channel on a subsystem that allows any host (SPDK's message), and on
    /// an address another subsystem listens on with another `secure_channel` or other
    /// limits.
    pub fn nvmf_subsystem_add_listener_opts(
        &self,
        nqn: &str,
        la: ListenAddressParams,
        secure_channel: bool,
        limits: ListenerLimits,
    ) -> Result<SocketAddr, NvmfError> {
        self.nvmf_subsystem_add_listener_sec(
            nqn,
            la,
            ListenerSecurity {
                secure_channel,
                secure_concat: false,
            },
            limits,
        )
    }

    /// [`nvmf_subsystem_add_listener_opts`](Self::nvmf_subsystem_add_listener_opts) with
    /// tessera's `secure_concat` too: the listener also takes plain TCP connections on
    /// which a host authenticates with secure channel concatenation, and TLS keyed by
    /// the PSK that generated (besides configured PSKs). With `secure_channel`, plain TCP
    /// serves nothing else; without, it is served as on any listener.
    pub fn nvmf_subsystem_add_listener_sec(
        &self,
        nqn: &str,
        la: ListenAddressParams,
        sec: ListenerSecurity,
        limits: ListenerLimits,
    ) -> Result<SocketAddr, NvmfError> {
        let ListenerSecurity {
            secure_channel,
            secure_concat,
        } = sec;
        if !la.trtype.eq_ignore_ascii_case("tcp") {
            return Err(NvmfError::UnsupportedTransport(la.trtype));
        }
        let opts = self
            .shared
            .opts()
            .ok_or_else(|| NvmfError::NoTransport("TCP".into()))?;
        let s = self.subsystem(nqn)?;
        if secure_channel && s.allow_any_host() {
            return Err(invalid(
                "secure_channel",
                "Cannot establish secure channel, when 'allow_any_host' is set",
            ));
        }
        let ip: IpAddr = la
            .traddr
            .parse()
            .map_err(|_| invalid("traddr", format!("`{}` is not an IP address", la.traddr)))?;
        let port: u16 = la
            .trsvcid
            .parse()
            .map_err(|_| invalid("trsvcid", format!("`{}` is not a port", la.trsvcid)))?;
        limits
            .check()
            .map_err(|(field, reason)| invalid(field, reason))?;
        let bound = self.acquire_listener(SocketAddr::new(ip, port), opts, sec, limits)?;
        let addr = ListenAddress {
            trtype: "TCP".into(),
            adrfam: if bound.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
            traddr: bound.ip().to_string(),
            trsvcid: bound.port().to_string(),
            secure_channel,
            secure_concat,
            limits,
        };
        if !s.add_listener(addr) {
            self.release_listener_at(bound);
        }
        self.shared.bump_genctr();
        tracing::info!(nqn, %bound, secure_channel, secure_concat, "listening");
        Ok(bound)
    }

    /// `nvmf_subsystem_remove_listener`.
    pub fn nvmf_subsystem_remove_listener(
        &self,
        nqn: &str,
        la: ListenAddressParams,
    ) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        let want = s
            .listeners()
            .into_iter()
            .find(|l| l.traddr == la.traddr && l.trsvcid == la.trsvcid)
            .ok_or_else(|| NvmfError::NoListener(format!("{}:{}", la.traddr, la.trsvcid)))?;
        s.remove_listener(&want);
        self.release_listener(&want);
        self.shared.bump_genctr();
        Ok(())
    }

    fn acquire_listener(
        &self,
        addr: SocketAddr,
        opts: Arc<TransportOptions>,
        sec: ListenerSecurity,
        limits: ListenerLimits,
    ) -> Result<SocketAddr, NvmfError> {
        let (secure, concat) = (sec.secure_channel, sec.secure_concat);
        let mut ls = lock(&self.shared.listeners);
        if addr.port() != 0
            && let Some(slot) = ls.get_mut(&addr)
        {
            if slot.concat != concat {
                return Err(invalid(
                    "secure_concat",
                    format!(
                        "{addr} already listens {} secure channel concatenation for another subsystem",
                        if slot.concat { "with" } else { "without" }
                    ),
                ));
            }
            if slot.secure != secure {
                return Err(invalid(
                    "secure_channel",
                    format!(
                        "{addr} already listens {} a secure channel for another subsystem",
                        if slot.secure { "with" } else { "without" }
                    ),
                ));
            }
            if slot.limits != limits {
                return Err(invalid(
                    "max_connections",
                    format!(
                        "{addr} already listens with other connection limits for another subsystem ({}): give every subsystem's listener there the same",
                        describe_limits(&slot.limits)
                    ),
                ));
            }
            slot.users += 1;
            return Ok(addr);
        }
        let tls = if secure || concat {
            let mut t = lock(&self.shared.tls);
            if t.is_none() {
                *t =
                    Some(super::tls::server_context().map_err(|e| {
                        invalid("secure_channel", format!("cannot set up TLS: {e}"))
                    })?);
            }
            t.clone()
        } else {
            None
        };
        let mode = listener::ListenMode {
            tls,
            secure_channel: secure,
            secure_concat: concat,
        };
        let handle =
            listener::start(self.shared.clone(), addr, opts, mode, limits).map_err(|cause| {
                NvmfError::Listen {
                    addr: addr.to_string(),
                    cause,
                }
            })?;
        let bound = handle.local_addr();
        let portid = (ls.len() + 1) as u16;
        ls.insert(
            bound,
            ListenerSlot {
                handle,
                users: 1,
                secure,
                concat,
                limits,
                portid,
            },
        );
        Ok(bound)
    }

    fn release_listener(&self, l: &ListenAddress) {
        if let (Ok(ip), Ok(port)) = (l.traddr.parse::<IpAddr>(), l.trsvcid.parse::<u16>()) {
            self.release_listener_at(SocketAddr::new(ip, port));
        }
    }

    fn release_listener_at(&self, addr: SocketAddr) {
        let mut ls = lock(&self.shared.listeners);
        if let Some(slot) = ls.get_mut(&addr) {
            slot.users -= 1;
            if slot.users == 0 {
                let slot = ls.remove(&addr).expect("present");
                slot.handle.stop();
            }
        }
    }

    /// `nvmf_subsystem_add_ns`; returns the NSID. Raises the namespace-attribute-changed
    /// event on the subsystem's controllers.
    pub fn nvmf_subsystem_add_ns(&self, nqn: &str, ns: NamespaceParams) -> Result<u32, NvmfError> {
        let s = self.subsystem(nqn)?;
        let bdev = self.shared.bdevs.get(&ns.bdev_name)?;
        let nsid = s
            .add_namespace(ns.nsid.unwrap_or(0), bdev, ns.uuid)
            .map_err(|reason| NvmfError::Namespace {
                nqn: nqn.to_string(),
                reason,
            })?;
        self.shared.bdevs.claim(&ns.bdev_name, &claim_name(nqn))?;
        tracing::info!(nqn, nsid, bdev = %ns.bdev_name, "namespace added");
        notify_namespace_changed_in(&self.shared.cores, &s, nsid);
        Ok(nsid)
    }

    /// `nvmf_subsystem_remove_ns`.
    pub fn nvmf_subsystem_remove_ns(&self, nqn: &str, nsid: u32) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        let ns = s
            .remove_namespace(nsid)
            .ok_or_else(|| NvmfError::Namespace {
                nqn: nqn.to_string(),
                reason: format!("nsid {nsid} does not exist"),
            })?;
        self.shared.bdevs.release(ns.bdev.name(), &claim_name(nqn));
        tracing::info!(nqn, nsid, "namespace removed");
        notify_namespace_changed_in(&self.shared.cores, &s, nsid);
        Ok(())
    }

    /// `nvmf_subsystem_add_host`.
    pub fn nvmf_subsystem_add_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        self.nvmf_subsystem_add_host_with_keys(nqn, host, HostKeys::default())
    }

    /// Checks that the keys named exist in the keyring and hold `DHHC-1:` secrets.
    fn check_host_keys(&self, keys: &HostKeys) -> Result<(), NvmfError> {
        if keys.dhchap_ctrlr_key.is_some() && keys.dhchap_key.is_none() {
            return Err(invalid(
                "dhchap_ctrlr_key",
                "a DH-HMAC-CHAP controller key requires dhchap_key",
            ));
        }
        if let Some(name) = &keys.psk {
            let secret = self
                .shared
                .keyring
                .read(name)
                .map_err(|e| invalid("psk", e.to_string()))?;
            crate::nvme::tls::ConfiguredPsk::parse(secret.expose())
                .map_err(|e| invalid("psk", format!("key `{name}`: {e}")))?;
        }
        for (param, name) in [
            ("dhchap_key", &keys.dhchap_key),
            ("dhchap_ctrlr_key", &keys.dhchap_ctrlr_key),
        ] {
            let Some(name) = name else { continue };
            let secret = self
                .shared
                .keyring
                .read(name)
                .map_err(|e| invalid(param, e.to_string()))?;
            crate::nvme::dhchap::DhchapKey::parse(secret.expose())
                .map_err(|e| invalid(param, format!("key `{name}`: {e}")))?;
        }
        Ok(())
    }

    /// `nvmf_subsystem_add_host` with `dhchap_key` / `dhchap_ctrlr_key` (keyring names).
    pub fn nvmf_subsystem_add_host_with_keys(
        &self,
        nqn: &str,
        host: &str,
        keys: HostKeys,
    ) -> Result<(), NvmfError> {
        check_nqn(host).map_err(|e| invalid("host", e))?;
        self.check_host_keys(&keys)?;
        let s = self.subsystem(nqn)?;
        if s.hosts().iter().any(|h| h == host) && (keys.dhchap_key.is_some() || keys.psk.is_some())
        {
            return Err(invalid(
                "host",
                format!("{host} is already a host of {nqn} (use nvmf_subsystem_set_keys)"),
            ));
        }
        s.add_host(host);
        s.set_host_keys(host, keys);
        self.shared.bump_genctr();
        Ok(())
    }

    /// `nvmf_subsystem_set_keys`: new DH-HMAC-CHAP keys for an allowed host; a key not
    /// given keeps its current value (SPDK). Connected queue pairs keep their
    /// authentication; the next one (a new connection, or a re-authentication) uses
    /// the new keys.
    pub fn nvmf_subsystem_set_keys(
        &self,
        nqn: &str,
        host: &str,
        dhchap_key: Option<String>,
        dhchap_ctrlr_key: Option<String>,
    ) -> Result<(), NvmfError> {
        self.nvmf_subsystem_set_host_keys(nqn, host, dhchap_key, dhchap_ctrlr_key, None)
    }

    /// [`nvmf_subsystem_set_keys`](Self::nvmf_subsystem_set_keys) with tessera's `psk`
    /// too: the host's TLS PSK (a keyring name). Every key named is checked before any
    /// is set. Connections already admitted keep their TLS session; the next handshake
    /// of the host (the TLS look-up reads the key at each one) takes the new key.
    pub fn nvmf_subsystem_set_host_keys(
        &self,
        nqn: &str,
        host: &str,
        dhchap_key: Option<String>,
        dhchap_ctrlr_key: Option<String>,
        psk: Option<String>,
    ) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        if !s.hosts().iter().any(|h| h == host) {
            return Err(invalid("host", format!("{host} is not a host of {nqn}")));
        }
        let old = s.host_keys(host).unwrap_or_default();
        let new_psk = psk.is_some();
        let keys = HostKeys {
            dhchap_key: dhchap_key.or(old.dhchap_key),
            dhchap_ctrlr_key: dhchap_ctrlr_key.or(old.dhchap_ctrlr_key),
            psk: psk.or(old.psk),
        };
        self.check_host_keys(&keys)?;
        s.set_host_keys(host, keys);
        if new_psk {
            tracing::info!(nqn, host, "keys set (TLS PSK included)");
        } else {
            tracing::info!(nqn, host, "DH-HMAC-CHAP keys set");
        }
        Ok(())
    }

    /// `nvmf_set_config`'s `dhchap_digests` and `dhchap_dhgroups` (names; `None` keeps
    /// the current set).
    pub fn set_dhchap_allowed(
        &self,
        digests: Option<&[String]>,
        dhgroups: Option<&[String]>,
    ) -> Result<(), NvmfError> {
        let mut dmask = None;
        if let Some(d) = digests {
            let mut m = 0u32;
            for n in d {
                let h = HashId::from_name(n)
                    .ok_or_else(|| invalid("dhchap_digests", format!("unknown digest `{n}`")))?;
                m |= 1 << h as u8;
            }
            dmask = Some(m);
        }
        let mut gmask = None;
        if let Some(g) = dhgroups {
            let mut m = 0u32;
            for n in g {
                let dg = DhGroup::from_name(n)
                    .ok_or_else(|| invalid("dhchap_dhgroups", format!("unknown DH group `{n}`")))?;
                m |= 1 << dg as u8;
            }
            gmask = Some(m);
        }
        if let Some(m) = dmask {
            self.shared.dhchap_digests.store(m, Ordering::Release);
        }
        if let Some(m) = gmask {
            self.shared.dhchap_dhgroups.store(m, Ordering::Release);
        }
        Ok(())
    }

    /// The allowed digests and DH groups, by name.
    pub fn dhchap_allowed(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        let d = self.shared.dhchap_digests.load(Ordering::Acquire);
        let g = self.shared.dhchap_dhgroups.load(Ordering::Acquire);
        (
            HashId::ALL
                .into_iter()
                .filter(|h| d & (1 << *h as u8) != 0)
                .map(HashId::name)
                .collect(),
            DhGroup::ALL
                .into_iter()
                .filter(|x| g & (1 << *x as u8) != 0)
                .map(DhGroup::name)
                .collect(),
        )
    }

    /// `nvmf_subsystem_remove_host`.
    pub fn nvmf_subsystem_remove_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        self.subsystem(nqn)?.remove_host(host);
        self.shared.bump_genctr();
        Ok(())
    }

    /// `nvmf_subsystem_allow_any_host`.
    pub fn nvmf_subsystem_allow_any_host(
        &self,
        nqn: &str,
        allow_any_host: bool,
    ) -> Result<(), NvmfError> {
        self.subsystem(nqn)?.set_allow_any_host(allow_any_host);
        self.shared.bump_genctr();
        Ok(())
    }

    /// Tells the subsystem's hosts that namespace `nsid` changed (added, removed or
    /// resized): each controller raises a namespace-attribute-changed asynchronous event
    /// and lists `nsid` in its changed namespace log.
    pub fn notify_namespace_changed(&self, nqn: &str, nsid: u32) -> Result<(), NvmfError> {
        let s = self.subsystem(nqn)?;
        notify_namespace_changed_in(&self.shared.cores, &s, nsid);
        Ok(())
    }

    /// `nvmf_subsystem_get_controllers`: the controllers connected to a subsystem.
    pub fn nvmf_subsystem_get_controllers(
        &self,
        nqn: &str,
    ) -> Result<serde_json::Value, NvmfError> {
        let s = self
            .shared
            .subsystem(nqn)
            .ok_or_else(|| NvmfError::NoSubsystem(nqn.to_string()))?;
        let list = s
            .ctrlrs()
            .iter()
            .map(|c| {
                serde_json::json!({
                    "cntlid": c.cntlid,
                    "hostnqn": c.hostnqn,
                    "hostid": Uuid::from_bytes(c.hostid).to_string(),
                    "num_io_qpairs": c.io_qpairs().len(),
                })
            })
            .collect();
        Ok(serde_json::Value::Array(list))
    }

    /// SPDK's `nvmf_subsystem_get_qpairs`: every queue pair of the subsystem's
    /// controllers, admin (qid 0) and I/O, with the core that runs it.
    pub fn nvmf_subsystem_get_qpairs(&self, nqn: &str) -> Result<serde_json::Value, NvmfError> {
        let s = self
            .shared
            .subsystem(nqn)
            .ok_or_else(|| NvmfError::NoSubsystem(nqn.to_string()))?;
        let mut list = Vec::new();
        // `auth` as SPDK reports it (state, digest, dhgroup) on a queue pair that
        // authenticated, with tessera's count of its successful re-authentications.
        let qpair = |c: &super::subsystem::CtrlrShared, qid: u16, core: usize| {
            let mut q = serde_json::json!({
                "cntlid": c.cntlid,
                "qid": qid,
                "state": "active",
                "thread": format!("nvmf_tgt_poll_group_{core:03}"),
                "core": core,
            });
            if let Some(a) = c.auth_record(qid) {
                q["auth"] = serde_json::json!({
                    "state": "completed",
                    "digest": a.digest,
                    "dhgroup": a.dhgroup,
                    "reauthentications": a.reauthentications,
                });
            }
            q
        };
        for c in s.ctrlrs().iter() {
            list.push(qpair(c, 0, c.core));
            let io: Vec<(u16, usize)> = c.io_qpairs().iter().map(|(q, r)| (*q, r.core)).collect();
            for (qid, core) in io {
                list.push(qpair(c, qid, core));
            }
        }
        Ok(serde_json::Value::Array(list))
    }

    /// The hook for bdev resizes: raises the namespace-changed event for every
    /// namespace that `bdev_name` backs (the new size is read from the bdev at the next
    /// Identify). Returns how many namespaces that was.
    pub fn notify_bdev_resized(&self, bdev_name: &str) -> usize {
        let subs: Vec<Arc<Subsystem>> = lock(&self.shared.subsystems).values().cloned().collect();
        let mut n = 0;
        for s in subs {
            let nsids: Vec<u32> = s
                .namespaces()
                .by_nsid
                .values()
                .filter(|ns| ns.bdev.name() == bdev_name)
                .map(|ns| ns.nsid)
                .collect();
            for nsid in nsids {
                notify_namespace_changed_in(&self.shared.cores, &s, nsid);
                n += 1;
            }
        }
        n
    }

    /// NQNs of the subsystems (the discovery subsystem first).
    pub fn subsystem_nqns(&self) -> Vec<String> {
        let mut v = vec![DISCOVERY_NQN.to_string()];
        v.extend(lock(&self.shared.subsystems).keys().cloned());
        v
    }

    /// `nvmf_get_subsystems`, in SPDK's JSON shape.
    pub fn nvmf_get_subsystems(&self) -> serde_json::Value {
        let mut out = vec![serde_json::json!({
            "nqn": DISCOVERY_NQN,
            "subtype": "Discovery",
            "listen_addresses": [],
            "hosts": [],
            "allow_any_host": true,
        })];
        let subs: Vec<Arc<Subsystem>> = lock(&self.shared.subsystems).values().cloned().collect();
        for s in subs {
            let namespaces: Vec<serde_json::Value> = s
                .namespaces()
                .by_nsid
                .values()
                .map(|ns| {
                    serde_json::json!({
                        "nsid": ns.nsid,
                        "bdev_name": ns.bdev.name(),
                        "name": ns.bdev.name(),
                        "nguid": hex_upper(&ns.nguid),
                        "uuid": ns.uuid.to_string(),
                    })
                })
                .collect();
            out.push(serde_json::json!({
                "nqn": s.nqn,
                "subtype": "NVMe",
                "listen_addresses": s.listeners(),
                "allow_any_host": s.allow_any_host(),
                "hosts": s.hosts().into_iter().map(|h| {
                    let mut v = serde_json::json!({"nqn": h});
                    if let Some(k) = s.host_keys(&h) {
                        if let Some(d) = k.dhchap_key {
                            v["dhchap_key"] = serde_json::json!(d);
                        }
                        if let Some(c) = k.dhchap_ctrlr_key {
                            v["dhchap_ctrlr_key"] = serde_json::json!(c);
                        }
                        if let Some(p) = k.psk {
                            v["psk"] = serde_json::json!(p);
                        }
                    }
                    v
                }).collect::<Vec<_>>(),
                "serial_number": s.serial_number,
                "model_number": s.model_number,
                "max_namespaces": s.max_namespaces,
                "min_cntlid": super::subsystem::MIN_CNTLID,
                "max_cntlid": super::subsystem::MAX_CNTLID,
                "namespaces": namespaces,
            }));
        }
        serde_json::Value::Array(out)
    }

    /// The running configuration, for `save_config`.
    pub fn to_config(&self) -> NvmfConfig {
        let subs: Vec<Arc<Subsystem>> = lock(&self.shared.subsystems).values().cloned().collect();
        NvmfConfig {
            transport: self.transport_options().unwrap_or_default(),
            subsystems: subs
                .iter()
                .map(|s| SubsystemConfig {
                    nqn: s.nqn.clone(),
                    serial_number: s.serial_number.clone(),
                    model_number: s.model_number.clone(),
                    allow_any_host: s.allow_any_host(),
                    hosts: s.hosts(),
                    dhchap: s
                        .hosts()
                        .into_iter()
                        .filter_map(|h| {
                            let k = s.host_keys(&h)?;
                            Some((
                                h,
                                super::config::HostKeysConfig {
                                    dhchap_key: k.dhchap_key?,
                                    dhchap_ctrlr_key: k.dhchap_ctrlr_key,
                                },
                            ))
                        })
                        .collect(),
                    psk: s
                        .hosts()
                        .into_iter()
                        .filter_map(|h| {
                            let k = s.host_keys(&h)?.psk?;
                            Some((h, k))
                        })
                        .collect(),
                    max_namespaces: s.max_namespaces,
                    listeners: s
                        .listeners()
                        .into_iter()
                        .map(|l| super::config::ListenerConfig {
                            address: l.traddr,
                            port: l.trsvcid.parse().unwrap_or(0),
                            secure_channel: l.secure_channel,
                            secure_concat: l.secure_concat,
                            max_connections: l.limits.max_connections,
                            max_connections_per_host: l.limits.max_connections_per_host,
                        })
                        .collect(),
                    namespaces: s
                        .namespaces()
                        .by_nsid
                        .values()
                        .map(|ns| NamespaceConfig {
                            bdev: ns.bdev.name().to_string(),
                            nsid: Some(ns.nsid),
                            uuid: (ns.uuid != ns.bdev.uuid()).then_some(ns.uuid),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Stops every listener and disconnects every controller.
    pub fn shutdown(&self) {
        let nqns: Vec<String> = lock(&self.shared.subsystems).keys().cloned().collect();
        for nqn in nqns {
            let _ = self.nvmf_delete_subsystem(&nqn);
        }
        let ls = std::mem::take(&mut *lock(&self.shared.listeners));
        for (_, slot) in ls {
            slot.handle.stop();
        }
        for c in self.shared.discovery.ctrlrs() {
            super::ctrlr::fail_controller(&self.shared.cores, &c, "target shutting down");
        }
    }
}

fn claim_name(nqn: &str) -> String {
    format!("nvmf:{nqn}")
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Raises the namespace-changed event on every controller of `s`.
pub(crate) fn notify_namespace_changed_in(cores: &Cores, s: &Arc<Subsystem>, nsid: u32) {
    for c in s.ctrlrs() {
        super::ctrlr::send_ns_changed(cores, &c, nsid);
    }
}
