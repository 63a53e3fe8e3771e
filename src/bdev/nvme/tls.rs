//! The host side of NVMe/TCP TLS: a controller attached with `psk` (a keyring key in
//! the interchange format) does TLS 1.3 before ICReq on every queue pair, offering the
//! PSK identity of the host and subsystem NQNs (version 0 by default, SPDK's; version 1
//! with the PSK digest on request) and the TLS PSK derived from it. A controller
//! attached with `secure_concat` does the same with the PSK its admin queue's
//! DH-HMAC-CHAP generated (identity `NVMe1G…`).

use crate::nvme::tls::{ConfiguredPsk, GeneratedPsk, Identity};
use crate::reactor::tls::{CipherSuite, Psk, TlsError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long a queue pair's TLS handshake may take.
pub(crate) const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

enum Key {
    /// A configured PSK, with the identity version to offer.
    Configured { psk: ConfiguredPsk, version: u8 },
    /// A PSK secure channel concatenation generated.
    Generated(GeneratedPsk),
}

struct Inner {
    key: Key,
    ctx: OnceLock<Result<openssl::ssl::SslContext, String>>,
}

impl Inner {
    fn suite(&self) -> crate::nvme::tls::Suite {
        match &self.key {
            Key::Configured { psk, .. } => psk.suite(),
            Key::Generated(g) => g.suite(),
        }
    }
}

/// A controller's TLS key, if it has one (shared by its queue pairs; compared by
/// identity; `Debug` shows no key).
#[derive(Clone, Default)]
pub struct HostTls(Option<Arc<Inner>>);

impl HostTls {
    /// TLS with `psk`, identities of `version` (0 or 1).
    pub fn new(psk: ConfiguredPsk, version: u8) -> HostTls {
        HostTls(Some(Arc::new(Inner {
            key: Key::Configured { psk, version },
            ctx: OnceLock::new(),
        })))
    }

    /// TLS with a PSK secure channel concatenation generated.
    pub fn generated(psk: GeneratedPsk) -> HostTls {
        HostTls(Some(Arc::new(Inner {
            key: Key::Generated(psk),
            ctx: OnceLock::new(),
        })))
    }

    /// Whether the queue pairs do TLS.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// A client `Ssl` for a queue pair of `hostnqn` to `subnqn`.
    pub(crate) fn ssl(&self, hostnqn: &str, subnqn: &str) -> Result<openssl::ssl::Ssl, TlsError> {
        let Some(i) = &self.0 else {
            return Err(TlsError::Setup("no PSK".into()));
        };
        let suite = i.suite();
        let ctx = i
            .ctx
            .get_or_init(|| {
                crate::reactor::tls::client_context(CipherSuite {
                    name: suite.name(),
                    code: suite.code(),
                })
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| TlsError::Setup(e.clone()))?;
        let (id, key) = match &i.key {
            Key::Configured { psk, version } => {
                let id = Identity::new(*version, psk, hostnqn, subnqn);
                let key = id.tls_psk(&psk.retained(hostnqn));
                (id, key)
            }
            Key::Generated(g) => (g.identity(hostnqn, subnqn), g.tls_psk()),
        };
        crate::reactor::tls::client_ssl(
            ctx,
            id.encode().into_bytes(),
            Psk {
                key,
                suite: CipherSuite {
                    name: suite.name(),
                    code: suite.code(),
                },
            },
        )
    }
}

impl std::fmt::Debug for HostTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => write!(f, "HostTls(none)"),
            Some(i) => match &i.key {
                Key::Configured { psk, version } => write!(
                    f,
                    "HostTls({}, identity version {version})",
                    psk.suite().name()
                ),
                Key::Generated(g) => write!(f, "HostTls({}, generated)", g.suite().name()),
            },
        }
    }
}

impl PartialEq for HostTls {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for HostTls {}
