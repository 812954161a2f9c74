//! Pack files, written and read here: sealed blobs back to back, then a sealed header listing
//! them, then a trailer. [`Packer`] fills one; [`parse`] and [`open_blob`] read one.
//!
//! ```text
//! blob 0 | blob 1 | … | sealed header | header length (u32 LE) | magic "BKP1"
//! ```
//! The header is a postcard `Vec<HeaderEntry>`; blob offsets are implicit (cumulative).
//! A pack is named by the BLAKE3 hash of all its bytes, so verifying it is re-hashing it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::pipeline::{Crypto, compress};

/// Trailer magic of format v1 packs.
pub const MAGIC: &[u8; 4] = b"BKP1";
/// Trailer length: header length plus magic.
pub const TRAILER_LEN: usize = 8;
/// No blob's plaintext may exceed this (chunks are at most 16 MiB; a tree must fit too).
pub const MAX_BLOB_LEN: u32 = 64 * 1024 * 1024;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobKind {
    /// File content.
    Data,
    /// A directory listing (a [`crate::repo::Tree`]).
    Tree,
}

/// One blob as the pack header lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderEntry {
    /// Data or tree.
    pub kind: BlobKind,
    /// Chunk id: (keyed) BLAKE3 of the plaintext.
    pub id: Id,
    /// Bytes the sealed blob takes in the pack.
    pub stored_len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Whether the plaintext was zstd-compressed before sealing.
    pub compressed: bool,
}

/// A blob located in a pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The header entry.
    pub entry: HeaderEntry,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
}

/// Encodes the tail of a pack (sealed header and trailer) for `entries`.
pub fn encode_tail(entries: &[HeaderEntry], crypto: &Crypto) -> Vec<u8> {
    let header = postcard::to_allocvec(entries).expect("header serializes");
    let mut out = crypto.seal(header);
    let len = u32::try_from(out.len()).expect("pack header below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(MAGIC);
    out
}

/// Parses and checks a whole pack's header; never trusts lengths before checking them.
pub fn parse(pack: &[u8], crypto: &Crypto) -> Result<Vec<Located>> {
    if pack.len() < TRAILER_LEN || &pack[pack.len() - 4..] != MAGIC {
        return Err(Error::corrupt("not a backstop pack (missing trailer)"));
    }
    let len_at = pack.len() - TRAILER_LEN;
    let header_len =
        u32::from_le_bytes(pack[len_at..len_at + 4].try_into().expect("4 bytes")) as usize;
    if header_len > len_at {
        return Err(Error::corrupt("pack header length exceeds the pack"));
    }
    let header_at = len_at - header_len;
    let header = crypto
        .open(&pack[header_at..len_at])
        .map_err(|e| e.context("pack header"))?;
    let entries: Vec<HeaderEntry> = postcard::from_bytes(&header)
        .map_err(|e| Error::corrupt(format!("pack header is malformed: {e}")))?;
    let mut offset = 0usize;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry.raw_len > MAX_BLOB_LEN {
            return Err(Error::corrupt(format!(
                "blob {} claims {} bytes",
                entry.id, entry.raw_len
            )));
        }
        let end = offset
            .checked_add(entry.stored_len as usize)
            .filter(|&e| e <= header_at)
            .ok_or_else(|| Error::corrupt("pack header lists blobs beyond the pack's data"))?;
        out.push(Located {
            offset: offset as u32,
            entry,
        });
        offset = end;
    }
    if offset != header_at {
        return Err(Error::corrupt(
            "pack data and header disagree on the blobs' lengths",
        ));
    }
    Ok(out)
}

/// Turns the stored bytes of one blob back into its plaintext and checks its id.
pub fn open_blob(stored: &[u8], entry: &HeaderEntry, crypto: &Crypto) -> Result<Vec<u8>> {
    Ok(Opener::default().open(stored, entry, crypto)?.to_vec())
}

/// The reusable buffers of one thread that opens blobs: once they have grown to the largest
/// blob, opening allocates nothing (a fresh large buffer costs a page fault per 4 KiB).
#[derive(Default)]
pub struct Opener {
    opened: Vec<u8>,
    plain: Vec<u8>,
}

impl Opener {
    /// [`open_blob`] into this opener's buffers; the plaintext is valid until the next call.
    pub fn open<'a>(
        &'a mut self,
        stored: &'a [u8],
        entry: &HeaderEntry,
        crypto: &Crypto,
    ) -> Result<&'a [u8]> {
        let Opener { opened, plain } = self;
        crate::pipeline::recycle(opened);
        let mut raw = crypto.open_into(stored, opened)?;
        if entry.compressed {
            crate::pipeline::recycle(plain);
            compress::decompress_into(raw, entry.raw_len as usize, plain)?;
            raw = plain;
        }
        check(raw, entry, crypto)?;
        Ok(raw)
    }

    /// [`Opener::open`] of stored bytes the caller may overwrite: decrypted where they lie
    /// (no copy), then decompressed into this opener's buffer if compressed.
    pub fn open_in_place<'a>(
        &'a mut self,
        stored: &'a mut [u8],
        entry: &HeaderEntry,
        crypto: &Crypto,
    ) -> Result<&'a [u8]> {
        let mut raw: &[u8] = crypto.open_in_place(stored)?;
        if entry.compressed {
            crate::pipeline::recycle(&mut self.plain);
            compress::decompress_into(raw, entry.raw_len as usize, &mut self.plain)?;
            raw = &self.plain;
        }
        check(raw, entry, crypto)?;
        Ok(raw)
    }

    /// [`open_blob`] into `out` (cleared first, its capacity kept): for buffers the caller
    /// hands on and later gives back, so that opening allocates nothing.
    pub fn open_to(
        &mut self,
        stored: &[u8],
        entry: &HeaderEntry,
        crypto: &Crypto,
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>> {
        crate::pipeline::recycle(&mut self.opened);
        let raw = crypto.open_into(stored, &mut self.opened)?;
        if entry.compressed {
            compress::decompress_into(raw, entry.raw_len as usize, &mut out)?;
        } else {
            out.clear();
            out.extend_from_slice(raw);
        }
        check(&out, entry, crypto)?;
        Ok(out)
    }
}

/// Checks an opened blob against its header's length and id.
fn check(raw: &[u8], entry: &HeaderEntry, crypto: &Crypto) -> Result<()> {
    if raw.len() != entry.raw_len as usize || crypto.chunk_id(raw) != entry.id {
        return Err(Error::corrupt(format!(
            "blob {} does not match its hash",
            entry.id
        )));
    }
    Ok(())
}

/// Storage path of a pack.
pub fn path(id: &Id) -> String {
    let hex = id.to_hex();
    format!("data/{}/{}", &hex[..2], hex)
}

// Writing packs.
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
    pub bytes: Bytes,
    /// Its blobs, in order.
    pub entries: Vec<HeaderEntry>,
}

impl Packer {
    /// An empty packer that reports full at `target` bytes.
    pub fn new(target: usize) -> Self {
        Packer {
            target,
            bytes: crate::pipeline::pack_buffer(target + target / 4),
            entries: Vec::new(),
        }
    }

    /// Appends a blob sealed already (copied from another pack).
    pub fn add(&mut self, entry: HeaderEntry, sealed: &[u8]) {
        self.bytes.extend_from_slice(sealed);
        self.entries.push(entry);
    }

    /// Seals `body` (a blob of `raw_len` plaintext bytes, zstd-compressed or not) straight
    /// into the pack: no buffer of its own.
    pub fn seal(
        &mut self,
        blob: (BlobKind, Id),
        raw_len: usize,
        compressed: bool,
        body: &[u8],
        crypto: &Crypto,
    ) {
        let at = self.bytes.len();
        crypto.seal_into(body, &mut self.bytes);
        let len = |n: usize| u32::try_from(n).expect("blobs are below 4 GiB");
        self.entries.push(HeaderEntry {
            kind: blob.0,
            id: blob.1,
            stored_len: len(self.bytes.len() - at),
            raw_len: len(raw_len),
            compressed,
        });
    }

    /// Compresses (when it helps), seals and appends a plaintext blob.
    pub fn add_plain(&mut self, kind: BlobKind, id: Id, plain: &[u8], level: i32, crypto: &Crypto) {
        let mut z = Vec::new();
        let compressed = compress::compress_into(plain, level, &mut z);
        let body = if compressed { &z[..] } else { plain };
        self.seal((kind, id), plain.len(), compressed, body, crypto);
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
        let tail = encode_tail(&self.entries, crypto);
        self.bytes.extend_from_slice(&tail);
        FinishedPack {
            id: Id::hash(&self.bytes),
            bytes: Bytes::from(self.bytes),
            entries: self.entries,
        }
    }

    /// Takes the current pack out, leaving an empty packer with the same target.
    pub fn take(&mut self) -> Packer {
        std::mem::replace(self, Packer::new(self.target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::MasterKey;

    fn sample(crypto: &Crypto) -> (Vec<u8>, Vec<Id>) {
        let mut p = Packer::new(1 << 20);
        let mut ids = vec![];
        for (i, data) in [b"alpha".repeat(100), b"beta".to_vec(), vec![]]
            .into_iter()
            .enumerate()
        {
            let kind = if i == 1 {
                BlobKind::Tree
            } else {
                BlobKind::Data
            };
            let id = crypto.chunk_id(&data);
            p.add_plain(kind, id, &data, 3, crypto);
            ids.push(id);
        }
        (p.finish(crypto).bytes.to_vec(), ids)
    }

    #[test]
    fn parse_round_trip_both_cryptos() {
        for crypto in [Crypto::None, Crypto::keyed(&MasterKey::generate())] {
            let (bytes, ids) = sample(&crypto);
            let located = parse(&bytes, &crypto).unwrap();
            assert_eq!(located.iter().map(|l| l.entry.id).collect::<Vec<_>>(), ids);
            let l = &located[0];
            let stored = &bytes[l.offset as usize..(l.offset + l.entry.stored_len) as usize];
            assert_eq!(
                open_blob(stored, &l.entry, &crypto).unwrap(),
                b"alpha".repeat(100)
            );
        }
    }

    #[test]
    fn corrupt_packs_are_errors_not_panics() {
        let crypto = Crypto::None;
        let (bytes, _) = sample(&crypto);
        for cut in 0..bytes.len() {
            let _ = parse(&bytes[..cut], &crypto);
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x55;
            if let Ok(located) = parse(&b, &crypto) {
                for l in located {
                    let end = (l.offset + l.entry.stored_len) as usize;
                    let _ = open_blob(&b[l.offset as usize..end], &l.entry, &crypto);
                }
            }
        }
    }
}
