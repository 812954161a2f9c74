//! Named crash points for crash-safety tests: once [`arm`]ed with `name[:n]` (the binary
//! takes it from `BACKSTOP_CRASH_AT`), the process is killed with SIGKILL the n-th time
//! (default first) execution reaches `hit(name)`.
//!
//! Unset (always, in production), a hit costs one relaxed atomic load and a disabled log event.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static CRASH_AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

/// Arms the crash point `spec` (`name` or `name:n`); the first call wins.
pub fn arm(spec: &str) {
    let parsed = match spec.split_once(':') {
        Some((name, n)) => n.parse().ok().map(|n| (name.to_string(), n)),
        None => Some((spec.to_string(), 1)),
    };
    let _ = CRASH_AT.set(parsed);
}

fn target() -> &'static Option<(String, u64)> {
    CRASH_AT.get_or_init(|| None)
}

/// Marks a crash point named `name`; logged as `phase NAME` at debug level under the
/// target `backstop::phase` (tests record how far a killed process got).
pub fn hit(name: &str) {
    tracing::debug!(target: "backstop::phase", "phase {name}");
    if let Some((want, n)) = target()
        && want == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
