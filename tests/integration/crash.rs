//! Crash safety: a backup killed with SIGKILL at any point leaves no partial snapshot.

use super::common::*;

/// 48 MiB of incompressible data: a pack ends at most one 4 MiB chunk past its 16 MiB
/// target, so every backup of this tree uploads at least three packs, wherever the
/// repository's seeded chunker cuts.
fn tree(env: &Env, seed: u64) -> std::path::PathBuf {
    let src = env.path("src");
    for i in 0..8 {
        write(
            &src.join(format!("f{i}.bin")),
            &noise(seed * 100 + i, 6 << 20),
        );
    }
    write(&src.join("notes.txt"), format!("state {seed}").as_bytes());
    src
}

#[test]
fn sigkill_at_named_points_leaves_repository_consistent() {
    let env = Env::new();
    env.init();
    let src = tree(&env, 1);
    env.backup(&src, &[]);
    for pack in env.packs() {
        let len = pack.metadata().unwrap().len();
        assert!(len <= (20 << 20) + (64 << 10), "{pack:?}: {len} bytes");
    }
    let points = [
        "after-lock",
        "after-object-write:1",
        "after-object-write:2",
        "after-object-write:3",
        "after-object-write:4",
        "after-pack-upload:1",
        "after-pack-upload:2",
        "after-pack-upload:3",
        "before-index",
        "after-index",
        "before-manifest",
    ];
    for (i, point) in points.iter().enumerate() {
        let src = tree(&env, 2 + i as u64);
        let before = env.snapshots().len();
        let out = env
            .run(&["backup"])
            .arg(&src)
            .env("BACKSTOP_CRASH_AT", point)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            None,
            "{point}: the process must die by signal"
        );
        assert_eq!(
            env.snapshots().len(),
            before,
            "{point}: no partial snapshot is visible"
        );
        env.run(&["verify", "--read-data"]).assert().success();
        // The next backup completes (the dead process's lock is stale on this host).
        env.backup(&src, &[]);
        assert_eq!(env.snapshots().len(), before + 1);
    }
    // After the manifest: the snapshot is committed even though the process died.
    let src = tree(&env, 50);
    let before = env.snapshots().len();
    env.run(&["backup"])
        .arg(&src)
        .env("BACKSTOP_CRASH_AT", "after-manifest")
        .assert()
        .failure();
    assert_eq!(env.snapshots().len(), before + 1);
    env.run(&["verify", "--read-data"]).assert().success();
    let out = env.restore("latest", "out");
    assert_same_tree(&src, &out);
}

#[test]
fn sigkill_at_random_times_leaves_repository_consistent() {
    let env = Env::new();
    env.init();
    for (i, delay_ms) in [50u64, 150, 300, 600].into_iter().enumerate() {
        let src = tree(&env, 100 + i as u64);
        let before = env.snapshots().len();
        let mut child = env.spawn(&["backup", src.to_str().unwrap()], &[]);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        // Killed before its manifest (nothing visible) or after it (a complete snapshot).
        let after = env.snapshots().len();
        assert!(after == before || after == before + 1);
        env.run(&["verify", "--read-data"]).assert().success();
        env.backup(&src, &[]);
    }
}
