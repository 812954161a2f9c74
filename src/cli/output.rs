//! Output: standard output that a closed pipe ends quietly, warnings that follow the log
//! format, sizes, times and aligned tables.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static LOG_JSON: AtomicBool = AtomicBool::new(false);

/// Writes one line to standard output. Once the reader has gone (`backstop ls | head`),
/// further output is dropped: the command ends normally (exit 0 if it succeeded) instead of
/// panicking like `println!`.
pub fn out_line(args: std::fmt::Arguments) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}").and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `println!` for command output: see [`out_line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::out_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Logs are JSON lines (`--log-format json`): warnings become log events too.
pub fn set_log_json(on: bool) {
    LOG_JSON.store(on, Ordering::Relaxed);
}

/// Whether logs are JSON lines.
pub fn log_json() -> bool {
    LOG_JSON.load(Ordering::Relaxed)
}

/// A warning for the operator on standard error (a JSON log event with `--log-format json`).
/// Errors writing standard error are ignored: there is nowhere left to report them.
pub fn warn(msg: impl std::fmt::Display) {
    if log_json() {
        tracing::warn!("{msg}");
    } else {
        let _ = writeln!(std::io::stderr().lock(), "warning: {msg}");
    }
}

/// A message for the operator on standard error, e.g. which snapshot a restore uses.
pub fn note(msg: impl std::fmt::Display) {
    stderr_line("INFO", msg);
}

/// Something that failed while the command went on, e.g. a file that could not be restored.
pub fn failure(msg: impl std::fmt::Display) {
    stderr_line("ERROR", msg);
}

/// Writes `msg` to standard error: as it is, or as a JSON log line (the shape tracing's JSON
/// lines have) with `--log-format json`, at `level` whatever the log filter says. Errors
/// writing standard error are ignored: there is nowhere left to report them.
fn stderr_line(level: &str, msg: impl std::fmt::Display) {
    let line = if log_json() {
        serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "level": level,
            "fields": {"message": msg.to_string()},
            "target": "backstop",
        })
        .to_string()
    } else {
        msg.to_string()
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A time for tables: local time to the second, one format for every command (JSON output
/// carries RFC 3339).
pub fn time<Tz: chrono::TimeZone>(t: &chrono::DateTime<Tz>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// An RFC 3339 time as stored in the catalog, for tables ([`time`]); unparseable ones as they are.
pub fn time_str(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| time(&t))
        .unwrap_or_else(|_| rfc3339.to_string())
}

/// Bytes as a short human size (binary units).
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Prints rows as a table with a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        outln!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        line(r.clone());
    }
}

/// Prints a value as pretty JSON.
pub fn json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => outln!("{s}"),
        Err(e) => warn(format_args!("cannot print JSON output: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::size(12), "12 B");
        assert_eq!(super::size(1536), "1.5 KiB");
        assert_eq!(super::size(3 << 30), "3.0 GiB");
    }
}
