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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
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
    /// Files that could not be read or changed while read, missing paths, paths of which
    /// nothing was stored: each makes the backup partial.
    pub warnings: Vec<String>,
    /// What was left out by design (pseudo file systems' content), for the operator.
    pub notes: Vec<String>,
}

/// Runs a backup of `opts.paths` into `repo`.
pub fn run(repo: &Repo, opts: &BackupOptions, progress: &dyn Progress) -> Result<BackupOutcome> {
    let started = Instant::now();
    let time = chrono::Utc::now();
    let Roots {
        paths: roots,
        recorded: paths,
        warnings: missing,
    } = resolve_roots(&opts.paths)?;
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
    for w in missing {
        shared.warn(w);
    }
    let (blob_tx, blob_rx) = bounded::<Blob>(threads);
    let (job_tx, job_rx) = unbounded::<FileJob>();

    let tree_id = std::thread::scope(|s| -> Result<(Id, Option<Node>)> {
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
        let walker = Walker::new(sh, job_tx, blob_tx.clone(), &roots, paths.len() > 1);
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
    let (tree, root) = tree_id?;
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
    let notes = shared.notes.into_inner().expect("notes lock");
    let mut snapshot = Snapshot {
        version: 1,
        time,
        hostname,
        username: username(),
        source: "files".into(),
        paths,
        tree,
        root: root.map(Box::new),
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
        notes,
    })
}

/// The paths of one backup, normalized.
struct Roots {
    /// Paths that exist: absolute, cleaned ([`files::normalize`]), sorted, each once.
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
        norm.push(files::normalize(p).map_err(|e| Error::io("resolving", p, e))?);
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
    notes: Mutex<Vec<String>>,
    error: Mutex<Option<Error>>,
    counters: Counters,
    excludes: Patterns,
    includes: Option<Patterns>,
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
            Some(Patterns::new("--include", &opts.includes)?)
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
            notes: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            counters: Counters::default(),
            excludes: Patterns::new("--exclude", &opts.excludes)?,
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

    /// Records a warning; the caller prints the outcome's warnings, so it is logged only at
    /// info level here (printed once, not twice).
    fn warn(&self, msg: String) {
        tracing::info!("warning: {msg}");
        self.warnings.lock().expect("warnings lock").push(msg);
    }

    fn note(&self, msg: String) {
        tracing::info!("note: {msg}");
        self.notes.lock().expect("notes lock").push(msg);
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

/// Glob patterns of one kind (`--exclude` or `--include`), remembering which pattern each
/// glob came from so a warning can name it.
struct Patterns {
    flag: &'static str,
    set: GlobSet,
    /// For each glob of `set`, its pattern.
    source: Vec<String>,
}

impl Patterns {
    /// Compiles `patterns`; an empty (or blank) pattern is a configuration error naming
    /// `flag`: `--exclude ''` used to match every path and back up nothing.
    fn new(flag: &'static str, patterns: &[String]) -> Result<Self> {
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
    fn matching(&self, path: &Path) -> Option<&str> {
        self.set
            .matches(path)
            .first()
            .map(|&i| self.source[i].as_str())
    }
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
    let mut short = false;
    for (start, len) in extents {
        if start > pos {
            pieces.push(Piece::Hole(start - pos));
        }
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io("seeking in", path, e))?;
        let read = read_span(
            sh,
            chunker,
            buf,
            (&mut f).take(len),
            len,
            &mut pieces,
            blobs,
        )
        .map_err(|e| e.context(format!("reading {}", path.display())))?;
        pos = start + read;
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
        f.seek(SeekFrom::Start(pos))
            .map_err(|e| Error::io("seeking in", path, e))?;
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
            // (and fail with ENOMEM for the chunker's 16 MiB).
            let rest = std::io::Cursor::new(&probe[..n]).chain(SmallReads(&mut f));
            let read = read_span(sh, chunker, buf, rest, u64::MAX, &mut pieces, blobs)
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

/// Chunks up to `limit` bytes of `r` into `pieces`, sending new chunks to the sealers;
/// returns the bytes read.
fn read_span(
    sh: &Shared,
    chunker: &crate::pipeline::Chunker,
    buf: &mut Vec<u8>,
    r: impl std::io::Read,
    limit: u64,
    pieces: &mut Vec<Piece>,
    blobs: &Sender<Blob>,
) -> Result<u64> {
    let read = chunker.chunk_reader(r, limit, buf, |chunk| -> Result<()> {
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
    })?;
    sh.counters.bytes_read.fetch_add(read, Ordering::Relaxed);
    Ok(read)
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
    fn new(
        sh: &'s Shared<'a>,
        jobs: Sender<FileJob>,
        blobs: Sender<Blob>,
        roots: &[PathBuf],
        several: bool,
    ) -> Self {
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
            blobs,
            pending: std::cell::Cell::new(0),
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
            tree.nodes
                .push((node, Some(PendingContent::Dir(Box::new(sub)))));
        }
        Ok(tree)
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

    /// Whether a pattern leaves `path` out; counted (with the pattern) for its given path.
    fn excluded(&self, path: &Path, is_dir: bool) -> bool {
        let reason = if self.sh.excludes.set.is_match(path) {
            Some(&self.sh.excludes)
        } else {
            match &self.sh.includes {
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
                Some((node, Some(PendingContent::Dir(Box::new(sub)))))
            } else {
                let n = self.entry(&path, &name, &meta, parent_node, root_dev, dir_dev)?;
                if matches!(&n, Some((n, _)) if n.kind != NodeKind::Dir) {
                    self.stored();
                }
                n
            };
            if let Some(n) = node {
                tree.nodes.push(n);
                if self.pending.get() > MAX_PENDING_FILES {
                    self.settle(&mut tree)?;
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
        let mut node = match files::node_from_metadata(name, path, meta) {
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
                self.pending.set(self.pending.get() + 1);
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
