//! Exports: what a server offers (name → bdev), the YAML configuration of the server, and
//! the serialisable description `exports()` reports.

use super::NbdError;
use super::proto::{self, BlockSizes};
use super::range_lock::RangeLocks;
use super::tls::{NbdTlsSettings, TlsMode};
use crate::bdev::{Bdev, BdevRegistry, IoKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Largest read or write the server accepts in one request (advertised as the maximum
/// block size): 32 MiB, the portable limit of proto.md.
pub const MAX_PAYLOAD_BYTES: u32 = 32 << 20;

/// An export to add to a server.
#[derive(Clone)]
pub struct NbdExport {
    /// The name clients ask for (1 to 4096 bytes of UTF-8, no NUL).
    pub name: String,
    /// The bdev behind it.
    pub bdev: Arc<dyn Bdev>,
    /// Refuse writes, trims and write-zeroes (also implied by a read-only bdev).
    pub read_only: bool,
    /// Free text shown by `nbdinfo --list` and `NBD_INFO_DESCRIPTION`.
    pub description: String,
}

impl NbdExport {
    /// A writable export of `bdev` called `name`, without description.
    pub fn new(name: impl Into<String>, bdev: Arc<dyn Bdev>) -> NbdExport {
        NbdExport {
            name: name.into(),
            bdev,
            read_only: false,
            description: String::new(),
        }
    }

    /// Sets the read-only flag.
    pub fn with_read_only(mut self, read_only: bool) -> NbdExport {
        self.read_only = read_only;
        self
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> NbdExport {
        self.description = description.into();
        self
    }
}

impl std::fmt::Debug for NbdExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdExport")
            .field("name", &self.name)
            .field("bdev", &self.bdev.name())
            .field("read_only", &self.read_only)
            .field("description", &self.description)
            .finish()
    }
}

/// Checks an export name against the protocol's string rules.
pub fn validate_export_name(name: &str) -> Result<(), NbdError> {
    let invalid = |reason: &str| NbdError::InvalidExportName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > proto::MAX_STRING_LEN {
        return Err(invalid("is longer than 4096 bytes"));
    }
    if name.contains('\0') {
        return Err(invalid("contains a NUL character"));
    }
    Ok(())
}

static NEXT_EXPORT_ID: AtomicU64 = AtomicU64::new(1);

/// An export as the server holds it: shared by the handshakes and connections that use
/// it on every core.
pub(crate) struct ExportEntry {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) bdev: Arc<dyn Bdev>,
    pub(crate) read_only: bool,
    pub(crate) description: String,
    /// Connections in transmission with this export.
    pub(crate) connections: AtomicUsize,
    /// Keeps read-modify-writes apart from other writes to the same blocks.
    pub(crate) locks: RangeLocks,
    /// Set when the export is removed; a connection entering transmission checks it
    /// after registering its export, so removal never misses one.
    removed: AtomicBool,
}

impl ExportEntry {
    fn new(e: NbdExport) -> ExportEntry {
        ExportEntry {
            id: NEXT_EXPORT_ID.fetch_add(1, Ordering::Relaxed),
            name: e.name,
            bdev: e.bdev,
            read_only: e.read_only,
            description: e.description,
            connections: AtomicUsize::new(0),
            locks: RangeLocks::default(),
            removed: AtomicBool::new(false),
        }
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// True if writes are refused (export flag or read-only bdev).
    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only || self.bdev.read_only()
    }

    /// Export size in bytes.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.bdev
            .num_blocks()
            .saturating_mul(self.bdev.block_size() as u64)
    }

    /// The advertised block size constraints.
    ///
    /// Minimum 1, as qemu-nbd advertises for a disk its block layer serves by
    /// read-modify-write: the server takes any byte offset and length (requests not
    /// aligned to the bdev's block size read the covering blocks, or read-modify-write
    /// their edge blocks), and clients need it to. libnbd (nbdfuse, nbdcopy, fio's nbd
    /// engine) enforces the advertised minimum on the client side, so with the bdev's
    /// 4 KiB as minimum nbdfuse refuses the kernel's 512-byte requests (a direct-I/O loop
    /// device has 512-byte sectors: ext4 reads its superblock at byte 1024) before they
    /// reach us. Preferred = max(4 KiB, block size): the size below which requests cost
    /// a read-modify-write (proto.md: at least the minimum and 512). Maximum = 32 MiB.
    pub(crate) fn block_sizes(&self) -> BlockSizes {
        let bs = self.bdev.block_size();
        BlockSizes {
            min_bytes: 1,
            preferred_bytes: bs.max(4096),
            max_bytes: MAX_PAYLOAD_BYTES,
        }
    }

    /// The transmission flags for a connection that negotiated `chunked` replies.
    pub(crate) fn transmission_flags(&self, chunked: bool) -> u16 {
        let mut f = proto::TFLAG_HAS_FLAGS
            | proto::TFLAG_SEND_FLUSH
            | proto::TFLAG_SEND_FUA
            | proto::TFLAG_CAN_MULTI_CONN;
        if self.is_read_only() {
            f |= proto::TFLAG_READ_ONLY;
        }
        if self.bdev.supports(IoKind::Unmap) {
            f |= proto::TFLAG_SEND_TRIM;
        }
        if self.bdev.supports(IoKind::WriteZeroes) {
            f |= proto::TFLAG_SEND_WRITE_ZEROES;
        }
        if chunked {
            f |= proto::TFLAG_SEND_DF;
        }
        f
    }

    pub(crate) fn info(&self) -> NbdExportInfo {
        NbdExportInfo {
            name: self.name.clone(),
            bdev: self.bdev.name().to_string(),
            read_only: self.is_read_only(),
            description: self.description.clone(),
            size_bytes: self.size_bytes(),
            block_size: self.bdev.block_size(),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }
}

/// The exports of a server, by name. Control plane and handshakes only: connections in
/// transmission hold their `Arc<ExportEntry>` and never look here.
#[derive(Default)]
pub(crate) struct ExportTable {
    map: Mutex<BTreeMap<String, Arc<ExportEntry>>>,
}

impl ExportTable {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<ExportEntry>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add(&self, e: NbdExport) -> Result<Arc<ExportEntry>, NbdError> {
        validate_export_name(&e.name)?;
        let mut m = self.lock();
        if m.contains_key(&e.name) {
            return Err(NbdError::ExportExists(e.name));
        }
        let entry = Arc::new(ExportEntry::new(e));
        m.insert(entry.name.clone(), entry.clone());
        Ok(entry)
    }

    pub(crate) fn remove(&self, name: &str) -> Result<Arc<ExportEntry>, NbdError> {
        self.lock()
            .remove(name)
            .ok_or_else(|| NbdError::NoSuchExport(name.to_string()))
    }

    /// The export called `name`; the empty name is the default export, which is the only
    /// export when there is exactly one.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<ExportEntry>> {
        let m = self.lock();
        if name.is_empty() && m.len() == 1 {
            return m.values().next().cloned();
        }
        m.get(name).cloned()
    }

    pub(crate) fn list(&self) -> Vec<Arc<ExportEntry>> {
        self.lock().values().cloned().collect()
    }
}

/// An export as `exports()` (and a JSON-RPC `nbd_get_exports`) reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NbdExportInfo {
    pub name: String,
    pub bdev: String,
    pub read_only: bool,
    pub description: String,
    pub size_bytes: u64,
    pub block_size: u32,
    /// Connections currently in transmission with the export.
    pub connections: usize,
}

fn default_listen() -> String {
    "127.0.0.1:10809".to_string()
}

/// The `nbd:` section of the YAML configuration.
///
/// ```yaml
/// nbd:
///   listen: "127.0.0.1:10809"
///   exports:
///     - {name: vd0, bdev: Malloc0}
///     - {name: golden, bdev: Malloc1, read_only: true, description: "base image"}
///   # TLS (NBD_OPT_STARTTLS): off (default), optional or required.
///   tls: required
///   tls_cert: /etc/tessera/nbd/server-cert.pem
///   tls_key: /etc/tessera/nbd/server-key.pem     # mode 0600, ours
///   tls_ca: /etc/tessera/nbd/ca-cert.pem         # client certificates required
///   tls_authz: ["CN=backup01,O=Example"]         # allowed client subjects
///   tls_psk_file: /etc/tessera/nbd/keys.psk      # IDENTITY:HEXKEY lines, mode 0600
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdConfig {
    /// Address to listen on, `IP:PORT` (IPv6 as `[::1]:10809`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Exports to create at start.
    #[serde(default)]
    pub exports: Vec<NbdExportConfig>,
    /// Most connections open at once; the next one is closed before the handshake.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Most connections open at once from one source IP address.
    #[serde(default = "default_max_connections_per_host")]
    pub max_connections_per_host: u32,
    /// Most bytes all connections together hold for request and reply payloads; a
    /// connection whose next request would go past it stops reading until bytes are
    /// returned.
    #[serde(default = "default_max_buffer_bytes")]
    pub max_buffer_bytes: u64,
    /// How long a connection waits for `max_buffer_bytes` before it is closed.
    #[serde(default = "default_buffer_wait_timeout_ms")]
    pub buffer_wait_timeout_ms: u64,
    /// TLS: `off`, `optional` (STARTTLS offered) or `required` (nothing else answered
    /// before it).
    #[serde(default, skip_serializing_if = "TlsMode::is_off")]
    pub tls: TlsMode,
    /// The server's certificate (PEM, leaf first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM): an absolute path, mode 0600, owned by us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates client certificates must chain to; with it, clients must present
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate subjects allowed (RFC 4514, as qemu's `tls-authz-simple`:
    /// `CN=client,O=Example`); empty: any certificate `tls_ca` signed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_authz: Vec<String>,
    /// Pre-shared keys (`IDENTITY:HEXKEY` lines, qemu's `keys.psk`): an absolute path,
    /// mode 0600, owned by us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_psk_file: Option<PathBuf>,
}

/// Connections per server when not configured.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Connections per source address when not configured.
pub const DEFAULT_MAX_CONNECTIONS_PER_HOST: u32 = 128;

/// Payload bytes of all connections together when not configured.
pub const DEFAULT_MAX_BUFFER_BYTES: u64 = 1 << 30;
/// How long a connection waits for payload bytes when not configured.
pub const DEFAULT_BUFFER_WAIT_TIMEOUT_MS: u64 = 30_000;

fn default_max_buffer_bytes() -> u64 {
    DEFAULT_MAX_BUFFER_BYTES
}

fn default_buffer_wait_timeout_ms() -> u64 {
    DEFAULT_BUFFER_WAIT_TIMEOUT_MS
}

fn default_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS
}

fn default_max_connections_per_host() -> u32 {
    DEFAULT_MAX_CONNECTIONS_PER_HOST
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            listen: default_listen(),
            exports: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_host: DEFAULT_MAX_CONNECTIONS_PER_HOST,
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
            buffer_wait_timeout_ms: DEFAULT_BUFFER_WAIT_TIMEOUT_MS,
            tls: TlsMode::Off,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_authz: Vec::new(),
            tls_psk_file: None,
        }
    }
}

/// Smallest `max_buffer_bytes`.
const MIN_BUFFER_BYTES: u64 = 1 << 20;
/// Largest `max_buffer_bytes`.
const MAX_BUFFER_BYTES: u64 = 1 << 40;

/// The connection and memory limits of an NBD server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NbdLimits {
    /// Most connections open at once.
    pub max_connections: u32,
    /// Most connections open at once from one source IP address.
    pub max_connections_per_host: u32,
    /// Most bytes all connections together hold for request and reply payloads (one
    /// request is admitted whatever its size when nothing is held).
    pub max_buffer_bytes: u64,
    /// How long a connection waits for payload bytes before it is closed, in ms.
    pub buffer_wait_timeout_ms: u64,
}

impl Default for NbdLimits {
    fn default() -> Self {
        NbdLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_host: DEFAULT_MAX_CONNECTIONS_PER_HOST,
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
            buffer_wait_timeout_ms: DEFAULT_BUFFER_WAIT_TIMEOUT_MS,
        }
    }
}

impl NbdLimits {
    /// Checks the limits; the error names the field (under `nbd.`).
    pub fn validate(&self) -> Result<(), NbdError> {
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_host", self.max_connections_per_host),
        ] {
            if !(1..=1 << 20).contains(&v) {
                return Err(NbdError::Config {
                    field: format!("nbd.{name}"),
                    reason: format!("{v} is not between 1 and 1048576"),
                });
            }
        }
        if !(MIN_BUFFER_BYTES..=MAX_BUFFER_BYTES).contains(&self.max_buffer_bytes) {
            return Err(NbdError::Config {
                field: "nbd.max_buffer_bytes".into(),
                reason: format!(
                    "{} is not between {MIN_BUFFER_BYTES} (1 MiB) and {MAX_BUFFER_BYTES} (1 TiB)",
                    self.max_buffer_bytes
                ),
            });
        }
        if !(100..=3_600_000).contains(&self.buffer_wait_timeout_ms) {
            return Err(NbdError::Config {
                field: "nbd.buffer_wait_timeout_ms".into(),
                reason: format!(
                    "{} is not between 100 and 3600000 (an hour)",
                    self.buffer_wait_timeout_ms
                ),
            });
        }
        Ok(())
    }
}

/// One export of the `nbd:` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdExportConfig {
    /// The export name clients ask for.
    pub name: String,
    /// The bdev to export, by name.
    pub bdev: String,
    /// Refuse writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Free text for `nbdinfo --list`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl NbdConfig {
    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, NbdError> {
        self.listen
            .parse()
            .map_err(|e: std::net::AddrParseError| NbdError::InvalidAddress {
                addr: self.listen.clone(),
                reason: e.to_string(),
            })
    }

    /// Checks what can be checked without bdevs: the address, names, duplicates. Errors
    /// name the field (`nbd.exports[1].name`).
    pub fn validate(&self) -> Result<(), NbdError> {
        self.listen_addr()?;
        self.limits().validate()?;
        self.tls_settings().validate("nbd.")?;
        let mut seen = std::collections::HashSet::new();
        for (i, e) in self.exports.iter().enumerate() {
            validate_export_name(&e.name).map_err(|err| NbdError::Config {
                field: format!("nbd.exports[{i}].name"),
                reason: err.to_string(),
            })?;
            if !seen.insert(e.name.as_str()) {
                return Err(NbdError::Config {
                    field: format!("nbd.exports[{i}].name"),
                    reason: format!("export `{}` is defined twice", e.name),
                });
            }
        }
        Ok(())
    }

    /// The TLS settings.
    pub fn tls_settings(&self) -> NbdTlsSettings {
        NbdTlsSettings::from_keys(
            self.tls,
            &self.tls_cert,
            &self.tls_key,
            &self.tls_ca,
            &self.tls_authz,
            &self.tls_psk_file,
        )
    }

    /// Sets the `tls*` fields from `t`.
    pub fn set_tls_settings(&mut self, t: NbdTlsSettings) {
        self.tls = t.mode;
        self.tls_cert = t.cert;
        self.tls_key = t.key;
        self.tls_ca = t.ca;
        self.tls_authz = t.authz;
        self.tls_psk_file = t.psk_file;
    }

    /// The connection limits.
    pub fn limits(&self) -> NbdLimits {
        NbdLimits {
            max_connections: self.max_connections,
            max_connections_per_host: self.max_connections_per_host,
            max_buffer_bytes: self.max_buffer_bytes,
            buffer_wait_timeout_ms: self.buffer_wait_timeout_ms,
        }
    }

    /// The exports, with their bdevs looked up in `registry`.
    pub fn resolve(&self, registry: &BdevRegistry) -> Result<Vec<NbdExport>, NbdError> {
        self.validate()?;
        self.exports
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let bdev = registry.get(&e.bdev).map_err(|err| NbdError::Config {
                    field: format!("nbd.exports[{i}].bdev"),
                    reason: err.to_string(),
                })?;
                Ok(NbdExport {
                    name: e.name.clone(),
                    bdev,
                    read_only: e.read_only,
                    description: e.description.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects_unknown_fields() {
        let c: NbdConfig = serde_yaml_ng::from_str(
            "listen: \"127.0.0.1:1234\"\nexports:\n  - {name: a, bdev: M0}\n  - {name: b, bdev: M1, read_only: true, description: gold}\n",
        )
        .unwrap();
        assert_eq!(c.listen_addr().unwrap().port(), 1234);
        assert_eq!(c.exports.len(), 2);
        assert!(c.exports[1].read_only);
        c.validate().unwrap();
        let again: NbdConfig =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        let d: NbdConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(d.listen, "127.0.0.1:10809");
        let e = serde_yaml_ng::from_str::<NbdConfig>("listen: x\nport: 3\n").unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = serde_yaml_ng::from_str::<NbdConfig>("exports: [{name: a, bdev: b, ro: true}]")
            .unwrap_err();
        assert!(e.to_string().contains("ro"), "{e}");
    }

    #[test]
    fn config_validation_names_the_field() {
        let c = NbdConfig {
            listen: "nowhere".into(),
            ..NbdConfig::default()
        };
        assert!(matches!(c.validate(), Err(NbdError::InvalidAddress { .. })));
        for (c, field) in [
            (
                NbdConfig {
                    max_connections: 0,
                    ..NbdConfig::default()
                },
                "nbd.max_connections",
            ),
            (
                NbdConfig {
                    max_connections_per_host: 0,
                    ..NbdConfig::default()
                },
                "nbd.max_connections_per_host",
            ),
            (
                NbdConfig {
                    max_buffer_bytes: 4096,
                    ..NbdConfig::default()
                },
                "nbd.max_buffer_bytes",
            ),
            (
                NbdConfig {
                    buffer_wait_timeout_ms: 0,
                    ..NbdConfig::default()
                },
                "nbd.buffer_wait_timeout_ms",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("not between"), "{e}");
        }
        let c = NbdConfig {
            listen: "127.0.0.1:1".into(),
            exports: vec![
                NbdExportConfig {
                    name: "a".into(),
                    bdev: "x".into(),
                    read_only: false,
                    description: String::new(),
                },
                NbdExportConfig {
                    name: "a".into(),
                    bdev: "y".into(),
                    read_only: false,
                    description: String::new(),
                },
            ],
            ..NbdConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("nbd.exports[1].name") && e.contains("twice"),
            "{e}"
        );
        let e = c.resolve(&BdevRegistry::new()).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        let one = NbdConfig {
            exports: vec![c.exports[0].clone()],
            ..c
        };
        let e = one.resolve(&BdevRegistry::new()).unwrap_err().to_string();
        assert!(
            e.contains("nbd.exports[0].bdev") && e.contains("`x`"),
            "{e}"
        );
    }

    #[test]
    fn config_tls_keys_parse_round_trip_and_name_what_is_missing() {
        let c: NbdConfig = serde_yaml_ng::from_str(
            "tls: required\ntls_cert: /p/cert.pem\ntls_key: /p/key.pem\ntls_ca: /p/ca.pem\ntls_authz: [\"CN=a,O=B\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.tls_settings().mode, TlsMode::Required);
        let text = serde_yaml_ng::to_string(&c).unwrap();
        assert!(
            text.contains("tls: required") && text.contains("/p/key.pem"),
            "{text}"
        );
        let again: NbdConfig = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(again, c);
        // Off is the default and is not written.
        let d: NbdConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(d.tls, TlsMode::Off);
        assert!(!serde_yaml_ng::to_string(&d).unwrap().contains("tls"));
        let e = serde_yaml_ng::from_str::<NbdConfig>("tls: maybe\n").unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
        for (yaml, field, words) in [
            ("tls: required\ntls_key: /k\n", "nbd.tls_cert", "missing"),
            ("tls: optional\ntls_cert: /c\n", "nbd.tls_key", "missing"),
            ("tls_cert: /c\n", "nbd.tls_cert", "`tls` is off"),
            (
                "tls: required\ntls_cert: /c\ntls_key: /k\ntls_authz: [\"CN=x\"]\n",
                "nbd.tls_authz",
                "tls_ca",
            ),
            (
                "tls: required\ntls_cert: /c\ntls_key: /k\ntls_ca: /a\ntls_authz: [\" \"]\n",
                "nbd.tls_authz[0]",
                "empty",
            ),
        ] {
            let c: NbdConfig = serde_yaml_ng::from_str(yaml).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(words), "{yaml}: {e}");
        }
    }

    #[test]
    fn export_names_follow_the_string_rules() {
        assert!(validate_export_name("vd0").is_ok());
        assert!(validate_export_name("").is_err());
        assert!(validate_export_name("a\0b").is_err());
        assert!(validate_export_name(&"x".repeat(4097)).is_err());
    }
}
