//! The receive path of a host queue pair: PDU headers parsed from the receive buffer,
//! ICResp (then Connect), responses matched to their slots, C2HData copied into the
//! command's memory (digest checked), R2T answered with H2CData. A protocol violation
//! fails the queue pair.
//!
//! # Safety
//! C2HData goes straight into the iovecs of an outstanding command (see the parent
//! module's Safety section); its offset and length are checked against the command's
//! length first.

use super::{HostError, Inner, Phase, SlotState};
use crate::nvme::pdu::{self, Decoded, Frame, Header, Limits, Receiver};
use crate::nvme::spec::Cqe;

/// What the receive side is doing.
#[derive(Clone, Copy)]
pub(super) enum Rx {
    Header,
    C2H {
        slot: u16,
        off: usize,
        left: usize,
        pad: usize,
        crc: u32,
        digest: bool,
        complete_ok: bool,
    },
}

/// Copies `src` into the memory of `iovs`, starting `skip` bytes in.
///
/// # Safety
/// Every iovec must describe writable memory that nobody else uses meanwhile.
unsafe fn copy_to_iovs(iovs: &[libc::iovec], mut skip: usize, mut src: &[u8]) {
    for v in iovs {
        if src.is_empty() {
            break;
        }
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - skip).min(src.len());
        // SAFETY: the caller guarantees the iovec is valid writable memory; `skip + n`
        // stays within `iov_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), (v.iov_base as *mut u8).add(skip), n);
        }
        src = &src[n..];
        skip = 0;
    }
}

impl Inner {
    fn protocol_error(&mut self, what: String) {
        self.fail(HostError::Protocol(what));
    }

    /// Consumes what the receive buffer holds: whole PDU headers, and C2HData payload
    /// as far as it has arrived.
    pub(super) fn parse(&mut self) {
        loop {
            if matches!(self.phase, Phase::Failed(_)) {
                return;
            }
            match self.rx {
                Rx::Header => {
                    let d = pdu::decode_header(self.recv.data(), Receiver::Host, &self.limits);
                    match d {
                        Ok(Decoded::NeedMore(_)) => return,
                        Err(e) => return self.protocol_error(e.to_string()),
                        Ok(Decoded::Frame(f)) => {
                            self.recv.consume(f.header_len);
                            self.on_header(f);
                        }
                    }
                }
                Rx::C2H {
                    slot,
                    mut off,
                    mut left,
                    mut pad,
                    mut crc,
                    digest,
                    complete_ok,
                } => {
                    let n = pad.min(self.recv.len());
                    self.recv.consume(n);
                    pad -= n;
                    if pad == 0 && left > 0 {
                        let n = left.min(self.recv.len());
                        let src = &self.recv.data()[..n];
                        if digest {
                            crc = pdu::crc32c_append(crc, src);
                        }
                        // SAFETY: the slot is outstanding; its iovecs are the command's
                        // memory, bounds were checked against its length.
                        unsafe { copy_to_iovs(&self.slots[slot as usize].iovs, off, src) };
                        self.recv.consume(n);
                        off += n;
                        left -= n;
                    }
                    if pad > 0 || left > 0 || (digest && self.recv.len() < pdu::DIGEST_LEN) {
                        self.rx = Rx::C2H {
                            slot,
                            off,
                            left,
                            pad,
                            crc,
                            digest,
                            complete_ok,
                        };
                        return;
                    }
                    if digest {
                        let d = self.recv.data();
                        let got = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                        self.recv.consume(pdu::DIGEST_LEN);
                        if got != crc {
                            return self.protocol_error("C2HData data digest mismatch".into());
                        }
                    }
                    self.rx = Rx::Header;
                    let s = &mut self.slots[slot as usize];
                    s.c2h_done = off as u32;
                    if complete_ok {
                        self.finish(slot as usize, Ok(Cqe::default()));
                    }
                }
            }
        }
    }

    fn outstanding(&self, cid: u16) -> bool {
        self.slots
            .get(cid as usize)
            .is_some_and(|s| s.state == SlotState::Outstanding)
    }

    fn on_header(&mut self, f: Frame) {
        match f.header {
            Header::IcResp(r) => {
                if self.phase != Phase::IcSent {
                    return self.protocol_error("unexpected ICResp".into());
                }
                if r.pfv != 0 || r.maxh2cdata < pdu::MIN_MAXH2CDATA || r.cpda > 31 {
                    return self.protocol_error(format!("unacceptable ICResp {r:?}"));
                }
                self.cpda = r.cpda;
                self.maxh2cdata = r.maxh2cdata;
                self.limits = Limits {
                    header_digest: r.header_digest,
                    data_digest: r.data_digest,
                    max_in_capsule_len: 0,
                    max_data_len: u32::MAX,
                };
                self.send_connect();
            }
            _ if self.phase == Phase::IcSent => self.protocol_error("PDU before ICResp".into()),
            Header::C2HTermReq(t) => self.fail(HostError::Terminated {
                fes: t.fes,
                fei: t.fei,
            }),
            Header::CapsuleResp(c) => {
                let cqe = Cqe::decode(&c);
                if !self.outstanding(cqe.cid) {
                    return self
                        .protocol_error(format!("response for unknown command {}", cqe.cid));
                }
                self.finish(cqe.cid as usize, Ok(cqe));
            }
            Header::C2HData(d) => {
                if !self.outstanding(d.cccid) {
                    return self.protocol_error(format!("C2HData for unknown command {}", d.cccid));
                }
                let s = &self.slots[d.cccid as usize];
                if s.out || d.datao != s.c2h_done || d.datao as u64 + d.datal as u64 > s.len as u64
                {
                    return self.protocol_error("C2HData out of range".into());
                }
                let complete_ok = d.last && d.success;
                self.rx = Rx::C2H {
                    slot: d.cccid,
                    off: d.datao as usize,
                    left: f.data_len,
                    pad: f.data_offset - f.header_len,
                    crc: 0,
                    digest: f.data_digest,
                    complete_ok,
                };
            }
            Header::R2T(r) => {
                if !self.outstanding(r.cccid) {
                    return self.protocol_error(format!("R2T for unknown command {}", r.cccid));
                }
                let s = &self.slots[r.cccid as usize];
                if !s.out || r.r2to as u64 + r.r2tl as u64 > s.len as u64 {
                    return self.protocol_error("R2T out of range".into());
                }
                self.send_h2c(r);
            }
            _ => self.protocol_error(format!("unexpected {:?}", f.header.pdu_type())),
        }
    }
}
