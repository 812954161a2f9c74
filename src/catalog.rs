//! The catalog: a SQL database (SQLite by default) of runs, snapshots and verification
//! coverage. History plus a cache: the repositories stay the source of truth, and
//! `catalog rebuild` reconstructs the snapshot rows from them.
//!
//! A repository is known by its id *and* its location ([`RepoKey`]): a copied repository
//! keeps its id, and its rows must not merge with the original's.
//!
//! Because the catalog is not the source of truth, an unusable catalog (a corrupt file, a
//! data directory that cannot be written, a database failing mid-run) must not stop a
//! backup or a restore: jobs record through a [`Recorder`], which warns once naming the
//! problem and then records nothing for the rest of the command.

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

/// Which repository a row belongs to: its id and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoKey {
    /// Repository id from its config.
    pub id: Id,
    /// Its storage location (absolute path or URL).
    pub location: String,
}

impl RepoKey {
    /// The key of an open repository.
    pub fn of(repo: &crate::repo::Repo) -> RepoKey {
        RepoKey {
            id: repo.config().id,
            location: repo.storage().location().to_string(),
        }
    }
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

    /// Opens the catalog for `catalog rebuild`: a SQLite catalog file that exists but cannot
    /// be opened or migrated (corrupt, not a database) is moved aside as
    /// `<file>.broken-<UTC time>` (with its `-wal` and `-shm` files) and a fresh one is
    /// created. Returns where the broken file went. A catalog that fails for another reason
    /// (an unwritable directory, a bad URL) is still an error.
    pub fn open_or_replace(url: &str, rt: Handle) -> Result<(Catalog, Option<std::path::PathBuf>)> {
        let err = match Catalog::open(url, rt.clone()) {
            Ok(c) => return Ok((c, None)),
            Err(e) => e,
        };
        let file = SqliteConnectOptions::from_str(url)
            .ok()
            .map(|o| o.get_filename().to_path_buf());
        let Some(file) = file.filter(|f| f.is_file()) else {
            return Err(err);
        };
        if err.kind() != crate::error::ErrorKind::Catalog {
            return Err(err);
        }
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let mut aside = file.clone().into_os_string();
        aside.push(format!(".broken-{stamp}"));
        let aside = std::path::PathBuf::from(aside);
        std::fs::rename(&file, &aside).map_err(|e| Error::io("moving aside", &file, e))?;
        for ext in ["-wal", "-shm"] {
            let mut side = file.clone().into_os_string();
            side.push(ext);
            let side = std::path::PathBuf::from(side);
            if side.exists() {
                let mut to = aside.clone().into_os_string();
                to.push(ext);
                std::fs::rename(&side, &to).map_err(|e| Error::io("moving aside", &side, e))?;
            }
        }
        tracing::warn!(
            "catalog {} could not be opened ({}): moved it to {} and started a new one",
            file.display(),
            crate::error::chain(&err),
            aside.display()
        );
        Ok((Catalog::open(url, rt)?, Some(aside)))
    }

    /// Records that a repository was seen (a new location of a known id is a new row).
    pub fn touch_repo(&self, repo: &RepoKey) -> Result<()> {
        self.rt.block_on(
            sqlx::query(
                "INSERT INTO repositories (id, location, first_seen) VALUES (?, ?, ?)
                 ON CONFLICT (id, location) DO NOTHING",
            )
            .bind(repo.id.to_hex())
            .bind(&repo.location)
            .bind(Utc::now().to_rfc3339())
            .execute(&self.pool),
        )?;
        Ok(())
    }

    /// Starts recording a run.
    pub fn start_run(
        &self,
        kind: &str,
        repo: Option<&RepoKey>,
        policy: Option<&str>,
    ) -> Result<RunId> {
        let row = self.rt.block_on(
            sqlx::query("INSERT INTO runs (kind, repo_id, repo_location, policy, status, started_at) VALUES (?, ?, ?, ?, 'running', ?)")
                .bind(kind)
                .bind(repo.map(|r| r.id.to_hex()))
                .bind(repo.map(|r| r.location.clone()))
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
    pub fn put_snapshot(&self, repo: &RepoKey, id: &Id, s: &Snapshot) -> Result<()> {
        self.rt.block_on(
            sqlx::query(
                "INSERT INTO snapshots (id, repo_id, repo_location, time, hostname, paths, kind, parent, tree, policy,
                 tags, files, bytes_total, bytes_stored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (repo_id, repo_location, id) DO UPDATE SET time = excluded.time,
                 hostname = excluded.hostname, paths = excluded.paths, kind = excluded.kind,
                 parent = excluded.parent, tree = excluded.tree, policy = excluded.policy,
                 tags = excluded.tags, files = excluded.files, bytes_total = excluded.bytes_total,
                 bytes_stored = excluded.bytes_stored",
            )
            .bind(id.to_hex())
            .bind(repo.id.to_hex())
            .bind(&repo.location)
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
    pub fn replace_snapshots(&self, repo: &RepoKey, snaps: &[(Id, Snapshot)]) -> Result<()> {
        self.rt.block_on(
            sqlx::query("DELETE FROM snapshots WHERE repo_id = ? AND repo_location = ?")
                .bind(repo.id.to_hex())
                .bind(&repo.location)
                .execute(&self.pool),
        )?;
        for (id, s) in snaps {
            self.put_snapshot(repo, id, s)?;
        }
        Ok(())
    }

    /// Deletes snapshot rows (after `forget`).
    pub fn delete_snapshots(&self, repo: &RepoKey, ids: &[Id]) -> Result<()> {
        for id in ids {
            self.rt.block_on(
                sqlx::query(
                    "DELETE FROM snapshots WHERE repo_id = ? AND repo_location = ? AND id = ?",
                )
                .bind(repo.id.to_hex())
                .bind(&repo.location)
                .bind(id.to_hex())
                .execute(&self.pool),
            )?;
        }
        Ok(())
    }

    /// Number of snapshot rows of a repository.
    pub fn count_snapshots(&self, repo: &RepoKey) -> Result<i64> {
        let row = self.rt.block_on(
            sqlx::query(
                "SELECT COUNT(*) AS n FROM snapshots WHERE repo_id = ? AND repo_location = ?",
            )
            .bind(repo.id.to_hex())
            .bind(&repo.location)
            .fetch_one(&self.pool),
        )?;
        Ok(row.get("n"))
    }

    /// Records the outcome of a pack's data verification.
    pub fn record_verification(
        &self,
        repo: &RepoKey,
        pack: &Id,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<()> {
        self.rt.block_on(
            sqlx::query("INSERT INTO pack_verifications (repo_id, repo_location, pack_id, verified_at, ok, error) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(repo.id.to_hex())
                .bind(&repo.location)
                .bind(pack.to_hex())
                .bind(at.to_rfc3339())
                .bind(error.is_none())
                .bind(error)
                .execute(&self.pool),
        )?;
        Ok(())
    }

    /// When each pack of a repository was last verified successfully.
    pub fn last_verified(&self, repo: &RepoKey) -> Result<HashMap<Id, String>> {
        let rows = self.rt.block_on(
            sqlx::query("SELECT pack_id, MAX(verified_at) AS at FROM pack_verifications WHERE repo_id = ? AND repo_location = ? AND ok = 1 GROUP BY pack_id")
                .bind(repo.id.to_hex())
                .bind(&repo.location)
                .fetch_all(&self.pool),
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.get::<String, _>("pack_id").parse().ok()?, r.get("at"))))
            .collect())
    }

    /// Packs whose latest data verification failed.
    pub fn damaged_packs(&self, repo: &RepoKey) -> Result<Vec<Id>> {
        let rows = self.rt.block_on(
            sqlx::query(
                "SELECT v.pack_id FROM pack_verifications v WHERE v.repo_id = ? AND v.repo_location = ? AND v.ok = 0 AND v.verified_at =
                   (SELECT MAX(w.verified_at) FROM pack_verifications w WHERE w.repo_id = v.repo_id
                    AND w.repo_location = v.repo_location AND w.pack_id = v.pack_id)",
            )
            .bind(repo.id.to_hex())
            .bind(&repo.location)
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
                   (SELECT COUNT(*) FROM snapshots s WHERE s.repo_id = r.id AND s.repo_location = r.location) AS snapshots,
                   (SELECT MAX(time) FROM snapshots s WHERE s.repo_id = r.id AND s.repo_location = r.location) AS latest,
                   (SELECT COUNT(DISTINCT pack_id) FROM pack_verifications v WHERE v.repo_id = r.id
                      AND v.repo_location = r.location AND v.ok = 1) AS verified,
                   (SELECT MAX(verified_at) FROM pack_verifications v WHERE v.repo_id = r.id
                      AND v.repo_location = r.location) AS last_verify
                 FROM repositories r ORDER BY r.location, r.id",
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

/// Records jobs in a catalog if there is a usable one, and otherwise lets them run.
///
/// Opening may fail (a corrupt file, an unwritable data directory) and so may any later
/// statement (disk full, the file damaged under us). The first failure is logged once as a
/// warning naming the catalog and its cause; from then on nothing is recorded and every
/// query answers `None`, so the operation itself goes on: the repository is the source of
/// truth and `backstop catalog rebuild` restores the snapshot records later.
pub struct Recorder {
    catalog: Option<Catalog>,
    url: String,
    failed: std::sync::atomic::AtomicBool,
}

impl Recorder {
    /// Opens the catalog at `url`, or a recorder that records nothing (warning once).
    pub fn open(url: &str, rt: Handle) -> Recorder {
        match Catalog::open(url, rt) {
            Ok(c) => Recorder::new(c, url),
            Err(e) => {
                let r = Recorder {
                    catalog: None,
                    url: url.to_string(),
                    failed: false.into(),
                };
                r.disable(&e);
                r
            }
        }
    }

    /// Records into an open catalog.
    pub fn new(catalog: Catalog, url: &str) -> Recorder {
        Recorder {
            catalog: Some(catalog),
            url: url.to_string(),
            failed: false.into(),
        }
    }

    /// Whether records are still being written.
    pub fn is_recording(&self) -> bool {
        self.catalog.is_some() && !self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` on the catalog; `None` if there is none or it fails (then it is disabled).
    pub fn with<T>(&self, f: impl FnOnce(&Catalog) -> Result<T>) -> Option<T> {
        if !self.is_recording() {
            return None;
        }
        let c = self.catalog.as_ref()?;
        match f(c) {
            Ok(t) => Some(t),
            Err(e) => {
                self.disable(&e);
                None
            }
        }
    }

    fn disable(&self, e: &Error) {
        if !self.failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "catalog {} is unusable ({}); going on without recording this run (the repository \
                 is the source of truth: `backstop catalog rebuild` restores the snapshot records)",
                self.url,
                crate::error::chain(e)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u8, location: &str) -> RepoKey {
        RepoKey {
            id: Id([id; 32]),
            location: location.into(),
        }
    }

    #[test]
    fn a_version_1_catalog_migrates_to_location_keys_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let opts = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = rt
            .block_on(SqlitePoolOptions::new().connect_with(opts))
            .unwrap();
        rt.block_on(MIGRATOR.run_to(20261121000001, &pool)).unwrap();
        let id = Id([7; 32]).to_hex();
        for q in [
            format!("INSERT INTO repositories VALUES ('{id}', '/old/place', '2026-01-01')"),
            format!(
                "INSERT INTO snapshots VALUES ('{}', '{id}', '2026-01-01T00:00:00Z', 'h', '[]', 'full', NULL, '{}', NULL, '[]', 1, 2, 3)",
                Id([1; 32]).to_hex(),
                Id([2; 32]).to_hex()
            ),
            format!(
                "INSERT INTO pack_verifications VALUES ('{id}', '{}', '2026-01-02', 1, NULL)",
                Id([3; 32]).to_hex()
            ),
        ] {
            rt.block_on(sqlx::query(sqlx::AssertSqlSafe(q)).execute(&pool))
                .unwrap();
        }
        rt.block_on(pool.close());
        let cat = Catalog::open(&url, rt.handle().clone()).unwrap();
        let old = key(7, "/old/place");
        assert_eq!(cat.count_snapshots(&old).unwrap(), 1);
        assert_eq!(cat.last_verified(&old).unwrap().len(), 1);
        let s = cat.repo_summaries().unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].snapshots, s[0].packs_verified), (1, 1));
    }

    #[test]
    fn a_catalog_failing_mid_run_stops_recording_and_lets_the_job_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cat = Catalog::open(&url, rt.handle().clone()).unwrap();
        let rec = Recorder::new(cat.clone(), &url);
        let run = rec.with(|c| c.start_run("backup", Some(&key(1, "/r")), None));
        assert!(run.is_some() && rec.is_recording());
        // The database goes away under the running job.
        rt.block_on(cat.pool.close());
        let end = RunEnd {
            status: "success",
            ..Default::default()
        };
        assert!(rec.with(|c| c.finish_run(run.unwrap(), &end)).is_none());
        assert!(!rec.is_recording());
        // From then on nothing is attempted.
        let mut called = false;
        assert!(
            rec.with(|_| {
                called = true;
                Ok(())
            })
            .is_none()
        );
        assert!(!called);
        // A catalog that cannot be opened gives a recorder that records nothing.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let bad = format!("sqlite://{}", file.join("catalog.db").display());
        assert!(!Recorder::open(&bad, rt.handle().clone()).is_recording());
    }

    #[test]
    fn a_copied_repository_gets_its_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cat = Catalog::open(&url, rt.handle().clone()).unwrap();
        let (a, b) = (key(9, "/a"), key(9, "/b"));
        cat.touch_repo(&a).unwrap();
        cat.touch_repo(&b).unwrap();
        cat.touch_repo(&a).unwrap();
        let snap: Snapshot = serde_json::from_value(serde_json::json!({
            "version": 1, "time": "2026-01-01T00:00:00Z", "hostname": "h", "username": "u",
            "source": "files", "program": "t", "parent": null, "policy": null, "paths": [],
            "kind": "full", "tree": Id([5; 32]), "summary": {}
        }))
        .unwrap_or_else(|e| panic!("snapshot json: {e}"));
        // The same snapshot id in both (a copy): two rows, each deleted on its own.
        cat.put_snapshot(&a, &Id([1; 32]), &snap).unwrap();
        cat.put_snapshot(&b, &Id([1; 32]), &snap).unwrap();
        cat.put_snapshot(&b, &Id([2; 32]), &snap).unwrap();
        cat.record_verification(&b, &Id([3; 32]), Utc::now(), Some("bad"))
            .unwrap();
        assert_eq!(cat.count_snapshots(&a).unwrap(), 1);
        assert_eq!(cat.count_snapshots(&b).unwrap(), 2);
        assert!(cat.damaged_packs(&a).unwrap().is_empty());
        assert_eq!(cat.damaged_packs(&b).unwrap(), vec![Id([3; 32])]);
        cat.delete_snapshots(&b, &[Id([1; 32])]).unwrap();
        assert_eq!(cat.count_snapshots(&a).unwrap(), 1);
        assert_eq!(cat.count_snapshots(&b).unwrap(), 1);
        let s = cat.repo_summaries().unwrap();
        assert_eq!(
            s.iter()
                .map(|r| (r.location.as_str(), r.snapshots))
                .collect::<Vec<_>>(),
            [("/a", 1), ("/b", 1)]
        );
    }
}
