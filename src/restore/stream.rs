//! Stream destinations: one file's content, in order, to a writer (`backstop dump`) or
//! into a command's standard input (`restore --to-command`), read through
//! [`Repo::content_reader`] (packs fetched in parallel ahead, memory bounded). A writer also
//! takes a directory, as a tar stream of it (see [`super::tar`]).
//!
//! Otherwise the selection must be exactly one regular file: a directory (for a command), a
//! symlink or several files are refused before anything is written or any command started,
//! naming what was found.
//! The command runs without a shell: its line is split into words as a shell would split
//! it (quotes, backslashes; give `sh -c '…'` for pipes and redirections), the same rule as
//! `backup --stdin-from-command`. Its standard output and error are the restore's. A
//! non-zero exit or a signal is an error naming the command and how it ended, and so is a
//! command that stops reading before the end of the content.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::walk::show;
use super::{Destination, Item, Plan, RestoreOptions, RestoreOutcome, run_to};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::repo::{Id, NodeKind, Repo, Snapshot};

/// One file's content to a writer.
pub struct Stream<'w> {
    writer: &'w mut dyn Write,
    what: String,
}

impl<'w> Stream<'w> {
    /// Writes to `writer`, named `what` in messages ("standard output").
    pub fn new(writer: &'w mut dyn Write, what: &str) -> Stream<'w> {
        Stream {
            writer,
            what: what.to_string(),
        }
    }
}

impl Destination for Stream<'_> {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn write(
        &mut self,
        plan: &Plan<'_>,
        out: &mut RestoreOutcome,
        progress: &dyn Progress,
    ) -> Result<()> {
        match select(plan, &self.what)? {
            Selected::File(item) => copy(plan, &item, self.writer, &self.what, out, progress),
            Selected::Dir(item) => {
                super::tar::write(plan, &item, self.writer, &self.what, out, progress)
            }
        }
    }
}

/// What a stream's selection is.
enum Selected {
    /// One regular file.
    File(Item),
    /// A directory (the first the selection names) and what is below it.
    Dir(Item),
}

/// The one regular file the plan selects, or an error naming what it selects instead.
pub(super) fn select_one(plan: &Plan<'_>, what: &str) -> Result<Item> {
    match select(plan, what)? {
        Selected::File(item) => Ok(item),
        Selected::Dir(item) => Err(Error::config(format!(
            "{} is a directory in the snapshot: {what} takes one file (restore a directory \
             with --target)",
            show(&item.rel)
        ))),
    }
}

/// The directory or the one regular file the plan selects, or an error naming what it
/// selects instead.
fn select(plan: &Plan<'_>, what: &str) -> Result<Selected> {
    let mut walk = plan.walk()?;
    let (mut file, mut files, mut other) = (None, 0u64, None);
    while let Some(item) = walk.next_item()? {
        match item.node.kind {
            // A directory on the way to the file is not selected; one the selection names is.
            NodeKind::Dir if plan.includes.is_none_or(|i| i.is_match(&item.rel)) => {
                return Ok(Selected::Dir(item));
            }
            NodeKind::Dir => {}
            NodeKind::File => {
                files += 1;
                if file.is_none() {
                    file = Some(item);
                }
            }
            k => other = other.or(Some((item.rel, k))),
        }
    }
    match (file, other) {
        (Some(f), _) if files == 1 => Ok(Selected::File(f)),
        (Some(f), _) => Err(Error::config(format!(
            "the selection holds {files} files ({} and others): {what} takes one file; \
             name it with --include",
            show(&f.rel)
        ))),
        (None, Some((rel, k))) => Err(Error::config(format!(
            "{} is a {} in the snapshot, not a regular file: {what} takes one file",
            show(&rel),
            format!("{k:?}").to_lowercase()
        ))),
        (None, None) => Err(Error::config(format!(
            "the selection holds no file: {what} takes one file"
        ))),
    }
}

/// Copies `item`'s content, in order and verified, to `w`.
pub(super) fn copy(
    plan: &Plan<'_>,
    item: &Item,
    w: &mut dyn Write,
    what: &str,
    out: &mut RestoreOutcome,
    progress: &dyn Progress,
) -> Result<()> {
    let shown = show(&item.rel);
    let mut reader = plan.repo.content_reader(
        plan.index.clone(),
        item.node.content.clone(),
        plan.threads,
        plan.cancel,
    );
    let mut n = 0u64;
    loop {
        super::check(plan.cancel)?;
        let buf = reader.fill().map_err(|e| e.context(&shown))?;
        if buf.is_empty() {
            break;
        }
        let len = buf.len();
        w.write_all(buf)
            .map_err(|e| Error::io("writing", what, e).context(format!("{shown} to")))?;
        reader.consume(len);
        n += len as u64;
        progress.bytes(len as u64);
    }
    w.flush()
        .map_err(|e| Error::io("writing", what, e).context(format!("{shown} to")))?;
    if n != item.node.size {
        return Err(Error::corrupt(format!(
            "{shown}: its content holds {n} bytes where the snapshot says {}",
            item.node.size
        )));
    }
    out.files += 1;
    out.bytes += n;
    Ok(())
}

/// One file's content into a command's standard input.
pub struct ToCommand {
    line: String,
    argv: Vec<String>,
}

impl ToCommand {
    /// The command `line`, split into words as a shell would (run without a shell).
    pub fn new(line: &str) -> Result<ToCommand> {
        let argv = crate::source::command::split("--to-command", line, "psql -d app")?;
        Ok(ToCommand {
            line: line.to_string(),
            argv,
        })
    }
}

impl Destination for ToCommand {
    fn describe(&self) -> String {
        format!("command '{}'", self.line)
    }

    fn write(
        &mut self,
        plan: &Plan<'_>,
        out: &mut RestoreOutcome,
        progress: &dyn Progress,
    ) -> Result<()> {
        let what = format!("the standard input of command '{}'", self.line);
        let item = select_one(plan, &self.describe())?;
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot start command '{}'", self.line),
                )
                .with_source(e)
            })?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let copied = copy(plan, &item, &mut stdin, &what, out, progress);
        drop(stdin);
        let status = child.wait().map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("waiting for command '{}'", self.line),
            )
            .with_source(e)
        })?;
        if !status.success() {
            use std::os::unix::process::ExitStatusExt;
            let how = match (status.code(), status.signal()) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(s)) => format!(
                    "signal {}",
                    nix::sys::signal::Signal::try_from(s)
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_else(|_| s.to_string())
                ),
                _ => status.to_string(),
            };
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "command '{}' failed with {how} while restoring {} into it",
                    self.line,
                    show(&item.rel)
                ),
            ));
        }
        // A command that stopped reading is a failed restore, not a closed pager: the
        // error keeps the message, not the broken pipe (which main takes for success).
        copied.map_err(|e| match e.kind() {
            ErrorKind::Io => Error::new(
                ErrorKind::Io,
                format!(
                    "command '{}' exited before reading all of {}: {}",
                    self.line,
                    show(&item.rel),
                    crate::error::chain(&e)
                ),
            ),
            _ => e,
        })
    }
}

/// A path inside a snapshot as an include glob matching exactly it.
fn literal_glob(path: &str) -> String {
    let mut g = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            g.push('\\');
        }
        g.push(c);
    }
    g
}

/// Writes the file `path` of snapshot `snap` (whose id is `id`) to `dest`, in order:
/// `backstop dump`. `path` is absolute as backed up or relative to the snapshot root;
/// `opts` gives the lock wait, the readers and the cancellation token (its target and
/// includes are not used).
pub fn dump(
    repo: &Repo,
    id: Id,
    snap: &Snapshot,
    path: &str,
    dest: &mut Stream<'_>,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let opts = RestoreOptions {
        target: PathBuf::new(),
        includes: vec![literal_glob(path)],
        ..opts.clone()
    };
    let o = run_to(repo, id, snap, &opts, dest, progress)?;
    if !o.unmatched_includes.is_empty() {
        return Err(Error::config(format!(
            "no {path} in the snapshot (paths are absolute as backed up, {}, or relative to \
             its root)",
            snap.paths.join(", ")
        )));
    }
    Ok(o)
}
