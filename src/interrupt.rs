//! SIGINT and SIGTERM: the process's cancellation token ([`token`]), which the CLI hands to
//! the engines, and cleanups (lock objects, temporary files) that run before the process
//! exits on a signal.
//!
//! The signal handler only sets a flag and writes the signal number to a pipe (both
//! async-signal-safe); a thread reading the pipe cancels the token and does the rest:
//! - while an operation that checks the token is running ([`cooperate`]), the first signal
//!   lets it stop at its next step, remove what it half-wrote and release its lock itself;
//!   a second signal, or [`GRACE`] without it finishing, stops the process at once;
//! - otherwise the process stops at once.
//!
//! Stopping at once runs every registered cleanup ([`on_exit`]: repository locks remove
//! their lock object, restores their temporary files) and exits with [`EXIT_CODE`]. So
//! any command interrupted by SIGINT or SIGTERM leaves no lock behind. Only SIGKILL (or a
//! crash) does, and a dead process's lock is stale for everyone else on its host.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Exit status of a process stopped by SIGINT or SIGTERM (the shell's 128 + SIGINT).
pub const EXIT_CODE: i32 = 130;

/// How long an operation that checks the token gets to stop on its own.
pub const GRACE: Duration = Duration::from_secs(20);

static CANCELLED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static COOPERATING: AtomicUsize = AtomicUsize::new(0);
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
static NEXT_CLEANUP: AtomicU64 = AtomicU64::new(1);
type Cleanup = Box<dyn Fn() + Send>;
static CLEANUPS: Mutex<Vec<(u64, Cleanup)>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

/// Whether SIGINT or SIGTERM arrived. Engines do not ask this: they check the
/// [`Cancel`](crate::cancel::Cancel) token they were given ([`token`], or a child of it).
pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// The process's cancellation token: SIGINT and SIGTERM cancel it (the CLI hands it to the
/// engines; the daemon makes one child per job).
pub fn token() -> crate::cancel::Cancel {
    static TOKEN: std::sync::OnceLock<crate::cancel::Cancel> = std::sync::OnceLock::new();
    TOKEN.get_or_init(crate::cancel::Cancel::new).clone()
}

/// The signal that cancelled the process, by name.
pub fn signal_name() -> &'static str {
    match SIGNAL.load(Ordering::SeqCst) {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Registers `f` to run if the process is stopped by a signal, until the returned guard
/// is dropped (its owner cleaned up itself, or no longer needs it).
#[must_use = "the cleanup is unregistered when the guard is dropped"]
pub fn on_exit(f: impl Fn() + Send + 'static) -> OnExit {
    let id = NEXT_CLEANUP.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut c) = CLEANUPS.lock() {
        c.push((id, Box::new(f)));
    }
    OnExit(id)
}

/// A registered cleanup; dropping it unregisters it.
pub struct OnExit(u64);

impl Drop for OnExit {
    fn drop(&mut self) {
        if let Ok(mut c) = CLEANUPS.lock() {
            c.retain(|(i, _)| *i != self.0);
        }
    }
}

/// While held, a signal lets the holder stop on its own (it checks [`token`]).
pub struct Cooperation(());

/// Declares that the caller runs an operation checking [`token`], which cleans up after
/// itself once cancelled.
pub fn cooperate() -> Cooperation {
    COOPERATING.fetch_add(1, Ordering::SeqCst);
    Cooperation(())
}

impl Drop for Cooperation {
    fn drop(&mut self) {
        COOPERATING.fetch_sub(1, Ordering::SeqCst);
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
    CANCELLED.store(true, Ordering::SeqCst);
    let fd = PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` outlives the call.
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Installs the SIGINT and SIGTERM handling (once; later calls do nothing). Without it
/// the signals keep their default action.
pub fn install() {
    INSTALL.call_once(|| {
        if let Err(e) = try_install() {
            tracing::warn!("cannot handle SIGINT/SIGTERM (locks may stay behind): {e}");
        }
    });
}

fn try_install() -> std::io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    use std::os::fd::IntoRawFd;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (r, w) = (r.into_raw_fd(), w.into_raw_fd());
    PIPE_WRITE.store(w, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || watch(r))?;
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only does async-signal-safe things (atomics and write(2)).
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Waits up to `timeout` (forever if `None`) for a signal byte on `fd`; true if one came.
fn wait(fd: i32, timeout: Option<Duration>) -> bool {
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n <= 0 {
        return false;
    }
    let mut b = 0u8;
    // SAFETY: reads one byte into `b`.
    unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) == 1 }
}

fn watch(fd: i32) {
    let mut first: Option<Instant> = None;
    loop {
        let timeout = first.map(|t| GRACE.saturating_sub(t.elapsed()));
        let got = wait(fd, timeout);
        if !got && first.is_some_and(|t| t.elapsed() >= GRACE) {
            stop_now();
        }
        if !got {
            continue;
        }
        token().cancel(signal_name());
        if first.is_none() && COOPERATING.load(Ordering::SeqCst) > 0 {
            first = Some(Instant::now());
            say(format_args!(
                "{}: stopping after the current step (send it again to stop at once)",
                signal_name()
            ));
            continue;
        }
        stop_now();
    }
}

/// A line on standard error; a closed standard error must not stop the clean-up.
fn say(msg: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Runs the cleanups and exits.
fn stop_now() -> ! {
    say(format_args!("error: interrupted by {}", signal_name()));
    let cleanups = match CLEANUPS.lock() {
        Ok(mut c) => std::mem::take(&mut *c),
        Err(_) => Vec::new(),
    };
    for (_, f) in cleanups {
        f();
    }
    std::process::exit(EXIT_CODE)
}
