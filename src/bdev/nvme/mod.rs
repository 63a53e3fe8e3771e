//! The NVMe/TCP initiator: a host in the crate, so that a remote namespace is a bdev
//! like any other (SPDK's `bdev_nvme`).
//!
//! [`NvmeHost::attach_controller`] (`bdev_nvme_attach_controller`) connects the admin
//! queue on one core, enables the controller (CC.EN, CSTS.RDY), identifies it and its
//! active namespaces, asks for one I/O queue per core, and makes one [`NvmeBdev`] per
//! namespace, named `<name>n<nsid>`. Each core's channel connects that core's own I/O
//! queue pair lazily, on first use; the bdevs of one controller share it. The admin core
//! keeps the controller alive with Keep Alive commands (every KATO / 2) and keeps an
//! Asynchronous Event Request outstanding: a namespace-attribute-changed event makes it
//! read the changed namespace list and update the sizes of the namespaces it knows.
//!
//! Requests larger than the controller's maximum transfer size (MDTS) are split; writes
//! larger than the in-capsule size go through R2T/H2CData; reads arrive as C2HData.
//! A lost connection fails the requests on it with `Aborted`; reconnecting is not
//! implemented.
//!
//! This file holds the controller, its namespaces as bdevs and the host's registry of
//! controllers; `qpair` is one NVMe/TCP connection on one core. The codec is
//! [`crate::nvme`], shared with the target.

pub mod auth;
mod qpair;
pub mod tls;

pub use qpair::HostError;

use crate::bdev::{Bdev, BdevChannel, BdevError, BdevIo, BdevProps, BdevRegistry, IoKind};
use crate::nvme::pages::{self, IdentifyController, IdentifyNamespace, cntrltype};
use crate::nvme::spec::{self, Sqe, admin_opc, cns, fid, lid, prop};
use crate::reactor::{self, Cores};
use qpair::{HostQpair, QpairParams};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use uuid::Uuid;

fn default_trtype() -> String {
    "TCP".into()
}
fn default_trsvcid() -> String {
    "4420".into()
}

/// Parameters of `bdev_nvme_attach_controller` (SPDK's names; the last two are
/// tessera's own).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    /// Controller name; bdevs are `<name>n<nsid>`.
    pub name: String,
    #[serde(default = "default_trtype")]
    pub trtype: String,
    #[serde(default)]
    pub adrfam: Option<String>,
    pub traddr: String,
    #[serde(default = "default_trsvcid")]
    pub trsvcid: String,
    pub subnqn: String,
    /// Host NQN (a `nqn.2014-08.org.nvmexpress:uuid:` one is made up when absent).
    #[serde(default)]
    pub hostnqn: Option<String>,
    /// Header digests.
    #[serde(default)]
    pub hdgst: bool,
    /// Data digests.
    #[serde(default)]
    pub ddgst: bool,
    /// Keep Alive Timeout asked for (ms; 10000 by default).
    #[serde(default)]
    pub keep_alive_timeout_ms: Option<u32>,
    /// Entries per I/O queue (at most the controller's CAP.MQES + 1; 128 by default).
    #[serde(default)]
    pub io_queue_depth: Option<u16>,
    /// The keyring key the host authenticates with (DH-HMAC-CHAP), when the
    /// controller asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_key: Option<String>,
    /// The keyring key the controller must prove it holds (bidirectional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrlr_key: Option<String>,
    /// The keys those name, read from the keyring at attach (never saved).
    #[serde(skip)]
    pub dhchap: auth::DhchapHostKeys,
    /// The keyring key (TLS PSK, interchange format) every queue pair does TLS 1.3
    /// with before ICReq (SPDK's `psk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
    /// The PSK identity version offered: 0 (NVMe/TCP 1.0c, SPDK's; the default) or 1
    /// (with the PSK digest, which SPDK's target refuses). tessera's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk_identity_version: Option<u8>,
    /// The key `psk` names, read from the keyring at attach (never saved).
    #[serde(skip)]
    pub tls: tls::HostTls,
    /// Secure channel concatenation (tessera's; the Linux host's `concat`): the admin
    /// queue connects over plain TCP and authenticates with DH-HMAC-CHAP (`dhchap_key`
    /// required) asking for a generated TLS PSK, then the admin queue connects again
    /// and every I/O queue connects with TLS keyed by that PSK. Not with `psk`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure_concat: bool,
}

impl AttachParams {
    /// Minimal parameters.
    pub fn new(name: &str, traddr: &str, trsvcid: &str, subnqn: &str) -> AttachParams {
        AttachParams {
            name: name.into(),
            trtype: default_trtype(),
            adrfam: None,
            traddr: traddr.into(),
            trsvcid: trsvcid.into(),
            subnqn: subnqn.into(),
            hostnqn: None,
            hdgst: false,
            ddgst: false,
            keep_alive_timeout_ms: None,
            io_queue_depth: None,
            dhchap_key: None,
            dhchap_ctrlr_key: None,
            dhchap: auth::DhchapHostKeys::default(),
            psk: None,
            psk_identity_version: None,
            tls: tls::HostTls::default(),
            secure_concat: false,
        }
    }
}

/// An asynchronous event the controller reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Dword 0 of the AER completion.
    pub dw0: u32,
    /// Asynchronous event type (2: notice).
    pub event_type: u8,
    /// Asynchronous event information (0 with notices: namespace attribute changed).
    pub info: u8,
    /// The log page to read (4: changed namespace list).
    pub log_page: u8,
    /// The namespaces the changed namespace log listed.
    pub changed_nsids: Vec<u32>,
}

static NEXT_CTRLR_ID: AtomicU64 = AtomicU64::new(1);

/// A connected controller.
pub struct NvmeController {
    name: String,
    id: u64,
    cores: Cores,
    admin_core: usize,
    addr: SocketAddr,
    params: AttachParams,
    hostnqn: String,
    hostid: [u8; 16],
    cntlid: u16,
    ident: IdentifyController,
    kato_ms: u32,
    max_xfer_bytes: u64,
    in_capsule_len: u32,
    num_io_queues: u32,
    io_queue_depth: u16,
    failed: AtomicBool,
    detached: AtomicBool,
    /// The DH-HMAC-CHAP keys queue pairs authenticate with (`bdev_nvme_set_keys`
    /// changes them).
    dhchap: Mutex<auth::DhchapHostKeys>,
    /// The TLS key new queue pairs connect with (with `secure_concat`, the generated
    /// PSK; a re-authentication of the admin queue replaces it).
    tls: Mutex<tls::HostTls>,
    events: Mutex<Vec<AsyncEvent>>,
    bdevs: Mutex<BTreeMap<u32, Arc<NvmeBdev>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This core's queue pairs, by controller id (I/O queues) — and the admin queues on the
/// admin core.
#[derive(Default)]
struct HostQpairs {
    io: RefCell<HashMap<u64, Rc<HostQpair>>>,
    admin: RefCell<HashMap<u64, Rc<HostQpair>>>,
}

fn admin_qpair(id: u64) -> Option<Rc<HostQpair>> {
    reactor::local(HostQpairs::default)
        .admin
        .borrow()
        .get(&id)
        .cloned()
}

impl NvmeController {
    /// Controller name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Controller ID the target assigned.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// Identify Controller data.
    pub fn identify(&self) -> &IdentifyController {
        &self.ident
    }

    /// The bdevs, one per namespace.
    pub fn bdevs(&self) -> Vec<Arc<NvmeBdev>> {
        lock(&self.bdevs).values().cloned().collect()
    }

    /// Events reported so far (in order).
    pub fn async_events(&self) -> Vec<AsyncEvent> {
        lock(&self.events).clone()
    }

    /// True when the admin queue was lost (keep alive failed, connection closed).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// I/O queues the controller granted.
    pub fn num_io_queues(&self) -> u32 {
        self.num_io_queues
    }

    /// Runs an admin command on the admin core and returns dword 0 and the data.
    pub async fn admin_command(
        self: &Arc<Self>,
        sqe: Sqe,
        len: usize,
    ) -> Result<(u32, Vec<u8>), HostError> {
        let id = self.id;
        let name = self.name.clone();
        self.cores
            .spawn_on(self.admin_core, move || async move {
                let q = admin_qpair(id)
                    .ok_or_else(|| HostError::Controller(name, "the admin queue is gone".into()))?;
                let (cqe, data) = q.command(sqe, len, None).await?;
                Ok((cqe.dw0, data))
            })
            .await
            .map_err(|e| HostError::Controller(self.name.clone(), e.to_string()))?
    }

    fn io_qpair(&self) -> Result<Rc<HostQpair>, BdevError> {
        let core = reactor::current_core().unwrap_or(0);
        let local = reactor::local(HostQpairs::default);
        if let Some(q) = local.io.borrow().get(&self.id)
            && !q.is_failed()
        {
            return Ok(q.clone());
        }
        let qid = core as u32 + 1;
        let err = |reason: String| BdevError::Channel {
            name: self.name.clone(),
            reason,
        };
        if self.detached.load(Ordering::Acquire) {
            return Err(err("the controller is detached".into()));
        }
        if qid > self.num_io_queues {
            return Err(err(format!(
                "core {core} needs I/O queue {qid} but the controller granted {}",
                self.num_io_queues
            )));
        }
        let q = HostQpair::start(QpairParams {
            addr: self.addr,
            subnqn: self.params.subnqn.clone(),
            hostnqn: self.hostnqn.clone(),
            hostid: self.hostid,
            qid: qid as u16,
            queue_depth: self.io_queue_depth,
            kato_ms: 0,
            cntlid: self.cntlid,
            hdgst: self.params.hdgst,
            ddgst: self.params.ddgst,
            in_capsule_len: self.in_capsule_len,
            dhchap: lock(&self.dhchap).clone(),
            tls: lock(&self.tls).clone(),
            concat: 0,
        });
        local.io.borrow_mut().insert(self.id, q.clone());
        Ok(q)
    }

    /// `bdev_nvme_set_keys`: queue pairs authenticate with `keys` from now on, and with
    /// a host key in `keys` each connected one re-authenticates at once without
    /// disconnecting — the admin queue, then each core's I/O queue, one after the other
    /// (SPDK's order); the first failure stops there and is returned (that queue pair is
    /// disconnected). Returns how many queue pairs re-authenticated. Each transaction
    /// has its time limit.
    pub async fn set_keys(
        self: &Arc<Self>,
        keys: auth::DhchapHostKeys,
    ) -> Result<usize, HostError> {
        if self.detached.load(Ordering::Acquire) {
            return Err(HostError::Controller(
                self.name.clone(),
                "the controller is detached".into(),
            ));
        }
        *lock(&self.dhchap) = keys.clone();
        if keys.get().is_none() {
            return Ok(0);
        }
        let id = self.id;
        let reactor_err =
            |e: reactor::SendError| HostError::Controller(self.name.clone(), e.to_string());
        let failed = |qid: u16, e: HostError| HostError::Reauth {
            name: self.name.clone(),
            qid,
            reason: match e {
                HostError::Auth(r) => r,
                e => e.to_string(),
            },
        };
        let k = keys.clone();
        // With concatenation the admin queue (over TLS) replaces the generated PSK.
        let scc = if self.params.secure_concat {
            crate::nvme::auth::sc_c::REPLACETLSPSK
        } else {
            crate::nvme::auth::sc_c::NOSC
        };
        let (admin, generated) = self
            .cores
            .spawn_on(self.admin_core, move || async move {
                match admin_qpair(id) {
                    Some(q) => {
                        let r = q.reauthenticate(k, scc).await;
                        r.map(|done| (done, q.take_generated()))
                    }
                    None => Ok((false, None)),
                }
            })
            .await
            .map_err(reactor_err)?
            .map_err(|e| failed(0, e))?;
        let mut done = admin as usize;
        if let Some(g) = generated {
            // New queue pairs connect with the new PSK; connected ones keep their TLS.
            *lock(&self.tls) = tls::HostTls::generated(g);
            tracing::info!(name = %self.name, "secure channel concatenation: TLS PSK replaced");
        }
        // The I/O queues of a concatenated controller are not authenticated (their TLS
        // key is the proof), as the Linux host.
        let io_cores = if self.params.secure_concat {
            0
        } else {
            self.cores.len()
        };
        for core in 0..io_cores {
            let k = keys.clone();
            let io = self
                .cores
                .spawn_on(core, move || async move {
                    let q = reactor::local(HostQpairs::default)
                        .io
                        .borrow()
                        .get(&id)
                        .cloned();
                    match q {
                        Some(q) => q.reauthenticate(k, crate::nvme::auth::sc_c::NOSC).await,
                        None => Ok(false),
                    }
                })
                .await
                .map_err(reactor_err)?
                .map_err(|e| failed(core as u16 + 1, e))?;
            done += io as usize;
        }
        tracing::info!(name = %self.name, queue_pairs = done, "DH-HMAC-CHAP keys changed; queue pairs re-authenticated");
        Ok(done)
    }

    /// Disconnects every queue pair (the bdevs fail their I/O from then on).
    pub async fn detach(&self) {
        self.detached.store(true, Ordering::Release);
        let id = self.id;
        let _ = self
            .cores
            .for_each_core_async(move |_| {
                let q = reactor::local(HostQpairs::default)
                    .io
                    .borrow_mut()
                    .remove(&id);
                if let Some(q) = q {
                    q.close("controller detached");
                }
            })
            .await;
        let _ = self
            .cores
            .call(self.admin_core, move || {
                let q = reactor::local(HostQpairs::default)
                    .admin
                    .borrow_mut()
                    .remove(&id);
                if let Some(q) = q {
                    q.close("controller detached");
                }
            })
            .await;
    }

    fn driver_json(&self, nsid: u32) -> serde_json::Value {
        serde_json::json!({
            "nvme": [{
                "trid": {
                    "trtype": "TCP",
                    "adrfam": if self.addr.is_ipv4() { "IPv4" } else { "IPv6" },
                    "traddr": self.params.traddr,
                    "trsvcid": self.params.trsvcid,
                    "subnqn": self.params.subnqn,
                },
                "ctrlr_data": {
                    "cntlid": self.cntlid,
                    "vendor_id": format!("{:#06x}", self.ident.vid),
                    "model_number": self.ident.model_number,
                    "serial_number": self.ident.serial_number,
                    "firmware_revision": self.ident.firmware_revision,
                    "subnqn": self.ident.subnqn,
                },
                "ns_data": {"id": nsid},
            }]
        })
    }
}

/// A namespace of a remote controller, as a bdev.
pub struct NvmeBdev {
    props: BdevProps,
    ctrlr: Arc<NvmeController>,
    nsid: u32,
    unmap_zeroes: bool,
}

impl NvmeBdev {
    /// The namespace ID.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<NvmeController> {
        &self.ctrlr
    }
}

impl Bdev for NvmeBdev {
    fn props(&self) -> &BdevProps {
        &self.props
    }

    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let qp = self.ctrlr.io_qpair()?;
        let bs = self.props_block_size();
        Ok(Rc::new(NvmeChannel {
            qp,
            nsid: self.nsid,
            block_size: bs,
            max_blocks: (self.ctrlr.max_xfer_bytes / bs as u64).max(1),
        }))
    }

    fn supports(&self, kind: IoKind) -> bool {
        let oncs = self.ctrlr.ident.oncs;
        match kind {
            IoKind::Unmap => oncs & pages::oncs::DSM != 0,
            IoKind::WriteZeroes => oncs & pages::oncs::WRITE_ZEROES != 0,
            _ => true,
        }
    }

    fn unmap_reads_zeroes(&self) -> bool {
        self.unmap_zeroes
    }

    fn driver_specific(&self) -> serde_json::Value {
        self.ctrlr.driver_json(self.nsid)
    }
}

impl NvmeBdev {
    fn props_block_size(&self) -> u32 {
        let me: &dyn Bdev = self;
        me.block_size()
    }
}

struct NvmeChannel {
    qp: Rc<HostQpair>,
    nsid: u32,
    block_size: u32,
    max_blocks: u64,
}

impl BdevChannel for NvmeChannel {
    #[inline]
    fn submit(&self, io: BdevIo) {
        self.qp
            .submit_io(io, self.nsid, self.block_size, self.max_blocks);
    }
}

/// The attached controllers of a process, by name (what the RPC layer holds).
#[derive(Clone, Default)]
pub struct NvmeHost {
    ctrlrs: Arc<Mutex<BTreeMap<String, Arc<NvmeController>>>>,
}

impl NvmeHost {
    pub fn new() -> NvmeHost {
        NvmeHost::default()
    }

    /// `bdev_nvme_attach_controller`: attaches on core 0 of `cores`, registers the
    /// bdevs in `registry`, returns their names. Usable on a reactor and off one.
    pub async fn attach_controller_async(
        &self,
        cores: &Cores,
        registry: &BdevRegistry,
        p: AttachParams,
    ) -> Result<Vec<String>, HostError> {
        if lock(&self.ctrlrs).contains_key(&p.name) {
            return Err(HostError::Controller(p.name, "already exists".into()));
        }
        let c2 = cores.clone();
        let name = p.name.clone();
        let ctrlr = cores
            .spawn_on(0, move || attach(c2, 0, p))
            .await
            .map_err(|e| HostError::Controller(name.clone(), e.to_string()))??;
        let mut names = Vec::new();
        for b in ctrlr.bdevs() {
            let b: Arc<dyn Bdev> = b;
            names.push(b.name().to_string());
            if let Err(e) = registry.add(b) {
                for n in &names[..names.len() - 1] {
                    let _ = registry.remove(n);
                }
                let c = ctrlr.clone();
                let _ = cores
                    .spawn_on(0, move || async move { c.detach().await })
                    .await;
                return Err(HostError::Controller(name, e.to_string()));
            }
        }
        lock(&self.ctrlrs).insert(name, ctrlr);
        Ok(names)
    }

    /// [`NvmeHost::attach_controller_async`] from a thread that is not a reactor.
    pub fn attach_controller(
        &self,
        cores: &Cores,
        registry: &BdevRegistry,
        p: AttachParams,
    ) -> Result<Vec<String>, HostError> {
        reactor::block_on(self.attach_controller_async(cores, registry, p))
    }

    /// `bdev_nvme_detach_controller`: removes the bdevs from `registry` and disconnects.
    pub async fn detach_controller_async(
        &self,
        registry: &BdevRegistry,
        name: &str,
    ) -> Result<(), HostError> {
        let c = lock(&self.ctrlrs)
            .remove(name)
            .ok_or_else(|| HostError::Controller(name.into(), "does not exist".into()))?;
        for b in c.bdevs() {
            let b: Arc<dyn Bdev> = b;
            let _ = registry.remove(b.name());
        }
        c.detach().await;
        Ok(())
    }

    /// [`NvmeHost::detach_controller_async`] from a thread that is not a reactor.
    pub fn detach_controller(&self, registry: &BdevRegistry, name: &str) -> Result<(), HostError> {
        reactor::block_on(self.detach_controller_async(registry, name))
    }

    /// `bdev_nvme_set_keys`: see [`NvmeController::set_keys`]. Returns how many queue
    /// pairs re-authenticated.
    pub async fn set_keys_async(
        &self,
        name: &str,
        keys: auth::DhchapHostKeys,
    ) -> Result<usize, HostError> {
        let c = self
            .controller(name)
            .ok_or_else(|| HostError::Controller(name.into(), "does not exist".into()))?;
        c.set_keys(keys).await
    }

    /// [`NvmeHost::set_keys_async`] from a thread that is not a reactor.
    pub fn set_keys(&self, name: &str, keys: auth::DhchapHostKeys) -> Result<usize, HostError> {
        reactor::block_on(self.set_keys_async(name, keys))
    }

    /// The controller called `name`.
    pub fn controller(&self, name: &str) -> Option<Arc<NvmeController>> {
        lock(&self.ctrlrs).get(name).cloned()
    }

    /// Every controller.
    pub fn controllers(&self) -> Vec<Arc<NvmeController>> {
        lock(&self.ctrlrs).values().cloned().collect()
    }
}

fn resolve(traddr: &str, trsvcid: &str) -> Result<SocketAddr, HostError> {
    let port: u16 = trsvcid.parse().map_err(|_| HostError::Connect {
        addr: format!("{traddr}:{trsvcid}"),
        reason: "trsvcid is not a port number".into(),
    })?;
    let host = traddr.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| HostError::Connect {
            addr: format!("{traddr}:{trsvcid}"),
            reason: "cannot resolve the address".into(),
        })
}

/// Attaches a controller; runs on core `admin_core` of `cores` (the current one).
pub async fn attach(
    cores: Cores,
    admin_core: usize,
    p: AttachParams,
) -> Result<Arc<NvmeController>, HostError> {
    if !p.trtype.eq_ignore_ascii_case("tcp") {
        return Err(HostError::Controller(
            p.name.clone(),
            format!("transport `{}` is not supported", p.trtype),
        ));
    }
    let addr = resolve(&p.traddr, &p.trsvcid)?;
    let hostid = *Uuid::new_v4().as_bytes();
    let hostnqn = p.hostnqn.clone().unwrap_or_else(|| {
        format!(
            "nqn.2014-08.org.nvmexpress:uuid:{}",
            Uuid::from_bytes(hostid)
        )
    });
    let kato_ms = p.keep_alive_timeout_ms.unwrap_or(10_000);
    let admin_params = |tls: tls::HostTls, concat: u8| QpairParams {
        addr,
        subnqn: p.subnqn.clone(),
        hostnqn: hostnqn.clone(),
        hostid,
        qid: 0,
        queue_depth: 32,
        kato_ms,
        cntlid: 0xffff,
        hdgst: p.hdgst,
        ddgst: p.ddgst,
        in_capsule_len: 0,
        dhchap: p.dhchap.clone(),
        tls,
        concat,
    };
    let mut p = p.clone();
    if p.secure_concat {
        p.tls = concatenate(
            &p,
            admin_params(tls::HostTls::default(), crate::nvme::auth::sc_c::NEWTLSPSK),
        )
        .await?;
    }
    let admin = HostQpair::start(admin_params(p.tls.clone(), 0));
    match init_controller(
        &cores, admin_core, &admin, &p, addr, hostnqn, hostid, kato_ms,
    )
    .await
    {
        Ok(c) => Ok(c),
        Err(e) => {
            admin.close("attach failed");
            Err(e)
        }
    }
}

/// Secure channel concatenation, the host's first step: an admin queue over plain TCP
/// that only connects and authenticates with SC_C NEWTLSPSK (nothing else may go out
/// on it), then closes; the TLS key of the controller's queue pairs is the PSK that
/// generated.
async fn concatenate(p: &AttachParams, bootstrap: QpairParams) -> Result<tls::HostTls, HostError> {
    let fail = |why: String| {
        HostError::Controller(
            p.name.clone(),
            format!("secure channel concatenation: {why}"),
        )
    };
    if p.dhchap.get().is_none() {
        return Err(fail("it needs DH-HMAC-CHAP keys (dhchap_key)".into()));
    }
    if p.tls.is_set() {
        return Err(fail(
            "a TLS key (psk) cannot be given: the TLS PSK is generated".into(),
        ));
    }
    let q = HostQpair::start(bootstrap);
    let r = q.wait_ready().await;
    let generated = q.take_generated();
    q.close("secure channel concatenation: PSK generated; reconnecting with TLS");
    r?;
    let g = generated.ok_or_else(|| {
        fail("the controller did not ask the host to authenticate, so no PSK was generated".into())
    })?;
    tracing::info!(name = %p.name, subnqn = %p.subnqn, suite = g.suite().name(),
        "secure channel concatenation: TLS PSK generated; connecting with TLS");
    Ok(tls::HostTls::generated(g))
}

#[allow(clippy::too_many_arguments)]
async fn init_controller(
    cores: &Cores,
    admin_core: usize,
    admin: &Rc<HostQpair>,
    p: &AttachParams,
    addr: SocketAddr,
    hostnqn: String,
    hostid: [u8; 16],
    kato_ms: u32,
) -> Result<Arc<NvmeController>, HostError> {
    let cntlid = admin.wait_ready().await?;
    let (cqe, _) = admin
        .command(spec::property_get_sqe(0, prop::CAP, true), 0, None)
        .await?;
    let cap = cqe.dw0 as u64 | (cqe.dw1 as u64) << 32;
    let mqes = (cap & 0xffff) as u32 + 1;
    let timeout = Duration::from_millis(((cap >> 24) & 0xff).max(1) * 500);
    // Enable: IOSQES 6 (64 bytes), IOCQES 4 (16 bytes), NVM command set, 4 KiB pages.
    admin
        .command(
            spec::property_set_sqe(0, prop::CC, 0x0046_0001, false),
            0,
            None,
        )
        .await?;
    let start = reactor::now();
    loop {
        let (cqe, _) = admin
            .command(spec::property_get_sqe(0, prop::CSTS, false), 0, None)
            .await?;
        if cqe.dw0 & 2 != 0 {
            return Err(HostError::Controller(
                p.name.clone(),
                "controller fatal status".into(),
            ));
        }
        if cqe.dw0 & 1 != 0 {
            break;
        }
        if reactor::now().since(start) > timeout {
            return Err(HostError::Controller(
                p.name.clone(),
                "CSTS.RDY never came".into(),
            ));
        }
        reactor::sleep(Duration::from_millis(1)).await;
    }
    let (_, data) = admin
        .command(spec::identify_sqe(0, cns::CONTROLLER, 0), 4096, None)
        .await?;
    let ident = IdentifyController::decode(&data)
        .ok_or_else(|| HostError::Protocol("short Identify Controller data".into()))?;
    if ident.cntrltype == cntrltype::DISCOVERY {
        return Err(HostError::Controller(
            p.name.clone(),
            "this is a discovery controller".into(),
        ));
    }
    let want = cores.len() as u32;
    let (cqe, _) = admin
        .command(
            spec::set_features_sqe(0, fid::NUMBER_OF_QUEUES, (want - 1) | (want - 1) << 16),
            0,
            None,
        )
        .await?;
    let num_io_queues = (cqe.dw0 & 0xffff).min(cqe.dw0 >> 16) + 1;
    let _ = admin
        .command(
            spec::set_features_sqe(0, fid::ASYNC_EVENT_CONFIG, 1 << 8),
            0,
            None,
        )
        .await;
    let max_xfer_bytes = if ident.mdts == 0 {
        16 << 20
    } else {
        4096u64 << ident.mdts.min(20)
    };
    let in_capsule_len = (ident.ioccsz.saturating_mul(16)).saturating_sub(64);
    let io_queue_depth = (p.io_queue_depth.unwrap_or(128) as u32)
        .clamp(2, mqes.max(2))
        .min(u16::MAX as u32) as u16;
    let ctrlr = Arc::new(NvmeController {
        name: p.name.clone(),
        id: NEXT_CTRLR_ID.fetch_add(1, Ordering::Relaxed),
        cores: cores.clone(),
        admin_core,
        addr,
        params: p.clone(),
        hostnqn,
        hostid,
        cntlid,
        ident,
        kato_ms,
        max_xfer_bytes,
        in_capsule_len,
        num_io_queues,
        io_queue_depth,
        failed: AtomicBool::new(false),
        detached: AtomicBool::new(false),
        dhchap: Mutex::new(p.dhchap.clone()),
        tls: Mutex::new(p.tls.clone()),
        events: Mutex::new(Vec::new()),
        bdevs: Mutex::new(BTreeMap::new()),
    });
    // Namespaces.
    let (_, list) = admin
        .command(spec::identify_sqe(0, cns::ACTIVE_NS_LIST, 0), 4096, None)
        .await?;
    for nsid in pages::decode_ns_list(&list) {
        if let Some(b) = make_bdev(&ctrlr, admin, nsid).await? {
            lock(&ctrlr.bdevs).insert(nsid, b);
        }
    }
    reactor::local(HostQpairs::default)
        .admin
        .borrow_mut()
        .insert(ctrlr.id, admin.clone());
    reactor::spawn_local(keep_alive_loop(ctrlr.clone(), admin.clone())).detach();
    reactor::spawn_local(aer_loop(ctrlr.clone(), admin.clone())).detach();
    tracing::info!(
        name = %ctrlr.name, %addr, subnqn = %p.subnqn, cntlid, num_io_queues,
        namespaces = lock(&ctrlr.bdevs).len(), "NVMe/TCP controller attached"
    );
    Ok(ctrlr)
}

async fn identify_ns(admin: &HostQpair, nsid: u32) -> Result<IdentifyNamespace, HostError> {
    let (_, data) = admin
        .command(spec::identify_sqe(0, cns::NAMESPACE, nsid), 4096, None)
        .await?;
    IdentifyNamespace::decode(&data)
        .ok_or_else(|| HostError::Protocol("short Identify Namespace data".into()))
}

async fn make_bdev(
    ctrlr: &Arc<NvmeController>,
    admin: &HostQpair,
    nsid: u32,
) -> Result<Option<Arc<NvmeBdev>>, HostError> {
    let ns = identify_ns(admin, nsid).await?;
    if ns.nsze == 0 {
        return Ok(None);
    }
    let Some(bs) = ns.block_size() else {
        tracing::warn!(
            nsid,
            lbads = ns.lbads,
            "namespace with an unusable block size"
        );
        return Ok(None);
    };
    let uuid = match admin
        .command(
            spec::identify_sqe(0, cns::NS_ID_DESCRIPTORS, nsid),
            4096,
            None,
        )
        .await
    {
        Ok((_, d)) => pages::decode_ns_descriptors(&d)
            .into_iter()
            .find(|(t, v)| *t == pages::nidt::UUID && v.len() == 16)
            .and_then(|(_, v)| Uuid::from_slice(&v).ok()),
        Err(_) => None,
    }
    .or_else(|| (ns.nguid != [0; 16]).then(|| Uuid::from_bytes(ns.nguid)));
    let name = format!("{}n{}", ctrlr.name, nsid);
    let props = BdevProps::new(&name, uuid, bs, ns.nsze, "NVMe disk")
        .map_err(|e| HostError::Controller(ctrlr.name.clone(), e.to_string()))?
        .with_read_only(ns.nsattr & 1 != 0)
        .with_write_cache(ctrlr.ident.vwc & 1 != 0);
    Ok(Some(Arc::new(NvmeBdev {
        props,
        ctrlr: ctrlr.clone(),
        nsid,
        unmap_zeroes: ns.dlfeat & 7 == 1,
    })))
}

async fn keep_alive_loop(ctrlr: Arc<NvmeController>, admin: Rc<HostQpair>) {
    if ctrlr.kato_ms == 0 {
        return;
    }
    let every = Duration::from_millis((ctrlr.kato_ms as u64 / 2).max(10));
    loop {
        reactor::sleep(every).await;
        if ctrlr.detached.load(Ordering::Acquire) {
            return;
        }
        let sqe = Sqe::new(admin_opc::KEEP_ALIVE, 0);
        if let Err(e) = admin.command(sqe, 0, None).await {
            // A keep alive in flight when we detach fails with the admin queue; that
            // is our own doing, not a lost controller.
            if ctrlr.detached.load(Ordering::Acquire) {
                return;
            }
            tracing::warn!(name = %ctrlr.name, error = %e, "keep alive failed: controller lost");
            ctrlr.failed.store(true, Ordering::Release);
            return;
        }
    }
}

async fn aer_loop(ctrlr: Arc<NvmeController>, admin: Rc<HostQpair>) {
    loop {
        let sqe = Sqe::new(admin_opc::ASYNC_EVENT_REQUEST, 0);
        let dw0 = match admin.command(sqe, 0, None).await {
            Ok((cqe, _)) => cqe.dw0,
            Err(e) => {
                if !ctrlr.detached.load(Ordering::Acquire) {
                    tracing::debug!(name = %ctrlr.name, error = %e, "asynchronous events stop");
                    ctrlr.failed.store(true, Ordering::Release);
                }
                return;
            }
        };
        let log_page = (dw0 >> 16) as u8;
        let mut ev = AsyncEvent {
            dw0,
            event_type: (dw0 & 7) as u8,
            info: (dw0 >> 8) as u8,
            log_page,
            changed_nsids: Vec::new(),
        };
        if log_page == lid::CHANGED_NS_LIST {
            match admin
                .command(
                    spec::get_log_page_sqe(0, lid::CHANGED_NS_LIST, 0xffff_ffff, 4096, 0),
                    4096,
                    None,
                )
                .await
            {
                Ok((_, d)) => ev.changed_nsids = pages::decode_ns_list(&d),
                Err(e) => tracing::warn!(error = %e, "cannot read the changed namespace list"),
            }
            for &nsid in &ev.changed_nsids {
                let known = lock(&ctrlr.bdevs).get(&nsid).cloned();
                match (known, identify_ns(&admin, nsid).await) {
                    (Some(b), Ok(ns)) if ns.nsze > 0 => {
                        let me: &dyn Bdev = &*b;
                        if me.num_blocks() != ns.nsze {
                            tracing::info!(bdev = me.name(), blocks = ns.nsze, "namespace resized");
                            b.props.set_num_blocks(ns.nsze);
                        }
                    }
                    (Some(b), _) => {
                        let me: &dyn Bdev = &*b;
                        tracing::info!(bdev = me.name(), "namespace gone");
                    }
                    (None, Ok(ns)) if ns.nsze > 0 => {
                        tracing::info!(name = %ctrlr.name, nsid, "new namespace reported");
                    }
                    _ => {}
                }
            }
        }
        tracing::info!(name = %ctrlr.name, dw0 = format_args!("{dw0:#x}"), nsids = ?ev.changed_nsids, "asynchronous event");
        lock(&ctrlr.events).push(ev);
    }
}

/// Reads the discovery log of the discovery controller at `traddr`:`trsvcid` on a
/// fresh connection. With `tls` (a PSK) the connection does TLS 1.3 first, offering the
/// identity of `hostnqn` and the discovery NQN, as to a listener that requires a secure
/// channel (TREQ); without, a secure listener closes it at its first bytes.
pub async fn discover(
    traddr: &str,
    trsvcid: &str,
    hostnqn: &str,
    tls: tls::HostTls,
) -> Result<Vec<pages::DiscoveryEntry>, HostError> {
    let addr = resolve(traddr, trsvcid)?;
    let q = HostQpair::start(QpairParams {
        addr,
        subnqn: crate::nvme::spec::DISCOVERY_NQN.into(),
        hostnqn: hostnqn.into(),
        hostid: *Uuid::new_v4().as_bytes(),
        qid: 0,
        queue_depth: 32,
        kato_ms: 0,
        cntlid: 0xffff,
        hdgst: false,
        ddgst: false,
        in_capsule_len: 0,
        dhchap: auth::DhchapHostKeys::default(),
        tls,
        concat: 0,
    });
    let r = async {
        q.wait_ready().await?;
        q.command(
            spec::property_set_sqe(0, prop::CC, 0x0046_0001, false),
            0,
            None,
        )
        .await?;
        let (_, d) = q
            .command(
                spec::get_log_page_sqe(0, lid::DISCOVERY, 0, 4096, 0),
                4096,
                None,
            )
            .await?;
        let (_, numrec, _) = pages::decode_discovery_log(&d)
            .ok_or_else(|| HostError::Protocol("short discovery log".into()))?;
        let len = (1024 * (numrec as usize + 1)).div_ceil(4) * 4;
        let (_, d) = q
            .command(
                spec::get_log_page_sqe(0, lid::DISCOVERY, 0, len as u32, 0),
                len,
                None,
            )
            .await?;
        let (_, _, entries) = pages::decode_discovery_log(&d)
            .ok_or_else(|| HostError::Protocol("short discovery log".into()))?;
        Ok(entries)
    }
    .await;
    q.close("discovery done");
    r
}
