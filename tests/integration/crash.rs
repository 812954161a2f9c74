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

/// Phases at which a backup is uploading: a kill there interrupts real work.
const UPLOADING: [&str; 3] = ["after-lock", "after-object-write", "after-pack-upload"];

/// A backup of `src` whose phases (from its debug log) arrive on the returned channel.
fn spawn_following_phases(
    env: &Env,
    src: &std::path::Path,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    use std::io::BufRead;
    let mut child = env.spawn(
        &["backup", src.to_str().unwrap()],
        &[("BACKSTOP_LOG", "backstop::phase=debug")],
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some((_, p)) = line.split_once("phase ") {
                let _ = tx.send(p.trim().to_string());
            }
        }
    });
    (child, rx, reader)
}

/// Waits for `phase`, returning every phase seen up to it.
fn wait_for(rx: &std::sync::mpsc::Receiver<String>, phase: &str) -> Vec<String> {
    let mut phases = Vec::new();
    loop {
        let p = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the backup reports {phase}: {phases:?}"));
        phases.push(p.clone());
        if p == phase {
            return phases;
        }
    }
}

#[test]
fn sigkill_at_random_times_leaves_repository_consistent() {
    use std::time::{Duration, Instant};
    let env = Env::new();
    env.init();
    // How long this machine takes to upload one tree: the kills below land at random
    // times inside that window, however fast or slow the machine is.
    let (mut child, rx, reader) = spawn_following_phases(&env, &tree(&env, 99));
    wait_for(&rx, "after-lock");
    let start = Instant::now();
    wait_for(&rx, "before-index");
    let window = start.elapsed().max(Duration::from_millis(50));
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut mid_upload, mut attempts) = (0, 0);
    while mid_upload < 4 {
        attempts += 1;
        assert!(
            attempts <= 12,
            "only {mid_upload} of {attempts} kills landed mid-upload \
             (seed {seed}, upload window {window:?})"
        );
        let src = tree(&env, 100 + attempts);
        let before = env.snapshots().len();
        let (mut child, rx, reader) = spawn_following_phases(&env, &src);
        let mut phases = wait_for(&rx, "after-lock");
        std::thread::sleep(window.mul_f64(rng.f64()));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        reader.join().unwrap();
        phases.extend(rx.try_iter());
        let last = phases.last().cloned().unwrap_or_default();
        if status.code().is_none() && UPLOADING.contains(&last.as_str()) {
            mid_upload += 1;
        }
        eprintln!("kill {attempts}: last phase {last}, {status}");
        // Killed before its manifest (nothing visible) or after it (a complete snapshot).
        let after = env.snapshots().len();
        if phases.iter().any(|p| p == "after-manifest") {
            assert_eq!(after, before + 1, "{phases:?}");
        } else {
            assert_eq!(after, before, "no partial snapshot: {phases:?}");
        }
        env.run(&["verify", "--read-data"]).assert().success();
        env.backup(&src, &[]);
    }
}
