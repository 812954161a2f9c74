//! Global settings: where the data directory and catalog are, and where passphrases come from.
//!
//! Nothing here reads the process environment: callers pass a lookup (the binary passes
//! `std::env::var_os`; the daemon and tests can pass their own).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Looks an environment variable up.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

use crate::error::{Error, Result};

/// The data directory: `$BACKSTOP_DATA_DIR`, else `$XDG_DATA_HOME/backstop`, else
/// `~/.local/share/backstop`.
pub fn default_data_dir(env: Env) -> PathBuf {
    if let Some(d) = env("BACKSTOP_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = env("XDG_DATA_HOME") {
        return PathBuf::from(d).join("backstop");
    }
    let home = env("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    home.join(".local/share/backstop")
}

/// The default catalog URL: a SQLite file in the data directory.
pub fn default_catalog_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("catalog.db").display())
}

/// Where a repository passphrase comes from; never from a policy file itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct PasswordSource {
    /// Name of an environment variable holding it.
    pub password_env: Option<String>,
    /// A file whose first line is it.
    pub password_file: Option<PathBuf>,
    /// A command printing it on standard output.
    pub password_command: Option<String>,
}

impl PasswordSource {
    /// Whether no source is configured.
    pub fn is_empty(&self) -> bool {
        self.password_env.is_none()
            && self.password_file.is_none()
            && self.password_command.is_none()
    }

    /// Reads the passphrase (`env` looks up `password_env`).
    pub fn read(&self, env: Env) -> Result<Vec<u8>> {
        if let Some(cmd) = &self.password_command {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| Error::config(format!("running password command '{cmd}': {e}")))?;
            if !out.status.success() {
                return Err(Error::config(format!(
                    "password command '{cmd}' failed ({})",
                    out.status
                )));
            }
            return first_line(out.stdout, &format!("password command '{cmd}'"));
        }
        if let Some(f) = &self.password_file {
            let b = std::fs::read(f).map_err(|e| {
                Error::config(format!("reading password file {}: {e}", f.display()))
            })?;
            return first_line(b, &format!("password file {}", f.display()));
        }
        if let Some(var) = &self.password_env {
            return match env(var) {
                Some(v) if !v.is_empty() => Ok(std::os::unix::ffi::OsStringExt::into_vec(v)),
                _ => Err(Error::config(format!(
                    "environment variable {var} (the repository password) is not set"
                ))),
            };
        }
        Err(Error::config(
            "the repository is encrypted: give its password with BACKSTOP_PASSWORD, --password-file or --password-command",
        ))
    }
}

fn first_line(bytes: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    let line: Vec<u8> = bytes
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .to_vec();
    let line = line.strip_suffix(b"\r").map(<[u8]>::to_vec).unwrap_or(line);
    if line.is_empty() {
        return Err(Error::config(format!("{what} gave an empty password")));
    }
    Ok(line)
}
