//! In-band authentication messages (NVMe Base Specification 2.x §8.13, "DH-HMAC-CHAP"),
//! carried as the data of the AUTH_Send (fctype 0x05) and AUTH_Receive (fctype 0x06)
//! fabrics commands: their command fields, the identifiers of hash functions and
//! Diffie-Hellman groups, and a pure, total decoder and encoder of every message.
//!
//! Every decoder rejects bad input with an [`AuthDecodeError`] that names the field and
//! carries the AUTH_Failure reason code explanation the target answers with (the codes
//! SPDK's `lib/nvmf/auth.c` uses for the same fault). Layouts, all little-endian:
//!
//! | message | bytes |
//! |---|---|
//! | common header | 0 auth_type, 1 auth_id, 2..4 reserved, 4..6 t_id |
//! | AUTH_Negotiate | 6 sc_c, 7 napd, then napd descriptors of 64 bytes (0 auth_id, 2 halen, 3 dhlen, 4..34 hash ids, 34..64 group ids) |
//! | DH-HMAC-CHAP_Challenge | 6 hl, 8 hash_id, 9 dhg_id, 10..12 dhvlen, 12..16 seqnum, then cval\[hl\], dhv\[dhvlen\] |
//! | DH-HMAC-CHAP_Reply | 6 hl, 8 cvalid, 10..12 dhvlen, 12..16 seqnum, then rval\[hl\], cval\[hl\], dhv\[dhvlen\] |
//! | DH-HMAC-CHAP_Success1 | 6 hl, 8 rvalid, then rval\[hl\] when rvalid |
//! | DH-HMAC-CHAP_Success2 | 16 bytes, header only |
//! | AUTH_Failure1/2 | 6 rc, 7 rce (8 bytes) |

/// Security protocol of NVMe in-band authentication (SECP of AUTH_Send/AUTH_Receive).
pub const SECP_NVME: u8 = 0xe9;
/// SPSP0 and SPSP1 of the authentication commands.
pub const SPSP: u8 = 0x01;
/// The most a target answers in one AUTH_Receive, and what SPDK's host asks for.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// `auth_type` values.
pub mod auth_type {
    pub const COMMON: u8 = 0x00;
    pub const DHCHAP: u8 = 0x01;
}

/// `auth_id` values.
pub mod auth_id {
    pub const NEGOTIATE: u8 = 0x00;
    pub const CHALLENGE: u8 = 0x01;
    pub const REPLY: u8 = 0x02;
    pub const SUCCESS1: u8 = 0x03;
    pub const SUCCESS2: u8 = 0x04;
    pub const FAILURE2: u8 = 0xf0;
    pub const FAILURE1: u8 = 0xf1;
}

/// Secure channel concatenation requests (`SC_C` of AUTH_Negotiate; the names of the
/// Linux kernel's `NVME_AUTH_SECP_*`).
pub mod sc_c {
    /// No secure channel concatenation.
    pub const NOSC: u8 = 0x00;
    /// A secure channel other than TLS (not defined for NVMe/TCP).
    pub const SC: u8 = 0x01;
    /// Generate a TLS PSK, on a queue without TLS: the host reconnects with TLS keyed by
    /// it.
    pub const NEWTLSPSK: u8 = 0x02;
    /// Generate a TLS PSK replacing the one of the TLS connection the exchange runs on.
    pub const REPLACETLSPSK: u8 = 0x03;

    /// SPDK-style name of a value, for logs.
    pub fn name(v: u8) -> &'static str {
        match v {
            NOSC => "NOSC",
            SC => "SC",
            NEWTLSPSK => "NEWTLSPSK",
            REPLACETLSPSK => "REPLACETLSPSK",
            _ => "reserved",
        }
    }
}

/// AUTH_Failure reason code (`rc`): the only one defined.
pub const FAILURE_RC: u8 = 0x01;

/// AUTH_Failure reason code explanations (`rce`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FailureReason {
    Failed = 0x01,
    ProtocolUnusable = 0x02,
    SccMismatch = 0x03,
    HashUnusable = 0x04,
    DhGroupUnusable = 0x05,
    IncorrectPayload = 0x06,
    IncorrectProtocolMessage = 0x07,
}

impl FailureReason {
    /// The reason of code `rce`.
    pub fn from_code(rce: u8) -> Option<FailureReason> {
        use FailureReason::*;
        Some(match rce {
            0x01 => Failed,
            0x02 => ProtocolUnusable,
            0x03 => SccMismatch,
            0x04 => HashUnusable,
            0x05 => DhGroupUnusable,
            0x06 => IncorrectPayload,
            0x07 => IncorrectProtocolMessage,
            _ => return None,
        })
    }

    /// What SPDK's host prints for it.
    pub fn describe(self) -> &'static str {
        match self {
            FailureReason::Failed => "authentication failed",
            FailureReason::ProtocolUnusable => "protocol not usable",
            FailureReason::SccMismatch => "secure channel concatenation mismatch",
            FailureReason::HashUnusable => "hash not usable",
            FailureReason::DhGroupUnusable => "dhgroup not usable",
            FailureReason::IncorrectPayload => "incorrect payload",
            FailureReason::IncorrectProtocolMessage => "incorrect protocol message",
        }
    }
}

/// A hash function of DH-HMAC-CHAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum HashId {
    Sha256 = 0x01,
    Sha384 = 0x02,
    Sha512 = 0x03,
}

impl HashId {
    /// Every hash, strongest first (the order a target picks in).
    pub const STRONGEST_FIRST: [HashId; 3] = [HashId::Sha512, HashId::Sha384, HashId::Sha256];
    /// Every hash, in identifier order.
    pub const ALL: [HashId; 3] = [HashId::Sha256, HashId::Sha384, HashId::Sha512];

    pub fn from_id(id: u8) -> Option<HashId> {
        match id {
            0x01 => Some(HashId::Sha256),
            0x02 => Some(HashId::Sha384),
            0x03 => Some(HashId::Sha512),
            _ => None,
        }
    }

    /// SPDK's name (`sha256`, …).
    pub fn name(self) -> &'static str {
        match self {
            HashId::Sha256 => "sha256",
            HashId::Sha384 => "sha384",
            HashId::Sha512 => "sha512",
        }
    }

    pub fn from_name(name: &str) -> Option<HashId> {
        HashId::ALL.into_iter().find(|h| h.name() == name)
    }

    /// Digest length in bytes (`hl`).
    pub fn digest_len(self) -> usize {
        match self {
            HashId::Sha256 => 32,
            HashId::Sha384 => 48,
            HashId::Sha512 => 64,
        }
    }
}

/// A Diffie-Hellman group of DH-HMAC-CHAP: none, or an RFC 7919 group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum DhGroup {
    Null = 0x00,
    Ffdhe2048 = 0x01,
    Ffdhe3072 = 0x02,
    Ffdhe4096 = 0x03,
    Ffdhe6144 = 0x04,
    Ffdhe8192 = 0x05,
}

impl DhGroup {
    /// Every group, strongest first (the order a target picks in).
    pub const STRONGEST_FIRST: [DhGroup; 6] = [
        DhGroup::Ffdhe8192,
        DhGroup::Ffdhe6144,
        DhGroup::Ffdhe4096,
        DhGroup::Ffdhe3072,
        DhGroup::Ffdhe2048,
        DhGroup::Null,
    ];
    /// Every group, in identifier order.
    pub const ALL: [DhGroup; 6] = [
        DhGroup::Null,
        DhGroup::Ffdhe2048,
        DhGroup::Ffdhe3072,
        DhGroup::Ffdhe4096,
        DhGroup::Ffdhe6144,
        DhGroup::Ffdhe8192,
    ];

    pub fn from_id(id: u8) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|g| *g as u8 == id)
    }

    /// SPDK's name (`null`, `ffdhe2048`, …).
    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Null => "null",
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
            DhGroup::Ffdhe4096 => "ffdhe4096",
            DhGroup::Ffdhe6144 => "ffdhe6144",
            DhGroup::Ffdhe8192 => "ffdhe8192",
        }
    }

    pub fn from_name(name: &str) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|g| g.name() == name)
    }

    /// Length of a public value in bytes (the prime's), 0 for the null group.
    pub fn value_len(self) -> usize {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 => 256,
            DhGroup::Ffdhe3072 => 384,
            DhGroup::Ffdhe4096 => 512,
            DhGroup::Ffdhe6144 => 768,
            DhGroup::Ffdhe8192 => 1024,
        }
    }
}

/// The fields of an AUTH_Send or AUTH_Receive command (SQE bytes 41..48).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthCmd {
    pub spsp0: u8,
    pub spsp1: u8,
    pub secp: u8,
    /// Transfer length (AUTH_Send) or allocation length (AUTH_Receive).
    pub len: u32,
}

/// A message that cannot be decoded: which field, and the failure reason to answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct AuthDecodeError {
    pub reason: FailureReason,
    pub what: String,
}

fn bad(reason: FailureReason, what: impl Into<String>) -> AuthDecodeError {
    AuthDecodeError {
        reason,
        what: what.into(),
    }
}

fn payload(what: impl Into<String>) -> AuthDecodeError {
    bad(FailureReason::IncorrectPayload, what)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The header every message starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub auth_type: u8,
    pub auth_id: u8,
    pub tid: u16,
}

pub const HEADER_LEN: usize = 6;
/// Length of the fixed part of Challenge, Reply, Success1 and Success2.
pub const DHCHAP_HEADER_LEN: usize = 16;
/// Length of an AUTH_Failure message.
pub const FAILURE_LEN: usize = 8;
/// Length of an AUTH_Negotiate protocol descriptor.
pub const DESCRIPTOR_LEN: usize = 64;
const ID_LIST_LEN: usize = 30;

/// Refuses a message other than DH-HMAC-CHAP message `id` (named `name` in the error).
fn expect_dhchap(h: &Header, id: u8, name: &str) -> Result<(), AuthDecodeError> {
    if h.auth_type == auth_type::DHCHAP && h.auth_id == id {
        return Ok(());
    }
    Err(bad(
        FailureReason::IncorrectProtocolMessage,
        format!(
            "expected DH-HMAC-CHAP_{name}, got type {} id {:#x}",
            h.auth_type, h.auth_id
        ),
    ))
}

/// Decodes the common header.
pub fn decode_header(b: &[u8]) -> Result<Header, AuthDecodeError> {
    if b.len() < HEADER_LEN {
        return Err(payload(format!(
            "message of {} bytes is shorter than the {HEADER_LEN}-byte header",
            b.len()
        )));
    }
    Ok(Header {
        auth_type: b[0],
        auth_id: b[1],
        tid: le16(b, 4),
    })
}

/// The DH-HMAC-CHAP protocol descriptor of an AUTH_Negotiate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiate {
    pub tid: u16,
    /// Secure channel concatenation requested (0: none).
    pub sc_c: u8,
    /// Hash identifiers the host offers (unknown ones included).
    pub hashes: Vec<u8>,
    /// DH group identifiers the host offers (unknown ones included).
    pub dhgroups: Vec<u8>,
}

/// Decodes an AUTH_Negotiate, checking in SPDK's order: length, a DH-HMAC-CHAP
/// descriptor, its list lengths. `sc_c` is returned as sent: whether the queue may ask
/// for secure channel concatenation is the state machine's to judge.
pub fn decode_negotiate(b: &[u8]) -> Result<Negotiate, AuthDecodeError> {
    let h = decode_header(b)?;
    if b.len() < 8 {
        return Err(payload(format!(
            "AUTH_Negotiate of {} bytes is shorter than 8",
            b.len()
        )));
    }
    let napd = b[7] as usize;
    if b.len() != 8 + napd * DESCRIPTOR_LEN {
        return Err(payload(format!(
            "AUTH_Negotiate of {} bytes with napd {napd}: expected {}",
            b.len(),
            8 + napd * DESCRIPTOR_LEN
        )));
    }
    let desc = (0..napd)
        .map(|i| &b[8 + i * DESCRIPTOR_LEN..8 + (i + 1) * DESCRIPTOR_LEN])
        .find(|d| d[0] == auth_type::DHCHAP)
        .ok_or_else(|| {
            bad(
                FailureReason::ProtocolUnusable,
                format!("none of the {napd} protocol descriptors is DH-HMAC-CHAP"),
            )
        })?;
    let (halen, dhlen) = (desc[2] as usize, desc[3] as usize);
    if halen > ID_LIST_LEN || dhlen > ID_LIST_LEN {
        return Err(payload(format!(
            "descriptor lists {halen} hashes and {dhlen} groups; at most {ID_LIST_LEN} each"
        )));
    }
    Ok(Negotiate {
        tid: h.tid,
        sc_c: b[6],
        hashes: desc[4..4 + halen].to_vec(),
        dhgroups: desc[34..34 + dhlen].to_vec(),
    })
}

/// Encodes an AUTH_Negotiate with one DH-HMAC-CHAP descriptor, without secure channel
/// concatenation.
pub fn encode_negotiate(out: &mut Vec<u8>, tid: u16, hashes: &[HashId], groups: &[DhGroup]) {
    encode_negotiate_scc(out, tid, sc_c::NOSC, hashes, groups)
}

/// Encodes an AUTH_Negotiate with one DH-HMAC-CHAP descriptor and `SC_C` `scc`.
pub fn encode_negotiate_scc(
    out: &mut Vec<u8>,
    tid: u16,
    scc: u8,
    hashes: &[HashId],
    groups: &[DhGroup],
) {
    out.clear();
    out.extend_from_slice(&[auth_type::COMMON, auth_id::NEGOTIATE, 0, 0]);
    out.extend_from_slice(&tid.to_le_bytes());
    out.extend_from_slice(&[scc, 1]);
    let mut d = [0u8; DESCRIPTOR_LEN];
    d[0] = auth_type::DHCHAP;
    d[2] = hashes.len().min(ID_LIST_LEN) as u8;
    d[3] = groups.len().min(ID_LIST_LEN) as u8;
    for (i, h) in hashes.iter().take(ID_LIST_LEN).enumerate() {
        d[4 + i] = *h as u8;
    }
    for (i, g) in groups.iter().take(ID_LIST_LEN).enumerate() {
        d[34 + i] = *g as u8;
    }
    out.extend_from_slice(&d);
}

/// A DH-HMAC-CHAP_Challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub tid: u16,
    pub hash: HashId,
    pub dhgroup: DhGroup,
    pub seqnum: u32,
    pub cval: &'a [u8],
    /// The controller's DH public value (empty for the null group).
    pub dhv: &'a [u8],
}

/// Encodes a DH-HMAC-CHAP_Challenge; returns its length.
pub fn encode_challenge(out: &mut [u8], c: &Challenge<'_>) -> Option<usize> {
    let hl = c.hash.digest_len();
    let n = DHCHAP_HEADER_LEN + hl + c.dhv.len();
    if out.len() < n || c.cval.len() != hl || c.dhv.len() > u16::MAX as usize {
        return None;
    }
    out[..n].fill(0);
    out[0] = auth_type::DHCHAP;
    out[1] = auth_id::CHALLENGE;
    out[4..6].copy_from_slice(&c.tid.to_le_bytes());
    out[6] = hl as u8;
    out[8] = c.hash as u8;
    out[9] = c.dhgroup as u8;
    out[10..12].copy_from_slice(&(c.dhv.len() as u16).to_le_bytes());
    out[12..16].copy_from_slice(&c.seqnum.to_le_bytes());
    out[16..16 + hl].copy_from_slice(c.cval);
    out[16 + hl..n].copy_from_slice(c.dhv);
    Some(n)
}

/// Decodes a DH-HMAC-CHAP_Challenge (the host's side), with the checks of SPDK's host.
pub fn decode_challenge(b: &[u8]) -> Result<Challenge<'_>, AuthDecodeError> {
    let h = decode_header(b)?;
    expect_dhchap(&h, auth_id::CHALLENGE, "Challenge")?;
    if b.len() < DHCHAP_HEADER_LEN {
        return Err(payload(format!("challenge of {} bytes", b.len())));
    }
    let hash = HashId::from_id(b[8])
        .ok_or_else(|| payload(format!("unsupported hash function {:#x}", b[8])))?;
    if b[6] as usize != hash.digest_len() {
        return Err(payload(format!("hash length {} for {}", b[6], hash.name())));
    }
    let dhgroup = DhGroup::from_id(b[9])
        .ok_or_else(|| payload(format!("unsupported DH group {:#x}", b[9])))?;
    let dhvlen = le16(b, 10) as usize;
    let seqnum = le32(b, 12);
    if seqnum == 0 {
        return Err(payload("challenge with seqnum 0"));
    }
    if (dhgroup == DhGroup::Null) != (dhvlen == 0) {
        return Err(payload(format!(
            "dhvlen {dhvlen} for DH group {}",
            dhgroup.name()
        )));
    }
    let hl = hash.digest_len();
    if b.len() < DHCHAP_HEADER_LEN + hl + dhvlen {
        return Err(payload(format!(
            "challenge of {} bytes; its fields need {}",
            b.len(),
            DHCHAP_HEADER_LEN + hl + dhvlen
        )));
    }
    Ok(Challenge {
        tid: h.tid,
        hash,
        dhgroup,
        seqnum,
        cval: &b[16..16 + hl],
        dhv: &b[16 + hl..16 + hl + dhvlen],
    })
}

/// A DH-HMAC-CHAP_Reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    pub tid: u16,
    pub hl: usize,
    /// The host asks the controller to authenticate itself.
    pub cvalid: bool,
    /// The host's sequence number for the controller's response (0 unless `cvalid`).
    pub seqnum: u32,
    pub rval: &'a [u8],
    pub cval: &'a [u8],
    pub dhv: &'a [u8],
}

/// Decodes a DH-HMAC-CHAP_Reply whose hash length must be `hl`, with SPDK's checks.
pub fn decode_reply(b: &[u8], hl: usize) -> Result<Reply<'_>, AuthDecodeError> {
    decode_reply_scc(b, hl, false)
}

/// [`decode_reply`] in an exchange with secure channel concatenation (`concat`): there
/// the host always sends its challenge C2 (the generated PSK needs it) and a sequence
/// number of 0 says it does not ask the controller to authenticate itself (the Linux
/// host's way), so cvalid 1 with seqnum 0 is allowed.
pub fn decode_reply_scc(b: &[u8], hl: usize, concat: bool) -> Result<Reply<'_>, AuthDecodeError> {
    let h = decode_header(b)?;
    if b.len() < DHCHAP_HEADER_LEN {
        return Err(payload(format!(
            "reply of {} bytes is shorter than {DHCHAP_HEADER_LEN}",
            b.len()
        )));
    }
    if b[6] as usize != hl {
        return Err(payload(format!("hash length mismatch: {} != {hl}", b[6])));
    }
    let dhvlen = le16(b, 10) as usize;
    if !dhvlen.is_multiple_of(4) {
        return Err(payload(format!("dhvlen {dhvlen} is not a multiple of 4")));
    }
    if b.len() != DHCHAP_HEADER_LEN + 2 * hl + dhvlen {
        return Err(payload(format!(
            "reply of {} bytes; its fields need {}",
            b.len(),
            DHCHAP_HEADER_LEN + 2 * hl + dhvlen
        )));
    }
    let cvalid = match b[8] {
        0 => false,
        1 => true,
        v => return Err(payload(format!("cvalid {v}"))),
    };
    let seqnum = le32(b, 12);
    if cvalid && seqnum == 0 && !concat {
        return Err(payload("seqnum 0 with cvalid 1"));
    }
    Ok(Reply {
        tid: h.tid,
        hl,
        cvalid,
        seqnum,
        rval: &b[16..16 + hl],
        cval: &b[16 + hl..16 + 2 * hl],
        dhv: &b[16 + 2 * hl..],
    })
}

/// Encodes a DH-HMAC-CHAP_Reply. `cval` is all zeroes when the controller is not
/// asked to authenticate itself (the field is always there).
pub fn encode_reply(out: &mut Vec<u8>, r: &Reply<'_>) {
    out.clear();
    out.resize(DHCHAP_HEADER_LEN, 0);
    out[0] = auth_type::DHCHAP;
    out[1] = auth_id::REPLY;
    out[4..6].copy_from_slice(&r.tid.to_le_bytes());
    out[6] = r.hl as u8;
    out[8] = r.cvalid as u8;
    out[10..12].copy_from_slice(&(r.dhv.len() as u16).to_le_bytes());
    out[12..16].copy_from_slice(&r.seqnum.to_le_bytes());
    out.extend_from_slice(r.rval);
    out.extend_from_slice(r.cval);
    out.extend_from_slice(r.dhv);
}

/// A DH-HMAC-CHAP_Success1: the controller's response when the host asked for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Success1<'a> {
    pub tid: u16,
    pub hl: usize,
    pub rval: Option<&'a [u8]>,
}

/// Encodes a DH-HMAC-CHAP_Success1; returns its length. `hl` is set whether or not a
/// response follows (Linux's host expects it).
pub fn encode_success1(out: &mut [u8], s: &Success1<'_>) -> Option<usize> {
    let n = DHCHAP_HEADER_LEN + s.rval.map_or(0, <[u8]>::len);
    if out.len() < n {
        return None;
    }
    out[..n].fill(0);
    out[0] = auth_type::DHCHAP;
    out[1] = auth_id::SUCCESS1;
    out[4..6].copy_from_slice(&s.tid.to_le_bytes());
    out[6] = s.hl as u8;
    if let Some(r) = s.rval {
        out[8] = 1;
        out[16..n].copy_from_slice(r);
    }
    Some(n)
}

/// Decodes a DH-HMAC-CHAP_Success1 (the host's side).
pub fn decode_success1(b: &[u8]) -> Result<Success1<'_>, AuthDecodeError> {
    let h = decode_header(b)?;
    expect_dhchap(&h, auth_id::SUCCESS1, "Success1")?;
    if b.len() < DHCHAP_HEADER_LEN {
        return Err(payload(format!("success1 of {} bytes", b.len())));
    }
    let hl = b[6] as usize;
    let rval = match b[8] {
        0 => None,
        _ if b.len() < DHCHAP_HEADER_LEN + hl => {
            return Err(payload(format!(
                "success1 of {} bytes with a {hl}-byte response",
                b.len()
            )));
        }
        _ => Some(&b[16..16 + hl]),
    };
    Ok(Success1 {
        tid: h.tid,
        hl,
        rval,
    })
}

/// Checks a DH-HMAC-CHAP_Success2 (header and length).
pub fn decode_success2(b: &[u8]) -> Result<u16, AuthDecodeError> {
    let h = decode_header(b)?;
    if b.len() != DHCHAP_HEADER_LEN {
        return Err(payload(format!(
            "success2 of {} bytes; it has {DHCHAP_HEADER_LEN}",
            b.len()
        )));
    }
    Ok(h.tid)
}

/// Encodes a DH-HMAC-CHAP_Success2.
pub fn encode_success2(out: &mut Vec<u8>, tid: u16) {
    out.clear();
    out.resize(DHCHAP_HEADER_LEN, 0);
    out[0] = auth_type::DHCHAP;
    out[1] = auth_id::SUCCESS2;
    out[4..6].copy_from_slice(&tid.to_le_bytes());
}

/// An AUTH_Failure1 (controller to host) or AUTH_Failure2 (host to controller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub tid: u16,
    pub rc: u8,
    pub rce: u8,
}

/// Decodes an AUTH_Failure message of either direction.
pub fn decode_failure(b: &[u8]) -> Result<Failure, AuthDecodeError> {
    let h = decode_header(b)?;
    if b.len() != FAILURE_LEN {
        return Err(payload(format!(
            "AUTH_Failure of {} bytes; it has {FAILURE_LEN}",
            b.len()
        )));
    }
    Ok(Failure {
        tid: h.tid,
        rc: b[6],
        rce: b[7],
    })
}

/// Encodes an AUTH_Failure1 (`id` [`auth_id::FAILURE1`]) or AUTH_Failure2.
pub fn encode_failure(out: &mut [u8], id: u8, tid: u16, reason: FailureReason) -> Option<usize> {
    if out.len() < FAILURE_LEN {
        return None;
    }
    out[..FAILURE_LEN].fill(0);
    out[0] = auth_type::COMMON;
    out[1] = id;
    out[4..6].copy_from_slice(&tid.to_le_bytes());
    out[6] = FAILURE_RC;
    out[7] = reason as u8;
    Some(FAILURE_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_round_trips_and_rejects_each_bad_field() {
        let mut v = Vec::new();
        encode_negotiate(
            &mut v,
            7,
            &[HashId::Sha256, HashId::Sha512],
            &[DhGroup::Null, DhGroup::Ffdhe2048],
        );
        assert_eq!(v.len(), 8 + 64);
        let n = decode_negotiate(&v).unwrap();
        assert_eq!(n.tid, 7);
        assert_eq!(n.hashes, vec![1, 3]);
        assert_eq!(n.dhgroups, vec![0, 1]);
        // Truncated: the length no longer matches napd.
        let e = decode_negotiate(&v[..40]).unwrap_err();
        assert_eq!(e.reason, FailureReason::IncorrectPayload);
        assert!(decode_negotiate(&v[..3]).is_err());
        // SC_C is returned as sent (the state machine judges it).
        let mut s = Vec::new();
        encode_negotiate_scc(
            &mut s,
            7,
            sc_c::NEWTLSPSK,
            &[HashId::Sha256],
            &[DhGroup::Null],
        );
        assert_eq!(decode_negotiate(&s).unwrap().sc_c, sc_c::NEWTLSPSK);
        let mut p = v.clone();
        p[8] = 2;
        assert_eq!(
            decode_negotiate(&p).unwrap_err().reason,
            FailureReason::ProtocolUnusable
        );
        let mut l = v.clone();
        l[8 + 2] = 31;
        assert_eq!(
            decode_negotiate(&l).unwrap_err().reason,
            FailureReason::IncorrectPayload
        );
    }

    #[test]
    fn reply_checks_lengths_cvalid_and_seqnum() {
        let rval = [1u8; 32];
        let cval = [2u8; 32];
        let dhv = [3u8; 256];
        let mut v = Vec::new();
        encode_reply(
            &mut v,
            &Reply {
                tid: 1,
                hl: 32,
                cvalid: true,
                seqnum: 9,
                rval: &rval,
                cval: &cval,
                dhv: &dhv,
            },
        );
        let r = decode_reply(&v, 32).unwrap();
        assert!(r.cvalid);
        assert_eq!(r.seqnum, 9);
        assert_eq!(r.dhv.len(), 256);
        assert!(decode_reply(&v, 48).is_err());
        assert!(decode_reply(&v[..v.len() - 1], 32).is_err());
        let mut c = v.clone();
        c[8] = 2;
        assert!(decode_reply(&c, 32).is_err());
        let mut z = v.clone();
        z[12..16].fill(0);
        assert!(decode_reply(&z, 32).is_err());
        // With secure channel concatenation: C2 without a controller authentication.
        let r = decode_reply_scc(&z, 32, true).unwrap();
        assert!(r.cvalid && r.seqnum == 0);
        let mut d = v.clone();
        d[10] = 3;
        assert!(decode_reply(&d, 32).is_err());
    }

    #[test]
    fn challenge_success_failure_round_trip() {
        let mut b = [0u8; 4096];
        let cval = [5u8; 48];
        let dhv = [6u8; 384];
        let n = encode_challenge(
            &mut b,
            &Challenge {
                tid: 3,
                hash: HashId::Sha384,
                dhgroup: DhGroup::Ffdhe3072,
                seqnum: 11,
                cval: &cval,
                dhv: &dhv,
            },
        )
        .unwrap();
        let c = decode_challenge(&b[..n]).unwrap();
        assert_eq!(
            (c.hash, c.dhgroup, c.seqnum),
            (HashId::Sha384, DhGroup::Ffdhe3072, 11)
        );
        assert_eq!(c.dhv, &dhv[..]);
        assert!(decode_challenge(&b[..n - 1]).is_err());
        let n = encode_success1(
            &mut b,
            &Success1 {
                tid: 3,
                hl: 48,
                rval: Some(&cval),
            },
        )
        .unwrap();
        assert_eq!(decode_success1(&b[..n]).unwrap().rval, Some(&cval[..]));
        let n = encode_failure(&mut b, auth_id::FAILURE1, 3, FailureReason::Failed).unwrap();
        let f = decode_failure(&b[..n]).unwrap();
        assert_eq!((f.tid, f.rc, f.rce), (3, 1, 1));
        let mut s2 = Vec::new();
        encode_success2(&mut s2, 3);
        assert_eq!(decode_success2(&s2), Ok(3));
        assert!(decode_success2(&s2[..15]).is_err());
    }
}
