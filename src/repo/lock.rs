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
use crate::id::Id;
use crate::storage::{Listed, Storage};

/// How long a lock is valid without refresh by default: 30 minutes.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30 * 60);

/// The shortest lock TTL accepted: the holder refreshes every sixth of it, five times a
/// second at most.
pub const MIN_LOCK_TTL: Duration = Duration::from_secs(6);

/// How long a lock on `storage` is valid without refresh: [`DEFAULT_LOCK_TTL`], or what
/// the storage's [`Locking`](crate::storage::Locking) says (the CLI takes it from
/// `BACKSTOP_LOCK_TTL`; tests use seconds, very slow storage may want more). A holder
/// refreshes every sixth of it and gives the lock up a sixth before it would expire.
pub fn lock_ttl(storage: &Storage) -> Duration {
    storage.locking().ttl.unwrap_or(DEFAULT_LOCK_TTL)
}

/// Parses a lock TTL: whole seconds (`90`) or a duration (`90s`, `10m`), at least
/// [`MIN_LOCK_TTL`]. Anything else is a configuration error, never silently the default.
pub fn parse_lock_ttl(s: &str) -> Result<Duration> {
    let secs = match s.trim().parse::<u64>() {
        Ok(n) => n,
        Err(_) => crate::policy::retention::parse_duration(s)
            .map_err(|_| {
                Error::config(format!(
                    "lock TTL '{s}' is not a duration (seconds, or e.g. 90s, 10m)"
                ))
            })?
            .num_seconds()
            .max(0) as u64,
    };
    let ttl = Duration::from_secs(secs);
    if ttl < MIN_LOCK_TTL {
        return Err(Error::config(format!(
            "lock TTL '{s}' is shorter than the minimum of {} s",
            MIN_LOCK_TTL.as_secs()
        )));
    }
    Ok(ttl)
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
        self.stale_reason(now).is_some()
    }

    /// Why the lock no longer counts, if it does not.
    pub fn stale_reason(&self, now: DateTime<Utc>) -> Option<String> {
        if self.host == crate::repo::hostname() && !process_alive(self.pid) {
            return Some(format!("process {} is gone", self.pid));
        }
        if self.expires < now {
            return Some(format!(
                "expired at {}",
                self.expires
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        None
    }
}

/// Whether process `pid` exists on this host (a pid that is not a valid one does not).
fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    raw > 0
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None)
            != Err(nix::errno::Errno::ESRCH)
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
    /// Why it is stale (process gone, expired at T), if it is.
    pub reason: Option<String>,
}

/// Every readable lock in the repository.
pub fn list(storage: &Storage, now: DateTime<Utc>) -> Result<Vec<FoundLock>> {
    Ok(scan(storage, now)?.0)
}

/// Readable locks, and lock objects that cannot be read as locks (with when they were
/// last modified, if the storage says).
fn scan(storage: &Storage, now: DateTime<Utc>) -> Result<(Vec<FoundLock>, Vec<Listed>)> {
    let mut out = Vec::new();
    let mut garbage = Vec::new();
    for l in storage.list("locks/")? {
        // A lock that vanished or cannot be parsed is not a live lock we could honour.
        match storage
            .read(&l.path)
            .ok()
            .map(|b| serde_json::from_slice::<LockInfo>(&b))
        {
            Some(Ok(info)) => {
                let reason = info.stale_reason(now);
                out.push(FoundLock {
                    stale: reason.is_some(),
                    reason,
                    path: l.path,
                    info,
                });
            }
            Some(Err(_)) => garbage.push(l),
            None => {}
        }
    }
    Ok((out, garbage))
}

/// What `unlock` removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Unlocked {
    /// Stale locks removed.
    pub stale: Vec<FoundLock>,
    /// Lock objects that were not locks at all (empty, unparseable) and older than a lock
    /// TTL, removed.
    pub garbage: Vec<String>,
}

/// Removes stale locks, and lock objects that cannot be parsed and are older than the lock
/// TTL (a lock being written is never older). Live locks are never touched.
pub fn remove_stale(storage: &Storage) -> Result<Unlocked> {
    let now = Utc::now();
    let (locks, garbage) = scan(storage, now)?;
    let mut done = Unlocked::default();
    for l in locks.into_iter().filter(|l| l.stale) {
        storage.delete(&l.path)?;
        done.stale.push(l);
    }
    let ttl = chrono::Duration::from_std(lock_ttl(storage)).unwrap_or(chrono::Duration::MAX);
    for g in garbage {
        if g.modified.is_some_and(|m| m + ttl < now) {
            storage.delete(&g.path)?;
            done.garbage.push(g.path);
        }
    }
    Ok(done)
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

/// A held lock; dropping it stops the refresher and removes the lock object. A reading
/// operation on storage that refuses writes (or with `--no-lock`) holds no lock at all.
pub struct LockGuard {
    held: Option<Arc<Held>>,
    refresher: Option<(std::thread::JoinHandle<()>, crossbeam_channel::Sender<()>)>,
    /// Removes the lock object if a signal stops the process (see `crate::interrupt`).
    _on_signal: Option<crate::interrupt::OnExit>,
    /// The operation's cancellation token, checked with the lock.
    cancel: Option<crate::cancel::Cancel>,
}

impl LockGuard {
    /// Whether a lock object is actually held.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Makes [`LockGuard::check`] fail once `cancel` is cancelled too: every place an
    /// operation checks its lock is a place it stops when cancelled.
    pub fn watching(mut self, cancel: &crate::cancel::Cancel) -> Self {
        self.cancel = Some(cancel.clone());
        self
    }

    /// Fails if the operation was cancelled, or if the lock may have expired (not refreshed
    /// in time): the operation must stop before committing anything.
    pub fn check(&self) -> Result<()> {
        if let Some(c) = &self.cancel {
            c.check()?;
        }
        let Some(held) = &self.held else {
            return Ok(());
        };
        if held.is_lost() {
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "lost the repository lock (not refreshed for over {} s); stopping without committing",
                    (held.ttl - held.ttl / 6).as_secs()
                ),
            ));
        }
        Ok(())
    }
}

/// Operations that only read the repository: they may run without a lock where the
/// storage refuses writes, or with `--no-lock`. Everything else (backup included) needs one.
const READING: [&str; 5] = ["restore", "verify", "ls", "snapshots", "dump"];

/// Takes a lock for `operation`, waiting up to `retry` (with backoff, the last attempt at
/// the deadline) for conflicting locks to go away; fails with `Locked` naming the holder
/// otherwise.
///
/// A reading operation (see [`READING`]) takes no lock with `--no-lock`
/// ([`Locking::no_lock`](crate::storage::Locking)), and goes on unlocked, with one
/// warning, when the storage refuses to store its lock (read-only file system, permission
/// denied): nobody can prune storage that cannot be written.
pub fn acquire(
    storage: &Storage,
    exclusive: bool,
    operation: &str,
    retry: Duration,
) -> Result<LockGuard> {
    let reading = !exclusive && READING.contains(&operation);
    if storage.locking().no_lock {
        if !reading {
            return Err(Error::config(format!(
                "{operation} changes the repository and needs a lock: --no-lock is only for restore, ls, snapshots, dump and verify"
            )));
        }
        return Ok(LockGuard {
            held: None,
            refresher: None,
            _on_signal: None,
            cancel: None,
        });
    }
    let deadline = Instant::now() + retry;
    let mut wait = Duration::from_millis(500);
    loop {
        match conflict(storage, exclusive)? {
            None => break,
            Some(holder) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(locked_by(&holder));
                }
                std::thread::sleep(wait.min(deadline - now));
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
    let now = Utc::now();
    let ttl = lock_ttl(storage);
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
    if let Err(e) = held.write() {
        if reading && crate::storage::refuses_writes(&e) {
            tracing::warn!(
                "the repository cannot be written ({}): {operation} goes on without a lock",
                root_cause(&e)
            );
            return Ok(LockGuard {
                held: None,
                refresher: None,
                _on_signal: None,
                cancel: None,
            });
        }
        // A lock whose write was undone (by a prune clearing temporary objects) under a
        // conflicting lock is a lock conflict, not a storage failure.
        if let Ok(Some(holder)) = conflict(storage, exclusive) {
            return Err(locked_by(&holder));
        }
        return Err(e.context("writing the repository lock"));
    }
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
    // Dropping the guard drops `wake`: the refresher ends at once, not after its nap.
    let (wake, woken) = crossbeam_channel::bounded::<()>(0);
    let refresher = {
        let held = held.clone();
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(move || {
                let _e = span.enter();
                let mut last = Instant::now();
                while !held.stop.load(Ordering::Relaxed) {
                    let nap = woken.recv_timeout(Duration::from_millis(200));
                    if nap != Err(crossbeam_channel::RecvTimeoutError::Timeout) {
                        break;
                    }
                    if last.elapsed() >= held.ttl / 6 {
                        last = Instant::now();
                        held.refresh();
                    }
                }
            })
            .map_err(|e| Error::new(ErrorKind::Io, "starting lock refresher").with_source(e))?
    };
    Ok(LockGuard {
        held: Some(held),
        refresher: Some((refresher, wake)),
        _on_signal: Some(on_signal),
        cancel: None,
    })
}

/// The innermost cause of `e`, e.g. "Read-only file system (os error 30)".
fn root_cause(e: &Error) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn locked_by(holder: &LockInfo) -> Error {
    Error::new(
        ErrorKind::Locked,
        format!(
            "repository is locked by {} (pid {} on {}, since {}); retry later or use --retry-lock",
            holder.operation, holder.pid, holder.host, holder.created
        ),
    )
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
        let Some(held) = &self.held else {
            return;
        };
        held.stop.store(true, Ordering::Relaxed);
        if let Some((t, wake)) = self.refresher.take() {
            drop(wake);
            let _ = t.join();
        }
        if let Err(e) = held.storage.delete(&held.path) {
            tracing::warn!("could not remove lock {}: {e}", held.path);
        }
    }
}
