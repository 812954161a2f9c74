//! Jobs: a library operation together with its record in the catalog (run rows, snapshot
//! rows, verification coverage). The CLI and the daemon both run operations through here.

use crate::backup::{self, BackupOptions, BackupOutcome};
use crate::catalog::{Catalog, RunEnd};
use crate::error::Result;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::restore::{self, RestoreOptions, RestoreOutcome};
use crate::verify::{self, ReadData, VerifyReport};

/// Runs `op` as a job of `kind`: a run row is opened first (unless `record` is false, for
/// dry runs) and closed with what `end` makes of the outcome. A failure to record the
/// outcome (e.g. a snapshot row) still closes the run, as failed.
fn recorded<T>(
    catalog: &Catalog,
    kind: &str,
    repo: &Repo,
    policy: Option<&str>,
    record: bool,
    op: impl FnOnce() -> Result<T>,
    end: impl FnOnce(&T) -> Result<RunEnd>,
) -> Result<T> {
    if !record {
        return op();
    }
    let run = catalog.start_run(kind, Some(&repo.config().id), policy)?;
    let res = op().and_then(|t| end(&t).map(|e| (t, e)));
    match res {
        Ok((t, e)) => {
            catalog.finish_run(run, &e)?;
            Ok(t)
        }
        Err(err) => {
            let e = RunEnd {
                status: "failed",
                error: Some(crate::error::chain(&err)),
                ..Default::default()
            };
            catalog.finish_run(run, &e)?;
            Err(err)
        }
    }
}

/// Backs up and records the run and the snapshot.
pub fn backup(
    catalog: &Catalog,
    repo: &Repo,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    let repo_id = repo.config().id;
    catalog.touch_repo(&repo_id, repo.storage().location())?;
    let mut opts = opts.clone();
    opts.damaged_packs.extend(catalog.damaged_packs(&repo_id)?);
    let policy = opts.policy.clone();
    recorded(
        catalog,
        "backup",
        repo,
        policy.as_deref(),
        true,
        || backup::run(repo, &opts, progress),
        |o| {
            catalog.put_snapshot(&repo_id, &o.id, &o.snapshot)?;
            let s = &o.snapshot.summary;
            Ok(RunEnd {
                status: if o.warnings.is_empty() {
                    "success"
                } else {
                    "partial"
                },
                files: s.files,
                bytes_read: s.bytes_read,
                bytes_new: s.bytes_new,
                bytes_stored: s.bytes_stored,
                warnings: s.warnings,
                error: None,
                snapshot: Some(o.id),
            })
        },
    )
}

/// Restores and records the run.
pub fn restore(
    catalog: &Catalog,
    repo: &Repo,
    snapshot: &str,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let (sid, snap) = repo.find_snapshot(snapshot)?;
    // The target takes the snapshot root's own metadata (mode, times, xattrs) when this
    // restore creates it or it is empty: never an existing directory's (like /tmp's).
    let fresh = !opts.dry_run
        && match std::fs::read_dir(&opts.target) {
            Ok(mut d) => d.next().is_none(),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
    let op = || {
        let mut o = restore::run(repo, snap.tree, opts, progress)?;
        if fresh && let Some(root) = &snap.root {
            restore::apply_metadata(&opts.target, root, &mut o.warnings);
        }
        Ok(o)
    };
    recorded(
        catalog,
        "restore",
        repo,
        snap.policy.as_deref(),
        !opts.dry_run,
        op,
        |o| {
            Ok(RunEnd {
                status: if o.failed.is_empty() {
                    "success"
                } else {
                    "partial"
                },
                files: o.files,
                bytes_read: o.bytes,
                warnings: o.warnings.len() as u64,
                error: (!o.failed.is_empty()).then(|| format!("{} file(s) failed", o.failed.len())),
                snapshot: Some(sid),
                ..Default::default()
            })
        },
    )
}

/// Verifies and records the run and each pack's result.
pub fn verify(
    catalog: &Catalog,
    repo: &Repo,
    read: ReadData,
    retry_lock: std::time::Duration,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let repo_id = repo.config().id;
    catalog.touch_repo(&repo_id, repo.storage().location())?;
    let last = catalog.last_verified(&repo_id)?;
    let op = || verify::run(repo, read, &last, retry_lock, progress);
    recorded(catalog, "verify", repo, None, true, op, |r| {
        let now = chrono::Utc::now();
        for c in &r.checked {
            catalog.record_verification(&repo_id, &c.pack, now, c.error.as_deref())?;
        }
        Ok(RunEnd {
            status: if r.is_ok() { "success" } else { "failed" },
            bytes_read: r.bytes_read,
            error: r.problems.first().map(|p| p.message.clone()),
            ..Default::default()
        })
    })
}

/// Rebuilds a repository's snapshot rows from the repository.
pub fn rebuild_catalog(catalog: &Catalog, repo: &Repo) -> Result<usize> {
    let repo_id = repo.config().id;
    catalog.touch_repo(&repo_id, repo.storage().location())?;
    let snaps = repo.snapshots()?;
    catalog.replace_snapshots(&repo_id, &snaps)?;
    Ok(snaps.len())
}

/// Applies retention and records the run; removed snapshots leave the catalog too.
pub fn forget<Z: chrono::TimeZone>(
    catalog: &Catalog,
    repo: &Repo,
    rules: &crate::policy::retention::KeepRules,
    tz: &Z,
    dry_run: bool,
    retry_lock: std::time::Duration,
) -> Result<Vec<crate::forget::Forgotten>> {
    let op = || crate::forget::run(repo, rules, tz, chrono::Utc::now(), dry_run, retry_lock);
    recorded(catalog, "forget", repo, None, !dry_run, op, |list| {
        let removed: Vec<_> = list
            .iter()
            .filter(|f| !f.decision.keep)
            .map(|f| f.id)
            .collect();
        catalog.delete_snapshots(&removed)?;
        Ok(RunEnd {
            status: "success",
            files: removed.len() as u64,
            ..Default::default()
        })
    })
}

/// Prunes and records the run.
pub fn prune(
    catalog: &Catalog,
    repo: &Repo,
    opts: &crate::repo::prune::PruneOptions,
) -> Result<crate::repo::prune::PruneReport> {
    let op = || crate::repo::prune::run(repo, opts, chrono::Utc::now());
    recorded(catalog, "prune", repo, None, !opts.dry_run, op, |r| {
        Ok(RunEnd {
            status: "success",
            bytes_stored: r.freed_bytes,
            ..Default::default()
        })
    })
}

/// Rebuilds the index from the packs, recording damaged and missing packs in the catalog
/// (so that backups stop trusting them).
pub fn repair(
    catalog: &Catalog,
    repo: &Repo,
    dry_run: bool,
    retry_lock: std::time::Duration,
) -> Result<crate::repo::repair::RepairReport> {
    let repo_id = repo.config().id;
    let op = || crate::repo::repair::run(repo, dry_run, retry_lock);
    recorded(catalog, "repair", repo, None, !dry_run, op, |r| {
        let now = chrono::Utc::now();
        for id in &r.damaged {
            catalog.record_verification(
                &repo_id,
                id,
                now,
                Some("damaged: moved to damaged/ by repair"),
            )?;
        }
        for id in &r.missing {
            catalog.record_verification(&repo_id, id, now, Some("missing from storage"))?;
        }
        Ok(RunEnd {
            status: "success",
            ..Default::default()
        })
    })
}
