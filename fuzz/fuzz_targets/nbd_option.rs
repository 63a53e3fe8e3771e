//! Fuzzes NBD handshake options (body: `tessera::fuzzing::nbd_option`).
//! The corpus in `fuzz/corpus/nbd_option/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::nbd_option(data));
