//! The handshake's messages: greeting, client flags, options and their data, option
//! replies and `NBD_REP_INFO` payloads.

use super::*;

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
