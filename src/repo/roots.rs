//! What the repository keeps, and the one walk from it to every blob it reaches.
//!
//! A root is an object that keeps trees alive: a snapshot manifest, a batch of archived WAL
//! ([`crate::wal`]); drill evidence later, each one more [`RootKind`] listed by [`Repo::roots`]. Prune keeps
//! what [`reachable`] returns, verify checks what [`Walk`] visits, and nothing else walks
//! trees to decide what is referenced, so a new kind of root is kept everywhere at once.
//!
//! The walk loads the trees of one level in parallel (up to [`PARALLEL_TREES`] at once),
//! so on storage with a high latency per request it costs a round trip per level of
//! directories rather than per directory.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::{DamagedSnapshot, Index, Node, NodeKind, Piece, Repo, Tree};

/// Trees loaded at once by a walk.
pub const PARALLEL_TREES: usize = 16;

/// Trees a walk holds in memory at once.
const BATCH_TREES: usize = 512;

/// What kind of object a root is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// A snapshot manifest (`snapshots/<id>`).
    Snapshot,
    /// A batch of archived PostgreSQL WAL (`wal/<id>`, see [`crate::wal`]).
    Wal,
}

/// One object that keeps a tree (and everything below it) alive.
#[derive(Clone, Debug)]
pub struct Root {
    /// What it is.
    pub kind: RootKind,
    /// Its object id (the snapshot or WAL batch id).
    pub id: Id,
    /// The tree it keeps.
    pub tree: Id,
}

/// Every root of a repository.
#[derive(Clone, Debug, Default)]
pub struct Roots {
    /// Roots that could be read.
    pub roots: Vec<Root>,
    /// Snapshot manifests that could not be read: what they keep is unknown.
    pub damaged: Vec<DamagedSnapshot>,
}

impl Repo {
    /// Lists every root: snapshot manifests and archived WAL batches. A WAL batch that
    /// cannot be read is an error (what it keeps is unknown, and prune must not guess).
    pub fn roots(&self) -> Result<Roots> {
        let list = self.snapshots()?;
        let mut roots: Vec<Root> = list
            .snapshots
            .iter()
            .map(|(id, s)| Root {
                kind: RootKind::Snapshot,
                id: *id,
                tree: s.tree,
            })
            .collect();
        roots.extend(self.wal_batches()?.into_iter().map(|(id, b)| Root {
            kind: RootKind::Wal,
            id,
            tree: b.tree,
        }));
        Ok(Roots {
            roots,
            damaged: list.damaged,
        })
    }
}

/// What a walk meets, with the path below the tree it started from (`""` for that tree,
/// `"etc/ssh"` below it).
pub enum Visit<'a> {
    /// A tree that is missing from the index, distrusted, or cannot be read or decoded.
    Unreadable {
        /// Where it is.
        path: &'a str,
        /// Its id.
        id: Id,
        /// Why it cannot be read.
        error: Error,
    },
    /// A tree, before its subtrees are visited.
    Tree {
        /// Where it is.
        path: &'a str,
        /// Its id.
        id: Id,
        /// Its entries.
        tree: &'a Tree,
    },
    /// A file, with its content lists expanded (or why they cannot be).
    File {
        /// Where it is.
        path: &'a str,
        /// The file's node.
        node: &'a Node,
        /// Its chunks and holes.
        content: Result<Vec<Piece>>,
    },
}

/// A walk over trees: breadth first, each level loaded in parallel.
pub struct Walk<'r> {
    repo: &'r Repo,
    index: &'r Index,
    distrusted: Option<&'r HashSet<Id>>,
    /// Trees already visited, when each tree is to be visited once (across roots too).
    seen: Option<HashSet<Id>>,
}

impl<'r> Walk<'r> {
    /// A walk that visits every occurrence of every tree.
    pub fn new(repo: &'r Repo, index: &'r Index) -> Self {
        Walk {
            repo,
            index,
            distrusted: None,
            seen: None,
        }
    }

    /// Visits each tree once, however many roots or directories share it; its subtrees are
    /// then not visited again either.
    pub fn once(mut self) -> Self {
        self.seen = Some(HashSet::new());
        self
    }

    /// Treats these blobs as unreadable without reading them (known to be corrupt).
    pub fn distrusting(mut self, bad: &'r HashSet<Id>) -> Self {
        self.distrusted = Some(bad);
        self
    }

    /// Walks from `tree`, calling `visit` for every tree and file.
    pub fn run(&mut self, tree: Id, visit: &mut dyn FnMut(Visit)) {
        let mut level: Vec<(String, Id)> = vec![(String::new(), tree)];
        while !level.is_empty() {
            if let Some(seen) = &mut self.seen {
                level.retain(|(_, id)| seen.insert(*id));
            }
            let mut next = Vec::new();
            // A batch at a time: the trees of a wide level are not all in memory at once.
            for batch in level.chunks(BATCH_TREES) {
                for ((path, id), tree) in batch.iter().zip(self.load(batch)) {
                    self.visit_tree(path, *id, tree, &mut next, visit);
                }
            }
            level = next;
        }
    }

    fn visit_tree(
        &self,
        path: &str,
        id: Id,
        tree: Result<Tree>,
        next: &mut Vec<(String, Id)>,
        visit: &mut dyn FnMut(Visit),
    ) {
        let tree = match tree {
            Ok(t) => t,
            Err(error) => return visit(Visit::Unreadable { path, id, error }),
        };
        visit(Visit::Tree {
            path,
            id,
            tree: &tree,
        });
        for node in &tree.nodes {
            let name = String::from_utf8_lossy(&node.name);
            let child = if path.is_empty() {
                name.into_owned()
            } else {
                format!("{path}/{name}")
            };
            match node.kind {
                NodeKind::Dir => next.extend(node.subtree.map(|s| (child, s))),
                NodeKind::File => visit(Visit::File {
                    path: &child,
                    node,
                    content: self.content(node),
                }),
                _ => {}
            }
        }
    }

    fn check(&self, id: &Id) -> Result<()> {
        if self.distrusted.is_some_and(|bad| bad.contains(id)) || !self.index.contains(id) {
            return Err(Error::corrupt(format!(
                "blob {} is missing or corrupt",
                id.short()
            )));
        }
        Ok(())
    }

    fn content(&self, node: &Node) -> Result<Vec<Piece>> {
        for p in &node.content {
            if let Piece::List(id, _) = p {
                self.check(id)?;
            }
        }
        self.repo.expand_content(self.index, &node.content)
    }

    /// Loads a batch of trees, [`PARALLEL_TREES`] at a time, in order.
    fn load(&self, batch: &[(String, Id)]) -> Vec<Result<Tree>> {
        let load = |id: &Id| {
            self.check(id)
                .and_then(|()| self.repo.load_tree(self.index, id))
        };
        if batch.len() == 1 {
            return vec![load(&batch[0].1)];
        }
        let slots: Vec<Mutex<Option<Result<Tree>>>> =
            batch.iter().map(|_| Mutex::new(None)).collect();
        let taken = AtomicUsize::new(0);
        // Loaders log in the job's span (its kind and run id).
        let span = tracing::Span::current();
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_TREES.min(batch.len()) {
                s.spawn(|| {
                    let _e = span.enter();
                    loop {
                        let i = taken.fetch_add(1, Ordering::Relaxed);
                        let Some((_, id)) = batch.get(i) else { break };
                        *slots[i].lock().expect("slot lock") = Some(load(id));
                    }
                });
            }
        });
        slots
            .into_iter()
            .map(|t| {
                t.into_inner()
                    .expect("slot lock")
                    .expect("every tree was loaded")
            })
            .collect()
    }
}

/// Every blob the roots reach: trees, content lists and chunks.
pub fn reachable(repo: &Repo, index: &Index, roots: &[Root]) -> Result<HashSet<Id>> {
    let mut used = HashSet::new();
    let mut failure = None;
    let mut walk = Walk::new(repo, index).once();
    for root in roots {
        walk.run(root.tree, &mut |v| match v {
            Visit::Unreadable { id, error, .. } => {
                failure.get_or_insert(error.context(format!("tree {}", id.short())));
            }
            Visit::Tree { id, .. } => {
                used.insert(id);
            }
            Visit::File { node, content, .. } => {
                used.extend(node.content.iter().filter_map(|p| match p {
                    Piece::List(id, _) => Some(*id),
                    _ => None,
                }));
                match content {
                    Ok(c) => used.extend(c.iter().filter_map(|p| match p {
                        Piece::Chunk(id, _) => Some(*id),
                        _ => None,
                    })),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
    }
    Ok(used)
}
