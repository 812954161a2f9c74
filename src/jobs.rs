//! Jobs: a library operation together with its record in the catalog (run rows, snapshot
//! rows, verification coverage). The CLI and the daemon both run operations through here.
//!
//! Every job runs inside a tracing span `job` with its kind and run id.
//!
//! Recording goes through a [`Recorder`]: when the catalog is unusable, or fails part way,
//! the operation still runs and returns its result (one warning names the catalog problem).

use crate::backup::{self, BackupOptions, BackupOutcome};
use crate::cancel::Cancel;
use crate::catalog::{NewRun, Recorder, RepoKey, RunEnd, RunId, blocking::Catalog};
use crate::error::Result;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::restore::{self, RestoreOptions, RestoreOutcome};
use crate::verify::{self, ReadData, VerifyReport};

/// A manual run of `kind` for no policy.
fn job(kind: &str) -> NewRun<'_> {
    NewRun {
        kind,
        ..NewRun::default()
    }
}

/// Runs `op` as the job `new` says (its kind, policy and target; the repository is `repo`):
/// a run row is opened first (unless `record` is false, for dry runs) and closed with what
/// `end` makes of the outcome, or as failed with the error. `end` records what the outcome
/// adds (snapshot rows, coverage) through the same recorder.
fn recorded<T>(
    catalog: &Recorder,
    repo: &Repo,
    new: NewRun<'_>,
    record: bool,
    op: impl FnOnce() -> Result<T>,
    end: impl FnOnce(&T) -> RunEnd,
) -> Result<T> {
    recorded_run(catalog, repo, new, record, |_| op(), end)
}

/// [`recorded`] for an operation that records more under its run id (`None` when the run
/// is not recorded).
fn recorded_run<T>(
    catalog: &Recorder,
    repo: &Repo,
    new: NewRun<'_>,
    record: bool,
    op: impl FnOnce(Option<RunId>) -> Result<T>,
    end: impl FnOnce(&T) -> RunEnd,
) -> Result<T> {
    let kind = new.kind;
    if !record {
        let _span = tracing::info_span!("job", kind, run = "unrecorded").entered();
        return op(None);
    }
    let key = RepoKey::of(repo);
    let new = NewRun {
        repo: Some(&key),
        ..new
    };
    // A manual run (no schedule slot) is always claimed.
    let run = catalog.with(|c| c.claim_run(&new)).flatten();
    // Everything the job logs carries its kind and run id (the catalog's, when recorded).
    let span = match run {
        Some(id) => tracing::info_span!("job", kind, run = id.0),
        None => tracing::info_span!("job", kind, run = "unrecorded"),
    };
    let res = span.in_scope(|| op(run));
    let e = match &res {
        Ok(t) => end(t),
        Err(err) => RunEnd {
            status: "failed",
            error: Some(crate::error::chain(err)),
            ..Default::default()
        },
    };
    if let Some(run) = run {
        catalog.with(|c| c.finish_run(run, &e));
    }
    res
}

/// Backs up between the hooks of `opts` ([`crate::hooks::around`]) and records the run
/// (with `target`, the policy's name for `repo`, if it runs for a policy), each hook as it
/// ends, and the snapshot. An after-hook that fails with `abort` fails the run after its
/// snapshot is recorded.
pub fn backup(
    catalog: &Recorder,
    repo: &Repo,
    target: Option<&str>,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    let key = RepoKey::of(repo);
    catalog.with(|c| c.touch_repo(&key));
    let mut opts = opts.clone();
    opts.damaged_packs
        .extend(catalog.with(|c| c.damaged_packs(&key)).unwrap_or_default());
    let policy = opts.policy.clone();
    let new = NewRun {
        policy: policy.as_deref(),
        target,
        ..job("backup")
    };
    let ctx = crate::hooks::Context {
        repo: &key.location,
        policy: policy.as_deref(),
        target,
    };
    let op = |run: Option<RunId>| {
        let record = |h: &crate::hooks::HookRun| {
            if let Some(run) = run {
                catalog.with(|c| c.record_hook(run, h));
            }
        };
        crate::hooks::around(&opts.hooks, &ctx, &opts.cancel, record, || {
            backup::run(repo, &opts, progress)
        })
    };
    let (outcome, hook_failed) = recorded_run(catalog, repo, new, true, op, |(o, hook_failed)| {
        catalog.with(|c| c.put_snapshot(&key, &o.id, &o.snapshot));
        let s = &o.snapshot.summary;
        RunEnd {
            status: if hook_failed.is_some() {
                "failed"
            } else if o.warnings.is_empty() {
                "success"
            } else {
                "partial"
            },
            files: s.files,
            bytes_read: s.bytes_read,
            bytes_new: s.bytes_new,
            bytes_stored: s.bytes_stored,
            warnings: s.warnings,
            error: hook_failed.as_ref().map(|e| crate::error::chain(e)),
            snapshot: Some(o.id),
        }
    })?;
    match hook_failed {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

/// Restores snapshot `snapshot` (an id, a unique prefix, or `latest` as `filter` allows)
/// and records the run.
pub fn restore(
    catalog: &Recorder,
    repo: &Repo,
    snapshot: &str,
    filter: &crate::repo::SnapshotFilter,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let (sid, snap) = repo.find_snapshot_for(snapshot, filter)?;
    // The target takes the snapshot root's own metadata (mode, times, xattrs) when this
    // restore creates it or it is empty: never an existing directory's (like /tmp's).
    let fresh = !opts.dry_run
        && match std::fs::read_dir(&opts.target) {
            Ok(mut d) => d.next().is_none(),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
    let op = || {
        let mut o = restore::run(repo, sid, &snap, opts, progress)?;
        if fresh
            && opts.target.is_dir()
            && let Some(root) = &snap.root
        {
            restore::apply_root_metadata(&opts.target, root, &mut o.warnings);
        }
        Ok(o)
    };
    let new = NewRun {
        policy: snap.policy.as_deref(),
        ..job("restore")
    };
    recorded(catalog, repo, new, !opts.dry_run, op, |o| RunEnd {
        status: if o.is_complete() {
            "success"
        } else {
            "partial"
        },
        files: o.files,
        bytes_read: o.bytes,
        warnings: o.warnings.len() as u64,
        error: (!o.is_complete()).then(|| {
            format!(
                "{} entries failed, {} include pattern(s) matched nothing",
                o.failed.len(),
                o.unmatched_includes.len()
            )
        }),
        snapshot: Some(sid),
        ..Default::default()
    })
}

/// Verifies and records the run and each pack's result.
pub fn verify(
    catalog: &Recorder,
    repo: &Repo,
    read: ReadData,
    retry_lock: std::time::Duration,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let key = RepoKey::of(repo);
    catalog.with(|c| c.touch_repo(&key));
    // Without a catalog a subset check has no history: every pack counts as never verified.
    let last = catalog.with(|c| c.last_verified(&key)).unwrap_or_default();
    let op = || verify::run(repo, read, &last, retry_lock, cancel, progress);
    recorded(catalog, repo, job("verify"), true, op, |r| {
        let now = chrono::Utc::now();
        catalog.with(|c| {
            for p in &r.checked {
                c.record_verification(&key, &p.pack, now, p.error.as_deref())?;
            }
            Ok(())
        });
        RunEnd {
            status: if r.is_ok() { "success" } else { "failed" },
            bytes_read: r.bytes_read,
            error: r.problems.first().map(|p| p.message.clone()),
            ..Default::default()
        }
    })
}

/// Rebuilds a repository's snapshot rows from the repository; damaged manifests are
/// skipped (and logged by [`Repo::snapshots`]). Needs a working catalog.
pub fn rebuild_catalog(catalog: &Catalog, repo: &Repo) -> Result<crate::repo::SnapshotList> {
    let key = RepoKey::of(repo);
    catalog.touch_repo(&key)?;
    let snaps = repo.snapshots()?;
    catalog.replace_snapshots(&key, &snaps)?;
    Ok(snaps)
}

/// Forgets snapshots (by rules or ids) and records the run; removed snapshots leave the
/// catalog too.
pub fn forget<Z: chrono::TimeZone>(
    catalog: &Recorder,
    repo: &Repo,
    sel: crate::forget::Selection,
    tz: &Z,
    dry_run: bool,
    retry_lock: std::time::Duration,
    cancel: &Cancel,
) -> Result<crate::forget::ForgetReport> {
    let key = RepoKey::of(repo);
    let now = chrono::Utc::now();
    let op = || crate::forget::run(repo, sel, tz, now, dry_run, retry_lock, cancel);
    recorded(catalog, repo, job("forget"), !dry_run, op, |rep| {
        let removed = rep.removed();
        catalog.with(|c| c.delete_snapshots(&key, &removed));
        RunEnd {
            status: if rep.skipped.is_empty() {
                "success"
            } else {
                "partial"
            },
            files: removed.len() as u64,
            warnings: rep.skipped.len() as u64,
            ..Default::default()
        }
    })
}

/// Prunes and records the run.
pub fn prune(
    catalog: &Recorder,
    repo: &Repo,
    opts: &crate::repo::prune::PruneOptions,
) -> Result<crate::repo::prune::PruneReport> {
    let op = || crate::repo::prune::run(repo, opts, chrono::Utc::now());
    recorded(catalog, repo, job("prune"), !opts.dry_run, op, |r| RunEnd {
        status: "success",
        bytes_stored: r.freed_bytes,
        ..Default::default()
    })
}

/// Rebuilds the index from the packs, recording damaged and missing packs in the catalog
/// (so that backups stop trusting them).
pub fn repair(
    catalog: &Recorder,
    repo: &Repo,
    dry_run: bool,
    retry_lock: std::time::Duration,
    cancel: &Cancel,
) -> Result<crate::repo::repair::RepairReport> {
    let key = RepoKey::of(repo);
    let op = || crate::repo::repair::run(repo, dry_run, retry_lock, cancel);
    recorded(catalog, repo, job("repair"), !dry_run, op, |r| {
        let now = chrono::Utc::now();
        catalog.with(|c| {
            for id in &r.damaged {
                c.record_verification(&key, id, now, Some("damaged: moved to damaged/ by repair"))?;
            }
            for id in &r.missing {
                c.record_verification(&key, id, now, Some("missing from storage"))?;
            }
            Ok(())
        });
        RunEnd {
            status: "success",
            ..Default::default()
        }
    })
}

/// Sets undecodable snapshot manifests aside (`repair snapshots`) and records the run.
pub fn repair_snapshots(
    catalog: &Recorder,
    repo: &Repo,
    dry_run: bool,
    retry_lock: std::time::Duration,
    cancel: &Cancel,
) -> Result<crate::repo::repair::SnapshotRepairReport> {
    let op = || crate::repo::repair::snapshots(repo, dry_run, retry_lock, cancel);
    recorded(catalog, repo, job("repair"), !dry_run, op, |r| RunEnd {
        status: "success",
        warnings: r.set_aside.len() as u64,
        ..Default::default()
    })
}
