//! One backup run's way from bytes to stored blobs, shared by every source.
//!
//! A source hands content to [`Ingest::store_stream`] (or [`Ingest::append_stream`] for a
//! file's data extents) and directory listings to [`Ingest::store_tree`]; the ingest chunks,
//! hashes and deduplicates on the caller's thread, and its sealer threads compress, seal and
//! pack new blobs and upload full packs:
//! ```text
//! source threads ──chunk, hash, dedup──▶ bounded queue ──▶ sealers (zstd, seal, pack, upload)
//! ```
//! Sources may call it from several threads at once (the file source's readers do).
//! [`run`] starts the sealers, lets the source work, then stores the last partial pack and
//! returns the packs written: the caller commits them ([`crate::backup::commit`]).
//! A failure anywhere is kept (the first one wins), later work is dropped, and [`run`]
//! returns it: no snapshot refers to a half-stored run.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::chan::{Receiver, Sender, bounded};

use crate::cancel::Cancel;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::{REUSE_MAX, compress};
use crate::progress::Progress;
use crate::repo::lock::LockGuard;
use crate::repo::pack::FinishedPack;
use crate::repo::pack::Packer;
use crate::repo::pack::{self, BlobKind};
use crate::repo::{ContentList, Id, Index, IndexPack, Piece, Repo, Tree};

/// How a stream is cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunking {
    /// Content-defined (FastCDC with the repository's parameters): an insertion changes
    /// only the chunks around it. For files and streams.
    Content,
    /// Blocks of this many bytes, positional: piece `i` always covers bytes
    /// `i × size .. (i + 1) × size` (the last may be shorter), and an all-zero block is a
    /// hole. For disk images, whose changed-block incrementals replace pieces by position.
    Fixed(u32),
}

/// Content pieces above which a file's list is stored in content-list blobs
/// ([`Piece::List`]) instead of inline in its tree.
pub const INLINE_PIECES: usize = 512;

/// Average pieces per content-list blob (content-defined lists); fixed lists hold exactly
/// this many, so list `k` covers blocks `k × LIST_PIECES ..`.
pub const LIST_PIECES: usize = 1024;

/// Counters of one run; sources add to the ones they know of.
#[derive(Debug, Default)]
pub struct Counters {
    /// Files (or streams) in the snapshot.
    pub files: AtomicU64,
    /// Directories in the snapshot.
    pub dirs: AtomicU64,
    /// Files read.
    pub files_read: AtomicU64,
    /// Files taken unchanged from the parent.
    pub files_unchanged: AtomicU64,
    /// Logical bytes of everything in the snapshot.
    pub bytes_total: AtomicU64,
    /// Bytes read from the source.
    pub bytes_read: AtomicU64,
    /// Plaintext bytes of chunks new to the repository.
    pub bytes_new: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a run stored, for the commit.
pub struct Stored {
    /// Packs written (uploaded and read back), for the index.
    pub packs: Vec<IndexPack>,
    /// The run's counters.
    pub counters: Counters,
    /// Warnings: each makes the backup partial.
    pub warnings: Vec<String>,
    /// What was left out by design, for the operator.
    pub notes: Vec<String>,
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// zstd level (0 disables compression).
    pub compression: i32,
    /// Sealer threads.
    pub threads: usize,
    /// Stops the run once cancelled.
    pub cancel: Cancel,
}

/// The shared sink of one backup run: dedup set, packer, sealers, upload slots, counters.
pub struct Ingest<'a> {
    repo: &'a Repo,
    index: &'a Index,
    /// Blobs new in this run (queued, packed or uploaded): each is stored once.
    added: Mutex<HashSet<Id>>,
    blobs: Sender<Blob>,
    packing: &'a Packing<'a>,
    /// Counters; sources add what they count.
    pub counters: Counters,
    warnings: Mutex<Vec<String>>,
    notes: Mutex<Vec<String>>,
    progress: &'a dyn Progress,
    cancel: Cancel,
}

/// What the sealers share with the ingest.
struct Packing<'a> {
    repo: &'a Repo,
    packer: Mutex<Packer>,
    /// One token per pack that may upload at once (`Storage::write_concurrency`).
    upload_slots: (Receiver<()>, Sender<()>),
    written: Mutex<Vec<IndexPack>>,
    /// Buffers of sealed chunks, for the next ones: reused memory costs no page faults.
    spare_chunks: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
    error: Mutex<Option<Error>>,
    /// The source failed: nothing more is stored.
    aborted: AtomicBool,
    lock: &'a LockGuard,
    compression: i32,
    progress: &'a dyn Progress,
}

/// A blob on its way to a pack.
struct Blob {
    kind: BlobKind,
    id: Id,
    data: Vec<u8>,
}

/// Runs `source` with an ingest into `repo` (whose blobs `index` lists), then stores the
/// last pack. Returns what `source` returned and what was stored, or the first failure.
pub fn run<T>(
    repo: &Repo,
    index: &Index,
    lock: &LockGuard,
    settings: Settings,
    progress: &dyn Progress,
    source: impl FnOnce(&Ingest) -> Result<T>,
) -> Result<(T, Stored)> {
    let uploaders = repo.storage().write_concurrency();
    let packing = Packing {
        repo,
        packer: Mutex::new(Packer::new(repo.config().pack_size as usize)),
        upload_slots: {
            let n = uploaders;
            let (tx, rx) = bounded(n);
            for _ in 0..n {
                tx.send(()).expect("slot channel");
            }
            (rx, tx)
        },
        written: Mutex::new(Vec::new()),
        // One per chunk in flight: queued, and being sealed.
        spare_chunks: bounded(2 * settings.threads.max(1)),
        error: Mutex::new(None),
        aborted: AtomicBool::new(false),
        lock,
        compression: settings.compression,
        progress,
    };
    let threads = settings.threads.max(1);
    let cancel = settings.cancel.clone();
    let (blob_tx, blob_rx) = bounded::<Blob>(threads);
    // Every pack sent holds an upload slot, so sending never blocks.
    let (pack_tx, pack_rx) = bounded::<FinishedPack>(uploaders);
    let ingest = Ingest {
        repo,
        index,
        added: Mutex::new(HashSet::new()),
        blobs: blob_tx,
        packing: &packing,
        counters: Counters::default(),
        warnings: Mutex::new(Vec::new()),
        notes: Mutex::new(Vec::new()),
        progress,
        cancel: settings.cancel.clone(),
    };
    // Sealers log in the job's span (its kind and run id).
    let span = tracing::Span::current();
    let result = std::thread::scope(|s| {
        // Uploaders store packs while the sealers go on compressing the next ones.
        let uploaders: Vec<_> = (0..uploaders)
            .map(|_| {
                let (rx, p, span) = (pack_rx.clone(), &packing, &span);
                s.spawn(move || {
                    let _e = span.enter();
                    for pack in rx {
                        p.upload(pack);
                        p.upload_slots.1.send(()).expect("slot channel");
                    }
                })
            })
            .collect();
        drop(pack_rx);
        let sealers: Vec<_> = (0..threads)
            .map(|_| {
                let (rx, tx, p, span) = (blob_rx.clone(), pack_tx.clone(), &packing, &span);
                s.spawn(move || {
                    let _e = span.enter();
                    p.seal(rx, tx)
                })
            })
            .collect();
        drop(blob_rx);
        let result = source(&ingest);
        if result.is_err() {
            packing.aborted.store(true, Ordering::Relaxed);
        }
        let Ingest {
            blobs,
            counters,
            warnings,
            notes,
            ..
        } = ingest;
        drop(blobs);
        for h in sealers {
            let _ = h.join();
        }
        let last = packing.packer.lock().expect("packer lock").take();
        if !last.is_empty() {
            packing.upload_slots.0.recv().expect("slot channel");
            let _ = pack_tx.send(last.finish(repo.crypto()));
        }
        drop(pack_tx);
        for h in uploaders {
            let _ = h.join();
        }
        (result, counters, warnings, notes)
    });
    let (result, counters, warnings, notes) = result;
    cancel.check()?;
    // A storage failure is the cause of whatever the source then reported.
    if let Some(e) = packing.error.into_inner().expect("error lock") {
        // A process frozen past its lock's expiry may find its temporary files pruned:
        // then the lost lock is the cause to report.
        lock.check()?;
        return Err(e);
    }
    let value = result?;
    Ok((
        value,
        Stored {
            packs: packing.written.into_inner().expect("packs lock"),
            counters,
            warnings: warnings.into_inner().expect("warnings lock"),
            notes: notes.into_inner().expect("notes lock"),
        },
    ))
}

impl Ingest<'_> {
    /// The repository written to.
    pub fn repo(&self) -> &Repo {
        self.repo
    }

    /// The index of what the repository held when the run started.
    pub fn index(&self) -> &Index {
        self.index
    }

    /// Progress reporting of the run.
    pub fn progress(&self) -> &dyn Progress {
        self.progress
    }

    /// Whether the run has failed or was cancelled: sources stop early.
    pub fn failed(&self) -> bool {
        self.packing.failed() || self.cancel.is_cancelled()
    }

    /// The run's cancellation token.
    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// Records a failure; the run returns the first one.
    pub fn fail(&self, e: Error) {
        self.packing.fail(e)
    }

    /// Records a warning (the backup is partial); the caller prints the outcome's warnings,
    /// so it is logged only at info level here.
    pub fn warn(&self, msg: String) {
        tracing::info!("warning: {msg}");
        self.warnings.lock().expect("warnings lock").push(msg);
    }

    /// Records a note: something left out by design.
    pub fn note(&self, msg: String) {
        tracing::info!("note: {msg}");
        self.notes.lock().expect("notes lock").push(msg);
    }

    /// Whether `id` must be stored: not in the repository and not yet queued by this run.
    fn claim(&self, id: Id) -> bool {
        !self.index.contains(&id) && self.added.lock().expect("added lock").insert(id)
    }

    /// A copy of `chunk` in a reused buffer.
    fn copy(&self, chunk: &[u8]) -> Vec<u8> {
        let mut data = self.packing.spare_chunks.1.try_recv().unwrap_or_default();
        data.clear();
        crate::pipeline::reserve_reused(&mut data, chunk.len());
        data.extend_from_slice(chunk);
        data
    }

    fn send(&self, kind: BlobKind, id: Id, data: Vec<u8>) -> Result<()> {
        self.blobs
            .send(Blob { kind, id, data })
            .map_err(|_| Error::new(ErrorKind::Io, "backup aborted"))
    }

    /// Stores everything `r` yields; returns its content (stored lists for a long one).
    pub fn store_stream(&self, r: impl Read, chunking: Chunking) -> Result<(Vec<Piece>, u64)> {
        let mut pieces = Vec::new();
        let mut buf = Vec::new();
        let size = self.append_stream(r, u64::MAX, chunking, &mut buf, &mut pieces)?;
        Ok((self.finish_content(pieces, chunking)?, size))
    }

    /// Stores up to `limit` bytes of `r`, appending their pieces to `pieces`; returns the
    /// bytes read. `buf` is the caller's reusable read buffer. For fixed-size chunking,
    /// `pieces` must end on a block boundary.
    pub fn append_stream(
        &self,
        r: impl Read,
        limit: u64,
        chunking: Chunking,
        buf: &mut Vec<u8>,
        pieces: &mut Vec<Piece>,
    ) -> Result<u64> {
        let chunk = |chunk: &[u8]| -> Result<()> {
            let n = chunk.len() as u32;
            self.progress.bytes(u64::from(n));
            if chunking != Chunking::Content && chunk.iter().all(|&b| b == 0) {
                pieces.push(Piece::Hole(u64::from(n)));
                return Ok(());
            }
            let id = self.repo.crypto().chunk_id(chunk);
            pieces.push(Piece::Chunk(id, n));
            if self.claim(id) {
                Counters::add(&self.counters.bytes_new, u64::from(n));
                self.send(BlobKind::Data, id, self.copy(chunk))?;
            }
            Ok(())
        };
        let read = match chunking {
            Chunking::Content => self.repo.chunker().chunk_reader(r, limit, buf, chunk)?,
            Chunking::Fixed(size) => fixed_blocks(r, limit, size as usize, buf, chunk)?,
        };
        Counters::add(&self.counters.bytes_read, read);
        Ok(read)
    }

    /// A file's finished content: inline when short, else stored as content lists, cut
    /// where the content decides (content-defined) or every [`LIST_PIECES`] pieces
    /// (fixed), so an unchanged stretch of a changed file stores no list again.
    pub fn finish_content(&self, pieces: Vec<Piece>, chunking: Chunking) -> Result<Vec<Piece>> {
        if pieces.len() <= INLINE_PIECES {
            return Ok(pieces);
        }
        let mut out = Vec::new();
        let mut list = Vec::with_capacity(LIST_PIECES);
        let n = pieces.len();
        for (i, p) in pieces.into_iter().enumerate() {
            let cut = match (&p, chunking) {
                (_, Chunking::Fixed(_)) => list.len() + 1 == LIST_PIECES,
                // About one boundary per LIST_PIECES chunks, decided by the chunk alone;
                // at most four times that many per list.
                (Piece::Chunk(id, _), Chunking::Content) => {
                    (u16::from_le_bytes([id.0[0], id.0[1]]) as usize).is_multiple_of(LIST_PIECES)
                        || list.len() + 1 == 4 * LIST_PIECES
                }
                _ => list.len() + 1 == 4 * LIST_PIECES,
            };
            list.push(p);
            if cut || i + 1 == n {
                out.push(self.store_list(std::mem::take(&mut list))?);
            }
        }
        Ok(out)
    }

    fn store_list(&self, pieces: Vec<Piece>) -> Result<Piece> {
        let list = ContentList { pieces };
        Ok(Piece::List(self.store_metadata(list.encode())?, list.len()))
    }

    /// Stores a directory listing; returns its id.
    pub fn store_tree(&self, tree: &Tree) -> Result<Id> {
        let data = tree.encode();
        if data.len() > pack::MAX_BLOB_LEN as usize {
            return Err(Error::config(
                "a directory has too many entries for one tree blob",
            ));
        }
        self.store_metadata(data)
    }

    /// Stores a tree-kind blob (a listing or a content list) unless it is stored already.
    fn store_metadata(&self, data: Vec<u8>) -> Result<Id> {
        let id = self.repo.crypto().chunk_id(&data);
        if self.claim(id) {
            self.send(BlobKind::Tree, id, data)?;
        }
        Ok(id)
    }
}

/// Cuts up to `limit` bytes of `r` into blocks of `size` bytes (the last may be shorter).
fn fixed_blocks(
    mut r: impl Read,
    limit: u64,
    size: usize,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    buf.resize(size, 0);
    let mut total = 0u64;
    while total < limit {
        let want = (limit - total).min(size as u64) as usize;
        let mut filled = 0;
        while filled < want {
            match r.read(&mut buf[filled..want]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::new(ErrorKind::Io, "reading").with_source(e)),
            }
        }
        if filled == 0 {
            break;
        }
        f(&buf[..filled])?;
        total += filled as u64;
        if filled < want {
            break;
        }
    }
    Ok(total)
}

impl Packing<'_> {
    fn fail(&self, e: Error) {
        let mut slot = self.error.lock().expect("error lock");
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    fn failed(&self) -> bool {
        self.aborted.load(Ordering::Relaxed) || self.error.lock().expect("error lock").is_some()
    }

    /// A sealer: compresses and seals blobs into the shared packer; the one that fills it
    /// hands it to the uploaders.
    fn seal(&self, blobs: Receiver<Blob>, packs: Sender<FinishedPack>) {
        let crypto = self.repo.crypto();
        // This thread's compression buffer: reused, it costs no fresh pages per blob.
        let mut z = Vec::new();
        for b in blobs {
            if self.failed() {
                continue;
            }
            let compressed = compress::compress_into(&b.data, self.compression, &mut z);
            let body = if compressed { &z[..] } else { &b.data[..] };
            let mut packer = self.packer.lock().expect("packer lock");
            packer.seal((b.kind, b.id), b.data.len(), compressed, body, crypto);
            if b.data.capacity() <= REUSE_MAX {
                let _ = self.spare_chunks.0.try_send(b.data);
            }
            if !packer.is_full() {
                continue;
            }
            // The full packer stays locked until an upload slot frees up: the other sealers
            // wait with one sealed blob each, so at most one pack per slot plus this one is
            // in memory, and a pack never grows past its target by more than one blob.
            self.upload_slots.0.recv().expect("slot channel");
            let full = packer.take();
            drop(packer);
            let _ = packs.send(full.finish(crypto));
        }
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
        match self.repo.store_pack(&p) {
            Ok(record) => {
                crate::failpoint::hit("after-pack-upload");
                self.written.lock().expect("packs lock").push(record);
                self.progress.items(1);
            }
            Err(e) => self.fail(e.context(format!("storing pack {}", p.id.short()))),
        }
    }
}
