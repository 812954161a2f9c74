//! Restore of a physical PostgreSQL base backup into a data directory, set up to recover.
//!
//! `base.tar` is read in order through [`Repo::content_reader`] (every chunk checked) and
//! unpacked into the directory, which must be new or empty. Only directories and regular
//! files are accepted, each name made of normal components (no `..`, no absolute path),
//! every file created with `O_EXCL | O_NOFOLLOW` below directories this restore made: so
//! nothing is written outside the directory whatever the repository holds. A tablespace
//! (a symlink under `pg_tblspc/`) is refused with a clear error.
//!
//! Then the recovery settings: `recovery.signal`, and in `postgresql.auto.conf` (which
//! wins over `postgresql.conf`) `restore_command` running `backstop wal-fetch`, the
//! target (`recovery_target_time` with `recovery_target_action = 'promote'`, or none for
//! the end of the archived WAL), and `archive_mode = 'off'`: a restored copy must not
//! archive a new timeline into the repository of the cluster it was copied from unless
//! the operator decides so (pgBackRest's `--archive-mode=off`). A failed restore removes
//! what it unpacked, so nothing half-restored is left looking like a data directory.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::cancel::Cancel;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::{Id, Repo, Snapshot};
use crate::source::postgres::BASE_TAR;

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay every archived WAL file, then promote.
    Latest,
    /// Stop at this time (as PostgreSQL parses it, e.g. `2026-11-23 08:00:00+00`), then
    /// promote.
    Time(String),
}

/// How to prepare the data directory.
#[derive(Clone, Debug)]
pub struct DatadirOptions {
    /// The data directory (created if missing; must be empty).
    pub dir: PathBuf,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// The `restore_command` to write (`%f` and `%p` as PostgreSQL expands them).
    pub restore_command: String,
    /// Stops the restore once cancelled (what was unpacked is removed).
    pub cancel: Cancel,
}

/// What a data directory restore did.
#[derive(Clone, Debug, Serialize)]
pub struct DatadirOutcome {
    /// The data directory.
    pub dir: PathBuf,
    /// Files unpacked.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Seconds it took.
    pub seconds: f64,
}

fn io(e: std::io::Error, what: String) -> Error {
    Error::new(ErrorKind::Io, what).with_source(e)
}

/// Unpacks the base backup of `snap` into `opts.dir` and writes the recovery settings.
pub fn to_datadir(
    repo: &Repo,
    id: Id,
    snap: &Snapshot,
    opts: &DatadirOptions,
) -> Result<DatadirOutcome> {
    let started = std::time::Instant::now();
    let dir = &opts.dir;
    if super::target_is_nonempty(dir) {
        return Err(Error::config(format!(
            "{} is not empty: --to-datadir needs a new or empty directory",
            dir.display()
        )));
    }
    if snap.source != "postgres" || !snap.paths.iter().any(|p| p == BASE_TAR) {
        return Err(Error::config(format!(
            "snapshot {} is not a physical PostgreSQL backup (made by `backup --postgres URL \
             --physical`)",
            id.short()
        )));
    }
    let index = Arc::new(repo.load_index()?);
    let tree = repo.load_tree(&index, &snap.tree)?;
    let node = tree
        .nodes
        .iter()
        .find(|n| n.name.as_slice() == BASE_TAR.as_bytes())
        .ok_or_else(|| Error::corrupt(format!("snapshot {} holds no {BASE_TAR}", id.short())))?;
    let pieces = repo.expand_content(&index, &node.content)?;
    let created = !dir.exists();
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io(e, format!("creating {}", dir.display())))?;
    let reader = repo.content_reader(index, pieces, 4, &opts.cancel);
    let res = File::open(dir)
        .map_err(|e| io(e, format!("opening {}", dir.display())))
        .and_then(|root| {
            let counts = unpack(reader, dir, &opts.cancel)?;
            write_recovery(dir, opts)?;
            make_durable(&root, dir)?;
            Ok(counts)
        });
    match res {
        Ok((files, bytes)) => Ok(DatadirOutcome {
            dir: dir.clone(),
            files,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) => {
            // Nothing half-restored is left looking like a data directory.
            clear(dir, created);
            Err(e.context(format!("restoring {} into {}", id.short(), dir.display())))
        }
    }
}

fn clear(dir: &Path, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(dir);
    } else if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// The relative path of a tar entry, if every component is a normal name.
fn safe_path(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// An error reading `base.tar`: the content reader's own (corruption, interruption) come
/// through `std::io::Error`.
fn bad_tar(e: std::io::Error) -> Error {
    match e.into_inner() {
        Some(inner) => match inner.downcast::<Error>() {
            Ok(e) => *e,
            Err(other) => Error::corrupt(format!("{BASE_TAR} is not a valid tar: {other}")),
        },
        None => Error::corrupt(format!("{BASE_TAR} is not a valid tar")),
    }
}

/// Makes everything written below `root` (opened before the first write) durable: files,
/// their sizes and the directories' entries.
///
/// One `syncfs` instead of an `fsync` per file and directory: on a disk with a volatile
/// write cache each `fsync` of a new file is a journal commit and a cache flush, and a
/// cluster has a thousand small files (measured in DECISIONS). `syncfs` reports a
/// write-back error of any file of the file system since `root` was opened (Linux 5.8, the
/// guarantee PostgreSQL's `recovery_init_sync_method = syncfs` rests on); it also writes
/// back other programs' dirty data of that file system, which only costs time.
fn make_durable(root: &File, dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs takes an open descriptor and touches no memory.
    match unsafe { libc::syncfs(root.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(io(
            std::io::Error::last_os_error(),
            format!("making {} durable", dir.display()),
        )),
    }
}

fn unpack(reader: impl std::io::Read, dir: &Path, cancel: &Cancel) -> Result<(u64, u64)> {
    let mut ar = tar::Archive::new(reader);
    let mut buf = vec![0u8; 1 << 20];
    let (mut files, mut bytes) = (0u64, 0u64);
    for entry in ar.entries().map_err(bad_tar)? {
        cancel.check()?;
        let mut entry = entry.map_err(bad_tar)?;
        let raw = entry.path().map_err(bad_tar)?.into_owned();
        let shown = raw.display().to_string();
        let rel = safe_path(&raw).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsafe,
                format!("{BASE_TAR} holds an unsafe path '{shown}'; refusing to unpack it"),
            )
        })?;
        let target = dir.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o600) & 0o700;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&target)
                    .map_err(|e| io(e, format!("creating {}", target.display())))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|e| io(e, format!("creating {}", parent.display())))?;
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(mode | 0o600)
                    .open(&target)
                    .map_err(|e| io(e, format!("creating {}", target.display())))?;
                let (mut n, mut flushed) = (0u64, 0u64);
                loop {
                    let got = std::io::Read::read(&mut entry, &mut buf).map_err(bad_tar)?;
                    if got == 0 {
                        break;
                    }
                    f.write_all(&buf[..got])
                        .map_err(|e| io(e, format!("writing {}", target.display())))?;
                    n += got as u64;
                    if n - flushed >= FLUSH_AFTER {
                        start_writeback(&f, flushed, n - flushed);
                        flushed = n;
                    }
                }
                files += 1;
                bytes += n;
            }
            tar::EntryType::Symlink if rel.starts_with("pg_tblspc") => {
                return Err(Error::config(format!(
                    "the base backup has a tablespace ({shown}); --to-datadir restores \
                     clusters without tablespaces only"
                )));
            }
            t => {
                return Err(Error::new(
                    ErrorKind::Unsafe,
                    format!(
                        "{BASE_TAR} holds '{shown}' of type {t:?}; only directories and files are restored"
                    ),
                ));
            }
        }
    }
    Ok((files, bytes))
}

/// Bytes of a file written before their write-back to disk is started.
const FLUSH_AFTER: u64 = 8 << 20;

/// Starts writing `len` bytes of `f` from `offset` to disk without waiting (as PostgreSQL's
/// `checkpoint_flush_after` does), so that the disk works while the repository is read and
/// the final `syncfs` finds little left to write.
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its arguments; the descriptor is open. A failure
    // only means the final sync has more to do.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Quotes a value for postgresql.conf.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn write_recovery(dir: &Path, opts: &DatadirOptions) -> Result<()> {
    let mut conf = String::from(
        "\n# Written by `backstop restore --to-datadir`: recover from the archived WAL.\n",
    );
    conf.push_str(&format!(
        "restore_command = {}\n",
        quote(&opts.restore_command)
    ));
    // Settings the backed-up cluster may carry (it was itself a restored copy, or a
    // standby) are cancelled: only this restore's target counts, and the copy never
    // follows a primary or takes its replication slot.
    for unset in [
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_xid",
        "primary_conninfo",
        "primary_slot_name",
    ] {
        conf.push_str(&format!("{unset} = ''\n"));
    }
    match &opts.target {
        RecoveryTarget::Latest => {}
        RecoveryTarget::Time(t) => {
            conf.push_str(&format!("recovery_target_time = {}\n", quote(t)));
            conf.push_str("recovery_target_action = 'promote'\n");
        }
    }
    conf.push_str(
        "# A restored copy does not archive into the repository of the cluster it was\n\
         # copied from; set archive_mode and archive_command when it is to take over.\n\
         archive_mode = 'off'\n",
    );
    let auto = dir.join("postgresql.auto.conf");
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&auto)
        .map_err(|e| io(e, format!("writing {}", auto.display())))?;
    f.write_all(conf.as_bytes())
        .map_err(|e| io(e, format!("writing {}", auto.display())))?;
    match std::fs::remove_file(dir.join("standby.signal")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(e, "removing standby.signal".into()));
        }
        _ => {}
    }
    let signal = dir.join("recovery.signal");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&signal)
        .map(drop)
        .map_err(|e| io(e, format!("writing {}", signal.display())))
}
