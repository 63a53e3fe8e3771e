//! Validation of a transmission request against the negotiated export: which command it
//! is, whether its flags apply, whether its range lies within the export and respects the
//! advertised payload limit. Pure and total, like the codec; fuzzed with it.
//!
//! The verdict says what the connection does: run the command, answer with an error
//! (after consuming any payload the request carries), or close the connection.
//!
//! The advertised minimum block size is 1 (see `ExportEntry::block_sizes`), so any byte
//! offset and length is valid: a range aligned to the bdev's block size runs as before
//! (in blocks); any other read, write or write-zeroes runs on the blocks that cover it
//! ([`Span`], a read-modify-write for writes), and a trim is narrowed to the whole blocks
//! inside its range (proto.md lets a server trim less than asked; a trim promises no
//! contents).

use super::proto::{
    CMD_BLOCK_STATUS, CMD_DISC, CMD_FLAG_DF, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_PAYLOAD_LEN,
    CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES, HeaderMode,
    NBD_EINVAL, NBD_ENOSPC, NBD_EOVERFLOW, NBD_EPERM, RequestHeader,
};
pub use super::unaligned::Span;

/// What a connection negotiated about its export, as far as requests are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportLimits {
    /// Export size in bytes (a multiple of `block_size`).
    pub size_bytes: u64,
    /// The bdev block size, a power of two (requests not aligned to it are served by
    /// read-modify-write).
    pub block_size: u32,
    /// The advertised maximum payload of a read or write.
    pub max_payload_bytes: u32,
    /// Writes, trims and write-zeroes are refused.
    pub read_only: bool,
    /// `NBD_CMD_TRIM` was advertised.
    pub can_trim: bool,
    /// `NBD_CMD_WRITE_ZEROES` was advertised.
    pub can_write_zeroes: bool,
    /// Structured or extended replies are in use (`NBD_CMD_FLAG_DF` is valid).
    pub chunked: bool,
    /// `base:allocation` was selected for this export (`NBD_CMD_BLOCK_STATUS` is valid).
    pub block_status: bool,
    /// The request header format.
    pub mode: HeaderMode,
}

/// A request that may run, in blocks of the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read {
        offset_blocks: u64,
        num_blocks: u64,
    },
    /// A read not aligned to the block size: read the covering blocks.
    ReadUnaligned(Span),
    Write {
        offset_blocks: u64,
        num_blocks: u64,
        fua: bool,
    },
    /// A write not aligned to the block size: read-modify-write of its edge blocks.
    WriteUnaligned {
        span: Span,
        fua: bool,
    },
    Flush,
    Trim {
        offset_blocks: u64,
        num_blocks: u64,
        fua: bool,
    },
    WriteZeroes {
        offset_blocks: u64,
        num_blocks: u64,
        fua: bool,
        no_hole: bool,
    },
    /// A write-zeroes not aligned to the block size: read-modify-write of its edge
    /// blocks, write-zeroes of the whole blocks inside.
    WriteZeroesUnaligned {
        span: Span,
        fua: bool,
        no_hole: bool,
    },
    /// Block status of the covering blocks, reported for the requested bytes.
    BlockStatus {
        span: Span,
        req_one: bool,
    },
    /// A zero-length read, write, trim or write-zeroes, or a trim with no whole block
    /// inside its range: succeeds without touching the bdev.
    Noop,
    /// `NBD_CMD_DISC`: finish what is in flight, then close.
    Disconnect,
}

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Run it.
    Run(Command),
    /// Answer with this error (after consuming the request's payload, if any).
    Reject { error: u32, reason: &'static str },
    /// The request breaks the protocol in a way that forbids going on: close.
    Close { reason: &'static str },
}

fn reject(error: u32, reason: &'static str) -> Verdict {
    Verdict::Reject { error, reason }
}

/// The flags each command accepts (FUA is valid on every command once advertised).
fn allowed_flags(kind: u16, limits: &ExportLimits) -> u16 {
    let df = if limits.chunked { CMD_FLAG_DF } else { 0 };
    let payload = if limits.mode == HeaderMode::Extended {
        CMD_FLAG_PAYLOAD_LEN
    } else {
        0
    };
    CMD_FLAG_FUA
        | match kind {
            CMD_READ => df,
            CMD_WRITE => payload,
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => 0,
        }
}

/// Validates `h` against `limits`.
pub fn check_request(h: &RequestHeader, limits: &ExportLimits) -> Verdict {
    let payload_len = h.payload_len(limits.mode);
    if limits.mode == HeaderMode::Extended && payload_len > limits.max_payload_bytes as u64 {
        // proto.md: a server SHOULD hard-disconnect on an extended payload larger than
        // its maximum rather than read it.
        return Verdict::Close {
            reason: "extended request payload exceeds the maximum payload size",
        };
    }
    if h.kind == CMD_DISC {
        return Verdict::Run(Command::Disconnect);
    }
    if !matches!(
        h.kind,
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS
    ) {
        return reject(NBD_EINVAL, "unknown or unsupported command");
    }
    if h.flags & !allowed_flags(h.kind, limits) != 0 {
        return reject(NBD_EINVAL, "command flag not valid for this command");
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    match h.kind {
        CMD_FLUSH => {
            return if h.offset_bytes != 0 || h.len_bytes != 0 {
                reject(NBD_EINVAL, "NBD_CMD_FLUSH with nonzero offset or length")
            } else {
                Verdict::Run(Command::Flush)
            };
        }
        CMD_TRIM if !limits.can_trim => {
            return reject(NBD_EINVAL, "NBD_CMD_TRIM was not advertised");
        }
        CMD_WRITE_ZEROES if !limits.can_write_zeroes => {
            return reject(NBD_EINVAL, "NBD_CMD_WRITE_ZEROES was not advertised");
        }
        CMD_BLOCK_STATUS if !limits.block_status => {
            return reject(
                NBD_EINVAL,
                "NBD_CMD_BLOCK_STATUS without a selected metadata context",
            );
        }
        _ => {}
    }
    let modifies = matches!(h.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if modifies && limits.read_only {
        return reject(NBD_EPERM, "the export is read-only");
    }
    match h.kind {
        CMD_READ if h.len_bytes > limits.max_payload_bytes as u64 => {
            return reject(NBD_EOVERFLOW, "read longer than the maximum block size");
        }
        CMD_WRITE if h.len_bytes > limits.max_payload_bytes as u64 => {
            return reject(NBD_EINVAL, "write longer than the maximum block size");
        }
        _ => {}
    }
    let in_range = h
        .offset_bytes
        .checked_add(h.len_bytes)
        .is_some_and(|end| end <= limits.size_bytes);
    if !in_range {
        return match h.kind {
            // proto.md: ENOSPC for writes beyond the end, EINVAL for the rest.
            CMD_WRITE | CMD_WRITE_ZEROES => {
                reject(NBD_ENOSPC, "request extends beyond the end of the export")
            }
            _ => reject(NBD_EINVAL, "request extends beyond the end of the export"),
        };
    }
    // In range, so the end does not overflow; a zero block size is refused, not divided by.
    let Some(span) = Span::covering(h.offset_bytes, h.len_bytes, limits.block_size) else {
        return if h.len_bytes != 0 {
            reject(NBD_EINVAL, "the export has no block size")
        } else if h.kind == CMD_BLOCK_STATUS {
            reject(NBD_EINVAL, "NBD_CMD_BLOCK_STATUS with zero length")
        } else {
            Verdict::Run(Command::Noop)
        };
    };
    let (offset_blocks, num_blocks) = (span.offset_blocks, span.num_blocks);
    let aligned = span.is_aligned(limits.block_size);
    let no_hole = h.flags & CMD_FLAG_NO_HOLE != 0;
    Verdict::Run(match h.kind {
        CMD_READ if aligned => Command::Read {
            offset_blocks,
            num_blocks,
        },
        CMD_READ => Command::ReadUnaligned(span),
        CMD_WRITE if aligned => Command::Write {
            offset_blocks,
            num_blocks,
            fua,
        },
        CMD_WRITE => Command::WriteUnaligned { span, fua },
        CMD_TRIM => {
            // The whole blocks inside the range.
            let bs = u64::from(limits.block_size);
            let start = h.offset_bytes.div_ceil(bs);
            let end = (h.offset_bytes + h.len_bytes) / bs;
            if end <= start {
                Command::Noop
            } else {
                Command::Trim {
                    offset_blocks: start,
                    num_blocks: end - start,
                    fua,
                }
            }
        }
        CMD_WRITE_ZEROES if aligned => Command::WriteZeroes {
            offset_blocks,
            num_blocks,
            fua,
            no_hole,
        },
        CMD_WRITE_ZEROES => Command::WriteZeroesUnaligned { span, fua, no_hole },
        _ => Command::BlockStatus {
            span,
            req_one: h.flags & CMD_FLAG_REQ_ONE != 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::nbd::proto::*;

    fn limits() -> ExportLimits {
        ExportLimits {
            size_bytes: 1 << 20,
            block_size: 512,
            max_payload_bytes: 32 << 20,
            read_only: false,
            can_trim: true,
            can_write_zeroes: true,
            chunked: true,
            block_status: true,
            mode: HeaderMode::Compact,
        }
    }

    fn req(kind: u16, flags: u16, offset: u64, len: u64) -> RequestHeader {
        RequestHeader {
            flags,
            kind,
            cookie: 7,
            offset_bytes: offset,
            len_bytes: len,
        }
    }

    fn error_of(v: Verdict) -> u32 {
        match v {
            Verdict::Reject { error, .. } => error,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn valid_requests_run_in_blocks() {
        let l = limits();
        assert_eq!(
            check_request(&req(CMD_READ, 0, 4096, 8192), &l),
            Verdict::Run(Command::Read {
                offset_blocks: 8,
                num_blocks: 16
            })
        );
        assert_eq!(
            check_request(&req(CMD_WRITE, CMD_FLAG_FUA, 0, 512), &l),
            Verdict::Run(Command::Write {
                offset_blocks: 0,
                num_blocks: 1,
                fua: true
            })
        );
        assert_eq!(
            check_request(&req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 512, 1024), &l),
            Verdict::Run(Command::WriteZeroes {
                offset_blocks: 1,
                num_blocks: 2,
                fua: false,
                no_hole: true
            })
        );
        assert_eq!(
            check_request(&req(CMD_FLUSH, 0, 0, 0), &l),
            Verdict::Run(Command::Flush)
        );
        assert_eq!(
            check_request(&req(CMD_DISC, 0, 0, 0), &l),
            Verdict::Run(Command::Disconnect)
        );
        assert_eq!(
            check_request(&req(CMD_READ, 0, 0, 0), &l),
            Verdict::Run(Command::Noop)
        );
        assert_eq!(
            check_request(&req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 1 << 20), &l),
            Verdict::Run(Command::BlockStatus {
                span: Span {
                    offset_blocks: 0,
                    num_blocks: 2048,
                    head_bytes: 0,
                    len_bytes: 1 << 20
                },
                req_one: true
            })
        );
    }

    #[test]
    fn unaligned_requests_run_on_their_covering_blocks() {
        let l = ExportLimits {
            block_size: 4096,
            ..limits()
        };
        let span = |offset_blocks, num_blocks, head_bytes, len_bytes| Span {
            offset_blocks,
            num_blocks,
            head_bytes,
            len_bytes,
        };
        // ext4's superblock on a 4 KiB disk.
        assert_eq!(
            check_request(&req(CMD_READ, 0, 1024, 1024), &l),
            Verdict::Run(Command::ReadUnaligned(span(0, 1, 1024, 1024)))
        );
        assert_eq!(
            check_request(&req(CMD_WRITE, CMD_FLAG_FUA, 4095, 2), &l),
            Verdict::Run(Command::WriteUnaligned {
                span: span(0, 2, 4095, 2),
                fua: true
            })
        );
        assert_eq!(
            check_request(&req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 512, 8192), &l),
            Verdict::Run(Command::WriteZeroesUnaligned {
                span: span(0, 3, 512, 8192),
                fua: false,
                no_hole: true
            })
        );
        // A trim is narrowed to the whole blocks inside it, or does nothing.
        assert_eq!(
            check_request(&req(CMD_TRIM, 0, 512, 3 * 4096), &l),
            Verdict::Run(Command::Trim {
                offset_blocks: 1,
                num_blocks: 2,
                fua: false
            })
        );
        assert_eq!(
            check_request(&req(CMD_TRIM, 0, 512, 4096), &l),
            Verdict::Run(Command::Noop)
        );
        assert_eq!(
            check_request(&req(CMD_BLOCK_STATUS, 0, 100, 1), &l),
            Verdict::Run(Command::BlockStatus {
                span: span(0, 1, 100, 1),
                req_one: false
            })
        );
        // Aligned requests still run in blocks.
        assert_eq!(
            check_request(&req(CMD_READ, 0, 8192, 4096), &l),
            Verdict::Run(Command::Read {
                offset_blocks: 2,
                num_blocks: 1
            })
        );
        // The end of the export still bounds them: the last byte is fine, one more is not.
        let last = (1 << 20) - 1;
        assert!(matches!(
            check_request(&req(CMD_WRITE, 0, last, 1), &l),
            Verdict::Run(Command::WriteUnaligned { .. })
        ));
        assert_eq!(
            error_of(check_request(&req(CMD_WRITE, 0, last, 2), &l)),
            NBD_ENOSPC
        );
        assert_eq!(
            error_of(check_request(&req(CMD_READ, 0, last, 2), &l)),
            NBD_EINVAL
        );
        // A zero block size is refused, never divided by.
        let zero = ExportLimits { block_size: 0, ..l };
        assert_eq!(
            error_of(check_request(&req(CMD_READ, 0, 0, 1), &zero)),
            NBD_EINVAL
        );
    }

    #[test]
    fn bad_requests_get_the_protocol_errors() {
        let l = limits();
        assert_eq!(error_of(check_request(&req(99, 0, 0, 0), &l)), NBD_EINVAL);
        assert_eq!(
            error_of(check_request(&req(CMD_CACHE, 0, 0, 512), &l)),
            NBD_EINVAL
        );
        assert_eq!(
            error_of(check_request(&req(CMD_READ, 1 << 9, 0, 512), &l)),
            NBD_EINVAL,
            "unknown flag"
        );
        assert_eq!(
            error_of(check_request(&req(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 512), &l)),
            NBD_EINVAL,
            "flag of another command"
        );
        assert_eq!(
            error_of(check_request(&req(CMD_READ, 0, 1 << 20, 512), &l)),
            NBD_EINVAL
        );
        assert_eq!(
            error_of(check_request(&req(CMD_WRITE, 0, 1 << 20, 512), &l)),
            NBD_ENOSPC
        );
        assert_eq!(
            error_of(check_request(&req(CMD_READ, 0, u64::MAX - 511, 512), &l)),
            NBD_EINVAL,
            "offset + length overflows"
        );
        assert_eq!(
            error_of(check_request(&req(CMD_READ, 0, 0, (32 << 20) + 512), &l)),
            NBD_EOVERFLOW
        );
        assert_eq!(
            error_of(check_request(&req(CMD_WRITE, 0, 0, (32 << 20) + 512), &l)),
            NBD_EINVAL
        );
        assert_eq!(
            error_of(check_request(&req(CMD_FLUSH, 0, 0, 512), &l)),
            NBD_EINVAL
        );
        assert_eq!(
            error_of(check_request(&req(CMD_BLOCK_STATUS, 0, 0, 0), &l)),
            NBD_EINVAL
        );
        let ro = ExportLimits {
            read_only: true,
            ..l
        };
        for kind in [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
            assert_eq!(
                error_of(check_request(&req(kind, 0, 0, 512), &ro)),
                NBD_EPERM
            );
        }
        let plain = ExportLimits {
            chunked: false,
            block_status: false,
            can_trim: false,
            can_write_zeroes: false,
            ..l
        };
        assert_eq!(
            error_of(check_request(&req(CMD_READ, CMD_FLAG_DF, 0, 512), &plain)),
            NBD_EINVAL
        );
        for kind in [CMD_BLOCK_STATUS, CMD_TRIM, CMD_WRITE_ZEROES] {
            assert_eq!(
                error_of(check_request(&req(kind, 0, 0, 512), &plain)),
                NBD_EINVAL
            );
        }
    }

    #[test]
    fn extended_headers_rules() {
        let l = ExportLimits {
            mode: HeaderMode::Extended,
            ..limits()
        };
        assert!(matches!(
            check_request(&req(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN, 0, 512), &l),
            Verdict::Run(Command::Write { .. })
        ));
        assert!(
            matches!(
                check_request(&req(CMD_WRITE, 0, 0, 512), &l),
                Verdict::Run(Command::Write { .. })
            ),
            "qemu sends writes without the payload flag"
        );
        assert_eq!(
            error_of(check_request(
                &req(CMD_READ, CMD_FLAG_PAYLOAD_LEN, 0, 512),
                &l
            )),
            NBD_EINVAL,
            "payload on a read: consumed, then EINVAL"
        );
        assert!(matches!(
            check_request(&req(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN, 0, 64 << 20), &l),
            Verdict::Close { .. }
        ));
        // 64-bit effect lengths are fine for commands without payload.
        let big = ExportLimits {
            size_bytes: 1 << 40,
            ..l
        };
        assert_eq!(
            check_request(&req(CMD_TRIM, 0, 0, 1 << 40), &big),
            Verdict::Run(Command::Trim {
                offset_blocks: 0,
                num_blocks: 1 << 31,
                fua: false
            })
        );
        // Compact mode does not know the payload flag.
        assert_eq!(
            error_of(check_request(
                &req(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN, 0, 512),
                &limits()
            )),
            NBD_EINVAL
        );
    }
}
