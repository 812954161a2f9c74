-- backstop catalog, version 1: runs, snapshots, pack verification coverage.
CREATE TABLE repositories (
    id          TEXT PRIMARY KEY,           -- repository id from its config
    location    TEXT NOT NULL,
    first_seen  TEXT NOT NULL
);

CREATE TABLE runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           TEXT NOT NULL,           -- backup | restore | verify | rebuild
    repo_id        TEXT,
    policy         TEXT,
    status         TEXT NOT NULL,           -- running | success | partial | failed
    started_at     TEXT NOT NULL,
    finished_at    TEXT,
    files          INTEGER NOT NULL DEFAULT 0,
    bytes_read     INTEGER NOT NULL DEFAULT 0,
    bytes_new      INTEGER NOT NULL DEFAULT 0,
    bytes_stored   INTEGER NOT NULL DEFAULT 0,
    warnings       INTEGER NOT NULL DEFAULT 0,
    error          TEXT,
    snapshot_id    TEXT
);
CREATE INDEX runs_started ON runs (started_at);

CREATE TABLE snapshots (
    id           TEXT PRIMARY KEY,
    repo_id      TEXT NOT NULL,
    time         TEXT NOT NULL,
    hostname     TEXT NOT NULL,
    paths        TEXT NOT NULL,             -- JSON array
    kind         TEXT NOT NULL,             -- full | incremental
    parent       TEXT,
    tree         TEXT NOT NULL,
    policy       TEXT,
    tags         TEXT NOT NULL,             -- JSON array
    files        INTEGER NOT NULL,
    bytes_total  INTEGER NOT NULL,
    bytes_stored INTEGER NOT NULL
);
CREATE INDEX snapshots_repo_time ON snapshots (repo_id, time);

CREATE TABLE pack_verifications (
    repo_id      TEXT NOT NULL,
    pack_id      TEXT NOT NULL,
    verified_at  TEXT NOT NULL,
    ok           INTEGER NOT NULL,
    error        TEXT
);
CREATE INDEX pack_verifications_pack ON pack_verifications (repo_id, pack_id, verified_at);
