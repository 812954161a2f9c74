//! Output an operator and a script can trust: closed pipes, colour, JSON logs and errors,
//! consistent exit codes, one-sentence storage errors, one time format.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use super::common::*;

/// A repository with one snapshot of `n` files (enough output to fill a pipe).
fn repo_with_files(n: usize) -> Env {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for i in 0..n {
        write(&src.join(format!("d{}/file-{i:05}", i % 10)), b"x");
    }
    env.backup(&src, &[]);
    env
}

/// Runs `backstop ARGS`, reads one line of its output and closes the pipe, like `| head -1`.
fn head_one(env: &Env, args: &[&str]) -> (Option<i32>, String) {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("backstop"));
    c.args(args)
        .env("BACKSTOP_REPO", env.repo())
        .env("BACKSTOP_PASSWORD", PASSWORD)
        .env("BACKSTOP_DATA_DIR", env.path("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // The reader is dropped here: the pipe is closed with output still to come.
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_closed_pipe_ends_every_command_quietly_with_exit_0() {
    // 3,000 entries print ~200 KiB: far more than a pipe holds, so `ls` must meet the closed pipe.
    let env = repo_with_files(3000);
    for args in [
        &["ls", "latest"][..],
        &["ls", "--json", "latest"],
        &["snapshots"],
        &["status"],
        &["status", "--json"],
    ] {
        let (code, err) = head_one(&env, args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

#[test]
fn no_colour_and_json_logs_only_json_when_not_a_terminal() {
    let env = repo_with_files(3);
    // A stale lock makes every locking command log a warning.
    write(
        &env.repo().join("locks/stale"),
        br#"{"exclusive":false,"host":"elsewhere","pid":1,"operation":"backup",
            "created":"2020-01-01T00:00:00Z","expires":"2020-01-01T00:00:00Z"}"#,
    );
    let out = env
        .run(&["-vv", "restore", "latest", "--target"])
        .arg(env.path("out"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stale lock"),
        "the stale lock is logged: {err}"
    );
    assert!(!err.contains('\x1b'), "ANSI escapes in {err:?}");

    // --log-format json: every line on standard error is JSON, failures included.
    for args in [
        &["-vv", "--log-format", "json", "verify"][..],
        &[
            "--log-format",
            "json",
            "restore",
            "nosuchsnapshot",
            "--target",
            "/tmp/x",
        ],
    ] {
        let out = env.run(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty(), "{args:?} logs something");
        for line in err.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {line}"));
        }
    }
}

#[test]
fn a_warning_logged_by_a_worker_thread_carries_the_job_and_its_run_id() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a/f"), b"kept");
    write(&src.join("b/x.tmp"), b"left out");
    // "nothing backed up" for b is warned by the walker thread, not the job's thread.
    let out = env
        .run(&["--log-format", "json", "backup", "--exclude", "*.tmp"])
        .arg(src.join("a"))
        .arg(src.join("b"))
        .env("BACKSTOP_LOG", "backstop=info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let line = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["target"] == "backstop::pipeline::ingest"
                && v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("nothing backed up"))
        })
        .unwrap_or_else(|| panic!("no warning from the walker: {err}"));
    assert_eq!(line["span"]["name"], "job", "{line}");
    assert_eq!(line["span"]["kind"], "backup", "{line}");
    let run = line["span"]["run"].as_i64().unwrap_or(0);
    assert!(run > 0, "not a recorded run id: {line}");
    let status = env.run(&["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        status.to_string().contains(&format!("\"id\":{run}")),
        "run {run} is not in the catalog: {status}"
    );
}

#[test]
fn json_failures_print_a_json_error_object_with_the_exit_code() {
    let env = Env::new();
    let out = env.run(&["snapshots", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(10));
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).expect("JSON error object");
    assert_eq!(v["error"]["kind"], "repository-not-found");
    assert_eq!(v["error"]["exit_code"], 10);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no repository")
    );
    assert!(out.stdout.is_empty(), "nothing on stdout for a failure");
}

#[test]
fn password_sources_that_fail_are_configuration_errors() {
    let env = repo_with_files(1);
    let out = env
        .run(&["snapshots", "--password-file"])
        .arg(env.path("no-such-password-file"))
        .env_remove("BACKSTOP_PASSWORD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no-such-password-file"), "{err}");
    let out = env
        .run(&["snapshots", "--password-command", "exit 3"])
        .env_remove("BACKSTOP_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn storage_errors_are_one_sentence() {
    let env = Env::new();
    // A repository "inside" a regular file: every storage call fails with ENOTDIR.
    let file = env.path("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let out = env
        .cmd()
        .args(["init", "--repo"])
        .arg(file.join("repo"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("Not a directory"), "{err}");
    for noise in ["context:", "service:", "Unexpected", "=>", "source:"] {
        assert!(!err.contains(noise), "library context {noise:?} in {err}");
    }
}

/// Whether `line` holds a time as `YYYY-MM-DD HH:MM:SS` (two words), not RFC 3339.
fn has_table_time(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let date = |w: &str| w.len() == 10 && w.as_bytes()[4] == b'-' && w.as_bytes()[7] == b'-';
    let time = |w: &str| w.len() == 8 && w.as_bytes()[2] == b':' && w.as_bytes()[5] == b':';
    words.windows(2).any(|p| date(p[0]) && time(p[1]))
}

#[test]
fn tables_print_local_time_to_the_second() {
    let env = repo_with_files(2);
    let run = |args: &[&str]| {
        let out = env.run(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let snaps = run(&["snapshots"]);
    let row = snaps.lines().nth(2).expect("a snapshot row");
    assert!(has_table_time(row), "snapshots: {row}");
    let ls = run(&["ls", "latest"]);
    let row = ls.lines().next().expect("an entry");
    assert!(has_table_time(row), "ls: {row}");
    let status = run(&["status"]);
    let rows: Vec<&str> = status.lines().filter(|l| l.contains("backup")).collect();
    assert!(!rows.is_empty(), "{status}");
    for row in rows {
        assert!(has_table_time(row), "status: {row}");
    }
}
