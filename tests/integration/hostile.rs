//! Hostile repositories and targets: nothing a repository or a target holds makes a restore
//! write outside its target.
//!
//! The target is nested several levels deep in a watched directory tree (`world/`, with
//! siblings at every level), and everything in `world/` outside the target — names,
//! metadata and content — must be identical before and after each restore. So a name like
//! `../outside/evil` or `../../../../outside/evil`, seen from anywhere in the target,
//! lands in watched territory if it is ever followed.

use std::path::{Path, PathBuf};

use serde_bytes::ByteBuf;

use backstop::pipeline::{ChunkerParams, Crypto, KdfParams};
use backstop::repo::index::IndexBlob;
use backstop::repo::pack::Packer;
use backstop::repo::pack::{self, BlobKind};
use backstop::repo::{
    BackupKind, Id, IndexPack, InitOptions, Node, NodeKind, Piece, Repo, Snapshot, Timestamp, Tree,
};
use backstop::storage::Storage;

use super::common::*;

pub fn node(name: &[u8], kind: NodeKind) -> Node {
    Node {
        name: ByteBuf::from(name.to_vec()),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        dev: 1,
        inode: 0,
        links: 1,
        size: 0,
        rdev: 0,
        content: vec![],
        subtree: None,
        target: None,
        xattrs: vec![],
    }
}

/// The id a tree gets in an unencrypted repository.
pub fn tree_id(t: &Tree) -> Id {
    Crypto::None.chunk_id(&t.encode())
}

/// Adds a snapshot of this host whose trees are `trees` (the first is the root) to the
/// unencrypted repository of `env` (created if missing). `data` is stored as one chunk.
pub fn craft(env: &Env, trees: Vec<Tree>, data: &[u8]) -> Id {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage = Storage::open(env.repo().to_str().unwrap(), rt.handle().clone()).unwrap();
    let repo = if env.repo().join("config").exists() {
        Repo::open(storage, || Err(backstop::Error::config("unencrypted"))).unwrap()
    } else {
        Repo::init(
            storage,
            &InitOptions {
                passphrase: None,
                kdf: KdfParams::default(),
                chunker: ChunkerParams::default(),
                chunking_of: None,
            },
        )
        .unwrap()
    };
    let crypto = Crypto::None;
    let mut packer = Packer::new(1 << 20);
    let data_id = crypto.chunk_id(data);
    packer.add_plain(BlobKind::Data, data_id, data, 0, &crypto);
    let ids: Vec<Id> = trees.iter().map(tree_id).collect();
    for t in &trees {
        packer.add_plain(BlobKind::Tree, tree_id(t), &t.encode(), 0, &crypto);
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
    // Later snapshots are newer, so "latest" is the one crafted last.
    std::thread::sleep(std::time::Duration::from_millis(10));
    repo.save_snapshot(&Snapshot {
        version: 1,
        time: chrono::Utc::now(),
        hostname: backstop::repo::hostname(),
        username: "evil".into(),
        source: "files".into(),
        key: String::new(),
        paths: vec!["/srv".into()],
        tree: ids[0],
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
    data_id
}

pub fn file(name: &[u8], len: usize) -> Node {
    let mut n = node(name, NodeKind::File);
    n.size = len as u64;
    n.content = vec![Piece::Chunk(Crypto::None.chunk_id(PAYLOAD), len as u32)];
    n
}

pub fn dir(name: &[u8], sub: &Tree) -> Node {
    let mut n = node(name, NodeKind::Dir);
    n.mode = 0o755;
    n.subtree = Some(tree_id(sub));
    n
}

pub fn symlink(name: &[u8], target: &[u8]) -> Node {
    let mut n = node(name, NodeKind::Symlink);
    n.target = Some(ByteBuf::from(target.to_vec()));
    n
}

pub const PAYLOAD: &[u8] = b"owned";

/// A scratch environment with a watched `world/` and a target deep inside it.
pub struct World {
    pub env: Env,
    pub world: PathBuf,
    pub outside: PathBuf,
    pub target: PathBuf,
}

impl World {
    pub fn new() -> World {
        let env = Env::new();
        let world = env.path("world");
        let outside = world.join("outside");
        write(&outside.join("keep"), b"keep");
        let mut d = world.clone();
        // world/outside, world/a/outside, …, world/a/b/c/outside: `../outside` from the
        // target or any directory of it, up to the world, lands on a watched directory.
        for level in ["a", "b", "c", "target"] {
            write(&d.join("sibling"), b"sibling");
            write(&d.join("outside/keep"), b"keep");
            d = d.join(level);
        }
        let target = d;
        std::fs::create_dir_all(&target).unwrap();
        World {
            env,
            world,
            outside,
            target,
        }
    }

    /// Every entry of `world/` outside the target, with its content.
    pub fn fingerprint(&self) -> Vec<(Entry, Option<Vec<u8>>)> {
        let rel_target = self.target.strip_prefix(&self.world).unwrap();
        listing(&self.world)
            .into_iter()
            .filter(|e| !Path::new(std::str::from_utf8(&e.path).unwrap()).starts_with(rel_target))
            .map(|e| {
                let content = (e.kind == "file").then(|| {
                    std::fs::read(self.world.join(std::str::from_utf8(&e.path).unwrap())).unwrap()
                });
                (e, content)
            })
            .collect()
    }

    /// Restores `latest` with `extra` arguments; asserts the exit code, that stderr
    /// names `expect`, and that nothing outside the target changed.
    pub fn restore(&self, extra: &[&str], code: i32, expect: &str) -> String {
        let before = self.fingerprint();
        let out = self
            .env
            .cmd()
            .args(["restore", "--repo"])
            .arg(self.env.repo())
            .args(["latest", "--target"])
            .arg(&self.target)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let after = self.fingerprint();
        if before != after {
            let changed: Vec<_> = after.iter().filter(|e| !before.contains(e)).collect();
            panic!("something outside the target changed: {changed:?}\n{stderr}");
        }
        assert!(!Path::new("/tmp/evil-abs").exists());
        assert!(!Path::new("/evil").exists());
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(
            stderr.contains(expect),
            "stderr should mention '{expect}': {stderr}"
        );
        stderr
    }
}

const BAD_NAMES: &[&[u8]] = &[
    b"../outside/evil",
    b"../../../../outside/evil",
    b"../outside",
    b"..",
    b".",
    b"",
    b"/",
    b"/tmp/evil-abs",
    b"a/b",
    b"nul\0byte",
];

#[test]
fn bad_names_on_files_directories_and_symlinks_fail_alone_inside_the_target() {
    for bad in BAD_NAMES {
        for kind in ["file", "dir", "symlink"] {
            let w = World::new();
            let inner = Tree {
                nodes: vec![file(b"evil", PAYLOAD.len())],
            };
            let keep = w.outside.join("keep");
            let bad_node = match kind {
                "file" => file(bad, PAYLOAD.len()),
                "dir" => dir(bad, &inner),
                _ => symlink(bad, keep.as_os_str().as_encoded_bytes()),
            };
            let mut nodes = vec![file(b"good", PAYLOAD.len()), bad_node];
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            craft(&w.env, vec![Tree { nodes }, inner], PAYLOAD);
            let err = w.restore(&[], 3, "not a plain file name");
            assert_eq!(
                std::fs::read(w.target.join("good")).unwrap(),
                PAYLOAD,
                "{kind} {bad:?}: the rest restores: {err}"
            );
            let inside: Vec<_> = listing(&w.target).into_iter().map(|e| e.path).collect();
            assert_eq!(inside, vec![b"good".to_vec()], "{kind} {bad:?}");
        }
    }
}

#[test]
fn symlink_then_directory_of_the_same_name_is_refused() {
    let w = World::new();
    let inner = Tree {
        nodes: vec![file(b"evil", PAYLOAD.len())],
    };
    let link = symlink(b"link", w.outside.as_os_str().as_encoded_bytes());
    let d = dir(b"link", &inner);
    craft(
        &w.env,
        vec![
            Tree {
                nodes: vec![link, d],
            },
            inner,
        ],
        PAYLOAD,
    );
    w.restore(&[], 3, "duplicate entry");
    assert!(!w.target.join("link").exists());
}

#[test]
fn symlink_then_file_of_the_same_name_is_refused() {
    let w = World::new();
    let link = symlink(
        b"link",
        w.outside.join("keep").as_os_str().as_encoded_bytes(),
    );
    craft(
        &w.env,
        vec![Tree {
            nodes: vec![link, file(b"link", PAYLOAD.len())],
        }],
        PAYLOAD,
    );
    w.restore(&[], 3, "duplicate entry");
}

#[test]
fn symlinks_restored_earlier_are_never_followed_by_a_later_restore() {
    // A first snapshot plants symlinks pointing outside (relative and absolute), a second
    // one has a directory and a file below and at those names.
    for overwrite in ["never", "if-changed", "always"] {
        let w = World::new();
        let outside = w.outside.as_os_str().as_encoded_bytes().to_vec();
        craft(
            &w.env,
            vec![Tree {
                nodes: vec![
                    symlink(b"abs", &outside),
                    symlink(b"file", b"../outside/keep"),
                    symlink(b"rel", b"../../../../outside"),
                ],
            }],
            PAYLOAD,
        );
        w.restore(&[], 0, "restoring snapshot");
        let inner = Tree {
            nodes: vec![file(b"keep", PAYLOAD.len())],
        };
        craft(
            &w.env,
            vec![
                Tree {
                    nodes: vec![
                        dir(b"abs", &inner),
                        file(b"file", PAYLOAD.len()),
                        dir(b"rel", &inner),
                    ],
                },
                inner,
            ],
            PAYLOAD,
        );
        let code = if overwrite == "always" { 0 } else { 3 };
        let err = w.restore(&["--overwrite", overwrite], code, "");
        if overwrite == "always" {
            // Replaced inside the target, never followed.
            assert_eq!(std::fs::read(w.target.join("abs/keep")).unwrap(), PAYLOAD);
            assert_eq!(std::fs::read(w.target.join("file")).unwrap(), PAYLOAD);
        } else {
            assert!(err.contains("symlink is in the way"), "{err}");
        }
    }
}

#[test]
fn pre_existing_symlinks_in_the_target_are_not_followed() {
    // target/dir -> outside, and target/file -> outside/keep, for every --overwrite.
    for overwrite in ["never", "if-changed", "always"] {
        let w = World::new();
        std::os::unix::fs::symlink(&w.outside, w.target.join("dir")).unwrap();
        std::os::unix::fs::symlink(w.outside.join("keep"), w.target.join("file")).unwrap();
        let inner = Tree {
            nodes: vec![file(b"evil", PAYLOAD.len())],
        };
        craft(
            &w.env,
            vec![
                Tree {
                    nodes: vec![dir(b"dir", &inner), file(b"file", PAYLOAD.len())],
                },
                inner,
            ],
            PAYLOAD,
        );
        let code = if overwrite == "always" { 0 } else { 3 };
        w.restore(&["--overwrite", overwrite], code, "is not empty");
    }
}

#[test]
fn oversized_and_inconsistent_lengths_are_refused() {
    // A chunk whose recorded length disagrees with the index, and a file claiming a huge size.
    let w = World::new();
    let mut f = file(b"f", 4096);
    f.size = 4096;
    craft(&w.env, vec![Tree { nodes: vec![f] }], PAYLOAD);
    w.restore(&[], 3, "missing from the repository");
    assert!(
        !w.target.join("f").exists(),
        "a file that failed is not left behind"
    );
    assert!(listing(&w.target).is_empty(), "no temporary file is left");
}
