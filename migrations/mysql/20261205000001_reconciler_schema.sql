-- The reconciler's own state on MySQL and MariaDB, in a database of its own beside the app's
-- (`<db>_reconciler`): the app's database is only ever read and has its status (and updated_at)
-- column written, never its structure. The same tables as on Postgres, scoped from the start
-- (see migrations/20261126000004_deployment_scope.sql), with intents per change (see
-- migrations/20261204180001_intent_ids.sql).
--
-- Keys, ids and scopes are VARBINARY: compared and ordered as their UTF-8 bytes, as S3 keys are,
-- with no collation folding case or accents and none ignoring trailing spaces. Times are
-- DATETIME(6) in UTC (the reconciler's sessions run in UTC). The sessions quote identifiers with
-- double quotes (ANSI_QUOTES).

CREATE TABLE sweeps (
    id              CHAR(36) NOT NULL PRIMARY KEY,
    scope           VARBINARY(1024) NOT NULL,
    started_at      DATETIME(6) NOT NULL,
    finished_at     DATETIME(6),
    bucket          VARCHAR(255) NOT NULL,
    prefix          VARBINARY(1024) NOT NULL,
    objects_listed  BIGINT,
    records_scanned BIGINT,
    counts          LONGTEXT,
    -- running | ok | failed | interrupted
    outcome         VARCHAR(32) NOT NULL DEFAULT 'running',
    error           LONGTEXT,
    INDEX sweeps_scope (scope, started_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE audit_log (
    seq         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    scope       VARBINARY(1024) NOT NULL,
    at          DATETIME(6) NOT NULL,
    sweep_id    CHAR(36),
    finding     VARCHAR(255) NOT NULL,
    action      VARCHAR(255) NOT NULL,
    doc_id      VARBINARY(1024) NOT NULL,
    "key"       VARBINARY(1024) NOT NULL,
    old_status  TEXT,
    new_status  TEXT,
    detail      LONGTEXT NOT NULL,
    INDEX audit_log_doc_id (scope, doc_id),
    INDEX audit_log_key (scope, "key")
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE objects (
    scope         VARBINARY(1024) NOT NULL,
    "key"         VARBINARY(1024) NOT NULL,
    size          BIGINT NOT NULL,
    etag          VARCHAR(255),
    last_modified DATETIME(6),
    noted_at      DATETIME(6) NOT NULL,
    PRIMARY KEY (scope, "key"),
    INDEX objects_age (scope, noted_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE key_events (
    scope      VARBINARY(1024) NOT NULL,
    "key"      VARBINARY(1024) NOT NULL,
    sequencer  VARCHAR(255),
    kind       VARCHAR(64),
    event_time DATETIME(6),
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (scope, "key"),
    INDEX key_events_age (scope, updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Post-processing jobs: one row per doc, claimed with FOR UPDATE SKIP LOCKED (MySQL 8.0,
-- MariaDB 10.6) so that several workers (and replicas) share them without a coordinator.
CREATE TABLE jobs (
    scope           VARBINARY(1024) NOT NULL,
    doc_id          VARBINARY(1024) NOT NULL,
    "key"           VARBINARY(1024) NOT NULL,
    -- queued | running | done | failed
    state           VARCHAR(16) NOT NULL,
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6) NOT NULL,
    lease_until     DATETIME(6),
    leased_by       VARCHAR(255),
    last_error      LONGTEXT,
    size            BIGINT,
    etag            VARCHAR(255),
    created_at      DATETIME(6) NOT NULL,
    updated_at      DATETIME(6) NOT NULL,
    PRIMARY KEY (scope, doc_id),
    INDEX jobs_due (scope, state, next_attempt_at),
    INDEX jobs_leased (scope, state, lease_until),
    INDEX jobs_done (scope, state, updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Bucket changes about to be made: see migrations/20261127000005_intents.sql.
CREATE TABLE intents (
    scope      VARBINARY(1024) NOT NULL,
    id         VARBINARY(255) NOT NULL,
    "key"      VARBINARY(1024) NOT NULL,
    intent     LONGTEXT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (scope, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
