//! Progress bars on a terminal (indicatif), nothing otherwise.

use indicatif::{ProgressBar, ProgressStyle};

use backstop::progress::Progress;

/// A progress bar on standard error.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar if standard error is a terminal and progress is wanted, else `None`.
    pub fn new(enabled: bool) -> Option<Bar> {
        use std::io::IsTerminal;
        (enabled && std::io::stderr().is_terminal()).then(|| Bar(ProgressBar::new_spinner()))
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>) {
        let style = match total {
            Some(t) => {
                self.0.set_length(t);
                "{prefix:>8} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            }
            None => "{prefix:>8} [{elapsed_precise}] {spinner} {bytes} {bytes_per_sec}, {msg}",
        };
        self.0
            .set_style(ProgressStyle::with_template(style).expect("valid template"));
        self.0.set_prefix(name.to_string());
        self.0.set_position(0);
        self.0
            .enable_steady_tick(std::time::Duration::from_millis(200));
    }

    fn bytes(&self, n: u64) {
        self.0.inc(n);
    }

    fn items(&self, n: u64) {
        let done = self
            .0
            .message()
            .split(' ')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        self.0.set_message(format!("{} items", done + n));
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
