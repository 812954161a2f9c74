//! The security model against an attacker who can write the storage: nothing stored is
//! readable, the config cannot be altered or downgraded, a failed init leaves nothing behind.

use std::path::{Path, PathBuf};

use super::common::*;

const MARKER: &[u8] = b"PLAINTEXT-MARKER-7f3a9c";

/// A source tree carrying MARKER in file content, in a file name, a directory name, a
/// symlink target and an xattr value (names and xattrs are in trees, so trees are checked).
fn marked_source(env: &Env) -> PathBuf {
    let src = env.path("src-PLAINTEXT-MARKER-7f3a9c-dir");
    // Incompressible data around the marker, so an unencrypted repository stores it verbatim.
    let mut data = noise(1, 200_000);
    for at in [0, 50_000, 199_000] {
        data[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    write(&src.join("content"), &data);
    write(&src.join("name-PLAINTEXT-MARKER-7f3a9c"), &noise(2, 100));
    std::os::unix::fs::symlink("target-PLAINTEXT-MARKER-7f3a9c", src.join("link")).unwrap();
    xattr::set(src.join("content"), "user.note", MARKER).expect("user xattrs supported");
    src
}

/// Every stored object (recursively) that contains `needle`.
fn objects_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if needle.is_empty()
                || std::fs::read(&p)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits.sort();
    hits
}

#[test]
fn encrypted_repository_holds_no_plaintext_marker_anywhere() {
    // Positive control: the same backup into an unencrypted repository shows the marker in
    // packs (content, names, symlink target, xattr) and manifests, so the search works.
    let plain = Env::new();
    let src = marked_source(&plain);
    plain.run(&["init", "--no-encryption"]).assert().success();
    // No compression, so what is stored is what was sealed (or not).
    plain.backup(&src, &["--compression", "0"]);
    let hits = objects_containing(&plain.repo(), MARKER);
    assert!(
        hits.iter().any(|p| p.to_string_lossy().contains("/data/")),
        "{hits:?}"
    );
    assert!(
        hits.iter()
            .any(|p| p.to_string_lossy().contains("/snapshots/")),
        "{hits:?}"
    );
    for piece in [
        &b"name-PLAINTEXT-MARKER-7f3a9c"[..],
        b"target-PLAINTEXT-MARKER-7f3a9c",
    ] {
        assert!(
            !objects_containing(&plain.repo(), piece).is_empty(),
            "unencrypted trees must show {}",
            String::from_utf8_lossy(piece)
        );
    }

    let env = Env::new();
    let src = marked_source(&env);
    env.init();
    env.backup(&src, &["--compression", "0"]);
    // Metadata of a second backup (index, manifest with its parent) too.
    write(&src.join("more-PLAINTEXT-MARKER-7f3a9c"), &noise(3, 5000));
    env.backup(&src, &["--compression", "0"]);
    let hits = objects_containing(&env.repo(), MARKER);
    assert!(hits.is_empty(), "plaintext marker found in {hits:?}");
    // And the data is all there: it restores byte for byte.
    let out = env.restore("latest", "out");
    assert_same_tree(&src, &out);
}

/// Rewrites the repository config with `edit` applied to its JSON.
fn edit_config(env: &Env, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = env.repo().join("config");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// `backstop ARGS` with the password, even where the harness would drop it.
fn with_password(env: &Env, args: &[&str]) -> std::process::Output {
    env.cmd()
        .args(args)
        .env("BACKSTOP_REPO", env.repo())
        .output()
        .unwrap()
}

fn packs_and_snapshots(env: &Env) -> (usize, usize) {
    let count = |d: &str| objects_containing(&env.repo().join(d), b"").len();
    (count("data"), count("snapshots"))
}

#[test]
fn tampered_config_is_refused_and_nothing_is_written() {
    let env = Env::new();
    let src = marked_source(&env);
    env.init();
    env.backup(&src, &[]);
    let original = std::fs::read(env.repo().join("config")).unwrap();
    let before = packs_and_snapshots(&env);
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 7] = [
        ("encrypted=false", |v| v["encrypted"] = false.into()),
        ("mac removed", |v| {
            v.as_object_mut().unwrap().remove("mac");
        }),
        ("mac of another config", |v| {
            v["mac"] = "00".repeat(32).into();
        }),
        ("chunker", |v| v["chunker"]["max"] = (16u32 << 20).into()),
        ("pack size", |v| v["pack-size"] = (4u32 << 20).into()),
        ("id", |v| v["id"] = "11".repeat(32).into()),
        ("hostile pack size", |v| v["pack-size"] = u32::MAX.into()),
    ];
    for (what, edit) in edits {
        edit_config(&env, edit);
        for args in [&["backup", "--json"][..], &["snapshots"]] {
            let mut cmd = vec![args[0]];
            cmd.extend_from_slice(&args[1..]);
            let src_s = src.to_str().unwrap();
            if args[0] == "backup" {
                cmd.push(src_s);
            }
            let out = with_password(&env, &cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(13), "{what}: {args:?}: {err}");
            if what != "hostile pack size" {
                assert!(err.contains("tampering"), "{what}: {err}");
            }
        }
        std::fs::write(env.repo().join("config"), &original).unwrap();
    }
    assert_eq!(
        packs_and_snapshots(&env),
        before,
        "a refused run wrote something"
    );
    assert!(objects_containing(&env.repo(), MARKER).is_empty());
    env.run(&["snapshots"]).assert().success();
}

#[test]
fn downgrade_with_deleted_keys_is_refused_when_a_password_is_given() {
    let env = Env::new();
    let src = marked_source(&env);
    env.init();
    env.backup(&src, &[]);
    // The attacker deletes the keys and declares the repository unencrypted.
    std::fs::remove_dir_all(env.repo().join("keys")).unwrap();
    edit_config(&env, |v| {
        v["encrypted"] = false.into();
        v.as_object_mut().unwrap().remove("mac");
    });
    let before = packs_and_snapshots(&env);
    let out = with_password(&env, &["backup", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not encrypted, but a password was given") && err.contains("tampering"),
        "{err}"
    );
    assert_eq!(packs_and_snapshots(&env), before);
    assert!(objects_containing(&env.repo(), MARKER).is_empty());
    // Without a password, the sealed manifests do not decode: an error, not a listing.
    let out = env
        .cmd()
        .args(["snapshots"])
        .env("BACKSTOP_REPO", env.repo())
        .env_remove("BACKSTOP_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(13),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn downgrade_keeping_the_keys_is_refused_as_tampering() {
    let env = Env::new();
    env.init();
    edit_config(&env, |v| {
        v["encrypted"] = false.into();
        v.as_object_mut().unwrap().remove("mac");
    });
    for pw in [true, false] {
        let mut c = env.cmd();
        c.args(["snapshots"]).env("BACKSTOP_REPO", env.repo());
        if !pw {
            c.env_remove("BACKSTOP_PASSWORD");
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(13), "{err}");
        assert!(
            err.contains("keys/ holds 1 key") && err.contains("tampering"),
            "{err}"
        );
    }
}

#[test]
fn unencrypted_repository_refuses_a_password() {
    let env = Env::new();
    env.run(&["init", "--no-encryption"]).assert().success();
    let out = with_password(&env, &["snapshots"]);
    assert_eq!(out.status.code(), Some(2));
    env.run(&["snapshots"]).assert().success();
}

#[test]
fn a_key_file_from_another_repository_is_skipped() {
    // Two repositories with one password: B's key opens, but does not verify A's config.
    let a = Env::new();
    a.init();
    let b = Env::new();
    b.init();
    let src = marked_source(&a);
    a.backup(&src, &[]);
    let bkey = std::fs::read_dir(b.repo().join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // Named so that it is listed before A's own key.
    std::fs::copy(&bkey, a.repo().join("keys").join("0".repeat(64))).unwrap();
    a.run(&["snapshots"]).assert().success();
    // Only B's key left: the config does not verify, reported as tampering.
    for e in std::fs::read_dir(a.repo().join("keys")).unwrap() {
        let p = e.unwrap().path();
        if !p.ends_with("0".repeat(64)) {
            std::fs::remove_file(p).unwrap();
        }
    }
    let out = a.run(&["snapshots"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(13), "{err}");
    assert!(err.contains("tampering"), "{err}");
}

/// A small tmpfs, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn new(path: PathBuf, size: &str) -> SmallFs {
        std::fs::create_dir_all(&path).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a small tmpfs needs root");
        SmallFs(path)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` until `free_pages` pages are left.
fn fill(dir: &Path, free_pages: u64) {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let page = vec![0xa5u8; 4096];
    while f.write_all(&page).and_then(|()| f.sync_all()).is_ok() {}
    let len = std::fs::metadata(&path).unwrap().len() / 4096 * 4096;
    f.set_len(len.saturating_sub(free_pages * 4096)).unwrap();
}

fn leftovers(repo: &Path) -> Vec<PathBuf> {
    let mut v = objects_containing(repo, b"");
    v.retain(|p| !p.starts_with(repo.join("tmp")));
    v
}

#[test]
fn failed_init_leaves_no_half_made_repository() {
    let env = Env::new();
    let fs = SmallFs::new(env.path("small"), "1m");
    let repo = fs.0.join("repo");
    std::fs::create_dir_all(repo.join("keys")).unwrap();
    std::fs::create_dir_all(repo.join("tmp")).unwrap();
    // Room for the key file but not the config, then room for nothing.
    for free in [1, 0] {
        fill(&fs.0, free);
        let out = env
            .cmd()
            .args(["init"])
            .env("BACKSTOP_REPO", &repo)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "init on a full disk succeeded");
        assert!(err.contains("creating a repository"), "{err}");
        assert_eq!(
            leftovers(&repo),
            Vec::<PathBuf>::new(),
            "free {free}: {err}"
        );
        std::fs::remove_file(fs.0.join("filler")).unwrap();
    }
    // With space, init works on the same directory and the repository opens.
    env.cmd()
        .args(["init"])
        .env("BACKSTOP_REPO", &repo)
        .assert()
        .success();
    env.cmd()
        .args(["snapshots"])
        .env("BACKSTOP_REPO", &repo)
        .assert()
        .success();
}

#[test]
fn init_killed_after_its_key_is_cleaned_up_by_the_next_init() {
    let env = Env::new();
    let out = env
        .run(&["init"])
        .env("BACKSTOP_CRASH_AT", "init-after-key")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "init was not killed");
    assert!(!env.repo().join("config").exists());
    assert_eq!(leftovers(&env.repo()).len(), 1, "the key file is left");
    env.init();
    assert_eq!(
        objects_containing(&env.repo().join("keys"), b"").len(),
        1,
        "the stale key was not removed"
    );
    env.run(&["snapshots"]).assert().success();
    // A repository whose config is gone but whose data is not is never initialised over.
    let src = marked_source(&env);
    env.backup(&src, &[]);
    std::fs::remove_file(env.repo().join("config")).unwrap();
    let out = env.run(&["init"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("but no config"));
}
