//! Fuzzes opening (and checking) a pool from a mutated image (body:
//! `tessera::fuzzing::pool_open`).
//! The corpus in `fuzz/corpus/pool_open/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::pool_open(data));
