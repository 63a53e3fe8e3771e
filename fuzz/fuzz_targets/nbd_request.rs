//! NBD transmission input: a stream of request headers (and payloads) as a client may
//! send them, parsed and validated the way a connection does, against export limits
//! drawn from the first bytes. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::frontend::nbd::check::{ExportLimits, Verdict, check_request};
use tessera::frontend::nbd::proto::{HeaderMode, parse_request};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (knobs, mut stream) = data.split_at(4);
    let mode = if knobs[0] & 1 != 0 {
        HeaderMode::Extended
    } else {
        HeaderMode::Compact
    };
    let limits = ExportLimits {
        size_bytes: (knobs[1] as u64 + 1) << 20,
        block_size: 512 << (knobs[2] % 8),
        max_payload_bytes: 32 << 20,
        read_only: knobs[0] & 2 != 0,
        can_trim: knobs[0] & 4 != 0,
        can_write_zeroes: knobs[0] & 8 != 0,
        chunked: knobs[0] & 16 != 0 || mode == HeaderMode::Extended,
        block_status: knobs[0] & 32 != 0,
        mode,
    };
    loop {
        match parse_request(stream, mode) {
            Ok(Some((h, n))) => {
                stream = &stream[n..];
                let verdict = check_request(&h, &limits);
                if let Verdict::Close { .. } = verdict {
                    return;
                }
                // Skip the payload the request carries, as the connection does.
                let skip = h.payload_len(mode).min(stream.len() as u64) as usize;
                stream = &stream[skip..];
            }
            Ok(None) | Err(_) => return,
        }
    }
});
