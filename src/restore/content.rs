//! File content: chunks grouped by pack, packs read in parallel (coalesced range reads),
//! each chunk decrypted, decompressed and checked against its id before it is written at
//! its offsets into the file's temporary name. The worker with a file's first chunk
//! creates the file (`O_EXCL | O_NOFOLLOW`, see [`Temps`]) and every worker writes through
//! that one descriptor; the one with its last chunk sets its length (a trailing hole),
//! metadata (through the descriptor) and final name. So the per-file system calls run in
//! parallel, not in the walk. Holes are never written, so sparse files stay sparse. A file
//! gets its final name once its last chunk is written; a missing or
//! corrupt chunk fails only the files that need it (their temporary files are removed).
//! Workers stop between packs and range reads once the restore is interrupted.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::entry::{Temps, apply_file_metadata};
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
}

/// A file created under its temporary name.
struct Created {
    tmp: PathBuf,
    file: Arc<File>,
}

impl FileTask {
    /// A file whose content goes to a temporary name next to `path`, then to `path`.
    pub fn new(path: PathBuf, node: Node) -> FileTask {
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
        let (tmp, f) = temps.create_file(&self.path)?;
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
        apply_file_metadata(&file, &self.node, &self.path, &mut w);
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
    files: &'a [FileTask],
    temps: &'a Temps,
    bytes: AtomicU64,
    warnings: Mutex<Vec<String>>,
    progress: &'a dyn Progress,
}

/// A blob to write: its index entry, the file (position in `files`) and the offset.
type Write = (crate::repo::index::Entry, usize, u64);

/// Writes the content of a batch of files, pack by pack in parallel, and completes them.
/// Returns the bytes written; warnings are added to `warnings`.
pub fn restore(
    repo: &Repo,
    index: &Index,
    files: &[FileTask],
    temps: &Temps,
    threads: usize,
    progress: &dyn Progress,
    warnings: &mut Vec<String>,
) -> u64 {
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
        temps,
        bytes: AtomicU64::new(0),
        warnings: Mutex::new(std::mem::take(warnings)),
        progress,
    };
    let work: Mutex<Vec<(u32, Vec<_>)>> = Mutex::new(by_pack.into_iter().rev().collect());
    let span = tracing::Span::current();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let _e = span.enter();
                let mut opener = pack::Opener::default();
                while !temps.cancelled() {
                    let next = work.lock().expect("work lock").pop();
                    let Some((pack_no, blobs)) = next else { break };
                    restore_pack(&cx, pack_no, blobs, &mut opener);
                }
            });
        }
    });
    // Files without chunks, and failed ones, are completed here.
    for f in files {
        if f.remaining.load(Ordering::SeqCst) == 0 || f.is_failed() {
            f.complete(temps, &cx.warnings);
        }
    }
    *warnings = cx.warnings.into_inner().expect("lock");
    cx.bytes.into_inner()
}

fn restore_pack(cx: &ContentCx, pack_no: u32, mut blobs: Vec<Write>, opener: &mut pack::Opener) {
    let ContentCx {
        repo,
        index,
        files,
        temps,
        bytes,
        warnings,
        progress,
    } = cx;
    let (pack_id, _) = index.pack(pack_no);
    let path = pack::path(&pack_id);
    blobs.sort_by_key(|b| (b.0.offset, b.1, b.2));
    // Coalesce nearby blobs into range reads of at most 2 MiB (memory: threads × 2 MiB;
    // OpenDAL reads a local file 2 MiB at a time, so a longer range would be copied).
    let mut i = 0;
    while i < blobs.len() && !temps.cancelled() {
        let start = u64::from(blobs[i].0.offset);
        let mut end = start + u64::from(blobs[i].0.stored_len);
        let mut j = i + 1;
        while j < blobs.len() {
            let (o, l) = (
                u64::from(blobs[j].0.offset),
                u64::from(blobs[j].0.stored_len),
            );
            if o > end + (1 << 20) || o + l - start > 2 << 20 {
                break;
            }
            end = end.max(o + l);
            j += 1;
        }
        let group = &blobs[i..j];
        match repo.storage().read_range(&path, start..end) {
            Err(e) => {
                for (_, fi, _) in group {
                    let f = &files[*fi];
                    f.fail(format!("pack {} unreadable: {e}", pack_id.short()));
                    if f.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                        f.complete(temps, warnings);
                    }
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
                    let reread;
                    let plain = match opener.open(
                        &data[lo..lo + e.stored_len as usize],
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
        i = j;
    }
}
