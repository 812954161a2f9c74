//! Fault injection: a [`Backend`] wrapper that fails, corrupts and slows down the way real
//! storage does, for tests and for proving the failure handling.
//!
//! Configured by the caller with a [`Faults`] value, parsed from a spec: a comma-separated
//! list of `kind=probability` (0–1), an optional `seed=N` and an optional `delay=DURATION`
//! (`50ms`, `1s`), e.g. `write-error=0.2,read-bitflip=0.1,seed=7`. The CLI takes the spec
//! from `BACKSTOP_FAULTS`; the library reads no environment.
//!
//! | kind | what happens |
//! |---|---|
//! | `write-error` | a write fails before storing anything (transient) |
//! | `write-timeout` | a write stores the object, then reports a timeout (transient) |
//! | `read-error` | a read fails (transient) |
//! | `read-truncate` | a read returns only part of the data |
//! | `read-bitflip` | a read returns data with one bit flipped |
//! | `list-lag` | a listing omits each object with this probability (eventual consistency) |
//! | `delay=D` | every request takes D longer (an object store's latency) |
//!
//! Every decision is a hash of the seed, the fault kind, the object (for a read: the object
//! and the range read) and how many times it has been asked about that kind, never a shared
//! random stream or a count per object: threads racing for a generator, or reading ranges
//! of one object in parallel, would make a failing seed impossible to replay. Each injected fault is logged
//! at info level as `fault injected: KIND on PATH`, so tests can require that faults fired.
//!
//! Out-of-space is tested on a real, small file system instead.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Backend, BoxFuture, Listed, Meta};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, ErrorKind, Result};

/// Fault kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Write fails, nothing stored.
    WriteError,
    /// Write stored, error reported.
    WriteTimeout,
    /// Read fails.
    ReadError,
    /// Read returns a prefix.
    ReadTruncate,
    /// Read returns a flipped bit.
    ReadBitflip,
    /// Listing omits objects.
    ListLag,
}

const KINDS: [(&str, Fault); 6] = [
    ("write-error", Fault::WriteError),
    ("write-timeout", Fault::WriteTimeout),
    ("read-error", Fault::ReadError),
    ("read-truncate", Fault::ReadTruncate),
    ("read-bitflip", Fault::ReadBitflip),
    ("list-lag", Fault::ListLag),
];

impl Fault {
    /// The name used in the spec and in the log.
    pub fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("unknown", |(n, _)| n)
    }
}

/// Configured fault probabilities and a seed; decisions are deterministic per object.
#[derive(Debug)]
pub struct Faults {
    odds: Vec<(Fault, f64)>,
    seed: u64,
    /// Added to every request.
    delay: Duration,
    /// Faults injected so far (tests require that faults fired).
    injected: AtomicU64,
    /// How often each (kind, object) has been decided, so a retry gets a fresh decision.
    asked: Mutex<HashMap<(Fault, String), u64>>,
}

impl Faults {
    /// Parses `kind=p,…,seed=N,delay=D` (see the module docs).
    pub fn parse(spec: &str) -> Result<Faults> {
        let mut odds = Vec::new();
        let mut seed = 0;
        let mut delay = Duration::ZERO;
        for part in spec.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| Error::config(format!("fault spec: '{part}' is not kind=value")))?;
            if k == "seed" {
                seed = v
                    .parse()
                    .map_err(|_| Error::config(format!("fault spec: bad seed '{v}'")))?;
                continue;
            }
            if k == "delay" {
                delay = parse_delay(v).ok_or_else(|| {
                    Error::config(format!(
                        "fault spec: delay '{v}' is not a duration like 50ms or 1s"
                    ))
                })?;
                continue;
            }
            let fault = KINDS
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, f)| *f)
                .ok_or_else(|| Error::config(format!("fault spec: unknown fault '{k}'")))?;
            let p: f64 = v
                .parse()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| {
                    Error::config(format!(
                        "fault spec: probability '{v}' of {k} is not between 0 and 1"
                    ))
                })?;
            odds.push((fault, p));
        }
        Ok(Faults {
            odds,
            seed,
            delay,
            injected: AtomicU64::new(0),
            asked: Mutex::new(HashMap::new()),
        })
    }

    /// A deterministic 64-bit draw for the `n`-th decision of `fault` on `path`.
    fn draw(&self, fault: Fault, path: &str, n: u64, salt: u8) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(&self.seed.to_le_bytes());
        h.update(fault.name().as_bytes());
        h.update(&[0, salt]);
        h.update(path.as_bytes());
        h.update(&n.to_le_bytes());
        let b = h.finalize();
        u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or_default())
    }

    /// Whether `fault` strikes `path` now (logged when it does). Returns the decision's
    /// number, for further draws (where to truncate, which bit to flip).
    fn decide(&self, fault: Fault, path: &str) -> Option<u64> {
        self.decide_at(fault, path, path)
    }

    /// [`Faults::decide`] for `key`, a part of `path` (a range read of it): decisions for
    /// one key do not depend on what happened to other keys of the same object.
    fn decide_at(&self, fault: Fault, path: &str, key: &str) -> Option<u64> {
        let p = self
            .odds
            .iter()
            .find(|(f, _)| *f == fault)
            .map_or(0.0, |(_, p)| *p);
        if p <= 0.0 {
            return None;
        }
        let n = {
            let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
            let c = asked.entry((fault, key.to_string())).or_insert(0);
            *c += 1;
            *c
        };
        let x = (self.draw(fault, key, n, 0) >> 11) as f64 / (1u64 << 53) as f64;
        if x < p {
            self.injected.fetch_add(1, Ordering::Relaxed);
            tracing::info!("fault injected: {} on {path}", fault.name());
            Some(n)
        } else {
            None
        }
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Whether `fault` strikes `path` now.
    pub fn strikes(&self, fault: Fault, path: &str) -> bool {
        self.decide(fault, path).is_some()
    }

    /// The injected error for `fault` on `path`.
    pub fn error(fault: Fault, path: &str) -> Error {
        Error::new(
            ErrorKind::Storage,
            format!("injected fault {} on {path}", fault.name()),
        )
        .temporary()
    }

    /// Applies read faults to data just read from `path` (`key`: which range, see
    /// [`Faults::decide_at`]).
    pub fn corrupt_read(&self, path: &str, key: &str, mut data: Vec<u8>) -> Vec<u8> {
        if !data.is_empty()
            && let Some(n) = self.decide_at(Fault::ReadTruncate, path, key)
        {
            let keep = self.draw(Fault::ReadTruncate, key, n, 1) % data.len() as u64;
            data.truncate(keep as usize);
        }
        if !data.is_empty()
            && let Some(n) = self.decide_at(Fault::ReadBitflip, path, key)
        {
            let r = self.draw(Fault::ReadBitflip, key, n, 1);
            let i = (r % data.len() as u64) as usize;
            data[i] ^= 1 << ((r >> 32) % 8);
        }
        data
    }
}

/// Parses `50ms`, `2s` or a number of milliseconds.
fn parse_delay(v: &str) -> Option<Duration> {
    let (n, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "ms"),
    };
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        _ => None,
    }
}

/// A backend that injects the faults of a [`Faults`] into the operations of another.
pub struct Faulty {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

impl Faulty {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>, faults: Arc<Faults>) -> Self {
        Faulty { inner, faults }
    }

    /// The latency, then `fault` on `path` (`key`: see [`Faults::decide_at`]) if it strikes.
    async fn before(&self, fault: Option<Fault>, path: &str, key: &str) -> Result<()> {
        if !self.faults.delay.is_zero() {
            tokio::time::sleep(self.faults.delay).await;
        }
        match fault {
            Some(f) if self.faults.decide_at(f, path, key).is_some() => Err(Faults::error(f, path)),
            _ => Ok(()),
        }
    }
}

impl Backend for Faulty {
    fn location(&self) -> &str {
        self.inner.location()
    }

    fn read_range<'a>(&'a self, path: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let key = format!("{path}@{}..{}", range.start, range.end);
            self.before(Some(Fault::ReadError), path, &key).await?;
            let data = self.inner.read_range(path, range).await?;
            Ok(Bytes::from(self.faults.corrupt_read(
                path,
                &key,
                data.to_vec(),
            )))
        })
    }

    fn write<'a>(&'a self, path: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.before(Some(Fault::WriteError), path, path).await?;
            self.inner.write(path, bytes).await?;
            match self.faults.strikes(Fault::WriteTimeout, path) {
                true => Err(Faults::error(Fault::WriteTimeout, path)),
                false => Ok(()),
            }
        })
    }

    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>> {
        Box::pin(async move {
            self.before(None, dir, dir).await?;
            let mut all = self.inner.list(dir).await?;
            all.retain(|l| !self.faults.strikes(Fault::ListLag, &l.path));
            Ok(all)
        })
    }

    fn stat<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Meta>> {
        Box::pin(async move {
            self.before(None, path, path).await?;
            self.inner.stat(path).await
        })
    }

    fn delete<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.before(None, path, path).await?;
            self.inner.delete(path).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed gives the same decisions for the same object, whatever other objects
    /// are asked about in between and in whatever order (threads).
    #[test]
    fn fault_decisions_replay_per_object_whatever_the_interleaving() {
        let decisions = |order: &[&str]| {
            let f = Faults::parse("read-error=0.5,seed=3").unwrap();
            let mut out: HashMap<String, Vec<bool>> = HashMap::new();
            for p in order {
                out.entry(p.to_string())
                    .or_default()
                    .push(f.strikes(Fault::ReadError, p));
            }
            out
        };
        let a = decisions(&["x", "y", "x", "z", "y", "x", "z", "z"]);
        let b = decisions(&["z", "z", "y", "x", "z", "x", "y", "x"]);
        assert_eq!(a, b);
        let all: Vec<bool> = a.values().flatten().copied().collect();
        assert!(all.contains(&true) && all.contains(&false), "{a:?}");
    }

    #[test]
    fn fault_specs_parse_latency_and_reject_nonsense() {
        let f = Faults::parse("delay=50ms,read-error=0.1,seed=3").unwrap();
        assert_eq!(f.delay, Duration::from_millis(50));
        assert_eq!(f.seed, 3);
        assert_eq!(
            Faults::parse("delay=2s").unwrap().delay,
            Duration::from_secs(2)
        );
        for (bad, says) in [
            ("delay=fast", "not a duration"),
            ("read-error=2", "not between 0 and 1"),
            ("disk-melts=0.1", "unknown fault"),
            ("read-error", "not kind=value"),
        ] {
            let e = Faults::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
