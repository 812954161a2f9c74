//! Retention: which snapshots to keep, as a pure function of the snapshot list, the rules,
//! the time zone and `now`, with the reasons for every decision.
//!
//! Like restic and Proxmox: snapshots are grouped (same host and paths); in each group,
//! newest first, `keep-last N` keeps the N newest, and each calendar rule (`hourly`, `daily`,
//! `weekly`, `monthly`, `quarterly`, `yearly`) keeps the newest snapshot of each of the N
//! most recent periods that have one, periods taken in the given time zone. `keep-within`
//! keeps everything newer than `now - duration`; `keep-tag` keeps snapshots with a tag.
//! A snapshot no rule keeps is removed. With no rule at all, nothing is removed.
//!
//! Guards against rules that keep nothing: a count of 0 is rejected where it is written
//! (flags, policy files), and a rule set that would remove every snapshot of a group is
//! refused as a whole (nothing removed) unless `allow-empty` is set.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::Id;

/// Retention rules, as written in a policy's `[retention]` table or given as flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct KeepRules {
    /// Keep the N most recent snapshots.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N quarters that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_quarterly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot newer than this (e.g. 36h, 14d, 2w).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    #[serde(rename = "keep-tag")]
    pub keep_tags: Vec<String>,
    /// Allow the rules to remove every snapshot of a group (refused otherwise).
    #[arg(long)]
    pub allow_empty: bool,
}

impl KeepRules {
    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        KeepRules {
            allow_empty: false,
            ..self.clone()
        } == KeepRules::default()
    }

    /// Rules from flags override the same rules from a policy file, one by one.
    pub fn merged_over(&self, base: &KeepRules) -> KeepRules {
        KeepRules {
            keep_last: self.keep_last.or(base.keep_last),
            keep_hourly: self.keep_hourly.or(base.keep_hourly),
            keep_daily: self.keep_daily.or(base.keep_daily),
            keep_weekly: self.keep_weekly.or(base.keep_weekly),
            keep_monthly: self.keep_monthly.or(base.keep_monthly),
            keep_quarterly: self.keep_quarterly.or(base.keep_quarterly),
            keep_yearly: self.keep_yearly.or(base.keep_yearly),
            keep_within: self
                .keep_within
                .clone()
                .or_else(|| base.keep_within.clone()),
            keep_tags: if self.keep_tags.is_empty() {
                base.keep_tags.clone()
            } else {
                self.keep_tags.clone()
            },
            allow_empty: self.allow_empty || base.allow_empty,
        }
    }

    /// Every bad value, as (key as written in a policy file, message): counts of 0 (which
    /// would keep nothing) and durations that do not parse.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (key, n) in [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-quarterly", self.keep_quarterly),
            ("keep-yearly", self.keep_yearly),
        ] {
            if n == Some(0) {
                out.push((
                    key,
                    format!("{key} = 0 keeps nothing: give at least 1, or leave the rule out"),
                ));
            }
        }
        if let Some(d) = &self.keep_within
            && let Err(e) = parse_duration(d)
        {
            out.push(("keep-within", format!("keep-within: {e}")));
        }
        out
    }

    /// Checks values: no count of 0, durations parse.
    pub fn validate(&self) -> Result<()> {
        match self.problems().into_iter().next() {
            Some((_, msg)) => Err(Error::config(msg)),
            None => Ok(()),
        }
    }
}

/// Parses `90s`, `30m`, `36h`, `14d`, `2w`, or combinations like `1d12h`.
pub fn parse_duration(s: &str) -> Result<chrono::Duration> {
    let bad = || {
        Error::config(format!(
            "'{s}' is not a duration (use e.g. 30m, 36h, 14d, 2w)"
        ))
    };
    let mut total = chrono::Duration::zero();
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += match c {
            's' => chrono::Duration::seconds(n),
            'm' => chrono::Duration::minutes(n),
            'h' => chrono::Duration::hours(n),
            'd' => chrono::Duration::days(n),
            'w' => chrono::Duration::weeks(n),
            'y' => chrono::Duration::days(365 * n),
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() || s.trim().is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// What retention needs to know of a snapshot.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Snapshot id.
    pub id: Id,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Group key (source kind and key: host and paths for files): rules apply within a group.
    pub group: String,
    /// Its tags.
    pub tags: Vec<String>,
}

/// The decision for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Snapshot id.
    pub id: Id,
    /// Keep or remove.
    pub keep: bool,
    /// The rules that keep it (empty when removed).
    pub reasons: Vec<String>,
}

/// Decides which snapshots to keep. Output is in the input's order.
pub fn decide<Z: TimeZone>(
    snaps: &[Candidate],
    rules: &KeepRules,
    tz: &Z,
    now: DateTime<Utc>,
) -> Result<Vec<Decision>> {
    rules.validate()?;
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); snaps.len()];
    if rules.is_empty() {
        for r in &mut reasons {
            r.push("no retention rule given".into());
        }
    }
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in snaps.iter().enumerate() {
        groups.entry(&s.group).or_default().push(i);
    }
    let within = rules
        .keep_within
        .as_deref()
        .map(parse_duration)
        .transpose()?;
    type KeyFn<'a, Z> = Box<dyn Fn(&DateTime<Z>) -> i64 + 'a>;
    let calendar: Vec<(&str, Option<u32>, KeyFn<Z>)> = vec![
        (
            "hourly",
            rules.keep_hourly,
            Box::new(|t: &DateTime<Z>| day_key(t) * 24 + i64::from(t.hour())),
        ),
        (
            "daily",
            rules.keep_daily,
            Box::new(|t: &DateTime<Z>| day_key(t)),
        ),
        (
            "weekly",
            rules.keep_weekly,
            Box::new(|t: &DateTime<Z>| {
                let w = t.iso_week();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }),
        ),
        (
            "monthly",
            rules.keep_monthly,
            Box::new(|t: &DateTime<Z>| i64::from(t.year()) * 12 + i64::from(t.month0())),
        ),
        (
            "quarterly",
            rules.keep_quarterly,
            Box::new(|t: &DateTime<Z>| i64::from(t.year()) * 4 + i64::from(t.month0() / 3)),
        ),
        (
            "yearly",
            rules.keep_yearly,
            Box::new(|t: &DateTime<Z>| i64::from(t.year())),
        ),
    ];
    for members in groups.values() {
        // Newest first; ties broken by id so the result does not depend on input order.
        let mut order = members.clone();
        order.sort_by(|&a, &b| {
            snaps[b]
                .time
                .cmp(&snaps[a].time)
                .then(snaps[b].id.cmp(&snaps[a].id))
        });
        if let Some(n) = rules.keep_last {
            for &i in order.iter().take(n as usize) {
                reasons[i].push("last".into());
            }
        }
        for (name, count, key) in &calendar {
            let Some(n) = count else { continue };
            let mut left = *n;
            let mut last_key = None;
            for &i in &order {
                if left == 0 {
                    break;
                }
                let k = key(&snaps[i].time.with_timezone(tz));
                if last_key != Some(k) {
                    reasons[i].push((*name).to_string());
                    last_key = Some(k);
                    left -= 1;
                }
            }
        }
        for &i in &order {
            if let Some(d) = within
                && snaps[i].time >= now - d
            {
                reasons[i].push(format!(
                    "within {}",
                    rules.keep_within.as_deref().unwrap_or_default()
                ));
            }
            for t in &snaps[i].tags {
                if rules.keep_tags.contains(t) {
                    reasons[i].push(format!("tag {t}"));
                }
            }
        }
    }
    if !rules.allow_empty {
        for (group, members) in &groups {
            if members.iter().all(|&i| reasons[i].is_empty()) {
                return Err(Error::config(format!(
                    "refusing to remove all {} snapshot(s) of group '{group}': the rules keep none of them \
                     (give --allow-empty, or allow-empty = true in [retention], if that is meant)",
                    members.len()
                )));
            }
        }
    }
    Ok(snaps
        .iter()
        .zip(reasons)
        .map(|(s, r)| Decision {
            id: s.id,
            keep: !r.is_empty(),
            reasons: r,
        })
        .collect())
}

fn day_key<Z: TimeZone>(t: &DateTime<Z>) -> i64 {
    i64::from(t.date_naive().num_days_from_ce())
}

#[cfg(test)]
mod tests;
