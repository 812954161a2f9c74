//! Pack headers and blobs from hostile bytes: errors, never panics or huge allocations.
#![no_main]
use backstop::pipeline::Crypto;
use backstop::repo::pack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(located) = pack::parse(data, &Crypto::None) {
        for l in located {
            let end = (l.offset + l.entry.stored_len) as usize;
            let _ = pack::open_blob(&data[l.offset as usize..end], &l.entry, &Crypto::None);
        }
    }
});
