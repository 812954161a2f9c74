//! Repository locks: objects under `locks/` naming host, pid and expiry, refreshed while held.
//!
//! | operation               | lock      | conflicts with  |
//! |-------------------------|-----------|-----------------|
//! | backup, restore, verify | shared    | exclusive       |
//! | forget, prune, repair   | exclusive | every live lock |
//!
//! A lock whose expiry passed, or whose process is gone on this host, is stale: it is
//! ignored (with a warning) and `backstop unlock` removes it. A holder refreshes its lock
//! every sixth of [`lock_ttl`]; if it has not managed to for five sixths of it
//! (storage down, process frozen with SIGSTOP, suspended VM), the lock counts as lost and
//! [`LockGuard::check`] fails, so the operation stops before it commits anything another
//! process may since have pruned. Expiry is wall-clock time of the holder, compared with
//! the reader's clock: clock skew of minutes is absorbed by the 30-minute TTL.
//! Locks are the one kind of object rewritten in place (on refresh).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::repo::Id;
use crate::storage::Storage;

/// How long a lock is valid without refresh: 30 minutes, or `BACKSTOP_LOCK_TTL` seconds
/// (tests use seconds; very slow storage may want more). A holder refreshes every sixth of
/// it and gives the lock up a sixth before it would expire.
pub fn lock_ttl() -> Duration {
    std::env::var("BACKSTOP_LOCK_TTL")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s: &u64| s >= 6)
        .map_or(Duration::from_secs(30 * 60), Duration::from_secs)
}

/// A lock object's content.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    /// Excludes all other locks.
    pub exclusive: bool,
    /// Host of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// What the holder does (backup, restore, …).
    pub operation: String,
    /// When the lock was taken.
    pub created: DateTime<Utc>,
    /// After this the lock is stale.
    pub expires: DateTime<Utc>,
}

impl LockInfo {
    /// Whether the lock no longer counts: expired, or its process is dead on this host.
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        if self.expires < now {
            return true;
        }
        self.host == crate::repo::hostname()
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), None)
                == Err(nix::errno::Errno::ESRCH)
    }
}

/// A lock found in the repository.
#[derive(Clone, Debug, Serialize)]
pub struct FoundLock {
    /// Its object path.
    pub path: String,
    /// Its content.
    pub info: LockInfo,
    /// Whether it is stale now.
    pub stale: bool,
}

/// Every readable lock in the repository.
pub fn list(storage: &Storage, now: DateTime<Utc>) -> Result<Vec<FoundLock>> {
    let mut out = Vec::new();
    for l in storage.list("locks/")? {
        // A lock that vanished or cannot be parsed is not a live lock we could honour.
        if let Some(info) = storage
            .read(&l.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok())
        {
            out.push(FoundLock {
                stale: info.is_stale(now),
                path: l.path,
                info,
            });
        }
    }
    Ok(out)
}

/// Removes stale locks; returns them. Live locks are never touched.
pub fn remove_stale(storage: &Storage) -> Result<Vec<FoundLock>> {
    let stale: Vec<_> = list(storage, Utc::now())?
        .into_iter()
        .filter(|l| l.stale)
        .collect();
    for l in &stale {
        storage.delete(&l.path)?;
    }
    Ok(stale)
}

/// Shared state between a guard and its refresher.
struct Held {
    storage: Storage,
    path: String,
    info: Mutex<LockInfo>,
    last_refresh: Mutex<Instant>,
    lost: AtomicBool,
    stop: AtomicBool,
    ttl: Duration,
}

impl Held {
    fn write(&self) -> Result<()> {
        let now = Utc::now();
        let bytes = {
            let mut info = self.info.lock().expect("lock info");
            info.expires = now + self.ttl;
            serde_json::to_vec(&*info).expect("lock serializes")
        };
        self.storage.write(&self.path, bytes)
    }

    /// Refreshes unless the lock is already too old to be trusted.
    fn refresh(&self) {
        if self.is_lost() {
            return;
        }
        let started = Instant::now();
        match self.write() {
            // Only a refresh that completed in time extends the lock.
            Ok(()) if !self.is_lost() => *self.last_refresh.lock().expect("refresh time") = started,
            Ok(()) => {}
            Err(e) => tracing::error!("could not refresh repository lock {}: {e}", self.path),
        }
    }

    fn is_lost(&self) -> bool {
        if self.lost.load(Ordering::SeqCst) {
            return true;
        }
        let since = self.last_refresh.lock().expect("refresh time").elapsed();
        if since > self.ttl - self.ttl / 6 {
            self.lost.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }
}

/// A held lock; dropping it stops the refresher and removes the lock object.
pub struct LockGuard {
    held: Arc<Held>,
    refresher: Option<std::thread::JoinHandle<()>>,
    /// Removes the lock object if a signal stops the process (see `crate::interrupt`).
    _on_signal: crate::interrupt::OnExit,
}

impl LockGuard {
    /// Fails if the lock may have expired (not refreshed in time): the operation must stop
    /// before committing anything.
    pub fn check(&self) -> Result<()> {
        if self.held.is_lost() {
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "lost the repository lock (not refreshed for over {} s); stopping without committing",
                    (self.held.ttl - self.held.ttl / 6).as_secs()
                ),
            ));
        }
        Ok(())
    }
}

/// Takes a lock for `operation`, waiting up to `retry` (with backoff) for conflicting
/// locks to go away; fails with `Locked` naming the holder otherwise.
pub fn acquire(
    storage: &Storage,
    exclusive: bool,
    operation: &str,
    retry: Duration,
) -> Result<LockGuard> {
    let deadline = Instant::now() + retry;
    let mut wait = Duration::from_millis(500);
    loop {
        match conflict(storage, exclusive)? {
            None => break,
            Some(holder) if Instant::now() + wait > deadline => {
                return Err(Error::new(
                    ErrorKind::Locked,
                    format!(
                        "repository is locked by {} (pid {} on {}, since {}); retry later or use --retry-lock",
                        holder.operation, holder.pid, holder.host, holder.created
                    ),
                ));
            }
            Some(_) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    let now = Utc::now();
    let ttl = lock_ttl();
    let held = Arc::new(Held {
        storage: storage.clone(),
        path: format!("locks/{}", Id::random()),
        info: Mutex::new(LockInfo {
            exclusive,
            host: crate::repo::hostname(),
            pid: std::process::id(),
            operation: operation.to_string(),
            created: now,
            expires: now + ttl,
        }),
        last_refresh: Mutex::new(Instant::now()),
        lost: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ttl,
    });
    // Registered before the lock object is written, so a signal at any point removes it.
    let on_signal = {
        let held = held.clone();
        crate::interrupt::on_exit(move || {
            held.stop.store(true, Ordering::Relaxed);
            let _ = held.storage.delete(&held.path);
        })
    };
    held.write()?;
    // Two processes may have written their locks at the same time: the exclusive side backs off.
    if let Some(holder) = conflict_except(storage, exclusive, &held.path)? {
        let _ = storage.delete(&held.path);
        return Err(Error::new(
            ErrorKind::Locked,
            format!(
                "repository was locked by {} (pid {} on {}) at the same time",
                holder.operation, holder.pid, holder.host
            ),
        ));
    }
    let refresher = {
        let held = held.clone();
        std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !held.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    if last.elapsed() >= held.ttl / 6 {
                        last = Instant::now();
                        held.refresh();
                    }
                }
            })
            .map_err(|e| Error::new(ErrorKind::Io, "starting lock refresher").with_source(e))?
    };
    Ok(LockGuard {
        held,
        refresher: Some(refresher),
        _on_signal: on_signal,
    })
}

fn conflict(storage: &Storage, exclusive: bool) -> Result<Option<LockInfo>> {
    conflict_except(storage, exclusive, "")
}

fn conflict_except(storage: &Storage, exclusive: bool, own: &str) -> Result<Option<LockInfo>> {
    for l in list(storage, Utc::now())? {
        if l.path == own {
            continue;
        }
        if l.stale {
            tracing::warn!(lock = %l.path, host = %l.info.host, pid = l.info.pid, "ignoring stale lock");
            continue;
        }
        if exclusive || l.info.exclusive {
            return Ok(Some(l.info));
        }
    }
    Ok(None)
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.held.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        if let Err(e) = self.held.storage.delete(&self.held.path) {
            tracing::warn!("could not remove lock {}: {e}", self.held.path);
        }
    }
}
