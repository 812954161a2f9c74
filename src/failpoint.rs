//! Named crash points for crash-safety tests: `BACKSTOP_CRASH_AT=name[:n]` kills the process
//! with SIGKILL at the n-th time (default first) execution reaches `hit(name)`.
//!
//! Unset (always, in production), a hit costs one relaxed atomic load and a disabled log event.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static CRASH_AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn target() -> &'static Option<(String, u64)> {
    CRASH_AT.get_or_init(|| {
        let v = std::env::var("BACKSTOP_CRASH_AT").ok()?;
        let (name, n) = match v.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().ok()?),
            None => (v, 1),
        };
        Some((name, n))
    })
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
