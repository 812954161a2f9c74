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
    let target = if kind == NodeKind::Symlink {
        let t = std::fs::read_link(path).map_err(|e| Error::io("reading symlink", path, e))?;
        Some(ByteBuf::from(t.into_os_string().into_vec()))
    } else {
        None
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
        ctime: Timestamp {
            sec: meta.ctime(),
            nsec: meta.ctime_nsec() as u32,
        },
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
        xattrs: read_xattrs(path)?,
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
            Err(nix::errno::Errno::EINVAL) => return Ok(vec![(0, size as u64)]),
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
