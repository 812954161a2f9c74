//! The repository's `config` object: format version and the parameters every client must share.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pipeline::ChunkerParams;
use crate::repo::Id;

/// Repository format version written by this program.
pub const FORMAT_VERSION: u32 = 1;

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
}

impl RepoConfig {
    /// Decodes and validates a `config` object.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let c: RepoConfig = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(format!("repository config is malformed: {e}")))?;
        if c.version != FORMAT_VERSION {
            return Err(Error::corrupt(format!(
                "repository format version {} is not supported (this backstop reads version {FORMAT_VERSION})",
                c.version
            )));
        }
        if !c.chunker.is_valid() || !(1 << 20..=1 << 30).contains(&c.pack_size) {
            return Err(Error::corrupt(
                "repository config has invalid chunker or pack size",
            ));
        }
        Ok(c)
    }
}
