//! Fuzzes the JSON-RPC request path short of the handlers: the framer (fed in chunks of
//! a size the input picks), frame parsing, request checks, and parameter decoding for
//! the named method and for another one the input picks — never a panic; every frame is
//! one balanced object or array within the size limit, and every error has a code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::rpc::methods::{METHODS, check_params};
use tessera::rpc::protocol::{Frame, Framer, Incoming, encode, parse_frame};

const LIMIT: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, data)) = data.split_first() else {
        return;
    };
    let chunk = (knobs as usize % 17) + 1;
    let other = METHODS[knobs as usize % METHODS.len()];
    let mut f = Framer::new(LIMIT);
    for piece in data.chunks(chunk) {
        f.push(piece);
        loop {
            match f.next_frame() {
                Frame::Incomplete => break,
                Frame::Fatal(e) => {
                    assert!(e.to_error().code < 0);
                    return;
                }
                Frame::Complete(frame) => {
                    assert!(frame.len() <= LIMIT);
                    let (first, last) = (frame[0], frame[frame.len() - 1]);
                    assert!(matches!((first, last), (b'{', b'}') | (b'[', b']')));
                    let reqs = match parse_frame(&frame) {
                        Err(resp) => {
                            let _ = encode(&resp.to_json());
                            continue;
                        }
                        Ok(Incoming::Single(r)) => vec![r],
                        Ok(Incoming::Batch(rs)) => rs,
                    };
                    for r in reqs {
                        match r {
                            Ok(req) => {
                                if let Some(Err(e)) = check_params(&req.method, req.params.clone())
                                {
                                    assert!(e.code < 0 && !e.message.is_empty());
                                }
                                if let Some(Err(e)) = check_params(other, req.params) {
                                    assert!(e.code < 0 && !e.message.is_empty());
                                }
                            }
                            Err(resp) => {
                                assert!(resp.result.is_err());
                                let _ = encode(&resp.to_json());
                            }
                        }
                    }
                }
            }
        }
    }
});
