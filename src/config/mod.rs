//! The configuration: the whole target, declaratively — reactors, base bdevs, remote
//! NVMe/TCP controllers, pools, virtual disks, snapshots and clones, and the NBD and
//! NVMe-oF front ends. A running target is started from one and can describe itself as
//! one.
//!
//! Two formats read into (and are written from) the same [`Config`]:
//!
//! - [`yaml`]: tessera's YAML (`tessera serve --config x.yaml`, `tessera_save_config`).
//! - [`spdk_json`]: SPDK's JSON configuration, both ways (`--config x.json`,
//!   `save_config`).
//!
//! [`Config::load`] tells the two apart. Both are checked by the same validation, and
//! every error names the file, the line and the field.
//!
//! This module uses the layers below it (bdev, vdisk, frontend, reactor) for their
//! option types, and neither the target nor the RPC server: those call into it.

pub mod spdk_json;
pub mod yaml;

use crate::bdev::nvme::AttachParams;
use crate::bdev::uring::UringOptions;
use crate::frontend::nbd::NbdConfig;
use crate::frontend::nvmf::NvmfConfig;
use crate::reactor::{CoreList, IdlePolicy};
use crate::vdisk::CowPolicy;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::{Path, PathBuf};

/// A size in bytes, written as a number or with a unit (`8GiB`, `512M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Size(pub u64);

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::util::format_size(self.0))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(u64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(n) => Ok(Size(n)),
            Repr::Text(t) => crate::util::parse_size(&t)
                .map(Size)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn default_block_size() -> u32 {
    4096
}

/// A base bdev to create at start.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BdevConfig {
    /// RAM disk.
    Malloc {
        name: String,
        size: Size,
        block_size: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        uuid: Option<uuid::Uuid>,
    },
    /// No data; any size.
    Null {
        name: String,
        size: Size,
        block_size: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        uuid: Option<uuid::Uuid>,
    },
    /// A file or block device through io_uring. A missing file is created sparse with
    /// `size`.
    Uring {
        name: String,
        path: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        size: Option<Size>,
        #[serde(skip_serializing_if = "Option::is_none")]
        block_size: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        uuid: Option<uuid::Uuid>,
        #[serde(skip_serializing_if = "is_default")]
        options: UringOptions,
    },
    /// Fault injection over another bdev.
    Error {
        name: String,
        base: String,
        volatile_cache: bool,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RamFields {
    name: String,
    size: Size,
    #[serde(default = "default_block_size")]
    block_size: u32,
    #[serde(default)]
    uuid: Option<uuid::Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UringFields {
    name: String,
    path: PathBuf,
    #[serde(default)]
    size: Option<Size>,
    #[serde(default)]
    block_size: Option<u32>,
    #[serde(default)]
    uuid: Option<uuid::Uuid>,
    #[serde(default)]
    options: UringOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorFields {
    name: String,
    base: String,
    #[serde(default)]
    volatile_cache: bool,
}

/// Deserialises `value` as `T`, prefixing errors with the path of the failing field.
fn fields<T: serde::de::DeserializeOwned, E: serde::de::Error>(
    value: serde_yaml_ng::Value,
) -> Result<T, E> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner
            .split(" at line ")
            .next()
            .unwrap_or(&inner)
            .to_string();
        E::custom(if path.is_empty() || path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        })
    })
}

impl<'de> Deserialize<'de> for BdevConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_yaml_ng::Value::deserialize(d)?;
        let map = v
            .as_mapping_mut()
            .ok_or_else(|| D::Error::custom("a bdev is a mapping with a `type` field"))?;
        let ty = map
            .remove("type")
            .ok_or_else(|| D::Error::missing_field("type"))?;
        // YAML reads a bare `null` as the null value: that is the null bdev here.
        let ty = match &ty {
            serde_yaml_ng::Value::Null => "null".to_string(),
            t => t
                .as_str()
                .ok_or_else(|| D::Error::custom("type: must be malloc, null, uring or error"))?
                .to_string(),
        };
        Ok(match ty.as_str() {
            "malloc" | "null" => {
                let f: RamFields = fields(v)?;
                if ty == "malloc" {
                    BdevConfig::Malloc {
                        name: f.name,
                        size: f.size,
                        block_size: f.block_size,
                        uuid: f.uuid,
                    }
                } else {
                    BdevConfig::Null {
                        name: f.name,
                        size: f.size,
                        block_size: f.block_size,
                        uuid: f.uuid,
                    }
                }
            }
            "uring" | "aio" => {
                let f: UringFields = fields(v)?;
                BdevConfig::Uring {
                    name: f.name,
                    path: f.path,
                    size: f.size,
                    block_size: f.block_size,
                    uuid: f.uuid,
                    options: f.options,
                }
            }
            "error" => {
                let f: ErrorFields = fields(v)?;
                BdevConfig::Error {
                    name: f.name,
                    base: f.base,
                    volatile_cache: f.volatile_cache,
                }
            }
            other => {
                return Err(D::Error::custom(format!(
                    "type: `{other}` is not one of malloc, null, uring, error"
                )));
            }
        })
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl BdevConfig {
    /// The bdev's name.
    pub fn name(&self) -> &str {
        match self {
            BdevConfig::Malloc { name, .. }
            | BdevConfig::Null { name, .. }
            | BdevConfig::Uring { name, .. }
            | BdevConfig::Error { name, .. } => name,
        }
    }
}

fn default_cores() -> CoreList {
    CoreList::first(1)
}

fn default_segment_size() -> Size {
    Size(1 << 20)
}

fn yes() -> bool {
    true
}

/// A pool of storage containers (SPDK: an lvstore).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// The data containers (bdev names), in order.
    pub bdevs: Vec<String>,
    /// A separate, faster bdev for the metadata (as dm-thin allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_bdev: Option<String>,
    /// Segment size: a power of two from 64 KiB to 64 MiB.
    #[serde(default = "default_segment_size")]
    pub segment_size: Size,
    /// Metadata space on the first container (default: 1/1024 of the pool, ≥ 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_size: Option<Size>,
    /// Default copy-on-write policy of the pool's disks.
    #[serde(default)]
    pub cow_policy: CowPolicy,
    /// The core that runs the pool's controller (default: the first core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_core: Option<usize>,
}

/// A virtual disk (SPDK: an lvol).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub name: String,
    pub pool: String,
    pub size: Size,
    /// Allocate on first write (default), or allocate and zero every segment now.
    #[serde(default = "yes")]
    pub thin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cow_policy: Option<CowPolicy>,
    /// The bdev the disk reads through to where it holds nothing of its own (an
    /// external snapshot's clone, SPDK's `bdev_lvol_clone_bdev`): it is created as a
    /// clone of that bdev (which must be defined before it), then resized to `size` —
    /// 0 for the bdev's own size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_snapshot: Option<String>,
}

/// A snapshot to take at start if it does not exist yet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    pub name: String,
    /// The disk to snapshot.
    pub disk: String,
    /// The snapshot's UUID (kept when the configuration is saved; a received snapshot
    /// has its source's); a new one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
}

/// A clone to create at start if it does not exist yet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CloneConfig {
    pub name: String,
    pub snapshot: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cow_policy: Option<CowPolicy>,
}

/// A key of the keyring (SPDK: `keyring_file_add_key`): its name and the file holding
/// it (an absolute path, mode 0600, owned by the target's user). The material itself is
/// never part of a configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    pub path: PathBuf,
}

/// The rate limits of one bdev (SPDK: `bdev_set_qos_limit`): I/Os per second and MiB
/// per second, 0 or absent for none.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QosConfig {
    /// The bdev: a name, `pool/disk`, a UUID or an unambiguous disk name.
    pub bdev: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rw_ios_per_sec: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rw_mbytes_per_sec: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub r_mbytes_per_sec: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub w_mbytes_per_sec: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl QosConfig {
    /// The limits of `bdev`.
    pub fn new(bdev: String, l: crate::bdev::qos::QosLimits) -> QosConfig {
        QosConfig {
            bdev,
            rw_ios_per_sec: l.rw_ios_per_sec,
            rw_mbytes_per_sec: l.rw_mbytes_per_sec,
            r_mbytes_per_sec: l.r_mbytes_per_sec,
            w_mbytes_per_sec: l.w_mbytes_per_sec,
        }
    }

    /// The limits.
    pub fn limits(&self) -> crate::bdev::qos::QosLimits {
        crate::bdev::qos::QosLimits {
            rw_ios_per_sec: self.rw_ios_per_sec,
            rw_mbytes_per_sec: self.rw_mbytes_per_sec,
            r_mbytes_per_sec: self.r_mbytes_per_sec,
            w_mbytes_per_sec: self.w_mbytes_per_sec,
        }
    }
}

/// The whole target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// CPUs to run reactors on.
    #[serde(default = "default_cores")]
    pub cores: CoreList,
    /// Idle policy of the reactors.
    #[serde(default)]
    pub idle: IdlePolicy,
    /// Keys, added first: TLS and authentication name them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyConfig>,
    /// Base bdevs.
    #[serde(default)]
    pub bdevs: Vec<BdevConfig>,
    /// Pools over base bdevs. A pool whose bdevs already hold it is opened, not formatted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolConfig>,
    /// Virtual disks, created if missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    /// Snapshots, taken if missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotConfig>,
    /// Clones, created if missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clones: Vec<CloneConfig>,
    /// Remote NVMe/TCP controllers whose namespaces become bdevs `<name>n<nsid>`
    /// (SPDK: `bdev_nvme_attach_controller`). Attached before the pools, so a pool can
    /// be made of remote namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvme: Vec<AttachParams>,
    /// The NBD server and its exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdConfig>,
    /// The NVMe/TCP target: transport options and subsystems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvmf: Option<NvmfConfig>,
    /// Rate limits of bdevs of any kind (base bdevs, disks, snapshots, clones, NVMe/TCP
    /// namespaces), set once everything above exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qos: Vec<QosConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cores: default_cores(),
            idle: IdlePolicy::Adaptive,
            keys: Vec::new(),
            bdevs: Vec::new(),
            pools: Vec::new(),
            disks: Vec::new(),
            snapshots: Vec::new(),
            clones: Vec::new(),
            nvme: Vec::new(),
            nbd: None,
            nvmf: None,
            qos: Vec::new(),
        }
    }
}

/// Whether `host` (an address as a listener names it: `127.0.0.1`, `[::1]`, `::1`,
/// `localhost`) is a loopback address.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Config {
    /// What `serve` warns about at start: listeners on addresses other hosts can reach
    /// that let any host in — the NBD server (which has no access control), an NVMe/TCP
    /// subsystem that allows any host.
    pub fn exposure_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(n) = &self.nbd {
            let host = n
                .listen
                .rsplit_once(':')
                .map_or(n.listen.as_str(), |(h, _)| h);
            // Who gets in: anyone (no TLS, or TLS that plain clients may skip), anyone
            // speaking TLS (no client certificates), or clients with a certificate of
            // `tls_ca` (and of a subject of `tls_authz`).
            let open = match n.tls {
                crate::frontend::nbd::TlsMode::Off => Some(
                    "without TLS or client authorisation: any host that reaches it can read and write its export(s) in clear text (nbd.tls: required, tls_ca, tls_authz)",
                ),
                crate::frontend::nbd::TlsMode::Optional => Some(
                    "with TLS optional: plain clients are still served, without authorisation (nbd.tls: required)",
                ),
                // A certificate without `tls_ca` lets any TLS client in; PSK clients
                // must know a key.
                crate::frontend::nbd::TlsMode::Required
                    if n.tls_cert.is_some() && n.tls_ca.is_none() =>
                {
                    Some(
                        "with TLS but no client authorisation: any host that speaks TLS can read and write its export(s) (nbd.tls_ca, tls_authz)",
                    )
                }
                crate::frontend::nbd::TlsMode::Required => None,
            };
            if let Some(why) = open
                && !is_loopback(host)
                && !n.exports.is_empty()
            {
                out.push(format!(
                    "the NBD server listens on {}, which is not a loopback address, {why}; {} export(s)",
                    n.listen,
                    n.exports.len()
                ));
            }
        }
        for s in self.nvmf.iter().flat_map(|t| &t.subsystems) {
            if !s.allow_any_host {
                continue;
            }
            for l in s.listeners.iter().filter(|l| !is_loopback(&l.address)) {
                out.push(format!(
                    "NVMe/TCP subsystem {} allows any host on {}:{}, which is not a loopback address: any host that reaches it can connect (list hosts, or allow_any_host: false)",
                    s.nqn, l.address, l.port
                ));
            }
        }
        out
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {cause}")]
    Read { file: String, cause: std::io::Error },
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

impl Config {
    /// Loads a configuration file: tessera's YAML, or SPDK's JSON format (an object
    /// with a `subsystems` array, as `save_config` writes it).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            file: path.display().to_string(),
            cause,
        })?;
        let file = path.display().to_string();
        if spdk_json::is_spdk_json(&text) {
            Config::parse_spdk_json(&text, &file)
        } else {
            Config::parse(&text, &file)
        }
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_string(),
            message,
        };
        let mut names = std::collections::HashSet::new();
        let cores = self.cores.len();
        for (i, p) in self.pools.iter().enumerate() {
            if p.bdevs.is_empty() {
                return Err(invalid(format!(
                    "pools[{i}].bdevs: a pool needs at least one bdev"
                )));
            }
            if let Some(c) = p.controller_core
                && c >= cores
            {
                return Err(invalid(format!(
                    "pools[{i}].controller_core: {c} is not one of the {cores} configured cores (0-based index)"
                )));
            }
            if self.pools[..i].iter().any(|o| o.name == p.name) {
                return Err(invalid(format!(
                    "pools[{i}].name: `{}` is used twice",
                    p.name
                )));
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            if !self.pools.iter().any(|p| p.name == d.pool) {
                return Err(invalid(format!(
                    "disks[{i}].pool: `{}` is not a pool of this config",
                    d.pool
                )));
            }
            if d.external_snapshot.is_some() && !d.thin {
                return Err(invalid(format!(
                    "disks[{i}].thin: `{}` is a clone of an external snapshot, which is \
                     thin-provisioned",
                    d.name
                )));
            }
        }
        if let Some(nbd) = &self.nbd {
            nbd.validate().map_err(|e| match e {
                crate::frontend::nbd::NbdError::Config { .. } => invalid(e.to_string()),
                e => invalid(format!("nbd.listen: {e}")),
            })?;
        }
        if let Some(nvmf) = &self.nvmf {
            nvmf.validate().map_err(|e| invalid(format!("nvmf.{e}")))?;
        }
        for (i, b) in self.bdevs.iter().enumerate() {
            if !names.insert(b.name()) {
                return Err(invalid(format!(
                    "bdevs[{i}].name: `{}` is used twice",
                    b.name()
                )));
            }
            if let BdevConfig::Error { base, .. } = b
                && !self.bdevs[..i].iter().any(|o| o.name() == base)
            {
                return Err(invalid(format!(
                    "bdevs[{i}].base: `{base}` is not a bdev defined above it"
                )));
            }
        }
        Ok(())
    }
}

/// One lvol a configuration makes: a disk (an external snapshot's clone among them), a
/// snapshot or a clone.
#[derive(Clone, Copy, Debug)]
pub enum LvolStep<'a> {
    Disk(&'a DiskConfig),
    Snapshot(&'a SnapshotConfig),
    Clone(&'a CloneConfig),
}

impl Config {
    /// The pool the disk, snapshot or clone `name` (a name or a `pool/disk` alias) of
    /// this configuration lives in: a snapshot's and a clone's is their origin's.
    pub fn lvol_pool(&self, name: &str) -> Option<&str> {
        let mut name = name.to_string();
        for _ in 0..=(self.snapshots.len() + self.clones.len()) {
            if let Some((lvs, _)) = name.split_once('/')
                && let Some(p) = self.pools.iter().find(|p| p.name == lvs)
            {
                return Some(&p.name);
            }
            if let Some(d) = self.disks.iter().find(|d| d.name == name) {
                return Some(&d.pool);
            }
            if let Some(s) = self.snapshots.iter().find(|s| s.name == name) {
                name = s.disk.clone();
            } else if let Some(c) = self.clones.iter().find(|c| c.name == name) {
                name = c.snapshot.clone();
            } else {
                return None;
            }
        }
        None
    }

    /// The disks, snapshots and clones of the configuration in an order that creates
    /// each after what it needs: a snapshot after its origin, a clone after its
    /// snapshot, an external snapshot's clone after its external bdev when that is an
    /// lvol the configuration makes (of another pool: a snapshot, a read-only lvol).
    /// Otherwise disks first, then snapshots and clones, each in its list's order. What
    /// names something the configuration does not make (a base bdev, an lvol found on
    /// its pool's bdevs) is ready at once; what waits on itself or on something that
    /// never becomes ready comes last, in its order, and fails with its own error then.
    pub fn lvol_order(&self) -> Vec<LvolStep<'_>> {
        let steps: Vec<LvolStep<'_>> = self
            .disks
            .iter()
            .map(LvolStep::Disk)
            .chain(self.snapshots.iter().map(LvolStep::Snapshot))
            .chain(self.clones.iter().map(LvolStep::Clone))
            .collect();
        // What each step makes, as the others may name it: `pool/name`, the bare name,
        // its UUID when the configuration gives one.
        let names: Vec<Vec<String>> = steps
            .iter()
            .map(|st| {
                let (name, pool, uuid) = match st {
                    LvolStep::Disk(d) => (&d.name, Some(d.pool.as_str()), d.uuid),
                    LvolStep::Snapshot(s) => (&s.name, self.lvol_pool(&s.disk), s.uuid),
                    LvolStep::Clone(c) => (&c.name, self.lvol_pool(&c.snapshot), None),
                };
                let mut v = vec![name.clone()];
                v.extend(pool.map(|p| format!("{p}/{name}")));
                v.extend(uuid.map(|u| u.to_string()));
                v
            })
            .collect();
        let needs: Vec<Option<&str>> = steps
            .iter()
            .map(|st| match st {
                LvolStep::Disk(d) => d.external_snapshot.as_deref(),
                LvolStep::Snapshot(s) => Some(s.disk.as_str()),
                LvolStep::Clone(c) => Some(c.snapshot.as_str()),
            })
            .collect();
        let mut done = vec![false; steps.len()];
        let mut out = Vec::with_capacity(steps.len());
        loop {
            let mut progressed = false;
            for i in 0..steps.len() {
                if done[i] {
                    continue;
                }
                let ready = needs[i].is_none_or(|n| {
                    (0..steps.len()).all(|j| j == i || done[j] || !names[j].iter().any(|x| x == n))
                });
                if ready {
                    done[i] = true;
                    out.push(steps[i]);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        out.extend((0..steps.len()).filter(|&i| !done[i]).map(|i| steps[i]));
        out
    }
}

/// The configuration `tessera serve` runs with no `--config`: a pool in a sparse file
/// under the data directory.
pub fn embedded_default(data_dir: &Path) -> Config {
    let text = EMBEDDED_DEFAULT.replace("${DATA_DIR}", &data_dir.display().to_string());
    Config::parse(&text, "<embedded default>").expect("the embedded default config is valid")
}

/// The embedded default, with `${DATA_DIR}` standing for `--data-dir`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../spdk-config/default.yaml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = embedded_default(Path::new("/tmp/tessera-test"));
        assert!(!c.bdevs.is_empty());
        assert_eq!(c.exposure_warnings(), Vec::<String>::new());
    }

    #[test]
    fn listeners_open_to_any_host_off_loopback_are_warned_about() {
        let cfg = |nbd: &str, nvmf: &str, any: bool| {
            Config::parse(
                &format!(
                    "bdevs: [{{type: malloc, name: M0, size: 1MiB}}]\n\
                     nbd: {{listen: '{nbd}', exports: [{{name: e, bdev: M0}}]}}\n\
                     nvmf:\n  subsystems:\n    - nqn: nqn.2026-12.io.tessera:a\n      \
                     allow_any_host: {any}\n      listeners: [{{address: '{nvmf}', port: 4420}}]\n"
                ),
                "test.yaml",
            )
            .unwrap()
            .exposure_warnings()
        };
        assert_eq!(
            cfg("127.0.0.1:10809", "127.0.0.1", true),
            Vec::<String>::new()
        );
        assert_eq!(cfg("[::1]:10809", "::1", true), Vec::<String>::new());
        let w = cfg("0.0.0.0:10809", "10.0.0.1", true);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("NBD server listens on 0.0.0.0:10809"),
            "{w:?}"
        );
        assert!(w[1].contains("allows any host on 10.0.0.1:4420"), "{w:?}");
        // A subsystem that lists its hosts is not warned about.
        assert_eq!(cfg("127.0.0.1:1", "10.0.0.1", false), Vec::<String>::new());
    }

    #[test]
    fn an_nbd_server_off_loopback_is_warned_about_unless_tls_checks_clients() {
        let warn = |tls: &str| {
            Config::parse(
                &format!(
                    "bdevs: [{{type: malloc, name: M0, size: 1MiB}}]\n\
                     nbd: {{listen: '0.0.0.0:10809', exports: [{{name: e, bdev: M0}}]{tls}}}\n"
                ),
                "test.yaml",
            )
            .unwrap()
            .exposure_warnings()
        };
        let w = warn("");
        assert!(w.len() == 1 && w[0].contains("without TLS"), "{w:?}");
        let w = warn(", tls: optional, tls_cert: /c, tls_key: /k");
        assert!(w.len() == 1 && w[0].contains("TLS optional"), "{w:?}");
        let w = warn(", tls: required, tls_cert: /c, tls_key: /k");
        assert!(
            w.len() == 1 && w[0].contains("no client authorisation"),
            "{w:?}"
        );
        let w = warn(", tls: required, tls_cert: /c, tls_key: /k, tls_ca: /a");
        assert!(w.is_empty(), "{w:?}");
        let w = warn(", tls: required, tls_psk_file: /p");
        assert!(w.is_empty(), "{w:?}");
    }
}
