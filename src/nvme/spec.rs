//! NVMe commands and completions: the 64-byte submission queue entry (SQE), the 16-byte
//! completion queue entry (CQE), status codes, and a pure, total decoder of the commands
//! tessera serves (fabrics, admin and NVM I/O). Encoders for the commands the initiator
//! sends live here too, so both sides share one definition of every field.
//!
//! Layouts follow the NVMe Base and NVMe over Fabrics specifications (and Linux's
//! `include/linux/nvme.h`); all integers are little-endian.

/// Opcode of every fabrics command.
pub const OPC_FABRICS: u8 = 0x7f;

/// Fabrics command types (byte 4 of a fabrics SQE).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// Admin opcodes.
pub mod admin_opc {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const KEEP_ALIVE: u8 = 0x18;
}

/// NVM command set opcodes.
pub mod io_opc {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Controller properties (register offsets).
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
    pub const NSSR: u32 = 0x20;
}

/// Feature identifiers.
pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

/// Log page identifiers.
pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const DISCOVERY: u8 = 0x70;
}

/// Identify CNS values.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
}

/// An NVMe completion status: status code type, status code and Do Not Retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

/// Status code types.
pub mod sct {
    pub const GENERIC: u8 = 0;
    pub const COMMAND_SPECIFIC: u8 = 1;
    pub const MEDIA: u8 = 2;
}

impl Status {
    pub const SUCCESS: Status = Status::generic(0x00);
    pub const INVALID_OPCODE: Status = Status::generic(0x01).dnr();
    pub const INVALID_FIELD: Status = Status::generic(0x02).dnr();
    pub const CID_CONFLICT: Status = Status::generic(0x03).dnr();
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const INTERNAL_ERROR: Status = Status::generic(0x06);
    pub const ABORT_REQUESTED: Status = Status::generic(0x07);
    pub const ABORTED_SQ_DELETION: Status = Status::generic(0x08);
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0b).dnr();
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0c).dnr();
    pub const SGL_DATA_LENGTH_INVALID: Status = Status::generic(0x0f).dnr();
    pub const SGL_TYPE_INVALID: Status = Status::generic(0x11).dnr();
    pub const SGL_OFFSET_INVALID: Status = Status::generic(0x16).dnr();
    pub const KEEP_ALIVE_EXPIRED: Status = Status::generic(0x19);
    pub const KEEP_ALIVE_INVALID: Status = Status::generic(0x1a).dnr();
    pub const NS_WRITE_PROTECTED: Status = Status::generic(0x20).dnr();
    pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::generic(0x22);
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80).dnr();
    pub const CAPACITY_EXCEEDED: Status = Status::generic(0x81).dnr();
    pub const NS_NOT_READY: Status = Status::generic(0x82);
    pub const INVALID_QUEUE_ID: Status = Status::specific(0x01).dnr();
    pub const ABORT_LIMIT_EXCEEDED: Status = Status::specific(0x03).dnr();
    pub const AER_LIMIT_EXCEEDED: Status = Status::specific(0x05).dnr();
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09).dnr();
    pub const FEATURE_NOT_SAVEABLE: Status = Status::specific(0x0d).dnr();
    pub const FEATURE_NOT_CHANGEABLE: Status = Status::specific(0x0e).dnr();
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::specific(0x80).dnr();
    pub const CONNECT_CONTROLLER_BUSY: Status = Status::specific(0x81);
    pub const CONNECT_INVALID_PARAMETERS: Status = Status::specific(0x82).dnr();
    pub const CONNECT_INVALID_HOST: Status = Status::specific(0x84).dnr();
    /// Fabrics: the queue pair must authenticate first (SPDK sets no DNR).
    pub const AUTH_REQUIRED: Status = Status::specific(0x91);
    pub const WRITE_FAULT: Status = Status::media(0x80);
    pub const UNRECOVERED_READ_ERROR: Status = Status::media(0x81);

    /// A generic status code.
    pub const fn generic(sc: u8) -> Status {
        Status {
            sct: sct::GENERIC,
            sc,
            dnr: false,
        }
    }

    /// A command-specific status code.
    pub const fn specific(sc: u8) -> Status {
        Status {
            sct: sct::COMMAND_SPECIFIC,
            sc,
            dnr: false,
        }
    }

    /// A media and data integrity error.
    pub const fn media(sc: u8) -> Status {
        Status {
            sct: sct::MEDIA,
            sc,
            dnr: false,
        }
    }

    /// The same status with Do Not Retry set.
    pub const fn dnr(self) -> Status {
        Status { dnr: true, ..self }
    }

    /// True for success.
    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The status field of a CQE (bits 15:1; the phase bit is 0 on fabrics).
    pub fn to_field(self) -> u16 {
        ((self.sc as u16) << 1) | ((self.sct as u16 & 7) << 9) | ((self.dnr as u16) << 15)
    }

    /// The status of a CQE's status field.
    pub fn from_field(f: u16) -> Status {
        Status {
            sc: (f >> 1) as u8,
            sct: ((f >> 9) & 7) as u8,
            dnr: f & 0x8000 != 0,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sct {:#x} sc {:#04x}", self.sct, self.sc)?;
        if self.dnr {
            f.write_str(" dnr")?;
        }
        Ok(())
    }
}

/// SGL descriptor type bytes (type << 4 | subtype) NVMe/TCP uses.
pub mod sgl {
    /// Data block, offset: data is in the capsule at `address` bytes in.
    pub const IN_CAPSULE: u8 = 0x01;
    /// Transport data block, transport specific: data moves by R2T/H2CData or C2HData.
    pub const TRANSPORT: u8 = 0x5a;
}

/// The SGL descriptor of an SQE (bytes 24..40).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SglDesc {
    pub address: u64,
    pub length: u32,
    pub kind: u8,
}

/// A submission queue entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u8; 64]);

impl std::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqe")
            .field("opcode", &format_args!("{:#04x}", self.opcode()))
            .field("cid", &self.cid())
            .field("nsid", &self.nsid())
            .field("cdw10", &format_args!("{:#x}", self.cdw(10)))
            .finish()
    }
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

impl Sqe {
    /// A zeroed SQE with `opcode` and `cid`, SGL data transfer selected (PSDT 01b).
    pub fn new(opcode: u8, cid: u16) -> Sqe {
        let mut s = Sqe([0; 64]);
        s.0[0] = opcode;
        s.0[1] = 0x40;
        s.set_cid(cid);
        s
    }
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn cid(&self) -> u16 {
        le16(&self.0, 2)
    }
    pub fn set_cid(&mut self, cid: u16) {
        self.0[2..4].copy_from_slice(&cid.to_le_bytes());
    }
    pub fn nsid(&self) -> u32 {
        le32(&self.0, 4)
    }
    pub fn set_nsid(&mut self, nsid: u32) {
        self.0[4..8].copy_from_slice(&nsid.to_le_bytes());
    }
    /// Fabrics command type (byte 4 of a fabrics command).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
    /// Command dword `n` (2..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        le32(&self.0, n * 4)
    }
    pub fn set_cdw(&mut self, n: usize, v: u32) {
        self.0[n * 4..n * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn sgl(&self) -> SglDesc {
        SglDesc {
            address: le64(&self.0, 24),
            length: le32(&self.0, 32),
            kind: self.0[39],
        }
    }
    pub fn set_sgl(&mut self, d: SglDesc) {
        self.0[24..32].copy_from_slice(&d.address.to_le_bytes());
        self.0[32..36].copy_from_slice(&d.length.to_le_bytes());
        self.0[36..39].fill(0);
        self.0[39] = d.kind;
    }

    /// Direction of the data: bits 1:0 of the opcode (of `fctype` for fabrics).
    pub fn data_direction(&self) -> DataDirection {
        let bits = if self.opcode() == OPC_FABRICS {
            self.fctype()
        } else {
            self.opcode()
        } & 3;
        match bits {
            0 => DataDirection::None,
            1 => DataDirection::HostToController,
            2 => DataDirection::ControllerToHost,
            _ => DataDirection::Bidirectional,
        }
    }
}

/// Which way a command moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    None,
    HostToController,
    ControllerToHost,
    Bidirectional,
}

/// A completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: u16,
}

impl Cqe {
    /// A completion of `cid` with `status`.
    pub fn new(cid: u16, status: Status) -> Cqe {
        Cqe {
            cid,
            status: status.to_field(),
            ..Cqe::default()
        }
    }
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&self.status.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8; 16]) -> Cqe {
        Cqe {
            dw0: le32(b, 0),
            dw1: le32(b, 4),
            sqhd: le16(b, 8),
            sqid: le16(b, 10),
            cid: le16(b, 12),
            status: le16(b, 14),
        }
    }
    pub fn status(&self) -> Status {
        Status::from_field(self.status)
    }
}

/// The commands tessera serves, decoded from an SQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    // Fabrics.
    Connect {
        recfmt: u16,
        qid: u16,
        /// Submission queue size, 0's based.
        sqsize: u16,
        cattr: u8,
        kato_ms: u32,
    },
    PropertyGet {
        eight_bytes: bool,
        offset: u32,
    },
    PropertySet {
        eight_bytes: bool,
        offset: u32,
        value: u64,
    },
    Disconnect,
    /// AUTH_Send: an authentication message from the host.
    AuthSend(super::auth::AuthCmd),
    /// AUTH_Receive: the host asks for the next authentication message.
    AuthRecv(super::auth::AuthCmd),
    // Admin.
    Identify {
        cns: u8,
        cntid: u16,
        nsid: u32,
    },
    GetLogPage {
        lid: u8,
        lsp: u8,
        /// Retain Asynchronous Event.
        rae: bool,
        /// Length in bytes.
        len_bytes: u64,
        offset_bytes: u64,
        nsid: u32,
    },
    GetFeatures {
        fid: u8,
        sel: u8,
        cdw11: u32,
    },
    SetFeatures {
        fid: u8,
        save: bool,
        cdw11: u32,
    },
    KeepAlive,
    AsyncEventRequest,
    Abort {
        sqid: u16,
        cid: u16,
    },
    // NVM I/O.
    Read {
        nsid: u32,
        slba: u64,
        num_blocks: u32,
        fua: bool,
    },
    Write {
        nsid: u32,
        slba: u64,
        num_blocks: u32,
        fua: bool,
    },
    Flush {
        nsid: u32,
    },
    WriteZeroes {
        nsid: u32,
        slba: u64,
        num_blocks: u32,
        /// Deallocate.
        deac: bool,
    },
    DatasetManagement {
        nsid: u32,
        /// Number of 16-byte ranges.
        num_ranges: u32,
        deallocate: bool,
    },
}

/// The queue a command arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    Admin,
    Io,
}

/// Decodes a command. Unknown opcodes give `INVALID_OPCODE`; fabrics commands other
/// than Connect are admin-queue only.
pub fn decode_command(sqe: &Sqe, q: QueueKind) -> Result<Command, Status> {
    let op = sqe.opcode();
    if op == OPC_FABRICS {
        let ft = sqe.fctype();
        return match ft {
            fctype::CONNECT => Ok(Command::Connect {
                recfmt: le16(&sqe.0, 40),
                qid: le16(&sqe.0, 42),
                sqsize: le16(&sqe.0, 44),
                cattr: sqe.0[46],
                kato_ms: le32(&sqe.0, 48),
            }),
            fctype::PROPERTY_GET | fctype::PROPERTY_SET if q == QueueKind::Admin => {
                let attrib = sqe.0[40] & 7;
                if attrib > 1 {
                    return Err(Status::INVALID_FIELD);
                }
                let offset = le32(&sqe.0, 44);
                if ft == fctype::PROPERTY_GET {
                    Ok(Command::PropertyGet {
                        eight_bytes: attrib == 1,
                        offset,
                    })
                } else {
                    Ok(Command::PropertySet {
                        eight_bytes: attrib == 1,
                        offset,
                        value: le64(&sqe.0, 48),
                    })
                }
            }
            fctype::DISCONNECT => Ok(Command::Disconnect),
            fctype::AUTH_SEND | fctype::AUTH_RECV => {
                let c = super::auth::AuthCmd {
                    spsp0: sqe.0[41],
                    spsp1: sqe.0[42],
                    secp: sqe.0[43],
                    len: le32(&sqe.0, 44),
                };
                Ok(if ft == fctype::AUTH_SEND {
                    Command::AuthSend(c)
                } else {
                    Command::AuthRecv(c)
                })
            }
            _ => Err(Status::INVALID_OPCODE),
        };
    }
    match q {
        QueueKind::Admin => decode_admin(sqe),
        QueueKind::Io => decode_io(sqe),
    }
}

fn decode_admin(sqe: &Sqe) -> Result<Command, Status> {
    let c10 = sqe.cdw(10);
    let c11 = sqe.cdw(11);
    Ok(match sqe.opcode() {
        admin_opc::IDENTIFY => Command::Identify {
            cns: c10 as u8,
            cntid: (c10 >> 16) as u16,
            nsid: sqe.nsid(),
        },
        admin_opc::GET_LOG_PAGE => {
            let numdl = (c10 >> 16) as u64;
            let numdu = (c11 & 0xffff) as u64;
            let dwords = ((numdu << 16) | numdl) + 1;
            Command::GetLogPage {
                lid: c10 as u8,
                lsp: ((c10 >> 8) & 0x7f) as u8,
                rae: c10 & (1 << 15) != 0,
                len_bytes: dwords * 4,
                offset_bytes: (sqe.cdw(13) as u64) << 32 | sqe.cdw(12) as u64,
                nsid: sqe.nsid(),
            }
        }
        admin_opc::GET_FEATURES => Command::GetFeatures {
            fid: c10 as u8,
            sel: ((c10 >> 8) & 7) as u8,
            cdw11: c11,
        },
        admin_opc::SET_FEATURES => Command::SetFeatures {
            fid: c10 as u8,
            save: c10 & (1 << 31) != 0,
            cdw11: c11,
        },
        admin_opc::KEEP_ALIVE => Command::KeepAlive,
        admin_opc::ASYNC_EVENT_REQUEST => Command::AsyncEventRequest,
        admin_opc::ABORT => Command::Abort {
            sqid: c10 as u16,
            cid: (c10 >> 16) as u16,
        },
        _ => return Err(Status::INVALID_OPCODE),
    })
}

fn decode_io(sqe: &Sqe) -> Result<Command, Status> {
    let nsid = sqe.nsid();
    let slba = (sqe.cdw(11) as u64) << 32 | sqe.cdw(10) as u64;
    let c12 = sqe.cdw(12);
    // NLB is 0's based: up to 65536 blocks.
    let num_blocks = (c12 & 0xffff) + 1;
    let fua = c12 & (1 << 30) != 0;
    Ok(match sqe.opcode() {
        io_opc::READ => Command::Read {
            nsid,
            slba,
            num_blocks,
            fua,
        },
        io_opc::WRITE => Command::Write {
            nsid,
            slba,
            num_blocks,
            fua,
        },
        io_opc::FLUSH => Command::Flush { nsid },
        io_opc::WRITE_ZEROES => Command::WriteZeroes {
            nsid,
            slba,
            num_blocks,
            deac: c12 & (1 << 25) != 0,
        },
        io_opc::DATASET_MANAGEMENT => Command::DatasetManagement {
            nsid,
            num_ranges: (sqe.cdw(10) & 0xff) + 1,
            deallocate: sqe.cdw(11) & (1 << 2) != 0,
        },
        _ => return Err(Status::INVALID_OPCODE),
    })
}

/// One range of a Dataset Management command (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsmRange {
    pub attributes: u32,
    pub num_blocks: u32,
    pub slba: u64,
}

/// Decodes the ranges of a Dataset Management command's data (whole ranges only).
pub fn decode_dsm_ranges(data: &[u8]) -> impl Iterator<Item = DsmRange> + '_ {
    data.chunks_exact(16).map(|r| DsmRange {
        attributes: le32(r, 0),
        num_blocks: le32(r, 4),
        slba: le64(r, 8),
    })
}

/// Encodes a Dataset Management range.
pub fn encode_dsm_range(r: &DsmRange) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&r.attributes.to_le_bytes());
    b[4..8].copy_from_slice(&r.num_blocks.to_le_bytes());
    b[8..16].copy_from_slice(&r.slba.to_le_bytes());
    b
}

/// The Connect command's data (1024 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

/// Byte offsets in the Connect data, for Connect Invalid Parameters.
pub mod connect_data_offset {
    pub const CNTLID: u16 = 16;
    pub const SUBNQN: u16 = 256;
    pub const HOSTNQN: u16 = 512;
}

/// Byte offsets in the Connect SQE, for Connect Invalid Parameters.
pub mod connect_cmd_offset {
    pub const QID: u16 = 42;
    pub const SQSIZE: u16 = 44;
    pub const CATTR: u16 = 46;
    pub const KATO: u16 = 48;
}

/// The well-known NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Connect attributes: the host disabled SQ flow control.
pub const CATTR_DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;

/// Why Connect data is bad: the offset of the bad field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadConnectData {
    pub offset: u16,
}

/// A NUL-terminated UTF-8 NQN of at most 223 bytes; empty only if `may_be_empty`.
fn nqn_field(b: &[u8], may_be_empty: bool) -> Option<String> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = std::str::from_utf8(&b[..end]).ok()?;
    ((may_be_empty || !s.is_empty()) && s.len() <= 223).then(|| s.to_string())
}

impl ConnectData {
    /// Decodes and checks the NQNs (NUL-terminated UTF-8, at most 223 bytes). The
    /// subsystem NQN must be there; the host NQN may be empty: SPDK's host tools send
    /// none unless told one, and SPDK's target lets such a host into a subsystem that
    /// allows any host (a subsystem with a host list refuses it: Connect Invalid Host).
    pub fn decode(b: &[u8]) -> Result<ConnectData, BadConnectData> {
        if b.len() < 1024 {
            return Err(BadConnectData { offset: 0 });
        }
        let subnqn = nqn_field(&b[256..512], false).ok_or(BadConnectData {
            offset: connect_data_offset::SUBNQN,
        })?;
        let hostnqn = nqn_field(&b[512..768], true).ok_or(BadConnectData {
            offset: connect_data_offset::HOSTNQN,
        })?;
        let mut hostid = [0u8; 16];
        hostid.copy_from_slice(&b[..16]);
        Ok(ConnectData {
            hostid,
            cntlid: le16(b, 16),
            subnqn,
            hostnqn,
        })
    }

    /// The 1024 bytes.
    pub fn encode(&self) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        b[..16].copy_from_slice(&self.hostid);
        b[16..18].copy_from_slice(&self.cntlid.to_le_bytes());
        let sn = self.subnqn.as_bytes();
        let hn = self.hostnqn.as_bytes();
        b[256..256 + sn.len().min(255)].copy_from_slice(&sn[..sn.len().min(255)]);
        b[512..512 + hn.len().min(255)].copy_from_slice(&hn[..hn.len().min(255)]);
        b
    }
}

// ---- Builders of the commands the initiator sends.

/// Connect for queue `qid` with `data_len` = 1024 bytes of in-capsule data.
pub fn connect_sqe(cid: u16, qid: u16, sqsize: u16, cattr: u8, kato_ms: u32) -> Sqe {
    let mut s = Sqe::new(OPC_FABRICS, cid);
    s.0[4] = fctype::CONNECT;
    s.set_sgl(SglDesc {
        address: 0,
        length: 1024,
        kind: sgl::IN_CAPSULE,
    });
    s.0[40..42].copy_from_slice(&0u16.to_le_bytes());
    s.0[42..44].copy_from_slice(&qid.to_le_bytes());
    s.0[44..46].copy_from_slice(&sqsize.to_le_bytes());
    s.0[46] = cattr;
    s.0[48..52].copy_from_slice(&kato_ms.to_le_bytes());
    s
}

/// Property Get.
pub fn property_get_sqe(cid: u16, offset: u32, eight_bytes: bool) -> Sqe {
    let mut s = Sqe::new(OPC_FABRICS, cid);
    s.0[4] = fctype::PROPERTY_GET;
    s.0[40] = eight_bytes as u8;
    s.0[44..48].copy_from_slice(&offset.to_le_bytes());
    s
}

/// Property Set.
pub fn property_set_sqe(cid: u16, offset: u32, value: u64, eight_bytes: bool) -> Sqe {
    let mut s = Sqe::new(OPC_FABRICS, cid);
    s.0[4] = fctype::PROPERTY_SET;
    s.0[40] = eight_bytes as u8;
    s.0[44..48].copy_from_slice(&offset.to_le_bytes());
    s.0[48..56].copy_from_slice(&value.to_le_bytes());
    s
}

/// AUTH_Send (`send`) or AUTH_Receive of `len` bytes, NVMe's security protocol.
pub fn auth_sqe(cid: u16, send: bool, len: u32) -> Sqe {
    let mut s = Sqe::new(OPC_FABRICS, cid);
    s.0[4] = if send {
        fctype::AUTH_SEND
    } else {
        fctype::AUTH_RECV
    };
    s.0[41] = super::auth::SPSP;
    s.0[42] = super::auth::SPSP;
    s.0[43] = super::auth::SECP_NVME;
    s.0[44..48].copy_from_slice(&len.to_le_bytes());
    s
}

/// A command whose data moves by C2HData / R2T (`len` bytes, transport SGL).
pub fn with_transport_sgl(mut s: Sqe, len: u32) -> Sqe {
    s.set_sgl(SglDesc {
        address: 0,
        length: len,
        kind: sgl::TRANSPORT,
    });
    s
}

/// Identify.
pub fn identify_sqe(cid: u16, cns: u8, nsid: u32) -> Sqe {
    let mut s = Sqe::new(admin_opc::IDENTIFY, cid);
    s.set_nsid(nsid);
    s.set_cdw(10, cns as u32);
    with_transport_sgl(s, 4096)
}

/// Get Log Page of `len_bytes` (a multiple of 4) at `offset_bytes`.
pub fn get_log_page_sqe(cid: u16, lid: u8, nsid: u32, len_bytes: u32, offset_bytes: u64) -> Sqe {
    let mut s = Sqe::new(admin_opc::GET_LOG_PAGE, cid);
    s.set_nsid(nsid);
    let numd = len_bytes / 4 - 1;
    s.set_cdw(10, lid as u32 | (numd & 0xffff) << 16);
    s.set_cdw(11, numd >> 16);
    s.set_cdw(12, offset_bytes as u32);
    s.set_cdw(13, (offset_bytes >> 32) as u32);
    with_transport_sgl(s, len_bytes)
}

/// Set Features.
pub fn set_features_sqe(cid: u16, fid: u8, cdw11: u32) -> Sqe {
    let mut s = Sqe::new(admin_opc::SET_FEATURES, cid);
    s.set_cdw(10, fid as u32);
    s.set_cdw(11, cdw11);
    s
}

/// Get Features.
pub fn get_features_sqe(cid: u16, fid: u8) -> Sqe {
    let mut s = Sqe::new(admin_opc::GET_FEATURES, cid);
    s.set_cdw(10, fid as u32);
    s
}

/// A read, write, or write zeroes of `num_blocks` (1..=65536) at `slba`.
pub fn rw_sqe(cid: u16, opc: u8, nsid: u32, slba: u64, num_blocks: u32, fua: bool) -> Sqe {
    let mut s = Sqe::new(opc, cid);
    s.set_nsid(nsid);
    s.set_cdw(10, slba as u32);
    s.set_cdw(11, (slba >> 32) as u32);
    s.set_cdw(12, (num_blocks - 1) | (fua as u32) << 30);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_round_trip() {
        for st in [
            Status::SUCCESS,
            Status::LBA_OUT_OF_RANGE,
            Status::NS_WRITE_PROTECTED,
            Status::CONNECT_INVALID_HOST,
            Status::UNRECOVERED_READ_ERROR,
        ] {
            assert_eq!(Status::from_field(st.to_field()), st);
        }
        // LBA out of range: SCT 0, SC 0x80, DNR.
        assert_eq!(Status::LBA_OUT_OF_RANGE.to_field(), 0x8100);
    }

    #[test]
    fn io_commands_decode() {
        let s = rw_sqe(5, io_opc::WRITE, 1, 0x1_0000_0002, 8, true);
        assert_eq!(
            decode_command(&s, QueueKind::Io),
            Ok(Command::Write {
                nsid: 1,
                slba: 0x1_0000_0002,
                num_blocks: 8,
                fua: true
            })
        );
        assert_eq!(s.data_direction(), DataDirection::HostToController);
        let s = Sqe::new(0x99, 1);
        assert_eq!(
            decode_command(&s, QueueKind::Io),
            Err(Status::INVALID_OPCODE)
        );
        // Admin commands are not I/O commands.
        let s = identify_sqe(1, cns::CONTROLLER, 0);
        assert_eq!(
            decode_command(&s, QueueKind::Io),
            Err(Status::INVALID_OPCODE)
        );
        assert_eq!(s.data_direction(), DataDirection::ControllerToHost);
    }

    #[test]
    fn fabrics_commands_decode() {
        let s = connect_sqe(1, 3, 127, CATTR_DISABLE_SQ_FLOW_CONTROL, 5000);
        assert_eq!(
            decode_command(&s, QueueKind::Admin),
            Ok(Command::Connect {
                recfmt: 0,
                qid: 3,
                sqsize: 127,
                cattr: 4,
                kato_ms: 5000
            })
        );
        assert_eq!(s.data_direction(), DataDirection::HostToController);
        let s = property_set_sqe(2, prop::CC, 0x460001, false);
        assert_eq!(
            decode_command(&s, QueueKind::Admin),
            Ok(Command::PropertySet {
                eight_bytes: false,
                offset: prop::CC,
                value: 0x460001
            })
        );
        // Property commands only on the admin queue.
        assert_eq!(
            decode_command(&s, QueueKind::Io),
            Err(Status::INVALID_OPCODE)
        );
        let s = get_log_page_sqe(1, lid::CHANGED_NS_LIST, 0xffff_ffff, 4096, 0);
        assert!(matches!(
            decode_command(&s, QueueKind::Admin),
            Ok(Command::GetLogPage {
                lid: 4,
                len_bytes: 4096,
                ..
            })
        ));
    }

    #[test]
    fn connect_data_round_trips_and_rejects_unterminated_nqns() {
        let d = ConnectData {
            hostid: [7; 16],
            cntlid: 0xffff,
            subnqn: "nqn.2016-06.io.spdk:cnode1".into(),
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1".into(),
        };
        let b = d.encode();
        assert_eq!(ConnectData::decode(&b), Ok(d));
        let mut b2 = b;
        b2[256..512].fill(b'a');
        assert_eq!(
            ConnectData::decode(&b2),
            Err(BadConnectData { offset: 256 })
        );
    }

    #[test]
    fn connect_data_may_omit_the_host_nqn_but_not_the_subsystem_nqn() {
        let d = ConnectData {
            hostid: [0; 16],
            cntlid: 0xffff,
            subnqn: "nqn.2016-06.io.spdk:cnode1".into(),
            hostnqn: String::new(),
        };
        assert_eq!(ConnectData::decode(&d.encode()), Ok(d.clone()));
        let no_sub = ConnectData {
            subnqn: String::new(),
            ..d
        };
        assert_eq!(
            ConnectData::decode(&no_sub.encode()),
            Err(BadConnectData { offset: 256 })
        );
        let mut long_host = no_sub.encode();
        long_host[256..260].copy_from_slice(b"nqn\0");
        long_host[512..512 + 224].fill(b'h');
        assert_eq!(
            ConnectData::decode(&long_host),
            Err(BadConnectData { offset: 512 })
        );
    }
}
