//! The `command` source: a command's standard output stored as one file of the snapshot.
//!
//! The output is chunked as it arrives (no temporary file; memory bounded by the ingest's
//! queues). The command runs without a shell (its line split as a shell would split it;
//! give `sh -c '…'` for pipes), with standard input closed. A non-zero exit, a signal or
//! the timeout fails the backup before anything is committed, naming the command, how it
//! ended and the last lines it wrote to standard error.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Ingest;
use crate::pipeline::ingest::{Chunking, Counters};
use crate::repo::{Node, NodeKind, Piece, Snapshot, Timestamp, Tree};
use crate::source::{Read, Source};

/// Lines of standard error kept for the error message.
const STDERR_LINES: usize = 10;

/// A command whose output to back up.
#[derive(Clone, Debug, Default)]
pub struct CommandOptions {
    /// The command line, split into words as a shell would (quotes and backslashes), run
    /// without a shell.
    pub command: String,
    /// The name of the file its output becomes in the snapshot.
    pub name: String,
    /// Stop the command (and the backup) after this long.
    pub timeout: Option<Duration>,
}

/// The `command` source, its command line parsed.
pub struct Command {
    opts: CommandOptions,
    argv: Vec<String>,
    host: String,
}

impl Command {
    /// Checks the command line and the file name.
    pub fn open(opts: CommandOptions, host: &str) -> Result<Command> {
        let argv = split("--stdin-from-command", &opts.command, "pg_dump -Fc mydb")?;
        let n = opts.name.as_str();
        if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
            return Err(Error::config(format!(
                "--stdin-filename: '{n}' is not a file name (one path component, no '/')"
            )));
        }
        Ok(Command {
            opts,
            argv,
            host: host.to_string(),
        })
    }

    /// The command as the operator gave it, for messages.
    fn shown(&self) -> &str {
        &self.opts.command
    }
}

impl Source for Command {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn paths(&self) -> Vec<String> {
        vec![self.opts.name.clone()]
    }

    fn key(&self) -> String {
        format!("{}:{}", self.host, self.opts.name)
    }

    fn read(&mut self, ingest: &Ingest, _parent: Option<&Snapshot>) -> Result<Read> {
        let started = Timestamp::now();
        let mut cmd = std::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]);
        let run = Run {
            shown: format!("the command '{}'", self.shown()),
            timeout: self.opts.timeout,
            one_line: false,
        };
        let (content, size) = run.store(ingest, cmd)?;
        let node = file_node(&self.opts.name, content, size, started);
        let tree = ingest.store_tree(&Tree { nodes: vec![node] })?;
        Ok(Read {
            tree,
            root: None,
            read_all: true,
            wal_start: None,
        })
    }
}

/// One command whose standard output becomes one file of a snapshot.
#[derive(Clone, Debug)]
pub struct Run {
    /// What the command is, for messages: "the command 'pg_dump …'", "pg_dump of database 'x'".
    pub shown: String,
    /// Stop the command (and the backup) after this long.
    pub timeout: Option<Duration>,
    /// Put the last lines of standard error on the error's one line (joined with " | ")
    /// instead of below it.
    pub one_line: bool,
}

impl Run {
    /// Runs `cmd` (its environment and arguments set; standard input closed here) and
    /// stores its standard output through `ingest` as it arrives; counts one file read.
    /// A non-zero exit, a signal, the timeout or cancellation fails with the end of its
    /// standard error.
    pub fn store(
        &self,
        ingest: &Ingest,
        mut cmd: std::process::Command,
    ) -> Result<(Vec<Piece>, u64)> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::new(ErrorKind::Io, format!("cannot run {}: {e}", self.shown)).with_source(e)
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let pid = child.id();
        // The watchdog stops the command when the timeout passes or the process is
        // interrupted; `done` tells it the output ended.
        let (done, ended) = crossbeam_channel::bounded::<()>(0);
        let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tail = Arc::new(Tail::new(STDERR_LINES));
        // The stderr reader and the watchdog log in the job's span (its kind and run id).
        let span = &tracing::Span::current();
        let stored = std::thread::scope(|s| {
            let tail2 = Arc::clone(&tail);
            s.spawn(move || span.in_scope(|| tail2.read_from(stderr, "command stderr")));
            let (timeout, timed) = (self.timeout, Arc::clone(&timed_out));
            let cancel = ingest.cancel().clone();
            s.spawn(move || span.in_scope(|| watchdog(pid, timeout, ended, &timed, &cancel)));
            let res = ingest.store_stream(stdout, Chunking::Content);
            drop(done);
            if res.is_err() {
                kill(pid);
            }
            res
        });
        let status = wait(&mut child, &self.shown)?;
        let fail = |why: String| {
            let msg = format!("{} {why}", self.shown);
            let msg = if self.one_line {
                match last_lines(&tail.lines().join("\n"), 3) {
                    l if l.is_empty() => msg,
                    l => format!("{msg}: {l}"),
                }
            } else {
                tail.append_to(msg, "stderr")
            };
            Error::new(ErrorKind::Io, msg)
        };
        if timed_out.load(std::sync::atomic::Ordering::Relaxed) {
            let after = humantime(self.timeout.unwrap_or_default());
            return Err(fail(format!("timed out after {after} and was stopped")));
        }
        if let Err(e) = ingest.cancel().check() {
            return Err(e.context(format!("{} was stopped", self.shown)));
        }
        // A storage failure stopped the command: it is the cause.
        let (content, size) =
            stored.map_err(|e| e.context(format!("storing the output of {}", self.shown)))?;
        if let Some(why) = ended_badly(status) {
            return Err(fail(why));
        }
        let c = &ingest.counters;
        Counters::add(&c.files, 1);
        Counters::add(&c.files_read, 1);
        Counters::add(&c.bytes_total, size);
        Ok((content, size))
    }
}

/// The last `n` non-blank lines of `text`, trimmed and joined with " | ": a tool's standard
/// error on one line of an error message.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The node of a file a source produced (owned by the backup's user, mode 0600).
pub fn file_node(name: &str, content: Vec<Piece>, size: u64, mtime: Timestamp) -> Node {
    Node {
        name: serde_bytes::ByteBuf::from(name.as_bytes().to_vec()),
        kind: NodeKind::File,
        mode: 0o600,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        mtime,
        ctime: mtime,
        dev: 0,
        inode: 0,
        links: 1,
        size,
        rdev: 0,
        content,
        subtree: None,
        target: None,
        xattrs: Vec::new(),
    }
}

/// The last lines a command wrote to one of its outputs, kept for messages and records
/// (each line cut at [`Tail::LINE_CHARS`] characters, so a binary blob cannot grow it).
#[derive(Debug, Default)]
pub struct Tail {
    lines: Mutex<VecDeque<String>>,
    max: usize,
}

impl Tail {
    /// Longest line kept, in characters.
    pub const LINE_CHARS: usize = 1000;

    /// Keeps the last `max` lines.
    pub fn new(max: usize) -> Tail {
        Tail {
            lines: Mutex::new(VecDeque::with_capacity(max)),
            max,
        }
    }

    /// Reads `r` to its end, keeping its last lines; each line is logged at debug level
    /// after `label`.
    pub fn read_from(&self, r: impl std::io::Read, label: &str) {
        for line in BufReader::new(r).split(b'\n').map_while(|l| l.ok()) {
            let mut line = String::from_utf8_lossy(&line).into_owned();
            tracing::debug!("{label}: {line}");
            if let Some((cut, _)) = line.char_indices().nth(Self::LINE_CHARS) {
                line.truncate(cut);
                line.push('…');
            }
            let mut t = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == self.max {
                t.pop_front();
            }
            t.push_back(line);
        }
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> Vec<String> {
        let t = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect()
    }

    /// `msg` followed by the lines kept (if any), introduced as the last output on `what`.
    pub fn append_to(&self, mut msg: String, what: &str) -> String {
        let lines = self.lines();
        if !lines.is_empty() {
            msg.push_str(&format!("; its last output on {what}:\n  "));
            msg.push_str(&lines.join("\n  "));
        }
        msg
    }
}

/// Splits the command line given with `flag` into words as a shell would (quotes and
/// backslashes), for running without a shell; an empty line is refused, with `example`.
pub fn split(flag: &str, line: &str, example: &str) -> Result<Vec<String>> {
    let argv = shell_words::split(line)
        .map_err(|e| Error::config(format!("{flag}: cannot split '{line}': {e}")))?;
    if argv.is_empty() {
        return Err(Error::config(format!(
            "{flag}: give the command to run, e.g. '{example}'"
        )));
    }
    Ok(argv)
}

/// A command's timeout: a duration above zero such as `90s`, `5m` or `1h`.
pub fn parse_timeout(s: &str) -> Option<Duration> {
    crate::policy::retention::parse_duration(s)
        .ok()
        .and_then(|d| d.to_std().ok())
        .filter(|d| !d.is_zero())
}

/// Waits for the end of the output (`ended` disconnects), the timeout, or cancellation;
/// stops the command (`pid`, with SIGKILL) in the latter two cases.
pub fn watchdog(
    pid: u32,
    timeout: Option<Duration>,
    ended: crossbeam_channel::Receiver<()>,
    timed_out: &std::sync::atomic::AtomicBool,
    cancel: &crate::cancel::Cancel,
) {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        // Wake up now and then to notice an interrupt.
        let tick = Duration::from_millis(200);
        let wait = match deadline {
            Some(d) => d
                .saturating_duration_since(std::time::Instant::now())
                .min(tick),
            None => tick,
        };
        match ended.recv_timeout(wait) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if cancel.is_cancelled() {
            kill(pid);
            return;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            timed_out.store(true, std::sync::atomic::Ordering::Relaxed);
            kill(pid);
            return;
        }
    }
}

/// Stops the process `pid` with SIGKILL (it may have ended already).
pub fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Waits for `child`, the command `shown`, to end.
pub fn wait(child: &mut Child, shown: &str) -> Result<ExitStatus> {
    child.wait().map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("waiting for the command '{shown}' failed"),
        )
        .with_source(e)
    })
}

/// How a command that failed ended, or `None` if it succeeded.
pub fn ended_badly(status: ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        None
    } else if let Some(code) = status.code() {
        Some(format!("exited with status {code}"))
    } else {
        let sig = status.signal().unwrap_or(0);
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("an unknown signal");
        Some(format!("was killed by signal {sig} ({name})"))
    }
}

/// A duration as messages show it: `1.5s`, `30s`, `2m5s`.
pub fn humantime(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.3}s").replace(".000s", "s")
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}
