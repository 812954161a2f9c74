//! Dry run: a [`Backend`] wrapper that reads for real and only logs what it would change.
//!
//! Writes and deletes are logged at info level as `would write PATH (N bytes)` and
//! `would delete PATH`, and succeed without touching the storage. Reads see the storage as
//! it is, so an operation that reads back what it wrote cannot run under a dry run; the
//! engines' own dry-run modes (prune, forget) decide without writing and are unaffected.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::{Backend, BoxFuture, Listed, Meta};
use crate::error::Result;

/// A backend that does not change anything.
pub struct DryRun {
    inner: Arc<dyn Backend>,
}

impl DryRun {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        DryRun { inner }
    }
}

impl Backend for DryRun {
    fn location(&self) -> &str {
        self.inner.location()
    }

    fn read_range<'a>(&'a self, path: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>> {
        self.inner.read_range(path, range)
    }

    fn write<'a>(&'a self, path: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            tracing::info!("would write {path} ({} bytes)", bytes.len());
            Ok(())
        })
    }

    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>> {
        self.inner.list(dir)
    }

    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Meta>> {
        self.inner.stat(path)
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            tracing::info!("would delete {path}");
            Ok(())
        })
    }

    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Bytes>> {
        self.inner.read(path)
    }

    fn read_pieces<'a>(
        &'a self,
        path: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        self.inner.read_pieces(path, range)
    }

    fn read_range_into<'a>(
        &'a self,
        path: &'a str,
        range: Range<u64>,
        buf: &'a mut Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.read_range_into(path, range, buf)
    }

    fn exists<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<bool>> {
        self.inner.exists(path)
    }
}
