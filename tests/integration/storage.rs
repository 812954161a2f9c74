//! Storage conformance suite (OpenDAL's behaviour tests are the model): the same cases run
//! against every backend in [`BACKENDS`], plainly and under each fault kind, through the
//! full wrapper stack (`Storage::from_backend`). Adding a backend (SFTP, S3) is one line in
//! [`BACKENDS`]: a name and a function that returns a fresh, empty service.

mod cases;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::storage::faults::Faults;
use backstop::storage::operator::OpendalBackend;
use backstop::storage::{Backend, Storage, StorageOptions};

use super::common::*;

/// A backend kind: its name and how to make a fresh, empty one inside `env`.
pub struct Target {
    pub name: &'static str,
    pub make: fn(&Env, &StorageOptions) -> Arc<dyn Backend>,
}

/// Every backend the suite runs against.
pub const BACKENDS: &[Target] = &[Target {
    name: "fs",
    make: |env, opts| {
        let dir = env.path("fs-backend");
        Arc::new(OpendalBackend::fs(dir.to_str().unwrap(), opts).unwrap())
    },
}];

/// The fault variants every case runs under (`None`: no faults). Probabilities are low
/// enough that the retry policy (6 attempts) gets every operation through (decisions are
/// deterministic per seed and object name, so a passing variant always passes).
pub const VARIANTS: &[Option<&str>] = &[
    None,
    Some("write-error=0.2"),
    Some("write-timeout=0.2"),
    Some("read-error=0.2"),
    Some("read-truncate=0.2"),
    Some("read-bitflip=0.2"),
    Some("list-lag=0.2"),
    Some("delay=5ms"),
];

/// What a case gets: the storage under test (all wrappers), the bare service beneath it (to
/// look behind the wrappers), the runtime, and the faults if any.
pub struct Ctx {
    pub storage: Storage,
    pub service: Arc<dyn Backend>,
    pub rt: Arc<tokio::runtime::Runtime>,
    pub faults: Option<Arc<Faults>>,
    pub variant: Option<String>,
    pub _env: Env,
}

impl Ctx {
    /// Whether listings may omit objects (then the case lists until they show up).
    pub fn lags(&self) -> bool {
        self.variant
            .as_deref()
            .is_some_and(|v| v.contains("list-lag"))
    }
}

fn runtime() -> Arc<tokio::runtime::Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    )
}

/// A fresh context for `target` under `variant`.
pub fn ctx(target: &Target, variant: Option<&str>) -> Ctx {
    let env = Env::new();
    let faults = variant.map(|v| Arc::new(Faults::parse(v).unwrap()));
    let opts = StorageOptions {
        faults: faults.clone(),
        ..StorageOptions::default()
    };
    let service = (target.make)(&env, &opts);
    let rt = runtime();
    let storage = Storage::from_backend(service.clone(), rt.handle().clone(), opts);
    Ctx {
        storage,
        service,
        rt,
        faults,
        variant: variant.map(str::to_string),
        _env: env,
    }
}

/// Runs `case` against every backend under every variant. Under a fault kind the case
/// `strikes` (does the operations it hits), faults must have fired: which operations a seed
/// strikes depends on the objects' names, so up to eight seeds are tried, and every run must
/// pass.
fn conformance(name: &str, strikes: &[&str], case: fn(&Ctx)) {
    for target in BACKENDS {
        for variant in VARIANTS {
            let kind = variant.map(|v| v.split('=').next().unwrap());
            let seeds = match kind {
                Some(k) if k != "delay" => 1..=8,
                _ => 1..=1,
            };
            let mut fired = false;
            for seed in seeds {
                let spec = match (variant, kind) {
                    (Some(v), Some(k)) if k != "delay" => Some(format!("{v},seed={seed}")),
                    (v, _) => v.map(str::to_string),
                };
                eprintln!(
                    "case {name} on {} under {}",
                    target.name,
                    spec.as_deref().unwrap_or("no faults")
                );
                let c = ctx(target, spec.as_deref());
                case(&c);
                fired = c.faults.as_ref().is_some_and(|f| f.injected() > 0);
                if fired {
                    break;
                }
            }
            if let Some(k) = kind
                && strikes.contains(&k)
            {
                assert!(
                    fired,
                    "{name} on {} under {k}: no fault fired with 8 seeds",
                    target.name
                );
            }
        }
    }
}

const READS: &[&str] = &["read-error", "read-truncate", "read-bitflip"];
const ALL: &[&str] = &[
    "write-error",
    "write-timeout",
    "read-error",
    "read-truncate",
    "read-bitflip",
];

#[test]
fn conformance_write_then_read() {
    conformance("write_then_read", ALL, cases::write_then_read);
}

#[test]
fn conformance_read_range() {
    conformance("read_range", READS, cases::read_range);
}

#[test]
fn conformance_stat() {
    conformance("stat", &[], cases::stat);
}

#[test]
fn conformance_list() {
    conformance("list", &["list-lag"], cases::list);
}

#[test]
fn conformance_list_empty_or_missing_dir() {
    conformance(
        "list_empty_or_missing_dir",
        &[],
        cases::list_empty_or_missing_dir,
    );
}

#[test]
fn conformance_delete() {
    conformance("delete", &["write-error"], cases::delete);
}

#[test]
fn conformance_delete_missing() {
    conformance("delete_missing", &[], cases::delete_missing);
}

#[test]
fn conformance_overwrite() {
    conformance(
        "overwrite",
        &["write-error", "write-timeout"],
        cases::overwrite,
    );
}

#[test]
fn conformance_read_missing_is_not_found() {
    conformance(
        "read_missing_is_not_found",
        &[],
        cases::read_missing_is_not_found,
    );
}

#[test]
fn conformance_write_verified_detects_a_bad_write() {
    conformance(
        "write_verified_detects_a_bad_write",
        &[],
        cases::write_verified_detects_a_bad_write,
    );
}

#[test]
fn conformance_large_object() {
    conformance("large_object", ALL, cases::large_object);
}

#[test]
fn conformance_odd_names() {
    conformance("odd_names", ALL, cases::odd_names);
}

#[test]
fn conformance_concurrent_writes() {
    conformance("concurrent_writes", ALL, cases::concurrent_writes);
}

#[test]
fn conformance_read_many_keeps_order_and_errors() {
    conformance(
        "read_many_keeps_order_and_errors",
        READS,
        cases::read_many_keeps_order_and_errors,
    );
}

#[test]
fn dry_run_writes_and_deletes_nothing() {
    for target in BACKENDS {
        let c = ctx(target, None);
        let dry = Storage::from_backend(
            c.service.clone(),
            c.rt.handle().clone(),
            StorageOptions {
                dry_run: true,
                ..StorageOptions::default()
            },
        );
        c.storage.write("keep/a", b"kept".to_vec()).unwrap();
        dry.write("new/b", b"not written".to_vec()).unwrap();
        dry.delete("keep/a").unwrap();
        assert!(!c.storage.exists("new/b").unwrap(), "{}", target.name);
        assert_eq!(
            c.storage.read("keep/a").unwrap(),
            b"kept",
            "{}",
            target.name
        );
        // Reads go through.
        assert_eq!(dry.read("keep/a").unwrap(), b"kept");
    }
}

#[test]
fn metadata_cache_serves_verified_immutable_objects_only() {
    for target in BACKENDS {
        let c = ctx(target, None);
        let data = b"an index file".to_vec();
        let id = backstop::Id::hash(&data);
        let index = format!("index/{id}");
        c.storage.write(&index, data.clone()).unwrap();
        assert_eq!(c.storage.read(&index).unwrap(), data);
        // Gone behind the cache's back: still served, from memory.
        c.rt.block_on(c.service.delete(&index)).unwrap();
        assert_eq!(c.storage.read(&index).unwrap(), data, "{}", target.name);
        // An object that does not match its name is never kept.
        let bad = format!("snapshots/{}", backstop::Id::hash(b"other"));
        c.storage.write(&bad, data.clone()).unwrap();
        assert_eq!(c.storage.read(&bad).unwrap(), data);
        c.rt.block_on(c.service.delete(&bad)).unwrap();
        assert!(c.storage.read(&bad).unwrap_err().is_not_found());
        // Mutable objects are never cached.
        c.storage.write("locks/x", b"1".to_vec()).unwrap();
        c.storage.read("locks/x").unwrap();
        c.storage.write("locks/x", b"2".to_vec()).unwrap();
        assert_eq!(c.storage.read("locks/x").unwrap(), b"2");
        // A delete through the storage drops the entry.
        c.storage.write(&index, data.clone()).unwrap();
        c.storage.read(&index).unwrap();
        c.storage.delete(&index).unwrap();
        assert!(c.storage.read(&index).unwrap_err().is_not_found());
    }
}

/// Permanent errors are not retried: a read-only store fails at once, not after the whole
/// backoff; a temporary one is retried.
#[test]
fn permanent_errors_fail_at_once_and_temporary_ones_are_retried() {
    let c = ctx(&BACKENDS[0], Some("write-error=1,seed=1"));
    let start = Instant::now();
    let e = c.storage.write("x/y", b"z".to_vec()).unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert_eq!(
        c.faults.as_ref().unwrap().injected(),
        6,
        "six attempts in all"
    );
    assert!(start.elapsed() >= Duration::from_millis(150), "backoff");
    let missing = ctx(&BACKENDS[0], None);
    let start = Instant::now();
    let e = missing.storage.read("nothing/here").unwrap_err();
    assert!(!e.is_temporary() && e.is_not_found(), "{e}");
    assert!(start.elapsed() < Duration::from_millis(100), "not retried");
}

/// On an object store at 50 ms per request, listing 1,000 snapshots reads their manifests
/// in parallel: far below the 100 s one request at a time would take (and below 100
/// requests' worth).
#[test]
fn a_thousand_snapshots_list_in_parallel_at_50ms_per_request() {
    let env = Env::new();
    // Unencrypted: the key derivation is not what this measures.
    let out = env
        .cmd()
        .args(["init", "--no-encryption"])
        .env("BACKSTOP_REPO", env.repo())
        .env_remove("BACKSTOP_PASSWORD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src = env.path("src");
    write(&src.join("a"), b"a");
    let first = env.backup(&src, &[]);
    // 999 more manifests: the first one with other times (each a new content-addressed object).
    let rt = runtime();
    let storage = Storage::open(env.repo().to_str().unwrap(), rt.handle().clone()).unwrap();
    let repo =
        backstop::Repo::open(storage, || Err(backstop::Error::config("no password"))).unwrap();
    let (_, snap) = repo.find_snapshot(&first).unwrap();
    for i in 1..1000 {
        let mut s = snap.clone();
        s.time += chrono::Duration::seconds(i);
        repo.write_object("snapshots", s.encode()).unwrap();
    }
    let start = Instant::now();
    let out = env
        .run(&["snapshots", "--json", "--no-lock"])
        .env("BACKSTOP_FAULTS", "delay=50ms")
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1000);
    // 1,000 manifests × (stat + read) × 50 ms = 100 s one at a time.
    assert!(
        took < Duration::from_millis(100 * 50),
        "listing 1,000 snapshots at 50 ms per request took {took:?}"
    );
    eprintln!("1,000 snapshots at 50 ms per request: {took:?}");
}

/// A service that counts the reads in flight at once.
struct Counting {
    inner: Arc<dyn Backend>,
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
}

impl Backend for Counting {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn read_range<'a>(
        &'a self,
        path: &'a str,
        range: std::ops::Range<u64>,
    ) -> backstop::storage::BoxFuture<'a, backstop::Result<bytes::Bytes>> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            let n = self.now.fetch_add(1, SeqCst) + 1;
            self.max.fetch_max(n, SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            let r = self.inner.read_range(path, range).await;
            self.now.fetch_sub(1, SeqCst);
            r
        })
    }
    fn write<'a>(
        &'a self,
        path: &'a str,
        bytes: bytes::Bytes,
    ) -> backstop::storage::BoxFuture<'a, backstop::Result<()>> {
        self.inner.write(path, bytes)
    }
    fn list<'a>(
        &'a self,
        dir: &'a str,
    ) -> backstop::storage::BoxFuture<'a, backstop::Result<Vec<backstop::storage::Listed>>> {
        self.inner.list(dir)
    }
    fn stat<'a>(
        &'a self,
        path: &'a str,
    ) -> backstop::storage::BoxFuture<'a, backstop::Result<backstop::storage::Meta>> {
        self.inner.stat(path)
    }
    fn delete<'a>(
        &'a self,
        path: &'a str,
    ) -> backstop::storage::BoxFuture<'a, backstop::Result<()>> {
        self.inner.delete(path)
    }
}

/// `read_many` goes parallel, but never past the backend's concurrency limit.
#[test]
fn read_many_stays_within_the_concurrency_limit() {
    for target in BACKENDS {
        let c = ctx(target, None);
        let counting = Arc::new(Counting {
            inner: c.service.clone(),
            now: Default::default(),
            max: Default::default(),
        });
        let storage = Storage::from_backend(
            counting.clone(),
            c.rt.handle().clone(),
            StorageOptions {
                concurrency: 8,
                ..StorageOptions::default()
            },
        );
        let paths: Vec<String> = (0..100).map(|i| format!("par/{i}")).collect();
        for p in &paths {
            storage.write(p, p.as_bytes().to_vec()).unwrap();
        }
        for (p, r) in paths.iter().zip(storage.read_many(&paths)) {
            assert_eq!(r.unwrap(), p.as_bytes());
        }
        let max = counting.max.load(std::sync::atomic::Ordering::SeqCst);
        assert!(max > 1 && max <= 8, "{}: {max} reads at once", target.name);
    }
}
