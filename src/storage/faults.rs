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
//! Out-of-space is tested on a real, small file system instead.

use std::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};

/// Fault kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Configured fault probabilities and a deterministic random source.
#[derive(Debug)]
pub struct Faults {
    odds: Vec<(Fault, f64)>,
    rng: Mutex<fastrand::Rng>,
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
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        })
    }

    /// Whether `fault` strikes now.
    pub fn strikes(&self, fault: Fault) -> bool {
        let p = self
            .odds
            .iter()
            .find(|(f, _)| *f == fault)
            .map_or(0.0, |(_, p)| *p);
        p > 0.0 && self.rng.lock().expect("fault rng").f64() < p
    }

    /// The injected error for `fault` on `path`.
    pub fn error(fault: Fault, path: &str) -> Error {
        Error::new(
            ErrorKind::Storage,
            format!("injected fault {fault:?} on {path}"),
        )
        .temporary()
    }

    /// Applies read faults to data just read.
    pub fn corrupt_read(&self, mut data: Vec<u8>) -> Vec<u8> {
        if !data.is_empty() && self.strikes(Fault::ReadTruncate) {
            let keep = self.rng.lock().expect("fault rng").usize(..data.len());
            data.truncate(keep);
        }
        if !data.is_empty() && self.strikes(Fault::ReadBitflip) {
            let mut rng = self.rng.lock().expect("fault rng");
            let i = rng.usize(..data.len());
            data[i] ^= 1 << rng.u8(..8);
        }
        data
    }
}
