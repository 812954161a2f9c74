//! Storage faults: transient ones are retried, the rest fail clearly, nothing is committed
//! unless stored and verified, and no corruption goes unnoticed.

use super::common::*;

fn tree(env: &Env, seed: u64) -> std::path::PathBuf {
    let src = env.path(&format!("src{seed}"));
    for i in 0..4 {
        write(
            &src.join(format!("big{i}.bin")),
            &noise(seed * 10 + i, 5 << 20),
        );
    }
    for i in 0..30 {
        write(
            &src.join(format!("small/{i}.txt")),
            format!("file {i} of {seed}\n").repeat(40).as_bytes(),
        );
    }
    src
}

/// An error is one line starting with "error:", never a panic (exit 101) or a backtrace; a
/// partial success (exit 3) names what failed and ends with a "warning:" summary.
fn assert_clean_failure(out: &std::process::Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{what} panicked: {err}");
    assert!(out.status.code().is_some(), "{what} died by a signal");
    let clear = if out.status.code() == Some(3) {
        let warnings = err.lines().filter(|l| l.starts_with("warning: ")).count();
        warnings >= 1 && (warnings >= 2 || err.lines().any(|l| l.starts_with("FAILED: ")))
    } else {
        err.lines().any(|l| l.starts_with("error: "))
    };
    assert!(clear, "{what}: no clear error: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
}

/// Counts, in a run's log, the faults injected of `kind` and the transient errors retried.
fn fault_counts(stderr: &str, kind: &str) -> (usize, usize) {
    let injected = stderr
        .lines()
        .filter(|l| l.contains(&format!("fault injected: {kind} on ")))
        .count();
    let retried = stderr
        .lines()
        .filter(|l| l.contains("retrying ") && l.contains("after a transient error"))
        .count();
    (injected, retried)
}

#[test]
fn every_fault_kind_is_retried_or_reported_and_nothing_corrupt_is_accepted() {
    let kinds = [
        "write-error",
        "write-timeout",
        "read-error",
        "read-truncate",
        "read-bitflip",
        "list-lag",
    ];
    for (n, kind) in kinds.iter().enumerate() {
        // Which objects a seed strikes depends on their names, which differ every run (random
        // repository keys): a seed that happens to strike nothing is tried again with another.
        let (injected, retried) = (0..12)
            .map(|attempt| fault_round(kind, n as u64 + 1, n + 10 * attempt))
            .find(|&(i, r)| i >= 1 && (r >= 1 || *kind == "list-lag"))
            .unwrap_or((0, 0));
        // The faults really fired, and the transient ones were retried.
        assert!(
            injected >= 1,
            "{kind}: no fault injected, or none retried, with 12 seeds"
        );
        eprintln!("{kind}: {injected} injected, {retried} retried");
    }
}

/// One round of backup, verify and restore under `kind` faults with `seed`; returns the
/// faults injected and the transient errors retried.
fn fault_round(kind: &str, data_seed: u64, seed: usize) -> (usize, usize) {
    let env = Env::new();
    env.init();
    let src = tree(&env, data_seed);
    // Writes are few (packs, index, manifest, locks): strike them more often.
    let p = if kind.starts_with("write") { 0.5 } else { 0.25 };
    let faults = format!("{kind}={p},seed={seed}");
    let (mut injected, mut retried) = (0, 0);
    let mut count = |out: &std::process::Output| {
        let (i, r) = fault_counts(&String::from_utf8_lossy(&out.stderr), kind);
        injected += i;
        retried += r;
    };
    // Backup under faults: either it committed a complete snapshot, or it failed clearly
    // and committed nothing.
    let out = env
        .run(&["backup"])
        .arg(&src)
        .env("BACKSTOP_FAULTS", &faults)
        .env("BACKSTOP_LOG", "backstop=info")
        .output()
        .unwrap();
    count(&out);
    let committed = env.snapshots().len();
    if out.status.success() {
        assert_eq!(committed, 1, "{kind}");
    } else {
        assert_clean_failure(&out, kind);
        assert_eq!(committed, 0, "{kind}: a failed backup committed a snapshot");
        env.backup(&src, &[]);
    }
    // Without faults, the repository is intact.
    env.run(&["verify", "--read-data"]).assert().success();
    // Verify and restore under faults: success means correct, failure means clearly.
    let out = env
        .run(&["verify", "--read-data"])
        .env("BACKSTOP_FAULTS", &faults)
        .env("BACKSTOP_LOG", "backstop=info")
        .output()
        .unwrap();
    count(&out);
    if !out.status.success() {
        assert_clean_failure(&out, kind);
    }
    let dest = env.path("out");
    let out = env
        .run(&["restore", "latest", "--target"])
        .arg(&dest)
        .env("BACKSTOP_FAULTS", &faults)
        .env("BACKSTOP_LOG", "backstop=info")
        .output()
        .unwrap();
    count(&out);
    if out.status.success() {
        assert_same_tree(&src, &dest);
    } else {
        assert_clean_failure(&out, kind);
        // Whatever was restored is correct; failed files are not left behind.
        let restored = if dest.exists() {
            listing(&dest)
        } else {
            vec![]
        };
        for e in restored.iter().filter(|e| e.kind == "file") {
            let rel = std::str::from_utf8(&e.path).unwrap();
            assert_eq!(
                std::fs::read(dest.join(rel)).unwrap(),
                std::fs::read(src.join(rel)).unwrap(),
                "{kind}: {rel}"
            );
        }
    }
    (injected, retried)
}

#[test]
fn a_fault_seed_replays_the_same_faults() {
    // The same restore (parallel fetches) of the same repository twice, with the same seed:
    // the same faults on the same objects, whatever order the threads ran in.
    let env = Env::new();
    env.init();
    let src = tree(&env, 9);
    env.backup(&src, &[]);
    let faults = "read-error=0.3,read-truncate=0.2,read-bitflip=0.2,seed=11";
    let run = |dir: &str| {
        let out = env
            .run(&["restore", "latest", "--target"])
            .arg(env.path(dir))
            .env("BACKSTOP_FAULTS", faults)
            .env("BACKSTOP_LOG", "backstop=info")
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| l.split_once("fault injected: ").map(|(_, f)| f.to_string()))
            .filter(|f| !f.contains(" on locks/"))
            .collect();
        v.sort();
        v
    };
    let (a, b) = (run("out1"), run("out2"));
    assert!(a.len() >= 3, "too few faults to compare: {a:?}");
    assert_eq!(a, b, "the same seed injected different faults");
}

/// A small tmpfs, unmounted when dropped.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn new(path: std::path::PathBuf, size: &str) -> SmallFs {
        std::fs::create_dir_all(&path).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a small tmpfs needs root (tests run as root in CI)"
        );
        SmallFs(path)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn out_of_space_fails_clearly_and_leaves_the_repository_usable() {
    let env = Env::new();
    let fs = SmallFs::new(env.path("small"), "24m");
    let repo = fs.0.join("repo");
    let run = |args: &[&str]| {
        let mut c = env.cmd();
        c.args(args).env("BACKSTOP_REPO", &repo);
        c
    };
    run(&["init"]).assert().success();
    let small = env.path("small-src");
    write(&small.join("a.txt"), b"fits");
    run(&["backup"]).arg(&small).assert().success();
    let big = env.path("big-src");
    for i in 0..4 {
        write(&big.join(format!("{i}.bin")), &noise(i, 10 << 20));
    }
    let out = run(&["backup"]).arg(&big).output().unwrap();
    assert_clean_failure(&out, "backup on a full disk");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The failed writes removed their temporary objects: nothing is left behind.
    let tmp: Vec<_> = std::fs::read_dir(repo.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(tmp.is_empty(), "temporary objects left behind: {tmp:?}");
    let out = run(&["snapshots", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "no partial snapshot");
    run(&["verify", "--read-data"]).assert().success();
    let dest = env.path("out");
    run(&["restore", "latest", "--target"])
        .arg(&dest)
        .assert()
        .success();
    assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), b"fits");
    // The operator makes room; prune reclaims the failed backup's unreferenced packs and
    // temporary files, and the repository keeps working.
    let st = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&fs.0)
        .status()
        .unwrap();
    assert!(st.success());
    run(&["prune", "--grace", "0s"]).assert().success();
    run(&["prune", "--grace", "0s"]).assert().success();
    // The failed backup's data is gone: the repository is as small as before it.
    let used = std::process::Command::new("du")
        .args(["-sk"])
        .arg(&repo)
        .output()
        .unwrap();
    let kib: u64 = String::from_utf8_lossy(&used.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kib < 2048, "prune left {kib} KiB");
    write(&small.join("b.txt"), b"still works");
    run(&["backup"]).arg(&small).assert().success();
    run(&["verify", "--read-data"]).assert().success();
}

#[test]
fn repair_rebuilds_the_index_and_the_next_backup_stores_lost_data_again() {
    let env = Env::new();
    env.init();
    let src = tree(&env, 42);
    let first = env.backup(&src, &[]);
    let packs = env.packs();
    assert!(packs.len() >= 2);
    std::fs::remove_file(&packs[0]).unwrap(); // a lost pack
    let out = env.run(&["repair", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["missing"].as_array().unwrap().len(), 1, "{rep}");
    assert!(rep["lost_blobs"].as_u64().unwrap() > 0);
    // The old snapshot is damaged, and verify says which one.
    let out = env.run(&["verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(13));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&first[..8]));
    // The next backup (incremental!) stores the lost data again instead of trusting the index.
    let second = env.backup(&src, &[]);
    let dest = env.restore(&second, "out");
    assert_same_tree(&src, &dest);
    // Once the damaged snapshot is forgotten, the repository verifies clean.
    env.run(&["forget", "--keep-last", "1"]).assert().success();
    env.run(&["verify", "--read-data"]).assert().success();
}
