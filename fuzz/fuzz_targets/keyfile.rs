//! Key files from hostile bytes, unwrapped with a passphrase.
#![no_main]
use backstop::pipeline::KeyFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kf) = serde_json::from_slice::<KeyFile>(data) {
        // Real limits allow up to 4 GiB of KDF memory; keep fuzzing iterations cheap.
        if kf.params.memory_kib <= 256 && kf.params.iterations <= 2 {
            let _ = kf.unwrap_key(b"fuzz");
        }
    }
});
