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
use crate::source::db::Engine;

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
    /// Commands run before and after each backup (`[[hooks.before]]`, `[[hooks.after]]`).
    #[serde(default)]
    pub hooks: crate::hooks::Hooks,
}

fn default_compression() -> i32 {
    crate::pipeline::compress::DEFAULT_LEVEL
}

/// The source of a policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Source {
    /// File trees.
    Files(FilesSource),
    /// PostgreSQL databases.
    Postgres(DatabaseSource),
    /// MariaDB/MySQL databases.
    Mysql(DatabaseSource),
}

/// A `postgres` or `mysql` source. The password comes from `password-env` or
/// `password-file` (or PostgreSQL's `~/.pgpass`), never from the URL.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DatabaseSource {
    /// The server, e.g. `postgres://postgres@127.0.0.1:5432` (a path names one database).
    pub url: String,
    /// Databases to dump; none: the URL's database, or every one on the server.
    #[serde(default)]
    pub databases: Vec<String>,
    /// `logical` (dumps) or `physical` (PostgreSQL base backups).
    #[serde(default)]
    pub mode: DatabaseMode,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file whose first line is the password (relative to the policy file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Directory of the client tools (`pg_dump`, `mariadb-dump`, …); default: `PATH`.
    #[serde(default)]
    pub client_bin: Option<PathBuf>,
    /// Stop a dump (and the backup) after this long, e.g. "2h".
    #[serde(
        default,
        deserialize_with = "crate::hooks::deserialize_optional_duration"
    )]
    pub timeout: Option<std::time::Duration>,
}

/// How a database is backed up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatabaseMode {
    /// `pg_dump` / `mariadb-dump` per database.
    #[default]
    Logical,
    /// A PostgreSQL base backup (WAL archived by `wal-push`).
    Physical,
}

impl DatabaseSource {
    /// The engine and source options this source backs up with (`env` reads `password-env`).
    fn options(
        &self,
        engine: Engine,
        env: crate::config::Env,
    ) -> Result<crate::backup::SourceOptions> {
        use crate::backup::SourceOptions;
        use crate::source::db::{Connection, DbPassword, DbUrl, Origin};
        let (url, _) = DbUrl::parse(engine, &self.url, Origin::Policy)?;
        let pw = DbPassword {
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
        };
        Ok(SourceOptions::Database(crate::source::db::DbOptions {
            conn: Connection::new(url, &pw, env)?,
            databases: self.databases.clone(),
            bin_dir: self.client_bin.clone(),
            timeout: self.timeout,
            physical: self.mode == DatabaseMode::Physical,
        }))
    }
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
///
/// An encrypted target (the default) names exactly one password source: `password-env`,
/// `password-file` or `password-command`. A repository meant to be unencrypted says so with
/// `encrypted = false` and names none.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Target {
    /// Repository location (a path; relative to `backstop.toml`).
    pub repo: String,
    /// Whether the repository is encrypted (and so needs a password source).
    #[serde(default = "yes")]
    pub encrypted: bool,
    /// Where the passphrase comes from.
    #[serde(flatten)]
    pub password: PasswordSource,
}

fn yes() -> bool {
    true
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

impl LoadedPolicy {
    /// The one resolved value a backup of this policy runs with: the policy's source and
    /// settings, with what the command line adds. The policy's paths; excludes, includes,
    /// tags and hooks of both (the policy's hooks first); `one-file-system` and
    /// `ignore-inode` if either says so; the policy's compression and name; the rest (full,
    /// threads, lock wait, cancellation) from `flags`. A database source's password is
    /// read here (`env` looks up `password-env`).
    pub fn backup_options(
        &self,
        flags: &crate::backup::BackupOptions,
        env: crate::config::Env,
    ) -> Result<crate::backup::BackupOptions> {
        use crate::backup::SourceOptions;
        let source = match &self.policy.source {
            Source::Files(src) => {
                let mut files = match &flags.source {
                    SourceOptions::Files(f) => f.clone(),
                    _ => Default::default(),
                };
                files.paths = src.paths.clone();
                files.excludes.extend(src.exclude.iter().cloned());
                files.includes.extend(src.include.iter().cloned());
                files.one_file_system |= src.one_file_system;
                files.ignore_inode |= src.ignore_inode;
                SourceOptions::Files(files)
            }
            Source::Postgres(db) => db.options(Engine::Postgres, env)?,
            Source::Mysql(db) => db.options(Engine::Mysql, env)?,
        };
        let mut tags = flags.tags.clone();
        tags.extend(self.policy.tags.iter().cloned());
        Ok(crate::backup::BackupOptions {
            source,
            tags,
            compression: self.policy.compression,
            policy: Some(self.policy.name.clone()),
            hooks: self.policy.hooks.clone().then(&flags.hooks),
            ..flags.clone()
        })
    }
}

/// Problems of a `postgres`/`mysql` source; makes `password-file` and `client-bin` absolute.
fn database_problems(
    db: &mut DatabaseSource,
    engine: Engine,
    dir: &Path,
    err: &mut dyn FnMut(&[&str], String),
) {
    use crate::source::db::{DbUrl, Origin};
    if let Err(e) = DbUrl::parse(engine, &db.url, Origin::Policy) {
        err(&["source", "url"], e.to_string());
    }
    if db.password_env.is_some() && db.password_file.is_some() {
        err(
            &["source", "password-file"],
            "source: give one of password-env and password-file, not both".into(),
        );
    }
    for d in &db.databases {
        if d.is_empty() || d.contains('/') || d.contains('\0') {
            err(
                &["source", "databases"],
                format!("source.databases: '{d}' is not a database name"),
            );
        }
    }
    if db.mode == DatabaseMode::Physical && engine == Engine::Mysql {
        err(
            &["source", "mode"],
            "source.mode: physical backups are for PostgreSQL; a mysql source is logical".into(),
        );
    }
    for p in [&mut db.password_file, &mut db.client_bin]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
}

/// "file:line:column" of a byte offset.
fn position(path: &Path, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{}:{line}:{col}", path.display())
}

/// Finds where keys are written, to point problems found after parsing at their line.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
    doc: Option<toml::Spanned<toml::de::DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        Locator {
            path,
            text,
            doc: toml::de::DeTable::parse(text).ok(),
        }
    }

    /// "file:line:col" of the key at `keys` (or of the deepest part of it that exists).
    fn at(&self, keys: &[&str]) -> String {
        let mut offset = None;
        if let Some(doc) = &self.doc {
            let mut table = Some(doc.get_ref());
            for k in keys {
                let Some(t) = table else { break };
                let Some((key, value)) = t.iter().find(|(key, _)| key.get_ref() == k) else {
                    break;
                };
                offset = Some(key.span().start);
                table = match value.get_ref() {
                    toml::de::DeValue::Table(t) => Some(t),
                    _ => None,
                };
            }
        }
        match offset {
            Some(o) => position(self.path, self.text, o),
            None => self.path.display().to_string(),
        }
    }

    /// The span of the key `name` and its value inside `within` (the span a serde error
    /// gives, which for an unknown key is the whole table holding it).
    fn unknown_key(
        &self,
        name: &str,
        within: &std::ops::Range<usize>,
    ) -> Option<(usize, usize, bool)> {
        fn walk(
            t: &toml::de::DeTable<'_>,
            name: &str,
            within: &std::ops::Range<usize>,
        ) -> Option<(usize, usize, bool)> {
            for (k, v) in t.iter() {
                let ks = k.span();
                let is_table = matches!(v.get_ref(), toml::de::DeValue::Table(_));
                if k.get_ref() == name
                    && ks.start >= within.start
                    && ks.end <= within.end.max(ks.end)
                    && ks.start < within.end.max(ks.start + 1)
                {
                    return Some((ks.start, v.span().end.max(ks.end), is_table));
                }
                match v.get_ref() {
                    toml::de::DeValue::Table(sub) => {
                        if let Some(hit) = walk(sub, name, within) {
                            return Some(hit);
                        }
                    }
                    toml::de::DeValue::Array(a) => {
                        for item in a.iter() {
                            if let toml::de::DeValue::Table(sub) = item.get_ref()
                                && let Some(hit) = walk(sub, name, within)
                            {
                                return Some(hit);
                            }
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        walk(self.doc.as_ref()?.get_ref(), name, within)
    }
}

/// Parses TOML into `T`, turning errors into "file:line:column: message".
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    match parse_toml_all(path, text) {
        (Some(t), p) if p.is_empty() => Ok(t),
        (_, p) => Err(Error::config(p.join("\n"))),
    }
}

/// Parses TOML into `T`, reporting every unknown key (each at its own line) rather than
/// only the first: an unknown key is blanked out and the text parsed again. Returns the
/// value parsed without the unknown keys (if the rest parses), so that it can be checked
/// further, and the problems in the order of the file.
fn parse_toml_all<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> (Option<T>, Vec<String>) {
    let (t, mut found) = parse_unknown_keys_out(path, text);
    found.sort_by_key(|(at, _)| *at);
    (t, found.into_iter().map(|(_, m)| m).collect())
}

fn parse_unknown_keys_out<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> (Option<T>, Vec<(usize, String)>) {
    let loc = Locator::new(path, text);
    let mut work = text.to_string();
    let mut problems = Vec::new();
    for _ in 0..64 {
        let e = match toml::from_str::<T>(&work) {
            Ok(t) => return (Some(t), problems),
            Err(e) => e,
        };
        let span = e.span().unwrap_or(0..0);
        let unknown = e
            .message()
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
            .and_then(|name| loc.unknown_key(name, &span));
        let Some((start, end, is_table)) = unknown else {
            let msg = format!("{}: {}", position(path, text, span.start), e.message());
            problems.push((span.start, msg));
            return (None, problems);
        };
        problems.push((
            start,
            format!("{}: {}", position(path, text, start), e.message()),
        ));
        if is_table {
            // Blanking a table header would move its keys into the table before it.
            return (None, problems);
        }
        // Blank the key and its value (keeping newlines, so positions stay right).
        let blank: String = work[start..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        work.replace_range(start..end, &blank);
    }
    (None, problems)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))
}

/// Loads a policy file and the `backstop.toml` beside it, and validates both. Every problem
/// found is in the error, one per line.
pub fn load(path: &Path) -> Result<LoadedPolicy> {
    load_checked(path).map_err(|e| Error::config(e.join("\n")))
}

/// Checks one file without running anything: a policy, or (named `backstop.toml`) the
/// settings file. Returns what it is, or every problem found.
pub fn check(path: &Path) -> std::result::Result<String, Vec<String>> {
    if path.file_name().is_some_and(|n| n == "backstop.toml") {
        let s = load_settings(path)?;
        return Ok(format!("settings, {} target(s)", s.targets.len()));
    }
    load_checked(path).map(|lp| format!("policy {}", lp.policy.name))
}

/// Loads and validates a settings file (`backstop.toml`), resolving relative paths.
pub fn load_settings(path: &Path) -> std::result::Result<Settings, Vec<String>> {
    match settings_checked(path) {
        (Some(s), p) if p.is_empty() => Ok(s),
        (_, p) => Err(p),
    }
}

/// The settings as far as they parse, and every problem found in them.
fn settings_checked(path: &Path) -> (Option<Settings>, Vec<String>) {
    let text = match read(path) {
        Ok(t) => t,
        Err(e) => return (None, vec![crate::error::chain(&e)]),
    };
    let (settings, mut problems) = parse_toml_all::<Settings>(path, &text);
    let Some(mut settings) = settings else {
        return (None, problems);
    };
    let loc = Locator::new(path, &text);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for (name, t) in &mut settings.targets {
        let given: Vec<&str> = [
            ("password-env", t.password.password_env.is_some()),
            ("password-file", t.password.password_file.is_some()),
            ("password-command", t.password.password_command.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        let at = loc.at(&["targets", name]);
        match (t.encrypted, given.len()) {
            (true, 0) => problems.push(format!(
                "{at}: target '{name}' has no password source: give one of password-env, \
                 password-file or password-command (or encrypted = false for a repository meant to be unencrypted)"
            )),
            (true, 1) | (false, 0) => {}
            (true, _) => problems.push(format!(
                "{}: target '{name}' gives {} password sources ({}): give exactly one",
                loc.at(&["targets", name, given[1]]),
                given.len(),
                given.join(", ")
            )),
            (false, _) => problems.push(format!(
                "{}: target '{name}' is encrypted = false but gives {}: remove one of them",
                loc.at(&["targets", name, "encrypted"]),
                given.join(", ")
            )),
        }
        if !t.repo.contains("://") && Path::new(&t.repo).is_relative() {
            t.repo = dir.join(&t.repo).display().to_string();
        }
        if let Some(f) = &mut t.password.password_file
            && f.is_relative()
        {
            *f = dir.join(&*f);
        }
    }
    if let Some(c) = &settings.catalog
        && !(c.url.starts_with("sqlite:")
            || matches!(
                crate::catalog::Backend::of_url(&c.url),
                Ok(crate::catalog::Backend::Postgres)
            ))
    {
        problems.push(format!(
            "{}: catalog url '{}': expected sqlite://PATH or postgres://USER@HOST/DATABASE",
            loc.at(&["catalog", "url"]),
            crate::catalog::redact(&c.url)
        ));
    }
    (Some(settings), problems)
}

fn load_checked(path: &Path) -> std::result::Result<LoadedPolicy, Vec<String>> {
    let text = read(path).map_err(|e| vec![crate::error::chain(&e)])?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let settings_path = dir.join("backstop.toml");
    let mut problems = Vec::new();
    let mut settings_failed = false;
    let settings = if settings_path.exists() {
        let (s, p) = settings_checked(&settings_path);
        problems.extend(p);
        settings_failed = s.is_none();
        s.unwrap_or_default()
    } else {
        Settings::default()
    };
    let (policy, parse_problems) = parse_toml_all::<Policy>(path, &text);
    problems.extend(parse_problems);
    let Some(mut policy) = policy else {
        return Err(problems);
    };
    let loc = Locator::new(path, &text);
    let mut err = |keys: &[&str], msg: String| problems.push(format!("{}: {msg}", loc.at(keys)));
    if policy.name.trim().is_empty() {
        err(&["name"], "name must not be empty".into());
    }
    if policy.targets.is_empty() {
        err(&["targets"], "targets: name at least one target".into());
    }
    if !(0..=22).contains(&policy.compression) {
        err(
            &["compression"],
            format!(
                "compression {} is not a zstd level (0-22)",
                policy.compression
            ),
        );
    }
    match &mut policy.source {
        Source::Files(files) => {
            if files.paths.is_empty() {
                err(
                    &["source", "paths"],
                    "source.paths: give at least one path".into(),
                );
            }
            for p in &mut files.paths {
                if p.as_os_str().is_empty() {
                    err(&["source", "paths"], "source.paths: an empty path".into());
                    continue;
                }
                // Normalized as backups record them, so the policy's group is the same whichever
                // way a path is written (`t1/c/`, `t1/a/../c`).
                let joined = if p.is_relative() {
                    dir.join(&*p)
                } else {
                    p.clone()
                };
                match crate::source::files::normalize(&joined) {
                    Ok(n) => *p = n,
                    Err(e) => err(
                        &["source", "paths"],
                        format!("source.paths: {}: {e}", joined.display()),
                    ),
                }
            }
            for (key, globs) in [("exclude", &files.exclude), ("include", &files.include)] {
                for g in globs {
                    if g.trim().is_empty() {
                        err(
                            &["source", key],
                            format!(
                                "source.{key}: empty pattern '{g}' (it would match every path)"
                            ),
                        );
                    } else if let Err(e) = globset::Glob::new(g) {
                        err(&["source", key], format!("invalid glob '{g}': {e}"));
                    }
                }
            }
        }
        Source::Postgres(db) => database_problems(db, Engine::Postgres, dir, &mut err),
        Source::Mysql(db) => database_problems(db, Engine::Mysql, dir, &mut err),
    }
    if let Some(s) = &policy.schedule {
        for (key, msg) in schedule_problems(s) {
            err(&["schedule", key], msg);
        }
    }
    for (phase, msg) in policy.hooks.problems() {
        err(&["hooks", phase], msg);
    }
    for (key, msg) in policy.retention.problems() {
        err(&["retention", key], format!("retention: {msg}"));
    }
    let mut targets = Vec::new();
    for name in &policy.targets {
        match settings.targets.get(name) {
            Some(t) => targets.push((name.clone(), t.clone())),
            // Not when backstop.toml did not parse: its problems are already reported.
            None if settings_failed => {}
            None => err(
                &["targets"],
                format!(
                    "target '{name}' is not defined in {}",
                    settings_path.display()
                ),
            ),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
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

/// Problems of a schedule, as (key, message). Cron expressions have six fields, seconds
/// first (an optional seventh is the year); a five-field crontab line is refused with an
/// explanation rather than guessed at.
fn schedule_problems(s: &Schedule) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if s.timezone.parse::<chrono_tz::Tz>().is_err() {
        out.push((
            "timezone",
            format!(
                "schedule.timezone '{}' is not a known time zone",
                s.timezone
            ),
        ));
    }
    for (what, expr) in [("full", &s.full), ("incremental", &s.incremental)] {
        let Some(e) = expr else { continue };
        let fields = e.split_whitespace().count();
        if fields == 5 {
            out.push((
                what,
                format!(
                    "schedule.{what} '{e}' has 5 fields: backstop's cron expressions have six, \
                     seconds first (sec min hour day-of-month month day-of-week), e.g. '0 {e}'"
                ),
            ));
        } else if let Err(err) = cron::Schedule::from_str(e) {
            out.push((
                what,
                format!(
                    "schedule.{what} '{e}' is not a valid cron expression (six fields, seconds \
                     first: sec min hour day-of-month month day-of-week): {err}"
                ),
            ));
        }
    }
    out
}
