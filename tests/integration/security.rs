//! The security model against an attacker who can write the storage: nothing stored is
//! readable, the config cannot be altered or downgraded, a failed init leaves nothing behind.

use std::path::{Path, PathBuf};

use backstop::pipeline::{Crypto, KdfParams, KeyFile, MasterKey};
use backstop::repo::pack::Packer;
use backstop::repo::pack::{self, BlobKind};
use backstop::repo::{Id, Repo};
use backstop::storage::Storage;

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

/// `backstop ARGS` with the password, even where the harness would drop it (the config says
/// unencrypted).
fn with_password(env: &Env, args: &[&str]) -> std::process::Output {
    env.cmd()
        .args(args)
        .env("BACKSTOP_REPO", env.repo())
        .env("BACKSTOP_PASSWORD", PASSWORD)
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
    // Without a password, the sealed manifests do not decode: each is named, the listing
    // fails (exit 3), and verify calls the repository damaged (exit 13).
    let out = env.run(&["snapshots"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("damaged snapshot manifest"), "{err}");
    let out = env.run(&["verify"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(13),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And a backup without a password fails on the sealed index, naming tampering, before
    // writing anything.
    let out = env.run(&["backup"]).arg(&src).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(13), "{err}");
    assert!(err.contains("tampering"), "{err}");
    assert_eq!(packs_and_snapshots(&env), before);
    assert!(objects_containing(&env.repo(), MARKER).is_empty());
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
        if pw {
            c.env("BACKSTOP_PASSWORD", PASSWORD);
        } else {
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

#[test]
fn init_writes_the_chosen_key_derivation_cost_and_refuses_one_out_of_range() {
    let key_params = |env: &Env| {
        let key = std::fs::read_dir(env.repo().join("keys"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(key).unwrap()).unwrap();
        (
            v["params"]["memory-kib"].as_u64(),
            v["params"]["iterations"].as_u64(),
        )
    };
    let default = Env::new();
    default.init();
    assert_eq!(key_params(&default), (Some(32 * 1024), Some(6)));
    let strong = Env::new();
    strong
        .run(&["init", "--kdf-memory-mib", "128", "--kdf-passes", "4"])
        .assert()
        .success();
    assert_eq!(key_params(&strong), (Some(128 * 1024), Some(4)));
    strong.run(&["snapshots"]).assert().success();
    for bad in [["--kdf-memory-mib", "2048"], ["--kdf-passes", "0"]] {
        let env = Env::new();
        let out = env.run(&["init"]).args(bad).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
        assert!(!env.repo().join("config").exists());
    }
    // No passphrase, nothing to derive: asking for a cost is a mistake, not ignored.
    let env = Env::new();
    let out = env
        .run(&["init", "--no-encryption", "--kdf-memory-mib", "64"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--no-encryption"), "{err}");
    assert!(!env.repo().join("config").exists());
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

/// The fixed key of the fuzz targets' keyed paths (`fuzz/fuzz_targets/shared/key.rs`).
fn fuzz_key() -> MasterKey {
    MasterKey {
        encrypt: [0x5a; 32],
        id: [0xa5; 32],
        chunker_seed: 7,
    }
}

/// Builds the fuzz seed corpus from a real repository's objects and checks that every seed
/// decodes with what its target calls, so the fuzzers start past the first byte of each
/// format. With `BACKSTOP_FUZZ_SEED=1` (`fuzz/seed`) it also writes them into
/// `fuzz/corpus/<target>/`.
#[test]
fn fuzz_seed_corpus_from_a_real_repository_decodes() {
    let env = Env::new();
    let src = env.path("src");
    write(
        &src.join("a/readme.txt"),
        b"a small text file, compressible, compressible\n",
    );
    write(&src.join("a/noise"), &noise(5, 9000));
    write(&src.join("b/empty"), b"");
    std::os::unix::fs::symlink("../a/readme.txt", src.join("b/link")).unwrap();
    xattr::set(src.join("a/noise"), "user.k", b"v").unwrap();
    env.run(&["init", "--no-encryption"]).assert().success();
    env.backup(&src, &["--compression", "0"]);
    write(&src.join("b/new"), b"second state");
    env.backup(&src, &[]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage = Storage::open(env.repo().to_str().unwrap(), rt.handle().clone()).unwrap();
    let repo = Repo::open(storage.clone(), || Err(backstop::Error::config("none"))).unwrap();
    let (key, keyed) = (fuzz_key(), Crypto::keyed(&fuzz_key()));
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    let config = storage.read("config").unwrap();
    seeds.push(("snapshot", config.clone()));
    let mut signed = repo.config().clone();
    signed.encrypted = true;
    signed.sign(&key);
    let signed = serde_json::to_vec_pretty(&signed).unwrap();
    seeds.push(("snapshot", signed.clone()));
    seeds.push(("crypto", signed));
    for dir in ["snapshots/", "index/"] {
        for l in storage.list(dir).unwrap() {
            let plain = repo
                .read_object(&l.path, &backstop::repo::id_from_path(&l.path).unwrap())
                .unwrap();
            let target = if dir == "index/" { "index" } else { "snapshot" };
            seeds.push(("crypto", keyed.seal(plain.clone())));
            seeds.push((target, plain));
        }
    }
    for l in storage.list("data/").unwrap() {
        let bytes = storage.read(&l.path).unwrap();
        // The same blobs again, sealed with the fuzz key: a keyed pack.
        let mut packer = Packer::new(1 << 20);
        for b in pack::parse(&bytes, &Crypto::None).unwrap() {
            let start = b.offset as usize;
            let stored = &bytes[start..start + b.entry.stored_len as usize];
            let plain = pack::open_blob(stored, &b.entry, &Crypto::None).unwrap();
            if b.entry.kind == BlobKind::Tree {
                seeds.push(("tree", plain.clone()));
                seeds.push(("crypto", keyed.seal(plain.clone())));
            }
            packer.add_plain(b.entry.kind, keyed.chunk_id(&plain), &plain, 3, &keyed);
        }
        seeds.push(("pack", packer.finish(&keyed).bytes.to_vec()));
        seeds.push(("pack", bytes));
    }
    let cheap = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let kf = KeyFile::wrap(&key, b"fuzz", cheap).unwrap();
    seeds.push(("keyfile", serde_json::to_vec_pretty(&kf).unwrap()));
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for e in std::fs::read_dir(&policies).unwrap() {
        seeds.push(("policy", std::fs::read(e.unwrap().path()).unwrap()));
    }

    for (target, bytes) in &seeds {
        let ok = match *target {
            "pack" => pack::parse(bytes, &Crypto::None)
                .or_else(|_| pack::parse(bytes, &keyed))
                .is_ok(),
            "index" => backstop::repo::IndexFile::decode(bytes).is_ok(),
            "tree" => backstop::repo::Tree::decode(bytes).is_ok(),
            "snapshot" => {
                backstop::repo::Snapshot::decode(bytes).is_ok()
                    || backstop::repo::RepoConfig::decode(bytes).is_ok()
            }
            "crypto" => {
                keyed.open(bytes).is_ok() || {
                    backstop::repo::RepoConfig::decode(bytes).is_ok_and(|c| c.verify(&key).is_ok())
                }
            }
            "keyfile" => serde_json::from_slice::<KeyFile>(bytes)
                .is_ok_and(|k| k.unwrap_key(b"fuzz").is_ok()),
            "policy" => {
                let text = std::str::from_utf8(bytes).unwrap();
                backstop::policy::parse_toml::<backstop::policy::Policy>(Path::new("p.toml"), text)
                    .is_ok()
                    || backstop::policy::parse_toml::<backstop::policy::Settings>(
                        Path::new("backstop.toml"),
                        text,
                    )
                    .is_ok()
            }
            _ => unreachable!(),
        };
        assert!(ok, "a {target} seed does not decode");
    }
    for t in [
        "pack", "index", "tree", "snapshot", "keyfile", "policy", "crypto",
    ] {
        assert!(
            seeds.iter().any(|(s, _)| *s == t),
            "no seed for the {t} target"
        );
    }
    if std::env::var_os("BACKSTOP_FUZZ_SEED").is_some() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (target, bytes) in &seeds {
            let dir = corpus.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            let name = &Id::hash(bytes).to_hex()[..16];
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}

/// Chunk boundaries come from a gear table seeded by the master key, so the sizes of the
/// stored blobs do not reveal which known file was backed up.
#[test]
fn chunk_boundaries_and_ids_depend_on_the_key() {
    use backstop::pipeline::{Chunker, ChunkerParams};
    let data = noise(9, 24 << 20);
    let cuts = |seed: u64| {
        let c = Chunker::new(ChunkerParams::default(), seed);
        let (mut at, mut v) = (0, vec![]);
        while at < data.len() {
            at += c.cut(&data[at..]);
            v.push(at);
        }
        v
    };
    let (a, b) = (MasterKey::generate(), MasterKey::generate());
    assert!(cuts(0).len() > 8, "{:?}", cuts(0));
    assert_ne!(cuts(a.chunker_seed), cuts(b.chunker_seed));
    assert_ne!(cuts(a.chunker_seed), cuts(0));
    assert_eq!(cuts(a.chunker_seed), cuts(a.chunker_seed));
    let chunk = &data[..1000];
    assert_ne!(
        Crypto::keyed(&a).chunk_id(chunk),
        Crypto::keyed(&b).chunk_id(chunk)
    );
    assert_ne!(Crypto::keyed(&a).chunk_id(chunk), Id::hash(chunk));
}

/// Sealed objects carry no type, but each kind decodes only as itself: an attacker who moves
/// a sealed index file under `snapshots/` (or a manifest under `index/`) gets a decode error.
#[test]
fn an_object_of_one_kind_does_not_pass_for_another() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"some content");
    env.init();
    env.backup(&src, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage = Storage::open(env.repo().to_str().unwrap(), rt.handle().clone()).unwrap();
    let repo = Repo::open(storage.clone(), || Ok(PASSWORD.as_bytes().to_vec())).unwrap();
    let read = |dir: &str| {
        let l = storage.list(dir).unwrap().remove(0);
        repo.read_object(&l.path, &backstop::repo::id_from_path(&l.path).unwrap())
            .unwrap()
    };
    let (index, manifest) = (read("index/"), read("snapshots/"));
    let idx = backstop::repo::IndexFile::decode(&index).unwrap();
    let snap = backstop::repo::Snapshot::decode(&manifest).unwrap();
    let tree = repo
        .read_blob(&backstop::repo::Index::from_files([idx]), &snap.tree)
        .unwrap();
    backstop::repo::Tree::decode(&tree).unwrap();
    assert!(backstop::repo::Snapshot::decode(&index).is_err());
    assert!(backstop::repo::Snapshot::decode(&tree).is_err());
    assert!(backstop::repo::IndexFile::decode(&manifest).is_err());
    assert!(backstop::repo::Tree::decode(&manifest).is_err());
}
