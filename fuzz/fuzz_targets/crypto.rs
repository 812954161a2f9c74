//! Opening sealed objects with a fixed key: hostile bytes are errors, never panics; whatever
//! opens re-seals and opens to the same plaintext. Config MACs are checked with the same key.
#![no_main]
#[path = "shared/key.rs"]
mod shared_key;

use backstop::repo::RepoConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keyed = shared_key::keyed();
    if let Ok(plain) = keyed.open(data) {
        let again = keyed.seal(plain.clone());
        assert_ne!(again, data, "a fresh nonce makes every seal differ");
        assert_eq!(keyed.open(&again).expect("own seal opens"), plain);
    }
    if let Ok(c) = RepoConfig::decode(data) {
        let _ = c.verify(&shared_key::key());
    }
});
