//! Retention, forget and prune: dry runs match real runs, data is freed only after the grace
//! period, and neither crashes nor concurrent backups lose a committed snapshot.

use super::common::*;

fn json(mut cmd: impl std::borrow::BorrowMut<assert_cmd::Command>) -> serde_json::Value {
    let cmd = cmd.borrow_mut();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn repo_bytes(env: &Env) -> u64 {
    env.packs()
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum()
}

/// Waits until some process holds a lock on the repository.
fn wait_for_a_lock(env: &Env) {
    let locks = env.repo().join("locks");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&locks).map_or(0, |d| d.count()) == 0 {
        assert!(std::time::Instant::now() < deadline, "no lock was taken");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Five snapshots of a changing tree; returns their ids, oldest first.
fn five_snapshots(env: &Env) -> Vec<String> {
    let src = env.path("src");
    env.init();
    (0..5)
        .map(|i| {
            write(&src.join("changing.bin"), &noise(100 + i, 3 << 20));
            write(&src.join("stable.txt"), b"stays the same");
            env.backup(&src, &["--tag", if i == 0 { "first" } else { "later" }])
        })
        .collect()
}

/// The newest of `five_snapshots` restores with its content.
fn assert_newest_restores(env: &Env, id: &str) {
    let out = env.restore(id, "out");
    assert_eq!(
        std::fs::read(out.join("changing.bin")).unwrap(),
        noise(104, 3 << 20)
    );
}

#[test]
fn forget_dry_run_matches_the_real_run() {
    let env = Env::new();
    let ids = five_snapshots(&env);
    let args = [
        "forget",
        "--json",
        "--keep-last",
        "2",
        "--keep-tag",
        "first",
    ];
    let dry = json(env.run(&args).arg("--dry-run"));
    let real = json(&mut env.run(&args));
    // One entry per repository, each with its decisions.
    let decisions = |v: &serde_json::Value| -> Vec<(String, bool)> {
        v[0]["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["id"].as_str().unwrap().to_string(),
                    f["decision"]["keep"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(decisions(&dry), decisions(&real));
    let left: Vec<String> = env
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![ids[0].clone(), ids[3].clone(), ids[4].clone()]);
    // Without any rule nothing is removed, with a clear error.
    let out = env.run(&["forget"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no retention rule"));
}

#[test]
fn prune_frees_space_only_after_the_grace_period() {
    let env = Env::new();
    let ids = five_snapshots(&env);
    env.run(&["forget", "--keep-last", "1"]).assert().success();
    let before = repo_bytes(&env);

    // Dry run changes nothing; the first prune only marks.
    let dry = json(env.run(&["prune", "--json", "--dry-run"]));
    assert!(dry["marked"].as_u64().unwrap() >= 1, "{dry}");
    let first = json(env.run(&["prune", "--json"]));
    assert_eq!(
        first["marked"], dry["marked"],
        "dry run predicted the marks"
    );
    assert_eq!(first["deleted"], 0);
    // Repacking may add packs; nothing is deleted within the grace period.
    let before = repo_bytes(&env).max(before);
    assert!(
        repo_bytes(&env) >= before,
        "nothing is deleted within the grace period"
    );
    env.run(&["verify", "--read-data"]).assert().success();

    // After the grace period (here: none) the marked packs go.
    let second = json(env.run(&["prune", "--json", "--grace", "0s"]));
    assert_eq!(second["deleted"], first["marked"]);
    let after = repo_bytes(&env);
    assert!(after < before / 2, "freed space: {before} -> {after}");
    env.run(&["verify", "--read-data"]).assert().success();
    assert_newest_restores(&env, &ids[4]);
}

#[test]
fn a_mark_is_lifted_when_a_new_backup_uses_the_pack_again() {
    let env = Env::new();
    let src = env.path("src");
    env.init();
    write(&src.join("a.bin"), &noise(7, 2 << 20));
    env.backup(&src, &[]);
    env.run(&["forget", "--keep-within", "0s", "--allow-empty"])
        .assert()
        .success();
    json(env.run(&["prune", "--json"])); // marks the pack of a.bin
    // The same data is backed up again: it dedups against the marked pack.
    env.backup(&src, &["--full"]);
    let sweep = json(env.run(&["prune", "--json", "--grace", "0s"]));
    assert_eq!(sweep["deleted"], 0, "{sweep}");
    assert!(sweep["unmarked"].as_u64().unwrap() >= 1, "{sweep}");
    env.run(&["verify", "--read-data"]).assert().success();
}

#[test]
fn sigkill_during_prune_loses_nothing_and_the_next_prune_completes() {
    let points = [
        "prune-after-lock",
        "after-object-write:1",
        "after-object-write:2",
        "prune-after-mark",
        "prune-after-repack",
        "prune-after-index",
        "prune-between-deletes:1",
        "prune-between-deletes:2",
        "prune-between-deletes:6",
    ];
    for point in points {
        let env = Env::new();
        let ids = five_snapshots(&env);
        env.run(&["forget", "--keep-last", "2"]).assert().success();
        // The point is in the marking prune or in the sweeping one: crash whichever reaches it.
        let mut died = 0;
        for _ in 0..2 {
            let out = env
                .run(&["prune", "--grace", "0s"])
                .env("BACKSTOP_CRASH_AT", point)
                .output()
                .unwrap();
            if out.status.code().is_none() {
                died += 1;
                env.run(&["verify", "--read-data"]).assert().success();
                assert_eq!(env.snapshots().len(), 2, "{point}");
                env.run(&["prune", "--grace", "0s"]).assert().success();
            }
        }
        assert!(died > 0, "{point} was never reached");
        env.run(&["prune", "--grace", "0s"]).assert().success();
        env.run(&["verify", "--read-data"]).assert().success();
        assert_newest_restores(&env, &ids[4]);
    }
}

#[test]
fn prune_waits_for_a_running_backup_and_loses_nothing() {
    let env = Env::new();
    let src = env.path("src");
    env.init();
    for i in 0..8 {
        write(&src.join(format!("f{i}")), &noise(300 + i, 8 << 20));
    }
    env.backup(&src, &[]);
    env.run(&["forget", "--keep-within", "0s", "--allow-empty"])
        .assert()
        .success();
    // Mark first: every pack now waits for deletion, and a sweeping prune would delete
    // them all unless it sees the running backup's snapshot that uses them again.
    let marked = json(env.run(&["prune", "--json"]));
    assert!(marked["marked"].as_u64().unwrap() >= 4, "{marked}");
    // A long backup of the same data (deduplicated against the marked packs) plus new data,
    // and a sweeping prune from two processes at once.
    for i in 0..6 {
        write(&src.join(format!("g{i}")), &noise(400 + i, 8 << 20));
    }
    let mut backup = env.spawn(
        &["backup", "--full", src.to_str().unwrap()],
        &[("BACKSTOP_LOG", "backstop::phase=debug")],
    );
    // Prune starts once the backup has uploaded its first new pack: it holds its lock, has
    // deduplicated the old data against the marked packs, and has not committed yet.
    let stderr = backup.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("phase after-pack-upload") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("the backup uploads a pack");
    let sweep = json(env.run(&["prune", "--json", "--grace", "0s", "--retry-lock", "5m"]));
    let status = backup.wait().unwrap();
    let err = reader.join().unwrap();
    assert!(status.success(), "{err}");
    // The prune waited for the backup to commit, so the marked data packs were needed
    // again: their marks were lifted. Only a pack of the forgotten snapshot's own trees
    // (which the new snapshot does not share) may go.
    let (deleted, unmarked) = (
        sweep["deleted"].as_u64().unwrap(),
        sweep["unmarked"].as_u64().unwrap(),
    );
    assert_eq!(
        deleted + unmarked,
        marked["marked"].as_u64().unwrap(),
        "{sweep}"
    );
    assert!(
        unmarked >= 4,
        "marked data packs deleted under a live backup: {sweep}"
    );
    assert!(
        sweep["freed_bytes"].as_u64().unwrap() < 1 << 20,
        "data deleted: {sweep}"
    );
    env.run(&["prune", "--grace", "0s"]).assert().success();
    env.run(&["verify", "--read-data"]).assert().success();
    let out = env.restore("latest", "out");
    assert_same_tree(&src, &out);
}

#[test]
fn a_second_prune_inside_the_grace_period_deletes_nothing_and_reports_what_waits() {
    let env = Env::new();
    let ids = five_snapshots(&env);
    env.run(&["forget", "--keep-last", "1"]).assert().success();
    let first = json(env.run(&["prune", "--json"]));
    assert!(first["marked"].as_u64().unwrap() >= 1, "{first}");
    let before = repo_bytes(&env);
    let packs = env.packs();
    // Default grace (24 h), and an explicit one still running.
    let (mut waiting, mut waiting_bytes) = (
        first["marked"].as_u64().unwrap(),
        first["marked_bytes"].as_u64().unwrap(),
    );
    for grace in [None, Some("1h")] {
        let mut args = vec!["prune", "--json"];
        if let Some(g) = grace {
            args.extend(["--grace", g]);
        }
        let second = json(env.run(&args));
        assert_eq!(second["deleted"], 0, "{grace:?}: {second}");
        assert_eq!(second["freed_bytes"], 0, "{grace:?}: {second}");
        assert_eq!(second["waiting"], waiting, "{grace:?}: {second}");
        assert_eq!(
            second["waiting_bytes"], waiting_bytes,
            "{grace:?}: {second}"
        );
        waiting += second["marked"].as_u64().unwrap();
        waiting_bytes += second["marked_bytes"].as_u64().unwrap();
        let now = env.packs();
        assert!(
            packs.iter().all(|p| now.contains(p)),
            "{grace:?}: a pack was deleted"
        );
        assert!(repo_bytes(&env) >= before);
    }
    let out = env.run(&["prune"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains(&format!("{waiting} marked pack(s) ("))
            && text.contains("wait out their grace period"),
        "{text}"
    );
    env.run(&["verify", "--read-data"]).assert().success();
    assert_newest_restores(&env, &ids[4]);
}

#[test]
fn prune_removes_temporary_objects_of_dead_writers_at_once() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a"), b"a");
    env.backup(&src, &[]);
    // What a writer killed mid-write leaves: a fresh temporary object.
    let tmp = env.repo().join("tmp");
    let leftover = tmp.join(format!("{}.d41d8cd98f00b204", "a".repeat(64)));
    std::fs::write(&leftover, noise(5, 100_000)).unwrap();
    let dry = json(env.run(&["prune", "--json", "--dry-run"]));
    assert_eq!(dry["tmp_removed"], 1, "{dry}");
    assert!(leftover.exists(), "a dry run removes nothing");
    // Default grace period: removed anyway, since no live writer can own it.
    let rep = json(env.run(&["prune", "--json"]));
    assert_eq!(rep["tmp_removed"], 1, "{rep}");
    assert_eq!(rep["tmp_bytes"], 100_000, "{rep}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    env.backup(&src, &[]);
}

#[test]
fn unlock_removes_only_stale_locks() {
    let env = Env::new();
    env.init();
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let lock = |pid: u32, expires: &str| {
        format!(
            r#"{{"exclusive":true,"host":"{}","pid":{pid},"operation":"prune","created":"2026-01-01T00:00:00Z","expires":"{expires}"}}"#,
            hostname::get().unwrap().to_string_lossy()
        )
    };
    std::fs::write(
        locks.join("a".repeat(64)),
        lock(std::process::id(), "2999-01-01T00:00:00Z"),
    )
    .unwrap();
    // A live exclusive lock blocks a backup with exit code 11.
    let src = env.path("src");
    write(&src.join("x"), b"x");
    let out = env.run(&["backup"]).arg(&src).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(11),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked by prune"));
    env.run(&["unlock"]).assert().success();
    assert!(
        locks.join("a".repeat(64)).exists(),
        "a live lock is never removed"
    );
    // Expired, and dead-process locks are stale.
    std::fs::write(
        locks.join("a".repeat(64)),
        lock(std::process::id(), "2020-01-01T00:00:00Z"),
    )
    .unwrap();
    // A dead process: a real child, spawned and reaped (no pid is assumed unused).
    std::fs::write(
        locks.join("b".repeat(64)),
        lock(super::locking::dead_pid(), "2999-01-01T00:00:00Z"),
    )
    .unwrap();
    env.run(&["backup"]).arg(&src).assert().success();
    env.run(&["unlock"]).assert().success();
    assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 0);
}

#[test]
fn a_backup_frozen_past_its_lock_expiry_never_commits_pruned_data() {
    let env = Env::new();
    let src = env.path("src");
    env.init();
    write(&src.join("old.bin"), &noise(1, 4 << 20));
    env.backup(&src, &[]);
    for i in 0..10 {
        write(&src.join(format!("new{i}.bin")), &noise(500 + i, 6 << 20));
    }
    // A backup is frozen (SIGSTOP) mid-way, past its 6 s lock's expiry. Every storage
    // request of it takes 300 ms longer, so that it is still running when it is frozen.
    let mut backup = env.spawn(
        &["backup", src.to_str().unwrap()],
        &[
            ("BACKSTOP_LOCK_TTL", "6"),
            ("BACKSTOP_FAULTS", "delay=300ms"),
        ],
    );
    wait_for_a_lock(&env);
    std::thread::sleep(std::time::Duration::from_millis(300)); // some packs uploaded
    let pid = nix::unistd::Pid::from_raw(backup.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(8));
    // Meanwhile prune sees an expired lock and deletes what no snapshot references:
    // including the packs the frozen backup has uploaded but not yet indexed.
    env.run(&["forget", "--keep-last", "1"]).assert().success();
    env.run(&["prune", "--grace", "0s"]).assert().success();
    env.run(&["prune", "--grace", "0s"]).assert().success();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(backup.stderr.as_mut().unwrap(), &mut err).unwrap();
    let status = backup.wait().unwrap();
    // The resumed backup noticed it lost its lock and committed nothing.
    assert_eq!(status.code(), Some(11), "{err}");
    assert!(err.contains("lost the repository lock"), "{err}");
    assert_eq!(env.snapshots().len(), 1, "the frozen backup committed");
    // Nothing committed refers to missing data.
    env.run(&["verify", "--read-data"]).assert().success();
    env.backup(&src, &[]);
    env.run(&["verify", "--read-data"]).assert().success();
    let out = env.restore("latest", "out");
    assert_same_tree(&src, &out);
}

#[test]
fn a_live_lock_from_a_host_with_a_skewed_clock_is_respected() {
    let env = Env::new();
    env.init();
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    // Another host whose clock is 10 minutes behind took a lock "20 minutes ago" (its time)
    // and refreshed it: to us it expires in 10 minutes. It must still count.
    let now = chrono::Utc::now();
    let lock = format!(
        r#"{{"exclusive":false,"host":"other-host","pid":1,"operation":"backup","created":"{}","expires":"{}"}}"#,
        (now - chrono::Duration::minutes(30)).to_rfc3339(),
        (now + chrono::Duration::minutes(10)).to_rfc3339()
    );
    std::fs::write(locks.join("c".repeat(64)), lock).unwrap();
    let out = env.run(&["prune"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(11),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.run(&["unlock"]).assert().success();
    assert!(
        locks.join("c".repeat(64)).exists(),
        "a live lock of another host is kept"
    );
}
