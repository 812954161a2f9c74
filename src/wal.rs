//! Continuous WAL archiving: the local spool `wal-push` writes to, the shipper that moves
//! it into the repository in batches, and `wal-fetch`.
//!
//! PostgreSQL runs `archive_command` for every finished segment (16 MiB by default) and
//! waits for it: it must be fast, must succeed only once the segment is durable, and must
//! never accept a segment twice with different contents (the same contents twice is a
//! success: PostgreSQL retries after a crash). Opening the repository (Argon2 key
//! derivation, index load) per segment is too slow for that, so, as pgBackRest's
//! asynchronous archive-push does, [`push`] only copies the segment into a spool directory
//! on the local disk (a temporary name, `fsync`, a hard link to its final name, `fsync` of
//! the directory) and returns. The caller then starts a shipper ([`ship`], `backstop
//! wal-ship`) unless one is running: under an exclusive `flock` on the spool, it opens the
//! repository once, stores every spooled segment in one batch (chunked and deduplicated
//! like any file), writes the batch's manifest (`wal/<id>`, sealed), records each shipped
//! segment's hash in `shipped/` and removes it from `ready/`, and goes on until the spool
//! stays empty.
//!
//! The spool is per repository, under the data directory: `wal-spool/<hash of the
//! repository location>/` with `ready/` (durable, not yet in the repository), `shipped/`
//! (one small file per archived segment: the BLAKE3 of its contents, so a second push of
//! the same name is compared without opening the repository) and `ship.lock`.
//!
//! Crash safety: a segment is in `ready/` under its final name only once its contents are
//! on disk. A shipper killed before its manifest leaves the segments in `ready/` (the packs
//! it wrote are unreferenced; prune removes them); killed after the manifest, it ships them
//! again next time (a second batch naming the same segments, deduplicated). A push racing
//! a shipper that is about to exit is not stranded: the push checks for a shipper after
//! spooling, and the shipper checks `ready/` again after releasing its lock.
//!
//! In the repository a batch is a root ([`crate::repo::RootKind::Wal`]): prune keeps what
//! it references. Forget removes the batches that no retained base backup needs: those
//! holding only segments before the oldest retained base backup's start ([`unneeded`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cancel::Cancel;
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::pipeline::ingest::{self, Chunking, Counters, Settings};
use crate::progress::NoProgress;
use crate::repo::{Repo, Timestamp, Tree};

/// Segments shipped in one batch at most.
const BATCH: usize = 64;

/// A batch of archived WAL files: the manifest stored at `wal/<id>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WalBatch {
    /// Format version (1).
    pub version: u32,
    /// When it was shipped.
    pub time: DateTime<Utc>,
    /// Host that shipped it.
    pub hostname: String,
    /// The tree holding one file per segment, named as PostgreSQL names it.
    pub tree: Id,
    /// The names of the files in the tree, sorted.
    pub segments: Vec<String>,
}

impl WalBatch {
    /// Decodes an opened manifest.
    pub fn decode(plain: &[u8]) -> Result<Self> {
        let b: WalBatch = serde_json::from_slice(plain)
            .map_err(|e| Error::corrupt(format!("WAL batch manifest is malformed: {e}")))?;
        if b.version != 1 {
            return Err(Error::corrupt(format!(
                "WAL batch version {} is not supported",
                b.version
            )));
        }
        Ok(b)
    }
}

impl Repo {
    /// Every WAL batch manifest, oldest first.
    pub fn wal_batches(&self) -> Result<Vec<(Id, WalBatch)>> {
        let named: Vec<(String, Id)> = self
            .storage()
            .list("wal/")?
            .into_iter()
            .filter_map(|l| Some((l.path.clone(), crate::repo::id_from_path(&l.path).ok()?)))
            .collect();
        let mut out = Vec::new();
        for ((path, id), plain) in named.iter().zip(self.read_objects(&named)) {
            let batch = plain
                .and_then(|p| WalBatch::decode(&p))
                .map_err(|e| e.context(path))?;
            out.push((*id, batch));
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }
}

/// The local spool of one repository.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
}

/// What [`push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pushed {
    /// The segment is now in the spool.
    Spooled,
    /// The same contents were already spooled or archived (a retry).
    AlreadyThere,
}

impl Spool {
    /// The spool of the repository at `location`, under `data_dir`.
    pub fn for_repo(data_dir: &Path, location: &str) -> Spool {
        let h = blake3::hash(location.as_bytes()).to_hex();
        Spool {
            dir: data_dir.join("wal-spool").join(&h.as_str()[..16]),
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ready(&self) -> PathBuf {
        self.dir.join("ready")
    }

    fn shipped(&self) -> PathBuf {
        self.dir.join("shipped")
    }

    /// Creates the spool's directories, each new one durable in its parent (a segment
    /// spooled into a directory whose entry a crash loses would be lost with it).
    fn create(&self) -> Result<()> {
        for d in [self.ready(), self.shipped()] {
            if d.is_dir() {
                continue;
            }
            let mut new = vec![d.clone()];
            let mut up = d.parent();
            while let Some(p) = up.filter(|p| !p.exists()) {
                new.push(p.to_path_buf());
                up = p.parent();
            }
            std::fs::create_dir_all(&d).map_err(|e| io(e, format!("creating {}", d.display())))?;
            for n in new.iter().rev() {
                fsync_dir(n.parent().unwrap_or(Path::new("/")))?;
            }
        }
        Ok(())
    }

    /// Why the last background shipping failed, if it did (cleared when one succeeds).
    pub fn last_error(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("ship.error")).ok()
    }

    /// Records (`Some`) or clears (`None`) the shipper's failure, for [`Spool::last_error`].
    pub fn set_error(&self, error: Option<&str>) {
        let p = self.dir.join("ship.error");
        let _ = match error {
            Some(e) => std::fs::write(&p, e),
            None => std::fs::remove_file(&p),
        };
    }

    /// Segments waiting in `ready/`, sorted (oldest first: names sort by timeline and
    /// position).
    pub fn waiting(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let rd = match std::fs::read_dir(self.ready()) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(io(e, format!("listing {}", self.ready().display()))),
        };
        for e in rd {
            let e = e.map_err(|e| io(e, format!("listing {}", self.ready().display())))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with('.') {
                names.push(n);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Segments [`fetch`] read ahead from the repository.
    fn prefetched(&self) -> PathBuf {
        self.dir.join("prefetch")
    }

    /// The path of a spooled segment, if it is waiting there.
    pub fn spooled(&self, name: &str) -> Option<PathBuf> {
        let p = self.ready().join(name);
        p.is_file().then_some(p)
    }

    /// Takes the shipper's lock; `None` when another shipper holds it.
    pub fn try_lock(&self) -> Result<Option<File>> {
        self.create()?;
        let p = self.dir.join("ship.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| io(e, format!("opening {}", p.display())))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor this function owns; the lock lives as long as
        // the returned file.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(f));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        Err(io(e, format!("locking {}", p.display())))
    }
}

/// Whether `name` is a WAL segment's name: 24 upper-case hex digits (timeline, log, segment).
pub fn is_segment(name: &str) -> bool {
    name.len() == 24
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// The batches no base backup starting at segment `start` needs: those holding only
/// segments (and their `.partial`/`.backup` files) before it. A batch with a timeline
/// `.history` file is always kept: recovery on any later timeline reads it.
pub fn unneeded(batches: &[(Id, WalBatch)], start: &str) -> Vec<Id> {
    let before = |name: &str| {
        name.get(..24)
            .is_some_and(|seg| is_segment(seg) && seg < start)
            && !name.ends_with(".history")
    };
    batches
        .iter()
        .filter(|(_, b)| b.segments.iter().all(|s| before(s)))
        .map(|(id, _)| *id)
        .collect()
}

fn io(e: std::io::Error, what: String) -> Error {
    Error::new(ErrorKind::Io, what).with_source(e)
}

/// Checks that `name` is a WAL file name as PostgreSQL gives it (a segment, a `.history`,
/// a `.backup` or `.partial` file): one path component of letters, digits and dots.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
    {
        return Err(Error::config(format!(
            "'{name}' is not a WAL file name (e.g. 000000010000000000000001)"
        )));
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<(blake3::Hash, u64)> {
    let mut f = File::open(path).map_err(|e| io(e, format!("reading {}", path.display())))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| io(e, format!("reading {}", path.display())))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finalize(), n))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(e, format!("syncing {}", dir.display())))
}

/// Puts the WAL file at `path` into the spool, durably. The same name with the same
/// contents, spooled or already shipped, is a success; with other contents, an error.
pub fn push(spool: &Spool, path: &Path) -> Result<Pushed> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    check_name(&name)?;
    spool.create()?;
    let (hash, _) = hash_file(path)?;
    let differs = || {
        Error::config(format!(
            "WAL file {name} was already archived with different contents; refusing to \
             replace it (is a second cluster archiving into the same repository?)"
        ))
    };
    let record = spool.shipped().join(&name);
    if let Ok(old) = std::fs::read_to_string(&record) {
        return if old.trim() == hash.to_hex().as_str() {
            Ok(Pushed::AlreadyThere)
        } else {
            Err(differs())
        };
    }
    let fin = spool.ready().join(&name);
    if fin.exists() {
        return if hash_file(&fin)?.0 == hash {
            Ok(Pushed::AlreadyThere)
        } else {
            Err(differs())
        };
    }
    let tmp = spool
        .ready()
        .join(format!(".{name}.{}.tmp", std::process::id()));
    let copy = || -> std::io::Result<()> {
        let mut src = File::open(path)?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::copy(&mut src, &mut dst)?;
        dst.flush()?;
        dst.sync_all()
    };
    if let Err(e) = copy() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e, format!("spooling {name} into {}", tmp.display())));
    }
    // A hard link never replaces: two pushes of one name cannot overwrite each other.
    let linked = std::fs::hard_link(&tmp, &fin);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return if hash_file(&fin)?.0 == hash {
                Ok(Pushed::AlreadyThere)
            } else {
                Err(differs())
            };
        }
        Err(e) => return Err(io(e, format!("spooling {name}"))),
    }
    // A shipper may have recorded the name (and taken its file out of ready/) between the
    // checks above and the link: look again.
    if let Ok(old) = std::fs::read_to_string(&record)
        && old.trim() != hash.to_hex().as_str()
    {
        let _ = std::fs::remove_file(&fin);
        return Err(differs());
    }
    fsync_dir(&spool.ready())?;
    Ok(Pushed::Spooled)
}

/// What [`ship`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Shipped {
    /// Batches written.
    pub batches: u64,
    /// WAL files shipped.
    pub segments: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Ships every spooled WAL file into `repo`, in batches, until the spool is empty; the
/// caller holds the spool's lock ([`Spool::try_lock`]).
pub fn ship(repo: &Repo, spool: &Spool, cancel: &Cancel) -> Result<Shipped> {
    let mut out = Shipped::default();
    loop {
        cancel.check()?;
        let mut names = spool.waiting()?;
        if names.is_empty() {
            return Ok(out);
        }
        names.truncate(BATCH);
        let (bytes, hashes) = ship_batch(repo, spool, &names, cancel)?;
        for (name, hash) in names.iter().zip(&hashes) {
            let rec = spool.shipped().join(name);
            let tmp = spool.shipped().join(format!(".{name}.tmp"));
            std::fs::write(&tmp, hash.to_hex().as_bytes())
                .and_then(|()| File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &rec))
                .map_err(|e| io(e, format!("recording {name} as shipped")))?;
        }
        fsync_dir(&spool.shipped())?;
        for name in &names {
            std::fs::remove_file(spool.ready().join(name))
                .map_err(|e| io(e, format!("removing shipped {name} from the spool")))?;
        }
        fsync_dir(&spool.ready())?;
        out.batches += 1;
        out.segments += names.len() as u64;
        out.bytes += bytes;
    }
}

/// Stores `names` from the spool as one batch: ingest, index, manifest.
fn ship_batch(
    repo: &Repo,
    spool: &Spool,
    names: &[String],
    cancel: &Cancel,
) -> Result<(u64, Vec<blake3::Hash>)> {
    let lock = crate::repo::lock::acquire(
        repo.storage(),
        false,
        "wal-ship",
        std::time::Duration::from_secs(600),
    )?
    .watching(cancel);
    let index = repo.load_index()?;
    let settings = Settings {
        compression: crate::pipeline::compress::DEFAULT_LEVEL,
        threads: 2,
        cancel: cancel.clone(),
    };
    let ((tree, bytes, hashes), stored) =
        ingest::run(repo, &index, &lock, settings, &NoProgress, |ingest| {
            let mut nodes = Vec::new();
            let (mut bytes, mut hashes) = (0, Vec::new());
            for name in names {
                let p = spool.ready().join(name);
                let (hash, _) = hash_file(&p)?;
                let f = File::open(&p).map_err(|e| io(e, format!("reading {}", p.display())))?;
                let (content, size) = ingest.store_stream(f, Chunking::Content)?;
                Counters::add(&ingest.counters.files, 1);
                bytes += size;
                hashes.push(hash);
                nodes.push(crate::source::command::file_node(
                    name,
                    content,
                    size,
                    Timestamp::now(),
                ));
            }
            Ok((ingest.store_tree(&Tree { nodes })?, bytes, hashes))
        })?;
    lock.check()?;
    if !stored.packs.is_empty() {
        repo.save_index(stored.packs)?;
    }
    lock.check()?;
    let batch = WalBatch {
        version: 1,
        time: Utc::now(),
        hostname: crate::repo::hostname(),
        tree,
        segments: names.to_vec(),
    };
    repo.write_object("wal", serde_json::to_vec(&batch).expect("batch serializes"))?;
    Ok((bytes, hashes))
}

/// Where [`fetch`] found a WAL file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fetched {
    /// In the local spool (not yet shipped).
    Spool,
    /// In the repository.
    Repository,
    /// Read ahead from the repository by an earlier fetch.
    Prefetched,
    /// Nowhere (PostgreSQL probes for files that do not exist: not an error).
    Missing,
}

/// Copies the WAL file `name` to `dest`: from the spool if it is waiting there, else from
/// the newest batch in the repository holding it (`repo` is opened only then).
pub fn fetch(
    spool: &Spool,
    repo: impl FnOnce() -> Result<Repo>,
    name: &str,
    dest: &Path,
    cancel: &Cancel,
) -> Result<Fetched> {
    check_name(name)?;
    let write = |r: &mut dyn Read| -> Result<()> {
        let mut f =
            File::create(dest).map_err(|e| io(e, format!("creating {}", dest.display())))?;
        std::io::copy(r, &mut f)
            .and_then(|_| f.sync_all())
            .map_err(|e| io(e, format!("writing {name} to {}", dest.display())))
    };
    // (A shipper may take the file out of the spool in between: then the repository has it.)
    if let Some(mut f) = spool.spooled(name).and_then(|p| File::open(p).ok()) {
        write(&mut f)?;
        return Ok(Fetched::Spool);
    }
    let ahead = spool.prefetched();
    let p = ahead.join(name);
    if let Ok(mut f) = File::open(&p) {
        write(&mut f)?;
        let _ = std::fs::remove_file(&p);
        return Ok(Fetched::Prefetched);
    }
    // A segment missed: what was read ahead is not what recovery needs now (history
    // files are asked for in between).
    if is_segment(name) {
        let _ = std::fs::remove_dir_all(&ahead);
    }
    let repo = repo()?;
    let batches = repo.wal_batches()?;
    let Some((id, batch)) = batches
        .iter()
        .rev()
        .find(|(_, b)| b.segments.iter().any(|s| s == name))
    else {
        return Ok(Fetched::Missing);
    };
    let index = std::sync::Arc::new(repo.load_index()?);
    let tree = repo
        .load_tree(&index, &batch.tree)
        .map_err(|e| e.context(format!("WAL batch {}", id.short())))?;
    let node = tree
        .nodes
        .iter()
        .find(|n| n.name.as_slice() == name.as_bytes())
        .ok_or_else(|| {
            Error::corrupt(format!(
                "WAL batch {} names {name} but its tree does not hold it",
                id.short()
            ))
        })?;
    let pieces = repo.expand_content(&index, &node.content)?;
    let mut reader = repo.content_reader(index.clone(), pieces, 4, cancel);
    write(&mut reader)?;
    // Recovery asks for the next segments one process at a time: read the next few of this
    // batch ahead, so that they cost no repository open each. Best effort: a failure here
    // only means the next fetch reads the repository.
    let next = tree
        .nodes
        .iter()
        .filter(|n| std::str::from_utf8(&n.name).is_ok_and(|n| is_segment(n) && n > name));
    for n in next.take(PREFETCH) {
        let Ok(next) = std::str::from_utf8(&n.name) else {
            continue;
        };
        if let Err(e) = prefetch(&repo, &index, n, &ahead.join(next), cancel) {
            tracing::debug!("reading {next} ahead: {e}");
            break;
        }
    }
    Ok(Fetched::Repository)
}

/// Segments [`fetch`] reads ahead after one it had to get from the repository (128 MiB of
/// 16 MiB segments at most).
const PREFETCH: usize = 8;

/// Writes `node`'s content to `path` (through a temporary name, so that a fetch never
/// sees half of it).
fn prefetch(
    repo: &Repo,
    index: &std::sync::Arc<crate::repo::Index>,
    node: &crate::repo::Node,
    path: &Path,
    cancel: &Cancel,
) -> Result<()> {
    let dir = path.parent().expect("in the prefetch directory");
    std::fs::create_dir_all(dir).map_err(|e| io(e, format!("creating {}", dir.display())))?;
    // A name of its own (two recoveries may share the spool), complete and durable before
    // it takes the segment's name.
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let pieces = repo.expand_content(index, &node.content)?;
    let mut reader = repo.content_reader(index.clone(), pieces, 4, cancel);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io(e, format!("creating {}", tmp.display())))?;
    let res = std::io::copy(&mut reader, &mut f)
        .and_then(|n| {
            if n == node.size {
                f.sync_all()
            } else {
                Err(std::io::Error::other(format!("{n} bytes of {}", node.size)))
            }
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e, format!("writing {}", tmp.display())));
    }
    Ok(())
}
