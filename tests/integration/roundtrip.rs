//! Backup → restore round trips: every kind of entry comes back identical.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::common::*;

/// Builds a tree with every kind of entry the files source carries.
fn build_tree(src: &Path) {
    write(&src.join("empty"), b"");
    std::fs::create_dir_all(src.join("empty-dir")).unwrap();
    write(
        &src.join("docs/readme.txt"),
        &b"hello backstop\n".repeat(1000),
    );
    write(&src.join("data/random.bin"), &noise(1, 3 << 20));
    write(&src.join("data/dup.bin"), &noise(1, 3 << 20)); // deduplicated
    // Names that are not UTF-8 or contain newlines and spaces.
    write(&src.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")), b"bytes");
    write(&src.join("new\nline name"), b"newline");
    // Hardlink groups.
    write(&src.join("links/a"), b"linked content");
    std::fs::hard_link(src.join("links/a"), src.join("links/b")).unwrap();
    std::fs::hard_link(src.join("links/a"), src.join("docs/c")).unwrap();
    // Symlinks, one dangling, one absolute: stored as links, never followed.
    std::os::unix::fs::symlink("docs/readme.txt", src.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();
    // Permissions including setuid/setgid/sticky.
    write(&src.join("bin/tool"), b"#!/bin/sh\n");
    std::fs::set_permissions(
        src.join("bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::create_dir_all(src.join("shared")).unwrap();
    std::fs::set_permissions(src.join("shared"), std::fs::Permissions::from_mode(0o3777)).unwrap();
    write(&src.join("secret"), b"private");
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o400)).unwrap();
    // Extended attributes.
    xattr::set(src.join("docs/readme.txt"), "user.comment", b"important").unwrap();
    xattr::set(src.join("docs/readme.txt"), "user.empty", b"").unwrap();
    // A FIFO.
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    // A 3 GiB sparse file with a little data at the start, middle and end.
    let sparse = std::fs::File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(3 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"boot sector", 0).unwrap();
    sparse.write_all_at(&noise(2, 1 << 20), 1 << 30).unwrap();
    sparse.write_all_at(b"tail", (3 << 30) - 4).unwrap();
    drop(sparse);
    if is_root() {
        // Ownership and device nodes need root.
        std::os::unix::fs::lchown(src.join("secret"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(src.join("rel-link"), Some(42), Some(43)).unwrap();
        let dev = nix::sys::stat::makedev(1, 3);
        nix::sys::stat::mknod(
            &src.join("null-dev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            dev,
        )
        .unwrap();
    }
    // Times to the nanosecond, including 2040 and before 1970; directories last.
    let t2040 = filetime::FileTime::from_unix_time(2_217_456_000, 123_456_789);
    filetime::set_symlink_file_times(src.join("docs/readme.txt"), t2040, t2040).unwrap();
    let t1960 = filetime::FileTime::from_unix_time(-315_619_200, 1);
    filetime::set_symlink_file_times(src.join("empty"), t1960, t1960).unwrap();
    filetime::set_symlink_file_times(src.join("dangling"), t2040, t2040).unwrap();
    filetime::set_symlink_file_times(src.join("docs"), t2040, t2040).unwrap();
}

#[test]
fn every_kind_of_entry_round_trips() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    env.init();
    env.backup(&src, &[]);
    let out = env.restore("latest", "out");
    assert_same_tree(&src, &out);
    // Holes came back as holes: the 3 GiB file allocates about what it holds.
    let m = std::fs::metadata(out.join("sparse.img")).unwrap();
    assert_eq!(m.len(), 3 << 30);
    assert!(
        m.blocks() * 512 < 16 << 20,
        "sparse file allocated {} bytes",
        m.blocks() * 512
    );
    // Hardlinks are links again, not copies.
    let (a, b) = (
        std::fs::metadata(out.join("links/a")).unwrap(),
        std::fs::metadata(out.join("docs/c")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn incremental_reads_only_changes_and_restores_each_state() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.txt"), b"one");
    write(&src.join("b.bin"), &noise(3, 2 << 20));
    env.init();
    let first = env.backup(&src, &[]);
    let out = env.run(&["backup", "--json"]).arg(&src).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v[0]["snapshot"];
    assert_eq!(s["kind"], "incremental");
    assert_eq!(s["summary"]["files_read"], 0);
    assert_eq!(s["summary"]["files_unchanged"], 2);
    assert_eq!(s["summary"]["bytes_new"], 0);

    // Change one file (same size, new content): only it is read.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&src.join("a.txt"), b"two");
    let out = env.run(&["backup", "--json"]).arg(&src).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["snapshot"]["summary"]["files_read"], 1);

    // --full reads everything again but stores nothing new.
    let out = env
        .run(&["backup", "--json", "--full"])
        .arg(&src)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["snapshot"]["kind"], "full");
    assert_eq!(v[0]["snapshot"]["summary"]["files_read"], 2);
    assert_eq!(v[0]["snapshot"]["summary"]["bytes_new"], 0);

    // The first snapshot still restores the first state.
    let out = env.restore(&first, "out");
    assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"one");
}

#[test]
fn excludes_includes_and_partial_restore() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("keep/a.conf"), b"a");
    write(&src.join("keep/b.log"), b"b");
    write(&src.join("cache/x"), b"x");
    env.init();
    env.backup(&src, &["--exclude", "*.log", "--exclude", "cache"]);
    let out = env.restore("latest", "out");
    assert!(out.join("keep/a.conf").exists());
    assert!(!out.join("keep/b.log").exists());
    assert!(!out.join("cache").exists());

    write(&src.join("other/z.conf"), b"z");
    env.backup(&src, &[]);
    let part = env.path("part");
    env.run(&["restore", "latest", "--include", "other/**", "--target"])
        .arg(&part)
        .assert()
        .success();
    assert!(part.join("other/z.conf").exists());
    assert!(!part.join("keep").exists());

    let dry = env.path("dry");
    let o = env
        .run(&["restore", "latest", "--dry-run", "--json", "--target"])
        .arg(&dry)
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"], 4);
    assert!(
        !dry.exists() || std::fs::read_dir(&dry).unwrap().next().is_none(),
        "dry run wrote files"
    );
}

#[test]
fn file_changing_while_read_is_a_named_warning() {
    let env = Env::new();
    let src = env.path("src");
    let big = src.join("growing.log");
    write(&big, &noise(9, 64 << 20));
    env.init();
    // Keep appending while the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (big, stop) = (big.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&big).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"more log\n").unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let out = env.run(&["backup"]).arg(&src).output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        stderr.contains("growing.log") && stderr.contains("changed while it was read"),
        "stderr: {stderr}"
    );
    assert_eq!(env.snapshots().len(), 1, "the snapshot is still saved");
}

/// A private tmpfs, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(path: std::path::PathBuf) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs needs root (tests run as root in CI)");
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn one_file_system_keeps_mount_points_as_empty_directories() {
    // A private file system with another one mounted inside it (never the shared /dev,
    // whose /dev/shm files come and go with other processes).
    let env = Env::new();
    let outer = Tmpfs::new(env.path("outer"));
    write(&outer.0.join("top.txt"), b"top");
    let inner = Tmpfs::new(outer.0.join("shm"));
    write(&inner.0.join("backstop-onefs"), b"x");
    assert_ne!(
        std::fs::metadata(&outer.0).unwrap().dev(),
        std::fs::metadata(&inner.0).unwrap().dev()
    );
    env.init();
    env.backup(&outer.0, &["--one-file-system"]);
    let out = env
        .run(&["ls", "latest", "/shm", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        0,
        "content of the other file system was backed up: {v}"
    );
    // Without it, the inner file system's content is there.
    env.backup(&outer.0, &[]);
    let out = env
        .run(&["ls", "latest", "/shm", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.to_string().contains("backstop-onefs"), "{v}");
    drop(inner);
}
