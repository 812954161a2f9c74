//! The [`Backend`] over an OpenDAL operator: one constructor per service (`fs` today).
//!
//! Every operator gets OpenDAL's `TimeoutLayer` (a hung request becomes a temporary error)
//! and `ConcurrentLimitLayer` (requests in flight per backend). Retries are not an OpenDAL
//! layer here: see the retry policy in [`crate::storage`]. A new service (SFTP, S3) is a
//! constructor that builds its `Operator` and calls [`OpendalBackend::new`].

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use opendal::Operator;
use opendal::layers::{ConcurrentLimitLayer, TimeoutLayer};

use super::{Backend, BoxFuture, Listed, Meta, StorageOptions};
use crate::error::{Error, Result};

/// A backend served by an OpenDAL operator.
pub struct OpendalBackend {
    op: Operator,
    location: String,
    /// The directory of an `fs` operator: ranges are read from it straight into the
    /// caller's buffer (OpenDAL reads into fresh, zeroed buffers of its own, on a thread
    /// of its blocking pool, and they were then copied).
    local: Option<PathBuf>,
}

impl OpendalBackend {
    /// Wraps `op` (any service) in the timeout and concurrent-limit layers of `opts`.
    pub fn new(op: Operator, location: String, opts: &StorageOptions) -> Self {
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(opts.timeout)
                    .with_io_timeout(opts.timeout),
            )
            .layer(ConcurrentLimitLayer::new(opts.concurrency.max(1)));
        OpendalBackend {
            op,
            location,
            local: None,
        }
    }

    /// A local directory (OpenDAL `fs`). Writes go to `tmp/` and are renamed into place.
    pub fn fs(location: &str, opts: &StorageOptions) -> Result<Self> {
        let root = std::path::absolute(Path::new(location))
            .map_err(|e| Error::io("resolving", location, e))?;
        let tmp = root.join("tmp");
        let root_s = root
            .to_str()
            .ok_or_else(|| Error::config("repository path must be UTF-8"))?;
        let mut builder = opendal::services::Fs::default().root(root_s);
        // A read-only repository without a `tmp/` cannot get one, and needs none: it is
        // opened without (every write fails).
        if tmp.is_dir() || std::fs::create_dir_all(&tmp).is_ok() {
            builder = builder.atomic_write_dir(tmp.to_str().expect("UTF-8 root gives UTF-8 tmp"));
        }
        let op = Operator::new(builder)
            .map_err(|e| Error::from(e).context(format!("opening repository {location}")))?;
        Ok(OpendalBackend {
            local: Some(root.clone()),
            ..Self::new(op, root_s.to_string(), opts)
        })
    }
}

impl OpendalBackend {
    /// A reader of `path` whose output is used piece by piece. A local file is read in
    /// pieces small enough for the allocator to reuse their memory: OpenDAL's own pieces
    /// are 2 MiB, each a fresh mapping that costs a page fault per 4 KiB.
    async fn reader(&self, path: &str) -> Result<opendal::Reader> {
        let mut reader = self.op.reader_with(path);
        if self.op.info().scheme() == "fs" {
            reader = reader.chunk(256 << 10);
        }
        reader.await.map_err(|e| named(e, "reading", path))
    }
}

impl Backend for OpendalBackend {
    fn location(&self) -> &str {
        &self.location
    }

    fn read_range<'a>(&'a self, path: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            if range.is_empty() {
                // OpenDAL reads an empty range as "to the end"; and a missing object must
                // still be reported.
                self.stat(path).await?;
                return Ok(Bytes::new());
            }
            let buf = self
                .op
                .read_with(path)
                .range(range.clone())
                .await
                .map_err(|e| range_error(e, path, &range))?;
            Ok(buf.to_bytes())
        })
    }

    /// A local file in pieces of 256 KiB (see [`OpendalBackend::reader`]).
    fn read_pieces<'a>(
        &'a self,
        path: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        Box::pin(async move {
            if range.is_empty() {
                return Ok(vec![self.read_range(path, range).await?]);
            }
            let buf = self
                .reader(path)
                .await?
                .read(range.clone())
                .await
                .map_err(|e| range_error(e, path, &range))?;
            Ok(buf.collect())
        })
    }

    /// A local file is read with `pread` on the caller's thread, into `buf`'s own memory
    /// (grown, and so zeroed, only where it is too short); the caller is on a thread of its
    /// own ([`super::Storage::read_range_into`]).
    fn read_range_into<'a>(
        &'a self,
        path: &'a str,
        range: Range<u64>,
        buf: &'a mut Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        let Some(root) = &self.local else {
            return Box::pin(super::pieces_into(self, path, range, buf));
        };
        Box::pin(async move {
            use std::os::unix::fs::FileExt;
            let io = |e| named(opendal::raw::new_std_io_error(e), "reading", path);
            let file = std::fs::File::open(root.join(path)).map_err(io)?;
            let len = usize::try_from(range.end.saturating_sub(range.start))
                .map_err(|_| Error::corrupt(format!("{path}: range {range:?} is too long")))?;
            buf.resize(len, 0);
            let mut got = 0;
            while got < len {
                match file.read_at(&mut buf[got..], range.start + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io(e)),
                }
            }
            buf.truncate(got);
            if got < len {
                // Objects are written whole and renamed into place: a short file stays short.
                return Err(Error::corrupt(format!(
                    "{path} is truncated: bytes {}..{} are past its end",
                    range.start + got as u64,
                    range.end
                )));
            }
            Ok(())
        })
    }

    /// One request, not stat + range: on an object store that halves the latency of every
    /// whole read. The length is still checked against the service's own record: OpenDAL
    /// fails an HTTP body shorter than its `Content-Length`, and a local file is read to its
    /// end.
    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let buf = self
                .op
                .read(path)
                .await
                .map_err(|e| named(e, "reading", path))?;
            Ok(buf.to_bytes())
        })
    }

    fn write<'a>(&'a self, path: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let res = async {
                let mut w = self.op.writer(path).await?;
                let res = match w.write(bytes).await {
                    Ok(()) => w.close().await.map(|_| ()),
                    Err(e) => Err(e),
                };
                // A failed write removes its temporary object (OpenDAL's one-shot write
                // leaves it behind, e.g. on a full disk): failures leave nothing behind.
                if res.is_err()
                    && let Err(e) = w.abort().await
                {
                    tracing::debug!("aborting the write of {path}: {e}");
                }
                res
            }
            .await;
            res.map_err(|e| named(e, "writing", path))
        })
    }

    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>> {
        Box::pin(async move {
            let entries = match self.op.list_with(dir).recursive(true).await {
                Ok(e) => e,
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(vec![]),
                Err(e) => return Err(named(e, "listing", dir)),
            };
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                if e.metadata().is_dir() {
                    continue;
                }
                let meta = e.metadata();
                // Some services list names only: ask for what the listing left out.
                let (size, modified) = if meta.last_modified().is_none() {
                    let m = self.stat(e.path()).await?;
                    (m.size, m.modified)
                } else {
                    (meta.content_length(), timestamp(meta))
                };
                out.push(Listed {
                    path: e.path().to_string(),
                    size,
                    modified,
                });
            }
            Ok(out)
        })
    }

    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Meta>> {
        Box::pin(async move {
            let m = self
                .op
                .stat(path)
                .await
                .map_err(|e| named(e, "checking", path))?;
            Ok(Meta {
                size: m.content_length(),
                modified: timestamp(&m),
            })
        })
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.op
                .delete(path)
                .await
                .map_err(|e| named(e, "deleting", path))
        })
    }
}

fn timestamp(m: &opendal::Metadata) -> Option<chrono::DateTime<chrono::Utc>> {
    m.last_modified()
        .map(|t| std::time::SystemTime::from(t).into())
}

/// A backstop error for an OpenDAL error while doing `action` to `path`: one sentence,
/// permanent where retrying cannot help, "missing" for a missing object.
/// A failed range read: past the end is corruption (an object shorter than its record
/// says: an index entry, a pack header), the rest as [`named`].
fn range_error(e: opendal::Error, path: &str, range: &Range<u64>) -> Error {
    if e.kind() == opendal::ErrorKind::RangeNotSatisfied {
        return Error::corrupt(format!(
            "{path} is truncated: bytes {}..{} are past its end",
            range.start, range.end
        ));
    }
    named(e, "reading", path)
}

pub(crate) fn named(e: opendal::Error, action: &str, path: &str) -> Error {
    let not_found = e.kind() == opendal::ErrorKind::NotFound;
    let mut err = Error::from(e).context(format!("{action} {path}"));
    if super::refuses_writes(&err) || has_os_error(&err, &[libc::ENOSPC, libc::EDQUOT]) {
        // Retrying cannot help: the operator has to act.
        err.set_temporary(false);
    }
    if not_found {
        Error::corrupt(format!("{path} is missing"))
            .with_source(err)
            .not_found()
    } else {
        err
    }
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
