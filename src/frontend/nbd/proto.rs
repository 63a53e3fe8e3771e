//! The NBD wire format: constants, and parse/encode of every message the server reads or
//! writes (and, for tests and tools, the client's side of each).
//!
//! Pure and total: every function takes bytes or values and returns a value or a precise
//! error — never a panic, whatever the input. Parsers of stream data return `Ok(None)`
//! while a message is still incomplete. The reference is upstream's `doc/proto.md`
//! (fixed newstyle handshake, `INFO`/`GO`, structured replies, metadata contexts and
//! extended headers).
//!
//! All integers are big-endian on the wire.

use std::fmt;

// ---------------------------------------------------------------------------------------
// Magic numbers.

/// `NBDMAGIC`, first word of the server greeting.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second word of the greeting, and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a compact request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of an extended request (after `NBD_OPT_EXTENDED_HEADERS`).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Magic of an extended reply chunk.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

// ---------------------------------------------------------------------------------------
// Handshake flags.

/// Server handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: may omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// ---------------------------------------------------------------------------------------
// Transmission flags (16 bits, sent with the export size).

pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_RESIZE: u16 = 1 << 9;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---------------------------------------------------------------------------------------
// Options.

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// The symbolic name of an option, for logs and error messages.
pub fn option_name(option: u32) -> &'static str {
    match option {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        OPT_ABORT => "NBD_OPT_ABORT",
        OPT_LIST => "NBD_OPT_LIST",
        OPT_STARTTLS => "NBD_OPT_STARTTLS",
        OPT_INFO => "NBD_OPT_INFO",
        OPT_GO => "NBD_OPT_GO",
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
        _ => "unknown option",
    }
}

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_ERR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_ERR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_ERR | 10;

/// True for the error reply types (bit 31 set).
pub fn is_reply_error(reply_type: u32) -> bool {
    reply_type & REP_ERR != 0
}

// Information types of `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// The only metadata context this server knows.
pub const META_BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` flag: the extent is a hole (no storage allocated).
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the extent reads as zeros.
pub const STATE_ZERO: u32 = 1 << 1;

// ---------------------------------------------------------------------------------------
// Transmission: commands, command flags, reply chunks, errors.

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const CMD_RESIZE: u16 = 8;

/// The symbolic name of a command type.
pub fn command_name(kind: u16) -> &'static str {
    match kind {
        CMD_READ => "NBD_CMD_READ",
        CMD_WRITE => "NBD_CMD_WRITE",
        CMD_DISC => "NBD_CMD_DISC",
        CMD_FLUSH => "NBD_CMD_FLUSH",
        CMD_TRIM => "NBD_CMD_TRIM",
        CMD_CACHE => "NBD_CMD_CACHE",
        CMD_WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
        CMD_BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
        CMD_RESIZE => "NBD_CMD_RESIZE",
        _ => "unknown command",
    }
}

pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

/// Reply flag: this chunk is the last of its reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;

pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// Error values of replies (the protocol's own list, numerically Linux errnos).
pub const NBD_EPERM: u32 = 1;
pub const NBD_EIO: u32 = 5;
pub const NBD_ENOMEM: u32 = 12;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;
pub const NBD_EOVERFLOW: u32 = 75;
pub const NBD_ENOTSUP: u32 = 95;
pub const NBD_ESHUTDOWN: u32 = 108;

/// Maps an errno to the protocol's error list (anything unlisted becomes `EIO`).
pub fn nbd_errno(errno: i32) -> u32 {
    match errno as u32 {
        e @ (NBD_EPERM | NBD_EIO | NBD_ENOMEM | NBD_EINVAL | NBD_ENOSPC | NBD_EOVERFLOW
        | NBD_ENOTSUP | NBD_ESHUTDOWN) => e,
        0 => 0,
        _ => NBD_EIO,
    }
}

/// Longest string the protocol allows (export names, queries, messages).
pub const MAX_STRING_LEN: usize = 4096;

// ---------------------------------------------------------------------------------------
// Sizes.

/// Length of the server greeting.
pub const GREETING_LEN: usize = 18;
/// Length of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Length of a compact request header.
pub const REQUEST_LEN: usize = 28;
/// Length of an extended request header.
pub const EXTENDED_REQUEST_LEN: usize = 32;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;
/// Length of an extended reply chunk header.
pub const EXTENDED_REPLY_LEN: usize = 32;

// ---------------------------------------------------------------------------------------
// Little readers and writers.

/// A bounds-checked big-endian reader over a byte slice.
#[derive(Clone, Copy)]
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N).and_then(|b| b.try_into().ok())
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Length of a string as the 32-bit length field that precedes it (strings longer than
/// 4 GiB cannot be sent; callers keep strings within [`MAX_STRING_LEN`]).
fn len32(s: &[u8]) -> u32 {
    u32::try_from(s.len()).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------
// Handshake.

/// Why a handshake message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("bad magic {found:#018x} (expected {expected:#018x})")]
    BadMagic { expected: u64, found: u64 },
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("client flag NO_ZEROES set although the server did not offer it")]
    UnofferedNoZeroes,
}

/// The server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting(out: &mut Vec<u8>, handshake_flags: u16) {
    put_u64(out, NBD_MAGIC);
    put_u64(out, IHAVEOPT);
    put_u16(out, handshake_flags);
}

/// Parses a server greeting (client side); returns the handshake flags.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<u16>, HandshakeError> {
    let mut r = Reader::new(buf);
    let (Some(m1), Some(m2), Some(flags)) = (r.u64(), r.u64(), r.u16()) else {
        return Ok(None);
    };
    if m1 != NBD_MAGIC {
        return Err(HandshakeError::BadMagic {
            expected: NBD_MAGIC,
            found: m1,
        });
    }
    if m2 != IHAVEOPT {
        return Err(HandshakeError::BadMagic {
            expected: IHAVEOPT,
            found: m2,
        });
    }
    Ok(Some(flags))
}

/// The client flags the server understands, checked against what it offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

/// Validates the 32-bit client flags (the server MUST close on unknown flags).
pub fn parse_client_flags(flags: u32, offered: u16) -> Result<ClientFlags, HandshakeError> {
    let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
    if flags & !known != 0 {
        return Err(HandshakeError::UnknownClientFlags(flags & !known));
    }
    let no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
    if no_zeroes && offered & FLAG_NO_ZEROES == 0 {
        return Err(HandshakeError::UnofferedNoZeroes);
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes,
    })
}

/// The header of a client option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len_bytes: u32,
}

/// Parses an option header; `Ok(None)` until 16 bytes are there.
pub fn parse_option_header(buf: &[u8]) -> Result<Option<OptionHeader>, HandshakeError> {
    let mut r = Reader::new(buf);
    let (Some(magic), Some(option), Some(len_bytes)) = (r.u64(), r.u32(), r.u32()) else {
        return Ok(None);
    };
    if magic != IHAVEOPT {
        return Err(HandshakeError::BadMagic {
            expected: IHAVEOPT,
            found: magic,
        });
    }
    Ok(Some(OptionHeader { option, len_bytes }))
}

/// Encodes a client option (client side).
pub fn encode_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    put_u64(out, IHAVEOPT);
    put_u32(out, option);
    put_u32(out, len32(data));
    out.extend_from_slice(data);
}

/// A decoded client option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOption {
    /// Enter transmission with this export (no way to report an error).
    ExportName { name: String },
    /// End the negotiation.
    Abort,
    /// List the exports.
    List,
    /// Upgrade to TLS.
    StartTls,
    /// Describe an export.
    Info { name: String, requests: Vec<u16> },
    /// Describe an export and enter transmission with it.
    Go { name: String, requests: Vec<u16> },
    /// Use structured replies.
    StructuredReply,
    /// List metadata contexts matching the queries (all if none).
    ListMetaContext {
        export: String,
        queries: Vec<String>,
    },
    /// Select the metadata contexts matching the queries.
    SetMetaContext {
        export: String,
        queries: Vec<String>,
    },
    /// Use extended (64-bit) headers.
    ExtendedHeaders,
    /// An option this server does not know.
    Unknown { option: u32 },
}

/// Why the data of an option was refused (answered with `NBD_REP_ERR_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("{option} takes no data, got {len} bytes")]
    UnexpectedData { option: &'static str, len: usize },
    #[error("{option}: data ends inside the {field}")]
    Truncated {
        option: &'static str,
        field: &'static str,
    },
    #[error("{option}: {len} bytes after the last field")]
    Trailing { option: &'static str, len: usize },
    #[error("{option}: the {field} is {len} bytes, longer than the limit of 4096")]
    StringTooLong {
        option: &'static str,
        field: &'static str,
        len: usize,
    },
    #[error("{option}: the {field} is not valid UTF-8")]
    NotUtf8 {
        option: &'static str,
        field: &'static str,
    },
    #[error("{option}: the {field} contains a NUL byte")]
    Nul {
        option: &'static str,
        field: &'static str,
    },
}

fn parse_string(
    bytes: &[u8],
    option: &'static str,
    field: &'static str,
) -> Result<String, OptionError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(OptionError::StringTooLong {
            option,
            field,
            len: bytes.len(),
        });
    }
    if bytes.contains(&0) {
        return Err(OptionError::Nul { option, field });
    }
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| OptionError::NotUtf8 { option, field })
}

fn parse_len_string(
    r: &mut Reader<'_>,
    option: &'static str,
    field: &'static str,
) -> Result<String, OptionError> {
    let len = r.u32().ok_or(OptionError::Truncated { option, field })? as usize;
    if len > MAX_STRING_LEN {
        return Err(OptionError::StringTooLong { option, field, len });
    }
    let bytes = r
        .bytes(len)
        .ok_or(OptionError::Truncated { option, field })?;
    parse_string(bytes, option, field)
}

fn no_data(option: u32, data: &[u8]) -> Result<(), OptionError> {
    if data.is_empty() {
        Ok(())
    } else {
        Err(OptionError::UnexpectedData {
            option: option_name(option),
            len: data.len(),
        })
    }
}

/// Decodes the data of option `option`.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption, OptionError> {
    let name = option_name(option);
    match option {
        OPT_EXPORT_NAME => Ok(ClientOption::ExportName {
            name: parse_string(data, name, "export name")?,
        }),
        // The server SHOULD ignore data sent with NBD_OPT_ABORT.
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => no_data(option, data).map(|_| ClientOption::List),
        OPT_STARTTLS => no_data(option, data).map(|_| ClientOption::StartTls),
        OPT_STRUCTURED_REPLY => no_data(option, data).map(|_| ClientOption::StructuredReply),
        OPT_EXTENDED_HEADERS => no_data(option, data).map(|_| ClientOption::ExtendedHeaders),
        OPT_INFO | OPT_GO => {
            let mut r = Reader::new(data);
            let export = parse_len_string(&mut r, name, "export name")?;
            let count = r.u16().ok_or(OptionError::Truncated {
                option: name,
                field: "number of information requests",
            })?;
            let mut requests = Vec::with_capacity(count as usize);
            for _ in 0..count {
                requests.push(r.u16().ok_or(OptionError::Truncated {
                    option: name,
                    field: "information requests",
                })?);
            }
            if r.remaining() != 0 {
                return Err(OptionError::Trailing {
                    option: name,
                    len: r.remaining(),
                });
            }
            Ok(if option == OPT_GO {
                ClientOption::Go {
                    name: export,
                    requests,
                }
            } else {
                ClientOption::Info {
                    name: export,
                    requests,
                }
            })
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let mut r = Reader::new(data);
            let export = parse_len_string(&mut r, name, "export name")?;
            let count = r.u32().ok_or(OptionError::Truncated {
                option: name,
                field: "number of queries",
            })?;
            // Each query takes at least 4 bytes: a larger count cannot fit.
            if count as usize > r.remaining() / 4 {
                return Err(OptionError::Truncated {
                    option: name,
                    field: "queries",
                });
            }
            let mut queries = Vec::with_capacity(count as usize);
            for _ in 0..count {
                queries.push(parse_len_string(&mut r, name, "query")?);
            }
            if r.remaining() != 0 {
                return Err(OptionError::Trailing {
                    option: name,
                    len: r.remaining(),
                });
            }
            Ok(if option == OPT_SET_META_CONTEXT {
                ClientOption::SetMetaContext { export, queries }
            } else {
                ClientOption::ListMetaContext { export, queries }
            })
        }
        other => Ok(ClientOption::Unknown { option: other }),
    }
}

/// Encodes the data of an `INFO`/`GO` option (client side).
pub fn encode_info_request(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + name.len() + 2 * requests.len());
    put_u32(&mut out, len32(name.as_bytes()));
    out.extend_from_slice(name.as_bytes());
    put_u16(&mut out, u16::try_from(requests.len()).unwrap_or(u16::MAX));
    for r in requests.iter().take(u16::MAX as usize) {
        put_u16(&mut out, *r);
    }
    out
}

/// Encodes the data of a `LIST_META_CONTEXT`/`SET_META_CONTEXT` option (client side).
pub fn encode_meta_context_request(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u32(&mut out, len32(export.as_bytes()));
    out.extend_from_slice(export.as_bytes());
    put_u32(&mut out, u32::try_from(queries.len()).unwrap_or(u32::MAX));
    for q in queries {
        put_u32(&mut out, len32(q.as_bytes()));
        out.extend_from_slice(q.as_bytes());
    }
    out
}

/// Encodes an option reply.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    put_u64(out, OPTION_REPLY_MAGIC);
    put_u32(out, option);
    put_u32(out, reply_type);
    put_u32(out, len32(data));
    out.extend_from_slice(data);
}

/// The header of an option reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub len_bytes: u32,
}

/// Parses an option reply header (client side).
pub fn parse_option_reply_header(buf: &[u8]) -> Result<Option<OptionReplyHeader>, HandshakeError> {
    let mut r = Reader::new(buf);
    let (Some(magic), Some(option), Some(reply_type), Some(len_bytes)) =
        (r.u64(), r.u32(), r.u32(), r.u32())
    else {
        return Ok(None);
    };
    if magic != OPTION_REPLY_MAGIC {
        return Err(HandshakeError::BadMagic {
            expected: OPTION_REPLY_MAGIC,
            found: magic,
        });
    }
    Ok(Some(OptionReplyHeader {
        option,
        reply_type,
        len_bytes,
    }))
}

/// The data of an `NBD_REP_SERVER` reply: name and description.
pub fn encode_rep_server(name: &str, description: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len() + description.len());
    put_u32(&mut out, len32(name.as_bytes()));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(description.as_bytes());
    out
}

/// The data of an `NBD_INFO_EXPORT` information reply.
pub fn encode_info_export(size_bytes: u64, transmission_flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    put_u16(&mut out, INFO_EXPORT);
    put_u64(&mut out, size_bytes);
    put_u16(&mut out, transmission_flags);
    out
}

/// The data of an `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` information reply.
pub fn encode_info_string(info: u16, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + text.len());
    put_u16(&mut out, info);
    out.extend_from_slice(text.as_bytes());
    out
}

/// Block size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    pub min_bytes: u32,
    pub preferred_bytes: u32,
    pub max_bytes: u32,
}

/// The data of an `NBD_INFO_BLOCK_SIZE` information reply.
pub fn encode_info_block_size(sizes: BlockSizes) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    put_u16(&mut out, INFO_BLOCK_SIZE);
    put_u32(&mut out, sizes.min_bytes);
    put_u32(&mut out, sizes.preferred_bytes);
    put_u32(&mut out, sizes.max_bytes);
    out
}

/// The data of an `NBD_REP_META_CONTEXT` reply.
pub fn encode_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    put_u32(&mut out, id);
    out.extend_from_slice(name.as_bytes());
    out
}

/// A decoded `NBD_REP_INFO` (client side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Info {
    Export { size_bytes: u64, flags: u16 },
    Name(String),
    Description(String),
    BlockSize(BlockSizes),
    Other { info: u16 },
}

/// Parses the data of an `NBD_REP_INFO` (client side); `None` when malformed.
pub fn parse_info(data: &[u8]) -> Option<Info> {
    let mut r = Reader::new(data);
    let info = r.u16()?;
    Some(match info {
        INFO_EXPORT => {
            let size_bytes = r.u64()?;
            let flags = r.u16()?;
            (r.remaining() == 0).then_some(Info::Export { size_bytes, flags })?
        }
        INFO_NAME => Info::Name(String::from_utf8(r.rest().to_vec()).ok()?),
        INFO_DESCRIPTION => Info::Description(String::from_utf8(r.rest().to_vec()).ok()?),
        INFO_BLOCK_SIZE => {
            let sizes = BlockSizes {
                min_bytes: r.u32()?,
                preferred_bytes: r.u32()?,
                max_bytes: r.u32()?,
            };
            (r.remaining() == 0).then_some(Info::BlockSize(sizes))?
        }
        other => Info::Other { info: other },
    })
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and (unless the client
/// negotiated no-zeroes) 124 zero bytes.
pub fn encode_export_name_reply(
    out: &mut Vec<u8>,
    size_bytes: u64,
    transmission_flags: u16,
    zeroes: bool,
) {
    put_u64(out, size_bytes);
    put_u16(out, transmission_flags);
    if zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

// ---------------------------------------------------------------------------------------
// Transmission: requests.

/// Which request and reply headers a connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderMode {
    /// 28-byte requests; simple replies (or structured ones when negotiated).
    Compact,
    /// 32-byte requests and 32-byte reply chunks, 64-bit lengths.
    Extended,
}

impl HeaderMode {
    /// Length of a request header in this mode.
    pub fn request_len(self) -> usize {
        match self {
            HeaderMode::Compact => REQUEST_LEN,
            HeaderMode::Extended => EXTENDED_REQUEST_LEN,
        }
    }
}

/// How replies are framed on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyMode {
    /// Simple replies only.
    Simple,
    /// Structured reply chunks (simple replies allowed for payload-less replies).
    Structured,
    /// Extended reply chunks only.
    Extended,
}

impl ReplyMode {
    /// The request header format that goes with the reply mode.
    pub fn header_mode(self) -> HeaderMode {
        match self {
            ReplyMode::Extended => HeaderMode::Extended,
            _ => HeaderMode::Compact,
        }
    }

    /// True when reply chunks (structured or extended) are in use.
    pub fn chunked(self) -> bool {
        self != ReplyMode::Simple
    }
}

/// A request header, as read from the wire (both modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset_bytes: u64,
    /// Payload length (writes) or effect length (everything else).
    pub len_bytes: u64,
}

impl RequestHeader {
    /// The number of payload bytes that follow the header on the wire: a write always
    /// carries its length in data (clients such as qemu omit `NBD_CMD_FLAG_PAYLOAD_LEN`
    /// on writes under extended headers); other commands only with that flag, under
    /// extended headers.
    pub fn payload_len(&self, mode: HeaderMode) -> u64 {
        match mode {
            _ if self.kind == CMD_WRITE => self.len_bytes,
            HeaderMode::Extended if self.flags & CMD_FLAG_PAYLOAD_LEN != 0 => self.len_bytes,
            _ => 0,
        }
    }
}

/// A request header that cannot be parsed: the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad request magic {found:#010x} (expected {expected:#010x})")]
pub struct BadRequestMagic {
    pub expected: u32,
    pub found: u32,
}

/// Parses a request header from the front of `buf`; `Ok(None)` until a whole header is
/// there. Returns the header and its length.
#[inline]
pub fn parse_request(
    buf: &[u8],
    mode: HeaderMode,
) -> Result<Option<(RequestHeader, usize)>, BadRequestMagic> {
    let mut r = Reader::new(buf);
    let expected = match mode {
        HeaderMode::Compact => REQUEST_MAGIC,
        HeaderMode::Extended => EXTENDED_REQUEST_MAGIC,
    };
    // Check the magic as soon as it is there, so garbage is refused at once.
    let Some(magic) = r.u32() else {
        return Ok(None);
    };
    if magic != expected {
        return Err(BadRequestMagic {
            expected,
            found: magic,
        });
    }
    let (Some(flags), Some(kind), Some(cookie), Some(offset_bytes)) =
        (r.u16(), r.u16(), r.u64(), r.u64())
    else {
        return Ok(None);
    };
    let len_bytes = match mode {
        HeaderMode::Compact => r.u32().map(u64::from),
        HeaderMode::Extended => r.u64(),
    };
    let Some(len_bytes) = len_bytes else {
        return Ok(None);
    };
    Ok(Some((
        RequestHeader {
            flags,
            kind,
            cookie,
            offset_bytes,
            len_bytes,
        },
        mode.request_len(),
    )))
}

/// Encodes a request header (client side). In compact mode the length is truncated to
/// 32 bits, so callers keep it within range.
pub fn encode_request(out: &mut Vec<u8>, mode: HeaderMode, h: &RequestHeader) {
    match mode {
        HeaderMode::Compact => put_u32(out, REQUEST_MAGIC),
        HeaderMode::Extended => put_u32(out, EXTENDED_REQUEST_MAGIC),
    }
    put_u16(out, h.flags);
    put_u16(out, h.kind);
    put_u64(out, h.cookie);
    put_u64(out, h.offset_bytes);
    match mode {
        HeaderMode::Compact => put_u32(out, h.len_bytes as u32),
        HeaderMode::Extended => put_u64(out, h.len_bytes),
    }
}

// ---------------------------------------------------------------------------------------
// Transmission: replies. Encoders write into a caller's fixed buffer (no allocation on the
// I/O path) and return the number of bytes written.

/// Room for any reply header this server writes: an extended chunk header plus the fixed
/// part of its payload (8-byte data offset, or 6-byte error prefix).
pub const MAX_REPLY_HEADER_LEN: usize = EXTENDED_REPLY_LEN + 8;

/// Writes a simple reply header.
#[inline]
pub fn write_simple_reply(dst: &mut [u8; MAX_REPLY_HEADER_LEN], error: u32, cookie: u64) -> usize {
    dst[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    dst[4..8].copy_from_slice(&error.to_be_bytes());
    dst[8..16].copy_from_slice(&cookie.to_be_bytes());
    SIMPLE_REPLY_LEN
}

/// The fields of a reply chunk header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    /// The request's offset (extended headers only; zero in structured chunks).
    pub offset_bytes: u64,
    pub len_bytes: u64,
}

/// Writes a structured (compact) or extended chunk header. A structured chunk carries a
/// 32-bit length; callers never build a longer structured payload.
#[inline]
pub fn write_chunk_header(
    dst: &mut [u8; MAX_REPLY_HEADER_LEN],
    mode: HeaderMode,
    h: &ChunkHeader,
) -> usize {
    match mode {
        HeaderMode::Compact => {
            dst[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            dst[4..6].copy_from_slice(&h.flags.to_be_bytes());
            dst[6..8].copy_from_slice(&h.kind.to_be_bytes());
            dst[8..16].copy_from_slice(&h.cookie.to_be_bytes());
            let len = u32::try_from(h.len_bytes).unwrap_or(u32::MAX);
            dst[16..20].copy_from_slice(&len.to_be_bytes());
            STRUCTURED_REPLY_LEN
        }
        HeaderMode::Extended => {
            dst[0..4].copy_from_slice(&EXTENDED_REPLY_MAGIC.to_be_bytes());
            dst[4..6].copy_from_slice(&h.flags.to_be_bytes());
            dst[6..8].copy_from_slice(&h.kind.to_be_bytes());
            dst[8..16].copy_from_slice(&h.cookie.to_be_bytes());
            dst[16..24].copy_from_slice(&h.offset_bytes.to_be_bytes());
            dst[24..32].copy_from_slice(&h.len_bytes.to_be_bytes());
            EXTENDED_REPLY_LEN
        }
    }
}

/// Writes the header of a final `OFFSET_DATA` chunk for `data_len` bytes read at
/// `offset_bytes`, including the 8-byte offset that starts its payload. The data follows.
#[inline]
pub fn write_offset_data_header(
    dst: &mut [u8; MAX_REPLY_HEADER_LEN],
    mode: HeaderMode,
    cookie: u64,
    offset_bytes: u64,
    data_len: u64,
) -> usize {
    let n = write_chunk_header(
        dst,
        mode,
        &ChunkHeader {
            flags: REPLY_FLAG_DONE,
            kind: REPLY_TYPE_OFFSET_DATA,
            cookie,
            offset_bytes,
            len_bytes: data_len + 8,
        },
    );
    dst[n..n + 8].copy_from_slice(&offset_bytes.to_be_bytes());
    n + 8
}

/// Writes the header of a final `NBD_REPLY_TYPE_ERROR` chunk and the fixed part of its
/// payload (error, message length); the `message_len` bytes of message follow.
#[inline]
pub fn write_error_chunk_header(
    dst: &mut [u8; MAX_REPLY_HEADER_LEN],
    mode: HeaderMode,
    cookie: u64,
    offset_bytes: u64,
    error: u32,
    message_len: u16,
) -> usize {
    let n = write_chunk_header(
        dst,
        mode,
        &ChunkHeader {
            flags: REPLY_FLAG_DONE,
            kind: REPLY_TYPE_ERROR,
            cookie,
            offset_bytes,
            len_bytes: 6 + message_len as u64,
        },
    );
    dst[n..n + 4].copy_from_slice(&error.to_be_bytes());
    dst[n + 4..n + 6].copy_from_slice(&message_len.to_be_bytes());
    n + 6
}

/// One extent of a block status reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len_bytes: u64,
    pub flags: u32,
}

/// Appends the payload of a block status chunk (`BLOCK_STATUS` in compact mode, where
/// each extent must fit 32 bits; `BLOCK_STATUS_EXT` in extended mode) and returns its
/// chunk type.
pub fn encode_block_status_payload(
    out: &mut Vec<u8>,
    mode: HeaderMode,
    context_id: u32,
    extents: &[Extent],
) -> u16 {
    put_u32(out, context_id);
    match mode {
        HeaderMode::Compact => {
            for e in extents {
                put_u32(out, u32::try_from(e.len_bytes).unwrap_or(u32::MAX));
                put_u32(out, e.flags);
            }
            REPLY_TYPE_BLOCK_STATUS
        }
        HeaderMode::Extended => {
            put_u32(out, u32::try_from(extents.len()).unwrap_or(0));
            for e in extents {
                put_u64(out, e.len_bytes);
                put_u32(out, 0);
                put_u32(out, e.flags);
            }
            REPLY_TYPE_BLOCK_STATUS_EXT
        }
    }
}

/// Parses the payload of a block status chunk (client side).
pub fn parse_block_status_payload(kind: u16, payload: &[u8]) -> Option<(u32, Vec<Extent>)> {
    let mut r = Reader::new(payload);
    let id = r.u32()?;
    let mut extents = Vec::new();
    match kind {
        REPLY_TYPE_BLOCK_STATUS => {
            while r.remaining() > 0 {
                extents.push(Extent {
                    len_bytes: r.u32()? as u64,
                    flags: r.u32()?,
                });
            }
        }
        REPLY_TYPE_BLOCK_STATUS_EXT => {
            let _count = r.u32()?;
            while r.remaining() > 0 {
                let len_bytes = r.u64()?;
                let _pad = r.u32()?;
                extents.push(Extent {
                    len_bytes,
                    flags: r.u32()?,
                });
            }
        }
        _ => return None,
    }
    (!extents.is_empty()).then_some((id, extents))
}

/// A reply header as read by a client: simple, or a chunk header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple { error: u32, cookie: u64 },
    Chunk(ChunkHeader),
}

/// Why a reply header was refused (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad reply magic {0:#010x}")]
pub struct BadReplyMagic(pub u32);

/// Parses a reply header (client side); returns it and its length.
pub fn parse_reply_header(buf: &[u8]) -> Result<Option<(ReplyHeader, usize)>, BadReplyMagic> {
    let mut r = Reader::new(buf);
    let Some(magic) = r.u32() else {
        return Ok(None);
    };
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let (Some(error), Some(cookie)) = (r.u32(), r.u64()) else {
                return Ok(None);
            };
            Ok(Some((
                ReplyHeader::Simple { error, cookie },
                SIMPLE_REPLY_LEN,
            )))
        }
        STRUCTURED_REPLY_MAGIC => {
            let (Some(flags), Some(kind), Some(cookie), Some(len)) =
                (r.u16(), r.u16(), r.u64(), r.u32())
            else {
                return Ok(None);
            };
            Ok(Some((
                ReplyHeader::Chunk(ChunkHeader {
                    flags,
                    kind,
                    cookie,
                    offset_bytes: 0,
                    len_bytes: len as u64,
                }),
                STRUCTURED_REPLY_LEN,
            )))
        }
        EXTENDED_REPLY_MAGIC => {
            let (Some(flags), Some(kind), Some(cookie), Some(offset_bytes), Some(len_bytes)) =
                (r.u16(), r.u16(), r.u64(), r.u64(), r.u64())
            else {
                return Ok(None);
            };
            Ok(Some((
                ReplyHeader::Chunk(ChunkHeader {
                    flags,
                    kind,
                    cookie,
                    offset_bytes,
                    len_bytes,
                }),
                EXTENDED_REPLY_LEN,
            )))
        }
        other => Err(BadReplyMagic(other)),
    }
}

/// The error and message of an error chunk's payload (client side).
pub fn parse_error_payload(payload: &[u8]) -> Option<(u32, String)> {
    let mut r = Reader::new(payload);
    let error = r.u32()?;
    let len = r.u16()? as usize;
    let msg = r.bytes(len)?;
    Some((error, String::from_utf8_lossy(msg).into_owned()))
}

impl fmt::Display for RequestHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} flags {:#x} cookie {:#x} offset {} length {}",
            command_name(self.kind),
            self.flags,
            self.cookie,
            self.offset_bytes,
            self.len_bytes
        )
    }
}

#[cfg(test)]
mod tests;
