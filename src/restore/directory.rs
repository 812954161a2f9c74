//! The directory destination: a snapshot tree restored into a directory, entries made in
//! pre-order by the walk, file content written out of order by pack workers in batches.
//!
//! The walk (one thread) makes directories, decides what to do with what is already there
//! ([`entry::decide`]), makes symlinks and other special entries, and hands files to the
//! workers in batches, walking the next batch while they write one. The pack workers
//! ([`content`]) create each file under its temporary name when its first chunk arrives,
//! write the chunks at their offsets, and give the file its metadata and final name when
//! its last chunk is written: the walk does no per-file I/O beyond one `lstat` (none below
//! a directory it made, or in a target that was empty), so creating files runs in parallel
//! too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::content::{self, Batch, FileTask, Workers};
use super::entry::{self, Decision, Inherit, Overwrite, Temps};
use super::{Destination, Item, Plan, RestoreOutcome, Walk, check};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{Node, NodeKind, Piece};

/// Files restored per batch, and chunks planned per batch at most: memory stays bounded
/// however many files a snapshot holds (two batches at a time: one written, the next
/// walked; a range of a pack shared by two batches is read twice).
const BATCH_FILES: usize = 4096;
const BATCH_CHUNKS: u64 = 65_536;

/// A directory to restore into (created if missing).
pub struct Directory {
    target: PathBuf,
    overwrite: Overwrite,
}

impl Directory {
    /// Restores into `target`; existing entries are treated as `overwrite` says.
    pub fn new(target: &Path, overwrite: Overwrite) -> Directory {
        Directory {
            target: target.to_path_buf(),
            overwrite,
        }
    }
}

/// A hard-link group's first file.
enum First {
    /// In batch `.0` (not settled yet), at position `.1`.
    Pending(u64, usize),
    /// Restored by this restore: its path and (device, inode).
    Restored(PathBuf, (u64, u64)),
    /// Not restored by this restore (kept or failed): the next member restores content.
    NotOurs,
}

impl Destination for Directory {
    fn describe(&self) -> String {
        format!("directory {}", self.target.display())
    }

    fn action(&self, item: &Item) -> String {
        let path = self.target.join(&item.rel);
        if item.node.kind == NodeKind::Dir {
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => "merge".to_string(),
                Ok(_) if self.overwrite == Overwrite::Always => "replace".to_string(),
                Ok(_) => "fail: a non-directory is in the way".to_string(),
                Err(_) => "new".to_string(),
            }
        } else {
            match entry::decide(&path, &item.node, self.overwrite) {
                Ok(d) => d.verb().to_string(),
                Err(why) => format!("fail: {why}"),
            }
        }
    }

    fn write(
        &mut self,
        plan: &Plan<'_>,
        out: &mut RestoreOutcome,
        progress: &dyn Progress,
    ) -> Result<()> {
        let target = prepare_target(&self.target)?;
        let temps = Temps::new(plan.cancel);
        let mut warnings = Vec::new();
        let (walked, bytes) = content::with_workers(
            plan.repo,
            &plan.index,
            &temps,
            plan.threads,
            progress,
            &mut warnings,
            |workers| self.walk(plan, &target, &temps, workers, out),
        );
        out.bytes += bytes;
        out.warnings.extend(warnings);
        let (mut walk, dirs) = walked?;
        check(plan.cancel)?;
        // Directories last, deepest first, so their mtimes stay.
        for (path, node) in dirs.iter().rev() {
            entry::apply_metadata(path, node, path, &mut out.warnings);
        }
        // What this walk could not read: the plan's walk may have read it (a transient
        // fault), so it is named here too (the engine drops what both name).
        let shown = self.target.display();
        out.failed.extend(
            walk.failed
                .drain(..)
                .map(|(p, r)| (format!("{shown}{p}"), r)),
        );
        Ok(())
    }
}

/// A batch of files whose content the workers are writing.
struct InFlight {
    seq: u64,
    batch: Arc<Batch>,
}

/// A later member of a hard-link group whose first file is in batch `.0` at position `.1`:
/// linked once that batch is settled.
type Deferred = (u64, usize, PathBuf);

impl Directory {
    /// The walk: makes directories and special entries, and hands files to `workers` in
    /// batches; a batch is settled (counted, its hard links made) while the next one is
    /// walked and written. Returns the walk (for what it could not read) and the
    /// directories whose metadata is still to be set.
    fn walk<'p>(
        &self,
        plan: &'p Plan<'_>,
        target: &Path,
        temps: &Temps,
        workers: &Workers<'_>,
        out: &mut RestoreOutcome,
    ) -> Result<(Walk<'p>, Vec<(PathBuf, Node)>)> {
        let overwrite = self.overwrite;
        let (repo, index) = (plan.repo, &*plan.index);
        let mut links: HashMap<(u64, u64), First> = HashMap::new();
        let mut deferred: Vec<Deferred> = Vec::new();
        let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
        let mut walk = plan.walk()?;
        let mut skip_under: Option<PathBuf> = None;
        // Directories this restore made (or found empty), innermost last, along the path to
        // the current entry: nothing is in the way below them, so nothing is looked at. With
        // each, what a file created in it gets (the same in a directory made inside it).
        let mut fresh: Vec<(PathBuf, Option<Inherit>)> = Vec::new();
        if dir_is_empty(target) {
            fresh.push((target.to_path_buf(), Inherit::of(target)));
        }
        let mut in_flight: Option<InFlight> = None;
        for seq in 0.. {
            let mut files: Vec<FileTask> = Vec::new();
            let mut chunks_planned = 0;
            let mut more = false;
            while let Some(item) = walk.next_item()? {
                check(plan.cancel)?;
                if let Some(s) = &skip_under {
                    if item.rel.starts_with(s) {
                        continue;
                    }
                    skip_under = None;
                }
                let path = target.join(&item.rel);
                let node = item.node;
                while fresh.last().is_some_and(|(d, _)| !path.starts_with(d)) {
                    fresh.pop();
                }
                let decide = |node: &Node| {
                    if fresh.is_empty() {
                        entry::decide(&path, node, overwrite)
                    } else {
                        Ok(Decision::Create)
                    }
                };
                let mut fail = |reason: String| {
                    tracing::debug!("{}: {reason}", path.display());
                    out.failed.push((path.display().to_string(), reason));
                };
                match node.kind {
                    NodeKind::Dir => match entry::make_dir(&path, overwrite) {
                        Ok(made) => {
                            out.dirs += 1;
                            if made {
                                let inherit = match fresh.last() {
                                    Some((d, i)) if path.parent() == Some(d) => *i,
                                    _ => Inherit::of(&path),
                                };
                                fresh.push((path.clone(), inherit));
                            }
                            if made || overwrite == Overwrite::Always {
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
                            match repo.expand_content(index, &node.content) {
                                Ok(c) => node.content = c,
                                Err(e) => {
                                    fail(crate::error::chain(&e));
                                    continue;
                                }
                            }
                        }
                        match decide(&node) {
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
                                Some(First::Pending(s, i)) => {
                                    deferred.push((*s, *i, path));
                                    continue;
                                }
                                Some(First::NotOurs) | None => {}
                            }
                            links.insert(key, First::Pending(seq, files.len()));
                        }
                        let inherit = match fresh.last() {
                            Some((d, i)) if path.parent() == Some(d) => *i,
                            _ => None,
                        };
                        let task = FileTask::new(path, node, inherit);
                        chunks_planned += task.chunks();
                        files.push(task);
                        if files.len() >= BATCH_FILES || chunks_planned >= BATCH_CHUNKS {
                            more = true;
                            break;
                        }
                    }
                    _ => match decide(&node) {
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
            let batch = workers.submit(files);
            if let Some(prev) = in_flight.replace(InFlight { seq, batch }) {
                settle(prev, workers, temps, &mut links, &mut deferred, out);
                check(plan.cancel)?;
            }
            if !more {
                break;
            }
        }
        if let Some(last) = in_flight {
            settle(last, workers, temps, &mut links, &mut deferred, out);
        }
        Ok((walk, dirs))
    }
}

/// Waits for a batch's content, counts its files and makes the hard links to them.
fn settle(
    done: InFlight,
    workers: &Workers<'_>,
    temps: &Temps,
    links: &mut HashMap<(u64, u64), First>,
    deferred: &mut Vec<Deferred>,
    out: &mut RestoreOutcome,
) {
    workers.finish(&done.batch);
    let files = &done.batch.files;
    for f in files {
        match f.failure() {
            Some(reason) => out.failed.push((f.path.display().to_string(), reason)),
            None => out.files += 1,
        }
    }
    for first in links.values_mut() {
        if let First::Pending(seq, i) = *first
            && seq == done.seq
        {
            let f = &files[i];
            *first = match (f.failure(), f.ino()) {
                (None, Some(ino)) => First::Restored(f.path.clone(), ino),
                _ => First::NotOurs,
            };
        }
    }
    let (now, later) = std::mem::take(deferred)
        .into_iter()
        .partition(|(seq, ..)| *seq == done.seq);
    *deferred = later;
    for (_, i, path) in now {
        let f = &files[i];
        let res = match (f.failure(), f.ino()) {
            (None, Some(ino)) => temps.link(&f.path, ino, &path),
            _ => Err(format!(
                "its hard link target {} could not be restored",
                f.path.display()
            )),
        };
        match res {
            Ok(()) => out.others += 1,
            Err(reason) => out.failed.push((path.display().to_string(), reason)),
        }
    }
}

/// Whether `dir` holds no entries (false if it cannot be read).
fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
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
