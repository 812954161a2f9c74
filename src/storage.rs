//! Every storage call goes through here: OpenDAL operators built from a target location,
//! with retries for transient faults and a blocking facade for the (threaded) engines.
//!
//! The engines are synchronous and parallel with threads; storage is async (OpenDAL). A
//! [`Storage`] holds a tokio runtime handle and blocks on it, so it must not be called from
//! inside an async task (use `spawn_blocking`).

pub mod faults;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use faults::{Fault, Faults};

use opendal::Operator;
use opendal::layers::RetryLayer;
use tokio::runtime::Handle;

use crate::error::{Error, ErrorKind, Result};
use crate::repo::Id;

/// A repository's storage: one OpenDAL operator and where it points.
#[derive(Clone)]
pub struct Storage {
    op: Operator,
    /// The same operator without OpenDAL's retry layer, for writes: OpenDAL counts a
    /// read-only file system or a full disk as temporary and would retry them for ~40 s;
    /// writes are retried by [`Storage::retry`], which knows those are permanent.
    raw: Operator,
    rt: Handle,
    location: String,
    faults: Option<Arc<Faults>>,
    locking: Locking,
}

/// How an operation that only reads treats repository locks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Locking {
    /// Reading operations take no lock at all (`--no-lock`); writing ones refuse to run.
    pub no_lock: bool,
    /// How long a lock is valid without refresh (see [`crate::repo::lock`]).
    pub ttl: Option<std::time::Duration>,
}

/// One object found by a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Path relative to the repository root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, as the storage reports it (if it does).
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

impl Storage {
    /// Opens the storage at `location` (a local directory path for now).
    pub fn open(location: &str, rt: Handle) -> Result<Self> {
        if location.contains("://") {
            return Err(Error::config(format!(
                "repository '{location}': only local paths are supported in this version"
            )));
        }
        let root = absolute(Path::new(location))?;
        let tmp = root.join("tmp");
        let root_s = root
            .to_str()
            .ok_or_else(|| Error::config("repository path must be UTF-8"))?;
        let mut builder = opendal::services::Fs::default().root(root_s);
        // Writes go to `tmp/` and are renamed into place. A read-only repository without a
        // `tmp/` cannot get one, and needs none: it is opened without (every write fails).
        if tmp.is_dir() || std::fs::create_dir_all(&tmp).is_ok() {
            builder = builder.atomic_write_dir(tmp.to_str().expect("UTF-8 root gives UTF-8 tmp"));
        }
        let raw = Operator::new(builder)
            .map_err(|e| Error::from(e).context(format!("opening repository {location}")))?;
        let op = raw
            .clone()
            .layer(RetryLayer::new().with_max_times(4).with_jitter());
        Ok(Storage {
            op,
            raw,
            rt,
            location: root_s.to_string(),
            faults: Faults::from_env()?.map(Arc::new),
            locking: Locking::default(),
        })
    }

    /// The same storage with other lock settings.
    pub fn with_locking(mut self, locking: Locking) -> Self {
        self.locking = locking;
        self
    }

    /// The lock settings.
    pub fn locking(&self) -> Locking {
        self.locking
    }

    /// Where the storage points, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// How many objects are worth writing at once (more for high-latency remote storage).
    pub fn write_concurrency(&self) -> usize {
        1
    }

    /// Reads a whole object (its length checked against the storage's own record).
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.retry(path, || {
            let len = self.size(path)?;
            self.fault(path, Fault::ReadError)?;
            let buf = self
                .rt
                .block_on(self.op.read(path))
                .map_err(|e| named(e, "reading", path))?;
            let data = self.corrupt(path, buf.to_vec());
            if data.len() as u64 != len {
                return Err(
                    Error::new(ErrorKind::Storage, format!("short read of {path}")).temporary(),
                );
            }
            Ok(data)
        })
    }

    /// Reads `range` of an object; a short read is retried, then reported as truncation.
    pub fn read_range(&self, path: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let want = range.end - range.start;
        let res = self.retry(path, || {
            self.fault(path, Fault::ReadError)?;
            let buf = self
                .rt
                .block_on(async { self.op.read_with(path).range(range.clone()).await })
                .map_err(|e| named(e, "reading", path))?;
            let data = self.corrupt(path, buf.to_vec());
            if data.len() as u64 != want {
                return Err(
                    Error::new(ErrorKind::Corrupt, format!("{path} is truncated")).temporary(),
                );
            }
            Ok(data)
        });
        res.map_err(|mut e| {
            e.set_temporary(false);
            e
        })
    }

    /// Writes a whole object (atomically: it appears complete or not at all). Transient
    /// failures are retried; rewriting is safe because objects are content-addressed.
    /// A failed write removes its temporary object (OpenDAL's one-shot write leaves it
    /// behind, e.g. on a full disk), so failures leave nothing for prune to find.
    pub fn write(&self, path: &str, bytes: impl Into<bytes::Bytes>) -> Result<()> {
        let bytes = bytes.into();
        self.retry(path, || {
            self.fault(path, Fault::WriteError)?;
            self.rt
                .block_on(async {
                    let mut w = self.raw.writer(path).await?;
                    let res = match w.write(bytes.clone()).await {
                        Ok(()) => w.close().await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    if res.is_err()
                        && let Err(e) = w.abort().await
                    {
                        // Also when no temporary object was ever created.
                        tracing::debug!("aborting the write of {path}: {e}");
                    }
                    res
                })
                .map_err(|e| named(e, "writing", path))?;
            self.fault(path, Fault::WriteTimeout)
        })
    }

    /// Writes a content-addressed object, then reads it back and checks its BLAKE3 hash;
    /// an object that does not read back intact is written again (a few times at most).
    pub fn write_verified(&self, path: &str, bytes: Vec<u8>, id: &Id) -> Result<()> {
        let len = bytes.len() as u64;
        let bytes = bytes::Bytes::from(bytes);
        let mut last = None;
        for _ in 0..3 {
            self.write(path, bytes.clone())?; // shares the buffer, no copy
            crate::failpoint::hit("after-object-write");
            match self.hash(path, len) {
                Ok(h) if h == *id => return Ok(()),
                Ok(_) => {
                    tracing::info!(
                        "retrying {path} after a transient error: read-back does not match what was written"
                    );
                    last = Some(Error::new(
                        ErrorKind::Storage,
                        format!("{path}: read-back does not match what was written"),
                    ))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .expect("three attempts")
            .context("verifying after upload"))
    }

    /// Streams an object of `len` bytes through BLAKE3, a few MiB at a time.
    pub fn hash(&self, path: &str, len: u64) -> Result<Id> {
        const STEP: u64 = 4 << 20;
        let size = self.size(path)?;
        if size != len {
            return Err(Error::corrupt(format!(
                "{path} has {size} bytes, expected {len}"
            )));
        }
        let mut hasher = blake3::Hasher::new();
        let mut at = 0;
        while at < len {
            let end = (at + STEP).min(len);
            hasher.update(&self.read_range(path, at..end)?);
            at = end;
        }
        Ok(Id(*hasher.finalize().as_bytes()))
    }

    /// The size of an object.
    pub fn size(&self, path: &str) -> Result<u64> {
        self.retry(path, || {
            Ok(self
                .rt
                .block_on(self.op.stat(path))
                .map_err(|e| named(e, "checking", path))?
                .content_length())
        })
    }

    /// Lists the objects under `dir` (recursively), skipping directories.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let entries = self.retry(dir, || {
            match self
                .rt
                .block_on(async { self.op.list_with(dir).recursive(true).await })
            {
                Ok(e) => Ok(e),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(vec![]),
                Err(e) => Err(named(e, "listing", dir)),
            }
        })?;
        let lag = |e: &opendal::Entry| {
            self.faults
                .as_ref()
                .is_some_and(|f| f.strikes(Fault::ListLag, e.path()))
        };
        Ok(entries
            .into_iter()
            .filter(|e| !e.metadata().is_dir() && !lag(e))
            .map(|e| Listed {
                size: e.metadata().content_length(),
                modified: e
                    .metadata()
                    .last_modified()
                    .map(|t| std::time::SystemTime::from(t).into()),
                path: e.path().to_string(),
            })
            .collect())
    }

    /// Whether an object exists.
    pub fn exists(&self, path: &str) -> Result<bool> {
        self.retry(path, || {
            self.rt
                .block_on(self.op.exists(path))
                .map_err(|e| named(e, "checking", path))
        })
    }

    /// Deletes an object (no error if it is already gone).
    pub fn delete(&self, path: &str) -> Result<()> {
        self.retry(path, || {
            self.rt
                .block_on(self.op.delete(path))
                .map_err(|e| named(e, "deleting", path))
        })
    }

    /// Runs `op`, retrying transient errors with backoff (on top of OpenDAL's own retries).
    fn retry<T>(&self, path: &str, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut wait = std::time::Duration::from_millis(20);
        for attempt in 1.. {
            match op() {
                Err(e) if e.is_temporary() && attempt < 6 => {
                    tracing::info!(
                        "retrying {path} after a transient error: {}",
                        crate::error::chain(&e)
                    );
                    std::thread::sleep(wait);
                    wait *= 2;
                }
                r => return r,
            }
        }
        unreachable!("the loop returns")
    }

    fn fault(&self, path: &str, fault: Fault) -> Result<()> {
        match &self.faults {
            Some(f) if f.strikes(fault, path) => Err(Faults::error(fault, path)),
            _ => Ok(()),
        }
    }

    fn corrupt(&self, path: &str, data: Vec<u8>) -> Vec<u8> {
        match &self.faults {
            Some(f) => f.corrupt_read(path, data),
            None => data,
        }
    }
}

fn named(e: opendal::Error, action: &str, path: &str) -> Error {
    let not_found = e.kind() == opendal::ErrorKind::NotFound;
    let mut err = Error::from(e).context(format!("{action} {path}"));
    if refuses_writes(&err) || has_os_error(&err, &[libc::ENOSPC, libc::EDQUOT]) {
        // Retrying cannot help: the operator has to act.
        err.set_temporary(false);
    }
    if not_found {
        Error::corrupt(format!("{path} is missing")).with_source(err)
    } else {
        err
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io("resolving", p, e))
}

/// Whether an I/O error with one of `codes` is among `e`'s causes.
fn has_os_error(e: &Error, codes: &[i32]) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|c| codes.contains(&c))
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// Whether `e` says the storage refuses writes (read-only file system, permission denied):
/// the one failure that lets a reading operation go on without a lock.
pub fn refuses_writes(e: &Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && (io.raw_os_error() == Some(libc::EROFS)
                || io.raw_os_error() == Some(libc::EACCES)
                || io.raw_os_error() == Some(libc::EPERM)
                || matches!(
                    io.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ))
        {
            return true;
        }
        if let Some(o) = c.downcast_ref::<opendal::Error>()
            && o.kind() == opendal::ErrorKind::PermissionDenied
        {
            return true;
        }
        cur = c.source();
    }
    false
}
