//! Trees: one per directory, listing its entries sorted by name, stored as blobs.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::id::Id;

/// A point in time with nanoseconds, any year (seconds since the epoch may be negative).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
}

/// What kind of file system entry a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (never followed).
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Unix socket (recorded, not recreated).
    Socket,
}

/// A piece of a file's content, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Piece {
    /// A stored chunk and its plaintext length.
    Chunk(Id, u32),
    /// A hole of this many bytes (reads as zeros, allocates nothing).
    Hole(u64),
    /// A stored content list (a blob of [`Piece::Chunk`]s and [`Piece::Hole`]s, see
    /// [`ContentList`]) covering this many bytes. A large file's content is a short list of
    /// these, so its tree blob stays small and an unchanged stretch of the list is not
    /// stored again; see [`crate::repo::Repo::expand_content`].
    List(Id, u64),
}

impl Piece {
    /// Bytes of file this piece covers.
    pub fn len(&self) -> u64 {
        match self {
            Piece::Chunk(_, n) => u64::from(*n),
            Piece::Hole(n) | Piece::List(_, n) => *n,
        }
    }

    /// Whether the piece covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The blob a [`Piece::List`] names: chunks and holes, never further lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentList {
    /// Pieces in order.
    pub pieces: Vec<Piece>,
}

impl ContentList {
    /// Decodes a content list blob; a nested list is corrupt.
    pub fn decode(plain: &[u8]) -> Result<Self> {
        let l: ContentList = postcard::from_bytes(plain)
            .map_err(|e| Error::corrupt(format!("content list is malformed: {e}")))?;
        if l.pieces.iter().any(|p| matches!(p, Piece::List(..))) {
            return Err(Error::corrupt("content list nests another list"));
        }
        Ok(l)
    }

    /// Encodes a content list blob.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("content list serializes")
    }

    /// Bytes of file the list covers.
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(Piece::len).sum()
    }

    /// Whether the list covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Name, e.g. `user.comment`.
    pub name: ByteBuf,
    /// Value.
    pub value: ByteBuf,
}

/// One directory entry with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name: one path component, any bytes but `/` and NUL.
    pub name: ByteBuf,
    /// Entry kind.
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last status change (not restorable; compared by incremental backups).
    pub ctime: Timestamp,
    /// Device the entry was on (hardlink groups, one-file-system).
    pub dev: u64,
    /// Inode number.
    pub inode: u64,
    /// Hard link count.
    pub links: u64,
    /// Size in bytes (files: content length; symlinks: target length).
    pub size: u64,
    /// Device number of a character or block device.
    pub rdev: u64,
    /// File content.
    pub content: Vec<Piece>,
    /// Directory content.
    pub subtree: Option<Id>,
    /// Symlink target.
    pub target: Option<ByteBuf>,
    /// Extended attributes.
    pub xattrs: Vec<Xattr>,
}

impl Node {
    /// Whether the name is a safe single path component.
    pub fn has_safe_name(&self) -> bool {
        let n = &self.name[..];
        !n.is_empty() && n != b"." && n != b".." && !n.contains(&b'/') && !n.contains(&0)
    }

    /// The name as a file system name.
    pub fn os_name(&self) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(&self.name)
    }
}

/// A directory listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries sorted by name bytes.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Decodes a tree blob.
    pub fn decode(plain: &[u8]) -> Result<Self> {
        postcard::from_bytes(plain).map_err(|e| Error::corrupt(format!("tree is malformed: {e}")))
    }

    /// Encodes a tree blob.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("tree serializes")
    }

    /// Finds a node by name.
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name[..].cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = Node> {
        (
            proptest::collection::vec(any::<u8>(), 1..40),
            any::<u32>(),
            any::<i64>(),
            0u32..1_000_000_000,
            proptest::collection::vec((any::<[u8; 32]>(), any::<u32>()), 0..4),
            any::<u64>(),
        )
            .prop_map(|(name, mode, sec, nsec, chunks, hole)| Node {
                name: ByteBuf::from(name),
                kind: NodeKind::File,
                mode,
                uid: mode / 7,
                gid: mode / 11,
                mtime: Timestamp { sec, nsec },
                ctime: Timestamp {
                    sec: -sec / 3,
                    nsec,
                },
                dev: hole / 5,
                inode: hole / 3,
                links: 1,
                size: hole,
                rdev: 0,
                content: chunks
                    .into_iter()
                    .map(|(id, n)| Piece::Chunk(Id(id), n))
                    .chain([Piece::Hole(hole)])
                    .collect(),
                subtree: None,
                target: None,
                xattrs: vec![Xattr {
                    name: ByteBuf::from(b"user.x".to_vec()),
                    value: ByteBuf::from(vec![0, 1]),
                }],
            })
    }

    proptest! {
        #[test]
        fn tree_round_trips(nodes in proptest::collection::vec(node(), 0..20)) {
            let t = Tree { nodes };
            prop_assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
        }

        #[test]
        fn tree_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Tree::decode(&bytes);
        }
    }

    #[test]
    fn oversized_length_prefix_is_rejected_without_allocating() {
        // A node count of 2^60 in the first varint: must fail fast, not allocate.
        let bytes = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
        assert!(Tree::decode(&bytes).is_err());
    }
}
