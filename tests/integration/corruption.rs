//! Corruption: a flipped byte in any pack is found, named, and fails only what it touches.

use std::sync::Arc;

use super::common::*;

fn flip(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, at).unwrap();
}

/// A blob in a pack: whether it is a tree, its offset and its stored length.
type BlobAt = (bool, u64, u64);

/// Each pack's blobs, read with the library's own parser.
fn pack_layout(env: &Env) -> Vec<(std::path::PathBuf, Vec<BlobAt>)> {
    use backstop::repo::pack::{self, BlobKind};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage =
        backstop::Storage::open(env.repo().to_str().unwrap(), rt.handle().clone()).unwrap();
    let repo = backstop::Repo::open(storage, || Ok(PASSWORD.as_bytes().to_vec())).unwrap();
    env.packs()
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let blobs = pack::parse(&bytes, repo.crypto())
                .unwrap()
                .into_iter()
                .map(|b| {
                    (
                        b.entry.kind == BlobKind::Tree,
                        u64::from(b.offset),
                        u64::from(b.entry.stored_len),
                    )
                })
                .collect();
            (p, blobs)
        })
        .collect()
}

/// Restores with one corrupt blob; returns the exit code, and checks the "fails only the
/// affected files" contract when it is 3.
fn restore_with_damage(env: &Env, src: &std::path::Path, out_dir: &std::path::Path) -> i32 {
    let res = env
        .run(&["restore", "latest", "--target"])
        .arg(out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    let code = res.status.code().unwrap_or(-1);
    if code == 3 {
        assert!(stderr.contains("FAILED"), "{stderr}");
        // Every file either restored identical or is absent and named (itself or by its
        // skipped directory); at least one failed.
        let mut failed = 0;
        for f in listing(src).iter().filter(|e| e.kind == "file") {
            let rel = std::str::from_utf8(&f.path).unwrap();
            let restored = out_dir.join(rel);
            if restored.exists() {
                assert_eq!(
                    std::fs::read(&restored).unwrap(),
                    std::fs::read(src.join(rel)).unwrap(),
                    "{rel}"
                );
            } else {
                failed += 1;
                // Named itself, or inside a directory skipped because its tree was damaged.
                let named = stderr.contains(rel)
                    || std::path::Path::new(rel).ancestors().skip(1).any(|d| {
                        !d.as_os_str().is_empty()
                            && stderr.contains(&format!("{}: directory skipped", d.display()))
                    });
                assert!(named, "missing {rel} not named: {stderr}");
            }
        }
        assert!(failed >= 1, "a damaged file was restored: {stderr}");
    }
    code
}

#[test]
fn flipped_byte_in_any_pack_is_found_and_fails_only_affected_files() {
    let env = Env::new();
    let src = env.path("src");
    // Two big incompressible files fill several packs; small files share one.
    write(&src.join("big1.bin"), &noise(11, 20 << 20));
    write(&src.join("big2.bin"), &noise(12, 20 << 20));
    for i in 0..20 {
        write(
            &src.join(format!("small/{i}.txt")),
            format!("small file {i}\n").repeat(50).as_bytes(),
        );
    }
    env.init();
    let snap = env.backup(&src, &[]);
    let layout = pack_layout(&env);
    assert!(
        layout.len() >= 2,
        "expected several packs, got {}",
        layout.len()
    );
    assert!(
        layout.iter().any(|(_, b)| b.iter().all(|(tree, ..)| !tree)),
        "no pack holds only file data: {layout:?}"
    );
    env.run(&["verify", "--read-data"]).assert().success();

    let mut round = 0;
    for (pack, blobs) in &layout {
        let name = pack.file_name().unwrap().to_str().unwrap();
        // One byte in the middle of a data blob, and (where the pack has one) of a tree blob.
        let data = blobs.iter().find(|(tree, ..)| !tree);
        let tree = blobs.iter().find(|(tree, ..)| *tree);
        for (is_tree, off, len) in data.into_iter().chain(tree) {
            round += 1;
            let at = off + len / 2;
            flip(pack, at);
            let out = env.run(&["verify", "--read-data"]).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(13),
                "verify must fail for {pack:?}: {stdout}"
            );
            assert!(stdout.contains(&snap[..8]), "names the snapshot: {stdout}");
            assert!(stdout.contains(name), "names the pack: {stdout}");
            let code = restore_with_damage(&env, &src, &env.path(&format!("out-{round}")));
            if *is_tree {
                // A damaged tree: the restore cannot list that part of the snapshot and
                // says so (13), or skips it and names it (3).
                assert!(code == 13 || code == 3, "tree blob in {name}: exit {code}");
            } else {
                // A damaged data blob fails only the files that use it.
                assert_eq!(code, 3, "data blob in {name}: exit {code}");
            }
            flip(pack, at); // repair for the next round
        }
    }
    env.run(&["verify", "--read-data"]).assert().success();
}

#[test]
fn subset_verification_rotates_through_least_recently_verified_packs() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..4 {
        write(&src.join(format!("f{i}")), &noise(20 + i, 17 << 20));
    }
    env.init();
    env.backup(&src, &[]);
    let total = env.packs().len();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..total {
        let out = env
            .run(&["verify", "--read-data-subset", "1%", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["packs_read"], 1);
        seen.insert(v["checked"][0]["pack"].as_str().unwrap().to_string());
    }
    assert_eq!(
        seen.len(),
        total,
        "each run verified a pack not verified before"
    );
}

#[test]
fn a_config_corrupted_in_transfer_is_read_again_and_one_corrupt_on_disk_is_reported() {
    use backstop::storage::{StorageOptions, operator::OpendalBackend};
    let env = Env::new();
    env.init();
    let raw = std::fs::read_to_string(env.repo().join("config")).unwrap();
    // A flip that breaks the JSON, and one in the id that only the MAC notices.
    let in_json = 0;
    let in_id = raw.find("\"id\": \"").unwrap() + 10;
    let rt = tokio::runtime::Runtime::new().unwrap();
    for at in [in_json, in_id] {
        for (times, opens) in [(1, true), (usize::MAX, false)] {
            let opts = StorageOptions::default();
            let fs = OpendalBackend::fs(env.repo().to_str().unwrap(), &opts).unwrap();
            // The first `times` reads of `config` come back with one bit flipped at `at`.
            let service = Arc::new(Flipped {
                inner: Arc::new(fs),
                writes: false,
                only: Some("config"),
                at,
                times: times.into(),
            });
            let storage = backstop::Storage::from_backend(service, rt.handle().clone(), opts);
            let res = backstop::Repo::open(storage, || Ok(PASSWORD.as_bytes().to_vec()));
            match res {
                Ok(_) => assert!(opens, "flip at {at}, every read: opened"),
                Err(e) => {
                    assert!(!opens, "flip at {at}, first read only: {e}");
                    assert_eq!(e.kind(), backstop::ErrorKind::Corrupt, "{e}");
                    assert!(e.to_string().contains("config"), "{e}");
                }
            }
        }
    }
}
