//! Backup hooks (issue #8 item 4): commands run before and after a backup of any source,
//! with a timeout and a failure policy, their output kept in the catalog's run record.

use std::path::Path;
use std::time::{Duration, Instant};

use super::common::{Env, write};

/// A repository and a small source tree.
fn setup() -> Env {
    let env = Env::new();
    env.init();
    write(&env.path("src/data.txt"), b"payload\n");
    env
}

/// `sh -c 'SCRIPT'` as one command line for a hook flag.
fn sh(script: &str) -> String {
    format!("sh -c '{script}'")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// How a `backstop` run ended: its exit code, standard output and standard error.
struct Ran {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

fn ran(c: &mut assert_cmd::Command) -> Ran {
    let out = c.output().expect("run backstop");
    Ran {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `backstop [GLOBAL…] backup SRC ARGS…` on the environment's repository and `src/`.
fn backup(env: &Env, global: &[&str], args: &[&str]) -> Ran {
    ran(env
        .run(global)
        .arg("backup")
        .arg(env.path("src"))
        .args(args))
}

/// `backstop backup --policy` of the policy `p` with `hooks` (see [`policy`]).
fn backup_policy(env: &Env, hooks: &str) -> Ran {
    let file = policy(env, hooks);
    ran(env.cmd().args(["backup", "--policy"]).arg(&file))
}

/// A policy `p` in `env`'s `policies/` backing up `src/` to the environment's repository,
/// with `hooks` (TOML) appended.
fn policy(env: &Env, hooks: &str) -> std::path::PathBuf {
    let dir = env.path("policies");
    write(
        &dir.join("backstop.toml"),
        format!(
            "[targets.main]\nrepo = \"{}\"\npassword-env = \"BACKSTOP_PASSWORD\"\n",
            env.repo().display()
        )
        .as_bytes(),
    );
    let file = dir.join("p.toml");
    write(
        &file,
        format!(
            "name = \"p\"\ntargets = [\"main\"]\n[source]\nkind = \"files\"\npaths = [\"{}\"]\n\n{hooks}",
            env.path("src").display()
        )
        .as_bytes(),
    );
    file
}

#[test]
fn before_and_after_hooks_run_in_order_around_the_backup_and_see_its_result() {
    let env = setup();
    let log = env.path("hooks.log");
    let l = log.display();
    let flushed = env.path("src/flushed");
    // The first before-hook writes a file into the source: it is in the snapshot only if
    // the hook ran before the backup read the source.
    let before1 = sh(&format!(
        "echo before1 >> {l}; echo flushed > {}",
        flushed.display()
    ));
    let before2 = sh(&format!("echo before2 $BACKSTOP_HOOK >> {l}"));
    let after1 = sh(&format!(
        "echo after1 $BACKSTOP_HOOK $BACKSTOP_RESULT $BACKSTOP_SNAPSHOT pw=${{BACKSTOP_PASSWORD:-none}} >> {l}"
    ));
    let after2 = sh(&format!("echo after2 >> {l}"));
    let out = backup(
        &env,
        &["--json"],
        &[
            "--hook-before",
            &before1,
            "--hook-before",
            &before2,
            "--hook-after",
            &after1,
            "--hook-after",
            &after2,
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v[0]["id"].as_str().unwrap().to_string();
    let lines: Vec<String> = read(&log).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            "before1".to_string(),
            "before2 before".into(),
            // The repository password is not passed on to hooks.
            format!("after1 after success {id} pw=none"),
            "after2".into(),
        ]
    );
    // What the before-hook wrote was backed up (one directory: its content is the root).
    let restored = env.restore(&id, "restored");
    assert_eq!(read(&restored.join("flushed")), "flushed\n");
    // The JSON output lists the hooks, in order.
    let hooks = v[0]["hooks"].as_array().unwrap();
    let phases: Vec<&str> = hooks.iter().map(|h| h["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["before", "before", "after", "after"]);
    assert!(
        hooks.iter().all(|h| h["ok"] == true && h["exit_code"] == 0),
        "{v}"
    );
}

#[test]
fn a_failing_before_hook_aborts_the_backup_with_no_snapshot_and_after_hooks_still_run() {
    let env = setup();
    let marker = env.path("after");
    let never = env.path("never");
    let started = Instant::now();
    let failing = sh("echo flushing; echo cannot flush tables >&2; exit 3");
    let next = sh(&format!("touch {}", never.display()));
    let after = sh(&format!(
        "echo $BACKSTOP_RESULT ${{BACKSTOP_SNAPSHOT:-no-snapshot}} \"$BACKSTOP_ERROR\" > {}",
        marker.display()
    ));
    let out = backup(
        &env,
        &[],
        &[
            "--hook-before",
            &failing,
            "--hook-before",
            &next,
            "--hook-after",
            &after,
        ],
    );
    let err = &out.stderr;
    assert_eq!(out.code, Some(1), "{err}");
    // One error naming the hook, how it ended and its last output.
    assert!(err.contains("before-hook 'sh -c 'echo flushing"), "{err}");
    assert!(err.contains("exited with status 3"), "{err}");
    assert!(err.contains("cannot flush tables"), "{err}");
    assert!(err.contains("no backup was made"), "{err}");
    // No snapshot; the next before-hook did not run; the after-hook saw the failure.
    assert!(env.snapshots().is_empty());
    assert!(!never.exists());
    let after = read(&marker);
    assert!(after.starts_with("failure no-snapshot "), "{after}");
    assert!(after.contains("exited with status 3"), "{after}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_failing_before_hook_with_continue_warns_and_the_backup_runs() {
    let env = setup();
    let out = backup_policy(
        &env,
        "[[hooks.before]]\ncommand = \"sh -c 'echo lvcreate failed >&2; exit 5'\"\non-failure = \"continue\"\ntimeout = \"30s\"\n",
    );
    let err = &out.stderr;
    assert_eq!(out.code, Some(0), "{err}");
    assert!(err.contains("WARN"), "{err}");
    assert!(
        err.contains("exited with status 5") && err.contains("lvcreate failed"),
        "{err}"
    );
    assert!(err.contains("on-failure = continue"), "{err}");
    assert_eq!(env.snapshots().len(), 1);
}

#[test]
fn a_hook_that_runs_past_its_timeout_is_killed_with_what_it_started() {
    let env = setup();
    let started = Instant::now();
    // The hook leaves a background child holding its output: both are stopped.
    let slow = sh("echo waiting; sleep 60 & sleep 60");
    let out = backup(&env, &[], &["--hook-timeout", "1s", "--hook-before", &slow]);
    let took = started.elapsed();
    let err = &out.stderr;
    assert_eq!(out.code, Some(1), "{err}");
    assert!(err.contains("timed out after 1s and was stopped"), "{err}");
    assert!(err.contains("waiting"), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(env.snapshots().is_empty());
    // No sleeper is left behind.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", "sleep 60 & sleep 60"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn a_failing_after_hook_warns_by_default_and_fails_the_command_with_abort() {
    let env = setup();
    // Default for after-hooks: a warning, the backup succeeds.
    let failing = sh("echo mail server down >&2; exit 7");
    let out = backup(&env, &[], &["--hook-after", &failing]);
    let err = &out.stderr;
    assert_eq!(out.code, Some(0), "{err}");
    assert!(
        err.contains("after-hook") && err.contains("mail server down"),
        "{err}"
    );
    assert_eq!(env.snapshots().len(), 1);
    // With abort: the command fails, saying the snapshot was saved (and it was).
    let out = backup_policy(
        &env,
        "[[hooks.after]]\ncommand = \"false\"\non-failure = \"abort\"\n",
    );
    let err = &out.stderr;
    assert_eq!(out.code, Some(1), "{err}");
    assert!(err.contains("was saved, but an after-hook failed"), "{err}");
    assert!(
        err.contains("the after-hook 'false' exited with status 1"),
        "{err}"
    );
    assert_eq!(env.snapshots().len(), 2);
    // The catalog has the snapshot, and the run as failed with its snapshot.
    let v = status(&env, &[]);
    let run = &v["recent_runs"][0];
    assert_eq!(run["status"], "failed", "{v}");
    assert!(run["snapshot_id"].is_string(), "{v}");
    assert_eq!(v["repositories"][0]["snapshots"], 2, "{v}");
}

/// `backstop [GLOBAL…] status --json`, parsed.
fn status(env: &Env, global: &[&str]) -> serde_json::Value {
    let out = ran(env.run(global).args(["status", "--json"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Backs up with a before-hook that prints 30 lines and an after-hook that fails, then checks
/// what `status` shows of them (from the catalog at `catalog`, or the default SQLite one).
fn hooks_are_recorded(catalog: Option<&str>) {
    let env = setup();
    let cat: Vec<&str> = catalog.map(|c| vec!["--catalog", c]).unwrap_or_default();
    let before = sh("for i in $(seq 1 30); do echo line $i; done; echo oops >&2");
    let out = backup(
        &env,
        &cat,
        &["--hook-before", &before, "--hook-after", "false"],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v = status(&env, &cat);
    let run = &v["recent_runs"][0];
    assert_eq!(
        (&run["kind"], &run["status"]),
        (&"backup".into(), &"success".into()),
        "{v}"
    );
    let hooks = run["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{v}");
    let (b, a) = (&hooks[0], &hooks[1]);
    assert_eq!(
        (&b["phase"], &b["command"]),
        (&"before".into(), &before.clone().into())
    );
    assert_eq!((&b["ok"], &b["exit_code"]), (&true.into(), &0.into()));
    assert_eq!(b["ended"], "exited with status 0");
    assert!(b["duration_ms"].as_i64().unwrap() >= 0);
    // The last 20 lines of standard output and error together.
    let output: Vec<&str> = b["output"].as_str().unwrap().lines().collect();
    assert_eq!(output.len(), 20, "{v}");
    assert_eq!(
        (output[0], output[18], output[19]),
        ("line 12", "line 30", "oops")
    );
    assert_eq!(
        (&a["phase"], &a["command"], &a["ok"]),
        (&"after".into(), &"false".into(), &false.into())
    );
    assert_eq!(
        (&a["exit_code"], &a["ended"]),
        (&1.into(), &"exited with status 1".into())
    );
    // The table names them too.
    let out = ran(env.run(&cat).arg("status"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Hooks of these runs") && text.contains("exited with status 1"),
        "{text}"
    );
    assert!(text.contains("oops"), "{text}");
}

#[test]
fn the_sqlite_catalog_keeps_each_hooks_output() {
    hooks_are_recorded(None);
}

#[test]
fn the_postgres_catalog_keeps_each_hooks_output() {
    let db = super::catalog::PgDatabase::create();
    hooks_are_recorded(Some(&db.url()));
}

#[test]
fn policy_hooks_are_checked_with_their_line() {
    let env = setup();
    let cases = [
        (
            "[[hooks.before]]\ncommand = \"sync\"\ntimeout = \"soon\"\n",
            "p.toml:9:",
        ),
        (
            "[[hooks.before]]\ncommand = \"sync\"\ntimeout = \"soon\"\n",
            "timeout 'soon' is not a duration",
        ),
        (
            "[[hooks.after]]\ncommand = \"  \"\n",
            "hooks.after[0].command: give the command to run",
        ),
        (
            "[[hooks.after]]\ncommand = \"true\"\non-failure = \"retry\"\n",
            "retry",
        ),
    ];
    for (hooks, expected) in cases {
        let out = super::common::policy_check(&env, policy(&env, hooks));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
    // A bad command line on the command line is refused before anything runs.
    let out = backup(&env, &[], &["--hook-before", "sh -c 'unbalanced"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--hook-before"), "{}", out.stderr);
}

#[test]
fn a_signal_stops_a_before_hook_and_the_after_hooks_still_run() {
    let env = setup();
    let (started_marker, after) = (env.path("started"), env.path("after"));
    let slow = sh(&format!("touch {}; sleep 60", started_marker.display()));
    let report = sh(&format!("echo $BACKSTOP_RESULT > {}", after.display()));
    let src = env.path("src");
    let args = ["backup", "--hook-before", &slow, "--hook-after", &report];
    let started = Instant::now();
    let child = env.spawn(&[&args[..], &[src.to_str().unwrap()]].concat(), &[]);
    while !started_marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("SIGINT") && err.contains("before-hook"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");
    assert!(env.snapshots().is_empty());
    assert_eq!(read(&after), "failure\n");
}
