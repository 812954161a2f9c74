//! The restore engine: a snapshot tree into a destination directory, parallel and out of
//! order, never outside the destination, never through an existing entry.
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
mod entry;
pub mod select;
mod walk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use entry::Overwrite;

/// Gives the restore target the snapshot root directory's own metadata (the caller decides
/// when: only for a target the restore created or found empty).
pub fn apply_root_metadata(target: &Path, root: &Node, warnings: &mut Vec<String>) {
    entry::apply_metadata(target, root, target, warnings);
}
pub use select::{Includes, Layout};
pub use walk::{Item, Walk};

use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::repo::{Id, Node, NodeKind, Piece, Repo, Snapshot};
use content::FileTask;
use entry::{Decision, Temps};

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

/// Files restored per batch, and chunks planned per batch at most: memory stays bounded
/// however many files a snapshot holds (a pack shared by two batches is read twice).
const BATCH_FILES: usize = 4096;
const BATCH_CHUNKS: u64 = 65_536;

/// Whether `target` is a directory holding something (a restore says so up front).
pub fn target_is_nonempty(target: &Path) -> bool {
    std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_some())
}

fn interrupted() -> Error {
    Error::new(
        ErrorKind::Interrupted,
        format!(
            "restore interrupted by {}: partly written files were removed; every file under \
             its final name is complete",
            crate::interrupt::signal_name()
        ),
    )
}

fn kind_name(k: NodeKind) -> String {
    format!("{k:?}").to_lowercase()
}

/// A hard-link group's first file.
enum First {
    /// In the current batch, at this position.
    Pending(usize),
    /// Restored by this restore: its path and (device, inode).
    Restored(PathBuf, (u64, u64)),
    /// Not restored by this restore (kept or failed): the next member restores content.
    NotOurs,
}

/// Restores snapshot `snap` (whose id is `id`) into `opts.target`.
pub fn run(
    repo: &Repo,
    id: Id,
    snap: &Snapshot,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let _cooperation = crate::interrupt::cooperate();
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
    let index = repo.load_index()?;
    let root = repo.load_tree(&index, &snap.tree)?;
    let layout = Layout::new(snap, &root);
    let includes = Includes::new(&opts.includes, &layout)?;
    let target_not_empty = target_is_nonempty(&opts.target);

    // First pass: count (and list) what is selected, before anything is written.
    let mut planned = RestoreOutcome {
        snapshot: Some(SnapshotRef::new(id, snap)),
        target_not_empty,
        ..Default::default()
    };
    let mut walk = Walk::new(repo, &index, snap.tree, includes.as_ref())?;
    while let Some(item) = walk.next_item()? {
        if crate::interrupt::cancelled() {
            return Err(interrupted());
        }
        match item.node.kind {
            NodeKind::File => {
                planned.files += 1;
                planned.bytes += item.node.size;
            }
            NodeKind::Dir => planned.dirs += 1,
            _ => planned.others += 1,
        }
        if opts.list {
            let path = opts.target.join(&item.rel);
            let action = if item.node.kind == NodeKind::Dir {
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => "merge".to_string(),
                    Ok(_) if opts.overwrite == Overwrite::Always => "replace".to_string(),
                    Ok(_) => "fail: a non-directory is in the way".to_string(),
                    Err(_) => "new".to_string(),
                }
            } else {
                match entry::decide(&path, &item.node, opts.overwrite) {
                    Ok(d) => d.verb().to_string(),
                    Err(why) => format!("fail: {why}"),
                }
            };
            planned.planned.push(Planned {
                path: path.display().to_string(),
                kind: kind_name(item.node.kind),
                size: item.node.size,
                action,
            });
        }
    }
    let named = |rel: &str| format!("{}{rel}", opts.target.display());
    let unmatched = includes.as_ref().map(|i| i.unmatched()).unwrap_or_default();
    for p in &unmatched {
        tracing::debug!("--include '{p}' matches nothing in the snapshot");
    }
    if opts.dry_run || planned.files + planned.dirs + planned.others == 0 {
        planned.failed = walk
            .failed
            .iter()
            .map(|(p, r)| (named(p), r.clone()))
            .collect();
        planned.unmatched_includes = unmatched;
        return Ok(planned);
    }
    let target = prepare_target(&opts.target)?;
    progress.phase("restore", Some(planned.bytes));

    // Second pass, in batches: create the entries, then write the batch's file content.
    let mut out = RestoreOutcome {
        snapshot: planned.snapshot.take(),
        target_not_empty,
        unmatched_includes: unmatched,
        ..Default::default()
    };
    let temps = Temps::new();
    let mut links: HashMap<(u64, u64), First> = HashMap::new();
    let mut dirs: Vec<(PathBuf, crate::repo::Node)> = Vec::new();
    let mut walk = Walk::new(repo, &index, snap.tree, includes.as_ref())?;
    let threads = if opts.threads == 0 { 4 } else { opts.threads };
    let mut skip_under: Option<PathBuf> = None;
    loop {
        let mut files: Vec<FileTask> = Vec::new();
        let mut deferred: Vec<(usize, PathBuf)> = Vec::new();
        let mut chunks_planned = 0;
        let mut more = false;
        while let Some(item) = walk.next_item()? {
            if crate::interrupt::cancelled() {
                return Err(interrupted());
            }
            if let Some(s) = &skip_under {
                if item.rel.starts_with(s) {
                    continue;
                }
                skip_under = None;
            }
            let path = target.join(&item.rel);
            let node = item.node;
            let mut fail = |reason: String| {
                tracing::debug!("{}: {reason}", path.display());
                out.failed.push((path.display().to_string(), reason));
            };
            match node.kind {
                NodeKind::Dir => match entry::make_dir(&path, opts.overwrite) {
                    Ok(made) => {
                        out.dirs += 1;
                        if made || opts.overwrite == Overwrite::Always {
                            dirs.push((path, node));
                        }
                    }
                    Err(reason) => {
                        fail(format!("{reason}; nothing below it was restored"));
                        skip_under = Some(item.rel);
                    }
                },
                NodeKind::File => {
                    let mut node = node;
                    if node.content.iter().any(|p| matches!(p, Piece::List(..))) {
                        match repo.expand_content(&index, &node.content) {
                            Ok(c) => node.content = c,
                            Err(e) => {
                                fail(crate::error::chain(&e));
                                continue;
                            }
                        }
                    }
                    match entry::decide(&path, &node, opts.overwrite) {
                        Err(reason) => {
                            fail(reason);
                            continue;
                        }
                        Ok(Decision::Keep) => {
                            out.kept += 1;
                            if node.links > 1 {
                                links.insert((node.dev, node.inode), First::NotOurs);
                            }
                            continue;
                        }
                        Ok(_) => {}
                    }
                    let key = (node.dev, node.inode);
                    if node.links > 1 {
                        match links.get(&key) {
                            Some(First::Restored(first, ino)) => {
                                match temps.link(first, *ino, &path) {
                                    Ok(()) => out.others += 1,
                                    Err(reason) => fail(reason),
                                }
                                continue;
                            }
                            Some(First::Pending(i)) => {
                                deferred.push((*i, path));
                                continue;
                            }
                            Some(First::NotOurs) | None => {}
                        }
                    }
                    let (tmp, f) = match temps.create_file(&path) {
                        Ok(t) => t,
                        Err(reason) => {
                            fail(reason);
                            continue;
                        }
                    };
                    let ino = match f.set_len(node.size).and_then(|()| f.metadata()) {
                        Ok(m) => {
                            use std::os::unix::fs::MetadataExt;
                            (m.dev(), m.ino())
                        }
                        Err(e) => {
                            temps.discard(&tmp);
                            fail(format!("cannot size the file: {e}"));
                            continue;
                        }
                    };
                    drop(f);
                    if node.links > 1 {
                        links.insert(key, First::Pending(files.len()));
                    }
                    let task = FileTask::new(path, tmp, ino, node);
                    chunks_planned += task.chunks();
                    files.push(task);
                    if files.len() >= BATCH_FILES || chunks_planned >= BATCH_CHUNKS {
                        more = true;
                        break;
                    }
                }
                _ => match entry::decide(&path, &node, opts.overwrite) {
                    Err(reason) => fail(reason),
                    Ok(Decision::Keep) => out.kept += 1,
                    Ok(_) => match temps.make_special(&path, &node, &mut out.warnings) {
                        Ok(true) => out.others += 1,
                        Ok(false) => {}
                        Err(reason) => fail(reason),
                    },
                },
            }
        }
        out.bytes += content::restore(
            repo,
            &index,
            &files,
            &temps,
            threads,
            progress,
            &mut out.warnings,
        );
        if crate::interrupt::cancelled() {
            return Err(interrupted());
        }
        for f in &files {
            match f.failure() {
                Some(reason) => out.failed.push((f.path.display().to_string(), reason)),
                None => out.files += 1,
            }
        }
        for first in links.values_mut() {
            if let First::Pending(i) = first {
                let f = &files[*i];
                *first = match f.failure() {
                    None => First::Restored(f.path.clone(), f.ino),
                    Some(_) => First::NotOurs,
                };
            }
        }
        for (i, path) in deferred {
            let f = &files[i];
            let res = match f.failure() {
                None => temps.link(&f.path, f.ino, &path),
                Some(_) => Err(format!(
                    "its hard link target {} could not be restored",
                    f.path.display()
                )),
            };
            match res {
                Ok(()) => out.others += 1,
                Err(reason) => out.failed.push((path.display().to_string(), reason)),
            }
        }
        if !more {
            break;
        }
    }
    // Directories last, deepest first, so their mtimes stay.
    for (path, node) in dirs.iter().rev() {
        entry::apply_metadata(path, node, path, &mut out.warnings);
    }
    out.failed
        .extend(walk.failed.iter().map(|(p, r)| (named(p), r.clone())));
    progress.finish();
    Ok(out)
}

fn prepare_target(target: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(target).map_err(|e| Error::io("creating", target, e))?;
    let t = target
        .canonicalize()
        .map_err(|e| Error::io("resolving", target, e))?;
    if !t.is_dir() {
        return Err(Error::config(format!(
            "restore target {} is not a directory",
            t.display()
        )));
    }
    Ok(t)
}
