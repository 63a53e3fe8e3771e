//! The transmission phase's messages: request headers (compact and extended), simple
//! replies, structured and extended reply chunks. Server-side encoders write into a
//! caller's fixed buffer (no allocation on the I/O path) and return the bytes written.

use super::*;
use std::fmt;

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
// Replies. Encoders write into a caller's fixed buffer (no allocation on the
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
