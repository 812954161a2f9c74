//! Policy files: one source, its schedules and the targets it is copied to; and the shared
//! settings file (`backstop.toml`) that names targets and the catalog. Parsed strictly:
//! unknown keys and bad values are errors naming the file, line and column.

pub mod retention;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::config::PasswordSource;
use crate::error::{Error, Result};

/// A policy file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Policy {
    /// Unique name (also recorded in snapshots).
    pub name: String,
    /// What it protects, for people.
    #[serde(default)]
    pub description: String,
    /// Names of targets (from `backstop.toml`) each backup is stored to.
    pub targets: Vec<String>,
    /// What to back up.
    pub source: Source,
    /// When to back up.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// zstd level, 0 to store uncompressed.
    #[serde(default = "default_compression")]
    pub compression: i32,
    /// Tags added to every snapshot.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Which snapshots `forget` keeps.
    #[serde(default)]
    pub retention: retention::KeepRules,
}

fn default_compression() -> i32 {
    3
}

/// The source of a policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Source {
    /// File trees.
    Files(FilesSource),
}

/// A `files` source.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FilesSource {
    /// Paths to back up (relative ones are relative to the policy file).
    pub paths: Vec<PathBuf>,
    /// Globs to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// If set, only files matching these globs.
    #[serde(default)]
    pub include: Vec<String>,
    /// Stay on the file system of each path.
    #[serde(default)]
    pub one_file_system: bool,
    /// Ignore inode numbers when comparing with the parent snapshot.
    #[serde(default)]
    pub ignore_inode: bool,
}

/// Backup schedules: cron expressions with seconds (`sec min hour dom month dow`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Schedule {
    /// IANA time zone the expressions are in.
    #[serde(default = "utc")]
    pub timezone: String,
    /// When to run full backups.
    pub full: Option<String>,
    /// When to run incremental backups.
    pub incremental: Option<String>,
}

fn utc() -> String {
    "UTC".into()
}

/// The shared settings file, `backstop.toml`, beside the policies.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Catalog settings.
    pub catalog: Option<CatalogSettings>,
    /// Named targets.
    pub targets: BTreeMap<String, Target>,
}

/// `[catalog]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CatalogSettings {
    /// Database URL.
    pub url: String,
}

/// A named target: a repository and how to open it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Target {
    /// Repository location (a path; relative to `backstop.toml`).
    pub repo: String,
    /// Where the passphrase comes from.
    #[serde(flatten)]
    pub password: PasswordSource,
}

/// A policy with its settings, paths resolved.
#[derive(Clone, Debug)]
pub struct LoadedPolicy {
    /// The policy.
    pub policy: Policy,
    /// Its file.
    pub path: PathBuf,
    /// Shared settings found beside it (empty if none).
    pub settings: Settings,
    /// Its targets, resolved by name.
    pub targets: Vec<(String, Target)>,
}

/// Parses TOML into `T`, turning errors into "file:line:column: message".
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                (line, col)
            })
            .unwrap_or((1, 1));
        Error::config(format!("{}:{line}:{col}: {}", path.display(), e.message()))
    })
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))
}

/// Loads a policy file and the `backstop.toml` beside it, and validates both.
pub fn load(path: &Path) -> Result<LoadedPolicy> {
    let mut policy: Policy = parse_toml(path, &read(path)?)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let settings_path = dir.join("backstop.toml");
    let mut settings: Settings = if settings_path.exists() {
        parse_toml(&settings_path, &read(&settings_path)?)?
    } else {
        Settings::default()
    };
    let err = |msg: String| Error::config(format!("{}: {msg}", path.display()));
    if policy.name.trim().is_empty() {
        return Err(err("name must not be empty".into()));
    }
    if policy.targets.is_empty() {
        return Err(err("targets: name at least one target".into()));
    }
    if !(0..=22).contains(&policy.compression) {
        return Err(err(format!(
            "compression {} is not a zstd level (0-22)",
            policy.compression
        )));
    }
    let Source::Files(files) = &mut policy.source;
    if files.paths.is_empty() {
        return Err(err("source.paths: give at least one path".into()));
    }
    for p in &mut files.paths {
        if p.as_os_str().is_empty() {
            return Err(err("source.paths: an empty path".into()));
        }
        // Normalized as backups record them, so the policy's group is the same whichever
        // way a path is written (`t1/c/`, `t1/a/../c`).
        let joined = if p.is_relative() {
            dir.join(&*p)
        } else {
            p.clone()
        };
        *p = crate::source::files::normalize(&joined)
            .map_err(|e| err(format!("source.paths: {}: {e}", joined.display())))?;
    }
    for (key, globs) in [("exclude", &files.exclude), ("include", &files.include)] {
        for g in globs {
            if g.trim().is_empty() {
                return Err(err(format!(
                    "source.{key}: empty pattern '{g}' (it would match every path)"
                )));
            }
            globset::Glob::new(g)
                .map_err(|e| err(format!("source.{key}: invalid glob '{g}': {e}")))?;
        }
    }
    if let Some(s) = &policy.schedule {
        validate_schedule(s).map_err(err)?;
    }
    policy
        .retention
        .validate()
        .map_err(|e| err(format!("retention: {e}")))?;
    for t in settings.targets.values_mut() {
        if !t.repo.contains("://") && Path::new(&t.repo).is_relative() {
            t.repo = dir.join(&t.repo).display().to_string();
        }
        if let Some(f) = &mut t.password.password_file
            && f.is_relative()
        {
            *f = dir.join(&*f);
        }
    }
    let mut targets = Vec::new();
    for name in &policy.targets {
        let t = settings.targets.get(name).ok_or_else(|| {
            err(format!(
                "target '{name}' is not defined in {}",
                settings_path.display()
            ))
        })?;
        targets.push((name.clone(), t.clone()));
    }
    Ok(LoadedPolicy {
        policy,
        path: path.to_path_buf(),
        settings,
        targets,
    })
}

impl Policy {
    /// The time zone of the policy's schedule (UTC without one).
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.schedule
            .as_ref()
            .and_then(|s| s.timezone.parse().ok())
            .unwrap_or(chrono_tz::UTC)
    }
}

fn validate_schedule(s: &Schedule) -> std::result::Result<(), String> {
    s.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
        format!(
            "schedule.timezone '{}' is not a known time zone",
            s.timezone
        )
    })?;
    for (what, expr) in [("full", &s.full), ("incremental", &s.incremental)] {
        if let Some(e) = expr {
            cron::Schedule::from_str(e).map_err(|err| {
                format!("schedule.{what} '{e}' is not a valid cron expression: {err}")
            })?;
        }
    }
    Ok(())
}
