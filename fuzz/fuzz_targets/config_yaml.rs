//! Fuzzes the YAML configuration parser: any text gives a config or an error that names
//! the file, never a panic; a config that parses serialises to YAML that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.yaml") {
        Ok(c) => {
            let again = Config::parse(&c.to_yaml(), "again.yaml").expect("a saved config parses");
            assert_eq!(again, c);
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.yaml")),
    }
});
