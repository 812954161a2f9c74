//! Test harness: a scratch directory with a repository, a catalog and the `backstop` binary.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use assert_cmd::Command;

pub const PASSWORD: &str = "correct horse battery staple";

/// A scratch environment; everything lives under one temporary directory.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("backstop-it-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// `backstop` with the environment's data directory, and its password unless the
    /// environment's repository is unencrypted.
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("backstop").expect("binary");
        c.env("BACKSTOP_PASSWORD", PASSWORD)
            .env("BACKSTOP_DATA_DIR", self.path("data"))
            .env_remove("BACKSTOP_REPO")
            .env_remove("BACKSTOP_CATALOG")
            .env_remove("BACKSTOP_CRASH_AT");
        if self.repo_is_unencrypted() {
            // backstop refuses a password for an unencrypted repository (a downgrade guard).
            c.env_remove("BACKSTOP_PASSWORD");
        }
        c
    }

    /// `backstop ARGS` on the environment's repository (through `BACKSTOP_REPO`).
    pub fn run(&self, args: &[&str]) -> Command {
        let mut c = self.cmd();
        c.args(args).env("BACKSTOP_REPO", self.repo());
        c
    }

    /// Whether the repository's config says it is unencrypted (it takes no password then).
    pub fn repo_is_unencrypted(&self) -> bool {
        std::fs::read(self.repo().join("config"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["encrypted"] == false)
    }

    /// Starts `backstop ARGS` on the environment's repository in the background (stdout
    /// discarded, stderr piped), for tests that signal or race it.
    pub fn spawn(&self, args: &[&str], envs: &[(&str, &str)]) -> std::process::Child {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("backstop"));
        c.args(args)
            .env("BACKSTOP_REPO", self.repo())
            .env("BACKSTOP_PASSWORD", PASSWORD)
            .env("BACKSTOP_DATA_DIR", self.path("data"))
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if self.repo_is_unencrypted() {
            c.env_remove("BACKSTOP_PASSWORD");
        }
        c.spawn().expect("spawn backstop")
    }

    /// Restores `snapshot` into the scratch directory `dir`, which it returns; must succeed.
    pub fn restore(&self, snapshot: &str, dir: &str) -> PathBuf {
        let out = self.path(dir);
        self.run(&["restore", snapshot, "--target"])
            .arg(&out)
            .assert()
            .success();
        out
    }

    pub fn init(&self) {
        self.run(&["init"]).assert().success();
    }

    /// Backs up `src` and returns the new snapshot id.
    pub fn backup(&self, src: &Path, extra: &[&str]) -> String {
        let out = self
            .run(&["backup", "--json"])
            .args(extra)
            .arg(src)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "backup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v[0]["id"].as_str().expect("id").to_string()
    }

    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["snapshots", "--json"]).output().expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// The repository's pack files, sorted.
    pub fn packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(self.repo().join("data")).expect("data dir") {
            for f in std::fs::read_dir(d.expect("entry").path()).expect("pack dir") {
                out.push(f.expect("entry").path());
            }
        }
        out.sort();
        out
    }
}

/// Writes a file, creating parents.
pub fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, data).expect("write");
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// One entry of a tree listing, with everything a restore must reproduce.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub rdev: u64,
    pub link: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Index of the first entry of its hardlink group, if any.
    pub hardlink_of: Option<Vec<u8>>,
}

/// Lists a tree's metadata (content is compared separately with `cmp`).
pub fn listing(root: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut inodes: std::collections::HashMap<(u64, u64), Vec<u8>> = Default::default();
    walk(root, root, &mut out, &mut inodes);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<Entry>,
    inodes: &mut std::collections::HashMap<(u64, u64), Vec<u8>>,
) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let p = dir.join(&name);
        let m = std::fs::symlink_metadata(&p).expect("lstat");
        let rel = p
            .strip_prefix(root)
            .expect("prefix")
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = m.file_type();
        let kind = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else {
            "socket"
        };
        let hardlink_of = if ft.is_file() && m.nlink() > 1 {
            let first = inodes
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| rel.clone())
                .clone();
            Some(first)
        } else {
            None
        };
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&p)
            .expect("listxattr")
            .map(|n| {
                let v = xattr::get(&p, &n).expect("getxattr").unwrap_or_default();
                (n.as_bytes().to_vec(), v)
            })
            .collect();
        xattrs.sort();
        out.push(Entry {
            path: rel,
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            size: if ft.is_dir() { 0 } else { m.size() },
            rdev: m.rdev(),
            link: ft.is_symlink().then(|| {
                std::fs::read_link(&p)
                    .expect("readlink")
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            }),
            xattrs,
            hardlink_of,
        });
        if ft.is_dir() {
            walk(root, &p, out, inodes);
        }
    }
}

/// Asserts two trees are identical in metadata and file content.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (la, lb) = (listing(a), listing(b));
    assert_eq!(la.len(), lb.len(), "entry counts differ");
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x, y, "entry {:?} differs", OsStr::from_bytes(&x.path));
        if x.kind == "file" {
            let p = OsStr::from_bytes(&x.path);
            let st = std::process::Command::new("cmp")
                .arg(a.join(p))
                .arg(b.join(p))
                .status()
                .expect("cmp");
            assert!(st.success(), "content of {p:?} differs");
        }
    }
}

/// Whether the process runs as root (ownership and device nodes need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `backstop policy check FILE` in `env`.
pub fn policy_check(env: &Env, file: impl AsRef<Path>) -> std::process::Output {
    env.cmd()
        .args(["policy", "check"])
        .arg(file.as_ref())
        .output()
        .expect("run backstop")
}

/// A service that flips one bit, at byte `at`, in the first `times` transfers in one
/// direction (`writes`, or reads) of objects named `only` (or of every object): a corrupted
/// transfer, on the way in or out.
pub struct Flipped {
    pub inner: std::sync::Arc<dyn backstop::storage::Backend>,
    pub writes: bool,
    pub only: Option<&'static str>,
    pub at: usize,
    pub times: std::sync::atomic::AtomicUsize,
}

impl Flipped {
    fn pass(&self, path: &str, bytes: bytes::Bytes) -> bytes::Bytes {
        use std::sync::atomic::Ordering::SeqCst;
        let flip = self.only.is_none_or(|o| o == path)
            && self
                .times
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if !flip || bytes.len() <= self.at {
            return bytes;
        }
        let mut v = bytes.to_vec();
        v[self.at] ^= 1;
        v.into()
    }
}

impl backstop::storage::Backend for Flipped {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn read_range<'a>(
        &'a self,
        path: &'a str,
        range: std::ops::Range<u64>,
    ) -> backstop::storage::BoxFuture<'a, backstop::Result<bytes::Bytes>> {
        Box::pin(async move {
            let data = self.inner.read_range(path, range).await?;
            Ok(if self.writes {
                data
            } else {
                self.pass(path, data)
            })
        })
    }
    fn write<'a>(
        &'a self,
        path: &'a str,
        bytes: bytes::Bytes,
    ) -> backstop::storage::BoxFuture<'a, backstop::Result<()>> {
        let bytes = if self.writes {
            self.pass(path, bytes)
        } else {
            bytes
        };
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
