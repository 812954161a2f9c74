//! Backup hooks: commands run before and after a backup of any source (flush a database,
//! take a file-system snapshot, notify someone), each with a timeout and a failure policy.
//!
//! # What runs when
//!
//! [`around`] runs the before-hooks in order, then the backup, then the after-hooks in
//! order. A before-hook that fails with `on-failure = "abort"` (the default for before-hooks)
//! stops there: no backup is made, and the error names the hook, how it ended and the last
//! lines of its output. With `"continue"` its failure is a warning and the next step runs.
//! After-hooks always run — also after a failed backup or an aborting before-hook, so that a
//! hook that undoes what a before-hook did (unlock tables, drop a file-system snapshot) gets
//! its chance; their failure is a warning unless they say `"abort"` (then the command fails,
//! after every after-hook ran, and says that the snapshot was saved).
//!
//! # How a hook runs
//!
//! Like the `command` source ([`crate::source::command`], whose helpers it shares): the line
//! is split as a shell would split it and run without a shell (`sh -c '…'` for pipes), with
//! standard input closed. Standard output and standard error go to one pipe whose last
//! [`OUTPUT_LINES`] lines are kept for the run record. Each hook runs in its own process
//! group, so that a timeout stops what it started too. The hook inherits backstop's
//! environment without any `BACKSTOP_*` variable (the repository password must not leak to
//! a notification script), and gets instead:
//!
//! | variable             | value                                                      |
//! |----------------------|------------------------------------------------------------|
//! | `BACKSTOP_HOOK`      | `before` or `after`                                        |
//! | `BACKSTOP_REPO`      | the repository's location                                  |
//! | `BACKSTOP_POLICY`    | the policy's name (absent for a backup without one)        |
//! | `BACKSTOP_TARGET`    | the policy's target name (absent without a policy)         |
//! | `BACKSTOP_RESULT`    | after-hooks: `success`, `partial` or `failure`             |
//! | `BACKSTOP_SNAPSHOT`  | after-hooks: the new snapshot's id (when one was saved)    |
//! | `BACKSTOP_ERROR`     | after-hooks: why the backup failed (on `failure`)          |
//!
//! Every hook that ran is reported through a callback as soon as it ended (the job records
//! it in the catalog's `run_hooks` table) and listed in the backup's outcome.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backup::BackupOutcome;
use crate::cancel::Cancel;
use crate::error::{Error, ErrorKind, Result};
use crate::source::command::{self, Tail};

/// Lines of a hook's output (standard output and error together) kept for the run record.
pub const OUTPUT_LINES: usize = 20;

/// How long a hook may run when its policy entry or the command line does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How long to wait, after a hook ended, for whatever it left running to close its output.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// What a failing hook does to the backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Before-hooks: no backup is made. After-hooks: the command fails (the snapshot stays).
    Abort,
    /// A warning; the backup (or the next hook) runs.
    Continue,
}

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Before the backup.
    Before,
    /// After the backup, whatever its result.
    After,
}

impl Phase {
    /// `before` or `after`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::After => "after",
        }
    }

    /// The phase named `name`, as [`Phase::name`] writes it.
    pub fn parse(name: &str) -> Option<Phase> {
        match name {
            "before" => Some(Phase::Before),
            "after" => Some(Phase::After),
            _ => None,
        }
    }

    /// What a failure does when the hook does not say: before-hooks abort, after-hooks
    /// continue.
    pub fn default_on_failure(self) -> OnFailure {
        match self {
            Phase::Before => OnFailure::Abort,
            Phase::After => OnFailure::Continue,
        }
    }
}

/// One hook: `[[hooks.before]]` or `[[hooks.after]]` in a policy file, or `--hook-before` /
/// `--hook-after` on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Hook {
    /// The command line, split as a shell would and run without a shell.
    pub command: String,
    /// Stop the hook (and count it as failed) after this long, e.g. "30s" or "5m".
    #[serde(default = "default_timeout", deserialize_with = "deserialize_duration")]
    pub timeout: Duration,
    /// `abort` or `continue`; by default before-hooks abort and after-hooks continue.
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// A duration such as "90s" or "2h", or none.
pub(crate) fn deserialize_optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    deserialize_duration(d).map(Some)
}

fn deserialize_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    command::parse_timeout(&s).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "timeout '{s}' is not a duration above zero such as 90s, 5m or 1h"
        ))
    })
}

/// The hooks of a backup: `[hooks]` in a policy file, with `before` and `after` lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Hooks {
    /// Run in order before the backup.
    pub before: Vec<Hook>,
    /// Run in order after the backup, whatever its result.
    pub after: Vec<Hook>,
}

impl Hooks {
    /// Hooks from the command line: each command with `timeout` and its phase's failure
    /// policy. Every line is checked.
    pub fn from_flags(before: &[String], after: &[String], timeout: Duration) -> Result<Hooks> {
        let hook = |command: &String| Hook {
            command: command.clone(),
            timeout,
            on_failure: None,
        };
        let hooks = Hooks {
            before: before.iter().map(hook).collect(),
            after: after.iter().map(hook).collect(),
        };
        match hooks.problems().into_iter().next() {
            Some((phase, msg)) => Err(Error::config(format!("--hook-{phase}: {msg}"))),
            None => Ok(hooks),
        }
    }

    /// Whether there is no hook at all.
    pub fn is_empty(&self) -> bool {
        self.before.is_empty() && self.after.is_empty()
    }

    /// These hooks, then `more`'s (a policy's hooks, then those of the command line).
    pub fn then(mut self, more: &Hooks) -> Hooks {
        self.before.extend(more.before.iter().cloned());
        self.after.extend(more.after.iter().cloned());
        self
    }

    /// Problems of the command lines, as (phase, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (phase, hooks) in [(Phase::Before, &self.before), (Phase::After, &self.after)] {
            for (i, h) in hooks.iter().enumerate() {
                let what = format!("hooks.{}[{i}].command", phase.name());
                if let Err(e) = command::split(&what, &h.command, "sh -c 'sync'") {
                    out.push((phase.name(), e.to_string()));
                }
            }
        }
        out
    }
}

/// What one hook did, for the run record and the backup's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookRun {
    /// `before` or `after`.
    pub phase: Phase,
    /// The command line as given.
    pub command: String,
    /// Whether it exited with status 0 in time.
    pub ok: bool,
    /// Its exit status, if it exited (not when killed or not started).
    pub exit_code: Option<i64>,
    /// How it ended, in words: "exited with status 0", "timed out after 5s and was stopped".
    pub ended: String,
    /// How long it ran, in milliseconds.
    pub duration_ms: i64,
    /// Its last lines of output (standard output and error together), newline-separated.
    pub output: String,
}

impl HookRun {
    /// "the before-hook 'CMD' ENDED NOTE; its last output: …": one message naming the hook.
    pub fn describe(&self, note: &str) -> String {
        let mut msg = format!(
            "the {}-hook '{}' {}{note}",
            self.phase.name(),
            self.command,
            self.ended
        );
        if !self.output.is_empty() {
            msg.push_str("; its last output:\n  ");
            msg.push_str(&self.output.replace('\n', "\n  "));
        }
        msg
    }
}

/// Where a backup runs, for the hooks' environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'a> {
    /// The repository's location.
    pub repo: &'a str,
    /// The policy the backup runs for.
    pub policy: Option<&'a str>,
    /// The policy's target name.
    pub target: Option<&'a str>,
}

/// Runs `backup` between `hooks`' before- and after-hooks (see the module docs), reporting
/// each hook run to `record` as it ends. `cancel` stops the before-hooks (and the backup);
/// after-hooks run to their own timeouts even then.
///
/// Returns the outcome with its `hooks` filled, and beside it the error of an after-hook
/// that failed with `abort` after a snapshot was saved (the caller records the snapshot,
/// then fails). An aborting before-hook, or a failed backup, is the error.
pub fn around(
    hooks: &Hooks,
    ctx: &Context<'_>,
    cancel: &Cancel,
    mut record: impl FnMut(&HookRun),
    backup: impl FnOnce() -> Result<BackupOutcome>,
) -> Result<(BackupOutcome, Option<Error>)> {
    let mut runs = Vec::new();
    let mut ran = |r: HookRun| {
        record(&r);
        runs.push(r);
    };
    let base = environment(ctx, Phase::Before);
    let res = match run_phase(&hooks.before, Phase::Before, &base, cancel, &mut ran) {
        Ok(()) => backup(),
        Err(e) => Err(e),
    };
    let mut env = environment(ctx, Phase::After);
    match &res {
        Ok(o) => {
            let result = if o.warnings.is_empty() {
                "success"
            } else {
                "partial"
            };
            env.push(("BACKSTOP_RESULT", result.into()));
            env.push(("BACKSTOP_SNAPSHOT", o.id.to_hex()));
        }
        Err(e) => {
            env.push(("BACKSTOP_RESULT", "failure".into()));
            env.push(("BACKSTOP_ERROR", crate::error::chain(e)));
        }
    }
    let after = run_phase(&hooks.after, Phase::After, &env, &Cancel::new(), &mut ran);
    let mut o = res?;
    o.hooks = runs;
    let after = after.err().map(|e| {
        e.context(format!(
            "snapshot {} was saved, but an after-hook failed",
            o.id.short()
        ))
    });
    Ok((o, after))
}

/// The variables every hook of `phase` gets.
fn environment(ctx: &Context<'_>, phase: Phase) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("BACKSTOP_HOOK", phase.name().to_string()),
        ("BACKSTOP_REPO", ctx.repo.to_string()),
    ];
    if let Some(p) = ctx.policy {
        env.push(("BACKSTOP_POLICY", p.to_string()));
    }
    if let Some(t) = ctx.target {
        env.push(("BACKSTOP_TARGET", t.to_string()));
    }
    env
}

/// Runs `hooks` in order. A before-hook failing with abort stops the phase; after-hooks all
/// run, and the first aborting failure is returned at the end. Failures that continue are
/// logged as warnings.
fn run_phase(
    hooks: &[Hook],
    phase: Phase,
    env: &[(&str, String)],
    cancel: &Cancel,
    ran: &mut impl FnMut(HookRun),
) -> Result<()> {
    let mut first = None;
    for hook in hooks {
        let r = run_one(hook, phase, env, cancel);
        if r.ok {
            ran(r);
            continue;
        }
        let on_failure = hook.on_failure.unwrap_or(phase.default_on_failure());
        let msg = r.describe(match (on_failure, phase) {
            (OnFailure::Continue, _) => " (on-failure = continue: going on)",
            (OnFailure::Abort, Phase::Before) => " (on-failure = abort: no backup was made)",
            (OnFailure::Abort, Phase::After) => "",
        });
        ran(r);
        if let Err(e) = cancel.check() {
            return Err(e.context(msg));
        }
        match (on_failure, phase) {
            (OnFailure::Continue, _) => tracing::warn!("{msg}"),
            (OnFailure::Abort, Phase::Before) => return Err(Error::new(ErrorKind::Io, msg)),
            (OnFailure::Abort, Phase::After) => {
                tracing::error!("{msg}");
                first.get_or_insert_with(|| Error::new(ErrorKind::Io, msg));
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Runs one hook to its end, its timeout or cancellation.
fn run_one(hook: &Hook, phase: Phase, env: &[(&str, String)], cancel: &Cancel) -> HookRun {
    let started = Instant::now();
    let mut run = HookRun {
        phase,
        command: hook.command.clone(),
        ok: false,
        exit_code: None,
        ended: String::new(),
        duration_ms: 0,
        output: String::new(),
    };
    let finish = |mut run: HookRun| {
        run.duration_ms = started.elapsed().as_millis().try_into().unwrap_or(i64::MAX);
        run
    };
    let what = format!("hooks.{}", phase.name());
    let argv = match command::split(&what, &hook.command, "sh -c 'sync'") {
        Ok(a) => a,
        Err(e) => {
            run.ended = format!("could not be run: {e}");
            return finish(run);
        }
    };
    let tail = Arc::new(Tail::new(OUTPUT_LINES));
    let child = std::io::pipe().and_then(|(reader, writer)| {
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .process_group(0);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("BACKSTOP_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn()?;
        // `cmd` holds the pipe's write ends: dropped, the output ends when the hook's does.
        drop(cmd);
        Ok((child, reader))
    });
    let (mut child, reader) = match child {
        Ok(c) => c,
        Err(e) => {
            run.ended = format!("could not be started: {e}");
            return finish(run);
        }
    };
    let pid = child.id();
    // The output is read on a thread of its own that is not waited for beyond a grace
    // period: something the hook left running in the background may hold the pipe open.
    let (read_done, output_ended) = crossbeam_channel::bounded::<()>(1);
    let span = tracing::Span::current();
    let tail2 = Arc::clone(&tail);
    std::thread::spawn(move || {
        span.in_scope(|| tail2.read_from(reader, "hook output"));
        let _ = read_done.send(());
    });
    let timed_out = AtomicBool::new(false);
    let span = &tracing::Span::current();
    let status = std::thread::scope(|s| {
        let (done, ended) = crossbeam_channel::bounded::<()>(0);
        let timed = &timed_out;
        s.spawn(move || {
            span.in_scope(|| command::watchdog(pid, Some(hook.timeout), ended, timed, cancel))
        });
        let status = command::wait(&mut child, &hook.command);
        drop(done);
        status
    });
    let stopped = timed_out.load(Ordering::Relaxed) || cancel.is_cancelled();
    if stopped {
        // The watchdog killed the hook; its process group goes too.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let output_open = output_ended.recv_timeout(OUTPUT_GRACE).is_err();
    run.output = tail.lines().join("\n");
    match status {
        Err(e) => run.ended = crate::error::chain(&e),
        Ok(_) if timed_out.load(Ordering::Relaxed) => {
            run.ended = format!(
                "timed out after {} and was stopped",
                command::humantime(hook.timeout)
            );
        }
        Ok(_) if cancel.is_cancelled() => {
            run.ended = format!("was stopped by {}", cancel.reason());
        }
        Ok(status) => {
            run.exit_code = status.code().map(i64::from);
            match command::ended_badly(status) {
                Some(why) => run.ended = why,
                None => {
                    run.ok = true;
                    run.ended = "exited with status 0".into();
                }
            }
        }
    }
    if output_open {
        run.ended.push_str(&format!(
            " (what it left running still held its output after {}; not waited for)",
            command::humantime(OUTPUT_GRACE)
        ));
    }
    finish(run)
}
