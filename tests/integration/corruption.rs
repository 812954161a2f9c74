//! Corruption: a flipped byte in any pack is found, named, and fails only what it touches.

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
    let all = env.packs();
    assert!(all.len() >= 2, "expected several packs, got {}", all.len());
    env.run(&["verify", "--read-data"]).assert().success();

    for pack in &all {
        let len = std::fs::metadata(pack).unwrap().len();
        // Flip a byte in the data area (the middle) of this pack.
        flip(pack, len / 3);
        let out = env.run(&["verify", "--read-data"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(13),
            "verify must fail for {pack:?}: {stdout}"
        );
        assert!(stdout.contains(&snap[..8]), "names the snapshot: {stdout}");
        let name = pack.file_name().unwrap().to_str().unwrap();
        assert!(stdout.contains(name), "names the pack: {stdout}");

        // Restore: affected files fail loudly, the rest restores intact.
        let out_dir = env.path(&format!("out-{}", &name[..8]));
        let res = env
            .run(&["restore", "latest", "--target"])
            .arg(&out_dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        if res.status.code() == Some(3) {
            assert!(stderr.contains("FAILED"), "{stderr}");
            // Every file either restored identical or is absent and named.
            for f in listing(&src).iter().filter(|e| e.kind == "file") {
                let rel = std::str::from_utf8(&f.path).unwrap();
                let restored = out_dir.join(rel);
                if restored.exists() {
                    assert_eq!(
                        std::fs::read(&restored).unwrap(),
                        std::fs::read(src.join(rel)).unwrap(),
                        "{rel}"
                    );
                } else {
                    assert!(stderr.contains(rel), "missing {rel} not named: {stderr}");
                }
            }
        } else {
            // The flipped byte hit a tree: the restore cannot list the snapshot and says so.
            assert_eq!(res.status.code(), Some(13), "{stderr}");
        }
        flip(pack, len / 3); // repair for the next round
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
