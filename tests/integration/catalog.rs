//! The catalog suite: the same cases on SQLite and on the real PostgreSQL at
//! 127.0.0.1:5432 (each PostgreSQL case in its own database, created and dropped), and the
//! CLI recording into a PostgreSQL catalog (issue #7 item 6).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use backstop::catalog::{Catalog, NewRun, RepoKey, RunEnd, blocking};
use backstop::{Id, Snapshot};
use chrono::{DateTime, TimeZone, Utc};

use super::common::Env;

/// The server the PostgreSQL cases run on (trust authentication for `postgres`).
const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A uniquely named database on the real server, dropped when this goes out of scope,
/// also when the test failed (a panic unwinds through it).
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let name = format!(
            "backstop_it_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        if let Err(e) = admin(&format!("CREATE DATABASE \"{name}\"")) {
            panic!(
                "cannot create a test database on {PG_SERVER} (is PostgreSQL running? .ci/run \
                 starts it): {e}"
            );
        }
        PgDatabase { name }
    }

    pub fn url(&self) -> String {
        format!("{PG_SERVER}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // FORCE: a pool the failed test left open must not keep the database alive.
        if let Err(e) = admin(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Runs one statement on the server's `postgres` database.
fn admin(sql: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres")).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await?;
        c.close().await
    })
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `case` with the URL of a fresh, empty catalog on `backend`.
fn on<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    // Declared first, dropped last: after the runtime and every pool in it.
    let (_dir, _db, url) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
            (Some(dir), None, url)
        }
        Backend::Postgres => {
            let db = PgDatabase::create();
            let url = db.url();
            (None, Some(db), url)
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(case(url));
}

/// Every case on both backends: `catalog::sqlite::NAME` and `catalog::postgres::NAME`.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $case() { super::on(super::Backend::Sqlite, super::$case) })*
        }
        mod postgres {
            $(#[test] fn $case() { super::on(super::Backend::Postgres, super::$case) })*
        }
    };
}

on_both!(
    runs_start_finish_and_list_newest_first,
    a_schedule_slot_is_claimed_once,
    snapshots_put_replace_delete_and_count_with_their_source_key,
    verification_records_and_damaged_packs,
    repository_summaries,
    migrations_are_idempotent_and_the_blocking_api_works_inside_a_runtime,
    hooks_are_kept_with_their_run,
);

fn key(id: u8, location: &str) -> RepoKey {
    RepoKey {
        id: Id([id; 32]),
        location: location.into(),
    }
}

fn at(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, h, 0, 0).unwrap()
}

/// A snapshot manifest as a backup writes it; `key` empty as in older manifests.
fn snapshot(time: &str, paths: &[&str], key: &str, tree: u8) -> Snapshot {
    serde_json::from_value(serde_json::json!({
        "version": 1, "time": time, "hostname": "web1", "username": "root",
        "source": if key.starts_with("cmd:") { "command" } else { "files" }, "key": key,
        "program": "test", "parent": null, "policy": "etc", "paths": paths,
        "kind": "full", "tree": Id([tree; 32]), "tags": ["t1"],
        "summary": {"files": 3, "bytes_total": 300, "bytes_stored": 100}
    }))
    .expect("snapshot json")
}

async fn hooks_are_kept_with_their_run(url: String) {
    use backstop::hooks::{HookRun, Phase};
    let c = Catalog::open(&url).await.unwrap();
    let repo = key(1, "/srv/repo");
    let plain = c.start_run("verify", Some(&repo), None).await.unwrap();
    let run = c
        .start_run("backup", Some(&repo), Some("db"))
        .await
        .unwrap();
    let before = HookRun {
        phase: Phase::Before,
        command: "sh -c 'mysql -e \"FLUSH TABLES\"'".into(),
        ok: true,
        exit_code: Some(0),
        ended: "exited with status 0".into(),
        duration_ms: 1234,
        output: "flushed\n数据库 ok".into(),
    };
    let after = HookRun {
        phase: Phase::After,
        command: "notify".into(),
        ok: false,
        exit_code: None,
        ended: "timed out after 5s and was stopped".into(),
        duration_ms: 5001,
        output: String::new(),
    };
    c.record_hook(run, &before).await.unwrap();
    c.record_hook(run, &after).await.unwrap();
    let runs = c.recent_runs(10).await.unwrap();
    assert_eq!(runs[0].id, run.0);
    assert_eq!(runs[0].hooks, [before, after]);
    assert_eq!(runs[1].id, plain.0);
    assert!(runs[1].hooks.is_empty());
    // Listed through the limit too.
    assert_eq!(c.recent_runs(1).await.unwrap()[0].hooks.len(), 2);
}

async fn runs_start_finish_and_list_newest_first(url: String) {
    let c = Catalog::open(&url).await.unwrap();
    let repo = key(1, "/srv/repo");
    let first = c
        .start_run("backup", Some(&repo), Some("etc"))
        .await
        .unwrap();
    let end = RunEnd {
        status: "success",
        files: 3,
        bytes_read: 300,
        bytes_new: 200,
        bytes_stored: 100,
        warnings: 1,
        error: None,
        snapshot: Some(Id([9; 32])),
    };
    c.finish_run(first, &end).await.unwrap();
    let second = c
        .claim_run(&NewRun {
            kind: "verify",
            repo: Some(&repo),
            policy: Some("etc"),
            target: Some("offsite"),
            host: Some("db1"),
            scheduled_for: None,
        })
        .await
        .unwrap()
        .expect("a manual run always starts");
    assert_ne!(first, second);
    let runs = c.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 2);
    let (v, b) = (&runs[0], &runs[1]);
    assert_eq!(
        (v.id, v.kind.as_str(), v.status.as_str()),
        (second.0, "verify", "running")
    );
    assert_eq!(
        (v.host.as_deref(), v.target.as_deref()),
        (Some("db1"), Some("offsite"))
    );
    assert_eq!(
        (v.finished_at.as_deref(), v.scheduled_for.as_deref()),
        (None, None)
    );
    assert_eq!(
        (b.id, b.kind.as_str(), b.status.as_str()),
        (first.0, "backup", "success")
    );
    assert_eq!(b.host, Some(backstop::catalog::this_host()));
    assert_eq!(b.repo_id, Some(repo.id.to_hex()));
    assert_eq!(b.repo_location.as_deref(), Some("/srv/repo"));
    assert_eq!(b.policy.as_deref(), Some("etc"));
    assert_eq!(
        (
            b.files,
            b.bytes_read,
            b.bytes_new,
            b.bytes_stored,
            b.warnings
        ),
        (3, 300, 200, 100, 1)
    );
    assert_eq!(b.snapshot_id, Some(Id([9; 32]).to_hex()));
    assert!(b.finished_at.is_some() && b.error.is_none());
    // A failed run keeps its error; the limit applies.
    c.finish_run(
        second,
        &RunEnd {
            status: "failed",
            error: Some("pack 1234 is damaged".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let runs = c.recent_runs(1).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].error.as_deref(), Some("pack 1234 is damaged"));
}

async fn a_schedule_slot_is_claimed_once(url: String) {
    let c = Catalog::open(&url).await.unwrap();
    let run = |kind, host, slot| NewRun {
        kind,
        policy: Some("etc"),
        host: Some(host),
        scheduled_for: slot,
        ..Default::default()
    };
    assert_eq!(c.last_scheduled("etc", "backup").await.unwrap(), None);
    let first = c
        .claim_run(&run("backup", "web1", Some(at(1))))
        .await
        .unwrap();
    assert!(first.is_some());
    // The same slot again, from this host or another one: refused, and nothing inserted.
    for host in ["web1", "web2"] {
        assert_eq!(
            c.claim_run(&run("backup", host, Some(at(1))))
                .await
                .unwrap(),
            None
        );
    }
    // The same slot in another time zone's notation is the same slot.
    let same = at(1).with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap());
    assert_eq!(
        c.claim_run(&run("backup", "web1", Some(same.with_timezone(&Utc))))
            .await
            .unwrap(),
        None
    );
    // Another kind, another policy or another slot is another run.
    assert!(
        c.claim_run(&run("verify", "web1", Some(at(1))))
            .await
            .unwrap()
            .is_some()
    );
    let other_policy = NewRun {
        policy: Some("db"),
        ..run("backup", "web1", Some(at(1)))
    };
    assert!(c.claim_run(&other_policy).await.unwrap().is_some());
    assert!(
        c.claim_run(&run("backup", "web1", Some(at(2))))
            .await
            .unwrap()
            .is_some()
    );
    // Manual runs have no slot and never conflict.
    for _ in 0..2 {
        assert!(
            c.claim_run(&run("backup", "web1", None))
                .await
                .unwrap()
                .is_some()
        );
        c.start_run("backup", None, Some("etc")).await.unwrap();
    }
    assert_eq!(
        c.last_scheduled("etc", "backup").await.unwrap(),
        Some(at(2))
    );
    assert_eq!(
        c.last_scheduled("etc", "verify").await.unwrap(),
        Some(at(1))
    );
    assert_eq!(c.recent_runs(100).await.unwrap().len(), 8);
    // Two hosts racing for a missed slot, each with its own connection pool: one wins.
    let other = Catalog::open(&url).await.unwrap();
    let (r1, r2) = (
        run("backup", "web1", Some(at(3))),
        run("backup", "web2", Some(at(3))),
    );
    let (a, b) = tokio::join!(c.claim_run(&r1), other.claim_run(&r2));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.is_some() != b.is_some(),
        "exactly one claim wins: {a:?} {b:?}"
    );
    let slot3: Vec<_> = c
        .recent_runs(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.scheduled_for.as_deref() == Some("2026-11-23T03:00:00Z"))
        .collect();
    assert_eq!(slot3.len(), 1);
}

async fn snapshots_put_replace_delete_and_count_with_their_source_key(url: String) {
    let c = Catalog::open(&url).await.unwrap();
    let (repo, copy) = (key(1, "/srv/repo"), key(1, "/mnt/copy"));
    let old = snapshot("2026-11-20T01:00:00Z", &["/etc"], "", 2);
    let cmd = snapshot("2026-11-21T01:00:00Z", &["db.sql"], "cmd:web1:db.sql", 3);
    c.put_snapshot(&repo, &Id([1; 32]), &old).await.unwrap();
    c.put_snapshot(&repo, &Id([2; 32]), &cmd).await.unwrap();
    c.put_snapshot(&copy, &Id([1; 32]), &old).await.unwrap();
    assert_eq!(c.count_snapshots(&repo).await.unwrap(), 2);
    let rows = c.snapshots(&repo).await.unwrap();
    assert_eq!(rows.len(), 2);
    // An old manifest without a key gets the key a files backup would have.
    assert_eq!(rows[0].id, Id([1; 32]).to_hex());
    assert_eq!(rows[0].source.as_deref(), Some("files"));
    assert_eq!(rows[0].source_key, Some(old.source_key()));
    assert!(!old.source_key().is_empty());
    assert_eq!(rows[1].source.as_deref(), Some("command"));
    assert_eq!(rows[1].source_key.as_deref(), Some("cmd:web1:db.sql"));
    assert_eq!(rows[1].paths, ["db.sql"]);
    assert_eq!(rows[1].tags, ["t1"]);
    assert_eq!(rows[1].tree, Id([3; 32]).to_hex());
    assert_eq!(
        (rows[1].files, rows[1].bytes_total, rows[1].bytes_stored),
        (3, 300, 100)
    );
    // Putting the same id again refreshes the row.
    let mut tagged = cmd.clone();
    tagged.tags = vec!["kept".into()];
    c.put_snapshot(&repo, &Id([2; 32]), &tagged).await.unwrap();
    assert_eq!(c.count_snapshots(&repo).await.unwrap(), 2);
    assert_eq!(c.snapshots(&repo).await.unwrap()[1].tags, ["kept"]);
    // A rebuild replaces the repository's rows, and only that repository's.
    let fresh = snapshot("2026-11-22T01:00:00Z", &["/home"], "files:web1:/home", 4);
    c.replace_snapshots(
        &repo,
        &[(Id([3; 32]), fresh.clone()), (Id([2; 32]), cmd.clone())],
    )
    .await
    .unwrap();
    let rows = c.snapshots(&repo).await.unwrap();
    let ids: Vec<_> = rows.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, [Id([2; 32]).to_hex(), Id([3; 32]).to_hex()]);
    assert_eq!(rows[1].source_key.as_deref(), Some("files:web1:/home"));
    assert_eq!(c.count_snapshots(&copy).await.unwrap(), 1);
    // Forget deletes rows by id; unknown ids are no error.
    c.delete_snapshots(&repo, &[Id([2; 32]), Id([7; 32])])
        .await
        .unwrap();
    assert_eq!(c.count_snapshots(&repo).await.unwrap(), 1);
    c.replace_snapshots(&repo, &[]).await.unwrap();
    assert_eq!(c.count_snapshots(&repo).await.unwrap(), 0);
    assert_eq!(c.count_snapshots(&copy).await.unwrap(), 1);
}

async fn verification_records_and_damaged_packs(url: String) {
    let c = Catalog::open(&url).await.unwrap();
    let (repo, copy) = (key(1, "/srv/repo"), key(1, "/mnt/copy"));
    let (a, b, d) = (Id([0xa; 32]), Id([0xb; 32]), Id([0xd; 32]));
    c.record_verification(&repo, &a, at(1), None).await.unwrap();
    c.record_verification(&repo, &a, at(3), None).await.unwrap();
    // b failed, then verified fine after a repair: not damaged any more.
    c.record_verification(&repo, &b, at(1), Some("hash mismatch"))
        .await
        .unwrap();
    c.record_verification(&repo, &b, at(2), None).await.unwrap();
    // d was fine, then found missing: damaged.
    c.record_verification(&repo, &d, at(1), None).await.unwrap();
    c.record_verification(&repo, &d, at(2), Some("missing from storage"))
        .await
        .unwrap();
    c.record_verification(&copy, &a, at(4), Some("truncated"))
        .await
        .unwrap();
    let last = c.last_verified(&repo).await.unwrap();
    assert_eq!(last.len(), 3);
    assert_eq!(last[&a], at(3).to_rfc3339());
    assert_eq!(last[&b], at(2).to_rfc3339());
    assert_eq!(last[&d], at(1).to_rfc3339());
    assert_eq!(c.damaged_packs(&repo).await.unwrap(), vec![d]);
    assert_eq!(c.damaged_packs(&copy).await.unwrap(), vec![a]);
    assert!(c.last_verified(&copy).await.unwrap().is_empty());
    assert!(
        c.damaged_packs(&key(2, "/srv/repo"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn repository_summaries(url: String) {
    let c = Catalog::open(&url).await.unwrap();
    assert!(c.repo_summaries().await.unwrap().is_empty());
    let (repo, copy) = (key(1, "/srv/repo"), key(1, "/mnt/copy"));
    for k in [&repo, &copy, &repo] {
        c.touch_repo(k).await.unwrap();
    }
    c.put_snapshot(
        &repo,
        &Id([1; 32]),
        &snapshot("2026-11-20T01:00:00Z", &["/etc"], "", 2),
    )
    .await
    .unwrap();
    c.put_snapshot(
        &repo,
        &Id([2; 32]),
        &snapshot("2026-11-21T01:00:00Z", &["/etc"], "", 2),
    )
    .await
    .unwrap();
    c.record_verification(&repo, &Id([0xa; 32]), at(1), None)
        .await
        .unwrap();
    c.record_verification(&repo, &Id([0xa; 32]), at(2), None)
        .await
        .unwrap();
    c.record_verification(&repo, &Id([0xb; 32]), at(5), Some("bad"))
        .await
        .unwrap();
    let s = c.repo_summaries().await.unwrap();
    assert_eq!(s.len(), 2, "one row per location");
    assert_eq!((s[0].location.as_str(), s[0].snapshots), ("/mnt/copy", 0));
    assert_eq!(
        (s[0].latest_snapshot.as_deref(), s[0].last_verify.as_deref()),
        (None, None)
    );
    assert_eq!(s[0].packs_verified, 0);
    assert_eq!((s[1].location.as_str(), s[1].snapshots), ("/srv/repo", 2));
    assert_eq!(s[1].id, repo.id.to_hex());
    assert_eq!(
        s[1].latest_snapshot.as_deref(),
        Some("2026-11-21T01:00:00+00:00")
    );
    assert_eq!(
        s[1].packs_verified, 1,
        "a pack counts once; a failed one not at all"
    );
    assert_eq!(s[1].last_verify, Some(at(5).to_rfc3339()));
}

async fn migrations_are_idempotent_and_the_blocking_api_works_inside_a_runtime(url: String) {
    let c = Catalog::open(&url).await.unwrap();
    c.touch_repo(&key(1, "/srv/repo")).await.unwrap();
    let run = c.start_run("backup", None, None).await.unwrap();
    c.close().await;
    // Opened again (and again, while open): migrations are not re-applied, rows stay.
    let again = Catalog::open(&url).await.unwrap();
    let third = Catalog::open(&url).await.unwrap();
    assert_eq!(again.recent_runs(10).await.unwrap()[0].id, run.0);
    assert_eq!(third.repo_summaries().await.unwrap().len(), 1);
    // The blocking wrapper, called from inside this (current-thread) runtime: no panic.
    let b = blocking::Catalog::open(&url).unwrap();
    let second = b.start_run("verify", None, None).unwrap();
    assert_eq!(b.recent_runs(10).unwrap().len(), 2);
    assert_eq!(again.recent_runs(10).await.unwrap()[0].id, second.0);
}

#[test]
fn a_postgres_catalog_records_cli_backups_and_status_shows_them() {
    let db = PgDatabase::create();
    let url = db.url();
    let env = Env::new();
    super::common::write(&env.path("src/etc/hosts"), b"127.0.0.1 localhost\n");
    env.run(&["--catalog", &url, "init"]).assert().success();
    env.run(&["--catalog", &url, "backup"])
        .arg(env.path("src"))
        .assert()
        .success();
    let out = env
        .run(&["--catalog", &url, "status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["recent_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{v}");
    assert_eq!(runs[0]["kind"], "backup");
    assert_eq!(runs[0]["status"], "success");
    assert_eq!(runs[0]["host"], backstop::catalog::this_host());
    assert_eq!(runs[0]["repo_location"], env.repo().display().to_string());
    let repos = v["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 1, "{v}");
    assert_eq!(repos[0]["snapshots"], 1);
    // The table form names the run too.
    let out = env.run(&["--catalog", &url, "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("backup") && text.contains("success"),
        "{text}"
    );
    // Nothing went to the default SQLite catalog.
    assert!(!env.path("data/catalog.db").exists());
    // A policy's `[catalog] url` names the same database.
    let dir = env.path("policies");
    super::common::write(
        &dir.join("backstop.toml"),
        format!(
            "[catalog]\nurl = \"{url}\"\n[targets.main]\nrepo = \"{}\"\npassword-env = \"BACKSTOP_PASSWORD\"\n",
            env.repo().display()
        )
        .as_bytes(),
    );
    super::common::write(
        &dir.join("p.toml"),
        format!(
            "name = \"p\"\ntargets = [\"main\"]\n[source]\nkind = \"files\"\npaths = [\"{}\"]\n",
            env.path("src").display()
        )
        .as_bytes(),
    );
    env.cmd()
        .args(["backup", "--policy"])
        .arg(dir.join("p.toml"))
        .assert()
        .success();
    let out = env
        .run(&["--catalog", &url, "status", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["recent_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{v}");
    assert_eq!(
        (&runs[0]["policy"], &runs[0]["status"]),
        (&"p".into(), &"success".into())
    );
    // A policy's run records the target it went to by name; a --repo run has none.
    assert_eq!(
        (&runs[0]["target"], &runs[1]["target"]),
        (&"main".into(), &serde_json::Value::Null),
        "{v}"
    );
    assert_eq!(v["repositories"][0]["snapshots"], 2);
    // The snapshot rows carry their source key, read back through the library.
    let rows = blocking::Catalog::open(&url)
        .unwrap()
        .snapshots(&RepoKey {
            id: repos[0]["id"].as_str().unwrap().parse().unwrap(),
            location: env.repo().display().to_string(),
        })
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.source_key.as_deref().is_some_and(|k| !k.is_empty())),
        "{rows:?}"
    );
    assert_eq!(
        rows[0].source_key, rows[1].source_key,
        "same source, same key"
    );
}
