//! File content: chunks grouped by pack into coalesced range reads, read in parallel by
//! workers that live as long as the restore and take batches of files while the walk goes
//! on; each chunk is decrypted, decompressed and checked against its id before it is
//! written at its offsets into the file's temporary name. The worker with a file's first
//! chunk creates the file (`O_EXCL | O_NOFOLLOW`, see [`Temps`]) and every worker writes
//! through that one descriptor; the one with its last chunk sets its length (a trailing
//! hole), metadata (through the descriptor) and final name. So the per-file system calls
//! run in parallel, not in the walk. Holes are never written, so sparse files stay sparse.
//! A file gets its final name once its last chunk is written; a missing or corrupt chunk
//! fails only the files that need it (their temporary files are removed). Workers stop
//! taking work once the restore is interrupted.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use super::entry::{Inherit, Temps, apply_file_metadata};
use crate::chan;
use crate::progress::Progress;
use crate::repo::pack;
use crate::repo::reader::reread_blob;
use crate::repo::{Index, Node, Piece, Repo};

/// A file being restored.
pub struct FileTask {
    /// Final name.
    pub path: PathBuf,
    /// The snapshot's entry.
    pub node: Node,
    /// The temporary file, once the first chunk (or the completion) created it.
    created: Mutex<Option<Created>>,
    /// (device, inode) of the temporary file, which keeps it when renamed.
    ino: OnceLock<(u64, u64)>,
    remaining: AtomicU64,
    /// Where the last chunk ends: the file's length once written (a shorter file ends in
    /// a hole, made by setting its length).
    end: u64,
    failed: Mutex<Option<String>>,
    done: AtomicBool,
    /// The mode to create the file with when that makes its owner and mode final
    /// ([`Inherit::final_mode`]).
    final_mode: Option<u32>,
}

/// A file created under its temporary name.
struct Created {
    tmp: PathBuf,
    file: Arc<File>,
}

impl FileTask {
    /// A file whose content goes to a temporary name next to `path`, then to `path`;
    /// `inherit`: what a file created in its directory gets, if known.
    pub fn new(path: PathBuf, node: Node, inherit: Option<Inherit>) -> FileTask {
        let (mut chunks, mut at, mut end) = (0, 0u64, 0);
        for p in &node.content {
            at = at.saturating_add(p.len());
            if matches!(p, Piece::Chunk(..)) {
                chunks += 1;
                end = at;
            }
        }
        let task = FileTask {
            remaining: AtomicU64::new(chunks),
            end,
            path,
            created: Mutex::new(None),
            ino: OnceLock::new(),
            failed: Mutex::new(None),
            done: AtomicBool::new(false),
            final_mode: inherit.and_then(|i| i.final_mode(&node)),
            node,
        };
        if at > task.node.size {
            task.fail(format!(
                "the snapshot lists {at} bytes of content for a file of {} bytes",
                task.node.size
            ));
        }
        task
    }

    /// Chunks of the file.
    pub fn chunks(&self) -> u64 {
        self.remaining.load(Ordering::SeqCst)
    }

    /// (device, inode) of the file this restore made, once made.
    pub fn ino(&self) -> Option<(u64, u64)> {
        self.ino.get().copied()
    }

    /// The temporary file, created (`O_EXCL | O_NOFOLLOW`, see [`Temps`]) on first use.
    fn file(&self, temps: &Temps) -> std::result::Result<Arc<File>, String> {
        let mut c = self.created.lock().expect("lock");
        if let Some(c) = &*c {
            return Ok(c.file.clone());
        }
        let (tmp, f) = temps.create_file(&self.path, self.final_mode.unwrap_or(0o600))?;
        // Only a hard link's first file is looked at: its later links check its inode.
        if self.node.links > 1 {
            match f.metadata() {
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    let _ = self.ino.set((m.dev(), m.ino()));
                }
                Err(e) => {
                    temps.discard(&tmp);
                    return Err(format!("cannot look at the new file: {e}"));
                }
            }
        }
        let file = Arc::new(f);
        *c = Some(Created {
            tmp,
            file: file.clone(),
        });
        Ok(file)
    }

    fn fail(&self, reason: String) {
        let mut f = self.failed.lock().expect("lock");
        if f.is_none() {
            tracing::debug!("{}: {reason}", self.path.display());
            *f = Some(reason);
        }
    }

    fn is_failed(&self) -> bool {
        self.failed.lock().expect("lock").is_some()
    }

    /// Called once all chunks are written (or the file failed): the length (a trailing
    /// hole), metadata, then the final name. An interrupted restore completes nothing more.
    fn complete(&self, temps: &Temps, warnings: &Mutex<Vec<String>>) {
        if temps.cancelled() || self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        if !self.is_failed()
            && let Err(reason) = self.file(temps)
        {
            self.fail(reason);
        }
        let Some(Created { tmp, file }) = self.created.lock().expect("lock").take() else {
            return;
        };
        if self.is_failed() {
            drop(file);
            temps.discard(&tmp);
            return;
        }
        // The file was made empty (`O_EXCL`) and holds exactly the chunks written, so its
        // length is where the last one ends; content past the size was refused in `new`.
        if self.end < self.node.size
            && let Err(e) = file.set_len(self.node.size)
        {
            self.fail(format!("cannot size the file: {e}"));
            temps.discard(&tmp);
            return;
        }
        let mut w = Vec::new();
        apply_file_metadata(
            &file,
            &self.node,
            &self.path,
            &mut w,
            self.final_mode.is_some(),
        );
        drop(file);
        if !w.is_empty() {
            warnings.lock().expect("lock").extend(w);
        }
        if let Err(reason) = temps.place(&tmp, &self.path) {
            self.fail(reason);
        }
    }

    /// The failure, if the file failed.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().expect("lock").clone()
    }
}

/// What the content workers share.
struct ContentCx<'a> {
    repo: &'a Repo,
    index: &'a Index,
    temps: &'a Temps,
    bytes: AtomicU64,
    warnings: Mutex<Vec<String>>,
    progress: &'a dyn Progress,
    /// A worker panicked: nothing waits for a batch any more (the panic surfaces when the
    /// workers are joined, instead of a hang).
    panicked: AtomicBool,
}

/// A blob to write: its index entry, the file (position in the batch) and the offset.
type Write = (crate::repo::index::Entry, usize, u64);

/// Files handed to the workers together: memory stays bounded by the batch's size.
pub struct Batch {
    /// The files, in the order they were given.
    pub files: Vec<FileTask>,
    /// Work items not finished yet.
    left: Mutex<usize>,
    finished: Condvar,
}

/// One work item: a range read of a pack (`pack_no`, its blobs), or a file without chunks.
enum Work {
    Range(u32, Vec<Write>),
    Empty(usize),
}

/// The content workers of one restore, taking batches while the walk goes on.
pub struct Workers<'a> {
    cx: &'a ContentCx<'a>,
    queue: chan::Sender<(Arc<Batch>, Work)>,
}

/// Runs `body` with `threads` content workers; returns what it returned and the bytes
/// written. Warnings are added to `warnings`.
pub fn with_workers<R>(
    repo: &Repo,
    index: &Index,
    temps: &Temps,
    threads: usize,
    progress: &dyn Progress,
    warnings: &mut Vec<String>,
    body: impl FnOnce(&Workers<'_>) -> R,
) -> (R, u64) {
    let cx = ContentCx {
        repo,
        index,
        temps,
        bytes: AtomicU64::new(0),
        warnings: Mutex::new(std::mem::take(warnings)),
        progress,
        panicked: AtomicBool::new(false),
    };
    let (tx, rx) = chan::unbounded::<(Arc<Batch>, Work)>();
    let span = tracing::Span::current();
    let r = std::thread::scope(|s| {
        for _ in 0..threads {
            let (rx, span, cx) = (rx.clone(), &span, &cx);
            s.spawn(move || {
                let _e = span.enter();
                let _alive = Alive(&cx.panicked);
                let (mut opener, mut buf) = (pack::Opener::default(), Vec::new());
                while let Ok((batch, work)) = rx.recv() {
                    let _done = Finish(&batch);
                    if cx.temps.cancelled() {
                        continue;
                    }
                    match work {
                        Work::Range(pack_no, group) => {
                            let bufs = (&mut opener, &mut buf);
                            restore_range(cx, &batch.files, pack_no, &group, bufs)
                        }
                        Work::Empty(fi) => batch.files[fi].complete(cx.temps, &cx.warnings),
                    }
                }
            });
        }
        drop(rx);
        body(&Workers { cx: &cx, queue: tx })
    });
    *warnings = cx.warnings.into_inner().expect("lock");
    (r, cx.bytes.into_inner())
}

/// Notes that a worker panicked, when it does.
struct Alive<'a>(&'a AtomicBool);

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Counts a work item of a batch finished, even if its worker panicked.
struct Finish<'a>(&'a Batch);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let mut left = self.0.left.lock().unwrap_or_else(|e| e.into_inner());
        *left -= 1;
        if *left == 0 {
            self.0.finished.notify_all();
        }
    }
}

impl Workers<'_> {
    /// Queues the content of `files`, read range by range in parallel (a batch of small
    /// files often lies in one pack). The files are completed as their last chunks are
    /// written; [`Workers::finish`] waits for that.
    pub fn submit(&self, files: Vec<FileTask>) -> Arc<Batch> {
        let mut by_pack: BTreeMap<u32, Vec<Write>> = BTreeMap::new();
        let mut empty = Vec::new();
        for (fi, f) in files.iter().enumerate() {
            let mut offset = 0u64;
            for p in &f.node.content {
                if let Piece::Chunk(id, len) = p {
                    match self.cx.index.get(id) {
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
            if f.chunks() == 0 {
                empty.push(Work::Empty(fi));
            }
        }
        let mut work = empty;
        for (pack_no, blobs) in by_pack {
            work.extend(coalesce(blobs).map(|group| Work::Range(pack_no, group)));
        }
        let batch = Arc::new(Batch {
            files,
            left: Mutex::new(work.len()),
            finished: Condvar::new(),
        });
        for w in work {
            // The receivers live as long as `self`.
            let _ = self.queue.send((batch.clone(), w));
        }
        batch
    }

    /// Waits until the batch's content is written, then completes its failed files (their
    /// temporary files are removed).
    pub fn finish(&self, batch: &Batch) {
        let mut left = batch.left.lock().unwrap_or_else(|e| e.into_inner());
        while *left > 0 && !self.cx.panicked.load(Ordering::SeqCst) {
            let wait = std::time::Duration::from_millis(100);
            left = match batch.finished.wait_timeout(left, wait) {
                Ok((l, _)) => l,
                Err(e) => e.into_inner().0,
            };
        }
        drop(left);
        for f in &batch.files {
            if f.is_failed() {
                f.complete(self.cx.temps, &self.cx.warnings);
            }
        }
    }
}

/// The blobs of one pack in groups read with one range read each: nearby blobs coalesced
/// into ranges of at most 2 MiB (memory: one read buffer of at most 2 MiB per worker, plus
/// the largest blob).
fn coalesce(mut blobs: Vec<Write>) -> impl Iterator<Item = Vec<Write>> {
    blobs.sort_by_key(|b| (b.0.offset, b.1, b.2));
    let mut blobs = blobs.into_iter().peekable();
    std::iter::from_fn(move || {
        let first = blobs.next()?;
        let start = u64::from(first.0.offset);
        let mut end = start + u64::from(first.0.stored_len);
        let mut group = vec![first];
        while let Some(next) = blobs.peek() {
            let (o, l) = (u64::from(next.0.offset), u64::from(next.0.stored_len));
            if o > end + (1 << 20) || o + l - start > 2 << 20 {
                break;
            }
            end = end.max(o + l);
            group.extend(blobs.next());
        }
        Some(group)
    })
}

/// Reads one group of blobs of pack `pack_no` and writes them into their files, with the
/// worker's opener and read buffer.
fn restore_range(
    cx: &ContentCx,
    files: &[FileTask],
    pack_no: u32,
    group: &[Write],
    (opener, data): (&mut pack::Opener, &mut Vec<u8>),
) {
    let ContentCx {
        repo,
        index,
        temps,
        bytes,
        warnings,
        progress,
        ..
    } = cx;
    let (pack_id, _) = index.pack(pack_no);
    let path = pack::path(&pack_id);
    let start = u64::from(group[0].0.offset);
    let end = group
        .iter()
        .map(|b| u64::from(b.0.offset) + u64::from(b.0.stored_len))
        .max()
        .unwrap_or(start);
    match repo.storage().read_range_into(&path, start..end, data) {
        Err(e) => {
            for (_, fi, _) in group {
                let f = &files[*fi];
                f.fail(format!("pack {} unreadable: {e}", pack_id.short()));
                if f.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                    f.complete(temps, warnings);
                }
            }
        }
        Ok(()) => {
            let mut k = 0;
            while k < group.len() {
                let e = group[k].0;
                let mut m = k;
                while m < group.len() && group[m].0.id == e.id {
                    m += 1;
                }
                let lo = (u64::from(e.offset) - start) as usize;
                let reread;
                let plain = match opener.open_in_place(
                    &mut data[lo..lo + e.stored_len as usize],
                    &e.header(),
                    repo.crypto(),
                ) {
                    Ok(p) => Ok(p),
                    Err(err) => match reread_blob(repo, &path, &e) {
                        Ok(p) => {
                            reread = p;
                            Ok(&reread[..])
                        }
                        Err(_) => Err(err),
                    },
                };
                for (_, fi, off) in &group[k..m] {
                    let f = &files[*fi];
                    match &plain {
                        Err(err) => f.fail(format!(
                            "chunk {} in pack {} is corrupt: {err}",
                            e.id.short(),
                            pack_id.short()
                        )),
                        Ok(p) if !f.is_failed() => {
                            match f.file(temps).and_then(|file| {
                                file.write_all_at(p, *off)
                                    .map_err(|e| format!("cannot write the file: {e}"))
                            }) {
                                Err(reason) => f.fail(reason),
                                Ok(()) => {
                                    bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                                    progress.bytes(p.len() as u64);
                                }
                            }
                        }
                        Ok(_) => {}
                    }
                    if f.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                        f.complete(temps, warnings);
                    }
                }
                k = m;
            }
        }
    }
}
