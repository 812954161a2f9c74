//! Entries in the destination: made under a temporary name in their directory and renamed
//! into place, never written through an existing entry.
//!
//! An existing non-directory where an entry goes is *replaced* by the rename (or kept,
//! as `--overwrite` says): it is never opened, so a hard link or symlink from the target
//! to a file elsewhere leaves that file untouched. An existing directory where a
//! non-directory goes is refused. Temporary names are short (`.backstop-PID-N.tmp`,
//! whatever the final name's length), created with `O_EXCL | O_NOFOLLOW`, registered in
//! [`Temps`] and removed if the restore fails or is interrupted: a file has its final
//! name only once all of its content was written and verified.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::repo::{Node, NodeKind};

/// What to do with an existing entry where the snapshot has a non-directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overwrite {
    /// Keep every existing entry (the default: nothing in the target is ever destroyed).
    #[default]
    Never,
    /// Replace entries whose type, size or mtime (symlinks: target) differ.
    IfChanged,
    /// Replace every existing entry.
    Always,
}

/// What happens at one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is there: create.
    Create,
    /// Something is there: replace it.
    Replace,
    /// Something is there: keep it.
    Keep,
}

impl Decision {
    /// For `restore --dry-run -v`.
    pub fn verb(self) -> &'static str {
        match self {
            Decision::Create => "new",
            Decision::Replace => "replace",
            Decision::Keep => "keep existing",
        }
    }
}

/// A failure of one entry: its reason (the path is named by the caller).
pub type Failure = String;

fn why(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENAMETOOLONG) => "the name is too long for the target file system".into(),
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied".into(),
        Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => {
            "a directory is in the way".into()
        }
        _ => e.to_string(),
    }
}

/// Why a non-directory cannot be restored where a directory is.
const DIR_IN_THE_WAY: &str = "a directory is in the way (directories are never replaced)";

/// Decides what to do at `path`, where the non-directory `node` goes.
pub fn decide(path: &Path, node: &Node, mode: Overwrite) -> Result<Decision, Failure> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Decision::Create),
        Err(e) => return Err(format!("cannot look at the existing entry: {}", why(&e))),
    };
    if m.is_dir() {
        return Err(DIR_IN_THE_WAY.into());
    }
    Ok(match mode {
        Overwrite::Never => Decision::Keep,
        Overwrite::Always => Decision::Replace,
        Overwrite::IfChanged if unchanged(path, &m, node) => Decision::Keep,
        Overwrite::IfChanged => Decision::Replace,
    })
}

fn unchanged(path: &Path, m: &std::fs::Metadata, node: &Node) -> bool {
    let ft = m.file_type();
    match node.kind {
        NodeKind::File => {
            ft.is_file()
                && m.size() == node.size
                && m.mtime() == node.mtime.sec
                && m.mtime_nsec() == i64::from(node.mtime.nsec)
        }
        NodeKind::Symlink => {
            ft.is_symlink()
                && std::fs::read_link(path)
                    .ok()
                    .as_deref()
                    .map(|p| p.as_os_str().as_bytes())
                    == node.target.as_deref().map(|t| &t[..])
        }
        NodeKind::Fifo => ft.is_fifo(),
        NodeKind::CharDevice => ft.is_char_device() && m.rdev() == node.rdev,
        NodeKind::BlockDevice => ft.is_block_device() && m.rdev() == node.rdev,
        NodeKind::Socket => ft.is_socket(),
        NodeKind::Dir => false,
    }
}

/// The temporary files of one restore; removed when it ends without completing them, and
/// by the signal handler if the process is stopped at once. It carries the restore's
/// cancellation token: once cancelled, no more content is fetched and no file is completed.
pub struct Temps {
    live: Arc<Mutex<HashSet<PathBuf>>>,
    cancel: crate::cancel::Cancel,
    _on_signal: crate::interrupt::OnExit,
}

static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

impl Temps {
    /// A registry, known to the signal handler, for a restore cancelled with `cancel`.
    pub fn new(cancel: &crate::cancel::Cancel) -> Temps {
        let live: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let on_signal = {
            let live = live.clone();
            crate::interrupt::on_exit(move || {
                if let Ok(l) = live.lock() {
                    for p in l.iter() {
                        let _ = std::fs::remove_file(p);
                    }
                }
            })
        };
        Temps {
            live,
            cancel: cancel.clone(),
            _on_signal: on_signal,
        }
    }

    /// Whether the restore was cancelled: stop fetching, complete nothing more.
    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn path(dir: &Path) -> PathBuf {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let pid = PID.get_or_init(std::process::id);
        dir.join(format!(".backstop-{pid}-{n}.tmp"))
    }

    fn add(&self, p: &Path) {
        self.live.lock().expect("temps").insert(p.to_path_buf());
    }

    fn done(&self, p: &Path) {
        self.live.lock().expect("temps").remove(p);
    }

    /// Removes a temporary file that will not be completed.
    pub fn discard(&self, p: &Path) {
        let _ = std::fs::remove_file(p);
        self.done(p);
    }

    /// Creates a new empty file next to `path` (never an existing one), mode 0600.
    pub fn create_file(&self, path: &Path) -> Result<(PathBuf, File), Failure> {
        let dir = path.parent().unwrap_or(Path::new("."));
        loop {
            let tmp = Self::path(dir);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(f) => {
                    self.add(&tmp);
                    return Ok((tmp, f));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create the file: {}", why(&e))),
            }
        }
    }

    /// Makes `make(tmp)` next to `path`, then renames it into place.
    fn make_then_place(
        &self,
        path: &Path,
        node: &Node,
        warnings: &mut Vec<String>,
        make: impl Fn(&Path) -> std::io::Result<()>,
    ) -> Result<(), Failure> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = loop {
            let tmp = Self::path(dir);
            match make(&tmp) {
                Ok(()) => break tmp,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create it: {}", why(&e))),
            }
        };
        self.add(&tmp);
        apply_metadata(&tmp, node, path, warnings);
        self.place(&tmp, path)
    }

    /// Renames the finished `tmp` to `path`, replacing a non-directory there.
    /// `rename` never replaces a directory with a non-directory (`EISDIR`), so nothing is
    /// looked at first.
    pub fn place(&self, tmp: &Path, path: &Path) -> Result<(), Failure> {
        match std::fs::rename(tmp, path) {
            Ok(()) => {
                self.done(tmp);
                Ok(())
            }
            Err(e) => {
                self.discard(tmp);
                Err(match e.raw_os_error() {
                    Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => {
                        DIR_IN_THE_WAY.into()
                    }
                    _ => format!("cannot put it in place: {}", why(&e)),
                })
            }
        }
    }

    /// Links `path` to the restored file `first`, checking that `first` is still the
    /// inode this restore made (never a file that was there before).
    pub fn link(&self, first: &Path, ino: (u64, u64), path: &Path) -> Result<(), Failure> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = loop {
            let tmp = Self::path(dir);
            match std::fs::hard_link(first, &tmp) {
                Ok(()) => break tmp,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create the hard link: {}", why(&e))),
            }
        };
        self.add(&tmp);
        match std::fs::symlink_metadata(&tmp) {
            Ok(m) if (m.dev(), m.ino()) == ino => self.place(&tmp, path),
            _ => {
                self.discard(&tmp);
                Err(format!(
                    "its hard link target {} was replaced during the restore",
                    first.display()
                ))
            }
        }
    }

    /// Creates a symlink, fifo or device node at `path` (a temporary name, then renamed).
    pub fn make_special(
        &self,
        path: &Path,
        node: &Node,
        warnings: &mut Vec<String>,
    ) -> Result<bool, Failure> {
        use nix::sys::stat::{Mode, SFlag, mknod};
        let mode = Mode::from_bits_truncate(node.mode & 0o777);
        match node.kind {
            NodeKind::Symlink => {
                let target = OsStr::from_bytes(
                    node.target
                        .as_deref()
                        .ok_or("the symlink has no target in the snapshot")?,
                );
                self.make_then_place(path, node, warnings, |tmp| {
                    std::os::unix::fs::symlink(target, tmp)
                })?;
            }
            NodeKind::Fifo => self.make_then_place(path, node, warnings, |tmp| {
                mknod(tmp, SFlag::S_IFIFO, mode, 0).map_err(std::io::Error::from)
            })?,
            NodeKind::CharDevice | NodeKind::BlockDevice => {
                if !nix::unistd::geteuid().is_root() {
                    warnings.push(format!(
                        "{}: device nodes are only restored as root",
                        path.display()
                    ));
                    return Ok(false);
                }
                let kind = if node.kind == NodeKind::CharDevice {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                self.make_then_place(path, node, warnings, |tmp| {
                    mknod(tmp, kind, mode, node.rdev).map_err(std::io::Error::from)
                })?;
            }
            NodeKind::Socket => {
                warnings.push(format!("{}: sockets are not restored", path.display()));
                return Ok(false);
            }
            NodeKind::File | NodeKind::Dir => {
                return Err("internal error: not a special entry".into());
            }
        }
        Ok(true)
    }
}

impl Drop for Temps {
    fn drop(&mut self) {
        if let Ok(l) = self.live.lock() {
            for p in l.iter() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Makes the directory `path` (or accepts an existing one); returns whether it made it.
/// A symlink or other non-directory there is refused, or with `Always` replaced (removed,
/// never followed).
pub fn make_dir(path: &Path, mode: Overwrite) -> Result<bool, Failure> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(false),
        Ok(m) if mode != Overwrite::Always => {
            let what = if m.file_type().is_symlink() {
                "a symlink"
            } else {
                "a non-directory"
            };
            return Err(format!(
                "{what} is in the way (never followed; --overwrite always replaces it)"
            ));
        }
        Ok(_) => std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove what is in the way: {}", why(&e)))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot look at the existing entry: {}", why(&e))),
    }
    std::fs::create_dir(path).map_err(|e| format!("cannot create the directory: {}", why(&e)))?;
    Ok(true)
}

/// Ownership (as root), permissions, xattrs, then times — in that order, since chown
/// clears setuid bits and every other change touches the times. Warnings name `shown`.
pub fn apply_metadata(path: &Path, node: &Node, shown: &Path, warnings: &mut Vec<String>) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let is_link = node.kind == NodeKind::Symlink;
    if is_root()
        && let Err(e) = std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))
    {
        warnings.push(format!("{}: cannot set owner: {e}", shown.display()));
    }
    if !is_link {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) =
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode & 0o7777))
        {
            warnings.push(format!("{}: cannot set permissions: {e}", shown.display()));
        }
    }
    // xattr::set does not follow symlinks (lsetxattr).
    for x in &node.xattrs {
        let name = OsStr::from_bytes(&x.name);
        if let Err(e) = xattr::set(path, name, &x.value) {
            warnings.push(format!(
                "{}: cannot set extended attribute {}: {e}",
                shown.display(),
                name.to_string_lossy()
            ));
        }
    }
    let mtime = TimeSpec::new(node.mtime.sec, i64::from(node.mtime.nsec));
    if let Err(e) = utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    ) {
        warnings.push(format!("{}: cannot set times: {e}", shown.display()));
    }
}

/// [`apply_metadata`] for a file this restore made and holds open: the same steps in the
/// same order, through its descriptor (no path lookups, nothing followed).
pub fn apply_file_metadata(file: &File, node: &Node, shown: &Path, warnings: &mut Vec<String>) {
    use nix::sys::stat::{Mode, fchmod, futimens};
    use nix::sys::time::TimeSpec;
    use xattr::FileExt as _;
    if is_root()
        && let Err(e) = nix::unistd::fchown(
            file,
            Some(nix::unistd::Uid::from_raw(node.uid)),
            Some(nix::unistd::Gid::from_raw(node.gid)),
        )
    {
        warnings.push(format!("{}: cannot set owner: {e}", shown.display()));
    }
    if let Err(e) = fchmod(file, Mode::from_bits_truncate(node.mode & 0o7777)) {
        warnings.push(format!("{}: cannot set permissions: {e}", shown.display()));
    }
    for x in &node.xattrs {
        let name = OsStr::from_bytes(&x.name);
        if let Err(e) = file.set_xattr(name, &x.value) {
            warnings.push(format!(
                "{}: cannot set extended attribute {}: {e}",
                shown.display(),
                name.to_string_lossy()
            ));
        }
    }
    let mtime = TimeSpec::new(node.mtime.sec, i64::from(node.mtime.nsec));
    if let Err(e) = futimens(file, &mtime, &mtime) {
        warnings.push(format!("{}: cannot set times: {e}", shown.display()));
    }
}

/// Whether this process runs as root (asked once: a restore of many files asked per file).
fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| nix::unistd::geteuid().is_root())
}
