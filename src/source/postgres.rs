//! The `postgres` source. Logical mode: `pg_dumpall --globals-only` as `globals.sql` and,
//! per database, `pg_dump --format=custom --compress=0` as `<db>.pgdump`, in one snapshot.
//! Physical mode: one base backup of the whole cluster, `pg_basebackup --format=tar -D -`,
//! as `base.tar` (see [`BASE_TAR`]).
//!
//! Every dump streams into the pipeline as `pg_dump` writes it (no temporary file) through
//! [`crate::source::command::Run::store`] (through [`store_dumps`]), the runner of the `command` source. The dumps are uncompressed so that
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

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Ingest;
use crate::repo::Snapshot;
use crate::source::command::last_lines;
use crate::source::db::{
    Connection, DbOptions, Dump, dump_file, select_databases, source_key, store_dumps,
};
use crate::source::{Read, Source};

/// The file holding roles and tablespaces.
pub const GLOBALS: &str = "globals.sql";
/// The suffix of a database's dump file.
pub const SUFFIX: &str = ".pgdump";
/// The file of a physical base backup.
///
/// `pg_basebackup` cannot stream the WAL (`--wal-method=stream`, which writes `pg_wal.tar`
/// beside `base.tar`) when the tar goes to standard output, so the WAL that makes the backup
/// consistent is fetched at its end (`-X fetch`) into the same tar: the snapshot is one
/// streamed file, chunked by content as it arrives (no temporary directory), so relation
/// files that did not change deduplicate. WAL after the backup comes from `wal-push`
/// ([`crate::wal`]); `restore --to-datadir` unpacks it and points `restore_command` at
/// `wal-fetch`.
pub const BASE_TAR: &str = "base.tar";

/// The `postgres` source, connected and its databases listed.
pub struct Postgres {
    opts: DbOptions,
    host: String,
    databases: Vec<String>,
}

impl Postgres {
    /// Checks the tools and the server, and lists the databases to dump.
    pub fn open(opts: DbOptions, host: &str) -> Result<Postgres> {
        let shown = opts.conn.url.server().shown();
        let name = if opts.physical {
            "pg_basebackup"
        } else {
            "pg_dump"
        };
        let bin = tool(&opts.bin_dir, name);
        let version = output(&bin, &["--version"], None)
            .map_err(|e| e.context(format!("checking {name} for {shown}")))?;
        let tool_major = major(&version).ok_or_else(|| {
            Error::config(format!(
                "{} --version printed '{}', not a PostgreSQL version",
                bin.display(),
                version.trim()
            ))
        })?;
        // Connect to the URL's database if it names one, else to `postgres`.
        let db0 = opts.conn.url.database.clone().unwrap_or("postgres".into());
        let server = query(&opts, &db0, "SHOW server_version_num")
            .map_err(|e| e.context(format!("connecting to {shown}")))?;
        let server_major = server.trim().parse::<u32>().unwrap_or(0) / 10000;
        if server_major > tool_major {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{} is version {tool_major}, older than the server at {shown} (version \
                     {server_major}): it cannot back it up; use the client tools of version \
                     {server_major} or later (--client-bin DIR)",
                    bin.display(),
                ),
            ));
        }
        if opts.physical {
            if !opts.databases.is_empty() {
                return Err(Error::config(
                    "a physical backup copies the whole cluster: name no --database",
                ));
            }
            return Ok(Postgres {
                opts,
                host: host.to_string(),
                databases: Vec::new(),
            });
        }
        // NUL-separated: a database name may hold a newline.
        let all = output(
            &tool(&opts.bin_dir, "psql"),
            &[
                &PSQL_QUERY[..],
                &[
                    "-0",
                    "-c",
                    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate \
                     ORDER BY 1",
                ],
            ]
            .concat(),
            Some(&opts.conn.with_database(&db0)),
        )
        .map_err(|e| e.context(format!("listing the databases of {shown}")))?;
        let all: Vec<String> = all
            .split('\0')
            .map(|d| d.strip_suffix('\n').unwrap_or(d))
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect();
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

    /// A physical backup: `pg_basebackup`'s tar stream stored as [`BASE_TAR`].
    fn base_backup(&self, ingest: &Ingest) -> Result<Read> {
        // The segment being written now: the backup's start checkpoint comes after it, so
        // its recovery needs nothing before it. A standby cannot say (`None`: keep all).
        let db0 = self.opts.conn.url.database.as_deref().unwrap_or("postgres");
        let wal_start = query(
            &self.opts,
            db0,
            "SELECT pg_walfile_name(pg_current_wal_lsn()) WHERE NOT pg_is_in_recovery()",
        )?
        .trim()
        .to_string();
        let wal_start = crate::wal::is_segment(&wal_start).then_some(wal_start);
        let mut cmd = std::process::Command::new(tool(&self.opts.bin_dir, "pg_basebackup"));
        self.opts.conn.apply(&mut cmd);
        cmd.args([
            "-D",
            "-",
            "--format=tar",
            "--wal-method=fetch",
            "--checkpoint=fast",
            "--label=backstop",
            "--no-password",
        ]);
        let dump = Dump {
            file: BASE_TAR.to_string(),
            shown: format!("pg_basebackup of {}", self.opts.conn.url.server().shown()),
            cmd,
        };
        Ok(Read {
            wal_start,
            ..store_dumps(ingest, self.opts.timeout, vec![dump])?
        })
    }
}

impl Source for Postgres {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn paths(&self) -> Vec<String> {
        if self.opts.physical {
            return vec![BASE_TAR.to_string()];
        }
        let mut p = vec![GLOBALS.to_string()];
        p.extend(self.databases.iter().map(|d| dump_file(d, SUFFIX)));
        p
    }

    fn key(&self) -> String {
        if self.opts.physical {
            return source_key(&self.host, &self.opts.conn, &["physical".into()], &[]);
        }
        source_key(
            &self.host,
            &self.opts.conn,
            &self.opts.databases,
            &self.databases,
        )
    }

    fn read(&mut self, ingest: &Ingest, _parent: Option<&Snapshot>) -> Result<Read> {
        if self.opts.physical {
            return self.base_backup(ingest);
        }
        let shown = self.opts.conn.url.server().shown();
        let mut cmd = std::process::Command::new(tool(&self.opts.bin_dir, "pg_dumpall"));
        cmd.args(["--globals-only", "--no-password"]);
        self.opts.conn.apply(&mut cmd);
        // pg_dumpall picks its own database to connect to.
        cmd.env_remove("PGDATABASE");
        let mut dumps = vec![Dump {
            file: GLOBALS.to_string(),
            shown: format!("pg_dumpall --globals-only of {shown}"),
            cmd,
        }];
        dumps.extend(self.databases.iter().map(|db| {
            let mut cmd = std::process::Command::new(tool(&self.opts.bin_dir, "pg_dump"));
            cmd.args(["--format=custom", "--compress=0", "--no-password"]);
            self.opts.conn.with_database(db).apply(&mut cmd);
            Dump {
                file: dump_file(db, SUFFIX),
                shown: format!("pg_dump of database '{db}' on {shown}"),
                cmd,
            }
        }));
        store_dumps(ingest, self.opts.timeout, dumps)
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
fn query(opts: &DbOptions, db: &str, sql: &str) -> Result<String> {
    let psql = tool(&opts.bin_dir, "psql");
    let conn = opts.conn.with_database(db);
    output(
        &psql,
        &[&PSQL_QUERY[..], &["-c", sql]].concat(),
        Some(&conn),
    )
}

/// Runs `tool` with `args` (and the connection's environment) and returns its standard
/// output; a failure gives the last line of its standard error.
pub(crate) fn output(
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
