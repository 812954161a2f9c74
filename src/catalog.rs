//! The catalog: a SQL database (SQLite by default) of runs, snapshots and verification
//! coverage. History plus a cache: the repositories stay the source of truth, and
//! `catalog rebuild` reconstructs the snapshot rows from them.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::runtime::Handle;

use crate::error::{Error, Result};
use crate::repo::{Id, Snapshot};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// An open catalog.
#[derive(Clone)]
pub struct Catalog {
    pool: SqlitePool,
    rt: Handle,
}

/// A run being recorded.
#[derive(Clone, Copy, Debug)]
pub struct RunId(i64);

/// How a run ended.
#[derive(Clone, Debug, Default)]
pub struct RunEnd {
    /// success | partial | failed.
    pub status: &'static str,
    /// Files processed.
    pub files: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes new to the repository.
    pub bytes_new: u64,
    /// Bytes stored.
    pub bytes_stored: u64,
    /// Warnings.
    pub warnings: u64,
    /// Error message.
    pub error: Option<String>,
    /// Snapshot produced.
    pub snapshot: Option<Id>,
}

/// A run row.
#[derive(Clone, Debug, Serialize)]
pub struct RunRow {
    /// Row id.
    pub id: i64,
    /// Job kind.
    pub kind: String,
    /// Repository id.
    pub repo_id: Option<String>,
    /// Policy.
    pub policy: Option<String>,
    /// Status.
    pub status: String,
    /// Start.
    pub started_at: String,
    /// End.
    pub finished_at: Option<String>,
    /// Files.
    pub files: i64,
    /// Bytes read.
    pub bytes_read: i64,
    /// Bytes new.
    pub bytes_new: i64,
    /// Bytes stored.
    pub bytes_stored: i64,
    /// Warnings.
    pub warnings: i64,
    /// Error.
    pub error: Option<String>,
    /// Snapshot.
    pub snapshot_id: Option<String>,
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `url` and applies migrations.
    pub fn open(url: &str, rt: Handle) -> Result<Catalog> {
        if !url.starts_with("sqlite:") {
            return Err(Error::config(format!(
                "catalog '{url}': only sqlite: URLs are supported in this version"
            )));
        }
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::config(format!("invalid catalog URL '{url}': {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(30));
        if let Some(parent) = opts.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        }
        let pool = rt
            .block_on(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(opts),
            )
            .map_err(|e| Error::from(e).context(format!("opening catalog {url}")))?;
        rt.block_on(MIGRATOR.run(&pool))?;
        Ok(Catalog { pool, rt })
    }

    /// Records that a repository was seen at `location`.
    pub fn touch_repo(&self, id: &Id, location: &str) -> Result<()> {
        self.rt.block_on(
            sqlx::query(
                "INSERT INTO repositories (id, location, first_seen) VALUES (?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET location = excluded.location",
            )
            .bind(id.to_hex())
            .bind(location)
            .bind(Utc::now().to_rfc3339())
            .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Starts recording a run.
    pub fn start_run(&self, kind: &str, repo: Option<&Id>, policy: Option<&str>) -> Result<RunId> {
        let row = self.rt.block_on(
            sqlx::query("INSERT INTO runs (kind, repo_id, policy, status, started_at) VALUES (?, ?, ?, 'running', ?)")
                .bind(kind)
                .bind(repo.map(Id::to_hex))
                .bind(policy)
                .bind(Utc::now().to_rfc3339())
                .execute(&self.pool),
        )?;
        Ok(RunId(row.last_insert_rowid()))
    }

    /// Finishes a run.
    pub fn finish_run(&self, run: RunId, end: &RunEnd) -> Result<()> {
        self.rt.block_on(
            sqlx::query(
                "UPDATE runs SET status = ?, finished_at = ?, files = ?, bytes_read = ?, bytes_new = ?,
                 bytes_stored = ?, warnings = ?, error = ?, snapshot_id = ? WHERE id = ?",
            )
            .bind(end.status)
            .bind(Utc::now().to_rfc3339())
            .bind(end.files as i64)
            .bind(end.bytes_read as i64)
            .bind(end.bytes_new as i64)
            .bind(end.bytes_stored as i64)
            .bind(end.warnings as i64)
            .bind(&end.error)
            .bind(end.snapshot.map(|s| s.to_hex()))
            .bind(run.0)
            .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Records (or refreshes) a snapshot row.
    pub fn put_snapshot(&self, repo: &Id, id: &Id, s: &Snapshot) -> Result<()> {
        self.rt.block_on(
            sqlx::query(
                "INSERT OR REPLACE INTO snapshots (id, repo_id, time, hostname, paths, kind, parent, tree, policy,
                 tags, files, bytes_total, bytes_stored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id.to_hex())
            .bind(repo.to_hex())
            .bind(s.time.to_rfc3339())
            .bind(&s.hostname)
            .bind(serde_json::to_string(&s.paths).expect("paths serialize"))
            .bind(s.kind.to_string())
            .bind(s.parent.map(|p| p.to_hex()))
            .bind(s.tree.to_hex())
            .bind(&s.policy)
            .bind(serde_json::to_string(&s.tags).expect("tags serialize"))
            .bind(s.summary.files as i64)
            .bind(s.summary.bytes_total as i64)
            .bind(s.summary.bytes_stored as i64)
            .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Replaces a repository's snapshot rows with `snaps` (catalog rebuild).
    pub fn replace_snapshots(&self, repo: &Id, snaps: &[(Id, Snapshot)]) -> Result<()> {
        self.rt.block_on(
            sqlx::query("DELETE FROM snapshots WHERE repo_id = ?")
                .bind(repo.to_hex())
                .execute(&self.pool),
        )?;
        for (id, s) in snaps {
            self.put_snapshot(repo, id, s)?;
        }
        Ok(())
    }

    /// Deletes snapshot rows (after `forget`).
    pub fn delete_snapshots(&self, ids: &[Id]) -> Result<()> {
        for id in ids {
            self.rt.block_on(
                sqlx::query("DELETE FROM snapshots WHERE id = ?")
                    .bind(id.to_hex())
                    .execute(&self.pool),
            )?;
        }
        Ok(())
    }

    /// Number of snapshot rows of a repository.
    pub fn count_snapshots(&self, repo: &Id) -> Result<i64> {
        let row = self.rt.block_on(
            sqlx::query("SELECT COUNT(*) AS n FROM snapshots WHERE repo_id = ?")
                .bind(repo.to_hex())
                .fetch_one(&self.pool),
        )?;
        Ok(row.get("n"))
    }

    /// Records the outcome of a pack's data verification.
    pub fn record_verification(
        &self,
        repo: &Id,
        pack: &Id,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<()> {
        self.rt.block_on(
            sqlx::query("INSERT INTO pack_verifications (repo_id, pack_id, verified_at, ok, error) VALUES (?, ?, ?, ?, ?)")
                .bind(repo.to_hex())
                .bind(pack.to_hex())
                .bind(at.to_rfc3339())
                .bind(error.is_none())
                .bind(error)
                .execute(&self.pool),
        )?;
        Ok(())
    }

    /// When each pack of a repository was last verified successfully.
    pub fn last_verified(&self, repo: &Id) -> Result<HashMap<Id, String>> {
        let rows = self.rt.block_on(
            sqlx::query("SELECT pack_id, MAX(verified_at) AS at FROM pack_verifications WHERE repo_id = ? AND ok = 1 GROUP BY pack_id")
                .bind(repo.to_hex())
                .fetch_all(&self.pool),
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.get::<String, _>("pack_id").parse().ok()?, r.get("at"))))
            .collect())
    }

    /// Packs whose latest data verification failed.
    pub fn damaged_packs(&self, repo: &Id) -> Result<Vec<Id>> {
        let rows = self.rt.block_on(
            sqlx::query(
                "SELECT v.pack_id FROM pack_verifications v WHERE v.repo_id = ? AND v.ok = 0 AND v.verified_at =
                   (SELECT MAX(w.verified_at) FROM pack_verifications w WHERE w.repo_id = v.repo_id AND w.pack_id = v.pack_id)",
            )
            .bind(repo.to_hex())
            .fetch_all(&self.pool),
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.get::<String, _>("pack_id").parse().ok())
            .collect())
    }

    /// The most recent runs, newest first.
    pub fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>> {
        let rows = self.rt.block_on(
            sqlx::query("SELECT * FROM runs ORDER BY id DESC LIMIT ?")
                .bind(limit)
                .fetch_all(&self.pool),
        )?;
        Ok(rows
            .into_iter()
            .map(|r| RunRow {
                id: r.get("id"),
                kind: r.get("kind"),
                repo_id: r.get("repo_id"),
                policy: r.get("policy"),
                status: r.get("status"),
                started_at: r.get("started_at"),
                finished_at: r.get("finished_at"),
                files: r.get("files"),
                bytes_read: r.get("bytes_read"),
                bytes_new: r.get("bytes_new"),
                bytes_stored: r.get("bytes_stored"),
                warnings: r.get("warnings"),
                error: r.get("error"),
                snapshot_id: r.get("snapshot_id"),
            })
            .collect())
    }

    /// Per repository: location, snapshot count, latest snapshot time, packs verified.
    pub fn repo_summaries(&self) -> Result<Vec<RepoSummary>> {
        let rows = self.rt.block_on(
            sqlx::query(
                "SELECT r.id, r.location,
                   (SELECT COUNT(*) FROM snapshots s WHERE s.repo_id = r.id) AS snapshots,
                   (SELECT MAX(time) FROM snapshots s WHERE s.repo_id = r.id) AS latest,
                   (SELECT COUNT(DISTINCT pack_id) FROM pack_verifications v WHERE v.repo_id = r.id AND v.ok = 1) AS verified,
                   (SELECT MAX(verified_at) FROM pack_verifications v WHERE v.repo_id = r.id) AS last_verify
                 FROM repositories r ORDER BY r.location",
            )
            .fetch_all(&self.pool),
        )?;
        Ok(rows
            .into_iter()
            .map(|r| RepoSummary {
                id: r.get("id"),
                location: r.get("location"),
                snapshots: r.get("snapshots"),
                latest_snapshot: r.get("latest"),
                packs_verified: r.get("verified"),
                last_verify: r.get("last_verify"),
            })
            .collect())
    }
}

/// One repository as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RepoSummary {
    /// Repository id.
    pub id: String,
    /// Where it is.
    pub location: String,
    /// Snapshots in the catalog.
    pub snapshots: i64,
    /// Time of the newest snapshot.
    pub latest_snapshot: Option<String>,
    /// Packs verified at least once.
    pub packs_verified: i64,
    /// Last data verification.
    pub last_verify: Option<String>,
}
