//! A running target: the reactors, the bdevs, the pools and their disks, and (as they
//! are configured) the front ends. `tessera serve`, `tessera bench --config` and the
//! JSON-RPC methods all drive one.
//!
//! The target is a cheap, thread-safe handle. Its methods are `async` and `Send`: call
//! them from a reactor task (the RPC server does) or from a plain thread with
//! [`crate::reactor::block_on`] (the CLI does). Pools are examined like SPDK's lvstores:
//! when a bdev carrying a pool label is created and the pool's other bdevs are present,
//! the pool is opened and its disks become bdevs — so a config naming only the base
//! bdev restores everything.

use crate::bdev::error::ErrorBdev;
use crate::bdev::malloc::MallocBdev;
use crate::bdev::null::NullBdev;
use crate::bdev::nvme::{AttachParams, NvmeHost};
use crate::bdev::qos::{QosLimits, QosUpdate};
use crate::bdev::uring::UringBdev;
use crate::bdev::{Bdev, BdevError, BdevRegistry, IoBuf};
use crate::config::{
    BdevConfig, CloneConfig, Config, DiskConfig, LvolStep, PoolConfig, QosConfig, Size,
    SnapshotConfig,
};
use crate::frontend::nbd::{NbdConfig, NbdExport, NbdExportConfig, NbdExportInfo, NbdServer};
use crate::frontend::nvmf::{NamespaceParams, NvmfTarget};
use crate::reactor::{Cores, ReactorConfig, ReactorError, ReactorSet};
use crate::vdisk::meta::directory::DiskKind;
use crate::vdisk::meta::label::{Label, Role};
use crate::vdisk::{CowPolicy, Pool, PoolOptions, VDisk, VdiskError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Why a target operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Nbd(#[from] crate::frontend::nbd::NbdError),
    #[error(transparent)]
    Nvmf(#[from] crate::frontend::nvmf::NvmfError),
    #[error(transparent)]
    Nvme(#[from] crate::bdev::nvme::HostError),
    /// Not a `source`: the message holds it (an error chain would print it twice).
    #[error("reactors: {0}")]
    Reactor(ReactorError),
    #[error(transparent)]
    Bdev(#[from] BdevError),
    #[error(transparent)]
    Vdisk(#[from] VdiskError),
    #[error(transparent)]
    Key(#[from] crate::keyring::KeyError),
    #[error(transparent)]
    Qos(#[from] crate::bdev::qos::QosError),
    #[error("pool `{0}` does not exist")]
    NoSuchPool(String),
    #[error("{0}")]
    Invalid(String),
    /// An operation refused with an errno (`msg` says why).
    #[error("{msg}")]
    Refused { errno: i32, msg: String },
}

impl From<ReactorError> for TargetError {
    fn from(e: ReactorError) -> TargetError {
        TargetError::Reactor(e)
    }
}

struct PoolEntry {
    pool: Pool,
    cfg: PoolConfig,
}

struct Inner {
    /// Keys TLS and authentication name.
    keyring: Arc<crate::keyring::Keyring>,
    nbd: Mutex<Option<NbdServer>>,
    nvmf: Mutex<Option<NvmfTarget>>,
    nvme_host: NvmeHost,
    /// How each initiator controller was attached (for save_config).
    nvme_params: Mutex<BTreeMap<String, AttachParams>>,
    /// The bdev behind each NVMe-oF namespace: (nqn, nsid) → bdev name.
    nvmf_namespaces: Mutex<BTreeMap<(String, u32), String>>,
    reactors: Mutex<Option<ReactorSet>>,
    cores: Cores,
    bdevs: BdevRegistry,
    base_configs: Mutex<BTreeMap<String, BdevConfig>>,
    pools: Mutex<BTreeMap<String, PoolEntry>>,
    /// Labelled bdevs whose pool is not complete yet.
    examining: Mutex<Vec<(Arc<dyn Bdev>, Label)>>,
    config: Config,
    /// Bytes per second each pool's splits and decouples may copy (0: no cap).
    job_limit: std::sync::atomic::AtomicU64,
    /// Claims held on external snapshots, and the last adjustment made to them.
    esnap_claims: Mutex<EsnapClaims>,
    /// Adjustments of the external snapshots' claims started so far.
    esnap_syncs: std::sync::atomic::AtomicU64,
}

/// The claims the target holds on external snapshots.
#[derive(Default)]
struct EsnapClaims {
    /// (bdev, claimant), one per pool reading it.
    held: Vec<(String, String)>,
    /// The adjustment that set them (its number in `Inner::esnap_syncs`): an older one
    /// finishing later, with what it saw then, changes nothing.
    applied: u64,
}

/// How the claim on an external snapshot starts (a reader, never a writer).
const ESNAP_CLAIM: &str = "external snapshot clones";

/// A running target.
#[derive(Clone)]
pub struct Target {
    inner: Arc<Inner>,
}

/// How long the cores have to apply a change of rate limits.
const QOS_TIMEOUT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Target {
    /// Starts the reactors of `config` and builds everything it describes.
    pub fn start(config: Config) -> Result<Target, TargetError> {
        let reactors = ReactorSet::start(ReactorConfig::new(config.cores.clone(), config.idle))?;
        let target = Target {
            inner: Arc::new(Inner {
                keyring: Arc::new(crate::keyring::Keyring::default()),
                nbd: Mutex::new(None),
                nvmf: Mutex::new(None),
                nvme_host: NvmeHost::new(),
                nvme_params: Mutex::new(BTreeMap::new()),
                nvmf_namespaces: Mutex::new(BTreeMap::new()),
                cores: reactors.cores().clone(),
                reactors: Mutex::new(Some(reactors)),
                bdevs: BdevRegistry::new(),
                base_configs: Mutex::new(BTreeMap::new()),
                pools: Mutex::new(BTreeMap::new()),
                examining: Mutex::new(Vec::new()),
                config: config.clone(),
                job_limit: std::sync::atomic::AtomicU64::new(0),
                esnap_claims: Mutex::new(EsnapClaims::default()),
                esnap_syncs: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        if let Err(e) = crate::reactor::block_on(target.apply(&config)) {
            target.shutdown();
            return Err(e);
        }
        Ok(target)
    }

    /// Creates what `config` lists and does not exist yet.
    pub async fn apply(&self, config: &Config) -> Result<(), TargetError> {
        for k in &config.keys {
            self.inner.keyring.add_file_key(&k.name, &k.path)?;
        }
        for b in &config.bdevs {
            self.create_bdev(b).await?;
        }
        for n in &config.nvme {
            self.attach_nvme(n.clone()).await?;
        }
        for p in &config.pools {
            if lock(&self.inner.pools).contains_key(&p.name) {
                continue; // opened by examine
            }
            self.create_pool(p).await?;
        }
        // Disks, snapshots and clones, each once what it needs exists: its origin, or
        // the lvol of another pool an external snapshot's clone reads.
        for step in config.lvol_order() {
            match step {
                LvolStep::Disk(d) => {
                    let pool = self.pool(&d.pool)?;
                    match pool.disk(&d.name).await {
                        Ok(existing) => {
                            let want = d.size.0 / pool.block_size() as u64;
                            let have = (existing.clone() as Arc<dyn Bdev>).num_blocks();
                            // Size 0: an external snapshot's clone of the bdev's size.
                            if want != have && d.size.0 > 0 {
                                tracing::warn!(disk = %d.name, have, want, "disk exists with another size; left as it is");
                            }
                        }
                        Err(VdiskError::NotFound(_)) => {
                            self.create_disk(d).await?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                LvolStep::Snapshot(s) => {
                    if !self.exists_beside(&s.disk, &s.name).await {
                        self.snapshot_with_uuids(
                            vec![(s.disk.clone(), s.name.clone(), s.uuid)],
                            Duration::from_secs(5),
                        )
                        .await?;
                    }
                }
                LvolStep::Clone(c) => {
                    if !self.exists_beside(&c.snapshot, &c.name).await {
                        self.create_clone(c).await?;
                    }
                }
            }
        }
        if let Some(nbd) = &config.nbd {
            self.nbd_start(&nbd.listen, nbd.limits(), nbd.tls_settings())?;
            for e in &nbd.exports {
                self.nbd_add_export(&e.name, &e.bdev, e.read_only, &e.description)?;
            }
        }
        if let Some(nvmf) = &config.nvmf {
            let t = NvmfTarget::from_config(
                self.inner.cores.clone(),
                self.inner.bdevs.clone(),
                self.inner.keyring.clone(),
                nvmf,
            )?;
            for s in &nvmf.subsystems {
                for (i, ns) in s.namespaces.iter().enumerate() {
                    let nsid = ns.nsid.unwrap_or(i as u32 + 1);
                    self.claim_namespace(&s.nqn, nsid, &ns.bdev)?;
                }
            }
            *lock(&self.inner.nvmf) = Some(t);
        }
        for q in &config.qos {
            if !q.limits().is_unlimited() {
                self.set_qos(&q.bdev, QosUpdate::set_all(q.limits()))
                    .await?;
            }
        }
        Ok(())
    }

    /// Changes the rate limits of the bdev `name` designates (SPDK's
    /// `bdev_set_qos_limit`) on every core; returns the limits now in force.
    pub async fn set_qos(&self, name: &str, update: QosUpdate) -> Result<QosLimits, TargetError> {
        let bdev = self.inner.bdevs.get(name)?;
        self.set_qos_of(bdev, update).await
    }

    /// [`Target::set_qos`] for a bdev at hand (one `tessera bench` made, registered or
    /// not).
    pub async fn set_qos_of(
        &self,
        bdev: Arc<dyn Bdev>,
        update: QosUpdate,
    ) -> Result<QosLimits, TargetError> {
        let cores = self.inner.cores.clone();
        self.on_core0(move || async move {
            crate::bdev::qos::set_limits(&cores, &bdev, update, QOS_TIMEOUT).await
        })
        .await?
        .map_err(TargetError::from)
    }

    /// True if a disk `name` exists in the pool of the disk `origin` (or, when `origin`
    /// is not there, if `name` designates a bdev).
    async fn exists_beside(&self, origin: &str, name: &str) -> bool {
        match self.disk(origin).await {
            Ok((pool, _)) => pool.disk(name).await.is_ok(),
            Err(_) => self.inner.bdevs.contains(name),
        }
    }

    /// Attaches a remote NVMe/TCP controller; its namespaces become bdevs (examined for
    /// pools like any other).
    pub async fn attach_nvme(&self, mut p: AttachParams) -> Result<Vec<String>, TargetError> {
        p.dhchap = self.dhchap_host_keys(&p)?;
        p.tls = self.tls_host_key(&p)?;
        let names = self
            .inner
            .nvme_host
            .attach_controller_async(&self.inner.cores, &self.inner.bdevs, p.clone())
            .await?;
        lock(&self.inner.nvme_params).insert(p.name.clone(), p);
        for n in &names {
            let b = self.inner.bdevs.get(n)?;
            self.examine(b).await?;
        }
        self.sync_esnap_claims().await;
        Ok(names)
    }

    /// `bdev_nvme_set_keys`: controller `name` authenticates with the keyring keys
    /// `dhchap_key` (and `dhchap_ctrlr_key`, bidirectional) from now on, and each of its
    /// connected queue pairs re-authenticates with them at once, without disconnecting
    /// (none with no keys: they are cleared). As SPDK, the keys are set even when a
    /// re-authentication fails; the failure names the queue and the controller's reason.
    pub async fn set_nvme_keys(
        &self,
        name: &str,
        dhchap_key: Option<String>,
        dhchap_ctrlr_key: Option<String>,
    ) -> Result<usize, TargetError> {
        if dhchap_ctrlr_key.is_some() && dhchap_key.is_none() {
            return Err(TargetError::Invalid(
                "dhchap_ctrlr_key: a DH-HMAC-CHAP controller key requires dhchap_key".into(),
            ));
        }
        let Some(mut p) = lock(&self.inner.nvme_params).get(name).cloned() else {
            return Err(crate::bdev::nvme::HostError::Controller(
                name.into(),
                "does not exist".into(),
            )
            .into());
        };
        p.dhchap_key = dhchap_key;
        p.dhchap_ctrlr_key = dhchap_ctrlr_key;
        let keys = self.dhchap_host_keys(&p)?;
        p.dhchap = keys.clone();
        // save_config writes the names only; the keys stay in the keyring.
        if let Some(saved) = lock(&self.inner.nvme_params).get_mut(name) {
            *saved = p;
        }
        Ok(self.inner.nvme_host.set_keys_async(name, keys).await?)
    }

    /// The DH-HMAC-CHAP keys `p` names, read from the keyring and parsed (errors name
    /// the key, never its material).
    fn dhchap_host_keys(
        &self,
        p: &AttachParams,
    ) -> Result<crate::bdev::nvme::auth::DhchapHostKeys, TargetError> {
        use crate::bdev::nvme::auth::{DhchapHostKeys, HostKeys};
        let load = |name: &str| -> Result<crate::nvme::dhchap::DhchapKey, TargetError> {
            let secret = self.inner.keyring.read(name)?;
            crate::nvme::dhchap::DhchapKey::parse(secret.expose())
                .map_err(|e| TargetError::Invalid(format!("DH-HMAC-CHAP key `{name}`: {e}")))
        };
        let Some(name) = p.dhchap_key.as_deref() else {
            return Ok(DhchapHostKeys::default());
        };
        let key = load(name)?;
        let ctrlr_key = p.dhchap_ctrlr_key.as_deref().map(load).transpose()?;
        Ok(DhchapHostKeys::new(HostKeys { key, ctrlr_key }))
    }

    /// The TLS PSK `p` names, read from the keyring and parsed (errors name the key,
    /// never its material).
    fn tls_host_key(
        &self,
        p: &AttachParams,
    ) -> Result<crate::bdev::nvme::tls::HostTls, TargetError> {
        if p.secure_concat {
            if p.psk.is_some() {
                return Err(TargetError::Invalid(
                    "secure_concat: the TLS PSK is generated by DH-HMAC-CHAP; do not give psk too"
                        .into(),
                ));
            }
            if p.dhchap_key.is_none() {
                return Err(TargetError::Invalid(
                    "secure_concat needs dhchap_key (the PSK is generated by DH-HMAC-CHAP)".into(),
                ));
            }
        }
        let Some(name) = p.psk.as_deref() else {
            if p.psk_identity_version.is_some() {
                return Err(TargetError::Invalid(
                    "psk_identity_version needs psk".into(),
                ));
            }
            return Ok(Default::default());
        };
        let version = p.psk_identity_version.unwrap_or(0);
        if version > 1 {
            return Err(TargetError::Invalid(format!(
                "psk_identity_version: {version} is not 0 or 1"
            )));
        }
        let secret = self.inner.keyring.read(name)?;
        let psk = crate::nvme::tls::ConfiguredPsk::parse(secret.expose())
            .map_err(|e| TargetError::Invalid(format!("TLS PSK `{name}`: {e}")))?;
        Ok(crate::bdev::nvme::tls::HostTls::new(psk, version))
    }

    /// Detaches a remote controller (refused while one of its bdevs is in use).
    pub async fn detach_nvme(&self, name: &str) -> Result<(), TargetError> {
        if let Some(c) = self.inner.nvme_host.controller(name) {
            for b in c.bdevs() {
                let b: Arc<dyn Bdev> = b;
                if let Some(by) = self.inner.bdevs.claims(b.name()).first() {
                    return Err(BdevError::Claimed {
                        name: b.name().to_string(),
                        by: by.clone(),
                    }
                    .into());
                }
            }
        }
        self.inner
            .nvme_host
            .detach_controller_async(&self.inner.bdevs, name)
            .await?;
        lock(&self.inner.nvme_params).remove(name);
        Ok(())
    }

    /// The attached NVMe/TCP controllers, by name, as they were attached.
    pub fn nvme_controllers(&self) -> Vec<AttachParams> {
        lock(&self.inner.nvme_params).values().cloned().collect()
    }

    /// The bdev names of the NVMe/TCP controller `name` (empty if it does not exist).
    pub fn nvme_controller_bdevs(&self, name: &str) -> Vec<String> {
        self.inner
            .nvme_host
            .controller(name)
            .map(|c| {
                c.bdevs()
                    .into_iter()
                    .map(|b| {
                        let b: Arc<dyn Bdev> = b;
                        b.name().to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How base bdev `name` was created (`None` for disks, NVMe namespaces and unknown
    /// names).
    pub fn base_bdev_config(&self, name: &str) -> Option<BdevConfig> {
        lock(&self.inner.base_configs).get(name).cloned()
    }

    /// Starts the NBD server on `listen` (`IP:PORT`) with connection limits `limits` and
    /// TLS settings `tls`.
    pub fn nbd_start(
        &self,
        listen: &str,
        limits: crate::frontend::nbd::NbdLimits,
        tls: crate::frontend::nbd::NbdTlsSettings,
    ) -> Result<std::net::SocketAddr, TargetError> {
        let mut nbd = lock(&self.inner.nbd);
        if let Some(s) = nbd.as_ref() {
            return Err(TargetError::Invalid(format!(
                "the NBD server already listens on {}",
                s.local_addr()
            )));
        }
        let addr: std::net::SocketAddr = listen
            .parse()
            .map_err(|_| TargetError::Invalid(format!("listen: `{listen}` is not IP:PORT")))?;
        let s = NbdServer::start_with_tls(&self.inner.cores, addr, Vec::new(), limits, tls)?;
        // `qemu:dirty-bitmap:<name>` names a bdev (a snapshot) by its registry name.
        let bdevs = self.inner.bdevs.clone();
        s.set_bdev_lookup(Arc::new(move |name: &str| bdevs.get(name).ok()));
        let a = s.local_addr();
        *nbd = Some(s);
        Ok(a)
    }

    /// Stops the NBD server (its exports go with it).
    pub fn nbd_stop(&self) -> Result<(), TargetError> {
        let s = lock(&self.inner.nbd)
            .take()
            .ok_or_else(|| TargetError::Invalid("the NBD server is not running".into()))?;
        for e in s.exports() {
            self.inner
                .bdevs
                .release(&e.bdev, &format!("NBD export `{}`", e.name));
        }
        s.stop();
        Ok(())
    }

    /// Exports bdev `bdev` over NBD as `name`.
    pub fn nbd_add_export(
        &self,
        name: &str,
        bdev: &str,
        read_only: bool,
        description: &str,
    ) -> Result<NbdExportInfo, TargetError> {
        let b = self.inner.bdevs.get(bdev)?;
        if !read_only && self.is_external_snapshot(&b) {
            return Err(TargetError::Refused {
                errno: libc::EPERM,
                msg: format!(
                    "bdev `{}` is an external snapshot, read by lvols: export it read-only",
                    b.name()
                ),
            });
        }
        let nbd = lock(&self.inner.nbd);
        let s = nbd.as_ref().ok_or_else(|| {
            TargetError::Invalid("the NBD server is not running (nbd_server_start)".into())
        })?;
        let info = s.add_export(
            NbdExport::new(name, b.clone())
                .with_read_only(read_only)
                .with_description(description),
        )?;
        self.inner
            .bdevs
            .claim(b.name(), &format!("NBD export `{name}`"))?;
        Ok(info)
    }

    /// Removes an NBD export; its connections finish what is in flight and close.
    pub fn nbd_remove_export(&self, name: &str) -> Result<(), TargetError> {
        let nbd = lock(&self.inner.nbd);
        let s = nbd
            .as_ref()
            .ok_or_else(|| TargetError::Invalid("the NBD server is not running".into()))?;
        let bdev = s
            .exports()
            .into_iter()
            .find(|e| e.name == name)
            .map(|e| e.bdev);
        let _closing = s.remove_export(name)?;
        if let Some(b) = bdev {
            self.inner
                .bdevs
                .release(&b, &format!("NBD export `{name}`"));
        }
        Ok(())
    }

    /// The NBD exports.
    pub fn nbd_exports(&self) -> Vec<NbdExportInfo> {
        lock(&self.inner.nbd)
            .as_ref()
            .map(|s| s.exports())
            .unwrap_or_default()
    }

    /// The NBD server's statistics, if it runs.
    pub fn nbd_stats(&self) -> Option<crate::frontend::nbd::NbdStats> {
        lock(&self.inner.nbd).as_ref().map(|s| s.stats())
    }

    /// The NBD server's address, if it runs.
    pub fn nbd_addr(&self) -> Option<std::net::SocketAddr> {
        lock(&self.inner.nbd).as_ref().map(|s| s.local_addr())
    }

    /// The NVMe-oF target, created (without a transport) on first use.
    pub fn nvmf(&self) -> NvmfTarget {
        lock(&self.inner.nvmf)
            .get_or_insert_with(|| {
                NvmfTarget::new(
                    self.inner.cores.clone(),
                    self.inner.bdevs.clone(),
                    self.inner.keyring.clone(),
                )
            })
            .clone()
    }

    fn claim_namespace(&self, nqn: &str, nsid: u32, bdev: &str) -> Result<(), TargetError> {
        if let Ok(b) = self.inner.bdevs.get(bdev)
            && self.is_external_snapshot(&b)
        {
            return Err(TargetError::Refused {
                errno: libc::EPERM,
                msg: format!(
                    "bdev `{}` is an external snapshot, read by lvols: a namespace could write it",
                    b.name()
                ),
            });
        }
        let key = self
            .inner
            .bdevs
            .claim(bdev, &format!("NVMe-oF subsystem `{nqn}` namespace {nsid}"))?;
        lock(&self.inner.nvmf_namespaces).insert((nqn.to_string(), nsid), key);
        Ok(())
    }

    fn release_namespace(&self, nqn: &str, nsid: u32) {
        if let Some(b) = lock(&self.inner.nvmf_namespaces).remove(&(nqn.to_string(), nsid)) {
            self.inner
                .bdevs
                .release(&b, &format!("NVMe-oF subsystem `{nqn}` namespace {nsid}"));
        }
    }

    /// `nvmf_subsystem_add_ns`, claiming the bdev.
    pub fn nvmf_add_ns(&self, nqn: &str, ns: NamespaceParams) -> Result<u32, TargetError> {
        let bdev = ns.bdev_name.clone();
        let nsid = self.nvmf().nvmf_subsystem_add_ns(nqn, ns)?;
        self.claim_namespace(nqn, nsid, &bdev)?;
        Ok(nsid)
    }

    /// `nvmf_subsystem_remove_ns`, releasing the bdev.
    pub fn nvmf_remove_ns(&self, nqn: &str, nsid: u32) -> Result<(), TargetError> {
        self.nvmf().nvmf_subsystem_remove_ns(nqn, nsid)?;
        self.release_namespace(nqn, nsid);
        Ok(())
    }

    /// `nvmf_delete_subsystem`, releasing its bdevs.
    pub fn nvmf_delete_subsystem(&self, nqn: &str) -> Result<(), TargetError> {
        self.nvmf().nvmf_delete_subsystem(nqn)?;
        let keys: Vec<(String, u32)> = lock(&self.inner.nvmf_namespaces)
            .keys()
            .filter(|(n, _)| n == nqn)
            .cloned()
            .collect();
        for (n, id) in keys {
            self.release_namespace(&n, id);
        }
        Ok(())
    }

    /// Grows or shrinks a disk and tells the hosts that see it.
    pub async fn resize_disk(&self, name: &str, size_bytes: u64) -> Result<(), TargetError> {
        let (pool, d) = self.disk(name).await?;
        pool.resize_disk(&d.disk_name(), size_bytes).await?;
        if let Some(t) = lock(&self.inner.nvmf).as_ref() {
            t.notify_bdev_resized((d as Arc<dyn Bdev>).name());
        }
        Ok(())
    }

    /// The cores the target runs on.
    pub fn cores(&self) -> &Cores {
        &self.inner.cores
    }

    /// The bdevs of the target.
    /// The keys TLS and authentication name.
    pub fn keyring(&self) -> &crate::keyring::Keyring {
        &self.inner.keyring
    }

    pub fn bdevs(&self) -> &BdevRegistry {
        &self.inner.bdevs
    }

    /// The configuration the target started from.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Result<Pool, TargetError> {
        lock(&self.inner.pools)
            .get(name)
            .map(|e| e.pool.clone())
            .ok_or_else(|| TargetError::NoSuchPool(name.to_string()))
    }

    /// Every pool, by name.
    pub fn pools(&self) -> Vec<Pool> {
        lock(&self.inner.pools)
            .values()
            .map(|e| e.pool.clone())
            .collect()
    }

    /// The pool holding the disk `disk` designates (a name the registry resolves).
    pub async fn pool_of(&self, disk: &str) -> Result<Pool, TargetError> {
        Ok(self.disk(disk).await?.0)
    }

    /// The virtual disk `name` designates (its `pool/disk` alias, its UUID, or its name
    /// where no other pool has a disk so named), and its pool.
    /// Found from the disk itself, with no trip to a pool's controller: an RPC on a
    /// disk under load waits for its controller once, for the work it asks for.
    pub async fn disk(&self, name: &str) -> Result<(Pool, Arc<VDisk>), TargetError> {
        let bdev = self.inner.bdevs.get(name)?;
        let disk = bdev.into_any().and_then(|a| a.downcast::<VDisk>().ok());
        let pool = disk
            .as_ref()
            .and_then(|d| self.pools().into_iter().find(|p| p.holds(d)));
        match (pool, disk) {
            (Some(p), Some(d)) => Ok((p, d)),
            _ => Err(TargetError::Invalid(format!(
                "`{name}` is not a virtual disk"
            ))),
        }
    }

    /// Creates a base bdev, registers it, and examines it for a pool.
    pub async fn create_bdev(&self, cfg: &BdevConfig) -> Result<Arc<dyn Bdev>, TargetError> {
        if self.inner.bdevs.contains(cfg.name()) {
            return Err(BdevError::Exists(cfg.name().to_string()).into());
        }
        let bdev = create_bdev(cfg, &self.inner.bdevs)?;
        self.inner.bdevs.add(bdev.clone())?;
        if let BdevConfig::Error { base, .. } = cfg {
            self.inner
                .bdevs
                .claim(base, &format!("error bdev `{}`", cfg.name()))?;
        }
        lock(&self.inner.base_configs).insert(cfg.name().to_string(), cfg.clone());
        tracing::info!(
            bdev = bdev.name(),
            product = bdev.product_name(),
            num_blocks = bdev.num_blocks(),
            block_size = bdev.block_size(),
            "bdev created"
        );
        self.examine(bdev.clone()).await?;
        self.sync_esnap_claims().await;
        Ok(bdev)
    }

    /// `bdev_null_resize`: null bdev `name` becomes `new_size_mib` MiB; it may not
    /// shrink (SPDK refuses that too). Returns the new size in blocks.
    pub fn resize_null_bdev(&self, name: &str, new_size_mib: u64) -> Result<u64, TargetError> {
        let b = self.inner.bdevs.get(name)?;
        let bad = |reason: String| BdevError::InvalidParam {
            name: name.to_string(),
            field: "new_size",
            reason,
        };
        if !matches!(
            self.base_bdev_config(b.name()),
            Some(BdevConfig::Null { .. })
        ) {
            return Err(bad("not a null bdev".into()).into());
        }
        let bs = b.block_size() as u64;
        let current_mib = (b.num_blocks() * bs) >> 20;
        let blocks = new_size_mib
            .checked_mul(1 << 20)
            .map(|bytes| bytes / bs)
            .filter(|&n| n > 0)
            .ok_or_else(|| bad(format!("{new_size_mib} MiB is not a size")))?;
        if new_size_mib < current_mib {
            return Err(bad(format!(
                "{new_size_mib} MiB is smaller than the current {current_mib} MiB (a null bdev \
                 does not shrink)"
            ))
            .into());
        }
        self.set_base_bdev_blocks(&b, blocks)?;
        if let Some(BdevConfig::Null { size, .. }) =
            lock(&self.inner.base_configs).get_mut(b.name())
        {
            *size = crate::config::Size(blocks * bs);
        }
        Ok(blocks)
    }

    /// `bdev_uring_rescan` / `bdev_aio_rescan`: reads again the size of the file or
    /// device behind bdev `name`. Returns its size in blocks.
    pub fn rescan_bdev(&self, name: &str) -> Result<u64, TargetError> {
        let b = self.inner.bdevs.get(name)?;
        if !matches!(
            self.base_bdev_config(b.name()),
            Some(BdevConfig::Uring { .. })
        ) {
            return Err(BdevError::NotFound(name.to_string()).into());
        }
        let bytes = match b.backing_bytes() {
            Some(r) => r?,
            None => return Err(BdevError::NotFound(name.to_string()).into()),
        };
        let blocks = bytes / b.block_size() as u64;
        self.set_base_bdev_blocks(&b, blocks)?;
        Ok(blocks)
    }

    /// Sets base bdev `b`'s size and tells its claimants, as SPDK's resize event does:
    /// the NVMe/TCP namespaces it backs raise a namespace-attribute-changed event; a
    /// pool on it is told nothing (it grows with `bdev_lvol_grow_lvstore`), and the
    /// log says so. A bdev in use does not shrink (SPDK: -EBUSY): what uses it may
    /// hold data past the new end.
    fn set_base_bdev_blocks(&self, b: &Arc<dyn Bdev>, blocks: u64) -> Result<(), TargetError> {
        let old = b.num_blocks();
        if blocks == old {
            return Ok(());
        }
        let claims = self.inner.bdevs.claims(b.name());
        if blocks < old && !claims.is_empty() {
            return Err(BdevError::Claimed {
                name: b.name().to_string(),
                by: format!(
                    "{} (it would shrink from {old} to {blocks} blocks)",
                    claims.join(", ")
                ),
            }
            .into());
        }
        if blocks == 0 {
            return Err(BdevError::InvalidParam {
                name: b.name().to_string(),
                field: "num_blocks",
                reason: "the backing file or device is smaller than a block".into(),
            }
            .into());
        }
        b.props().set_num_blocks(blocks);
        tracing::info!(
            bdev = b.name(),
            old_blocks = old,
            num_blocks = blocks,
            "bdev resized"
        );
        if let Some(t) = lock(&self.inner.nvmf).as_ref() {
            t.notify_bdev_resized(b.name());
        }
        for c in claims.iter().filter(|c| c.starts_with("pool ")) {
            tracing::info!(bdev = b.name(), claimant = %c,
                "the pool's bdev grew: bdev_lvol_grow_lvstore gives the pool its new space");
        }
        Ok(())
    }

    /// `bdev_lvol_grow_lvstore`: pool `pool` takes the space its last bdev gained.
    pub async fn grow_pool(&self, pool: &Pool) -> Result<crate::vdisk::grow::Grown, TargetError> {
        Ok(pool.grow().await?)
    }

    /// Deletes a base bdev nobody uses.
    pub async fn delete_bdev(&self, name: &str) -> Result<(), TargetError> {
        // An external snapshot whose last reader was split from it (in the background,
        // `tessera_split_start`) is let go first.
        self.sync_esnap_claims().await;
        let b = self.inner.bdevs.get(name)?;
        if b.product_name() == "Logical Volume" {
            return Err(TargetError::Invalid(format!(
                "`{name}` is a virtual disk; delete it with its pool's methods"
            )));
        }
        self.inner.bdevs.remove(name)?;
        if let Some(BdevConfig::Error { base, .. }) = lock(&self.inner.base_configs).remove(name) {
            self.inner
                .bdevs
                .release(&base, &format!("error bdev `{name}`"));
        }
        lock(&self.inner.examining).retain(|(bd, _)| bd.name() != name);
        Ok(())
    }

    async fn on_core0<T: Send + 'static, F, Fut>(&self, f: F) -> Result<T, TargetError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        self.inner
            .cores
            .spawn_on(0, f)
            .await
            .map_err(|e| TargetError::Invalid(e.to_string()))
    }

    /// Opens the pool `bdev` belongs to once all of its bdevs are present.
    async fn examine(&self, bdev: Arc<dyn Bdev>) -> Result<(), TargetError> {
        let b2 = bdev.clone();
        let label = match self
            .on_core0(move || async move { crate::vdisk::load::read_label(&b2).await })
            .await?
        {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(bdev = bdev.name(), error = %e, "examine: unreadable label");
                return Ok(());
            }
        };
        let members: Vec<Arc<dyn Bdev>> = {
            let mut ex = lock(&self.inner.examining);
            ex.push((bdev, label.clone()));
            let members: Vec<&(Arc<dyn Bdev>, Label)> = ex
                .iter()
                .filter(|(_, l)| l.pool_uuid == label.pool_uuid)
                .collect();
            let data = members
                .iter()
                .filter(|(_, l)| l.role != Role::Metadata)
                .count() as u32;
            let needs_meta = members
                .iter()
                .any(|(_, l)| l.role == Role::Data && l.container_index == 0);
            let has_meta = members.iter().any(|(_, l)| l.role == Role::Metadata);
            if data < label.container_count || (needs_meta && !has_meta) || (data == 0) {
                tracing::info!(pool = %label.pool_name, have = data, need = label.container_count,
                    "examine: waiting for the pool's other bdevs");
                return Ok(());
            }
            let m = members.iter().map(|(b, _)| b.clone()).collect();
            ex.retain(|(_, l)| l.pool_uuid != label.pool_uuid);
            m
        };
        let names: Vec<String> = members.iter().map(|b| b.name().to_string()).collect();
        let cores = self.inner.cores.clone();
        let pool = Pool::open(&cores, 0, members.clone()).await?;
        let cfg = PoolConfig {
            name: pool.name().to_string(),
            bdevs: names.clone(),
            metadata_bdev: None,
            segment_size: Size(pool.segment_bytes()),
            metadata_size: None,
            cow_policy: CowPolicy::Redirect,
            controller_core: None,
        };
        self.adopt_pool(pool, cfg).await
    }

    /// Caps the bytes per second every pool's splits and decouples copy (each pool's
    /// jobs together; 0: no cap), pools opened later included.
    pub async fn set_job_limit(&self, bytes_per_sec: u64) -> Result<(), TargetError> {
        self.inner
            .job_limit
            .store(bytes_per_sec, std::sync::atomic::Ordering::Relaxed);
        for p in self.pools() {
            p.set_job_limit(bytes_per_sec).await?;
        }
        Ok(())
    }

    /// Registers an opened pool, claims its bdevs and registers its disks as bdevs.
    async fn adopt_pool(&self, pool: Pool, mut cfg: PoolConfig) -> Result<(), TargetError> {
        let cap = self
            .inner
            .job_limit
            .load(std::sync::atomic::Ordering::Relaxed);
        if cap > 0 {
            pool.set_job_limit(cap).await?;
        }
        let bdevs = pool.bdevs();
        let data = bdevs.len() - usize::from(cfg.metadata_bdev.is_some());
        cfg.bdevs = bdevs
            .iter()
            .take(data)
            .map(|b| b.name().to_string())
            .collect();
        for b in &bdevs {
            self.inner
                .bdevs
                .claim(b.name(), &format!("pool `{}`", pool.name()))?;
        }
        for d in pool.disks().await? {
            let dd: Arc<dyn Bdev> = d;
            if let Err(e) = self.inner.bdevs.add(dd.clone()) {
                tracing::error!(pool = pool.name(), disk = dd.name(), error = %e, "disk not registered");
            }
        }
        // A split or decouple ending in the background may let an external snapshot
        // go: its claim is dropped then, not at the next RPC that looks.
        let target = Arc::downgrade(&self.inner);
        let cores = self.inner.cores.clone();
        pool.on_external_released(move || {
            let Some(inner) = target.upgrade() else {
                return;
            };
            let t = Target { inner };
            drop(cores.spawn_on(0, move || async move { t.sync_esnap_claims().await }));
        });
        lock(&self.inner.pools).insert(pool.name().to_string(), PoolEntry { pool, cfg });
        self.sync_esnap_claims().await;
        Ok(())
    }

    /// Formats a new pool (refusing bdevs that already hold one).
    pub async fn create_pool(&self, cfg: &PoolConfig) -> Result<Pool, TargetError> {
        if lock(&self.inner.pools).contains_key(&cfg.name) {
            return Err(VdiskError::Exists(format!("pool `{}`", cfg.name)).into());
        }
        let containers = cfg
            .bdevs
            .iter()
            .map(|n| self.inner.bdevs.get(n))
            .collect::<Result<Vec<_>, _>>()?;
        for b in containers.iter() {
            let claims = self.inner.bdevs.claims(b.name());
            if let Some(c) = claims.first() {
                return Err(BdevError::Claimed {
                    name: b.name().to_string(),
                    by: c.clone(),
                }
                .into());
            }
        }
        let meta = cfg
            .metadata_bdev
            .as_ref()
            .map(|n| self.inner.bdevs.get(n))
            .transpose()?;
        let opts = PoolOptions {
            name: cfg.name.clone(),
            segment_bytes: cfg.segment_size.0,
            metadata_bytes: cfg.metadata_size.map(|s| s.0),
            cow_policy: cfg.cow_policy,
        };
        let core = cfg.controller_core.unwrap_or(0);
        let pool = Pool::create(&self.inner.cores, core, containers, meta, opts).await?;
        // These bdevs are no longer waiting for examine.
        lock(&self.inner.examining).retain(|(b, _)| !cfg.bdevs.contains(&b.name().to_string()));
        self.adopt_pool(pool.clone(), cfg.clone()).await?;
        Ok(pool)
    }

    /// Closes a pool, wipes its labels and releases its bdevs. Refused while one of its
    /// disks is in use (exported).
    pub async fn delete_pool(&self, name: &str) -> Result<(), TargetError> {
        let pool = self.pool(name)?;
        let disks = pool.disks().await?;
        for d in &disks {
            let n = (d.clone() as Arc<dyn Bdev>).name().to_string();
            if let Some(by) = self.inner.bdevs.claims(&n).first() {
                return Err(BdevError::Claimed {
                    name: n,
                    by: by.clone(),
                }
                .into());
            }
        }
        for d in &disks {
            let _ = self.inner.bdevs.remove((d.clone() as Arc<dyn Bdev>).name());
        }
        pool.close().await?;
        for b in pool.bdevs() {
            let b2 = b.clone();
            let _ = self
                .on_core0(move || async move {
                    crate::vdisk::load::write_bytes(&b2, 0, IoBuf::zeroed(4096)).await
                })
                .await;
            self.inner
                .bdevs
                .release(b.name(), &format!("pool `{name}`"));
        }
        lock(&self.inner.pools).remove(name);
        self.sync_esnap_claims().await;
        Ok(())
    }

    /// Creates a disk and registers it as a bdev (named by its UUID, with the alias
    /// `pool/disk`; the pool refuses a name it already has).
    pub async fn create_disk(&self, cfg: &DiskConfig) -> Result<Arc<VDisk>, TargetError> {
        let pool = self.pool(&cfg.pool)?;
        self.refuse_taken_uuid(cfg.uuid)?;
        let d = match &cfg.external_snapshot {
            None => {
                pool.create_disk_with_uuid(&cfg.name, cfg.size.0, cfg.thin, cfg.uuid)
                    .await?
            }
            Some(x) => {
                // A clone of the bdev (checked and claimed as `bdev_lvol_clone_bdev`
                // does), then its own size.
                let ext = self.inner.bdevs.get(x)?;
                self.refuse_written(&ext)?;
                let d = pool.clone_bdev_with_uuid(ext, &cfg.name, cfg.uuid).await?;
                let have = (d.clone() as Arc<dyn Bdev>).num_blocks() * pool.block_size() as u64;
                if cfg.size.0 > 0 && cfg.size.0 != have {
                    pool.resize_disk(&cfg.name, cfg.size.0).await?;
                }
                self.inner.bdevs.add(d.clone())?;
                self.sync_esnap_claims().await;
                if let Some(p) = cfg.cow_policy {
                    pool.set_cow_policy(&cfg.name, p).await?;
                }
                if cfg.read_only {
                    pool.set_read_only(&cfg.name, true).await?;
                }
                return Ok(d);
            }
        };
        if let Some(p) = cfg.cow_policy {
            pool.set_cow_policy(&cfg.name, p).await?;
        }
        if cfg.read_only {
            pool.set_read_only(&cfg.name, true).await?;
        }
        self.inner.bdevs.add(d.clone())?;
        Ok(d)
    }

    /// Deletes a disk, snapshot or clone (refused while exported).
    pub async fn delete_disk(&self, name: &str) -> Result<(), TargetError> {
        let (pool, d) = self.disk(name).await?;
        let b: Arc<dyn Bdev> = d.clone();
        if let Some(by) = self.inner.bdevs.claims(b.name()).first() {
            return Err(BdevError::Claimed {
                name: d.alias(),
                by: by.clone(),
            }
            .into());
        }
        pool.delete_disk(&d.disk_name()).await?;
        let _ = self.inner.bdevs.remove(b.name());
        self.sync_esnap_claims().await;
        Ok(())
    }

    /// Renames the disk `name` designates to `new_name` in its pool, durably. Its bdev
    /// keeps its name (the UUID) and takes the alias `pool/new_name`; exports of it go
    /// on serving it (SPDK does the same: the alias changes, the bdev stays).
    pub async fn rename_disk(&self, name: &str, new_name: &str) -> Result<(), TargetError> {
        let (pool, d) = self.disk(name).await?;
        pool.rename_disk(&d.disk_name(), new_name).await?;
        Ok(())
    }

    /// Renames pool `name` to `new_name`, durably; the aliases of its disks follow.
    pub async fn rename_pool(&self, name: &str, new_name: &str) -> Result<(), TargetError> {
        let pool = self.pool(name)?;
        if name == new_name {
            return Ok(());
        }
        if lock(&self.inner.pools).contains_key(new_name) {
            return Err(VdiskError::Exists(format!("pool `{new_name}`")).into());
        }
        pool.rename(new_name).await?;
        let mut pools = lock(&self.inner.pools);
        if let Some(mut e) = pools.remove(name) {
            e.cfg.name = new_name.to_string();
            pools.insert(new_name.to_string(), e);
        }
        drop(pools);
        for b in pool.bdevs() {
            self.inner.bdevs.rename_claim(
                b.name(),
                &format!("pool `{name}`"),
                &format!("pool `{new_name}`"),
            );
        }
        Ok(())
    }

    /// Snapshots (origin, snapshot name) pairs at one point in time.
    pub async fn snapshot(
        &self,
        pairs: Vec<(String, String)>,
        limit: Duration,
    ) -> Result<Vec<Arc<VDisk>>, TargetError> {
        let pairs = pairs.into_iter().map(|(o, s)| (o, s, None)).collect();
        self.snapshot_with_uuids(pairs, limit).await
    }

    /// [`Target::snapshot`], each snapshot with the UUID of its triple when one is
    /// given: refused when any bdev of the target (a disk of any pool, a malloc bdev,
    /// a namespace) already has it, as bdevs are known by their UUIDs.
    pub async fn snapshot_with_uuids(
        &self,
        pairs: Vec<(String, String, Option<uuid::Uuid>)>,
        limit: Duration,
    ) -> Result<Vec<Arc<VDisk>>, TargetError> {
        let Some((first, _, _)) = pairs.first() else {
            return Err(TargetError::Invalid("nothing to snapshot".into()));
        };
        for u in pairs.iter().filter_map(|p| p.2) {
            if let Some(b) = self.inner.bdevs.list().iter().find(|b| b.uuid() == u) {
                return Err(VdiskError::UuidTaken {
                    uuid: u,
                    name: b.display_name(),
                }
                .into());
            }
        }
        let pool = self.pool_of(first).await?;
        let mut named = Vec::new();
        for (o, s, u) in &pairs {
            let (p, d) = self.disk(o).await?;
            if p.uuid() != pool.uuid() {
                return Err(TargetError::Invalid(format!(
                    "`{o}` is in pool `{}`, not `{}`: a consistency group lives in one pool",
                    p.name(),
                    pool.name()
                )));
            }
            named.push((d.disk_name(), s.clone(), *u));
        }
        let snaps = pool.snapshot_with_uuids(named, limit).await?;
        for s in &snaps {
            self.inner.bdevs.add(s.clone())?;
        }
        Ok(snaps)
    }

    /// Creates a clone as its configuration says.
    async fn create_clone(&self, c: &CloneConfig) -> Result<(), TargetError> {
        let d = self.clone_disk(&c.snapshot, &c.name).await?;
        if c.cow_policy.is_some() || c.read_only {
            let pool = self.pool_of((d as Arc<dyn Bdev>).name()).await?;
            if let Some(p) = c.cow_policy {
                pool.set_cow_policy(&c.name, p).await?;
            }
            if c.read_only {
                pool.set_read_only(&c.name, true).await?;
            }
        }
        Ok(())
    }

    /// Clones a snapshot.
    pub async fn clone_disk(&self, snapshot: &str, name: &str) -> Result<Arc<VDisk>, TargetError> {
        let (pool, s) = self.disk(snapshot).await?;
        let c = pool.clone_disk(&s.disk_name(), name).await?;
        self.inner.bdevs.add(c.clone())?;
        Ok(c)
    }

    /// Creates `name` in lvstore `pool`, a thin clone of the bdev `bdev` used as an
    /// external snapshot (SPDK's `bdev_lvol_clone_bdev`). The bdev must have no writer
    /// (a pool, a writable NBD export, an NVMe-oF namespace, an error bdev, a copy): it
    /// is read by the clone and kept from writers and from deletion while a disk reads
    /// through to it, as SPDK claims it read-only-many. The clone takes `uuid`, or a
    /// new UUID.
    pub async fn clone_bdev(
        &self,
        bdev: &str,
        pool: &str,
        name: &str,
        uuid: Option<uuid::Uuid>,
    ) -> Result<Arc<VDisk>, TargetError> {
        let ext = self.inner.bdevs.get(bdev)?;
        let pool = self.pool(pool)?;
        self.refuse_written(&ext)?;
        self.refuse_taken_uuid(uuid)?;
        let c = pool.clone_bdev_with_uuid(ext, name, uuid).await?;
        self.inner.bdevs.add(c.clone())?;
        self.sync_esnap_claims().await;
        Ok(c)
    }

    /// Refuses `uuid`, asked for a new lvol, if a bdev has it already (before the lvol
    /// is made: its bdev could not be registered).
    fn refuse_taken_uuid(&self, uuid: Option<uuid::Uuid>) -> Result<(), TargetError> {
        let Some(u) = uuid else {
            return Ok(());
        };
        if self.inner.bdevs.list().iter().any(|b| b.uuid() == u) {
            return Err(VdiskError::Exists(format!("bdev UUID {u}")).into());
        }
        Ok(())
    }

    /// Refuses `ext` as an external snapshot if anything may write it (SPDK refuses a
    /// bdev it cannot claim read-only with EPERM).
    fn refuse_written(&self, ext: &Arc<dyn Bdev>) -> Result<(), TargetError> {
        match self.writers_of(ext).first() {
            Some(w) => Err(TargetError::Refused {
                errno: libc::EPERM,
                msg: format!(
                    "bdev `{}` is used by {w}, which may write it; an external snapshot must be read-only",
                    ext.name()
                ),
            }),
            None => Ok(()),
        }
    }

    /// Makes the lvol `lvol` read through to the bdev `bdev` (SPDK's
    /// `bdev_lvol_set_parent_bdev`); the bdev is checked and claimed as for
    /// [`Target::clone_bdev`].
    pub async fn set_parent_bdev(&self, lvol: &str, bdev: &str) -> Result<(), TargetError> {
        let (pool, d) = self.disk(lvol).await?;
        let ext = self.inner.bdevs.get(bdev)?;
        self.refuse_written(&ext)?;
        pool.set_external_parent(&d.disk_name(), ext).await?;
        self.sync_esnap_claims().await;
        Ok(())
    }

    /// Makes the lvol `lvol` a clone of the snapshot `parent` of the same lvstore
    /// (SPDK's `bdev_lvol_set_parent`). The external snapshot it read through to, if any,
    /// is let go when nothing else reads it.
    pub async fn set_parent(&self, lvol: &str, parent: &str) -> Result<(), TargetError> {
        let (pool, d) = self.disk(lvol).await?;
        let (ppool, s) = self.disk(parent).await?;
        if ppool.uuid() != pool.uuid() {
            return Err(TargetError::Invalid(format!(
                "`{lvol}` (lvstore `{}`) and `{parent}` (lvstore `{}`) must belong to the same lvstore",
                pool.name(),
                ppool.name()
            )));
        }
        pool.set_parent(&d.disk_name(), &s.disk_name()).await?;
        self.sync_esnap_claims().await;
        Ok(())
    }

    /// The claims on `b` of users that may write it (all but external-snapshot clones
    /// and read-only NBD exports).
    fn writers_of(&self, b: &Arc<dyn Bdev>) -> Vec<String> {
        let ro_exports: Vec<String> = self
            .nbd_exports()
            .into_iter()
            .filter(|e| e.read_only && e.bdev == b.name())
            .map(|e| format!("NBD export `{}`", e.name))
            .collect();
        self.inner
            .bdevs
            .claims(b.name())
            .into_iter()
            .filter(|c| !c.starts_with(ESNAP_CLAIM) && !ro_exports.contains(c))
            .collect()
    }

    /// True if `b` is an external snapshot some disk reads through to.
    fn is_external_snapshot(&self, b: &Arc<dyn Bdev>) -> bool {
        self.inner
            .bdevs
            .claims(b.name())
            .iter()
            .any(|c| c.starts_with(ESNAP_CLAIM))
    }

    /// Hands every pool the external snapshots its disks name that are now bdevs of
    /// the target (found by UUID), and claims each one used for the pools that read it.
    /// Called when pools open and bdevs appear: a degraded disk becomes usable then.
    pub async fn sync_esnap_claims(&self) {
        let ticket = self
            .inner
            .esnap_syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let want_claims: Vec<(String, String)> = {
            let mut out = Vec::new();
            for p in self.pools() {
                let Ok(bases) = p.external_bases().await else {
                    continue;
                };
                for (u, name, present) in bases {
                    let found = self.inner.bdevs.get(&u.to_string());
                    let Ok(b) = found else {
                        tracing::warn!(pool = p.name(), external = %u, name = %name,
                            "external snapshot not found: its clones are degraded until it appears");
                        continue;
                    };
                    if !present
                        && let Ok(disks) = p.attach_external(b.clone()).await
                        && !disks.is_empty()
                    {
                        tracing::info!(
                            pool = p.name(),
                            bdev = b.name(),
                            ?disks,
                            "external snapshot present"
                        );
                    }
                    out.push((
                        b.name().to_string(),
                        format!("{ESNAP_CLAIM} of lvstore `{}`", p.name()),
                    ));
                }
            }
            out
        };
        let mut claims = lock(&self.inner.esnap_claims);
        if claims.applied > ticket {
            // A later adjustment looked at the pools after this one began.
            return;
        }
        for (b, by) in claims.held.iter() {
            if !want_claims.contains(&(b.clone(), by.clone())) {
                self.inner.bdevs.release(b, by);
            }
        }
        for (b, by) in &want_claims {
            if !claims.held.contains(&(b.clone(), by.clone())) {
                let _ = self.inner.bdevs.claim(b, by);
            }
        }
        claims.held = want_claims;
        claims.applied = ticket;
    }

    /// The running state as a configuration: starting from it gives the same target.
    pub async fn running_config(&self) -> Result<Config, TargetError> {
        let mut cfg = Config {
            cores: self.inner.config.cores.clone(),
            idle: self.inner.config.idle,
            ..Config::default()
        };
        cfg.keys = self
            .inner
            .keyring
            .list()
            .into_iter()
            .map(|k| crate::config::KeyConfig {
                name: k.name,
                path: k.path,
            })
            .collect();
        cfg.bdevs = lock(&self.inner.base_configs).values().cloned().collect();
        // Error bdevs after their bases.
        cfg.bdevs
            .sort_by_key(|b| matches!(b, BdevConfig::Error { .. }));
        let pools: Vec<(Pool, PoolConfig)> = lock(&self.inner.pools)
            .values()
            .map(|e| (e.pool.clone(), e.cfg.clone()))
            .collect();
        cfg.nvme = lock(&self.inner.nvme_params).values().cloned().collect();
        if let Some(s) = lock(&self.inner.nbd).as_ref() {
            let mut n = NbdConfig {
                listen: s.local_addr().to_string(),
                max_connections: s.limits().max_connections,
                max_connections_per_host: s.limits().max_connections_per_host,
                max_buffer_bytes: s.limits().max_buffer_bytes,
                buffer_wait_timeout_ms: s.limits().buffer_wait_timeout_ms,
                exports: s
                    .exports()
                    .into_iter()
                    .map(|e| NbdExportConfig {
                        name: e.name,
                        bdev: e.bdev,
                        read_only: e.read_only,
                        description: e.description,
                    })
                    .collect(),
                ..NbdConfig::default()
            };
            // File names only: the key's material is never read back into a config.
            n.set_tls_settings(s.tls_settings().clone());
            cfg.nbd = Some(n);
        }
        if let Some(t) = lock(&self.inner.nvmf).as_ref() {
            cfg.nvmf = Some(t.to_config());
        }
        // Rate limits, a disk's by its alias (as exports name it, below).
        cfg.qos = self
            .inner
            .bdevs
            .list()
            .iter()
            .filter(|b| !b.qos_limits().is_unlimited())
            .map(|b| QosConfig::new(b.display_name(), b.qos_limits()))
            .collect();
        // Exports name a disk by its alias: a disk's UUID is not in an SPDK file (its
        // bdev_lvol_create has no place for it), its `pool/disk` alias is.
        let alias = |n: &mut String| {
            if let Ok(b) = self.inner.bdevs.get(n) {
                *n = b.display_name();
            }
        };
        if let Some(n) = cfg.nbd.as_mut() {
            n.exports.iter_mut().for_each(|e| alias(&mut e.bdev));
        }
        if let Some(n) = cfg.nvmf.as_mut() {
            for s in n.subsystems.iter_mut() {
                s.namespaces.iter_mut().for_each(|ns| alias(&mut ns.bdev));
            }
        }
        for (pool, pc) in pools {
            // Origins by their `pool/disk` aliases: another pool may have a disk of the
            // same name.
            let alias = |d: &String| format!("{}/{d}", pool.name());
            cfg.pools.push(pc);
            let list = pool.list().await?;
            // Origins before their snapshots, snapshots before their clones: creation
            // order is id order.
            let mut list = list;
            list.sort_by_key(|d| d.id);
            for d in &list {
                match d.kind {
                    DiskKind::Snapshot => {
                        if let Some(o) = snapshot_origin(&list, d) {
                            cfg.snapshots.push(SnapshotConfig {
                                name: d.name.clone(),
                                disk: alias(o),
                                uuid: Some(d.uuid),
                            });
                        }
                    }
                    DiskKind::Clone if clone_origin(&list, d).is_some() => {
                        cfg.clones.push(CloneConfig {
                            name: d.name.clone(),
                            snapshot: clone_origin(&list, d).map(alias).unwrap_or_default(),
                            read_only: d.read_only,
                            cow_policy: Some(d.cow_policy),
                        });
                    }
                    _ => cfg.disks.push(DiskConfig {
                        name: d.name.clone(),
                        pool: pool.name().to_string(),
                        size: Size(d.size_bytes),
                        // An esnap clone is thin (an lvol with snapshots given one by
                        // bdev_lvol_set_parent_bdev may have been made thick).
                        thin: d.thin || d.external.is_some(),
                        uuid: Some(d.uuid),
                        read_only: d.read_only,
                        cow_policy: Some(d.cow_policy),
                        // Reading through to an external bdev (an esnap clone, or an
                        // lvol given one): made again as its clone. Its snapshots and
                        // their clones, above, inherit it. The bdev by its name now, an
                        // lvol (of another pool) by its `pool/disk` alias: the file
                        // makes it again, with a new UUID where it keeps none.
                        external_snapshot: d.external.as_ref().map(|x| {
                            self.inner.bdevs.get(&x.uuid.to_string()).map_or_else(
                                |_| x.name.clone(),
                                |b| {
                                    if b.product_name() == "Logical Volume" {
                                        b.display_name()
                                    } else {
                                        b.name().to_string()
                                    }
                                },
                            )
                        }),
                    }),
                }
            }
        }
        Ok(cfg)
    }

    /// Stops the front ends, commits and closes every pool, and stops the reactors.
    pub fn shutdown(&self) {
        if let Some(s) = lock(&self.inner.nbd).take() {
            s.stop();
        }
        if let Some(t) = lock(&self.inner.nvmf).take() {
            t.shutdown();
        }
        for c in self.inner.nvme_host.controllers() {
            let _ = crate::reactor::block_on(
                self.inner
                    .nvme_host
                    .detach_controller_async(&self.inner.bdevs, c.name()),
            );
        }
        for p in self.pools() {
            if let Err(e) = crate::reactor::block_on(p.close()) {
                tracing::error!(pool = p.name(), error = %e, "closing the pool failed");
            }
        }
        lock(&self.inner.pools).clear();
        if let Some(mut r) = lock(&self.inner.reactors).take() {
            r.shutdown();
        }
    }
}

/// The disk snapshot `s` was taken of. A snapshot takes over its origin's parent and
/// becomes the origin's parent, so the origin is the child created before it; when a
/// later snapshot of the same origin was put in between, it is that snapshot's origin.
/// (Clones of `s` are children created after it.)
fn snapshot_origin<'a>(
    list: &'a [crate::vdisk::DiskInfo],
    s: &crate::vdisk::DiskInfo,
) -> Option<&'a String> {
    let mut cur = s;
    for _ in 0..=list.len() {
        let children: Vec<&crate::vdisk::DiskInfo> = list
            .iter()
            .filter(|d| cur.children.contains(&d.name))
            .collect();
        if let Some(o) = children.iter().find(|d| d.id < s.id) {
            return Some(&o.name);
        }
        cur = children
            .into_iter()
            .find(|d| d.kind == DiskKind::Snapshot)?;
    }
    None
}

/// The snapshot clone `c` was made from: its nearest ancestor older than it (snapshots
/// taken of the clone later sit in between).
fn clone_origin<'a>(
    list: &'a [crate::vdisk::DiskInfo],
    c: &crate::vdisk::DiskInfo,
) -> Option<&'a String> {
    let mut parent = c.parent.as_ref()?;
    for _ in 0..=list.len() {
        let p = list.iter().find(|d| &d.name == parent)?;
        if p.id < c.id {
            return Some(&p.name);
        }
        parent = p.parent.as_ref()?;
    }
    None
}

/// Builds a base bdev from its configuration (`error` bdevs look their base up in
/// `registry`).
pub fn create_bdev(cfg: &BdevConfig, registry: &BdevRegistry) -> Result<Arc<dyn Bdev>, BdevError> {
    let blocks = |name: &str, size: u64, bs: u32| {
        if bs == 0 || !size.is_multiple_of(bs as u64) {
            return Err(BdevError::InvalidParam {
                name: name.to_string(),
                field: "size",
                reason: format!("{size} bytes is not a multiple of the block size {bs}"),
            });
        }
        Ok(size / bs as u64)
    };
    Ok(match cfg {
        BdevConfig::Malloc {
            name,
            size,
            block_size,
            uuid,
        } => MallocBdev::create(name, blocks(name, size.0, *block_size)?, *block_size, *uuid)?,
        BdevConfig::Null {
            name,
            size,
            block_size,
            uuid,
        } => NullBdev::create(name, blocks(name, size.0, *block_size)?, *block_size, *uuid)?,
        BdevConfig::Uring {
            name,
            path,
            size,
            block_size,
            uuid,
            options,
        } => UringBdev::create(
            name,
            path,
            *block_size,
            size.map(|s| s.0),
            *uuid,
            options.clone(),
        )?,
        BdevConfig::Error {
            name,
            base,
            volatile_cache,
        } => ErrorBdev::create(name, registry.get(base)?, *volatile_cache)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error printed as a chain of causes (as `tessera` prints it on exit) says each
    /// thing once: a wrapped pool or bdev error is not its own cause too.
    #[test]
    fn wrapped_errors_print_once_as_a_chain() {
        let e = TargetError::from(VdiskError::HoldsPool {
            bdev: "m0".into(),
            pool: "p0".into(),
            uuid: uuid::Uuid::nil(),
        });
        let printed = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            printed,
            "bdev `m0` already holds pool `p0` (00000000-0000-0000-0000-000000000000); delete \
             that pool first"
        );
        let e = TargetError::from(BdevError::NotFound("m9".into()));
        let printed = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(printed.matches("m9").count(), 1, "{printed}");
        // Every error whose message holds its cause (the replication and metrics ones
        // included): printed as a chain, the cause's text appears once.
        let cause = || std::io::Error::other("the-cause");
        let meta = crate::vdisk::meta::MetaError::NoLabel {
            what: "the-cause".into(),
        };
        let bdev_io = || BdevError::Io {
            name: "b0".into(),
            path: "/x".into(),
            cause: cause(),
        };
        let errors: Vec<anyhow::Error> = vec![
            TargetError::from(VdiskError::Meta(meta)).into(),
            TargetError::from(VdiskError::Bdev(bdev_io())).into(),
            TargetError::from(bdev_io()).into(),
            crate::frontend::nvmf::NvmfError::Bdev(bdev_io()).into(),
            crate::frontend::nvmf::NvmfError::Listen {
                addr: "a".into(),
                cause: cause(),
            }
            .into(),
            crate::frontend::nbd::NbdError::Io(cause()).into(),
            crate::frontend::nbd::NbdError::Bind {
                addr: "127.0.0.1:1".parse().unwrap(),
                cause: cause(),
            }
            .into(),
            crate::reactor::ReactorError::Poll(cause()).into(),
            crate::reactor::ReactorError::Pin {
                core: 0,
                cpu: 0,
                cause: cause(),
            }
            .into(),
            crate::config::ConfigError::Read {
                file: "f".into(),
                cause: cause(),
            }
            .into(),
            crate::rpc::client::ClientError::Connect {
                path: "p".into(),
                cause: cause(),
            }
            .into(),
            crate::rpc::server::RpcServerError::Io {
                path: "p".into(),
                cause: cause(),
            }
            .into(),
            crate::rpc::metrics::MetricsError::Bind {
                addr: "a".into(),
                cause: cause(),
            }
            .into(),
            crate::replicate::ReplicateError::Io {
                what: "w",
                cause: cause(),
            }
            .into(),
            crate::replicate::ReplicateError::from(crate::replicate::stream::StreamError::Io(
                cause(),
            ))
            .into(),
            crate::replicate::ReplicateError::from(
                crate::replicate::nbd_client::NbdClientError::Connect {
                    addr: "a".into(),
                    cause: cause(),
                },
            )
            .into(),
        ];
        for e in errors {
            let printed = format!("{e:#}");
            assert_eq!(printed.matches("the-cause").count(), 1, "{printed}");
        }
    }
}
