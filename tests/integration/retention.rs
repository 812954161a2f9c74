//! Retention, damaged manifests, an unusable catalog and policy checks (issue #6 items 3, 5,
//! 8, 15 and 19): the operator's bad day, driven through the real binary.

use super::common::{Env, noise, policy_check, write};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An environment with `n` snapshots of one source (each with different content).
fn with_snapshots(n: usize) -> (Env, Vec<String>) {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let mut ids = Vec::new();
    for i in 0..n {
        write(&src.join(format!("f{i}")), &noise(i as u64, 1000));
        ids.push(env.backup(&src, &[]));
    }
    (env, ids)
}

fn ids(env: &Env) -> Vec<String> {
    env.snapshots()
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn zero_keep_counts_are_rejected_on_the_command_line_and_in_policies() {
    let (env, _) = with_snapshots(2);
    for flag in [
        "--keep-last",
        "--keep-hourly",
        "--keep-daily",
        "--keep-weekly",
        "--keep-monthly",
        "--keep-quarterly",
        "--keep-yearly",
    ] {
        let out = env.run(&["forget", flag, "0"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{flag}: {}", stderr(&out));
    }
    assert_eq!(env.snapshots().len(), 2);

    let dir = env.path("policies");
    write(
        &dir.join("backstop.toml"),
        format!(
            "[targets.local]\nrepo = \"{}\"\npassword-env = \"BACKSTOP_PASSWORD\"\n",
            env.repo().display()
        )
        .as_bytes(),
    );
    write(
        &dir.join("p.toml"),
        b"name = \"p\"\ntargets = [\"local\"]\n[source]\nkind = \"files\"\npaths = [\"/etc\"]\n[retention]\nkeep-weekly = 2\nkeep-daily = 0\n",
    );
    let out = policy_check(&env, dir.join("p.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("p.toml:8:1") && stderr(&out).contains("keep-daily = 0"),
        "{}",
        stderr(&out)
    );
    // forget --policy refuses the same file, and removes nothing.
    let out = env
        .run(&["forget", "--policy"])
        .arg(dir.join("p.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(env.snapshots().len(), 2);
}

#[test]
fn forget_refuses_to_remove_every_snapshot_of_a_group_unless_allowed() {
    let (env, _) = with_snapshots(3);
    // A tag no snapshot has keeps nothing: refused, dry run or not, nothing removed.
    for extra in [&[][..], &["--dry-run"][..]] {
        let out = env
            .run(&["forget", "--keep-tag", "none"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("refusing to remove all 3"),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("--allow-empty"), "{}", stderr(&out));
    }
    assert_eq!(env.snapshots().len(), 3);
    // Allowed: a dry run says so and removes nothing; the real run removes all.
    let out = env
        .run(&["forget", "--keep-tag", "none", "--allow-empty", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("would remove 3 of 3"),
        "{}",
        stdout(&out)
    );
    assert_eq!(env.snapshots().len(), 3);
    env.run(&["forget", "--keep-tag", "none", "--allow-empty"])
        .assert()
        .success();
    assert_eq!(env.snapshots().len(), 0);
}

#[test]
fn allow_empty_in_a_policy_file_allows_removing_a_whole_group() {
    let (env, _) = with_snapshots(2);
    let dir = env.path("policies");
    write(
        &dir.join("backstop.toml"),
        format!(
            "[targets.local]\nrepo = \"{}\"\npassword-env = \"BACKSTOP_PASSWORD\"\n",
            env.repo().display()
        )
        .as_bytes(),
    );
    let policy = |allow: bool| {
        format!(
            "name = \"p\"\ntargets = [\"local\"]\n[source]\nkind = \"files\"\npaths = [\"/etc\"]\n[retention]\nkeep-tag = [\"none\"]\n{}",
            if allow { "allow-empty = true\n" } else { "" }
        )
    };
    write(&dir.join("p.toml"), policy(false).as_bytes());
    let out = env
        .cmd()
        .args(["forget", "--policy"])
        .arg(dir.join("p.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(env.snapshots().len(), 2);
    write(&dir.join("p.toml"), policy(true).as_bytes());
    env.cmd()
        .args(["forget", "--policy"])
        .arg(dir.join("p.toml"))
        .assert()
        .success();
    assert_eq!(env.snapshots().len(), 0);
}

#[test]
fn one_damaged_manifest_is_skipped_everywhere_and_set_aside_by_repair() {
    let (env, snaps) = with_snapshots(3);
    let bad = &snaps[0];
    let manifest = env.repo().join("snapshots").join(bad);
    std::fs::write(&manifest, b"not a manifest").unwrap();

    // Listing: the others, a warning naming the damaged one, and exit 3 (incomplete).
    let out = env.run(&["snapshots", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        stderr(&out).contains(&format!("snapshots/{bad}")),
        "{}",
        stderr(&out)
    );
    // ls, restore of another snapshot, and a new backup work.
    env.run(&["ls", "latest"]).assert().success();
    let out_dir = env.restore(&snaps[1], "out");
    assert!(out_dir.join("f1").exists());
    let src = env.path("src");
    env.backup(&src, &[]);
    // verify names it as a problem (exit 13).
    let out = env.run(&["verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("snapshots/{bad}")),
        "{}",
        stdout(&out)
    );
    // forget applies the rules to the others and says it skipped it (exit 3).
    let out = env.run(&["forget", "--keep-last", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("removed 2 of 3"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("skipped damaged manifest snapshots/{bad}")));
    assert!(
        manifest.exists(),
        "forget never removes a manifest it could not read"
    );
    // prune cannot know what the damaged manifest references: it refuses.
    let out = env.run(&["prune", "--grace", "0s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("repair snapshots"),
        "{}",
        stderr(&out)
    );

    // repair snapshots: a dry run moves nothing, then it is set aside byte for byte.
    let out = env
        .run(&["repair", "snapshots", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("would move snapshots/{bad}")));
    assert!(manifest.exists());
    env.run(&["repair", "snapshots"]).assert().success();
    assert!(!manifest.exists());
    let aside = env.repo().join("damaged/snapshots").join(bad);
    assert_eq!(std::fs::read(aside).unwrap(), b"not a manifest");
    let out = env.run(&["verify"]).output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(!stderr(&out).contains("damaged"), "{}", stderr(&out));
    env.run(&["prune", "--grace", "0s"]).assert().success();
    // Index repair still answers to `repair` and `repair index`.
    env.run(&["repair"]).assert().success();
    env.run(&["repair", "index", "--dry-run"])
        .assert()
        .success();
}

#[test]
fn forget_by_id_removes_exactly_the_named_snapshots() {
    let (env, snaps) = with_snapshots(3);
    env.run(&["forget", &snaps[1][..8]]).assert().success();
    assert_eq!(ids(&env), [snaps[0].clone(), snaps[2].clone()]);
    env.run(&["forget", "--dry-run", &snaps[0], &snaps[2][..10]])
        .assert()
        .success();
    assert_eq!(ids(&env).len(), 2);
    // Too short, unknown, or mixed with rules: refused, nothing removed.
    for args in [
        vec!["forget", &snaps[0][..3]],
        vec!["forget", "ffffffffff"],
        vec!["forget", &snaps[0], "--keep-last", "1"],
        vec!["forget", &snaps[0], "deadbeefdead"],
    ] {
        let out = env.run(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(ids(&env).len(), 2);
    env.run(&["forget", &snaps[0], &snaps[2]])
        .assert()
        .success();
    assert!(ids(&env).is_empty());
}

/// backup, snapshots, ls, restore, verify, forget and prune all succeed with `env` set up
/// so that the catalog is unusable, each warning about the catalog once.
fn everything_works_without_a_catalog(env: &Env, extra_env: &[(&str, &str)]) {
    let src = env.path("src");
    write(&src.join("a"), b"alpha");
    let run = |args: &[&str]| {
        let out = env
            .run(args)
            .envs(extra_env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        out
    };
    for _ in 0..2 {
        let out = run(&["backup", src.to_str().unwrap()]);
        assert_eq!(
            stderr(&out)
                .lines()
                .filter(|l| l.contains("catalog"))
                .count(),
            1,
            "one warning naming the catalog: {}",
            stderr(&out)
        );
    }
    run(&["snapshots"]);
    run(&["ls", "latest"]);
    let target = env.path("out");
    run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"alpha");
    let out = run(&["verify", "--read-data"]);
    assert!(stderr(&out).contains("catalog"), "{}", stderr(&out));
    run(&["forget", "--keep-last", "1"]);
    run(&["prune", "--grace", "0s"]);
    run(&["repair", "--dry-run"]);
}

#[test]
fn a_corrupt_catalog_never_stops_backups_or_restores_and_rebuild_replaces_it() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    std::fs::write(data.join("catalog.db"), noise(9, 8192)).unwrap();
    everything_works_without_a_catalog(&env, &[]);
    // status is about the catalog: it fails, clearly.
    let out = env.cmd().arg("status").output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("catalog"), "{}", stderr(&out));
    // catalog rebuild moves the broken file aside and rebuilds from the repository.
    let out = env.run(&["catalog", "rebuild"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("catalog rebuilt: 1 snapshot"),
        "{}",
        stdout(&out)
    );
    let aside: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("catalog.db.broken-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(data.join(&aside[0])).unwrap(),
        noise(9, 8192),
        "the broken file is kept as it was"
    );
    let out = env.cmd().args(["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repositories"][0]["snapshots"], 1);
}

#[test]
fn an_unwritable_data_dir_never_stops_backups_or_restores() {
    let env = Env::new();
    env.init();
    // A data directory under a regular file cannot be created, even by root.
    let file = env.path("a-file");
    std::fs::write(&file, b"").unwrap();
    let data = file.join("data");
    everything_works_without_a_catalog(&env, &[("BACKSTOP_DATA_DIR", data.to_str().unwrap())]);
    // HOME likewise, when the data directory comes from it.
    let home = file.join("home");
    let mut c = env.run(&["backup", env.path("src").to_str().unwrap()]);
    c.env_remove("BACKSTOP_DATA_DIR")
        .env_remove("XDG_DATA_HOME")
        .env("HOME", &home);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("catalog"), "{}", stderr(&out));
    // Without any usable catalog, rebuild and status fail clearly.
    for args in [&["catalog", "rebuild"][..], &["status"][..]] {
        let out = env
            .run(args)
            .env("BACKSTOP_DATA_DIR", &data)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains("a-file/data"), "{}", stderr(&out));
    }
}

#[test]
fn a_copied_repository_has_its_own_catalog_rows() {
    let (env, _) = with_snapshots(1);
    let copy = env.path("copy");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(env.repo())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let src = env.path("src");
    env.cmd()
        .args(["backup", "--repo"])
        .arg(&copy)
        .arg(&src)
        .assert()
        .success();
    let status = |env: &Env| -> Vec<(String, i64)> {
        let out = env.cmd().args(["status", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["location"].as_str().unwrap().to_string(),
                    r["snapshots"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let want = vec![
        (copy.display().to_string(), 1),
        (env.repo().display().to_string(), 1),
    ];
    assert_eq!(status(&env), want);
    // A rebuild of the copy does not touch the original's rows.
    env.cmd()
        .args(["catalog", "rebuild", "--repo"])
        .arg(&copy)
        .assert()
        .success();
    let want = vec![
        (copy.display().to_string(), 2),
        (env.repo().display().to_string(), 1),
    ];
    assert_eq!(status(&env), want);
}

fn two_target_policy(env: &Env) -> std::path::PathBuf {
    let dir = env.path("policies");
    write(
        &dir.join("backstop.toml"),
        b"[targets.one]\nrepo = \"../repo1\"\npassword-command = \"echo one\"\n[targets.two]\nrepo = \"../repo2\"\npassword-command = \"echo two\"\n",
    );
    let src = env.path("src");
    write(&src.join("a"), b"a");
    write(
        &dir.join("p.toml"),
        format!(
            "name = \"p\"\ntargets = [\"one\", \"two\"]\n[source]\nkind = \"files\"\npaths = [\"{}\"]\n[retention]\nkeep-last = 1\n",
            src.display()
        )
        .as_bytes(),
    );
    for (repo, pw) in [("repo1", "one"), ("repo2", "two")] {
        env.cmd()
            .args(["init", "--repo"])
            .arg(env.path(repo))
            .env("BACKSTOP_PASSWORD", pw)
            .assert()
            .success();
    }
    for _ in 0..2 {
        env.cmd()
            .args(["backup", "--full", "--policy"])
            .arg(dir.join("p.toml"))
            .assert()
            .success();
    }
    dir.join("p.toml")
}

fn count(env: &Env, repo: &str, pw: &str) -> usize {
    let out = env
        .cmd()
        .args(["snapshots", "--json", "--repo"])
        .arg(env.path(repo))
        .env("BACKSTOP_PASSWORD", pw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .len()
}

#[test]
fn forget_with_a_policy_and_no_repo_uses_the_policy_targets() {
    let env = Env::new();
    let policy = two_target_policy(&env);
    assert_eq!(
        (count(&env, "repo1", "one"), count(&env, "repo2", "two")),
        (2, 2)
    );
    // Only the target named.
    env.cmd()
        .args(["forget", "--target", "two", "--policy"])
        .arg(&policy)
        .assert()
        .success();
    assert_eq!(
        (count(&env, "repo1", "one"), count(&env, "repo2", "two")),
        (2, 1)
    );
    let out = env
        .cmd()
        .args(["forget", "--target", "three", "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Every target.
    env.cmd()
        .args(["forget", "--policy"])
        .arg(&policy)
        .assert()
        .success();
    assert_eq!(
        (count(&env, "repo1", "one"), count(&env, "repo2", "two")),
        (1, 1)
    );
}

#[test]
fn policy_check_reports_every_problem_of_every_file() {
    let env = Env::new();
    let dir = env.path("policies");
    write(
        &dir.join("backstop.toml"),
        b"[targets.none]\nrepo = \"/tmp/x\"\n[targets.two]\nrepo = \"/tmp/y\"\npassword-env = \"A\"\npassword-file = \"f\"\n[targets.plain]\nrepo = \"/tmp/z\"\nencrypted = false\n[targets.good]\nrepo = \"/tmp/g\"\npassword-env = \"A\"\n",
    );
    write(
        &dir.join("a.toml"),
        b"name = \"a\"\ntargets = [\"plain\"]\n[source]\nkind = \"files\"\npaths = [\"/etc\"]\nexclude-typo = []\nalso-wrong = 1\n[schedule]\nfull = \"0 1 * * *\"\n",
    );
    write(
        &dir.join("b.toml"),
        b"name = \"b\"\ntargets = [\"good\", \"nowhere\"]\n[source]\nkind = \"files\"\npaths = [\"/etc\"]\n[retention]\nkeep-last = 0\n",
    );
    let out = env
        .cmd()
        .args(["policy", "check"])
        .arg(dir.join("backstop.toml"))
        .arg(dir.join("a.toml"))
        .arg(dir.join("b.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for want in [
        "backstop.toml:1:10: target 'none' has no password source",
        "backstop.toml:6:1: target 'two' gives 2 password sources",
        "a.toml:6:1: unknown field `exclude-typo`",
        "a.toml:7:1: unknown field `also-wrong`",
        "a.toml:9:1: schedule.full '0 1 * * *' has 5 fields",
        "seconds first",
        "b.toml:7:1: retention: keep-last = 0",
        "target 'nowhere' is not defined",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // The settings file's problems are printed once, not once per policy too.
    assert_eq!(err.matches("target 'two' gives").count(), 1, "{err}");

    // backstop.toml is checked as settings; a good one passes, alone.
    write(
        &dir.join("backstop.toml"),
        b"[targets.plain]\nrepo = \"/tmp/z\"\nencrypted = false\n",
    );
    let out = policy_check(&env, dir.join("backstop.toml"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("settings, 1 target"),
        "{}",
        stdout(&out)
    );
    // An unencrypted target that also names a password is contradictory.
    write(
        &dir.join("backstop.toml"),
        b"[targets.plain]\nrepo = \"/tmp/z\"\nencrypted = false\npassword-env = \"A\"\n",
    );
    let out = policy_check(&env, dir.join("backstop.toml"));
    assert_eq!(out.status.code(), Some(2));
}
