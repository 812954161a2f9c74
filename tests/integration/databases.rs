//! Database sources against the real servers: `backup --postgres` / `--mysql` and
//! `restore --to-database`. Each snapshot restored into a new database equals the source
//! database at its time (row counts and an ordered checksum per table, sequences, views,
//! functions, triggers); bad input fails in one line with no snapshot.

use std::process::Output;

use super::common::*;

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const MY: &str = "mysql://root@127.0.0.1:3306";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{n}", std::process::id())
}

fn psql(db: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-c", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "psql {sql}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn mariadb(db: Option<&str>, sql: &str) -> String {
    let mut c = std::process::Command::new("mariadb");
    c.args([
        "--host=127.0.0.1",
        "--protocol=TCP",
        "--user=root",
        "--batch",
    ])
    .args(["--skip-column-names", "-e", sql]);
    if let Some(d) = db {
        c.arg(format!("--database={d}"));
    }
    let out = c.output().expect("mariadb");
    assert!(out.status.success(), "mariadb {sql}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Drops the databases it names at the end of the test, also when it fails.
struct Dropper {
    pg: Vec<String>,
    my: Vec<String>,
}

impl Drop for Dropper {
    fn drop(&mut self) {
        for d in &self.pg {
            let _ = std::process::Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args([
                    "-c",
                    &format!("DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE)"),
                ])
                .output();
        }
        for d in &self.my {
            let _ = std::process::Command::new("mariadb")
                .args(["--host=127.0.0.1", "--protocol=TCP", "--user=root"])
                .args(["-e", &format!("DROP DATABASE IF EXISTS `{d}`")])
                .output();
        }
    }
}

/// Drops a MariaDB user at the end of the test.
struct DropUser(String);

impl Drop for DropUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("mariadb")
            .args(["--host=127.0.0.1", "--protocol=TCP", "--user=root"])
            .args(["-e", &format!("DROP USER IF EXISTS '{}'@'%'", self.0)])
            .output();
    }
}

/// Everything the restore must reproduce, one line per object, sorted.
fn pg_fingerprint(db: &str) -> String {
    psql(
        db,
        r#"SELECT string_agg(line, E'\n' ORDER BY line) FROM (
  SELECT 'table ' || c.relname || ' '
    || (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I', c.relname), false, true, '')))[1]::text
    || ' ' || (xpath('/row/m/text()', query_to_xml(format(
        'SELECT md5(coalesce(string_agg(t::text, ''|'' ORDER BY t::text), '''')) AS m FROM %I t', c.relname), false, true, '')))[1]::text AS line
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm')
  UNION ALL SELECT 'seq ' || sequencename || ' ' || coalesce(last_value::text, 'unused')
    FROM pg_sequences WHERE schemaname = 'public'
  UNION ALL SELECT 'view ' || viewname || ' ' || definition FROM pg_views WHERE schemaname = 'public'
  UNION ALL SELECT 'matview ' || matviewname || ' ' || definition FROM pg_matviews WHERE schemaname = 'public'
  UNION ALL SELECT 'func ' || pg_get_functiondef(p.oid) FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'public' AND p.prokind = 'f'
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
  UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL SELECT 'ext ' || extname FROM pg_extension
  UNION ALL SELECT 'lo ' || count(*) || ' ' || md5(coalesce(string_agg(md5(lo_get(oid)), ',' ORDER BY oid), ''))
    FROM pg_largeobject_metadata
) x"#,
    )
}

fn backup(env: &Env, args: &[&str]) -> Output {
    env.run(&["backup", "--json"])
        .args(args)
        .output()
        .expect("run")
}

fn snapshot_of(out: &Output) -> (String, u64, u64) {
    assert!(out.status.success(), "{}", stderr(out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v[0]["snapshot"]["summary"];
    (
        v[0]["id"].as_str().unwrap().to_string(),
        s["bytes_total"].as_u64().unwrap(),
        s["bytes_stored"].as_u64().unwrap(),
    )
}

fn restore_db(env: &Env, id: &str, url: &str, extra: &[&str]) -> Output {
    env.run(&["restore", "--json", id, "--to-database", url])
        .args(extra)
        .output()
        .expect("run")
}

#[test]
fn postgres_logical_backup_restores_each_snapshot_as_it_was() {
    let env = Env::new();
    env.init();
    let src = unique("bs_pg_src");
    let (r1, r2) = (format!("{src}_r1"), format!("{src}_r2"));
    let _drop = Dropper {
        pg: vec![src.clone(), r1.clone(), r2.clone()],
        my: vec![],
    };
    psql("postgres", &format!("CREATE DATABASE \"{src}\""));
    psql(
        &src,
        r#"
CREATE EXTENSION hstore;
CREATE EXTENSION pgcrypto;
CREATE SEQUENCE ticket START 100;
CREATE TABLE item (
  id serial PRIMARY KEY, price numeric(20, 6), name text, data bytea, doc json, docb jsonb,
  tags text[], span int4range, at timestamptz, attrs hstore, updated timestamptz);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.updated := '2020-01-01 00:00:00+00'; RETURN NEW; END $$;
CREATE TRIGGER item_touch BEFORE INSERT OR UPDATE ON item FOR EACH ROW EXECUTE FUNCTION touch();
INSERT INTO item (price, name, data, doc, docb, tags, span, at, attrs)
  SELECT i * 1.000001, '商品 ' || i || ' 中文文本', digest(i::text, 'sha256'),
    json_build_object('i', i), jsonb_build_object('k', i, 'v', 'значение'),
    ARRAY['a' || i, 'b'], int4range(i, i + 10), '2024-03-01 12:00:00+08'::timestamptz + i * interval '1 minute',
    hstore('k', i::text)
  FROM generate_series(1, 300000) i;
CREATE VIEW cheap AS SELECT id, name FROM item WHERE price < 100;
CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(price) AS s FROM item;
SELECT nextval('ticket'), nextval('ticket');
SELECT lo_from_bytea(0, convert_to('large object 大对象', 'UTF8'));
"#,
    );
    let fp1 = pg_fingerprint(&src);
    let url = format!("{PG}/{src}");

    let (id1, total1, stored1) = snapshot_of(&backup(&env, &["--postgres", &url]));
    // Large enough that the one chunk holding the header (and its timestamp) is under 5 %.
    assert!(total1 > 24 << 20, "the dump is {total1} bytes");
    // An unchanged database costs almost nothing the second time.
    let (_, _, stored_again) = snapshot_of(&backup(&env, &["--postgres", &url]));
    assert!(
        stored_again * 20 < stored1,
        "the unchanged database stored {stored_again} bytes again (first: {stored1})"
    );

    psql(
        &src,
        r#"
UPDATE item SET name = name || ' 改' WHERE id % 1000 = 0;
INSERT INTO item (price, name) VALUES (1.5, '新的');
DELETE FROM item WHERE id BETWEEN 10 AND 20;
SELECT nextval('ticket');
CREATE OR REPLACE VIEW cheap AS SELECT id, name, price FROM item WHERE price < 50;
REFRESH MATERIALIZED VIEW totals;
SELECT lo_from_bytea(0, '\x0001ff'::bytea);
"#,
    );
    let fp2 = pg_fingerprint(&src);
    assert_ne!(fp1, fp2);
    let (id2, _, _) = snapshot_of(&backup(&env, &["--postgres", &url]));

    for (id, into, fp) in [(&id1, &r1, &fp1), (&id2, &r2, &fp2)] {
        let out = restore_db(&env, id, &format!("{PG}/{into}"), &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["database"], src.as_str());
        assert_eq!(v["created"], true);
        assert_eq!(
            &pg_fingerprint(into),
            fp,
            "snapshot {id} restored into {into}"
        );
    }

    // An existing non-empty database is refused, then replaced with --force.
    let out = restore_db(&env, &id1, &format!("{PG}/{r2}"), &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(
        pg_fingerprint(&r2),
        fp2,
        "a refused restore changed nothing"
    );
    let out = restore_db(&env, &id1, &format!("{PG}/{r2}"), &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // --target still writes the dump files.
    let dir = env.restore(&id1, "files");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&format!("{src}.pgdump")), "{names:?}");
    assert!(names.contains(&"globals.sql".to_string()), "{names:?}");
}

#[test]
fn postgres_bad_input_fails_in_one_line_with_no_snapshot() {
    let env = Env::new();
    env.init();
    let src = unique("bs_pg_bad");
    let into = format!("{src}_r");
    let _drop = Dropper {
        pg: vec![src.clone(), into.clone()],
        my: vec![],
    };
    psql("postgres", &format!("CREATE DATABASE \"{src}\""));
    psql(&src, "CREATE TABLE t AS SELECT generate_series(1, 1000) i");
    let check = |out: Output, needles: &[&str]| {
        assert!(!out.status.success());
        let e = stderr(&out);
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        for n in needles {
            assert!(e.contains(n), "{n:?} in {e}");
        }
    };
    let nope = unique("nope");
    check(
        backup(&env, &["--postgres", PG, "--database", &nope]),
        &[&nope, "does not exist"],
    );
    check(
        backup(&env, &["--postgres", "postgres://postgres@127.0.0.1:1/x"]),
        &["127.0.0.1:1", "connect"],
    );
    // pg_dump missing, and a pg_dump older than the server.
    let bin = env.path("bin");
    std::fs::create_dir(&bin).unwrap();
    check(
        backup(
            &env,
            &["--postgres", PG, "--client-bin", bin.to_str().unwrap()],
        ),
        &["pg_dump", "not installed"],
    );
    write(
        &bin.join("pg_dump"),
        b"#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n",
    );
    std::os::unix::fs::symlink("/usr/bin/psql", bin.join("psql")).unwrap();
    std::process::Command::new("chmod")
        .args(["+x", bin.join("pg_dump").to_str().unwrap()])
        .status()
        .unwrap();
    check(
        backup(
            &env,
            &["--postgres", PG, "--client-bin", bin.to_str().unwrap()],
        ),
        &["older than the server", "version 9"],
    );
    // A dump killed midway: no snapshot.
    write(
        &bin.join("pg_dump"),
        b"#!/bin/sh\n[ \"$1\" = --version ] && exec /usr/bin/pg_dump --version\nhead -c 100000 /dev/urandom\necho 'pg_dump: error: connection lost' >&2\nkill -9 $$\n",
    );
    std::os::unix::fs::symlink("/usr/bin/pg_dumpall", bin.join("pg_dumpall")).unwrap();
    let url = format!("{PG}/{src}");
    check(
        backup(
            &env,
            &["--postgres", &url, "--client-bin", bin.to_str().unwrap()],
        ),
        &[&src, "killed by signal 9"],
    );
    assert!(env.snapshots().is_empty(), "no snapshot was recorded");

    // A restore that fails drops the database it created.
    let (id, _, _) = snapshot_of(&backup(&env, &["--postgres", &url]));
    write(
        &bin.join("pg_restore"),
        b"#!/bin/sh\nhead -c 1000 >/dev/null\necho 'pg_restore: error: disk full' >&2\nexit 1\n",
    );
    std::process::Command::new("chmod")
        .args(["+x", bin.join("pg_restore").to_str().unwrap()])
        .status()
        .unwrap();
    let out = restore_db(
        &env,
        &id,
        &format!("{PG}/{into}"),
        &["--client-bin", bin.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("disk full") && e.contains("was dropped"), "{e}");
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{into}'")
        )
        .trim(),
        "0"
    );
}

fn my_fingerprint(db: &str) -> String {
    let tables = mariadb(
        None,
        &format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = '{db}' \
             AND table_type = 'BASE TABLE' ORDER BY 1"
        ),
    );
    let mut lines = Vec::new();
    for t in tables.lines() {
        let cols = mariadb(
            None,
            &format!(
                "SELECT group_concat(concat('coalesce(hex(`', column_name, '`), \"-\")') ORDER BY ordinal_position) \
                 FROM information_schema.columns WHERE table_schema = '{db}' AND table_name = '{t}'"
            ),
        );
        let row = format!("concat_ws(',', {})", cols.trim());
        lines.push(format!(
            "table {t} {}",
            mariadb(
                Some(db),
                &format!(
                    "SET SESSION group_concat_max_len = 1 << 30; SELECT count(*), md5(coalesce(group_concat({row} ORDER BY {row} SEPARATOR '|'), '')) FROM `{t}`"
                )
            )
            .trim()
        ));
    }
    for (what, sql) in [
        (
            "view",
            format!(
                "SELECT table_name, view_definition FROM information_schema.views WHERE table_schema = '{db}' ORDER BY 1"
            ),
        ),
        (
            "routine",
            format!(
                "SELECT routine_name, routine_definition FROM information_schema.routines WHERE routine_schema = '{db}' ORDER BY 1"
            ),
        ),
        (
            "trigger",
            format!(
                "SELECT trigger_name, action_statement FROM information_schema.triggers WHERE trigger_schema = '{db}' ORDER BY 1"
            ),
        ),
        (
            "event",
            format!(
                "SELECT event_name, event_definition FROM information_schema.events WHERE event_schema = '{db}' ORDER BY 1"
            ),
        ),
        (
            "auto_increment",
            format!(
                "SELECT table_name, auto_increment FROM information_schema.tables WHERE table_schema = '{db}' ORDER BY 1"
            ),
        ),
    ] {
        // Definitions name their schema: compare them with it taken out.
        let text = mariadb(None, &sql).replace(&format!("`{db}`."), "");
        lines.push(format!("{what} {text}"));
    }
    lines.join("\n")
}

#[test]
fn mysql_logical_backup_restores_each_snapshot_as_it_was() {
    let env = Env::new();
    env.init();
    let src = unique("bs_my_src");
    let (r1, r2) = (format!("{src}_r1"), format!("{src}_r2"));
    let user = unique("bs_user");
    let _drop = Dropper {
        pg: vec![],
        my: vec![src.clone(), r1.clone(), r2.clone()],
    };
    let _user = DropUser(user.clone());
    mariadb(
        None,
        &format!("CREATE DATABASE `{src}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
    );
    mariadb(
        Some(&src),
        &format!(
            r#"
CREATE TABLE item (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(200), data BLOB,
  price DECIMAL(20,6), updated DATETIME) CHARACTER SET utf8mb4;
CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(100));
CREATE TRIGGER item_log AFTER INSERT ON item FOR EACH ROW INSERT INTO log (what) VALUES (CONCAT('新 ', NEW.id));
CREATE PROCEDURE add_item(IN n VARCHAR(200)) INSERT INTO item (name, price) VALUES (n, 1);
CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DISABLE DO DELETE FROM log WHERE id < 0;
CREATE VIEW cheap AS SELECT id, name FROM item WHERE price < 100;
INSERT INTO item (name, data, price, updated)
  SELECT CONCAT('商品 ', seq, ' 中文'), UNHEX(SHA2(seq, 256)), seq * 1.5, '2024-03-01 12:00:00'
  FROM seq_1_to_3000;
CALL add_item('过程');
CREATE USER '{user}'@'%' IDENTIFIED BY 'pw';
GRANT SELECT, INSERT ON `{src}`.* TO '{user}'@'%';
"#
        ),
    );
    let fp1 = my_fingerprint(&src);
    let url = format!("{MY}/{src}");
    let out = backup(&env, &["--mysql", &url]);
    let (id1, _, _) = snapshot_of(&out);
    let grants = env
        .run(&["dump", &id1, "grants.sql"])
        .output()
        .expect("dump");
    assert!(
        String::from_utf8_lossy(&grants.stdout).contains(&user),
        "grants.sql holds the user"
    );

    mariadb(
        Some(&src),
        "UPDATE item SET name = CONCAT(name, ' 改') WHERE id % 100 = 0; CALL add_item('又一个'); \
         DELETE FROM item WHERE id < 5; CREATE OR REPLACE VIEW cheap AS SELECT id FROM item;",
    );
    let fp2 = my_fingerprint(&src);
    assert_ne!(fp1, fp2);
    let (id2, _, _) = snapshot_of(&backup(&env, &["--mysql", &url]));

    for (id, into, fp) in [(&id1, &r1, &fp1), (&id2, &r2, &fp2)] {
        let out = restore_db(&env, id, &format!("{MY}/{into}"), &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            &my_fingerprint(into),
            fp,
            "snapshot {id} restored into {into}"
        );
    }
    let out = restore_db(&env, &id1, &format!("{MY}/{r2}"), &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    let nope = unique("nope");
    let out = backup(&env, &["--mysql", MY, "--database", &nope]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&nope), "{}", stderr(&out));
    // A server that is down: one line naming it.
    let out = backup(&env, &["--mysql", "mysql://root@127.0.0.1:1"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    assert!(e.contains("127.0.0.1:1") && e.contains("connect"), "{e}");
}

#[test]
fn database_policies_back_up_with_the_password_from_a_file_and_refuse_one_in_the_url() {
    let env = Env::new();
    env.init();
    let src = unique("bs_my_pol");
    let user = unique("bs_pol");
    let _drop = Dropper {
        pg: vec![],
        my: vec![src.clone()],
    };
    let _user = DropUser(user.clone());
    mariadb(None, &format!("CREATE DATABASE `{src}`"));
    mariadb(
        Some(&src),
        &format!(
            "CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(20)); INSERT INTO t VALUES (1, '一');
             CREATE USER '{user}'@'%' IDENTIFIED BY 's3cret';
             GRANT ALL ON `{src}`.* TO '{user}'@'%'; GRANT SELECT ON mysql.* TO '{user}'@'%';"
        ),
    );
    let dir = env.path("policies");
    write(
        &dir.join("backstop.toml"),
        format!(
            "[targets.main]\nrepo = \"{}\"\npassword-env = \"BACKSTOP_PASSWORD\"\n",
            env.repo().display()
        )
        .as_bytes(),
    );
    write(&dir.join("db.pw"), b"s3cret\n");
    let policy = |name: &str, source: &str| {
        let file = dir.join(format!("{name}.toml"));
        write(
            &file,
            format!("name = \"{name}\"\ntargets = [\"main\"]\n[source]\n{source}\n").as_bytes(),
        );
        file
    };
    let good = policy(
        "db",
        &format!(
            "kind = \"mysql\"\nurl = \"mysql://{user}@127.0.0.1:3306\"\ndatabases = [\"{src}\"]\n\
             password-file = \"db.pw\"\ntimeout = \"10m\""
        ),
    );
    let out = env
        .cmd()
        .args(["backup", "--json", "--policy"])
        .arg(&good)
        .output()
        .unwrap();
    let (id, _, _) = snapshot_of(&out);
    let sql = env
        .run(&["dump", &id, &format!("{src}.sql")])
        .output()
        .unwrap();
    assert!(sql.status.success(), "{}", stderr(&sql));
    assert!(String::from_utf8_lossy(&sql.stdout).contains("(1,'一')"));
    let snaps = env.snapshots();
    assert_eq!(
        snaps.last().unwrap()["snapshot"]["policy"],
        "db",
        "{snaps:?}"
    );

    // The wrong password: one line naming the server and the cause, no snapshot.
    write(&dir.join("db.pw"), b"wrong\n");
    let out = env
        .cmd()
        .args(["backup", "--policy"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("Access denied") && e.contains("127.0.0.1:3306"),
        "{e}"
    );
    assert!(!e.contains("s3cret") && !e.contains("wrong"), "{e}");
    assert_eq!(env.snapshots().len(), snaps.len(), "no snapshot on failure");

    for (source, expect) in [
        (
            "kind = \"mysql\"\nurl = \"mysql://root:pw@127.0.0.1\"",
            "must not",
        ),
        (
            "kind = \"mysql\"\nurl = \"mysql://root@127.0.0.1\"\nmode = \"physical\"",
            "physical backups are for PostgreSQL",
        ),
        (
            "kind = \"postgres\"\nurl = \"mysql://root@127.0.0.1\"",
            "is not a database URL",
        ),
        (
            "kind = \"postgres\"\nurl = \"postgres://127.0.0.1\"\nmode = \"dump\"",
            "unknown variant",
        ),
        (
            "kind = \"postgres\"\nurl = \"postgres://127.0.0.1\"\npassword = \"x\"",
            "unknown field",
        ),
    ] {
        let out = policy_check(&env, policy("bad", source));
        assert!(!out.status.success(), "{source}");
        let e = stderr(&out);
        assert!(
            e.contains(expect) && e.contains("bad.toml:"),
            "{source}: {e}"
        );
        assert!(!e.contains(":pw@"), "{e}");
    }
}

#[test]
fn a_snapshot_of_several_databases_restores_each_under_its_own_name() {
    let env = Env::new();
    env.init();
    let (a, b) = (unique("bs_my_a"), unique("bs_my_b"));
    let _drop = Dropper {
        pg: vec![],
        my: vec![a.clone(), b.clone()],
    };
    for (db, v) in [(&a, "甲"), (&b, "乙")] {
        mariadb(None, &format!("CREATE DATABASE `{db}`"));
        mariadb(
            Some(db),
            &format!(
                "CREATE TABLE t (s VARCHAR(10)) CHARACTER SET utf8mb4; INSERT INTO t VALUES ('{v}')"
            ),
        );
    }
    let (id, _, _) = snapshot_of(&backup(
        &env,
        &["--mysql", MY, "--database", &a, "--database", &b],
    ));
    for db in [&a, &b] {
        mariadb(None, &format!("DROP DATABASE `{db}`"));
    }
    // A newer file backup in the same repository: "latest" still means the newest dump.
    let files = env.path("files");
    write(&files.join("f"), b"f");
    env.backup(&files, &[]);
    // No database in the URL and none named: every one, under its own name.
    let out = restore_db(&env, "latest", MY, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["restored"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(mariadb(Some(&a), "SELECT s FROM t").trim(), "甲");
    assert_eq!(mariadb(Some(&b), "SELECT s FROM t").trim(), "乙");
    // Again: both exist and hold tables, so each is refused, and the exit says so.
    let out = restore_db(&env, &id, MY, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("--force") && e.contains("2 of 2 databases"),
        "{e}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"].as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn a_database_whose_name_is_no_file_name_is_backed_up_and_restored() {
    let env = Env::new();
    env.init();
    // A slash, a glob character and a percent sign: any name a server allows is stored.
    let odd = format!("{}/a*b%", unique("bs_pg_odd"));
    let into = unique("bs_pg_odd_r");
    let _drop = Dropper {
        pg: vec![odd.clone(), into.clone()],
        my: vec![],
    };
    psql("postgres", &format!("CREATE DATABASE \"{odd}\""));
    psql(&odd, "CREATE TABLE t AS SELECT 'ünï' AS s");
    let (id, _, _) = snapshot_of(&backup(&env, &["--postgres", PG, "--database", &odd]));
    let out = restore_db(&env, &id, &format!("{PG}/{into}"), &["--database", &odd]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(psql(&into, "SELECT s FROM t").trim(), "ünï");
}
