//! Retention table tests: rules, groups, tags, time zones and DST changes.

use chrono_tz::Tz;
use rstest::rstest;

use super::*;

fn rules(spec: &str) -> KeepRules {
    let mut r = KeepRules::default();
    for part in spec.split_whitespace() {
        let (k, v) = part.split_once('=').expect("k=v");
        let n = || Some(v.parse::<u32>().expect("number"));
        match k {
            "last" => r.keep_last = n(),
            "hourly" => r.keep_hourly = n(),
            "daily" => r.keep_daily = n(),
            "weekly" => r.keep_weekly = n(),
            "monthly" => r.keep_monthly = n(),
            "quarterly" => r.keep_quarterly = n(),
            "yearly" => r.keep_yearly = n(),
            "within" => r.keep_within = Some(v.into()),
            "tag" => r.keep_tags.push(v.into()),
            _ => panic!("unknown rule {k}"),
        }
    }
    r
}

/// Snapshots as "TIME[@group][#tag]"; returns the indices kept.
fn kept(snaps: &[&str], spec: &str, tz: &str, now: &str) -> Vec<usize> {
    let cands: Vec<Candidate> = snaps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (rest, tag) = s.split_once('#').map_or((*s, None), |(a, b)| (a, Some(b)));
            let (time, group) = rest.split_once('@').unwrap_or((rest, "g"));
            Candidate {
                id: Id([i as u8; 32]),
                time: time.parse().expect("time"),
                group: group.into(),
                tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
            }
        })
        .collect();
    let tz: Tz = tz.parse().expect("tz");
    let d = decide(&cands, &rules(spec), &tz, now.parse().expect("now")).expect("decide");
    d.iter()
        .enumerate()
        .filter(|(_, d)| d.keep)
        .map(|(i, _)| i)
        .collect()
}

const NOW: &str = "2026-11-21T12:00:00Z";

#[rstest]
// No rules keeps all; keep-last.
#[case(&["2026-11-20T10:00:00Z", "2026-11-21T10:00:00Z"], "", "UTC", &[0, 1])]
#[case(&["2026-11-19T10:00:00Z", "2026-11-20T10:00:00Z", "2026-11-21T10:00:00Z"], "last=1", "UTC", &[2])]
#[case(&["2026-11-19T10:00:00Z", "2026-11-20T10:00:00Z"], "last=5", "UTC", &[0, 1])]
// Daily keeps the newest of each day; only days that have snapshots count.
#[case(&["2026-11-19T08:00:00Z", "2026-11-19T20:00:00Z", "2026-11-20T08:00:00Z", "2026-11-20T20:00:00Z", "2026-11-21T08:00:00Z"], "daily=2", "UTC", &[3, 4])]
#[case(&["2026-11-01T08:00:00Z", "2026-11-10T08:00:00Z", "2026-11-21T08:00:00Z"], "daily=7", "UTC", &[0, 1, 2])]
#[case(&["2026-11-21T08:00:00Z"], "daily=3", "UTC", &[0])]
// Hourly.
#[case(&["2026-11-21T08:10:00Z", "2026-11-21T08:50:00Z", "2026-11-21T09:10:00Z", "2026-11-21T10:10:00Z"], "hourly=2", "UTC", &[2, 3])]
// Weekly across a Sunday/Monday boundary and an ISO year boundary (2020 has week 53).
#[case(&["2026-11-15T10:00:00Z", "2026-11-16T10:00:00Z", "2026-11-17T10:00:00Z"], "weekly=2", "UTC", &[0, 2])]
#[case(&["2020-12-31T10:00:00Z", "2021-01-03T10:00:00Z", "2021-01-04T10:00:00Z"], "weekly=2", "UTC", &[1, 2])]
// Monthly.
#[case(&["2026-09-30T10:00:00Z", "2026-10-01T10:00:00Z", "2026-10-31T10:00:00Z", "2026-11-01T10:00:00Z"], "monthly=2", "UTC", &[2, 3])]
// Quarterly at quarter boundaries.
#[case(&["2026-03-31T10:00:00Z", "2026-04-01T10:00:00Z", "2026-06-30T10:00:00Z", "2026-07-01T10:00:00Z"], "quarterly=3", "UTC", &[0, 2, 3])]
// Yearly.
#[case(&["2024-12-31T10:00:00Z", "2025-06-01T10:00:00Z", "2025-12-31T10:00:00Z", "2026-01-01T10:00:00Z"], "yearly=2", "UTC", &[2, 3])]
// Keep-within.
#[case(&["2026-11-18T11:00:00Z", "2026-11-19T13:00:00Z", "2026-11-21T11:00:00Z"], "within=2d", "UTC", &[1, 2])]
#[case(&["2026-11-13T12:00:00Z", "2026-11-15T12:00:00Z"], "within=1w", "UTC", &[1])]
#[case(&["2026-11-20T00:00:00Z", "2026-11-21T11:00:00Z"], "within=1d12h", "UTC", &[0, 1])]
// Tags.
#[case(&["2026-11-01T10:00:00Z#keep", "2026-11-10T10:00:00Z", "2026-11-21T10:00:00Z"], "last=1 tag=keep", "UTC", &[0, 2])]
#[case(&["2026-11-01T10:00:00Z#a", "2026-11-10T10:00:00Z#b"], "tag=b", "UTC", &[1])]
// One snapshot kept by several rules is kept once; rules don't shift each other.
#[case(&["2026-11-20T10:00:00Z", "2026-11-21T10:00:00Z"], "daily=1 weekly=1 monthly=1", "UTC", &[1])]
// Groups (host and paths) are independent.
#[case(&["2026-11-20T10:00:00Z@a", "2026-11-21T10:00:00Z@a", "2026-11-19T10:00:00Z@b"], "last=1", "UTC", &[1, 2])]
// Days in a time zone: 15:30Z and 16:30Z are one UTC day but two Shanghai days.
#[case(&["2026-11-20T15:30:00Z", "2026-11-20T16:30:00Z"], "daily=2", "UTC", &[1])]
#[case(&["2026-11-20T15:30:00Z", "2026-11-20T16:30:00Z"], "daily=2", "Asia/Shanghai", &[0, 1])]
// Months in a time zone: 2026-10-31T17:00Z is 1 November in Shanghai.
#[case(&["2026-10-31T10:00:00Z", "2026-10-31T17:00:00Z"], "monthly=1", "Asia/Shanghai", &[1])]
#[case(&["2026-10-31T10:00:00Z", "2026-10-31T17:00:00Z", "2026-11-05T17:00:00Z"], "monthly=2", "Asia/Shanghai", &[0, 2])]
// Quarters in a time zone: 2026-03-31T20:00Z is 1 April in Shanghai.
#[case(&["2026-03-31T10:00:00Z", "2026-03-31T20:00:00Z"], "quarterly=2", "Asia/Shanghai", &[0, 1])]
// Years in a time zone: 2025-12-31T12:00Z is already 2026 in Auckland.
#[case(&["2025-12-31T09:00:00Z", "2025-12-31T12:00:00Z"], "yearly=2", "Pacific/Auckland", &[0, 1])]
#[case(&["2025-12-31T09:00:00Z", "2025-12-31T12:00:00Z"], "yearly=2", "UTC", &[1])]
// Half-hour offsets: 10:40Z and 11:20Z are 16:10 and 16:50 in Kolkata, one hour.
#[case(&["2026-11-21T10:40:00Z", "2026-11-21T11:20:00Z"], "hourly=2", "Asia/Kolkata", &[1])]
#[case(&["2026-11-21T10:40:00Z", "2026-11-21T11:20:00Z"], "hourly=2", "UTC", &[0, 1])]
// DST fall back in New York (2026-11-01): 05:30Z and 06:30Z are both 01:30 local.
#[case(&["2026-11-01T04:30:00Z", "2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z"], "hourly=2", "America/New_York", &[0, 2])]
// DST spring forward (2026-03-08): 06:30Z is 01:30 EST, 07:30Z is 03:30 EDT.
#[case(&["2026-03-08T06:30:00Z", "2026-03-08T07:30:00Z"], "hourly=2", "America/New_York", &[0, 1])]
// The DST-change day is one day in Berlin (2026-10-25 has 25 hours): 24T22:30Z is 00:30
// CEST and 25T22:30Z is 23:30 CET, both on the 25th; 25T23:30Z is the 26th.
#[case(&["2026-10-24T22:30:00Z", "2026-10-25T22:30:00Z", "2026-10-25T23:30:00Z"], "daily=3", "Europe/Berlin", &[1, 2])]
#[case(&["2026-10-24T22:30:00Z", "2026-10-25T21:30:00Z", "2026-10-25T22:30:00Z"], "daily=3", "Europe/Berlin", &[2])]
#[case(&["2026-10-24T22:30:00Z", "2026-10-25T21:30:00Z", "2026-10-25T22:30:00Z"], "daily=3", "UTC", &[0, 2])]
// The input order does not matter.
#[case(&["2026-11-21T10:00:00Z", "2026-11-19T10:00:00Z", "2026-11-20T10:00:00Z"], "last=2", "UTC", &[0, 2])]
// Weekly in a time zone: Sunday 2026-11-15T17:00Z is Monday in Shanghai.
#[case(&["2026-11-15T10:00:00Z", "2026-11-15T17:00:00Z"], "weekly=2", "Asia/Shanghai", &[0, 1])]
fn retention_table(
    #[case] snaps: &[&str],
    #[case] spec: &str,
    #[case] tz: &str,
    #[case] want: &[usize],
) {
    assert_eq!(kept(snaps, spec, tz, NOW), want, "rules '{spec}' in {tz}");
}

#[rstest]
#[case("90s", 90)]
#[case("30m", 1800)]
#[case("36h", 129_600)]
#[case("1d12h", 129_600)]
#[case("2w", 1_209_600)]
fn durations(#[case] s: &str, #[case] secs: i64) {
    assert_eq!(parse_duration(s).unwrap().num_seconds(), secs);
}

#[rstest]
#[case("")]
#[case("10")]
#[case("5x")]
#[case("h")]
fn bad_durations(#[case] s: &str) {
    assert!(parse_duration(s).is_err());
}

#[test]
fn reasons_name_every_rule() {
    let cands = vec![Candidate {
        id: Id([1; 32]),
        time: "2026-11-21T10:00:00Z".parse().unwrap(),
        group: "g".into(),
        tags: vec!["x".into()],
    }];
    let d = decide(
        &cands,
        &rules("last=1 daily=1 tag=x"),
        &chrono_tz::UTC,
        NOW.parse().unwrap(),
    )
    .unwrap();
    assert_eq!(d[0].reasons, ["last", "daily", "tag x"]);
}

#[rstest]
#[case("last=0", "keep-last")]
#[case("daily=0", "keep-daily")]
#[case("hourly=0 weekly=3", "keep-hourly")]
#[case("yearly=0", "keep-yearly")]
#[case("within=5x", "keep-within")]
fn zero_keep_counts_are_rejected(#[case] spec: &str, #[case] key: &str) {
    let r = rules(spec);
    let problems = r.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, key);
    let err = decide(&[], &r, &chrono_tz::UTC, NOW.parse().unwrap()).unwrap_err();
    assert_eq!(err.kind(), crate::error::ErrorKind::Config);
}

fn two_old_snapshots() -> Vec<Candidate> {
    (0..2u8)
        .map(|i| Candidate {
            id: Id([i; 32]),
            time: format!("2026-11-1{i}T10:00:00Z").parse().unwrap(),
            group: "g".into(),
            tags: vec![],
        })
        .collect()
}

#[test]
fn rules_that_remove_every_snapshot_of_a_group_are_refused() {
    let snaps = two_old_snapshots();
    let err = decide(
        &snaps,
        &rules("within=1h"),
        &chrono_tz::UTC,
        NOW.parse().unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), crate::error::ErrorKind::Config);
    assert!(err.to_string().contains("group 'g'"), "{err}");
    // A tag nobody has keeps nothing either.
    assert!(
        decide(
            &snaps,
            &rules("tag=none"),
            &chrono_tz::UTC,
            NOW.parse().unwrap()
        )
        .is_err()
    );
    // Allowed explicitly: every snapshot is removed.
    let mut r = rules("within=1h");
    r.allow_empty = true;
    let d = decide(&snaps, &r, &chrono_tz::UTC, NOW.parse().unwrap()).unwrap();
    assert!(d.iter().all(|d| !d.keep));
    // allow-empty alone is no rule: nothing is removed.
    let only = KeepRules {
        allow_empty: true,
        ..Default::default()
    };
    assert!(only.is_empty());
}
