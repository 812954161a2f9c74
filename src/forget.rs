//! Forget: apply retention rules to a repository's snapshots, removing the manifests of those
//! no rule keeps. Their data stays until `prune` finds it unreferenced.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::policy::retention::{self, Candidate, KeepRules};
use crate::repo::{Id, Repo, Snapshot};

/// One snapshot with the decision about it.
#[derive(Clone, Debug, Serialize)]
pub struct Forgotten {
    /// Snapshot id.
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Kept, and why; or removed.
    pub decision: retention::Decision,
}

/// Decides, and unless `dry_run` removes, the snapshots `rules` do not keep. The decisions
/// printed by a dry run are exactly those a real run applies (same function, same input).
pub fn run<Z: TimeZone>(
    repo: &Repo,
    rules: &KeepRules,
    tz: &Z,
    now: DateTime<Utc>,
    dry_run: bool,
    retry_lock: Duration,
) -> Result<Vec<Forgotten>> {
    let _lock = if dry_run {
        None
    } else {
        Some(crate::repo::lock::acquire(
            repo.storage(),
            true,
            "forget",
            retry_lock,
        )?)
    };
    let snaps = repo.snapshots()?;
    let cands: Vec<Candidate> = snaps
        .iter()
        .map(|(id, s)| Candidate {
            id: *id,
            time: s.time,
            group: format!("{} {}", s.hostname, s.paths.join(" ")),
            tags: s.tags.clone(),
        })
        .collect();
    let decisions = retention::decide(&cands, rules, tz, now)?;
    let mut out = Vec::new();
    for ((id, snapshot), decision) in snaps.into_iter().zip(decisions) {
        if !decision.keep && !dry_run {
            repo.storage().delete(&format!("snapshots/{id}"))?;
        }
        out.push(Forgotten {
            id,
            snapshot,
            decision,
        });
    }
    Ok(out)
}
