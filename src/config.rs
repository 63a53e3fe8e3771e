//! The YAML startup configuration: the whole target, declaratively.
//!
//! ```yaml
//! cores: [0, 1]            # or "0x3", or "0-1"
//! idle: adaptive           # or busy
//! bdevs:
//!   - {type: malloc, name: Malloc0, size: 1GiB, block_size: 4096}
//!   - {type: uring, name: data0, path: /var/lib/tessera/data0.img, size: 64GiB}
//! ```
//!
//! Every error names the file, the line and the field.

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
}

/// A snapshot to take at start if it does not exist yet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    pub name: String,
    /// The disk to snapshot.
    pub disk: String,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cores: default_cores(),
            idle: IdlePolicy::Adaptive,
            bdevs: Vec::new(),
            pools: Vec::new(),
            disks: Vec::new(),
            snapshots: Vec::new(),
            clones: Vec::new(),
            nvme: Vec::new(),
            nbd: None,
            nvmf: None,
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        let file = path.display().to_string();
        if crate::rpc::spdk_json::is_spdk_json(&text) {
            Config::parse_spdk_json(&text, &file)
        } else {
            Config::parse(&text, &file)
        }
    }

    /// Parses SPDK's JSON configuration format; `file` names it in errors.
    pub fn parse_spdk_json(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg = crate::rpc::spdk_json::parse_document(text, file)?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Parses YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let cfg: Config = match serde_path_to_error::deserialize(de) {
            Ok(c) => c,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let (line, column) = inner.location().map_or((0, 0), |l| (l.line(), l.column()));
                let mut message = inner.to_string();
                // serde_yaml appends its own "at line L column C"; we print it in front.
                if let Some(i) = message.find(" at line ") {
                    message.truncate(i);
                }
                // ... and may prefix part of the path, which we print whole.
                if let Some((head, rest)) = message.split_once(": ")
                    && !head.contains(' ')
                    && path.starts_with(head)
                {
                    message = rest.to_string();
                }
                let message = if path.is_empty() || path == "." {
                    message
                } else {
                    format!("{path}: {message}")
                };
                return Err(ConfigError::Parse {
                    file: file.to_string(),
                    line,
                    column,
                    message,
                });
            }
        };
        cfg.validate(file).map_err(|e| match e {
            // Point at the line of the field the message starts with.
            ConfigError::Invalid { file, message } => {
                let field = message.split(": ").next().unwrap_or("");
                match locate_yaml(text, field) {
                    Some(line) => ConfigError::Parse {
                        file,
                        line,
                        column: 1,
                        message,
                    },
                    None => ConfigError::Invalid { file, message },
                }
            }
            e => e,
        })?;
        Ok(cfg)
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

    /// The configuration as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("config serialises")
    }
}

/// The line (1-based) of the field at `path` (`pools[1].bdevs`, `nvmf.subsystems[0].nqn`)
/// in YAML `text`, following block mappings and sequences by indentation; a flow
/// collection (`{...}`, `[...]`) stops the walk at its line. `None` if not found.
pub fn locate_yaml(text: &str, path: &str) -> Option<usize> {
    enum Seg<'a> {
        Key(&'a str),
        Index(usize),
    }
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            segs.push(Seg::Key(key));
        }
        for idx in rest.split('[') {
            if let Some(n) = idx.strip_suffix(']') {
                segs.push(Seg::Index(n.parse().ok()?));
            }
        }
    }
    if segs.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let meaningful = |l: &str| {
        let t = l.trim_start();
        !t.is_empty() && !t.starts_with('#')
    };
    // The node we are in: its line and the indentation of its content.
    let mut cur: Option<(usize, usize)> = None;
    for seg in segs {
        if let Some((line, _)) = cur {
            let t = lines[line].trim_start();
            let value = t.split_once(':').map_or("", |(_, v)| v.trim_start());
            if t.trim_start_matches("- ").starts_with('{')
                || value.starts_with('{')
                || value.starts_with('[')
            {
                return Some(line + 1); // flow collection: cannot go deeper
            }
        }
        match seg {
            Seg::Key(k) => {
                let want = format!("{k}:");
                let (from, parent) = match cur {
                    None => (0, None),
                    Some((l, ind)) => (l, Some(ind)),
                };
                let mut hit = None;
                for (i, l) in lines.iter().enumerate().skip(from) {
                    if !meaningful(l) {
                        continue;
                    }
                    let ind = indent(l);
                    let t = l.trim_start();
                    let (content, cind) = match t.strip_prefix("- ") {
                        Some(r) if Some(i) == cur.map(|c| c.0) => (r.trim_start(), ind + 2),
                        _ => (t, ind),
                    };
                    if let Some(p) = parent
                        && i != from
                        && ind <= p
                    {
                        break;
                    }
                    if parent.is_none() && ind != 0 {
                        continue;
                    }
                    if content.starts_with(&want) {
                        hit = Some((i, cind));
                        break;
                    }
                }
                cur = Some(hit?);
            }
            Seg::Index(n) => {
                let (from, key_ind) = cur?;
                let mut item_ind = None;
                let mut count = 0;
                let mut hit = None;
                for (i, l) in lines.iter().enumerate().skip(from + 1) {
                    if !meaningful(l) {
                        continue;
                    }
                    let ind = indent(l);
                    let dash = l.trim_start().starts_with('-');
                    if ind < key_ind || (ind == key_ind && !dash) {
                        break;
                    }
                    if dash && item_ind.is_none() {
                        item_ind = Some(ind);
                    }
                    if dash && Some(ind) == item_ind {
                        if count == n {
                            hit = Some((i, ind));
                            break;
                        }
                        count += 1;
                    }
                }
                cur = Some(hit?);
            }
        }
    }
    cur.map(|(l, _)| l + 1)
}

/// The configuration `tessera serve` runs with no `--config`: a pool in a sparse file
/// under the data directory.
pub fn embedded_default(data_dir: &Path) -> Config {
    let text = EMBEDDED_DEFAULT.replace("${DATA_DIR}", &data_dir.display().to_string());
    Config::parse(&text, "<embedded default>").expect("the embedded default config is valid")
}

/// The embedded default, with `${DATA_DIR}` standing for `--data-dir`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../spdk-config/default.yaml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config() {
        let c = Config::parse(
            "cores: \"0x3\"\nidle: busy\nbdevs:\n  - {type: malloc, name: M0, size: 64MiB}\n  - {type: null, name: N0, size: 1TiB, block_size: 512}\n  - {type: uring, name: U0, path: /tmp/x.img, size: 1G, options: {queue_depth: 64}}\n  - {type: error, name: E0, base: M0, volatile_cache: true}\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.cores.cpus(), &[0, 1]);
        assert_eq!(c.idle, IdlePolicy::Busy);
        assert_eq!(c.bdevs.len(), 4);
        assert_eq!(
            c.bdevs[1],
            BdevConfig::Null {
                name: "N0".into(),
                size: Size(1 << 40),
                block_size: 512,
                uuid: None
            }
        );
        // Round trip.
        let again = Config::parse(&c.to_yaml(), "again").unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = Config::parse(
            "cores: [0]\nbdevs:\n  - type: malloc\n    name: M0\n    size: lots\n",
            "bad.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("bad.yaml:3:"), "{e}");
        assert!(
            e.contains("bdevs[0]: size: size `lots` does not start with a number"),
            "{e}"
        );
        let e = Config::parse("cores: [0]\nidle: sometimes\n", "bad.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad.yaml:2:") && e.contains("idle"), "{e}");
        let e = Config::parse(
            "bdevs:\n  - {type: malloc, name: M0, size: 1M, colour: red}\n",
            "bad.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("colour") && e.starts_with("bad.yaml:2:"), "{e}");
        let e = Config::parse("bdevs:\n  - {type: tape, name: T}\n", "bad.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bdevs[0]: type: `tape`"), "{e}");
        let e = Config::parse(
            "bdevs:\n  - {type: error, name: E, base: nope}\n",
            "bad.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bdevs[0].base") && e.contains("nope"), "{e}");
        let e = Config::parse("cores: 0-\n", "bad.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cores"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_line() {
        let text = "cores: [0]\nbdevs:\n  - {type: malloc, name: M0, size: 1M}\npools:\n  - name: p\n    bdevs: [M0]\n  - name: q\n    bdevs: []\n";
        let e = Config::parse(text, "v.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("v.yaml:8:") && e.contains("pools[1].bdevs"),
            "{e}"
        );
        let text = "bdevs:\n  - {type: malloc, name: M0, size: 1M}\n  - {type: malloc, name: M0, size: 1M}\n";
        let e = Config::parse(text, "v.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("v.yaml:3:") && e.contains("bdevs[1].name"),
            "{e}"
        );
        let text = "nvmf:\n  subsystems:\n    - nqn: nqn.2016-06.io.x:a\n    - nqn: bad\n";
        let e = Config::parse(text, "v.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("v.yaml:4:") && e.contains("subsystems[1].nqn"),
            "{e}"
        );
        let text = "nbd:\n  listen: nowhere\n";
        let e = Config::parse(text, "v.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("v.yaml:2:") && e.contains("nbd.listen"),
            "{e}"
        );
        assert_eq!(
            locate_yaml("a:\n  b:\n    - x\n    - y\n", "a.b[1]"),
            Some(4)
        );
        assert_eq!(locate_yaml("a: 1\n", "zz"), None);
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = embedded_default(Path::new("/tmp/tessera-test"));
        assert!(!c.bdevs.is_empty());
    }
}
