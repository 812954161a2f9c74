//! The `mysql` source (MariaDB and MySQL), logical mode: per database
//! `mariadb-dump --single-transaction --routines --events --triggers --hex-blob` as
//! `<db>.sql`, and users with their grants (`mariadb-dump --system=users`) as `grants.sql`.
//!
//! Each database is dumped without `CREATE DATABASE`/`USE`, so its dump restores under any
//! name. The system schemas (`mysql`, `information_schema`, `performance_schema`, `sys`)
//! are left out: users and grants come through `grants.sql`. Dumps stream into the pipeline
//! through [`crate::source::command::Run::store`] (through [`store_dumps`]); [`Mysql::open`] connects first (server down, wrong password,
//! unknown database fail there, before the repository is locked).

use crate::error::{Error, Result};
use crate::pipeline::Ingest;
use crate::repo::Snapshot;
use crate::source::db::{DbOptions, Dump, dump_file, select_databases, source_key, store_dumps};
use crate::source::postgres::{run_captured, tool};
use crate::source::{Read, Source};

/// The file holding users and grants.
pub const GRANTS: &str = "grants.sql";
/// The suffix of a database's dump file.
pub const SUFFIX: &str = ".sql";
/// Schemas of the server itself, never dumped as databases.
pub const SYSTEM: [&str; 4] = ["information_schema", "mysql", "performance_schema", "sys"];

/// The `mysql` source, connected and its databases listed.
pub struct Mysql {
    opts: DbOptions,
    host: String,
    databases: Vec<String>,
}

impl Mysql {
    /// Checks the server and lists the databases to dump.
    pub fn open(opts: DbOptions, host: &str) -> Result<Mysql> {
        if opts.physical {
            return Err(Error::config(
                "physical backups are for PostgreSQL; a mysql source is dumped logically",
            ));
        }
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
        let tool = tool(&self.opts.bin_dir, "mariadb-dump");
        let cmd = |args: &[&str]| {
            let mut cmd = std::process::Command::new(&tool);
            self.opts.conn.apply(&mut cmd);
            cmd.args(args);
            cmd
        };
        let mut dumps = vec![Dump {
            file: GRANTS.to_string(),
            shown: format!("mariadb-dump --system=users of {shown}"),
            cmd: cmd(&["--system=users", "--skip-comments"]),
        }];
        dumps.extend(self.databases.iter().map(|db| Dump {
            file: dump_file(db, SUFFIX),
            shown: format!("mariadb-dump of database '{db}' on {shown}"),
            cmd: cmd(&[
                "--single-transaction",
                "--routines",
                "--events",
                "--triggers",
                "--hex-blob",
                "--skip-dump-date",
                "--",
                db,
            ]),
        }));
        store_dumps(ingest, self.opts.timeout, dumps)
    }
}
