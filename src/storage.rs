//! Storage: a small [`Backend`] trait, the wrappers stacked on it, and the [`Storage`]
//! handle the rest of the code uses.
//!
//! # The trait
//!
//! A [`Backend`] has five required operations — read a byte range, write a whole object,
//! list a directory (recursively, with size and modification time), stat, delete — and
//! provided defaults for the rest (read whole = stat + read range, exists = stat; a service
//! overrides a default where it can do better, e.g. a whole read in one request). Its
//! methods are async (boxed futures, so `Arc<dyn Backend>` works) and usable from tokio
//! tasks. Paths are relative to the repository root, `/`-separated.
//!
//! Contract every backend keeps (checked by the conformance suite,
//! `tests/integration/storage.rs`, run against every backend and under every fault kind):
//! - a write is atomic: the object appears complete or not at all; writing again replaces it;
//! - reading a missing object is an error with [`Error::is_not_found`];
//! - listing a missing or empty directory is an empty list, never an error, and lists
//!   objects only (no directories), each with its size and, if the service knows it, its
//!   modification time;
//! - deleting a missing object succeeds;
//! - errors say whether a retry may help ([`Error::is_temporary`]).
//!
//! # Implementations and wrappers
//!
//! | type | what it adds |
//! |---|---|
//! | [`operator::OpendalBackend`] | the service: an OpenDAL [`opendal::Operator`] (`fs` today) with OpenDAL's timeout and concurrent-limit layers |
//! | [`faults::Faulty`] | fault injection and latency, configured by the caller with a [`faults::Faults`] value (the CLI parses `BACKSTOP_FAULTS`) |
//! | [`dry_run::DryRun`] | writes and deletes are logged as "would write …" / "would delete …" and not done |
//! | [`cache::MetaCache`] | reads of immutable, content-addressed metadata (`index/`, `snapshots/`) served from memory, bounded, verified against their names before being kept |
//! | [`retry::Retry`] | the one retry policy ([`retry::RetryPolicy`]): exponential backoff with jitter, for errors that are temporary |
//!
//! [`Storage::open_with`] stacks them, outermost first: retry → cache → dry run → faults →
//! service. Retry is outermost so that injected faults and short reads are retried like
//! real ones; the cache sits above dry run and faults but only keeps bytes that hash to
//! their object's name, so a corrupted read is never cached.
//!
//! Adding a service (SFTP, S3) is one constructor in [`operator`] that builds its OpenDAL
//! operator, and one case in [`Storage::open_with`]'s location parsing; the wrappers and
//! the conformance suite apply unchanged.
//!
//! # Retry policy
//!
//! One place: [`retry::Retry`], with [`retry::RetryPolicy`] (default 6 attempts, 20 ms
//! doubling to at most 2 s, full jitter). What is temporary is decided once, when an error
//! is made: OpenDAL's `is_temporary()`, except that a read-only file system, a permission
//! refusal, a full disk and an exhausted quota are permanent (OpenDAL's `fs` counts them as
//! temporary, and retrying them only delays the operator's fix), and a missing object is
//! permanent. A read that returns fewer bytes than asked for, or than the object's stat
//! says, is temporary (a truncated transfer). OpenDAL's own `RetryLayer` is not stacked
//! under it: it would multiply the attempts and cannot see faults and short reads that are
//! detected above it. Above the storage, [`Storage::write_verified`] writes again an object
//! that does not read back intact, and `Repo::read_object` reads again an object that does
//! not match its hash: integrity checks, not transport retries.
//!
//! # Threads and tasks
//!
//! The engines are threads; storage is async. [`Storage`] has blocking methods (which
//! `block_on` the runtime handle, so they must not be called from inside an async task) and
//! async ones (`*_async`, [`Storage::read_many`]) for tasks. Each backend has a concurrency
//! limit ([`StorageOptions::concurrency`]): OpenDAL's `ConcurrentLimitLayer` bounds the
//! requests in flight, and [`Storage::read_many`] keeps at most that many reads going.

pub mod cache;
pub mod dry_run;
pub mod faults;
pub mod operator;
pub mod retry;

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Handle;

use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;

/// A boxed future, so that [`Backend`] is object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a stat or a listing says about an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, if the service reports it.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
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

/// A place objects are stored: five operations, the rest provided.
pub trait Backend: Send + Sync + 'static {
    /// Where it points, for messages.
    fn location(&self) -> &str;

    /// Reads `range` of the object at `path`. May return fewer bytes than asked for when the
    /// object is shorter; callers that need exactly the range check (the retry wrapper does).
    fn read_range<'a>(&'a self, path: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>>;

    /// Writes a whole object, atomically, replacing any object of that name.
    fn write<'a>(&'a self, path: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<()>>;

    /// Lists the objects under `dir` (recursively, objects only); a missing directory is empty.
    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>>;

    /// Size and modification time of an object; a missing one is a not-found error.
    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Meta>>;

    /// Deletes an object; deleting a missing one succeeds.
    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Reads a whole object, checked against the length its stat reports (a shorter read is
    /// a temporary error: a truncated transfer).
    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let len = self.stat(path).await?.size;
            let data = self.read_range(path, 0..len).await?;
            if data.len() as u64 != len {
                return Err(short_read(path, data.len() as u64, len));
            }
            Ok(data)
        })
    }

    /// [`Backend::read_range`] as the pieces the service returned, not copied into one
    /// buffer (a service may return a long range in pieces).
    fn read_pieces<'a>(
        &'a self,
        path: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        Box::pin(async move { Ok(vec![self.read_range(path, range).await?]) })
    }

    /// [`Backend::read_range`] into `buf` (cleared first, its memory kept): a caller reading
    /// many ranges keeps one buffer. By default through [`Backend::read_pieces`]; a local
    /// directory reads straight into it.
    fn read_range_into<'a>(
        &'a self,
        path: &'a str,
        range: Range<u64>,
        buf: &'a mut Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(pieces_into(self, path, range, buf))
    }

    /// Whether an object exists.
    fn exists<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match self.stat(path).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_not_found() => Ok(false),
                Err(e) => Err(e),
            }
        })
    }
}

/// [`Backend::read_range_into`] through [`Backend::read_pieces`].
pub(crate) async fn pieces_into<B: Backend + ?Sized>(
    b: &B,
    path: &str,
    range: Range<u64>,
    buf: &mut Vec<u8>,
) -> Result<()> {
    fill(buf, b.read_pieces(path, range).await?);
    Ok(())
}

/// Puts `pieces` into `buf`, in place of what it held.
pub(crate) fn fill(buf: &mut Vec<u8>, pieces: Vec<Bytes>) {
    buf.clear();
    for p in pieces {
        buf.extend_from_slice(&p);
    }
}

/// The error for a read that returned `got` bytes where `want` were expected.
pub(crate) fn short_read(path: &str, got: u64, want: u64) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("{path} is truncated: read {got} of {want} bytes"),
    )
    .temporary()
}

/// How an operation that only reads treats repository locks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Locking {
    /// Reading operations take no lock at all (`--no-lock`); writing ones refuse to run.
    pub no_lock: bool,
    /// How long a lock is valid without refresh (see [`crate::repo::lock`]).
    pub ttl: Option<Duration>,
}

/// How to build a [`Storage`]: which wrappers, which limits. Resolved by the caller (the
/// CLI reads the environment); the library reads none.
#[derive(Debug)]
pub struct StorageOptions {
    /// Requests in flight at once, per backend.
    pub concurrency: usize,
    /// How long one request may take before it fails (temporarily).
    pub timeout: Duration,
    /// Retry policy.
    pub retry: retry::RetryPolicy,
    /// Faults and latency to inject (tests and drills of failure handling); shared, so the
    /// caller can count what was injected.
    pub faults: Option<Arc<faults::Faults>>,
    /// Log writes and deletes instead of doing them.
    pub dry_run: bool,
    /// Bytes of immutable metadata kept in memory (0: no cache).
    pub cache_bytes: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            concurrency: 64,
            timeout: Duration::from_secs(120),
            retry: retry::RetryPolicy::default(),
            faults: None,
            dry_run: false,
            cache_bytes: 64 << 20,
        }
    }
}

/// A repository's storage: the wrapped backend, a runtime to drive it, lock settings.
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn Backend>,
    rt: Handle,
    concurrency: usize,
    retry: retry::RetryPolicy,
    locking: Locking,
}

impl Storage {
    /// Opens the storage at `location` (a local directory path for now) with default options.
    pub fn open(location: &str, rt: Handle) -> Result<Self> {
        Self::open_with(location, rt, StorageOptions::default())
    }

    /// Opens the storage at `location` with `opts`: the service, then its wrappers.
    pub fn open_with(location: &str, rt: Handle, opts: StorageOptions) -> Result<Self> {
        if location.contains("://") {
            return Err(Error::config(format!(
                "repository '{location}': only local paths are supported in this version"
            )));
        }
        let service = operator::OpendalBackend::fs(location, &opts)?;
        Ok(Self::from_backend(Arc::new(service), rt, opts))
    }

    /// Stacks the wrappers `opts` asks for on `service` (see the module docs for the order).
    pub fn from_backend(service: Arc<dyn Backend>, rt: Handle, opts: StorageOptions) -> Self {
        let mut b: Arc<dyn Backend> = service;
        if let Some(f) = opts.faults {
            b = Arc::new(faults::Faulty::new(b, f));
        }
        if opts.dry_run {
            b = Arc::new(dry_run::DryRun::new(b));
        }
        if opts.cache_bytes > 0 {
            b = Arc::new(cache::MetaCache::new(b, opts.cache_bytes));
        }
        b = Arc::new(retry::Retry::new(b, opts.retry));
        Storage {
            backend: b,
            rt,
            concurrency: opts.concurrency.max(1),
            retry: opts.retry,
            locking: Locking::default(),
        }
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
        self.backend.location()
    }

    /// The wrapped backend, for async callers that manage their own tasks.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Requests this backend takes at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// How many objects are worth writing at once (more for high-latency remote storage).
    pub fn write_concurrency(&self) -> usize {
        1
    }

    /// Reads a whole object (its length checked against the storage's own record).
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.rt
            .block_on(self.backend.read(path))
            .map(|b| b.to_vec())
    }

    /// Reads a whole object, from a task.
    pub async fn read_async(&self, path: &str) -> Result<Bytes> {
        self.backend.read(path).await
    }

    /// Reads many whole objects, at most [`Storage::concurrency`] at once; the results are in
    /// the order of `paths`.
    pub async fn read_many_async(&self, paths: &[String]) -> Vec<Result<Bytes>> {
        let mut out: Vec<Option<Result<Bytes>>> = (0..paths.len()).map(|_| None).collect();
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while next < paths.len() && tasks.len() < self.concurrency {
                let (b, p, i) = (self.backend.clone(), paths[next].clone(), next);
                tasks.spawn(async move { (i, b.read(&p).await) });
                next += 1;
            }
            match tasks.join_next().await {
                Some(Ok((i, r))) => out[i] = Some(r),
                Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
                None => break,
            }
        }
        out.into_iter()
            .map(|r| r.expect("every read finished"))
            .collect()
    }

    /// Reads many whole objects in parallel (blocking); results in the order of `paths`.
    pub fn read_many(&self, paths: &[String]) -> Vec<Result<Vec<u8>>> {
        self.rt
            .block_on(self.read_many_async(paths))
            .into_iter()
            .map(|r| r.map(|b| b.to_vec()))
            .collect()
    }

    /// Reads a content-addressed object and checks it against its name `id`; an object that
    /// does not match (a corrupted transfer) is read again, as often as the retry policy
    /// allows, before it counts as corrupt.
    pub fn read_verified(&self, path: &str, id: &Id) -> Result<Vec<u8>> {
        self.rt
            .block_on(self.read_verified_async(path, id, None))
            .map(|b| b.to_vec())
    }

    /// [`Storage::read_verified`], from a task; `first` is bytes already read, if any.
    async fn read_verified_async(
        &self,
        path: &str,
        id: &Id,
        first: Option<Bytes>,
    ) -> Result<Bytes> {
        let mut next = first;
        for n in 1..=self.retry.attempts.max(1) {
            let bytes = match next.take() {
                Some(b) => b,
                None => self.backend.read(path).await?,
            };
            if Id::hash(&bytes) == *id {
                return Ok(bytes);
            }
            if n < self.retry.attempts {
                tracing::info!(
                    "retrying {path} after a transient error: it does not match its hash"
                );
                tokio::time::sleep(self.retry.delay(n)).await;
            }
        }
        Err(Error::corrupt(format!("{path} does not match its hash")))
    }

    /// [`Storage::read_verified`] for many objects, at most [`Storage::concurrency`] at
    /// once; results in the order of `objects`.
    pub fn read_many_verified(&self, objects: &[(String, Id)]) -> Vec<Result<Vec<u8>>> {
        let paths: Vec<String> = objects.iter().map(|(p, _)| p.clone()).collect();
        self.rt.block_on(async {
            let read = self.read_many_async(&paths).await;
            let mut out = Vec::with_capacity(read.len());
            for ((path, id), r) in objects.iter().zip(read) {
                out.push(match r {
                    Ok(b) => self
                        .read_verified_async(path, id, Some(b))
                        .await
                        .map(|b| b.to_vec()),
                    Err(e) => Err(e),
                });
            }
            out
        })
    }

    /// Reads `range` of an object; a short read is retried, then reported as truncation.
    pub fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        self.rt.block_on(self.backend.read_range(path, range))
    }

    /// Reads `range` of an object into `buf` (cleared first, its memory kept): a caller
    /// reading many ranges keeps one buffer, where a new one per range (above the
    /// allocator's mmap threshold) costs a page fault per 4 KiB. From the caller's own
    /// thread: a local directory is read on it.
    pub fn read_range_into(&self, path: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        self.rt
            .block_on(self.backend.read_range_into(path, range, buf))
    }

    /// Reads `range` of an object, from a task.
    pub async fn read_range_async(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        self.backend.read_range(path, range).await
    }

    /// Writes a whole object (atomically: it appears complete or not at all). Transient
    /// failures are retried; rewriting is safe because objects are content-addressed.
    /// A failed write removes its temporary object, so failures leave nothing for prune.
    pub fn write(&self, path: &str, bytes: impl Into<Bytes>) -> Result<()> {
        self.rt.block_on(self.backend.write(path, bytes.into()))
    }

    /// Writes a whole object, from a task (uploads of several packs overlap this way).
    pub async fn write_async(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.backend.write(path, bytes).await
    }

    /// Writes a content-addressed object, then reads it back and checks it; an object that
    /// does not read back intact is written again (as often as the retry policy allows).
    /// `id` is the BLAKE3 hash of `bytes`, computed by the caller from these bytes: the
    /// read-back is compared with them byte for byte, which proves the stored object hashes
    /// to `id` at the cost of a comparison instead of a second hash (docs/DECISIONS.md).
    pub fn write_verified(&self, path: &str, bytes: Bytes, id: &Id) -> Result<()> {
        self.rt.block_on(self.write_verified_async(path, bytes, id))
    }

    /// [`Storage::write_verified`], from a task.
    pub async fn write_verified_async(&self, path: &str, bytes: Bytes, id: &Id) -> Result<()> {
        debug_assert_eq!(
            Id::hash(&bytes),
            *id,
            "{path}: id is not the hash of its bytes"
        );
        let mut last = None;
        for _ in 0..self.retry.attempts.max(1) {
            self.backend.write(path, bytes.clone()).await?; // shares the buffer, no copy
            crate::failpoint::hit("after-object-write");
            match self.reads_back_as(path, &bytes).await {
                Ok(true) => return Ok(()),
                Ok(false) => {
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
            .expect("at least one attempt")
            .context("verifying after upload"))
    }

    /// Whether the stored object holds exactly `want`, read a few MiB at a time.
    async fn reads_back_as(&self, path: &str, want: &[u8]) -> Result<bool> {
        let len = want.len() as u64;
        let size = self.backend.stat(path).await?.size;
        if size != len {
            return Err(Error::corrupt(format!(
                "{path} has {size} bytes, expected {len}"
            )));
        }
        const STEP: u64 = 4 << 20;
        let mut at = 0;
        while at < len {
            let end = (at + STEP).min(len);
            for piece in self.backend.read_pieces(path, at..end).await? {
                let n = piece.len();
                if n == 0 || want.get(at as usize..at as usize + n) != Some(&piece[..]) {
                    return Ok(false);
                }
                at += n as u64;
            }
            if at != end {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Streams an object of `len` bytes through BLAKE3, a few MiB at a time.
    pub fn hash(&self, path: &str, len: u64) -> Result<Id> {
        self.rt.block_on(self.hash_async(path, len))
    }

    async fn hash_async(&self, path: &str, len: u64) -> Result<Id> {
        let size = self.backend.stat(path).await?.size;
        if size != len {
            return Err(Error::corrupt(format!(
                "{path} has {size} bytes, expected {len}"
            )));
        }
        const STEP: u64 = 4 << 20;
        let mut hasher = blake3::Hasher::new();
        let mut at = 0;
        while at < len {
            let end = (at + STEP).min(len);
            for piece in self.backend.read_pieces(path, at..end).await? {
                hasher.update(&piece);
            }
            at = end;
        }
        Ok(Id(*hasher.finalize().as_bytes()))
    }

    /// The size of an object.
    pub fn size(&self, path: &str) -> Result<u64> {
        Ok(self.stat(path)?.size)
    }

    /// Size and modification time of an object.
    pub fn stat(&self, path: &str) -> Result<Meta> {
        self.rt.block_on(self.backend.stat(path))
    }

    /// Lists the objects under `dir` (recursively), skipping directories.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        self.rt.block_on(self.backend.list(dir))
    }

    /// Whether an object exists.
    pub fn exists(&self, path: &str) -> Result<bool> {
        self.rt.block_on(self.backend.exists(path))
    }

    /// Deletes an object (no error if it is already gone).
    pub fn delete(&self, path: &str) -> Result<()> {
        self.rt.block_on(self.backend.delete(path))
    }
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
