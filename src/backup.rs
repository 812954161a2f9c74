//! The backup engine: walk a source, chunk, dedup, compress, seal, pack, upload, verify, commit.
//!
//! Threads and bounded channels, so every stage runs in parallel and memory stays bounded:
//! ```text
//! walker ──files──▶ readers (chunk, hash, dedup) ──new chunks──▶ sealers (zstd, seal, pack)
//!        ◀─content─┘
//! ```
//! The sealer that fills a pack uploads it (write, read back) while holding one of
//! `write_concurrency` upload slots; the others go on filling the next pack.
//! The walker builds trees bottom-up; trees are blobs like chunks. When everything is
//! uploaded and read back, the index is written, then the snapshot manifest (the commit).
//! A failure anywhere stops the backup before the manifest: no partial snapshot is visible.

use std::collections::HashSet;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Packer;
use crate::pipeline::packer::{FinishedPack, seal_blob};
use crate::progress::Progress;
use crate::repo::lock::LockGuard;
use crate::repo::pack::{self, BlobKind};
use crate::repo::{
    BackupKind, Id, Index, IndexPack, Node, NodeKind, Piece, Repo, Snapshot, Summary, Tree,
};
use crate::source::files;

/// What to back up and how.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Paths to back up; one directory becomes the snapshot's root.
    pub paths: Vec<PathBuf>,
    /// Re-read every file instead of trusting the parent snapshot.
    pub full: bool,
    /// Glob patterns of paths to leave out.
    pub excludes: Vec<String>,
    /// If not empty, only files matching one of these globs are backed up.
    pub includes: Vec<String>,
    /// Do not descend into other file systems.
    pub one_file_system: bool,
    /// Compare files with the parent without their inode number.
    pub ignore_inode: bool,
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
}

/// What a backup produced.
#[derive(Clone, Debug)]
pub struct BackupOutcome {
    /// The new snapshot's id.
    pub id: Id,
    /// The new snapshot.
    pub snapshot: Snapshot,
    /// Files that could not be read or changed while read.
    pub warnings: Vec<String>,
}

/// Runs a backup of `opts.paths` into `repo`.
pub fn run(repo: &Repo, opts: &BackupOptions, progress: &dyn Progress) -> Result<BackupOutcome> {
    let started = Instant::now();
    let time = chrono::Utc::now();
    let roots = resolve_roots(&opts.paths)?;
    let paths: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    let lock = crate::repo::lock::acquire(repo.storage(), false, "backup", opts.retry_lock)?;
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
    let hostname = crate::repo::hostname();
    let parent = if opts.full {
        None
    } else {
        repo.snapshots()?
            .into_iter()
            .rev()
            .find(|(_, s)| s.hostname == hostname && s.paths == paths && s.source == "files")
    };
    let parent_tree = parent.as_ref().map(|(_, s)| s.tree);
    progress.phase("backup", None);

    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        opts.threads
    };
    let shared = Shared::new(repo.clone(), index, &lock, opts, progress)?;
    let (blob_tx, blob_rx) = bounded::<Blob>(threads);
    let (job_tx, job_rx) = unbounded::<FileJob>();

    let tree_id = std::thread::scope(|s| -> Result<Id> {
        let sh = &shared;
        for _ in 0..threads {
            let (rx, tx) = (job_rx.clone(), blob_tx.clone());
            s.spawn(move || reader(sh, rx, tx));
        }
        let mut sealers = Vec::new();
        for _ in 0..threads {
            let rx = blob_rx.clone();
            sealers.push(s.spawn(move || sealer(sh, rx)));
        }
        drop((job_rx, blob_rx));
        let walker = Walker {
            sh,
            jobs: job_tx,
            blobs: blob_tx.clone(),
            pending: std::cell::Cell::new(0),
        };
        let walked = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn_scoped(s, move || walker.walk_roots(&roots, parent_tree))
            .map_err(|e| Error::new(ErrorKind::Io, "starting the walker").with_source(e))?
            .join()
            .map_err(|_| Error::new(ErrorKind::Io, "the walker thread panicked"))?;
        drop(blob_tx);
        for h in sealers {
            let _ = h.join();
        }
        // Store the last, partial pack.
        let last = shared.packer.lock().expect("packer lock").take();
        if !last.is_empty() {
            shared.upload(last.finish(repo.crypto()));
        }
        walked
    });
    if let Some(e) = shared.error.into_inner().expect("error lock") {
        // A process frozen past its lock's expiry may find its temporary files pruned:
        // then the lost lock is the cause to report.
        lock.check()?;
        return Err(e);
    }
    let tree = tree_id?;
    let packs = shared.written.into_inner().expect("packs lock");
    let c = &shared.counters;
    let summary = Summary {
        files: c.files.load(Ordering::Relaxed),
        dirs: c.dirs.load(Ordering::Relaxed),
        files_read: c.files_read.load(Ordering::Relaxed),
        files_unchanged: c.files_unchanged.load(Ordering::Relaxed),
        bytes_total: c.bytes_total.load(Ordering::Relaxed),
        bytes_read: c.bytes_read.load(Ordering::Relaxed),
        bytes_new: c.bytes_new.load(Ordering::Relaxed),
        bytes_stored: packs.iter().map(|p| p.size).sum(),
        packs: packs.len() as u64,
        warnings: 0,
        seconds: 0.0,
    };
    // Commit only under a lock that is still ours: a process frozen past its lock's expiry
    // may find its data pruned meanwhile.
    lock.check()?;
    crate::failpoint::hit("before-index");
    if !packs.is_empty() {
        repo.save_index(packs)?;
        crate::failpoint::hit("after-index");
    }
    let warnings = shared.warnings.into_inner().expect("warnings lock");
    let mut snapshot = Snapshot {
        version: 1,
        time,
        hostname,
        username: username(),
        source: "files".into(),
        paths,
        tree,
        parent: parent.map(|(id, _)| id),
        kind: if opts.full {
            BackupKind::Full
        } else {
            BackupKind::Incremental
        },
        policy: opts.policy.clone(),
        tags: opts.tags.clone(),
        summary: Summary {
            warnings: warnings.len() as u64,
            seconds: started.elapsed().as_secs_f64(),
            ..summary
        },
        program: format!("backstop {}", env!("CARGO_PKG_VERSION")),
    };
    if snapshot.parent.is_none() {
        // Without a parent every byte was read: the snapshot is a full one.
        snapshot.kind = BackupKind::Full;
    }
    lock.check()?;
    let id = repo.save_snapshot(&snapshot)?;
    progress.finish();
    Ok(BackupOutcome {
        id,
        snapshot,
        warnings,
    })
}

/// Paths must exist; several paths must have distinct names (they become the root's entries).
fn resolve_roots(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(Error::config("nothing to back up: give at least one path"));
    }
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for p in paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io("resolving", p, e))?;
        std::fs::symlink_metadata(&abs).map_err(|e| Error::io("reading", &abs, e))?;
        if paths.len() > 1 {
            let name = abs.file_name().map(|n| n.to_owned()).unwrap_or_default();
            if !names.insert(name) {
                return Err(Error::config(format!(
                    "two paths share the name {:?}; back them up separately",
                    abs.file_name().unwrap_or_default()
                )));
            }
        }
        out.push(abs);
    }
    Ok(out)
}

fn username() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| nix::unistd::getuid().to_string())
}

/// Counters shared by the workers.
#[derive(Default)]
struct Counters {
    files: AtomicU64,
    dirs: AtomicU64,
    files_read: AtomicU64,
    files_unchanged: AtomicU64,
    bytes_total: AtomicU64,
    bytes_read: AtomicU64,
    bytes_new: AtomicU64,
}

/// State shared by all stages of one backup.
struct Shared<'a> {
    repo: Repo,
    index: Index,
    /// Blobs new in this run (queued, packed or uploaded): each is stored once.
    added: Mutex<HashSet<Id>>,
    packer: Mutex<Packer>,
    /// One token per pack that may upload at once (`Storage::write_concurrency`).
    upload_slots: (Receiver<()>, Sender<()>),
    written: Mutex<Vec<IndexPack>>,
    warnings: Mutex<Vec<String>>,
    error: Mutex<Option<Error>>,
    counters: Counters,
    excludes: GlobSet,
    includes: Option<GlobSet>,
    lock: &'a LockGuard,
    opts: &'a BackupOptions,
    progress: &'a dyn Progress,
}

impl<'a> Shared<'a> {
    fn new(
        repo: Repo,
        index: Index,
        lock: &'a LockGuard,
        opts: &'a BackupOptions,
        progress: &'a dyn Progress,
    ) -> Result<Self> {
        let includes = if opts.includes.is_empty() {
            None
        } else {
            Some(globs(&opts.includes)?)
        };
        Ok(Shared {
            packer: Mutex::new(Packer::new(repo.config().pack_size as usize)),
            upload_slots: {
                let n = repo.storage().write_concurrency();
                let (tx, rx) = bounded(n);
                for _ in 0..n {
                    tx.send(()).expect("slot channel");
                }
                (rx, tx)
            },
            repo,
            index,
            added: Mutex::new(HashSet::new()),
            written: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            counters: Counters::default(),
            excludes: globs(&opts.excludes)?,
            includes,
            lock,
            opts,
            progress,
        })
    }

    /// Whether `id` must be stored: not in the repository and not yet queued by this run.
    fn claim(&self, id: Id) -> bool {
        !self.index.contains(&id) && self.added.lock().expect("added lock").insert(id)
    }

    fn warn(&self, msg: String) {
        tracing::warn!("{msg}");
        self.warnings.lock().expect("warnings lock").push(msg);
    }

    fn fail(&self, e: Error) {
        let mut slot = self.error.lock().expect("error lock");
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    fn failed(&self) -> bool {
        self.error.lock().expect("error lock").is_some()
    }

    /// Stores a finished pack; after a failure (or once the lock is lost) packs are dropped
    /// unstored.
    fn upload(&self, p: FinishedPack) {
        if self.failed() {
            return;
        }
        if let Err(e) = self.lock.check() {
            return self.fail(e);
        }
        let id = p.id;
        match self.repo.store_pack(p) {
            Ok(record) => {
                crate::failpoint::hit("after-pack-upload");
                self.written.lock().expect("packs lock").push(record);
                self.progress.items(1);
            }
            Err(e) => self.fail(e.context(format!("storing pack {}", id.short()))),
        }
    }
}

fn globs(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| Error::config(format!("invalid glob '{p}': {e}")))?);
        // `dir/*` should also leave out `dir` itself; `*.log` matches at any depth.
        if !p.starts_with('/') && !p.starts_with("**/") {
            b.add(
                Glob::new(&format!("**/{p}"))
                    .map_err(|e| Error::config(format!("invalid glob '{p}': {e}")))?,
            );
        }
    }
    b.build()
        .map_err(|e| Error::config(format!("invalid globs: {e}")))
}

/// A blob on its way to a pack.
struct Blob {
    kind: BlobKind,
    id: Id,
    data: Vec<u8>,
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

fn reader(sh: &Shared, jobs: Receiver<FileJob>, blobs: Sender<Blob>) {
    let chunker = sh.repo.chunker();
    let mut buf = Vec::new();
    for job in jobs {
        let res = if sh.failed() {
            Err(Error::new(ErrorKind::Io, "backup aborted"))
        } else {
            read_file(sh, &chunker, &mut buf, &job, &blobs)
        };
        let _ = job.reply.send(res);
    }
}

fn read_file(
    sh: &Shared,
    chunker: &crate::pipeline::Chunker,
    buf: &mut Vec<u8>,
    job: &FileJob,
    blobs: &Sender<Blob>,
) -> Result<FileContent> {
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
    for (start, len) in extents {
        if start > pos {
            pieces.push(Piece::Hole(start - pos));
        }
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io("seeking in", path, e))?;
        // A file growing while read is read up to its size at open: the rest is the next backup's.
        let read = chunker
            .chunk_reader((&mut f).take(len), len, buf, |chunk| -> Result<()> {
                let id = sh.repo.crypto().chunk_id(chunk);
                let n = chunk.len() as u32;
                pieces.push(Piece::Chunk(id, n));
                sh.progress.bytes(u64::from(n));
                if sh.claim(id) {
                    sh.counters
                        .bytes_new
                        .fetch_add(u64::from(n), Ordering::Relaxed);
                    blobs
                        .send(Blob {
                            kind: BlobKind::Data,
                            id,
                            data: chunk.to_vec(),
                        })
                        .map_err(|_| Error::new(ErrorKind::Io, "backup aborted"))?;
                }
                Ok(())
            })
            .map_err(|e| e.context(format!("reading {}", path.display())))?;
        sh.counters.bytes_read.fetch_add(read, Ordering::Relaxed);
        pos = start + read;
        if read < len {
            break; // truncated while reading
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
    let size = before.size().min(after.size()).max(pos);
    if size > pos {
        pieces.push(Piece::Hole(size - pos));
    }
    Ok(FileContent { pieces, size })
}

fn sealer(sh: &Shared, blobs: Receiver<Blob>) {
    let crypto = sh.repo.crypto();
    for b in blobs {
        let sealed = seal_blob(b.kind, b.id, b.data, sh.opts.compression, crypto);
        let mut packer = sh.packer.lock().expect("packer lock");
        packer.add(sealed);
        if !packer.is_full() {
            continue;
        }
        // The full packer stays locked until an upload slot frees up: the other sealers
        // wait with one sealed blob each, so at most one pack per slot plus this one is in
        // memory, and a pack never grows past its target by more than one blob.
        sh.upload_slots.0.recv().expect("slot channel");
        let full = packer.take();
        drop(packer);
        sh.upload(full.finish(crypto));
        sh.upload_slots.1.send(()).expect("slot channel");
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

/// Files in flight above which the walker waits for the directory it is in before walking
/// on. Deeper directories settle themselves first, so nodes waiting for content stay
/// bounded however large the tree is.
const MAX_PENDING_FILES: u64 = 4_096;

struct Walker<'s, 'a> {
    sh: &'s Shared<'a>,
    jobs: Sender<FileJob>,
    blobs: Sender<Blob>,
    /// Files queued for the readers whose content the walker has not taken yet.
    pending: std::cell::Cell<u64>,
}

impl Walker<'_, '_> {
    fn walk_roots(self, roots: &[PathBuf], parent: Option<Id>) -> Result<Id> {
        let parent_tree = parent.and_then(|id| self.load_parent(&id));
        let root_meta =
            |p: &Path| std::fs::symlink_metadata(p).map_err(|e| Error::io("reading", p, e));
        if let [root] = roots {
            let meta = root_meta(root)?;
            if meta.is_dir() {
                let t = self.walk_dir(root, parent_tree.as_ref(), meta.dev())?;
                return self.finish(t);
            }
        }
        // Several paths, or one file: the root lists them by name.
        let mut nodes = Vec::new();
        for root in roots {
            let meta = root_meta(root)?;
            let name = root.file_name().unwrap_or(root.as_os_str());
            let parent_node = parent_tree
                .as_ref()
                .and_then(|t| t.find(name.as_encoded_bytes()));
            if let Some(n) = self.entry(root, name, &meta, parent_node, meta.dev())? {
                nodes.push(n);
            }
        }
        nodes.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        self.finish(PendingTree { nodes, settled: 0 })
    }

    fn load_parent(&self, id: &Id) -> Option<Tree> {
        match self.sh.repo.load_tree(&self.sh.index, id) {
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

    fn excluded(&self, path: &Path, is_dir: bool) -> bool {
        if self.sh.excludes.is_match(path) {
            return true;
        }
        match &self.sh.includes {
            Some(inc) if !is_dir => !inc.is_match(path),
            _ => false,
        }
    }

    fn walk_dir(&self, dir: &Path, parent: Option<&Tree>, root_dev: u64) -> Result<PendingTree> {
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
            let path = dir.join(&name);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.sh.warn(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if self.excluded(&path, meta.is_dir()) {
                continue;
            }
            let parent_node = parent.and_then(|t| t.find(name.as_encoded_bytes()));
            if let Some(n) = self.entry(&path, &name, &meta, parent_node, root_dev)? {
                tree.nodes.push(n);
                if self.pending.get() > MAX_PENDING_FILES {
                    self.settle(&mut tree)?;
                }
            }
        }
        Ok(tree)
    }

    /// One entry of a directory: metadata now, content queued (files) or walked (dirs).
    fn entry(
        &self,
        path: &Path,
        name: &std::ffi::OsStr,
        meta: &Metadata,
        parent: Option<&Node>,
        root_dev: u64,
    ) -> Result<Option<(Node, Option<PendingContent>)>> {
        let mut node = match files::node_from_metadata(name, path, meta) {
            Ok(n) => n,
            Err(e) => {
                self.sh.warn(format!("{}: {e}", path.display()));
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
                self.pending.set(self.pending.get() + 1);
                Ok(Some((
                    node,
                    Some(PendingContent::File(path.to_path_buf(), rx)),
                )))
            }
            NodeKind::Dir => {
                c.dirs.fetch_add(1, Ordering::Relaxed);
                let sub = if self.sh.opts.one_file_system && meta.dev() != root_dev {
                    // A mount point: kept as an empty directory, its content is another file system's.
                    PendingTree::default()
                } else {
                    let parent_tree = parent
                        .filter(|p| p.kind == NodeKind::Dir)
                        .and_then(|p| p.subtree)
                        .and_then(|id| self.load_parent(&id));
                    self.walk_dir(path, parent_tree.as_ref(), root_dev)?
                };
                Ok(Some((node, Some(PendingContent::Dir(Box::new(sub))))))
            }
            _ => Ok(Some((node, None))),
        }
    }

    fn unchanged(&self, node: &Node, parent: &Node) -> bool {
        !self.sh.opts.full
            && parent.kind == NodeKind::File
            && parent.size == node.size
            && parent.mtime == node.mtime
            && parent.ctime == node.ctime
            && (self.sh.opts.ignore_inode || parent.inode == node.inode)
            && parent.content.iter().map(Piece::len).sum::<u64>() == node.size
            && parent.content.iter().all(|p| match p {
                Piece::Chunk(id, _) => self.sh.index.contains(id),
                Piece::Hole(_) => true,
            })
    }

    /// Waits for the content of the entries not settled yet; files that could not be read
    /// are left out (with a warning).
    fn settle(&self, tree: &mut PendingTree) -> Result<()> {
        for (mut node, content) in tree.nodes.split_off(tree.settled) {
            match content {
                None => {}
                Some(PendingContent::File(path, rx)) => {
                    self.pending.set(self.pending.get() - 1);
                    let res = rx
                        .recv()
                        .map_err(|_| Error::new(ErrorKind::Io, "backup aborted"))?;
                    match res {
                        Ok(c) => {
                            node.content = c.pieces;
                            node.size = c.size;
                            self.sh.counters.files_read.fetch_add(1, Ordering::Relaxed);
                            self.sh.progress.items(1);
                        }
                        Err(e) if self.sh.failed() => return Err(e),
                        Err(e) => {
                            self.sh.warn(format!("{}: skipped: {e}", path.display()));
                            self.sh.counters.files.fetch_sub(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                Some(PendingContent::Dir(sub)) => node.subtree = Some(self.finish(*sub)?),
            }
            tree.nodes.push((node, None));
        }
        tree.settled = tree.nodes.len();
        Ok(())
    }

    /// Waits for a directory's content, then stores its tree blob; returns the tree id.
    fn finish(&self, mut tree: PendingTree) -> Result<Id> {
        self.settle(&mut tree)?;
        let nodes = tree.nodes.into_iter().map(|(n, _)| n).collect();
        let data = Tree { nodes }.encode();
        if data.len() > pack::MAX_BLOB_LEN as usize {
            return Err(Error::config(
                "a directory has too many entries for one tree blob",
            ));
        }
        let id = self.sh.repo.crypto().chunk_id(&data);
        if self.sh.claim(id) {
            self.blobs
                .send(Blob {
                    kind: BlobKind::Tree,
                    id,
                    data,
                })
                .map_err(|_| Error::new(ErrorKind::Io, "backup aborted"))?;
        }
        Ok(id)
    }
}
