//! What a user names inside a snapshot: paths and include globs, given relative to the
//! snapshot root or absolute as they were backed up.
//!
//! Backing up one directory makes its content the root; one file becomes the root's one
//! entry; several paths keep their absolute layout, the root being `/` (older manifests
//! list each of several paths in the root by its last component; docs/FORMAT.md). So
//! `/etc/ssh` of a backup of `/etc` is `ssh` in the root, and `etc/ssh` of a backup of
//! `/etc` and `/home`. Every given path is tried both ways: as it is (relative to the root)
//! and, when it starts with a backed-up path, with that path replaced by its place in the
//! root.

use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::repo::{NodeKind, Snapshot, Tree};

/// Where each backed-up path sits in the snapshot root.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// (backed-up path without its leading `/`, its place in the root: "" for the root).
    places: Vec<(String, String)>,
}

/// `a//b/./c/../d/` → `a/b/d` (lexically; a leading `/` is dropped).
pub fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

impl Layout {
    /// The layout of `snap`, whose root tree is `root`.
    pub fn new(snap: &Snapshot, root: &Tree) -> Layout {
        let paths: Vec<String> = snap.paths.iter().map(|p| normalize(p)).collect();
        let mut places = Vec::new();
        if let [only] = &paths[..] {
            let name = only.rsplit('/').next().unwrap_or("");
            // One file: the root lists it by name; one directory: the root is its content.
            let file = matches!(&root.nodes[..], [n] if n.kind != NodeKind::Dir && n.name[..] == *name.as_bytes());
            places.push((
                only.clone(),
                if file {
                    name.to_string()
                } else {
                    String::new()
                },
            ));
        } else {
            for p in paths {
                // Several paths keep their absolute layout (the root is `/`); manifests
                // written before that list each path in the root by its last component.
                let first = p.split('/').next().unwrap_or("");
                let absolute = root
                    .nodes
                    .iter()
                    .any(|n| n.kind == NodeKind::Dir && n.name[..] == *first.as_bytes());
                if absolute || p.is_empty() {
                    places.push((p.clone(), p));
                } else if let Some(name) = p.rsplit('/').next() {
                    let name = name.to_string();
                    places.push((p, name));
                }
            }
        }
        Layout { places }
    }

    /// The root-relative forms `given` may mean, first as given ("" is the root).
    pub fn candidates(&self, given: &str) -> Vec<String> {
        let g = normalize(given);
        let mut out = vec![g.clone()];
        for (path, place) in &self.places {
            let mapped = if path.is_empty() {
                Some(join(place, &g))
            } else if g == *path {
                Some(place.clone())
            } else {
                g.strip_prefix(path.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                    .map(|rest| join(place, rest))
            };
            if let Some(m) = mapped
                && !out.contains(&m)
            {
                out.push(m);
            }
        }
        out
    }
}

/// Include globs, each remembering whether it matched anything.
pub struct Includes {
    patterns: Vec<String>,
    set: GlobSet,
    /// Glob number → pattern number.
    owner: Vec<usize>,
    /// Literal leading components of each glob (where matches can be).
    prefixes: Vec<Vec<String>>,
    hit: Vec<std::sync::atomic::AtomicBool>,
}

fn is_literal(component: &str) -> bool {
    !component.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

impl Includes {
    /// Builds the globs of `patterns` for a snapshot of `layout`; `None` if there are none.
    pub fn new(patterns: &[String], layout: &Layout) -> Result<Option<Includes>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let mut b = GlobSetBuilder::new();
        let mut owner = Vec::new();
        let mut prefixes = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            if p.is_empty() {
                return Err(Error::config("an empty --include pattern matches nothing"));
            }
            for c in layout.candidates(p) {
                let globs = if c.is_empty() {
                    vec!["**".to_string()]
                } else {
                    vec![c.clone(), format!("{c}/**")]
                };
                for g in globs {
                    b.add(Glob::new(&g).map_err(|e| {
                        Error::config(format!("invalid include pattern '{p}': {e}"))
                    })?);
                    owner.push(i);
                    prefixes.push(
                        c.split('/')
                            .filter(|s| !s.is_empty())
                            .take_while(|s| is_literal(s))
                            .map(str::to_string)
                            .collect(),
                    );
                }
            }
        }
        let set = b
            .build()
            .map_err(|e| Error::config(format!("invalid include patterns: {e}")))?;
        Ok(Some(Includes {
            hit: patterns.iter().map(|_| Default::default()).collect(),
            patterns: patterns.to_vec(),
            set,
            owner,
            prefixes,
        }))
    }

    /// Whether `rel` is included (and notes which patterns matched it).
    pub fn is_match(&self, rel: &Path) -> bool {
        let m = self.set.matches(rel);
        for g in &m {
            self.hit[self.owner[*g]].store(true, std::sync::atomic::Ordering::Relaxed);
        }
        !m.is_empty()
    }

    /// Whether something below directory `rel` may be included (a directory off every
    /// pattern's literal path need not be read at all).
    pub fn may_include_below(&self, rel: &Path) -> bool {
        let d: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        self.prefixes.iter().any(|l| {
            let n = l.len().min(d.len());
            l[..n] == d[..n]
        })
    }

    /// The patterns that matched nothing so far.
    pub fn unmatched(&self) -> Vec<String> {
        self.patterns
            .iter()
            .zip(&self.hit)
            .filter(|(_, h)| !h.load(std::sync::atomic::Ordering::Relaxed))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(paths: &[&str]) -> Layout {
        Layout::new(&sample(paths), &Tree::default())
    }

    fn sample(paths: &[&str]) -> Snapshot {
        Snapshot {
            version: 1,
            time: chrono::Utc::now(),
            hostname: "h".into(),
            username: "u".into(),
            source: "files".into(),
            key: String::new(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            tree: crate::repo::Id::random(),
            root: None,
            parent: None,
            kind: crate::repo::BackupKind::Full,
            policy: None,
            tags: vec![],
            wal_start: None,
            summary: Default::default(),
            program: "t".into(),
        }
    }

    #[test]
    fn absolute_and_root_relative_paths_both_resolve() {
        let one = layout(&["/etc"]);
        assert_eq!(one.candidates("/etc"), vec!["etc", ""]);
        assert_eq!(one.candidates("etc/ssh/"), vec!["etc/ssh", "ssh"]);
        assert_eq!(one.candidates("ssh"), vec!["ssh"]);
        let two = layout(&["/etc", "/var/log/"]);
        assert_eq!(two.candidates("/etc/ssh"), vec!["etc/ssh"]);
        assert_eq!(
            two.candidates("/var/log/syslog"),
            vec!["var/log/syslog", "log/syslog"]
        );
        assert_eq!(normalize("/a/./b/../c//"), "a/c");
    }

    #[test]
    fn a_single_file_backup_is_listed_by_name_in_the_root() {
        let mut snap_layout = layout(&["/etc/hosts"]);
        assert_eq!(snap_layout.candidates("/etc/hosts"), vec!["etc/hosts", ""]);
        let mut n = crate::repo::Node {
            name: serde_bytes::ByteBuf::from(b"hosts".to_vec()),
            kind: NodeKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Default::default(),
            ctime: Default::default(),
            dev: 0,
            inode: 0,
            links: 1,
            size: 0,
            rdev: 0,
            content: vec![],
            subtree: None,
            target: None,
            xattrs: vec![],
        };
        let root = Tree {
            nodes: vec![n.clone()],
        };
        let snap = Snapshot {
            paths: vec!["/etc/hosts".into()],
            ..sample(&["/etc/hosts"])
        };
        snap_layout = Layout::new(&snap, &root);
        assert_eq!(
            snap_layout.candidates("/etc/hosts"),
            vec!["etc/hosts", "hosts"]
        );
        n.kind = NodeKind::Dir;
        let dir_root = Tree { nodes: vec![n] };
        assert_eq!(
            Layout::new(&snap, &dir_root).candidates("/etc/hosts"),
            vec!["etc/hosts", ""]
        );
    }

    #[test]
    fn includes_record_what_matched_and_where_matches_can_be() {
        let inc = Includes::new(&["etc/ssh/**".into(), "nothing".into()], &layout(&["/etc"]))
            .unwrap()
            .unwrap();
        assert!(inc.is_match(Path::new("ssh/sshd_config")));
        assert!(!inc.is_match(Path::new("passwd")));
        assert_eq!(inc.unmatched(), vec!["nothing".to_string()]);
        assert!(inc.may_include_below(Path::new("ssh")));
        assert!(!inc.may_include_below(Path::new("cron.d")));
    }
}
