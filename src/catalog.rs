//! The catalog: a SQL database of runs, snapshots and verification coverage, on SQLite (a
//! file, the default) or PostgreSQL (one server for a fleet of hosts).
//!
//! History plus a cache: the repositories stay the source of truth, and `catalog rebuild`
//! reconstructs the snapshot rows from them. A repository is known by its id *and* its
//! location ([`RepoKey`]): a copied repository keeps its id, and its rows must not merge
//! with the original's.
//!
//! # Two backends, one set of statements
//!
//! [`Catalog`] holds either a SQLite or a PostgreSQL pool. Every statement is written once,
//! in SQL both accept (`$N` placeholders, `ON CONFLICT … DO UPDATE`, `RETURNING id`, `TRUE`
//! and `FALSE`, text timestamps in RFC 3339), and the `on_pool!` macro expands it for each
//! pool, so rows decode with each driver's native types. The schemas are migrated per
//! backend (`migrations/sqlite/`, `migrations/postgres/`); both end at the same version.
//! `docs/DECISIONS.md` says why this is not sqlx's `Any` driver.
//!
//! # Async first, blocking where the engines need it
//!
//! [`Catalog`]'s methods are async: the daemon and anything else already on a runtime use
//! them directly. The synchronous engines and the CLI use [`blocking::Catalog`], which runs
//! the same futures on a dedicated catalog runtime and may be called from anywhere, inside
//! a runtime or not (see its module for how).
//!
//! # Schedules: caught up once, never twice
//!
//! A run started for a schedule carries the time it was scheduled for; `(policy, kind,
//! scheduled_for)` is unique, so when two daemons (or a daemon restarted mid-catch-up) try
//! to start the same slot, exactly one [`Catalog::claim_run`] gets a run id and the others
//! learn that the slot is taken. Manual runs have no slot (NULL), and NULLs never conflict.
//!
//! # An unusable catalog never stops a job
//!
//! Because the catalog is not the source of truth, an unusable catalog (a corrupt file, a
//! data directory that cannot be written, a database server down or failing mid-run) must
//! not stop a backup or a restore: jobs record through a [`Recorder`], which warns once
//! naming the problem and then records nothing for the rest of the command.

pub mod blocking;
mod recorder;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::error::{Error, ErrorKind, Result};
use crate::hooks::{HookRun, Phase};
use crate::repo::{Id, Snapshot};

pub use recorder::Recorder;

/// SQLite's schema history. Versions 20261121000001 and 20261123000001 were written before
/// PostgreSQL was supported and must stay byte for byte (sqlx checks their checksums when
/// an existing catalog is opened).
static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
/// PostgreSQL's schema: created at the latest version directly.
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// How long opening waits for a database server before giving up: a backup whose catalog
/// server is unreachable warns and goes on instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `$body` with `$p` bound to the SQLite or the PostgreSQL pool (or transaction):
/// the statement is written once and type-checked against both drivers.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// An open catalog (async API; [`blocking::Catalog`] wraps it for synchronous code).
#[derive(Clone)]
pub struct Catalog {
    pool: Pool,
    /// The URL as given, with any password masked: for messages.
    url: String,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The database kind of a catalog URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file: `sqlite://PATH`, `sqlite:PATH`, or a plain path.
    Sqlite,
    /// A PostgreSQL database: `postgres://` or `postgresql://`.
    Postgres,
}

impl Backend {
    /// Which backend `url` names, or a config error for a scheme that is not supported.
    pub fn of_url(url: &str) -> Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if let Some((scheme, _)) = url.split_once("://") {
            Err(Error::config(format!(
                "catalog '{}': the scheme '{scheme}:' is not supported (use sqlite://PATH, a \
                 file path, or postgres://USER@HOST/DATABASE)",
                redact(url)
            )))
        } else if url.is_empty() {
            Err(Error::config("the catalog URL is empty"))
        } else {
            Ok(Backend::Sqlite)
        }
    }
}

/// `url` with the password (if any) replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (auth, tail) = rest.split_at(auth_end);
    match auth.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:***@{host}{tail}")
        }
        _ => url.to_string(),
    }
}

/// The SQLite options of a `sqlite:` URL or a plain path.
fn sqlite_options(url: &str) -> Result<SqliteConnectOptions> {
    let opts = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::config(format!("invalid catalog URL '{url}': {e}")))?
    } else {
        SqliteConnectOptions::new().filename(url)
    };
    Ok(opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30)))
}

/// The file of a SQLite catalog URL, if it is one.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    if Backend::of_url(url).ok()? != Backend::Sqlite {
        return None;
    }
    sqlite_options(url)
        .ok()
        .map(|o| o.get_filename().to_path_buf())
}

/// A time as the catalog stores a schedule slot: UTC, to the second (cron's resolution), so
/// that the same slot is always the same text and the unique index sees it.
fn slot_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunId(pub i64);

/// A run to start: what, on which repository, for which policy and target, on which host,
/// and for which schedule slot.
#[derive(Clone, Debug, Default)]
pub struct NewRun<'a> {
    /// Job kind: backup | restore | verify | forget | prune | repair | drill | …
    pub kind: &'a str,
    /// The repository it works on.
    pub repo: Option<&'a RepoKey>,
    /// The policy it runs for.
    pub policy: Option<&'a str>,
    /// The policy's target name (`[targets.NAME]`); the location is in `repo`.
    pub target: Option<&'a str>,
    /// The host it runs on; `None` for this machine's host name.
    pub host: Option<&'a str>,
    /// The schedule slot it runs for; `None` for a manual run (never conflicts).
    pub scheduled_for: Option<DateTime<Utc>>,
}

/// This machine's host name, as runs record it.
pub fn this_host() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

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
    /// Repository location.
    pub repo_location: Option<String>,
    /// Policy.
    pub policy: Option<String>,
    /// The policy's target name.
    pub target: Option<String>,
    /// Host it ran on (absent for runs recorded before hosts were).
    pub host: Option<String>,
    /// The schedule slot it ran for (absent for manual runs).
    pub scheduled_for: Option<String>,
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
    /// The hooks that ran with it, in order (empty for runs without hooks).
    pub hooks: Vec<HookRun>,
}

/// A snapshot row.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotRow {
    /// Snapshot id.
    pub id: String,
    /// When the backup started.
    pub time: String,
    /// Host it ran on.
    pub hostname: String,
    /// Source kind (absent in rows recorded before it was).
    pub source: Option<String>,
    /// Source key ([`Snapshot::source_key`]; absent in rows recorded before it was).
    pub source_key: Option<String>,
    /// Backed-up paths.
    pub paths: Vec<String>,
    /// full | incremental.
    pub kind: String,
    /// Parent snapshot.
    pub parent: Option<String>,
    /// Root tree.
    pub tree: String,
    /// Policy.
    pub policy: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Files.
    pub files: i64,
    /// Bytes in the source.
    pub bytes_total: i64,
    /// Bytes stored.
    pub bytes_stored: i64,
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

/// Inserts or refreshes one snapshot row: `$1`… as bound by [`snapshot_upsert!`].
const SNAPSHOT_UPSERT: &str = "INSERT INTO snapshots (id, repo_id, repo_location, time, hostname,
     paths, kind, parent, tree, policy, tags, files, bytes_total, bytes_stored, source, source_key)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
     ON CONFLICT (repo_id, repo_location, id) DO UPDATE SET time = excluded.time,
     hostname = excluded.hostname, paths = excluded.paths, kind = excluded.kind,
     parent = excluded.parent, tree = excluded.tree, policy = excluded.policy,
     tags = excluded.tags, files = excluded.files, bytes_total = excluded.bytes_total,
     bytes_stored = excluded.bytes_stored, source = excluded.source,
     source_key = excluded.source_key";

/// [`SNAPSHOT_UPSERT`] with its values bound, ready for any executor.
macro_rules! snapshot_upsert {
    ($repo:expr, $id:expr, $s:expr) => {
        sqlx::query(SNAPSHOT_UPSERT)
            .bind($id.to_hex())
            .bind($repo.id.to_hex())
            .bind($repo.location.clone())
            .bind($s.time.to_rfc3339())
            .bind($s.hostname.clone())
            .bind(serde_json::to_string(&$s.paths).expect("a list of strings serializes"))
            .bind($s.kind.to_string())
            .bind($s.parent.map(|p| p.to_hex()))
            .bind($s.tree.to_hex())
            .bind($s.policy.clone())
            .bind(serde_json::to_string(&$s.tags).expect("a list of strings serializes"))
            .bind($s.summary.files as i64)
            .bind($s.summary.bytes_total as i64)
            .bind($s.summary.bytes_stored as i64)
            .bind($s.source.clone())
            .bind($s.source_key())
    };
}

impl Catalog {
    /// Opens the catalog at `url` and brings its schema to the latest version. A SQLite
    /// file (and its directory) is created if missing; a PostgreSQL database must exist.
    pub async fn open(url: &str) -> Result<Catalog> {
        let shown = redact(url);
        let pool = match Backend::of_url(url)? {
            Backend::Sqlite => {
                let opts = sqlite_options(url)?;
                if let Some(parent) = opts.get_filename().parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Error::io("creating", parent, e))?;
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(opts)
                    .await
                    .map_err(|e| Error::from(e).context(format!("opening catalog {shown}")))?;
                SQLITE_MIGRATOR
                    .run(&pool)
                    .await
                    .map_err(|e| Error::from(e).context(format!("catalog {shown}")))?;
                Pool::Sqlite(pool)
            }
            Backend::Postgres => {
                let opts = PgConnectOptions::from_str(url)
                    .map_err(|e| Error::config(format!("invalid catalog URL '{shown}': {e}")))?
                    .application_name("backstop");
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(opts)
                    .await
                    .map_err(|e| Error::from(e).context(format!("opening catalog {shown}")))?;
                // sqlx serializes concurrent migrators with an advisory lock, so hosts of a
                // fleet opening a fresh database at once apply the schema once.
                POSTGRES_MIGRATOR
                    .run(&pool)
                    .await
                    .map_err(|e| Error::from(e).context(format!("catalog {shown}")))?;
                Pool::Postgres(pool)
            }
        };
        Ok(Catalog { pool, url: shown })
    }

    /// Opens the catalog for `catalog rebuild`: a SQLite catalog file that exists but cannot
    /// be opened or migrated (corrupt, not a database) is moved aside as
    /// `<file>.broken-<UTC time>` (with its `-wal` and `-shm` files) and a fresh one is
    /// created. Returns where the broken file went. A catalog that fails for another reason
    /// (an unwritable directory, a bad URL, a PostgreSQL server) is still an error.
    pub async fn open_or_replace(url: &str) -> Result<(Catalog, Option<PathBuf>)> {
        let err = match Catalog::open(url).await {
            Ok(c) => return Ok((c, None)),
            Err(e) => e,
        };
        let Some(file) = sqlite_file(url).filter(|f| f.is_file()) else {
            return Err(err);
        };
        if err.kind() != ErrorKind::Catalog {
            return Err(err);
        }
        let aside = move_aside(&file)?;
        tracing::warn!(
            "catalog {} could not be opened ({}): moved it to {} and started a new one",
            file.display(),
            crate::error::chain(&err),
            aside.display()
        );
        Ok((Catalog::open(url).await?, Some(aside)))
    }

    /// Which database this catalog is on.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL it was opened with (password masked).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes every connection; later calls fail (as with a database gone away).
    pub async fn close(&self) {
        on_pool!(&self.pool, p => p.close().await)
    }

    /// Records that a repository was seen (a new location of a known id is a new row).
    pub async fn touch_repo(&self, repo: &RepoKey) -> Result<()> {
        on_pool!(&self.pool, p => sqlx::query(
            "INSERT INTO repositories (id, location, first_seen) VALUES ($1, $2, $3)
             ON CONFLICT (id, location) DO NOTHING",
        )
        .bind(repo.id.to_hex())
        .bind(&repo.location)
        .bind(Utc::now().to_rfc3339())
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Starts recording a manual run on this host.
    pub async fn start_run(
        &self,
        kind: &str,
        repo: Option<&RepoKey>,
        policy: Option<&str>,
    ) -> Result<RunId> {
        let run = NewRun {
            kind,
            repo,
            policy,
            ..NewRun::default()
        };
        self.claim_run(&run).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::Catalog,
                format!(
                    "catalog {}: a manual {kind} run was refused as a duplicate",
                    self.url
                ),
            )
        })
    }

    /// Starts recording `run`. For a scheduled run, `None` means that its slot (policy,
    /// kind, `scheduled_for`) already has a run, here or on another host: the schedule was
    /// caught up already and must not run again. Manual runs always start.
    pub async fn claim_run(&self, run: &NewRun<'_>) -> Result<Option<RunId>> {
        let host = run.host.map_or_else(this_host, str::to_string);
        let id: Option<i64> = on_pool!(&self.pool, p => sqlx::query_scalar(
            "INSERT INTO runs (kind, repo_id, repo_location, policy, target, host, scheduled_for,
             status, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', $8)
             ON CONFLICT (policy, kind, scheduled_for) DO NOTHING RETURNING id",
        )
        .bind(run.kind)
        .bind(run.repo.map(|r| r.id.to_hex()))
        .bind(run.repo.map(|r| r.location.clone()))
        .bind(run.policy)
        .bind(run.target)
        .bind(host)
        .bind(run.scheduled_for.map(slot_text))
        .bind(Utc::now().to_rfc3339())
        .fetch_optional(p)
        .await)?;
        Ok(id.map(RunId))
    }

    /// The latest schedule slot of `policy` and `kind` that has a run: where a catch-up
    /// starts from.
    pub async fn last_scheduled(&self, policy: &str, kind: &str) -> Result<Option<DateTime<Utc>>> {
        let at: Option<String> = on_pool!(&self.pool, p => sqlx::query_scalar(
            "SELECT MAX(scheduled_for) FROM runs WHERE policy = $1 AND kind = $2",
        )
        .bind(policy)
        .bind(kind)
        .fetch_one(p)
        .await)?;
        at.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Catalog,
                        format!(
                            "catalog {}: run slot '{t}' of policy {policy} is not a time: {e}",
                            self.url
                        ),
                    )
                })
        })
        .transpose()
    }

    /// Finishes a run.
    pub async fn finish_run(&self, run: RunId, end: &RunEnd) -> Result<()> {
        on_pool!(&self.pool, p => sqlx::query(
            "UPDATE runs SET status = $1, finished_at = $2, files = $3, bytes_read = $4,
             bytes_new = $5, bytes_stored = $6, warnings = $7, error = $8, snapshot_id = $9
             WHERE id = $10",
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
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Records (or refreshes) a snapshot row, with its source kind and key.
    pub async fn put_snapshot(&self, repo: &RepoKey, id: &Id, s: &Snapshot) -> Result<()> {
        on_pool!(&self.pool, p => snapshot_upsert!(repo, id, s).execute(p).await.map(drop))?;
        Ok(())
    }

    /// Replaces a repository's snapshot rows with `snaps` (catalog rebuild), in one
    /// transaction: a failure leaves the old rows.
    pub async fn replace_snapshots(&self, repo: &RepoKey, snaps: &[(Id, Snapshot)]) -> Result<()> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM snapshots WHERE repo_id = $1 AND repo_location = $2")
                .bind(repo.id.to_hex())
                .bind(&repo.location)
                .execute(&mut *tx)
                .await?;
            for (id, s) in snaps {
                snapshot_upsert!(repo, id, s).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes snapshot rows (after `forget`).
    pub async fn delete_snapshots(&self, repo: &RepoKey, ids: &[Id]) -> Result<()> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            for id in ids {
                sqlx::query(
                    "DELETE FROM snapshots WHERE repo_id = $1 AND repo_location = $2 AND id = $3",
                )
                .bind(repo.id.to_hex())
                .bind(&repo.location)
                .bind(id.to_hex())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Number of snapshot rows of a repository.
    pub async fn count_snapshots(&self, repo: &RepoKey) -> Result<i64> {
        let n: i64 = on_pool!(&self.pool, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM snapshots WHERE repo_id = $1 AND repo_location = $2",
        )
        .bind(repo.id.to_hex())
        .bind(&repo.location)
        .fetch_one(p)
        .await)?;
        Ok(n)
    }

    /// A repository's snapshot rows, oldest first.
    pub async fn snapshots(&self, repo: &RepoKey) -> Result<Vec<SnapshotRow>> {
        let list = |s: String| serde_json::from_str::<Vec<String>>(&s).unwrap_or_default();
        let rows = on_pool!(&self.pool, p => sqlx::query(
            "SELECT * FROM snapshots WHERE repo_id = $1 AND repo_location = $2 ORDER BY time, id",
        )
        .bind(repo.id.to_hex())
        .bind(&repo.location)
        .fetch_all(p)
        .await?
        .into_iter()
        .map(|r| -> Result<SnapshotRow, sqlx::Error> {
            Ok(SnapshotRow {
                id: r.try_get("id")?,
                time: r.try_get("time")?,
                hostname: r.try_get("hostname")?,
                source: r.try_get("source")?,
                source_key: r.try_get("source_key")?,
                paths: list(r.try_get("paths")?),
                kind: r.try_get("kind")?,
                parent: r.try_get("parent")?,
                tree: r.try_get("tree")?,
                policy: r.try_get("policy")?,
                tags: list(r.try_get("tags")?),
                files: r.try_get("files")?,
                bytes_total: r.try_get("bytes_total")?,
                bytes_stored: r.try_get("bytes_stored")?,
            })
        })
        .collect::<Result<Vec<_>, _>>())?;
        Ok(rows)
    }

    /// Records the outcome of a pack's data verification (`error` for a failed one).
    pub async fn record_verification(
        &self,
        repo: &RepoKey,
        pack: &Id,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<()> {
        on_pool!(&self.pool, p => sqlx::query(
            "INSERT INTO pack_verifications (repo_id, repo_location, pack_id, verified_at, ok, error)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(repo.id.to_hex())
        .bind(&repo.location)
        .bind(pack.to_hex())
        .bind(at.to_rfc3339())
        .bind(error.is_none())
        .bind(error)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// When each pack of a repository was last verified successfully.
    pub async fn last_verified(&self, repo: &RepoKey) -> Result<HashMap<Id, String>> {
        let rows: Vec<(String, String)> = on_pool!(&self.pool, p => sqlx::query_as(
            "SELECT pack_id, MAX(verified_at) FROM pack_verifications
             WHERE repo_id = $1 AND repo_location = $2 AND ok = TRUE GROUP BY pack_id",
        )
        .bind(repo.id.to_hex())
        .bind(&repo.location)
        .fetch_all(p)
        .await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(pack, at)| Some((pack.parse().ok()?, at)))
            .collect())
    }

    /// Packs whose latest data verification failed.
    pub async fn damaged_packs(&self, repo: &RepoKey) -> Result<Vec<Id>> {
        let rows: Vec<String> = on_pool!(&self.pool, p => sqlx::query_scalar(
            "SELECT DISTINCT v.pack_id FROM pack_verifications v
             WHERE v.repo_id = $1 AND v.repo_location = $2 AND v.ok = FALSE AND v.verified_at =
               (SELECT MAX(w.verified_at) FROM pack_verifications w WHERE w.repo_id = v.repo_id
                AND w.repo_location = v.repo_location AND w.pack_id = v.pack_id)
             ORDER BY v.pack_id",
        )
        .bind(repo.id.to_hex())
        .bind(&repo.location)
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().filter_map(|r| r.parse().ok()).collect())
    }

    /// The most recent runs, newest first.
    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>> {
        let mut rows = on_pool!(&self.pool, p => sqlx::query("SELECT * FROM runs ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(p)
            .await?
            .into_iter()
            .map(|r| -> Result<RunRow, sqlx::Error> {
                Ok(RunRow {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    repo_id: r.try_get("repo_id")?,
                    repo_location: r.try_get("repo_location")?,
                    policy: r.try_get("policy")?,
                    target: r.try_get("target")?,
                    host: r.try_get("host")?,
                    scheduled_for: r.try_get("scheduled_for")?,
                    status: r.try_get("status")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    files: r.try_get("files")?,
                    bytes_read: r.try_get("bytes_read")?,
                    bytes_new: r.try_get("bytes_new")?,
                    bytes_stored: r.try_get("bytes_stored")?,
                    warnings: r.try_get("warnings")?,
                    error: r.try_get("error")?,
                    snapshot_id: r.try_get("snapshot_id")?,
                    hooks: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, _>>())?;
        if let (Some(last), Some(first)) = (rows.first().map(|r| r.id), rows.last().map(|r| r.id)) {
            let mut hooks = self.run_hooks(first, last).await?;
            for r in &mut rows {
                r.hooks = hooks.remove(&r.id).unwrap_or_default();
            }
        }
        Ok(rows)
    }

    /// Records what a hook of `run` did (after the ones recorded before it).
    pub async fn record_hook(&self, run: RunId, hook: &HookRun) -> Result<()> {
        on_pool!(&self.pool, p => sqlx::query(
            "INSERT INTO run_hooks (run_id, phase, command, ok, exit_code, ended, duration_ms,
             output) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(run.0)
        .bind(hook.phase.name())
        .bind(&hook.command)
        .bind(hook.ok)
        .bind(hook.exit_code)
        .bind(&hook.ended)
        .bind(hook.duration_ms)
        .bind(&hook.output)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// The hooks of the runs `first..=last`, by run id, each run's in the order they ran.
    async fn run_hooks(&self, first: i64, last: i64) -> Result<HashMap<i64, Vec<HookRun>>> {
        let rows = on_pool!(&self.pool, p => sqlx::query(
            "SELECT run_id, phase, command, ok, exit_code, ended, duration_ms, output
             FROM run_hooks WHERE run_id >= $1 AND run_id <= $2 ORDER BY id",
        )
        .bind(first)
        .bind(last)
        .fetch_all(p)
        .await?
        .into_iter()
        .map(|r| -> Result<(i64, String, HookRun), sqlx::Error> {
            Ok((
                r.try_get("run_id")?,
                r.try_get("phase")?,
                HookRun {
                    phase: Phase::Before,
                    command: r.try_get("command")?,
                    ok: r.try_get("ok")?,
                    exit_code: r.try_get("exit_code")?,
                    ended: r.try_get("ended")?,
                    duration_ms: r.try_get("duration_ms")?,
                    output: r.try_get("output")?,
                },
            ))
        })
        .collect::<Result<Vec<_>, _>>())?;
        let mut out: HashMap<i64, Vec<HookRun>> = HashMap::new();
        for (run, phase, mut hook) in rows {
            // A phase this version does not know is left out rather than mislabelled.
            let Some(phase) = Phase::parse(&phase) else {
                continue;
            };
            hook.phase = phase;
            out.entry(run).or_default().push(hook);
        }
        Ok(out)
    }

    /// Per repository: location, snapshot count, latest snapshot time, packs verified.
    pub async fn repo_summaries(&self) -> Result<Vec<RepoSummary>> {
        let rows = on_pool!(&self.pool, p => sqlx::query(
            "SELECT r.id, r.location,
               (SELECT COUNT(*) FROM snapshots s WHERE s.repo_id = r.id AND s.repo_location = r.location) AS snapshots,
               (SELECT MAX(time) FROM snapshots s WHERE s.repo_id = r.id AND s.repo_location = r.location) AS latest,
               (SELECT COUNT(DISTINCT pack_id) FROM pack_verifications v WHERE v.repo_id = r.id
                  AND v.repo_location = r.location AND v.ok = TRUE) AS verified,
               (SELECT MAX(verified_at) FROM pack_verifications v WHERE v.repo_id = r.id
                  AND v.repo_location = r.location) AS last_verify
             FROM repositories r ORDER BY r.location, r.id",
        )
        .fetch_all(p)
        .await?
        .into_iter()
        .map(|r| -> Result<RepoSummary, sqlx::Error> {
            Ok(RepoSummary {
                id: r.try_get("id")?,
                location: r.try_get("location")?,
                snapshots: r.try_get("snapshots")?,
                latest_snapshot: r.try_get("latest")?,
                packs_verified: r.try_get("verified")?,
                last_verify: r.try_get("last_verify")?,
            })
        })
        .collect::<Result<Vec<_>, _>>())?;
        Ok(rows)
    }
}

/// Moves a broken SQLite file (and its `-wal`/`-shm` companions) to `<file>.broken-<time>`.
fn move_aside(file: &Path) -> Result<PathBuf> {
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut aside = file.to_path_buf().into_os_string();
    aside.push(format!(".broken-{stamp}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(file, &aside).map_err(|e| Error::io("moving aside", file, e))?;
    for ext in ["-wal", "-shm"] {
        let mut side = file.to_path_buf().into_os_string();
        side.push(ext);
        let side = PathBuf::from(side);
        if side.exists() {
            let mut to = aside.clone().into_os_string();
            to.push(ext);
            std::fs::rename(&side, &to).map_err(|e| Error::io("moving aside", &side, e))?;
        }
    }
    Ok(aside)
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
    fn urls_name_their_backend_and_hide_passwords() {
        assert_eq!(
            Backend::of_url("sqlite:///x/c.db").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(Backend::of_url("/var/lib/c.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::of_url("postgres://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::of_url("postgresql://u@h/db").unwrap(),
            Backend::Postgres
        );
        let e = Backend::of_url("mysql://root:pw@h/db").unwrap_err();
        assert!(
            e.to_string().contains("mysql:") && !e.to_string().contains("pw"),
            "{e}"
        );
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("/a:b@c"), "/a:b@c");
    }

    #[test]
    fn a_version_1_catalog_migrates_to_the_latest_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let opts = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = rt
            .block_on(SqlitePoolOptions::new().connect_with(opts))
            .unwrap();
        rt.block_on(SQLITE_MIGRATOR.run_to(20261121000001, &pool))
            .unwrap();
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
            "INSERT INTO runs (kind, status, started_at) VALUES ('backup', 'success', '2026-01-01')"
                .to_string(),
        ] {
            rt.block_on(sqlx::query(sqlx::AssertSqlSafe(q)).execute(&pool))
                .unwrap();
        }
        rt.block_on(pool.close());
        let cat = rt.block_on(Catalog::open(&url)).unwrap();
        let old = key(7, "/old/place");
        assert_eq!(rt.block_on(cat.count_snapshots(&old)).unwrap(), 1);
        assert_eq!(rt.block_on(cat.last_verified(&old)).unwrap().len(), 1);
        let s = rt.block_on(cat.repo_summaries()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].snapshots, s[0].packs_verified), (1, 1));
        let snaps = rt.block_on(cat.snapshots(&old)).unwrap();
        assert_eq!(snaps[0].source_key, None);
        let runs = rt.block_on(cat.recent_runs(10)).unwrap();
        assert_eq!(
            (runs[0].kind.as_str(), runs[0].host.as_deref()),
            ("backup", None)
        );
    }

    #[test]
    fn a_copied_repository_gets_its_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let cat = blocking::Catalog::open(&url).unwrap();
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
