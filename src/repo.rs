//! Repository format v1 (see `docs/FORMAT.md`): config, keys, packs, index, trees, snapshots, locks.
//!
//! Layout on storage:
//! ```text
//! config                 plaintext JSON: format version, id, chunker, pack size; MAC'd by the master key
//! keys/<hash>            key files: the master key wrapped with a passphrase (Argon2id)
//! data/<xx>/<hash>       packs of sealed blobs (chunks and trees)
//! index/<hash>           sealed index files: which pack holds which blob
//! snapshots/<hash>       sealed snapshot manifests
//! locks/<random>         lock objects
//! ```
//! Every object but `config` and locks is named by the BLAKE3 hash of its stored bytes and
//! never modified. Commit order: packs, then index, then the manifest — so a snapshot whose
//! manifest exists has all its data, and a crash leaves at worst unreferenced packs.

pub mod config;
pub mod index;
pub mod lock;
pub mod pack;
pub mod prune;
pub mod reader;
pub mod repair;
pub mod roots;
pub mod snapshot;
pub mod tree;

use std::collections::HashMap;
use std::sync::Arc;

pub use crate::id::Id;
pub use config::RepoConfig;
pub use index::{Index, IndexFile, IndexPack};
pub use reader::ContentReader;
pub use roots::{Root, RootKind, Roots};
pub use snapshot::{BackupKind, Snapshot, Summary};
pub use tree::{ContentList, Node, NodeKind, Piece, Timestamp, Tree};

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::{Chunker, ChunkerParams, Crypto, KdfParams, KeyFile, MasterKey};
use crate::storage::Storage;

/// Default target pack size.
pub const PACK_SIZE: u32 = 16 * 1024 * 1024;

/// Options for creating a repository.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Encrypt with this passphrase; `None` creates an unencrypted repository.
    pub passphrase: Option<Vec<u8>>,
    /// Key derivation cost.
    pub kdf: KdfParams,
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// Chunk the way another repository does and name chunks as it does
    /// (`init --copy-chunker-params --from-repo`): then the same data makes the same blobs
    /// in both, and a copy between them moves blobs without chunking or hashing again.
    /// Overrides `chunker`.
    pub chunking_of: Option<Chunking>,
}

/// How a repository cuts and names chunks: what two repositories must share for their
/// blobs to be the same. Secret in an encrypted repository.
#[derive(Clone)]
pub struct Chunking {
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// The gear seed of the chunker.
    pub chunker_seed: u64,
    /// The key of chunk ids (`None`: unencrypted, plain BLAKE3).
    pub id_key: Option<[u8; 32]>,
}

impl std::fmt::Debug for Chunking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunking({:?}, <secret seed and key>)", self.chunker)
    }
}

/// An open repository.
#[derive(Clone)]
pub struct Repo {
    storage: Storage,
    config: RepoConfig,
    crypto: Arc<Crypto>,
    /// Built once: its gear tables are the same for every stream.
    chunker: Chunker,
}

impl Repo {
    /// Creates a repository on empty storage.
    ///
    /// Storage that already holds a `config`, or data of a repository whose `config` is gone
    /// (packs, index files, manifests), is refused; key files alone (an init killed before
    /// its config) are removed. If writing the key file or the
    /// config fails, what this call wrote is removed again, so a failed `init` leaves no
    /// half-made repository behind (the config is written last: a repository exists once its
    /// config does).
    pub fn init(storage: Storage, opts: &InitOptions) -> Result<Repo> {
        if storage.exists("config")? {
            return Err(Error::config(format!(
                "{} already holds a repository",
                storage.location()
            )));
        }
        for dir in ["data/", "index/", "snapshots/"] {
            if !storage.list(dir)?.is_empty() {
                return Err(Error::config(format!(
                    "{} holds repository objects ({dir}) but no config: a damaged repository; \
                     restore its config or remove it before creating a new one",
                    storage.location()
                )));
            }
        }
        // Key files and nothing else: an init that was killed before its config was written.
        // No data was ever sealed with those keys, so they are removed.
        for k in storage.list("keys/")? {
            tracing::warn!("removing {} left by an interrupted init", k.path);
            storage.delete(&k.path)?;
        }
        if let Some(c) = &opts.chunking_of
            && c.id_key.is_some() != opts.passphrase.is_some()
        {
            return Err(Error::config(
                "chunker parameters can only be shared between two encrypted or two unencrypted repositories (their chunk ids are made differently)",
            ));
        }
        let mut config = RepoConfig {
            version: config::FORMAT_VERSION,
            id: Id::random(),
            encrypted: opts.passphrase.is_some(),
            chunker: opts
                .chunking_of
                .as_ref()
                .map_or(opts.chunker, |c| c.chunker),
            pack_size: PACK_SIZE,
            mac: None,
        };
        let mut written = Vec::new();
        let res = (|| -> Result<Crypto> {
            let crypto = match &opts.passphrase {
                Some(p) => {
                    let mut key = MasterKey::generate();
                    if let Some(c) = &opts.chunking_of {
                        key.chunker_seed = c.chunker_seed;
                        key.id = c.id_key.expect("checked above");
                    }
                    config.sign(&key);
                    let kf = serde_json::to_vec_pretty(&KeyFile::wrap(&key, p, opts.kdf)?)
                        .expect("key file serializes");
                    let id = Id::hash(&kf);
                    let path = format!("keys/{id}");
                    written.push(path.clone());
                    storage.write_verified(&path, kf.into(), &id)?;
                    crate::failpoint::hit("init-after-key");
                    Crypto::keyed(&key)
                }
                None => Crypto::None,
            };
            written.push("config".to_string());
            storage.write(
                "config",
                serde_json::to_vec_pretty(&config).expect("config serializes"),
            )?;
            Ok(crypto)
        })();
        match res {
            Ok(crypto) => Ok(Repo::new(storage, config, crypto)),
            Err(e) => {
                // Config first: without it nothing here is a repository any more.
                for path in written.iter().rev() {
                    if let Err(d) = storage.delete(path) {
                        tracing::warn!("removing {path} after a failed init: {d}");
                    }
                }
                Err(e.context(format!("creating a repository at {}", storage.location())))
            }
        }
    }

    /// Opens an existing repository.
    ///
    /// An encrypted repository asks `passphrase`, opens a key file with it and verifies the
    /// config's MAC with the master key: a config that does not verify is refused as
    /// tampering. A repository whose config claims to be unencrypted is refused as tampering
    /// when key files exist, and refused (configuration error) when `passphrase` gives a
    /// password — the operator expects encryption, and a config swapped by someone who can
    /// write the storage must not make backstop store plaintext. `passphrase` is therefore
    /// called for unencrypted repositories too; an error from it there means "no password".
    pub fn open(storage: Storage, passphrase: impl FnOnce() -> Result<Vec<u8>>) -> Result<Repo> {
        let raw = match storage.read("config") {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                return Err(Error::new(
                    ErrorKind::RepoNotFound,
                    format!(
                        "there is no repository at {} (run `backstop init` first)",
                        storage.location()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        // The config is not named by its hash: one that does not decode is read once more
        // (a corrupted transfer) before it is reported.
        let mut config = match RepoConfig::decode(&raw) {
            Ok(c) => c,
            Err(_) => RepoConfig::decode(&storage.read("config")?)?,
        };
        let keys = storage.list("keys/")?;
        let crypto = if config.encrypted {
            let pass = passphrase()?;
            if keys.is_empty() {
                return Err(Error::corrupt(
                    "the repository is encrypted but has no key files",
                ));
            }
            let (mut last, mut tampered, mut found) = (None, None, None);
            for k in keys {
                // A key file is named by its hash: one that does not match is read again (a
                // corrupted transfer), then tried as it is (its content is authenticated).
                let mut bytes = storage.read(&k.path)?;
                let named = k
                    .path
                    .strip_prefix("keys/")
                    .and_then(|n| n.parse::<Id>().ok());
                if named.is_some_and(|id| Id::hash(&bytes) != id) {
                    bytes = storage.read(&k.path)?;
                }
                let kf: KeyFile = match serde_json::from_slice(&bytes) {
                    Ok(kf) => kf,
                    Err(e) => {
                        last = Some(Error::corrupt(format!(
                            "key file {} is malformed: {e}",
                            k.path
                        )));
                        continue;
                    }
                };
                // A key that opens but does not verify the config belongs to another
                // repository (or the config was altered): try the other key files first.
                match kf.unwrap_key(&pass) {
                    Ok(key) => match config.verify(&key) {
                        Ok(()) => {
                            found = Some(key);
                            break;
                        }
                        Err(e) => tampered = Some((key, e)),
                    },
                    Err(e) => last = Some(e),
                }
            }
            // A key that opened but did not verify the config: the config is read once more
            // (a corrupted transfer) before it is reported as altered.
            if found.is_none()
                && let Some((key, _)) = &tampered
                && let Ok(again) = RepoConfig::decode(&storage.read("config")?)
                && again.verify(key).is_ok()
            {
                config = again;
                found = tampered.take().map(|(key, _)| key);
            }
            match found {
                Some(key) => Crypto::keyed(&key),
                None => {
                    return Err(tampered
                        .map(|(_, e)| e)
                        .or(last)
                        .expect("at least one key file was tried"));
                }
            }
        } else {
            if !keys.is_empty() {
                return Err(Error::corrupt(format!(
                    "the repository config says it is not encrypted, but keys/ holds {} key \
                     file(s): the config was altered (tampering, a downgrade to plaintext); \
                     refusing to use it",
                    keys.len()
                )));
            }
            if passphrase().is_ok() {
                return Err(Error::config(format!(
                    "the repository at {} is not encrypted, but a password was given: if it \
                     was created with --no-encryption, run without a password; if it was \
                     encrypted, its config and keys were replaced (tampering) and nothing must \
                     be written to it",
                    storage.location()
                )));
            }
            Crypto::None
        };
        Ok(Repo::new(storage, config, crypto))
    }

    fn new(storage: Storage, config: RepoConfig, crypto: Crypto) -> Repo {
        Repo {
            chunker: Chunker::new(config.chunker, crypto.chunker_seed()),
            storage,
            config,
            crypto: Arc::new(crypto),
        }
    }

    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Sealing and chunk ids.
    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    /// A chunker for this repository's parameters and key.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// How this repository cuts and names chunks, for a repository that is to share it.
    pub fn chunking(&self) -> Chunking {
        Chunking {
            chunker: self.config.chunker,
            chunker_seed: self.crypto.chunker_seed(),
            id_key: self.crypto.id_key(),
        }
    }

    /// Reads and opens a sealed content-addressed object, checking its name first.
    /// A mismatch is read again (a corrupted transfer) before it counts as corruption.
    pub fn read_object(&self, path: &str, id: &Id) -> Result<Vec<u8>> {
        let bytes = self.storage.read_verified(path, id)?;
        self.crypto.open(&bytes).map_err(|e| e.context(path))
    }

    /// [`Repo::read_object`] for many objects, read in parallel under the storage's
    /// concurrency limit (one round trip's latency per batch, not per object); results in
    /// the order of `objects`.
    pub fn read_objects(&self, objects: &[(String, Id)]) -> Vec<Result<Vec<u8>>> {
        self.storage
            .read_many_verified(objects)
            .into_iter()
            .zip(objects)
            .map(|(r, (path, _))| self.crypto.open(&r?).map_err(|e| e.context(path)))
            .collect()
    }

    /// Seals and writes a content-addressed object under `dir`, verified by read-back.
    pub fn write_object(&self, dir: &str, plain: Vec<u8>) -> Result<Id> {
        let sealed = self.crypto.seal(plain);
        let id = Id::hash(&sealed);
        self.storage
            .write_verified(&format!("{dir}/{id}"), sealed.into(), &id)?;
        Ok(id)
    }

    /// Stores a finished pack (verified by read-back) and returns its index record.
    pub fn store_pack(&self, p: &pack::FinishedPack) -> Result<IndexPack> {
        let size = p.bytes.len() as u64;
        self.storage
            .write_verified(&pack::path(&p.id), p.bytes.clone(), &p.id)?;
        let mut offset = 0;
        let blobs = p
            .entries
            .iter()
            .map(|entry| {
                let b = index::IndexBlob {
                    offset,
                    entry: entry.clone(),
                };
                offset += b.entry.stored_len;
                b
            })
            .collect();
        Ok(IndexPack {
            id: p.id,
            size,
            blobs,
        })
    }

    /// Loads and merges every index file.
    pub fn load_index(&self) -> Result<Index> {
        let mut files = Vec::new();
        let objects = self
            .storage
            .list("index/")?
            .into_iter()
            .map(|l| Ok((l.path.clone(), id_from_path(&l.path)?)))
            .collect::<Result<Vec<_>>>()?;
        for ((path, _), read) in objects.iter().zip(self.read_objects(&objects)) {
            let file = IndexFile::decode(&read?).map_err(|e| {
                if self.crypto.is_encrypted() {
                    e
                } else {
                    // Sealed bytes read as plaintext: the config of an encrypted repository
                    // was replaced by an unencrypted one (docs/SECURITY.md).
                    e.context(format!(
                        "{path} (if this repository was encrypted, its config was altered: tampering)"
                    ))
                }
            })?;
            files.push(file);
        }
        Ok(Index::from_files(files))
    }

    /// Writes an index file for `packs`.
    pub fn save_index(&self, packs: Vec<IndexPack>) -> Result<Id> {
        self.write_object("index", IndexFile { version: 1, packs }.encode())
    }

    /// Reads one blob's plaintext (verified against its id).
    pub fn read_blob(&self, index: &Index, id: &Id) -> Result<Vec<u8>> {
        let e = index
            .get(id)
            .ok_or_else(|| Error::corrupt(format!("blob {id} is not in the index")))?;
        let (pack, _) = index.pack(e.pack);
        let start = u64::from(e.offset);
        let path = pack::path(&pack);
        let stored = self
            .storage
            .read_range(&path, start..start + u64::from(e.stored_len))?;
        pack::open_blob(&stored, &e.header(), &self.crypto)
            .or_else(|err| reader::reread_blob(self, &path, e).map_err(|_| err))
            .map_err(|err| err.context(format!("pack {}", pack.short())))
    }

    /// Loads a tree.
    pub fn load_tree(&self, index: &Index, id: &Id) -> Result<Tree> {
        Tree::decode(&self.read_blob(index, id)?)
            .map_err(|e| e.context(format!("tree {}", id.short())))
    }

    /// A file's content as chunks and holes: each [`Piece::List`] replaced by the pieces it
    /// stores.
    pub fn expand_content(&self, index: &Index, pieces: &[Piece]) -> Result<Vec<Piece>> {
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            match p {
                Piece::List(id, len) => out.extend(self.load_content_list(index, id, *len)?.pieces),
                p => out.push(*p),
            }
        }
        Ok(out)
    }

    /// Loads the content list `id`, checked to cover the `len` bytes its file says.
    pub fn load_content_list(&self, index: &Index, id: &Id, len: u64) -> Result<ContentList> {
        let list = ContentList::decode(&self.read_blob(index, id)?)
            .map_err(|e| e.context(format!("content list {}", id.short())))?;
        if list.len() != len {
            return Err(Error::corrupt(format!(
                "content list {} covers {} bytes, not the {len} its file says",
                id.short(),
                list.len()
            )));
        }
        Ok(list)
    }

    /// Lists snapshots, oldest first. A manifest that cannot be read, authenticated or
    /// decoded does not hide the others: it is logged as a warning naming it and returned in
    /// [`SnapshotList::damaged`], for the callers that must act on it (verify reports it,
    /// forget says it skipped it, prune refuses, `repair snapshots` sets it aside).
    /// Listing the snapshot directory itself failing is still an error.
    pub fn snapshots(&self) -> Result<SnapshotList> {
        let mut out = SnapshotList::default();
        let listed = self.storage.list("snapshots/")?;
        // Manifests are read in parallel: on an object store, one request's latency per
        // batch instead of per snapshot.
        let named: Vec<(String, Id)> = listed
            .iter()
            .filter_map(|l| Some((l.path.clone(), id_from_path(&l.path).ok()?)))
            .collect();
        let mut read = named
            .iter()
            .map(|(p, _)| p.clone())
            .zip(self.read_objects(&named))
            .collect::<HashMap<_, _>>();
        for l in listed {
            let read = id_from_path(&l.path).and_then(|id| {
                let plain = read
                    .remove(&l.path)
                    .expect("every named manifest was read")?;
                Ok((id, Snapshot::decode(&plain)?))
            });
            match read {
                Ok(s) => out.snapshots.push(s),
                // Storage faults (the storage may be unreachable) are not damage.
                Err(e)
                    if e.kind() != ErrorKind::Corrupt && e.kind() != ErrorKind::WrongPassword =>
                {
                    return Err(e.context(format!("reading {}", l.path)));
                }
                Err(e) => {
                    // Once per manifest and process, however often the list is read.
                    static WARNED: std::sync::Mutex<Vec<String>> =
                        std::sync::Mutex::new(Vec::new());
                    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
                    if !warned.contains(&l.path) {
                        warned.push(l.path.clone());
                        tracing::warn!(
                            "skipping damaged snapshot manifest {}: {} (`backstop repair snapshots` sets it aside)",
                            l.path,
                            crate::error::chain(&e)
                        );
                    }
                    out.damaged.push(DamagedSnapshot {
                        path: l.path,
                        error: crate::error::chain(&e),
                    });
                }
            }
        }
        out.snapshots
            .sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Finds a snapshot by `latest` (of any host), a full id or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        self.find_snapshot_for(spec, &SnapshotFilter::default())
    }

    /// Finds a snapshot by a full id or a unique id prefix, or `latest`: the newest that
    /// `filter` accepts. An ambiguous prefix is an error listing the snapshots it matches.
    pub fn find_snapshot_for(&self, spec: &str, filter: &SnapshotFilter) -> Result<(Id, Snapshot)> {
        let snaps = self.snapshots()?;
        if spec == "latest" {
            let hosts: std::collections::BTreeSet<String> =
                snaps.iter().map(|(_, s)| s.hostname.clone()).collect();
            return snaps
                .into_iter()
                .rfind(|(_, s)| filter.accepts(s))
                .ok_or_else(|| {
                    if hosts.is_empty() {
                        Error::config("the repository has no snapshots yet")
                    } else {
                        Error::config(format!(
                            "no snapshot {filter}; the repository has snapshots of {} \
                             (use --host HOST, --any-host or --path PATH)",
                            hosts.into_iter().collect::<Vec<_>>().join(", ")
                        ))
                    }
                });
        }
        let spec = spec.to_ascii_lowercase();
        let hits: Vec<(Id, Snapshot)> = snaps
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&spec))
            .collect();
        match hits.len() {
            0 => Err(Error::config(format!("no snapshot matches '{spec}'"))),
            _ if spec.len() < 4 => Err(Error::config("give at least 4 digits of a snapshot id")),
            1 => Ok(hits.into_iter().next().expect("one hit")),
            n => Err(Error::config(format!(
                "snapshot id prefix '{spec}' is ambiguous, it matches {n} snapshots:\n{}",
                hits.iter()
                    .map(|(id, s)| format!(
                        "  {} {} {} {}",
                        id.short(),
                        s.time
                            .with_timezone(&chrono::Local)
                            .format("%Y-%m-%d %H:%M:%S"),
                        s.hostname,
                        s.paths.join(", ")
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))),
        }
    }

    /// Writes a snapshot manifest: the commit point of a backup.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        crate::failpoint::hit("before-manifest");
        let id = self.write_object("snapshots", snap.encode())?;
        crate::failpoint::hit("after-manifest");
        Ok(id)
    }
}

/// Which snapshots `latest` may be: of one host, holding given paths.
#[derive(Clone, Debug, Default)]
pub struct SnapshotFilter {
    /// Only snapshots of this host (`None`: any host).
    pub host: Option<String>,
    /// Only snapshots holding every one of these paths (compared normalized).
    pub paths: Vec<String>,
    /// Only snapshots of this source kind (`files`, `postgres`, …; `None`: any).
    pub source: Option<String>,
}

impl SnapshotFilter {
    /// Whether `snap` passes.
    pub fn accepts(&self, snap: &Snapshot) -> bool {
        use crate::restore::select::normalize;
        self.host.as_ref().is_none_or(|h| *h == snap.hostname)
            && self.source.as_ref().is_none_or(|k| *k == snap.source)
            && self.paths.iter().all(|p| {
                let p = normalize(p);
                snap.paths.iter().any(|s| normalize(s) == p)
            })
    }
}

impl std::fmt::Display for SnapshotFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(h) => write!(f, "of host {h}")?,
            None => write!(f, "of any host")?,
        }
        if let Some(k) = &self.source {
            write!(f, " from a {k} source")?;
        }
        if !self.paths.is_empty() {
            write!(f, " with paths {}", self.paths.join(", "))?;
        }
        Ok(())
    }
}

/// A repository's snapshots: those that read back, oldest first, and the manifests that
/// did not. Dereferences to the good ones; the damaged ones are never dropped silently
/// ([`Repo::snapshots`] logs each).
#[derive(Clone, Debug, Default)]
pub struct SnapshotList {
    /// Readable snapshots, oldest first.
    pub snapshots: Vec<(Id, Snapshot)>,
    /// Manifests that could not be read, authenticated or decoded.
    pub damaged: Vec<DamagedSnapshot>,
}

/// A snapshot manifest that cannot be used.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DamagedSnapshot {
    /// Its object path (`snapshots/<id>`).
    pub path: String,
    /// Why it cannot be used.
    pub error: String,
}

impl std::ops::Deref for SnapshotList {
    type Target = Vec<(Id, Snapshot)>;
    fn deref(&self) -> &Self::Target {
        &self.snapshots
    }
}

impl std::ops::DerefMut for SnapshotList {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.snapshots
    }
}

impl IntoIterator for SnapshotList {
    type Item = (Id, Snapshot);
    type IntoIter = std::vec::IntoIter<(Id, Snapshot)>;
    fn into_iter(self) -> Self::IntoIter {
        self.snapshots.into_iter()
    }
}

impl<'a> IntoIterator for &'a SnapshotList {
    type Item = &'a (Id, Snapshot);
    type IntoIter = std::slice::Iter<'a, (Id, Snapshot)>;
    fn into_iter(self) -> Self::IntoIter {
        self.snapshots.iter()
    }
}

/// The id named by the last component of an object path.
pub fn id_from_path(path: &str) -> Result<Id> {
    path.rsplit('/')
        .next()
        .unwrap_or(path)
        .parse()
        .map_err(|_| Error::corrupt(format!("unexpected object {path} in the repository")))
}

/// This host's name.
pub fn hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}
