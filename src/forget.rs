//! Forget: remove snapshot manifests, chosen by retention rules or named by id. Their data
//! stays until `prune` finds it unreferenced.
//!
//! A manifest that cannot be read is never counted, kept or removed silently: it is listed
//! in [`ForgetReport::skipped`] (and `repair snapshots` sets it aside). Rules that would
//! remove every snapshot of a group are refused by [`retention::decide`] before anything is
//! removed.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::policy::retention::{self, Candidate, KeepRules};
use crate::repo::{DamagedSnapshot, Id, Repo, Snapshot};

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

/// What forget decided and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ForgetReport {
    /// Every snapshot considered, with its decision.
    pub decisions: Vec<Forgotten>,
    /// Manifests that could not be read: neither kept nor removed.
    pub skipped: Vec<DamagedSnapshot>,
    /// Archived WAL batches removed (or, in a dry run, that would be): those no retained
    /// physical PostgreSQL base backup needs.
    pub wal_removed: Vec<Id>,
}

impl ForgetReport {
    /// Ids of the snapshots removed (or, in a dry run, that would be).
    pub fn removed(&self) -> Vec<Id> {
        self.decisions
            .iter()
            .filter(|f| !f.decision.keep)
            .map(|f| f.id)
            .collect()
    }
}

/// Which snapshots to remove.
#[derive(Clone, Copy, Debug)]
pub enum Selection<'a> {
    /// Those the rules do not keep.
    Rules(&'a KeepRules),
    /// Exactly these, by full id or unique prefix (at least 4 hex digits).
    Ids(&'a [String]),
}

/// Decides, and unless `dry_run` removes, the snapshots `sel` selects. The decisions
/// printed by a dry run are exactly those a real run applies (same function, same input).
/// Once `cancel` is cancelled no further manifest is removed (each removal stands alone).
pub fn run<Z: TimeZone>(
    repo: &Repo,
    sel: Selection,
    tz: &Z,
    now: DateTime<Utc>,
    dry_run: bool,
    retry_lock: Duration,
    cancel: &Cancel,
) -> Result<ForgetReport> {
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
    cancel.check()?;
    let list = repo.snapshots()?;
    let skipped = list.damaged.clone();
    let snaps = list.snapshots;
    let decisions = match sel {
        Selection::Rules(rules) => {
            let cands: Vec<Candidate> = snaps
                .iter()
                .map(|(id, s)| Candidate {
                    id: *id,
                    time: s.time,
                    group: format!("{} {}", s.source, s.source_key()),
                    tags: s.tags.clone(),
                })
                .collect();
            retention::decide(&cands, rules, tz, now)?
        }
        Selection::Ids(specs) => {
            let chosen = resolve(&snaps, specs)?;
            snaps
                .iter()
                .map(|(id, _)| retention::Decision {
                    id: *id,
                    keep: !chosen.contains(id),
                    reasons: if chosen.contains(id) {
                        vec![]
                    } else {
                        vec!["not named".into()]
                    },
                })
                .collect()
        }
    };
    let named_only = matches!(sel, Selection::Ids(_));
    let wal_removed = unneeded_wal(repo, &snaps, &decisions, !skipped.is_empty())?;
    let mut out = ForgetReport {
        decisions: Vec::new(),
        skipped,
        wal_removed,
    };
    for ((id, snapshot), decision) in snaps.into_iter().zip(decisions) {
        if !decision.keep && !dry_run {
            cancel.check()?;
            repo.storage().delete(&format!("snapshots/{id}"))?;
        }
        // Forgetting by id lists only what was named.
        if named_only && decision.keep {
            continue;
        }
        out.decisions.push(Forgotten {
            id,
            snapshot,
            decision,
        });
    }
    if !dry_run {
        for id in &out.wal_removed {
            cancel.check()?;
            repo.storage().delete(&format!("wal/{id}"))?;
        }
    }
    Ok(out)
}

/// The archived WAL batches that no kept physical base backup needs: before the oldest kept
/// one's start segment. None while no base backup is kept, while one of them does not
/// record its start, or while a manifest could not be read (`damaged`): it may be one.
fn unneeded_wal(
    repo: &Repo,
    snaps: &[(Id, Snapshot)],
    decisions: &[retention::Decision],
    damaged: bool,
) -> Result<Vec<Id>> {
    let starts: Vec<Option<&String>> = snaps
        .iter()
        .zip(decisions)
        .filter(|((_, s), d)| {
            d.keep
                && s.source == "postgres"
                && s.paths
                    .iter()
                    .any(|p| p == crate::source::postgres::BASE_TAR)
        })
        .map(|((_, s), _)| s.wal_start.as_ref())
        .collect();
    if damaged || starts.is_empty() || starts.contains(&None) {
        return Ok(Vec::new());
    }
    let start = starts.into_iter().flatten().min().expect("not empty");
    Ok(crate::wal::unneeded(&repo.wal_batches()?, start))
}

/// Resolves each spec to exactly one snapshot; all must resolve before anything is removed.
fn resolve(snaps: &[(Id, Snapshot)], specs: &[String]) -> Result<Vec<Id>> {
    let mut out = Vec::new();
    for spec in specs {
        let spec = spec.to_ascii_lowercase();
        if spec.len() < 4 {
            return Err(Error::config(format!(
                "'{spec}': give at least 4 digits of a snapshot id"
            )));
        }
        let hits: Vec<&Id> = snaps
            .iter()
            .map(|(id, _)| id)
            .filter(|id| id.to_hex().starts_with(&spec))
            .collect();
        match hits.as_slice() {
            [one] => out.push(**one),
            [] => return Err(Error::config(format!("no snapshot matches '{spec}'"))),
            many => {
                let ids: Vec<String> = many.iter().map(|i| i.short()).collect();
                return Err(Error::config(format!(
                    "snapshot id prefix '{spec}' is ambiguous: it matches {}",
                    ids.join(", ")
                )));
            }
        }
    }
    Ok(out)
}
