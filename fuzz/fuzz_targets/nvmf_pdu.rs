//! Fuzzes the NVMe/TCP PDU codec (body: `tessera::fuzzing::nvmf_pdu`).
//! The corpus in `fuzz/corpus/nvmf_pdu/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::nvmf_pdu(data));
