-- Several deployments (table, bucket, prefix) may share one database and this schema: every row
-- of the reconciler's own tables belongs to one of them, named by `scope` (the configured table,
-- quoted, then bucket and prefix: `"docs"/uploads/docs/`). Each deployment reads and writes only
-- its own rows.
--
-- Rows written before this migration get the empty legacy scope, which no deployment reads. Each
-- deployment adopts, when it migrates, the legacy rows that are provably its own (see
-- PgCatalog::adopt_legacy_rows and the README): a job or audit line whose doc is in its table
-- under its key (prefix + id), an object or event state whose key is such a doc's key, a sweep of
-- its bucket and prefix. What no deployment claims stays behind, unread.

ALTER TABLE reconciler.jobs ADD COLUMN scope text NOT NULL DEFAULT '';
ALTER TABLE reconciler.jobs DROP CONSTRAINT jobs_pkey;
ALTER TABLE reconciler.jobs ADD PRIMARY KEY (scope, doc_id);
DROP INDEX reconciler.jobs_due;
DROP INDEX reconciler.jobs_leased;
CREATE INDEX jobs_due ON reconciler.jobs (scope, next_attempt_at) WHERE state = 'queued';
CREATE INDEX jobs_leased ON reconciler.jobs (scope, lease_until) WHERE state = 'running';
-- Housekeeping finds finished jobs by age.
CREATE INDEX jobs_done ON reconciler.jobs (scope, updated_at) WHERE state = 'done';

ALTER TABLE reconciler.key_events ADD COLUMN scope text NOT NULL DEFAULT '';
ALTER TABLE reconciler.key_events DROP CONSTRAINT key_events_pkey;
ALTER TABLE reconciler.key_events ADD PRIMARY KEY (scope, key);
CREATE INDEX key_events_age ON reconciler.key_events (scope, updated_at);

ALTER TABLE reconciler.objects ADD COLUMN scope text NOT NULL DEFAULT '';
ALTER TABLE reconciler.objects DROP CONSTRAINT objects_pkey;
ALTER TABLE reconciler.objects ADD PRIMARY KEY (scope, key);
CREATE INDEX objects_age ON reconciler.objects (scope, noted_at);

-- The audit log and the sweep history keep their surrogate keys (a sequence, a uuid); their
-- lookups go through the scope.
ALTER TABLE reconciler.audit_log ADD COLUMN scope text NOT NULL DEFAULT '';
DROP INDEX reconciler.audit_log_doc_id;
DROP INDEX reconciler.audit_log_key;
CREATE INDEX audit_log_doc_id ON reconciler.audit_log (scope, doc_id);
CREATE INDEX audit_log_key ON reconciler.audit_log (scope, key);

ALTER TABLE reconciler.sweeps ADD COLUMN scope text NOT NULL DEFAULT '';
CREATE INDEX sweeps_scope ON reconciler.sweeps (scope, started_at);
