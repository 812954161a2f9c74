//! Pack headers and blobs from hostile bytes, unencrypted and sealed with a fixed key:
//! errors, never panics or huge allocations.
#![no_main]
#[path = "shared/key.rs"]
mod shared_key;

use backstop::pipeline::Crypto;
use backstop::repo::pack;
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8], crypto: &Crypto) {
    if let Ok(located) = pack::parse(data, crypto) {
        for l in located {
            let end = (l.offset + l.entry.stored_len) as usize;
            if let Ok(plain) = pack::open_blob(&data[l.offset as usize..end], &l.entry, crypto) {
                assert_eq!(plain.len(), l.entry.raw_len as usize, "open_blob checks raw_len");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, &Crypto::None);
    // The encrypted path: only seeds sealed with the fixed key get past the header's tag,
    // and their mutations test what follows authentication failure or success.
    check(data, &shared_key::keyed());
});
