//! How long-running operations report progress: the CLI draws bars, the daemon counts metrics.

/// Receives progress of one operation. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// A new phase starts, with a total in bytes if known.
    fn phase(&self, _name: &str, _total_bytes: Option<u64>) {}
    /// Bytes processed.
    fn bytes(&self, _n: u64) {}
    /// Items (files, packs) processed.
    fn items(&self, _n: u64) {}
    /// The operation is done.
    fn finish(&self) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {}
