//! Fuzzes the NVMe/TCP PDU codec: any bytes, either direction, any negotiated digests
//! and limits. The decoder must never panic, and a frame it accepts must lie within the
//! PDU length it declares.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::nvme::pdu::{self, Decoded, Limits, Receiver};

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, bytes)) = data.split_first() else {
        return;
    };
    let rx = if cfg & 1 == 0 {
        Receiver::Controller
    } else {
        Receiver::Host
    };
    let lim = Limits {
        header_digest: cfg & 2 != 0,
        data_digest: cfg & 4 != 0,
        max_in_capsule_len: if cfg & 8 != 0 { 8192 } else { 4096 },
        max_data_len: if cfg & 16 != 0 { 131072 } else { 4096 },
    };
    if let Ok(Decoded::Frame(f)) = pdu::decode_header(bytes, rx, &lim) {
        assert!(f.header_len <= f.total_len || f.total_len >= pdu::SHORT_HLEN);
        assert!(f.data_offset + f.data_len <= f.total_len);
    }
    // Walk a stream of PDUs as a receiver would.
    let mut rest = bytes;
    while let Ok((p, n)) = pdu::decode_pdu(rest, rx, &lim) {
        assert!(n > 0 && n <= rest.len());
        assert_eq!(p.data.len(), p.frame.data_len);
        rest = &rest[n..];
    }
});
