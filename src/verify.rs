//! Verification: structure (every referenced blob indexed, every indexed pack present) and
//! data (re-read packs, re-hash them and every blob), naming the snapshots and files affected.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde::Serialize;

use crate::cancel::Cancel;
use crate::error::Result;
use crate::progress::Progress;
use crate::repo::pack;
use crate::repo::roots::{Visit, Walk};
use crate::repo::{Id, Index, Piece, Repo};

/// How much data to re-read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReadData {
    /// Structure only.
    None,
    /// Every pack.
    All,
    /// This share (0–100 %) of the packs, least recently verified first.
    Subset(f64),
}

/// One pack's data check.
#[derive(Clone, Debug, Serialize)]
pub struct PackCheck {
    /// Pack id.
    pub pack: Id,
    /// Error, if the pack is bad.
    pub error: Option<String>,
}

/// Something wrong, and what it affects.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// What is wrong.
    pub message: String,
}

/// A damaged snapshot and the paths in it that are affected.
#[derive(Clone, Debug, Serialize)]
pub struct Affected {
    /// Snapshot id.
    pub snapshot: Id,
    /// Paths (within the snapshot) that cannot be restored intact.
    pub paths: Vec<String>,
}

/// The verification report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Blobs in the index.
    pub blobs: usize,
    /// Packs whose data was re-read.
    pub packs_read: usize,
    /// Bytes re-read.
    pub bytes_read: u64,
    /// Every problem found.
    pub problems: Vec<Problem>,
    /// Per-pack results of the data check (recorded in the catalog).
    pub checked: Vec<PackCheck>,
    /// Snapshots affected by the problems, with the affected paths.
    pub affected: Vec<Affected>,
}

impl VerifyReport {
    /// Whether the repository is intact (as far as checked).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies `repo`; `last_verified` orders packs for a subset check (never verified first).
/// Stops between packs and between snapshots once `cancel` is cancelled.
pub fn run(
    repo: &Repo,
    read: ReadData,
    last_verified: &HashMap<Id, String>,
    retry_lock: std::time::Duration,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let _lock = crate::repo::lock::acquire(repo.storage(), false, "verify", retry_lock)?;
    cancel.check()?;
    let index = repo.load_index()?;
    let roots = repo.roots()?;
    let mut report = VerifyReport {
        snapshots: roots.roots.len(),
        packs: index.packs().len(),
        blobs: index.entries().len(),
        ..Default::default()
    };
    for d in &roots.damaged {
        report.problems.push(Problem {
            message: format!(
                "snapshot manifest {} is damaged: {} (`backstop repair snapshots` sets it aside)",
                d.path, d.error
            ),
        });
    }
    let mut bad_blobs: HashSet<Id> = HashSet::new();

    // Indexed packs must exist with the indexed size.
    let present: HashMap<String, u64> = repo
        .storage()
        .list("data/")?
        .into_iter()
        .map(|l| (l.path, l.size))
        .collect();
    for (id, size) in index.packs() {
        let listed = match present.get(&pack::path(id)) {
            // A listing may lag behind writes: ask for the object itself before blaming it.
            None => repo.storage().size(&pack::path(id)).ok(),
            s => s.copied(),
        };
        match listed.as_ref() {
            None => {
                report.problems.push(Problem {
                    message: format!("pack {id} is missing"),
                });
                mark_pack(&index, id, &mut bad_blobs);
            }
            Some(s) if s != size => {
                report.problems.push(Problem {
                    message: format!("pack {id} has {s} bytes, the index says {size}"),
                });
                mark_pack(&index, id, &mut bad_blobs);
            }
            Some(_) => {}
        }
    }

    // Data: re-read packs.
    let mut packs: Vec<(Id, u64)> = index.packs().to_vec();
    let packs: Vec<(Id, u64)> = match read {
        ReadData::None => vec![],
        ReadData::All => packs,
        ReadData::Subset(pct) => {
            packs.sort_by(|a, b| {
                let la = last_verified.get(&a.0).map(String::as_str).unwrap_or("");
                let lb = last_verified.get(&b.0).map(String::as_str).unwrap_or("");
                la.cmp(lb).then(a.0.cmp(&b.0))
            });
            let n = ((packs.len() as f64) * pct / 100.0).ceil() as usize;
            packs.truncate(n.min(packs.len()));
            packs
        }
    };
    progress.phase("verify", Some(packs.iter().map(|p| p.1).sum()));
    let results = Mutex::new(Vec::new());
    let work = Mutex::new(packs);
    // Checkers log in the job's span (its kind and run id).
    let span = tracing::Span::current();
    std::thread::scope(|s| {
        for _ in 0..std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
        {
            s.spawn(|| {
                let _e = span.enter();
                while !cancel.is_cancelled() {
                    let next = work.lock().expect("lock").pop();
                    let Some((id, size)) = next else { break };
                    let res = check_pack(repo, &index, &id);
                    progress.bytes(size);
                    results.lock().expect("lock").push((id, size, res));
                }
            });
        }
    });
    cancel.check()?;
    for (id, size, res) in results.into_inner().expect("lock") {
        report.packs_read += 1;
        report.bytes_read += size;
        let error = match res {
            Ok(bad) if bad.is_empty() => None,
            Ok(bad) => {
                let msg = format!("pack {id}: {} blob(s) corrupt", bad.len());
                bad_blobs.extend(bad);
                Some(msg)
            }
            Err(e) => {
                mark_pack(&index, &id, &mut bad_blobs);
                Some(format!("pack {id}: {}", crate::error::chain(&e)))
            }
        };
        if let Some(msg) = &error {
            report.problems.push(Problem {
                message: msg.clone(),
            });
        }
        report.checked.push(PackCheck { pack: id, error });
    }

    // Structure: every root's trees and chunks must be indexed (and not known bad).
    for root in &roots.roots {
        cancel.check()?;
        let sid = &root.id;
        let mut paths = Vec::new();
        let mut names = Vec::new();
        walk(repo, &index, &bad_blobs, root.tree, &mut paths, &mut names);
        // A name restore would refuse makes the snapshot unrestorable: a problem.
        for n in names {
            report.problems.push(Problem {
                message: format!("snapshot {}: {n}", sid.short()),
            });
        }
        if !paths.is_empty() {
            report.problems.push(Problem {
                message: format!(
                    "snapshot {} is damaged: {} path(s) affected",
                    sid.short(),
                    paths.len()
                ),
            });
            report.affected.push(Affected {
                snapshot: *sid,
                paths,
            });
        }
    }
    progress.finish();
    Ok(report)
}

fn mark_pack(index: &Index, pack: &Id, bad: &mut HashSet<Id>) {
    let n = index.packs().iter().position(|p| p.0 == *pack);
    for e in index.entries() {
        if Some(e.pack as usize) == n {
            bad.insert(e.id);
        }
    }
}

/// Re-reads a pack: its hash, its header, every blob; returns the ids of corrupt blobs.
fn check_pack(repo: &Repo, index: &Index, id: &Id) -> Result<Vec<Id>> {
    let mut bytes = repo.storage().read(&pack::path(id))?;
    for _ in 0..2 {
        // Read a mismatching pack again before blaming it: the transfer may be at fault.
        if Id::hash(&bytes) == *id {
            break;
        }
        tracing::info!(
            "retrying {} after a transient error: it does not match its hash",
            pack::path(id)
        );
        bytes = repo.storage().read(&pack::path(id))?;
    }
    if Id::hash(&bytes) != *id {
        // The name no longer matches: find out which blobs are still good.
        tracing::warn!("pack {id} does not match its hash");
    }
    let mut bad = Vec::new();
    let located = match pack::parse(&bytes, repo.crypto()) {
        Ok(l) => l,
        Err(_) => {
            // Header unusable: check the indexed blobs one by one.
            let n = index.packs().iter().position(|p| p.0 == *id);
            for e in index
                .entries()
                .iter()
                .filter(|e| Some(e.pack as usize) == n)
            {
                let (lo, hi) = (e.offset as usize, e.offset as usize + e.stored_len as usize);
                if hi > bytes.len()
                    || pack::open_blob(&bytes[lo..hi], &e.header(), repo.crypto()).is_err()
                {
                    bad.push(e.id);
                }
            }
            return Ok(bad);
        }
    };
    for l in located {
        let (lo, hi) = (l.offset as usize, (l.offset + l.entry.stored_len) as usize);
        if pack::open_blob(&bytes[lo..hi], &l.entry, repo.crypto()).is_err() {
            bad.push(l.entry.id);
        }
    }
    if bad.is_empty() && Id::hash(&bytes) != *id {
        return Err(crate::error::Error::corrupt("pack does not match its hash"));
    }
    Ok(bad)
}

/// Walks one snapshot: paths that cannot be restored intact go to `affected`, names restore
/// would refuse to `names`.
fn walk(
    repo: &Repo,
    index: &Index,
    bad: &HashSet<Id>,
    tree: Id,
    affected: &mut Vec<String>,
    names: &mut Vec<String>,
) {
    let shown = |path: &str| format!("/{path}");
    Walk::new(repo, index)
        .distrusting(bad)
        .run(tree, &mut |v| match v {
            Visit::Unreadable { path, error, .. } => {
                let dir = if path.is_empty() {
                    "/".to_string()
                } else {
                    format!("/{path}/")
                };
                affected.push(format!("{dir} (whole directory: {error})"));
            }
            Visit::Tree { path, tree, .. } => {
                let mut seen = HashSet::new();
                for node in &tree.nodes {
                    let problem = if !node.has_safe_name() {
                        "not a plain file name"
                    } else if !seen.insert(&node.name) {
                        "a duplicate entry"
                    } else {
                        continue;
                    };
                    let dir = if path.is_empty() {
                        String::new()
                    } else {
                        shown(path)
                    };
                    names.push(format!(
                        "entry {:?} in {dir}/: {problem}",
                        String::from_utf8_lossy(&node.name),
                    ));
                }
            }
            Visit::File { path, content, .. } => {
                let missing = match content {
                    Ok(content) => content.iter().any(|p| match p {
                        Piece::Chunk(id, _) => bad.contains(id) || !index.contains(id),
                        _ => false,
                    }),
                    Err(_) => true,
                };
                if missing {
                    affected.push(shown(path));
                }
            }
        });
}
