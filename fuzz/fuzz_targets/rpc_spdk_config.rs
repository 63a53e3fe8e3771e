//! Fuzzes the SPDK JSON configuration reader (body: `tessera::fuzzing::rpc_spdk_config`).
//! The corpus in `fuzz/corpus/rpc_spdk_config/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::rpc_spdk_config(data));
