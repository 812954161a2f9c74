//! The snapshot tree in pre-order, one directory loaded at a time, with what cannot be
//! walked (unreadable trees, unsafe or duplicate names) set aside and named.
//!
//! Names are checked as each directory loads. An entry whose name is not one plain path
//! component (`..`, `.`, empty, containing `/` or NUL), and every entry of a name that
//! occurs twice in one directory, is refused on its own: it is named in `failed` and never
//! handed out, so its name is never joined to a path and nothing below it is visited. This
//! is safe whatever the tree holds, and a damaged or hostile entry does not cost the rest
//! of the snapshot. A directory whose tree cannot be read (missing or corrupt) is named and
//! skipped with everything below it; only an unreadable root tree is fatal.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use super::select::Includes;
use crate::error::{ErrorKind, Result};
use crate::repo::{Id, Index, Node, NodeKind, Repo, Tree};

/// One entry, with its path relative to the root.
pub struct Item {
    /// Path below the root.
    pub rel: PathBuf,
    /// The entry.
    pub node: Node,
}

/// An open directory.
struct Frame {
    rel: PathBuf,
    /// Whether an include glob matched the directory or one above it.
    matched: bool,
    /// The directory's own item while nothing below it was included.
    held: Option<Item>,
    entries: std::vec::IntoIter<Node>,
}

/// A pre-order walk of a snapshot tree. With include globs, a directory appears only once
/// something below it is included, and directories that cannot hold a match are not read.
pub struct Walk<'a> {
    repo: &'a Repo,
    index: &'a Index,
    includes: Option<&'a Includes>,
    stack: Vec<Frame>,
    /// Items to hand out before walking on: held-back directories, then an entry.
    ready: VecDeque<Item>,
    /// Entries that could not be walked: (path, reason).
    pub failed: Vec<(String, String)>,
}

/// `/rel` for messages.
pub fn show(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// How a name is shown when it cannot be a path: escaped, so NUL and `/` are visible.
fn show_name(dir: &Path, name: &[u8]) -> String {
    let escaped: String = name.escape_ascii().to_string();
    if dir.as_os_str().is_empty() {
        format!("/{escaped:?}")
    } else {
        format!("{}/{escaped:?}", show(dir))
    }
}

impl<'a> Walk<'a> {
    /// Starts at tree `root` (which must be readable), or at `start` below it.
    pub fn new(
        repo: &'a Repo,
        index: &'a Index,
        root: Id,
        includes: Option<&'a Includes>,
    ) -> Result<Self> {
        let t = repo.load_tree(index, &root)?;
        let mut w = Walk {
            repo,
            index,
            includes,
            stack: Vec::new(),
            ready: VecDeque::new(),
            failed: Vec::new(),
        };
        w.push(t, PathBuf::new(), includes.is_none(), None);
        Ok(w)
    }

    /// Opens a loaded directory: refuses its unsafe and duplicate names.
    fn push(&mut self, t: Tree, rel: PathBuf, matched: bool, held: Option<Item>) {
        let mut count: HashMap<&[u8], usize> = HashMap::new();
        for n in &t.nodes {
            *count.entry(&n.name[..]).or_default() += 1;
        }
        let may_report = matched || self.includes.is_none_or(|inc| inc.may_include_below(&rel));
        let mut keep = Vec::with_capacity(t.nodes.len());
        for n in &t.nodes {
            let problem = if !n.has_safe_name() {
                "not a plain file name"
            } else if count[&n.name[..]] > 1 {
                "a duplicate entry"
            } else {
                keep.push(true);
                continue;
            };
            keep.push(false);
            if may_report {
                self.failed.push((
                    show_name(&rel, &n.name),
                    format!("refusing entry: {problem}"),
                ));
            }
        }
        drop(count);
        let nodes: Vec<Node> = t
            .nodes
            .into_iter()
            .zip(keep)
            .filter_map(|(n, k)| k.then_some(n))
            .collect();
        self.stack.push(Frame {
            rel,
            matched,
            held,
            entries: nodes.into_iter(),
        });
    }

    /// Queues `item` after the directories held back above it.
    fn release(&mut self, item: Item) {
        let held = self.stack.iter_mut().filter_map(|f| f.held.take());
        self.ready.extend(held);
        self.ready.push_back(item);
    }

    /// The next entry, or `None` at the end. Fails only if storage fails (not for damage).
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Ok(Some(item));
            }
            let Some(frame) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(node) = frame.entries.next() else {
                self.stack.pop();
                continue;
            };
            let rel = frame.rel.join(node.os_name());
            let matched = frame.matched || self.includes.is_none_or(|g| g.is_match(&rel));
            if node.kind != NodeKind::Dir {
                if matched {
                    self.release(Item { rel, node });
                }
                continue;
            }
            if !matched && !self.includes.is_some_and(|g| g.may_include_below(&rel)) {
                continue;
            }
            let Some(sub) = node.subtree else {
                self.failed
                    .push((show(&rel), "directory has no tree in the snapshot".into()));
                continue;
            };
            let t = match self.repo.load_tree(self.index, &sub) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    tracing::debug!("{}: cannot read directory: {e}", show(&rel));
                    self.failed.push((
                        show(&rel),
                        format!(
                            "directory skipped with everything below it: {}",
                            crate::error::chain(&e)
                        ),
                    ));
                    continue;
                }
                Err(e) => return Err(e.context(format!("reading directory {}", show(&rel)))),
            };
            let item = Item {
                rel: rel.clone(),
                node,
            };
            if matched {
                self.release(item);
                self.push(t, rel, true, None);
            } else {
                self.push(t, rel, false, Some(item));
            }
        }
    }
}
