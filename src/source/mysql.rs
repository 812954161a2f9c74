//! The `mysql` source (MariaDB and MySQL), logical mode: per database
//! `mariadb-dump --single-transaction --routines --events --triggers --hex-blob` as
//! `<db>.sql`, and users with their grants (`mariadb-dump --system=users`) as `grants.sql`.
//!
//! Each database is dumped without `CREATE DATABASE`/`USE`, so its dump restores under any
//! name. The system schemas (`mysql`, `information_schema`, `performance_schema`, `sys`)
//! are left out: users and grants come through `grants.sql`. Dumps stream into the pipeline
//! through [`Run::store`]; [`Mysql::open`] connects first (server down, wrong password,
//! unknown database fail there, before the repository is locked).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Result;
use crate::pipeline::Ingest;
use crate::repo::{Snapshot, Timestamp, Tree};
use crate::source::command::{Run, file_node};
use crate::source::db::{Connection, dump_file, select_databases, source_key};
use crate::source::postgres::{run_captured, tool};
use crate::source::{Read, Source};

/// The file holding users and grants.
pub const GRANTS: &str = "grants.sql";
/// The suffix of a database's dump file.
pub const SUFFIX: &str = ".sql";
/// Schemas of the server itself, never dumped as databases.
pub const SYSTEM: [&str; 4] = ["information_schema", "mysql", "performance_schema", "sys"];

/// What to dump from a MariaDB/MySQL server.
#[derive(Clone, Debug)]
pub struct MysqlOptions {
    /// The server (and, when `databases` is empty, the one database the URL names).
    pub conn: Connection,
    /// Databases to dump; empty: the URL's database, or every non-system one.
    pub databases: Vec<String>,
    /// Where `mariadb` and `mariadb-dump` are; `None`: `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// Stop a dump (and the backup) after this long.
    pub timeout: Option<Duration>,
}

/// The `mysql` source, connected and its databases listed.
pub struct Mysql {
    opts: MysqlOptions,
    host: String,
    databases: Vec<String>,
}

impl Mysql {
    /// Checks the server and lists the databases to dump.
    pub fn open(opts: MysqlOptions, host: &str) -> Result<Mysql> {
        let shown = opts.conn.url.server().shown();
        let mut cmd = std::process::Command::new(tool(&opts.bin_dir, "mariadb"));
        opts.conn.apply(&mut cmd);
        cmd.args(["--batch", "--skip-column-names", "-e", "SHOW DATABASES"]);
        let all = run_captured(cmd, "mariadb")
            .map_err(|e| e.context(format!("listing the databases of {shown}")))?;
        let all: Vec<String> = all
            .lines()
            .filter(|d| !SYSTEM.contains(d))
            .map(str::to_string)
            .collect();
        let databases = select_databases(&opts.conn, &opts.databases, &all, Some("grants"))?;
        Ok(Mysql {
            opts,
            host: host.to_string(),
            databases,
        })
    }
}

impl Source for Mysql {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    fn paths(&self) -> Vec<String> {
        let mut p = vec![GRANTS.to_string()];
        p.extend(self.databases.iter().map(|d| dump_file(d, SUFFIX)));
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
        let dump = tool(&self.opts.bin_dir, "mariadb-dump");
        let mut nodes = Vec::new();
        let started = Timestamp::now();
        let mut cmd = std::process::Command::new(&dump);
        self.opts.conn.apply(&mut cmd);
        cmd.args(["--system=users", "--skip-comments"]);
        let run = Run {
            shown: format!("mariadb-dump --system=users of {shown}"),
            timeout: self.opts.timeout,
            one_line: true,
        };
        let (content, size) = run.store(ingest, cmd)?;
        nodes.push(file_node(GRANTS, content, size, started));
        for db in &self.databases {
            let started = Timestamp::now();
            let mut cmd = std::process::Command::new(&dump);
            self.opts.conn.apply(&mut cmd);
            cmd.args([
                "--single-transaction",
                "--routines",
                "--events",
                "--triggers",
                "--hex-blob",
                "--skip-dump-date",
                "--",
                db,
            ]);
            let run = Run {
                shown: format!("mariadb-dump of database '{db}' on {shown}"),
                timeout: self.opts.timeout,
                one_line: true,
            };
            let (content, size) = run.store(ingest, cmd)?;
            tracing::info!("dumped database '{db}': {size} bytes");
            nodes.push(file_node(&dump_file(db, SUFFIX), content, size, started));
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let tree = ingest.store_tree(&Tree { nodes })?;
        Ok(Read {
            tree,
            root: None,
            read_all: true,
            wal_start: None,
        })
    }
}
