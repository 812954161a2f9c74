//! The command source: `backup --stdin-from-command` stores a command's output as one file,
//! streamed; a command that fails, is killed or times out saves no snapshot.

use std::time::{Duration, Instant};

use super::common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A shell command that writes `mib` MiB of deterministic, incompressible bytes.
fn generator(seed: u64, mib: usize) -> String {
    format!(
        "python3 -c 'import random,sys; r=random.Random({seed}); w=sys.stdout.buffer.write; [w(r.randbytes(1<<20)) for _ in range({mib})]'"
    )
}

fn generated(seed: u64, mib: usize) -> Vec<u8> {
    let out = std::process::Command::new("sh")
        .args(["-c", &generator(seed, mib)])
        .output()
        .expect("python3");
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), mib << 20);
    out.stdout
}

fn backup_command(env: &Env, command: &str, extra: &[&str]) -> std::process::Output {
    env.run(&["backup", "--json", "--stdin-from-command", command])
        .args(extra)
        .output()
        .expect("run")
}

#[test]
fn a_command_stream_round_trips_and_a_second_run_stores_almost_nothing() {
    let env = Env::new();
    env.init();
    let cmd = generator(7, 48);
    let out = backup_command(&env, &cmd, &["--stdin-filename", "db.dump"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snap = &first[0]["snapshot"];
    assert_eq!(snap["source"], "command");
    assert_eq!(snap["paths"], serde_json::json!(["db.dump"]));
    assert_eq!(snap["summary"]["bytes_total"], 48u64 << 20);

    let out = backup_command(&env, &cmd, &["--stdin-filename", "db.dump"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &second[0]["snapshot"];
    assert_eq!(
        s["parent"], first[0]["id"],
        "the same stream is its own parent"
    );
    assert!(
        s["summary"]["bytes_stored"].as_u64().unwrap() < 64 << 10,
        "an unchanged stream stored {} bytes again",
        s["summary"]["bytes_stored"]
    );

    let dir = env.restore("latest", "out");
    let restored = std::fs::read(dir.join("db.dump")).unwrap();
    assert!(restored == generated(7, 48), "restored stream differs");
}

#[test]
fn a_large_stream_keeps_its_content_list_out_of_the_tree() {
    // 600 MiB of chunks of about 1 MiB: more pieces than a tree holds inline, so the content
    // goes to list blobs; restore and an incremental run read them back.
    let env = Env::new();
    env.run(&["init", "--no-encryption"]).assert().success();
    let cmd = generator(3, 600);
    let out = backup_command(&env, &cmd, &["--stdin-filename", "big"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = env.restore("latest", "out");
    let restored = std::fs::read(dir.join("big")).unwrap();
    assert!(restored == generated(3, 600), "restored stream differs");
    env.run(&["verify", "--read-data"]).assert().success();
}

#[test]
fn a_failing_command_saves_no_snapshot_and_says_why() {
    let env = Env::new();
    env.init();
    let out = backup_command(
        &env,
        "sh -c 'head -c 3000000 /dev/urandom; echo connection refused >&2; exit 7'",
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("exited with status 7"), "{err}");
    assert!(err.contains("connection refused"), "{err}");
    assert!(err.contains("sh -c"), "names the command: {err}");
    assert!(env.snapshots().is_empty());

    let out = backup_command(&env, "sh -c 'kill -9 $$'", &[]);
    let err = stderr(&out);
    assert!(err.contains("killed by signal 9 (SIGKILL)"), "{err}");
    assert!(env.snapshots().is_empty());

    let out = backup_command(&env, "no-such-program-here --flag", &[]);
    let err = stderr(&out);
    assert!(
        err.contains("cannot run the command 'no-such-program-here --flag'"),
        "{err}"
    );
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(env.snapshots().is_empty());

    for (args, expected) in [
        (vec!["--stdin-from-command", ""], "give the command to run"),
        (
            vec!["--stdin-from-command", "cat 'unclosed"],
            "cannot split",
        ),
        (
            vec!["--stdin-from-command", "true", "--stdin-filename", "a/b"],
            "is not a file name",
        ),
        (
            vec!["--stdin-from-command", "true", "--timeout", "soon"],
            "is not a duration",
        ),
    ] {
        let out = env.run(&["backup"]).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
    assert!(env.snapshots().is_empty());
}

#[test]
fn a_command_that_runs_too_long_is_stopped_and_saves_nothing() {
    let env = Env::new();
    env.init();
    let started = Instant::now();
    let out = backup_command(
        &env,
        "sh -c 'echo some output; echo still working >&2; exec sleep 60'",
        &["--timeout", "2s"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("timed out after 2s"), "{err}");
    assert!(err.contains("still working"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(env.snapshots().is_empty());
}

#[test]
fn streams_and_files_are_separate_groups() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a"), b"a");
    let files = env.backup(&src, &[]);
    let out = backup_command(&env, "echo one", &["--stdin-filename", "one"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = backup_command(&env, "echo two", &["--stdin-filename", "two"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Each stream name is its own group: neither is the other's parent, nor the files'.
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 3);
    for s in &snaps[1..] {
        assert_eq!(s["snapshot"]["source"], "command");
        assert!(s["snapshot"]["parent"].is_null(), "{s}");
    }
    let id = env.backup(&src, &[]);
    let last = env
        .snapshots()
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap();
    assert_eq!(last["snapshot"]["parent"], files.as_str());
    // keep-last 1 keeps one snapshot per group: both streams and the latest files one.
    env.run(&["forget", "--keep-last", "1"]).assert().success();
    assert_eq!(env.snapshots().len(), 3);
}

#[test]
fn a_signal_stops_the_backup_and_its_command_and_leaves_no_lock() {
    let env = Env::new();
    env.init();
    for sig in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGINT] {
        let marker = env.path(&format!("started-{sig}"));
        let cmd = format!(
            "sh -c 'head -c 5000000 /dev/urandom; touch {}; exec sleep 60'",
            marker.display()
        );
        let started = Instant::now();
        let child = env.spawn(&["backup", "--stdin-from-command", &cmd], &[]);
        while !marker.exists() {
            assert!(started.elapsed() < Duration::from_secs(60), "never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(130), "{sig}: {err}");
        assert!(err.contains(sig.as_str()), "{sig}: names the signal: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{sig}: took {:?}",
            started.elapsed()
        );
        assert!(env.snapshots().is_empty(), "{sig}");
        let locks = std::fs::read_dir(env.repo().join("locks")).unwrap().count();
        assert_eq!(locks, 0, "{sig}: a lock was left behind");
    }
}
