//! Backup paths and patterns: normalization, several paths, pseudo-files, empty patterns,
//! paths of which nothing is stored, and the warnings an operator reads.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::common::*;

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `path` inside a restore target that mirrors absolute paths (several-path snapshots).
fn mirrored(out: &Path, path: &Path) -> PathBuf {
    out.join(path.strip_prefix("/").expect("absolute"))
}

#[test]
fn empty_patterns_are_config_errors_naming_the_flag() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a"), b"a");
    env.init();
    for (flag, pat) in [
        ("--exclude", ""),
        ("--exclude", "   "),
        ("--include", ""),
        ("--include", "\t"),
    ] {
        let out = env.run(&["backup", flag, pat]).arg(&src).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {pat:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(flag), "{flag}: {}", stderr(&out));
    }
    assert_eq!(env.snapshots().len(), 0, "a snapshot was saved");

    // In a policy too: `policy check` and `backup --policy` refuse it, naming the key.
    let pol = env.path("policies");
    write(
        &pol.join("backstop.toml"),
        format!(
            "[targets.t]\nrepo = {:?}\npassword-file = \"pw\"\n",
            env.repo().display().to_string()
        )
        .as_bytes(),
    );
    write(&pol.join("pw"), PASSWORD.as_bytes());
    for key in ["exclude", "include"] {
        write(
            &pol.join("p.toml"),
            format!(
                "name = \"p\"\ntargets = [\"t\"]\n[source]\nkind = \"files\"\npaths = [{:?}]\n{key} = [\"\"]\n",
                src.display().to_string()
            )
            .as_bytes(),
        );
        let out = env
            .run(&["backup", "--policy"])
            .arg(pol.join("p.toml"))
            .env_remove("BACKSTOP_REPO")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{key}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("source.{key}")),
            "{key}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_path_left_empty_by_patterns_is_a_loud_partial_backup() {
    let env = Env::new();
    let src = env.path("src");
    let other = env.path("other");
    write(&src.join("a.log"), b"a");
    write(&src.join("sub/b.log"), b"b");
    write(&other.join("keep.txt"), b"k");
    std::fs::create_dir_all(env.path("empty")).unwrap();
    env.init();

    // Everything of one path excluded: exit 3, naming the path and the pattern.
    let out = env
        .run(&["backup", "--exclude", "*.log"])
        .arg(&src)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("{}: nothing backed up", src.display())) && err.contains("'*.log'"),
        "{err}"
    );
    // An include matching nothing of it.
    let out = env
        .run(&["backup", "--include", "*.conf"])
        .arg(&src)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&src.display().to_string()) && err.contains("--include"),
        "{err}"
    );
    // Among several paths, only the emptied one is named; the other is stored.
    let out = env
        .run(&["backup", "--json", "--exclude"])
        .arg(format!("{}/**", src.display()))
        .arg(&src)
        .arg(&other)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let warnings = json(&out)[0]["warnings"].clone();
    let warnings = warnings.as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}: nothing backed up", src.display())),
        "{warnings:?}"
    );
    // A directory with no files at all does not look like a success either.
    let out = env
        .run(&["backup"])
        .arg(env.path("empty"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("holds no files"), "{}", stderr(&out));
    // While a path with files, excluded in part, is a plain success.
    let out = env
        .run(&["backup", "--exclude", "sub"])
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_missing_path_among_several_is_a_warning_named_once() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a"), b"a");
    let missing = env.path("missing");
    env.init();
    let out = env
        .run(&["backup"])
        .arg(&src)
        .arg(&missing)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let line = format!(
        "warning: skipped: reading {}: No such file or directory",
        missing.display()
    );
    assert_eq!(err.matches(&line).count(), 1, "{err}");
    assert_eq!(
        err.matches(&missing.display().to_string()).count(),
        1,
        "named more than once: {err}"
    );
    assert_eq!(env.snapshots().len(), 1, "the other path is backed up");
    let out = env.restore("latest", "out");
    assert_eq!(std::fs::read(mirrored(&out, &src).join("a")).unwrap(), b"a");
    // Alone, a missing path is an error and saves nothing.
    let out = env.run(&["backup"]).arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(env.snapshots().len(), 1);
}

#[test]
fn unreadable_files_are_warned_with_their_cause_once() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("ok"), b"ok");
    write(&src.join("locked"), b"secret");
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    env.init();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("backstop"));
    cmd.args(["backup"])
        .arg(&src)
        .env("BACKSTOP_REPO", env.repo())
        .env("BACKSTOP_PASSWORD", PASSWORD)
        .env("BACKSTOP_DATA_DIR", env.path("data-nobody"));
    if is_root() {
        // Root reads every file: run the backup as nobody, who may write the repository.
        use std::os::unix::process::CommandExt;
        let status = std::process::Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(env.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let want = format!(
        "warning: skipped: opening {}: Permission denied",
        src.join("locked").display()
    );
    assert_eq!(err.matches(&want).count(), 1, "{err}");
    assert_eq!(
        err.matches("locked").count(),
        1,
        "named more than once: {err}"
    );
}

/// Every form of a path is normalized before anything is read: `DIR/..`, `DIR/.`, `DIR/`,
/// nested and repeated paths make one snapshot whose names are plain, stored once, that
/// restores and verifies.
#[test]
fn dot_dot_and_overlapping_paths_store_once_and_restore() {
    let env = Env::new();
    let top = env.path("top");
    write(&top.join("dir/sub/deep.txt"), b"deep");
    write(&top.join("dir/file.txt"), b"file");
    write(&top.join("beside.txt"), b"beside");
    env.init();
    let forms = [
        "top/dir/..", // = top
        "top/dir",
        "top/dir/sub/",
        "top/dir/sub/.",
        "top/./dir/sub/../sub",
    ];
    let out = env
        .run(&["backup", "--json"])
        .args(forms)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let snap = &v[0]["snapshot"];
    let canon = |p: &str| env.dir.path().join(p).display().to_string();
    assert_eq!(
        snap["paths"],
        serde_json::json!([canon("top"), canon("top/dir"), canon("top/dir/sub")]),
        "paths are recorded normalized, sorted, once"
    );
    assert_eq!(
        snap["summary"]["files"], 3,
        "overlapping paths stored twice"
    );

    let out = env.restore("latest", "out");
    assert_same_tree(&top, &mirrored(&out, &top));
    let o = env.run(&["verify", "--read-data"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // `ls` of the mirrored layout works by absolute path.
    let o = env
        .run(&["ls", "latest", "--json"])
        .arg(mirrored(Path::new("/"), &top.join("dir/sub")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(json(&o).to_string().contains("deep.txt"));
}

/// `backup / /boot -x` in miniature: a path given inside another is walked in full even
/// where the outer walk stops (another file system, or excluded).
#[test]
fn a_path_inside_an_excluded_or_other_file_system_is_walked() {
    let env = Env::new();
    let root = env.path("root");
    write(&root.join("etc/hosts"), b"hosts");
    write(&root.join("var/cache/big"), b"cache");
    write(&root.join("var/cache/keep/this"), b"this");
    env.init();
    let out = env
        .run(&["backup", "--json", "-x", "--exclude"])
        .arg(format!("{}/var/cache", root.display()))
        .arg(&root)
        .arg(root.join("var/cache/keep"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.restore("latest", "out");
    let r = mirrored(&out, &root);
    assert_eq!(std::fs::read(r.join("etc/hosts")).unwrap(), b"hosts");
    assert_eq!(
        std::fs::read(r.join("var/cache/keep/this")).unwrap(),
        b"this"
    );
    assert!(!r.join("var/cache/big").exists(), "excluded file stored");
    let o = env.run(&["verify", "--read-data"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn the_forms_of_one_path_are_one_group() {
    let env = Env::new();
    write(&env.path("t1/c/a"), b"a");
    write(&env.path("t1/c/d/b"), &noise(4, 100_000));
    std::fs::create_dir_all(env.path("t1/a")).unwrap();
    env.init();
    let mut ids = Vec::new();
    for (i, form) in ["t1/c", "t1/c/", "t1/a/../c", "./t1/c/."]
        .iter()
        .enumerate()
    {
        let out = env
            .run(&["backup", "--json", form])
            .current_dir(env.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{form}: {}", stderr(&out));
        let v = json(&out);
        let s = &v[0]["snapshot"];
        assert_eq!(
            s["paths"],
            serde_json::json!([env.path("t1/c").display().to_string()]),
            "{form}"
        );
        if i > 0 {
            assert_eq!(s["kind"], "incremental", "{form}: no parent found");
            assert_eq!(s["summary"]["files_unchanged"], 2, "{form}: re-read");
            assert_eq!(s["summary"]["files_read"], 0, "{form}: re-read");
        }
        ids.push(v[0]["id"].as_str().unwrap().to_string());
    }
    // Retention sees one group: keeping the last one removes the other three.
    let out = env
        .run(&["forget", "--keep-last", "1", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let groups: std::collections::BTreeSet<String> = env
        .snapshots()
        .iter()
        .map(|s| s["paths"].to_string())
        .collect();
    assert_eq!(groups.len(), 1, "{groups:?}");
    for id in &ids[..3] {
        assert!(text.contains(&id[..8]), "{id} not removed: {text}");
    }
}

/// Pseudo-files report sizes unrelated to their content (0 in /proc, 4096 in /sys): they
/// are read to their end, and restore as the bytes a fresh read gives.
#[test]
fn pseudo_files_are_stored_as_read_to_their_end() {
    let env = Env::new();
    env.init();
    let thp = Path::new("/sys/kernel/mm/transparent_hugepage/enabled");
    let mut paths = vec![
        PathBuf::from("/proc/sys/kernel/ostype"),
        PathBuf::from("/proc/self/status"),
    ];
    if thp.exists() {
        paths.push(thp.to_path_buf());
    } else {
        eprintln!("NOT CHECKED: {} does not exist here", thp.display());
    }
    let out = env
        .run(&["backup", "--json"])
        .args(&paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.restore("latest", "out");
    let restored = |p: &Path| std::fs::read(mirrored(&out, p)).unwrap();
    let ostype = restored(Path::new("/proc/sys/kernel/ostype"));
    assert_eq!(ostype, std::fs::read("/proc/sys/kernel/ostype").unwrap());
    assert_eq!(ostype, b"Linux\n");
    if thp.exists() {
        let got = restored(thp);
        assert_eq!(got, std::fs::read(thp).unwrap());
        assert!(!got.contains(&0), "padded with NULs: {} bytes", got.len());
    }
    // /proc/self/status changes with every reader: its shape, not its bytes.
    let status = String::from_utf8(restored(Path::new("/proc/self/status"))).unwrap();
    let fresh = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(status.starts_with("Name:\tbackstop"), "{status:?}");
    assert_eq!(status.lines().count(), fresh.lines().count(), "{status}");
}

/// Unmounts on drop, so a failing test leaves no proc mount in the scratch directory.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A pseudo file system met inside a walk is kept as an empty directory, with a note,
/// with or without -x.
#[test]
fn pseudo_file_systems_inside_a_tree_are_not_read() {
    if !is_root() {
        eprintln!("NOT CHECKED: mounting proc in a scratch directory needs root");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("real.txt"), b"real");
    std::fs::create_dir_all(src.join("proc")).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(src.join("proc"))
        .status()
        .expect("mount");
    assert!(st.success(), "mounting proc failed");
    let _m = Mount(src.join("proc"));
    env.init();
    for flags in [&[][..], &["-x"][..]] {
        let out = env
            .run(&["backup", "--json"])
            .args(flags)
            .arg(&src)
            // Reading /proc would take long: a bound, so the test fails instead of hanging.
            .timeout(std::time::Duration::from_secs(60))
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(out.status.success(), "{flags:?}: {err}");
        let v = json(&out);
        assert_eq!(v[0]["snapshot"]["summary"]["files"], 1, "{flags:?}: {v}");
        if flags.is_empty() {
            assert!(
                v[0]["notes"].to_string().contains(&format!(
                    "{}: content of the proc pseudo file system",
                    src.join("proc").display()
                )),
                "{v}"
            );
        }
        let o = env
            .run(&["ls", "latest", "/proc", "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(json(&o).as_array().unwrap().len(), 0, "{flags:?}");
    }
}

/// verify checks entry names: a tree restore would refuse is a problem naming the snapshot
/// and the entry.
#[test]
fn verify_reports_unsafe_and_duplicate_entry_names() {
    use backstop::pipeline::{ChunkerParams, Crypto, KdfParams};
    use backstop::repo::index::IndexBlob;
    use backstop::repo::pack::Packer;
    use backstop::repo::pack::{self, BlobKind};
    use backstop::repo::{
        BackupKind, IndexPack, InitOptions, Node, NodeKind, Repo, Snapshot, Timestamp, Tree,
    };
    use backstop::storage::Storage;
    use serde_bytes::ByteBuf;

    let node = |name: &[u8]| Node {
        name: ByteBuf::from(name.to_vec()),
        kind: NodeKind::Symlink,
        mode: 0o777,
        uid: 0,
        gid: 0,
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        dev: 1,
        inode: 0,
        links: 1,
        size: 1,
        rdev: 0,
        content: vec![],
        subtree: None,
        target: Some(ByteBuf::from(b"x".to_vec())),
        xattrs: vec![],
    };
    let env = Env::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage = Storage::open(env.repo().to_str().unwrap(), rt.handle().clone()).unwrap();
    let repo = Repo::init(
        storage,
        &InitOptions {
            passphrase: None,
            kdf: KdfParams::default(),
            chunker: ChunkerParams::default(),
            chunking_of: None,
        },
    )
    .unwrap();
    let crypto = Crypto::None;
    let mut packer = Packer::new(1 << 20);
    let mut roots = vec![];
    for nodes in [
        vec![node(b"/")],
        vec![node(b"dup"), node(b"dup")],
        vec![node(b"ok")],
    ] {
        let bytes = Tree { nodes }.encode();
        let id = crypto.chunk_id(&bytes);
        packer.add_plain(BlobKind::Tree, id, &bytes, 0, &crypto);
        roots.push(id);
    }
    let p = packer.finish(&crypto);
    let located = pack::parse(&p.bytes, &crypto).unwrap();
    repo.storage()
        .write(&pack::path(&p.id), p.bytes.clone())
        .unwrap();
    repo.save_index(vec![IndexPack {
        id: p.id,
        size: p.bytes.len() as u64,
        blobs: located.into_iter().map(IndexBlob::from).collect(),
    }])
    .unwrap();
    let mut ids = vec![];
    for tree in roots {
        let id = repo
            .save_snapshot(&Snapshot {
                version: 1,
                time: chrono::Utc::now(),
                hostname: "h".into(),
                username: "u".into(),
                source: "files".into(),
                key: String::new(),
                paths: vec!["/x".into()],
                tree,
                root: None,
                parent: None,
                kind: BackupKind::Full,
                policy: None,
                tags: vec![],
                wal_start: None,
                summary: Default::default(),
                program: "crafted".into(),
            })
            .unwrap();
        ids.push(id.to_hex());
    }
    let out = env.run(&["verify", "--json"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "snapshot {}: entry \\\"/\\\" in /: not a plain file name",
            &ids[0][..8]
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "snapshot {}: entry \\\"dup\\\" in /: a duplicate entry",
            &ids[1][..8]
        )),
        "{text}"
    );
    assert!(
        !text.contains(&ids[2][..8]),
        "the good snapshot blamed: {text}"
    );
}
