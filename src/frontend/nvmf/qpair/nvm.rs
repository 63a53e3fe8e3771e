//! NVM I/O commands of a queue pair: Read, Write, Flush, Write Zeroes and Dataset
//! Management become bdev requests on this core's channels; their completions become
//! NVMe statuses (and SMART counters, and error log entries on the admin core).

use super::{QpInner, Req, ReqState, log_io_error};
use crate::bdev::{BdevIo, Channel, IoKind, IoStatus};
use crate::frontend::nvmf::ctrlr::Role;
use crate::frontend::nvmf::subsystem::QpairStats;
use crate::nvme::spec::{Command, DataDirection, Status, decode_dsm_ranges};
use smallvec::SmallVec;

impl QpInner {
    pub(super) fn execute_io(&mut self, slot: usize, cmd: Command) {
        let Some(Role::Io(io)) = &self.role else {
            return;
        };
        // Borrowed, not cloned: no shared reference count touched per command.
        self.ns.refresh(&io.shared.subsystem);
        let sink = self.sink.clone();
        let tag = slot as u64;
        let req = &mut self.slots[slot];
        let fail = |req: &mut Req, st: Status| {
            req.status = st;
        };
        match cmd {
            Command::Read {
                nsid,
                slba,
                num_blocks,
                fua,
            }
            | Command::Write {
                nsid,
                slba,
                num_blocks,
                fua,
            } => {
                let read = matches!(cmd, Command::Read { .. });
                let Some(ns) = self.ns.get(nsid) else {
                    fail(req, Status::INVALID_NAMESPACE);
                    return self.complete(slot);
                };
                let bytes = num_blocks as u64 * ns.block_size as u64;
                let want_dir = if read {
                    DataDirection::ControllerToHost
                } else {
                    DataDirection::HostToController
                };
                if bytes != req.xfer_len as u64 || req.dir != want_dir {
                    fail(req, Status::SGL_DATA_LENGTH_INVALID);
                    return self.complete(slot);
                }
                let Some(buf) = req.buf.take() else {
                    fail(req, Status::INTERNAL_ERROR);
                    return self.complete(slot);
                };
                let io = if read {
                    req.c2h_len = req.xfer_len;
                    BdevIo::read(slba, num_blocks as u64, buf)
                } else {
                    BdevIo::write(slba, num_blocks as u64, buf).with_fua(fua)
                };
                req.pending = 1;
                ns.chan.submit(io.on_complete(sink, tag));
            }
            Command::Flush { nsid: 0xffff_ffff } => {
                let chans: SmallVec<[Channel; 4]> = self
                    .ns
                    .by_nsid
                    .iter()
                    .flatten()
                    .map(|n| n.chan.clone())
                    .collect();
                if chans.is_empty() {
                    return self.complete(slot);
                }
                req.pending = chans.len() as u32;
                for c in chans {
                    c.submit(BdevIo::flush().on_complete(sink.clone(), tag));
                }
            }
            Command::Flush { nsid } => {
                let Some(ns) = self.ns.get(nsid) else {
                    fail(req, Status::INVALID_NAMESPACE);
                    return self.complete(slot);
                };
                req.pending = 1;
                ns.chan.submit(BdevIo::flush().on_complete(sink, tag));
            }
            Command::WriteZeroes {
                nsid,
                slba,
                num_blocks,
                ..
            } => {
                let Some(ns) = self.ns.get(nsid) else {
                    fail(req, Status::INVALID_NAMESPACE);
                    return self.complete(slot);
                };
                req.pending = 1;
                ns.chan
                    .submit(BdevIo::write_zeroes(slba, num_blocks as u64).on_complete(sink, tag));
            }
            Command::DatasetManagement {
                nsid,
                num_ranges,
                deallocate,
            } => {
                let Some(ns) = self.ns.get(nsid) else {
                    fail(req, Status::INVALID_NAMESPACE);
                    return self.complete(slot);
                };
                if (req.xfer_len as u64) < num_ranges as u64 * 16 {
                    fail(req, Status::SGL_DATA_LENGTH_INVALID);
                    return self.complete(slot);
                }
                // Deallocation is advisory: without unmap support it succeeds as a no-op.
                if !deallocate || !ns.ns.bdev.supports(IoKind::Unmap) {
                    return self.complete(slot);
                }
                let data = &req.data_mut()[..num_ranges as usize * 16];
                let ranges: SmallVec<[(u64, u64); 8]> = decode_dsm_ranges(data)
                    .filter(|r| r.num_blocks > 0)
                    .map(|r| (r.slba, r.num_blocks as u64))
                    .collect();
                if ranges.is_empty() {
                    return self.complete(slot);
                }
                req.pending = ranges.len() as u32;
                for (slba, n) in ranges {
                    ns.chan
                        .submit(BdevIo::unmap(slba, n).on_complete(sink.clone(), tag));
                }
            }
            _ => {
                fail(req, Status::INVALID_OPCODE);
                self.complete(slot);
            }
        }
    }

    /// A bdev request finished.
    pub(super) fn io_done(&mut self, mut io: BdevIo, status: IoStatus) {
        let slot = io.tag as usize;
        let Some(req) = self.slots.get_mut(slot) else {
            return;
        };
        if req.state != ReqState::Executing || req.pending == 0 {
            return;
        }
        if let Some(b) = io.take_buf() {
            req.buf = Some(b);
        }
        let read = io.kind == IoKind::Read;
        if !status.is_success() {
            req.status = req.status_worst(status.to_nvme(read));
        }
        req.pending -= 1;
        if req.pending > 0 {
            return;
        }
        if let Some(Role::Io(r)) = &self.role {
            let s: &QpairStats = &r.stats;
            let bytes = req.xfer_len as u64;
            if req.status.is_success() {
                match io.kind {
                    IoKind::Read => {
                        QpairStats::bump(&s.read_commands, 1);
                        QpairStats::bump(&s.read_bytes, bytes);
                    }
                    IoKind::Write => {
                        QpairStats::bump(&s.write_commands, 1);
                        QpairStats::bump(&s.write_bytes, bytes);
                    }
                    _ => {}
                }
            } else {
                if status == IoStatus::MediaError {
                    QpairStats::bump(&s.media_errors, 1);
                }
                let (admin_id, core) = (r.shared.admin_qpair_id, r.shared.core);
                let (qid, cid, st, nsid) = (self.qid, req.sqe.cid(), req.status, req.sqe.nsid());
                let lba = io.offset_blocks;
                let _ = self.target.cores.send(core, move || {
                    log_io_error(admin_id, qid, cid, st, nsid, lba)
                });
            }
        }
        self.complete(slot);
    }
}
