//! The restore engine: snapshot tree to a destination directory, parallel and out of order.
//!
//! Safety: names are single path components (no `/`, `.`, `..`, NUL), duplicate names in a
//! tree are refused, every directory on the way is checked to be a real directory (never a
//! symlink, planted or pre-existing), and files are opened with `O_NOFOLLOW`. So nothing is
//! ever written outside the destination, whatever the repository contains.
//!
//! Content: chunks are grouped by pack, packs are read in parallel (coalesced range reads),
//! each chunk is decrypted, decompressed and checked against its id before it is written at
//! its offsets. Holes are never written, so sparse files stay sparse. A missing or corrupt
//! chunk fails only the files that need it: they are removed and named, the rest restores.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::repo::pack;
use crate::repo::{Id, Index, Node, NodeKind, Piece, Repo};

/// What to restore and where.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Destination directory (created if missing).
    pub target: PathBuf,
    /// Only paths matching these globs (and what is below matching directories).
    pub includes: Vec<String>,
    /// List what would be restored without writing anything.
    pub dry_run: bool,
    /// Parallel pack readers (0: default).
    pub threads: usize,
    /// How long to wait for a conflicting lock to go away.
    pub retry_lock: std::time::Duration,
}

/// What a restore did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreOutcome {
    /// Files restored completely and verified.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Other entries (symlinks, hardlinks, fifos, devices).
    pub others: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Files that could not be restored, with the reason.
    pub failed: Vec<(String, String)>,
    /// Non-fatal problems (ownership, xattrs).
    pub warnings: Vec<String>,
}

/// One entry to restore, in tree (pre-)order.
struct Item {
    rel: PathBuf,
    node: Node,
}

/// Files restored per batch, and chunks planned per batch at most: memory stays bounded
/// however many files a snapshot holds (a pack shared by two batches is read twice).
const BATCH_FILES: usize = 4096;
const BATCH_CHUNKS: u64 = 65_536;

/// Restores snapshot tree `tree` into `opts.target`.
pub fn run(
    repo: &Repo,
    tree: Id,
    opts: &RestoreOptions,
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
    let index = repo.load_index()?;
    let includes = globs(&opts.includes)?;

    // First pass: the whole tree is checked before anything is written, and counted.
    let mut planned = RestoreOutcome::default();
    let mut walk = Walk::new(repo, &index, tree, includes.as_ref())?;
    while let Some(item) = walk.next_item()? {
        match item.node.kind {
            NodeKind::File => {
                planned.files += 1;
                planned.bytes += item.node.size;
            }
            NodeKind::Dir => planned.dirs += 1,
            _ => planned.others += 1,
        }
    }
    if opts.dry_run {
        return Ok(planned);
    }
    let target = prepare_target(&opts.target)?;
    progress.phase("restore", Some(planned.bytes));

    // Second pass, in batches: create the entries, then write the batch's file content.
    let mut out = RestoreOutcome::default();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut walk = Walk::new(repo, &index, tree, includes.as_ref())?;
    let threads = if opts.threads == 0 { 4 } else { opts.threads };
    loop {
        let mut files: Vec<FileTask> = Vec::new();
        let mut chunks_planned = 0;
        let mut more = false;
        while let Some(item) = walk.next_item()? {
            let path = target.join(&item.rel);
            let node = item.node;
            match node.kind {
                NodeKind::Dir => {
                    make_dir(&path)?;
                    out.dirs += 1;
                    dirs.push((path, node));
                }
                NodeKind::File => {
                    if node.links > 1 {
                        if let Some(first) = links.get(&(node.dev, node.inode)) {
                            refuse_symlink(&path)?;
                            remove_existing_file(&path)?;
                            std::fs::hard_link(first, &path)
                                .map_err(|e| Error::io("linking", &path, e))?;
                            out.others += 1;
                            continue;
                        }
                        links.insert((node.dev, node.inode), path.clone());
                    }
                    let f = create_file(&path)?;
                    f.set_len(node.size)
                        .map_err(|e| Error::io("sizing", &path, e))?;
                    let chunks = node
                        .content
                        .iter()
                        .filter(|p| matches!(p, Piece::Chunk(..)))
                        .count() as u64;
                    chunks_planned += chunks;
                    files.push(FileTask {
                        path,
                        node,
                        remaining: AtomicU64::new(chunks),
                        failed: Mutex::new(None),
                        done: AtomicBool::new(false),
                    });
                    if files.len() >= BATCH_FILES || chunks_planned >= BATCH_CHUNKS {
                        more = true;
                        break;
                    }
                }
                _ => {
                    make_special(&path, &node, &mut out)?;
                    out.others += 1;
                }
            }
        }
        restore_content(repo, &index, &files, threads, progress, &mut out);
        if !more {
            break;
        }
    }
    // Directories last, deepest first, so their mtimes stay.
    for (path, node) in dirs.iter().rev() {
        apply_metadata(path, node, &mut out.warnings);
    }
    progress.finish();
    Ok(out)
}

/// Writes the content of a batch of files, pack by pack in parallel; then completes the
/// files and counts them into `out`.
fn restore_content(
    repo: &Repo,
    index: &Index,
    files: &[FileTask],
    threads: usize,
    progress: &dyn Progress,
    out: &mut RestoreOutcome,
) {
    let mut by_pack: BTreeMap<u32, Vec<Write>> = BTreeMap::new();
    for (fi, f) in files.iter().enumerate() {
        let mut offset = 0u64;
        for p in &f.node.content {
            if let Piece::Chunk(id, len) = p {
                match index.get(id) {
                    Some(e) if e.raw_len == *len => {
                        by_pack.entry(e.pack).or_default().push((*e, fi, offset))
                    }
                    _ => f.fail(format!(
                        "chunk {} is missing from the repository",
                        id.short()
                    )),
                }
            }
            offset += p.len();
        }
    }
    let cx = ContentCx {
        repo,
        index,
        files,
        bytes: AtomicU64::new(0),
        warnings: Mutex::new(std::mem::take(&mut out.warnings)),
        progress,
    };
    let work: Mutex<Vec<(u32, Vec<_>)>> = Mutex::new(by_pack.into_iter().rev().collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let next = work.lock().expect("work lock").pop();
                    let Some((pack_no, blobs)) = next else { break };
                    restore_pack(&cx, pack_no, blobs);
                }
            });
        }
    });
    // Files without chunks, and failed ones, are completed here.
    for f in files {
        if f.remaining.load(Ordering::SeqCst) == 0 || f.failed.lock().expect("lock").is_some() {
            f.complete(&cx.warnings);
        }
    }
    out.warnings = cx.warnings.into_inner().expect("lock");
    out.bytes += cx.bytes.into_inner();
    for f in files {
        match f.failed.lock().expect("lock").take() {
            Some(reason) => out.failed.push((f.path.display().to_string(), reason)),
            None => out.files += 1,
        }
    }
}

struct FileTask {
    path: PathBuf,
    node: Node,
    remaining: AtomicU64,
    failed: Mutex<Option<String>>,
    done: AtomicBool,
}

impl FileTask {
    fn fail(&self, reason: String) {
        let mut f = self.failed.lock().expect("lock");
        if f.is_none() {
            tracing::error!("{}: {reason}", self.path.display());
            *f = Some(reason);
        }
    }

    /// Called once when all chunks are written (or the file failed).
    fn complete(&self, warnings: &Mutex<Vec<String>>) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.failed.lock().expect("lock").is_some() {
            // Never leave a file that looks restored but is not.
            let _ = std::fs::remove_file(&self.path);
        } else {
            apply_metadata(&self.path, &self.node, &mut warnings.lock().expect("lock"));
        }
    }
}

/// What the content workers share.
struct ContentCx<'a> {
    repo: &'a Repo,
    index: &'a Index,
    files: &'a [FileTask],
    bytes: AtomicU64,
    warnings: Mutex<Vec<String>>,
    progress: &'a dyn Progress,
}

/// A blob to write: its index entry, the file (position in `files`) and the offset.
type Write = (crate::repo::index::Entry, usize, u64);

fn restore_pack(cx: &ContentCx, pack_no: u32, mut blobs: Vec<Write>) {
    let ContentCx {
        repo,
        index,
        files,
        bytes,
        warnings,
        progress,
    } = cx;
    let (pack_id, _) = index.pack(pack_no);
    let path = pack::path(&pack_id);
    blobs.sort_by_key(|b| (b.0.offset, b.1, b.2));
    let mut open = None;
    // Coalesce nearby blobs into range reads of at most 8 MiB (memory: threads × 8 MiB).
    let mut i = 0;
    while i < blobs.len() {
        let start = u64::from(blobs[i].0.offset);
        let mut end = start + u64::from(blobs[i].0.stored_len);
        let mut j = i + 1;
        while j < blobs.len() {
            let (o, l) = (
                u64::from(blobs[j].0.offset),
                u64::from(blobs[j].0.stored_len),
            );
            if o > end + (1 << 20) || o + l - start > 8 << 20 {
                break;
            }
            end = end.max(o + l);
            j += 1;
        }
        let group = &blobs[i..j];
        match repo.storage().read_range(&path, start..end) {
            Err(e) => {
                for (_, fi, _) in group {
                    files[*fi].fail(format!("pack {} unreadable: {e}", pack_id.short()));
                }
            }
            Ok(data) => {
                let mut k = 0;
                while k < group.len() {
                    let e = group[k].0;
                    let mut m = k;
                    while m < group.len() && group[m].0.id == e.id {
                        m += 1;
                    }
                    let lo = (u64::from(e.offset) - start) as usize;
                    let plain = pack::open_blob(
                        &data[lo..lo + e.stored_len as usize],
                        &e.header(),
                        repo.crypto(),
                    );
                    for (_, fi, off) in &group[k..m] {
                        let f = &files[*fi];
                        match &plain {
                            Err(err) => f.fail(format!(
                                "chunk {} in pack {} is corrupt: {err}",
                                e.id.short(),
                                pack_id.short()
                            )),
                            Ok(p) if f.failed.lock().expect("lock").is_none() => {
                                if let Err(err) = write_at(&mut open, *fi, &f.path, p, *off) {
                                    f.fail(err.to_string());
                                } else {
                                    bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                                    progress.bytes(p.len() as u64);
                                }
                            }
                            Ok(_) => {}
                        }
                        if f.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                            f.complete(warnings);
                        }
                    }
                    k = m;
                }
            }
        }
        i = j;
    }
}

/// Writes `data` at `offset` of file number `fi`, reusing the handle of the previous write
/// when it went to the same file (a pack's chunks of one file come one after another).
fn write_at(
    open: &mut Option<(usize, File)>,
    fi: usize,
    path: &Path,
    data: &[u8],
    offset: u64,
) -> Result<()> {
    let f = match open {
        Some((i, f)) if *i == fi => f,
        _ => {
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| Error::io("opening", path, e))?;
            &mut open.insert((fi, f)).1
        }
    };
    f.write_all_at(data, offset)
        .map_err(|e| Error::io("writing", path, e))
}

/// The snapshot tree in pre-order, loaded one directory at a time (memory: the open
/// directories only). Names are checked as each directory loads. With include globs, a
/// directory appears only once something below it is included.
struct Walk<'a> {
    repo: &'a Repo,
    index: &'a Index,
    includes: Option<&'a GlobSet>,
    stack: Vec<Frame>,
    /// Items to hand out before walking on: held-back directories, then an entry.
    ready: VecDeque<Item>,
}

/// An open directory.
struct Frame {
    rel: PathBuf,
    /// Whether an include glob matched the directory or one above it.
    matched: bool,
    /// The directory's own item while nothing below it was included.
    held: Option<Item>,
    entries: std::vec::IntoIter<Node>,
}

impl<'a> Walk<'a> {
    fn new(
        repo: &'a Repo,
        index: &'a Index,
        tree: Id,
        includes: Option<&'a GlobSet>,
    ) -> Result<Self> {
        let mut w = Walk {
            repo,
            index,
            includes,
            stack: Vec::new(),
            ready: VecDeque::new(),
        };
        w.open(tree, PathBuf::new(), false, None)?;
        Ok(w)
    }

    fn open(&mut self, tree: Id, rel: PathBuf, matched: bool, held: Option<Item>) -> Result<()> {
        let t = self.repo.load_tree(self.index, &tree)?;
        let mut seen = HashSet::new();
        for node in &t.nodes {
            let problem = if !node.has_safe_name() {
                "not a plain file name"
            } else if !seen.insert(&node.name) {
                "a duplicate entry"
            } else {
                continue;
            };
            return Err(Error::new(
                ErrorKind::Unsafe,
                format!(
                    "refusing entry {:?} in {}: {problem}",
                    String::from_utf8_lossy(&node.name),
                    show(&rel)
                ),
            ));
        }
        self.stack.push(Frame {
            rel,
            matched,
            held,
            entries: t.nodes.into_iter(),
        });
        Ok(())
    }

    /// Queues `item` after the directories held back above it.
    fn release(&mut self, item: Item) {
        let held = self.stack.iter_mut().filter_map(|f| f.held.take());
        self.ready.extend(held);
        self.ready.push_back(item);
    }

    fn next_item(&mut self) -> Result<Option<Item>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Ok(Some(item));
            }
            let Some(frame) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(node) = frame.entries.next() else {
                self.stack.pop();
                continue;
            };
            let rel = frame.rel.join(node.os_name());
            let matched = frame.matched || self.includes.is_none_or(|g| g.is_match(&rel));
            if node.kind == NodeKind::Dir {
                if let Some(sub) = node.subtree {
                    let item = Item {
                        rel: rel.clone(),
                        node,
                    };
                    if matched {
                        self.release(item);
                        self.open(sub, rel, true, None)?;
                    } else {
                        self.open(sub, rel, false, Some(item))?;
                    }
                }
            } else if matched {
                self.release(Item { rel, node });
            }
        }
    }
}

fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        "/".into()
    } else {
        format!("/{}", rel.display())
    }
}

fn globs(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let p = p.trim_start_matches('/');
        for pat in [p.to_string(), format!("{p}/**")] {
            b.add(Glob::new(&pat).map_err(|e| Error::config(format!("invalid glob '{p}': {e}")))?);
        }
    }
    Ok(Some(b.build().map_err(|e| {
        Error::config(format!("invalid globs: {e}"))
    })?))
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

fn unsafe_path(path: &Path, what: &str) -> Error {
    Error::new(
        ErrorKind::Unsafe,
        format!("refusing to restore through {}: {what}", path.display()),
    )
}

fn refuse_symlink(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(unsafe_path(path, "it is a symlink")),
        _ => Ok(()),
    }
}

fn make_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => Err(unsafe_path(path, "a symlink is in the way")),
        Ok(_) => Err(unsafe_path(path, "a non-directory is in the way")),
        Err(_) => std::fs::create_dir(path).map_err(|e| Error::io("creating directory", path, e)),
    }
}

fn remove_existing_file(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(unsafe_path(path, "a directory is in the way")),
        Ok(_) => std::fs::remove_file(path).map_err(|e| Error::io("replacing", path, e)),
        Err(_) => Ok(()),
    }
}

fn create_file(path: &Path) -> Result<File> {
    refuse_symlink(path)?;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                unsafe_path(path, "it is a symlink")
            } else {
                Error::io("creating", path, e)
            }
        })
}

fn make_special(path: &Path, node: &Node, out: &mut RestoreOutcome) -> Result<()> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    refuse_symlink(path)?;
    remove_existing_file(path)?;
    let mode = Mode::from_bits_truncate(node.mode & 0o777);
    let res = match node.kind {
        NodeKind::Symlink => {
            let target = node
                .target
                .as_deref()
                .map(|t| <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(t))
                .ok_or_else(|| {
                    Error::corrupt(format!("symlink {} has no target", path.display()))
                })?;
            std::os::unix::fs::symlink(target, path)
                .map_err(|e| Error::io("creating symlink", path, e))
        }
        NodeKind::Fifo => mknod(path, SFlag::S_IFIFO, mode, 0)
            .map_err(|e| Error::io("creating fifo", path, e.into())),
        NodeKind::CharDevice | NodeKind::BlockDevice => {
            if !nix::unistd::geteuid().is_root() {
                out.warnings.push(format!(
                    "{}: device nodes are only restored as root",
                    path.display()
                ));
                return Ok(());
            }
            let kind = if node.kind == NodeKind::CharDevice {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            mknod(path, kind, mode, node.rdev)
                .map_err(|e| Error::io("creating device", path, e.into()))
        }
        NodeKind::Socket => {
            out.warnings
                .push(format!("{}: sockets are not restored", path.display()));
            return Ok(());
        }
        NodeKind::File | NodeKind::Dir => unreachable!("handled by the caller"),
    };
    res?;
    apply_metadata(path, node, &mut out.warnings);
    Ok(())
}

/// Ownership (as root), permissions, xattrs, then times — in that order, since chown clears
/// setuid bits and every other change touches the times.
pub(crate) fn apply_metadata(path: &Path, node: &Node, warnings: &mut Vec<String>) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let is_link = node.kind == NodeKind::Symlink;
    if nix::unistd::geteuid().is_root()
        && let Err(e) = std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))
    {
        warnings.push(format!("{}: cannot set owner: {e}", path.display()));
    }
    if !is_link {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) =
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode & 0o7777))
        {
            warnings.push(format!("{}: cannot set permissions: {e}", path.display()));
        }
    }
    for x in &node.xattrs {
        let name = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&x.name);
        if let Err(e) = xattr::set(path, name, &x.value) {
            warnings.push(format!(
                "{}: cannot set extended attribute {}: {e}",
                path.display(),
                name.to_string_lossy()
            ));
        }
    }
    let mtime = TimeSpec::new(node.mtime.sec, i64::from(node.mtime.nsec));
    if let Err(e) = utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    ) {
        warnings.push(format!("{}: cannot set times: {e}", path.display()));
    }
}
