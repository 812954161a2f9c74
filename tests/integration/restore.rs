//! Restore semantics: existing entries, damaged trees, interruption, which snapshot
//! `latest` is, and the paths and globs that select parts of a snapshot.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use backstop::repo::{Id, NodeKind, Tree};

use super::common::*;
use super::hostile::{PAYLOAD, World, craft, dir, file, node};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A source with two files that are hard links of each other, and a plain one.
fn linked_source(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    write(&src.join("a/x"), b"snapshot x");
    write(&src.join("a/plain"), b"snapshot plain");
    std::fs::hard_link(src.join("a/x"), src.join("a/y")).unwrap();
    src
}

/// Restores `latest` from `env` into `target` as the given user (`None`: as we are).
fn restore_as(env: &Env, user: Option<u32>, target: &Path, extra: &[&str]) -> std::process::Output {
    let bin = assert_cmd::cargo::cargo_bin("backstop");
    let mut c = match user {
        Some(uid) => {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
            ])
            .arg(bin);
            c
        }
        None => std::process::Command::new(bin),
    };
    c.env("BACKSTOP_PASSWORD", PASSWORD)
        .env("BACKSTOP_DATA_DIR", env.path("data"))
        .env("BACKSTOP_REPO", env.repo())
        .args(["restore", "latest", "--target"])
        .arg(target)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn existing_hard_links_to_outside_files_are_replaced_never_written_through() {
    // TARGET/a/x is a hard link to a file outside the target. As root (which can write
    // any file and chown) and as an unprivileged user, no --overwrite mode may change the
    // outside file's content, owner or mode.
    let users: Vec<Option<u32>> = if is_root() {
        vec![None, Some(65534)]
    } else {
        vec![None]
    };
    for user in users {
        for overwrite in ["never", "if-changed", "always"] {
            let env = Env::new();
            let src = linked_source(&env);
            env.init();
            env.backup(&src, &[]);
            let outside = env.path("outside/secret");
            write(&outside, b"outside content");
            let target = env.path("target");
            std::fs::create_dir_all(target.join("a")).unwrap();
            std::fs::hard_link(&outside, target.join("a/x")).unwrap();
            if let Some(uid) = user {
                // The unprivileged user owns the target and may read the repository.
                std::process::Command::new("chmod")
                    .args(["-R", "a+rwX"])
                    .arg(env.dir.path())
                    .status()
                    .unwrap();
                std::os::unix::fs::chown(&outside, Some(uid), Some(uid)).unwrap();
                for p in [target.clone(), target.join("a")] {
                    std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
                }
            }
            std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o640)).unwrap();
            let before = std::fs::metadata(&outside).unwrap();
            let out = restore_as(&env, user, &target, &["--overwrite", overwrite]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(0), "{user:?} {overwrite}: {err}");
            assert!(err.contains("is not empty"), "said up front: {err}");
            let after = std::fs::metadata(&outside).unwrap();
            assert_eq!(std::fs::read(&outside).unwrap(), b"outside content");
            assert_eq!(
                (after.uid(), after.gid(), after.mode(), after.ino()),
                (before.uid(), before.gid(), before.mode(), before.ino()),
                "{user:?} {overwrite}: the outside file's owner and mode stay"
            );
            let x = std::fs::metadata(target.join("a/x")).unwrap();
            let y = std::fs::metadata(target.join("a/y")).unwrap();
            assert_eq!(std::fs::read(target.join("a/y")).unwrap(), b"snapshot x");
            assert_ne!(
                y.ino(),
                after.ino(),
                "y is never linked to the outside file"
            );
            if overwrite == "never" {
                assert_eq!(x.ino(), after.ino(), "kept");
                assert!(err.contains("kept 1 existing"), "{err}");
            } else {
                // Replaced (if-changed: size differs), and y links to the restored x only.
                assert_eq!(std::fs::read(target.join("a/x")).unwrap(), b"snapshot x");
                assert_ne!(x.ino(), after.ino());
                assert_eq!(x.ino(), y.ino(), "hard links within the snapshot stay");
            }
            let leftovers: Vec<_> = listing(&target)
                .into_iter()
                .filter(|e| e.path.starts_with(b"a/.backstop-"))
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        }
    }
}

#[test]
fn if_changed_replaces_only_entries_that_differ() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("same"), b"same content");
    write(&src.join("differs"), b"snapshot");
    env.init();
    env.backup(&src, &[]);
    let target = env.restore("latest", "out");
    write(&target.join("differs"), b"changed since");
    let same_ino = std::fs::metadata(target.join("same")).unwrap().ino();
    let out = env
        .run(&[
            "restore",
            "latest",
            "--overwrite",
            "if-changed",
            "--json",
            "--target",
        ])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["files"].as_u64(), v["kept"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(std::fs::read(target.join("differs")).unwrap(), b"snapshot");
    assert_eq!(
        std::fs::metadata(target.join("same")).unwrap().ino(),
        same_ino,
        "an unchanged file is not rewritten"
    );
}

#[test]
fn entries_that_cannot_be_created_fail_alone() {
    // A directory where a file goes, a file where a directory goes, and (unprivileged) a
    // directory that cannot be written: each is named, the siblings restore, exit 3.
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"file");
    write(&src.join("d/inner"), b"inner");
    write(&src.join("locked/inner"), b"locked");
    write(&src.join("z"), b"last");
    env.init();
    env.backup(&src, &[]);
    let target = env.path("target");
    std::fs::create_dir_all(target.join("f")).unwrap();
    write(&target.join("d"), b"in the way");
    std::fs::create_dir_all(target.join("locked")).unwrap();
    let user = is_root().then_some(65534);
    if let Some(uid) = user {
        std::process::Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(env.dir.path())
            .status()
            .unwrap();
        std::os::unix::fs::chown(&target, Some(uid), Some(uid)).unwrap();
    }
    std::fs::set_permissions(
        target.join("locked"),
        std::fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    let out = restore_as(&env, user, &target, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("/f: a directory is in the way"), "{err}");
    assert!(err.contains("/d: a non-directory is in the way"), "{err}");
    if user.is_some() {
        assert!(
            err.contains("locked/inner: cannot create the file: permission denied"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(target.join("z")).unwrap(), b"last");
    assert_eq!(std::fs::read(target.join("d")).unwrap(), b"in the way");
}

/// A crafted snapshot: `/x` whose tree is missing, `/y/file`, `/z/bad` whose tree is
/// garbage, and `/f`.
fn damaged_snapshot(w: &World) {
    let y = Tree {
        nodes: vec![file(b"file", PAYLOAD.len())],
    };
    let mut x = node(b"x", NodeKind::Dir);
    x.subtree = Some(Id::random());
    let mut z = node(b"z", NodeKind::Dir);
    // A tree id whose blob is the payload chunk: present, but not a tree.
    z.subtree = Some(backstop::pipeline::Crypto::None.chunk_id(PAYLOAD));
    let root = Tree {
        nodes: vec![file(b"f", PAYLOAD.len()), x, dir(b"y", &y), z],
    };
    craft(&w.env, vec![root, y], PAYLOAD);
}

#[test]
fn a_damaged_subtree_is_named_and_the_rest_restores() {
    let w = World::new();
    damaged_snapshot(&w);
    let err = w.restore(&[], 3, "/x: directory skipped");
    assert!(err.contains("/z: directory skipped"), "{err}");
    assert_eq!(std::fs::read(w.target.join("y/file")).unwrap(), PAYLOAD);
    assert_eq!(std::fs::read(w.target.join("f")).unwrap(), PAYLOAD);
    assert!(!w.target.join("x").exists() && !w.target.join("z").exists());

    // An include elsewhere does not even read the damaged trees.
    let w = World::new();
    damaged_snapshot(&w);
    w.restore(&["--include", "y/**"], 0, "restoring");
    assert_eq!(std::fs::read(w.target.join("y/file")).unwrap(), PAYLOAD);
    assert!(!w.target.join("f").exists());

    // ls lists what it can, names what it cannot.
    let out = w
        .env
        .cmd()
        .args(["ls", "--repo"])
        .arg(w.env.repo())
        .arg("latest")
        .output()
        .unwrap();
    let (so, se) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(3), "{se}");
    assert!(so.contains("/y/file") && so.contains("/f"), "{so}");
    assert!(se.contains("/x: directory listing unreadable"), "{se}");
    assert!(se.contains("/z: directory listing unreadable"), "{se}");
}

#[test]
fn sigterm_during_restore_leaves_only_complete_files_and_no_lock() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..120 {
        write(&src.join(format!("d{}/f{i:03}", i % 4)), &noise(i, 2 << 20));
    }
    env.init();
    env.backup(&src, &[]);
    for sig in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGINT] {
        let target = env.path(&format!("out-{sig}"));
        let child = env.spawn(
            &["restore", "latest", "--target", target.to_str().unwrap()],
            &[],
        );
        // Signal once some files are complete, well before the end.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let complete = || {
            target.join("d0").read_dir().map_or(0, |d| {
                d.filter(|e| {
                    !e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".backstop-"))
                })
                .count()
            })
        };
        while complete() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "restore never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(130), "{sig}: {err}");
        assert!(err.contains("interrupted"), "{err}");
        let restored = listing(&target);
        let files: Vec<_> = restored.iter().filter(|e| e.kind == "file").collect();
        assert!(files.len() < 120, "{sig}: the restore was cut short");
        for e in files {
            let rel = std::str::from_utf8(&e.path).unwrap();
            assert!(
                !rel.contains(".backstop-"),
                "{sig}: temporary file left: {rel}"
            );
            assert_eq!(
                std::fs::read(target.join(rel)).unwrap(),
                std::fs::read(src.join(rel)).unwrap(),
                "{sig}: {rel} has its final name but not its content"
            );
        }
        let locks: Vec<_> = std::fs::read_dir(env.repo().join("locks"))
            .unwrap()
            .collect();
        assert!(locks.is_empty(), "{sig}: lock left behind");
    }
}

#[test]
fn sigint_during_backup_releases_the_lock() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..60 {
        write(&src.join(format!("f{i:03}")), &noise(i, 2 << 20));
    }
    env.init();
    let mut child = env.spawn(&["backup", "--full", src.to_str().unwrap()], &[]);
    let locks = env.repo().join("locks");
    while std::fs::read_dir(&locks).map_or(0, |d| d.count()) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before it was locked"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(&locks).unwrap().count(),
        0,
        "lock left behind"
    );
    env.run(&["unlock"]).assert().success();
}

/// Rewrites the newest snapshot's manifest as one of `host` (a second machine's backup).
fn retag_newest_as(env: &Env, host: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage =
        backstop::Storage::open(env.repo().to_str().unwrap(), rt.handle().clone()).unwrap();
    let repo = backstop::Repo::open(storage, || Ok(PASSWORD.as_bytes().to_vec())).unwrap();
    let (id, mut snap) = repo.snapshots().unwrap().pop().unwrap();
    snap.hostname = host.into();
    let new = repo.save_snapshot(&snap).unwrap();
    repo.storage().delete(&format!("snapshots/{id}")).unwrap();
    new.to_hex()
}

#[test]
fn latest_is_this_hosts_newest_and_every_restore_names_its_snapshot() {
    let env = Env::new();
    let mine = env.path("mine");
    let theirs = env.path("theirs");
    write(&mine.join("f"), b"mine");
    write(&theirs.join("f"), b"theirs");
    env.init();
    let my_id = env.backup(&mine, &[]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    env.backup(&theirs, &[]);
    let their_id = retag_newest_as(&env, "other-host");
    let restore = |extra: &[&str], dir: &str| {
        let out = env
            .run(&["restore", "latest", "--json", "--target"])
            .arg(env.path(dir))
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let content = std::fs::read(env.path(dir).join("f")).unwrap();
        (v["snapshot"].clone(), content, stderr(&out))
    };
    let (s, content, err) = restore(&[], "o1");
    assert_eq!(
        content, b"mine",
        "latest of this host, not the newer one of another"
    );
    assert_eq!(s["id"], my_id.as_str());
    assert_eq!(s["host"], backstop::repo::hostname().as_str());
    assert_eq!(s["paths"][0], mine.to_str().unwrap());
    assert!(s["time"].is_string());
    assert!(err.contains(&format!("snapshot {}", &my_id[..8])), "{err}");
    let (s, content, _) = restore(&["--host", "other-host"], "o2");
    assert_eq!(
        (s["id"].as_str(), &content[..]),
        (Some(&*their_id), &b"theirs"[..])
    );
    let (_, content, _) = restore(&["--any-host"], "o3");
    assert_eq!(content, b"theirs");
    let (s, _, _) = restore(
        &["--any-host", "--path", &format!("{}/./", mine.display())],
        "o4",
    );
    assert_eq!(s["id"], my_id.as_str());
    // No match: a configuration error that says which hosts exist.
    let out = env
        .run(&["restore", "latest", "--host", "nobody", "--target"])
        .arg(env.path("o5"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("other-host"), "{}", stderr(&out));
    // The text output names the snapshot too.
    let out = env
        .run(&["restore", "latest", "--target"])
        .arg(env.path("o6"))
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        so.contains(&format!("from snapshot {}", &my_id[..8])),
        "{so}"
    );
}

#[test]
fn an_ambiguous_id_prefix_lists_the_matching_snapshots() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"x");
    env.init();
    let id = env.backup(&src, &[]);
    // Seal copies of the manifest until one's id shares the first 4 digits.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage =
        backstop::Storage::open(env.repo().to_str().unwrap(), rt.handle().clone()).unwrap();
    let repo = backstop::Repo::open(storage, || Ok(PASSWORD.as_bytes().to_vec())).unwrap();
    let (_, mut snap) = repo.snapshots().unwrap().pop().unwrap();
    let twin = loop {
        snap.tags = vec![fastrand::u64(..).to_string()];
        let sealed = repo.crypto().seal(snap.encode());
        let tid = Id::hash(&sealed);
        if tid.to_hex()[..4] == id[..4] {
            repo.storage()
                .write(&format!("snapshots/{tid}"), sealed)
                .unwrap();
            break tid.to_hex();
        }
    };
    let out = env
        .run(&["restore", &id[..4], "--target"])
        .arg(env.path("o"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ambiguous"), "{err}");
    assert!(err.contains(&id[..8]) && err.contains(&twin[..8]), "{err}");
}

/// Backs up `paths`, then checks every way of naming `etc/ssh` selects it.
fn check_path_forms(env: &Env, paths: &[&Path], forms: &[String], ls_forms: &[String]) {
    for (i, form) in forms.iter().enumerate() {
        let out = env.path(&format!("out-{}-{i}", paths.len()));
        let o = env
            .run(&["restore", "latest", "--include", form, "--target"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "--include {form}: {}", stderr(&o));
        let got: Vec<String> = listing(&out)
            .into_iter()
            .filter(|e| e.kind == "file")
            .map(|e| String::from_utf8(e.path).unwrap())
            .collect();
        assert_eq!(got.len(), 1, "--include {form}: {got:?}");
        assert!(
            got[0].ends_with("ssh/sshd_config"),
            "--include {form}: {got:?}"
        );
    }
    for form in ls_forms {
        let o = env.run(&["ls", "latest", form]).output().unwrap();
        assert!(o.status.success(), "ls {form}: {}", stderr(&o));
        let so = String::from_utf8_lossy(&o.stdout);
        assert!(so.contains("ssh/sshd_config"), "ls {form}: {so}");
        assert!(
            !so.contains("passwd"),
            "ls {form} lists only below it: {so}"
        );
    }
}

#[test]
fn include_and_ls_take_absolute_and_root_relative_paths() {
    let env = Env::new();
    let etc = env.path("sys/etc");
    let home = env.path("sys/home");
    write(&etc.join("ssh/sshd_config"), b"PermitRootLogin no");
    write(&etc.join("passwd"), b"root:x:0:0");
    write(&home.join("u/notes"), b"notes");
    env.init();
    let abs = etc.display().to_string();
    let rel_abs = abs.trim_start_matches('/');
    // One path: its content is the root.
    env.backup(&etc, &[]);
    check_path_forms(
        &env,
        &[&etc],
        &[
            "ssh/**".into(),
            format!("{abs}/ssh/**"),
            format!("{rel_abs}/ssh/**"),
            format!("{abs}/ssh"),
        ],
        &[format!("{abs}/ssh"), "ssh".into(), format!("{rel_abs}/ssh")],
    );
    // Two paths: the root is `/`, holding them at their absolute places.
    env.backup(&etc, &[home.to_str().unwrap()]);
    check_path_forms(
        &env,
        &[&etc, &home],
        &[
            format!("{rel_abs}/ssh/**"),
            format!("{abs}/ssh/**"),
            format!("{abs}/ssh"),
        ],
        &[format!("{abs}/ssh"), format!("{rel_abs}/ssh")],
    );
    // `ls latest /etc` of a backup of /etc alone lists its content.
    env.backup(&etc, &[]);
    let o = env.run(&["ls", "latest", &abs]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("/passwd"));
}

#[test]
fn an_include_that_matches_nothing_warns_and_fails() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("etc/hosts"), b"127.0.0.1 localhost");
    env.init();
    env.backup(&src, &[]);
    let target = env.path("out");
    let out = env
        .run(&["restore", "latest", "--include", "nothing/**", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("--include 'nothing/**' matches nothing"),
        "{err}"
    );
    assert!(!target.exists(), "nothing to restore: nothing written");
    // One that matches and one that does not: the first restores, still exit 3.
    let out = env
        .run(&[
            "restore",
            "latest",
            "--include",
            "etc/**",
            "--include",
            "nope",
            "--target",
        ])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("'nope' matches nothing"));
    assert!(target.join("etc/hosts").exists());
}

#[test]
fn dry_run_verbose_lists_what_it_would_write() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("etc/hosts"), b"127.0.0.1 localhost");
    write(&src.join("etc/motd"), b"hello");
    env.init();
    env.backup(&src, &[]);
    let target = env.path("out");
    write(&target.join("etc/motd"), b"existing");
    let out = env
        .run(&["restore", "latest", "--dry-run", "-v", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let so = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        so.lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {so}"))
            .to_string()
    };
    assert!(line("etc/hosts").starts_with("new"), "{so}");
    assert!(line("etc/motd").starts_with("keep existing"), "{so}");
    assert!(line("/etc").starts_with("merge"), "{so}");
    assert!(
        !target.join("etc/hosts").exists(),
        "a dry run writes nothing"
    );
    assert_eq!(std::fs::read(target.join("etc/motd")).unwrap(), b"existing");
}

#[test]
fn a_name_too_long_for_the_target_fails_alone() {
    // 300 bytes: longer than any Linux file system takes. The temporary name is short, so
    // the failure is the entry's own, named, and nothing is left behind.
    let w = World::new();
    let long = vec![b'n'; 300];
    let inner = Tree {
        nodes: vec![file(b"below", PAYLOAD.len())],
    };
    let mut nodes = vec![
        file(b"good", PAYLOAD.len()),
        file(&long, PAYLOAD.len()),
        dir(&[b'd'; 300], &inner),
        super::hostile::symlink(&[b's'; 300], b"good"),
    ];
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    craft(&w.env, vec![Tree { nodes }, inner], PAYLOAD);
    let err = w.restore(&[], 3, "the name is too long");
    assert_eq!(err.matches("the name is too long").count(), 3, "{err}");
    let left: Vec<_> = listing(&w.target).into_iter().map(|e| e.path).collect();
    assert_eq!(left, vec![b"good".to_vec()]);
}

/// A POSIX ACL in its extended-attribute form: version 2, then (tag, permissions, id) per
/// entry (owner, owning group, others).
fn acl_xattr(owner: u16, group: u16, other: u16) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, owner), (0x04, group), (0x20, other)] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(u32::MAX.to_le_bytes());
    }
    v
}

#[test]
fn files_get_their_recorded_owner_and_mode_whatever_the_target_would_give_new_files() {
    // A file made in a setgid directory takes the directory's group, and one made under a
    // default ACL takes its mode from the ACL, not the umask. The restore creates files
    // with their final mode where it knows what they get anyway; here it must not assume.
    assert!(
        is_root(),
        "setting a directory's group needs root (CI runs as root)"
    );
    let env = Env::new();
    let src = env.path("src");
    let files = [
        ("plain", 0o644),
        ("open", 0o666),
        ("private", 0o600),
        ("tool", 0o755),
        ("sub/plain", 0o644),
        ("sub/other", 0o640),
    ];
    for (name, mode) in files {
        write(&src.join(name), name.as_bytes());
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::os::unix::fs::chown(src.join("sub/other"), Some(4321), Some(8765)).unwrap();
    env.init();
    env.backup(&src, &[]);
    let acl = acl_xattr(7, 5, 0);
    for (target, setgid, default_acl) in [
        ("setgid", true, false),
        ("acl", false, true),
        ("both", true, true),
    ] {
        let target = env.path(target);
        std::fs::create_dir_all(&target).unwrap();
        if setgid {
            std::os::unix::fs::chown(&target, None, Some(4242)).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o2777)).unwrap();
        }
        if default_acl {
            xattr::set(&target, "system.posix_acl_default", &acl).unwrap();
        }
        let out = restore_as(&env, None, &target, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        for (name, _) in files {
            let (a, b) = (
                std::fs::metadata(src.join(name)).unwrap(),
                std::fs::metadata(target.join(name)).unwrap(),
            );
            let show = target.join(name).display().to_string();
            assert_eq!(b.mode() & 0o7777, a.mode() & 0o7777, "{show}: mode");
            assert_eq!((b.uid(), b.gid()), (a.uid(), a.gid()), "{show}: owner");
        }
    }
}
