//! The data path from bytes to stored blobs: chunking, compression, encryption, packing.

pub mod chunker;
pub mod compress;
pub mod crypto;
pub mod ingest;

pub use chunker::{Chunker, ChunkerParams};
pub use crypto::{Crypto, KdfParams, KeyFile, MasterKey};
pub use ingest::{Chunking, Ingest};
