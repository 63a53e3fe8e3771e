//! Validation of a transmission request against the negotiated export: which command it
//! is, whether its flags apply, whether its range lies within the export and respects the
//! advertised block sizes. Pure and total, like the codec; fuzzed with it.
//!
//! The verdict says what the connection does: run the command, answer with an error
//! (after consuming any payload the request carries), or close the connection.

use super::proto::{
    CMD_BLOCK_STATUS, CMD_DISC, CMD_FLAG_DF, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_PAYLOAD_LEN,
    CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES, HeaderMode,
    NBD_EINVAL, NBD_ENOSPC, NBD_EOVERFLOW, NBD_EPERM, RequestHeader,
};

/// What a connection negotiated about its export, as far as requests are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportLimits {
    /// Export size in bytes (a multiple of `block_size`).
    pub size_bytes: u64,
    /// The bdev block size: the advertised minimum block size, a power of two.
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
    Write {
        offset_blocks: u64,
        num_blocks: u64,
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
    BlockStatus {
        offset_blocks: u64,
        num_blocks: u64,
        req_one: bool,
    },
    /// A zero-length read, write, trim or write-zeroes: succeeds without touching the bdev.
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
    let bs = limits.block_size.max(1) as u64;
    if !h.offset_bytes.is_multiple_of(bs) || !h.len_bytes.is_multiple_of(bs) {
        return reject(
            NBD_EINVAL,
            "offset or length is not a multiple of the minimum block size",
        );
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
    let offset_blocks = h.offset_bytes / bs;
    let num_blocks = h.len_bytes / bs;
    if num_blocks == 0 {
        return if h.kind == CMD_BLOCK_STATUS {
            reject(NBD_EINVAL, "NBD_CMD_BLOCK_STATUS with zero length")
        } else {
            Verdict::Run(Command::Noop)
        };
    }
    Verdict::Run(match h.kind {
        CMD_READ => Command::Read {
            offset_blocks,
            num_blocks,
        },
        CMD_WRITE => Command::Write {
            offset_blocks,
            num_blocks,
            fua,
        },
        CMD_TRIM => Command::Trim {
            offset_blocks,
            num_blocks,
            fua,
        },
        CMD_WRITE_ZEROES => Command::WriteZeroes {
            offset_blocks,
            num_blocks,
            fua,
            no_hole: h.flags & CMD_FLAG_NO_HOLE != 0,
        },
        _ => Command::BlockStatus {
            offset_blocks,
            num_blocks,
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
                offset_blocks: 0,
                num_blocks: 2048,
                req_one: true
            })
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
            error_of(check_request(&req(CMD_READ, 0, 100, 512), &l)),
            NBD_EINVAL,
            "misaligned"
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
