-- The reconciler's own state. Everything lives in schema `reconciler`; the app's tables are only
-- ever read and have their status (and updated_at) column written, never their structure.

CREATE SCHEMA IF NOT EXISTS reconciler;

-- One row per sweep that applied (dry runs write nothing anywhere).
CREATE TABLE reconciler.sweeps (
    id              uuid PRIMARY KEY,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    bucket          text NOT NULL,
    prefix          text NOT NULL,
    objects_listed  bigint,
    records_scanned bigint,
    counts          jsonb,
    -- running | ok | failed
    outcome         text NOT NULL DEFAULT 'running',
    error           text
);

-- Every applied action, written in the same transaction as the change it describes.
CREATE TABLE reconciler.audit_log (
    seq         bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    sweep_id    uuid,
    finding     text NOT NULL,
    action      text NOT NULL,
    doc_id      text NOT NULL,
    key         text NOT NULL,
    old_status  text,
    new_status  text,
    detail      text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_doc_id ON reconciler.audit_log (doc_id);
CREATE INDEX audit_log_key ON reconciler.audit_log (key);

-- What the reconciler last saw of an object it adopted: the app table has no columns for it.
CREATE TABLE reconciler.objects (
    key           text PRIMARY KEY,
    size          bigint NOT NULL,
    etag          text,
    last_modified timestamptz,
    noted_at      timestamptz NOT NULL DEFAULT now()
);
