//! TLS 1.3 with external pre-shared keys over a reactor's non-blocking socket, with
//! OpenSSL (the `openssl` crate). No certificates: the server finds the key by the
//! identity the client offers ([`Psk`] from a [`PskLookup`]), the client offers one
//! identity and its key. Each key carries its cipher suite (its hash is the PSK's), so a
//! connection negotiates that suite or fails.
//!
//! OpenSSL takes TLS 1.3 external PSKs through `SSL_CTX_set_psk_find_session_callback`
//! (server) and `SSL_CTX_set_psk_use_session_callback` (client), each answering with an
//! `SSL_SESSION` holding the key and the cipher. The `openssl` crate does not expose
//! them, so [`ffi`] declares them (and the `SSL_SESSION` setters) from libssl, which
//! `openssl-sys` links.
//!
//! The handshake is driven by [`handshake`] on the reactor, waiting for readiness
//! between OpenSSL's `WANT_READ`/`WANT_WRITE`, under a deadline; records are then read
//! and written through [`TlsStream`] (`Read`/`Write` that answer `WouldBlock` as the
//! socket does). Nothing here logs key material; errors carry OpenSSL's reason strings,
//! which never hold it.

use super::io::Async;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslStream,
    SslVersion,
};
use std::io::{self, IoSlice, Read, Write};
use std::rc::Rc;
use std::time::Duration;
use zeroize::Zeroizing;

/// A TLS 1.3 cipher suite by its IANA name and code point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CipherSuite {
    pub name: &'static str,
    pub code: [u8; 2],
}

/// A key for one connection: the TLS PSK and the suite it is used with.
pub struct Psk {
    pub key: Zeroizing<Vec<u8>>,
    pub suite: CipherSuite,
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Psk({} bytes, {})", self.key.len(), self.suite.name)
    }
}

/// The server's look-up: the identity a client offered → its key, or why there is none
/// (logged by the caller's `on_refusal`, never holding key material).
pub type PskLookup = Box<dyn Fn(&[u8]) -> Result<Psk, String> + Send + Sync>;

/// Why TLS failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS setup failed: {0}")]
    Setup(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error(
        "TLS handshake not finished within {} ms ({received} bytes received from the peer{})",
        limit.as_millis(),
        if *received == 0 { ": it sent nothing" } else { ": an incomplete handshake" }
    )]
    Timeout { limit: Duration, received: u64 },
}

/// Raw OpenSSL entry points the `openssl` crate does not wrap.
mod ffi {
    use openssl_sys::{EVP_MD, SSL, SSL_CIPHER, SSL_CTX, SSL_SESSION};
    use std::os::raw::c_int;

    pub type FindSessionCb = unsafe extern "C" fn(
        ssl: *mut SSL,
        identity: *const u8,
        identity_len: usize,
        sess: *mut *mut SSL_SESSION,
    ) -> c_int;
    pub type UseSessionCb = unsafe extern "C" fn(
        ssl: *mut SSL,
        md: *const EVP_MD,
        id: *mut *const u8,
        idlen: *mut usize,
        sess: *mut *mut SSL_SESSION,
    ) -> c_int;

    pub const TLS1_3_VERSION: c_int = 0x0304;

    unsafe extern "C" {
        pub fn SSL_CTX_set_psk_find_session_callback(ctx: *mut SSL_CTX, cb: Option<FindSessionCb>);
        pub fn SSL_CTX_set_psk_use_session_callback(ctx: *mut SSL_CTX, cb: Option<UseSessionCb>);
        pub fn SSL_SESSION_new() -> *mut SSL_SESSION;
        pub fn SSL_SESSION_free(s: *mut SSL_SESSION);
        pub fn SSL_SESSION_set1_master_key(
            s: *mut SSL_SESSION,
            key: *const u8,
            len: usize,
        ) -> c_int;
        pub fn SSL_SESSION_set_cipher(s: *mut SSL_SESSION, cipher: *const SSL_CIPHER) -> c_int;
        pub fn SSL_SESSION_set_protocol_version(s: *mut SSL_SESSION, version: c_int) -> c_int;
        pub fn SSL_CIPHER_find(ssl: *mut SSL, ptr: *const u8) -> *const SSL_CIPHER;
        pub fn SSL_get_ex_data(ssl: *const SSL, idx: c_int) -> *mut std::ffi::c_void;
        pub fn EVP_MD_get_size(md: *const EVP_MD) -> c_int;
    }
}

/// What a connection's callbacks reach through the `SSL`'s ex-data.
struct ServerState {
    lookup: PskLookup,
    /// The identity whose key was found.
    chosen: std::sync::Mutex<Option<Vec<u8>>>,
    /// Why the last look-up failed.
    refused: std::sync::Mutex<Option<String>>,
}

struct ClientState {
    identity: Vec<u8>,
    psk: Psk,
}

/// Locks a connection's own state (taken by its one thread only: never contended).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn server_index() -> openssl::ex_data::Index<Ssl, ServerState> {
    static IDX: std::sync::OnceLock<openssl::ex_data::Index<Ssl, ServerState>> =
        std::sync::OnceLock::new();
    *IDX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex-data index"))
}

fn client_index() -> openssl::ex_data::Index<Ssl, ClientState> {
    static IDX: std::sync::OnceLock<openssl::ex_data::Index<Ssl, ClientState>> =
        std::sync::OnceLock::new();
    *IDX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex-data index"))
}

/// A new `SSL_SESSION` holding `psk` for TLS 1.3, or null.
///
/// # Safety
/// `ssl` is a live `SSL` (the one whose callback is running).
unsafe fn psk_session(ssl: *mut openssl_sys::SSL, psk: &Psk) -> *mut openssl_sys::SSL_SESSION {
    // SAFETY: `ssl` is live (the caller's contract); `code` is the two bytes
    // SSL_CIPHER_find reads.
    let cipher = unsafe { ffi::SSL_CIPHER_find(ssl, psk.suite.code.as_ptr()) };
    if cipher.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: plain constructor; null on failure, checked.
    let sess = unsafe { ffi::SSL_SESSION_new() };
    if sess.is_null() {
        return sess;
    }
    // SAFETY: `sess` is the session just made; the key slice is valid for its length
    // (OpenSSL copies it); `cipher` is a static table entry OpenSSL returned.
    let ok = unsafe {
        ffi::SSL_SESSION_set1_master_key(sess, psk.key.as_ptr(), psk.key.len()) == 1
            && ffi::SSL_SESSION_set_cipher(sess, cipher) == 1
            && ffi::SSL_SESSION_set_protocol_version(sess, ffi::TLS1_3_VERSION) == 1
    };
    if !ok {
        // SAFETY: ours, not handed out.
        unsafe { ffi::SSL_SESSION_free(sess) };
        return std::ptr::null_mut();
    }
    sess
}

/// The server's PSK callback: looks the identity up; 0 fails the handshake.
unsafe extern "C" fn find_session_cb(
    ssl: *mut openssl_sys::SSL,
    identity: *const u8,
    identity_len: usize,
    sess: *mut *mut openssl_sys::SSL_SESSION,
) -> std::os::raw::c_int {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: OpenSSL calls this during the handshake of `ssl`, whose ex-data slot
        // holds the `ServerState` set by `server_ssl` (a `Box` the `Ssl` owns until it is
        // freed, after the handshake); the pointer is null if it was never set.
        let st =
            unsafe { ffi::SSL_get_ex_data(ssl, server_index().as_raw()) } as *const ServerState;
        if st.is_null() || identity.is_null() {
            return 0;
        }
        // SAFETY: see above; only shared access, on this thread.
        let st = unsafe { &*st };
        // SAFETY: OpenSSL passes the identity's bytes and their length.
        let id = unsafe { std::slice::from_raw_parts(identity, identity_len) };
        match (st.lookup)(id) {
            Ok(psk) => {
                // SAFETY: `ssl` is the live connection of this callback.
                let s = unsafe { psk_session(ssl, &psk) };
                if s.is_null() {
                    *lock(&st.refused) = Some("cannot build the PSK session".into());
                    return 0;
                }
                // SAFETY: `sess` is OpenSSL's out-pointer; it takes the reference.
                unsafe { *sess = s };
                *lock(&st.chosen) = Some(id.to_vec());
                1
            }
            Err(reason) => {
                *lock(&st.refused) = Some(reason);
                0
            }
        }
    }))
    .unwrap_or(0)
}

/// The client's PSK callback: offers the one identity and key of the connection.
unsafe extern "C" fn use_session_cb(
    ssl: *mut openssl_sys::SSL,
    md: *const openssl_sys::EVP_MD,
    id: *mut *const u8,
    idlen: *mut usize,
    sess: *mut *mut openssl_sys::SSL_SESSION,
) -> std::os::raw::c_int {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: as in `find_session_cb`: the slot holds the `ClientState` set by
        // `client_ssl`, owned by the `Ssl` for its whole life.
        let st =
            unsafe { ffi::SSL_get_ex_data(ssl, client_index().as_raw()) } as *const ClientState;
        if st.is_null() {
            return 0;
        }
        // SAFETY: see above.
        let st = unsafe { &*st };
        if !md.is_null() {
            // After a HelloRetryRequest OpenSSL asks for a key of the chosen hash: ours
            // has one hash only.
            // SAFETY: `md` is a live digest OpenSSL passes.
            let len = unsafe { ffi::EVP_MD_get_size(md) };
            if len as usize != st.psk.key.len() {
                // SAFETY: out-pointer; no session offered.
                unsafe { *sess = std::ptr::null_mut() };
                return 1;
            }
        }
        // SAFETY: `ssl` is the live connection of this callback.
        let s = unsafe { psk_session(ssl, &st.psk) };
        if s.is_null() {
            return 0;
        }
        // SAFETY: out-pointers OpenSSL passes; the identity lives in the `ClientState`,
        // which outlives the handshake (owned by the `Ssl`); OpenSSL takes the session.
        unsafe {
            *id = st.identity.as_ptr();
            *idlen = st.identity.len();
            *sess = s;
        }
        1
    }))
    .unwrap_or(0)
}

fn base_ctx(suites: &str) -> Result<SslContextBuilder, TlsError> {
    let setup = |e: openssl::error::ErrorStack| TlsError::Setup(e.to_string());
    let mut b = SslContextBuilder::new(SslMethod::tls()).map_err(setup)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .map_err(setup)?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))
        .map_err(setup)?;
    b.set_ciphersuites(suites).map_err(setup)?;
    // No resumption tickets (each connection uses the configured key), no compression.
    b.set_num_tickets(0).map_err(setup)?;
    b.set_options(SslOptions::NO_TICKET | SslOptions::NO_COMPRESSION);
    b.set_mode(SslMode::ENABLE_PARTIAL_WRITE | SslMode::ACCEPT_MOVING_WRITE_BUFFER);
    Ok(b)
}

/// A server context: TLS 1.3, both NVMe/TCP suites, keys found by identity.
pub fn server_context(suites: &[CipherSuite]) -> Result<SslContext, TlsError> {
    let names: Vec<&str> = suites.iter().map(|s| s.name).collect();
    let b = base_ctx(&names.join(":"))?;
    // SAFETY: `b` owns a live SSL_CTX; the callback is a plain function that only reads
    // the per-connection state set by `server_ssl`.
    unsafe { ffi::SSL_CTX_set_psk_find_session_callback(b.as_ptr(), Some(find_session_cb)) };
    Ok(b.build())
}

/// A client context for keys of `suite`.
pub fn client_context(suite: CipherSuite) -> Result<SslContext, TlsError> {
    let b = base_ctx(suite.name)?;
    // SAFETY: as in `server_context`.
    unsafe { ffi::SSL_CTX_set_psk_use_session_callback(b.as_ptr(), Some(use_session_cb)) };
    Ok(b.build())
}

/// The socket as OpenSSL's BIO sees it (NVMe/TCP queue pairs, NBD connections).
pub struct SockIo(pub Rc<Async<mio::net::TcpStream>>);

impl Read for SockIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.get_ref().read(buf)
    }
}

impl Write for SockIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.get_ref().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// [`SockIo`] that counts the bytes read (a stalled handshake's error tells how far
/// the peer got).
struct CountIo {
    sock: Rc<Async<mio::net::TcpStream>>,
    received: u64,
}

impl Read for CountIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.get_ref().read(buf)?;
        self.received += n as u64;
        Ok(n)
    }
}

impl Write for CountIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.get_ref().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Most plaintext in one TLS record.
const RECORD: usize = 16 << 10;

/// An established TLS connection.
pub struct TlsStream {
    s: SslStream<CountIo>,
    /// Small writes gathered into one record.
    stage: Vec<u8>,
    /// Server side: the identity the client was admitted with.
    identity: Option<Vec<u8>>,
}

impl TlsStream {
    /// The negotiated suite's name.
    pub fn suite(&self) -> &'static str {
        self.s.ssl().current_cipher().map_or("?", |c| c.name())
    }

    /// The PSK identity the client was admitted with (server side).
    pub fn identity(&self) -> Option<&[u8]> {
        self.identity.as_deref()
    }

    /// Sends close_notify (best effort: the socket is non-blocking).
    pub fn shutdown(&mut self) {
        let _ = self.s.shutdown();
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.s.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.s.write(buf)
    }

    /// One record per call: the first buffer when it fills a record, else the buffers
    /// gathered up to a record. A write that would block is retried by the caller with
    /// the same leading bytes and at least as many (what OpenSSL requires), as a send
    /// queue does.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return Ok(0);
        };
        if first.len() >= RECORD {
            return self.s.write(&first[..RECORD]);
        }
        self.stage.clear();
        for b in bufs {
            let n = b.len().min(RECORD - self.stage.len());
            self.stage.extend_from_slice(&b[..n]);
            if self.stage.len() == RECORD {
                break;
            }
        }
        let stage = std::mem::take(&mut self.stage);
        let r = self.s.write(&stage);
        self.stage = stage;
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A server-side `Ssl` for one connection.
pub fn server_ssl(ctx: &SslContext, lookup: PskLookup) -> Result<Ssl, TlsError> {
    let mut ssl = Ssl::new(ctx).map_err(|e| TlsError::Setup(e.to_string()))?;
    ssl.set_ex_data(
        server_index(),
        ServerState {
            lookup,
            chosen: Default::default(),
            refused: Default::default(),
        },
    );
    Ok(ssl)
}

/// A client-side `Ssl` offering `identity` with `psk`.
pub fn client_ssl(ctx: &SslContext, identity: Vec<u8>, psk: Psk) -> Result<Ssl, TlsError> {
    let mut ssl = Ssl::new(ctx).map_err(|e| TlsError::Setup(e.to_string()))?;
    ssl.set_ex_data(client_index(), ClientState { identity, psk });
    Ok(ssl)
}

/// Runs the handshake of `ssl` over `sock` (as server or client) until `limit` passes.
pub async fn handshake(
    sock: Rc<Async<mio::net::TcpStream>>,
    ssl: Ssl,
    server: bool,
    limit: Duration,
) -> Result<TlsStream, TlsError> {
    let deadline = super::now().after(limit);
    let io = CountIo {
        sock: sock.clone(),
        received: 0,
    };
    let mut s = SslStream::new(ssl, io).map_err(|e| TlsError::Setup(e.to_string()))?;
    let run = async {
        loop {
            let r = if server { s.accept() } else { s.connect() };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    sock.clear_readable();
                    std::future::poll_fn(|cx| sock.poll_readable(cx)).await;
                }
                Err(e) if e.code() == ErrorCode::WANT_WRITE => {
                    sock.clear_writable();
                    std::future::poll_fn(|cx| sock.poll_writable(cx)).await;
                }
                Err(e) => {
                    let refused = s
                        .ssl()
                        .ex_data(server_index())
                        .and_then(|st| lock(&st.refused).take());
                    let reason = match (refused, e.ssl_error()) {
                        (Some(r), _) => r,
                        (None, Some(stack)) => stack.to_string(),
                        (None, None) => match e.io_error() {
                            Some(io) => io.to_string(),
                            None => "the peer closed the connection".into(),
                        },
                    };
                    return Err(TlsError::Handshake(reason));
                }
            }
        }
    };
    let Some(done) = super::until(deadline, run).await else {
        return Err(TlsError::Timeout {
            limit,
            received: s.get_ref().received,
        });
    };
    done?;
    let identity = s
        .ssl()
        .ex_data(server_index())
        .and_then(|st| lock(&st.chosen).take());
    Ok(TlsStream {
        s,
        stage: Vec::with_capacity(RECORD),
        identity,
    })
}
