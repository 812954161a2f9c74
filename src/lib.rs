//! backstop: a backup orchestrator and restore-drill verifier.
//!
//! The library holds every operation; the `backstop` binary parses arguments and prints.
//! Data flows source → [`pipeline`] (chunk, hash, dedup, compress, seal, pack) → [`storage`],
//! into a [`repo`] whose format is documented in `docs/FORMAT.md`; the [`catalog`] keeps
//! history. See `docs/` for the design.

pub mod backup;
pub mod cancel;
pub mod catalog;
pub mod chan;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod forget;
pub mod hooks;
pub mod id;
pub mod interrupt;
pub mod jobs;
pub mod pipeline;
pub mod policy;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod source;
pub mod storage;
pub mod verify;
pub mod wal;

pub use backup::{BackupOptions, BackupOutcome};
pub use cancel::Cancel;
pub use catalog::Catalog;
pub use error::{Error, ErrorKind, Result};
pub use id::Id;
pub use progress::{NoProgress, Progress};
pub use repo::{Repo, Snapshot};
pub use restore::{RestoreOptions, RestoreOutcome};
pub use storage::Storage;
pub use verify::{ReadData, VerifyReport};
