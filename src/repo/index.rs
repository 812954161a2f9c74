//! The index: which pack holds each blob, where. Index files are written after their packs
//! and before any snapshot that needs them; in memory the index is one sorted array.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::pack::{BlobKind, HeaderEntry, Located};

/// One pack as an index file lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexPack {
    /// The pack's id (BLAKE3 of its bytes).
    pub id: Id,
    /// Its size in bytes.
    pub size: u64,
    /// Its blobs with their offsets.
    pub blobs: Vec<IndexBlob>,
}

/// One blob of an indexed pack.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexBlob {
    /// The header entry.
    pub entry: HeaderEntry,
    /// Offset in the pack.
    pub offset: u32,
}

impl From<Located> for IndexBlob {
    fn from(l: Located) -> Self {
        IndexBlob {
            entry: l.entry,
            offset: l.offset,
        }
    }
}

/// The decoded content of one `index/` object.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IndexFile {
    /// Index format version (1).
    pub version: u32,
    /// Packs described by this file.
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    /// Decodes an opened (decrypted) index object.
    pub fn decode(plain: &[u8]) -> Result<Self> {
        let f: IndexFile = postcard::from_bytes(plain)
            .map_err(|e| Error::corrupt(format!("index file is malformed: {e}")))?;
        if f.version != 1 {
            return Err(Error::corrupt(format!(
                "index file version {} is not supported",
                f.version
            )));
        }
        Ok(f)
    }

    /// Encodes for sealing.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("index serializes")
    }
}

/// Where one blob is: compact, so millions fit in little memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Blob id.
    pub id: Id,
    /// Position of the pack in [`Index::packs`].
    pub pack: u32,
    /// Offset in the pack.
    pub offset: u32,
    /// Sealed length.
    pub stored_len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Data or tree.
    pub kind: BlobKind,
    /// zstd-compressed before sealing.
    pub compressed: bool,
}

impl Entry {
    /// The pack header entry this index entry stands for.
    pub fn header(&self) -> HeaderEntry {
        HeaderEntry {
            kind: self.kind,
            id: self.id,
            stored_len: self.stored_len,
            raw_len: self.raw_len,
            compressed: self.compressed,
        }
    }
}

/// The merged in-memory index of a repository.
#[derive(Default, Clone)]
pub struct Index {
    packs: Vec<(Id, u64)>,
    entries: Vec<Entry>,
}

impl Index {
    /// Builds the index from decoded index files; a blob stored twice keeps one location.
    pub fn from_files(files: impl IntoIterator<Item = IndexFile>) -> Self {
        let mut idx = Index::default();
        for f in files {
            for p in f.packs {
                idx.add_pack(p);
            }
        }
        idx.seal();
        idx
    }

    fn add_pack(&mut self, p: IndexPack) {
        let n = u32::try_from(self.packs.len()).expect("fewer than 4 billion packs");
        self.packs.push((p.id, p.size));
        self.entries.extend(p.blobs.into_iter().map(|b| Entry {
            id: b.entry.id,
            pack: n,
            offset: b.offset,
            stored_len: b.entry.stored_len,
            raw_len: b.entry.raw_len,
            kind: b.entry.kind,
            compressed: b.entry.compressed,
        }));
    }

    fn seal(&mut self) {
        self.entries
            .sort_unstable_by(|a, b| a.id.cmp(&b.id).then(a.pack.cmp(&b.pack)));
        self.entries.dedup_by(|a, b| a.id == b.id);
        self.packs.shrink_to_fit();
        self.entries.shrink_to_fit();
    }

    /// Adds packs written by this process (after they are stored and verified).
    pub fn extend(&mut self, packs: impl IntoIterator<Item = IndexPack>) {
        for p in packs {
            self.add_pack(p);
        }
        self.seal();
    }

    /// Forgets the blobs of packs for which `keep` is false (missing or known damaged), so
    /// that a backup stores those blobs again instead of trusting the index.
    pub fn retain_packs(&mut self, mut keep: impl FnMut(&Id) -> bool) {
        let keep: Vec<bool> = self.packs.iter().map(|(id, _)| keep(id)).collect();
        self.entries.retain(|e| keep[e.pack as usize]);
    }

    /// Looks a blob up.
    pub fn get(&self, id: &Id) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.id.cmp(id))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Whether the blob is indexed.
    pub fn contains(&self, id: &Id) -> bool {
        self.get(id).is_some()
    }

    /// The id and size of pack number `n` of an entry.
    pub fn pack(&self, n: u32) -> (Id, u64) {
        self.packs[n as usize]
    }

    /// All packs with their sizes.
    pub fn packs(&self) -> &[(Id, u64)] {
        &self.packs
    }

    /// All blob entries, sorted by id.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: u8, blobs: &[u8]) -> IndexPack {
        IndexPack {
            id: Id([n; 32]),
            size: 100,
            blobs: blobs
                .iter()
                .enumerate()
                .map(|(i, b)| IndexBlob {
                    offset: i as u32 * 10,
                    entry: HeaderEntry {
                        kind: BlobKind::Data,
                        id: Id([*b; 32]),
                        stored_len: 10,
                        raw_len: 20,
                        compressed: true,
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn encode_decode_and_lookup() {
        let f = IndexFile {
            version: 1,
            packs: vec![pack(1, &[5, 3]), pack(2, &[3, 9])],
        };
        let f = IndexFile::decode(&f.encode()).unwrap();
        let idx = Index::from_files([f]);
        assert_eq!(
            idx.entries().len(),
            3,
            "a blob in two packs is indexed once"
        );
        let e = idx.get(&Id([9; 32])).unwrap();
        assert_eq!(
            (idx.pack(e.pack).0, e.offset, e.raw_len),
            (Id([2; 32]), 10, 20)
        );
        assert!(idx.get(&Id([7; 32])).is_none());
        assert!(IndexFile::decode(b"\x02").is_err());
    }
}
