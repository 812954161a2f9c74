//! The `postgres` source, logical mode: `pg_dumpall --globals-only` as `globals.sql` and,
//! per database, `pg_dump --format=custom --compress=0` as `<db>.pgdump`, in one snapshot.
//!
//! Every dump streams into the pipeline as `pg_dump` writes it (no temporary file) through
//! [`Run::store`], the runner of the `command` source. The dumps are uncompressed so that
//! content-defined chunking finds the parts that did not change: a second backup of an
//! unchanged database stores almost nothing (repository compression does the rest).
//!
//! [`Postgres::open`] connects before the repository is locked: it asks the server's
//! version (refusing a `pg_dump` older than the server, which could not dump it) and the
//! databases to dump (the ones named, each checked to exist, or every database that
//! accepts connections and is not a template). A server that is down, a wrong password or
//! an unknown database fail there, in one line naming the server or database and the
//! cause; a dump that fails later fails the backup before any snapshot is written.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Ingest;
use crate::repo::{Snapshot, Timestamp, Tree};
use crate::source::command::{Run, file_node, last_lines};
use crate::source::db::{Connection, select_databases, source_key};
use crate::source::{Read, Source};

/// The file holding roles and tablespaces.
pub const GLOBALS: &str = "globals.sql";
/// The suffix of a database's dump file.
pub const SUFFIX: &str = ".pgdump";

/// What to dump from a PostgreSQL server.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The server (and, when `databases` is empty, the one database the URL names).
    pub conn: Connection,
    /// Databases to dump; empty: the URL's database, or every connectable non-template one.
    pub databases: Vec<String>,
    /// Where `pg_dump`, `pg_dumpall` and `psql` are; `None`: `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// Stop a dump (and the backup) after this long.
    pub timeout: Option<Duration>,
}

/// The `postgres` source, connected and its databases listed.
pub struct Postgres {
    opts: PostgresOptions,
    host: String,
    databases: Vec<String>,
}

impl Postgres {
    /// Checks the tools and the server, and lists the databases to dump.
    pub fn open(opts: PostgresOptions, host: &str) -> Result<Postgres> {
        let shown = opts.conn.url.server().shown();
        let tool = tool(&opts.bin_dir, "pg_dump");
        let version = output(&opts, &tool, &["--version"], None)
            .map_err(|e| e.context(format!("checking pg_dump for {shown}")))?;
        let dump_major = major(&version).ok_or_else(|| {
            Error::config(format!(
                "{} --version printed '{}', not a PostgreSQL version",
                tool.display(),
                version.trim()
            ))
        })?;
        // Connect to the URL's database if it names one, else to `postgres`.
        let db0 = opts.conn.url.database.clone().unwrap_or("postgres".into());
        let server = query(&opts, &db0, "SHOW server_version_num")
            .map_err(|e| e.context(format!("connecting to {shown}")))?;
        let server_num: u32 = server.trim().parse().unwrap_or(0);
        if server_num / 10000 > dump_major {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{} is version {dump_major}, older than the server at {shown} (version {}): \
                     it cannot dump it; use the client tools of version {} or later (--client-bin DIR)",
                    tool.display(),
                    server_num / 10000,
                    server_num / 10000
                ),
            ));
        }
        let all = query(
            &opts,
            &db0,
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
        )
        .map_err(|e| e.context(format!("listing the databases of {shown}")))?;
        let all: Vec<String> = all.lines().map(str::to_string).collect();
        let databases = select_databases(&opts.conn, &opts.databases, &all, None)?;
        Ok(Postgres {
            opts,
            host: host.to_string(),
            databases,
        })
    }

    /// The databases this backup dumps.
    pub fn databases(&self) -> &[String] {
        &self.databases
    }
}

impl Source for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn paths(&self) -> Vec<String> {
        let mut p = vec![GLOBALS.to_string()];
        p.extend(self.databases.iter().map(|d| format!("{d}{SUFFIX}")));
        p
    }

    fn key(&self) -> String {
        source_key(
            &self.host,
            &self.opts.conn,
            &self.opts.databases,
            &self.databases,
        )
    }

    fn read(&mut self, ingest: &Ingest, _parent: Option<&Snapshot>) -> Result<Read> {
        let shown = self.opts.conn.url.server().shown();
        let mut nodes = Vec::new();
        let started = Timestamp::now();
        let mut cmd = std::process::Command::new(tool(&self.opts.bin_dir, "pg_dumpall"));
        cmd.args(["--globals-only", "--no-password"]);
        self.opts.conn.apply(&mut cmd);
        // pg_dumpall picks its own database to connect to.
        cmd.env_remove("PGDATABASE");
        let run = Run {
            shown: format!("pg_dumpall --globals-only of {shown}"),
            timeout: self.opts.timeout,
            one_line: true,
        };
        let (content, size) = run.store(ingest, cmd)?;
        nodes.push(file_node(GLOBALS, content, size, started));
        for db in &self.databases {
            let started = Timestamp::now();
            let mut cmd = std::process::Command::new(tool(&self.opts.bin_dir, "pg_dump"));
            cmd.args(["--format=custom", "--compress=0", "--no-password"]);
            self.opts.conn.with_database(db).apply(&mut cmd);
            let run = Run {
                shown: format!("pg_dump of database '{db}' on {shown}"),
                timeout: self.opts.timeout,
                one_line: true,
            };
            let (content, size) = run.store(ingest, cmd)?;
            tracing::info!("dumped database '{db}': {size} bytes");
            nodes.push(file_node(&format!("{db}{SUFFIX}"), content, size, started));
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let tree = ingest.store_tree(&Tree { nodes })?;
        Ok(Read {
            tree,
            root: None,
            read_all: true,
        })
    }
}

/// The path of a client tool: in `bin_dir`, or looked up in `PATH`.
pub fn tool(bin_dir: &Option<PathBuf>, name: &str) -> PathBuf {
    match bin_dir {
        Some(d) => d.join(name),
        None => PathBuf::from(name),
    }
}

/// The major version in `pg_dump --version` output ("pg_dump (PostgreSQL) 15.4 (Debian …)").
fn major(version: &str) -> Option<u32> {
    let v = version.split(')').nth(1)?.split_whitespace().next()?;
    v.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

/// `psql` options for one query whose result is read: no `.psqlrc`, unaligned rows only,
/// never a password prompt, stop at the first error.
pub(crate) const PSQL_QUERY: [&str; 7] = [
    "-X",
    "-A",
    "-t",
    "-q",
    "--no-password",
    "-v",
    "ON_ERROR_STOP=1",
];

/// Runs one `psql` query against database `db` and returns its unaligned, tuples-only output.
fn query(opts: &PostgresOptions, db: &str, sql: &str) -> Result<String> {
    let psql = tool(&opts.bin_dir, "psql");
    let conn = opts.conn.with_database(db);
    output(
        opts,
        &psql,
        &[&PSQL_QUERY[..], &["-c", sql]].concat(),
        Some(&conn),
    )
}

/// Runs `tool` with `args` (and the connection's environment) and returns its standard
/// output; a failure gives the last line of its standard error.
pub(crate) fn output(
    _opts: &PostgresOptions,
    tool: &std::path::Path,
    args: &[&str],
    conn: Option<&Connection>,
) -> Result<String> {
    let mut cmd = std::process::Command::new(tool);
    cmd.args(args).stdin(Stdio::null());
    if let Some(c) = conn {
        c.apply(&mut cmd);
    }
    run_captured(cmd, &tool.display().to_string())
}

/// Runs `cmd`, returning its standard output; a failure is one line with the last lines
/// of its standard error.
pub(crate) fn run_captured(mut cmd: std::process::Command, name: &str) -> Result<String> {
    let out = cmd.output().map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "it is not installed (or not in PATH)".to_string()
        } else {
            e.to_string()
        };
        Error::new(ErrorKind::Config, format!("cannot run {name}: {why}")).with_source(e)
    })?;
    if !out.status.success() {
        let tail = last_lines(&String::from_utf8_lossy(&out.stderr), 2);
        return Err(Error::new(
            ErrorKind::Io,
            format!("{name} failed ({}): {tail}", out.status),
        ));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| Error::new(ErrorKind::Io, format!("{name} printed invalid UTF-8")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pg_dump_versions() {
        assert_eq!(
            super::major("pg_dump (PostgreSQL) 15.4 (Debian 15.4-1)\n"),
            Some(15)
        );
        assert_eq!(super::major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(super::major("pg_dump (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(super::major("garbage"), None);
    }
}
