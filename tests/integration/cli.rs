//! The command line as an operator meets it: errors, exit codes, JSON, policies.

use super::common::*;

#[test]
fn clear_errors_and_exit_codes() {
    let env = Env::new();
    // No repository: exit 10, one clear line.
    let out = env.run(&["snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: there is no repository at"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    env.init();
    // init twice is refused.
    env.run(&["init"]).assert().code(2);
    // Wrong password: exit 12.
    let out = env
        .run(&["snapshots"])
        .env("BACKSTOP_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No password at all: a configuration error naming the ways to give one.
    let out = env
        .run(&["snapshots"])
        .env_remove("BACKSTOP_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-file"));
    // Password from a file and from a command work.
    let pw = env.path("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    env.run(&["snapshots"])
        .env_remove("BACKSTOP_PASSWORD")
        .arg("--password-file")
        .arg(&pw)
        .assert()
        .success();
    env.run(&[
        "snapshots",
        "--password-command",
        &format!("echo '{PASSWORD}'"),
    ])
    .env_remove("BACKSTOP_PASSWORD")
    .assert()
    .success();
    // Missing source path.
    let out = env.run(&["backup", "/nonexistent/path"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/path"));
    // Unknown snapshot.
    let out = env
        .run(&["restore", "deadbeef", "--target"])
        .arg(env.path("o"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unencrypted_repository_needs_no_password_and_status_reports() {
    let env = Env::new();
    env.run(&["init", "--no-encryption"])
        .env_remove("BACKSTOP_PASSWORD")
        .assert()
        .success();
    let src = env.path("src");
    write(&src.join("a"), b"a");
    env.run(&["backup"])
        .env_remove("BACKSTOP_PASSWORD")
        .arg(&src)
        .assert()
        .success();
    let out = env.cmd().args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repositories"][0]["snapshots"], 1);
    assert_eq!(v["recent_runs"][0]["kind"], "backup");
    assert_eq!(v["recent_runs"][0]["status"], "success");
    // The repository holds the plaintext nowhere (compression aside): it is still hashed.
    let out = env.run(&["ls", "latest", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["path"], "/a");
}

#[test]
fn catalog_rebuild_recovers_snapshots_from_the_repository() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a"), b"a");
    env.backup(&src, &[]);
    env.backup(&src, &[]);
    std::fs::remove_dir_all(env.path("data")).unwrap();
    env.run(&["catalog", "rebuild"]).assert().success();
    let out = env.cmd().args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repositories"][0]["snapshots"], 2);
}

#[test]
fn every_example_policy_is_valid_and_bad_ones_name_line_and_column() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = Env::new();
    env.cmd()
        .current_dir(root)
        .args(["policy", "check"])
        .assert()
        .success();

    let dir = env.path("policies");
    write(
        &dir.join("backstop.toml"),
        b"[targets.local]\nrepo = \"/tmp/x\"\npassword-env = \"PW\"\n",
    );
    write(&dir.join("bad.toml"), b"name = \"x\"\ntargets = [\"local\"]\n[source]\nkind = \"files\"\npaths = [\"/etc\"]\nexclude-typo = []\n");
    let out = policy_check(&env, dir.join("bad.toml"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // An unknown key is reported at its own line, not its table's.
    assert!(
        err.contains("bad.toml:6:1") && err.contains("unknown field `exclude-typo`"),
        "{err}"
    );

    write(&dir.join("cron.toml"), b"name = \"x\"\ntargets = [\"local\"]\n[source]\nkind = \"files\"\npaths = [\"/etc\"]\n[schedule]\nfull = \"not cron\"\n");
    let out = policy_check(&env, dir.join("cron.toml"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("schedule.full"));

    write(
        &dir.join("tgt.toml"),
        b"name = \"x\"\ntargets = [\"nowhere\"]\n[source]\nkind = \"files\"\npaths = [\"/etc\"]\n",
    );
    let out = policy_check(&env, dir.join("tgt.toml"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("target 'nowhere' is not defined"));
}

#[test]
fn backup_with_a_policy_goes_to_every_target() {
    let env = Env::new();
    let dir = env.path("policies");
    let src = env.path("src");
    write(&src.join("etc/app.conf"), b"setting = 1\n");
    write(&src.join("etc/app.tmp"), b"scratch");
    write(
        &dir.join("backstop.toml"),
        b"[targets.one]\nrepo = \"../repo1\"\npassword-command = \"echo one\"\n[targets.two]\nrepo = \"../repo2\"\npassword-env = \"PW_TWO\"\n",
    );
    write(
        &dir.join("etc.toml"),
        format!(
            "name = \"etc\"\ntargets = [\"one\", \"two\"]\n[source]\nkind = \"files\"\npaths = [\"{}\"]\nexclude = [\"*.tmp\"]\n",
            src.join("etc").display()
        )
        .as_bytes(),
    );
    env.cmd()
        .args(["init", "--repo"])
        .arg(env.path("repo1"))
        .env("BACKSTOP_PASSWORD", "one")
        .assert()
        .success();
    env.cmd()
        .args(["init", "--repo"])
        .arg(env.path("repo2"))
        .env("BACKSTOP_PASSWORD", "two")
        .assert()
        .success();
    env.cmd()
        .args(["backup", "--policy"])
        .arg(dir.join("etc.toml"))
        .env("PW_TWO", "two")
        .assert()
        .success();
    for (repo, pw) in [("repo1", "one"), ("repo2", "two")] {
        let out = env
            .cmd()
            .args(["snapshots", "--json", "--repo"])
            .arg(env.path(repo))
            .env("BACKSTOP_PASSWORD", pw)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["snapshot"]["policy"], "etc");
        let o = env.path(&format!("out-{repo}"));
        env.cmd()
            .args(["restore", "latest", "--target"])
            .arg(&o)
            .arg("--repo")
            .arg(env.path(repo))
            .env("BACKSTOP_PASSWORD", pw)
            .assert()
            .success();
        assert!(o.join("app.conf").exists() && !o.join("app.tmp").exists());
    }
}
