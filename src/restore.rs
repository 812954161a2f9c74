//! The restore engine: plan, fetch, write. The plan counts the selection before anything is
//! written (a selection or a dry run walks the tree for it; a whole snapshot is counted by
//! its manifest); a [`Destination`] then writes it, fetching content through the plan: a
//! [`Directory`] (parallel and out of order, never outside the destination, never through
//! an existing entry), or one file's content in order to a [`Stream`] (`backstop dump`) or
//! a command's standard input ([`ToCommand`]), through [`Repo::content_reader`]. A database
//! or a disk image is one more destination.
//!
//! The rest of this note is about the directory destination.
//!
//! Safety: names are single path components (checked by [`walk`]; unsafe and duplicate
//! names are refused entry by entry, never joined to a path), every directory on the way is
//! a real directory made or checked by this restore (a symlink is never followed, and a
//! directory is never replaced), and every other entry is made under a temporary name with
//! `O_EXCL | O_NOFOLLOW` and renamed over what was there ([`entry`]). So nothing is ever
//! written outside the destination, whatever the repository or the target holds.
//!
//! Failure: whatever cannot be restored — a directory whose tree is unreadable, a file
//! whose chunks are missing or corrupt, an entry that cannot be created (permission, a
//! name too long, something in the way) — is named in [`RestoreOutcome::failed`], and its
//! siblings go on. A file has its final name only once its content is complete and
//! verified ([`content`]); an interrupted restore removes its temporary files.
//!
//! Existing entries: directories are merged; other entries are kept, replaced when
//! changed, or replaced, as [`Overwrite`] says. The default is `never`: a restore into the
//! wrong directory (`--target /` instead of `/tmp/restore`) under pressure then destroys
//! nothing, and the outcome counts what it kept; `if-changed` or `always` (restic's
//! default) are one flag away once the operator means it.

mod content;
pub mod database;
pub mod datadir;
mod directory;
mod entry;
pub mod select;
mod stream;
mod tar;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use directory::Directory;
pub use stream::{Stream, ToCommand, dump};

pub use entry::Overwrite;

/// Gives the restore target the snapshot root directory's own metadata (the caller decides
/// when: only for a target the restore created or found empty).
pub fn apply_root_metadata(target: &Path, root: &Node, warnings: &mut Vec<String>) {
    entry::apply_metadata(target, root, target, warnings);
}
pub use select::{Includes, Layout};
pub use walk::{Item, Walk};

use crate::cancel::Cancel;
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::repo::{Id, Index, Node, NodeKind, Repo, Snapshot};

/// What to restore and where.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Destination directory (created if missing).
    pub target: PathBuf,
    /// Only paths matching these globs (and what is below matching directories); relative
    /// to the snapshot root or absolute as backed up.
    pub includes: Vec<String>,
    /// List what would be restored without writing anything.
    pub dry_run: bool,
    /// With `dry_run`: list every entry and what would happen to it.
    pub list: bool,
    /// What to do with existing entries in the target.
    pub overwrite: Overwrite,
    /// Parallel pack readers (0: default).
    pub threads: usize,
    /// How long to wait for a conflicting lock to go away.
    pub retry_lock: std::time::Duration,
    /// Stops the restore (its temporary files removed) once cancelled.
    pub cancel: Cancel,
}

/// The snapshot a restore used.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SnapshotRef {
    /// Its id.
    pub id: Id,
    /// When its backup started.
    pub time: chrono::DateTime<chrono::Utc>,
    /// The host it was taken on.
    pub host: String,
    /// The paths it holds.
    pub paths: Vec<String>,
}

impl SnapshotRef {
    /// The reference to snapshot `id`.
    pub fn new(id: Id, snap: &Snapshot) -> SnapshotRef {
        SnapshotRef {
            id,
            time: snap.time,
            host: snap.hostname.clone(),
            paths: snap.paths.clone(),
        }
    }
}

impl std::fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapshot {} of {} taken {} ({})",
            self.id.short(),
            self.host,
            self.time
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S"),
            self.paths.join(", ")
        )
    }
}

/// One entry a dry run would write.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Planned {
    /// Where.
    pub path: String,
    /// Entry kind.
    pub kind: String,
    /// Bytes of content.
    pub size: u64,
    /// "new", "replace", "keep existing", "merge" or the reason it would fail.
    pub action: String,
}

/// What a restore did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreOutcome {
    /// The snapshot restored.
    pub snapshot: Option<SnapshotRef>,
    /// Files restored completely and verified.
    pub files: u64,
    /// Directories created or merged.
    pub dirs: u64,
    /// Other entries (symlinks, hardlinks, fifos, devices).
    pub others: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Existing entries kept as they were (see `--overwrite`).
    pub kept: u64,
    /// Whether the target already held something.
    pub target_not_empty: bool,
    /// Entries that could not be restored, with the reason.
    pub failed: Vec<(String, String)>,
    /// Include patterns that matched nothing.
    pub unmatched_includes: Vec<String>,
    /// Non-fatal problems (ownership, xattrs).
    pub warnings: Vec<String>,
    /// With a listing dry run: every entry and what would happen to it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<Planned>,
}

impl RestoreOutcome {
    /// Whether everything asked for was restored.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.unmatched_includes.is_empty()
    }
}

/// Whether `target` is a directory holding something (a restore says so up front).
pub fn target_is_nonempty(target: &Path) -> bool {
    std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_some())
}

/// Ok while `cancel` is not cancelled; then the restore's [`ErrorKind::Interrupted`] error.
pub(crate) fn check(cancel: &Cancel) -> Result<()> {
    cancel.check().map_err(|_| {
        Error::new(
            ErrorKind::Interrupted,
            format!(
                "restore interrupted by {}: partly written files were removed; every file \
                 under its final name is complete",
                cancel.reason()
            ),
        )
    })
}

fn kind_name(k: NodeKind) -> String {
    format!("{k:?}").to_lowercase()
}

/// Where a restore writes: a directory ([`Directory`]), one file's content to a writer
/// ([`Stream`]) or a command's standard input ([`ToCommand`]); a database or a disk image
/// later, each one more implementation.
///
/// The engine plans first: it counts the selection (walking it, and checking what is there
/// for a dry run, unless the whole snapshot is restored) before anything is written. Then
/// the destination gets a [`Plan`] and writes: it walks the selection and fetches content
/// through the plan — out of order and in parallel into positions of files ([`Directory`]),
/// or in order through [`Repo::content_reader`] (streams). Safety checks live with the
/// destination that needs them (a directory's: [`entry`]), once.
pub trait Destination {
    /// What and where, for messages ("directory /srv/restore", "command 'psql -d app'").
    fn describe(&self) -> String;
    /// For a listing dry run: what would happen to `item` ("new", "replace", …).
    fn action(&self, _item: &Item) -> String {
        "write".into()
    }
    /// Writes the planned selection; adds what it did to `out`. Entries that fail are
    /// named in `out.failed`; an error stops the restore.
    fn write(
        &mut self,
        plan: &Plan<'_>,
        out: &mut RestoreOutcome,
        progress: &dyn Progress,
    ) -> Result<()>;
}

/// A restore's selection, planned and counted, and what is needed to read it.
pub struct Plan<'a> {
    /// The repository.
    pub repo: &'a Repo,
    /// Its index.
    pub index: Arc<Index>,
    /// The snapshot's root tree.
    pub tree: Id,
    /// The include globs, if any.
    pub includes: Option<&'a Includes>,
    /// Parallel pack readers.
    pub threads: usize,
    /// The restore's cancellation token.
    pub cancel: &'a Cancel,
    /// What the selection holds: files, directories, other entries, bytes of content.
    pub counts: (u64, u64, u64, u64),
}

impl Plan<'_> {
    /// A walk of the selection (in pre-order; see [`Walk`]).
    pub fn walk(&self) -> Result<Walk<'_>> {
        Walk::new(self.repo, &self.index, self.tree, self.includes)
    }
}

/// Restores snapshot `snap` (whose id is `id`) into the directory `opts.target`.
pub fn run(
    repo: &Repo,
    id: Id,
    snap: &Snapshot,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let mut dest = Directory::new(&opts.target, opts.overwrite);
    run_to(repo, id, snap, opts, &mut dest, progress)
}

/// Restores snapshot `snap` (whose id is `id`) into `dest`; `opts.target` is not used.
pub fn run_to(
    repo: &Repo,
    id: Id,
    snap: &Snapshot,
    opts: &RestoreOptions,
    dest: &mut dyn Destination,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let _lock = if opts.dry_run {
        None
    } else {
        Some(crate::repo::lock::acquire(
            repo.storage(),
            false,
            "restore",
            opts.retry_lock,
        )?)
    };
    let index = Arc::new(repo.load_index()?);
    let root = repo.load_tree(&index, &snap.tree)?;
    let layout = Layout::new(snap, &root);
    let includes = Includes::new(&opts.includes, &layout)?;
    let target_not_empty = target_is_nonempty(&opts.target);

    // Plan: count (and list) what is selected, before anything is written.
    let mut planned = RestoreOutcome {
        snapshot: Some(SnapshotRef::new(id, snap)),
        target_not_empty,
        ..Default::default()
    };
    let mut walk_failed = Vec::new();
    let mut unmatched = Vec::new();
    if includes.is_none() && !opts.dry_run {
        // The whole snapshot: its manifest counts it, and the walk would read every tree
        // one more time before the first file is written.
        planned.files = snap.summary.files;
        planned.dirs = snap.summary.dirs;
        planned.bytes = snap.summary.bytes_total;
    } else {
        let mut walk = Walk::new(repo, &index, snap.tree, includes.as_ref())?;
        while let Some(item) = walk.next_item()? {
            check(&opts.cancel)?;
            match item.node.kind {
                NodeKind::File => {
                    planned.files += 1;
                    planned.bytes += item.node.size;
                }
                NodeKind::Dir => planned.dirs += 1,
                _ => planned.others += 1,
            }
            if opts.list {
                planned.planned.push(Planned {
                    path: opts.target.join(&item.rel).display().to_string(),
                    kind: kind_name(item.node.kind),
                    size: item.node.size,
                    action: dest.action(&item),
                });
            }
        }
        unmatched = includes.as_ref().map(|i| i.unmatched()).unwrap_or_default();
        for p in &unmatched {
            tracing::debug!("--include '{p}' matches nothing in the snapshot");
        }
        walk_failed = walk.failed;
        let named = |rel: &str| format!("{}{rel}", opts.target.display());
        if opts.dry_run || planned.files + planned.dirs + planned.others == 0 {
            planned.failed = walk_failed
                .iter()
                .map(|(p, r)| (named(p), r.clone()))
                .collect();
            planned.unmatched_includes = unmatched;
            return Ok(planned);
        }
    }
    progress.phase("restore", Some(planned.bytes));
    let plan = Plan {
        repo,
        index: index.clone(),
        tree: snap.tree,
        includes: includes.as_ref(),
        threads: if opts.threads == 0 { 4 } else { opts.threads },
        cancel: &opts.cancel,
        counts: (planned.files, planned.dirs, planned.others, planned.bytes),
    };
    let mut out = RestoreOutcome {
        snapshot: planned.snapshot.take(),
        target_not_empty,
        unmatched_includes: unmatched,
        ..Default::default()
    };
    dest.write(&plan, &mut out, progress)?;
    check(&opts.cancel)?;
    for (p, r) in &walk_failed {
        let p = format!("{}{p}", opts.target.display());
        if !out.failed.iter().any(|(q, _)| *q == p) {
            out.failed.push((p, r.clone()));
        }
    }
    progress.finish();
    Ok(out)
}
