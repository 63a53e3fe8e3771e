//! Fuzzes the send stream decoder (body: `tessera::fuzzing::send_stream`).
//! The corpus in `fuzz/corpus/send_stream/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::send_stream(data));
