//! The `backstop` binary: parse arguments, set up logging, run, map errors to exit codes.

use clap::Parser;

mod cli;

use cli::{Cli, LogFormat};

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    if let Ok(spec) = std::env::var("BACKSTOP_CRASH_AT") {
        backstop::failpoint::arm(&spec);
    }
    let level = match cli.global.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BACKSTOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("backstop={level}")));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Colour only for a terminal: logs are read from files and journals too.
    let sub = sub.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.global.log_format {
        LogFormat::Text => sub.without_time().with_target(false).init(),
        LogFormat::Json => {
            cli::set_log_json(true);
            sub.json().init()
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match cli::run(&cli, rt.handle().clone()) {
        Ok(()) => 0,
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            report(&cli, &e);
            e.exit_code()
        }
    };
    drop(rt);
    std::process::exit(code);
}

/// Prints how the command failed: one line with the cause chain; a JSON object (on standard
/// error, like restic's) with `--json` or `--log-format json`. A partial success is a warning:
/// what failed was named above it.
fn report(cli: &Cli, e: &backstop::Error) {
    use std::io::Write;
    let message = backstop::error::chain(e);
    let line = if cli.global.json || matches!(cli.global.log_format, LogFormat::Json) {
        serde_json::json!({"error": {
            "kind": e.kind().name(),
            "message": message,
            "exit_code": e.exit_code(),
        }})
        .to_string()
    } else if e.kind() == backstop::ErrorKind::Partial {
        format!("warning: {message}")
    } else {
        format!("error: {message}")
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn is_broken_pipe(e: &backstop::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// Packs and chunks are large, short-lived buffers passed between threads. glibc's defaults
/// (a dynamic mmap threshold up to 32 MiB, an arena per thread) keep such freed memory
/// around and fragmented; a fixed 512 KiB threshold returns chunk and pack buffers to the
/// system as soon as they are freed. On the 2 GiB set of benches/compare this cut the
/// backup's peak RSS from ~230 MiB to ~120 MiB for ~0.5 s more system time.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}
