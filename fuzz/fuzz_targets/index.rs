//! Index files from hostile bytes.
#![no_main]
use backstop::repo::{Index, IndexFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = IndexFile::decode(data) {
        let idx = Index::from_files([f]);
        for e in idx.entries() {
            let _ = idx.pack(e.pack);
        }
    }
});
