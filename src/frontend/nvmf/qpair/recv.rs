//! The receive side of a queue pair: PDU headers checked and dispatched, payloads
//! placed into request buffers (straight from the socket when they are large), digests
//! verified, and commands started once their data is in.

use super::{ADMIN_IN_CAPSULE_LEN, DIRECT_READ_MIN, DataKind, QpInner, ReqState, Rx};
use crate::nvme::pdu::{self, Decoded, Frame, Header, Limits, Receiver, fes};
use crate::nvme::spec::{self, Command, DataDirection, Sqe, Status, decode_command};
use std::io::{self, Read};

impl QpInner {
    /// Reads once from the socket, straight into a request's buffer when a large payload
    /// is due and nothing is buffered, else into the receive buffer. Returns the byte
    /// count and whether the read was short (it left room), which means the socket had
    /// nothing more at that moment.
    pub(super) fn read_some(&mut self, mut sock: impl Read) -> io::Result<(usize, bool)> {
        if let Rx::Data {
            slot,
            off,
            left,
            pad: 0,
            crc,
            digest,
            kind,
            discard: false,
        } = self.rx
            && left >= DIRECT_READ_MIN
            && self.recv.is_empty()
        {
            let req = &mut self.slots[slot as usize];
            let dst = &mut req.data_mut()[off..off + left];
            let n = sock.read(dst)?;
            let crc = if digest {
                pdu::crc32c_append(crc, &dst[..n])
            } else {
                crc
            };
            self.rx = Rx::Data {
                slot,
                off: off + n,
                left: left - n,
                pad: 0,
                crc,
                digest,
                kind,
                discard: false,
            };
            return Ok((n, n < left));
        }
        let n = self.recv.fill(sock)?;
        Ok((n, !self.recv.is_full()))
    }

    /// Parses and runs every complete unit of input in the receive buffer.
    pub(super) fn parse(&mut self) {
        while self.closing.is_none() {
            match self.rx {
                Rx::Header => {
                    let decoded =
                        pdu::decode_header(self.recv.data(), Receiver::Controller, &self.limits);
                    let n = self.recv.len().min(128);
                    match decoded {
                        Ok(Decoded::NeedMore(_)) => return,
                        Err(e) => {
                            self.last_hdr[..n].copy_from_slice(&self.recv.data()[..n]);
                            self.last_hdr_len = n;
                            let (code, fei) = e.fes_fei();
                            self.fatal(code, fei, "invalid PDU header");
                            return;
                        }
                        Ok(Decoded::Frame(f)) => {
                            let hl = f.header_len.min(128);
                            self.last_hdr[..hl].copy_from_slice(&self.recv.data()[..hl]);
                            self.last_hdr_len = hl;
                            self.recv.consume(f.header_len);
                            self.on_header(f);
                        }
                    }
                }
                Rx::Data { .. } => {
                    if !self.advance_data() {
                        return;
                    }
                }
                Rx::TermReq { left } => {
                    let n = left.min(self.recv.len());
                    self.recv.consume(n);
                    if n < left {
                        self.rx = Rx::TermReq { left: left - n };
                        return;
                    }
                    self.closing = Some("host sent H2CTermReq");
                }
            }
        }
    }

    /// Moves buffered payload into place; true when the PDU's data is complete.
    pub(super) fn advance_data(&mut self) -> bool {
        let Rx::Data {
            slot,
            mut off,
            mut left,
            mut pad,
            mut crc,
            digest,
            kind,
            discard,
        } = self.rx
        else {
            return false;
        };
        let save = |s: &mut QpInner, off, left, pad, crc| {
            s.rx = Rx::Data {
                slot,
                off,
                left,
                pad,
                crc,
                digest,
                kind,
                discard,
            };
        };
        if pad > 0 {
            let n = pad.min(self.recv.len());
            self.recv.consume(n);
            pad -= n;
            if pad > 0 {
                save(self, off, left, pad, crc);
                return false;
            }
        }
        if left > 0 {
            let n = left.min(self.recv.len());
            if n > 0 {
                let src = &self.recv.data()[..n];
                if digest {
                    crc = pdu::crc32c_append(crc, src);
                }
                if !discard {
                    self.slots[slot as usize].data_mut()[off..off + n].copy_from_slice(src);
                }
                self.recv.consume(n);
                off += n;
                left -= n;
            }
            if left > 0 {
                save(self, off, left, pad, crc);
                return false;
            }
        }
        let digest_ok = if digest {
            if self.recv.len() < pdu::DIGEST_LEN {
                save(self, off, left, pad, crc);
                return false;
            }
            let d = self.recv.data();
            let got = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            self.recv.consume(pdu::DIGEST_LEN);
            got == crc
        } else {
            true
        };
        self.rx = Rx::Header;
        self.data_done(slot as usize, kind, digest_ok);
        true
    }

    pub(super) fn data_rx(
        &mut self,
        slot: usize,
        f: &Frame,
        off: usize,
        kind: DataKind,
        discard: bool,
    ) {
        self.rx = Rx::Data {
            slot: slot as u16,
            off,
            left: f.data_len,
            pad: f.data_offset - f.header_len,
            crc: 0,
            digest: f.data_digest,
            kind,
            discard,
        };
    }

    pub(super) fn on_header(&mut self, f: Frame) {
        match f.header {
            Header::IcReq(r) => {
                if self.ic_done {
                    return self.fatal(fes::PDU_SEQUENCE_ERROR, 0, "second ICReq");
                }
                if r.pfv != 0 {
                    return self.fatal(fes::UNSUPPORTED_PARAMETER, 8, "unsupported PFV");
                }
                if r.hpda > 31 {
                    return self.fatal(fes::UNSUPPORTED_PARAMETER, 10, "HPDA out of range");
                }
                self.hpda = r.hpda;
                self.limits = Limits {
                    header_digest: r.header_digest,
                    data_digest: r.data_digest,
                    max_in_capsule_len: ADMIN_IN_CAPSULE_LEN.max(self.opts.in_capsule_data_size),
                    max_data_len: self.opts.io_unit_size,
                };
                let resp = pdu::IcResp {
                    pfv: 0,
                    cpda: 0,
                    header_digest: r.header_digest,
                    data_digest: r.data_digest,
                    maxh2cdata: self.opts.io_unit_size,
                };
                self.send.push_bytes(|v| {
                    pdu::put_ic_resp(v, &resp);
                });
                self.ic_done = true;
            }
            _ if !self.ic_done => self.fatal(fes::PDU_SEQUENCE_ERROR, 0, "PDU before ICReq"),
            Header::H2CTermReq(t) => {
                tracing::warn!(
                    qpair = self.id,
                    fes = t.fes,
                    fei = t.fei,
                    "host terminated the connection"
                );
                self.rx = Rx::TermReq { left: f.data_len };
            }
            Header::CapsuleCmd(sqe) => self.on_capsule(Sqe(sqe), &f),
            Header::H2CData(d) => self.on_h2c_data(d, &f),
            _ => self.fatal(fes::INVALID_HEADER_FIELD, 0, "unexpected PDU type"),
        }
    }

    pub(super) fn on_capsule(&mut self, sqe: Sqe, f: &Frame) {
        let Some(slot) = self.alloc_slot() else {
            return self.fatal(
                fes::PDU_SEQUENCE_ERROR,
                0,
                "host exceeded its submission queue size",
            );
        };
        self.sqhd = (self.sqhd + 1) % self.sq_size.max(1);
        let kind = self.queue_kind();
        let connected = self.role.is_some();
        let max_len = self.opts.max_io_size;
        let req = &mut self.slots[slot];
        req.sqe = sqe;
        req.status = Status::SUCCESS;
        req.dw0 = 0;
        req.dw1 = 0;
        req.h2c_done = 0;
        req.c2h_len = 0;
        req.pending = 0;
        req.xfer_len = 0;
        req.dir = sqe.data_direction();
        req.cmd = None;
        match decode_command(&sqe, kind) {
            Ok(c) => {
                let is_connect = matches!(c, Command::Connect { .. });
                if is_connect == connected {
                    req.status = Status::COMMAND_SEQUENCE_ERROR;
                }
                req.cmd = Some(c);
            }
            Err(st) => req.status = st,
        }
        let sgl = sqe.sgl();
        let len = sgl.length;
        if f.data_len > 0 {
            // In-capsule data.
            if req.status.is_success() {
                req.status = if sgl.kind != spec::sgl::IN_CAPSULE {
                    Status::SGL_TYPE_INVALID
                } else if sgl.address != 0 {
                    Status::SGL_OFFSET_INVALID
                } else if len as usize != f.data_len {
                    Status::SGL_DATA_LENGTH_INVALID
                } else if req.dir != DataDirection::HostToController {
                    Status::INVALID_FIELD
                } else {
                    Status::SUCCESS
                };
            }
            let discard = !req.status.is_success();
            if !discard {
                req.prepare_buf(f.data_len);
                req.xfer_len = len;
            }
            self.set_state(slot, ReqState::ReceivingCapsuleData);
            self.data_rx(slot, f, 0, DataKind::InCapsule, discard);
            return;
        }
        if len > 0 && req.status.is_success() {
            req.status = match sgl.kind {
                spec::sgl::TRANSPORT if sgl.address != 0 => Status::SGL_OFFSET_INVALID,
                spec::sgl::TRANSPORT if len > max_len => Status::SGL_DATA_LENGTH_INVALID,
                spec::sgl::TRANSPORT if req.dir == DataDirection::Bidirectional => {
                    Status::INVALID_FIELD
                }
                spec::sgl::TRANSPORT => Status::SUCCESS,
                spec::sgl::IN_CAPSULE => Status::SGL_DATA_LENGTH_INVALID,
                _ => Status::SGL_TYPE_INVALID,
            };
        }
        let failed = !req.status.is_success();
        let h2c = req.dir == DataDirection::HostToController;
        if !failed && len > 0 {
            req.prepare_buf(len as usize);
            req.xfer_len = len;
        }
        self.set_state(slot, ReqState::Executing);
        if failed {
            return self.complete(slot);
        }
        if len > 0 && h2c {
            let r2t = pdu::R2t {
                cccid: sqe.cid(),
                ttag: slot as u16,
                r2to: 0,
                r2tl: len,
            };
            let hd = self.limits.header_digest;
            self.send.push_bytes(|v| {
                pdu::put_r2t(v, &r2t, hd);
            });
            self.set_state(slot, ReqState::TransferringH2C);
            return;
        }
        self.execute(slot);
    }

    pub(super) fn on_h2c_data(&mut self, d: pdu::DataHdr, f: &Frame) {
        let slot = d.ttag as usize;
        let ok = self
            .slots
            .get(slot)
            .is_some_and(|r| r.state == ReqState::TransferringH2C);
        if !ok {
            return self.fatal(
                fes::INVALID_HEADER_FIELD,
                10,
                "H2CData with an unknown transfer tag",
            );
        }
        let req = &self.slots[slot];
        if req.sqe.cid() != d.cccid {
            return self.fatal(fes::INVALID_HEADER_FIELD, 8, "H2CData for another command");
        }
        if d.datao != req.h2c_done || d.datao as u64 + d.datal as u64 > req.xfer_len as u64 {
            return self.fatal(fes::DATA_OUT_OF_RANGE, 0, "H2CData out of the R2T range");
        }
        self.data_rx(
            slot,
            f,
            d.datao as usize,
            DataKind::H2C { len: d.datal },
            false,
        );
    }

    pub(super) fn data_done(&mut self, slot: usize, kind: DataKind, digest_ok: bool) {
        let req = &mut self.slots[slot];
        if !digest_ok {
            tracing::warn!(qpair = self.id, cid = req.sqe.cid(), "data digest mismatch");
            req.status = Status::TRANSIENT_TRANSPORT_ERROR;
        }
        match kind {
            DataKind::InCapsule => {
                self.set_state(slot, ReqState::Executing);
            }
            DataKind::H2C { len } => {
                req.h2c_done += len;
                if req.h2c_done < req.xfer_len {
                    return;
                }
                self.set_state(slot, ReqState::Executing);
            }
        }
        if self.slots[slot].status.is_success() {
            self.execute(slot);
        } else {
            self.complete(slot);
        }
    }
}
