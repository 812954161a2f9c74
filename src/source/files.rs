//! The `files` source: file trees walked, their metadata as nodes, their content chunked.
//!
//! Readers (threads) chunk files while the walker lists directories and builds trees
//! bottom-up ([`walk`]); files whose size, times and inode match the parent snapshot's are
//! taken from it unread. [`meta`] turns file system metadata into nodes.

pub mod meta;
mod walk;

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Ingest;
use crate::repo::Snapshot;
use crate::source::{Read, Source};

pub use meta::{
    changed, data_extents, node_from_metadata, node_like, normalize, open_for_backup, pseudo_fs,
    read_xattrs,
};

/// What to back up of the file system, and how.
#[derive(Clone, Debug, Default)]
pub struct FilesOptions {
    /// Paths to back up; one directory becomes the snapshot's root.
    pub paths: Vec<PathBuf>,
    /// Glob patterns of paths to leave out.
    pub excludes: Vec<String>,
    /// If not empty, only files matching one of these globs are backed up.
    pub includes: Vec<String>,
    /// Do not descend into other file systems.
    pub one_file_system: bool,
    /// Compare files with the parent without their inode number.
    pub ignore_inode: bool,
    /// Reader threads (0: one per CPU).
    pub threads: usize,
}

/// The `files` source, its paths resolved and patterns compiled.
pub struct Files {
    opts: FilesOptions,
    host: String,
    roots: Roots,
    excludes: Patterns,
    includes: Option<Patterns>,
}

impl Files {
    /// Checks the options: paths normalized (one missing path is an error, a missing path
    /// among several a warning), patterns compiled.
    pub fn open(opts: FilesOptions, host: &str) -> Result<Files> {
        let roots = resolve_roots(&opts.paths)?;
        let includes = if opts.includes.is_empty() {
            None
        } else {
            Some(Patterns::new("--include", &opts.includes)?)
        };
        Ok(Files {
            excludes: Patterns::new("--exclude", &opts.excludes)?,
            includes,
            roots,
            host: host.to_string(),
            opts,
        })
    }
}

impl Source for Files {
    fn kind(&self) -> &'static str {
        "files"
    }

    fn paths(&self) -> Vec<String> {
        self.roots.recorded.clone()
    }

    fn key(&self) -> String {
        crate::repo::snapshot::files_key(&self.host, &self.roots.recorded)
    }

    fn read(&mut self, ingest: &Ingest, parent: Option<&Snapshot>) -> Result<Read> {
        for w in std::mem::take(&mut self.roots.warnings) {
            ingest.warn(w);
        }
        let threads = if self.opts.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            self.opts.threads
        };
        let (tree, root) = walk::run(
            &walk::Ctx::new(ingest, &self.opts, &self.excludes, self.includes.as_ref()),
            &self.roots.paths,
            self.roots.recorded.len() > 1,
            parent.map(|p| p.tree),
            threads,
        )?;
        Ok(Read {
            tree,
            root,
            read_all: parent.is_none(),
            wal_start: None,
        })
    }
}

/// The paths of one backup, normalized.
struct Roots {
    /// Paths that exist: absolute, cleaned ([`normalize`]), sorted, each once.
    paths: Vec<PathBuf>,
    /// What the snapshot records (and parent selection and retention group by): every
    /// normalized path given, so `t1/c`, `t1/c/` and `t1/a/../c` are one group, and a path
    /// missing this time does not start a new group.
    recorded: Vec<String>,
    /// One per path that does not exist (when others do).
    warnings: Vec<String>,
}

/// Normalizes the paths before anything is read. One missing path is an error; a missing
/// path among several is a warning (the others are backed up; the backup is partial), as
/// in restic and borg.
fn resolve_roots(paths: &[PathBuf]) -> Result<Roots> {
    if paths.is_empty() {
        return Err(Error::config("nothing to back up: give at least one path"));
    }
    let mut norm = Vec::with_capacity(paths.len());
    for p in paths {
        if p.as_os_str().is_empty() {
            return Err(Error::config("an empty path was given to back up"));
        }
        norm.push(normalize(p).map_err(|e| Error::io("resolving", p, e))?);
    }
    norm.sort();
    norm.dedup();
    let recorded = norm.iter().map(|p| p.display().to_string()).collect();
    let several = norm.len() > 1;
    let (mut existing, mut warnings) = (Vec::new(), Vec::new());
    for p in norm {
        match std::fs::symlink_metadata(&p) {
            Ok(_) => existing.push(p),
            Err(e) if several => warnings.push(format!(
                "skipped: {}",
                crate::error::chain(&Error::io("reading", &p, e))
            )),
            Err(e) => return Err(Error::io("reading", &p, e)),
        }
    }
    if existing.is_empty() {
        return Err(Error::new(
            ErrorKind::Io,
            format!("none of the paths can be read: {}", warnings.join("; ")),
        ));
    }
    Ok(Roots {
        paths: existing,
        recorded,
        warnings,
    })
}

/// Glob patterns of one kind (`--exclude` or `--include`), remembering which pattern each
/// glob came from so a warning can name it.
pub(crate) struct Patterns {
    pub(crate) flag: &'static str,
    pub(crate) set: GlobSet,
    /// For each glob of `set`, its pattern.
    source: Vec<String>,
}

impl Patterns {
    /// Compiles `patterns`; an empty (or blank) pattern is a configuration error naming
    /// `flag`: `--exclude ''` used to match every path and back up nothing.
    pub(crate) fn new(flag: &'static str, patterns: &[String]) -> Result<Self> {
        let mut b = GlobSetBuilder::new();
        let mut source = Vec::new();
        let glob = |g: &str, p: &str| {
            Glob::new(g).map_err(|e| Error::config(format!("{flag}: invalid glob '{p}': {e}")))
        };
        for p in patterns {
            if p.trim().is_empty() {
                return Err(Error::config(format!(
                    "{flag}: empty pattern '{p}': give a glob such as '*.tmp' or '/var/cache/**'"
                )));
            }
            b.add(glob(p, p)?);
            source.push(p.clone());
            // `dir/*` should also leave out `dir` itself; `*.log` matches at any depth.
            if !p.starts_with('/') && !p.starts_with("**/") {
                b.add(glob(&format!("**/{p}"), p)?);
                source.push(p.clone());
            }
        }
        let set = b
            .build()
            .map_err(|e| Error::config(format!("{flag}: invalid globs: {e}")))?;
        Ok(Patterns { flag, set, source })
    }

    /// The first pattern matching `path`.
    pub(crate) fn matching(&self, path: &Path) -> Option<&str> {
        self.set
            .matches(path)
            .first()
            .map(|&i| self.source[i].as_str())
    }
}
