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

    /// Creates a new empty file next to `path` (never an existing one) with `mode`: 0600,
    /// or the file's final mode where [`Inherit::final_mode`] says that is safe.
    pub fn create_file(&self, path: &Path, mode: u32) -> Result<(PathBuf, File), Failure> {
        let dir = path.parent().unwrap_or(Path::new("."));
        loop {
            let tmp = Self::path(dir);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
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
    // Made at once where nothing is there (every directory of a restore into an empty
    // target): `mkdir` never follows a symlink or replaces anything.
    match std::fs::create_dir(path) {
        Ok(()) => return Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create the directory: {}", why(&e))),
    }
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
/// same order, through its descriptor (no path lookups, nothing followed). With
/// `created_final`, the file was created with its final owner and mode
/// ([`Inherit::final_mode`]): only its times are set.
pub fn apply_file_metadata(
    file: &File,
    node: &Node,
    shown: &Path,
    warnings: &mut Vec<String>,
    created_final: bool,
) {
    use nix::sys::stat::{Mode, fchmod, futimens};
    use nix::sys::time::TimeSpec;
    use xattr::FileExt as _;
    if !created_final
        && is_root()
        && let Err(e) = nix::unistd::fchown(
            file,
            Some(nix::unistd::Uid::from_raw(node.uid)),
            Some(nix::unistd::Gid::from_raw(node.gid)),
        )
    {
        warnings.push(format!("{}: cannot set owner: {e}", shown.display()));
    }
    if !created_final && let Err(e) = fchmod(file, Mode::from_bits_truncate(node.mode & 0o7777)) {
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

/// What a file created in a directory gets without being asked: the creating process's
/// owner, the directory's group if the directory is setgid (else the process's group), and
/// the mode it was created with, less the umask. Known only for directories this restore
/// made (or found empty) below one it looked at: no default ACL, which would decide the mode
/// instead, and no setgid it did not see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inherit {
    uid: u32,
    gid: u32,
    umask: u32,
}

impl Inherit {
    /// What files created in `dir` get; `None` when that is not known (a default ACL, or
    /// `dir` or the umask cannot be read).
    pub fn of(dir: &Path) -> Option<Inherit> {
        let m = std::fs::symlink_metadata(dir).ok()?;
        match xattr::get(dir, "system.posix_acl_default") {
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            _ => return None,
        }
        let gid = if m.mode() & libc::S_ISGID != 0 {
            m.gid()
        } else {
            nix::unistd::getegid().as_raw()
        };
        Some(Inherit {
            uid: nix::unistd::geteuid().as_raw(),
            gid,
            umask: umask()?,
        })
    }

    /// The mode to create `node`'s file with when that gives it its final owner and mode
    /// at once, so neither is set afterwards: no setuid, setgid or sticky bit, no bit the
    /// umask takes away, no extended attributes (ACLs among them), and as root the owner
    /// and group it gets anyway. The file is never more open while it is written than it
    /// will be once restored.
    pub fn final_mode(&self, node: &Node) -> Option<u32> {
        let mode = node.mode & 0o7777;
        let owner_final = !is_root() || (node.uid, node.gid) == (self.uid, self.gid);
        (owner_final && mode & 0o7000 == 0 && mode & self.umask == 0 && node.xattrs.is_empty())
            .then_some(mode)
    }
}

/// The process's umask, from `/proc/self/status` (setting it to read it would race with
/// other threads creating files).
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let v = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(v.trim(), 8).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::Timestamp;
    use crate::repo::tree::Xattr;

    #[test]
    fn a_file_is_created_with_its_final_mode_only_when_nothing_would_change_it() {
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let inherit = Inherit {
            uid,
            gid,
            umask: 0o022,
        };
        let node = |mode: u32| {
            let mut n = crate::source::command::file_node("f", Vec::new(), 0, Timestamp::default());
            n.mode = mode;
            n
        };
        assert_eq!(inherit.final_mode(&node(0o644)), Some(0o644));
        assert_eq!(inherit.final_mode(&node(0o400)), Some(0o400));
        // The umask would take a bit away; special bits are cleared by chown or refused.
        assert_eq!(inherit.final_mode(&node(0o666)), None);
        for special in [0o4755, 0o2755, 0o1755] {
            assert_eq!(inherit.final_mode(&node(special)), None);
        }
        // Extended attributes (an access ACL among them) may change the mode.
        let mut with_xattr = node(0o644);
        with_xattr.xattrs.push(Xattr {
            name: b"user.a".to_vec().into(),
            value: b"1".to_vec().into(),
        });
        assert_eq!(inherit.final_mode(&with_xattr), None);
        // As root, another owner is set afterwards, so the file is created private.
        let mut other = node(0o644);
        other.uid = uid.wrapping_add(1);
        assert_eq!(inherit.final_mode(&other).is_some(), !is_root());
        let in_setgid_dir = Inherit {
            gid: gid.wrapping_add(1),
            ..inherit
        };
        assert_eq!(in_setgid_dir.final_mode(&node(0o644)).is_some(), !is_root());
    }
}
