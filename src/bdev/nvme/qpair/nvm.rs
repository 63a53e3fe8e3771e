//! Bdev requests as NVM commands: a request is split into commands of at most the
//! controller's maximum transfer (MDTS), write zeroes and deallocate ranges at their
//! field limits, and completes with the worst status of its parts once every part is
//! back.

use super::{Data, HostError, HostQpair, Inner, Owner, Pending, Phase};
use crate::bdev::{BdevIo, Deferred, IoKind, IoStatus};
use crate::nvme::spec::{self, Cqe, DsmRange, Sqe, io_opc};
use smallvec::SmallVec;

/// A bdev request in flight, possibly split into several commands.
pub(super) struct Parent {
    io: BdevIo,
    remaining: u32,
    status: IoStatus,
}

impl HostQpair {
    /// Submits a bdev request for namespace `nsid`, split into commands of at most
    /// `max_blocks` blocks. Completes it (later) with its status.
    pub(crate) fn submit_io(&self, io: BdevIo, nsid: u32, block_size: u32, max_blocks: u64) {
        let mut st = self.inner.borrow_mut();
        if matches!(st.phase, Phase::Failed(_)) {
            drop(st);
            Deferred::current().complete(io, IoStatus::Aborted);
            return;
        }
        let kind = io.kind;
        let (off, n) = (io.offset_blocks, io.num_blocks);
        let fua = io.flags.fua;
        // Per-command block limits: data commands by MDTS, write zeroes by its 16-bit
        // count, DSM ranges by their 32-bit count.
        let per = match kind {
            IoKind::Read | IoKind::Write => max_blocks.max(1),
            IoKind::WriteZeroes => 65536,
            IoKind::Unmap => u32::MAX as u64,
            IoKind::Flush => u64::MAX,
        };
        let parts = if kind == IoKind::Flush {
            1
        } else {
            n.div_ceil(per).max(1)
        };
        let parent = st.parents.insert(Parent {
            io,
            remaining: parts as u32,
            status: IoStatus::Success,
        });
        for i in 0..parts {
            let slba = off + i * per;
            let nb = if kind == IoKind::Flush {
                0
            } else {
                per.min(off + n - slba)
            };
            let (sqe, data) = {
                let pio = &st.parents[parent].io;
                let bs = block_size as u64;
                match kind {
                    IoKind::Read | IoKind::Write => {
                        let opc = if kind == IoKind::Read {
                            io_opc::READ
                        } else {
                            io_opc::WRITE
                        };
                        let iovs: SmallVec<[libc::iovec; 4]> = pio
                            .sub_iovs(((slba - off) * bs) as usize, (nb * bs) as usize)
                            .into_iter()
                            .collect();
                        let len = (nb * bs) as u32;
                        let sqe = spec::rw_sqe(0, opc, nsid, slba, nb as u32, fua);
                        let data = if kind == IoKind::Read {
                            Data::In(iovs, len)
                        } else {
                            Data::Out(iovs, len)
                        };
                        (sqe, data)
                    }
                    IoKind::Flush => {
                        let mut s = Sqe::new(io_opc::FLUSH, 0);
                        s.set_nsid(nsid);
                        (s, Data::None)
                    }
                    IoKind::WriteZeroes => (
                        spec::rw_sqe(0, io_opc::WRITE_ZEROES, nsid, slba, nb as u32, false),
                        Data::None,
                    ),
                    IoKind::Unmap => {
                        let mut s = Sqe::new(io_opc::DATASET_MANAGEMENT, 0);
                        s.set_nsid(nsid);
                        s.set_cdw(10, 0); // one range
                        s.set_cdw(11, 1 << 2); // deallocate
                        (
                            s,
                            Data::Dsm(DsmRange {
                                attributes: 0,
                                num_blocks: nb as u32,
                                slba,
                            }),
                        )
                    }
                }
            };
            st.backlog.push_back(Pending {
                sqe,
                data,
                owner: Owner::Io { parent },
            });
        }
        st.pump();
        drop(st);
        self.notify();
    }
}

impl Inner {
    /// One part of bdev request `parent` completed (`r`); the request completes with the
    /// last one.
    pub(super) fn part_done(&mut self, parent: usize, r: &Result<Cqe, HostError>) {
        let st = match r {
            Ok(cqe) => IoStatus::from_nvme(cqe.status()),
            Err(_) => IoStatus::Aborted,
        };
        let Some(p) = self.parents.get_mut(parent) else {
            return;
        };
        p.status = p.status.worst(st);
        p.remaining -= 1;
        if p.remaining == 0 {
            let p = self.parents.remove(parent);
            self.done.push((p.io, p.status));
        }
    }
}
