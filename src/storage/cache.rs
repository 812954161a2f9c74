//! A [`Backend`] wrapper keeping immutable metadata objects in memory within a process.
//!
//! Index files and snapshot manifests (`index/`, `snapshots/`) are content-addressed: an
//! object's name is the BLAKE3 hash of its bytes, and nothing is modified in place. So a
//! copy read once is valid for as long as the object exists, and every command that lists
//! snapshots or loads the index twice (a backup does both) reads each object once.
//!
//! - Only whole reads are kept, and only when the bytes hash to the object's name: a
//!   corrupted or truncated read is never cached (it is read again by the caller's check).
//! - Bounded: at most the configured number of bytes; the oldest entries go first; an object
//!   larger than a quarter of the budget is not kept.
//! - A delete or a write through this wrapper drops the entry. An object deleted by another
//!   process stays readable from the cache, which is harmless: listings are never cached, so
//!   callers only read what a fresh listing names.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{Backend, BoxFuture, Listed, Meta};
use crate::error::Result;
use crate::id::Id;

/// Directories whose objects are immutable and named by their hash.
const CACHED_DIRS: [&str; 2] = ["index/", "snapshots/"];

/// The cache wrapper.
pub struct MetaCache {
    inner: Arc<dyn Backend>,
    budget: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
}

impl MetaCache {
    /// Wraps `inner`, keeping at most `budget` bytes.
    pub fn new(inner: Arc<dyn Backend>, budget: usize) -> Self {
        MetaCache {
            inner,
            budget,
            state: Mutex::new(State::default()),
        }
    }

    /// The object's id, if it is one the cache may keep.
    fn cacheable(path: &str) -> Option<Id> {
        let rest = CACHED_DIRS.iter().find_map(|d| path.strip_prefix(d))?;
        rest.rsplit('/').next()?.parse().ok()
    }

    fn get(&self, path: &str) -> Option<Bytes> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.objects.get(path).cloned()
    }

    fn put(&self, path: &str, data: &Bytes) {
        if data.len() > self.budget / 4 {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.objects.contains_key(path) {
            return;
        }
        while st.bytes + data.len() > self.budget {
            let Some(old) = st.order.pop_front() else {
                break;
            };
            if let Some(b) = st.objects.remove(&old) {
                st.bytes -= b.len();
            }
        }
        st.bytes += data.len();
        st.order.push_back(path.to_string());
        st.objects.insert(path.to_string(), data.clone());
    }

    fn forget(&self, path: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = st.objects.remove(path) {
            st.bytes -= b.len();
            st.order.retain(|p| p != path);
        }
    }
}

impl Backend for MetaCache {
    fn location(&self) -> &str {
        self.inner.location()
    }

    fn read_range<'a>(&'a self, path: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>> {
        if let Some(b) = self.get(path) {
            let end = (range.end.min(b.len() as u64)) as usize;
            let start = (range.start as usize).min(end);
            return Box::pin(async move { Ok(b.slice(start..end)) });
        }
        self.inner.read_range(path, range)
    }

    fn write<'a>(&'a self, path: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<()>> {
        self.forget(path);
        self.inner.write(path, bytes)
    }

    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>> {
        self.inner.list(dir)
    }

    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Meta>> {
        self.inner.stat(path)
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        self.forget(path);
        self.inner.delete(path)
    }

    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let Some(id) = Self::cacheable(path) else {
                return self.inner.read(path).await;
            };
            if let Some(b) = self.get(path) {
                return Ok(b);
            }
            let data = self.inner.read(path).await?;
            if Id::hash(&data) == id {
                self.put(path, &data);
            }
            Ok(data)
        })
    }

    fn read_pieces<'a>(
        &'a self,
        path: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        if self.get(path).is_some() {
            return Box::pin(async move { Ok(vec![self.read_range(path, range).await?]) });
        }
        self.inner.read_pieces(path, range)
    }

    fn read_range_into<'a>(
        &'a self,
        path: &'a str,
        range: Range<u64>,
        buf: &'a mut Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        if self.get(path).is_some() {
            return Box::pin(async move {
                super::fill(buf, vec![self.read_range(path, range).await?]);
                Ok(())
            });
        }
        self.inner.read_range_into(path, range, buf)
    }

    fn exists<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<bool>> {
        self.inner.exists(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_addressed_metadata_is_cacheable() {
        let id = Id::hash(b"x");
        assert_eq!(MetaCache::cacheable(&format!("index/{id}")), Some(id));
        assert_eq!(MetaCache::cacheable(&format!("snapshots/{id}")), Some(id));
        assert_eq!(MetaCache::cacheable(&format!("data/ab/{id}")), None);
        assert_eq!(MetaCache::cacheable("locks/abc"), None);
        assert_eq!(MetaCache::cacheable("config"), None);
    }
}
