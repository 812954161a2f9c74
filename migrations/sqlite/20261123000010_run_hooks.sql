-- backstop catalog: what each backup hook did (issue #8 item 4). One row per hook run, in
-- the order they ran (id); the command as given, how it ended, how long it took and the
-- last lines of its output (standard output and error together).
-- migrations/postgres/ has the same table at the same version.
CREATE TABLE run_hooks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       INTEGER NOT NULL REFERENCES runs (id),
    phase        TEXT NOT NULL,             -- before | after
    command      TEXT NOT NULL,
    ok           BOOLEAN NOT NULL,          -- exited with status 0 in time
    exit_code    INTEGER,                   -- NULL: killed, timed out or not started
    ended        TEXT NOT NULL,             -- how it ended, in words
    duration_ms  INTEGER NOT NULL,
    output       TEXT NOT NULL              -- its last lines of output
);
CREATE INDEX run_hooks_run ON run_hooks (run_id, id);
