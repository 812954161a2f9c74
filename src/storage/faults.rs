//! Fault injection for tests: storage that fails the way real storage does.
//!
//! Enabled only by `BACKSTOP_FAULTS`, a comma-separated list of `kind=probability` (0–1)
//! plus an optional `seed=N`, e.g. `write-error=0.2,read-bitflip=0.1,seed=7`:
//!
//! | kind | what happens |
//! |---|---|
//! | `write-error` | a write fails before storing anything (transient) |
//! | `write-timeout` | a write stores the object, then reports a timeout (transient) |
//! | `read-error` | a read fails (transient) |
//! | `read-truncate` | a read returns only part of the data |
//! | `read-bitflip` | a read returns data with one bit flipped |
//! | `list-lag` | a listing omits each object with this probability (eventual consistency) |
//!
//! Every decision is a hash of the seed, the fault kind, the object and how many times that
//! object has been asked about that kind, never a shared random stream: threads racing for
//! a generator would make a failing seed impossible to replay. Each injected fault is logged
//! at info level as `fault injected: KIND on PATH`, so tests can require that faults fired.
//!
//! Out-of-space is tested on a real, small file system instead.

use std::collections::HashMap;
use std::sync::Mutex;

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
    /// The name used in `BACKSTOP_FAULTS` and in the log.
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
    /// How often each (kind, object) has been decided, so a retry gets a fresh decision.
    asked: Mutex<HashMap<(Fault, String), u64>>,
}

impl Faults {
    /// Faults from `BACKSTOP_FAULTS`, if set.
    pub fn from_env() -> Result<Option<Faults>> {
        match std::env::var("BACKSTOP_FAULTS") {
            Ok(spec) if !spec.is_empty() => Faults::parse(&spec).map(Some),
            _ => Ok(None),
        }
    }

    /// Parses `kind=p,…,seed=N`.
    pub fn parse(spec: &str) -> Result<Faults> {
        let mut odds = Vec::new();
        let mut seed = 0;
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                Error::config(format!("BACKSTOP_FAULTS: '{part}' is not kind=value"))
            })?;
            if k == "seed" {
                seed = v
                    .parse()
                    .map_err(|_| Error::config(format!("BACKSTOP_FAULTS: bad seed '{v}'")))?;
                continue;
            }
            let fault = KINDS
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, f)| *f)
                .ok_or_else(|| Error::config(format!("BACKSTOP_FAULTS: unknown fault '{k}'")))?;
            let p: f64 = v
                .parse()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| {
                    Error::config(format!(
                        "BACKSTOP_FAULTS: probability '{v}' of {k} is not between 0 and 1"
                    ))
                })?;
            odds.push((fault, p));
        }
        Ok(Faults {
            odds,
            seed,
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
            let c = asked.entry((fault, path.to_string())).or_insert(0);
            *c += 1;
            *c
        };
        let x = (self.draw(fault, path, n, 0) >> 11) as f64 / (1u64 << 53) as f64;
        if x < p {
            tracing::info!("fault injected: {} on {path}", fault.name());
            Some(n)
        } else {
            None
        }
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

    /// Applies read faults to data just read from `path`.
    pub fn corrupt_read(&self, path: &str, mut data: Vec<u8>) -> Vec<u8> {
        if !data.is_empty()
            && let Some(n) = self.decide(Fault::ReadTruncate, path)
        {
            let keep = self.draw(Fault::ReadTruncate, path, n, 1) % data.len() as u64;
            data.truncate(keep as usize);
        }
        if !data.is_empty()
            && let Some(n) = self.decide(Fault::ReadBitflip, path)
        {
            let r = self.draw(Fault::ReadBitflip, path, n, 1);
            let i = (r % data.len() as u64) as usize;
            data[i] ^= 1 << ((r >> 32) % 8);
        }
        data
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
}
