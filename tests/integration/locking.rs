//! Locks: reading a read-only repository, waiting for a lock until the deadline, the lock
//! TTL, and what `unlock` says and removes.

use std::time::{Duration, Instant};

use super::common::*;

/// A pid that is certainly not running: a child that was spawned and reaped.
pub fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn lock_json(host: &str, pid: u32, exclusive: bool, expires: &str) -> String {
    format!(
        r#"{{"exclusive":{exclusive},"host":"{host}","pid":{pid},"operation":"prune","created":"2026-01-01T00:00:00Z","expires":"{expires}"}}"#
    )
}

fn this_host() -> String {
    hostname::get().unwrap().to_string_lossy().into_owned()
}

/// A read-only bind mount of `src` at `at`, unmounted when dropped.
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn new(src: &std::path::Path, at: std::path::PathBuf) -> ReadOnlyMount {
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount")
            .arg("--bind")
            .arg(src)
            .arg(&at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "bind mounts need root (tests run as root in CI)");
        let m = ReadOnlyMount(at);
        let ok = std::process::Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&m.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remounting read-only");
        m
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn reading_commands_work_on_a_read_only_repository_without_a_lock() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.txt"), b"read me back");
    write(&src.join("d/b.bin"), &noise(3, 300_000));
    env.backup(&src, &[]);
    let ro = ReadOnlyMount::new(&env.repo(), env.path("ro"));
    // The mount really refuses writes with EROFS (not a permission check root would skip).
    let err = std::fs::write(ro.0.join("locks/probe"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let run = |args: &[&str]| {
        let mut c = env.cmd();
        c.args(args).env("BACKSTOP_REPO", &ro.0);
        c
    };
    let warned = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stderr)
            .matches("without a lock")
            .count()
    };
    // Automatically: one warning, then the command does its work.
    for args in [
        &["snapshots"][..],
        &["ls", "latest"],
        &["verify", "--read-data"],
    ] {
        let out = run(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(warned(&out) <= 1, "{args:?} warned more than once: {err}");
    }
    let out = run(&["verify"]).output().unwrap();
    assert_eq!(warned(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    let dest = env.path("out");
    let out = run(&["restore", "latest", "--target"])
        .arg(&dest)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(warned(&out), 1, "{err}");
    assert!(
        err.contains("Read-only file system"),
        "names the cause: {err}"
    );
    assert_same_tree(&src, &dest);
    // With --no-lock: no attempt, no warning.
    let dest2 = env.path("out2");
    let out = run(&["restore", "latest", "--no-lock", "--target"])
        .arg(&dest2)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(warned(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&src, &dest2);
    // Writing operations still need their lock: they fail, and say why.
    let out = run(&["backup"]).arg(&src).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"));
    let out = run(&["prune"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn no_lock_takes_no_lock_and_is_refused_for_writing_commands() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    write(&src.join("a.txt"), b"x");
    env.backup(&src, &[]);
    // A live exclusive lock blocks a restore, but not one with --no-lock.
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    std::fs::write(
        locks.join("e".repeat(64)),
        lock_json(
            &this_host(),
            std::process::id(),
            true,
            "2999-01-01T00:00:00Z",
        ),
    )
    .unwrap();
    let out = env
        .run(&["restore", "latest", "--target"])
        .arg(env.path("o1"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(11));
    env.run(&["restore", "latest", "--no-lock", "--target"])
        .arg(env.path("o2"))
        .assert()
        .success();
    env.run(&["verify", "--no-lock"]).assert().success();
    std::fs::remove_file(locks.join("e".repeat(64))).unwrap();
    for args in [&["backup", "--no-lock"][..], &["prune", "--no-lock"]] {
        let mut c = env.run(args);
        if args[0] == "backup" {
            c.arg(&src);
        }
        let out = c.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("--no-lock"));
    }
    assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 0);
}

#[test]
fn retry_lock_waits_until_its_deadline() {
    let env = Env::new();
    env.init();
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    std::fs::write(
        locks.join("e".repeat(64)),
        lock_json(
            &this_host(),
            std::process::id(),
            true,
            "2999-01-01T00:00:00Z",
        ),
    )
    .unwrap();
    let src = env.path("src");
    write(&src.join("a"), b"a");
    for (arg, secs) in [("3s", 3.0), ("5s", 5.0)] {
        let started = Instant::now();
        let out = env
            .run(&["backup", "--retry-lock", arg])
            .arg(&src)
            .output()
            .unwrap();
        let took = started.elapsed().as_secs_f64();
        assert_eq!(out.status.code(), Some(11));
        assert!(
            took >= secs && took < secs + 1.5,
            "--retry-lock {arg} gave up after {took:.1} s"
        );
    }
    // Once the holder goes away within the deadline, the waiting command gets the lock.
    let holder = locks.join("e".repeat(64));
    let remover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        std::fs::remove_file(holder).unwrap();
    });
    env.run(&["backup", "--retry-lock", "30s"])
        .arg(&src)
        .assert()
        .success();
    remover.join().unwrap();
}

/// Waits until a lock object appears, and returns its content.
fn wait_for_lock_content(env: &Env) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no lock was taken");
        if let Ok(d) = std::fs::read_dir(env.repo().join("locks")) {
            for e in d {
                if let Ok(b) = std::fs::read(e.unwrap().path())
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
                {
                    return v;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn backstop_lock_ttl_sets_the_lock_expiry_and_bad_values_are_config_errors() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for i in 0..6 {
        write(&src.join(format!("f{i}")), &noise(40 + i, 8 << 20));
    }
    for (value, secs) in [("90", 90), ("7m", 420)] {
        let child = env.spawn(
            &["backup", "--full", src.to_str().unwrap()],
            &[("BACKSTOP_LOCK_TTL", value)],
        );
        let lock = wait_for_lock_content(&env);
        let t = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(lock[k].as_str().unwrap())
                .unwrap()
                .timestamp()
        };
        let ttl = t("expires") - t("created");
        assert!(
            (secs..secs + 2).contains(&ttl),
            "BACKSTOP_LOCK_TTL={value}: lock valid for {ttl} s: {lock}"
        );
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
    }
    for bad in ["5", "0", "soon", "-3", "10x"] {
        let out = env
            .run(&["snapshots"])
            .env("BACKSTOP_LOCK_TTL", bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "BACKSTOP_LOCK_TTL={bad}: {err}");
        assert!(err.contains("BACKSTOP_LOCK_TTL"), "{err}");
    }
}

#[test]
fn unlock_says_why_a_lock_is_stale_and_removes_garbage_lock_objects() {
    let env = Env::new();
    env.init();
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let dead = dead_pid();
    std::fs::write(
        locks.join("b".repeat(64)),
        lock_json(&this_host(), dead, false, "2999-01-01T00:00:00Z"),
    )
    .unwrap();
    std::fs::write(
        locks.join("c".repeat(64)),
        lock_json("other-host", 1, false, "2020-01-01T00:00:00Z"),
    )
    .unwrap();
    // Garbage: an empty and a truncated lock object, old; and an empty one just written
    // (a lock being written right now), which stays.
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    for (name, content) in [("d", ""), ("e", "{\"exclusive\":tr")] {
        let p = locks.join(name.repeat(64));
        std::fs::write(&p, content).unwrap();
        filetime::set_file_mtime(&p, old).unwrap();
    }
    std::fs::write(locks.join("f".repeat(64)), "").unwrap();
    let out = env.run(&["unlock"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = |needle: &str| {
        stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}: {stdout}"))
            .to_string()
    };
    let dead_line = line(&format!("pid {dead} "));
    assert!(
        dead_line.contains(&format!("process {dead} is gone")) && !dead_line.contains("expire"),
        "{dead_line}"
    );
    assert!(
        line("other-host").contains("expired at 2020-01-01T00:00:00Z"),
        "{stdout}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&locks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["f".repeat(64)], "{stdout}");
    assert!(stdout.contains("4 stale lock(s) removed"), "{stdout}");
}
