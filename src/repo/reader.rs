//! One file's content as an ordered [`std::io::Read`]: chunks and holes in file order, the
//! pack ranges ahead of the reading position fetched in parallel, every chunk checked
//! against its id before a byte of it is handed out.
//!
//! Planning runs in the reader's thread, as far ahead as the window allows: content lists
//! ([`Piece::List`]) are expanded one at a time as the plan reaches them, so a file of
//! millions of chunks never has its whole piece list in memory. Consecutive chunks in the
//! same pack become one range read (a *job*, at most [`JOB_BYTES`] of pack); jobs go to a
//! small pool of fetch threads, and their results come back in plan order. Memory is
//! bounded by the window: at most [`WINDOW_BYTES`] of planned chunk plaintext and
//! [`WINDOW_JOBS`] jobs are in flight or buffered, whatever the file's size. Holes are
//! never fetched; they read as zeros.
//!
//! A chunk that fails its check is read again on its own (twice at most) before it counts
//! as corrupt: a flipped bit in transfer is not damage in the repository. Corruption and
//! missing chunks are reported as an error naming the chunk and its pack; the bytes handed
//! out before it were all verified. Dropping the reader stops its fetch threads.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};

use super::index::Entry;
use super::{Index, Piece, Repo, pack};
use crate::cancel::Cancel;
use crate::error::{Error, ErrorKind, Result};

/// Pack bytes one job reads at most (a chunk larger than this is a job of its own).
pub const JOB_BYTES: u64 = 4 << 20;
/// Chunk plaintext planned ahead of the reading position at most.
pub const WINDOW_BYTES: u64 = 32 << 20;
/// Jobs planned ahead of the reading position at most.
pub const WINDOW_JOBS: usize = 16;
/// Gap between two blobs of a pack that one range read still covers.
const GAP: u64 = 256 << 10;
/// Zeros handed out for holes, a block at a time.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// What a job sends back: the plaintext of its blobs, in its order.
type Reply = Result<Vec<Vec<u8>>>;

/// One range read: blobs of one pack, in file order.
struct Job {
    pack: u32,
    start: u64,
    end: u64,
    blobs: Vec<Entry>,
    plain: u64,
    reply: Sender<Reply>,
}

/// What comes next in file order.
enum Pending {
    Hole(u64),
    Chunks(Receiver<Reply>, u64),
    Failed(Error),
}

/// Where the plan is in a file's pieces.
struct Plan {
    pieces: std::vec::IntoIter<Piece>,
    /// The expanded content list being planned, if any.
    list: Option<std::vec::IntoIter<Piece>>,
    /// The job being built (dispatched once the next chunk does not fit it).
    open: Option<(Job, Receiver<Reply>)>,
    done: bool,
}

/// An ordered reader over one file's content; see the module docs.
pub struct ContentReader {
    repo: Repo,
    index: Arc<Index>,
    plan: Plan,
    pending: VecDeque<Pending>,
    /// Planned chunk plaintext not yet handed out.
    ahead: u64,
    jobs: Option<Sender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Set when the reader is done with: queued jobs are dropped unread.
    stopped: Arc<AtomicBool>,
    /// The current chunk and how much of it was handed out.
    chunks: VecDeque<Vec<u8>>,
    pos: usize,
    /// Zeros of the current hole still to hand out.
    hole: u64,
    /// Bytes handed out so far.
    read: u64,
    failed: bool,
    /// Chunk buffers handed out and given back, for the fetch threads to fill again.
    pool: Arc<Pool>,
}

/// Buffers of chunks already handed out, reused by the fetch threads: a fresh buffer per
/// chunk costs a page fault per 4 KiB of content (a third of a restore's time). Holds at
/// most twice [`WINDOW_BYTES`] of capacity (what is in flight, and what is being returned).
#[derive(Default)]
struct Pool(std::sync::Mutex<(Vec<Vec<u8>>, u64)>);

impl Pool {
    /// A buffer of at least `len` bytes' capacity, reused if one is free.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut p = self.0.lock().expect("pool lock");
        match p.0.iter().position(|b| b.capacity() >= len) {
            Some(i) => {
                let b = p.0.swap_remove(i);
                p.1 -= b.capacity() as u64;
                b
            }
            // Sizes rounded up, so that the buffer fits the chunks that come after.
            None => Vec::with_capacity(len.next_power_of_two()),
        }
    }

    /// Keeps `buf` for reuse, unless the pool is full.
    fn give_back(&self, buf: Vec<u8>) {
        let mut p = self.0.lock().expect("pool lock");
        if p.1 + buf.capacity() as u64 <= 2 * WINDOW_BYTES {
            p.1 += buf.capacity() as u64;
            p.0.push(buf);
        }
    }
}

impl Repo {
    /// An ordered reader over the content `pieces` of a file, fetching with `threads`
    /// parallel range reads (0: a default of 4); once `cancel` is cancelled, reading fails
    /// with its [`ErrorKind::Interrupted`] error.
    pub fn content_reader(
        &self,
        index: Arc<Index>,
        pieces: Vec<Piece>,
        threads: usize,
        cancel: &Cancel,
    ) -> ContentReader {
        ContentReader::new(self.clone(), index, pieces, threads, cancel)
    }
}

impl ContentReader {
    fn new(
        repo: Repo,
        index: Arc<Index>,
        pieces: Vec<Piece>,
        threads: usize,
        cancel: &Cancel,
    ) -> ContentReader {
        let threads = if threads == 0 { 4 } else { threads };
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let stopped = Arc::new(AtomicBool::new(false));
        let pool = Arc::new(Pool::default());
        // Fetch threads log in the reader's span (the job's kind and run id).
        let span = tracing::Span::current();
        let workers = (0..threads)
            .map(|_| {
                let (repo, index, rx) = (repo.clone(), index.clone(), rx.clone());
                let (stopped, cancel, span) = (stopped.clone(), cancel.clone(), span.clone());
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let _e = span.enter();
                    let mut opener = pack::Opener::default();
                    for job in rx {
                        if stopped.load(Ordering::Relaxed) {
                            continue;
                        }
                        if let Err(e) = cancel.check() {
                            let _ = job.reply.send(Err(e));
                            continue;
                        }
                        let res = fetch(&repo, &index, &job, &mut opener, &pool);
                        let _ = job.reply.send(res);
                    }
                })
            })
            .collect();
        ContentReader {
            repo,
            index,
            plan: Plan {
                pieces: pieces.into_iter(),
                list: None,
                open: None,
                done: false,
            },
            pending: VecDeque::new(),
            ahead: 0,
            jobs: Some(tx),
            workers,
            stopped,
            chunks: VecDeque::new(),
            pos: 0,
            hole: 0,
            read: 0,
            failed: false,
            pool,
        }
    }

    /// Bytes handed out so far.
    pub fn position(&self) -> u64 {
        self.read
    }

    /// The next piece of the plan, expanding content lists as they come.
    fn next_piece(&mut self) -> Option<Result<Piece>> {
        loop {
            if let Some(l) = &mut self.plan.list {
                if let Some(p) = l.next() {
                    return Some(Ok(p));
                }
                self.plan.list = None;
            }
            match self.plan.pieces.next()? {
                Piece::List(id, len) => match self.repo.load_content_list(&self.index, &id, len) {
                    Ok(l) => self.plan.list = Some(l.pieces.into_iter()),
                    Err(e) => return Some(Err(e)),
                },
                p => return Some(Ok(p)),
            }
        }
    }

    fn dispatch_open(&mut self) {
        if let Some((job, rx)) = self.plan.open.take() {
            let plain = job.plain;
            if let Some(tx) = &self.jobs {
                let _ = tx.send(job);
            }
            self.pending.push_back(Pending::Chunks(rx, plain));
        }
    }

    /// Plans ahead until the window is full or the content is planned.
    fn plan_ahead(&mut self) {
        let jobs = |s: &Self| {
            s.pending
                .iter()
                .filter(|p| matches!(p, Pending::Chunks(..)))
                .count()
        };
        while !self.plan.done && self.ahead < WINDOW_BYTES && jobs(self) < WINDOW_JOBS {
            let Some(piece) = self.next_piece() else {
                self.plan.done = true;
                break;
            };
            match piece {
                Err(e) => {
                    self.dispatch_open();
                    self.pending.push_back(Pending::Failed(e));
                    self.plan.done = true;
                }
                Ok(Piece::Hole(n)) => {
                    self.dispatch_open();
                    self.pending.push_back(Pending::Hole(n));
                }
                Ok(Piece::List(..)) => {
                    self.dispatch_open();
                    self.pending.push_back(Pending::Failed(Error::corrupt(
                        "content list nests another list",
                    )));
                    self.plan.done = true;
                }
                Ok(Piece::Chunk(id, len)) => {
                    let found = self.index.get(&id).copied();
                    let e = match found {
                        Some(e) if e.raw_len == len => e,
                        Some(e) => {
                            self.dispatch_open();
                            self.pending.push_back(Pending::Failed(Error::corrupt(format!(
                                "chunk {} is {} bytes in the index, not the {len} the file says",
                                id.short(),
                                e.raw_len
                            ))));
                            self.plan.done = true;
                            continue;
                        }
                        None => {
                            self.dispatch_open();
                            self.pending
                                .push_back(Pending::Failed(Error::corrupt(format!(
                                    "chunk {} is missing from the repository",
                                    id.short()
                                ))));
                            self.plan.done = true;
                            continue;
                        }
                    };
                    self.ahead += u64::from(len);
                    let (o, l) = (u64::from(e.offset), u64::from(e.stored_len));
                    if let Some((job, _)) = &mut self.plan.open {
                        let (s, t) = (job.start.min(o), job.end.max(o + l));
                        if job.pack == e.pack
                            && t - s <= JOB_BYTES
                            && o <= job.end + GAP
                            && o + l + GAP >= job.start
                        {
                            job.start = s;
                            job.end = t;
                            job.blobs.push(e);
                            job.plain += u64::from(len);
                            continue;
                        }
                    }
                    self.dispatch_open();
                    let (reply, rx) = crossbeam_channel::bounded(1);
                    self.plan.open = Some((
                        Job {
                            pack: e.pack,
                            start: o,
                            end: o + l,
                            blobs: vec![e],
                            plain: u64::from(len),
                            reply,
                        },
                        rx,
                    ));
                }
            }
        }
        self.dispatch_open();
    }

    /// Makes the next bytes available; `false` at the end of the content.
    fn advance(&mut self) -> Result<bool> {
        loop {
            if self.hole > 0 || self.chunks.front().is_some_and(|c| self.pos < c.len()) {
                return Ok(true);
            }
            if let Some(c) = self.chunks.pop_front() {
                self.ahead -= c.len() as u64;
                self.pos = 0;
                self.pool.give_back(c);
                continue;
            }
            self.plan_ahead();
            match self.pending.pop_front() {
                None => return Ok(false),
                Some(Pending::Hole(n)) => self.hole = n,
                Some(Pending::Failed(e)) => return Err(e),
                Some(Pending::Chunks(rx, plain)) => match rx.recv() {
                    Ok(Ok(chunks)) => self.chunks = chunks.into(),
                    Ok(Err(e)) => {
                        self.ahead -= plain;
                        return Err(e);
                    }
                    Err(_) => return Err(Error::new(ErrorKind::Io, "a fetch thread stopped")),
                },
            }
        }
    }

    /// The bytes available now (a chunk's rest or a block of a hole); empty at the end.
    pub fn fill(&mut self) -> Result<&[u8]> {
        if self.failed {
            return Err(Error::new(
                ErrorKind::Io,
                "the content reader already failed",
            ));
        }
        match self.advance() {
            Ok(true) => {}
            Ok(false) => return Ok(&[]),
            Err(e) => {
                self.failed = true;
                self.stop();
                return Err(e);
            }
        }
        if self.hole > 0 {
            let n = self.hole.min(ZEROS.len() as u64) as usize;
            return Ok(&ZEROS[..n]);
        }
        let c = self.chunks.front().expect("advance found a chunk");
        Ok(&c[self.pos..])
    }

    /// Marks `n` bytes of what [`fill`](Self::fill) returned as handed out.
    pub fn consume(&mut self, n: usize) {
        self.read += n as u64;
        if self.hole > 0 {
            self.hole -= n as u64;
        } else {
            self.pos += n;
        }
    }

    /// Whether what [`fill`](Self::fill) returns now is a hole (zeros the caller may skip).
    pub fn in_hole(&self) -> bool {
        self.hole > 0
    }

    /// Copies the whole (remaining) content to `w`; returns the bytes copied. Content
    /// errors come back as they are; a failing writer as an I/O error naming `what`.
    pub fn copy_to(&mut self, w: &mut dyn Write, what: &str) -> Result<u64> {
        let mut n = 0;
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                w.flush().map_err(|e| Error::io("writing to", what, e))?;
                return Ok(n);
            }
            let len = buf.len();
            w.write_all(buf)
                .map_err(|e| Error::io("writing to", what, e))?;
            self.consume(len);
            n += len as u64;
        }
    }

    fn stop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.jobs = None;
        self.pending.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let avail = self.fill().map_err(std::io::Error::other)?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl Drop for ContentReader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one job's range and opens its blobs, in the job's order.
fn fetch(
    repo: &Repo,
    index: &Index,
    job: &Job,
    opener: &mut pack::Opener,
    pool: &Pool,
) -> Result<Vec<Vec<u8>>> {
    let (pack_id, _) = index.pack(job.pack);
    let path = pack::path(&pack_id);
    let data = repo
        .storage()
        .read_range(&path, job.start..job.end)
        .map_err(|e| e.context(format!("pack {} unreadable", pack_id.short())))?;
    let mut out = Vec::with_capacity(job.blobs.len());
    for e in &job.blobs {
        let lo = (u64::from(e.offset) - job.start) as usize;
        let stored = &data[lo..lo + e.stored_len as usize];
        let plain = opener
            .open_to(
                stored,
                &e.header(),
                repo.crypto(),
                pool.take(e.raw_len as usize),
            )
            .or_else(|err| reread_blob(repo, &path, e).map_err(|_| err))
            .map_err(|err| {
                Error::corrupt(format!(
                    "chunk {} in pack {} is corrupt: {}",
                    e.id.short(),
                    pack_id.short(),
                    crate::error::chain(&err)
                ))
            })?;
        out.push(plain);
    }
    Ok(out)
}

/// A blob that failed its check is read again on its own, twice at most, before it counts
/// as corrupt: a flipped bit in transfer is not damage in the repository.
pub(crate) fn reread_blob(repo: &Repo, path: &str, e: &Entry) -> Result<Vec<u8>> {
    let range = u64::from(e.offset)..u64::from(e.offset) + u64::from(e.stored_len);
    let mut last = None;
    for _ in 0..2 {
        tracing::info!(
            "retrying {path} after a transient error: blob {} does not match its id",
            e.id.short()
        );
        match repo
            .storage()
            .read_range(path, range.clone())
            .and_then(|d| pack::open_blob(&d, &e.header(), repo.crypto()))
        {
            Ok(p) => return Ok(p),
            Err(err) => last = Some(err),
        }
    }
    Err(last.expect("two attempts"))
}
