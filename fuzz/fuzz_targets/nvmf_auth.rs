//! Fuzzes the in-band authentication message decoders and the `DHHC-1` key parser
//! (body: `tessera::fuzzing::nvmf_auth`). The corpus in `fuzz/corpus/nvmf_auth/` is
//! replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::nvmf_auth(data));
