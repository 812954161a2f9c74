//! The one retry policy: a wrapper that retries temporary errors with exponential backoff
//! and full jitter, and checks that range reads return the whole range.
//!
//! Which errors are temporary is decided where they are made (see [`crate::storage`]); this
//! wrapper only counts attempts and sleeps. Every retry is logged at info level as
//! `retrying PATH after a transient error: CAUSE` (the fault tests count these lines).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Backend, BoxFuture, Listed, Meta};
use crate::error::{Error, Result};

/// How often and how patiently temporary errors are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each next one.
    pub min_delay: Duration,
    /// Longest wait between attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `n` (1-based): exponential, capped, with full jitter
    /// (uniform in [delay/2, delay]) so that parallel requests do not retry in lockstep.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .min_delay
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX));
        let d = exp.min(self.max_delay);
        d / 2 + d.mul_f64(fastrand::f64() / 2.0)
    }

    /// Runs `op` until it succeeds, fails permanently or runs out of attempts.
    pub async fn run<'a, T>(
        &self,
        path: &str,
        mut op: impl FnMut() -> BoxFuture<'a, Result<T>>,
    ) -> Result<T> {
        let mut n = 1;
        loop {
            let e = match op().await {
                Err(e) => e,
                ok => return ok,
            };
            if !self.again(path, &e, n).await {
                return Err(e);
            }
            n += 1;
        }
    }

    /// Whether to try again after attempt `n` failed with `e`; if so, it has been logged and
    /// waited for.
    async fn again(&self, path: &str, e: &Error, n: u32) -> bool {
        if !e.is_temporary() || n >= self.attempts {
            return false;
        }
        tracing::info!(
            "retrying {path} after a transient error: {}",
            crate::error::chain(e)
        );
        tokio::time::sleep(self.delay(n)).await;
        true
    }
}

/// A backend whose operations are retried by a [`RetryPolicy`].
pub struct Retry {
    inner: Arc<dyn Backend>,
    policy: RetryPolicy,
}

impl Retry {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>, policy: RetryPolicy) -> Self {
        Retry { inner, policy }
    }
}

impl Backend for Retry {
    fn location(&self) -> &str {
        self.inner.location()
    }

    /// A range read that returns less than the range is a truncated transfer: retried, then
    /// reported as truncation.
    fn read_range<'a>(&'a self, path: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(self.policy.run(path, move || {
            let range = range.clone();
            Box::pin(async move {
                let want = range.end.saturating_sub(range.start);
                let data = self.inner.read_range(path, range).await?;
                if data.len() as u64 != want {
                    return Err(super::short_read(path, data.len() as u64, want));
                }
                Ok(data)
            })
        }))
    }

    fn write<'a>(&'a self, path: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(
            self.policy
                .run(path, move || self.inner.write(path, bytes.clone())),
        )
    }

    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>> {
        Box::pin(self.policy.run(dir, move || self.inner.list(dir)))
    }

    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Meta>> {
        Box::pin(self.policy.run(path, move || self.inner.stat(path)))
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.policy.run(path, move || self.inner.delete(path)))
    }

    fn read_pieces<'a>(
        &'a self,
        path: &'a str,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        Box::pin(self.policy.run(path, move || {
            let range = range.clone();
            Box::pin(async move {
                let want = range.end.saturating_sub(range.start);
                let pieces = self.inner.read_pieces(path, range).await?;
                let got: u64 = pieces.iter().map(|p| p.len() as u64).sum();
                if got != want {
                    return Err(super::short_read(path, got, want));
                }
                Ok(pieces)
            })
        }))
    }

    /// As [`Backend::read_range`]: less than the range is a truncated transfer.
    fn read_range_into<'a>(
        &'a self,
        path: &'a str,
        range: Range<u64>,
        buf: &'a mut Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let want = range.end.saturating_sub(range.start);
            let mut n = 1;
            loop {
                let e = match self.inner.read_range_into(path, range.clone(), buf).await {
                    Ok(()) if buf.len() as u64 == want => return Ok(()),
                    Ok(()) => super::short_read(path, buf.len() as u64, want),
                    Err(e) => e,
                };
                if !self.policy.again(path, &e, n).await {
                    return Err(e);
                }
                n += 1;
            }
        })
    }

    /// The whole read (stat, read, length check) is retried as one: a short read may mean
    /// the object was replaced in between.
    fn read<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(self.policy.run(path, move || self.inner.read(path)))
    }

    fn exists<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.policy.run(path, move || self.inner.exists(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let p = RetryPolicy::default();
        for n in 1..10 {
            let d = p.delay(n);
            let full = (p.min_delay * 2u32.pow(n - 1)).min(p.max_delay);
            assert!(d >= full / 2 && d <= full, "retry {n}: {d:?} vs {full:?}");
        }
        assert!(p.delay(40) <= p.max_delay);
    }
}
