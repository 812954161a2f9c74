//! Hostile repositories: crafted trees must not make a restore write outside its target.

use serde_bytes::ByteBuf;

use backstop::pipeline::{ChunkerParams, Crypto, KdfParams, Packer};
use backstop::repo::index::IndexBlob;
use backstop::repo::pack::{self, BlobKind};
use backstop::repo::{
    BackupKind, Id, IndexPack, InitOptions, Node, NodeKind, Piece, Repo, Snapshot, Timestamp, Tree,
};
use backstop::storage::Storage;

use super::common::*;

fn node(name: &[u8], kind: NodeKind) -> Node {
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

/// Writes an unencrypted repository whose one snapshot has the given trees; the first is
/// the root. Returns the repository path.
fn craft(env: &Env, trees: Vec<Tree>, data: &[u8]) -> (Id, Vec<Id>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage = Storage::open(env.repo().to_str().unwrap(), rt.handle().clone()).unwrap();
    let repo = Repo::init(
        storage,
        &InitOptions {
            passphrase: None,
            kdf: KdfParams::default(),
            chunker: ChunkerParams::default(),
        },
    )
    .unwrap();
    let crypto = Crypto::None;
    let mut packer = Packer::new(1 << 20);
    let data_id = crypto.chunk_id(data);
    packer.add_plain(BlobKind::Data, data_id, data.to_vec(), 0, &crypto);
    let mut ids = vec![];
    for t in &trees {
        let bytes = t.encode();
        let id = crypto.chunk_id(&bytes);
        packer.add_plain(BlobKind::Tree, id, bytes, 0, &crypto);
        ids.push(id);
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
    repo.save_snapshot(&Snapshot {
        version: 1,
        time: chrono::Utc::now(),
        hostname: "evil".into(),
        username: "evil".into(),
        source: "files".into(),
        paths: vec!["/".into()],
        tree: ids[0],
        root: None,
        parent: None,
        kind: BackupKind::Full,
        policy: None,
        tags: vec![],
        summary: Default::default(),
        program: "crafted".into(),
    })
    .unwrap();
    (data_id, ids)
}

fn file(name: &[u8], data_id: Id, len: u32) -> Node {
    let mut n = node(name, NodeKind::File);
    n.size = u64::from(len);
    n.content = vec![Piece::Chunk(data_id, len)];
    n
}

const PAYLOAD: &[u8] = b"owned";

/// Restores the crafted repository and checks that it failed and nothing left the target.
fn assert_contained(env: &Env, outside: &std::path::Path, target: &std::path::Path, expect: &str) {
    let before = listing(outside).len();
    let out = env
        .cmd()
        .args(["restore", "--repo"])
        .arg(env.repo())
        .args(["latest", "--target"])
        .arg(target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "restore must refuse the hostile repository"
    );
    assert!(
        stderr.contains(expect),
        "error should mention '{expect}': {stderr}"
    );
    assert_eq!(
        listing(outside).len(),
        before,
        "something was written outside the target"
    );
    for e in listing(outside) {
        if e.kind == "file" {
            let p = outside.join(std::str::from_utf8(&e.path).unwrap());
            assert_ne!(std::fs::read(p).unwrap(), PAYLOAD, "payload landed outside");
        }
    }
}

fn setup() -> (Env, std::path::PathBuf, std::path::PathBuf) {
    let env = Env::new();
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    write(&outside.join("keep"), b"keep");
    let target = env.path("target/restore");
    (env, outside, target)
}

#[test]
fn dot_dot_and_slash_names_are_refused() {
    for bad in [
        &b".."[..],
        b"../outside/evil",
        b"/tmp/evil-abs",
        b"a/b",
        b".",
        b"",
        b"nul\0byte",
    ] {
        let (env, outside, target) = setup();
        let data_id = backstop::pipeline::Crypto::None.chunk_id(PAYLOAD);
        craft(
            &env,
            vec![Tree {
                nodes: vec![file(bad, data_id, PAYLOAD.len() as u32)],
            }],
            PAYLOAD,
        );
        assert_contained(&env, &outside, &target, "not a plain file name");
        assert!(!std::path::Path::new("/tmp/evil-abs").exists());
    }
}

#[test]
fn symlink_then_directory_of_the_same_name_is_refused() {
    let (env, outside, target) = setup();
    let data_id = Crypto::None.chunk_id(PAYLOAD);
    let inner = Tree {
        nodes: vec![file(b"evil", data_id, PAYLOAD.len() as u32)],
    };
    let inner_id = Crypto::None.chunk_id(&inner.encode());
    let mut link = node(b"link", NodeKind::Symlink);
    link.target = Some(ByteBuf::from(
        outside.as_os_str().as_encoded_bytes().to_vec(),
    ));
    let mut dir = node(b"link", NodeKind::Dir);
    dir.subtree = Some(inner_id);
    craft(
        &env,
        vec![
            Tree {
                nodes: vec![link, dir],
            },
            inner,
        ],
        PAYLOAD,
    );
    assert_contained(&env, &outside, &target, "duplicate entry");
}

#[test]
fn symlink_then_file_through_it_is_refused() {
    // A symlink "link" pointing outside, then a file "link" (written through it if followed).
    let (env, outside, target) = setup();
    let data_id = Crypto::None.chunk_id(PAYLOAD);
    let mut link = node(b"link", NodeKind::Symlink);
    link.target = Some(ByteBuf::from(
        outside.join("keep").as_os_str().as_encoded_bytes().to_vec(),
    ));
    craft(
        &env,
        vec![Tree {
            nodes: vec![link, file(b"link", data_id, PAYLOAD.len() as u32)],
        }],
        PAYLOAD,
    );
    assert_contained(&env, &outside, &target, "duplicate entry");
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");
}

#[test]
fn pre_existing_symlinks_in_the_target_are_refused() {
    // target/dir -> outside, and target/file -> outside/keep.
    let (env, outside, target) = setup();
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("dir")).unwrap();
    let data_id = Crypto::None.chunk_id(PAYLOAD);
    let inner = Tree {
        nodes: vec![file(b"evil", data_id, PAYLOAD.len() as u32)],
    };
    let inner_id = Crypto::None.chunk_id(&inner.encode());
    let mut dir = node(b"dir", NodeKind::Dir);
    dir.subtree = Some(inner_id);
    craft(&env, vec![Tree { nodes: vec![dir] }, inner], PAYLOAD);
    assert_contained(&env, &outside, &target, "symlink is in the way");

    let (env, outside, target) = setup();
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(outside.join("keep"), target.join("file")).unwrap();
    craft(
        &env,
        vec![Tree {
            nodes: vec![file(b"file", data_id, PAYLOAD.len() as u32)],
        }],
        PAYLOAD,
    );
    assert_contained(&env, &outside, &target, "symlink");
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");
}

#[test]
fn oversized_and_inconsistent_lengths_are_refused() {
    // A chunk whose recorded length disagrees with the index, and a file claiming a huge size.
    let (env, outside, target) = setup();
    let data_id = Crypto::None.chunk_id(PAYLOAD);
    let mut f = file(b"f", data_id, 4096);
    f.size = 4096;
    craft(&env, vec![Tree { nodes: vec![f] }], PAYLOAD);
    let out = env
        .cmd()
        .args(["restore", "--repo"])
        .arg(env.repo())
        .args(["latest", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !target.join("f").exists(),
        "a file that failed is not left behind"
    );
    assert_eq!(listing(&outside).len(), 1);
}
