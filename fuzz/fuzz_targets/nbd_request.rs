//! Fuzzes NBD request headers and their checks (body: `tessera::fuzzing::nbd_request`).
//! The corpus in `fuzz/corpus/nbd_request/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::nbd_request(data));
