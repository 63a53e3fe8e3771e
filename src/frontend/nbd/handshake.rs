//! The handshake: greeting, client flags, and option haggling until the client enters
//! transmission (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`) or leaves.
//!
//! Every option gets its reply (`NBD_REP_ERR_*` with a message for the human when it
//! cannot be honoured); only what proto.md says cannot be answered closes the
//! connection: bad magic, unknown client flags, an `EXPORT_NAME` that cannot be
//! satisfied, or an option too large to be anything but an attack.

use super::export::ExportEntry;
use super::proto::{self, ClientOption, ReplyMode};
use super::server::ServerShared;
use super::tls::{self, TlsIo, TlsMode, TlsStream};
use crate::bdev::{Bdev, Channel};
use crate::reactor::io::{self, Async};
use crate::reactor::recv::RecvBuf;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// Option data up to this size is read and parsed.
const MAX_OPTION_LEN: u32 = 64 << 10;
/// Larger option data up to this size is skipped and refused with `NBD_REP_ERR_TOO_BIG`;
/// anything larger closes the connection.
const MAX_SKIPPED_OPTION_LEN: u32 = 1 << 20;
/// The context id `SET_META_CONTEXT` assigns to `base:allocation`.
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;
/// The context id `SET_META_CONTEXT` assigns to a `qemu:dirty-bitmap:<name>`.
pub(crate) const DIRTY_BITMAP_ID: u32 = 2;
/// The context id `SET_META_CONTEXT` assigns to `qemu:allocation-depth`.
pub(crate) const ALLOCATION_DEPTH_ID: u32 = 3;

/// What the client chose.
pub(crate) struct Negotiated {
    pub(crate) export: Arc<ExportEntry>,
    pub(crate) reply: ReplyMode,
    /// `base:allocation` was selected for this export.
    pub(crate) block_status: bool,
    /// A `qemu:dirty-bitmap:<name>` was selected for this export: the channel of the
    /// bdev `<name>`, which block status compares the export with.
    pub(crate) dirty_base: Option<Channel>,
    /// `qemu:allocation-depth` was selected for this export.
    pub(crate) allocation_depth: bool,
    pub(crate) chan: Channel,
}

/// The metadata contexts `SET_META_CONTEXT` selected, for one export.
struct MetaSelection {
    export: u64,
    base_allocation: bool,
    allocation_depth: bool,
    /// The bdev of a `qemu:dirty-bitmap:<name>` context.
    dirty: Option<Arc<dyn Bdev>>,
}

/// How a handshake ended.
pub(crate) enum Outcome {
    /// The client entered transmission.
    Transmission(Negotiated),
    /// The client left (`NBD_OPT_ABORT`, or closed the socket between options).
    Left,
}

/// Why a handshake failed.
#[derive(Debug)]
pub(crate) enum Failure {
    Io(std::io::Error),
    /// The client broke a rule that proto.md answers by closing.
    Protocol(String),
    /// The TLS handshake after `STARTTLS` failed (already logged, rate-limited).
    Tls(tls::TlsFailure),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Protocol(m) => f.write_str(m),
            Failure::Tls(e) => write!(f, "{e}"),
        }
    }
}

/// The byte stream of a connection: the plain socket, or a TLS session over it after
/// `NBD_OPT_STARTTLS`. Two variants so that plain connections run exactly the code they
/// ran before TLS existed (the transmission future is generic over them).
pub(crate) enum Link {
    Plain(Async<mio::net::TcpStream>),
    Tls(Box<TlsStream>),
}

impl Link {
    fn is_tls(&self) -> bool {
        matches!(self, Link::Tls(_))
    }

    /// Reads once into `rx`, waiting until something arrives; `Ok(0)` is end of stream.
    async fn fill(&mut self, rx: &mut RecvBuf) -> std::io::Result<usize> {
        match self {
            Link::Plain(s) => s.read_with(|s| rx.fill(s)).await,
            Link::Tls(t) => loop {
                match rx.fill(TlsIo(t)) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let s = &t.get_ref().0;
                        s.clear_readable();
                        std::future::poll_fn(|cx| s.poll_readable(cx)).await;
                    }
                    other => return other,
                }
            },
        }
    }

    /// Writes all of `buf`.
    async fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Plain(s) => io::write_all(s, buf).await,
            Link::Tls(t) => {
                while !buf.is_empty() {
                    match std::io::Write::write(&mut TlsIo(t), buf) {
                        Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                        Ok(n) => buf = &buf[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            let s = &t.get_ref().0;
                            s.clear_writable();
                            std::future::poll_fn(|cx| s.poll_writable(cx)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    /// Waits until at least `n` bytes (at most `rx`'s capacity) are in `rx`.
    async fn need(&mut self, rx: &mut RecvBuf, n: usize) -> std::io::Result<()> {
        if n > rx.capacity() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "message larger than the receive buffer",
            ));
        }
        while rx.len() < n {
            if self.fill(rx).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// Waits for and drops `n` bytes.
    async fn skip(&mut self, rx: &mut RecvBuf, mut n: u64) -> std::io::Result<()> {
        while n > 0 {
            if rx.is_empty() {
                self.need(rx, 1).await?;
            }
            let take = (rx.len() as u64).min(n) as usize;
            rx.consume(take);
            n -= take as u64;
        }
        Ok(())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

/// Negotiation state.
struct Haggle<'a> {
    shared: &'a ServerShared,
    out: Vec<u8>,
    structured: bool,
    extended: bool,
    /// The contexts selected, and the export they were selected for.
    meta: Option<MetaSelection>,
}

impl Haggle<'_> {
    fn reply(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        proto::encode_option_reply(&mut self.out, option, reply_type, data);
    }

    fn error(&mut self, option: u32, reply_type: u32, message: &str) {
        let mut m = message.as_bytes();
        if m.len() > proto::MAX_STRING_LEN {
            m = &m[..proto::MAX_STRING_LEN];
        }
        proto::encode_option_reply(&mut self.out, option, reply_type, m);
    }

    async fn flush(&mut self, link: &mut Link) -> std::io::Result<()> {
        if !self.out.is_empty() {
            link.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    fn reply_mode(&self) -> ReplyMode {
        if self.extended {
            ReplyMode::Extended
        } else if self.structured {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        }
    }

    fn lookup(&self, name: &str) -> Option<Arc<ExportEntry>> {
        self.shared.exports.get(name).filter(|e| !e.is_removed())
    }

    /// The contexts selected for `export`: whether `base:allocation` is, the channel
    /// of a dirty bitmap's bdev (`Err` with a message if it cannot be opened), and
    /// whether `qemu:allocation-depth` is.
    fn selected(&self, export: &ExportEntry) -> Result<(bool, Option<Channel>, bool), String> {
        match &self.meta {
            Some(m) if m.export == export.id => {
                let dirty = match &m.dirty {
                    Some(b) => Some(Channel::get(b).map_err(|e| e.to_string())?),
                    None => None,
                };
                Ok((m.base_allocation, dirty, m.allocation_depth))
            }
            _ => Ok((false, None, false)),
        }
    }

    /// The bdev a `qemu:dirty-bitmap:<name>` query names, if the export can report
    /// its changes against it.
    fn dirty_bitmap_base(&self, export: &ExportEntry, query: &str) -> Option<Arc<dyn Bdev>> {
        let name = query.strip_prefix(proto::META_DIRTY_BITMAP_PREFIX)?;
        let family = export.bdev.change_family()?;
        let base = (self.shared.lookup.get()?)(name)?;
        (base.change_family() == Some(family)).then_some(base)
    }

    /// `NBD_OPT_INFO` / `NBD_OPT_GO`: the information replies, then ACK (or an error).
    /// Returns the negotiated export when `go` succeeded.
    fn info_or_go(
        &mut self,
        option: u32,
        name: &str,
        requests: &[u16],
        go: bool,
    ) -> Option<Negotiated> {
        let Some(export) = self.lookup(name) else {
            self.error(
                option,
                proto::REP_ERR_UNKNOWN,
                &format!("export `{name}` does not exist"),
            );
            return None;
        };
        let chunked = self.structured || self.extended;
        let flags = export.transmission_flags(chunked);
        self.reply(
            option,
            proto::REP_INFO,
            &proto::encode_info_export(export.size_bytes(), flags),
        );
        if requests.contains(&proto::INFO_NAME) || name != export.name {
            self.reply(
                option,
                proto::REP_INFO,
                &proto::encode_info_string(proto::INFO_NAME, &export.name),
            );
        }
        if requests.contains(&proto::INFO_DESCRIPTION) && !export.description.is_empty() {
            self.reply(
                option,
                proto::REP_INFO,
                &proto::encode_info_string(proto::INFO_DESCRIPTION, &export.description),
            );
        }
        // Sent whether asked or not: the server enforces non-default constraints.
        self.reply(
            option,
            proto::REP_INFO,
            &proto::encode_info_block_size(export.block_sizes()),
        );
        if !go {
            self.reply(option, proto::REP_ACK, &[]);
            return None;
        }
        let chan = match Channel::get(&export.bdev) {
            Ok(c) => c,
            Err(e) => {
                self.error(option, proto::REP_ERR_UNKNOWN, &e.to_string());
                return None;
            }
        };
        let (block_status, dirty_base, allocation_depth) = match self.selected(&export) {
            Ok(s) => s,
            Err(e) => {
                self.error(option, proto::REP_ERR_UNKNOWN, &e);
                return None;
            }
        };
        self.reply(option, proto::REP_ACK, &[]);
        Some(Negotiated {
            block_status,
            dirty_base,
            allocation_depth,
            export,
            reply: self.reply_mode(),
            chan,
        })
    }

    /// `LIST_META_CONTEXT` / `SET_META_CONTEXT`.
    fn meta_context(&mut self, option: u32, export: &str, queries: &[String]) {
        let set = option == proto::OPT_SET_META_CONTEXT;
        if set {
            // A SET replaces the selection, even when it fails.
            self.meta = None;
        }
        if !(self.structured || self.extended) {
            self.error(
                option,
                proto::REP_ERR_INVALID,
                "structured replies must be negotiated first",
            );
            return;
        }
        let Some(entry) = self.lookup(export) else {
            self.error(
                option,
                proto::REP_ERR_UNKNOWN,
                &format!("export `{export}` does not exist"),
            );
            return;
        };
        if let Some(q) = queries.iter().find(|q| !q.contains(':')) {
            self.error(
                option,
                proto::REP_ERR_INVALID,
                &format!("query `{q}` does not start with a namespace and a colon"),
            );
            return;
        }
        // A context of a fixed name: selected by its name; listed by its name, its
        // namespace or an empty query. Replied to with `id` when selected.
        let fixed = |h: &mut Self, name: &str, namespace: &str, id: u32| {
            let matched = if set {
                queries.iter().any(|q| q == name)
            } else {
                queries.is_empty() || queries.iter().any(|q| q == namespace || q == name)
            };
            if matched {
                let id = if set { id } else { 0 };
                h.reply(
                    option,
                    proto::REP_META_CONTEXT,
                    &proto::encode_meta_context(id, name),
                );
            }
            matched
        };
        let base_allocation = fixed(
            self,
            proto::META_BASE_ALLOCATION,
            "base:",
            BASE_ALLOCATION_ID,
        );
        let allocation_depth = fixed(
            self,
            proto::META_ALLOCATION_DEPTH,
            "qemu:",
            ALLOCATION_DEPTH_ID,
        );
        // One dirty bitmap: the first query that names a bdev the export can be
        // compared with (dirty bitmaps are not listed: any snapshot of the pool is one).
        let dirty = queries
            .iter()
            .find_map(|q| self.dirty_bitmap_base(&entry, q).map(|b| (q, b)));
        if let Some((q, _)) = &dirty {
            let id = if set { DIRTY_BITMAP_ID } else { 0 };
            self.reply(
                option,
                proto::REP_META_CONTEXT,
                &proto::encode_meta_context(id, q),
            );
        }
        if set && (base_allocation || dirty.is_some() || allocation_depth) {
            self.meta = Some(MetaSelection {
                export: entry.id,
                base_allocation,
                allocation_depth,
                dirty: dirty.map(|(_, b)| b),
            });
        }
        self.reply(option, proto::REP_ACK, &[]);
    }
}

/// Runs the handshake on `link` (upgrading it to TLS on `STARTTLS`) and hands the link
/// back with the outcome; bytes the client sent after its last option stay in `rx` for
/// the transmission phase.
pub(crate) async fn negotiate(
    mut link: Link,
    rx: &mut RecvBuf,
    shared: &ServerShared,
    peer: SocketAddr,
    closed: &dyn Fn() -> bool,
) -> Result<(Outcome, Link), Failure> {
    let offered = proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES;
    let mode = shared.tls.as_ref().map_or(TlsMode::Off, |t| t.mode);
    let mut h = Haggle {
        shared,
        out: Vec::with_capacity(256),
        structured: false,
        extended: false,
        meta: None,
    };
    proto::encode_greeting(&mut h.out, offered);
    h.flush(&mut link).await?;

    link.need(rx, 4).await?;
    let raw = u32::from_be_bytes(rx.data()[..4].try_into().unwrap_or_default());
    rx.consume(4);
    let client = proto::parse_client_flags(raw, offered)
        .map_err(|e| Failure::Protocol(format!("client flags: {e}")))?;

    loop {
        match link.need(rx, proto::OPTION_HEADER_LEN).await {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && rx.is_empty() => {
                return Ok((Outcome::Left, link));
            }
            other => other?,
        }
        let hdr = match proto::parse_option_header(rx.data()) {
            Ok(Some(hdr)) => hdr,
            Ok(None) => return Err(Failure::Protocol("truncated option header".into())),
            Err(e) => return Err(Failure::Protocol(format!("option header: {e}"))),
        };
        rx.consume(proto::OPTION_HEADER_LEN);
        let option = hdr.option;
        if hdr.len_bytes > MAX_OPTION_LEN {
            if hdr.len_bytes > MAX_SKIPPED_OPTION_LEN || option == proto::OPT_EXPORT_NAME {
                return Err(Failure::Protocol(format!(
                    "{} with {} bytes of data",
                    proto::option_name(option),
                    hdr.len_bytes
                )));
            }
            link.skip(rx, hdr.len_bytes as u64).await?;
            if mode == TlsMode::Required && !link.is_tls() {
                // FORCEDTLS answers nothing else before the upgrade.
                h.error(
                    option,
                    proto::REP_ERR_TLS_REQD,
                    "TLS is required: send NBD_OPT_STARTTLS first",
                );
            } else {
                h.error(option, proto::REP_ERR_TOO_BIG, "option data too large");
            }
            h.flush(&mut link).await?;
            continue;
        }
        let len = hdr.len_bytes as usize;
        link.need(rx, len).await?;
        let parsed = proto::parse_option(option, &rx.data()[..len]);
        rx.consume(len);
        // FORCEDTLS: before the upgrade, only STARTTLS and ABORT are served.
        if mode == TlsMode::Required
            && !link.is_tls()
            && option != proto::OPT_STARTTLS
            && option != proto::OPT_ABORT
        {
            shared.tls_refusals.log(
                peer,
                "tls_required",
                &format!(
                    "{} before NBD_OPT_STARTTLS (tls: required)",
                    proto::option_name(option)
                ),
            );
            if option == proto::OPT_EXPORT_NAME {
                return Err(Failure::Protocol(
                    "NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS (tls: required)".into(),
                ));
            }
            h.error(
                option,
                proto::REP_ERR_TLS_REQD,
                "TLS is required: send NBD_OPT_STARTTLS first",
            );
            h.flush(&mut link).await?;
            continue;
        }
        let opt = match parsed {
            Ok(o) => o,
            Err(e) if option == proto::OPT_EXPORT_NAME => {
                return Err(Failure::Protocol(format!("NBD_OPT_EXPORT_NAME: {e}")));
            }
            Err(e) => {
                h.error(option, proto::REP_ERR_INVALID, &e.to_string());
                h.flush(&mut link).await?;
                continue;
            }
        };
        if shared.stopping() && !matches!(opt, ClientOption::Abort) {
            if option == proto::OPT_EXPORT_NAME {
                return Err(Failure::Protocol("server is shutting down".into()));
            }
            h.error(
                option,
                proto::REP_ERR_SHUTDOWN,
                "the server is shutting down",
            );
            h.flush(&mut link).await?;
            continue;
        }
        match opt {
            ClientOption::Abort => {
                h.reply(option, proto::REP_ACK, &[]);
                // The client may already have closed; a failed ACK does not matter.
                let _ = h.flush(&mut link).await;
                return Ok((Outcome::Left, link));
            }
            ClientOption::List => {
                for e in shared.exports.list() {
                    let data = proto::encode_rep_server(&e.name, &e.description);
                    h.reply(option, proto::REP_SERVER, &data);
                }
                h.reply(option, proto::REP_ACK, &[]);
            }
            ClientOption::StartTls => match &shared.tls {
                None => h.error(
                    option,
                    proto::REP_ERR_POLICY,
                    "TLS is not enabled on this server",
                ),
                Some(_) if link.is_tls() => {
                    h.error(option, proto::REP_ERR_INVALID, "TLS is already active");
                }
                Some(server_tls) => {
                    h.reply(option, proto::REP_ACK, &[]);
                    h.flush(&mut link).await?;
                    if !rx.is_empty() {
                        // The client had to wait for the ACK before its ClientHello.
                        return Err(Failure::Protocol(format!(
                            "{} bytes after NBD_OPT_STARTTLS before its reply",
                            rx.len()
                        )));
                    }
                    let Link::Plain(sock) = link else {
                        return Err(Failure::Protocol("TLS is already active".into()));
                    };
                    match tls::accept(server_tls, sock, closed).await {
                        Ok(t) => {
                            link = Link::Tls(Box::new(t));
                            tracing::debug!(%peer, "nbd: TLS session established");
                        }
                        Err(e) => {
                            if !matches!(e, tls::TlsFailure::Closed) {
                                shared.tls_refusals.log(peer, e.kind(), &e);
                            }
                            return Err(Failure::Tls(e));
                        }
                    }
                    // What was negotiated in clear text does not carry over.
                    h.structured = false;
                    h.extended = false;
                    h.meta = None;
                    continue;
                }
            },
            ClientOption::StructuredReply => {
                if h.extended {
                    h.error(
                        option,
                        proto::REP_ERR_EXT_HEADER_REQD,
                        "extended headers are already negotiated",
                    );
                } else {
                    h.structured = true;
                    h.reply(option, proto::REP_ACK, &[]);
                }
            }
            ClientOption::ExtendedHeaders => {
                h.extended = true;
                h.reply(option, proto::REP_ACK, &[]);
            }
            ClientOption::Info { name, requests } => {
                h.info_or_go(option, &name, &requests, false);
            }
            ClientOption::Go { name, requests } => {
                if let Some(n) = h.info_or_go(option, &name, &requests, true) {
                    h.flush(&mut link).await?;
                    return Ok((Outcome::Transmission(n), link));
                }
            }
            ClientOption::ListMetaContext { export, queries }
            | ClientOption::SetMetaContext { export, queries } => {
                h.meta_context(option, &export, &queries);
            }
            ClientOption::ExportName { name } => {
                if h.extended {
                    return Err(Failure::Protocol(
                        "NBD_OPT_EXPORT_NAME after extended headers".into(),
                    ));
                }
                let Some(export) = h.lookup(&name) else {
                    return Err(Failure::Protocol(format!(
                        "NBD_OPT_EXPORT_NAME: export `{name}` does not exist"
                    )));
                };
                let chan = Channel::get(&export.bdev)
                    .map_err(|e| Failure::Protocol(format!("NBD_OPT_EXPORT_NAME: {e}")))?;
                let flags = export.transmission_flags(h.structured);
                proto::encode_export_name_reply(
                    &mut h.out,
                    export.size_bytes(),
                    flags,
                    !client.no_zeroes,
                );
                h.flush(&mut link).await?;
                let (block_status, dirty_base, allocation_depth) =
                    h.selected(&export).unwrap_or((false, None, false));
                return Ok((
                    Outcome::Transmission(Negotiated {
                        block_status,
                        dirty_base,
                        allocation_depth,
                        reply: h.reply_mode(),
                        export,
                        chan,
                    }),
                    link,
                ));
            }
            ClientOption::Unknown { option } => {
                h.error(
                    option,
                    proto::REP_ERR_UNSUP,
                    &format!("option {option} is not supported"),
                );
            }
        }
        h.flush(&mut link).await?;
    }
}
