//! Database connections: a `postgres://` or `mysql://`/`mariadb://` URL, the password's
//! source, and how the client tools (`pg_dump`, `psql`, `mariadb-dump`, `mariadb`) are told.
//!
//! A URL names host, port, user and (optionally) a database. The password never comes from
//! a policy file: it is read from an environment variable or a file (or PostgreSQL's own
//! `~/.pgpass`, which the tools read themselves). A password written inside a URL on the
//! command line is accepted with a warning (it shows in `ps` and shell history); inside a
//! policy file it is refused. Messages and snapshot keys use [`DbUrl::shown`], which never
//! holds the password. The tools get the password through their environment
//! (`PGPASSWORD`, `MYSQL_PWD`), never on their command line.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::Env;
use crate::error::{Error, Result};

/// Which server a URL points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgres,
    /// MariaDB or MySQL (`mysql://`, `mariadb://`).
    Mysql,
}

impl Engine {
    /// The scheme used in [`DbUrl::shown`].
    pub fn scheme(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }
}

/// Where a URL was given: a password inside it is tolerated only on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    CommandLine,
    /// A policy file.
    Policy,
}

/// A parsed database URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbUrl {
    /// The server kind.
    pub engine: Engine,
    /// Host name, address, or (PostgreSQL) a Unix socket directory; `None`: the tool's default.
    pub host: Option<String>,
    /// Port; `None`: the tool's default.
    pub port: Option<u16>,
    /// User name; `None`: the tool's default.
    pub user: Option<String>,
    /// The database named by the URL's path, if any.
    pub database: Option<String>,
    /// A password written in the URL (command line only).
    password: Option<String>,
}

impl DbUrl {
    /// Parses `text` as a URL for `engine`. Returns the URL and a warning to show when the
    /// URL carried a password on the command line; a password in a policy's URL is refused.
    pub fn parse(engine: Engine, text: &str, origin: Origin) -> Result<(DbUrl, Option<String>)> {
        let flag = match (origin, engine) {
            (Origin::Policy, _) => "source.url",
            (_, Engine::Postgres) => "--postgres",
            (_, Engine::Mysql) => "--mysql",
        };
        let example = match engine {
            Engine::Postgres => "postgres://postgres@127.0.0.1:5432/mydb",
            Engine::Mysql => "mysql://root@127.0.0.1:3306/mydb",
        };
        let bad = |why: String| {
            Error::config(format!(
                "{flag}: '{}' is not a database URL ({why}); e.g. '{example}'",
                redact(text)
            ))
        };
        let url = url::Url::parse(text).map_err(|e| bad(e.to_string()))?;
        let ok = match engine {
            Engine::Postgres => matches!(url.scheme(), "postgres" | "postgresql"),
            Engine::Mysql => matches!(url.scheme(), "mysql" | "mariadb"),
        };
        if !ok {
            return Err(bad(format!("unexpected scheme '{}'", url.scheme())));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("query parameters are not supported".into()));
        }
        let decode = |s: &str| -> Result<String> {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad("not valid UTF-8 once decoded".into()))
        };
        let host = match url.host_str() {
            Some("") | None => None,
            // An IPv6 literal comes bracketed; the tools want it bare.
            Some(h) => Some(decode(h.trim_start_matches('[').trim_end_matches(']'))?),
        };
        let user = match url.username() {
            "" => None,
            u => Some(decode(u)?),
        };
        let password = url.password().map(decode).transpose()?;
        let path = url.path().trim_start_matches('/');
        if path.contains('/') {
            return Err(bad("the path must be one database name".into()));
        }
        let database = match path {
            "" => None,
            d => Some(decode(d)?),
        };
        let warning = match (&password, origin) {
            (None, _) => None,
            (Some(_), Origin::Policy) => {
                return Err(Error::config(format!(
                    "the URL '{}' holds a password: a policy file must not; use password-env \
                     or password-file",
                    redact(text)
                )));
            }
            (Some(_), Origin::CommandLine) => Some(format!(
                "{flag}: the URL holds a password, which other users can see in the process \
                 list and shell history; prefer --db-password-env or --db-password-file"
            )),
        };
        Ok((
            DbUrl {
                engine,
                host,
                port: url.port(),
                user,
                database,
                password,
            },
            warning,
        ))
    }

    /// The URL without its password, for messages and snapshot keys.
    pub fn shown(&self) -> String {
        let mut s = format!("{}://", self.engine.scheme());
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        match &self.host {
            Some(h) if h.contains(':') => s.push_str(&format!("[{h}]")),
            Some(h) => s.push_str(h),
            None => {}
        }
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        if let Some(d) = &self.database {
            s.push('/');
            s.push_str(d);
        }
        s
    }

    /// The same server, database `name`.
    pub fn with_database(&self, name: &str) -> DbUrl {
        DbUrl {
            database: Some(name.to_string()),
            ..self.clone()
        }
    }

    /// The same server, no database.
    pub fn server(&self) -> DbUrl {
        DbUrl {
            database: None,
            ..self.clone()
        }
    }
}

/// Where a database password comes from (besides a URL given on the command line).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct DbPassword {
    /// Name of an environment variable holding it.
    pub password_env: Option<String>,
    /// A file whose first line is it.
    pub password_file: Option<PathBuf>,
}

impl DbPassword {
    /// Reads the password, if a source is configured (`env` looks variables up).
    pub fn read(&self, env: Env) -> Result<Option<String>> {
        if self.password_env.is_some() && self.password_file.is_some() {
            return Err(Error::config(
                "give the database password through one of --db-password-env and \
                 --db-password-file (password-env and password-file in a policy), \
                 not both",
            ));
        }
        if let Some(f) = &self.password_file {
            let text = std::fs::read_to_string(f).map_err(|e| {
                Error::config(format!(
                    "cannot read the database password file {}: {e}",
                    f.display()
                ))
            })?;
            let line = text.lines().next().unwrap_or("");
            if line.is_empty() {
                return Err(Error::config(format!(
                    "the database password file {} is empty",
                    f.display()
                )));
            }
            return Ok(Some(line.to_string()));
        }
        if let Some(var) = &self.password_env {
            return match env(var).map(OsString::into_string) {
                Some(Ok(v)) if !v.is_empty() => Ok(Some(v)),
                Some(Err(_)) => Err(Error::config(format!(
                    "the database password in ${var} is not valid UTF-8"
                ))),
                _ => Err(Error::config(format!(
                    "the database password variable ${var} is not set or empty"
                ))),
            };
        }
        Ok(None)
    }
}

/// A URL and its password, resolved: what the client tools are run with.
#[derive(Clone)]
pub struct Connection {
    /// The server and (optionally) database.
    pub url: DbUrl,
    password: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url.shown())
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Connection {
    /// Resolves the password: the one from `source` if configured, else the URL's own.
    pub fn new(url: DbUrl, source: &DbPassword, env: Env) -> Result<Connection> {
        let password = match source.read(env)? {
            Some(p) => Some(p),
            None => url.password.clone(),
        };
        Ok(Connection { url, password })
    }

    /// The same server and password, database `name`.
    pub fn with_database(&self, name: &str) -> Connection {
        Connection {
            url: self.url.with_database(name),
            password: self.password.clone(),
        }
    }

    /// Environment for the PostgreSQL tools (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`,
    /// `PGPASSWORD`); unset ones fall back to the tools' defaults. `PGCONNECT_TIMEOUT`
    /// keeps a server that does not answer from hanging the backup.
    pub fn pg_env(&self) -> Vec<(&'static str, String)> {
        let u = &self.url;
        let mut env = vec![("PGCONNECT_TIMEOUT", "10".to_string())];
        if let Some(h) = &u.host {
            env.push(("PGHOST", h.clone()));
        }
        if let Some(p) = u.port {
            env.push(("PGPORT", p.to_string()));
        }
        if let Some(user) = &u.user {
            env.push(("PGUSER", user.clone()));
        }
        if let Some(d) = &u.database {
            env.push(("PGDATABASE", d.clone()));
        }
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", p.clone()));
        }
        env
    }

    /// Arguments for the MariaDB/MySQL tools (`--host`, `--port`, `--user`); the database
    /// is not among them (each tool takes it in its own place).
    pub fn mysql_args(&self) -> Vec<String> {
        let u = &self.url;
        let mut args = Vec::new();
        if let Some(h) = &u.host {
            args.push(format!("--host={h}"));
            // A host name means TCP, even "localhost" (which the tools take as the socket
            // otherwise, silently ignoring the port).
            args.push("--protocol=TCP".to_string());
        }
        if let Some(p) = u.port {
            args.push(format!("--port={p}"));
        }
        if let Some(user) = &u.user {
            args.push(format!("--user={user}"));
        }
        args
    }

    /// Environment for the MariaDB/MySQL tools (`MYSQL_PWD`).
    pub fn mysql_env(&self) -> Vec<(&'static str, String)> {
        self.password
            .iter()
            .map(|p| ("MYSQL_PWD", p.clone()))
            .collect()
    }

    /// Sets the connection on a client tool's command (arguments before the tool's own).
    pub fn apply(&self, cmd: &mut std::process::Command) {
        match self.url.engine {
            Engine::Postgres => {
                // The caller's own PG* variables must not point the tool elsewhere (a
                // service file's values even win over the variables set here).
                for v in [
                    "PGHOST",
                    "PGHOSTADDR",
                    "PGPORT",
                    "PGUSER",
                    "PGDATABASE",
                    "PGPASSWORD",
                    "PGSERVICE",
                    "PGSERVICEFILE",
                    "PGOPTIONS",
                    "PGTARGETSESSIONATTRS",
                ] {
                    cmd.env_remove(v);
                }
                cmd.envs(self.pg_env());
            }
            Engine::Mysql => {
                cmd.env_remove("MYSQL_PWD");
                cmd.args(self.mysql_args());
                cmd.envs(self.mysql_env());
            }
        }
    }
}

/// The databases a backup dumps: those `named`, else the one the URL names, else every one
/// in `all` (the server's list, system databases left out). Each must be in `all` and usable
/// as a file name in the snapshot (not `reserved`, the name of the source's own extra file).
pub fn select_databases(
    conn: &Connection,
    named: &[String],
    all: &[String],
    reserved: Option<&str>,
) -> Result<Vec<String>> {
    let shown = conn.url.server().shown();
    let mut databases = if !named.is_empty() {
        named.to_vec()
    } else if let Some(d) = &conn.url.database {
        vec![d.clone()]
    } else {
        all.to_vec()
    };
    databases.sort();
    databases.dedup();
    for d in &databases {
        if !all.contains(d) {
            return Err(Error::config(format!(
                "database '{d}' does not exist on {shown} (or is a system database, or does not \
                 accept connections)"
            )));
        }
        if Some(d.as_str()) == reserved {
            return Err(Error::config(format!(
                "database '{d}' on {shown}: its name cannot be a file name in the snapshot"
            )));
        }
    }
    Ok(databases)
}

/// The file name of database `name`'s dump in a snapshot: the name with `%`, `/` and NUL
/// percent-encoded (any database a server holds can be stored), then `suffix`.
pub fn dump_file(name: &str, suffix: &str) -> String {
    let mut f = String::with_capacity(name.len() + suffix.len());
    for c in name.chars() {
        match c {
            '%' | '/' | '\0' => f.push_str(&format!("%{:02X}", c as u32)),
            c => f.push(c),
        }
    }
    f.push_str(suffix);
    f
}

/// The database whose dump `file` is ([`dump_file`]'s inverse), if it is one.
pub fn dump_database(file: &str, suffix: &str) -> Option<String> {
    let encoded = file.strip_suffix(suffix)?;
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()
        .map(|d| d.into_owned())
}

/// What to back up from a database server (PostgreSQL or MariaDB/MySQL, by the URL).
#[derive(Clone, Debug)]
pub struct DbOptions {
    /// The server (and, when `databases` is empty, the one database the URL names).
    pub conn: Connection,
    /// Databases to dump; empty: the URL's database, or every one on the server.
    pub databases: Vec<String>,
    /// Where the client tools are; `None`: `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// Stop a dump (and the backup) after this long.
    pub timeout: Option<std::time::Duration>,
    /// A physical base backup of the whole cluster instead of dumps (PostgreSQL only;
    /// `databases` must be empty).
    pub physical: bool,
}

/// One client tool's output to store as a file of a database snapshot.
pub struct Dump {
    /// The file name in the snapshot.
    pub file: String,
    /// The tool and what it dumps, for messages ("pg_dump of database 'x' on …").
    pub shown: String,
    /// The tool, its connection and arguments set.
    pub cmd: std::process::Command,
}

/// Runs `dumps` one after the other, each streamed into `ingest` as a file (stopped after
/// `timeout`), and stores them as the snapshot's one flat tree.
pub fn store_dumps(
    ingest: &crate::pipeline::Ingest,
    timeout: Option<std::time::Duration>,
    dumps: Vec<Dump>,
) -> Result<crate::source::Read> {
    use crate::source::command::{Run, file_node};
    let mut nodes = Vec::with_capacity(dumps.len());
    for Dump { file, shown, cmd } in dumps {
        let started = crate::repo::Timestamp::now();
        let run = Run {
            shown,
            timeout,
            one_line: true,
        };
        let (content, size) = run.store(ingest, cmd)?;
        tracing::info!("{}: {size} bytes", run.shown);
        nodes.push(file_node(&file, content, size, started));
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(crate::source::Read {
        tree: ingest.store_tree(&crate::repo::Tree { nodes })?,
        root: None,
        read_all: true,
        wal_start: None,
    })
}

/// A database source's stable key: host, server (without user or password) and the
/// databases, or `*` for "every database" (so that one more database on the server keeps
/// the same group of snapshots).
pub fn source_key(host: &str, conn: &Connection, named: &[String], databases: &[String]) -> String {
    let dbs = if named.is_empty() && conn.url.database.is_none() {
        "*".to_string()
    } else {
        databases.join(",")
    };
    let server = DbUrl {
        user: None,
        ..conn.url.server()
    };
    format!("{host}:{}:{dbs}", server.shown())
}

/// `text` with whatever sits between `://user:` and `@` replaced, for messages about a URL
/// that did not parse.
fn redact(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else {
        return text.to_string();
    };
    let rest = &text[start..];
    let Some(at) = rest.rfind('@') else {
        return text.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &text[..start], &rest[..colon], &rest[at..]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn postgres_url_parts() {
        let (u, w) = DbUrl::parse(
            Engine::Postgres,
            "postgresql://bob@db.example:5433/sales",
            Origin::Policy,
        )
        .unwrap();
        assert!(w.is_none());
        assert_eq!(u.host.as_deref(), Some("db.example"));
        assert_eq!(u.port, Some(5433));
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.database.as_deref(), Some("sales"));
        assert_eq!(u.shown(), "postgres://bob@db.example:5433/sales");
        let c = Connection::new(u, &DbPassword::default(), &no_env).unwrap();
        let env = c.pg_env();
        assert!(env.contains(&("PGHOST", "db.example".into())));
        assert!(env.contains(&("PGPORT", "5433".into())));
        assert!(env.contains(&("PGUSER", "bob".into())));
        assert!(env.contains(&("PGDATABASE", "sales".into())));
        assert!(!env.iter().any(|(k, _)| *k == "PGPASSWORD"));
    }

    #[test]
    fn minimal_and_encoded_urls() {
        let (u, _) = DbUrl::parse(Engine::Postgres, "postgres://", Origin::Policy).unwrap();
        assert_eq!(
            u,
            DbUrl::parse(Engine::Postgres, "postgres:///", Origin::Policy)
                .unwrap()
                .0
        );
        assert_eq!(u.host, None);
        assert_eq!(u.database, None);
        let (u, _) = DbUrl::parse(
            Engine::Postgres,
            "postgres://%2Fvar%2Frun%2Fpostgresql/caf%C3%A9",
            Origin::Policy,
        )
        .unwrap();
        assert_eq!(u.host.as_deref(), Some("/var/run/postgresql"));
        assert_eq!(u.database.as_deref(), Some("café"));
        let (u, _) =
            DbUrl::parse(Engine::Mysql, "mysql://root@[::1]:3306", Origin::Policy).unwrap();
        assert_eq!(u.host.as_deref(), Some("::1"));
        assert_eq!(u.shown(), "mysql://root@[::1]:3306");
    }

    #[test]
    fn bad_urls_are_refused() {
        for (engine, text) in [
            (Engine::Postgres, "mysql://root@h/db"),
            (Engine::Mysql, "postgres://h/db"),
            (Engine::Postgres, "not a url"),
            (Engine::Postgres, "postgres://h/a/b"),
            (Engine::Postgres, "postgres://h/db?sslmode=require"),
        ] {
            let e = DbUrl::parse(engine, text, Origin::CommandLine).unwrap_err();
            assert!(e.to_string().contains("is not a database URL"), "{e}");
        }
    }

    #[test]
    fn password_in_url() {
        let text = "mariadb://root:s3cret@127.0.0.1:3306/shop";
        let e = DbUrl::parse(Engine::Mysql, text, Origin::Policy).unwrap_err();
        assert!(e.to_string().contains("must not"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let (u, w) = DbUrl::parse(Engine::Mysql, text, Origin::CommandLine).unwrap();
        assert!(w.unwrap().contains("--db-password-env"));
        assert_eq!(u.shown(), "mysql://root@127.0.0.1:3306/shop");
        assert!(!format!("{u:?}").is_empty());
        let c = Connection::new(u.clone(), &DbPassword::default(), &no_env).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.mysql_env(), vec![("MYSQL_PWD", "s3cret".to_string())]);
        assert_eq!(
            c.mysql_args(),
            [
                "--host=127.0.0.1",
                "--protocol=TCP",
                "--port=3306",
                "--user=root"
            ]
        );
        // A configured source wins over the URL's password.
        let env = |v: &str| (v == "DBPW").then(|| OsString::from("other"));
        let src = DbPassword {
            password_env: Some("DBPW".into()),
            password_file: None,
        };
        let c = Connection::new(u, &src, &env).unwrap();
        assert_eq!(c.mysql_env(), vec![("MYSQL_PWD", "other".to_string())]);
        let e =
            DbUrl::parse(Engine::Mysql, "mysql://root:pw@/x/y", Origin::CommandLine).unwrap_err();
        assert!(!e.to_string().contains("pw@"), "{e}");
    }

    #[test]
    fn password_sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\nignored\n").unwrap();
        let src = DbPassword {
            password_env: None,
            password_file: Some(f.clone()),
        };
        assert_eq!(src.read(&no_env).unwrap().as_deref(), Some("hunter2"));
        std::fs::write(&f, "").unwrap();
        assert!(
            src.read(&no_env)
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
        let src = DbPassword {
            password_env: Some("NOPE".into()),
            password_file: None,
        };
        let e = src.read(&no_env).unwrap_err();
        assert!(e.to_string().contains("$NOPE is not set"), "{e}");
        let both = DbPassword {
            password_env: Some("A".into()),
            password_file: Some(f),
        };
        assert!(both.read(&no_env).is_err());
        assert_eq!(DbPassword::default().read(&no_env).unwrap(), None);
    }

    #[test]
    fn every_database_name_is_a_dump_file_name() {
        for name in ["shop", "a/b", "50%", "..", "x\0y", "中文 db"] {
            let f = dump_file(name, ".sql");
            assert!(!f.contains(['/', '\0']) && f != "." && f != "..", "{f}");
            assert_eq!(dump_database(&f, ".sql").as_deref(), Some(name));
        }
        assert_eq!(dump_file("a/b%", ".pgdump"), "a%2Fb%25.pgdump");
        assert_eq!(dump_database("globals.sql", ".pgdump"), None);
    }

    #[test]
    fn with_database_keeps_the_server() {
        let (u, _) = DbUrl::parse(Engine::Postgres, "postgres://p@h:1/a", Origin::Policy).unwrap();
        assert_eq!(u.with_database("b").shown(), "postgres://p@h:1/b");
        assert_eq!(u.server().shown(), "postgres://p@h:1");
    }
}
