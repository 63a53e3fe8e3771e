//! Fuzzes the reader of SPDK's JSON configuration format: any text gives a config or an
//! error naming the file, never a panic; a config read back from the document written
//! for it is the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::config::Config;
use tessera::config::spdk_json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse_spdk_json(text, "fuzz.json") {
        Ok(c) => {
            let doc = serde_json::to_string(&spdk_json::document(&c)).expect("JSON");
            let again =
                spdk_json::parse_document(&doc, "again.json").expect("a saved config reads");
            assert_eq!(again.bdevs, c.bdevs);
            assert_eq!(again.pools, c.pools);
            assert_eq!(again.snapshots, c.snapshots);
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.json")),
    }
});
