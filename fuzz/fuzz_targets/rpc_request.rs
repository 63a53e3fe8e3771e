//! Fuzzes the JSON-RPC request path (body: `tessera::fuzzing::rpc_request`).
//! The corpus in `fuzz/corpus/rpc_request/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::rpc_request(data));
