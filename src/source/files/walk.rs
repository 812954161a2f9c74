//! The file walk: the walker lists directories and builds their trees bottom-up while
//! reader threads chunk the files it queues.
//!
//! ```text
//! walker ──files──▶ readers (chunk, hash, dedup: Ingest::append_stream)
//!        ◀─content─┘
//! ```
//! The walker stores a directory's tree once its files are read. Walked directories wait
//! in their parent's list (so the readers never run dry) until too many entries wait: then
//! the parent stores them. The readers' queue is bounded too, so memory stays bounded
//! however large the tree is, except for the entries of the directories on the current path.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::chan::{Receiver, Sender, bounded};

use super::{FilesOptions, Patterns, meta as files};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Ingest;
use crate::pipeline::ingest::{Chunking, Counters};
use crate::progress::Progress;
use crate::repo::{Id, Index, Node, NodeKind, Piece, Repo, Tree};

/// What the walker and the readers share.
pub(super) struct Ctx<'a> {
    ingest: &'a Ingest<'a>,
    repo: &'a Repo,
    index: &'a Index,
    counters: &'a Counters,
    progress: &'a dyn Progress,
    opts: &'a FilesOptions,
    excludes: &'a Patterns,
    includes: Option<&'a Patterns>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(
        ingest: &'a Ingest<'a>,
        opts: &'a FilesOptions,
        excludes: &'a Patterns,
        includes: Option<&'a Patterns>,
    ) -> Self {
        Ctx {
            ingest,
            repo: ingest.repo(),
            index: ingest.index(),
            counters: &ingest.counters,
            progress: ingest.progress(),
            opts,
            excludes,
            includes,
        }
    }

    fn warn(&self, msg: String) {
        self.ingest.warn(msg)
    }

    fn note(&self, msg: String) {
        self.ingest.note(msg)
    }

    fn failed(&self) -> bool {
        self.ingest.failed()
    }
}

/// Walks `roots` with `threads` readers; returns the root tree and the root directory's
/// own metadata. `several`: more than one path was given (even if only one exists), so the
/// root mirrors `/`.
pub(super) fn run(
    sh: &Ctx,
    roots: &[PathBuf],
    several: bool,
    parent: Option<Id>,
    threads: usize,
) -> Result<(Id, Option<Node>)> {
    let (job_tx, job_rx) = bounded::<FileJob>(MAX_QUEUED_FILES);
    // The walker and readers log (and warn) in the job's span (its kind and run id).
    let span = &tracing::Span::current();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let rx = job_rx.clone();
            s.spawn(move || span.in_scope(|| reader(sh, rx)));
        }
        drop(job_rx);
        let walker = Walker::new(sh, job_tx, roots, several);
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn_scoped(s, move || {
                span.in_scope(|| walker.walk_roots(roots, parent))
            })
            .map_err(|e| Error::new(ErrorKind::Io, "starting the walker").with_source(e))?
            .join()
            .map_err(|_| Error::new(ErrorKind::Io, "the walker thread panicked"))?
    })
}

/// A file for a reader to chunk.
struct FileJob {
    path: PathBuf,
    meta: Metadata,
    reply: Sender<Result<FileContent>>,
}

struct FileContent {
    pieces: Vec<Piece>,
    size: u64,
}

fn reader(sh: &Ctx, jobs: Receiver<FileJob>) {
    let mut buf = Vec::new();
    for job in jobs {
        let res = if sh.failed() {
            Err(Error::new(ErrorKind::Io, "backup aborted"))
        } else {
            read_file(sh, &mut buf, &job)
        };
        let _ = job.reply.send(res);
    }
}

fn read_file(sh: &Ctx, buf: &mut Vec<u8>, job: &FileJob) -> Result<FileContent> {
    use std::io::{Read, Seek, SeekFrom};
    let path = &job.path;
    let mut f = files::open_for_backup(path).map_err(|e| Error::io("opening", path, e))?;
    let before = f
        .metadata()
        .map_err(|e| Error::io("reading metadata of", path, e))?;
    if before.ino() != job.meta.ino() || before.dev() != job.meta.dev() {
        return Err(Error::new(
            ErrorKind::Io,
            format!("{} was replaced while backing up", path.display()),
        ));
    }
    let extents =
        files::data_extents(&f, &before).map_err(|e| Error::io("finding data in", path, e))?;
    let mut pieces = Vec::new();
    let mut pos = 0u64;
    let mut short = false;
    // The file offset, known so that only holes cost a seek.
    let mut offset = 0u64;
    let seek = |f: &mut std::fs::File, offset: &mut u64, to: u64| -> Result<()> {
        if *offset != to {
            f.seek(SeekFrom::Start(to))
                .map_err(|e| Error::io("seeking in", path, e))?;
            *offset = to;
        }
        Ok(())
    };
    for (start, len) in extents {
        if start > pos {
            pieces.push(Piece::Hole(start - pos));
        }
        seek(&mut f, &mut offset, start)?;
        let read = sh
            .ingest
            .append_stream((&mut f).take(len), len, Chunking::Content, buf, &mut pieces)
            .map_err(|e| e.context(format!("reading {}", path.display())))?;
        pos = start + read;
        offset = pos;
        if read < len {
            // Shorter than `stat` said: truncated while read, or a pseudo-file (sysfs
            // reports 4096 bytes for 23). What was read is the content; no padding.
            short = true;
            break;
        }
    }
    if !short {
        // A hole at the end, up to the size at open.
        if before.size() > pos {
            pieces.push(Piece::Hole(before.size() - pos));
            pos = before.size();
        }
        // Then read on to the end of the file: pseudo-files report a size of 0 whatever
        // they hold (/proc), and a file growing while read is read to where it ends now.
        // A small probe first, so the common case (nothing more) costs one read.
        seek(&mut f, &mut offset, pos)?;
        let mut probe = [0u8; 4096];
        let n = loop {
            match f.read(&mut probe) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("reading", path, e)),
            }
        };
        if n > 0 {
            // In reads of at most 64 KiB: /proc/sys files allocate what is asked for
            // (and fail with ENOMEM for the chunker's 10 MiB).
            let rest = std::io::Cursor::new(&probe[..n]).chain(SmallReads(&mut f));
            let read = sh
                .ingest
                .append_stream(rest, u64::MAX, Chunking::Content, buf, &mut pieces)
                .map_err(|e| e.context(format!("reading {}", path.display())))?;
            pos += read;
        }
    }
    let after = f
        .metadata()
        .map_err(|e| Error::io("reading metadata of", path, e))?;
    if files::changed(&before, &after) {
        sh.warn(format!(
            "{}: file changed while it was read; the stored copy may be inconsistent",
            path.display()
        ));
    }
    // The stored size is what was read (and the holes within it), never what `stat` said.
    let pieces = sh.ingest.finish_content(pieces, Chunking::Content)?;
    Ok(FileContent { pieces, size: pos })
}

/// A reader that asks for at most 64 KiB at a time.
struct SmallReads<R>(R);

impl<R: std::io::Read> std::io::Read for SmallReads<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(64 << 10);
        self.0.read(&mut buf[..n])
    }
}

/// A directory whose entries may still wait for content; `nodes[..settled]` wait for none.
#[derive(Default)]
struct PendingTree {
    nodes: Vec<(Node, Option<PendingContent>)>,
    settled: usize,
}

enum PendingContent {
    File(PathBuf, Receiver<Result<FileContent>>),
    Dir(Box<PendingTree>),
}

/// Files queued for the readers at most: the walker waits for room.
const MAX_QUEUED_FILES: usize = 4_096;

/// Entries of walked directories waiting in their parents' lists above which the walker
/// stores the waiting directories of the one it is in before walking on (about 1 MiB).
const MAX_WAITING_ENTRIES: usize = 4_096;

struct Walker<'s, 'a> {
    sh: &'s Ctx<'a>,
    jobs: Sender<FileJob>,
    /// Entries of the walked directories waiting in their parents' lists.
    waiting: std::cell::Cell<usize>,
    /// Whether several paths were given: then the root mirrors `/` (see [`Walker::walk_roots`]).
    several: bool,
    /// The paths given: each is walked in full, on its own file system, wherever the walk
    /// meets it (`/boot` inside `/` with `-x`), and never excluded.
    given: HashSet<PathBuf>,
    /// Directories above given paths (not given themselves), with the names below them that
    /// lead to given paths: where a walk would stop (excluded, another or a pseudo file
    /// system), it goes on towards those only.
    above: HashMap<PathBuf, Vec<OsString>>,
    /// One per given path being walked (innermost last): what was stored of it and what
    /// left entries out, for the warning when nothing was.
    stats: std::cell::RefCell<Vec<PathStats>>,
}

/// What one given path contributed.
struct PathStats {
    path: PathBuf,
    /// Entries other than directories stored.
    entries: u64,
    /// Entries left out by patterns.
    excluded: u64,
    /// The first few patterns that left entries out.
    reasons: BTreeSet<String>,
}

impl<'s, 'a> Walker<'s, 'a> {
    fn new(sh: &'s Ctx<'a>, jobs: Sender<FileJob>, roots: &[PathBuf], several: bool) -> Self {
        let given: HashSet<PathBuf> = roots.iter().cloned().collect();
        let mut above: HashMap<PathBuf, Vec<OsString>> = HashMap::new();
        for r in roots {
            let mut child = r.as_path();
            while let Some(parent) = child.parent() {
                if let Some(name) = child.file_name() {
                    let names = above.entry(parent.to_path_buf()).or_default();
                    if !names.iter().any(|n| n == name) {
                        names.push(name.to_owned());
                    }
                }
                child = parent;
            }
        }
        for names in above.values_mut() {
            names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        }
        Walker {
            sh,
            jobs,
            waiting: std::cell::Cell::new(0),
            several,
            given,
            above,
            stats: std::cell::RefCell::new(Vec::new()),
        }
    }
}

impl Walker<'_, '_> {
    /// Walks the given paths; returns the root tree and the root directory's own metadata.
    ///
    /// One directory: its content is the root (as restored into the target), its metadata
    /// the root's. One file: the root lists it by name. Several paths: the root is `/`, and
    /// the tree mirrors the absolute paths (`/etc/ssh` is `etc/ssh` below the root), like
    /// restic: `/` and `/boot` nest, `/etc` and `/etc/ssh` are stored once, no two paths
    /// share a name, and every name is a plain file name.
    fn walk_roots(self, roots: &[PathBuf], parent: Option<Id>) -> Result<(Id, Option<Node>)> {
        let parent_tree = parent.and_then(|id| self.load_parent(&id));
        let lstat = |p: &Path| std::fs::symlink_metadata(p).map_err(|e| Error::io("reading", p, e));
        let root_node = |p: &Path, meta: &Metadata| -> Result<Node> {
            let mut n = files::node_from_metadata(std::ffi::OsStr::new(""), p, meta)?;
            n.links = 1;
            Ok(n)
        };
        if !self.several {
            let [root] = roots else {
                return Err(Error::new(ErrorKind::Io, "no path to back up"));
            };
            let meta = lstat(root)?;
            if meta.is_dir() {
                self.begin(root);
                let t = self.walk_dir(root, parent_tree.as_ref(), meta.dev(), meta.dev());
                self.end();
                let t = t?;
                let node = root_node(root, &meta)?;
                return Ok((self.finish(t)?, Some(node)));
            }
            let name = root.file_name().unwrap_or(root.as_os_str());
            let parent_node = parent_tree
                .as_ref()
                .and_then(|t| t.find(name.as_encoded_bytes()));
            let nodes = self.given_entry(root, name, &meta, parent_node)?;
            let tree = PendingTree {
                nodes: nodes.into_iter().collect(),
                settled: 0,
            };
            return Ok((self.finish(tree)?, None));
        }
        let root = Path::new("/");
        let meta = lstat(root)?;
        let t = if self.given.contains(root) {
            self.begin(root);
            let t = self.walk_dir(root, parent_tree.as_ref(), meta.dev(), meta.dev());
            self.end();
            t?
        } else {
            self.walk_above(root, parent_tree.as_ref())?
        };
        let node = root_node(root, &meta)?;
        Ok((self.finish(t)?, Some(node)))
    }

    fn begin(&self, path: &Path) {
        self.stats.borrow_mut().push(PathStats {
            path: path.to_path_buf(),
            entries: 0,
            excluded: 0,
            reasons: BTreeSet::new(),
        });
    }

    /// Ends a given path's walk: storing nothing of it is a warning naming what left it out.
    fn end(&self) {
        let mut stats = self.stats.borrow_mut();
        let Some(st) = stats.pop() else {
            return;
        };
        if st.entries > 0 {
            // What a given path inside another holds is the outer one's too.
            if let Some(outer) = stats.last_mut() {
                outer.entries += st.entries;
            }
            return;
        }
        drop(stats);
        let p = st.path.display();
        self.sh.warn(if st.excluded > 0 {
            let by: Vec<&str> = st.reasons.iter().map(String::as_str).collect();
            format!(
                "{p}: nothing backed up: all {} entries were left out by {}",
                st.excluded,
                by.join(", ")
            )
        } else {
            format!("{p}: nothing backed up: it holds no files")
        });
    }

    /// Counts a stored non-directory entry for the innermost given path.
    fn stored(&self) {
        if let Some(st) = self.stats.borrow_mut().last_mut() {
            st.entries += 1;
        }
    }

    /// A given path met in a walk (or as the root's only entry): walked in full on its own
    /// file system, whatever the patterns say.
    fn given_entry(
        &self,
        path: &Path,
        name: &std::ffi::OsStr,
        meta: &Metadata,
        parent: Option<&Node>,
    ) -> Result<Option<(Node, Option<PendingContent>)>> {
        self.begin(path);
        let res = self.entry(path, name, meta, parent, meta.dev(), meta.dev());
        if matches!(&res, Ok(Some((n, _))) if n.kind != NodeKind::Dir) {
            self.stored();
        }
        self.end();
        res
    }

    /// The `lstat` of an entry found in a walk; one that vanished or cannot be read is
    /// skipped with a warning naming the cause.
    fn lstat(&self, path: &Path) -> Option<Metadata> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => Some(m),
            Err(e) => {
                self.sh.warn(format!(
                    "skipped: {}",
                    crate::error::chain(&Error::io("reading", path, e))
                ));
                None
            }
        }
    }

    /// A directory above given paths whose own content is not backed up: only the names
    /// leading to given paths.
    fn walk_above(&self, dir: &Path, parent: Option<&Tree>) -> Result<PendingTree> {
        let mut tree = PendingTree::default();
        let Some(names) = self.above.get(dir) else {
            return Ok(tree);
        };
        for name in names {
            let path = dir.join(name);
            let parent_node = parent.and_then(|t| t.find(name.as_encoded_bytes()));
            let Some(meta) = self.lstat(&path) else {
                continue;
            };
            if self.given.contains(&path) {
                tree.nodes
                    .extend(self.given_entry(&path, name, &meta, parent_node)?);
                continue;
            }
            // On the way to a given path: a directory (a symlink to one is stored as the
            // directory it leads to, as the path goes through it).
            let meta = if meta.is_dir() {
                meta
            } else {
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => m,
                    _ => {
                        self.sh.warn(format!(
                            "skipped: {}: not a directory on the way to a path to back up",
                            path.display()
                        ));
                        continue;
                    }
                }
            };
            let node = match files::node_from_metadata(name, &path, &meta) {
                Ok(n) => n,
                Err(e) => {
                    self.sh
                        .warn(format!("skipped: {}", crate::error::chain(&e)));
                    continue;
                }
            };
            self.sh.counters.dirs.fetch_add(1, Ordering::Relaxed);
            let parent_tree = parent_node
                .filter(|p| p.kind == NodeKind::Dir)
                .and_then(|p| p.subtree)
                .and_then(|id| self.load_parent(&id));
            let sub = self.walk_above(&path, parent_tree.as_ref())?;
            tree.nodes.push((node, Some(self.waiting_dir(sub))));
        }
        Ok(tree)
    }

    fn load_parent(&self, id: &Id) -> Option<Tree> {
        match self.sh.repo.load_tree(self.sh.index, id) {
            Ok(t) => Some(t),
            Err(e) => {
                // Not a problem of the source: its files are simply read again.
                tracing::warn!(
                    "parent tree {} unreadable, reading its files again: {e}",
                    id.short()
                );
                None
            }
        }
    }

    /// Whether a pattern leaves `path` out; counted (with the pattern) for its given path.
    fn excluded(&self, path: &Path, is_dir: bool) -> bool {
        let reason = if self.sh.excludes.set.is_match(path) {
            Some(self.sh.excludes)
        } else {
            match self.sh.includes {
                Some(inc) if !is_dir && !inc.set.is_match(path) => Some(inc),
                _ => None,
            }
        };
        let Some(p) = reason else {
            return false;
        };
        if let Some(st) = self.stats.borrow_mut().last_mut() {
            st.excluded += 1;
            if st.reasons.len() < 3 {
                st.reasons.insert(match p.matching(path) {
                    Some(pat) if p.flag == "--exclude" => format!("--exclude '{pat}'"),
                    _ => format!("--include (no pattern matches {})", path.display()),
                });
            }
        }
        true
    }

    fn walk_dir(
        &self,
        dir: &Path,
        parent: Option<&Tree>,
        root_dev: u64,
        dir_dev: u64,
    ) -> Result<PendingTree> {
        let mut entries = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                for e in rd {
                    match e {
                        Ok(e) => entries.push(e.file_name()),
                        Err(e) => self
                            .sh
                            .warn(format!("{}: listing failed: {e}", dir.display())),
                    }
                }
            }
            Err(e) => self
                .sh
                .warn(format!("{}: cannot list directory: {e}", dir.display())),
        }
        entries.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        let mut tree = PendingTree {
            nodes: Vec::with_capacity(entries.len()),
            settled: 0,
        };
        for name in entries {
            self.sh.ingest.cancel().check()?;
            let path = dir.join(&name);
            let Some(meta) = self.lstat(&path) else {
                continue;
            };
            let parent_node = parent.and_then(|t| t.find(name.as_encoded_bytes()));
            let node = if self.several && self.given.contains(&path) {
                self.given_entry(&path, &name, &meta, parent_node)?
            } else if self.excluded(&path, meta.is_dir()) {
                if !(meta.is_dir() && self.above.contains_key(&path)) {
                    continue;
                }
                // Left out, but a given path is below it: only the way there.
                let node = match files::node_from_metadata(&name, &path, &meta) {
                    Ok(n) => n,
                    Err(e) => {
                        self.sh
                            .warn(format!("skipped: {}", crate::error::chain(&e)));
                        continue;
                    }
                };
                let sub = self.walk_above(&path, None)?;
                Some((node, Some(self.waiting_dir(sub))))
            } else {
                let n = self.entry(&path, &name, &meta, parent_node, root_dev, dir_dev)?;
                if matches!(&n, Some((n, _)) if n.kind != NodeKind::Dir) {
                    self.stored();
                }
                n
            };
            if let Some(n) = node {
                let dir = matches!(n.1, Some(PendingContent::Dir(_)));
                tree.nodes.push(n);
                // Store the directories walked before this one: their files are most
                // likely read by now, where this one's may still be queued.
                if dir && self.waiting.get() > MAX_WAITING_ENTRIES {
                    let upto = tree.nodes.len() - 1;
                    self.settle(&mut tree, upto)?;
                }
            }
        }
        Ok(tree)
    }

    /// One entry of a directory: metadata now, content queued (files) or walked (dirs).
    /// `root_dev` is the device of the given path being walked (for `-x`), `dir_dev` the
    /// device of the directory the entry is in (a change is a mount point).
    fn entry(
        &self,
        path: &Path,
        name: &std::ffi::OsStr,
        meta: &Metadata,
        parent: Option<&Node>,
        root_dev: u64,
        dir_dev: u64,
    ) -> Result<Option<(Node, Option<PendingContent>)>> {
        let mut node = match files::node_like(name, path, meta, parent) {
            Ok(n) => n,
            Err(e) => {
                self.sh
                    .warn(format!("skipped: {}", crate::error::chain(&e)));
                return Ok(None);
            }
        };
        let c = &self.sh.counters;
        match node.kind {
            NodeKind::File => {
                c.files.fetch_add(1, Ordering::Relaxed);
                c.bytes_total.fetch_add(node.size, Ordering::Relaxed);
                if let Some(p) = parent.filter(|p| self.unchanged(&node, p)) {
                    node.content = p.content.clone();
                    c.files_unchanged.fetch_add(1, Ordering::Relaxed);
                    self.sh.progress.items(1);
                    return Ok(Some((node, None)));
                }
                let (tx, rx) = bounded(1);
                self.jobs
                    .send(FileJob {
                        path: path.to_path_buf(),
                        meta: meta.clone(),
                        reply: tx,
                    })
                    .map_err(|_| Error::new(ErrorKind::Io, "backup aborted"))?;
                Ok(Some((
                    node,
                    Some(PendingContent::File(path.to_path_buf(), rx)),
                )))
            }
            NodeKind::Dir => {
                c.dirs.fetch_add(1, Ordering::Relaxed);
                // A mount point of a pseudo file system (proc, sysfs, cgroup, …): its files
                // are kernel state, not data, and are never read unless given as a path.
                let pseudo = if meta.dev() != dir_dev {
                    files::pseudo_fs(path)
                } else {
                    None
                };
                let other_fs = self.sh.opts.one_file_system && meta.dev() != root_dev;
                let sub = if pseudo.is_some() || other_fs {
                    if let Some(fs) = pseudo {
                        self.sh.note(format!(
                            "{}: content of the {fs} pseudo file system not backed up",
                            path.display()
                        ));
                    }
                    // A mount point: kept as an empty directory (or with the way to given
                    // paths below it); its content is another file system's.
                    self.walk_above(path, None)?
                } else {
                    let parent_tree = parent
                        .filter(|p| p.kind == NodeKind::Dir)
                        .and_then(|p| p.subtree)
                        .and_then(|id| self.load_parent(&id));
                    self.walk_dir(path, parent_tree.as_ref(), root_dev, meta.dev())?
                };
                Ok(Some((node, Some(self.waiting_dir(sub)))))
            }
            _ => Ok(Some((node, None))),
        }
    }

    fn unchanged(&self, node: &Node, parent: &Node) -> bool {
        parent.kind == NodeKind::File
            && parent.size == node.size
            && parent.mtime == node.mtime
            && parent.ctime == node.ctime
            && (self.sh.opts.ignore_inode || parent.inode == node.inode)
            && parent.content.iter().map(Piece::len).sum::<u64>() == node.size
            && parent.content.iter().all(|p| match p {
                Piece::Chunk(id, _) | Piece::List(id, _) => self.sh.index.contains(id),
                Piece::Hole(_) => true,
            })
    }

    /// A walked directory, to wait in its parent's list.
    fn waiting_dir(&self, sub: PendingTree) -> PendingContent {
        self.waiting.set(self.waiting.get() + sub.nodes.len());
        PendingContent::Dir(Box::new(sub))
    }

    /// Waits for the content of the entries before `upto` not settled yet (and stores the
    /// directories among them); files that could not be read are left out (with a warning).
    fn settle(&self, tree: &mut PendingTree, upto: usize) -> Result<()> {
        let later = tree.nodes.split_off(upto);
        for (mut node, content) in tree.nodes.split_off(tree.settled) {
            match content {
                None => {}
                Some(PendingContent::File(path, rx)) => {
                    let res = rx
                        .recv()
                        .map_err(|_| Error::new(ErrorKind::Io, "backup aborted"))?;
                    match res {
                        Ok(c) => {
                            // Pseudo-files and growing files: what was read, not `stat`.
                            let counted = &self.sh.counters.bytes_total;
                            counted.fetch_add(c.size, Ordering::Relaxed);
                            counted.fetch_sub(node.size, Ordering::Relaxed);
                            node.content = c.pieces;
                            node.size = c.size;
                            self.sh.counters.files_read.fetch_add(1, Ordering::Relaxed);
                            self.sh.progress.items(1);
                        }
                        Err(e) if self.sh.failed() => return Err(e),
                        Err(e) => {
                            // "skipped: opening X: Permission denied": the action, the
                            // path and the cause, once.
                            let why = crate::error::chain(&e);
                            let shown = path.display().to_string();
                            self.sh.warn(if why.contains(&shown) {
                                format!("skipped: {why}")
                            } else {
                                format!("skipped: {shown}: {why}")
                            });
                            self.sh.counters.files.fetch_sub(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                Some(PendingContent::Dir(sub)) => {
                    self.waiting.set(self.waiting.get() - sub.nodes.len());
                    node.subtree = Some(self.finish(*sub)?);
                }
            }
            tree.nodes.push((node, None));
        }
        tree.settled = tree.nodes.len();
        tree.nodes.extend(later);
        Ok(())
    }

    /// Waits for a directory's content, then stores its tree blob; returns the tree id.
    fn finish(&self, mut tree: PendingTree) -> Result<Id> {
        let all = tree.nodes.len();
        self.settle(&mut tree, all)?;
        let nodes = tree.nodes.into_iter().map(|(n, _)| n).collect();
        self.sh.ingest.store_tree(&Tree { nodes })
    }
}
