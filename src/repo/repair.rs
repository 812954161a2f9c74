//! Repair: rebuild the index from the packs themselves ([`run`], `repair index`), and set
//! aside snapshot manifests that cannot be read ([`snapshots`], `repair snapshots`).
//!
//! Index repair:
//! Every pack is read and checked. Intact packs are indexed from their own headers. From a
//! damaged pack (its bytes no longer match its name), blobs that still verify are copied
//! into a new pack and the damaged pack is moved to `damaged/` (kept for forensics, never
//! read again). Packs the old index lists but storage lacks are dropped. The new index
//! replaces the old index files, so blobs that were lost are no longer trusted: the next
//! backup of a source that still has them stores them again.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

use crate::cancel::Cancel;
use crate::error::Result;
use crate::repo::index::{IndexBlob, IndexPack};
use crate::repo::pack::Packer;
use crate::repo::{Id, Repo, id_from_path, pack};

/// What repair found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    /// Packs read.
    pub packs: usize,
    /// Packs intact and indexed.
    pub intact: usize,
    /// Damaged packs moved to `damaged/`.
    pub damaged: Vec<Id>,
    /// Packs the old index listed that are missing from storage.
    pub missing: Vec<Id>,
    /// Blobs salvaged from damaged packs.
    pub salvaged_blobs: usize,
    /// Blobs lost (listed in the old index, now in no pack).
    pub lost_blobs: usize,
}

/// Rebuilds the index; `dry_run` only reports. Stops between packs, and wherever it checks
/// its lock, once `cancel` is cancelled (before the new index: nothing changed but
/// unindexed salvage packs, which the next prune removes).
pub fn run(
    repo: &Repo,
    dry_run: bool,
    retry_lock: Duration,
    cancel: &Cancel,
) -> Result<RepairReport> {
    let lock =
        crate::repo::lock::acquire(repo.storage(), true, "repair", retry_lock)?.watching(cancel);
    let st = repo.storage();
    let crypto = repo.crypto();
    let mut report = RepairReport::default();
    let old_files: Vec<String> = st.list("index/")?.into_iter().map(|l| l.path).collect();
    // The old index may itself be damaged: read what can be read.
    let mut old_packs = HashSet::new();
    let mut old_blobs = HashSet::new();
    for path in &old_files {
        let Ok(id) = id_from_path(path) else { continue };
        match repo
            .read_object(path, &id)
            .and_then(|b| crate::repo::IndexFile::decode(&b))
        {
            Ok(f) => {
                for p in f.packs {
                    old_packs.insert(p.id);
                    old_blobs.extend(p.blobs.iter().map(|b| b.entry.id));
                }
            }
            Err(e) => tracing::warn!("ignoring unreadable index file {path}: {e}"),
        }
    }

    let mut packs = Vec::new();
    let mut salvage = Packer::new(repo.config().pack_size as usize);
    let mut present = HashSet::new();
    let mut have = HashSet::new();
    for l in st.list("data/")? {
        let Ok(id) = id_from_path(&l.path) else {
            continue;
        };
        lock.check()?;
        report.packs += 1;
        present.insert(id);
        let bytes = st.read(&l.path)?;
        let intact = Id::hash(&bytes) == id;
        let located = pack::parse(&bytes, crypto).unwrap_or_default();
        if intact && !located.is_empty() {
            report.intact += 1;
            have.extend(located.iter().map(|b| b.entry.id));
            packs.push(IndexPack {
                id,
                size: bytes.len() as u64,
                blobs: located.into_iter().map(IndexBlob::from).collect(),
            });
            continue;
        }
        report.damaged.push(id);
        for b in located {
            let stored = &bytes[b.offset as usize..(b.offset + b.entry.stored_len) as usize];
            if !have.contains(&b.entry.id) && pack::open_blob(stored, &b.entry, crypto).is_ok() {
                have.insert(b.entry.id);
                report.salvaged_blobs += 1;
                if dry_run {
                    continue;
                }
                salvage.add(b.entry, stored);
                // Stored as they fill (unindexed until the new index): memory stays bounded.
                if salvage.is_full() {
                    packs.push(repo.store_pack(&salvage.take().finish(crypto))?);
                }
            }
        }
    }
    report.missing = old_packs.difference(&present).copied().collect();
    report.lost_blobs = old_blobs.difference(&have).count();
    if dry_run {
        return Ok(report);
    }
    if !salvage.is_empty() {
        packs.push(repo.store_pack(&salvage.finish(crypto))?);
    }
    lock.check()?;
    let new_index = repo.save_index(packs)?;
    for path in &old_files {
        if !path.ends_with(&new_index.to_hex()) {
            lock.check()?;
            st.delete(path)?;
        }
    }
    for id in &report.damaged {
        lock.check()?;
        let bytes = st.read(&pack::path(id))?;
        st.write(&format!("damaged/{id}"), bytes)?;
        st.delete(&pack::path(id))?;
    }
    Ok(report)
}

/// What `repair snapshots` found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotRepairReport {
    /// Manifests read back intact.
    pub intact: usize,
    /// Manifests that failed to read, authenticate or decode, each moved from
    /// `snapshots/<id>` to `damaged/snapshots/<id>` (unless a dry run).
    pub set_aside: Vec<crate::repo::DamagedSnapshot>,
}

/// Moves every snapshot manifest that cannot be read, authenticated or decoded to
/// `damaged/snapshots/<id>`, byte for byte: nothing is rewritten or deleted, so it stays
/// available for forensics, and every other command stops warning about it. Unlike restic's
/// `repair snapshots` nothing is salvaged from it (its tree id is unreadable). Holds the
/// exclusive lock so no backup is committing a manifest meanwhile.
pub fn snapshots(
    repo: &Repo,
    dry_run: bool,
    retry_lock: Duration,
    cancel: &Cancel,
) -> Result<SnapshotRepairReport> {
    let lock =
        crate::repo::lock::acquire(repo.storage(), true, "repair", retry_lock)?.watching(cancel);
    let list = repo.snapshots()?;
    cancel.check()?;
    let mut report = SnapshotRepairReport {
        intact: list.snapshots.len(),
        set_aside: Vec::new(),
    };
    let st = repo.storage();
    for d in list.damaged {
        if !dry_run {
            lock.check()?;
            let name = d.path.rsplit('/').next().unwrap_or(&d.path);
            let bytes = st.read(&d.path)?;
            st.write(&format!("damaged/snapshots/{name}"), bytes)?;
            st.delete(&d.path)?;
        }
        report.set_aside.push(d);
    }
    Ok(report)
}
