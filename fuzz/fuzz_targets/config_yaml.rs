//! Fuzzes the YAML configuration parser (body: `tessera::fuzzing::config_yaml`).
//! The corpus in `fuzz/corpus/config_yaml/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::config_yaml(data));
