//! The data path from bytes to stored blobs: chunking, compression, encryption, packing.

pub mod chunker;
pub mod compress;
pub mod crypto;
pub mod ingest;

pub use chunker::{Chunker, ChunkerParams};
pub use crypto::{Crypto, KdfParams, KeyFile, MasterKey};
pub use ingest::{Chunking, Ingest};

/// Buffers reused from blob to blob (fresh large buffers cost a page fault per 4 KiB) are
/// kept only up to this capacity, so the memory a run holds does not depend on the largest
/// blob it met.
pub const REUSE_MAX: usize = 2 << 20;

/// Empties `buf` for its next use, or frees it if a large blob made it grow past
/// [`REUSE_MAX`].
pub fn recycle(buf: &mut Vec<u8>) {
    if buf.capacity() > REUSE_MAX {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}
