//! Encryption and chunk identity: XChaCha20-Poly1305 sealing, keyed BLAKE3 ids, Argon2id key wrapping.
//!
//! A repository is either unencrypted or has one random [`MasterKey`]. The master key is
//! stored only wrapped (encrypted) by a key derived from a passphrase with Argon2id, in key
//! files under `keys/`. Every stored object except `config` and the key files is sealed
//! with the master key: `nonce (24 bytes) || ciphertext || tag (16 bytes)`, a fresh random
//! nonce each time. Chunk ids are BLAKE3 keyed with a separate id key, so the storage
//! cannot tell whether the repository holds a known file.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Bytes that sealing adds to a plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The secret material of an encrypted repository.
#[derive(Clone, Serialize, Deserialize)]
pub struct MasterKey {
    /// XChaCha20-Poly1305 key for every sealed object.
    #[serde(with = "hex32")]
    pub encrypt: [u8; 32],
    /// BLAKE3 key for chunk ids.
    #[serde(with = "hex32")]
    pub id: [u8; 32],
    /// Seed for the chunker's gear table, so chunk boundaries do not reveal content.
    pub chunker_seed: u64,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Self {
        let mut k = MasterKey {
            encrypt: [0; 32],
            id: [0; 32],
            chunker_seed: 0,
        };
        rand::fill(&mut k.encrypt);
        rand::fill(&mut k.id);
        k.chunker_seed = rand::random();
        k
    }
}

/// How objects of one repository are sealed and chunks named.
#[derive(Clone)]
pub enum Crypto {
    /// Unencrypted repository: sealing is the identity, ids are plain BLAKE3.
    None,
    /// Encrypted repository.
    Keyed {
        cipher: Box<XChaCha20Poly1305>,
        id_key: [u8; 32],
        chunker_seed: u64,
    },
}

impl Crypto {
    /// Crypto for an encrypted repository with `key`.
    pub fn keyed(key: &MasterKey) -> Self {
        Crypto::Keyed {
            cipher: Box::new(XChaCha20Poly1305::new(&key.encrypt.into())),
            id_key: key.id,
            chunker_seed: key.chunker_seed,
        }
    }

    /// The id of a chunk or tree with plaintext `data`.
    pub fn chunk_id(&self, data: &[u8]) -> Id {
        match self {
            Crypto::None => Id::hash(data),
            Crypto::Keyed { id_key, .. } => Id(*blake3::keyed_hash(id_key, data).as_bytes()),
        }
    }

    /// The gear seed of the chunker (0 when unencrypted).
    pub fn chunker_seed(&self) -> u64 {
        match self {
            Crypto::None => 0,
            Crypto::Keyed { chunker_seed, .. } => *chunker_seed,
        }
    }

    /// The key of chunk ids (`None` when unencrypted: ids are plain BLAKE3).
    pub fn id_key(&self) -> Option<[u8; 32]> {
        match self {
            Crypto::None => None,
            Crypto::Keyed { id_key, .. } => Some(*id_key),
        }
    }

    /// Whether objects are encrypted.
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Crypto::Keyed { .. })
    }

    /// Seals `plain`, consuming it (so the unencrypted case costs nothing).
    pub fn seal(&self, plain: Vec<u8>) -> Vec<u8> {
        match self {
            Crypto::None => plain,
            Crypto::Keyed { cipher, .. } => seal_with(cipher, &plain),
        }
    }

    /// Appends `plain`, sealed, to `out`: a buffer the caller reuses allocates nothing once
    /// it is large enough.
    pub fn seal_into(&self, plain: &[u8], out: &mut Vec<u8>) {
        match self {
            Crypto::None => out.extend_from_slice(plain),
            Crypto::Keyed { cipher, .. } => seal_append(cipher, plain, out),
        }
    }

    /// Opens a sealed object into `out`, a buffer the caller reuses, and returns the
    /// plaintext: `out`'s contents, or `sealed` itself when objects are not encrypted.
    pub fn open_into<'a>(&self, sealed: &'a [u8], out: &'a mut Vec<u8>) -> Result<&'a [u8]> {
        match self {
            Crypto::None => Ok(sealed),
            Crypto::Keyed { cipher, .. } => {
                open_into(cipher, sealed, out)?;
                Ok(out)
            }
        }
    }

    /// [`Crypto::open_into`] where the sealed bytes lie: they are overwritten, and the
    /// plaintext is the part of them returned (no copy, no buffer).
    pub fn open_in_place<'a>(&self, sealed: &'a mut [u8]) -> Result<&'a [u8]> {
        match self {
            Crypto::None => Ok(sealed),
            Crypto::Keyed { cipher, .. } => open_in_place(cipher, sealed),
        }
    }

    /// Opens a sealed object; fails if it was altered or sealed with another key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        match self {
            Crypto::None => Ok(sealed.to_vec()),
            Crypto::Keyed { cipher, .. } => open_with(cipher, sealed),
        }
    }
}

fn seal_with(cipher: &XChaCha20Poly1305, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
    seal_append(cipher, plain, &mut out);
    out
}

/// Appends nonce, ciphertext and tag of `plain` to `out`.
fn seal_append(cipher: &XChaCha20Poly1305, plain: &[u8], out: &mut Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    out.reserve(plain.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&nonce);
    let at = out.len();
    out.extend_from_slice(plain);
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(nonce), b"", (&mut out[at..]).into())
        .expect("XChaCha20-Poly1305 accepts any message length we produce");
    out.extend_from_slice(&tag);
}

fn open_with(cipher: &XChaCha20Poly1305, sealed: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    open_into(cipher, sealed, &mut out)?;
    Ok(out)
}

/// Opens `sealed` into `out` (cleared first).
fn open_into(cipher: &XChaCha20Poly1305, sealed: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let (nonce, body, tag) = split_sealed(sealed)?;
    out.extend_from_slice(body);
    decrypt(cipher, nonce, out, tag)
}

fn open_in_place<'a>(cipher: &XChaCha20Poly1305, sealed: &'a mut [u8]) -> Result<&'a [u8]> {
    let (nonce, body, tag) = split_sealed(sealed)?;
    let (nonce, tag, len) = (*nonce, *tag, body.len());
    let body = &mut sealed[NONCE_LEN..NONCE_LEN + len];
    decrypt(cipher, &nonce, body, &tag)?;
    Ok(body)
}

/// Nonce, ciphertext and tag of a sealed object.
fn split_sealed(sealed: &[u8]) -> Result<(&[u8; NONCE_LEN], &[u8], &[u8; TAG_LEN])> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(Error::corrupt(
            "sealed object is shorter than its nonce and tag",
        ));
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce = nonce.try_into().expect("split at NONCE_LEN");
    let tag = tag.try_into().expect("split at TAG_LEN");
    Ok((nonce, body, tag))
}

/// Decrypts `body` in place, checking it against `tag`.
fn decrypt(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; NONCE_LEN],
    body: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<()> {
    cipher
        .decrypt_inout_detached(&XNonce::from(*nonce), b"", body.into(), &(*tag).into())
        .map_err(|_| {
            Error::corrupt("authentication failed: the object was altered or the key is wrong")
        })
}

/// Argon2id parameters stored in a key file.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 32 MiB, 6 passes, 4 lanes: the same memory × passes (per-guess work) as RFC 9106's
    /// second recommended option (64 MiB, 3 passes) at half its memory, five times OWASP's
    /// minimum (19 MiB, 2 passes), as much memory as restic's scrypt uses here (N = 2^15,
    /// r = 8). Every command pays it once: about a tenth of a second here, the lanes computed
    /// on two cores. `init --kdf-memory-mib` and `--kdf-passes` choose more (see DECISIONS).
    fn default() -> Self {
        KdfParams {
            memory_kib: 32 * 1024,
            iterations: 6,
            parallelism: 4,
        }
    }
}

/// A key file: the master key wrapped by a passphrase-derived key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KeyFile {
    /// Format version of this key file.
    pub version: u32,
    /// Always "argon2id".
    pub kdf: String,
    /// Argon2id cost parameters.
    pub params: KdfParams,
    /// Salt, hex.
    pub salt: String,
    /// The sealed master key (JSON), hex.
    pub wrapped: String,
    /// Host that created the key.
    pub host: String,
    /// When the key was created (RFC 3339).
    pub created: String,
}

/// Upper bounds on KDF parameters accepted from a key file, so a key file planted by someone
/// who can write the storage cannot make us allocate gigabytes or spin for minutes before we
/// even check the passphrase (every key file is tried). 16 times the default memory.
pub const MAX_KDF_MEMORY_KIB: u32 = 1024 * 1024;
/// See [`MAX_KDF_MEMORY_KIB`].
pub const MAX_KDF_ITERATIONS: u32 = 16;
/// See [`MAX_KDF_MEMORY_KIB`].
pub const MAX_KDF_PARALLELISM: u32 = 16;

fn derive(passphrase: &[u8], salt: &[u8], p: KdfParams) -> Result<XChaCha20Poly1305> {
    if p.memory_kib > MAX_KDF_MEMORY_KIB
        || p.iterations > MAX_KDF_ITERATIONS
        || p.parallelism > MAX_KDF_PARALLELISM
    {
        return Err(Error::corrupt(format!(
            "key file asks for excessive KDF parameters {p:?}"
        )));
    }
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| Error::corrupt(format!("invalid KDF parameters {p:?}: {e}")))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut out)
        .map_err(|e| Error::corrupt(format!("key derivation failed: {e}")))?;
    Ok(XChaCha20Poly1305::new(&out.into()))
}

impl KeyFile {
    /// Wraps `key` with `passphrase`.
    pub fn wrap(key: &MasterKey, passphrase: &[u8], params: KdfParams) -> Result<Self> {
        let mut salt = [0u8; 32];
        rand::fill(&mut salt);
        let wrapping = derive(passphrase, &salt, params)?;
        let plain = serde_json::to_vec(key).expect("master key serializes");
        Ok(KeyFile {
            version: 1,
            kdf: "argon2id".into(),
            params,
            salt: hex::encode(salt),
            wrapped: hex::encode(seal_with(&wrapping, &plain)),
            host: crate::repo::hostname(),
            created: chrono::Utc::now().to_rfc3339(),
        })
    }

    /// Unwraps the master key; `WrongPassword` if the passphrase does not fit.
    pub fn unwrap_key(&self, passphrase: &[u8]) -> Result<MasterKey> {
        if self.version != 1 || self.kdf != "argon2id" {
            return Err(Error::corrupt(format!(
                "unsupported key file (version {}, kdf {})",
                self.version, self.kdf
            )));
        }
        let salt =
            hex::decode(&self.salt).map_err(|_| Error::corrupt("key file salt is not hex"))?;
        let wrapped =
            hex::decode(&self.wrapped).map_err(|_| Error::corrupt("wrapped key is not hex"))?;
        let wrapping = derive(passphrase, &salt, self.params)?;
        let plain = open_with(&wrapping, &wrapped).map_err(|_| {
            Error::new(
                ErrorKind::WrongPassword,
                "wrong password: it opens no key of this repository",
            )
        })?;
        serde_json::from_slice(&plain)
            .map_err(|e| Error::corrupt(format!("master key is malformed: {e}")))
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut b = [0u8; 32];
        hex::decode_to_slice(&s, &mut b).map_err(serde::de::Error::custom)?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> KdfParams {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let c = Crypto::keyed(&MasterKey::generate());
        let sealed = c.seal(b"hello".to_vec());
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(c.open(&sealed).unwrap(), b"hello");
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert_eq!(c.open(&bad).unwrap_err().kind(), ErrorKind::Corrupt);
        assert!(c.open(&sealed[..10]).is_err());
        // Opened where it lies: the same plaintext, the same refusals.
        assert_eq!(c.open_in_place(&mut sealed.clone()).unwrap(), b"hello");
        let err = c.open_in_place(&mut bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(c.open_in_place(&mut sealed.clone()[..10]).is_err());
    }

    /// A seal that stored plaintext, or reused a nonce, would pass every round trip: pin that
    /// sealing is randomised, hides the plaintext and still opens.
    #[test]
    fn seal_is_randomised_and_hides_plaintext() {
        let c = Crypto::keyed(&MasterKey::generate());
        let x = b"PLAINTEXT-MARKER repeated PLAINTEXT-MARKER repeated".to_vec();
        let (a, b) = (c.seal(x.clone()), c.seal(x.clone()));
        assert_ne!(a, b, "two seals of one plaintext must differ (fresh nonce)");
        assert_ne!(a, x);
        assert_ne!(&a[NONCE_LEN..NONCE_LEN + x.len()], &x[..]);
        assert!(
            !a.windows(16).any(|w| x.windows(16).any(|p| p == w)),
            "no 16-byte run of the plaintext may appear in the sealed bytes"
        );
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_eq!(c.open(&a).unwrap(), x);
        assert_eq!(c.open(&b).unwrap(), x);
        // Another key opens neither.
        let other = Crypto::keyed(&MasterKey::generate());
        assert_eq!(other.open(&a).unwrap_err().kind(), ErrorKind::Corrupt);
        assert!(c.is_encrypted() && !Crypto::None.is_encrypted());
    }

    #[test]
    fn keyed_ids_differ_from_plain() {
        let k = Crypto::keyed(&MasterKey::generate());
        assert_ne!(k.chunk_id(b"x"), Crypto::None.chunk_id(b"x"));
        assert_eq!(Crypto::None.chunk_id(b"x"), Id::hash(b"x"));
    }

    #[test]
    fn key_file_wraps_and_rejects_wrong_password() {
        let key = MasterKey::generate();
        let kf = KeyFile::wrap(&key, b"secret", fast()).unwrap();
        assert_eq!(kf.unwrap_key(b"secret").unwrap().id, key.id);
        assert_eq!(
            kf.unwrap_key(b"nope").unwrap_err().kind(),
            ErrorKind::WrongPassword
        );
    }

    #[test]
    fn hostile_kdf_params_are_refused() {
        let mut kf = KeyFile::wrap(&MasterKey::generate(), b"p", fast()).unwrap();
        for (m, i, p) in [
            (u32::MAX, 1, 1),
            (MAX_KDF_MEMORY_KIB + 1, 1, 1),
            (64, MAX_KDF_ITERATIONS + 1, 1),
            (64, 1, MAX_KDF_PARALLELISM + 1),
            (0, 0, 0),
        ] {
            kf.params = KdfParams {
                memory_kib: m,
                iterations: i,
                parallelism: p,
            };
            let t = std::time::Instant::now();
            assert_eq!(kf.unwrap_key(b"p").unwrap_err().kind(), ErrorKind::Corrupt);
            assert!(
                t.elapsed() < std::time::Duration::from_secs(1),
                "refused before deriving"
            );
        }
        assert!(KdfParams::default().memory_kib <= MAX_KDF_MEMORY_KIB);
    }
}
