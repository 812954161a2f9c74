//! Repository format features: shared chunker parameters.

use std::collections::HashSet;

use backstop::{Id, Repo, Storage};

use super::common::*;

/// The blob ids a repository's index lists.
fn blob_ids(repo: &std::path::Path, password: Option<&str>) -> HashSet<Id> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let storage = Storage::open(repo.to_str().unwrap(), rt.handle().clone()).unwrap();
    let pw = password.map(|p| p.as_bytes().to_vec());
    let repo = Repo::open(storage, || {
        pw.clone()
            .ok_or_else(|| backstop::Error::config("no password"))
    })
    .unwrap();
    let index = repo.load_index().unwrap();
    index.entries().iter().map(|e| e.id).collect()
}

#[test]
fn repositories_sharing_chunker_parameters_make_the_same_blobs() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..4 {
        write(&src.join(format!("f{i}")), &noise(i, 3 << 20));
    }
    env.init();
    env.backup(&src, &[]);
    let (copy, other) = (env.path("copy"), env.path("other"));
    env.cmd()
        .args(["init", "--copy-chunker-params", "--from-repo"])
        .arg(env.repo())
        .arg("--repo")
        .arg(&copy)
        .assert()
        .success();
    env.cmd()
        .args(["init", "--repo"])
        .arg(&other)
        .assert()
        .success();
    for r in [&copy, &other] {
        env.cmd()
            .args(["backup", "--repo"])
            .arg(r)
            .arg(&src)
            .assert()
            .success();
    }
    let first = blob_ids(&env.repo(), Some(PASSWORD));
    assert!(first.len() > 4);
    assert_eq!(blob_ids(&copy, Some(PASSWORD)), first, "the same blobs");
    assert!(
        blob_ids(&other, Some(PASSWORD)).is_disjoint(&first),
        "an independent repository names chunks with its own key"
    );

    // Encrypted and unencrypted repositories name chunks differently: refused.
    let out = env
        .cmd()
        .env_remove("BACKSTOP_PASSWORD")
        .env("BACKSTOP_FROM_PASSWORD", PASSWORD)
        .args([
            "init",
            "--no-encryption",
            "--copy-chunker-params",
            "--from-repo",
        ])
        .arg(env.repo())
        .arg("--repo")
        .arg(env.path("plain"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("two encrypted or two unencrypted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!env.path("plain").join("config").exists());
    // A wrong password for the other repository names it.
    let out = env
        .cmd()
        .env("BACKSTOP_FROM_PASSWORD", "wrong")
        .args(["init", "--copy-chunker-params", "--from-repo"])
        .arg(env.repo())
        .arg("--repo")
        .arg(env.path("third"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--from-repo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
