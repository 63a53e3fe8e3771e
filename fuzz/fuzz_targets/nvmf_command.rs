//! Fuzzes the NVMe command decoders (body: `tessera::fuzzing::nvmf_command`).
//! The corpus in `fuzz/corpus/nvmf_command/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::nvmf_command(data));
