//! Policy and settings files from hostile text.
#![no_main]
use backstop::policy::{Policy, Settings, parse_toml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_toml::<Policy>(std::path::Path::new("fuzz.toml"), text);
        let _ = parse_toml::<Settings>(std::path::Path::new("backstop.toml"), text);
    }
});
