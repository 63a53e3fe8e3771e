//! NBD over TLS: the server's TLS settings (the `tls*` keys of the `nbd:` section and of
//! `nbd_server_start`), the OpenSSL context built from them, client authorisation by
//! certificate subject, and the non-blocking TLS handshake after `NBD_OPT_STARTTLS`.
//!
//! Modes, as the protocol document names them: `off` (NOTLS: `STARTTLS` is refused
//! with `NBD_REP_ERR_POLICY`), `optional` (SELECTIVETLS with no TLS-only export: a
//! client may upgrade, or not), `required` (FORCEDTLS: before the upgrade every option
//! but `STARTTLS` and `ABORT` gets `NBD_REP_ERR_TLS_REQD`, and `EXPORT_NAME` closes).
//!
//! With `tls_ca`, a client must present a certificate that the CA signed (as
//! qemu-nbd's `verify-peer=on`); with `tls_authz` too, its subject must be one of the
//! listed distinguished names, written as qemu's `tls-authz-simple` identities are
//! (RFC 4514, most specific first: `CN=client,O=Example,C=GB`). A client refused
//! there fails the TLS handshake (the protocol: after the `ACK` a failed handshake
//! ends the session), and the refusal is logged without key material. With
//! `tls_psk_file` (`IDENTITY:HEXKEY` lines, as qemu's `keys.psk`), a client may instead
//! prove a pre-shared key (TLS 1.3 external PSK; GnuTLS clients interoperate).
//!
//! The handshake runs on the connection's core over the non-blocking socket: OpenSSL
//! reports `WANT_READ`/`WANT_WRITE`, the task waits for the socket's readiness and
//! tries again, within [`TLS_HANDSHAKE_TIMEOUT`]. The record layer after it is the
//! same [`SslStream`], driven by the transmission future through [`TlsIo`]; plain
//! connections never see any of this (a separate variant of the connection's link).

use super::NbdError;
use crate::reactor::{self, io::Async, tls::SockIo};
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, SslAcceptor, SslContext, SslMethod, SslOptions, SslSessionCacheMode, SslStream,
    SslVerifyMode, SslVersion,
};
use openssl::x509::{X509Name, X509NameRef, X509VerifyResult};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

/// A client has this long to finish the TLS handshake after the `ACK` of `STARTTLS`.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether and how a server offers TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// No TLS (`STARTTLS` refused with `NBD_REP_ERR_POLICY`).
    #[default]
    Off,
    /// TLS offered; plain clients are served too.
    Optional,
    /// Nothing but `STARTTLS` and `ABORT` is answered before the upgrade.
    Required,
}

impl TlsMode {
    pub fn is_off(&self) -> bool {
        *self == TlsMode::Off
    }
}

/// The TLS settings of a server: files are named, never their contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NbdTlsSettings {
    pub mode: TlsMode,
    /// The server's certificate (PEM; a chain, leaf first).
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM), checked as the keyring checks key files.
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; with it, a client
    /// certificate is required.
    pub ca: Option<PathBuf>,
    /// Client certificate subjects allowed in (empty: any the CA signed).
    pub authz: Vec<String>,
    /// Pre-shared keys, `IDENTITY:HEXKEY` lines (qemu's `keys.psk`, libnbd's
    /// `tls-psk-file`), checked as the keyring checks key files: a client that names one
    /// of these identities and proves its key gets in without a certificate.
    pub psk_file: Option<PathBuf>,
}

impl NbdTlsSettings {
    /// The settings of the six `tls*` keys that the `nbd:` section
    /// ([`super::NbdConfig`]) and `nbd_server_start` both take, under those names:
    /// `tls`, `tls_cert`, `tls_key`, `tls_ca`, `tls_authz`, `tls_psk_file`.
    pub fn from_keys(
        tls: TlsMode,
        tls_cert: &Option<PathBuf>,
        tls_key: &Option<PathBuf>,
        tls_ca: &Option<PathBuf>,
        tls_authz: &[String],
        tls_psk_file: &Option<PathBuf>,
    ) -> NbdTlsSettings {
        NbdTlsSettings {
            mode: tls,
            cert: tls_cert.clone(),
            key: tls_key.clone(),
            ca: tls_ca.clone(),
            authz: tls_authz.to_vec(),
            psk_file: tls_psk_file.clone(),
        }
    }

    /// Checks what can be checked without reading files; errors name the field (under
    /// `prefix`, `nbd.` for the YAML).
    pub fn validate(&self, prefix: &str) -> Result<(), NbdError> {
        let field = |name: &str, reason: &str| NbdError::Config {
            field: format!("{prefix}{name}"),
            reason: reason.to_string(),
        };
        if self.mode.is_off() {
            for (name, set) in [
                ("tls_cert", self.cert.is_some()),
                ("tls_key", self.key.is_some()),
                ("tls_ca", self.ca.is_some()),
                ("tls_authz", !self.authz.is_empty()),
                ("tls_psk_file", self.psk_file.is_some()),
            ] {
                if set {
                    return Err(field(
                        name,
                        "is set but `tls` is off (set `tls: optional` or `tls: required`)",
                    ));
                }
            }
            return Ok(());
        }
        let mode = match self.mode {
            TlsMode::Required => "required",
            _ => "optional",
        };
        if self.cert.is_none() && self.psk_file.is_none() {
            return Err(field(
                "tls_cert",
                &format!(
                    "missing: `tls: {mode}` needs the server's certificate file (or tls_psk_file)"
                ),
            ));
        }
        if self.key.is_none() && self.cert.is_some() {
            return Err(field(
                "tls_key",
                &format!("missing: `tls: {mode}` needs the server's private key file"),
            ));
        }
        if self.key.is_some() && self.cert.is_none() {
            return Err(field(
                "tls_cert",
                "missing: `tls_key` is set, but not the certificate it belongs to",
            ));
        }
        if !self.authz.is_empty() && self.ca.is_none() {
            return Err(field(
                "tls_authz",
                "needs `tls_ca`: client certificates are checked against that CA first",
            ));
        }
        if let Some(i) = self.authz.iter().position(|s| s.trim().is_empty()) {
            return Err(field(&format!("tls_authz[{i}]"), "is empty"));
        }
        Ok(())
    }

    /// Builds the server's TLS context (`None` when TLS is off). Reads the files: the
    /// key only after the keyring's checks; errors name the field and the file, never
    /// the key.
    pub(crate) fn build(&self, prefix: &str) -> Result<Option<Arc<ServerTls>>, NbdError> {
        self.validate(prefix)?;
        if self.mode.is_off() {
            return Ok(None);
        }
        let err = |name: &str, path: &Path, e: &dyn std::fmt::Display| NbdError::Config {
            field: format!("{prefix}{name}"),
            reason: format!("`{}`: {e}", path.display()),
        };
        // Mozilla's "intermediate" profile: TLS 1.2 and 1.3, AEAD suites only.
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(|e| err("tls", Path::new("openssl"), &e))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(|e| err("tls", Path::new("openssl"), &e))?;
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            b.set_certificate_chain_file(cert)
                .map_err(|e| err("tls_cert", cert, &e))?;
            let key_field = format!("{prefix}tls_key");
            let secret =
                crate::keyring::read_key_file(&key_field, key).map_err(|e| NbdError::Config {
                    field: key_field.clone(),
                    reason: e.to_string(),
                })?;
            let pkey = PKey::private_key_from_pem(secret.expose())
                .map_err(|_| err("tls_key", key, &"not a PEM private key"))?;
            drop(secret);
            let mismatch = |_| {
                err(
                    "tls_key",
                    key,
                    &"does not match the certificate of tls_cert",
                )
            };
            b.set_private_key(&pkey).map_err(mismatch)?;
            b.check_private_key().map_err(mismatch)?;
        }
        if let Some(path) = &self.psk_file {
            let keys = Arc::new(load_psk_file(&format!("{prefix}tls_psk_file"), path)?);
            // TLS 1.3 external PSKs through OpenSSL's PSK callback (SHA-256 suites, as
            // GnuTLS uses by default); an unknown identity fails the handshake, and the
            // identity (a name, not a secret) is kept on the session for the log.
            b.set_psk_server_callback(move |ssl, identity, out| {
                let id = identity.map(String::from_utf8_lossy).unwrap_or_default();
                match keys.get(id.as_ref()) {
                    Some(k) if k.len() <= out.len() => {
                        out[..k.len()].copy_from_slice(k);
                        Ok(k.len())
                    }
                    _ => {
                        if let Some(idx) = psk_refused_index() {
                            ssl.set_ex_data(idx, id.into_owned());
                        }
                        Ok(0)
                    }
                }
            });
        }
        // No session tickets or cache (nothing is written after the handshake that the
        // client did not ask for), no renegotiation, and a peer that closes without
        // close_notify is an end of stream, not an error.
        b.set_options(
            SslOptions::NO_TICKET
                | SslOptions::NO_RENEGOTIATION
                | SslOptions::IGNORE_UNEXPECTED_EOF,
        );
        b.set_num_tickets(0)
            .map_err(|e| err("tls", Path::new("openssl"), &e))?;
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        if let Some(ca) = &self.ca {
            b.set_ca_file(ca).map_err(|e| err("tls_ca", ca, &e))?;
            let names = X509Name::load_client_ca_file(ca).map_err(|e| err("tls_ca", ca, &e))?;
            b.set_client_ca_list(names);
        }
        Ok(Some(Arc::new(ServerTls {
            ctx: b.build().into_context(),
            mode: self.mode,
            verify_peer: self.ca.is_some(),
            authz: Arc::new(self.authz.clone()),
        })))
    }
}

/// Where the PSK callback notes an identity it did not know.
fn psk_refused_index() -> Option<openssl::ex_data::Index<openssl::ssl::Ssl, String>> {
    type Idx = Option<openssl::ex_data::Index<openssl::ssl::Ssl, String>>;
    static INDEX: std::sync::OnceLock<Idx> = std::sync::OnceLock::new();
    *INDEX.get_or_init(|| openssl::ssl::Ssl::new_ex_index().ok())
}

/// The largest pre-shared key taken, in bytes.
const MAX_PSK_BYTES: usize = 256;

/// Pre-shared keys by identity.
type PskKeys = std::collections::BTreeMap<String, zeroize::Zeroizing<Vec<u8>>>;

/// Reads a PSK file (`IDENTITY:HEXKEY` per line; blank lines ignored) after the
/// keyring's checks. Errors name `field`, the file and the line, never a key.
fn load_psk_file(field: &str, path: &Path) -> Result<PskKeys, NbdError> {
    let bad = |reason: String| NbdError::Config {
        field: field.to_string(),
        reason: format!("`{}`: {reason}", path.display()),
    };
    let secret = crate::keyring::read_key_file(field, path).map_err(|e| NbdError::Config {
        field: field.to_string(),
        reason: e.to_string(),
    })?;
    let text = std::str::from_utf8(secret.expose())
        .map_err(|_| bad("is not text (IDENTITY:HEXKEY lines)".into()))?;
    let mut keys = PskKeys::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((id, hex)) = line.split_once(':') else {
            return Err(bad(format!("line {n}: expected IDENTITY:HEXKEY")));
        };
        if id.is_empty() {
            return Err(bad(format!("line {n}: the identity is empty")));
        }
        if hex.is_empty() || hex.len() % 2 != 0 || hex.len() / 2 > MAX_PSK_BYTES {
            return Err(bad(format!(
                "line {n} (identity `{id}`): the key must be 1 to {MAX_PSK_BYTES} bytes in hexadecimal"
            )));
        }
        let mut key = zeroize::Zeroizing::new(Vec::with_capacity(hex.len() / 2));
        for pair in hex.as_bytes().chunks(2) {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => key.push((h * 16 + l) as u8),
                _ => {
                    return Err(bad(format!(
                        "line {n} (identity `{id}`): the key is not hexadecimal"
                    )));
                }
            }
        }
        if keys.insert(id.to_string(), key).is_some() {
            return Err(bad(format!("line {n}: identity `{id}` appears twice")));
        }
    }
    if keys.is_empty() {
        return Err(bad("holds no key".into()));
    }
    Ok(keys)
}

/// A server's TLS context and policy (shared by every core).
pub(crate) struct ServerTls {
    ctx: SslContext,
    pub(crate) mode: TlsMode,
    verify_peer: bool,
    authz: Arc<Vec<String>>,
}

/// A certificate subject as RFC 4514 writes it (GnuTLS and qemu's `tls-authz-simple`):
/// the most specific attribute first, `,` between, special characters escaped.
pub fn subject_dn(name: &X509NameRef) -> String {
    let mut out = String::new();
    let entries: Vec<_> = name.entries().collect();
    for e in entries.iter().rev() {
        if !out.is_empty() {
            out.push(',');
        }
        let nid = e.object().nid();
        let key = match nid.short_name() {
            Ok("emailAddress") => "EMAIL".to_string(),
            Ok(sn) => sn.to_string(),
            Err(_) => e.object().to_string(),
        };
        out.push_str(&key);
        out.push('=');
        let value = e
            .data()
            .to_string()
            .unwrap_or_else(|_| String::from_utf8_lossy(e.data().as_slice()).into_owned());
        let n = value.chars().count();
        for (i, c) in value.chars().enumerate() {
            let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
                || (i == 0 && (c == '#' || c == ' '))
                || (i + 1 == n && c == ' ');
            if special {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// A TLS session on a connection.
pub(crate) type TlsStream = SslStream<SockIo>;

/// The plaintext side of a TLS session for the connection's reads and writes:
/// `WouldBlock` when the socket has no record or no room. A vectored write writes its
/// slices in turn until one blocks, so a write shorter than offered means the socket
/// is full (as for a plain `writev`), never a stop half-way for no reason.
pub(crate) struct TlsIo<'a>(pub(crate) &'a mut TlsStream);

impl Read for TlsIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for b in bufs {
            let mut off = 0;
            while off < b.len() {
                // A write that blocked is retried later with the same bytes first (the
                // caller keeps them in place), as OpenSSL requires.
                match self.0.write(&b[off..]) {
                    Ok(0) => return Ok(total),
                    Ok(n) => {
                        off += n;
                        total += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => {
                        return Ok(total);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a TLS handshake failed (no key material: OpenSSL's reason, a subject).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsFailure {
    #[error("TLS handshake did not complete within {0:?}")]
    TimedOut(Duration),
    #[error("client certificate subject `{0}` is not in tls_authz")]
    NotAuthorised(String),
    #[error("client certificate refused: {0}")]
    BadCertificate(String),
    #[error("no client certificate (tls_ca requires one)")]
    NoCertificate,
    #[error("unknown PSK identity `{0}`")]
    UnknownPskIdentity(String),
    #[error("wrong pre-shared key (the client's PSK binder does not verify)")]
    WrongPsk,
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("cannot start a TLS session: {0}")]
    Setup(String),
    #[error("the control plane closed the connection")]
    Closed,
}

impl TlsFailure {
    /// The name under which refusals of this kind are rate-limited in the log.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            TlsFailure::TimedOut(_) => "tls_timeout",
            TlsFailure::NotAuthorised(_) => "tls_authz",
            TlsFailure::BadCertificate(_) | TlsFailure::NoCertificate => "tls_client_cert",
            TlsFailure::UnknownPskIdentity(_) => "tls_psk_identity",
            TlsFailure::WrongPsk => "tls_psk_key",
            TlsFailure::Handshake(_) | TlsFailure::Setup(_) | TlsFailure::Closed => "tls_handshake",
        }
    }
}

/// Runs the server side of a TLS handshake on `sock`, without blocking the core, within
/// [`TLS_HANDSHAKE_TIMEOUT`] (or until `closed` says the control plane wants the
/// connection gone).
pub(crate) async fn accept(
    tls: &ServerTls,
    sock: Async<mio::net::TcpStream>,
    closed: &dyn Fn() -> bool,
) -> Result<TlsStream, TlsFailure> {
    let mut ssl = openssl::ssl::Ssl::new(&tls.ctx).map_err(|e| TlsFailure::Setup(e.to_string()))?;
    // Why a certificate was refused, set by the verify callback (it runs inside the
    // handshake, on this thread).
    let refused: Arc<Mutex<Option<TlsFailure>>> = Arc::default();
    if tls.verify_peer {
        let authz = tls.authz.clone();
        let note = refused.clone();
        ssl.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            move |ok, ctx| {
                let mut slot = note.lock().unwrap_or_else(|p| p.into_inner());
                if !ok {
                    if slot.is_none() {
                        *slot = Some(TlsFailure::BadCertificate(format!(
                            "{} (depth {})",
                            ctx.error().error_string(),
                            ctx.error_depth()
                        )));
                    }
                    return false;
                }
                if ctx.error_depth() != 0 || authz.is_empty() {
                    return true;
                }
                let Some(cert) = ctx.current_cert() else {
                    return false;
                };
                let dn = subject_dn(cert.subject_name());
                if authz.contains(&dn) {
                    return true;
                }
                *slot = Some(TlsFailure::NotAuthorised(dn));
                ctx.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
                false
            },
        );
    }
    let mut stream = SslStream::new(ssl, SockIo(std::rc::Rc::new(sock)))
        .map_err(|e| TlsFailure::Setup(e.to_string()))?;
    let handshake = std::future::poll_fn(|cx| {
        loop {
            match stream.accept() {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    let s = &stream.get_ref().0;
                    s.clear_readable();
                    if s.poll_readable(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(e) if e.code() == ErrorCode::WANT_WRITE => {
                    let s = &stream.get_ref().0;
                    s.clear_writable();
                    if s.poll_writable(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    });
    let mut handshake = pin!(handshake);
    let mut sleep = reactor::sleep(TLS_HANDSHAKE_TIMEOUT);
    let result = std::future::poll_fn(|cx| {
        if closed() {
            return Poll::Ready(Err(TlsFailure::Closed));
        }
        if let Poll::Ready(r) = handshake.as_mut().poll(cx) {
            return Poll::Ready(r.map_err(|e| {
                let reason = match e.ssl_error() {
                    Some(stack) => stack.to_string(),
                    None => match e.io_error() {
                        Some(io) => io.to_string(),
                        None => "the client closed the connection".to_string(),
                    },
                };
                TlsFailure::Handshake(reason)
            }));
        }
        if Pin::new(&mut sleep).poll(cx).is_ready() {
            return Poll::Ready(Err(TlsFailure::TimedOut(TLS_HANDSHAKE_TIMEOUT)));
        }
        Poll::Pending
    })
    .await;
    let mut noted = refused.lock().unwrap_or_else(|p| p.into_inner()).take();
    if noted.is_none()
        && result.is_err()
        && let Some(idx) = psk_refused_index()
        && let Some(id) = stream.ssl().ex_data(idx)
    {
        noted = Some(TlsFailure::UnknownPskIdentity(id.clone()));
    }
    match (result, noted) {
        (Ok(()), _) => Ok(stream),
        (Err(TlsFailure::Handshake(_)), Some(why)) => Err(why),
        (Err(TlsFailure::Handshake(reason)), None)
            if tls.verify_peer && reason.contains("peer did not return a certificate") =>
        {
            Err(TlsFailure::NoCertificate)
        }
        (Err(TlsFailure::Handshake(reason)), None) if reason.contains("binder does not verify") => {
            Err(TlsFailure::WrongPsk)
        }
        (Err(e), _) => Err(e),
    }
}

/// Rate-limited log of refused TLS clients, shared by the server's cores (handshakes
/// only: never taken on the I/O path).
#[derive(Default)]
pub(crate) struct TlsRefusals(Mutex<crate::frontend::conn_limits::RefusalLog>);

impl TlsRefusals {
    /// Logs `what` for `peer` unless one of the same kind was logged less than a second
    /// ago (then only counts it).
    pub(crate) fn log(
        &self,
        peer: std::net::SocketAddr,
        kind: &'static str,
        what: &dyn std::fmt::Display,
    ) {
        let suppressed = self.0.lock().unwrap_or_else(|p| p.into_inner()).note(kind);
        if let Some(suppressed) = suppressed {
            tracing::warn!(%peer, kind, suppressed, "nbd: client refused: {what}");
        }
    }
}
