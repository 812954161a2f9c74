//! Collects sealed blobs into a pack of about the target size.

use crate::pipeline::{Crypto, compress};
use crate::repo::Id;
use crate::repo::pack::{self, BlobKind, HeaderEntry};

/// A pack being filled.
pub struct Packer {
    target: usize,
    bytes: Vec<u8>,
    entries: Vec<HeaderEntry>,
}

/// A complete pack, ready to upload.
pub struct FinishedPack {
    /// BLAKE3 of `bytes`: the pack's name.
    pub id: Id,
    /// The whole pack.
    pub bytes: Vec<u8>,
    /// Its blobs, in order.
    pub entries: Vec<HeaderEntry>,
}

/// A blob compressed and sealed, not yet in a pack.
pub struct SealedBlob {
    /// Its header entry.
    pub entry: HeaderEntry,
    /// The sealed bytes.
    pub bytes: Vec<u8>,
}

/// Compresses (when it helps) and seals one blob's plaintext.
pub fn seal_blob(
    kind: BlobKind,
    id: Id,
    plain: Vec<u8>,
    level: i32,
    crypto: &Crypto,
) -> SealedBlob {
    let raw_len = u32::try_from(plain.len()).expect("blobs are below 4 GiB");
    let (compressed, body) = match compress::compress(&plain, level) {
        Some(c) => (true, c),
        None => (false, plain),
    };
    let bytes = crypto.seal(body);
    let stored_len = u32::try_from(bytes.len()).expect("blobs are below 4 GiB");
    SealedBlob {
        entry: HeaderEntry {
            kind,
            id,
            stored_len,
            raw_len,
            compressed,
        },
        bytes,
    }
}

impl Packer {
    /// An empty packer that reports full at `target` bytes.
    pub fn new(target: usize) -> Self {
        Packer {
            target,
            bytes: Vec::with_capacity(target + target / 4),
            entries: Vec::new(),
        }
    }

    /// Appends a sealed blob.
    pub fn add(&mut self, blob: SealedBlob) {
        self.bytes.extend_from_slice(&blob.bytes);
        self.entries.push(blob.entry);
    }

    /// Compresses, seals and appends a plaintext blob (for tests and small writers).
    pub fn add_plain(
        &mut self,
        kind: BlobKind,
        id: Id,
        plain: Vec<u8>,
        level: i32,
        crypto: &Crypto,
    ) {
        self.add(seal_blob(kind, id, plain, level, crypto));
    }

    /// Whether the pack reached its target size.
    pub fn is_full(&self) -> bool {
        self.bytes.len() >= self.target
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends header and trailer and names the pack.
    pub fn finish(mut self, crypto: &Crypto) -> FinishedPack {
        let tail = pack::encode_tail(&self.entries, crypto);
        self.bytes.extend_from_slice(&tail);
        FinishedPack {
            id: Id::hash(&self.bytes),
            bytes: self.bytes,
            entries: self.entries,
        }
    }

    /// Takes the current pack out, leaving an empty packer with the same target.
    pub fn take(&mut self) -> Packer {
        std::mem::replace(self, Packer::new(self.target))
    }
}
