//! The catalog for synchronous code (the engines and the CLI): [`Catalog`] runs the async
//! catalog's futures on a dedicated runtime and waits for them.
//!
//! Why a dedicated runtime: a pool's connections belong to the runtime they were opened on,
//! and `Handle::block_on` panics inside a runtime and cannot drive the I/O of a
//! current-thread one. So the catalog owns one small multi-thread runtime (one worker,
//! `backstop-catalog`, created on first use and never dropped, as dropping a runtime inside
//! another panics too), every pool is opened on it, and each call:
//! - from a plain thread (the CLI, the engines' threads), blocks on the future with that
//!   runtime's handle;
//! - from inside any runtime (a task, `block_in_place`, a current-thread runtime's
//!   `block_on`), hands the future to a scoped helper thread that does the same, so nothing
//!   panics and no runtime's own workers are needed. The calling thread is blocked for the
//!   duration: async code should use [`super::Catalog`] instead.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};

use super::{NewRun, RepoKey, RepoSummary, RunEnd, RunId, RunRow, SnapshotRow};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::{Id, Snapshot};

/// The catalog's runtime, or why it could not be started.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("backstop-catalog")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| {
        Error::new(
            ErrorKind::Catalog,
            format!("cannot start the catalog's runtime: {e}"),
        )
    })
}

/// Runs `fut` to completion on the catalog runtime, from any thread (see the module docs).
fn wait<F>(fut: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let handle = runtime()?.handle();
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(handle.block_on(fut));
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("backstop-catalog-call".into())
            .spawn_scoped(s, || handle.block_on(fut))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Catalog,
                    format!("cannot start a thread for a catalog call: {e}"),
                )
            })?
            .join()
            .map_err(|_| Error::new(ErrorKind::Catalog, "a catalog call panicked"))
    })
}

/// An open catalog, for synchronous callers: the same methods as [`super::Catalog`],
/// blocking.
#[derive(Clone)]
pub struct Catalog {
    inner: super::Catalog,
}

impl Catalog {
    /// Opens (creating a SQLite file if needed) the catalog at `url` and migrates it.
    pub fn open(url: &str) -> Result<Catalog> {
        let inner = wait(super::Catalog::open(url))??;
        Ok(Catalog { inner })
    }

    /// See [`super::Catalog::open_or_replace`].
    pub fn open_or_replace(url: &str) -> Result<(Catalog, Option<PathBuf>)> {
        let (inner, aside) = wait(super::Catalog::open_or_replace(url))??;
        Ok((Catalog { inner }, aside))
    }

    /// The async catalog underneath (same pool).
    pub fn as_async(&self) -> &super::Catalog {
        &self.inner
    }

    /// Closes every connection.
    pub fn close(&self) -> Result<()> {
        wait(self.inner.close())
    }

    /// See [`super::Catalog::touch_repo`].
    pub fn touch_repo(&self, repo: &RepoKey) -> Result<()> {
        wait(self.inner.touch_repo(repo))?
    }

    /// See [`super::Catalog::start_run`].
    pub fn start_run(
        &self,
        kind: &str,
        repo: Option<&RepoKey>,
        policy: Option<&str>,
    ) -> Result<RunId> {
        wait(self.inner.start_run(kind, repo, policy))?
    }

    /// See [`super::Catalog::claim_run`].
    pub fn claim_run(&self, run: &NewRun<'_>) -> Result<Option<RunId>> {
        wait(self.inner.claim_run(run))?
    }

    /// See [`super::Catalog::last_scheduled`].
    pub fn last_scheduled(&self, policy: &str, kind: &str) -> Result<Option<DateTime<Utc>>> {
        wait(self.inner.last_scheduled(policy, kind))?
    }

    /// See [`super::Catalog::finish_run`].
    pub fn finish_run(&self, run: RunId, end: &RunEnd) -> Result<()> {
        wait(self.inner.finish_run(run, end))?
    }

    /// See [`super::Catalog::put_snapshot`].
    pub fn put_snapshot(&self, repo: &RepoKey, id: &Id, s: &Snapshot) -> Result<()> {
        wait(self.inner.put_snapshot(repo, id, s))?
    }

    /// See [`super::Catalog::replace_snapshots`].
    pub fn replace_snapshots(&self, repo: &RepoKey, snaps: &[(Id, Snapshot)]) -> Result<()> {
        wait(self.inner.replace_snapshots(repo, snaps))?
    }

    /// See [`super::Catalog::delete_snapshots`].
    pub fn delete_snapshots(&self, repo: &RepoKey, ids: &[Id]) -> Result<()> {
        wait(self.inner.delete_snapshots(repo, ids))?
    }

    /// See [`super::Catalog::count_snapshots`].
    pub fn count_snapshots(&self, repo: &RepoKey) -> Result<i64> {
        wait(self.inner.count_snapshots(repo))?
    }

    /// See [`super::Catalog::snapshots`].
    pub fn snapshots(&self, repo: &RepoKey) -> Result<Vec<SnapshotRow>> {
        wait(self.inner.snapshots(repo))?
    }

    /// See [`super::Catalog::record_verification`].
    pub fn record_verification(
        &self,
        repo: &RepoKey,
        pack: &Id,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<()> {
        wait(self.inner.record_verification(repo, pack, at, error))?
    }

    /// See [`super::Catalog::last_verified`].
    pub fn last_verified(&self, repo: &RepoKey) -> Result<HashMap<Id, String>> {
        wait(self.inner.last_verified(repo))?
    }

    /// See [`super::Catalog::damaged_packs`].
    pub fn damaged_packs(&self, repo: &RepoKey) -> Result<Vec<Id>> {
        wait(self.inner.damaged_packs(repo))?
    }

    /// See [`super::Catalog::record_hook`].
    pub fn record_hook(&self, run: RunId, hook: &crate::hooks::HookRun) -> Result<()> {
        wait(self.inner.record_hook(run, hook))?
    }

    /// See [`super::Catalog::recent_runs`].
    pub fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>> {
        wait(self.inner.recent_runs(limit))?
    }

    /// See [`super::Catalog::repo_summaries`].
    pub fn repo_summaries(&self) -> Result<Vec<RepoSummary>> {
        wait(self.inner.repo_summaries())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_calls_work_inside_and_outside_runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let cat = Catalog::open(&url).unwrap();
        let count = |c: &Catalog| c.recent_runs(100).unwrap().len();
        cat.start_run("backup", None, None).unwrap();
        // Inside a current-thread runtime's block_on: Handle::block_on would panic here.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            cat.start_run("verify", None, None).unwrap();
        });
        // Inside a task of a multi-thread runtime, and opening there too.
        let mt = tokio::runtime::Runtime::new().unwrap();
        let url2 = url.clone();
        let n = mt
            .block_on(async move {
                tokio::spawn(async move {
                    let c = Catalog::open(&url2).unwrap();
                    c.start_run("prune", None, None).unwrap();
                    count(&c)
                })
                .await
            })
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(count(&cat), 3);
    }
}
