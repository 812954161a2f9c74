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
    // A socket: recorded, not recreated (it belongs to the process that bound it).
    drop(std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap());
    if is_root() {
        // Ownership and device nodes need root.
        std::os::unix::fs::lchown(src, Some(4321), Some(8765)).unwrap();
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
    // The root directory's own metadata.
    std::fs::set_permissions(src, std::fs::Permissions::from_mode(0o2750)).unwrap();
    xattr::set(src, "user.root", b"top").unwrap();
    let t2001 = filetime::FileTime::from_unix_time(1_000_000_000, 987_654_321);
    filetime::set_symlink_file_times(src, t2001, t2001).unwrap();
}

/// A directory's own metadata: mode, owner, mtime, xattrs.
type OwnMetadata = (u32, u32, u32, (i64, i64), Vec<(String, Vec<u8>)>);

fn own_metadata(dir: &Path) -> OwnMetadata {
    let m = std::fs::symlink_metadata(dir).unwrap();
    let mut x: Vec<_> = xattr::list(dir)
        .unwrap()
        .map(|n| {
            let v = xattr::get(dir, &n).unwrap().unwrap_or_default();
            (n.to_string_lossy().into_owned(), v)
        })
        .collect();
    x.sort();
    (
        m.mode() & 0o7777,
        m.uid(),
        m.gid(),
        (m.mtime(), m.mtime_nsec()),
        x,
    )
}

/// Says visibly what a run as another user than root cannot check.
fn report_unchecked() {
    if !is_root() {
        eprintln!(
            "NOT CHECKED (uid {}): other owners and device nodes need root; \
             ownership is compared only for this user's own files",
            nix::unistd::getuid()
        );
    }
}

/// Restores `snapshot` into `dir`; returns the target and the restore's standard error.
fn restore_with_stderr(env: &Env, snapshot: &str, dir: &str) -> (std::path::PathBuf, String) {
    let target = env.path(dir);
    let out = env
        .run(&["restore", snapshot, "--target"])
        .arg(&target)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "restore failed: {err}");
    (target, err)
}

/// Like `assert_same_tree`, leaving out the sockets of `a` (never restored).
fn assert_same_tree_but_sockets(a: &Path, b: &Path) {
    let (la, lb) = (listing(a), listing(b));
    let la: Vec<_> = la.into_iter().filter(|e| e.kind != "socket").collect();
    assert_eq!(
        la.iter().map(|e| &e.path).collect::<Vec<_>>(),
        lb.iter().map(|e| &e.path).collect::<Vec<_>>(),
        "entries differ"
    );
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x, y, "entry {:?} differs", OsStr::from_bytes(&x.path));
        if x.kind == "file" {
            let p = OsStr::from_bytes(&x.path);
            assert!(
                std::fs::read(a.join(p)).unwrap() == std::fs::read(b.join(p)).unwrap(),
                "content of {p:?} differs"
            );
        }
    }
}

#[test]
fn every_kind_of_entry_round_trips() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    report_unchecked();
    env.init();
    env.backup(&src, &[]);
    // The socket is in the snapshot.
    let ls = env.run(&["ls", "latest", "--json"]).output().unwrap();
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(listed.contains("\"/sock\""), "{listed}");
    let (out, err) = restore_with_stderr(&env, "latest", "out");
    assert_same_tree_but_sockets(&src, &out);
    assert!(
        err.contains(&format!(
            "{}: sockets are not restored",
            out.join("sock").display()
        )),
        "the skipped socket is not named: {err}"
    );
    // The root directory itself: mode, owner, mtime and xattrs.
    assert_eq!(
        own_metadata(&out),
        own_metadata(&src),
        "root directory differs"
    );
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
fn several_paths_round_trip_with_their_absolute_layout() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    let other = env.path("other/conf");
    write(&other.join("app.conf"), b"key = value\n");
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A directory on the way to a given path, with metadata of its own.
    let way = env.path("other");
    std::fs::set_permissions(&way, std::fs::Permissions::from_mode(0o711)).unwrap();
    xattr::set(&way, "user.way", b"on the way").unwrap();
    let t = filetime::FileTime::from_unix_time(1_234_567_890, 5);
    filetime::set_file_mtime(&way, t).unwrap();
    let single = env.path("single.txt");
    write(&single, b"one file");
    report_unchecked();
    env.init();
    let out = env
        .run(&["backup", "--json"])
        .arg(&src)
        .arg(&other)
        .arg(&single)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, _) = restore_with_stderr(&env, "latest", "out");
    let at = |p: &Path| out.join(p.strip_prefix("/").unwrap());
    assert_same_tree_but_sockets(&src, &at(&src));
    assert_same_tree(&other, &at(&other));
    assert_eq!(own_metadata(&at(&src)), own_metadata(&src));
    assert_eq!(own_metadata(&at(&other)), own_metadata(&other));
    assert_eq!(std::fs::read(at(&single)).unwrap(), b"one file");
    // Directories on the way keep their own metadata too.
    assert_eq!(
        own_metadata(&at(&way)),
        own_metadata(&way),
        "a directory on the way"
    );
    let v = env.run(&["verify", "--read-data"]).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

/// Copies the source as it is now (`cp -a`), to compare a snapshot's restore with later.
fn keep_state(src: &Path, dest: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dest)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Backs up `src` with `extra` flags; returns the snapshot id and its summary.
fn backup_summary(env: &Env, src: &Path, extra: &[&str]) -> (String, serde_json::Value) {
    let out = env
        .run(&["backup", "--json"])
        .args(extra)
        .arg(src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v[0]["id"].as_str().unwrap().to_string(),
        v[0]["snapshot"].clone(),
    )
}

/// Incremental detection trusts size, mtime, ctime and inode together: a rewrite that puts
/// the mtime back, or a new inode with the old size and mtime, is read again. Every
/// snapshot restores the state of its time.
#[test]
fn incremental_reads_only_changes_and_restores_each_state() {
    let env = Env::new();
    let src = env.path("src");
    let states = env.path("states");
    std::fs::create_dir_all(&states).unwrap();
    write(&src.join("a.txt"), b"one");
    write(&src.join("b.bin"), &noise(3, 2 << 20));
    write(&src.join("c.txt"), b"same");
    env.init();
    let mut taken = Vec::new();
    let mut step = |env: &Env, extra: &[&str]| -> serde_json::Value {
        let (id, snap) = backup_summary(env, &src, extra);
        keep_state(&src, &states.join(taken.len().to_string()));
        taken.push(id);
        snap
    };
    let s = step(&env, &[]);
    assert_eq!(s["kind"], "full");
    assert_eq!(s["summary"]["files_read"], 3);

    let s = step(&env, &[]);
    assert_eq!(s["kind"], "incremental");
    assert_eq!(s["summary"]["files_read"], 0);
    assert_eq!(s["summary"]["files_unchanged"], 3);
    assert_eq!(s["summary"]["bytes_new"], 0);

    // Same size, new content, mtime put back: only the ctime tells.
    let a = src.join("a.txt");
    let mtime = filetime::FileTime::from_last_modification_time(&std::fs::metadata(&a).unwrap());
    std::fs::write(&a, b"two").unwrap();
    filetime::set_file_mtime(&a, mtime).unwrap();
    let s = step(&env, &[]);
    assert_eq!(
        s["summary"]["files_read"], 1,
        "a same-size rewrite was not re-read"
    );
    assert_eq!(s["summary"]["files_unchanged"], 2);

    // Another inode with the same size and mtime (an editor's save, a restore by rename).
    let b = src.join("b.bin");
    let mtime = filetime::FileTime::from_last_modification_time(&std::fs::metadata(&b).unwrap());
    let tmp = src.join(".b.bin.tmp");
    std::fs::write(&tmp, noise(4, 2 << 20)).unwrap();
    filetime::set_file_mtime(&tmp, mtime).unwrap();
    std::fs::rename(&tmp, &b).unwrap();
    let s = step(&env, &[]);
    assert_eq!(
        s["summary"]["files_read"], 1,
        "a replaced file was not re-read"
    );

    // --ignore-inode (network file systems) still compares the ctime: a file copied back
    // with its old mtime is read again.
    let c = src.join("c.txt");
    let mtime = filetime::FileTime::from_last_modification_time(&std::fs::metadata(&c).unwrap());
    std::fs::remove_file(&c).unwrap();
    std::fs::write(&c, b"same").unwrap();
    filetime::set_file_mtime(&c, mtime).unwrap();
    let s = step(&env, &["--ignore-inode"]);
    assert_eq!(s["summary"]["files_read"], 1);

    // --full reads everything again but stores nothing new.
    let s = step(&env, &["--full"]);
    assert_eq!(s["kind"], "full");
    assert_eq!(s["summary"]["files_read"], 3);
    assert_eq!(s["summary"]["bytes_new"], 0);

    // Every snapshot restores the state of its time.
    for (i, id) in taken.iter().enumerate() {
        let out = env.restore(id, &format!("out{i}"));
        assert_same_tree(&states.join(i.to_string()), &out);
    }
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

#[test]
fn an_incremental_backup_sees_changed_xattrs_of_unchanged_files() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a"), b"same content");
    std::os::unix::fs::symlink("a", src.join("link")).unwrap();
    xattr::set(src.join("a"), "user.v", b"1").unwrap();
    env.init();
    env.backup(&src, &[]);
    // Content and mtime unchanged; only the attribute (and so the ctime) changes.
    xattr::set(src.join("a"), "user.v", b"2").unwrap();
    std::fs::remove_file(src.join("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", src.join("link")).unwrap();
    env.backup(&src, &[]);
    let out = env.restore("latest", "out");
    assert_eq!(xattr::get(out.join("a"), "user.v").unwrap().unwrap(), b"2");
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        std::path::Path::new("elsewhere")
    );
}
