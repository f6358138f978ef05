-- Post-processing jobs: one row per doc, claimed with FOR UPDATE SKIP LOCKED so that several
-- workers (and replicas) share them without a coordinator. A running job whose lease ran out is
-- claimed again: its worker died.
CREATE TABLE reconciler.jobs (
    doc_id          text PRIMARY KEY,
    key             text NOT NULL,
    -- queued | running | done | failed
    state           text NOT NULL,
    -- attempts that actually ran the hook
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    lease_until     timestamptz,
    leased_by       text,
    last_error      text,
    size            bigint,
    etag            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_due ON reconciler.jobs (next_attempt_at) WHERE state = 'queued';
CREATE INDEX jobs_leased ON reconciler.jobs (lease_until) WHERE state = 'running';
