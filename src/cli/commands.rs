//! Dispatch: each command opens what it needs, calls the library, prints the result.

use std::path::Path;

use serde_json::json;

use super::output::{failure, json, note, outln, size, table, time, time_str, warn};
use super::progress::Bar;
use super::{
    BackupArgs, CatalogCommand, Cli, Command, LatestArgs, PolicyCommand, RepairCommand, RepoArgs,
};
use backstop::backup::{BackupOptions, SourceOptions};
use backstop::catalog::{Recorder, RepoKey, blocking::Catalog};
use backstop::config::{self, PasswordSource};
use backstop::error::{Error, ErrorKind, Result};
use backstop::pipeline::{ChunkerParams, KdfParams};
use backstop::policy::retention;
use backstop::progress::{NoProgress, Progress};
use backstop::repo::prune::{PruneOptions, PruneReport};
use backstop::repo::{InitOptions, NodeKind, Repo};
use backstop::restore::{self, Overwrite, RestoreOptions, SnapshotRef};
use backstop::source::command::CommandOptions;
use backstop::source::files::FilesOptions;
use backstop::storage::faults::Faults;
use backstop::storage::{Locking, Storage, StorageOptions};
use backstop::verify::ReadData;
use backstop::{jobs, policy};

struct Ctx<'a> {
    cli: &'a Cli,
    rt: tokio::runtime::Handle,
}

impl Ctx<'_> {
    fn catalog_url(&self, url: Option<&str>) -> String {
        let g = &self.cli.global;
        match (&g.catalog, url) {
            (Some(u), _) => u.clone(),
            (None, Some(u)) => u.to_string(),
            (None, None) => config::default_catalog_url(
                &g.data_dir
                    .clone()
                    .unwrap_or_else(|| config::default_data_dir(&env)),
            ),
        }
    }

    /// The catalog itself, for commands that are about it (`status`): failing is an error.
    fn catalog(&self, url: Option<&str>) -> Result<Catalog> {
        Catalog::open(&self.catalog_url(url))
    }

    /// The catalog as a recorder, for commands on repositories: an unusable catalog is a
    /// warning, never a reason to stop (the repository is the source of truth).
    fn recorder(&self, url: Option<&str>) -> Recorder {
        Recorder::open(&self.catalog_url(url))
    }

    fn storage(&self, location: &str) -> Result<Storage> {
        // BACKSTOP_LOCK_TTL is read here, not in the library; a bad value is a config error.
        let ttl = match std::env::var("BACKSTOP_LOCK_TTL") {
            Ok(v) => Some(
                backstop::repo::lock::parse_lock_ttl(&v)
                    .map_err(|e| e.context("BACKSTOP_LOCK_TTL"))?,
            ),
            Err(_) => None,
        };
        // So is BACKSTOP_FAULTS (fault injection for tests, see storage::faults).
        let faults = match std::env::var("BACKSTOP_FAULTS") {
            Ok(spec) if !spec.is_empty() => Some(std::sync::Arc::new(
                Faults::parse(&spec).map_err(|e| e.context("BACKSTOP_FAULTS"))?,
            )),
            _ => None,
        };
        let opts = StorageOptions {
            faults,
            ..StorageOptions::default()
        };
        Ok(
            Storage::open_with(location, self.rt.clone(), opts)?.with_locking(Locking {
                no_lock: false,
                ttl,
            }),
        )
    }

    fn repo_location(args: &RepoArgs) -> Result<&str> {
        args.repo
            .as_deref()
            .ok_or_else(|| Error::config("no repository given: use --repo REPO or BACKSTOP_REPO"))
    }

    fn open_repo(&self, args: &RepoArgs) -> Result<Repo> {
        let storage = self.storage(Self::repo_location(args)?)?;
        let locking = Locking {
            no_lock: args.no_lock,
            ..storage.locking()
        };
        Repo::open(storage.with_locking(locking), || {
            password_source(args).read(&env)
        })
    }

    fn progress(&self) -> Box<dyn Progress> {
        let g = &self.cli.global;
        match Bar::new(!g.no_progress && !g.json) {
            Some(b) => Box::new(b),
            None => Box::new(NoProgress),
        }
    }
}

fn retry_lock(args: &RepoArgs) -> Result<std::time::Duration> {
    match &args.retry_lock {
        None => Ok(std::time::Duration::ZERO),
        Some(d) => Ok(retention::parse_duration(d)?.to_std().unwrap_or_default()),
    }
}

fn password_source(args: &RepoArgs) -> PasswordSource {
    PasswordSource {
        // Only when set, so that a missing password gets the message listing every way to give one.
        password_env: std::env::var_os("BACKSTOP_PASSWORD").map(|_| "BACKSTOP_PASSWORD".into()),
        password_file: args.password_file.clone(),
        password_command: args.password_command.clone(),
    }
}

/// The process environment, for the library's settings that come from it.
fn env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name)
}

/// Runs the parsed command line. `Partial` errors mean "done, but something failed".
pub fn run(cli: &Cli, rt: tokio::runtime::Handle) -> Result<()> {
    // SIGINT/SIGTERM: release locks and remove half-written files before exiting.
    backstop::interrupt::install();
    let ctx = Ctx { cli, rt };
    let json_out = cli.global.json;
    match &cli.command {
        Command::Init {
            repo,
            no_encryption,
            copy_chunker_params,
            kdf_memory_mib,
            kdf_passes,
            from,
        } => {
            let chunking_of = match (&from.from_repo, *copy_chunker_params) {
                (Some(other), true) => {
                    let pw = PasswordSource {
                        password_env: std::env::var_os("BACKSTOP_FROM_PASSWORD")
                            .map(|_| "BACKSTOP_FROM_PASSWORD".into()),
                        password_file: from.from_password_file.clone(),
                        password_command: from.from_password_command.clone(),
                    };
                    // By default the other repository has the same password.
                    let pw = if pw.is_empty() {
                        password_source(repo)
                    } else {
                        pw
                    };
                    let r = Repo::open(ctx.storage(other)?, || pw.read(&env))
                        .map_err(|e| e.context(format!("opening --from-repo {other}")))?;
                    Some(r.chunking())
                }
                (Some(_), false) => {
                    return Err(Error::config(
                        "--from-repo is used with --copy-chunker-params",
                    ));
                }
                _ => None,
            };
            let storage = ctx.storage(Ctx::repo_location(repo)?)?;
            let passphrase = if *no_encryption {
                None
            } else {
                Some(password_source(repo).read(&env)?)
            };
            let r = Repo::init(
                storage,
                &InitOptions {
                    passphrase,
                    kdf: KdfParams {
                        memory_kib: kdf_memory_mib * 1024,
                        iterations: *kdf_passes,
                        ..KdfParams::default()
                    },
                    chunker: ChunkerParams::default(),
                    chunking_of,
                },
            )?;
            ctx.recorder(None).with(|c| c.touch_repo(&RepoKey::of(&r)));
            if json_out {
                json(
                    &json!({"id": r.config().id, "location": r.storage().location(), "encrypted": r.config().encrypted}),
                );
            } else {
                outln!(
                    "created {} repository {} at {}",
                    if r.config().encrypted {
                        "encrypted"
                    } else {
                        "UNENCRYPTED"
                    },
                    r.config().id.short(),
                    r.storage().location()
                );
                if r.config().encrypted {
                    outln!("keep the password safe: without it the data cannot be restored");
                }
            }
            Ok(())
        }
        Command::Backup(args) => backup(&ctx, args),
        Command::WalPush {
            repo,
            path,
            no_ship,
        } => wal_push(&ctx, repo, path, *no_ship),
        Command::WalShip { repo, if_idle } => wal_ship(&ctx, repo, *if_idle),
        Command::WalFetch { repo, name, path } => wal_fetch(&ctx, repo, name, path),
        Command::Restore {
            to_datadir: Some(dir),
            repo,
            latest,
            snapshot,
            to_time,
            ..
        } => restore_datadir(&ctx, repo, latest, snapshot, dir, to_time.as_deref()),
        Command::Snapshots { repo } => {
            let r = ctx.open_repo(repo)?;
            let snaps = r.snapshots()?;
            if json_out {
                let v: Vec<_> = snaps
                    .iter()
                    .map(|(id, s)| json!({"id": id, "snapshot": s}))
                    .collect();
                json(&v);
            } else {
                let rows: Vec<Vec<String>> = snaps
                    .iter()
                    .map(|(id, s)| {
                        vec![
                            id.short(),
                            time(&s.time),
                            s.hostname.clone(),
                            s.kind.to_string(),
                            s.tags.join(","),
                            size(s.summary.bytes_total),
                            s.paths.join(", "),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "Time", "Host", "Kind", "Tags", "Size", "Paths"],
                    &rows,
                );
                outln!("{} snapshot(s)", snaps.len());
            }
            // The damaged manifests were named as they were read: the listing is incomplete.
            if snaps.damaged.is_empty() {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::Partial,
                    format!(
                        "{} snapshot manifest(s) could not be read (`backstop repair snapshots` sets them aside)",
                        snaps.damaged.len()
                    ),
                ))
            }
        }
        Command::Ls {
            repo,
            latest,
            snapshot,
            path,
        } => ls(&ctx, repo, latest, snapshot, path.as_deref()),
        Command::Dump {
            repo,
            latest,
            snapshot,
            path,
        } => {
            let r = ctx.open_repo(repo)?;
            let (sid, snap) = r.find_snapshot_for(snapshot, &latest.filter())?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let mut dest = restore::Stream::new(&mut out, "standard output");
            let opts = RestoreOptions {
                retry_lock: retry_lock(repo)?,
                cancel: backstop::interrupt::token(),
                ..Default::default()
            };
            // A signal cancels the dump, which stops at its next read and releases its lock.
            let _cooperation = backstop::interrupt::cooperate();
            restore::dump(&r, sid, &snap, path, &mut dest, &opts, &NoProgress)?;
            Ok(())
        }
        Command::Restore {
            db:
                db @ super::ToDatabaseArgs {
                    to_database: Some(url),
                    ..
                },
            repo,
            latest,
            snapshot,
            ..
        } => {
            use backstop::restore::database::{self, ToDatabaseOptions};
            use backstop::source::db::{Connection, DbPassword, DbUrl, Engine, Origin};
            let engine = if url.starts_with("mysql:") || url.starts_with("mariadb:") {
                Engine::Mysql
            } else {
                Engine::Postgres
            };
            let (u, warning) = DbUrl::parse(engine, url, Origin::CommandLine)
                .map_err(|e| e.context("--to-database"))?;
            if let Some(w) = warning {
                warn(format_args!("{w}"));
            }
            let pw = DbPassword {
                password_env: db.db_password_env.clone(),
                password_file: db.db_password_file.clone(),
            };
            let to = ToDatabaseOptions {
                conn: Connection::new(u, &pw, &env)?,
                database: db.database.clone(),
                force: db.force,
                bin_dir: db.client_bin.clone(),
            };
            let r = ctx.open_repo(repo)?;
            // "latest" is the newest dump of this kind of server (not a file backup, not
            // a physical base backup).
            let mut filter = latest.filter();
            let (kind, marker) = match engine {
                Engine::Postgres => ("postgres", backstop::source::postgres::GLOBALS),
                Engine::Mysql => ("mysql", backstop::source::mysql::GRANTS),
            };
            filter.source = Some(kind.into());
            filter.paths.push(marker.into());
            let (sid, snap) = r.find_snapshot_for(snapshot, &filter)?;
            let sref = SnapshotRef::new(sid, &snap);
            let opts = RestoreOptions {
                retry_lock: retry_lock(repo)?,
                cancel: backstop::interrupt::token(),
                ..Default::default()
            };
            let _cooperation = backstop::interrupt::cooperate();
            let report = |o: &database::DatabaseRestored| {
                outln!(
                    "restored database '{}' from {sref} into {} ({}{}) in {:.1}s",
                    o.database,
                    o.into,
                    size(o.bytes),
                    if o.created { ", created" } else { "" },
                    o.seconds
                );
            };
            if to.conn.url.database.is_some() || to.database.is_some() {
                let o = database::run(&r, sid, &snap, &to, &opts, &NoProgress)?;
                if json_out {
                    json(&o);
                } else {
                    report(&o);
                }
                return Ok(());
            }
            // No database named: every database of the snapshot, each under its own name,
            // one after the other; a failure does not stop the others.
            let names = database::databases(&snap);
            if names.is_empty() {
                return Err(Error::config(format!(
                    "snapshot {sref} holds no database dumps: --to-database restores snapshots \
                     of --postgres or --mysql"
                )));
            }
            let (mut done, mut failed) = (Vec::new(), Vec::new());
            for name in &names {
                let one = ToDatabaseOptions {
                    conn: to.conn.with_database(name),
                    database: Some(name.clone()),
                    ..to.clone()
                };
                match database::run(&r, sid, &snap, &one, &opts, &NoProgress) {
                    Ok(o) => {
                        if !json_out {
                            report(&o);
                        }
                        done.push(o);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => return Err(e),
                    Err(e) => {
                        warn(format_args!("{}", backstop::error::chain(&e)));
                        failed.push(json!({"database": name, "error": backstop::error::chain(&e)}));
                    }
                }
            }
            if json_out {
                json(&json!({"restored": done, "failed": failed}));
            }
            if !failed.is_empty() {
                return Err(Error::new(
                    ErrorKind::Partial,
                    format!(
                        "{} of {} databases could not be restored",
                        failed.len(),
                        names.len()
                    ),
                ));
            }
            Ok(())
        }
        Command::Restore {
            to_command: Some(command),
            repo,
            latest,
            snapshot,
            include,
            dry_run,
            ..
        } => {
            let r = ctx.open_repo(repo)?;
            let (sid, snap) = r.find_snapshot_for(snapshot, &latest.filter())?;
            let sref = SnapshotRef::new(sid, &snap);
            let mut dest = restore::ToCommand::new(command)?;
            note(format_args!("restoring {sref} into command '{command}'"));
            let opts = RestoreOptions {
                includes: include.clone(),
                dry_run: *dry_run,
                retry_lock: retry_lock(repo)?,
                cancel: backstop::interrupt::token(),
                ..Default::default()
            };
            let _cooperation = backstop::interrupt::cooperate();
            let o = restore::run_to(&r, sid, &snap, &opts, &mut dest, &NoProgress)?;
            if json_out {
                json(&o);
            } else if *dry_run {
                outln!("would restore {} file(s) into command '{command}'", o.files);
            } else {
                outln!(
                    "restored {} into command '{command}' from {sref}",
                    size(o.bytes)
                );
            }
            if !o.unmatched_includes.is_empty() {
                return Err(Error::config(format!(
                    "--include {} matched nothing in the snapshot",
                    o.unmatched_includes.join(", ")
                )));
            }
            if o.files == 0 && !*dry_run {
                return Err(Error::config("the selection holds no file to restore"));
            }
            Ok(())
        }
        Command::Restore {
            repo,
            latest,
            snapshot,
            target,
            include,
            overwrite,
            dry_run,
            ..
        } => {
            let target = target
                .as_ref()
                .ok_or_else(|| Error::config("give --target DIR or --to-command CMD"))?;
            let r = ctx.open_repo(repo)?;
            let cat = ctx.recorder(None);
            let filter = latest.filter();
            let (sid, snap) = r.find_snapshot_for(snapshot, &filter)?;
            let sref = SnapshotRef::new(sid, &snap);
            let overwrite: Overwrite = (*overwrite).into();
            let verb = if *dry_run {
                "would restore"
            } else {
                "restoring"
            };
            note(format_args!("{verb} {sref} into {}", target.display()));
            if restore::target_is_nonempty(target) {
                let what = match overwrite {
                    Overwrite::Never => "existing files are kept (--overwrite never)",
                    Overwrite::IfChanged => {
                        "existing files that differ are replaced (--overwrite if-changed)"
                    }
                    Overwrite::Always => "existing files are replaced (--overwrite always)",
                };
                warn(format_args!(
                    "target {} is not empty: {what}",
                    target.display()
                ));
            }
            let opts = RestoreOptions {
                target: target.clone(),
                includes: include.clone(),
                dry_run: *dry_run,
                list: *dry_run && cli.global.verbose > 0,
                overwrite,
                threads: 0,
                retry_lock: retry_lock(repo)?,
                cancel: backstop::interrupt::token(),
            };
            // A signal cancels the restore, which removes its temporary files and releases
            // its lock.
            let _cooperation = backstop::interrupt::cooperate();
            let p = ctx.progress();
            let o = jobs::restore(&cat, &r, &sid.to_hex(), &filter, &opts, p.as_ref())?;
            if json_out {
                json(&o);
            } else {
                for e in &o.planned {
                    outln!("{:<13} {:<8} {:>10} {}", e.action, e.kind, e.size, e.path);
                }
                let verb = if *dry_run {
                    "would restore"
                } else {
                    "restored"
                };
                outln!(
                    "{verb} {} files, {} directories, {} other entries, {} into {} from {sref}",
                    o.files,
                    o.dirs,
                    o.others,
                    size(o.bytes),
                    target.display()
                );
                if o.kept > 0 {
                    warn(format_args!(
                        "kept {} existing entries as they were (--overwrite if-changed or always replaces them)",
                        o.kept
                    ));
                }
                for w in &o.warnings {
                    warn(format_args!("{w}"));
                }
                for p in &o.unmatched_includes {
                    warn(format_args!(
                        "--include '{p}' matches nothing in the snapshot"
                    ));
                }
                for (path, why) in &o.failed {
                    failure(format_args!("FAILED: {path}: {why}"));
                }
            }
            if !o.failed.is_empty() {
                Err(Error::new(
                    ErrorKind::Partial,
                    format!("{} entries could not be restored", o.failed.len()),
                ))
            } else if !o.unmatched_includes.is_empty() {
                Err(Error::new(
                    ErrorKind::Partial,
                    format!(
                        "--include {} matched nothing",
                        o.unmatched_includes.join(", ")
                    ),
                ))
            } else {
                Ok(())
            }
        }
        Command::Verify {
            repo,
            read_data,
            read_data_subset,
        } => {
            let read = match (read_data, read_data_subset) {
                (true, _) => ReadData::All,
                (false, Some(s)) => ReadData::Subset(parse_percent(s)?),
                _ => ReadData::None,
            };
            let r = ctx.open_repo(repo)?;
            let cat = ctx.recorder(None);
            let p = ctx.progress();
            let token = backstop::interrupt::token();
            let rep = jobs::verify(&cat, &r, read, retry_lock(repo)?, &token, p.as_ref())?;
            if json_out {
                json(&rep);
            } else {
                outln!(
                    "checked {} snapshots, {} packs, {} blobs; re-read {} packs ({})",
                    rep.snapshots,
                    rep.packs,
                    rep.blobs,
                    rep.packs_read,
                    size(rep.bytes_read)
                );
                for pr in &rep.problems {
                    outln!("error: {}", pr.message);
                }
                for a in &rep.affected {
                    outln!("snapshot {} affected paths:", a.snapshot.short());
                    for p in &a.paths {
                        outln!("  {p}");
                    }
                }
                if rep.is_ok() {
                    outln!("no errors were found");
                }
            }
            if rep.is_ok() {
                Ok(())
            } else {
                Err(Error::corrupt(format!(
                    "verification found {} problem(s)",
                    rep.problems.len()
                )))
            }
        }
        Command::Forget {
            repo,
            keep,
            policy: policy_file,
            target,
            snapshots,
            timezone,
            dry_run,
            prune,
        } => forget(
            &ctx,
            &ForgetArgs {
                repo,
                keep,
                policy_file: policy_file.as_deref(),
                target: target.as_deref(),
                ids: snapshots,
                timezone: timezone.as_deref(),
                dry_run: *dry_run,
                prune: *prune,
            },
        ),
        Command::Prune { repo, prune } => {
            let r = ctx.open_repo(repo)?;
            let opts = PruneOptions {
                dry_run: prune.dry_run,
                grace: retention::parse_duration(&prune.grace)?,
                retry_lock: retry_lock(repo)?,
                cancel: backstop::interrupt::token(),
                ..Default::default()
            };
            let rep = jobs::prune(&ctx.recorder(None), &r, &opts)?;
            print_prune(&rep, prune.dry_run, json_out);
            Ok(())
        }
        Command::Repair {
            repo: parent_repo,
            dry_run: parent_dry_run,
            what,
        } => {
            let (repo, dry_run, snapshots) = match what {
                None => (parent_repo.clone(), *parent_dry_run, false),
                Some(RepairCommand::Index { repo, dry_run }) => (
                    merged_repo_args(parent_repo, repo),
                    *parent_dry_run || *dry_run,
                    false,
                ),
                Some(RepairCommand::Snapshots { repo, dry_run }) => (
                    merged_repo_args(parent_repo, repo),
                    *parent_dry_run || *dry_run,
                    true,
                ),
            };
            let (repo, dry_run) = (&repo, &dry_run);
            if snapshots {
                return repair_snapshots(&ctx, repo, *dry_run);
            }
            let r = ctx.open_repo(repo)?;
            let rep = jobs::repair(
                &ctx.recorder(None),
                &r,
                *dry_run,
                retry_lock(repo)?,
                &backstop::interrupt::token(),
            )?;
            if json_out {
                json(&rep);
            } else {
                outln!(
                    "{} packs read: {} intact, {} damaged, {} missing",
                    rep.packs,
                    rep.intact,
                    rep.damaged.len(),
                    rep.missing.len()
                );
                for id in &rep.damaged {
                    outln!(
                        "damaged pack {id}{}",
                        if *dry_run { "" } else { " (moved to damaged/)" }
                    );
                }
                for id in &rep.missing {
                    outln!("missing pack {id}");
                }
                outln!(
                    "{} blob(s) salvaged, {} blob(s) lost",
                    rep.salvaged_blobs,
                    rep.lost_blobs
                );
                if rep.lost_blobs > 0 {
                    outln!(
                        "run `backstop verify` to see the affected snapshots; back the sources up again to restore what they still have"
                    );
                }
            }
            Ok(())
        }
        Command::Unlock { repo } => {
            let r = ctx.open_repo(repo)?;
            let removed = backstop::repo::lock::remove_stale(r.storage())?;
            if json_out {
                json(&removed);
            } else {
                for l in &removed.stale {
                    outln!(
                        "removed stale lock of {} (pid {} on {}): {}",
                        l.info.operation,
                        l.info.pid,
                        l.info.host,
                        l.reason.as_deref().unwrap_or("stale")
                    );
                }
                for g in &removed.garbage {
                    outln!("removed {g}: not a readable lock");
                }
                outln!(
                    "{} stale lock(s) removed; live locks are never removed",
                    removed.stale.len() + removed.garbage.len()
                );
            }
            Ok(())
        }
        Command::Status => status(&ctx),
        Command::Catalog {
            command: CatalogCommand::Rebuild { repo },
        } => {
            let r = ctx.open_repo(repo)?;
            let (cat, aside) = Catalog::open_or_replace(&ctx.catalog_url(None))?;
            let list = jobs::rebuild_catalog(&cat, &r)?;
            let n = list.len();
            if json_out {
                json(
                    &json!({"repository": r.config().id, "snapshots": n, "skipped": list.damaged, "broken_catalog_moved_to": aside}),
                );
            } else {
                if let Some(a) = &aside {
                    outln!(
                        "the old catalog could not be opened; it was moved to {}",
                        a.display()
                    );
                }
                outln!(
                    "catalog rebuilt: {n} snapshot(s) of repository {}",
                    r.config().id.short()
                );
                for d in &list.damaged {
                    outln!("skipped damaged manifest {}: {}", d.path, d.error);
                }
            }
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Check { files },
        } => policy_check(files, json_out),
        Command::Demo { policy } => demo(&ctx, policy),
    }
}

fn parse_percent(s: &str) -> Result<f64> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| {
        Error::config(format!(
            "--read-data-subset '{s}': expected a percentage like 10%"
        ))
    })?;
    if !(0.0..=100.0).contains(&v) || v == 0.0 {
        return Err(Error::config(format!(
            "--read-data-subset '{s}': must be above 0% and at most 100%"
        )));
    }
    Ok(v)
}

fn policy_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("reading", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && p.file_name().is_some_and(|n| n != "backstop.toml")
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A duration given with `flag`: above zero, such as 90s, 30m or 2h.
fn duration_flag(flag: &str, value: &str) -> Result<std::time::Duration> {
    backstop::source::command::parse_timeout(value).ok_or_else(|| {
        Error::config(format!(
            "{flag}: '{value}' is not a duration such as 90s, 30m or 2h"
        ))
    })
}

/// The database source `--postgres` or `--mysql` names, its password resolved.
fn database_source(
    args: &BackupArgs,
    timeout: Option<std::time::Duration>,
) -> Result<Option<SourceOptions>> {
    use backstop::source::db::{Connection, DbPassword, DbUrl, Engine, Origin};
    let (engine, text) = match (&args.postgres, &args.mysql) {
        (Some(u), _) => (Engine::Postgres, u),
        (_, Some(u)) => (Engine::Mysql, u),
        _ => {
            if !args.databases.is_empty() {
                return Err(Error::config(
                    "--database names a database of --postgres URL or --mysql URL; give one",
                ));
            }
            return Ok(None);
        }
    };
    let (url, warning) = DbUrl::parse(engine, text, Origin::CommandLine)?;
    if let Some(w) = warning {
        warn(format_args!("{w}"));
    }
    let pw = DbPassword {
        password_env: args.db_password_env.clone(),
        password_file: args.db_password_file.clone(),
    };
    Ok(Some(SourceOptions::Database(
        backstop::source::db::DbOptions {
            conn: Connection::new(url, &pw, &env)?,
            databases: args.databases.clone(),
            bin_dir: args.client_bin.clone(),
            timeout,
            physical: args.physical,
        },
    )))
}

fn backup(ctx: &Ctx, args: &BackupArgs) -> Result<()> {
    let files = FilesOptions {
        paths: args.paths.clone(),
        excludes: args.exclude.clone(),
        includes: args.include.clone(),
        one_file_system: args.one_file_system,
        ignore_inode: args.ignore_inode,
        threads: 0,
    };
    let mut opts = BackupOptions {
        source: SourceOptions::Files(files),
        full: args.full,
        tags: args.tag.clone(),
        policy: None,
        compression: args.compression,
        threads: args.threads.map_or(0, usize::from),
        retry_lock: retry_lock(&args.repo)?,
        damaged_packs: Default::default(),
        cancel: backstop::interrupt::token(),
        hooks: backstop::hooks::Hooks::from_flags(
            &args.hook_before,
            &args.hook_after,
            duration_flag("--hook-timeout", &args.hook_timeout)?,
        )?,
    };
    // A signal cancels the backup, which stops at its next step and releases its lock.
    let _cooperation = backstop::interrupt::cooperate();
    // Each target: (label, repo). From a policy, or the one --repo.
    let (targets, catalog_url) = match &args.policy {
        Some(path) => {
            let lp = policy::load(path)?;
            opts = lp.backup_options(&opts, &env)?;
            let mut targets = Vec::new();
            for (name, t) in &lp.targets {
                let storage = ctx.storage(&t.repo)?;
                let pw = t.password.clone();
                let pw = if pw.is_empty() {
                    password_source(&args.repo)
                } else {
                    pw
                };
                let repo = Repo::open(storage, || pw.read(&env))
                    .map_err(|e| e.context(format!("target {name}")))?;
                targets.push((name.clone(), repo));
            }
            (targets, lp.settings.catalog.map(|c| c.url))
        }
        None => {
            let timeout = match &args.timeout {
                Some(t) => Some(duration_flag("--timeout", t)?),
                None => None,
            };
            if let Some(source) = database_source(args, timeout)? {
                opts.source = source;
            } else if let Some(command) = &args.stdin_from_command {
                opts.source = SourceOptions::Command(CommandOptions {
                    command: command.clone(),
                    name: args.stdin_filename.clone(),
                    timeout,
                });
            } else if args.paths.is_empty() {
                return Err(Error::config(
                    "nothing to back up: give PATHs, --stdin-from-command COMMAND, --postgres URL, --mysql URL or --policy FILE",
                ));
            }
            (
                vec![("repository".to_string(), ctx.open_repo(&args.repo)?)],
                None,
            )
        }
    };
    let cat = ctx.recorder(catalog_url.as_deref());
    let mut results = Vec::new();
    let mut warnings = 0;
    for (name, repo) in &targets {
        let p = ctx.progress();
        // A policy's target is recorded by name; the one --repo has none.
        let target = args.policy.is_some().then_some(name.as_str());
        let o = jobs::backup(&cat, repo, target, &opts, p.as_ref())
            .map_err(|e| e.context(format!("backup to {name}")))?;
        let s = &o.snapshot.summary;
        warnings += o.warnings.len();
        if !ctx.cli.global.json {
            for w in &o.warnings {
                warn(format_args!("{w}"));
            }
            for n in &o.notes {
                note(format_args!("note: {n}"));
            }
            // A database or command backup is files made from streams: say what they are.
            let what = match o.snapshot.source.as_str() {
                "files" => format!(
                    "{} files ({} read, {} unchanged), {} dirs",
                    s.files, s.files_read, s.files_unchanged, s.dirs
                ),
                k => format!(
                    "{} file(s) from the {k} source ({})",
                    s.files,
                    o.snapshot.paths.join(", ")
                ),
            };
            outln!(
                "snapshot {} saved to {name} ({}): {what}, {} total, {} new, {} stored in {} packs, {:.1}s",
                o.id.short(),
                o.snapshot.kind,
                size(s.bytes_total),
                size(s.bytes_new),
                size(s.bytes_stored),
                s.packs,
                s.seconds
            );
        }
        results.push(
            json!({"target": name, "id": o.id, "snapshot": o.snapshot, "warnings": o.warnings, "notes": o.notes, "hooks": o.hooks}),
        );
    }
    if ctx.cli.global.json {
        json(&results);
    }
    if warnings > 0 {
        return Err(Error::new(
            ErrorKind::Partial,
            format!("{warnings} warning(s): some files were not read cleanly"),
        ));
    }
    Ok(())
}

fn ls(
    ctx: &Ctx,
    repo: &RepoArgs,
    latest: &LatestArgs,
    snapshot: &str,
    path: Option<&str>,
) -> Result<()> {
    let r = ctx.open_repo(repo)?;
    let (_, snap) = r.find_snapshot_for(snapshot, &latest.filter())?;
    let index = r.load_index()?;
    let root = r.load_tree(&index, &snap.tree)?;
    let layout = restore::Layout::new(&snap, &root);
    let mut out = Vec::new();
    let mut failed = Vec::new();
    match path {
        None => list(&r, &index, &root, "", &mut out, &mut failed)?,
        Some(given) => {
            // The first reading of the path that exists in the snapshot.
            let mut found = None;
            let mut last_err = None;
            for cand in layout.candidates(given) {
                match find_in(&r, &index, &root, &cand) {
                    Ok(Some(f)) => {
                        found = Some((cand, f));
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => last_err = Some(e),
                }
            }
            match (found, last_err) {
                (Some((cand, Found::Dir(tree))), _) => {
                    let prefix = if cand.is_empty() {
                        String::new()
                    } else {
                        format!("/{cand}")
                    };
                    list(&r, &index, &tree, &prefix, &mut out, &mut failed)?
                }
                (Some((cand, Found::Node(node))), _) => {
                    let parent = cand.rsplit_once('/').map_or("", |(p, _)| p);
                    let prefix = if parent.is_empty() {
                        String::new()
                    } else {
                        format!("/{parent}")
                    };
                    let t = backstop::repo::Tree { nodes: vec![node] };
                    list(&r, &index, &t, &prefix, &mut out, &mut failed)?
                }
                (None, Some(e)) => return Err(e),
                (None, None) => {
                    return Err(Error::config(format!(
                        "no {given} in the snapshot (paths are absolute as backed up, {}, or relative to its root)",
                        snap.paths.join(", ")
                    )));
                }
            }
        }
    }
    if ctx.cli.global.json {
        json(&out);
    } else {
        for e in &out {
            outln!(
                "{} {:>10} {} {}",
                e["mode"].as_str().unwrap_or(""),
                e["size"],
                time_str(e["mtime"].as_str().unwrap_or("")),
                e["path"].as_str().unwrap_or("")
            );
        }
    }
    for (p, why) in &failed {
        failure(format_args!("FAILED: {p}: {why}"));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Partial,
            format!("{} directories could not be listed", failed.len()),
        ))
    }
}

/// What a path inside a snapshot names.
enum Found {
    Dir(backstop::repo::Tree),
    Node(backstop::repo::Node),
}

/// Looks up root-relative `rel` ("" is the root); `None` if it is not in the snapshot.
fn find_in(
    r: &Repo,
    index: &backstop::repo::Index,
    root: &backstop::repo::Tree,
    rel: &str,
) -> Result<Option<Found>> {
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let mut tree = root.clone();
    for (i, comp) in comps.iter().enumerate() {
        let Some(node) = tree.find(comp.as_bytes()).cloned() else {
            return Ok(None);
        };
        if node.kind != NodeKind::Dir {
            return Ok((i + 1 == comps.len()).then_some(Found::Node(node)));
        }
        let sub = node.subtree.ok_or_else(|| {
            Error::corrupt(format!("directory /{} has no tree", comps[..=i].join("/")))
        })?;
        tree = r
            .load_tree(index, &sub)
            .map_err(|e| e.context(format!("cannot read directory /{}", comps[..=i].join("/"))))?;
    }
    Ok(Some(Found::Dir(tree)))
}

/// Lists `tree` below `prefix`; a directory whose tree is damaged is named in `failed`.
fn list(
    r: &Repo,
    index: &backstop::repo::Index,
    tree: &backstop::repo::Tree,
    prefix: &str,
    out: &mut Vec<serde_json::Value>,
    failed: &mut Vec<(String, String)>,
) -> Result<()> {
    for n in &tree.nodes {
        let path = format!("{prefix}/{}", String::from_utf8_lossy(&n.name));
        let t = chrono::DateTime::from_timestamp(n.mtime.sec, n.mtime.nsec)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let kind = match n.kind {
            NodeKind::File => '-',
            NodeKind::Dir => 'd',
            NodeKind::Symlink => 'l',
            NodeKind::Fifo => 'p',
            NodeKind::CharDevice => 'c',
            NodeKind::BlockDevice => 'b',
            NodeKind::Socket => 's',
        };
        out.push(json!({"path": path, "type": format!("{:?}", n.kind).to_lowercase(), "mode": format!("{kind}{:04o}", n.mode), "size": n.size, "mtime": t, "uid": n.uid, "gid": n.gid}));
        if let Some(sub) = n.subtree {
            match r.load_tree(index, &sub) {
                Ok(t) => list(r, index, &t, &path, out, failed)?,
                Err(e) if e.kind() == ErrorKind::Corrupt => failed.push((
                    path,
                    format!(
                        "directory listing unreadable: {}",
                        backstop::error::chain(&e)
                    ),
                )),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn status(ctx: &Ctx) -> Result<()> {
    let cat = ctx.catalog(None)?;
    let repos = cat.repo_summaries()?;
    let runs = cat.recent_runs(10)?;
    if ctx.cli.global.json {
        json(&json!({"repositories": repos, "recent_runs": runs}));
        return Ok(());
    }
    outln!("Repositories");
    let rows: Vec<Vec<String>> = repos
        .iter()
        .map(|r| {
            vec![
                r.id[..8].to_string(),
                r.location.clone(),
                r.snapshots.to_string(),
                r.latest_snapshot.as_deref().map_or("-".into(), time_str),
                r.packs_verified.to_string(),
                r.last_verify.as_deref().map_or("never".into(), time_str),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "Location",
            "Snapshots",
            "Latest snapshot",
            "Packs verified",
            "Last verify",
        ],
        &rows,
    );
    outln!("\nRecent runs");
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.kind.clone(),
                r.status.clone(),
                time_str(&r.started_at),
                size(r.bytes_read.max(0) as u64),
                // The first line: a command's or hook's output follows in the JSON.
                r.error
                    .as_deref()
                    .and_then(|e| e.lines().next())
                    .unwrap_or_default()
                    .to_string(),
            ]
        })
        .collect();
    table(
        &["Run", "Kind", "Status", "Started", "Read", "Error"],
        &rows,
    );
    let hooks: Vec<Vec<String>> = runs
        .iter()
        .flat_map(|r| r.hooks.iter().map(move |h| (r.id, h)))
        .map(|(run, h)| {
            vec![
                run.to_string(),
                h.phase.name().to_string(),
                h.command.clone(),
                h.ended.clone(),
                format!("{:.1}s", h.duration_ms as f64 / 1000.0),
                h.output.lines().last().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    if !hooks.is_empty() {
        outln!(
            "\nHooks of these runs (status --json has their last {} lines of output)",
            backstop::hooks::OUTPUT_LINES
        );
        table(
            &["Run", "Hook", "Command", "Ended", "Took", "Last output"],
            &hooks,
        );
    }
    Ok(())
}

/// The quick start: the example policy, end to end, on embedded defaults.
fn demo(ctx: &Ctx, policy_path: &Path) -> Result<()> {
    let lp = policy::load(policy_path)?;
    let (name, target) = lp
        .targets
        .first()
        .ok_or_else(|| Error::config("the demo policy has no target"))?;
    let storage = ctx.storage(&target.repo)?;
    let repo = if storage.exists("config")? {
        Repo::open(storage, || target.password.read(&env))?
    } else {
        outln!("1. creating repository {name} at {}", target.repo);
        Repo::init(
            storage,
            &InitOptions {
                passphrase: Some(target.password.read(&env)?),
                kdf: KdfParams::default(),
                chunker: ChunkerParams::default(),
                chunking_of: None,
            },
        )?
    };
    let cat = ctx.recorder(lp.settings.catalog.as_ref().map(|c| c.url.as_str()));
    let token = backstop::interrupt::token();
    let opts = lp.backup_options(
        &BackupOptions {
            cancel: token.clone(),
            ..Default::default()
        },
        &env,
    )?;
    // A signal stops the demo's backup and restore at their next step, locks released.
    let _cooperation = backstop::interrupt::cooperate();
    let b = jobs::backup(&cat, &repo, Some(name), &opts, &NoProgress)?;
    let s = &b.snapshot.summary;
    outln!(
        "2. backed up {} files ({}) as snapshot {} ({}), {} new, {} stored",
        s.files,
        size(s.bytes_total),
        b.id.short(),
        b.snapshot.kind,
        size(s.bytes_new),
        size(s.bytes_stored)
    );
    let v = jobs::verify(
        &cat,
        &repo,
        ReadData::All,
        std::time::Duration::ZERO,
        &token,
        &NoProgress,
    )?;
    outln!(
        "3. verified {} packs ({}) by re-reading them: {}",
        v.packs_read,
        size(v.bytes_read),
        if v.is_ok() { "ok" } else { "PROBLEMS" }
    );
    if !v.is_ok() {
        return Err(Error::corrupt("the demo repository failed verification"));
    }
    let target_dir = Path::new(&target.repo).with_file_name("restore");
    if target_dir.exists() {
        std::fs::remove_dir_all(&target_dir).map_err(|e| Error::io("clearing", &target_dir, e))?;
    }
    let ro = RestoreOptions {
        target: target_dir.clone(),
        cancel: token,
        ..Default::default()
    };
    let o = jobs::restore(
        &cat,
        &repo,
        &b.id.to_hex(),
        &Default::default(),
        &ro,
        &NoProgress,
    )?;
    outln!(
        "4. restored {} files ({}) into {}",
        o.files,
        size(o.bytes),
        target_dir.display()
    );
    outln!(
        "5. the catalog ({}) records these runs; see `backstop status`",
        cat_location(ctx, &lp)
    );
    if !o.failed.is_empty() {
        return Err(Error::new(
            ErrorKind::Partial,
            "some files failed to restore",
        ));
    }
    Ok(())
}

fn cat_location(ctx: &Ctx, lp: &policy::LoadedPolicy) -> String {
    ctx.cli
        .global
        .catalog
        .clone()
        .or(lp.settings.catalog.as_ref().map(|c| c.url.clone()))
        .unwrap_or_else(|| {
            config::default_catalog_url(
                &ctx.cli
                    .global
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| config::default_data_dir(&env)),
            )
        })
}

struct ForgetArgs<'a> {
    repo: &'a RepoArgs,
    keep: &'a retention::KeepRules,
    policy_file: Option<&'a Path>,
    target: Option<&'a str>,
    ids: &'a [String],
    timezone: Option<&'a str>,
    dry_run: bool,
    prune: bool,
}

fn forget(ctx: &Ctx, a: &ForgetArgs) -> Result<()> {
    let lp = a.policy_file.map(policy::load).transpose()?;
    let (rules, mut tz) = match &lp {
        Some(lp) => (
            a.keep.merged_over(&lp.policy.retention),
            lp.policy.timezone(),
        ),
        None => (a.keep.clone(), chrono_tz::UTC),
    };
    if let Some(t) = a.timezone {
        tz = t
            .parse()
            .map_err(|_| Error::config(format!("--timezone '{t}' is not a known time zone")))?;
    }
    let sel = if a.ids.is_empty() {
        if rules.is_empty() {
            return Err(Error::config(
                "no retention rule given (--keep-… or --policy with [retention]) and no SNAPSHOT named; nothing would be removed",
            ));
        }
        backstop::forget::Selection::Rules(&rules)
    } else {
        if !rules.is_empty() || a.policy_file.is_some() {
            return Err(Error::config(
                "give either SNAPSHOT ids or retention rules (--keep-…, --policy), not both",
            ));
        }
        backstop::forget::Selection::Ids(a.ids)
    };
    // Which repositories: --repo, else the policy's targets (or the one --target names).
    let mut repos: Vec<(String, Repo)> = Vec::new();
    match (&lp, a.repo.repo.is_some()) {
        (Some(lp), false) => {
            let chosen: Vec<&(String, policy::Target)> = match a.target {
                Some(name) => {
                    let t = lp.targets.iter().find(|(n, _)| n == name).ok_or_else(|| {
                        Error::config(format!(
                            "--target {name}: the policy's targets are {}",
                            lp.policy.targets.join(", ")
                        ))
                    })?;
                    vec![t]
                }
                None => lp.targets.iter().collect(),
            };
            for (name, t) in chosen {
                let storage = ctx.storage(&t.repo)?;
                let pw = t.password.clone();
                let pw = if pw.is_empty() {
                    password_source(a.repo)
                } else {
                    pw
                };
                let r = Repo::open(storage, || pw.read(&env))
                    .map_err(|e| e.context(format!("target {name}")))?;
                repos.push((name.clone(), r));
            }
        }
        (_, _) => {
            if a.target.is_some() && a.repo.repo.is_some() {
                return Err(Error::config("give --repo or --target, not both"));
            }
            repos.push(("repository".into(), ctx.open_repo(a.repo)?));
        }
    }
    let cat = ctx.recorder(
        lp.as_ref()
            .and_then(|lp| lp.settings.catalog.as_ref())
            .map(|c| c.url.as_str()),
    );
    let mut skipped = 0;
    let mut all_json = Vec::new();
    for (name, r) in &repos {
        let token = backstop::interrupt::token();
        let rep = jobs::forget(&cat, r, sel, &tz, a.dry_run, retry_lock(a.repo)?, &token)
            .map_err(|e| e.context(format!("forget in {name}")))?;
        let removed = rep.removed().len();
        skipped += rep.skipped.len();
        if ctx.cli.global.json {
            all_json.push(json!({"target": name, "location": r.storage().location(), "decisions": rep.decisions, "skipped": rep.skipped, "wal_removed": rep.wal_removed}));
        } else {
            if repos.len() > 1 || lp.is_some() {
                outln!("{name} ({}):", r.storage().location());
            }
            let rows: Vec<Vec<String>> = rep
                .decisions
                .iter()
                .map(|f| {
                    vec![
                        f.id.short(),
                        time(&f.snapshot.time),
                        f.snapshot.hostname.clone(),
                        f.snapshot.paths.join(", "),
                        if f.decision.keep {
                            format!("keep ({})", f.decision.reasons.join(", "))
                        } else {
                            "remove".into()
                        },
                    ]
                })
                .collect();
            table(&["ID", "Time", "Host", "Paths", "Decision"], &rows);
            let verb = if a.dry_run { "would remove" } else { "removed" };
            outln!("{verb} {removed} of {} snapshot(s)", rep.decisions.len());
            if !rep.wal_removed.is_empty() {
                outln!(
                    "{verb} {} archived WAL batch(es) that no kept base backup needs",
                    rep.wal_removed.len()
                );
            }
            for d in &rep.skipped {
                outln!(
                    "skipped damaged manifest {} (neither kept nor removed): {}",
                    d.path,
                    d.error
                );
            }
        }
        if a.prune {
            let opts = PruneOptions {
                dry_run: a.dry_run,
                retry_lock: retry_lock(a.repo)?,
                cancel: token,
                ..Default::default()
            };
            let rep = jobs::prune(&cat, r, &opts)?;
            print_prune(&rep, a.dry_run, ctx.cli.global.json);
        }
    }
    if ctx.cli.global.json {
        json(&all_json);
    }
    if skipped > 0 {
        return Err(Error::new(
            ErrorKind::Partial,
            format!(
                "{skipped} damaged snapshot manifest(s) skipped (see `backstop repair snapshots`)"
            ),
        ));
    }
    Ok(())
}

/// The repository arguments of `repair SUBCOMMAND`, falling back on those given before it.
fn merged_repo_args(parent: &RepoArgs, child: &RepoArgs) -> RepoArgs {
    RepoArgs {
        repo: child.repo.clone().or_else(|| parent.repo.clone()),
        retry_lock: child
            .retry_lock
            .clone()
            .or_else(|| parent.retry_lock.clone()),
        password_file: child
            .password_file
            .clone()
            .or_else(|| parent.password_file.clone()),
        password_command: child
            .password_command
            .clone()
            .or_else(|| parent.password_command.clone()),
        no_lock: child.no_lock || parent.no_lock,
    }
}

fn repair_snapshots(ctx: &Ctx, repo: &RepoArgs, dry_run: bool) -> Result<()> {
    let r = ctx.open_repo(repo)?;
    let rep = jobs::repair_snapshots(
        &ctx.recorder(None),
        &r,
        dry_run,
        retry_lock(repo)?,
        &backstop::interrupt::token(),
    )?;
    if ctx.cli.global.json {
        json(&rep);
        return Ok(());
    }
    for d in &rep.set_aside {
        let name = d.path.rsplit('/').next().unwrap_or(&d.path);
        if dry_run {
            outln!(
                "would move {} to damaged/snapshots/{name}: {}",
                d.path,
                d.error
            );
        } else {
            outln!("moved {} to damaged/snapshots/{name}: {}", d.path, d.error);
        }
    }
    outln!(
        "{} snapshot manifest(s) intact, {} damaged{}",
        rep.intact,
        rep.set_aside.len(),
        if dry_run && !rep.set_aside.is_empty() {
            " (nothing moved: dry run)"
        } else {
            ""
        }
    );
    Ok(())
}

/// `policy check`: every file, every problem; exit 2 if there is any.
fn policy_check(files: &[std::path::PathBuf], json_out: bool) -> Result<()> {
    let files = if files.is_empty() {
        let mut f = policy_files(Path::new("policies"))?;
        let settings = Path::new("policies").join("backstop.toml");
        if settings.exists() {
            f.insert(0, settings);
        }
        f
    } else {
        files.to_vec()
    };
    let mut results = Vec::new();
    let mut problems = 0;
    let mut seen = std::collections::HashSet::new();
    for f in &files {
        let checked = policy::check(f);
        match &checked {
            Ok(what) => {
                if !json_out {
                    outln!("ok: {} ({what})", f.display());
                }
                results.push(json!({"file": f, "ok": true, "what": what}));
            }
            Err(errs) => {
                // A policy reports its backstop.toml's problems too: each is printed once.
                for e in errs {
                    if !seen.contains(e) {
                        seen.insert(e.clone());
                        problems += 1;
                        note(format_args!("error: {e}"));
                    }
                }
                results.push(json!({"file": f, "ok": false, "problems": errs}));
            }
        }
    }
    if json_out {
        json(&results);
    }
    if problems > 0 {
        return Err(Error::config(format!(
            "{problems} problem(s) in {} file(s)",
            results.iter().filter(|r| r["ok"] == false).count()
        )));
    }
    Ok(())
}

fn print_prune(rep: &PruneReport, dry_run: bool, json_out: bool) {
    if json_out {
        json(rep);
        return;
    }
    let would = if dry_run { "would be " } else { "" };
    outln!("{} packs, {} blobs in use", rep.packs, rep.used_blobs);
    outln!(
        "{} pack(s) {would}marked for deletion ({}), {} of them {would}repacked first",
        rep.marked,
        size(rep.marked_bytes),
        rep.repacked
    );
    outln!(
        "{} pack(s) {would}deleted, {} {would}freed",
        rep.deleted,
        size(rep.freed_bytes)
    );
    if rep.waiting > 0 {
        outln!(
            "{} marked pack(s) ({}) wait out their grace period",
            rep.waiting,
            size(rep.waiting_bytes)
        );
    }
    if rep.unmarked > 0 {
        outln!(
            "{} mark(s) {would}removed: those packs are needed again",
            rep.unmarked
        );
    }
}

/// The data directory (for the WAL spool).
fn data_dir(ctx: &Ctx) -> std::path::PathBuf {
    ctx.cli
        .global
        .data_dir
        .clone()
        .unwrap_or_else(|| config::default_data_dir(&env))
}

fn wal_spool(ctx: &Ctx, repo: &RepoArgs) -> Result<backstop::wal::Spool> {
    Ok(backstop::wal::Spool::for_repo(
        &data_dir(ctx),
        Ctx::repo_location(repo)?,
    ))
}

/// `backstop ARGS` for a command run by PostgreSQL or in the background: this binary, the
/// repository and where its password and data directory come from.
fn self_command(ctx: &Ctx, repo: &RepoArgs, sub: &str) -> Result<Vec<String>> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(ErrorKind::Io, "cannot find the backstop binary").with_source(e))?;
    // PostgreSQL runs these commands in its data directory: every path is made absolute.
    let absolute = |p: &Path| -> Result<String> {
        std::path::absolute(p)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| Error::new(ErrorKind::Io, format!("{}: {e}", p.display())))
    };
    let mut argv = vec![exe.to_string_lossy().into_owned(), sub.to_string()];
    let location = Ctx::repo_location(repo)?;
    let location = if location.contains("://") {
        location.to_string()
    } else {
        absolute(Path::new(location))?
    };
    argv.extend(["--repo".into(), location]);
    argv.extend(["--data-dir".into(), absolute(&data_dir(ctx))?]);
    if let Some(f) = &repo.password_file {
        argv.extend(["--password-file".into(), absolute(f)?]);
    }
    if let Some(c) = &repo.password_command {
        argv.extend(["--password-command".into(), c.clone()]);
    }
    Ok(argv)
}

fn wal_push(ctx: &Ctx, repo: &RepoArgs, path: &Path, no_ship: bool) -> Result<()> {
    let spool = wal_spool(ctx, repo)?;
    let pushed = backstop::wal::push(&spool, path)
        .map_err(|e| e.context(format!("wal-push {}", path.display())))?;
    // The segment is safe in the spool; PostgreSQL logs this, so a shipper that keeps
    // failing (the repository unreachable) shows in the server's log at every segment.
    if let Some(e) = spool.last_error() {
        warn(format_args!(
            "wal-push: spooled {}, but shipping the spool to the repository failed: {}",
            path.display(),
            e.trim()
        ));
    }
    if !no_ship && spool.try_lock()?.is_some() {
        // No shipper runs (the lock is free): start one, detached from PostgreSQL's
        // process group, logging to the spool. It takes the lock itself; a push that
        // loses the race is picked up by the shipper's last look at the spool.
        let argv = self_command(ctx, repo, "wal-ship")?;
        let log_path = spool.dir().join("ship.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| {
                Error::new(ErrorKind::Io, format!("opening {}", log_path.display())).with_source(e)
            })?;
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .arg("--if-idle")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::new(ErrorKind::Io, "cannot start wal-ship in the background").with_source(e)
            })?;
    }
    if ctx.cli.global.json {
        json(&json!({"path": path, "pushed": pushed}));
    }
    Ok(())
}

fn wal_ship(ctx: &Ctx, repo: &RepoArgs, if_idle: bool) -> Result<()> {
    let spool = wal_spool(ctx, repo)?;
    let res = ship_spool(ctx, repo, if_idle, &spool);
    // Kept for wal-push to report: in the background nobody reads this process's errors.
    match &res {
        Ok(()) => spool.set_error(None),
        Err(e) if e.kind() != ErrorKind::Interrupted => {
            spool.set_error(Some(&backstop::error::chain(e)))
        }
        Err(_) => {}
    }
    res
}

fn ship_spool(
    ctx: &Ctx,
    repo: &RepoArgs,
    if_idle: bool,
    spool: &backstop::wal::Spool,
) -> Result<()> {
    let cancel = backstop::interrupt::token();
    let mut total = backstop::wal::Shipped::default();
    let mut opened: Option<Repo> = None;
    loop {
        let lock = loop {
            if let Some(l) = spool.try_lock()? {
                break l;
            }
            if if_idle {
                return Ok(());
            }
            cancel.check()?;
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        if spool.waiting()?.is_empty() {
            break;
        }
        if opened.is_none() {
            opened = Some(ctx.open_repo(repo)?);
        }
        let r = opened.as_ref().expect("opened above");
        // In the background, linger a little for the next segments: one repository open
        // then serves a burst of them.
        let linger = std::time::Duration::from_secs(if if_idle { 2 } else { 0 });
        loop {
            let s = backstop::wal::ship(r, spool, &cancel)?;
            total.batches += s.batches;
            total.segments += s.segments;
            total.bytes += s.bytes;
            let until = std::time::Instant::now() + linger;
            while spool.waiting()?.is_empty() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if spool.waiting()?.is_empty() {
                break;
            }
        }
        drop(lock);
        // A push that found the lock held while we were finishing relies on this look.
        if spool.waiting()?.is_empty() {
            break;
        }
    }
    if ctx.cli.global.json {
        json(&total);
    } else if total.segments > 0 {
        outln!(
            "shipped {} WAL file(s), {}, in {} batch(es)",
            total.segments,
            size(total.bytes),
            total.batches
        );
    }
    Ok(())
}

/// wal-fetch's exit status on a failure: above 125, which PostgreSQL's recovery treats as
/// fatal (it stops and can be started again) rather than as "no such WAL file".
const WAL_FETCH_FAILED: i32 = 126;

fn wal_fetch(ctx: &Ctx, repo: &RepoArgs, name: &str, path: &Path) -> Result<()> {
    // PostgreSQL takes an exit status up to 125 for "not archived" and ends recovery
    // there, promoting early; a real failure must stop recovery instead (above 125).
    let fatal = |e: Error| -> ! {
        eprintln!("error: wal-fetch {name}: {}", backstop::error::chain(&e));
        std::process::exit(WAL_FETCH_FAILED);
    };
    let spool = wal_spool(ctx, repo).unwrap_or_else(|e| fatal(e));
    let found = backstop::wal::fetch(
        &spool,
        || ctx.open_repo(repo),
        name,
        path,
        &backstop::interrupt::token(),
    )
    .unwrap_or_else(|e| fatal(e));
    if found == backstop::wal::Fetched::Missing {
        // PostgreSQL probes for files that do not exist: status 1, nothing printed.
        std::process::exit(1);
    }
    if ctx.cli.global.json {
        json(&json!({"name": name, "from": found}));
    }
    Ok(())
}

fn restore_datadir(
    ctx: &Ctx,
    repo: &RepoArgs,
    latest: &LatestArgs,
    snapshot: &str,
    dir: &Path,
    to_time: Option<&str>,
) -> Result<()> {
    use backstop::restore::datadir::{self, DatadirOptions, RecoveryTarget};
    let r = ctx.open_repo(repo)?;
    // "latest" is the newest physical base backup.
    let mut filter = latest.filter();
    filter.source = Some("postgres".into());
    filter
        .paths
        .push(backstop::source::postgres::BASE_TAR.into());
    let (sid, snap) = r.find_snapshot_for(snapshot, &filter)?;
    let mut argv = self_command(ctx, repo, "wal-fetch")?;
    argv.extend(["%f".into(), "%p".into()]);
    // %f and %p must reach PostgreSQL unquoted; everything else is quoted for its shell.
    let restore_command = argv
        .iter()
        .map(|a| {
            if a == "%f" || a == "%p" {
                a.clone()
            } else {
                // PostgreSQL expands %-escapes in the whole command: a literal % is %%.
                shell_words::quote(a).replace('%', "%%")
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if std::env::var_os("BACKSTOP_PASSWORD").is_some()
        && repo.password_file.is_none()
        && repo.password_command.is_none()
    {
        warn(format_args!(
            "the password came from BACKSTOP_PASSWORD: start the server with it set, or \
             give --password-file so restore_command can open the repository"
        ));
    }
    let opts = DatadirOptions {
        dir: dir.to_path_buf(),
        target: match to_time {
            Some(t) => RecoveryTarget::Time(t.to_string()),
            None => RecoveryTarget::Latest,
        },
        restore_command,
        cancel: backstop::interrupt::token(),
    };
    let _cooperation = backstop::interrupt::cooperate();
    let o = datadir::to_datadir(&r, sid, &snap, &opts)?;
    if ctx.cli.global.json {
        json(&o);
    } else {
        outln!(
            "restored base backup {} into {}: {} files, {} in {:.1}s; start it with `pg_ctl -D {} start` to recover to {}",
            sid.short(),
            dir.display(),
            o.files,
            size(o.bytes),
            o.seconds,
            dir.display(),
            to_time.unwrap_or("the end of the archived WAL")
        );
    }
    Ok(())
}
