//! The conformance cases: each gets a fresh, empty storage (see [`super::Ctx`]) and checks
//! one part of the contract documented in `src/storage.rs`.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use backstop::Id;
use backstop::storage::{Listed, Storage, StorageOptions};
use bytes::Bytes;

use super::Ctx;
use crate::integration::common::{Flipped, noise};

/// Whether reads may return corrupted bytes (callers detect it by hash and read again).
fn corrupts(c: &Ctx) -> bool {
    c.variant.as_deref().is_some_and(|v| v.contains("bitflip"))
}

/// Reads `path` and compares with `want`. Under bit flips a read may differ (same length,
/// never an error): read again, as hash-checking callers do.
fn read_eq(c: &Ctx, path: &str, want: &[u8]) {
    for _ in 0..8 {
        let got = c
            .storage
            .read(path)
            .unwrap_or_else(|e| panic!("reading {path}: {e}"));
        if got == want {
            return;
        }
        assert!(
            corrupts(c),
            "{path}: read {} bytes, not what was written",
            got.len()
        );
        assert_eq!(got.len(), want.len(), "{path}: a bit flip keeps the length");
    }
    panic!("{path}: never read back intact");
}

/// [`read_eq`] for a range, read both ways: into a new buffer, and into `buf`, a buffer
/// reused from read to read (whatever it held before must not show).
fn range_eq(c: &Ctx, path: &str, range: Range<u64>, want: &[u8], buf: &mut Vec<u8>) {
    for into in [false, true] {
        let mut intact = false;
        for _ in 0..8 {
            let got = if into {
                c.storage
                    .read_range_into(path, range.clone(), buf)
                    .map(|()| buf.clone())
            } else {
                c.storage
                    .read_range(path, range.clone())
                    .map(|b| b.to_vec())
            }
            .unwrap_or_else(|e| panic!("reading {path} {range:?} (into: {into}): {e}"));
            if got == want {
                intact = true;
                break;
            }
            assert!(
                corrupts(c),
                "{path} {range:?} (into: {into}): not what was written"
            );
            assert_eq!(got.len(), want.len());
        }
        assert!(
            intact,
            "{path} {range:?} (into: {into}): never read back intact"
        );
    }
}

/// Lists `dir`; under list lag, lists until every object in `want` showed up (each listing
/// a subset of the truth).
fn list_paths(c: &Ctx, dir: &str, want: &BTreeSet<String>) -> Vec<Listed> {
    let mut seen: Vec<Listed> = Vec::new();
    for _ in 0..30 {
        let got = c.storage.list(dir).unwrap();
        for l in got {
            if !seen.iter().any(|s| s.path == l.path) {
                seen.push(l);
            }
        }
        let paths: BTreeSet<String> = seen.iter().map(|l| l.path.clone()).collect();
        if !c.lags() || paths.is_superset(want) {
            return seen;
        }
    }
    seen
}

pub fn write_then_read(c: &Ctx) {
    for (i, len) in [0usize, 1, 100, 65_543].into_iter().enumerate() {
        let data = noise(i as u64, len);
        let path = format!("wr/obj{i}");
        c.storage.write(&path, data.clone()).unwrap();
        read_eq(c, &path, &data);
        assert_eq!(c.storage.size(&path).unwrap(), len as u64);
        assert!(c.storage.exists(&path).unwrap());
        // Content-addressed: the verified read always returns the right bytes.
        let id = Id::hash(&data);
        let named = format!("wr/{id}");
        c.storage.write(&named, data.clone()).unwrap();
        assert_eq!(c.storage.read_verified(&named, &id).unwrap(), data);
    }
}

pub fn read_range(c: &Ctx) {
    let data = noise(7, 100_000);
    c.storage.write("rr/obj", data.clone()).unwrap();
    // Long, short, long again: one buffer serves them all.
    let mut buf = Vec::new();
    for r in [
        0..1,
        0..100_000,
        500..1500,
        99_999..100_000,
        4096..8192,
        7..99_993,
    ] {
        range_eq(
            c,
            "rr/obj",
            r.clone(),
            &data[r.start as usize..r.end as usize],
            &mut buf,
        );
    }
    assert!(c.storage.read_range("rr/obj", 10..10).unwrap().is_empty());
    c.storage
        .read_range_into("rr/obj", 10..10, &mut buf)
        .unwrap();
    assert!(buf.is_empty());
    // Past the end: the object is shorter than asked, which is truncation.
    let e = c.storage.read_range("rr/obj", 99_000..101_000).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    let e = c
        .storage
        .read_range_into("rr/obj", 99_000..101_000, &mut buf)
        .unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    let e = c
        .storage
        .read_range_into("rr/obj", 200_000..200_010, &mut buf)
        .unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

pub fn stat(c: &Ctx) {
    let before = chrono::Utc::now() - chrono::Duration::minutes(10);
    c.storage.write("st/obj", noise(3, 12_345)).unwrap();
    let m = c.storage.stat("st/obj").unwrap();
    assert_eq!(m.size, 12_345);
    let t = m.modified.expect("the service reports modification times");
    assert!(
        t > before && t < chrono::Utc::now() + chrono::Duration::minutes(10),
        "{t}"
    );
}

pub fn list(c: &Ctx) {
    let objects = [
        ("ls/a", 10),
        ("ls/b/c", 2000),
        ("ls/b/d/e", 0),
        ("other/x", 5),
    ];
    for (i, (p, len)) in objects.iter().enumerate() {
        c.storage.write(p, noise(i as u64, *len)).unwrap();
    }
    let want: BTreeSet<String> = ["ls/a", "ls/b/c", "ls/b/d/e"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let listed = list_paths(c, "ls/", &want);
    let got: BTreeSet<String> = listed.iter().map(|l| l.path.clone()).collect();
    assert_eq!(
        got, want,
        "objects only, recursively, nothing outside the directory"
    );
    let now = chrono::Utc::now();
    for l in &listed {
        let len = objects.iter().find(|(p, _)| *p == l.path).unwrap().1;
        assert_eq!(l.size, len as u64, "{}", l.path);
        let t = l.modified.expect("listed with its modification time");
        assert!((now - t).num_minutes().abs() < 10, "{}: {t}", l.path);
    }
}

pub fn list_empty_or_missing_dir(c: &Ctx) {
    assert!(c.storage.list("nothing/").unwrap().is_empty());
    c.storage.write("gone/x", b"x".to_vec()).unwrap();
    c.storage.delete("gone/x").unwrap();
    assert!(c.storage.list("gone/").unwrap().is_empty());
}

pub fn delete(c: &Ctx) {
    c.storage.write("del/a", b"a".to_vec()).unwrap();
    c.storage.write("del/b", b"b".to_vec()).unwrap();
    c.storage.delete("del/a").unwrap();
    assert!(!c.storage.exists("del/a").unwrap());
    assert!(c.storage.read("del/a").unwrap_err().is_not_found());
    let left: Vec<String> = c
        .storage
        .list("del/")
        .unwrap()
        .into_iter()
        .map(|l| l.path)
        .collect();
    assert!(!left.contains(&"del/a".to_string()), "{left:?}");
    read_eq(c, "del/b", b"b");
}

pub fn delete_missing(c: &Ctx) {
    c.storage.delete("never/was").unwrap();
    c.storage.write("twice/x", b"x".to_vec()).unwrap();
    c.storage.delete("twice/x").unwrap();
    c.storage.delete("twice/x").unwrap();
}

pub fn overwrite(c: &Ctx) {
    let (v1, v2) = (noise(1, 50_000), noise(2, 300));
    c.storage.write("ow/obj", v1).unwrap();
    c.storage.write("ow/obj", v2.clone()).unwrap();
    assert_eq!(c.storage.size("ow/obj").unwrap(), 300);
    read_eq(c, "ow/obj", &v2);
}

pub fn read_missing_is_not_found(c: &Ctx) {
    let e = c.storage.read("missing/obj").unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(
        !e.is_temporary(),
        "retrying a missing object cannot help: {e}"
    );
    assert_eq!(e.kind(), backstop::ErrorKind::Corrupt);
    assert!(
        e.to_string().contains("missing/obj"),
        "names the object: {e}"
    );
    assert!(
        c.storage
            .read_range("missing/obj", 0..10)
            .unwrap_err()
            .is_not_found()
    );
    let e = c
        .storage
        .read_range_into("missing/obj", 0..10, &mut Vec::new())
        .unwrap_err();
    assert!(e.is_not_found() && !e.is_temporary(), "{e}");
    assert!(
        e.to_string().contains("missing/obj"),
        "names the object: {e}"
    );
    assert!(c.storage.stat("missing/obj").unwrap_err().is_not_found());
    assert!(!c.storage.exists("missing/obj").unwrap());
}

pub fn write_verified_detects_a_bad_write(c: &Ctx) {
    let storage = |bad| {
        Storage::from_backend(
            Arc::new(Flipped {
                inner: c.service.clone(),
                writes: true,
                only: None,
                at: 0,
                times: AtomicUsize::new(bad),
            }),
            c.rt.handle().clone(),
            StorageOptions {
                faults: c.faults.clone(),
                ..StorageOptions::default()
            },
        )
    };
    let data = noise(11, 40_000);
    let id = Id::hash(&data);
    // One bad write: detected by the read-back and written again.
    let once = storage(1);
    once.write_verified(&format!("wv/{id}"), data.clone().into(), &id)
        .unwrap();
    assert_eq!(once.read_verified(&format!("wv/{id}"), &id).unwrap(), data);
    // Always bad: an error saying so, never success.
    let always = storage(usize::MAX);
    let e = always
        .write_verified(&format!("wv2/{id}"), data.into(), &id)
        .unwrap_err();
    assert!(
        e.to_string().contains("does not match what was written"),
        "{}",
        backstop::error::chain(&e)
    );
}

pub fn large_object(c: &Ctx) {
    let data = noise(21, 24 << 20);
    let id = Id::hash(&data);
    let path = format!("big/{id}");
    c.storage
        .write_verified(&path, data.clone().into(), &id)
        .unwrap();
    assert_eq!(c.storage.size(&path).unwrap(), data.len() as u64);
    assert_eq!(c.storage.read_verified(&path, &id).unwrap(), data);
    if !corrupts(c) {
        assert_eq!(c.storage.hash(&path, data.len() as u64).unwrap(), id);
    }
    let r = (4 << 20) - 100..(4 << 20) + 100;
    range_eq(
        c,
        &path,
        r.clone(),
        &data[r.start as usize..r.end as usize],
        &mut Vec::new(),
    );
}

pub fn odd_names(c: &Ctx) {
    let names = [
        "odd/with space",
        "odd/ünïcødé-名前",
        "odd/semi;colon,comma",
        "odd/quote'double\"",
        "odd/percent%20plus+",
        "odd/hash#question?",
        "odd/.hidden",
        "odd/tilde~dash-under_",
        "odd/sub dir/x",
    ];
    for (i, n) in names.iter().enumerate() {
        c.storage.write(n, noise(i as u64, 100 + i)).unwrap();
    }
    for (i, n) in names.iter().enumerate() {
        read_eq(c, n, &noise(i as u64, 100 + i));
    }
    let want: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
    let got: BTreeSet<String> = list_paths(c, "odd/", &want)
        .into_iter()
        .map(|l| l.path)
        .collect();
    assert_eq!(got, want);
    for n in names {
        c.storage.delete(n).unwrap();
        assert!(!c.storage.exists(n).unwrap(), "{n}");
    }
}

pub fn concurrent_writes(c: &Ctx) {
    let objects: Vec<(String, Id, Vec<u8>)> = (0..64u64)
        .map(|i| {
            let d = noise(100 + i, 5_000 + i as usize * 37);
            let id = Id::hash(&d);
            (format!("conc/{id}"), id, d)
        })
        .collect();
    let results = c.rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (p, _, d) in &objects {
            let (s, p, d) = (c.storage.clone(), p.clone(), Bytes::from(d.clone()));
            set.spawn(async move { s.write_async(&p, d).await });
        }
        // The same object from several tasks at once (content-addressed writers race).
        let same = Bytes::from(objects[0].2.clone());
        for _ in 0..8 {
            let (s, p, d) = (c.storage.clone(), objects[0].0.clone(), same.clone());
            set.spawn(async move { s.write_async(&p, d).await });
        }
        set.join_all().await
    });
    for r in results {
        r.unwrap();
    }
    let named: Vec<(String, Id)> = objects.iter().map(|(p, id, _)| (p.clone(), *id)).collect();
    for ((p, _, d), r) in objects.iter().zip(c.storage.read_many_verified(&named)) {
        assert_eq!(&r.unwrap_or_else(|e| panic!("{p}: {e}")), d, "{p}");
    }
}

pub fn read_many_keeps_order_and_errors(c: &Ctx) {
    let mut named = Vec::new();
    let mut want = Vec::new();
    for i in 0..50u64 {
        let d = noise(200 + i, 1000 + i as usize);
        let id = Id::hash(&d);
        let p = format!("many/{id}");
        c.storage.write(&p, d.clone()).unwrap();
        named.push((p, id));
        want.push(Some(d));
    }
    let missing = Id::hash(b"never written");
    named.insert(10, (format!("many/{missing}"), missing));
    want.insert(10, None);
    let got = c.storage.read_many_verified(&named);
    assert_eq!(got.len(), named.len());
    for ((r, w), (p, _)) in got.into_iter().zip(want).zip(&named) {
        match w {
            Some(w) => assert_eq!(r.unwrap_or_else(|e| panic!("{p}: {e}")), w, "{p}"),
            None => assert!(r.unwrap_err().is_not_found(), "{p}"),
        }
    }
    if !corrupts(c) {
        let paths: Vec<String> = named.iter().map(|(p, _)| p.clone()).collect();
        let plain = c.storage.read_many(&paths);
        assert!(plain[10].as_ref().unwrap_err().is_not_found());
        let errors: Vec<String> = plain
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 10)
            .filter_map(|(_, r)| r.as_ref().err().map(|e| backstop::error::chain(e)))
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
}
