//! The `files` source: file system metadata to [`Node`]s, and file content as data extents.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::repo::{Node, NodeKind, Timestamp, tree::Xattr};

/// Builds a node (without content or subtree) from `lstat` metadata.
pub fn node_from_metadata(name: &OsStr, path: &Path, meta: &Metadata) -> Result<Node> {
    node_like(name, path, meta, None)
}

/// Builds a node like [`node_from_metadata`], taking the extended attributes and symlink
/// target from `same` instead of reading them when `same` is the same entry unchanged: of
/// the same kind, inode and ctime (setting an attribute changes the ctime; a symlink's
/// target cannot change in place). Saves two system calls per unchanged entry.
pub fn node_like(name: &OsStr, path: &Path, meta: &Metadata, same: Option<&Node>) -> Result<Node> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        NodeKind::File
    } else if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::CharDevice
    } else if ft.is_block_device() {
        NodeKind::BlockDevice
    } else {
        NodeKind::Socket
    };
    let ctime = Timestamp {
        sec: meta.ctime(),
        nsec: meta.ctime_nsec() as u32,
    };
    let same = same.filter(|n| n.kind == kind && n.inode == meta.ino() && n.ctime == ctime);
    let target = if kind != NodeKind::Symlink {
        None
    } else if let Some(t) = same.and_then(|n| n.target.clone()) {
        Some(t)
    } else {
        let t = std::fs::read_link(path).map_err(|e| Error::io("reading symlink", path, e))?;
        Some(ByteBuf::from(t.into_os_string().into_vec()))
    };
    let xattrs = match same {
        Some(n) => n.xattrs.clone(),
        None => read_xattrs(path)?,
    };
    Ok(Node {
        name: ByteBuf::from(name.as_bytes().to_vec()),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: Timestamp {
            sec: meta.mtime(),
            nsec: meta.mtime_nsec() as u32,
        },
        ctime,
        dev: meta.dev(),
        inode: meta.ino(),
        links: meta.nlink(),
        size: if kind == NodeKind::Dir {
            0
        } else {
            meta.size()
        },
        rdev: meta.rdev(),
        content: Vec::new(),
        subtree: None,
        target,
        xattrs,
    })
}

use std::os::unix::ffi::OsStringExt;

/// Extended attributes of `path` itself (symlinks not followed); none where unsupported.
pub fn read_xattrs(path: &Path) -> Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing extended attributes of", path, e)),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name)
            .map_err(|e| Error::io("reading extended attributes of", path, e))?
        {
            out.push(Xattr {
                name: ByteBuf::from(name.into_vec()),
                value: ByteBuf::from(value),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
}

/// Opens a file for reading without following symlinks and, where allowed, without
/// updating its access time.
pub fn open_for_backup(path: &Path) -> std::io::Result<File> {
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_NOFOLLOW | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(libc::O_NOFOLLOW),
        r => r,
    }
}

/// The data extents `(offset, len)` of a file of `size` bytes; one extent unless sparse.
///
/// Leaves the file offset at 0.
pub fn data_extents(file: &File, meta: &Metadata) -> std::io::Result<Vec<(u64, u64)>> {
    let size = meta.size();
    if size == 0 {
        return Ok(vec![]);
    }
    // Only a file with fewer allocated blocks than its size can have holes.
    if meta.blocks() * 512 >= size {
        return Ok(vec![(0, size)]);
    }
    use nix::unistd::{Whence, lseek};
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let size = size as i64;
    while pos < size {
        let start = match lseek(file, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(nix::errno::Errno::EINVAL) => {
                out = vec![(0, size as u64)];
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let end = match lseek(file, start, Whence::SeekHole) {
            Ok(e) => e.min(size),
            Err(e) => return Err(e.into()),
        };
        if end > start {
            out.push((start as u64, (end - start) as u64));
        }
        pos = end;
    }
    // The reader expects the offset where `open` left it.
    lseek(file, 0, Whence::SeekSet)?;
    Ok(out)
}

/// Whether the file changed between two stats (content may be torn).
pub fn changed(before: &Metadata, after: &Metadata) -> bool {
    before.size() != after.size()
        || before.mtime() != after.mtime()
        || before.mtime_nsec() != after.mtime_nsec()
        || before.ctime() != after.ctime()
        || before.ctime_nsec() != after.ctime_nsec()
        || before.ino() != after.ino()
}

/// `path` made absolute and cleaned lexically: `.` components and trailing `/` dropped,
/// `..` resolved against the component before it (never above `/`).
///
/// Lexical, like restic's `filepath.Clean`: `DIR/link/..` names `DIR`, even when `link` is a
/// symlink to a directory elsewhere (whose parent the kernel would take). What is recorded
/// is then what the operator wrote, the same on every run, whatever the links point to.
pub fn normalize(path: &Path) -> std::io::Result<std::path::PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(path)?;
    let mut out = std::path::PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Pseudo file systems whose files are kernel state, not data: `statfs` magic numbers
/// (`linux/magic.h`) and names. `devtmpfs` shares tmpfs's number and is not listed: its
/// device nodes are stored as nodes, never read.
const PSEUDO_FS: &[(i64, &str)] = &[
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x1cd1, "devpts"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x6165_676c, "pstore"),
    (0xcafe_4a11, "bpf"),
    (0x6265_6570, "configfs"),
    (0x6573_5543, "fusectl"),
    (0x1980_0202, "mqueue"),
    (0x0187, "autofs"),
    (0x4249_4e4d, "binfmt_misc"),
    (0xde5e_81e4, "efivarfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x6e73_6673, "nsfs"),
    (0x6759_6969, "rpc_pipefs"),
];

/// The name of the pseudo file system `path` is on, if it is on one.
pub fn pseudo_fs(path: &Path) -> Option<&'static str> {
    let st = nix::sys::statfs::statfs(path).ok()?;
    #[allow(clippy::unnecessary_cast)]
    let magic = st.filesystem_type().0 as i64;
    PSEUDO_FS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_dots_and_trailing_slashes_lexically() {
        let cwd = std::env::current_dir().unwrap();
        for (given, want) in [
            ("/", "/".into()),
            ("/.", "/".into()),
            ("/..", "/".into()),
            ("/etc/", "/etc".into()),
            ("/etc/.", "/etc".into()),
            ("/etc/ssh/..", "/etc".into()),
            ("//etc//ssh/", "/etc/ssh".into()),
            ("t1/a/../c", cwd.join("t1/c")),
            ("t1/c/", cwd.join("t1/c")),
            (".", cwd.clone()),
        ] {
            assert_eq!(normalize(Path::new(given)).unwrap(), want, "{given}");
        }
    }

    #[test]
    fn pseudo_fs_knows_proc_and_not_the_root_file_system() {
        assert_eq!(pseudo_fs(Path::new("/proc/self")), Some("proc"));
        assert_eq!(pseudo_fs(Path::new("/tmp")), None);
    }
}
