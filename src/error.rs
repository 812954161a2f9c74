//! The crate's error type: a kind that says what failed and whether a retry can help.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, at the level an operator (or a script reading the exit code) cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad arguments, policy or configuration.
    Config,
    /// There is no repository at the given location.
    RepoNotFound,
    /// The passphrase does not open any key of the repository.
    WrongPassword,
    /// Another process holds a conflicting lock.
    Locked,
    /// Data in the repository is corrupt, missing or not in a format we understand.
    Corrupt,
    /// A storage operation failed.
    Storage,
    /// Reading the source or writing the restore destination failed.
    Io,
    /// A restore would have written outside its destination.
    Unsafe,
    /// The catalog database failed.
    Catalog,
    /// The operation finished but some items failed (named in the output).
    Partial,
    /// SIGINT or SIGTERM stopped the operation (it cleaned up after itself).
    Interrupted,
}

impl ErrorKind {
    /// A stable name, for JSON output and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::RepoNotFound => "repository-not-found",
            ErrorKind::WrongPassword => "wrong-password",
            ErrorKind::Locked => "locked",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Storage => "storage",
            ErrorKind::Io => "io",
            ErrorKind::Unsafe => "unsafe",
            ErrorKind::Catalog => "catalog",
            ErrorKind::Partial => "partial",
            ErrorKind::Interrupted => "interrupted",
        }
    }
}

/// The crate's error: a kind, a message carrying the context, and the source.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    temporary: bool,
    not_found: bool,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` described by `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            temporary: false,
            not_found: false,
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Marks the error as transient: the same operation may succeed when retried.
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }

    /// Marks the error as permanent: retrying the same operation cannot help.
    pub fn permanent(mut self) -> Self {
        self.temporary = false;
        self
    }

    /// Marks the error as "the object does not exist" (permanent).
    pub fn not_found(mut self) -> Self {
        self.not_found = true;
        self.temporary = false;
        self
    }

    /// Whether the error says an object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.not_found
    }

    /// Sets whether retrying may help.
    pub fn set_temporary(&mut self, temporary: bool) {
        self.temporary = temporary;
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the operation may help (temporary), or cannot (permanent: the
    /// operator has to act, or the data is not there).
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// Prefixes the message with more context, keeping kind and source.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The process exit code for this error (documented in the README).
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Config => 2,
            ErrorKind::Partial => 3,
            ErrorKind::RepoNotFound => 10,
            ErrorKind::Locked => 11,
            ErrorKind::WrongPassword => 12,
            ErrorKind::Corrupt => 13,
            ErrorKind::Interrupted => crate::interrupt::EXIT_CODE,
            _ => 1,
        }
    }

    /// Shorthand for a configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// Shorthand for a corruption error.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// An I/O error on a local path, naming the path and the action.
    pub fn io(action: &str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        let path = path.into();
        Self::new(ErrorKind::Io, format!("{action} {}", path.display())).with_source(err)
    }
}

impl From<opendal::Error> for Error {
    /// One sentence: the root cause (e.g. "No space left on device (os error 28)"), not
    /// OpenDAL's dump of operation, context and source; that goes to the debug log. Callers
    /// add what was being done to which object.
    fn from(err: opendal::Error) -> Self {
        tracing::debug!("storage error: {err:?}");
        let kind = match err.kind() {
            opendal::ErrorKind::NotFound => ErrorKind::Corrupt,
            _ => ErrorKind::Storage,
        };
        let mut root: Option<&(dyn std::error::Error + 'static)> = None;
        let mut cur = std::error::Error::source(&err);
        while let Some(c) = cur {
            root = Some(c);
            cur = c.source();
        }
        let message = match root {
            Some(r) => r.to_string(),
            None if !err.message().is_empty() => err.message().to_string(),
            None => err.kind().to_string(),
        };
        let mut e = Error::new(kind, message);
        // An OS error stays the source, so callers can tell a read-only or full disk.
        if let Some(io) = root.and_then(|r| r.downcast_ref::<std::io::Error>()) {
            e = e.with_source(match io.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(io.kind(), io.to_string()),
            });
        }
        e.temporary = err.is_temporary();
        e.not_found = err.kind() == opendal::ErrorKind::NotFound;
        e
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, "I/O error").with_source(err)
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Error::new(ErrorKind::Catalog, "catalog database").with_source(err)
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        Error::new(ErrorKind::Catalog, "catalog migration").with_source(err)
    }
}

/// The error with its whole cause chain on one line: `a: b: c`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
