//! Memory stays bounded as data grows: the peak RSS of backup and restore hardly moves when
//! the data grows fourfold in bytes and eightfold in files.

use std::path::Path;

use nix::sys::resource::{UsageWho, getrusage};

use super::common::*;

/// `count` files in directories of 100 (a sizeable tree under one top-level directory),
/// plus `mib` MiB of incompressible data in 8 MiB files.
fn tree(root: &Path, count: usize, mib: usize) {
    for i in 0..count {
        write(
            &root.join(format!("d{}/f{i}.txt", i / 100)),
            format!("small file {i}\n").repeat(1 + i % 40).as_bytes(),
        );
    }
    for i in 0..mib / 8 {
        write(
            &root.join(format!("big/{i}.bin")),
            &noise(i as u64, 8 << 20),
        );
    }
}

/// Peak RSS in MiB over every child process this test has waited for so far.
fn children_peak_mib() -> i64 {
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage")
        .max_rss()
        / 1024
}

#[test]
fn peak_memory_does_not_grow_with_the_data() {
    let env = Env::new();
    // Unencrypted: the 64 MiB key derivation would hide the pipeline's own peak.
    env.run(&["init", "--no-encryption"]).assert().success();
    let (small, large) = (env.path("small"), env.path("large"));
    tree(&small, 5_000, 64);
    tree(&large, 40_000, 256);

    // The same thread count on any machine: each reader holds up to 8 MiB.
    env.backup(&small, &["--threads", "2"]);
    env.restore("latest", "out-small");
    let base = children_peak_mib();
    eprintln!("peak RSS with the small tree: {base} MiB");
    env.backup(&large, &["--threads", "2"]);
    let id = env.snapshots().last().expect("snapshot")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let out = env.restore(&id, "out-large");
    let peak = children_peak_mib();
    eprintln!("peak RSS with the large tree: {peak} MiB");
    assert!(
        peak <= base + 12,
        "peak RSS grew from {base} MiB to {peak} MiB with 4x the bytes and 8x the files"
    );
    assert_same_tree(&large, &out);
}
