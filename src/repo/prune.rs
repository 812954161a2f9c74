//! Prune: remove data no snapshot references, in two phases separated by a grace period.
//!
//! 1. **Mark.** A pack none of whose blobs is used by any snapshot gets a mark
//!    (`marks/<pack id>`, holding the time). A pack that is mostly unused has its used blobs
//!    copied into new packs (verified, then indexed) and is marked too. Packs found in
//!    storage but in no index (left by interrupted backups) are marked as well.
//! 2. **Sweep**, in a later prune at least the grace period (default 24 h) after the mark:
//!    a marked pack is deleted only if, *now*, every used blob it holds is also in an
//!    unmarked pack; otherwise its mark is removed. Deletion order: a new index without
//!    the deleted packs, then the old index files, then the packs, then the marks.
//!
//! Temporary objects (`tmp/`, left by writers that died mid-write) are removed by every
//! prune at once: under the exclusive lock, no live writer can own one.
//!
//! Why it is safe: prune holds the exclusive lock, so no backup runs meanwhile; a backup
//! that started before a mark and commits later references blobs that the sweep sees as
//! used, so their packs are kept; a backup frozen past its lock's expiry refuses to commit
//! (see `lock`). Every step is idempotent, so an interrupted prune is resumed by the next.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::repo::index::{IndexFile, IndexPack};
use crate::repo::pack::Packer;
use crate::repo::{Id, Index, Repo, id_from_path, pack};

/// Prune options.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Compute and report, change nothing.
    pub dry_run: bool,
    /// How long a mark must stand before its pack may be deleted.
    pub grace: chrono::Duration,
    /// Repack a pack when more than this share of its bytes is unused.
    pub repack_unused: f64,
    /// How long to wait for other locks.
    pub retry_lock: Duration,
    /// Stops the prune between steps once cancelled (every step is idempotent).
    pub cancel: Cancel,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            grace: chrono::Duration::hours(24),
            repack_unused: 0.3,
            retry_lock: Duration::ZERO,
            cancel: Cancel::new(),
        }
    }
}

/// What a prune did (or, dry, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Packs in storage.
    pub packs: usize,
    /// Blobs used by snapshots.
    pub used_blobs: usize,
    /// Packs newly marked for deletion.
    pub marked: usize,
    /// Bytes in newly marked packs.
    pub marked_bytes: u64,
    /// Packs whose used blobs were copied to new packs (then marked).
    pub repacked: usize,
    /// Marks removed because the pack is needed again.
    pub unmarked: usize,
    /// Packs deleted (marked longer than the grace period).
    pub deleted: usize,
    /// Bytes freed now.
    pub freed_bytes: u64,
    /// Packs still waiting out their grace period.
    pub waiting: usize,
    /// Bytes they hold.
    pub waiting_bytes: u64,
    /// Leftover temporary objects of dead writers removed.
    pub tmp_removed: usize,
    /// Bytes they held.
    pub tmp_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Mark {
    marked_at: DateTime<Utc>,
}

/// Runs a prune at `now`.
pub fn run(repo: &Repo, opts: &PruneOptions, now: DateTime<Utc>) -> Result<PruneReport> {
    let lock = if opts.dry_run {
        None
    } else {
        Some(
            crate::repo::lock::acquire(repo.storage(), true, "prune", opts.retry_lock)?
                .watching(&opts.cancel),
        )
    };
    crate::failpoint::hit("prune-after-lock");
    let cancel = &opts.cancel;
    cancel.check()?;
    let st = repo.storage();
    let mut report = PruneReport::default();

    // Everything the repository holds.
    let mut index_files = Vec::new();
    for l in st.list("index/")? {
        let id = id_from_path(&l.path)?;
        index_files.push((
            l.path.clone(),
            IndexFile::decode(&repo.read_object(&l.path, &id)?)?,
        ));
    }
    let indexed: HashMap<Id, IndexPack> = index_files
        .iter()
        .flat_map(|(_, f)| f.packs.iter().map(|p| (p.id, p.clone())))
        .collect();
    let index = Index::from_files(index_files.iter().map(|(_, f)| f.clone()));
    let stored: HashMap<Id, u64> = st
        .list("data/")?
        .into_iter()
        .filter_map(|l| Some((id_from_path(&l.path).ok()?, l.size)))
        .collect();
    let mut marks: HashMap<Id, DateTime<Utc>> = HashMap::new();
    for l in st.list("marks/")? {
        let id = id_from_path(&l.path)?;
        let mark: Mark = serde_json::from_slice(&st.read(&l.path)?)
            .map_err(|e| Error::corrupt(format!("{} is malformed: {e}", l.path)))?;
        marks.insert(id, mark.marked_at);
    }
    report.packs = stored.len();

    // What snapshots use. Any unreadable tree aborts: never delete when unsure.
    let used = used_blobs(repo, &index)?;
    report.used_blobs = used.len();
    cancel.check()?;

    // Which packs hold each used blob.
    let mut holders: HashMap<Id, Vec<Id>> = HashMap::new();
    for p in indexed.values().filter(|p| stored.contains_key(&p.id)) {
        for b in &p.blobs {
            if used.contains(&b.entry.id) {
                holders.entry(b.entry.id).or_default().push(p.id);
            }
        }
    }
    // A pack is needed if it holds a used blob no unmarked pack holds.
    let needed = |pack: &Id, marks: &HashMap<Id, DateTime<Utc>>| {
        indexed.get(pack).is_some_and(|p| {
            p.blobs.iter().any(|b| {
                used.contains(&b.entry.id)
                    && !holders
                        .get(&b.entry.id)
                        .is_some_and(|hs| hs.iter().any(|h| h != pack && !marks.contains_key(h)))
            })
        })
    };

    // A pack no index lists may still hold used blobs (an index file a lagging listing
    // missed, or a repair in progress): look inside before trusting that it is garbage.
    let unindexed_needed = |pack: &Id, marks: &HashMap<Id, DateTime<Utc>>| -> Result<bool> {
        if indexed.contains_key(pack) || !stored.contains_key(pack) {
            return Ok(false);
        }
        let bytes = st.read(&pack::path(pack))?;
        let Ok(blobs) = pack::parse(&bytes, repo.crypto()) else {
            return Ok(false);
        };
        Ok(blobs.iter().any(|b| {
            used.contains(&b.entry.id)
                && !holders
                    .get(&b.entry.id)
                    .is_some_and(|hs| hs.iter().any(|h| !marks.contains_key(h)))
        }))
    };
    // Never delete while some used blob is in no known pack: the view of the repository is
    // incomplete (a listing lagging behind writes), and deleting could lose data.
    let uncovered = used.iter().filter(|b| !holders.contains_key(b)).count();

    // Sweep: marks older than the grace period.
    let mut delete = Vec::new();
    for (pack, at) in marks.clone() {
        cancel.check()?;
        let size = stored.get(&pack).copied().unwrap_or(0);
        if needed(&pack, &marks) || unindexed_needed(&pack, &marks)? {
            report.unmarked += 1;
            marks.remove(&pack);
            if !opts.dry_run {
                st.delete(&mark_path(&pack))?;
            }
        } else if now - at >= opts.grace {
            delete.push(pack);
            report.deleted += 1;
            report.freed_bytes += size;
        } else {
            report.waiting += 1;
            report.waiting_bytes += size;
        }
    }

    // Mark: unused and mostly unused packs, and packs no index knows.
    let mut to_mark = Vec::new();
    let mut to_repack = Vec::new();
    for (pack, size) in &stored {
        if marks.contains_key(pack) {
            continue;
        }
        let Some(p) = indexed.get(pack) else {
            to_mark.push(*pack);
            continue;
        };
        let used_bytes: u64 = p
            .blobs
            .iter()
            .filter(|b| used.contains(&b.entry.id))
            .map(|b| u64::from(b.entry.stored_len))
            .sum();
        if used_bytes == 0 {
            to_mark.push(*pack);
        } else if (size - used_bytes.min(*size)) as f64 > opts.repack_unused * *size as f64 {
            to_repack.push(*pack);
        }
    }
    if !to_repack.is_empty() && !opts.dry_run {
        cancel.check()?;
        repack(repo, &to_repack, &indexed, &used, &marks, cancel)?;
        crate::failpoint::hit("prune-after-repack");
    }
    report.repacked = to_repack.len();
    for pack in to_mark.iter().chain(&to_repack) {
        report.marked += 1;
        report.marked_bytes += stored[pack];
        if !opts.dry_run {
            cancel.check()?;
            let mark = serde_json::to_vec(&Mark { marked_at: now }).expect("mark serializes");
            st.write(&mark_path(pack), mark)?;
            crate::failpoint::hit("prune-after-mark");
        }
    }

    // Temporary objects of interrupted writes. Every writer holds a lock and this prune
    // holds the exclusive one, so no live writer owns a temporary object now: whatever is
    // there belongs to a dead process (or to one that lost its lock and will not commit),
    // and goes at once, whatever its age. A process just taking its lock may have its
    // lock's temporary object removed: it then finds this prune's lock and backs off.
    for l in st.list("tmp/")? {
        cancel.check()?;
        report.tmp_removed += 1;
        report.tmp_bytes += l.size;
        if !opts.dry_run {
            st.delete(&l.path)?;
        }
    }

    if opts.dry_run || delete.is_empty() {
        return Ok(report);
    }
    if uncovered > 0 {
        return Err(Error::corrupt(format!(
            "{uncovered} blob(s) in use are in no pack this prune can see; deleting nothing (run `backstop verify`, then `backstop repair` if needed)"
        )));
    }
    // Every delete runs under a lock still ours: once it is lost, a backup may start and
    // dedup against an old index file that still lists a doomed pack.
    // The guard watches the cancellation token: a cancelled prune stops here too.
    let still_locked = || lock.as_ref().map_or(Ok(()), |l| l.check());
    still_locked()?;
    // One new index without the doomed packs, then the old index files, then the packs.
    let doomed: HashSet<Id> = delete.iter().copied().collect();
    let keep: Vec<IndexPack> = {
        let mut seen = HashSet::new();
        index_files
            .iter()
            .flat_map(|(_, f)| f.packs.iter())
            // Packs missing from the listing stay indexed: a listing may lag behind writes.
            .filter(|p| !doomed.contains(&p.id) && seen.insert(p.id))
            .cloned()
            .collect()
    };
    let new_index = repo.save_index(keep)?;
    crate::failpoint::hit("prune-after-index");
    for (path, _) in &index_files {
        if !path.ends_with(&new_index.to_hex()) {
            still_locked()?;
            st.delete(path)?;
            crate::failpoint::hit("prune-between-deletes");
        }
    }
    for pack in &delete {
        still_locked()?;
        st.delete(&pack::path(pack))?;
        crate::failpoint::hit("prune-between-deletes");
        st.delete(&mark_path(pack))?;
    }
    Ok(report)
}

fn mark_path(pack: &Id) -> String {
    format!("marks/{pack}")
}

/// Every blob (trees, content lists and chunks) the repository's roots reference.
pub fn used_blobs(repo: &Repo, index: &Index) -> Result<HashSet<Id>> {
    let roots = repo.roots()?;
    // A manifest that cannot be read still references data nobody can see: deleting by
    // "unreferenced" would be a guess. Refuse until `repair snapshots` has set it aside.
    if !roots.damaged.is_empty() {
        let names: Vec<&str> = roots.damaged.iter().map(|d| d.path.as_str()).collect();
        return Err(crate::error::Error::corrupt(format!(
            "cannot tell what {} damaged snapshot manifest(s) reference ({}): run `backstop repair snapshots` to set them aside first",
            names.len(),
            names.join(", ")
        )));
    }
    crate::repo::roots::reachable(repo, index, &roots.roots)
        .map_err(|e| e.context("prune needs every tree and content list; run `backstop verify`"))
}

/// Copies the used blobs of `packs` (those no other unmarked pack holds) into new packs,
/// verified and indexed, so the old packs can be marked. Cancelled part way, the packs
/// written so far stay unindexed (the next prune marks them).
fn repack(
    repo: &Repo,
    packs: &[Id],
    indexed: &HashMap<Id, IndexPack>,
    used: &HashSet<Id>,
    marks: &HashMap<Id, DateTime<Utc>>,
    cancel: &Cancel,
) -> Result<()> {
    let st = repo.storage();
    let crypto = repo.crypto();
    let repacking: HashSet<Id> = packs.iter().copied().collect();
    // Blobs already safe elsewhere need no copy.
    let elsewhere: HashSet<Id> = indexed
        .values()
        .filter(|p| !repacking.contains(&p.id) && !marks.contains_key(&p.id))
        .flat_map(|p| p.blobs.iter().map(|b| b.entry.id))
        .collect();
    let mut packer = Packer::new(repo.config().pack_size as usize);
    let mut written = Vec::new();
    let mut copied = HashSet::new();
    let flush = |packer: Packer, written: &mut Vec<IndexPack>| -> Result<()> {
        written.push(repo.store_pack(&packer.finish(crypto))?);
        Ok(())
    };
    for pack_id in packs {
        cancel.check()?;
        let bytes = st.read(&pack::path(pack_id))?;
        if Id::hash(&bytes) != *pack_id {
            return Err(Error::corrupt(format!(
                "pack {pack_id} does not match its hash; run `backstop verify --read-data`"
            )));
        }
        for b in &indexed[pack_id].blobs {
            let id = b.entry.id;
            if !used.contains(&id) || elsewhere.contains(&id) || !copied.insert(id) {
                continue;
            }
            let (lo, hi) = (b.offset as usize, (b.offset + b.entry.stored_len) as usize);
            let stored = bytes.get(lo..hi).ok_or_else(|| {
                Error::corrupt(format!("pack {pack_id} is shorter than its index says"))
            })?;
            // Check before copying: never spread a corrupt blob.
            pack::open_blob(stored, &b.entry, crypto)?;
            packer.add(b.entry.clone(), stored);
            if packer.is_full() {
                flush(packer.take(), &mut written)?;
            }
        }
    }
    if !packer.is_empty() {
        flush(packer, &mut written)?;
    }
    if !written.is_empty() {
        repo.save_index(written)?;
    }
    Ok(())
}
