//! The command line: clap definitions, dispatch to the library, and output (tables or JSON).
//! No backup logic lives here.

mod commands;
mod output;
mod progress;

use std::path::PathBuf;

use backstop::pipeline::{KdfParams, compress};
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use commands::run;
pub use output::set_log_json;

/// backstop — backups you can prove restore.
///
/// Backs up file trees to deduplicated, compressed, encrypted and verified repositories,
/// restores them safely, and records every run in a catalog.
#[derive(Debug, Parser)]
#[command(name = "backstop", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success, 1 error, 2 bad arguments or configuration, \
3 finished but some files failed (named in the output), 10 no repository, 11 repository locked, \
12 wrong password, 13 repository data corrupt or damaged, 130 interrupted (SIGINT or SIGTERM).";

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Catalog database URL [default: sqlite://DATA_DIR/catalog.db].
    #[arg(long, global = true, env = "BACKSTOP_CATALOG", value_name = "URL")]
    pub catalog: Option<String>,
    /// Directory for the catalog and caches [default: $XDG_DATA_HOME/backstop].
    #[arg(long, global = true, env = "BACKSTOP_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// Log formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which repository, and how to open it.
#[derive(Debug, Args, Clone)]
pub struct RepoArgs {
    /// Repository location (a directory path).
    #[arg(short, long, env = "BACKSTOP_REPO", value_name = "REPO")]
    pub repo: Option<String>,
    /// Wait up to this long for another operation's lock (e.g. 10m) [default: 0s].
    #[arg(long, value_name = "DURATION")]
    pub retry_lock: Option<String>,
    /// Take no lock (restore, ls, snapshots, dump and verify only), e.g. on read-only
    /// storage; reading commands also go on unlocked when the storage refuses their lock.
    #[arg(long)]
    pub no_lock: bool,
    /// Read the password from the first line of this file.
    #[arg(long, env = "BACKSTOP_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Run this shell command and use the first line it prints as the password.
    #[arg(long, env = "BACKSTOP_PASSWORD_COMMAND", value_name = "CMD")]
    pub password_command: Option<String>,
}

/// The other repository of `init --copy-chunker-params`.
#[derive(Debug, Args)]
pub struct FromRepoArgs {
    /// The repository whose chunker parameters to copy.
    #[arg(long, value_name = "REPO")]
    pub from_repo: Option<String>,
    /// Its password, from the first line of this file (or BACKSTOP_FROM_PASSWORD; by default
    /// the password of the new repository).
    #[arg(
        long,
        env = "BACKSTOP_FROM_PASSWORD_FILE",
        value_name = "FILE",
        requires = "from_repo"
    )]
    pub from_password_file: Option<PathBuf>,
    /// Its password, from the first line this shell command prints.
    #[arg(
        long,
        env = "BACKSTOP_FROM_PASSWORD_COMMAND",
        value_name = "CMD",
        requires = "from_repo"
    )]
    pub from_password_command: Option<String>,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository (encrypted unless --no-encryption).
    ///
    /// The password comes from BACKSTOP_PASSWORD, --password-file or --password-command.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// Store data unencrypted (only for storage you fully trust).
        #[arg(long)]
        no_encryption: bool,
        /// Chunk and name data exactly as the repository --from-repo does, so the same data
        /// makes the same blobs in both and copies between them need no re-chunking. Both
        /// must be encrypted, or both not.
        #[arg(long, requires = "from_repo")]
        copy_chunker_params: bool,
        /// Memory the password's key derivation (Argon2id) takes, in MiB, every time the
        /// repository is opened: an attacker pays it for every password tried.
        #[arg(long, value_name = "MIB", conflicts_with = "no_encryption", default_value_t = KdfParams::default().memory_kib / 1024, value_parser = clap::value_parser!(u32).range(8..=1024))]
        kdf_memory_mib: u32,
        /// Passes of the key derivation over that memory (time per open and per guess).
        #[arg(long, value_name = "N", conflicts_with = "no_encryption", default_value_t = KdfParams::default().iterations, value_parser = clap::value_parser!(u32).range(1..=16))]
        kdf_passes: u32,
        #[command(flatten)]
        from: FromRepoArgs,
    },
    /// Back up paths (or a policy's source) into a repository.
    ///
    /// Incremental by default: files whose size, mtime, ctime and inode match the last
    /// snapshot of the same paths on this host are not read again. --full re-reads all.
    /// Every new pack is read back and checked before the snapshot is committed.
    Backup(BackupArgs),
    /// Archive one PostgreSQL WAL file: archive_command = 'backstop wal-push --repo R %p'.
    ///
    /// Returns as soon as the file is durable in the local spool (the data directory's
    /// wal-spool/), then starts `wal-ship` in the background unless it is running: the
    /// repository is opened once per batch, not per file. The same file pushed again is
    /// a success; a file of the same name with other contents is refused.
    WalPush {
        #[command(flatten)]
        repo: RepoArgs,
        /// The WAL file (%p).
        path: PathBuf,
        /// Do not start wal-ship in the background (run it yourself, or from the daemon).
        #[arg(long)]
        no_ship: bool,
    },
    /// Ship the WAL spooled by wal-push into the repository now, in batches, until the
    /// spool is empty (wal-push starts this in the background). Waits for a running
    /// shipper unless --if-idle.
    WalShip {
        #[command(flatten)]
        repo: RepoArgs,
        /// Exit at once when another shipper is running.
        #[arg(long)]
        if_idle: bool,
    },
    /// Fetch one archived WAL file: restore_command = 'backstop wal-fetch --repo R %f %p'.
    ///
    /// Looks in the local spool first, then the repository. A file that is archived
    /// nowhere exits with status 1 and prints nothing (PostgreSQL asks for files that may
    /// not exist).
    WalFetch {
        #[command(flatten)]
        repo: RepoArgs,
        /// The WAL file's name (%f).
        name: String,
        /// Where to write it (%p).
        path: PathBuf,
    },
    /// List snapshots.
    Snapshots {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// List the entries of a snapshot (below PATH if given).
    ///
    /// A directory whose listing is damaged is named and skipped (exit status 3).
    Ls {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        latest: LatestArgs,
        /// Snapshot id (or unique prefix), or "latest".
        snapshot: String,
        /// Directory (or file) inside the snapshot: absolute as backed up (/etc/ssh), or
        /// relative to the snapshot root.
        path: Option<String>,
    },
    /// Restore a snapshot (or some of its paths) into a directory.
    ///
    /// Nothing is written outside --target, and nothing is written through an existing
    /// entry: files are written under a temporary name and renamed into place once their
    /// content is complete and verified. Whatever cannot be restored (missing or corrupt
    /// data, a damaged directory listing, an entry that cannot be created) is named, the
    /// rest is restored, and the command exits with status 3; so does an --include that
    /// matches nothing. SIGINT/SIGTERM remove partly written files and exit with 130.
    Restore {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        latest: LatestArgs,
        /// Snapshot id (or unique prefix), or "latest".
        snapshot: String,
        /// Directory to restore into (created if missing).
        #[arg(
            short,
            long,
            value_name = "DIR",
            required_unless_present_any = ["to_command", "to_database", "to_datadir"],
            conflicts_with_all = ["to_command", "to_database", "to_datadir"]
        )]
        target: Option<PathBuf>,
        /// Instead of a directory: unpack a physical PostgreSQL backup (`backup --postgres
        /// URL --physical`) into this new or empty data directory and set it up to recover
        /// from the archived WAL (recovery.signal; restore_command running `backstop
        /// wal-fetch` on this repository), so that `pg_ctl -D DIR start` replays the WAL to
        /// --to-time or --to-latest and promotes. The copy does not archive (archive_mode
        /// off) until you configure it to.
        #[arg(long, value_name = "DIR", conflicts_with = "to_command")]
        to_datadir: Option<PathBuf>,
        /// With --to-datadir: stop recovery at this time, e.g. '2026-11-23 08:00:00+00'
        /// (as PostgreSQL reads recovery_target_time; give the zone).
        #[arg(
            long,
            value_name = "TIME",
            requires = "to_datadir",
            conflicts_with = "to_latest"
        )]
        to_time: Option<String>,
        /// With --to-datadir: replay every archived WAL file (the default).
        #[arg(long, requires = "to_datadir")]
        to_latest: bool,
        /// Instead of a directory: pipe the content of the one file selected (the
        /// snapshot's only file, or --include PATH) into the standard input of this
        /// command, e.g. 'psql -d app'. The line is split into words as a shell would and
        /// run without a shell (use sh -c '…' for pipes); a non-zero exit is an error.
        #[arg(long, value_name = "CMD", conflicts_with = "to_database")]
        to_command: Option<String>,
        #[command(flatten)]
        db: ToDatabaseArgs,
        /// Restore only paths matching this glob (repeatable), absolute as backed up or
        /// relative to the snapshot root: "etc/ssh/**" and "/etc/ssh" both work for a
        /// backup of /etc.
        #[arg(short, long, value_name = "GLOB")]
        include: Vec<String>,
        /// What to do with existing files, symlinks and other non-directories in the
        /// target. The default, never, keeps them all (and says how many): a restore
        /// aimed at the wrong directory under pressure then destroys nothing. if-changed
        /// replaces entries whose type, size or mtime differ; always replaces everything
        /// (restic's default). Replacing never writes into the old entry, so hard links
        /// to files elsewhere are not touched. Directories are merged, never replaced.
        #[arg(long, value_enum, default_value_t = OverwriteArg::Never, value_name = "WHEN")]
        overwrite: OverwriteArg,
        /// Show what would be restored (with -v: every entry and what would happen to
        /// it); write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write one file of a snapshot to standard output, in order, or a directory as a tar
    /// stream (like restic's dump).
    ///
    /// Packs are fetched in parallel ahead of the output and every chunk is checked before
    /// it is written; memory stays bounded whatever the file's size. A directory's tar names
    /// its entries from the directory itself (`dump latest /etc | tar -x` makes `etc/`).
    Dump {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        latest: LatestArgs,
        /// Snapshot id (or unique prefix), or "latest".
        snapshot: String,
        /// The file or directory inside the snapshot: absolute as backed up (/etc/hosts),
        /// or relative to the snapshot root (for a --stdin-from-command backup: its
        /// --stdin-filename); / is the whole snapshot.
        path: String,
    },
    /// Check the repository's structure, and optionally re-read its data.
    Verify {
        #[command(flatten)]
        repo: RepoArgs,
        /// Re-read and re-hash every pack and chunk.
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Re-read this share of the packs (e.g. 10%), least recently verified first.
        #[arg(long, value_name = "N%")]
        read_data_subset: Option<String>,
    },
    /// Remove snapshots that retention rules do not keep, or the SNAPSHOTs named (data goes
    /// with `prune`).
    ///
    /// Prints every snapshot with the rules that keep it, or "remove". Rules come from
    /// flags, or from a policy's [retention] table (flags override it rule by rule);
    /// calendar rules count periods in --timezone (default: the policy's, else UTC).
    /// Rules that would remove every snapshot of a group (same host and paths) are refused
    /// unless --allow-empty. Manifests that cannot be read are skipped and named.
    /// With --policy and no --repo, every target of the policy (or --target NAME) is used.
    Forget {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        keep: backstop::policy::retention::KeepRules,
        /// Take retention rules, time zone and targets from this policy file.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// With --policy: only this target of the policy (default: all of them).
        #[arg(long, value_name = "NAME", requires = "policy")]
        target: Option<String>,
        /// Snapshots to remove, by id or unique prefix (no rules are applied then).
        #[arg(value_name = "SNAPSHOT")]
        snapshots: Vec<String>,
        /// Time zone for calendar rules (IANA name, e.g. Asia/Shanghai).
        #[arg(long, value_name = "TZ")]
        timezone: Option<String>,
        /// Show what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Prune afterwards.
        #[arg(long)]
        prune: bool,
    },
    /// Delete data no snapshot references, safely, in two phases.
    ///
    /// Unreferenced packs are marked now and deleted by a later prune once the grace
    /// period has passed (and only if still unreferenced then); mostly unused packs are
    /// repacked first. Holds the exclusive lock.
    Prune {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        prune: PruneArgs,
    },
    /// Rebuild the index from the packs (`repair` or `repair index`), or set damaged
    /// snapshot manifests aside (`repair snapshots`).
    ///
    /// Index: reads every pack. Intact packs are indexed from their own headers; blobs that
    /// still verify are salvaged from damaged packs, which move to damaged/. Lost data is no
    /// longer trusted, so the next backup stores it again if the source still has it.
    Repair {
        #[command(flatten)]
        repo: RepoArgs,
        /// Report only; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(subcommand)]
        what: Option<RepairCommand>,
    },
    /// Remove stale locks (expired, or held by a process that no longer exists).
    Unlock {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Show repositories, latest snapshots and recent runs from the catalog.
    Status,
    /// Catalog maintenance.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Run the example policy end to end: init, backup, verify, restore, compare.
    Demo {
        /// The policy to demonstrate.
        #[arg(long, default_value = "policies/example.toml")]
        policy: PathBuf,
    },
}

/// Which snapshot "latest" means.
#[derive(Debug, Args, Clone)]
pub struct LatestArgs {
    /// With "latest": the newest snapshot of this host [default: this host].
    #[arg(long, value_name = "HOST", conflicts_with = "any_host")]
    pub host: Option<String>,
    /// With "latest": the newest snapshot of any host.
    #[arg(long)]
    pub any_host: bool,
    /// With "latest": the newest snapshot holding this backed-up path (repeatable).
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
}

impl LatestArgs {
    /// The filter for "latest".
    pub fn filter(&self) -> backstop::repo::SnapshotFilter {
        backstop::repo::SnapshotFilter {
            host: if self.any_host {
                None
            } else {
                Some(self.host.clone().unwrap_or_else(backstop::repo::hostname))
            },
            paths: self.paths.clone(),
            source: None,
        }
    }
}

/// `restore --overwrite` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OverwriteArg {
    /// Keep every existing entry.
    Never,
    /// Replace entries whose type, size or mtime differ.
    IfChanged,
    /// Replace every existing entry.
    Always,
}

impl From<OverwriteArg> for backstop::restore::Overwrite {
    fn from(o: OverwriteArg) -> Self {
        match o {
            OverwriteArg::Never => Self::Never,
            OverwriteArg::IfChanged => Self::IfChanged,
            OverwriteArg::Always => Self::Always,
        }
    }
}

/// `backup` arguments.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Back up a policy's source to each of its targets instead of PATHs.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["paths", "repo"])]
    pub policy: Option<PathBuf>,
    /// Re-read every file (default: incremental).
    #[arg(long)]
    pub full: bool,
    /// Leave out paths matching this glob (repeatable), e.g. "*.tmp" or "/var/cache/**".
    #[arg(short, long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Back up only files matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Do not cross into other file systems.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Ignore inode numbers when looking for unchanged files (network file systems); size,
    /// mtime and ctime are still compared.
    #[arg(long)]
    pub ignore_inode: bool,
    /// Tag the snapshot (repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// zstd compression level: 0 stores uncompressed, 1 (the default) is the fastest,
    /// 3 stores text about a tenth smaller and backs up about a sixth slower; higher levels
    /// cost more still.
    #[arg(long, default_value_t = compress::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(0..=22))]
    pub compression: i32,
    /// Files read and chunks compressed in parallel (default: one per CPU). Each reader
    /// holds up to 8 MiB; lower it to bound memory on a busy or small machine.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Back up the standard output of this command instead of files: stored as one file
    /// (--stdin-filename), streamed, never in a temporary file. The line is split into words
    /// as a shell would and run without a shell (use "sh -c '…'" for pipes). A non-zero exit
    /// saves no snapshot. Example: --stdin-from-command 'pg_dump -Fc mydb'.
    #[arg(long, value_name = "COMMAND", conflicts_with_all = ["paths", "policy", "exclude", "include", "one_file_system", "ignore_inode"])]
    pub stdin_from_command: Option<String>,
    /// The file name the command's output gets in the snapshot.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "stdin",
        requires = "stdin_from_command"
    )]
    pub stdin_filename: String,
    /// Stop the command (or a database dump) and fail the backup after this long, e.g. 30m.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Run this command before the backup (repeatable, run in order), e.g. to flush a
    /// database or take a file-system snapshot. If it fails (non-zero exit, a signal or
    /// --hook-timeout) no backup is made and backstop exits non-zero naming the hook and its
    /// last output. Split as a shell would and run without a shell ("sh -c '…'" for pipes);
    /// it sees BACKSTOP_HOOK=before, BACKSTOP_REPO and, with --policy, BACKSTOP_POLICY and
    /// BACKSTOP_TARGET. Policy files can set on-failure = "continue" per hook ([[hooks.before]]).
    #[arg(long, value_name = "COMMAND")]
    pub hook_before: Vec<String>,
    /// Run this command after the backup, also after a failed one (repeatable, run in
    /// order), e.g. to notify or to undo a before-hook. It also sees BACKSTOP_RESULT
    /// (success, partial or failure), BACKSTOP_SNAPSHOT (the new snapshot's id) and
    /// BACKSTOP_ERROR (why it failed). Its failure is a warning.
    #[arg(long, value_name = "COMMAND")]
    pub hook_after: Vec<String>,
    /// Stop a hook given on the command line after this long (it counts as failed).
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub hook_timeout: String,
    /// Back up PostgreSQL databases (logical: pg_dump --format=custom per database and
    /// pg_dumpall --globals-only, streamed into one snapshot). The URL names the server and
    /// optionally one database, e.g. postgres://postgres@127.0.0.1:5432/shop; without a
    /// database (and no --database) every connectable non-template database is dumped.
    #[arg(long, value_name = "URL", conflicts_with_all = ["paths", "policy", "stdin_from_command", "mysql", "exclude", "include", "one_file_system", "ignore_inode"])]
    pub postgres: Option<String>,
    /// Back up MariaDB/MySQL databases (mariadb-dump --single-transaction --routines --events
    /// --triggers --hex-blob per database, plus users and grants), e.g.
    /// mysql://root@127.0.0.1:3306; system schemas are skipped.
    #[arg(long, value_name = "URL", conflicts_with_all = ["paths", "policy", "stdin_from_command", "exclude", "include", "one_file_system", "ignore_inode"])]
    pub mysql: Option<String>,
    /// A database to dump (repeatable); default: the URL's, else all.
    #[arg(long = "database", value_name = "NAME")]
    pub databases: Vec<String>,
    /// The database password is in this environment variable (never put it in a policy).
    /// (--password-file and BACKSTOP_PASSWORD are the repository's.)
    #[arg(long, value_name = "VAR")]
    pub db_password_env: Option<String>,
    /// The database password is the first line of this file.
    #[arg(long, value_name = "FILE")]
    pub db_password_file: Option<PathBuf>,
    /// Directory of the database client tools (pg_dump, psql, mariadb-dump…), e.g.
    /// /usr/lib/postgresql/16/bin for a newer server; default: PATH.
    #[arg(long, value_name = "DIR")]
    pub client_bin: Option<PathBuf>,
    /// With --postgres: a physical base backup of the whole cluster (pg_basebackup, stored
    /// as base.tar) instead of dumps. Archive the WAL with `backstop wal-push` for
    /// point-in-time restores (restore --to-datadir).
    #[arg(long, requires = "postgres")]
    pub physical: bool,
    /// Paths to back up.
    pub paths: Vec<PathBuf>,
}

/// `restore --to-database` options.
#[derive(Debug, Args, Clone)]
pub struct ToDatabaseArgs {
    /// Instead of a directory: restore a database of a --postgres or --mysql snapshot into
    /// the database this URL's path names, e.g. postgres://postgres@127.0.0.1/shop_copy.
    /// It is created; an existing database holding tables is refused unless --force. A
    /// failed restore drops the database it created. A URL without a database (and no
    /// --database) restores every database of the snapshot under its own name.
    #[arg(long, value_name = "URL")]
    pub to_database: Option<String>,
    /// The database of the snapshot to restore (needed when it holds several).
    #[arg(long, value_name = "NAME", requires = "to_database")]
    pub database: Option<String>,
    /// Restore into an existing database that holds tables (its objects of the same
    /// names are replaced).
    #[arg(long, requires = "to_database")]
    pub force: bool,
    /// The database password is in this environment variable (--password-file and
    /// BACKSTOP_PASSWORD are the repository's).
    #[arg(long, value_name = "VAR", requires = "to_database")]
    pub db_password_env: Option<String>,
    /// The database password is the first line of this file.
    #[arg(long, value_name = "FILE", requires = "to_database")]
    pub db_password_file: Option<PathBuf>,
    /// Directory of the database client tools (pg_restore, psql, mariadb); default: PATH.
    #[arg(long, value_name = "DIR", requires = "to_database")]
    pub client_bin: Option<PathBuf>,
}

/// `prune` options.
#[derive(Debug, Args, Clone)]
pub struct PruneArgs {
    /// Show what would be marked and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long a pack stays marked before it may be deleted.
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub grace: String,
}

/// `repair` subcommands.
#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the packs (what `backstop repair` alone does).
    Index {
        #[command(flatten)]
        repo: RepoArgs,
        /// Report only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Move snapshot manifests that cannot be read, authenticated or decoded to
    /// damaged/snapshots/ (kept byte for byte; other commands stop warning about them).
    Snapshots {
        #[command(flatten)]
        repo: RepoArgs,
        /// Name them only; move nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `catalog` subcommands.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Reconstruct the catalog's snapshot records from a repository.
    ///
    /// A catalog file that cannot be opened (corrupt) is moved aside as
    /// catalog.db.broken-TIME and a new one is created.
    Rebuild {
        #[command(flatten)]
        repo: RepoArgs,
    },
}

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files without running anything.
    ///
    /// Checks every file given and reports every problem found (file:line:column), exiting
    /// 2 if there is any. A file named backstop.toml is checked as the settings file.
    /// Schedules are cron expressions with six fields, seconds first
    /// (sec min hour day-of-month month day-of-week; an optional seventh is the year).
    Check {
        /// Policy files (default: policies/*.toml and policies/backstop.toml).
        files: Vec<PathBuf>,
    },
}
