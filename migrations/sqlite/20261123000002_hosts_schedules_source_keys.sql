-- backstop catalog, version 3: what the daemon, fleets and drills need.
-- A run records the host it ran on, its policy's target name, and the schedule slot it ran
-- for: (policy, kind, scheduled_for) is unique, so a missed schedule is caught up once and
-- never twice. Manual runs have no slot (NULL), and NULLs never conflict.
-- A snapshot records its source kind and stable source key (parent selection, retention).
-- Portable SQL (SQLite and PostgreSQL); migrations/postgres/ creates the same schema.
ALTER TABLE runs ADD COLUMN host TEXT;
ALTER TABLE runs ADD COLUMN target TEXT;
ALTER TABLE runs ADD COLUMN scheduled_for TEXT;
CREATE UNIQUE INDEX runs_scheduled ON runs (policy, kind, scheduled_for);

ALTER TABLE snapshots ADD COLUMN source TEXT;
ALTER TABLE snapshots ADD COLUMN source_key TEXT;
CREATE INDEX snapshots_source ON snapshots (repo_id, repo_location, source_key);
