//! Fuzzes the pool metadata decoders (body: `tessera::fuzzing::vdisk_meta`).
//! The corpus in `fuzz/corpus/vdisk_meta/` is replayed on stable by `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera::fuzzing::vdisk_meta(data));
