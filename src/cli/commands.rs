//! Dispatch: each command opens what it needs, calls the library, prints the result.

use std::path::Path;

use serde_json::json;

use super::output::{json, size, table};
use super::progress::Bar;
use super::{BackupArgs, CatalogCommand, Cli, Command, PolicyCommand, RepoArgs};
use crate::backup::BackupOptions;
use crate::catalog::Catalog;
use crate::config::{self, PasswordSource};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::{ChunkerParams, KdfParams};
use crate::policy::retention;
use crate::progress::{NoProgress, Progress};
use crate::repo::prune::{PruneOptions, PruneReport};
use crate::repo::{InitOptions, NodeKind, Repo};
use crate::restore::RestoreOptions;
use crate::storage::Storage;
use crate::verify::ReadData;
use crate::{jobs, policy};

struct Ctx<'a> {
    cli: &'a Cli,
    rt: tokio::runtime::Handle,
}

impl Ctx<'_> {
    fn catalog(&self, url: Option<&str>) -> Result<Catalog> {
        let g = &self.cli.global;
        let url = match (&g.catalog, url) {
            (Some(u), _) => u.clone(),
            (None, Some(u)) => u.to_string(),
            (None, None) => config::default_catalog_url(
                &g.data_dir.clone().unwrap_or_else(config::default_data_dir),
            ),
        };
        Catalog::open(&url, self.rt.clone())
    }

    fn storage(&self, location: &str) -> Result<Storage> {
        Storage::open(location, self.rt.clone())
    }

    fn repo_location(args: &RepoArgs) -> Result<&str> {
        args.repo
            .as_deref()
            .ok_or_else(|| Error::config("no repository given: use --repo REPO or BACKSTOP_REPO"))
    }

    fn open_repo(&self, args: &RepoArgs) -> Result<Repo> {
        let storage = self.storage(Self::repo_location(args)?)?;
        Repo::open(storage, || password_source(args).read())
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

/// Runs the parsed command line. `Partial` errors mean "done, but something failed".
pub fn run(cli: &Cli, rt: tokio::runtime::Handle) -> Result<()> {
    let ctx = Ctx { cli, rt };
    let json_out = cli.global.json;
    match &cli.command {
        Command::Init {
            repo,
            no_encryption,
        } => {
            let storage = ctx.storage(Ctx::repo_location(repo)?)?;
            let passphrase = if *no_encryption {
                None
            } else {
                Some(password_source(repo).read()?)
            };
            let r = Repo::init(
                storage,
                &InitOptions {
                    passphrase,
                    kdf: KdfParams::default(),
                    chunker: ChunkerParams::default(),
                },
            )?;
            let cat = ctx.catalog(None)?;
            cat.touch_repo(&r.config().id, r.storage().location())?;
            if json_out {
                json(
                    &json!({"id": r.config().id, "location": r.storage().location(), "encrypted": r.config().encrypted}),
                );
            } else {
                println!(
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
                    println!("keep the password safe: without it the data cannot be restored");
                }
            }
            Ok(())
        }
        Command::Backup(args) => backup(&ctx, args),
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
                            s.time
                                .with_timezone(&chrono::Local)
                                .format("%Y-%m-%d %H:%M:%S")
                                .to_string(),
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
                println!("{} snapshot(s)", snaps.len());
            }
            Ok(())
        }
        Command::Ls {
            repo,
            snapshot,
            path,
        } => ls(&ctx, repo, snapshot, path.as_deref()),
        Command::Restore {
            repo,
            snapshot,
            target,
            include,
            dry_run,
        } => {
            let r = ctx.open_repo(repo)?;
            let cat = ctx.catalog(None)?;
            let opts = RestoreOptions {
                target: target.clone(),
                includes: include.clone(),
                dry_run: *dry_run,
                threads: 0,
                retry_lock: retry_lock(repo)?,
            };
            let p = ctx.progress();
            let o = jobs::restore(&cat, &r, snapshot, &opts, p.as_ref())?;
            if json_out {
                json(&o);
            } else {
                let verb = if *dry_run {
                    "would restore"
                } else {
                    "restored"
                };
                println!(
                    "{verb} {} files, {} directories, {} other entries, {} into {}",
                    o.files,
                    o.dirs,
                    o.others,
                    size(o.bytes),
                    target.display()
                );
                for w in &o.warnings {
                    eprintln!("warning: {w}");
                }
                for (path, why) in &o.failed {
                    eprintln!("FAILED: {path}: {why}");
                }
            }
            if o.failed.is_empty() {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::Partial,
                    format!("{} file(s) could not be restored", o.failed.len()),
                ))
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
            let cat = ctx.catalog(None)?;
            let p = ctx.progress();
            let rep = jobs::verify(&cat, &r, read, retry_lock(repo)?, p.as_ref())?;
            if json_out {
                json(&rep);
            } else {
                println!(
                    "checked {} snapshots, {} packs, {} blobs; re-read {} packs ({})",
                    rep.snapshots,
                    rep.packs,
                    rep.blobs,
                    rep.packs_read,
                    size(rep.bytes_read)
                );
                for pr in &rep.problems {
                    println!("error: {}", pr.message);
                }
                for a in &rep.affected {
                    println!("snapshot {} affected paths:", a.snapshot.short());
                    for p in &a.paths {
                        println!("  {p}");
                    }
                }
                if rep.is_ok() {
                    println!("no errors were found");
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
            timezone,
            dry_run,
            prune,
        } => forget(
            &ctx,
            repo,
            keep,
            policy_file.as_deref(),
            timezone.as_deref(),
            *dry_run,
            *prune,
        ),
        Command::Prune { repo, prune } => {
            let r = ctx.open_repo(repo)?;
            let opts = PruneOptions {
                dry_run: prune.dry_run,
                grace: retention::parse_duration(&prune.grace)?,
                retry_lock: retry_lock(repo)?,
                ..Default::default()
            };
            let rep = jobs::prune(&ctx.catalog(None)?, &r, &opts)?;
            print_prune(&rep, prune.dry_run, json_out);
            Ok(())
        }
        Command::Repair { repo, dry_run } => {
            let r = ctx.open_repo(repo)?;
            let rep = jobs::repair(&ctx.catalog(None)?, &r, *dry_run, retry_lock(repo)?)?;
            if json_out {
                json(&rep);
            } else {
                println!(
                    "{} packs read: {} intact, {} damaged, {} missing",
                    rep.packs,
                    rep.intact,
                    rep.damaged.len(),
                    rep.missing.len()
                );
                for id in &rep.damaged {
                    println!(
                        "damaged pack {id}{}",
                        if *dry_run { "" } else { " (moved to damaged/)" }
                    );
                }
                for id in &rep.missing {
                    println!("missing pack {id}");
                }
                println!(
                    "{} blob(s) salvaged, {} blob(s) lost",
                    rep.salvaged_blobs, rep.lost_blobs
                );
                if rep.lost_blobs > 0 {
                    println!(
                        "run `backstop verify` to see the affected snapshots; back the sources up again to restore what they still have"
                    );
                }
            }
            Ok(())
        }
        Command::Unlock { repo } => {
            let r = ctx.open_repo(repo)?;
            let removed = crate::repo::lock::remove_stale(r.storage())?;
            if json_out {
                json(&removed);
            } else {
                for l in &removed {
                    println!(
                        "removed stale lock of {} (pid {} on {}, expired {})",
                        l.info.operation, l.info.pid, l.info.host, l.info.expires
                    );
                }
                println!(
                    "{} stale lock(s) removed; live locks are never removed",
                    removed.len()
                );
            }
            Ok(())
        }
        Command::Status => status(&ctx),
        Command::Catalog {
            command: CatalogCommand::Rebuild { repo },
        } => {
            let r = ctx.open_repo(repo)?;
            let n = jobs::rebuild_catalog(&ctx.catalog(None)?, &r)?;
            if json_out {
                json(&json!({"repository": r.config().id, "snapshots": n}));
            } else {
                println!(
                    "catalog rebuilt: {n} snapshot(s) of repository {}",
                    r.config().id.short()
                );
            }
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Check { files },
        } => {
            let files = if files.is_empty() {
                policy_files(Path::new("policies"))?
            } else {
                files.clone()
            };
            let mut results = Vec::new();
            for f in &files {
                let p = policy::load(f)?;
                results
                    .push(json!({"file": f, "name": p.policy.name, "targets": p.policy.targets}));
                if !json_out {
                    println!("ok: {} ({})", f.display(), p.policy.name);
                }
            }
            if json_out {
                json(&results);
            }
            Ok(())
        }
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

fn backup(ctx: &Ctx, args: &BackupArgs) -> Result<()> {
    let mut opts = BackupOptions {
        paths: args.paths.clone(),
        full: args.full,
        excludes: args.exclude.clone(),
        includes: args.include.clone(),
        one_file_system: args.one_file_system,
        ignore_inode: args.ignore_inode,
        tags: args.tag.clone(),
        policy: None,
        compression: args.compression,
        threads: args.threads.map_or(0, usize::from),
        retry_lock: retry_lock(&args.repo)?,
        damaged_packs: Default::default(),
    };
    // Each target: (label, repo). From a policy, or the one --repo.
    let (targets, catalog_url) = match &args.policy {
        Some(path) => {
            let lp = policy::load(path)?;
            let crate::policy::Source::Files(src) = &lp.policy.source;
            opts.paths = src.paths.clone();
            opts.excludes.extend(src.exclude.iter().cloned());
            opts.includes.extend(src.include.iter().cloned());
            opts.one_file_system |= src.one_file_system;
            opts.ignore_inode |= src.ignore_inode;
            opts.tags.extend(lp.policy.tags.iter().cloned());
            opts.compression = lp.policy.compression;
            opts.policy = Some(lp.policy.name.clone());
            let mut targets = Vec::new();
            for (name, t) in &lp.targets {
                let storage = ctx.storage(&t.repo)?;
                let pw = t.password.clone();
                let pw = if pw.is_empty() {
                    password_source(&args.repo)
                } else {
                    pw
                };
                let repo = Repo::open(storage, || pw.read())
                    .map_err(|e| e.context(format!("target {name}")))?;
                targets.push((name.clone(), repo));
            }
            (targets, lp.settings.catalog.map(|c| c.url))
        }
        None => {
            if args.paths.is_empty() {
                return Err(Error::config(
                    "nothing to back up: give PATHs or --policy FILE",
                ));
            }
            (
                vec![("repository".to_string(), ctx.open_repo(&args.repo)?)],
                None,
            )
        }
    };
    let cat = ctx.catalog(catalog_url.as_deref())?;
    let mut results = Vec::new();
    let mut warnings = 0;
    for (name, repo) in &targets {
        let p = ctx.progress();
        let o = jobs::backup(&cat, repo, &opts, p.as_ref())
            .map_err(|e| e.context(format!("backup to {name}")))?;
        let s = &o.snapshot.summary;
        warnings += o.warnings.len();
        if !ctx.cli.global.json {
            for w in &o.warnings {
                eprintln!("warning: {w}");
            }
            for n in &o.notes {
                eprintln!("note: {n}");
            }
            println!(
                "snapshot {} saved to {name} ({}): {} files ({} read, {} unchanged), {} dirs, {} total, {} new, {} stored in {} packs, {:.1}s",
                o.id.short(),
                o.snapshot.kind,
                s.files,
                s.files_read,
                s.files_unchanged,
                s.dirs,
                size(s.bytes_total),
                size(s.bytes_new),
                size(s.bytes_stored),
                s.packs,
                s.seconds
            );
        }
        results.push(
            json!({"target": name, "id": o.id, "snapshot": o.snapshot, "warnings": o.warnings, "notes": o.notes}),
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

fn ls(ctx: &Ctx, repo: &RepoArgs, snapshot: &str, path: Option<&str>) -> Result<()> {
    let r = ctx.open_repo(repo)?;
    let (_, snap) = r.find_snapshot(snapshot)?;
    let index = r.load_index()?;
    let mut tree = r.load_tree(&index, &snap.tree)?;
    let mut prefix = String::new();
    for comp in path.unwrap_or("").split('/').filter(|c| !c.is_empty()) {
        let node = tree
            .find(comp.as_bytes())
            .filter(|n| n.kind == NodeKind::Dir)
            .ok_or_else(|| {
                Error::config(format!("no directory {prefix}/{comp} in the snapshot"))
            })?;
        let sub = node
            .subtree
            .ok_or_else(|| Error::corrupt("directory without a tree"))?;
        prefix = format!("{prefix}/{comp}");
        tree = r.load_tree(&index, &sub)?;
    }
    let mut out = Vec::new();
    list(&r, &index, &tree, &prefix, &mut out)?;
    if ctx.cli.global.json {
        json(&out);
    } else {
        for e in &out {
            println!(
                "{} {:>10} {} {}",
                e["mode"].as_str().unwrap_or(""),
                e["size"],
                e["mtime"].as_str().unwrap_or(""),
                e["path"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

fn list(
    r: &Repo,
    index: &crate::repo::Index,
    tree: &crate::repo::Tree,
    prefix: &str,
    out: &mut Vec<serde_json::Value>,
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
            list(r, index, &r.load_tree(index, &sub)?, &path, out)?;
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
    println!("Repositories");
    let rows: Vec<Vec<String>> = repos
        .iter()
        .map(|r| {
            vec![
                r.id[..8].to_string(),
                r.location.clone(),
                r.snapshots.to_string(),
                r.latest_snapshot.clone().unwrap_or_else(|| "-".into()),
                r.packs_verified.to_string(),
                r.last_verify.clone().unwrap_or_else(|| "never".into()),
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
    println!("\nRecent runs");
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.kind.clone(),
                r.status.clone(),
                r.started_at.clone(),
                size(r.bytes_read.max(0) as u64),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["Run", "Kind", "Status", "Started", "Read", "Error"],
        &rows,
    );
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
        Repo::open(storage, || target.password.read())?
    } else {
        println!("1. creating repository {name} at {}", target.repo);
        Repo::init(
            storage,
            &InitOptions {
                passphrase: Some(target.password.read()?),
                kdf: KdfParams::default(),
                chunker: ChunkerParams::default(),
            },
        )?
    };
    let cat = ctx.catalog(lp.settings.catalog.as_ref().map(|c| c.url.as_str()))?;
    let crate::policy::Source::Files(src) = &lp.policy.source;
    let opts = BackupOptions {
        paths: src.paths.clone(),
        excludes: src.exclude.clone(),
        compression: lp.policy.compression,
        policy: Some(lp.policy.name.clone()),
        ..Default::default()
    };
    let b = jobs::backup(&cat, &repo, &opts, &NoProgress)?;
    let s = &b.snapshot.summary;
    println!(
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
        &NoProgress,
    )?;
    println!(
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
        ..Default::default()
    };
    let o = jobs::restore(&cat, &repo, &b.id.to_hex(), &ro, &NoProgress)?;
    println!(
        "4. restored {} files ({}) into {}",
        o.files,
        size(o.bytes),
        target_dir.display()
    );
    println!(
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
                    .unwrap_or_else(config::default_data_dir),
            )
        })
}

fn forget(
    ctx: &Ctx,
    repo: &RepoArgs,
    keep: &retention::KeepRules,
    policy_file: Option<&Path>,
    timezone: Option<&str>,
    dry_run: bool,
    prune: bool,
) -> Result<()> {
    let (rules, mut tz) = match policy_file {
        Some(f) => {
            let lp = policy::load(f)?;
            (keep.merged_over(&lp.policy.retention), lp.policy.timezone())
        }
        None => (keep.clone(), chrono_tz::UTC),
    };
    if let Some(t) = timezone {
        tz = t
            .parse()
            .map_err(|_| Error::config(format!("--timezone '{t}' is not a known time zone")))?;
    }
    if rules.is_empty() {
        return Err(Error::config(
            "no retention rule given (--keep-… or --policy with [retention]); nothing would be removed",
        ));
    }
    let r = ctx.open_repo(repo)?;
    let cat = ctx.catalog(None)?;
    let decided = jobs::forget(&cat, &r, &rules, &tz, dry_run, retry_lock(repo)?)?;
    let removed = decided.iter().filter(|f| !f.decision.keep).count();
    if ctx.cli.global.json {
        json(&decided);
    } else {
        let rows: Vec<Vec<String>> = decided
            .iter()
            .map(|f| {
                vec![
                    f.id.short(),
                    f.snapshot
                        .time
                        .with_timezone(&tz)
                        .format("%Y-%m-%d %H:%M:%S %Z")
                        .to_string(),
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
        let verb = if dry_run { "would remove" } else { "removed" };
        println!("{verb} {removed} of {} snapshot(s)", decided.len());
    }
    if prune {
        let opts = PruneOptions {
            dry_run,
            retry_lock: retry_lock(repo)?,
            ..Default::default()
        };
        let rep = jobs::prune(&cat, &r, &opts)?;
        print_prune(&rep, dry_run, ctx.cli.global.json);
    }
    Ok(())
}

fn print_prune(rep: &PruneReport, dry_run: bool, json_out: bool) {
    if json_out {
        json(rep);
        return;
    }
    let would = if dry_run { "would be " } else { "" };
    println!("{} packs, {} blobs in use", rep.packs, rep.used_blobs);
    println!(
        "{} pack(s) {would}marked for deletion ({}), {} of them {would}repacked first",
        rep.marked,
        size(rep.marked_bytes),
        rep.repacked
    );
    println!(
        "{} pack(s) {would}deleted, {} {would}freed",
        rep.deleted,
        size(rep.freed_bytes)
    );
    if rep.waiting > 0 {
        println!(
            "{} marked pack(s) ({}) wait out their grace period",
            rep.waiting,
            size(rep.waiting_bytes)
        );
    }
    if rep.unmarked > 0 {
        println!(
            "{} mark(s) {would}removed: those packs are needed again",
            rep.unmarked
        );
    }
}
