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

/// Makes room in the empty, reused `buf` for `len` bytes. Room for up to [`REUSE_MAX`] is
/// made at once: a buffer grown to fit each blob in turn moved (and faulted its pages
/// afresh) again and again, half the page faults of an initial backup or a restore.
pub fn reserve_reused(buf: &mut Vec<u8>, len: usize) {
    debug_assert!(buf.is_empty());
    if len > buf.capacity() {
        *buf = Vec::with_capacity(if len <= REUSE_MAX { REUSE_MAX } else { len });
    }
}

/// A buffer of `capacity` bytes for one pack: asks the kernel to back it with 2 MiB pages,
/// so filling it costs a few faults instead of one per 4 KiB (a 16 MiB pack took 4,096).
pub fn pack_buffer(capacity: usize) -> Vec<u8> {
    const HUGE: usize = 2 << 20;
    let v = Vec::with_capacity(capacity);
    let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
    let end = (v.as_ptr() as usize + capacity) & !(HUGE - 1);
    if end > start {
        // SAFETY: the range lies inside the allocation, and MADV_HUGEPAGE changes only how
        // its pages are backed, never their contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
    v
}
