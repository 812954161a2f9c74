//! The repository's `config` object: format version and the parameters every client must share.
//!
//! `config` is plaintext JSON, because it must be read before any key is opened (it says
//! whether there are keys to open). In an encrypted repository every field that decides how
//! data is written or read — version, id, `encrypted`, chunker bounds, pack size — is
//! authenticated by `mac`, a keyed BLAKE3 of their canonical form ([`RepoConfig::canonical`])
//! under a key derived from the master key. A config that does not verify is refused as
//! tampering. An unencrypted repository has no secret, so nothing in it can be
//! authenticated; see `docs/SECURITY.md` for how a downgrade to "unencrypted" is caught.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::pipeline::{ChunkerParams, MasterKey};

/// Repository format version written by this program.
pub const FORMAT_VERSION: u32 = 1;

/// Bounds on `pack-size` accepted from a config (a hostile value must not make a backup hold
/// gigabytes per pack in memory, nor write millions of tiny packs).
pub const PACK_SIZE_BOUNDS: std::ops::RangeInclusive<u32> = (1 << 20)..=(128 << 20);

/// BLAKE3 `derive_key` context for the config MAC key.
const MAC_CONTEXT: &str = "backstop 2026-11 repository config MAC v1";

/// The plaintext `config` object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RepoConfig {
    /// Repository format version.
    pub version: u32,
    /// Random repository id.
    pub id: Id,
    /// Whether objects are sealed with a master key (kept in `keys/`).
    pub encrypted: bool,
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Encrypted repositories: hex keyed BLAKE3 of [`RepoConfig::canonical`] under the
    /// master key's config MAC key. Absent in unencrypted repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl RepoConfig {
    /// Decodes and validates a `config` object (bounds only; [`RepoConfig::verify`] checks
    /// the MAC once the master key is open).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let c: RepoConfig = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(format!("repository config is malformed: {e}")))?;
        if c.version != FORMAT_VERSION {
            return Err(Error::corrupt(format!(
                "repository format version {} is not supported (this backstop reads version {FORMAT_VERSION})",
                c.version
            )));
        }
        if !c.chunker.is_valid() {
            return Err(Error::corrupt(format!(
                "repository config has invalid chunker bounds {:?}",
                c.chunker
            )));
        }
        if !PACK_SIZE_BOUNDS.contains(&c.pack_size) {
            return Err(Error::corrupt(format!(
                "repository config has invalid pack size {} (allowed {}..={} bytes)",
                c.pack_size,
                PACK_SIZE_BOUNDS.start(),
                PACK_SIZE_BOUNDS.end()
            )));
        }
        match (c.encrypted, &c.mac) {
            (true, None) => Err(Error::corrupt(
                "repository config says the repository is encrypted but carries no MAC: \
                 the config was altered (tampering); refusing to use it",
            )),
            (false, Some(_)) => Err(Error::corrupt(
                "repository config says the repository is not encrypted but carries a MAC: \
                 the config was altered (tampering); refusing to use it",
            )),
            _ => Ok(c),
        }
    }

    /// The bytes the MAC covers: every field but `mac`, in a fixed textual form.
    pub fn canonical(&self) -> String {
        format!(
            "backstop-config\nversion={}\nid={}\nencrypted={}\nchunker-min={}\nchunker-avg={}\nchunker-max={}\npack-size={}\n",
            self.version,
            self.id.to_hex(),
            self.encrypted,
            self.chunker.min,
            self.chunker.avg,
            self.chunker.max,
            self.pack_size
        )
    }

    fn compute_mac(&self, key: &MasterKey) -> blake3::Hash {
        let mac_key = blake3::derive_key(MAC_CONTEXT, &key.encrypt);
        blake3::keyed_hash(&mac_key, self.canonical().as_bytes())
    }

    /// Sets `mac` for an encrypted repository whose master key is `key`.
    pub fn sign(&mut self, key: &MasterKey) {
        self.mac = Some(self.compute_mac(key).to_hex().to_string());
    }

    /// Checks `mac` against `key` (in constant time). Fails with `Corrupt` naming tampering.
    pub fn verify(&self, key: &MasterKey) -> Result<()> {
        let tampered = || {
            Error::corrupt(
                "the repository config does not verify against the master key: it was altered \
                 (tampering) or replaced; refusing to use it",
            )
        };
        let stored = self
            .mac
            .as_deref()
            .and_then(|h| blake3::Hash::from_hex(h).ok())
            .ok_or_else(tampered)?;
        // blake3::Hash's equality is constant-time.
        if stored == self.compute_mac(key) {
            Ok(())
        } else {
            Err(tampered())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn signed() -> (RepoConfig, MasterKey) {
        let key = MasterKey::generate();
        let mut c = RepoConfig {
            version: FORMAT_VERSION,
            id: Id::random(),
            encrypted: true,
            chunker: ChunkerParams::default(),
            pack_size: 16 << 20,
            mac: None,
        };
        c.sign(&key);
        (c, key)
    }

    fn reencode(c: &RepoConfig) -> Result<RepoConfig> {
        RepoConfig::decode(&serde_json::to_vec(c).unwrap())
    }

    #[test]
    fn config_mac_covers_every_parameter() {
        let (c, key) = signed();
        reencode(&c).unwrap().verify(&key).unwrap();
        let edits: [fn(&mut RepoConfig); 5] = [
            |c| c.id = Id::random(),
            |c| c.chunker.min = 256 * 1024,
            |c| c.chunker.avg = 2 * 1024 * 1024,
            |c| c.chunker.max = 16 * 1024 * 1024,
            |c| c.pack_size = 8 << 20,
        ];
        for edit in edits {
            let mut t = c.clone();
            edit(&mut t);
            let t = reencode(&t).unwrap();
            let err = t.verify(&key).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt);
            assert!(err.to_string().contains("tampering"), "{err}");
        }
        // Another master key does not verify it either.
        assert!(c.verify(&MasterKey::generate()).is_err());
    }

    #[test]
    fn config_downgrade_and_stripped_mac_are_refused() {
        let (c, _) = signed();
        let mut down = c.clone();
        down.encrypted = false;
        let err = reencode(&down).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("tampering"), "{err}");
        let mut stripped = c.clone();
        stripped.mac = None;
        let err = reencode(&stripped).unwrap_err();
        assert!(err.to_string().contains("tampering"), "{err}");
    }

    #[test]
    fn hostile_config_values_are_bounded() {
        let (c, _) = signed();
        let mut bad = Vec::new();
        for (min, avg, max) in [
            (0, 1 << 20, 8 << 20),
            (512 << 10, 1 << 20, u32::MAX),
            (4 << 20, 1 << 20, 8 << 20),
            (512 << 10, 64 << 20, 64 << 20),
        ] {
            let mut t = c.clone();
            t.chunker = ChunkerParams { min, avg, max };
            bad.push(t);
        }
        for size in [0, 4096, 129 << 20, u32::MAX] {
            let mut t = c.clone();
            t.pack_size = size;
            bad.push(t);
        }
        let mut t = c.clone();
        t.version = 2;
        bad.push(t);
        for t in bad {
            assert_eq!(
                reencode(&t).unwrap_err().kind(),
                ErrorKind::Corrupt,
                "{t:?}"
            );
        }
    }

    /// docs/FORMAT.md states the default chunker bounds; this pins them.
    #[test]
    fn default_chunker_params_match_format_doc() {
        let p = ChunkerParams::default();
        assert_eq!((p.min, p.avg, p.max), (512 << 10, 1 << 20, 8 << 20));
        let doc = include_str!("../../docs/FORMAT.md");
        assert!(
            doc.contains("minimum 512 KiB, average 1 MiB, maximum 8 MiB by default"),
            "docs/FORMAT.md must state the default chunker bounds"
        );
        assert_eq!(crate::repo::PACK_SIZE, 16 << 20);
        assert!(PACK_SIZE_BOUNDS.contains(&crate::repo::PACK_SIZE));
    }
}
