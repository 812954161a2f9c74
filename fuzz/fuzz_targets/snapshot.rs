//! Snapshot manifests and repository configs from hostile bytes.
#![no_main]
use backstop::repo::{RepoConfig, Snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data) {
        let _ = Snapshot::decode(&s.encode()).expect("re-encoded manifest decodes");
    }
    let _ = RepoConfig::decode(data);
});
