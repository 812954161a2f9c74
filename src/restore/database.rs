//! Restore into a database: one database's dump from a `postgres` or `mysql` snapshot,
//! piped through [`crate::repo::Repo::content_reader`] into `pg_restore` or `mariadb`.
//!
//! The URL's path names the database restored into. It is created (in UTF-8) unless it
//! exists; an existing database holding any table is refused unless `force` (then
//! PostgreSQL objects of the dump are dropped and recreated with `--clean --if-exists`;
//! a MariaDB dump drops and recreates its own tables). The dump is read in order, verified,
//! and never lands in a temporary file. `pg_restore` runs with `--exit-on-error` in a
//! single transaction-free pass, `--no-owner` (the roles of the source need not exist).
//! A failed restore drops the database it created — nothing half-restored is left looking
//! complete — and says so; a database it did not create is left as it is, and the error
//! says it is incomplete.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::stream::{copy, select_one};
use super::{Destination, Plan, RestoreOptions, RestoreOutcome, run_to};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::repo::{Id, Repo, Snapshot};
use crate::source::command::last_lines;
use crate::source::db::{Connection, Engine};
use crate::source::postgres::{run_captured, tool};
use crate::source::{mysql, postgres};

/// What a restore into a database did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DatabaseRestored {
    /// The database in the snapshot.
    pub database: String,
    /// Where it went (the URL without password).
    pub into: String,
    /// Whether the database was created by this restore.
    pub created: bool,
    /// Bytes of dump read from the repository.
    pub bytes: u64,
    /// Wall time, in seconds.
    pub seconds: f64,
}

/// Options of a restore into a database.
#[derive(Clone, Debug)]
pub struct ToDatabaseOptions {
    /// The server; its URL's path names the database to restore into.
    pub conn: Connection,
    /// The database of the snapshot to restore; `None`: the snapshot's only one.
    pub database: Option<String>,
    /// Restore into an existing database holding tables.
    pub force: bool,
    /// Where the client tools are; `None`: `PATH`.
    pub bin_dir: Option<PathBuf>,
}

/// Restores one database of snapshot `snap` (id `id`) as `to.conn` says.
pub fn run(
    repo: &Repo,
    id: Id,
    snap: &Snapshot,
    to: &ToDatabaseOptions,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<DatabaseRestored> {
    let engine = match snap.source.as_str() {
        "postgres" => Engine::Postgres,
        "mysql" => Engine::Mysql,
        k => {
            return Err(Error::config(format!(
                "snapshot {} is a '{k}' backup, not a database backup: --to-database restores \
                 snapshots of --postgres or --mysql (use --target DIR)",
                id.short()
            )));
        }
    };
    if engine != to.conn.url.engine {
        return Err(Error::config(format!(
            "snapshot {} holds {} dumps; --to-database {} is another kind of server",
            id.short(),
            snap.source,
            to.conn.url.shown()
        )));
    }
    if snap.paths.iter().any(|p| p == postgres::BASE_TAR) {
        return Err(Error::config(format!(
            "snapshot {} is a physical base backup of a whole cluster: restore it with \
             --to-datadir DIR (and start that with pg_ctl)",
            id.short()
        )));
    }
    let suffix = match engine {
        Engine::Postgres => postgres::SUFFIX,
        Engine::Mysql => mysql::SUFFIX,
    };
    let held = databases(snap);
    let source = match &to.database {
        Some(d) if held.contains(d) => d.clone(),
        Some(d) => {
            return Err(Error::config(format!(
                "snapshot {} holds no database '{d}' (it holds: {})",
                id.short(),
                held.join(", ")
            )));
        }
        None if held.len() == 1 => held[0].clone(),
        None => {
            return Err(Error::config(format!(
                "snapshot {} holds {} databases ({}): name one with --database",
                id.short(),
                held.len(),
                held.join(", ")
            )));
        }
    };
    let Some(target) = to.conn.url.database.clone() else {
        return Err(Error::config(format!(
            "--to-database {}: the URL's path must name the database to restore into, e.g. {}/{source}",
            to.conn.url.shown(),
            to.conn.url.shown()
        )));
    };
    let started = Instant::now();
    let server = Server {
        conn: to.conn.clone(),
        bin_dir: to.bin_dir.clone(),
    };
    let into = to.conn.url.shown();
    let created = match server.tables(&target)? {
        None => {
            server.create(&target)?;
            true
        }
        Some(0) => false,
        Some(n) if to.force => {
            tracing::info!("restoring into {into}, which holds {n} tables (--force)");
            false
        }
        Some(n) => {
            return Err(Error::config(format!(
                "database {into} exists and holds {n} tables: give --force to restore into it, \
                 or name a new database"
            )));
        }
    };
    let mut dest = ToDatabase {
        server: &server,
        target: target.clone(),
        force: to.force,
        source: source.clone(),
    };
    let opts = RestoreOptions {
        target: PathBuf::new(),
        // A pattern that matches this one file whatever the name holds (`*`, `[`…).
        includes: vec![globset::escape(&crate::source::db::dump_file(
            &source, suffix,
        ))],
        dry_run: false,
        ..opts.clone()
    };
    match run_to(repo, id, snap, &opts, &mut dest, progress) {
        Ok(o) => Ok(DatabaseRestored {
            database: source,
            into,
            created,
            bytes: o.bytes,
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) if created => {
            let msg = match server.drop(&target) {
                Ok(()) => format!("the database {into} it had created was dropped"),
                Err(d) => format!(
                    "dropping the database {into} it had created failed too ({d}): drop it by hand"
                ),
            };
            Err(e.context(format!("restoring database '{source}' failed; {msg}")))
        }
        Err(e) => Err(e.context(format!(
            "restoring database '{source}' into the existing {into} failed; it is incomplete"
        ))),
    }
}

/// The databases a `postgres` or `mysql` snapshot holds dumps of, by name.
pub fn databases(snap: &Snapshot) -> Vec<String> {
    let suffix = match snap.source.as_str() {
        "postgres" => postgres::SUFFIX,
        "mysql" => mysql::SUFFIX,
        _ => return Vec::new(),
    };
    snap.paths
        .iter()
        .filter(|p| snap.source != "mysql" || p.as_str() != mysql::GRANTS)
        .filter_map(|p| crate::source::db::dump_database(p, suffix))
        .collect()
}

/// A server the restore talks to.
struct Server {
    conn: Connection,
    bin_dir: Option<PathBuf>,
}

impl Server {
    /// Runs `sql` on database `db` (PostgreSQL; `None`: `postgres`) or the server (MariaDB).
    fn sql(&self, db: Option<&str>, sql: &str) -> Result<String> {
        let (name, mut cmd) = match self.conn.url.engine {
            Engine::Postgres => {
                let mut cmd = Command::new(tool(&self.bin_dir, "psql"));
                self.conn
                    .with_database(db.unwrap_or("postgres"))
                    .apply(&mut cmd);
                cmd.args(postgres::PSQL_QUERY);
                ("psql", cmd)
            }
            Engine::Mysql => {
                let mut cmd = Command::new(tool(&self.bin_dir, "mariadb"));
                self.conn.apply(&mut cmd);
                cmd.args(["--batch", "--skip-column-names"]);
                ("mariadb", cmd)
            }
        };
        let flag = match self.conn.url.engine {
            Engine::Postgres => "-c",
            Engine::Mysql => "-e",
        };
        cmd.args([flag, sql]);
        cmd.stdin(Stdio::null());
        run_captured(
            cmd,
            &format!("{name} on {}", self.conn.url.server().shown()),
        )
    }

    /// How many tables database `name` holds, or `None` if it does not exist.
    fn tables(&self, name: &str) -> Result<Option<u64>> {
        let exists = match self.conn.url.engine {
            Engine::Postgres => self.sql(
                None,
                &format!(
                    "SELECT count(*) FROM pg_database WHERE datname = {}",
                    lit(self.conn.url.engine, name)
                ),
            )?,
            Engine::Mysql => self.sql(
                None,
                &format!(
                    "SELECT count(*) FROM information_schema.schemata WHERE schema_name = {}",
                    lit(self.conn.url.engine, name)
                ),
            )?,
        };
        if exists.trim() == "0" {
            return Ok(None);
        }
        let n = match self.conn.url.engine {
            Engine::Postgres => self.sql(
                Some(name),
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r','p','v','m','S','f') \
                 AND n.nspname NOT IN ('pg_catalog','information_schema') \
                 AND n.nspname NOT LIKE 'pg_toast%'",
            )?,
            Engine::Mysql => self.sql(
                None,
                &format!(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = {}",
                    lit(self.conn.url.engine, name)
                ),
            )?,
        };
        Ok(Some(n.trim().parse().unwrap_or(1)))
    }

    fn create(&self, name: &str) -> Result<()> {
        let sql = match self.conn.url.engine {
            Engine::Postgres => format!(
                "CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0",
                pg_ident(name)
            ),
            Engine::Mysql => format!(
                "CREATE DATABASE {} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
                my_ident(name)
            ),
        };
        self.sql(None, &sql)
            .map(|_| ())
            .map_err(|e| e.context(format!("creating database '{name}'")))
    }

    fn drop(&self, name: &str) -> Result<()> {
        let sql = match self.conn.url.engine {
            Engine::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg_ident(name)),
            Engine::Mysql => format!("DROP DATABASE IF EXISTS {}", my_ident(name)),
        };
        match self.sql(None, &sql) {
            // WITH (FORCE) is PostgreSQL 13 and later.
            Err(_) if self.conn.url.engine == Engine::Postgres => self
                .sql(None, &format!("DROP DATABASE IF EXISTS {}", pg_ident(name)))
                .map(|_| ()),
            r => r.map(|_| ()),
        }
    }
}

/// The restore tool reading the dump on its standard input.
struct ToDatabase<'a> {
    server: &'a Server,
    target: String,
    force: bool,
    source: String,
}

impl Destination for ToDatabase<'_> {
    fn describe(&self) -> String {
        format!("database {}", self.server.conn.url.shown())
    }

    fn write(
        &mut self,
        plan: &Plan<'_>,
        out: &mut RestoreOutcome,
        progress: &dyn Progress,
    ) -> Result<()> {
        let item = select_one(plan, &self.describe())?;
        let conn = self.server.conn.with_database(&self.target);
        let (name, mut cmd) = match conn.url.engine {
            Engine::Postgres => {
                let mut cmd = Command::new(tool(&self.server.bin_dir, "pg_restore"));
                conn.apply(&mut cmd);
                cmd.args(["--no-owner", "--exit-on-error", "--no-password"]);
                if self.force {
                    cmd.args(["--clean", "--if-exists"]);
                }
                cmd.arg(format!("--dbname=dbname={}", conninfo_value(&self.target)));
                ("pg_restore", cmd)
            }
            Engine::Mysql => {
                let mut cmd = Command::new(tool(&self.server.bin_dir, "mariadb"));
                conn.apply(&mut cmd);
                // --sandbox: a dump runs no client commands (`\! cmd`), whatever a
                // database object's name smuggled into it.
                cmd.args([
                    "--batch",
                    "--binary-mode",
                    "--sandbox",
                    "--database",
                    &self.target,
                ]);
                ("mariadb", cmd)
            }
        };
        let shown = format!(
            "{name} of database '{}' into {}",
            self.source,
            conn.url.shown()
        );
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::new(ErrorKind::Config, format!("cannot run {shown}: {e}")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let errs = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut s);
            s
        });
        let copied = copy(plan, &item, &mut stdin, &shown, out, progress);
        let _ = stdin.flush();
        drop(stdin);
        let status = child
            .wait()
            .map_err(|e| Error::new(ErrorKind::Io, format!("waiting for {shown}: {e}")))?;
        let errs = errs.join().unwrap_or_default();
        // A repository read that failed closed the tool's input: that is the cause, not
        // the tool's complaint about a truncated dump.
        if let Err(e) = &copied
            && e.kind() != ErrorKind::Io
        {
            return copied;
        }
        if !status.success() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{shown} failed ({status}): {}", last_lines(&errs, 2)),
            ));
        }
        copied
    }
}

/// A SQL string literal for the server of `engine`.
fn lit(engine: Engine, s: &str) -> String {
    match engine {
        // standard_conforming_strings: a backslash is itself.
        Engine::Postgres => format!("'{}'", s.replace('\'', "''")),
        Engine::Mysql => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''")),
    }
}

fn pg_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn my_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// A value in a libpq connection string.
fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}
