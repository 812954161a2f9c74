//! Snapshot manifests: the last object a backup writes; a snapshot exists iff its manifest does.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

/// Whether a backup re-read everything or trusted its parent for unchanged files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// Every byte of the source was read and hashed.
    Full,
    /// Unchanged files (size, mtime, ctime, inode) were taken from the parent.
    Incremental,
}

impl std::fmt::Display for BackupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        })
    }
}

/// Counters of one backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "snake_case")]
pub struct Summary {
    /// Files in the snapshot.
    pub files: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Files read because they were new or changed (or the backup was full).
    pub files_read: u64,
    /// Files taken unchanged from the parent.
    pub files_unchanged: u64,
    /// Logical bytes of all files in the snapshot.
    pub bytes_total: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Plaintext bytes of chunks that were new to the repository.
    pub bytes_new: u64,
    /// Bytes added to the repository (packs, compressed and sealed).
    pub bytes_stored: u64,
    /// Packs written.
    pub packs: u64,
    /// Warnings (unreadable or changing files).
    pub warnings: u64,
    /// Seconds the backup took.
    pub seconds: f64,
}

/// A snapshot manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Snapshot {
    /// Manifest format version (1).
    pub version: u32,
    /// When the backup started.
    pub time: DateTime<Utc>,
    /// Host it ran on.
    pub hostname: String,
    /// User it ran as.
    pub username: String,
    /// Source kind ("files", "command", …).
    pub source: String,
    /// What was backed up, stable from run to run: parent selection and retention group by
    /// it (with the kind). Empty in older manifests: see [`Snapshot::source_key`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Backed-up paths as given (absolute); for other sources, what they name.
    pub paths: Vec<String>,
    /// Root tree.
    pub tree: Id,
    /// The root directory's own metadata (mode, owner, times, xattrs; no name), applied to
    /// a restore's target when the restore creates it. Absent in older manifests and when
    /// one file was backed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Box<crate::repo::Node>>,
    /// Snapshot used as parent for an incremental backup.
    pub parent: Option<Id>,
    /// Full or incremental.
    pub kind: BackupKind,
    /// Policy that made it, if any.
    pub policy: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// A physical PostgreSQL base backup's first WAL segment (at or before the one its
    /// recovery starts from): archived WAL before it is of no use to this snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_start: Option<String>,
    /// Counters.
    pub summary: Summary,
    /// Program that wrote it.
    pub program: String,
}

impl Snapshot {
    /// Decodes an opened manifest.
    pub fn decode(plain: &[u8]) -> Result<Self> {
        let s: Snapshot = serde_json::from_slice(plain)
            .map_err(|e| Error::corrupt(format!("snapshot manifest is malformed: {e}")))?;
        if s.version != 1 {
            return Err(Error::corrupt(format!(
                "snapshot version {} is not supported",
                s.version
            )));
        }
        Ok(s)
    }

    /// The stable key of what was backed up (for files: host and normalized paths).
    pub fn source_key(&self) -> String {
        if self.key.is_empty() {
            files_key(&self.hostname, &self.paths)
        } else {
            self.key.clone()
        }
    }

    /// Encodes for sealing.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("snapshot serializes")
    }
}

/// The source key of a file backup: the host and the normalized paths, unambiguous.
pub fn files_key(host: &str, paths: &[String]) -> String {
    format!(
        "{host}:{}",
        serde_json::to_string(paths).expect("strings serialize")
    )
}
