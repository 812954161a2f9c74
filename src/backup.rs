//! The backup engine: open a source, lock, pick the parent, ingest, commit.
//!
//! Every source goes the same way: it is opened (its input checked) before the lock is
//! taken; the parent is the latest snapshot of the same source kind and key on this host;
//! the source stores its content through one [`Ingest`](crate::pipeline::Ingest) (chunk, hash, dedup, compress,
//! seal, pack, upload, read back); then [`commit`] writes the index and, last, the snapshot
//! manifest. A failure anywhere stops the backup before the manifest: no partial snapshot
//! is visible.

use std::collections::HashSet;
use std::time::Instant;

use crate::cancel::Cancel;
use crate::error::Result;
use crate::pipeline::ingest::{self, Counters, Settings, Stored};
use crate::progress::Progress;
use crate::repo::lock::LockGuard;
use crate::repo::{BackupKind, Id, IndexPack, Repo, Snapshot, Summary};
use crate::source::Source;
use crate::source::command::{Command, CommandOptions};
use crate::source::db::{DbOptions, Engine};
use crate::source::files::{Files, FilesOptions};
use crate::source::mysql::Mysql;
use crate::source::postgres::Postgres;

/// What to back up and how.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// What to read.
    pub source: SourceOptions,
    /// Re-read everything instead of trusting the parent snapshot.
    pub full: bool,
    /// Tags to record.
    pub tags: Vec<String>,
    /// Name of the policy that runs this backup.
    pub policy: Option<String>,
    /// zstd level (0 disables compression).
    pub compression: i32,
    /// Worker threads per stage (0: one per CPU).
    pub threads: usize,
    /// How long to wait for a conflicting lock to go away.
    pub retry_lock: std::time::Duration,
    /// Packs known to be damaged (from the catalog's verification record): not trusted.
    pub damaged_packs: HashSet<Id>,
    /// Stops the backup (nothing committed) once cancelled.
    pub cancel: Cancel,
    /// Commands run before and after the backup: by [`crate::jobs::backup`], around
    /// [`run`] (the engine itself runs none).
    pub hooks: crate::hooks::Hooks,
}

/// The source of a backup and its own options.
#[derive(Clone, Debug)]
pub enum SourceOptions {
    /// File trees.
    Files(FilesOptions),
    /// A command's standard output.
    Command(CommandOptions),
    /// PostgreSQL or MariaDB/MySQL databases (the URL says which).
    Database(DbOptions),
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions::Files(FilesOptions::default())
    }
}

impl SourceOptions {
    /// Opens the source, checking its input.
    pub fn open(&self, host: &str, threads: usize) -> Result<Box<dyn Source>> {
        Ok(match self {
            SourceOptions::Files(o) => Box::new(Files::open(
                FilesOptions {
                    threads,
                    ..o.clone()
                },
                host,
            )?),
            SourceOptions::Command(o) => Box::new(Command::open(o.clone(), host)?),
            SourceOptions::Database(o) => match o.conn.url.engine {
                Engine::Postgres => Box::new(Postgres::open(o.clone(), host)?),
                Engine::Mysql => Box::new(Mysql::open(o.clone(), host)?),
            },
        })
    }
}

/// What a backup produced.
#[derive(Clone, Debug)]
pub struct BackupOutcome {
    /// The new snapshot's id.
    pub id: Id,
    /// The new snapshot.
    pub snapshot: Snapshot,
    /// Files that could not be read or changed while read, missing paths, paths of which
    /// nothing was stored: each makes the backup partial.
    pub warnings: Vec<String>,
    /// What was left out by design (pseudo file systems' content), for the operator.
    pub notes: Vec<String>,
    /// The hooks that ran around the backup, in order (filled by [`crate::jobs::backup`]).
    pub hooks: Vec<crate::hooks::HookRun>,
}

/// Runs a backup of `opts.source` into `repo`.
pub fn run(repo: &Repo, opts: &BackupOptions, progress: &dyn Progress) -> Result<BackupOutcome> {
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        opts.threads
    };
    let hostname = crate::repo::hostname();
    let mut source = opts.source.open(&hostname, threads)?;
    run_source(repo, source.as_mut(), opts, threads, progress)
}

/// Backs `source` up into `repo`.
pub fn run_source(
    repo: &Repo,
    source: &mut dyn Source,
    opts: &BackupOptions,
    threads: usize,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let time = chrono::Utc::now();
    let hostname = crate::repo::hostname();
    let (kind, key) = (source.kind(), source.key());
    let lock = crate::repo::lock::acquire(repo.storage(), false, "backup", opts.retry_lock)?
        .watching(&opts.cancel);
    crate::failpoint::hit("after-lock");
    let mut index = repo.load_index()?;
    // Trust only packs that exist and did not fail verification: data the index lists in a
    // missing or damaged pack is stored again if the source still has it.
    let present: HashSet<Id> = repo
        .storage()
        .list("data/")?
        .iter()
        .filter_map(|l| crate::repo::id_from_path(&l.path).ok())
        .collect();
    let mut distrusted = 0;
    index.retain_packs(|id| {
        let ok = present.contains(id) && !opts.damaged_packs.contains(id);
        distrusted += usize::from(!ok);
        ok
    });
    if distrusted > 0 {
        tracing::warn!(
            "{distrusted} indexed pack(s) are missing or damaged; their data will be stored again"
        );
    }
    let parent = if opts.full {
        None
    } else {
        repo.snapshots()?
            .into_iter()
            .rev()
            .find(|(_, s)| s.source == kind && s.source_key() == key)
    };
    progress.phase("backup", None);
    let settings = Settings {
        compression: opts.compression,
        threads,
        cancel: opts.cancel.clone(),
    };
    let (read, stored) = ingest::run(repo, &index, &lock, settings, progress, |ingest| {
        source.read(ingest, parent.as_ref().map(|(_, s)| s))
    })?;
    let Stored {
        packs,
        counters: c,
        warnings,
        notes,
    } = stored;
    let get = Counters::get;
    let mut snapshot = Snapshot {
        version: 1,
        time,
        hostname,
        username: username(),
        source: kind.into(),
        key,
        paths: source.paths(),
        tree: read.tree,
        root: read.root.map(Box::new),
        parent: parent.map(|(id, _)| id),
        // Without a parent every byte was read: the snapshot is a full one.
        kind: if read.read_all {
            BackupKind::Full
        } else {
            BackupKind::Incremental
        },
        policy: opts.policy.clone(),
        tags: opts.tags.clone(),
        wal_start: read.wal_start,
        summary: Summary {
            files: get(&c.files),
            dirs: get(&c.dirs),
            files_read: get(&c.files_read),
            files_unchanged: get(&c.files_unchanged),
            bytes_total: get(&c.bytes_total),
            bytes_read: get(&c.bytes_read),
            bytes_new: get(&c.bytes_new),
            bytes_stored: packs.iter().map(|p| p.size).sum(),
            packs: packs.len() as u64,
            warnings: warnings.len() as u64,
            seconds: 0.0,
        },
        program: format!("backstop {}", env!("CARGO_PKG_VERSION")),
    };
    snapshot.summary.seconds = started.elapsed().as_secs_f64();
    let id = commit(repo, &lock, packs, &snapshot)?;
    progress.finish();
    Ok(BackupOutcome {
        id,
        snapshot,
        warnings,
        notes,
        hooks: Vec::new(),
    })
}

/// Commits a backup: the index of its new packs, then the snapshot manifest (the commit
/// point), each only under a lock that is still ours: a process frozen past its lock's
/// expiry may find its data pruned meanwhile.
pub fn commit(
    repo: &Repo,
    lock: &LockGuard,
    packs: Vec<IndexPack>,
    snapshot: &Snapshot,
) -> Result<Id> {
    lock.check()?;
    crate::failpoint::hit("before-index");
    if !packs.is_empty() {
        repo.save_index(packs)?;
        crate::failpoint::hit("after-index");
    }
    lock.check()?;
    repo.save_snapshot(snapshot)
}

fn username() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| nix::unistd::getuid().to_string())
}
