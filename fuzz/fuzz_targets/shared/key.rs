//! The fixed master key of the keyed fuzz paths. The seed corpus (written by the integration
//! test `fuzz_seed_corpus_from_a_real_repository_decodes`) seals with the same bytes, so seeds
//! reach past authentication into the decoders behind it. Keep the two in sync.
use backstop::pipeline::{Crypto, MasterKey};

#[allow(dead_code)]
pub fn key() -> MasterKey {
    MasterKey {
        encrypt: [0x5a; 32],
        id: [0xa5; 32],
        chunker_seed: 7,
    }
}

#[allow(dead_code)]
pub fn keyed() -> Crypto {
    Crypto::keyed(&key())
}
