//! A directory of a snapshot as a tar stream (`backstop dump` of a directory, like restic's):
//! the directory and everything below it, in walk order, each file's content read in order
//! and verified through [`Repo::content_reader`](crate::repo::Repo::content_reader).
//!
//! Names are relative to the dumped directory's parent (`dump latest /etc` gives `etc/…`;
//! the snapshot root gives the root's entries), in GNU format so long names and link
//! targets are kept. Regular files, directories, symlinks, fifos and devices keep their
//! mode, owner ids and modification time (whole seconds); a hard link is written as one more
//! regular file, and a socket, which tar cannot hold, is left out with a warning. A chunk
//! that fails its check stops the stream with the corruption error: the archive is then
//! cut short, and every byte before it was verified.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::walk::show;
use super::{Item, Plan, RestoreOutcome, check};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{Node, NodeKind};

/// Writes the directory `top` (an item of `plan`) and what is below it as a tar stream to
/// `w`, named `what` in messages.
pub(super) fn write(
    plan: &Plan<'_>,
    top: &Item,
    w: &mut dyn Write,
    what: &str,
    out: &mut RestoreOutcome,
    progress: &dyn Progress,
) -> Result<()> {
    let io_err = |e: std::io::Error| Error::io("writing", what, e);
    let base = top.rel.parent().unwrap_or(Path::new(""));
    let mut tar = tar::Builder::new(w);
    let mut walk = plan.walk()?;
    while let Some(item) = walk.next_item()? {
        check(plan.cancel)?;
        // Directories on the way to the dumped one are not part of it.
        if !item.rel.starts_with(&top.rel) {
            continue;
        }
        let name = item.rel.strip_prefix(base).unwrap_or(&item.rel);
        if name.as_os_str().is_empty() {
            continue; // the snapshot root itself: its entries are the archive's top
        }
        let node = &item.node;
        let mut h = header(node);
        match node.kind {
            NodeKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut h, name, std::io::empty())
                    .map_err(io_err)?;
                out.dirs += 1;
            }
            NodeKind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(node.size);
                let mut content = Content {
                    reader: plan.repo.content_reader(
                        plan.index.clone(),
                        node.content.clone(),
                        plan.threads,
                        plan.cancel,
                    ),
                    read: 0,
                    failed: None,
                    progress,
                };
                let res = tar.append_data(&mut h, name, &mut content);
                if let Some(e) = content.failed {
                    return Err(e.context(show(&item.rel)));
                }
                res.map_err(io_err)?;
                if content.read != node.size {
                    return Err(Error::corrupt(format!(
                        "{}: its content holds {} bytes where the snapshot says {}",
                        show(&item.rel),
                        content.read,
                        node.size
                    )));
                }
                out.files += 1;
                out.bytes += node.size;
            }
            NodeKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                let target = node.target.as_deref().map_or(&[][..], |t| &t[..]);
                tar.append_link(&mut h, name, OsStr::from_bytes(target))
                    .map_err(io_err)?;
                out.others += 1;
            }
            NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
                h.set_entry_type(match node.kind {
                    NodeKind::Fifo => tar::EntryType::Fifo,
                    NodeKind::CharDevice => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                if !matches!(node.kind, NodeKind::Fifo) {
                    let dev = node.rdev as libc::dev_t;
                    h.set_device_major(libc::major(dev)).map_err(io_err)?;
                    h.set_device_minor(libc::minor(dev)).map_err(io_err)?;
                }
                tar.append_data(&mut h, name, std::io::empty())
                    .map_err(io_err)?;
                out.others += 1;
            }
            NodeKind::Socket => out.warnings.push(format!(
                "{}: a socket, which a tar stream cannot hold: left out",
                show(&item.rel)
            )),
        }
    }
    // What the walk could not read is named by the engine (from its own, planning walk).
    tar.finish().map_err(io_err)?;
    tar.into_inner().map_err(io_err)?.flush().map_err(io_err)
}

/// A GNU header with `node`'s mode, owner ids and modification time (size 0).
fn header(node: &Node) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(node.mode & 0o7777);
    h.set_uid(u64::from(node.uid));
    h.set_gid(u64::from(node.gid));
    h.set_mtime(node.mtime.sec.max(0) as u64);
    h.set_size(0);
    h
}

/// A file's content for the archive; keeps the reader's own error (a corrupt chunk is not
/// an I/O error of the output).
struct Content<'p> {
    reader: crate::repo::reader::ContentReader,
    read: u64,
    failed: Option<Error>,
    progress: &'p dyn Progress,
}

impl Read for Content<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let avail = match self.reader.fill() {
            Ok(a) => a,
            Err(e) => {
                let io = std::io::Error::other(e.to_string());
                self.failed = Some(e);
                return Err(io);
            }
        };
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.reader.consume(n);
        self.read += n as u64;
        self.progress.bytes(n as u64);
        Ok(n)
    }
}
