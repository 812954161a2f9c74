-- backstop catalog, version 2: a repository is keyed by its id *and* its location, so a
-- copied repository (same id, another place) has its own row, snapshots and coverage.
-- Portable SQL (SQLite and PostgreSQL): no AUTOINCREMENT, no INSERT OR REPLACE.
CREATE TABLE repositories_v2 (
    id          TEXT NOT NULL,              -- repository id from its config
    location    TEXT NOT NULL,              -- absolute path or URL of the storage
    first_seen  TEXT NOT NULL,
    PRIMARY KEY (id, location)
);
INSERT INTO repositories_v2 (id, location, first_seen)
    SELECT id, location, first_seen FROM repositories;
DROP TABLE repositories;
ALTER TABLE repositories_v2 RENAME TO repositories;

ALTER TABLE runs ADD COLUMN repo_location TEXT;
UPDATE runs SET repo_location =
    (SELECT r.location FROM repositories r WHERE r.id = runs.repo_id);

CREATE TABLE snapshots_v2 (
    repo_id       TEXT NOT NULL,
    repo_location TEXT NOT NULL,
    id            TEXT NOT NULL,
    time          TEXT NOT NULL,
    hostname      TEXT NOT NULL,
    paths         TEXT NOT NULL,            -- JSON array
    kind          TEXT NOT NULL,            -- full | incremental
    parent        TEXT,
    tree          TEXT NOT NULL,
    policy        TEXT,
    tags          TEXT NOT NULL,            -- JSON array
    files         INTEGER NOT NULL,
    bytes_total   INTEGER NOT NULL,
    bytes_stored  INTEGER NOT NULL,
    PRIMARY KEY (repo_id, repo_location, id)
);
INSERT INTO snapshots_v2 (repo_id, repo_location, id, time, hostname, paths, kind, parent,
                          tree, policy, tags, files, bytes_total, bytes_stored)
    SELECT s.repo_id, COALESCE(r.location, ''), s.id, s.time, s.hostname, s.paths, s.kind, s.parent,
           s.tree, s.policy, s.tags, s.files, s.bytes_total, s.bytes_stored
    FROM snapshots s LEFT JOIN repositories r ON r.id = s.repo_id;
DROP INDEX snapshots_repo_time;
DROP TABLE snapshots;
ALTER TABLE snapshots_v2 RENAME TO snapshots;
CREATE INDEX snapshots_repo_time ON snapshots (repo_id, repo_location, time);

ALTER TABLE pack_verifications ADD COLUMN repo_location TEXT;
UPDATE pack_verifications SET repo_location =
    (SELECT r.location FROM repositories r WHERE r.id = pack_verifications.repo_id);
DROP INDEX pack_verifications_pack;
CREATE INDEX pack_verifications_pack
    ON pack_verifications (repo_id, repo_location, pack_id, verified_at);
