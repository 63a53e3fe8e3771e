//! Fuzzes the SPDK JSON configuration reader (body: `tessera::fuzzing::config_spdk_json`).
//! The corpus in `fuzz/corpus/config_spdk_json/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::config_spdk_json(data));
