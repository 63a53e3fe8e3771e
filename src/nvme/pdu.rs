//! The NVMe/TCP PDU codec: pure, total, fuzzable. No I/O, no state beyond what the
//! caller passes in (the negotiated digests and limits).
//!
//! Every PDU starts with the 8-byte common header (`type`, `flags`, `hlen`, `pdo`,
//! `plen`), then the rest of its type-specific header (`hlen` bytes in all), an optional
//! 4-byte header digest (CRC32C of the header), padding up to `pdo`, the data, and an
//! optional 4-byte data digest (CRC32C of the data). [`decode_header`] checks every
//! field of a header before anyone uses it and says where the data lies; a violation
//! comes back as a [`PduError`] that knows its fatal error status (FES) and field
//! offset (FEI) for the Terminate Connection Request the receiver must send.
//!
//! Field layouts follow the NVMe/TCP transport specification (and Linux's
//! `include/linux/nvme-tcp.h`); all integers are little-endian.

/// Length of the common header.
pub const CH_LEN: usize = 8;
/// Length of a digest.
pub const DIGEST_LEN: usize = 4;
/// Header length of ICReq and ICResp.
pub const IC_HLEN: usize = 128;
/// Header length of CapsuleCmd (common header + 64-byte SQE).
pub const CMD_HLEN: usize = 72;
/// Header length of CapsuleResp, H2CData, C2HData, R2T and the TermReqs.
pub const SHORT_HLEN: usize = 24;
/// The longest TermReq PDU (header + offending header bytes).
pub const TERM_REQ_MAX_PLEN: usize = 152;
/// The most header bytes a TermReq carries back.
pub const TERM_REQ_MAX_DATA: usize = TERM_REQ_MAX_PLEN - SHORT_HLEN;
/// The smallest MAXH2CDATA the specification allows.
pub const MIN_MAXH2CDATA: u32 = 4096;

/// PDU types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2CTermReq = 0x02,
    C2HTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2CData = 0x06,
    C2HData = 0x07,
    R2T = 0x09,
}

impl PduType {
    /// The type for a wire value.
    pub fn from_u8(v: u8) -> Option<PduType> {
        Some(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }

    /// True for the PDUs a host sends to a controller.
    pub fn host_to_controller(self) -> bool {
        matches!(
            self,
            PduType::IcReq | PduType::H2CTermReq | PduType::CapsuleCmd | PduType::H2CData
        )
    }

    /// True for PDUs that carry digests when they were negotiated.
    fn digested(self) -> bool {
        !matches!(
            self,
            PduType::IcReq | PduType::IcResp | PduType::H2CTermReq | PduType::C2HTermReq
        )
    }

    fn hlen(self) -> usize {
        match self {
            PduType::IcReq | PduType::IcResp => IC_HLEN,
            PduType::CapsuleCmd => CMD_HLEN,
            _ => SHORT_HLEN,
        }
    }
}

/// Common-header flags.
pub mod flags {
    /// A header digest follows the header.
    pub const HDGSTF: u8 = 0x01;
    /// A data digest follows the data.
    pub const DDGSTF: u8 = 0x02;
    /// Last data PDU of a transfer (H2CData, C2HData).
    pub const DATA_LAST: u8 = 0x04;
    /// C2HData only: the command succeeded, no response capsule follows.
    pub const DATA_SUCCESS: u8 = 0x08;
}

/// Fatal error statuses of a Terminate Connection Request.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Which side decodes: the target receives host-to-controller PDUs, the host the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    Controller,
    Host,
}

/// What the connection negotiated and allows, as needed to check a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Header digests are on (never for IC and TermReq PDUs).
    pub header_digest: bool,
    /// Data digests are on.
    pub data_digest: bool,
    /// The most in-capsule data a CapsuleCmd may carry.
    pub max_in_capsule_len: u32,
    /// The most data one data PDU may carry (MAXH2CDATA for H2CData; the host's receive
    /// limit for C2HData).
    pub max_data_len: u32,
}

impl Limits {
    /// The limits before ICReq/ICResp: no digests.
    pub fn initial() -> Limits {
        Limits {
            header_digest: false,
            data_digest: false,
            max_in_capsule_len: 0,
            max_data_len: 0,
        }
    }
}

/// A header that breaks the protocol, with what the peer must be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("unknown PDU type {0:#04x}")]
    UnknownType(u8),
    #[error("PDU type {0:?} is not sent in this direction")]
    WrongDirection(PduType),
    #[error("{pdu:?}: invalid header field at byte {offset}")]
    InvalidField { pdu: PduType, offset: u32 },
    #[error("{0:?}: header digest mismatch")]
    HeaderDigest(PduType),
    #[error("{pdu:?}: {len} data bytes exceed the limit of {limit}")]
    DataLimit { pdu: PduType, len: u32, limit: u32 },
}

impl PduError {
    /// Fatal error status and field error information for the TermReq.
    pub fn fes_fei(&self) -> (u16, u32) {
        match *self {
            PduError::UnknownType(_) | PduError::WrongDirection(_) => {
                (fes::INVALID_HEADER_FIELD, 0)
            }
            PduError::InvalidField { offset, .. } => (fes::INVALID_HEADER_FIELD, offset),
            PduError::HeaderDigest(_) => (fes::HEADER_DIGEST_ERROR, 0),
            PduError::DataLimit { .. } => (fes::DATA_LIMIT_EXCEEDED, 0),
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// CRC32C, the digest of NVMe/TCP.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continues a CRC32C over more data.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// ICReq: the host opens the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version (0).
    pub pfv: u16,
    /// Host PDU data alignment (0's based dwords) for controller-to-host data.
    pub hpda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Most outstanding R2Ts per command (0's based).
    pub maxr2t: u32,
}

/// ICResp: the controller's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    /// Controller PDU data alignment (0's based dwords) for host-to-controller data.
    pub cpda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Most data bytes per H2CData PDU.
    pub maxh2cdata: u32,
}

/// H2CTermReq / C2HTermReq header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermReq {
    pub fes: u16,
    pub fei: u32,
}

/// H2CData / C2HData header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHdr {
    pub cccid: u16,
    /// Transfer tag (H2CData; zero in C2HData).
    pub ttag: u16,
    pub datao: u32,
    pub datal: u32,
    pub last: bool,
    /// C2HData only: success without a response capsule.
    pub success: bool,
}

/// R2T header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct R2t {
    pub cccid: u16,
    pub ttag: u16,
    pub r2to: u32,
    pub r2tl: u32,
}

/// A decoded header, without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    /// The 64-byte submission queue entry.
    CapsuleCmd([u8; 64]),
    /// The 16-byte completion queue entry.
    CapsuleResp([u8; 16]),
    H2CData(DataHdr),
    C2HData(DataHdr),
    R2T(R2t),
}

impl Header {
    /// The PDU type.
    pub fn pdu_type(&self) -> PduType {
        match self {
            Header::IcReq(_) => PduType::IcReq,
            Header::IcResp(_) => PduType::IcResp,
            Header::H2CTermReq(_) => PduType::H2CTermReq,
            Header::C2HTermReq(_) => PduType::C2HTermReq,
            Header::CapsuleCmd(_) => PduType::CapsuleCmd,
            Header::CapsuleResp(_) => PduType::CapsuleResp,
            Header::H2CData(_) => PduType::H2CData,
            Header::C2HData(_) => PduType::C2HData,
            Header::R2T(_) => PduType::R2T,
        }
    }
}

/// Where the parts of a checked PDU lie, relative to its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    /// Header length plus the header digest, if any.
    pub header_len: usize,
    /// Where the data starts (the data offset, `pdo`), or `plen` without data.
    pub data_offset: usize,
    /// Data length in bytes.
    pub data_len: usize,
    /// A data digest follows the data.
    pub data_digest: bool,
    /// The whole PDU (`plen`).
    pub total_len: usize,
}

/// The outcome of looking at the start of a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// At least this many bytes are needed before the header can be checked.
    NeedMore(usize),
    /// A checked header.
    Frame(Frame),
}

/// Checks and decodes the PDU header at the start of `buf` (it may hold more). Total:
/// any input gives `NeedMore`, a `Frame`, or the `PduError` to terminate with.
pub fn decode_header(buf: &[u8], rx: Receiver, lim: &Limits) -> Result<Decoded, PduError> {
    if buf.len() < CH_LEN {
        return Ok(Decoded::NeedMore(CH_LEN));
    }
    let ty = PduType::from_u8(buf[0]).ok_or(PduError::UnknownType(buf[0]))?;
    if ty.host_to_controller() != (rx == Receiver::Controller) {
        return Err(PduError::WrongDirection(ty));
    }
    let fl = buf[1];
    let hlen = buf[2] as usize;
    let pdo = buf[3] as usize;
    let plen = le32(buf, 4) as usize;
    let bad = |offset: u32| PduError::InvalidField { pdu: ty, offset };
    if hlen != ty.hlen() {
        return Err(bad(2));
    }
    let hdgst = if ty.digested() && lim.header_digest {
        DIGEST_LEN
    } else {
        0
    };
    let header_len = hlen + hdgst;
    if ty.digested() {
        // The digest flags must say what was negotiated.
        if (fl & flags::HDGSTF != 0) != lim.header_digest {
            return Err(bad(1));
        }
    } else if fl & (flags::HDGSTF | flags::DDGSTF) != 0 {
        return Err(bad(1));
    }
    if plen < hlen {
        return Err(bad(4));
    }
    if buf.len() < header_len {
        return Ok(Decoded::NeedMore(header_len));
    }
    if hdgst > 0 {
        let want = crc32c(&buf[..hlen]);
        if le32(buf, hlen) != want {
            return Err(PduError::HeaderDigest(ty));
        }
    }
    let h = &buf[..hlen];
    // Data placement for the PDUs that may carry data.
    let data_layout = |data_required: bool| -> Result<(usize, usize, bool), PduError> {
        if plen == header_len && !data_required {
            if fl & flags::DDGSTF != 0 {
                return Err(bad(1));
            }
            return Ok((plen, 0, false));
        }
        let ddgst = fl & flags::DDGSTF != 0;
        if ddgst != lim.data_digest {
            return Err(bad(1));
        }
        let dlen = if ddgst { DIGEST_LEN } else { 0 };
        if pdo < header_len || pdo > plen {
            return Err(bad(3));
        }
        let data_len = plen
            .checked_sub(pdo + dlen)
            .filter(|&n| n > 0)
            .ok_or(bad(4))?;
        Ok((pdo, data_len, ddgst))
    };
    let frame = |header, data_offset, data_len, data_digest| {
        Ok(Decoded::Frame(Frame {
            header,
            header_len,
            data_offset,
            data_len,
            data_digest,
            total_len: plen,
        }))
    };
    match ty {
        PduType::IcReq | PduType::IcResp => {
            if plen != IC_HLEN {
                return Err(bad(4));
            }
            if pdo != 0 {
                return Err(bad(3));
            }
            let pfv = le16(h, 8);
            let dg = h[11];
            let header = if ty == PduType::IcReq {
                Header::IcReq(IcReq {
                    pfv,
                    hpda: h[10],
                    header_digest: dg & 1 != 0,
                    data_digest: dg & 2 != 0,
                    maxr2t: le32(h, 12),
                })
            } else {
                Header::IcResp(IcResp {
                    pfv,
                    cpda: h[10],
                    header_digest: dg & 1 != 0,
                    data_digest: dg & 2 != 0,
                    maxh2cdata: le32(h, 12),
                })
            };
            frame(header, plen, 0, false)
        }
        PduType::H2CTermReq | PduType::C2HTermReq => {
            if plen > TERM_REQ_MAX_PLEN {
                return Err(bad(4));
            }
            let t = TermReq {
                fes: le16(h, 8),
                fei: le32(h, 10),
            };
            let header = if ty == PduType::H2CTermReq {
                Header::H2CTermReq(t)
            } else {
                Header::C2HTermReq(t)
            };
            // The offending header follows the TermReq header directly.
            frame(header, SHORT_HLEN, plen - SHORT_HLEN, false)
        }
        PduType::CapsuleCmd => {
            let (off, len, dd) = data_layout(false)?;
            if len as u64 > lim.max_in_capsule_len as u64 {
                return Err(PduError::DataLimit {
                    pdu: ty,
                    len: len.min(u32::MAX as usize) as u32,
                    limit: lim.max_in_capsule_len,
                });
            }
            let mut sqe = [0u8; 64];
            sqe.copy_from_slice(&h[8..72]);
            frame(Header::CapsuleCmd(sqe), off, len, dd)
        }
        PduType::CapsuleResp | PduType::R2T => {
            if plen != header_len {
                return Err(bad(4));
            }
            let header = if ty == PduType::CapsuleResp {
                let mut cqe = [0u8; 16];
                cqe.copy_from_slice(&h[8..24]);
                Header::CapsuleResp(cqe)
            } else {
                let r = R2t {
                    cccid: le16(h, 8),
                    ttag: le16(h, 10),
                    r2to: le32(h, 12),
                    r2tl: le32(h, 16),
                };
                if r.r2tl == 0 {
                    return Err(bad(16));
                }
                Header::R2T(r)
            };
            frame(header, plen, 0, false)
        }
        PduType::H2CData | PduType::C2HData => {
            let (off, len, dd) = data_layout(true)?;
            let d = DataHdr {
                cccid: le16(h, 8),
                ttag: if ty == PduType::H2CData {
                    le16(h, 10)
                } else {
                    0
                },
                datao: le32(h, 12),
                datal: le32(h, 16),
                last: fl & flags::DATA_LAST != 0,
                success: fl & flags::DATA_SUCCESS != 0,
            };
            if d.datal as usize != len {
                return Err(bad(16));
            }
            if d.datal > lim.max_data_len {
                return Err(PduError::DataLimit {
                    pdu: ty,
                    len: d.datal,
                    limit: lim.max_data_len,
                });
            }
            if ty == PduType::H2CData && d.success {
                return Err(bad(1));
            }
            // SUCCESS is only valid on the last C2HData PDU.
            if d.success && !d.last {
                return Err(bad(1));
            }
            let header = if ty == PduType::H2CData {
                Header::H2CData(d)
            } else {
                Header::C2HData(d)
            };
            frame(header, off, len, dd)
        }
    }
}

/// A whole PDU decoded from one buffer: the header and its data, digests checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pdu<'a> {
    pub frame: Frame,
    pub data: &'a [u8],
}

/// Why a whole-PDU decode failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("need {0} bytes")]
    NeedMore(usize),
    #[error(transparent)]
    Pdu(#[from] PduError),
    #[error("data digest mismatch")]
    DataDigest,
}

/// Decodes one whole PDU from the start of `buf`: the header, its data, and the data
/// digest. Returns the PDU and its length. For tests, tools and the fuzzer; the queue
/// pairs use [`decode_header`] and place data themselves.
pub fn decode_pdu<'a>(
    buf: &'a [u8],
    rx: Receiver,
    lim: &Limits,
) -> Result<(Pdu<'a>, usize), DecodeError> {
    let frame = match decode_header(buf, rx, lim)? {
        Decoded::NeedMore(n) => return Err(DecodeError::NeedMore(n)),
        Decoded::Frame(f) => f,
    };
    if buf.len() < frame.total_len {
        return Err(DecodeError::NeedMore(frame.total_len));
    }
    let data = &buf[frame.data_offset..frame.data_offset + frame.data_len];
    if frame.data_digest {
        let at = frame.data_offset + frame.data_len;
        if le32(buf, at) != crc32c(data) {
            return Err(DecodeError::DataDigest);
        }
    }
    Ok((Pdu { frame, data }, frame.total_len))
}

// ---- Encoders. Each appends a complete header (with its digest and the padding up to
// the data offset) to `out` and returns the number of bytes appended.

fn put_common(out: &mut Vec<u8>, ty: PduType, fl: u8, hlen: usize, pdo: usize, plen: usize) {
    out.push(ty as u8);
    out.push(fl);
    out.push(hlen as u8);
    out.push(pdo as u8);
    out.extend_from_slice(&(plen as u32).to_le_bytes());
}

/// Appends the header digest over the last `hlen` bytes when `on`.
fn put_hdgst(out: &mut Vec<u8>, start: usize, on: bool) {
    if on {
        let d = crc32c(&out[start..]);
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// The data offset for a header of `hlen` bytes (+ digest) aligned to `(pda+1)*4`.
pub fn data_offset(hlen: usize, hdgst: bool, pda: u8) -> usize {
    let start = hlen + if hdgst { DIGEST_LEN } else { 0 };
    let align = (pda as usize + 1) * 4;
    start.div_ceil(align) * align
}

/// ICReq.
pub fn put_ic_req(out: &mut Vec<u8>, r: &IcReq) -> usize {
    let start = out.len();
    put_common(out, PduType::IcReq, 0, IC_HLEN, 0, IC_HLEN);
    out.extend_from_slice(&r.pfv.to_le_bytes());
    out.push(r.hpda);
    out.push(r.header_digest as u8 | (r.data_digest as u8) << 1);
    out.extend_from_slice(&r.maxr2t.to_le_bytes());
    out.resize(start + IC_HLEN, 0);
    IC_HLEN
}

/// ICResp.
pub fn put_ic_resp(out: &mut Vec<u8>, r: &IcResp) -> usize {
    let start = out.len();
    put_common(out, PduType::IcResp, 0, IC_HLEN, 0, IC_HLEN);
    out.extend_from_slice(&r.pfv.to_le_bytes());
    out.push(r.cpda);
    out.push(r.header_digest as u8 | (r.data_digest as u8) << 1);
    out.extend_from_slice(&r.maxh2cdata.to_le_bytes());
    out.resize(start + IC_HLEN, 0);
    IC_HLEN
}

/// A TermReq carrying back (up to 128 bytes of) the offending header.
pub fn put_term_req(out: &mut Vec<u8>, ty: PduType, t: &TermReq, offending: &[u8]) -> usize {
    let data = &offending[..offending.len().min(TERM_REQ_MAX_DATA)];
    let plen = SHORT_HLEN + data.len();
    put_common(out, ty, 0, SHORT_HLEN, 0, plen);
    out.extend_from_slice(&t.fes.to_le_bytes());
    out.extend_from_slice(&t.fei.to_le_bytes());
    out.extend_from_slice(&[0u8; 10]);
    out.extend_from_slice(data);
    plen
}

/// CapsuleCmd header for an SQE followed by `data_len` bytes of in-capsule data (the
/// caller appends the data and, with `ddgst`, its digest). `cpda` aligns the data.
pub fn put_capsule_cmd(
    out: &mut Vec<u8>,
    sqe: &[u8; 64],
    data_len: usize,
    hdgst: bool,
    ddgst: bool,
    cpda: u8,
) -> usize {
    let start = out.len();
    let hd = if hdgst { DIGEST_LEN } else { 0 };
    let (pdo, plen, fl) = if data_len == 0 {
        (0, CMD_HLEN + hd, if hdgst { flags::HDGSTF } else { 0 })
    } else {
        let pdo = data_offset(CMD_HLEN, hdgst, cpda);
        let dd = if ddgst { DIGEST_LEN } else { 0 };
        let fl = (hdgst as u8 * flags::HDGSTF) | (ddgst as u8 * flags::DDGSTF);
        (pdo, pdo + data_len + dd, fl)
    };
    put_common(out, PduType::CapsuleCmd, fl, CMD_HLEN, pdo, plen);
    out.extend_from_slice(sqe);
    put_hdgst(out, start, hdgst);
    if data_len > 0 {
        out.resize(start + pdo, 0);
    }
    out.len() - start
}

/// CapsuleResp.
pub fn put_capsule_resp(out: &mut Vec<u8>, cqe: &[u8; 16], hdgst: bool) -> usize {
    let start = out.len();
    let plen = SHORT_HLEN + if hdgst { DIGEST_LEN } else { 0 };
    let fl = if hdgst { flags::HDGSTF } else { 0 };
    put_common(out, PduType::CapsuleResp, fl, SHORT_HLEN, 0, plen);
    out.extend_from_slice(cqe);
    put_hdgst(out, start, hdgst);
    plen
}

/// R2T.
pub fn put_r2t(out: &mut Vec<u8>, r: &R2t, hdgst: bool) -> usize {
    let start = out.len();
    let plen = SHORT_HLEN + if hdgst { DIGEST_LEN } else { 0 };
    let fl = if hdgst { flags::HDGSTF } else { 0 };
    put_common(out, PduType::R2T, fl, SHORT_HLEN, 0, plen);
    out.extend_from_slice(&r.cccid.to_le_bytes());
    out.extend_from_slice(&r.ttag.to_le_bytes());
    out.extend_from_slice(&r.r2to.to_le_bytes());
    out.extend_from_slice(&r.r2tl.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    put_hdgst(out, start, hdgst);
    plen
}

/// H2CData or C2HData header (by `ty`) for `d.datal` bytes of data; the caller
/// appends the data and, with `ddgst`, its digest. `pda` is the receiver's alignment.
pub fn put_data_hdr(
    out: &mut Vec<u8>,
    ty: PduType,
    d: &DataHdr,
    hdgst: bool,
    ddgst: bool,
    pda: u8,
) -> usize {
    let start = out.len();
    let pdo = data_offset(SHORT_HLEN, hdgst, pda);
    let plen = pdo + d.datal as usize + if ddgst { DIGEST_LEN } else { 0 };
    let fl = (hdgst as u8 * flags::HDGSTF)
        | (ddgst as u8 * flags::DDGSTF)
        | (d.last as u8 * flags::DATA_LAST)
        | (d.success as u8 * flags::DATA_SUCCESS);
    put_common(out, ty, fl, SHORT_HLEN, pdo, plen);
    out.extend_from_slice(&d.cccid.to_le_bytes());
    out.extend_from_slice(&d.ttag.to_le_bytes());
    out.extend_from_slice(&d.datao.to_le_bytes());
    out.extend_from_slice(&d.datal.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    put_hdgst(out, start, hdgst);
    out.resize(start + pdo, 0);
    pdo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(hd: bool, dd: bool) -> Limits {
        Limits {
            header_digest: hd,
            data_digest: dd,
            max_in_capsule_len: 8192,
            max_data_len: 65536,
        }
    }

    #[test]
    fn ic_req_round_trips() {
        let r = IcReq {
            pfv: 0,
            hpda: 1,
            header_digest: true,
            data_digest: false,
            maxr2t: 0,
        };
        let mut out = Vec::new();
        assert_eq!(put_ic_req(&mut out, &r), 128);
        let (p, n) = decode_pdu(&out, Receiver::Controller, &Limits::initial()).unwrap();
        assert_eq!(n, 128);
        assert_eq!(p.frame.header, Header::IcReq(r));
        // The host may not receive it.
        assert_eq!(
            decode_header(&out, Receiver::Host, &Limits::initial()),
            Err(PduError::WrongDirection(PduType::IcReq))
        );
    }

    #[test]
    fn capsule_with_data_and_digests_round_trips() {
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut sqe = [0u8; 64];
            sqe[0] = 0x01;
            sqe[2] = 7;
            let data = vec![0xabu8; 4096];
            let mut out = Vec::new();
            put_capsule_cmd(&mut out, &sqe, data.len(), hd, dd, 0);
            out.extend_from_slice(&data);
            if dd {
                out.extend_from_slice(&crc32c(&data).to_le_bytes());
            }
            let (p, n) = decode_pdu(&out, Receiver::Controller, &lim(hd, dd)).unwrap();
            assert_eq!(n, out.len());
            assert_eq!(p.frame.header, Header::CapsuleCmd(sqe));
            assert_eq!(p.data, &data[..]);
            // Flipping a header byte breaks the header digest; a data byte the data digest.
            if hd {
                let mut bad = out.clone();
                bad[10] ^= 1;
                assert_eq!(
                    decode_pdu(&bad, Receiver::Controller, &lim(hd, dd)).unwrap_err(),
                    DecodeError::Pdu(PduError::HeaderDigest(PduType::CapsuleCmd))
                );
            }
            if dd {
                let mut bad = out.clone();
                let at = p.frame.data_offset + 5;
                bad[at] ^= 1;
                assert_eq!(
                    decode_pdu(&bad, Receiver::Controller, &lim(hd, dd)).unwrap_err(),
                    DecodeError::DataDigest
                );
            }
        }
    }

    #[test]
    fn data_pdus_and_r2t_round_trip() {
        let d = DataHdr {
            cccid: 3,
            ttag: 9,
            datao: 8192,
            datal: 512,
            last: true,
            success: false,
        };
        let mut out = Vec::new();
        let pdo = put_data_hdr(&mut out, PduType::H2CData, &d, true, true, 0);
        assert_eq!(pdo, 28);
        out.extend_from_slice(&[1u8; 512]);
        out.extend_from_slice(&crc32c(&[1u8; 512]).to_le_bytes());
        let (p, _) = decode_pdu(&out, Receiver::Controller, &lim(true, true)).unwrap();
        assert_eq!(p.frame.header, Header::H2CData(d));
        // C2H with host alignment of 8 dwords: the data starts at 32.
        let mut out = Vec::new();
        let c = DataHdr {
            ttag: 0,
            success: true,
            ..d
        };
        assert_eq!(
            put_data_hdr(&mut out, PduType::C2HData, &c, false, false, 7),
            32
        );
        out.extend_from_slice(&[2u8; 512]);
        let (p, _) = decode_pdu(&out, Receiver::Host, &lim(false, false)).unwrap();
        assert_eq!(p.frame.header, Header::C2HData(c));
        assert_eq!(p.frame.data_offset, 32);
        let r = R2t {
            cccid: 1,
            ttag: 2,
            r2to: 0,
            r2tl: 1 << 20,
        };
        let mut out = Vec::new();
        put_r2t(&mut out, &r, true);
        let (p, _) = decode_pdu(&out, Receiver::Host, &lim(true, false)).unwrap();
        assert_eq!(p.frame.header, Header::R2T(r));
    }

    #[test]
    fn bad_headers_get_their_fes_and_fei() {
        let mut out = Vec::new();
        put_capsule_cmd(&mut out, &[0u8; 64], 0, false, false, 0);
        let l = lim(false, false);
        // Unknown type.
        let mut b = out.clone();
        b[0] = 0x0f;
        let e = decode_header(&b, Receiver::Controller, &l).unwrap_err();
        assert_eq!(e.fes_fei(), (fes::INVALID_HEADER_FIELD, 0));
        // Wrong hlen.
        let mut b = out.clone();
        b[2] = 71;
        let e = decode_header(&b, Receiver::Controller, &l).unwrap_err();
        assert_eq!(e.fes_fei(), (fes::INVALID_HEADER_FIELD, 2));
        // plen shorter than the header.
        let mut b = out.clone();
        b[4..8].copy_from_slice(&10u32.to_le_bytes());
        let e = decode_header(&b, Receiver::Controller, &l).unwrap_err();
        assert_eq!(e.fes_fei(), (fes::INVALID_HEADER_FIELD, 4));
        // Header digest flag set although digests are off.
        let mut b = out.clone();
        b[1] = flags::HDGSTF;
        let e = decode_header(&b, Receiver::Controller, &l).unwrap_err();
        assert_eq!(e.fes_fei(), (fes::INVALID_HEADER_FIELD, 1));
        // Oversized in-capsule data.
        let mut b = Vec::new();
        put_capsule_cmd(&mut b, &[0u8; 64], 9000, false, false, 0);
        let e = decode_header(&b, Receiver::Controller, &l).unwrap_err();
        assert_eq!(e.fes_fei().0, fes::DATA_LIMIT_EXCEEDED);
        // Truncated input asks for more.
        assert_eq!(
            decode_header(&out[..5], Receiver::Controller, &l),
            Ok(Decoded::NeedMore(8))
        );
        assert_eq!(
            decode_header(&out[..40], Receiver::Controller, &l),
            Ok(Decoded::NeedMore(72))
        );
    }

    #[test]
    fn term_req_carries_the_offending_header() {
        let mut out = Vec::new();
        let hdr = [0x55u8; 200];
        let n = put_term_req(
            &mut out,
            PduType::C2HTermReq,
            &TermReq { fes: 1, fei: 2 },
            &hdr,
        );
        assert_eq!(n, TERM_REQ_MAX_PLEN);
        let (p, _) = decode_pdu(&out, Receiver::Host, &Limits::initial()).unwrap();
        assert_eq!(
            p.frame.header,
            Header::C2HTermReq(TermReq { fes: 1, fei: 2 })
        );
        assert_eq!(p.data.len(), 128);
    }

    proptest::proptest! {
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
                           hd: bool, dd: bool, host: bool) {
            let rx = if host { Receiver::Host } else { Receiver::Controller };
            let l = lim(hd, dd);
            if let Ok(Decoded::Frame(f)) = decode_header(&bytes, rx, &l) {
                proptest::prop_assert!(f.header_len <= f.total_len);
                proptest::prop_assert!(f.data_offset + f.data_len <= f.total_len);
            }
            let _ = decode_pdu(&bytes, rx, &l);
        }
    }
}
