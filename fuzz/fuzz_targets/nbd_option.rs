//! NBD handshake input: client flags, option headers and option data, parsed the way the
//! handshake does. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::frontend::nbd::proto::{
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, OPTION_HEADER_LEN, parse_client_flags, parse_option,
    parse_option_header,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let flags = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let _ = parse_client_flags(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    // The option code from the next four bytes, the rest as its data.
    if data.len() >= 8 {
        let option = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) % 16;
        let _ = parse_option(option, &data[8..]);
    }
    // And as a stream of options with their own headers.
    let mut stream = &data[4..];
    while let Ok(Some(h)) = parse_option_header(stream) {
        stream = &stream[OPTION_HEADER_LEN..];
        let len = (h.len_bytes as usize).min(stream.len());
        let _ = parse_option(h.option, &stream[..len]);
        stream = &stream[len..];
    }
});
