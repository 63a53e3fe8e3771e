//! The data structures admin commands return — Identify Controller and Namespace, the
//! active namespace list, namespace identification descriptors, and the log pages
//! (error information, SMART / health, changed namespace list, discovery) — as pure
//! encoders and decoders. The target encodes them; the initiator decodes them.

/// Identify data and most log pages are one 4 KiB page.
pub const PAGE_LEN: usize = 4096;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn put128(b: &mut [u8], at: usize, v: u128) {
    b[at..at + 16].copy_from_slice(&v.to_le_bytes());
}
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Writes `s` space-padded into `b[at..at+len]` (serial, model, firmware).
fn put_padded(b: &mut [u8], at: usize, len: usize, s: &str) {
    let f = &mut b[at..at + len];
    f.fill(b' ');
    let n = s.len().min(len);
    f[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Writes `s` NUL-padded (NQNs, transport addresses).
fn put_str0(b: &mut [u8], at: usize, len: usize, s: &str) {
    let f = &mut b[at..at + len];
    f.fill(0);
    let n = s.len().min(len - 1);
    f[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn get_padded(b: &[u8], at: usize, len: usize) -> String {
    String::from_utf8_lossy(&b[at..at + len])
        .trim_end_matches([' ', '\0'])
        .to_string()
}

fn get_str0(b: &[u8], at: usize, len: usize) -> String {
    let f = &b[at..at + len];
    let end = f.iter().position(|&c| c == 0).unwrap_or(len);
    String::from_utf8_lossy(&f[..end]).to_string()
}

/// Controller types (CNTRLTYPE).
pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
}

/// The fields of Identify Controller (CNS 01h) that tessera fills in or reads.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    pub serial_number: String,
    pub model_number: String,
    pub firmware_revision: String,
    /// Maximum data transfer size, as a power of two of the minimum page size (0: none).
    pub mdts: u8,
    pub cntlid: u16,
    pub version: u32,
    /// Optional asynchronous events supported (bit 8: namespace attribute notices).
    pub oaes: u32,
    pub cntrltype: u8,
    pub acl: u8,
    /// Asynchronous event request limit (0's based).
    pub aerl: u8,
    /// Log page attributes.
    pub lpa: u8,
    /// Error log page entries (0's based).
    pub elpe: u8,
    /// Keep alive granularity in 100 ms units.
    pub kas: u16,
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: u16,
    /// Number of namespaces (the largest valid NSID).
    pub nn: u32,
    /// Optional NVM command support.
    pub oncs: u16,
    /// Volatile write cache present.
    pub vwc: u8,
    pub sgls: u32,
    pub subnqn: String,
    /// I/O queue command capsule supported size, in 16-byte units.
    pub ioccsz: u32,
    /// I/O queue response capsule supported size, in 16-byte units.
    pub iorcsz: u32,
    pub icdoff: u16,
    pub msdbd: u8,
}

/// Optional NVM command support bits.
pub mod oncs {
    pub const DSM: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
}

/// OAES: namespace attribute notices.
pub const OAES_NS_ATTRIBUTE: u32 = 1 << 8;

impl IdentifyController {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_LEN];
        put16(&mut b, 0, self.vid);
        put16(&mut b, 2, self.ssvid);
        put_padded(&mut b, 4, 20, &self.serial_number);
        put_padded(&mut b, 24, 40, &self.model_number);
        put_padded(&mut b, 64, 8, &self.firmware_revision);
        b[72] = 6; // RAB
        b[77] = self.mdts;
        put16(&mut b, 78, self.cntlid);
        put32(&mut b, 80, self.version);
        put32(&mut b, 92, self.oaes);
        b[111] = self.cntrltype;
        b[258] = self.acl;
        b[259] = self.aerl;
        b[261] = self.lpa;
        b[262] = self.elpe;
        put16(&mut b, 320, self.kas);
        b[512] = self.sqes;
        b[513] = self.cqes;
        put16(&mut b, 514, self.maxcmd);
        put32(&mut b, 516, self.nn);
        put16(&mut b, 520, self.oncs);
        b[525] = self.vwc;
        put32(&mut b, 536, self.sgls);
        put_str0(&mut b, 768, 256, &self.subnqn);
        put32(&mut b, 1792, self.ioccsz);
        put32(&mut b, 1796, self.iorcsz);
        put16(&mut b, 1800, self.icdoff);
        b[1803] = self.msdbd;
        b
    }

    pub fn decode(b: &[u8]) -> Option<IdentifyController> {
        if b.len() < PAGE_LEN {
            return None;
        }
        Some(IdentifyController {
            vid: le16(b, 0),
            ssvid: le16(b, 2),
            serial_number: get_padded(b, 4, 20),
            model_number: get_padded(b, 24, 40),
            firmware_revision: get_padded(b, 64, 8),
            mdts: b[77],
            cntlid: le16(b, 78),
            version: le32(b, 80),
            oaes: le32(b, 92),
            cntrltype: b[111],
            acl: b[258],
            aerl: b[259],
            lpa: b[261],
            elpe: b[262],
            kas: le16(b, 320),
            sqes: b[512],
            cqes: b[513],
            maxcmd: le16(b, 514),
            nn: le32(b, 516),
            oncs: le16(b, 520),
            vwc: b[525],
            sgls: le32(b, 536),
            subnqn: get_str0(b, 768, 256),
            ioccsz: le32(b, 1792),
            iorcsz: le32(b, 1796),
            icdoff: le16(b, 1800),
            msdbd: b[1803],
        })
    }
}

/// The fields of Identify Namespace (CNS 00h) tessera uses. One LBA format (index 0).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IdentifyNamespace {
    /// Size in blocks.
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    /// Namespace features (bit 0: thin provisioning).
    pub nsfeat: u8,
    /// Deallocate logical block features (bits 2:0 = 001b: reads zeros).
    pub dlfeat: u8,
    /// Namespace attributes (bit 0: write protected).
    pub nsattr: u8,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    /// log2 of the block size.
    pub lbads: u8,
}

impl IdentifyNamespace {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_LEN];
        put64(&mut b, 0, self.nsze);
        put64(&mut b, 8, self.ncap);
        put64(&mut b, 16, self.nuse);
        b[24] = self.nsfeat;
        b[25] = 0; // NLBAF: one format
        b[26] = 0; // FLBAS: format 0
        b[33] = self.dlfeat;
        b[99] = self.nsattr;
        b[104..120].copy_from_slice(&self.nguid);
        b[120..128].copy_from_slice(&self.eui64);
        put32(&mut b, 128, (self.lbads as u32) << 16);
        b
    }

    pub fn decode(b: &[u8]) -> Option<IdentifyNamespace> {
        if b.len() < PAGE_LEN {
            return None;
        }
        let flbas = (b[26] & 0x0f) as usize;
        let lbaf = le32(b, 128 + flbas * 4);
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&b[104..120]);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&b[120..128]);
        Some(IdentifyNamespace {
            nsze: le64(b, 0),
            ncap: le64(b, 8),
            nuse: le64(b, 16),
            nsfeat: b[24],
            dlfeat: b[33],
            nsattr: b[99],
            nguid,
            eui64,
            lbads: (lbaf >> 16) as u8,
        })
    }

    /// Block size in bytes (`None` for a nonsensical format).
    pub fn block_size(&self) -> Option<u32> {
        (9..=16).contains(&self.lbads).then(|| 1u32 << self.lbads)
    }
}

/// Active namespace list (CNS 02h): the active NSIDs above `after`, ascending, at most
/// 1024.
pub fn encode_ns_list(nsids: impl IntoIterator<Item = u32>, after: u32) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_LEN];
    for (i, nsid) in nsids
        .into_iter()
        .filter(|&n| n > after)
        .take(PAGE_LEN / 4)
        .enumerate()
    {
        put32(&mut b, i * 4, nsid);
    }
    b
}

/// Decodes a namespace list (active NSIDs or changed namespaces).
pub fn decode_ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .take_while(|&n| n != 0)
        .collect()
}

/// Namespace identification descriptor types.
pub mod nidt {
    pub const EUI64: u8 = 1;
    pub const NGUID: u8 = 2;
    pub const UUID: u8 = 3;
    pub const CSI: u8 = 4;
}

/// Namespace identification descriptor list (CNS 03h): NGUID, UUID and the command
/// set (NVM).
pub fn encode_ns_descriptors(nguid: &[u8; 16], uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_LEN];
    let mut at = 0;
    for (ty, val) in [(nidt::NGUID, &nguid[..]), (nidt::UUID, &uuid[..])] {
        b[at] = ty;
        b[at + 1] = val.len() as u8;
        b[at + 4..at + 4 + val.len()].copy_from_slice(val);
        at += 4 + val.len();
    }
    b[at] = nidt::CSI;
    b[at + 1] = 1;
    b[at + 4] = 0; // NVM command set
    b
}

/// Decodes a descriptor list into (type, value) pairs.
pub fn decode_ns_descriptors(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= b.len() {
        let (ty, len) = (b[at], b[at + 1] as usize);
        if ty == 0 || at + 4 + len > b.len() {
            break;
        }
        out.push((ty, b[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    out
}

/// SMART / health information (log page 02h, 512 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature in kelvins.
    pub temperature_k: u16,
    pub available_spare_pct: u8,
    pub available_spare_threshold_pct: u8,
    pub percentage_used: u8,
    pub data_units_read: u128,
    pub data_units_written: u128,
    pub host_read_commands: u128,
    pub host_write_commands: u128,
    pub power_cycles: u128,
    pub power_on_hours: u128,
    pub unsafe_shutdowns: u128,
    pub media_errors: u128,
    pub num_err_log_entries: u128,
}

impl SmartLog {
    /// Data units are thousands of 512-byte units, rounded up.
    pub fn data_units(bytes: u64) -> u128 {
        (bytes as u128).div_ceil(512 * 1000)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0] = self.critical_warning;
        put16(&mut b, 1, self.temperature_k);
        b[3] = self.available_spare_pct;
        b[4] = self.available_spare_threshold_pct;
        b[5] = self.percentage_used;
        put128(&mut b, 32, self.data_units_read);
        put128(&mut b, 48, self.data_units_written);
        put128(&mut b, 64, self.host_read_commands);
        put128(&mut b, 80, self.host_write_commands);
        put128(&mut b, 112, self.power_cycles);
        put128(&mut b, 128, self.power_on_hours);
        put128(&mut b, 144, self.unsafe_shutdowns);
        put128(&mut b, 160, self.media_errors);
        put128(&mut b, 176, self.num_err_log_entries);
        b
    }

    pub fn decode(b: &[u8]) -> Option<SmartLog> {
        if b.len() < 512 {
            return None;
        }
        let g = |at: usize| u128::from_le_bytes(b[at..at + 16].try_into().expect("16 bytes"));
        Some(SmartLog {
            critical_warning: b[0],
            temperature_k: le16(b, 1),
            available_spare_pct: b[3],
            available_spare_threshold_pct: b[4],
            percentage_used: b[5],
            data_units_read: g(32),
            data_units_written: g(48),
            host_read_commands: g(64),
            host_write_commands: g(80),
            power_cycles: g(112),
            power_on_hours: g(128),
            unsafe_shutdowns: g(144),
            media_errors: g(160),
            num_err_log_entries: g(176),
        })
    }
}

/// One error information log entry (64 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ErrorLogEntry {
    /// Unique, increasing error count (0: the entry is empty).
    pub error_count: u64,
    pub sqid: u16,
    pub cid: u16,
    /// The status field (bits 15:1 of the CQE's status; the phase bit as 0).
    pub status_field: u16,
    pub lba: u64,
    pub nsid: u32,
}

impl ErrorLogEntry {
    pub const LEN: usize = 64;

    pub fn encode_into(&self, b: &mut [u8]) {
        put64(b, 0, self.error_count);
        put16(b, 8, self.sqid);
        put16(b, 10, self.cid);
        put16(b, 12, self.status_field);
        put16(b, 14, 0xffff); // parameter error location: not specific
        put64(b, 16, self.lba);
        put32(b, 24, self.nsid);
    }

    pub fn decode(b: &[u8]) -> Option<ErrorLogEntry> {
        (b.len() >= Self::LEN).then(|| ErrorLogEntry {
            error_count: le64(b, 0),
            sqid: le16(b, 8),
            cid: le16(b, 10),
            status_field: le16(b, 12),
            lba: le64(b, 16),
            nsid: le32(b, 24),
        })
    }
}

/// Changed namespace list (log page 04h): up to 1024 NSIDs; more is reported as the
/// single entry `0xffffffff`.
pub fn encode_changed_ns_list(nsids: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_LEN];
    if nsids.len() > PAGE_LEN / 4 {
        put32(&mut b, 0, 0xffff_ffff);
    } else {
        for (i, &n) in nsids.iter().enumerate() {
            put32(&mut b, i * 4, n);
        }
    }
    b
}

/// Transport types, address families and subsystem types of discovery log entries.
pub mod disc {
    pub const TRTYPE_TCP: u8 = 3;
    pub const ADRFAM_IPV4: u8 = 1;
    pub const ADRFAM_IPV6: u8 = 2;
    pub const SUBTYPE_DISCOVERY_REFERRAL: u8 = 1;
    pub const SUBTYPE_NVME: u8 = 2;
    pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;
    /// Secure channel required (TREQ bits 1:0 = 01b).
    pub const TREQ_REQUIRED: u8 = 1;
    /// Secure channel not required.
    pub const TREQ_NOT_REQUIRED: u8 = 2;
    /// TSAS of TCP: SECTYPE none.
    pub const SECTYPE_NONE: u8 = 0;
    /// TSAS of TCP: SECTYPE TLS 1.3.
    pub const SECTYPE_TLS13: u8 = 2;
}

/// One discovery log page entry (1024 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    /// TSAS (transport-specific address subtype), TCP: the security type (SECTYPE).
    pub sectype: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
}

/// The discovery log page: header (1024 bytes) and entries.
pub fn encode_discovery_log(genctr: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut b = vec![0u8; 1024 * (1 + entries.len())];
    put64(&mut b, 0, genctr);
    put64(&mut b, 8, entries.len() as u64);
    put16(&mut b, 16, 0);
    for (i, e) in entries.iter().enumerate() {
        let at = 1024 * (i + 1);
        b[at] = e.trtype;
        b[at + 1] = e.adrfam;
        b[at + 2] = e.subtype;
        b[at + 3] = e.treq;
        put16(&mut b, at + 4, e.portid);
        put16(&mut b, at + 6, e.cntlid);
        put16(&mut b, at + 8, e.asqsz);
        put_str0(&mut b, at + 32, 32, &e.trsvcid);
        put_str0(&mut b, at + 256, 256, &e.subnqn);
        put_str0(&mut b, at + 512, 256, &e.traddr);
        // TSAS for TCP: byte 0 is SECTYPE.
        b[at + 768] = e.sectype;
    }
    b
}

/// Decodes a discovery log: generation counter, record count, and the entries present
/// in `b`.
pub fn decode_discovery_log(b: &[u8]) -> Option<(u64, u64, Vec<DiscoveryEntry>)> {
    if b.len() < 1024 {
        return None;
    }
    let genctr = le64(b, 0);
    let numrec = le64(b, 8);
    let mut entries = Vec::new();
    for i in 0..numrec.min(((b.len() - 1024) / 1024) as u64) as usize {
        let at = 1024 * (i + 1);
        entries.push(DiscoveryEntry {
            trtype: b[at],
            adrfam: b[at + 1],
            subtype: b[at + 2],
            treq: b[at + 3],
            sectype: b[at + 768],
            portid: le16(b, at + 4),
            cntlid: le16(b, at + 6),
            asqsz: le16(b, at + 8),
            trsvcid: get_str0(b, at + 32, 32),
            subnqn: get_str0(b, at + 256, 256),
            traddr: get_str0(b, at + 512, 256),
        });
    }
    Some((genctr, numrec, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_controller_round_trips_at_spec_offsets() {
        let c = IdentifyController {
            vid: 0x1b36,
            serial_number: "SN1".into(),
            model_number: "tessera".into(),
            firmware_revision: "0.1".into(),
            mdts: 5,
            cntlid: 3,
            version: 0x10400,
            oaes: OAES_NS_ATTRIBUTE,
            cntrltype: cntrltype::IO,
            aerl: 3,
            kas: 10,
            sqes: 0x66,
            cqes: 0x44,
            maxcmd: 128,
            nn: 32,
            oncs: oncs::DSM | oncs::WRITE_ZEROES,
            vwc: 1,
            sgls: 0x10_0005,
            subnqn: "nqn.2016-06.io.spdk:cnode1".into(),
            ioccsz: 260,
            iorcsz: 1,
            ..Default::default()
        };
        let b = c.encode();
        assert_eq!(&b[4..7], b"SN1");
        assert_eq!(b[77], 5);
        assert_eq!(le32(&b, 516), 32);
        assert_eq!(le32(&b, 1792), 260);
        assert_eq!(IdentifyController::decode(&b), Some(c));
    }

    #[test]
    fn identify_namespace_round_trips() {
        let n = IdentifyNamespace {
            nsze: 1 << 20,
            ncap: 1 << 20,
            nuse: 1 << 20,
            nsfeat: 0,
            dlfeat: 9,
            nsattr: 1,
            nguid: [5; 16],
            eui64: [0; 8],
            lbads: 12,
        };
        let d = IdentifyNamespace::decode(&n.encode()).unwrap();
        assert_eq!(d, n);
        assert_eq!(d.block_size(), Some(4096));
    }

    #[test]
    fn lists_and_descriptors() {
        let b = encode_ns_list([1, 2, 5, 9], 2);
        assert_eq!(decode_ns_list(&b), vec![5, 9]);
        let d = decode_ns_descriptors(&encode_ns_descriptors(&[1; 16], &[2; 16]));
        assert_eq!(
            d,
            vec![
                (nidt::NGUID, vec![1; 16]),
                (nidt::UUID, vec![2; 16]),
                (nidt::CSI, vec![0])
            ]
        );
        let many: Vec<u32> = (1..=1025).collect();
        assert_eq!(
            decode_ns_list(&encode_changed_ns_list(&many)),
            vec![u32::MAX]
        );
        let e = DiscoveryEntry {
            trtype: disc::TRTYPE_TCP,
            adrfam: disc::ADRFAM_IPV4,
            subtype: disc::SUBTYPE_NVME,
            treq: disc::TREQ_NOT_REQUIRED,
            sectype: disc::SECTYPE_NONE,
            portid: 1,
            cntlid: 0xffff,
            asqsz: 128,
            trsvcid: "4420".into(),
            subnqn: "nqn.x".into(),
            traddr: "127.0.0.1".into(),
        };
        let log = encode_discovery_log(7, std::slice::from_ref(&e));
        assert_eq!(decode_discovery_log(&log), Some((7, 1, vec![e.clone()])));
        // A secure channel: TREQ bits 1:0 = 01b, and TSAS byte 0 (SECTYPE) TLS 1.3.
        let tls = DiscoveryEntry {
            treq: disc::TREQ_REQUIRED,
            sectype: disc::SECTYPE_TLS13,
            ..e
        };
        let log = encode_discovery_log(8, std::slice::from_ref(&tls));
        assert_eq!((log[1024 + 3], log[1024 + 768]), (1, 2));
        assert_eq!(decode_discovery_log(&log), Some((8, 1, vec![tls])));
        let s = SmartLog {
            temperature_k: 300,
            data_units_read: 3,
            host_write_commands: 9,
            ..Default::default()
        };
        assert_eq!(SmartLog::decode(&s.encode()), Some(s));
        assert_eq!(SmartLog::data_units(512_001), 2);
    }
}
