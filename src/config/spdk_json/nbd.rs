//! The NBD calls of a configuration: the parameters of `nbd_server_start` and
//! `nbd_start_export`. These names are tessera's own (SPDK's `nbd_start_disk` attaches a
//! bdev to the kernel's `/dev/nbdX`; a configuration file's `nbd_start_disk` is read as
//! an export). The JSON-RPC methods of the same names decode the same structs.

use serde::Deserialize;

/// `nbd_server_start`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerStartParams {
    /// `IP:PORT` (port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Most connections open at once (default 1024).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most connections open at once from one source IP address (default 128).
    #[serde(default)]
    pub max_connections_per_host: Option<u32>,
    /// Most payload bytes all connections hold together (default 1 GiB).
    #[serde(default)]
    pub max_buffer_bytes: Option<u64>,
    /// How long a connection waits for payload bytes before it is closed (default
    /// 30000 ms).
    #[serde(default)]
    pub buffer_wait_timeout_ms: Option<u64>,
    /// TLS mode: `off` (default), `optional`, `required`.
    #[serde(default)]
    pub tls: crate::frontend::nbd::TlsMode,
    /// The server's certificate file (PEM).
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The server's private key file (PEM; absolute, mode 0600, ours).
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
    /// CA file for client certificates (with it, clients must present one).
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Allowed client certificate subjects (RFC 4514).
    #[serde(default)]
    pub tls_authz: Vec<String>,
    /// Pre-shared keys file (`IDENTITY:HEXKEY` lines; absolute, mode 0600, ours).
    #[serde(default)]
    pub tls_psk_file: Option<std::path::PathBuf>,
}

impl ServerStartParams {
    /// The connection and memory limits (defaults for those not given).
    pub fn limits(&self) -> crate::frontend::nbd::NbdLimits {
        let d = crate::frontend::nbd::NbdLimits::default();
        crate::frontend::nbd::NbdLimits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_connections_per_host: self
                .max_connections_per_host
                .unwrap_or(d.max_connections_per_host),
            max_buffer_bytes: self.max_buffer_bytes.unwrap_or(d.max_buffer_bytes),
            buffer_wait_timeout_ms: self
                .buffer_wait_timeout_ms
                .unwrap_or(d.buffer_wait_timeout_ms),
        }
    }

    /// The TLS settings.
    pub fn tls(&self) -> crate::frontend::nbd::NbdTlsSettings {
        crate::frontend::nbd::NbdTlsSettings::from_keys(
            self.tls,
            &self.tls_cert,
            &self.tls_key,
            &self.tls_ca,
            &self.tls_authz,
            &self.tls_psk_file,
        )
    }
}

fn default_listen() -> String {
    "127.0.0.1:10809".into()
}

/// `nbd_start_export`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartExportParams {
    /// Bdev name, `lvs/lvol` alias or UUID.
    pub bdev_name: String,
    /// The export name clients ask for (default: the bdev name).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub description: String,
}
