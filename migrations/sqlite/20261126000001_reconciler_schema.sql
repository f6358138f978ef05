-- The reconciler's own state on SQLite. These tables live in a file of their own beside the app's
-- database (`<app.db>.reconciler.db`), attached as `reconciler` on every connection: the app's
-- database is only ever read and has its status (and updated_at) column written, never its
-- structure. The same tables as the Postgres schema, already scoped (see
-- migrations/20261126000004_deployment_scope.sql). Timestamps are UTC text of one fixed width
-- (`2026-11-25T10:00:00.000000Z`), so comparing them as text compares them in time.

CREATE TABLE sweeps (
    id              TEXT PRIMARY KEY,
    scope           TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    bucket          TEXT NOT NULL,
    prefix          TEXT NOT NULL,
    objects_listed  INTEGER,
    records_scanned INTEGER,
    counts          TEXT,
    -- running | ok | failed | interrupted
    outcome         TEXT NOT NULL DEFAULT 'running',
    error           TEXT
);
CREATE INDEX sweeps_scope ON sweeps (scope, started_at);

CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    scope       TEXT NOT NULL,
    at          TEXT NOT NULL,
    sweep_id    TEXT,
    finding     TEXT NOT NULL,
    action      TEXT NOT NULL,
    doc_id      TEXT NOT NULL,
    key         TEXT NOT NULL,
    old_status  TEXT,
    new_status  TEXT,
    detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_doc_id ON audit_log (scope, doc_id);
CREATE INDEX audit_log_key ON audit_log (scope, key);

CREATE TABLE objects (
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    size          INTEGER NOT NULL,
    etag          TEXT,
    last_modified TEXT,
    noted_at      TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX objects_age ON objects (scope, noted_at);

CREATE TABLE key_events (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    sequencer  TEXT,
    kind       TEXT,
    event_time TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX key_events_age ON key_events (scope, updated_at);

CREATE TABLE jobs (
    scope           TEXT NOT NULL,
    doc_id          TEXT NOT NULL,
    key             TEXT NOT NULL,
    -- queued | running | done | failed
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    lease_until     TEXT,
    leased_by       TEXT,
    last_error      TEXT,
    size            INTEGER,
    etag            TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (scope, doc_id)
);
CREATE INDEX jobs_due ON jobs (scope, next_attempt_at) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (scope, lease_until) WHERE state = 'running';
CREATE INDEX jobs_done ON jobs (scope, updated_at) WHERE state = 'done';

-- Sweep locks: SQLite has no advisory locks, and a transaction held for a whole sweep would stop
-- the sweep's own writes. A lock is a row with an owner and an expiry that its holder renews; a
-- holder that died loses it when the expiry passes.
CREATE TABLE locks (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
