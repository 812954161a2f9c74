//! What a backup reads: every kind of source feeds one [`Ingest`] and returns a tree.
//!
//! A source is opened (and its input checked) before the repository is locked, then
//! [`Source::read`] stores its content through the run's ingest and returns the root tree:
//! `files` walks file trees, `command` stores a command's standard output as one file;
//! databases and disk images come as further modules implementing the same trait. The
//! backup engine ([`crate::backup`]) owns the rest: lock, parent, commit, snapshot.

pub mod command;
pub mod db;
pub mod files;
pub mod mysql;
pub mod postgres;

use crate::error::Result;
use crate::pipeline::Ingest;
use crate::repo::{Id, Node, Snapshot};

/// A kind of data a backup reads.
pub trait Source: Send {
    /// The kind the snapshot records (`files`, `command`, …).
    fn kind(&self) -> &'static str;

    /// What the snapshot names: the paths backed up, or a stream's name.
    fn paths(&self) -> Vec<String>;

    /// What is backed up, stable from run to run and including the host: the parent of a
    /// backup is the latest snapshot of the same kind and key, and retention groups by it.
    fn key(&self) -> String;

    /// Stores the source's content through `ingest`, trusting `parent` (the latest
    /// snapshot of the same kind and key, unless the backup is full) where the source can
    /// tell that nothing changed.
    fn read(&mut self, ingest: &Ingest, parent: Option<&Snapshot>) -> Result<Read>;
}

/// What a source stored.
#[derive(Clone, Debug)]
pub struct Read {
    /// The root tree.
    pub tree: Id,
    /// The root directory's own metadata, when the source has one.
    pub root: Option<Node>,
    /// Whether every byte was read (nothing was taken from the parent).
    pub read_all: bool,
    /// A base backup's first WAL segment (see [`crate::repo::Snapshot::wal_start`]).
    pub wal_start: Option<String>,
}
